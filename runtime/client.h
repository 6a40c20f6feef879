/* client.h - libdashkv-client internals shared by its source files. */
#ifndef DKV_CLIENT_H
#define DKV_CLIENT_H

#include <stdint.h>

#include "dashkv.h"
#include "msg.h"

/*
 * A transport: how a client reaches an engine, one file each
 * (client_embedded.c, client_ipc.c).  client.c checks the arguments of
 * the public calls, picks the transport by the address's scheme and
 * dispatches through this table.  A transport allocates its clients and
 * sequences with struct dkv_client or struct dkv_seq as their first
 * member, and frees them in disconnect and seq_close; client.c fills in
 * the members of those two.  A call that fails returns a DKV_E_* status
 * and writes its message into err (msg.h).
 */
struct rt_transport_ops {
	/* "name" for an address that is the name, "name:" for a prefix */
	const char *scheme;
	/* where: the address past the scheme */
	int (*connect)(const char *where, dkv_client **out, char *err);
	void (*disconnect)(dkv_client *c);
	int (*set_memory_limit)(dkv_client *c, uint64_t bytes, char *err);
	int (*seq_open)(dkv_client *c, const dkv_seq_config *cfg, dkv_seq **out,
			char *err);
	int (*seq_close)(dkv_seq *s, char *err);
	int (*step)(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		    const void *k, const void *v, uint32_t n_new, void *out,
		    char *err);
	int (*length)(const dkv_seq *s, uint32_t layer, uint64_t *tokens,
		      char *err);
	int (*train)(dkv_seq *s, char *err);
	int (*stats)(const dkv_seq *s, dkv_stats *st, char *err);
};

extern const struct rt_transport_ops rt_embedded_ops;
extern const struct rt_transport_ops rt_ipc_ops;

#define CL_DEFAULT_SOCKET "/run/dashkv/dashkvd.sock"

/* "unix:" CL_DEFAULT_SOCKET if a daemon listens there, else NULL. */
const char *cl_ipc_default_address(void);

struct dkv_client {
	const struct rt_transport_ops *ops;
	struct dkv_seq *seqs; /* open sequences, closed by dkv_disconnect */
};

struct dkv_seq {
	dkv_client *c;
	struct dkv_seq *prev, *next;
};

/* Record status and message as the client's last error in this thread. */
int cl_set_error(const dkv_client *c, int status, const char *msg);
/* Drop the client's message slot (on disconnect). */
void cl_forget(const dkv_client *c);
/*
 * Record the outcome of this thread's dkv_connect for dkv_errmsg(NULL):
 * msg on failure, nothing on success.  Returns status.
 */
int cl_set_connect_error(int status, const char *msg);

#endif
