/* variants.h - kernels of one instruction set kept in files of their own. */
#ifndef DKV_VARIANTS_H
#define DKV_VARIANTS_H

#include "krn.h"

void krn_avx2_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		   struct krn_scan_out *o);

void krn_avx2_estimate(const struct krn_scan_q *q, const struct krn_scan_keys *k, uint32_t nk,
		       float *out, size_t ld);

void krn_avx2_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		   size_t ld, uint32_t n, uint32_t dim, float *acc);

#endif
