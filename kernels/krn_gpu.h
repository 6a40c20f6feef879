/*
 * krn_gpu.h - the GPU module's table of entry points and its loader.
 *
 * The CUDA kernels (kernels/cuda/) are built into a libtool module,
 * dashkv-cuda.so, installed in pkglibdir.  Nothing else links libcudart
 * or libnccl: krn_gpu_load() dlopens the module, only when it is there
 * and a CUDA device exists, and hands out its table.  Without the module
 * or a device every caller gets DKV_E_UNSUPPORTED and a message.
 *
 * Conventions: every pointer an entry point takes is device memory (or
 * pinned host memory mapped into the device's address space, where said),
 * unless named "host".  Kernels run on the calling thread's default
 * stream (the module is built with per-thread default streams), so each
 * shard thread has its own stream; they return once queued.  sync waits.
 * Entry points return 0 or a negative DKV_E_* code with a message in err
 * (msg.h).  Kernels never allocate: scratch comes from the
 * caller, sized by the *_ws functions.
 */
#ifndef DKV_KRN_GPU_H
#define DKV_KRN_GPU_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define KRN_GPU_ABI 1
#define KRN_GPU_SYM "dkv_cuda_module"
#define KRN_GPU_MAXQ 16   /* queries of one group (GQA) per kernel call */
#define KRN_GPU_MAXDIM 256

struct shard_coll;

/* Row sources: row p is pages[p >> shift] + (p & (2^shift - 1)) * ld elements. */
struct krn_gpu_rows {
	const void *const *pages; /* device array of page pointers */
	uint32_t shift;           /* log2 of rows per page; 31 for one flat array */
	uint32_t dtype;           /* DKV_F32, DKV_F16, DKV_BF16 */
	size_t ld;                /* elements between rows of a page */
};

/*
 * Coded keys for the scan: byte-sliced codes as in krn.h (groups of
 * KRN_CODE_GROUP), norms and norm classes, paged like krn_gpu_rows
 * (rows per page a multiple of 64).
 */
struct krn_gpu_codes {
	const uint8_t *const *codes;
	const float *const *norms;
	const uint8_t *const *cls;
	uint32_t shift;
};

/* Partial attention states of nq queries: m[nq], s[nq], acc[nq][dim]. */
struct krn_gpu_part {
	float *m;
	float *s;
	float *acc;
};

/*
 * The coarse scan (krn_ops.scan's twin).  Query side as struct
 * krn_scan_q, in device memory; keys [first, first + n); hits base + p in
 * increasing p, at most hit_cap per query, n_hit counting all; blk (NULL:
 * none) gets the tail mass of each 64-token block, blk[j * ld_blk + p / 64
 * - first / 64], added to what is there.
 */
struct krn_gpu_scan {
	uint32_t nq, words, stride;
	const uint64_t *qc;
	const float *tab;
	const int32_t *lim;
	const float *thr, *ca, *cb;
	struct krn_gpu_codes keys;
	uint32_t first, n, base;
	uint32_t *hit, hit_cap, *n_hit;
	float *blk;
	size_t ld_blk;
	void *ws; /* scan_ws(nq, first, n) bytes */
};

/* A GPU shard of one (layer, kv head): pages on the device (see search). */
struct krn_gpu_search {
	uint32_t nq, dim, words, dtype;
	float scale;
	const float *q;             /* [nq][dim] */
	struct krn_gpu_scan scan;   /* query side + keys; hit/n_hit/blk/ws unused */
	struct krn_gpu_rows k, v;   /* full keys and values (device or mapped host) */
	uint64_t len;               /* tokens stored */
	uint32_t sinks, window;     /* exact ranges [0, sinks) and [len - window, len) */
	uint32_t cand, top_k;       /* hits kept per query; exact tokens per query */
	struct krn_gpu_part out;    /* [nq] result: the merged partial state */
	void *ws;                   /* search_ws(nq, dim, len, cand, top_k) bytes */
	uint32_t *n_hit;            /* NULL, or [nq]: scan hits before the cap */
};

struct krn_gpu_ops {
	uint32_t abi;
	const char *name;

	/* devices: count (0 is an error: DKV_E_UNSUPPORTED), select, wait */
	int (*probe)(int *ndev, char *err);
	int (*device)(int dev, char *err);
	int (*sync)(char *err);
	int (*dev_name)(int dev, char *name, size_t len, char *err);

	/* memory: device, pinned host mapped for the device (NUMA: caller's node) */
	int (*dalloc)(void **p, size_t bytes, char *err);
	int (*halloc)(void **p, size_t bytes, char *err);
	void (*dfree)(void *p);
	void (*hfree)(void *p);
	int (*put)(void *dst, const void *host_src, size_t bytes, char *err);
	int (*get)(void *host_dst, const void *src, size_t bytes, char *err);
	int (*copy)(void *dst, const void *src, size_t bytes, char *err);
	int (*memset0)(void *p, size_t bytes, char *err);

	/* dtype conversion, bit-identical to kernels/cpu/convert.c */
	int (*to_f32)(const uint16_t *in, uint32_t dtype, float *out, size_t n, char *err);
	int (*from_f32)(const float *in, uint32_t dtype, uint16_t *out, size_t n, char *err);

	/*
	 * encode (krn_ops.encode): x rows (dtype, ld_x apart) through P
	 * [bits][dim] f32.  codes (NULL: skip) gets words per row; sliced
	 * (NULL: skip) gets the byte-sliced layout at positions p0 + i.
	 */
	int (*encode)(const float *P, uint32_t bits, uint32_t dim, const void *x,
		      uint32_t dtype, size_t ld_x, uint32_t n, uint64_t *codes,
		      uint8_t *sliced, uint32_t p0, char *err);

	/* hamming (krn_ops.hamming) */
	int (*hamming)(const uint64_t *q, const uint64_t *codes, uint32_t words,
		       uint32_t n, uint16_t *dist, char *err);

	size_t (*scan_ws)(uint32_t nq, uint32_t first, uint32_t n);
	int (*scan)(const struct krn_gpu_scan *s, char *err);

	/*
	 * select_top: per row r < nrows, the k largest of x[r * ld + 0..n_r)
	 * (n_r = n, or cnt[r] when cnt is set) as krn_select_top does: ties
	 * to the lower index, indices increasing, written to idx[r * k ..];
	 * got[r] = min(k, n_r).  One block per row (radix select, 11/11/10
	 * bits).
	 */
	int (*select_top)(const float *x, size_t ld, const uint32_t *cnt, uint32_t nrows,
			  uint32_t n, uint32_t k, uint32_t *idx, uint32_t *got, char *err);

	/*
	 * select_ham: the k smallest of dist[0..n) (ties to the lower index),
	 * indices increasing, into idx: a histogram of the distances gives the
	 * cut, no sort.  ws: select_ham_ws(n) bytes.
	 */
	size_t (*select_ham_ws)(uint32_t n);
	int (*select_ham)(const uint16_t *dist, uint32_t n, uint32_t bits, uint32_t k,
			  uint32_t *idx, void *ws, char *err);

	/*
	 * fine: logit[j * ld + i] = scale * q_j . row(pos[j * ld_pos + i]) for
	 * i < n (or cnt[j]); pos NULL means row i.
	 */
	int (*fine)(const float *q, uint32_t nq, uint32_t dim, const struct krn_gpu_rows *k,
		    const uint32_t *pos, size_t ld_pos, const uint32_t *cnt, uint32_t n,
		    float scale, float *logit, size_t ld, char *err);

	/*
	 * attend_list: st[j] = the partial attention of query j over the
	 * rows pos[j * ld_pos + i], i < n (or cnt[j]), with the logits given
	 * (logit[j * ld + i]); pos NULL means row i.  st is overwritten.
	 */
	int (*attend_list)(const float *logit, size_t ld, const uint32_t *pos, size_t ld_pos,
			   const uint32_t *cnt, uint32_t nq, uint32_t n,
			   const struct krn_gpu_rows *v, uint32_t dim,
			   const struct krn_gpu_part *st, char *err);

	/*
	 * attend_range: exact attention of nq queries over rows [t0, t1),
	 * split into chunks of `split` rows; part[c] (nq states each, laid out
	 * as [c][nq]) is chunk c's partial state.  Chunks: ceil((t1-t0)/split).
	 */
	int (*attend_range)(const float *q, uint32_t nq, uint32_t dim, float scale,
			    const struct krn_gpu_rows *k, const struct krn_gpu_rows *v,
			    uint64_t t0, uint64_t t1, uint32_t split,
			    const struct krn_gpu_part *part, char *err);

	/* merge: out[j] = LSE merge of in[c][j] for c < nparts (in order). */
	int (*merge)(const struct krn_gpu_part *in, uint32_t nparts, uint32_t nq,
		     uint32_t dim, const struct krn_gpu_part *out, char *err);

	/* search: the whole per-shard search on the GPU (see krn_gpu_search) */
	size_t (*search_ws)(uint32_t nq, uint32_t dim, uint64_t len, uint32_t cand,
			    uint32_t top_k);
	int (*search)(const struct krn_gpu_search *a, char *err);

	/* fill n elements (dtype) with a hash of (seed, index) in [-1, 1) */
	int (*fill)(void *p, uint32_t dtype, size_t n, uint64_t seed, char *err);

	/* elapsed milliseconds between two points of this thread's stream */
	int (*mark)(void **ev, char *err);
	int (*elapsed)(void *ev0, void *ev1, float *ms, char *err);

	/*
	 * The NCCL backend of the shard collective (shard/coll.h's
	 * shard_coll_nccl_ctor); NULL when the module was built without NCCL.
	 */
	int (*coll_nccl_new)(struct shard_coll **out, int nranks, const int *devices,
			     char *err);
};

/*
 * Load the module (path NULL: $DASHKV_CUDA_MODULE, else pkglibdir) and
 * probe for a device.  Returns 0 and the table, or DKV_E_UNSUPPORTED
 * (no module, no libcuda, no device) / DKV_E_PROTO (ABI mismatch) with a
 * message.  The module stays loaded; later calls return the same table.
 */
int krn_gpu_load(const char *path, const struct krn_gpu_ops **out, char *err);

#endif /* DKV_KRN_GPU_H */
