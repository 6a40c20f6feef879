/*
 * ipc.c - dashkv-bench ipc: the per-call round trip of a tiny step through
 * dashkvd (shared rings) against the same step embedded, on the same
 * inputs: median and p90 per call, the added latency, and calls per second
 * on one layer.  Attaches to a daemon (--connect unix:PATH) or starts one
 * on a temporary socket.  See dashkv-bench(1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dashkv.h"
#include "ipc.h"

struct ipc_opts {
	const char *connect;    /* NULL: start a daemon */
	const char *daemon;     /* dashkvd to start */
	uint32_t tokens, reps, heads, kv_heads, dim, layers;
	int json;
};

struct spawned {
	pid_t pid;
	char dir[64];
	char addr[128];
};

struct lat {
	double med_us, p90_us, calls_s;
};

static uint64_t rng = 12345;

static float rnd(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((int64_t)(rng >> 33) % 2000001 - 1000000) * 1e-6f;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* ---- a daemon of our own ---- */

/* dashkvd beside this program (build tree), in ../sbin (installed), or $PATH. */
static const char *find_daemon(char *buf, size_t len)
{
	static const char *const rel[] = { "dashkvd", "../sbin/dashkvd" };
	char self[PATH_MAX - 32];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n > 0) {
		self[n] = '\0';
		slash = strrchr(self, '/');
		if (slash) {
			*slash = '\0';
			for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
				snprintf(buf, len, "%s/%s", self, rel[i]);
				if (access(buf, X_OK) == 0)
					return buf;
			}
		}
	}
	return "dashkvd";
}

/* 1 once something accepts connections on path. */
static int listening(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd, ok;

	if (strlen(path) >= sizeof(a.sun_path))
		return 0;
	strcpy(a.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return ok;
}

static int wait_listening(struct spawned *d)
{
	for (int i = 0; i < 200; i++) {
		int st;

		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			fprintf(stderr, "dashkv-bench: dashkvd exited at start\n");
			d->pid = 0;
			return -1;
		}
		if (listening(d->addr + 5))
			return 0;
		usleep(25000);
	}
	fprintf(stderr, "dashkv-bench: dashkvd did not listen on %s\n", d->addr + 5);
	return -1;
}

static int spawn(const struct ipc_opts *o, struct spawned *d)
{
	char conf[96], path[PATH_MAX];
	const char *bin = o->daemon ? o->daemon : find_daemon(path, sizeof(path));
	FILE *f;

	snprintf(d->dir, sizeof(d->dir), "%s", "/tmp/dashkv-bench.XXXXXX");
	if (!mkdtemp(d->dir))
		return perror("dashkv-bench: mkdtemp"), -1;
	snprintf(conf, sizeof(conf), "%s/dashkv.conf", d->dir);
	snprintf(d->addr, sizeof(d->addr), "unix:%s/d.sock", d->dir);
	f = fopen(conf, "w");
	if (!f)
		return perror("dashkv-bench: config"), -1;
	fprintf(f, "allow_users %u\nlog_level warning\n", (unsigned)getuid());
	fclose(f);
	d->pid = fork();
	if (d->pid < 0)
		return perror("dashkv-bench: fork"), -1;
	if (d->pid == 0) {
		execlp(bin, bin, "-c", conf, "-s", d->addr + 5, (char *)NULL);
		fprintf(stderr, "dashkv-bench: %s: %s\n", bin, strerror(errno));
		_exit(127);
	}
	return wait_listening(d);
}

static void reap(struct spawned *d)
{
	char path[96];

	if (d->pid > 0) {
		kill(d->pid, SIGTERM);
		waitpid(d->pid, NULL, 0);
	}
	snprintf(path, sizeof(path), "%s/dashkv.conf", d->dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/d.sock", d->dir);
	unlink(path);
	if (d->dir[0])
		rmdir(d->dir);
}

/* ---- the measurement ---- */

struct side {
	dkv_client *c;
	dkv_seq *s;
};

static int open_side(const char *addr, const struct ipc_opts *o, struct side *sd)
{
	dkv_seq_config cfg;
	int rc = dkv_connect(addr, &sd->c);

	if (rc) {
		fprintf(stderr, "dashkv-bench: connect %s: %s\n", addr, dkv_strerror(rc));
		return rc;
	}
	dkv_seq_config_init(&cfg);
	cfg.n_layers = o->layers;
	cfg.n_q_heads = o->heads;
	cfg.n_kv_heads = o->kv_heads;
	cfg.head_dim = o->dim;
	cfg.dtype = DKV_F32;
	cfg.max_tokens = o->tokens + 16;
	rc = dkv_seq_open(sd->c, &cfg, &sd->s);
	if (rc)
		fprintf(stderr, "dashkv-bench: open on %s: %s (%s)\n", addr,
			dkv_strerror(rc), dkv_errmsg(sd->c));
	return rc;
}

static void close_side(struct side *sd)
{
	if (sd->c)
		dkv_disconnect(sd->c);
}

static int one_call(struct side *sd, const float *q, uint32_t n_q, float *out,
		    uint64_t *t)
{
	uint64_t t0 = now_ns();
	int rc = dkv_step(sd->s, 0, q, n_q, NULL, NULL, 0, out);

	*t = now_ns() - t0;
	if (rc)
		fprintf(stderr, "dashkv-bench: step: %s (%s)\n", dkv_strerror(rc),
			dkv_errmsg(sd->c));
	return rc;
}

/*
 * reps pairs of calls, daemon and embedded in turn (the one that goes first
 * alternating), so that both see the same load on a busy machine: per-call
 * times in td and te, the pairs' differences in dd.
 */
static int time_pairs(struct side *d, struct side *e, const float *q, uint32_t n_q,
		      float *out, uint32_t reps, uint64_t *td, uint64_t *te, int64_t *dd)
{
	uint64_t skip;

	for (uint32_t i = 0; i < reps / 10 + 10; i++)
		if (one_call(d, q, n_q, out, &skip) || one_call(e, q, n_q, out, &skip))
			return -1;
	for (uint32_t i = 0; i < reps; i++) {
		int rc = i & 1 ? one_call(e, q, n_q, out, &te[i]) || one_call(d, q, n_q, out, &td[i]) :
				 one_call(d, q, n_q, out, &td[i]) || one_call(e, q, n_q, out, &te[i]);

		if (rc)
			return -1;
		dd[i] = (int64_t)td[i] - (int64_t)te[i];
	}
	return 0;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

static struct lat summarise(uint64_t *t, uint32_t reps)
{
	double sum = 0;
	struct lat l;

	qsort(t, reps, sizeof(*t), cmp_u64);
	for (uint32_t i = 0; i < reps; i++)
		sum += (double)t[i];
	l.med_us = (double)t[reps / 2] / 1e3;
	l.p90_us = (double)t[reps * 9 / 10] / 1e3;
	l.calls_s = sum > 0 ? reps / (sum / 1e9) : 0;
	return l;
}

/* Fill every layer with the same tokens on both sides. */
static int prefill(struct side *d, struct side *e, const struct ipc_opts *o)
{
	size_t kn = (size_t)o->tokens * o->kv_heads * o->dim;
	size_t qn = (size_t)o->heads * o->dim;
	float *k = malloc(kn * sizeof(float)), *v = malloc(kn * sizeof(float));
	float *q = malloc(qn * sizeof(float)), *out = malloc(qn * sizeof(float));
	int rc = -1;

	if (!k || !v || !q || !out)
		goto out;
	for (size_t i = 0; i < kn; i++)
		k[i] = rnd(), v[i] = rnd();
	for (size_t i = 0; i < qn; i++)
		q[i] = rnd();
	rc = 0;
	for (uint32_t l = 0; l < o->layers && !rc; l++)
		rc = dkv_step(d->s, l, q, 1, k, v, o->tokens, out) ||
		     dkv_step(e->s, l, q, 1, k, v, o->tokens, out);
	if (rc)
		fprintf(stderr, "dashkv-bench: prefill failed: %s\n", dkv_errmsg(d->c));
out:
	free(k), free(v), free(q), free(out);
	return rc;
}

struct row {
	const char *name;
	struct lat daemon, embedded;
	double added_med_us, added_p90_us;  /* of the pairs' differences */
};

static int measure(struct side *d, struct side *e, const struct ipc_opts *o,
		   uint32_t n_q, struct row *r)
{
	size_t qn = (size_t)o->heads * o->dim;
	float *q = malloc(qn * sizeof(float)), *out = malloc(qn * sizeof(float));
	uint64_t *td = malloc(o->reps * sizeof(*td)), *te = malloc(o->reps * sizeof(*te));
	int64_t *dd = malloc(o->reps * sizeof(*dd));
	int rc = -1;

	if (!q || !out || !td || !te || !dd)
		goto out;
	for (size_t i = 0; i < qn; i++)
		q[i] = rnd();
	if (time_pairs(d, e, q, n_q, out, o->reps, td, te, dd))
		goto out;
	r->daemon = summarise(td, o->reps);
	r->embedded = summarise(te, o->reps);
	qsort(dd, o->reps, sizeof(*dd), cmp_i64);
	r->added_med_us = (double)dd[o->reps / 2] / 1e3;
	r->added_p90_us = (double)dd[o->reps * 9 / 10] / 1e3;
	rc = 0;
out:
	free(q), free(out), free(td), free(te), free(dd);
	return rc;
}

static void print_rows(const struct row *r, int n, const struct ipc_opts *o,
		       const char *addr)
{
	if (o->json) {
		printf("{\"daemon\": \"%s\", \"tokens\": %u, \"heads\": %u, \"kv_heads\": %u,"
		       " \"dim\": %u, \"reps\": %u, \"rows\": [", addr, o->tokens,
		       o->heads, o->kv_heads, o->dim, o->reps);
		for (int i = 0; i < n; i++)
			printf("%s{\"step\": \"%s\", \"daemon_median_us\": %.2f, "
			       "\"daemon_p90_us\": %.2f, \"embedded_median_us\": %.2f, "
			       "\"embedded_p90_us\": %.2f, \"added_median_us\": %.2f, "
			       "\"added_p90_us\": %.2f, \"daemon_calls_s\": %.0f, "
			       "\"embedded_calls_s\": %.0f}", i ? ", " : "", r[i].name,
			       r[i].daemon.med_us, r[i].daemon.p90_us,
			       r[i].embedded.med_us, r[i].embedded.p90_us,
			       r[i].added_med_us, r[i].added_p90_us,
			       r[i].daemon.calls_s, r[i].embedded.calls_s);
		printf("]}\n");
		return;
	}
	printf("dashkv-bench ipc: %s vs embedded, N = %u tokens, %u/%u heads x %u, "
	       "f32, %u calls\n", addr, o->tokens, o->heads, o->kv_heads, o->dim, o->reps);
	printf("%-12s %22s %22s %22s %22s\n", "", "daemon med/p90 us",
	       "embedded med/p90 us", "added med/p90 us", "calls/s d/e (1 layer)");
	for (int i = 0; i < n; i++)
		printf("%-12s %10.2f %11.2f %10.2f %11.2f %10.2f %11.2f %10.0f %11.0f\n",
		       r[i].name, r[i].daemon.med_us, r[i].daemon.p90_us,
		       r[i].embedded.med_us, r[i].embedded.p90_us,
		       r[i].added_med_us, r[i].added_p90_us,
		       r[i].daemon.calls_s, r[i].embedded.calls_s);
}

static int run(const struct ipc_opts *o, const char *addr)
{
	struct side d = { 0 }, e = { 0 }, f = { 0 };
	struct row r[3];
	int rc = 1;

	memset(r, 0, sizeof(r));
	r[0].name = "1 query";
	r[1].name = "empty";
	r[2].name = "empty,futex";
	if (open_side(addr, o, &d) || open_side("embedded", o, &e) || prefill(&d, &e, o))
		goto out;
	if (measure(&d, &e, o, 1, &r[0]) || measure(&d, &e, o, 0, &r[1]))
		goto out;
	/* the same without spinning: every completion is a futex wake */
	setenv("DASHKV_IPC_SPIN_US", "0", 1);
	rc = open_side(addr, o, &f);
	unsetenv("DASHKV_IPC_SPIN_US");
	if (rc || measure(&f, &e, o, 0, &r[2])) {
		rc = 1;
		goto out;
	}
	print_rows(r, 3, o, addr);
	rc = 0;
out:
	close_side(&d);
	close_side(&e);
	close_side(&f);
	return rc;
}

/* ---- options ---- */

static void ipc_usage(FILE *f)
{
	fprintf(f,
"usage: dashkv-bench ipc [options]\n"
"  --connect unix:PATH  a running dashkvd (default: start one on a temporary\n"
"                       socket: dashkvd beside dashkv-bench, ../sbin, $PATH)\n"
"  --daemon FILE        the dashkvd to start\n"
"  --tokens N           context length (1024)\n"
"  --reps R             timed pairs of calls per row (2000)\n"
"  --heads H            query heads (32)\n"
"  --kv-heads H         key/value heads (8)\n"
"  --dim D              head_dim (128)\n"
"  --json               one JSON object\n");
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static const struct option ipc_longopts[] = {
	{ "connect", required_argument, NULL, 'c' },
	{ "daemon", required_argument, NULL, 'd' },
	{ "tokens", required_argument, NULL, 'n' },
	{ "reps", required_argument, NULL, 'r' },
	{ "heads", required_argument, NULL, 'H' },
	{ "kv-heads", required_argument, NULL, 'G' },
	{ "dim", required_argument, NULL, 'D' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 }
};

/* 0: run, 1: help shown, -1: bad usage */
static int ipc_args(int argc, char **argv, struct ipc_opts *o)
{
	int c, bad = 0;

	*o = (struct ipc_opts){ .tokens = 1024, .reps = 2000, .heads = 32,
				.kv_heads = 8, .dim = 128, .layers = 1 };
	optind = 1;
	while (!bad && (c = getopt_long(argc, argv, "", ipc_longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->connect = optarg; bad = strncmp(optarg, "unix:", 5) != 0; break;
		case 'd': o->daemon = optarg; break;
		case 'n': bad = parse_u32(optarg, 16, 1u << 24, &o->tokens); break;
		case 'r': bad = parse_u32(optarg, 10, 10000000, &o->reps); break;
		case 'H': bad = parse_u32(optarg, 1, DKV_MAX_HEADS, &o->heads); break;
		case 'G': bad = parse_u32(optarg, 1, DKV_MAX_HEADS, &o->kv_heads); break;
		case 'D': bad = parse_u32(optarg, 8, DKV_MAX_HEAD_DIM, &o->dim); break;
		case 'j': o->json = 1; break;
		case 'h': return 1;
		default: return -1;
		}
		if (bad)
			fprintf(stderr, "dashkv-bench: bad value '%s'\n", optarg);
	}
	if (bad || optind < argc)
		return -1;
	return 0;
}

int cmd_ipc(int argc, char **argv)
{
	struct ipc_opts o;
	struct spawned d = { 0 };
	int rc = ipc_args(argc, argv, &o);

	if (rc) {
		ipc_usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : 2;
	}
	if (o.connect)
		return run(&o, o.connect);
	signal(SIGPIPE, SIG_IGN);
	rc = spawn(&o, &d) ? 1 : run(&o, d.addr);
	reap(&d);
	return rc;
}
