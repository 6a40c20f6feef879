/* convert.c - scalar f16/bf16 <-> f32, round to nearest even. */
#include "krn.h"
#include "cpu_common.h"

float krn_f16_to_f32_1(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f;
	uint32_t man = h & 0x3ff;

	if (exp == 0x1f) /* Inf / NaN */
		return krn_bits_f32(sign | 0x7f800000 | (man << 13));
	if (exp == 0) {
		if (man == 0)
			return krn_bits_f32(sign);
		/* subnormal: value = man * 2^-24 */
		float f = (float)man * 0x1p-24f;
		return krn_bits_f32(sign | krn_f32_bits(f));
	}
	return krn_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t krn_f32_to_f16_1(float f)
{
	uint32_t u = krn_f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
	uint32_t a = u & 0x7fffffff;

	if (a >= 0x7f800000) /* Inf or NaN (keep NaN quiet and non-zero) */
		return sign | 0x7c00 | (a > 0x7f800000 ? 0x200 | ((a >> 13) & 0x3ff) : 0);
	if (a >= 0x477ff000) /* rounds to >= 65520: overflow to Inf */
		return sign | 0x7c00;
	if (a < 0x38800000) { /* below the smallest normal f16: subnormal */
		if (a < 0x33000000) /* < 2^-25: rounds to zero */
			return sign;
		uint32_t e = a >> 23;
		uint32_t man = (a & 0x7fffff) | 0x800000;
		uint32_t shift = 126 - e; /* 14 .. 24 */
		uint32_t r = man >> shift;
		uint32_t rem = man & ((1u << shift) - 1);
		uint32_t half = 1u << (shift - 1);
		if (rem > half || (rem == half && (r & 1)))
			r++;
		return sign | (uint16_t)r;
	}
	uint32_t r = a - 0x38000000; /* rebias exponent 127 -> 15 */
	uint32_t lsb = (r >> 13) & 1;
	r += 0xfff + lsb;
	return sign | (uint16_t)(r >> 13);
}

float krn_bf16_to_f32_1(uint16_t h)
{
	return krn_bits_f32((uint32_t)h << 16);
}

uint16_t krn_f32_to_bf16_1(float f)
{
	uint32_t u = krn_f32_bits(f);

	if ((u & 0x7fffffff) > 0x7f800000) /* NaN: keep it quiet */
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fff + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}
