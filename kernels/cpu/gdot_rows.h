/*
 * gdot_rows.h - the row loops of the SIMD gdot kernels, shared by the AVX2
 * and AVX-512 tables.  The including file defines gdot_pair (two rows
 * against up to four queries, each product the arithmetic of its own
 * dot) and DOT_MAX_DIM.  Rows sit at random places in memory, so the
 * ones KRN_GDOT_AHEAD ahead are asked for while these are scored.
 */
#ifndef DKV_KRN_GDOT_ROWS_H
#define DKV_KRN_GDOT_ROWS_H

/* Ask for every line of a row of dim elements. */
static inline void prefetch_row(const void *row, uint32_t bytes)
{
	for (uint32_t o = 0; o < bytes; o += 64)
		_mm_prefetch((const char *)row + o, _MM_HINT_T0);
}

/* nj <= 4 queries over all rows, two at a time; the rows ahead are asked for. */
KRN_INLINE void gdot_rows(const float *q, const uint32_t nj, const void *const *rows,
			  uint32_t n, uint32_t n_more, const enum krn_elt elt, uint32_t dim,
			  float scale, float *out, size_t ld_out)
{
	uint32_t bytes = dim * (elt == KRN_F32 ? 4 : 2);
	__m256 sc = _mm256_set1_ps(scale);
	float r[8];

	for (uint32_t i = 0; i < KRN_GDOT_AHEAD && i < n_more; i++)
		prefetch_row(rows[i], bytes);
	for (uint32_t i = 0; i < n; i += 2) {
		const void *r1 = rows[i + 1 < n ? i + 1 : i];
		for (uint32_t a = i + KRN_GDOT_AHEAD; a < i + 2 + KRN_GDOT_AHEAD && a < n_more; a++)
			prefetch_row(rows[a], bytes);
		_mm256_storeu_ps(r, gdot_pair(q, nj, dim, rows[i], r1, elt, sc));
		for (uint32_t j = 0; j < nj; j++) {
			out[j * ld_out + i] = r[j];
			if (i + 1 < n)
				out[j * ld_out + i + 1] = r[4 + j];
		}
	}
}

/* One chunk of nj <= 4 queries, elt a constant after inlining. */
KRN_INLINE void gdot_chunk(const float *q, uint32_t nj, const void *const *rows, uint32_t n,
			   uint32_t n_more, const enum krn_elt elt, uint32_t dim, float scale,
			   float *out, size_t ld_out)
{
	switch (nj) {
	case 4:
		gdot_rows(q, 4, rows, n, n_more, elt, dim, scale, out, ld_out);
		break;
	case 3:
		gdot_rows(q, 3, rows, n, n_more, elt, dim, scale, out, ld_out);
		break;
	case 2:
		gdot_rows(q, 2, rows, n, n_more, elt, dim, scale, out, ld_out);
		break;
	default:
		gdot_rows(q, 1, rows, n, n_more, elt, dim, scale, out, ld_out);
	}
}

/* gdot of the table self, whose dot gdot_pair reproduces. */
static void gdot_all(const struct krn_ops *self, const float *q, uint32_t nq,
		     const void *const *rows, uint32_t n, uint32_t n_more, enum krn_elt elt,
		     uint32_t dim, float scale, float *out, size_t ld_out)
{
	if (dim % 8 || dim > DOT_MAX_DIM) {
		krn_gdot_by_dot(self, q, nq, rows, n, elt, dim, scale, out, ld_out);
		return;
	}
	for (uint32_t j0 = 0; j0 < nq; j0 += 4) {
		uint32_t nj = nq - j0 < 4 ? nq - j0 : 4;
		const float *qj = q + (size_t)j0 * dim;
		float *oj = out + j0 * ld_out;
		if (elt == KRN_BF16)
			gdot_chunk(qj, nj, rows, n, n_more, KRN_BF16, dim, scale, oj, ld_out);
		else if (elt == KRN_F16)
			gdot_chunk(qj, nj, rows, n, n_more, KRN_F16, dim, scale, oj, ld_out);
		else
			gdot_chunk(qj, nj, rows, n, n_more, KRN_F32, dim, scale, oj, ld_out);
	}
}

#endif
