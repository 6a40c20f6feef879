/*
 * stories.c - a real model through libdashkv-client: the stories260K tiny
 * llama, greedy decoding from BOS, with every layer's attention served by
 * DASH-KV (embedded, or dashkvd through "unix:PATH").
 *
 *   stories [--model FILE] [--connect ADDR] [--mode exact|dash]
 *           [--top-k N] [--window N] [--sinks N] [--candidates N]
 *           [--tail on|off] [--tokens N] [--capture FILE] [--compare] [--quiet]
 *
 * Prints the generated text.  --compare runs exact attention and DASH-KV
 * side by side and reports how many of the N generated tokens match exact,
 * the first divergence, and the teacher-forced agreement (DASH-KV fed the
 * exact run's tokens, its greedy choice compared with exact's).  --capture
 * writes the run's post-RoPE queries and keys (capture.h).
 * Exit status: 0 done, 1 a DASH-KV call failed, 2 bad usage or model file.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "capture.h"
#include "llama.h"

#define DEF_MODEL_REL "models/stories260K.gguf"
#define TEXT_PER_TOKEN 64

struct opts {
	char model[4096];
	const char *connect;
	int exact;
	uint32_t top_k, window, sinks, candidates, tokens;
	const char *capture;
	int tail; /* -1 default, 0 off, 1 on */
	int compare, quiet;
};

/* One generation: its model state, its sequence and the tokens it chose. */
struct run {
	const struct llama *m;
	dkv_client *c;
	dkv_seq *seq;
	struct llama_state st;
	struct capture *cap;
	uint32_t *toks; /* toks[0] = BOS, toks[t + 1] = choice after position t */
	char *text;
	size_t text_len;
	const char *name;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: stories [--model FILE] [--connect ADDR] [--mode exact|dash]\n"
		   "               [--top-k N] [--window N] [--sinks N] [--candidates N]\n"
		   "               [--tail on|off] [--tokens N] [--capture FILE] [--compare] [--quiet]\n");
}

static int parse_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = s ? strtoul(s, &end, 10) : 0;
	if (!s || !*s || *end || errno || s[0] == '-' || v < lo || v > hi) {
		fprintf(stderr, "stories: %s wants an integer in [%u, %u], got '%s'\n", opt, lo,
			hi, s ? s : "");
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

static void default_model(struct opts *o)
{
	const char *d = getenv("DASHKV_TEST_DATA");

	snprintf(o->model, sizeof(o->model), "%s/%s", d && *d ? d : "../shared/data",
		 DEF_MODEL_REL);
}

static int parse_value(struct opts *o, const char *a, const char *v)
{
	if (!strcmp(a, "--model")) {
		if (!v || snprintf(o->model, sizeof(o->model), "%s", v) >= (int)sizeof(o->model))
			return -1;
	} else if (!strcmp(a, "--connect")) {
		o->connect = v;
	} else if (!strcmp(a, "--capture")) {
		o->capture = v;
	} else if (!strcmp(a, "--mode")) {
		if (!v || (strcmp(v, "exact") && strcmp(v, "dash"))) {
			fprintf(stderr, "stories: --mode is exact or dash\n");
			return -1;
		}
		o->exact = !strcmp(v, "exact");
	} else if (!strcmp(a, "--tail")) {
		if (!v || (strcmp(v, "on") && strcmp(v, "off"))) {
			fprintf(stderr, "stories: --tail is on or off\n");
			return -1;
		}
		o->tail = !strcmp(v, "on");
	} else if (!strcmp(a, "--top-k")) {
		return parse_u32(a, v, 1, 1u << 20, &o->top_k);
	} else if (!strcmp(a, "--window")) {
		return parse_u32(a, v, 1, 1u << 20, &o->window);
	} else if (!strcmp(a, "--sinks")) {
		return parse_u32(a, v, 1, 1u << 20, &o->sinks);
	} else if (!strcmp(a, "--candidates")) {
		return parse_u32(a, v, 1, 1u << 20, &o->candidates);
	} else if (!strcmp(a, "--tokens")) {
		return parse_u32(a, v, 1, 1u << 16, &o->tokens);
	} else {
		fprintf(stderr, "stories: unknown option %s\n", a);
		return -1;
	}
	return v ? 0 : -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	memset(o, 0, sizeof(*o));
	default_model(o);
	o->connect = "embedded";
	o->exact = 1;
	o->tokens = 400;
	o->tail = -1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--compare")) {
			o->compare = 1;
		} else if (!strcmp(a, "--quiet")) {
			o->quiet = 1;
		} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		} else {
			if (parse_value(o, a, i + 1 < argc ? argv[i + 1] : NULL)) {
				usage(stderr);
				return -1;
			}
			i++;
		}
	}
	return 0;
}

static int attend(void *ctx, uint32_t layer, uint64_t pos, const float *q,
		  const float *k, const float *v, float *out)
{
	struct run *r = ctx;
	int rc = dkv_step(r->seq, layer, q, 1, k, v, 1, out);

	if (rc != DKV_OK) {
		fprintf(stderr, "stories: %s run: dkv_step(layer %u, position %llu): %s: %s\n",
			r->name, layer, (unsigned long long)pos, dkv_strerror(rc),
			dkv_errmsg(r->c));
		return -1;
	}
	for (uint32_t i = 0; i < r->m->dim; i++) {
		if (!isfinite(out[i])) {
			fprintf(stderr, "stories: %s run: dkv_step(layer %u, position %llu) "
				"returned a non-finite output (head %u)\n", r->name, layer,
				(unsigned long long)pos, i / r->m->head_dim);
			return -1;
		}
	}
	if (r->cap)
		capture_add(r->cap, layer, (uint32_t)pos, q, k);
	return 0;
}

static int run_open(struct run *r, const struct llama *m, dkv_client *c, const struct opts *o,
		    int exact, const char *name)
{
	dkv_seq_config cfg;
	int rc;

	memset(r, 0, sizeof(*r));
	r->m = m;
	r->c = c;
	r->name = name;
	dkv_seq_config_init(&cfg);
	cfg.n_layers = m->n_layers;
	cfg.n_q_heads = m->n_heads;
	cfg.n_kv_heads = m->n_kv_heads;
	cfg.head_dim = m->head_dim;
	cfg.dtype = DKV_F32;
	cfg.max_tokens = o->tokens;
	cfg.exact = exact;
	cfg.top_k = o->top_k;
	cfg.recent_window = o->window;
	cfg.sink_tokens = o->sinks;
	cfg.candidates = o->candidates;
	cfg.tail_estimate = o->tail;
	rc = dkv_seq_open(c, &cfg, &r->seq);
	if (rc != DKV_OK) {
		fprintf(stderr, "stories: %s run: dkv_seq_open: %s: %s\n", name,
			dkv_strerror(rc), dkv_errmsg(c));
		return -1;
	}
	r->toks = calloc((size_t)o->tokens + 1, sizeof(*r->toks));
	r->text = calloc((size_t)o->tokens * TEXT_PER_TOKEN + 1, 1);
	if (!r->toks || !r->text || llama_state_init(m, &r->st)) {
		fprintf(stderr, "stories: out of memory\n");
		return -1;
	}
	r->toks[0] = m->bos;
	return 0;
}

static void run_close(struct run *r)
{
	if (r->seq)
		dkv_seq_close(r->seq);
	llama_state_free(&r->st);
	free(r->toks);
	free(r->text);
	memset(r, 0, sizeof(*r));
}

/* Feeds token at position pos; returns the greedy choice or -1. */
static long run_step(struct run *r, uint32_t token, uint32_t pos)
{
	if (llama_forward(r->m, &r->st, token, pos, attend, r))
		return -1;
	return llama_argmax(r->m, r->st.logits);
}

static void run_text(struct run *r, uint32_t prev, uint32_t tok)
{
	char piece[TEXT_PER_TOKEN];
	size_t n = llama_piece(r->m, prev, tok, piece, sizeof(piece));

	if (tok == r->m->bos || tok == r->m->eos) {
		piece[0] = '\n';
		n = 1;
	}
	memcpy(r->text + r->text_len, piece, n);
	r->text_len += n;
	r->text[r->text_len] = '\0';
}

/* Free-running generation step: feeds toks[pos], records toks[pos + 1]. */
static int run_next(struct run *r, uint32_t pos)
{
	long next = run_step(r, r->toks[pos], pos);

	if (next < 0)
		return -1;
	r->toks[pos + 1] = (uint32_t)next;
	run_text(r, r->toks[pos], (uint32_t)next);
	return 0;
}

static void print_engine_stats(const struct run *r)
{
	dkv_stats st;

	memset(&st, 0, sizeof(st));
	st.struct_size = sizeof(st);
	if (dkv_seq_stats(r->seq, &st) != DKV_OK)
		return;
	fprintf(stderr, "stories: %s run, last step: %s, %.1f tokens exact, %.1f candidates, "
		"%.1f estimated per query head\n", r->name,
		st.last_exact_mode ? "dense exact" : "DASH-KV", st.last_exact_tokens,
		st.last_candidates, st.last_estimated_tokens);
}

static int write_capture(const struct opts *o, const struct capture *cap)
{
	char err[512];

	if (capture_write(cap, o->capture, err)) {
		fprintf(stderr, "stories: %s\n", err);
		return -1;
	}
	if (!o->quiet)
		fprintf(stderr, "stories: wrote %u tokens of Q/K to %s\n", cap->n_tokens,
			o->capture);
	return 0;
}

static int generate(const struct llama *m, dkv_client *c, const struct opts *o,
		    struct capture *cap)
{
	struct run r;
	int rc = 1;

	if (run_open(&r, m, c, o, o->exact, o->exact ? "exact" : "DASH-KV"))
		goto close;
	r.cap = cap;
	for (uint32_t t = 0; t < o->tokens; t++)
		if (run_next(&r, t))
			goto close;
	printf("%s\n", r.text);
	if (!o->quiet)
		print_engine_stats(&r);
	rc = 0;
close:
	run_close(&r);
	return rc;
}

struct agreement {
	uint32_t same, forced, first_diff;
};

/* Exact, DASH-KV free-running, and DASH-KV fed exact's tokens, in lockstep. */
static int compare_runs(struct run *ex, struct run *da, struct run *fo, uint32_t n,
			struct agreement *a)
{
	a->same = a->forced = 0;
	a->first_diff = n;
	for (uint32_t t = 0; t < n; t++) {
		long f;
		if (run_next(ex, t) || run_next(da, t))
			return -1;
		f = run_step(fo, ex->toks[t], t);
		if (f < 0)
			return -1;
		if (da->toks[t + 1] == ex->toks[t + 1])
			a->same++;
		else if (a->first_diff == n)
			a->first_diff = t;
		if ((uint32_t)f == ex->toks[t + 1])
			a->forced++;
	}
	return 0;
}

static int compare(const struct llama *m, dkv_client *c, const struct opts *o,
		   struct capture *cap)
{
	struct run ex, da, fo;
	struct agreement a;
	int rc = 1;

	memset(&da, 0, sizeof(da));
	memset(&fo, 0, sizeof(fo));
	if (run_open(&ex, m, c, o, 1, "exact") || run_open(&da, m, c, o, 0, "DASH-KV") ||
	    run_open(&fo, m, c, o, 0, "DASH-KV forced"))
		goto close;
	ex.cap = cap;
	if (compare_runs(&ex, &da, &fo, o->tokens, &a))
		goto close;
	if (!o->quiet)
		printf("--- exact\n%s\n--- DASH-KV\n%s\n", ex.text, da.text);
	printf("agreement: %u of %u generated tokens match exact", a.same, o->tokens);
	if (a.first_diff < o->tokens)
		printf(" (first divergence at generated token %u)\n", a.first_diff);
	else
		printf(" (no divergence)\n");
	printf("teacher-forced: %u of %u greedy choices match exact\n", a.forced, o->tokens);
	if (!o->quiet)
		print_engine_stats(&da);
	rc = 0;
close:
	run_close(&ex);
	run_close(&da);
	run_close(&fo);
	return rc;
}

int main(int argc, char **argv)
{
	struct opts o;
	struct llama m;
	struct capture cap;
	dkv_client *c = NULL;
	char err[512];
	int rc;

	if (parse_args(argc, argv, &o))
		return 2;
	if (llama_load(o.model, &m, err, sizeof(err))) {
		fprintf(stderr, "stories: %s\n", err);
		return 2;
	}
	memset(&cap, 0, sizeof(cap));
	if (o.capture && capture_init(&cap, m.head_dim, m.n_heads, m.n_kv_heads, m.n_layers,
				      o.tokens)) {
		fprintf(stderr, "stories: out of memory for the capture\n");
		llama_free(&m);
		return 1;
	}
	rc = dkv_connect(o.connect, &c);
	if (rc != DKV_OK) {
		fprintf(stderr, "stories: dkv_connect(%s): %s: %s\n", o.connect,
			dkv_strerror(rc), c ? dkv_errmsg(c) : "");
		rc = 1;
		goto free;
	}
	if (o.compare)
		rc = compare(&m, c, &o, o.capture ? &cap : NULL);
	else
		rc = generate(&m, c, &o, o.capture ? &cap : NULL);
	if (rc == 0 && o.capture && write_capture(&o, &cap))
		rc = 1;
	dkv_disconnect(c);
free:
	capture_free(&cap);
	llama_free(&m);
	return rc;
}
