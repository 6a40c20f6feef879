/*
 * plan.c - placement plans, thread binding and node-local memory; see
 * plan.h.
 */
#include "config.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "plan.h"

/* ---- specs ---- */

struct spec {
	enum shard_kind kind;
	int automatic;
	unsigned n;             /* shards */
	unsigned *gpus;         /* gpu:LIST, n entries */
};

/* A decimal number of at most 9 digits; advances *s. */
static int parse_uint(const char **s, unsigned *v)
{
	const char *p = *s;
	unsigned x = 0;

	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (p - *s >= 9)
			return -1;
		x = x * 10 + (unsigned)(*p - '0');
	}
	*s = p;
	*v = x;
	return 0;
}

static int parse_cpu(const char *spec, struct spec *sp, char *err)
{
	const char *p = spec + 4;

	if (parse_uint(&p, &sp->n) < 0 || *p || sp->n < 1 || sp->n > SHARD_PLAN_MAX)
		return krn_msgf(err, -1, "%s: want cpu:N with N from 1 to %u",
				spec, SHARD_PLAN_MAX);
	sp->kind = SHARD_CPU;
	return 0;
}

static void gpu_range(const struct shard_topo *t, char *buf, size_t len)
{
	if (!t->n_gpus)
		snprintf(buf, len, "no NVIDIA GPU found");
	else if (t->n_gpus == 1)
		snprintf(buf, len, "1 NVIDIA GPU found: 0");
	else
		snprintf(buf, len, "%u NVIDIA GPUs found: 0-%u",
			 t->n_gpus, t->n_gpus - 1);
}

static int add_gpu_index(const struct shard_topo *t, const char *spec,
			 struct spec *sp, unsigned g, char *err)
{
	char have[64];

	gpu_range(t, have, sizeof(have));
	if (g >= t->n_gpus)
		return krn_msgf(err, -1, "%s: no GPU %u (%s)", spec, g, have);
	for (unsigned i = 0; i < sp->n; i++) {
		if (sp->gpus[i] == g)
			return krn_msgf(err, -1, "%s: GPU %u listed twice", spec, g);
	}
	sp->gpus[sp->n++] = g;
	return 0;
}

static int bad_gpu_list(const char *spec, char *err)
{
	return krn_msgf(err, -1, "%s: want gpu:all or gpu:LIST with indices and "
			"ranges such as gpu:0,2-3", spec);
}

static int parse_gpu_item(const struct shard_topo *t, const char *spec,
			  const char **p, struct spec *sp, char *err)
{
	unsigned a, b;

	if (parse_uint(p, &a) < 0)
		goto bad;
	b = a;
	if (**p == '-') {
		(*p)++;
		if (parse_uint(p, &b) < 0 || b < a)
			goto bad;
	}
	for (unsigned g = a; g <= b; g++)
		if (add_gpu_index(t, spec, sp, g, err) < 0)
			return -1;
	return 0;

bad:
	return bad_gpu_list(spec, err);
}

static int parse_gpu(const struct shard_topo *t, const char *spec,
		     struct spec *sp, char *err)
{
	const char *p = spec + 4;
	char have[64];

	sp->kind = SHARD_GPU;
	sp->gpus = malloc((t->n_gpus + 1) * sizeof(*sp->gpus));
	if (!sp->gpus)
		return krn_msgf(err, -1, "out of memory");
	if (strcmp(p, "all") == 0) {
		gpu_range(t, have, sizeof(have));
		if (!t->n_gpus)
			return krn_msgf(err, -1, "%s: %s", spec, have);
		for (sp->n = 0; sp->n < t->n_gpus; sp->n++)
			sp->gpus[sp->n] = sp->n;
		return 0;
	}
	for (;;) {
		if (parse_gpu_item(t, spec, &p, sp, err) < 0)
			return -1;
		if (!*p)
			return 0;
		if (*p++ != ',')
			return bad_gpu_list(spec, err);
	}
}

static int parse_spec(const struct shard_topo *t, const char *spec,
		      unsigned flags, struct spec *sp, char *err)
{
	memset(sp, 0, sizeof(*sp));
	if (!spec || !*spec || strcmp(spec, "auto") == 0) {
		sp->automatic = 1;
		if ((flags & SHARD_PLAN_GPUS) && t->n_gpus)
			return parse_gpu(t, "gpu:all", sp, err);
		sp->kind = SHARD_CPU;
		sp->n = t->n_cpu_numa;
		return 0;
	}
	if (strncmp(spec, "cpu:", 4) == 0)
		return parse_cpu(spec, sp, err);
	if (strncmp(spec, "gpu:", 4) == 0)
		return parse_gpu(t, spec, sp, err);
	return krn_msgf(err, -1, "%s: unknown shard spec (want auto, cpu:N or gpu:LIST)",
			spec);
}

/* ---- splitting a node ---- */

/* Union of objects [from, to) of type inside set, clipped to set. */
static int take_objs(hwloc_topology_t topo, hwloc_const_bitmap_t set,
		     hwloc_obj_type_t type, unsigned from, unsigned to,
		     hwloc_bitmap_t out)
{
	for (unsigned i = from; i < to; i++) {
		hwloc_obj_t o = hwloc_get_obj_inside_cpuset_by_type(topo, set, type, i);

		if (!o || hwloc_bitmap_or(out, out, o->cpuset) < 0)
			return -1;
	}
	return hwloc_bitmap_and(out, out, set);
}

/*
 * Part `part` of k of a node's cpuset: whole cores when k <= cores, else
 * PUs; parts are disjoint and differ by at most one core (or PU).  With
 * share set, more parts than PUs get one PU each, round-robin; *shared is
 * then set.  -1 when there are more parts than PUs and share is not set.
 */
static int split_node(hwloc_topology_t topo, hwloc_const_bitmap_t set,
		      unsigned k, unsigned part, int share, int *shared,
		      hwloc_bitmap_t out)
{
	int cores = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_CORE);
	int pus = hwloc_get_nbobjs_inside_cpuset_by_type(topo, set, HWLOC_OBJ_PU);
	hwloc_obj_type_t type = HWLOC_OBJ_CORE;
	uint64_t n = (unsigned)cores;

	if (cores <= 0 || k > (unsigned)cores) {
		type = HWLOC_OBJ_PU;
		n = pus > 0 ? (unsigned)pus : 0;
	}
	if (!n)
		return -1;
	hwloc_bitmap_zero(out);
	if (k > n) {
		if (!share)
			return -1;
		*shared = 1;
		return take_objs(topo, set, type, part % n, part % n + 1, out);
	}
	return take_objs(topo, set, type, (unsigned)(part * n / k),
			 (unsigned)((part + 1) * n / k), out);
}

/* ---- plans ---- */

void shard_plan_free(struct shard_plan *p)
{
	if (!p)
		return;
	for (unsigned i = 0; i < p->n; i++)
		hwloc_bitmap_free(p->shards[i].cpuset);
	free(p->shards);
	free(p);
}

static int node_of(const struct shard_topo *t, const struct spec *sp,
		   const unsigned *hosts, unsigned i)
{
	if (sp->kind == SHARD_GPU)
		return t->gpus[sp->gpus[i]].numa;
	return (int)hosts[i % t->n_cpu_numa];
}

/* Shards of the plan on node, and how many of them come before shard i. */
static unsigned count_on(const struct shard_topo *t, const struct spec *sp,
			 const unsigned *hosts, int node, unsigned before,
			 unsigned *rank)
{
	unsigned n = 0;

	*rank = 0;
	for (unsigned j = 0; j < sp->n; j++) {
		if (node_of(t, sp, hosts, j) != node)
			continue;
		if (j < before)
			(*rank)++;
		n++;
	}
	return n;
}

static int fill_shard(struct shard_plan *p, const struct spec *sp,
		      const unsigned *hosts, unsigned i, char *err)
{
	const struct shard_topo *t = p->topo;
	struct shard_place *s = &p->shards[i];
	int node = node_of(t, sp, hosts, i);
	unsigned k, rank;

	s->kind = sp->kind;
	s->device = sp->kind == SHARD_GPU ? (int)sp->gpus[i] : -1;
	if (node < 0)
		return krn_msgf(err, -1, "GPU %d has no NUMA node with CPUs", s->device);
	s->numa_idx = node;
	s->numa = t->numa[node].os;
	s->cpuset = hwloc_bitmap_alloc();
	if (!s->cpuset)
		return krn_msgf(err, -1, "out of memory");
	k = count_on(t, sp, hosts, node, i, &rank);
	if (split_node(t->topo, t->numa[node].cpuset, k, rank, 1,
		       &p->shared_cpus, s->cpuset) < 0) {
		return krn_msgf(err, -1, "cpu:%u: NUMA node %u has %d PUs for %u shards",
				sp->n, s->numa, hwloc_bitmap_weight(t->numa[node].cpuset), k);
	}
	return 0;
}

static void count_plan(struct shard_plan *p)
{
	for (unsigned i = 0; i < p->n; i++) {
		unsigned j;

		if (p->shards[i].kind == SHARD_GPU)
			p->n_gpu++;
		else
			p->n_cpu++;
		for (j = 0; j < i; j++)
			if (p->shards[j].numa_idx == p->shards[i].numa_idx)
				break;
		p->n_nodes += j == i;
	}
}

static unsigned *cpu_hosts(const struct shard_topo *t)
{
	unsigned *hosts = malloc(t->n_numa * sizeof(*hosts)), n = 0;

	if (!hosts)
		return NULL;
	for (unsigned i = 0; i < t->n_numa; i++)
		if (t->numa[i].has_cpus)
			hosts[n++] = i;
	return hosts;
}

static int build(struct shard_plan *p, const struct spec *sp, char *err)
{
	unsigned *hosts = cpu_hosts(p->topo);
	int ret = -1;

	p->shards = calloc(sp->n, sizeof(*p->shards));
	if (!hosts || !p->shards) {
		krn_msgf(err, -1, "out of memory");
		goto free_hosts;
	}
	for (p->n = 0; p->n < sp->n; p->n++)
		if (fill_shard(p, sp, hosts, p->n, err) < 0) {
			p->n++;
			goto free_hosts;
		}
	count_plan(p);
	ret = 0;

free_hosts:
	free(hosts);
	return ret;
}

int shard_plan_make_flags(const struct shard_topo *t, const char *spec,
			  unsigned flags, struct shard_plan **out, char *err)
{
	struct shard_plan *p;
	struct spec sp;
	int ret = -1;

	if (parse_spec(t, spec, flags, &sp, err) < 0)
		goto free_spec;
	p = calloc(1, sizeof(*p));
	if (!p) {
		krn_msgf(err, -1, "out of memory");
		goto free_spec;
	}
	p->topo = t;
	if (build(p, &sp, err) < 0) {
		shard_plan_free(p);
		goto free_spec;
	}
	*out = p;
	ret = 0;

free_spec:
	free(sp.gpus);
	return ret;
}

int shard_plan_make(const struct shard_topo *t, const char *spec,
		    struct shard_plan **out, char *err)
{
	return shard_plan_make_flags(t, spec, 0, out, err);
}

/* ---- printing ---- */

static const char *plural(unsigned n)
{
	return n == 1 ? "" : "s";
}

void shard_plan_print(const struct shard_plan *p, FILE *f)
{
	for (unsigned i = 0; i < p->n; i++) {
		const struct shard_place *s = &p->shards[i];
		char *list = NULL;
		char dev[16] = "-";

		if (s->device >= 0)
			snprintf(dev, sizeof(dev), "%d", s->device);
		if (hwloc_bitmap_list_asprintf(&list, s->cpuset) < 0)
			list = NULL;
		fprintf(f, "shard %u %s device=%s numa=%u cpus=%s\n", i,
			s->kind == SHARD_GPU ? "gpu" : "cpu", dev, s->numa,
			list ? list : "?");
		free(list);
	}
	fprintf(f, "plan: %u shard%s (%u cpu, %u gpu) over %u NUMA node%s, "
		"%u ignored device%s%s\n", p->n, plural(p->n), p->n_cpu,
		p->n_gpu, p->n_nodes, plural(p->n_nodes), p->topo->n_ignored,
		plural(p->topo->n_ignored),
		p->shared_cpus ? ", shards share PUs" : "");
}

/* ---- binding and memory ---- */

static hwloc_topology_t local_topo;
static pthread_once_t local_once = PTHREAD_ONCE_INIT;

static void load_local(void)
{
	if (hwloc_topology_init(&local_topo) < 0)
		return;
	if (hwloc_topology_load(local_topo) < 0) {
		hwloc_topology_destroy(local_topo);
		local_topo = NULL;
	}
}

/* The running machine: the plan's own topology, or one loaded once (a
 * plan made from XML or a synthetic description binds through it). */
static hwloc_topology_t this_machine(const struct shard_plan *p)
{
	if (p->topo->this_system)
		return p->topo->topo;
	pthread_once(&local_once, load_local);
	return local_topo;
}

static void bind_note(char *err, uint32_t shard, hwloc_const_bitmap_t set,
		      const char *why)
{
	char *list = NULL;

	if (hwloc_bitmap_list_asprintf(&list, set) < 0)
		list = NULL;
	krn_msgf(err, -1, "shard %u: cpus %s: %s", shard, list ? list : "?", why);
	free(list);
}

/* Bind to the shard's CPUs that exist here; note the others in err. */
static int bind_to(hwloc_topology_t topo, uint32_t shard, hwloc_const_bitmap_t set,
		   char *err)
{
	hwloc_bitmap_t here = hwloc_bitmap_alloc();
	int ret = -1;

	if (!here || hwloc_bitmap_and(here, set,
			hwloc_topology_get_allowed_cpuset(topo)) < 0) {
		bind_note(err, shard, set, "out of memory: thread not bound");
		goto free_here;
	}
	if (hwloc_bitmap_iszero(here)) {
		bind_note(err, shard, set, "none of them here: thread not bound");
		goto free_here;
	}
	if (!hwloc_bitmap_isequal(here, set))
		bind_note(err, shard, set, "some absent here: bound to the rest");
	ret = hwloc_set_cpubind(topo, here, HWLOC_CPUBIND_THREAD);
	if (ret < 0)
		bind_note(err, shard, here, strerror(errno));

free_here:
	hwloc_bitmap_free(here);
	return ret;
}

int shard_plan_bind_thread(const struct shard_plan *p, uint32_t shard, char *err)
{
	hwloc_topology_t topo;

	if (shard >= p->n)
		return krn_msgf(err, -1, "no shard %u in a plan of %u", shard, p->n);
	topo = this_machine(p);
	if (!topo) {
		bind_note(err, shard, p->shards[shard].cpuset,
			  "no topology of this machine: thread not bound");
		return -1;
	}
	return bind_to(topo, shard, p->shards[shard].cpuset, err);
}

static int node_usable(int node)
{
	if (numa_available() < 0 || node < 0 || node > numa_max_node())
		return 0;
	return numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned)node);
}

/* Prefer the node rather than bind to it: a full node spills to another
 * instead of swapping or waking the OOM killer. */
static void prefer_node(void *p, size_t bytes, int node)
{
	struct bitmask *mask = numa_allocate_nodemask();

	if (!mask)
		return;
	numa_bitmask_setbit(mask, (unsigned)node);
	mbind(p, bytes, MPOL_PREFERRED, mask->maskp, mask->size + 1, 0);
	numa_free_nodemask(mask);
}

void shard_numa_prefer(void *p, size_t bytes, int numa_node)
{
	if (node_usable(numa_node))
		prefer_node(p, bytes, numa_node);
}

/*
 * mmap, then a libnuma memory policy: numa_alloc_onnode() would do the
 * same with a strict bind, but its memory must go back through numa_free()
 * while the fallback's must not; one mmap/munmap path serves both.
 */
void *shard_numa_alloc(size_t bytes, int numa_node)
{
	void *p;

	if (!bytes)
		return NULL;
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	if (node_usable(numa_node))
		prefer_node(p, bytes, numa_node);
	return p;
}

void shard_numa_free(void *p, size_t bytes)
{
	if (p)
		munmap(p, bytes);
}
