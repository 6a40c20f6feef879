/*
 * select.c - linear-time top-k selection (radix select on order-preserving
 * float keys).  Two histogram passes over the candidates that are still in
 * play, then one pass to collect; no sort of all n.
 */
#include <string.h>

#include "krn.h"
#include "cpu_common.h"

/* Larger float -> larger key; -0.0 < +0.0 is harmless here. */
static inline uint32_t key_of(float f)
{
	uint32_t u = krn_f32_bits(f);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/*
 * Find the digit d (bits [shift, shift+width)) such that the elements with
 * digit > d number fewer than *need and those with digit >= d at least *need;
 * subtract the count above from *need.
 */
static uint32_t pick_digit(const uint32_t *hist, uint32_t nbins, uint32_t *need)
{
	uint32_t above = 0;
	uint32_t d = nbins;

	while (d-- > 0) {
		if (above + hist[d] >= *need)
			break;
		above += hist[d];
	}
	*need -= above;
	return d;
}

uint32_t krn_select_top(const float *x, uint32_t n, uint32_t k,
			uint32_t *idx, uint32_t *scratch)
{
	static const uint8_t shifts[3] = { 21, 10, 0 };
	static const uint8_t widths[3] = { 11, 11, 10 };
	uint32_t hist[2048];
	uint32_t prefix = 0, mask = 0, need = k, live = n;

	if (k >= n) {
		for (uint32_t i = 0; i < n; i++)
			idx[i] = i;
		return n;
	}
	if (k == 0)
		return 0;
	/* scratch holds the indices still in play after the first pass */
	for (int p = 0; p < 3; p++) {
		uint32_t nb = 1u << widths[p], sh = shifts[p];
		memset(hist, 0, nb * sizeof(hist[0]));
		if (p == 0) {
			for (uint32_t i = 0; i < n; i++)
				hist[key_of(x[i]) >> sh]++;
		} else {
			for (uint32_t i = 0; i < live; i++)
				hist[(key_of(x[scratch[i]]) >> sh) & (nb - 1)]++;
		}
		uint32_t d = pick_digit(hist, nb, &need);
		prefix |= d << sh;
		mask |= (nb - 1) << sh;
		/* keep only the elements whose key matches the prefix so far */
		uint32_t m = 0;
		if (p == 0) {
			for (uint32_t i = 0; i < n; i++)
				if ((key_of(x[i]) & mask) == prefix)
					scratch[m++] = i;
		} else {
			for (uint32_t i = 0; i < live; i++)
				if ((key_of(x[scratch[i]]) & mask) == prefix)
					scratch[m++] = scratch[i];
		}
		live = m;
	}
	/* prefix is now the exact threshold key; take all above, `need` equal */
	uint32_t out = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t key = key_of(x[i]);
		if (key > prefix || (key == prefix && need > 0)) {
			if (key == prefix)
				need--;
			idx[out++] = i;
		}
	}
	return out;
}
