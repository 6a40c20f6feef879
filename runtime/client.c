/*
 * client.c - the public API (libdashkv-client) over its transports.  This
 * release has the embedded transport: the engine runs in this process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "trace.h"
#include "krn.h"

void dkv_seq_config_init(dkv_seq_config *cfg)
{
	if (cfg)
		rt_config_defaults(cfg);
}

static int connect_embedded(dkv_client **out)
{
	char err[RT_ERRLEN] = "";
	dkv_client *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return DKV_E_NOMEM;
	rc = rt_engine_new(&c->eng, err);
	if (rc) {
		fprintf(stderr, "dashkv: %s\n", err);
		free(c);
		return rc;
	}
	c->transport = CL_EMBEDDED;
	*out = c;
	return DKV_OK;
}

int dkv_connect(const char *address, dkv_client **out)
{
	if (!out)
		return DKV_E_INVAL;
	if (!address || !*address) {
		address = getenv("DASHKV_ADDRESS");
		if (!address || !*address)
			address = "embedded";
	}
	if (!strcmp(address, "embedded"))
		return connect_embedded(out);
	if (!strncmp(address, "unix:", 5))
		return DKV_E_UNSUPPORTED; /* the daemon transport is not in this release */
	return DKV_E_INVAL;
}

void dkv_disconnect(dkv_client *c)
{
	if (!c)
		return;
	while (c->seqs)
		dkv_seq_close(c->seqs);
	cl_forget(c);
	rt_engine_free(c->eng);
	free(c);
}

int dkv_set_memory_limit(dkv_client *c, uint64_t bytes)
{
	if (!c)
		return DKV_E_INVAL;
	rt_engine_set_limit(c->eng, bytes);
	return DKV_OK;
}

int dkv_seq_open(dkv_client *c, const dkv_seq_config *cfg, dkv_seq **out)
{
	char err[RT_ERRLEN] = "";
	dkv_seq *s;
	int rc;

	if (!c)
		return DKV_E_INVAL;
	if (!out)
		return cl_set_error(c, DKV_E_INVAL, "out is NULL");
	s = calloc(1, sizeof(*s));
	if (!s)
		return cl_set_error(c, DKV_E_NOMEM, "out of memory");
	rc = rt_seq_open(c->eng, cfg, &s->rs, err);
	if (rc) {
		free(s);
		return cl_set_error(c, rc, err);
	}
	s->c = c;
	s->next = c->seqs;
	if (c->seqs)
		c->seqs->prev = s;
	c->seqs = s;
	*out = s;
	return DKV_OK;
}

int dkv_seq_close(dkv_seq *s)
{
	if (!s)
		return DKV_E_INVAL;
	rt_seq_close(s->rs);
	if (s->prev)
		s->prev->next = s->next;
	else
		s->c->seqs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
	return DKV_OK;
}

int dkv_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
	     const void *k, const void *v, uint32_t n_new, void *out)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	rc = rt_seq_step(s->rs, layer, q, n_q, k, v, n_new, out, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_length(const dkv_seq *s, uint32_t layer, uint64_t *tokens)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	if (!tokens)
		return cl_set_error(s->c, DKV_E_INVAL, "tokens is NULL");
	rc = rt_seq_len(s->rs, layer, tokens, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_train(dkv_seq *s)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	rc = rt_seq_train_now(s->rs, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_stats(const dkv_seq *s, dkv_stats *st)
{
	if (!s)
		return DKV_E_INVAL;
	if (!st)
		return cl_set_error(s->c, DKV_E_INVAL, "stats is NULL");
	rt_seq_get_stats(s->rs, st);
	return DKV_OK;
}

/* ---- internal hooks (trace.h) ---- */

int rt_seq_set_trace(dkv_seq *s, int on)
{
	if (!s)
		return DKV_E_INVAL;
	rt_seq_trace_on(s->rs, on);
	return DKV_OK;
}

int rt_seq_trace_exact(const dkv_seq *s, uint32_t qhead, const uint32_t **idx)
{
	if (!s || !idx)
		return DKV_E_INVAL;
	return rt_seq_trace_get(s->rs, qhead, idx);
}

const char *rt_kernel_name(void)
{
	return krn_get()->name;
}
