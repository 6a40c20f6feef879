/*
 * sketch.c - the scores of the coarse filter's pool from the 4-bit key
 * sketches (krn_ops.sketch), built once per instruction set as search.c
 * is: krn_avx2_sketch with AVX2, krn_avx512_sketch with AVX-512 (BW).
 *
 * A sketch byte holds two 4-bit values offset by 8; the low nibbles of a
 * run of bytes are elements b.., the high ones elements half + b.., so a
 * mask and a shift give two vectors of unsigned values that multiply the
 * query's int8 halves directly (maddubs: u8 x s8, pairs summed to 16 bits,
 * at most 2 * 15 * 127 in magnitude, no saturation), then to 32 bits
 * (madd by ones).  The offset comes off once per query: 8 * sum(q).  All
 * integer, so the sums equal the reference's whatever the order.
 */
#include "simd_common.h"
#include "variants.h"

#ifdef __AVX512BW__
#define KRN_SKETCH(name) krn_avx512_##name
#else
#define KRN_SKETCH(name) krn_avx2_##name
#endif

KRN_INLINE __m256i dot32(__m256i nib, const int8_t *q)
{
	__m256i p = _mm256_maddubs_epi16(nib, _mm256_loadu_si256((const __m256i *)q));
	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

KRN_INLINE __m128i dot16(__m128i nib, const int8_t *q)
{
	__m128i p = _mm_maddubs_epi16(nib, _mm_loadu_si128((const __m128i *)q));
	return _mm_madd_epi16(p, _mm_set1_epi16(1));
}

/* sum over the row's elements of q * nibble (offset not removed) */
KRN_INLINE int32_t row_dot(const int8_t *q, const uint8_t *row, uint32_t half)
{
	uint32_t b = 0;
	int32_t sum = 0;
#ifdef __AVX512BW__
	const __m512i m5 = _mm512_set1_epi8(15), one5 = _mm512_set1_epi16(1);
	__m512i a5 = _mm512_setzero_si512();
	for (; b + 64 <= half; b += 64) {
		__m512i x = _mm512_loadu_si512(row + b);
		__m512i lo = _mm512_and_si512(x, m5);
		__m512i hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m5);
		__m512i pl = _mm512_maddubs_epi16(lo, _mm512_loadu_si512(q + b));
		__m512i ph = _mm512_maddubs_epi16(hi, _mm512_loadu_si512(q + half + b));
		a5 = _mm512_add_epi32(a5, _mm512_madd_epi16(_mm512_add_epi16(pl, ph), one5));
	}
	sum += _mm512_reduce_add_epi32(a5);
#endif
	const __m256i m = _mm256_set1_epi8(15);
	__m256i a = _mm256_setzero_si256();
	for (; b + 32 <= half; b += 32) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(row + b));
		a = _mm256_add_epi32(a, dot32(_mm256_and_si256(x, m), q + b));
		a = _mm256_add_epi32(a, dot32(_mm256_and_si256(_mm256_srli_epi16(x, 4), m),
					      q + half + b));
	}
	__m128i a4 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
	for (; b + 16 <= half; b += 16) {
		__m128i x = _mm_loadu_si128((const __m128i *)(row + b)), m4 = _mm_set1_epi8(15);
		a4 = _mm_add_epi32(a4, dot16(_mm_and_si128(x, m4), q + b));
		a4 = _mm_add_epi32(a4, dot16(_mm_and_si128(_mm_srli_epi16(x, 4), m4), q + half + b));
	}
	a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0x4e));
	a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0xb1));
	sum += _mm_cvtsi128_si32(a4);
	for (; b < half; b++)
		sum += q[b] * (row[b] & 15) + q[half + b] * (row[b] >> 4);
	return sum;
}

/*
 * acc[j] += sum over the row's elements of q_j * nibble (offset not
 * removed), for nq queries: each stretch of the row is loaded and split
 * into nibbles once for all of them.
 */
KRN_INLINE void row_dots(const int8_t *q8, uint32_t nq, uint32_t dim, const uint8_t *row,
			 int32_t *acc)
{
	uint32_t half = dim / 2, b = 0;
#ifdef __AVX512BW__
	if (half % 64 == 0 && nq <= 8) {
		const __m512i m5 = _mm512_set1_epi8(15), one5 = _mm512_set1_epi16(1);
		__m512i a5[8];
		for (uint32_t j = 0; j < nq; j++)
			a5[j] = _mm512_setzero_si512();
		for (; b < half; b += 64) {
			__m512i x = _mm512_loadu_si512(row + b);
			__m512i lo = _mm512_and_si512(x, m5);
			__m512i hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m5);
			for (uint32_t j = 0; j < nq; j++) {
				const int8_t *q = q8 + (size_t)j * dim;
				__m512i pl = _mm512_maddubs_epi16(lo, _mm512_loadu_si512(q + b));
				__m512i ph = _mm512_maddubs_epi16(hi, _mm512_loadu_si512(q + half + b));
				a5[j] = _mm512_add_epi32(a5[j],
							 _mm512_madd_epi16(_mm512_add_epi16(pl, ph), one5));
			}
		}
		for (uint32_t j = 0; j < nq; j++)
			acc[j] += _mm512_reduce_add_epi32(a5[j]);
		return;
	}
#endif
	if (half % 32 == 0 && nq <= 8) {
		const __m256i m = _mm256_set1_epi8(15);
		__m256i a[8];
		for (uint32_t j = 0; j < nq; j++)
			a[j] = _mm256_setzero_si256();
		for (; b < half; b += 32) {
			__m256i x = _mm256_loadu_si256((const __m256i *)(row + b));
			__m256i lo = _mm256_and_si256(x, m);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m);
			for (uint32_t j = 0; j < nq; j++) {
				const int8_t *q = q8 + (size_t)j * dim;
				a[j] = _mm256_add_epi32(a[j], dot32(lo, q + b));
				a[j] = _mm256_add_epi32(a[j], dot32(hi, q + half + b));
			}
		}
		for (uint32_t j = 0; j < nq; j++) {
			__m128i a4 = _mm_add_epi32(_mm256_castsi256_si128(a[j]),
						   _mm256_extracti128_si256(a[j], 1));
			a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0x4e));
			a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0xb1));
			acc[j] += _mm_cvtsi128_si32(a4);
		}
		return;
	}
	for (uint32_t j = 0; j < nq; j++)
		acc[j] += row_dot(q8 + (size_t)j * dim, row, half);
}

void KRN_SKETCH(sketch)(const int8_t *q8, uint32_t nq, const uint8_t *const *rows, uint32_t n,
			uint32_t n_more, uint32_t dim, int32_t *out, size_t ld_out)
{
	uint32_t half = dim / 2;
	int32_t off[KRN_SKETCH_MAXQ];

	for (uint32_t j = 0; j < nq; j++) {
		int32_t s = 0;
		for (uint32_t d = 0; d < dim; d++)
			s += q8[(size_t)j * dim + d];
		off[j] = 8 * s;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint32_t ahead = i + KRN_GDOT_AHEAD;
		if (ahead < n_more) {
			_mm_prefetch((const char *)rows[ahead], _MM_HINT_T0);
			if (half > 64)
				_mm_prefetch((const char *)rows[ahead] + 64, _MM_HINT_T0);
		}
		int32_t acc[KRN_SKETCH_MAXQ];
		for (uint32_t j0 = 0; j0 < nq; j0 += 8) {
			uint32_t m = nq - j0 < 8 ? nq - j0 : 8;
			for (uint32_t j = 0; j < m; j++)
				acc[j0 + j] = -off[j0 + j];
			row_dots(q8 + (size_t)j0 * dim, m, dim, rows[i], acc + j0);
		}
		for (uint32_t j = 0; j < nq; j++)
			out[j * ld_out + i] = acc[j];
	}
}
