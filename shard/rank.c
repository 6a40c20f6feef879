/* rank.c - the layout of one shard's scratch for a task (see rank.h). */
#include "rank.h"

/* The next buffer of `bytes` at *off (mem NULL: only sizing). */
static void *take(uint8_t *mem, size_t *off, size_t bytes)
{
	void *p = mem ? mem + *off : NULL;

	*off += (bytes + 63) & ~(size_t)63;
	return p;
}

/* Lay rk out from mem (NULL: only its size); returns its bytes. */
static size_t layout(struct shard_rank *rk, uint8_t *mem, const struct shard_rank_dims *d)
{
	size_t g = d->g, hc = d->hit_cap, u = sizeof(uint32_t), f = sizeof(float);
	size_t blk = KRN_BLOCK * d->dim * f, off = 0;

	rk->hit = take(mem, &off, g * hc * u);
	rk->n_hit = take(mem, &off, g * u);
	rk->n_keep = take(mem, &off, g * u);
	rk->n_pool = take(mem, &off, g * u);
	rk->logit = take(mem, &off, g * hc * f);
	if (g <= SHARD_UNION_MAX) {
		rk->u_pos = take(mem, &off, g * hc * u);
		rk->u_map = take(mem, &off, g * hc * u);
		rk->u_logit = take(mem, &off, g * g * hc * f);
	}
	rk->sel = take(mem, &off, hc * u);
	rk->spare = take(mem, &off, hc * f);
	rk->top = take(mem, &off, g * d->top_k * u);
	rk->rec = take(mem, &off, shard_rec_bytes(d->g, d->top_k));
	rk->recv = take(mem, &off, shard_recv_bytes(d->n_shards, d->g, d->top_k));
	rk->bufs.kbuf = take(mem, &off, blk);
	rk->bufs.vbuf = take(mem, &off, blk);
	rk->bufs.ptrs = take(mem, &off, (KRN_BLOCK + KRN_GDOT_AHEAD) * sizeof(void *));
	return off;
}

size_t shard_rank_bytes(const struct shard_rank_dims *d)
{
	struct shard_rank rk;

	return layout(&rk, NULL, d);
}

void shard_rank_place(struct shard_rank *rk, void *mem, const struct shard_rank_dims *d)
{
	layout(rk, mem, d);
}
