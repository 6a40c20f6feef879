/*
 * search.c - the search-path kernels: the coarse filter's pass
 * (krn_ops.scan), the estimates of a few keys from the same codes
 * (krn_ops.estimate) and the weighted row sums of the tail (krn_ops.wsum).
 * The file is built twice: with AVX2 (krn_avx2_*) and with AVX-512
 * (krn_avx512_*), which differ in how the distances are taken and in the
 * tail at stride 1.
 *
 * scan works on byte-sliced codes (krn.h): one 32-byte load holds the same
 * code byte of 32 keys.  With AVX2, each query gets, per code byte, two
 * 16-entry tables "popcount of this nibble xor the query's nibble", so a
 * key's Hamming distance is a sum of table lookups (pshufb) over its
 * bytes: no xor, no per-key horizontal sums.  Up to four queries go
 * through a block together, so each code byte is loaded and split once
 * for them; up to 128 bits, two queries share each table (ham_pairs),
 * which halves the lookups.  With AVX-512 (BITALG), the same byte of both
 * groups of a block fills one 64-byte vector, and a query's distances
 * are xor and byte popcount (ham_bitalg).
 *
 * Stage 1 compares the 8-bit distances with the limit of each key's norm
 * class (another lookup); the few probes get their estimate from the
 * distances kept in L1 with the reference's own multiply, so the hits are
 * identical.  The tail takes every stride-th key's estimate through the
 * vector exp: with AVX-512, stride 1 sixteen keys of a query per vector
 * (the table entries from registers); stride 8 one block and query per
 * vector; strides 32 and 64 buffer their samples' estimates (struct
 * samples) and take eight of a query's at a time; other strides (and
 * 256-bit codes) one key at a time.
 */
#include "simd_common.h"
#include "variants.h"

#ifdef __AVX512BITALG__
#define KRN_BITALG 1
#define KRN_SEARCH(name) krn_avx512_##name
#else
#define KRN_SEARCH(name) krn_avx2_##name
#endif

#define QCHUNK 4 /* queries scanned together (accumulators in registers) */

struct qtab {
	__m256i lim; /* per class: limit + 1, clamped to [0, 255] */
#ifdef KRN_BITALG
	uint64_t rep[32]; /* per code byte: the query's byte, eight times */
	/* the stride-1 tail's copy of tab[0 .. 64 words], zeros after */
	float tc[144] __attribute__((aligned(64)));
#else
	__m256i lo[32], hi[32];   /* per code byte: nibble popcount tables */
	__m256i plo[16], phi[16]; /* pair tables: this query + 16 x the next */
#endif
};

#ifndef KRN_BITALG

static void ptab_build(struct qtab *a, const struct qtab *b, uint32_t bytes)
{
	for (uint32_t i = 0; i < bytes; i++) {
		a->plo[i] = _mm256_add_epi8(a->lo[i], _mm256_slli_epi16(b->lo[i], 4));
		a->phi[i] = _mm256_add_epi8(a->hi[i], _mm256_slli_epi16(b->hi[i], 4));
	}
}

#endif

static void qtab_build(const struct krn_scan_q *q, uint32_t j, struct qtab *t)
{
	const uint64_t *qc = q->qc + (size_t)j * q->words;

#ifdef KRN_BITALG
	uint32_t tl = 64 * q->words + 1;

	for (uint32_t b = 0; b < q->words * 8; b++)
		t->rep[b] = 0x0101010101010101ull * (uint8_t)(qc[b / 8] >> (8 * (b % 8)));
	for (uint32_t h = 0; q->stride == 1 && q->words < 4 && h < 144; h++)
		t->tc[h] = h < tl ? q->tab[(size_t)j * tl + h] : 0.0f;
#else
	const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
					      0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

	for (uint32_t b = 0; b < q->words * 8; b++) {
		uint8_t qb = (uint8_t)(qc[b / 8] >> (8 * (b % 8)));
		t->lo[b] = krn_popcnt_bytes(_mm256_xor_si256(iota, _mm256_set1_epi8((char)(qb & 15))));
		t->hi[b] = krn_popcnt_bytes(_mm256_xor_si256(iota, _mm256_set1_epi8((char)(qb >> 4))));
	}
#endif
}

/* The tables of queries j0 .. j0 + nj - 1, pairs included up to 128 bits. */
static void qtabs_build(const struct krn_scan_q *q, uint32_t j0, uint32_t nj, struct qtab *t)
{
	for (uint32_t j = 0; j < nj; j++)
		qtab_build(q, j0 + j, &t[j]);
#ifndef KRN_BITALG
	for (uint32_t j = 0; j + 1 < nj && q->words <= 2; j += 2)
		ptab_build(&t[j], &t[j + 1], q->words * 8);
#endif
}

/* Query j's stage-1 limits per norm class, as bytes for a lookup. */
static void lim_build(const struct krn_scan_q *q, uint32_t j, struct qtab *t)
{
	uint8_t lim[32] = { 0 };

	for (uint32_t c = 0; c < KRN_CLASSES; c++) {
		int32_t v = q->lim[j * KRN_CLASSES + c] + 1;
		lim[c] = lim[16 + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
	}
	t->lim = _mm256_loadu_si256((const __m256i *)lim);
}

/* Distance of key p to query j, from the sliced bytes (scalar). */
static uint32_t ham_sliced(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			   uint32_t j, uint32_t p)
{
	uint64_t code[4];

	krn_code_read(krn_code_at(k->codes, q->words, p), q->words, code);
	return krn_ham1(q->qc + (size_t)j * q->words, code, q->words);
}

static void add_hit(struct krn_scan_out *o, uint32_t j, uint32_t idx)
{
	if (o->n_hit[j] < o->hit_cap)
		o->hit[(size_t)j * o->hit_cap + o->n_hit[j]] = idx;
	o->n_hit[j]++;
}

/* Keys [p0, p1) one at a time, exactly as the reference (block edges). */
static void scan_keys(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		      struct krn_scan_out *o, uint32_t p0, uint32_t p1)
{
	uint32_t tl = 64 * q->words + 1;

	for (uint32_t j = 0; j < q->nq; j++)
		for (uint32_t p = p0; p < p1; p++) {
			uint32_t h = ham_sliced(q, k, j, p);
			float e = k->norms[p] * q->tab[j * tl + h];
			if ((int32_t)h <= q->lim[j * KRN_CLASSES + k->cls[p]] && e >= q->thr[j])
				add_hit(o, j, k->base + p);
			else if (o->blk && p % q->stride == 0)
				o->blk[j * o->ld_blk + p / 64 - k->first / 64] +=
					(float)q->stride * expf(q->ca[j] * e + q->cb[j]);
		}
}

#ifdef KRN_BITALG
/*
 * Distances of ng (1 or 2) groups of 32 keys to nj queries: byte by
 * byte, both groups' bytes are loaded into one vector, and each query's
 * distances grow by the popcounts of that vector xor its byte.  256-bit
 * codes saturate at 255, as with AVX2.
 */
KRN_INLINE void ham_bitalg(const struct qtab *t, const uint32_t nj, const uint8_t *codes,
			   uint32_t bytes, const uint32_t ng, __m256i acc[QCHUNK][2])
{
	const uint8_t *g1 = codes + bytes * 32; /* the second group */
	__m512i a[QCHUNK];

	KRN_UNROLL
	for (uint32_t j = 0; j < nj; j++)
		a[j] = _mm512_setzero_si512();
	for (uint32_t b = 0; b < bytes; b++) {
		__m512i v = _mm512_castsi256_si512(
			_mm256_load_si256((const __m256i *)(codes + b * 32)));
		if (ng == 2)
			v = _mm512_inserti64x4(v, _mm256_load_si256((const __m256i *)(g1 + b * 32)), 1);
		KRN_UNROLL
		for (uint32_t j = 0; j < nj; j++)
			a[j] = _mm512_adds_epu8(a[j], _mm512_popcnt_epi8(_mm512_xor_si512(
				v, _mm512_set1_epi64((long long)t[j].rep[b]))));
	}
	KRN_UNROLL
	for (uint32_t j = 0; j < nj; j++) {
		acc[j][0] = _mm512_castsi512_si256(a[j]);
		acc[j][1] = _mm512_extracti64x4_epi64(a[j], 1);
	}
}

/* Distances of ng (1 or 2) groups of 32 keys to nj queries. */
KRN_INLINE void ham_groups(const struct qtab *t, const uint32_t nj, const uint8_t *codes,
			   uint32_t words, const uint32_t ng, __m256i acc[QCHUNK][2])
{
	ham_bitalg(t, nj, codes, words * 8, ng, acc);
}
#else
/*
 * Distances of one 64-key block (two groups of 32) to nj queries (a
 * constant after inlining), one group at a time: byte by byte, the codes
 * are loaded and split into nibbles once and every query's two tables
 * are applied, so the nj accumulators, the nibbles and the tables fit in
 * the 16 vector registers.  Up to 128 bits the byte sums cannot overflow;
 * 256 bits saturate at 255.
 */
KRN_INLINE void ham_block(const struct qtab *t, const uint32_t nj, const uint8_t *codes,
			  uint32_t bytes, const uint32_t ng, __m256i acc[QCHUNK][2])
{
	const __m256i low = _mm256_set1_epi8(0x0f);

	for (uint32_t g = 0; g < ng; g++) {
		__m256i a[QCHUNK];
		KRN_UNROLL
		for (uint32_t j = 0; j < nj; j++)
			a[j] = _mm256_setzero_si256();
		for (uint32_t b = 0; b < bytes; b++) {
			__m256i v = _mm256_load_si256((const __m256i *)(codes + (g * bytes + b) * 32));
			__m256i lo = _mm256_and_si256(v, low);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
			KRN_UNROLL
			for (uint32_t j = 0; j < nj; j++)
				a[j] = _mm256_adds_epu8(a[j], _mm256_adds_epu8(
					_mm256_shuffle_epi8(t[j].lo[b], lo),
					_mm256_shuffle_epi8(t[j].hi[b], hi)));
		}
		KRN_UNROLL
		for (uint32_t j = 0; j < nj; j++)
			acc[j][g] = a[j];
	}
}

/*
 * The same distances for codes of up to 128 bits (no sum passes 128), two
 * queries per table: a pair's tables hold the first query's nibble
 * popcount plus 16 times the second's, so one byte's two lookups give
 * a + 16 b with a, b <= 8.  b is taken out of every byte's sum; a is the
 * sum of all minus 16 times b's sum, modulo 256.
 */
KRN_INLINE void ham_pairs(const struct qtab *t, const uint32_t nj, const uint8_t *codes,
			  uint32_t bytes, const uint32_t ng, __m256i acc[QCHUNK][2])
{
	const __m256i low = _mm256_set1_epi8(0x0f), high = _mm256_set1_epi8((char)0xf0);
	const uint32_t np = nj / 2;

	for (uint32_t g = 0; g < ng; g++) {
		__m256i s[2], hb[2], a1 = _mm256_setzero_si256();
		KRN_UNROLL
		for (uint32_t p = 0; p < np; p++)
			s[p] = hb[p] = _mm256_setzero_si256();
		for (uint32_t b = 0; b < bytes; b++) {
			__m256i v = _mm256_load_si256((const __m256i *)(codes + (g * bytes + b) * 32));
			__m256i lo = _mm256_and_si256(v, low);
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
			KRN_UNROLL
			for (uint32_t p = 0; p < np; p++) {
				__m256i x = _mm256_add_epi8(_mm256_shuffle_epi8(t[2 * p].plo[b], lo),
							    _mm256_shuffle_epi8(t[2 * p].phi[b], hi));
				s[p] = _mm256_add_epi8(s[p], x);
				x = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
				hb[p] = _mm256_add_epi8(hb[p], x);
			}
			if (nj & 1)
				a1 = _mm256_add_epi8(a1, _mm256_add_epi8(
					_mm256_shuffle_epi8(t[nj - 1].lo[b], lo),
					_mm256_shuffle_epi8(t[nj - 1].hi[b], hi)));
		}
		KRN_UNROLL
		for (uint32_t p = 0; p < np; p++) {
			__m256i b16 = _mm256_and_si256(_mm256_slli_epi16(hb[p], 4), high);
			acc[2 * p][g] = _mm256_sub_epi8(s[p], b16);
			acc[2 * p + 1][g] = hb[p];
		}
		if (nj & 1)
			acc[nj - 1][g] = a1;
	}
}

/* Distances of ng (1 or 2) groups of 32 keys to nj queries. */
KRN_INLINE void ham_groups(const struct qtab *t, const uint32_t nj, const uint8_t *codes,
			   uint32_t words, const uint32_t ng, __m256i acc[QCHUNK][2])
{
	if (words <= 2 && nj >= 2)
		ham_pairs(t, nj, codes, words * 8, ng, acc);
	else
		ham_block(t, nj, codes, words * 8, ng, acc);
}
#endif

/* Stage 1 and 2 for one 64-key block and query j, from its distances. */
KRN_INLINE uint64_t block_hits(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			   struct krn_scan_out *o, const __m256i dist[2], const __m256i cls[2],
			   const struct qtab *t, uint32_t j, uint32_t p)
{
	const float *tab = q->tab + (size_t)j * (64 * q->words + 1);
	uint8_t hd[32] __attribute__((aligned(32)));
	uint64_t hits = 0;

	for (uint32_t g = 0; g < 2; g++) {
		__m256i h = dist[g];
		__m256i lim = _mm256_shuffle_epi8(t->lim, cls[g]);
		/* h >= limit + 1 fails: max(h, lim) == h */
		__m256i fail = _mm256_cmpeq_epi8(_mm256_max_epu8(h, lim), h);
		uint32_t probes = ~(uint32_t)_mm256_movemask_epi8(fail);
		if (!probes)
			continue;
		_mm256_store_si256((__m256i *)hd, h);
		while (probes) {
			uint32_t b = (uint32_t)__builtin_ctz(probes), u = 32 * g + b;
			if (k->norms[p + u] * tab[hd[b]] >= q->thr[j]) {
				add_hit(o, j, k->base + p + u);
				hits |= (uint64_t)1 << u;
			}
			probes &= probes - 1;
		}
	}
	return hits;
}

/* Bits 0, 8, .., 56 of m gathered into bits 0..7. */
static inline uint32_t every8th(uint64_t m)
{
	return (uint32_t)(((m & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56);
}

/* exp(ca * e + cb) of eight keys whose estimates are e, hits zeroed. */
KRN_INLINE __m256 tail8(__m256 e, __m256 a, __m256 b, uint32_t hit_bits)
{
	__m256 p = krn_exp8(_mm256_fmadd_ps(a, e, b));
	if (hit_bits) {
		__m256i bit = _mm256_and_si256(_mm256_set1_epi32((int)hit_bits),
					       _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128));
		p = _mm256_andnot_ps(_mm256_castsi256_ps(
			_mm256_cmpgt_epi32(bit, _mm256_setzero_si256())), p);
	}
	return p;
}

/*
 * Stride 8: keys 0, 8, .., 56 of a block.  Their distances are picked out
 * of the two distance vectors with byte shuffles, their norms (nr8) are
 * shared by the queries, the table entries come with one gather.
 */
KRN_INLINE float block_tail8(const struct krn_scan_q *q, uint32_t j, const __m256i dist[2],
			     __m256 nr8, uint64_t hits)
{
	const float *tab = q->tab + (size_t)j * (64 * q->words + 1);
	const __m256i pick0 = _mm256_setr_epi8(0, -1, -1, -1, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
					       0, -1, -1, -1, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
	const __m256i pick1 = _mm256_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, 8, -1, -1, -1,
					       -1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, 8, -1, -1, -1);
	/* [k0 k8 k32 k40 | k16 k24 k48 k56] -> key order */
	__m256i h = _mm256_or_si256(_mm256_shuffle_epi8(dist[0], pick0),
				    _mm256_shuffle_epi8(dist[1], pick1));
	h = _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
	__m256 e = _mm256_mul_ps(nr8, _mm256_i32gather_ps(tab, h, 4));
	__m256 p = tail8(e, _mm256_set1_ps(q->ca[j]), _mm256_set1_ps(q->cb[j]), every8th(hits));
	return 8.0f * krn_hsum8(p);
}

#ifdef KRN_BITALG
/* Entries h (0 .. 128) of a table tc[144] for sixteen distances, from registers. */
KRN_INLINE __m512 tab_lookup16(const float *tc, __m512i h)
{
	__m512 a = _mm512_permutex2var_ps(_mm512_load_ps(tc), h, _mm512_load_ps(tc + 16));
	__m512 b = _mm512_permutex2var_ps(_mm512_load_ps(tc + 32), h, _mm512_load_ps(tc + 48));
	__m512 c = _mm512_permutex2var_ps(_mm512_load_ps(tc + 64), h, _mm512_load_ps(tc + 80));
	__m512 d = _mm512_permutex2var_ps(_mm512_load_ps(tc + 96), h, _mm512_load_ps(tc + 112));
	__mmask16 b5 = _mm512_test_epi32_mask(h, _mm512_set1_epi32(32));
	__mmask16 b6 = _mm512_test_epi32_mask(h, _mm512_set1_epi32(64));
	__mmask16 b7 = _mm512_test_epi32_mask(h, _mm512_set1_epi32(128));
	__m512 v = _mm512_mask_blend_ps(b6, _mm512_mask_blend_ps(b5, a, b),
					_mm512_mask_blend_ps(b5, c, d));
	return _mm512_mask_blend_ps(b7, v, _mm512_set1_ps(tc[128]));
}

/* Masses of sixteen keys (distances h8, norms nr) whose hits are not set. */
KRN_INLINE __m512 tail16(const float *tc, __m128i h8, const float *nr, __m512 a, __m512 b,
			 uint32_t hits)
{
	__m512 e = _mm512_mul_ps(_mm512_loadu_ps(nr), tab_lookup16(tc, _mm512_cvtepu8_epi32(h8)));
	return _mm512_maskz_mov_ps((__mmask16)~hits, krn_exp16(_mm512_fmadd_ps(a, e, b)));
}

/*
 * Stride 1: every key of the block, sixteen at a time, the table entries
 * looked up in registers (the query's table, tc, is at most 129 entries).
 */
KRN_INLINE float block_tail1(const struct krn_scan_q *q, const struct qtab *t, uint32_t j,
			     const __m256i dist[2], const float *nr, uint64_t hits)
{
	__m512 a = _mm512_set1_ps(q->ca[j]), b = _mm512_set1_ps(q->cb[j]);
	__m512 s = tail16(t->tc, _mm256_castsi256_si128(dist[0]), nr, a, b, (uint32_t)hits);

	s = _mm512_add_ps(s, tail16(t->tc, _mm256_extracti128_si256(dist[0], 1), nr + 16, a, b,
				    (uint32_t)(hits >> 16)));
	s = _mm512_add_ps(s, tail16(t->tc, _mm256_castsi256_si128(dist[1]), nr + 32, a, b,
				    (uint32_t)(hits >> 32)));
	s = _mm512_add_ps(s, tail16(t->tc, _mm256_extracti128_si256(dist[1], 1), nr + 48, a, b,
				    (uint32_t)(hits >> 48)));
	return _mm512_reduce_add_ps(s);
}
#endif

/*
 * Strides 32 and 64: a block has two samples or one per query, too few to
 * fill a vector.  Each block leaves its samples' estimates (and whether
 * each is a hit) in a buffer; the buffer goes through the vector exp a
 * query at a time, eight samples per vector, once it is full and at the
 * end of the range.
 */
#define SAMPLE_CAP 128 /* samples per query in the buffer */

struct samples {
	float e[QCHUNK][SAMPLE_CAP] __attribute__((aligned(32)));    /* estimates */
	float keep[QCHUNK][SAMPLE_CAP] __attribute__((aligned(32))); /* 0: a hit */
	uint32_t n;     /* samples per query so far */
	uint32_t per;   /* samples per block: 1 or 2 */
	uint32_t b0;    /* the first block's first key */
};

/* Block b's samples (keys 0 and, at stride 32, 32) for nj queries. */
KRN_INLINE void samples_add(struct samples *sm, const struct krn_scan_q *q,
			    __m256i dist[][2], const uint64_t *hits, const uint32_t nj,
			    uint32_t j0, const float *nr, uint32_t b)
{
	uint32_t tl = 64 * q->words + 1;

	if (!sm->n)
		sm->b0 = b;
	KRN_UNROLL
	for (uint32_t j = 0; j < nj; j++) {
		const float *tab = q->tab + (size_t)(j0 + j) * tl;
		for (uint32_t x = 0; x < sm->per; x++) {
			uint32_t h = (uint32_t)_mm256_cvtsi256_si32(dist[j][x]) & 255;
			sm->e[j][sm->n + x] = nr[32 * x] * tab[h];
			sm->keep[j][sm->n + x] = (hits[j] >> (32 * x)) & 1 ? 0.0f : 1.0f;
		}
	}
	sm->n += sm->per;
}

/*
 * Samples i .. i + 7 of query j: their masses w exp(a e + c) (hits zero),
 * summed per block, added to the blocks' entries from blk + i / per: eight
 * blocks (one sample each) or four (two each).
 */
KRN_INLINE void samples_put8(const struct samples *sm, uint32_t j, uint32_t i, __m256 a,
			     __m256 c, __m256 w, float *blk)
{
	__m256 x = _mm256_mul_ps(krn_exp8(_mm256_fmadd_ps(a, _mm256_load_ps(&sm->e[j][i]), c)),
				 _mm256_mul_ps(w, _mm256_load_ps(&sm->keep[j][i])));
	uint32_t nb = (sm->n - i) / sm->per, lanes = 8 / sm->per;
	float v[8];

	blk += i / sm->per;
	if (sm->per == 2) { /* [s0 s1 s0 s1 | s2 s3 s2 s3] -> [s0 s1 s2 s3 ..] */
		__m256 h = _mm256_hadd_ps(x, x);
		x = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(h), 0x08));
	}
	if (nb >= lanes && lanes == 8) {
		_mm256_storeu_ps(blk, _mm256_add_ps(_mm256_loadu_ps(blk), x));
	} else if (nb >= lanes) {
		__m128 s4 = _mm256_castps256_ps128(x);
		_mm_storeu_ps(blk, _mm_add_ps(_mm_loadu_ps(blk), s4));
	} else {
		_mm256_storeu_ps(v, x);
		for (uint32_t u = 0; u < nb; u++)
			blk[u] += v[u];
	}
}

/* The buffered samples' masses into blk (queries j0 .. j0 + nj - 1). */
static void samples_flush(struct samples *sm, const struct krn_scan_q *q,
			  const struct krn_scan_keys *k, struct krn_scan_out *o,
			  uint32_t j0, uint32_t nj)
{
	__m256 w = _mm256_set1_ps((float)q->stride);

	for (uint32_t j = 0; j < nj; j++) {
		__m256 a = _mm256_set1_ps(q->ca[j0 + j]), c = _mm256_set1_ps(q->cb[j0 + j]);
		float *blk = o->blk + (j0 + j) * o->ld_blk + sm->b0 / 64 - k->first / 64;
		for (uint32_t i = sm->n; i % 8; i++) /* the last vector's unused lanes */
			sm->e[j][i] = sm->keep[j][i] = 0.0f;
		for (uint32_t i = 0; i < sm->n; i += 8)
			samples_put8(sm, j, i, a, c, w, blk);
	}
	sm->n = 0;
}

/* The tail mass of a block for query j, any stride: one key at a time. */
static float block_tail(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			uint32_t j, uint32_t p, const uint8_t *hd, uint64_t hits)
{
	const float *tab = q->tab + (size_t)j * (64 * q->words + 1);
	__m256 a = _mm256_set1_ps(q->ca[j]), b = _mm256_set1_ps(q->cb[j]);
	__m256 acc = _mm256_setzero_ps();
	float x[64] __attribute__((aligned(32))) = { 0 };
	uint32_t n = 0;

	for (uint32_t u = 0; u < 64; u += q->stride) {
		/* 256-bit codes: 255 may stand for 255 or 256 */
		uint32_t h = hd[u] == 255 ? ham_sliced(q, k, j, p + u) : hd[u];
		x[n++] = k->norms[p + u] * tab[h];
	}
	for (uint32_t u = 0; u < n; u += 8) {
		uint32_t m = 0;
		for (uint32_t i = 0; i < 8; i++)
			if (u + i >= n || ((hits >> ((u + i) * q->stride)) & 1))
				m |= 1u << i; /* lanes past the samples are masked too */
		acc = _mm256_add_ps(acc, tail8(_mm256_load_ps(x + u), a, b, m));
	}
	return (float)q->stride * krn_hsum8(acc);
}

/* Can the vector path reproduce the reference for these queries? */
static int vector_ok(const struct krn_scan_q *q)
{
	if (q->words != 1 && q->words != 2 && q->words != 4)
		return 0;
	if (q->stride != 1 && q->stride != 8 && q->stride != 16 && q->stride != 32 &&
	    q->stride != 64)
		return 0;
	/* saturated 8-bit distances decide a limit only below 255 */
	for (uint32_t i = 0; i < q->nq * KRN_CLASSES; i++)
		if (q->lim[i] >= 255)
			return 0;
	return 1;
}

/* One 64-key block for nj (constant after inlining) queries from j0. */
KRN_INLINE void scan_block(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			   struct krn_scan_out *o, const struct qtab *t, struct samples *sm,
			   const uint32_t nj, uint32_t j0, uint32_t b)
{
	__m256i dist[QCHUNK][2];
	uint64_t hits[QCHUNK];
	uint8_t hd[64] __attribute__((aligned(32)));
	/* 256-bit distances saturate: those take the general tail */
	int fast = o->blk && q->words < 4;
#ifdef KRN_BITALG
	int t1 = fast && q->stride == 1;
#endif
	int t8 = fast && q->stride == 8, buffered = fast && q->stride >= 32;
	const float *nr = k->norms + b;
	/* the sampled keys' norms, shared by the queries */
	__m256 nr8 = t8 ? _mm256_setr_ps(nr[0], nr[8], nr[16], nr[24], nr[32], nr[40], nr[48],
					 nr[56]) :
			  _mm256_setzero_ps();

	/* blocks stream from memory: ask for the one after next now */
	const char *next = (const char *)krn_code_at(k->codes, q->words, b) + 2 * 64 * q->words * 8;
	for (uint32_t off = 0; off < 64 * q->words * 8; off += 64)
		_mm_prefetch(next + off, _MM_HINT_T0);
	_mm_prefetch((const char *)(nr + 128), _MM_HINT_T0);
	_mm_prefetch((const char *)(nr + 144), _MM_HINT_T0);
	_mm_prefetch((const char *)(nr + 160), _MM_HINT_T0);
	_mm_prefetch((const char *)(nr + 176), _MM_HINT_T0);
	_mm_prefetch((const char *)(k->cls + b + 128), _MM_HINT_T0);
	ham_groups(t, nj, krn_code_at(k->codes, q->words, b), q->words, 2, dist);
	const __m256i cls[2] = { _mm256_loadu_si256((const __m256i *)(k->cls + b)),
				 _mm256_loadu_si256((const __m256i *)(k->cls + b + 32)) };
	KRN_UNROLL_GCC
	for (uint32_t j = 0; j < nj; j++) {
		hits[j] = block_hits(q, k, o, dist[j], cls, &t[j], j0 + j, b);
		float *blk = o->blk ? o->blk + (j0 + j) * o->ld_blk + b / 64 - k->first / 64 : NULL;
#ifdef KRN_BITALG
		if (t1)
			*blk += block_tail1(q, &t[j], j0 + j, dist[j], nr, hits[j]);
		else
#endif
		if (t8)
			*blk += block_tail8(q, j0 + j, dist[j], nr8, hits[j]);
		else if (blk && !buffered) {
			_mm256_store_si256((__m256i *)hd, dist[j][0]);
			_mm256_store_si256((__m256i *)(hd + 32), dist[j][1]);
			*blk += block_tail(q, k, j0 + j, b, hd, hits[j]);
		}
	}
	if (buffered) {
		samples_add(sm, q, dist, hits, nj, j0, nr, b);
		if (sm->n + sm->per > SAMPLE_CAP)
			samples_flush(sm, q, k, o, j0, nj);
	}
}

void KRN_SEARCH(scan)(const struct krn_scan_q *q, const struct krn_scan_keys *k,
		      struct krn_scan_out *o)
{
	uint32_t p = (k->first + 63) & ~63u, end = k->first + k->n;
	struct qtab t[QCHUNK];
	struct samples sm = { .n = 0, .per = 64 / (q->stride ? q->stride : 1) };

	if (!vector_ok(q)) {
		scan_keys(q, k, o, k->first, end);
		return;
	}
	if (p > end)
		p = end;
	scan_keys(q, k, o, k->first, p);
	uint32_t p_end = p + (end - p) / 64 * 64;
	for (uint32_t j0 = 0; j0 < q->nq; j0 += QCHUNK) {
		uint32_t nj = q->nq - j0 < QCHUNK ? q->nq - j0 : QCHUNK;
		qtabs_build(q, j0, nj, t);
		for (uint32_t j = 0; j < nj; j++)
			lim_build(q, j0 + j, &t[j]);
		for (uint32_t b = p; b < p_end; b += 64) {
			switch (nj) {
			case 1:
				scan_block(q, k, o, t, &sm, 1, j0, b);
				break;
			case 2:
				scan_block(q, k, o, t, &sm, 2, j0, b);
				break;
			case 3:
				scan_block(q, k, o, t, &sm, 3, j0, b);
				break;
			default:
				scan_block(q, k, o, t, &sm, 4, j0, b);
			}
		}
		if (sm.n)
			samples_flush(&sm, q, k, o, j0, nj);
	}
	scan_keys(q, k, o, p_end, end);
}

/*
 * estimate: the tables of a chunk of queries are built once for all the
 * runs, whose codes and norms are asked for a few runs ahead; group by
 * group of 32 keys, the distances as scan computes them, then the keys in
 * range take the reference's multiply norms[i] * tab[h].
 */
KRN_INLINE void estimate_group(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			       const struct qtab *t, const uint32_t nj, uint32_t j0, uint32_t g0,
			       float *out, size_t ld)
{
	uint32_t tl = 64 * q->words + 1, end = k->first + k->n;
	uint32_t a = g0 > k->first ? g0 : k->first, b = g0 + 32 < end ? g0 + 32 : end;
	uint8_t hd[QCHUNK][32] __attribute__((aligned(32)));
	__m256i dist[QCHUNK][2];

	ham_groups(t, nj, krn_code_at(k->codes, q->words, g0), q->words, 1, dist);
	KRN_UNROLL
	for (uint32_t j = 0; j < nj; j++)
		_mm256_store_si256((__m256i *)hd[j], dist[j][0]);
	for (uint32_t j = 0; j < nj; j++) {
		const float *tab = q->tab + (size_t)(j0 + j) * tl;
		float *o = out + (size_t)(j0 + j) * ld - k->first;
		for (uint32_t i = a; i < b; i++)
			o[i] = k->norms[i] * tab[hd[j][i - g0]];
	}
}

/* One run's keys for nj queries from j0. */
static void estimate_run(const struct krn_scan_q *q, const struct krn_scan_keys *k,
			 const struct qtab *t, uint32_t nj, uint32_t j0, float *out, size_t ld)
{
	for (uint32_t g0 = k->first / 32 * 32; g0 < k->first + k->n; g0 += 32) {
		switch (nj) {
		case 1:
			estimate_group(q, k, t, 1, j0, g0, out, ld);
			break;
		case 2:
			estimate_group(q, k, t, 2, j0, g0, out, ld);
			break;
		case 3:
			estimate_group(q, k, t, 3, j0, g0, out, ld);
			break;
		default:
			estimate_group(q, k, t, 4, j0, g0, out, ld);
		}
	}
}

/* Runs whose codes and norms are asked for ahead of their estimates. */
#define EST_AHEAD 4u

/* Ask for the code groups and norms of run k (random places in memory). */
static void prefetch_run(const struct krn_scan_keys *k, uint32_t words)
{
	for (uint32_t g0 = k->first / 32 * 32; g0 < k->first + k->n; g0 += 32) {
		const char *c = (const char *)krn_code_at(k->codes, words, g0);
		for (uint32_t o = 0; o < words * 8 * 32; o += 64)
			_mm_prefetch(c + o, _MM_HINT_T0);
	}
	for (uint32_t i = 0; i < k->n; i += 16)
		_mm_prefetch((const char *)(k->norms + k->first + i), _MM_HINT_T0);
	_mm_prefetch((const char *)(k->norms + k->first + k->n - 1), _MM_HINT_T0);
}

void KRN_SEARCH(estimate)(const struct krn_scan_q *q, const struct krn_scan_keys *k, uint32_t nk,
			  float *out, size_t ld)
{
	struct qtab t[QCHUNK];

	/* 256-bit distances do not fit a byte */
	if (q->words != 1 && q->words != 2) {
		krn_ops_scalar.estimate(q, k, nk, out, ld);
		return;
	}
	for (uint32_t j0 = 0; j0 < q->nq; j0 += QCHUNK) {
		uint32_t nj = q->nq - j0 < QCHUNK ? q->nq - j0 : QCHUNK;
		float *o = out;
		for (uint32_t r = 0; j0 == 0 && r < EST_AHEAD && r < nk; r++)
			prefetch_run(&k[r], q->words);
		qtabs_build(q, j0, nj, t);
		for (uint32_t r = 0; r < nk; o += k[r].n, r++) {
			if (j0 == 0 && r + EST_AHEAD < nk)
				prefetch_run(&k[r + EST_AHEAD], q->words);
			estimate_run(q, &k[r], t, nj, j0, o, ld);
		}
	}
}

/* Columns [d, d + 8 * V) of up to four weight vectors over rows [i0, i1). */
KRN_INLINE void wsum_cols(const float *w, size_t ld_w, const uint32_t nq, const float *rows,
			  size_t ld, uint32_t i0, uint32_t i1, uint32_t dim, float *acc,
			  uint32_t d, const uint32_t V)
{
	__m256 a[4][2];

	KRN_UNROLL
	for (uint32_t j = 0; j < nq; j++)
		KRN_UNROLL
		for (uint32_t v = 0; v < V; v++)
			a[j][v] = _mm256_loadu_ps(acc + (size_t)j * dim + d + 8 * v);
	for (uint32_t i = i0; i < i1; i++) {
		__m256 r[2];
		KRN_UNROLL
		for (uint32_t v = 0; v < V; v++)
			r[v] = _mm256_loadu_ps(rows + i * ld + d + 8 * v);
		KRN_UNROLL
		for (uint32_t j = 0; j < nq; j++) {
			__m256 f = _mm256_broadcast_ss(w + j * ld_w + i);
			KRN_UNROLL
		for (uint32_t v = 0; v < V; v++)
				a[j][v] = _mm256_fmadd_ps(f, r[v], a[j][v]);
		}
	}
	KRN_UNROLL
	for (uint32_t j = 0; j < nq; j++)
		KRN_UNROLL
		for (uint32_t v = 0; v < V; v++)
			_mm256_storeu_ps(acc + (size_t)j * dim + d + 8 * v, a[j][v]);
}

/*
 * Up to four weight vectors (nq, a constant after inlining): eight rows
 * at a time come from memory once (4 KiB, sequential) and serve every
 * 16-column slice from L1, with the slice's accumulators in registers.
 */
KRN_INLINE void wsum4(const float *w, size_t ld_w, const uint32_t nq, const float *rows,
		      size_t ld, uint32_t n, uint32_t dim, float *acc)
{
	for (uint32_t i0 = 0; i0 < n; i0 += 8) {
		uint32_t i1 = n - i0 < 8 ? n : i0 + 8, d = 0;
		/* the next eight rows stream in while these are summed */
		for (uint32_t i = i1; i < i1 + 8 && i < n; i++)
			for (uint32_t c = 0; c < dim; c += 16)
				_mm_prefetch((const char *)(rows + i * ld + c), _MM_HINT_T0);
		for (; d + 16 <= dim; d += 16)
			wsum_cols(w, ld_w, nq, rows, ld, i0, i1, dim, acc, d, 2);
		if (d < dim)
			wsum_cols(w, ld_w, nq, rows, ld, i0, i1, dim, acc, d, 1);
	}
}

void KRN_SEARCH(wsum)(const float *w, size_t ld_w, uint32_t nq, const float *rows,
		      size_t ld, uint32_t n, uint32_t dim, float *acc)
{
	if (dim % 8) {
		krn_ops_scalar.wsum(w, ld_w, nq, rows, ld, n, dim, acc);
		return;
	}
	for (uint32_t j = 0; j < nq; j += 4) {
		const float *wj = w + j * ld_w;
		float *aj = acc + (size_t)j * dim;
		switch (nq - j) {
		case 1:
			wsum4(wj, ld_w, 1, rows, ld, n, dim, aj);
			break;
		case 2:
			wsum4(wj, ld_w, 2, rows, ld, n, dim, aj);
			break;
		case 3:
			wsum4(wj, ld_w, 3, rows, ld, n, dim, aj);
			break;
		default:
			wsum4(wj, ld_w, 4, rows, ld, n, dim, aj);
		}
	}
}
