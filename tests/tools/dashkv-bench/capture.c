/*
 * capture.c - dashkv-bench capture files (DKVCAPT1, runtime/capture.h):
 * the capture command writes the generator's keys and queries at every
 * position; quality --capture reads one as its data source.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gen/kvgen.h"
#include "capture.h"
#include "bench.h"

/* --capture: read the file, take its geometry; 0 or exits. */
void load_capture(struct opts *v, struct rt_capture *c)
{
	char err[KRN_MSGLEN];
	int rc = rt_capture_read(v->capture, c, err);

	if (rc) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		exit(1);
	}
	if (v->layer >= c->n_layers || c->head_dim % 8 || v->queries >= c->n_tokens) {
		fprintf(stderr, "dashkv-bench: %s: layer %u of %u, head_dim %u (a multiple of 8), "
			"%u queries of %u tokens: cannot use it\n", v->capture, v->layer,
			c->n_layers, c->head_dim, v->queries, c->n_tokens);
		exit(2);
	}
	v->heads = c->n_heads;
	v->kv_heads = c->n_kv_heads;
	v->dim = c->head_dim;
	v->cap = c;
}

/*
 * capture: the generator's keys and draw-0 queries at every position
 * into a DKVCAPT1 file; layer l is the generator with seed + l.
 */
int cmd_capture(const struct opts *o)
{
	struct rt_capture_writer w;
	uint32_t n = (uint32_t)o->tokens[0];
	size_t tok = (size_t)o->kv_heads * o->dim, all = (size_t)o->heads * o->dim;
	float *k = xmalloc(CHUNK * tok * sizeof(float)), *q = xmalloc(CHUNK * all * sizeof(float));
	char err[KRN_MSGLEN];

	if (rt_capture_begin(&w, o->out, o->dim, o->heads, o->kv_heads, o->layers, n, err)) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		return 1;
	}
	for (uint32_t l = 0; l < o->layers; l++) {
		struct opts v = *o;
		v.seed = o->seed + l;
		struct kvgen *g = make_gen(&v);
		for (uint32_t i = 0; i < n; i += CHUNK) {
			uint32_t m = n - i < CHUNK ? n - i : CHUNK;
			kvgen_kv(g, i, m, k, NULL);
			rt_capture_put(&w, k, m * tok);
		}
		for (uint32_t i = 0; i < n; i += CHUNK) {
			uint32_t m = n - i < CHUNK ? n - i : CHUNK;
			for (uint32_t j = 0; j < m; j++)
				kvgen_queries(g, i + j, 0, q + j * all);
			rt_capture_put(&w, q, m * all);
		}
		kvgen_free(g);
	}
	free(k);
	free(q);
	if (rt_capture_end(&w, err)) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		return 1;
	}
	printf("wrote %s: %u layers x %u tokens, %u q heads / %u kv heads, head_dim %u\n",
	       o->out, o->layers, n, o->heads, o->kv_heads, o->dim);
	return 0;
}
