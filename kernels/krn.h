/*
 * krn.h - DASH-KV compute kernels (stateless).
 *
 * Every kernel has a scalar reference (kernels/cpu/ref.c) and may have
 * AVX2 and AVX-512 variants.  krn_get() returns the table chosen once at
 * run time from cpuid + xgetbv, or forced by DASHKV_SIMD.  Kernels never
 * allocate and never start threads.
 *
 * Conventions: row-major f32 arrays; "ld" is a row stride in elements;
 * codes are packed little-endian bit strings of `words` uint64 (64 bits per
 * word, bit j of the code is bit (j % 64) of word j / 64).
 */
#ifndef DKV_KRN_H
#define DKV_KRN_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

enum krn_level { KRN_SCALAR = 0, KRN_AVX2 = 1, KRN_AVX512 = 2, KRN_NLEVELS };

/* Online-softmax partial attention state for one query. */
struct krn_part {
	float m;   /* running max of the scaled logits (-INFINITY when empty) */
	float s;   /* sum of exp(logit - m) */
	float *acc; /* [dim]: sum of exp(logit - m) * v */
};

/*
 * The coarse filter's one pass over n coded keys for nq queries.  For
 * query j and key i (in [first, first + n) of struct krn_scan_keys):
 *  - stage 1, every key: h = popcount(qc[j] ^ code of i) over all words;
 *    the key is a probe when h <= lim[j * KRN_CLASSES + cls[i]], cls[i]
 *    being the key's norm class (0..15): an integer test, no float;
 *  - stage 2, probes: e = norms[i] * tab[j * (64 * words + 1) + h] (the
 *    product estimate computes); e >= thr[j] makes the key a hit: base + i
 *    is written to hit[j * hit_cap + n_hit[j]] while n_hit[j] < hit_cap,
 *    and n_hit[j] counts every hit; hits come in increasing i;
 *  - tail: a key with i % stride == 0 that is not a hit adds
 *    stride * exp(ca[j] * e + cb[j]) to blk[j * ld_blk + i / 64 -
 *    first / 64], the tail mass of its 64-token block (skipped when blk
 *    is NULL).
 * Variants must give the reference's hits exactly; blk may differ in the
 * last bits (a vectorised exp, another order of additions).
 */
/* Norm classes of the scan's first stage (one 16-entry table lookup). */
#define KRN_CLASSES 16

struct krn_scan_q {
	uint32_t nq;
	uint32_t words;
	const uint64_t *qc;  /* [nq][words] */
	const float *tab;    /* [nq][64 * words + 1] */
	const int32_t *lim;  /* [nq][KRN_CLASSES]: stage-1 limits per norm class */
	const float *thr;    /* [nq] */
	const float *ca;     /* [nq] */
	const float *cb;     /* [nq] */
	uint32_t stride;     /* tail sampling: 1 (every key), 8, 16, 32 or 64 */
};

/*
 * Keys [first, first + n) of an array whose codes are byte-sliced: key p's
 * byte b lies at codes[(p / 32) * words * 256 + b * 32 + p % 32]; codes
 * is 32-byte aligned (vector loads of whole groups).  cls and
 * norms are indexed by p too.  Hits are reported as base + p; the tail of
 * key p goes to blk[p / 64 - first / 64].
 */
struct krn_scan_keys {
	const uint8_t *codes;
	const uint8_t *cls;
	const float *norms;
	uint32_t first;
	uint32_t n;
	uint32_t base;
};

#define KRN_CODE_GROUP 32u

/* Address of key p's first code byte in a byte-sliced array. */
static inline const uint8_t *krn_code_at(const uint8_t *codes, uint32_t words, uint32_t p)
{
	return codes + (size_t)(p / KRN_CODE_GROUP) * words * 8 * KRN_CODE_GROUP +
	       p % KRN_CODE_GROUP;
}

/* Gather / scatter one key's code between the sliced array and words. */
static inline void krn_code_read(const uint8_t *c, uint32_t words, uint64_t *code)
{
	for (uint32_t w = 0; w < words; w++) {
		uint64_t x = 0;
		for (uint32_t b = 0; b < 8; b++)
			x |= (uint64_t)c[(w * 8 + b) * KRN_CODE_GROUP] << (8 * b);
		code[w] = x;
	}
}

static inline void krn_code_write(uint8_t *c, uint32_t words, const uint64_t *code)
{
	for (uint32_t w = 0; w < words; w++)
		for (uint32_t b = 0; b < 8; b++)
			c[(w * 8 + b) * KRN_CODE_GROUP] = (uint8_t)(code[w] >> (8 * b));
}

struct krn_scan_out {
	uint32_t *hit;
	uint32_t hit_cap;
	uint32_t *n_hit;
	float *blk;            /* NULL: no tail */
	size_t ld_blk;
};

/* Element types of stored rows (the same values as dkv_dtype). */
enum krn_elt { KRN_F32 = 0, KRN_F16 = 1, KRN_BF16 = 2 };

/* Rows gdot asks for ahead of use, past the ones it scores. */
#define KRN_GDOT_AHEAD 16u
/* Most queries one sketch call scores. */
#define KRN_SKETCH_MAXQ 64u
/* Largest dim gdot takes (the largest head_dim). */
#define KRN_MAX_DIM 256u

struct krn_ops {
	const char *name;
	enum krn_level level;

	/*
	 * encode: codes[i] = sign bits of P x_i for n rows x (ld_x apart):
	 * bit j is 1 when dot(P[j], x_i) > 0.  P is [bits][dim].
	 * bits is 64, 128 or 256; codes has bits/64 words per row.
	 */
	void (*encode)(const float *P, uint32_t bits, uint32_t dim,
		       const float *x, size_t ld_x, uint32_t n, uint64_t *codes);

	/* hamming: dist[i] = popcount(q ^ codes[i]), codes `words` per row. */
	void (*hamming)(const uint64_t *q, const uint64_t *codes,
			uint32_t words, uint32_t n, uint16_t *dist);

	/* scan: the coarse filter's pass; see struct krn_scan_q below. */
	void (*scan)(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		     struct krn_scan_out *o);

	/*
	 * estimate: scan's stage-2 estimates, for every key of the nk runs
	 * of keys k[0..nk) (the threshold sample's runs): for
	 * query j < q->nq and key p in [k[r].first, k[r].first + k[r].n),
	 * out[j * ld_out + o_r + p - k[r].first] = k[r].norms[p] *
	 * q->tab[j * (64 * words + 1) + h], h the distance of scan's stage
	 * 1 and o_r the keys of the runs before r.  Only nq, words, qc and
	 * tab of q and codes, norms, first and n of the runs are read; codes
	 * are read in whole groups of KRN_CODE_GROUP keys.  Runs may lie
	 * anywhere: variants ask for a run's memory ahead of its use.
	 * Bit-identical to the reference.
	 */
	void (*estimate)(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 uint32_t nk, float *out, size_t ld_out);

	/*
	 * wsum: acc[j * dim + d] += sum over i of w[j * ld_w + i] *
	 * rows[i * ld + d], for nq weight vectors over n rows: the tail's
	 * block values weighted by their estimated mass.
	 */
	void (*wsum)(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		     size_t ld, uint32_t n, uint32_t dim, float *acc);

	/*
	 * dot: out[j * ld_out + i] = dot(q[j], k[i]), q [nq][dim], k rows ld_k
	 * apart.  Each output is the same arithmetic wherever its row sits
	 * in the call and however many rows come with it (shards score
	 * different subsets of the same keys and must agree bit for bit).
	 */
	void (*dot)(const float *q, uint32_t nq, const float *k, size_t ld_k,
		    uint32_t n, uint32_t dim, float *out, size_t ld_out);

	/*
	 * gdot: out[j * ld_out + i] = scale * dot(q[j], row i) for the n rows
	 * at rows[i], elements of type elt (enum krn_elt) converted exactly as
	 * the conversions below.  Each output is dot's arithmetic on the
	 * converted row, times scale, wherever the row sits: scattered rows
	 * are scored in place, with no staging copy.  rows[n .. n_more) are
	 * only asked for ahead of use (prefetch), KRN_GDOT_AHEAD at most.
	 * dim <= KRN_MAX_DIM.
	 */
	void (*gdot)(const float *q, uint32_t nq, const void *const *rows, uint32_t n,
		     uint32_t n_more, enum krn_elt elt, uint32_t dim, float scale,
		     float *out, size_t ld_out);

	/*
	 * sketch: out[j * ld_out + i] = sum over d < dim of q8[j * dim + d]
	 * * (x_d - 8) for the n key sketches at rows[i], nq int8 queries
	 * q8 [nq][dim].  A sketch is dim / 2 bytes: byte b holds x_b in its
	 * low nibble and x_(b + dim / 2) in its high nibble (krn_sketch_put),
	 * 4-bit values offset by 8.  Integer arithmetic: every variant gives
	 * the reference's sums exactly.  rows[n .. n_more) are only asked for
	 * ahead of use (prefetch), KRN_GDOT_AHEAD at most.  dim is a multiple
	 * of 8, at most KRN_MAX_DIM; nq <= KRN_SKETCH_MAXQ.
	 */
	void (*sketch)(const int8_t *q8, uint32_t nq, const uint8_t *const *rows, uint32_t n,
		       uint32_t n_more, uint32_t dim, int32_t *out, size_t ld_out);

	/*
	 * attend: fold n rows (k, v: rows ld apart, f32) into the online-softmax
	 * states st[0..nq) of nq queries q [nq][dim] with logit = scale * q.k.
	 * n <= KRN_BLOCK.  An empty state has m = -INFINITY, s = 0, acc = 0.
	 */
	void (*attend)(const float *q, uint32_t nq, const float *k,
		       const float *v, size_t ld, uint32_t n, uint32_t dim,
		       float scale, struct krn_part *st);

	/*
	 * attend_logits: like attend for one query, with the logits given
	 * (already scaled): fold rows v[i] with weights exp(logit[i] - m).
	 * n <= KRN_BLOCK.
	 */
	void (*attend_logits)(const float *logit, const float *v, size_t ld,
			      uint32_t n, uint32_t dim, struct krn_part *st);

	/* merge: fold state b into a (log-sum-exp merge), dim floats of acc. */
	void (*merge)(struct krn_part *a, const struct krn_part *b, uint32_t dim);

	/* exp_sum: sum of exp(x[i] - m) over n values (-INFINITY adds 0). */
	float (*exp_sum)(const float *x, uint32_t n, float m);

	/* max of n floats (-INFINITY for n == 0). */
	float (*max)(const float *x, uint32_t n);

	/* conversions; round to nearest even, NaN stays NaN */
	void (*f16_to_f32)(const uint16_t *in, float *out, size_t n);
	void (*f32_to_f16)(const float *in, uint16_t *out, size_t n);
	void (*bf16_to_f32)(const uint16_t *in, float *out, size_t n);
	void (*f32_to_bf16)(const float *in, uint16_t *out, size_t n);

	/* all_finite: 1 if no NaN or Inf among n floats, else 0. */
	int (*all_finite)(const float *x, size_t n);
};

/*
 * A key sketch (krn_ops.sketch): x [dim] as 4-bit values round(x_d /
 * step) in [-7, 7], step = max |x_d| / 7, written to out (dim / 2
 * bytes); returns step (0 for a zero or non-finite row, whose sketch is
 * all zeros: it scores 0).
 */
float krn_sketch_put(const float *x, uint32_t dim, uint8_t *out);

/* Largest n that attend / attend_logits take in one call. */
#define KRN_BLOCK 256

/* n stored elements of type elt as f32, by the conversions of ops (exact). */
void krn_elt_to_f32(const struct krn_ops *ops, enum krn_elt elt, const void *in, float *out,
		    size_t n);

/*
 * gdot for any table: the rows converted a few at a time into a buffer
 * and scored with ops->dot (the tables without a gdot of their own).
 */
void krn_gdot_by_dot(const struct krn_ops *ops, const float *q, uint32_t nq,
		     const void *const *rows, uint32_t n, enum krn_elt elt, uint32_t dim,
		     float scale, float *out, size_t ld_out);

/* The active kernel table (never NULL). */
const struct krn_ops *krn_get(void);

/*
 * The table of a given level, or NULL when this build or this CPU lacks it.
 * Tests use it to compare each variant with the scalar reference.
 */
const struct krn_ops *krn_get_level(enum krn_level level);

/* The highest level this CPU and OS can run (cpuid + xgetbv). */
enum krn_level krn_cpu_level(void);

/*
 * Choose the active level from DASHKV_SIMD (scalar, avx2, avx512) or the
 * CPU.  Returns 0, or -1 with a message in err when the variable names a
 * level this CPU or build lacks (no silent fallback).  Called once by
 * the runtime; krn_get() calls it lazily with the default.
 */
int krn_init(char *err);

/* The level tables, defined in kernels/cpu/{ref,avx2,avx512}.c. */
extern const struct krn_ops krn_ops_scalar;
extern const struct krn_ops krn_ops_avx2;
extern const struct krn_ops krn_ops_avx512;

/*
 * Selection (kernels/cpu/select.c; one implementation, linear time).
 * krn_select_top: the indices of the k largest of x[0..n) (k <= n),
 * written to idx in increasing index order.  Ties are broken by the
 * lower index, so the result is a pure function of the input.
 * -INFINITY values are never selected when k <= the number of finite
 * values.  scratch must hold n uint32.  Returns the count written (k).
 */
uint32_t krn_select_top(const float *x, uint32_t n, uint32_t k,
			uint32_t *idx, uint32_t *scratch);

/* f16/bf16 scalar helpers (kernels/cpu/convert.c) */
float krn_f16_to_f32_1(uint16_t h);
uint16_t krn_f32_to_f16_1(float f);
float krn_bf16_to_f32_1(uint16_t h);
uint16_t krn_f32_to_bf16_1(float f);

#endif /* DKV_KRN_H */
