/*
 * bench.h - dashkv-bench: the options, the helpers of common.c, the
 * measurement of scan.c that speed reports, and the commands, one file
 * each (see main.c).
 */
#ifndef DKV_BENCH_H
#define DKV_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "dashkv.h"

struct kvgen;
struct rt_capture;

#define MAX_NS 32
#define CHUNK 4096

struct opts {
	const char *cmd;
	uint64_t tokens[MAX_NS];
	uint32_t n_tokens;
	uint32_t top_k, candidates, sinks, window, bits;
	int32_t hash, tail, dtype;
	/* quality --hash both: the lists compared side by side */
	uint32_t bits_list[3], n_bits, cand_list[8], n_cand;
	int both;
	float mass_target;
	uint32_t rerank;        /* 0: the engine's default */
	const char *model;
	/* capture files: written by the capture command, read by quality */
	const char *capture, *out;
	uint32_t layer, layers;
	const struct rt_capture *cap;
	uint32_t heads, kv_heads, dim, queries, reps;
	uint64_t seed;
	uint32_t bw_mib, scan_tokens;
	uint32_t shards[8], n_shards;  /* shard counts of the shards command */
	int json;
};

/* ---- common.c ---- */

uint64_t now_ns(void);
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
const char *dtype_name(int32_t dt);
size_t dtype_size(int32_t dt);
void to_dtype(float *x, size_t n, int32_t dt, void *out);
void from_dtype(const void *in, size_t n, int32_t dt, float *x);

struct summary {
	double median, p10, p90, mean;
	size_t n;
};

/* Summary of x[0..n) (sorted in place). */

struct summary summarize(double *x, size_t n);
double median_of(double *x, size_t n);
/* prints what failed and exits: 3 for DKV_E_UNSUPPORTED, else 1 */
void die_dkv(const char *what, int rc, const dkv_client *c);
uint64_t mix64(uint64_t z);

/* one layer of the options' geometry and knobs; exact: exact mode */
void seq_config(const struct opts *o, uint64_t max_tokens, int exact,
		dkv_seq_config *cfg);
/* the generator of the options' seed and geometry; exits if it is bad */
struct kvgen *make_gen(const struct opts *o);
double cfg_scale(const dkv_seq_config *cfg);
const char *on_off(int32_t v);
void json_summary(const char *name, const struct summary *s, int comma);
void text_summary(const char *name, const struct summary *s);
void json_config(const dkv_seq_config *cfg);

/* ---- scan.c: the memory bandwidth and the coarse scan, for speed ---- */

struct bw_result {
	double gbps;
	uint32_t mib, runs;
};

struct scan_result {
	double gbps[2], ns_key[2]; /* [0]: one query per pass, [1]: nq per pass */
	double share[2];           /* median over rounds of gbps / bandwidth */
	uint32_t n, nq, words, bytes_key;
	uint32_t tokens, kv_heads, stride; /* n = tokens * kv_heads */
};

void measure_io(uint32_t mib, uint32_t tokens, uint32_t kv_heads, uint32_t nq,
		struct bw_result *bw, struct scan_result *r);

/* ---- capture.c ---- */

/* --capture: read the file, take its geometry into v; returns or exits */
void load_capture(struct opts *v, struct rt_capture *c);

/* ---- the commands: each returns the exit status ---- */

int cmd_quality(const struct opts *o);
int cmd_speed(const struct opts *o);
int cmd_shards(const struct opts *o);
int cmd_scan(const struct opts *o);
int cmd_capture(const struct opts *o);
/* cmd_ipc: ipc.h */

#endif
