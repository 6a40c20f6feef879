/*
 * gpu.c - GPU shards (see gpu.h): the GPU module, the shards' CUDA
 * devices (from the plan or the spec's list) and their collective.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "gpu.h"
#include "gpu_int.h"
#include "krn_gpu.h"

/* ---- opening the shards ---- */

/* The CUDA device of plan GPU d: its cudaN, else nvmlN, else d (PCI order). */
static int cuda_of(const struct shard_topo *t, int d)
{
	const struct shard_gpu *g = &t->gpus[d];

	return g->cuda >= 0 ? g->cuda : g->nvml >= 0 ? g->nvml : d;
}

static int add_dev(struct shard_gpus *gs, const char *spec, unsigned long d, int ndev,
		   char *err)
{
	char what[64];

	snprintf(what, sizeof(what), "%lu", d);
	if (d >= (unsigned long)ndev) {
		char have[48];
		snprintf(have, sizeof(have), "CUDA reports %d device%s", ndev, ndev == 1 ? "" : "s");
		return krn_msgf(err, DKV_E_INVAL, "no CUDA device %s (%s)", what, have);
	}
	for (uint32_t i = 0; i < gs->n; i++)
		if (gs->dev[i] == (int)d)
			return krn_msgf(err, DKV_E_INVAL, "%s: device %s listed twice", spec,
					what);
	gs->dev[gs->n++] = (int)d;
	return 0;
}

/*
 * gpu:all or gpu:LIST against CUDA's devices, for a topology in which
 * hwloc sees no GPU (built without its CUDA and NVML plugins).
 */
static int parse_devices(struct shard_gpus *gs, const char *spec, int ndev, char *err)
{
	const char *s = spec + 4;
	char *end;
	int rc;

	if (!strcmp(s, "all")) {
		for (int d = 0; d < ndev; d++)
			gs->dev[gs->n++] = d;
		return 0;
	}
	for (;;) {
		unsigned long a, b;
		if (*s < '0' || *s > '9')
			break;
		a = b = strtoul(s, &end, 10);
		if (*end == '-') {
			if (end[1] < '0' || end[1] > '9')
				break;
			b = strtoul(end + 1, &end, 10);
		}
		for (unsigned long d = a; d <= b && d - a < 4096; d++)
			if ((rc = add_dev(gs, spec, d, ndev, err)))
				return rc;
		if (a > b)
			break;
		if (*end == '\0')
			return 0;
		if (*end != ',')
			break;
		s = end + 1;
	}
	return krn_msgf(err, DKV_E_INVAL,
			"%s: want gpu:all or gpu:LIST of CUDA devices such as gpu:0,2-3", spec);
}

static int plan_devices(struct shard_gpus *gs, const struct shard_topo *t, const char *spec,
			int ndev, struct shard_plan **plan, char *err)
{
	if (!t || !t->n_gpus)
		return parse_devices(gs, spec, ndev, err);
	if (shard_plan_make(t, spec, plan, err))
		return DKV_E_INVAL;
	for (unsigned i = 0; i < (*plan)->n; i++) {
		int rc = add_dev(gs, spec, (unsigned long)cuda_of(t, (*plan)->shards[i].device),
				 ndev, err);
		if (rc) {
			shard_plan_free(*plan);
			*plan = NULL;
			return rc;
		}
	}
	return 0;
}

/* The NCCL collective over the shards' devices; shared memory without one. */
static void open_coll(struct shard_gpus *gs)
{
	char cerr[KRN_MSGLEN] = "";

	snprintf(gs->coll_note, sizeof(gs->coll_note), "shared memory");
	if (gs->n < 2)
		snprintf(gs->coll_note, sizeof(gs->coll_note), "none (one shard)");
	if (gs->n < 2 || !gs->ops->coll_nccl_new)
		return;
	shard_coll_set_nccl(gs->ops->coll_nccl_new);
	if (shard_coll_new(&gs->nccl, SHARD_COLL_NCCL, (int)gs->n, gs->dev, cerr) == DKV_OK) {
		snprintf(gs->coll_note, sizeof(gs->coll_note), "%s", shard_coll_name(gs->nccl));
		return;
	}
	gs->nccl = NULL;
	snprintf(gs->coll_note, sizeof(gs->coll_note), "shared memory (%.200s)", cerr);
}

int shard_gpus_open(struct shard_gpus **out, const struct shard_topo *t, const char *spec,
		    struct shard_plan **plan, char *err)
{
	char kerr[KRN_MSGLEN] = "";
	const struct krn_gpu_ops *ops;
	struct shard_gpus *gs;
	int ndev = 0, rc;

	*plan = NULL;
	rc = krn_gpu_load(NULL, &ops, kerr);
	if (rc == DKV_OK)
		rc = ops->probe(&ndev, kerr);
	if (rc)
		return krn_msgf(err, rc, "GPU shards need the GPU module and a CUDA device: %.200s",
				kerr);
	gs = calloc(1, sizeof(*gs));
	if (!gs || !(gs->dev = calloc((size_t)ndev + 1, sizeof(int)))) {
		free(gs);
		return krn_msgf(err, DKV_E_NOMEM, "out of memory for GPU shards");
	}
	gs->ops = ops;
	pthread_mutex_init(&gs->lock, NULL);
	rc = plan_devices(gs, t, spec, ndev, plan, err);
	if (rc == DKV_OK && gs->n == 0)
		rc = krn_msgf(err, DKV_E_INVAL, "%s: no GPU listed", spec);
	if (rc) {
		shard_gpus_close(gs);
		return rc;
	}
	open_coll(gs);
	*out = gs;
	return DKV_OK;
}

void shard_gpus_close(struct shard_gpus *g)
{
	if (!g)
		return;
	shard_coll_free(g->nccl);
	pthread_mutex_destroy(&g->lock);
	free(g->dev);
	free(g);
}

uint32_t shard_gpus_count(const struct shard_gpus *g)
{
	return g->n;
}

void shard_gpus_describe(const struct shard_gpus *g, char *buf, size_t len)
{
	size_t at = (size_t)snprintf(buf, len, "%s module, %u GPU shard%s on device%s ",
				     g->ops->name, g->n, g->n == 1 ? "" : "s", g->n == 1 ? "" : "s");

	for (uint32_t i = 0; i < g->n && at < len; i++)
		at += (size_t)snprintf(buf + at, len - at, "%s%d", i ? "," : "", g->dev[i]);
	if (at < len)
		snprintf(buf + at, len - at, ", all-gather %s", g->coll_note);
}

uint64_t shard_gpus_fallbacks(const struct shard_gpus *g, char *last)
{
	struct shard_gpus *m = (struct shard_gpus *)g;
	uint64_t n;

	pthread_mutex_lock(&m->lock);
	n = m->fallbacks;
	krn_msgf(last, 0, "%s", m->last);
	pthread_mutex_unlock(&m->lock);
	return n;
}
