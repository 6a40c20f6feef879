/*
 * topo.h - the machine as the placement plan sees it: NUMA nodes with their
 * CPUs and NVIDIA GPUs with their NUMA locality, discovered by hwloc.
 *
 * The topology is the running machine by default, or an hwloc XML export,
 * or an hwloc synthetic description ("pack:2 numa:2 core:8 pu:2").
 *
 * NUMA nodes: every node hwloc reports, in logical order.  Only nodes that
 * own CPUs host shards (has_cpus).  A node is memory-only when hwloc tags it
 * with a memory subtype other than DRAM (GPUMemory, MCDRAM, HBM, NVM, ...)
 * or when an earlier node already owns the same CPUs: in hwloc 2 a CPU-less
 * node inherits the cpuset of the object it is attached to, so the cpuset
 * alone does not tell.
 *
 * GPUs: NVIDIA devices only, found as CUDA or NVML OS devices.  A PCI device
 * with both a cudaN and an nvmlN OS device is one GPU.  GPUs are numbered
 * in order of discovery: hwloc's OS-device order, which follows the PCI
 * tree (so numbering is by PCI bus, not by CUDA's default "fastest first"
 * order; map a GPU to a CUDA device by its busid).  Other GPUs and
 * coprocessors (AMD rsmi, OpenCL-only, display cards) are ignored with a
 * note, one per PCI device.
 */
#ifndef DKV_SHARD_TOPO_H
#define DKV_SHARD_TOPO_H

#include <stddef.h>
#include <hwloc.h>

#include "msg.h"

struct shard_numa {
	unsigned logical;       /* hwloc logical index */
	unsigned os;            /* OS index: the node number libnuma uses */
	int has_cpus;           /* owns CPUs: may host shards and their memory */
	hwloc_bitmap_t cpuset;  /* the node's PUs; empty when !has_cpus */
	hwloc_obj_t obj;
};

struct shard_gpu {
	int cuda;               /* N of its cudaN OS device, or -1 */
	int nvml;               /* N of its nvmlN OS device, or -1 */
	char busid[32];         /* PCI "dddd:bb:dd.f", "" when not on PCI */
	char model[64];         /* GPUModel info, "" if unknown */
	int numa;               /* index in shard_topo.numa of its local node */
	hwloc_obj_t obj;        /* the PCI device, or the OS device */
};

struct shard_topo {
	hwloc_topology_t topo;
	int this_system;        /* binding and libnuma apply to it */
	unsigned n_numa;
	struct shard_numa *numa;
	unsigned n_cpu_numa;    /* nodes with has_cpus */
	unsigned n_gpus;
	struct shard_gpu *gpus; /* index = GPU number in plans */
	unsigned n_ignored;     /* GPU-like devices ignored */
	unsigned n_notes;
	char **notes;           /* what was ignored, and why */
};

/*
 * Load a topology: the XML file xml_path, or the synthetic description
 * synthetic, or this machine when both are NULL (giving both is an error).
 * Returns 0 and sets *out, or -1 with a message in err.
 */
int shard_topo_load(struct shard_topo **out, const char *xml_path,
		    const char *synthetic, char *err);
void shard_topo_free(struct shard_topo *t);

/* Index in t->numa of the node with this OS index, or -1. */
int shard_topo_numa_by_os(const struct shard_topo *t, unsigned os);

#endif
