/*
 * learn.h - fitting one (layer, kv head)'s learned hash model.
 *
 * The objective is the coarse filter's: for each training query, its
 * exact top keys (the top top_frac of a key sample by q.(k - mu)) must
 * score above the other keys under the coarse estimate |k - mu| * s,
 * s = (code_q . code_k) / bits in [-1, 1] with codes in {-1, +1}.  A
 * pairwise logistic loss softplus(alpha (e_neg - e_pos)) over the
 * positives and the other keys of a mini-batch; codes are hard signs in
 * the forward pass and pass gradients straight through (d tanh); Adam.
 * The model starts as SimHash (Wk = Wq = P, the hidden layer silent), so
 * training only moves away from the control when the loss says so.
 * After training, cosv[h] is fitted: the mean cosine of (q, k - mu) per
 * Hamming distance, made non-increasing (pool adjacent violators).
 *
 * Deterministic for a given seed, input and options (one thread, fixed
 * order), unless budget_ms stops it early.
 */
#ifndef DKV_RT_LEARN_H
#define DKV_RT_LEARN_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

struct rt_learn_opts {
	uint64_t seed;
	uint32_t steps;       /* Adam steps (400) */
	uint32_t batch;       /* queries per step (32) */
	uint32_t rand_keys;   /* random keys per step besides positives (128) */
	uint32_t max_keys;    /* keys sampled from the input (4096) */
	uint32_t max_queries; /* queries sampled from the input (1024) */
	float lr;             /* Adam step size (0.02) */
	float alpha;          /* logistic sharpness (10) */
	float top_frac;       /* share of the key sample that is positive (0.08) */
	double budget_ms;     /* stop after this long; 0 = no limit */
};

struct rt_learn_stats {
	double loss0, loss1;     /* held-out pairwise loss, hard codes, before / after */
	double recall0, recall1; /* share of positives inside the top 8% estimates */
	double ms;               /* wall time of rt_learn_head */
	uint32_t steps;          /* Adam steps taken */
	uint32_t n_keys, n_queries;
};

void rt_learn_defaults(struct rt_learn_opts *o);

/*
 * Fit m (allocated with rt_lhead_alloc for bits, dim, hidden) from keys
 * [nk][ld_k] and queries [nq][ld_q] (f32, `dim` used of each row),
 * centring keys by mu [dim]; P [bits][dim] is the SimHash start.
 * Returns 0, 1 when there is too little data (m is left as SimHash), or
 * -1 on ENOMEM.  st may be NULL.
 */
int rt_learn_head(const float *keys, uint32_t nk, size_t ld_k, const float *mu,
		  const float *queries, uint32_t nq, size_t ld_q, const float *P,
		  const struct rt_learn_opts *o, struct rt_lhead *m,
		  struct rt_learn_stats *st);

/* The most bytes rt_learn_head allocates for these sizes (its scratch). */
size_t rt_learn_bytes(uint32_t bits, uint32_t dim, uint32_t hidden, uint32_t nk,
		      uint32_t nq, const struct rt_learn_opts *o);

#endif
