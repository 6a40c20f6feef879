/*
 * log.c - log lines to stderr: "dashkvd[pid]: level: message".  A message
 * may quote what a client sent (a path, say): its control characters and
 * backslashes are escaped, so that nothing it holds can end a line early
 * and forge the next one.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

#define LOG_LINE 1024

static int max_level = DMN_INFO;
static const char *const names[] = { "error", "warning", "info", "debug" };

void dmn_log_level(int level)
{
	max_level = level;
}

/* src into dst (4 * LOG_LINE bytes): \n, \t, \\ and \xNN for the other
 * control characters; everything else as it is. */
static void escape(char *dst, const char *src)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)src;

	for (; *s; s++) {
		if (*s == '\n' || *s == '\t' || *s == '\\') {
			*dst++ = '\\';
			*dst++ = *s == '\n' ? 'n' : *s == '\t' ? 't' : '\\';
		} else if (*s < 0x20 || *s == 0x7f) {
			*dst++ = '\\';
			*dst++ = 'x';
			*dst++ = hex[*s >> 4];
			*dst++ = hex[*s & 15];
		} else {
			*dst++ = (char)*s;
		}
	}
	*dst = '\0';
}

void dmn_log(int level, const char *fmt, ...)
{
	char line[LOG_LINE], safe[4 * LOG_LINE];
	int saved = errno;
	va_list ap;

	if (level > max_level)
		return;
	va_start(ap, fmt);
	errno = saved; /* for %m */
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	escape(safe, line);
	fprintf(stderr, "dashkvd[%ld]: %s: %s\n", (long)getpid(), names[level], safe);
	errno = saved;
}
