/* config.h - dashkv.conf: one table drives parsing, -t, -T and reload. */
#ifndef DMN_CONF_H
#define DMN_CONF_H

#include <stdint.h>
#include <stdio.h>

#include "msg.h"

#define DMN_DEF_CONFIG "/etc/dashkv/dashkv.conf"
#define DMN_DEF_SOCKET "/run/dashkv/dashkvd.sock"
#define DMN_MAX_IDS 64

struct dmn_config {
	char socket[108];
	uint64_t socket_mode;
	char allow_users[512];      /* names or numeric uids, comma-separated */
	char allow_groups[512];
	char user[64];              /* run as this user after binding; "" = stay */
	char shards[128];           /* plan spec; "" = $DASHKV_SHARDS, else auto */
	uint64_t memory_limit;      /* bytes, 0 = none */
	uint64_t session_memory_limit;
	uint64_t max_sessions;
	uint64_t workers;
	uint64_t log_level;         /* enum dmn_level */
	uint64_t ring_entries;
	uint64_t max_arena;         /* bytes of shared arena per session */
	uint64_t step_timeout;      /* s a step may run before its client
				       stops seeing a heartbeat; 0 = none */
	uint64_t idle_poll_us;      /* a session thread polls its ring this
				       long after a step before it sleeps */
};

void dmn_config_defaults(struct dmn_config *c);
/*
 * Read path into c (defaults first).  A missing file is an error unless
 * missing_ok.  On error returns -1 with "file:line: reason" in err.
 */
int dmn_config_load(const char *path, int missing_ok, struct dmn_config *c, char *err);
/* Parse one "name value" line (already trimmed); 0 or -1 with err. */
int dmn_config_line(struct dmn_config *c, const char *line, char *err);
/* Apply the reloadable settings of next to cur; log the others ignored. */
void dmn_config_reload(struct dmn_config *cur, const struct dmn_config *next);
void dmn_config_print(const struct dmn_config *c, FILE *f);
/* 1 if uid/gid are allowed by the lists (empty lists: only self_uid). */
int dmn_config_allows(const struct dmn_config *c, uint32_t uid, uint32_t gid,
		      uint32_t self_uid);

#endif
