/*
 * store.h - the paged key/value/code store of one layer of one sequence on
 * one shard.
 *
 * Tokens live in fixed-size pages (SHARD_PAGE tokens); a page holds, for
 * every kv head, the keys and values at full precision (the sequence's
 * dtype), the binary key codes, the key norms and the value sums of each
 * 64-token block and 256-token span, used for tail estimation.  Growth allocates new pages and grows only the
 * page-pointer table, never copying stored tokens.
 */
#ifndef DKV_SHARD_STORE_H
#define DKV_SHARD_STORE_H

#include <stddef.h>
#include <stdint.h>

#define SHARD_PAGE 4096u       /* tokens per page */
#define SHARD_BLOCK 64u        /* tokens per value summary block */
#define SHARD_PAGE_BLOCKS (SHARD_PAGE / SHARD_BLOCK)
#define SHARD_SPAN 256u        /* tokens per coarse value summary (span) */
#define SHARD_SPAN_BLOCKS (SHARD_SPAN / SHARD_BLOCK)
#define SHARD_PAGE_SPANS (SHARD_PAGE / SHARD_SPAN)

/* Geometry shared by all layers of a sequence. */
/*
 * Pages are dealt round-robin over the shards: page p belongs to shard
 * p % n_shards.  These are the only places that rule is written.
 */
static inline uint32_t shard_page_owner(uint64_t p, uint32_t n_shards)
{
	return (uint32_t)(p % n_shards);
}

/* The first page from p on that shard r of n_shards owns. */
static inline uint64_t shard_first_owned(uint64_t p, uint32_t r, uint32_t n_shards)
{
	return p + (r + n_shards - shard_page_owner(p, n_shards)) % n_shards;
}

/* The last page up to p that shard r of n_shards owns (p at least r). */
static inline uint64_t shard_last_owned(uint64_t p, uint32_t r, uint32_t n_shards)
{
	return p - (shard_page_owner(p, n_shards) + n_shards - r) % n_shards;
}

struct shard_geom {
	uint32_t n_kv_heads;
	uint32_t head_dim;
	uint32_t dtype;     /* DKV_F32, DKV_F16 or DKV_BF16 */
	uint32_t elt_size;  /* bytes per key/value element: 4 or 2 */
	uint32_t words;     /* code words (hash_bits / 64) */
	uint32_t sketch;    /* bytes of a key sketch (head_dim / 2), 0: none */
	/* placement: page p prefers NUMA node node[p % n_shards] (NULL: any) */
	uint32_t n_shards;
	const int *node;
	/*
	 * page memory: NULL for aligned_alloc/free; GPU shards give pinned,
	 * mapped host memory (shard/gpu.h), placed by the allocator
	 */
	void *(*page_alloc)(size_t bytes, void *ctx);
	void (*page_free)(void *mem, void *ctx);
	void *page_ctx;
};

/* One page; its arrays are carved from one allocation. */
struct shard_page {
	uint8_t *k;       /* [head][SHARD_PAGE][dim] elements */
	uint8_t *v;       /* same */
	uint8_t *codes;   /* [head][SHARD_PAGE / 32][words * 8][32]: see below */
	float *norms;     /* [head][SHARD_PAGE] */
	uint8_t *cls;     /* [head][SHARD_PAGE]: norm class of each key (0..7) */
	float *vsum;      /* [head][SHARD_PAGE_BLOCKS][dim]: sums of f32 values */
	float *vspan;     /* [head][SHARD_PAGE_SPANS][dim]: the same per span */
	uint8_t *sk;      /* [head][SHARD_PAGE][sketch]: 4-bit key sketches (krn.h) */
	float *sks;       /* [head][SHARD_PAGE]: each sketch's step */
};

struct shard_layer {
	const struct shard_geom *g;
	uint64_t len;            /* tokens stored */
	uint32_t n_pages;        /* pages allocated */
	uint32_t cap_pages;      /* slots in the page table */
	struct shard_page **pages;
};

/* Bytes of one page, split the way dkv_stats reports them. */
struct shard_page_bytes {
	size_t full, codes, summaries, total;
};

void shard_page_bytes(const struct shard_geom *g, struct shard_page_bytes *b);

void shard_layer_init(struct shard_layer *l, const struct shard_geom *g);
void shard_layer_free(struct shard_layer *l);

/* Pages needed beyond those allocated to hold `tokens` tokens. */
uint32_t shard_layer_pages_short(const struct shard_layer *l, uint64_t tokens);

/*
 * Make room for `tokens` tokens: allocate the missing pages.  All or
 * nothing: on failure no page is added.  Returns 0 or -1 (out of memory).
 */
int shard_layer_reserve(struct shard_layer *l, uint64_t tokens);

/* Addresses of token t of kv head h (t < pages allocated * SHARD_PAGE). */
static inline struct shard_page *shard_page_of(const struct shard_layer *l, uint64_t t)
{
	return l->pages[t / SHARD_PAGE];
}

static inline void *shard_key(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	const struct shard_geom *g = l->g;
	size_t row = (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
	return shard_page_of(l, t)->k + row * g->head_dim * g->elt_size;
}

static inline void *shard_value(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	const struct shard_geom *g = l->g;
	size_t row = (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
	return shard_page_of(l, t)->v + row * g->head_dim * g->elt_size;
}

/*
 * Codes are stored byte-sliced in groups of KRN_CODE_GROUP (32) keys:
 * byte b of the codes of 32 consecutive keys lie next to each other, so
 * one 32-byte load feeds the same byte of 32 keys to a vector lookup
 * (krn_ops.scan).  shard_codes() is the page's array for head h.
 */
static inline uint8_t *shard_codes(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	return shard_page_of(l, t)->codes + (size_t)h * SHARD_PAGE * l->g->words * 8;
}

/* Read or write the code (words uint64, little-endian) of key t. */
void shard_code_get(const struct shard_layer *l, uint32_t h, uint64_t t, uint64_t *code);
void shard_code_put(const struct shard_layer *l, uint32_t h, uint64_t t, const uint64_t *code);

static inline float *shard_norm(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	return shard_page_of(l, t)->norms + (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
}

static inline uint8_t *shard_cls(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	return shard_page_of(l, t)->cls + (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
}

/*
 * The 4-bit sketch of key t (krn_sketch_put of the key centred and
 * scaled per channel by the hash model) and its step: the coarse
 * filter's pool is re-ranked by them (shard_sketch_scores).
 */
static inline uint8_t *shard_sketch(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	size_t row = (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
	return shard_page_of(l, t)->sk + row * l->g->sketch;
}

static inline float *shard_sketch_step(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	return shard_page_of(l, t)->sks + (size_t)h * SHARD_PAGE + t % SHARD_PAGE;
}

/* Value sum of the block holding token t (blocks are SHARD_BLOCK aligned). */
static inline float *shard_vsum(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	size_t blk = (size_t)h * SHARD_PAGE_BLOCKS + (t % SHARD_PAGE) / SHARD_BLOCK;
	return shard_page_of(l, t)->vsum + blk * l->g->head_dim;
}

/*
 * Add value v (f32 [dim]) of token t to the sums of its block and span;
 * the first token of a block or span starts its sum afresh.  Tokens come
 * in order.
 */
void shard_sums_add(const struct shard_layer *l, uint32_t h, uint64_t t, const float *v);

/* Value sum of the span holding token t (spans are SHARD_SPAN aligned). */
static inline float *shard_vspan(const struct shard_layer *l, uint32_t h, uint64_t t)
{
	size_t sp = (size_t)h * SHARD_PAGE_SPANS + (t % SHARD_PAGE) / SHARD_SPAN;
	return shard_page_of(l, t)->vspan + sp * l->g->head_dim;
}

#endif
