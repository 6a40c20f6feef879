/*
 * task.h - what the shard jobs (step.h) and a device backend (gpu.h)
 * share: the task of one kv head group's search, a shard's scratch for
 * it, the records of the all-gather, and the table of operations through
 * which a job reaches its device.
 *
 * The jobs never call a backend by name: a task whose dev is set runs the
 * device parts of its jobs through it, so the backend depends on the jobs'
 * types and not the other way round.
 */
#ifndef DKV_SHARD_TASK_H
#define DKV_SHARD_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "krn.h"
#include "search.h"
#include "store.h"

struct shard_coll;
struct shard_gpu_layer;
struct shard_task;

/* One shard's scratch for a task. */
struct shard_rank {
	uint32_t *hit;      /* [g][hit_cap] hit positions, ascending */
	uint32_t *n_hit;    /* [g] hits counted (may exceed hit_cap) */
	uint32_t *n_keep;   /* [g] hits kept (set by the engine after the scan), then
			       those that passed the sketch cut (the rank job) */
	uint32_t *n_pool;   /* [g] hits kept after the scan: past n_keep, those the
			       sketch cut let go, with their sketch scores */
	float *logit;       /* [g][hit_cap] exact logits of the hits */
	uint32_t *u_pos;    /* [g * hit_cap] union of the group's hits */
	uint32_t *u_map;    /* [g][hit_cap] union index of each hit */
	float *u_logit;     /* [g][g * hit_cap] */
	uint32_t *sel;      /* [hit_cap] select scratch */
	float *spare;       /* [hit_cap] the sketch cut's scratch */
	uint32_t *top;      /* [g][top_k] local top-K: indices into hit */
	void *rec;          /* this shard's all-gather record */
	void *recv;         /* shard_recv_bytes: [n_shards] records, merge room */
	struct shard_bufs bufs;
};

/*
 * The device parts of the jobs, on shard r.  scan, fine and exact return
 * nonzero when the job must run the host code instead; allgather cannot
 * fall back (the other shards are already in it), so the backend keeps
 * its failure for the engine to ask about.
 */
struct shard_dev_ops {
	int (*scan)(struct shard_task *t, uint32_t r);
	int (*fine)(struct shard_task *t, uint32_t r);
	int (*exact)(struct shard_task *t, uint32_t r);
	void (*allgather)(struct shard_task *t, uint32_t r, const void *rec, void *recv,
			  size_t bytes);
};

struct shard_task {
	const struct shard_layer *l;
	uint32_t h, g, dim;        /* kv head, query heads, head_dim */
	uint32_t n_shards;
	const float *qg;           /* [g][dim] queries */
	float scale;
	uint64_t m0, m1;           /* the middle (coarse path) */
	uint64_t t0, t1;           /* the range (exact job) */
	const struct krn_scan_q *q;
	uint32_t hit_cap, top_k;
	int tail;                  /* estimate the tail */
	float *blk;                /* [g][blk_cap] mass per block from m0 / 64 */
	size_t blk_cap;
	float *mref;               /* [g] tail reference, moved by the rank job */
	const float *cut;          /* [g] blocks under it are skipped (tail job) */
	uint32_t tail_span;        /* blocks per value summary of the tail: 1 or 4 */
	double *pmass;             /* [page][g] tail mass of each page */
	float *pacc;               /* [page][g][dim] tail value / exact acc */
	float *pms;                /* [page][g][2] exact partial (m, s) */
	uint32_t *n_top;           /* [g] global top-K count */
	uint32_t *top_pos;         /* [g][top_k] global top-K, ascending */
	float *top_logit;          /* [g][top_k] */
	struct shard_rank *rank;   /* [n_shards] */
	struct shard_coll *coll;
	/*
	 * The pool's re-ranking (sketch job, then the rank job's cut): int8
	 * queries [g][dim] and their score factors (shard_sketch_scores);
	 * pool set when the cut applies: hit i of head j goes on to the fine
	 * ranking when its score s > pcut[j], or s == pcut[j] and its
	 * position <= pcut_pos[j].
	 */
	int pool;
	const int8_t *q8;
	const float *skmul, *skadd;
	const float *pcut;
	const uint32_t *pcut_pos;
	/* the threshold sample (sample job): positions ascending */
	const uint32_t *spos;
	uint32_t sn;
	const uint64_t *qc;        /* [g][words] query codes */
	const float *tab;          /* [g][bits + 1] */
	float *se;                 /* [g][sld] estimates */
	size_t sld;
	/* GPU shards (gpu.h): the layer's device mirror, and the job's (NULL:
	 * the job runs the host code, as on CPU shards) */
	struct shard_gpu_layer *gpu_layer;
	struct shard_gpu_layer *gpu;
	/* the operations that run the job's device parts on gpu (NULL with it) */
	const struct shard_dev_ops *dev;
};

/* Groups of up to this many query heads fine-rank the union of their hits
 * (a shard_rank then needs u_pos, u_map and u_logit). */
#define SHARD_UNION_MAX 8u

/* Shards whose lists one merge takes (the size of its cursor array). */
#define SHARD_MERGE_MAX 4096u

/* An entry of a shard's top-K list as the all-gather carries it. */
struct shard_rec_ent {
	float logit;
	uint32_t pos;
};

/* Per query head of a record: the list's length and the max logit of the
 * shard's hits outside its list, then top_k entries. */
struct shard_rec_head {
	uint32_t n;
	float rest_max;
};

/* Bytes of one shard's all-gather record for g heads and top_k. */
static inline size_t shard_rec_bytes(uint32_t g, uint32_t top_k)
{
	return (size_t)g * (sizeof(struct shard_rec_head) +
			    (size_t)top_k * sizeof(struct shard_rec_ent));
}

/* Bytes of a shard's recv: the gathered records and room to merge them. */
static inline size_t shard_recv_bytes(uint32_t n_shards, uint32_t g, uint32_t top_k)
{
	/* per entry of the merge: the entry, its logit, select index and scratch */
	size_t merge = (size_t)n_shards * top_k * (sizeof(struct shard_rec_ent) + 3 * 4);

	return (size_t)n_shards * shard_rec_bytes(g, top_k) + merge;
}

/* Pages of [t0, t1): first page and count (0 when empty). */
static inline uint64_t shard_pages_of(uint64_t t0, uint64_t t1, uint64_t *first)
{
	*first = t0 / SHARD_PAGE;
	return t1 > t0 ? (t1 - 1) / SHARD_PAGE + 1 - *first : 0;
}

#endif
