/*
 * errors.c - status strings, the per-client, per-thread last message, and
 * the per-thread message of the last dkv_connect.
 */
#include "client.h"

const char *dkv_strerror(int status)
{
	switch (status) {
	case DKV_OK: return "success";
	case DKV_E_INVAL: return "invalid argument";
	case DKV_E_BADINPUT: return "a query, key or value holds NaN or Inf";
	case DKV_E_NOSPACE: return "token or memory limit reached";
	case DKV_E_NOMEM: return "out of memory";
	case DKV_E_DISCONNECTED: return "disconnected from the daemon";
	case DKV_E_PERM: return "permission denied by the daemon";
	case DKV_E_PROTO: return "protocol or version mismatch";
	case DKV_E_TIMEOUT: return "timed out";
	case DKV_E_NOTFOUND: return "not found";
	case DKV_E_IO: return "input/output error";
	case DKV_E_UNSUPPORTED: return "not supported by this build or daemon";
	case DKV_E_INTERNAL: return "internal error";
	default: return "unknown status code";
	}
}

/*
 * Each thread keeps the last message of the last few clients it used, so
 * dkv_errmsg() answers per client and per thread without locks.
 */
#define ERR_SLOTS 8

struct err_slot {
	const dkv_client *c;
	char msg[KRN_MSGLEN];
};

static __thread struct err_slot slots[ERR_SLOTS];
static __thread unsigned next_slot;
/* dkv_connect has no client to record on: dkv_errmsg(NULL) reads this */
static __thread char connect_msg[KRN_MSGLEN];

static struct err_slot *slot_of(const dkv_client *c, int create)
{
	for (unsigned i = 0; i < ERR_SLOTS; i++)
		if (slots[i].c == c)
			return &slots[i];
	if (!create)
		return NULL;
	struct err_slot *s = &slots[next_slot++ % ERR_SLOTS];
	s->c = c;
	return s;
}

int cl_set_error(const dkv_client *c, int status, const char *msg)
{
	struct err_slot *s;

	if (!c)
		return status;
	s = slot_of(c, 1);
	return krn_msgf(s->msg, status, "%s", msg && *msg ? msg : dkv_strerror(status));
}

void cl_forget(const dkv_client *c)
{
	struct err_slot *s = slot_of(c, 0);
	if (s)
		s->c = NULL;
}

int cl_set_connect_error(int status, const char *msg)
{
	if (!status) {
		connect_msg[0] = '\0';
		return status;
	}
	return krn_msgf(connect_msg, status, "%s", msg && *msg ? msg : dkv_strerror(status));
}

const char *dkv_errmsg(const dkv_client *c)
{
	struct err_slot *s;

	if (!c)
		return connect_msg;
	s = slot_of(c, 0);
	return s ? s->msg : "";
}
