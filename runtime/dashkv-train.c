/*
 * dashkv-train - fit learned hash models from a Q/K capture file and
 * write a model file that DKV_HASH_LEARNED sequences load (see
 * dashkv-train(1)).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "dashkv.h"
#include "learn.h"
#include "model.h"
#include "proj.h"

struct topts {
	uint32_t bits, sinks, hidden;
	struct rt_learn_opts learn;
	int quiet;
	const char *in, *out;
};

static void usage(FILE *f)
{
	fprintf(f,
"usage: dashkv-train [options] CAPTURE MODEL\n"
"\n"
"Fit a learned hash model per (layer, kv head) from the keys and queries of\n"
"CAPTURE (a DKVCAPT1 file) and write them to MODEL (a DKVMODL1 file).\n"
"\n"
"  --bits B         code bits: 64, 128 or 256 (128)\n"
"  --hidden H       hidden units of the query network (%u)\n"
"  --sinks S        leading tokens left out of training, as the engine's\n"
"                   sink_tokens (4)\n"
"  --steps N        Adam steps per head (400)\n"
"  --keys N         keys sampled per head (4096)\n"
"  --queries N      queries sampled per head (1024)\n"
"  --seed S         training seed (1)\n"
"  --quiet          no per-head lines\n"
"  --help           this text\n", RT_MODEL_HIDDEN);
}

static int parse_u32(const char *s, uint32_t *out, uint32_t lo, uint32_t hi)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v < lo || v > hi)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_opt(int c, const char *a, struct topts *o)
{
	uint32_t seed;

	switch (c) {
	case 'b':
		if (parse_u32(a, &o->bits, 64, 256))
			return -1;
		return o->bits == 64 || o->bits == 128 || o->bits == 256 ? 0 : -1;
	case 'H': return parse_u32(a, &o->hidden, 1, RT_MODEL_HIDDEN_MAX);
	case 's': return parse_u32(a, &o->sinks, 0, 1u << 20);
	case 'n': return parse_u32(a, &o->learn.steps, 0, 1000000);
	case 'k': return parse_u32(a, &o->learn.max_keys, 64, 1u << 20);
	case 'q': return parse_u32(a, &o->learn.max_queries, 8, 1u << 20);
	case 'S':
		if (parse_u32(a, &seed, 0, UINT32_MAX))
			return -1;
		o->learn.seed = seed;
		return 0;
	}
	return -1;
}

static const struct option longopts[] = {
	{ "bits", required_argument, NULL, 'b' },
	{ "hidden", required_argument, NULL, 'H' },
	{ "sinks", required_argument, NULL, 's' },
	{ "steps", required_argument, NULL, 'n' },
	{ "keys", required_argument, NULL, 'k' },
	{ "queries", required_argument, NULL, 'q' },
	{ "seed", required_argument, NULL, 'S' },
	{ "quiet", no_argument, NULL, 'Q' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 }
};

/* 0: run, 1: help shown, -1: bad usage (message printed) */
static int parse_args(int argc, char **argv, struct topts *o)
{
	int c, li = 0;

	memset(o, 0, sizeof(*o));
	o->bits = 128;
	o->sinks = 4;
	o->hidden = RT_MODEL_HIDDEN;
	rt_learn_defaults(&o->learn);
	while ((c = getopt_long(argc, argv, "", longopts, &li)) != -1) {
		if (c == 'h')
			return 1;
		if (c == 'Q') {
			o->quiet = 1;
			continue;
		}
		if (c == '?' || parse_opt(c, optarg, o)) {
			if (c != '?')
				fprintf(stderr, "dashkv-train: bad value '%s' for --%s\n", optarg,
					longopts[li].name);
			return -1;
		}
	}
	if (argc - optind != 2) {
		fprintf(stderr, "dashkv-train: need CAPTURE and MODEL\n");
		return -1;
	}
	o->in = argv[optind];
	o->out = argv[optind + 1];
	return 0;
}

/*
 * The training set of (layer l, kv head h): its keys after the sinks
 * (rows n_kv_heads * head_dim apart), their mean, and its group's
 * queries gathered into q [(n_tokens - t0) * group][head_dim].
 */
static void head_data(const struct rt_capture *c, uint32_t l, uint32_t h, uint32_t t0,
		      float *mu, float *q)
{
	uint32_t D = c->head_dim, g = c->n_heads / c->n_kv_heads;
	size_t ldk = (size_t)c->n_kv_heads * D, ldq = (size_t)c->n_heads * D;
	const float *K = rt_capture_keys(c, l) + (size_t)h * D;
	const float *Q = rt_capture_queries(c, l) + (size_t)h * g * D;
	double acc[DKV_MAX_HEAD_DIM] = { 0 };

	for (uint32_t t = t0; t < c->n_tokens; t++)
		for (uint32_t d = 0; d < D; d++)
			acc[d] += K[t * ldk + d];
	for (uint32_t d = 0; d < D; d++)
		mu[d] = (float)(acc[d] / (c->n_tokens - t0));
	for (uint32_t t = t0; t < c->n_tokens; t++)
		memcpy(q + (size_t)(t - t0) * g * D, Q + t * ldq, (size_t)g * D * sizeof(float));
}

static int train_all(const struct topts *o, const struct rt_capture *c, struct rt_model *m)
{
	uint32_t D = c->head_dim, g = c->n_heads / c->n_kv_heads;
	uint32_t t0 = c->n_tokens > o->sinks ? o->sinks : 0, n = c->n_tokens - t0;
	float *q = malloc((size_t)n * g * D * sizeof(float)), mu[DKV_MAX_HEAD_DIM];
	float *P = rt_hash_projection(o->bits, D, RT_HASH_SEED(D));
	int rc = 0;

	if (!q || !P) {
		fprintf(stderr, "dashkv-train: out of memory\n");
		rc = -1;
	}
	for (uint32_t l = 0; l < c->n_layers && !rc; l++)
		for (uint32_t h = 0; h < c->n_kv_heads && !rc; h++) {
			size_t i = (size_t)l * c->n_kv_heads + h;
			struct rt_learn_stats st;
			head_data(c, l, h, t0, mu, q);
			int r = rt_learn_head(rt_capture_keys(c, l) + (size_t)t0 * c->n_kv_heads * D +
					      (size_t)h * D, n, (size_t)c->n_kv_heads * D, mu,
					      q, n * g, D, P, &o->learn, &m->heads[i], &st);
			if (r < 0) {
				fprintf(stderr, "dashkv-train: out of memory training layer %u head %u\n",
					l, h);
				rc = -1;
				break;
			}
			m->trained[i] = r == 0;
			if (!o->quiet && r == 0)
				printf("layer %u kv head %u: %u keys, %u queries, loss %.4f -> %.4f, "
				       "coarse recall %.3f -> %.3f, %.0f ms\n", l, h, st.n_keys,
				       st.n_queries, st.loss0, st.loss1, st.recall0, st.recall1, st.ms);
			else if (!o->quiet)
				printf("layer %u kv head %u: too little data, left untrained\n", l, h);
		}
	free(q);
	free(P);
	return rc;
}

int main(int argc, char **argv)
{
	struct topts o;
	struct rt_capture c;
	struct rt_model m;
	char err[KRN_MSGLEN];
	int rc = parse_args(argc, argv, &o);

	if (rc) {
		usage(rc > 0 ? stdout : stderr);
		return rc > 0 ? 0 : 2;
	}
	rc = rt_capture_read(o.in, &c, err);
	if (rc) {
		fprintf(stderr, "dashkv-train: %s\n", err);
		return 1;
	}
	if (c.head_dim % 8) {
		fprintf(stderr, "dashkv-train: %s: head_dim %u is not a multiple of 8\n", o.in,
			c.head_dim);
		rt_capture_free(&c);
		return 1;
	}
	if (rt_model_alloc(&m, o.bits, c.head_dim, o.hidden, c.n_layers, c.n_kv_heads)) {
		fprintf(stderr, "dashkv-train: out of memory for the model\n");
		rt_capture_free(&c);
		return 1;
	}
	rc = train_all(&o, &c, &m);
	if (!rc && rt_model_write(&m, o.out, err)) {
		fprintf(stderr, "dashkv-train: %s\n", err);
		rc = -1;
	}
	if (!rc && !o.quiet)
		printf("wrote %s: %u layers x %u kv heads, %u bits, head_dim %u, hidden %u\n",
		       o.out, c.n_layers, c.n_kv_heads, o.bits, c.head_dim, o.hidden);
	rt_model_free(&m);
	rt_capture_free(&c);
	return rc ? 1 : 0;
}
