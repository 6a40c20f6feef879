/* client.h - libdashkv-client internals shared by its source files. */
#ifndef DKV_CLIENT_H
#define DKV_CLIENT_H

#include "dashkv.h"
#include "engine.h"

enum cl_transport { CL_EMBEDDED = 1 };

struct dkv_client {
	enum cl_transport transport;
	struct rt_engine *eng;
	struct dkv_seq *seqs; /* open sequences, closed by dkv_disconnect */
};

struct dkv_seq {
	dkv_client *c;
	struct rt_seq *rs;
	struct dkv_seq *prev, *next;
};

/* Record status and message as the client's last error in this thread. */
int cl_set_error(const dkv_client *c, int status, const char *msg);
/* Drop the client's message slot (on disconnect). */
void cl_forget(const dkv_client *c);

#endif
