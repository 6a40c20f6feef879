/*
 * ring.h - the shared rings of a dashkvd session, written once for both
 * peers: the client produces submissions and consumes completions, the
 * daemon the other way round.  The layout is struct ipc_ring_ctl and the
 * entry structs of proto.h.
 *
 * Each peer keeps its own index (the producer's tail, the consumer's
 * head) in private memory and only publishes it; what it reads of the
 * other's index may be anything when the peer is hostile, so a consumer
 * bounds what ipc_ring_pending says, and every slot index is masked.
 *
 * Entries, in C11 atomics (never volatile):
 *   producer: write the slot, then store tail with release;
 *   consumer: load tail with acquire, copy the slot out, then store head
 *             with release;
 *   producer: load head with acquire before it writes a slot again.
 * The doorbell is described above ipc_ring_doorbell.
 */
#ifndef DKV_IPC_RING_H
#define DKV_IPC_RING_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "proto.h"

/* One peer's side of one ring. */
struct ipc_ring {
	struct ipc_ring_ctl *ctl;
	char *slots;
	uint32_t size;     /* bytes of an entry */
	uint32_t entries;  /* a power of two */
	uint32_t index;    /* ours: the producer's tail or the consumer's head */
};

/* A ring of entries of size bytes at offsets ctl and slots of a new region. */
static inline void ipc_ring_init(struct ipc_ring *r, char *region, uint64_t ctl,
				 uint64_t slots, uint32_t size, uint32_t entries)
{
	r->ctl = (struct ipc_ring_ctl *)(region + ctl);
	r->slots = region + slots;
	r->size = size;
	r->entries = entries;
	r->index = 0;
}

static inline void *ipc_ring_slot(const struct ipc_ring *r, uint32_t index)
{
	return r->slots + (size_t)(index & (r->entries - 1)) * r->size;
}

/* Producer: copy e into the next slot and publish it; 0 if the ring is full. */
static inline int ipc_ring_push(struct ipc_ring *r, const void *e)
{
	/*
	 * acquire: pairs with the release store of head in ipc_ring_pop;
	 * the consumer has finished copying a slot out before we see it
	 * free and write it again.
	 */
	uint32_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);

	if (r->index - head >= r->entries)
		return 0;
	memcpy(ipc_ring_slot(r, r->index), e, r->size);
	/*
	 * release: the entry's bytes are visible before the new tail; pairs
	 * with the acquire load of tail in ipc_ring_pending.
	 */
	atomic_store_explicit(&r->ctl->tail, ++r->index, memory_order_release);
	return 1;
}

/*
 * Consumer: entries published and not taken yet.  Above r->entries the
 * producer overran the ring (or lies about its tail).
 */
static inline uint32_t ipc_ring_pending(const struct ipc_ring *r)
{
	/*
	 * acquire: pairs with the release store of tail in ipc_ring_push;
	 * every entry up to the tail we see is written.
	 */
	return atomic_load_explicit(&r->ctl->tail, memory_order_acquire) - r->index;
}

/* Consumer: copy the oldest entry into e and free its slot. */
static inline void ipc_ring_pop(struct ipc_ring *r, void *e)
{
	memcpy(e, ipc_ring_slot(r, r->index), r->size);
	/*
	 * release: our copy is complete before the slot is seen free; pairs
	 * with the acquire load of head in ipc_ring_push.
	 */
	atomic_store_explicit(&r->ctl->head, ++r->index, memory_order_release);
}

/* Consumer: drop n entries unread (an overrun ring). */
static inline void ipc_ring_skip(struct ipc_ring *r, uint32_t n)
{
	r->index += n;
	/* release: as in ipc_ring_pop, nothing of those slots is read after */
	atomic_store_explicit(&r->ctl->head, r->index, memory_order_release);
}

/*
 * The doorbell.  A consumer with nothing to do sleeps on the futex word
 * bell; the producer bumps bell after it publishes, and makes the wake
 * system call only when the consumer armed sleeping.
 *
 * The lost wakeup to avoid: the consumer finds the ring empty, the
 * producer publishes and finds sleeping clear, the consumer arms sleeping
 * and sleeps through the entry.  Each side stores one variable and then
 * loads the other (consumer: sleeping, then tail; producer: tail, then
 * sleeping), the store-buffering pattern: release and acquire do not keep
 * a store ahead of a later load to another address, on x86 (its store
 * buffer) or anywhere else; a full fence on each side does.  Of the two
 * seq_cst fences (ipc_ring_sleep, ipc_ring_bell) one comes first in their
 * single total order: if the consumer's, the producer sees sleeping set
 * and wakes it; if the producer's, the consumer's re-check sees the new
 * tail and does not sleep.
 *
 * The futex word covers a wake that lands after the re-check but before
 * the consumer is asleep: the kernel puts it to sleep only while bell
 * still holds the value it read.  That value must be read before the
 * consumer last looks at anything the producer announces by ringing: the
 * ring, which ipc_ring_sleep re-checks itself, and for the daemon the
 * control socket, which it polls before it sleeps.  Read after such a
 * look, bell might already count a ring that look missed, and the sleep
 * would wait for the next one.
 */
static inline uint32_t ipc_ring_doorbell(const struct ipc_ring *r)
{
	/*
	 * acquire: pairs with the release increment in ipc_ring_bell; a
	 * consumer that reads a ring's value also sees what it announced.
	 */
	return atomic_load_explicit(&r->ctl->bell, memory_order_acquire);
}

/* Producer, after publishing (or sending on the socket): wake a sleeper. */
static inline void ipc_ring_bell(struct ipc_ring *r)
{
	/* release: see ipc_ring_doorbell */
	atomic_fetch_add_explicit(&r->ctl->bell, 1, memory_order_release);
	/*
	 * full fence: the new tail (and bell) are visible before we load
	 * sleeping; pairs with the fence in ipc_ring_sleep.
	 */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&r->ctl->sleeping, memory_order_relaxed))
		ipc_futex_wake(&r->ctl->bell);
}

/*
 * Consumer: unless the ring holds entries, sleep until the producer
 * rings or timeout_ms pass.  bell: ipc_ring_doorbell's value, read before
 * the caller last looked for work.  The caller looks again after.
 */
static inline void ipc_ring_sleep(struct ipc_ring *r, uint32_t bell, int timeout_ms)
{
	atomic_store_explicit(&r->ctl->sleeping, 1, memory_order_relaxed);
	/*
	 * full fence: sleeping is set before we re-check the ring; pairs
	 * with the fence in ipc_ring_bell.
	 */
	atomic_thread_fence(memory_order_seq_cst);
	if (!ipc_ring_pending(r))
		ipc_futex_wait(&r->ctl->bell, bell, timeout_ms);
	/* relaxed: a producer that still sees it set only wakes us in vain */
	atomic_store_explicit(&r->ctl->sleeping, 0, memory_order_relaxed);
}

#endif
