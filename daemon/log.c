/* log.c - log lines to stderr: "dashkvd[pid]: level: message". */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

static int max_level = DMN_INFO;
static const char *const names[] = { "error", "warning", "info", "debug" };

void dmn_log_level(int level)
{
	max_level = level;
}

void dmn_log(int level, const char *fmt, ...)
{
	char line[1024];
	int saved = errno;
	va_list ap;

	if (level > max_level)
		return;
	va_start(ap, fmt);
	errno = saved; /* for %m */
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "dashkvd[%ld]: %s: %s\n", (long)getpid(), names[level], line);
	errno = saved;
}
