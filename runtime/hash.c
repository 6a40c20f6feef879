/* hash.c - SimHash key/query encoding (see hash.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "krn.h"

int rt_hash_init(struct rt_hash *hm, const float *P, uint32_t bits, uint32_t dim)
{
	hm->bits = bits;
	hm->dim = dim;
	hm->P = P;
	hm->mu = calloc(dim, sizeof(float));
	hm->chs = malloc(dim * sizeof(float));
	hm->cosine = malloc((bits + 1) * sizeof(float));
	hm->mu_set = 0;
	if (!hm->mu || !hm->chs || !hm->cosine) {
		rt_hash_free(hm);
		return -1;
	}
	for (uint32_t h = 0; h <= bits; h++)
		hm->cosine[h] = (float)cos(M_PI * h / bits);
	for (uint32_t d = 0; d < dim; d++)
		hm->chs[d] = 1.0f;
	return 0;
}

void rt_hash_free(struct rt_hash *hm)
{
	free(hm->mu);
	free(hm->chs);
	free(hm->cosine);
	hm->mu = NULL;
	hm->chs = NULL;
	hm->cosine = NULL;
}

void rt_hash_keys(const struct rt_hash *hm, const float *k, uint32_t n,
		  uint64_t *codes, float *norms, float *tmp)
{
	const struct krn_ops *ops = krn_get();
	uint32_t dim = hm->dim;

	for (uint32_t i = 0; i < n; i++) {
		float *c = tmp + (size_t)i * dim;
		for (uint32_t d = 0; d < dim; d++)
			c[d] = k[(size_t)i * dim + d] - hm->mu[d];
		ops->dot(c, 1, c, dim, 1, dim, &norms[i], 1);
		norms[i] = sqrtf(norms[i]);
	}
	ops->encode(hm->lm ? hm->lm->Wk : hm->P, hm->bits, dim, tmp, dim, n, codes);
}

void rt_hash_sketch(const struct rt_hash *hm, const float *k, uint32_t n, uint8_t *sk,
		    float *step, float *tmp)
{
	uint32_t dim = hm->dim;

	for (uint32_t i = 0; i < n; i++) {
		const float *x = k + (size_t)i * dim;
		for (uint32_t d = 0; d < dim; d++)
			tmp[d] = (x[d] - hm->mu[d]) / hm->chs[d];
		step[i] = krn_sketch_put(tmp, dim, sk + (size_t)i * (dim / 2));
	}
}

float rt_hash_query_sketch(const struct rt_hash *hm, const float *q, float scale, int8_t *q8)
{
	float amax = 0.0f;

	for (uint32_t d = 0; d < hm->dim; d++) {
		float x = fabsf(q[d] * hm->chs[d]);
		amax = x > amax ? x : amax;
	}
	if (!(amax > 0.0f)) {
		memset(q8, 0, hm->dim);
		return 0.0f;
	}
	float inv = 127.0f / amax;
	for (uint32_t d = 0; d < hm->dim; d++) {
		long v = lrintf(q[d] * hm->chs[d] * inv);
		q8[d] = (int8_t)(v < -127 ? -127 : v > 127 ? 127 : v);
	}
	return scale * amax / 127.0f;
}

void rt_hash_query(const struct rt_hash *hm, const float *q, float scale,
		   uint64_t *code, float *tab, float *shift)
{
	const struct krn_ops *ops = krn_get();
	const float *cosv = hm->lm ? hm->lm->cosv : hm->cosine;
	float qq, qmu, tmp[RT_MODEL_HIDDEN_MAX + 256];

	if (hm->lm)
		rt_lhead_query_code(hm->lm, q, code, tmp);
	else
		ops->encode(hm->P, hm->bits, hm->dim, q, hm->dim, 1, code);
	ops->dot(q, 1, q, hm->dim, 1, hm->dim, &qq, 1);
	ops->dot(q, 1, hm->mu, hm->dim, 1, hm->dim, &qmu, 1);
	float f = scale * sqrtf(qq);
	for (uint32_t h = 0; h <= hm->bits; h++)
		tab[h] = f * cosv[h];
	*shift = scale * qmu;
}

uint8_t rt_hash_class(const struct rt_hash *hm, float norm)
{
	if (!hm->mu_set || !(hm->norm_ref > 0.0f))
		return RT_CLASSES - 1;
	if (!(norm > 0.0f))
		return 0;
	int c = (int)floorf(RT_CLASS_STEPS * log2f(norm / hm->norm_ref)) + RT_CLASSES / 2;
	return (uint8_t)(c < 0 ? 0 : c > RT_CLASSES - 1 ? RT_CLASSES - 1 : c);
}

void rt_hash_class_bounds(const struct rt_hash *hm, uint32_t c, float *lo, float *hi)
{
	if (!hm->mu_set || !(hm->norm_ref > 0.0f)) {
		*lo = 0.0f;
		*hi = hm->max_norm;
		return;
	}
	*lo = c == 0 ? 0.0f : hm->norm_ref * exp2f(((float)c - RT_CLASSES / 2) / RT_CLASS_STEPS);
	*hi = c == RT_CLASSES - 1 ? hm->max_norm :
		hm->norm_ref * exp2f(((float)c + 1 - RT_CLASSES / 2) / RT_CLASS_STEPS);
	/* the class of a norm is computed in float: keep a little room */
	*lo *= 0.999f;
	*hi *= 1.001f;
}

/*
 * Stage-1 limits of one query: for norm class c, the largest distance
 * with which a key of a norm inside the class can still reach thr.  Keys
 * beyond it cannot be hits, so stage 1 loses nothing.
 */
void rt_hash_probe_limits(const struct rt_hash *hm, const float *tab, float thr, int32_t *lim)
{
	for (uint32_t c = 0; c < RT_CLASSES; c++) {
		float lo, hi;
		rt_hash_class_bounds(hm, c, &lo, &hi);
		lim[c] = -1;
		for (uint32_t h = 0; h <= hm->bits; h++) {
			float best = tab[h] >= 0.0f ? hi * tab[h] : lo * tab[h];
			if (best >= thr)
				lim[c] = (int32_t)h;
		}
	}
}
