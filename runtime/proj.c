/* proj.c - the deterministic Gaussian projection (see proj.h). */
#include <math.h>
#include <stdlib.h>

#include "proj.h"

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1]. */
static double unit(uint64_t *s)
{
	return ((splitmix64(s) >> 11) + 1) * 0x1p-53;
}

float *rt_hash_projection(uint32_t bits, uint32_t dim, uint64_t seed)
{
	size_t n = (size_t)bits * dim;
	float *P = malloc(n * sizeof(*P));
	uint64_t s = seed;

	if (!P)
		return NULL;
	for (size_t i = 0; i < n; i += 2) {
		/* Box-Muller: two normals per pair of uniforms */
		double r = sqrt(-2.0 * log(unit(&s)));
		double t = 2.0 * M_PI * unit(&s);
		P[i] = (float)(r * cos(t));
		if (i + 1 < n)
			P[i + 1] = (float)(r * sin(t));
	}
	return P;
}
