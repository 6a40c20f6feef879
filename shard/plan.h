/*
 * plan.h - the placement plan: which shards a sequence's key store is split
 * into, and where each one runs.
 *
 * A spec selects the plan (the engine passes getenv("DASHKV_SHARDS")):
 *
 *   NULL, "" or "auto"  one shard per NVIDIA GPU when the caller allows GPUs
 *                       and the machine has some; otherwise one CPU shard per
 *                       NUMA node that has CPUs
 *   "cpu:N"             N CPU shards dealt round-robin over the NUMA nodes
 *                       with CPUs; a node holding k of them splits its cores
 *                       into k disjoint parts differing by at most one core
 *                       (by PUs when k exceeds its cores; with more shards
 *                       than PUs, the shards share PUs round-robin)
 *   "gpu:LIST"          one shard per listed GPU ("all", or indices and
 *                       ranges "0,2-3" in the numbering of topo.h), on the
 *                       GPU's local NUMA node; the GPU shards of one node
 *                       split its cores the same way, or share its PUs
 *                       round-robin when there are more GPUs than PUs
 *
 * Every shard's cpuset lies inside its NUMA node's, and its host memory
 * comes from that node.  A plan points at its topology, which must outlive
 * it.
 */
#ifndef DKV_SHARD_PLAN_H
#define DKV_SHARD_PLAN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <hwloc.h>

#include "topo.h"

#define SHARD_PLAN_MAX 4096u   /* shards in one plan */

/* Flags of shard_plan_make_flags(). */
#define SHARD_PLAN_GPUS 0x1u   /* "auto" may choose GPU shards */

enum shard_kind {
	SHARD_CPU,
	SHARD_GPU,
};

struct shard_place {
	enum shard_kind kind;
	int device;             /* GPU number (topo.h), -1 for a CPU shard */
	unsigned numa;          /* OS index of the shard's NUMA node */
	int numa_idx;           /* the same node as an index in topo->numa */
	hwloc_bitmap_t cpuset;  /* where its worker threads run */
};

struct shard_plan {
	const struct shard_topo *topo;
	unsigned n;
	struct shard_place *shards;
	unsigned n_cpu, n_gpu;
	unsigned n_nodes;       /* distinct NUMA nodes used */
	int shared_cpus;        /* some shards share PUs (more than PUs) */
};

/* Make the plan for spec with GPUs excluded from "auto" (until the engine
 * has CUDA).  Returns 0 and sets *out, or -1 with a message in err. */
int shard_plan_make(const struct shard_topo *t, const char *spec,
		    struct shard_plan **out, char *err);
int shard_plan_make_flags(const struct shard_topo *t, const char *spec,
			  unsigned flags, struct shard_plan **out, char *err);
void shard_plan_free(struct shard_plan *p);

/* One line per shard, "shard <i> <cpu|gpu> device=<n|-> numa=<node>
 * cpus=<hwloc list>", then one summary line starting "plan: ". */
void shard_plan_print(const struct shard_plan *p, FILE *f);

/*
 * Bind the calling thread to the shard's cpuset, or to the part of it that
 * exists here.  When the thread does not end up on exactly that cpuset (a
 * plan made from another machine's topology, CPUs absent here) err says
 * so: 0 when it is bound to the CPUs present, -1 when it keeps running
 * unbound.  Prints nothing: the library leaves that to its caller.
 */
int shard_plan_bind_thread(const struct shard_plan *p, uint32_t shard, char *err);

/* Page-aligned memory preferring NUMA node numa_node (OS index), or plain
 * memory when libnuma is unavailable or the node is absent here.  Free with
 * shard_numa_free() and the same size.  NULL on failure or bytes == 0. */
void *shard_numa_alloc(size_t bytes, int numa_node);
/* Ask that the not yet touched pages of [p, p + bytes) come from the node
 * (a preference, not a bind); nothing when the node is not usable here. */
void shard_numa_prefer(void *p, size_t bytes, int numa_node);
void shard_numa_free(void *p, size_t bytes);

#endif
