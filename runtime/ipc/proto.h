/*
 * proto.h - the dashkvd wire format and ring ABI, shared by the daemon and
 * libdashkv-client.  Everything here is fixed-width and little-endian (the
 * two peers run on one host).  Reserved fields must be zero.  The ipc_check_*
 * functions are pure: they validate bytes received from a peer that is not
 * trusted (the socket, or a descriptor copied out of shared memory), and
 * say what is wrong in err (msg.h).
 */
#ifndef DKV_IPC_PROTO_H
#define DKV_IPC_PROTO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "dashkv.h"
#include "msg.h"

#define IPC_MAGIC 0x564b4444u   /* "DDKV" */
#define IPC_VERSION 1u
#define IPC_MAX_PAYLOAD 4096u   /* the largest control payload */
#define IPC_PATHLEN 1024u       /* a path in a message, its NUL included */
#define IPC_CACHELINE 64
#define IPC_PAGE_MASK 4095u    /* offsets within a 4 KiB page */

/* Feature bits negotiated in HELLO / ACCEPT. */
#define IPC_FEAT_RING 0x1u      /* steps through the shared rings */
#define IPC_FEAT_HEARTBEAT 0x2u /* the daemon bumps sq `alive` while well */
#define IPC_FEAT_MODEL 0x4u     /* IPC_OPEN_MODEL: the daemon reads a hash model file */
#define IPC_FEAT_ALL (IPC_FEAT_RING | IPC_FEAT_HEARTBEAT | IPC_FEAT_MODEL)
#define IPC_HEARTBEAT_MS 100    /* how often the daemon bumps it */

enum ipc_type {
	IPC_HELLO = 1,  /* client: struct ipc_hello */
	IPC_ACCEPT,     /* daemon: struct ipc_accept (+ memfd, SCM_RIGHTS) */
	IPC_OPEN,       /* client: struct ipc_open */
	IPC_OPEN_OK,    /* daemon: struct ipc_open_ok */
	IPC_CLOSE,      /* client: struct ipc_ref */
	IPC_LENGTH,     /* client: struct ipc_ref */
	IPC_LENGTH_OK,  /* daemon: struct ipc_length_ok */
	IPC_STATS,      /* client: struct ipc_ref */
	IPC_STATS_OK,   /* daemon: dkv_stats */
	IPC_TRAIN,      /* client: struct ipc_ref */
	IPC_OK,         /* daemon: CLOSE / TRAIN done, no payload */
	IPC_ERROR,      /* daemon: struct ipc_error */
	IPC_STATUS,     /* client, instead of HELLO: no payload (dashkvctl) */
	IPC_STATUS_OK,  /* daemon: struct ipc_status */
	IPC_SESSIONS,   /* client, instead of HELLO: no payload (dashkvctl) */
	IPC_SESSION_INFO, /* daemon: struct ipc_session_info, one per session,
			     then IPC_OK */
	IPC_SRVSTATS,   /* client, instead of HELLO: no payload (dashkvctl) */
	IPC_SRVSTATS_OK, /* daemon: struct ipc_srvstats */
	IPC_DRAIN,      /* client, instead of HELLO: no payload; IPC_OK */
	IPC_OPEN_MODEL, /* client (IPC_FEAT_MODEL): struct ipc_open_model */
	IPC_TYPE_END
};

struct ipc_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t length;  /* payload bytes after the header */
	uint32_t seq;     /* request number, echoed in the reply */
};

struct ipc_hello {
	uint32_t features;
	uint32_t reserved;
	uint64_t arena_size;  /* bytes of data arena wanted */
};

/* Where the rings and the arena lie in the shared region (bytes). */
struct ipc_offsets {
	uint64_t sq_ctl, cq_ctl;
	uint64_t sqes, cqes;
	uint64_t arena, arena_size;
	uint32_t entries;     /* of each ring, a power of two */
	uint32_t reserved;
};

struct ipc_accept {
	uint32_t features;
	uint32_t reserved;
	uint64_t region_size;
	struct ipc_offsets off;
};

struct ipc_open {
	dkv_seq_config cfg;
};

/*
 * An open whose hash_model the daemon reads: cfg.hash_model is ignored
 * (a pointer of the client's), path stands for it.  path is absolute
 * (the daemon has its own working directory) and NUL-terminated.
 */
struct ipc_open_model {
	dkv_seq_config cfg;
	char path[IPC_PATHLEN];
};

struct ipc_open_ok {
	uint32_t seq_id;
	uint32_t reserved;
	dkv_seq_config cfg;   /* resolved */
};

struct ipc_ref {
	uint32_t seq_id;
	uint32_t layer;       /* IPC_LENGTH only, else 0 */
};

struct ipc_length_ok {
	uint64_t tokens;
};

struct ipc_error {
	int32_t status;       /* a DKV_E_* code */
	uint32_t reserved;
	char msg[KRN_MSGLEN]; /* NUL-terminated */
};
/* ABI: the wire carries 256-byte messages, so KRN_MSGLEN cannot drift. */
_Static_assert(sizeof(((struct ipc_error *)0)->msg) == 256, "ipc_error.msg is 256 bytes");

struct ipc_status {
	uint32_t sessions, max_sessions;
	uint64_t sessions_total;   /* served since start */
	uint64_t bytes_used, memory_limit;
	uint64_t rejects, dropped;
	uint64_t uptime_s;
	uint64_t reserved[4];
};

/* Why the daemon rejected a request (counted, shown by dashkvctl stats). */
enum ipc_reject {
	IPC_REJ_PERM,       /* peer not allowed */
	IPC_REJ_BUSY,       /* max_sessions reached, or draining */
	IPC_REJ_MESSAGE,    /* malformed socket message */
	IPC_REJ_HANDSHAKE,  /* bad hello, arena too large, no region */
	IPC_REJ_DESCRIPTOR, /* step descriptor failed validation */
	IPC_REJ_INPUT,      /* NaN or Inf in a step */
	IPC_REJ_NOSPACE,    /* a memory or token limit */
	IPC_REJ_OTHER,      /* any other failed request */
	IPC_REJ_END
};
#define IPC_REJ_SLOTS 16

struct ipc_session_info {
	uint32_t id;            /* session number since start */
	uint32_t uid, gid, pid;
	uint32_t sequences;
	uint32_t reserved;
	uint64_t bytes;         /* held by its sequences */
	uint64_t region_bytes;  /* its shared region */
	uint64_t steps, rejects;
	uint64_t age_s;
};

struct ipc_srvstats {
	uint32_t sessions, max_sessions;
	uint32_t draining, reserved;
	uint64_t sessions_total;
	uint64_t bytes_used, memory_limit;
	uint64_t region_bytes;  /* all shared regions */
	uint64_t steps;         /* served since start */
	uint64_t dropped;       /* ring entries dropped */
	uint64_t uptime_s;
	uint64_t rejects[IPC_REJ_SLOTS];  /* by enum ipc_reject */
};

/* The name of a reject reason ("perm", "busy", ...), NULL past the end. */
const char *ipc_reject_name(unsigned reason);
/* The reject reason of a failed step or request status. */
enum ipc_reject ipc_reject_of(int status);

/* Ring control block (its operations: ring.h): head and tail on their own
 * cache lines. */
struct ipc_ring_ctl {
	_Alignas(IPC_CACHELINE) _Atomic uint32_t head;  /* consumer */
	_Alignas(IPC_CACHELINE) _Atomic uint32_t tail;  /* producer */
	_Alignas(IPC_CACHELINE) _Atomic uint32_t sleeping; /* consumer waits */
	_Atomic uint32_t bell;  /* futex word: bumped by the producer */
	_Atomic uint32_t alive; /* submission ring: the daemon's heartbeat */
	/*
	 * The consumer's CPU plus one (0: not known), a hint for the peer's
	 * wait: a waiter that shares its CPU with the peer it waits for
	 * gives the CPU up at once instead of spinning (see ipc_cpu_hint).
	 */
	_Atomic uint32_t cpu;
};

/* A step: the arena offsets of q, k, v (read) and out (written). */
struct ipc_sqe {
	uint64_t user;        /* echoed in the completion */
	uint32_t seq_id;
	uint32_t layer;
	uint32_t n_q;
	uint32_t n_new;
	uint64_t q_off, k_off, v_off, out_off;
	uint32_t reserved[4];
};

struct ipc_cqe {
	uint64_t user;
	int32_t status;
	uint32_t reserved;
	char msg[112];
};

/* The geometry the daemon checks a step against. */
struct ipc_geom {
	uint32_t n_layers, n_q_heads, n_kv_heads, head_dim, dsize;
};

void ipc_hdr_init(struct ipc_hdr *h, uint16_t type, uint32_t length, uint32_t seq);
/* Header of a message: magic, version, known type, payload size of the type. */
int ipc_check_hdr(const struct ipc_hdr *h, char *err);
/* The payload size a type must have. */
uint32_t ipc_payload_size(uint16_t type);
int ipc_check_hello(const struct ipc_hello *m, char *err);
int ipc_check_accept(const struct ipc_accept *m, uint64_t file_size, char *err);
int ipc_check_ref(const struct ipc_ref *m, char *err);
/* DKV_E_PROTO when path is not NUL-terminated, DKV_E_INVAL when relative. */
int ipc_check_open_model(const struct ipc_open_model *m, char *err);
int ipc_check_error(const struct ipc_error *m, char *err);
int ipc_check_cqe(const struct ipc_cqe *m, char *err);
int ipc_check_sqe(const struct ipc_sqe *e, const struct ipc_geom *g,
		  uint64_t arena_size, char *err);
/* Bytes of q (or out) and of k (or v) for a step. */
uint64_t ipc_q_bytes(const struct ipc_geom *g, uint32_t n_q);
uint64_t ipc_kv_bytes(const struct ipc_geom *g, uint32_t n_new);
/*
 * The first offset at or past pos that lies at the same place in a 4 KiB
 * page as `like` (an address or another offset).  The arena is page
 * aligned, so both peers place each piece of a step at the page offset of
 * the buffer it is copied from or to: on the AMD EPYC machine of
 * dashkv-bench ipc, glibc's memcpy (rep movsb) of 16 KiB took 7.5 us
 * instead of 1.9 us when the destination sat 16 bytes past the source
 * modulo 4 KiB (malloc'd scratch against the arena), and full speed when
 * both share their page offset.
 */
uint64_t ipc_congruent(uint64_t pos, uint64_t like);
/* Lay out a region: rings of `entries` and an arena of arena_size. */
int ipc_layout(uint32_t entries, uint64_t arena_size, struct ipc_offsets *off,
	       uint64_t *region_size);


/* wire.c: whole messages over the socket, with an optional fd. */
int ipc_send(int sock, uint16_t type, uint32_t seq, const void *payload,
	     uint32_t len, int pass_fd);
/*
 * Receive one message into hdr and buf (IPC_MAX_PAYLOAD bytes at least),
 * waiting at most timeout_ms (-1 = no limit).  *fd_out gets a passed fd or
 * -1.  Returns DKV_OK, DKV_E_DISCONNECTED on EOF, DKV_E_TIMEOUT, DKV_E_IO,
 * or DKV_E_PROTO for a malformed message (with err).
 */
int ipc_recv(int sock, struct ipc_hdr *hdr, void *buf, int timeout_ms,
	     int *fd_out, char *err);
/* Futex helpers on a shared (not process-private) word. */
int ipc_futex_wait(_Atomic uint32_t *word, uint32_t val, int timeout_ms);
void ipc_futex_wake(_Atomic uint32_t *word);
/* The calling thread's CPU plus one, or 0 if unknown (struct ipc_ring_ctl). */
uint32_t ipc_cpu_hint(void);

#endif
