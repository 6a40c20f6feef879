# DKV_CHECK_NUMA: libnuma headers and library (required).
AC_DEFUN([DKV_CHECK_NUMA], [
  AC_CHECK_HEADER([numa.h], [],
    [AC_MSG_ERROR([numa.h not found (Debian: apt-get install libnuma-dev)])])
  dkv_save_LIBS=$LIBS
  AC_CHECK_LIB([numa], [numa_available], [NUMA_LIBS=-lnuma],
    [AC_MSG_ERROR([libnuma not found (Debian: apt-get install libnuma-dev)])])
  LIBS=$dkv_save_LIBS
  AC_SUBST([NUMA_LIBS])
])
