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
#include "ipc/proto.h"

struct dmn_session;

struct dmn_server {
	struct rt_engine *eng;
	struct dmn_config cfg;
	atomic_int stop;             /* sessions end when set */
	atomic_int draining;         /* no new sessions; exit when none left */
	atomic_int n_sessions;       /* connections, control ones included */
	atomic_int n_active;         /* sessions past their handshake */
	atomic_ullong rejects;       /* bad requests and refused peers */
	atomic_ullong rejects_by[IPC_REJ_SLOTS]; /* the same by reason */
	atomic_ullong dropped;       /* ring entries dropped */
	atomic_ullong sessions_total;
	atomic_ullong steps;
	atomic_ullong region_bytes;  /* shared regions mapped */
	pthread_mutex_t lock;        /* guards list */
	struct dmn_session *list;    /* the active sessions */
	uid_t self_uid;
	time_t started;
	/* DASHKVD_TEST_STALL (tests only): steps on stall_layer wait stall_ms */
	uint32_t stall_layer, stall_ms;
};

/*
 * Bump the heartbeat of every session whose step (if any) has run less
 * than step_timeout; the main loop calls it every IPC_HEARTBEAT_MS.
 */
void dmn_heartbeat(struct dmn_server *srv);
/* Count a rejected request. */
void dmn_reject(struct dmn_server *srv, enum ipc_reject why);

/* Check the peer of sock and start its session thread; 0 or -1. */
int dmn_session_start(struct dmn_server *srv, int sock, struct dmn_session **out);
/* 1 once the session's thread has ended. */
int dmn_session_done(const struct dmn_session *s);
/* Join the thread and free the session. */
void dmn_session_free(struct dmn_session *s);

#endif
