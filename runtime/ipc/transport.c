/*
 * transport.c - libdashkv-client over dashkvd: a Unix socket for control
 * messages, a shared region (memfd from the daemon) with a submission ring,
 * a completion ring and a data arena for steps.  A call that waits notices
 * a dead daemon by the socket's EOF within IPC_POLL_MS, and a hung one by
 * its heartbeat (IPC_FEAT_HEARTBEAT) standing still for hung_ms.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"
#include "transport.h"

#define IPC_POLL_MS 50
#define IPC_CTL_TIMEOUT_MS 30000
/*
 * Spin (yielding) this long before sleeping on a completion; default, or
 * DASHKV_IPC_SPIN_US.  The spin adapts: when the last step of the same
 * shape outlasted the spin, the next one sleeps at once, for spinning
 * through a long step only steals the CPU the daemon needs.  1 ms covers
 * a decode step of a small context: a futex wake-up instead costs 20 to
 * 40 us on a busy machine (dashkv-bench ipc, N = 1K: 36 us added at a
 * 200 us spin, under 10 us at 1 ms or more).
 */
#define IPC_SPIN_NS 1000000
#define IPC_DEF_ARENA (64ull << 20)
#define IPC_HUNG_MS 2000 /* default; DASHKV_IPC_TIMEOUT_MS */

struct ipc_conn {
	int sock;
	int dead;
	uint32_t seq;           /* request numbers */
	pthread_mutex_t lock;
	void *region;
	uint64_t region_size;
	struct ipc_offsets off;
	struct ipc_ring sq, cq; /* we produce steps, consume completions */
	char *arena;
	uint32_t features;      /* accepted by the daemon */
	uint32_t last_alive;    /* heartbeat seen last, and when (ns) */
	uint64_t alive_at;
	uint64_t hung_ns;       /* no heartbeat this long: DKV_E_TIMEOUT */
	uint64_t spin_ns;       /* before sleeping on a completion */
	uint32_t last_n_q, last_n_new;  /* shape of the last step */
	uint64_t last_ns;       /* and its submit-to-completion time */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Start watching the heartbeat before a wait. */
static void watch(struct ipc_conn *c)
{
	if (!(c->features & IPC_FEAT_HEARTBEAT))
		return;
	c->last_alive = atomic_load_explicit(&c->sq.ctl->alive, memory_order_acquire);
	c->alive_at = now_ns();
}

/* 1 (and the connection unusable) if the heartbeat stood still too long. */
static int daemon_hung(struct ipc_conn *c)
{
	uint32_t a;
	uint64_t t;

	if (!(c->features & IPC_FEAT_HEARTBEAT))
		return 0;
	a = atomic_load_explicit(&c->sq.ctl->alive, memory_order_acquire);
	t = now_ns();
	if (a != c->last_alive) {
		c->last_alive = a;
		c->alive_at = t;
		return 0;
	}
	if (t - c->alive_at < c->hung_ns)
		return 0;
	/* give up the session: the daemon ends it once it notices */
	c->dead = 1;
	shutdown(c->sock, SHUT_RDWR);
	return 1;
}

static int hung(char *err, const struct ipc_conn *c)
{
	return krn_msgf(err, DKV_E_TIMEOUT, "the daemon stopped answering (no heartbeat "
			"for %llu ms)", (unsigned long long)(c->hung_ns / 1000000));
}

/* Wait until the socket is readable, the daemon hangs, or IPC_CTL_TIMEOUT_MS. */
static int wait_socket(struct ipc_conn *c, char *err)
{
	struct pollfd p = { .fd = c->sock, .events = POLLIN };

	watch(c);
	for (int waited = 0; waited < IPC_CTL_TIMEOUT_MS; waited += IPC_POLL_MS) {
		int n = poll(&p, 1, IPC_POLL_MS);

		if (n > 0 || (n < 0 && errno != EINTR))
			return DKV_OK; /* ipc_recv reads data, EOF or the error */
		if (daemon_hung(c))
			return hung(err, c);
	}
	return DKV_OK;
}

static int unix_connect(const char *path, int *out)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(a.sun_path))
		return DKV_E_INVAL;
	strcpy(a.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return DKV_E_IO;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = errno;

		close(fd);
		if (e == ENOENT || e == ECONNREFUSED)
			return DKV_E_NOTFOUND;
		return e == EACCES || e == EPERM ? DKV_E_PERM : DKV_E_IO;
	}
	*out = fd;
	return DKV_OK;
}

int ipc_probe(const char *path)
{
	int fd;

	if (unix_connect(path, &fd))
		return 0;
	close(fd);
	return 1;
}

/* Receive the reply to request seq: `want` with its payload, or an error. */
static int reply(struct ipc_conn *c, uint16_t want, void *buf, int *fd, char *err)
{
	struct ipc_hdr h;
	union {
		struct ipc_error e;
		char raw[IPC_MAX_PAYLOAD];
	} p;
	int rc = wait_socket(c, err);

	if (rc)
		return rc;
	rc = ipc_recv(c->sock, &h, &p, IPC_CTL_TIMEOUT_MS, fd, err);

	if (rc == DKV_E_DISCONNECTED) {
		c->dead = 1;
		return krn_msgf(err, rc, "the daemon closed the connection");
	}
	if (rc == DKV_E_TIMEOUT || rc == DKV_E_IO)
		return krn_msgf(err, rc, "%s", rc == DKV_E_IO ? "socket read failed" :
				"no answer from the daemon");
	if (rc)
		return rc;
	if (h.type == IPC_ERROR) {
		rc = ipc_check_error(&p.e, err);
		if (rc)
			return rc;
		return krn_msgf(err, p.e.status, "%s", p.e.msg);
	}
	if (h.type != want || h.seq != c->seq)
		return krn_msgf(err, DKV_E_PROTO, "unexpected reply from the daemon");
	if (buf)
		memcpy(buf, p.raw, h.length);
	return DKV_OK;
}

static int request(struct ipc_conn *c, uint16_t type, const void *payload,
		   uint32_t len, uint16_t want, void *buf, char *err)
{
	int rc;

	if (c->dead)
		return krn_msgf(err, DKV_E_DISCONNECTED, "the daemon went away");
	c->seq++;
	rc = ipc_send(c->sock, type, c->seq, payload, len, -1);
	if (rc == DKV_E_DISCONNECTED)
		c->dead = 1;
	if (rc)
		return krn_msgf(err, rc, "cannot send to the daemon");
	ipc_ring_bell(&c->sq);
	return reply(c, want, buf, NULL, err);
}

/*
 * The region must be a regular file sealed as dashkvd seals it: a file
 * that can still shrink under the mapping would turn our next access into
 * SIGBUS, and the size is what the daemon announced.
 */
static int check_region_fd(int fd, struct stat *st, char *err)
{
	int need = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
	int seals;

	if (fstat(fd, st) < 0)
		return krn_msgf(err, DKV_E_IO, "fstat of the shared region failed");
	if (!S_ISREG(st->st_mode))
		return krn_msgf(err, DKV_E_PROTO, "the shared region is not a regular file");
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || (seals & need) != need)
		return krn_msgf(err, DKV_E_PROTO,
				"the shared region is not sealed against resizing (seals %#x)",
				seals < 0 ? 0 : (unsigned)seals);
	return DKV_OK;
}

static int map_region(struct ipc_conn *c, const struct ipc_accept *a, int fd,
		      char *err)
{
	struct stat st;
	char *r;
	int rc;

	rc = check_region_fd(fd, &st, err);
	if (rc)
		return rc;
	rc = ipc_check_accept(a, (uint64_t)st.st_size, err);
	if (rc)
		return rc;
	r = mmap(NULL, a->region_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r == MAP_FAILED)
		return krn_msgf(err, DKV_E_NOMEM, "cannot map the shared region");
	c->region = r;
	c->region_size = a->region_size;
	c->off = a->off;
	ipc_ring_init(&c->sq, r, a->off.sq_ctl, a->off.sqes, sizeof(struct ipc_sqe),
		      a->off.entries);
	ipc_ring_init(&c->cq, r, a->off.cq_ctl, a->off.cqes, sizeof(struct ipc_cqe),
		      a->off.entries);
	c->arena = r + a->off.arena;
	c->features = a->features & IPC_FEAT_ALL;
	return DKV_OK;
}

static int handshake(struct ipc_conn *c, char *err)
{
	struct ipc_hello h = { .features = IPC_FEAT_ALL, .arena_size = IPC_DEF_ARENA };
	struct ipc_accept a;
	const char *env = getenv("DASHKV_IPC_ARENA_MB");
	int fd = -1, rc;

	if (env && atoi(env) > 0)
		h.arena_size = (uint64_t)atoi(env) << 20;
	env = getenv("DASHKV_IPC_TIMEOUT_MS");
	c->hung_ns = (uint64_t)(env && atoi(env) > 0 ? atoi(env) : IPC_HUNG_MS) * 1000000;
	env = getenv("DASHKV_IPC_SPIN_US");
	c->spin_ns = env && atoi(env) >= 0 ? (uint64_t)atoi(env) * 1000 : IPC_SPIN_NS;
	c->seq++;
	/* a refusal may already wait for us even if the send fails */
	ipc_send(c->sock, IPC_HELLO, c->seq, &h, sizeof(h), -1);
	rc = reply(c, IPC_ACCEPT, &a, &fd, err);
	if (rc)
		return rc;
	if (fd < 0)
		return krn_msgf(err, DKV_E_PROTO, "the daemon passed no shared region");
	rc = map_region(c, &a, fd, err);
	close(fd);
	return rc;
}

int ipc_connect(const char *path, struct ipc_conn **out, char *err)
{
	struct ipc_conn *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	rc = unix_connect(path, &c->sock);
	if (rc) {
		if (rc == DKV_E_INVAL)
			krn_msgf(err, rc, "socket path too long: %.200s", path);
		else
			krn_msgf(err, rc, "cannot connect to %.200s: %s", path, strerror(errno));
		free(c);
		return rc;
	}
	pthread_mutex_init(&c->lock, NULL);
	rc = handshake(c, err);
	if (rc) {
		ipc_close(c);
		return rc;
	}
	*out = c;
	return DKV_OK;
}

void ipc_close(struct ipc_conn *c)
{
	if (!c)
		return;
	if (c->region)
		munmap(c->region, c->region_size);
	close(c->sock);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/*
 * cfg as it goes on the wire, its hash_model pointer cleared; the path it
 * names goes into path, which must be absolute (the daemon resolves it).
 */
static int open_msg(const struct ipc_conn *c, const dkv_seq_config *cfg,
		    struct ipc_open_model *m, char *err)
{
	const char *path;

	memset(m, 0, sizeof(*m));
	memcpy(&m->cfg, cfg, cfg->struct_size < sizeof(m->cfg) ?
	       cfg->struct_size : sizeof(m->cfg));
	m->cfg.struct_size = cfg->struct_size;
	path = m->cfg.hash_model;
	m->cfg.hash_model = NULL;
	if (!path)
		return DKV_OK;
	if (!(c->features & IPC_FEAT_MODEL))
		return krn_msgf(err, DKV_E_UNSUPPORTED,
				"this daemon does not read hash_model files");
	if (path[0] != '/')
		return krn_msgf(err, DKV_E_INVAL, "hash_model \"%.150s\": the daemon opens the "
				"file itself and needs an absolute path", path);
	if (strlen(path) >= sizeof(m->path))
		return krn_msgf(err, DKV_E_INVAL, "hash_model path longer than %zu bytes",
				sizeof(m->path) - 1);
	strcpy(m->path, path);
	return DKV_OK;
}

int ipc_open(struct ipc_conn *c, const dkv_seq_config *cfg, uint32_t *id,
	     dkv_seq_config *resolved, char *err)
{
	struct ipc_open_model m;
	struct ipc_open_ok ok;
	int rc = open_msg(c, cfg, &m, err);

	if (rc)
		return rc;
	pthread_mutex_lock(&c->lock);
	if (m.path[0])
		rc = request(c, IPC_OPEN_MODEL, &m, sizeof(m), IPC_OPEN_OK, &ok, err);
	else
		rc = request(c, IPC_OPEN, &m.cfg, sizeof(struct ipc_open), IPC_OPEN_OK, &ok, err);
	pthread_mutex_unlock(&c->lock);
	if (rc)
		return rc;
	if (!ok.seq_id)
		return krn_msgf(err, DKV_E_PROTO, "the daemon returned sequence id 0");
	*id = ok.seq_id;
	*resolved = ok.cfg;
	resolved->hash_model = NULL; /* the daemon's pointer, if any: not ours */
	return DKV_OK;
}

static int ref_call(struct ipc_conn *c, uint16_t type, uint32_t id,
		    uint32_t layer, uint16_t want, void *buf, char *err)
{
	struct ipc_ref r = { .seq_id = id, .layer = layer };
	int rc;

	pthread_mutex_lock(&c->lock);
	rc = request(c, type, &r, sizeof(r), want, buf, err);
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int ipc_seq_close(struct ipc_conn *c, uint32_t id, char *err)
{
	return ref_call(c, IPC_CLOSE, id, 0, IPC_OK, NULL, err);
}

int ipc_length(struct ipc_conn *c, uint32_t id, uint32_t layer,
	       uint64_t *tokens, char *err)
{
	struct ipc_length_ok ok;
	int rc = ref_call(c, IPC_LENGTH, id, layer, IPC_LENGTH_OK, &ok, err);

	if (!rc)
		*tokens = ok.tokens;
	return rc;
}

int ipc_train(struct ipc_conn *c, uint32_t id, char *err)
{
	return ref_call(c, IPC_TRAIN, id, 0, IPC_OK, NULL, err);
}

int ipc_stats(struct ipc_conn *c, uint32_t id, dkv_stats *st, char *err)
{
	return ref_call(c, IPC_STATS, id, 0, IPC_STATS_OK, st, err);
}

/* ---- the data path ---- */

static uint64_t up64(uint64_t x)
{
	return (x + 63) & ~63ull;
}

static int daemon_gone(struct ipc_conn *c)
{
	char b;
	ssize_t n = recv(c->sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK &&
		       errno != EINTR))
		c->dead = 1;
	return c->dead;
}

/*
 * One turn of the wait's spin; 0 when spinning is pointless and the wait
 * should sleep.  While the daemon's session thread shares this CPU (its
 * cpu hint), a spin only keeps it from running, and a yield need not hand
 * it the CPU either: sleep, and its doorbell wakes us.  On another CPU,
 * spin with a few pause instructions, and yield every 32nd turn in case
 * it came here since it last said where it runs (a yield per turn costs a
 * system call each and slowed the daemon's step: dashkv-bench ipc).
 */
static int spin_turn(struct ipc_conn *c, uint32_t turn)
{
	uint32_t there = atomic_load_explicit(&c->sq.ctl->cpu, memory_order_relaxed);

	if (there && there == ipc_cpu_hint())
		return 0;
	if (turn % 32 == 0) {
		sched_yield();
		return 1;
	}
#if defined(__x86_64__) || defined(__i386__)
	for (int i = 0; i < 16; i++)
		__builtin_ia32_pause();
#else
	sched_yield();
#endif
	return 1;
}

/* Wait for the next completion; the caller holds the lock. */
static int wait_cqe(struct ipc_conn *c, struct ipc_cqe *out, int spin, char *err)
{
	uint64_t spin_end = spin && c->spin_ns ? now_ns() + c->spin_ns : 0;
	uint32_t spins = 0;

	watch(c);
	for (;;) {
		if (ipc_ring_pending(&c->cq)) {
			ipc_ring_pop(&c->cq, out);
			return DKV_OK;
		}
		if (spin_end && now_ns() < spin_end && spin_turn(c, ++spins))
			continue;
		spin_end = 0;
		ipc_ring_sleep(&c->cq, ipc_ring_doorbell(&c->cq), IPC_POLL_MS);
		/* woken by the completion: take it before any system call */
		if (ipc_ring_pending(&c->cq))
			continue;
		if (daemon_gone(c))
			return krn_msgf(err, DKV_E_DISCONNECTED, "the daemon went away");
		if (daemon_hung(c))
			return hung(err, c);
	}
}

/* Submit e; tell the daemon on which CPU we wait. */
static int submit(struct ipc_conn *c, const struct ipc_sqe *e, char *err)
{
	atomic_store_explicit(&c->cq.ctl->cpu, ipc_cpu_hint(), memory_order_relaxed);
	if (!ipc_ring_push(&c->sq, e))
		return krn_msgf(err, DKV_E_INTERNAL, "submission ring full");
	ipc_ring_bell(&c->sq);
	return DKV_OK;
}

/* Where a piece of a step goes in the arena: see ipc_congruent. */
static uint64_t place(uint64_t pos, const void *p, uint32_t dsize, int packed)
{
	uintptr_t a = (uintptr_t)p;

	if (packed)
		return up64(pos);
	return ipc_congruent(pos, a % dsize ? 0 : a);
}

/*
 * Arena offsets of q, k, v and out, each at the page offset of the
 * caller's buffer (or packed, when that does not fit); returns the end.
 */
static uint64_t lay_out(struct ipc_sqe *e, uint64_t qb, uint64_t kb,
			const void *q, const void *k, const void *v,
			const void *out, uint32_t dsize, int packed)
{
	e->q_off = place(0, q, dsize, packed);
	e->k_off = place(e->q_off + qb, k, dsize, packed);
	e->v_off = place(e->k_off + kb, v, dsize, packed);
	e->out_off = place(e->v_off + kb, out, dsize, packed);
	return e->out_off + qb;
}

static int step_locked(struct ipc_conn *c, struct ipc_sqe *e, const struct ipc_geom *g,
		       const void *q, const void *k, const void *v, void *out,
		       char *err)
{
	uint64_t qb = ipc_q_bytes(g, e->n_q), kb = ipc_kv_bytes(g, e->n_new), t0;
	uint64_t end = lay_out(e, qb, kb, q, k, v, out, g->dsize, 0);
	struct ipc_cqe cqe;
	int rc, spin;

	if (end > c->off.arena_size)
		end = lay_out(e, qb, kb, q, k, v, out, g->dsize, 1);
	if (end > c->off.arena_size)
		return krn_msgf(err, DKV_E_NOSPACE, "step needs %llu bytes, the shared arena "
				"holds %llu (DASHKV_IPC_ARENA_MB)", (unsigned long long)end,
				(unsigned long long)c->off.arena_size);
	if (qb)
		memcpy(c->arena + e->q_off, q, qb);
	if (kb) {
		memcpy(c->arena + e->k_off, k, kb);
		memcpy(c->arena + e->v_off, v, kb);
	}
	/* spin unless the last step of this shape outlasted the spin */
	spin = e->n_q != c->last_n_q || e->n_new != c->last_n_new ||
	       c->last_ns <= c->spin_ns;
	t0 = now_ns();
	rc = submit(c, e, err);
	if (!rc)
		rc = wait_cqe(c, &cqe, spin, err);
	if (rc)
		return rc;
	c->last_n_q = e->n_q;
	c->last_n_new = e->n_new;
	c->last_ns = now_ns() - t0;
	if (cqe.user != e->user || ipc_check_cqe(&cqe, err))
		return krn_msgf(err, DKV_E_PROTO, "bad completion from the daemon");
	if (cqe.status)
		return krn_msgf(err, cqe.status, "%s", cqe.msg);
	if (qb)
		memcpy(out, c->arena + e->out_off, qb);
	return DKV_OK;
}

int ipc_step(struct ipc_conn *c, uint32_t id, const struct ipc_geom *g,
	     uint32_t layer, const void *q, uint32_t n_q, const void *k,
	     const void *v, uint32_t n_new, void *out, char *err)
{
	struct ipc_sqe e = { .seq_id = id, .layer = layer, .n_q = n_q, .n_new = n_new };
	int rc;

	if (n_q && (!q || !out))
		return krn_msgf(err, DKV_E_INVAL, "q or out is NULL");
	if (n_new && (!k || !v))
		return krn_msgf(err, DKV_E_INVAL, "k or v is NULL");
	pthread_mutex_lock(&c->lock);
	if (c->dead) {
		pthread_mutex_unlock(&c->lock);
		return krn_msgf(err, DKV_E_DISCONNECTED, "the daemon went away");
	}
	e.user = ++c->seq;
	rc = step_locked(c, &e, g, q, k, v, out, err);
	pthread_mutex_unlock(&c->lock);
	return rc;
}
