/*
 * dashkv-plan - print the placement plan for this machine, an hwloc XML
 * export or a synthetic topology (as dashkvd --plan does).
 */
#include <stdlib.h>

#include "plan_cli.h"

int main(int argc, char **argv)
{
	return shard_plan_cli(argc, argv, "dashkv-plan", getenv("DASHKV_SHARDS"),
			      "$DASHKV_SHARDS, else auto");
}
