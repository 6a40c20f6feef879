/* log.h - dashkvd's log to stderr with levels; sd_notify. */
#ifndef DMN_LOG_H
#define DMN_LOG_H

enum dmn_level { DMN_ERROR, DMN_WARN, DMN_INFO, DMN_DEBUG };

void dmn_log_level(int level);
void dmn_log(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Send a state line to $NOTIFY_SOCKET (no-op when unset). */
void dmn_notify(const char *state);

#endif
