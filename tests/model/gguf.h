/*
 * gguf.h - a small reader of GGUF files (version 2 and 3): the header, the
 * metadata key/values, the tensor infos and the aligned tensor data.  The
 * whole file is read into memory and every offset is checked against its
 * size; only F32 tensors can be fetched.
 */
#ifndef DKV_GGUF_H
#define DKV_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as numbered by the GGUF format. */
enum gguf_type {
	GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3,
	GGUF_UINT32 = 4, GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7,
	GGUF_STRING = 8, GGUF_ARRAY = 9, GGUF_UINT64 = 10, GGUF_INT64 = 11,
	GGUF_FLOAT64 = 12, GGUF_NTYPES
};

#define GGUF_MAX_DIMS 4

struct gguf_str {
	uint64_t len;
	const char *s; /* not NUL-terminated */
};

struct gguf_kv {
	struct gguf_str key;
	uint32_t type;
	uint32_t arr_type; /* element type when type == GGUF_ARRAY */
	uint64_t arr_n;    /* elements when type == GGUF_ARRAY */
	const uint8_t *val; /* the value (or the array's first element) in the file */
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] varies fastest */
	uint32_t type;             /* 0 = F32 */
	uint64_t offset;           /* from the start of the data section */
	uint64_t n_elems;
	const void *data;          /* only for F32 tensors, else NULL */
};

struct gguf {
	uint8_t *buf;
	size_t size;
	uint32_t version;
	uint64_t n_kv, n_tensors;
	struct gguf_kv *kv;
	struct gguf_tensor *tensors;
	uint64_t alignment;
	size_t data_off;
};

/* Loads path; on failure returns -1 with a message in err (errlen bytes). */
int gguf_load(const char *path, struct gguf *g, char *err, size_t errlen);
/* Parses size bytes at buf (taken over: freed by gguf_free). */
int gguf_parse(uint8_t *buf, size_t size, struct gguf *g, char *err, size_t errlen);
void gguf_free(struct gguf *g);

const struct gguf_kv *gguf_find_kv(const struct gguf *g, const char *key);
const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name);
/* A scalar integer (any integer type) or -1 with a message. */
int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, char *err, size_t errlen);
int gguf_get_f32(const struct gguf *g, const char *key, float *out, char *err, size_t errlen);
/* The n strings of a string array into out (bounds checked at parse time). */
int gguf_str_array(const struct gguf_kv *kv, struct gguf_str *out, uint64_t n);

#endif /* DKV_GGUF_H */
