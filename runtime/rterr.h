/*
 * rterr.h - the runtime's error-message helper.
 */
#ifndef DKV_RT_ERR_H
#define DKV_RT_ERR_H

#include <stddef.h>

/* Format a message into err (errlen bytes; nothing when NULL), return code. */
int rt_errf(char *err, size_t errlen, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
