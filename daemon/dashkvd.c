/*
 * dashkvd.c - the DASH-KV daemon: serves libdashkv-client sessions over a
 * Unix socket.  Runs in the foreground (systemd Type=notify, or by hand).
 * Signal handlers only set flags; the main loop acts on them.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "listen.h"
#include "log.h"
#include "plan_cli.h"
#include "session.h"

#define MAX_TRACKED 4096

static volatile sig_atomic_t got_stop, got_hup;
static const char *socket_override; /* -s, kept across reloads */

static void on_stop(int sig)
{
	(void)sig;
	got_stop = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	got_hup = 1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: dashkvd [-ftTV] [-c config] [-s socket]\n"
		"       dashkvd [-c config] --plan [--topology FILE.xml | "
		"--synthetic DESC]\n"
		"               [--shards SPEC] [--gpus]\n");
}

/* The shard spec: the configuration's, else $DASHKV_SHARDS, else auto. */
static const char *shard_spec(const struct dmn_config *cfg)
{
	return cfg->shards[0] ? cfg->shards : getenv("DASHKV_SHARDS");
}

/*
 * dashkvd [-c config] --plan ...: print the placement plan the daemon
 * would use.  -c and -f are taken out; the rest goes to shard_plan_cli.
 */
static int plan(int argc, char **argv)
{
	static struct dmn_config cfg;
	const char *path = DMN_DEF_CONFIG;
	char **rest = calloc((size_t)argc + 1, sizeof(*rest));
	char err[KRN_MSGLEN];
	int n = 0, explicit_cfg = 0, rc;

	if (!rest)
		return 1;
	rest[n++] = argv[0];
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc) {
			path = argv[++i];
			explicit_cfg = 1;
		} else if (strcmp(argv[i], "-f")) {
			rest[n++] = argv[i];
		}
	}
	if (dmn_config_load(path, !explicit_cfg, &cfg, err)) {
		fprintf(stderr, "dashkvd: %s\n", err);
		free(rest);
		return 1;
	}
	rc = shard_plan_cli(n, rest, "dashkvd", shard_spec(&cfg),
			    "shards in dashkv.conf, else $DASHKV_SHARDS, else auto");
	free(rest);
	return rc;
}

static int wants_plan(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--plan"))
			return 1;
	return 0;
}

/* -t: the shard spec must give a plan on this machine. */
static int check_shards(const struct dmn_config *cfg)
{
	struct rt_engine *eng;
	char err[KRN_MSGLEN] = "";

	if (rt_engine_new_shards(&eng, shard_spec(cfg), err)) {
		fprintf(stderr, "dashkvd: shards: %s\n", err);
		return 1;
	}
	rt_engine_free(eng);
	return 0;
}

static void set_signals(void)
{
	struct sigaction sa = { .sa_handler = on_stop };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

/*
 * Become cfg->user once the socket is bound: the socket is handed to that
 * user (so that the daemon can remove it at exit), then setgroups, setgid,
 * setuid; any failure is fatal.  Not root: only the own user is accepted.
 */
static int drop_privileges(struct dmn_server *srv)
{
	const char *name = srv->cfg.user;
	struct passwd *pw;

	if (!name[0])
		return 0;
	pw = getpwnam(name);
	if (!pw) {
		dmn_log(DMN_ERROR, "user %s: no such user", name);
		return -1;
	}
	if (geteuid() != 0) {
		if (pw->pw_uid == geteuid())
			return 0;
		dmn_log(DMN_ERROR, "user %s: only root can change its user", name);
		return -1;
	}
	if (lchown(srv->cfg.socket, pw->pw_uid, pw->pw_gid) < 0 ||
	    initgroups(name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		dmn_log(DMN_ERROR, "user %s: dropping privileges: %m", name);
		return -1;
	}
	if (pw->pw_uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
		dmn_log(DMN_ERROR, "user %s: could regain root", name);
		return -1;
	}
	srv->self_uid = pw->pw_uid;
	dmn_log(DMN_INFO, "running as %s (uid %d, gid %d)", name, (int)pw->pw_uid,
		(int)pw->pw_gid);
	return 0;
}

struct tracked {
	struct dmn_session *s[MAX_TRACKED];
	int n;
};

static void reap(struct tracked *t, int all)
{
	for (int i = 0; i < t->n; i++) {
		if (!all && !dmn_session_done(t->s[i]))
			continue;
		dmn_session_free(t->s[i]);
		t->s[i--] = t->s[--t->n];
	}
}

static void accept_one(struct dmn_server *srv, int lfd, struct tracked *t)
{
	struct dmn_session *s;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0) {
		if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
			dmn_log(DMN_WARN, "accept: %m");
		return;
	}
	if (t->n == MAX_TRACKED) {
		close(fd);
		return;
	}
	if (dmn_session_start(srv, fd, &s) == 0)
		t->s[t->n++] = s;
}

static void reload(struct dmn_server *srv, const char *path)
{
	struct dmn_config next;
	char err[KRN_MSGLEN];

	dmn_notify("RELOADING=1");
	if (dmn_config_load(path, 0, &next, err)) {
		dmn_log(DMN_ERROR, "reload refused: %s", err);
	} else {
		if (socket_override)
			strcpy(next.socket, socket_override);
		dmn_config_reload(&srv->cfg, &next);
		dmn_log_level((int)srv->cfg.log_level);
		rt_engine_set_limit(srv->eng, srv->cfg.memory_limit);
		dmn_log(DMN_INFO, "configuration reloaded from %s", path);
	}
	dmn_notify("READY=1");
}

static void status_line(struct dmn_server *srv)
{
	char line[160];

	snprintf(line, sizeof(line), "STATUS=%d sessions, %llu bytes held, %llu rejected",
		 atomic_load(&srv->n_active),
		 (unsigned long long)rt_engine_used(srv->eng),
		 (unsigned long long)atomic_load(&srv->rejects));
	dmn_notify(line);
}

static void main_loop(struct dmn_server *srv, int lfd, const char *path)
{
	struct tracked *t = calloc(1, sizeof(*t));
	int ticks = 0;

	if (!t)
		return;
	while (!got_stop) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		if (atomic_load(&srv->draining) && !atomic_load(&srv->n_active)) {
			dmn_log(DMN_INFO, "drained: no session left");
			break;
		}
		if (poll(&p, 1, IPC_HEARTBEAT_MS) > 0)
			accept_one(srv, lfd, t);
		dmn_heartbeat(srv);
		if (got_hup) {
			got_hup = 0;
			reload(srv, path);
		}
		reap(t, 0);
		if (++ticks % 50 == 0)
			status_line(srv);
	}
	dmn_notify("STOPPING=1");
	dmn_log(DMN_INFO, "stopping: draining %d sessions", t->n);
	atomic_store(&srv->stop, 1);
	reap(t, 1);
	free(t);
}

static int run(struct dmn_server *srv, const char *path)
{
	char err[KRN_MSGLEN] = "";
	char what[2 * KRN_MSGLEN]; /* the shards, quoting up to two messages */
	int lfd, lock;

	if (rt_engine_new_shards(&srv->eng, shard_spec(&srv->cfg), err)) {
		dmn_log(DMN_ERROR, "engine: %s", err);
		return 1;
	}
	rt_engine_describe(srv->eng, what, sizeof(what));
	dmn_log(DMN_INFO, "%u shard(s): %s", rt_engine_shards(srv->eng), what);
	rt_engine_set_limit(srv->eng, srv->cfg.memory_limit);
	lfd = dmn_listen(srv->cfg.socket, (mode_t)srv->cfg.socket_mode, &lock);
	if (lfd < 0) {
		rt_engine_free(srv->eng);
		return 1;
	}
	if (drop_privileges(srv)) {
		close(lfd);
		unlink(srv->cfg.socket);
		close(lock);
		rt_engine_free(srv->eng);
		return 1;
	}
	dmn_log(DMN_INFO, "listening on %s", srv->cfg.socket);
	dmn_notify("READY=1\nSTATUS=listening");
	main_loop(srv, lfd, path);
	close(lfd);
	if (unlink(srv->cfg.socket) < 0)
		dmn_log(DMN_WARN, "%s: %m", srv->cfg.socket);
	close(lock); /* after the unlink: the next daemon finds the path free */
	rt_engine_free(srv->eng);
	dmn_log(DMN_INFO, "stopped");
	return 0;
}

/* A decimal number from 0 to max, all of s up to `end` (a char or NUL). */
static int parse_num(const char *s, char end, unsigned long max,
		     unsigned long *out, const char **rest)
{
	char *e;

	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	*out = strtoul(s, &e, 10);
	if (errno || *e != end || *out > max)
		return -1;
	*rest = e;
	return 0;
}

/*
 * DASHKVD_TEST_STALL=LAYER:MS, for tests only (dashkvd(8)): every step on
 * that layer waits MS ms before it runs, as a hung one would.  Only the
 * environment the daemon starts in sets it; a bad value stops the start.
 */
static int test_knobs(struct dmn_server *srv)
{
	const char *v = getenv("DASHKVD_TEST_STALL"), *rest;
	unsigned long layer, ms;

	if (!v)
		return 0;
	if (parse_num(v, ':', DKV_MAX_LAYERS - 1, &layer, &rest) ||
	    parse_num(rest + 1, '\0', 600000, &ms, &rest) || !ms) {
		fprintf(stderr, "dashkvd: DASHKVD_TEST_STALL=%s: want LAYER:MS, "
			"LAYER below %d, MS from 1 to 600000\n", v, DKV_MAX_LAYERS);
		return -1;
	}
	srv->stall_layer = (uint32_t)layer;
	srv->stall_ms = (uint32_t)ms;
	dmn_log(DMN_WARN, "test knob DASHKVD_TEST_STALL: every step on layer %lu "
		"stalls %lu ms", layer, ms);
	return 0;
}

int main(int argc, char **argv)
{
	static struct dmn_server srv;
	const char *path = DMN_DEF_CONFIG, *sock = NULL;
	int check = 0, print = 0, explicit_cfg = 0, opt;
	char err[KRN_MSGLEN];

	if (wants_plan(argc, argv))
		return plan(argc, argv);
	while ((opt = getopt(argc, argv, "fc:s:tTVh")) != -1) {
		switch (opt) {
		case 'f': break; /* always in the foreground */
		case 'c': path = optarg; explicit_cfg = 1; break;
		case 's': sock = optarg; break;
		case 't': check = 1; break;
		case 'T': print = 1; break;
		case 'V': printf("dashkvd %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (dmn_config_load(path, !explicit_cfg, &srv.cfg, err)) {
		fprintf(stderr, "dashkvd: %s\n", err);
		return 1;
	}
	if (sock) {
		if (!*sock || strlen(sock) >= sizeof(srv.cfg.socket)) {
			fprintf(stderr, "dashkvd: -s: bad socket path\n");
			return 1;
		}
		strcpy(srv.cfg.socket, sock);
		socket_override = sock;
	}
	if (print)
		dmn_config_print(&srv.cfg, stdout);
	if (check)
		return check_shards(&srv.cfg);
	if (print)
		return 0;
	dmn_log_level((int)srv.cfg.log_level);
	if (test_knobs(&srv))
		return 1;
	srv.self_uid = getuid();
	srv.started = time(NULL);
	pthread_mutex_init(&srv.lock, NULL);
	set_signals();
	return run(&srv, path);
}
