/*
 * dispatch.c - choose the kernel table once, from cpuid + xgetbv (the OS
 * must have enabled the vector registers), or from DASHKV_SIMD.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "krn.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

enum krn_level krn_cpu_level(void)
{
	uint32_t a, b, c, d;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return KRN_SCALAR;
	int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
	int popcnt = (c >> 23) & 1;
	if (!osxsave || !fma || !f16c || !popcnt)
		return KRN_SCALAR;
	uint64_t xcr0 = xgetbv0();
	if ((xcr0 & 0x6) != 0x6) /* SSE + AVX state */
		return KRN_SCALAR;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return KRN_SCALAR;
	int avx2 = (b >> 5) & 1;
	int avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1;
	int avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
	int vpopcntdq = (c >> 14) & 1, bitalg = (c >> 12) & 1;
	if (!avx2)
		return KRN_SCALAR;
	if (avx512f && avx512dq && avx512bw && avx512vl && vpopcntdq && bitalg &&
	    (xcr0 & 0xe6) == 0xe6) /* opmask + ZMM state */
		return KRN_AVX512;
	return KRN_AVX2;
}
#else
enum krn_level krn_cpu_level(void)
{
	return KRN_SCALAR;
}
#endif

static const struct krn_ops *built_level(enum krn_level level)
{
	switch (level) {
	case KRN_SCALAR:
		return &krn_ops_scalar;
#ifdef DKV_HAVE_AVX2
	case KRN_AVX2:
		return &krn_ops_avx2;
#endif
#ifdef DKV_HAVE_AVX512
	case KRN_AVX512:
		return &krn_ops_avx512;
#endif
	default:
		return NULL;
	}
}

/*
 * A variant implements what it accelerates; members it leaves NULL are
 * the scalar reference's.  merged[] holds the completed tables.
 */
static struct krn_ops merged[KRN_NLEVELS];
static pthread_once_t merge_once = PTHREAD_ONCE_INIT;

#define FILL(t, m) do { if (!(t)->m) (t)->m = krn_ops_scalar.m; } while (0)

static void merge_tables(void)
{
	for (int l = 0; l < KRN_NLEVELS; l++) {
		const struct krn_ops *b = built_level((enum krn_level)l);
		struct krn_ops *t = &merged[l];
		if (!b)
			continue;
		*t = *b;
		FILL(t, encode);
		FILL(t, hamming);
		FILL(t, scan);
		FILL(t, estimate);
		FILL(t, wsum);
		FILL(t, dot);
		FILL(t, gdot);
		FILL(t, sketch);
		FILL(t, attend);
		FILL(t, attend_logits);
		FILL(t, merge);
		FILL(t, exp_sum);
		FILL(t, max);
		FILL(t, f16_to_f32);
		FILL(t, f32_to_f16);
		FILL(t, bf16_to_f32);
		FILL(t, f32_to_bf16);
		FILL(t, all_finite);
	}
}

const struct krn_ops *krn_get_level(enum krn_level level)
{
	if (level >= KRN_NLEVELS || level > krn_cpu_level() || !built_level(level))
		return NULL;
	pthread_once(&merge_once, merge_tables);
	return &merged[level];
}

static const struct krn_ops *active;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static char init_err[KRN_MSGLEN];
static int init_rc;

static void init_once(void)
{
	const char *env = getenv("DASHKV_SIMD");
	enum krn_level want;

	if (env && *env) {
		if (!strcmp(env, "scalar"))
			want = KRN_SCALAR;
		else if (!strcmp(env, "avx2"))
			want = KRN_AVX2;
		else if (!strcmp(env, "avx512"))
			want = KRN_AVX512;
		else {
			init_rc = krn_msgf(init_err, -1,
					   "DASHKV_SIMD=%s: expected scalar, avx2 or avx512", env);
			active = &krn_ops_scalar;
			return;
		}
		active = krn_get_level(want);
		if (!active) {
			init_rc = krn_msgf(init_err, -1, "DASHKV_SIMD=%s: this %s lacks that level",
					   env, built_level(want) ? "CPU" : "build");
			active = &krn_ops_scalar;
		}
		return;
	}
	for (int l = krn_cpu_level(); l >= 0; l--) {
		active = krn_get_level((enum krn_level)l);
		if (active)
			return;
	}
}

int krn_init(char *err)
{
	pthread_once(&once, init_once);
	return init_rc ? krn_msgf(err, init_rc, "%s", init_err) : 0;
}

const struct krn_ops *krn_get(void)
{
	pthread_once(&once, init_once);
	return active;
}
