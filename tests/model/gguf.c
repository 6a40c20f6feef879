/*
 * gguf.c - the GGUF reader (see gguf.h).  A cursor walks the buffer and
 * refuses every read past its end, so a truncated or corrupt file gets a
 * message naming what was being read and where.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGN 32
#define GGUF_TYPE_F32 0
/* Sanity bounds: far above any real file, low enough to stop silly allocations. */
#define GGUF_MAX_COUNT (1u << 24)
#define GGUF_MAX_DEPTH 2

struct cursor {
	const uint8_t *buf;
	size_t size, off;
	char *err;
	size_t errlen;
	int failed;
};

static int cfail(struct cursor *c, const char *fmt, ...)
{
	va_list ap;

	if (!c->failed && c->err && c->errlen) {
		va_start(ap, fmt);
		vsnprintf(c->err, c->errlen, fmt, ap);
		va_end(ap);
	}
	c->failed = 1;
	return -1;
}

static const uint8_t *take(struct cursor *c, uint64_t n, const char *what)
{
	const uint8_t *p;

	if (c->failed)
		return NULL;
	if (n > c->size - c->off) {
		cfail(c, "truncated: %s at offset %zu needs %llu bytes, %zu left",
		      what, c->off, (unsigned long long)n, c->size - c->off);
		return NULL;
	}
	p = c->buf + c->off;
	c->off += n;
	return p;
}

static uint32_t rd_u32(struct cursor *c, const char *what)
{
	const uint8_t *p = take(c, 4, what);

	if (!p)
		return 0;
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static uint64_t rd_u64(struct cursor *c, const char *what)
{
	const uint8_t *p = take(c, 8, what);
	uint64_t v = 0;

	for (int i = 7; p && i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static int rd_str(struct cursor *c, struct gguf_str *s, const char *what)
{
	s->len = rd_u64(c, what);
	s->s = (const char *)take(c, s->len, what);
	return s->s ? 0 : -1;
}

static uint64_t scalar_size(uint32_t type)
{
	switch (type) {
	case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL:
		return 1;
	case GGUF_UINT16: case GGUF_INT16:
		return 2;
	case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32:
		return 4;
	case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64:
		return 8;
	default:
		return 0;
	}
}

/* Skips one value of the given type; arrays nest at most GGUF_MAX_DEPTH. */
static int skip_value(struct cursor *c, uint32_t type, int depth)
{
	struct gguf_str s;

	if (type == GGUF_STRING)
		return rd_str(c, &s, "a string value");
	if (type == GGUF_ARRAY) {
		if (depth >= GGUF_MAX_DEPTH)
			return cfail(c, "arrays nested too deep at offset %zu", c->off);
		uint32_t et = rd_u32(c, "an array type");
		uint64_t n = rd_u64(c, "an array length");
		if (c->failed)
			return -1;
		if (et >= GGUF_NTYPES)
			return cfail(c, "unknown array element type %u at offset %zu", et, c->off);
		if (scalar_size(et)) {
			if (n > (c->size - c->off) / scalar_size(et))
				return cfail(c, "truncated: array of %llu elements at offset %zu",
					     (unsigned long long)n, c->off);
			return take(c, n * scalar_size(et), "array data") ? 0 : -1;
		}
		for (uint64_t i = 0; i < n; i++)
			if (skip_value(c, et, depth + 1))
				return -1;
		return 0;
	}
	if (!scalar_size(type))
		return cfail(c, "unknown value type %u at offset %zu", type, c->off);
	return take(c, scalar_size(type), "a value") ? 0 : -1;
}

static int read_kv(struct cursor *c, struct gguf_kv *kv)
{
	if (rd_str(c, &kv->key, "a metadata key"))
		return -1;
	kv->type = rd_u32(c, "a metadata type");
	if (c->failed)
		return -1;
	if (kv->type >= GGUF_NTYPES)
		return cfail(c, "metadata '%.*s': unknown type %u", (int)kv->key.len,
			     kv->key.s, kv->type);
	if (kv->type == GGUF_ARRAY) {
		size_t at = c->off;
		kv->arr_type = rd_u32(c, "an array type");
		kv->arr_n = rd_u64(c, "an array length");
		kv->val = c->buf + c->off;
		c->off = at;
	} else {
		kv->val = c->buf + c->off;
	}
	return skip_value(c, kv->type, 0);
}

static int check_tensor(struct cursor *c, struct gguf_tensor *t)
{
	uint64_t n = 1;

	if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
		return cfail(c, "tensor '%.*s': %u dimensions (1..%d)", (int)t->name.len,
			     t->name.s, t->n_dims, GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < t->n_dims; d++) {
		if (t->ne[d] == 0 || t->ne[d] > UINT64_MAX / 16 / n)
			return cfail(c, "tensor '%.*s': bad dimension %llu", (int)t->name.len,
				     t->name.s, (unsigned long long)t->ne[d]);
		n *= t->ne[d];
	}
	t->n_elems = n;
	return 0;
}

static int read_tensor_info(struct cursor *c, struct gguf_tensor *t)
{
	if (rd_str(c, &t->name, "a tensor name"))
		return -1;
	t->n_dims = rd_u32(c, "a tensor's dimension count");
	if (c->failed)
		return -1;
	if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
		return check_tensor(c, t);
	for (uint32_t d = 0; d < t->n_dims; d++)
		t->ne[d] = rd_u64(c, "a tensor dimension");
	t->type = rd_u32(c, "a tensor type");
	t->offset = rd_u64(c, "a tensor offset");
	if (c->failed)
		return -1;
	return check_tensor(c, t);
}

/* Places the tensors in the data section: aligned, inside the file. */
static int place_tensors(struct cursor *c, struct gguf *g)
{
	uint64_t a = g->alignment;
	size_t data = (c->off + a - 1) / a * a;

	if (data > c->size)
		return cfail(c, "truncated: the data section would start at %zu, file is %zu bytes",
			     data, c->size);
	g->data_off = data;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		struct gguf_tensor *t = &g->tensors[i];
		uint64_t room = c->size - data;
		if (t->offset % a)
			return cfail(c, "tensor '%.*s': offset %llu not aligned to %llu",
				     (int)t->name.len, t->name.s,
				     (unsigned long long)t->offset, (unsigned long long)a);
		if (t->type != GGUF_TYPE_F32)
			continue;
		if (t->offset > room || t->n_elems * 4 > room - t->offset)
			return cfail(c, "truncated: tensor '%.*s' (%llu bytes at data offset %llu) "
				     "runs past the end of the file", (int)t->name.len, t->name.s,
				     (unsigned long long)(t->n_elems * 4),
				     (unsigned long long)t->offset);
		t->data = c->buf + data + t->offset;
	}
	return 0;
}

static int read_alignment(struct cursor *c, struct gguf *g)
{
	const struct gguf_kv *kv = gguf_find_kv(g, "general.alignment");
	uint32_t a;

	g->alignment = GGUF_DEFAULT_ALIGN;
	if (!kv)
		return 0;
	if (kv->type != GGUF_UINT32)
		return cfail(c, "general.alignment has type %u, not uint32", kv->type);
	memcpy(&a, kv->val, 4);
	if (a == 0 || (a & (a - 1)) || a > 65536)
		return cfail(c, "general.alignment %u is not a power of two up to 65536", a);
	g->alignment = a;
	return 0;
}

static int read_header(struct cursor *c, struct gguf *g)
{
	const uint8_t *m = take(c, 4, "the magic");

	if (!m)
		return -1;
	if (memcmp(m, GGUF_MAGIC, 4))
		return cfail(c, "not a GGUF file (bad magic)");
	g->version = rd_u32(c, "the version");
	g->n_tensors = rd_u64(c, "the tensor count");
	g->n_kv = rd_u64(c, "the metadata count");
	if (c->failed)
		return -1;
	if (g->version != 2 && g->version != 3)
		return cfail(c, "GGUF version %u not supported (2 or 3)", g->version);
	if (g->n_tensors > GGUF_MAX_COUNT || g->n_kv > GGUF_MAX_COUNT)
		return cfail(c, "implausible counts: %llu tensors, %llu metadata",
			     (unsigned long long)g->n_tensors, (unsigned long long)g->n_kv);
	return 0;
}

int gguf_parse(uint8_t *buf, size_t size, struct gguf *g, char *err, size_t errlen)
{
	struct cursor c = { buf, size, 0, err, errlen, 0 };

	memset(g, 0, sizeof(*g));
	g->buf = buf;
	g->size = size;
	if (read_header(&c, g))
		goto fail;
	g->kv = calloc(g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
	g->tensors = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
	if (!g->kv || !g->tensors) {
		cfail(&c, "out of memory");
		goto fail;
	}
	for (uint64_t i = 0; i < g->n_kv; i++)
		if (read_kv(&c, &g->kv[i]))
			goto fail;
	for (uint64_t i = 0; i < g->n_tensors; i++)
		if (read_tensor_info(&c, &g->tensors[i]))
			goto fail;
	if (read_alignment(&c, g) || place_tensors(&c, g))
		goto fail;
	return 0;
fail:
	gguf_free(g);
	return -1;
}

int gguf_load(const char *path, struct gguf *g, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	long size;

	if (!f) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		snprintf(err, errlen, "%s: cannot size: %s", path, strerror(errno));
		goto close;
	}
	buf = malloc(size ? (size_t)size : 1);
	if (!buf) {
		snprintf(err, errlen, "%s: out of memory for %ld bytes", path, size);
		goto close;
	}
	if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
		snprintf(err, errlen, "%s: read failed", path);
		free(buf);
		goto close;
	}
	fclose(f);
	if (gguf_parse(buf, (size_t)size, g, err, errlen) == 0)
		return 0;
	/* prefix the message with the path */
	char tmp[256];
	snprintf(tmp, sizeof(tmp), "%s", err);
	snprintf(err, errlen, "%s: %s", path, tmp);
	return -1;
close:
	fclose(f);
	return -1;
}

void gguf_free(struct gguf *g)
{
	free(g->buf);
	free(g->kv);
	free(g->tensors);
	memset(g, 0, sizeof(*g));
}

static int str_eq(const struct gguf_str *s, const char *z)
{
	size_t n = strlen(z);

	return s->len == n && memcmp(s->s, z, n) == 0;
}

const struct gguf_kv *gguf_find_kv(const struct gguf *g, const char *key)
{
	for (uint64_t i = 0; i < g->n_kv; i++)
		if (str_eq(&g->kv[i].key, key))
			return &g->kv[i];
	return NULL;
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name)
{
	for (uint64_t i = 0; i < g->n_tensors; i++)
		if (str_eq(&g->tensors[i].name, name))
			return &g->tensors[i];
	return NULL;
}

int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, char *err, size_t errlen)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);
	uint64_t v = 0;
	int64_t sv;

	if (!kv) {
		snprintf(err, errlen, "metadata '%s' missing", key);
		return -1;
	}
	switch (kv->type) {
	case GGUF_UINT8: case GGUF_UINT16: case GGUF_UINT32: case GGUF_UINT64:
		memcpy(&v, kv->val, scalar_size(kv->type)); /* little-endian host */
		break;
	case GGUF_INT32:
		sv = (int32_t)((uint32_t)kv->val[0] | (uint32_t)kv->val[1] << 8 |
			       (uint32_t)kv->val[2] << 16 | (uint32_t)kv->val[3] << 24);
		if (sv < 0)
			goto bad;
		v = (uint64_t)sv;
		break;
	default:
		goto bad;
	}
	*out = v;
	return 0;
bad:
	snprintf(err, errlen, "metadata '%s' is not a non-negative integer", key);
	return -1;
}

int gguf_get_f32(const struct gguf *g, const char *key, float *out, char *err, size_t errlen)
{
	const struct gguf_kv *kv = gguf_find_kv(g, key);

	if (!kv || kv->type != GGUF_FLOAT32) {
		snprintf(err, errlen, "metadata '%s' %s", key, kv ? "is not a float32" : "missing");
		return -1;
	}
	memcpy(out, kv->val, 4);
	return 0;
}

int gguf_str_array(const struct gguf_kv *kv, struct gguf_str *out, uint64_t n)
{
	const uint8_t *p = kv->val;

	if (kv->type != GGUF_ARRAY || kv->arr_type != GGUF_STRING || kv->arr_n != n)
		return -1;
	/* parse time checked that every string lies inside the file */
	for (uint64_t i = 0; i < n; i++) {
		uint64_t len;
		memcpy(&len, p, 8);
		out[i].len = len;
		out[i].s = (const char *)p + 8;
		p += 8 + len;
	}
	return 0;
}
