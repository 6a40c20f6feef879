/* gpu.c - GPU shards (see gpu.h). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "gpu.h"
#include "krn_gpu.h"
#include "step.h"

#define PAGE_SHIFT 12u
_Static_assert(SHARD_PAGE == 1u << PAGE_SHIFT, "PAGE_SHIFT follows SHARD_PAGE");

/* The five page tables of a shard's layer, per head. */
enum { TAB_CODES, TAB_NORMS, TAB_CLS, TAB_K, TAB_V, N_TABS };

struct shard_gpus {
	const struct krn_gpu_ops *ops;
	uint32_t n;
	int *dev;                 /* [n] CUDA device of each shard */
	struct shard_coll *nccl;  /* NULL: the all-gather uses shared memory */
	char coll_note[SHARD_ERRLEN];
	pthread_mutex_t lock;
	uint64_t fallbacks;
	char last[SHARD_ERRLEN];
};

/* A buffer grown on demand: device memory or pinned host memory. */
struct gbuf {
	void *p;
	size_t cap;
};

/* One shard's scratch for a sequence. */
struct gwork {
	struct gbuf q;      /* device: the query side */
	struct gbuf hits;   /* device: n_hit [g], hit [g][hc], cnt [g], logit [g][hc] */
	struct gbuf blk;    /* device: block masses */
	struct gbuf ws;     /* device: scan workspace */
	struct gbuf part;   /* device: exact partials */
	struct gbuf stage;  /* pinned host: everything that crosses the bus */
	void *send, *recv;  /* device: the all-gather's records */
	int hits_ok;        /* hits holds the scan of the current task */
};

/* Shard r's mirror of a layer: its pages in local order (page lp * n + r). */
struct gpart {
	uint32_t n_local, cap;
	void **dpage;       /* [cap] device memory of each page */
	const void **tab;   /* [N_TABS][heads][cap] page pointers (host copy) */
	void *dtab;         /* the same on the device */
	int stale;          /* dtab lags tab */
	uint64_t *clean;    /* [heads] tokens mirrored from the host store */
};

struct shard_gpu_layer {
	struct shard_gpu_seq *seq;
	uint32_t n_pages;   /* pages of the layer with a device page */
	struct gpart *part; /* [n] */
};

struct shard_gpu_seq {
	struct shard_gpus *gs;
	const struct shard_geom *geom;
	uint32_t n_layers, g, top_k;
	struct shard_gpu_layer *layers;
	struct gwork *work; /* [n] */
	pthread_mutex_t lock;
	int gather_failed;
	char gather_err[SHARD_ERRLEN];
};

/* ---- errors and buffers ---- */

static int gfail(char *err, int code, const char *fmt, const char *a, const char *b)
{
	if (err)
		snprintf(err, SHARD_ERRLEN, fmt, a, b);
	return code;
}

/* A device call failed on shard r: the host runs the job; keep the message. */
static void note_fallback(struct shard_gpus *gs, uint32_t r, const char *why)
{
	pthread_mutex_lock(&gs->lock);
	gs->fallbacks++;
	snprintf(gs->last, sizeof(gs->last), "GPU shard %u (device %d): %.200s", r, gs->dev[r], why);
	pthread_mutex_unlock(&gs->lock);
}

static size_t round_up(size_t want)
{
	size_t cap = 4096;

	while (cap < want)
		cap *= 2;
	return cap;
}

static int gbuf_dev(const struct krn_gpu_ops *ops, struct gbuf *b, size_t bytes, char *err)
{
	size_t cap = round_up(bytes);

	if (b->cap >= bytes)
		return 0;
	ops->dfree(b->p);
	b->p = NULL;
	b->cap = 0;
	if (ops->dalloc(&b->p, cap, err))
		return DKV_E_NOMEM;
	b->cap = cap;
	return 0;
}

static int gbuf_host(const struct krn_gpu_ops *ops, struct gbuf *b, size_t bytes, char *err)
{
	size_t cap = round_up(bytes);

	if (b->cap >= bytes)
		return 0;
	ops->hfree(b->p);
	b->p = NULL;
	b->cap = 0;
	if (ops->halloc(&b->p, cap, err))
		return DKV_E_NOMEM;
	b->cap = cap;
	return 0;
}

static size_t align16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* ---- opening the shards ---- */

/* The CUDA device of plan GPU d: its cudaN, else nvmlN, else d (PCI order). */
static int cuda_of(const struct shard_topo *t, int d)
{
	const struct shard_gpu *g = &t->gpus[d];

	return g->cuda >= 0 ? g->cuda : g->nvml >= 0 ? g->nvml : d;
}

static int add_dev(struct shard_gpus *gs, const char *spec, unsigned long d, int ndev,
		   char *err)
{
	char what[64];

	snprintf(what, sizeof(what), "%lu", d);
	if (d >= (unsigned long)ndev) {
		char have[48];
		snprintf(have, sizeof(have), "CUDA reports %d device%s", ndev, ndev == 1 ? "" : "s");
		return gfail(err, DKV_E_INVAL, "no CUDA device %s (%s)", what, have);
	}
	for (uint32_t i = 0; i < gs->n; i++)
		if (gs->dev[i] == (int)d)
			return gfail(err, DKV_E_INVAL, "%s: device %s listed twice", spec, what);
	gs->dev[gs->n++] = (int)d;
	return 0;
}

/*
 * gpu:all or gpu:LIST against CUDA's devices, for a topology in which
 * hwloc sees no GPU (built without its CUDA and NVML plugins).
 */
static int parse_devices(struct shard_gpus *gs, const char *spec, int ndev, char *err)
{
	const char *s = spec + 4;
	char *end;
	int rc;

	if (!strcmp(s, "all")) {
		for (int d = 0; d < ndev; d++)
			gs->dev[gs->n++] = d;
		return 0;
	}
	for (;;) {
		unsigned long a, b;
		if (*s < '0' || *s > '9')
			break;
		a = b = strtoul(s, &end, 10);
		if (*end == '-') {
			if (end[1] < '0' || end[1] > '9')
				break;
			b = strtoul(end + 1, &end, 10);
		}
		for (unsigned long d = a; d <= b && d - a < 4096; d++)
			if ((rc = add_dev(gs, spec, d, ndev, err)))
				return rc;
		if (a > b)
			break;
		if (*end == '\0')
			return 0;
		if (*end != ',')
			break;
		s = end + 1;
	}
	return gfail(err, DKV_E_INVAL, "%s: want gpu:all or gpu:LIST of CUDA devices%s", spec,
		     " such as gpu:0,2-3");
}

static int plan_devices(struct shard_gpus *gs, const struct shard_topo *t, const char *spec,
			int ndev, struct shard_plan **plan, char *err)
{
	if (!t || !t->n_gpus)
		return parse_devices(gs, spec, ndev, err);
	if (shard_plan_make(t, spec, plan, err, SHARD_ERRLEN))
		return DKV_E_INVAL;
	for (unsigned i = 0; i < (*plan)->n; i++) {
		int rc = add_dev(gs, spec, (unsigned long)cuda_of(t, (*plan)->shards[i].device),
				 ndev, err);
		if (rc) {
			shard_plan_free(*plan);
			*plan = NULL;
			return rc;
		}
	}
	return 0;
}

/* The NCCL collective over the shards' devices; shared memory without one. */
static void open_coll(struct shard_gpus *gs)
{
	char cerr[SHARD_ERRLEN] = "";

	snprintf(gs->coll_note, sizeof(gs->coll_note), "shared memory");
	if (gs->n < 2)
		snprintf(gs->coll_note, sizeof(gs->coll_note), "none (one shard)");
	if (gs->n < 2 || !gs->ops->coll_nccl_new)
		return;
	shard_coll_set_nccl(gs->ops->coll_nccl_new);
	if (shard_coll_new(&gs->nccl, SHARD_COLL_NCCL, (int)gs->n, gs->dev, cerr) == DKV_OK) {
		snprintf(gs->coll_note, sizeof(gs->coll_note), "%s", shard_coll_name(gs->nccl));
		return;
	}
	gs->nccl = NULL;
	snprintf(gs->coll_note, sizeof(gs->coll_note), "shared memory (%.200s)", cerr);
}

int shard_gpus_open(struct shard_gpus **out, const struct shard_topo *t, const char *spec,
		    struct shard_plan **plan, char *err)
{
	char kerr[KRN_GPU_ERRLEN] = "";
	const struct krn_gpu_ops *ops;
	struct shard_gpus *gs;
	int ndev = 0, rc;

	*plan = NULL;
	rc = krn_gpu_load(NULL, &ops, kerr);
	if (rc == DKV_OK)
		rc = ops->probe(&ndev, kerr);
	if (rc)
		return gfail(err, rc, "GPU shards need the GPU module and a CUDA device: %.200s%s",
			     kerr, "");
	gs = calloc(1, sizeof(*gs));
	if (!gs || !(gs->dev = calloc((size_t)ndev + 1, sizeof(int)))) {
		free(gs);
		return gfail(err, DKV_E_NOMEM, "out of memory for %s%s", "GPU shards", "");
	}
	gs->ops = ops;
	pthread_mutex_init(&gs->lock, NULL);
	rc = plan_devices(gs, t, spec, ndev, plan, err);
	if (rc == DKV_OK && gs->n == 0)
		rc = gfail(err, DKV_E_INVAL, "%s: no GPU listed%s", spec, "");
	if (rc) {
		shard_gpus_close(gs);
		return rc;
	}
	open_coll(gs);
	*out = gs;
	return DKV_OK;
}

void shard_gpus_close(struct shard_gpus *g)
{
	if (!g)
		return;
	shard_coll_free(g->nccl);
	pthread_mutex_destroy(&g->lock);
	free(g->dev);
	free(g);
}

uint32_t shard_gpus_count(const struct shard_gpus *g)
{
	return g->n;
}

void shard_gpus_describe(const struct shard_gpus *g, char *buf, size_t len)
{
	size_t at = (size_t)snprintf(buf, len, "%s module, %u GPU shard%s on device%s ",
				     g->ops->name, g->n, g->n == 1 ? "" : "s", g->n == 1 ? "" : "s");

	for (uint32_t i = 0; i < g->n && at < len; i++)
		at += (size_t)snprintf(buf + at, len - at, "%s%d", i ? "," : "", g->dev[i]);
	if (at < len)
		snprintf(buf + at, len - at, ", all-gather %s", g->coll_note);
}

uint64_t shard_gpus_fallbacks(const struct shard_gpus *g, char *last, size_t len)
{
	struct shard_gpus *m = (struct shard_gpus *)g;
	uint64_t n;

	pthread_mutex_lock(&m->lock);
	n = m->fallbacks;
	if (last && len)
		snprintf(last, len, "%s", m->last);
	pthread_mutex_unlock(&m->lock);
	return n;
}

/* ---- a sequence: pinned pages, mirrors, scratch ---- */

static void *pinned_alloc(size_t bytes, void *ctx)
{
	struct shard_gpus *gs = ctx;
	char err[KRN_GPU_ERRLEN];
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
	char err[KRN_GPU_ERRLEN];

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
	char kerr[KRN_GPU_ERRLEN] = "";

	if (!s)
		return gfail(err, DKV_E_NOMEM, "out of memory for %s%s", "a GPU sequence", "");
	s->gs = gs;
	s->geom = geom;
	s->n_layers = n_layers;
	s->g = g;
	s->top_k = top_k;
	pthread_mutex_init(&s->lock, NULL);
	s->work = calloc(gs->n, sizeof(*s->work));
	if (!s->work || layers_alloc(s)) {
		shard_gpu_seq_free(s);
		return gfail(err, DKV_E_NOMEM, "out of memory for %s%s", "a GPU sequence", "");
	}
	for (uint32_t r = 0; r < gs->n; r++)
		if (work_init(s, r, kerr)) {
			shard_gpu_seq_free(s);
			return gfail(err, DKV_E_NOMEM, "GPU shard buffers: %.200s%s", kerr, "");
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
	int failed;

	pthread_mutex_lock(&s->lock);
	failed = s->gather_failed;
	s->gather_failed = 0;
	if (failed && err)
		snprintf(err, SHARD_ERRLEN, "%.200s; this step's outputs are not valid",
			 s->gather_err);
	pthread_mutex_unlock(&s->lock);
	return failed ? DKV_E_INTERNAL : DKV_OK;
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
	uint32_t S = gl->seq->gs->n, r = p % S;
	struct gpart *pt = &gl->part[r];

	if (part_grow(pt, gl->seq->geom->n_kv_heads))
		return gfail(err, DKV_E_NOMEM, "out of memory for %s%s", "GPU page tables", "");
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
	char kerr[KRN_GPU_ERRLEN] = "";
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
		return gfail(err, DKV_E_NOMEM, "GPU pages: %.200s%s", kerr, "");
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

/* ---- the jobs ---- */

/* Local position x of shard r (of S) as a position of the layer. */
static uint64_t to_global(uint64_t x, uint32_t S, uint32_t r)
{
	return (((x >> PAGE_SHIFT) * S + r) << PAGE_SHIFT) | (x & (SHARD_PAGE - 1));
}

/*
 * Shard r's pages of [t0, t1): first pf and last pl (a step of S apart),
 * and the part of [t0, t1) they hold as one run [*lf, *le) of the shard's
 * local positions.  0 when it holds none.
 */
struct span {
	uint64_t pf, pl, lf, le;
};

static int local_span(uint32_t S, uint32_t r, uint64_t t0, uint64_t t1, struct span *sp)
{
	uint64_t p0, np = shard_pages_of(t0, t1, &p0), last;

	if (!np)
		return 0;
	last = p0 + np - 1;
	sp->pf = p0 + (r + S - p0 % S) % S;
	if (sp->pf > last)
		return 0;
	sp->pl = last - (last % S + S - r) % S;
	uint64_t a = t0 > sp->pf * SHARD_PAGE ? t0 : sp->pf * SHARD_PAGE;
	uint64_t b = t1 < (sp->pl + 1) * SHARD_PAGE ? t1 : (sp->pl + 1) * SHARD_PAGE;
	sp->lf = (sp->pf / S) * SHARD_PAGE + (a - sp->pf * SHARD_PAGE);
	sp->le = (sp->pl / S) * SHARD_PAGE + (b - sp->pl * SHARD_PAGE);
	return 1;
}

/* What a job needs at hand. */
struct jctx {
	struct shard_task *t;
	uint32_t r, S, H;
	struct shard_gpu_layer *gl;
	struct shard_gpus *gs;
	const struct krn_gpu_ops *ops;
	struct gpart *pt;
	struct gwork *w;
	char err[KRN_GPU_ERRLEN];
};

static int jctx_init(struct jctx *c, struct shard_task *t, uint32_t r)
{
	c->t = t;
	c->r = r;
	c->gl = t->gpu;
	c->gs = c->gl->seq->gs;
	c->ops = c->gs->ops;
	c->S = c->gs->n;
	c->H = c->gl->seq->geom->n_kv_heads;
	c->pt = &c->gl->part[r];
	c->w = &c->gl->seq->work[r];
	c->err[0] = '\0';
	if (t->n_shards != c->S || c->pt->stale) {
		snprintf(c->err, sizeof(c->err), "%s", c->pt->stale ? "page tables not on the device"
				 : "the task's shard count is not the GPU shards'");
		return -1;
	}
	return c->ops->device(c->gs->dev[r], c->err);
}

/* A device page table of head h: kind TAB_*. */
static const void *const *dtab(const struct jctx *c, int kind)
{
	return (const void *const *)c->pt->dtab + ((size_t)kind * c->H + c->t->h) * c->pt->cap;
}

/* The pointer a host table holds for local page lp. */
static uint8_t *dpage_of(const struct jctx *c, int kind, uint64_t lp)
{
	return (uint8_t *)tab_slot(c->pt, c->H, kind, c->t->h)[lp];
}

/* Mirror head h's codes, norms and classes of the shard's pages from clean on. */
static int flush(struct jctx *c)
{
	const struct shard_layer *l = c->t->l;
	uint32_t h = c->t->h, words = l->g->words;
	size_t gb = (size_t)words * 8 * KRN_CODE_GROUP;
	uint64_t from = c->pt->clean[h], p = from / SHARD_PAGE;

	for (p += (c->r + c->S - p % c->S) % c->S; p * SHARD_PAGE < l->len; p += c->S) {
		uint64_t lp = p / c->S, base = p * SHARD_PAGE;
		uint64_t lo = (from > base ? from : base) - base;
		uint64_t hi = (l->len < base + SHARD_PAGE ? l->len : base + SHARD_PAGE) - base;
		uint64_t g0 = lo / KRN_CODE_GROUP, g1 = (hi + KRN_CODE_GROUP - 1) / KRN_CODE_GROUP;
		if (lp >= c->pt->n_local) {
			snprintf(c->err, sizeof(c->err), "page %llu has no device page",
				 (unsigned long long)p);
			return DKV_E_INTERNAL;
		}
		if (c->ops->put(dpage_of(c, TAB_CODES, lp) + g0 * gb,
				shard_codes(l, h, base) + g0 * gb, (g1 - g0) * gb, c->err) ||
		    c->ops->put(dpage_of(c, TAB_NORMS, lp) + lo * 4, shard_norm(l, h, base + lo),
				(hi - lo) * 4, c->err) ||
		    c->ops->put(dpage_of(c, TAB_CLS, lp) + lo, shard_cls(l, h, base + lo), hi - lo,
				c->err))
			return DKV_E_INTERNAL;
	}
	c->pt->clean[h] = l->len;
	return 0;
}

/* Layout of the hits buffer: n_hit [g], hit [g][hc], cnt [g], logit [g][hc]. */
static uint32_t *d_nhit(const struct jctx *c)
{
	return c->w->hits.p;
}

static uint32_t *d_hit(const struct jctx *c)
{
	return d_nhit(c) + c->t->g;
}

static uint32_t *d_cnt(const struct jctx *c)
{
	return d_hit(c) + (size_t)c->t->g * c->t->hit_cap;
}

static float *d_logit(const struct jctx *c)
{
	return (float *)(d_cnt(c) + c->t->g);
}

static int scan_buffers(struct jctx *c, const struct span *sp, size_t qbytes, size_t nb)
{
	size_t g = c->t->g, hc = c->t->hit_cap;
	uint32_t nq = c->t->g < KRN_GPU_MAXQ ? c->t->g : KRN_GPU_MAXQ;
	size_t hbytes = (2 * g + 2 * g * hc) * 4, blk = g * nb * 4;
	size_t out = (g + g * hc) * 4 > blk ? (g + g * hc) * 4 : blk;

	if (gbuf_dev(c->ops, &c->w->q, qbytes, c->err) ||
	    gbuf_dev(c->ops, &c->w->hits, hbytes, c->err) ||
	    gbuf_dev(c->ops, &c->w->blk, blk, c->err) ||
	    gbuf_dev(c->ops, &c->w->ws, c->ops->scan_ws(nq, (uint32_t)sp->lf,
							 (uint32_t)(sp->le - sp->lf)), c->err) ||
	    gbuf_host(c->ops, &c->w->stage, qbytes > out ? qbytes : out, c->err))
		return DKV_E_NOMEM;
	return 0;
}

/* The query side of the scan: its six arrays, their sizes and offsets. */
struct qside {
	const void *src[6];
	size_t len[6], off[6], bytes;
};

static void query_layout(const struct jctx *c, struct qside *qs)
{
	const struct krn_scan_q *q = c->t->q;
	size_t g = c->t->g, tl = 64 * (size_t)q->words + 1;
	size_t len[6] = { g * q->words * 8, g * tl * 4, g * KRN_CLASSES * 4, g * 4, g * 4, g * 4 };
	const void *src[6] = { q->qc, q->tab, q->lim, q->thr, q->ca, q->cb };

	qs->bytes = 0;
	for (int i = 0; i < 6; i++) {
		qs->src[i] = src[i];
		qs->len[i] = len[i];
		qs->off[i] = qs->bytes;
		qs->bytes += align16(len[i]);
	}
}

/* Stage the query side in pinned memory and put it on the device. */
static int put_query(struct jctx *c, const struct qside *qs)
{
	for (int i = 0; i < 6; i++)
		memcpy((char *)c->w->stage.p + qs->off[i], qs->src[i], qs->len[i]);
	return c->ops->put(c->w->q.p, c->w->stage.p, qs->bytes, c->err);
}

/* The scan of queries [j0, j0 + nq) over the shard's run of the middle. */
static int scan_batch(struct jctx *c, const struct span *sp, const struct qside *qs,
		      size_t nb, uint32_t j0, uint32_t nq)
{
	const struct krn_scan_q *q = c->t->q;
	const char *dq = c->w->q.p;
	const size_t *o = qs->off;
	size_t tl = 64 * (size_t)q->words + 1, hc = c->t->hit_cap;
	struct krn_gpu_scan s = {
		.nq = nq, .words = q->words, .stride = q->stride,
		.qc = (const uint64_t *)(dq + o[0]) + (size_t)j0 * q->words,
		.tab = (const float *)(dq + o[1]) + j0 * tl,
		.lim = (const int32_t *)(dq + o[2]) + (size_t)j0 * KRN_CLASSES,
		.thr = (const float *)(dq + o[3]) + j0,
		.ca = (const float *)(dq + o[4]) + j0,
		.cb = (const float *)(dq + o[5]) + j0,
		.keys = {
			.codes = (const uint8_t *const *)dtab(c, TAB_CODES),
			.norms = (const float *const *)dtab(c, TAB_NORMS),
			.cls = (const uint8_t *const *)dtab(c, TAB_CLS),
			.shift = PAGE_SHIFT,
		},
		.first = (uint32_t)sp->lf, .n = (uint32_t)(sp->le - sp->lf), .base = 0,
		.hit = d_hit(c) + j0 * hc, .hit_cap = (uint32_t)hc, .n_hit = d_nhit(c) + j0,
		.blk = c->t->tail ? (float *)c->w->blk.p + j0 * nb : NULL, .ld_blk = nb,
		.ws = c->w->ws.p,
	};

	return c->ops->scan(&s, c->err);
}

/* Hits to positions of the layer; block masses to their places in blk. */
static void scan_unpack(struct jctx *c)
{
	struct shard_task *t = c->t;
	struct shard_rank *rk = &t->rank[c->r];
	const uint32_t *st = c->w->stage.p, *hit = st + t->g;
	size_t hc = t->hit_cap;

	for (uint32_t j = 0; j < t->g; j++) {
		uint32_t n = st[j] < hc ? st[j] : (uint32_t)hc;
		rk->n_hit[j] = st[j];
		for (uint32_t i = 0; i < n; i++)
			rk->hit[j * hc + i] = (uint32_t)to_global(hit[j * hc + i], c->S, c->r);
	}
}

static int scan_blocks(struct jctx *c, const struct span *sp, size_t nb)
{
	struct shard_task *t = c->t;
	const float *st = c->w->stage.p;
	uint64_t b0 = t->m0 / SHARD_BLOCK, lb0 = sp->lf / SHARD_BLOCK;

	if (c->ops->get(c->w->stage.p, c->w->blk.p, (size_t)t->g * nb * 4, c->err))
		return DKV_E_INTERNAL;
	for (uint64_t p = sp->pf; p <= sp->pl; p += c->S) {
		uint64_t base = p * SHARD_PAGE, a = t->m0 > base ? t->m0 : base;
		uint64_t b = t->m1 < base + SHARD_PAGE ? t->m1 : base + SHARD_PAGE;
		uint64_t ba = a / SHARD_BLOCK, bb = (b + SHARD_BLOCK - 1) / SHARD_BLOCK;
		uint64_t la = ((p / c->S) * SHARD_PAGE + a - base) / SHARD_BLOCK - lb0;
		for (uint32_t j = 0; j < t->g; j++)
			memcpy(t->blk + j * t->blk_cap + (ba - b0), st + j * nb + la,
			       (bb - ba) * sizeof(float));
	}
	return 0;
}

static int scan_run(struct jctx *c, const struct span *sp)
{
	struct shard_task *t = c->t;
	size_t nb = (sp->le + SHARD_BLOCK - 1) / SHARD_BLOCK - sp->lf / SHARD_BLOCK;
	struct qside qs;

	query_layout(c, &qs);
	if (flush(c) || scan_buffers(c, sp, qs.bytes, nb) || put_query(c, &qs))
		return -1;
	if (t->tail && c->ops->memset0(c->w->blk.p, (size_t)t->g * nb * 4, c->err))
		return -1;
	for (uint32_t j0 = 0; j0 < t->g; j0 += KRN_GPU_MAXQ) {
		uint32_t nq = t->g - j0 < KRN_GPU_MAXQ ? t->g - j0 : KRN_GPU_MAXQ;
		if (scan_batch(c, sp, &qs, nb, j0, nq))
			return -1;
	}
	if (c->ops->get(c->w->stage.p, d_nhit(c), ((size_t)t->g + (size_t)t->g * t->hit_cap) * 4,
			c->err))
		return -1;
	scan_unpack(c);
	return t->tail ? scan_blocks(c, sp, nb) : 0;
}

int shard_gpu_scan(struct shard_task *t, uint32_t r)
{
	struct jctx c;
	struct span sp;

	t->gpu->seq->work[r].hits_ok = 0;
	if (!local_span(t->n_shards, r, t->m0, t->m1, &sp)) {
		memset(t->rank[r].n_hit, 0, t->g * sizeof(uint32_t));
		t->gpu->seq->work[r].hits_ok = 1;
		return 0;
	}
	if (jctx_init(&c, t, r) || scan_run(&c, &sp)) {
		note_fallback(t->gpu->seq->gs, r, c.err);
		return -1;
	}
	c.w->hits_ok = 1;
	return 0;
}

/* The kept hits' exact logits (the scan left the hits on the device). */
static int fine_run(struct jctx *c)
{
	struct shard_task *t = c->t;
	struct shard_rank *rk = &t->rank[c->r];
	size_t qb = (size_t)t->g * t->dim * 4, hc = t->hit_cap;
	struct krn_gpu_rows k = { dtab(c, TAB_K), PAGE_SHIFT, t->l->g->dtype, t->dim };
	uint32_t nmax = 0;

	for (uint32_t j = 0; j < t->g; j++)
		nmax = rk->n_keep[j] > nmax ? rk->n_keep[j] : nmax;
	if (!nmax)
		return 0;
	if (gbuf_dev(c->ops, &c->w->q, qb, c->err) ||
	    gbuf_host(c->ops, &c->w->stage, t->g * hc * 4 > qb ? t->g * hc * 4 : qb, c->err) ||
	    c->ops->put(c->w->q.p, t->qg, qb, c->err) ||
	    c->ops->put(d_cnt(c), rk->n_keep, t->g * 4, c->err) ||
	    c->ops->fine(c->w->q.p, t->g, t->dim, &k, d_hit(c), hc, d_cnt(c), nmax, t->scale,
			 d_logit(c), hc, c->err) ||
	    c->ops->get(c->w->stage.p, d_logit(c), t->g * hc * 4, c->err))
		return -1;
	for (uint32_t j = 0; j < t->g; j++)
		memcpy(rk->logit + j * hc, (const float *)c->w->stage.p + j * hc,
		       rk->n_keep[j] * sizeof(float));
	return 0;
}

int shard_gpu_fine(struct shard_task *t, uint32_t r)
{
	struct jctx c;

	if (!t->gpu->seq->work[r].hits_ok)
		return -1; /* the scan ran on the host: so does this */
	t->gpu->seq->work[r].hits_ok = 0;
	if (jctx_init(&c, t, r) || fine_run(&c)) {
		note_fallback(t->gpu->seq->gs, r, c.err);
		return -1;
	}
	return 0;
}

/* attend_range over local [a, b) into chunk c0 on of every query batch. */
static int exact_range(struct jctx *c, uint64_t a, uint64_t b, uint64_t C, uint64_t c0)
{
	struct shard_task *t = c->t;
	const struct shard_geom *g = t->l->g;
	struct krn_gpu_rows k = { dtab(c, TAB_K), PAGE_SHIFT, g->dtype, t->dim };
	struct krn_gpu_rows v = { dtab(c, TAB_V), PAGE_SHIFT, g->dtype, t->dim };
	float *m = c->w->part.p, *s = m + t->g * C, *acc = s + t->g * C;

	for (uint32_t j0 = 0; j0 < t->g; j0 += KRN_GPU_MAXQ) {
		uint32_t nq = t->g - j0 < KRN_GPU_MAXQ ? t->g - j0 : KRN_GPU_MAXQ;
		size_t at = j0 * C + c0 * nq;
		struct krn_gpu_part part = { m + at, s + at, acc + at * t->dim };
		if (c->ops->attend_range((const float *)c->w->q.p + (size_t)j0 * t->dim, nq,
					 t->dim, t->scale, &k, &v, a, b, SHARD_PAGE, &part, c->err))
			return -1;
	}
	return 0;
}

/* Each page's partial (pages pf, pf + S, ...: chunk i) into pms and pacc. */
static void exact_unpack(struct jctx *c, const struct span *sp, uint64_t C)
{
	struct shard_task *t = c->t;
	const float *m = c->w->stage.p, *s = m + t->g * C, *acc = s + t->g * C;
	size_t stride = (size_t)t->g * t->dim;

	for (uint64_t i = 0; i < C; i++) {
		uint64_t p = sp->pf + i * c->S;
		for (uint32_t j = 0; j < t->g; j++) {
			uint32_t j0 = j / KRN_GPU_MAXQ * KRN_GPU_MAXQ;
			uint32_t nq = t->g - j0 < KRN_GPU_MAXQ ? t->g - j0 : KRN_GPU_MAXQ;
			size_t at = j0 * C + i * nq + (j - j0);
			t->pms[(p * t->g + j) * 2] = m[at];
			t->pms[(p * t->g + j) * 2 + 1] = s[at];
			memcpy(t->pacc + p * stride + (size_t)j * t->dim, acc + at * t->dim,
			       t->dim * sizeof(float));
		}
	}
}

static int exact_run(struct jctx *c, const struct span *sp)
{
	struct shard_task *t = c->t;
	uint64_t C = (sp->pl - sp->pf) / c->S + 1, start = sp->lf, c0 = 0;
	size_t qb = (size_t)t->g * t->dim * 4, pb = (size_t)t->g * C * (2 + t->dim) * 4;

	if (gbuf_dev(c->ops, &c->w->q, qb, c->err) || gbuf_dev(c->ops, &c->w->part, pb, c->err) ||
	    gbuf_host(c->ops, &c->w->stage, pb, c->err) ||
	    c->ops->put(c->w->q.p, t->qg, qb, c->err))
		return -1;
	if (start % SHARD_PAGE) {
		/* a first page entered midway: a chunk of its own */
		uint64_t end = (start / SHARD_PAGE + 1) * SHARD_PAGE;
		if (exact_range(c, start, end < sp->le ? end : sp->le, C, 0))
			return -1;
		start = end;
		c0 = 1;
	}
	if (start < sp->le && exact_range(c, start, sp->le, C, c0))
		return -1;
	if (c->ops->get(c->w->stage.p, c->w->part.p, pb, c->err))
		return -1;
	exact_unpack(c, sp, C);
	return 0;
}

int shard_gpu_exact(struct shard_task *t, uint32_t r)
{
	struct jctx c;
	struct span sp;

	if (!local_span(t->n_shards, r, t->t0, t->t1, &sp))
		return 0;
	if (jctx_init(&c, t, r) || exact_run(&c, &sp)) {
		note_fallback(t->gpu->seq->gs, r, c.err);
		return -1;
	}
	return 0;
}

static void gather_failed(struct shard_gpu_seq *s, uint32_t r, const char *why)
{
	pthread_mutex_lock(&s->lock);
	s->gather_failed = 1;
	snprintf(s->gather_err, sizeof(s->gather_err), "GPU shard %u: all-gather: %.200s", r, why);
	pthread_mutex_unlock(&s->lock);
}

/*
 * The records through the NCCL collective, staged in device memory; every
 * rank joins the collective whatever failed before, so none waits forever.
 */
void shard_gpu_allgather(struct shard_task *t, uint32_t r, const void *rec, void *recv,
			 size_t bytes)
{
	struct shard_gpu_seq *s = t->gpu->seq;
	const struct krn_gpu_ops *ops = s->gs->ops;
	struct gwork *w = &s->work[r];
	char err[KRN_GPU_ERRLEN] = "";
	int bad;

	if (!s->gs->nccl) {
		shard_coll_allgather(t->coll, (int)r, rec, recv, bytes);
		return;
	}
	bad = ops->device(s->gs->dev[r], err) ||
	      gbuf_host(ops, &w->stage, bytes * s->gs->n, err);
	if (!bad) {
		memcpy(w->stage.p, rec, bytes);
		bad = ops->put(w->send, w->stage.p, bytes, err);
	}
	if (shard_coll_allgather(s->gs->nccl, (int)r, w->send, w->recv, bytes) && !bad) {
		snprintf(err, sizeof(err), "the %s collective failed", shard_coll_name(s->gs->nccl));
		bad = 1;
	}
	if (!bad)
		bad = ops->get(w->stage.p, w->recv, bytes * s->gs->n, err);
	if (bad)
		gather_failed(s, r, err);
	else
		memcpy(recv, w->stage.p, bytes * s->gs->n);
}
