/*
 * pool.h - the worker threads of a sequence's shards.
 *
 * One pool serves one engine: shard 0's work runs on the calling thread,
 * shards 1..n-1 on worker threads bound to their plan's cpusets.  A run
 * hands every shard the same job and returns when all have finished; runs
 * of concurrent callers take turns.  Every shard of a run runs at the same
 * time, so jobs may meet in the pool's collective (coll.h).
 */
#ifndef DKV_SHARD_POOL_H
#define DKV_SHARD_POOL_H

#include <stdint.h>

#include "coll.h"
#include "plan.h"

struct shard_pool;

typedef void (*shard_job_fn)(void *arg, uint32_t shard);

/*
 * A pool of n shards; plan (may be NULL: threads stay unbound) places
 * shard i's thread.  Returns DKV_OK or a DKV_E_* code with err, once
 * every worker has tried its binding.
 */
int shard_pool_new(struct shard_pool **out, uint32_t n, const struct shard_plan *plan,
		   char *err);
void shard_pool_free(struct shard_pool *p);
uint32_t shard_pool_size(const struct shard_pool *p);
/*
 * Workers whose thread is not bound to its whole cpuset (plan.h), and in
 * msg (KRN_MSGLEN bytes, may be NULL; written only when there are any)
 * why, for the lowest shard of them.
 */
uint32_t shard_pool_unbound(const struct shard_pool *p, char *msg);
struct shard_coll *shard_pool_coll(struct shard_pool *p);

/* fn(arg, i) for every shard i at once; returns when all are done. */
void shard_pool_run(struct shard_pool *p, shard_job_fn fn, void *arg);

#endif
