/*
 * select.cu - top-k of rows of floats on the GPU, krn_select_top's twin:
 * one block per row, radix select on order-preserving keys (11, 11 and
 * 10 bits: three histogram passes over the elements still matching the
 * prefix), then one ordered pass that keeps everything above the
 * threshold key and the first `need` elements equal to it.  No sort.
 */
#include "common.cuh"

#define SEL_THREADS 1024
#define SEL_BINS 2048

__device__ __forceinline__ uint32_t key_of(float f)
{
	uint32_t u = __float_as_uint(f);

	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Thread 0: krn's pick_digit. */
__device__ static uint32_t pick_digit(const uint32_t *hist, uint32_t nbins, uint32_t *need)
{
	uint32_t above = 0, d = nbins;

	while (d-- > 0) {
		if (above + hist[d] >= *need)
			break;
		above += hist[d];
	}
	*need -= above;
	return d;
}

__global__ static void __launch_bounds__(SEL_THREADS)
k_select(const float *x, size_t ld, const uint32_t *cnt, uint32_t n, uint32_t k,
	 uint32_t *idx, uint32_t *got)
{
	__shared__ uint32_t hist[SEL_BINS];
	__shared__ uint32_t prefix_s, mask_s, need_s;
	const uint32_t r = blockIdx.x, t = threadIdx.x;
	const float *row = x + (size_t)r * ld;
	uint32_t nr = cnt ? min(cnt[r], n) : n;
	uint32_t *out = idx + (size_t)r * k;

	if (t == 0)
		got[r] = min(k, nr);
	if (k >= nr) {
		for (uint32_t i = t; i < nr; i += blockDim.x)
			out[i] = i;
		return;
	}
	if (k == 0)
		return;
	if (t == 0) {
		prefix_s = 0;
		mask_s = 0;
		need_s = k;
	}
	const uint32_t shifts[3] = { 21, 10, 0 }, widths[3] = { 11, 11, 10 };
	for (int p = 0; p < 3; p++) {
		uint32_t nb = 1u << widths[p], sh = shifts[p];
		for (uint32_t i = t; i < nb; i += blockDim.x)
			hist[i] = 0;
		__syncthreads();
		uint32_t prefix = prefix_s, mask = mask_s;
		for (uint32_t i = t; i < nr; i += blockDim.x) {
			uint32_t key = key_of(row[i]);
			if ((key & mask) == prefix)
				atomicAdd(&hist[(key >> sh) & (nb - 1)], 1u);
		}
		__syncthreads();
		if (t == 0) {
			uint32_t need = need_s;
			uint32_t d = pick_digit(hist, nb, &need);
			need_s = need;
			prefix_s = prefix | (d << sh);
			mask_s = mask | ((nb - 1) << sh);
		}
		__syncthreads();
	}
	/* ordered collection, a tile of blockDim.x elements at a time */
	uint32_t thr = prefix_s, need = need_s, eq_seen = 0, written = 0, tot;
	for (uint32_t base = 0; base < nr; base += blockDim.x) {
		uint32_t i = base + t;
		uint32_t key = i < nr ? key_of(row[i]) : 0;
		uint32_t eq = i < nr && key == thr;
		uint32_t eq_rank = eq_seen + cu_block_scan(eq, &tot);
		eq_seen += tot;
		uint32_t sel = i < nr && (key > thr || (eq && eq_rank < need));
		uint32_t pos = written + cu_block_scan(sel, &tot);
		written += tot;
		if (sel)
			out[pos] = i;
	}
}

int cu_select_top(const float *x, size_t ld, const uint32_t *cnt, uint32_t nrows,
		  uint32_t n, uint32_t k, uint32_t *idx, uint32_t *got, char *err)
{
	if (nrows == 0)
		return 0;
	if (nrows > 65535 || (nrows > 1 && ld < n))
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: select_top: at most 65535 rows, ld >= n");
	k_select<<<nrows, SEL_THREADS, 0, cudaStreamPerThread>>>(x, ld, cnt, n, k, idx, got);
	return cu_launched(err, "select_top");
}
