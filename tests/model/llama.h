/*
 * llama.h - a llama forward pass over F32 GGUF weights (stories260K and
 * other small llama2.c-style models), with the attention handed to a
 * callback: the caller serves it (here, through libdashkv-client).
 */
#ifndef DKV_LLAMA_H
#define DKV_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

struct llama_layer {
	const float *attn_norm, *wq, *wk, *wv, *wo;
	const float *ffn_norm, *w_gate, *w_down, *w_up;
};

struct llama {
	struct gguf g;
	uint32_t dim, n_layers, n_heads, n_kv_heads, head_dim, hidden, vocab;
	uint32_t rope_dims;
	uint64_t ctx;
	float eps, theta;
	const float *tok_embd; /* [vocab][dim] */
	const float *out_norm; /* [dim] */
	const float *output;   /* [vocab][dim] (tok_embd when tied) */
	struct llama_layer *layers;
	struct gguf_str *tokens; /* vocab entries */
	uint32_t bos, eos;
};

/*
 * Attention of one layer for the token at position pos: q [n_heads][head_dim]
 * and k, v [n_kv_heads][head_dim] after RoPE; writes out [n_heads][head_dim].
 * Returns 0, or nonzero to stop the forward pass.
 */
typedef int (*llama_attend_fn)(void *ctx, uint32_t layer, uint64_t pos, const float *q,
			       const float *k, const float *v, float *out);

struct llama_state {
	float *x, *xb, *xb2, *hb, *hb2, *q, *k, *v, *att, *logits;
};

int llama_load(const char *path, struct llama *m, char *err, size_t errlen);
/* The model of an already parsed m->g (llama_load's second half). */
int llama_init(struct llama *m, char *err, size_t errlen);
void llama_free(struct llama *m);

int llama_state_init(const struct llama *m, struct llama_state *st);
void llama_state_free(struct llama_state *st);

/* One token through the model; the logits land in st->logits. */
int llama_forward(const struct llama *m, struct llama_state *st, uint32_t token,
		  uint64_t pos, llama_attend_fn attend, void *ctx);

uint32_t llama_argmax(const struct llama *m, const float *logits);

/*
 * The text of token after prev (SentencePiece: U+2581 is a space, <0xNN> a
 * byte, the first space after BOS dropped) into buf; returns its length.
 */
size_t llama_piece(const struct llama *m, uint32_t prev, uint32_t token, char *buf, size_t len);

#endif /* DKV_LLAMA_H */
