/*
 * session.c - a client session of dashkvd, served by its own thread.  The
 * socket carries control messages; steps come through the submission ring
 * of the session's shared region.  Shared memory is hostile: every
 * descriptor is copied once and validated, q/k/v are copied out of the
 * arena before the engine reads them, and a bad request gets an error
 * completion.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "ipc/proto.h"
#include "ipc/ring.h"
#include "session.h"

#define MAX_SEQS 256
#define CTL_SPARE 8     /* connections beyond max_sessions, for dashkvctl */
#define HELLO_MS 2000
#define IDLE_MS 50
/*
 * Between steps the session thread polls idle_poll_us before it sleeps on
 * the doorbell; past the first SPIN_TIGHT polls it yields the CPU on each,
 * so that another thread on its core runs at once.
 */
#define SPIN_TIGHT 64

struct sseq {
	uint32_t id;
	struct rt_seq *rs;
	struct ipc_geom geom;
};

struct dmn_session {
	struct dmn_server *srv;
	struct dmn_session *next;     /* in srv->list */
	int sock;
	struct ucred cred;
	pthread_t thread;
	atomic_int done;
	uint32_t num;                 /* sessions_total when it started */
	time_t started;
	atomic_uint n_seqs;           /* read by dashkvctl sessions */
	atomic_ullong bytes, steps, rejects;
	atomic_ullong busy_since;     /* ms, CLOCK_MONOTONIC; 0 between steps */
	int heartbeat;                /* the client wants IPC_FEAT_HEARTBEAT */
	uint32_t features;            /* accepted in the handshake */
	int reserved;                 /* holds a slot of max_sessions */
	char *region;
	uint64_t region_size;
	struct ipc_offsets off;
	struct ipc_ring sq, cq;       /* we consume steps, produce completions */
	struct sseq seqs[MAX_SEQS];
	uint32_t next_id;
	void *scratch;
	size_t scratch_size;
	dkv_stats *stats;       /* scratch for session_bytes() */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
	return now_ns() / 1000000;
}

void dmn_heartbeat(struct dmn_server *srv)
{
	uint64_t limit = srv->cfg.step_timeout * 1000, now = now_ms();

	pthread_mutex_lock(&srv->lock);
	for (struct dmn_session *t = srv->list; t; t = t->next) {
		uint64_t since = atomic_load_explicit(&t->busy_since, memory_order_relaxed);

		if (!t->heartbeat || (limit && since && now - since > limit))
			continue;
		atomic_fetch_add_explicit(&t->sq.ctl->alive, 1, memory_order_release);
	}
	pthread_mutex_unlock(&srv->lock);
}

void dmn_reject(struct dmn_server *srv, enum ipc_reject why)
{
	atomic_fetch_add(&srv->rejects, 1);
	atomic_fetch_add(&srv->rejects_by[why], 1);
}

static void session_reject(struct dmn_session *s, int status)
{
	atomic_fetch_add_explicit(&s->rejects, 1, memory_order_relaxed);
	dmn_reject(s->srv, ipc_reject_of(status));
}

/* ---- accounting ---- */

/*
 * Bytes the session's sequences hold (keys, values, codes, summaries).
 * Fits of learned models in progress are charged to the daemon's
 * memory_limit by the engine, not here: a fit must not make steps fail.
 */
static uint64_t session_bytes(struct dmn_session *s)
{
	dkv_stats *st = s->stats;
	uint64_t sum = 0;

	for (int i = 0; i < MAX_SEQS; i++) {
		if (!s->seqs[i].rs)
			continue;
		memset(st, 0, sizeof(*st));
		rt_seq_get_stats(s->seqs[i].rs, st);
		sum += st->bytes_full + st->bytes_codes + st->bytes_summaries;
	}
	return sum;
}

static void update_usage(struct dmn_session *s)
{
	unsigned n = 0;

	for (int i = 0; i < MAX_SEQS; i++)
		n += s->seqs[i].rs != NULL;
	atomic_store_explicit(&s->n_seqs, n, memory_order_relaxed);
	atomic_store_explicit(&s->bytes, session_bytes(s), memory_order_relaxed);
}

/* ---- control messages ---- */

static int reply_error(int sock, uint32_t seq, int status, const char *msg)
{
	struct ipc_error e = { .status = status };

	snprintf(e.msg, sizeof(e.msg), "%s", msg);
	return ipc_send(sock, IPC_ERROR, seq, &e, sizeof(e), -1);
}

/* A failed request: counted, answered. */
static int send_error(struct dmn_session *s, uint32_t seq, int status, const char *msg)
{
	session_reject(s, status);
	return reply_error(s->sock, seq, status, msg);
}

static void bad_message(struct dmn_session *s)
{
	atomic_fetch_add_explicit(&s->rejects, 1, memory_order_relaxed);
	dmn_reject(s->srv, IPC_REJ_MESSAGE);
}

static struct sseq *find_seq(struct dmn_session *s, uint32_t id)
{
	for (int i = 0; i < MAX_SEQS; i++)
		if (s->seqs[i].rs && s->seqs[i].id == id)
			return &s->seqs[i];
	return NULL;
}

/*
 * Open a sequence.  The pointer in cfg.hash_model is the client's and
 * never read here: the model file is `path` (checked absolute) or none.
 */
static int do_open(struct dmn_session *s, uint32_t seq, const dkv_seq_config *wire,
		   const char *path)
{
	char err[KRN_MSGLEN] = "";
	struct sseq *q = NULL;
	struct ipc_open_ok ok = { 0 };
	dkv_seq_config cfg = *wire;
	const dkv_seq_config *r;
	int rc;

	for (int i = 0; i < MAX_SEQS && !q; i++)
		if (!s->seqs[i].rs)
			q = &s->seqs[i];
	if (!q)
		return send_error(s, seq, DKV_E_NOSPACE, "too many sequences in this session");
	cfg.hash_model = path;
	rc = rt_seq_open(s->srv->eng, &cfg, &q->rs, err);
	if (rc) {
		if (path)
			dmn_log(DMN_INFO, "pid %d: hash_model refused: %s", (int)s->cred.pid, err);
		return send_error(s, seq, rc, err);
	}
	r = rt_seq_config(q->rs);
	q->id = ++s->next_id;
	q->geom = (struct ipc_geom){ r->n_layers, r->n_q_heads, r->n_kv_heads,
				     r->head_dim, r->dtype == DKV_F32 ? 4 : 2 };
	ok.seq_id = q->id;
	ok.cfg = *r;
	ok.cfg.hash_model = NULL;
	update_usage(s);
	dmn_log(DMN_DEBUG, "pid %d: opened sequence %u%s%s", (int)s->cred.pid, q->id,
		path ? " with hash model " : "", path ? path : "");
	return ipc_send(s->sock, IPC_OPEN_OK, seq, &ok, sizeof(ok), -1);
}

static int do_open_model(struct dmn_session *s, uint32_t seq, const struct ipc_open_model *m)
{
	char err[KRN_MSGLEN] = "";
	int rc = ipc_check_open_model(m, err);

	if (rc == DKV_E_PROTO) {
		bad_message(s);
		reply_error(s->sock, seq, rc, err);
		return -1; /* an unterminated path: the peer is out of step */
	}
	if (rc)
		return send_error(s, seq, rc, err);
	return do_open(s, seq, &m->cfg, m->path);
}

static int do_ref(struct dmn_session *s, const struct ipc_hdr *h, const struct ipc_ref *m)
{
	char err[KRN_MSGLEN] = "";
	struct sseq *q = find_seq(s, m->seq_id);
	struct ipc_length_ok len;
	dkv_stats st;
	int rc;

	if (!q || !m->seq_id)
		return send_error(s, h->seq, DKV_E_NOTFOUND, "no such sequence in this session");
	switch (h->type) {
	case IPC_CLOSE:
		rt_seq_close(q->rs);
		memset(q, 0, sizeof(*q));
		update_usage(s);
		return ipc_send(s->sock, IPC_OK, h->seq, NULL, 0, -1);
	case IPC_TRAIN:
		rc = rt_seq_train_now(q->rs, err);
		return rc ? send_error(s, h->seq, rc, err) :
			    ipc_send(s->sock, IPC_OK, h->seq, NULL, 0, -1);
	case IPC_LENGTH:
		rc = rt_seq_len(q->rs, m->layer, &len.tokens, err);
		return rc ? send_error(s, h->seq, rc, err) :
			    ipc_send(s->sock, IPC_LENGTH_OK, h->seq, &len, sizeof(len), -1);
	default: /* IPC_STATS */
		memset(&st, 0, sizeof(st));
		rt_seq_get_stats(q->rs, &st);
		return ipc_send(s->sock, IPC_STATS_OK, h->seq, &st, sizeof(st), -1);
	}
}

/* One control message; a negative return ends the session. */
static int control(struct dmn_session *s)
{
	char err[KRN_MSGLEN] = "";
	struct ipc_hdr h;
	union {
		struct ipc_open open;
		struct ipc_open_model open_model;
		struct ipc_ref ref;
		char raw[IPC_MAX_PAYLOAD];
	} p;
	int rc = ipc_recv(s->sock, &h, &p, 1000, NULL, err);

	if (rc == DKV_E_DISCONNECTED)
		return -1;
	if (rc) {
		dmn_log(DMN_WARN, "pid %d: bad message: %s", (int)s->cred.pid,
			rc == DKV_E_PROTO ? err : dkv_strerror(rc));
		bad_message(s);
		reply_error(s->sock, 0, rc == DKV_E_PROTO ? rc : DKV_E_IO, err);
		return -1; /* the stream is out of step: end the session */
	}
	switch (h.type) {
	case IPC_OPEN:
		return do_open(s, h.seq, &p.open.cfg, NULL) ? -1 : 0;
	case IPC_OPEN_MODEL:
		if (!(s->features & IPC_FEAT_MODEL))
			break;
		return do_open_model(s, h.seq, &p.open_model) ? -1 : 0;
	case IPC_CLOSE:
	case IPC_LENGTH:
	case IPC_STATS:
	case IPC_TRAIN:
		if (ipc_check_ref(&p.ref, err))
			return send_error(s, h.seq, DKV_E_NOTFOUND, err) ? -1 : 0;
		return do_ref(s, &h, &p.ref) ? -1 : 0;
	}
	bad_message(s);
	reply_error(s->sock, h.seq, DKV_E_PROTO, "unexpected message type");
	return -1;
}

/* ---- the rings ---- */

static void post(struct dmn_session *s, uint64_t user, int status, const char *msg)
{
	struct ipc_cqe c = { .user = user, .status = status };
	/* truncate long engine messages; the rest of c.msg stays zero */
	size_t len = strnlen(msg, sizeof(c.msg) - 1);

	memcpy(c.msg, msg, len);
	if (!ipc_ring_push(&s->cq, &c)) {
		atomic_fetch_add(&s->srv->dropped, 1);
		return;
	}
	ipc_ring_bell(&s->cq);
}

/* Page-aligned scratch of at least `bytes` (its contents are not kept). */
static void *scratch(struct dmn_session *s, uint64_t bytes)
{
	if (bytes > s->scratch_size) {
		size_t size = (bytes + IPC_PAGE_MASK) & ~(size_t)IPC_PAGE_MASK;
		void *p = aligned_alloc(IPC_PAGE_MASK + 1, size);

		if (!p)
			return NULL;
		free(s->scratch);
		s->scratch = p;
		s->scratch_size = size;
	}
	return s->scratch;
}

/*
 * session_memory_limit, checked before a step against what the session
 * holds plus the step's new keys and values (codes and summaries of the
 * new tokens are not counted in advance).
 */
static int check_session_limit(struct dmn_session *s, uint64_t add, char *err)
{
	uint64_t limit = s->srv->cfg.session_memory_limit, held;

	if (!limit || !add)
		return DKV_OK;
	held = session_bytes(s);
	if (held + add <= limit)
		return DKV_OK;
	return krn_msgf(err, DKV_E_NOSPACE, "session memory limit: %llu bytes held, step adds "
			"%llu, limit %llu", (unsigned long long)held,
			(unsigned long long)add, (unsigned long long)limit);
}

/*
 * The test knob DASHKVD_TEST_STALL (dashkvd(8)): a step on its layer
 * waits as a hung one would, until the knob's time is up or the daemon
 * stops.  Only the daemon's environment sets it, never a client.
 */
static void test_stall(struct dmn_session *s, uint32_t layer)
{
	uint64_t end = now_ms() + s->srv->stall_ms;

	if (!s->srv->stall_ms || layer != s->srv->stall_layer)
		return;
	while (now_ms() < end && !atomic_load(&s->srv->stop))
		usleep(10000);
}

static int step(struct dmn_session *s, const struct ipc_sqe *e, char *err)
{
	struct sseq *q = find_seq(s, e->seq_id);
	const char *arena = s->region + s->off.arena;
	uint64_t qb, kb, qo, ko, vo;
	char *buf;
	int rc;

	if (!q || !e->seq_id)
		return krn_msgf(err, DKV_E_NOTFOUND, "no sequence %u in this session", e->seq_id);
	rc = ipc_check_sqe(e, &q->geom, s->off.arena_size, err);
	if (rc)
		return rc;
	qb = ipc_q_bytes(&q->geom, e->n_q);
	kb = ipc_kv_bytes(&q->geom, e->n_new);
	rc = check_session_limit(s, 2 * kb, err);
	if (rc)
		return rc;
	test_stall(s, e->layer);
	/* each copy keeps its page offset: see ipc_congruent */
	qo = ipc_congruent(0, e->q_off);
	ko = ipc_congruent(qo + qb, e->k_off);
	vo = ipc_congruent(ko + kb, e->v_off);
	buf = scratch(s, vo + kb + 1);
	if (!buf)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	memcpy(buf + qo, arena + e->q_off * !!qb, qb);
	memcpy(buf + ko, arena + e->k_off * !!kb, kb);
	memcpy(buf + vo, arena + e->v_off * !!kb, kb);
	return rt_seq_step(q->rs, e->layer, qb ? buf + qo : NULL, e->n_q,
			   kb ? buf + ko : NULL, kb ? buf + vo : NULL,
			   e->n_new, qb ? s->region + s->off.arena + e->out_off : NULL,
			   err);
}

/* Log a step that ran past step_timeout (its heartbeat stood still). */
static void overran(struct dmn_session *s, const struct ipc_sqe *e)
{
	uint64_t since = atomic_load_explicit(&s->busy_since, memory_order_relaxed);
	uint64_t ms = now_ms() - since, limit = s->srv->cfg.step_timeout * 1000;

	if (limit && ms > limit)
		dmn_log(DMN_WARN, "pid %d: a step on layer %u ran %llu ms, past "
			"step_timeout: its client saw no heartbeat", (int)s->cred.pid,
			e->layer, (unsigned long long)ms);
}

/* Serve one step taken off the submission ring. */
static void serve_step(struct dmn_session *s, const struct ipc_sqe *e)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	atomic_store_explicit(&s->busy_since, now_ms(), memory_order_relaxed);
	rc = step(s, e, err);
	overran(s, e);
	atomic_store_explicit(&s->busy_since, 0, memory_order_relaxed);
	if (rc)
		session_reject(s, rc);
	else
		atomic_fetch_add_explicit(&s->steps, 1, memory_order_relaxed);
	if (e->n_new)
		update_usage(s);
	post(s, e->user, rc, err);
}

/* Serve what the submission ring holds; returns how many. */
static uint32_t serve_ring(struct dmn_session *s)
{
	uint32_t n = ipc_ring_pending(&s->sq);

	if (n > s->sq.entries) {
		atomic_fetch_add(&s->srv->dropped, n);
		dmn_log(DMN_WARN, "pid %d: submission ring overrun", (int)s->cred.pid);
		ipc_ring_skip(&s->sq, n);
		return 0;
	}
	if (n)
		atomic_store_explicit(&s->sq.ctl->cpu, ipc_cpu_hint(), memory_order_relaxed);
	for (uint32_t i = 0; i < n; i++) {
		struct ipc_sqe e;

		ipc_ring_pop(&s->sq, &e);
		serve_step(s, &e);
	}
	return n;
}

/* ---- life cycle ---- */

static int make_region(struct dmn_session *s, uint64_t arena, int *fd_out)
{
	int fd;
	void *r;

	if (ipc_layout((uint32_t)s->srv->cfg.ring_entries, arena, &s->off, &s->region_size))
		return DKV_E_INVAL;
	fd = memfd_create("dashkv-session", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return DKV_E_NOMEM;
	/* sealed: a client that shrinks the file could SIGBUS the daemon */
	if (ftruncate(fd, (off_t)s->region_size) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		goto close_fd;
	r = mmap(NULL, s->region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r == MAP_FAILED)
		goto close_fd;
	s->region = r;
	ipc_ring_init(&s->sq, r, s->off.sq_ctl, s->off.sqes, sizeof(struct ipc_sqe),
		      s->off.entries);
	ipc_ring_init(&s->cq, r, s->off.cq_ctl, s->off.cqes, sizeof(struct ipc_cqe),
		      s->off.entries);
	*fd_out = fd;
	return DKV_OK;
close_fd:
	dmn_log(DMN_ERROR, "shared region of %llu bytes: %m",
		(unsigned long long)s->region_size);
	close(fd);
	return DKV_E_NOMEM;
}

/* ---- dashkvctl: status, sessions, stats, drain ---- */

static void send_status(struct dmn_session *s, uint32_t seq)
{
	struct dmn_server *srv = s->srv;
	struct ipc_status st = {
		.sessions = (uint32_t)atomic_load(&srv->n_active),
		.max_sessions = (uint32_t)srv->cfg.max_sessions,
		.sessions_total = atomic_load(&srv->sessions_total),
		.bytes_used = rt_engine_used(srv->eng),
		.memory_limit = srv->cfg.memory_limit,
		.rejects = atomic_load(&srv->rejects),
		.dropped = atomic_load(&srv->dropped),
		.uptime_s = (uint64_t)(time(NULL) - srv->started),
	};

	ipc_send(s->sock, IPC_STATUS_OK, seq, &st, sizeof(st), -1);
}

static void session_info(const struct dmn_session *t, time_t now,
			 struct ipc_session_info *in)
{
	memset(in, 0, sizeof(*in));
	in->id = t->num;
	in->uid = (uint32_t)t->cred.uid;
	in->gid = (uint32_t)t->cred.gid;
	in->pid = (uint32_t)t->cred.pid;
	in->sequences = atomic_load_explicit(&t->n_seqs, memory_order_relaxed);
	in->bytes = atomic_load_explicit(&t->bytes, memory_order_relaxed);
	in->region_bytes = t->region_size;
	in->steps = atomic_load_explicit(&t->steps, memory_order_relaxed);
	in->rejects = atomic_load_explicit(&t->rejects, memory_order_relaxed);
	in->age_s = (uint64_t)(now - t->started);
}

/*
 * One IPC_SESSION_INFO per session, then IPC_OK.  The list is copied under
 * the lock and sent without it: a reader that stalls must not stall the
 * heartbeat.
 */
static void send_sessions(struct dmn_session *s, uint32_t seq)
{
	struct dmn_server *srv = s->srv;
	struct ipc_session_info *in;
	time_t now = time(NULL);
	size_t n = 0, cap;
	int rc = DKV_OK;

	pthread_mutex_lock(&srv->lock);
	cap = (size_t)atomic_load(&srv->n_active);
	in = calloc(cap ? cap : 1, sizeof(*in));
	for (const struct dmn_session *t = srv->list; in && t && n < cap; t = t->next)
		session_info(t, now, &in[n++]);
	pthread_mutex_unlock(&srv->lock);
	if (!in) {
		reply_error(s->sock, seq, DKV_E_NOMEM, "out of memory");
		return;
	}
	for (size_t i = 0; i < n && !rc; i++)
		rc = ipc_send(s->sock, IPC_SESSION_INFO, seq, &in[i], sizeof(in[i]), -1);
	if (!rc)
		ipc_send(s->sock, IPC_OK, seq, NULL, 0, -1);
	free(in);
}

static void send_srvstats(struct dmn_session *s, uint32_t seq)
{
	struct dmn_server *srv = s->srv;
	struct ipc_srvstats st = {
		.sessions = (uint32_t)atomic_load(&srv->n_active),
		.max_sessions = (uint32_t)srv->cfg.max_sessions,
		.draining = (uint32_t)atomic_load(&srv->draining),
		.sessions_total = atomic_load(&srv->sessions_total),
		.bytes_used = rt_engine_used(srv->eng),
		.memory_limit = srv->cfg.memory_limit,
		.region_bytes = atomic_load(&srv->region_bytes),
		.steps = atomic_load(&srv->steps),
		.dropped = atomic_load(&srv->dropped),
		.uptime_s = (uint64_t)(time(NULL) - srv->started),
	};

	pthread_mutex_lock(&srv->lock);
	for (const struct dmn_session *t = srv->list; t; t = t->next)
		st.steps += atomic_load_explicit(&t->steps, memory_order_relaxed);
	pthread_mutex_unlock(&srv->lock);
	for (int i = 0; i < IPC_REJ_SLOTS; i++)
		st.rejects[i] = atomic_load(&srv->rejects_by[i]);
	ipc_send(s->sock, IPC_SRVSTATS_OK, seq, &st, sizeof(st), -1);
}

/* A dashkvctl request instead of a hello; 1 if h was one. */
static int control_request(struct dmn_session *s, const struct ipc_hdr *h)
{
	switch (h->type) {
	case IPC_STATUS:
		send_status(s, h->seq);
		return 1;
	case IPC_SESSIONS:
		send_sessions(s, h->seq);
		return 1;
	case IPC_SRVSTATS:
		send_srvstats(s, h->seq);
		return 1;
	case IPC_DRAIN:
		if (s->cred.uid != 0 && s->cred.uid != s->srv->self_uid) {
			dmn_reject(s->srv, IPC_REJ_PERM);
			reply_error(s->sock, h->seq, DKV_E_PERM, "only root or the "
				    "daemon's own user may drain it");
			return 1;
		}
		if (!atomic_exchange(&s->srv->draining, 1))
			dmn_log(DMN_INFO, "draining at the request of uid %d: no new "
				"sessions, exit after the last one", (int)s->cred.uid);
		ipc_send(s->sock, IPC_OK, h->seq, NULL, 0, -1);
		return 1;
	}
	return 0;
}

/* Take one of the max_sessions slots (counted in n_active); 0 if none. */
static int reserve(struct dmn_session *s)
{
	struct dmn_server *srv = s->srv;

	if ((uint64_t)atomic_fetch_add(&srv->n_active, 1) < srv->cfg.max_sessions)
		return s->reserved = 1;
	atomic_fetch_sub(&srv->n_active, 1);
	return 0;
}

static int handshake(struct dmn_session *s)
{
	char err[KRN_MSGLEN] = "";
	struct ipc_hdr h;
	union {
		struct ipc_hello hello;
		char raw[IPC_MAX_PAYLOAD];
	} p;
	struct ipc_accept a = { .features = IPC_FEAT_RING };
	enum ipc_reject why = IPC_REJ_HANDSHAKE;
	int fd, rc;

	rc = ipc_recv(s->sock, &h, &p, HELLO_MS, NULL, err);
	if (rc == DKV_E_PROTO)
		why = IPC_REJ_MESSAGE;
	if (rc == DKV_OK && control_request(s, &h))
		return -1;
	if (rc == DKV_OK && atomic_load(&s->srv->draining)) {
		rc = krn_msgf(err, DKV_E_DISCONNECTED, "the daemon is "
			      "draining and takes no new sessions");
		why = IPC_REJ_BUSY;
	}
	if (rc == DKV_OK && h.type != IPC_HELLO)
		rc = krn_msgf(err, DKV_E_PROTO, "expected hello");
	if (rc == DKV_OK)
		rc = ipc_check_hello(&p.hello, err);
	if (rc == DKV_OK && p.hello.arena_size > s->srv->cfg.max_arena)
		rc = krn_msgf(err, DKV_E_NOSPACE, "arena of %llu bytes "
			      "above max_arena", (unsigned long long)p.hello.arena_size);
	if (rc == DKV_OK && !reserve(s)) {
		rc = krn_msgf(err, DKV_E_NOSPACE, "too many sessions "
			      "(max_sessions %llu)", (unsigned long long)s->srv->cfg.max_sessions);
		why = IPC_REJ_BUSY;
	}
	if (rc == DKV_OK)
		rc = make_region(s, p.hello.arena_size, &fd);
	if (rc) {
		if (err[0] || rc != DKV_E_DISCONNECTED) {
			dmn_reject(s->srv, why);
			dmn_log(DMN_WARN, "pid %d: handshake: %s", (int)s->cred.pid,
				err[0] ? err : dkv_strerror(rc));
			reply_error(s->sock, 0, rc, err[0] ? err : dkv_strerror(rc));
		}
		return -1;
	}
	s->heartbeat = !!(p.hello.features & IPC_FEAT_HEARTBEAT);
	a.features |= p.hello.features & (IPC_FEAT_HEARTBEAT | IPC_FEAT_MODEL);
	s->features = a.features;
	a.region_size = s->region_size;
	a.off = s->off;
	rc = ipc_send(s->sock, IPC_ACCEPT, h.seq, &a, sizeof(a), fd);
	close(fd);
	return rc ? -1 : 0;
}

/* 1 while the client said it waits on the CPU this thread runs on. */
static int client_here(const struct dmn_session *s)
{
	uint32_t there = atomic_load_explicit(&s->cq.ctl->cpu, memory_order_relaxed);

	return there && there == ipc_cpu_hint();
}

/*
 * Wait for a submission (0) or a control message (1).  Spin a while
 * first, unless the client shares this CPU: its next step cannot come
 * while we hold the CPU, and its doorbell reaches a sleeper at once.
 */
static int idle_wait(struct dmn_session *s)
{
	struct pollfd p = { .fd = s->sock, .events = POLLIN };
	uint64_t end = now_ns() + s->srv->cfg.idle_poll_us * 1000;
	uint32_t bell;

	for (int i = 0;; i++) {
		if (ipc_ring_pending(&s->sq))
			return 0;
		if (i < SPIN_TIGHT)
			continue;
		if (now_ns() > end || client_here(s))
			break;
		sched_yield();
	}
	/* before the last look at the socket: see ipc_ring_doorbell */
	bell = ipc_ring_doorbell(&s->sq);
	if (poll(&p, 1, 0) > 0)
		return 1;
	ipc_ring_sleep(&s->sq, bell, IDLE_MS);
	/* woken by a step: serve it first, the socket waits for the next idle */
	if (ipc_ring_pending(&s->sq))
		return 0;
	return poll(&p, 1, 0) > 0;
}

static void serve(struct dmn_session *s)
{
	while (!atomic_load(&s->srv->stop)) {
		if (serve_ring(s))
			continue;
		if (idle_wait(s) && control(s) < 0)
			break;
	}
}

static void close_all(struct dmn_session *s)
{
	for (int i = 0; i < MAX_SEQS; i++)
		if (s->seqs[i].rs)
			rt_seq_close(s->seqs[i].rs);
}

static void enlist(struct dmn_session *s)
{
	struct dmn_server *srv = s->srv;

	pthread_mutex_lock(&srv->lock);
	s->num = (uint32_t)atomic_fetch_add(&srv->sessions_total, 1) + 1;
	s->started = time(NULL);
	s->next = srv->list;
	srv->list = s;
	atomic_fetch_add(&srv->region_bytes, s->region_size);
	pthread_mutex_unlock(&srv->lock);
}

/*
 * Called once the sequences are closed and before the region is unmapped
 * (dmn_heartbeat writes to it under the lock).  The session still counts
 * in sessions and region_bytes until release(), after the unmap: a
 * dashkvctl that sees it gone sees its memory gone too.
 */
static void delist(struct dmn_session *s)
{
	struct dmn_server *srv = s->srv;
	struct dmn_session **p;

	pthread_mutex_lock(&srv->lock);
	for (p = &srv->list; *p && *p != s; p = &(*p)->next)
		;
	if (*p)
		*p = s->next;
	atomic_fetch_add(&srv->steps, atomic_load(&s->steps));
	pthread_mutex_unlock(&srv->lock);
}

/* After the unmap: the region's bytes and the max_sessions slot go back. */
static void release(struct dmn_session *s, int served)
{
	if (served)
		atomic_fetch_sub(&s->srv->region_bytes, s->region_size);
	if (s->reserved)
		atomic_fetch_sub(&s->srv->n_active, 1);
	s->reserved = 0;
}

static void *session_main(void *arg)
{
	struct dmn_session *s = arg;
	int served = 0;

	if (handshake(s) == 0) {
		served = 1;
		enlist(s);
		dmn_log(DMN_INFO, "session %u of uid %d pid %d started", s->num,
			(int)s->cred.uid, (int)s->cred.pid);
		serve(s);
		dmn_log(DMN_INFO, "session %u of pid %d ended", s->num,
			(int)s->cred.pid);
	}
	close_all(s);
	if (served)
		delist(s);
	if (s->region)
		munmap(s->region, s->region_size);
	release(s, served);
	free(s->scratch);
	free(s->stats);
	close(s->sock);
	s->sock = -1;
	atomic_fetch_sub(&s->srv->n_sessions, 1);
	atomic_store(&s->done, 1);
	return NULL;
}

static int refuse(struct dmn_server *srv, int sock, enum ipc_reject why,
		  int status, const char *msg)
{
	dmn_reject(srv, why);
	reply_error(sock, 0, status, msg);
	close(sock);
	return -1;
}

int dmn_session_start(struct dmn_server *srv, int sock, struct dmn_session **out)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct dmn_session *s;

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		dmn_log(DMN_WARN, "SO_PEERCRED: %m");
		return refuse(srv, sock, IPC_REJ_PERM, DKV_E_PERM,
			      "peer credentials unavailable");
	}
	if (!dmn_config_allows(&srv->cfg, cred.uid, cred.gid, srv->self_uid)) {
		dmn_log(DMN_WARN, "refused uid %d gid %d pid %d", (int)cred.uid,
			(int)cred.gid, (int)cred.pid);
		return refuse(srv, sock, IPC_REJ_PERM, DKV_E_PERM,
			      "this user or group is not allowed");
	}
	if ((uint64_t)atomic_load(&srv->n_sessions) >= srv->cfg.max_sessions + CTL_SPARE)
		return refuse(srv, sock, IPC_REJ_BUSY, DKV_E_NOSPACE, "too many connections");
	s = calloc(1, sizeof(*s));
	if (s)
		s->stats = malloc(sizeof(*s->stats));
	if (!s || !s->stats) {
		free(s);
		return refuse(srv, sock, IPC_REJ_OTHER, DKV_E_NOMEM, "out of memory");
	}
	s->srv = srv;
	s->sock = sock;
	s->cred = cred;
	atomic_fetch_add(&srv->n_sessions, 1);
	if (pthread_create(&s->thread, NULL, session_main, s)) {
		atomic_fetch_sub(&srv->n_sessions, 1);
		free(s->stats);
		free(s);
		return refuse(srv, sock, IPC_REJ_OTHER, DKV_E_NOMEM,
			      "cannot start a session thread");
	}
	*out = s;
	return 0;
}

int dmn_session_done(const struct dmn_session *s)
{
	return atomic_load(&s->done);
}

void dmn_session_free(struct dmn_session *s)
{
	pthread_join(s->thread, NULL);
	free(s);
}
