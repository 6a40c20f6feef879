/*
 * engine.c - engines and their memory accounting, sequences, the append
 * and the order of work of a step.
 *
 * A step is: validate everything (shapes, finite values, limits), reserve
 * every byte it will need (pages and scratch), then append and attend,
 * which cannot fail.  So an append is all or nothing.  What the step
 * calls lives beside it: input.c, scratch.c, attend.c, fit.c
 * (engine_int.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "hash.h"
#include "krn.h"
#include "model.h"
#include "plan.h"
#include "pool.h"
#include "proj.h"
#include "store.h"

/* ---- engine and memory accounting ---- */

/*
 * GPU shards (shard/gpu.h): the GPU module, the plan (or CUDA's device
 * list where hwloc sees no GPU) and unbound threads when there is no plan.
 */
static int engine_gpu_shards(struct rt_engine *e, const char *spec, char *err)
{
	char perr[KRN_MSGLEN];
	int rc;

	if (shard_topo_load(&e->topo, NULL, NULL, perr))
		e->topo = NULL;
	rc = shard_gpus_open(&e->gpus, e->topo, spec, &e->plan, perr);
	if (rc)
		return krn_msgf(err, rc, "DASHKV_SHARDS=%s: %s", spec, perr);
	e->n_shards = shard_gpus_count(e->gpus);
	return shard_pool_new(&e->pool, e->n_shards, e->plan, err);
}

/*
 * The shards of the engine's sequences from a plan spec (plan.h).  Unset
 * or "auto" on a machine whose topology cannot be read gives one unbound
 * shard.
 */
static int engine_shards(struct rt_engine *e, const char *spec, char *err)
{
	int is_auto = !spec || !*spec || !strcmp(spec, "auto");
	char perr[KRN_MSGLEN];

	if (spec && !strncmp(spec, "gpu:", 4))
		return engine_gpu_shards(e, spec, err);
	if (shard_topo_load(&e->topo, NULL, NULL, perr)) {
		if (!is_auto)
			return krn_msgf(err, DKV_E_INVAL, "DASHKV_SHARDS=%s: %s", spec, perr);
		e->topo = NULL;
	} else if (shard_plan_make(e->topo, spec, &e->plan, perr)) {
		return krn_msgf(err, DKV_E_INVAL, "DASHKV_SHARDS=%s: %s", spec ? spec : "", perr);
	}
	e->n_shards = e->plan ? e->plan->n : 1;
	if (e->plan && e->plan->n_nodes > 1) {
		e->node = calloc(e->n_shards, sizeof(int));
		if (!e->node)
			return krn_msgf(err, DKV_E_NOMEM, "out of memory for the shard plan");
		for (uint32_t i = 0; i < e->n_shards; i++)
			e->node[i] = (int)e->plan->shards[i].numa;
	}
	return shard_pool_new(&e->pool, e->n_shards, e->plan, err);
}

int rt_engine_new(struct rt_engine **out, char *err)
{
	return rt_engine_new_shards(out, getenv("DASHKV_SHARDS"), err);
}

int rt_engine_new_shards(struct rt_engine **out, const char *spec, char *err)
{
	struct rt_engine *e = calloc(1, sizeof(*e));
	char kerr[KRN_MSGLEN];
	int rc;

	if (krn_init(kerr)) {
		free(e);
		return krn_msgf(err, DKV_E_INVAL, "%s", kerr);
	}
	if (!e)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for the engine");
	pthread_mutex_init(&e->lock, NULL);
	rc = engine_shards(e, spec, err);
	if (rc) {
		rt_engine_free(e);
		return rc;
	}
	*out = e;
	return DKV_OK;
}

void rt_engine_free(struct rt_engine *e)
{
	if (!e)
		return;
	shard_pool_free(e->pool);
	shard_gpus_close(e->gpus);
	shard_plan_free(e->plan);
	free(e->node);
	if (e->topo)
		shard_topo_free(e->topo);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

uint32_t rt_engine_shards(const struct rt_engine *e)
{
	return e->n_shards;
}

uint64_t rt_engine_gpu_fallbacks(const struct rt_engine *e, char *last)
{
	if (last)
		*last = '\0';
	return e->gpus ? shard_gpus_fallbacks(e->gpus, last) : 0;
}

void rt_engine_describe(const struct rt_engine *e, char *buf, size_t len)
{
	char why[KRN_MSGLEN];
	uint32_t unbound = shard_pool_unbound(e->pool, why);
	size_t at;

	if (e->gpus)
		shard_gpus_describe(e->gpus, buf, len);
	else
		snprintf(buf, len, "%u CPU shard%s", e->n_shards, e->n_shards == 1 ? "" : "s");
	at = strlen(buf);
	if (unbound)
		snprintf(buf + at, len - at, "; %u worker%s not bound as planned: %s", unbound,
			 unbound == 1 ? "" : "s", why);
}

void rt_engine_set_limit(struct rt_engine *e, uint64_t bytes)
{
	pthread_mutex_lock(&e->lock);
	e->limit = bytes;
	pthread_mutex_unlock(&e->lock);
}

uint64_t rt_engine_used(const struct rt_engine *e)
{
	return __atomic_load_n(&e->used, __ATOMIC_RELAXED);
}

int rt_mem_take(struct rt_engine *e, uint64_t bytes)
{
	int rc = 0;

	pthread_mutex_lock(&e->lock);
	if (e->limit && e->used + bytes > e->limit)
		rc = -1;
	else
		__atomic_store_n(&e->used, e->used + bytes, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->lock);
	return rc;
}

void rt_mem_give(struct rt_engine *e, uint64_t bytes)
{
	pthread_mutex_lock(&e->lock);
	__atomic_store_n(&e->used, e->used - bytes, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->lock);
}

/* ---- open / close ---- */

static void seq_free(struct rt_seq *s)
{
	if (s->layers) {
		for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
			/* a fit reads the pages: first it ends */
			if (s->layers[l].fit)
				rt_fit_wait_free(s->layers[l].fit);
			shard_layer_free(&s->layers[l].store);
			for (uint32_t p = 0; p < s->layers[l].n_own; p++)
				free(s->layers[l].codes_own[p]);
			free(s->layers[l].codes_own);
			if (s->layers[l].hash)
				for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++)
					rt_hash_free(&s->layers[l].hash[h]);
			free(s->layers[l].hash);
			if (s->layers[l].lm)
				for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++)
					rt_lhead_free(&s->layers[l].lm[h]);
			free(s->layers[l].lm);
			free(s->layers[l].qcap);
		}
		free(s->layers);
	}
	shard_gpu_seq_free(s->gpu); /* after the pages: they are its pinned memory */
	rt_scratch_free(&s->sc);
	free(s->P);
	free(s->trace_idx);
	free(s->trace_n);
	free(s);
}

static int layers_init(struct rt_seq *s)
{
	const dkv_seq_config *c = &s->cfg;

	s->layers = calloc(c->n_layers, sizeof(*s->layers));
	if (!s->layers)
		return -1;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		struct rt_layer *L = &s->layers[l];
		shard_layer_init(&L->store, &s->geom);
		L->hash = calloc(c->n_kv_heads, sizeof(*L->hash));
		if (!L->hash)
			return -1;
		for (uint32_t h = 0; h < c->n_kv_heads; h++)
			if (rt_hash_init(&L->hash[h], s->P, c->hash_bits, c->head_dim))
				return -1;
		if (c->hash != DKV_HASH_LEARNED)
			continue;
		L->lm = calloc(c->n_kv_heads, sizeof(*L->lm));
		L->qcap = malloc((size_t)c->n_kv_heads * RT_QCAP * c->head_dim * sizeof(float));
		L->q_rng = 0x71756572ull + l;
		if (!L->lm || !L->qcap)
			return -1;
	}
	return 0;
}

static uint64_t seq_fixed_bytes(const struct rt_seq *s)
{
	const dkv_seq_config *c = &s->cfg;
	uint64_t learned = c->hash != DKV_HASH_LEARNED ? 0 :
		(RT_QCAP * c->head_dim +
		 rt_lhead_floats(c->hash_bits, c->head_dim, RT_MODEL_HIDDEN)) * 4;

	return s->sc.fixed_bytes + (uint64_t)c->hash_bits * c->head_dim * 4 +
	       (uint64_t)c->n_layers * c->n_kv_heads *
	       ((c->head_dim + c->hash_bits + 1) * 4 + learned);
}

/* On GPU shards: the sequence's device state; its pages become pinned. */
static int seq_gpu_init(struct rt_seq *s, char *err)
{
	int rc;

	if (!s->eng->gpus)
		return DKV_OK;
	rc = shard_gpu_seq_new(&s->gpu, s->eng->gpus, &s->geom, s->cfg.n_layers, s->group,
			       s->cfg.top_k, err);
	for (uint32_t l = 0; rc == DKV_OK && l < s->cfg.n_layers; l++)
		s->layers[l].gpu = shard_gpu_layer(s->gpu, l);
	return rc;
}

int rt_seq_open(struct rt_engine *e, const dkv_seq_config *cfg,
		struct rt_seq **out, char *err)
{
	struct rt_seq *s;
	int rc;

	s = calloc(1, sizeof(*s));
	if (!s)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for the sequence");
	rc = rt_config_resolve(cfg, &s->cfg, err);
	if (rc) {
		free(s);
		return rc;
	}
	s->eng = e;
	s->group = s->cfg.n_q_heads / s->cfg.n_kv_heads;
	s->geom.n_kv_heads = s->cfg.n_kv_heads;
	s->geom.head_dim = s->cfg.head_dim;
	s->geom.dtype = (uint32_t)s->cfg.dtype;
	s->geom.elt_size = s->cfg.dtype == DKV_F32 ? 4 : 2;
	s->geom.words = s->cfg.hash_bits / 64;
	/* dense attention reads no codes (GPU shards re-rank on the host) */
	if (s->cfg.exact)
		s->cfg.rerank = DKV_RERANK_OFF;
	s->geom.sketch = s->cfg.rerank == DKV_RERANK_OFF ? 0 : s->cfg.head_dim / 2;
	s->geom.n_shards = e->n_shards;
	s->geom.node = e->node;
	s->trace_cap = s->cfg.sink_tokens + s->cfg.recent_window + s->cfg.top_k;
	s->swap_work = RT_FIT_WORK;
	s->P = rt_hash_projection(s->cfg.hash_bits, s->cfg.head_dim,
				  RT_HASH_SEED(s->cfg.head_dim));
	s->trace_n = calloc(s->cfg.n_q_heads, sizeof(uint32_t));
	if (!s->P || !s->trace_n || layers_init(s) || rt_scratch_fixed(s)) {
		seq_free(s);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory opening the sequence");
	}
	rc = seq_gpu_init(s, err);
	if (rc) {
		seq_free(s);
		return rc;
	}
	if (rt_mem_take(e, seq_fixed_bytes(s))) {
		seq_free(s);
		return krn_msgf(err, DKV_E_NOSPACE, "memory limit reached opening the sequence");
	}
	rc = s->cfg.hash_model ? rt_seq_model_open(s, s->cfg.hash_model, err) : DKV_OK;
	s->cfg.hash_model = NULL; /* read: the caller's string is not kept */
	if (rc) {
		rt_seq_close(s);
		return rc;
	}
	s->st.struct_size = sizeof(s->st);
	s->st.n_layers = s->cfg.n_layers;
	*out = s;
	return DKV_OK;
}

void rt_seq_close(struct rt_seq *s)
{
	if (!s)
		return;
	rt_mem_give(s->eng, seq_fixed_bytes(s) + s->pages_bytes + s->sc.grow_bytes +
		    s->model_bytes + s->codes_bytes + s->fit_bytes);
	seq_free(s);
}

const dkv_seq_config *rt_seq_config(const struct rt_seq *s)
{
	return &s->cfg;
}

/* ---- append ---- */

void rt_encode_range(struct rt_seq *s, struct rt_layer *L, uint32_t h,
		     uint64_t t0, uint64_t t1)
{
	struct rt_scratch *sc = &s->sc;
	struct shard_layer *st = &L->store;
	uint32_t words = s->geom.words;

	for (uint64_t t = t0; t < t1;) {
		uint64_t page_end = (t / SHARD_PAGE + 1) * SHARD_PAGE;
		uint64_t end = page_end < t1 ? page_end : t1;
		uint32_t n = end - t < KRN_BLOCK ? (uint32_t)(end - t) : KRN_BLOCK;
		shard_rows_f32(&s->geom, shard_key(st, h, t), n, sc->enc_keys);
		rt_hash_keys(&L->hash[h], sc->enc_keys, n, sc->enc_codes,
			     sc->enc_norms, sc->enc_tmp);
		for (uint32_t i = 0; i < n; i++)
			shard_code_put(st, h, t + i, sc->enc_codes + (size_t)i * words);
		memcpy(shard_norm(st, h, t), sc->enc_norms, (size_t)n * 4);
		for (uint32_t i = 0; i < n; i++)
			if (sc->enc_norms[i] > L->hash[h].max_norm)
				L->hash[h].max_norm = sc->enc_norms[i];
		for (uint32_t i = 0; i < n; i++)
			shard_cls(st, h, t)[i] = rt_hash_class(&L->hash[h], sc->enc_norms[i]);
		if (s->geom.sketch)
			rt_hash_sketch(&L->hash[h], sc->enc_keys, n, shard_sketch(st, h, t),
				       shard_sketch_step(st, h, t), sc->enc_tmp);
		t += n;
	}
	shard_gpu_dirty(L->gpu, h, t0);
}

/*
 * The sketches' channel scales from the centred keys' sums of squares
 * over n keys: each channel's RMS, kept above 1/64 of the mean RMS (a
 * channel that never moved would blow up whatever later moves it).
 */
static void fix_channel_scale(struct rt_hash *hm, const double *ss, double n)
{
	double mean = 0;

	for (uint32_t d = 0; d < hm->dim; d++)
		mean += sqrt(ss[d] / n) / hm->dim;
	for (uint32_t d = 0; d < hm->dim; d++) {
		double r = sqrt(ss[d] / n);
		hm->chs[d] = (float)(r > mean / 64 ? r : mean / 64 > 0 ? mean / 64 : 1.0);
	}
}

/* Fix head h's mean key and channel scales from the stored keys after the sinks. */
static void fix_mean(struct rt_seq *s, struct rt_layer *L, uint32_t h)
{
	struct shard_layer *st = &L->store;
	struct rt_hash *hm = &L->hash[h];
	uint32_t dim = s->cfg.head_dim;
	uint64_t t0 = st->len > s->cfg.sink_tokens ? s->cfg.sink_tokens : 0;
	double acc[DKV_MAX_HEAD_DIM] = { 0 };

	for (uint64_t t = t0; t < st->len; t++) {
		shard_rows_f32(&s->geom, shard_key(st, h, t), 1, s->sc.enc_keys);
		for (uint32_t d = 0; d < dim; d++)
			acc[d] += s->sc.enc_keys[d];
	}
	for (uint32_t d = 0; d < dim; d++)
		hm->mu[d] = (float)(acc[d] / (double)(st->len - t0));
	memset(acc, 0, sizeof(acc));
	for (uint64_t t = t0; t < st->len; t++) {
		shard_rows_f32(&s->geom, shard_key(st, h, t), 1, s->sc.enc_keys);
		for (uint32_t d = 0; d < dim; d++) {
			double x = s->sc.enc_keys[d] - hm->mu[d];
			acc[d] += x * x;
		}
	}
	fix_channel_scale(hm, acc, (double)(st->len - t0));
	hm->mu_set = 1;
}

/* Fix head h's class scale from the stored norms, then class every key. */
static void fix_norm_ref(struct rt_layer *L, uint32_t h)
{
	struct shard_layer *st = &L->store;
	double sum = 0;

	for (uint64_t t = 0; t < st->len; t++)
		sum += *shard_norm(st, h, t);
	L->hash[h].norm_ref = (float)(sum / (double)st->len);
	for (uint64_t t = 0; t < st->len; t++)
		*shard_cls(st, h, t) = rt_hash_class(&L->hash[h], *shard_norm(st, h, t));
	shard_gpu_dirty(L->gpu, h, 0);
}

static void append(struct rt_seq *s, struct rt_layer *L, const void *k,
		   const void *v, uint32_t n_new)
{
	struct shard_layer *st = &L->store;
	const dkv_seq_config *c = &s->cfg;
	uint32_t H = c->n_kv_heads, dim = c->head_dim, es = s->geom.elt_size;
	uint64_t len0 = st->len;

	for (uint32_t i = 0; i < n_new; i++)
		for (uint32_t h = 0; h < H; h++) {
			uint64_t t = len0 + i;
			size_t off = ((size_t)i * H + h) * dim;
			const void *vsrc = (const uint8_t *)v + off * es;
			float *vf = s->sc.vrow;
			memcpy(shard_key(st, h, t), (const uint8_t *)k + off * es, (size_t)dim * es);
			memcpy(shard_value(st, h, t), vsrc, (size_t)dim * es);
			rt_to_f32(c->dtype, vsrc, dim, vf);
			shard_sums_add(st, h, t, vf);
		}
	st->len = len0 + n_new;
	if (c->exact) /* dense attention reads no codes */
		return;
	for (uint32_t h = 0; h < H; h++) {
		if (!L->hash[h].mu_set && st->len >= RT_MU_TOKENS) {
			fix_mean(s, L, h);
			L->hash[h].max_norm = 0.0f;
			rt_encode_range(s, L, h, 0, st->len);
			fix_norm_ref(L, h);
		} else {
			rt_encode_range(s, L, h, len0, st->len);
		}
	}
}

/* ---- the step ---- */

/* Allocate the pages the append needs, charged to the memory limit. */
static int reserve_pages(struct rt_seq *s, struct shard_layer *L, uint64_t tokens, char *err)
{
	struct shard_page_bytes pb;
	uint32_t more = shard_layer_pages_short(L, tokens);
	uint64_t bytes;

	if (!more)
		return DKV_OK;
	shard_page_bytes(&s->geom, &pb);
	bytes = (uint64_t)more * pb.total;
	if (rt_mem_take(s->eng, bytes))
		return krn_msgf(err, DKV_E_NOSPACE,
				"memory limit: %u more pages (%llu bytes) would exceed it", more,
				(unsigned long long)bytes);
	if (shard_layer_reserve(L, tokens)) {
		rt_mem_give(s->eng, bytes);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for %u pages", more);
	}
	s->pages_bytes += bytes;
	return DKV_OK;
}

static int reserve_step(struct rt_seq *s, struct shard_layer *L, const void *q,
			uint32_t n_q, const void *k, const void *v, uint32_t n_new,
			char *err)
{
	int rc;

	rc = rt_check_finite(s, q, n_q, k, v, n_new, err);
	if (rc == DKV_OK)
		rc = rt_scratch_reserve(s, L->len + n_new, err);
	if (rc == DKV_OK)
		rc = reserve_pages(s, L, L->len + n_new, err);
	return rc;
}

int rt_seq_step(struct rt_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		const void *k, const void *v, uint32_t n_new, void *out, char *err)
{
	uint64_t t0 = rt_now_ns(), t1;
	struct rt_step_counts cnt = { 0, 0, 0, 0, 0, 0 };
	const dkv_seq_config *c = &s->cfg;
	struct rt_layer *L;
	int rc;

	rc = rt_check_args(s, layer, q, n_q, k, v, n_new, out, err);
	if (rc)
		return rc;
	L = &s->layers[layer];
	rc = reserve_step(s, &L->store, q, n_q, k, v, n_new, err);
	if (rc == DKV_OK && L->gpu)
		rc = shard_gpu_reserve(L->gpu, &L->store, err);
	if (rc)
		return rc;
	if (s->trace && !s->trace_idx) {
		s->trace_idx = malloc((size_t)c->n_q_heads * s->trace_cap * sizeof(uint32_t));
		if (!s->trace_idx)
			return krn_msgf(err, DKV_E_NOMEM, "out of memory for the trace");
	}
	/* a background fit swaps in at its step, before this step's keys */
	if (rt_fit_due(s, L))
		rt_train_finish(s, L);
	append(s, L, k, v, n_new);
	rt_fit_count(L, n_q);
	t1 = rt_now_ns();
	size_t qstride = (size_t)c->n_q_heads * c->head_dim;
	size_t bstride = qstride * s->geom.elt_size;
	for (uint32_t i = 0; i < n_q; i++) {
		rt_to_f32(c->dtype, (const uint8_t *)q + i * bstride, qstride, s->sc.qf);
		if (L->qcap)
			rt_sample_queries(s, L, s->sc.qf);
		rt_attend_query(s, L, s->sc.qf, L->store.len - n_q + i,
				(uint8_t *)out + i * bstride, &cnt);
	}
	/* the step is answered: fitting starts, off the step path */
	if (!L->trained && L->store.len >= c->train_tokens && rt_can_train(s, L))
		rt_train_start(s, L);
	L->steps++;
	uint64_t t2 = rt_now_ns();
	double nqh = (double)n_q * c->n_q_heads;
	s->st.steps++;
	s->st.last_step_ns = t2 - t0;
	s->st.last_append_ns = t1 - t0;
	s->st.last_attend_ns = t2 - t1;
	s->st.last_queries = (uint32_t)nqh;
	s->st.last_exact_mode = (uint32_t)c->exact;
	s->st.last_candidates = nqh > 0 ? cnt.cand / nqh : 0;
	s->st.last_exact_tokens = nqh > 0 ? cnt.exact / nqh : 0;
	s->st.last_estimated_tokens = nqh > 0 ? cnt.est / nqh : 0;
	s->st.last_coarse_ns = cnt.coarse_ns;
	s->st.last_fine_ns = cnt.fine_ns;
	s->st.last_tail_ns = cnt.tail_ns;
	return s->gpu ? shard_gpu_seq_check(s->gpu, err) : DKV_OK;
}

int rt_seq_len(const struct rt_seq *s, uint32_t layer, uint64_t *tokens, char *err)
{
	if (layer >= s->cfg.n_layers)
		return krn_msgf(err, DKV_E_INVAL, "layer %u out of range [0, %u)", layer,
				s->cfg.n_layers);
	*tokens = s->layers[layer].store.len;
	return DKV_OK;
}

void rt_seq_get_stats(const struct rt_seq *s, dkv_stats *st)
{
	struct shard_page_bytes pb;

	*st = s->st;
	shard_page_bytes(&s->geom, &pb);
	st->bytes_full = st->bytes_codes = st->bytes_summaries = 0;
	st->fits_deferred = 0;
	for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
		const struct shard_layer *L = &s->layers[l].store;
		st->layer_tokens[l] = L->len;
		st->bytes_full += (uint64_t)L->n_pages * pb.full;
		st->bytes_codes += (uint64_t)L->n_pages * pb.codes;
		st->bytes_summaries += (uint64_t)L->n_pages * pb.summaries;
		st->fits_deferred += (uint32_t)s->layers[l].fit_deferred;
	}
	st->bytes_codes += s->codes_bytes;
	st->bytes_training = s->fit_bytes;
	st->fits_late = s->fits_late;
}

void rt_seq_trace_on(struct rt_seq *s, int on)
{
	s->trace = on;
}

int rt_seq_trace_get(const struct rt_seq *s, uint32_t qhead, const uint32_t **idx)
{
	if (qhead >= s->cfg.n_q_heads || !s->trace || !s->trace_idx)
		return DKV_E_INVAL;
	*idx = s->trace_idx + (size_t)qhead * s->trace_cap;
	return (int)s->trace_n[qhead];
}
