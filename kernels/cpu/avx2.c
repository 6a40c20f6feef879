/*
 * avx2.c - AVX2 + FMA + F16C + POPCNT kernels.
 *
 * Built with AVX2_CFLAGS into its own library; dispatch.c only hands this
 * table out on a CPU (and OS) that runs it.  Each kernel does what the
 * scalar reference in ref.c does; tests/unit/check_kernels.c holds every one
 * to the reference, bit for bit where krn.h asks for it.
 *
 * Shapes the hot paths assume: dim a multiple of 8 (head_dim is) and
 * n <= KRN_BLOCK for attend; anything else goes to the reference.
 */
#include <math.h>
#include <string.h>

#include "krn.h"
#include "cpu_common.h"
#include "simd_common.h"
#include "variants.h"

/* The largest head_dim of the SIMD dot (a padded group lives on the stack). */
#define DOT_MAX_DIM 256u

/* Keys per block in dot: a block stays in L1 while every query pair reads it. */
#define DOT_KB 32
/* Queries whose logits attend keeps at once (8 rows of KRN_BLOCK floats). */
#define ATT_QG 8

static inline __m256 loadf(const float *p)
{
	return _mm256_loadu_ps(p);
}

static inline __m256i load64(const uint64_t *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

/* first r lanes all-ones, r in [0, 8] */
static inline __m256i tail_mask(uint32_t r)
{
	static const int32_t m[16] = { -1, -1, -1, -1, -1, -1, -1, -1,
				       0, 0, 0, 0, 0, 0, 0, 0 };
	return _mm256_loadu_si256((const __m256i *)(m + 8 - r));
}

/* ---- Hamming distances, 8 codes at a time ---------------------------- */

KRN_INLINE __m256i sad(__m256i b)
{
	return _mm256_sad_epu8(b, _mm256_setzero_si256());
}

/* The query code repeated to fill a vector as the codes do. */
KRN_INLINE __m256i qvec(const uint64_t *q, const uint32_t words)
{
	if (words == 1)
		return _mm256_set1_epi64x((long long)q[0]);
	if (words == 2)
		return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
	return load64(q);
}

KRN_INLINE __m256i cnt_bytes(const uint64_t *c, __m256i q)
{
	return krn_popcnt_bytes(_mm256_xor_si256(load64(c), q));
}

/*
 * Byte counts of 16-byte tokens, two per vector: x0 = [t0 | t1],
 * x1 = [t2 | t3].  The unpacks pair each token's first 8 bytes with its
 * last 8; their sum is one 8-byte group per token, which one sad adds
 * up: [t0 t2 t1 t3] in 64-bit lanes.
 */
KRN_INLINE __m256i sum16(__m256i x0, __m256i x1)
{
	return sad(_mm256_add_epi8(_mm256_unpacklo_epi64(x0, x1),
				   _mm256_unpackhi_epi64(x0, x1)));
}

/* 64-bit counts x = [a0 a1 a2 a3], y = [b0 b1 b2 b3] -> 32-bit lanes, order by idx */
KRN_INLINE __m256i pack_counts(__m256i x, __m256i y, __m256i idx)
{
	/* [a0 b0 a1 b1 a2 b2 a3 b3] */
	return _mm256_permutevar8x32_epi32(_mm256_or_si256(x, _mm256_slli_epi64(y, 32)), idx);
}

KRN_INLINE __m256i ham8_w1(const uint64_t *c, __m256i q)
{
	__m256i x = sad(cnt_bytes(c, q));      /* t0 t1 t2 t3 */
	__m256i y = sad(cnt_bytes(c + 4, q));  /* t4 t5 t6 t7 */
	return pack_counts(x, y, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
}

/* x = [t0 t2 t1 t3], y = [t4 t6 t5 t7] -> t0..t7 */
KRN_INLINE __m256i pack_sum16(__m256i x, __m256i y)
{
	return pack_counts(x, y, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7));
}

KRN_INLINE __m256i ham8_w2(const uint64_t *c, __m256i q)
{
	return pack_sum16(sum16(cnt_bytes(c, q), cnt_bytes(c + 4, q)),
			  sum16(cnt_bytes(c + 8, q), cnt_bytes(c + 12, q)));
}

/* Two 32-byte tokens' byte counts folded to 16 bytes each: [t0 | t1]. */
KRN_INLINE __m256i fold_w4(const uint64_t *c, __m256i q)
{
	__m256i b0 = cnt_bytes(c, q), b1 = cnt_bytes(c + 4, q);
	return _mm256_add_epi8(_mm256_permute2x128_si256(b0, b1, 0x20),
			       _mm256_permute2x128_si256(b0, b1, 0x31));
}

KRN_INLINE __m256i ham8_w4(const uint64_t *c, __m256i q)
{
	return pack_sum16(sum16(fold_w4(c, q), fold_w4(c + 8, q)),
			  sum16(fold_w4(c + 16, q), fold_w4(c + 24, q)));
}

/* Distances of the 8 codes at c to the query vector q, as 8 int32. */
KRN_INLINE __m256i ham8(const uint64_t *c, __m256i q, const uint32_t words)
{
	if (words == 1)
		return ham8_w1(c, q);
	if (words == 2)
		return ham8_w2(c, q);
	return ham8_w4(c, q);
}

KRN_INLINE void hamming_w(const uint32_t words, const uint64_t *q,
			  const uint64_t *codes, uint32_t n, uint16_t *dist)
{
	__m256i qv = qvec(q, words);
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256i h = ham8(codes + (size_t)i * words, qv, words);
		__m128i p = _mm_packus_epi32(_mm256_castsi256_si128(h),
					     _mm256_extracti128_si256(h, 1));
		_mm_storeu_si128((__m128i *)(dist + i), p);
	}
	for (; i < n; i++)
		dist[i] = (uint16_t)krn_ham1(q, codes + (size_t)i * words, words);
}

static void avx2_hamming(const uint64_t *q, const uint64_t *codes,
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

/*
 * [q0.k0 .. q0.k3, q1.k0 .. q1.k3] for the rows k, k+ld, k+2ld, k+3ld:
 * eight independent FMA chains hide the FMA latency, and each key load
 * serves two queries.
 */
KRN_INLINE __m256 dot_2x4(const float *q0, const float *q1, const float *k,
			  size_t ld, uint32_t dim)
{
	const float *k1 = k + ld, *k2 = k1 + ld, *k3 = k2 + ld;
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	__m256 a4 = a0, a5 = a0, a6 = a0, a7 = a0;

	for (uint32_t d = 0; d < dim; d += 8) {
		__m256 x0 = loadf(q0 + d), x1 = loadf(q1 + d), y;
		y = loadf(k + d);
		a0 = _mm256_fmadd_ps(x0, y, a0);
		a4 = _mm256_fmadd_ps(x1, y, a4);
		y = loadf(k1 + d);
		a1 = _mm256_fmadd_ps(x0, y, a1);
		a5 = _mm256_fmadd_ps(x1, y, a5);
		y = loadf(k2 + d);
		a2 = _mm256_fmadd_ps(x0, y, a2);
		a6 = _mm256_fmadd_ps(x1, y, a6);
		y = loadf(k3 + d);
		a3 = _mm256_fmadd_ps(x0, y, a3);
		a7 = _mm256_fmadd_ps(x1, y, a7);
	}
	return krn_hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7);
}

/* [q.k0 .. q.k7] for eight rows ld apart (one query alone). */
KRN_INLINE __m256 dot_1x8(const float *q, const float *k, size_t ld,
			  uint32_t dim)
{
	__m256 a[8];

KRN_UNROLL
	for (int r = 0; r < 8; r++)
		a[r] = _mm256_setzero_ps();
	for (uint32_t d = 0; d < dim; d += 8) {
		__m256 x = loadf(q + d);
KRN_UNROLL
		for (int r = 0; r < 8; r++)
			a[r] = _mm256_fmadd_ps(x, loadf(k + r * ld + d), a[r]);
	}
	return krn_hsum8x8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

#include "dot_rows.h"

/* dim % 8 == 0 */
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

static void avx2_dot(const float *q, uint32_t nq, const float *k, size_t ld_k,
		     uint32_t n, uint32_t dim, float *out, size_t ld_out)
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

/* encode is dot against the rows of P followed by a sign test. */
static void avx2_encode(const float *P, uint32_t bits, uint32_t dim,
			const float *x, size_t ld_x, uint32_t n, uint64_t *codes)
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

/*
 * One query's logits: l[i] = scale * src[i] (src may be l), padded with
 * -INFINITY to a multiple of 8, then turned into weights exp(l - m) where
 * m is the new running max; the state's s and m are updated and the
 * factor for its old acc is left in *c.  Returns 0, touching nothing, when
 * every logit is -INFINITY (as the reference does).
 */
static int softmax_row(const float *src, float *l, uint32_t n, float scale,
		       struct krn_part *st, float *c)
{
	__m256 sc = _mm256_set1_ps(scale), mv = _mm256_set1_ps(-INFINITY);
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m256 x = _mm256_mul_ps(sc, loadf(src + i));
		_mm256_storeu_ps(l + i, x);
		mv = _mm256_max_ps(x, mv); /* a NaN logit is skipped, as in ref */
	}
	if (i < n) {
		__m256i k = tail_mask(n - i);
		__m256 x = _mm256_mul_ps(sc, _mm256_maskload_ps(src + i, k));
		x = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, _mm256_castsi256_ps(k));
		_mm256_storeu_ps(l + i, x);
		mv = _mm256_max_ps(x, mv);
	}

	float bm = krn_hmax8(mv);
	if (bm == -INFINITY)
		return 0;
	float m = st->m > bm ? st->m : bm;
	__m256 mm = _mm256_set1_ps(m), s = _mm256_setzero_ps();
	for (i = 0; i < n; i += 8) {
		__m256 p = krn_exp8(_mm256_sub_ps(loadf(l + i), mm));
		_mm256_storeu_ps(l + i, p);
		s = _mm256_add_ps(s, p);
	}
	*c = expf(st->m - m); /* 0 when the state was empty */
	st->s = st->s * *c + krn_hsum8(s);
	st->m = m;
	return 1;
}

/*
 * acc[q][d..d+8W) = acc * c[q] + sum_i p[q][i] v[i][d..d+8W) for QN
 * queries.  Each v load serves every query; QN * TP * W accumulators
 * (8 where the shape allows) hide the FMA latency, TP > 1 putting
 * successive rows into separate ones.
 */
KRN_INLINE void pv_tile(const int QN, const int TP, const int W,
			float *const *p, float *const *acc, const float *c,
			const float *v, size_t ld, uint32_t n, uint32_t d)
{
	__m256 a[4][4][8];
	uint32_t i = 0;

KRN_UNROLL
	for (int q = 0; q < QN; q++)
KRN_UNROLL
		for (int t = 0; t < TP; t++)
KRN_UNROLL
			for (int w = 0; w < W; w++)
				a[q][t][w] = _mm256_setzero_ps();
	for (; i + TP <= n; i += TP) {
KRN_UNROLL
		for (int t = 0; t < TP; t++) {
			const float *vr = v + (i + t) * ld + d;
KRN_UNROLL
			for (int w = 0; w < W; w++) {
				__m256 x = loadf(vr + 8 * w);
KRN_UNROLL
				for (int q = 0; q < QN; q++)
					a[q][t][w] = _mm256_fmadd_ps(_mm256_set1_ps(p[q][i + t]),
								     x, a[q][t][w]);
			}
		}
	}
	for (; i < n; i++) {
		const float *vr = v + i * ld + d;
KRN_UNROLL
		for (int w = 0; w < W; w++) {
			__m256 x = loadf(vr + 8 * w);
KRN_UNROLL
			for (int q = 0; q < QN; q++)
				a[q][0][w] = _mm256_fmadd_ps(_mm256_set1_ps(p[q][i]),
							     x, a[q][0][w]);
		}
	}
KRN_UNROLL
	for (int q = 0; q < QN; q++) {
		__m256 cq = _mm256_set1_ps(c[q]);
KRN_UNROLL
		for (int w = 0; w < W; w++) {
			__m256 s = a[q][0][w];
KRN_UNROLL
			for (int t = 1; t < TP; t++)
				s = _mm256_add_ps(s, a[q][t][w]);
			float *o = acc[q] + d + 8 * w;
			_mm256_storeu_ps(o, _mm256_fmadd_ps(loadf(o), cq, s));
		}
	}
}

/*
 * One group of qn <= 4 queries over all of dim.  The widest chunk that
 * keeps 8 accumulators is taken first (64 floats for one query): a row's
 * chunk is then a few whole cache lines, read once per chunk, so few
 * passes go over v.  Narrower chunks finish dims such as 96 or 136.
 */
static void pv_group(uint32_t qn, float *const *p, float *const *acc,
		     const float *c, const float *v, size_t ld, uint32_t n,
		     uint32_t dim)
{
	uint32_t d = 0;

	switch (qn) {
	case 1:
		for (; d + 64 <= dim; d += 64)
			pv_tile(1, 1, 8, p, acc, c, v, ld, n, d);
		if (d + 32 <= dim) {
			pv_tile(1, 2, 4, p, acc, c, v, ld, n, d);
			d += 32;
		}
		if (d + 16 <= dim) {
			pv_tile(1, 4, 2, p, acc, c, v, ld, n, d);
			d += 16;
		}
		if (d < dim)
			pv_tile(1, 4, 1, p, acc, c, v, ld, n, d);
		break;
	case 2:
		for (; d + 32 <= dim; d += 32)
			pv_tile(2, 1, 4, p, acc, c, v, ld, n, d);
		if (d + 16 <= dim) {
			pv_tile(2, 2, 2, p, acc, c, v, ld, n, d);
			d += 16;
		}
		if (d < dim)
			pv_tile(2, 2, 1, p, acc, c, v, ld, n, d);
		break;
	case 3:
		for (; d + 16 <= dim; d += 16)
			pv_tile(3, 1, 2, p, acc, c, v, ld, n, d);
		if (d < dim)
			pv_tile(3, 1, 1, p, acc, c, v, ld, n, d);
		break;
	default:
		for (; d + 16 <= dim; d += 16)
			pv_tile(4, 1, 2, p, acc, c, v, ld, n, d);
		if (d < dim)
			pv_tile(4, 1, 1, p, acc, c, v, ld, n, d);
	}
}

/* Weighted sum of the rows of v into g accumulators, 4 queries at a time. */
static void pv(float *const *p, float *const *acc, const float *c, uint32_t g,
	       const float *v, size_t ld, uint32_t n, uint32_t dim)
{
	for (uint32_t j = 0; j < g; j += 4) {
		uint32_t qn = g - j < 4 ? g - j : 4;
		pv_group(qn, p + j, acc + j, c + j, v, ld, n, dim);
	}
}

/* Softmax the g rows of logits in L and fold them into st[0..g). */
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

static void avx2_attend(const float *q, uint32_t nq, const float *k,
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

static void avx2_attend_logits(const float *logit, const float *v, size_t ld,
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

static void avx2_merge(struct krn_part *a, const struct krn_part *b,
		       uint32_t dim)
{
	if (b->m == -INFINITY)
		return;
	float m = a->m > b->m ? a->m : b->m;
	float ca = expf(a->m - m), cb = expf(b->m - m);
	__m256 va = _mm256_set1_ps(ca), vb = _mm256_set1_ps(cb);
	uint32_t d = 0;

	a->s = a->s * ca + b->s * cb;
	for (; d + 8 <= dim; d += 8) {
		__m256 x = _mm256_mul_ps(loadf(b->acc + d), vb);
		_mm256_storeu_ps(a->acc + d, _mm256_fmadd_ps(loadf(a->acc + d), va, x));
	}
	for (; d < dim; d++)
		a->acc[d] = a->acc[d] * ca + b->acc[d] * cb;
	a->m = m;
}

/* The tail goes through the vector exp too, masked, so n = 1 tests it. */
static float avx2_exp_sum(const float *x, uint32_t n, float m)
{
	__m256 mv = _mm256_set1_ps(m);
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	uint32_t i = 0;

	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_add_ps(s0, krn_exp8(_mm256_sub_ps(loadf(x + i), mv)));
		s1 = _mm256_add_ps(s1, krn_exp8(_mm256_sub_ps(loadf(x + i + 8), mv)));
		s2 = _mm256_add_ps(s2, krn_exp8(_mm256_sub_ps(loadf(x + i + 16), mv)));
		s3 = _mm256_add_ps(s3, krn_exp8(_mm256_sub_ps(loadf(x + i + 24), mv)));
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_add_ps(s0, krn_exp8(_mm256_sub_ps(loadf(x + i), mv)));
	if (i < n) {
		__m256i k = tail_mask(n - i);
		__m256 e = krn_exp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), mv));
		s1 = _mm256_add_ps(s1, _mm256_and_ps(e, _mm256_castsi256_ps(k)));
	}
	return krn_hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

static float avx2_max(const float *x, uint32_t n)
{
	__m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
	uint32_t i = 0;

	/* max(x, m) returns m when x is NaN: NaNs are skipped, as in ref */
	for (; i + 32 <= n; i += 32) {
		m0 = _mm256_max_ps(loadf(x + i), m0);
		m1 = _mm256_max_ps(loadf(x + i + 8), m1);
		m2 = _mm256_max_ps(loadf(x + i + 16), m2);
		m3 = _mm256_max_ps(loadf(x + i + 24), m3);
	}
	for (; i + 8 <= n; i += 8)
		m0 = _mm256_max_ps(loadf(x + i), m0);
	float m = krn_hmax8(_mm256_max_ps(_mm256_max_ps(m0, m1),
					  _mm256_max_ps(m2, m3)));
	for (; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return krn_max_fix_zero(x, n, m);
}

static int avx2_all_finite(const float *x, size_t n)
{
	const __m256i e = _mm256_set1_epi32(0x7f800000);
	size_t i = 0;

	for (; i + 32 <= n; i += 32) {
		__m256i b = _mm256_setzero_si256();
		for (int r = 0; r < 4; r++) {
			__m256i u = _mm256_loadu_si256((const __m256i *)(x + i + 8 * r));
			b = _mm256_or_si256(b, _mm256_cmpeq_epi32(_mm256_and_si256(u, e), e));
		}
		if (!_mm256_testz_si256(b, b))
			return 0;
	}
	for (; i < n; i++)
		if ((krn_f32_bits(x[i]) & 0x7f800000) == 0x7f800000)
			return 0;
	return 1;
}

/* ---- conversions ------------------------------------------------------ */

/*
 * F16C turns a signalling NaN into a quiet one; the reference keeps the
 * payload bits as they are.  Inf/NaN lanes are rare: redo only those.
 */
KRN_INLINE __m256 f16x8(__m128i h)
{
	const __m128i e = _mm_set1_epi16(0x7c00);
	__m256 f = _mm256_cvtph_ps(h);
	__m128i sp = _mm_cmpeq_epi16(_mm_and_si128(h, e), e);

	if (_mm_testz_si128(sp, sp))
		return f;
	__m256i h32 = _mm256_cvtepu16_epi32(h);
	__m256i sign = _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x8000)), 16);
	__m256i man = _mm256_slli_epi32(_mm256_and_si256(h32, _mm256_set1_epi32(0x3ff)), 13);
	__m256i fix = _mm256_or_si256(_mm256_or_si256(sign, man),
				      _mm256_set1_epi32(0x7f800000));
	return _mm256_blendv_ps(f, _mm256_castsi256_ps(fix),
				_mm256_castsi256_ps(_mm256_cvtepi16_epi32(sp)));
}

static void avx2_f16_to_f32(const uint16_t *in, float *out, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, f16x8(_mm_loadu_si128((const __m128i *)(in + i))));
	for (; i < n; i++)
		out[i] = krn_f16_to_f32_1(in[i]);
}

/*
 * F16C rounds to nearest even, overflows to Inf, rounds into subnormals
 * and quiets NaNs keeping the top payload bits, exactly as the reference
 * does (checked over all 2^32 inputs; the test samples them, NaN included).
 */
static void avx2_f32_to_f16(const float *in, uint16_t *out, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(out + i),
				 _mm256_cvtps_ph(loadf(in + i), _MM_FROUND_TO_NEAREST_INT));
	for (; i < n; i++)
		out[i] = krn_f32_to_f16_1(in[i]);
}

/* Eight bf16 from p as f32 (exact: the top half of the f32 bits). */
KRN_INLINE __m256 bf16x8_load(const uint16_t *p)
{
	__m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
	return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

static void avx2_bf16_to_f32(const uint16_t *in, float *out, size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(out + i, bf16x8_load(in + i));
	for (; i < n; i++)
		out[i] = krn_bf16_to_f32_1(in[i]);
}

/* The reference's integer rounding, 8 lanes at a time (results in 32-bit lanes). */
KRN_INLINE __m256i bf16x8(__m256 f)
{
	__m256i u = _mm256_castps_si256(f);
	__m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
	__m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
	__m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
	__m256i nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f800000));
	__m256i qn = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
	return _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), qn, nan);
}

static void avx2_f32_to_bf16(const float *in, uint16_t *out, size_t n)
{
	size_t i = 0;

	for (; i + 16 <= n; i += 16) {
		__m256i p = _mm256_packus_epi32(bf16x8(loadf(in + i)),
						bf16x8(loadf(in + i + 8)));
		p = _mm256_permute4x64_epi64(p, _MM_SHUFFLE(3, 1, 2, 0));
		_mm256_storeu_si256((__m256i *)(out + i), p);
	}
	for (; i + 8 <= n; i += 8) {
		__m256i b = bf16x8(loadf(in + i));
		_mm_storeu_si128((__m128i *)(out + i),
				 _mm_packus_epi32(_mm256_castsi256_si128(b),
						  _mm256_extracti128_si256(b, 1)));
	}
	for (; i < n; i++)
		out[i] = krn_f32_to_bf16_1(in[i]);
}

/* ---- scattered rows -------------------------------------------------- */

/* Eight elements of a stored row from d, as f32 (the conversions above). */
KRN_INLINE __m256 row8(const void *row, const enum krn_elt elt, uint32_t d)
{
	const uint16_t *h = (const uint16_t *)row + d;

	if (elt == KRN_BF16)
		return bf16x8_load(h);
	if (elt == KRN_F16)
		return f16x8(_mm_loadu_si128((const __m128i *)h));
	return loadf((const float *)row + d);
}

/*
 * Rows r0 and r1 against nj <= 4 queries (nj a constant after inlining):
 * out lanes [q0.r0 .. q3.r0, q0.r1 .. q3.r1], times scale.  Each product
 * is one FMA chain over d, summed by krn_hsum8x8: dot_2x4's arithmetic.
 */
KRN_INLINE __m256 gdot_pair(const float *q, const uint32_t nj, uint32_t dim, const void *r0,
			    const void *r1, const enum krn_elt elt, __m256 scale)
{
	__m256 a[8];

	KRN_UNROLL
	for (int i = 0; i < 8; i++)
		a[i] = _mm256_setzero_ps();
	for (uint32_t d = 0; d < dim; d += 8) {
		__m256 y0 = row8(r0, elt, d), y1 = row8(r1, elt, d);
		KRN_UNROLL
		for (uint32_t j = 0; j < nj; j++) {
			__m256 x = loadf(q + (size_t)j * dim + d);
			a[j] = _mm256_fmadd_ps(x, y0, a[j]);
			a[4 + j] = _mm256_fmadd_ps(x, y1, a[4 + j]);
		}
	}
	return _mm256_mul_ps(krn_hsum8x8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]), scale);
}

#include "gdot_rows.h"

static void avx2_gdot(const float *q, uint32_t nq, const void *const *rows, uint32_t n,
		      uint32_t n_more, enum krn_elt elt, uint32_t dim, float scale,
		      float *out, size_t ld_out)
{
	gdot_all(&krn_ops_avx2, q, nq, rows, n, n_more, elt, dim, scale, out, ld_out);
}

const struct krn_ops krn_ops_avx2 = {
	.name = "avx2",
	.level = KRN_AVX2,
	.encode = avx2_encode,
	.hamming = avx2_hamming,
	.scan = krn_avx2_scan,   /* search.c */
	.estimate = krn_avx2_estimate,
	.wsum = krn_avx2_wsum,   /* search.c */
	.dot = avx2_dot,
	.gdot = avx2_gdot,
	.sketch = krn_avx2_sketch, /* sketch.c */
	.attend = avx2_attend,
	.attend_logits = avx2_attend_logits,
	.merge = avx2_merge,
	.exp_sum = avx2_exp_sum,
	.max = avx2_max,
	.f16_to_f32 = avx2_f16_to_f32,
	.f32_to_f16 = avx2_f32_to_f16,
	.bf16_to_f32 = avx2_bf16_to_f32,
	.f32_to_bf16 = avx2_f32_to_bf16,
	.all_finite = avx2_all_finite,
};
