/*
 * coll_nccl.c - the NCCL backend of the shard collective (coll.h).
 *
 * Built into the GPU module only (with --with-nccl), so neither the client
 * library nor the daemon link libnccl; shard_coll_new reaches it through
 * the constructor the module exports (shard_coll_set_nccl).  One process
 * drives every device: ncclCommInitAll makes one communicator per rank;
 * each rank's thread issues its all-gather on its own per-thread stream
 * inside a group call and waits for it, so the call returns with recv
 * complete, as the shared-memory backend does.
 */
#include <stdlib.h>

#include <cuda_runtime.h>
/* nccl.h declares some functions without prototypes */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nccl.h>
#pragma GCC diagnostic pop

#include "config.h"
#include "coll.h"
#include "cu.h"
#include "dashkv.h"

struct nccl_state {
	ncclComm_t *comms;
	int *devices;
};

static int nccl_allgather(struct shard_coll *c, int rank, const void *send, void *recv,
			  size_t bytes)
{
	struct nccl_state *st = c->impl;
	ncclResult_t r;

	if (cudaSetDevice(st->devices[rank]) != cudaSuccess)
		return DKV_E_INTERNAL;
	r = ncclGroupStart();
	if (r == ncclSuccess)
		r = ncclAllGather(send, recv, bytes, ncclUint8, st->comms[rank],
				  cudaStreamPerThread);
	ncclResult_t e = ncclGroupEnd();
	if (r == ncclSuccess)
		r = e;
	if (r != ncclSuccess)
		return DKV_E_INTERNAL;
	if (cudaStreamSynchronize(cudaStreamPerThread) != cudaSuccess)
		return DKV_E_INTERNAL;
	return DKV_OK;
}

/* The backend owns the handle: free releases the communicators and it. */
static void nccl_free(struct shard_coll *c)
{
	struct nccl_state *st = c->impl;

	for (int i = 0; i < c->nranks; i++)
		if (st->comms[i])
			ncclCommDestroy(st->comms[i]);
	free(st->comms);
	free(st->devices);
	free(st);
	free(c);
}

static const struct shard_coll_ops nccl_ops = { "nccl", nccl_allgather, nccl_free };

/* Every device named must exist. */
static int check_devices(int nranks, const int *devices, char *err)
{
	int ndev = 0;
	cudaError_t e = cudaGetDeviceCount(&ndev);

	if (e != cudaSuccess || ndev == 0) {
		cudaGetLastError();
		return krn_msgf(err, DKV_E_UNSUPPORTED, "NCCL collective: no CUDA device: %s",
				e != cudaSuccess ? cudaGetErrorString(e) : "none found");
	}
	for (int i = 0; i < nranks; i++)
		if (devices[i] < 0 || devices[i] >= ndev)
			return krn_msgf(err, DKV_E_INVAL, "NCCL collective: bad device: "
					"rank %d names device %d of %d", i, devices[i], ndev);
	return DKV_OK;
}

int cu_coll_nccl_new(struct shard_coll **out, int nranks, const int *devices, char *err)
{
	struct shard_coll *c;
	struct nccl_state *st;
	ncclResult_t r;
	int rc;

	if (nranks < 1 || !devices)
		return krn_msgf(err, DKV_E_INVAL,
				"NCCL collective: bad arguments: ranks and devices needed");
	rc = check_devices(nranks, devices, err);
	if (rc)
		return rc;
	c = calloc(1, sizeof(*c));
	st = calloc(1, sizeof(*st));
	if (!c || !st)
		goto free_handles;
	st->comms = calloc((size_t)nranks, sizeof(*st->comms));
	st->devices = malloc((size_t)nranks * sizeof(*st->devices));
	if (!st->comms || !st->devices)
		goto free_arrays;
	for (int i = 0; i < nranks; i++)
		st->devices[i] = devices[i];
	r = ncclCommInitAll(st->comms, nranks, devices);
	if (r != ncclSuccess) {
		rc = krn_msgf(err, DKV_E_INTERNAL, "NCCL collective: ncclCommInitAll: %s",
			      ncclGetErrorString(r));
		free(st->comms);
		free(st->devices);
		free(st);
		free(c);
		return rc;
	}
	c->ops = &nccl_ops;
	c->nranks = nranks;
	c->impl = st;
	*out = c;
	return DKV_OK;

free_arrays:
	free(st->comms);
	free(st->devices);
free_handles:
	free(st);
	free(c);
	return krn_msgf(err, DKV_E_NOMEM, "NCCL collective: out of memory: communicator state");
}
