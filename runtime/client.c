/*
 * client.c - the public API of libdashkv-client: argument checks, the
 * choice of transport by address, the client's list of sequences, and
 * the dispatch to the transport (struct rt_transport_ops in client.h).
 */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "engine.h"

static const struct rt_transport_ops *const transports[] = {
	&rt_embedded_ops,
	&rt_ipc_ops,
};

void dkv_seq_config_init(dkv_seq_config *cfg)
{
	if (cfg)
		rt_config_defaults(cfg);
}

/* The transport whose scheme address has; *where gets the rest. */
static const struct rt_transport_ops *transport_of(const char *address,
						   const char **where)
{
	for (size_t i = 0; i < sizeof(transports) / sizeof(transports[0]); i++) {
		const char *scheme = transports[i]->scheme;
		size_t len = strlen(scheme);

		if (strncmp(address, scheme, len))
			continue;
		if (scheme[len - 1] == ':' || !address[len]) {
			*where = address + len;
			return transports[i];
		}
	}
	return NULL;
}

/* NULL or "": $DASHKV_ADDRESS, else the default daemon, else embedded. */
static const char *resolve_address(const char *address)
{
	if (address && *address)
		return address;
	address = getenv("DASHKV_ADDRESS");
	if (address && *address)
		return address;
	address = cl_ipc_default_address();
	return address ? address : "embedded";
}

static int connect_to(const char *address, dkv_client **out, char *err)
{
	const struct rt_transport_ops *ops;
	const char *where;
	dkv_client *c;
	int rc;

	if (!out)
		return krn_msgf(err, DKV_E_INVAL, "out is NULL");
	address = resolve_address(address);
	ops = transport_of(address, &where);
	if (!ops)
		return krn_msgf(err, DKV_E_INVAL, "address \"%.200s\": neither \"embedded\" "
				"nor \"unix:PATH\"", address);
	rc = ops->connect(where, &c, err);
	if (rc)
		return rc;
	c->ops = ops;
	c->seqs = NULL;
	*out = c;
	return DKV_OK;
}

int dkv_connect(const char *address, dkv_client **out)
{
	char err[KRN_MSGLEN] = "";

	return cl_set_connect_error(connect_to(address, out, err), err);
}

void dkv_disconnect(dkv_client *c)
{
	if (!c)
		return;
	while (c->seqs)
		dkv_seq_close(c->seqs);
	cl_forget(c);
	c->ops->disconnect(c);
}

int dkv_set_memory_limit(dkv_client *c, uint64_t bytes)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	if (!c)
		return DKV_E_INVAL;
	rc = c->ops->set_memory_limit(c, bytes, err);
	return rc ? cl_set_error(c, rc, err) : DKV_OK;
}

int dkv_seq_open(dkv_client *c, const dkv_seq_config *cfg, dkv_seq **out)
{
	char err[KRN_MSGLEN] = "";
	dkv_seq *s;
	int rc;

	if (!c)
		return DKV_E_INVAL;
	if (!out)
		return cl_set_error(c, DKV_E_INVAL, "out is NULL");
	if (!cfg)
		return cl_set_error(c, DKV_E_INVAL, "config is NULL");
	rc = c->ops->seq_open(c, cfg, &s, err);
	if (rc)
		return cl_set_error(c, rc, err);
	s->c = c;
	s->prev = NULL;
	s->next = c->seqs;
	if (c->seqs)
		c->seqs->prev = s;
	c->seqs = s;
	*out = s;
	return DKV_OK;
}

int dkv_seq_close(dkv_seq *s)
{
	char err[KRN_MSGLEN] = "";
	dkv_client *c;
	int rc;

	if (!s)
		return DKV_E_INVAL;
	c = s->c;
	if (s->prev)
		s->prev->next = s->next;
	else
		c->seqs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	rc = c->ops->seq_close(s, err);
	return rc ? cl_set_error(c, rc, err) : DKV_OK;
}

int dkv_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
	     const void *k, const void *v, uint32_t n_new, void *out)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	rc = s->c->ops->step(s, layer, q, n_q, k, v, n_new, out, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_length(const dkv_seq *s, uint32_t layer, uint64_t *tokens)
{
	char err[KRN_MSGLEN] = "";
	uint64_t n;
	int rc;

	if (!s)
		return DKV_E_INVAL;
	if (!tokens)
		return cl_set_error(s->c, DKV_E_INVAL, "tokens is NULL");
	rc = s->c->ops->length(s, layer, &n, err);
	if (rc)
		return cl_set_error(s->c, rc, err);
	*tokens = n;
	return DKV_OK;
}

int dkv_seq_train(dkv_seq *s)
{
	char err[KRN_MSGLEN] = "";
	int rc;

	if (!s)
		return DKV_E_INVAL;
	rc = s->c->ops->train(s, err);
	return rc ? cl_set_error(s->c, rc, err) : DKV_OK;
}

int dkv_seq_stats(const dkv_seq *s, dkv_stats *st)
{
	char err[KRN_MSGLEN] = "";
	dkv_stats tmp;
	int rc;

	if (!s)
		return DKV_E_INVAL;
	if (!st)
		return cl_set_error(s->c, DKV_E_INVAL, "stats is NULL");
	rc = s->c->ops->stats(s, &tmp, err);
	if (rc)
		return cl_set_error(s->c, rc, err);
	*st = tmp;
	return DKV_OK;
}
