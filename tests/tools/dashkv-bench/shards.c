/*
 * shards.c - dashkv-bench shards: the decode step of one DASH-KV sequence
 * split over 1, 2, ... CPU shards (DASHKV_SHARDS=cpu:N), the engines
 * alternating; the outputs must be bit-identical.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "gen/kvgen.h"
#include "bench.h"

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

int cmd_shards(const struct opts *o)
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
