/*
 * hash.h - the hash models of the coarse filter, one per (layer, kv head).
 *
 * SimHash (the untrained control): one random Gaussian projection P
 * [bits][dim] for both sides.  Keys are centred by the layer head's mean
 * key mu before projection: q.(k - mu) = q.k - q.mu differs from the true
 * logit by a per-query constant, which changes no ranking and is added
 * back (the "shift") when logits are estimated.  mu is fixed once the
 * layer holds RT_MU_TOKENS tokens; the keys stored before are re-encoded.
 *
 * Estimated logit of key k for query q at Hamming distance h:
 *   scale * |q| * |k - mu| * cos(pi * h / bits) + scale * q.mu
 *
 * A learned model (lm, see model.h) replaces both encoders and the
 * table: keys by sign(Wk (k - mu)), queries by the query network, and
 * cos(pi * h / bits) by the model's fitted cosv[h].  lm is swapped in
 * whole, after training, and the stored keys are re-encoded.
 */
#ifndef DKV_RT_HASH_H
#define DKV_RT_HASH_H

#include <stdint.h>

#include "krn.h"
#include "model.h"
#include "proj.h" /* P, the projection rt_hash_init takes */

#define RT_MU_TOKENS 256u

struct rt_hash {
	uint32_t bits, dim;
	const float *P;   /* [bits][dim], shared by the sequence */
	float *mu;        /* [dim] mean key (zeros until mu_set) */
	float *chs;       /* [dim] channel scale of the sketches (ones until mu_set) */
	float *cosine;    /* [bits + 1]: cos(pi * h / bits) */
	int mu_set;
	float max_norm;   /* largest |k - mu| encoded so far */
	float norm_ref;   /* mean |k - mu| when mu was fixed: class scale */
	const struct rt_lhead *lm; /* learned model, or NULL for SimHash */
};

/*
 * Norm classes let the coarse filter's first stage judge a key's norm
 * with one table lookup: class c holds norms in
 * [norm_ref * 2^((c - 8) / S), norm_ref * 2^((c - 7) / S)) with S =
 * RT_CLASS_STEPS classes per octave; classes 0 and 15 are open-ended.
 * Narrow classes keep stage 1 tight (few probes that are not hits) over
 * the usual spread of key norms, about norm_ref / 2 .. 2 norm_ref.  Before
 * mu is fixed every key is in the last class.
 */
#define RT_CLASSES KRN_CLASSES
#define RT_CLASS_STEPS 8.0f

uint8_t rt_hash_class(const struct rt_hash *hm, float norm);
/* Bounds of class c: [*lo, *hi]. */
void rt_hash_class_bounds(const struct rt_hash *hm, uint32_t c, float *lo, float *hi);
/*
 * Stage-1 limits of a query whose estimate table is tab (bits + 1
 * entries) and threshold thr: lim[c], the largest distance at which a key
 * of class c can still reach thr (-1: none can).
 */
void rt_hash_probe_limits(const struct rt_hash *hm, const float *tab, float thr, int32_t *lim);

/*
 * Key sketches (krn_sketch_put): of (k - mu) / chs, the centred key with
 * each channel divided by its spread, so that a few outlier channels do
 * not take the 4-bit range from the rest.  n keys (f32 rows, dim apart)
 * to sk [n][dim / 2] and steps [n]; tmp holds dim floats.
 */
void rt_hash_sketch(const struct rt_hash *hm, const float *k, uint32_t n, uint8_t *sk,
		    float *step, float *tmp);
/*
 * A query's side of the sketch score: q8 [dim] = round(q * chs / qs),
 * qs = max |q * chs| / 127; returns scale * qs (0 for a zero query), so
 * that the logit estimate of a key is that * step * sketch sum + shift.
 */
float rt_hash_query_sketch(const struct rt_hash *hm, const float *q, float scale, int8_t *q8);

int rt_hash_init(struct rt_hash *hm, const float *P, uint32_t bits, uint32_t dim);
void rt_hash_free(struct rt_hash *hm);

/*
 * Encode n keys (f32 rows, `dim` apart): codes [n][bits/64] and norms of
 * the centred keys.  tmp holds n * dim floats.
 */
void rt_hash_keys(const struct rt_hash *hm, const float *k, uint32_t n,
		  uint64_t *codes, float *norms, float *tmp);

/*
 * Prepare one query: its code [bits/64], the table tab[0..bits] of
 * estimated (shifted) logits per Hamming distance per unit key norm, and
 * the shift scale * q.mu.
 */
void rt_hash_query(const struct rt_hash *hm, const float *q, float scale,
		   uint64_t *code, float *tab, float *shift);

#endif
