/* common.cuh - helpers shared by the .cu files of the GPU module. */
#ifndef DKV_CU_COMMON_CUH
#define DKV_CU_COMMON_CUH

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>

#include "dashkv.h"
#include "cu.h"
#include "krn.h"

#define CU_FULL 0xffffffffu

/* Record a CUDA error in err; out-of-memory maps to DKV_E_NOMEM. */
static inline int cu_fail(char *err, cudaError_t e, const char *what)
{
	int code = DKV_E_INTERNAL;

	if (e == cudaErrorMemoryAllocation)
		code = DKV_E_NOMEM;
	if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
		code = DKV_E_UNSUPPORTED;
	return krn_msgf(err, code, "CUDA: %s: %s", what, cudaGetErrorString(e));
}

/* After a launch: a configuration error shows here. */
static inline int cu_launched(char *err, const char *what)
{
	cudaError_t e = cudaGetLastError();

	return e == cudaSuccess ? 0 : cu_fail(err, e, what);
}

static inline int cu_dtype_ok(uint32_t dtype)
{
	return dtype == DKV_F32 || dtype == DKV_F16 || dtype == DKV_BF16;
}

/* Element i of a row of the given dtype, as f32 (bit-exact conversions). */
__device__ __forceinline__ float cu_f16_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;

	if (exp == 0x1f)
		return __uint_as_float(sign | 0x7f800000 | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return __uint_as_float(sign);
		return __uint_as_float(sign | __float_as_uint(__fmul_rn((float)man, 0x1p-24f)));
	}
	return __uint_as_float(sign | ((exp + 112) << 23) | (man << 13));
}

__device__ __forceinline__ float cu_bf16_f32(uint16_t h)
{
	return __uint_as_float((uint32_t)h << 16);
}

__device__ __forceinline__ float cu_load(const void *row, uint32_t dtype, uint32_t i)
{
	if (dtype == DKV_F32)
		return ((const float *)row)[i];
	uint16_t h = ((const uint16_t *)row)[i];
	return dtype == DKV_F16 ? cu_f16_f32(h) : cu_bf16_f32(h);
}

/* Row p of a paged source. */
__device__ __forceinline__ const void *cu_row(const struct krn_gpu_rows &r, uint64_t p)
{
	uint64_t mask = ((uint64_t)1 << r.shift) - 1;
	size_t esz = r.dtype == DKV_F32 ? 4 : 2;
	const char *page = (const char *)r.pages[p >> r.shift];

	return page + (size_t)(p & mask) * r.ld * esz;
}

__device__ __forceinline__ float cu_warp_sum(float x)
{
	for (int o = 16; o > 0; o >>= 1)
		x += __shfl_xor_sync(CU_FULL, x, o);
	return x;
}

__device__ __forceinline__ float cu_warp_max(float x)
{
	for (int o = 16; o > 0; o >>= 1)
		x = fmaxf(x, __shfl_xor_sync(CU_FULL, x, o));
	return x;
}

/*
 * Exclusive prefix sum of v over the block (blockDim.x a multiple of 32,
 * at most 1024); *total gets the block's sum.  Every thread must call it.
 */
__device__ __forceinline__ uint32_t cu_block_scan(uint32_t v, uint32_t *total)
{
	__shared__ uint32_t warp_tot[32];
	__shared__ uint32_t block_tot;
	uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	uint32_t nwarps = blockDim.x >> 5;
	uint32_t x = v;

	for (uint32_t o = 1; o < 32; o <<= 1) {
		uint32_t y = __shfl_up_sync(CU_FULL, x, o);
		if (lane >= o)
			x += y;
	}
	if (lane == 31)
		warp_tot[warp] = x;
	__syncthreads();
	if (warp == 0) {
		uint32_t t = lane < nwarps ? warp_tot[lane] : 0, s = t;
		for (uint32_t o = 1; o < 32; o <<= 1) {
			uint32_t y = __shfl_up_sync(CU_FULL, s, o);
			if (lane >= o)
				s += y;
		}
		if (lane < nwarps)
			warp_tot[lane] = s - t; /* exclusive */
		if (lane == 31)
			block_tot = s;
	}
	__syncthreads();
	uint32_t r = warp_tot[warp] + x - v;
	*total = block_tot;
	__syncthreads();
	return r;
}

#endif
