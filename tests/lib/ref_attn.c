/* ref_attn.c - double-precision dense attention (see ref_attn.h). */
#include <math.h>
#include <stdlib.h>

#include "ref_attn.h"

void ref_logits(const float *qh, const float *k, uint32_t len,
		uint32_t n_kv_heads, uint32_t kv_head, uint32_t dim,
		double scale, double *logit)
{
	for (uint32_t i = 0; i < len; i++) {
		const float *ki = k + ((size_t)i * n_kv_heads + kv_head) * dim;
		double s = 0.0;
		for (uint32_t d = 0; d < dim; d++)
			s += (double)qh[d] * (double)ki[d];
		logit[i] = scale * s;
	}
}

void ref_attention(const float *q, const float *k, const float *v,
		   uint32_t len, uint32_t n_q_heads, uint32_t n_kv_heads,
		   uint32_t dim, double scale, double *out)
{
	uint32_t group = n_q_heads / n_kv_heads;
	double *logit = malloc((len ? len : 1) * sizeof(*logit));

	if (scale <= 0)
		scale = 1.0 / sqrt((double)dim);
	for (uint32_t h = 0; h < n_q_heads; h++) {
		uint32_t kvh = h / group;
		double *o = out + (size_t)h * dim;
		double m = -INFINITY, sum = 0.0;

		ref_logits(q + (size_t)h * dim, k, len, n_kv_heads, kvh, dim, scale, logit);
		for (uint32_t i = 0; i < len; i++)
			m = logit[i] > m ? logit[i] : m;
		for (uint32_t d = 0; d < dim; d++)
			o[d] = 0.0;
		for (uint32_t i = 0; i < len; i++) {
			double p = exp(logit[i] - m);
			const float *vi = v + ((size_t)i * n_kv_heads + kvh) * dim;
			sum += p;
			for (uint32_t d = 0; d < dim; d++)
				o[d] += p * vi[d];
		}
		for (uint32_t d = 0; d < dim; d++)
			o[d] = sum > 0 ? o[d] / sum : 0.0;
	}
	free(logit);
}

double ref_rel_error(const float *a, const double *b, uint32_t n)
{
	double num = 0.0, den = 0.0;

	for (uint32_t i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}
