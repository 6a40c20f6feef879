/*
 * scan.c - the coarse scan (krn scan) as the engine runs it at long
 * contexts, on keys and queries of its own: the scan command (every
 * kernel level this CPU runs, side by side, against the scalar
 * reference's hits) and measure_io, the memory read bandwidth and the
 * scan's share of it that the speed command reports.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "krn.h"
#include "engine.h"
#include "hash.h"
#include "bench.h"

/* ---- memory bandwidth and the coarse scan (krn coarse) ---- */

typedef uint64_t v2u64 __attribute__((vector_size(16)));

static uint64_t read_pass(const v2u64 *x, size_t n)
{
	v2u64 a = { 0, 0 }, b = a, c = a, d = a;
	size_t i;

	for (i = 0; i + 4 <= n; i += 4) {
		a += x[i];
		b += x[i + 1];
		c += x[i + 2];
		d += x[i + 3];
	}
	a += b + c + d;
	return a[0] + a[1];
}

#define SCAN_ROUNDS 9 /* bandwidth and scan passes, side by side */

#define HUGE_2M ((size_t)2 << 20)

/*
 * Memory as the engine's store pages get it: 2 MiB aligned, with the
 * advice to back it with huge pages, so the bandwidth and the scan read
 * through the same kind of page mapping as a step does.
 */
static void *big_alloc(size_t bytes)
{
	size_t sz = (bytes + HUGE_2M - 1) & ~(HUGE_2M - 1);
	void *p = aligned_alloc(HUGE_2M, sz);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", sz);
		exit(1);
	}
#ifdef MADV_HUGEPAGE
	madvise(p, sz, MADV_HUGEPAGE); /* advice only */
#endif
	return p;
}

/*
 * One single-thread streaming read of a buffer much larger than the
 * caches, in seconds; the sum read goes to *sink, so the read is done.
 */
static double bw_pass(const v2u64 *x, size_t bytes, volatile uint64_t *sink)
{
	uint64_t t0 = now_ns();

	*sink += read_pass(x, bytes / sizeof(v2u64));
	return (now_ns() - t0) / 1e9;
}

/*
 * The engine's coarse filter as it runs at long contexts: krn scan over
 * pages of byte-sliced codes with norms and norm classes, a threshold that
 * lets about 0.25% of keys through, and the tail estimate from every
 * stride-th key, the engine's stride for the context.  A step scans every
 * kv head's keys, so the keys are tokens x kv heads (168 MiB at 1M tokens
 * and 8 kv heads): more than a last-level cache holds, as in the engine.
 * Norms are spread over [8, 12]; classes and their stage-1 limits are the
 * engine's (rt_hash_class, rt_hash_probe_limits: 8 classes per octave
 * around 10).
 */
struct scan_data {
	uint32_t tokens, n, nq, words, stride; /* n = tokens x kv heads */
	uint8_t *codes, *cls;
	uint64_t *qc;
	float *norms, *tab, *thr, *ca, *cb, *blk;
	int32_t *lim;
	uint32_t *hit, *n_hit;
	struct rt_hash hm; /* its norm classes only */
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

#define SCAN_HIT_CAP 65536u

/* Threshold and stage-1 limit of query j: the 0.25% quantile of a sample. */
static void scan_threshold(struct scan_data *d, uint32_t j, uint64_t *s)
{
	uint32_t bits = 64 * d->words, ns = 4096;
	const float *tab = d->tab + (size_t)j * (bits + 1);
	float e[4096];

	for (uint32_t i = 0; i < ns; i++) {
		uint32_t p = (uint32_t)(splitmix(s) % d->n);
		uint64_t code[4];
		krn_code_read(krn_code_at(d->codes, d->words, p), d->words, code);
		uint32_t h = 0;
		for (uint32_t w = 0; w < d->words; w++)
			h += (uint32_t)__builtin_popcountll(code[w] ^ d->qc[j * d->words + w]);
		e[i] = d->norms[p] * tab[h];
	}
	for (uint32_t i = 0; i < 10; i++) /* the 10th largest of 4096 */
		for (uint32_t k = i + 1; k < ns; k++)
			if (e[k] > e[i]) {
				float t = e[i];
				e[i] = e[k];
				e[k] = t;
			}
	d->thr[j] = e[9];
	rt_hash_probe_limits(&d->hm, tab, d->thr[j], d->lim + j * KRN_CLASSES);
	d->ca[j] = 1.0f;
	d->cb[j] = -d->thr[j] - 30.0f;
}

/* The keys of tokens (whole pages) x kv_heads, for groups of nq queries. */
static struct scan_data scan_data_of(uint32_t tokens, uint32_t kv_heads, uint32_t nq)
{
	uint32_t tok = tokens < CHUNK ? CHUNK : tokens / CHUNK * CHUNK;

	return (struct scan_data){ .tokens = tok, .n = tok * kv_heads, .nq = nq, .words = 2,
				   .stride = rt_tail_stride(tok),
				   .hm = { .bits = 128, .mu_set = 1, .max_norm = 12.0f,
					   .norm_ref = 10.0f } };
}

static void scan_setup(struct scan_data *d)
{
	uint64_t s = 12345;
	uint32_t bits = 64 * d->words;

	/* the scan reads whole 32-key groups with aligned loads */
	d->codes = big_alloc((size_t)d->n * d->words * 8);
	d->cls = big_alloc(d->n);
	d->norms = big_alloc((size_t)d->n * sizeof(float));
	d->qc = xmalloc((size_t)d->nq * d->words * sizeof(uint64_t));
	d->tab = xmalloc((size_t)d->nq * (bits + 1) * sizeof(float));
	d->thr = xmalloc(d->nq * sizeof(float));
	d->ca = xmalloc(d->nq * sizeof(float));
	d->cb = xmalloc(d->nq * sizeof(float));
	d->lim = xmalloc(d->nq * KRN_CLASSES * sizeof(int32_t));
	d->blk = xmalloc((size_t)d->nq * (CHUNK / 64) * sizeof(float));
	d->hit = xmalloc((size_t)d->nq * SCAN_HIT_CAP * sizeof(uint32_t));
	d->n_hit = xmalloc(d->nq * sizeof(uint32_t));
	for (uint32_t p = 0; p < d->n; p++) {
		uint64_t code[4];
		for (uint32_t w = 0; w < d->words; w++)
			code[w] = splitmix(&s);
		krn_code_write((uint8_t *)krn_code_at(d->codes, d->words, p), d->words, code);
		d->norms[p] = 8.0f + (float)(splitmix(&s) % 1000) / 250.0f;
		d->cls[p] = rt_hash_class(&d->hm, d->norms[p]);
	}
	for (uint32_t j = 0; j < d->nq * d->words; j++)
		d->qc[j] = splitmix(&s);
	for (uint32_t j = 0; j < d->nq; j++) {
		for (uint32_t h = 0; h <= bits; h++)
			d->tab[j * (bits + 1) + h] = cosf((float)M_PI * h / bits);
		scan_threshold(d, j, &s);
	}
}

static void scan_free(struct scan_data *d)
{
	free(d->codes);
	free(d->cls);
	free(d->norms);
	free(d->qc);
	free(d->tab);
	free(d->thr);
	free(d->ca);
	free(d->cb);
	free(d->lim);
	free(d->blk);
	free(d->hit);
	free(d->n_hit);
}

/* one pass of kernel table k's scan for nq queries over all keys, page by page */
static double scan_pass(struct scan_data *d, const struct krn_ops *k, uint32_t nq)
{
	struct krn_scan_q q = { nq, d->words, d->qc, d->tab, d->lim, d->thr, d->ca, d->cb,
				d->stride };
	uint64_t t0 = now_ns();

	memset(d->n_hit, 0, nq * sizeof(uint32_t));
	for (uint32_t i = 0; i < d->n; i += CHUNK) {
		struct krn_scan_keys keys = {
			krn_code_at(d->codes, d->words, i), d->cls + i, d->norms + i, 0,
			d->n - i < CHUNK ? d->n - i : CHUNK, i
		};
		struct krn_scan_out o = { d->hit, SCAN_HIT_CAP, d->n_hit, d->blk, CHUNK / 64 };
		k->scan(&q, &keys, &o);
	}
	return (now_ns() - t0) / 1e9;
}

/*
 * The bandwidth and the scan, side by side: each round reads the
 * bandwidth buffer once, then makes one scan pass with one query and one
 * with the group.  A scan's share of the bandwidth is taken per round,
 * against the read made just before it, and the median of the rounds'
 * shares is reported, so that a noisy neighbour slowing the memory for a
 * while moves both sides of a ratio alike.
 */
void measure_io(uint32_t mib, uint32_t tokens, uint32_t kv_heads, uint32_t nq,
		       struct bw_result *bw, struct scan_result *r)
{
	struct scan_data d = scan_data_of(tokens, kv_heads, nq);
	size_t bytes = (size_t)mib << 20;
	v2u64 *x = big_alloc(bytes);
	double tb[SCAN_ROUNDS], ts[2][SCAN_ROUNDS], sh[2][SCAN_ROUNDS];
	volatile uint64_t sink = 0;

	*bw = (struct bw_result){ 0, mib, SCAN_ROUNDS };
	*r = (struct scan_result){ .n = d.n, .nq = nq, .words = 2, .bytes_key = 2 * 8 + 4 + 1,
				   .tokens = d.tokens, .kv_heads = kv_heads, .stride = d.stride };
	memset(x, 1, bytes);
	scan_setup(&d);
	bw_pass(x, bytes, &sink); /* warm up: page tables, the first touch */
	scan_pass(&d, krn_get(), 1);
	scan_pass(&d, krn_get(), nq);
	for (int i = 0; i < SCAN_ROUNDS; i++) {
		tb[i] = bw_pass(x, bytes, &sink);
		for (int v = 0; v < 2; v++) {
			ts[v][i] = scan_pass(&d, krn_get(), v ? nq : 1);
			sh[v][i] = (double)d.n * r->bytes_key / ts[v][i] / (bytes / tb[i]);
		}
	}
	bw->gbps = bytes / median_of(tb, SCAN_ROUNDS) / 1e9;
	for (int v = 0; v < 2; v++) {
		double t = median_of(ts[v], SCAN_ROUNDS);
		r->gbps[v] = (double)d.n * r->bytes_key / t / 1e9;
		r->ns_key[v] = t * 1e9 / d.n;
		r->share[v] = median_of(sh[v], SCAN_ROUNDS);
	}
	scan_free(&d);
	free(x);
}

/* ================= scan ================= */

/*
 * The coarse scan of every vector kernel level this CPU runs, side by
 * side: the speed command's keys and queries, and per round one pass per
 * level with one query and one with the group, so that the machine's
 * noise falls on all levels alike.  Every level must find the scalar
 * reference's hits (the reference is timed only when it is alone).
 */
static uint64_t hits_digest(const struct scan_data *d, uint32_t nq)
{
	uint64_t h = 0;

	for (uint32_t j = 0; j < nq; j++) {
		uint32_t n = d->n_hit[j] < SCAN_HIT_CAP ? d->n_hit[j] : SCAN_HIT_CAP;
		h = mix64(h ^ d->n_hit[j]);
		for (uint32_t i = 0; i < n; i++)
			h = mix64(h ^ d->hit[(size_t)j * SCAN_HIT_CAP + i]);
	}
	return h;
}

static void scan_print_text(const struct scan_data *d, uint32_t kv_heads,
			    const struct krn_ops *const *lv, double ns[][2], uint32_t i0,
			    uint32_t nl, int bad)
{
	printf("dashkv-bench scan: %u tokens x %u kv heads = %u keys, 128-bit codes + f32 norm + "
	       "norm class = 21 B/key, tail from one key in %u; medians of %d rounds, levels "
	       "alternating\n", d->tokens, kv_heads, d->n, d->stride, SCAN_ROUNDS);
	printf("%-8s %14s %14s %15s\n", "level", "1 q ns/key", "group ns/key", "group speed-up");
	for (uint32_t i = i0; i < nl; i++)
		printf("%-8s %14.3f %14.3f %14.2fx\n", lv[i]->name, ns[i][0], ns[i][1],
		       ns[i0][1] / ns[i][1]);
	printf("group: %u queries per pass; speed-up against %s; hits of %u levels against the "
	       "scalar reference: %s\n", d->nq, lv[i0]->name, nl, bad ? "DIFFER" : "identical");
}

static void scan_print_json(const struct scan_data *d, uint32_t kv_heads,
			    const struct krn_ops *const *lv, double ns[][2], uint32_t i0,
			    uint32_t nl, int bad)
{
	printf("{\"command\": \"scan\", \"tokens\": %u, \"kv_heads\": %u, \"keys\": %u, "
	       "\"bytes_per_key\": 21, \"stride\": %u, \"group\": %u, \"rounds\": %d, "
	       "\"levels_checked\": %u, \"hits_identical\": %s, \"levels\": [",
	       d->tokens, kv_heads, d->n, d->stride, d->nq, SCAN_ROUNDS, nl, bad ? "false" : "true");
	for (uint32_t i = i0; i < nl; i++)
		printf("%s{\"name\": \"%s\", \"one_query_ns_key\": %.4f, \"group_ns_key\": %.4f, "
		       "\"group_speedup\": %.4f}", i > i0 ? ", " : "", lv[i]->name, ns[i][0],
		       ns[i][1], ns[i0][1] / ns[i][1]);
	printf("]}\n");
}

int cmd_scan(const struct opts *o)
{
	uint32_t nq = o->heads / o->kv_heads, nl = 0, bad = 0;
	struct scan_data d = scan_data_of(o->scan_tokens, o->kv_heads, nq);
	const struct krn_ops *lv[KRN_NLEVELS];
	double t[KRN_NLEVELS][2][SCAN_ROUNDS];
	uint64_t dig[KRN_NLEVELS][2];

	for (int l = 0; l < KRN_NLEVELS; l++) {
		const struct krn_ops *k = krn_get_level((enum krn_level)l);
		if (k)
			lv[nl++] = k;
	}
	scan_setup(&d);
	for (uint32_t i = 0; i < nl; i++) /* warm up; the hits of each level */
		for (int v = 0; v < 2; v++) {
			scan_pass(&d, lv[i], v ? nq : 1);
			dig[i][v] = hits_digest(&d, v ? nq : 1);
			bad |= dig[i][v] != dig[0][v];
		}
	uint32_t i0 = nl > 1; /* the scalar reference is lv[0] */
	for (int r = 0; r < SCAN_ROUNDS; r++)
		for (uint32_t i = i0; i < nl; i++)
			for (int v = 0; v < 2; v++)
				t[i][v][r] = scan_pass(&d, lv[i], v ? nq : 1);
	double ns[KRN_NLEVELS][2];
	for (uint32_t i = i0; i < nl; i++)
		for (int v = 0; v < 2; v++)
			ns[i][v] = median_of(t[i][v], SCAN_ROUNDS) * 1e9 / d.n;
	if (o->json)
		scan_print_json(&d, o->kv_heads, lv, ns, i0, nl, bad);
	else
		scan_print_text(&d, o->kv_heads, lv, ns, i0, nl, bad);
	scan_free(&d);
	return bad ? 1 : 0;
}
