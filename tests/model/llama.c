/*
 * llama.c - the llama forward pass (see llama.h).  Weights as GGUF stores
 * them: a matrix of ne = [in, out] is out rows of in floats.  RoPE rotates
 * adjacent pairs (2i, 2i+1) of each head, the layout the GGUF llama
 * converters leave q and k weights in.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

#define SPM_SPACE "\xe2\x96\x81" /* U+2581 */

static int tensor(const struct llama *m, const char *name, uint64_t ne0, uint64_t ne1,
		  const float **out, char *err, size_t errlen)
{
	const struct gguf_tensor *t = gguf_find_tensor(&m->g, name);
	uint64_t want1 = ne1 ? ne1 : 1;

	if (!t) {
		snprintf(err, errlen, "tensor '%s' missing", name);
		return -1;
	}
	if (!t->data) {
		snprintf(err, errlen, "tensor '%s' has type %u, only F32 (0) is supported",
			 name, t->type);
		return -1;
	}
	if (t->ne[0] != ne0 || t->n_elems != ne0 * want1 || t->n_dims != (ne1 ? 2u : 1u)) {
		snprintf(err, errlen, "tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]",
			 name, (unsigned long long)t->ne[0],
			 (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1),
			 (unsigned long long)ne0, (unsigned long long)want1);
		return -1;
	}
	*out = t->data;
	return 0;
}

static int get_u32(const struct llama *m, const char *key, uint32_t lo, uint32_t hi,
		   uint32_t *out, char *err, size_t errlen)
{
	uint64_t v;

	if (gguf_get_u64(&m->g, key, &v, err, errlen))
		return -1;
	if (v < lo || v > hi) {
		snprintf(err, errlen, "metadata '%s' = %llu outside [%u, %u]", key,
			 (unsigned long long)v, lo, hi);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

static int read_hparams(struct llama *m, char *err, size_t errlen)
{
	if (get_u32(m, "llama.embedding_length", 1, 1u << 16, &m->dim, err, errlen) ||
	    get_u32(m, "llama.block_count", 1, 1024, &m->n_layers, err, errlen) ||
	    get_u32(m, "llama.attention.head_count", 1, 1024, &m->n_heads, err, errlen) ||
	    get_u32(m, "llama.attention.head_count_kv", 1, m->n_heads, &m->n_kv_heads, err, errlen) ||
	    get_u32(m, "llama.feed_forward_length", 1, 1u << 18, &m->hidden, err, errlen) ||
	    gguf_get_u64(&m->g, "llama.context_length", &m->ctx, err, errlen))
		return -1;
	if (m->dim % m->n_heads || m->n_heads % m->n_kv_heads) {
		snprintf(err, errlen, "%u heads do not divide dim %u / %u kv heads", m->n_heads,
			 m->dim, m->n_kv_heads);
		return -1;
	}
	m->head_dim = m->dim / m->n_heads;
	if (get_u32(m, "llama.rope.dimension_count", 2, m->head_dim, &m->rope_dims, err, errlen))
		return -1;
	if (m->rope_dims % 2) {
		snprintf(err, errlen, "llama.rope.dimension_count %u is odd", m->rope_dims);
		return -1;
	}
	if (gguf_get_f32(&m->g, "llama.attention.layer_norm_rms_epsilon", &m->eps, err, errlen))
		return -1;
	if (gguf_get_f32(&m->g, "llama.rope.freq_base", &m->theta, err, errlen))
		m->theta = 10000.0f;
	if (!(m->eps > 0.0f && m->eps < 1.0f) || !(m->theta > 1.0f && m->theta < 1e9f)) {
		snprintf(err, errlen, "bad eps %g or rope theta %g", (double)m->eps, (double)m->theta);
		return -1;
	}
	return 0;
}

static int read_tokens(struct llama *m, char *err, size_t errlen)
{
	const struct gguf_kv *kv = gguf_find_kv(&m->g, "tokenizer.ggml.tokens");

	if (!kv || kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING ||
	    kv->arr_n == 0 || kv->arr_n > (1u << 20)) {
		snprintf(err, errlen, "tokenizer.ggml.tokens missing or not a string array");
		return -1;
	}
	m->vocab = (uint32_t)kv->arr_n;
	m->tokens = calloc(m->vocab, sizeof(*m->tokens));
	if (!m->tokens) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	gguf_str_array(kv, m->tokens, m->vocab);
	if (get_u32(m, "tokenizer.ggml.bos_token_id", 0, m->vocab - 1, &m->bos, err, errlen) ||
	    get_u32(m, "tokenizer.ggml.eos_token_id", 0, m->vocab - 1, &m->eos, err, errlen))
		return -1;
	return 0;
}

static int read_layer(struct llama *m, uint32_t l, char *err, size_t errlen)
{
	struct llama_layer *L = &m->layers[l];
	uint32_t d = m->dim, kvd = m->n_kv_heads * m->head_dim;
	char n[9][64];
	static const char *const part[9] = {
		"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
		"ffn_norm", "ffn_gate", "ffn_down", "ffn_up"
	};

	for (int i = 0; i < 9; i++)
		snprintf(n[i], sizeof(n[i]), "blk.%u.%s.weight", l, part[i]);
	if (tensor(m, n[0], d, 0, &L->attn_norm, err, errlen) ||
	    tensor(m, n[1], d, d, &L->wq, err, errlen) ||
	    tensor(m, n[2], d, kvd, &L->wk, err, errlen) ||
	    tensor(m, n[3], d, kvd, &L->wv, err, errlen) ||
	    tensor(m, n[4], d, d, &L->wo, err, errlen) ||
	    tensor(m, n[5], d, 0, &L->ffn_norm, err, errlen) ||
	    tensor(m, n[6], d, m->hidden, &L->w_gate, err, errlen) ||
	    tensor(m, n[7], m->hidden, d, &L->w_down, err, errlen) ||
	    tensor(m, n[8], d, m->hidden, &L->w_up, err, errlen))
		return -1;
	return 0;
}

static int read_weights(struct llama *m, char *err, size_t errlen)
{
	if (tensor(m, "token_embd.weight", m->dim, m->vocab, &m->tok_embd, err, errlen) ||
	    tensor(m, "output_norm.weight", m->dim, 0, &m->out_norm, err, errlen))
		return -1;
	if (gguf_find_tensor(&m->g, "output.weight")) {
		if (tensor(m, "output.weight", m->dim, m->vocab, &m->output, err, errlen))
			return -1;
	} else {
		m->output = m->tok_embd;
	}
	m->layers = calloc(m->n_layers, sizeof(*m->layers));
	if (!m->layers) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (uint32_t l = 0; l < m->n_layers; l++)
		if (read_layer(m, l, err, errlen))
			return -1;
	return 0;
}

int llama_init(struct llama *m, char *err, size_t errlen)
{
	const struct gguf_kv *arch = gguf_find_kv(&m->g, "general.architecture");
	uint64_t alen;

	if (!arch || arch->type != GGUF_STRING) {
		snprintf(err, errlen, "general.architecture missing");
		return -1;
	}
	memcpy(&alen, arch->val, 8);
	if (alen != 5 || memcmp(arch->val + 8, "llama", 5)) {
		snprintf(err, errlen, "architecture is not llama");
		return -1;
	}
	if (read_hparams(m, err, errlen) || read_tokens(m, err, errlen) ||
	    read_weights(m, err, errlen))
		return -1;
	return 0;
}

int llama_load(const char *path, struct llama *m, char *err, size_t errlen)
{
	char msg[256];

	memset(m, 0, sizeof(*m));
	if (gguf_load(path, &m->g, err, errlen))
		return -1;
	if (llama_init(m, msg, sizeof(msg)) == 0)
		return 0;
	snprintf(err, errlen, "%s: %s", path, msg);
	llama_free(m);
	return -1;
}

void llama_free(struct llama *m)
{
	gguf_free(&m->g);
	free(m->layers);
	free(m->tokens);
	memset(m, 0, sizeof(*m));
}

int llama_state_init(const struct llama *m, struct llama_state *st)
{
	size_t d = m->dim, kvd = (size_t)m->n_kv_heads * m->head_dim;

	st->x = calloc(d, sizeof(float));
	st->xb = calloc(d, sizeof(float));
	st->xb2 = calloc(d, sizeof(float));
	st->hb = calloc(m->hidden, sizeof(float));
	st->hb2 = calloc(m->hidden, sizeof(float));
	st->q = calloc(d, sizeof(float));
	st->k = calloc(kvd, sizeof(float));
	st->v = calloc(kvd, sizeof(float));
	st->att = calloc(d, sizeof(float));
	st->logits = calloc(m->vocab, sizeof(float));
	if (!st->x || !st->xb || !st->xb2 || !st->hb || !st->hb2 || !st->q || !st->k ||
	    !st->v || !st->att || !st->logits) {
		llama_state_free(st);
		return -1;
	}
	return 0;
}

void llama_state_free(struct llama_state *st)
{
	free(st->x);
	free(st->xb);
	free(st->xb2);
	free(st->hb);
	free(st->hb2);
	free(st->q);
	free(st->k);
	free(st->v);
	free(st->att);
	free(st->logits);
	memset(st, 0, sizeof(*st));
}

static void rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps)
{
	double ss = 0;

	for (uint32_t i = 0; i < n; i++)
		ss += (double)x[i] * x[i];
	float r = 1.0f / sqrtf((float)(ss / n) + eps);
	for (uint32_t i = 0; i < n; i++)
		out[i] = w[i] * (x[i] * r);
}

/* out[r] = sum_c w[r][c] * x[c] for rows r < n_out, columns c < n_in. */
static void matvec(float *out, const float *w, const float *x, uint32_t n_in, uint32_t n_out)
{
	for (uint32_t r = 0; r < n_out; r++) {
		const float *row = w + (size_t)r * n_in;
		float s = 0.0f;
		for (uint32_t c = 0; c < n_in; c++)
			s += row[c] * x[c];
		out[r] = s;
	}
}

/* Rotates adjacent pairs of the first rope_dims of each head. */
static void rope(const struct llama *m, float *v, uint32_t n_heads, uint64_t pos)
{
	for (uint32_t h = 0; h < n_heads; h++) {
		float *x = v + (size_t)h * m->head_dim;
		for (uint32_t i = 0; i < m->rope_dims; i += 2) {
			double freq = pow((double)m->theta, -(double)i / m->rope_dims);
			double a = (double)pos * freq;
			float c = (float)cos(a), s = (float)sin(a);
			float x0 = x[i], x1 = x[i + 1];
			x[i] = x0 * c - x1 * s;
			x[i + 1] = x0 * s + x1 * c;
		}
	}
}

static int attention_block(const struct llama *m, struct llama_state *st, uint32_t l,
			   uint64_t pos, llama_attend_fn attend, void *ctx)
{
	const struct llama_layer *L = &m->layers[l];
	uint32_t d = m->dim, kvd = m->n_kv_heads * m->head_dim;

	rmsnorm(st->xb, st->x, L->attn_norm, d, m->eps);
	matvec(st->q, L->wq, st->xb, d, d);
	matvec(st->k, L->wk, st->xb, d, kvd);
	matvec(st->v, L->wv, st->xb, d, kvd);
	rope(m, st->q, m->n_heads, pos);
	rope(m, st->k, m->n_kv_heads, pos);
	if (attend(ctx, l, pos, st->q, st->k, st->v, st->att))
		return -1;
	matvec(st->xb2, L->wo, st->att, d, d);
	for (uint32_t i = 0; i < d; i++)
		st->x[i] += st->xb2[i];
	return 0;
}

static void ffn_block(const struct llama *m, struct llama_state *st, uint32_t l)
{
	const struct llama_layer *L = &m->layers[l];
	uint32_t d = m->dim;

	rmsnorm(st->xb, st->x, L->ffn_norm, d, m->eps);
	matvec(st->hb, L->w_gate, st->xb, d, m->hidden);
	matvec(st->hb2, L->w_up, st->xb, d, m->hidden);
	for (uint32_t i = 0; i < m->hidden; i++) {
		float g = st->hb[i];
		st->hb[i] = g / (1.0f + expf(-g)) * st->hb2[i]; /* SwiGLU */
	}
	matvec(st->xb2, L->w_down, st->hb, m->hidden, d);
	for (uint32_t i = 0; i < d; i++)
		st->x[i] += st->xb2[i];
}

int llama_forward(const struct llama *m, struct llama_state *st, uint32_t token,
		  uint64_t pos, llama_attend_fn attend, void *ctx)
{
	if (token >= m->vocab)
		return -1;
	memcpy(st->x, m->tok_embd + (size_t)token * m->dim, m->dim * sizeof(float));
	for (uint32_t l = 0; l < m->n_layers; l++) {
		if (attention_block(m, st, l, pos, attend, ctx))
			return -1;
		ffn_block(m, st, l);
	}
	rmsnorm(st->xb, st->x, m->out_norm, m->dim, m->eps);
	matvec(st->logits, m->output, st->xb, m->dim, m->vocab);
	return 0;
}

uint32_t llama_argmax(const struct llama *m, const float *logits)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < m->vocab; i++)
		if (logits[i] > logits[best])
			best = i;
	return best;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

size_t llama_piece(const struct llama *m, uint32_t prev, uint32_t token, char *buf, size_t len)
{
	const struct gguf_str *t;
	size_t o = 0, i = 0;

	if (!len)
		return 0;
	buf[0] = '\0';
	if (token >= m->vocab || token == m->bos || token == m->eos)
		return 0;
	t = &m->tokens[token];
	if (t->len == 6 && memcmp(t->s, "<0x", 3) == 0 && t->s[5] == '>' &&
	    hexval(t->s[3]) >= 0 && hexval(t->s[4]) >= 0) {
		if (len > 1) {
			buf[o++] = (char)(hexval(t->s[3]) * 16 + hexval(t->s[4]));
			buf[o] = '\0';
		}
		return o;
	}
	if (prev == m->bos && t->len >= 3 && memcmp(t->s, SPM_SPACE, 3) == 0)
		i = 3;
	while (i < t->len && o + 1 < len) {
		if (i + 3 <= t->len && memcmp(t->s + i, SPM_SPACE, 3) == 0) {
			buf[o++] = ' ';
			i += 3;
		} else {
			buf[o++] = t->s[i++];
		}
	}
	buf[o] = '\0';
	return o;
}
