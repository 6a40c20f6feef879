/*
 * check_gpu_host.c - the host side of the GPU path, on any machine: the
 * loader (kernels/gpu_load.c) and the GPU module's table and argument
 * checks, which answer before any CUDA call.  Runs where there is no GPU
 * and no CUDA driver; the module is opened directly with dlopen, without
 * the loader's device probe.
 *
 * Every entry point must refuse bad shapes with DKV_E_INVAL and a
 * message, and the workspace sizes must cover what the kernels carve out
 * of them.
 */
#include <check.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dashkv.h"
#include "krn.h"
#include "krn_gpu.h"

#ifndef DKV_BUILD_MODULE
#define DKV_BUILD_MODULE "dashkv-cuda.so"
#endif

static const struct krn_gpu_ops *mod;
static void *handle;

static void open_module(void)
{
	handle = dlopen(DKV_BUILD_MODULE, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(handle != NULL, "dlopen: %s", dlerror());
	mod = dlsym(handle, KRN_GPU_SYM);
	ck_assert_msg(mod != NULL, "no %s in the module", KRN_GPU_SYM);
}

static void close_module(void)
{
	dlclose(handle);
}

START_TEST(test_loader_missing)
{
	const struct krn_gpu_ops *g = NULL;
	char err[KRN_MSGLEN] = "";

	ck_assert_int_eq(krn_gpu_load("/nonexistent/dashkv-cuda.so", &g, err), DKV_E_UNSUPPORTED);
	ck_assert_ptr_null(g);
	ck_assert_msg(strstr(err, "cannot load") != NULL, "message: %s", err);
}
END_TEST

/* The real module: a table where a device answers, a refusal otherwise. */
START_TEST(test_loader_module)
{
	const struct krn_gpu_ops *g = NULL, *again = NULL;
	char err[KRN_MSGLEN] = "";
	int rc = krn_gpu_load(DKV_BUILD_MODULE, &g, err);

	if (rc == DKV_OK) {
		ck_assert_ptr_nonnull(g);
		ck_assert_int_eq(krn_gpu_load(NULL, &again, err), DKV_OK);
		ck_assert_ptr_eq(g, again);
	} else {
		ck_assert_int_eq(rc, DKV_E_UNSUPPORTED);
		ck_assert_ptr_null(g);
		ck_assert_msg(strstr(err, "CUDA") != NULL, "message: %s", err);
	}
}
END_TEST

START_TEST(test_table)
{
	open_module();
	ck_assert_uint_eq(mod->abi, KRN_GPU_ABI);
	ck_assert_str_eq(mod->name, "cuda");
	ck_assert(mod->probe && mod->device && mod->sync && mod->dev_name);
	ck_assert(mod->dalloc && mod->halloc && mod->dfree && mod->hfree);
	ck_assert(mod->put && mod->get && mod->copy && mod->memset0);
	ck_assert(mod->to_f32 && mod->from_f32 && mod->encode && mod->hamming);
	ck_assert(mod->scan_ws && mod->scan && mod->select_top && mod->select_ham_ws);
	ck_assert(mod->select_ham && mod->fine && mod->attend_list && mod->attend_range);
	ck_assert(mod->merge && mod->search_ws && mod->search && mod->fill);
	ck_assert(mod->mark && mod->elapsed);
#ifdef HAVE_NCCL
	ck_assert_ptr_nonnull(mod->coll_nccl_new);
#else
	ck_assert_ptr_null(mod->coll_nccl_new);
#endif
	/* only the table is exported */
	ck_assert_ptr_null(dlsym(handle, "cu_scan"));
	close_module();
}
END_TEST

#define REFUSED(call) \
	do { \
		err[0] = 0; \
		ck_assert_int_eq((call), DKV_E_INVAL); \
		ck_assert_msg(err[0] != 0, "%s: no message", #call); \
	} while (0)

START_TEST(test_refusals)
{
	char err[KRN_MSGLEN];
	struct krn_gpu_rows rows = { NULL, 11, DKV_F32, 8 };
	struct krn_gpu_part part = { NULL, NULL, NULL };
	struct krn_gpu_scan s;
	struct krn_gpu_search a;
	uint32_t dummy;

	open_module();
	REFUSED(mod->to_f32(NULL, DKV_F32, NULL, 1, err));
	REFUSED(mod->from_f32(NULL, 7, NULL, 1, err));
	REFUSED(mod->encode(NULL, 96, 8, NULL, DKV_F32, 8, 1, NULL, NULL, 0, err));
	REFUSED(mod->encode(NULL, 128, 264, NULL, DKV_F32, 264, 1, NULL, NULL, 0, err));
	REFUSED(mod->encode(NULL, 128, 8, NULL, 3, 8, 1, NULL, NULL, 0, err));
	REFUSED(mod->encode(NULL, 128, 16, NULL, DKV_F32, 8, 1, NULL, NULL, 0, err));
	REFUSED(mod->hamming(NULL, NULL, 5, 1, NULL, err));

	memset(&s, 0, sizeof(s));
	s.nq = 2;
	s.words = 2;
	s.stride = 1;
	s.keys.shift = 12;
	s.n = 100;
	s.hit = s.n_hit = &dummy;
	s.ws = &dummy;
	s.nq = 0;
	REFUSED(mod->scan(&s, err));
	s.nq = KRN_GPU_MAXQ + 1;
	REFUSED(mod->scan(&s, err));
	s.nq = 2;
	s.words = 3;
	REFUSED(mod->scan(&s, err));
	s.words = 2;
	s.stride = 2;
	REFUSED(mod->scan(&s, err));
	s.stride = 128;
	REFUSED(mod->scan(&s, err));
	s.stride = 8;
	s.keys.shift = 5; /* pages must hold whole 64-key blocks */
	REFUSED(mod->scan(&s, err));
	s.keys.shift = 12;
	s.first = 0xfffffff0u;
	REFUSED(mod->scan(&s, err));
	s.first = 0;
	s.ws = NULL;
	REFUSED(mod->scan(&s, err));

	REFUSED(mod->select_top(NULL, 10, NULL, 70000, 10, 1, NULL, NULL, err));
	REFUSED(mod->select_top(NULL, 5, NULL, 2, 10, 1, NULL, NULL, err));
	REFUSED(mod->select_ham(NULL, 10, 100, 1, NULL, NULL, err));
	REFUSED(mod->fine(NULL, 1, 0, &rows, NULL, 0, NULL, 1, 1.0f, NULL, 1, err));
	rows.dtype = 9;
	REFUSED(mod->fine(NULL, 1, 8, &rows, NULL, 0, NULL, 1, 1.0f, NULL, 1, err));
	REFUSED(mod->attend_list(NULL, 1, NULL, 0, NULL, 1, 1, &rows, 8, &part, err));
	rows.dtype = DKV_BF16;
	REFUSED(mod->attend_list(NULL, 1, NULL, 0, NULL, 1, 1, &rows, 300, &part, err));
	REFUSED(mod->attend_range(NULL, KRN_GPU_MAXQ + 1, 8, 1.0f, &rows, &rows, 0, 1, 64, &part,
				  err));
	REFUSED(mod->attend_range(NULL, 1, 8, 1.0f, &rows, &rows, 0, 1, 0, &part, err));
	REFUSED(mod->attend_range(NULL, 1, 8, 1.0f, &rows, &rows, 5, 1, 64, &part, err));
	REFUSED(mod->merge(&part, 0, 1, 8, &part, err));
	REFUSED(mod->merge(&part, 1, 1, 257, &part, err));

	memset(&a, 0, sizeof(a));
	a.nq = 4;
	a.dim = 128;
	a.scan.nq = 4;
	a.cand = 64;
	a.top_k = 65;
	REFUSED(mod->search(&a, err));
	a.top_k = 0;
	REFUSED(mod->search(&a, err));
	a.top_k = 16;
	a.scan.nq = 3;
	REFUSED(mod->search(&a, err));
	a.scan.nq = 4;
	a.dim = 0;
	REFUSED(mod->search(&a, err));
	close_module();
}
END_TEST

/* The workspaces hold at least what the kernels carve out of them. */
START_TEST(test_workspaces)
{
	open_module();
	/* keys [45, 3046): groups 1..95, one chunk; bitmap + counts per query */
	ck_assert_uint_ge(mod->scan_ws(3, 45, 3001), 3 * 95 * 4 + 3 * 4);
	ck_assert_uint_ge(mod->scan_ws(16, 0, 1u << 26), (size_t)16 * (1u << 21) * 4);
	ck_assert_uint_ge(mod->scan_ws(8, 100, 1u << 20), mod->scan_ws(8, 0, 1u << 19));
	ck_assert_uint_ge(mod->select_ham_ws(5003), 257 * 4 + 157 * 8);
	size_t w = mod->search_ws(8, 128, 1u << 20, 4096, 512);
	/* hits, logits, the selection and the scan's bitmaps at least */
	ck_assert_uint_ge(w, (size_t)8 * 4096 * 8 + (size_t)8 * 512 * 12 +
				     mod->scan_ws(8, 0, 1u << 20));
	ck_assert_uint_ge(mod->search_ws(8, 128, 2u << 20, 4096, 512), w);
	close_module();
}
END_TEST

/* The NCCL constructor without a device (or with a bad one) refuses. */
START_TEST(test_nccl_refusals)
{
	struct shard_coll *c = NULL;
	char err[KRN_MSGLEN] = "";
	int bad = 4095, rc;

	open_module();
	if (!mod->coll_nccl_new) {
		close_module();
		return;
	}
	ck_assert_int_eq(mod->coll_nccl_new(&c, 0, &bad, err), DKV_E_INVAL);
	ck_assert_int_eq(mod->coll_nccl_new(&c, 1, NULL, err), DKV_E_INVAL);
	rc = mod->coll_nccl_new(&c, 1, &bad, err);
	ck_assert_msg(rc == DKV_E_UNSUPPORTED || rc == DKV_E_INVAL, "rc %d", rc);
	ck_assert_ptr_null(c);
	ck_assert_msg(strstr(err, "NCCL collective") != NULL, "message: %s", err);
	close_module();
}
END_TEST

int main(void)
{
	Suite *s = suite_create("gpu_host");
	TCase *t = tcase_create("host");
	int failed;

	tcase_add_test(t, test_loader_missing);
	tcase_add_test(t, test_loader_module);
	tcase_add_test(t, test_table);
	tcase_add_test(t, test_refusals);
	tcase_add_test(t, test_workspaces);
	tcase_add_test(t, test_nccl_refusals);
	suite_add_tcase(s, t);
	SRunner *sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
