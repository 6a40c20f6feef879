/*
 * model.h - learned asymmetric hash models and their file.
 *
 * One model per (layer, kv head).  Keys: code = sign(Wk (k - mu)), a
 * linear projection cheap enough for every append.  Queries, with
 * u = q / |q|:
 *	code = sign(Wq u + W2 tanh(W1 u + b1) + b2)
 * a linear part plus one hidden layer, so the two sides are different
 * functions.  cosv[h] is the fitted mean cosine of (q, k - mu) at Hamming
 * distance h (non-increasing in h): the coarse estimate of a key is
 * scale * |q| * |k - mu| * cosv[h], as SimHash's is with cos(pi h / bits).
 *
 * The file (dashkv-train(1)): little-endian, no padding: char magic[8]
 * = "DKVMODL1"; uint32 version (1), bits, head_dim, hidden, n_layers,
 * n_kv_heads, flags (0), reserved (0); then per layer, per kv head:
 * uint32 trained (0 or 1) and the floats of rt_lhead in the order Wk, Wq,
 * W1, b1, W2, b2, cosv; then uint32 crc32 of every byte before it.
 */
#ifndef DKV_RT_MODEL_H
#define DKV_RT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

#define RT_MODEL_MAGIC "DKVMODL1"
#define RT_MODEL_VERSION 1u
#define RT_MODEL_HEADER 40u
#define RT_MODEL_HIDDEN 64u
#define RT_MODEL_HIDDEN_MAX 1024u

struct rt_lhead {
	uint32_t bits, dim, hidden;
	float *Wk;   /* [bits][dim] */
	float *Wq;   /* [bits][dim] */
	float *W1;   /* [hidden][dim] */
	float *b1;   /* [hidden] */
	float *W2;   /* [bits][hidden] */
	float *b2;   /* [bits] */
	float *cosv; /* [bits + 1] */
	float *buf;  /* the one allocation behind all of them */
};

/* Floats of one head's parameters, in file order. */
size_t rt_lhead_floats(uint32_t bits, uint32_t dim, uint32_t hidden);
int rt_lhead_alloc(struct rt_lhead *m, uint32_t bits, uint32_t dim, uint32_t hidden);
void rt_lhead_free(struct rt_lhead *m);
/* The SimHash start: Wk = Wq = P, W1 small random (seed), W2 = b = 0. */
void rt_lhead_init(struct rt_lhead *m, const float *P, uint64_t seed);
/* A deep copy (dst allocated here); 0 or -1 on ENOMEM. */
int rt_lhead_copy(struct rt_lhead *dst, const struct rt_lhead *src);

/*
 * The query's pre-sign outputs a [bits] (tmp: hidden floats); the code
 * sets bit b when a[b] > 0 (tmp: hidden + bits floats).
 */
void rt_lhead_query_pre(const struct rt_lhead *m, const float *q, float *a, float *tmp);
void rt_lhead_query_code(const struct rt_lhead *m, const float *q, uint64_t *code,
			 float *tmp);

/* Every (layer, kv head) of a sequence. */
struct rt_model {
	uint32_t bits, dim, hidden, n_layers, n_kv_heads;
	uint8_t *trained;       /* [n_layers * n_kv_heads] */
	struct rt_lhead *heads; /* [n_layers * n_kv_heads] */
};

int rt_model_alloc(struct rt_model *m, uint32_t bits, uint32_t dim, uint32_t hidden,
		   uint32_t n_layers, uint32_t n_kv_heads);
void rt_model_free(struct rt_model *m);

/* Returns DKV_OK or DKV_E_IO with a message. */
int rt_model_write(const struct rt_model *m, const char *path, char *err);
/*
 * Read a model file.  Returns DKV_OK, DKV_E_NOTFOUND, DKV_E_IO,
 * DKV_E_NOMEM or DKV_E_INVAL (bad magic, version, size, crc, or
 * non-finite parameters), with a message.
 */
int rt_model_read(const char *path, struct rt_model *out, char *err);
/*
 * The same, for a sequence: want's bits, dim, n_layers and n_kv_heads
 * (and hidden, unless 0) are checked against the header before anything
 * is allocated (DKV_E_INVAL with both geometries).  Only a regular file is
 * read (never blocks on a FIFO or a device), and only when its size is the
 * one its header promises.
 */
int rt_model_read_for(const char *path, const struct rt_model *want, struct rt_model *out,
		      char *err);
/* The geometry of a model file (its header, its size checked); nothing allocated. */
int rt_model_header(const char *path, struct rt_model *geom, char *err);
/* DKV_OK when m fits the geometry, else DKV_E_INVAL and what differs. */
int rt_model_check(const struct rt_model *m, uint32_t bits, uint32_t dim,
		   uint32_t n_layers, uint32_t n_kv_heads, char *err);

#endif
