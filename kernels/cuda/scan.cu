/*
 * scan.cu - the coarse filter's pass on the GPU (krn_ops.scan's twin) and
 * the Hamming-histogram select.
 *
 * The scan: a warp takes one 64-key block (two groups of 32 byte-sliced
 * codes) at a time; the group's bytes come in with 16-byte loads (fully
 * coalesced) into the warp's slice of shared memory, and lane i puts key
 * i's words back together from it.  The queries of the group (GQA) sit in
 * shared memory: code, limit per norm class, estimate table.  Every query
 * tests the 32 keys and the warp votes: the vote is the 32-bit word of
 * the query's hit bitmap for that group, so hits need no atomics and keep
 * their order.  A second kernel turns the bitmaps into hit lists in key
 * order (chunk offsets from per-chunk counts, a block scan inside a
 * chunk), truncated at hit_cap exactly as the reference does.  The tail
 * mass of a block is a warp sum in a fixed order, added by the one warp
 * that owns the block.  Norms are read only where needed: for probes,
 * and for tail samples when a tail is asked for.
 */
#include "common.cuh"

#define SCAN_WARPS 8
#define CHUNK_WORDS 1024u /* bitmap words per compaction block */
#define TLEN_MAX (64 * 4 + 1)

struct scan_geom {
	uint32_t gfirst; /* first group: first / 32 */
	uint32_t ng;     /* groups covering [first, first + n) */
	uint32_t nchunk; /* ceil(ng / CHUNK_WORDS) */
};

static struct scan_geom geom_of(uint32_t first, uint32_t n)
{
	struct scan_geom g;
	uint64_t end = (uint64_t)first + n;

	g.gfirst = first / 32;
	g.ng = (uint32_t)((end + 31) / 32 - g.gfirst);
	g.nchunk = (g.ng + CHUNK_WORDS - 1) / CHUNK_WORDS;
	return g;
}

static size_t align256(size_t x)
{
	return (x + 255) & ~(size_t)255;
}

size_t cu_scan_ws(uint32_t nq, uint32_t first, uint32_t n)
{
	struct scan_geom g = geom_of(first, n);

	return align256((size_t)nq * g.ng * 4) + align256((size_t)nq * g.nchunk * 4);
}

/*
 * The query side in shared memory: codes, limit per norm class, hit
 * threshold, tail calibration and estimate table of every query.
 */
struct scan_q {
	uint64_t qc[KRN_GPU_MAXQ][4];
	int32_t lim[KRN_GPU_MAXQ][KRN_CLASSES];
	float thr[KRN_GPU_MAXQ], ca[KRN_GPU_MAXQ], cb[KRN_GPU_MAXQ];
	float tab[KRN_GPU_MAXQ * TLEN_MAX];
};

/* The whole block copies the query side in. */
static __device__ __forceinline__ void scan_load(const struct krn_gpu_scan &s, struct scan_q *q)
{
	const uint32_t words = s.words, nq = s.nq, tl = 64 * words + 1;

	for (uint32_t i = threadIdx.x; i < nq * words; i += blockDim.x)
		q->qc[i / words][i % words] = s.qc[i];
	for (uint32_t i = threadIdx.x; i < nq * KRN_CLASSES; i += blockDim.x)
		q->lim[i / KRN_CLASSES][i % KRN_CLASSES] = s.lim[i];
	for (uint32_t i = threadIdx.x; i < nq * tl; i += blockDim.x)
		q->tab[i] = s.tab[i];
	for (uint32_t i = threadIdx.x; i < nq; i += blockDim.x) {
		q->thr[i] = s.thr[i];
		q->ca[i] = s.blk ? s.ca[i] : 0.0f;
		q->cb[i] = s.blk ? s.cb[i] : 0.0f;
	}
}

/*
 * Both groups of the unit from pbase into the warp's slice wb: `words`
 * 16-byte loads per lane, all issued before the first use, with the norm
 * classes of the lane's keys (0 outside the range).
 */
static __device__ __forceinline__ void scan_stage(const struct krn_gpu_scan &s,
						  const uint8_t *codes, const uint8_t *cls,
						  uint64_t pbase, uint8_t *wb, uint32_t *cl0,
						  uint32_t *cl1)
{
	const uint32_t words = s.words, lane = threadIdx.x & 31;
	const uint64_t end = (uint64_t)s.first + s.n;
	const uint4 *src = (const uint4 *)codes;
	uint4 r[4];

	*cl0 = 0;
	*cl1 = 0;
#pragma unroll
	for (uint32_t t = 0; t < 4; t++)
		if (t < words)
			r[t] = src[t * 32 + lane];
	if (pbase + lane >= s.first && pbase + lane < end)
		*cl0 = cls[lane];
	if (pbase + 32 + lane >= s.first && pbase + 32 + lane < end)
		*cl1 = cls[32 + lane];
	__syncwarp(); /* the previous unit's reads of wb are done */
#pragma unroll
	for (uint32_t t = 0; t < 4; t++)
		if (t < words)
			((uint4 *)wb)[t * 32 + lane] = r[t];
	__syncwarp();
}

/*
 * Group G against every query: the lane takes key p, its code byte-sliced
 * in gb, its norm class cl and its norm at *norm, read only where needed.
 * The warp's vote on query j is j's hit bitmap word for the group; with a
 * tail, the mass of the group's tail samples is added to tail[j].
 */
static __device__ __forceinline__ void scan_group(const struct krn_gpu_scan &s,
						  const struct scan_geom &g,
						  const struct scan_q *q, uint32_t G, uint64_t p,
						  const uint8_t *gb, const float *norm, uint32_t cl,
						  uint32_t *bits, uint32_t *chunk_cnt, float *tail)
{
	const uint32_t words = s.words, nq = s.nq, tl = 64 * words + 1;
	const uint32_t lane = threadIdx.x & 31;
	const uint64_t end = (uint64_t)s.first + s.n;
	bool valid = p >= s.first && p < end;
	uint64_t c[4] = { 0, 0, 0, 0 };

	/* unrolled with guards: c stays in registers */
#pragma unroll
	for (uint32_t w = 0; w < 4; w++)
		if (w < words)
#pragma unroll
			for (uint32_t b = 0; b < 8; b++)
				c[w] |= (uint64_t)gb[(w * 8 + b) * 32 + lane] << (8 * b);
	float nr = 0.0f;
	bool nr_loaded = false;
	if (valid && s.blk && p % s.stride == 0) {
		nr = *norm;
		nr_loaded = true;
	}
	for (uint32_t j = 0; j < nq; j++) {
		uint32_t h = 0;
#pragma unroll
		for (uint32_t w = 0; w < 4; w++)
			if (w < words)
				h += __popcll(c[w] ^ q->qc[j][w]);
		bool probe = valid && (int32_t)h <= q->lim[j][cl];
		bool hit = false;
		float e = 0.0f;
		if (probe) {
			if (!nr_loaded) {
				nr = *norm;
				nr_loaded = true;
			}
			e = __fmul_rn(nr, q->tab[j * tl + h]);
			hit = e >= q->thr[j];
		}
		uint32_t m = __ballot_sync(CU_FULL, hit);
		if (lane == 0 && G >= g.gfirst && G < g.gfirst + g.ng) {
			uint32_t wi = G - g.gfirst;
			bits[(size_t)j * g.ng + wi] = m;
			if (m)
				atomicAdd(&chunk_cnt[(size_t)j * g.nchunk + wi / CHUNK_WORDS],
					  (uint32_t)__popc(m));
		}
		if (s.blk) {
			/* nr is loaded for every tail sample (see above) */
			float t = 0.0f;
			if (valid && !hit && p % s.stride == 0) {
				if (!probe)
					e = __fmul_rn(nr, q->tab[j * tl + h]);
				t = (float)s.stride * expf(q->ca[j] * e + q->cb[j]);
			}
			t = cu_warp_sum(t);
			if (lane == 0)
				tail[j] += t;
		}
	}
}

__global__ static void __launch_bounds__(SCAN_WARPS * 32)
k_scan(const struct krn_gpu_scan s, struct scan_geom g, uint32_t *bits, uint32_t *chunk_cnt)
{
	__shared__ struct scan_q q;
	__shared__ __align__(16) uint8_t buf[SCAN_WARPS][2 * 4 * 8 * 32];
	__shared__ float tail[SCAN_WARPS][KRN_GPU_MAXQ];
	const uint32_t words = s.words, nq = s.nq;
	const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	scan_load(s, &q);
	__syncthreads();

	const uint64_t end = (uint64_t)s.first + s.n;
	const uint32_t u0 = s.first / 64, u1 = (uint32_t)((end + 63) / 64);
	const uint32_t gbytes = words * 8 * 32;
	const uint64_t pmask = ((uint64_t)1 << s.keys.shift) - 1;
	uint8_t *wb = buf[warp];

	for (uint32_t u = u0 + blockIdx.x * SCAN_WARPS + warp; u < u1;
	     u += gridDim.x * SCAN_WARPS) {
		uint64_t pbase = (uint64_t)u * 64;
		uint32_t pg = (uint32_t)(pbase >> s.keys.shift);
		uint64_t loc = pbase & pmask;
		const uint8_t *codes = s.keys.codes[pg] + (size_t)(loc / 32) * gbytes;
		const float *norms = s.keys.norms[pg] + loc;
		const uint8_t *cls = s.keys.cls[pg] + loc;
		uint32_t cl0, cl1;

		if (lane < nq)
			tail[warp][lane] = 0.0f;
		scan_stage(s, codes, cls, pbase, wb, &cl0, &cl1);
		for (uint32_t gi = 0; gi < 2; gi++)
			scan_group(s, g, &q, u * 2 + gi, pbase + gi * 32 + lane, wb + gi * gbytes,
				   norms + gi * 32 + lane, (gi ? cl1 : cl0) & (KRN_CLASSES - 1),
				   bits, chunk_cnt, tail[warp]);
		__syncwarp();
		if (s.blk && lane < nq)
			s.blk[(size_t)lane * s.ld_blk + u - u0] += tail[warp][lane];
	}
}

/*
 * Bitmaps to hit lists: block (c, j) turns chunk c of query j's bitmap
 * into hits at their global ranks; block (0, j) also writes n_hit[j].
 */
__global__ static void __launch_bounds__(CHUNK_WORDS)
k_compact(const uint32_t *bits, const uint32_t *chunk_cnt, struct scan_geom g,
	  uint32_t base_key, uint32_t *hit, uint32_t hit_cap, uint32_t *n_hit)
{
	__shared__ uint32_t off_s;
	const uint32_t c = blockIdx.x, j = blockIdx.y;
	const uint32_t *cc = chunk_cnt + (size_t)j * g.nchunk;

	if (threadIdx.x == 0) {
		uint32_t off = 0, all = 0;
		for (uint32_t i = 0; i < g.nchunk; i++) {
			if (i < c)
				off += cc[i];
			all += cc[i];
		}
		off_s = off;
		if (c == 0)
			n_hit[j] = all;
	}
	__syncthreads();
	uint32_t off = off_s, total;
	if (off >= hit_cap)
		return; /* uniform: the whole block leaves */
	uint32_t wi = c * CHUNK_WORDS + threadIdx.x;
	uint32_t m = wi < g.ng ? bits[(size_t)j * g.ng + wi] : 0;
	uint32_t r = off + cu_block_scan((uint32_t)__popc(m), &total);
	while (m && r < hit_cap) {
		uint32_t b = (uint32_t)__ffs(m) - 1;
		hit[(size_t)j * hit_cap + r++] = base_key + (g.gfirst + wi) * 32 + b;
		m &= m - 1;
	}
}

static int scan_check(const struct krn_gpu_scan *s, char *err)
{
	if (s->nq == 0 || s->nq > KRN_GPU_MAXQ)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: scan: 1 to 16 queries per call");
	if (s->words != 1 && s->words != 2 && s->words != 4)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: scan: codes of 64, 128 or 256 bits");
	if (s->stride != 1 && (s->stride < 8 || s->stride > 64 || (s->stride & (s->stride - 1))))
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: scan: tail stride 1, 8, 16, 32 or 64");
	if (s->keys.shift < 6 || s->keys.shift > 31)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: scan: pages of 2^6 .. 2^31 keys");
	if ((uint64_t)s->first + s->n + 63 > ((uint64_t)1 << 32))
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: scan: key range beyond 2^32");
	if (!s->hit || !s->n_hit || !s->ws)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: scan: hit, n_hit and ws are needed");
	return 0;
}

int cu_scan(const struct krn_gpu_scan *s, char *err)
{
	struct scan_geom g;
	uint32_t *bits, *cnt;
	int dev, sms, rc;

	rc = scan_check(s, err);
	if (rc)
		return rc;
	if (s->n == 0)
		return cu_memset0(s->n_hit, (size_t)s->nq * 4, err);
	g = geom_of(s->first, s->n);
	bits = (uint32_t *)s->ws;
	cnt = (uint32_t *)((char *)s->ws + align256((size_t)s->nq * g.ng * 4));
	rc = cu_memset0(cnt, (size_t)s->nq * g.nchunk * 4, err);
	if (rc)
		return rc;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
		sms = 132;
	uint32_t units = (uint32_t)(((uint64_t)s->first + s->n + 63) / 64 - s->first / 64);
	uint32_t blocks = (units + SCAN_WARPS - 1) / SCAN_WARPS;
	uint32_t most = (uint32_t)sms * 8;
	k_scan<<<blocks < most ? blocks : most, SCAN_WARPS * 32, 0, cudaStreamPerThread>>>(
		*s, g, bits, cnt);
	rc = cu_launched(err, "scan");
	if (rc)
		return rc;
	dim3 grid(g.nchunk, s->nq);
	k_compact<<<grid, CHUNK_WORDS, 0, cudaStreamPerThread>>>(bits, cnt, g, s->base, s->hit,
								 s->hit_cap, s->n_hit);
	return cu_launched(err, "scan compaction");
}

/*
 * select_ham: histogram of the distances (one pass), then per block the
 * cut d and the number of ties to take; bitmaps of "below the cut" and
 * "at the cut" per 32 keys with per-chunk counts; then one compaction in
 * key order that keeps the first `need` ties.
 */
#define HBINS 257

size_t cu_select_ham_ws(uint32_t n)
{
	uint32_t ng = (n + 31) / 32, nchunk = (ng + CHUNK_WORDS - 1) / CHUNK_WORDS;

	return align256(HBINS * 4) + align256((size_t)ng * 8) + align256((size_t)nchunk * 8);
}

__global__ static void k_ham_hist(const uint16_t *dist, uint32_t n, uint32_t *hist)
{
	__shared__ uint32_t h[HBINS];

	for (uint32_t i = threadIdx.x; i < HBINS; i += blockDim.x)
		h[i] = 0;
	__syncthreads();
	for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
		atomicAdd(&h[dist[i] < HBINS ? dist[i] : HBINS - 1], 1u);
	__syncthreads();
	for (uint32_t i = threadIdx.x; i < HBINS; i += blockDim.x)
		if (h[i])
			atomicAdd(&hist[i], h[i]);
}

/* The cut: distances < *cut all go, `need` of those == *cut. */
__device__ static void ham_cut(const uint32_t *hist, uint32_t k, uint32_t *cut, uint32_t *need)
{
	uint32_t below = 0;

	for (uint32_t d = 0; d < HBINS; d++) {
		if (below + hist[d] >= k) {
			*cut = d;
			*need = k - below;
			return;
		}
		below += hist[d];
	}
	*cut = HBINS; /* k >= n: everything */
	*need = 0;
}

__global__ static void k_ham_mark(const uint16_t *dist, uint32_t n, uint32_t k,
				  const uint32_t *hist, uint32_t *lt, uint32_t *eq,
				  uint32_t *cnt, uint32_t nchunk)
{
	__shared__ uint32_t cut_s, need_s;

	if (threadIdx.x == 0)
		ham_cut(hist, k, &cut_s, &need_s);
	__syncthreads();
	uint32_t cut = cut_s, lane = threadIdx.x & 31;
	uint32_t stride = gridDim.x * blockDim.x;
	uint32_t top = (n + 31) / 32 * 32;

	for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < top; i += stride) {
		uint32_t d = i < n ? (dist[i] < HBINS ? dist[i] : HBINS - 1) : HBINS;
		uint32_t a = __ballot_sync(CU_FULL, i < n && d < cut);
		uint32_t b = __ballot_sync(CU_FULL, i < n && d == cut);
		if (lane == 0) {
			uint32_t wi = i / 32;
			lt[wi] = a;
			eq[wi] = b;
			if (a)
				atomicAdd(&cnt[wi / CHUNK_WORDS], (uint32_t)__popc(a));
			if (b)
				atomicAdd(&cnt[nchunk + wi / CHUNK_WORDS], (uint32_t)__popc(b));
		}
	}
}

__global__ static void __launch_bounds__(CHUNK_WORDS)
k_ham_compact(const uint32_t *hist, uint32_t k, const uint32_t *lt, const uint32_t *eq,
	      const uint32_t *cnt, uint32_t ng, uint32_t nchunk, uint32_t *idx)
{
	__shared__ uint32_t lt_off, eq_off, need_s;
	const uint32_t c = blockIdx.x;

	if (threadIdx.x == 0) {
		uint32_t cut, need, a = 0, b = 0;
		ham_cut(hist, k, &cut, &need);
		for (uint32_t i = 0; i < c; i++) {
			a += cnt[i];
			b += cnt[nchunk + i];
		}
		lt_off = a;
		eq_off = b;
		need_s = need;
	}
	__syncthreads();
	uint32_t wi = c * CHUNK_WORDS + threadIdx.x, tot;
	uint32_t a = wi < ng ? lt[wi] : 0, b = wi < ng ? eq[wi] : 0;
	uint32_t need = need_s;
	/* ties before this word, in key order */
	uint32_t eq_rank = eq_off + cu_block_scan((uint32_t)__popc(b), &tot);
	uint32_t keep = 0;
	for (uint32_t m = b; m && eq_rank < need; m &= m - 1, eq_rank++)
		keep |= m & (~m + 1);
	uint32_t sel = a | keep;
	uint32_t kept_before = eq_off < need ? eq_off : need;
	uint32_t r = lt_off + kept_before + cu_block_scan((uint32_t)__popc(sel), &tot);
	for (uint32_t m = sel; m; m &= m - 1)
		idx[r++] = wi * 32 + (uint32_t)__ffs(m) - 1;
}

int cu_select_ham(const uint16_t *dist, uint32_t n, uint32_t bits, uint32_t k,
		  uint32_t *idx, void *ws, char *err)
{
	uint32_t ng = (n + 31) / 32, nchunk = (ng + CHUNK_WORDS - 1) / CHUNK_WORDS;
	uint32_t *hist = (uint32_t *)ws;
	uint32_t *lt = (uint32_t *)((char *)ws + align256(HBINS * 4));
	uint32_t *eq = lt + ng;
	uint32_t *cnt = (uint32_t *)((char *)lt + align256((size_t)ng * 8));
	int rc;

	if (bits != 64 && bits != 128 && bits != 256)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: select_ham: bits must be 64, 128 or 256");
	if (n == 0 || k == 0)
		return 0;
	rc = cu_memset0(hist, HBINS * 4, err);
	if (!rc)
		rc = cu_memset0(cnt, (size_t)nchunk * 8, err);
	if (rc)
		return rc;
	unsigned blocks = (n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024;
	k_ham_hist<<<blocks, 256, 0, cudaStreamPerThread>>>(dist, n, hist);
	k_ham_mark<<<blocks, 256, 0, cudaStreamPerThread>>>(dist, n, k, hist, lt, eq, cnt, nchunk);
	k_ham_compact<<<nchunk, CHUNK_WORDS, 0, cudaStreamPerThread>>>(hist, k, lt, eq, cnt, ng,
								       nchunk, idx);
	return cu_launched(err, "select_ham");
}
