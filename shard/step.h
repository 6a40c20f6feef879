/*
 * step.h - one kv head group's search, split over a sequence's shards.
 *
 * Pages are dealt round-robin: page p belongs to shard p % n_shards.  A
 * task describes the search of one group of query heads (one kv head) at
 * one query position; the engine fills it and runs its jobs on every
 * shard through the pool (pool.h):
 *
 *   shard_job_sample the estimates of the threshold sample's keys that
 *                    lie in the shard's pages
 *   shard_job_scan   local coarse filter over the shard's pages of the
 *                    middle: hits, and the tail mass of its 64-token blocks
 *   shard_job_rank   local fine ranking and local top-K; the shards'
 *                    top-K lists meet in an all-gather (coll.h) and every
 *                    shard picks the same global top-K from them; the hits
 *                    outside it join the shard's block masses; each page's
 *                    mass goes to pmass
 *   shard_job_tail   each page's share of the tail value (block masses
 *                    times block mean values) into pacc
 *   shard_job_exact  each page's exact partial over [t0, t1) into ppart
 *
 * Everything a shard computes is per key, per block or per page, and the
 * engine folds pages in page order, so results do not depend on the
 * number of shards or on timing: with 1, 2 or 4 shards they are
 * bit-identical.  On GPU shards (gpu.h) the scan, the fine ranking and
 * the exact job run on the devices, and the all-gather goes through NCCL
 * where the GPU module has it.  The global top-K is exact: the top-K by (logit
 * descending, position ascending) of all hits equals that of the union of
 * the shards' local top-K lists.
 */
#ifndef DKV_SHARD_STEP_H
#define DKV_SHARD_STEP_H

#include "coll.h"
#include "gpu.h"
#include "krn.h"
#include "search.h"
#include "store.h"

/* One shard's scratch for a task. */
struct shard_rank {
	uint32_t *hit;      /* [g][hit_cap] hit positions, ascending */
	uint32_t *n_hit;    /* [g] hits counted (may exceed hit_cap) */
	uint32_t *n_keep;   /* [g] hits kept (set by the engine after the scan) */
	float *logit;       /* [g][hit_cap] exact logits of the hits */
	uint32_t *u_pos;    /* [g * hit_cap] union of the group's hits */
	uint32_t *u_map;    /* [g][hit_cap] union index of each hit */
	float *u_logit;     /* [g][g * hit_cap] */
	uint32_t *sel;      /* [hit_cap] select scratch */
	uint32_t *top;      /* [g][top_k] local top-K: indices into hit */
	void *rec;          /* this shard's all-gather record */
	void *recv;         /* shard_recv_bytes: [n_shards] records, merge room */
	struct shard_bufs bufs;
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
};

/* Groups of up to this many query heads fine-rank the union of their hits
 * (a shard_rank then needs u_pos, u_map and u_logit). */
#define SHARD_UNION_MAX 8u

/* Shards whose lists one merge takes (the size of its cursor array). */
#define SHARD_MERGE_MAX 4096u

/* Bytes of one shard's all-gather record for g heads and top_k. */
size_t shard_rec_bytes(uint32_t g, uint32_t top_k);
/* Bytes of a shard's recv: the gathered records and room to merge them. */
size_t shard_recv_bytes(uint32_t n_shards, uint32_t g, uint32_t top_k);

void shard_job_sample(void *task, uint32_t shard);
void shard_job_scan(void *task, uint32_t shard);
void shard_job_rank(void *task, uint32_t shard);
void shard_job_tail(void *task, uint32_t shard);
void shard_job_exact(void *task, uint32_t shard);

/* Pages of [t0, t1): first page and count (0 when empty). */
static inline uint64_t shard_pages_of(uint64_t t0, uint64_t t1, uint64_t *first)
{
	*first = t0 / SHARD_PAGE;
	return t1 > t0 ? (t1 - 1) / SHARD_PAGE + 1 - *first : 0;
}

#endif
