/*
 * transport.h - the client side of the dashkvd protocol, used by the
 * "unix:" transport (runtime/client_ipc.c).  Every call returns DKV_OK or a
 * DKV_E_* status with a message in err (msg.h).  A connection
 * serialises its calls with a lock.
 */
#ifndef DKV_IPC_TRANSPORT_H
#define DKV_IPC_TRANSPORT_H

#include "proto.h"

struct ipc_conn;

/* 1 if something accepts connections on path, else 0. */
int ipc_probe(const char *path);
int ipc_connect(const char *path, struct ipc_conn **out, char *err);
void ipc_close(struct ipc_conn *c);
int ipc_open(struct ipc_conn *c, const dkv_seq_config *cfg, uint32_t *id,
	     dkv_seq_config *resolved, char *err);
int ipc_seq_close(struct ipc_conn *c, uint32_t id, char *err);
int ipc_step(struct ipc_conn *c, uint32_t id, const struct ipc_geom *g,
	     uint32_t layer, const void *q, uint32_t n_q, const void *k,
	     const void *v, uint32_t n_new, void *out, char *err);
int ipc_length(struct ipc_conn *c, uint32_t id, uint32_t layer,
	       uint64_t *tokens, char *err);
int ipc_train(struct ipc_conn *c, uint32_t id, char *err);
int ipc_stats(struct ipc_conn *c, uint32_t id, dkv_stats *st, char *err);

#endif
