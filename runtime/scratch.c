/*
 * scratch.c - a sequence's step scratch.  The fixed part (sized by the
 * geometry and knobs) is laid out once, at open, in one allocation; the
 * part that grows with the layer's tokens (tail blocks and page slots) is
 * reserved before the append, charged to the memory limit, so that
 * attention cannot fail.
 */
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"
#include "hash.h"
#include "krn.h"
#include "pool.h"
#include "rank.h"

void rt_scratch_free(struct rt_scratch *sc)
{
	free(sc->arena);
	free(sc->blk);
	free(sc->pmass);
	free(sc->pacc);
	free(sc->pms);
	free(sc->rank);
	memset(sc, 0, sizeof(*sc));
}

/* Carves the fixed scratch out of one allocation (sizing pass: base NULL). */
struct carver {
	uint8_t *base;
	size_t off;
};

static void *carve(struct carver *cv, size_t bytes)
{
	void *p = cv->base ? cv->base + cv->off : NULL;
	cv->off += (bytes + 63) & ~(size_t)63;
	return p;
}

/* Keys sampled per query position to place thresholds (threshold, attend.c). */
static uint32_t samp_max_of(uint32_t group)
{
	uint32_t m = (4u << 20) / group;
	return m > 65536 ? 65536 : m < 1024 ? 1024 : m;
}

static void scratch_layout(struct rt_seq *s, struct carver *cv)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	size_t dim = c->head_dim, g = s->group, words = s->geom.words, f = sizeof(float);
	size_t blk = KRN_BLOCK * dim * f, u = sizeof(uint32_t);
	struct shard_rank_dims rd = { s->eng->n_shards, s->group, sc->hit_cap, c->top_k,
				      c->head_dim };

	sc->n_hit = carve(cv, g * u);
	for (uint32_t r = 0; r < s->eng->n_shards; r++) {
		void *rk = carve(cv, shard_rank_bytes(&rd));
		if (rk) /* not in the sizing pass */
			shard_rank_place(&sc->rank[r], rk, &rd);
	}
	sc->q8 = carve(cv, g * dim);
	sc->skmul = carve(cv, g * f);
	sc->pcut = carve(cv, g * f);
	sc->pcut_pos = carve(cv, g * u);
	sc->n_fine = carve(cv, g * u);
	sc->px = carve(cv, sc->hit_cap * f);
	sc->ppos = carve(cv, sc->hit_cap * u);
	sc->pidx = carve(cv, sc->hit_cap * u);
	sc->psel = carve(cv, sc->hit_cap * u);
	sc->pcur = carve(cv, s->eng->n_shards * u);
	sc->sel = carve(cv, sc->samp_max * u);
	sc->samp_pos = carve(cv, sc->samp_max * u);
	sc->samp_e = carve(cv, g * sc->samp_max * f);
	sc->samp_idx = carve(cv, sc->samp_max * u);
	sc->cal_pos = carve(cv, RT_TAIL_SAMPLES * u);
	sc->cal_logit = carve(cv, RT_TAIL_SAMPLES * f);
	sc->thr = carve(cv, g * f);
	sc->ca = carve(cv, g * f);
	sc->cb = carve(cv, g * f);
	sc->mref = carve(cv, g * f);
	sc->cut = carve(cv, g * f);
	sc->lim = carve(cv, g * RT_CLASSES * sizeof(int32_t));
	sc->n_top = carve(cv, g * u);
	sc->top_pos = carve(cv, g * c->top_k * u);
	sc->top_logit = carve(cv, g * c->top_k * f);
	sc->edge_pos = carve(cv, ((size_t)c->sink_tokens + c->recent_window) * u);
	sc->edge_logit = carve(cv, ((size_t)c->sink_tokens + c->recent_window) * f);
	sc->edge_lse = carve(cv, g * f);
	sc->rnk = carve(cv, c->top_k * sizeof(struct rt_ranked));
	sc->qc = carve(cv, g * words * sizeof(uint64_t));
	sc->tab = carve(cv, g * (c->hash_bits + 1) * f);
	sc->shift = carve(cv, g * f);
	sc->qg = carve(cv, g * dim * f);
	sc->part = carve(cv, g * sizeof(struct krn_part));
	sc->acc = carve(cv, g * dim * f);
	sc->tail_acc = carve(cv, g * dim * f);
	sc->enc_tmp = carve(cv, blk);
	sc->enc_keys = carve(cv, blk);
	sc->enc_codes = carve(cv, KRN_BLOCK * words * sizeof(uint64_t));
	sc->enc_norms = carve(cv, KRN_BLOCK * f);
	sc->outf = carve(cv, c->n_q_heads * dim * f);
	sc->qf = carve(cv, c->n_q_heads * dim * f);
	sc->vrow = carve(cv, dim * f);
	sc->bufs.kbuf = carve(cv, blk);
	sc->bufs.vbuf = carve(cv, blk);
	sc->bufs.ptrs = carve(cv, (KRN_BLOCK + KRN_GDOT_AHEAD) * sizeof(void *));
}

/* The parts of the shards' task that stay the same from step to step. */
static void task_init(struct rt_seq *s)
{
	struct rt_scratch *sc = &s->sc;
	struct shard_task *t = &sc->task;

	t->g = s->group;
	t->dim = s->cfg.head_dim;
	t->qg = sc->qg;
	t->scale = s->cfg.scale;
	t->hit_cap = sc->hit_cap;
	t->top_k = s->cfg.top_k;
	t->tail = s->cfg.tail_estimate;
	t->mref = sc->mref;
	t->cut = sc->cut;
	t->n_top = sc->n_top;
	t->top_pos = sc->top_pos;
	t->top_logit = sc->top_logit;
	t->rank = sc->rank;
	t->coll = shard_pool_coll(s->eng->pool);
	t->qc = sc->qc;
	t->tab = sc->tab;
	t->q8 = sc->q8;
	t->skmul = sc->skmul;
	t->skadd = sc->shift;
	t->pcut = sc->pcut;
	t->pcut_pos = sc->pcut_pos;
	t->se = sc->samp_e;
	t->sld = sc->samp_max;
}

int rt_scratch_fixed(struct rt_seq *s)
{
	struct rt_scratch *sc = &s->sc;
	struct carver cv = { NULL, 0 };

	sc->hit_cap = rt_hit_cap(&s->cfg);
	sc->samp_max = samp_max_of(s->group);
	sc->rank = calloc(s->eng->n_shards, sizeof(*sc->rank));
	if (!sc->rank)
		return -1;
	scratch_layout(s, &cv);
	sc->arena = aligned_alloc(64, cv.off);
	if (!sc->arena)
		return -1;
	sc->fixed_bytes = cv.off;
	cv.base = sc->arena;
	cv.off = 0;
	scratch_layout(s, &cv);
	for (size_t j = 0; j < s->group; j++)
		sc->part[j].acc = sc->acc + j * s->cfg.head_dim;
	task_init(s);
	return 0;
}

static size_t round_cap(size_t want)
{
	size_t cap = 4096;
	while (cap < want)
		cap *= 2;
	return cap;
}

/* Grow a buffer to n elements of size sz; 0 or -1 (nothing changed). */
static int grow(void **p, size_t n, size_t sz)
{
	void *q = realloc(*p, n * sz);
	if (!q)
		return -1;
	*p = q;
	return 0;
}

/*
 * Make the step's scratch big enough for a layer of `tokens` tokens.
 * Growth is charged to the engine's limit.
 */
int rt_scratch_reserve(struct rt_seq *s, uint64_t tokens, char *err)
{
	struct rt_scratch *sc = &s->sc;
	size_t want = tokens / SHARD_BLOCK + 2, g = s->group, dim = s->cfg.head_dim;

	if (want <= sc->blk_cap)
		return DKV_OK;
	size_t cap = round_cap(want), pages = cap / SHARD_PAGE_BLOCKS + 1;
	size_t bytes = cap * g * sizeof(float) +
		       pages * g * (sizeof(double) + (dim + 2) * sizeof(float));
	if (rt_mem_take(s->eng, bytes - sc->grow_bytes))
		return krn_msgf(err, DKV_E_NOSPACE,
				"memory limit: %zu more scratch bytes would exceed it",
				bytes - sc->grow_bytes);
	int bad = grow((void **)&sc->blk, cap * g, sizeof(float)) ||
		  grow((void **)&sc->pmass, pages * g, sizeof(double)) ||
		  grow((void **)&sc->pacc, pages * g * dim, sizeof(float)) ||
		  grow((void **)&sc->pms, pages * g * 2, sizeof(float));
	/* what did grow stays (freed with the sequence); the task follows it */
	sc->task.blk = sc->blk;
	sc->task.pmass = sc->pmass;
	sc->task.pacc = sc->pacc;
	sc->task.pms = sc->pms;
	if (bad) {
		rt_mem_give(s->eng, bytes - sc->grow_bytes);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for step scratch");
	}
	sc->grow_bytes = bytes;
	sc->blk_cap = sc->task.blk_cap = cap;
	sc->page_cap = pages;
	return DKV_OK;
}
