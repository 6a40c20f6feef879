# AX_PTHREAD_SIMPLE: find -pthread support (Linux only target).
AC_DEFUN([AX_PTHREAD_SIMPLE], [
  AC_CACHE_CHECK([for -pthread], [dkv_cv_pthread], [
    dkv_save_CFLAGS=$CFLAGS; CFLAGS="$CFLAGS -pthread"
    AC_LINK_IFELSE([AC_LANG_PROGRAM([[#include <pthread.h>]],
      [[pthread_t t; pthread_create(&t, 0, 0, 0);]])],
      [dkv_cv_pthread=yes], [dkv_cv_pthread=no])
    CFLAGS=$dkv_save_CFLAGS])
  AS_IF([test "x$dkv_cv_pthread" = xyes], [PTHREAD_CFLAGS=-pthread; PTHREAD_LIBS=-pthread],
        [AC_MSG_ERROR([POSIX threads are required])])
  AC_SUBST([PTHREAD_CFLAGS])
  AC_SUBST([PTHREAD_LIBS])
])
