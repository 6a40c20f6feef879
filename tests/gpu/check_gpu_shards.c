/*
 * check_gpu_shards.c - GPU shards (shard/gpu.h) on the emulated GPU module
 * (tests/gpu/gpu_emu.c), on any machine: DASHKV_SHARDS=gpu:0 and gpu:0,1
 * give the same bytes as cpu:1 (the emulation makes the CPU kernels'
 * calls on the same rows, so the host side - paging, mirrors, staging,
 * local positions, job routing, the all-gather - must be exact), the
 * device jobs did run, a failing device call falls back to the host, and
 * bad specs are refused with a message.
 *
 * The real CUDA module is held to the kernels' tolerances instead, on a
 * GPU machine: tests/gpu/gpu-shards.c through tests/gpu/device-check.sh.
 */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "engine.h"
#include "dtype.h"
#include "gen/kvgen.h"
#include "gpu.h"
#include "krn.h"

#ifndef DKV_EMU_MODULE
#define DKV_EMU_MODULE "dashkv-gpu-emu.so"
#endif

#define TOKENS 21000u   /* 5 pages and a part: every shard holds some */
#define CHUNK 3000u
#define DECODE 4u
#define STEPS ((TOKENS + CHUNK - 1) / CHUNK + DECODE)

struct dkv_gpu_emu_stats {
	unsigned long scan, fine, attend_range, put, get, gather, dalloc, halloc;
};

struct shape {
	const char *name;
	uint32_t q_heads, kv_heads, dim;
	int dtype, exact, tail;
	uint32_t candidates;
};

static const struct shape shapes[] = {
	{ "dash f32", 8, 2, 64, DKV_F32, 0, 1, 0 },
	{ "dash bf16", 8, 2, 64, DKV_BF16, 0, 1, 0 },
	{ "dash no tail", 8, 2, 64, DKV_F32, 0, 0, 0 },
	{ "dash group 16", 16, 1, 32, DKV_F32, 0, 1, 0 },
	{ "dash group 24", 24, 1, 32, DKV_F32, 0, 1, 0 },
	{ "dash few candidates", 4, 1, 64, DKV_F32, 0, 1, 300 },
	{ "exact f32", 8, 2, 64, DKV_F32, 1, 1, 0 },
	{ "exact group 24 bf16", 24, 1, 32, DKV_BF16, 1, 1, 0 },
};
#define N_SHAPES ((int)(sizeof(shapes) / sizeof(shapes[0])))

static const char *gpu_specs[] = { "gpu:0", "gpu:0,1" };

static void use_emulation(void)
{
	ck_assert_int_eq(setenv("DASHKV_CUDA_MODULE", DKV_EMU_MODULE, 1), 0);
}

static const struct dkv_gpu_emu_stats *emu_stats(void)
{
	void *h = dlopen(DKV_EMU_MODULE, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	const struct dkv_gpu_emu_stats *st;

	ck_assert_msg(h != NULL, "the emulated module is not loaded");
	st = dlsym(h, "dkv_gpu_emu_stats");
	ck_assert(st != NULL);
	return st;
}

static struct rt_seq *open_seq(struct rt_engine *e, const struct shape *sh, int hash)
{
	dkv_seq_config cfg;
	struct rt_seq *s;
	char err[KRN_MSGLEN] = "";

	rt_config_defaults(&cfg);
	cfg.n_layers = 2;
	cfg.n_q_heads = sh->q_heads;
	cfg.n_kv_heads = sh->kv_heads;
	cfg.head_dim = sh->dim;
	cfg.dtype = sh->dtype;
	cfg.exact = sh->exact;
	cfg.tail_estimate = sh->tail;
	cfg.hash = hash;
	if (sh->candidates)
		cfg.candidates = sh->candidates;
	ck_assert_msg(rt_seq_open(e, &cfg, &s, err) == DKV_OK, "%s", err);
	return s;
}

/*
 * Prefill in chunks and decode a few tokens on both layers (the second
 * layer gets the keys negated, so the layers differ); outputs go to out.
 * train_at > 0: fit the learned models after that many tokens, so every
 * stored key is encoded again (the device mirrors must follow).
 */
static size_t run(const struct shape *sh, const char *spec, uint8_t *out, int hash,
		  uint64_t train_at, struct rt_engine **keep)
{
	struct kvgen_params gp;
	struct kvgen *gen;
	struct rt_engine *e;
	struct rt_seq *s;
	char err[KRN_MSGLEN] = "";
	size_t qn = (size_t)sh->q_heads * sh->dim, kn = (size_t)sh->kv_heads * sh->dim;
	size_t elt = sh->dtype == DKV_F32 ? 4 : 2, at = 0;
	float *k = malloc(CHUNK * kn * sizeof(float)), *v = malloc(CHUNK * kn * sizeof(float));
	float *q = malloc(qn * sizeof(float));

	ck_assert(k && v && q);
	ck_assert_int_eq(setenv("DASHKV_SHARDS", spec, 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s: %s", spec, err);
	s = open_seq(e, sh, hash);
	kvgen_params_init(&gp);
	gp.n_q_heads = sh->q_heads;
	gp.n_kv_heads = sh->kv_heads;
	gp.head_dim = sh->dim;
	gen = kvgen_new(&gp);
	ck_assert(gen);
	for (uint64_t pos = 0; pos < TOKENS + DECODE;) {
		uint32_t n = pos < TOKENS ? (TOKENS - pos < CHUNK ? TOKENS - pos : CHUNK) : 1;
		kvgen_kv(gen, pos, n, k, v);
		kvgen_queries(gen, pos + n - 1, 0, q);
		for (uint32_t layer = 0; layer < 2; layer++) {
			float *kc = malloc(n * kn * sizeof(float));
			ck_assert(kc);
			for (size_t i = 0; i < n * kn; i++)
				kc[i] = layer ? -k[i] : k[i];
			test_to_dtype(sh->dtype, kc, n * kn, kc);
			float *vc = malloc(n * kn * sizeof(float)), *qc = malloc(qn * sizeof(float));
			ck_assert(vc && qc);
			memcpy(vc, v, n * kn * sizeof(float));
			memcpy(qc, q, qn * sizeof(float));
			test_to_dtype(sh->dtype, vc, n * kn, vc);
			test_to_dtype(sh->dtype, qc, qn, qc);
			ck_assert_msg(rt_seq_step(s, layer, qc, 1, kc, vc, n, out + at, err) == DKV_OK,
				      "%s %s at %llu: %s", sh->name, spec, (unsigned long long)pos, err);
			at += qn * elt;
			free(kc);
			free(vc);
			free(qc);
		}
		pos += n;
		if (train_at && pos >= train_at && pos - n < train_at)
			ck_assert_msg(rt_seq_train_now(s, err) == DKV_OK, "%s", err);
	}
	kvgen_free(gen);
	rt_seq_close(s);
	if (keep)
		*keep = e;
	else
		rt_engine_free(e);
	free(k);
	free(v);
	free(q);
	return at;
}

static size_t out_bytes(const struct shape *sh)
{
	return (size_t)STEPS * 2 * sh->q_heads * sh->dim * 4;
}

static void assert_same(const struct shape *sh, const char *spec, const uint8_t *a,
			const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(a[i] == b[i], "%s: %s differs from cpu:1 at byte %zu of %zu",
			      sh->name, spec, i, n);
}

/* The engine's GPU shards ran their jobs on the (emulated) devices. */
static void assert_ran(const struct shape *sh, const char *spec, struct rt_engine *e,
		       const struct dkv_gpu_emu_stats *before)
{
	const struct dkv_gpu_emu_stats *st = emu_stats();
	char last[KRN_MSGLEN];

	ck_assert_msg(rt_engine_gpu_fallbacks(e, last) == 0, "%s %s: %s",
		      sh->name, spec, last);
	if (sh->exact) {
		ck_assert_uint_gt(st->attend_range, before->attend_range);
		return;
	}
	ck_assert_msg(st->scan > before->scan, "%s %s: no scan on the devices", sh->name, spec);
	ck_assert_msg(st->fine > before->fine, "%s %s: no fine ranking on the devices", sh->name,
		      spec);
	if (strchr(spec, ','))
		ck_assert_msg(st->gather > before->gather, "%s %s: no device all-gather",
			      sh->name, spec);
}

START_TEST(gpu_shards_match_cpu)
{
	const struct shape *sh = &shapes[_i];
	size_t bytes = out_bytes(sh), n_cpu;
	uint8_t *ref = calloc(1, bytes), *got = calloc(1, bytes);

	ck_assert(ref && got);
	use_emulation();
	n_cpu = run(sh, "cpu:1", ref, DKV_HASH_SIMHASH, 0, NULL);
	for (int i = 0; i < 2; i++) {
		struct dkv_gpu_emu_stats before = { 0 };
		struct rt_engine *e;
		if (i)
			before = *emu_stats();
		memset(got, 0, bytes);
		ck_assert_uint_eq(run(sh, gpu_specs[i], got, DKV_HASH_SIMHASH, 0, &e), n_cpu);
		assert_ran(sh, gpu_specs[i], e, &before);
		rt_engine_free(e);
		assert_same(sh, gpu_specs[i], ref, got, n_cpu);
	}
	free(ref);
	free(got);
}
END_TEST

/* Learned models swapped in mid-way re-encode every key: the mirrors follow. */
START_TEST(gpu_mirrors_follow_reencoding)
{
	const struct shape *sh = &shapes[0];
	size_t bytes = out_bytes(sh), n;
	uint8_t *ref = calloc(1, bytes), *got = calloc(1, bytes);

	ck_assert(ref && got);
	use_emulation();
	n = run(sh, "cpu:1", ref, DKV_HASH_LEARNED, 9000, NULL);
	ck_assert_uint_eq(run(sh, "gpu:0,1", got, DKV_HASH_LEARNED, 9000, NULL), n);
	assert_same(sh, "gpu:0,1 learned", ref, got, n);
	free(ref);
	free(got);
}
END_TEST

/* Without a collective in the module the all-gather uses shared memory. */
START_TEST(gpu_shards_shared_memory_gather)
{
	const struct shape *sh = &shapes[0];
	size_t bytes = out_bytes(sh), n;
	uint8_t *ref = calloc(1, bytes), *got = calloc(1, bytes);
	struct rt_engine *e;
	char what[KRN_MSGLEN];

	ck_assert(ref && got);
	use_emulation();
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_NCCL", "0", 1), 0);
	n = run(sh, "cpu:1", ref, DKV_HASH_SIMHASH, 0, NULL);
	ck_assert_uint_eq(run(sh, "gpu:0,1", got, DKV_HASH_SIMHASH, 0, &e), n);
	rt_engine_describe(e, what, sizeof(what));
	ck_assert_msg(strstr(what, "shared memory"), "%s", what);
	ck_assert_uint_eq(emu_stats()->gather, 0);
	rt_engine_free(e);
	assert_same(sh, "gpu:0,1 without NCCL", ref, got, n);
	free(ref);
	free(got);
}
END_TEST

/* Failing device kernels: the host runs those jobs; the outputs stay. */
START_TEST(gpu_failures_fall_back)
{
	const struct shape *sh = &shapes[_i ? 6 : 0];
	size_t bytes = out_bytes(sh), n;
	uint8_t *ref = calloc(1, bytes), *got = calloc(1, bytes);
	struct rt_engine *e;
	char last[KRN_MSGLEN];

	ck_assert(ref && got);
	use_emulation();
	n = run(sh, "cpu:1", ref, DKV_HASH_SIMHASH, 0, NULL);
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_FAIL", "scan,fine,attend_range", 1), 0);
	ck_assert_uint_eq(run(sh, "gpu:0,1", got, DKV_HASH_SIMHASH, 0, &e), n);
	ck_assert_uint_gt(rt_engine_gpu_fallbacks(e, last), 0);
	ck_assert_msg(strstr(last, "injected failure"), "%s", last);
	rt_engine_free(e);
	assert_same(sh, "gpu:0,1 failing", ref, got, n);
	free(ref);
	free(got);
}
END_TEST

/* Device pages that cannot be set up fail the step before anything is stored. */
START_TEST(gpu_pages_all_or_nothing)
{
	const struct shape *sh = &shapes[0];
	struct rt_engine *e;
	struct rt_seq *s;
	char err[KRN_MSGLEN] = "";
	size_t kn = (size_t)sh->kv_heads * sh->dim;
	float *k = calloc(5000 * kn, 4), *v = calloc(5000 * kn, 4);
	uint64_t len = 1;

	ck_assert(k && v);
	use_emulation();
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "gpu:0,1", 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s", err);
	s = open_seq(e, sh, DKV_HASH_SIMHASH);
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_FAIL", "put", 1), 0);
	ck_assert_int_eq(rt_seq_step(s, 0, NULL, 0, k, v, 5000, NULL, err), DKV_E_NOMEM);
	ck_assert_msg(strstr(err, "GPU pages"), "%s", err);
	ck_assert_int_eq(rt_seq_len(s, 0, &len, err), DKV_OK);
	ck_assert_uint_eq(len, 0);
	ck_assert_int_eq(unsetenv("DASHKV_GPU_EMU_FAIL"), 0);
	ck_assert_msg(rt_seq_step(s, 0, NULL, 0, k, v, 5000, NULL, err) == DKV_OK, "%s", err);
	ck_assert_int_eq(rt_seq_len(s, 0, &len, err), DKV_OK);
	ck_assert_uint_eq(len, 5000);
	rt_seq_close(s);
	rt_engine_free(e);
	free(k);
	free(v);
}
END_TEST

/* A failed all-gather cannot be redone: the step says so; the next one works. */
START_TEST(gpu_gather_failure_reported)
{
	const struct shape *sh = &shapes[0];
	size_t kn = (size_t)sh->kv_heads * sh->dim, qn = (size_t)sh->q_heads * sh->dim;
	float *k = calloc(9000 * kn, 4), *v = calloc(9000 * kn, 4), *q = calloc(qn, 4);
	float *o = calloc(qn, 4);
	struct rt_engine *e;
	struct rt_seq *s;
	char err[KRN_MSGLEN] = "";

	ck_assert(k && v && q && o);
	for (size_t i = 0; i < 9000 * kn; i++) {
		k[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
		v[i] = (float)((i * 40503u) % 1000) / 500.0f - 1.0f;
	}
	for (size_t i = 0; i < qn; i++)
		q[i] = (float)(i % 7) / 7.0f;
	use_emulation();
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "gpu:0,1", 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s", err);
	s = open_seq(e, sh, DKV_HASH_SIMHASH);
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_FAIL", "gather", 1), 0);
	ck_assert_int_eq(rt_seq_step(s, 0, q, 1, k, v, 9000, o, err), DKV_E_INTERNAL);
	ck_assert_msg(strstr(err, "all-gather") && strstr(err, "collective failed"), "%s", err);
	ck_assert_int_eq(unsetenv("DASHKV_GPU_EMU_FAIL"), 0);
	ck_assert_msg(rt_seq_step(s, 0, q, 1, k, v, 1, o, err) == DKV_OK, "%s", err);
	rt_seq_close(s);
	rt_engine_free(e);
	free(k);
	free(v);
	free(q);
	free(o);
}
END_TEST

static void refused(const char *spec, int code, const char *says)
{
	struct rt_engine *e = NULL;
	char err[KRN_MSGLEN] = "";

	ck_assert_int_eq(setenv("DASHKV_SHARDS", spec, 1), 0);
	ck_assert_int_eq(rt_engine_new(&e, err), code);
	ck_assert_ptr_null(e);
	ck_assert_msg(strstr(err, spec) && strstr(err, says), "%s: %s", spec, err);
}

/* No module: DKV_E_UNSUPPORTED with a message; CPU shards still work. */
START_TEST(gpu_refused_without_module)
{
	struct rt_engine *e;
	char err[KRN_MSGLEN] = "";

	ck_assert_int_eq(setenv("DASHKV_CUDA_MODULE", "/nonexistent/dashkv-cuda.so", 1), 0);
	refused("gpu:0", DKV_E_UNSUPPORTED, "GPU module");
	refused("gpu:all", DKV_E_UNSUPPORTED, "cannot load");
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "cpu:2", 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s", err);
	ck_assert_uint_eq(rt_engine_shards(e), 2);
	rt_engine_free(e);
}
END_TEST

START_TEST(gpu_refused_without_device)
{
	use_emulation();
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_DEVICES", "0", 1), 0);
	refused("gpu:0", DKV_E_UNSUPPORTED, "no CUDA device");
}
END_TEST

START_TEST(gpu_bad_lists_refused)
{
	struct rt_engine *e;
	char err[KRN_MSGLEN] = "", what[KRN_MSGLEN];

	use_emulation();
	refused("gpu:2", DKV_E_INVAL, "CUDA reports 2 devices");
	refused("gpu:0,0", DKV_E_INVAL, "twice");
	refused("gpu:x", DKV_E_INVAL, "want gpu:all");
	refused("gpu:1-0", DKV_E_INVAL, "want gpu:all");
	refused("gpu:0,", DKV_E_INVAL, "want gpu:all");
	ck_assert_int_eq(setenv("DASHKV_SHARDS", "gpu:all", 1), 0);
	ck_assert_msg(rt_engine_new(&e, err) == DKV_OK, "%s", err);
	ck_assert_uint_eq(rt_engine_shards(e), 2);
	rt_engine_describe(e, what, sizeof(what));
	ck_assert_msg(strstr(what, "2 GPU shards on devices 0,1") &&
		      strstr(what, "emulated-nccl"), "%s", what);
	rt_engine_free(e);
}
END_TEST

/* A recorded machine, or NULL (noted) when the shared data is not here. */
static struct shard_topo *topology(const char *name)
{
	const char *data = getenv("DASHKV_TEST_DATA"), *top = getenv("top_srcdir");
	struct shard_topo *t = NULL;
	char path[4096], err[256];

	if (data && *data)
		snprintf(path, sizeof(path), "%s/topologies/%s", data, name);
	else
		snprintf(path, sizeof(path), "%s/../shared/data/topologies/%s", top ? top : ".",
			 name);
	if (shard_topo_load(&t, path, NULL, err)) {
		fprintf(stderr, "check_gpu_shards: %s: %s; not checked\n", name, err);
		return NULL;
	}
	return t;
}

/* Where hwloc sees the GPUs, the plan's GPUs map to their CUDA devices. */
START_TEST(gpu_plan_maps_cuda_devices)
{
	struct shard_topo *t = topology("mpibind-g4dnmetal.xml"); /* cudaI + nvmlI */
	struct shard_plan *plan = NULL;
	struct shard_gpus *g;
	char err[KRN_MSGLEN] = "", what[KRN_MSGLEN];

	if (!t)
		return;
	use_emulation();
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_DEVICES", "8", 1), 0);
	ck_assert_msg(shard_gpus_open(&g, t, "gpu:1,5-6", &plan, err) == DKV_OK, "%s", err);
	ck_assert_ptr_nonnull(plan);
	ck_assert_uint_eq(plan->n, 3);
	ck_assert_uint_eq(plan->n_gpu, 3);
	ck_assert_uint_eq(shard_gpus_count(g), 3);
	shard_gpus_describe(g, what, sizeof(what));
	ck_assert_msg(strstr(what, "3 GPU shards on devices 1,5,6"), "%s", what);
	shard_gpus_close(g);
	shard_plan_free(plan);
	ck_assert_int_eq(shard_gpus_open(&g, t, "gpu:8", &plan, err), DKV_E_INVAL);
	ck_assert_ptr_null(plan);
	ck_assert_msg(strstr(err, "gpu:8"), "%s", err);
	/* CUDA sees fewer devices than hwloc (CUDA_VISIBLE_DEVICES) */
	ck_assert_int_eq(setenv("DASHKV_GPU_EMU_DEVICES", "4", 1), 0);
	ck_assert_int_eq(shard_gpus_open(&g, t, "gpu:6", &plan, err), DKV_E_INVAL);
	ck_assert_ptr_null(plan);
	ck_assert_msg(strstr(err, "CUDA reports 4 devices"), "%s", err);
	shard_topo_free(t);
}
END_TEST

int main(void)
{
	Suite *su = suite_create("gpu_shards");
	TCase *tc = tcase_create("gpu_shards");
	SRunner *sr;
	int failed;

	tcase_add_loop_test(tc, gpu_shards_match_cpu, 0, N_SHAPES);
	tcase_add_test(tc, gpu_mirrors_follow_reencoding);
	tcase_add_test(tc, gpu_shards_shared_memory_gather);
	tcase_add_loop_test(tc, gpu_failures_fall_back, 0, 2);
	tcase_add_test(tc, gpu_pages_all_or_nothing);
	tcase_add_test(tc, gpu_gather_failure_reported);
	tcase_add_test(tc, gpu_refused_without_module);
	tcase_add_test(tc, gpu_refused_without_device);
	tcase_add_test(tc, gpu_bad_lists_refused);
	tcase_add_test(tc, gpu_plan_maps_cuda_devices);
	suite_add_tcase(su, tc);
	sr = srunner_create(su);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
