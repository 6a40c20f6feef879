/*
 * trace.h - internal hooks for tests and dashkv-bench (not installed): what
 * the last dkv_step of an embedded sequence took exactly, so quality can
 * be measured (mass recall, recall@K, needle hits) against exact attention.
 */
#ifndef DKV_TRACE_H
#define DKV_TRACE_H

#include <stdint.h>

#include "dashkv.h"

/* Turn recording on (1) or off (0) for an embedded sequence. */
int rt_seq_set_trace(dkv_seq *s, int on);

/*
 * After a dkv_step with tracing on: the token positions (sorted, no
 * duplicates) that query head `qhead` of the LAST query of that step took
 * on the exact path (sinks, recent window, top-K).  *idx points into the
 * sequence's memory, valid until the next dkv_step.  Returns the count, or
 * a negative DKV_E_* code.
 */
int rt_seq_trace_exact(const dkv_seq *s, uint32_t qhead, const uint32_t **idx);

/*
 * Learned hash models of an embedded DKV_HASH_LEARNED sequence: load
 * every trained (layer, kv head) of a model file (dashkv-train(1);
 * sequence layer l takes the file's layer layer0 + l), re-encoding the
 * stored keys, or save the models in use.  DKV_OK or a DKV_E_* code with
 * dkv_errmsg() set.
 */
int rt_seq_load_model(dkv_seq *s, const char *path, uint32_t layer0);
int rt_seq_save_model(const dkv_seq *s, const char *path);

/*
 * The work of fitting one kv head's models (besides encoding its keys),
 * in keys scanned by queries, that a background fit of an embedded
 * sequence is given before its models swap in (engine.c; the measured
 * default unless set).  And the bytes the client's engine holds.
 */
int rt_seq_set_fit_work(dkv_seq *s, double units);
uint64_t rt_client_memory_used(const dkv_client *c);

/* The kernel level the engine runs ("scalar", "avx2", "avx512"). */
const char *rt_kernel_name(void);

#endif
