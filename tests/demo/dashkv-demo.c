/*
 * dashkv-demo - the README's walk-through: a long synthetic context served
 * by DASH-KV next to exact attention, through the public API only.
 *
 * It connects (a daemon if $DASHKV_ADDRESS names one, else the embedded
 * engine), opens a DASH-KV sequence and an exact-mode sequence with the
 * same geometry, prefills both with the same long context from the
 * realistic generator, then decodes a few steps on both and prints the
 * latency of each, the speed-up and the output error of DASH-KV against
 * the exact output.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dashkv.h"
#include "gen/kvgen.h"

#define CHUNK_DEF 4096

struct demo_opts {
	uint64_t tokens;
	uint32_t steps, heads, kv_heads, dim, chunk;
	int32_t dtype;
	uint64_t seed;
	const char *address;
};

struct demo {
	struct demo_opts o;
	struct kvgen *g;
	dkv_client *c;
	dkv_seq *s[2];          /* 0: DASH-KV, 1: exact */
	size_t tok, all, es;    /* floats per token (k or v) and per query; bytes per value */
	float *k, *v, *q, *out[2];
	void *kd, *vd, *qd, *od[2];
	double *ms[2], *err;
};

static const char *mode_name[2] = { "DASH-KV", "exact" };

static uint64_t now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* ---- f32 <-> f16 / bf16, round to nearest even (finite inputs) ---- */

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static uint16_t to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static uint16_t to_f16(float f)
{
	uint32_t u = f32_bits(f), a = u & 0x7fffffff;
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000);

	if (a >= 0x477ff000) /* too large: Inf */
		return sign | 0x7c00;
	if (a < 0x38800000) /* subnormal or zero: a multiple of 2^-24 */
		return sign | (uint16_t)lrintf(bits_f32(a) * 0x1p24f);
	a -= 0x38000000;
	return sign | (uint16_t)((a + 0xfff + ((a >> 13) & 1)) >> 13);
}

static float from_f16(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;

	if (exp == 0)
		return bits_f32(sign | f32_bits((float)man * 0x1p-24f));
	if (exp == 0x1f)
		return bits_f32(sign | 0x7f800000 | (man << 13));
	return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static void to_dtype(const float *x, size_t n, int32_t dt, void *out)
{
	uint16_t *h = out;

	if (dt == DKV_F32)
		memcpy(out, x, n * sizeof(float));
	else
		for (size_t i = 0; i < n; i++)
			h[i] = dt == DKV_F16 ? to_f16(x[i]) : to_bf16(x[i]);
}

static void from_dtype(const void *in, size_t n, int32_t dt, float *x)
{
	const uint16_t *h = in;

	if (dt == DKV_F32)
		memcpy(x, in, n * sizeof(float));
	else
		for (size_t i = 0; i < n; i++)
			x[i] = dt == DKV_F16 ? from_f16(h[i]) : bits_f32((uint32_t)h[i] << 16);
}

/* ---- helpers ---- */

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "dashkv-demo: out of memory\n");
		exit(1);
	}
	return p;
}

static int fail(const struct demo *d, const char *what, int rc)
{
	fprintf(stderr, "dashkv-demo: %s failed: %s", what, dkv_strerror(rc));
	if (d->c && *dkv_errmsg(d->c))
		fprintf(stderr, " (%s)", dkv_errmsg(d->c));
	fprintf(stderr, "\n");
	return rc;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(const double *x, size_t n)
{
	double *t = xmalloc(n * sizeof(*t)), m;

	memcpy(t, x, n * sizeof(*t));
	qsort(t, n, sizeof(*t), cmp_double);
	m = n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
	free(t);
	return m;
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;

	for (size_t i = 0; i < n; i++) {
		double x = (double)a[i] - b[i];
		num += x * x;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

static const char *human(uint64_t bytes, char *buf, size_t len)
{
	if (bytes >= (1ull << 30))
		snprintf(buf, len, "%.2f GiB", bytes / 1073741824.0);
	else
		snprintf(buf, len, "%.1f MiB", bytes / 1048576.0);
	return buf;
}

static const char *dtype_name(int32_t dt)
{
	return dt == DKV_F16 ? "f16" : dt == DKV_BF16 ? "bf16" : "f32";
}

/* ---- setup ---- */

static int demo_alloc(struct demo *d)
{
	struct kvgen_params p;

	kvgen_params_init(&p);
	p.seed = d->o.seed;
	p.n_q_heads = d->o.heads;
	p.n_kv_heads = d->o.kv_heads;
	p.head_dim = d->o.dim;
	d->g = kvgen_new(&p);
	if (!d->g) {
		fprintf(stderr, "dashkv-demo: unusable geometry\n");
		return -1;
	}
	d->tok = (size_t)d->o.kv_heads * d->o.dim;
	d->all = (size_t)d->o.heads * d->o.dim;
	d->es = d->o.dtype == DKV_F32 ? 4 : 2;
	d->k = xmalloc(d->o.chunk * d->tok * sizeof(float));
	d->v = xmalloc(d->o.chunk * d->tok * sizeof(float));
	d->kd = xmalloc(d->o.chunk * d->tok * d->es);
	d->vd = xmalloc(d->o.chunk * d->tok * d->es);
	d->q = xmalloc(d->all * sizeof(float));
	d->qd = xmalloc(d->all * d->es);
	d->err = xmalloc(d->o.steps * sizeof(double));
	for (int m = 0; m < 2; m++) {
		d->out[m] = xmalloc(d->all * sizeof(float));
		d->od[m] = xmalloc(d->all * d->es);
		d->ms[m] = xmalloc(d->o.steps * sizeof(double));
	}
	return 0;
}

static void demo_free(struct demo *d)
{
	for (int m = 0; m < 2; m++) {
		if (d->s[m])
			dkv_seq_close(d->s[m]);
		free(d->out[m]);
		free(d->od[m]);
		free(d->ms[m]);
	}
	if (d->c)
		dkv_disconnect(d->c);
	kvgen_free(d->g);
	free(d->k);
	free(d->v);
	free(d->kd);
	free(d->vd);
	free(d->q);
	free(d->qd);
	free(d->err);
}

static int demo_open(struct demo *d)
{
	dkv_seq_config cfg;
	int rc = dkv_connect(d->o.address, &d->c);

	if (rc)
		return fail(d, "dkv_connect", rc);
	for (int m = 0; m < 2; m++) {
		dkv_seq_config_init(&cfg);
		cfg.n_layers = 1;
		cfg.n_q_heads = d->o.heads;
		cfg.n_kv_heads = d->o.kv_heads;
		cfg.head_dim = d->o.dim;
		cfg.dtype = d->o.dtype;
		cfg.max_tokens = d->o.tokens + d->o.steps;
		cfg.exact = m; /* the second sequence is the exact reference */
		rc = dkv_seq_open(d->c, &cfg, &d->s[m]);
		if (rc)
			return fail(d, "dkv_seq_open", rc);
	}
	return 0;
}

/* ---- prefill ---- */

static int prefill_chunk(struct demo *d, uint64_t pos, uint32_t n, uint64_t *ns)
{
	int rc;

	kvgen_kv(d->g, pos, n, d->k, d->v);
	to_dtype(d->k, n * d->tok, d->o.dtype, d->kd);
	to_dtype(d->v, n * d->tok, d->o.dtype, d->vd);
	for (int m = 0; m < 2; m++) {
		uint64_t t0 = now_ns();
		/* n_q = 0: append keys and values only */
		rc = dkv_step(d->s[m], 0, NULL, 0, d->kd, d->vd, n, NULL);
		ns[m] += now_ns() - t0;
		if (rc)
			return fail(d, "dkv_step (prefill)", rc);
	}
	return 0;
}

static int prefill(struct demo *d)
{
	uint64_t n = d->o.tokens, ns[2] = { 0, 0 }, every = n / 8 ? n / 8 : 1;
	uint64_t next = every;

	printf("Prefilling %llu tokens of synthetic context into both sequences "
	       "(chunks of %u)...\n", (unsigned long long)n, d->o.chunk);
	for (uint64_t pos = 0; pos < n; pos += d->o.chunk) {
		uint32_t m = n - pos < d->o.chunk ? (uint32_t)(n - pos) : d->o.chunk;
		if (prefill_chunk(d, pos, m, ns))
			return -1;
		if (pos + m >= next || pos + m == n) {
			printf("  %9llu / %llu tokens (%3.0f%%)   append time so far: "
			       "DASH-KV %.2f s, exact %.2f s\n",
			       (unsigned long long)(pos + m), (unsigned long long)n,
			       100.0 * (pos + m) / n, ns[0] / 1e9, ns[1] / 1e9);
			while (next <= pos + m)
				next += every;
		}
	}
	return 0;
}

/* ---- decode ---- */

static int decode_step(struct demo *d, uint32_t s)
{
	uint64_t pos = d->o.tokens + s;
	int rc;

	kvgen_kv(d->g, pos, 1, d->k, d->v);
	kvgen_queries(d->g, pos, 0, d->q);
	to_dtype(d->k, d->tok, d->o.dtype, d->kd);
	to_dtype(d->v, d->tok, d->o.dtype, d->vd);
	to_dtype(d->q, d->all, d->o.dtype, d->qd);
	for (int m = 0; m < 2; m++) {
		uint64_t t0 = now_ns();
		/* one new token, one query at its position */
		rc = dkv_step(d->s[m], 0, d->qd, 1, d->kd, d->vd, 1, d->od[m]);
		d->ms[m][s] = (now_ns() - t0) / 1e6;
		if (rc)
			return fail(d, "dkv_step (decode)", rc);
		from_dtype(d->od[m], d->all, d->o.dtype, d->out[m]);
	}
	d->err[s] = rel_err(d->out[0], d->out[1], d->all);
	printf("  %4u  %10llu  %10.3f  %10.3f  %8.1fx  %12.2e\n", s + 1,
	       (unsigned long long)pos, d->ms[0][s], d->ms[1][s],
	       d->ms[1][s] / d->ms[0][s], d->err[s]);
	return 0;
}

static int decode(struct demo *d)
{
	printf("\nDecoding %u steps (each appends 1 token and attends 1 query per head):\n",
	       d->o.steps);
	printf("  %4s  %10s  %10s  %10s  %9s  %12s\n", "step", "position",
	       "DASH-KV ms", "exact ms", "speed-up", "output error");
	for (uint32_t s = 0; s < d->o.steps; s++)
		if (decode_step(d, s))
			return -1;
	return 0;
}

static void memory_line(const struct demo *d, int m)
{
	dkv_stats st;
	char a[32], b[32], c[32], t[32];

	memset(&st, 0, sizeof(st));
	st.struct_size = sizeof(st);
	if (dkv_seq_stats(d->s[m], &st) != DKV_OK)
		return;
	printf("  memory held, %-7s: %s (keys+values %s, codes %s, summaries %s)\n",
	       mode_name[m],
	       human(st.bytes_full + st.bytes_codes + st.bytes_summaries, t, sizeof(t)),
	       human(st.bytes_full, a, sizeof(a)), human(st.bytes_codes, b, sizeof(b)),
	       human(st.bytes_summaries, c, sizeof(c)));
}

static void summary(const struct demo *d)
{
	double md = median(d->ms[0], d->o.steps), me = median(d->ms[1], d->o.steps);
	double err = median(d->err, d->o.steps);

	printf("\nSummary over %u decode steps at ~%llu tokens:\n", d->o.steps,
	       (unsigned long long)d->o.tokens);
	printf("  median step latency: DASH-KV %.3f ms, exact %.3f ms -> ", md, me);
	if (me >= md)
		printf("DASH-KV is %.1fx faster\n", md > 0 ? me / md : 0.0);
	else
		printf("DASH-KV is %.1fx slower\n", me > 0 ? md / me : 0.0);
	printf("  median output error vs exact: %.2e (||o - o_exact|| / ||o_exact||)\n", err);
	memory_line(d, 0);
	memory_line(d, 1);
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
"usage: dashkv-demo [options]\n"
"\n"
"Serves a long synthetic context with DASH-KV and with exact attention\n"
"side by side, and prints per decode step the latency of each, the\n"
"speed-up and DASH-KV's output error against the exact output.\n"
"\n"
"  --tokens N     context length (262144)\n"
"  --steps S      decode steps (8)\n"
"  --heads H      query heads (32)\n"
"  --kv-heads H   key/value heads (8)\n"
"  --dim D        head_dim (128)\n"
"  --dtype T      f32, f16 or bf16 (bf16)\n"
"  --chunk C      prefill chunk in tokens (4096)\n"
"  --seed S       generator seed (1)\n"
"  --address A    \"embedded\" or \"unix:/path\" (default: $DASHKV_ADDRESS,\n"
"                 else the embedded engine)\n"
"  --help         this text\n");
}

static int parse_num(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || v == 0 || v > max)
		return -1;
	*out = v;
	return 0;
}

static int parse_dtype(const char *s, int32_t *dt)
{
	if (!strcmp(s, "f32"))
		*dt = DKV_F32;
	else if (!strcmp(s, "f16"))
		*dt = DKV_F16;
	else if (!strcmp(s, "bf16"))
		*dt = DKV_BF16;
	else
		return -1;
	return 0;
}

static int set_u32(const char *s, uint32_t *out)
{
	uint64_t v;

	if (parse_num(s, UINT32_MAX, &v))
		return -1;
	*out = (uint32_t)v;
	return 0;
}

static int parse_opt(int c, const char *a, struct demo_opts *o)
{
	switch (c) {
	case 't': return parse_num(a, 1ull << 31, &o->tokens);
	case 's': return set_u32(a, &o->steps);
	case 'H': return set_u32(a, &o->heads);
	case 'K': return set_u32(a, &o->kv_heads);
	case 'd': return set_u32(a, &o->dim);
	case 'c': return set_u32(a, &o->chunk);
	case 'T': return parse_dtype(a, &o->dtype);
	case 'S': return parse_num(a, UINT64_MAX, &o->seed);
	case 'a': o->address = a; return 0;
	}
	return -1;
}

static const struct option longopts[] = {
	{ "tokens", required_argument, NULL, 't' },
	{ "steps", required_argument, NULL, 's' },
	{ "heads", required_argument, NULL, 'H' },
	{ "kv-heads", required_argument, NULL, 'K' },
	{ "dim", required_argument, NULL, 'd' },
	{ "dtype", required_argument, NULL, 'T' },
	{ "chunk", required_argument, NULL, 'c' },
	{ "seed", required_argument, NULL, 'S' },
	{ "address", required_argument, NULL, 'a' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 }
};

/* 0: run, 1: help shown, -1: bad usage */
static int parse_args(int argc, char **argv, struct demo_opts *o)
{
	int c, li = 0;

	*o = (struct demo_opts){ .tokens = 262144, .steps = 8, .heads = 32,
				 .kv_heads = 8, .dim = 128, .chunk = CHUNK_DEF,
				 .dtype = DKV_BF16, .seed = 1 };
	while ((c = getopt_long(argc, argv, "h", longopts, &li)) != -1) {
		if (c == 'h') {
			usage(stdout);
			return 1;
		}
		if (c == '?')
			return -1;
		if (parse_opt(c, optarg, o)) {
			fprintf(stderr, "dashkv-demo: bad value '%s' for --%s\n",
				optarg, longopts[li].name);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dashkv-demo: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->heads % o->kv_heads) {
		fprintf(stderr, "dashkv-demo: --heads must be a multiple of --kv-heads\n");
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct demo d;
	int rc;

	memset(&d, 0, sizeof(d));
	rc = parse_args(argc, argv, &d.o);
	if (rc) {
		if (rc < 0)
			fprintf(stderr, "Try 'dashkv-demo --help'.\n");
		return rc > 0 ? 0 : 2;
	}
	printf("DASH-KV demo: one layer, %u query heads / %u kv heads, head_dim %u, %s\n",
	       d.o.heads, d.o.kv_heads, d.o.dim, dtype_name(d.o.dtype));
	printf("Two sequences get the same data: one served by DASH-KV, one by exact "
	       "attention (exact=1).\n\n");
	rc = demo_alloc(&d);
	if (!rc)
		rc = demo_open(&d);
	if (!rc)
		rc = prefill(&d);
	if (!rc)
		rc = decode(&d);
	if (!rc)
		summary(&d);
	demo_free(&d);
	return rc ? 1 : 0;
}
