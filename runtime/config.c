/*
 * config.c - a sequence's knobs: their defaults, the geometry's bounds and
 * the resolution of "0 = default" (rt_config_*, engine.h).
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "engine_int.h"

void rt_config_defaults(dkv_seq_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->struct_size = sizeof(*cfg);
	cfg->dtype = DKV_F32;
	cfg->max_tokens = RT_DEF_MAX_TOKENS;
	cfg->hash_bits = RT_DEF_HASH_BITS;
	cfg->hash = DKV_HASH_SIMHASH;
	cfg->train_tokens = RT_DEF_TRAIN_TOKENS;
	cfg->top_k = RT_DEF_TOP_K;
	cfg->candidates = RT_DEF_CANDIDATES;
	cfg->rerank = RT_DEF_RERANK;
	cfg->sink_tokens = RT_DEF_SINKS;
	cfg->recent_window = RT_DEF_WINDOW;
	cfg->mass_target = 0.0f;
	cfg->tail_estimate = RT_DEF_TAIL;
	cfg->scale = 0.0f;
	cfg->exact = 0;
}

static int check_geometry(const dkv_seq_config *c, char *err)
{
	if (c->n_layers < 1 || c->n_layers > DKV_MAX_LAYERS)
		return krn_msgf(err, DKV_E_INVAL, "n_layers %u out of range [1, %u]",
				c->n_layers, DKV_MAX_LAYERS);
	if (c->n_kv_heads < 1 || c->n_kv_heads > DKV_MAX_HEADS)
		return krn_msgf(err, DKV_E_INVAL, "n_kv_heads %u out of range [1, %u]",
				c->n_kv_heads, DKV_MAX_HEADS);
	if (c->n_q_heads < 1 || c->n_q_heads > DKV_MAX_HEADS ||
	    c->n_q_heads % c->n_kv_heads)
		return krn_msgf(err, DKV_E_INVAL,
				"n_q_heads %u must be a multiple of n_kv_heads %u, at most %u",
				c->n_q_heads, c->n_kv_heads, DKV_MAX_HEADS);
	if (c->head_dim < 8 || c->head_dim > DKV_MAX_HEAD_DIM || c->head_dim % 8)
		return krn_msgf(err, DKV_E_INVAL,
				"head_dim %u must be a multiple of 8 in [8, %u]",
				c->head_dim, DKV_MAX_HEAD_DIM);
	if (c->dtype != DKV_F32 && c->dtype != DKV_F16 && c->dtype != DKV_BF16)
		return krn_msgf(err, DKV_E_INVAL, "dtype %d is not DKV_F32, DKV_F16 or DKV_BF16",
				c->dtype);
	return DKV_OK;
}

static int resolve_knobs(dkv_seq_config *c, char *err)
{
	if (!c->max_tokens)
		c->max_tokens = RT_DEF_MAX_TOKENS;
	if (c->max_tokens > RT_MAX_MAX_TOKENS)
		return krn_msgf(err, DKV_E_INVAL, "max_tokens %llu above %llu",
				(unsigned long long)c->max_tokens, RT_MAX_MAX_TOKENS);
	if (!c->hash_bits)
		c->hash_bits = RT_DEF_HASH_BITS;
	if (c->hash_bits != 64 && c->hash_bits != 128 && c->hash_bits != 256)
		return krn_msgf(err, DKV_E_INVAL, "hash_bits %u is not 64, 128 or 256",
				c->hash_bits);
	if (!c->hash)
		c->hash = DKV_HASH_SIMHASH;
	if (c->hash != DKV_HASH_SIMHASH && c->hash != DKV_HASH_LEARNED)
		return krn_msgf(err, DKV_E_INVAL, "hash %d is not a DKV_HASH_* value", c->hash);
	if (c->hash_model && (c->hash != DKV_HASH_LEARNED || !*c->hash_model))
		return krn_msgf(err, DKV_E_INVAL, c->hash != DKV_HASH_LEARNED ?
				"hash_model needs hash DKV_HASH_LEARNED" : "hash_model is empty");
	if (!c->train_tokens)
		c->train_tokens = RT_DEF_TRAIN_TOKENS;
	if (!c->top_k)
		c->top_k = RT_DEF_TOP_K;
	if (c->top_k > (1u << 20))
		return krn_msgf(err, DKV_E_INVAL, "top_k %u above %u", c->top_k, 1u << 20);
	if (!c->candidates)
		c->candidates = c->top_k * 8 > RT_DEF_CANDIDATES ? c->top_k * 8 : RT_DEF_CANDIDATES;
	if (c->candidates < c->top_k || c->candidates > (1u << 20))
		return krn_msgf(err, DKV_E_INVAL, "candidates %u must lie in [top_k %u, %u]",
				c->candidates, c->top_k, 1u << 20);
	if (!c->rerank)
		c->rerank = RT_DEF_RERANK;
	if (c->rerank > 1000 && c->rerank != DKV_RERANK_OFF)
		return krn_msgf(err, DKV_E_INVAL, "rerank %u is not in [1, 1000] or DKV_RERANK_OFF",
				c->rerank);
	if (!c->sink_tokens)
		c->sink_tokens = RT_DEF_SINKS;
	if (!c->recent_window)
		c->recent_window = RT_DEF_WINDOW;
	if (c->sink_tokens > (1u << 20) || c->recent_window > (1u << 20))
		return krn_msgf(err, DKV_E_INVAL, "sink_tokens %u / recent_window %u above %u",
				c->sink_tokens, c->recent_window, 1u << 20);
	if (!(c->mass_target >= 0.0f && c->mass_target < 1.0f))
		return krn_msgf(err, DKV_E_INVAL, "mass_target %g outside [0, 1)",
				(double)c->mass_target);
	if (c->tail_estimate == -1)
		c->tail_estimate = RT_DEF_TAIL;
	if (c->exact == -1)
		c->exact = 0;
	if ((c->tail_estimate != 0 && c->tail_estimate != 1) || (c->exact != 0 && c->exact != 1))
		return krn_msgf(err, DKV_E_INVAL, "tail_estimate %d / exact %d must be -1, 0 or 1",
				c->tail_estimate, c->exact);
	if (!(c->scale >= 0.0f) || isinf(c->scale))
		return krn_msgf(err, DKV_E_INVAL, "scale %g must be finite and >= 0",
				(double)c->scale);
	if (c->scale == 0.0f)
		c->scale = 1.0f / sqrtf((float)c->head_dim);
	return DKV_OK;
}

int rt_config_resolve(const dkv_seq_config *cfg, dkv_seq_config *out, char *err)
{
	dkv_seq_config c;
	size_t known = offsetof(dkv_seq_config, reserved);

	if (!cfg)
		return krn_msgf(err, DKV_E_INVAL, "config is NULL");
	if (cfg->struct_size < known || cfg->struct_size > sizeof(c))
		return krn_msgf(err, DKV_E_INVAL,
				"struct_size %u unknown: call dkv_seq_config_init() first",
				cfg->struct_size);
	memset(&c, 0, sizeof(c));
	memcpy(&c, cfg, cfg->struct_size);
	for (size_t i = 0; i < sizeof(c.reserved) / sizeof(c.reserved[0]); i++)
		if (c.reserved[i])
			return krn_msgf(err, DKV_E_INVAL, "reserved[%zu] must be zero", i);
	int rc = check_geometry(&c, err);
	if (rc == DKV_OK)
		rc = resolve_knobs(&c, err);
	if (rc == DKV_OK) {
		c.struct_size = sizeof(c);
		*out = c;
	}
	return rc;
}
