/*
 * gpu_int.h - what the GPU shard files share: the engine's shards
 * (gpu.c), a sequence's state on them with each layer's device mirror
 * (gpu_mirror.c), and each shard's scratch for the jobs (gpu_jobs.c).
 */
#ifndef DKV_SHARD_GPU_INT_H
#define DKV_SHARD_GPU_INT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "coll.h"
#include "gpu.h"
#include "krn_gpu.h"
#include "store.h"

#define SHARD_PAGE_SHIFT 12u
_Static_assert(SHARD_PAGE == 1u << SHARD_PAGE_SHIFT, "SHARD_PAGE_SHIFT follows SHARD_PAGE");

/* The five page tables of a shard's layer, per head. */
enum { TAB_CODES, TAB_NORMS, TAB_CLS, TAB_K, TAB_V, N_TABS };

struct shard_gpus {
	const struct krn_gpu_ops *ops;
	uint32_t n;
	int *dev;                 /* [n] CUDA device of each shard */
	struct shard_coll *nccl;  /* NULL: the all-gather uses shared memory */
	char coll_note[KRN_MSGLEN];
	pthread_mutex_t lock;
	uint64_t fallbacks;
	char last[KRN_MSGLEN];
};

/* A buffer grown on demand: device memory or pinned host memory. */
struct gbuf {
	void *p;
	size_t cap;
};

/* One shard's scratch for a sequence. */
struct gwork {
	struct gbuf q;      /* device: the query side */
	struct gbuf hits;   /* device: n_hit [g], hit [g][hc], cnt [g], logit [g][hc] */
	struct gbuf blk;    /* device: block masses */
	struct gbuf ws;     /* device: scan workspace */
	struct gbuf part;   /* device: exact partials */
	struct gbuf stage;  /* pinned host: everything that crosses the bus */
	void *send, *recv;  /* device: the all-gather's records */
	int hits_ok;        /* hits holds the scan of the current task */
};

/* Shard r's mirror of a layer: its pages in local order (page lp * n + r). */
struct gpart {
	uint32_t n_local, cap;
	void **dpage;       /* [cap] device memory of each page */
	const void **tab;   /* [N_TABS][heads][cap] page pointers (host copy) */
	void *dtab;         /* the same on the device */
	int stale;          /* dtab lags tab */
	uint64_t *clean;    /* [heads] tokens mirrored from the host store */
};

struct shard_gpu_layer {
	struct shard_gpu_seq *seq;
	uint32_t n_pages;   /* pages of the layer with a device page */
	struct gpart *part; /* [n] */
};

struct shard_gpu_seq {
	struct shard_gpus *gs;
	const struct shard_geom *geom;
	uint32_t n_layers, g, top_k;
	struct shard_gpu_layer *layers;
	struct gwork *work; /* [n] */
	pthread_mutex_t lock;
	int gather_failed;
	char gather_err[KRN_MSGLEN];
};

/*
 * Mirror head h's codes, norms and classes of shard r's pages of l on the
 * device, from the first token changed since the last call.  Shard r's
 * device is selected.
 */
int shard_gpu_flush(struct shard_gpu_layer *gl, uint32_t r, const struct shard_layer *l,
		    uint32_t h, char *err);

#endif
