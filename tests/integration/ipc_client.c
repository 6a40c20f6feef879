/*
 * ipc_client.c - the client half of daemon.sh: drives dashkvd through
 * the public API and compares it with the embedded engine.
 *   ipc_client api ADDR      steps, errors, daemon vs embedded bit for bit
 *   ipc_client hold ADDR     open and step, print "ready", then wait
 *   ipc_client dead ADDR PID SIGKILL the daemon, then expect DISCONNECTED
 *   ipc_client perm ADDR     expect DKV_E_PERM at connect
 *   ipc_client connect ADDR CODE TEXT  connect gives status CODE and
 *                            a message holding TEXT (dkv_errmsg(NULL))
 *   ipc_client limit ADDR    a step over session_memory_limit (1M) is refused
 *   ipc_client lat ADDR      round trip of a tiny step, daemon and embedded
 *   ipc_client many ADDR N   N client processes at once, each bit for bit
 *                            against its own embedded run
 *   ipc_client busy ADDR     print "ready", then large steps until killed
 *   ipc_client witness ADDR FILE  one step at a time, each compared with the
 *                            embedded engine, until FILE exists
 *   ipc_client killwait ADDR PID  SIGKILL the daemon while this client waits
 *                            in a step: DISCONNECTED within 2 s
 *   ipc_client hung ADDR PID SIGSTOP the daemon while this client waits:
 *                            TIMEOUT or DISCONNECTED within 5 s
 *   ipc_client stall ADDR LAYER FILE  a step on LAYER, which the daemon
 *                            stalls past its step_timeout of 1 s: TIMEOUT
 *                            within [1, 3) s, then DISCONNECTED on every
 *                            call; "given up", then wait for FILE
 * Exit 0 on success, 1 on a failed check (with a message).
 */
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dashkv.h"

#define L 2
#define QH 4
#define KVH 2
#define HD 64

static int failed;

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", \
	__FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); \
	failed = 1; } } while (0)

static uint64_t rng = 42;

static float rnd(void)
{
	rng = rng * 6364136223846793005ull + 1442695040888963407ull;
	return (float)((int64_t)(rng >> 33) % 2000001 - 1000000) * 1e-6f;
}

static float *arr(size_t n)
{
	float *a = malloc(n * sizeof(*a));

	if (!a)
		exit(1);
	for (size_t i = 0; i < n; i++)
		a[i] = rnd();
	return a;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static dkv_seq *open_seq_layers(dkv_client *c, uint32_t train, uint32_t layers)
{
	dkv_seq_config cfg;
	dkv_seq *s = NULL;
	int rc;

	dkv_seq_config_init(&cfg);
	cfg.n_layers = layers;
	cfg.n_q_heads = QH;
	cfg.n_kv_heads = KVH;
	cfg.head_dim = HD;
	cfg.dtype = DKV_F32;
	cfg.max_tokens = 4096;
	cfg.train_tokens = train;
	cfg.top_k = 32;
	cfg.candidates = 128;
	rc = dkv_seq_open(c, &cfg, &s);
	CHECK(rc == DKV_OK, "open: %s", dkv_strerror(rc));
	return s;
}

static dkv_seq *open_seq(dkv_client *c, uint32_t train)
{
	return open_seq_layers(c, train, L);
}

static dkv_client *conn(const char *addr)
{
	dkv_client *c = NULL;
	int rc = dkv_connect(addr, &c);

	if (rc) {
		fprintf(stderr, "FAIL connect %s: %s: %s\n", addr, dkv_strerror(rc),
			dkv_errmsg(NULL));
		exit(1);
	}
	return c;
}

/* The same script of steps on a sequence; outputs appended to out. */
static void script(dkv_seq *s, float *out)
{
	size_t pre = 600, qsz = QH * HD, ksz = KVH * HD;
	int rc;

	rng = 7;
	for (uint32_t l = 0; l < L; l++) {
		float *q = arr(pre * qsz), *k = arr(pre * ksz), *v = arr(pre * ksz);

		rc = dkv_step(s, l, q, (uint32_t)pre, k, v, (uint32_t)pre, out);
		CHECK(rc == DKV_OK, "prefill layer %u: %s", l, dkv_strerror(rc));
		out += pre * qsz;
		free(q), free(k), free(v);
	}
	for (int t = 0; t < 20; t++) {
		for (uint32_t l = 0; l < L; l++) {
			float *q = arr(qsz), *k = arr(ksz), *v = arr(ksz);

			rc = dkv_step(s, l, q, 1, k, v, 1, out);
			CHECK(rc == DKV_OK, "decode: %s", dkv_strerror(rc));
			out += qsz;
			free(q), free(k), free(v);
		}
	}
}

static size_t script_floats(void)
{
	return (size_t)L * 600 * QH * HD + 20 * L * QH * HD;
}

static void errors(dkv_client *c, dkv_seq *s)
{
	float q[QH * HD], k[KVH * HD], v[KVH * HD], o[QH * HD];
	uint64_t before = 0, after = 0;
	dkv_seq_config bad;
	dkv_seq *s2 = NULL;
	int rc;

	memset(q, 0, sizeof(q)), memset(k, 0, sizeof(k)), memset(v, 0, sizeof(v));
	rc = dkv_step(s, L, q, 1, k, v, 1, o);
	CHECK(rc == DKV_E_INVAL, "layer out of range gave %d", rc);
	CHECK(strstr(dkv_errmsg(c), "layer") != NULL, "message: %s", dkv_errmsg(c));
	dkv_seq_length(s, 0, &before);
	k[5] = NAN;
	rc = dkv_step(s, 0, q, 1, k, v, 1, o);
	CHECK(rc == DKV_E_BADINPUT, "NaN key gave %d", rc);
	dkv_seq_length(s, 0, &after);
	CHECK(before == after, "NaN step stored tokens: %llu -> %llu",
	      (unsigned long long)before, (unsigned long long)after);
	k[5] = 0;
	q[3] = INFINITY;
	rc = dkv_step(s, 0, q, 1, NULL, NULL, 0, o);
	CHECK(rc == DKV_E_BADINPUT, "Inf query gave %d", rc);
	rc = dkv_seq_length(s, L + 3, &after);
	CHECK(rc == DKV_E_INVAL, "length of a bad layer gave %d", rc);
	dkv_seq_config_init(&bad);
	bad.n_layers = 1, bad.n_q_heads = 3, bad.n_kv_heads = 2, bad.head_dim = 64;
	rc = dkv_seq_open(c, &bad, &s2);
	CHECK(rc == DKV_E_INVAL, "bad geometry gave %d", rc);
	rc = dkv_step(s, 0, NULL, 1, NULL, NULL, 0, o);
	CHECK(rc == DKV_E_INVAL, "NULL q gave %d", rc);
}

static int do_api(const char *addr)
{
	size_t n = script_floats();
	float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
	dkv_client *cd = conn(addr), *ce = conn("embedded");
	dkv_seq *sd = open_seq(cd, 256), *se = open_seq(ce, 256);
	dkv_stats std, ste;
	uint64_t len = 0;
	int rc;

	if (!a || !b || !sd || !se)
		return 1;
	script(sd, a);
	script(se, b);
	CHECK(!memcmp(a, b, n * sizeof(float)), "daemon and embedded outputs differ");
	rc = dkv_seq_length(sd, 1, &len);
	CHECK(rc == DKV_OK && len == 620, "length %llu rc %d", (unsigned long long)len, rc);
	rc = dkv_seq_stats(sd, &std);
	dkv_seq_stats(se, &ste);
	CHECK(rc == DKV_OK && std.steps == ste.steps && std.bytes_full == ste.bytes_full,
	      "stats differ: steps %llu/%llu", (unsigned long long)std.steps,
	      (unsigned long long)ste.steps);
	rc = dkv_seq_train(sd);
	CHECK(rc == DKV_OK, "train: %s", dkv_strerror(rc));
	errors(cd, sd);
	rc = dkv_seq_close(sd);
	CHECK(rc == DKV_OK, "close: %d", rc);
	dkv_disconnect(cd);
	dkv_disconnect(ce);
	free(a), free(b);
	return failed;
}

static int do_hold(const char *addr)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 4096);
	float *q = arr(QH * HD), *k = arr(KVH * HD), *v = arr(KVH * HD), o[QH * HD];

	if (!s || dkv_step(s, 0, q, 1, k, v, 1, o))
		return 1;
	printf("ready\n");
	fflush(stdout);
	for (;;)
		pause();
}

static int do_dead(const char *addr, pid_t pid)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 4096);
	float *q = arr(QH * HD), *k = arr(KVH * HD), *v = arr(KVH * HD), o[QH * HD];
	uint64_t len;
	double t0;
	int rc;

	if (!s || dkv_step(s, 0, q, 1, k, v, 1, o))
		return 1;
	kill(pid, SIGKILL);
	t0 = now();
	rc = dkv_step(s, 0, q, 1, k, v, 1, o);
	CHECK(rc == DKV_E_DISCONNECTED, "step after the daemon died gave %d", rc);
	rc = dkv_seq_length(s, 0, &len);
	CHECK(rc == DKV_E_DISCONNECTED, "length after the daemon died gave %d", rc);
	CHECK(now() - t0 < 2.0, "took %.2f s to notice", now() - t0);
	dkv_disconnect(c);
	free(q), free(k), free(v);
	return failed;
}

/* Under session_memory_limit 1M: the second 600-token prefill is refused. */
static int do_limit(const char *addr)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 4096);
	size_t n = 600;
	float *q = arr(n * QH * HD), *k = arr(n * KVH * HD), *v = arr(n * KVH * HD);
	float *o = malloc(n * QH * HD * sizeof(float));
	uint64_t len = 1;
	int rc;

	if (!s || !o)
		return 1;
	rc = dkv_step(s, 0, q, (uint32_t)n, k, v, (uint32_t)n, o);
	CHECK(rc == DKV_OK, "first prefill: %s", dkv_strerror(rc));
	rc = dkv_step(s, 1, q, (uint32_t)n, k, v, (uint32_t)n, o);
	CHECK(rc == DKV_E_NOSPACE, "prefill over the session limit gave %d", rc);
	CHECK(strstr(dkv_errmsg(c), "session memory limit") != NULL, "message: %s",
	      dkv_errmsg(c));
	dkv_seq_length(s, 1, &len);
	CHECK(len == 0, "refused step stored %llu tokens", (unsigned long long)len);
	rc = dkv_step(s, 1, q, 1, NULL, NULL, 0, o);
	CHECK(rc == DKV_E_INVAL || rc == DKV_OK, "query-only step gave %d", rc);
	dkv_disconnect(c);
	free(q), free(k), free(v), free(o);
	return failed;
}

static int do_perm(const char *addr)
{
	dkv_client *c = NULL;
	int rc = dkv_connect(addr, &c);

	CHECK(rc == DKV_E_PERM, "connect as a refused user gave %d", rc);
	return failed;
}

/* connect gives code, its message (dkv_errmsg(NULL)) holding text */
static int connect_gives(const char *addr, int code, const char *text)
{
	dkv_client *c = NULL;
	int rc = dkv_connect(addr, &c);

	CHECK(rc == code, "connect gave %d (%s), want %d", rc, dkv_errmsg(NULL), code);
	CHECK(strstr(dkv_errmsg(NULL), text), "message \"%s\" lacks \"%s\"",
	      dkv_errmsg(NULL), text);
	if (c)
		dkv_disconnect(c);
	return failed;
}

static double tiny_steps(const char *addr, uint32_t n_q)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 1u << 20);
	size_t n = 1024;
	float *q = arr(n * QH * HD), *k = arr(n * KVH * HD), *v = arr(n * KVH * HD);
	float *o = malloc(n * QH * HD * sizeof(float));
	int iters = 2000;
	double t0;

	if (!s || dkv_step(s, 0, q, (uint32_t)n, k, v, (uint32_t)n, o))
		exit(1);
	for (int i = 0; i < 200; i++)
		dkv_step(s, 0, q, n_q, NULL, NULL, 0, o);
	t0 = now();
	for (int i = 0; i < iters; i++)
		dkv_step(s, 0, q, n_q, NULL, NULL, 0, o);
	t0 = (now() - t0) / iters;
	dkv_disconnect(c);
	free(q), free(k), free(v), free(o);
	return t0 * 1e6;
}

/* A smaller script for many clients: prefill, then decode steps. */
static int small_script(dkv_seq *s, uint64_t seed, float *out)
{
	size_t pre = 200, qsz = QH * HD, ksz = KVH * HD;
	int rc = DKV_OK;

	rng = seed;
	for (uint32_t l = 0; l < L && !rc; l++) {
		float *q = arr(pre * qsz), *k = arr(pre * ksz), *v = arr(pre * ksz);

		rc = dkv_step(s, l, q, (uint32_t)pre, k, v, (uint32_t)pre, out);
		out += pre * qsz;
		free(q), free(k), free(v);
	}
	for (int t = 0; t < 30 && !rc; t++) {
		float *q = arr(qsz), *k = arr(ksz), *v = arr(ksz);

		rc = dkv_step(s, (uint32_t)t % L, q, 1, k, v, 1, out);
		out += qsz;
		free(q), free(k), free(v);
	}
	return rc;
}

static int one_of_many(const char *addr, int i)
{
	size_t n = (size_t)L * 200 * QH * HD + 30 * QH * HD;
	float *a = calloc(n, sizeof(float)), *b = calloc(n, sizeof(float));
	dkv_client *cd = conn(addr), *ce = conn("embedded");
	dkv_seq *sd = open_seq(cd, 128), *se = open_seq(ce, 128);
	int rc;

	if (!a || !b || !sd || !se)
		return 1;
	rc = small_script(sd, 1000 + (uint64_t)i, a);
	CHECK(rc == DKV_OK, "client %d: daemon step: %s", i, dkv_strerror(rc));
	rc = small_script(se, 1000 + (uint64_t)i, b);
	CHECK(rc == DKV_OK, "client %d: embedded step: %s", i, dkv_strerror(rc));
	CHECK(!memcmp(a, b, n * sizeof(float)), "client %d: outputs differ", i);
	dkv_disconnect(cd);
	dkv_disconnect(ce);
	free(a), free(b);
	return failed;
}

static int do_many(const char *addr, int n)
{
	pid_t *kids = calloc((size_t)n, sizeof(*kids));
	int ok = 0;

	if (!kids || n < 1)
		return 1;
	for (int i = 0; i < n; i++) {
		kids[i] = fork();
		if (kids[i] == 0)
			_exit(one_of_many(addr, i));
		CHECK(kids[i] > 0, "fork failed");
	}
	for (int i = 0; i < n; i++) {
		int st = 1;

		if (kids[i] > 0 && waitpid(kids[i], &st, 0) == kids[i] &&
		    WIFEXITED(st) && WEXITSTATUS(st) == 0)
			ok++;
	}
	CHECK(ok == n, "%d of %d clients passed", ok, n);
	printf("%d concurrent clients: %d bit-identical with embedded\n", n, ok);
	free(kids);
	return failed;
}

static int do_busy(const char *addr)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 1u << 20);
	size_t n = 2048;
	float *q = arr(n * QH * HD), *k = arr(n * KVH * HD), *v = arr(n * KVH * HD);
	float *o = malloc(n * QH * HD * sizeof(float));

	if (!s || !o || dkv_step(s, 0, q, 1, k, v, 1, o))
		return 1;
	printf("ready\n");
	fflush(stdout);
	for (uint32_t i = 0;; i++)
		if (dkv_step(s, i % L, q, (uint32_t)n, k, v, (uint32_t)n, o))
			return 1;
}

/* Step both, compare, until stop exists; a long-lived bystander session. */
static int do_witness(const char *addr, const char *stop)
{
	dkv_client *cd = conn(addr), *ce = conn("embedded");
	dkv_seq *sd = open_seq(cd, 256), *se = open_seq(ce, 256);
	float *q = arr(QH * HD), *k = arr(KVH * HD), *v = arr(KVH * HD);
	float od[QH * HD], oe[QH * HD];
	struct stat st;
	long steps = 0;
	int rc;

	if (!sd || !se)
		return 1;
	while (!failed) {
		uint32_t l = (uint32_t)(steps % L);

		for (int i = 0; i < KVH * HD; i++)
			k[i] = rnd(), v[i] = rnd();
		for (int i = 0; i < QH * HD; i++)
			q[i] = rnd();
		rc = dkv_step(sd, l, q, 1, k, v, 1, od);
		CHECK(rc == DKV_OK, "witness step %ld: %s (%s)", steps,
		      dkv_strerror(rc), dkv_errmsg(cd));
		rc = dkv_step(se, l, q, 1, k, v, 1, oe);
		CHECK(rc == DKV_OK, "witness embedded step: %s", dkv_strerror(rc));
		CHECK(!memcmp(od, oe, sizeof(od)), "witness step %ld: outputs differ", steps);
		if (++steps == 2) {
			printf("ready\n");
			fflush(stdout);
		}
		if (stat(stop, &st) == 0 || steps >= 4000 * L)
			break;
		usleep(5000);
	}
	printf("witness: %ld steps, all bit-identical: %s\n", steps, failed ? "no" : "yes");
	dkv_disconnect(cd);
	dkv_disconnect(ce);
	free(q), free(k), free(v);
	return failed;
}

/*
 * Signal the daemon from a child 100 ms after this client starts waiting
 * in a loop of long steps; the step must fail with one of want1/want2
 * within limit_s of the signal.
 */
static int signal_under_step(const char *addr, pid_t daemon, int sig,
			     int want1, int want2, double limit_s)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = open_seq(c, 1u << 20);
	size_t n = 1024;
	float *q = arr(n * QH * HD), *k = arr(n * KVH * HD), *v = arr(n * KVH * HD);
	float *o = malloc(n * QH * HD * sizeof(float));
	double t_sig;
	pid_t kid;
	int rc = DKV_OK;

	if (!s || !o)
		return 1;
	kid = fork();
	if (kid == 0) {
		usleep(100000);
		kill(daemon, sig);
		_exit(0);
	}
	t_sig = now() + 0.1;
	for (uint32_t i = 0; rc == DKV_OK && now() < t_sig + 10; i++)
		rc = dkv_step(s, i % L, q, (uint32_t)n, k, v, (uint32_t)n, o);
	CHECK(rc == want1 || rc == want2, "step gave %d (%s), wanted %d or %d", rc,
	      dkv_errmsg(c), want1, want2);
	CHECK(now() - t_sig < limit_s, "took %.2f s after the signal", now() - t_sig);
	printf("step failed with %s %.3f s after the signal\n", dkv_strerror(rc),
	       now() - t_sig);
	waitpid(kid, NULL, 0);
	rc = dkv_seq_length(s, 0, &(uint64_t){ 0 });
	CHECK(rc == want1 || rc == want2, "length afterwards gave %d", rc);
	dkv_disconnect(c);
	free(q), free(k), free(v), free(o);
	return failed;
}

/* One step of 16 new tokens and 1 query on layer 0, daemon vs embedded. */
static void same_step(dkv_seq *sd, dkv_seq *se, const char *what)
{
	size_t n = 16;
	float *q = arr(QH * HD), *k = arr(n * KVH * HD), *v = arr(n * KVH * HD);
	float od[QH * HD], oe[QH * HD];
	int rd = dkv_step(sd, 0, q, 1, k, v, (uint32_t)n, od);
	int re = dkv_step(se, 0, q, 1, k, v, (uint32_t)n, oe);

	CHECK(rd == DKV_OK && re == DKV_OK, "%s: step gave %d and %d", what, rd, re);
	CHECK(!rd && !memcmp(od, oe, sizeof(od)), "%s: outputs differ", what);
	free(q), free(k), free(v);
}

/* After a timeout every call of c fails with DKV_E_DISCONNECTED. */
static void check_given_up(dkv_client *c, dkv_seq *s)
{
	float q[QH * HD] = { 0 }, o[QH * HD];
	dkv_seq_config cfg;
	dkv_seq *s2 = NULL;
	uint64_t n;
	int rc;

	rc = dkv_step(s, 0, q, 1, NULL, NULL, 0, o);
	CHECK(rc == DKV_E_DISCONNECTED, "step after the timeout gave %d", rc);
	rc = dkv_seq_length(s, 0, &n);
	CHECK(rc == DKV_E_DISCONNECTED, "length after the timeout gave %d", rc);
	dkv_seq_config_init(&cfg);
	cfg.n_layers = L;
	cfg.n_q_heads = QH;
	cfg.n_kv_heads = KVH;
	cfg.head_dim = HD;
	rc = dkv_seq_open(c, &cfg, &s2);
	CHECK(rc == DKV_E_DISCONNECTED, "open after the timeout gave %d", rc);
	CHECK(dkv_seq_close(s) == DKV_OK, "close after the timeout failed");
}

/*
 * The daemon stalls every step on `layer` (DASHKVD_TEST_STALL) past its
 * step_timeout of 1 s; the client waits with DASHKV_IPC_TIMEOUT_MS 500.
 * A step there gives DKV_E_TIMEOUT no sooner than step_timeout and
 * within 3 s; then every call of the client gives DKV_E_DISCONNECTED and
 * its handles close.  It prints "given up" and holds the client until the
 * file `go` exists (the daemon must end the session meanwhile); then a
 * new connection serves bit for bit.
 */
static int do_stall(const char *addr, uint32_t layer, const char *go)
{
	dkv_client *c = conn(addr), *ce = conn("embedded");
	dkv_seq *s = open_seq_layers(c, 1u << 20, layer + 1);
	dkv_seq *se = open_seq_layers(ce, 1u << 20, layer + 1);
	float *q = arr(QH * HD), *k = arr(KVH * HD), *v = arr(KVH * HD);
	float o[QH * HD];
	double t0, dt;
	int rc;

	if (!s || !se)
		return 1;
	same_step(s, se, "before the stall");
	t0 = now();
	rc = dkv_step(s, layer, q, 1, k, v, 1, o);
	dt = now() - t0;
	CHECK(rc == DKV_E_TIMEOUT, "stalled step gave %d (%s)", rc, dkv_errmsg(c));
	CHECK(dt >= 1.0 && dt < 3.0, "stalled step failed after %.2f s", dt);
	CHECK(strstr(dkv_errmsg(c), "heartbeat") != NULL, "message: %s", dkv_errmsg(c));
	printf("stalled step: %s after %.2f s (%s)\n", dkv_strerror(rc), dt, dkv_errmsg(c));
	check_given_up(c, s);
	printf("given up\n");
	fflush(stdout);
	for (int i = 0; i < 400 && access(go, F_OK); i++)
		usleep(25000); /* the daemon ends the session while we hold c */
	dkv_disconnect(c);
	c = conn(addr);
	s = open_seq_layers(c, 1u << 20, layer + 1);
	dkv_seq_close(se);
	se = open_seq_layers(ce, 1u << 20, layer + 1);
	if (s && se)
		same_step(s, se, "on a new connection");
	dkv_disconnect(c);
	dkv_disconnect(ce);
	free(q), free(k), free(v);
	return failed;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: ipc_client api|hold|dead|perm|limit|lat|many|busy|witness|killwait|hung|stall ADDR [PID|N|FILE|LAYER FILE]\n");
		return 2;
	}
	if (!strcmp(argv[1], "api"))
		return do_api(argv[2]);
	if (!strcmp(argv[1], "hold"))
		return do_hold(argv[2]);
	if (!strcmp(argv[1], "dead") && argc > 3)
		return do_dead(argv[2], (pid_t)atoi(argv[3]));
	if (!strcmp(argv[1], "connect") && argc > 4)
		return connect_gives(argv[2], atoi(argv[3]), argv[4]);
	if (!strcmp(argv[1], "perm"))
		return do_perm(argv[2]);
	if (!strcmp(argv[1], "limit"))
		return do_limit(argv[2]);
	if (!strcmp(argv[1], "many") && argc > 3)
		return do_many(argv[2], atoi(argv[3]));
	if (!strcmp(argv[1], "busy"))
		return do_busy(argv[2]);
	if (!strcmp(argv[1], "witness") && argc > 3)
		return do_witness(argv[2], argv[3]);
	if (!strcmp(argv[1], "killwait") && argc > 3)
		return signal_under_step(argv[2], (pid_t)atoi(argv[3]), SIGKILL,
					 DKV_E_DISCONNECTED, DKV_E_DISCONNECTED, 2.0);
	if (!strcmp(argv[1], "hung") && argc > 3)
		return signal_under_step(argv[2], (pid_t)atoi(argv[3]), SIGSTOP,
					 DKV_E_TIMEOUT, DKV_E_DISCONNECTED, 5.0);
	if (!strcmp(argv[1], "stall") && argc > 4)
		return do_stall(argv[2], (uint32_t)atoi(argv[3]), argv[4]);
	if (!strcmp(argv[1], "lat")) {
		double d = tiny_steps(argv[2], 1), e = tiny_steps("embedded", 1);
		double d0 = tiny_steps(argv[2], 0), e0 = tiny_steps("embedded", 0);

		printf("tiny step (N=1K, 1 query): daemon %.1f us, embedded %.1f us\n", d, e);
		printf("empty step (no query, no token): daemon %.1f us, embedded %.1f us\n",
		       d0, e0);
		return 0;
	}
	return 2;
}
