/*
 * dashkv-bench - quality and speed of DASH-KV against exact attention,
 * measured side by side in one run on the realistic generator
 * (tests/gen/kvgen.h).  See dashkv-bench(1).
 *
 *   dashkv-bench quality [options]   recall and output error vs exact
 *   dashkv-bench speed [options]     decode step vs exact mode, memory
 *                                    bandwidth, coarse scan bytes/s
 *
 * The engine runs embedded (dkv_connect("embedded")); runtime/trace.h
 * tells which tokens a query took exactly.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "dashkv.h"
#include "krn.h"
#include "trace.h"
#include "gen/kvgen.h"
#include "ref_attn.h"
#include "bench/ipc.h"
#include "capture.h"
#include "engine.h"
#include "hash.h"

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

/* ---- small helpers ---- */

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", n * sz);
		exit(1);
	}
	return p;
}

static const char *dtype_name(int32_t dt)
{
	return dt == DKV_F16 ? "f16" : dt == DKV_BF16 ? "bf16" : "f32";
}

static size_t dtype_size(int32_t dt)
{
	return dt == DKV_F32 ? 4 : 2;
}

/*
 * x [n] f32 -> out in dtype; x is overwritten with the value the engine
 * will see (rounded through the dtype), so references use the same data.
 */
static void to_dtype(float *x, size_t n, int32_t dt, void *out)
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

static void from_dtype(const void *in, size_t n, int32_t dt, float *x)
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

struct summary {
	double median, p10, p90, mean;
};

/* summary of x[0..n) (sorts x) */
static struct summary summarize(double *x, size_t n)
{
	struct summary s = { NAN, NAN, NAN, NAN };
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

static double median_of(double *x, size_t n)
{
	return summarize(x, n).median;
}

static void die_dkv(const char *what, int rc, const dkv_client *c)
{
	fprintf(stderr, "dashkv-bench: %s: %s%s%s\n", what, dkv_strerror(rc),
		c ? ": " : "", c ? dkv_errmsg(c) : "");
	exit(rc == DKV_E_UNSUPPORTED ? 3 : 1);
}

/* ---- sequences ---- */

static void seq_config(const struct opts *o, uint64_t max_tokens, int exact,
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
	if (o->tail >= 0)
		cfg->tail_estimate = o->tail;
	cfg->exact = exact;
}

static struct kvgen *make_gen(const struct opts *o)
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

static double cfg_scale(const dkv_seq_config *cfg)
{
	return cfg->scale > 0 ? cfg->scale : 1.0 / sqrt((double)cfg->head_dim);
}

static const char *on_off(int32_t v)
{
	return v ? "on" : "off";
}

/* ---- JSON and text output ---- */

static void json_summary(const char *name, const struct summary *s, int comma)
{
	printf("    \"%s\": {\"median\": %.6g, \"p10\": %.6g, \"p90\": %.6g, "
	       "\"mean\": %.6g}%s\n", name, s->median, s->p10, s->p90, s->mean,
	       comma ? "," : "");
}

static void text_summary(const char *name, const struct summary *s)
{
	printf("  %-24s %10.4f %10.4f %10.4f %10.4f\n", name, s->median,
	       s->p10, s->p90, s->mean);
}

static void json_config(const dkv_seq_config *cfg)
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

/* ================= quality ================= */

struct quality {
	const struct opts *o;
	struct kvgen *g;
	dkv_client *c;
	dkv_seq *s;
	dkv_seq_config cfg;
	uint32_t n;          /* tokens */
	float *K, *V;        /* [n][kv][dim], as the engine stores them */
	/* per query head scratch */
	double *logit, *p, *scr, *oex, *oor;
	uint8_t *mark;
	uint32_t *top;
	/* samples per (query, head) */
	double *mass, *rec, *err, *omass, *oerr, *nex, *conc;
	size_t n_s, n_conc;
	uint32_t needle_hits, needle_trials, needle_queries;
	double *step_ms;
	uint32_t budget;
	double train_ms;     /* dkv_seq_train after the fill (learned) */
	uint32_t n_fill;     /* tokens appended before the decode queries */
};

/*
 * A capture as the data source: keys of --layer as captured, values
 * drawn N(0, 1) from the position (a capture holds none), queries as
 * captured.
 */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void capture_kv(struct quality *b, uint32_t t0, uint32_t n)
{
	const struct rt_capture *c = b->o->cap;
	size_t tok = (size_t)c->n_kv_heads * c->head_dim;
	float *v = b->V + (size_t)t0 * tok;

	memcpy(b->K + (size_t)t0 * tok, rt_capture_keys(c, b->o->layer) + (size_t)t0 * tok,
	       (size_t)n * tok * sizeof(float));
	for (size_t i = 0; i < (size_t)n * tok; i += 2) {
		uint64_t key = (uint64_t)t0 * tok + i + 1;
		double u1 = ((mix64(key * 0x9e3779b97f4a7c15ull) >> 11) + 1) * 0x1p-53;
		double u2 = (mix64(key * 0x9e3779b97f4a7c15ull + 1) >> 11) * 0x1p-53;
		double r = sqrt(-2.0 * log(u1));
		v[i] = (float)(r * cos(2 * M_PI * u2));
		v[i + 1] = (float)(r * sin(2 * M_PI * u2));
	}
}

static const float *capture_query(const struct quality *b, uint32_t pos)
{
	const struct rt_capture *c = b->o->cap;
	return rt_capture_queries(c, b->o->layer) + (size_t)pos * c->n_heads * c->head_dim;
}

/* Queries per prefill chunk that a learned sequence trains from. */
#define PREFILL_Q 64u

static void quality_fill(struct quality *b)
{
	const struct opts *o = b->o;
	size_t tok = (size_t)o->kv_heads * o->dim, all = (size_t)o->heads * o->dim;
	size_t es = dtype_size(o->dtype);
	void *kd = xmalloc(CHUNK * tok * es);
	void *vd = xmalloc(CHUNK * tok * es);
	float *q = xmalloc(PREFILL_Q * all * sizeof(float));
	void *qd = xmalloc(PREFILL_Q * all * es), *od = xmalloc(PREFILL_Q * all * es);
	int learned = b->cfg.hash == DKV_HASH_LEARNED;
	int rc;

	for (uint32_t i = 0; i < b->n_fill; i += CHUNK) {
		uint32_t m = b->n_fill - i < CHUNK ? b->n_fill - i : CHUNK;
		uint32_t nq = learned ? (m < PREFILL_Q ? m : PREFILL_Q) : 0;
		float *k = b->K + (size_t)i * tok, *v = b->V + (size_t)i * tok;
		if (o->cap)
			capture_kv(b, i, m);
		else
			kvgen_kv(b->g, i, m, k, v);
		to_dtype(k, m * tok, o->dtype, kd);
		to_dtype(v, m * tok, o->dtype, vd);
		/* prefill queries at the chunk's last positions, other draws than decode's */
		for (uint32_t j = 0; j < nq; j++)
			if (o->cap)
				memcpy(q + j * all, capture_query(b, i + m - nq + j),
				       all * sizeof(float));
			else
				kvgen_queries(b->g, i + m - nq + j, 1000 + j, q + j * all);
		to_dtype(q, nq * all, o->dtype, qd);
		rc = dkv_step(b->s, 0, qd, nq, kd, vd, m, od);
		if (rc)
			die_dkv("append", rc, b->c);
	}
	free(kd);
	free(vd);
	free(q);
	free(qd);
	free(od);
}

/* Fit the learned models after the fill, or load them from --model. */
static void quality_train(struct quality *b)
{
	uint64_t t0 = now_ns();
	int rc;

	if (b->cfg.hash != DKV_HASH_LEARNED)
		return;
	if (b->o->model)
		rc = rt_seq_load_model(b->s, b->o->model, b->o->cap ? b->o->layer : 0);
	else
		rc = dkv_seq_train(b->s);
	if (rc)
		die_dkv(b->o->model ? "load model" : "train", rc, b->c);
	b->train_ms = (now_ns() - t0) / 1e6;
}

static void quality_open(struct quality *b)
{
	const struct opts *o = b->o;
	int rc;

	seq_config(o, b->n, 0, &b->cfg);
	rc = dkv_connect("embedded", &b->c);
	if (rc)
		die_dkv("connect", rc, NULL);
	rc = dkv_seq_open(b->c, &b->cfg, &b->s);
	if (rc)
		die_dkv("open", rc, b->c);
	rc = rt_seq_set_trace(b->s, 1);
	if (rc)
		die_dkv("trace", rc, b->c);
}

static void quality_alloc(struct quality *b)
{
	const struct opts *o = b->o;
	size_t n = b->n, tok = (size_t)o->kv_heads * o->dim;
	size_t ns = (size_t)o->queries * o->heads;

	b->K = xmalloc(n * tok * sizeof(float));
	b->V = xmalloc(n * tok * sizeof(float));
	b->logit = xmalloc(n * sizeof(double));
	b->p = xmalloc(n * sizeof(double));
	b->scr = xmalloc(n * sizeof(double));
	b->mark = xcalloc(n, 1);
	b->top = xmalloc(n * sizeof(uint32_t));
	b->oex = xmalloc(o->dim * sizeof(double));
	b->oor = xmalloc(o->dim * sizeof(double));
	b->mass = xmalloc(ns * sizeof(double));
	b->rec = xmalloc(ns * sizeof(double));
	b->err = xmalloc(ns * sizeof(double));
	b->omass = xmalloc(ns * sizeof(double));
	b->oerr = xmalloc(ns * sizeof(double));
	b->nex = xmalloc(ns * sizeof(double));
	b->conc = xmalloc(ns * sizeof(double));
	b->step_ms = xmalloc(o->queries * sizeof(double));
}

static void quality_free(struct quality *b)
{
	free(b->K);
	free(b->V);
	free(b->logit);
	free(b->p);
	free(b->scr);
	free(b->mark);
	free(b->top);
	free(b->oex);
	free(b->oor);
	free(b->mass);
	free(b->rec);
	free(b->err);
	free(b->omass);
	free(b->oerr);
	free(b->nex);
	free(b->conc);
	free(b->step_ms);
}

/* the k-th largest of x[0..n) (1 <= k <= n); scratch holds n doubles */
static double kth_largest(const double *x, uint32_t n, uint32_t k, double *scr)
{
	uint32_t lo = 0, hi = n;

	memcpy(scr, x, (size_t)n * sizeof(*scr));
	while (hi - lo > 1) {
		double piv = scr[lo + (hi - lo) / 2];
		uint32_t lt = lo, i = lo, gt = hi;
		while (i < gt) {
			double t = scr[i];
			if (t > piv) {
				scr[i++] = scr[lt];
				scr[lt++] = t;
			} else if (t < piv) {
				scr[i] = scr[--gt];
				scr[gt] = t;
			} else {
				i++;
			}
		}
		if (k <= lt)
			hi = lt;
		else if (k <= gt)
			return piv;
		else
			lo = gt;
	}
	return scr[lo];
}

/* indices of the k largest logits (ties by lower index) into idx */
static uint32_t top_indices(const double *x, uint32_t n, uint32_t k,
			    uint32_t *idx, double *scr)
{
	double t;
	uint32_t m = 0, ties = k;

	if (k > n)
		k = ties = n;
	if (!k)
		return 0;
	t = kth_largest(x, n, k, scr);
	for (uint32_t i = 0; i < n; i++)
		ties -= x[i] > t;
	for (uint32_t i = 0; i < n && m < k; i++) {
		if (x[i] > t) {
			idx[m++] = i;
		} else if (x[i] == t && ties > 0) {
			idx[m++] = i;
			ties--;
		}
	}
	return m;
}

/* exact softmax p[] and output oex of query head qh (q rounded f32) */
static void exact_head(struct quality *b, const float *qv, uint32_t qh)
{
	const struct opts *o = b->o;
	uint32_t kvh = qh / (o->heads / o->kv_heads), d = o->dim;
	double mx = -INFINITY, sum = 0;

	ref_logits(qv, b->K, b->n, o->kv_heads, kvh, d, cfg_scale(&b->cfg), b->logit);
	for (uint32_t i = 0; i < b->n; i++)
		mx = b->logit[i] > mx ? b->logit[i] : mx;
	for (uint32_t i = 0; i < b->n; i++)
		sum += (b->p[i] = exp(b->logit[i] - mx));
	for (uint32_t j = 0; j < d; j++)
		b->oex[j] = 0;
	for (uint32_t i = 0; i < b->n; i++) {
		const float *vi = b->V + ((size_t)i * o->kv_heads + kvh) * d;
		b->p[i] /= sum;
		for (uint32_t j = 0; j < d; j++)
			b->oex[j] += b->p[i] * vi[j];
	}
}

/* the oracle: top-budget tokens by true logit, softmax over them alone */
static void oracle_head(struct quality *b, uint32_t qh, double *mass, double *err)
{
	const struct opts *o = b->o;
	uint32_t kvh = qh / (o->heads / o->kv_heads), d = o->dim;
	uint32_t m = top_indices(b->logit, b->n, b->budget, b->top, b->scr);
	double sum = 0, num = 0, den = 0;

	for (uint32_t j = 0; j < d; j++)
		b->oor[j] = 0;
	for (uint32_t t = 0; t < m; t++) {
		uint32_t i = b->top[t];
		const float *vi = b->V + ((size_t)i * o->kv_heads + kvh) * d;
		sum += b->p[i];
		for (uint32_t j = 0; j < d; j++)
			b->oor[j] += b->p[i] * vi[j];
	}
	for (uint32_t j = 0; j < d; j++) {
		double x = b->oor[j] / sum - b->oex[j];
		num += x * x;
		den += b->oex[j] * b->oex[j];
	}
	*mass = sum;
	*err = den > 0 ? sqrt(num / den) : sqrt(num);
}

/* mass recall and recall@K of the engine's exact set for query head qh */
static void engine_head(struct quality *b, uint32_t qh, double *mass,
			double *rec, double *nex)
{
	const uint32_t *idx;
	int ne = rt_seq_trace_exact(b->s, qh, &idx);
	uint32_t k = b->cfg.top_k < b->n ? b->cfg.top_k : b->n, m, hit = 0;
	double s = 0;

	if (ne < 0)
		die_dkv("trace", ne, b->c);
	for (int t = 0; t < ne; t++) {
		s += b->p[idx[t]];
		b->mark[idx[t]] = 1;
	}
	m = top_indices(b->logit, b->n, k, b->top, b->scr);
	for (uint32_t t = 0; t < m; t++)
		hit += b->mark[b->top[t]];
	for (int t = 0; t < ne; t++)
		b->mark[idx[t]] = 0;
	*mass = s;
	*rec = m ? (double)hit / m : 1.0;
	*nex = ne;
}

static int in_trace(const struct quality *b, uint32_t qh, uint64_t pos)
{
	const uint32_t *idx;
	int ne = rt_seq_trace_exact(b->s, qh, &idx);

	for (int t = 0; t < ne; t++)
		if (idx[t] == pos)
			return 1;
	return 0;
}

/* one query (all heads) through the engine and the reference */
static void quality_query(struct quality *b, uint32_t r, float *q, void *qd,
			  void *od, float *out)
{
	const struct opts *o = b->o;
	uint64_t pos = b->n - 1;
	uint64_t nn = b->g ? kvgen_needle_count(b->g, b->n > 64 ? b->n - 64 : 0) : 0;
	size_t all = (size_t)o->heads * o->dim;
	int needle = nn > 0 && r % 4 == 3;
	uint64_t ni = needle ? (r / 4) % nn : 0, t0;
	int rc;

	if (o->cap) {
		/* replay: token pos is appended with its own query */
		size_t tok = (size_t)o->kv_heads * o->dim;
		void *kd = xmalloc(tok * dtype_size(o->dtype)), *vd = xmalloc(tok * dtype_size(o->dtype));
		pos = b->n_fill + r;
		needle = 0;
		capture_kv(b, (uint32_t)pos, 1);
		memcpy(q, capture_query(b, (uint32_t)pos), all * sizeof(float));
		to_dtype(b->K + pos * tok, tok, o->dtype, kd);
		to_dtype(b->V + pos * tok, tok, o->dtype, vd);
		to_dtype(q, all, o->dtype, qd);
		t0 = now_ns();
		rc = dkv_step(b->s, 0, qd, 1, kd, vd, 1, od);
		free(kd);
		free(vd);
		b->n = (uint32_t)pos + 1; /* the reference sees keys [0, pos] */
	} else {
		if (needle)
			kvgen_needle_queries(b->g, ni, pos, q);
		else
			kvgen_queries(b->g, pos, r, q);
		to_dtype(q, all, o->dtype, qd);
		t0 = now_ns();
		rc = dkv_step(b->s, 0, qd, 1, NULL, NULL, 0, od);
	}
	b->step_ms[r] = (now_ns() - t0) / 1e6;
	if (rc)
		die_dkv("step", rc, b->c);
	from_dtype(od, all, o->dtype, out);
	b->needle_queries += needle;
	for (uint32_t qh = 0; qh < o->heads; qh++) {
		size_t s = b->n_s++;
		exact_head(b, q + (size_t)qh * o->dim, qh);
		engine_head(b, qh, &b->mass[s], &b->rec[s], &b->nex[s]);
		b->err[s] = ref_rel_error(out + (size_t)qh * o->dim, b->oex, o->dim);
		oracle_head(b, qh, &b->omass[s], &b->oerr[s]);
		if (needle) {
			b->needle_trials++;
			b->needle_hits += in_trace(b, qh, kvgen_needle_pos(b->g, ni));
		} else {
			b->conc[b->n_conc++] = kvgen_top_mass(b->logit, b->n, 0.01, b->scr);
		}
	}
}

static void quality_queries(struct quality *b)
{
	const struct opts *o = b->o;
	size_t all = (size_t)o->heads * o->dim;
	float *q = xmalloc(all * sizeof(float)), *out = xmalloc(all * sizeof(float));
	void *qd = xmalloc(all * dtype_size(o->dtype));
	void *od = xmalloc(all * dtype_size(o->dtype));

	for (uint32_t r = 0; r < o->queries; r++)
		quality_query(b, r, q, qd, od, out);
	free(q);
	free(out);
	free(qd);
	free(od);
}

struct quality_result {
	struct summary mass, rec, err, nex, omass, oerr, step, conc;
	double cand, est;
};

static void quality_print_text(const struct quality *b, const struct quality_result *r)
{
	const dkv_seq_config *c = &b->cfg;

	printf("dashkv-bench quality: %u tokens, %u q heads / %u kv heads, head_dim %u, %s, seed %llu\n",
	       b->n, c->n_q_heads, c->n_kv_heads, c->head_dim, dtype_name(c->dtype),
	       (unsigned long long)b->o->seed);
	if (b->o->cap)
		printf("capture %s, layer %u (values drawn N(0, 1)): the top 1%% of tokens hold "
		       "%.1f%% of the exact softmax mass (mean of %zu query heads)\n",
		       b->o->capture, b->o->layer, 100 * r->conc.mean, b->n_conc);
	else
		printf("generator: the top 1%% of tokens hold %.1f%% of the exact softmax mass "
		       "(mean of %zu plain query heads; median %.1f%%)\n",
		       100 * r->conc.mean, b->n_conc, 100 * r->conc.median);
	printf("engine: %s %u bits, top_k %u, candidates %u, sinks %u, window %u, tail %s, kernels %s\n",
	       c->hash == DKV_HASH_LEARNED ? "learned" : "simhash", c->hash_bits,
	       c->top_k, c->candidates, c->sink_tokens, c->recent_window,
	       on_off(c->tail_estimate), rt_kernel_name());
	printf("queries: %u decode queries at position %u (%u aimed at needles), "
	       "each head against exact attention in double\n",
	       b->o->queries, b->n - 1, b->needle_queries);
	printf("\n  %-24s %10s %10s %10s %10s\n", "per query head", "median", "p10", "p90", "mean");
	text_summary("mass recall", &r->mass);
	printf("  recall@%-16u %10.4f %10.4f %10.4f %10.4f\n", c->top_k < b->n ? c->top_k : b->n,
	       r->rec.median, r->rec.p10, r->rec.p90, r->rec.mean);
	text_summary("output error", &r->err);
	text_summary("tokens taken exactly", &r->nex);
	text_summary("oracle mass", &r->omass);
	text_summary("oracle output error", &r->oerr);
	printf("\nneedle hit rate: %.3f (%u of %u needle query heads took the needle exactly)\n",
	       b->needle_trials ? (double)b->needle_hits / b->needle_trials : NAN,
	       b->needle_hits, b->needle_trials);
	printf("step time: median %.3f ms, p90 %.3f ms per decode query (%u heads); "
	       "mean coarse survivors %.0f, estimated tokens %.0f per head (last step)\n",
	       r->step.median, r->step.p90, c->n_q_heads, r->cand, r->est);
	printf("oracle: the %u tokens with the largest true logits (top_k + sinks + window),\n"
	       "        exact softmax over them alone, no tail estimate.\n", b->budget);
	printf("mass recall: share of the exact softmax mass on the tokens the engine took\n"
	       "        exactly; output error: ||o - o_exact|| / ||o_exact||.\n");
}

static void quality_print_json(const struct quality *b, const struct quality_result *r)
{
	printf("{\n  \"command\": \"quality\",\n  \"tokens\": %u,\n  \"seed\": %llu,\n",
	       b->n, (unsigned long long)b->o->seed);
	json_config(&b->cfg);
	printf("  \"kernels\": \"%s\",\n  \"queries\": %u,\n  \"needle_queries\": %u,\n",
	       rt_kernel_name(), b->o->queries, b->needle_queries);
	printf("  \"concentration_top1pct\": %.6g,\n  \"oracle_budget\": %u,\n",
	       r->conc.mean, b->budget);
	printf("  \"engine\": {\n");
	json_summary("mass_recall", &r->mass, 1);
	json_summary("recall_at_k", &r->rec, 1);
	json_summary("output_error", &r->err, 1);
	json_summary("exact_tokens", &r->nex, 1);
	json_summary("step_ms", &r->step, 1);
	printf("    \"needle_hit_rate\": %.6g,\n    \"needle_trials\": %u\n  },\n",
	       b->needle_trials ? (double)b->needle_hits / b->needle_trials : 0.0,
	       b->needle_trials);
	printf("  \"oracle\": {\n");
	json_summary("mass_recall", &r->omass, 1);
	json_summary("output_error", &r->oerr, 0);
	printf("  }\n}\n");
}

/* One engine configuration through the whole quality run; b is left open. */
static void quality_run(struct quality *b, struct quality_result *r)
{
	const struct opts *o = b->o;
	dkv_stats st = { .struct_size = sizeof(st) };

	b->n = o->cap ? o->cap->n_tokens : (uint32_t)o->tokens[0];
	b->n_fill = o->cap ? b->n - o->queries : b->n;
	b->g = o->cap ? NULL : make_gen(o);
	quality_alloc(b);
	quality_open(b);
	b->budget = b->cfg.top_k + b->cfg.sink_tokens + b->cfg.recent_window;
	quality_fill(b);
	quality_train(b);
	quality_queries(b);
	if (dkv_seq_stats(b->s, &st) == DKV_OK) {
		r->cand = st.last_candidates;
		r->est = st.last_estimated_tokens;
	}
	r->mass = summarize(b->mass, b->n_s);
	r->rec = summarize(b->rec, b->n_s);
	r->err = summarize(b->err, b->n_s);
	r->nex = summarize(b->nex, b->n_s);
	r->omass = summarize(b->omass, b->n_s);
	r->oerr = summarize(b->oerr, b->n_s);
	r->step = summarize(b->step_ms, o->queries);
	r->conc = summarize(b->conc, b->n_conc);
}

static void quality_close(struct quality *b)
{
	dkv_seq_close(b->s);
	dkv_disconnect(b->c);
	quality_free(b);
	kvgen_free(b->g);
}

/*
 * --hash both: SimHash and learned side by side for every --bits and
 * --candidates value, on the same data and queries.
 */
static int quality_compare(const struct opts *o)
{
	struct opts v = *o;

	printf("dashkv-bench quality: simhash vs learned, %llu tokens, %u q heads / %u kv heads, "
	       "head_dim %u, %u decode queries, %s %s\n",
	       (unsigned long long)(o->cap ? o->cap->n_tokens : o->tokens[0]), o->heads,
	       o->kv_heads, o->dim, o->queries, o->cap ? "capture" : "generator",
	       o->cap ? o->capture : "");
	if (!o->cap)
		printf("generator seed %llu\n", (unsigned long long)o->seed);
	printf("medians over query heads; train: dkv_seq_train ms per kv head\n\n");
	printf("  %-8s %4s %6s %6s %11s %9s %10s %10s %9s %9s\n", "hash", "bits", "cand",
	       "top_k", "mass recall", "recall@K", "out error", "exact mean",
	       "survivors", "train ms");
	for (uint32_t bi = 0; bi < o->n_bits; bi++)
		for (uint32_t ci = 0; ci < o->n_cand; ci++)
			for (int h = DKV_HASH_SIMHASH; h <= DKV_HASH_LEARNED; h++) {
				struct quality b = { .o = &v };
				struct quality_result r = { .cand = 0 };
				v.bits = o->bits_list[bi];
				v.candidates = o->cand_list[ci];
				v.hash = h;
				quality_run(&b, &r);
				printf("  %-8s %4u %6u %6u %11.4f %9.4f %10.4f %10.1f %9.0f %9.1f\n",
				       h == DKV_HASH_LEARNED ? "learned" : "simhash", b.cfg.hash_bits,
				       b.cfg.candidates, b.cfg.top_k, r.mass.median, r.rec.median,
				       r.err.median, r.nex.mean, r.cand,
				       b.train_ms / b.cfg.n_kv_heads);
				fflush(stdout);
				quality_close(&b);
			}
	return 0;
}

/* --capture: read the file, take its geometry; 0 or exits. */
static void load_capture(struct opts *v, struct rt_capture *c)
{
	char err[512];
	int rc = rt_capture_read(v->capture, c, err);

	if (rc) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		exit(1);
	}
	if (v->layer >= c->n_layers || c->head_dim % 8 || v->queries >= c->n_tokens) {
		fprintf(stderr, "dashkv-bench: %s: layer %u of %u, head_dim %u (a multiple of 8), "
			"%u queries of %u tokens: cannot use it\n", v->capture, v->layer,
			c->n_layers, c->head_dim, v->queries, c->n_tokens);
		exit(2);
	}
	v->heads = c->n_heads;
	v->kv_heads = c->n_kv_heads;
	v->dim = c->head_dim;
	v->cap = c;
}

static int cmd_quality(const struct opts *o0)
{
	struct opts v = *o0, *o = &v;
	struct rt_capture cap = { 0, 0, 0, 0, 0, NULL };
	struct quality b = { .o = o };
	struct quality_result r = { .cand = 0 };
	int rc;

	if (o->capture)
		load_capture(o, &cap);
	if (o->both) {
		rc = quality_compare(o);
		rt_capture_free(&cap);
		return rc;
	}
	quality_run(&b, &r);
	if (o->json)
		quality_print_json(&b, &r);
	else
		quality_print_text(&b, &r);
	quality_close(&b);
	rt_capture_free(&cap);
	return 0;
}

/*
 * capture: the generator's keys and draw-0 queries at every position
 * into a DKVCAPT1 file; layer l is the generator with seed + l.
 */
static int cmd_capture(const struct opts *o)
{
	struct rt_capture_writer w;
	uint32_t n = (uint32_t)o->tokens[0];
	size_t tok = (size_t)o->kv_heads * o->dim, all = (size_t)o->heads * o->dim;
	float *k = xmalloc(CHUNK * tok * sizeof(float)), *q = xmalloc(CHUNK * all * sizeof(float));
	char err[512];

	if (rt_capture_begin(&w, o->out, o->dim, o->heads, o->kv_heads, o->layers, n, err)) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		return 1;
	}
	for (uint32_t l = 0; l < o->layers; l++) {
		struct opts v = *o;
		v.seed = o->seed + l;
		struct kvgen *g = make_gen(&v);
		for (uint32_t i = 0; i < n; i += CHUNK) {
			uint32_t m = n - i < CHUNK ? n - i : CHUNK;
			kvgen_kv(g, i, m, k, NULL);
			rt_capture_put(&w, k, m * tok);
		}
		for (uint32_t i = 0; i < n; i += CHUNK) {
			uint32_t m = n - i < CHUNK ? n - i : CHUNK;
			for (uint32_t j = 0; j < m; j++)
				kvgen_queries(g, i + j, 0, q + j * all);
			rt_capture_put(&w, q, m * all);
		}
		kvgen_free(g);
	}
	free(k);
	free(q);
	if (rt_capture_end(&w, err)) {
		fprintf(stderr, "dashkv-bench: %s\n", err);
		return 1;
	}
	printf("wrote %s: %u layers x %u tokens, %u q heads / %u kv heads, head_dim %u\n",
	       o->out, o->layers, n, o->heads, o->kv_heads, o->dim);
	return 0;
}

/* ================= speed ================= */

struct speed_row {
	uint64_t n;
	uint32_t reps;
	int rc;                  /* DKV_OK, or why the row was skipped */
	char why[160];
	double fill_dash_s, fill_exact_s, gen_s;
	double dash_ms, exact_ms, dash_att_ms, exact_att_ms;
	double phase_ms[3];      /* DASH-KV: coarse filter, fine ranking, tail */
	double err, cand, nexact;
	uint64_t bytes_dash, bytes_exact;
};

struct speed {
	const struct opts *o;
	struct kvgen *g;
	dkv_client *c;
	dkv_seq *s[2];           /* 0: DASH-KV, 1: exact mode */
	dkv_seq_config cfg[2];
	size_t tok, all;         /* floats per token (k or v), per query */
	float *k, *v, *q, *out[2];
	void *kd, *vd, *qd, *od[2];
};

static void speed_alloc(struct speed *b)
{
	const struct opts *o = b->o;
	size_t es = dtype_size(o->dtype);

	b->tok = (size_t)o->kv_heads * o->dim;
	b->all = (size_t)o->heads * o->dim;
	b->k = xmalloc(CHUNK * b->tok * sizeof(float));
	b->v = xmalloc(CHUNK * b->tok * sizeof(float));
	b->kd = xmalloc(CHUNK * b->tok * es);
	b->vd = xmalloc(CHUNK * b->tok * es);
	b->q = xmalloc(b->all * sizeof(float));
	b->qd = xmalloc(b->all * es);
	for (int m = 0; m < 2; m++) {
		b->out[m] = xmalloc(b->all * sizeof(float));
		b->od[m] = xmalloc(b->all * es);
	}
}

static void speed_free(struct speed *b)
{
	free(b->k);
	free(b->v);
	free(b->kd);
	free(b->vd);
	free(b->q);
	free(b->qd);
	for (int m = 0; m < 2; m++) {
		free(b->out[m]);
		free(b->od[m]);
	}
}

static int row_fail(struct speed_row *row, const char *what, int rc,
		    const dkv_client *c)
{
	row->rc = rc;
	snprintf(row->why, sizeof(row->why), "%s: %s: %s", what,
		 dkv_strerror(rc), dkv_errmsg(c));
	for (char *p = row->why; *p; p++) /* it goes into JSON as is */
		if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
			*p = '\'';
	return rc;
}

static void speed_close(struct speed *b)
{
	for (int m = 0; m < 2; m++) {
		if (b->s[m])
			dkv_seq_close(b->s[m]);
		b->s[m] = NULL;
	}
}

static int speed_open(struct speed *b, struct speed_row *row)
{
	int rc;

	for (int m = 0; m < 2; m++) {
		seq_config(b->o, row->n + row->reps + 1, m, &b->cfg[m]);
		rc = dkv_seq_open(b->c, &b->cfg[m], &b->s[m]);
		if (rc)
			return row_fail(row, m ? "open exact" : "open dash", rc, b->c);
	}
	return DKV_OK;
}

/* append the first n tokens to both sequences */
static int speed_fill(struct speed *b, struct speed_row *row)
{
	const struct opts *o = b->o;
	uint64_t t0, tg = 0, ta[2] = { 0, 0 };
	int rc;

	for (uint64_t i = 0; i < row->n; i += CHUNK) {
		uint32_t m = row->n - i < CHUNK ? (uint32_t)(row->n - i) : CHUNK;
		t0 = now_ns();
		kvgen_kv(b->g, i, m, b->k, b->v);
		to_dtype(b->k, m * b->tok, o->dtype, b->kd);
		to_dtype(b->v, m * b->tok, o->dtype, b->vd);
		tg += now_ns() - t0;
		for (int s = 0; s < 2; s++) {
			t0 = now_ns();
			rc = dkv_step(b->s[s], 0, NULL, 0, b->kd, b->vd, m, NULL);
			ta[s] += now_ns() - t0;
			if (rc)
				return row_fail(row, s ? "append exact" : "append dash", rc, b->c);
		}
	}
	row->gen_s = tg / 1e9;
	row->fill_dash_s = ta[0] / 1e9;
	row->fill_exact_s = ta[1] / 1e9;
	return DKV_OK;
}

/* ||a - b|| / ||b|| in double */
static double rel_err_f32(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;

	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];
		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* one decode step (append 1 token, attend 1 query) of sequence m */
static int speed_step(struct speed *b, int m, double *wall, double *att,
		      double *phase, struct speed_row *row)
{
	dkv_stats st = { .struct_size = sizeof(st) };
	uint64_t t0 = now_ns();
	int rc = dkv_step(b->s[m], 0, b->qd, 1, b->kd, b->vd, 1, b->od[m]);

	*wall = (now_ns() - t0) / 1e6;
	if (rc)
		return row_fail(row, m ? "step exact" : "step dash", rc, b->c);
	dkv_seq_stats(b->s[m], &st);
	*att = st.last_attend_ns / 1e6;
	phase[0] = st.last_coarse_ns / 1e6;
	phase[1] = st.last_fine_ns / 1e6;
	phase[2] = st.last_tail_ns / 1e6;
	if (!m) {
		row->cand = st.last_candidates;
		row->nexact = st.last_exact_tokens;
	}
	from_dtype(b->od[m], b->all, b->o->dtype, b->out[m]);
	return DKV_OK;
}

static int speed_reps(struct speed *b, struct speed_row *row)
{
	double *w[2], *a[2], *ph[3], *err = xmalloc(row->reps * sizeof(double));
	int rc = DKV_OK;

	for (int m = 0; m < 2; m++) {
		w[m] = xmalloc(row->reps * sizeof(double));
		a[m] = xmalloc(row->reps * sizeof(double));
	}
	for (int i = 0; i < 3; i++)
		ph[i] = xmalloc(row->reps * sizeof(double));
	/* step r = 0 is an untimed warm-up (first page, first training) */
	for (uint32_t r = 0; r <= row->reps && rc == DKV_OK; r++) {
		uint64_t pos = row->n + r;
		kvgen_kv(b->g, pos, 1, b->k, b->v);
		kvgen_queries(b->g, pos, 0, b->q);
		to_dtype(b->k, b->tok, b->o->dtype, b->kd);
		to_dtype(b->v, b->tok, b->o->dtype, b->vd);
		to_dtype(b->q, b->all, b->o->dtype, b->qd);
		/* alternate which mode goes first */
		for (int t = 0; t < 2 && rc == DKV_OK; t++) {
			int m = (int)((r + t) % 2);
			double wall = 0, att = 0, phase[3];
			rc = speed_step(b, m, &wall, &att, phase, row);
			if (r > 0) {
				w[m][r - 1] = wall;
				a[m][r - 1] = att;
				for (int i = 0; i < 3 && !m; i++)
					ph[i][r - 1] = phase[i];
			}
		}
		if (r > 0)
			err[r - 1] = rel_err_f32(b->out[0], b->out[1], b->all);
	}
	if (rc == DKV_OK) {
		row->dash_ms = median_of(w[0], row->reps);
		row->exact_ms = median_of(w[1], row->reps);
		row->dash_att_ms = median_of(a[0], row->reps);
		row->exact_att_ms = median_of(a[1], row->reps);
		row->err = median_of(err, row->reps);
		for (int i = 0; i < 3; i++)
			row->phase_ms[i] = median_of(ph[i], row->reps);
	}
	for (int m = 0; m < 2; m++) {
		free(w[m]);
		free(a[m]);
	}
	for (int i = 0; i < 3; i++)
		free(ph[i]);
	free(err);
	return rc;
}

static void speed_bytes(struct speed *b, struct speed_row *row)
{
	dkv_stats st = { .struct_size = sizeof(st) };

	if (dkv_seq_stats(b->s[0], &st) == DKV_OK)
		row->bytes_dash = st.bytes_full + st.bytes_codes + st.bytes_summaries;
	if (dkv_seq_stats(b->s[1], &st) == DKV_OK)
		row->bytes_exact = st.bytes_full + st.bytes_codes + st.bytes_summaries;
}

static void speed_one(struct speed *b, struct speed_row *row)
{
	if (speed_open(b, row) == DKV_OK && speed_fill(b, row) == DKV_OK) {
		speed_bytes(b, row);
		speed_reps(b, row);
	}
	speed_close(b);
	if (!b->o->json)
		fprintf(stderr, "dashkv-bench: %llu tokens done%s%s\n",
			(unsigned long long)row->n, row->rc ? ": " : "", row->why);
}

/* ---- memory bandwidth and the coarse scan (krn coarse) ---- */

typedef uint64_t v2u64 __attribute__((vector_size(16)));

static uint64_t read_pass(const v2u64 *x, size_t n)
{
	v2u64 a = { 0, 0 }, b = a, c = a, d = a;
	size_t i;

	for (i = 0; i + 4 <= n; i += 4) {
		a += x[i];
		b += x[i + 1];
		c += x[i + 2];
		d += x[i + 3];
	}
	a += b + c + d;
	return a[0] + a[1];
}

#define SCAN_ROUNDS 9 /* bandwidth and scan passes, side by side */

struct bw_result {
	double gbps;
	uint32_t mib, runs;
};

#define HUGE_2M ((size_t)2 << 20)

/*
 * Memory as the engine's store pages get it: 2 MiB aligned, with the
 * advice to back it with huge pages, so the bandwidth and the scan read
 * through the same kind of page mapping as a step does.
 */
static void *big_alloc(size_t bytes)
{
	size_t sz = (bytes + HUGE_2M - 1) & ~(HUGE_2M - 1);
	void *p = aligned_alloc(HUGE_2M, sz);

	if (!p) {
		fprintf(stderr, "dashkv-bench: out of memory (%zu bytes)\n", sz);
		exit(1);
	}
#ifdef MADV_HUGEPAGE
	madvise(p, sz, MADV_HUGEPAGE); /* advice only */
#endif
	return p;
}

/*
 * One single-thread streaming read of a buffer much larger than the
 * caches, in seconds; the sum read goes to *sink, so the read is done.
 */
static double bw_pass(const v2u64 *x, size_t bytes, volatile uint64_t *sink)
{
	uint64_t t0 = now_ns();

	*sink += read_pass(x, bytes / sizeof(v2u64));
	return (now_ns() - t0) / 1e9;
}

struct scan_result {
	double gbps[2], ns_key[2]; /* [0]: one query per pass, [1]: nq per pass */
	double share[2];           /* median over rounds of gbps / bandwidth */
	uint32_t n, nq, words, bytes_key;
	uint32_t tokens, kv_heads, stride; /* n = tokens * kv_heads */
};

/*
 * The engine's coarse filter as it runs at long contexts: krn scan over
 * pages of byte-sliced codes with norms and norm classes, a threshold that
 * lets about 0.25% of keys through, and the tail estimate from every
 * stride-th key, the engine's stride for the context.  A step scans every
 * kv head's keys, so the keys are tokens x kv heads (168 MiB at 1M tokens
 * and 8 kv heads): more than a last-level cache holds, as in the engine.
 * Norms are spread over [8, 12]; classes and their stage-1 limits are the
 * engine's (rt_hash_class, rt_hash_probe_limits: 8 classes per octave
 * around 10).
 */
struct scan_data {
	uint32_t tokens, n, nq, words, stride; /* n = tokens x kv heads */
	uint8_t *codes, *cls;
	uint64_t *qc;
	float *norms, *tab, *thr, *ca, *cb, *blk;
	int32_t *lim;
	uint32_t *hit, *n_hit;
	struct rt_hash hm; /* its norm classes only */
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

#define SCAN_HIT_CAP 65536u

/* Threshold and stage-1 limit of query j: the 0.25% quantile of a sample. */
static void scan_threshold(struct scan_data *d, uint32_t j, uint64_t *s)
{
	uint32_t bits = 64 * d->words, ns = 4096;
	const float *tab = d->tab + (size_t)j * (bits + 1);
	float e[4096];

	for (uint32_t i = 0; i < ns; i++) {
		uint32_t p = (uint32_t)(splitmix(s) % d->n);
		uint64_t code[4];
		krn_code_read(krn_code_at(d->codes, d->words, p), d->words, code);
		uint32_t h = 0;
		for (uint32_t w = 0; w < d->words; w++)
			h += (uint32_t)__builtin_popcountll(code[w] ^ d->qc[j * d->words + w]);
		e[i] = d->norms[p] * tab[h];
	}
	for (uint32_t i = 0; i < 10; i++) /* the 10th largest of 4096 */
		for (uint32_t k = i + 1; k < ns; k++)
			if (e[k] > e[i]) {
				float t = e[i];
				e[i] = e[k];
				e[k] = t;
			}
	d->thr[j] = e[9];
	rt_hash_probe_limits(&d->hm, tab, d->thr[j], d->lim + j * KRN_CLASSES);
	d->ca[j] = 1.0f;
	d->cb[j] = -d->thr[j] - 30.0f;
}

/* The keys of tokens (whole pages) x kv_heads, for groups of nq queries. */
static struct scan_data scan_data_of(uint32_t tokens, uint32_t kv_heads, uint32_t nq)
{
	uint32_t tok = tokens < CHUNK ? CHUNK : tokens / CHUNK * CHUNK;

	return (struct scan_data){ .tokens = tok, .n = tok * kv_heads, .nq = nq, .words = 2,
				   .stride = rt_tail_stride(tok),
				   .hm = { .bits = 128, .mu_set = 1, .max_norm = 12.0f,
					   .norm_ref = 10.0f } };
}

static void scan_setup(struct scan_data *d)
{
	uint64_t s = 12345;
	uint32_t bits = 64 * d->words;

	/* the scan reads whole 32-key groups with aligned loads */
	d->codes = big_alloc((size_t)d->n * d->words * 8);
	d->cls = big_alloc(d->n);
	d->norms = big_alloc((size_t)d->n * sizeof(float));
	d->qc = xmalloc((size_t)d->nq * d->words * sizeof(uint64_t));
	d->tab = xmalloc((size_t)d->nq * (bits + 1) * sizeof(float));
	d->thr = xmalloc(d->nq * sizeof(float));
	d->ca = xmalloc(d->nq * sizeof(float));
	d->cb = xmalloc(d->nq * sizeof(float));
	d->lim = xmalloc(d->nq * KRN_CLASSES * sizeof(int32_t));
	d->blk = xmalloc((size_t)d->nq * (CHUNK / 64) * sizeof(float));
	d->hit = xmalloc((size_t)d->nq * SCAN_HIT_CAP * sizeof(uint32_t));
	d->n_hit = xmalloc(d->nq * sizeof(uint32_t));
	for (uint32_t p = 0; p < d->n; p++) {
		uint64_t code[4];
		for (uint32_t w = 0; w < d->words; w++)
			code[w] = splitmix(&s);
		krn_code_write((uint8_t *)krn_code_at(d->codes, d->words, p), d->words, code);
		d->norms[p] = 8.0f + (float)(splitmix(&s) % 1000) / 250.0f;
		d->cls[p] = rt_hash_class(&d->hm, d->norms[p]);
	}
	for (uint32_t j = 0; j < d->nq * d->words; j++)
		d->qc[j] = splitmix(&s);
	for (uint32_t j = 0; j < d->nq; j++) {
		for (uint32_t h = 0; h <= bits; h++)
			d->tab[j * (bits + 1) + h] = cosf((float)M_PI * h / bits);
		scan_threshold(d, j, &s);
	}
}

static void scan_free(struct scan_data *d)
{
	free(d->codes);
	free(d->cls);
	free(d->norms);
	free(d->qc);
	free(d->tab);
	free(d->thr);
	free(d->ca);
	free(d->cb);
	free(d->lim);
	free(d->blk);
	free(d->hit);
	free(d->n_hit);
}

/* one pass of kernel table k's scan for nq queries over all keys, page by page */
static double scan_pass(struct scan_data *d, const struct krn_ops *k, uint32_t nq)
{
	struct krn_scan_q q = { nq, d->words, d->qc, d->tab, d->lim, d->thr, d->ca, d->cb,
				d->stride };
	uint64_t t0 = now_ns();

	memset(d->n_hit, 0, nq * sizeof(uint32_t));
	for (uint32_t i = 0; i < d->n; i += CHUNK) {
		struct krn_scan_keys keys = {
			krn_code_at(d->codes, d->words, i), d->cls + i, d->norms + i, 0,
			d->n - i < CHUNK ? d->n - i : CHUNK, i
		};
		struct krn_scan_out o = { d->hit, SCAN_HIT_CAP, d->n_hit, d->blk, CHUNK / 64 };
		k->scan(&q, &keys, &o);
	}
	return (now_ns() - t0) / 1e9;
}

/*
 * The bandwidth and the scan, side by side: each round reads the
 * bandwidth buffer once, then makes one scan pass with one query and one
 * with the group.  A scan's share of the bandwidth is taken per round,
 * against the read made just before it, and the median of the rounds'
 * shares is reported, so that a noisy neighbour slowing the memory for a
 * while moves both sides of a ratio alike.
 */
static void measure_io(uint32_t mib, uint32_t tokens, uint32_t kv_heads, uint32_t nq,
		       struct bw_result *bw, struct scan_result *r)
{
	struct scan_data d = scan_data_of(tokens, kv_heads, nq);
	size_t bytes = (size_t)mib << 20;
	v2u64 *x = big_alloc(bytes);
	double tb[SCAN_ROUNDS], ts[2][SCAN_ROUNDS], sh[2][SCAN_ROUNDS];
	volatile uint64_t sink = 0;

	*bw = (struct bw_result){ 0, mib, SCAN_ROUNDS };
	*r = (struct scan_result){ .n = d.n, .nq = nq, .words = 2, .bytes_key = 2 * 8 + 4 + 1,
				   .tokens = d.tokens, .kv_heads = kv_heads, .stride = d.stride };
	memset(x, 1, bytes);
	scan_setup(&d);
	bw_pass(x, bytes, &sink); /* warm up: page tables, the first touch */
	scan_pass(&d, krn_get(), 1);
	scan_pass(&d, krn_get(), nq);
	for (int i = 0; i < SCAN_ROUNDS; i++) {
		tb[i] = bw_pass(x, bytes, &sink);
		for (int v = 0; v < 2; v++) {
			ts[v][i] = scan_pass(&d, krn_get(), v ? nq : 1);
			sh[v][i] = (double)d.n * r->bytes_key / ts[v][i] / (bytes / tb[i]);
		}
	}
	bw->gbps = bytes / median_of(tb, SCAN_ROUNDS) / 1e9;
	for (int v = 0; v < 2; v++) {
		double t = median_of(ts[v], SCAN_ROUNDS);
		r->gbps[v] = (double)d.n * r->bytes_key / t / 1e9;
		r->ns_key[v] = t * 1e9 / d.n;
		r->share[v] = median_of(sh[v], SCAN_ROUNDS);
	}
	scan_free(&d);
	free(x);
}

/* ================= scan ================= */

/*
 * The coarse scan of every vector kernel level this CPU runs, side by
 * side: the speed command's keys and queries, and per round one pass per
 * level with one query and one with the group, so that the machine's
 * noise falls on all levels alike.  Every level must find the scalar
 * reference's hits (the reference is timed only when it is alone).
 */
static uint64_t hits_digest(const struct scan_data *d, uint32_t nq)
{
	uint64_t h = 0;

	for (uint32_t j = 0; j < nq; j++) {
		uint32_t n = d->n_hit[j] < SCAN_HIT_CAP ? d->n_hit[j] : SCAN_HIT_CAP;
		h = mix64(h ^ d->n_hit[j]);
		for (uint32_t i = 0; i < n; i++)
			h = mix64(h ^ d->hit[(size_t)j * SCAN_HIT_CAP + i]);
	}
	return h;
}

static void scan_print_text(const struct scan_data *d, uint32_t kv_heads,
			    const struct krn_ops *const *lv, double ns[][2], uint32_t i0,
			    uint32_t nl, int bad)
{
	printf("dashkv-bench scan: %u tokens x %u kv heads = %u keys, 128-bit codes + f32 norm + "
	       "norm class = 21 B/key, tail from one key in %u; medians of %d rounds, levels "
	       "alternating\n", d->tokens, kv_heads, d->n, d->stride, SCAN_ROUNDS);
	printf("%-8s %14s %14s %15s\n", "level", "1 q ns/key", "group ns/key", "group speed-up");
	for (uint32_t i = i0; i < nl; i++)
		printf("%-8s %14.3f %14.3f %14.2fx\n", lv[i]->name, ns[i][0], ns[i][1],
		       ns[i0][1] / ns[i][1]);
	printf("group: %u queries per pass; speed-up against %s; hits of %u levels against the "
	       "scalar reference: %s\n", d->nq, lv[i0]->name, nl, bad ? "DIFFER" : "identical");
}

static void scan_print_json(const struct scan_data *d, uint32_t kv_heads,
			    const struct krn_ops *const *lv, double ns[][2], uint32_t i0,
			    uint32_t nl, int bad)
{
	printf("{\"command\": \"scan\", \"tokens\": %u, \"kv_heads\": %u, \"keys\": %u, "
	       "\"bytes_per_key\": 21, \"stride\": %u, \"group\": %u, \"rounds\": %d, "
	       "\"levels_checked\": %u, \"hits_identical\": %s, \"levels\": [",
	       d->tokens, kv_heads, d->n, d->stride, d->nq, SCAN_ROUNDS, nl, bad ? "false" : "true");
	for (uint32_t i = i0; i < nl; i++)
		printf("%s{\"name\": \"%s\", \"one_query_ns_key\": %.4f, \"group_ns_key\": %.4f, "
		       "\"group_speedup\": %.4f}", i > i0 ? ", " : "", lv[i]->name, ns[i][0],
		       ns[i][1], ns[i0][1] / ns[i][1]);
	printf("]}\n");
}

static int cmd_scan(const struct opts *o)
{
	uint32_t nq = o->heads / o->kv_heads, nl = 0, bad = 0;
	struct scan_data d = scan_data_of(o->scan_tokens, o->kv_heads, nq);
	const struct krn_ops *lv[KRN_NLEVELS];
	double t[KRN_NLEVELS][2][SCAN_ROUNDS];
	uint64_t dig[KRN_NLEVELS][2];

	for (int l = 0; l < KRN_NLEVELS; l++) {
		const struct krn_ops *k = krn_get_level((enum krn_level)l);
		if (k)
			lv[nl++] = k;
	}
	scan_setup(&d);
	for (uint32_t i = 0; i < nl; i++) /* warm up; the hits of each level */
		for (int v = 0; v < 2; v++) {
			scan_pass(&d, lv[i], v ? nq : 1);
			dig[i][v] = hits_digest(&d, v ? nq : 1);
			bad |= dig[i][v] != dig[0][v];
		}
	uint32_t i0 = nl > 1; /* the scalar reference is lv[0] */
	for (int r = 0; r < SCAN_ROUNDS; r++)
		for (uint32_t i = i0; i < nl; i++)
			for (int v = 0; v < 2; v++)
				t[i][v][r] = scan_pass(&d, lv[i], v ? nq : 1);
	double ns[KRN_NLEVELS][2];
	for (uint32_t i = i0; i < nl; i++)
		for (int v = 0; v < 2; v++)
			ns[i][v] = median_of(t[i][v], SCAN_ROUNDS) * 1e9 / d.n;
	if (o->json)
		scan_print_json(&d, o->kv_heads, lv, ns, i0, nl, bad);
	else
		scan_print_text(&d, o->kv_heads, lv, ns, i0, nl, bad);
	scan_free(&d);
	return bad ? 1 : 0;
}

/* ================= shards ================= */

/*
 * The same DASH-KV sequence under each shard count (DASHKV_SHARDS=cpu:N,
 * one embedded engine each), filled with the same tokens; decode steps
 * alternate between the engines so that they share the machine's noise.
 * Outputs must be bit-identical; the medians give the speed-up.
 */
struct shards_run {
	dkv_client *c;
	dkv_seq *s;
	double *ms;     /* [reps] step wall times */
	void *out;
	dkv_stats st;
};

static int shards_open(const struct opts *o, uint64_t n, struct shards_run *r, uint32_t count)
{
	dkv_seq_config cfg;
	char spec[32];
	int rc;

	snprintf(spec, sizeof(spec), "cpu:%u", count);
	setenv("DASHKV_SHARDS", spec, 1);
	rc = dkv_connect("embedded", &r->c);
	if (rc) {
		fprintf(stderr, "dashkv-bench: %s: %s\n", spec, dkv_errmsg(r->c));
		return rc;
	}
	seq_config(o, n + 64, 0, &cfg);
	rc = dkv_seq_open(r->c, &cfg, &r->s);
	if (rc)
		fprintf(stderr, "dashkv-bench: %s: open: %s\n", spec, dkv_errmsg(r->c));
	return rc;
}

static int shards_row(const struct opts *o, uint64_t n, uint32_t reps)
{
	struct shards_run run[8];
	struct kvgen *g = make_gen(o);
	size_t tok = (size_t)o->kv_heads * o->dim, all = (size_t)o->heads * o->dim;
	size_t elt = o->dtype == DKV_F32 ? 4 : 2;
	float *k = xmalloc(CHUNK * tok * 4), *v = xmalloc(CHUNK * tok * 4), *q = xmalloc(all * 4);
	void *kd = xmalloc(CHUNK * tok * elt), *vd = xmalloc(CHUNK * tok * elt), *qd = xmalloc(all * elt);
	uint32_t ns = o->n_shards;
	int rc = DKV_OK, same = 1;

	memset(run, 0, sizeof(run));
	for (uint32_t i = 0; i < ns && !rc; i++) {
		rc = shards_open(o, n, &run[i], o->shards[i]);
		run[i].ms = xcalloc(reps, sizeof(double));
		run[i].out = xcalloc(all, elt);
	}
	for (uint64_t t = 0; t < n && !rc; t += CHUNK) {
		uint32_t m = n - t < CHUNK ? (uint32_t)(n - t) : CHUNK;
		kvgen_kv(g, t, m, k, v);
		to_dtype(k, m * tok, o->dtype, kd);
		to_dtype(v, m * tok, o->dtype, vd);
		for (uint32_t i = 0; i < ns && !rc; i++)
			rc = dkv_step(run[i].s, 0, NULL, 0, kd, vd, m, NULL);
	}
	/* step 0 is an untimed warm-up; the engines take turns going first */
	for (uint32_t r = 0; r <= reps && !rc; r++) {
		kvgen_kv(g, n + r, 1, k, v);
		kvgen_queries(g, n + r, 0, q);
		to_dtype(k, tok, o->dtype, kd);
		to_dtype(v, tok, o->dtype, vd);
		to_dtype(q, all, o->dtype, qd);
		for (uint32_t t = 0; t < ns && !rc; t++) {
			struct shards_run *x = &run[(r + t) % ns];
			uint64_t t0 = now_ns();
			rc = dkv_step(x->s, 0, qd, 1, kd, vd, 1, x->out);
			if (r > 0)
				x->ms[r - 1] = (now_ns() - t0) / 1e6;
		}
		for (uint32_t i = 1; i < ns && !rc; i++)
			same &= !memcmp(run[i].out, run[0].out, all * elt);
	}
	if (rc) {
		fprintf(stderr, "dashkv-bench: shards at %llu tokens: %s\n",
			(unsigned long long)n, dkv_errmsg(run[0].c));
	} else {
		double base = median_of(run[0].ms, reps);
		printf("%-10llu", (unsigned long long)n);
		for (uint32_t i = 0; i < ns; i++) {
			double med = median_of(run[i].ms, reps);
			dkv_stats *st = &run[i].st;
			st->struct_size = sizeof(*st);
			dkv_seq_stats(run[i].s, st);
			double bytes = (double)(st->bytes_full + st->bytes_codes + st->bytes_summaries);
			printf("  cpu:%u %8.2f ms %5.2fx %7.1f MiB/shard %6.0f B/token",
			       o->shards[i], med, base / med, bytes / o->shards[i] / 1048576.0,
			       bytes / (double)st->layer_tokens[0]);
		}
		printf("  outputs %s\n", same ? "bit-identical" : "DIFFER");
		if (!same)
			rc = DKV_E_INTERNAL;
	}
	for (uint32_t i = 0; i < ns; i++) {
		if (run[i].c)
			dkv_disconnect(run[i].c);
		free(run[i].ms);
		free(run[i].out);
	}
	kvgen_free(g);
	free(k);
	free(v);
	free(q);
	free(kd);
	free(vd);
	free(qd);
	return rc;
}

static int cmd_shards(const struct opts *o)
{
	int rc = 0;

	printf("dashkv-bench shards: one layer, %u q heads / %u kv heads, head_dim %u, %s, "
	       "seed %llu; decode step medians, engines alternating; speed-up against cpu:%u\n",
	       o->heads, o->kv_heads, o->dim, dtype_name(o->dtype),
	       (unsigned long long)o->seed, o->shards[0]);
	for (uint32_t i = 0; i < o->n_tokens && !rc; i++)
		rc = shards_row(o, o->tokens[i],
				o->reps ? o->reps : o->tokens[i] >= 1000000 ? 5 : 9);
	return rc ? 1 : 0;
}

/* ---- speed output ---- */

static void speed_print_text(const struct speed *b, const struct speed_row *rows,
			     uint32_t nr, const struct bw_result *bw,
			     const struct scan_result *sc)
{
	const dkv_seq_config *c = &b->cfg[0];
	const struct opts *o = b->o;

	printf("dashkv-bench speed: one layer, %u q heads / %u kv heads, head_dim %u, %s, seed %llu, kernels %s\n",
	       o->heads, o->kv_heads, o->dim, dtype_name(o->dtype),
	       (unsigned long long)o->seed, rt_kernel_name());
	printf("DASH-KV: simhash %u bits, top_k %u, candidates %u, sinks %u, window %u, tail %s\n",
	       c->hash_bits, c->top_k, c->candidates, c->sink_tokens,
	       c->recent_window, on_off(c->tail_estimate));
	printf("decode step = dkv_step appending 1 token and attending 1 query (all heads);\n"
	       "a DASH-KV and an exact-mode (exact=1) sequence hold the same data and\n"
	       "alternate steps after one untimed warm-up step each; times are medians of\n"
	       "wall time (CLOCK_MONOTONIC); att = the engine's last_attend_ns;\n"
	       "error = ||o_dash - o_exact|| / ||o_exact|| over all heads.\n\n");
	printf("%9s %4s %9s %9s %8s %10s %10s %8s %7s %9s %9s %9s\n", "tokens", "reps",
	       "dash ms", "exact ms", "speedup", "dash att", "exact att", "error",
	       "cands", "fill d s", "fill e s", "dash MiB");
	for (uint32_t i = 0; i < nr; i++) {
		const struct speed_row *r = &rows[i];
		if (r->rc) {
			printf("%9llu skipped: %s\n", (unsigned long long)r->n, r->why);
			continue;
		}
		printf("%9llu %4u %9.3f %9.3f %7.2fx %10.3f %10.3f %8.2e %7.0f %9.2f %9.2f %9.1f\n",
		       (unsigned long long)r->n, r->reps, r->dash_ms, r->exact_ms,
		       r->exact_ms / r->dash_ms, r->dash_att_ms, r->exact_att_ms, r->err,
		       r->cand, r->fill_dash_s, r->fill_exact_s, r->bytes_dash / 1048576.0);
	}
	printf("\nDASH-KV attention by phase (medians, ms): coarse filter / fine ranking and\n"
	       "top-K / tail estimate (dkv_stats last_coarse_ns, last_fine_ns, last_tail_ns)\n");
	for (uint32_t i = 0; i < nr; i++)
		if (!rows[i].rc)
			printf("%9llu  %9.3f %9.3f %9.3f\n", (unsigned long long)rows[i].n,
			       rows[i].phase_ms[0], rows[i].phase_ms[1], rows[i].phase_ms[2]);
	printf("\nmemory read bandwidth: %.2f GB/s (one thread, streaming read of %u MiB, median of %u,\n"
	       "  each read followed by the two scan passes below; a share is the median of\n"
	       "  the rounds' scan GB/s over the read just before)\n", bw->gbps, bw->mib, bw->runs);
	printf("coarse scan (krn %s scan as the engine runs it: %u tokens x %u kv heads = %u keys\n"
	       "  in pages of %u, %u-bit codes + f32 norm + norm class = %u B/key, %.0f MiB,\n"
	       "  about 0.25%% of keys passing, tail from every %uth key):\n", krn_get()->name,
	       sc->tokens, sc->kv_heads, sc->n, CHUNK, 64 * sc->words, sc->bytes_key,
	       (double)sc->n * sc->bytes_key / 1048576.0, sc->stride);
	for (int v = 0; v < 2; v++)
		printf("  %u quer%s per pass: %.2f GB/s of key data, %.3f ns/key, %.0f%% of the bandwidth\n",
		       v ? sc->nq : 1, (v ? sc->nq : 1) == 1 ? "y" : "ies", sc->gbps[v],
		       sc->ns_key[v], 100 * sc->share[v]);
}

static void speed_print_json(const struct speed *b, const struct speed_row *rows,
			     uint32_t nr, const struct bw_result *bw,
			     const struct scan_result *sc)
{
	printf("{\n  \"command\": \"speed\",\n  \"seed\": %llu,\n  \"kernels\": \"%s\",\n",
	       (unsigned long long)b->o->seed, rt_kernel_name());
	json_config(&b->cfg[0]);
	printf("  \"rows\": [\n");
	for (uint32_t i = 0; i < nr; i++) {
		const struct speed_row *r = &rows[i];
		printf("    {\"tokens\": %llu, \"reps\": %u, \"ok\": %s, ",
		       (unsigned long long)r->n, r->reps, r->rc ? "false" : "true");
		if (r->rc)
			printf("\"error\": \"%s\"}", r->why);
		else
			printf("\"dash_ms\": %.6g, \"exact_ms\": %.6g, \"speedup\": %.6g, "
			       "\"dash_attend_ms\": %.6g, \"exact_attend_ms\": %.6g, "
			       "\"coarse_ms\": %.6g, \"fine_ms\": %.6g, \"tail_ms\": %.6g, "
			       "\"output_error\": %.6g, \"candidates\": %.6g, "
			       "\"exact_tokens\": %.6g, \"fill_dash_s\": %.6g, "
			       "\"fill_exact_s\": %.6g, \"gen_s\": %.6g, "
			       "\"bytes_dash\": %llu, \"bytes_exact\": %llu}",
			       r->dash_ms, r->exact_ms, r->exact_ms / r->dash_ms,
			       r->dash_att_ms, r->exact_att_ms, r->phase_ms[0], r->phase_ms[1],
			       r->phase_ms[2], r->err, r->cand, r->nexact,
			       r->fill_dash_s, r->fill_exact_s, r->gen_s,
			       (unsigned long long)r->bytes_dash,
			       (unsigned long long)r->bytes_exact);
		printf("%s\n", i + 1 < nr ? "," : "");
	}
	printf("  ],\n  \"bandwidth\": {\"gbps\": %.6g, \"mib\": %u, \"runs\": %u},\n",
	       bw->gbps, bw->mib, bw->runs);
	printf("  \"scan\": {\"kernel\": \"%s\", \"keys\": %u, \"tokens\": %u, \"kv_heads\": %u, "
	       "\"stride\": %u, \"bytes_per_key\": %u, "
	       "\"one_query\": {\"gbps\": %.6g, \"ns_per_key\": %.6g, \"share_of_bandwidth\": %.6g}, "
	       "\"group\": {\"queries\": %u, \"gbps\": %.6g, \"ns_per_key\": %.6g, "
	       "\"share_of_bandwidth\": %.6g}}\n}\n", krn_get()->name, sc->n, sc->tokens,
	       sc->kv_heads, sc->stride, sc->bytes_key,
	       sc->gbps[0], sc->ns_key[0], sc->share[0], sc->nq, sc->gbps[1],
	       sc->ns_key[1], sc->share[1]);
}

static int cmd_speed(const struct opts *o)
{
	struct speed b = { .o = o };
	struct speed_row *rows = xcalloc(o->n_tokens, sizeof(*rows));
	struct bw_result bw;
	struct scan_result sc;
	int rc;

	b.g = make_gen(o);
	speed_alloc(&b);
	rc = dkv_connect("embedded", &b.c);
	if (rc)
		die_dkv("connect", rc, NULL);
	for (uint32_t i = 0; i < o->n_tokens; i++) {
		rows[i].n = o->tokens[i];
		rows[i].reps = o->reps ? o->reps : o->tokens[i] >= 1000000 ? 5 : 9;
		speed_one(&b, &rows[i]);
	}
	seq_config(o, 1, 0, &b.cfg[0]); /* for printing the knobs */
	measure_io(o->bw_mib, o->scan_tokens, o->kv_heads, o->heads / o->kv_heads, &bw, &sc);
	if (o->json)
		speed_print_json(&b, rows, o->n_tokens, &bw, &sc);
	else
		speed_print_text(&b, rows, o->n_tokens, &bw, &sc);
	rc = 0;
	for (uint32_t i = 0; i < o->n_tokens; i++)
		rc |= rows[i].rc != DKV_OK;
	dkv_disconnect(b.c);
	speed_free(&b);
	kvgen_free(b.g);
	free(rows);
	return rc ? 1 : 0;
}

/* ================= options ================= */

static void usage(FILE *f)
{
	fprintf(f,
"usage: dashkv-bench quality|speed|shards|scan|ipc|capture [options]\n"
"\n"
"quality  recall and output error of DASH-KV against exact attention in\n"
"         double on the realistic generator, next to an oracle that takes\n"
"         the true top tokens with the same exact budget\n"
"speed    decode step of DASH-KV vs exact mode at several context lengths,\n"
"         memory read bandwidth and the coarse scan's bytes/s\n"
"shards   decode step of one DASH-KV sequence split over 1, 2, ... CPU\n"
"         shards (DASHKV_SHARDS=cpu:N), alternating; checks that the\n"
"         outputs are bit-identical (default --tokens 1048576)\n"
"scan     the coarse scan kernel of every level this CPU runs (scalar,\n"
"         avx2, avx512), side by side over --scan-tokens tokens; checks\n"
"         that the levels find the same hits\n"
"ipc      a tiny step through dashkvd vs embedded: added latency per call\n"
"         (see dashkv-bench ipc --help)\n"
"capture  write the generator's keys and queries at every position to a\n"
"         Q/K capture file (--out FILE; --layers L, layer l from seed + l)\n"
"\n"
"options (defaults: quality | speed):\n"
"  --tokens N[,N...]   context lengths (32768 | 4096,32768,262144,1048576)\n"
"  --queries Q         decode queries, every 4th aimed at a needle (64)\n"
"  --reps R            decode steps per length (9, 5 from 1M tokens)\n"
"  --heads H           query heads (8 | 32)\n"
"  --kv-heads H        key/value heads (2 | 8)\n"
"  --dim D             head_dim (128)\n"
"  --dtype T           f32, f16 or bf16 (f32 | bf16)\n"
"  --top-k K           tokens taken exactly after fine ranking\n"
"  --candidates C[,C]  coarse-filter survivors per query (a list with --hash both)\n"
"  --sinks S           sink tokens\n"
"  --window W          recent window\n"
"  --bits B[,B]        hash bits: 64, 128 or 256 (a list with --hash both: 64,128,256)\n"
"  --hash H            simhash, learned, or both: side by side for every --bits\n"
"                      and --candidates value (quality); learned sequences see\n"
"                      64 prefill queries per 4096-token chunk and are fitted by\n"
"                      dkv_seq_train after the fill\n"
"  --model FILE        learned: load the models of a dashkv-train file instead\n"
"  --mass-target F     adaptive K: exact tokens until this share of the mass (0 = off)\n"
"  --tail on|off       estimate the rest from codes and summaries\n"
"  --seed S            generator seed (1)\n"
"  --bw-mib M          buffer of the bandwidth measurement (1024)\n"
"  --scan-tokens N     tokens of the coarse-scan measurement (1048576)\n"
"  --shards N[,N...]   shard counts of the shards command (1,2)\n"
"  --capture FILE      quality on a Q/K capture (its --layer, default 0): the\n"
"                      last --queries positions are decoded one token at a time\n"
"  --json              JSON instead of a plain-text table\n"
"  --help              this text\n"
"\n"
"Engine knobs left out take the engine's documented defaults.\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-')
		return -1;
	*out = v;
	return 0;
}

static int parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (parse_u64(s, &v) || v > UINT32_MAX)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_list(const char *s, struct opts *o)
{
	char buf[512], *tok, *save = NULL;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	o->n_tokens = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (o->n_tokens == MAX_NS || parse_u64(tok, &o->tokens[o->n_tokens]) ||
		    !o->tokens[o->n_tokens] || o->tokens[o->n_tokens] > UINT32_MAX)
			return -1;
		o->n_tokens++;
	}
	return o->n_tokens ? 0 : -1;
}

/* A comma list of up to max u32 values into v; the first also into *first. */
static int parse_u32_list(const char *s, uint32_t *v, uint32_t max, uint32_t *n,
			  uint32_t *first)
{
	char buf[256], *tok, *save = NULL;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	*n = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		if (*n == max || parse_u32(tok, &v[(*n)++]))
			return -1;
	if (!*n)
		return -1;
	*first = v[0];
	return 0;
}

static int parse_float(const char *s, float *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0 && v < 1))
		return -1;
	*out = (float)v;
	return 0;
}

static int parse_word(const char *s, const char *const *names, const int *vals,
		      int32_t *out)
{
	for (int i = 0; names[i]; i++)
		if (!strcmp(s, names[i])) {
			*out = vals[i];
			return 0;
		}
	return -1;
}

/* --shards 1,2,4: shard counts, 1 to 64 each */
static int parse_counts(const char *s, struct opts *o)
{
	char buf[128], *save = NULL;

	if (strlen(s) >= sizeof(buf))
		return -1;
	strcpy(buf, s);
	o->n_shards = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		uint32_t v;
		if (o->n_shards == 8 || parse_u32(tok, &v) || !v || v > 64)
			return -1;
		o->shards[o->n_shards++] = v;
	}
	return o->n_shards ? 0 : -1;
}

static int parse_opt(int c, const char *a, struct opts *o)
{
	static const char *const dt[] = { "f32", "f16", "bf16", NULL };
	static const int dtv[] = { DKV_F32, DKV_F16, DKV_BF16 };
	static const char *const hs[] = { "simhash", "learned", NULL };
	static const int hsv[] = { DKV_HASH_SIMHASH, DKV_HASH_LEARNED };
	static const char *const oo[] = { "on", "off", NULL };
	static const int oov[] = { 1, 0 };

	switch (c) {
	case 't': return parse_list(a, o);
	case 'q': return parse_u32(a, &o->queries);
	case 'r': return parse_u32(a, &o->reps);
	case 'H': return parse_u32(a, &o->heads);
	case 'K': return parse_u32(a, &o->kv_heads);
	case 'd': return parse_u32(a, &o->dim);
	case 'T': return parse_word(a, dt, dtv, &o->dtype);
	case 'k': return parse_u32(a, &o->top_k);
	case 'c': return parse_u32_list(a, o->cand_list, 8, &o->n_cand, &o->candidates);
	case 's': return parse_u32(a, &o->sinks);
	case 'w': return parse_u32(a, &o->window);
	case 'b': return parse_u32_list(a, o->bits_list, 3, &o->n_bits, &o->bits);
	case 'h':
		o->both = !strcmp(a, "both");
		return o->both ? 0 : parse_word(a, hs, hsv, &o->hash);
	case 'M': return parse_float(a, &o->mass_target);
	case 'C':
		o->capture = a;
		return 0;
	case 'o':
		o->out = a;
		return 0;
	case 'L': return parse_u32(a, &o->layer);
	case 'Y': return parse_u32(a, &o->layers) || !o->layers || o->layers > DKV_MAX_LAYERS;
	case 'm':
		o->model = a;
		return 0;
	case 'l': return parse_word(a, oo, oov, &o->tail);
	case 'S': return parse_u64(a, &o->seed);
	case 'B': return parse_u32(a, &o->bw_mib);
	case 'N': return parse_u32(a, &o->scan_tokens);
	case 'P': return parse_counts(a, o);
	}
	return -1;
}

static void defaults(struct opts *o, int quality)
{
	memset(o, 0, sizeof(*o));
	o->tail = -1;
	o->seed = 1;
	o->dim = 128;
	o->bw_mib = 1024;
	o->scan_tokens = 1 << 20;
	o->queries = 64;
	o->shards[0] = 1;
	o->shards[1] = 2;
	o->n_shards = 2;
	if (quality) {
		o->tokens[0] = 32768;
		o->n_tokens = 1;
		o->heads = 8;
		o->kv_heads = 2;
		o->dtype = DKV_F32;
	} else {
		static const uint64_t def[] = { 4096, 32768, 262144, 1048576 };
		memcpy(o->tokens, def, sizeof(def));
		o->n_tokens = 4;
		o->heads = 32;
		o->kv_heads = 8;
		o->dtype = DKV_BF16;
	}
}

static int check_opts(struct opts *o)
{
	if (!o->heads || !o->kv_heads || o->heads % o->kv_heads) {
		fprintf(stderr, "dashkv-bench: --heads must be a multiple of --kv-heads\n");
		return -1;
	}
	if (!strcmp(o->cmd, "quality") && (!o->queries || o->n_tokens != 1)) {
		fprintf(stderr, "dashkv-bench: quality takes one --tokens value and --queries >= 1\n");
		return -1;
	}
	if (o->both && !o->n_bits) {
		static const uint32_t b3[] = { 64, 128, 256 };
		memcpy(o->bits_list, b3, sizeof(b3));
		o->n_bits = 3;
	}
	if (o->both && !o->n_cand) {
		o->cand_list[0] = 0;
		o->n_cand = 1;
	}
	if (!o->both && (o->n_bits > 1 || o->n_cand > 1)) {
		fprintf(stderr, "dashkv-bench: lists of --bits / --candidates need --hash both\n");
		return -1;
	}
	if ((uint64_t)o->scan_tokens * o->kv_heads > (1u << 30)) {
		fprintf(stderr, "dashkv-bench: --scan-tokens times the kv heads must be at most 2^30\n");
		return -1;
	}
	if (o->model && o->hash != DKV_HASH_LEARNED && !o->both) {
		fprintf(stderr, "dashkv-bench: --model needs --hash learned or both\n");
		return -1;
	}
	if (!strcmp(o->cmd, "capture") && (!o->out || o->n_tokens != 1)) {
		fprintf(stderr, "dashkv-bench: capture takes --out FILE and one --tokens value\n");
		return -1;
	}
	if (o->capture && strcmp(o->cmd, "quality")) {
		fprintf(stderr, "dashkv-bench: --capture is a data source of quality\n");
		return -1;
	}
	if (o->bw_mib < 16 || !o->scan_tokens) {
		fprintf(stderr, "dashkv-bench: --bw-mib must be >= 16, --scan-tokens >= 1\n");
		return -1;
	}
	return 0;
}

static const struct option longopts[] = {
	{ "tokens", required_argument, NULL, 't' },
	{ "queries", required_argument, NULL, 'q' },
	{ "reps", required_argument, NULL, 'r' },
	{ "heads", required_argument, NULL, 'H' },
	{ "kv-heads", required_argument, NULL, 'K' },
	{ "dim", required_argument, NULL, 'd' },
	{ "dtype", required_argument, NULL, 'T' },
	{ "top-k", required_argument, NULL, 'k' },
	{ "candidates", required_argument, NULL, 'c' },
	{ "sinks", required_argument, NULL, 's' },
	{ "window", required_argument, NULL, 'w' },
	{ "bits", required_argument, NULL, 'b' },
	{ "hash", required_argument, NULL, 'h' },
	{ "tail", required_argument, NULL, 'l' },
	{ "seed", required_argument, NULL, 'S' },
	{ "bw-mib", required_argument, NULL, 'B' },
	{ "scan-tokens", required_argument, NULL, 'N' },
	{ "shards", required_argument, NULL, 'P' },
	{ "mass-target", required_argument, NULL, 'M' },
	{ "capture", required_argument, NULL, 'C' },
	{ "layer", required_argument, NULL, 'L' },
	{ "out", required_argument, NULL, 'o' },
	{ "layers", required_argument, NULL, 'Y' },
	{ "model", required_argument, NULL, 'm' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, '?' + 256 },
	{ NULL, 0, NULL, 0 }
};

/* 0: run, 1: --help shown, -1: bad usage */
static int parse_args(int argc, char **argv, struct opts *o)
{
	int c, li = 0;

	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
		return argc < 2 ? -1 : 1;
	if (strcmp(argv[1], "quality") && strcmp(argv[1], "speed") && strcmp(argv[1], "shards") &&
	    strcmp(argv[1], "scan") && strcmp(argv[1], "capture")) {
		fprintf(stderr, "dashkv-bench: unknown command '%s'\n", argv[1]);
		return -1;
	}
	defaults(o, !strcmp(argv[1], "quality") || !strcmp(argv[1], "capture"));
	o->layers = 1;
	o->cmd = argv[1];
	if (!strcmp(argv[1], "shards")) {
		o->tokens[0] = 1048576;
		o->n_tokens = 1;
	}
	optind = 2;
	while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
		if (c == '?' + 256)
			return 1;
		if (c == 'j') {
			o->json = 1;
			continue;
		}
		if (c == '?' || parse_opt(c, optarg, o)) {
			if (c != '?')
				fprintf(stderr, "dashkv-bench: bad value '%s' for --%s\n",
					optarg, longopts[li].name);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dashkv-bench: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	return check_opts(o);
}

int main(int argc, char **argv)
{
	struct opts o;
	int rc;

	if (argc >= 2 && !strcmp(argv[1], "ipc"))
		return cmd_ipc(argc - 1, argv + 1);
	rc = parse_args(argc, argv, &o);

	if (rc > 0 || argc < 2) {
		usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : 2;
	}
	if (rc) {
		fprintf(stderr, "Try 'dashkv-bench --help'.\n");
		return 2;
	}
	if (!strcmp(o.cmd, "shards"))
		return cmd_shards(&o);
	if (!strcmp(o.cmd, "capture"))
		return cmd_capture(&o);
	if (!strcmp(o.cmd, "scan"))
		return cmd_scan(&o);
	return !strcmp(o.cmd, "quality") ? cmd_quality(&o) : cmd_speed(&o);
}
