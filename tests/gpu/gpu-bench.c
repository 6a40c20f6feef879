/*
 * gpu-bench.c - the GPU benchmark of tests/gpu/device-check.sh.
 *
 *  copy:   device-to-device cudaMemcpy of 1 GiB; bandwidth counted as
 *          bytes read + bytes written per second (what the copy moves).
 *  scan:   the coarse scan over 32M keys of 128-bit codes for 8 queries
 *          (one GQA group) and for 1 query, without and with the tail;
 *          bytes counted are the ones the scan must read: codes and norm
 *          classes (17 B/key), plus the norms with the tail (21 B/key).
 *  decode: one decode step of one kv head (8 queries, head_dim 128, bf16)
 *          at 128K and 1M tokens: the module's GPU shard search against
 *          exact attention on the GPU (split-K flash decoding + merge),
 *          and at 1M the search with keys/values in mapped pinned host
 *          memory (only candidates cross the bus).
 *
 * Output: "name value unit" lines on stdout.  Times are means of the
 * repeated runs after one warm-up, taken with CUDA events.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "krn.h"
#include "krn_gpu.h"

#ifndef DKV_BUILD_MODULE
#define DKV_BUILD_MODULE NULL
#endif

static const struct krn_gpu_ops *g;
static char err[KRN_MSGLEN];

static void check(int rc, const char *what)
{
	if (rc) {
		fprintf(stderr, "gpu-bench: %s: %s\n", what, err);
		exit(1);
	}
}

static void *dmem(size_t bytes)
{
	void *p;

	check(g->dalloc(&p, bytes, err), "device allocation");
	return p;
}

static void *dcopy(const void *host, size_t bytes)
{
	void *p = dmem(bytes);

	check(g->put(p, host, bytes, err), "copy to device");
	return p;
}

static void *mark(void)
{
	void *ev;

	check(g->mark(&ev, err), "event");
	return ev;
}

static double since(void *ev0, int reps)
{
	float ms;

	check(g->elapsed(ev0, mark(), &ms, err), "event time");
	return (double)ms / reps;
}

static double copy_bw(void)
{
	size_t bytes = (size_t)1 << 30;
	void *a = dmem(bytes), *b = dmem(bytes);
	const int reps = 10;

	check(g->fill(a, 255, bytes, 1, err), "fill");
	check(g->copy(b, a, bytes, err), "copy");
	void *t0 = mark();
	for (int i = 0; i < reps; i++)
		check(g->copy(b, a, bytes, err), "copy");
	double ms = since(t0, reps);
	double gbs = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
	printf("copy_d2d_bytes %zu B\n", bytes);
	printf("copy_d2d_ms %.3f ms\n", ms);
	printf("copy_d2d_bw %.1f GB/s (read + write)\n", gbs);
	g->dfree(a);
	g->dfree(b);
	return gbs;
}

/* Query side of a scan for nq queries of 128-bit codes. */
struct qside {
	uint64_t *qc;
	float *tab, *thr, *ca, *cb;
	int32_t *lim;
};

static void qside_make(struct qside *s, uint32_t nq, int32_t lim, const uint64_t *qc_host)
{
	uint64_t qc[KRN_GPU_MAXQ * 2];
	float tab[KRN_GPU_MAXQ * 129], thr[KRN_GPU_MAXQ], ca[KRN_GPU_MAXQ], cb[KRN_GPU_MAXQ];
	int32_t lm[KRN_GPU_MAXQ * KRN_CLASSES];

	for (uint32_t j = 0; j < nq; j++) {
		qc[2 * j] = qc_host ? qc_host[2 * j] : 0x9e3779b97f4a7c15ull * (j + 1);
		qc[2 * j + 1] = qc_host ? qc_host[2 * j + 1] : 0xbf58476d1ce4e5b9ull * (j + 7);
		for (uint32_t h = 0; h <= 128; h++)
			tab[j * 129 + h] = cosf(3.14159265f * (float)h / 128.0f);
		for (uint32_t c = 0; c < KRN_CLASSES; c++)
			lm[j * KRN_CLASSES + c] = lim;
		thr[j] = -1e30f;
		ca[j] = 1.0f;
		cb[j] = -4.0f;
	}
	s->qc = dcopy(qc, nq * 16);
	s->tab = dcopy(tab, nq * 129 * 4);
	s->lim = dcopy(lm, sizeof(int32_t) * nq * KRN_CLASSES);
	s->thr = dcopy(thr, nq * 4);
	s->ca = dcopy(ca, nq * 4);
	s->cb = dcopy(cb, nq * 4);
}

static void qside_free(struct qside *s)
{
	g->dfree(s->qc);
	g->dfree(s->tab);
	g->dfree(s->lim);
	g->dfree(s->thr);
	g->dfree(s->ca);
	g->dfree(s->cb);
}

/* A page table over one allocation: pages of 2^shift rows, row_bytes each. */
static const void **pages_of(void *base, uint64_t rows, uint32_t shift, size_t row_bytes)
{
	uint64_t np = (rows + ((uint64_t)1 << shift) - 1) >> shift;
	const void **t = malloc(np * sizeof(*t));

	for (uint64_t p = 0; p < np; p++)
		t[p] = (char *)base + (p << shift) * row_bytes;
	const void **d = dcopy(t, np * sizeof(*t));
	free(t);
	return d;
}

static void scan_bench(double copy)
{
	const uint32_t n = 32u << 20, shift = 16, words = 2;
	uint8_t *codes = dmem((size_t)n * 16), *cls = dmem(n);
	float *norms = dmem((size_t)n * 4);
	const uint32_t nqs[2] = { 8, 1 };

	check(g->fill(codes, 255, (size_t)n * 16, 2, err), "fill");
	check(g->fill(cls, 255, n, 3, err), "fill");
	check(g->fill(norms, DKV_F32, n, 4, err), "fill");
	struct krn_gpu_codes k = {
		(const uint8_t *const *)pages_of(codes, n, shift, 16),
		(const float *const *)pages_of(norms, n, shift, 4),
		(const uint8_t *const *)pages_of(cls, n, shift, 1), shift,
	};
	printf("scan_keys %u\n", n);
	for (int t = 0; t < 2; t++)
		for (int tail = 0; tail < 2; tail++) {
			uint32_t nq = nqs[t], nblk = n / 64;
			struct qside q;
			qside_make(&q, nq, 40, NULL);
			struct krn_gpu_scan s = {
				.nq = nq, .words = words, .stride = 8, .qc = q.qc, .tab = q.tab,
				.lim = q.lim, .thr = q.thr, .ca = q.ca, .cb = q.cb, .keys = k,
				.first = 0, .n = n, .base = 0, .hit = dmem((size_t)nq * 4096 * 4),
				.hit_cap = 4096, .n_hit = dmem(nq * 4),
				.blk = tail ? dmem((size_t)nq * nblk * 4) : NULL, .ld_blk = nblk,
				.ws = dmem(g->scan_ws(nq, 0, n)),
			};
			const int reps = 20;
			check(g->scan(&s, err), "scan");
			void *t0 = mark();
			for (int i = 0; i < reps; i++)
				check(g->scan(&s, err), "scan");
			double ms = since(t0, reps);
			double bytes = (double)n * (tail ? 21.0 : 17.0);
			double gbs = bytes / (ms * 1e-3) / 1e9;
			uint32_t hits[KRN_GPU_MAXQ];
			check(g->get(hits, s.n_hit, nq * 4, err), "hits");
			printf("scan_nq%u%s_ms %.3f ms\n", nq, tail ? "_tail" : "", ms);
			printf("scan_nq%u%s_bw %.1f GB/s (%.0f B/key)\n", nq, tail ? "_tail" : "", gbs,
			       tail ? 21.0 : 17.0);
			printf("scan_nq%u%s_codes_bw %.1f GB/s\n", nq, tail ? "_tail" : "",
			       (double)n * 16 / (ms * 1e-3) / 1e9);
			printf("scan_nq%u%s_share_of_copy %.1f %%\n", nq, tail ? "_tail" : "",
			       100.0 * gbs / copy);
			printf("scan_nq%u%s_hits_q0 %u\n", nq, tail ? "_tail" : "", hits[0]);
			g->dfree(s.hit);
			g->dfree(s.n_hit);
			g->dfree(s.blk);
			g->dfree(s.ws);
			qside_free(&q);
		}
	g->dfree((void *)k.codes);
	g->dfree((void *)k.norms);
	g->dfree((void *)k.cls);
	g->dfree(codes);
	g->dfree(cls);
	g->dfree(norms);
}

/* One decode step of one kv head at n tokens; host: K/V in mapped pinned memory. */
static void decode_bench(uint32_t n, int host)
{
	const uint32_t nq = 8, dim = 128, shift = 16, words = 2;
	const uint32_t cand = 4096, top_k = 512, sinks = 64, window = 1024;
	size_t kv_bytes = (size_t)n * dim * 2;
	void *K, *V;
	const char *tag = host ? "_hostkv" : "";

	if (host) {
		check(g->halloc(&K, kv_bytes, err), "pinned allocation");
		check(g->halloc(&V, kv_bytes, err), "pinned allocation");
	} else {
		K = dmem(kv_bytes);
		V = dmem(kv_bytes);
	}
	check(g->fill(K, DKV_BF16, (size_t)n * dim, 11, err), "fill");
	check(g->fill(V, DKV_BF16, (size_t)n * dim, 12, err), "fill");
	float *P = dmem(128 * dim * 4), *q = dmem(nq * dim * 4);
	check(g->fill(P, DKV_F32, 128 * dim, 13, err), "fill");
	check(g->fill(q, DKV_F32, nq * dim, 14, err), "fill");
	uint8_t *codes = dmem((size_t)n * 16), *cls = dmem(n);
	float *norms = dmem((size_t)n * 4);
	uint64_t *qc = dmem(nq * 16), qc_host[KRN_GPU_MAXQ * 2];
	check(g->encode(P, 128, dim, K, DKV_BF16, dim, n, NULL, codes, 0, err), "encode keys");
	check(g->encode(P, 128, dim, q, DKV_F32, dim, nq, qc, NULL, 0, err), "encode queries");
	check(g->fill(cls, 255, n, 15, err), "fill");
	check(g->fill(norms, DKV_F32, n, 16, err), "fill");
	check(g->sync(err), "sync");
	check(g->get(qc_host, qc, nq * 16, err), "query codes");
	struct qside qs;
	qside_make(&qs, nq, 50, qc_host);
	struct krn_gpu_rows kr = { pages_of(K, n, shift, dim * 2), shift, DKV_BF16, dim };
	struct krn_gpu_rows vr = { pages_of(V, n, shift, dim * 2), shift, DKV_BF16, dim };
	struct krn_gpu_search a = {
		.nq = nq, .dim = dim, .words = words, .dtype = DKV_BF16,
		.scale = 1.0f / sqrtf((float)dim), .q = q,
		.scan = { .nq = nq, .words = words, .stride = 8, .qc = qs.qc, .tab = qs.tab,
			  .lim = qs.lim, .thr = qs.thr, .ca = qs.ca, .cb = qs.cb,
			  .keys = { (const uint8_t *const *)pages_of(codes, n, shift, 16),
				    (const float *const *)pages_of(norms, n, shift, 4),
				    (const uint8_t *const *)pages_of(cls, n, shift, 1), shift } },
		.k = kr, .v = vr, .len = n, .sinks = sinks, .window = window,
		.cand = cand, .top_k = top_k,
		.out = { dmem(nq * 4), dmem(nq * 4), dmem(nq * dim * 4) },
		.ws = dmem(g->search_ws(nq, dim, n, cand, top_k)),
		.n_hit = dmem(nq * 4),
	};
	const int reps = 20;
	check(g->search(&a, err), "search");
	void *t0 = mark();
	for (int i = 0; i < reps; i++)
		check(g->search(&a, err), "search");
	double ms_search = since(t0, reps);
	uint32_t nh[KRN_GPU_MAXQ];
	check(g->get(nh, a.n_hit, nq * 4, err), "hit counts");
	printf("decode_%uk%s_search_ms %.4f ms\n", n >> 10, tag, ms_search);
	printf("decode_%uk%s_hits_q0 %u (cand %u, top_k %u, sinks %u, window %u)\n", n >> 10,
	       tag, nh[0], cand, top_k, sinks, window);
	if (!host) {
		uint32_t split = 1024, parts = (n + split - 1) / split;
		struct krn_gpu_part pp = { dmem((size_t)parts * nq * 4), dmem((size_t)parts * nq * 4),
					   dmem((size_t)parts * nq * dim * 4) };
		check(g->attend_range(q, nq, dim, a.scale, &kr, &vr, 0, n, split, &pp, err), "exact");
		check(g->merge(&pp, parts, nq, dim, &a.out, err), "merge");
		t0 = mark();
		for (int i = 0; i < reps; i++) {
			check(g->attend_range(q, nq, dim, a.scale, &kr, &vr, 0, n, split, &pp, err),
			      "exact");
			check(g->merge(&pp, parts, nq, dim, &a.out, err), "merge");
		}
		double ms_exact = since(t0, reps);
		printf("decode_%uk_exact_ms %.4f ms\n", n >> 10, ms_exact);
		printf("decode_%uk_exact_kv_bw %.1f GB/s\n", n >> 10,
		       2.0 * (double)kv_bytes / (ms_exact * 1e-3) / 1e9);
		printf("decode_%uk_speedup %.2f x (exact / search)\n", n >> 10, ms_exact / ms_search);
		g->dfree(pp.m);
		g->dfree(pp.s);
		g->dfree(pp.acc);
	}
	qside_free(&qs);
	g->dfree((void *)kr.pages);
	g->dfree((void *)vr.pages);
	g->dfree((void *)a.scan.keys.codes);
	g->dfree((void *)a.scan.keys.norms);
	g->dfree((void *)a.scan.keys.cls);
	g->dfree(a.out.m);
	g->dfree(a.out.s);
	g->dfree(a.out.acc);
	g->dfree(a.ws);
	g->dfree(a.n_hit);
	g->dfree(P);
	g->dfree(q);
	g->dfree(qc);
	g->dfree(codes);
	g->dfree(cls);
	g->dfree(norms);
	if (host) {
		g->hfree(K);
		g->hfree(V);
	} else {
		g->dfree(K);
		g->dfree(V);
	}
}

int main(int argc, char **argv)
{
	char name[256];
	int rc = krn_gpu_load(getenv("DASHKV_CUDA_MODULE") ? NULL : DKV_BUILD_MODULE, &g, err);

	if (rc) {
		printf("SKIP: gpu-bench: %s\n", err);
		return rc == DKV_E_UNSUPPORTED ? 77 : 1;
	}
	check(g->device(0, err), "device");
	check(g->dev_name(0, name, sizeof(name), err), "device name");
	printf("device %s\n", name);
	if (argc > 1 && !strcmp(argv[1], "decode")) {
		decode_bench(128u << 10, 0);
		decode_bench(1u << 20, 0);
		decode_bench(1u << 20, 1);
		return 0;
	}
	double copy = copy_bw();
	if (argc > 1 && !strcmp(argv[1], "scan")) {
		scan_bench(copy);
		return 0;
	}
	scan_bench(copy);
	decode_bench(128u << 10, 0);
	decode_bench(1u << 20, 0);
	decode_bench(1u << 20, 1);
	return 0;
}
