/*
 * search.h - per-shard search over one kv head of one layer: dense exact
 * attention over a token range, the coarse filter on binary codes, fine
 * ranking of candidates, exact attention over a token list, and the tail
 * estimate from codes and block value summaries.
 *
 * Token ranges are [t0, t1) in positions of the layer; every function
 * reads only tokens already stored.  Buffers come from the caller
 * (struct shard_bufs), so none of these allocate.
 */
#ifndef DKV_SHARD_SEARCH_H
#define DKV_SHARD_SEARCH_H

#include "krn.h"
#include "store.h"

/* Caller-owned scratch: kbuf and vbuf hold KRN_BLOCK rows of head_dim. */
struct shard_bufs {
	float *kbuf;
	float *vbuf;
	const void **ptrs; /* KRN_BLOCK + KRN_GDOT_AHEAD row addresses */
};

/* Convert n stored rows (dtype of the store) starting at src to f32. */
void shard_rows_f32(const struct shard_geom *g, const void *src, uint32_t n, float *dst);

/*
 * Dense exact attention of nq queries (f32 [nq][dim]) over [t0, t1) of kv
 * head h, folded into st[0..nq).  logit = scale * q.k.
 */
void shard_attend_range(const struct shard_layer *l, uint32_t h,
			const float *q, uint32_t nq, uint64_t t0, uint64_t t1,
			float scale, struct krn_part *st, struct shard_bufs *b);

/*
 * Estimated (unshifted) logits of the q->nq queries of q (its nq, words,
 * qc and tab) for the keys at pos[0..n), from the stored codes and norms
 * (krn_ops.estimate over batches of runs of consecutive keys inside a
 * page): est[j * ld + i].
 */
void shard_estimate(const struct shard_layer *l, uint32_t h, const struct krn_scan_q *q,
		    const uint32_t *pos, uint32_t n, float *est, size_t ld);

/*
 * Ask for the span sums of head h in the page of token t ahead of the
 * tail's read: a page's lie apart from the last page's, too short a
 * stream for the hardware prefetcher to pick up in time.
 */
void shard_prefetch_spans(const struct shard_layer *l, uint32_t h, uint64_t t);

/*
 * Fine ranking: exact logits scale * q.k of the keys at positions pos[0..n)
 * into logit[0..n).
 */
void shard_fine(const struct shard_layer *l, uint32_t h, const float *q,
		const uint32_t *pos, uint32_t n, float scale, float *logit,
		struct shard_bufs *b);

/*
 * Fine ranking for nq queries (f32 [nq][dim]) over the same keys:
 * logit[j * ld + i] = scale * q_j . k(pos[i]).  Each key row is read once,
 * in place (krn gdot: no staging copy).
 */
void shard_fine_multi(const struct shard_layer *l, uint32_t h, const float *q,
		      uint32_t nq, const uint32_t *pos, uint32_t n, float scale,
		      float *logit, size_t ld, struct shard_bufs *b);

/*
 * Sketch scores for nq queries (int8 [nq][dim], rt_hash_query_sketch) of
 * the keys at pos[0..n): est[j * ld + i] = mul[j] * step(pos[i]) *
 * sketch sum + add[j], the key's logit as its 4-bit sketch sees it.
 * Each sketch is read once, in place.
 */
void shard_sketch_scores(const struct shard_layer *l, uint32_t h, const int8_t *q8,
			 const float *mul, const float *add, uint32_t nq, const uint32_t *pos,
			 uint32_t n, float *est, size_t ld, struct shard_bufs *b);

/*
 * Exact attention over the tokens at pos[0..n) whose logits are given,
 * folded into st.
 */
void shard_attend_list(const struct shard_layer *l, uint32_t h,
		       const uint32_t *pos, const float *logit, uint32_t n,
		       struct krn_part *st, struct shard_bufs *b);

/*
 * Tail values of nq queries over [t0, t1): w[j * ld_w + b] is query j's
 * estimated mass of block t0 / 64 + b; acc[j * dim ..] gains the sum of
 * each summary's mass times its mean value.  span is 1 (64-token blocks)
 * or SHARD_SPAN_BLOCKS (256-token spans: the blocks' masses summed, for
 * masses that rest on few sampled keys each); w may be changed (divided
 * by the blocks' token counts).  Summaries whose mean mass per token is
 * under cut[j] for every query j are skipped.
 */
void shard_tail_range(const struct shard_layer *l, uint32_t h, float *w, size_t ld_w,
		      uint32_t nq, uint64_t t0, uint64_t t1, const float *cut, uint32_t span,
		      float *acc);

#endif
