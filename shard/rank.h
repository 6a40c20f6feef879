/*
 * rank.h - the layout of one shard's scratch for a task (struct
 * shard_rank, task.h): what each buffer holds and how big it is follows
 * from the task's shape, so the shard lays it out; the caller gives the
 * memory, from one allocation of its own.
 */
#ifndef DKV_SHARD_RANK_H
#define DKV_SHARD_RANK_H

#include <stddef.h>
#include <stdint.h>

#include "task.h"

/* The shape of the tasks a shard_rank serves. */
struct shard_rank_dims {
	uint32_t n_shards; /* shards whose records the all-gather brings */
	uint32_t g;        /* query heads of a group */
	uint32_t hit_cap;  /* hits kept per query head */
	uint32_t top_k;
	uint32_t dim;      /* head_dim */
};

/* Bytes of one shard_rank's buffers: a multiple of 64. */
size_t shard_rank_bytes(const struct shard_rank_dims *d);
/*
 * Point rk's buffers into mem (64-byte aligned, shard_rank_bytes long);
 * each buffer starts on a 64-byte boundary.
 */
void shard_rank_place(struct shard_rank *rk, void *mem, const struct shard_rank_dims *d);

#endif
