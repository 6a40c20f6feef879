/*
 * plan_cli.c - the --plan command line of dashkv-plan and dashkvd: print
 * the placement plan for this machine, an hwloc XML export or a synthetic
 * topology.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "plan_cli.h"
#include "topo.h"

#define EXIT_USAGE 2

static const char usage[] =
	"usage: %s --plan [--topology FILE.xml | --synthetic DESC]\n"
	"       %*s [--shards SPEC] [--gpus]\n"
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
	"                     default: %s\n"
	"  --gpus             let auto choose one shard per NVIDIA GPU\n"
	"  -h, --help         this help\n"
	"\n"
	"GPUs are numbered in hwloc's discovery order (PCI order).\n";

struct opts {
	const char *prog;
	const char *dflt;  /* where the default spec comes from, for the usage */
	int plan;
	int gpus;
	const char *xml;
	const char *synthetic;
	const char *shards;
};

static int usage_error(const struct opts *o, const char *msg)
{
	fprintf(stderr, "%s: %s\n", o->prog, msg);
	fprintf(stderr, "Try '%s --help'.\n", o->prog);
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
	optind = 1;
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
			printf(usage, o->prog, (int)strlen(o->prog), "", o->dflt);
			return EXIT_SUCCESS;
		default:
			return usage_error(o, "unknown option or missing argument");
		}
	}
	if (optind < argc)
		return usage_error(o, "unexpected argument");
	if (!o->plan)
		return usage_error(o, "nothing to do: give --plan");
	if (o->xml && o->synthetic)
		return usage_error(o, "--topology and --synthetic exclude each other");
	return -1;
}

int shard_plan_cli(int argc, char **argv, const char *prog, const char *spec,
		   const char *spec_from)
{
	struct shard_topo *t;
	struct shard_plan *p;
	struct opts o = { .prog = prog, .dflt = spec_from, .shards = NULL };
	char err[KRN_MSGLEN];
	int ret = parse_args(argc, argv, &o);

	if (ret >= 0)
		return ret;
	if (!o.shards)
		o.shards = spec;
	if (shard_topo_load(&t, o.xml, o.synthetic, err) < 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		return EXIT_USAGE;
	}
	for (unsigned i = 0; i < t->n_notes; i++)
		fprintf(stderr, "%s: note: %s\n", prog, t->notes[i]);
	if (shard_plan_make_flags(t, o.shards, o.gpus ? SHARD_PLAN_GPUS : 0,
				  &p, err) < 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		shard_topo_free(t);
		return EXIT_USAGE;
	}
	shard_plan_print(p, stdout);
	shard_plan_free(p);
	shard_topo_free(t);
	return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
