/* cpu_common.h - helpers shared by the CPU kernel variants. */
#ifndef DKV_CPU_COMMON_H
#define DKV_CPU_COMMON_H

#include <stdint.h>
#include <string.h>

static inline uint32_t krn_f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static inline float krn_bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

#endif
