/*
 * capture.h - the Q/K capture file: keys and queries of every layer of
 * one sequence, as a model produced them, for training hash models
 * offline (dashkv-train(1) documents the format).
 *
 * Little-endian, no padding: char magic[8] = "DKVCAPT1"; uint32 version
 * (1), head_dim, n_heads (query heads), n_kv_heads, n_layers, n_tokens,
 * dtype (0 = f32), flags (0); then per layer: keys
 * float[n_tokens][n_kv_heads][head_dim], queries
 * float[n_tokens][n_heads][head_dim] (after RoPE, queries unscaled);
 * then uint32 crc32 (IEEE 802.3) of every byte before it.
 */
#ifndef DKV_RT_CAPTURE_H
#define DKV_RT_CAPTURE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "msg.h"

#define RT_CAPT_MAGIC "DKVCAPT1"
#define RT_CAPT_VERSION 1u
#define RT_CAPT_HEADER 40u

struct rt_capture {
	uint32_t head_dim, n_heads, n_kv_heads, n_layers, n_tokens;
	float *data; /* per layer: keys then queries, as in the file */
};

/* CRC-32 (IEEE 802.3, reflected 0xedb88320), continued from crc (0 first). */
uint32_t rt_crc32(uint32_t crc, const void *buf, size_t n);

/* Keys [n_tokens][n_kv_heads][head_dim] and queries of layer l. */
const float *rt_capture_keys(const struct rt_capture *c, uint32_t l);
const float *rt_capture_queries(const struct rt_capture *c, uint32_t l);

/*
 * Read a whole capture file.  Returns DKV_OK or DKV_E_NOTFOUND,
 * DKV_E_IO, DKV_E_INVAL (bad magic, version, geometry, size or crc),
 * DKV_E_NOMEM, with a message in err.
 */
int rt_capture_read(const char *path, struct rt_capture *out, char *err);
void rt_capture_free(struct rt_capture *c);

/*
 * Streaming writer: rt_capture_begin writes the header, then the caller
 * writes each layer's keys then queries with rt_capture_put (any number
 * of calls, in file order), then rt_capture_end appends the crc.
 */
struct rt_capture_writer {
	FILE *f;
	uint32_t crc;
	int failed;
};

int rt_capture_begin(struct rt_capture_writer *w, const char *path,
		     uint32_t head_dim, uint32_t n_heads, uint32_t n_kv_heads,
		     uint32_t n_layers, uint32_t n_tokens, char *err);
void rt_capture_put(struct rt_capture_writer *w, const float *x, size_t n);
int rt_capture_end(struct rt_capture_writer *w, char *err);

#endif
