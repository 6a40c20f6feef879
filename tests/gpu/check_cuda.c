/*
 * check_cuda.c - every CUDA kernel of the GPU module against the scalar
 * reference (kernels/cpu/ref.c, select.c, convert.c) on the same inputs,
 * and a one-rank NCCL all-gather through the shard collective.
 *
 * Skips (exit 77, with the reason) when the module cannot be loaded or
 * no CUDA device is there.  Runs without fork (CK_NOFORK): a CUDA
 * context does not survive fork.
 *
 * Tolerances:
 *  - conversions, hamming, scan hits and hit counts, select_top,
 *    select_ham: bit for bit / index for index.
 *  - encode: a bit may differ from the reference only where
 *    |P_j . x| < 1e-4 |P_j| |x| (the GPU sums in the reference's order
 *    without fused multiply-adds, so in practice none differ).
 *  - scan tail blocks: 1e-4 relative to the block's mass (another order of
 *    additions, the GPU's expf).
 *  - fine: |got - ref| <= 2e-5 * scale * sum_d |q_d k_d| + 1e-30 (both sum
 *    in float, in different orders).
 *  - attend_list, attend_range + merge, search: m exact where the maximum
 *    is taken over the same logits, else within 1e-5 * (1 + |m|); the
 *    normalised output acc / s within 1e-4 * max |v| per element; s
 *    within 1e-4 relative after rescaling to the same m.
 *  - merge: s and acc within 1e-5 relative to the CPU fold.
 *
 * Sizes are odd on purpose: n = 1001, 3001, key ranges that start and end
 * inside a 64-key block, dims 72 and 136, pages of 2048 keys so that the
 * scan and the row gathers cross pages.
 */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "krn.h"
#include "krn_gpu.h"
#include "coll.h"

#ifndef DKV_BUILD_MODULE
#define DKV_BUILD_MODULE NULL
#endif

static const struct krn_gpu_ops *g;
static char err[KRN_MSGLEN];

#define expect(cond, ...) \
	do { \
		if (!(cond)) \
			ck_abort_msg(__VA_ARGS__); \
	} while (0)

#define OK(call) \
	do { \
		int rc_ = (call); \
		if (rc_) \
			ck_abort_msg("%s: %d %s", #call, rc_, err); \
	} while (0)

static uint64_t rng_state = 0x1234567887654321ull;

static uint64_t rnd64(void)
{
	uint64_t x = rng_state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return rng_state = x;
}

static float rndf(void)
{
	return (float)(rnd64() >> 40) * 0x1p-23f - 1.0f;
}

static void *dnew(size_t bytes)
{
	void *p = NULL;

	OK(g->dalloc(&p, bytes, err));
	OK(g->memset0(p, bytes, err));
	OK(g->sync(err));
	return p;
}

static void *dput(const void *host, size_t bytes)
{
	void *p = dnew(bytes);

	OK(g->put(p, host, bytes, err));
	return p;
}

static void dget(void *host, const void *dev, size_t bytes)
{
	OK(g->sync(err));
	OK(g->get(host, dev, bytes, err));
}

/* A flat device array as a one-page row source (pages table on the device). */
static const void **page_table(const void *const *pages, uint32_t npages)
{
	return dput(pages, npages * sizeof(*pages));
}

static uint16_t to16(float f, uint32_t dtype)
{
	return dtype == DKV_F16 ? krn_f32_to_f16_1(f) : krn_f32_to_bf16_1(f);
}

static float from16(uint16_t h, uint32_t dtype)
{
	return dtype == DKV_F16 ? krn_f16_to_f32_1(h) : krn_bf16_to_f32_1(h);
}

/* n rows of dim values of dtype: host f32 (already rounded) and raw bytes. */
static void make_rows(uint32_t dtype, size_t n, float *f, void *raw)
{
	for (size_t i = 0; i < n; i++) {
		float x = rndf();
		if (dtype == DKV_F32) {
			f[i] = x;
			((float *)raw)[i] = x;
		} else {
			uint16_t h = to16(x, dtype);
			((uint16_t *)raw)[i] = h;
			f[i] = from16(h, dtype);
		}
	}
}

/*
 * Multiples of 1/8 in [-1, 1]: exact in bf16, and every dot product of
 * them is exact in f32 whatever the order of additions, so the GPU and
 * the CPU rank the same logits and pick the same tokens.
 */
static void make_rows_q8(size_t n, float *f, uint16_t *raw)
{
	for (size_t i = 0; i < n; i++) {
		f[i] = roundf(rndf() * 8.0f) / 8.0f;
		raw[i] = krn_f32_to_bf16_1(f[i]);
	}
}

static size_t esz(uint32_t dtype)
{
	return dtype == DKV_F32 ? 4 : 2;
}

START_TEST(test_convert)
{
	const uint32_t dt[2] = { DKV_F16, DKV_BF16 };
	size_t n = 65536 + 4096;
	uint16_t *h = malloc(n * 2), *got16 = malloc(n * 2);
	float *f = malloc(n * 4), *gotf = malloc(n * 4);

	for (size_t i = 0; i < 65536; i++)
		h[i] = (uint16_t)i;
	for (size_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)rnd64();
		memcpy(&f[i], &u, 4); /* every bit pattern: NaN, Inf, subnormals */
	}
	uint16_t *dh = dput(h, 65536 * 2), *d16 = dnew(n * 2);
	float *df = dput(f, n * 4), *dfo = dnew(65536 * 4);
	for (int t = 0; t < 2; t++) {
		OK(g->to_f32(dh, dt[t], dfo, 65536, err));
		dget(gotf, dfo, 65536 * 4);
		for (size_t i = 0; i < 65536; i++) {
			float r = from16((uint16_t)i, dt[t]);
			expect(!memcmp(&r, &gotf[i], 4), "to_f32 dtype %u of %#zx", dt[t], i);
		}
		OK(g->from_f32(df, dt[t], d16, n, err));
		dget(got16, d16, n * 2);
		for (size_t i = 0; i < n; i++)
			expect(got16[i] == to16(f[i], dt[t]), "from_f32 dtype %u of %a: %#x", dt[t],
			       (double)f[i], got16[i]);
	}
	expect(g->to_f32(dh, DKV_F32, dfo, 1, err) == DKV_E_INVAL, "f32 source refused");
	g->dfree(dh);
	g->dfree(d16);
	g->dfree(df);
	g->dfree(dfo);
	free(h);
	free(got16);
	free(f);
	free(gotf);
}
END_TEST

static void check_encode(uint32_t bits, uint32_t dim, uint32_t dtype, uint32_t n)
{
	uint32_t words = bits / 64, p0 = 5, ng = (p0 + n + 31) / 32;
	size_t ld = dim + 3;
	float *P = malloc((size_t)bits * dim * 4), *x = malloc(n * ld * 4);
	void *raw = malloc(n * ld * 4);
	uint64_t *ref = malloc((size_t)n * words * 8), *got = malloc((size_t)n * words * 8);
	uint8_t *sl = calloc(ng, words * 256), *slref = calloc(ng, words * 256);

	for (size_t i = 0; i < (size_t)bits * dim; i++)
		P[i] = rndf();
	make_rows(dtype, n * ld, x, raw);
	krn_ops_scalar.encode(P, bits, dim, x, ld, n, ref);
	for (uint32_t i = 0; i < n; i++)
		krn_code_write((uint8_t *)krn_code_at(slref, words, p0 + i), words,
			       ref + (size_t)i * words);

	float *dP = dput(P, (size_t)bits * dim * 4);
	void *dx = dput(raw, n * ld * esz(dtype));
	uint64_t *dc = dnew((size_t)n * words * 8);
	uint8_t *ds = dnew((size_t)ng * words * 256);
	OK(g->encode(dP, bits, dim, dx, dtype, ld, n, dc, ds, p0, err));
	dget(got, dc, (size_t)n * words * 8);
	dget(sl, ds, (size_t)ng * words * 256);
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < bits; j++) {
			int a = (int)(ref[i * words + j / 64] >> (j % 64)) & 1;
			int b = (int)(got[i * words + j / 64] >> (j % 64)) & 1;
			if (a == b)
				continue;
			double d = 0, pn = 0, xn = 0;
			for (uint32_t k = 0; k < dim; k++) {
				d += (double)P[j * dim + k] * x[i * ld + k];
				pn += (double)P[j * dim + k] * P[j * dim + k];
				xn += (double)x[i * ld + k] * x[i * ld + k];
			}
			expect(fabs(d) < 1e-4 * sqrt(pn * xn), "encode bits %u dim %u row %u bit %u",
			       bits, dim, i, j);
		}
	/* the sliced copy holds the same bits as the words the GPU wrote */
	for (uint32_t i = 0; i < n; i++) {
		uint64_t c[4];
		krn_code_read(krn_code_at(sl, words, p0 + i), words, c);
		expect(!memcmp(c, got + (size_t)i * words, words * 8), "sliced code of row %u", i);
	}
	g->dfree(dP);
	g->dfree(dx);
	g->dfree(dc);
	g->dfree(ds);
	free(P);
	free(x);
	free(raw);
	free(ref);
	free(got);
	free(sl);
	free(slref);
}

START_TEST(test_encode)
{
	const uint32_t bits[3] = { 64, 128, 256 }, dims[3] = { 8, 72, 136 };
	const uint32_t dt[3] = { DKV_F32, DKV_F16, DKV_BF16 };

	for (int b = 0; b < 3; b++)
		for (int d = 0; d < 3; d++)
			check_encode(bits[b], dims[d], dt[(b + d) % 3], 37);
	expect(g->encode(NULL, 96, 8, NULL, DKV_F32, 8, 1, NULL, NULL, 0, err) == DKV_E_INVAL,
	       "96 bits refused");
}
END_TEST

START_TEST(test_hamming)
{
	uint32_t n = 1001;

	for (uint32_t words = 1; words <= 4; words *= 2) {
		uint64_t q[4], *c = malloc((size_t)n * words * 8);
		uint16_t *ref = malloc(n * 2), *got = malloc(n * 2);
		for (uint32_t w = 0; w < words; w++)
			q[w] = rnd64();
		for (size_t i = 0; i < (size_t)n * words; i++)
			c[i] = i % 7 ? rnd64() : q[i % words]; /* some zero distances */
		krn_ops_scalar.hamming(q, c, words, n, ref);
		uint64_t *dq = dput(q, words * 8), *dc = dput(c, (size_t)n * words * 8);
		uint16_t *dd = dnew(n * 2);
		OK(g->hamming(dq, dc, words, n, dd, err));
		dget(got, dd, n * 2);
		expect(!memcmp(ref, got, n * 2), "hamming words %u", words);
		g->dfree(dq);
		g->dfree(dc);
		g->dfree(dd);
		free(c);
		free(ref);
		free(got);
	}
}
END_TEST

/* Paged device copy of flat sliced codes / norms / cls (pages of 2^shift keys). */
struct dkeys {
	uint32_t npages;
	void **codes, **norms, **cls;
	struct krn_gpu_codes k;
};

static void dkeys_make(struct dkeys *d, const uint8_t *codes, const float *norms,
		       const uint8_t *cls, uint32_t words, uint32_t total, uint32_t shift)
{
	uint32_t per = 1u << shift;

	d->npages = (total + per - 1) / per;
	d->codes = calloc(d->npages, sizeof(void *));
	d->norms = calloc(d->npages, sizeof(void *));
	d->cls = calloc(d->npages, sizeof(void *));
	for (uint32_t p = 0; p < d->npages; p++) {
		uint32_t n = total - p * per < per ? total - p * per : per;
		d->codes[p] = dnew((size_t)per * words * 8);
		d->norms[p] = dnew((size_t)per * 4);
		d->cls[p] = dnew(per);
		OK(g->put(d->codes[p], codes + (size_t)p * per * words * 8,
			  ((size_t)n + 31) / 32 * words * 256, err));
		OK(g->put(d->norms[p], norms + (size_t)p * per, (size_t)n * 4, err));
		OK(g->put(d->cls[p], cls + (size_t)p * per, n, err));
	}
	d->k.codes = (const uint8_t *const *)page_table((const void *const *)d->codes, d->npages);
	d->k.norms = (const float *const *)page_table((const void *const *)d->norms, d->npages);
	d->k.cls = (const uint8_t *const *)page_table((const void *const *)d->cls, d->npages);
	d->k.shift = shift;
}

static void dkeys_free(struct dkeys *d)
{
	for (uint32_t p = 0; p < d->npages; p++) {
		g->dfree(d->codes[p]);
		g->dfree(d->norms[p]);
		g->dfree(d->cls[p]);
	}
	g->dfree((void *)d->k.codes);
	g->dfree((void *)d->k.norms);
	g->dfree((void *)d->k.cls);
	free(d->codes);
	free(d->norms);
	free(d->cls);
}

/* Query side of a scan: SimHash-like table, limits near the middle. */
struct hq {
	uint64_t qc[KRN_GPU_MAXQ * 4];
	float tab[KRN_GPU_MAXQ * 257];
	int32_t lim[KRN_GPU_MAXQ * KRN_CLASSES];
	float thr[KRN_GPU_MAXQ], ca[KRN_GPU_MAXQ], cb[KRN_GPU_MAXQ];
};

static void make_queries(struct hq *h, uint32_t nq, uint32_t words)
{
	uint32_t bits = 64 * words, tl = bits + 1;

	for (uint32_t j = 0; j < nq; j++) {
		for (uint32_t w = 0; w < words; w++)
			h->qc[j * words + w] = rnd64();
		for (uint32_t d = 0; d <= bits; d++)
			h->tab[j * tl + d] = cosf(3.14159265f * (float)d / (float)bits);
		for (uint32_t c = 0; c < KRN_CLASSES; c++)
			h->lim[j * KRN_CLASSES + c] = (int32_t)(bits / 2) - 2 - (int32_t)(c % 5) +
						      (int32_t)j % 3;
		h->thr[j] = 0.05f * (float)(j % 3);
		h->ca[j] = 2.0f;
		h->cb[j] = -1.0f;
	}
}

static void check_scan(uint32_t words, uint32_t nq, uint32_t stride, uint32_t first,
		       uint32_t n, uint32_t hit_cap, int tail)
{
	const uint32_t shift = 11;
	uint32_t total = first + n, per = 1u << shift;
	uint32_t alloc = (total + per - 1) / per * per;
	uint8_t *codes = aligned_alloc(32, (size_t)alloc * words * 8);
	float *norms = calloc(alloc, 4);
	uint8_t *cls = calloc(alloc, 1);
	struct hq h;
	uint32_t nblk = (total + 63) / 64 - first / 64;

	for (size_t i = 0; i < (size_t)alloc * words * 8; i++)
		codes[i] = (uint8_t)rnd64();
	for (uint32_t i = 0; i < alloc; i++) {
		norms[i] = 0.5f + (rndf() + 1.0f);
		cls[i] = (uint8_t)(rnd64() % 8);
	}
	make_queries(&h, nq, words);
	struct krn_scan_q q = { nq, words, h.qc, h.tab, h.lim, h.thr, h.ca, h.cb, stride };
	struct krn_scan_keys k = { codes, cls, norms, first, n, 7 };
	uint32_t *rhit = calloc((size_t)nq * hit_cap + 1, 4), *rn = calloc(nq, 4);
	float *rblk = calloc((size_t)nq * nblk, 4);
	struct krn_scan_out o = { rhit, hit_cap, rn, tail ? rblk : NULL, nblk };
	krn_ops_scalar.scan(&q, &k, &o);

	struct dkeys dk;
	dkeys_make(&dk, codes, norms, cls, words, total, shift);
	uint32_t tl = 64 * words + 1;
	struct krn_gpu_scan s = {
		.nq = nq, .words = words, .stride = stride,
		.qc = dput(h.qc, nq * words * 8), .tab = dput(h.tab, nq * tl * 4),
		.lim = dput(h.lim, nq * KRN_CLASSES * 4), .thr = dput(h.thr, nq * 4),
		.ca = dput(h.ca, nq * 4), .cb = dput(h.cb, nq * 4),
		.keys = dk.k, .first = first, .n = n, .base = 7,
		.hit = dnew((size_t)nq * hit_cap * 4 + 4), .hit_cap = hit_cap,
		.n_hit = dnew(nq * 4), .blk = tail ? dnew((size_t)nq * nblk * 4) : NULL,
		.ld_blk = nblk, .ws = dnew(g->scan_ws(nq, first, n)),
	};
	OK(g->scan(&s, err));
	uint32_t *ghit = calloc((size_t)nq * hit_cap + 1, 4), *gn = calloc(nq, 4);
	float *gblk = calloc((size_t)nq * nblk, 4);
	dget(gn, s.n_hit, nq * 4);
	dget(ghit, s.hit, (size_t)nq * hit_cap * 4);
	if (tail)
		dget(gblk, s.blk, (size_t)nq * nblk * 4);
	uint32_t any = 0;
	for (uint32_t j = 0; j < nq; j++) {
		expect(gn[j] == rn[j], "scan words %u query %u: %u hits, reference %u", words, j,
		       gn[j], rn[j]);
		uint32_t m = rn[j] < hit_cap ? rn[j] : hit_cap;
		any += m;
		for (uint32_t i = 0; i < m; i++)
			expect(ghit[j * hit_cap + i] == rhit[j * hit_cap + i],
			       "scan words %u query %u hit %u: %u, reference %u", words, j, i,
			       ghit[j * hit_cap + i], rhit[j * hit_cap + i]);
		for (uint32_t b = 0; tail && b < nblk; b++) {
			float r = rblk[j * nblk + b], x = gblk[j * nblk + b];
			expect(fabsf(r - x) <= 1e-4f * fabsf(r) + 1e-30f,
			       "scan tail words %u query %u block %u: %g, reference %g", words, j, b,
			       (double)x, (double)r);
		}
	}
	expect(any > 0, "scan test without hits (words %u)", words);
	g->dfree((void *)s.qc);
	g->dfree((void *)s.tab);
	g->dfree((void *)s.lim);
	g->dfree((void *)s.thr);
	g->dfree((void *)s.ca);
	g->dfree((void *)s.cb);
	g->dfree(s.hit);
	g->dfree(s.n_hit);
	g->dfree(s.blk);
	g->dfree(s.ws);
	dkeys_free(&dk);
	free(codes);
	free(norms);
	free(cls);
	free(rhit);
	free(rn);
	free(rblk);
	free(ghit);
	free(gn);
	free(gblk);
}

START_TEST(test_scan)
{
	for (uint32_t words = 1; words <= 4; words *= 2) {
		check_scan(words, 3, 1, 45, 3001, 4096, 1);
		check_scan(words, 8, 8, 2000, 5003, 4096, 1);
		check_scan(words, 16, 8, 0, 4096, 4096, 0);
		check_scan(words, 5, 1, 33, 3001, 7, 1); /* truncated hit lists */
	}
}
END_TEST

/* select_top against krn_select_top, ties and -INFINITY included. */
START_TEST(test_select_top)
{
	const uint32_t nrows = 4, n = 1000, ks[5] = { 1, 37, 999, 1000, 1500 };
	float *x = malloc(nrows * n * 4);
	uint32_t cnt[4] = { 1000, 513, 1, 0 }, scratch[1000], ref[1500];

	for (uint32_t i = 0; i < nrows * n; i++)
		x[i] = i % 17 == 0 ? -INFINITY : roundf(rndf() * 20.0f) / 4.0f;
	float *dx = dput(x, nrows * n * 4);
	uint32_t *dc = dput(cnt, sizeof(cnt)), *di = dnew(nrows * 1500 * 4), *dg = dnew(16);
	uint32_t *idx = malloc(nrows * 1500 * 4), got[4];
	for (int t = 0; t < 5; t++) {
		uint32_t k = ks[t];
		OK(g->select_top(dx, n, dc, nrows, n, k, di, dg, err));
		dget(idx, di, (size_t)nrows * k * 4);
		dget(got, dg, 16);
		for (uint32_t r = 0; r < nrows; r++) {
			uint32_t m = krn_select_top(x + r * n, cnt[r], k < cnt[r] ? k : cnt[r], ref,
						    scratch);
			expect(got[r] == m, "select_top k %u row %u: %u, reference %u", k, r,
			       got[r], m);
			expect(!memcmp(idx + (size_t)r * k, ref, m * 4), "select_top k %u row %u", k,
			       r);
		}
	}
	g->dfree(dx);
	g->dfree(dc);
	g->dfree(di);
	g->dfree(dg);
	free(x);
	free(idx);
}
END_TEST

/* select_ham against a counting oracle: the k smallest, ties to the lower index. */
START_TEST(test_select_ham)
{
	const uint32_t n = 5003, ks[4] = { 1, 100, 5003, 6000 };
	uint16_t *d = malloc(n * 2);
	uint32_t *idx = malloc(n * 4), *ref = malloc(n * 4);

	for (uint32_t i = 0; i < n; i++)
		d[i] = (uint16_t)(40 + rnd64() % 48);
	uint16_t *dd = dput(d, n * 2);
	uint32_t *di = dnew(n * 4);
	void *ws = dnew(g->select_ham_ws(n));
	for (int t = 0; t < 4; t++) {
		uint32_t k = ks[t] < n ? ks[t] : n, m = 0, left = k;
		/* oracle: whole distances first, then the ties in key order */
		uint32_t cut = 0;
		for (uint32_t c = 0, below = 0; c <= 128; c++) {
			uint32_t hc = 0;
			for (uint32_t i = 0; i < n; i++)
				hc += d[i] == c;
			if (below + hc >= k) {
				cut = c;
				left = k - below;
				break;
			}
			below += hc;
		}
		for (uint32_t i = 0; i < n; i++)
			if (d[i] < cut || (d[i] == cut && left > 0)) {
				if (d[i] == cut)
					left--;
				ref[m++] = i;
			}
		OK(g->select_ham(dd, n, 128, ks[t], di, ws, err));
		dget(idx, di, (size_t)m * 4);
		expect(m == k, "oracle count");
		expect(!memcmp(idx, ref, m * 4), "select_ham k %u", ks[t]);
	}
	g->dfree(dd);
	g->dfree(di);
	g->dfree(ws);
	free(d);
	free(idx);
	free(ref);
}
END_TEST

/* Rows in pages of 2^shift on the device: returns the page table. */
struct drows {
	uint32_t npages;
	void **pages;
	struct krn_gpu_rows r;
};

static void drows_make(struct drows *d, const void *raw, uint32_t dtype, size_t ld,
		       uint32_t rows, uint32_t shift)
{
	uint32_t per = 1u << shift;

	d->npages = (rows + per - 1) / per;
	d->pages = calloc(d->npages, sizeof(void *));
	for (uint32_t p = 0; p < d->npages; p++) {
		uint32_t n = rows - p * per < per ? rows - p * per : per;
		d->pages[p] = dnew((size_t)per * ld * esz(dtype));
		OK(g->put(d->pages[p], (const char *)raw + (size_t)p * per * ld * esz(dtype),
			  (size_t)n * ld * esz(dtype), err));
	}
	d->r.pages = page_table((const void *const *)d->pages, d->npages);
	d->r.shift = shift;
	d->r.dtype = dtype;
	d->r.ld = ld;
}

static void drows_free(struct drows *d)
{
	for (uint32_t p = 0; p < d->npages; p++)
		g->dfree(d->pages[p]);
	g->dfree((void *)d->r.pages);
	free(d->pages);
}

START_TEST(test_fine)
{
	const uint32_t nq = 3, dim = 72, rows = 3001, n = 257;
	const size_t ld = dim + 5;
	const uint32_t dt[3] = { DKV_F32, DKV_F16, DKV_BF16 };

	for (int t = 0; t < 3; t++) {
		float *q = malloc(nq * dim * 4), *k = malloc(rows * ld * 4);
		void *raw = malloc(rows * ld * 4);
		uint32_t *pos = malloc(nq * n * 4);
		float *ref = malloc(nq * n * 4), *got = malloc(nq * n * 4);
		for (uint32_t i = 0; i < nq * dim; i++)
			q[i] = rndf();
		make_rows(dt[t], rows * ld, k, raw);
		for (uint32_t i = 0; i < nq * n; i++)
			pos[i] = (uint32_t)(rnd64() % rows);
		struct drows dk;
		drows_make(&dk, raw, dt[t], ld, rows, 11);
		float *dq = dput(q, nq * dim * 4), *dl = dnew(nq * n * 4);
		uint32_t *dp = dput(pos, nq * n * 4);
		OK(g->fine(dq, nq, dim, &dk.r, dp, n, NULL, n, 0.5f, dl, n, err));
		dget(got, dl, nq * n * 4);
		for (uint32_t j = 0; j < nq; j++)
			for (uint32_t i = 0; i < n; i++) {
				const float *kr = k + (size_t)pos[j * n + i] * ld;
				double mag = 0;
				krn_ops_scalar.dot(q + j * dim, 1, kr, ld, 1, dim, &ref[j * n + i], 1);
				for (uint32_t d = 0; d < dim; d++)
					mag += fabs((double)q[j * dim + d] * kr[d]);
				double r = 0.5 * ref[j * n + i];
				expect(fabs(got[j * n + i] - r) <= 0.5 * 2e-5 * mag + 1e-30,
				       "fine dtype %u query %u row %u: %g, reference %g", dt[t], j, i,
				       (double)got[j * n + i], r);
			}
		drows_free(&dk);
		g->dfree(dq);
		g->dfree(dl);
		g->dfree(dp);
		free(q);
		free(k);
		free(raw);
		free(pos);
		free(ref);
		free(got);
	}
}
END_TEST

/* Compare a GPU state (m, s, acc) with a CPU one, normalised outputs. */
static void expect_part(const char *what, uint32_t j, float gm, float gs, const float *gacc,
			const struct krn_part *r, uint32_t dim, float vmax)
{
	if (r->m == -INFINITY) {
		expect(gm == -INFINITY && gs == 0.0f, "%s query %u: not empty", what, j);
		return;
	}
	expect(fabsf(gm - r->m) <= 1e-5f * (1.0f + fabsf(r->m)), "%s query %u: m %g vs %g", what,
	       j, (double)gm, (double)r->m);
	double gs_r = gs * exp((double)gm - r->m);
	expect(fabs(gs_r - r->s) <= 1e-4 * r->s, "%s query %u: s %g vs %g", what, j, gs_r,
	       (double)r->s);
	for (uint32_t d = 0; d < dim; d++) {
		double a = gacc[d] / gs, b = r->acc[d] / r->s;
		expect(fabs(a - b) <= 1e-4 * vmax, "%s query %u col %u: %g vs %g", what, j, d, a, b);
	}
}

START_TEST(test_attend_list)
{
	const uint32_t nq = 3, dim = 136, rows = 3001, n = 300;
	const size_t ld = dim;

	for (uint32_t dtype = DKV_F32; dtype <= DKV_BF16; dtype++) {
		float *v = malloc(rows * ld * 4), *lg = malloc(nq * n * 4);
		void *raw = malloc(rows * ld * 4);
		uint32_t *pos = malloc(nq * n * 4), cnt[3] = { n, 17, 0 };
		make_rows(dtype, rows * ld, v, raw);
		for (uint32_t i = 0; i < nq * n; i++) {
			pos[i] = (uint32_t)(rnd64() % rows);
			lg[i] = 4.0f * rndf();
		}
		struct drows dv;
		drows_make(&dv, raw, dtype, ld, rows, 11);
		float *dl = dput(lg, nq * n * 4);
		uint32_t *dp = dput(pos, nq * n * 4), *dc = dput(cnt, 12);
		struct krn_gpu_part st = { dnew(nq * 4), dnew(nq * 4), dnew(nq * dim * 4) };
		OK(g->attend_list(dl, n, dp, n, dc, nq, n, &dv.r, dim, &st, err));
		float gm[3], gs[3], *gacc = malloc(nq * dim * 4), *rows_f = malloc(n * dim * 4);
		dget(gm, st.m, 12);
		dget(gs, st.s, 12);
		dget(gacc, st.acc, nq * dim * 4);
		for (uint32_t j = 0; j < nq; j++) {
			float acc[136] = { 0 };
			struct krn_part r = { -INFINITY, 0.0f, acc };
			for (uint32_t i = 0; i < cnt[j]; i++)
				memcpy(rows_f + i * dim, v + (size_t)pos[j * n + i] * ld, dim * 4);
			for (uint32_t i0 = 0; i0 < cnt[j]; i0 += KRN_BLOCK) {
				uint32_t m = cnt[j] - i0 < KRN_BLOCK ? cnt[j] - i0 : KRN_BLOCK;
				krn_ops_scalar.attend_logits(lg + j * n + i0, rows_f + i0 * dim, dim, m,
							     dim, &r);
			}
			expect_part("attend_list", j, gm[j], gs[j], gacc + j * dim, &r, dim, 1.0f);
		}
		drows_free(&dv);
		g->dfree(dl);
		g->dfree(dp);
		g->dfree(dc);
		g->dfree(st.m);
		g->dfree(st.s);
		g->dfree(st.acc);
		free(v);
		free(lg);
		free(raw);
		free(pos);
		free(gacc);
		free(rows_f);
	}
}
END_TEST

/* CPU exact attention of query j over rows [t0, t1), reference kernels. */
static void ref_range(const float *q, const float *k, const float *v, size_t ld, uint32_t dim,
		      uint64_t t0, uint64_t t1, float scale, struct krn_part *st)
{
	for (uint64_t r = t0; r < t1; r += KRN_BLOCK) {
		uint32_t m = t1 - r < KRN_BLOCK ? (uint32_t)(t1 - r) : KRN_BLOCK;
		krn_ops_scalar.attend(q, 1, k + r * ld, v + r * ld, ld, m, dim, scale, st);
	}
}

START_TEST(test_attend_range_merge)
{
	const uint32_t nq = 4, dim = 136, rows = 3001;
	const size_t ld = dim;
	const uint32_t split = 500, nparts = (rows - 3 + split - 1) / split;

	for (uint32_t dtype = DKV_F32; dtype <= DKV_BF16; dtype++) {
		float *q = malloc(nq * dim * 4), *k = malloc(rows * ld * 4), *v = malloc(rows * ld * 4);
		void *rk = malloc(rows * ld * 4), *rv = malloc(rows * ld * 4);
		for (uint32_t i = 0; i < nq * dim; i++)
			q[i] = rndf();
		make_rows(dtype, rows * ld, k, rk);
		make_rows(dtype, rows * ld, v, rv);
		struct drows dk, dv;
		drows_make(&dk, rk, dtype, ld, rows, 11);
		drows_make(&dv, rv, dtype, ld, rows, 11);
		float *dq = dput(q, nq * dim * 4);
		struct krn_gpu_part parts = { dnew(nparts * nq * 4), dnew(nparts * nq * 4),
					      dnew(nparts * nq * dim * 4) };
		struct krn_gpu_part out = { dnew(nq * 4), dnew(nq * 4), dnew(nq * dim * 4) };
		float scale = 1.0f / sqrtf((float)dim);
		OK(g->attend_range(dq, nq, dim, scale, &dk.r, &dv.r, 3, rows, split, &parts, err));
		OK(g->merge(&parts, nparts, nq, dim, &out, err));
		float gm[4], gs[4], *gacc = malloc(nq * dim * 4);
		dget(gm, out.m, 16);
		dget(gs, out.s, 16);
		dget(gacc, out.acc, nq * dim * 4);
		for (uint32_t j = 0; j < nq; j++) {
			float acc[136] = { 0 };
			struct krn_part r = { -INFINITY, 0.0f, acc };
			ref_range(q + j * dim, k, v, ld, dim, 3, rows, scale, &r);
			expect_part("attend_range+merge", j, gm[j], gs[j], gacc + j * dim, &r, dim,
				    1.0f);
		}
		drows_free(&dk);
		drows_free(&dv);
		g->dfree(dq);
		g->dfree(parts.m);
		g->dfree(parts.s);
		g->dfree(parts.acc);
		g->dfree(out.m);
		g->dfree(out.s);
		g->dfree(out.acc);
		free(q);
		free(k);
		free(v);
		free(rk);
		free(rv);
		free(gacc);
	}
}
END_TEST

/* merge of given states against the reference fold, empty parts included. */
START_TEST(test_merge)
{
	const uint32_t nparts = 7, nq = 5, dim = 72;
	float *m = malloc(nparts * nq * 4), *s = malloc(nparts * nq * 4);
	float *acc = malloc(nparts * nq * dim * 4), *gacc = malloc(nq * dim * 4);
	float gm[5], gs[5];

	for (uint32_t i = 0; i < nparts * nq; i++) {
		int empty = i % 4 == 1;
		m[i] = empty ? -INFINITY : 8.0f * rndf();
		s[i] = empty ? 0.0f : 1.0f + 10.0f * (rndf() + 1.0f);
		for (uint32_t d = 0; d < dim; d++)
			acc[i * dim + d] = empty ? 0.0f : s[i] * rndf();
	}
	struct krn_gpu_part in = { dput(m, nparts * nq * 4), dput(s, nparts * nq * 4),
				   dput(acc, nparts * nq * dim * 4) };
	struct krn_gpu_part out = { dnew(nq * 4), dnew(nq * 4), dnew(nq * dim * 4) };
	OK(g->merge(&in, nparts, nq, dim, &out, err));
	dget(gm, out.m, nq * 4);
	dget(gs, out.s, nq * 4);
	dget(gacc, out.acc, nq * dim * 4);
	for (uint32_t j = 0; j < nq; j++) {
		float a[72];
		struct krn_part r = { m[j], s[j], a };
		memcpy(a, acc + j * dim, dim * 4);
		for (uint32_t c = 1; c < nparts; c++) {
			size_t sl = (size_t)c * nq + j;
			struct krn_part b = { m[sl], s[sl], acc + sl * dim };
			krn_ops_scalar.merge(&r, &b, dim);
		}
		expect(gm[j] == r.m, "merge query %u: m %g vs %g", j, (double)gm[j], (double)r.m);
		expect(fabsf(gs[j] - r.s) <= 1e-5f * r.s, "merge query %u: s", j);
		for (uint32_t d = 0; d < dim; d++)
			expect(fabsf(gacc[j * dim + d] - a[d]) <= 1e-5f * (fabsf(a[d]) + r.s),
			       "merge query %u col %u", j, d);
	}
	g->dfree(in.m);
	g->dfree(in.s);
	g->dfree(in.acc);
	g->dfree(out.m);
	g->dfree(out.s);
	g->dfree(out.acc);
	free(m);
	free(s);
	free(acc);
	free(gacc);
}
END_TEST

/*
 * The whole GPU shard search against the same pipeline on the CPU with
 * the reference kernels: scan, fine logits of the kept hits, top_k by
 * krn_select_top, exact partials over them, the sinks and the window,
 * merged.
 */
START_TEST(test_search)
{
	const uint32_t nq = 4, dim = 72, words = 2, len = 9001, shift = 11;
	const uint32_t sinks = 16, window = 300, cand = 512, top_k = 64;
	const size_t ld = dim;
	const uint32_t per = 1u << shift, alloc = (len + per - 1) / per * per;
	const float scale = 1.0f / sqrtf((float)dim);
	uint8_t *codes = aligned_alloc(32, (size_t)alloc * words * 8);
	float *norms = calloc(alloc, 4), *q = malloc(nq * dim * 4);
	uint8_t *cls = calloc(alloc, 1);
	float *k = malloc((size_t)len * ld * 4), *v = malloc((size_t)len * ld * 4);
	void *rk = malloc((size_t)len * ld * 2), *rv = malloc((size_t)len * ld * 2);
	struct hq h;
	float P[128 * 72];

	make_rows_q8((size_t)len * ld, k, rk);
	make_rows(DKV_BF16, (size_t)len * ld, v, rv);
	for (uint32_t i = 0; i < 128 * dim; i++)
		P[i] = rndf();
	for (uint32_t i = 0; i < nq * dim; i++)
		q[i] = roundf(rndf() * 8.0f) / 8.0f;
	/* codes and norms of the keys; query codes through the same projection */
	uint64_t *c = malloc((size_t)len * 16);
	krn_ops_scalar.encode(P, 128, dim, k, ld, len, c);
	memset(codes, 0, (size_t)alloc * words * 8);
	for (uint32_t i = 0; i < len; i++) {
		double nn = 0;
		krn_code_write((uint8_t *)krn_code_at(codes, words, i), words, c + i * words);
		for (uint32_t d = 0; d < dim; d++)
			nn += (double)k[i * ld + d] * k[i * ld + d];
		norms[i] = (float)sqrt(nn);
		cls[i] = (uint8_t)(i % 8);
	}
	make_queries(&h, nq, words);
	krn_ops_scalar.encode(P, 128, dim, q, dim, nq, h.qc);

	/* CPU pipeline */
	uint32_t *rhit = malloc(nq * cand * 4), rn[4];
	struct krn_scan_q sq = { nq, words, h.qc, h.tab, h.lim, h.thr, h.ca, h.cb, 1 };
	struct krn_scan_keys sk = { codes, cls, norms, sinks, len - window - sinks, 0 };
	struct krn_scan_out so = { rhit, cand, rn, NULL, 0 };
	memset(rn, 0, sizeof(rn));
	krn_ops_scalar.scan(&sq, &sk, &so);
	struct krn_part ref[4];
	float racc[4][72];
	for (uint32_t j = 0; j < nq; j++) {
		uint32_t kept = rn[j] < cand ? rn[j] : cand, sel[512], scratch[512];
		float lg[512], slg[512], rows_f[64 * 72];
		memset(racc[j], 0, sizeof(racc[j]));
		ref[j] = (struct krn_part){ -INFINITY, 0.0f, racc[j] };
		for (uint32_t i = 0; i < kept; i++) {
			krn_ops_scalar.dot(q + j * dim, 1, k + (size_t)rhit[j * cand + i] * ld, ld, 1,
					   dim, &lg[i], 1);
			lg[i] *= scale;
		}
		uint32_t m = krn_select_top(lg, kept, top_k < kept ? top_k : kept, sel, scratch);
		for (uint32_t i = 0; i < m; i++) {
			slg[i] = lg[sel[i]];
			memcpy(rows_f + i * dim, v + (size_t)rhit[j * cand + sel[i]] * ld, dim * 4);
		}
		struct krn_part parts[3];
		float pacc[3][72];
		for (int p = 0; p < 3; p++) {
			memset(pacc[p], 0, sizeof(pacc[p]));
			parts[p] = (struct krn_part){ -INFINITY, 0.0f, pacc[p] };
		}
		if (m)
			krn_ops_scalar.attend_logits(slg, rows_f, dim, m, dim, &parts[0]);
		ref_range(q + j * dim, k, v, ld, dim, 0, sinks, scale, &parts[1]);
		ref_range(q + j * dim, k, v, ld, dim, len - window, len, scale, &parts[2]);
		for (int p = 0; p < 3; p++)
			krn_ops_scalar.merge(&ref[j], &parts[p], dim);
	}

	/* GPU */
	struct dkeys dk;
	struct drows dkr, dvr;
	dkeys_make(&dk, codes, norms, cls, words, len, shift);
	drows_make(&dkr, rk, DKV_BF16, ld, len, shift);
	drows_make(&dvr, rv, DKV_BF16, ld, len, shift);
	struct krn_gpu_search a = {
		.nq = nq, .dim = dim, .words = words, .dtype = DKV_BF16, .scale = scale,
		.q = dput(q, nq * dim * 4),
		.scan = { .nq = nq, .words = words, .stride = 1,
			  .qc = dput(h.qc, nq * words * 8), .tab = dput(h.tab, nq * 129 * 4),
			  .lim = dput(h.lim, nq * KRN_CLASSES * 4), .thr = dput(h.thr, nq * 4),
			  .ca = dput(h.ca, nq * 4), .cb = dput(h.cb, nq * 4), .keys = dk.k },
		.k = dkr.r, .v = dvr.r, .len = len, .sinks = sinks, .window = window,
		.cand = cand, .top_k = top_k,
		.out = { dnew(nq * 4), dnew(nq * 4), dnew(nq * dim * 4) },
		.ws = dnew(g->search_ws(nq, dim, len, cand, top_k)),
	};
	OK(g->search(&a, err));
	float gm[4], gs[4], gacc[4 * 72];
	dget(gm, a.out.m, nq * 4);
	dget(gs, a.out.s, nq * 4);
	dget(gacc, a.out.acc, nq * dim * 4);
	for (uint32_t j = 0; j < nq; j++) {
		expect(rn[j] > 0, "search test: query %u without hits", j);
		expect_part("search", j, gm[j], gs[j], gacc + j * dim, &ref[j], dim, 1.0f);
	}
	g->dfree((void *)a.q);
	g->dfree((void *)a.scan.qc);
	g->dfree((void *)a.scan.tab);
	g->dfree((void *)a.scan.lim);
	g->dfree((void *)a.scan.thr);
	g->dfree((void *)a.scan.ca);
	g->dfree((void *)a.scan.cb);
	g->dfree(a.out.m);
	g->dfree(a.out.s);
	g->dfree(a.out.acc);
	g->dfree(a.ws);
	dkeys_free(&dk);
	drows_free(&dkr);
	drows_free(&dvr);
	free(codes);
	free(norms);
	free(q);
	free(cls);
	free(k);
	free(v);
	free(rk);
	free(rv);
	free(c);
	free(rhit);
}
END_TEST

/*
 * One rank through the shard collective (shard_coll_new with the module's
 * NCCL constructor registered): the all-gather of one rank is a copy.
 */
START_TEST(test_nccl_one_rank)
{
	struct shard_coll *c = NULL;
	const int dev = 0;
	int bad = 99;
	const size_t bytes = 1001;
	uint8_t in[1001], out[1001];

	if (!g->coll_nccl_new) {
		printf("check_cuda: NCCL one-rank merge skipped: module built without NCCL\n");
		return;
	}
	shard_coll_set_nccl(g->coll_nccl_new);
	OK(shard_coll_new(&c, SHARD_COLL_NCCL, 1, &dev, err));
	expect(shard_coll_nranks(c) == 1 && !strcmp(shard_coll_name(c), "nccl"),
	       "an NCCL collective of 1 rank");
	for (size_t i = 0; i < bytes; i++)
		in[i] = (uint8_t)rnd64();
	void *ds = dput(in, bytes), *dr = dnew(bytes);
	expect(shard_coll_allgather(c, 0, ds, dr, bytes) == DKV_OK, "allgather");
	dget(out, dr, bytes);
	expect(!memcmp(in, out, bytes), "one-rank all-gather returns the contribution");
	shard_coll_free(c);
	expect(shard_coll_new(&c, SHARD_COLL_NCCL, 1, &bad, err) == DKV_E_INVAL,
	       "device 99 refused");
	printf("check_cuda: NCCL one-rank merge passed\n");
	shard_coll_set_nccl(NULL);
	g->dfree(ds);
	g->dfree(dr);
}
END_TEST

static Suite *cuda_suite(void)
{
	Suite *s = suite_create("cuda");
	TCase *t = tcase_create("kernels");

	tcase_set_timeout(t, 300);
	tcase_add_test(t, test_convert);
	tcase_add_test(t, test_encode);
	tcase_add_test(t, test_hamming);
	tcase_add_test(t, test_scan);
	tcase_add_test(t, test_select_top);
	tcase_add_test(t, test_select_ham);
	tcase_add_test(t, test_fine);
	tcase_add_test(t, test_attend_list);
	tcase_add_test(t, test_attend_range_merge);
	tcase_add_test(t, test_merge);
	tcase_add_test(t, test_search);
	tcase_add_test(t, test_nccl_one_rank);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	char name[256];
	int failed, rc;

	rc = krn_gpu_load(getenv("DASHKV_CUDA_MODULE") ? NULL : DKV_BUILD_MODULE, &g, err);
	if (rc == DKV_E_UNSUPPORTED) {
		printf("SKIP: check_cuda: %s\n", err);
		return 77;
	}
	if (rc) {
		printf("FAIL: check_cuda: %s\n", err);
		return 1;
	}
	if (g->dev_name(0, name, sizeof(name), err) == 0)
		printf("check_cuda: device 0: %s\n", name);
	if (g->device(0, err)) {
		printf("FAIL: check_cuda: %s\n", err);
		return 1;
	}
	SRunner *sr = srunner_create(cuda_suite());
	srunner_set_fork_status(sr, CK_NOFORK);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
