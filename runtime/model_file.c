/*
 * model_file.c - a sequence's learned models to and from a model file
 * (model.h): read at open (hash_model) or by rt_seq_model_load, the
 * trained heads taken over and their keys re-encoded; written by
 * rt_seq_model_save.
 */
#include <string.h>

#include "engine_int.h"
#include "model.h"

/* Swap head h's model for m (taken over) and re-encode its stored keys. */
static void swap_model(struct rt_seq *s, struct rt_layer *L, uint32_t h, struct rt_lhead *m)
{
	rt_take_model(L, h, m);
	rt_encode_range(s, L, h, 0, L->store.len);
}

/* Take over every trained head of m (its layer layer0 + l for our layer l). */
static void model_apply(struct rt_seq *s, struct rt_model *m, uint32_t layer0)
{
	const dkv_seq_config *c = &s->cfg;

	for (uint32_t l = 0; l < c->n_layers; l++) {
		struct rt_layer *L = &s->layers[l];
		for (uint32_t h = 0; h < c->n_kv_heads; h++) {
			size_t i = (size_t)(layer0 + l) * c->n_kv_heads + h;
			if (!m->trained[i])
				continue;
			swap_model(s, L, h, &m->heads[i]);
			memset(&m->heads[i], 0, sizeof(m->heads[i]));
			L->trained = 1;
		}
	}
}

/* Bytes a model of geometry g takes while it is read (every head). */
static uint64_t model_read_bytes(const struct rt_model *g)
{
	return (uint64_t)g->n_layers * g->n_kv_heads *
	       (rt_lhead_floats(g->bits, g->dim, g->hidden) * 4 + sizeof(struct rt_lhead) + 1);
}

/*
 * Take over m's trained heads; those wider than RT_MODEL_HIDDEN (which
 * seq_fixed_bytes counts) are charged for good, in model_bytes.
 */
static int model_keep(struct rt_seq *s, struct rt_model *m, char *err)
{
	uint64_t per = rt_lhead_floats(m->bits, m->dim, m->hidden), bytes = 0;
	uint64_t base = rt_lhead_floats(m->bits, m->dim, RT_MODEL_HIDDEN);

	per = per > base ? (per - base) * 4 : 0;
	for (size_t i = 0; i < (size_t)m->n_layers * m->n_kv_heads; i++)
		bytes += m->trained[i] ? per : 0;
	if (rt_mem_take(s->eng, bytes))
		return krn_msgf(err, DKV_E_NOSPACE, "memory limit: the model's %llu more bytes "
				"would exceed it", (unsigned long long)bytes);
	s->model_bytes = bytes;
	model_apply(s, m, 0);
	return DKV_OK;
}

/*
 * hash_model at open: a file for exactly this geometry, refused before
 * anything is allocated otherwise; reading it is charged to the memory
 * limit first.
 */
int rt_seq_model_open(struct rt_seq *s, const char *path, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	struct rt_model want = { .bits = c->hash_bits, .dim = c->head_dim,
				 .n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads };
	struct rt_model g, m;
	uint64_t reading;
	int rc = rt_model_header(path, &g, err);

	if (rc == DKV_OK)
		rc = rt_model_check(&g, want.bits, want.dim, want.n_layers, want.n_kv_heads,
				    err);
	if (rc)
		return rc;
	reading = model_read_bytes(&g);
	if (rt_mem_take(s->eng, reading))
		return krn_msgf(err, DKV_E_NOSPACE, "memory limit: reading the model takes %llu "
				"bytes", (unsigned long long)reading);
	want.hidden = g.hidden;
	rc = rt_model_read_for(path, &want, &m, err);
	if (rc == DKV_OK) {
		rc = model_keep(s, &m, err);
		rt_model_free(&m);
	}
	rt_mem_give(s->eng, reading);
	return rc;
}

int rt_seq_model_load(struct rt_seq *s, const char *path, uint32_t layer0, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	struct rt_model m;
	uint32_t need = c->n_layers + layer0;
	int rc;

	memset(&m, 0, sizeof(m));
	if (c->hash != DKV_HASH_LEARNED)
		return krn_msgf(err, DKV_E_INVAL, "a model file needs hash DKV_HASH_LEARNED");
	for (uint32_t l = 0; l < c->n_layers; l++)
		rt_train_finish(s, &s->layers[l]);
	rc = rt_model_read(path, &m, err);
	/* the file may hold more layers; ours are layer0, layer0 + 1, ... */
	if (rc == DKV_OK)
		rc = rt_model_check(&m, c->hash_bits, c->head_dim,
				    m.n_layers > need ? m.n_layers : need, c->n_kv_heads,
				    err);
	if (rc == DKV_OK)
		model_apply(s, &m, layer0);
	if (m.heads)
		rt_model_free(&m);
	return rc;
}

int rt_seq_model_save(const struct rt_seq *s, const char *path, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	struct rt_model m;
	int rc;

	if (c->hash != DKV_HASH_LEARNED)
		return krn_msgf(err, DKV_E_INVAL, "only a DKV_HASH_LEARNED sequence has a model");
	if (rt_model_alloc(&m, c->hash_bits, c->head_dim, RT_MODEL_HIDDEN, c->n_layers,
			   c->n_kv_heads))
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for the model");
	for (uint32_t l = 0; l < c->n_layers; l++)
		for (uint32_t h = 0; h < c->n_kv_heads; h++) {
			const struct rt_lhead *lm = &s->layers[l].lm[h];
			size_t i = (size_t)l * c->n_kv_heads + h;
			if (!lm->buf)
				continue;
			if (lm->hidden != m.hidden) {
				rt_model_free(&m);
				return krn_msgf(err, DKV_E_INVAL, "layer %u head %u: hidden "
						"width %u, the file holds %u", l, h,
						lm->hidden, m.hidden);
			}
			memcpy(m.heads[i].buf, lm->buf,
			       rt_lhead_floats(lm->bits, lm->dim, lm->hidden) * sizeof(float));
			m.trained[i] = 1;
		}
	rc = rt_model_write(&m, path, err);
	rt_model_free(&m);
	return rc;
}
