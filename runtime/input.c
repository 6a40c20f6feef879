/*
 * input.c - what a step is given: its arguments checked (shapes, NULLs,
 * max_tokens, finite values) and its rows converted between the
 * sequence's dtype and f32.
 */
#include <string.h>

#include "engine_int.h"
#include "krn.h"

void rt_to_f32(int dtype, const void *in, size_t n, float *out)
{
	krn_elt_to_f32(krn_get(), (enum krn_elt)dtype, in, out, n);
}

void rt_from_f32(int dtype, const float *in, size_t n, void *out)
{
	const struct krn_ops *ops = krn_get();

	if (dtype == DKV_F16)
		ops->f32_to_f16(in, out, n);
	else if (dtype == DKV_BF16)
		ops->f32_to_bf16(in, out, n);
	else
		memcpy(out, in, n * sizeof(float));
}

int rt_check_args(const struct rt_seq *s, uint32_t layer, const void *q,
		  uint32_t n_q, const void *k, const void *v, uint32_t n_new,
		  const void *out, char *err)
{
	const dkv_seq_config *c = &s->cfg;

	if (layer >= c->n_layers)
		return krn_msgf(err, DKV_E_INVAL, "layer %u out of range [0, %u)", layer,
				c->n_layers);
	if (n_new && (!k || !v))
		return krn_msgf(err, DKV_E_INVAL, "k and v must not be NULL when n_new is %u",
				n_new);
	if (n_q && (!q || !out))
		return krn_msgf(err, DKV_E_INVAL, "q and out must not be NULL when n_q is %u", n_q);
	uint64_t len = s->layers[layer].store.len;
	if (n_q > len + n_new)
		return krn_msgf(err, DKV_E_INVAL,
				"n_q %u exceeds the %llu tokens the layer holds after the append",
				n_q, (unsigned long long)(len + n_new));
	if (len + n_new > c->max_tokens)
		return krn_msgf(err, DKV_E_NOSPACE,
				"layer %u: %llu + %u tokens exceed max_tokens %llu", layer,
				(unsigned long long)len, n_new, (unsigned long long)c->max_tokens);
	return DKV_OK;
}

/* 1 when n values of the dtype are all finite (no NaN, no Inf). */
static int all_finite(int dtype, const void *x, size_t n)
{
	const uint16_t *h = x;
	uint16_t expmask = dtype == DKV_F16 ? 0x7c00 : 0x7f80;

	if (dtype == DKV_F32)
		return krn_get()->all_finite(x, n);
	for (size_t i = 0; i < n; i++)
		if ((h[i] & expmask) == expmask)
			return 0;
	return 1;
}

int rt_check_finite(const struct rt_seq *s, const void *q, uint32_t n_q,
		    const void *k, const void *v, uint32_t n_new, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	size_t nq = (size_t)n_q * c->n_q_heads * c->head_dim;
	size_t nk = (size_t)n_new * c->n_kv_heads * c->head_dim;

	if (!all_finite(c->dtype, q, nq))
		return krn_msgf(err, DKV_E_BADINPUT,
				"a query holds NaN or Inf; nothing was stored");
	if (!all_finite(c->dtype, k, nk))
		return krn_msgf(err, DKV_E_BADINPUT, "a key holds NaN or Inf; nothing was stored");
	if (!all_finite(c->dtype, v, nk))
		return krn_msgf(err, DKV_E_BADINPUT,
				"a value holds NaN or Inf; nothing was stored");
	return DKV_OK;
}
