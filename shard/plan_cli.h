/*
 * plan_cli.h - the --plan command line shared by dashkv-plan and dashkvd.
 */
#ifndef DKV_SHARD_PLAN_CLI_H
#define DKV_SHARD_PLAN_CLI_H

/*
 * Parse argv (--plan, --topology FILE, --synthetic DESC, --shards SPEC,
 * --gpus, --help), print the plan to stdout and return the exit status
 * (0, 1 on a write error, 2 on bad usage or a plan that cannot be made).
 * spec is the shard spec when --shards is not given (NULL: auto);
 * spec_from says where it comes from, for --help.
 */
int shard_plan_cli(int argc, char **argv, const char *prog, const char *spec,
		   const char *spec_from);

#endif
