/*
 * variants.h - kernels kept in files of their own.  search.c and sketch.c
 * are built once per instruction set: krn_avx2_* in the AVX2 library, krn_avx512_* in
 * the AVX-512 one.
 */
#ifndef DKV_VARIANTS_H
#define DKV_VARIANTS_H

#include "krn.h"

void krn_avx2_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		   struct krn_scan_out *o);
void krn_avx2_estimate(const struct krn_scan_q *q, const struct krn_scan_keys *k, uint32_t nk,
		       float *out, size_t ld);
void krn_avx2_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		   size_t ld, uint32_t n, uint32_t dim, float *acc);

void krn_avx2_sketch(const int8_t *q8, uint32_t nq, const uint8_t *const *rows, uint32_t n,
		     uint32_t n_more, uint32_t dim, int32_t *out, size_t ld_out);

void krn_avx512_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		     struct krn_scan_out *o);
void krn_avx512_estimate(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 uint32_t nk, float *out, size_t ld);
void krn_avx512_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		     size_t ld, uint32_t n, uint32_t dim, float *acc);
void krn_avx512_sketch(const int8_t *q8, uint32_t nq, const uint8_t *const *rows, uint32_t n,
		       uint32_t n_more, uint32_t dim, int32_t *out, size_t ld_out);

#endif
