/*
 * engine.h - the DASH-KV engine: sequence registry, per-layer step, memory
 * accounting.  Used in-process by the embedded transport of
 * libdashkv-client (and by dashkvd).  Errors: a DKV_E_* status plus a
 * message written to the caller's buffer (msg.h).
 */
#ifndef DKV_RT_ENGINE_H
#define DKV_RT_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "dashkv.h"
#include "msg.h"

/* Documented defaults (dashkv(7), dkv_seq_config_init(3)). */
#define RT_DEF_MAX_TOKENS (1ull << 20)
#define RT_MAX_MAX_TOKENS (1ull << 31)
#define RT_DEF_HASH_BITS 128u
#define RT_DEF_TRAIN_TOKENS 4096u
#define RT_DEF_TOP_K 256u
#define RT_DEF_CANDIDATES 2048u
/* coarse-filter pool per 1,000 tokens of the middle (dkv_seq_config.rerank) */
#define RT_DEF_RERANK 30u
#define RT_DEF_SINKS 4u
#define RT_DEF_WINDOW 64u
#define RT_DEF_TAIL 1

struct rt_engine;
struct rt_seq;

/* The tail's sampling stride (krn_scan_q.stride) for a middle of n tokens. */
uint32_t rt_tail_stride(uint64_t n_mid);
/* Blocks per value summary the tail reads for that middle: 1 or 4. */
uint32_t rt_tail_span(uint64_t n_mid);

/* An engine whose shards follow DASHKV_SHARDS ... */
int rt_engine_new(struct rt_engine **out, char *err);
/* ... or the plan spec given (NULL or "auto": the machine's default). */
int rt_engine_new_shards(struct rt_engine **out, const char *spec, char *err);
void rt_engine_free(struct rt_engine *e);
/* Total bytes the engine may hold for sequences; 0 = no limit. */
void rt_engine_set_limit(struct rt_engine *e, uint64_t bytes);
uint64_t rt_engine_used(const struct rt_engine *e);
/* Shards of the engine's sequences (DASHKV_SHARDS). */
uint32_t rt_engine_shards(const struct rt_engine *e);
/* One line on the shards: "2 CPU shards", or the GPU shards' devices and
 * collective; then the workers not bound as the plan says, if any, and why
 * ("; 1 worker not bound as planned: ..."). */
void rt_engine_describe(const struct rt_engine *e, char *buf, size_t len);
/* GPU shards: jobs the host ran after a device error, and the last error
 * (0 and "" on CPU shards; last: KRN_MSGLEN bytes, may be NULL). */
uint64_t rt_engine_gpu_fallbacks(const struct rt_engine *e, char *last);

/* Fill every knob's default (geometry left zero). */
void rt_config_defaults(dkv_seq_config *cfg);
/*
 * Validate cfg and resolve "0 = default" into *out.  Returns DKV_OK or a
 * DKV_E_* code with a message in err.
 */
int rt_config_resolve(const dkv_seq_config *cfg, dkv_seq_config *out, char *err);

int rt_seq_open(struct rt_engine *e, const dkv_seq_config *cfg,
		struct rt_seq **out, char *err);
void rt_seq_close(struct rt_seq *s);
int rt_seq_step(struct rt_seq *s, uint32_t layer, const void *q, uint32_t n_q,
		const void *k, const void *v, uint32_t n_new, void *out, char *err);
int rt_seq_len(const struct rt_seq *s, uint32_t layer, uint64_t *tokens, char *err);
int rt_seq_train_now(struct rt_seq *s, char *err);
/*
 * Learned hash models: load every trained head of a model file (sequence
 * layer l takes the file's layer layer0 + l) / save them.
 */
int rt_seq_model_load(struct rt_seq *s, const char *path, uint32_t layer0, char *err);
int rt_seq_model_save(const struct rt_seq *s, const char *path, char *err);
void rt_seq_get_stats(const struct rt_seq *s, dkv_stats *st);
const dkv_seq_config *rt_seq_config(const struct rt_seq *s);

/*
 * The work of fitting one kv head's models, in keys scanned by queries,
 * that a background fit is given before it swaps in (tests set it low).
 */
void rt_seq_fit_work(struct rt_seq *s, double units);

/* Tracing of the exact path (see trace.h). */
void rt_seq_trace_on(struct rt_seq *s, int on);
int rt_seq_trace_get(const struct rt_seq *s, uint32_t qhead, const uint32_t **idx);

#endif
