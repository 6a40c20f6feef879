/*
 * simd_common.h - helpers shared by the AVX2 and AVX-512 kernels.
 *
 * Each variant is compiled with its own flags, so every vector helper is
 * guarded by the feature macro it needs; the AVX-512 file also gets the
 * AVX2 helpers (-mavx512f implies AVX2).  Everything is static inline:
 * nothing here is linked twice.
 */
#ifndef DKV_SIMD_COMMON_H
#define DKV_SIMD_COMMON_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "krn.h"
#include "cpu_common.h"

#define KRN_INLINE static inline __attribute__((always_inline))

/*
 * Fully unroll a short loop of constant trip count, so that an array of
 * accumulators indexed by it becomes registers.  clang takes only its
 * own spelling as "full"; a GCC count would leave it a loop in memory.
 */
#ifdef __clang__
#define KRN_UNROLL _Pragma("clang loop unroll(full)")
#else
#define KRN_UNROLL _Pragma("GCC unroll 16")
#endif

/* The same where clang's own choice must stand (its "full" can fail). */
#ifdef __clang__
#define KRN_UNROLL_GCC
#else
#define KRN_UNROLL_GCC _Pragma("GCC unroll 16")
#endif

/*
 * exp(x) for float, vectorised.  x = n ln2 + r with |r| <= ln2/2, so
 * exp(x) = 2^n e^r.  e^r is the Taylor series to degree 7: the first
 * dropped term is below 6e-9 relative on that interval, so the result is
 * within about 2 ulp of the true value.  ln2 is split in a short "hi"
 * part (n * hi is exact for |n| < 2^15) and a "lo" rest (Cody-Waite).
 * x is clamped to [-104, 89]: every float result below -104 is 0 (so
 * -INFINITY gives exactly 0) and every one above 89 is +Inf.  2^n is
 * applied in two halves so results down in the subnormal range still
 * come out right.  A NaN in x stays NaN.
 */
#define KRN_EXP_LO	-104.0f
#define KRN_EXP_HI	89.0f
#define KRN_LOG2E	1.44269504088896341f
#define KRN_LN2_HI	0.693359375f
#define KRN_LN2_LO	-2.12194440e-4f
#define KRN_EXP_C2	(1.0f / 2)
#define KRN_EXP_C3	(1.0f / 6)
#define KRN_EXP_C4	(1.0f / 24)
#define KRN_EXP_C5	(1.0f / 120)
#define KRN_EXP_C6	(1.0f / 720)
#define KRN_EXP_C7	(1.0f / 5040)

/* Scalar helpers used by the tails of both variants. */

static inline uint32_t krn_ham1(const uint64_t *a, const uint64_t *b,
				uint32_t words)
{
	uint32_t h = 0;

	for (uint32_t w = 0; w < words; w++)
		h += (uint32_t)__builtin_popcountll(a[w] ^ b[w]);
	return h;
}

/*
 * The reference keeps the first of equal maxima, which only shows when
 * the maximum is zero: -0.0 and +0.0 compare equal but differ in bits.
 * A vector max cannot tell which came first, so look it up.
 */
static inline float krn_max_fix_zero(const float *x, uint32_t n, float m)
{
	if (m != 0.0f)
		return m;
	for (uint32_t i = 0; i < n; i++)
		if (x[i] == 0.0f)
			return x[i];
	return m;
}

#ifdef __AVX2__

KRN_INLINE __m256 krn_exp8(__m256 x)
{
	/* max/min return the second operand for NaN: keep x there */
	x = _mm256_max_ps(_mm256_set1_ps(KRN_EXP_LO), x);
	x = _mm256_min_ps(_mm256_set1_ps(KRN_EXP_HI), x);
	__m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(KRN_LOG2E)),
				   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KRN_LN2_HI), x);
	r = _mm256_fnmadd_ps(n, _mm256_set1_ps(KRN_LN2_LO), r);

	__m256 p = _mm256_set1_ps(KRN_EXP_C7);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KRN_EXP_C6));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KRN_EXP_C5));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KRN_EXP_C4));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KRN_EXP_C3));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(KRN_EXP_C2));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));

	/* n in [-150, 128]: both halves stay normal exponents */
	__m256i ni = _mm256_cvtps_epi32(n);
	__m256i n1 = _mm256_srai_epi32(ni, 1);
	__m256i n2 = _mm256_sub_epi32(ni, n1);
	__m256i bias = _mm256_set1_epi32(127);
	__m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
	__m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
	return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

KRN_INLINE float krn_hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

KRN_INLINE float krn_hmax8(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* Per 128-bit half: [sum(a0), sum(a1), sum(a2), sum(a3)] over that half. */
KRN_INLINE __m256 krn_hsum4x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
	__m256 t0 = _mm256_add_ps(_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
	__m256 t1 = _mm256_add_ps(_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
	return _mm256_add_ps(_mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
			     _mm256_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
}

/* Transposed reduction: [sum(a0), sum(a1), ..., sum(a7)]. */
KRN_INLINE __m256 krn_hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
			      __m256 a4, __m256 a5, __m256 a6, __m256 a7)
{
	__m256 u0 = krn_hsum4x8(a0, a1, a2, a3);
	__m256 u1 = krn_hsum4x8(a4, a5, a6, a7);
	return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
			     _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* Per-byte popcount by two 16-entry nibble lookups (pshufb). */
KRN_INLINE __m256i krn_popcnt_bytes(__m256i x)
{
	const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3,
					     1, 2, 2, 3, 2, 3, 3, 4,
					     0, 1, 1, 2, 1, 2, 2, 3,
					     1, 2, 2, 3, 2, 3, 3, 4);
	const __m256i low = _mm256_set1_epi8(0x0f);
	__m256i lo = _mm256_and_si256(x, low);
	__m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
	return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo),
			       _mm256_shuffle_epi8(lut, hi));
}

#endif /* __AVX2__ */

#ifdef __AVX512F__

KRN_INLINE __m512 krn_exp16(__m512 x)
{
	x = _mm512_max_ps(_mm512_set1_ps(KRN_EXP_LO), x);
	x = _mm512_min_ps(_mm512_set1_ps(KRN_EXP_HI), x);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(KRN_LOG2E)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KRN_LN2_HI), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(KRN_LN2_LO), r);

	__m512 p = _mm512_set1_ps(KRN_EXP_C7);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KRN_EXP_C6));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KRN_EXP_C5));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KRN_EXP_C4));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KRN_EXP_C3));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(KRN_EXP_C2));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));

	__m512i ni = _mm512_cvtps_epi32(n);
	__m512i n1 = _mm512_srai_epi32(ni, 1);
	__m512i n2 = _mm512_sub_epi32(ni, n1);
	__m512i bias = _mm512_set1_epi32(127);
	__m512 s1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n1, bias), 23));
	__m512 s2 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n2, bias), 23));
	return _mm512_mul_ps(_mm512_mul_ps(p, s1), s2);
}

/* Fold a zmm to a ymm of partial sums (for the AVX2 reductions above). */
KRN_INLINE __m256 krn_fold512(__m512 v)
{
	return _mm256_add_ps(_mm512_castps512_ps256(v),
			     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* Lanes [0, r) of a 16-lane vector, r clamped to [0, 16]. */
static inline __mmask16 krn_mask16(int64_t r)
{
	if (r >= 16)
		return 0xffff;
	if (r <= 0)
		return 0;
	return (__mmask16)((1u << r) - 1);
}

#endif /* __AVX512F__ */

#endif /* DKV_SIMD_COMMON_H */
