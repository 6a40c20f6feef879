/*
 * dot_rows.h - the row loops of the SIMD dot kernels, shared by the AVX2
 * and AVX-512 tables.  The including file defines dot_2x4 (two queries,
 * four rows) and dot_1x8 (one query, eight rows), each returning its
 * eight dot products in one __m256, and DOT_MAX_DIM.
 */
#ifndef DKV_KRN_DOT_ROWS_H
#define DKV_KRN_DOT_ROWS_H

#include <string.h>

/*
 * The last rows < 4 (or 8) go through the same routine as full groups,
 * copied into a zero-padded group: every row's dot product is then the
 * same arithmetic wherever the row sits in the call, which the shards
 * rely on (krn.h).
 */
static const float *pad_rows(const float *k, size_t ld, uint32_t n, uint32_t rows,
			     uint32_t dim, float *buf)
{
	for (uint32_t r = 0; r < rows; r++) {
		if (r < n)
			memcpy(buf + (size_t)r * dim, k + r * ld, dim * sizeof(float));
		else
			memset(buf + (size_t)r * dim, 0, dim * sizeof(float));
	}
	return buf;
}

static void dot_rows2(const float *q0, const float *q1, const float *k,
		      size_t ld, uint32_t n, uint32_t dim, float *o0, float *o1)
{
	float buf[4 * DOT_MAX_DIM] __attribute__((aligned(32)));
	float r0[4], r1[4];
	uint32_t i = 0;

	for (; i + 4 <= n; i += 4) {
		__m256 r = dot_2x4(q0, q1, k + i * ld, ld, dim);
		_mm_storeu_ps(o0 + i, _mm256_castps256_ps128(r));
		_mm_storeu_ps(o1 + i, _mm256_extractf128_ps(r, 1));
	}
	if (i < n) {
		__m256 r = dot_2x4(q0, q1, pad_rows(k + i * ld, ld, n - i, 4, dim, buf), dim, dim);
		_mm_storeu_ps(r0, _mm256_castps256_ps128(r));
		_mm_storeu_ps(r1, _mm256_extractf128_ps(r, 1));
		for (uint32_t t = 0; i + t < n; t++) {
			o0[i + t] = r0[t];
			o1[i + t] = r1[t];
		}
	}
}

static void dot_rows1(const float *q, const float *k, size_t ld, uint32_t n,
		      uint32_t dim, float *o)
{
	float buf[8 * DOT_MAX_DIM] __attribute__((aligned(32)));
	float r[8];
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(o + i, dot_1x8(q, k + i * ld, ld, dim));
	if (i < n) {
		_mm256_storeu_ps(r, dot_1x8(q, pad_rows(k + i * ld, ld, n - i, 8, dim, buf),
					    dim, dim));
		for (uint32_t t = 0; i + t < n; t++)
			o[i + t] = r[t];
	}
}

#endif
