/*
 * check_shards.c - a sequence split over 1, 2 and 4 CPU shards
 * (DASHKV_SHARDS=cpu:N) gives bit-identical outputs: DASH-KV and exact
 * mode, f32 and bf16, small and large GQA groups, with and without the
 * tail estimate.  The context spans several pages, so every shard holds
 * some.  DASH-KV's outputs also stay close to exact attention.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "engine.h"
#include "dtype.h"
#include "gen/kvgen.h"
#include "krn.h"

#define TOKENS 21000u   /* 5 pages and a part */
#define CHUNK 3000u     /* prefill chunk; one query per chunk */
#define DECODE 4u

struct shape {
	const char *name;
	uint32_t q_heads, kv_heads, dim;
	int dtype, exact, tail;
	uint32_t candidates;
};

static const struct shape shapes[] = {
	{ "dash f32", 8, 2, 64, DKV_F32, 0, 1, 0 },
	{ "dash bf16", 8, 2, 64, DKV_BF16, 0, 1, 0 },
	{ "dash no tail", 8, 2, 64, DKV_F32, 0, 0, 0 },
	{ "dash group 16", 16, 1, 32, DKV_F32, 0, 1, 0 },
	{ "dash few candidates", 4, 1, 64, DKV_F32, 0, 1, 300 },
	{ "exact f32", 8, 2, 64, DKV_F32, 1, 1, 0 },
};
#define N_SHAPES ((int)(sizeof(shapes) / sizeof(shapes[0])))

static const char *specs[] = { "cpu:1", "cpu:2", "cpu:4" };
#define N_SPECS 3

/*
 * Prefill in chunks and decode a few tokens with the engine of `spec`;
 * every step's output goes to out (f32 or bf16 bytes), exact f32 outputs
 * of the same steps (exact mode) to ref when it is not NULL.
 */
static size_t run(const struct shape *sh, const char *spec, uint8_t *out)
{
	struct kvgen_params gp;
	struct kvgen *gen;
	struct rt_engine *e;
	struct rt_seq *s;
	dkv_seq_config cfg;
	char err[RT_ERRLEN] = "";
	size_t qn = (size_t)sh->q_heads * sh->dim, kn = (size_t)sh->kv_heads * sh->dim;
	size_t elt = sh->dtype == DKV_F32 ? 4 : 2, at = 0;
	float *k = malloc(CHUNK * kn * sizeof(float)), *v = malloc(CHUNK * kn * sizeof(float));
	float *q = malloc(qn * sizeof(float));

	ck_assert(k && v && q);
	ck_assert_int_eq(setenv("DASHKV_SHARDS", spec, 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s: %s", spec, err);
	ck_assert_uint_eq(rt_engine_shards(e), (uint32_t)(spec[4] - '0'));
	rt_config_defaults(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = sh->q_heads;
	cfg.n_kv_heads = sh->kv_heads;
	cfg.head_dim = sh->dim;
	cfg.dtype = sh->dtype;
	cfg.exact = sh->exact;
	cfg.tail_estimate = sh->tail;
	if (sh->candidates)
		cfg.candidates = sh->candidates;
	ck_assert_msg(rt_seq_open(e, &cfg, &s, err) == DKV_OK, "%s", err);

	kvgen_params_init(&gp);
	gp.n_q_heads = sh->q_heads;
	gp.n_kv_heads = sh->kv_heads;
	gp.head_dim = sh->dim;
	gen = kvgen_new(&gp);
	ck_assert(gen);
	for (uint64_t pos = 0; pos < TOKENS + DECODE;) {
		uint32_t n = pos < TOKENS ? (TOKENS - pos < CHUNK ? TOKENS - pos : CHUNK) : 1;
		kvgen_kv(gen, pos, n, k, v);
		kvgen_queries(gen, pos + n - 1, 0, q);
		test_to_dtype(sh->dtype, k, n * kn, k);
		test_to_dtype(sh->dtype, v, n * kn, v);
		test_to_dtype(sh->dtype, q, qn, q);
		ck_assert_msg(rt_seq_step(s, 0, q, 1, k, v, n, out + at, err) == DKV_OK,
			      "%s %s at %llu: %s", sh->name, spec, (unsigned long long)pos, err);
		at += qn * elt;
		pos += n;
	}
	kvgen_free(gen);
	rt_seq_close(s);
	rt_engine_free(e);
	free(k);
	free(v);
	free(q);
	return at;
}

START_TEST(shards_bit_identical)
{
	const struct shape *sh = &shapes[_i];
	size_t steps = (TOKENS + CHUNK - 1) / CHUNK + DECODE;
	size_t bytes = steps * sh->q_heads * sh->dim * 4, n[N_SPECS];
	uint8_t *out[N_SPECS];

	for (int i = 0; i < N_SPECS; i++) {
		out[i] = calloc(1, bytes);
		ck_assert(out[i]);
		n[i] = run(sh, specs[i], out[i]);
	}
	for (int i = 1; i < N_SPECS; i++) {
		ck_assert_uint_eq(n[i], n[0]);
		for (size_t b = 0; b < n[0]; b++)
			ck_assert_msg(out[i][b] == out[0][b],
				      "%s: %s differs from %s at byte %zu", sh->name,
				      specs[i], specs[0], b);
	}
	for (int i = 0; i < N_SPECS; i++)
		free(out[i]);
}
END_TEST

/* The f32 DASH-KV outputs stay near exact mode's (they are not garbage). */
START_TEST(sharded_dash_near_exact)
{
	struct shape dash = shapes[0], exact = shapes[5];
	size_t steps = (TOKENS + CHUNK - 1) / CHUNK + DECODE, qn = (size_t)8 * 64;
	float *a = calloc(steps * qn, 4), *b = calloc(steps * qn, 4);

	ck_assert(a && b);
	run(&dash, "cpu:2", (uint8_t *)a);
	run(&exact, "cpu:2", (uint8_t *)b);
	/* the last decode step: every head within 0.5 relative error */
	for (uint32_t hq = 0; hq < 8; hq++) {
		double num = 0, den = 0;
		const float *x = a + (steps - 1) * qn + hq * 64, *y = b + (steps - 1) * qn + hq * 64;
		for (int d = 0; d < 64; d++) {
			num += (x[d] - y[d]) * (double)(x[d] - y[d]);
			den += (double)y[d] * y[d];
		}
		ck_assert_msg(sqrt(num / den) < 0.5, "head %u: error %.3f", hq, sqrt(num / den));
	}
	free(a);
	free(b);
}
END_TEST

/*
 * A step whose pages do not fit the memory limit fails on every shard
 * before anything is stored: the length stays, and the sequence goes on
 * to give what a fresh one-shard sequence gives.
 */
START_TEST(sharded_append_all_or_nothing)
{
	struct shape sh = shapes[0];
	size_t qn = (size_t)sh.q_heads * sh.dim, kn = (size_t)sh.kv_heads * sh.dim;
	size_t n_big = 5 * 4096;
	float *k = calloc(n_big * kn, 4), *v = calloc(n_big * kn, 4), *q = calloc(qn, 4);
	float *o1 = calloc(qn, 4), *o2 = calloc(qn, 4);
	struct rt_engine *e[2];
	struct rt_seq *s[2];
	dkv_seq_config cfg;
	char err[RT_ERRLEN] = "";
	uint64_t len;

	ck_assert(k && v && q && o1 && o2);
	for (size_t i = 0; i < n_big * kn; i++) {
		k[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
		v[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f;
	}
	for (size_t i = 0; i < qn; i++)
		q[i] = (float)(i % 7) / 7.0f;
	rt_config_defaults(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = sh.q_heads;
	cfg.n_kv_heads = sh.kv_heads;
	cfg.head_dim = sh.dim;
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(setenv("DASHKV_SHARDS", i ? "cpu:1" : "cpu:2", 1), 0);
		ck_assert_msg(rt_engine_new(&e[i], err) == DKV_OK, "%s", err);
		ck_assert_msg(rt_seq_open(e[i], &cfg, &s[i], err) == DKV_OK, "%s", err);
		ck_assert_int_eq(rt_seq_step(s[i], 0, NULL, 0, k, v, 4096, NULL, err), DKV_OK);
	}
	/* room for a little more, not for four more pages */
	rt_engine_set_limit(e[0], rt_engine_used(e[0]) + (1u << 20));
	ck_assert_int_eq(rt_seq_step(s[0], 0, q, 1, k, v, (uint32_t)n_big - 4096, o1, err),
			 DKV_E_NOSPACE);
	ck_assert_int_eq(rt_seq_len(s[0], 0, &len, err), DKV_OK);
	ck_assert_uint_eq(len, 4096);
	rt_engine_set_limit(e[0], 0);
	for (int i = 0; i < 2; i++)
		ck_assert_msg(rt_seq_step(s[i], 0, q, 1, k + 4096 * kn, v + 4096 * kn,
					  (uint32_t)n_big - 4096, i ? o2 : o1, err) == DKV_OK, "%s", err);
	ck_assert(!memcmp(o1, o2, qn * 4));
	for (int i = 0; i < 2; i++) {
		rt_seq_close(s[i]);
		rt_engine_free(e[i]);
	}
	free(k);
	free(v);
	free(q);
	free(o1);
	free(o2);
}
END_TEST

/* A spec the engine cannot honour is refused with a message. */
START_TEST(bad_spec_refused)
{
	struct rt_engine *e = NULL;
	char err[RT_ERRLEN] = "";

	ck_assert_int_eq(setenv("DASHKV_SHARDS", "cpu:0", 1), 0);
	ck_assert_int_eq(rt_engine_new(&e, err), DKV_E_INVAL);
	ck_assert_msg(strstr(err, "DASHKV_SHARDS=cpu:0"), "%s", err);
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "gpu:all", 1), 0);
	ck_assert_int_ne(rt_engine_new(&e, err), DKV_OK);
	ck_assert_msg(strstr(err, "gpu:all"), "%s", err);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("shards");
	TCase *tc = tcase_create("shards");
	SRunner *sr;
	int failed;

	tcase_add_loop_test(tc, shards_bit_identical, 0, N_SHAPES);
	tcase_add_test(tc, sharded_dash_near_exact);
	tcase_add_test(tc, sharded_append_all_or_nothing);
	tcase_add_test(tc, bad_spec_refused);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
