/*
 * topo.c - NUMA nodes and NVIDIA GPUs from hwloc; see topo.h.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "topo.h"

static int add_note(struct shard_topo *t, const char *note)
{
	char **notes = realloc(t->notes, (t->n_notes + 1) * sizeof(*notes));

	if (!notes)
		return -1;
	t->notes = notes;
	notes[t->n_notes] = strdup(note);
	if (!notes[t->n_notes])
		return -1;
	t->n_notes++;
	return 0;
}

/* ---- loading ---- */

static int open_topology(hwloc_topology_t *out, const char *xml_path,
			 const char *synthetic, char *err)
{
	hwloc_topology_t topo;

	if (hwloc_topology_init(&topo) < 0)
		return krn_msgf(err, -1, "hwloc_topology_init: %s", strerror(errno));
	if (xml_path && hwloc_topology_set_xml(topo, xml_path) < 0) {
		krn_msgf(err, -1, "cannot use XML topology %s: %s",
			 xml_path, strerror(errno));
		goto destroy;
	}
	if (synthetic && hwloc_topology_set_synthetic(topo, synthetic) < 0) {
		krn_msgf(err, -1, "invalid synthetic topology \"%s\"", synthetic);
		goto destroy;
	}
	/* This machine: PCI from sysfs, not through libpciaccess (slower, and
	 * it leaks under LeakSanitizer); fine if the component is absent. */
	if (!xml_path && !synthetic)
		hwloc_topology_set_components(topo,
			HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
	hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
	if (hwloc_topology_load(topo) < 0) {
		krn_msgf(err, -1, "cannot load topology%s%s: %s",
			 xml_path ? " from " : "", xml_path ? xml_path : "",
			 strerror(errno));
		goto destroy;
	}
	*out = topo;
	return 0;

destroy:
	hwloc_topology_destroy(topo);
	return -1;
}

/* ---- NUMA nodes ---- */

/* Memory that hwloc tags as special: never the home of CPUs. */
static int special_memory(hwloc_obj_t obj)
{
	return obj->subtype && strcmp(obj->subtype, "DRAM") != 0;
}

/* Another candidate's CPUs lie strictly inside this node's: it is attached
 * above the nodes that own them (e.g. CXL or GPU memory at package level). */
static int covers_other_node(const struct shard_topo *t, unsigned i)
{
	const struct shard_numa *a = &t->numa[i];

	for (unsigned j = 0; j < t->n_numa; j++) {
		const struct shard_numa *b = &t->numa[j];

		if (j == i || !b->has_cpus)
			continue;
		if (hwloc_bitmap_isincluded(b->cpuset, a->cpuset) &&
		    !hwloc_bitmap_isequal(b->cpuset, a->cpuset))
			return 1;
	}
	return 0;
}

/* An earlier node already owns some of these CPUs. */
static int shares_earlier_node(const struct shard_topo *t, unsigned i)
{
	for (unsigned j = 0; j < i; j++)
		if (t->numa[j].has_cpus &&
		    hwloc_bitmap_intersects(t->numa[j].cpuset, t->numa[i].cpuset))
			return 1;
	return 0;
}

static int drop_cpus(struct shard_topo *t, unsigned i, const char *why)
{
	struct shard_numa *n = &t->numa[i];
	const char *sub = n->obj->subtype;

	char note[KRN_MSGLEN];

	n->has_cpus = 0;
	hwloc_bitmap_zero(n->cpuset);
	krn_msgf(note, 0, "NUMA node %u%s%s%s has no CPUs of its own (%s): "
		 "no shards or shard memory there", n->os,
		 sub ? " (" : "", sub ? sub : "", sub ? ")" : "", why);
	return add_note(t, note);
}

static int classify_numa(struct shard_topo *t)
{
	unsigned i;

	for (i = 0; i < t->n_numa; i++)
		t->numa[i].has_cpus = !hwloc_bitmap_iszero(t->numa[i].cpuset);
	for (i = 0; i < t->n_numa; i++) {
		struct shard_numa *n = &t->numa[i];

		if (!n->has_cpus)
			continue;
		if (special_memory(n->obj)) {
			if (drop_cpus(t, i, "special memory") < 0)
				return -1;
		}
	}
	for (i = 0; i < t->n_numa; i++)
		if (t->numa[i].has_cpus && covers_other_node(t, i) &&
		    drop_cpus(t, i, "attached above the nodes owning its CPUs") < 0)
			return -1;
	for (i = 0; i < t->n_numa; i++)
		if (t->numa[i].has_cpus && shares_earlier_node(t, i) &&
		    drop_cpus(t, i, "shares the CPUs of another node") < 0)
			return -1;
	for (i = 0; i < t->n_numa; i++)
		if (t->numa[i].has_cpus)
			t->n_cpu_numa++;
	return 0;
}

static int load_numa(struct shard_topo *t, char *err)
{
	int n = hwloc_get_nbobjs_by_type(t->topo, HWLOC_OBJ_NUMANODE);

	if (n <= 0)
		return krn_msgf(err, -1, "the topology has no NUMA node");
	t->numa = calloc(n, sizeof(*t->numa));
	if (!t->numa)
		goto nomem;
	for (int i = 0; i < n; i++) {
		hwloc_obj_t obj = hwloc_get_obj_by_type(t->topo, HWLOC_OBJ_NUMANODE, i);
		struct shard_numa *node = &t->numa[i];

		node->obj = obj;
		node->logical = obj->logical_index;
		node->os = obj->os_index;
		node->cpuset = hwloc_bitmap_dup(obj->cpuset);
		if (!node->cpuset)
			goto nomem;
		t->n_numa++;
	}
	if (classify_numa(t) < 0)
		goto nomem;
	if (!t->n_cpu_numa)
		return krn_msgf(err, -1, "no NUMA node of the topology has CPUs");
	return 0;

nomem:
	return krn_msgf(err, -1, "out of memory");
}

int shard_topo_numa_by_os(const struct shard_topo *t, unsigned os)
{
	for (unsigned i = 0; i < t->n_numa; i++)
		if (t->numa[i].os == os)
			return (int)i;
	return -1;
}

/* ---- GPUs ---- */

static int is_gpu_like(hwloc_obj_t os)
{
	return os->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU ||
	       os->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC;
}

/* N of an OS device named prefix<N>, or -1. */
static int name_index(hwloc_obj_t os, const char *prefix)
{
	size_t len = strlen(prefix);
	const char *p;
	char *end;
	long v;

	if (!os->name || strncmp(os->name, prefix, len) != 0)
		return -1;
	p = os->name + len;
	if (*p < '0' || *p > '9')
		return -1;
	v = strtol(p, &end, 10);
	if (*end || v > 1 << 20)
		return -1;
	return (int)v;
}

static int backend_is(hwloc_obj_t os, const char *backend)
{
	const char *b = hwloc_obj_get_info_by_name(os, "Backend");

	if (b)
		return strcmp(b, backend) == 0;
	return os->subtype && strcmp(os->subtype, backend) == 0;
}

static int is_cuda(hwloc_obj_t os)
{
	return backend_is(os, "CUDA") || name_index(os, "cuda") >= 0;
}

static int is_nvml(hwloc_obj_t os)
{
	return backend_is(os, "NVML") || name_index(os, "nvml") >= 0;
}

/* The PCI device an OS device belongs to, or the OS device itself. */
static hwloc_obj_t device_of(hwloc_obj_t os)
{
	for (hwloc_obj_t p = os->parent; p; p = p->parent)
		if (p->type == HWLOC_OBJ_PCI_DEVICE)
			return p;
	return os;
}

static void format_busid(hwloc_obj_t dev, char *buf, size_t len)
{
	const struct hwloc_pcidev_attr_s *pci = &dev->attr->pcidev;

	if (dev->type != HWLOC_OBJ_PCI_DEVICE) {
		buf[0] = 0;
		return;
	}
	snprintf(buf, len, "%04x:%02x:%02x.%01x",
		 pci->domain, pci->bus, pci->dev, pci->func);
}

static struct shard_gpu *find_gpu(struct shard_topo *t, hwloc_obj_t dev)
{
	for (unsigned i = 0; i < t->n_gpus; i++)
		if (t->gpus[i].obj == dev)
			return &t->gpus[i];
	return NULL;
}

static struct shard_gpu *add_gpu(struct shard_topo *t, hwloc_obj_t dev)
{
	struct shard_gpu *g = realloc(t->gpus, (t->n_gpus + 1) * sizeof(*g));

	if (!g)
		return NULL;
	t->gpus = g;
	g = &t->gpus[t->n_gpus++];
	memset(g, 0, sizeof(*g));
	g->cuda = -1;
	g->nvml = -1;
	g->numa = -1;
	g->obj = dev;
	format_busid(dev, g->busid, sizeof(g->busid));
	return g;
}

static void set_model(struct shard_gpu *g, hwloc_obj_t os)
{
	const char *m = hwloc_obj_get_info_by_name(os, "GPUModel");

	if (m && !g->model[0])
		snprintf(g->model, sizeof(g->model), "%s", m);
}

static int note_nvidia(struct shard_topo *t, hwloc_obj_t os)
{
	hwloc_obj_t dev = device_of(os);
	struct shard_gpu *g = find_gpu(t, dev);

	if (!g)
		g = add_gpu(t, dev);
	if (!g)
		return -1;
	if (is_cuda(os) && g->cuda < 0)
		g->cuda = name_index(os, "cuda");
	if (is_nvml(os) && g->nvml < 0)
		g->nvml = name_index(os, "nvml");
	set_model(g, os);
	return 0;
}

/* "rsmi2+opencl0d2": the GPU-like OS devices under dev. */
static void device_names(hwloc_obj_t dev, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = 0;
	if (dev->type == HWLOC_OBJ_OS_DEVICE) {
		snprintf(buf, len, "%s", dev->name ? dev->name : "?");
		return;
	}
	for (hwloc_obj_t c = dev->io_first_child; c; c = c->next_sibling) {
		if (c->type != HWLOC_OBJ_OS_DEVICE || !is_gpu_like(c))
			continue;
		used += snprintf(buf + used, len - used, "%s%s",
				 used ? "+" : "", c->name ? c->name : "?");
		if (used >= len)
			return;
	}
}

static const char *device_model(hwloc_obj_t dev)
{
	const char *m = NULL;

	if (dev->type == HWLOC_OBJ_OS_DEVICE)
		return hwloc_obj_get_info_by_name(dev, "GPUModel");
	for (hwloc_obj_t c = dev->io_first_child; c && !m; c = c->next_sibling)
		if (c->type == HWLOC_OBJ_OS_DEVICE)
			m = hwloc_obj_get_info_by_name(c, "GPUModel");
	if (!m)
		m = hwloc_obj_get_info_by_name(dev, "PCIDevice");
	return m;
}

static int note_ignored(struct shard_topo *t, hwloc_obj_t dev)
{
	char names[128], busid[32], note[KRN_MSGLEN];
	const char *model = device_model(dev);

	device_names(dev, names, sizeof(names));
	format_busid(dev, busid, sizeof(busid));
	t->n_ignored++;
	krn_msgf(note, 0, "ignored device %s%s%s%s%s%s: not an NVIDIA GPU "
		 "(no CUDA or NVML device)", names,
		 busid[0] ? " at " : "", busid,
		 model ? " (" : "", model ? model : "", model ? ")" : "");
	return add_note(t, note);
}

/* Devices seen earlier in the OS-device order than os, for deduping. */
static int seen_before(hwloc_topology_t topo, hwloc_obj_t os)
{
	hwloc_obj_t dev = device_of(os);

	for (hwloc_obj_t o = NULL; (o = hwloc_get_next_osdev(topo, o)) != os;)
		if (is_gpu_like(o) && device_of(o) == dev)
			return 1;
	return 0;
}

static int has_gpu_osdev(hwloc_obj_t dev)
{
	for (hwloc_obj_t c = dev->io_first_child; c; c = c->next_sibling)
		if (c->type == HWLOC_OBJ_OS_DEVICE && is_gpu_like(c))
			return 1;
	return 0;
}

/* NVIDIA display or 3D controllers without any GPU OS device: hwloc was
 * built without its CUDA and NVML plugins (as Debian's is), or the driver
 * was missing when the XML was exported. */
static int note_bare_nvidia(struct shard_topo *t)
{
	char busid[32], note[KRN_MSGLEN];

	for (hwloc_obj_t d = NULL; (d = hwloc_get_next_pcidev(t->topo, d));) {
		if (d->attr->pcidev.vendor_id != 0x10de ||
		    d->attr->pcidev.class_id >> 8 != 0x03 || has_gpu_osdev(d))
			continue;
		format_busid(d, busid, sizeof(busid));
		t->n_ignored++;
		krn_msgf(note, 0, "ignored NVIDIA GPU at %s: no CUDA or NVML device "
			 "(hwloc without those plugins, or no driver)", busid);
		if (add_note(t, note) < 0)
			return -1;
	}
	return 0;
}

static int scan_gpus(struct shard_topo *t)
{
	hwloc_obj_t os;

	for (os = NULL; (os = hwloc_get_next_osdev(t->topo, os));)
		if (is_gpu_like(os) && (is_cuda(os) || is_nvml(os)) &&
		    note_nvidia(t, os) < 0)
			return -1;
	for (os = NULL; (os = hwloc_get_next_osdev(t->topo, os));) {
		if (!is_gpu_like(os) || find_gpu(t, device_of(os)) ||
		    seen_before(t->topo, os))
			continue;
		if (note_ignored(t, device_of(os)) < 0)
			return -1;
	}
	return note_bare_nvidia(t);
}

/* ---- GPU locality ---- */

static unsigned gpus_on(const struct shard_topo *t, int node)
{
	unsigned n = 0;

	for (unsigned i = 0; i < t->n_gpus; i++)
		n += t->gpus[i].numa == node;
	return n;
}

/* Is node i, which has CPUs, local to ancestor a? pass 0: in its nodeset;
 * pass 1: shares CPUs with it; pass 2: any node. */
static int local_to(const struct shard_topo *t, unsigned i, hwloc_obj_t a,
		    int pass)
{
	const struct shard_numa *n = &t->numa[i];

	if (pass == 0)
		return a && a->nodeset && hwloc_bitmap_isset(a->nodeset, n->os);
	if (pass == 1)
		return a && a->cpuset && hwloc_bitmap_intersects(a->cpuset, n->cpuset);
	return 1;
}

/* The GPU's local node with CPUs; among several, the one with the fewest
 * GPUs so far, then the lowest logical index. */
static int place_gpu(struct shard_topo *t, struct shard_gpu *g)
{
	hwloc_obj_t a = hwloc_get_non_io_ancestor_obj(t->topo, g->obj);

	for (int pass = 0; pass < 3; pass++) {
		int best = -1;

		for (unsigned i = 0; i < t->n_numa; i++) {
			if (!t->numa[i].has_cpus || !local_to(t, i, a, pass))
				continue;
			if (best < 0 || gpus_on(t, i) < gpus_on(t, best))
				best = (int)i;
		}
		if (best < 0)
			continue;
		g->numa = best;
		if (pass == 2) {
			char note[KRN_MSGLEN];

			krn_msgf(note, 0, "GPU %s: NUMA locality unknown, placed on node %u",
				 g->busid, t->numa[best].os);
			return add_note(t, note);
		}
		return 0;
	}
	return 0;
}

static int place_gpus(struct shard_topo *t)
{
	for (unsigned i = 0; i < t->n_gpus; i++)
		if (place_gpu(t, &t->gpus[i]) < 0)
			return -1;
	return 0;
}

/* ---- the whole ---- */

void shard_topo_free(struct shard_topo *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->n_numa; i++)
		hwloc_bitmap_free(t->numa[i].cpuset);
	free(t->numa);
	free(t->gpus);
	for (unsigned i = 0; i < t->n_notes; i++)
		free(t->notes[i]);
	free(t->notes);
	if (t->topo)
		hwloc_topology_destroy(t->topo);
	free(t);
}

int shard_topo_load(struct shard_topo **out, const char *xml_path,
		    const char *synthetic, char *err)
{
	struct shard_topo *t;

	if (xml_path && synthetic)
		return krn_msgf(err, -1, "give an XML topology or a synthetic one, not both");
	if (xml_path && access(xml_path, R_OK) < 0)
		return krn_msgf(err, -1, "cannot read XML topology %s: %s",
				xml_path, strerror(errno));
	t = calloc(1, sizeof(*t));
	if (!t)
		return krn_msgf(err, -1, "out of memory");
	if (open_topology(&t->topo, xml_path, synthetic, err) < 0)
		goto free_topo;
	t->this_system = hwloc_topology_is_thissystem(t->topo);
	if (load_numa(t, err) < 0)
		goto free_topo;
	if (scan_gpus(t) < 0 || place_gpus(t) < 0) {
		krn_msgf(err, -1, "out of memory");
		goto free_topo;
	}
	*out = t;
	return 0;

free_topo:
	shard_topo_free(t);
	return -1;
}
