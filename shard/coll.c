/*
 * coll.c - the collective interface (see coll.h) and its shared-memory
 * backend.
 *
 * The shm all-gather: every rank copies its contribution into a staging
 * area at its rank's offset, waits at a barrier, copies the whole staging
 * area out, and waits at a second barrier so that nobody overwrites the
 * staging area of a gather still being read.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "dashkv.h"

struct shm_state {
	pthread_barrier_t bar;
	pthread_mutex_t lock;
	void *stage;
	size_t cap;   /* bytes of stage per rank */
};

static shard_coll_nccl_ctor nccl_ctor;

/* Grow the staging area (rank 0, between the barriers of no gather). */
static int shm_stage(struct shm_state *st, int nranks, size_t bytes)
{
	void *p;

	if (bytes <= st->cap)
		return 0;
	p = realloc(st->stage, bytes * (size_t)nranks);
	if (!p)
		return -1;
	st->stage = p;
	st->cap = bytes;
	return 0;
}

static int shm_allgather(struct shard_coll *c, int rank, const void *send,
			 void *recv, size_t bytes)
{
	struct shm_state *st = c->impl;
	int rc = 0;

	if (c->nranks == 1) {
		memmove(recv, send, bytes);
		return DKV_OK;
	}
	/* everyone sizes the stage under the lock: the largest request wins */
	pthread_mutex_lock(&st->lock);
	if (shm_stage(st, c->nranks, bytes))
		rc = -1;
	pthread_mutex_unlock(&st->lock);
	pthread_barrier_wait(&st->bar);
	if (!rc)
		memcpy((char *)st->stage + (size_t)rank * bytes, send, bytes);
	pthread_barrier_wait(&st->bar);
	if (!rc)
		memcpy(recv, st->stage, bytes * (size_t)c->nranks);
	pthread_barrier_wait(&st->bar);
	return rc ? DKV_E_NOMEM : DKV_OK;
}

static void shm_free(struct shard_coll *c)
{
	struct shm_state *st = c->impl;

	pthread_barrier_destroy(&st->bar);
	pthread_mutex_destroy(&st->lock);
	free(st->stage);
	free(st);
	free(c);
}

static const struct shard_coll_ops shm_ops = { "shm", shm_allgather, shm_free };

static int shm_new(struct shard_coll **out, int nranks, char *err)
{
	struct shard_coll *c = calloc(1, sizeof(*c));
	struct shm_state *st = calloc(1, sizeof(*st));

	if (!c || !st) {
		free(c);
		free(st);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for a collective");
	}
	if (pthread_barrier_init(&st->bar, NULL, (unsigned)nranks)) {
		free(c);
		free(st);
		return krn_msgf(err, DKV_E_NOMEM, "cannot make a barrier of %d ranks", nranks);
	}
	pthread_mutex_init(&st->lock, NULL);
	c->ops = &shm_ops;
	c->nranks = nranks;
	c->impl = st;
	*out = c;
	return DKV_OK;
}

void shard_coll_set_nccl(shard_coll_nccl_ctor ctor)
{
	nccl_ctor = ctor;
}

int shard_coll_new(struct shard_coll **out, int kind, int nranks,
		   const int *devices, char *err)
{
	if (nranks < 1 || nranks > 4096)
		return krn_msgf(err, DKV_E_INVAL, "a collective needs 1 to 4096 ranks, not %d",
				nranks);
	switch (kind) {
	case SHARD_COLL_SHM:
		return shm_new(out, nranks, err);
	case SHARD_COLL_NCCL:
		if (!devices)
			return krn_msgf(err, DKV_E_INVAL, "an NCCL collective needs its devices");
		if (!nccl_ctor)
			return krn_msgf(err, DKV_E_UNSUPPORTED,
					"NCCL collective unavailable: no GPU module with NCCL is loaded");
		return nccl_ctor(out, nranks, devices, err);
	}
	return krn_msgf(err, DKV_E_INVAL, "unknown collective kind %d", kind);
}

void shard_coll_free(struct shard_coll *c)
{
	if (c)
		c->ops->free(c);
}

int shard_coll_nranks(const struct shard_coll *c)
{
	return c->nranks;
}

const char *shard_coll_name(const struct shard_coll *c)
{
	return c->ops->name;
}

int shard_coll_allgather(struct shard_coll *c, int rank, const void *send,
			 void *recv, size_t bytes)
{
	if (rank < 0 || rank >= c->nranks)
		return DKV_E_INVAL;
	return c->ops->allgather(c, rank, send, recv, bytes);
}
