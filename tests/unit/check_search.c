/*
 * check_search.c - the search-path kernels (scan, wsum) of every level
 * against the scalar reference, and the reference against an oracle
 * written here from the definition in krn.h.
 *
 * Tolerances: scan hits and hit counts bit-identical; the tail masses blk
 * within 1e-5 relative (a vectorised exp and another order of additions);
 * wsum within 1e-5 of the sum of |terms|.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "krn.h"

static uint64_t rng = 1;

static uint64_t next64(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float unitf(void)
{
	return (float)(next64() >> 40) / (float)(1 << 24);
}

/* A scan problem: n keys from index first, nq queries. */
struct problem {
	uint32_t words, nq, first, n, stride;
	uint64_t *plain;  /* [first + n][words] */
	uint8_t *codes;   /* byte-sliced, 32-key groups */
	uint8_t *cls;
	float *norms;
	uint64_t *qc;
	float *tab;
	int32_t *lim;
	float *thr, *ca, *cb;
};

static void problem_make(struct problem *p, uint32_t words, uint32_t nq,
			 uint32_t first, uint32_t n, uint32_t stride, int wide_lim)
{
	uint32_t total = first + n, groups = (total + 31) / 32, tl = 64 * words + 1;

	memset(p, 0, sizeof(*p));
	p->words = words;
	p->nq = nq;
	p->first = first;
	p->n = n;
	p->stride = stride;
	p->plain = malloc((size_t)total * words * 8);
	p->codes = aligned_alloc(64, ((size_t)groups * words * 256 + 63) / 64 * 64);
	p->cls = malloc(total + 32);
	p->norms = malloc((total + 32) * sizeof(float));
	p->qc = malloc((size_t)nq * words * 8);
	p->tab = malloc((size_t)nq * tl * sizeof(float));
	p->lim = malloc((size_t)nq * KRN_CLASSES * sizeof(int32_t));
	p->thr = malloc(nq * sizeof(float));
	p->ca = malloc(nq * sizeof(float));
	p->cb = malloc(nq * sizeof(float));
	memset(p->codes, 0, (size_t)groups * words * 256);
	for (uint32_t i = 0; i < total; i++) {
		for (uint32_t w = 0; w < words; w++)
			p->plain[(size_t)i * words + w] = next64();
		krn_code_write((uint8_t *)krn_code_at(p->codes, words, i), words,
			       p->plain + (size_t)i * words);
		p->cls[i] = (uint8_t)(next64() % KRN_CLASSES);
		p->norms[i] = 0.5f + 2.0f * unitf();
	}
	for (uint32_t j = 0; j < nq; j++) {
		for (uint32_t w = 0; w < words; w++)
			p->qc[(size_t)j * words + w] = next64();
		for (uint32_t h = 0; h < tl; h++)
			/* each query its own table: a variant must not mix them up */
			p->tab[j * tl + h] = (3.0f + 0.125f * (float)(j % 5)) *
					     cosf((float)M_PI * h / (64 * words));
		/* thresholds that pass a few percent; limits around the mean */
		p->thr[j] = 0.6f + 0.4f * unitf();
		for (uint32_t c = 0; c < KRN_CLASSES; c++)
			p->lim[j * KRN_CLASSES + c] = wide_lim ? 64 * (int32_t)words :
				(int32_t)(32 * words) - 8 + (int32_t)(next64() % 12) - (c == 0 ? 100 : 0);
		p->ca[j] = 1.0f + unitf();
		p->cb[j] = -4.0f;
	}
}

static void problem_free(struct problem *p)
{
	free(p->plain);
	free(p->codes);
	free(p->cls);
	free(p->norms);
	free(p->qc);
	free(p->tab);
	free(p->lim);
	free(p->thr);
	free(p->ca);
	free(p->cb);
}

struct result {
	uint32_t *hit, n_hit[16];
	float *blk;
	size_t ld_blk;
};

static void run(const struct krn_ops *ops, struct problem *p, uint32_t hit_cap,
		struct result *r)
{
	struct krn_scan_q q = { p->nq, p->words, p->qc, p->tab, p->lim, p->thr,
				p->ca, p->cb, p->stride };
	struct krn_scan_keys k = { p->codes, p->cls, p->norms, p->first, p->n, 1000 };

	r->ld_blk = p->n / 64 + 3;
	r->hit = calloc((size_t)p->nq * hit_cap + 1, sizeof(uint32_t));
	r->blk = calloc(p->nq * r->ld_blk, sizeof(float));
	memset(r->n_hit, 0, sizeof(r->n_hit));
	struct krn_scan_out o = { r->hit, hit_cap, r->n_hit, r->blk, r->ld_blk };
	ops->scan(&q, &k, &o);
}

/* The definition of krn.h, on the plain codes. */
static void oracle(struct problem *p, uint32_t hit_cap, struct result *r)
{
	uint32_t tl = 64 * p->words + 1;

	r->ld_blk = p->n / 64 + 3;
	r->hit = calloc((size_t)p->nq * hit_cap + 1, sizeof(uint32_t));
	r->blk = calloc(p->nq * r->ld_blk, sizeof(float));
	memset(r->n_hit, 0, sizeof(r->n_hit));
	for (uint32_t j = 0; j < p->nq; j++)
		for (uint32_t i = p->first; i < p->first + p->n; i++) {
			uint32_t h = 0;
			for (uint32_t w = 0; w < p->words; w++)
				h += (uint32_t)__builtin_popcountll(p->qc[(size_t)j * p->words + w] ^
								    p->plain[(size_t)i * p->words + w]);
			float e = p->norms[i] * p->tab[j * tl + h];
			if ((int32_t)h <= p->lim[j * KRN_CLASSES + p->cls[i]] && e >= p->thr[j]) {
				if (r->n_hit[j] < hit_cap)
					r->hit[(size_t)j * hit_cap + r->n_hit[j]] = 1000 + i;
				r->n_hit[j]++;
			} else if (i % p->stride == 0) {
				r->blk[j * r->ld_blk + i / 64 - p->first / 64] +=
					(float)p->stride * (float)exp((double)(p->ca[j] * e + p->cb[j]));
			}
		}
}

static void compare(const struct result *a, const struct result *b, const struct problem *p,
		    uint32_t hit_cap, const char *what)
{
	for (uint32_t j = 0; j < p->nq; j++) {
		ck_assert_msg(a->n_hit[j] == b->n_hit[j], "%s: query %u: %u hits vs %u", what,
			      j, a->n_hit[j], b->n_hit[j]);
		uint32_t kept = a->n_hit[j] < hit_cap ? a->n_hit[j] : hit_cap;
		for (uint32_t i = 0; i < kept; i++)
			if (a->hit[(size_t)j * hit_cap + i] != b->hit[(size_t)j * hit_cap + i])
				ck_abort_msg("%s: query %u hit %u: %u vs %u", what, j, i,
					     a->hit[(size_t)j * hit_cap + i],
					     b->hit[(size_t)j * hit_cap + i]);
		for (size_t i = 0; i < a->ld_blk; i++) {
			double x = a->blk[j * a->ld_blk + i], y = b->blk[j * b->ld_blk + i];
			if (fabs(x - y) > 1e-5 * fabs(y) + 1e-30)
				ck_abort_msg("%s: query %u block %zu: %g vs %g", what, j, i, x, y);
		}
	}
}

static void result_free(struct result *r)
{
	free(r->hit);
	free(r->blk);
}

/* Shapes: words, nq, first, n, stride, wide limits, hit_cap. */
static const uint32_t shapes[][7] = {
	{ 2, 4, 0, 4096, 8, 0, 4096 },
	{ 2, 4, 5, 4000, 8, 0, 4096 },
	{ 1, 1, 63, 700, 1, 0, 1024 },
	{ 4, 3, 64, 1000, 8, 0, 1024 },
	{ 2, 9, 100, 1234, 1, 0, 2048 }, /* more queries than one chunk */
	{ 2, 2, 0, 512, 8, 0, 7 },        /* hits overflow hit_cap */
	{ 4, 2, 0, 640, 8, 1, 1024 },     /* limits >= 255: fallback path */
	{ 1, 5, 1, 33, 8, 0, 64 },        /* shorter than a block */
	{ 2, 1, 0, 0, 8, 0, 64 },         /* nothing */
	{ 2, 4, 0, 4096, 16, 0, 4096 },   /* stride 16: the general tail */
	{ 2, 3, 7, 3000, 16, 0, 4096 },
	{ 1, 5, 64, 2000, 16, 0, 2048 },
	{ 4, 2, 0, 1024, 16, 0, 1024 },   /* 256 bits: general tail */
	{ 2, 4, 0, 2048, 32, 0, 2048 },   /* stride 32: four queries a vector */
	{ 2, 5, 3, 3000, 32, 0, 4096 },   /* stride 32, one query in the last chunk */
	{ 1, 7, 64, 2000, 32, 0, 2048 },  /* stride 32, three in the last chunk */
	{ 2, 2, 0, 1500, 32, 0, 2048 },
	{ 2, 3, 30, 2000, 64, 0, 2048 },
	{ 2, 4, 0, 4096, 64, 0, 4096 },   /* stride 64: two blocks a vector */
	{ 1, 6, 64, 1984, 64, 0, 2048 },  /* stride 64, an odd block out */
	{ 2, 1, 0, 640, 64, 0, 1024 },
	{ 2, 9, 5, 3000, 64, 0, 4096 },
};

START_TEST(scan_reference_matches_oracle)
{
	const uint32_t *s = shapes[_i];
	struct problem p;
	struct result a, b;

	rng = 100 + _i;
	problem_make(&p, s[0], s[1], s[2], s[3], s[4], (int)s[5]);
	run(&krn_ops_scalar, &p, s[6], &a);
	oracle(&p, s[6], &b);
	compare(&a, &b, &p, s[6], "scalar vs oracle");
	/* the shape must make some hits, or it shows nothing */
	if (s[3] >= 512)
		ck_assert_uint_gt(a.n_hit[0], 0);
	result_free(&a);
	result_free(&b);
	problem_free(&p);
}
END_TEST

/*
 * Distances at both ends (0 and every bit) of codes up to 128 bits, which
 * the vector scans keep in bytes: every third key is a copy of a query's
 * code, every third the complement, the limits let every key through
 * stage 1.  A distance that wrapped around would turn complements into
 * hits.
 */
START_TEST(scan_extreme_distances)
{
	/* the tail from every 8th key (_i < 6), then from every key */
	uint32_t words = 1 + _i % 2, nq = 2 + _i / 2 % 3, stride = _i < 6 ? 8 : 1;

	for (int lv = KRN_AVX2; lv < KRN_NLEVELS; lv++) {
		const struct krn_ops *ops = krn_get_level((enum krn_level)lv);
		struct problem p;
		struct result a, b;
		if (!ops)
			continue;
		rng = 300 + _i;
		problem_make(&p, words, nq, 0, 2048, stride, 1);
		/* the complements' entry stands out, below every threshold */
		for (uint32_t j = 0; j < nq; j++)
			p.tab[(size_t)j * (64 * words + 1) + 64 * words] = 0.2f;
		for (uint32_t i = 0; i < 2048 - 2048 % 3; i++) {
			const uint64_t *q = p.qc + (size_t)(i / 3 % nq) * words;
			uint64_t *c = p.plain + (size_t)i * words;
			for (uint32_t w = 0; w < words; w++)
				c[w] = i % 3 == 0 ? q[w] : i % 3 == 1 ? ~q[w] : c[w];
			krn_code_write((uint8_t *)krn_code_at(p.codes, words, i), words, c);
		}
		run(ops, &p, 2048, &a);
		run(&krn_ops_scalar, &p, 2048, &b);
		compare(&a, &b, &p, 2048, ops->name);
		for (uint32_t j = 0; j < nq; j++) /* the copies at least */
			ck_assert_uint_ge(b.n_hit[j], 2048 / 3 / nq);
		result_free(&a);
		result_free(&b);
		problem_free(&p);
	}
}
END_TEST

/*
 * estimate on the scan shapes' keys, given as runs of growing length:
 * the reference equals norm times the table entry of the plain codes'
 * distance, and every variant equals the reference bit for bit.
 */
START_TEST(estimate_matches)
{
	const uint32_t *s = shapes[_i];
	struct problem p;
	uint32_t tl;

	rng = 100 + _i;
	problem_make(&p, s[0], s[1], s[2], s[3], s[4], (int)s[5]);
	tl = 64 * p.words + 1;
	struct krn_scan_q q = { .nq = p.nq, .words = p.words, .qc = p.qc, .tab = p.tab };
	/* the range as runs of 1, 2, 3, .. keys, the last one what is left */
	struct krn_scan_keys k[128];
	uint32_t nk = 0;
	for (uint32_t at = 0, len = 1; at < p.n; at += len, len++) {
		len = nk == 127 || len > p.n - at ? p.n - at : len;
		k[nk++] = (struct krn_scan_keys){ .codes = p.codes, .norms = p.norms,
						   .first = p.first + at, .n = len };
	}
	size_t ld = p.n + 1;
	float *want = calloc((size_t)p.nq * ld, sizeof(float));
	float *got = calloc((size_t)p.nq * ld, sizeof(float));

	krn_ops_scalar.estimate(&q, k, nk, want, ld);
	for (uint32_t j = 0; j < p.nq; j++)
		for (uint32_t i = 0; i < p.n; i++) {
			uint32_t h = 0, at = p.first + i;
			for (uint32_t w = 0; w < p.words; w++)
				h += (uint32_t)__builtin_popcountll(p.qc[(size_t)j * p.words + w] ^
								    p.plain[(size_t)at * p.words + w]);
			ck_assert_msg(want[j * ld + i] == p.norms[at] * p.tab[j * tl + h],
				      "reference: query %u key %u", j, at);
		}
	for (int lv = KRN_AVX2; lv < KRN_NLEVELS; lv++) {
		const struct krn_ops *ops = krn_get_level((enum krn_level)lv);
		if (!ops)
			continue;
		memset(got, 0, (size_t)p.nq * ld * sizeof(float));
		ops->estimate(&q, k, nk, got, ld);
		ck_assert_msg(!memcmp(got, want, (size_t)p.nq * ld * sizeof(float)),
			      "%s: estimates differ from the reference", ops->name);
	}
	free(want);
	free(got);
	problem_free(&p);
}
END_TEST

START_TEST(scan_variants_match_reference)
{
	const uint32_t *s = shapes[_i];

	for (int lv = KRN_AVX2; lv < KRN_NLEVELS; lv++) {
		const struct krn_ops *ops = krn_get_level((enum krn_level)lv);
		struct problem p;
		struct result a, b;
		if (!ops) {
			printf("scan: level %d not available on this CPU or build, skipped\n", lv);
			continue;
		}
		rng = 100 + _i;
		problem_make(&p, s[0], s[1], s[2], s[3], s[4], (int)s[5]);
		run(ops, &p, s[6], &a);
		run(&krn_ops_scalar, &p, s[6], &b);
		compare(&a, &b, &p, s[6], ops->name);
		result_free(&a);
		result_free(&b);
		problem_free(&p);
	}
}
END_TEST

START_TEST(wsum_matches)
{
	static const uint32_t dims[] = { 8, 24, 128, 256 };
	uint32_t dim = dims[_i % 4], nq = 1 + _i % 6, n = 1 + 13 * _i;

	for (int lv = KRN_SCALAR; lv < KRN_NLEVELS; lv++) {
		const struct krn_ops *ops = krn_get_level((enum krn_level)lv);
		if (!ops)
			continue;
		rng = 7 + _i;
		float *w = malloc((size_t)nq * n * 4), *rows = malloc((size_t)n * dim * 4);
		float *acc = malloc((size_t)nq * dim * 4);
		for (size_t i = 0; i < (size_t)nq * n; i++)
			w[i] = unitf();
		for (size_t i = 0; i < (size_t)n * dim; i++)
			rows[i] = 2.0f * unitf() - 1.0f;
		for (size_t i = 0; i < (size_t)nq * dim; i++)
			acc[i] = 0.5f;
		ops->wsum(w, n, nq, rows, dim, n, dim, acc);
		for (uint32_t j = 0; j < nq; j++)
			for (uint32_t d = 0; d < dim; d++) {
				double want = 0.5, mag = 0.5;
				for (uint32_t i = 0; i < n; i++) {
					want += (double)w[j * n + i] * rows[i * dim + d];
					mag += fabs((double)w[j * n + i] * rows[i * dim + d]);
				}
				ck_assert_msg(fabs(acc[j * dim + d] - want) <= 1e-5 * mag,
					      "%s: wsum q %u d %u: %g vs %g", ops->name, j, d,
					      acc[j * dim + d], want);
			}
		free(w);
		free(rows);
		free(acc);
	}
}
END_TEST

START_TEST(code_layout_round_trip)
{
	for (uint32_t words = 1; words <= 4; words *= 2) {
		uint8_t buf[4 * 8 * 32 * 3] = { 0 };
		uint64_t in[4], out[4];
		for (uint32_t p = 0; p < 96; p++) {
			for (uint32_t w = 0; w < words; w++)
				in[w] = next64();
			krn_code_write((uint8_t *)krn_code_at(buf, words, p), words, in);
			krn_code_read(krn_code_at(buf, words, p), words, out);
			ck_assert_mem_eq(in, out, words * 8);
		}
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("search kernels");
	TCase *t = tcase_create("scan");
	uint32_t nshapes = sizeof(shapes) / sizeof(shapes[0]);

	tcase_set_timeout(t, 120);
	tcase_add_loop_test(t, scan_reference_matches_oracle, 0, (int)nshapes);
	tcase_add_loop_test(t, scan_variants_match_reference, 0, (int)nshapes);
	tcase_add_loop_test(t, scan_extreme_distances, 0, 12);
	tcase_add_loop_test(t, estimate_matches, 0, (int)nshapes);
	tcase_add_loop_test(t, wsum_matches, 0, 12);
	tcase_add_test(t, code_layout_round_trip);
	suite_add_tcase(s, t);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
