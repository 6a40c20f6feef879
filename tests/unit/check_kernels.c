/*
 * check_kernels.c - the compute kernels.
 *
 * Two kinds of test:
 *  - the scalar reference against independent oracles written here
 *    (double precision, exhaustive or sorted), and
 *  - every SIMD variant this CPU runs (krn_get_level() != NULL) against
 *    the reference or the same oracles.  A level this CPU or build lacks
 *    is skipped with a message; the rest of the program still runs.
 *
 * Tolerances:
 *  - hamming, max, all_finite and the four conversions: bit for
 *    bit the reference's output.
 *  - encode: a bit may differ from the reference (or from the sign of the
 *    double-precision dot) only where |P_j . x| < 1e-4 |P_j| |x|.
 *  - dot: |got - exact| <= 1e-5 * sum_d |q_d k_d| (exact in double).
 *  - gdot: bit for bit scale times the level's own dot on each row alone,
 *    converted by the level's own f16/bf16 conversion, wherever the row
 *    sits in the list; and |got - exact| <= 1e-5 * |scale| * sum_d
 *    |q_d k_d| with the stored elements decoded here.
 *  - attend, attend_logits (and two halves merged): the output acc / s
 *    per element within 2e-5 * sum_i p_i |v_id| / sum_i p_i of the double
 *    softmax, and m + log(s) within 2e-5 * (1 + |lse|) of the double
 *    log-sum-exp.
 *  - merge: m exact; s within 2e-5 relative and each acc element within
 *    2e-5 * (|a_d ca| + |b_d cb|) of the merge done in double.
 *  - exp_sum: 2e-5 relative to the double sum; one value at a time (n = 1)
 *    1.5e-7 relative to exp() where the result is a normal float, 2^-149
 *    absolute where it is subnormal, exactly 0 for -INFINITY.
 *
 * Sizes: n in {0, 1, 3, 7, 17, 255, 256} (and more where the kernel
 * allows), dim every multiple of 8 up to 256, float arrays one float off
 * 32-byte alignment, row strides that are not multiples of 8.
 */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "krn.h"

#define TOL_DOT		1e-5
#define TOL_ATT		2e-5
#define TOL_EXP_SUM	2e-5
#define TOL_EXP_ONE	1.5e-7
#define ENC_MARGIN	1e-4

/*
 * check's ck_assert writes its location to a pipe on every call, passed
 * or not; the inner loops here make millions of checks, so they only
 * call into check when one fails.
 */
#define expect(cond, ...) \
	do { \
		if (!(cond)) \
			ck_abort_msg(__VA_ARGS__); \
	} while (0)

static const char *const level_name[KRN_NLEVELS] = { "scalar", "avx2", "avx512" };
static const uint32_t sizes[] = { 0, 1, 3, 7, 17, 255, 256 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

/* ---- helpers ---------------------------------------------------------- */

static uint64_t rng_state;

static void seed(uint64_t s)
{
	rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float frand(float lo, float hi)
{
	return lo + (hi - lo) * (float)(rnd() >> 40) * 0x1p-24f;
}

static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

/* Float arrays one float past a 32-byte boundary: every load is unaligned. */
static float *falloc(size_t n)
{
	void *p = NULL;

	ck_assert_int_eq(posix_memalign(&p, 64, (n + 17) * sizeof(float)), 0);
	return (float *)p + 1;
}

static void ffree(float *p)
{
	free(p - 1);
}

static void frand_fill(float *x, size_t n, float lo, float hi)
{
	for (size_t i = 0; i < n; i++)
		x[i] = frand(lo, hi);
}

/* The variant of this level, or NULL after saying why it is skipped. */
static const struct krn_ops *variant(int level, const char *test)
{
	const struct krn_ops *o = krn_get_level((enum krn_level)level);

	if (!o) {
		printf("%s[%s]: skipped: %s\n", test, level_name[level],
		       (int)krn_cpu_level() < level ? "this CPU lacks it" : "not in this build");
		fflush(stdout);
	}
	return o;
}

static const struct krn_ops *ref(void)
{
	return &krn_ops_scalar;
}

/* ---- hamming (bit-identical) ------------------------------------------ */

static const uint32_t code_words[] = { 1, 2, 3, 4, 5 };
static const uint32_t code_sizes[] = { 0, 1, 3, 7, 8, 15, 16, 17, 31, 255, 256, 1000 };

static void fill_codes(uint64_t *c, const uint64_t *q, uint32_t words,
		       uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t w = 0; w < words; w++) {
			uint64_t r = rnd();
			/* some tokens at distance 0 and at the maximum */
			if (i % 13 == 5)
				r = q[w];
			else if (i % 13 == 9)
				r = ~q[w];
			c[(size_t)i * words + w] = r;
		}
}

START_TEST(test_hamming)
{
	const struct krn_ops *o = variant(_i, "hamming");
	if (!o)
		return;
	seed(1);
	for (size_t a = 0; a < sizeof(code_words) / sizeof(code_words[0]); a++)
		for (size_t b = 0; b < sizeof(code_sizes) / sizeof(code_sizes[0]); b++) {
			uint32_t words = code_words[a], n = code_sizes[b];
			uint64_t q[8];
			/* one word past the allocation's start: not 32-byte aligned */
			uint64_t *buf = malloc(((size_t)n * words + 2) * sizeof(uint64_t));
			uint64_t *c = buf + 1;
			uint16_t *d0 = malloc((n + 1) * sizeof(uint16_t));
			uint16_t *d1 = malloc((n + 1) * sizeof(uint16_t));

			for (uint32_t w = 0; w < words; w++)
				q[w] = rnd();
			fill_codes(c, q, words, n);
			memset(d0, 0xa5, (n + 1) * sizeof(uint16_t));
			memset(d1, 0xa5, (n + 1) * sizeof(uint16_t));
			ref()->hamming(q, c, words, n, d0);
			o->hamming(q, c, words, n, d1);
			for (uint32_t i = 0; i <= n; i++)
				expect(d0[i] == d1[i],
				       "hamming words=%u n=%u i=%u: ref %u, %s %u",
				       words, n, i, d0[i], o->name, d1[i]);
			free(buf);
			free(d0);
			free(d1);
		}
}
END_TEST

/* ---- dot (double oracle) --------------------------------------------- */

START_TEST(test_dot)
{
	static const uint32_t nqs[] = { 1, 2, 3, 5 };
	const struct krn_ops *o = variant(_i, "dot");
	if (!o)
		return;
	seed(3);
	for (uint32_t dim = 8; dim <= 256; dim += 8)
		for (size_t a = 0; a < NSIZES; a++)
			for (size_t b = 0; b < sizeof(nqs) / sizeof(nqs[0]); b++) {
				uint32_t n = sizes[a], nq = nqs[b];
				size_t ld_k = dim + (dim & 8 ? 1 : 3), ld_o = (size_t)n + 3;
				float *q = falloc((size_t)nq * dim);
				float *k = falloc((size_t)n * ld_k + 1);
				float *out = falloc((size_t)nq * ld_o + 1);

				frand_fill(q, (size_t)nq * dim, -1.0f, 1.0f);
				frand_fill(k, (size_t)n * ld_k, -1.0f, 1.0f);
				o->dot(q, nq, k, ld_k, n, dim, out, ld_o);
				for (uint32_t j = 0; j < nq; j++)
					for (uint32_t i = 0; i < n; i++) {
						double s = 0, sa = 0;
						for (uint32_t d = 0; d < dim; d++) {
							double t = (double)q[j * dim + d] * k[i * ld_k + d];
							s += t;
							sa += fabs(t);
						}
						double err = fabs(out[j * ld_o + i] - s);
						expect(err <= TOL_DOT * sa,
						       "%s dot dim=%u n=%u nq=%u (%u,%u): %g vs %g",
						       o->name, dim, n, nq, j, i,
						       out[j * ld_o + i], s);
					}
				ffree(q);
				ffree(k);
				ffree(out);
			}
}
END_TEST

/* ---- gdot (each level's own dot, bit for bit; double oracle) ---------- */

#define GDOT_POOL 24 /* stored rows per case: the longer lists repeat rows */
#define GDOT_SCALE 0.0883883f /* 1 / sqrt(128) */
#define GDOT_SENTINEL 0x7fc0deadu

static const char *const elt_name[] = { "f32", "f16", "bf16" };

static double f16_value(uint16_t h); /* with the reference's oracles below */

static size_t elt_size(enum krn_elt elt)
{
	return elt == KRN_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* Random stored elements: f32 in [-1, 1), f16 and bf16 in [-2, 2). */
static void fill_stored(void *x, enum krn_elt elt, size_t n)
{
	for (size_t t = 0; t < n; t++) {
		if (elt == KRN_F32)
			((float *)x)[t] = frand(-1.0f, 1.0f);
		else if (elt == KRN_F16)
			((uint16_t *)x)[t] = krn_f32_to_f16_1(frand(-2.0f, 2.0f));
		else
			((uint16_t *)x)[t] = krn_f32_to_bf16_1(frand(-2.0f, 2.0f));
	}
}

/* Element d of a stored row in double, decoded here (f16 from its fields). */
static double stored_value(const void *row, enum krn_elt elt, uint32_t d)
{
	if (elt == KRN_F32)
		return ((const float *)row)[d];
	if (elt == KRN_F16)
		return f16_value(((const uint16_t *)row)[d]);
	return u2f((uint32_t)((const uint16_t *)row)[d] << 16);
}


/*
 * m pointers to the rows of a pool (ld elements apart) in a shuffled
 * order; every fifth repeats an earlier row, and past GDOT_POOL the
 * order starts over.
 */
static void scatter_rows(const void **rows, uint32_t m, const unsigned char *pool,
			 enum krn_elt elt, size_t ld)
{
	uint32_t perm[GDOT_POOL];

	for (uint32_t p = 0; p < GDOT_POOL; p++)
		perm[p] = p;
	for (uint32_t p = GDOT_POOL - 1; p > 0; p--) {
		uint32_t r = (uint32_t)(rnd() % (p + 1)), t = perm[p];
		perm[p] = perm[r];
		perm[r] = t;
	}
	for (uint32_t i = 0; i < m; i++)
		rows[i] = i % 5 == 4 ? rows[i / 2] :
			  pool + perm[i % GDOT_POOL] * ld * elt_size(elt);
}

struct gdot_case {
	const struct krn_ops *o;
	enum krn_elt elt;
	uint32_t dim, nq, n, n_more;
	const float *q;
	const void **rows;
	float *conv; /* [dim]: one row converted */
	float *e;    /* [nq]: dot of that row alone */
};

static void gdot_fill_out(float *out, size_t tot)
{
	for (size_t t = 0; t < tot; t++)
		out[t] = u2f(GDOT_SENTINEL);
}

/* Only out[j * ld_out + i] for i < n may be written, nothing past them. */
static void gdot_check_pad(const struct gdot_case *c, const float *out, uint32_t n,
			   size_t ld_out)
{
	for (size_t t = 0; t <= c->nq * ld_out; t++)
		if (t % ld_out >= n || t == c->nq * ld_out)
			expect(f2u(out[t]) == GDOT_SENTINEL,
			       "%s gdot %s dim=%u nq=%u n=%u n_more=%u: wrote %08x at %zu (ld_out %zu)",
			       c->o->name, elt_name[c->elt], c->dim, c->nq, n, c->n_more,
			       f2u(out[t]), t, ld_out);
}

/*
 * Row i of the full list: scale times the level's dot on that row alone,
 * converted by the level, bit for bit; and within TOL_DOT * |scale| *
 * sum |q_d k_d| of the dot of the stored values in double.
 */
static void gdot_check_row(const struct gdot_case *c, const float *out, size_t ld_out,
			   uint32_t i)
{
	const void *row = c->rows[i];

	krn_elt_to_f32(c->o, c->elt, row, c->conv, c->dim);
	c->o->dot(c->q, c->nq, c->conv, c->dim, 1, c->dim, c->e, 1);
	for (uint32_t j = 0; j < c->nq; j++) {
		float got = out[j * ld_out + i], want = GDOT_SCALE * c->e[j];
		double s = 0, sa = 0;

		expect(f2u(got) == f2u(want),
		       "%s gdot %s dim=%u nq=%u n=%u (%u,%u): %a (%08x), dot %a (%08x)",
		       c->o->name, elt_name[c->elt], c->dim, c->nq, c->n, j, i,
		       got, f2u(got), want, f2u(want));
		for (uint32_t d = 0; d < c->dim; d++) {
			double t = (double)c->q[j * c->dim + d] * stored_value(row, c->elt, d);
			s += t;
			sa += fabs(t);
		}
		s *= GDOT_SCALE;
		sa *= GDOT_SCALE;
		expect(fabs(got - s) <= TOL_DOT * sa + 1e-30,
		       "%s gdot %s dim=%u nq=%u n=%u (%u,%u): %.9g vs %.9g",
		       c->o->name, elt_name[c->elt], c->dim, c->nq, c->n, j, i, got, s);
	}
}

/* The rows from off on alone: the same bits as in the full list. */
static void gdot_check_sub(const struct gdot_case *c, const float *full, size_t ld_full,
			   uint32_t off)
{
	uint32_t m = c->n - off;
	size_t ld = (size_t)m + 6, tot = c->nq * ld + 1;
	float *out = falloc(tot);

	gdot_fill_out(out, tot);
	c->o->gdot(c->q, c->nq, c->rows + off, m, c->n_more - off, c->elt, c->dim,
		   GDOT_SCALE, out, ld);
	gdot_check_pad(c, out, m, ld);
	for (uint32_t j = 0; j < c->nq; j++)
		for (uint32_t i = 0; i < m; i++)
			expect(f2u(out[j * ld + i]) == f2u(full[j * ld_full + off + i]),
			       "%s gdot %s dim=%u nq=%u n=%u (%u,%u): %08x from row %u on, %08x in the full list",
			       c->o->name, elt_name[c->elt], c->dim, c->nq, c->n, j, off + i,
			       f2u(out[j * ld + i]), off, f2u(full[j * ld_full + off + i]));
	ffree(out);
}

static void gdot_run(const struct krn_ops *o, enum krn_elt elt, uint32_t dim,
		     uint32_t nq, uint32_t n, uint32_t more)
{
	struct gdot_case c = { .o = o, .elt = elt, .dim = dim, .nq = nq, .n = n,
			       .n_more = n + more };
	size_t es = elt_size(elt), ld = dim + 2; /* every row an odd element off */
	size_t ld_out = (size_t)n + 3, tot = nq * ld_out + 1;
	void *pool = NULL;
	float *q = falloc((size_t)nq * dim), *out = falloc(tot);
	const void *rows[33 + KRN_GDOT_AHEAD];

	ck_assert_uint_le(n + more, sizeof(rows) / sizeof(rows[0]));
	ck_assert_int_eq(posix_memalign(&pool, 64, (GDOT_POOL * ld + 1) * es), 0);
	fill_stored((unsigned char *)pool + es, elt, GDOT_POOL * ld);
	scatter_rows(rows, n + more, (unsigned char *)pool + es, elt, ld);
	frand_fill(q, (size_t)nq * dim, -1.0f, 1.0f);
	c.q = q;
	c.rows = rows;
	c.conv = falloc(dim);
	c.e = falloc(nq);

	gdot_fill_out(out, tot);
	o->gdot(q, nq, rows, n, c.n_more, elt, dim, GDOT_SCALE, out, ld_out);
	gdot_check_pad(&c, out, n, ld_out);
	for (uint32_t i = 0; i < n; i++)
		gdot_check_row(&c, out, ld_out, i);
	/* an odd and an even shift: rows change places in the kernel's pairs */
	if (n > 1)
		gdot_check_sub(&c, out, ld_out, 1);
	if (n > 4)
		gdot_check_sub(&c, out, ld_out, n / 2 & ~1u);
	free(pool);
	ffree(q);
	ffree(out);
	ffree(c.conv);
	ffree(c.e);
}

START_TEST(test_gdot)
{
	static const uint32_t dims[] = { 8, 24, 64, 128, 256 };
	static const uint32_t nqs[] = { 1, 2, 3, 4, 5, 8 };
	static const uint32_t ns[] = { 1, 2, 7, 33 };
	static const uint32_t mores[] = { 0, 5, KRN_GDOT_AHEAD };
	const struct krn_ops *o = variant(_i, "gdot");
	uint32_t k = 0;
	if (!o)
		return;
	seed(17);
	for (int elt = KRN_F32; elt <= KRN_BF16; elt++)
		for (size_t a = 0; a < sizeof(dims) / sizeof(dims[0]); a++)
			for (size_t b = 0; b < sizeof(nqs) / sizeof(nqs[0]); b++)
				for (size_t c = 0; c < sizeof(ns) / sizeof(ns[0]); c++)
					gdot_run(o, (enum krn_elt)elt, dims[a], nqs[b], ns[c],
						 mores[k++ % 3]);
}
END_TEST

/* ---- encode (sign, with a margin) ------------------------------------- */

START_TEST(test_encode)
{
	static const uint32_t dims[] = { 8, 16, 24, 40, 136, 256 };
	static const uint32_t ns[] = { 0, 1, 2, 3, 7, 17 };
	const struct krn_ops *o = variant(_i, "encode");
	if (!o)
		return;
	seed(4);
	for (uint32_t bits = 64; bits <= 256; bits *= 2)
		for (size_t a = 0; a < sizeof(dims) / sizeof(dims[0]); a++)
			for (size_t b = 0; b < sizeof(ns) / sizeof(ns[0]); b++) {
				uint32_t dim = dims[a], n = ns[b], words = bits / 64;
				size_t ld_x = dim + 5;
				float *P = falloc((size_t)bits * dim);
				float *x = falloc((size_t)n * ld_x + 1);
				uint64_t *c0 = calloc((size_t)n * words + 1, sizeof(uint64_t));
				uint64_t *c1 = calloc((size_t)n * words + 1, sizeof(uint64_t));

				frand_fill(P, (size_t)bits * dim, -1.0f, 1.0f);
				frand_fill(x, (size_t)n * ld_x, -1.0f, 1.0f);
				if (n > 2) /* a zero row: every dot is exactly 0, no bit set */
					memset(x + 2 * ld_x, 0, dim * sizeof(float));
				ref()->encode(P, bits, dim, x, ld_x, n, c0);
				memset(c1, 0xff, ((size_t)n * words + 1) * sizeof(uint64_t));
				o->encode(P, bits, dim, x, ld_x, n, c1);
				expect(c1[(size_t)n * words] == ~0ull,
				       "%s encode wrote past its rows", o->name);
				for (uint32_t i = 0; i < n; i++)
					for (uint32_t j = 0; j < bits; j++) {
						const float *pj = P + (size_t)j * dim, *xi = x + i * ld_x;
						double s = 0, np = 0, nx = 0;
						for (uint32_t d = 0; d < dim; d++) {
							s += (double)pj[d] * xi[d];
							np += (double)pj[d] * pj[d];
							nx += (double)xi[d] * xi[d];
						}
						int b0 = c0[(size_t)i * words + j / 64] >> (j % 64) & 1;
						int b1 = c1[(size_t)i * words + j / 64] >> (j % 64) & 1;
						int near = fabs(s) < ENC_MARGIN * sqrt(np * nx);
						expect(b1 == (s > 0) || near,
						       "%s encode bits=%u dim=%u row %u bit %u: %d, dot %g",
						       o->name, bits, dim, i, j, b1, s);
						expect(b0 == b1 || near,
						       "%s encode bits=%u dim=%u row %u bit %u: ref %d, got %d (dot %g)",
						       o->name, bits, dim, i, j, b0, b1, s);
						if (n > 2 && i == 2)
							ck_assert_int_eq(b1, 0);
					}
				ffree(P);
				ffree(x);
				free(c0);
				free(c1);
			}
}
END_TEST

/* ---- sketch (integer: exact against an independent oracle) ------------- */

static const uint32_t sk_dims[] = { 8, 16, 24, 40, 64, 96, 128, 136, 200, 256 };

/* The oracle: element d of a sketch row, as krn.h lays it out. */
static int sk_elem(const uint8_t *row, uint32_t dim, uint32_t d)
{
	uint32_t half = dim / 2;
	return d < half ? (row[d] & 15) - 8 : (row[d - half] >> 4) - 8;
}

static void sketch_case(const struct krn_ops *o, uint32_t dim, uint32_t nq, uint32_t n)
{
	uint32_t half = dim / 2, nm = n ? n + 5 : 0;
	int8_t *q = malloc((size_t)nq * dim + 1);
	uint8_t *pool = malloc((size_t)(nm + 1) * (half + 67));
	const uint8_t **rows = malloc((nm + 1) * sizeof(*rows));
	size_t ld = n + 3;
	int32_t *out = malloc((size_t)nq * ld * sizeof(int32_t));

	for (uint32_t i = 0; i < nq * dim; i++) /* the extremes too */
		q[i] = (int8_t)(i % 17 == 3 ? 127 : i % 17 == 5 ? -127 : (int)(rnd() % 255) - 127);
	for (uint32_t i = 0; i < nm; i++) { /* rows at odd, scattered addresses */
		uint8_t *r = pool + (size_t)(nm - 1 - i) * (half + 67) + i % 61;
		for (uint32_t b = 0; b < half; b++)
			r[b] = (uint8_t)(i % 7 == 2 ? 0xff : i % 7 == 4 ? 0x00 : rnd());
		rows[i] = r;
	}
	for (size_t i = 0; i < (size_t)nq * ld; i++)
		out[i] = 0x5a5a5a5a;
	o->sketch(q, nq, rows, n, nm, dim, out, ld);
	for (uint32_t j = 0; j < nq; j++) {
		for (uint32_t i = 0; i < n; i++) {
			int64_t want = 0;
			for (uint32_t d = 0; d < dim; d++)
				want += (int64_t)q[j * dim + d] * sk_elem(rows[i], dim, d);
			expect(out[j * ld + i] == want,
			       "%s sketch dim=%u nq=%u n=%u (%u,%u): %d, want %lld", o->name, dim,
			       nq, n, j, i, out[j * ld + i], (long long)want);
		}
		for (size_t i = n; i < ld; i++)
			expect(out[j * ld + i] == 0x5a5a5a5a, "%s sketch dim=%u: wrote past n at %zu",
			       o->name, dim, i);
	}
	free(q);
	free(pool);
	free(rows);
	free(out);
}

START_TEST(test_sketch)
{
	static const uint32_t nqs[] = { 1, 3, 4, 8, 9 }, ns[] = { 0, 1, 17, 300 };
	const struct krn_ops *o = variant(_i, "sketch");

	if (!o)
		return;
	seed(7);
	for (size_t a = 0; a < sizeof(sk_dims) / sizeof(sk_dims[0]); a++)
		for (size_t b = 0; b < sizeof(nqs) / sizeof(nqs[0]); b++)
			for (size_t c = 0; c < sizeof(ns) / sizeof(ns[0]); c++)
				sketch_case(o, sk_dims[a], nqs[b], ns[c]);
}
END_TEST

/* krn_sketch_put: every element within half a step, the extremes at +-7. */
START_TEST(test_sketch_put)
{
	float x[256];
	uint8_t sk[128];

	seed(8);
	for (size_t a = 0; a < sizeof(sk_dims) / sizeof(sk_dims[0]); a++) {
		uint32_t dim = sk_dims[a];
		frand_fill(x, dim, -3.0f, 3.0f);
		x[dim / 3] = -40.0f; /* an outlier channel sets the step */
		float step = krn_sketch_put(x, dim, sk);
		expect(fabsf(step - 40.0f / 7.0f) < 1e-5f, "dim %u: step %g", dim, (double)step);
		expect(sk_elem(sk, dim, dim / 3) == -7, "dim %u: the outlier is %d", dim,
		       sk_elem(sk, dim, dim / 3));
		for (uint32_t d = 0; d < dim; d++) {
			int e = sk_elem(sk, dim, d);
			expect(e >= -7 && e <= 7 && fabsf(e * step - x[d]) <= 0.5f * step * 1.0001f,
			       "dim %u d %u: %g as %d x %g", dim, d, (double)x[d], e, (double)step);
		}
	}
	memset(x, 0, sizeof(x));
	expect(krn_sketch_put(x, 128, sk) == 0.0f && sk[0] == 0x88 && sk[63] == 0x88,
	       "a zero row: step 0, every element 0");
	x[7] = 1.0f;
	x[5] = NAN;
	expect(krn_sketch_put(x, 128, sk) == 0.0f && sk[7] == 0x88 && sk[5] == 0x88,
	       "a row with a NaN: step 0, every element 0");
	x[5] = INFINITY;
	expect(krn_sketch_put(x, 128, sk) == 0.0f && sk[7] == 0x88,
	       "a row with an Inf: step 0, every element 0");
}
END_TEST

/* ---- attention (double softmax oracle) -------------------------------- */

/* Exact softmax over a list of logits and rows of v, in double. */
struct exact {
	double lse;
	double *o; /* [dim] normalised output */
	double *w; /* [dim] sum p |v| / sum p: the scale of each output */
};

static void exact_softmax(const double *l, const float *v, size_t ld,
			  uint32_t n, uint32_t dim, struct exact *e)
{
	double m = -INFINITY, s = 0;

	for (uint32_t i = 0; i < n; i++)
		m = l[i] > m ? l[i] : m;
	for (uint32_t d = 0; d < dim; d++)
		e->o[d] = e->w[d] = 0;
	if (m == -INFINITY) {
		e->lse = -INFINITY;
		return;
	}
	for (uint32_t i = 0; i < n; i++) {
		double p = exp(l[i] - m);
		s += p;
		for (uint32_t d = 0; d < dim; d++) {
			e->o[d] += p * v[i * ld + d];
			e->w[d] += p * fabs(v[i * ld + d]);
		}
	}
	for (uint32_t d = 0; d < dim; d++) {
		e->o[d] /= s;
		e->w[d] /= s;
	}
	e->lse = m + log(s);
}

static void check_state(const struct krn_part *st, const struct exact *e,
			uint32_t dim, const char *what)
{
	if (e->lse == -INFINITY) {
		expect(st->m == -INFINITY && st->s == 0, "%s: state not empty", what);
		for (uint32_t d = 0; d < dim; d++)
			expect(f2u(st->acc[d]) == 0, "%s: acc[%u] != 0", what, d);
		return;
	}
	double lse = st->m + log((double)st->s);
	expect(fabs(lse - e->lse) <= TOL_ATT * (1 + fabs(e->lse)),
	       "%s: lse %.9g vs %.9g", what, lse, e->lse);
	for (uint32_t d = 0; d < dim; d++) {
		double o = st->acc[d] / (double)st->s;
		expect(fabs(o - e->o[d]) <= TOL_ATT * e->w[d] + 1e-30,
		       "%s: out[%u] %.9g vs %.9g (scale %g)", what, d, o,
		       e->o[d], e->w[d]);
	}
}

struct att_case {
	uint32_t nq, n, dim;
	size_t ld;
	float scale;
	float *q, *k, *v;
	struct krn_part *st;
	double *l;
	struct exact e;
};

static void att_alloc(struct att_case *c, uint32_t nq, uint32_t n, uint32_t dim)
{
	c->nq = nq;
	c->n = n;
	c->dim = dim;
	c->ld = dim + (dim & 8 ? 3 : 1);
	c->scale = 3.0f / sqrtf((float)dim);
	c->q = falloc((size_t)nq * dim);
	c->k = falloc((size_t)n * c->ld + 1);
	c->v = falloc((size_t)n * c->ld + 1);
	c->st = calloc(nq, sizeof(*c->st));
	for (uint32_t j = 0; j < nq; j++) {
		c->st[j].m = -INFINITY;
		c->st[j].acc = falloc(dim);
		memset(c->st[j].acc, 0, dim * sizeof(float));
	}
	c->l = malloc((n + 1) * sizeof(double));
	c->e.o = malloc(dim * sizeof(double));
	c->e.w = malloc(dim * sizeof(double));
	frand_fill(c->q, (size_t)nq * dim, -1.0f, 1.0f);
	frand_fill(c->k, (size_t)n * c->ld, -1.0f, 1.0f);
	frand_fill(c->v, (size_t)n * c->ld, -1.0f, 1.0f);
}

static void att_free(struct att_case *c)
{
	for (uint32_t j = 0; j < c->nq; j++)
		ffree(c->st[j].acc);
	ffree(c->q);
	ffree(c->k);
	ffree(c->v);
	free(c->st);
	free(c->l);
	free(c->e.o);
	free(c->e.w);
}

/* Query j's exact logits against rows [0, n). */
static void att_logits(struct att_case *c, uint32_t j)
{
	for (uint32_t i = 0; i < c->n; i++) {
		double s = 0;
		for (uint32_t d = 0; d < c->dim; d++)
			s += (double)c->q[j * c->dim + d] * c->k[i * c->ld + d];
		c->l[i] = (double)c->scale * s;
	}
}

START_TEST(test_attend)
{
	static const uint32_t nqs[] = { 1, 2, 3, 4, 5, 8, 9 };
	const struct krn_ops *o = variant(_i, "attend");
	char what[128];
	if (!o)
		return;
	seed(5);
	for (uint32_t dim = 8; dim <= 256; dim += 8)
		for (size_t a = 0; a < NSIZES; a++)
			for (size_t b = 0; b < sizeof(nqs) / sizeof(nqs[0]); b++) {
				struct att_case c;
				uint32_t n = sizes[a], n1 = n / 3;

				/* the heavier shapes on a few dims only */
				if (nqs[b] > 4 && dim % 64 != 8 && dim != 136)
					continue;
				att_alloc(&c, nqs[b], n, dim);
				/* two calls: the second folds into a live state */
				o->attend(c.q, c.nq, c.k, c.v, c.ld, n1, dim, c.scale, c.st);
				o->attend(c.q, c.nq, c.k + n1 * c.ld, c.v + n1 * c.ld, c.ld,
					  n - n1, dim, c.scale, c.st);
				for (uint32_t j = 0; j < c.nq; j++) {
					att_logits(&c, j);
					exact_softmax(c.l, c.v, c.ld, n, dim, &c.e);
					snprintf(what, sizeof(what), "%s attend dim=%u n=%u nq=%u q%u",
						 o->name, dim, n, c.nq, j);
					check_state(&c.st[j], &c.e, dim, what);
				}
				att_free(&c);
			}
}
END_TEST

START_TEST(test_attend_logits)
{
	static const uint32_t dims[] = { 8, 16, 24, 128, 136, 256 };
	const struct krn_ops *o = variant(_i, "attend_logits");
	char what[128];
	if (!o)
		return;
	seed(6);
	for (size_t a = 0; a < sizeof(dims) / sizeof(dims[0]); a++)
		for (size_t b = 0; b < NSIZES; b++)
			for (int kind = 0; kind < 4; kind++) {
				struct att_case c;
				uint32_t dim = dims[a], n = sizes[b], n1 = n / 2;
				float *lg = falloc(n + 1);

				att_alloc(&c, 1, n, dim);
				for (uint32_t i = 0; i < n; i++) {
					if (kind == 0)
						lg[i] = frand(-5.0f, 5.0f);
					else if (kind == 1) /* exp underflows for most */
						lg[i] = frand(-120.0f, 20.0f);
					else if (kind == 2) /* some masked out */
						lg[i] = rnd() % 3 ? frand(-30.0f, 30.0f) : -INFINITY;
					else /* all masked out: the state must not move */
						lg[i] = -INFINITY;
					c.l[i] = lg[i];
				}
				o->attend_logits(lg, c.v, c.ld, n1, dim, c.st);
				o->attend_logits(lg + n1, c.v + n1 * c.ld, c.ld, n - n1, dim, c.st);
				exact_softmax(c.l, c.v, c.ld, n, dim, &c.e);
				snprintf(what, sizeof(what), "%s attend_logits dim=%u n=%u kind %d",
					 o->name, dim, n, kind);
				check_state(&c.st[0], &c.e, dim, what);

				if (kind == 3 && n) { /* also on a live state: untouched */
					struct krn_part keep;
					c.st[0].m = 1.5f;
					c.st[0].s = 2.0f;
					for (uint32_t d = 0; d < dim; d++)
						c.st[0].acc[d] = (float)d;
					keep = c.st[0];
					o->attend_logits(lg, c.v, c.ld, n, dim, c.st);
					expect(f2u(c.st[0].m) == f2u(keep.m) && f2u(c.st[0].s) == f2u(keep.s),
					       "%s attend_logits dim=%u n=%u: all -inf moved m or s",
					       o->name, dim, n);
					for (uint32_t d = 0; d < dim; d++)
						expect(c.st[0].acc[d] == (float)d,
						       "%s attend_logits: all -inf moved acc[%u]",
						       o->name, d);
				}
				ffree(lg);
				att_free(&c);
			}
}
END_TEST

START_TEST(test_merge)
{
	const struct krn_ops *o = variant(_i, "merge");
	if (!o)
		return;
	seed(7);
	for (uint32_t dim = 8; dim <= 256; dim += 8)
		for (int kind = 0; kind < 4; kind++) {
			float *aa = falloc(dim), *ba = falloc(dim), *keep = falloc(dim);
			struct krn_part a = { frand(-20, 20), frand(0.5f, 50), aa };
			struct krn_part b = { frand(-20, 20), frand(0.5f, 50), ba };

			frand_fill(aa, dim, -10, 10);
			frand_fill(ba, dim, -10, 10);
			if (kind == 1) { /* a empty: becomes b */
				a.m = -INFINITY;
				a.s = 0;
				memset(aa, 0, dim * sizeof(float));
			} else if (kind == 2) { /* b empty: a untouched */
				b.m = -INFINITY;
				b.s = 0;
				memset(ba, 0, dim * sizeof(float));
			} else if (kind == 3) {
				b.m = a.m;
			}
			memcpy(keep, aa, dim * sizeof(float));
			float am = a.m, as = a.s;
			o->merge(&a, &b, dim);
			if (kind == 2) {
				expect(f2u(a.m) == f2u(am) && f2u(a.s) == f2u(as) &&
				       !memcmp(aa, keep, dim * sizeof(float)),
				       "%s merge dim=%u: an empty b changed a", o->name, dim);
			} else {
				double m = am > b.m ? am : b.m;
				double ca = exp((double)am - m), cb = exp((double)b.m - m);
				double s = as * ca + b.s * cb;
				expect(f2u(a.m) == f2u((float)m), "%s merge: m", o->name);
				expect(fabs(a.s - s) <= TOL_ATT * s, "%s merge: s %g vs %g",
				       o->name, a.s, s);
				for (uint32_t d = 0; d < dim; d++) {
					double x = keep[d] * ca + ba[d] * cb;
					double w = fabs(keep[d] * ca) + fabs(ba[d] * cb);
					expect(fabs(a.acc[d] - x) <= TOL_ATT * w + 1e-30,
					       "%s merge dim=%u kind %d acc[%u]: %g vs %g",
					       o->name, dim, kind, d, a.acc[d], x);
				}
			}
			ffree(aa);
			ffree(ba);
			ffree(keep);
		}
}
END_TEST

/* Two halves folded separately and merged equal one pass over the whole. */
START_TEST(test_merge_halves)
{
	static const uint32_t dims[] = { 8, 24, 128, 136, 256 };
	const struct krn_ops *o = variant(_i, "merge_halves");
	char what[128];
	if (!o)
		return;
	for (size_t a = 0; a < sizeof(dims) / sizeof(dims[0]); a++)
		for (size_t b = 0; b < NSIZES; b++) {
			struct att_case one, two;
			uint32_t dim = dims[a], n = sizes[b], h = n / 2;
			struct krn_part hb = { -INFINITY, 0, falloc(dim) };

			seed(800 + a * NSIZES + b);
			att_alloc(&one, 3, n, dim);
			seed(800 + a * NSIZES + b);
			att_alloc(&two, 3, n, dim);
			o->attend(one.q, 3, one.k, one.v, one.ld, n, dim, one.scale, one.st);
			o->attend(two.q, 3, two.k, two.v, two.ld, h, dim, two.scale, two.st);
			for (uint32_t j = 0; j < 3; j++) {
				hb.m = -INFINITY;
				hb.s = 0;
				memset(hb.acc, 0, dim * sizeof(float));
				o->attend(two.q + j * dim, 1, two.k + h * two.ld,
					  two.v + h * two.ld, two.ld, n - h, dim,
					  two.scale, &hb);
				o->merge(&two.st[j], &hb, dim);

				/* compare both against the exact result */
				att_logits(&one, j);
				exact_softmax(one.l, one.v, one.ld, n, dim, &one.e);
				snprintf(what, sizeof(what), "%s one pass dim=%u n=%u q%u",
					 o->name, dim, n, j);
				check_state(&one.st[j], &one.e, dim, what);
				snprintf(what, sizeof(what), "%s merged halves dim=%u n=%u q%u",
					 o->name, dim, n, j);
				check_state(&two.st[j], &one.e, dim, what);
			}
			ffree(hb.acc);
			att_free(&one);
			att_free(&two);
		}
}
END_TEST

/* ---- exp_sum, max, all_finite ---------------------------------------- */

START_TEST(test_exp_sum)
{
	static const uint32_t ns[] = { 0, 1, 3, 7, 8, 9, 17, 31, 33, 255, 256, 1000, 4099 };
	const struct krn_ops *o = variant(_i, "exp_sum");
	if (!o)
		return;
	seed(9);
	for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
		for (int kind = 0; kind < 3; kind++) {
			uint32_t n = ns[a];
			float *x = falloc(n + 1);
			float m = kind == 0 ? 0.0f : kind == 1 ? 3.0f : -2.0f;

			frand_fill(x, n, -20.0f, 5.0f);
			if (kind == 2 && n > 2)
				x[n / 2] = -INFINITY;
			double s = 0;
			for (uint32_t i = 0; i < n; i++)
				s += exp((double)x[i] - m);
			double got = o->exp_sum(x, n, m);
			expect(fabs(got - s) <= TOL_EXP_SUM * s,
			       "%s exp_sum n=%u: %.9g vs %.9g", o->name, n, got, s);
			ffree(x);
		}
}
END_TEST

/* One value at a time: the accuracy of the exp itself. */
START_TEST(test_exp_one)
{
	const struct krn_ops *o = variant(_i, "exp_one");
	float *x = falloc(1);
	if (!o)
		goto out;
	x[0] = -INFINITY;
	expect(f2u(o->exp_sum(x, 1, 0.0f)) == 0, "%s exp(-inf) != +0", o->name);
	x[0] = 1.0f;
	expect(o->exp_sum(x, 1, -INFINITY) == INFINITY, "%s exp(+inf)", o->name);
	/* every 97th float of [-110, 89] outside (-1e-3, 1e-3), every 8191st inside */
	for (uint32_t u = f2u(-110.0f); u > 0x80000000u; u -= u > f2u(-1e-3f) ? 97 : 8191) {
		x[0] = u2f(u);
		double e = exp((double)x[0]), got = o->exp_sum(x, 1, 0.0f);
		if (e >= FLT_MIN)
			expect(fabs(got - e) <= TOL_EXP_ONE * e,
			       "%s exp(%.9g) = %.9g vs %.9g", o->name, x[0], got, e);
		else
			expect(fabs(got - e) <= 0x1p-149,
			       "%s exp(%.9g) = %g vs %g", o->name, x[0], got, e);
	}
	for (uint32_t u = 0; u <= f2u(89.0f); u += u < f2u(1e-3f) ? 8191 : 97) {
		x[0] = u2f(u);
		double e = exp((double)x[0]), got = o->exp_sum(x, 1, 0.0f);
		if (e <= FLT_MAX * (1 - 1e-6))
			expect(fabs(got - e) <= TOL_EXP_ONE * e,
			       "%s exp(%.9g) = %.9g vs %.9g", o->name, x[0], got, e);
		else if (e > FLT_MAX * (1 + 1e-6))
			expect(got == INFINITY, "%s exp(%.9g) = %g", o->name, x[0], got);
	}
out:
	ffree(x);
}
END_TEST

START_TEST(test_max)
{
	static const uint32_t ns[] = { 0, 1, 2, 3, 7, 8, 9, 17, 31, 32, 33, 255, 256, 1000 };
	const struct krn_ops *o = variant(_i, "max");
	if (!o)
		return;
	seed(10);
	for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
		for (int kind = 0; kind < 6; kind++) {
			uint32_t n = ns[a];
			float *x = falloc(n + 1);

			for (uint32_t i = 0; i < n; i++) {
				uint64_t r = rnd();
				switch (kind) {
				case 0:
					x[i] = frand(-100, 100);
					break;
				case 1: /* NaNs are skipped */
					x[i] = r % 5 ? frand(-100, 100) : NAN;
					break;
				case 2: /* the first zero decides the sign */
					x[i] = r % 3 == 0 ? 0.0f : r % 3 == 1 ? -0.0f : frand(-5, -1);
					break;
				case 3:
					x[i] = NAN;
					break;
				case 4:
					x[i] = r % 2 ? -INFINITY : -0.0f;
					break;
				default:
					x[i] = -INFINITY;
				}
			}
			float m0 = ref()->max(x, n), m1 = o->max(x, n);
			expect(f2u(m0) == f2u(m1), "%s max n=%u kind %d: ref %08x, got %08x",
			       o->name, n, kind, f2u(m0), f2u(m1));
			ffree(x);
		}
}
END_TEST

START_TEST(test_all_finite)
{
	static const uint32_t ns[] = { 0, 1, 7, 8, 31, 32, 33, 64, 65, 100, 1000 };
	static const float bad[] = { NAN, INFINITY, -INFINITY };
	const struct krn_ops *o = variant(_i, "all_finite");
	if (!o)
		return;
	seed(11);
	for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
		uint32_t n = ns[a];
		float *x = falloc(n + 1);

		frand_fill(x, n, -1e30f, 1e30f);
		if (n)
			x[0] = FLT_MAX;
		ck_assert_int_eq(o->all_finite(x, n), 1);
		ck_assert_int_eq(ref()->all_finite(x, n), 1);
		for (uint32_t i = 0; i < n; i += n > 70 ? 7 : 1)
			for (int b = 0; b < 3; b++) {
				float keep = x[i];
				x[i] = bad[b];
				expect(o->all_finite(x, n) == 0 && ref()->all_finite(x, n) == 0,
				       "%s all_finite n=%u bad at %u", o->name, n, i);
				x[i] = keep;
			}
		ffree(x);
	}
}
END_TEST

/* ---- conversions (bit-identical) ------------------------------------- */

static const size_t conv_ns[] = { 0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1001 };

START_TEST(test_conv_f16)
{
	const struct krn_ops *o = variant(_i, "conv_f16");
	if (!o)
		return;
	seed(12);
	/* every f16 bit pattern, NaN payloads included, at an odd offset */
	uint16_t *h = malloc((65536 + 1) * sizeof(uint16_t));
	float *f0 = falloc(65536), *f1 = falloc(65536);
	for (uint32_t i = 0; i < 65536; i++)
		h[i + 1] = (uint16_t)i;
	ref()->f16_to_f32(h + 1, f0, 65536);
	o->f16_to_f32(h + 1, f1, 65536);
	for (uint32_t i = 0; i < 65536; i++)
		expect(f2u(f0[i]) == f2u(f1[i]), "%s f16_to_f32(%04x): ref %08x, got %08x",
		       o->name, i, f2u(f0[i]), f2u(f1[i]));
	for (size_t a = 0; a < sizeof(conv_ns) / sizeof(conv_ns[0]); a++) {
		size_t n = conv_ns[a];
		f1[n] = 1234.0f;
		o->f16_to_f32(h + 1 + 777, f1, n);
		expect(f1[n] == 1234.0f, "%s f16_to_f32 wrote past n", o->name);
		for (size_t i = 0; i < n; i++)
			expect(f2u(f1[i]) == f2u(f0[i + 777]), "%s f16_to_f32 n=%zu at %zu", o->name, n, i);
	}

	/*
	 * f32 -> f16 on random bit patterns (NaNs included: F16C's NaN
	 * handling matches the reference, nothing is excluded) and on
	 * every exponent with mantissas at and around the rounding points.
	 */
	size_t n = 1 << 20;
	float *x = falloc(n);
	uint16_t *r0 = malloc((n + 1) * sizeof(uint16_t)), *r1 = malloc((n + 1) * sizeof(uint16_t));
	static const uint32_t man[] = { 0, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000,
					0x7fffff, 0x400000, 0x3fffff, 0x7fe000, 0x7ff000 };
	for (size_t i = 0; i < n; i++)
		x[i] = u2f((uint32_t)rnd());
	for (uint32_t e = 0, i = 0; e < 512; e++)
		for (size_t m = 0; m < sizeof(man) / sizeof(man[0]); m++)
			x[i++] = u2f(e << 23 | man[m]);
	for (int rep = 0; rep < 2; rep++) {
		ref()->f32_to_f16(x, r0, n);
		o->f32_to_f16(x, r1, n);
		for (size_t i = 0; i < n; i++)
			expect(r0[i] == r1[i], "%s f32_to_f16(%08x): ref %04x, got %04x",
			       o->name, f2u(x[i]), r0[i], r1[i]);
		/* odd lengths: tails */
		for (size_t a = 0; a < sizeof(conv_ns) / sizeof(conv_ns[0]); a++) {
			size_t m = conv_ns[a];
			r1[m] = 0xbeef;
			o->f32_to_f16(x + 5, r1, m);
			expect(r1[m] == 0xbeef, "%s f32_to_f16 wrote past n", o->name);
			for (size_t i = 0; i < m; i++)
				expect(r1[i] == r0[i + 5], "%s f32_to_f16 n=%zu at %zu", o->name, m, i);
		}
		/* second round: values in the f16 range */
		for (size_t i = 0; i < n; i++)
			x[i] = u2f((uint32_t)(0x33000000u + rnd() % (0x47800000u - 0x33000000u)) |
				   (uint32_t)(rnd() & 0x80000000u));
	}
	free(h);
	ffree(f0);
	ffree(f1);
	ffree(x);
	free(r0);
	free(r1);
}
END_TEST

START_TEST(test_conv_bf16)
{
	const struct krn_ops *o = variant(_i, "conv_bf16");
	if (!o)
		return;
	seed(13);
	uint16_t *h = malloc((65536 + 1) * sizeof(uint16_t));
	float *f0 = falloc(65536), *f1 = falloc(65536);
	for (uint32_t i = 0; i < 65536; i++)
		h[i + 1] = (uint16_t)i;
	ref()->bf16_to_f32(h + 1, f0, 65536);
	o->bf16_to_f32(h + 1, f1, 65536);
	for (uint32_t i = 0; i < 65536; i++)
		expect(f2u(f0[i]) == f2u(f1[i]), "%s bf16_to_f32(%04x)", o->name, i);
	for (size_t a = 0; a < sizeof(conv_ns) / sizeof(conv_ns[0]); a++) {
		size_t n = conv_ns[a];
		f1[n] = 1234.0f;
		o->bf16_to_f32(h + 1 + 333, f1, n);
		expect(f1[n] == 1234.0f, "%s bf16_to_f32 wrote past n", o->name);
		for (size_t i = 0; i < n; i++)
			expect(f2u(f1[i]) == f2u(f0[i + 333]), "%s bf16_to_f32 n=%zu at %zu", o->name, n, i);
	}

	size_t n = 1 << 20;
	float *x = falloc(n);
	uint16_t *r0 = malloc((n + 1) * sizeof(uint16_t)), *r1 = malloc((n + 1) * sizeof(uint16_t));
	for (size_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)rnd();
		if (i % 4 == 1) /* exact ties */
			u = (u & 0xffff0000u) | 0x8000u;
		else if (i % 4 == 2) /* around the ties */
			u = (u & 0xffff0000u) | (0x7fffu + (uint32_t)(rnd() % 3));
		x[i] = u2f(u);
	}
	ref()->f32_to_bf16(x, r0, n);
	o->f32_to_bf16(x, r1, n);
	for (size_t i = 0; i < n; i++)
		expect(r0[i] == r1[i], "%s f32_to_bf16(%08x): ref %04x, got %04x",
		       o->name, f2u(x[i]), r0[i], r1[i]);
	for (size_t a = 0; a < sizeof(conv_ns) / sizeof(conv_ns[0]); a++) {
		size_t m = conv_ns[a];
		r1[m] = 0xbeef;
		o->f32_to_bf16(x + 3, r1, m);
		expect(r1[m] == 0xbeef, "%s f32_to_bf16 wrote past n", o->name);
		for (size_t i = 0; i < m; i++)
			expect(r1[i] == r0[i + 3], "%s f32_to_bf16 n=%zu at %zu", o->name, m, i);
	}
	free(h);
	ffree(f0);
	ffree(f1);
	ffree(x);
	free(r0);
	free(r1);
}
END_TEST

/* ---- the reference against independent oracles ----------------------- */

static int is_f16_nan(uint16_t h)
{
	return (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
}

/* f16 value from its fields, in double (no code shared with convert.c). */
static double f16_value(uint16_t h)
{
	int e = (h >> 10) & 0x1f, m = h & 0x3ff;
	double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
	if (e == 0x1f)
		v = m ? NAN : INFINITY;
	return h & 0x8000 ? -v : v;
}

/*
 * The f16 nearest to a (non-NaN) double, ties to even: binary search over
 * the positive patterns, which are ordered like their values; 0x7c00
 * stands for 65536 in the rounding (the next value past 65504), so that
 * everything from 65520 up rounds to Inf.
 */
static uint16_t f16_oracle(double x)
{
	uint16_t sign = signbit(x) ? 0x8000 : 0;
	double a = fabs(x);

	if (a >= 65536.0)
		return sign | 0x7c00;
	uint32_t lo = 0, hi = 0x7c00; /* value(lo) <= a < value(hi) */
	while (hi - lo > 1) {
		uint32_t mid = (lo + hi) / 2;
		if (f16_value((uint16_t)mid) <= a)
			lo = mid;
		else
			hi = mid;
	}
	double vl = f16_value((uint16_t)lo);
	double vh = hi == 0x7c00 ? 65536.0 : f16_value((uint16_t)hi);
	uint32_t r = a - vl < vh - a ? lo : a - vl > vh - a ? hi : (lo & 1 ? hi : lo);
	return sign | (uint16_t)r;
}

START_TEST(test_ref_f16)
{
	for (uint32_t i = 0; i < 65536; i++) {
		uint16_t h = (uint16_t)i;
		float f = krn_f16_to_f32_1(h);
		uint16_t back = krn_f32_to_f16_1(f);
		if (is_f16_nan(h)) {
			expect(isnan(f), "f16 %04x: NaN lost", h);
			expect(is_f16_nan(back) && (back & 0x8000) == (h & 0x8000),
			       "f16 %04x: NaN came back as %04x", h, back);
			continue;
		}
		expect(back == h, "f16 %04x -> %g -> %04x", h, f, back);
		double v = f16_value(h);
		expect((double)f == v && !signbit(f) == !(h & 0x8000),
		       "f16 %04x: %g, expected %g", h, f, v);
	}
}
END_TEST

START_TEST(test_ref_f32_to_f16)
{
	seed(14);
	/* every midpoint between neighbours, and the floats next to it */
	for (uint32_t p = 0; p < 0x7c00; p++) {
		double vl = f16_value((uint16_t)p);
		double vh = p == 0x7bff ? 65536.0 : f16_value((uint16_t)(p + 1));
		float mid = (float)((vl + vh) / 2); /* exact: 12 significant bits */
		float xs[3] = { nextafterf(mid, 0), mid, nextafterf(mid, INFINITY) };
		for (int t = 0; t < 3; t++)
			for (int s = 0; s < 2; s++) {
				float x = s ? -xs[t] : xs[t];
				expect(krn_f32_to_f16_1(x) == f16_oracle(x),
				       "f32_to_f16(%a): %04x, oracle %04x", x,
				       krn_f32_to_f16_1(x), f16_oracle(x));
			}
	}
	/* random floats of every magnitude, subnormal results and overflow */
	for (int i = 0; i < 2000000; i++) {
		uint32_t u = (uint32_t)rnd();
		if (i & 1) /* focus on [2^-26, 2^17) */
			u = (u & 0x807fffffu) | ((uint32_t)(101 + rnd() % 43) << 23);
		float x = u2f(u);
		if (isnan(x))
			continue;
		expect(krn_f32_to_f16_1(x) == f16_oracle(x),
		       "f32_to_f16(%a): %04x, oracle %04x", x,
		       krn_f32_to_f16_1(x), f16_oracle(x));
	}
	ck_assert_int_eq(krn_f32_to_f16_1(65519.996f), 0x7bff);
	ck_assert_int_eq(krn_f32_to_f16_1(65520.0f), 0x7c00);
	ck_assert_int_eq(krn_f32_to_f16_1(0x1p-25f), 0);
	ck_assert_int_eq(krn_f32_to_f16_1(nextafterf(0x1p-25f, 1)), 1);
	ck_assert_int_eq(krn_f32_to_f16_1(INFINITY), 0x7c00);
	ck_assert_int_eq(krn_f32_to_f16_1(-INFINITY), 0xfc00);
	ck_assert(is_f16_nan(krn_f32_to_f16_1(NAN)));
	ck_assert(is_f16_nan(krn_f32_to_f16_1(u2f(0x7f800001)))); /* payload only in the dropped bits */
}
END_TEST

/* The bf16 nearest to a non-NaN float: compare the two neighbours in double. */
static uint16_t bf16_oracle(float x)
{
	uint32_t u = f2u(x), lo = u >> 16;
	double a = fabs((double)x);
	double vl = fabs((double)u2f(lo << 16));
	double vh = (lo & 0x7fff) == 0x7f7f ? ldexp(1, 128) : fabs((double)u2f((lo + 1) << 16));

	if (isinf(x) || a == vl)
		return (uint16_t)lo;
	if (a - vl < vh - a)
		return (uint16_t)lo;
	if (a - vl > vh - a || (lo & 1))
		return (uint16_t)(lo + 1);
	return (uint16_t)lo;
}

START_TEST(test_ref_bf16)
{
	seed(15);
	for (uint32_t i = 0; i < 65536; i++) {
		int e = (i >> 7) & 0xff, m = i & 0x7f;
		float f = krn_bf16_to_f32_1((uint16_t)i);
		if (e == 0xff && m) {
			expect(isnan(f), "bf16 %04x: NaN lost", i);
			continue;
		}
		double v = e == 0xff ? INFINITY : e ? ldexp(128 + m, e - 134) : ldexp(m, -133);
		expect((double)f == (i & 0x8000 ? -v : v), "bf16 %04x: %g vs %g", i, f, v);
		ck_assert_int_eq(krn_f32_to_bf16_1(f), i);
	}
	for (int i = 0; i < 2000000; i++) {
		uint32_t u = (uint32_t)rnd();
		if (i % 3 == 1)
			u = (u & 0xffff0000u) | 0x8000u;
		float x = u2f(u);
		if (isnan(x)) {
			uint16_t r = krn_f32_to_bf16_1(x);
			expect((r & 0x7f80) == 0x7f80 && (r & 0x7f) && (r >> 15) == (u >> 31),
			       "f32_to_bf16(%08x) = %04x: not a NaN of that sign", u, r);
			continue;
		}
		expect(krn_f32_to_bf16_1(x) == bf16_oracle(x),
		       "f32_to_bf16(%08x): %04x, oracle %04x", u,
		       krn_f32_to_bf16_1(x), bf16_oracle(x));
	}
	ck_assert_int_eq(krn_f32_to_bf16_1(FLT_MAX), 0x7f80);
}
END_TEST

static const float *sel_x;

/* larger value first; equal values by lower index */
static int sel_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;

	if (sel_x[a] != sel_x[b])
		return sel_x[a] > sel_x[b] ? -1 : 1;
	return a < b ? -1 : a > b;
}

static int idx_cmp(const void *pa, const void *pb)
{
	uint32_t a = *(const uint32_t *)pa, b = *(const uint32_t *)pb;
	return a < b ? -1 : a > b;
}

START_TEST(test_ref_select)
{
	static const uint32_t ns[] = { 0, 1, 2, 3, 7, 100, 1000, 100000 };
	seed(16);
	for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
		for (int kind = 0; kind < 6; kind++) {
			uint32_t n = ns[a], nfin = 0;
			float *x = falloc(n + 1);
			uint32_t *idx = malloc((n + 1) * sizeof(uint32_t));
			uint32_t *scr = malloc((n + 1) * sizeof(uint32_t));
			uint32_t *ord = malloc((n + 1) * sizeof(uint32_t));

			for (uint32_t i = 0; i < n; i++) {
				switch (kind) {
				case 0:
					x[i] = frand(-1000, 1000);
					break;
				case 1: /* many ties */
					x[i] = (float)(1 + rnd() % 5);
					break;
				case 2: /* ties and -INFINITY */
					x[i] = rnd() % 3 ? (float)(1 + rnd() % 7) * 0.25f : -INFINITY;
					break;
				case 3:
					x[i] = 42.0f;
					break;
				case 4:
					x[i] = -INFINITY;
					break;
				default: /* ascending, with repeats */
					x[i] = (float)(i / 3) - 100.0f;
				}
				nfin += isfinite(x[i]) != 0;
			}
			for (uint32_t i = 0; i < n; i++)
				ord[i] = i;
			sel_x = x;
			qsort(ord, n, sizeof(*ord), sel_cmp);

			uint32_t ks[5] = { 0, 1, n / 2, n ? n - 1 : 0, n };
			for (int t = 0; t < 5; t++) {
				uint32_t k = ks[t];
				if (k > n)
					continue;
				uint32_t got = krn_select_top(x, n, k, idx, scr);
				expect(got == k, "select n=%u k=%u returned %u", n, k, got);
				memcpy(scr, ord, k * sizeof(*scr));
				qsort(scr, k, sizeof(*scr), idx_cmp);
				for (uint32_t i = 0; i < k; i++) {
					expect(idx[i] == scr[i],
					       "select n=%u k=%u kind %d: idx[%u] = %u, oracle %u",
					       n, k, kind, i, idx[i], scr[i]);
					if (k <= nfin)
						expect(isfinite(x[idx[i]]), "select n=%u k=%u took -INFINITY at %u", n, k, idx[i]);
				}
			}
			ffree(x);
			free(idx);
			free(scr);
			free(ord);
		}
}
END_TEST

/* ---- DASHKV_SIMD: krn_init caches, so each value runs in a child ------- */

struct init_result {
	int rc;
	int level;
	char err[KRN_MSGLEN];
};

static struct init_result init_in_child(const char *val)
{
	struct init_result r;
	int fd[2];

	memset(&r, 0, sizeof(r));
	ck_assert_int_eq(pipe(fd), 0);
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fd[0]);
		if (val)
			setenv("DASHKV_SIMD", val, 1);
		else
			unsetenv("DASHKV_SIMD");
		r.rc = krn_init(r.err);
		r.level = krn_get()->level;
		_exit(write(fd[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
	}
	close(fd[1]);
	ssize_t got = read(fd[0], &r, sizeof(r));
	int status;
	close(fd[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	expect(got == (ssize_t)sizeof(r) && WIFEXITED(status) &&
	       WEXITSTATUS(status) == 0, "child for DASHKV_SIMD=%s failed",
	       val ? val : "(unset)");
	return r;
}

START_TEST(test_simd_env)
{
	int best = KRN_SCALAR;
	for (int l = KRN_SCALAR; l < KRN_NLEVELS; l++)
		if (krn_get_level((enum krn_level)l))
			best = l;

	struct init_result r = init_in_child(NULL);
	ck_assert_int_eq(r.rc, 0);
	ck_assert_int_eq(r.level, best);
	r = init_in_child("");
	ck_assert_int_eq(r.rc, 0);
	ck_assert_int_eq(r.level, best);

	for (int l = KRN_SCALAR; l < KRN_NLEVELS; l++) {
		r = init_in_child(level_name[l]);
		if (krn_get_level((enum krn_level)l)) {
			expect(r.rc == 0 && r.level == l,
			       "DASHKV_SIMD=%s: rc %d level %d", level_name[l], r.rc, r.level);
		} else {
			expect(r.rc == -1 && r.err[0],
			       "DASHKV_SIMD=%s on a CPU without it: rc %d", level_name[l], r.rc);
			printf("DASHKV_SIMD=%s: refused as expected: %s\n", level_name[l], r.err);
		}
	}
	r = init_in_child("bogus");
	expect(r.rc == -1 && strstr(r.err, "bogus"), "DASHKV_SIMD=bogus: rc %d '%s'",
	       r.rc, r.err);
	printf("DASHKV_SIMD=bogus: refused as expected: %s\n", r.err);
	fflush(stdout);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

static TCase *variant_case(const char *name, const TTest *t, int first, double timeout)
{
	TCase *tc = tcase_create(name);
	tcase_set_timeout(tc, timeout);
	tcase_add_loop_test(tc, t, first, KRN_NLEVELS);
	return tc;
}

static Suite *kernels_suite(void)
{
	Suite *s = suite_create("kernels");
	TCase *tc = tcase_create("reference");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_ref_f16);
	tcase_add_test(tc, test_ref_f32_to_f16);
	tcase_add_test(tc, test_ref_bf16);
	tcase_add_test(tc, test_ref_select);
	tcase_add_test(tc, test_sketch_put);
	tcase_add_test(tc, test_simd_env);
	suite_add_tcase(s, tc);

	/* against double-precision oracles: the reference too */
	suite_add_tcase(s, variant_case("dot", test_dot, KRN_SCALAR, 120));
	suite_add_tcase(s, variant_case("gdot", test_gdot, KRN_SCALAR, 60));
	suite_add_tcase(s, variant_case("sketch", test_sketch, KRN_SCALAR, 60));
	suite_add_tcase(s, variant_case("encode", test_encode, KRN_SCALAR, 120));
	suite_add_tcase(s, variant_case("attend", test_attend, KRN_SCALAR, 300));
	suite_add_tcase(s, variant_case("attend_logits", test_attend_logits, KRN_SCALAR, 120));
	suite_add_tcase(s, variant_case("merge", test_merge, KRN_SCALAR, 60));
	suite_add_tcase(s, variant_case("merge_halves", test_merge_halves, KRN_SCALAR, 120));
	suite_add_tcase(s, variant_case("exp_sum", test_exp_sum, KRN_SCALAR, 60));
	suite_add_tcase(s, variant_case("exp_one", test_exp_one, KRN_SCALAR, 120));

	/* bit for bit against the reference: the SIMD levels */
	suite_add_tcase(s, variant_case("hamming", test_hamming, KRN_AVX2, 60));
	suite_add_tcase(s, variant_case("max", test_max, KRN_AVX2, 60));
	suite_add_tcase(s, variant_case("all_finite", test_all_finite, KRN_AVX2, 60));
	suite_add_tcase(s, variant_case("conv_f16", test_conv_f16, KRN_AVX2, 120));
	suite_add_tcase(s, variant_case("conv_bf16", test_conv_bf16, KRN_AVX2, 120));
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(kernels_suite());
	int failed, any = 0;

	printf("kernel levels:");
	for (int l = KRN_SCALAR; l < KRN_NLEVELS; l++) {
		int ok = krn_get_level((enum krn_level)l) != NULL;
		printf(" %s=%s", level_name[l], ok ? "tested" : "skipped");
		any |= ok && l > KRN_SCALAR;
	}
	printf("\n");
	if (!any)
		printf("no SIMD level runs here (CPU level %s): only the reference is "
		       "tested against the oracles\n", level_name[krn_cpu_level()]);
	fflush(stdout);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
