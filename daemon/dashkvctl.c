/*
 * dashkvctl.c - ask a running dashkvd how it is doing.
 *   dashkvctl [-s socket] status | sessions | stats | drain
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ipc/proto.h"

#define DEF_SOCKET "/run/dashkv/dashkvd.sock"

static int usage(void)
{
	fprintf(stderr, "usage: dashkvctl [-s socket] status | sessions | stats | drain\n");
	return 2;
}

static int dial(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(a.sun_path))
		return -1;
	strcpy(a.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void print_status(const struct ipc_status *st)
{
	printf("sessions %u of %u (%llu since start)\n", st->sessions,
	       st->max_sessions, (unsigned long long)st->sessions_total);
	printf("memory %llu bytes held, limit %llu%s\n",
	       (unsigned long long)st->bytes_used,
	       (unsigned long long)st->memory_limit,
	       st->memory_limit ? "" : " (none)");
	printf("rejected %llu requests, dropped %llu ring entries\n",
	       (unsigned long long)st->rejects, (unsigned long long)st->dropped);
	printf("uptime %llu s\n", (unsigned long long)st->uptime_s);
}

static void print_session(const struct ipc_session_info *in)
{
	printf("%-6u %5u/%-7u %9u %14llu %12llu %10llu %7llu %7llu\n",
	       in->id, in->uid, in->pid, in->sequences,
	       (unsigned long long)in->bytes,
	       (unsigned long long)in->region_bytes,
	       (unsigned long long)in->steps, (unsigned long long)in->rejects,
	       (unsigned long long)in->age_s);
}

static void print_stats(const struct ipc_srvstats *st)
{
	printf("sessions %u\nmax_sessions %u\nsessions_total %llu\n", st->sessions,
	       st->max_sessions, (unsigned long long)st->sessions_total);
	printf("draining %s\n", st->draining ? "yes" : "no");
	printf("bytes_used %llu\nmemory_limit %llu\nregion_bytes %llu\n",
	       (unsigned long long)st->bytes_used,
	       (unsigned long long)st->memory_limit,
	       (unsigned long long)st->region_bytes);
	printf("steps %llu\ndropped %llu\nuptime_s %llu\n",
	       (unsigned long long)st->steps, (unsigned long long)st->dropped,
	       (unsigned long long)st->uptime_s);
	for (unsigned i = 0; ipc_reject_name(i); i++)
		printf("rejected_%s %llu\n", ipc_reject_name(i),
		       (unsigned long long)st->rejects[i]);
}

union reply {
	struct ipc_status st;
	struct ipc_srvstats all;
	struct ipc_session_info in;
	struct ipc_error e;
	char raw[IPC_MAX_PAYLOAD];
};

/* Receive one reply; print an error reply or a failure and return 1. */
static int receive(int fd, struct ipc_hdr *h, union reply *p)
{
	char err[KRN_MSGLEN] = "";
	int rc = ipc_recv(fd, h, p, 5000, NULL, err);

	if (rc == DKV_OK && h->type == IPC_ERROR && !ipc_check_error(&p->e, err)) {
		fprintf(stderr, "dashkvctl: %s\n", p->e.msg);
		return 1;
	}
	if (rc) {
		fprintf(stderr, "dashkvctl: %s\n", err[0] ? err : dkv_strerror(rc));
		return 1;
	}
	return 0;
}

static int unexpected(void)
{
	fprintf(stderr, "dashkvctl: %s\n", dkv_strerror(DKV_E_PROTO));
	return 1;
}

static int answer(int fd, uint16_t type)
{
	union reply p;
	struct ipc_hdr h;

	if (receive(fd, &h, &p))
		return 1;
	if (type == IPC_STATUS && h.type == IPC_STATUS_OK)
		return print_status(&p.st), 0;
	if (type == IPC_SRVSTATS && h.type == IPC_SRVSTATS_OK)
		return print_stats(&p.all), 0;
	if (type == IPC_DRAIN && h.type == IPC_OK)
		return printf("draining: no new sessions, exit after the last one\n"), 0;
	if (type != IPC_SESSIONS)
		return unexpected();
	printf("%-6s %5s/%-7s %9s %14s %12s %10s %7s %7s\n", "id", "uid", "pid",
	       "sequences", "bytes", "region", "steps", "rejects", "age_s");
	while (h.type == IPC_SESSION_INFO) {
		print_session(&p.in);
		if (receive(fd, &h, &p))
			return 1;
	}
	return h.type == IPC_OK ? 0 : unexpected();
}

static int ask(const char *path, uint16_t type)
{
	int fd = dial(path), rc;

	if (fd < 0) {
		fprintf(stderr, "dashkvctl: %s: %m\n", path);
		return 1;
	}
	/* a refusal may wait for us even if the send fails */
	ipc_send(fd, type, 1, NULL, 0, -1);
	rc = answer(fd, type);
	close(fd);
	return rc;
}

static const struct {
	const char *name;
	uint16_t type;
} commands[] = {
	{ "status", IPC_STATUS },
	{ "sessions", IPC_SESSIONS },
	{ "stats", IPC_SRVSTATS },
	{ "drain", IPC_DRAIN },
};

int main(int argc, char **argv)
{
	const char *path = DEF_SOCKET;
	int opt;

	while ((opt = getopt(argc, argv, "s:V")) != -1) {
		if (opt == 's')
			path = optarg;
		else if (opt == 'V')
			return printf("dashkvctl %s\n", PACKAGE_VERSION), 0;
		else
			return usage();
	}
	if (optind + 1 != argc)
		return usage();
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[optind], commands[i].name))
			return ask(path, commands[i].type);
	return usage();
}
