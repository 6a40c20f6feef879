/*
 * check_topo.c - topology discovery and placement plans against recorded
 * real machines (the XML files of ../shared/data/topologies), hwloc synthetic
 * topologies and this machine: every shard inside its NUMA node, GPU shards
 * on the GPU's local node, balanced, nothing overlapping; bad specs refused.
 *
 * Exit 77 (skip) when the topology data is missing and everything else
 * passed.
 */
#include <check.h>
#include <dirent.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dashkv.h"
#include "plan.h"
#include "pool.h"
#include "topo.h"

#define MAX_XML 64

static char data_dir[4096];
static char *xml_files[MAX_XML];
static int n_xml;

static const char *const synthetics[] = {
	"pack:2 numa:2 core:8 pu:2",
	"pack:1 numa:8 core:4 pu:1",
	"pack:4 numa:2 core:6 pu:2",
	"numa:1 core:2 pu:1",
};
#define N_SYNTH ((int)(sizeof(synthetics) / sizeof(synthetics[0])))

static const unsigned cpu_counts[] = { 1, 2, 3, 4, 8, 16 };
#define N_COUNTS (sizeof(cpu_counts) / sizeof(cpu_counts[0]))

/* ---- loading ---- */

static struct shard_topo *load_xml(const char *name)
{
	struct shard_topo *t = NULL;
	char path[8192], err[256] = "";

	snprintf(path, sizeof(path), "%s/%s", data_dir, name);
	ck_assert_msg(shard_topo_load(&t, path, NULL, err) == 0,
		      "%s: %s", name, err);
	return t;
}

static struct shard_topo *load_synth(const char *desc)
{
	struct shard_topo *t = NULL;
	char err[256] = "";

	ck_assert_msg(shard_topo_load(&t, NULL, desc, err) == 0,
		      "%s: %s", desc, err);
	return t;
}

static struct shard_plan *make(const struct shard_topo *t, const char *spec,
			       unsigned flags)
{
	struct shard_plan *p = NULL;
	char err[256] = "";

	ck_assert_msg(shard_plan_make_flags(t, spec, flags, &p, err) == 0,
		      "%s: %s", spec ? spec : "auto", err);
	ck_assert_ptr_nonnull(p);
	return p;
}

/* ---- invariants ---- */

static int pus_of(hwloc_const_bitmap_t set)
{
	return hwloc_bitmap_weight(set);
}

/* Size of a shard in cores when it holds whole cores only, else -1. */
static int whole_cores(const struct shard_topo *t, hwloc_const_bitmap_t set)
{
	int n = hwloc_get_nbobjs_inside_cpuset_by_type(t->topo, set, HWLOC_OBJ_CORE);
	hwloc_bitmap_t u = hwloc_bitmap_alloc();
	int whole;

	for (int i = 0; i < n; i++)
		hwloc_bitmap_or(u, u, hwloc_get_obj_inside_cpuset_by_type(t->topo,
				set, HWLOC_OBJ_CORE, i)->cpuset);
	whole = n > 0 && hwloc_bitmap_isequal(u, set);
	hwloc_bitmap_free(u);
	return whole ? n : -1;
}

static void check_shard(const struct shard_topo *t, const struct shard_place *s,
			const char *what, unsigned i)
{
	const struct shard_numa *node;

	ck_assert_msg(s->numa_idx >= 0 && (unsigned)s->numa_idx < t->n_numa,
		      "%s shard %u: bad node", what, i);
	node = &t->numa[s->numa_idx];
	ck_assert_uint_eq(node->os, s->numa);
	ck_assert_msg(node->has_cpus, "%s shard %u: memory node %u has no CPUs",
		      what, i, s->numa);
	ck_assert_msg(!hwloc_bitmap_iszero(s->cpuset), "%s shard %u: no CPUs",
		      what, i);
	ck_assert_msg(hwloc_bitmap_isincluded(s->cpuset, node->cpuset),
		      "%s shard %u: CPUs outside NUMA node %u", what, i, s->numa);
	ck_assert_msg(hwloc_bitmap_isincluded(s->cpuset, node->obj->cpuset),
		      "%s shard %u: CPUs outside hwloc's node %u", what, i, s->numa);
	if (s->kind == SHARD_CPU)
		ck_assert_int_eq(s->device, -1);
	else
		ck_assert_msg(s->device >= 0 && (unsigned)s->device < t->n_gpus,
			      "%s shard %u: bad device %d", what, i, s->device);
}

/* More shards on the node than PUs: they share PUs (GPU shards only). */
static int oversubscribed(const struct shard_topo *t, const struct shard_plan *p,
			  int node)
{
	unsigned k = 0;

	for (unsigned i = 0; i < p->n; i++)
		k += p->shards[i].numa_idx == node;
	return k > (unsigned)pus_of(t->numa[node].cpuset);
}

static void check_no_overlap(const struct shard_topo *t,
			     const struct shard_plan *p, const char *what)
{
	for (unsigned i = 0; i < p->n; i++)
		for (unsigned j = i + 1; j < p->n; j++) {
			const struct shard_place *a = &p->shards[i], *b = &p->shards[j];

			if (a->numa_idx == b->numa_idx &&
			    oversubscribed(t, p, a->numa_idx)) {
				ck_assert_msg(p->shared_cpus,
					      "%s: node %u oversubscribed", what, a->numa);
				continue;
			}
			ck_assert_msg(!hwloc_bitmap_intersects(a->cpuset, b->cpuset),
				      "%s: shards %u and %u overlap", what, i, j);
		}
}

/* Shards of one node differ by at most one core (or one PU when split by
 * PUs); when they do not share, together they use every PU of the node. */
static void check_node_balance(const struct shard_topo *t,
			       const struct shard_plan *p, int node,
			       const char *what)
{
	int min_c = 1 << 30, max_c = -1, min_p = 1 << 30, max_p = -1, split = 0;
	hwloc_bitmap_t u = hwloc_bitmap_alloc();
	unsigned k = 0;

	for (unsigned i = 0; i < p->n; i++) {
		const struct shard_place *s = &p->shards[i];
		int c, n;

		if (s->numa_idx != node)
			continue;
		k++;
		c = whole_cores(t, s->cpuset);
		n = pus_of(s->cpuset);
		split |= c < 0;
		min_c = c < min_c ? c : min_c;
		max_c = c > max_c ? c : max_c;
		min_p = n < min_p ? n : min_p;
		max_p = n > max_p ? n : max_p;
		hwloc_bitmap_or(u, u, s->cpuset);
	}
	if (k && !split)
		ck_assert_msg(max_c - min_c <= 1, "%s: node %u: %d to %d cores",
			      what, t->numa[node].os, min_c, max_c);
	if (k && split)
		ck_assert_msg(max_p - min_p <= 1, "%s: node %u: %d to %d PUs",
			      what, t->numa[node].os, min_p, max_p);
	if (k)
		ck_assert_msg(hwloc_bitmap_isequal(u, t->numa[node].cpuset),
			      "%s: node %u: PUs left out", what, t->numa[node].os);
	if (k && oversubscribed(t, p, node))
		ck_assert_int_eq(max_p, 1);
	hwloc_bitmap_free(u);
}

/* CPU shards go round-robin over the nodes with CPUs. */
static void check_round_robin(const struct shard_topo *t,
			      const struct shard_plan *p, const char *what)
{
	unsigned h = 0, min = ~0u, max = 0;

	for (unsigned i = 0; i < t->n_numa; i++) {
		unsigned c = 0;

		if (!t->numa[i].has_cpus)
			continue;
		for (unsigned j = 0; j < p->n; j++) {
			c += p->shards[j].numa_idx == (int)i;
			if (j % t->n_cpu_numa == h)
				ck_assert_int_eq(p->shards[j].numa_idx, (int)i);
		}
		min = c < min ? c : min;
		max = c > max ? c : max;
		h++;
	}
	ck_assert_msg(max - min <= 1, "%s: %u to %u shards per node", what, min, max);
}

/* The GPU's locality, found again from its PCI bus id. */
static void check_gpu_local(const struct shard_topo *t,
			    const struct shard_place *s, const char *what)
{
	const struct shard_gpu *g = &t->gpus[s->device];
	hwloc_obj_t dev, anc;

	ck_assert_int_eq(g->numa, s->numa_idx);
	if (!g->busid[0])
		return;
	dev = hwloc_get_pcidev_by_busidstring(t->topo, g->busid);
	ck_assert_msg(dev != NULL, "%s: GPU %d: no PCI device %s", what,
		      s->device, g->busid);
	anc = hwloc_get_non_io_ancestor_obj(t->topo, dev);
	ck_assert_msg(hwloc_bitmap_isset(anc->nodeset, s->numa),
		      "%s: GPU %d on node %u, not local to it", what, s->device,
		      s->numa);
}

static void check_plan(const struct shard_topo *t, const struct shard_plan *p,
		       const char *what)
{
	unsigned cpu = 0, gpu = 0;

	ck_assert_ptr_eq(p->topo, t);
	ck_assert_uint_gt(p->n, 0);
	for (unsigned i = 0; i < p->n; i++) {
		check_shard(t, &p->shards[i], what, i);
		cpu += p->shards[i].kind == SHARD_CPU;
		gpu += p->shards[i].kind == SHARD_GPU;
		if (p->shards[i].kind == SHARD_GPU)
			check_gpu_local(t, &p->shards[i], what);
	}
	ck_assert_uint_eq(cpu, p->n_cpu);
	ck_assert_uint_eq(gpu, p->n_gpu);
	ck_assert_msg(!cpu || !gpu, "%s: mixed plan", what);
	check_no_overlap(t, p, what);
	for (unsigned i = 0; i < t->n_numa; i++)
		check_node_balance(t, p, (int)i, what);
	if (cpu)
		check_round_robin(t, p, what);
}

/* Would cpu:n fit: no node given more shards than it has PUs? */
static int cpu_feasible(const struct shard_topo *t, unsigned n)
{
	unsigned h = 0;

	for (unsigned i = 0; i < t->n_numa; i++) {
		unsigned k;

		if (!t->numa[i].has_cpus)
			continue;
		k = n / t->n_cpu_numa + (h++ < n % t->n_cpu_numa);
		if (k > (unsigned)pus_of(t->numa[i].cpuset))
			return 0;
	}
	return 1;
}

/* auto, cpu:N for N in cpu_counts (sharing PUs exactly when they are short) and,
 * when there are GPUs, gpu:all and auto with GPUs allowed. */
static void check_all_plans(const struct shard_topo *t, const char *name)
{
	char what[512], spec[32];
	struct shard_plan *p;

	snprintf(what, sizeof(what), "%s auto", name);
	p = make(t, NULL, 0);
	ck_assert_uint_eq(p->n, t->n_cpu_numa);
	ck_assert_uint_eq(p->n_nodes, t->n_cpu_numa);
	check_plan(t, p, what);
	shard_plan_free(p);

	for (unsigned i = 0; i < N_COUNTS; i++) {
		snprintf(spec, sizeof(spec), "cpu:%u", cpu_counts[i]);
		snprintf(what, sizeof(what), "%s %s", name, spec);
		p = make(t, spec, 0);
		ck_assert_uint_eq(p->n, cpu_counts[i]);
		/* more shards than PUs: they share PUs, and the plan says so */
		ck_assert_msg((p->shared_cpus == 0) == (cpu_feasible(t, cpu_counts[i]) != 0),
			      "%s: shared_cpus %d", what, p->shared_cpus);
		check_plan(t, p, what);
		shard_plan_free(p);
	}

	if (!t->n_gpus)
		return;
	snprintf(what, sizeof(what), "%s gpu:all", name);
	p = make(t, "gpu:all", 0);
	ck_assert_uint_eq(p->n, t->n_gpus);
	for (unsigned i = 0; i < p->n; i++)
		ck_assert_int_eq(p->shards[i].device, (int)i);
	check_plan(t, p, what);
	shard_plan_free(p);

	snprintf(what, sizeof(what), "%s auto --gpus", name);
	p = make(t, "auto", SHARD_PLAN_GPUS);
	ck_assert_uint_eq(p->n_gpu, t->n_gpus);
	check_plan(t, p, what);
	shard_plan_free(p);
}

/* Every GPU sits on a node with CPUs, and is one per PCI device. */
static void check_gpus(const struct shard_topo *t, const char *name)
{
	for (unsigned i = 0; i < t->n_gpus; i++) {
		const struct shard_gpu *g = &t->gpus[i];

		ck_assert_msg(g->numa >= 0 && t->numa[g->numa].has_cpus,
			      "%s: GPU %u has no node with CPUs", name, i);
		ck_assert_msg(g->cuda >= 0 || g->nvml >= 0, "%s: GPU %u", name, i);
		for (unsigned j = 0; j < i; j++)
			ck_assert_msg(t->gpus[j].obj != g->obj,
				      "%s: GPUs %u and %u are one device", name, j, i);
	}
	for (unsigned i = 0; i < t->n_notes; i++)
		ck_assert_ptr_nonnull(t->notes[i]);
	ck_assert_uint_le(t->n_ignored, t->n_notes);
}

START_TEST(xml_plans)
{
	struct shard_topo *t = load_xml(xml_files[_i]);

	check_gpus(t, xml_files[_i]);
	check_all_plans(t, xml_files[_i]);
	shard_topo_free(t);
}
END_TEST

START_TEST(synthetic_plans)
{
	struct shard_topo *t = load_synth(synthetics[_i]);

	ck_assert_uint_eq(t->n_gpus, 0);
	ck_assert_uint_eq(t->n_cpu_numa, t->n_numa);
	check_all_plans(t, synthetics[_i]);
	shard_topo_free(t);
}
END_TEST

START_TEST(this_machine)
{
	struct shard_topo *t = NULL;
	char err[256] = "";

	ck_assert_msg(shard_topo_load(&t, NULL, NULL, err) == 0, "%s", err);
	ck_assert(t->this_system);
	check_gpus(t, "this machine");
	check_all_plans(t, "this machine");
	shard_topo_free(t);
}
END_TEST

/* ---- facts read off the XML files ---- */

struct xml_facts {
	const char *file;
	unsigned n_numa, n_cpu_numa, n_gpus, n_ignored;
	const char *note;          /* a note must mention this, or NULL */
	int gpu_node[16];          /* OS index of GPU i's node */
	int cuda_nvml;             /* 1: cudaI+nvmlI, 2: nvmlI only */
};

static const struct xml_facts facts[] = {
	{ "hwloc-nvidiaDGX2.xml", 2, 2, 16, 0, NULL,
	  { 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1 }, 2 },
	{ "hwloc-power8gpudistances.xml", 2, 2, 4, 0, NULL, { 0, 0, 1, 1 }, 1 },
	{ "mpibind-g4dnmetal.xml", 2, 2, 8, 0, NULL,
	  { 0, 0, 0, 0, 1, 1, 1, 1 }, 1 },
	{ "mpibind-coral-lassen.xml", 2, 2, 4, 0, NULL, { 0, 0, 8, 8 }, 1 },
	{ "hwloc-32em64t-2n8c2t-pci-wholeio.xml", 2, 2, 1, 3, "opencl0d1",
	  { 1 }, 0 },
	{ "mpibind-eas-tioga.xml", 4, 4, 0, 8, "rsmi", { 0 }, 0 },
	{ "mpibind-epyc-corona-p2.xml", 2, 2, 0, 8, "rsmi", { 0 }, 0 },
	{ "derived-p9-v100-gpunumanodes.xml", 8, 2, 0, 0, "GPUMemory", { 0 }, 0 },
	{ "hwloc-192em64t-24n8c2t.xml", 24, 24, 0, 0, NULL, { 0 }, 0 },
};
#define N_FACTS ((int)(sizeof(facts) / sizeof(facts[0])))

static int have_xml(const char *file)
{
	for (int i = 0; i < n_xml; i++)
		if (strcmp(xml_files[i], file) == 0)
			return 1;
	return 0;
}

static int notes_mention(const struct shard_topo *t, const char *s)
{
	unsigned n = 0;

	for (unsigned i = 0; i < t->n_notes; i++)
		n += strstr(t->notes[i], s) != NULL;
	return (int)n;
}

static void check_gpu_facts(const struct shard_topo *t, const struct xml_facts *f)
{
	for (unsigned i = 0; i < t->n_gpus; i++) {
		const struct shard_gpu *g = &t->gpus[i];

		ck_assert_msg(t->numa[g->numa].os == (unsigned)f->gpu_node[i],
			      "%s: GPU %u on node %u, want %d", f->file, i,
			      t->numa[g->numa].os, f->gpu_node[i]);
		if (f->cuda_nvml == 1) {
			ck_assert_int_eq(g->cuda, (int)i);
			ck_assert_int_eq(g->nvml, (int)i);
		} else if (f->cuda_nvml == 2) {
			ck_assert_int_eq(g->cuda, -1);
			ck_assert_int_eq(g->nvml, (int)i);
		}
	}
}

START_TEST(xml_facts)
{
	const struct xml_facts *f = &facts[_i];
	struct shard_topo *t;

	if (!have_xml(f->file)) {
		fprintf(stderr, "check_topo: %s missing, not checked\n", f->file);
		return;
	}
	t = load_xml(f->file);
	ck_assert_uint_eq(t->n_numa, f->n_numa);
	ck_assert_uint_eq(t->n_cpu_numa, f->n_cpu_numa);
	ck_assert_uint_eq(t->n_gpus, f->n_gpus);
	ck_assert_uint_eq(t->n_ignored, f->n_ignored);
	if (f->note)
		ck_assert_msg(notes_mention(t, f->note) > 0, "%s: no note on %s",
			      f->file, f->note);
	check_gpu_facts(t, f);
	shard_topo_free(t);
}
END_TEST

/* GPU memory nodes of the POWER9: never a shard's node, six notes. */
START_TEST(p9_gpu_memory_nodes)
{
	struct shard_topo *t;
	struct shard_plan *p;

	if (!have_xml("derived-p9-v100-gpunumanodes.xml"))
		return;
	t = load_xml("derived-p9-v100-gpunumanodes.xml");
	ck_assert_int_eq(notes_mention(t, "GPUMemory"), 6);
	for (unsigned i = 0; i < t->n_numa; i++)
		ck_assert_int_eq(t->numa[i].has_cpus, t->numa[i].os == 0 || t->numa[i].os == 8);
	p = make(t, "cpu:8", 0);
	for (unsigned i = 0; i < p->n; i++)
		ck_assert_msg(p->shards[i].numa == 0 || p->shards[i].numa == 8,
			      "shard %u on node %u", i, p->shards[i].numa);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/* DGX-2: gpu:LIST order, ranges, one GPU per node gets the whole node. */
START_TEST(dgx2_gpu_lists)
{
	struct shard_topo *t;
	struct shard_plan *p;

	if (!have_xml("hwloc-nvidiaDGX2.xml"))
		return;
	t = load_xml("hwloc-nvidiaDGX2.xml");
	ck_assert_str_eq(t->gpus[0].busid, "0000:34:00.0");
	p = make(t, "gpu:8,0", 0);
	ck_assert_uint_eq(p->n, 2);
	ck_assert_int_eq(p->shards[0].device, 8);
	ck_assert_uint_eq(p->shards[0].numa, 1);
	ck_assert_int_eq(p->shards[1].device, 0);
	ck_assert_uint_eq(p->shards[1].numa, 0);
	ck_assert(hwloc_bitmap_isequal(p->shards[1].cpuset, t->numa[0].cpuset));
	ck_assert(!p->shared_cpus);
	check_plan(t, p, "DGX-2 gpu:8,0");
	shard_plan_free(p);

	p = make(t, "gpu:0-3,12", 0);
	ck_assert_uint_eq(p->n, 5);
	ck_assert(p->shared_cpus);
	check_plan(t, p, "DGX-2 gpu:0-3,12");
	shard_plan_free(p);

	p = make(t, NULL, 0);
	ck_assert_uint_eq(p->n_gpu, 0);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/* ---- synthetic facts ---- */

struct synth_case {
	const char *desc, *spec;
	int ok;
	unsigned shards, per_shard;  /* PUs per shard when all equal, or 0 */
};

static const struct synth_case synth_cases[] = {
	{ "pack:1 numa:8 core:4 pu:1", NULL, 1, 8, 4 },
	{ "pack:1 numa:8 core:4 pu:1", "cpu:4", 1, 4, 4 },
	{ "pack:1 numa:8 core:4 pu:1", "cpu:16", 1, 16, 2 },
	{ "pack:1 numa:8 core:4 pu:1", "cpu:32", 1, 32, 1 },
	{ "pack:1 numa:8 core:4 pu:1", "cpu:33", 1, 33, 1 },
	{ "pack:2 numa:2 core:8 pu:2", "cpu:32", 1, 32, 2 },
	{ "pack:2 numa:2 core:8 pu:2", "cpu:48", 1, 48, 0 },
	{ "pack:2 numa:2 core:8 pu:2", "cpu:64", 1, 64, 1 },
	{ "pack:2 numa:2 core:8 pu:2", "cpu:65", 1, 65, 1 },
	{ "pack:4 numa:2 core:6 pu:2", "cpu:5", 1, 5, 0 },
	{ "pack:4 numa:2 core:6 pu:2", "cpu:90", 1, 90, 0 },
	{ "pack:4 numa:2 core:6 pu:2", "cpu:97", 1, 97, 1 },
	{ "numa:1 core:2 pu:1", "cpu:2", 1, 2, 1 },
	{ "numa:1 core:2 pu:1", "cpu:3", 1, 3, 1 },
	{ "core:3 pu:2", "auto", 1, 1, 6 },
};
#define N_SYNTH_CASES ((int)(sizeof(synth_cases) / sizeof(synth_cases[0])))

START_TEST(synthetic_cases)
{
	const struct synth_case *c = &synth_cases[_i];
	struct shard_topo *t = load_synth(c->desc);
	struct shard_plan *p = NULL;
	char err[256] = "", what[128];

	snprintf(what, sizeof(what), "%s %s", c->desc, c->spec ? c->spec : "auto");
	if (!c->ok) {
		ck_assert_msg(shard_plan_make(t, c->spec, &p, err) < 0,
			      "%s: accepted", what);
		ck_assert_msg(strstr(err, c->spec) != NULL, "%s: %s", what, err);
		shard_topo_free(t);
		return;
	}
	p = make(t, c->spec, 0);
	ck_assert_uint_eq(p->n, c->shards);
	for (unsigned i = 0; c->per_shard && i < p->n; i++)
		ck_assert_int_eq(pus_of(p->shards[i].cpuset), (int)c->per_shard);
	check_plan(t, p, what);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/* The 8-node machine with cpu:4: one shard on each of the first 4 nodes. */
START_TEST(eight_nodes_cpu4)
{
	struct shard_topo *t = load_synth("pack:1 numa:8 core:4 pu:1");
	struct shard_plan *p = make(t, "cpu:4", 0);

	ck_assert_uint_eq(t->n_numa, 8);
	for (unsigned i = 0; i < 4; i++) {
		ck_assert_uint_eq(p->shards[i].numa, i);
		ck_assert(hwloc_bitmap_isequal(p->shards[i].cpuset, t->numa[i].cpuset));
	}
	ck_assert_uint_eq(p->n_nodes, 4);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/* ---- errors ---- */

struct bad_spec {
	const char *spec, *want;
};

static const struct bad_spec bad_specs[] = {
	{ "cpu:0", "1 to" }, { "cpu:x", "1 to" }, { "cpu:", "1 to" },
	{ "cpu:-1", "1 to" }, { "cpu:2x", "1 to" }, { "cpu:4097", "1 to" },
	{ "cpu:99999999999", "1 to" }, { "tpu:1", "unknown shard spec" },
	{ "gpu", "unknown shard spec" }, { "auto ", "unknown shard spec" },
	{ "gpu:99", "no GPU 99" }, { "gpu:all", "no NVIDIA GPU" },
	{ "gpu:", "gpu:LIST" }, { "gpu:0,", "no GPU 0" }, { "gpu:x", "gpu:LIST" },
};
#define N_BAD ((int)(sizeof(bad_specs) / sizeof(bad_specs[0])))

START_TEST(bad_specs_refused)
{
	const struct bad_spec *b = &bad_specs[_i];
	struct shard_topo *t = load_synth("pack:2 numa:2 core:8 pu:2");
	struct shard_plan *p = (struct shard_plan *)&p;
	char err[256] = "";

	ck_assert_int_lt(shard_plan_make(t, b->spec, &p, err), 0);
	ck_assert_ptr_eq(p, (struct shard_plan *)&p);   /* not written */
	ck_assert_msg(strstr(err, b->want) && strstr(err, b->spec),
		      "%s: \"%s\"", b->spec, err);
	shard_topo_free(t);
}
END_TEST

static const struct bad_spec bad_gpu_specs[] = {
	{ "gpu:99", "no GPU 99 (16 NVIDIA GPUs found: 0-15)" },
	{ "gpu:16", "no GPU 16" }, { "gpu:1,1", "listed twice" },
	{ "gpu:3-1", "gpu:LIST" }, { "gpu:0;1", "gpu:LIST" },
	{ "gpu:0-99", "no GPU 16" },
};
#define N_BAD_GPU ((int)(sizeof(bad_gpu_specs) / sizeof(bad_gpu_specs[0])))

START_TEST(bad_gpu_specs_refused)
{
	const struct bad_spec *b = &bad_gpu_specs[_i];
	struct shard_topo *t;
	struct shard_plan *p = NULL;
	char err[256] = "";

	if (!have_xml("hwloc-nvidiaDGX2.xml"))
		return;
	t = load_xml("hwloc-nvidiaDGX2.xml");
	ck_assert_int_lt(shard_plan_make(t, b->spec, &p, err), 0);
	ck_assert_msg(strstr(err, b->want), "%s: \"%s\"", b->spec, err);
	shard_topo_free(t);
}
END_TEST

START_TEST(bad_topologies_refused)
{
	struct shard_topo *t = NULL;
	char err[256] = "";

	ck_assert_int_lt(shard_topo_load(&t, "/nonexistent/x.xml", NULL, err), 0);
	ck_assert_ptr_null(t);
	ck_assert_msg(strstr(err, "/nonexistent/x.xml"), "%s", err);
	ck_assert_int_lt(shard_topo_load(&t, NULL, "pack:x numa:y", err), 0);
	ck_assert_msg(strstr(err, "synthetic"), "%s", err);
	ck_assert_int_lt(shard_topo_load(&t, "a.xml", "pu:2", err), 0);
	ck_assert_ptr_null(t);
}
END_TEST

/* ---- binding and memory ---- */

START_TEST(bind_this_machine)
{
	struct shard_topo *t = NULL;
	struct shard_plan *p;
	hwloc_bitmap_t now = hwloc_bitmap_alloc();
	char err[256] = "";

	ck_assert_int_eq(shard_topo_load(&t, NULL, NULL, err), 0);
	p = make(t, NULL, 0);
	ck_assert_int_eq(shard_plan_bind_thread(p, 0, NULL), 0);
	ck_assert_int_eq(hwloc_get_cpubind(t->topo, now, HWLOC_CPUBIND_THREAD), 0);
	ck_assert(hwloc_bitmap_isequal(now, p->shards[0].cpuset));
	ck_assert_int_lt(shard_plan_bind_thread(p, p->n, NULL), 0);
	hwloc_bitmap_free(now);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/* A plan for another machine binds here to the CPUs that exist, warns
 * about the others, and fails without crashing when none exist. */
START_TEST(bind_foreign_plan_warns)
{
	struct shard_topo *t = load_synth("pack:4 numa:2 core:6 pu:2");
	struct shard_plan *p = make(t, "cpu:8", 0);
	hwloc_bitmap_t now = hwloc_bitmap_alloc();
	hwloc_topology_t here;

	ck_assert(!t->this_system);
	ck_assert_int_eq(hwloc_topology_init(&here), 0);
	ck_assert_int_eq(hwloc_topology_load(here), 0);
	if (hwloc_bitmap_isset(hwloc_topology_get_allowed_cpuset(here), 0)) {
		ck_assert_int_eq(shard_plan_bind_thread(p, 0, NULL), 0);
		ck_assert_int_eq(hwloc_get_cpubind(here, now, HWLOC_CPUBIND_THREAD), 0);
		ck_assert(hwloc_bitmap_isincluded(now, p->shards[0].cpuset));
	}
	if (!hwloc_bitmap_intersects(hwloc_topology_get_allowed_cpuset(here),
				     p->shards[7].cpuset)) {
		char err[KRN_MSGLEN] = "";

		ck_assert_int_lt(shard_plan_bind_thread(p, 7, err), 0);
		ck_assert_msg(strstr(err, "shard 7: cpus ") &&
			      strstr(err, "none of them here"), "%s", err);
	}
	hwloc_topology_destroy(here);
	hwloc_bitmap_free(now);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

/*
 * A pool on another machine's plan counts its workers not bound as
 * planned, keeps the lowest one's reason, and prints nothing.
 */
START_TEST(pool_reports_unbound)
{
	struct shard_topo *t = load_synth("pack:4 numa:2 core:6 pu:2");
	struct shard_plan *p = make(t, "cpu:8", 0);
	struct shard_pool *pool = NULL;
	char err[KRN_MSGLEN] = "", why[KRN_MSGLEN] = "";
	char path[] = "/tmp/check_topo.stderr.XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	struct stat st;
	uint32_t n;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(dup2(fd, 2), 0);
	ck_assert_int_eq(shard_pool_new(&pool, 8, p, err), DKV_OK);
	n = shard_pool_unbound(pool, why);
	shard_pool_free(pool);
	ck_assert_int_ge(dup2(saved, 2), 0);
	/* the workers are shards 1..7, PUs 12-95: none exist on a small machine */
	if (sysconf(_SC_NPROCESSORS_CONF) <= 12) {
		ck_assert_uint_eq(n, 7);
		ck_assert_msg(strstr(why, "shard 1: cpus 12-23: none of them here"), "%s", why);
	}
	ck_assert_int_eq(fstat(fd, &st), 0);
	ck_assert_msg(st.st_size == 0, "the pool wrote %lld bytes to stderr",
		      (long long)st.st_size);
	close(fd);
	close(saved);
	unlink(path);
	shard_plan_free(p);
	shard_topo_free(t);
}
END_TEST

static void check_mem(void *m, size_t bytes)
{
	ck_assert_ptr_nonnull(m);
	ck_assert_uint_eq((uintptr_t)m % 4096, 0);
	memset(m, 0x5a, bytes);
	ck_assert_int_eq(((unsigned char *)m)[bytes - 1], 0x5a);
	shard_numa_free(m, bytes);
}

START_TEST(numa_memory)
{
	size_t bytes = 1u << 20;
	void *m = shard_numa_alloc(bytes, 0);
	int node = -1;

	ck_assert_ptr_nonnull(m);
	memset(m, 1, bytes);
	if (numa_available() >= 0 &&
	    get_mempolicy(&node, NULL, 0, m, MPOL_F_NODE | MPOL_F_ADDR) == 0)
		ck_assert_int_eq(node, 0);
	shard_numa_free(m, bytes);
	check_mem(shard_numa_alloc(bytes, 4095), bytes);    /* absent here */
	check_mem(shard_numa_alloc(bytes, -1), bytes);
	check_mem(shard_numa_alloc(100, 0), 100);
	ck_assert_ptr_null(shard_numa_alloc(0, 0));
	shard_numa_free(NULL, 0);
}
END_TEST

/* ---- the suite ---- */

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int find_xml(void)
{
	const char *top = getenv("top_srcdir"), *data = getenv("DASHKV_TEST_DATA");
	struct dirent *e;
	DIR *d;

	/* DASHKV_TEST_DATA: the shared data folder, for builds outside the tree */
	if (data && *data)
		snprintf(data_dir, sizeof(data_dir), "%s/topologies", data);
	else
		snprintf(data_dir, sizeof(data_dir), "%s/../shared/data/topologies",
			 top ? top : DKV_TOP_SRCDIR);
	d = opendir(data_dir);
	if (!d)
		return -1;
	while ((e = readdir(d)) && n_xml < MAX_XML) {
		size_t len = strlen(e->d_name);

		if (len > 4 && strcmp(e->d_name + len - 4, ".xml") == 0)
			xml_files[n_xml++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(xml_files, n_xml, sizeof(*xml_files), by_name);
	return 0;
}

static Suite *topo_suite(void)
{
	Suite *s = suite_create("topo");
	TCase *t = tcase_create("plans");

	if (n_xml) {
		tcase_add_loop_test(t, xml_plans, 0, n_xml);
		tcase_add_loop_test(t, xml_facts, 0, N_FACTS);
		tcase_add_test(t, p9_gpu_memory_nodes);
		tcase_add_test(t, dgx2_gpu_lists);
		tcase_add_loop_test(t, bad_gpu_specs_refused, 0, N_BAD_GPU);
	}
	tcase_add_loop_test(t, synthetic_plans, 0, N_SYNTH);
	tcase_add_loop_test(t, synthetic_cases, 0, N_SYNTH_CASES);
	tcase_add_test(t, eight_nodes_cpu4);
	tcase_add_test(t, this_machine);
	tcase_add_loop_test(t, bad_specs_refused, 0, N_BAD);
	tcase_add_test(t, bad_topologies_refused);
	tcase_add_test(t, bind_this_machine);
	tcase_add_test(t, bind_foreign_plan_warns);
	tcase_add_test(t, pool_reports_unbound);
	tcase_add_test(t, numa_memory);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	int missing = find_xml() < 0;
	SRunner *sr;
	int failed;

	sr = srunner_create(topo_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	for (int i = 0; i < n_xml; i++)
		free(xml_files[i]);
	if (failed)
		return EXIT_FAILURE;
	if (missing || !n_xml) {
		printf("check_topo: SKIP: no topology data in %s "
		       "(real-machine plans not checked)\n", data_dir);
		return 77;
	}
	return EXIT_SUCCESS;
}
