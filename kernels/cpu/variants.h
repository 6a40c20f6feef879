/*
 * variants.h - kernels kept in files of their own.  search.c is built once
 * per instruction set: krn_avx2_* in the AVX2 library, krn_avx512_* in
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

void krn_avx512_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		     struct krn_scan_out *o);
void krn_avx512_estimate(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 uint32_t nk, float *out, size_t ld);
void krn_avx512_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		     size_t ld, uint32_t n, uint32_t dim, float *acc);

#endif
