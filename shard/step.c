/* step.c - one kv head group's search over a shard's pages (see step.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "step.h"

static struct shard_rec_head *rec_head(void *rec, uint32_t j, uint32_t top_k)
{
	return (struct shard_rec_head *)((char *)rec + shard_rec_bytes(j, top_k));
}

static struct shard_rec_ent *rec_ents(void *rec, uint32_t j, uint32_t top_k)
{
	return (struct shard_rec_ent *)(rec_head(rec, j, top_k) + 1);
}

/* The part of page p inside [t0, t1). */
static void page_span(uint64_t p, uint64_t t0, uint64_t t1, uint64_t *a, uint64_t *b)
{
	uint64_t s = p * SHARD_PAGE, e = s + SHARD_PAGE;

	*a = s > t0 ? s : t0;
	*b = e < t1 ? e : t1;
}

#define FOR_OWNED_PAGES(t, r, t0, t1, p, a, b)                                   \
	for (uint64_t p0_ = 0, np_ = shard_pages_of(t0, t1, &p0_),                \
		      p = shard_first_owned(p0_, r, (t)->n_shards), a = 0, b = 0; \
	     p < p0_ + np_ && (page_span(p, t0, t1, &a, &b), 1); p += (t)->n_shards)

/* ---- sample and scan ---- */

/* Which shard owns position pos. */
static uint32_t owner(const struct shard_task *t, uint32_t pos)
{
	return shard_page_owner(pos / SHARD_PAGE, t->n_shards);
}

void shard_job_sample(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	struct krn_scan_q q = { .nq = t->g, .words = t->l->g->words, .qc = t->qc, .tab = t->tab };

	/* the runs' cache lines are asked for a few runs ahead (krn estimate) */
	for (uint32_t i = 0; i < t->sn;) {
		uint32_t e = i + 1, o = owner(t, t->spos[i]);
		while (e < t->sn && owner(t, t->spos[e]) == o)
			e++;
		if (o == r)
			shard_estimate(t->l, t->h, &q, t->spos + i, e - i, t->se + i, t->sld);
		i = e;
	}
}

void shard_job_scan(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	struct shard_rank *rk = &t->rank[r];
	const struct krn_ops *ops = krn_get();
	uint64_t b0 = t->m0 / SHARD_BLOCK;
	struct krn_scan_out o = { rk->hit, t->hit_cap, rk->n_hit, NULL, t->blk_cap };

	if (t->dev && !t->dev->scan(t, r))
		return;
	memset(rk->n_hit, 0, t->g * sizeof(uint32_t));
	FOR_OWNED_PAGES(t, r, t->m0, t->m1, p, a, b) {
		uint64_t page0 = p * SHARD_PAGE;
		uint64_t ba = a / SHARD_BLOCK, bb = (b + SHARD_BLOCK - 1) / SHARD_BLOCK;
		struct krn_scan_keys k = {
			.codes = shard_codes(t->l, t->h, a),
			.cls = shard_cls(t->l, t->h, page0),
			.norms = shard_norm(t->l, t->h, page0),
			.first = (uint32_t)(a - page0),
			.n = (uint32_t)(b - a),
			.base = (uint32_t)page0,
		};
		if (t->tail) {
			for (uint32_t j = 0; j < t->g; j++)
				memset(t->blk + j * t->blk_cap + (ba - b0), 0,
				       (bb - ba) * sizeof(float));
			o.blk = t->blk + (ba - b0);
		}
		ops->scan(t->q, &k, &o);
	}
}

/* ---- fine ranking and the global top-K ---- */

/* Hit at[j] of query head j, or UINT32_MAX past its kept hits. */
static uint32_t hit_head(const struct shard_task *t, const struct shard_rank *rk, uint32_t j,
			 uint32_t at)
{
	return at < rk->n_keep[j] ? rk->hit[(size_t)j * t->hit_cap + at] : UINT32_MAX;
}

/*
 * Merge the group's sorted hit lists into u_pos; u_map maps them back.
 * head[j] is list j's next hit, so a step reads each hit once.
 */
static uint32_t hit_union(const struct shard_task *t, struct shard_rank *rk)
{
	uint32_t at[SHARD_UNION_MAX] = { 0 }, head[SHARD_UNION_MAX], nu = 0, hc = t->hit_cap;

	for (uint32_t j = 0; j < t->g; j++)
		head[j] = hit_head(t, rk, j, 0);
	for (;;) {
		uint32_t next = head[0];
		for (uint32_t j = 1; j < t->g; j++)
			next = head[j] < next ? head[j] : next;
		if (next == UINT32_MAX)
			return nu;
		for (uint32_t j = 0; j < t->g; j++)
			if (head[j] == next) {
				rk->u_map[(size_t)j * hc + at[j]++] = nu;
				head[j] = hit_head(t, rk, j, at[j]);
			}
		rk->u_pos[nu++] = next;
	}
}

/* Scores of the union (u_logit, ld apart) back to each head's hits. */
static void union_to_heads(const struct shard_task *t, struct shard_rank *rk, size_t ld)
{
	uint32_t hc = t->hit_cap;

	for (uint32_t j = 0; j < t->g; j++)
		for (uint32_t i = 0; i < rk->n_keep[j]; i++)
			rk->logit[(size_t)j * hc + i] =
				rk->u_logit[j * ld + rk->u_map[(size_t)j * hc + i]];
}

/*
 * Exact logits of the shard's hits.  Small groups gather the union of
 * their hits once and score it against all their queries.
 */
static void fine(const struct shard_task *t, struct shard_rank *rk)
{
	uint32_t g = t->g, hc = t->hit_cap;

	if (g > SHARD_UNION_MAX) {
		for (uint32_t j = 0; j < g; j++)
			shard_fine(t->l, t->h, t->qg + (size_t)j * t->dim, rk->hit + (size_t)j * hc,
				   rk->n_keep[j], t->scale, rk->logit + (size_t)j * hc, &rk->bufs);
		return;
	}
	uint32_t nu = hit_union(t, rk);
	size_t ld = (size_t)g * hc;
	shard_fine_multi(t->l, t->h, t->qg, g, rk->u_pos, nu, t->scale, rk->u_logit, ld,
			 &rk->bufs);
	union_to_heads(t, rk, ld);
}

/* ---- the pool: sketch scores and the cut ---- */

void shard_job_sketch(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	struct shard_rank *rk = &t->rank[r];
	uint32_t g = t->g, hc = t->hit_cap;

	if (g > SHARD_UNION_MAX) {
		for (uint32_t j = 0; j < g; j++)
			shard_sketch_scores(t->l, t->h, t->q8 + (size_t)j * t->dim, t->skmul + j,
					    t->skadd + j, 1, rk->hit + (size_t)j * hc, rk->n_keep[j],
					    rk->logit + (size_t)j * hc, hc, &rk->bufs);
		return;
	}
	uint32_t nu = hit_union(t, rk);
	size_t ld = (size_t)g * hc;
	shard_sketch_scores(t->l, t->h, t->q8, t->skmul, t->skadd, g, rk->u_pos, nu, rk->u_logit,
			    ld, &rk->bufs);
	union_to_heads(t, rk, ld);
}

/*
 * Head j's cut: the hits that pass stay in front, in position order
 * (the fine ranking's input); those let go follow them with their sketch
 * scores, for the tail.
 */
static void pool_cut(const struct shard_task *t, struct shard_rank *rk, uint32_t j)
{
	uint32_t *hit = rk->hit + (size_t)j * t->hit_cap, n = rk->n_keep[j], w = 0, f = 0;
	float *lg = rk->logit + (size_t)j * t->hit_cap, c = t->pcut[j];
	uint32_t cp = t->pcut_pos[j];

	for (uint32_t i = 0; i < n; i++) {
		if (lg[i] > c || (lg[i] == c && hit[i] <= cp)) {
			hit[w] = hit[i];
			lg[w++] = lg[i];
		} else {
			rk->sel[f] = hit[i];
			rk->spare[f++] = lg[i];
		}
	}
	memcpy(hit + w, rk->sel, f * sizeof(*hit));
	memcpy(lg + w, rk->spare, f * sizeof(*lg));
	rk->n_keep[j] = w;
}

/* Query head j's local top-K into the record. */
static void local_top(const struct shard_task *t, struct shard_rank *rk, uint32_t j)
{
	const float *logit = rk->logit + (size_t)j * t->hit_cap;
	const uint32_t *hit = rk->hit + (size_t)j * t->hit_cap;
	uint32_t *top = rk->top + (size_t)j * t->top_k, n = rk->n_keep[j];
	uint32_t k = t->top_k < n ? t->top_k : n;
	struct shard_rec_head *hd = rec_head(rk->rec, j, t->top_k);
	struct shard_rec_ent *e = rec_ents(rk->rec, j, t->top_k);
	float rest = -INFINITY;

	k = krn_select_top(logit, n, k, top, rk->sel);
	for (uint32_t i = 0, at = 0; i < n; i++) {
		if (at < k && top[at] == i) {
			e[at].logit = logit[i];
			e[at++].pos = hit[i];
		} else if (logit[i] > rest) {
			rest = logit[i];
		}
	}
	for (uint32_t i = n; i < rk->n_pool[j]; i++)
		rest = logit[i] > rest ? logit[i] : rest;
	hd->n = k;
	hd->rest_max = rest;
}

/*
 * The global top-K of query head j from every shard's record, sorted by
 * position into ent[0..k); returns k.  *rest: the largest logit of the
 * hits outside it.  The shards' lists (each in position order) are merged
 * by position first, so the select's ties go to the lower position, as in
 * one shard's select over all hits.
 */
static uint32_t global_top(const struct shard_task *t, struct shard_rank *rk, uint32_t j,
			   struct shard_rec_ent *ent, float *rest)
{
	size_t rb = shard_rec_bytes(t->g, t->top_k), most = (size_t)t->n_shards * t->top_k;
	float *x = (float *)(ent + most);
	uint32_t *idx = (uint32_t *)(x + most), *sel = idx + most;
	uint32_t at[SHARD_MERGE_MAX] = { 0 }, n = 0, k;

	*rest = -INFINITY;
	for (uint32_t s = 0; s < t->n_shards; s++) {
		const struct shard_rec_head *hd = rec_head((char *)rk->recv + s * rb, j, t->top_k);
		*rest = hd->rest_max > *rest ? hd->rest_max : *rest;
	}
	for (;;) {
		uint32_t best = UINT32_MAX, from = 0;
		for (uint32_t s = 0; s < t->n_shards; s++) {
			void *rec = (char *)rk->recv + s * rb;
			if (at[s] < rec_head(rec, j, t->top_k)->n &&
			    rec_ents(rec, j, t->top_k)[at[s]].pos < best) {
				best = rec_ents(rec, j, t->top_k)[at[s]].pos;
				from = s;
			}
		}
		if (best == UINT32_MAX)
			break;
		ent[n] = rec_ents((char *)rk->recv + from * rb, j, t->top_k)[at[from]++];
		x[n] = ent[n].logit;
		n++;
	}
	k = t->top_k < n ? t->top_k : n;
	if (k == n)
		return k;
	k = krn_select_top(x, n, k, idx, sel);
	for (uint32_t i = 0, at_i = 0; i < n; i++) {
		if (at_i < k && idx[at_i] == i)
			ent[at_i++] = ent[i];
		else if (x[i] > *rest)
			*rest = x[i];
	}
	return k;
}

/* Take the global top-K out of the shard's hits: they leave the tail. */
static void drop_top(const struct shard_task *t, struct shard_rank *rk, uint32_t j,
		     uint32_t r, const struct shard_rec_ent *ent, uint32_t k)
{
	const uint32_t *hit = rk->hit + (size_t)j * t->hit_cap;
	float *logit = rk->logit + (size_t)j * t->hit_cap;
	uint32_t i = 0;

	for (uint32_t e = 0; e < k; e++) {
		if (owner(t, ent[e].pos) != r)
			continue;
		while (hit[i] != ent[e].pos)
			i++;
		logit[i] = -INFINITY;
	}
}

/* The shard's hits outside the top-K join its block masses. */
static void hits_to_tail(const struct shard_task *t, struct shard_rank *rk, uint32_t j,
			 uint32_t r, float *mref, float rest)
{
	const uint32_t *hit = rk->hit + (size_t)j * t->hit_cap;
	const float *logit = rk->logit + (size_t)j * t->hit_cap;
	float *blk = t->blk + (size_t)j * t->blk_cap;
	uint64_t b0 = t->m0 / SHARD_BLOCK;

	if (rest > *mref + 60.0f) {
		/* an exact logit far above the estimates' bound: move the reference */
		float f = expf(*mref - rest);
		FOR_OWNED_PAGES(t, r, t->m0, t->m1, p, a, b)
			for (uint64_t x = a / SHARD_BLOCK; x < (b + SHARD_BLOCK - 1) / SHARD_BLOCK; x++)
				blk[x - b0] *= f;
		*mref = rest;
	}
	for (uint32_t i = 0; i < rk->n_pool[j]; i++)
		if (logit[i] > -INFINITY)
			blk[hit[i] / SHARD_BLOCK - b0] += expf(logit[i] - *mref);
}

/*
 * Each owned page's tail mass for query head j: four interleaved sums
 * over its blocks (independent chains, the same order on any shard).
 */
static void page_mass(const struct shard_task *t, uint32_t j, uint32_t r)
{
	const float *blk = t->blk + (size_t)j * t->blk_cap;
	uint64_t b0 = t->m0 / SHARD_BLOCK;

	FOR_OWNED_PAGES(t, r, t->m0, t->m1, p, a, b) {
		double s[4] = { 0, 0, 0, 0 };
		uint64_t x0 = a / SHARD_BLOCK, x1 = (b + SHARD_BLOCK - 1) / SHARD_BLOCK, x = x0;
		for (; x + 4 <= x1; x += 4) {
			const float *f = blk + (x - b0);
			s[0] += f[0];
			s[1] += f[1];
			s[2] += f[2];
			s[3] += f[3];
		}
		for (; x < x1; x++)
			s[(x - x0) % 4] += blk[x - b0];
		t->pmass[p * t->g + j] = (s[0] + s[1]) + (s[2] + s[3]);
	}
}

void shard_job_rank(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	struct shard_rank *rk = &t->rank[r];
	float mref[DKV_MAX_HEADS];
	size_t rb = shard_rec_bytes(t->g, t->top_k);
	struct shard_rec_ent *ent = (struct shard_rec_ent *)((char *)rk->recv + t->n_shards * rb);

	memcpy(mref, t->mref, t->g * sizeof(float)); /* before rank 0 writes it */
	memcpy(rk->n_pool, rk->n_keep, t->g * sizeof(uint32_t));
	for (uint32_t j = 0; t->pool && j < t->g; j++)
		pool_cut(t, rk, j);
	if (!t->dev || t->dev->fine(t, r))
		fine(t, rk);
	for (uint32_t j = 0; j < t->g; j++)
		local_top(t, rk, j);
	if (t->n_shards == 1)
		memcpy(rk->recv, rk->rec, rb);
	else if (t->dev)
		t->dev->allgather(t, r, rk->rec, rk->recv, rb);
	else
		shard_coll_allgather(t->coll, (int)r, rk->rec, rk->recv, rb);
	for (uint32_t j = 0; j < t->g; j++) {
		float rest;
		uint32_t k = global_top(t, rk, j, ent, &rest);
		drop_top(t, rk, j, r, ent, k);
		if (t->tail) {
			hits_to_tail(t, rk, j, r, &mref[j], rest);
			page_mass(t, j, r);
		}
		if (r == 0) {
			t->n_top[j] = k;
			for (uint32_t i = 0; i < k; i++) {
				t->top_pos[(size_t)j * t->top_k + i] = ent[i].pos;
				t->top_logit[(size_t)j * t->top_k + i] = ent[i].logit;
			}
		}
	}
	if (r == 0)
		memcpy(t->mref, mref, t->g * sizeof(float));
}

/* ---- tail and exact partials ---- */

/* Owned pages ahead whose span sums the tail asks for (random places). */
#define TAIL_AHEAD 2u

/* Ask for the span sums of the owned pages from .. TAIL_AHEAD after p. */
static void tail_prefetch(const struct shard_task *t, uint64_t p, uint32_t from)
{
	for (uint32_t x = from; x <= TAIL_AHEAD; x++) {
		uint64_t q = p + (uint64_t)x * t->n_shards;
		if (q * SHARD_PAGE < t->m1)
			shard_prefetch_spans(t->l, t->h, q * SHARD_PAGE);
	}
}

void shard_job_tail(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	uint64_t b0 = t->m0 / SHARD_BLOCK;
	size_t stride = (size_t)t->g * t->dim;
	uint32_t from = 1; /* the first page asks for every page ahead, later ones the last */

	FOR_OWNED_PAGES(t, r, t->m0, t->m1, p, a, b) {
		float *acc = t->pacc + p * stride;
		if (t->tail_span > 1)
			tail_prefetch(t, p, from);
		from = TAIL_AHEAD;
		memset(acc, 0, stride * sizeof(float));
		shard_tail_range(t->l, t->h, t->blk + (a / SHARD_BLOCK - b0), t->blk_cap, t->g,
				 a, b, t->cut, t->tail_span, acc);
	}
}

void shard_job_exact(void *arg, uint32_t r)
{
	struct shard_task *t = arg;
	struct shard_rank *rk = &t->rank[r];
	struct krn_part part[DKV_MAX_HEADS];
	size_t stride = (size_t)t->g * t->dim;

	if (t->dev && !t->dev->exact(t, r))
		return;
	FOR_OWNED_PAGES(t, r, t->t0, t->t1, p, a, b) {
		float *acc = t->pacc + p * stride;
		memset(acc, 0, stride * sizeof(float));
		for (uint32_t j = 0; j < t->g; j++) {
			part[j].m = -INFINITY;
			part[j].s = 0.0f;
			part[j].acc = acc + (size_t)j * t->dim;
		}
		shard_attend_range(t->l, t->h, t->qg, t->g, a, b, t->scale, part, &rk->bufs);
		for (uint32_t j = 0; j < t->g; j++) {
			t->pms[(p * t->g + j) * 2] = part[j].m;
			t->pms[(p * t->g + j) * 2 + 1] = part[j].s;
		}
	}
}
