/*
 * fit.c - learned hash models of a sequence's layers: the query sample
 * they are fitted to, the fit (on a thread of its own after
 * train_tokens, or in the caller's for dkv_seq_train) and the swap of
 * the new models and codes in, at a step that depends on the inputs
 * alone.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "hash.h"
#include "krn.h"
#include "learn.h"
#include "model.h"
#include "store.h"

/*
 * One layer's fitting: copies of its inputs (up to max_keys stored keys
 * after the sinks and the query sample, per kv head) and the new models.
 * It runs on its own thread after train_tokens, or in the calling thread
 * for dkv_seq_train.  A background fit also encodes the keys stored when
 * it started, [0, len), with the new models into code slabs of its own
 * (one per page, as the page lays its codes out), so that the swap, at a
 * fixed later step of the layer (deterministic, whatever the timing),
 * only encodes the keys appended since and swaps the pages' code
 * pointers.  Every byte it holds is charged to the memory limit.
 */
struct rt_fit {
	pthread_t th;
	uint64_t swap_step;    /* the layer's step at which the models swap ... */
	double work, need;     /* ... once work (see rt_fit_due) reaches need */
	uint32_t n_heads, dim, bits, nk, nq;
	const float *P;
	float *keys;           /* [n_heads][nk][dim] */
	float *qs;             /* [n_heads][nq][dim] */
	float *mu;             /* [n_heads][dim] */
	struct rt_lhead *out;  /* [n_heads] */
	int *rc;               /* [n_heads]: rt_learn_head's */
	uint64_t bytes;        /* charged to the engine's limit */
	/* background only: the stored keys and their new codes */
	struct shard_layer view; /* the pages of [0, len) as they were */
	uint8_t **codes;       /* [view.n_pages] slabs, NULL when not encoded */
	size_t slab;           /* bytes of one slab */
	int encoded;           /* the thread filled every slab */
	int done;              /* the thread is done (atomic) */
};

/* Steps of a layer between the start of a background fit and its swap. */
#define RT_SWAP_STEPS 8u

static uint64_t q_rand(uint64_t *st)
{
	uint64_t z = (*st += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * Offer one query position's heads (f32 [n_q_heads][dim]) to the layer's
 * query sample: a reservoir of RT_QCAP vectors per kv head, so that the
 * sample stays uniform over everything seen.
 */
void rt_sample_queries(struct rt_seq *s, struct rt_layer *L, const float *q)
{
	const dkv_seq_config *c = &s->cfg;
	uint32_t dim = c->head_dim, g = s->group;

	for (uint32_t j = 0; j < g; j++) {
		uint64_t n = L->q_seen++, slot = n;
		if (n >= RT_QCAP) {
			slot = q_rand(&L->q_rng) % (n + 1);
			if (slot >= RT_QCAP)
				continue;
		} else {
			L->q_kept++;
		}
		for (uint32_t h = 0; h < c->n_kv_heads; h++)
			memcpy(L->qcap + ((size_t)h * RT_QCAP + slot) * dim,
			       q + ((size_t)h * g + j) * dim, dim * sizeof(float));
	}
}

void rt_take_model(struct rt_layer *L, uint32_t h, struct rt_lhead *m)
{
	struct rt_lhead old = L->lm[h];

	L->lm[h] = *m;
	L->hash[h].lm = &L->lm[h];
	memset(m, 0, sizeof(*m));
	rt_lhead_free(&old);
}

/* Bytes of one page's codes, all heads (store.c lays them out so). */
static size_t code_slab_bytes(const struct rt_seq *s)
{
	return ((size_t)s->cfg.n_kv_heads * SHARD_PAGE * s->geom.words * 8 + 63) & ~(size_t)63;
}

static void fit_free(struct rt_fit *f)
{
	if (!f)
		return;
	if (f->out)
		for (uint32_t h = 0; h < f->n_heads; h++)
			rt_lhead_free(&f->out[h]);
	if (f->codes)
		for (uint32_t p = 0; p < f->view.n_pages; p++)
			free(f->codes[p]);
	free(f->codes);
	free(f->view.pages);
	free(f->keys);
	free(f->qs);
	free(f->mu);
	free(f->out);
	free(f->rc);
	free(f);
}

void rt_fit_wait_free(struct rt_fit *f)
{
	pthread_join(f->th, NULL);
	fit_free(f);
}

/* Give a fit's remaining charge back and free it. */
static void fit_release(struct rt_seq *s, struct rt_fit *f)
{
	if (!f)
		return;
	rt_mem_give(s->eng, f->bytes);
	s->fit_bytes -= f->bytes;
	fit_free(f);
}

/* Keys (nk) and queries (nq) a fit of L copies. */
static void fit_sizes(const struct rt_seq *s, const struct rt_layer *L, uint32_t *nk,
		      uint32_t *nq)
{
	struct rt_learn_opts o;
	uint64_t len = L->store.len, t0 = len > s->cfg.sink_tokens ? s->cfg.sink_tokens : 0;

	rt_learn_defaults(&o);
	*nk = len - t0 < o.max_keys ? (uint32_t)(len - t0) : o.max_keys;
	*nq = L->q_kept;
}

/* Every byte a fit of L holds at once; background: with its code slabs. */
static uint64_t fit_bytes_of(const struct rt_seq *s, const struct rt_layer *L, int background)
{
	const dkv_seq_config *c = &s->cfg;
	uint64_t H = c->n_kv_heads, D = c->head_dim, pages = L->store.n_pages, b;
	struct rt_learn_opts o;
	uint32_t nk, nq;

	rt_learn_defaults(&o);
	fit_sizes(s, L, &nk, &nq);
	b = sizeof(struct rt_fit) + H * ((uint64_t)nk + nq + 1) * D * 4 +
	    H * (sizeof(struct rt_lhead) + sizeof(int) +
		 rt_lhead_floats(c->hash_bits, c->head_dim, RT_MODEL_HIDDEN) * 4) +
	    rt_learn_bytes(c->hash_bits, c->head_dim, RT_MODEL_HIDDEN, nk, nq, &o);
	if (background)
		b += pages * (code_slab_bytes(s) + 2 * sizeof(void *)) +
		     KRN_BLOCK * (2 * D * 4 + s->geom.words * 8 + 4);
	return b;
}

static int fit_view(struct rt_seq *s, struct rt_layer *L, struct rt_fit *f);

/*
 * A fit of L with copies of its inputs, charged to the memory limit:
 * DKV_E_NOSPACE (nothing taken) when it does not fit, DKV_E_NOMEM.
 */
static int fit_new(struct rt_seq *s, struct rt_layer *L, int background, struct rt_fit **out)
{
	const dkv_seq_config *c = &s->cfg;
	struct shard_layer *st = &L->store;
	uint64_t t0 = st->len > c->sink_tokens ? c->sink_tokens : 0, n = st->len - t0;
	uint32_t H = c->n_kv_heads, D = c->head_dim;
	uint64_t bytes = fit_bytes_of(s, L, background);
	struct rt_fit *f;

	if (rt_mem_take(s->eng, bytes))
		return DKV_E_NOSPACE;
	s->fit_bytes += bytes;
	f = calloc(1, sizeof(*f));
	if (!f) {
		rt_mem_give(s->eng, bytes);
		s->fit_bytes -= bytes;
		return DKV_E_NOMEM;
	}
	f->bytes = bytes;
	f->n_heads = H;
	f->dim = D;
	f->bits = c->hash_bits;
	f->P = s->P;
	fit_sizes(s, L, &f->nk, &f->nq);
	f->keys = malloc((size_t)H * f->nk * D * sizeof(float));
	f->qs = malloc((size_t)H * f->nq * D * sizeof(float));
	f->mu = malloc((size_t)H * D * sizeof(float));
	f->out = calloc(H, sizeof(*f->out));
	f->rc = calloc(H, sizeof(*f->rc));
	if (!f->keys || !f->qs || !f->mu || !f->out || !f->rc ||
	    (background && fit_view(s, L, f))) {
		fit_release(s, f);
		return DKV_E_NOMEM;
	}
	for (uint32_t h = 0; h < H; h++) {
		for (uint32_t i = 0; i < f->nk; i++)
			shard_rows_f32(&s->geom, shard_key(st, h, t0 + (uint64_t)i * n / f->nk), 1,
				       f->keys + ((size_t)h * f->nk + i) * D);
		memcpy(f->qs + (size_t)h * f->nq * D, L->qcap + (size_t)h * RT_QCAP * D,
		       (size_t)f->nq * D * sizeof(float));
		memcpy(f->mu + (size_t)h * D, L->hash[h].mu, D * sizeof(float));
	}
	*out = f;
	return DKV_OK;
}

/*
 * A background fit's view of L's pages as they are now (the table may
 * move while it runs, the pages do not) and its empty code slabs.
 */
static int fit_view(struct rt_seq *s, struct rt_layer *L, struct rt_fit *f)
{
	struct shard_layer *v = &f->view;
	uint32_t np = (uint32_t)((L->store.len + SHARD_PAGE - 1) / SHARD_PAGE);

	v->g = &s->geom;
	v->len = L->store.len;
	f->slab = code_slab_bytes(s);
	v->pages = malloc((np ? np : 1) * sizeof(*v->pages));
	f->codes = calloc(np ? np : 1, sizeof(*f->codes));
	if (!v->pages || !f->codes)
		return -1;
	memcpy(v->pages, L->store.pages, np * sizeof(*v->pages));
	v->n_pages = v->cap_pages = np;
	for (uint32_t p = 0; p < np; p++) {
		f->codes[p] = aligned_alloc(64, f->slab);
		if (!f->codes[p])
			return -1;
		memset(f->codes[p], 0, f->slab);
	}
	return 0;
}

/* Head h's codes of [t0, t1) (one page) into slab, with its new model. */
static void fit_encode_head(struct rt_fit *f, uint32_t h, uint64_t t0, uint64_t t1,
			    uint8_t *slab, float *buf, uint64_t *codes, float *norms)
{
	const struct shard_layer *v = &f->view;
	uint32_t D = f->dim, words = f->bits / 64;
	struct rt_hash hm = { .bits = f->bits, .dim = D, .P = f->P,
			      .mu = f->mu + (size_t)h * D, .lm = &f->out[h] };
	uint8_t *dst = slab + (size_t)h * SHARD_PAGE * words * 8;

	for (uint64_t t = t0; t < t1;) {
		uint32_t n = t1 - t < KRN_BLOCK ? (uint32_t)(t1 - t) : KRN_BLOCK;
		if (f->rc[h]) { /* the head keeps its model: its codes as they are */
			for (uint32_t i = 0; i < n; i++) {
				shard_code_get(v, h, t + i, codes);
				krn_code_write((uint8_t *)krn_code_at(dst, words, (t + i) % SHARD_PAGE),
					       words, codes);
			}
			t += n;
			continue;
		}
		shard_rows_f32(v->g, shard_key(v, h, t), n, buf);
		rt_hash_keys(&hm, buf, n, codes, norms, buf + (size_t)KRN_BLOCK * D);
		for (uint32_t i = 0; i < n; i++)
			krn_code_write((uint8_t *)krn_code_at(dst, words, (t + i) % SHARD_PAGE),
				       words, codes + (size_t)i * words);
		t += n;
	}
}

/* Encode the keys of the view into the slabs (the fit's own thread). */
static void fit_encode(struct rt_fit *f)
{
	uint32_t D = f->dim, words = f->bits / 64;
	float *buf = malloc((size_t)2 * KRN_BLOCK * D * sizeof(float));
	uint64_t *codes = malloc((size_t)KRN_BLOCK * words * 8);
	float *norms = malloc(KRN_BLOCK * sizeof(float));

	if (buf && codes && norms) {
		for (uint32_t p = 0; p < f->view.n_pages; p++) {
			uint64_t t0 = (uint64_t)p * SHARD_PAGE, t1 = t0 + SHARD_PAGE;
			t1 = t1 < f->view.len ? t1 : f->view.len;
			for (uint32_t h = 0; h < f->n_heads; h++)
				fit_encode_head(f, h, t0, t1, f->codes[p], buf, codes, norms);
		}
		f->encoded = 1;
	}
	free(buf);
	free(codes);
	free(norms);
}

/* Fit every head of f (any thread: f's own copies only), then encode. */
static void *fit_run(void *arg)
{
	struct rt_fit *f = arg;
	uint32_t D = f->dim;

	for (uint32_t h = 0; h < f->n_heads; h++) {
		struct rt_learn_opts o;
		rt_learn_defaults(&o);
		o.seed = 0x6c6561726eull + h;
		if (rt_lhead_alloc(&f->out[h], f->bits, D, RT_MODEL_HIDDEN)) {
			f->rc[h] = -1;
			continue;
		}
		f->rc[h] = rt_learn_head(f->keys + (size_t)h * f->nk * D, f->nk, D,
					 f->mu + (size_t)h * D, f->qs + (size_t)h * f->nq * D,
					 f->nq, D, f->P, &o, &f->out[h], NULL);
	}
	if (f->codes)
		fit_encode(f);
	__atomic_store_n(&f->done, 1, __ATOMIC_RELEASE);
	return NULL;
}

/* Keep slab as page p's codes (the layer owns it from now on). */
static int own_slab(struct rt_seq *s, struct rt_layer *L, uint32_t p, uint8_t *slab)
{
	if (p >= L->n_own) {
		uint8_t **t = realloc(L->codes_own, (size_t)L->store.n_pages * sizeof(*t));
		if (!t)
			return -1;
		memset(t + L->n_own, 0, (L->store.n_pages - L->n_own) * sizeof(*t));
		L->codes_own = t;
		L->n_own = L->store.n_pages;
	}
	if (L->codes_own[p]) {
		free(L->codes_own[p]);
		rt_mem_give(s->eng, code_slab_bytes(s));
		s->codes_bytes -= code_slab_bytes(s);
	}
	L->codes_own[p] = slab;
	L->store.pages[p]->codes = slab;
	return 0;
}

/*
 * The background swap: the slabs become the pages' codes (their charge
 * moves from the fit to the layer), the keys appended since the fit
 * started are encoded with the new models.  Without every slab, the
 * stored keys are re-encoded here instead.
 */
static void fit_swap_slabs(struct rt_seq *s, struct rt_layer *L, struct rt_fit *f)
{
	uint64_t slab = code_slab_bytes(s), len0 = f->view.len;

	for (uint32_t p = 0; f->encoded && p < f->view.n_pages; p++) {
		if (own_slab(s, L, p, f->codes[p])) {
			f->encoded = 0;
			len0 = 0; /* the pages before p have new codes: encode all */
			break;
		}
		f->codes[p] = NULL;
		f->bytes -= slab;
		s->fit_bytes -= slab;
		s->codes_bytes += slab;
	}
	if (!f->encoded)
		len0 = 0;
	/* every head: a slab holds no codes of a kept model past len0 either */
	for (uint32_t h = 0; h < f->n_heads; h++)
		rt_encode_range(s, L, h, len0, L->store.len);
}

/* Swap the fitted models in (the stored keys with them); frees f. */
static int fit_apply(struct rt_seq *s, struct rt_layer *L, struct rt_fit *f)
{
	int rc = DKV_OK;

	for (uint32_t h = 0; h < f->n_heads; h++) {
		if (f->rc[h] == 0)
			rt_take_model(L, h, &f->out[h]);
		else if (f->rc[h] < 0)
			rc = DKV_E_NOMEM;
	}
	if (f->codes) {
		fit_swap_slabs(s, L, f);
	} else {
		for (uint32_t h = 0; h < f->n_heads; h++)
			if (f->rc[h] == 0)
				rt_encode_range(s, L, h, 0, L->store.len);
	}
	fit_release(s, f);
	return rc;
}

/* Whether layer L can be fitted now: learned, mean keys fixed, queries seen. */
int rt_can_train(const struct rt_seq *s, const struct rt_layer *L)
{
	if (s->cfg.hash != DKV_HASH_LEARNED || s->cfg.exact || L->q_kept < 8)
		return 0;
	for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++)
		if (!L->hash[h].mu_set)
			return 0;
	return 1;
}

/* A pending background fit of L: wait for it and swap its models in. */
int rt_train_finish(struct rt_seq *s, struct rt_layer *L)
{
	struct rt_fit *f = L->fit;

	if (!f)
		return DKV_OK;
	pthread_join(f->th, NULL);
	L->fit = NULL;
	return fit_apply(s, L, f);
}

/* Fit layer L now, in the calling thread. */
static int train_layer(struct rt_seq *s, struct rt_layer *L)
{
	struct rt_fit *f;
	int rc = rt_train_finish(s, L);

	if (rc == DKV_OK)
		rc = fit_new(s, L, 0, &f);
	if (rc)
		return rc;
	fit_run(f);
	rc = fit_apply(s, L, f);
	if (rc == DKV_OK) {
		L->trained = 1;
		L->fit_deferred = 0;
	}
	return rc;
}

/*
 * train_tokens reached: fit L on a thread of its own; the models swap in
 * when rt_fit_due says (rt_train_finish waits if the fit is late).  Without
 * memory under the limit, or a thread, L stays as it is (SimHash) and
 * tries again at its next step; fit_deferred says so in the stats.
 */
void rt_train_start(struct rt_seq *s, struct rt_layer *L)
{
	struct rt_fit *f;

	L->fit_deferred = 1;
	if (fit_new(s, L, 1, &f))
		return;
	f->swap_step = L->steps + RT_SWAP_STEPS;
	f->need = RT_SWAP_MARGIN * (s->swap_work + RT_ENCODE_WORK * (double)f->view.len);
	if (pthread_create(&f->th, NULL, fit_run, f)) {
		fit_release(s, f);
		return;
	}
	L->fit = f;
	L->trained = 1;
	L->fit_deferred = 0;
}

/*
 * Whether L's background fit swaps in at this step: RT_SWAP_STEPS steps
 * after it started, and once the layer's queries since have scanned
 * enough keys (f->need) for a fit at the steps' pace to be done.  Both
 * depend on the inputs alone, so the outputs do not depend on timing.
 */
int rt_fit_due(struct rt_seq *s, struct rt_layer *L)
{
	struct rt_fit *f = L->fit;

	if (!f || L->steps < f->swap_step || f->work < f->need)
		return 0;
	if (!__atomic_load_n(&f->done, __ATOMIC_ACQUIRE))
		s->fits_late++;
	return 1;
}

/* The work of a step's queries for rt_fit_due: keys scanned. */
void rt_fit_count(struct rt_layer *L, uint32_t n_q)
{
	if (L->fit)
		L->fit->work += (double)n_q * (double)L->store.len;
}

int rt_seq_train_now(struct rt_seq *s, char *err)
{
	/* SimHash has nothing to fit; layers without queries keep theirs. */
	for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
		if (rt_train_finish(s, &s->layers[l]))
			return krn_msgf(err, DKV_E_NOMEM, "out of memory training layer %u", l);
		if (!rt_can_train(s, &s->layers[l]))
			continue;
		int rc = train_layer(s, &s->layers[l]);
		if (rc == DKV_E_NOSPACE)
			return krn_msgf(err, rc, "memory limit: fitting layer %u needs %llu "
					"bytes more; it keeps its models", l,
					(unsigned long long)fit_bytes_of(s, &s->layers[l], 0));
		if (rc)
			return krn_msgf(err, DKV_E_NOMEM, "out of memory training layer %u", l);
	}
	return DKV_OK;
}

void rt_seq_fit_work(struct rt_seq *s, double units)
{
	s->swap_work = units;
}
