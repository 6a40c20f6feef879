/*
 * model_client.c - the client half of learn-daemon.sh: sequences
 * opened with a hash_model file, through dashkvd and embedded.
 *   model_client same ADDR MODEL       a sequence with hash_model MODEL on
 *                                      ADDR gives, bit for bit, the outputs
 *                                      of an embedded one given MODEL at
 *                                      open and of one that loads it after
 *                                      open (dashkv-bench --model), and not
 *                                      those of SimHash
 *   model_client refuse ADDR FILE CODE TEXT   opening with hash_model FILE
 *                                      fails with status CODE (a number)
 *                                      and a message holding TEXT; the
 *                                      client then still opens and steps
 * The geometry is dashkv-bench capture's: 2 layers, 8 query heads, 2 kv
 * heads, head_dim 64, 128 bits.  Exit 0 on success, 1 on a failed check.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "gen/kvgen.h"
#include "trace.h"

#define NL 2u
#define QH 8u
#define KVH 2u
#define HD 64u
#define NTOK 3000u
#define CHUNK 500u

static int failed;

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: ", \
	__FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); \
	failed = 1; } } while (0)

static dkv_client *conn(const char *addr)
{
	dkv_client *c = NULL;
	int rc = dkv_connect(addr, &c);

	if (rc) {
		fprintf(stderr, "FAIL connect %s: %s\n", addr, dkv_strerror(rc));
		exit(1);
	}
	return c;
}

static int open_seq(dkv_client *c, int32_t hash, const char *model, dkv_seq **s)
{
	dkv_seq_config cfg;

	dkv_seq_config_init(&cfg);
	cfg.n_layers = NL;
	cfg.n_q_heads = QH;
	cfg.n_kv_heads = KVH;
	cfg.head_dim = HD;
	cfg.max_tokens = 4096;
	cfg.hash = hash;
	cfg.hash_model = model;
	cfg.train_tokens = UINT32_MAX; /* no fit of its own */
	cfg.top_k = 32;
	cfg.candidates = 256;
	return dkv_seq_open(c, &cfg, s);
}

static size_t out_floats(void)
{
	return (size_t)NL * (NTOK / CHUNK * 4 + 4) * QH * HD;
}

/* Fill every layer in chunks (4 queries each), then 4 decode queries. */
static void script(dkv_seq *s, float *out)
{
	struct kvgen_params p;
	struct kvgen *g;
	float *k = malloc((size_t)CHUNK * KVH * HD * sizeof(float));
	float *v = malloc((size_t)CHUNK * KVH * HD * sizeof(float));
	float q[4 * QH * HD];
	int rc;

	kvgen_params_init(&p);
	p.n_kv_heads = KVH;
	p.n_q_heads = QH;
	p.head_dim = HD;
	g = kvgen_new(&p);
	if (!g || !k || !v)
		exit(1);
	for (uint32_t l = 0; l < NL; l++) {
		for (uint32_t t = 0; t < NTOK; t += CHUNK) {
			kvgen_kv(g, t, CHUNK, k, v);
			for (uint32_t j = 0; j < 4; j++)
				kvgen_queries(g, t + CHUNK - 4 + j, 10 + j, q + j * QH * HD);
			rc = dkv_step(s, l, q, 4, k, v, CHUNK, out);
			CHECK(rc == DKV_OK, "fill: %s", dkv_strerror(rc));
			out += 4 * QH * HD;
		}
		for (uint32_t j = 0; j < 4; j++)
			kvgen_queries(g, NTOK - 4 + j, 50 + j, q + j * QH * HD);
		rc = dkv_step(s, l, q, 4, NULL, NULL, 0, out);
		CHECK(rc == DKV_OK, "decode: %s", dkv_strerror(rc));
		out += 4 * QH * HD;
	}
	kvgen_free(g);
	free(k);
	free(v);
}

static float *run(const char *addr, int32_t hash, const char *model)
{
	dkv_client *c = conn(addr);
	float *out = calloc(out_floats(), sizeof(float));
	dkv_seq *s;
	int rc = open_seq(c, hash, model, &s);

	CHECK(rc == DKV_OK, "open on %s with %s: %s: %s", addr, model ? model : "no model",
	      dkv_strerror(rc), dkv_errmsg(c));
	if (rc)
		exit(1);
	script(s, out);
	dkv_seq_close(s);
	dkv_disconnect(c);
	return out;
}

static int do_same(const char *addr, const char *model)
{
	size_t bytes = out_floats() * sizeof(float);
	float *d = run(addr, DKV_HASH_LEARNED, model);
	float *e = run("embedded", DKV_HASH_LEARNED, model);
	float *b = NULL, *x = run("embedded", DKV_HASH_LEARNED, NULL);
	dkv_client *c = conn("embedded");
	dkv_seq *s;

	/* the bench's path: the file loaded right after open */
	CHECK(open_seq(c, DKV_HASH_LEARNED, NULL, &s) == DKV_OK, "open");
	CHECK(rt_seq_load_model(s, model, 0) == DKV_OK, "load: %s", dkv_errmsg(c));
	b = calloc(out_floats(), sizeof(float));
	script(s, b);
	dkv_disconnect(c);
	CHECK(!memcmp(d, e, bytes), "%s and embedded differ with hash_model", addr);
	CHECK(!memcmp(e, b, bytes), "hash_model at open and the model loaded after differ");
	CHECK(memcmp(e, x, bytes), "hash_model changed nothing: SimHash's outputs");
	free(d), free(e), free(b), free(x);
	return failed;
}

static int do_refuse(const char *addr, const char *file, int code, const char *text)
{
	dkv_client *c = conn(addr);
	dkv_seq *s = NULL;
	float *out;
	int rc = open_seq(c, DKV_HASH_LEARNED, file, &s);

	CHECK(rc == code, "%s: status %d (%s), expected %d: %s", file, rc, dkv_strerror(rc),
	      code, dkv_errmsg(c));
	CHECK(s == NULL, "*out written on failure");
	CHECK(strstr(dkv_errmsg(c), text), "\"%s\" not in \"%s\"", text, dkv_errmsg(c));
	/* the session (and the daemon) still serve */
	rc = open_seq(c, DKV_HASH_LEARNED, NULL, &s);
	CHECK(rc == DKV_OK, "open after the refusal: %s", dkv_errmsg(c));
	out = calloc(out_floats(), sizeof(float));
	if (rc == DKV_OK)
		script(s, out);
	free(out);
	dkv_disconnect(c);
	return failed;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "same"))
		return do_same(argv[2], argv[3]);
	if (argc == 6 && !strcmp(argv[1], "refuse"))
		return do_refuse(argv[2], argv[3], atoi(argv[4]), argv[5]);
	fprintf(stderr, "usage: model_client same ADDR MODEL | refuse ADDR FILE CODE TEXT\n");
	return 2;
}
