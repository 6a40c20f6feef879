/*
 * engine_int.h - the engine's internal state, shared by the files that
 * make up the engine and by nothing else:
 *
 *   engine.c     engines, memory accounting, sequences, the append and
 *                the step's order of work
 *   config.c     knob resolution (rt_config_*, engine.h)
 *   input.c      input validation and dtype conversion
 *   scratch.c    the step's scratch: layout and reservation
 *   attend.c     the attend path: coarse filter, adaptive K, tail, exact
 *   fit.c        learned models: the query sample, the fit and its swap
 *   model_file.c loading and saving a sequence's model file
 */
#ifndef DKV_RT_ENGINE_INT_H
#define DKV_RT_ENGINE_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "engine.h"
#include "gpu.h"
#include "step.h"

/* Tokens sampled per query head to calibrate the tail estimate. */
#define RT_TAIL_SAMPLES 128u

/* Queries kept per (layer, kv head) to train learned models from. */
#define RT_QCAP 1024u

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

/* A layer's fit of learned models in progress (fit.c). */
struct rt_fit;

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
	/* the pool's sketch cut (rerank_pool, attend.c) */
	int8_t *q8;        /* [group][dim] queries for the sketches */
	float *skmul, *pcut;   /* [group] */
	uint32_t *pcut_pos;    /* [group] */
	uint32_t *n_fine;      /* [group] hits fine-ranked */
	float *px;             /* [hit_cap] a head's pool scores, in position order */
	uint32_t *ppos, *pidx, *psel; /* [hit_cap] their positions, select scratch */
	uint32_t *pcur;        /* [n_shards] cursors over the shards' hits */
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
	double swap_work;     /* RT_FIT_WORK, or a test's (rt_seq_fit_work) */
	dkv_stats st;
	int trace;
	uint32_t *trace_idx;  /* [n_q_heads][trace_cap] */
	uint32_t *trace_n;    /* [n_q_heads] */
	uint32_t trace_cap;
};

/* What a step's queries did, for its stats. */
struct rt_step_counts {
	double cand, exact, est;
	uint64_t coarse_ns, fine_ns, tail_ns;
};

static inline uint64_t rt_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* engine.c */
/* Take `bytes` from the limit; 0 or -1 when it would be exceeded. */
int rt_mem_take(struct rt_engine *e, uint64_t bytes);
void rt_mem_give(struct rt_engine *e, uint64_t bytes);
/* Encode the stored keys [t0, t1) of head h with its current model. */
void rt_encode_range(struct rt_seq *s, struct rt_layer *L, uint32_t h,
		     uint64_t t0, uint64_t t1);

/* input.c */
void rt_to_f32(int dtype, const void *in, size_t n, float *out);
void rt_from_f32(int dtype, const float *in, size_t n, void *out);
/* The step's arguments: shapes, NULLs and max_tokens. */
int rt_check_args(const struct rt_seq *s, uint32_t layer, const void *q,
		  uint32_t n_q, const void *k, const void *v, uint32_t n_new,
		  const void *out, char *err);
/* No NaN or Inf in the queries, keys or values. */
int rt_check_finite(const struct rt_seq *s, const void *q, uint32_t n_q,
		    const void *k, const void *v, uint32_t n_new, char *err);

/* scratch.c */
/* The scratch whose size depends only on the geometry and knobs. */
int rt_scratch_fixed(struct rt_seq *s);
/* Grow the scratch for a layer of `tokens` tokens, charged to the limit. */
int rt_scratch_reserve(struct rt_seq *s, uint64_t tokens, char *err);
void rt_scratch_free(struct rt_scratch *sc);

/* attend.c */
/*
 * Attention of every query head for the query q (f32 [n_q_heads][dim])
 * at position p, written to out in the sequence's dtype.
 */
void rt_attend_query(struct rt_seq *s, struct rt_layer *L, const float *q,
		     uint64_t p, void *out, struct rt_step_counts *cnt);

/* fit.c */
void rt_sample_queries(struct rt_seq *s, struct rt_layer *L, const float *q);
/* Swap head h's model for m (taken over); its keys are re-encoded by the caller. */
void rt_take_model(struct rt_layer *L, uint32_t h, struct rt_lhead *m);
int rt_can_train(const struct rt_seq *s, const struct rt_layer *L);
void rt_train_start(struct rt_seq *s, struct rt_layer *L);
int rt_train_finish(struct rt_seq *s, struct rt_layer *L);
int rt_fit_due(struct rt_seq *s, struct rt_layer *L);
void rt_fit_count(struct rt_layer *L, uint32_t n_q);
/* Wait for a fit's thread and free it (its charge goes with the sequence's). */
void rt_fit_wait_free(struct rt_fit *f);

/* model_file.c */
/* hash_model at open: a model file for exactly this geometry. */
int rt_seq_model_open(struct rt_seq *s, const char *path, char *err);

/*
 * The coarse filter's pool (attend.c): the hits kept per query head for
 * a sequence's knobs, and the pool a middle of n_mid tokens aims at.
 */
uint32_t rt_hit_cap(const dkv_seq_config *c);
uint64_t rt_pool_target(const dkv_seq_config *c, uint64_t n_mid, uint32_t hit_cap);

#endif
