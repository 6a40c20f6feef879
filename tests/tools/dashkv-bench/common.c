/*
 * common.c - dashkv-bench: what the commands share: clocks and allocation
 * that exit on failure, data in the engine's element types, summaries of
 * samples, the sequence configuration the options describe, the generator
 * they set up, and the summary and configuration lines of the output.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashkv.h"
#include "krn.h"
#include "gen/kvgen.h"
#include "bench.h"

/* ---- small helpers ---- */

uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", n * sz);
		exit(1);
	}
	return p;
}

const char *dtype_name(int32_t dt)
{
	return dt == DKV_F16 ? "f16" : dt == DKV_BF16 ? "bf16" : "f32";
}

size_t dtype_size(int32_t dt)
{
	return dt == DKV_F32 ? 4 : 2;
}

/*
 * x [n] f32 -> out in dtype; x is overwritten with the value the engine
 * will see (rounded through the dtype), so references use the same data.
 */
void to_dtype(float *x, size_t n, int32_t dt, void *out)
{
	uint16_t *h = out;

	if (dt == DKV_F32) {
		memcpy(out, x, n * sizeof(float));
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (dt == DKV_F16) {
			h[i] = krn_f32_to_f16_1(x[i]);
			x[i] = krn_f16_to_f32_1(h[i]);
		} else {
			h[i] = krn_f32_to_bf16_1(x[i]);
			x[i] = krn_bf16_to_f32_1(h[i]);
		}
	}
}

void from_dtype(const void *in, size_t n, int32_t dt, float *x)
{
	const uint16_t *h = in;

	if (dt == DKV_F32) {
		memcpy(x, in, n * sizeof(float));
		return;
	}
	for (size_t i = 0; i < n; i++)
		x[i] = dt == DKV_F16 ? krn_f16_to_f32_1(h[i]) : krn_bf16_to_f32_1(h[i]);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* summary of x[0..n) (sorts x) */
struct summary summarize(double *x, size_t n)
{
	struct summary s = { NAN, NAN, NAN, NAN, n };
	double sum = 0;

	if (!n)
		return s;
	qsort(x, n, sizeof(*x), cmp_double);
	for (size_t i = 0; i < n; i++)
		sum += x[i];
	s.median = n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
	s.p10 = x[(size_t)floor(0.1 * (n - 1) + 0.5)];
	s.p90 = x[(size_t)floor(0.9 * (n - 1) + 0.5)];
	s.mean = sum / n;
	return s;
}

double median_of(double *x, size_t n)
{
	return summarize(x, n).median;
}

void die_dkv(const char *what, int rc, const dkv_client *c)
{
	fprintf(stderr, "dashkv-bench: %s: %s%s%s\n", what, dkv_strerror(rc),
		c ? ": " : "", c ? dkv_errmsg(c) : "");
	exit(rc == DKV_E_UNSUPPORTED ? 3 : 1);
}

/* splitmix64's finalizer: a well-mixed 64-bit function of z */
uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* ---- sequences ---- */

void seq_config(const struct opts *o, uint64_t max_tokens, int exact,
		       dkv_seq_config *cfg)
{
	dkv_seq_config_init(cfg);
	cfg->n_layers = 1;
	cfg->n_q_heads = o->heads;
	cfg->n_kv_heads = o->kv_heads;
	cfg->head_dim = o->dim;
	cfg->dtype = o->dtype;
	cfg->max_tokens = max_tokens;
	if (o->top_k)
		cfg->top_k = o->top_k;
	if (o->candidates)
		cfg->candidates = o->candidates;
	else if (cfg->candidates < 8 * cfg->top_k)
		cfg->candidates = 8 * cfg->top_k;
	if (o->sinks)
		cfg->sink_tokens = o->sinks;
	if (o->window)
		cfg->recent_window = o->window;
	if (o->bits)
		cfg->hash_bits = o->bits;
	if (o->hash)
		cfg->hash = o->hash;
	/* learned models are fitted once, after the fill (dkv_seq_train) */
	if (cfg->hash == DKV_HASH_LEARNED)
		cfg->train_tokens = UINT32_MAX;
	cfg->mass_target = o->mass_target;
	if (o->rerank)
		cfg->rerank = o->rerank;
	if (o->tail >= 0)
		cfg->tail_estimate = o->tail;
	cfg->exact = exact;
}

struct kvgen *make_gen(const struct opts *o)
{
	struct kvgen_params p;
	struct kvgen *g;

	kvgen_params_init(&p);
	p.seed = o->seed;
	p.n_q_heads = o->heads;
	p.n_kv_heads = o->kv_heads;
	p.head_dim = o->dim;
	g = kvgen_new(&p);
	if (!g) {
		fprintf(stderr, "dashkv-bench: bad geometry for the generator "
			"(heads %u, kv heads %u, dim %u)\n", o->heads, o->kv_heads, o->dim);
		exit(2);
	}
	return g;
}

double cfg_scale(const dkv_seq_config *cfg)
{
	return cfg->scale > 0 ? cfg->scale : 1.0 / sqrt((double)cfg->head_dim);
}

const char *on_off(int32_t v)
{
	return v ? "on" : "off";
}

/* ---- JSON and text output ---- */

void json_summary(const char *name, const struct summary *s, int comma)
{
	printf("    \"%s\": {\"median\": %.6g, \"p10\": %.6g, \"p90\": %.6g, "
	       "\"mean\": %.6g}%s\n", name, s->median, s->p10, s->p90, s->mean,
	       comma ? "," : "");
}

void text_summary(const char *name, const struct summary *s)
{
	printf("  %-24s %10.4f %10.4f %10.4f %10.4f\n", name, s->median,
	       s->p10, s->p90, s->mean);
}

void json_config(const dkv_seq_config *cfg)
{
	printf("  \"config\": {\"hash\": \"%s\", \"hash_bits\": %u, \"top_k\": %u, "
	       "\"candidates\": %u, \"sink_tokens\": %u, \"recent_window\": %u, "
	       "\"tail_estimate\": %s, \"dtype\": \"%s\", \"n_q_heads\": %u, "
	       "\"n_kv_heads\": %u, \"head_dim\": %u},\n",
	       cfg->hash == DKV_HASH_LEARNED ? "learned" : "simhash",
	       cfg->hash_bits, cfg->top_k, cfg->candidates, cfg->sink_tokens,
	       cfg->recent_window, cfg->tail_estimate ? "true" : "false",
	       dtype_name(cfg->dtype), cfg->n_q_heads, cfg->n_kv_heads,
	       cfg->head_dim);
}
