/*
 * ref_attn.h - dense attention in double precision: the reference every
 * approximation is measured against.
 */
#ifndef DKV_REF_ATTN_H
#define DKV_REF_ATTN_H

#include <stdint.h>

/*
 * One query position over keys [0, len):
 * q   [n_q_heads][dim]           (f32)
 * k,v [len][n_kv_heads][dim]     (f32, token-major as in dkv_step)
 * out [n_q_heads][dim]           (double)
 * Query head h reads kv head h / (n_q_heads / n_kv_heads).
 * scale <= 0 means 1/sqrt(dim).
 */
void ref_attention(const float *q, const float *k, const float *v,
		   uint32_t len, uint32_t n_q_heads, uint32_t n_kv_heads,
		   uint32_t dim, double scale, double *out);

/*
 * Exact logits of one query head against one kv head's keys:
 * logit[i] = scale * q . k_i for i in [0, len), k token-major as above.
 */
void ref_logits(const float *qh, const float *k, uint32_t len,
		uint32_t n_kv_heads, uint32_t kv_head, uint32_t dim,
		double scale, double *logit);

/* ||a - b|| / ||b|| over n values (a as float, b as double). */
double ref_rel_error(const float *a, const double *b, uint32_t n);

#endif
