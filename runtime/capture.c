/* capture.c - the Q/K capture file (see capture.h and dashkv-train(1)). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "dashkv.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "capture files hold little-endian floats; this host is big-endian"
#endif

uint32_t rt_crc32(uint32_t crc, const void *buf, size_t n)
{
	static uint32_t table[256];
	static int ready;
	const uint8_t *p = buf;

	if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
			table[i] = c;
		}
		__atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
	}
	crc = ~crc;
	for (size_t i = 0; i < n; i++)
		crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static size_t layer_floats(const struct rt_capture *c)
{
	return (size_t)c->n_tokens * (c->n_kv_heads + c->n_heads) * c->head_dim;
}

const float *rt_capture_keys(const struct rt_capture *c, uint32_t l)
{
	return c->data + (size_t)l * layer_floats(c);
}

const float *rt_capture_queries(const struct rt_capture *c, uint32_t l)
{
	return rt_capture_keys(c, l) + (size_t)c->n_tokens * c->n_kv_heads * c->head_dim;
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t x)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(x >> (8 * i));
}

/* Check the header's fields; the expected payload size into *payload. */
static int check_header(const uint8_t *h, struct rt_capture *c, uint64_t *payload, char *err)
{
	uint32_t ver = get32(h + 8), dtype = get32(h + 32), flags = get32(h + 36);

	if (memcmp(h, RT_CAPT_MAGIC, 8))
		return krn_msgf(err, DKV_E_INVAL, "not a capture file (bad magic)");
	if (ver != RT_CAPT_VERSION)
		return krn_msgf(err, DKV_E_INVAL, "capture version %u, this reader knows %u",
			    ver, RT_CAPT_VERSION);
	c->head_dim = get32(h + 12);
	c->n_heads = get32(h + 16);
	c->n_kv_heads = get32(h + 20);
	c->n_layers = get32(h + 24);
	c->n_tokens = get32(h + 28);
	if (dtype != 0 || flags != 0)
		return krn_msgf(err, DKV_E_INVAL,
			    "capture dtype %u / flags %u: only f32 (0) and flags 0 are defined",
			    dtype, flags);
	if (!c->head_dim || c->head_dim > DKV_MAX_HEAD_DIM || !c->n_kv_heads ||
	    c->n_kv_heads > DKV_MAX_HEADS || !c->n_heads || c->n_heads > DKV_MAX_HEADS ||
	    c->n_heads % c->n_kv_heads || !c->n_layers || c->n_layers > DKV_MAX_LAYERS ||
	    !c->n_tokens || c->n_tokens > (1u << 24))
		return krn_msgf(err, DKV_E_INVAL,
			    "capture geometry out of range: head_dim %u, heads %u / kv %u, "
			    "layers %u, tokens %u", c->head_dim, c->n_heads, c->n_kv_heads,
			    c->n_layers, c->n_tokens);
	*payload = (uint64_t)layer_floats(c) * c->n_layers * sizeof(float);
	return DKV_OK;
}

static int read_body(FILE *f, struct rt_capture *c, const uint8_t *h, uint64_t payload,
		     const char *path, char *err)
{
	uint8_t tail[4], extra;
	uint32_t crc;

	c->data = malloc(payload);
	if (!c->data)
		return krn_msgf(err, DKV_E_NOMEM, "%s: out of memory for %llu bytes", path,
			    (unsigned long long)payload);
	if (fread(c->data, 1, payload, f) != payload || fread(tail, 1, 4, f) != 4)
		return krn_msgf(err, DKV_E_INVAL,
			    "%s: truncated (the header promises %llu bytes of data)", path,
			    (unsigned long long)payload);
	if (fread(&extra, 1, 1, f) == 1)
		return krn_msgf(err, DKV_E_INVAL, "%s: bytes after the crc", path);
	crc = rt_crc32(rt_crc32(0, h, RT_CAPT_HEADER), c->data, payload);
	if (crc != get32(tail))
		return krn_msgf(err, DKV_E_INVAL,
			    "%s: crc mismatch (file says %08x, data gives %08x): corrupt",
			    path, get32(tail), crc);
	return DKV_OK;
}

int rt_capture_read(const char *path, struct rt_capture *out, char *err)
{
	struct rt_capture c = { 0, 0, 0, 0, 0, NULL };
	uint8_t h[RT_CAPT_HEADER];
	uint64_t payload = 0;
	FILE *f = fopen(path, "rb");
	int rc;

	if (!f)
		return krn_msgf(err, errno == ENOENT ? DKV_E_NOTFOUND : DKV_E_IO,
			    "%s: %s", path, strerror(errno));
	if (fread(h, 1, sizeof(h), f) != sizeof(h))
		rc = krn_msgf(err, DKV_E_INVAL, "%s: shorter than a capture header", path);
	else
		rc = check_header(h, &c, &payload, err);
	if (rc == DKV_OK)
		rc = read_body(f, &c, h, payload, path, err);
	fclose(f);
	if (rc != DKV_OK) {
		free(c.data);
		return rc;
	}
	*out = c;
	return DKV_OK;
}

void rt_capture_free(struct rt_capture *c)
{
	free(c->data);
	c->data = NULL;
}

int rt_capture_begin(struct rt_capture_writer *w, const char *path,
		     uint32_t head_dim, uint32_t n_heads, uint32_t n_kv_heads,
		     uint32_t n_layers, uint32_t n_tokens, char *err)
{
	uint8_t h[RT_CAPT_HEADER];
	uint32_t v[8] = { RT_CAPT_VERSION, head_dim, n_heads, n_kv_heads, n_layers,
			  n_tokens, 0, 0 };

	memcpy(h, RT_CAPT_MAGIC, 8);
	for (int i = 0; i < 8; i++)
		put32(h + 8 + 4 * i, v[i]);
	w->f = fopen(path, "wb");
	if (!w->f)
		return krn_msgf(err, DKV_E_IO, "%s: %s", path, strerror(errno));
	w->crc = rt_crc32(0, h, sizeof(h));
	w->failed = fwrite(h, 1, sizeof(h), w->f) != sizeof(h);
	return DKV_OK;
}

void rt_capture_put(struct rt_capture_writer *w, const float *x, size_t n)
{
	w->crc = rt_crc32(w->crc, x, n * sizeof(float));
	if (fwrite(x, sizeof(float), n, w->f) != n)
		w->failed = 1;
}

int rt_capture_end(struct rt_capture_writer *w, char *err)
{
	uint8_t t[4];

	put32(t, w->crc);
	if (fwrite(t, 1, 4, w->f) != 4)
		w->failed = 1;
	if (fclose(w->f))
		w->failed = 1;
	w->f = NULL;
	if (w->failed)
		return krn_msgf(err, DKV_E_IO, "writing the capture failed: %s",
			    strerror(errno));
	return DKV_OK;
}
