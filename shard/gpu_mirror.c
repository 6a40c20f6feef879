/*
 * gpu_mirror.c - a sequence on the GPU shards (see gpu.h): its pages in
 * pinned host memory, each shard's scratch, and each layer's device
 * mirror: the device pages of codes, norms and classes, the page tables
 * of all five arrays, and keeping them in step with the host store.
 */
#include <pthread.h>
#include <stdlib.h>

#include "dashkv.h"
#include "gpu.h"
#include "gpu_int.h"
#include "krn_gpu.h"
#include "task.h"

/* ---- a sequence: pinned pages, mirrors, scratch ---- */

static void *pinned_alloc(size_t bytes, void *ctx)
{
	struct shard_gpus *gs = ctx;
	char err[KRN_MSGLEN];
	void *p = NULL;

	return gs->ops->halloc(&p, bytes, err) ? NULL : p;
}

static void pinned_free(void *mem, void *ctx)
{
	struct shard_gpus *gs = ctx;

	gs->ops->hfree(mem);
}

static void part_free(const struct krn_gpu_ops *ops, struct gpart *pt)
{
	for (uint32_t i = 0; i < pt->n_local; i++)
		ops->dfree(pt->dpage[i]);
	ops->dfree(pt->dtab);
	free(pt->dpage);
	free(pt->tab);
	free(pt->clean);
}

static void work_free(const struct krn_gpu_ops *ops, struct gwork *w)
{
	ops->dfree(w->q.p);
	ops->dfree(w->hits.p);
	ops->dfree(w->blk.p);
	ops->dfree(w->ws.p);
	ops->dfree(w->part.p);
	ops->dfree(w->send);
	ops->dfree(w->recv);
	ops->hfree(w->stage.p);
}

void shard_gpu_seq_free(struct shard_gpu_seq *s)
{
	const struct krn_gpu_ops *ops;
	char err[KRN_MSGLEN];

	if (!s)
		return;
	ops = s->gs->ops;
	for (uint32_t r = 0; r < s->gs->n; r++) {
		ops->device(s->gs->dev[r], err);
		for (uint32_t l = 0; s->layers && l < s->n_layers; l++)
			if (s->layers[l].part)
				part_free(ops, &s->layers[l].part[r]);
		if (s->work)
			work_free(ops, &s->work[r]);
	}
	for (uint32_t l = 0; s->layers && l < s->n_layers; l++)
		free(s->layers[l].part);
	free(s->layers);
	free(s->work);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

/*
 * Shard r's all-gather buffers.  Its pinned staging comes later, from
 * the shard's own thread, so from its GPU's NUMA node when the plan binds
 * the thread there.
 */
static int work_init(struct shard_gpu_seq *s, uint32_t r, char *err)
{
	const struct krn_gpu_ops *ops = s->gs->ops;
	struct gwork *w = &s->work[r];
	size_t rb = shard_rec_bytes(s->g, s->top_k);

	if (ops->device(s->gs->dev[r], err) || ops->dalloc(&w->send, rb, err) ||
	    ops->dalloc(&w->recv, rb * s->gs->n, err))
		return DKV_E_NOMEM;
	return 0;
}

static int layers_alloc(struct shard_gpu_seq *s)
{
	uint32_t H = s->geom->n_kv_heads;

	s->layers = calloc(s->n_layers, sizeof(*s->layers));
	if (!s->layers)
		return -1;
	for (uint32_t l = 0; l < s->n_layers; l++) {
		struct shard_gpu_layer *gl = &s->layers[l];
		gl->seq = s;
		gl->part = calloc(s->gs->n, sizeof(*gl->part));
		if (!gl->part)
			return -1;
		for (uint32_t r = 0; r < s->gs->n; r++)
			if (!(gl->part[r].clean = calloc(H, sizeof(uint64_t))))
				return -1;
	}
	return 0;
}

int shard_gpu_seq_new(struct shard_gpu_seq **out, struct shard_gpus *gs,
		      struct shard_geom *geom, uint32_t n_layers, uint32_t g, uint32_t top_k,
		      char *err)
{
	struct shard_gpu_seq *s = calloc(1, sizeof(*s));
	char kerr[KRN_MSGLEN] = "";

	if (!s)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for a GPU sequence");
	s->gs = gs;
	s->geom = geom;
	s->n_layers = n_layers;
	s->g = g;
	s->top_k = top_k;
	pthread_mutex_init(&s->lock, NULL);
	s->work = calloc(gs->n, sizeof(*s->work));
	if (!s->work || layers_alloc(s)) {
		shard_gpu_seq_free(s);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for a GPU sequence");
	}
	for (uint32_t r = 0; r < gs->n; r++)
		if (work_init(s, r, kerr)) {
			shard_gpu_seq_free(s);
			return krn_msgf(err, DKV_E_NOMEM, "GPU shard buffers: %.200s", kerr);
		}
	geom->page_alloc = pinned_alloc;
	geom->page_free = pinned_free;
	geom->page_ctx = gs;
	*out = s;
	return DKV_OK;
}

struct shard_gpu_layer *shard_gpu_layer(struct shard_gpu_seq *s, uint32_t layer)
{
	return &s->layers[layer];
}

int shard_gpu_seq_check(struct shard_gpu_seq *s, char *err)
{
	int rc = DKV_OK;

	pthread_mutex_lock(&s->lock);
	if (s->gather_failed)
		rc = krn_msgf(err, DKV_E_INTERNAL, "%.200s; this step's outputs are not valid",
			      s->gather_err);
	s->gather_failed = 0;
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* ---- device pages and their tables ---- */

static size_t code_bytes(const struct shard_geom *g)
{
	return (size_t)SHARD_PAGE * g->words * 8;
}

static size_t dpage_bytes(const struct shard_geom *g)
{
	return (size_t)g->n_kv_heads * SHARD_PAGE * (g->words * 8 + 4 + 1);
}

static const void **tab_slot(struct gpart *pt, uint32_t heads, int kind, uint32_t h)
{
	return pt->tab + ((size_t)kind * heads + h) * pt->cap;
}

/* Fill the host tables of shard r from its device pages and the store. */
static void build_tables(struct shard_gpu_layer *gl, uint32_t r, const struct shard_layer *l)
{
	const struct shard_geom *g = gl->seq->geom;
	struct gpart *pt = &gl->part[r];
	uint32_t H = g->n_kv_heads, S = gl->seq->gs->n;
	size_t cb = code_bytes(g), row = (size_t)g->head_dim * g->elt_size;

	for (uint32_t lp = 0; lp < pt->n_local; lp++) {
		const struct shard_page *hp = l->pages[(size_t)lp * S + r];
		uint8_t *dp = pt->dpage[lp];
		for (uint32_t h = 0; h < H; h++) {
			tab_slot(pt, H, TAB_CODES, h)[lp] = dp + h * cb;
			tab_slot(pt, H, TAB_NORMS, h)[lp] = dp + H * cb + (size_t)h * SHARD_PAGE * 4;
			tab_slot(pt, H, TAB_CLS, h)[lp] =
				dp + H * (cb + (size_t)SHARD_PAGE * 4) + (size_t)h * SHARD_PAGE;
			tab_slot(pt, H, TAB_K, h)[lp] = hp->k + (size_t)h * SHARD_PAGE * row;
			tab_slot(pt, H, TAB_V, h)[lp] = hp->v + (size_t)h * SHARD_PAGE * row;
		}
	}
}

/* Room for one more local page in shard r's arrays. */
static int part_grow(struct gpart *pt, uint32_t heads)
{
	uint32_t cap = pt->cap ? pt->cap * 2 : 16;
	void **dp;

	if (pt->n_local < pt->cap)
		return 0;
	dp = realloc(pt->dpage, cap * sizeof(*dp));
	if (!dp)
		return -1;
	pt->dpage = dp;
	free(pt->tab);
	pt->tab = calloc((size_t)N_TABS * heads * cap, sizeof(*pt->tab));
	if (!pt->tab) {
		pt->cap = 0;
		return -1;
	}
	pt->cap = cap;
	pt->stale = 2; /* the device table must grow too */
	return 0;
}

/* Upload shard r's tables (after its device is selected). */
static int upload_tables(struct shard_gpu_layer *gl, uint32_t r, const struct shard_layer *l,
			 char *err)
{
	const struct krn_gpu_ops *ops = gl->seq->gs->ops;
	struct gpart *pt = &gl->part[r];
	size_t bytes = (size_t)N_TABS * gl->seq->geom->n_kv_heads * pt->cap * sizeof(void *);

	build_tables(gl, r, l);
	if (pt->stale == 2) {
		ops->dfree(pt->dtab);
		pt->dtab = NULL;
		if (ops->dalloc(&pt->dtab, bytes, err))
			return DKV_E_NOMEM;
	}
	if (ops->put(pt->dtab, pt->tab, bytes, err))
		return DKV_E_INTERNAL;
	pt->stale = 0;
	return 0;
}

/* A device page for page p of the layer, on its shard. */
static int add_page(struct shard_gpu_layer *gl, uint32_t p, char *err)
{
	const struct krn_gpu_ops *ops = gl->seq->gs->ops;
	uint32_t S = gl->seq->gs->n, r = shard_page_owner(p, S);
	struct gpart *pt = &gl->part[r];

	if (part_grow(pt, gl->seq->geom->n_kv_heads))
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for GPU page tables");
	if (ops->device(gl->seq->gs->dev[r], err) ||
	    ops->dalloc(&pt->dpage[pt->n_local], dpage_bytes(gl->seq->geom), err))
		return DKV_E_NOMEM;
	pt->n_local++;
	if (!pt->stale)
		pt->stale = 1;
	return 0;
}

int shard_gpu_reserve(struct shard_gpu_layer *gl, const struct shard_layer *l, char *err)
{
	char kerr[KRN_MSGLEN] = "";
	int rc = 0;

	while (rc == 0 && gl->n_pages < l->n_pages) {
		rc = add_page(gl, gl->n_pages, kerr);
		if (rc == 0)
			gl->n_pages++;
	}
	for (uint32_t r = 0; r < gl->seq->gs->n; r++) {
		if (!gl->part[r].stale)
			continue;
		int urc = gl->seq->gs->ops->device(gl->seq->gs->dev[r], kerr);
		if (!urc)
			urc = upload_tables(gl, r, l, kerr);
		rc = rc ? rc : urc;
	}
	if (rc)
		return krn_msgf(err, DKV_E_NOMEM, "GPU pages: %.200s", kerr);
	return DKV_OK;
}

void shard_gpu_dirty(struct shard_gpu_layer *gl, uint32_t h, uint64_t t0)
{
	if (!gl)
		return;
	for (uint32_t r = 0; r < gl->seq->gs->n; r++)
		if (gl->part[r].clean[h] > t0)
			gl->part[r].clean[h] = t0;
}

/* The pointer a host table of head h holds for local page lp. */
static uint8_t *dpage_of(struct gpart *pt, uint32_t H, int kind, uint32_t h, uint64_t lp)
{
	return (uint8_t *)tab_slot(pt, H, kind, h)[lp];
}

int shard_gpu_flush(struct shard_gpu_layer *gl, uint32_t r, const struct shard_layer *l,
		    uint32_t h, char *err)
{
	const struct krn_gpu_ops *ops = gl->seq->gs->ops;
	struct gpart *pt = &gl->part[r];
	uint32_t S = gl->seq->gs->n, H = gl->seq->geom->n_kv_heads, words = l->g->words;
	size_t gb = (size_t)words * 8 * KRN_CODE_GROUP;
	uint64_t from = pt->clean[h], p = from / SHARD_PAGE;

	for (p = shard_first_owned(p, r, S); p * SHARD_PAGE < l->len; p += S) {
		uint64_t lp = p / S, base = p * SHARD_PAGE;
		uint64_t lo = (from > base ? from : base) - base;
		uint64_t hi = (l->len < base + SHARD_PAGE ? l->len : base + SHARD_PAGE) - base;
		uint64_t g0 = lo / KRN_CODE_GROUP, g1 = (hi + KRN_CODE_GROUP - 1) / KRN_CODE_GROUP;
		if (lp >= pt->n_local)
			return krn_msgf(err, DKV_E_INTERNAL, "page %llu has no device page",
					(unsigned long long)p);
		if (ops->put(dpage_of(pt, H, TAB_CODES, h, lp) + g0 * gb,
			     shard_codes(l, h, base) + g0 * gb, (g1 - g0) * gb, err) ||
		    ops->put(dpage_of(pt, H, TAB_NORMS, h, lp) + lo * 4,
			     shard_norm(l, h, base + lo), (hi - lo) * 4, err) ||
		    ops->put(dpage_of(pt, H, TAB_CLS, h, lp) + lo, shard_cls(l, h, base + lo),
			     hi - lo, err))
			return DKV_E_INTERNAL;
	}
	pt->clean[h] = l->len;
	return 0;
}
