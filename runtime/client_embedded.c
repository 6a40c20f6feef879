/*
 * client_embedded.c - the "embedded" transport: the engine runs in the
 * calling process (engine.c).  Also the internal hooks of trace.h, which
 * only an embedded sequence has.
 */
#include <stdlib.h>

#include "client.h"
#include "engine.h"
#include "krn.h"
#include "trace.h"

struct emb_client {
	struct dkv_client c;   /* first: a dkv_client * points here */
	struct rt_engine *eng;
};

struct emb_seq {
	struct dkv_seq s;      /* first: a dkv_seq * points here */
	struct rt_seq *rs;
};

static struct rt_engine *eng_of(const dkv_client *c)
{
	return ((const struct emb_client *)c)->eng;
}

static struct rt_seq *rs_of(const dkv_seq *s)
{
	return ((const struct emb_seq *)s)->rs;
}

static int emb_connect(const char *where, dkv_client **out, char *err)
{
	struct emb_client *ec = calloc(1, sizeof(*ec));
	int rc;

	(void)where; /* the scheme "embedded" is the whole address */
	if (!ec)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	rc = rt_engine_new(&ec->eng, err);
	if (rc) {
		free(ec);
		return rc;
	}
	*out = &ec->c;
	return DKV_OK;
}

static void emb_disconnect(dkv_client *c)
{
	rt_engine_free(eng_of(c));
	free(c);
}

static int emb_set_memory_limit(dkv_client *c, uint64_t bytes, char *err)
{
	(void)err;
	rt_engine_set_limit(eng_of(c), bytes);
	return DKV_OK;
}

static int emb_seq_open(dkv_client *c, const dkv_seq_config *cfg, dkv_seq **out,
			char *err)
{
	struct emb_seq *es = calloc(1, sizeof(*es));
	int rc;

	if (!es)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	rc = rt_seq_open(eng_of(c), cfg, &es->rs, err);
	if (rc) {
		free(es);
		return rc;
	}
	*out = &es->s;
	return DKV_OK;
}

static int emb_seq_close(dkv_seq *s, char *err)
{
	(void)err;
	rt_seq_close(rs_of(s));
	free(s);
	return DKV_OK;
}

static int emb_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		    const void *k, const void *v, uint32_t n_new, void *out,
		    char *err)
{
	return rt_seq_step(rs_of(s), layer, q, n_q, k, v, n_new, out, err);
}

static int emb_length(const dkv_seq *s, uint32_t layer, uint64_t *tokens,
		      char *err)
{
	return rt_seq_len(rs_of(s), layer, tokens, err);
}

static int emb_train(dkv_seq *s, char *err)
{
	return rt_seq_train_now(rs_of(s), err);
}

static int emb_stats(const dkv_seq *s, dkv_stats *st, char *err)
{
	(void)err;
	rt_seq_get_stats(rs_of(s), st);
	return DKV_OK;
}

const struct rt_transport_ops rt_embedded_ops = {
	.scheme = "embedded",
	.connect = emb_connect,
	.disconnect = emb_disconnect,
	.set_memory_limit = emb_set_memory_limit,
	.seq_open = emb_seq_open,
	.seq_close = emb_seq_close,
	.step = emb_step,
	.length = emb_length,
	.train = emb_train,
	.stats = emb_stats,
};

/* ---- internal hooks (trace.h) ---- */

static int embedded(const dkv_seq *s)
{
	return s && s->c->ops == &rt_embedded_ops;
}

int rt_seq_set_trace(dkv_seq *s, int on)
{
	if (!embedded(s))
		return DKV_E_INVAL;
	rt_seq_trace_on(rs_of(s), on);
	return DKV_OK;
}

int rt_seq_trace_exact(const dkv_seq *s, uint32_t qhead, const uint32_t **idx)
{
	if (!embedded(s) || !idx)
		return DKV_E_INVAL;
	return rt_seq_trace_get(rs_of(s), qhead, idx);
}

int rt_seq_set_fit_work(dkv_seq *s, double units)
{
	if (!embedded(s) || !(units >= 0))
		return DKV_E_INVAL;
	rt_seq_fit_work(rs_of(s), units);
	return DKV_OK;
}

uint64_t rt_client_memory_used(const dkv_client *c)
{
	return c && c->ops == &rt_embedded_ops ? rt_engine_used(eng_of(c)) : 0;
}

const char *rt_kernel_name(void)
{
	return krn_get()->name;
}

int rt_seq_load_model(dkv_seq *s, const char *path, uint32_t layer0)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	if (!embedded(s) || !path)
		return DKV_E_INVAL;
	rc = rt_seq_model_load(rs_of(s), path, layer0, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int rt_seq_save_model(const dkv_seq *s, const char *path)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	if (!embedded(s) || !path)
		return DKV_E_INVAL;
	rc = rt_seq_model_save(rs_of(s), path, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}
