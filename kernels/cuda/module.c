/*
 * module.c - the table the GPU module exports (dashkv-cuda.so); the
 * loader (kernels/gpu_load.c) finds it by name with dlsym.
 */
#include "config.h"
#include "cu.h"

const struct krn_gpu_ops dkv_cuda_module;

const struct krn_gpu_ops dkv_cuda_module = {
	.abi = KRN_GPU_ABI,
	.name = "cuda",
	.probe = cu_probe,
	.device = cu_device,
	.sync = cu_sync,
	.dev_name = cu_dev_name,
	.dalloc = cu_dalloc,
	.halloc = cu_halloc,
	.dfree = cu_dfree,
	.hfree = cu_hfree,
	.put = cu_put,
	.get = cu_get,
	.copy = cu_copy,
	.memset0 = cu_memset0,
	.to_f32 = cu_to_f32,
	.from_f32 = cu_from_f32,
	.encode = cu_encode,
	.hamming = cu_hamming,
	.scan_ws = cu_scan_ws,
	.scan = cu_scan,
	.select_top = cu_select_top,
	.select_ham_ws = cu_select_ham_ws,
	.select_ham = cu_select_ham,
	.fine = cu_fine,
	.attend_list = cu_attend_list,
	.attend_range = cu_attend_range,
	.merge = cu_merge,
	.search_ws = cu_search_ws,
	.search = cu_search,
	.fill = cu_fill,
	.mark = cu_mark,
	.elapsed = cu_elapsed,
#ifdef HAVE_NCCL
	.coll_nccl_new = cu_coll_nccl_new,
#else
	.coll_nccl_new = 0,
#endif
};
