/*
 * gpu_emu.c - an emulated GPU module for tests (dashkv-gpu-emu.so, never
 * installed): the table of krn_gpu.h with the CPU kernels behind it, so
 * the host side of GPU shards (paging, staging, job routing, the merge)
 * runs in make check on machines without a GPU.  Load it with
 * DASHKV_CUDA_MODULE=.../dashkv-gpu-emu.so.
 *
 * "Device" memory is host memory, but every allocation is registered
 * with the device that was current on the allocating thread, and put,
 * get, copy, memset0 and the all-gather refuse (DKV_E_INTERNAL, message)
 * a range outside one allocation or on another device than the calling
 * thread's: sizing and device-selection bugs of the callers fail tests.
 * Fresh device memory is filled with garbage, as cudaMalloc's may be.
 *
 * The entry points GPU shards use (scan, fine, attend_range and the
 * memory functions) make the same kernel calls the CPU shards make on
 * the same rows, so their results are bit-identical to the CPU path;
 * hamming, merge and the conversions use the CPU kernels too; encode,
 * the selections, attend_list, search and fill answer DKV_E_UNSUPPORTED.
 *
 * Test-only environment:
 *   DASHKV_GPU_EMU_DEVICES  devices the probe reports (default 2; 0: none)
 *   DASHKV_GPU_EMU_NCCL     0: no collective (the shards use shared memory)
 *   DASHKV_GPU_EMU_FAIL     entry points that fail, e.g. "scan,fine"
 *                           ("gather": the collective)
 * dkv_gpu_emu_stats counts the calls.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "dashkv.h"
#include "krn.h"
#include "krn_gpu.h"

struct dkv_gpu_emu_stats {
	unsigned long scan, fine, attend_range, put, get, gather, dalloc, halloc;
};

extern struct dkv_gpu_emu_stats dkv_gpu_emu_stats;
struct dkv_gpu_emu_stats dkv_gpu_emu_stats;

static pthread_mutex_t emu_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * The calling thread's device, as cudaSetDevice keeps it.  A pthread key
 * rather than __thread: LeakSanitizer stumbles over the dynamic TLS of a
 * dlopened module.
 */
static pthread_key_t dev_key;
static pthread_once_t dev_once = PTHREAD_ONCE_INIT;

static void dev_key_make(void)
{
	pthread_key_create(&dev_key, NULL);
}

static int cur_dev_get(void)
{
	pthread_once(&dev_once, dev_key_make);
	return (int)(intptr_t)pthread_getspecific(dev_key);
}

static void cur_dev_set(int dev)
{
	pthread_once(&dev_once, dev_key_make);
	pthread_setspecific(dev_key, (void *)(intptr_t)dev);
}

#define COUNT(field) __atomic_add_fetch(&dkv_gpu_emu_stats.field, 1, __ATOMIC_RELAXED)

static int emu_err(char *err, int code, const char *fmt, const char *what)
{
	if (err)
		snprintf(err, KRN_MSGLEN, fmt, what);
	return code;
}

static int failing(const char *name, char *err)
{
	const char *f = getenv("DASHKV_GPU_EMU_FAIL");
	size_t n = strlen(name);

	for (const char *p = f; p && *p;) {
		const char *e = strchr(p, ',');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == n && !strncmp(p, name, n)) {
			emu_err(err, DKV_E_INTERNAL, "emulated GPU: injected failure of %s", name);
			return 1;
		}
		p = e ? e + 1 : NULL;
	}
	return 0;
}

/* ---- devices and the allocation registry ---- */

struct emu_alloc {
	char *p;
	size_t n;
	int dev; /* -1: pinned host memory, any device */
};

static struct emu_alloc *allocs;
static size_t n_allocs, cap_allocs;

static int ndevices(void)
{
	const char *e = getenv("DASHKV_GPU_EMU_DEVICES");

	return e && *e ? atoi(e) : 2;
}

static int emu_probe(int *ndev, char *err)
{
	int n = ndevices();

	if (n <= 0)
		return emu_err(err, DKV_E_UNSUPPORTED, "emulated GPU: %s", "no CUDA device");
	*ndev = n;
	return 0;
}

static int emu_device(int dev, char *err)
{
	if (dev < 0 || dev >= ndevices())
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "no such device");
	cur_dev_set(dev);
	return 0;
}

static int emu_sync(char *err)
{
	(void)err;
	return 0;
}

static int emu_dev_name(int dev, char *name, size_t len, char *err)
{
	(void)err;
	snprintf(name, len, "emulated device %d", dev);
	return 0;
}

static int reg_add(void *p, size_t n, int dev)
{
	int rc = 0;

	pthread_mutex_lock(&emu_lock);
	if (n_allocs == cap_allocs) {
		size_t cap = cap_allocs ? cap_allocs * 2 : 256;
		struct emu_alloc *a = realloc(allocs, cap * sizeof(*a));
		if (a) {
			allocs = a;
			cap_allocs = cap;
		}
	}
	if (n_allocs < cap_allocs)
		allocs[n_allocs++] = (struct emu_alloc){ p, n, dev };
	else
		rc = -1;
	pthread_mutex_unlock(&emu_lock);
	return rc;
}

static void reg_del(void *p)
{
	pthread_mutex_lock(&emu_lock);
	for (size_t i = 0; i < n_allocs; i++)
		if (allocs[i].p == p) {
			allocs[i] = allocs[--n_allocs];
			break;
		}
	pthread_mutex_unlock(&emu_lock);
}

/*
 * [p, p + n) inside one allocation usable from this thread's device:
 * device memory of that device (host: pinned memory is fine too).
 */
static int reg_check(const void *p, size_t n, int host_ok, const char *what, char *err)
{
	const char *c = p;
	int rc = DKV_E_INTERNAL;

	pthread_mutex_lock(&emu_lock);
	for (size_t i = 0; i < n_allocs; i++) {
		const struct emu_alloc *a = &allocs[i];
		if (c < a->p || c + n > a->p + a->n)
			continue;
		if (a->dev == cur_dev_get() || (host_ok && a->dev < 0))
			rc = 0;
		break;
	}
	pthread_mutex_unlock(&emu_lock);
	if (rc)
		emu_err(err, rc, "emulated GPU: %s outside a device allocation of this "
			"thread's device", what);
	return rc;
}

static int emu_dalloc(void **p, size_t bytes, char *err)
{
	size_t n = (bytes + 63) & ~(size_t)63;
	void *q = aligned_alloc(64, n ? n : 64);

	if (!q || reg_add(q, bytes, cur_dev_get())) {
		free(q);
		return emu_err(err, DKV_E_NOMEM, "emulated GPU: %s", "out of memory");
	}
	memset(q, 0xa5, n ? n : 64);
	COUNT(dalloc);
	*p = q;
	return 0;
}

static int emu_halloc(void **p, size_t bytes, char *err)
{
	size_t n = (bytes + 63) & ~(size_t)63;
	void *q = aligned_alloc(64, n ? n : 64);

	if (!q || reg_add(q, bytes, -1)) {
		free(q);
		return emu_err(err, DKV_E_NOMEM, "emulated GPU: %s", "out of pinned memory");
	}
	COUNT(halloc);
	*p = q;
	return 0;
}

static void emu_free(void *p)
{
	if (!p)
		return;
	reg_del(p);
	free(p);
}

static int emu_put(void *dst, const void *src, size_t bytes, char *err)
{
	COUNT(put);
	if (failing("put", err) || reg_check(dst, bytes, 0, "put", err))
		return DKV_E_INTERNAL;
	memcpy(dst, src, bytes);
	return 0;
}

static int emu_get(void *dst, const void *src, size_t bytes, char *err)
{
	COUNT(get);
	if (reg_check(src, bytes, 0, "get", err))
		return DKV_E_INTERNAL;
	memcpy(dst, src, bytes);
	return 0;
}

static int emu_copy(void *dst, const void *src, size_t bytes, char *err)
{
	if (reg_check(dst, bytes, 0, "copy", err) || reg_check(src, bytes, 0, "copy", err))
		return DKV_E_INTERNAL;
	memmove(dst, src, bytes);
	return 0;
}

static int emu_memset0(void *p, size_t bytes, char *err)
{
	if (reg_check(p, bytes, 0, "memset0", err))
		return DKV_E_INTERNAL;
	memset(p, 0, bytes);
	return 0;
}

/* ---- conversions and rows ---- */

static int emu_to_f32(const uint16_t *in, uint32_t dtype, float *out, size_t n, char *err)
{
	if (dtype == DKV_F16)
		krn_get()->f16_to_f32(in, out, n);
	else if (dtype == DKV_BF16)
		krn_get()->bf16_to_f32(in, out, n);
	else
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "to_f32 converts f16 or bf16");
	return 0;
}

static int emu_from_f32(const float *in, uint32_t dtype, uint16_t *out, size_t n, char *err)
{
	if (dtype == DKV_F16)
		krn_get()->f32_to_f16(in, out, n);
	else if (dtype == DKV_BF16)
		krn_get()->f32_to_bf16(in, out, n);
	else
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "from_f32 converts to 16 bits");
	return 0;
}

static const uint8_t *row_at(const struct krn_gpu_rows *r, uint64_t p)
{
	size_t es = r->dtype == DKV_F32 ? 4 : 2;
	uint64_t mask = ((uint64_t)1 << r->shift) - 1;

	return (const uint8_t *)r->pages[p >> r->shift] + (p & mask) * r->ld * es;
}

/* n rows (n <= KRN_BLOCK) as f32, as shard_rows_f32 converts them. */
static void rows_f32(const struct krn_gpu_rows *r, const uint64_t *pos, uint64_t first,
		     uint32_t n, uint32_t dim, float *dst)
{
	for (uint32_t i = 0; i < n; i++) {
		const void *src = row_at(r, pos ? pos[i] : first + i);
		float *d = dst + (size_t)i * dim;
		if (r->dtype == DKV_F16)
			krn_get()->f16_to_f32(src, d, dim);
		else if (r->dtype == DKV_BF16)
			krn_get()->bf16_to_f32(src, d, dim);
		else
			memcpy(d, src, dim * sizeof(float));
	}
}

/* ---- the kernels the shards use ---- */

static size_t emu_scan_ws(uint32_t nq, uint32_t first, uint32_t n)
{
	(void)nq;
	(void)first;
	(void)n;
	return 64;
}

/* The scan page by page, as a CPU shard calls krn_ops.scan. */
static int emu_scan(const struct krn_gpu_scan *s, char *err)
{
	struct krn_scan_q q = { s->nq, s->words, s->qc, s->tab, s->lim, s->thr, s->ca, s->cb,
				s->stride };
	uint64_t end = (uint64_t)s->first + s->n, mask = ((uint64_t)1 << s->keys.shift) - 1;

	COUNT(scan);
	if (failing("scan", err))
		return DKV_E_INTERNAL;
	if (!s->hit || !s->n_hit || !s->ws || s->nq > KRN_GPU_MAXQ || s->keys.shift < 6)
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "scan: bad arguments");
	memset(s->n_hit, 0, s->nq * sizeof(uint32_t));
	for (uint64_t p = s->first; p < end;) {
		uint64_t pg = p >> s->keys.shift, loc = p & mask;
		uint64_t seg = (mask + 1 - loc) < end - p ? mask + 1 - loc : end - p;
		struct krn_scan_keys k = {
			.codes = s->keys.codes[pg], .cls = s->keys.cls[pg], .norms = s->keys.norms[pg],
			.first = (uint32_t)loc, .n = (uint32_t)seg,
			.base = s->base + (uint32_t)(pg << s->keys.shift),
		};
		struct krn_scan_out o = {
			s->hit, s->hit_cap, s->n_hit,
			s->blk ? s->blk + (p / 64 - s->first / 64) : NULL, s->ld_blk,
		};
		krn_get()->scan(&q, &k, &o);
		p += seg;
	}
	return 0;
}

/* Logits of query j's listed rows, KRN_BLOCK rows per dot call, then scaled. */
static void fine_one(const float *qj, uint32_t dim, const struct krn_gpu_rows *k,
		     const uint32_t *pos, uint32_t n, float scale, float *logit, float *buf)
{
	uint64_t p64[KRN_BLOCK];

	for (uint32_t i = 0; i < n; i += KRN_BLOCK) {
		uint32_t m = n - i < KRN_BLOCK ? n - i : KRN_BLOCK;
		for (uint32_t r = 0; r < m; r++)
			p64[r] = pos ? pos[i + r] : i + r;
		rows_f32(k, p64, 0, m, dim, buf);
		krn_get()->dot(qj, 1, buf, dim, m, dim, logit + i, m);
		for (uint32_t r = 0; r < m; r++)
			logit[i + r] *= scale;
	}
}

static int emu_fine(const float *q, uint32_t nq, uint32_t dim, const struct krn_gpu_rows *k,
		    const uint32_t *pos, size_t ld_pos, const uint32_t *cnt, uint32_t n,
		    float scale, float *logit, size_t ld, char *err)
{
	float *buf;

	COUNT(fine);
	if (failing("fine", err))
		return DKV_E_INTERNAL;
	if (dim == 0 || dim > KRN_GPU_MAXDIM)
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "fine: bad dim");
	buf = malloc((size_t)KRN_BLOCK * dim * sizeof(float));
	if (!buf)
		return emu_err(err, DKV_E_NOMEM, "emulated GPU: %s", "out of memory");
	for (uint32_t j = 0; j < nq; j++)
		fine_one(q + (size_t)j * dim, dim, k, pos ? pos + j * ld_pos : NULL,
			 cnt ? cnt[j] : n, scale, logit + j * ld, buf);
	free(buf);
	return 0;
}

/* One chunk [c0, c1): runs inside a page of at most KRN_BLOCK rows. */
static void range_chunk(const float *q, uint32_t nq, uint32_t dim, float scale,
			const struct krn_gpu_rows *k, const struct krn_gpu_rows *v, uint64_t c0,
			uint64_t c1, struct krn_part *st, float *kb, float *vb)
{
	uint64_t page = (uint64_t)1 << k->shift;

	for (uint64_t t = c0; t < c1;) {
		uint64_t pe = (t / page + 1) * page, e = pe < c1 ? pe : c1;
		uint32_t n = e - t < KRN_BLOCK ? (uint32_t)(e - t) : KRN_BLOCK;
		rows_f32(k, NULL, t, n, dim, kb);
		rows_f32(v, NULL, t, n, dim, vb);
		krn_get()->attend(q, nq, kb, vb, dim, n, dim, scale, st);
		t += n;
	}
}

static int emu_attend_range(const float *q, uint32_t nq, uint32_t dim, float scale,
			    const struct krn_gpu_rows *k, const struct krn_gpu_rows *v,
			    uint64_t t0, uint64_t t1, uint32_t split,
			    const struct krn_gpu_part *part, char *err)
{
	struct krn_part st[KRN_GPU_MAXQ];
	float *kb, *vb;

	COUNT(attend_range);
	if (failing("attend_range", err))
		return DKV_E_INTERNAL;
	if (dim == 0 || dim > KRN_GPU_MAXDIM || nq == 0 || nq > KRN_GPU_MAXQ || !split ||
	    t1 < t0)
		return emu_err(err, DKV_E_INVAL, "emulated GPU: %s", "attend_range: bad arguments");
	kb = malloc((size_t)KRN_BLOCK * dim * sizeof(float));
	vb = malloc((size_t)KRN_BLOCK * dim * sizeof(float));
	for (uint64_t c = 0; kb && vb && t0 + c * split < t1; c++) {
		uint64_t c0 = t0 + c * split, c1 = c0 + split < t1 ? c0 + split : t1;
		for (uint32_t j = 0; j < nq; j++) {
			st[j].m = -INFINITY;
			st[j].s = 0.0f;
			st[j].acc = part->acc + (c * nq + j) * dim;
			memset(st[j].acc, 0, dim * sizeof(float));
		}
		range_chunk(q, nq, dim, scale, k, v, c0, c1, st, kb, vb);
		for (uint32_t j = 0; j < nq; j++) {
			part->m[c * nq + j] = st[j].m;
			part->s[c * nq + j] = st[j].s;
		}
	}
	free(kb);
	free(vb);
	return kb && vb ? 0 : emu_err(err, DKV_E_NOMEM, "emulated GPU: %s", "out of memory");
}

static int emu_hamming(const uint64_t *q, const uint64_t *codes, uint32_t words, uint32_t n,
		       uint16_t *dist, char *err)
{
	(void)err;
	krn_get()->hamming(q, codes, words, n, dist);
	return 0;
}

static int emu_merge(const struct krn_gpu_part *in, uint32_t nparts, uint32_t nq,
		     uint32_t dim, const struct krn_gpu_part *out, char *err)
{
	(void)err;
	for (uint32_t j = 0; j < nq; j++) {
		struct krn_part a = { in->m[j], in->s[j], out->acc + (size_t)j * dim };
		memmove(a.acc, in->acc + (size_t)j * dim, dim * sizeof(float));
		for (uint32_t c = 1; c < nparts; c++) {
			size_t at = (size_t)c * nq + j;
			struct krn_part b = { in->m[at], in->s[at], in->acc + at * dim };
			krn_get()->merge(&a, &b, dim);
		}
		out->m[j] = a.m;
		out->s[j] = a.s;
	}
	return 0;
}

/* ---- what the emulation does not provide ---- */

static int not_emulated(char *err, const char *what)
{
	return emu_err(err, DKV_E_UNSUPPORTED, "emulated GPU: %s is not emulated", what);
}

static int emu_encode(const float *P, uint32_t bits, uint32_t dim, const void *x,
		      uint32_t dtype, size_t ld_x, uint32_t n, uint64_t *codes,
		      uint8_t *sliced, uint32_t p0, char *err)
{
	(void)P, (void)bits, (void)dim, (void)x, (void)dtype, (void)ld_x, (void)n;
	(void)codes, (void)sliced, (void)p0;
	return not_emulated(err, "encode");
}

static int emu_select_top(const float *x, size_t ld, const uint32_t *cnt, uint32_t nrows,
			  uint32_t n, uint32_t k, uint32_t *idx, uint32_t *got, char *err)
{
	(void)x, (void)ld, (void)cnt, (void)nrows, (void)n, (void)k, (void)idx, (void)got;
	return not_emulated(err, "select_top");
}

static size_t emu_select_ham_ws(uint32_t n)
{
	return n;
}

static int emu_select_ham(const uint16_t *dist, uint32_t n, uint32_t bits, uint32_t k,
			  uint32_t *idx, void *ws, char *err)
{
	(void)dist, (void)n, (void)bits, (void)k, (void)idx, (void)ws;
	return not_emulated(err, "select_ham");
}

static int emu_attend_list(const float *logit, size_t ld, const uint32_t *pos, size_t ld_pos,
			   const uint32_t *cnt, uint32_t nq, uint32_t n,
			   const struct krn_gpu_rows *v, uint32_t dim,
			   const struct krn_gpu_part *st, char *err)
{
	(void)logit, (void)ld, (void)pos, (void)ld_pos, (void)cnt, (void)nq, (void)n;
	(void)v, (void)dim, (void)st;
	return not_emulated(err, "attend_list");
}

static size_t emu_search_ws(uint32_t nq, uint32_t dim, uint64_t len, uint32_t cand,
			    uint32_t top_k)
{
	(void)nq, (void)dim, (void)len, (void)cand, (void)top_k;
	return 64;
}

static int emu_search(const struct krn_gpu_search *a, char *err)
{
	(void)a;
	return not_emulated(err, "search");
}

static int emu_fill(void *p, uint32_t dtype, size_t n, uint64_t seed, char *err)
{
	(void)p, (void)dtype, (void)n, (void)seed;
	return not_emulated(err, "fill");
}

static int emu_mark(void **ev, char *err)
{
	(void)ev;
	return not_emulated(err, "mark");
}

static int emu_elapsed(void *ev0, void *ev1, float *ms, char *err)
{
	(void)ev0, (void)ev1, (void)ms;
	return not_emulated(err, "elapsed");
}

/* ---- the collective: device buffers of every rank, met in host memory ---- */

struct emu_coll {
	pthread_barrier_t bar;
	pthread_mutex_t lock;
	char *stage;
	size_t cap;
	int *devices;
	int bad;
};

static int emu_allgather(struct shard_coll *c, int rank, const void *send, void *recv,
			 size_t bytes)
{
	struct emu_coll *st = c->impl;
	char err[KRN_MSGLEN];
	int bad = cur_dev_get() != st->devices[rank] || reg_check(send, bytes, 0, "send", err) ||
		  reg_check(recv, bytes * (size_t)c->nranks, 0, "recv", err);

	COUNT(gather);
	bad |= failing("gather", err);
	pthread_mutex_lock(&st->lock);
	if (st->cap < bytes) {
		char *p = realloc(st->stage, bytes * (size_t)c->nranks);
		if (p) {
			st->stage = p;
			st->cap = bytes;
		}
	}
	bad |= st->cap < bytes;
	pthread_mutex_unlock(&st->lock);
	pthread_barrier_wait(&st->bar);
	if (!bad)
		memcpy(st->stage + (size_t)rank * bytes, send, bytes);
	pthread_barrier_wait(&st->bar);
	if (!bad)
		memcpy(recv, st->stage, bytes * (size_t)c->nranks);
	pthread_barrier_wait(&st->bar);
	return bad ? DKV_E_INTERNAL : DKV_OK;
}

static void emu_coll_free(struct shard_coll *c)
{
	struct emu_coll *st = c->impl;

	pthread_barrier_destroy(&st->bar);
	pthread_mutex_destroy(&st->lock);
	free(st->stage);
	free(st->devices);
	free(st);
	free(c);
}

static const struct shard_coll_ops emu_coll_ops = { "emulated-nccl", emu_allgather,
						    emu_coll_free };

static int emu_coll_new(struct shard_coll **out, int nranks, const int *devices, char *err)
{
	struct shard_coll *c = calloc(1, sizeof(*c));
	struct emu_coll *st = calloc(1, sizeof(*st));
	const char *e = getenv("DASHKV_GPU_EMU_NCCL");

	if (e && !strcmp(e, "0")) {
		free(c);
		free(st);
		return emu_err(err, DKV_E_UNSUPPORTED, "emulated GPU: %s", "no NCCL here");
	}
	if (!c || !st || !(st->devices = malloc((size_t)nranks * sizeof(int)))) {
		free(c);
		free(st);
		return emu_err(err, DKV_E_NOMEM, "emulated GPU: %s", "out of memory");
	}
	memcpy(st->devices, devices, (size_t)nranks * sizeof(int));
	pthread_barrier_init(&st->bar, NULL, (unsigned)nranks);
	pthread_mutex_init(&st->lock, NULL);
	c->ops = &emu_coll_ops;
	c->nranks = nranks;
	c->impl = st;
	*out = c;
	return 0;
}

const struct krn_gpu_ops dkv_cuda_module;

const struct krn_gpu_ops dkv_cuda_module = {
	.abi = KRN_GPU_ABI,
	.name = "emulated",
	.probe = emu_probe,
	.device = emu_device,
	.sync = emu_sync,
	.dev_name = emu_dev_name,
	.dalloc = emu_dalloc,
	.halloc = emu_halloc,
	.dfree = emu_free,
	.hfree = emu_free,
	.put = emu_put,
	.get = emu_get,
	.copy = emu_copy,
	.memset0 = emu_memset0,
	.to_f32 = emu_to_f32,
	.from_f32 = emu_from_f32,
	.encode = emu_encode,
	.hamming = emu_hamming,
	.scan_ws = emu_scan_ws,
	.scan = emu_scan,
	.select_top = emu_select_top,
	.select_ham_ws = emu_select_ham_ws,
	.select_ham = emu_select_ham,
	.fine = emu_fine,
	.attend_list = emu_attend_list,
	.attend_range = emu_attend_range,
	.merge = emu_merge,
	.search_ws = emu_search_ws,
	.search = emu_search,
	.fill = emu_fill,
	.mark = emu_mark,
	.elapsed = emu_elapsed,
	.coll_nccl_new = emu_coll_new,
};
