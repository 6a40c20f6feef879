/*
 * capture.h - post-RoPE queries and keys of a run, written in the Q/K
 * capture format of dashkv-train(1): "DKVCAPT1", eight uint32 (version 1,
 * head_dim, n_heads, n_kv_heads, n_layers, n_tokens, dtype 0 = f32, flags
 * 0), per layer keys [n_tokens][n_kv_heads][head_dim] then queries
 * [n_tokens][n_heads][head_dim], then a CRC-32 (IEEE) of all bytes before
 * it.  Little-endian, no padding.
 */
#ifndef DKV_CAPTURE_H
#define DKV_CAPTURE_H

#include <stddef.h>
#include <stdint.h>

struct capture {
	uint32_t head_dim, n_heads, n_kv_heads, n_layers;
	uint32_t cap, n_tokens;
	float *k; /* [n_layers][cap][n_kv_heads][head_dim] */
	float *q; /* [n_layers][cap][n_heads][head_dim] */
};

int capture_init(struct capture *c, uint32_t head_dim, uint32_t n_heads,
		 uint32_t n_kv_heads, uint32_t n_layers, uint32_t cap);
void capture_free(struct capture *c);
/* Records layer l of token t (t < cap); n_tokens becomes the highest t + 1. */
void capture_add(struct capture *c, uint32_t l, uint32_t t, const float *q, const float *k);
/* Writes the file (runtime/capture.h's writer); -1 with a message in err on failure. */
int capture_write(const struct capture *c, const char *path, char *err);

#endif /* DKV_CAPTURE_H */
