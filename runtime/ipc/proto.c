/* proto.c - the validators of the dashkvd wire format and ring ABI. */
#include <string.h>

#include "proto.h"

void ipc_hdr_init(struct ipc_hdr *h, uint16_t type, uint32_t length, uint32_t seq)
{
	h->magic = IPC_MAGIC;
	h->version = IPC_VERSION;
	h->type = type;
	h->length = length;
	h->seq = seq;
}

uint32_t ipc_payload_size(uint16_t type)
{
	switch (type) {
	case IPC_HELLO: return sizeof(struct ipc_hello);
	case IPC_ACCEPT: return sizeof(struct ipc_accept);
	case IPC_OPEN: return sizeof(struct ipc_open);
	case IPC_OPEN_OK: return sizeof(struct ipc_open_ok);
	case IPC_OPEN_MODEL: return sizeof(struct ipc_open_model);
	case IPC_CLOSE:
	case IPC_LENGTH:
	case IPC_STATS:
	case IPC_TRAIN: return sizeof(struct ipc_ref);
	case IPC_LENGTH_OK: return sizeof(struct ipc_length_ok);
	case IPC_STATS_OK: return sizeof(dkv_stats);
	case IPC_OK: return 0;
	case IPC_ERROR: return sizeof(struct ipc_error);
	case IPC_STATUS: return 0;
	case IPC_STATUS_OK: return sizeof(struct ipc_status);
	case IPC_SESSIONS: return 0;
	case IPC_SESSION_INFO: return sizeof(struct ipc_session_info);
	case IPC_SRVSTATS: return 0;
	case IPC_SRVSTATS_OK: return sizeof(struct ipc_srvstats);
	case IPC_DRAIN: return 0;
	}
	return 0;
}

int ipc_check_hdr(const struct ipc_hdr *h, char *err)
{
	if (h->magic != IPC_MAGIC)
		return krn_msgf(err, DKV_E_PROTO, "bad magic 0x%08x", h->magic);
	if (h->version != IPC_VERSION)
		return krn_msgf(err, DKV_E_PROTO, "protocol version %u, this side speaks %u",
				h->version, IPC_VERSION);
	if (h->type == 0 || h->type >= IPC_TYPE_END)
		return krn_msgf(err, DKV_E_PROTO, "unknown message type %u", h->type);
	if (h->length != ipc_payload_size(h->type))
		return krn_msgf(err, DKV_E_PROTO,
				"message type %u with %u payload bytes, expected %u",
				h->type, h->length, ipc_payload_size(h->type));
	return DKV_OK;
}

int ipc_check_hello(const struct ipc_hello *m, char *err)
{
	if (m->reserved)
		return krn_msgf(err, DKV_E_PROTO, "hello: reserved field not zero");
	if (!(m->features & IPC_FEAT_RING))
		return krn_msgf(err, DKV_E_PROTO, "hello: client lacks the ring feature");
	if (m->arena_size < 4096 || m->arena_size > (1ull << 36))
		return krn_msgf(err, DKV_E_PROTO, "hello: arena size %llu out of range",
				(unsigned long long)m->arena_size);
	return DKV_OK;
}

int ipc_check_open_model(const struct ipc_open_model *m, char *err)
{
	if (!memchr(m->path, '\0', sizeof(m->path)))
		return krn_msgf(err, DKV_E_PROTO, "open: model path not NUL-terminated");
	if (m->path[0] != '/')
		return krn_msgf(err, DKV_E_INVAL, "hash_model \"%.150s\": the daemon opens the "
				"file itself and needs an absolute path", m->path);
	return DKV_OK;
}

static int in_region(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

int ipc_check_accept(const struct ipc_accept *m, uint64_t file_size, char *err)
{
	const struct ipc_offsets *o = &m->off;
	uint64_t n = o->entries;

	if (m->reserved || o->reserved)
		return krn_msgf(err, DKV_E_PROTO, "accept: reserved field not zero");
	if (!(m->features & IPC_FEAT_RING))
		return krn_msgf(err, DKV_E_PROTO, "accept: daemon lacks the ring feature");
	if (m->region_size != file_size)
		return krn_msgf(err, DKV_E_PROTO,
				"accept: region of %llu bytes, shared file has %llu",
				(unsigned long long)m->region_size,
				(unsigned long long)file_size);
	if (!n || (n & (n - 1)) || n > 65536)
		return krn_msgf(err, DKV_E_PROTO, "accept: ring entries %llu not a power of two",
				(unsigned long long)n);
	if ((o->sq_ctl | o->cq_ctl | o->sqes | o->cqes | o->arena) % IPC_CACHELINE)
		return krn_msgf(err, DKV_E_PROTO, "accept: misaligned ring offsets");
	if (!in_region(o->sq_ctl, sizeof(struct ipc_ring_ctl), file_size) ||
	    !in_region(o->cq_ctl, sizeof(struct ipc_ring_ctl), file_size) ||
	    !in_region(o->sqes, n * sizeof(struct ipc_sqe), file_size) ||
	    !in_region(o->cqes, n * sizeof(struct ipc_cqe), file_size) ||
	    !in_region(o->arena, o->arena_size, file_size))
		return krn_msgf(err, DKV_E_PROTO, "accept: ring or arena outside the region");
	return DKV_OK;
}

int ipc_check_ref(const struct ipc_ref *m, char *err)
{
	if (m->seq_id == 0)
		return krn_msgf(err, DKV_E_PROTO, "sequence id 0");
	return DKV_OK;
}

static int check_text(const char *msg, size_t len)
{
	return memchr(msg, '\0', len) != NULL;
}

int ipc_check_error(const struct ipc_error *m, char *err)
{
	if (m->status >= 0 || m->status < DKV_E_INTERNAL)
		return krn_msgf(err, DKV_E_PROTO, "error reply with status %d", m->status);
	if (!check_text(m->msg, sizeof(m->msg)))
		return krn_msgf(err, DKV_E_PROTO, "error reply text not terminated");
	return DKV_OK;
}

int ipc_check_cqe(const struct ipc_cqe *m, char *err)
{
	if (m->status > 0 || m->status < DKV_E_INTERNAL)
		return krn_msgf(err, DKV_E_PROTO, "completion with status %d", m->status);
	if (!check_text(m->msg, sizeof(m->msg)))
		return krn_msgf(err, DKV_E_PROTO, "completion text not terminated");
	return DKV_OK;
}

uint64_t ipc_q_bytes(const struct ipc_geom *g, uint32_t n_q)
{
	return (uint64_t)n_q * g->n_q_heads * g->head_dim * g->dsize;
}

uint64_t ipc_kv_bytes(const struct ipc_geom *g, uint32_t n_new)
{
	return (uint64_t)n_new * g->n_kv_heads * g->head_dim * g->dsize;
}

int ipc_check_sqe(const struct ipc_sqe *e, const struct ipc_geom *g,
		  uint64_t arena_size, char *err)
{
	uint64_t qb = ipc_q_bytes(g, e->n_q), kb = ipc_kv_bytes(g, e->n_new);

	if (e->reserved[0] | e->reserved[1] | e->reserved[2] | e->reserved[3])
		return krn_msgf(err, DKV_E_PROTO, "step: reserved field not zero");
	if (e->layer >= g->n_layers)
		return krn_msgf(err, DKV_E_INVAL, "layer %u out of range [0, %u)", e->layer,
				g->n_layers);
	if (e->n_q && (!in_region(e->q_off, qb, arena_size) ||
		       !in_region(e->out_off, qb, arena_size)))
		return krn_msgf(err, DKV_E_INVAL, "step: q or out outside the arena");
	if (e->n_new && (!in_region(e->k_off, kb, arena_size) ||
			 !in_region(e->v_off, kb, arena_size)))
		return krn_msgf(err, DKV_E_INVAL, "step: k or v outside the arena");
	if ((e->q_off | e->k_off | e->v_off | e->out_off) % g->dsize)
		return krn_msgf(err, DKV_E_INVAL, "step: misaligned arena offset");
	return DKV_OK;
}

uint64_t ipc_congruent(uint64_t pos, uint64_t like)
{
	uint64_t x = (pos & ~(uint64_t)IPC_PAGE_MASK) + (like & IPC_PAGE_MASK);

	return x < pos ? x + IPC_PAGE_MASK + 1 : x;
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

int ipc_layout(uint32_t entries, uint64_t arena_size, struct ipc_offsets *off,
	       uint64_t *region_size)
{
	uint64_t pos = 0;

	if (!entries || (entries & (entries - 1)) || entries > 65536)
		return DKV_E_INVAL;
	memset(off, 0, sizeof(*off));
	off->entries = entries;
	off->sq_ctl = pos;
	pos = align_up(pos + sizeof(struct ipc_ring_ctl), IPC_CACHELINE);
	off->cq_ctl = pos;
	pos = align_up(pos + sizeof(struct ipc_ring_ctl), IPC_CACHELINE);
	off->sqes = pos;
	pos = align_up(pos + (uint64_t)entries * sizeof(struct ipc_sqe), IPC_CACHELINE);
	off->cqes = pos;
	pos = align_up(pos + (uint64_t)entries * sizeof(struct ipc_cqe), 4096);
	off->arena = pos;
	off->arena_size = align_up(arena_size, 4096);
	*region_size = pos + off->arena_size;
	return DKV_OK;
}

const char *ipc_reject_name(unsigned reason)
{
	static const char *const names[IPC_REJ_END] = {
		"perm", "busy", "message", "handshake", "descriptor", "input",
		"nospace", "other"
	};

	return reason < IPC_REJ_END ? names[reason] : NULL;
}

enum ipc_reject ipc_reject_of(int status)
{
	switch (status) {
	case DKV_E_INVAL:
	case DKV_E_NOTFOUND:
	case DKV_E_PROTO: return IPC_REJ_DESCRIPTOR;
	case DKV_E_BADINPUT: return IPC_REJ_INPUT;
	case DKV_E_NOSPACE: return IPC_REJ_NOSPACE;
	case DKV_E_PERM: return IPC_REJ_PERM;
	}
	return IPC_REJ_OTHER;
}
