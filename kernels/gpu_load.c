/*
 * gpu_load.c - find and open the GPU module (see krn_gpu.h).
 *
 * The module is the only object that links libcudart (and libnccl); it is
 * opened with dlopen, so the client library and the daemon start and
 * run on machines without a GPU or without the CUDA driver.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "dashkv.h"
#include "krn_gpu.h"

#ifndef DKV_PKGLIBDIR
#define DKV_PKGLIBDIR "/usr/local/lib/dashkv"
#endif

static pthread_mutex_t gpu_lock = PTHREAD_MUTEX_INITIALIZER;
static const struct krn_gpu_ops *gpu_ops;

static const char *module_path(const char *path)
{
	const char *env;

	if (path)
		return path;
	env = getenv("DASHKV_CUDA_MODULE");
	if (env && *env)
		return env;
	return DKV_PKGLIBDIR "/dashkv-cuda.so";
}

/* Open the module and check its table; the caller holds gpu_lock. */
static int open_module(const char *path, const struct krn_gpu_ops **out, char *err)
{
	const struct krn_gpu_ops *ops;
	void *h;
	int ndev = 0, rc;

	h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return krn_msgf(err, DKV_E_UNSUPPORTED, "GPU module: cannot load the module: %s",
				dlerror());
	ops = dlsym(h, KRN_GPU_SYM);
	if (!ops) {
		rc = krn_msgf(err, DKV_E_PROTO, "GPU module: no table " KRN_GPU_SYM " in: %s",
			      path);
		goto close_module;
	}
	if (ops->abi != KRN_GPU_ABI) {
		rc = krn_msgf(err, DKV_E_PROTO, "GPU module: ABI version mismatch: %s", path);
		goto close_module;
	}
	rc = ops->probe(&ndev, err);
	if (rc)
		goto close_module;
	*out = ops;
	return DKV_OK;

close_module:
	dlclose(h);
	return rc;
}

int krn_gpu_load(const char *path, const struct krn_gpu_ops **out, char *err)
{
	const struct krn_gpu_ops *ops = NULL;
	int rc = DKV_OK;

	pthread_mutex_lock(&gpu_lock);
	if (!gpu_ops)
		rc = open_module(module_path(path), &gpu_ops, err);
	ops = gpu_ops;
	pthread_mutex_unlock(&gpu_lock);
	if (rc)
		return rc;
	*out = ops;
	return DKV_OK;
}
