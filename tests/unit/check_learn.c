/*
 * check_learn.c - learned hash models: training lowers its loss on a
 * fixed seed and is deterministic; the model file and the capture file
 * round-trip and refuse corrupt or mismatched input; keys re-encoded
 * after a model swap equal keys encoded fresh by the same model.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "capture.h"
#include "dashkv.h"
#include "gen/kvgen.h"
#include "hash.h"
#include "learn.h"
#include "model.h"
#include "trace.h"

#define DIM 64u
#define BITS 128u
#define NK 2048u
#define NQ 256u

/* Keys of kv head 0 and queries of its group at positions spread over the context. */
struct data {
	float *K, *Q, mu[DIM], *P;
};

static struct kvgen *gen(void)
{
	struct kvgen_params p;

	kvgen_params_init(&p);
	p.n_kv_heads = 2;
	p.n_q_heads = 4;
	p.head_dim = DIM;
	p.seed = 7;
	return kvgen_new(&p);
}

static void data_make(struct data *d)
{
	struct kvgen *g = gen();

	ck_assert_ptr_nonnull(g);
	d->K = malloc((size_t)NK * DIM * sizeof(float));
	d->Q = malloc((size_t)NQ * DIM * sizeof(float));
	ck_assert_ptr_nonnull(d->K);
	ck_assert_ptr_nonnull(d->Q);
	for (uint32_t t = 0; t < NK; t++)
		kvgen_key(g, 0, t, d->K + (size_t)t * DIM);
	for (uint32_t i = 0; i < NQ; i++)
		kvgen_query_draw(g, i % 2, NK / 4 + (uint64_t)i * (3 * NK / 4) / NQ, i,
				 d->Q + (size_t)i * DIM);
	memset(d->mu, 0, sizeof(d->mu));
	for (uint32_t t = 4; t < NK; t++)
		for (uint32_t j = 0; j < DIM; j++)
			d->mu[j] += d->K[(size_t)t * DIM + j] / (NK - 4);
	d->P = rt_hash_projection(BITS, DIM, 99);
	ck_assert_ptr_nonnull(d->P);
	kvgen_free(g);
}

static void data_free(struct data *d)
{
	free(d->K);
	free(d->Q);
	free(d->P);
}

static void train(const struct data *d, uint32_t steps, struct rt_lhead *m,
		  struct rt_learn_stats *st)
{
	struct rt_learn_opts o;

	rt_learn_defaults(&o);
	o.seed = 42;
	o.steps = steps;
	ck_assert_int_eq(rt_lhead_alloc(m, BITS, DIM, RT_MODEL_HIDDEN), 0);
	ck_assert_int_eq(rt_learn_head(d->K, NK, DIM, d->mu, d->Q, NQ, DIM, d->P, &o, m, st), 0);
}

START_TEST(training_lowers_loss)
{
	struct data d;
	struct rt_lhead a, b;
	struct rt_learn_stats sa, sb;

	data_make(&d);
	train(&d, 150, &a, &sa);
	ck_assert_uint_eq(sa.steps, 150);
	ck_assert(isfinite(sa.loss0) && isfinite(sa.loss1));
	/* the held-out loss drops well below the SimHash start */
	ck_assert_msg(sa.loss1 < 0.8 * sa.loss0, "loss %g -> %g", sa.loss0, sa.loss1);
	ck_assert_msg(sa.recall1 > sa.recall0, "recall %g -> %g", sa.recall0, sa.recall1);
	/* the fitted table is non-increasing in the distance */
	for (uint32_t h = 0; h < BITS; h++)
		ck_assert(a.cosv[h + 1] <= a.cosv[h]);
	/* same seed, same data: the same model, bit for bit */
	train(&d, 150, &b, &sb);
	ck_assert_mem_eq(a.buf, b.buf, rt_lhead_floats(BITS, DIM, RT_MODEL_HIDDEN) * sizeof(float));
	ck_assert(sa.loss1 == sb.loss1);
	rt_lhead_free(&a);
	rt_lhead_free(&b);
	data_free(&d);
}
END_TEST

START_TEST(too_little_data_keeps_simhash)
{
	struct data d;
	struct rt_lhead m;
	struct rt_learn_opts o;
	uint64_t c1[BITS / 64], c2[BITS / 64];
	float tmp[RT_MODEL_HIDDEN + BITS];

	data_make(&d);
	rt_learn_defaults(&o);
	ck_assert_int_eq(rt_lhead_alloc(&m, BITS, DIM, RT_MODEL_HIDDEN), 0);
	ck_assert_int_eq(rt_learn_head(d.K, 32, DIM, d.mu, d.Q, 4, DIM, d.P, &o, &m, NULL), 1);
	/* the untrained model is SimHash: the query code is sign(P q) */
	rt_lhead_query_code(&m, d.Q, c1, tmp);
	krn_get()->encode(d.P, BITS, DIM, d.Q, DIM, 1, c2);
	ck_assert_mem_eq(c1, c2, sizeof(c1));
	rt_lhead_free(&m);
	data_free(&d);
}
END_TEST

static char *tmp_path(const char *tag)
{
	static char buf[4][256];
	static int n;
	char *p = buf[n++ % 4];

	snprintf(p, 256, "%s/check_learn.%ld.%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
		 (long)getpid(), tag);
	return p;
}

START_TEST(model_file_round_trip)
{
	struct data d;
	struct rt_model m, r;
	struct rt_learn_stats st;
	char err[256];
	const char *path = tmp_path("model");
	uint64_t qa[BITS / 64], qb[BITS / 64], *ka, *kb;
	float tmp[RT_MODEL_HIDDEN + BITS];

	data_make(&d);
	ck_assert_int_eq(rt_model_alloc(&m, BITS, DIM, RT_MODEL_HIDDEN, 2, 2), 0);
	rt_lhead_free(&m.heads[3]);
	train(&d, 40, &m.heads[3], &st);
	m.trained[3] = 1;
	ck_assert_int_eq(rt_model_write(&m, path, err), DKV_OK);
	ck_assert_int_eq(rt_model_read(path, &r, err), DKV_OK);
	ck_assert_int_eq(rt_model_check(&r, BITS, DIM, 2, 2, err), DKV_OK);
	ck_assert_uint_eq(r.hidden, RT_MODEL_HIDDEN);
	ck_assert_mem_eq(r.trained, m.trained, 4);
	ck_assert_mem_eq(r.heads[3].buf, m.heads[3].buf,
			 rt_lhead_floats(BITS, DIM, RT_MODEL_HIDDEN) * sizeof(float));
	/* both encoders give the same codes after the round trip */
	ka = malloc((size_t)NK * BITS / 8);
	kb = malloc((size_t)NK * BITS / 8);
	krn_get()->encode(m.heads[3].Wk, BITS, DIM, d.K, DIM, NK, ka);
	krn_get()->encode(r.heads[3].Wk, BITS, DIM, d.K, DIM, NK, kb);
	ck_assert_mem_eq(ka, kb, (size_t)NK * BITS / 8);
	for (uint32_t i = 0; i < NQ; i++) {
		rt_lhead_query_code(&m.heads[3], d.Q + (size_t)i * DIM, qa, tmp);
		rt_lhead_query_code(&r.heads[3], d.Q + (size_t)i * DIM, qb, tmp);
		ck_assert_mem_eq(qa, qb, sizeof(qa));
	}
	/* a model for another geometry is refused with what differs */
	ck_assert_int_eq(rt_model_check(&r, 64, DIM, 2, 2, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "64"));
	free(ka);
	free(kb);
	rt_model_free(&r);
	rt_model_free(&m);
	unlink(path);
	data_free(&d);
}
END_TEST

/* Copy src to dst with byte `at` xor-ed with x (at < 0: truncate by -at). */
static void damaged_copy(const char *src, const char *dst, long at, uint8_t x)
{
	FILE *f = fopen(src, "rb"), *g = fopen(dst, "wb");
	long n;
	uint8_t *b;

	ck_assert_ptr_nonnull(f);
	ck_assert_ptr_nonnull(g);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = malloc(n);
	ck_assert_int_eq(fread(b, 1, n, f), n);
	if (at >= 0)
		b[at] ^= x;
	else
		n += at;
	ck_assert_int_eq(fwrite(b, 1, n, g), n);
	fclose(f);
	fclose(g);
	free(b);
}

START_TEST(corrupt_model_rejected)
{
	struct rt_model m, r;
	char err[256];
	const char *path = tmp_path("good"), *bad = tmp_path("bad");
	size_t nf = rt_lhead_floats(64, 8, 4);

	ck_assert_int_eq(rt_model_alloc(&m, 64, 8, 4, 1, 1), 0);
	for (size_t i = 0; i < nf; i++)
		m.heads[0].buf[i] = (float)i / 7.0f;
	m.trained[0] = 1;
	ck_assert_int_eq(rt_model_write(&m, path, err), DKV_OK);
	/* one flipped bit in the parameters: the crc says so */
	damaged_copy(path, bad, RT_MODEL_HEADER + 4 + 100, 0x10);
	ck_assert_int_eq(rt_model_read(bad, &r, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "crc"));
	/* truncated */
	damaged_copy(path, bad, -9, 0);
	ck_assert_int_eq(rt_model_read(bad, &r, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "truncated"));
	/* bad magic, bad version */
	damaged_copy(path, bad, 0, 0x20);
	ck_assert_int_eq(rt_model_read(bad, &r, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "magic"));
	damaged_copy(path, bad, 8, 0x02);
	ck_assert_int_eq(rt_model_read(bad, &r, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "version"));
	/* missing file */
	ck_assert_int_eq(rt_model_read("/nonexistent/dkv.model", &r, err),
			 DKV_E_NOTFOUND);
	/* the intact file still reads */
	ck_assert_int_eq(rt_model_read(path, &r, err), DKV_OK);
	rt_model_free(&r);
	rt_model_free(&m);
	unlink(path);
	unlink(bad);
}
END_TEST

START_TEST(capture_round_trip_and_corrupt)
{
	struct rt_capture_writer w;
	struct rt_capture c;
	char err[256];
	const char *path = tmp_path("capt"), *bad = tmp_path("captbad");
	uint32_t T = 5, H = 4, KV = 2, D = 8, L = 2;
	size_t nk = (size_t)T * KV * D, nq = (size_t)T * H * D;
	float *x = malloc((nk + nq) * L * sizeof(float));

	for (size_t i = 0; i < (nk + nq) * L; i++)
		x[i] = (float)i * 0.25f - 3.0f;
	ck_assert_int_eq(rt_capture_begin(&w, path, D, H, KV, L, T, err), DKV_OK);
	for (uint32_t l = 0; l < L; l++) {
		rt_capture_put(&w, x + l * (nk + nq), nk);
		rt_capture_put(&w, x + l * (nk + nq) + nk, nq);
	}
	ck_assert_int_eq(rt_capture_end(&w, err), DKV_OK);
	ck_assert_int_eq(rt_capture_read(path, &c, err), DKV_OK);
	ck_assert_uint_eq(c.head_dim, D);
	ck_assert_uint_eq(c.n_heads, H);
	ck_assert_uint_eq(c.n_kv_heads, KV);
	ck_assert_uint_eq(c.n_layers, L);
	ck_assert_uint_eq(c.n_tokens, T);
	ck_assert_mem_eq(rt_capture_keys(&c, 1), x + (nk + nq), nk * sizeof(float));
	ck_assert_mem_eq(rt_capture_queries(&c, 1), x + (nk + nq) + nk, nq * sizeof(float));
	rt_capture_free(&c);
	damaged_copy(path, bad, 60, 0x01);
	ck_assert_int_eq(rt_capture_read(bad, &c, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "crc"));
	damaged_copy(path, bad, -1, 0);
	ck_assert_int_eq(rt_capture_read(bad, &c, err), DKV_E_INVAL);
	damaged_copy(path, bad, 3, 0x40);
	ck_assert_int_eq(rt_capture_read(bad, &c, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "magic"));
	/* dtype 1 is not defined */
	damaged_copy(path, bad, 32, 0x01);
	ck_assert_int_eq(rt_capture_read(bad, &c, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "dtype"));
	/* the crc is the IEEE one: crc32("123456789") = cbf43926 */
	ck_assert_uint_eq(rt_crc32(0, "123456789", 9), 0xcbf43926u);
	free(x);
	unlink(path);
	unlink(bad);
}
END_TEST

/* ---- through the engine ---- */

#define E_N 3000u
#define E_CHUNK 500u
#define E_PQ 8u

static void seq_config(dkv_seq_config *cfg, uint32_t train_tokens)
{
	dkv_seq_config_init(cfg);
	cfg->n_layers = 1;
	cfg->n_q_heads = 4;
	cfg->n_kv_heads = 2;
	cfg->head_dim = DIM;
	cfg->hash_bits = BITS;
	cfg->hash = DKV_HASH_LEARNED;
	cfg->train_tokens = train_tokens;
	cfg->max_tokens = 4096;
	cfg->top_k = 64;
	cfg->candidates = 512;
}

static void seq_open(dkv_client *c, dkv_seq **s, uint32_t train_tokens)
{
	dkv_seq_config cfg;

	dkv_seq_config_init(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = 4;
	cfg.n_kv_heads = 2;
	cfg.head_dim = DIM;
	cfg.hash_bits = BITS;
	cfg.hash = DKV_HASH_LEARNED;
	cfg.train_tokens = train_tokens;
	cfg.max_tokens = 4096;
	cfg.top_k = 64;
	cfg.candidates = 512;
	ck_assert_int_eq(dkv_seq_open(c, &cfg, s), DKV_OK);
	ck_assert_int_eq(rt_seq_set_trace(*s, 1), DKV_OK);
}

/* Append tokens [t0, t1) in chunks, E_PQ queries at each chunk's end. */
static void seq_fill(dkv_seq *s, struct kvgen *g, uint32_t t0, uint32_t t1)
{
	float *k = malloc((size_t)E_CHUNK * 2 * DIM * sizeof(float));
	float *v = malloc((size_t)E_CHUNK * 2 * DIM * sizeof(float));
	float *q = malloc((size_t)E_PQ * 4 * DIM * sizeof(float));
	float *o = malloc((size_t)E_PQ * 4 * DIM * sizeof(float));

	for (uint32_t t = t0; t < t1; t += E_CHUNK) {
		uint32_t n = t1 - t < E_CHUNK ? t1 - t : E_CHUNK;
		kvgen_kv(g, t, n, k, v);
		for (uint32_t j = 0; j < E_PQ; j++)
			kvgen_queries(g, t + n - E_PQ + j, 100 + j, q + (size_t)j * 4 * DIM);
		ck_assert_int_eq(dkv_step(s, 0, q, E_PQ, k, v, n, o), DKV_OK);
	}
	free(k);
	free(v);
	free(q);
	free(o);
}

static void seq_decode(dkv_seq *s, struct kvgen *g, float *out, uint32_t *trace, int *nt)
{
	float q[4 * DIM];
	const uint32_t *idx;

	kvgen_queries(g, E_N - 1, 3, q);
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, out), DKV_OK);
	*nt = rt_seq_trace_exact(s, 1, &idx);
	ck_assert_int_gt(*nt, 0);
	memcpy(trace, idx, *nt * sizeof(uint32_t));
}

START_TEST(reencode_equals_fresh)
{
	struct kvgen *g = gen();
	dkv_client *c;
	dkv_seq *a, *b, *x;
	float oa[4 * DIM], ob[4 * DIM], ox[4 * DIM];
	uint32_t ta[1024], tb[1024], tx[1024];
	int na, nb, nx;
	struct rt_model m;
	char err[256];
	const char *path = tmp_path("seqmodel");

	/* a: everything stored, then trained: the stored keys are re-encoded */
	ck_assert_int_eq(dkv_connect("embedded", &c), DKV_OK);
	seq_open(c, &a, UINT32_MAX);
	seq_fill(a, g, 0, E_N);
	ck_assert_int_eq(dkv_seq_train(a), DKV_OK);
	ck_assert_int_eq(rt_seq_save_model(a, path), DKV_OK);
	seq_decode(a, g, oa, ta, &na);
	ck_assert_int_eq(rt_model_read(path, &m, err), DKV_OK);
	ck_assert_int_eq(m.trained[0] + m.trained[1], 2);
	rt_model_free(&m);
	/* b: the model loaded early, most keys encoded by it on append */
	seq_open(c, &b, UINT32_MAX);
	seq_fill(b, g, 0, E_CHUNK);
	ck_assert_int_eq(rt_seq_load_model(b, path, 0), DKV_OK);
	seq_fill(b, g, E_CHUNK, E_N);
	seq_decode(b, g, ob, tb, &nb);
	ck_assert_int_eq(na, nb);
	ck_assert_mem_eq(ta, tb, na * sizeof(uint32_t));
	ck_assert_mem_eq(oa, ob, sizeof(oa));
	/*
	 * the learned model changes what is taken or how the rest is
	 * estimated from the codes: SimHash's exact set or output differs
	 */
	seq_open(c, &x, UINT32_MAX);
	seq_fill(x, g, 0, E_N);
	seq_decode(x, g, ox, tx, &nx);
	ck_assert(nx != na || memcmp(tx, ta, na * sizeof(uint32_t)) || memcmp(ox, oa, sizeof(oa)));
	dkv_seq_close(a);
	dkv_seq_close(b);
	dkv_seq_close(x);
	dkv_disconnect(c);
	unlink(path);
	kvgen_free(g);
}
END_TEST

/* dkv_seq_open with hash_model = path: the status, *s written only on success. */
static int open_with_model(dkv_client *c, dkv_seq **s, const char *path)
{
	dkv_seq_config cfg;

	seq_config(&cfg, UINT32_MAX);
	cfg.hash_model = path;
	return dkv_seq_open(c, &cfg, s);
}

/* dkv_seq_open refuses path with rc and a message holding `what`. */
static void open_refused(dkv_client *c, const char *path, int rc, const char *what)
{
	dkv_seq *s = (dkv_seq *)&s;

	ck_assert_int_eq(open_with_model(c, &s, path), rc);
	ck_assert_ptr_eq(s, (dkv_seq *)&s);
	ck_assert_msg(strstr(dkv_errmsg(c), what), "\"%s\" not in \"%s\"", what,
		      dkv_errmsg(c));
}

START_TEST(hash_model_at_open)
{
	struct kvgen *g = gen();
	dkv_client *c;
	dkv_seq *a, *b, *x, *y;
	dkv_seq_config cfg;
	float oa[4 * DIM], ob[4 * DIM], ox[4 * DIM];
	uint32_t ta[1024], tb[1024], tx[1024];
	int na, nb, nx;
	struct rt_model m;
	char err[256];
	const char *path = tmp_path("open"), *bad = tmp_path("openbad");

	/* a: trained in-process, saved */
	ck_assert_int_eq(dkv_connect("embedded", &c), DKV_OK);
	seq_open(c, &a, UINT32_MAX);
	seq_fill(a, g, 0, E_N);
	ck_assert_int_eq(dkv_seq_train(a), DKV_OK);
	ck_assert_int_eq(rt_seq_save_model(a, path), DKV_OK);
	seq_decode(a, g, oa, ta, &na);
	/* b: the file given at open, every key encoded by it: a's outputs */
	ck_assert_int_eq(open_with_model(c, &b, path), DKV_OK);
	ck_assert_int_eq(rt_seq_set_trace(b, 1), DKV_OK);
	seq_fill(b, g, 0, E_N);
	seq_decode(b, g, ob, tb, &nb);
	ck_assert_int_eq(na, nb);
	ck_assert_mem_eq(ta, tb, na * sizeof(uint32_t));
	ck_assert_mem_eq(oa, ob, sizeof(oa));
	/* x: the same without the file: SimHash takes another exact set or
	 * estimates the rest otherwise */
	seq_open(c, &x, UINT32_MAX);
	seq_fill(x, g, 0, E_N);
	seq_decode(x, g, ox, tx, &nx);
	ck_assert(nx != na || memcmp(tx, ta, na * sizeof(uint32_t)) || memcmp(ox, oa, sizeof(oa)));
	/* corrupt, truncated, missing, not a file: refused, nothing opened */
	damaged_copy(path, bad, RT_MODEL_HEADER + 4 + 333, 0x08);
	open_refused(c, bad, DKV_E_INVAL, "crc mismatch");
	damaged_copy(path, bad, -5, 0);
	open_refused(c, bad, DKV_E_INVAL, "truncated");
	open_refused(c, "/nonexistent/dkv.model", DKV_E_NOTFOUND, "No such file");
	open_refused(c, "/", DKV_E_INVAL, "not a regular file");
	unlink(bad);
	ck_assert_int_eq(mkfifo(bad, 0600), 0);
	open_refused(c, bad, DKV_E_INVAL, "not a regular file"); /* no hang on a FIFO */
	unlink(bad);
	/* mismatched geometry: bits, layers, kv heads, head_dim */
	ck_assert_int_eq(rt_model_alloc(&m, 64, DIM, RT_MODEL_HIDDEN, 1, 2), 0);
	ck_assert_int_eq(rt_model_write(&m, bad, err), DKV_OK);
	rt_model_free(&m);
	open_refused(c, bad, DKV_E_INVAL, "model is for 64 bits");
	ck_assert_int_eq(rt_model_alloc(&m, BITS, DIM, RT_MODEL_HIDDEN, 2, 2), 0);
	ck_assert_int_eq(rt_model_write(&m, bad, err), DKV_OK);
	rt_model_free(&m);
	open_refused(c, bad, DKV_E_INVAL, "2 layers");
	ck_assert_int_eq(rt_model_alloc(&m, BITS, DIM, RT_MODEL_HIDDEN, 1, 1), 0);
	ck_assert_int_eq(rt_model_write(&m, bad, err), DKV_OK);
	rt_model_free(&m);
	open_refused(c, bad, DKV_E_INVAL, "1 kv heads");
	ck_assert_int_eq(rt_model_alloc(&m, BITS, 32, RT_MODEL_HIDDEN, 1, 2), 0);
	ck_assert_int_eq(rt_model_write(&m, bad, err), DKV_OK);
	rt_model_free(&m);
	open_refused(c, bad, DKV_E_INVAL, "head_dim 32");
	/* a model file needs the learned family; an empty path is refused */
	seq_config(&cfg, UINT32_MAX);
	cfg.hash = DKV_HASH_SIMHASH;
	cfg.hash_model = path;
	ck_assert_int_eq(dkv_seq_open(c, &cfg, &y), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(c), "DKV_HASH_LEARNED"));
	open_refused(c, "", DKV_E_INVAL, "empty");
	/* room for the sequence, not for reading its model: refused, all given back */
	uint64_t base = rt_client_memory_used(c);
	seq_open(c, &y, UINT32_MAX);
	uint64_t one = rt_client_memory_used(c) - base;
	dkv_seq_close(y);
	ck_assert_int_eq(dkv_set_memory_limit(c, base + one + 4096), DKV_OK);
	open_refused(c, path, DKV_E_NOSPACE, "reading the model");
	ck_assert_uint_eq(rt_client_memory_used(c), base);
	ck_assert_int_eq(dkv_set_memory_limit(c, 0), DKV_OK);
	dkv_seq_close(a);
	dkv_seq_close(b);
	dkv_seq_close(x);
	dkv_disconnect(c);
	unlink(path);
	unlink(bad);
	kvgen_free(g);
}
END_TEST

/* The number of heads of the model in use that are trained (saved to path). */
static int trained_heads(dkv_seq *s, const char *path)
{
	struct rt_model m;
	char err[256];
	int n;

	ck_assert_int_eq(rt_seq_save_model(s, path), DKV_OK);
	ck_assert_int_eq(rt_model_read(path, &m, err), DKV_OK);
	n = m.trained[0] + m.trained[1];
	rt_model_free(&m);
	return n;
}

START_TEST(auto_training_and_bad_model)
{
	struct kvgen *g = gen();
	dkv_client *c, *c2;
	dkv_seq *s, *s2, *t;
	dkv_seq_config cfg;
	struct rt_model m;
	char err[256];
	const char *path = tmp_path("auto"), *other = tmp_path("other");
	float q[4 * DIM], o1[4 * DIM], o2[4 * DIM];
	dkv_stats st = { .struct_size = sizeof(st) };
	int swapped_at = -1;

	/*
	 * train_tokens reached in the 4th chunk: the fit runs on a thread,
	 * encodes the 2000 keys stored then with its models, and swaps in
	 * once RT_SWAP_STEPS (8) steps have passed and the layer's queries
	 * have scanned 1.5 (fit work + 270 * 2000) keys.  Fit work 0: 810000,
	 * of which the 5th and 6th chunks give 8 * 2500 + 8 * 3000 and each
	 * decode step 3000: the swap is at the start of decode step 256.  So
	 * two equal sequences give equal outputs at every step, and no step
	 * sees a model before it is whole.
	 */
	ck_assert_int_eq(dkv_connect("embedded", &c), DKV_OK);
	ck_assert_int_eq(dkv_connect("embedded", &c2), DKV_OK);
	seq_open(c, &s, 2000);
	seq_open(c2, &s2, 2000);
	ck_assert_int_eq(rt_seq_set_fit_work(s, 0), DKV_OK);
	ck_assert_int_eq(rt_seq_set_fit_work(s2, 0), DKV_OK);
	seq_fill(s, g, 0, E_N);
	seq_fill(s2, g, 0, E_N);
	ck_assert_int_eq(trained_heads(s, path), 0);
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	ck_assert_uint_gt(st.bytes_training, 0); /* held, and charged */
	ck_assert_uint_ge(rt_client_memory_used(c), st.bytes_training);
	for (int i = 0; i < 258; i++) {
		kvgen_queries(g, E_N - 1, 50 + i, q);
		ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, o1), DKV_OK);
		ck_assert_int_eq(dkv_step(s2, 0, q, 1, NULL, NULL, 0, o2), DKV_OK);
		ck_assert_mem_eq(o1, o2, sizeof(o1));
		if (swapped_at < 0 && (i == 8 || i >= 255) && trained_heads(s, path) == 2)
			swapped_at = i;
	}
	ck_assert_int_eq(swapped_at, 256);
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	ck_assert_uint_eq(st.bytes_training, 0);
	/* the codes swapped in equal those of the same models given at open */
	ck_assert_int_eq(open_with_model(c2, &t, path), DKV_OK);
	seq_fill(t, g, 0, E_N);
	ck_assert_int_eq(dkv_step(t, 0, q, 1, NULL, NULL, 0, o2), DKV_OK);
	ck_assert_mem_eq(o1, o2, sizeof(o1));
	dkv_seq_close(t);
	ck_assert_int_eq(trained_heads(s2, path), 2);
	dkv_seq_close(s2);
	dkv_disconnect(c2);
	ck_assert_int_eq(rt_model_alloc(&m, 64, DIM, RT_MODEL_HIDDEN, 1, 2), 0);
	ck_assert_int_eq(rt_model_write(&m, other, err), DKV_OK);
	rt_model_free(&m);
	ck_assert_int_eq(rt_seq_load_model(s, other, 0), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(c), "64 bits"));
	ck_assert_int_eq(rt_seq_load_model(s, "/nonexistent/x.model", 0), DKV_E_NOTFOUND);
	/* a SimHash sequence has no model to load */
	ck_assert_int_eq(dkv_connect("embedded", &c2), DKV_OK);
	dkv_seq_config_init(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = 4;
	cfg.n_kv_heads = 2;
	cfg.head_dim = DIM;
	ck_assert_int_eq(dkv_seq_open(c2, &cfg, &t), DKV_OK);
	ck_assert_int_eq(rt_seq_load_model(t, path, 0), DKV_E_INVAL);
	ck_assert_int_eq(dkv_seq_train(t), DKV_OK);
	dkv_seq_close(t);
	dkv_disconnect(c2);
	dkv_seq_close(s);
	dkv_disconnect(c);
	unlink(path);
	unlink(other);
	kvgen_free(g);
}
END_TEST

/*
 * The fit's memory under a memory limit: the layer reaches train_tokens
 * with too little room, so its fit is deferred (stats say so, steps go on
 * with SimHash, the outputs of a SimHash sequence), dkv_seq_train says
 * DKV_E_NOSPACE, and with the limit lifted the fit starts at the next
 * step; every byte comes back at close, the fit's included.
 */
START_TEST(fit_memory_limit)
{
	struct kvgen *g = gen();
	dkv_client *c;
	dkv_seq *s, *x;
	dkv_seq_config cfg;
	dkv_stats st = { .struct_size = sizeof(st) };
	float q[4 * DIM], o1[4 * DIM], o2[4 * DIM];

	ck_assert_int_eq(dkv_connect("embedded", &c), DKV_OK);
	seq_open(c, &s, 2000);
	seq_config(&cfg, 2000);
	cfg.hash = DKV_HASH_SIMHASH;
	ck_assert_int_eq(dkv_seq_open(c, &cfg, &x), DKV_OK);
	seq_fill(s, g, 0, 1500);
	seq_fill(x, g, 0, 1500);
	/* room for the steps (their pages and scratch are taken), not the fit */
	ck_assert_int_eq(dkv_set_memory_limit(c, rt_client_memory_used(c) + 65536), DKV_OK);
	seq_fill(s, g, 1500, E_N);
	seq_fill(x, g, 1500, E_N);
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	ck_assert_uint_eq(st.fits_deferred, 1);
	ck_assert_uint_eq(st.bytes_training, 0);
	for (int i = 0; i < 12; i++) {
		kvgen_queries(g, E_N - 1, 70 + i, q);
		ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, o1), DKV_OK);
		ck_assert_int_eq(dkv_step(x, 0, q, 1, NULL, NULL, 0, o2), DKV_OK);
		ck_assert_mem_eq(o1, o2, sizeof(o1)); /* still SimHash */
	}
	ck_assert_int_eq(dkv_seq_train(s), DKV_E_NOSPACE);
	ck_assert_ptr_nonnull(strstr(dkv_errmsg(c), "memory limit"));
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, o1), DKV_OK);
	ck_assert_mem_eq(o1, o2, sizeof(o1));
	/* room again: the next step starts the fit */
	ck_assert_int_eq(dkv_set_memory_limit(c, 0), DKV_OK);
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, o1), DKV_OK);
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	ck_assert_uint_eq(st.fits_deferred, 0);
	ck_assert_uint_gt(st.bytes_training, 0);
	dkv_seq_close(s); /* waits for the fit */
	dkv_seq_close(x);
	ck_assert_uint_eq(rt_client_memory_used(c), 0);
	dkv_disconnect(c);
	kvgen_free(g);
}
END_TEST

/* Mean exact tokens per query head of one decode step at mass_target mt. */
static double exact_at(float mt, float *out)
{
	struct kvgen *g = gen();
	dkv_client *c;
	dkv_seq *s;
	dkv_seq_config cfg;
	dkv_stats st = { .struct_size = sizeof(st) };
	float *k = malloc((size_t)E_N * 2 * DIM * sizeof(float));
	float *v = malloc((size_t)E_N * 2 * DIM * sizeof(float)), q[4 * DIM];

	ck_assert_int_eq(dkv_connect("embedded", &c), DKV_OK);
	dkv_seq_config_init(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = 4;
	cfg.n_kv_heads = 2;
	cfg.head_dim = DIM;
	cfg.top_k = 64;
	cfg.candidates = 512;
	cfg.mass_target = mt;
	ck_assert_int_eq(dkv_seq_open(c, &cfg, &s), DKV_OK);
	kvgen_kv(g, 0, E_N, k, v);
	ck_assert_int_eq(dkv_step(s, 0, NULL, 0, k, v, E_N, NULL), DKV_OK);
	kvgen_queries(g, E_N - 1, 5, q);
	ck_assert_int_eq(dkv_step(s, 0, q, 1, NULL, NULL, 0, out), DKV_OK);
	ck_assert_int_eq(dkv_seq_stats(s, &st), DKV_OK);
	dkv_seq_close(s);
	dkv_disconnect(c);
	free(k);
	free(v);
	kvgen_free(g);
	return st.last_exact_tokens;
}

START_TEST(adaptive_k)
{
	float o0[4 * DIM], o1[4 * DIM], o2[4 * DIM];
	double fixed = exact_at(0.0f, o0), low = exact_at(0.3f, o1), high = exact_at(0.99f, o2);

	/* fixed: sinks + window + top_k; adaptive: never above, fewer for less mass */
	ck_assert(fabs(fixed - (4 + 64 + 64)) < 1e-9);
	ck_assert_msg(low < high && high <= fixed, "exact %g / %g / %g", low, high, fixed);
	ck_assert(low >= 4 + 64 + 1);
	for (uint32_t i = 0; i < 4 * DIM; i++)
		ck_assert(isfinite(o1[i]) && isfinite(o2[i]));
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("learn");
	TCase *t = tcase_create("core");

	tcase_set_timeout(t, 300); /* the fits are slow under a sanitizer on a busy machine */
	tcase_add_test(t, training_lowers_loss);
	tcase_add_test(t, too_little_data_keeps_simhash);
	tcase_add_test(t, model_file_round_trip);
	tcase_add_test(t, corrupt_model_rejected);
	tcase_add_test(t, capture_round_trip_and_corrupt);
	tcase_add_test(t, reencode_equals_fresh);
	tcase_add_test(t, auto_training_and_bad_model);
	tcase_add_test(t, hash_model_at_open);
	tcase_add_test(t, fit_memory_limit);
	tcase_add_test(t, adaptive_k);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *r = srunner_create(suite());
	int failed;

	srunner_run_all(r, CK_NORMAL);
	failed = srunner_ntests_failed(r);
	srunner_free(r);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
