/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader and the llama model
 * built on it: parse, check shapes, then (when a file passes) two tokens
 * through the forward pass and every token's text.  Build by hand, e.g.
 *   clang -g -fsanitize=fuzzer,address,undefined tests/model/fuzz_gguf.c \
 *     tests/model/gguf.c tests/model/llama.c -lm -o fuzz_gguf
 * and seed it with ../shared/data/models/stories260K.gguf.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "llama.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Attention stand-in: each query head gets its kv head's value. */
static int attend(void *ctx, uint32_t layer, uint64_t pos, const float *q,
		  const float *k, const float *v, float *out)
{
	const struct llama *m = ctx;
	uint32_t g = m->n_heads / m->n_kv_heads;

	for (uint32_t h = 0; h < m->n_heads; h++)
		memcpy(out + (size_t)h * m->head_dim, v + (size_t)(h / g) * m->head_dim,
		       m->head_dim * sizeof(float));
	return 0;
}

static void exercise(const struct llama *m)
{
	struct llama_state st;
	char piece[64];
	uint32_t tok = m->bos;

	for (uint32_t t = 0; t < m->vocab; t++)
		llama_piece(m, m->bos, t, piece, sizeof(piece));
	if ((uint64_t)m->dim * m->hidden > (1u << 22) || llama_state_init(m, &st))
		return;
	for (uint32_t pos = 0; pos < 2; pos++) {
		if (llama_forward(m, &st, tok, pos, attend, (void *)m))
			break;
		tok = llama_argmax(m, st.logits);
	}
	llama_state_free(&st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	struct llama m;
	char err[256];

	if (!buf)
		return 0;
	memcpy(buf, data, size);
	memset(&m, 0, sizeof(m));
	if (gguf_parse(buf, size, &m.g, err, sizeof(err)))
		return 0; /* gguf_parse freed buf */
	if (llama_init(&m, err, sizeof(err)) == 0)
		exercise(&m);
	llama_free(&m);
	return 0;
}
