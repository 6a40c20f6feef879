/*
 * attend.c - attention of one query position, group by group (the query
 * heads of one kv head): exact over the sinks and the window; over the
 * middle, thresholds placed from a sample and calibrated into logits,
 * the coarse filter on the shards, their fine ranking to a global top-K
 * (adaptive K optional), exact attention of the top-K and the estimated
 * tail of the rest, merged by log-sum-exp.  A middle within the
 * candidate budget, or an exact sequence, is attended exactly.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "hash.h"
#include "krn.h"
#include "pool.h"
#include "search.h"
#include "store.h"

/*
 * Tail blocks below this share of the mean block mass are not read: they
 * hold at most 2% of the tail mass.  At 1e-3 instead the output error
 * was the same to three digits at 32K and 1M tokens (dashkv-bench).
 */
#define RT_TAIL_NEGLIGIBLE 2e-2
/* Thresholds of at most this rank keep a sorted run instead of a select. */
#define RT_SMALL_RANK 64u

static void part_reset(struct krn_part *p, uint32_t dim)
{
	p->m = -INFINITY;
	p->s = 0.0f;
	memset(p->acc, 0, dim * sizeof(float));
}

/* Record the exact set of query head qh: sinks, top-K, window (sorted). */
static void trace_exact(struct rt_seq *s, uint32_t qh, uint64_t sink_end,
			const uint32_t *top_pos, uint32_t n_top, uint64_t w0, uint64_t p1)
{
	uint32_t *out, n = 0;

	if (!s->trace)
		return;
	out = s->trace_idx + (size_t)qh * s->trace_cap;
	for (uint64_t t = 0; t < sink_end; t++)
		out[n++] = (uint32_t)t;
	for (uint32_t i = 0; i < n_top; i++)
		out[n++] = top_pos[i];
	for (uint64_t t = w0; t < p1; t++)
		out[n++] = (uint32_t)t;
	s->trace_n[qh] = n;
}

/*
 * Run a job of the group's task on every shard, or on this thread alone
 * when [t0, t1) lies in one page: the work is the same page by page, so
 * the results are too.  GPU shards run jobs of more than one page on the
 * devices (also a single GPU shard); one page is host work.
 */
static void run_job(struct rt_seq *s, shard_job_fn fn, uint64_t t0, uint64_t t1)
{
	struct shard_task *t = &s->sc.task;
	uint64_t p0;
	int many = shard_pages_of(t0, t1, &p0) > 1;

	t->gpu = many ? t->gpu_layer : NULL;
	t->dev = t->gpu ? &shard_gpu_dev_ops : NULL;
	if (many && (s->eng->n_shards > 1 || t->gpu)) {
		t->n_shards = s->eng->n_shards;
		shard_pool_run(s->eng->pool, fn, t);
	} else {
		t->n_shards = 1;
		fn(t, 0);
	}
}

/*
 * Sample the middle [m0, m0 + n): ns evenly spaced keys, their estimates
 * for every query head of the group in samp_e.
 */
static uint32_t sample_middle(struct rt_seq *s, uint64_t m0, uint32_t n, uint32_t want)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t ns = want < n ? want : n;
	/*
	 * Runs of KRN_CODE_GROUP consecutive keys at evenly spaced places:
	 * a group's codes share their cache lines (byte-sliced layout), so a
	 * run costs what one key would.
	 */
	uint32_t run = ns >= 4 * KRN_CODE_GROUP ? KRN_CODE_GROUP : 1;
	uint32_t runs = ns / run;

	ns = runs * run;
	for (uint32_t r = 0; r < runs; r++) {
		uint64_t at = m0 + ((uint64_t)r * (n - run + 1) + (n - run + 1) / (2 * runs)) / runs;
		for (uint32_t i = 0; i < run; i++)
			sc->samp_pos[r * run + i] = (uint32_t)(at + i);
	}
	sc->task.spos = sc->samp_pos;
	sc->task.sn = ns;
	run_job(s, shard_job_sample, m0, m0 + n);
	return ns;
}

/*
 * Calibrate query head j's estimates into logits: RT_TAIL_SAMPLES of the
 * ns sampled keys get exact logits; a least-squares line maps estimate to
 * logit (ca, cb), and the smearing factor mean(exp(residual)) is folded
 * into cb so that sum(exp(ca * e + cb)) is unbiased for the mass even
 * where the codes say little (Duan's smearing estimate).
 */
static void calibrate(struct rt_seq *s, struct shard_layer *st, uint32_t h,
		      uint32_t j, const float *qj, uint32_t ns)
{
	struct rt_scratch *sc = &s->sc;
	const float *e = sc->samp_e + (size_t)j * sc->samp_max;
	uint32_t nc = ns < RT_TAIL_SAMPLES ? ns : RT_TAIL_SAMPLES;
	double sx = 0, sy = 0, sxx = 0, sxy = 0, a = 0, b, rmax = -INFINITY, rs = 0;
	float x[RT_TAIL_SAMPLES];

	for (uint32_t i = 0; i < nc; i++) {
		uint32_t k = (uint32_t)(((uint64_t)i * ns + ns / (2 * nc)) / nc);
		sc->cal_pos[i] = sc->samp_pos[k];
		x[i] = e[k];
	}
	shard_fine(st, h, qj, sc->cal_pos, nc, s->cfg.scale, sc->cal_logit, &sc->bufs);
	for (uint32_t i = 0; i < nc; i++) {
		double y = sc->cal_logit[i];
		sx += x[i];
		sy += y;
		sxx += (double)x[i] * x[i];
		sxy += x[i] * y;
	}
	double vx = sxx - sx * sx / nc;
	if (vx > 1e-12 * (sxx + 1e-30))
		a = (sxy - sx * sy / nc) / vx;
	b = (sy - a * sx) / nc;
	for (uint32_t i = 0; i < nc; i++) {
		double r = sc->cal_logit[i] - (a * x[i] + b);
		rmax = r > rmax ? r : rmax;
	}
	for (uint32_t i = 0; i < nc; i++)
		rs += exp(sc->cal_logit[i] - (a * x[i] + b) - rmax);
	sc->ca[j] = (float)a;
	sc->cb[j] = (float)(b + rmax + log(rs / nc));
}

/*
 * The rank-th largest of e[0..n) for a small rank: a sorted run of the
 * best rank values so far; almost every element fails the first compare.
 */
static float small_rank_value(const float *e, uint32_t n, uint32_t rank)
{
	float best[RT_SMALL_RANK];
	uint32_t m = 0;

	for (uint32_t i = 0; i < n; i++) {
		float x = e[i];
		if (m == rank && !(x > best[m - 1]))
			continue;
		uint32_t at = m < rank ? m++ : m - 1;
		while (at > 0 && best[at - 1] < x) {
			best[at] = best[at - 1];
			at--;
		}
		best[at] = x;
	}
	return best[rank - 1];
}

/*
 * Query head j's coarse threshold: the rank-th largest sampled estimate,
 * so that about rank / ns of the middle passes (Floyd-Rivest style
 * selection: a sample places the cut, one pass collects).
 */
static float threshold(struct rt_scratch *sc, uint32_t j, uint32_t ns, uint32_t rank)
{
	const float *e = sc->samp_e + (size_t)j * sc->samp_max;
	float t = INFINITY;

	if (rank >= ns)
		return -INFINITY;
	if (rank <= RT_SMALL_RANK)
		return small_rank_value(e, ns, rank);
	uint32_t n = krn_select_top(e, ns, rank, sc->samp_idx, sc->sel);
	for (uint32_t i = 0; i < n; i++)
		t = e[sc->samp_idx[i]] < t ? e[sc->samp_idx[i]] : t;
	return t;
}

/*
 * The reference logit of the tail: no key's calibrated logit should come
 * near exp()'s range above it.  Keys under the threshold are below
 * ca * thr + cb; the margin covers the few the first stage lets through
 * uncounted as hits.
 */
static float tail_ref(const struct rt_hash *hm, const float *tab, float thr,
		      float ca, float cb, const float *e, uint32_t ns)
{
	if (ca > 0.0f && thr > -INFINITY)
		return ca * thr + cb + 30.0f;
	if (thr == -INFINITY && ns) {
		/*
		 * Every key passes, so no estimate reaches the tail, only exact
		 * logits (which move the reference if they must): start near
		 * the sample's largest calibrated logit, not at a loose bound
		 * under which the masses would flush to zero.
		 */
		float m = -INFINITY;
		for (uint32_t i = 0; i < ns; i++)
			m = ca * e[i] + cb > m ? ca * e[i] + cb : m;
		return m + 30.0f;
	}
	float emax = fabsf(tab[0]) * hm->max_norm;
	return fabsf(ca) * emax + cb;
}

/* Samples and hits of one coarse pass, as pass_ok judges them. */
enum { PASS_OK, PASS_TOO_MANY, PASS_TOO_FEW };

static int pass_ok(const struct rt_seq *s, uint32_t n_mid)
{
	const struct rt_scratch *sc = &s->sc;
	uint32_t need = s->cfg.top_k < n_mid ? s->cfg.top_k : n_mid;

	for (uint32_t j = 0; j < s->group; j++) {
		if (sc->n_hit[j] > sc->hit_cap)
			return PASS_TOO_MANY;
		if (sc->n_hit[j] < need)
			return PASS_TOO_FEW;
	}
	return PASS_OK;
}

/* The group's hits over all shards, as pass_ok judges them. */
static void count_hits(struct rt_seq *s)
{
	struct rt_scratch *sc = &s->sc;

	for (uint32_t j = 0; j < s->group; j++) {
		sc->n_hit[j] = 0;
		for (uint32_t r = 0; r < sc->task.n_shards; r++)
			sc->n_hit[j] += sc->rank[r].n_hit[j];
	}
}

/*
 * The hits each shard ranks: all of them, or when the group's head has
 * more than hit_cap, the first hit_cap in position order (the pages in
 * order, each from its shard), as one shard would keep them.
 */
static void keep_hits(struct rt_seq *s)
{
	struct rt_scratch *sc = &s->sc;
	struct shard_task *t = &sc->task;
	uint32_t S = t->n_shards, hc = sc->hit_cap;

	for (uint32_t j = 0; j < s->group; j++) {
		uint32_t left = hc;
		for (uint32_t r = 0; r < S; r++) {
			uint32_t n = sc->rank[r].n_hit[j];
			sc->rank[r].n_keep[j] = sc->n_hit[j] <= hc ? n : 0;
		}
		if (sc->n_hit[j] <= hc)
			continue;
		uint64_t p0, np = shard_pages_of(t->m0, t->m1, &p0);
		for (uint64_t p = p0; p < p0 + np && left; p++) {
			struct shard_rank *rk = &sc->rank[shard_page_owner(p, S)];
			uint32_t n = rk->n_hit[j] < hc ? rk->n_hit[j] : hc;
			const uint32_t *hit = rk->hit + (size_t)j * hc;
			while (left && rk->n_keep[j] < n &&
			       hit[rk->n_keep[j]] < (p + 1) * SHARD_PAGE) {
				rk->n_keep[j]++;
				left--;
			}
		}
	}
}

/*
 * Tail sampling: middles up to RT_TAIL_FULL tokens estimate their tail
 * from every key, longer ones from one key in 8, and past 8 x that from
 * one key in 32 (16384 to 24576 keys), one in 64 from RT_TAIL_LONG: the
 * exp per sampled key and query costs as much as the Hamming distance of
 * 8 keys.  At 1M tokens the output error was 0.120 with stride 8, 0.120
 * with 16 and 0.121 with 32 (64-token blocks, dashkv-bench speed, one
 * step); once the tail read 256-token spans, 0.116 with 16 and 32 (7
 * steps), and 0.110 with 32 against 0.111 with 64 (9 steps).
 */
#define RT_TAIL_FULL 65536u
#define RT_TAIL_LONG 786432u

uint32_t rt_tail_stride(uint64_t n_mid)
{
	if (n_mid <= RT_TAIL_FULL)
		return 1;
	if (n_mid <= 8 * (uint64_t)RT_TAIL_FULL)
		return 8;
	return n_mid < RT_TAIL_LONG ? 32 : 64;
}

/*
 * The tail's value summaries: 64-token blocks, or 256-token spans once a
 * block's mass rests on two sampled keys or fewer (stride 32 and up): the
 * span's samples give its mass together, and the tail reads a quarter of
 * the value sums.
 */
uint32_t rt_tail_span(uint64_t n_mid)
{
	return rt_tail_stride(n_mid) >= 32 ? SHARD_SPAN_BLOCKS : 1;
}

/*
 * The pool: the coarse filter passes rerank per 1,000 tokens of the
 * middle (at least candidates + 1/4), and the key sketches pick the
 * candidates from it.  Kept hits are bounded by RT_HIT_CAP_MAX per query
 * head (twice the pool of 2M tokens at the default), past which the pool
 * is a smaller share.
 */
#define RT_HIT_CAP_MAX (1u << 17)

uint32_t rt_hit_cap(const dkv_seq_config *c)
{
	uint64_t hc = (uint64_t)c->candidates * 4;
	uint64_t pool = 2 * rt_pool_target(c, c->max_tokens, UINT32_MAX);

	if (pool > hc)
		hc = pool < RT_HIT_CAP_MAX ? pool : RT_HIT_CAP_MAX > hc ? RT_HIT_CAP_MAX : hc;
	return (uint32_t)hc;
}

uint64_t rt_pool_target(const dkv_seq_config *c, uint64_t n_mid, uint32_t hit_cap)
{
	uint64_t t = (uint64_t)c->candidates + c->candidates / 4;

	if (c->rerank != DKV_RERANK_OFF && (uint64_t)c->rerank * n_mid / 1000 > t)
		t = (uint64_t)c->rerank * n_mid / 1000;
	return t < hit_cap / 2 ? t : hit_cap / 2;
}

/*
 * Coarse filter for the group over the middle [m0, m1): thresholds from a
 * sample, then one pass; a pass whose hits overflow or fall short of
 * top_k is repeated with a moved threshold (rare).
 */
static void coarse_filter(struct rt_seq *s, struct rt_layer *L, uint32_t h,
			  uint64_t m0, uint64_t m1)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	struct shard_layer *st = &L->store;
	uint32_t g = s->group, n_mid = (uint32_t)(m1 - m0), tl = c->hash_bits + 1;
	uint64_t target = rt_pool_target(c, n_mid, sc->hit_cap);
	/* enough samples that about 32 of the candidates' share pass */
	uint64_t want = 32 * (uint64_t)n_mid / (c->candidates + c->candidates / 4);
	want = want > 1024 ? want : 1024;
	uint32_t ns = sample_middle(s, m0, n_mid,
				    want < sc->samp_max ? (uint32_t)want : sc->samp_max);
	uint64_t rank = (target * ns + n_mid - 1) / n_mid;
	struct krn_scan_q q = {
		.nq = g, .words = s->geom.words, .qc = sc->qc, .tab = sc->tab,
		.lim = sc->lim, .thr = sc->thr, .ca = sc->ca, .cb = sc->cb,
		.stride = rt_tail_stride(n_mid),
	};

	for (uint32_t j = 0; j < g; j++) {
		sc->ca[j] = sc->cb[j] = 0.0f;
		if (c->tail_estimate)
			calibrate(s, st, h, j, sc->qg + (size_t)j * c->head_dim, ns);
	}
	for (int tries = 0;; tries++) {
		for (uint32_t j = 0; j < g; j++) {
			const float *tab = sc->tab + (size_t)j * tl;
			sc->thr[j] = threshold(sc, j, ns, (uint32_t)(rank ? rank : 1));
			rt_hash_probe_limits(&L->hash[h], tab, sc->thr[j], sc->lim + j * RT_CLASSES);
			sc->mref[j] = tail_ref(&L->hash[h], tab, sc->thr[j], sc->ca[j], sc->cb[j],
					       sc->samp_e + (size_t)j * sc->samp_max, ns);
			/* the kernel adds exp(ca * e + cb - mref) */
			sc->cb[j] -= sc->mref[j];
		}
		sc->task.q = &q;
		run_job(s, shard_job_scan, m0, m1);
		count_hits(s);
		for (uint32_t j = 0; j < g; j++)
			sc->cb[j] += sc->mref[j];
		int v = pass_ok(s, n_mid);
		if (v == PASS_OK || tries == 3)
			break;
		rank = v == PASS_TOO_MANY ? rank / 4 : rank * 4 + 1;
	}
	keep_hits(s);
}

/*
 * Query head j's pool in position order, the shards' kept hits page by
 * page (their sketch scores into px, positions into ppos); returns the
 * count.  The order is the same for any number of shards.
 */
static uint32_t pool_gather(struct rt_seq *s, uint32_t j)
{
	struct rt_scratch *sc = &s->sc;
	struct shard_task *t = &sc->task;
	uint32_t S = t->n_shards, hc = sc->hit_cap, n = 0;
	uint64_t p0, np = shard_pages_of(t->m0, t->m1, &p0);

	memset(sc->pcur, 0, S * sizeof(uint32_t));
	for (uint64_t p = p0; p < p0 + np; p++) {
		uint32_t r = shard_page_owner(p, S);
		const struct shard_rank *rk = &sc->rank[r];
		const uint32_t *hit = rk->hit + (size_t)j * hc;
		while (sc->pcur[r] < rk->n_keep[j] && hit[sc->pcur[r]] < (p + 1) * SHARD_PAGE) {
			sc->ppos[n] = hit[sc->pcur[r]];
			sc->px[n++] = rk->logit[(size_t)j * hc + sc->pcur[r]++];
		}
	}
	return n;
}

/*
 * Query head j's sketch cut: the candidates best sketch scores of its
 * pool (ties to the lower position) pass, as a (score, position) bound
 * that every shard applies to its own hits.
 */
static void pool_cut(struct rt_seq *s, uint32_t j)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t n = pool_gather(s, j), C = s->cfg.candidates;

	sc->pcut[j] = -INFINITY;
	sc->pcut_pos[j] = UINT32_MAX;
	sc->n_fine[j] = n < C ? n : C;
	if (n <= C)
		return;
	uint32_t k = krn_select_top(sc->px, n, C, sc->pidx, sc->psel);
	float cut = INFINITY;
	for (uint32_t i = 0; i < k; i++)
		cut = sc->px[sc->pidx[i]] < cut ? sc->px[sc->pidx[i]] : cut;
	uint32_t cp = 0;
	for (uint32_t i = 0; i < k; i++)
		if (sc->px[sc->pidx[i]] == cut && sc->ppos[sc->pidx[i]] > cp)
			cp = sc->ppos[sc->pidx[i]];
	sc->pcut[j] = cut;
	sc->pcut_pos[j] = cp;
}

/*
 * Re-rank the group's pool by the key sketches when it holds more than
 * candidates hits for some head: the sketch job scores every kept hit,
 * the cut keeps the best candidates of each head for the fine ranking
 * (the rank job applies it).
 */
static void rerank_pool(struct rt_seq *s, struct rt_layer *L, uint32_t h)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t g = s->group, dim = s->cfg.head_dim, big = 0;

	sc->task.pool = 0;
	for (uint32_t j = 0; j < g; j++) {
		uint32_t kept = sc->n_hit[j] < sc->hit_cap ? sc->n_hit[j] : sc->hit_cap;
		sc->n_fine[j] = kept;
		big |= kept > s->cfg.candidates;
	}
	if (!s->geom.sketch || !big)
		return;
	for (uint32_t j = 0; j < g; j++)
		sc->skmul[j] = rt_hash_query_sketch(&L->hash[h], sc->qg + (size_t)j * dim,
						    s->cfg.scale, sc->q8 + (size_t)j * dim);
	run_job(s, shard_job_sketch, sc->task.m0, sc->task.m1);
	for (uint32_t j = 0; j < g; j++)
		pool_cut(s, j);
	sc->task.pool = 1;
}

/*
 * Adaptive K: the log-sum-exp of every query head's exact logits over
 * the sinks [0, sink_end) and the window [w0, p1), the mass taken
 * exactly whatever K is.
 */
static void edge_mass(struct rt_seq *s, struct shard_layer *st, uint32_t h,
		      uint64_t sink_end, uint64_t w0, uint64_t p1)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t n = 0;

	for (uint64_t t = 0; t < sink_end; t++)
		sc->edge_pos[n++] = (uint32_t)t;
	for (uint64_t t = w0; t < p1; t++)
		sc->edge_pos[n++] = (uint32_t)t;
	for (uint32_t j = 0; j < s->group; j++) {
		shard_fine(st, h, sc->qg + (size_t)j * s->cfg.head_dim, sc->edge_pos, n,
			   s->cfg.scale, sc->edge_logit, &sc->bufs);
		float mx = krn_get()->max(sc->edge_logit, n);
		sc->edge_lse[j] = mx + logf(krn_get()->exp_sum(sc->edge_logit, n, mx));
	}
}

/* Logit descending, then position ascending. */
static int by_logit(const void *pa, const void *pb)
{
	const struct rt_ranked *a = pa, *b = pb;

	if (a->logit != b->logit)
		return a->logit < b->logit ? 1 : -1;
	return (a->pos > b->pos) - (a->pos < b->pos);
}

/* The tail mass of query head j (relative to mref[j]), summed over pages. */
static double tail_mass(const struct rt_seq *s, uint32_t j, uint64_t m0, uint64_t m1)
{
	uint64_t p0, np = shard_pages_of(m0, m1, &p0);
	double sum = 0;

	for (uint64_t p = p0; p < p0 + np; p++)
		sum += s->sc.pmass[p * s->group + j];
	return sum;
}

/* Fold one dropped top-K token back into the tail of query head j. */
static void to_tail(struct rt_seq *s, uint32_t j, uint64_t m0, const struct rt_ranked *e)
{
	struct rt_scratch *sc = &s->sc;
	float w = expf(e->logit - sc->mref[j]);

	sc->blk[(size_t)j * sc->blk_cap + e->pos / SHARD_BLOCK - m0 / SHARD_BLOCK] += w;
	sc->pmass[(uint64_t)(e->pos / SHARD_PAGE) * s->group + j] += w;
}

/* Move query head j's tail reference up to m, rescaling its masses. */
static void move_mref(struct rt_seq *s, uint32_t j, uint64_t m0, uint64_t m1, float m)
{
	struct rt_scratch *sc = &s->sc;
	uint64_t p0, np = shard_pages_of(m0, m1, &p0);
	uint64_t nb = (m1 + SHARD_BLOCK - 1) / SHARD_BLOCK - m0 / SHARD_BLOCK;
	float f = expf(sc->mref[j] - m);

	for (uint64_t b = 0; b < nb; b++)
		sc->blk[(size_t)j * sc->blk_cap + b] *= f;
	for (uint64_t p = p0; p < p0 + np; p++)
		sc->pmass[p * s->group + j] *= f;
	sc->mref[j] = m;
}

/*
 * Adaptive K of query head j: keep the fewest of its global top-K (by
 * logit) whose exact mass, with the sinks' and the window's, reaches
 * mass_target of the estimated total (sinks and window, the top-K, the
 * tail estimate of the rest of the middle); top_k is the cap.  The
 * tokens let go join the tail with their exact logits, as the hits
 * outside the top-K do.
 */
static void adapt_top(struct rt_seq *s, uint32_t j, uint64_t m0, uint64_t m1)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	uint32_t n = sc->n_top[j], k = n, m = 0;
	uint32_t *pos = sc->top_pos + (size_t)j * c->top_k;
	float *lg = sc->top_logit + (size_t)j * c->top_k;
	double ref, cum, total;

	if (!n)
		return;
	for (uint32_t i = 0; i < n; i++)
		sc->rnk[i] = (struct rt_ranked){ lg[i], pos[i] };
	qsort(sc->rnk, n, sizeof(*sc->rnk), by_logit);
	ref = sc->rnk[0].logit > sc->edge_lse[j] ? sc->rnk[0].logit : sc->edge_lse[j];
	cum = exp(sc->edge_lse[j] - ref);
	total = cum + krn_get()->exp_sum(lg, n, (float)ref);
	if (c->tail_estimate)
		total += tail_mass(s, j, m0, m1) * exp(sc->mref[j] - ref);
	for (uint32_t i = 0; i < n; i++) {
		cum += exp(sc->rnk[i].logit - ref);
		if (cum >= c->mass_target * total) {
			k = i + 1;
			break;
		}
	}
	if (k == n)
		return;
	if (c->tail_estimate) {
		if (sc->rnk[k].logit > sc->mref[j] + 60.0f)
			move_mref(s, j, m0, m1, sc->rnk[k].logit);
		for (uint32_t i = k; i < n; i++)
			to_tail(s, j, m0, &sc->rnk[i]);
	}
	/* keep the first k by rank, in ascending position order */
	float cutl = sc->rnk[k - 1].logit;
	uint32_t cutp = sc->rnk[k - 1].pos;
	for (uint32_t i = 0; i < n; i++)
		if (lg[i] > cutl || (lg[i] == cutl && pos[i] <= cutp)) {
			pos[m] = pos[i];
			lg[m++] = lg[i];
		}
	sc->n_top[j] = m;
}

/*
 * Query head j after the shards' ranking: attend its global top-K
 * exactly into part; the rest is the tail.
 */
static void attend_middle(struct rt_seq *s, struct shard_layer *st, uint32_t h,
			  uint32_t j, uint64_t m0, uint64_t m1, struct rt_step_counts *cnt)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	uint32_t n_top = sc->n_top[j];
	size_t at = (size_t)j * c->top_k;

	shard_attend_list(st, h, sc->top_pos + at, sc->top_logit + at, n_top, &sc->part[j],
			  &sc->bufs);
	cnt->cand += sc->n_fine[j];
	cnt->exact += n_top;
	if (c->tail_estimate)
		cnt->est += (double)(m1 - m0) - n_top;
}

/* Four floats at any address, added lane by lane (one addition each). */
typedef float fold4 __attribute__((vector_size(16), aligned(4)));

/*
 * acc = the sum of the pages' rows [p0, p0 + np) of pacc, in page order:
 * element by element the same additions in the same order, four lanes at
 * a time (at 1M tokens a group folds 256 pages of g x dim floats).
 */
static void fold_pages(float *restrict acc, const float *restrict pacc, uint64_t p0,
		       uint64_t np, size_t stride)
{
	size_t i4 = stride / 4 * 4;

	memset(acc, 0, stride * sizeof(float));
	for (uint64_t p = p0; p < p0 + np; p++) {
		const float *row = pacc + p * stride;
		for (size_t i = 0; i < i4; i += 4)
			*(fold4 *)(acc + i) += *(const fold4 *)(row + i);
		for (size_t i = i4; i < stride; i++)
			acc[i] += row[i];
	}
}

/*
 * The estimated tail of the whole group: block masses times block mean
 * values, page by page on the shards, folded in page order and merged
 * into each head's exact partial.
 */
static void attend_tail(struct rt_seq *s, uint64_t m0, uint64_t m1)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t g = s->group, dim = s->cfg.head_dim;
	uint64_t p0, np = shard_pages_of(m0, m1, &p0);
	size_t stride = (size_t)g * dim;
	double mass[DKV_MAX_HEADS];

	for (uint32_t j = 0; j < g; j++) {
		double sum = 0;
		for (uint64_t p = p0; p < p0 + np; p++)
			sum += sc->pmass[p * g + j];
		mass[j] = sum;
		sc->cut[j] = (float)(RT_TAIL_NEGLIGIBLE * sum / (double)(m1 - m0));
	}
	sc->task.tail_span = rt_tail_span(m1 - m0);
	run_job(s, shard_job_tail, m0, m1);
	fold_pages(sc->tail_acc, sc->pacc, p0, np, stride);
	for (uint32_t j = 0; j < g; j++) {
		float *acc = sc->tail_acc + (size_t)j * dim;
		if (!(mass[j] > 0.0))
			continue;
		/*
		 * mref is only a bound: the masses may lie far below it (down
		 * to denormals when a short middle passes whole).  Merge the
		 * tail at its own log-sum-exp, with mean values, so the exact
		 * part is not scaled down to nothing.
		 */
		for (uint32_t d = 0; d < dim; d++)
			acc[d] = (float)(acc[d] / mass[j]);
		struct krn_part t = { sc->mref[j] + (float)log(mass[j]), 1.0f, acc };
		krn_get()->merge(&sc->part[j], &t, dim);
	}
}

/*
 * Exact attention of the group over [t0, t1): each page's partial on its
 * shard, folded in page order.
 */
static void attend_exact(struct rt_seq *s, uint64_t t0, uint64_t t1)
{
	struct rt_scratch *sc = &s->sc;
	uint32_t g = s->group, dim = s->cfg.head_dim;
	uint64_t p0, np = shard_pages_of(t0, t1, &p0);
	size_t stride = (size_t)g * dim;

	sc->task.t0 = t0;
	sc->task.t1 = t1;
	run_job(s, shard_job_exact, t0, t1);
	for (uint64_t p = p0; p < p0 + np; p++)
		for (uint32_t j = 0; j < g; j++) {
			const float *ms = sc->pms + (p * g + j) * 2;
			struct krn_part pp = { ms[0], ms[1], sc->pacc + p * stride + (size_t)j * dim };
			krn_get()->merge(&sc->part[j], &pp, dim);
		}
}

/* Attention of the group of kv head h for the query at position p. */
static void attend_group(struct rt_seq *s, struct rt_layer *L, uint32_t h,
			 uint64_t p, struct rt_step_counts *cnt)
{
	struct rt_scratch *sc = &s->sc;
	struct shard_layer *st = &L->store;
	const dkv_seq_config *c = &s->cfg;
	uint32_t g = s->group, dim = c->head_dim, words = s->geom.words;
	uint64_t p1 = p + 1;
	uint64_t sink_end = c->sink_tokens < p1 ? c->sink_tokens : p1;
	uint64_t w0 = p1 > c->recent_window ? p1 - c->recent_window : 0;

	for (uint32_t j = 0; j < g; j++)
		part_reset(&sc->part[j], dim);
	if (w0 < sink_end)
		w0 = sink_end;
	sc->task.l = st;
	sc->task.h = h;
	sc->task.gpu_layer = L->gpu;
	/*
	 * A middle that fits in the candidate budget would pass the coarse
	 * filter whole: attending it exactly is cheaper and exact.
	 */
	if (c->exact || w0 - sink_end <= (c->top_k > c->candidates ? c->top_k : c->candidates)) {
		attend_exact(s, 0, p1);
		for (uint32_t j = 0; j < g; j++) {
			/* the trace holds at most sinks + top_k + window tokens */
			if (p1 <= s->trace_cap)
				trace_exact(s, h * g + j, p1, NULL, 0, p1, p1);
			else if (s->trace)
				s->trace_n[h * g + j] = 0;
			cnt->exact += (double)p1;
		}
		return;
	}
	for (uint32_t j = 0; j < g; j++)
		rt_hash_query(&L->hash[h], sc->qg + (size_t)j * dim, c->scale,
			      sc->qc + (size_t)j * words,
			      sc->tab + (size_t)j * (c->hash_bits + 1), &sc->shift[j]);
	uint64_t t0 = rt_now_ns();
	sc->task.m0 = sink_end;
	sc->task.m1 = w0;
	coarse_filter(s, L, h, sink_end, w0);
	rerank_pool(s, L, h);
	uint64_t t1 = rt_now_ns();
	run_job(s, shard_job_rank, sink_end, w0);
	if (c->mass_target > 0.0f) {
		edge_mass(s, st, h, sink_end, w0, p1);
		for (uint32_t j = 0; j < g; j++)
			adapt_top(s, j, sink_end, w0);
	}
	for (uint32_t j = 0; j < g; j++) {
		attend_middle(s, st, h, j, sink_end, w0, cnt);
		trace_exact(s, h * g + j, sink_end, sc->top_pos + (size_t)j * c->top_k,
			    sc->n_top[j], w0, p1);
	}
	uint64_t t2 = rt_now_ns();
	if (c->tail_estimate)
		attend_tail(s, sink_end, w0);
	uint64_t t3 = rt_now_ns();
	cnt->coarse_ns += t1 - t0;
	cnt->fine_ns += t2 - t1;
	cnt->tail_ns += t3 - t2;
	shard_attend_range(st, h, sc->qg, g, 0, sink_end, c->scale, sc->part, &sc->bufs);
	shard_attend_range(st, h, sc->qg, g, w0, p1, c->scale, sc->part, &sc->bufs);
	for (uint32_t j = 0; j < g; j++)
		cnt->exact += (double)(sink_end + (p1 - w0));
}

void rt_attend_query(struct rt_seq *s, struct rt_layer *L, const float *q,
		     uint64_t p, void *out, struct rt_step_counts *cnt)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	uint32_t g = s->group, dim = c->head_dim;

	for (uint32_t h = 0; h < c->n_kv_heads; h++) {
		memcpy(sc->qg, q + (size_t)h * g * dim, (size_t)g * dim * sizeof(float));
		attend_group(s, L, h, p, cnt);
		for (uint32_t j = 0; j < g; j++) {
			const struct krn_part *pt = &sc->part[j];
			float *o = sc->outf + ((size_t)h * g + j) * dim;
			float inv = pt->s > 0.0f ? 1.0f / pt->s : 0.0f;
			for (uint32_t d = 0; d < dim; d++)
				o[d] = pt->acc[d] * inv;
		}
	}
	rt_from_f32(c->dtype, sc->outf, (size_t)c->n_q_heads * dim, out);
}
