/*
 * main.c - dashkv-bench: quality and speed of DASH-KV against exact
 * attention, measured side by side in one run on the realistic generator
 * (tests/lib/gen/kvgen.h).  See dashkv-bench(1).  This file holds the
 * command line: usage, options, their defaults and checks, and the
 * dispatch to the commands:
 *
 *   quality [options]   recall and output error vs exact      quality.c
 *   speed [options]     decode step vs exact mode, memory     speed.c
 *                       bandwidth, coarse scan bytes/s        scan.c
 *   shards [options]    decode step over 1, 2, ... CPU shards shards.c
 *   scan [options]      the coarse scan of every kernel level scan.c
 *   ipc [options]       a tiny step through dashkvd vs        ipc.c, ipc.h
 *                       embedded (its own options)
 *   capture [options]   a Q/K capture file of the generator   capture.c
 *
 * common.c holds what the commands share and bench.h declares it; ipc.h
 * declares cmd_ipc.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashkv.h"
#include "bench.h"
#include "ipc.h"

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
"  --rerank N|off      coarse-filter pool per 1000 tokens that the key sketches\n"
"                      re-rank to --candidates (1..1000), or off (no pool)\n"
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
	case 'R':
		if (!strcmp(a, "off")) {
			o->rerank = DKV_RERANK_OFF;
			return 0;
		}
		return parse_u32(a, &o->rerank) || !o->rerank || o->rerank > 1000;
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
	{ "rerank", required_argument, NULL, 'R' },
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
