/*
 * attend.cu - fine scoring, partial attention and the log-sum-exp merge
 * on the GPU.
 *
 * fine: one warp per (query, candidate): the lanes split the key row
 * (coalesced), a shuffle sum finishes the dot.  attend_list: one block
 * per query; its warps take every 8th listed row, lanes split the value
 * row; the block sums the warps' accumulators at the end.  attend_range
 * (split-K flash decoding): one block per chunk of rows and all queries
 * of the group: 64 rows at a time, warps compute the logits (the key row
 * read once for every query), then each thread owns one value column and
 * keeps the accumulators of every query in registers.  merge folds the
 * chunks' states in order, as the CPU reference does.
 */
#include <math.h>

#include "common.cuh"

#define ATT_THREADS 256
#define ATT_WARPS (ATT_THREADS / 32)
#define SUB 64 /* rows per step of attend_range */

__global__ static void k_fine(const float *q, uint32_t nq, uint32_t dim,
			      const struct krn_gpu_rows k, const uint32_t *pos, size_t ld_pos,
			      const uint32_t *cnt, uint32_t n, float scale, float *logit,
			      size_t ld)
{
	const uint32_t lane = threadIdx.x & 31;
	const uint64_t items = (uint64_t)nq * n;

	for (uint64_t it = (blockIdx.x * (uint64_t)blockDim.x + threadIdx.x) / 32; it < items;
	     it += (uint64_t)gridDim.x * blockDim.x / 32) {
		uint32_t j = (uint32_t)(it / n), i = (uint32_t)(it % n);
		if (cnt && i >= cnt[j])
			continue; /* uniform over the warp */
		uint32_t p = pos ? pos[j * ld_pos + i] : i;
		const void *row = cu_row(k, p);
		const float *qj = q + (size_t)j * dim;
		float s = 0.0f;
		for (uint32_t d = lane; d < dim; d += 32)
			s += qj[d] * cu_load(row, k.dtype, d);
		s = cu_warp_sum(s);
		if (lane == 0)
			logit[j * ld + i] = scale * s;
	}
}

int cu_fine(const float *q, uint32_t nq, uint32_t dim, const struct krn_gpu_rows *k,
	    const uint32_t *pos, size_t ld_pos, const uint32_t *cnt, uint32_t n,
	    float scale, float *logit, size_t ld, char *err)
{
	if (dim == 0 || dim > KRN_GPU_MAXDIM || !cu_dtype_ok(k->dtype) || k->shift > 31)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: fine: bad dim, dtype or page size");
	if (nq == 0 || n == 0)
		return 0;
	uint64_t warps = (uint64_t)nq * n;
	uint64_t blocks = (warps + ATT_WARPS - 1) / ATT_WARPS;
	k_fine<<<blocks < 4096 ? (unsigned)blocks : 4096, ATT_THREADS, 0, cudaStreamPerThread>>>(
		q, nq, dim, *k, pos, ld_pos, cnt, n, scale, logit, ld);
	return cu_launched(err, "fine");
}

/* Block-wide max of x (ATT_THREADS threads). */
__device__ static float block_max(float x)
{
	__shared__ float wm[ATT_WARPS];
	uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	x = cu_warp_max(x);
	if (lane == 0)
		wm[warp] = x;
	__syncthreads();
	float m = wm[0];
	for (uint32_t w = 1; w < ATT_WARPS; w++)
		m = fmaxf(m, wm[w]);
	__syncthreads();
	return m;
}

__global__ static void __launch_bounds__(ATT_THREADS)
k_attend_list(const float *logit, size_t ld, const uint32_t *pos, size_t ld_pos,
	      const uint32_t *cnt, uint32_t n, const struct krn_gpu_rows v, uint32_t dim,
	      struct krn_gpu_part st)
{
	__shared__ float part[ATT_WARPS][KRN_GPU_MAXDIM];
	__shared__ float psum[ATT_WARPS];
	const uint32_t j = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const uint32_t nj = cnt ? min(cnt[j], n) : n;
	const float *lg = logit + (size_t)j * ld;
	float m = -INFINITY;

	for (uint32_t i = threadIdx.x; i < nj; i += blockDim.x)
		m = fmaxf(m, lg[i]);
	m = block_max(m);
	if (m == -INFINITY) { /* empty: the neutral state */
		for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x)
			st.acc[(size_t)j * dim + d] = 0.0f;
		if (threadIdx.x == 0) {
			st.m[j] = -INFINITY;
			st.s[j] = 0.0f;
		}
		return;
	}
	float a[KRN_GPU_MAXDIM / 32];
	float s = 0.0f;
#pragma unroll
	for (uint32_t t = 0; t < KRN_GPU_MAXDIM / 32; t++)
		a[t] = 0.0f;
	for (uint32_t i = warp; i < nj; i += ATT_WARPS) {
		float p = expf(lg[i] - m);
		const void *row = cu_row(v, pos ? pos[j * ld_pos + i] : i);
		s += p;
#pragma unroll
		for (uint32_t t = 0; t < KRN_GPU_MAXDIM / 32; t++)
			if (lane + 32 * t < dim)
				a[t] += p * cu_load(row, v.dtype, lane + 32 * t);
	}
#pragma unroll
	for (uint32_t t = 0; t < KRN_GPU_MAXDIM / 32; t++)
		if (lane + 32 * t < dim)
			part[warp][lane + 32 * t] = a[t];
	if (lane == 0)
		psum[warp] = s;
	__syncthreads();
	for (uint32_t d = threadIdx.x; d < dim; d += blockDim.x) {
		float x = 0.0f;
		for (uint32_t w = 0; w < ATT_WARPS; w++)
			x += part[w][d];
		st.acc[(size_t)j * dim + d] = x;
	}
	if (threadIdx.x == 0) {
		float x = 0.0f;
		for (uint32_t w = 0; w < ATT_WARPS; w++)
			x += psum[w];
		st.m[j] = m;
		st.s[j] = x;
	}
}

int cu_attend_list(const float *logit, size_t ld, const uint32_t *pos, size_t ld_pos,
		   const uint32_t *cnt, uint32_t nq, uint32_t n,
		   const struct krn_gpu_rows *v, uint32_t dim,
		   const struct krn_gpu_part *st, char *err)
{
	if (dim == 0 || dim > KRN_GPU_MAXDIM || !cu_dtype_ok(v->dtype) || v->shift > 31)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: attend_list: bad dim, dtype or page size");
	if (nq == 0)
		return 0;
	if (nq > 65535)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: attend_list: at most 65535 queries");
	k_attend_list<<<nq, ATT_THREADS, 0, cudaStreamPerThread>>>(logit, ld, pos, ld_pos, cnt, n,
								   *v, dim, *st);
	return cu_launched(err, "attend_list");
}

/*
 * The logits of rows r0 .. r0 + nr of a step of attend_range into lg (the
 * rest of the step's SUB rows -inf): warp w takes rows w, w + 8, .., reads
 * the key row once and scores it against every query in qs.
 */
static __device__ __forceinline__ void range_logits(const struct krn_gpu_rows &k,
						    const float (*qs)[KRN_GPU_MAXDIM],
						    float (*lg)[SUB], uint32_t nq, uint32_t dim,
						    float scale, uint64_t r0, uint32_t nr)
{
	const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

	for (uint32_t r = warp; r < SUB; r += ATT_WARPS) {
		if (r >= nr) {
			if (lane < nq)
				lg[lane][r] = -INFINITY;
			continue;
		}
		const void *row = cu_row(k, r0 + r);
		float kv[KRN_GPU_MAXDIM / 32];
#pragma unroll
		for (uint32_t t = 0; t < KRN_GPU_MAXDIM / 32; t++)
			kv[t] = lane + 32 * t < dim ? cu_load(row, k.dtype, lane + 32 * t) : 0.0f;
		for (uint32_t j = 0; j < nq; j++) {
			float x = 0.0f;
#pragma unroll
			for (uint32_t t = 0; t < KRN_GPU_MAXDIM / 32; t++)
				if (lane + 32 * t < dim)
					x += kv[t] * qs[j][lane + 32 * t];
			x = cu_warp_sum(x);
			if (lane == 0)
				lg[j][r] = scale * x;
		}
	}
}

__global__ static void __launch_bounds__(ATT_THREADS)
k_attend_range(const float *q, uint32_t nq, uint32_t dim, float scale,
	       const struct krn_gpu_rows k, const struct krn_gpu_rows v, uint64_t t0,
	       uint64_t t1, uint32_t split, struct krn_gpu_part part)
{
	__shared__ float qs[KRN_GPU_MAXQ][KRN_GPU_MAXDIM];
	__shared__ float lg[KRN_GPU_MAXQ][SUB];
	__shared__ float m[KRN_GPU_MAXQ], s[KRN_GPU_MAXQ], corr[KRN_GPU_MAXQ];
	const uint32_t tid = threadIdx.x;
	const uint64_t c0 = t0 + (uint64_t)blockIdx.x * split;
	const uint64_t c1 = c0 + split < t1 ? c0 + split : t1;
	float a[KRN_GPU_MAXQ];

	for (uint32_t i = tid; i < nq * dim; i += blockDim.x)
		qs[i / dim][i % dim] = q[i];
	if (tid < nq) {
		m[tid] = -INFINITY;
		s[tid] = 0.0f;
	}
#pragma unroll
	for (uint32_t j = 0; j < KRN_GPU_MAXQ; j++)
		a[j] = 0.0f;
	__syncthreads();
	for (uint64_t r0 = c0; r0 < c1; r0 += SUB) {
		uint32_t nr = c1 - r0 < SUB ? (uint32_t)(c1 - r0) : SUB;
		range_logits(k, qs, lg, nq, dim, scale, r0, nr);
		__syncthreads();
		if (tid < nq) {
			float bm = -INFINITY;
			for (uint32_t r = 0; r < nr; r++)
				bm = fmaxf(bm, lg[tid][r]);
			float mn = fmaxf(m[tid], bm);
			corr[tid] = bm == -INFINITY ? 1.0f : expf(m[tid] - mn);
			if (bm != -INFINITY)
				m[tid] = mn;
		}
		__syncthreads();
		for (uint32_t i = tid; i < nq * SUB; i += blockDim.x) {
			uint32_t j = i / SUB, r = i % SUB;
			float x = lg[j][r];
			lg[j][r] = x == -INFINITY ? 0.0f : expf(x - m[j]);
		}
		__syncthreads();
		if (tid < nq) {
			float x = s[tid] * corr[tid];
			for (uint32_t r = 0; r < nr; r++)
				x += lg[tid][r];
			s[tid] = x;
		}
		if (tid < dim) {
#pragma unroll
			for (uint32_t j = 0; j < KRN_GPU_MAXQ; j++)
				if (j < nq)
					a[j] *= corr[j];
			for (uint32_t r = 0; r < nr; r++) {
				float x = cu_load(cu_row(v, r0 + r), v.dtype, tid);
#pragma unroll
				for (uint32_t j = 0; j < KRN_GPU_MAXQ; j++)
					if (j < nq)
						a[j] += lg[j][r] * x;
			}
		}
		__syncthreads();
	}
	size_t slot = (size_t)blockIdx.x * nq;
	if (tid < dim)
		for (uint32_t j = 0; j < nq; j++)
			part.acc[(slot + j) * dim + tid] = a[j];
	if (tid < nq) {
		part.m[slot + tid] = m[tid];
		part.s[slot + tid] = s[tid];
	}
}

int cu_attend_range(const float *q, uint32_t nq, uint32_t dim, float scale,
		    const struct krn_gpu_rows *k, const struct krn_gpu_rows *v,
		    uint64_t t0, uint64_t t1, uint32_t split,
		    const struct krn_gpu_part *part, char *err)
{
	if (dim == 0 || dim > KRN_GPU_MAXDIM || nq == 0 || nq > KRN_GPU_MAXQ)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: attend_range: dim 1..256 and 1..16 queries");
	if (!cu_dtype_ok(k->dtype) || !cu_dtype_ok(v->dtype) || split == 0 || t1 < t0)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: attend_range: bad dtype, split or range");
	if (t1 == t0)
		return 0;
	uint64_t chunks = (t1 - t0 + split - 1) / split;
	if (chunks > 0x7fffffffu)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: attend_range: too many chunks");
	k_attend_range<<<(unsigned)chunks, ATT_THREADS, 0, cudaStreamPerThread>>>(
		q, nq, dim, scale, *k, *v, t0, t1, split, *part);
	return cu_launched(err, "attend_range");
}

/*
 * One block per query, one thread per column (dim <= blockDim.x); every
 * thread folds the scalars too, thread 0 writes them.
 */
__global__ static void k_merge(struct krn_gpu_part in, uint32_t nparts, uint32_t nq,
			       uint32_t dim, struct krn_gpu_part out)
{
	const uint32_t j = blockIdx.x, d = threadIdx.x;
	float m = in.m[j], s = in.s[j];
	float acc = d < dim ? in.acc[(size_t)j * dim + d] : 0.0f;

	for (uint32_t c = 1; c < nparts; c++) {
		size_t slot = (size_t)c * nq + j;
		float bm = in.m[slot];
		if (bm == -INFINITY)
			continue;
		float mn = fmaxf(m, bm);
		float ca = expf(m - mn), cb = expf(bm - mn);
		s = s * ca + in.s[slot] * cb;
		if (d < dim)
			acc = acc * ca + in.acc[slot * dim + d] * cb;
		m = mn;
	}
	if (d < dim)
		out.acc[(size_t)j * dim + d] = acc;
	if (d == 0) {
		out.m[j] = m;
		out.s[j] = s;
	}
}

int cu_merge(const struct krn_gpu_part *in, uint32_t nparts, uint32_t nq, uint32_t dim,
	     const struct krn_gpu_part *out, char *err)
{
	if (dim == 0 || dim > KRN_GPU_MAXDIM || nparts == 0)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: merge: dim 1..256 and at least one part");
	if (nq == 0)
		return 0;
	if (nq > 65535)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: merge: at most 65535 queries");
	k_merge<<<nq, KRN_GPU_MAXDIM, 0, cudaStreamPerThread>>>(*in, nparts, nq, dim, *out);
	return cu_launched(err, "merge");
}
