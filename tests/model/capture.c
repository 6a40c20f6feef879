/*
 * capture.c - buffers a run's queries and keys and writes them with the
 * runtime's Q/K capture writer (runtime/capture.h), the one dashkv-bench
 * uses and dashkv-train reads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "runtime/capture.h"

int capture_init(struct capture *c, uint32_t head_dim, uint32_t n_heads,
		 uint32_t n_kv_heads, uint32_t n_layers, uint32_t cap)
{
	size_t per = (size_t)n_layers * cap;

	memset(c, 0, sizeof(*c));
	c->head_dim = head_dim;
	c->n_heads = n_heads;
	c->n_kv_heads = n_kv_heads;
	c->n_layers = n_layers;
	c->cap = cap;
	c->k = calloc(per * n_kv_heads * head_dim, sizeof(float));
	c->q = calloc(per * n_heads * head_dim, sizeof(float));
	if (!c->k || !c->q) {
		capture_free(c);
		return -1;
	}
	return 0;
}

void capture_free(struct capture *c)
{
	free(c->k);
	free(c->q);
	memset(c, 0, sizeof(*c));
}

void capture_add(struct capture *c, uint32_t l, uint32_t t, const float *q, const float *k)
{
	size_t kr = (size_t)c->n_kv_heads * c->head_dim, qr = (size_t)c->n_heads * c->head_dim;

	if (l >= c->n_layers || t >= c->cap)
		return;
	memcpy(c->k + ((size_t)l * c->cap + t) * kr, k, kr * sizeof(float));
	memcpy(c->q + ((size_t)l * c->cap + t) * qr, q, qr * sizeof(float));
	if (t + 1 > c->n_tokens)
		c->n_tokens = t + 1;
}

int capture_write(const struct capture *c, const char *path, char *err)
{
	size_t kr = (size_t)c->n_kv_heads * c->head_dim, qr = (size_t)c->n_heads * c->head_dim;
	struct rt_capture_writer w;

	if (rt_capture_begin(&w, path, c->head_dim, c->n_heads, c->n_kv_heads, c->n_layers,
			     c->n_tokens, err))
		return -1;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		rt_capture_put(&w, c->k + (size_t)l * c->cap * kr, c->n_tokens * kr);
		rt_capture_put(&w, c->q + (size_t)l * c->cap * qr, c->n_tokens * qr);
	}
	return rt_capture_end(&w, err) ? -1 : 0;
}
