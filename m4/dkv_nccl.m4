# DKV_CHECK_NCCL: --with-nccl=DIR|yes|no; looked for only when CUDA was found.
AC_DEFUN([DKV_CHECK_NCCL], [
  AC_ARG_WITH([nccl],
    [AS_HELP_STRING([--with-nccl=DIR], [NCCL (default: guess, next to CUDA)])],
    [], [with_nccl=guess])
  dkv_have_nccl=no
  NCCL_CPPFLAGS=
  NCCL_LDFLAGS=
  NCCL_LIBS=
  AS_IF([test "x$with_nccl" != xno && test "x$dkv_have_cuda" = xyes], [
    AS_CASE([$with_nccl],
      [yes|guess], [dkv_nccl_dirs="$CUDA_DIR /usr"],
      [dkv_nccl_dirs="$with_nccl"])
    for dkv_d in $dkv_nccl_dirs; do
      dkv_save_CPPFLAGS=$CPPFLAGS; dkv_save_LDFLAGS=$LDFLAGS; dkv_save_LIBS=$LIBS
      dkv_nlib=
      for dkv_l in $dkv_d/lib64 $dkv_d/lib; do
        test -e $dkv_l/libnccl.so && dkv_nlib=$dkv_l && break
      done
      test -n "$dkv_nlib" || dkv_nlib=$dkv_d/lib
      CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS -I$dkv_d/include"
      LDFLAGS="$LDFLAGS $CUDA_LDFLAGS -L$dkv_nlib"
      AS_UNSET([ac_cv_header_nccl_h])
      AS_UNSET([ac_cv_lib_nccl_ncclCommInitRank])
      AC_CHECK_HEADER([nccl.h],
        [AC_CHECK_LIB([nccl], [ncclCommInitRank], [
          dkv_have_nccl=yes
          NCCL_CPPFLAGS="-I$dkv_d/include"
          NCCL_LDFLAGS="-L$dkv_nlib -Wl,-rpath,$dkv_nlib"
          NCCL_LIBS="-lnccl"], [], [$CUDA_LIBS])])
      CPPFLAGS=$dkv_save_CPPFLAGS; LDFLAGS=$dkv_save_LDFLAGS; LIBS=$dkv_save_LIBS
      test "x$dkv_have_nccl" = xyes && break
    done
  ])
  AS_IF([test "x$dkv_have_nccl" != xyes && test "x$with_nccl" != xguess && test "x$with_nccl" != xno],
    [AC_MSG_ERROR([NCCL requested but not found (it also needs CUDA)])])
  AS_IF([test "x$dkv_have_nccl" = xyes], [AC_DEFINE([HAVE_NCCL], [1], [NCCL available])])
  AM_CONDITIONAL([HAVE_NCCL], [test "x$dkv_have_nccl" = xyes])
  AC_SUBST([NCCL_CPPFLAGS])
  AC_SUBST([NCCL_LDFLAGS])
  AC_SUBST([NCCL_LIBS])
])
