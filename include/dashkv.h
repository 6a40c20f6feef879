/*
 * dashkv.h - libdashkv-client, the DASH-KV client API.
 *
 * DASH-KV serves long-context attention as an approximate nearest-neighbour
 * search: for every transformer layer a client appends the new keys and
 * values and sends the queries; DASH-KV returns the attention output.
 * See libdashkv-client(3) and dashkv(7).
 */
#ifndef DASHKV_H
#define DASHKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DKV_VERSION_MAJOR 0
#define DKV_VERSION_MINOR 1

/* Status codes: DKV_OK or a negative DKV_E_* value. */
enum {
	DKV_OK = 0,
	DKV_E_INVAL = -1,        /* bad argument, shape, dtype or option */
	DKV_E_BADINPUT = -2,     /* NaN or Inf in a query, key or value */
	DKV_E_NOSPACE = -3,      /* max_tokens or a memory limit reached */
	DKV_E_NOMEM = -4,        /* an allocation failed */
	DKV_E_DISCONNECTED = -5, /* the daemon went away */
	DKV_E_PERM = -6,         /* the daemon refused this user or group */
	DKV_E_PROTO = -7,        /* protocol or version mismatch */
	DKV_E_TIMEOUT = -8,      /* no answer in time */
	DKV_E_NOTFOUND = -9,     /* no such sequence, file or address */
	DKV_E_IO = -10,          /* a file or socket read/write failed */
	DKV_E_UNSUPPORTED = -11, /* this build or daemon lacks the feature */
	DKV_E_INTERNAL = -12     /* a bug; dkv_errmsg() says where */
};

typedef struct dkv_client dkv_client;
typedef struct dkv_seq dkv_seq;

typedef enum dkv_dtype {
	DKV_F32 = 0,
	DKV_F16 = 1,
	DKV_BF16 = 2
} dkv_dtype;

/* Hash families for the coarse filter (0 = the documented default). */
enum {
	DKV_HASH_DEFAULT = 0,
	DKV_HASH_SIMHASH = 1, /* random hyperplanes, same projection for q and k */
	DKV_HASH_LEARNED = 2  /* learned asymmetric query network + key projection */
};

/* Upper bounds of the geometry. */
#define DKV_MAX_LAYERS 256
#define DKV_MAX_HEADS 256
#define DKV_MAX_HEAD_DIM 256

/*
 * Sequence configuration.  Call dkv_seq_config_init() first, then set
 * fields by name.  Numeric knobs: 0 means "default".  On/off knobs
 * (tail_estimate, exact): 0 = off, 1 = on, -1 = default.
 */
#define DKV_RERANK_OFF 0xffffffffu

typedef struct dkv_seq_config {
	uint32_t struct_size;   /* set by dkv_seq_config_init() */
	/* geometry */
	uint32_t n_layers;      /* 1 .. DKV_MAX_LAYERS */
	uint32_t n_q_heads;     /* a multiple of n_kv_heads */
	uint32_t n_kv_heads;    /* 1 .. DKV_MAX_HEADS */
	uint32_t head_dim;      /* multiple of 8, 8 .. 256 */
	int32_t dtype;          /* dkv_dtype of q, k, v and out */
	uint64_t max_tokens;    /* tokens per layer; 0 = default */
	/* attention knobs (see dashkv(7)) */
	uint32_t hash_bits;     /* 64, 128 or 256 */
	int32_t hash;           /* DKV_HASH_* */
	uint32_t train_tokens;  /* a layer fits its hash models at this length */
	uint32_t top_k;         /* tokens taken exactly after fine ranking */
	uint32_t candidates;    /* coarse-filter survivors per query */
	uint32_t sink_tokens;   /* first tokens always taken exactly */
	uint32_t recent_window; /* last tokens always taken exactly */
	float mass_target;      /* adaptive K: 0 = off, else (0, 1) */
	int32_t tail_estimate;  /* estimate the rest from codes + summaries */
	float scale;            /* softmax scale; 0 = 1/sqrt(head_dim) */
	int32_t exact;          /* 1 = dense exact attention (reference mode) */
	/*
	 * DKV_HASH_LEARNED: a model file of dashkv-train(1) to start from
	 * (NULL = none), read by dkv_seq_open; through a daemon an absolute
	 * path, which the daemon opens.
	 */
	const char *hash_model;
	/*
	 * The coarse filter's pool, in tokens per 1,000 of the middle, that
	 * the 4-bit key sketches re-rank down to `candidates` before the fine
	 * ranking (see dashkv(7)): 0 = default, at most 1000;
	 * DKV_RERANK_OFF: no pool and no sketches, the coarse filter passes
	 * `candidates` on.
	 */
	uint32_t rerank;
	uint32_t reserved[11];  /* must be zero */
} dkv_seq_config;

/* Sequence statistics (dkv_seq_stats). */
typedef struct dkv_stats {
	uint32_t struct_size;
	uint32_t n_layers;
	uint64_t layer_tokens[DKV_MAX_LAYERS]; /* tokens stored per layer */
	uint64_t bytes_full;      /* keys and values at full precision */
	uint64_t bytes_codes;     /* binary key codes and key norms */
	uint64_t bytes_summaries; /* per-block value summaries */
	uint64_t steps;           /* dkv_step calls served */
	/* the last dkv_step */
	uint64_t last_step_ns;    /* whole call */
	uint64_t last_append_ns;  /* encode + store */
	uint64_t last_attend_ns;  /* attention */
	uint32_t last_queries;    /* query heads answered (n_q * n_q_heads) */
	uint32_t last_exact_mode; /* 1 if the step ran dense exact attention */
	double last_candidates;   /* mean coarse survivors per query head */
	double last_exact_tokens; /* mean tokens taken exactly per query head */
	double last_estimated_tokens; /* mean tokens estimated per query head */
	uint64_t last_coarse_ns;  /* of last_attend_ns: coarse filter (sample, scan) */
	uint64_t last_fine_ns;    /* fine ranking, top-K and their exact attention */
	uint64_t last_tail_ns;    /* the tail estimate's value sums */
	/* learned hash models (dkv_seq_train(3)) */
	uint64_t bytes_training;  /* held by fits in progress (memory limit) */
	uint32_t fits_deferred;   /* layers whose fit waits for memory */
	uint32_t fits_late;       /* model swaps that waited for their fit */
	uint64_t reserved[3];
} dkv_stats;

const char *dkv_strerror(int status);
const char *dkv_errmsg(const dkv_client *c);

void dkv_seq_config_init(dkv_seq_config *cfg);

int dkv_connect(const char *address, dkv_client **out);
void dkv_disconnect(dkv_client *c);
int dkv_set_memory_limit(dkv_client *c, uint64_t bytes);

int dkv_seq_open(dkv_client *c, const dkv_seq_config *cfg, dkv_seq **out);
int dkv_seq_close(dkv_seq *s);
int dkv_step(dkv_seq *s, uint32_t layer, const void *q, uint32_t n_q,
	     const void *k, const void *v, uint32_t n_new, void *out);
int dkv_seq_length(const dkv_seq *s, uint32_t layer, uint64_t *tokens);
int dkv_seq_train(dkv_seq *s);
int dkv_seq_stats(const dkv_seq *s, dkv_stats *st);

#ifdef __cplusplus
}
#endif
#endif /* DASHKV_H */
