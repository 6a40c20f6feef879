/*
 * check_shards.c - a sequence split over 1, 2 and 4 CPU shards
 * (DASHKV_SHARDS=cpu:N) gives bit-identical outputs: DASH-KV and exact
 * mode, f32 and bf16, small and large GQA groups, with and without the
 * tail estimate.  The context spans several pages, so every shard holds
 * some.  DASH-KV's outputs also stay close to exact attention.  The
 * store's block and span value sums and the tail built on them
 * (shard_tail_range) are checked against sums of the value rows.
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
#include "search.h"

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
	char err[KRN_MSGLEN] = "";
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
	char err[KRN_MSGLEN] = "";
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
	char err[KRN_MSGLEN] = "";

	ck_assert_int_eq(setenv("DASHKV_SHARDS", "cpu:0", 1), 0);
	ck_assert_int_eq(rt_engine_new(&e, err), DKV_E_INVAL);
	ck_assert_msg(strstr(err, "DASHKV_SHARDS=cpu:0"), "%s", err);
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "gpu:all", 1), 0);
	ck_assert_int_ne(rt_engine_new(&e, err), DKV_OK);
	ck_assert_msg(strstr(err, "gpu:all"), "%s", err);
}
END_TEST

/*
 * Page ownership: page p is shard p % S's; the first owned page from p and
 * the last owned page up to p are found by walking, page by page.
 */
START_TEST(page_owner_rule)
{
	for (uint32_t S = 1; S <= 5; S++)
		for (uint32_t r = 0; r < S; r++)
			for (uint64_t p = 0; p < 4 * S + 3; p++) {
				uint64_t f = p, l = p;

				ck_assert_uint_eq(shard_page_owner(p, S), p % S);
				while (f % S != r)
					f++;
				ck_assert_uint_eq(shard_first_owned(p, r, S), f);
				if (p < r)
					continue;
				while (l % S != r)
					l--;
				ck_assert_uint_eq(shard_last_owned(p, r, S), l);
			}
	ck_assert_uint_eq(shard_page_owner((1ull << 40) + 3, 4), 3);
}
END_TEST

/* ---- the tail's value summaries, against the value rows ---- */

#define TAIL_LEN (2 * SHARD_PAGE + 300)	/* three pages; the last block part-stored */
#define TAIL_HEADS 2u
#define TAIL_BLOCKS ((TAIL_LEN + SHARD_BLOCK - 1) / SHARD_BLOCK)
#define TAIL_START 0.25f	/* what acc holds before the call */
#define TAIL_CUT 0.2f		/* between the low (<= 0.1) and high (>= 0.25) means */
#define TAIL_NQ 4u

static const uint32_t tail_dims[] = { 24, 128 };
#define N_TAIL_DIMS 2

/* Ranges [t0, t1) of the tail: block and span edges, one page or several. */
static const uint64_t tail_ranges[][2] = {
	{ 4, TAIL_LEN - 70 },					/* inside block 0, three pages */
	{ SHARD_PAGE + 5 * SHARD_BLOCK + 10, 2 * SHARD_PAGE + SHARD_BLOCK }, /* mid-span */
	{ 3 * SHARD_BLOCK + 7, TAIL_LEN },			/* to the part-stored span */
};
#define N_TAIL_RANGES 3

/* A layer of random f32 values, with the double sums of each block's rows. */
struct tail_fix {
	struct shard_geom g;
	struct shard_layer l;
	uint32_t dim;
	float *v;		/* [head][token][dim]: the rows stored */
	double *bsum, *babs;	/* [head][block][dim]: sums of the rows, of |rows| */
};

/* Deterministic uniform [0, 1), 24 bits. */
static float tail_rand(uint64_t *s)
{
	*s = *s * 6364136223846793005ull + 1442695040888963407ull;
	return (float)(*s >> 40) * (1.0f / 16777216.0f);
}

static void tail_fix_new(struct tail_fix *f, uint32_t dim)
{
	size_t rows = (size_t)TAIL_HEADS * TAIL_LEN;
	size_t sums = (size_t)TAIL_HEADS * TAIL_BLOCKS * dim;
	uint64_t seed = 12345 + dim;

	memset(f, 0, sizeof(*f));
	f->g.n_kv_heads = TAIL_HEADS;
	f->g.head_dim = dim;
	f->g.dtype = DKV_F32;
	f->g.elt_size = 4;
	f->g.words = 2;
	f->dim = dim;
	f->v = malloc(rows * dim * sizeof(float));
	f->bsum = calloc(sums, sizeof(double));
	f->babs = calloc(sums, sizeof(double));
	ck_assert(f->v && f->bsum && f->babs);
	shard_layer_init(&f->l, &f->g);
	ck_assert_int_eq(shard_layer_reserve(&f->l, TAIL_LEN), 0);
	for (uint64_t t = 0; t < TAIL_LEN; t++)
		for (uint32_t h = 0; h < TAIL_HEADS; h++) {
			float *row = f->v + ((size_t)h * TAIL_LEN + t) * dim;
			size_t at = ((size_t)h * TAIL_BLOCKS + t / SHARD_BLOCK) * dim;
			for (uint32_t d = 0; d < dim; d++) {
				row[d] = 2.0f * tail_rand(&seed) - 1.0f;
				f->bsum[at + d] += row[d];
				f->babs[at + d] += fabs(row[d]);
			}
			memcpy(shard_value(&f->l, h, t), row, dim * sizeof(float));
			shard_sums_add(&f->l, h, t, row);
		}
	f->l.len = TAIL_LEN;
}

static void tail_fix_free(struct tail_fix *f)
{
	shard_layer_free(&f->l);
	free(f->v);
	free(f->bsum);
	free(f->babs);
}

/* Tokens stored in blocks [a, e). */
static double tail_stored(uint64_t a, uint64_t e)
{
	uint64_t end = e * SHARD_BLOCK < TAIL_LEN ? e * SHARD_BLOCK : TAIL_LEN;
	return (double)(end - a * SHARD_BLOCK);
}

/* Double sums of the rows (and |rows|) of blocks [a, e) of head h, dimension d. */
static double tail_ref(const struct tail_fix *f, uint32_t h, uint64_t a, uint64_t e,
		       uint32_t d, double *mag)
{
	double s = 0;

	*mag = 0;
	for (uint64_t b = a; b < e && b < TAIL_BLOCKS; b++) {
		size_t at = ((size_t)h * TAIL_BLOCKS + b) * f->dim + d;
		s += f->bsum[at];
		*mag += f->babs[at];
	}
	return s;
}

/* Every block and span sum the store keeps is the sum of its stored rows. */
START_TEST(sums_add_matches_rows)
{
	struct tail_fix f;
	double mag, want;

	tail_fix_new(&f, tail_dims[_i]);
	for (uint32_t h = 0; h < TAIL_HEADS; h++)
		for (uint64_t b = 0; b < TAIL_BLOCKS; b++)
			for (uint32_t d = 0; d < f.dim; d++) {
				uint64_t t = b * SHARD_BLOCK;
				float got = shard_vsum(&f.l, h, t)[d];
				want = tail_ref(&f, h, b, b + 1, d, &mag);
				ck_assert_msg(fabs(got - want) <= 1e-5 * mag,
					      "head %u block %llu dim %u: %g, want %g", h,
					      (unsigned long long)b, d, got, want);
				if (b % SHARD_SPAN_BLOCKS)
					continue;
				got = shard_vspan(&f.l, h, t)[d];
				want = tail_ref(&f, h, b, b + SHARD_SPAN_BLOCKS, d, &mag);
				ck_assert_msg(fabs(got - want) <= 1e-5 * mag,
					      "head %u span %llu dim %u: %g, want %g", h,
					      (unsigned long long)(b / SHARD_SPAN_BLOCKS), d, got,
					      want);
			}
	tail_fix_free(&f);
}
END_TEST

/*
 * Masses of blocks [b0, b1) for nq queries: per-token means either low
 * (0.01-0.1) or, one block in eight, high (1-2), times the block's stored
 * tokens.  The row's slack past the range holds a mass no summary may read.
 */
static void tail_masses(float *w, size_t ld_w, uint32_t nq, uint64_t b0, uint64_t b1,
			uint64_t *seed)
{
	for (uint32_t j = 0; j < nq; j++)
		for (uint64_t i = 0; i < ld_w; i++) {
			uint64_t b = b0 + i;
			float mean = tail_rand(seed) < 0.125f ? 1.0f + tail_rand(seed) :
				     0.01f + 0.09f * tail_rand(seed);
			w[j * ld_w + i] = b < b1 ? mean * (float)tail_stored(b, b + 1) : 1e6f;
		}
}

/*
 * What shard_tail_range should give, in double from the value rows: each
 * summary of `span` blocks gains the masses of its blocks inside the
 * range over its stored tokens, times the sum of its stored rows, unless
 * that mean is under cut[j] for every query j.  mag gets the sum of the
 * terms' sizes; returns the summaries skipped, kept in *kept.
 */
static uint32_t tail_expect(const struct tail_fix *f, uint32_t h, const float *w,
			    size_t ld_w, uint32_t nq, uint64_t t0, uint64_t t1,
			    const float *cut, uint32_t span, double *want, double *mag,
			    uint32_t *kept)
{
	uint64_t b0 = t0 / SHARD_BLOCK, b1 = (t1 + SHARD_BLOCK - 1) / SHARD_BLOCK;
	uint32_t dim = f->dim, skipped = 0;
	double m[TAIL_NQ];

	*kept = 0;
	for (size_t i = 0; i < (size_t)nq * dim; i++)
		want[i] = mag[i] = TAIL_START;
	for (uint64_t a = b0 / span * span; a < b1; a += span) {
		uint64_t e = a + span < TAIL_BLOCKS ? a + span : TAIL_BLOCKS;
		int keep = 0;
		for (uint32_t j = 0; j < nq; j++) {
			m[j] = 0;
			for (uint64_t b = a > b0 ? a : b0; b < e && b < b1; b++)
				m[j] += w[j * ld_w + (b - b0)];
			m[j] /= tail_stored(a, e);
			keep |= m[j] >= cut[j];
		}
		if (!keep) {
			skipped++;
			continue;
		}
		(*kept)++;
		for (uint32_t d = 0; d < dim; d++) {
			double sz, s = tail_ref(f, h, a, e, d, &sz);
			for (uint32_t j = 0; j < nq; j++) {
				want[j * dim + d] += m[j] * s;
				mag[j * dim + d] += m[j] * sz;
			}
		}
	}
	return skipped;
}

/*
 * One call of shard_tail_range against tail_expect: nq queries, summaries
 * of `span` blocks, range r, with no cut or a cut that skips some.
 */
static void tail_case(const struct tail_fix *f, uint32_t h, uint32_t nq, uint32_t span,
		      int r, int cutting)
{
	uint64_t t0 = tail_ranges[r][0], t1 = tail_ranges[r][1];
	uint64_t b0 = t0 / SHARD_BLOCK, b1 = (t1 + SHARD_BLOCK - 1) / SHARD_BLOCK;
	size_t ld_w = b1 - b0 + 3, nd = (size_t)nq * f->dim;
	float *w = malloc(nq * ld_w * sizeof(float)), *w0 = malloc(nq * ld_w * sizeof(float));
	float *acc = malloc(nd * sizeof(float)), cut[TAIL_NQ];
	double *want = malloc(nd * sizeof(double)), *mag = malloc(nd * sizeof(double));
	uint64_t seed = 777 + 31 * r + 7 * nq + h;
	uint32_t skipped, kept;

	ck_assert(w && w0 && acc && want && mag);
	tail_masses(w, ld_w, nq, b0, b1, &seed);
	memcpy(w0, w, nq * ld_w * sizeof(float));
	/* odd queries keep nothing: a summary stays when any one query keeps it */
	for (uint32_t j = 0; j < nq; j++)
		cut[j] = !cutting ? 0.0f : j % 2 ? 1e30f : TAIL_CUT;
	for (size_t i = 0; i < nd; i++)
		acc[i] = TAIL_START;
	shard_tail_range(&f->l, h, w, ld_w, nq, t0, t1, cut, span, acc);
	skipped = tail_expect(f, h, w0, ld_w, nq, t0, t1, cut, span, want, mag, &kept);
	ck_assert(kept > 0);
	ck_assert(cutting ? skipped > 0 : skipped == 0);
	for (size_t i = 0; i < nd; i++)
		ck_assert_msg(fabs(acc[i] - want[i]) <= 1e-4 * mag[i],
			      "dim %u head %u span %u nq %u range %d cut %d: acc[%zu] %g, want %g",
			      f->dim, h, span, nq, r, cutting, i, acc[i], want[i]);
	free(w);
	free(w0);
	free(acc);
	free(want);
	free(mag);
}

/* The tail by blocks and by spans, over ranges of one page and several. */
START_TEST(tail_range_matches_rows)
{
	static const uint32_t nqs[] = { 1, 3, TAIL_NQ };
	static const uint32_t spans[] = { 1, SHARD_SPAN_BLOCKS };
	struct tail_fix f;

	tail_fix_new(&f, tail_dims[_i]);
	for (uint32_t h = 0; h < TAIL_HEADS; h++)
		for (int s = 0; s < 2; s++)
			for (int q = 0; q < 3; q++)
				for (int r = 0; r < N_TAIL_RANGES; r++)
					for (int c = 0; c < 2; c++)
						tail_case(&f, h, nqs[q], spans[s], r, c);
	tail_fix_free(&f);
}
END_TEST

/*
 * Spans are not blocks: with uneven masses the two give different sums,
 * so a span path that read blocks would fail tail_range_matches_rows.
 */
START_TEST(tail_spans_not_blocks)
{
	uint64_t t0 = tail_ranges[0][0], t1 = tail_ranges[0][1], seed = 99;
	uint64_t b0 = t0 / SHARD_BLOCK, b1 = (t1 + SHARD_BLOCK - 1) / SHARD_BLOCK;
	size_t ld_w = b1 - b0, nd = (size_t)TAIL_NQ * tail_dims[_i];
	float *w = malloc(2 * TAIL_NQ * ld_w * sizeof(float)), *acc[2];
	float cut[TAIL_NQ] = { 0 };
	struct tail_fix f;
	double most = 0;

	tail_fix_new(&f, tail_dims[_i]);
	ck_assert(w);
	tail_masses(w, ld_w, TAIL_NQ, b0, b1, &seed);
	memcpy(w + TAIL_NQ * ld_w, w, TAIL_NQ * ld_w * sizeof(float));
	for (int s = 0; s < 2; s++) {
		acc[s] = malloc(nd * sizeof(float));
		ck_assert(acc[s]);
		for (size_t i = 0; i < nd; i++)
			acc[s][i] = TAIL_START;
		shard_tail_range(&f.l, 1, w + s * TAIL_NQ * ld_w, ld_w, TAIL_NQ, t0, t1, cut,
				 s ? SHARD_SPAN_BLOCKS : 1, acc[s]);
	}
	for (size_t i = 0; i < nd; i++) {
		double diff = fabs(acc[1][i] - acc[0][i]);
		most = diff > most ? diff : most;
	}
	/* the sums reach tens; 1e-4 of them is what the other test allows */
	ck_assert_msg(most > 1.0, "spans and blocks differ by %g only", most);
	for (int s = 0; s < 2; s++)
		free(acc[s]);
	free(w);
	tail_fix_free(&f);
}
END_TEST

/*
 * shard_estimate over runs of keys of any start and length (inside a
 * page, across pages, run after run) gives, for each key, its norm times
 * the table entry of its code's distance (read one by one), for 64-,
 * 128- and 256-bit codes and 1 to 5 queries.
 */
START_TEST(estimate_matches_codes)
{
	static const uint32_t runs[][2] = {
		{ 0, 1 }, { 0, 8 }, { 3, 5 }, { 5, 30 }, { 31, 2 }, { 64, 97 },
		{ 4090, 6 }, { 4000, 96 }, { 4090, 12 }, { 7, 1 }, { 100, 333 },
	};
	uint32_t words = 1u << _i % 3, nq = 1 + _i % 5, tl = 64 * words + 1, n = 0;
	struct shard_geom g = { .n_kv_heads = 2, .head_dim = 8, .dtype = DKV_F32,
				.elt_size = 4, .words = words };
	struct shard_layer l;
	uint64_t seed = 99 + _i, qc[5 * 4], code[4];
	uint32_t pos[1024];
	float tab[5 * 257], norm, got[5 * 1024], want[5];

	shard_layer_init(&l, &g);
	ck_assert_int_eq(shard_layer_reserve(&l, 3 * SHARD_PAGE), 0);
	for (uint64_t t = 0; t < 3 * SHARD_PAGE; t++)
		for (uint32_t h = 0; h < 2; h++) {
			for (uint32_t w = 0; w < words; w++)
				code[w] = (uint64_t)(tail_rand(&seed) * 16777216.0f) << 40 ^
					  (uint64_t)(tail_rand(&seed) * 16777216.0f) << 16 ^
					  (uint64_t)(tail_rand(&seed) * 65536.0f);
			shard_code_put(&l, h, t, code);
			*shard_norm(&l, h, t) = 0.5f + tail_rand(&seed);
		}
	for (uint32_t i = 0; i < nq * words; i++)
		qc[i] = (uint64_t)(tail_rand(&seed) * 16777216.0f) << 40 ^
			(uint64_t)(tail_rand(&seed) * 65536.0f);
	for (uint32_t i = 0; i < nq * tl; i++)
		tab[i] = tail_rand(&seed) - 0.5f;
	for (uint32_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++)
		for (uint32_t i = 0; i < runs[r][1]; i++)
			pos[n++] = SHARD_PAGE + runs[r][0] + i;
	ck_assert_uint_le(n, 1024);
	struct krn_scan_q q = { .nq = nq, .words = words, .qc = qc, .tab = tab };
	for (uint32_t h = 0; h < 2; h++) {
		shard_estimate(&l, h, &q, pos, n, got, 1024);
		for (uint32_t i = 0; i < n; i++) {
			shard_code_get(&l, h, pos[i], code);
			norm = *shard_norm(&l, h, pos[i]);
			for (uint32_t j = 0; j < nq; j++) {
				uint32_t d = 0;
				for (uint32_t w = 0; w < words; w++)
					d += (uint32_t)__builtin_popcountll(code[w] ^ qc[j * words + w]);
				want[j] = norm * tab[j * tl + d];
			}
			for (uint32_t j = 0; j < nq; j++)
				ck_assert_msg(got[j * 1024 + i] == want[j],
					      "words %u head %u query %u key %u: %g vs %g", words, h,
					      j, pos[i], got[j * 1024 + i], want[j]);
		}
	}
	shard_layer_free(&l);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("shards");
	TCase *tc = tcase_create("shards");
	TCase *tail = tcase_create("tail");
	SRunner *sr;
	int failed;

	tcase_add_loop_test(tc, shards_bit_identical, 0, N_SHAPES);
	tcase_add_test(tc, sharded_dash_near_exact);
	tcase_add_test(tc, sharded_append_all_or_nothing);
	tcase_add_test(tc, bad_spec_refused);
	tcase_add_test(tc, page_owner_rule);
	suite_add_tcase(su, tc);
	tcase_add_loop_test(tail, sums_add_matches_rows, 0, N_TAIL_DIMS);
	tcase_add_loop_test(tail, tail_range_matches_rows, 0, N_TAIL_DIMS);
	tcase_add_loop_test(tail, tail_spans_not_blocks, 0, N_TAIL_DIMS);
	tcase_add_loop_test(tail, estimate_matches_codes, 0, 15);
	suite_add_tcase(su, tail);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
