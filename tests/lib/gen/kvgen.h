/*
 * kvgen.h - a deterministic generator of LLM-like attention data.
 *
 * Keys, values and queries of one transformer layer, for any
 * (head, position), computed on demand from a seed: every number is a pure
 * function of (seed, parameters, head, position, dimension), drawn from a
 * counter-based hash (splitmix64 mixing), so a 1M-token context can be
 * streamed chunk by chunk in any order and chunked generation is
 * bit-identical to one-shot generation.  Nothing is stored per token.
 *
 * THE MODEL (one kv head h; d = head_dim, P = d / 2 rotation pairs)
 *
 * RoPE, "half split" convention (as in HF Llama): pair j rotates channels
 * (j, j + P) by the angle pos * theta^(-2j/d).  Keys are
 *
 *	k(i) = R(i) k_raw(i)
 *
 * exactly (kvgen_key_raw + kvgen_rope reproduce kvgen_key).  Low-frequency
 * pairs rotate slowly, so they carry content that survives distance; the
 * fast pairs carry position.  The "slow" pairs are those that turn by at
 * most one radian over a topic segment (at least 4 of them).
 *
 * k_raw(i) of an ordinary token in topic segment S:
 *	km_h                          per-head key mean (keys form a cone)
 *	+ topic * T(h, S)             segment latent, slow pairs only
 *	+ e^(norm_spread g_i) z_i     token noise, N(0, 1) per dim, with a
 *	                              per-token norm factor
 *	+ outlier * sign_c on a few   channels of large magnitude (both
 *	  outlier pairs               channels of each pair after RoPE)
 * Sink tokens (i < n_sinks): km_h + sink_norm * D_h (a fixed slow-pair
 * direction) + small noise.  Needle tokens: km_h + needle_share * U_n +
 * sqrt(1 - needle_share^2) z_i (same norm as others, a private direction).
 *
 * Segments: positions are cut into slots of segment_len tokens; each
 * boundary moves by a hashed offset, so segments are 0.5 .. 1.5 x
 * segment_len long and kvgen_segment() is O(1).
 *
 * Values (no RoPE): vm_h + value_segment * V(h, S) + noise; sinks have
 * small values (sink_value); needles carry a private value W_n.
 *
 * A query of q head qh (kv head h = qh / (n_q_heads / n_kv_heads)) at
 * position p, draw r:
 *	q = R(p) q_rel + q_abs
 *	q_rel = qm_h + qm_own(qh)                 query mean: a direction of
 *	                                          its own (query/key offset)
 *	      + recency * km_h on the fast pairs  RoPE's long-term decay
 *	      + qnoise (c z_h + sqrt(1-c^2) z_qh) shared within the GQA group
 *	q_abs = sink_pull * D_h                   attraction to the sinks
 *	      + sum_a w_a aim * R(c_a) T(h, S_a)  aims at the current segment
 *	                                          and n_aims - 1 earlier ones
 *	                                          (c_a the segment centre)
 * q_abs is defined in the rotated frame: a query "about" segment S
 * matches S's keys wherever S lies.  The aimed segments depend on
 * (h, p, r), so all q heads of one group look at the same segments
 * (with their own weights w_a).  Needle queries add needle_aim * R(i_n)
 * U_n to that.
 *
 * Logit-scale knobs are given in units of the scaled logit q.k / sqrt(d),
 * so they read directly as softmax temperatures: each is the boost its
 * component adds, on average, to the logits it targets.  With the
 * defaults (kvgen_params_init) the top 1% of tokens hold about 48% of the
 * exact softmax mass at N = 4K and 32K and about 38% at 256K and 1M
 * (seed 1, mean over query heads; heads differ: 0.45 .. 0.65 at 32K
 * across seeds); check_gen tests the band [0.30, 0.80] at 32K.  The
 * sinks hold 15% of the mass at 4K, 6% at 32K (up to 40% in some heads),
 * the last 64 tokens about 10% at 32K.  A needle query puts its needle
 * first for nearly every head.
 *
 * Thread safety: a struct kvgen is read-only after kvgen_new; every
 * function may be called from many threads at once.
 */
#ifndef DKV_KVGEN_H
#define DKV_KVGEN_H

#include <stddef.h>
#include <stdint.h>

struct kvgen_params {
	uint64_t seed;
	uint32_t n_kv_heads;    /* 8 */
	uint32_t n_q_heads;     /* 32, a multiple of n_kv_heads */
	uint32_t head_dim;      /* 128, even, <= 256 */
	double rope_theta;      /* 10000; 0 = no RoPE */

	/* keys */
	double key_mean;        /* per-dim RMS of the head's key mean: 0.6 */
	double norm_spread;     /* log-std of the token noise norm: 0.2 */
	uint32_t n_outliers;    /* outlier channel pairs per kv head: 3 */
	double outlier;         /* their magnitude (noise RMS = 1): 6 */
	uint32_t segment_len;   /* mean topic segment length: 512 */
	double topic;           /* per-dim RMS of T(h, S) in keys: 1 */

	/* sinks */
	uint32_t n_sinks;       /* sink tokens at the start: 4 */
	double sink_logit;      /* logit boost of a sink for any query: 9.5 */
	double sink_value;      /* RMS of sink values: 0.1 */

	/* queries */
	double query_mean;      /* per-dim RMS of the query mean: 0.35 */
	double query_noise;     /* logit std from query noise x key noise: 0.7 */
	double group_corr;      /* noise correlation within a GQA group: 0.7 */
	double recency;         /* logit boost at distance 0 (decays): 2.5 */
	uint32_t n_aims;        /* segments a query aims at (incl. current): 3 */
	double aim_logit;       /* logit boost of an aimed segment's keys: 2.2 */

	/* needles */
	uint32_t needle_stride; /* one needle per this many tokens (0 = none): 4096 */
	double needle_share;    /* share of the needle key on its direction: 0.9 */
	double needle_logit;    /* logit of the needle under its query: 20 */

	/* values */
	double value_mean;      /* per-dim RMS of the head's value mean: 0.3 */
	double value_segment;   /* per-dim RMS of the segment value: 0.8 */
	double value_noise;     /* per-dim RMS of the token value noise: 0.6 */
};

struct kvgen;

/* Fill every field with its documented default (seed 1). */
void kvgen_params_init(struct kvgen_params *p);

/* A generator, or NULL on a bad parameter or out of memory. */
struct kvgen *kvgen_new(const struct kvgen_params *p);
void kvgen_free(struct kvgen *g);
const struct kvgen_params *kvgen_params(const struct kvgen *g);

/*
 * Keys and values of positions [pos0, pos0 + n), token-major as dkv_step
 * takes them: k, v [n][n_kv_heads][head_dim].  Either may be NULL.
 */
void kvgen_kv(const struct kvgen *g, uint64_t pos0, uint32_t n,
	      float *k, float *v);

/* One head's key / key before RoPE / value at one position: [head_dim]. */
void kvgen_key(const struct kvgen *g, uint32_t head, uint64_t pos, float *k);
void kvgen_key_raw(const struct kvgen *g, uint32_t head, uint64_t pos, float *k);
void kvgen_value(const struct kvgen *g, uint32_t head, uint64_t pos, float *v);

/* Rotate x [dim] in place by RoPE at pos (half-split pairs, theta). */
void kvgen_rope(float *x, uint32_t dim, double theta, uint64_t pos);

/*
 * A decode query of q head qh at position pos: [head_dim].  kvgen_query is
 * draw 0; other draws are further independent queries at the same
 * position (the same sinks and recency, other aims and noise).
 * kvgen_queries fills all heads: q [n_q_heads][head_dim].
 */
void kvgen_query(const struct kvgen *g, uint32_t qh, uint64_t pos, float *q);
void kvgen_query_draw(const struct kvgen *g, uint32_t qh, uint64_t pos,
		      uint64_t draw, float *q);
void kvgen_queries(const struct kvgen *g, uint64_t pos, uint64_t draw, float *q);

/*
 * Queries of one kind, all heads (q [n_q_heads][head_dim]), draw `draw`:
 * KVGEN_CURRENT aims at the current topic segment only, KVGEN_EARLIER at
 * one earlier segment only (drawn over the whole context: the current
 * one while there is none), KVGEN_MIXED at both and n_aims - 2 more
 * earlier ones (kvgen_queries).  Sinks, recency and noise as always.
 */
enum kvgen_kind { KVGEN_MIXED, KVGEN_CURRENT, KVGEN_EARLIER };
void kvgen_kind_queries(const struct kvgen *g, enum kvgen_kind kind, uint64_t pos,
			uint64_t draw, float *q);

/*
 * Needles: needle n sits at one hashed position inside
 * [n * needle_stride, (n + 1) * needle_stride), never on a sink.
 * kvgen_needle_count: how many needles lie at positions < pos.
 * kvgen_needle_pos: the position of needle n.
 * kvgen_needle_query: a query at pos (> the needle's position) aimed at
 * needle n, for q head qh; kvgen_needle_queries fills all heads.
 */
uint64_t kvgen_needle_count(const struct kvgen *g, uint64_t pos);
uint64_t kvgen_needle_pos(const struct kvgen *g, uint64_t n);
void kvgen_needle_query(const struct kvgen *g, uint32_t qh, uint64_t n,
			uint64_t pos, float *q);
void kvgen_needle_queries(const struct kvgen *g, uint64_t n, uint64_t pos,
			  float *q);

/* The topic segment of a position, and that segment's [start, end). */
uint64_t kvgen_segment(const struct kvgen *g, uint64_t pos);
void kvgen_segment_bounds(const struct kvgen *g, uint64_t seg,
			  uint64_t *start, uint64_t *end);

/*
 * The outlier channels of kv head `head` (both channels of every outlier
 * pair, ascending) into ch (room for 2 * n_outliers); returns the count.
 */
uint32_t kvgen_outlier_channels(const struct kvgen *g, uint32_t head,
				uint32_t *ch);

/*
 * Concentration.  kvgen_top_mass: the share of the softmax mass of
 * logit[0..n) held by its ceil(frac * n) largest entries (scratch: n
 * doubles, or NULL to allocate).  kvgen_mass_top1pct: the mean over
 * n_queries draws at position n_tokens - 1 and over all q heads of the
 * top-1% share of exact attention over keys [0, n_tokens), in double,
 * scale 1/sqrt(head_dim); negative on out of memory.
 */
double kvgen_top_mass(const double *logit, uint32_t n, double frac,
		      double *scratch);
double kvgen_mass_top1pct(const struct kvgen *g, uint32_t n_tokens,
			  uint32_t n_queries);

#endif /* DKV_KVGEN_H */
