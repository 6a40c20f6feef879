/*
 * check_engine.c - the embedded engine through the public API: exact mode
 * against a double-precision reference, causal prefill, GQA, every dtype,
 * the DASH-KV path, every error path and all-or-nothing appends.
 */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dashkv.h"
#include "krn.h"
#include "ref_attn.h"
#include "trace.h"

/* ---- deterministic data ---- */

static uint64_t rng_state;

static double rnd_unit(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) * 0x1p-53;
}

static float rnd_normal(void)
{
	double u = rnd_unit() + 1e-12, v = rnd_unit();
	return (float)(sqrt(-2.0 * log(u)) * cos(2.0 * M_PI * v));
}

static float *rnd_array(size_t n, float amp)
{
	float *a = malloc(n * sizeof(*a));
	ck_assert_ptr_nonnull(a);
	for (size_t i = 0; i < n; i++)
		a[i] = amp * rnd_normal();
	return a;
}

/* Round f32 data through a dtype so the reference sees what is stored. */
static void *to_dtype(int dtype, float *a, size_t n)
{
	if (dtype == DKV_F32)
		return a;
	uint16_t *h = malloc(n * sizeof(*h));
	ck_assert_ptr_nonnull(h);
	for (size_t i = 0; i < n; i++) {
		h[i] = dtype == DKV_F16 ? krn_f32_to_f16_1(a[i]) : krn_f32_to_bf16_1(a[i]);
		a[i] = dtype == DKV_F16 ? krn_f16_to_f32_1(h[i]) : krn_bf16_to_f32_1(h[i]);
	}
	return h;
}

static void out_to_f32(int dtype, const void *out, float *f, size_t n)
{
	const uint16_t *h = out;
	for (size_t i = 0; i < n; i++)
		f[i] = dtype == DKV_F32 ? ((const float *)out)[i] :
		       dtype == DKV_F16 ? krn_f16_to_f32_1(h[i]) : krn_bf16_to_f32_1(h[i]);
}

static size_t dsize(int dtype)
{
	return dtype == DKV_F32 ? 4 : 2;
}

static dkv_seq_config geom(uint32_t qh, uint32_t kvh, uint32_t dim, int dtype)
{
	dkv_seq_config c;
	dkv_seq_config_init(&c);
	c.n_layers = 2;
	c.n_q_heads = qh;
	c.n_kv_heads = kvh;
	c.head_dim = dim;
	c.dtype = dtype;
	return c;
}

/*
 * Append len tokens of random k, v to layer 1 in chunks, then run one
 * query at the last position and compare with the double reference.
 * Returns the worst relative error over query heads.
 */
static double run_vs_reference(dkv_seq_config c, uint32_t len, uint32_t chunk, uint64_t seed)
{
	dkv_client *cl;
	dkv_seq *s;
	size_t row = (size_t)c.n_kv_heads * c.head_dim, qrow = (size_t)c.n_q_heads * c.head_dim;
	double worst = 0.0;

	rng_state = seed;
	float *k = rnd_array(len * row, 1.0f), *v = rnd_array(len * row, 1.0f);
	float *q = rnd_array(qrow, 2.0f);
	void *kd = to_dtype(c.dtype, k, len * row), *vd = to_dtype(c.dtype, v, len * row);
	void *qd = to_dtype(c.dtype, q, qrow);
	void *out = malloc(qrow * 4);
	float *of = malloc(qrow * 4);
	double *ref = malloc(qrow * sizeof(double));

	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	for (uint32_t t = 0; t < len; t += chunk) {
		uint32_t n = len - t < chunk ? len - t : chunk;
		ck_assert_int_eq(dkv_step(s, 1, NULL, 0, (char *)kd + t * row * dsize(c.dtype),
					  (char *)vd + t * row * dsize(c.dtype), n, NULL), DKV_OK);
	}
	ck_assert_int_eq(dkv_step(s, 1, qd, 1, NULL, NULL, 0, out), DKV_OK);
	out_to_f32(c.dtype, out, of, qrow);
	ref_attention(q, k, v, len, c.n_q_heads, c.n_kv_heads, c.head_dim, c.scale, ref);
	for (uint32_t h = 0; h < c.n_q_heads; h++) {
		double e = ref_rel_error(of + h * c.head_dim, ref + h * c.head_dim, c.head_dim);
		worst = e > worst ? e : worst;
	}
	dkv_disconnect(cl);
	if (kd != k) {
		free(kd);
		free(vd);
		free(qd);
	}
	free(k);
	free(v);
	free(q);
	free(out);
	free(of);
	free(ref);
	return worst;
}

/* ---- exact mode against the reference ---- */

START_TEST(exact_matches_reference_f32)
{
	static const uint32_t dims[] = { 8, 24, 64, 136, 256 };
	dkv_seq_config c = geom(8, 2, dims[_i], DKV_F32);
	c.exact = 1;
	double e = run_vs_reference(c, 1500, 333, 11 + _i);
	ck_assert_msg(e < 2e-5, "dim %u: relative error %g >= 2e-5", dims[_i], e);
}
END_TEST

START_TEST(exact_matches_reference_dtypes)
{
	/* the output is rounded to the dtype: half an ulp of f16 / bf16 */
	static const int dt[] = { DKV_F16, DKV_BF16 };
	static const double tol[] = { 1e-3, 8e-3 };
	dkv_seq_config c = geom(4, 4, 64, dt[_i]);
	c.exact = 1;
	double e = run_vs_reference(c, 1000, 1000, 5);
	ck_assert_msg(e < tol[_i], "dtype %d: relative error %g >= %g", dt[_i], e, tol[_i]);
}
END_TEST

START_TEST(exact_gqa_groups)
{
	/* 12 query heads over 3 kv heads: head h reads kv head h / 4 */
	dkv_seq_config c = geom(12, 3, 32, DKV_F32);
	c.exact = 1;
	ck_assert_double_lt(run_vs_reference(c, 700, 100, 3), 2e-5);
}
END_TEST

START_TEST(dash_small_context_is_exact)
{
	/* sinks + window + top_k cover the whole context: nothing estimated */
	dkv_seq_config c = geom(8, 2, 64, DKV_F32);
	ck_assert_double_lt(run_vs_reference(c, 300, 64, 9), 2e-5);
}
END_TEST

START_TEST(dash_long_context_tail_helps)
{
	/* random keys: flat attention, the hardest case for top-K (the exact
	 * top 132 tokens hold about a third of the mass); the calibrated tail
	 * estimate must cut the error of top-K alone by at least half */
	dkv_seq_config c = geom(4, 2, 64, DKV_F32);
	c.top_k = 64;
	c.candidates = 512;
	c.tail_estimate = 0;
	double off = run_vs_reference(c, 20000, 4096, 21);
	c.tail_estimate = 1;
	double on = run_vs_reference(c, 20000, 4096, 21);
	ck_assert_msg(on < 0.5 * off && on < 1.0,
		      "relative error %g with the tail estimate, %g without", on, off);
}
END_TEST

/* ---- causal prefill ---- */

START_TEST(causal_prefill_chunks)
{
	/* queries of a chunk see only keys up to their own position */
	int exact = _i;
	dkv_seq_config c = geom(4, 2, 32, DKV_F32);
	uint32_t len = exact ? 600 : 200, chunk = 50;
	size_t row = 2 * 32, qrow = 4 * 32;
	dkv_client *cl;
	dkv_seq *s;

	c.exact = exact;
	rng_state = 77;
	float *k = rnd_array(len * row, 1.0f), *v = rnd_array(len * row, 1.0f);
	float *q = rnd_array(len * qrow, 2.0f), *out = malloc(len * qrow * 4);
	double *ref = malloc(qrow * sizeof(double));
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	for (uint32_t t = 0; t < len; t += chunk)
		ck_assert_int_eq(dkv_step(s, 0, q + t * qrow, chunk, k + t * row,
					  v + t * row, chunk, out + t * qrow), DKV_OK);
	for (uint32_t p = 0; p < len; p += 7) {
		ref_attention(q + p * qrow, k, v, p + 1, 4, 2, 32, 0, ref);
		double e = ref_rel_error(out + p * qrow, ref, qrow);
		ck_assert_msg(e < 2e-5, "position %u: error %g", p, e);
	}
	dkv_disconnect(cl);
	free(k);
	free(v);
	free(q);
	free(out);
	free(ref);
}
END_TEST

/* ---- the DASH-KV path finds a planted needle ---- */

START_TEST(dash_finds_needle)
{
	dkv_seq_config c = geom(2, 1, 64, DKV_F32);
	uint32_t len = 30000, needle = 12345;
	dkv_client *cl;
	dkv_seq *s;
	const uint32_t *idx;

	c.top_k = 32;
	c.candidates = 256;
	rng_state = 1234;
	float *k = rnd_array((size_t)len * 64, 1.0f), *v = rnd_array((size_t)len * 64, 1.0f);
	float *q = rnd_array(2 * 64, 1.0f), out[2 * 64];
	double ref[2 * 64];
	/* the needle key is the query, scaled: its logit dominates */
	for (int d = 0; d < 64; d++)
		k[(size_t)needle * 64 + d] = 3.0f * q[d];
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	ck_assert_int_eq(rt_seq_set_trace(s, 1), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, len, NULL), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, out), DKV_OK);
	int n = rt_seq_trace_exact(s, 0, &idx);
	ck_assert_int_eq(n, 4 + 32 + 64);
	int found = 0;
	for (int i = 0; i < n; i++) {
		found |= idx[i] == needle;
		if (i)
			ck_assert_uint_lt(idx[i - 1], idx[i]);
	}
	ck_assert_msg(found, "needle %u not taken exactly", needle);
	ref_attention(q, k, v, len, 2, 1, 64, 0, ref);
	ck_assert_double_lt(ref_rel_error(out, ref, 64), 0.05);
	dkv_stats st;
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	ck_assert_uint_eq(st.layer_tokens[0], len);
	/* the coarse filter aims at 1.25 x candidates, never fewer than top_k */
	ck_assert_msg(st.last_candidates >= 32 && st.last_candidates <= 4 * 256,
		      "candidates %g", st.last_candidates);
	ck_assert(st.last_exact_tokens == 100.0);
	ck_assert(st.last_estimated_tokens == len - 100.0);
	/* the phases are parts of the attention time */
	ck_assert_uint_gt(st.last_coarse_ns, 0);
	ck_assert_uint_gt(st.last_fine_ns, 0);
	ck_assert_uint_gt(st.last_tail_ns, 0);
	ck_assert_uint_le(st.last_coarse_ns + st.last_fine_ns + st.last_tail_ns, st.last_attend_ns);
	dkv_disconnect(cl);
	free(k);
	free(v);
	free(q);
}
END_TEST

START_TEST(dash_extreme_logits_stay_finite)
{
	/* a key whose logit is hundreds above the rest: the output is its value */
	dkv_seq_config c = geom(2, 1, 64, DKV_F32);
	uint32_t len = 20000, needle = 777 + 4000 * _i;
	dkv_client *cl;
	dkv_seq *s;
	float out[2 * 64];

	rng_state = 4321 + _i;
	float *k = rnd_array((size_t)len * 64, 1.0f), *v = rnd_array((size_t)len * 64, 1.0f);
	float *q = rnd_array(2 * 64, 1.0f);
	for (int d = 0; d < 64; d++)
		k[(size_t)needle * 64 + d] = 60.0f * q[d];
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, len, NULL), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, out), DKV_OK);
	for (int d = 0; d < 64; d++) {
		ck_assert_msg(isfinite(out[d]), "out[%d] = %g", d, out[d]);
		ck_assert_float_eq_tol(out[d], v[(size_t)needle * 64 + d], 1e-3);
	}
	dkv_disconnect(cl);
	free(k);
	free(v);
	free(q);
}
END_TEST

/* ---- configuration ---- */

START_TEST(config_defaults)
{
	dkv_seq_config c;
	memset(&c, 0xff, sizeof(c));
	dkv_seq_config_init(&c);
	ck_assert_uint_eq(c.struct_size, sizeof(c));
	ck_assert_uint_eq(c.hash_bits, 128);
	ck_assert_int_eq(c.hash, DKV_HASH_SIMHASH);
	ck_assert_uint_eq(c.top_k, 256);
	ck_assert_uint_eq(c.candidates, 2048);
	ck_assert_uint_eq(c.sink_tokens, 4);
	ck_assert_uint_eq(c.recent_window, 64);
	ck_assert_uint_eq(c.max_tokens, 1u << 20);
	ck_assert_int_eq(c.exact, 0);
	ck_assert_uint_eq(c.n_layers, 0);
	for (unsigned i = 0; i < sizeof(c.reserved) / 4; i++)
		ck_assert_uint_eq(c.reserved[i], 0);
}
END_TEST

struct bad_cfg {
	const char *what;
	void (*edit)(dkv_seq_config *);
	int code;
};

static void e_layers0(dkv_seq_config *c) { c->n_layers = 0; }
static void e_layers_big(dkv_seq_config *c) { c->n_layers = DKV_MAX_LAYERS + 1; }
static void e_kv0(dkv_seq_config *c) { c->n_kv_heads = 0; }
static void e_gqa(dkv_seq_config *c) { c->n_q_heads = 6; c->n_kv_heads = 4; }
static void e_dim(dkv_seq_config *c) { c->head_dim = 12; }
static void e_dim_big(dkv_seq_config *c) { c->head_dim = 264; }
static void e_dtype(dkv_seq_config *c) { c->dtype = 7; }
static void e_bits(dkv_seq_config *c) { c->hash_bits = 96; }
static void e_hash(dkv_seq_config *c) { c->hash = 9; }
static void e_cand(dkv_seq_config *c) { c->top_k = 100; c->candidates = 50; }
static void e_mass(dkv_seq_config *c) { c->mass_target = 1.5f; }
static void e_tail(dkv_seq_config *c) { c->tail_estimate = 2; }
static void e_scale(dkv_seq_config *c) { c->scale = -1.0f; }
static void e_scale_nan(dkv_seq_config *c) { c->scale = NAN; }
static void e_size(dkv_seq_config *c) { c->struct_size = 3; }
static void e_reserved(dkv_seq_config *c) { c->reserved[2] = 1; }
static void e_maxtok(dkv_seq_config *c) { c->max_tokens = 1ull << 40; }

static const struct bad_cfg bad_cfgs[] = {
	{ "n_layers", e_layers0, DKV_E_INVAL },
	{ "n_layers", e_layers_big, DKV_E_INVAL },
	{ "n_kv_heads", e_kv0, DKV_E_INVAL },
	{ "n_q_heads", e_gqa, DKV_E_INVAL },
	{ "head_dim", e_dim, DKV_E_INVAL },
	{ "head_dim", e_dim_big, DKV_E_INVAL },
	{ "dtype", e_dtype, DKV_E_INVAL },
	{ "hash_bits", e_bits, DKV_E_INVAL },
	{ "hash", e_hash, DKV_E_INVAL },
	{ "candidates", e_cand, DKV_E_INVAL },
	{ "mass_target", e_mass, DKV_E_INVAL },
	{ "tail_estimate", e_tail, DKV_E_INVAL },
	{ "scale", e_scale, DKV_E_INVAL },
	{ "scale", e_scale_nan, DKV_E_INVAL },
	{ "struct_size", e_size, DKV_E_INVAL },
	{ "reserved", e_reserved, DKV_E_INVAL },
	{ "max_tokens", e_maxtok, DKV_E_INVAL },
};

START_TEST(config_rejects_bad_values)
{
	const struct bad_cfg *b = &bad_cfgs[_i];
	dkv_seq_config c = geom(8, 2, 64, DKV_F32);
	dkv_client *cl;
	dkv_seq *s = NULL;

	b->edit(&c);
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), b->code);
	ck_assert_ptr_null(s);
	ck_assert_msg(strstr(dkv_errmsg(cl), b->what), "message '%s' does not name %s",
		      dkv_errmsg(cl), b->what);
	dkv_disconnect(cl);
}
END_TEST

START_TEST(connect_addresses)
{
	dkv_client *cl = NULL;

	ck_assert_int_eq(dkv_connect("embedded", NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_connect("bogus:addr", &cl), DKV_E_INVAL);
	ck_assert_ptr_null(cl);
	setenv("DASHKV_ADDRESS", "embedded", 1);
	ck_assert_int_eq(dkv_connect(NULL, &cl), DKV_OK);
	dkv_disconnect(cl);
	unsetenv("DASHKV_ADDRESS");
	ck_assert_int_eq(dkv_connect("", &cl), DKV_OK);
	dkv_disconnect(cl);
	dkv_disconnect(NULL);
}
END_TEST

/*
 * A failed dkv_connect prints nothing: its message is dkv_errmsg(NULL),
 * and the next connect that succeeds clears it.
 */
START_TEST(connect_errors_are_silent)
{
	static const struct { const char *addr, *shards, *want; } bad[] = {
		{ "bogus:addr", NULL, "bogus:addr" },
		{ "unix:/nonexistent/dashkvd.sock", NULL, "/nonexistent/dashkvd.sock" },
		{ "embedded", "cpu:0", "DASHKV_SHARDS=cpu:0" },
	};
	char path[] = "/tmp/check_engine.stderr.XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	dkv_client *cl = NULL;
	struct stat st;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(saved, 0);
	ck_assert_int_ge(dup2(fd, 2), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (bad[i].shards)
			setenv("DASHKV_SHARDS", bad[i].shards, 1);
		ck_assert_int_ne(dkv_connect(bad[i].addr, &cl), DKV_OK);
		unsetenv("DASHKV_SHARDS");
		ck_assert_ptr_null(cl);
		ck_assert_msg(strstr(dkv_errmsg(NULL), bad[i].want), "%s: \"%s\"",
			      bad[i].addr, dkv_errmsg(NULL));
	}
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_str_eq(dkv_errmsg(NULL), "");
	dkv_disconnect(cl);
	ck_assert_int_ge(dup2(saved, 2), 0);
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_msg(st.st_size == 0, "dkv_connect wrote %lld bytes to stderr",
		      (long long)st.st_size);
	close(fd);
	close(saved);
	unlink(path);
}
END_TEST

START_TEST(strerror_covers_codes)
{
	for (int code = DKV_OK; code >= DKV_E_INTERNAL; code--) {
		const char *m = dkv_strerror(code);
		ck_assert_ptr_nonnull(m);
		ck_assert_str_ne(m, "unknown status code");
		for (int other = code - 1; other >= DKV_E_INTERNAL; other--)
			ck_assert_str_ne(m, dkv_strerror(other));
	}
	ck_assert_str_eq(dkv_strerror(-999), "unknown status code");
}
END_TEST

/* ---- error paths leave the sequence unchanged ---- */

struct fixture {
	dkv_client *cl;
	dkv_seq *s;
	float k[64 * 2 * 16], v[64 * 2 * 16], q[4 * 16];
};

static void fixture_open(struct fixture *f, uint64_t max_tokens)
{
	dkv_seq_config c = geom(4, 2, 16, DKV_F32);
	c.max_tokens = max_tokens;
	rng_state = 99;
	for (size_t i = 0; i < sizeof(f->k) / 4; i++) {
		f->k[i] = rnd_normal();
		f->v[i] = rnd_normal();
	}
	for (size_t i = 0; i < sizeof(f->q) / 4; i++)
		f->q[i] = rnd_normal();
	ck_assert_int_eq(dkv_connect("embedded", &f->cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(f->cl, &c, &f->s), DKV_OK);
}

static void assert_len(struct fixture *f, uint32_t layer, uint64_t want)
{
	uint64_t len = 99;
	ck_assert_int_eq(dkv_seq_length(f->s, layer, &len), DKV_OK);
	ck_assert_uint_eq(len, want);
}

START_TEST(step_argument_errors)
{
	struct fixture f;
	float out[4 * 16];
	uint64_t len;

	fixture_open(&f, 0);
	ck_assert_int_eq(dkv_step(f.s, 2, NULL, 0, f.k, f.v, 1, NULL), DKV_E_INVAL);
	ck_assert_str_eq(dkv_errmsg(f.cl), "layer 2 out of range [0, 2)");
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, NULL, f.v, 1, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k, NULL, 1, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 1, NULL, NULL, 0, out), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(f.cl), "n_q"));
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 2, f.k, f.v, 1, out), DKV_E_INVAL);
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 1, f.k, f.v, 1, out), DKV_E_INVAL);
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 1, f.k, f.v, 1, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_step(NULL, 0, NULL, 0, NULL, NULL, 0, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_seq_length(f.s, 5, &len), DKV_E_INVAL);
	ck_assert_int_eq(dkv_seq_length(f.s, 0, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_seq_stats(f.s, NULL), DKV_E_INVAL);
	ck_assert_int_eq(dkv_seq_close(NULL), DKV_E_INVAL);
	assert_len(&f, 0, 0);
	/* an empty step is fine */
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, NULL, NULL, 0, NULL), DKV_OK);
	assert_len(&f, 0, 0);
	dkv_disconnect(f.cl);
}
END_TEST

/* Output of one query after appending the fixture's 64 tokens in 4 steps. */
static void reference_output(float *out)
{
	struct fixture f;
	fixture_open(&f, 0);
	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k + i * 16 * 32,
					  f.v + i * 16 * 32, 16, NULL), DKV_OK);
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 1, NULL, NULL, 0, out), DKV_OK);
	dkv_disconnect(f.cl);
}

/*
 * NaN and Inf in 16-bit inputs (f16 and bf16 bit patterns) give
 * DKV_E_BADINPUT and store nothing; the same step without them is stored,
 * and so is the largest finite value.  _i: dtype (f16, bf16) x (NaN in k, Inf in v, NaN in q, -Inf in k).
 */
START_TEST(bad_half_values_store_nothing)
{
	static const uint16_t nan16[2] = { 0x7e00, 0x7fc0 }, inf16[2] = { 0x7c00, 0x7f80 };
	int bf = _i >= 4, kind = _i % 4, dtype = bf ? DKV_BF16 : DKV_F16;
	dkv_seq_config c = geom(4, 2, 16, dtype);
	size_t nkv = 16 * 2 * 16, nq = 4 * 16;
	float *kf = rnd_array(nkv, 1), *vf = rnd_array(nkv, 1), *qf = rnd_array(nq, 1);
	uint16_t *k = to_dtype(dtype, kf, nkv), *v = to_dtype(dtype, vf, nkv);
	uint16_t *q = to_dtype(dtype, qf, nq), out[4 * 16];
	uint16_t *at[4] = { &k[100], &v[nkv - 1], &q[3], &k[0] };
	uint16_t bad[4] = { nan16[bf], inf16[bf], nan16[bf], (uint16_t)(inf16[bf] | 0x8000) };
	uint16_t good = *at[kind];
	dkv_client *cl;
	dkv_seq *s;
	uint64_t len = 99;

	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	v[5] = bf ? 0x7f7f : 0x7bff; /* the largest finite value is taken */
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, 16, NULL), DKV_OK);
	v[5] = 0;
	*at[kind] = bad[kind];
	ck_assert_int_eq(dkv_step(s, 0, q, 1, k, v, 16, out), DKV_E_BADINPUT);
	ck_assert_int_eq(dkv_seq_length(s, 0, &len), DKV_OK);
	ck_assert_uint_eq(len, 16);
	*at[kind] = good;
	ck_assert_int_eq(dkv_step(s, 0, q, 1, k, v, 16, out), DKV_OK);
	ck_assert_int_eq(dkv_seq_length(s, 0, &len), DKV_OK);
	ck_assert_uint_eq(len, 32);
	dkv_disconnect(cl);
	free(kf);
	free(vf);
	free(qf);
	free(k);
	free(v);
	free(q);
}
END_TEST

START_TEST(bad_values_store_nothing)
{
	/* _i: 0 NaN in k, 1 Inf in v, 2 NaN in q, 3 -Inf in k (f16 too) */
	struct fixture f;
	float out[64], want[64], bad[16 * 32], badq[64];

	reference_output(want);
	fixture_open(&f, 0);
	for (int i = 0; i < 4; i++) {
		memcpy(bad, f.k + i * 16 * 32, sizeof(bad));
		memcpy(badq, f.q, sizeof(badq));
		float *kk = f.k + i * 16 * 32, *vv = f.v + i * 16 * 32;
		const float *qq = NULL;
		uint32_t nq = 0;
		if (_i == 0) {
			bad[100] = NAN;
			kk = bad;
		} else if (_i == 1) {
			memcpy(bad, vv, sizeof(bad));
			bad[511] = INFINITY;
			vv = bad;
		} else if (_i == 2) {
			badq[3] = NAN;
			qq = badq;
			nq = 1;
		} else {
			bad[0] = -INFINITY;
			kk = bad;
		}
		ck_assert_int_eq(dkv_step(f.s, 0, qq, nq, kk, vv, 16, out), DKV_E_BADINPUT);
		assert_len(&f, 0, (uint64_t)i * 16);
		ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k + i * 16 * 32,
					  f.v + i * 16 * 32, 16, NULL), DKV_OK);
	}
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 1, NULL, NULL, 0, out), DKV_OK);
	ck_assert_mem_eq(out, want, sizeof(out));
	dkv_disconnect(f.cl);
}
END_TEST

START_TEST(max_tokens_is_all_or_nothing)
{
	struct fixture f;
	float out[64], want[64];

	reference_output(want);
	fixture_open(&f, 64);
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k, f.v, 48, NULL), DKV_OK);
	/* 48 + 32 > 64: nothing of the 32 is stored */
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k + 48 * 32, f.v + 48 * 32, 32, NULL),
			 DKV_E_NOSPACE);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(f.cl), "max_tokens"));
	assert_len(&f, 0, 48);
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k + 48 * 32, f.v + 48 * 32, 16, NULL),
			 DKV_OK);
	ck_assert_int_eq(dkv_step(f.s, 0, f.q, 1, NULL, NULL, 0, out), DKV_OK);
	ck_assert_mem_eq(out, want, sizeof(out));
	ck_assert_int_eq(dkv_step(f.s, 0, NULL, 0, f.k, f.v, 1, NULL), DKV_E_NOSPACE);
	assert_len(&f, 0, 64);
	assert_len(&f, 1, 0);
	dkv_disconnect(f.cl);
}
END_TEST

START_TEST(memory_limit_is_all_or_nothing)
{
	dkv_seq_config c = geom(4, 2, 128, DKV_F32);
	dkv_client *cl;
	dkv_seq *s;
	size_t row = 2 * 128;
	uint32_t n = 5000; /* two pages of 4096 tokens */
	uint64_t len;

	rng_state = 5;
	/* the scratch of the coarse filter's pool grows with max_tokens */
	c.max_tokens = 8192;
	float *k = rnd_array(n * row, 1.0f), *v = rnd_array(n * row, 1.0f);
	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_set_memory_limit(cl, 16u << 20), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &s), DKV_OK);
	/* one page is 10 MiB (8.2 MiB of keys, values and codes, rounded to
	 * huge pages) plus a few MiB of scratch: the second page fails */
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, 4000, NULL), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, n - 4000, NULL), DKV_E_NOSPACE);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(cl), "memory limit"));
	ck_assert_int_eq(dkv_seq_length(s, 0, &len), DKV_OK);
	ck_assert_uint_eq(len, 4000);
	ck_assert_int_eq(dkv_set_memory_limit(cl, 0), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, n - 4000, NULL), DKV_OK);
	ck_assert_int_eq(dkv_seq_length(s, 0, &len), DKV_OK);
	ck_assert_uint_eq(len, n);
	ck_assert_int_eq(dkv_set_memory_limit(NULL, 0), DKV_E_INVAL);
	dkv_disconnect(cl);
	free(k);
	free(v);
}
END_TEST

START_TEST(stats_and_lengths)
{
	struct fixture f;
	dkv_stats st;
	float out[64];

	fixture_open(&f, 0);
	ck_assert_int_eq(dkv_step(f.s, 1, f.q, 1, f.k, f.v, 10, out), DKV_OK);
	ck_assert_int_eq(dkv_step(f.s, 1, NULL, 0, f.k, f.v, 5, NULL), DKV_OK);
	ck_assert_int_eq(dkv_seq_stats(f.s, &st), DKV_OK);
	ck_assert_uint_eq(st.struct_size, sizeof(st));
	ck_assert_uint_eq(st.n_layers, 2);
	ck_assert_uint_eq(st.layer_tokens[0], 0);
	ck_assert_uint_eq(st.layer_tokens[1], 15);
	ck_assert_uint_eq(st.steps, 2);
	/* one page: keys + values at f32 of 4096 tokens x 2 heads x 16 dims */
	ck_assert_uint_ge(st.bytes_full, 2ull * 4096 * 2 * 16 * 4);
	ck_assert_uint_gt(st.bytes_codes, 0);
	ck_assert_uint_gt(st.bytes_summaries, 0);
	ck_assert_int_eq(dkv_seq_train(f.s), DKV_OK);
	assert_len(&f, 1, 15);
	dkv_disconnect(f.cl);
}
END_TEST

START_TEST(disconnect_closes_sequences)
{
	dkv_client *cl;
	dkv_seq *a, *b, *c2;
	dkv_seq_config c = geom(2, 1, 8, DKV_F32);
	float kv[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

	ck_assert_int_eq(dkv_connect("embedded", &cl), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &a), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &b), DKV_OK);
	ck_assert_int_eq(dkv_seq_open(cl, &c, &c2), DKV_OK);
	ck_assert_int_eq(dkv_step(b, 0, NULL, 0, kv, kv, 1, NULL), DKV_OK);
	ck_assert_int_eq(dkv_seq_close(b), DKV_OK);
	dkv_disconnect(cl); /* a and c2 are freed here (ASan checks) */
}
END_TEST

/* ---- independent clients in concurrent threads ---- */

struct thread_job {
	uint64_t seed;
	float out[8 * 32];
	int rc;
};

/* A DASH-KV sequence of 6000 tokens and one query, all in this thread. */
static void *thread_run(void *arg)
{
	struct thread_job *job = arg;
	dkv_seq_config c = geom(8, 2, 32, DKV_F32);
	uint32_t len = 6000;
	uint64_t st = job->seed;
	dkv_client *cl;
	dkv_seq *s;
	float *k = malloc((size_t)len * 64 * 4), *v = malloc((size_t)len * 64 * 4), q[8 * 32];

	c.top_k = 32;
	c.candidates = 128;
	for (size_t i = 0; i < (size_t)len * 64; i++) {
		st = st * 6364136223846793005ull + 1442695040888963407ull;
		k[i] = (float)(int32_t)(st >> 32) * 0x1p-31f;
		v[i] = (float)(int32_t)(st >> 16 & 0xffffffff) * 0x1p-31f;
	}
	for (int i = 0; i < 8 * 32; i++)
		q[i] = k[(size_t)i * 7] * 3.0f;
	job->rc = dkv_connect("embedded", &cl);
	if (!job->rc)
		job->rc = dkv_seq_open(cl, &c, &s);
	for (uint32_t t = 0; !job->rc && t < len; t += 1000)
		job->rc = dkv_step(s, 0, NULL, 0, k + (size_t)t * 64, v + (size_t)t * 64, 1000, NULL);
	if (!job->rc)
		job->rc = dkv_step(s, 0, q, 1, NULL, NULL, 0, job->out);
	if (!job->rc)
		dkv_disconnect(cl);
	free(k);
	free(v);
	return NULL;
}

START_TEST(clients_in_threads_are_independent)
{
	/* four threads, two seeds: each output equals the same work alone */
	struct thread_job alone[2], jobs[4];
	pthread_t th[4];

	for (int i = 0; i < 2; i++) {
		alone[i].seed = 1000 + i;
		thread_run(&alone[i]);
		ck_assert_int_eq(alone[i].rc, DKV_OK);
	}
	for (int i = 0; i < 4; i++) {
		jobs[i].seed = 1000 + i % 2;
		ck_assert_int_eq(pthread_create(&th[i], NULL, thread_run, &jobs[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		ck_assert_int_eq(pthread_join(th[i], NULL), 0);
		ck_assert_int_eq(jobs[i].rc, DKV_OK);
		ck_assert_mem_eq(jobs[i].out, alone[i % 2].out, sizeof(jobs[i].out));
	}
}
END_TEST

static Suite *engine_suite(void)
{
	Suite *s = suite_create("engine");
	TCase *t;

	t = tcase_create("reference");
	tcase_set_timeout(t, 120);
	tcase_add_loop_test(t, exact_matches_reference_f32, 0, 5);
	tcase_add_loop_test(t, exact_matches_reference_dtypes, 0, 2);
	tcase_add_test(t, exact_gqa_groups);
	tcase_add_test(t, dash_small_context_is_exact);
	tcase_add_test(t, dash_long_context_tail_helps);
	tcase_add_loop_test(t, causal_prefill_chunks, 0, 2);
	tcase_add_test(t, dash_finds_needle);
	tcase_add_loop_test(t, dash_extreme_logits_stay_finite, 0, 3);
	suite_add_tcase(s, t);

	t = tcase_create("api");
	tcase_set_timeout(t, 60);
	tcase_add_test(t, config_defaults);
	tcase_add_loop_test(t, config_rejects_bad_values, 0,
			    sizeof(bad_cfgs) / sizeof(bad_cfgs[0]));
	tcase_add_test(t, connect_addresses);
	tcase_add_test(t, connect_errors_are_silent);
	tcase_add_test(t, strerror_covers_codes);
	tcase_add_test(t, step_argument_errors);
	tcase_add_loop_test(t, bad_values_store_nothing, 0, 4);
	tcase_add_loop_test(t, bad_half_values_store_nothing, 0, 8);
	tcase_add_test(t, max_tokens_is_all_or_nothing);
	tcase_add_test(t, memory_limit_is_all_or_nothing);
	tcase_add_test(t, stats_and_lengths);
	tcase_add_test(t, disconnect_closes_sequences);
	tcase_add_test(t, clients_in_threads_are_independent);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(engine_suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
