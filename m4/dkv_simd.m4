# DKV_CHECK_CFLAG(FLAGS, ACTION-IF-OK, ACTION-IF-NOT)
AC_DEFUN([DKV_CHECK_CFLAG], [
  dkv_save_CFLAGS=$CFLAGS
  CFLAGS="$CFLAGS $1"
  AC_MSG_CHECKING([whether $CC accepts $1])
  AC_COMPILE_IFELSE([AC_LANG_PROGRAM([[#include <immintrin.h>]], [[return 0;]])],
    [AC_MSG_RESULT([yes]); $2], [AC_MSG_RESULT([no]); $3])
  CFLAGS=$dkv_save_CFLAGS
])

# DKV_CHECK_SIMD: flags for the AVX2 and AVX-512 kernel libraries (x86-64).
# Each variant is compiled only into its own library; the CPU is asked at
# run time which one may run.
AC_DEFUN([DKV_CHECK_SIMD], [
  AC_ARG_ENABLE([simd],
    [AS_HELP_STRING([--disable-simd], [build only the scalar reference kernels])],
    [], [enable_simd=yes])
  dkv_have_avx2=no
  dkv_have_avx512=no
  AVX2_CFLAGS="-mavx2 -mfma -mf16c -mpopcnt"
  AVX512_CFLAGS="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq -mavx512bitalg -mfma -mf16c -mpopcnt"
  AS_CASE([$host_cpu], [x86_64|amd64], [], [enable_simd=no])
  AS_IF([test "x$enable_simd" = xyes], [
    DKV_CHECK_CFLAG([$AVX2_CFLAGS], [dkv_have_avx2=yes])
    DKV_CHECK_CFLAG([$AVX512_CFLAGS], [dkv_have_avx512=yes])
  ])
  AS_IF([test "x$dkv_have_avx2" = xyes], [AC_DEFINE([DKV_HAVE_AVX2], [1], [AVX2 kernels built])])
  AS_IF([test "x$dkv_have_avx512" = xyes], [AC_DEFINE([DKV_HAVE_AVX512], [1], [AVX-512 kernels built])])
  AM_CONDITIONAL([DKV_AVX2], [test "x$dkv_have_avx2" = xyes])
  AM_CONDITIONAL([DKV_AVX512], [test "x$dkv_have_avx512" = xyes])
  AC_SUBST([AVX2_CFLAGS])
  AC_SUBST([AVX512_CFLAGS])
])
