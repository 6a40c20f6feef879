/*
 * capture.c - the Q/K capture writer (see capture.h) and its CRC-32: the
 * reflected IEEE 802.3 polynomial 0xEDB88320, initial value and final xor
 * 0xFFFFFFFF, as zlib's crc32().
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int b = 0; b < 8; b++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* crc is the value returned for the bytes so far (0 to start). */
uint32_t capt_crc32(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	if (!crc_table[1])
		crc_init();
	crc = ~crc;
	for (size_t i = 0; i < len; i++)
		crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
	return ~crc;
}

int capture_init(struct capture *c, uint32_t head_dim, uint32_t n_heads,
		 uint32_t n_kv_heads, uint32_t n_layers, uint32_t cap)
{
	size_t per = (size_t)n_layers * cap;

	memset(c, 0, sizeof(*c));
	c->head_dim = head_dim;
	c->n_heads = n_heads;
	c->n_kv_heads = n_kv_heads;
	c->n_layers = n_layers;
	c->cap = cap;
	c->k = calloc(per * n_kv_heads * head_dim, sizeof(float));
	c->q = calloc(per * n_heads * head_dim, sizeof(float));
	if (!c->k || !c->q) {
		capture_free(c);
		return -1;
	}
	return 0;
}

void capture_free(struct capture *c)
{
	free(c->k);
	free(c->q);
	memset(c, 0, sizeof(*c));
}

void capture_add(struct capture *c, uint32_t l, uint32_t t, const float *q, const float *k)
{
	size_t kr = (size_t)c->n_kv_heads * c->head_dim, qr = (size_t)c->n_heads * c->head_dim;

	if (l >= c->n_layers || t >= c->cap)
		return;
	memcpy(c->k + ((size_t)l * c->cap + t) * kr, k, kr * sizeof(float));
	memcpy(c->q + ((size_t)l * c->cap + t) * qr, q, qr * sizeof(float));
	if (t + 1 > c->n_tokens)
		c->n_tokens = t + 1;
}

/* Writes len bytes and folds them into *crc. */
static int put(FILE *f, const void *buf, size_t len, uint32_t *crc)
{
	*crc = capt_crc32(*crc, buf, len);
	return fwrite(buf, 1, len, f) == len ? 0 : -1;
}

static void le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* The floats as little-endian bytes (a no-op copy on x86). */
static int put_floats(FILE *f, const float *x, size_t n, uint32_t *crc)
{
	uint8_t b[4];

	for (size_t i = 0; i < n; i++) {
		uint32_t u;
		memcpy(&u, &x[i], 4);
		le32(b, u);
		if (put(f, b, 4, crc))
			return -1;
	}
	return 0;
}

static int write_body(const struct capture *c, FILE *f, uint32_t *crc)
{
	uint32_t hdr[8] = { CAPT_VERSION, c->head_dim, c->n_heads, c->n_kv_heads,
			    c->n_layers, c->n_tokens, 0, 0 };
	size_t kr = (size_t)c->n_kv_heads * c->head_dim, qr = (size_t)c->n_heads * c->head_dim;
	uint8_t b[32];

	for (int i = 0; i < 8; i++)
		le32(b + 4 * i, hdr[i]);
	if (put(f, CAPT_MAGIC, 8, crc) || put(f, b, sizeof(b), crc))
		return -1;
	for (uint32_t l = 0; l < c->n_layers; l++) {
		const float *k = c->k + (size_t)l * c->cap * kr;
		const float *q = c->q + (size_t)l * c->cap * qr;
		if (put_floats(f, k, c->n_tokens * kr, crc) ||
		    put_floats(f, q, c->n_tokens * qr, crc))
			return -1;
	}
	return 0;
}

int capture_write(const struct capture *c, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "wb");
	uint32_t crc = 0, ignored = 0;
	uint8_t b[4];
	int rc;

	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	rc = write_body(c, f, &crc);
	if (rc == 0) {
		le32(b, crc);
		rc = put(f, b, 4, &ignored);
	}
	if (fclose(f))
		rc = -1;
	if (rc)
		snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
	return rc;
}
