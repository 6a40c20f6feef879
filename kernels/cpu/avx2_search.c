/*
 * avx2_search.c - the search-path kernels with AVX2: the coarse filter's pass
 * (krn_ops.scan) and the weighted row sums of the tail (krn_ops.wsum).
 *
 * Work goes block by block (64 keys, aligned to the tail's blocks).  Per
 * block the keys' norm classes are widened once; every query then runs
 * stage 1 eight keys at a time: nibble popcount (pshufb) of the codes, the
 * class limit picked with a lane permute, one integer compare.  The few
 * probes get their estimate from the distances kept in L1, with the
 * reference's own multiply, so hits are identical.  The tail takes the
 * estimates of every stride-th key through the vector exp.
 */
#include "simd_common.h"
#include "variants.h"

KRN_INLINE __m256i ld256(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

KRN_INLINE __m256i sad0(__m256i b)
{
	return _mm256_sad_epu8(b, _mm256_setzero_si256());
}

/* The query code repeated the way 32 bytes of codes hold keys. */
KRN_INLINE __m256i qvec(const uint64_t *q, uint32_t words)
{
	if (words == 1)
		return _mm256_set1_epi64x((long long)q[0]);
	if (words == 2)
		return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
	return ld256(q);
}

/* Byte popcounts of 32 bytes of codes against the query. */
KRN_INLINE __m256i cnt(const uint64_t *c, __m256i q)
{
	return krn_popcnt_bytes(_mm256_xor_si256(ld256(c), q));
}

/*
 * [x0 x1 x2 x3] and [y0 y1 y2 y3] (64-bit lane sums, two lanes per key,
 * keys a, b in x and c, d in y) -> 32-bit [a c a c | b d b d].
 */
KRN_INLINE __m256i pair_sums(__m256i x, __m256i y)
{
	__m256i v = _mm256_or_si256(x, _mm256_slli_epi64(y, 32));
	return _mm256_add_epi32(v, _mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
}

/* Distances of 8 keys to the query, as 8 int32 in key order. */
KRN_INLINE __m256i ham8(const uint64_t *c, __m256i q, uint32_t words)
{
	const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);

	if (words == 1) {
		__m256i x = _mm256_or_si256(sad0(cnt(c, q)), _mm256_slli_epi64(sad0(cnt(c + 4, q)), 32));
		return _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
	}
	if (words == 2) {
		/* per vector: keys (0,1), (2,3), (4,5), (6,7) */
		__m256i a = pair_sums(sad0(cnt(c, q)), sad0(cnt(c + 4, q)));
		__m256i b = pair_sums(sad0(cnt(c + 8, q)), sad0(cnt(c + 12, q)));
		/* a = [k0 k2 k0 k2 | k1 k3 k1 k3], b likewise for k4..k7 */
		return _mm256_permutevar8x32_epi32(_mm256_blend_epi32(a, b, 0xcc), order);
	}
	/* four words: one key per vector; fold halves, then as two words */
	__m256i k[8];
	for (int i = 0; i < 8; i++)
		k[i] = cnt(c + 4 * i, q);
	__m256i s[4];
	for (int i = 0; i < 4; i++) {
		__m256i lo = _mm256_permute2x128_si256(k[2 * i], k[2 * i + 1], 0x20);
		__m256i hi = _mm256_permute2x128_si256(k[2 * i], k[2 * i + 1], 0x31);
		s[i] = sad0(_mm256_add_epi8(lo, hi));
	}
	__m256i a = pair_sums(s[0], s[1]), b = pair_sums(s[2], s[3]);
	return _mm256_permutevar8x32_epi32(_mm256_blend_epi32(a, b, 0xcc), order);
}

static uint32_t ham_scalar(const uint64_t *a, const uint64_t *b, uint32_t words)
{
	return krn_ham1(a, b, words);
}

static void add_hit(struct krn_scan_out *o, uint32_t j, uint32_t idx)
{
	if (o->n_hit[j] < o->hit_cap)
		o->hit[(size_t)j * o->hit_cap + o->n_hit[j]] = idx;
	o->n_hit[j]++;
}

/* Keys [i0, i1) one at a time, exactly as the reference (block edges). */
static void scan_keys(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		      struct krn_scan_out *o, uint32_t i0, uint32_t i1)
{
	uint32_t w = q->words, tl = 64 * w + 1;

	for (uint32_t j = 0; j < q->nq; j++)
		for (uint32_t i = i0; i < i1; i++) {
			uint32_t h = ham_scalar(q->qc + (size_t)j * w, k->codes + (size_t)i * w, w);
			float e = k->norms[i] * q->tab[j * tl + h];
			if ((int32_t)h <= q->lim[j * 8 + k->cls[i]] && e >= q->thr[j])
				add_hit(o, j, k->base + i);
			else if (o->blk && (k->off + i) % q->stride == 0)
				o->blk[j * o->ld_blk + (k->off + i) / 64] +=
					(float)q->stride * expf(q->ca[j] * e + q->cb[j]);
		}
}

/* One block of 64 keys for query j. */
struct block {
	const uint64_t *codes;
	const float *norms;
	const int32_t *cls;  /* widened classes */
	uint32_t i;          /* first key */
};

/* Stage 1 and 2 over a block; the distances are left in hd. */
static uint64_t block_hits(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			   struct krn_scan_out *o, const struct block *bk,
			   uint32_t j, int32_t *hd)
{
	uint32_t w = q->words;
	const float *tab = q->tab + (size_t)j * (64 * w + 1);
	__m256i qv = qvec(q->qc + (size_t)j * w, w);
	__m256i lim = _mm256_loadu_si256((const __m256i *)(q->lim + j * 8));
	uint64_t hits = 0;

	for (uint32_t u = 0; u < 64; u += 8) {
		__m256i h = ham8(bk->codes + (size_t)u * w, qv, w);
		__m256i l = _mm256_permutevar8x32_epi32(lim, _mm256_load_si256((const __m256i *)(bk->cls + u)));
		uint32_t over = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(h, l)));
		uint32_t probes = ~over & 0xffu;
		_mm256_store_si256((__m256i *)(hd + u), h);
		while (probes) {
			uint32_t b = (uint32_t)__builtin_ctz(probes);
			if (bk->norms[u + b] * tab[hd[u + b]] >= q->thr[j]) {
				add_hit(o, j, k->base + bk->i + u + b);
				hits |= (uint64_t)1 << (u + b);
			}
			probes &= probes - 1;
		}
	}
	return hits;
}

/* The tail mass of a block for query j: every stride-th non-hit key. */
static float block_tail(const struct krn_scan_q *q, const struct block *bk,
			uint32_t j, const int32_t *hd, uint64_t hits)
{
	const float *tab = q->tab + (size_t)j * (64 * q->words + 1);
	float x[64] __attribute__((aligned(32)));
	__m256 a = _mm256_set1_ps(q->ca[j]), b = _mm256_set1_ps(q->cb[j]);
	__m256 acc = _mm256_setzero_ps();
	uint32_t n = 0;

	for (uint32_t u = 0; u < 64; u += q->stride)
		x[n++] = bk->norms[u] * tab[hd[u]];
	for (uint32_t u = 0; u < n; u += 8) {
		__m256 p = krn_exp8(_mm256_fmadd_ps(a, _mm256_load_ps(x + u), b));
		/* drop the hits: lane t of this vector is key (u + t) * stride */
		uint32_t m = 0;
		for (uint32_t t = 0; t < 8; t++)
			m |= (uint32_t)((hits >> ((u + t) * q->stride)) & 1) << t;
		if (m) {
			__m256i bits = _mm256_and_si256(_mm256_set1_epi32((int)m),
							_mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128));
			__m256 drop = _mm256_castsi256_ps(_mm256_cmpgt_epi32(bits, _mm256_setzero_si256()));
			p = _mm256_andnot_ps(drop, p);
		}
		acc = _mm256_add_ps(acc, p);
	}
	return (float)q->stride * krn_hsum8(acc);
}

void krn_avx2_scan(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		   struct krn_scan_out *o)
{
	uint32_t i = (64 - k->off % 64) % 64, w = q->words;
	int32_t cls[64] __attribute__((aligned(32)));
	int32_t hd[64] __attribute__((aligned(32)));

	if ((w != 1 && w != 2 && w != 4) || (q->stride != 1 && q->stride != 8)) {
		scan_keys(q, k, o, 0, k->n);
		return;
	}
	if (i > k->n)
		i = k->n;
	scan_keys(q, k, o, 0, i);
	for (; i + 64 <= k->n; i += 64) {
		struct block bk = { k->codes + (size_t)i * w, k->norms + i, cls, i };
		for (uint32_t u = 0; u < 64; u += 8) {
			__m128i c8 = _mm_loadl_epi64((const __m128i *)(k->cls + i + u));
			_mm256_store_si256((__m256i *)(cls + u), _mm256_cvtepu8_epi32(c8));
		}
		for (uint32_t j = 0; j < q->nq; j++) {
			uint64_t hits = block_hits(q, k, o, &bk, j, hd);
			if (o->blk)
				o->blk[j * o->ld_blk + (k->off + i) / 64] +=
					block_tail(q, &bk, j, hd, hits);
		}
	}
	scan_keys(q, k, o, i, k->n);
}

/*
 * Up to four weight vectors over the rows, 16 columns at a time: eight
 * accumulators stay in registers while every row is read once.
 */
static void wsum4(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		  size_t ld, uint32_t n, uint32_t dim, float *acc)
{
	for (uint32_t d = 0; d < dim; d += 16) {
		__m256 a[4][2];
		int two = d + 16 <= dim;
		for (uint32_t j = 0; j < nq; j++) {
			a[j][0] = _mm256_loadu_ps(acc + (size_t)j * dim + d);
			a[j][1] = two ? _mm256_loadu_ps(acc + (size_t)j * dim + d + 8) : _mm256_setzero_ps();
		}
		for (uint32_t i = 0; i < n; i++) {
			__m256 r0 = _mm256_loadu_ps(rows + i * ld + d);
			__m256 r1 = two ? _mm256_loadu_ps(rows + i * ld + d + 8) : _mm256_setzero_ps();
			for (uint32_t j = 0; j < nq; j++) {
				__m256 f = _mm256_broadcast_ss(w + j * ld_w + i);
				a[j][0] = _mm256_fmadd_ps(f, r0, a[j][0]);
				a[j][1] = _mm256_fmadd_ps(f, r1, a[j][1]);
			}
		}
		for (uint32_t j = 0; j < nq; j++) {
			_mm256_storeu_ps(acc + (size_t)j * dim + d, a[j][0]);
			if (two)
				_mm256_storeu_ps(acc + (size_t)j * dim + d + 8, a[j][1]);
		}
	}
}

void krn_avx2_wsum(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		   size_t ld, uint32_t n, uint32_t dim, float *acc)
{
	for (uint32_t j = 0; j < nq; j += 4)
		wsum4(w + j * ld_w, ld_w, nq - j < 4 ? nq - j : 4, rows, ld, n, dim,
		      acc + (size_t)j * dim);
}
