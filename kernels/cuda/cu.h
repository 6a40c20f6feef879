/*
 * cu.h - the entry points the .cu files of the GPU module export to
 * module.c, which gathers them into the table of krn_gpu.h.  Each is
 * documented at its slot in struct krn_gpu_ops.
 */
#ifndef DKV_CU_H
#define DKV_CU_H

#include "krn_gpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* base.cu */
int cu_probe(int *ndev, char *err);
int cu_device(int dev, char *err);
int cu_sync(char *err);
int cu_dev_name(int dev, char *name, size_t len, char *err);
int cu_dalloc(void **p, size_t bytes, char *err);
int cu_halloc(void **p, size_t bytes, char *err);
void cu_dfree(void *p);
void cu_hfree(void *p);
int cu_put(void *dst, const void *src, size_t bytes, char *err);
int cu_get(void *dst, const void *src, size_t bytes, char *err);
int cu_copy(void *dst, const void *src, size_t bytes, char *err);
int cu_memset0(void *p, size_t bytes, char *err);
int cu_to_f32(const uint16_t *in, uint32_t dtype, float *out, size_t n, char *err);
int cu_from_f32(const float *in, uint32_t dtype, uint16_t *out, size_t n, char *err);
int cu_encode(const float *P, uint32_t bits, uint32_t dim, const void *x, uint32_t dtype,
	      size_t ld_x, uint32_t n, uint64_t *codes, uint8_t *sliced, uint32_t p0,
	      char *err);
int cu_hamming(const uint64_t *q, const uint64_t *codes, uint32_t words, uint32_t n,
	       uint16_t *dist, char *err);
int cu_fill(void *p, uint32_t dtype, size_t n, uint64_t seed, char *err);
int cu_mark(void **ev, char *err);
int cu_elapsed(void *ev0, void *ev1, float *ms, char *err);

/* scan.cu */
size_t cu_scan_ws(uint32_t nq, uint32_t first, uint32_t n);
int cu_scan(const struct krn_gpu_scan *s, char *err);
size_t cu_select_ham_ws(uint32_t n);
int cu_select_ham(const uint16_t *dist, uint32_t n, uint32_t bits, uint32_t k,
		  uint32_t *idx, void *ws, char *err);

/* select.cu */
int cu_select_top(const float *x, size_t ld, const uint32_t *cnt, uint32_t nrows,
		  uint32_t n, uint32_t k, uint32_t *idx, uint32_t *got, char *err);

/* attend.cu */
int cu_fine(const float *q, uint32_t nq, uint32_t dim, const struct krn_gpu_rows *k,
	    const uint32_t *pos, size_t ld_pos, const uint32_t *cnt, uint32_t n,
	    float scale, float *logit, size_t ld, char *err);
int cu_attend_list(const float *logit, size_t ld, const uint32_t *pos, size_t ld_pos,
		   const uint32_t *cnt, uint32_t nq, uint32_t n,
		   const struct krn_gpu_rows *v, uint32_t dim,
		   const struct krn_gpu_part *st, char *err);
int cu_attend_range(const float *q, uint32_t nq, uint32_t dim, float scale,
		    const struct krn_gpu_rows *k, const struct krn_gpu_rows *v,
		    uint64_t t0, uint64_t t1, uint32_t split,
		    const struct krn_gpu_part *part, char *err);
int cu_merge(const struct krn_gpu_part *in, uint32_t nparts, uint32_t nq, uint32_t dim,
	     const struct krn_gpu_part *out, char *err);

/* search.cu */
size_t cu_search_ws(uint32_t nq, uint32_t dim, uint64_t len, uint32_t cand, uint32_t top_k);
int cu_search(const struct krn_gpu_search *a, char *err);

/* shard/coll_nccl.c (built with NCCL only) */
int cu_coll_nccl_new(struct shard_coll **out, int nranks, const int *devices, char *err);

#ifdef __cplusplus
}
#endif

#endif /* DKV_CU_H */
