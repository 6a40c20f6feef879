/*
 * fitstall.c - dashkv-fitstall: the worst decode step around a layer's
 * background fit of its learned hash models.
 *
 * One learned layer is filled with --tokens tokens of the realistic
 * generator (chunks of 4096, 64 queries at the end of each of the last 4
 * chunks), train_tokens set so that the fit starts at the end of the
 * fill; then --steps decode steps (one new token, one query) are timed.
 * Prints the median and the worst step, the step that was worst, the
 * step at which the fit's models swapped in (its memory, bytes_training in
 * dkv_stats, given back) and how long that step took.  Public API only.
 *
 *   dashkv-fitstall [--tokens N] [--kv-heads H] [--steps S] [--address A]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashkv.h"
#include "gen/kvgen.h"

#define CHUNK 4096u
#define PQ 64u
#define DIM 128u
#define GROUP 4u

struct opts {
	uint32_t tokens, kv_heads, steps;
	const char *address;
};

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what, int rc, dkv_client *c)
{
	fprintf(stderr, "dashkv-fitstall: %s: %s: %s\n", what, dkv_strerror(rc),
		c ? dkv_errmsg(c) : "");
	exit(1);
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void fill(dkv_client *c, dkv_seq *s, struct kvgen *g, const struct opts *o)
{
	uint32_t H = o->kv_heads, nq = H * GROUP;
	float *k = malloc((size_t)CHUNK * H * DIM * sizeof(float));
	float *v = malloc((size_t)CHUNK * H * DIM * sizeof(float));
	float *q = malloc((size_t)PQ * nq * DIM * sizeof(float));
	float *out = malloc((size_t)PQ * nq * DIM * sizeof(float));
	int rc;

	if (!k || !v || !q || !out)
		die("fill", DKV_E_NOMEM, NULL);
	for (uint32_t t = 0; t < o->tokens; t += CHUNK) {
		uint32_t n = o->tokens - t < CHUNK ? o->tokens - t : CHUNK;
		uint32_t m = t + n + 4 * CHUNK > o->tokens && n >= PQ ? PQ : 0;
		kvgen_kv(g, t, n, k, v);
		for (uint32_t j = 0; j < m; j++)
			kvgen_queries(g, t + n - m + j, 100 + j, q + (size_t)j * nq * DIM);
		rc = dkv_step(s, 0, m ? q : NULL, m, k, v, n, m ? out : NULL);
		if (rc)
			die("fill step", rc, c);
	}
	free(k);
	free(v);
	free(q);
	free(out);
}

static void run(const struct opts *o)
{
	struct kvgen_params p;
	struct kvgen *g;
	dkv_client *c;
	dkv_seq *s;
	dkv_seq_config cfg;
	dkv_stats st = { .struct_size = sizeof(st) };
	uint32_t H = o->kv_heads, nq = H * GROUP, worst_at = 0, swap_at = UINT32_MAX;
	float *k = malloc(H * DIM * sizeof(float)), *v = malloc(H * DIM * sizeof(float));
	float *q = malloc(nq * DIM * sizeof(float)), *out = malloc(nq * DIM * sizeof(float));
	double *ms = calloc(o->steps, sizeof(double)), t0, fill_ms;
	int rc;

	kvgen_params_init(&p);
	p.n_kv_heads = H;
	p.n_q_heads = nq;
	p.head_dim = DIM;
	g = kvgen_new(&p);
	if (!g || !k || !v || !q || !out || !ms)
		die("setup", DKV_E_NOMEM, NULL);
	rc = dkv_connect(o->address, &c);
	if (rc)
		die("connect", rc, NULL);
	dkv_seq_config_init(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = nq;
	cfg.n_kv_heads = H;
	cfg.head_dim = DIM;
	cfg.dtype = DKV_F32;
	cfg.hash = DKV_HASH_LEARNED;
	cfg.train_tokens = o->tokens;
	cfg.max_tokens = (uint64_t)o->tokens + o->steps;
	rc = dkv_seq_open(c, &cfg, &s);
	if (rc)
		die("open", rc, c);
	t0 = now_ms();
	fill(c, s, g, o);
	fill_ms = now_ms() - t0;
	for (uint32_t i = 0; i < o->steps; i++) {
		uint64_t pos = (uint64_t)o->tokens + i;
		kvgen_kv(g, pos, 1, k, v);
		kvgen_queries(g, pos, 7, q);
		t0 = now_ms();
		rc = dkv_step(s, 0, q, 1, k, v, 1, out);
		ms[i] = now_ms() - t0;
		if (rc)
			die("decode step", rc, c);
		if (ms[i] > ms[worst_at])
			worst_at = i;
		rc = dkv_seq_stats(s, &st);
		if (rc)
			die("stats", rc, c);
		if (swap_at == UINT32_MAX && !st.bytes_training)
			swap_at = i;
	}
	double worst = ms[worst_at], at_swap = swap_at < o->steps ? ms[swap_at] : 0;
	qsort(ms, o->steps, sizeof(double), by_value);
	printf("tokens %u kv_heads %u head_dim %u: fill %.0f ms; %u decode steps: "
	       "median %.2f ms, p99 %.2f ms, worst %.2f ms (step %u)\n", o->tokens, H, DIM,
	       fill_ms, o->steps, ms[o->steps / 2], ms[(size_t)o->steps * 99 / 100], worst,
	       worst_at);
	if (swap_at < o->steps)
		printf("models swapped in at step %u: %.2f ms; swaps that waited for their "
		       "fit: %u\n", swap_at, at_swap, st.fits_late);
	else
		printf("models not swapped in within %u steps\n", o->steps);
	dkv_seq_close(s);
	dkv_disconnect(c);
	kvgen_free(g);
	free(k);
	free(v);
	free(q);
	free(out);
	free(ms);
}

int main(int argc, char **argv)
{
	struct opts o = { 262144, 2, 64, "embedded" };
	static const struct option lo[] = {
		{ "tokens", required_argument, NULL, 't' },
		{ "kv-heads", required_argument, NULL, 'k' },
		{ "steps", required_argument, NULL, 's' },
		{ "address", required_argument, NULL, 'a' },
		{ NULL, 0, NULL, 0 }
	};
	int ch;

	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 't': o.tokens = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'k': o.kv_heads = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 's': o.steps = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'a': o.address = optarg; break;
		default:
			fprintf(stderr, "usage: dashkv-fitstall [--tokens N] [--kv-heads H] "
				"[--steps S] [--address A]\n");
			return 2;
		}
	}
	if (o.tokens < 2 * CHUNK || !o.kv_heads || o.kv_heads > 64 || !o.steps) {
		fprintf(stderr, "dashkv-fitstall: --tokens >= %u, --kv-heads 1..64, "
			"--steps >= 1\n", 2 * CHUNK);
		return 2;
	}
	run(&o);
	return 0;
}
