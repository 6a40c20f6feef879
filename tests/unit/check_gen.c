/*
 * check_gen.c - the realistic KV generator (tests/lib/gen/kvgen.h): it is
 * deterministic, streams, and has the properties it documents.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gen/kvgen.h"
#include "ref_attn.h"

#define D 128

static struct kvgen *small_gen(uint64_t seed)
{
	struct kvgen_params p;
	struct kvgen *g;

	kvgen_params_init(&p);
	p.seed = seed;
	p.n_kv_heads = 2;
	p.n_q_heads = 8;
	g = kvgen_new(&p);
	ck_assert_ptr_nonnull(g);
	return g;
}

static float *kv_alloc(const struct kvgen *g, uint32_t n)
{
	float *x = malloc((size_t)n * kvgen_params(g)->n_kv_heads * D * sizeof(float));

	ck_assert_ptr_nonnull(x);
	return x;
}

/* ---- determinism ---- */

START_TEST(same_seed_same_data)
{
	struct kvgen *a = small_gen(42), *b = small_gen(42);
	uint32_t n = 300;
	float *ka = kv_alloc(a, n), *kb = kv_alloc(b, n);
	float *va = kv_alloc(a, n), *vb = kv_alloc(b, n);
	float qa[8 * D], qb[8 * D];

	kvgen_kv(a, 1000, n, ka, va);
	kvgen_kv(b, 1000, n, kb, vb);
	ck_assert_mem_eq(ka, kb, (size_t)n * 2 * D * sizeof(float));
	ck_assert_mem_eq(va, vb, (size_t)n * 2 * D * sizeof(float));
	kvgen_queries(a, 5000, 3, qa);
	kvgen_queries(b, 5000, 3, qb);
	ck_assert_mem_eq(qa, qb, sizeof(qa));
	kvgen_needle_queries(a, 1, 9000, qa);
	kvgen_needle_queries(b, 1, 9000, qb);
	ck_assert_mem_eq(qa, qb, sizeof(qa));
	free(ka);
	free(kb);
	free(va);
	free(vb);
	kvgen_free(a);
	kvgen_free(b);
}
END_TEST

START_TEST(chunked_equals_one_shot)
{
	static const uint32_t chunk[] = { 1, 7, 64, 100, 3, 129, 900 };
	struct kvgen *g = small_gen(7);
	uint32_t n = 1204, tok = 2 * D, at = 0;
	float *k1 = kv_alloc(g, n), *v1 = kv_alloc(g, n);
	float *k2 = kv_alloc(g, n), *v2 = kv_alloc(g, n);
	float one[D];

	kvgen_kv(g, 0, n, k1, v1);
	for (uint32_t c = 0; at < n; c++) {
		uint32_t m = chunk[c % 7] < n - at ? chunk[c % 7] : n - at;
		kvgen_kv(g, at, m, k2 + (size_t)at * tok, v2 + (size_t)at * tok);
		at += m;
	}
	ck_assert_mem_eq(k1, k2, (size_t)n * tok * sizeof(float));
	ck_assert_mem_eq(v1, v2, (size_t)n * tok * sizeof(float));
	/* single-token accessors agree with the streamed layout */
	for (uint32_t i = 0; i < n; i += 97) {
		kvgen_key(g, 1, i, one);
		ck_assert_mem_eq(one, k1 + (size_t)i * tok + D, sizeof(one));
		kvgen_value(g, 1, i, one);
		ck_assert_mem_eq(one, v1 + (size_t)i * tok + D, sizeof(one));
	}
	free(k1);
	free(v1);
	free(k2);
	free(v2);
	kvgen_free(g);
}
END_TEST

START_TEST(seeds_differ)
{
	struct kvgen *a = small_gen(1), *b = small_gen(2);
	uint32_t n = 64, same = 0;
	float *ka = kv_alloc(a, n), *kb = kv_alloc(b, n);
	float qa[8 * D], qb[8 * D];

	kvgen_kv(a, 100, n, ka, NULL);
	kvgen_kv(b, 100, n, kb, NULL);
	for (size_t i = 0; i < (size_t)n * 2 * D; i++)
		same += ka[i] == kb[i];
	ck_assert_uint_lt(same, n * 2 * D / 100);
	kvgen_queries(a, 200, 0, qa);
	kvgen_queries(b, 200, 0, qb);
	ck_assert(memcmp(qa, qb, sizeof(qa)) != 0);
	/* other draws at one position are other queries */
	kvgen_queries(a, 200, 1, qb);
	ck_assert(memcmp(qa, qb, sizeof(qa)) != 0);
	free(ka);
	free(kb);
	kvgen_free(a);
	kvgen_free(b);
}
END_TEST

/* ---- concentration ---- */

static int cmp_desc(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return a < b ? 1 : a > b ? -1 : 0;
}

/* top-1% share of softmax(logit), by a full sort (independent of kvgen) */
static double top1pct_sorted(const double *logit, uint32_t n)
{
	double *p = malloc(n * sizeof(*p)), mx = -INFINITY, sum = 0, top = 0;
	uint32_t m = (uint32_t)ceil(0.01 * n);

	ck_assert_ptr_nonnull(p);
	for (uint32_t i = 0; i < n; i++)
		mx = logit[i] > mx ? logit[i] : mx;
	for (uint32_t i = 0; i < n; i++) {
		p[i] = exp(logit[i] - mx);
		sum += p[i];
	}
	qsort(p, n, sizeof(*p), cmp_desc);
	for (uint32_t i = 0; i < m; i++)
		top += p[i];
	free(p);
	return top / sum;
}

START_TEST(top_mass_helper)
{
	double x[1000], scr[1000];

	for (int i = 0; i < 1000; i++)
		x[i] = 0.0;
	ck_assert_double_eq_tol(kvgen_top_mass(x, 1000, 0.01, scr), 0.01, 1e-12);
	x[500] = 100.0;
	ck_assert_double_gt(kvgen_top_mass(x, 1000, 0.01, NULL), 0.999);
	for (int i = 0; i < 1000; i++)
		x[i] = (i * 7919) % 1000 / 100.0;
	ck_assert_double_eq_tol(kvgen_top_mass(x, 1000, 0.01, scr),
				top1pct_sorted(x, 1000), 1e-12);
}
END_TEST

/*
 * At N = 32K the top 1% of tokens holds 30-80% of the exact softmax mass
 * (the band kvgen.h documents), measured with ref_attn.h in double.
 */
START_TEST(concentration_32k)
{
	uint32_t n = 32768, nq = 4;
	struct kvgen *g = small_gen(1);
	float *k = kv_alloc(g, n), q[D];
	double *logit = malloc(n * sizeof(*logit)), acc = 0, lib;

	ck_assert_ptr_nonnull(logit);
	kvgen_kv(g, 0, n, k, NULL);
	for (uint32_t r = 0; r < nq; r++)
		for (uint32_t qh = 0; qh < 8; qh++) {
			kvgen_query_draw(g, qh, n - 1, r, q);
			ref_logits(q, k, n, 2, qh / 4, D, 1.0 / sqrt(D), logit);
			acc += top1pct_sorted(logit, n);
		}
	acc /= nq * 8;
	ck_assert_double_ge(acc, 0.30);
	ck_assert_double_le(acc, 0.80);
	lib = kvgen_mass_top1pct(g, n, nq);
	ck_assert_double_eq_tol(lib, acc, 1e-6);
	free(logit);
	free(k);
	kvgen_free(g);
}
END_TEST

/* the default geometry (8 kv heads, 32 q heads) lies in the band too */
START_TEST(concentration_default_geometry)
{
	struct kvgen_params p;
	struct kvgen *g;
	double m;

	kvgen_params_init(&p);
	p.seed = 3;
	g = kvgen_new(&p);
	ck_assert_ptr_nonnull(g);
	m = kvgen_mass_top1pct(g, 32768, 2);
	ck_assert_double_ge(m, 0.30);
	ck_assert_double_le(m, 0.80);
	kvgen_free(g);
}
END_TEST

/* sinks and the recent window draw far more than their share */
START_TEST(sinks_and_recency)
{
	uint32_t n = 8192;
	struct kvgen *g = small_gen(5);
	float *k = kv_alloc(g, n), q[D];
	double *w = malloc(n * sizeof(*w)), sink = 0, recent = 0;

	ck_assert_ptr_nonnull(w);
	kvgen_kv(g, 0, n, k, NULL);
	for (uint32_t qh = 0; qh < 8; qh++) {
		double mx = -INFINITY, sum = 0;
		kvgen_query(g, qh, n - 1, q);
		ref_logits(q, k, n, 2, qh / 4, D, 1.0 / sqrt(D), w);
		for (uint32_t i = 0; i < n; i++)
			mx = w[i] > mx ? w[i] : mx;
		for (uint32_t i = 0; i < n; i++)
			sum += (w[i] = exp(w[i] - mx));
		for (uint32_t i = 0; i < 4; i++)
			sink += w[i] / sum / 8;
		for (uint32_t i = n - 32; i < n; i++)
			recent += w[i] / sum / 8;
	}
	/* 4 and 32 of 8192 tokens: a flat softmax gives 0.0005 and 0.004 */
	ck_assert_double_gt(sink, 0.02);
	ck_assert_double_gt(recent, 0.02);
	free(w);
	free(k);
	kvgen_free(g);
}
END_TEST

/* ---- needles ---- */

START_TEST(needle_positions)
{
	struct kvgen *g = small_gen(9);
	uint64_t st = kvgen_params(g)->needle_stride;

	ck_assert_uint_eq(kvgen_needle_count(g, 0), 0);
	for (uint64_t n = 0; n < 50; n++) {
		uint64_t pos = kvgen_needle_pos(g, n);
		ck_assert_uint_ge(pos, n * st);
		ck_assert_uint_lt(pos, (n + 1) * st);
		ck_assert_uint_ge(pos, kvgen_params(g)->n_sinks);
		ck_assert_uint_eq(kvgen_needle_count(g, pos), n);
		ck_assert_uint_eq(kvgen_needle_count(g, pos + 1), n + 1);
	}
	kvgen_free(g);
}
END_TEST

/* a needle query's exact top-1 token is its needle, for most needles */
START_TEST(needle_top1)
{
	uint32_t n = 32768, hits = 0, total = 0;
	struct kvgen *g = small_gen(11);
	float *k = kv_alloc(g, n), q[D];
	double *logit = malloc(n * sizeof(*logit));
	uint64_t nn = kvgen_needle_count(g, n - 1);

	ck_assert_ptr_nonnull(logit);
	ck_assert_uint_ge(nn, 7);
	kvgen_kv(g, 0, n, k, NULL);
	for (uint64_t e = 0; e < nn; e++) {
		uint64_t pos = kvgen_needle_pos(g, e);
		for (uint32_t qh = 0; qh < 8; qh++) {
			uint32_t best = 0;
			kvgen_needle_query(g, qh, e, n - 1, q);
			ref_logits(q, k, n, 2, qh / 4, D, 1.0 / sqrt(D), logit);
			for (uint32_t i = 1; i < n; i++)
				best = logit[i] > logit[best] ? i : best;
			hits += best == pos;
			total++;
		}
	}
	ck_assert_uint_ge(hits * 10, total * 8);
	/* plain queries do not single the needles out */
	for (uint32_t qh = 0, plain = 0; qh < 8; qh++) {
		uint32_t best = 0;
		kvgen_query(g, qh, n - 1, q);
		ref_logits(q, k, n, 2, qh / 4, D, 1.0 / sqrt(D), logit);
		for (uint32_t i = 1; i < n; i++)
			best = logit[i] > logit[best] ? i : best;
		plain += kvgen_needle_count(g, best + 1) != kvgen_needle_count(g, best);
		ck_assert_uint_le(plain, 2);
	}
	free(logit);
	free(k);
	kvgen_free(g);
}
END_TEST

/* ---- RoPE ---- */

/* an independent RoPE in double: half-split pairs, theta 10000 */
static void rope_ref(const float *x, uint64_t pos, double *out)
{
	for (uint32_t j = 0; j < D / 2; j++) {
		double a = (double)pos * pow(10000.0, -2.0 * j / D);
		out[j] = x[j] * cos(a) - x[j + D / 2] * sin(a);
		out[j + D / 2] = x[j] * sin(a) + x[j + D / 2] * cos(a);
	}
}

START_TEST(rope_applied_to_keys)
{
	static const uint64_t at[] = { 0, 1, 5, 77, 4095, 32767, 262143, 1048575 };
	struct kvgen *g = small_gen(13);
	float raw[D], k[D];
	double ref[D], moved = 0;

	for (int t = 0; t < 8; t++) {
		double num = 0, den = 0;
		kvgen_key_raw(g, 1, at[t], raw);
		kvgen_key(g, 1, at[t], k);
		rope_ref(raw, at[t], ref);
		for (int j = 0; j < D; j++) {
			num += (k[j] - ref[j]) * (k[j] - ref[j]);
			den += ref[j] * ref[j];
			moved += fabs(k[j] - raw[j]);
		}
		ck_assert_double_lt(sqrt(num / den), 1e-5);
	}
	/* positions matter: the rotation moved the keys */
	ck_assert_double_gt(moved, 1.0);
	kvgen_free(g);
}
END_TEST

/* kvgen_rope preserves norms and relative dot products */
START_TEST(rope_relative)
{
	float a[D], b[D], a2[D], b2[D];
	double d1 = 0, d2 = 0, n1 = 0, n2 = 0;

	for (int j = 0; j < D; j++) {
		a[j] = sinf(j * 0.37f) + 0.1f;
		b[j] = cosf(j * 0.11f);
	}
	memcpy(a2, a, sizeof(a));
	memcpy(b2, b, sizeof(b));
	kvgen_rope(a, D, 10000.0, 1000);
	kvgen_rope(b, D, 10000.0, 1010);
	kvgen_rope(a2, D, 10000.0, 50000);
	kvgen_rope(b2, D, 10000.0, 50010);
	for (int j = 0; j < D; j++) {
		d1 += a[j] * b[j];
		d2 += a2[j] * b2[j];
		n1 += a[j] * a[j];
		n2 += a2[j] * a2[j];
	}
	ck_assert_double_eq_tol(d1, d2, 1e-3 * fabs(d1) + 1e-3);
	ck_assert_double_eq_tol(n1, n2, 1e-3 * n1);
}
END_TEST

/* ---- keys: outliers and segments ---- */

START_TEST(outlier_channels)
{
	uint32_t n = 4096, ch[D];
	struct kvgen *g = small_gen(17);
	float *k = kv_alloc(g, n);

	kvgen_kv(g, 0, n, k, NULL);
	for (uint32_t h = 0; h < 2; h++) {
		uint32_t no = kvgen_outlier_channels(g, h, ch);
		double mag[D] = { 0 }, out = 0, rest = 0;
		ck_assert_uint_eq(no, 2 * kvgen_params(g)->n_outliers);
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < D; j++)
				mag[j] += fabs(k[((size_t)i * 2 + h) * D + j]) / n;
		for (uint32_t j = 0; j < D; j++)
			rest += mag[j];
		for (uint32_t c = 0; c < no; c++) {
			out += mag[ch[c]] / no;
			rest -= mag[ch[c]];
		}
		rest /= D - no;
		ck_assert_double_gt(out, 2.0 * rest);
		/* each outlier channel stands out on its own */
		for (uint32_t c = 0; c < no; c++)
			ck_assert_double_gt(mag[ch[c]], 1.5 * rest);
	}
	free(k);
	kvgen_free(g);
}
END_TEST

static double cosine(const float *a, const float *b, const float *mean)
{
	double ab = 0, aa = 0, bb = 0;

	for (int j = 0; j < D; j++) {
		double x = a[j] - mean[j], y = b[j] - mean[j];
		ab += x * y;
		aa += x * x;
		bb += y * y;
	}
	return ab / sqrt(aa * bb);
}

START_TEST(segments_give_locality)
{
	struct kvgen *g = small_gen(19);
	uint32_t L = kvgen_params(g)->segment_len;
	double same = 0, other = 0;
	int ns = 0, no = 0;
	float mean[D] = { 0 }, a[D], b[D];

	/* segments tile the positions and are 0.5 .. 1.5 x segment_len */
	for (uint64_t s = 0; s < 200; s++) {
		uint64_t st, en, st2, en2;
		kvgen_segment_bounds(g, s, &st, &en);
		kvgen_segment_bounds(g, s + 1, &st2, &en2);
		ck_assert_uint_eq(en, st2);
		ck_assert_uint_eq(kvgen_segment(g, st), s);
		ck_assert_uint_eq(kvgen_segment(g, en - 1), s);
		if (s > 0) {
			ck_assert_uint_ge(en - st, L / 2);
			ck_assert_uint_le(en - st, 3 * L / 2);
		}
	}
	/* raw keys (no RoPE) of one segment are closer than across segments */
	for (uint64_t i = 1000; i < 3000; i++) {
		kvgen_key_raw(g, 0, i, a);
		for (int j = 0; j < D; j++)
			mean[j] += a[j] / 2000;
	}
	for (uint64_t i = 1000; i < 30000; i += 331) {
		kvgen_key_raw(g, 0, i, a);
		kvgen_key_raw(g, 0, i + 7, b);
		if (kvgen_segment(g, i) == kvgen_segment(g, i + 7)) {
			same += cosine(a, b, mean);
			ns++;
		}
		kvgen_key_raw(g, 0, i + 5000, b);
		other += cosine(a, b, mean);
		no++;
	}
	ck_assert_int_gt(ns, 20);
	ck_assert_double_gt(same / ns, other / no + 0.1);
	kvgen_free(g);
}
END_TEST

/* queries and keys sit in different places (the q/k offset) */
START_TEST(query_key_offset)
{
	struct kvgen *g = small_gen(23);
	double qm[D] = { 0 }, km[D] = { 0 }, dot = 0, nq = 0, nk = 0;
	float x[D];

	for (uint64_t i = 0; i < 2000; i++) {
		kvgen_key_raw(g, 0, 100 + i * 13, x);
		for (int j = 0; j < D; j++)
			km[j] += x[j] / 2000;
	}
	for (uint64_t r = 0; r < 2000; r++) {
		kvgen_query_draw(g, 0, 100, r, x);
		for (int j = 0; j < D; j++)
			qm[j] += x[j] / 2000;
	}
	for (int j = 0; j < D; j++) {
		dot += qm[j] * km[j];
		nq += qm[j] * qm[j];
		nk += km[j] * km[j];
	}
	/* both have a clear mean, and the means point different ways */
	ck_assert_double_gt(sqrt(nq), 2.0);
	ck_assert_double_gt(sqrt(nk), 2.0);
	ck_assert_double_lt(fabs(dot) / sqrt(nq * nk), 0.5);
	kvgen_free(g);
}
END_TEST

/* ---- values ---- */

START_TEST(values_follow_segments)
{
	struct kvgen *g = small_gen(29);
	float mean[D] = { 0 }, a[D], b[D];
	double same = 0, other = 0;
	int ns = 0, no = 0;

	for (uint64_t i = 1000; i < 3000; i++) {
		kvgen_value(g, 1, i, a);
		for (int j = 0; j < D; j++)
			mean[j] += a[j] / 2000;
	}
	for (uint64_t i = 1000; i < 30000; i += 331) {
		kvgen_value(g, 1, i, a);
		kvgen_value(g, 1, i + 3, b);
		if (kvgen_segment(g, i) == kvgen_segment(g, i + 3)) {
			same += cosine(a, b, mean);
			ns++;
		}
		kvgen_value(g, 1, i + 5000, b);
		other += cosine(a, b, mean);
		no++;
	}
	ck_assert_double_gt(same / ns, 0.4);
	ck_assert_double_lt(fabs(other / no), 0.2);
	kvgen_free(g);
}
END_TEST

/* ---- GQA ---- */

/* Pearson correlation of two q heads' vectors over many draws */
static double head_corr(const struct kvgen *g, uint32_t h1, uint32_t h2)
{
	enum { R = 400 };
	static float x[R][D], y[R][D];
	double mx[D] = { 0 }, my[D] = { 0 }, sxy = 0, sxx = 0, syy = 0;

	for (int r = 0; r < R; r++) {
		kvgen_query_draw(g, h1, 20000, r, x[r]);
		kvgen_query_draw(g, h2, 20000, r, y[r]);
		for (int j = 0; j < D; j++) {
			mx[j] += x[r][j] / R;
			my[j] += y[r][j] / R;
		}
	}
	for (int r = 0; r < R; r++)
		for (int j = 0; j < D; j++) {
			double a = x[r][j] - mx[j], b = y[r][j] - my[j];
			sxy += a * b;
			sxx += a * a;
			syy += b * b;
		}
	return sxy / sqrt(sxx * syy);
}

START_TEST(gqa_group_correlated)
{
	struct kvgen *g = small_gen(31);
	double in = head_corr(g, 0, 1), in2 = head_corr(g, 5, 7);
	double across = head_corr(g, 0, 4);

	ck_assert_double_gt(in, 0.3);
	ck_assert_double_gt(in2, 0.3);
	ck_assert_double_lt(fabs(across), 0.1);
	kvgen_free(g);
}
END_TEST

START_TEST(bad_params)
{
	struct kvgen_params p;

	kvgen_params_init(&p);
	p.n_q_heads = 12;
	p.n_kv_heads = 8;
	ck_assert_ptr_null(kvgen_new(&p));
	kvgen_params_init(&p);
	p.head_dim = 7;
	ck_assert_ptr_null(kvgen_new(&p));
	ck_assert_ptr_null(kvgen_new(NULL));
}
END_TEST

static Suite *gen_suite(void)
{
	Suite *s = suite_create("kvgen");
	TCase *det = tcase_create("determinism");
	TCase *shape = tcase_create("realism");

	tcase_add_test(det, same_seed_same_data);
	tcase_add_test(det, chunked_equals_one_shot);
	tcase_add_test(det, seeds_differ);
	tcase_add_test(det, bad_params);
	tcase_add_test(shape, top_mass_helper);
	tcase_add_test(shape, concentration_32k);
	tcase_add_test(shape, concentration_default_geometry);
	tcase_add_test(shape, sinks_and_recency);
	tcase_add_test(shape, needle_positions);
	tcase_add_test(shape, needle_top1);
	tcase_add_test(shape, rope_applied_to_keys);
	tcase_add_test(shape, rope_relative);
	tcase_add_test(shape, outlier_channels);
	tcase_add_test(shape, segments_give_locality);
	tcase_add_test(shape, query_key_offset);
	tcase_add_test(shape, values_follow_segments);
	tcase_add_test(shape, gqa_group_correlated);
	tcase_set_timeout(shape, 120);
	suite_add_tcase(s, det);
	suite_add_tcase(s, shape);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(gen_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
