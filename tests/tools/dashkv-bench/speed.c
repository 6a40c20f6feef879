/*
 * speed.c - dashkv-bench speed: the decode step of DASH-KV against exact
 * mode (exact=1) on the same data at several context lengths, the
 * attention phases, then the memory read bandwidth and the coarse scan's
 * bytes/s (measure_io, scan.c); text or JSON.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "dashkv.h"
#include "krn.h"
#include "trace.h"
#include "gen/kvgen.h"
#include "bench.h"

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

int cmd_speed(const struct opts *o)
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
