/*
 * gpu.h - GPU shards: the shard jobs of step.h on CUDA devices, through
 * the GPU module's table (kernels/krn_gpu.h).
 *
 * An engine whose spec is "gpu:LIST" opens one GPU shard per listed
 * device; pages are dealt round-robin as between CPU shards (page p on
 * shard p % n), and each shard runs its jobs on its own pool thread,
 * which selects its device first, so its kernels run on that thread's
 * own stream (the module uses per-thread default streams).
 *
 * Memory tiers (see also dashkv(7), GPU SHARDS):
 *  - device memory (cudaMalloc, never managed memory): the binary codes,
 *    norms and norm classes of each shard's pages, mirrored from the host
 *    store after every change, and the page tables;
 *  - pinned host memory, mapped into every device's address space: the
 *    store's pages themselves, keys and values included.  The engine's
 *    host-side work (sinks, window, the exact attention of the top-K,
 *    calibration, re-encoding after a model swap) reads keys and values
 *    from them, so a device copy would double the largest arrays; the
 *    device reads only the rows it needs across the bus: the candidates'
 *    keys in the fine ranking, the range of an exact-mode job.  At 128
 *    bits a key costs 21 bytes on the device against 512 bytes of bf16
 *    key and value at head dimension 128, so a context about 24 times
 *    longer fits on one device.
 *  - pinned staging buffers per shard for what crosses the bus each step:
 *    the query side in, hits, block masses, logits and partials out.
 *
 * The jobs on the device: the coarse scan (krn_gpu_ops.scan over the
 * shard's pages, hits converted to positions), the fine ranking of the
 * kept hits (fine), the all-gather of the top-K records (the NCCL
 * collective where the module has one, staged through device memory;
 * shared memory otherwise), and exact-mode partials (attend_range).  The
 * local top-K selection and the merge of the gathered lists run on the
 * host, as for CPU shards: a few thousand logits.  The threshold sample
 * (a few hundred codes) and the tail (block value sums, in host memory)
 * stay on the host.  A job whose device call fails returns nonzero and
 * the caller runs the host code instead (counted, see
 * shard_gpus_fallbacks); a failed all-gather cannot be redone and is
 * reported by shard_gpu_seq_check.
 */
#ifndef DKV_SHARD_GPU_H
#define DKV_SHARD_GPU_H

#include <stdint.h>

#include "coll.h"
#include "plan.h"
#include "store.h"
#include "topo.h"

struct shard_dev_ops;
struct shard_gpus;      /* an engine's GPU shards */
struct shard_gpu_seq;   /* one sequence's state on them */
struct shard_gpu_layer; /* one layer's device mirror */

/*
 * Open the GPU shards of spec ("gpu:all" or "gpu:LIST"): load the GPU
 * module, make the plan (*plan; NULL when hwloc sees no GPU, as without
 * its CUDA and NVML plugins: LIST then names CUDA devices and the shards'
 * threads stay unbound), and the NCCL collective where there is one.
 * DKV_E_UNSUPPORTED without a module or device, DKV_E_INVAL for a bad
 * list; err says why.
 */
int shard_gpus_open(struct shard_gpus **out, const struct shard_topo *t, const char *spec,
		    struct shard_plan **plan, char *err);
void shard_gpus_close(struct shard_gpus *g);
uint32_t shard_gpus_count(const struct shard_gpus *g);
/* "cuda 2 shards on devices 0,1, all-gather nccl" */
void shard_gpus_describe(const struct shard_gpus *g, char *buf, size_t len);
/* Jobs run on the host after a device error, and the last error (last:
 * KRN_MSGLEN bytes, may be NULL). */
uint64_t shard_gpus_fallbacks(const struct shard_gpus *g, char *last);

/*
 * A sequence's state: sets geom's page allocator to pinned, mapped host
 * memory, and keeps a device mirror of each layer.  g is the group's
 * query heads and top_k the sequence's (all-gather buffers).
 */
int shard_gpu_seq_new(struct shard_gpu_seq **out, struct shard_gpus *gs,
		      struct shard_geom *geom, uint32_t n_layers, uint32_t g, uint32_t top_k,
		      char *err);
void shard_gpu_seq_free(struct shard_gpu_seq *s);
struct shard_gpu_layer *shard_gpu_layer(struct shard_gpu_seq *s, uint32_t layer);
/* DKV_OK, or DKV_E_INTERNAL with a message when an all-gather failed since
 * the last call (the step's outputs are not valid). */
int shard_gpu_seq_check(struct shard_gpu_seq *s, char *err);

/* Device pages for every page of l (call after shard_layer_reserve). */
int shard_gpu_reserve(struct shard_gpu_layer *gl, const struct shard_layer *l, char *err);
/* Head h's codes, norms or classes changed from token t0 on (NULL: no-op). */
void shard_gpu_dirty(struct shard_gpu_layer *gl, uint32_t h, uint64_t t0);

/* The jobs' device parts (task.h) on the task's gpu: a task's dev. */
extern const struct shard_dev_ops shard_gpu_dev_ops;

#endif
