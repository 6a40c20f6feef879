/*
 * ref.c - scalar reference kernels.  Every SIMD variant is tested against
 * these; they favour clarity over speed.
 */
#include <math.h>
#include <string.h>

#include "krn.h"
#include "cpu_common.h"

static float dot1(const float *a, const float *b, uint32_t dim)
{
	float s = 0.0f;
	for (uint32_t d = 0; d < dim; d++)
		s += a[d] * b[d];
	return s;
}

static void ref_encode(const float *P, uint32_t bits, uint32_t dim,
		       const float *x, size_t ld_x, uint32_t n, uint64_t *codes)
{
	uint32_t words = bits / 64;

	for (uint32_t i = 0; i < n; i++) {
		uint64_t *c = codes + (size_t)i * words;
		memset(c, 0, words * sizeof(*c));
		for (uint32_t j = 0; j < bits; j++)
			if (dot1(P + (size_t)j * dim, x + i * ld_x, dim) > 0.0f)
				c[j / 64] |= (uint64_t)1 << (j % 64);
	}
}

static uint32_t ham1(const uint64_t *a, const uint64_t *b, uint32_t words)
{
	uint32_t h = 0;
	for (uint32_t w = 0; w < words; w++)
		h += (uint32_t)__builtin_popcountll(a[w] ^ b[w]);
	return h;
}

static void ref_hamming(const uint64_t *q, const uint64_t *codes,
			uint32_t words, uint32_t n, uint16_t *dist)
{
	for (uint32_t i = 0; i < n; i++)
		dist[i] = (uint16_t)ham1(q, codes + (size_t)i * words, words);
}

/* Distance of key p (byte-sliced codes) to query j, byte by byte. */
static uint32_t scan_ham(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 uint32_t j, uint32_t p)
{
	const uint8_t *c = krn_code_at(k->codes, q->words, p);
	const uint64_t *qc = q->qc + (size_t)j * q->words;
	uint32_t h = 0;

	for (uint32_t b = 0; b < q->words * 8; b++) {
		uint8_t qb = (uint8_t)(qc[b / 8] >> (8 * (b % 8)));
		h += (uint32_t)__builtin_popcount((unsigned)(qb ^ c[b * KRN_CODE_GROUP]));
	}
	return h;
}

static void ref_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		     struct krn_scan_out *o)
{
	uint32_t tl = 64 * q->words + 1;

	for (uint32_t j = 0; j < q->nq; j++)
		for (uint32_t p = k->first; p < k->first + k->n; p++) {
			uint32_t h = scan_ham(q, k, j, p);
			float e = k->norms[p] * q->tab[j * tl + h];
			if ((int32_t)h <= q->lim[j * KRN_CLASSES + k->cls[p]] && e >= q->thr[j]) {
				if (o->n_hit[j] < o->hit_cap)
					o->hit[(size_t)j * o->hit_cap + o->n_hit[j]] = k->base + p;
				o->n_hit[j]++;
			} else if (o->blk && p % q->stride == 0) {
				o->blk[j * o->ld_blk + p / 64 - k->first / 64] +=
					(float)q->stride * expf(q->ca[j] * e + q->cb[j]);
			}
		}
}

static void ref_estimate(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 uint32_t nk, float *out, size_t ld)
{
	uint32_t tl = 64 * q->words + 1;

	for (uint32_t r = 0; r < nk; out += k[r].n, r++)
		for (uint32_t j = 0; j < q->nq; j++)
			for (uint32_t i = 0; i < k[r].n; i++) {
				uint32_t p = k[r].first + i, h = scan_ham(q, &k[r], j, p);
				out[j * ld + i] = k[r].norms[p] * q->tab[j * tl + h];
			}
}

static void ref_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		     size_t ld, uint32_t n, uint32_t dim, float *acc)
{
	for (uint32_t j = 0; j < nq; j++)
		for (uint32_t i = 0; i < n; i++) {
			float f = w[j * ld_w + i];
			for (uint32_t d = 0; d < dim; d++)
				acc[(size_t)j * dim + d] += f * rows[i * ld + d];
		}
}

static void ref_dot(const float *q, uint32_t nq, const float *k, size_t ld_k,
		    uint32_t n, uint32_t dim, float *out, size_t ld_out)
{
	for (uint32_t j = 0; j < nq; j++)
		for (uint32_t i = 0; i < n; i++)
			out[j * ld_out + i] = dot1(q + (size_t)j * dim, k + i * ld_k, dim);
}

void krn_elt_to_f32(const struct krn_ops *ops, enum krn_elt elt, const void *in, float *out,
		    size_t n)
{
	if (elt == KRN_BF16)
		ops->bf16_to_f32(in, out, n);
	else if (elt == KRN_F16)
		ops->f16_to_f32(in, out, n);
	else if (n)
		memcpy(out, in, n * sizeof(float));
}

#define GDOT_ROWS 8u /* rows converted per dot call */

void krn_gdot_by_dot(const struct krn_ops *ops, const float *q, uint32_t nq,
		     const void *const *rows, uint32_t n, enum krn_elt elt, uint32_t dim,
		     float scale, float *out, size_t ld_out)
{
	float buf[GDOT_ROWS * KRN_MAX_DIM];

	for (uint32_t i = 0; i < n; i += GDOT_ROWS) {
		uint32_t m = n - i < GDOT_ROWS ? n - i : GDOT_ROWS;
		for (uint32_t r = 0; r < m; r++)
			krn_elt_to_f32(ops, elt, rows[i + r], buf + (size_t)r * dim, dim);
		ops->dot(q, nq, buf, dim, m, dim, out + i, ld_out);
		for (uint32_t j = 0; j < nq; j++)
			for (uint32_t r = 0; r < m; r++)
				out[j * ld_out + i + r] *= scale;
	}
}

static void ref_gdot(const float *q, uint32_t nq, const void *const *rows, uint32_t n,
		     uint32_t n_more, enum krn_elt elt, uint32_t dim, float scale,
		     float *out, size_t ld_out)
{
	(void)n_more;
	krn_gdot_by_dot(&krn_ops_scalar, q, nq, rows, n, elt, dim, scale, out, ld_out);
}

float krn_sketch_put(const float *x, uint32_t dim, uint8_t *out)
{
	uint32_t half = dim / 2;
	float amax = 0.0f;
	int bad = 0;

	for (uint32_t d = 0; d < dim; d++) {
		float a = fabsf(x[d]);
		amax = a > amax ? a : amax;
		bad |= !(a <= 3.0e38f);
	}
	if (bad || !(amax > 0.0f)) {
		for (uint32_t b = 0; b < half; b++)
			out[b] = 0x88;
		return 0.0f;
	}
	float inv = 7.0f / amax;
	for (uint32_t b = 0; b < half; b++) {
		int lo = (int)lrintf(x[b] * inv), hi = (int)lrintf(x[b + half] * inv);
		lo = lo < -7 ? -7 : lo > 7 ? 7 : lo;
		hi = hi < -7 ? -7 : hi > 7 ? 7 : hi;
		out[b] = (uint8_t)((lo + 8) | ((hi + 8) << 4));
	}
	return amax / 7.0f;
}

static void ref_sketch(const int8_t *q8, uint32_t nq, const uint8_t *const *rows, uint32_t n,
		       uint32_t n_more, uint32_t dim, int32_t *out, size_t ld_out)
{
	uint32_t half = dim / 2;

	(void)n_more;
	for (uint32_t j = 0; j < nq; j++) {
		const int8_t *q = q8 + (size_t)j * dim;
		for (uint32_t i = 0; i < n; i++) {
			int32_t acc = 0;
			for (uint32_t b = 0; b < half; b++) {
				acc += q[b] * ((rows[i][b] & 15) - 8);
				acc += q[b + half] * ((rows[i][b] >> 4) - 8);
			}
			out[j * ld_out + i] = acc;
		}
	}
}

static void ref_attend_logits(const float *logit, const float *v, size_t ld,
			      uint32_t n, uint32_t dim, struct krn_part *st)
{
	float bm = -INFINITY;

	for (uint32_t i = 0; i < n; i++)
		bm = logit[i] > bm ? logit[i] : bm;
	if (bm == -INFINITY)
		return;
	float m = st->m > bm ? st->m : bm;
	float c = expf(st->m - m); /* 0 when the state was empty */
	st->s *= c;
	for (uint32_t d = 0; d < dim; d++)
		st->acc[d] *= c;
	for (uint32_t i = 0; i < n; i++) {
		float p = expf(logit[i] - m);
		st->s += p;
		for (uint32_t d = 0; d < dim; d++)
			st->acc[d] += p * v[i * ld + d];
	}
	st->m = m;
}

static void ref_attend(const float *q, uint32_t nq, const float *k,
		       const float *v, size_t ld, uint32_t n, uint32_t dim,
		       float scale, struct krn_part *st)
{
	float logit[KRN_BLOCK];

	for (uint32_t j = 0; j < nq; j++) {
		for (uint32_t i = 0; i < n; i++)
			logit[i] = scale * dot1(q + (size_t)j * dim, k + i * ld, dim);
		ref_attend_logits(logit, v, ld, n, dim, &st[j]);
	}
}

static void ref_merge(struct krn_part *a, const struct krn_part *b, uint32_t dim)
{
	if (b->m == -INFINITY)
		return;
	float m = a->m > b->m ? a->m : b->m;
	float ca = expf(a->m - m), cb = expf(b->m - m);
	a->s = a->s * ca + b->s * cb;
	for (uint32_t d = 0; d < dim; d++)
		a->acc[d] = a->acc[d] * ca + b->acc[d] * cb;
	a->m = m;
}

static float ref_exp_sum(const float *x, uint32_t n, float m)
{
	float s = 0.0f;
	for (uint32_t i = 0; i < n; i++)
		s += expf(x[i] - m);
	return s;
}

static float ref_max(const float *x, uint32_t n)
{
	float m = -INFINITY;
	for (uint32_t i = 0; i < n; i++)
		m = x[i] > m ? x[i] : m;
	return m;
}

static void ref_f16_to_f32(const uint16_t *in, float *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = krn_f16_to_f32_1(in[i]);
}

static void ref_f32_to_f16(const float *in, uint16_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = krn_f32_to_f16_1(in[i]);
}

static void ref_bf16_to_f32(const uint16_t *in, float *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = krn_bf16_to_f32_1(in[i]);
}

static void ref_f32_to_bf16(const float *in, uint16_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = krn_f32_to_bf16_1(in[i]);
}

static int ref_all_finite(const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

const struct krn_ops krn_ops_scalar = {
	.name = "scalar",
	.level = KRN_SCALAR,
	.encode = ref_encode,
	.hamming = ref_hamming,
	.scan = ref_scan,
	.estimate = ref_estimate,
	.wsum = ref_wsum,
	.dot = ref_dot,
	.gdot = ref_gdot,
	.sketch = ref_sketch,
	.attend = ref_attend,
	.attend_logits = ref_attend_logits,
	.merge = ref_merge,
	.exp_sum = ref_exp_sum,
	.max = ref_max,
	.f16_to_f32 = ref_f16_to_f32,
	.f32_to_f16 = ref_f32_to_f16,
	.bf16_to_f32 = ref_bf16_to_f32,
	.f32_to_bf16 = ref_f32_to_bf16,
	.all_finite = ref_all_finite,
};
