/*
 * dashkv-plan - print the placement plan for this machine, an hwloc XML
 * export or a synthetic topology (what `dashkvd --plan` will print).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "topo.h"

#define EXIT_USAGE 2

static const char usage[] =
	"usage: dashkv-plan --plan [--topology FILE.xml | --synthetic DESC]\n"
	"                   [--shards SPEC] [--gpus]\n"
	"\n"
	"Print the shard placement plan: one line per shard,\n"
	"  shard <i> <cpu|gpu> device=<n|-> numa=<node> cpus=<list>\n"
	"then a summary line.  Notes on ignored devices go to stderr.\n"
	"\n"
	"  --plan             print the plan (required)\n"
	"  --topology FILE    an hwloc XML export instead of this machine\n"
	"  --synthetic DESC   an hwloc synthetic topology, e.g.\n"
	"                     \"pack:2 numa:2 core:8 pu:2\"\n"
	"  --shards SPEC      auto, cpu:N or gpu:LIST (gpu:all, gpu:0,2-3);\n"
	"                     default: $DASHKV_SHARDS, else auto\n"
	"  --gpus             let auto choose one shard per NVIDIA GPU\n"
	"  -h, --help         this help\n"
	"\n"
	"GPUs are numbered in hwloc's discovery order (PCI order).\n";

struct opts {
	int plan;
	int gpus;
	const char *xml;
	const char *synthetic;
	const char *shards;
};

static int usage_error(const char *msg)
{
	fprintf(stderr, "dashkv-plan: %s\n", msg);
	fprintf(stderr, "Try 'dashkv-plan --help'.\n");
	return EXIT_USAGE;
}

/* Returns -1 to go on, or the exit status. */
static int parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
		{ "plan", no_argument, NULL, 'p' },
		{ "topology", required_argument, NULL, 't' },
		{ "synthetic", required_argument, NULL, 's' },
		{ "shards", required_argument, NULL, 'S' },
		{ "gpus", no_argument, NULL, 'g' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			o->plan = 1;
			break;
		case 't':
			o->xml = optarg;
			break;
		case 's':
			o->synthetic = optarg;
			break;
		case 'S':
			o->shards = optarg;
			break;
		case 'g':
			o->gpus = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return EXIT_SUCCESS;
		default:
			return usage_error("unknown option or missing argument");
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument");
	if (!o->plan)
		return usage_error("nothing to do: give --plan");
	if (o->xml && o->synthetic)
		return usage_error("--topology and --synthetic exclude each other");
	if (!o->shards)
		o->shards = getenv("DASHKV_SHARDS");
	return -1;
}

int main(int argc, char **argv)
{
	struct shard_topo *t;
	struct shard_plan *p;
	struct opts o = { 0 };
	char err[256];
	int ret = parse_args(argc, argv, &o);

	if (ret >= 0)
		return ret;
	if (shard_topo_load(&t, o.xml, o.synthetic, err, sizeof(err)) < 0) {
		fprintf(stderr, "dashkv-plan: %s\n", err);
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < t->n_notes; i++)
		fprintf(stderr, "dashkv-plan: note: %s\n", t->notes[i]);
	if (shard_plan_make_flags(t, o.shards, o.gpus ? SHARD_PLAN_GPUS : 0,
				  &p, err, sizeof(err)) < 0) {
		fprintf(stderr, "dashkv-plan: %s\n", err);
		shard_topo_free(t);
		return EXIT_USAGE;
	}
	shard_plan_print(p, stdout);
	shard_plan_free(p);
	shard_topo_free(t);
	return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
