/* dtype.c - test data in the engine's element types (see dtype.h). */
#include <stdint.h>
#include <string.h>

#include "dashkv.h"
#include "dtype.h"
#include "krn.h"

void test_to_dtype(int dtype, const float *x, size_t n, void *out)
{
	uint16_t *h = out;

	if (dtype == DKV_F32) {
		memmove(out, x, n * sizeof(float));
		return;
	}
	/* h[i] ends before x[i + 1] begins: in place is safe */
	for (size_t i = 0; i < n; i++)
		h[i] = dtype == DKV_BF16 ? krn_f32_to_bf16_1(x[i]) : krn_f32_to_f16_1(x[i]);
}
