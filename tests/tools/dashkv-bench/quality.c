/*
 * quality.c - dashkv-bench quality: recall and output error of DASH-KV
 * against exact attention in double, on the realistic generator or a Q/K
 * capture (--capture), next to an oracle that takes the true top tokens
 * with the same exact budget; --hash both puts SimHash and learned side
 * by side for every --bits and --candidates value.  The engine runs
 * embedded; runtime/trace.h tells which tokens a query took exactly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "trace.h"
#include "gen/kvgen.h"
#include "ref_attn.h"
#include "capture.h"
#include "bench.h"

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
	uint8_t *kind;       /* [sample] enum query_kind */
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

/*
 * The kinds of decode query, by draw r: every 4th (r % 4 == 3) aims at a
 * needle, r % 4 == 1 at an earlier topic segment alone, the others at the
 * current segment alone (kvgen_kind_queries).
 */
enum query_kind { Q_CURRENT, Q_EARLIER, Q_NEEDLE, Q_KINDS };
static const char *const kind_name[Q_KINDS] = { "current topic", "earlier topic", "needle" };
static const char *const kind_key[Q_KINDS] = { "current", "earlier", "needle" };

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
	b->kind = xmalloc(ns);
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
	free(b->kind);
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
			kvgen_kind_queries(b->g, r % 4 == 1 ? KVGEN_EARLIER : KVGEN_CURRENT, pos, r, q);
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
		b->kind[s] = needle ? Q_NEEDLE : r % 4 == 1 && !o->cap ? Q_EARLIER : Q_CURRENT;
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
	struct summary kerr[Q_KINDS], koerr[Q_KINDS];
	double cand, est;
};

/* The samples of one kind of x into tmp; returns their summary. */
static struct summary kind_summary(const struct quality *b, const double *x, int kind,
				   double *tmp)
{
	size_t n = 0;

	for (size_t i = 0; i < b->n_s; i++)
		if (b->kind[i] == kind)
			tmp[n++] = x[i];
	return summarize(tmp, n);
}

/* Output error against the oracle's, per kind of query. */
static void quality_print_kinds(const struct quality *b, const struct quality_result *r)
{
	printf("\n  %-16s %6s %13s %13s %9s %12s\n", "per query kind", "heads", "output error",
	       "oracle error", "ratio", "needle hits");
	for (int k = 0; k < Q_KINDS; k++) {
		if (!r->kerr[k].n)
			continue;
		printf("  %-16s %6zu %13.4f %13.4f %9.3f", kind_name[k], r->kerr[k].n,
		       r->kerr[k].median, r->koerr[k].median,
		       r->koerr[k].median > 0 ? r->kerr[k].median / r->koerr[k].median : NAN);
		if (k == Q_NEEDLE)
			printf(" %5u of %-4u", b->needle_hits, b->needle_trials);
		printf("\n");
	}
	printf("  (medians over query heads; ratio: engine / oracle)\n");
}

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
	quality_print_kinds(b, r);
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
	printf("  },\n  \"kinds\": {\n");
	for (int k = 0, first = 1; k < Q_KINDS; k++) {
		if (!r->kerr[k].n)
			continue;
		printf("%s    \"%s\": { \"heads\": %zu, \"output_error\": %.6g, "
		       "\"oracle_output_error\": %.6g }", first ? "" : ",\n", kind_key[k],
		       r->kerr[k].n, r->kerr[k].median, r->koerr[k].median);
		first = 0;
	}
	printf("\n  }\n}\n");
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
	/* by kind first: summarize sorts its samples in place */
	double *tmp = xmalloc((b->n_s + 1) * sizeof(double));
	for (int k = 0; k < Q_KINDS; k++) {
		r->kerr[k] = kind_summary(b, b->err, k, tmp);
		r->koerr[k] = kind_summary(b, b->oerr, k, tmp);
	}
	free(tmp);
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


int cmd_quality(const struct opts *o0)
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
