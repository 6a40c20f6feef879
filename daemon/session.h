/* session.h - one client of dashkvd: handshake, shared rings, sequences. */
#ifndef DMN_SESSION_H
#define DMN_SESSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "conf.h"
#include "engine.h"

struct dmn_server {
	struct rt_engine *eng;
	struct dmn_config cfg;
	atomic_int stop;             /* sessions end when set */
	atomic_int n_sessions;
	atomic_ullong rejects;       /* bad requests and refused peers */
	atomic_ullong dropped;       /* ring entries dropped */
	atomic_ullong sessions_total;
	uid_t self_uid;
	time_t started;
};

struct dmn_session;

/* Check the peer of sock and start its session thread; 0 or -1. */
int dmn_session_start(struct dmn_server *srv, int sock, struct dmn_session **out);
/* 1 once the session's thread has ended. */
int dmn_session_done(const struct dmn_session *s);
/* Join the thread and free the session. */
void dmn_session_free(struct dmn_session *s);

#endif
