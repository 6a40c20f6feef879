/*
 * coll.h - the collective through which a sequence's shards merge their
 * results.
 *
 * Ranks are the shards of one step.  The only primitive is an all-gather
 * of a fixed number of bytes per rank: every rank contributes `bytes` and
 * receives nranks * bytes in rank order, so every rank can run the same
 * merge and reach the same answer (the global top-K, the log-sum-exp of
 * the partials) in the same fixed order, whatever the timing.
 *
 * Backends:
 *   SHARD_COLL_SHM   ranks are threads of this process; buffers are host
 *                    memory; the gather is a copy between two barriers.
 *   SHARD_COLL_NCCL  ranks are CUDA devices (one process, ncclCommInitAll);
 *                    buffers are the rank's device memory.  Reached through
 *                    the GPU module; DKV_E_UNSUPPORTED where the build has no
 *                    NCCL or the machine no GPU.
 *
 * Every rank calls shard_coll_allgather from its own thread; a call
 * returns once every rank has contributed.  One collective runs at a time.
 */
#ifndef DKV_SHARD_COLL_H
#define DKV_SHARD_COLL_H

#include <stddef.h>

#include "msg.h"

enum { SHARD_COLL_SHM, SHARD_COLL_NCCL };

struct shard_coll;

/* What a backend provides. */
struct shard_coll_ops {
	const char *name;
	int (*allgather)(struct shard_coll *c, int rank, const void *send,
			 void *recv, size_t bytes);
	void (*free)(struct shard_coll *c);
};

struct shard_coll {
	const struct shard_coll_ops *ops;
	int nranks;
	void *impl;  /* the backend's state */
};

/*
 * A communicator over nranks ranks of the given kind; devices[i] is rank
 * i's CUDA device (NCCL only, NULL otherwise).  Returns DKV_OK, or a DKV_E_*
 * code with a message in err.
 */
int shard_coll_new(struct shard_coll **out, int kind, int nranks,
		   const int *devices, char *err);
void shard_coll_free(struct shard_coll *c);
int shard_coll_nranks(const struct shard_coll *c);
const char *shard_coll_name(const struct shard_coll *c);

/* recv[r * bytes .. (r + 1) * bytes) = rank r's send, for every rank. */
int shard_coll_allgather(struct shard_coll *c, int rank, const void *send,
			 void *recv, size_t bytes);

/*
 * The NCCL backend's constructor, provided by the GPU module when it is
 * built with NCCL (see kernels/cuda); NULL otherwise.
 */
typedef int (*shard_coll_nccl_ctor)(struct shard_coll **out, int nranks,
				    const int *devices, char *err);
void shard_coll_set_nccl(shard_coll_nccl_ctor ctor);

#endif
