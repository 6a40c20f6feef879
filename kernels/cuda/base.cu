/*
 * base.cu - devices, memory, dtype conversion, key encoding, Hamming
 * distances, fills and timing marks of the GPU module.
 */
#include "common.cuh"

int cu_probe(int *ndev, char *err)
{
	int n = 0;
	cudaError_t e = cudaGetDeviceCount(&n);

	if (e != cudaSuccess) {
		cudaGetLastError();
		return krn_msgf(err, DKV_E_UNSUPPORTED, "no usable CUDA device: %s",
				cudaGetErrorString(e));
	}
	if (n == 0)
		return krn_msgf(err, DKV_E_UNSUPPORTED, "no CUDA device");
	*ndev = n;
	return 0;
}

int cu_device(int dev, char *err)
{
	cudaError_t e = cudaSetDevice(dev);

	return e == cudaSuccess ? 0 : cu_fail(err, e, "cudaSetDevice");
}

int cu_sync(char *err)
{
	cudaError_t e = cudaStreamSynchronize(cudaStreamPerThread);

	return e == cudaSuccess ? 0 : cu_fail(err, e, "stream synchronize");
}

int cu_dev_name(int dev, char *name, size_t len, char *err)
{
	cudaDeviceProp p;
	cudaError_t e = cudaGetDeviceProperties(&p, dev);

	if (e != cudaSuccess)
		return cu_fail(err, e, "cudaGetDeviceProperties");
	snprintf(name, len, "%s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
		 p.multiProcessorCount, (double)p.totalGlobalMem / (1u << 30));
	return 0;
}

int cu_dalloc(void **p, size_t bytes, char *err)
{
	void *q = NULL;
	cudaError_t e = cudaMalloc(&q, bytes ? bytes : 1);

	if (e != cudaSuccess)
		return cu_fail(err, e, "cudaMalloc");
	*p = q;
	return 0;
}

/* Pinned, portable and mapped: kernels read it through its own address (UVA). */
int cu_halloc(void **p, size_t bytes, char *err)
{
	void *q = NULL;
	cudaError_t e = cudaHostAlloc(&q, bytes ? bytes : 1,
				      cudaHostAllocPortable | cudaHostAllocMapped);

	if (e != cudaSuccess)
		return cu_fail(err, e, "cudaHostAlloc");
	*p = q;
	return 0;
}

void cu_dfree(void *p)
{
	if (p)
		cudaFree(p);
}

void cu_hfree(void *p)
{
	if (p)
		cudaFreeHost(p);
}

static int copy_sync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, char *err)
{
	cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, cudaStreamPerThread);

	if (e == cudaSuccess)
		e = cudaStreamSynchronize(cudaStreamPerThread);
	return e == cudaSuccess ? 0 : cu_fail(err, e, "cudaMemcpy");
}

int cu_put(void *dst, const void *src, size_t bytes, char *err)
{
	return copy_sync(dst, src, bytes, cudaMemcpyHostToDevice, err);
}

int cu_get(void *dst, const void *src, size_t bytes, char *err)
{
	return copy_sync(dst, src, bytes, cudaMemcpyDeviceToHost, err);
}

/* Device to device, queued on the stream (no wait). */
int cu_copy(void *dst, const void *src, size_t bytes, char *err)
{
	cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice,
					cudaStreamPerThread);

	return e == cudaSuccess ? 0 : cu_fail(err, e, "cudaMemcpy device to device");
}

int cu_memset0(void *p, size_t bytes, char *err)
{
	cudaError_t e = cudaMemsetAsync(p, 0, bytes, cudaStreamPerThread);

	return e == cudaSuccess ? 0 : cu_fail(err, e, "cudaMemset");
}

/* f32 -> f16, round to nearest even: kernels/cpu/convert.c, bit for bit. */
__device__ static uint16_t f32_f16(float f)
{
	uint32_t u = __float_as_uint(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t a = u & 0x7fffffff;

	if (a >= 0x7f800000)
		return sign | 0x7c00 | (a > 0x7f800000 ? 0x200 | ((a >> 13) & 0x3ff) : 0);
	if (a >= 0x477ff000)
		return sign | 0x7c00;
	if (a < 0x38800000) {
		if (a < 0x33000000)
			return sign;
		uint32_t e = a >> 23;
		uint32_t man = (a & 0x7fffff) | 0x800000;
		uint32_t shift = 126 - e;
		uint32_t r = man >> shift;
		uint32_t rem = man & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return sign | (uint16_t)r;
	}
	uint32_t r = a - 0x38000000;
	uint32_t lsb = (r >> 13) & 1;
	r += 0xfff + lsb;
	return sign | (uint16_t)(r >> 13);
}

__device__ static uint16_t f32_bf16(float f)
{
	uint32_t u = __float_as_uint(f);

	if ((u & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fff + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

__global__ static void k_to_f32(const uint16_t *in, uint32_t dtype, float *out, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		out[i] = dtype == DKV_F16 ? cu_f16_f32(in[i]) : cu_bf16_f32(in[i]);
}

__global__ static void k_from_f32(const float *in, uint32_t dtype, uint16_t *out, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		out[i] = dtype == DKV_F16 ? f32_f16(in[i]) : f32_bf16(in[i]);
}

static unsigned grid_for(size_t n, unsigned threads)
{
	size_t g = (n + threads - 1) / threads;

	return g == 0 ? 1 : g > 65535 ? 65535 : (unsigned)g;
}

int cu_to_f32(const uint16_t *in, uint32_t dtype, float *out, size_t n, char *err)
{
	if (dtype != DKV_F16 && dtype != DKV_BF16)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: to_f32 converts f16 or bf16");
	if (n == 0)
		return 0;
	k_to_f32<<<grid_for(n, 256), 256, 0, cudaStreamPerThread>>>(in, dtype, out, n);
	return cu_launched(err, "to_f32");
}

int cu_from_f32(const float *in, uint32_t dtype, uint16_t *out, size_t n, char *err)
{
	if (dtype != DKV_F16 && dtype != DKV_BF16)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: from_f32 converts to f16 or bf16");
	if (n == 0)
		return 0;
	k_from_f32<<<grid_for(n, 256), 256, 0, cudaStreamPerThread>>>(in, dtype, out, n);
	return cu_launched(err, "from_f32");
}

/*
 * encode: one block per key row, one thread per code bit.  The row goes
 * to shared memory as f32; each thread sums its projection in the
 * reference's order with separate roundings (no contraction to fma), so
 * the sign bits equal the CPU reference's.  Warps vote their 32 bits.
 */
__global__ static void k_encode(const float *P, uint32_t bits, uint32_t dim, const void *x,
				uint32_t dtype, size_t ld_x, uint32_t n, uint64_t *codes,
				uint8_t *sliced, uint32_t p0)
{
	__shared__ float row[KRN_GPU_MAXDIM];
	__shared__ uint32_t vote[8];
	uint32_t words = bits / 64, j = threadIdx.x;
	size_t esz = dtype == DKV_F32 ? 4 : 2;

	for (uint32_t i = blockIdx.x; i < n; i += gridDim.x) {
		const void *xr = (const char *)x + (size_t)i * ld_x * esz;
		for (uint32_t d = j; d < dim; d += blockDim.x)
			row[d] = cu_load(xr, dtype, d);
		__syncthreads();
		float s = 0.0f;
		const float *pj = P + (size_t)j * dim;
		for (uint32_t d = 0; d < dim; d++)
			s = __fadd_rn(s, __fmul_rn(pj[d], row[d]));
		uint32_t b = __ballot_sync(CU_FULL, s > 0.0f);
		if ((j & 31) == 0)
			vote[j / 32] = b;
		__syncthreads();
		if (j < words) {
			uint64_t c = (uint64_t)vote[2 * j] | ((uint64_t)vote[2 * j + 1] << 32);
			if (codes)
				codes[(size_t)i * words + j] = c;
			if (sliced) {
				uint32_t p = p0 + i;
				uint8_t *g = sliced + (size_t)(p / 32) * words * 8 * 32 + p % 32;
				for (uint32_t k = 0; k < 8; k++)
					g[(j * 8 + k) * 32] = (uint8_t)(c >> (8 * k));
			}
		}
		__syncthreads();
	}
}

int cu_encode(const float *P, uint32_t bits, uint32_t dim, const void *x, uint32_t dtype,
	      size_t ld_x, uint32_t n, uint64_t *codes, uint8_t *sliced, uint32_t p0,
	      char *err)
{
	if (bits != 64 && bits != 128 && bits != 256)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: encode: bits must be 64, 128 or 256");
	if (dim == 0 || dim > KRN_GPU_MAXDIM || !cu_dtype_ok(dtype) || ld_x < dim)
		return krn_msgf(err, DKV_E_INVAL,
				"GPU kernel: encode: bad dim, dtype or row stride");
	if (n == 0)
		return 0;
	k_encode<<<n < 65535 ? n : 65535, bits, 0, cudaStreamPerThread>>>(
		P, bits, dim, x, dtype, ld_x, n, codes, sliced, p0);
	return cu_launched(err, "encode");
}

__global__ static void k_hamming(const uint64_t *q, const uint64_t *codes, uint32_t words,
				 uint32_t n, uint16_t *dist)
{
	for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += gridDim.x * blockDim.x) {
		uint32_t h = 0;
		for (uint32_t w = 0; w < words; w++)
			h += __popcll(q[w] ^ codes[(size_t)i * words + w]);
		dist[i] = (uint16_t)h;
	}
}

int cu_hamming(const uint64_t *q, const uint64_t *codes, uint32_t words, uint32_t n,
	       uint16_t *dist, char *err)
{
	if (words == 0 || words > 4)
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: hamming: 1 to 4 code words");
	if (n == 0)
		return 0;
	k_hamming<<<grid_for(n, 256), 256, 0, cudaStreamPerThread>>>(q, codes, words, n, dist);
	return cu_launched(err, "hamming");
}

__device__ static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

__global__ static void k_fill(void *p, uint32_t dtype, size_t n, uint64_t seed)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint64_t h = mix64(seed ^ mix64(i));
		float f = (float)(h >> 40) * 0x1p-23f - 1.0f;
		if (dtype == DKV_F32)
			((float *)p)[i] = f;
		else if (dtype == DKV_F16)
			((uint16_t *)p)[i] = f32_f16(f);
		else
			((uint16_t *)p)[i] = f32_bf16(f);
	}
}

/* dtype 255: fill bytes (codes) with random bits. */
__global__ static void k_fill_bytes(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		p[i] = (uint8_t)(mix64(seed ^ mix64(i)) >> 56);
}

int cu_fill(void *p, uint32_t dtype, size_t n, uint64_t seed, char *err)
{
	if (n == 0)
		return 0;
	if (dtype == 255)
		k_fill_bytes<<<grid_for(n, 256), 256, 0, cudaStreamPerThread>>>(
			(uint8_t *)p, n, seed);
	else if (cu_dtype_ok(dtype))
		k_fill<<<grid_for(n, 256), 256, 0, cudaStreamPerThread>>>(p, dtype, n, seed);
	else
		return krn_msgf(err, DKV_E_INVAL, "GPU kernel: fill: unknown dtype");
	return cu_launched(err, "fill");
}

int cu_mark(void **ev, char *err)
{
	cudaEvent_t e;
	cudaError_t r = cudaEventCreate(&e);

	if (r == cudaSuccess)
		r = cudaEventRecord(e, cudaStreamPerThread);
	if (r != cudaSuccess)
		return cu_fail(err, r, "cudaEventRecord");
	*ev = (void *)e;
	return 0;
}

/* Waits for ev1, returns the time between the marks and frees both. */
int cu_elapsed(void *ev0, void *ev1, float *ms, char *err)
{
	cudaError_t r = cudaEventSynchronize((cudaEvent_t)ev1);

	if (r == cudaSuccess)
		r = cudaEventElapsedTime(ms, (cudaEvent_t)ev0, (cudaEvent_t)ev1);
	cudaEventDestroy((cudaEvent_t)ev0);
	cudaEventDestroy((cudaEvent_t)ev1);
	return r == cudaSuccess ? 0 : cu_fail(err, r, "cudaEventElapsedTime");
}
