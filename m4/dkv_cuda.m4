# DKV_CHECK_CUDA: --with-cuda=DIR|yes|no (default: guess /usr/local/cuda).
# HAVE_CUDA: the CUDA runtime is callable from C (cuda_runtime.h, libcudart).
# HAVE_NVCC: .cu files can be compiled.  Fails only when asked for explicitly.
AC_DEFUN([DKV_CHECK_CUDA], [
  AC_ARG_WITH([cuda],
    [AS_HELP_STRING([--with-cuda=DIR], [CUDA toolkit (default: guess /usr/local/cuda)])],
    [], [with_cuda=guess])
  dkv_have_cuda=no
  dkv_have_nvcc=no
  CUDA_DIR=
  CUDA_CPPFLAGS=
  CUDA_LDFLAGS=
  CUDA_LIBS=
  NVCC=
  AS_CASE([$with_cuda],
    [no], [],
    [yes|guess], [dkv_cuda_dirs="/usr/local/cuda /usr"],
    [dkv_cuda_dirs="$with_cuda"])
  AS_IF([test "x$with_cuda" != xno], [
    for dkv_d in $dkv_cuda_dirs; do
      dkv_save_CPPFLAGS=$CPPFLAGS; dkv_save_LDFLAGS=$LDFLAGS; dkv_save_LIBS=$LIBS
      dkv_lib=$dkv_d/lib64
      test -d "$dkv_lib" || dkv_lib=$dkv_d/lib
      CPPFLAGS="$CPPFLAGS -I$dkv_d/include"
      LDFLAGS="$LDFLAGS -L$dkv_lib"
      AS_UNSET([ac_cv_header_cuda_runtime_h])
      AS_UNSET([ac_cv_lib_cudart_cudaGetDeviceCount])
      AC_CHECK_HEADER([cuda_runtime.h],
        [AC_CHECK_LIB([cudart], [cudaGetDeviceCount], [
          dkv_have_cuda=yes
          CUDA_DIR=$dkv_d
          CUDA_CPPFLAGS="-I$dkv_d/include"
          CUDA_LDFLAGS="-L$dkv_lib -Wl,-rpath,$dkv_lib"
          CUDA_LIBS="-lcudart"])])
      CPPFLAGS=$dkv_save_CPPFLAGS; LDFLAGS=$dkv_save_LDFLAGS; LIBS=$dkv_save_LIBS
      test "x$dkv_have_cuda" = xyes && break
    done
    AS_IF([test "x$dkv_have_cuda" = xyes], [
      AC_PATH_PROG([NVCC], [nvcc], [], [$CUDA_DIR/bin$PATH_SEPARATOR$PATH])
      AS_IF([test -n "$NVCC"], [dkv_have_nvcc=yes])])
    AS_IF([test "x$dkv_have_cuda" != xyes && test "x$with_cuda" != xguess],
      [AC_MSG_ERROR([CUDA requested but cuda_runtime.h/libcudart not found in $dkv_cuda_dirs])])
  ])
  AS_IF([test "x$dkv_have_cuda" = xyes], [AC_DEFINE([HAVE_CUDA], [1], [CUDA runtime available])])
  AS_IF([test "x$dkv_have_nvcc" = xyes], [AC_DEFINE([HAVE_NVCC], [1], [nvcc can build .cu kernels])])
  AM_CONDITIONAL([HAVE_CUDA], [test "x$dkv_have_cuda" = xyes])
  AM_CONDITIONAL([HAVE_NVCC], [test "x$dkv_have_nvcc" = xyes])
  AC_ARG_VAR([NVCC], [CUDA compiler])
  AC_ARG_VAR([NVCCFLAGS], [extra flags for nvcc])
  AC_SUBST([CUDA_DIR])
  AC_SUBST([CUDA_CPPFLAGS])
  AC_SUBST([CUDA_LDFLAGS])
  AC_SUBST([CUDA_LIBS])
  dnl the GPU module is opened with dlopen (kernels/gpu_load.c)
  dkv_save_LIBS=$LIBS
  DLOPEN_LIBS=
  AC_SEARCH_LIBS([dlopen], [dl],
    [AS_IF([test "x$ac_cv_search_dlopen" != "xnone required"], [DLOPEN_LIBS=$ac_cv_search_dlopen])],
    [AC_MSG_ERROR([dlopen is required (the GPU module is loaded with it)])])
  LIBS=$dkv_save_LIBS
  AC_SUBST([DLOPEN_LIBS])
])
