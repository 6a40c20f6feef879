/* store.c - paged key/value/code store (see store.h). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "krn.h"
#include "plan.h"
#include "store.h"

/* Each array starts on a 64-byte boundary (cache line, AVX-512 load). */
/*
 * Pages of 2 MiB or more start on a 2 MiB boundary and ask for
 * transparent huge pages: the fine ranking reads rows at random, and with
 * 4 KiB pages nearly every row costs a TLB miss.
 */
#define HUGE_PAGE ((size_t)2 << 20)

static size_t align64(size_t n)
{
	return (n + 63) & ~(size_t)63;
}

/* Bytes of one page's value sums with `rows` summaries per head. */
static size_t vsum_bytes(const struct shard_geom *g, size_t rows)
{
	return (size_t)g->n_kv_heads * rows * g->head_dim * sizeof(float);
}

/* Bytes of one page's key sketches and their steps (0 without sketches). */
static size_t sketch_bytes(const struct shard_geom *g)
{
	size_t rows = (size_t)g->n_kv_heads * SHARD_PAGE;

	return g->sketch ? align64(rows * g->sketch) + align64(rows * sizeof(float)) : 0;
}

void shard_page_bytes(const struct shard_geom *g, struct shard_page_bytes *b)
{
	size_t rows = (size_t)g->n_kv_heads * SHARD_PAGE;

	b->full = 2 * align64(rows * g->head_dim * g->elt_size);
	b->codes = align64(rows * g->words * sizeof(uint64_t)) +
		   align64(rows * sizeof(float)) + align64(rows) + sketch_bytes(g);
	b->summaries = align64(vsum_bytes(g, SHARD_PAGE_BLOCKS)) +
		       align64(vsum_bytes(g, SHARD_PAGE_SPANS));
	b->total = b->full + b->codes + b->summaries;
	if (b->total >= HUGE_PAGE)
		b->total = (b->total + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
}

/* One page's memory: the geometry's allocator, or aligned, NUMA-placed memory. */
static uint8_t *page_mem(const struct shard_geom *g, size_t total, uint32_t index)
{
	uint8_t *mem;

	if (g->page_alloc)
		return g->page_alloc(total, g->page_ctx);
	mem = aligned_alloc(total >= HUGE_PAGE ? HUGE_PAGE : 64, total);
	if (!mem)
		return NULL;
	if (g->node && g->n_shards)
		shard_numa_prefer(mem, total, g->node[shard_page_owner(index, g->n_shards)]);
#ifdef MADV_HUGEPAGE
	if (total >= HUGE_PAGE)
		madvise(mem, total, MADV_HUGEPAGE); /* advice only */
#endif
	return mem;
}

static struct shard_page *page_new(const struct shard_geom *g, uint32_t index)
{
	size_t rows = (size_t)g->n_kv_heads * SHARD_PAGE;
	size_t kv = align64(rows * g->head_dim * g->elt_size);
	size_t codes = align64(rows * g->words * sizeof(uint64_t));
	size_t norms = align64(rows * sizeof(float));
	size_t cls = align64(rows);
	struct shard_page_bytes b;
	struct shard_page *p;
	uint8_t *mem;

	shard_page_bytes(g, &b);
	p = malloc(sizeof(*p));
	if (!p)
		return NULL;
	mem = page_mem(g, b.total, index);
	if (!mem) {
		free(p);
		return NULL;
	}
	p->k = mem;
	p->v = mem + kv;
	p->codes = mem + 2 * kv;
	p->norms = (float *)(mem + 2 * kv + codes);
	p->cls = mem + 2 * kv + codes + norms;
	p->vsum = (float *)(mem + 2 * kv + codes + norms + cls);
	p->vspan = (float *)((uint8_t *)p->vsum + align64(vsum_bytes(g, SHARD_PAGE_BLOCKS)));
	p->sk = (uint8_t *)p->vspan + align64(vsum_bytes(g, SHARD_PAGE_SPANS));
	p->sks = (float *)(p->sk + align64(rows * g->sketch));
	memset(p->vsum, 0, b.summaries);
	return p;
}

static void page_free(const struct shard_geom *g, struct shard_page *p)
{
	if (!p)
		return;
	if (g->page_free)
		g->page_free(p->k, g->page_ctx);
	else
		free(p->k);
	free(p);
}

void shard_layer_init(struct shard_layer *l, const struct shard_geom *g)
{
	memset(l, 0, sizeof(*l));
	l->g = g;
}

void shard_layer_free(struct shard_layer *l)
{
	for (uint32_t i = 0; i < l->n_pages; i++)
		page_free(l->g, l->pages[i]);
	free(l->pages);
	l->pages = NULL;
	l->n_pages = l->cap_pages = 0;
	l->len = 0;
}

uint32_t shard_layer_pages_short(const struct shard_layer *l, uint64_t tokens)
{
	uint64_t want = (tokens + SHARD_PAGE - 1) / SHARD_PAGE;
	return want > l->n_pages ? (uint32_t)(want - l->n_pages) : 0;
}

static int grow_table(struct shard_layer *l, uint32_t want)
{
	if (want <= l->cap_pages)
		return 0;
	uint32_t cap = l->cap_pages ? l->cap_pages : 4;
	while (cap < want)
		cap *= 2;
	struct shard_page **t = realloc(l->pages, cap * sizeof(*t));
	if (!t)
		return -1;
	l->pages = t;
	l->cap_pages = cap;
	return 0;
}

int shard_layer_reserve(struct shard_layer *l, uint64_t tokens)
{
	uint32_t more = shard_layer_pages_short(l, tokens);
	uint32_t have = l->n_pages;

	if (!more)
		return 0;
	if (grow_table(l, have + more))
		return -1;
	for (uint32_t i = 0; i < more; i++) {
		l->pages[have + i] = page_new(l->g, have + i);
		if (!l->pages[have + i]) {
			while (i-- > 0)
				page_free(l->g, l->pages[have + i]);
			return -1;
		}
	}
	l->n_pages = have + more;
	return 0;
}

void shard_code_get(const struct shard_layer *l, uint32_t h, uint64_t t, uint64_t *code)
{
	const uint8_t *c = krn_code_at(shard_codes(l, h, t), l->g->words, t % SHARD_PAGE);

	krn_code_read(c, l->g->words, code);
}

void shard_code_put(const struct shard_layer *l, uint32_t h, uint64_t t, const uint64_t *code)
{
	uint8_t *c = (uint8_t *)krn_code_at(shard_codes(l, h, t), l->g->words, t % SHARD_PAGE);

	krn_code_write(c, l->g->words, code);
}

void shard_sums_add(const struct shard_layer *l, uint32_t h, uint64_t t, const float *v)
{
	float *restrict sum = shard_vsum(l, h, t);
	float *restrict span = shard_vspan(l, h, t);
	uint32_t dim = l->g->head_dim;

	if (t % SHARD_BLOCK == 0)
		memset(sum, 0, dim * sizeof(float));
	if (t % SHARD_SPAN == 0)
		memset(span, 0, dim * sizeof(float));
	for (uint32_t d = 0; d < dim; d++) {
		sum[d] += v[d];
		span[d] += v[d];
	}
}
