/*
 * fuzz_ring.c - libFuzzer target for the ring descriptors dashkvd copies out
 * of a client's shared region, and the completions and region offsets the
 * client reads back.  Input: a geometry (5 x u32), an arena size (u64), then
 * descriptors (struct ipc_sqe) one after another.  A descriptor the
 * validator accepts must lie inside the arena, aligned, on an existing
 * layer: the target aborts otherwise.  Build: make fuzz (see
 * tests/fuzz/Makefile.am.inc).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/proto.h"

static uint32_t clamp(uint32_t x, uint32_t lo, uint32_t hi)
{
	return lo + x % (hi - lo + 1);
}

static void geometry(const uint8_t *data, struct ipc_geom *g, uint64_t *arena)
{
	uint32_t v[5];

	memcpy(v, data, sizeof(v));
	memcpy(arena, data + sizeof(v), sizeof(*arena));
	g->n_layers = clamp(v[0], 1, 256);
	g->n_kv_heads = clamp(v[2], 1, 256);
	g->n_q_heads = g->n_kv_heads * clamp(v[1], 1, 8);
	g->head_dim = 8 * clamp(v[3], 1, 32);
	g->dsize = v[4] & 1 ? 4 : 2;
	*arena %= 1ull << 40;
}

static int inside(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/* The promise of ipc_check_sqe: what the daemon then reads is in bounds. */
static void check_accepted(const struct ipc_sqe *e, const struct ipc_geom *g,
			   uint64_t arena)
{
	uint64_t qb = ipc_q_bytes(g, e->n_q), kb = ipc_kv_bytes(g, e->n_new);

	if (e->layer >= g->n_layers)
		abort();
	if (e->n_q && (!inside(e->q_off, qb, arena) || !inside(e->out_off, qb, arena)))
		abort();
	if (e->n_new && (!inside(e->k_off, kb, arena) || !inside(e->v_off, kb, arena)))
		abort();
	if ((e->q_off | e->k_off | e->v_off | e->out_off) % g->dsize)
		abort();
	if (e->reserved[0] | e->reserved[1] | e->reserved[2] | e->reserved[3])
		abort();
}

static void completion(const uint8_t *data, size_t size)
{
	struct ipc_cqe c;
	char err[KRN_MSGLEN];

	memset(&c, 0, sizeof(c));
	memcpy(&c, data, size < sizeof(c) ? size : sizeof(c));
	if (ipc_check_cqe(&c, err) == DKV_OK &&
	    (c.status > 0 || !memchr(c.msg, '\0', sizeof(c.msg))))
		abort();
}

static void accept_offsets(const uint8_t *data, size_t size, uint64_t file_size)
{
	struct ipc_accept a;
	char err[KRN_MSGLEN];

	memset(&a, 0, sizeof(a));
	memcpy(&a, data, size < sizeof(a) ? size : sizeof(a));
	if (ipc_check_accept(&a, file_size, err) != DKV_OK)
		return;
	if (!inside(a.off.sqes, (uint64_t)a.off.entries * sizeof(struct ipc_sqe), file_size) ||
	    !inside(a.off.arena, a.off.arena_size, file_size) ||
	    (a.off.entries & (a.off.entries - 1)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const size_t head = 5 * sizeof(uint32_t) + sizeof(uint64_t);
	struct ipc_geom g;
	uint64_t arena;
	char err[KRN_MSGLEN];

	if (size < head)
		return 0;
	geometry(data, &g, &arena);
	completion(data + head, size - head);
	accept_offsets(data + head, size - head, arena);
	for (size_t at = head; at + sizeof(struct ipc_sqe) <= size;
	     at += sizeof(struct ipc_sqe)) {
		struct ipc_sqe e;

		memcpy(&e, data + at, sizeof(e));
		if (ipc_check_sqe(&e, &g, arena, err) == DKV_OK)
			check_accepted(&e, &g, arena);
		else if (!memchr(err, '\0', sizeof(err)))
			abort();
	}
	return 0;
}
