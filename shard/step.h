/*
 * step.h - one kv head group's search, split over a sequence's shards.
 *
 * Pages are dealt round-robin (shard_page_owner, store.h).  A
 * task describes the search of one group of query heads (one kv head) at
 * one query position; the engine fills it and runs its jobs on every
 * shard through the pool (pool.h):
 *
 *   shard_job_sample the estimates of the threshold sample's keys that
 *                    lie in the shard's pages
 *   shard_job_scan   local coarse filter over the shard's pages of the
 *                    middle: hits, and the tail mass of its 64-token blocks
 *   shard_job_sketch the sketch scores of the hits the scan kept (the
 *                    pool), from which the engine places a cut that
 *                    passes `candidates` of them over all shards
 *   shard_job_rank   the cut (the rest of the pool joins the tail with
 *                    its sketch scores), local fine ranking and local top-K; the shards'
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
 * where the GPU module has it: the task's dev (task.h) runs those parts.
 * The global top-K is exact: the top-K by (logit descending, position
 * ascending) of all hits equals that of the union of the shards' local
 * top-K lists.
 */
#ifndef DKV_SHARD_STEP_H
#define DKV_SHARD_STEP_H

#include "coll.h"
#include "krn.h"
#include "search.h"
#include "store.h"
#include "task.h"

void shard_job_sample(void *task, uint32_t shard);
void shard_job_scan(void *task, uint32_t shard);
void shard_job_sketch(void *task, uint32_t shard);
void shard_job_rank(void *task, uint32_t shard);
void shard_job_tail(void *task, uint32_t shard);
void shard_job_exact(void *task, uint32_t shard);

#endif
