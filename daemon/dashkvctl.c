/*
 * dashkvctl.c - ask a running dashkvd how it is doing.
 *   dashkvctl [-s socket] status
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
	fprintf(stderr, "usage: dashkvctl [-s socket] status\n");
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

static int status(const char *path)
{
	char err[IPC_MSGLEN] = "";
	union {
		struct ipc_status st;
		struct ipc_error e;
		char raw[IPC_MAX_PAYLOAD];
	} p;
	struct ipc_hdr h;
	int fd = dial(path), rc;

	if (fd < 0) {
		fprintf(stderr, "dashkvctl: %s: %m\n", path);
		return 1;
	}
	ipc_send(fd, IPC_STATUS, 1, NULL, 0, -1);
	rc = ipc_recv(fd, &h, &p, 5000, NULL, err, sizeof(err));
	close(fd);
	if (rc == DKV_OK && h.type == IPC_ERROR && !ipc_check_error(&p.e, err, sizeof(err)))
		return fprintf(stderr, "dashkvctl: %s\n", p.e.msg), 1;
	if (rc || h.type != IPC_STATUS_OK) {
		fprintf(stderr, "dashkvctl: %s\n", err[0] ? err : dkv_strerror(rc ? rc : DKV_E_PROTO));
		return 1;
	}
	print_status(&p.st);
	return 0;
}

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
	if (optind + 1 != argc || strcmp(argv[optind], "status"))
		return usage();
	return status(path);
}
