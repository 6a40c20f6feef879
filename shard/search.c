/* search.c - per-shard search kernels over the paged store (see search.h). */
#include <math.h>
#include <string.h>

#include "dashkv.h"
#include "search.h"

void shard_rows_f32(const struct shard_geom *g, const void *src, uint32_t n, float *dst)
{
	krn_elt_to_f32(krn_get(), (enum krn_elt)g->dtype, src, dst, (size_t)n * g->head_dim);
}

/* Tokens from t up to t1 that stay inside t's page, at most `most`. */
static uint32_t run_len(uint64_t t, uint64_t t1, uint32_t most)
{
	uint64_t page_end = (t / SHARD_PAGE + 1) * SHARD_PAGE;
	uint64_t end = page_end < t1 ? page_end : t1;
	return end - t < most ? (uint32_t)(end - t) : most;
}

/* f32 rows of keys (or values) [t, t+n) of head h: in place or converted. */
static const float *rows_at(const struct shard_layer *l, const void *src,
			    uint32_t n, float *buf)
{
	if (l->g->dtype == DKV_F32)
		return src;
	shard_rows_f32(l->g, src, n, buf);
	return buf;
}

void shard_attend_range(const struct shard_layer *l, uint32_t h,
			const float *q, uint32_t nq, uint64_t t0, uint64_t t1,
			float scale, struct krn_part *st, struct shard_bufs *b)
{
	const struct krn_ops *ops = krn_get();
	uint32_t dim = l->g->head_dim;

	for (uint64_t t = t0; t < t1;) {
		uint32_t n = run_len(t, t1, KRN_BLOCK);
		const float *k = rows_at(l, shard_key(l, h, t), n, b->kbuf);
		const float *v = rows_at(l, shard_value(l, h, t), n, b->vbuf);
		ops->attend(q, nq, k, v, dim, n, dim, scale, st);
		t += n;
	}
}

/* Runs of sampled keys per estimate call: their tables are built once. */
#define EST_RUNS 128u

/* The next runs of consecutive keys inside a page from pos[*i], at most EST_RUNS. */
static uint32_t take_runs(const struct shard_layer *l, uint32_t h, const uint32_t *pos,
			  uint32_t n, uint32_t *i, struct krn_scan_keys *k)
{
	uint32_t nk = 0;

	while (*i < n && nk < EST_RUNS) {
		uint32_t s = *i, e = s + 1;
		for (; e < n && pos[e] == pos[e - 1] + 1 && pos[e] % SHARD_PAGE; e++)
			;
		uint64_t page0 = pos[s] - pos[s] % SHARD_PAGE;
		k[nk++] = (struct krn_scan_keys){
			.codes = shard_codes(l, h, page0),
			.norms = shard_norm(l, h, page0),
			.first = (uint32_t)(pos[s] - page0),
			.n = e - s,
		};
		*i = e;
	}
	return nk;
}

void shard_estimate(const struct shard_layer *l, uint32_t h, const struct krn_scan_q *q,
		    const uint32_t *pos, uint32_t n, float *est, size_t ld)
{
	const struct krn_ops *ops = krn_get();
	struct krn_scan_keys k[EST_RUNS];

	for (uint32_t i = 0; i < n;) {
		uint32_t start = i, nk = take_runs(l, h, pos, n, &i, k);
		ops->estimate(q, k, nk, est + start, ld);
	}
}

/* Ask for the value row of a token ahead of its use (random access). */
static void prefetch_value(const struct shard_layer *l, uint32_t h, uint32_t pos)
{
	const char *p = shard_value(l, h, pos);
	size_t bytes = (size_t)l->g->head_dim * l->g->elt_size;

	for (size_t o = 0; o < bytes; o += 64)
		__builtin_prefetch(p + o);
}

/* Rows fetched ahead while gathering: covers the DRAM latency. */
#define PREFETCH_AHEAD 24

/*
 * Gather the value rows at pos[0..n) (n <= KRN_BLOCK) as f32; the next
 * rows after them (pos[n..n_all)) are prefetched.  Rows of 16-bit types
 * are copied raw into stage, then converted in one call.
 */
static void gather_values(const struct shard_layer *l, uint32_t h, const uint32_t *pos,
			  uint32_t n, uint32_t n_all, float *dst, void *stage)
{
	size_t row = (size_t)l->g->head_dim * l->g->elt_size;
	uint8_t *raw = l->g->dtype == DKV_F32 ? (uint8_t *)dst : stage;

	for (uint32_t i = 0; i < PREFETCH_AHEAD && i < n_all; i++)
		prefetch_value(l, h, pos[i]);
	for (uint32_t i = 0; i < n; i++) {
		if (i + PREFETCH_AHEAD < n_all)
			prefetch_value(l, h, pos[i + PREFETCH_AHEAD]);
		memcpy(raw + i * row, shard_value(l, h, pos[i]), row);
	}
	if (raw != (uint8_t *)dst)
		shard_rows_f32(l->g, raw, n, dst);
}

void shard_fine_multi(const struct shard_layer *l, uint32_t h, const float *q,
		      uint32_t nq, const uint32_t *pos, uint32_t n, float scale,
		      float *logit, size_t ld, struct shard_bufs *b)
{
	enum krn_elt elt = (enum krn_elt)l->g->dtype;

	for (uint32_t i = 0; i < n; i += KRN_BLOCK) {
		uint32_t m = n - i < KRN_BLOCK ? n - i : KRN_BLOCK;
		uint32_t more = n - i < m + KRN_GDOT_AHEAD ? n - i : m + KRN_GDOT_AHEAD;
		for (uint32_t r = 0; r < more; r++)
			b->ptrs[r] = shard_key(l, h, pos[i + r]);
		krn_get()->gdot(q, nq, b->ptrs, m, more, elt, l->g->head_dim, scale, logit + i,
				ld);
	}
}

void shard_sketch_scores(const struct shard_layer *l, uint32_t h, const int8_t *q8,
			 const float *mul, const float *add, uint32_t nq, const uint32_t *pos,
			 uint32_t n, float *est, size_t ld, struct shard_bufs *b)
{
	/* the sums of a run, [nq][run], in kbuf (KRN_BLOCK * head_dim floats) */
	uint32_t run = KRN_BLOCK * l->g->head_dim / (nq > 8 ? nq : 8);
	int32_t *sum = (int32_t *)b->kbuf;

	run = run < KRN_BLOCK ? run : KRN_BLOCK;
	for (uint32_t i = 0; i < n; i += run) {
		uint32_t m = n - i < run ? n - i : run;
		uint32_t more = n - i < m + KRN_GDOT_AHEAD ? n - i : m + KRN_GDOT_AHEAD;
		for (uint32_t r = 0; r < more; r++)
			b->ptrs[r] = shard_sketch(l, h, pos[i + r]);
		krn_get()->sketch(q8, nq, (const uint8_t *const *)b->ptrs, m, more, l->g->head_dim,
				  sum, m);
		for (uint32_t j = 0; j < nq; j++)
			for (uint32_t r = 0; r < m; r++)
				est[j * ld + i + r] = mul[j] * *shard_sketch_step(l, h, pos[i + r]) *
							      (float)sum[(size_t)j * m + r] +
						      add[j];
	}
}

void shard_fine(const struct shard_layer *l, uint32_t h, const float *q,
		const uint32_t *pos, uint32_t n, float scale, float *logit,
		struct shard_bufs *b)
{
	shard_fine_multi(l, h, q, 1, pos, n, scale, logit, n, b);
}

void shard_attend_list(const struct shard_layer *l, uint32_t h,
		       const uint32_t *pos, const float *logit, uint32_t n,
		       struct krn_part *st, struct shard_bufs *b)
{
	const struct krn_ops *ops = krn_get();
	uint32_t dim = l->g->head_dim;

	for (uint32_t i = 0; i < n; i += KRN_BLOCK) {
		uint32_t m = n - i < KRN_BLOCK ? n - i : KRN_BLOCK;
		gather_values(l, h, pos + i, m, n - i, b->vbuf, b->kbuf);
		ops->attend_logits(logit + i, b->vbuf, dim, m, dim, st);
	}
}

/*
 * Is block i worth its value row for any query?  The caller's cut (a share
 * of the query's mean block mass) bounds the tail mass the skipped blocks
 * hold to that share; concentrated attention leaves most blocks there.
 */
static int block_kept(const float *w, size_t ld_w, uint32_t nq, const float *cut, uint64_t i)
{
	for (uint32_t j = 0; j < nq; j++)
		if (w[j * ld_w + i] >= cut[j])
			return 1;
	return 0;
}

/* Tokens stored in the summary of `tokens` tokens starting at t0. */
static float stored(const struct shard_layer *l, uint64_t t0, uint32_t tokens)
{
	uint64_t cnt = l->len - t0;
	return (float)(cnt < tokens ? cnt : tokens);
}

/* Runs of kept blocks inside one page: their value rows are contiguous. */
static void tail_blocks(const struct shard_layer *l, uint32_t h, float *w, size_t ld_w,
			uint32_t nq, uint64_t b0, uint64_t b1, const float *cut, float *acc)
{
	uint32_t dim = l->g->head_dim;

	/* block sums -> means: every block is full except maybe the last stored */
	for (uint32_t j = 0; j < nq; j++)
		for (uint64_t b = b0; b < b1; b++)
			w[j * ld_w + (b - b0)] /= stored(l, b * SHARD_BLOCK, SHARD_BLOCK);
	for (uint64_t b = b0; b < b1;) {
		if (!block_kept(w, ld_w, nq, cut, b - b0)) {
			b++;
			continue;
		}
		uint64_t page_end = (b / SHARD_PAGE_BLOCKS + 1) * SHARD_PAGE_BLOCKS;
		uint64_t e = b + 1;
		while (e < b1 && e < page_end && block_kept(w, ld_w, nq, cut, e - b0))
			e++;
		krn_get()->wsum(w + (b - b0), ld_w, nq, shard_vsum(l, h, b * SHARD_BLOCK), dim,
				(uint32_t)(e - b), dim, acc);
		b = e;
	}
}

/*
 * One page's blocks [b0, b1) by spans: each span's mean mass (its blocks'
 * masses over its tokens) times its value sum.  sw holds the page's span
 * means, [nq][SHARD_PAGE_SPANS].
 */
static void tail_page_spans(const struct shard_layer *l, uint32_t h, const float *w,
			    size_t ld_w, uint32_t nq, uint64_t w0, uint64_t b0, uint64_t b1,
			    const float *cut, float *sw, float *acc)
{
	uint64_t s0 = b0 / SHARD_SPAN_BLOCKS, s1 = (b1 + SHARD_SPAN_BLOCKS - 1) / SHARD_SPAN_BLOCKS;
	uint32_t dim = l->g->head_dim;

	for (uint32_t j = 0; j < nq; j++)
		for (uint64_t s = s0; s < s1; s++) {
			uint64_t a = s * SHARD_SPAN_BLOCKS, e = a + SHARD_SPAN_BLOCKS;
			float m = 0.0f;
			for (uint64_t b = a > b0 ? a : b0; b < e && b < b1; b++)
				m += w[j * ld_w + (b - w0)];
			sw[j * SHARD_PAGE_SPANS + (s - s0)] = m / stored(l, s * SHARD_SPAN, SHARD_SPAN);
		}
	for (uint64_t s = s0; s < s1;) {
		if (!block_kept(sw, SHARD_PAGE_SPANS, nq, cut, s - s0)) {
			s++;
			continue;
		}
		uint64_t e = s + 1;
		while (e < s1 && block_kept(sw, SHARD_PAGE_SPANS, nq, cut, e - s0))
			e++;
		krn_get()->wsum(sw + (s - s0), SHARD_PAGE_SPANS, nq, shard_vspan(l, h, s * SHARD_SPAN),
				dim, (uint32_t)(e - s), dim, acc);
		s = e;
	}
}

void shard_prefetch_spans(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	const char *p = (const char *)shard_vspan(l, h, t - t % SHARD_PAGE);
	size_t bytes = (size_t)SHARD_PAGE_SPANS * l->g->head_dim * sizeof(float);

	for (size_t o = 0; o < bytes; o += 64)
		__builtin_prefetch(p + o);
}

void shard_tail_range(const struct shard_layer *l, uint32_t h, float *w, size_t ld_w,
		      uint32_t nq, uint64_t t0, uint64_t t1, const float *cut, uint32_t span,
		      float *acc)
{
	uint64_t b0 = t0 / SHARD_BLOCK, b1 = (t1 + SHARD_BLOCK - 1) / SHARD_BLOCK;
	float sw[DKV_MAX_HEADS * SHARD_PAGE_SPANS];

	if (span == 1) {
		tail_blocks(l, h, w, ld_w, nq, b0, b1, cut, acc);
		return;
	}
	for (uint64_t b = b0; b < b1;) {
		uint64_t e = (b / SHARD_PAGE_BLOCKS + 1) * SHARD_PAGE_BLOCKS;
		e = e < b1 ? e : b1;
		tail_page_spans(l, h, w, ld_w, nq, b0, b, e, cut, sw, acc);
		b = e;
	}
}
