/*
 * gpu_jobs.c - the jobs' device parts on the GPU shards (see gpu.h): the
 * coarse scan, the fine ranking of the kept hits, the exact partials and
 * the all-gather, each on the shard's own device and staging buffers,
 * and their table, shard_gpu_dev_ops, that a task's dev points to.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "dashkv.h"
#include "gpu.h"
#include "gpu_int.h"
#include "krn_gpu.h"
#include "task.h"

/* ---- errors and buffers ---- */

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

/* Grow b to at least bytes with alloc and release: device or pinned host memory. */
static int gbuf_grow(struct gbuf *b, size_t bytes, int (*alloc)(void **p, size_t bytes, char *err),
		     void (*release)(void *p), char *err)
{
	size_t cap = round_up(bytes);

	if (b->cap >= bytes)
		return 0;
	release(b->p);
	b->p = NULL;
	b->cap = 0;
	if (alloc(&b->p, cap, err))
		return DKV_E_NOMEM;
	b->cap = cap;
	return 0;
}

static int gbuf_dev(const struct krn_gpu_ops *ops, struct gbuf *b, size_t bytes, char *err)
{
	return gbuf_grow(b, bytes, ops->dalloc, ops->dfree, err);
}

static int gbuf_host(const struct krn_gpu_ops *ops, struct gbuf *b, size_t bytes, char *err)
{
	return gbuf_grow(b, bytes, ops->halloc, ops->hfree, err);
}

static size_t align16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* ---- spans and the job context ---- */

/* Local position x of shard r (of S) as a position of the layer. */
static uint64_t to_global(uint64_t x, uint32_t S, uint32_t r)
{
	return (((x >> SHARD_PAGE_SHIFT) * S + r) << SHARD_PAGE_SHIFT) | (x & (SHARD_PAGE - 1));
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
	sp->pf = shard_first_owned(p0, r, S);
	if (sp->pf > last)
		return 0;
	sp->pl = shard_last_owned(last, r, S);
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
	char err[KRN_MSGLEN];
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

/* ---- the jobs ---- */

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
			.shift = SHARD_PAGE_SHIFT,
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
	if (shard_gpu_flush(c->gl, c->r, c->t->l, c->t->h, c->err) ||
	    scan_buffers(c, sp, qs.bytes, nb) || put_query(c, &qs))
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

static int gpu_scan(struct shard_task *t, uint32_t r)
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

/* A layer position of shard r as the device's local position. */
static uint64_t to_local(uint64_t x, uint32_t S)
{
	return (((x >> SHARD_PAGE_SHIFT) / S) << SHARD_PAGE_SHIFT) | (x & (SHARD_PAGE - 1));
}

/*
 * The hits that passed the pool's sketch cut (compacted on the host) up,
 * as local positions through the staging buffer.
 */
static int put_pool(struct jctx *c)
{
	struct shard_task *t = c->t;
	struct shard_rank *rk = &t->rank[c->r];
	uint32_t *st = c->w->stage.p;
	size_t hc = t->hit_cap;

	for (uint32_t j = 0; t->pool && j < t->g; j++) {
		for (uint32_t i = 0; i < rk->n_keep[j]; i++)
			st[i] = (uint32_t)to_local(rk->hit[j * hc + i], c->S);
		if (rk->n_keep[j] && c->ops->put(d_hit(c) + j * hc, st, rk->n_keep[j] * 4, c->err))
			return -1;
	}
	return 0;
}

/*
 * The kept hits' exact logits (the scan left the hits on the device; a
 * pool's cut sends those that passed it).
 */
static int fine_run(struct jctx *c)
{
	struct shard_task *t = c->t;
	struct shard_rank *rk = &t->rank[c->r];
	size_t qb = (size_t)t->g * t->dim * 4, hc = t->hit_cap;
	struct krn_gpu_rows k = { dtab(c, TAB_K), SHARD_PAGE_SHIFT, t->l->g->dtype, t->dim };
	uint32_t nmax = 0;

	for (uint32_t j = 0; j < t->g; j++)
		nmax = rk->n_keep[j] > nmax ? rk->n_keep[j] : nmax;
	if (!nmax)
		return 0;
	if (gbuf_dev(c->ops, &c->w->q, qb, c->err) ||
	    gbuf_host(c->ops, &c->w->stage, t->g * hc * 4 > qb ? t->g * hc * 4 : qb, c->err) ||
	    put_pool(c) ||
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

static int gpu_fine(struct shard_task *t, uint32_t r)
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
	struct krn_gpu_rows k = { dtab(c, TAB_K), SHARD_PAGE_SHIFT, g->dtype, t->dim };
	struct krn_gpu_rows v = { dtab(c, TAB_V), SHARD_PAGE_SHIFT, g->dtype, t->dim };
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

static int gpu_exact(struct shard_task *t, uint32_t r)
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
static void gpu_allgather(struct shard_task *t, uint32_t r, const void *rec, void *recv,
			  size_t bytes)
{
	struct shard_gpu_seq *s = t->gpu->seq;
	const struct krn_gpu_ops *ops = s->gs->ops;
	struct gwork *w = &s->work[r];
	char err[KRN_MSGLEN] = "";
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

const struct shard_dev_ops shard_gpu_dev_ops = {
	.scan = gpu_scan,
	.fine = gpu_fine,
	.exact = gpu_exact,
	.allgather = gpu_allgather,
};
