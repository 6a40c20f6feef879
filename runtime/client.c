/*
 * client.c - the public API (libdashkv-client) over its transports: the
 * embedded engine in this process, or dashkvd over a Unix socket and shared
 * rings (runtime/ipc/transport.c).
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

static int connect_ipc(const char *path, dkv_client **out)
{
	char err[IPC_MSGLEN] = "";
	dkv_client *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return DKV_E_NOMEM;
	rc = ipc_connect(path, &c->ipc, err);
	if (rc) {
		fprintf(stderr, "dashkv: %s\n", err);
		free(c);
		return rc;
	}
	c->transport = CL_IPC;
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
			address = ipc_probe(CL_DEFAULT_SOCKET) ?
				  "unix:" CL_DEFAULT_SOCKET : "embedded";
	}
	if (!strcmp(address, "embedded"))
		return connect_embedded(out);
	if (!strncmp(address, "unix:", 5))
		return connect_ipc(address + 5, out);
	return DKV_E_INVAL;
}

void dkv_disconnect(dkv_client *c)
{
	if (!c)
		return;
	while (c->seqs)
		dkv_seq_close(c->seqs);
	cl_forget(c);
	if (c->transport == CL_IPC)
		ipc_close(c->ipc);
	else
		rt_engine_free(c->eng);
	free(c);
}

int dkv_set_memory_limit(dkv_client *c, uint64_t bytes)
{
	if (!c)
		return DKV_E_INVAL;
	if (c->transport == CL_IPC)
		return cl_set_error(c, DKV_E_UNSUPPORTED,
				    "the daemon's memory limits are set in dashkv.conf");
	rt_engine_set_limit(c->eng, bytes);
	return DKV_OK;
}

static int seq_open_ipc(dkv_client *c, const dkv_seq_config *cfg, dkv_seq *s,
			char *err)
{
	dkv_seq_config r;
	int rc;

	if (!cfg)
		return snprintf(err, RT_ERRLEN, "cfg is NULL"), DKV_E_INVAL;
	rc = ipc_open(c->ipc, cfg, &s->id, &r, err);
	if (rc)
		return rc;
	s->geom.n_layers = r.n_layers;
	s->geom.n_q_heads = r.n_q_heads;
	s->geom.n_kv_heads = r.n_kv_heads;
	s->geom.head_dim = r.head_dim;
	s->geom.dsize = r.dtype == DKV_F32 ? 4 : 2;
	return DKV_OK;
}

static int seq_open(dkv_client *c, const dkv_seq_config *cfg, dkv_seq *s, char *err)
{
	if (c->transport == CL_IPC)
		return seq_open_ipc(c, cfg, s, err);
	return rt_seq_open(c->eng, cfg, &s->rs, err);
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
	rc = seq_open(c, cfg, s, err);
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
	int rc = DKV_OK;

	if (!s)
		return DKV_E_INVAL;
	if (s->c->transport == CL_IPC) {
		char err[RT_ERRLEN] = "";

		rc = ipc_seq_close(s->c->ipc, s->id, err);
		if (rc && rc != DKV_E_DISCONNECTED)
			cl_set_error(s->c, rc, err);
	} else {
		rt_seq_close(s->rs);
	}
	if (s->prev)
		s->prev->next = s->next;
	else
		s->c->seqs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	free(s);
	return rc == DKV_E_DISCONNECTED ? DKV_OK : rc;
}

int dkv_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
	     const void *k, const void *v, uint32_t n_new, void *out)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	if (s->c->transport == CL_IPC)
		rc = ipc_step(s->c->ipc, s->id, &s->geom, layer, q, n_q, k, v,
			      n_new, out, err);
	else
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
	if (s->c->transport == CL_IPC)
		rc = ipc_length(s->c->ipc, s->id, layer, tokens, err);
	else
		rc = rt_seq_len(s->rs, layer, tokens, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_train(dkv_seq *s)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	if (s->c->transport == CL_IPC)
		rc = ipc_train(s->c->ipc, s->id, err);
	else
		rc = rt_seq_train_now(s->rs, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_stats(const dkv_seq *s, dkv_stats *st)
{
	if (!s)
		return DKV_E_INVAL;
	if (!st)
		return cl_set_error(s->c, DKV_E_INVAL, "stats is NULL");
	if (s->c->transport == CL_IPC) {
		char err[RT_ERRLEN] = "";
		dkv_stats tmp;
		int rc = ipc_stats(s->c->ipc, s->id, &tmp, err);

		if (rc)
			return cl_set_error(s->c, rc, err);
		*st = tmp;
		return DKV_OK;
	}
	rt_seq_get_stats(s->rs, st);
	return DKV_OK;
}

/* ---- internal hooks (trace.h) ---- */

int rt_seq_set_trace(dkv_seq *s, int on)
{
	if (!s || s->c->transport != CL_EMBEDDED)
		return DKV_E_INVAL;
	rt_seq_trace_on(s->rs, on);
	return DKV_OK;
}

int rt_seq_trace_exact(const dkv_seq *s, uint32_t qhead, const uint32_t **idx)
{
	if (!s || !idx || s->c->transport != CL_EMBEDDED)
		return DKV_E_INVAL;
	return rt_seq_trace_get(s->rs, qhead, idx);
}

int rt_seq_set_fit_work(dkv_seq *s, double units)
{
	if (!s || s->c->transport != CL_EMBEDDED || !(units >= 0))
		return DKV_E_INVAL;
	rt_seq_fit_work(s->rs, units);
	return DKV_OK;
}

uint64_t rt_client_memory_used(const dkv_client *c)
{
	return c && c->transport == CL_EMBEDDED ? rt_engine_used(c->eng) : 0;
}

const char *rt_kernel_name(void)
{
	return krn_get()->name;
}

int rt_seq_load_model(dkv_seq *s, const char *path, uint32_t layer0)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s || !path || s->c->transport != CL_EMBEDDED)
		return DKV_E_INVAL;
	rc = rt_seq_model_load(s->rs, path, layer0, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int rt_seq_save_model(const dkv_seq *s, const char *path)
{
	char err[RT_ERRLEN] = "";
	int rc;

	if (!s || !path || s->c->transport != CL_EMBEDDED)
		return DKV_E_INVAL;
	rc = rt_seq_model_save(s->rs, path, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}
