#!/bin/sh
# plan.sh - dashkv-plan --plan prints one well-formed line per shard and a
# summary, on a synthetic 8-node machine and the recorded DGX-2; bad input
# exits 2 with a message.  Skips (77) the recorded machines when
# ../shared/data/topologies is missing.
set -u

plan="${top_builddir:-.}/dashkv-plan"
data="${DASHKV_TEST_DATA:-${top_srcdir:-.}/../shared/data}/topologies"
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
unset DASHKV_SHARDS

fail() {
	echo "plan.sh: FAIL: $*" >&2
	exit 1
}

# check_format FILE SHARDS KIND: SHARDS lines "shard <i> KIND device=..
# numa=.. cpus=.." numbered from 0, then one summary line.
check_format() {
	awk -v n="$2" -v kind="$3" '
	/^shard / {
		if ($0 !~ /^shard [0-9]+ (cpu|gpu) device=([0-9]+|-) numa=[0-9]+ cpus=[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$/) {
			print "bad line: " $0; bad = 1
		}
		if ($2 != shards) { print "out of order: " $0; bad = 1 }
		if ($3 != kind) { print "not " kind ": " $0; bad = 1 }
		if (kind == "cpu" && $4 != "device=-") { print "cpu device: " $0; bad = 1 }
		if (kind == "gpu" && $4 == "device=-") { print "gpu device: " $0; bad = 1 }
		shards++
		next
	}
	/^plan: / {
		summary++
		if ($0 !~ /^plan: [0-9]+ shards? \([0-9]+ cpu, [0-9]+ gpu\) over [0-9]+ NUMA nodes?, [0-9]+ ignored devices?(, shards share PUs)?$/) {
			print "bad summary: " $0; bad = 1
		}
		if ($2 != n) { print "summary count: " $0; bad = 1 }
		next
	}
	{ print "unexpected line: " $0; bad = 1 }
	END {
		if (shards != n) { print "shards: " shards ", want " n; bad = 1 }
		if (summary != 1) { print "summary lines: " summary; bad = 1 }
		exit bad
	}' "$1" || fail "$1: format (see above)"
}

# expect_error STATUS PATTERN ARGS...: exits STATUS with PATTERN on stderr.
expect_error() {
	want=$1 pattern=$2
	shift 2
	"$plan" "$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	[ "$rc" -eq "$want" ] || fail "dashkv-plan $*: exit $rc, want $want"
	grep -q -- "$pattern" "$tmp/err" ||
		fail "dashkv-plan $*: no \"$pattern\" in: $(cat "$tmp/err")"
	[ -s "$tmp/out" ] && fail "dashkv-plan $*: printed a plan"
	return 0
}

[ -x "$plan" ] || fail "$plan not built"

# --- synthetic: 8 NUMA nodes of 4 cores ---
eight="pack:1 numa:8 core:4 pu:1"
"$plan" --plan --synthetic "$eight" >"$tmp/auto" || fail "8 nodes auto"
check_format "$tmp/auto" 8 cpu
awk '/^shard/ && ($5 != "numa=" $2) { exit 1 }' "$tmp/auto" ||
	fail "8 nodes auto: shard i not on node i"

cat >"$tmp/want4" <<'END'
shard 0 cpu device=- numa=0 cpus=0-3
shard 1 cpu device=- numa=1 cpus=4-7
shard 2 cpu device=- numa=2 cpus=8-11
shard 3 cpu device=- numa=3 cpus=12-15
plan: 4 shards (4 cpu, 0 gpu) over 4 NUMA nodes, 0 ignored devices
END
"$plan" --plan --synthetic "$eight" --shards cpu:4 >"$tmp/cpu4" || fail "cpu:4"
cmp -s "$tmp/want4" "$tmp/cpu4" || fail "cpu:4: $(cat "$tmp/cpu4")"
DASHKV_SHARDS=cpu:4 "$plan" --plan --synthetic "$eight" >"$tmp/env4" ||
	fail "DASHKV_SHARDS=cpu:4"
cmp -s "$tmp/want4" "$tmp/env4" || fail "DASHKV_SHARDS=cpu:4 ignored"
DASHKV_SHARDS=cpu:4 "$plan" --plan --synthetic "$eight" --shards auto \
	>"$tmp/over" || fail "--shards over DASHKV_SHARDS"
check_format "$tmp/over" 8 cpu

"$plan" --plan --synthetic "$eight" --shards cpu:16 >"$tmp/cpu16" || fail "cpu:16"
check_format "$tmp/cpu16" 16 cpu
# two shards per node, two cores each, disjoint
awk '/^shard/ { split($6, a, "[=-]"); if (a[3] - a[2] != 1) exit 1;
	if (seen[$6]++) exit 1 }' "$tmp/cpu16" || fail "cpu:16 split"

# more shards than PUs: they share PUs, one each, round-robin
"$plan" --plan --synthetic "$eight" --shards cpu:33 >"$tmp/cpu33" || fail "cpu:33"
grep -q "^plan: 33 shards .*, shards share PUs$" "$tmp/cpu33" || fail "cpu:33 summary"

# --- errors ---
expect_error 2 "cpu:0" --plan --synthetic "$eight" --shards cpu:0
expect_error 2 "unknown shard spec" --plan --synthetic "$eight" --shards tpu:1
expect_error 2 "no NVIDIA GPU" --plan --synthetic "$eight" --shards gpu:all
DASHKV_SHARDS=cpu:x expect_error 2 "cpu:x" --plan --synthetic "$eight"
expect_error 2 "give --plan" --synthetic "$eight"
expect_error 2 "exclude" --plan --synthetic "$eight" --topology x.xml
expect_error 2 "nonexistent" --plan --topology /nonexistent/x.xml
expect_error 2 "synthetic" --plan --synthetic "pack:x"
expect_error 2 "unknown option" --plan --bogus
"$plan" --help >"$tmp/help" || fail "--help"
grep -q "^usage: dashkv-plan" "$tmp/help" || fail "--help text"

# --- recorded machines ---
dgx2="$data/hwloc-nvidiaDGX2.xml"
if [ ! -r "$dgx2" ]; then
	echo "plan.sh: SKIP: $dgx2 missing (recorded machines not checked)"
	exit 77
fi
"$plan" --plan --topology "$dgx2" >"$tmp/dgx" || fail "DGX-2 auto"
check_format "$tmp/dgx" 2 cpu
"$plan" --plan --topology "$dgx2" --shards gpu:all >"$tmp/dgxg" ||
	fail "DGX-2 gpu:all"
check_format "$tmp/dgxg" 16 gpu
awk '/^shard/ { want = $2 < 8 ? 0 : 1
	if ($4 != "device=" $2 || $5 != "numa=" want) exit 1 }' "$tmp/dgxg" ||
	fail "DGX-2: GPUs not on their nodes: $(cat "$tmp/dgxg")"
"$plan" --plan --topology "$dgx2" --gpus >"$tmp/dgxa" || fail "DGX-2 --gpus"
cmp -s "$tmp/dgxg" "$tmp/dgxa" || fail "DGX-2: --gpus differs from gpu:all"
expect_error 2 "no GPU 99 (16 NVIDIA GPUs found: 0-15)" \
	--plan --topology "$dgx2" --shards gpu:99

tioga="$data/mpibind-eas-tioga.xml"
if [ -r "$tioga" ]; then
	"$plan" --plan --topology "$tioga" --gpus >"$tmp/tioga" 2>"$tmp/notes" ||
		fail "tioga"
	check_format "$tmp/tioga" 4 cpu
	[ "$(grep -c '^dashkv-plan: note: ignored device rsmi' "$tmp/notes")" -eq 8 ] ||
		fail "tioga: want 8 notes: $(cat "$tmp/notes")"
fi
exit 0
