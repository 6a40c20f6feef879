/*
 * engine.c - sequences, the per-layer step and memory accounting.
 *
 * A step is: validate everything (shapes, finite values, limits), reserve
 * every byte it will need (pages and scratch), then append and attend,
 * which cannot fail.  So an append is all or nothing.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "gpu.h"
#include "hash.h"
#include "krn.h"
#include "plan.h"
#include "pool.h"
#include "learn.h"
#include "model.h"
#include "search.h"
#include "step.h"
#include "store.h"

/*
 * Tail blocks below this share of the mean block mass are not read: they
 * hold at most 2% of the tail mass.  At 1e-3 instead the output error
 * was the same to three digits at 32K and 1M tokens (dashkv-bench).
 */
#define RT_TAIL_NEGLIGIBLE 2e-2
/* Thresholds of at most this rank keep a sorted run instead of a select. */
#define RT_SMALL_RANK 64u

/* Tokens sampled per query head to calibrate the tail estimate. */
#define RT_TAIL_SAMPLES 128u

struct rt_engine {
	pthread_mutex_t lock;
	uint64_t used;
	uint64_t limit; /* 0 = none */
	struct shard_topo *topo;
	struct shard_plan *plan;
	struct shard_pool *pool;   /* the shards' workers */
	uint32_t n_shards;
	int *node;                 /* [n_shards] NUMA node of each shard's pages */
	struct shard_gpus *gpus;   /* GPU shards (gpu:LIST), else NULL */
};

/* Queries kept per (layer, kv head) to train learned models from. */
#define RT_QCAP 1024u

struct rt_layer {
	struct shard_layer store;
	struct shard_gpu_layer *gpu; /* its device mirror on GPU shards, else NULL */
	struct rt_hash *hash; /* [n_kv_heads] */
	/* DKV_HASH_LEARNED only */
	struct rt_lhead *lm;  /* [n_kv_heads] models in use (buf NULL: SimHash) */
	float *qcap;          /* [n_kv_heads][RT_QCAP][dim] sampled queries */
	uint64_t q_seen;      /* query vectors offered per kv head */
	uint32_t q_kept;
	uint64_t q_rng;
	int trained;          /* fitted at train_tokens, or loaded */
	int fit_deferred;     /* train_tokens reached, the fit waits for memory */
	uint64_t steps;       /* dkv_step calls on this layer */
	struct rt_fit *fit;   /* a background fit, swapped in at its step */
	uint8_t **codes_own;  /* [n_own] code slabs that replaced the pages' own */
	uint32_t n_own;
};

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
	double work, need;     /* ... once work (see fit_due) reaches need */
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

/*
 * The work of a fit in units of one key scanned by one query (the
 * coarse filter's per-key cost), measured: fitting one kv head's model
 * costs about RT_FIT_WORK units and encoding one of its keys about
 * RT_ENCODE_WORK.  The swap waits until the layer's queries since the
 * fit started have scanned RT_SWAP_MARGIN times that many keys, so that
 * a fit that runs at the pace of the steps is done by then.
 */
#define RT_FIT_WORK 1.5e8
#define RT_ENCODE_WORK 270.0
#define RT_SWAP_MARGIN 1.5

static void fit_free(struct rt_fit *f);
static int seq_model_open(struct rt_seq *s, const char *path, char *err);

/* One top-K entry, for adaptive K's ordering. */
struct rt_ranked {
	float logit;
	uint32_t pos;
};

/* Per-step scratch, grown before the append so attention cannot fail. */
struct rt_scratch {
	void *arena;       /* the fixed part, carved by scratch_layout */
	float *qf;         /* [n_q_heads][dim]: one query position */
	float *vrow;       /* [dim]: one value row */
	size_t blk_cap;    /* tail blocks per query head in blk */
	float *blk;        /* [group][blk_cap] tail mass per 64-token block */
	size_t page_cap;   /* pages in the page slots below */
	double *pmass;     /* [page][group] tail mass of each page */
	float *pacc;       /* [page][group][dim] each page's tail value or partial */
	float *pms;        /* [page][group][2] each page's exact (m, s) */
	uint32_t hit_cap;  /* hits kept per query head */
	uint32_t *n_hit;   /* [group] hits of all shards */
	struct shard_rank *rank; /* [n_shards] each shard's scratch */
	struct shard_task task;  /* the group's search, as the shards see it */
	uint32_t *sel;     /* select scratch: samp_max */
	uint32_t samp_max; /* keys sampled per group for thresholds */
	uint32_t *samp_pos;    /* [samp_max] */
	float *samp_e;         /* [group][samp_max] estimates */
	uint32_t *samp_idx;    /* [samp_max] */
	uint32_t *cal_pos;     /* [RT_TAIL_SAMPLES] */
	float *cal_logit;      /* [RT_TAIL_SAMPLES] */
	float *thr, *ca, *cb, *mref, *cut; /* [group] per query head of the group */
	int32_t *lim;          /* [group][RT_CLASSES] stage-1 limits */
	uint32_t *n_top;   /* [group] */
	uint32_t *top_pos; /* [group][top_k] positions, ascending */
	float *top_logit;  /* [group][top_k] */
	uint32_t *edge_pos;    /* [sinks + window] adaptive K: the always-exact */
	float *edge_logit;     /* [sinks + window] */
	float *edge_lse;       /* [group] log-sum-exp of their logits */
	struct rt_ranked *rnk; /* [top_k] */
	uint64_t *qc;      /* [group][words] */
	float *tab;        /* [group][bits + 1] */
	float *shift;      /* [group] */
	float *qg;         /* [group][dim] queries of one kv head */
	struct krn_part *part; /* [group] exact partials */
	float *acc;        /* [group][dim] */
	float *tail_acc;   /* [group][dim] */
	float *enc_tmp;    /* [KRN_BLOCK][dim] */
	float *enc_keys;   /* [KRN_BLOCK][dim] */
	uint64_t *enc_codes; /* [KRN_BLOCK][words] */
	float *enc_norms;  /* [KRN_BLOCK] */
	float *outf;       /* [n_q_heads][dim] */
	struct shard_bufs bufs;
	size_t fixed_bytes;
	size_t grow_bytes;
};

struct rt_seq {
	struct rt_engine *eng;
	dkv_seq_config cfg;
	struct shard_geom geom;
	uint32_t group;
	float *P;
	struct rt_layer *layers;
	struct shard_gpu_seq *gpu; /* on GPU shards, else NULL */
	struct rt_scratch sc;
	uint64_t pages_bytes;
	uint64_t model_bytes; /* a hash_model wider than seq_fixed_bytes counts */
	uint64_t codes_bytes; /* the layers' codes_own */
	uint64_t fit_bytes;   /* the fits in progress */
	uint32_t fits_late;   /* swaps that waited for their fit */
	double swap_work;     /* RT_FIT_WORK, or a test's (rt_seq_set_fit_work) */
	dkv_stats st;
	int trace;
	uint32_t *trace_idx;  /* [n_q_heads][trace_cap] */
	uint32_t *trace_n;    /* [n_q_heads] */
	uint32_t trace_cap;
};

static int fail(char *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(char *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		va_start(ap, fmt);
		vsnprintf(err, RT_ERRLEN, fmt, ap);
		va_end(ap);
	}
	return code;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- engine and memory accounting ---- */

/*
 * GPU shards (shard/gpu.h): the GPU module, the plan (or CUDA's device
 * list where hwloc sees no GPU) and unbound threads when there is no plan.
 */
static int engine_gpu_shards(struct rt_engine *e, const char *spec, char *err)
{
	char perr[RT_ERRLEN];
	int rc;

	if (shard_topo_load(&e->topo, NULL, NULL, perr, sizeof(perr)))
		e->topo = NULL;
	rc = shard_gpus_open(&e->gpus, e->topo, spec, &e->plan, perr);
	if (rc)
		return fail(err, rc, "DASHKV_SHARDS=%s: %s", spec, perr);
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
	char perr[RT_ERRLEN];

	if (spec && !strncmp(spec, "gpu:", 4))
		return engine_gpu_shards(e, spec, err);
	if (shard_topo_load(&e->topo, NULL, NULL, perr, sizeof(perr))) {
		if (!is_auto)
			return fail(err, DKV_E_INVAL, "DASHKV_SHARDS=%s: %s", spec, perr);
		e->topo = NULL;
	} else if (shard_plan_make(e->topo, spec, &e->plan, perr, sizeof(perr))) {
		return fail(err, DKV_E_INVAL, "DASHKV_SHARDS=%s: %s", spec ? spec : "", perr);
	}
	e->n_shards = e->plan ? e->plan->n : 1;
	if (e->plan && e->plan->n_nodes > 1) {
		e->node = calloc(e->n_shards, sizeof(int));
		if (!e->node)
			return fail(err, DKV_E_NOMEM, "out of memory for the shard plan");
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
	char kerr[160];
	int rc;

	if (krn_init(kerr, sizeof(kerr))) {
		free(e);
		return fail(err, DKV_E_INVAL, "%s", kerr);
	}
	if (!e)
		return fail(err, DKV_E_NOMEM, "out of memory for the engine");
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

uint64_t rt_engine_gpu_fallbacks(const struct rt_engine *e, char *last, size_t len)
{
	if (last && len)
		*last = '\0';
	return e->gpus ? shard_gpus_fallbacks(e->gpus, last, len) : 0;
}

void rt_engine_describe(const struct rt_engine *e, char *buf, size_t len)
{
	if (e->gpus)
		shard_gpus_describe(e->gpus, buf, len);
	else
		snprintf(buf, len, "%u CPU shard%s", e->n_shards, e->n_shards == 1 ? "" : "s");
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

/* Take `bytes` from the limit; 0 or -1 when it would be exceeded. */
static int mem_take(struct rt_engine *e, uint64_t bytes)
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

static void mem_give(struct rt_engine *e, uint64_t bytes)
{
	pthread_mutex_lock(&e->lock);
	__atomic_store_n(&e->used, e->used - bytes, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&e->lock);
}

/* ---- configuration ---- */

void rt_config_defaults(dkv_seq_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->struct_size = sizeof(*cfg);
	cfg->dtype = DKV_F32;
	cfg->max_tokens = RT_DEF_MAX_TOKENS;
	cfg->hash_bits = RT_DEF_HASH_BITS;
	cfg->hash = DKV_HASH_SIMHASH;
	cfg->train_tokens = RT_DEF_TRAIN_TOKENS;
	cfg->top_k = RT_DEF_TOP_K;
	cfg->candidates = RT_DEF_CANDIDATES;
	cfg->sink_tokens = RT_DEF_SINKS;
	cfg->recent_window = RT_DEF_WINDOW;
	cfg->mass_target = 0.0f;
	cfg->tail_estimate = RT_DEF_TAIL;
	cfg->scale = 0.0f;
	cfg->exact = 0;
}

static int check_geometry(const dkv_seq_config *c, char *err)
{
	if (c->n_layers < 1 || c->n_layers > DKV_MAX_LAYERS)
		return fail(err, DKV_E_INVAL, "n_layers %u out of range [1, %u]",
			    c->n_layers, DKV_MAX_LAYERS);
	if (c->n_kv_heads < 1 || c->n_kv_heads > DKV_MAX_HEADS)
		return fail(err, DKV_E_INVAL, "n_kv_heads %u out of range [1, %u]",
			    c->n_kv_heads, DKV_MAX_HEADS);
	if (c->n_q_heads < 1 || c->n_q_heads > DKV_MAX_HEADS ||
	    c->n_q_heads % c->n_kv_heads)
		return fail(err, DKV_E_INVAL,
			    "n_q_heads %u must be a multiple of n_kv_heads %u, at most %u",
			    c->n_q_heads, c->n_kv_heads, DKV_MAX_HEADS);
	if (c->head_dim < 8 || c->head_dim > DKV_MAX_HEAD_DIM || c->head_dim % 8)
		return fail(err, DKV_E_INVAL,
			    "head_dim %u must be a multiple of 8 in [8, %u]",
			    c->head_dim, DKV_MAX_HEAD_DIM);
	if (c->dtype != DKV_F32 && c->dtype != DKV_F16 && c->dtype != DKV_BF16)
		return fail(err, DKV_E_INVAL, "dtype %d is not DKV_F32, DKV_F16 or DKV_BF16",
			    c->dtype);
	return DKV_OK;
}

static int resolve_knobs(dkv_seq_config *c, char *err)
{
	if (!c->max_tokens)
		c->max_tokens = RT_DEF_MAX_TOKENS;
	if (c->max_tokens > RT_MAX_MAX_TOKENS)
		return fail(err, DKV_E_INVAL, "max_tokens %llu above %llu",
			    (unsigned long long)c->max_tokens, RT_MAX_MAX_TOKENS);
	if (!c->hash_bits)
		c->hash_bits = RT_DEF_HASH_BITS;
	if (c->hash_bits != 64 && c->hash_bits != 128 && c->hash_bits != 256)
		return fail(err, DKV_E_INVAL, "hash_bits %u is not 64, 128 or 256", c->hash_bits);
	if (!c->hash)
		c->hash = DKV_HASH_SIMHASH;
	if (c->hash != DKV_HASH_SIMHASH && c->hash != DKV_HASH_LEARNED)
		return fail(err, DKV_E_INVAL, "hash %d is not a DKV_HASH_* value", c->hash);
	if (c->hash_model && (c->hash != DKV_HASH_LEARNED || !*c->hash_model))
		return fail(err, DKV_E_INVAL, c->hash != DKV_HASH_LEARNED ?
			    "hash_model needs hash DKV_HASH_LEARNED" : "hash_model is empty");
	if (!c->train_tokens)
		c->train_tokens = RT_DEF_TRAIN_TOKENS;
	if (!c->top_k)
		c->top_k = RT_DEF_TOP_K;
	if (c->top_k > (1u << 20))
		return fail(err, DKV_E_INVAL, "top_k %u above %u", c->top_k, 1u << 20);
	if (!c->candidates)
		c->candidates = c->top_k * 8 > RT_DEF_CANDIDATES ? c->top_k * 8 : RT_DEF_CANDIDATES;
	if (c->candidates < c->top_k || c->candidates > (1u << 20))
		return fail(err, DKV_E_INVAL, "candidates %u must lie in [top_k %u, %u]",
			    c->candidates, c->top_k, 1u << 20);
	if (!c->sink_tokens)
		c->sink_tokens = RT_DEF_SINKS;
	if (!c->recent_window)
		c->recent_window = RT_DEF_WINDOW;
	if (c->sink_tokens > (1u << 20) || c->recent_window > (1u << 20))
		return fail(err, DKV_E_INVAL, "sink_tokens %u / recent_window %u above %u",
			    c->sink_tokens, c->recent_window, 1u << 20);
	if (!(c->mass_target >= 0.0f && c->mass_target < 1.0f))
		return fail(err, DKV_E_INVAL, "mass_target %g outside [0, 1)", (double)c->mass_target);
	if (c->tail_estimate == -1)
		c->tail_estimate = RT_DEF_TAIL;
	if (c->exact == -1)
		c->exact = 0;
	if ((c->tail_estimate != 0 && c->tail_estimate != 1) || (c->exact != 0 && c->exact != 1))
		return fail(err, DKV_E_INVAL, "tail_estimate %d / exact %d must be -1, 0 or 1",
			    c->tail_estimate, c->exact);
	if (!(c->scale >= 0.0f) || isinf(c->scale))
		return fail(err, DKV_E_INVAL, "scale %g must be finite and >= 0", (double)c->scale);
	if (c->scale == 0.0f)
		c->scale = 1.0f / sqrtf((float)c->head_dim);
	return DKV_OK;
}

int rt_config_resolve(const dkv_seq_config *cfg, dkv_seq_config *out, char *err)
{
	dkv_seq_config c;
	size_t known = offsetof(dkv_seq_config, reserved);

	if (!cfg)
		return fail(err, DKV_E_INVAL, "config is NULL");
	if (cfg->struct_size < known || cfg->struct_size > sizeof(c))
		return fail(err, DKV_E_INVAL,
			    "struct_size %u unknown: call dkv_seq_config_init() first",
			    cfg->struct_size);
	memset(&c, 0, sizeof(c));
	memcpy(&c, cfg, cfg->struct_size);
	for (size_t i = 0; i < sizeof(c.reserved) / sizeof(c.reserved[0]); i++)
		if (c.reserved[i])
			return fail(err, DKV_E_INVAL, "reserved[%zu] must be zero", i);
	int rc = check_geometry(&c, err);
	if (rc == DKV_OK)
		rc = resolve_knobs(&c, err);
	if (rc == DKV_OK) {
		c.struct_size = sizeof(c);
		*out = c;
	}
	return rc;
}

/* ---- scratch ---- */

static void scratch_free(struct rt_scratch *sc)
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

/* Keys sampled per query position to place thresholds (see pick_thresholds). */
static uint32_t samp_max_of(uint32_t group)
{
	uint32_t m = (4u << 20) / group;
	return m > 65536 ? 65536 : m < 1024 ? 1024 : m;
}

/* One shard's scratch (step.h). */
static void rank_layout(struct rt_seq *s, struct shard_rank *rk, struct carver *cv)
{
	const dkv_seq_config *c = &s->cfg;
	size_t g = s->group, hc = s->sc.hit_cap, u = sizeof(uint32_t), f = sizeof(float);
	size_t blk = KRN_BLOCK * c->head_dim * f, rb = shard_rec_bytes(s->group, c->top_k);
	size_t shards = s->eng->n_shards;

	rk->hit = carve(cv, g * hc * u);
	rk->n_hit = carve(cv, g * u);
	rk->n_keep = carve(cv, g * u);
	rk->logit = carve(cv, g * hc * f);
	if (g <= SHARD_UNION_MAX) {
		rk->u_pos = carve(cv, g * hc * u);
		rk->u_map = carve(cv, g * hc * u);
		rk->u_logit = carve(cv, g * g * hc * f);
	}
	rk->sel = carve(cv, hc * u);
	rk->top = carve(cv, g * c->top_k * u);
	rk->rec = carve(cv, rb);
	rk->recv = carve(cv, shard_recv_bytes((uint32_t)shards, s->group, c->top_k));
	rk->bufs.kbuf = carve(cv, blk);
	rk->bufs.vbuf = carve(cv, blk);
	rk->bufs.ptrs = carve(cv, (KRN_BLOCK + KRN_GDOT_AHEAD) * sizeof(void *));
}

static void scratch_layout(struct rt_seq *s, struct carver *cv)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	size_t dim = c->head_dim, g = s->group, words = s->geom.words, f = sizeof(float);
	size_t blk = KRN_BLOCK * dim * f, u = sizeof(uint32_t);

	sc->n_hit = carve(cv, g * u);
	for (uint32_t r = 0; r < s->eng->n_shards; r++)
		rank_layout(s, &sc->rank[r], cv);
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
	t->se = sc->samp_e;
	t->sld = sc->samp_max;
}

/* The scratch whose size depends only on the geometry and knobs. */
static int scratch_fixed(struct rt_seq *s)
{
	struct rt_scratch *sc = &s->sc;
	struct carver cv = { NULL, 0 };

	sc->hit_cap = s->cfg.candidates * 4;
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
static int scratch_reserve(struct rt_seq *s, uint64_t tokens, char *err)
{
	struct rt_scratch *sc = &s->sc;
	size_t want = tokens / SHARD_BLOCK + 2, g = s->group, dim = s->cfg.head_dim;

	if (want <= sc->blk_cap)
		return DKV_OK;
	size_t cap = round_cap(want), pages = cap / SHARD_PAGE_BLOCKS + 1;
	size_t bytes = cap * g * sizeof(float) +
		       pages * g * (sizeof(double) + (dim + 2) * sizeof(float));
	if (mem_take(s->eng, bytes - sc->grow_bytes))
		return fail(err, DKV_E_NOSPACE,
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
		mem_give(s->eng, bytes - sc->grow_bytes);
		return fail(err, DKV_E_NOMEM, "out of memory for step scratch");
	}
	sc->grow_bytes = bytes;
	sc->blk_cap = sc->task.blk_cap = cap;
	sc->page_cap = pages;
	return DKV_OK;
}

/* ---- open / close ---- */

static void seq_free(struct rt_seq *s)
{
	if (s->layers) {
		for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
			/* a fit reads the pages: first it ends */
			if (s->layers[l].fit) {
				pthread_join(s->layers[l].fit->th, NULL);
				fit_free(s->layers[l].fit);
			}
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
	scratch_free(&s->sc);
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
		return fail(err, DKV_E_NOMEM, "out of memory for the sequence");
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
	s->geom.n_shards = e->n_shards;
	s->geom.node = e->node;
	s->trace_cap = s->cfg.sink_tokens + s->cfg.recent_window + s->cfg.top_k;
	s->swap_work = RT_FIT_WORK;
	s->P = rt_hash_projection(s->cfg.hash_bits, s->cfg.head_dim,
				  RT_HASH_SEED(s->cfg.head_dim));
	s->trace_n = calloc(s->cfg.n_q_heads, sizeof(uint32_t));
	if (!s->P || !s->trace_n || layers_init(s) || scratch_fixed(s)) {
		seq_free(s);
		return fail(err, DKV_E_NOMEM, "out of memory opening the sequence");
	}
	rc = seq_gpu_init(s, err);
	if (rc) {
		seq_free(s);
		return rc;
	}
	if (mem_take(e, seq_fixed_bytes(s))) {
		seq_free(s);
		return fail(err, DKV_E_NOSPACE, "memory limit reached opening the sequence");
	}
	rc = s->cfg.hash_model ? seq_model_open(s, s->cfg.hash_model, err) : DKV_OK;
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
	mem_give(s->eng, seq_fixed_bytes(s) + s->pages_bytes + s->sc.grow_bytes +
		 s->model_bytes + s->codes_bytes + s->fit_bytes);
	seq_free(s);
}

const dkv_seq_config *rt_seq_config(const struct rt_seq *s)
{
	return &s->cfg;
}

/* ---- input checks and conversion ---- */

static void to_f32(int dtype, const void *in, size_t n, float *out)
{
	krn_elt_to_f32(krn_get(), (enum krn_elt)dtype, in, out, n);
}

static void from_f32(int dtype, const float *in, size_t n, void *out)
{
	const struct krn_ops *ops = krn_get();

	if (dtype == DKV_F16)
		ops->f32_to_f16(in, out, n);
	else if (dtype == DKV_BF16)
		ops->f32_to_bf16(in, out, n);
	else
		memcpy(out, in, n * sizeof(float));
}

static int check_args(const struct rt_seq *s, uint32_t layer, const void *q,
		      uint32_t n_q, const void *k, const void *v, uint32_t n_new,
		      const void *out, char *err)
{
	const dkv_seq_config *c = &s->cfg;

	if (layer >= c->n_layers)
		return fail(err, DKV_E_INVAL, "layer %u out of range [0, %u)", layer, c->n_layers);
	if (n_new && (!k || !v))
		return fail(err, DKV_E_INVAL, "k and v must not be NULL when n_new is %u", n_new);
	if (n_q && (!q || !out))
		return fail(err, DKV_E_INVAL, "q and out must not be NULL when n_q is %u", n_q);
	uint64_t len = s->layers[layer].store.len;
	if (n_q > len + n_new)
		return fail(err, DKV_E_INVAL,
			    "n_q %u exceeds the %llu tokens the layer holds after the append",
			    n_q, (unsigned long long)(len + n_new));
	if (len + n_new > c->max_tokens)
		return fail(err, DKV_E_NOSPACE,
			    "layer %u: %llu + %u tokens exceed max_tokens %llu", layer,
			    (unsigned long long)len, n_new, (unsigned long long)c->max_tokens);
	return DKV_OK;
}

/* 1 when n values of the dtype are all finite (no NaN, no Inf). */
static int all_finite(int dtype, const void *x, size_t n)
{
	const uint16_t *h = x;
	uint16_t expmask = dtype == DKV_F16 ? 0x7c00 : 0x7f80;

	if (dtype == DKV_F32)
		return krn_get()->all_finite(x, n);
	for (size_t i = 0; i < n; i++)
		if ((h[i] & expmask) == expmask)
			return 0;
	return 1;
}

static int check_finite(const struct rt_seq *s, const void *q, uint32_t n_q,
			const void *k, const void *v, uint32_t n_new, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	size_t nq = (size_t)n_q * c->n_q_heads * c->head_dim;
	size_t nk = (size_t)n_new * c->n_kv_heads * c->head_dim;

	if (!all_finite(c->dtype, q, nq))
		return fail(err, DKV_E_BADINPUT, "a query holds NaN or Inf; nothing was stored");
	if (!all_finite(c->dtype, k, nk))
		return fail(err, DKV_E_BADINPUT, "a key holds NaN or Inf; nothing was stored");
	if (!all_finite(c->dtype, v, nk))
		return fail(err, DKV_E_BADINPUT, "a value holds NaN or Inf; nothing was stored");
	return DKV_OK;
}

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
	if (mem_take(s->eng, bytes))
		return fail(err, DKV_E_NOSPACE,
			    "memory limit: %u more pages (%llu bytes) would exceed it", more,
			    (unsigned long long)bytes);
	if (shard_layer_reserve(L, tokens)) {
		mem_give(s->eng, bytes);
		return fail(err, DKV_E_NOMEM, "out of memory for %u pages", more);
	}
	s->pages_bytes += bytes;
	return DKV_OK;
}

/* ---- append ---- */

/* Encode the stored keys [t0, t1) of head h with its current model. */
static void encode_range(struct rt_seq *s, struct rt_layer *L, uint32_t h,
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
		t += n;
	}
	shard_gpu_dirty(L->gpu, h, t0);
}

/* Fix head h's mean key from the stored keys after the sinks. */
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
			to_f32(c->dtype, vsrc, dim, vf);
			shard_sums_add(st, h, t, vf);
		}
	st->len = len0 + n_new;
	if (c->exact) /* dense attention reads no codes */
		return;
	for (uint32_t h = 0; h < H; h++) {
		if (!L->hash[h].mu_set && st->len >= RT_MU_TOKENS) {
			fix_mean(s, L, h);
			L->hash[h].max_norm = 0.0f;
			encode_range(s, L, h, 0, st->len);
			fix_norm_ref(L, h);
		} else {
			encode_range(s, L, h, len0, st->len);
		}
	}
}


/* ---- learned hash models ---- */

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
static void capture_queries(struct rt_seq *s, struct rt_layer *L, const float *q)
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

/* Swap head h's model for m (taken over); its keys are re-encoded by the caller. */
static void take_model(struct rt_layer *L, uint32_t h, struct rt_lhead *m)
{
	struct rt_lhead old = L->lm[h];

	L->lm[h] = *m;
	L->hash[h].lm = &L->lm[h];
	memset(m, 0, sizeof(*m));
	rt_lhead_free(&old);
}

/* Swap head h's model for m (taken over) and re-encode its stored keys. */
static void swap_model(struct rt_seq *s, struct rt_layer *L, uint32_t h, struct rt_lhead *m)
{
	take_model(L, h, m);
	encode_range(s, L, h, 0, L->store.len);
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

/* Give a fit's remaining charge back and free it. */
static void fit_release(struct rt_seq *s, struct rt_fit *f)
{
	if (!f)
		return;
	mem_give(s->eng, f->bytes);
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

	if (mem_take(s->eng, bytes))
		return DKV_E_NOSPACE;
	s->fit_bytes += bytes;
	f = calloc(1, sizeof(*f));
	if (!f) {
		mem_give(s->eng, bytes);
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
		mem_give(s->eng, code_slab_bytes(s));
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
		encode_range(s, L, h, len0, L->store.len);
}

/* Swap the fitted models in (the stored keys with them); frees f. */
static int fit_apply(struct rt_seq *s, struct rt_layer *L, struct rt_fit *f)
{
	int rc = DKV_OK;

	for (uint32_t h = 0; h < f->n_heads; h++) {
		if (f->rc[h] == 0)
			take_model(L, h, &f->out[h]);
		else if (f->rc[h] < 0)
			rc = DKV_E_NOMEM;
	}
	if (f->codes) {
		fit_swap_slabs(s, L, f);
	} else {
		for (uint32_t h = 0; h < f->n_heads; h++)
			if (f->rc[h] == 0)
				encode_range(s, L, h, 0, L->store.len);
	}
	fit_release(s, f);
	return rc;
}

/* Whether layer L can be fitted now: learned, mean keys fixed, queries seen. */
static int can_train(const struct rt_seq *s, const struct rt_layer *L)
{
	if (s->cfg.hash != DKV_HASH_LEARNED || s->cfg.exact || L->q_kept < 8)
		return 0;
	for (uint32_t h = 0; h < s->cfg.n_kv_heads; h++)
		if (!L->hash[h].mu_set)
			return 0;
	return 1;
}

/* A pending background fit of L: wait for it and swap its models in. */
static int train_finish(struct rt_seq *s, struct rt_layer *L)
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
	int rc = train_finish(s, L);

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
 * when fit_due says (train_finish waits if the fit is late).  Without
 * memory under the limit, or a thread, L stays as it is (SimHash) and
 * tries again at its next step; fit_deferred says so in the stats.
 */
static void train_start(struct rt_seq *s, struct rt_layer *L)
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
static int fit_due(struct rt_seq *s, struct rt_layer *L)
{
	struct rt_fit *f = L->fit;

	if (!f || L->steps < f->swap_step || f->work < f->need)
		return 0;
	if (!__atomic_load_n(&f->done, __ATOMIC_ACQUIRE))
		s->fits_late++;
	return 1;
}

/* The work of a step's queries for fit_due: keys scanned. */
static void fit_count(struct rt_layer *L, uint32_t n_q)
{
	if (L->fit)
		L->fit->work += (double)n_q * (double)L->store.len;
}

/* ---- attention ---- */

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

struct step_counts {
	double cand, exact, est;
	uint64_t coarse_ns, fine_ns, tail_ns;
};

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
			struct shard_rank *rk = &sc->rank[p % S];
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
	uint64_t target = (uint64_t)c->candidates + c->candidates / 4;
	/* enough samples that about 32 of them pass the threshold */
	uint64_t want = 32 * (uint64_t)n_mid / target;
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
			  uint32_t j, uint64_t m0, uint64_t m1, struct step_counts *cnt)
{
	struct rt_scratch *sc = &s->sc;
	const dkv_seq_config *c = &s->cfg;
	uint32_t n_top = sc->n_top[j];
	size_t at = (size_t)j * c->top_k;

	shard_attend_list(st, h, sc->top_pos + at, sc->top_logit + at, n_top, &sc->part[j],
			  &sc->bufs);
	cnt->cand += sc->n_hit[j] < sc->hit_cap ? sc->n_hit[j] : sc->hit_cap;
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
			 uint64_t p, struct step_counts *cnt)
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
	uint64_t t0 = now_ns();
	sc->task.m0 = sink_end;
	sc->task.m1 = w0;
	coarse_filter(s, L, h, sink_end, w0);
	uint64_t t1 = now_ns();
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
	uint64_t t2 = now_ns();
	if (c->tail_estimate)
		attend_tail(s, sink_end, w0);
	uint64_t t3 = now_ns();
	cnt->coarse_ns += t1 - t0;
	cnt->fine_ns += t2 - t1;
	cnt->tail_ns += t3 - t2;
	shard_attend_range(st, h, sc->qg, g, 0, sink_end, c->scale, sc->part, &sc->bufs);
	shard_attend_range(st, h, sc->qg, g, w0, p1, c->scale, sc->part, &sc->bufs);
	for (uint32_t j = 0; j < g; j++)
		cnt->exact += (double)(sink_end + (p1 - w0));
}

static void attend_query(struct rt_seq *s, struct rt_layer *L, const float *q,
			 uint64_t p, void *out, struct step_counts *cnt)
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
	from_f32(c->dtype, sc->outf, (size_t)c->n_q_heads * dim, out);
}

/* ---- the step ---- */

static int reserve_step(struct rt_seq *s, struct shard_layer *L, const void *q,
			uint32_t n_q, const void *k, const void *v, uint32_t n_new,
			char *err)
{
	int rc;

	rc = check_finite(s, q, n_q, k, v, n_new, err);
	if (rc == DKV_OK)
		rc = scratch_reserve(s, L->len + n_new, err);
	if (rc == DKV_OK)
		rc = reserve_pages(s, L, L->len + n_new, err);
	return rc;
}

int rt_seq_step(struct rt_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		const void *k, const void *v, uint32_t n_new, void *out, char *err)
{
	uint64_t t0 = now_ns(), t1;
	struct step_counts cnt = { 0, 0, 0, 0, 0, 0 };
	const dkv_seq_config *c = &s->cfg;
	struct rt_layer *L;
	int rc;

	rc = check_args(s, layer, q, n_q, k, v, n_new, out, err);
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
			return fail(err, DKV_E_NOMEM, "out of memory for the trace");
	}
	/* a background fit swaps in at its step, before this step's keys */
	if (fit_due(s, L))
		train_finish(s, L);
	append(s, L, k, v, n_new);
	fit_count(L, n_q);
	t1 = now_ns();
	size_t qstride = (size_t)c->n_q_heads * c->head_dim;
	size_t bstride = qstride * s->geom.elt_size;
	for (uint32_t i = 0; i < n_q; i++) {
		to_f32(c->dtype, (const uint8_t *)q + i * bstride, qstride, s->sc.qf);
		if (L->qcap)
			capture_queries(s, L, s->sc.qf);
		attend_query(s, L, s->sc.qf, L->store.len - n_q + i,
			     (uint8_t *)out + i * bstride, &cnt);
	}
	/* the step is answered: fitting starts, off the step path */
	if (!L->trained && L->store.len >= c->train_tokens && can_train(s, L))
		train_start(s, L);
	L->steps++;
	uint64_t t2 = now_ns();
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
		return fail(err, DKV_E_INVAL, "layer %u out of range [0, %u)", layer,
			    s->cfg.n_layers);
	*tokens = s->layers[layer].store.len;
	return DKV_OK;
}

int rt_seq_train_now(struct rt_seq *s, char *err)
{
	/* SimHash has nothing to fit; layers without queries keep theirs. */
	for (uint32_t l = 0; l < s->cfg.n_layers; l++) {
		if (train_finish(s, &s->layers[l]))
			return fail(err, DKV_E_NOMEM, "out of memory training layer %u", l);
		if (!can_train(s, &s->layers[l]))
			continue;
		int rc = train_layer(s, &s->layers[l]);
		if (rc == DKV_E_NOSPACE)
			return fail(err, rc, "memory limit: fitting layer %u needs %llu bytes more; "
				    "it keeps its models", l,
				    (unsigned long long)fit_bytes_of(s, &s->layers[l], 0));
		if (rc)
			return fail(err, DKV_E_NOMEM, "out of memory training layer %u", l);
	}
	return DKV_OK;
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
	if (mem_take(s->eng, bytes))
		return fail(err, DKV_E_NOSPACE, "memory limit: the model's %llu more bytes "
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
static int seq_model_open(struct rt_seq *s, const char *path, char *err)
{
	const dkv_seq_config *c = &s->cfg;
	struct rt_model want = { .bits = c->hash_bits, .dim = c->head_dim,
				 .n_layers = c->n_layers, .n_kv_heads = c->n_kv_heads };
	struct rt_model g, m;
	uint64_t reading;
	int rc = rt_model_header(path, &g, err, RT_ERRLEN);

	if (rc == DKV_OK)
		rc = rt_model_check(&g, want.bits, want.dim, want.n_layers, want.n_kv_heads,
				    err, RT_ERRLEN);
	if (rc)
		return rc;
	reading = model_read_bytes(&g);
	if (mem_take(s->eng, reading))
		return fail(err, DKV_E_NOSPACE, "memory limit: reading the model takes %llu "
			    "bytes", (unsigned long long)reading);
	want.hidden = g.hidden;
	rc = rt_model_read_for(path, &want, &m, err, RT_ERRLEN);
	if (rc == DKV_OK) {
		rc = model_keep(s, &m, err);
		rt_model_free(&m);
	}
	mem_give(s->eng, reading);
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
		return fail(err, DKV_E_INVAL, "a model file needs hash DKV_HASH_LEARNED");
	for (uint32_t l = 0; l < c->n_layers; l++)
		train_finish(s, &s->layers[l]);
	rc = rt_model_read(path, &m, err, RT_ERRLEN);
	/* the file may hold more layers; ours are layer0, layer0 + 1, ... */
	if (rc == DKV_OK)
		rc = rt_model_check(&m, c->hash_bits, c->head_dim,
				    m.n_layers > need ? m.n_layers : need, c->n_kv_heads,
				    err, RT_ERRLEN);
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
		return fail(err, DKV_E_INVAL, "only a DKV_HASH_LEARNED sequence has a model");
	if (rt_model_alloc(&m, c->hash_bits, c->head_dim, RT_MODEL_HIDDEN, c->n_layers,
			   c->n_kv_heads))
		return fail(err, DKV_E_NOMEM, "out of memory for the model");
	for (uint32_t l = 0; l < c->n_layers; l++)
		for (uint32_t h = 0; h < c->n_kv_heads; h++) {
			const struct rt_lhead *lm = &s->layers[l].lm[h];
			size_t i = (size_t)l * c->n_kv_heads + h;
			if (!lm->buf)
				continue;
			if (lm->hidden != m.hidden) {
				rt_model_free(&m);
				return fail(err, DKV_E_INVAL, "layer %u head %u: hidden width %u, "
					    "the file holds %u", l, h, lm->hidden, m.hidden);
			}
			memcpy(m.heads[i].buf, lm->buf,
			       rt_lhead_floats(lm->bits, lm->dim, lm->hidden) * sizeof(float));
			m.trained[i] = 1;
		}
	rc = rt_model_write(&m, path, err, RT_ERRLEN);
	rt_model_free(&m);
	return rc;
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

void rt_seq_fit_work(struct rt_seq *s, double units)
{
	s->swap_work = units;
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
