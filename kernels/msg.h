/*
 * msg.h - error messages: one buffer size and one way to write them.
 *
 * A function that can fail takes `char *err` as its last parameter: a
 * buffer of KRN_MSGLEN bytes, or NULL when the caller wants no message.
 * On failure it returns its error code and writes the reason there, both
 * at once with krn_msgf:
 *
 *	return krn_msgf(err, DKV_E_INVAL, "layer %u out of range", layer);
 *
 * Every buffer that receives a message is char [KRN_MSGLEN], so any of
 * them can be handed to any such function; a longer message is cut.
 * Header-only: every layer and the dlopen'ed GPU module use it without
 * linking anything.
 */
#ifndef DKV_KRN_MSG_H
#define DKV_KRN_MSG_H

#include <stdarg.h>
#include <stdio.h>

#define KRN_MSGLEN 256

/* Format a message into msg (KRN_MSGLEN bytes; nothing when NULL), return code. */
static inline int krn_msgf(char *msg, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static inline int krn_msgf(char *msg, int code, const char *fmt, ...)
{
	va_list ap;

	if (msg) {
		va_start(ap, fmt);
		vsnprintf(msg, KRN_MSGLEN, fmt, ap);
		va_end(ap);
	}
	return code;
}

#endif
