/* client.h - libdashkv-client internals shared by its source files. */
#ifndef DKV_CLIENT_H
#define DKV_CLIENT_H

#include "dashkv.h"
#include "engine.h"
#include "ipc/transport.h"

enum cl_transport { CL_EMBEDDED = 1, CL_IPC };

#define CL_DEFAULT_SOCKET "/run/dashkv/dashkvd.sock"

struct dkv_client {
	enum cl_transport transport;
	struct rt_engine *eng;   /* CL_EMBEDDED */
	struct ipc_conn *ipc;    /* CL_IPC */
	struct dkv_seq *seqs; /* open sequences, closed by dkv_disconnect */
};

struct dkv_seq {
	dkv_client *c;
	struct rt_seq *rs;       /* CL_EMBEDDED */
	uint32_t id;             /* CL_IPC: the daemon's sequence id */
	struct ipc_geom geom;    /* CL_IPC */
	struct dkv_seq *prev, *next;
};

/* Record status and message as the client's last error in this thread. */
int cl_set_error(const dkv_client *c, int status, const char *msg);
/* Drop the client's message slot (on disconnect). */
void cl_forget(const dkv_client *c);

#endif
