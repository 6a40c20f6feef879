/*
 * search.cu - one shard's search on the GPU for the queries of one kv
 * head: coarse scan of the middle range [sinks, len - window) over the
 * device-resident codes, fine logits of the hits (the keys are read only
 * for the hits: device memory or mapped pinned host memory alike), the
 * top_k per query by radix select, exact partial attention over them,
 * dense exact attention over the sinks and the recent window, and the
 * log-sum-exp merge of all the partials into a.out.
 *
 * Workspace layout (search_ws): hit, n_hit, kept, logit, sel, got, pos,
 * sel_logit, the partial states, then the scan's own workspace.
 */
#include <math.h>

#include "common.cuh"

#define RANGE_SPLIT 1024u

struct search_ws {
	uint32_t *hit, *n_hit, *kept, *sel, *got, *pos;
	float *logit, *sel_logit;
	struct krn_gpu_part parts;
	uint32_t nparts;
	void *scan_ws;
};

static size_t al(size_t x)
{
	return (x + 255) & ~(size_t)255;
}

static uint32_t chunks_of(uint64_t n)
{
	return (uint32_t)((n + RANGE_SPLIT - 1) / RANGE_SPLIT);
}

/* Carve ws (NULL: only count) and return its size. */
static size_t ws_layout(char *ws, uint32_t nq, uint32_t dim, uint64_t len, uint32_t cand,
			uint32_t top_k, uint32_t sinks, uint32_t window, struct search_ws *w)
{
	size_t off = 0;
	/* the exact ranges never exceed len; one part more for the list */
	uint32_t nparts = 1 + chunks_of(sinks < len ? sinks : len) +
			  chunks_of(window < len ? window : len);

#define TAKE(field, type, bytes) \
	do { \
		if (ws) \
			w->field = (type *)(ws + off); \
		off += al(bytes); \
	} while (0)
	TAKE(hit, uint32_t, (size_t)nq * cand * 4);
	TAKE(n_hit, uint32_t, (size_t)nq * 4);
	TAKE(kept, uint32_t, (size_t)nq * 4);
	TAKE(logit, float, (size_t)nq * cand * 4);
	TAKE(sel, uint32_t, (size_t)nq * top_k * 4);
	TAKE(got, uint32_t, (size_t)nq * 4);
	TAKE(pos, uint32_t, (size_t)nq * top_k * 4);
	TAKE(sel_logit, float, (size_t)nq * top_k * 4);
	TAKE(parts.m, float, (size_t)nparts * nq * 4);
	TAKE(parts.s, float, (size_t)nparts * nq * 4);
	TAKE(parts.acc, float, (size_t)nparts * nq * dim * 4);
#undef TAKE
	if (ws) {
		w->nparts = nparts;
		w->scan_ws = ws + off;
	}
	return off + cu_scan_ws(nq, 0, len > 0xffffffffu ? 0xffffffffu : (uint32_t)len);
}

size_t cu_search_ws(uint32_t nq, uint32_t dim, uint64_t len, uint32_t cand, uint32_t top_k)
{
	/* sinks and window at most len each: count for the worst case */
	return ws_layout(NULL, nq, dim, len, cand, top_k, (uint32_t)(len < 0xffffffffu ? len : 0xffffffffu),
			 (uint32_t)(len < 0xffffffffu ? len : 0xffffffffu), NULL);
}

/* kept[j] = min(n_hit[j], cap) */
__global__ static void k_clamp(const uint32_t *n_hit, uint32_t nq, uint32_t cap, uint32_t *kept)
{
	uint32_t j = threadIdx.x;

	if (j < nq)
		kept[j] = min(n_hit[j], cap);
}

/* The selected hits' positions and logits, per query. */
__global__ static void k_gather(const uint32_t *hit, const float *logit, uint32_t cand,
				const uint32_t *sel, const uint32_t *got, uint32_t top_k,
				uint32_t *pos, float *sel_logit)
{
	uint32_t j = blockIdx.x;

	for (uint32_t i = threadIdx.x; i < got[j]; i += blockDim.x) {
		uint32_t h = sel[(size_t)j * top_k + i];
		pos[(size_t)j * top_k + i] = hit[(size_t)j * cand + h];
		sel_logit[(size_t)j * top_k + i] = logit[(size_t)j * cand + h];
	}
}

static int search_check(const struct krn_gpu_search *a, char *err)
{
	if (a->nq == 0 || a->nq > KRN_GPU_MAXQ || a->dim == 0 || a->dim > KRN_GPU_MAXDIM)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: search: 1..16 queries of dim 1..256");
	if (a->len > 0xffffffc0u)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: search: at most 2^32 - 64 tokens per shard");
	if (a->cand == 0 || a->top_k == 0 || a->top_k > a->cand)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: search: need 0 < top_k <= cand");
	if (a->scan.nq != a->nq)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: search: scan.nq differs from nq");
	return 0;
}

/* Exact attention over [t0, t1) into parts from slot `first`. */
static int exact_range(const struct krn_gpu_search *a, const struct search_ws *w,
		       uint64_t t0, uint64_t t1, uint32_t first, char *err)
{
	struct krn_gpu_part p = {
		w->parts.m + (size_t)first * a->nq,
		w->parts.s + (size_t)first * a->nq,
		w->parts.acc + (size_t)first * a->nq * a->dim,
	};

	return cu_attend_range(a->q, a->nq, a->dim, a->scale, &a->k, &a->v, t0, t1,
			       RANGE_SPLIT, &p, err);
}

int cu_search(const struct krn_gpu_search *a, char *err)
{
	struct search_ws w;
	uint64_t len = a->len;
	uint64_t s_end = a->sinks < len ? a->sinks : len;
	uint64_t w_beg = len - (a->window < len ? a->window : len);
	int rc;

	rc = search_check(a, err);
	if (rc)
		return rc;
	if (w_beg < s_end)
		w_beg = s_end;
	ws_layout((char *)a->ws, a->nq, a->dim, len, a->cand, a->top_k, (uint32_t)s_end,
		  (uint32_t)(len - w_beg), &w);

	/* 1. coarse scan of the middle; hits capped at cand */
	uint32_t mid = (uint32_t)(w_beg - s_end);
	if (mid) {
		struct krn_gpu_scan sc = a->scan;
		sc.first = (uint32_t)s_end;
		sc.n = mid;
		sc.base = 0;
		sc.hit = w.hit;
		sc.hit_cap = a->cand;
		sc.n_hit = w.n_hit;
		sc.blk = NULL;
		sc.ws = w.scan_ws;
		rc = cu_scan(&sc, err);
	} else {
		rc = cu_memset0(w.n_hit, (size_t)a->nq * 4, err);
	}
	if (rc)
		return rc;
	if (a->n_hit) {
		rc = cu_copy(a->n_hit, w.n_hit, (size_t)a->nq * 4, err);
		if (rc)
			return rc;
	}
	k_clamp<<<1, 32, 0, cudaStreamPerThread>>>(w.n_hit, a->nq, a->cand, w.kept);
	/* 2. fine logits of the hits (keys read for the hits only) */
	rc = cu_fine(a->q, a->nq, a->dim, &a->k, w.hit, a->cand, w.kept, a->cand, a->scale,
		     w.logit, a->cand, err);
	/* 3. top_k per query, 4. their positions and logits */
	if (!rc)
		rc = cu_select_top(w.logit, a->cand, w.kept, a->nq, a->cand, a->top_k, w.sel,
				   w.got, err);
	if (rc)
		return rc;
	k_gather<<<a->nq, 256, 0, cudaStreamPerThread>>>(w.hit, w.logit, a->cand, w.sel, w.got,
							 a->top_k, w.pos, w.sel_logit);
	rc = cu_launched(err, "search gather");
	/* 5. exact partial over the selected tokens: part 0 */
	if (!rc)
		rc = cu_attend_list(w.sel_logit, a->top_k, w.pos, a->top_k, w.got, a->nq,
				    a->top_k, &a->v, a->dim, &w.parts, err);
	/* 6. sinks and window, dense */
	uint32_t next = 1;
	if (!rc && s_end > 0) {
		rc = exact_range(a, &w, 0, s_end, next, err);
		next += chunks_of(s_end);
	}
	if (!rc && len > w_beg) {
		rc = exact_range(a, &w, w_beg, len, next, err);
		next += chunks_of(len - w_beg);
	}
	/* 7. everything into a->out, in part order */
	if (!rc)
		rc = cu_merge(&w.parts, next, a->nq, a->dim, &a->out, err);
	return rc;
}
