/*
 * dtype.h - test data in the engine's element types.
 *
 * test_to_dtype: n f32 numbers x into out as f32, f16 or bf16 (DKV_*);
 * out may be x itself (16-bit results pack into its front).
 */
#ifndef DKV_TESTS_DTYPE_H
#define DKV_TESTS_DTYPE_H

#include <stddef.h>

void test_to_dtype(int dtype, const float *x, size_t n, void *out);

#endif
