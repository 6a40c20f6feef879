/* model.c - learned hash models and the model file (see model.h). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture.h"
#include "dashkv.h"
#include "krn.h"
#include "model.h"
#include "proj.h"

size_t rt_lhead_floats(uint32_t bits, uint32_t dim, uint32_t hidden)
{
	return 2 * (size_t)bits * dim + (size_t)hidden * dim + hidden +
	       (size_t)bits * hidden + bits + bits + 1;
}

int rt_lhead_alloc(struct rt_lhead *m, uint32_t bits, uint32_t dim, uint32_t hidden)
{
	float *p = calloc(rt_lhead_floats(bits, dim, hidden), sizeof(float));

	if (!p)
		return -1;
	m->bits = bits;
	m->dim = dim;
	m->hidden = hidden;
	m->buf = p;
	m->Wk = p;
	m->Wq = m->Wk + (size_t)bits * dim;
	m->W1 = m->Wq + (size_t)bits * dim;
	m->b1 = m->W1 + (size_t)hidden * dim;
	m->W2 = m->b1 + hidden;
	m->b2 = m->W2 + (size_t)bits * hidden;
	m->cosv = m->b2 + bits;
	return 0;
}

void rt_lhead_free(struct rt_lhead *m)
{
	free(m->buf);
	memset(m, 0, sizeof(*m));
}

void rt_lhead_init(struct rt_lhead *m, const float *P, uint64_t seed)
{
	size_t bd = (size_t)m->bits * m->dim;
	float *W1 = rt_hash_projection(m->hidden, m->dim, seed);

	memcpy(m->Wk, P, bd * sizeof(float));
	memcpy(m->Wq, P, bd * sizeof(float));
	memset(m->W1, 0, ((size_t)m->hidden * m->dim + m->hidden) * sizeof(float));
	if (W1)
		memcpy(m->W1, W1, (size_t)m->hidden * m->dim * sizeof(float));
	free(W1);
	memset(m->W2, 0, ((size_t)m->bits * m->hidden + m->bits) * sizeof(float));
	for (uint32_t h = 0; h <= m->bits; h++)
		m->cosv[h] = (float)cos(M_PI * h / m->bits);
}

int rt_lhead_copy(struct rt_lhead *dst, const struct rt_lhead *src)
{
	if (rt_lhead_alloc(dst, src->bits, src->dim, src->hidden))
		return -1;
	memcpy(dst->buf, src->buf,
	       rt_lhead_floats(src->bits, src->dim, src->hidden) * sizeof(float));
	return 0;
}

void rt_lhead_query_pre(const struct rt_lhead *m, const float *q, float *a, float *tmp)
{
	const struct krn_ops *ops = krn_get();
	uint32_t dim = m->dim;
	float qq, y[256];

	ops->dot(q, 1, q, dim, 1, dim, &qq, 1);
	float inv = qq > 0 ? 1.0f / sqrtf(qq) : 0.0f;
	ops->dot(q, 1, m->W1, dim, m->hidden, dim, tmp, m->hidden);
	for (uint32_t j = 0; j < m->hidden; j++)
		tmp[j] = tanhf(tmp[j] * inv + m->b1[j]);
	ops->dot(q, 1, m->Wq, dim, m->bits, dim, a, m->bits);
	for (uint32_t b = 0; b < m->bits; b++)
		a[b] = a[b] * inv + m->b2[b];
	ops->dot(tmp, 1, m->W2, m->hidden, m->bits, m->hidden, y, m->bits);
	for (uint32_t b = 0; b < m->bits; b++)
		a[b] += y[b];
}

void rt_lhead_query_code(const struct rt_lhead *m, const float *q, uint64_t *code,
			 float *tmp)
{
	float *a = tmp + m->hidden;

	rt_lhead_query_pre(m, q, a, tmp);
	memset(code, 0, m->bits / 8);
	for (uint32_t b = 0; b < m->bits; b++)
		if (a[b] > 0.0f)
			code[b / 64] |= 1ull << (b % 64);
}

/* ---- the whole model ---- */

int rt_model_alloc(struct rt_model *m, uint32_t bits, uint32_t dim, uint32_t hidden,
		   uint32_t n_layers, uint32_t n_kv_heads)
{
	size_t n = (size_t)n_layers * n_kv_heads;

	memset(m, 0, sizeof(*m));
	m->bits = bits;
	m->dim = dim;
	m->hidden = hidden;
	m->n_layers = n_layers;
	m->n_kv_heads = n_kv_heads;
	m->trained = calloc(n, 1);
	m->heads = calloc(n, sizeof(*m->heads));
	if (!m->trained || !m->heads)
		goto fail;
	for (size_t i = 0; i < n; i++)
		if (rt_lhead_alloc(&m->heads[i], bits, dim, hidden))
			goto fail;
	return 0;
fail:
	rt_model_free(m);
	return -1;
}

void rt_model_free(struct rt_model *m)
{
	if (m->heads)
		for (size_t i = 0; i < (size_t)m->n_layers * m->n_kv_heads; i++)
			rt_lhead_free(&m->heads[i]);
	free(m->heads);
	free(m->trained);
	memset(m, 0, sizeof(*m));
}

static void put32(uint8_t *p, uint32_t x)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(x >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static void header(const struct rt_model *m, uint8_t *h)
{
	uint32_t v[8] = { RT_MODEL_VERSION, m->bits, m->dim, m->hidden, m->n_layers,
			  m->n_kv_heads, 0, 0 };

	memcpy(h, RT_MODEL_MAGIC, 8);
	for (int i = 0; i < 8; i++)
		put32(h + 8 + 4 * i, v[i]);
}

/* fwrite that folds the bytes into the crc; 0 or -1 */
static int put(FILE *f, const void *x, size_t n, uint32_t *crc)
{
	*crc = rt_crc32(*crc, x, n);
	return fwrite(x, 1, n, f) == n ? 0 : -1;
}

int rt_model_write(const struct rt_model *m, const char *path, char *err)
{
	size_t nf = rt_lhead_floats(m->bits, m->dim, m->hidden);
	uint8_t h[RT_MODEL_HEADER], w[4];
	uint32_t crc = 0;
	int bad;
	FILE *f = fopen(path, "wb");

	if (!f)
		return krn_msgf(err, DKV_E_IO, "%s: %s", path, strerror(errno));
	header(m, h);
	bad = put(f, h, sizeof(h), &crc);
	for (size_t i = 0; i < (size_t)m->n_layers * m->n_kv_heads; i++) {
		put32(w, m->trained[i]);
		bad |= put(f, w, 4, &crc);
		bad |= put(f, m->heads[i].buf, nf * sizeof(float), &crc);
	}
	put32(w, crc);
	bad |= fwrite(w, 1, 4, f) != 4;
	bad |= fclose(f) != 0;
	if (bad)
		return krn_msgf(err, DKV_E_IO, "%s: write failed: %s", path, strerror(errno));
	return DKV_OK;
}

static int read_header(FILE *f, const char *path, uint8_t *h, struct rt_model *g, char *err)
{
	if (fread(h, 1, RT_MODEL_HEADER, f) != RT_MODEL_HEADER)
		return krn_msgf(err, DKV_E_INVAL, "%s: shorter than a model header", path);
	if (memcmp(h, RT_MODEL_MAGIC, 8))
		return krn_msgf(err, DKV_E_INVAL, "%s: not a DASH-KV model file (bad magic)",
			    path);
	if (get32(h + 8) != RT_MODEL_VERSION)
		return krn_msgf(err, DKV_E_INVAL, "%s: model version %u, this build reads %u",
			    path, get32(h + 8), RT_MODEL_VERSION);
	g->bits = get32(h + 12);
	g->dim = get32(h + 16);
	g->hidden = get32(h + 20);
	g->n_layers = get32(h + 24);
	g->n_kv_heads = get32(h + 28);
	if ((g->bits != 64 && g->bits != 128 && g->bits != 256) || g->dim < 8 ||
	    g->dim > DKV_MAX_HEAD_DIM || g->dim % 8 || !g->hidden || g->hidden > RT_MODEL_HIDDEN_MAX ||
	    !g->n_layers || g->n_layers > DKV_MAX_LAYERS || !g->n_kv_heads ||
	    g->n_kv_heads > DKV_MAX_HEADS || get32(h + 32) || get32(h + 36))
		return krn_msgf(err, DKV_E_INVAL,
			    "%s: bad model header (bits %u, head_dim %u, hidden %u, layers %u, "
			    "kv heads %u, flags %u)", path, g->bits, g->dim, g->hidden,
			    g->n_layers, g->n_kv_heads, get32(h + 32));
	return DKV_OK;
}

static int all_finite(const float *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return 0;
	return 1;
}

static int read_heads(FILE *f, const char *path, struct rt_model *m, uint32_t *crc, char *err)
{
	size_t nf = rt_lhead_floats(m->bits, m->dim, m->hidden);
	uint8_t w[4];

	for (size_t i = 0; i < (size_t)m->n_layers * m->n_kv_heads; i++) {
		if (fread(w, 1, 4, f) != 4 ||
		    fread(m->heads[i].buf, sizeof(float), nf, f) != nf)
			return krn_msgf(err, DKV_E_INVAL, "%s: truncated at head %zu", path, i);
		*crc = rt_crc32(rt_crc32(*crc, w, 4), m->heads[i].buf, nf * sizeof(float));
		if (get32(w) > 1)
			return krn_msgf(err, DKV_E_INVAL, "%s: head %zu: bad trained flag %u",
				    path, i, get32(w));
		m->trained[i] = (uint8_t)get32(w);
	}
	if (fread(w, 1, 4, f) != 4)
		return krn_msgf(err, DKV_E_INVAL, "%s: truncated before the crc", path);
	if (get32(w) != *crc)
		return krn_msgf(err, DKV_E_INVAL,
			    "%s: crc mismatch (file says %08x, data gives %08x): corrupt",
			    path, get32(w), *crc);
	if (fread(w, 1, 1, f) == 1)
		return krn_msgf(err, DKV_E_INVAL, "%s: bytes after the crc", path);
	for (size_t i = 0; i < (size_t)m->n_layers * m->n_kv_heads; i++)
		if (!all_finite(m->heads[i].buf, nf))
			return krn_msgf(err, DKV_E_INVAL, "%s: head %zu holds NaN or Inf",
				    path, i);
	return DKV_OK;
}

/*
 * Open path for reading without blocking on a FIFO or a device: only a
 * regular file is a model file.  *size gets its length.
 */
static FILE *open_regular(const char *path, uint64_t *size, int *rc, char *err)
{
	struct stat sb;
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	FILE *f;

	if (fd < 0) {
		*rc = krn_msgf(err, errno == ENOENT ? DKV_E_NOTFOUND : DKV_E_IO,
			       "%s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
		*rc = krn_msgf(err, DKV_E_INVAL, "%s: not a regular file", path);
		close(fd);
		return NULL;
	}
	*size = (uint64_t)sb.st_size;
	f = fdopen(fd, "rb");
	if (!f) {
		*rc = krn_msgf(err, DKV_E_NOMEM, "%s: %s", path, strerror(errno));
		close(fd);
	}
	return f;
}

/* The file size a header promises. */
static uint64_t model_file_size(const struct rt_model *g)
{
	uint64_t nf = rt_lhead_floats(g->bits, g->dim, g->hidden);

	return RT_MODEL_HEADER + (uint64_t)g->n_layers * g->n_kv_heads * (4 + 4 * nf) + 4;
}

int rt_model_read(const char *path, struct rt_model *out, char *err)
{
	return rt_model_read_for(path, NULL, out, err);
}

/* Open path and read its header into g, checking the file's size. */
static FILE *open_model(const char *path, uint8_t *h, struct rt_model *g, int *rc, char *err)
{
	uint64_t size = 0;
	FILE *f = open_regular(path, &size, rc, err);

	memset(g, 0, sizeof(*g));
	if (!f)
		return NULL;
	*rc = read_header(f, path, h, g, err);
	/* the size first: a header alone allocates nothing it does not back */
	if (*rc == DKV_OK && size != model_file_size(g))
		*rc = krn_msgf(err, DKV_E_INVAL, "%s: %llu bytes, its header promises "
			       "%llu: truncated or corrupt", path, (unsigned long long)size,
			       (unsigned long long)model_file_size(g));
	if (*rc != DKV_OK) {
		fclose(f);
		return NULL;
	}
	return f;
}

int rt_model_header(const char *path, struct rt_model *geom, char *err)
{
	uint8_t h[RT_MODEL_HEADER];
	int rc = DKV_OK;
	FILE *f = open_model(path, h, geom, &rc, err);

	if (f)
		fclose(f);
	return rc;
}

int rt_model_read_for(const char *path, const struct rt_model *want, struct rt_model *out,
		      char *err)
{
	struct rt_model g, m;
	uint8_t h[RT_MODEL_HEADER];
	uint32_t crc;
	int rc = DKV_OK;
	FILE *f = open_model(path, h, &g, &rc, err);

	memset(&m, 0, sizeof(m));
	if (!f)
		return rc;
	if (want)
		rc = rt_model_check(&g, want->bits, want->dim, want->n_layers, want->n_kv_heads,
				    err);
	if (rc == DKV_OK && want && want->hidden && g.hidden != want->hidden)
		rc = krn_msgf(err, DKV_E_INVAL, "%s: hidden width %u, %u a moment ago: "
			      "the file changed", path, g.hidden, want->hidden);
	if (rc == DKV_OK && rt_model_alloc(&m, g.bits, g.dim, g.hidden, g.n_layers,
					   g.n_kv_heads))
		rc = krn_msgf(err, DKV_E_NOMEM, "%s: out of memory for the model", path);
	crc = rt_crc32(0, h, sizeof(h));
	if (rc == DKV_OK)
		rc = read_heads(f, path, &m, &crc, err);
	fclose(f);
	if (rc != DKV_OK) {
		rt_model_free(&m);
		return rc;
	}
	*out = m;
	return DKV_OK;
}

int rt_model_check(const struct rt_model *m, uint32_t bits, uint32_t dim,
		   uint32_t n_layers, uint32_t n_kv_heads, char *err)
{
	if (m->bits != bits || m->dim != dim || m->n_layers != n_layers ||
	    m->n_kv_heads != n_kv_heads)
		return krn_msgf(err, DKV_E_INVAL,
			    "model is for %u bits, head_dim %u, %u layers, %u kv heads; "
			    "the sequence has %u, %u, %u, %u", m->bits, m->dim, m->n_layers,
			    m->n_kv_heads, bits, dim, n_layers, n_kv_heads);
	return DKV_OK;
}
