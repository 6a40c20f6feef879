/*
 * avx512.c - AVX-512 F/BW/VL/DQ/VPOPCNTDQ/BITALG kernels (+ FMA, F16C).
 *
 * Built with AVX512_CFLAGS into its own library; dispatch.c only hands
 * this table out on a CPU whose OS saves the ZMM and opmask state.  The
 * structure follows avx2.c kernel for kernel; what changes is the width
 * (16 floats), VPOPCNTQ for the Hamming distances and opmasks for the
 * last partial vector, so that every dim that is a multiple of 8 runs
 * the same loop.
 */
#include <math.h>
#include <string.h>

#include "config.h"
#include "krn.h"
#include "cpu_common.h"
#include "simd_common.h"
#include "variants.h"

#define DOT_KB 32
#define DOT_MAX_DIM 256u /* the largest head_dim of the SIMD dot */
#define ATT_QG 8

static inline __m512 loadz(__mmask16 m, const float *p)
{
	return _mm512_maskz_loadu_ps(m, p);
}

static inline __m512i load64(const uint64_t *p)
{
	return _mm512_loadu_si512((const void *)p);
}

/* the mask of a 16-float step of dim (dim % 8 == 0): whole, or its low half */
static inline __mmask16 step_mask(uint32_t d, uint32_t dim)
{
	return d + 16 <= dim ? (__mmask16)0xffff : (__mmask16)0x00ff;
}

/* ---- Hamming distances, 16 codes at a time ---------------------------- */

KRN_INLINE __m512i qvec(const uint64_t *q, const uint32_t words)
{
	if (words == 1)
		return _mm512_set1_epi64((long long)q[0]);
	if (words == 2)
		return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q));
	return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)q));
}

KRN_INLINE __m512i pcnt(const uint64_t *c, __m512i q)
{
	return _mm512_popcnt_epi64(_mm512_xor_si512(load64(c), q));
}

/* Sums of adjacent 64-bit lanes of a then b: [a0+a1, a2+a3, ..., b6+b7]. */
KRN_INLINE __m512i sum_adjacent(__m512i a, __m512i b)
{
	const __m512i ev = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
	const __m512i od = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);

	return _mm512_add_epi64(_mm512_permutex2var_epi64(a, ev, b),
				_mm512_permutex2var_epi64(a, od, b));
}

/* Distances of 8 codes at c, as 8 int32. */
KRN_INLINE __m256i ham8(const uint64_t *c, __m512i q, const uint32_t words)
{
	__m512i s;

	if (words == 1) {
		s = pcnt(c, q);
	} else if (words == 2) {
		s = sum_adjacent(pcnt(c, q), pcnt(c + 8, q));
	} else {
		__m512i s0 = sum_adjacent(pcnt(c, q), pcnt(c + 8, q));
		__m512i s1 = sum_adjacent(pcnt(c + 16, q), pcnt(c + 24, q));
		s = sum_adjacent(s0, s1);
	}
	return _mm512_cvtepi64_epi32(s);
}

KRN_INLINE __m512i ham16(const uint64_t *c, __m512i q, const uint32_t words)
{
	__m256i lo = ham8(c, q, words), hi = ham8(c + 8 * words, q, words);

	return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

KRN_INLINE void hamming_w(const uint32_t words, const uint64_t *q,
			  const uint64_t *codes, uint32_t n, uint16_t *dist)
{
	__m512i qv = qvec(q, words);
	uint32_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i h = ham16(codes + (size_t)i * words, qv, words);
		_mm256_storeu_si256((__m256i *)(dist + i), _mm512_cvtepi32_epi16(h));
	}
	for (; i < n; i++)
		dist[i] = (uint16_t)krn_ham1(q, codes + (size_t)i * words, words);
}

static void avx512_hamming(const uint64_t *q, const uint64_t *codes,
			   uint32_t words, uint32_t n, uint16_t *dist)
{
	switch (words) {
	case 1:
		hamming_w(1, q, codes, n, dist);
		break;
	case 2:
		hamming_w(2, q, codes, n, dist);
		break;
	case 4:
		hamming_w(4, q, codes, n, dist);
		break;
	default:
		for (uint32_t i = 0; i < n; i++)
			dist[i] = (uint16_t)krn_ham1(q, codes + (size_t)i * words, words);
	}
}

/* ---- dot products ----------------------------------------------------- */

/* [q0.k0 .. q0.k3, q1.k0 .. q1.k3]; eight FMA chains, as in avx2.c */
KRN_INLINE __m256 dot_2x4(const float *q0, const float *q1, const float *k,
			  size_t ld, uint32_t dim)
{
	__m512 a[8];

KRN_UNROLL
	for (int r = 0; r < 8; r++)
		a[r] = _mm512_setzero_ps();
	for (uint32_t d = 0; d < dim; d += 16) {
		__mmask16 m = step_mask(d, dim);
		__m512 x0 = loadz(m, q0 + d), x1 = loadz(m, q1 + d);
KRN_UNROLL
		for (int r = 0; r < 4; r++) {
			__m512 y = loadz(m, k + r * ld + d);
			a[r] = _mm512_fmadd_ps(x0, y, a[r]);
			a[r + 4] = _mm512_fmadd_ps(x1, y, a[r + 4]);
		}
	}
	return krn_hsum8x8(krn_fold512(a[0]), krn_fold512(a[1]),
			   krn_fold512(a[2]), krn_fold512(a[3]),
			   krn_fold512(a[4]), krn_fold512(a[5]),
			   krn_fold512(a[6]), krn_fold512(a[7]));
}

/* [q.k0 .. q.k7] */
KRN_INLINE __m256 dot_1x8(const float *q, const float *k, size_t ld,
			  uint32_t dim)
{
	__m512 a[8];

KRN_UNROLL
	for (int r = 0; r < 8; r++)
		a[r] = _mm512_setzero_ps();
	for (uint32_t d = 0; d < dim; d += 16) {
		__mmask16 m = step_mask(d, dim);
		__m512 x = loadz(m, q + d);
KRN_UNROLL
		for (int r = 0; r < 8; r++)
			a[r] = _mm512_fmadd_ps(x, loadz(m, k + r * ld + d), a[r]);
	}
	return krn_hsum8x8(krn_fold512(a[0]), krn_fold512(a[1]),
			   krn_fold512(a[2]), krn_fold512(a[3]),
			   krn_fold512(a[4]), krn_fold512(a[5]),
			   krn_fold512(a[6]), krn_fold512(a[7]));
}

#include "dot_rows.h"

static void dot_blocks(const float *q, uint32_t nq, const float *k, size_t ld_k,
		       uint32_t n, uint32_t dim, float *out, size_t ld_out)
{
	for (uint32_t i0 = 0; i0 < n; i0 += DOT_KB) {
		uint32_t nb = n - i0 < DOT_KB ? n - i0 : DOT_KB;
		const float *kb = k + i0 * ld_k;
		uint32_t j = 0;

		for (; j + 2 <= nq; j += 2)
			dot_rows2(q + (size_t)j * dim, q + (size_t)(j + 1) * dim,
				  kb, ld_k, nb, dim, out + j * ld_out + i0,
				  out + (j + 1) * ld_out + i0);
		if (j < nq)
			dot_rows1(q + (size_t)j * dim, kb, ld_k, nb, dim,
				  out + j * ld_out + i0);
	}
}

static void avx512_dot(const float *q, uint32_t nq, const float *k,
		       size_t ld_k, uint32_t n, uint32_t dim, float *out,
		       size_t ld_out)
{
	if (dim % 8 || dim > DOT_MAX_DIM) {
		krn_ops_scalar.dot(q, nq, k, ld_k, n, dim, out, ld_out);
		return;
	}
	dot_blocks(q, nq, k, ld_k, n, dim, out, ld_out);
}

/* ---- encode ----------------------------------------------------------- */

static uint32_t gt0(__m256 r)
{
	return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(r, _mm256_setzero_ps(),
							  _CMP_GT_OQ));
}

static void avx512_encode(const float *P, uint32_t bits, uint32_t dim,
			  const float *x, size_t ld_x, uint32_t n,
			  uint64_t *codes)
{
	uint32_t words = bits / 64;
	uint32_t i = 0;

	if (dim % 8 || bits % 64) {
		krn_ops_scalar.encode(P, bits, dim, x, ld_x, n, codes);
		return;
	}
	for (; i + 2 <= n; i += 2) {
		const float *x0 = x + i * ld_x, *x1 = x0 + ld_x;
		uint64_t *c0 = codes + (size_t)i * words, *c1 = c0 + words;
		for (uint32_t w = 0; w < words; w++) {
			uint64_t b0 = 0, b1 = 0;
			for (uint32_t j = 0; j < 64; j += 4) {
				const float *p = P + (size_t)(w * 64 + j) * dim;
				uint32_t m = gt0(dot_2x4(x0, x1, p, dim, dim));
				b0 |= (uint64_t)(m & 15) << j;
				b1 |= (uint64_t)(m >> 4) << j;
			}
			c0[w] = b0;
			c1[w] = b1;
		}
	}
	if (i < n) {
		const float *x0 = x + i * ld_x;
		uint64_t *c0 = codes + (size_t)i * words;
		for (uint32_t w = 0; w < words; w++) {
			uint64_t b0 = 0;
			for (uint32_t j = 0; j < 64; j += 8) {
				const float *p = P + (size_t)(w * 64 + j) * dim;
				b0 |= (uint64_t)gt0(dot_1x8(x0, p, dim, dim)) << j;
			}
			c0[w] = b0;
		}
	}
}

/* ---- attention -------------------------------------------------------- */

/* As softmax_row in avx2.c, 16 lanes; l is padded to a multiple of 16. */
static int softmax_row(const float *src, float *l, uint32_t n, float scale,
		       struct krn_part *st, float *c)
{
	const __m512 ninf = _mm512_set1_ps(-INFINITY);
	__m512 sc = _mm512_set1_ps(scale), mv = ninf;
	uint32_t i = 0;

	for (; i < n; i += 16) {
		__mmask16 k = krn_mask16((int64_t)n - i);
		__m512 x = _mm512_mask_mul_ps(ninf, k, sc, loadz(k, src + i));
		_mm512_storeu_ps(l + i, x);
		mv = _mm512_max_ps(x, mv); /* a NaN logit is skipped, as in ref */
	}

	float bm = _mm512_reduce_max_ps(mv);
	if (bm == -INFINITY)
		return 0;
	float m = st->m > bm ? st->m : bm;
	__m512 mm = _mm512_set1_ps(m), s = _mm512_setzero_ps();
	for (i = 0; i < n; i += 16) {
		__m512 p = krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(l + i), mm));
		_mm512_storeu_ps(l + i, p);
		s = _mm512_add_ps(s, p);
	}
	*c = expf(st->m - m);
	st->s = st->s * *c + _mm512_reduce_add_ps(s);
	st->m = m;
	return 1;
}

/*
 * acc[q][d..d+16W) = acc * c[q] + sum_i p[q][i] v[i][d..d+16W) for QN
 * queries; r floats of dim are left from d, and the lanes past them are
 * masked off.  Each v load serves every query; QN * W accumulators.
 */
KRN_INLINE void pv_tile(const int QN, const int W, float *const *p,
			float *const *acc, const float *c, const float *v,
			size_t ld, uint32_t n, uint32_t d, uint32_t r)
{
	__m512 a[4][8];
	__mmask16 mk[8];

	KRN_UNROLL
	for (int w = 0; w < W; w++)
		mk[w] = krn_mask16((int64_t)r - 16 * w);
	KRN_UNROLL
	for (int q = 0; q < QN; q++)
		KRN_UNROLL
		for (int w = 0; w < W; w++)
			a[q][w] = _mm512_setzero_ps();
	for (uint32_t i = 0; i < n; i++) {
		const float *vr = v + i * ld + d;
		KRN_UNROLL
		for (int w = 0; w < W; w++) {
			__m512 x = loadz(mk[w], vr + 16 * w);
			KRN_UNROLL
			for (int q = 0; q < QN; q++)
				a[q][w] = _mm512_fmadd_ps(_mm512_set1_ps(p[q][i]), x, a[q][w]);
		}
	}
	KRN_UNROLL
	for (int q = 0; q < QN; q++) {
		__m512 cq = _mm512_set1_ps(c[q]);
		KRN_UNROLL
		for (int w = 0; w < W; w++) {
			float *o = acc[q] + d + 16 * w;
			_mm512_mask_storeu_ps(o, mk[w],
					      _mm512_fmadd_ps(loadz(mk[w], o), cq, a[q][w]));
		}
	}
}

static void pv_tile_n(uint32_t qn, uint32_t w, float *const *p,
		      float *const *acc, const float *c, const float *v,
		      size_t ld, uint32_t n, uint32_t d, uint32_t r)
{
	switch (qn * 8 + w) {
	case 8 + 1: pv_tile(1, 1, p, acc, c, v, ld, n, d, r); break;
	case 8 + 2: pv_tile(1, 2, p, acc, c, v, ld, n, d, r); break;
	case 8 + 3: pv_tile(1, 3, p, acc, c, v, ld, n, d, r); break;
	case 8 + 4: pv_tile(1, 4, p, acc, c, v, ld, n, d, r); break;
	case 8 + 5: pv_tile(1, 5, p, acc, c, v, ld, n, d, r); break;
	case 8 + 6: pv_tile(1, 6, p, acc, c, v, ld, n, d, r); break;
	case 8 + 7: pv_tile(1, 7, p, acc, c, v, ld, n, d, r); break;
	case 8 + 8: pv_tile(1, 8, p, acc, c, v, ld, n, d, r); break;
	case 16 + 1: pv_tile(2, 1, p, acc, c, v, ld, n, d, r); break;
	case 16 + 2: pv_tile(2, 2, p, acc, c, v, ld, n, d, r); break;
	case 16 + 3: pv_tile(2, 3, p, acc, c, v, ld, n, d, r); break;
	case 16 + 4: pv_tile(2, 4, p, acc, c, v, ld, n, d, r); break;
	case 24 + 1: pv_tile(3, 1, p, acc, c, v, ld, n, d, r); break;
	case 24 + 2: pv_tile(3, 2, p, acc, c, v, ld, n, d, r); break;
	case 32 + 1: pv_tile(4, 1, p, acc, c, v, ld, n, d, r); break;
	default: pv_tile(4, 2, p, acc, c, v, ld, n, d, r); break;
	}
}

/*
 * One group of qn <= 4 queries over all of dim, in chunks as wide as 8
 * accumulators allow (128 floats for one query), the last one narrower
 * and masked.
 */
static void pv_group(uint32_t qn, float *const *p, float *const *acc,
		     const float *c, const float *v, size_t ld, uint32_t n,
		     uint32_t dim)
{
	uint32_t wmax = qn == 1 ? 8 : qn == 2 ? 4 : 2;

	for (uint32_t d = 0; d < dim; d += 16 * wmax) {
		uint32_t r = dim - d, w = (r + 15) / 16;
		pv_tile_n(qn, w < wmax ? w : wmax, p, acc, c, v, ld, n, d, r);
	}
}

static void pv(float *const *p, float *const *acc, const float *c, uint32_t g,
	       const float *v, size_t ld, uint32_t n, uint32_t dim)
{
	for (uint32_t j = 0; j < g; j += 4) {
		uint32_t qn = g - j < 4 ? g - j : 4;
		pv_group(qn, p + j, acc + j, c + j, v, ld, n, dim);
	}
}

static void fold(float (*L)[KRN_BLOCK], uint32_t g, const float *v, size_t ld,
		 uint32_t n, uint32_t dim, float scale, struct krn_part *st)
{
	float *p[ATT_QG], *acc[ATT_QG], c[ATT_QG];
	uint32_t live = 0;

	for (uint32_t j = 0; j < g; j++) {
		if (!softmax_row(L[j], L[j], n, scale, &st[j], &c[live]))
			continue;
		p[live] = L[j];
		acc[live] = st[j].acc;
		live++;
	}
	pv(p, acc, c, live, v, ld, n, dim);
}

static void avx512_attend(const float *q, uint32_t nq, const float *k,
			  const float *v, size_t ld, uint32_t n, uint32_t dim,
			  float scale, struct krn_part *st)
{
	float L[ATT_QG][KRN_BLOCK];

	if (dim % 8 || n > KRN_BLOCK) {
		krn_ops_scalar.attend(q, nq, k, v, ld, n, dim, scale, st);
		return;
	}
	for (uint32_t j = 0; j < nq; j += ATT_QG) {
		uint32_t g = nq - j < ATT_QG ? nq - j : ATT_QG;
		dot_blocks(q + (size_t)j * dim, g, k, ld, n, dim, L[0], KRN_BLOCK);
		fold(L, g, v, ld, n, dim, scale, st + j);
	}
}

static void avx512_attend_logits(const float *logit, const float *v, size_t ld,
				 uint32_t n, uint32_t dim, struct krn_part *st)
{
	float l[KRN_BLOCK], c;
	float *p = l, *acc = st->acc;

	if (dim % 8 || n > KRN_BLOCK) {
		krn_ops_scalar.attend_logits(logit, v, ld, n, dim, st);
		return;
	}
	if (softmax_row(logit, l, n, 1.0f, st, &c))
		pv(&p, &acc, &c, 1, v, ld, n, dim);
}

static void avx512_merge(struct krn_part *a, const struct krn_part *b,
			 uint32_t dim)
{
	if (b->m == -INFINITY)
		return;
	float m = a->m > b->m ? a->m : b->m;
	float ca = expf(a->m - m), cb = expf(b->m - m);
	__m512 va = _mm512_set1_ps(ca), vb = _mm512_set1_ps(cb);
	uint32_t d = 0;

	a->s = a->s * ca + b->s * cb;
	for (; d + 16 <= dim; d += 16) {
		__m512 x = _mm512_mul_ps(_mm512_loadu_ps(b->acc + d), vb);
		_mm512_storeu_ps(a->acc + d,
				 _mm512_fmadd_ps(_mm512_loadu_ps(a->acc + d), va, x));
	}
	for (; d < dim; d++)
		a->acc[d] = a->acc[d] * ca + b->acc[d] * cb;
	a->m = m;
}

/* The tail goes through the vector exp too, masked, so n = 1 tests it. */
static float avx512_exp_sum(const float *x, uint32_t n, float m)
{
	__m512 mv = _mm512_set1_ps(m);
	__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	uint32_t i = 0;

	for (; i + 64 <= n; i += 64) {
		s0 = _mm512_add_ps(s0, krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv)));
		s1 = _mm512_add_ps(s1, krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), mv)));
		s2 = _mm512_add_ps(s2, krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 32), mv)));
		s3 = _mm512_add_ps(s3, krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 48), mv)));
	}
	for (; i + 16 <= n; i += 16)
		s0 = _mm512_add_ps(s0, krn_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv)));
	if (i < n) {
		__mmask16 k = krn_mask16((int64_t)n - i);
		__m512 e = krn_exp16(_mm512_sub_ps(loadz(k, x + i), mv));
		s1 = _mm512_mask_add_ps(s1, k, s1, e);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1),
						  _mm512_add_ps(s2, s3)));
}

static float avx512_max(const float *x, uint32_t n)
{
	__m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
	uint32_t i = 0;

	/* max(x, m) returns m when x is NaN: NaNs are skipped, as in ref */
	for (; i + 64 <= n; i += 64) {
		m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
		m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
		m2 = _mm512_max_ps(_mm512_loadu_ps(x + i + 32), m2);
		m3 = _mm512_max_ps(_mm512_loadu_ps(x + i + 48), m3);
	}
	for (; i + 16 <= n; i += 16)
		m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
	float m = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1),
						     _mm512_max_ps(m2, m3)));
	for (; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return krn_max_fix_zero(x, n, m);
}

static int avx512_all_finite(const float *x, size_t n)
{
	const __m512i e = _mm512_set1_epi32(0x7f800000);
	size_t i = 0;

	for (; i + 64 <= n; i += 64) {
		__mmask16 b = 0;
		for (int r = 0; r < 4; r++) {
			__m512i u = _mm512_loadu_si512((const void *)(x + i + 16 * r));
			b |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(u, e), e);
		}
		if (b)
			return 0;
	}
	for (; i < n; i++)
		if ((krn_f32_bits(x[i]) & 0x7f800000) == 0x7f800000)
			return 0;
	return 1;
}

/* ---- conversions ------------------------------------------------------ */

/*
 * Inf/NaN lanes are redone with the reference's bit formula whatever the
 * hardware does with NaN payloads (F16C quiets signalling NaNs).
 */
KRN_INLINE __m512 f16x16(__m256i h)
{
	const __m256i e = _mm256_set1_epi16(0x7c00);
	__m512 f = _mm512_cvtph_ps(h);
	__mmask16 sp = _mm256_cmpeq_epi16_mask(_mm256_and_si256(h, e), e);

	if (!sp)
		return f;
	__m512i h32 = _mm512_cvtepu16_epi32(h);
	__m512i sign = _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x8000)), 16);
	__m512i man = _mm512_slli_epi32(_mm512_and_si512(h32, _mm512_set1_epi32(0x3ff)), 13);
	__m512i fix = _mm512_or_si512(_mm512_or_si512(sign, man),
				      _mm512_set1_epi32(0x7f800000));
	return _mm512_mask_mov_ps(f, sp, _mm512_castsi512_ps(fix));
}

static void avx512_f16_to_f32(const uint16_t *in, float *out, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(out + i,
				 f16x16(_mm256_loadu_si256((const __m256i *)(in + i))));
	for (; i < n; i++)
		out[i] = krn_f16_to_f32_1(in[i]);
}

/* Finite values: the hardware's round to nearest even.  NaN lanes: ref's formula. */
KRN_INLINE __m256i f32x16_to_f16(__m512 x)
{
	__m256i r = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);

	if (!nan)
		return r;
	__m512i u = _mm512_castps_si512(x);
	__m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000));
	__m512i man = _mm512_and_si512(_mm512_srli_epi32(u, 13), _mm512_set1_epi32(0x3ff));
	__m512i fix = _mm512_or_si512(_mm512_or_si512(sign, man), _mm512_set1_epi32(0x7e00));
	return _mm256_mask_mov_epi16(r, nan, _mm512_cvtepi32_epi16(fix));
}

static void avx512_f32_to_f16(const float *in, uint16_t *out, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(out + i),
				    f32x16_to_f16(_mm512_loadu_ps(in + i)));
	for (; i < n; i++)
		out[i] = krn_f32_to_f16_1(in[i]);
}

static void avx512_bf16_to_f32(const uint16_t *in, float *out, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(in + i)));
		_mm512_storeu_si512((void *)(out + i), _mm512_slli_epi32(h, 16));
	}
	for (; i < n; i++)
		out[i] = krn_bf16_to_f32_1(in[i]);
}

/* The reference's integer rounding, 16 lanes at a time. */
KRN_INLINE __m256i bf16x16(__m512 f)
{
	__m512i u = _mm512_castps_si512(f);
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
	__m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
	__m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
	__mmask16 nan = _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(0x7f800000));
	__m512i qn = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
	r = _mm512_mask_mov_epi32(_mm512_srli_epi32(r, 16), nan, qn);
	return _mm512_cvtepi32_epi16(r);
}

static void avx512_f32_to_bf16(const float *in, uint16_t *out, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16)
		_mm256_storeu_si256((__m256i *)(out + i), bf16x16(_mm512_loadu_ps(in + i)));
	for (; i < n; i++)
		out[i] = krn_f32_to_bf16_1(in[i]);
}

/* ---- scattered rows -------------------------------------------------- */

/* Sixteen elements of a stored row from d as f32, lanes outside m zero. */
KRN_INLINE __m512 row16(const void *row, const enum krn_elt elt, uint32_t d, __mmask16 m)
{
	const uint16_t *h = (const uint16_t *)row + d;

	if (elt == KRN_F32)
		return loadz(m, (const float *)row + d);
	__m256i x = _mm256_maskz_loadu_epi16(m, h);
	if (elt == KRN_F16)
		return _mm512_cvtph_ps(x);
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

/*
 * Rows r0 and r1 against nj <= 4 queries (nj a constant after inlining):
 * out lanes [q0.r0 .. q3.r0, q0.r1 .. q3.r1], times scale.  Each product
 * is one FMA chain over d, folded and summed as in dot_2x4.
 */
KRN_INLINE __m256 gdot_pair(const float *q, const uint32_t nj, uint32_t dim, const void *r0,
			    const void *r1, const enum krn_elt elt, __m256 scale)
{
	__m512 a[8];

	KRN_UNROLL
	for (int i = 0; i < 8; i++)
		a[i] = _mm512_setzero_ps();
	for (uint32_t d = 0; d < dim; d += 16) {
		__mmask16 m = step_mask(d, dim);
		__m512 y0 = row16(r0, elt, d, m), y1 = row16(r1, elt, d, m);
		KRN_UNROLL
		for (uint32_t j = 0; j < nj; j++) {
			__m512 x = loadz(m, q + (size_t)j * dim + d);
			a[j] = _mm512_fmadd_ps(x, y0, a[j]);
			a[4 + j] = _mm512_fmadd_ps(x, y1, a[4 + j]);
		}
	}
	return _mm256_mul_ps(krn_hsum8x8(krn_fold512(a[0]), krn_fold512(a[1]),
					 krn_fold512(a[2]), krn_fold512(a[3]),
					 krn_fold512(a[4]), krn_fold512(a[5]),
					 krn_fold512(a[6]), krn_fold512(a[7])),
			     scale);
}

#include "gdot_rows.h"

static void avx512_gdot(const float *q, uint32_t nq, const void *const *rows, uint32_t n,
			uint32_t n_more, enum krn_elt elt, uint32_t dim, float scale,
			float *out, size_t ld_out)
{
	gdot_all(&krn_ops_avx512, q, nq, rows, n, n_more, elt, dim, scale, out, ld_out);
}

const struct krn_ops krn_ops_avx512 = {
	.name = "avx512",
	.level = KRN_AVX512,
	.encode = avx512_encode,
	.hamming = avx512_hamming,
	.scan = krn_avx512_scan,         /* search.c */
	.estimate = krn_avx512_estimate, /* search.c */
	.wsum = krn_avx512_wsum,         /* search.c */
	.dot = avx512_dot,
	.gdot = avx512_gdot,
	.sketch = krn_avx512_sketch, /* sketch.c */
	.attend = avx512_attend,
	.attend_logits = avx512_attend_logits,
	.merge = avx512_merge,
	.exp_sum = avx512_exp_sum,
	.max = avx512_max,
	.f16_to_f32 = avx512_f16_to_f32,
	.f32_to_f16 = avx512_f32_to_f16,
	.bf16_to_f32 = avx512_bf16_to_f32,
	.f32_to_bf16 = avx512_f32_to_bf16,
	.all_finite = avx512_all_finite,
};
