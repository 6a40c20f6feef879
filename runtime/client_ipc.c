/*
 * client_ipc.c - the "unix:" transport: dashkvd over a Unix socket and
 * shared rings (the protocol is runtime/ipc/transport.c).
 */
#include <stdlib.h>

#include "client.h"
#include "ipc/transport.h"

struct daemon_client {
	struct dkv_client c;   /* first: a dkv_client * points here */
	struct ipc_conn *conn;
};

struct daemon_seq {
	struct dkv_seq s;      /* first: a dkv_seq * points here */
	uint32_t id;           /* the daemon's sequence id */
	struct ipc_geom geom;  /* what a step is laid out by */
};

static struct ipc_conn *conn_of(const dkv_client *c)
{
	return ((const struct daemon_client *)c)->conn;
}

static const struct daemon_seq *dseq_of(const dkv_seq *s)
{
	return (const struct daemon_seq *)s;
}

const char *cl_ipc_default_address(void)
{
	return ipc_probe(CL_DEFAULT_SOCKET) ? "unix:" CL_DEFAULT_SOCKET : NULL;
}

static int daemon_connect(const char *path, dkv_client **out, char *err)
{
	struct daemon_client *dc = calloc(1, sizeof(*dc));
	int rc;

	if (!dc)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	rc = ipc_connect(path, &dc->conn, err);
	if (rc) {
		free(dc);
		return rc;
	}
	*out = &dc->c;
	return DKV_OK;
}

static void daemon_disconnect(dkv_client *c)
{
	ipc_close(conn_of(c));
	free(c);
}

static int daemon_set_memory_limit(dkv_client *c, uint64_t bytes, char *err)
{
	(void)c, (void)bytes;
	return krn_msgf(err, DKV_E_UNSUPPORTED,
			"the daemon's memory limits are set in dashkv.conf");
}

static int daemon_seq_open(dkv_client *c, const dkv_seq_config *cfg,
			   dkv_seq **out, char *err)
{
	struct daemon_seq *ds = calloc(1, sizeof(*ds));
	dkv_seq_config r;
	int rc;

	if (!ds)
		return krn_msgf(err, DKV_E_NOMEM, "out of memory");
	rc = ipc_open(conn_of(c), cfg, &ds->id, &r, err);
	if (rc) {
		free(ds);
		return rc;
	}
	ds->geom.n_layers = r.n_layers;
	ds->geom.n_q_heads = r.n_q_heads;
	ds->geom.n_kv_heads = r.n_kv_heads;
	ds->geom.head_dim = r.head_dim;
	ds->geom.dsize = r.dtype == DKV_F32 ? 4 : 2;
	*out = &ds->s;
	return DKV_OK;
}

/* A daemon that went away has freed the sequence already: not an error. */
static int daemon_seq_close(dkv_seq *s, char *err)
{
	int rc = ipc_seq_close(conn_of(s->c), dseq_of(s)->id, err);

	free(s);
	return rc == DKV_E_DISCONNECTED ? DKV_OK : rc;
}

static int daemon_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		       const void *k, const void *v, uint32_t n_new, void *out,
		       char *err)
{
	const struct daemon_seq *ds = dseq_of(s);

	return ipc_step(conn_of(s->c), ds->id, &ds->geom, layer, q, n_q, k, v,
			n_new, out, err);
}

static int daemon_length(const dkv_seq *s, uint32_t layer, uint64_t *tokens,
			 char *err)
{
	return ipc_length(conn_of(s->c), dseq_of(s)->id, layer, tokens, err);
}

static int daemon_train(dkv_seq *s, char *err)
{
	return ipc_train(conn_of(s->c), dseq_of(s)->id, err);
}

static int daemon_stats(const dkv_seq *s, dkv_stats *st, char *err)
{
	return ipc_stats(conn_of(s->c), dseq_of(s)->id, st, err);
}

const struct rt_transport_ops rt_ipc_ops = {
	.scheme = "unix:",
	.connect = daemon_connect,
	.disconnect = daemon_disconnect,
	.set_memory_limit = daemon_set_memory_limit,
	.seq_open = daemon_seq_open,
	.seq_close = daemon_seq_close,
	.step = daemon_step,
	.length = daemon_length,
	.train = daemon_train,
	.stats = daemon_stats,
};
