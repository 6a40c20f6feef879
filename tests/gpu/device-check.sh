#!/usr/bin/env bash
# device-check.sh - the GPU checks, in one run on a machine with a GPU.
#
# Builds DASH-KV with CUDA and NCCL out of tree, runs check_cuda (every
# CUDA kernel against the scalar reference, the GPU shard search against
# the CPU pipeline, a one-rank NCCL all-gather through the shard
# collective), gpu-shards (the engine with GPU shards, DASHKV_SHARDS=gpu:0,
# against cpu:1: parity, then the decode step latency at 128K and 1M tokens
# against exact mode on the GPU shard and against cpu:1) and gpu-bench
# (scan GB/s against the device-to-device copy bandwidth, decode step
# latency at 128K and 1M tokens against exact attention on the GPU).  Every step is logged and timed; a failing step
# is recorded and the next one still runs.  The whole run stays under 8
# minutes (each step has its own limit within a global one).
#
# Figures go to $OUT/device-check.txt when OUT is set, else to
# ./device-check.txt.  Exit status: 0 when every step passed, 1 otherwise.
#
# The source tree needs a configure script: a checkout without one is
# bootstrapped with autoreconf (autoconf, automake, libtool); where those
# are missing, bring the generated files along (configure, Makefile.in,
# aclocal.m4, config.h.in, build-aux/).  The build needs what a CPU build
# needs (hwloc, libnuma, check) plus CUDA and NCCL under /usr/local/cuda.
#
# Environment: DKV_BUILD (build directory, default a new one under /tmp),
# DKV_CONFIGURE_FLAGS (extra configure flags), DKV_DEADLINE (seconds,
# default 470).
set -eu

src=$(cd "$(dirname "$0")/../.." && pwd)
outdir=${OUT:-$PWD}
mkdir -p "$outdir"
report=$outdir/device-check.txt
build=${DKV_BUILD:-$(mktemp -d /tmp/dkv-device-check.XXXXXX)}
mkdir -p "$build"
jobs=$(nproc 2>/dev/null || echo 4)
t_start=$(date +%s)
deadline=${DKV_DEADLINE:-470}
failed=0
failures=

: >"$report"

log() {
	printf '%s\n' "$*" | tee -a "$report"
}

# Seconds left before the global deadline, capped at $1.
budget() {
	local left=$((deadline - ($(date +%s) - t_start)))
	if [ "$left" -lt "$1" ]; then
		echo "$left"
	else
		echo "$1"
	fi
}

# step NAME LIMIT CMD...: run CMD with a time limit, keep its output in
# the build directory, copy its tail into the report, record the result.
step() {
	local name=$1 limit rc t0
	limit=$(budget "$2")
	shift 2
	log ""
	log "=== $name (limit ${limit} s)"
	if [ "$limit" -le 5 ]; then
		log "--- $name: SKIPPED, the ${deadline} s deadline is reached"
		failed=$((failed + 1))
		failures="$failures $name"
		return 0
	fi
	t0=$(date +%s)
	rc=0
	timeout -k 10 "$limit" bash -c 'set -eu; "$@"' step "$@" >"$build/$name.log" 2>&1 || rc=$?
	tail -n "${TAIL_LINES:-60}" "$build/$name.log" >>"$report"
	if [ "$rc" -eq 0 ]; then
		log "--- $name: PASS ($(($(date +%s) - t0)) s)"
	else
		if [ "$rc" -eq 124 ]; then
			log "--- $name: timed out after $limit s"
		elif [ "$rc" -eq 77 ]; then
			log "--- $name: SKIPPED by the program itself (no GPU or no module?)"
		fi
		log "--- $name: FAIL (exit $rc, $(($(date +%s) - t0)) s)"
		failed=$((failed + 1))
		failures="$failures $name"
	fi
	return 0
}

machine_info() {
	uname -a
	nproc
	command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv
	nvcc_path=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
	"$nvcc_path" --version | tail -n 2
}

bootstrap() {
	cd "$src"
	if [ ! -x configure ]; then
		command -v autoreconf >/dev/null ||
			{ echo "no configure script and no autoreconf to make one" >&2; exit 1; }
		autoreconf -fi
	fi
}

configure_build() {
	cd "$build"
	# shellcheck disable=SC2086
	"$src/configure" -q --with-cuda --with-nccl ${DKV_CONFIGURE_FLAGS:-}
	make -j"$jobs" >/dev/null
	make -j"$jobs" tests/gpu/check_cuda tests/gpu/gpu-bench tests/gpu/gpu-shards >/dev/null
	grep -E '^#define HAVE_(CUDA|NVCC|NCCL)' config.h
}

parity() {
	cd "$build"
	./tests/gpu/check_cuda
}

bench() {
	cd "$build"
	./tests/gpu/gpu-bench
}

# The engine on a real GPU shard: the module of this build, not an installed one.
engine() {
	cd "$build"
	DASHKV_CUDA_MODULE="$build/kernels/cuda/.libs/dashkv-cuda.so" ./tests/gpu/gpu-shards -n 9
}

export src build jobs
export DKV_CONFIGURE_FLAGS=${DKV_CONFIGURE_FLAGS:-}
export -f machine_info bootstrap configure_build parity bench engine

log "DASH-KV device check: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
log "source $src"
log "build  $build"
(cd "$src" && git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$report") || true

step machine 30 machine_info
step bootstrap 120 bootstrap
step build 240 configure_build
if [ -x "$build/tests/gpu/check_cuda" ]; then
	step parity 100 parity
	TAIL_LINES=40 step engine 150 engine
	TAIL_LINES=80 step bench 150 bench
else
	log "=== parity, bench, engine: not run, the build has no check_cuda"
	failed=$((failed + 3))
	failures="$failures parity bench engine"
fi

log ""
log "=== summary"
if [ -f "$build/parity.log" ]; then
	grep -E '^[0-9]+%: Checks|check_cuda: device|NCCL one-rank' "$build/parity.log" |
		sed 's/^/parity: /' | tee -a "$report" || true
fi
if [ -f "$build/bench.log" ]; then
	grep -E '^(device|copy_d2d_bw|scan_nq8(_tail)?_(bw|share_of_copy)|decode_[0-9]+k(_hostkv)?_(search_ms|exact_ms|speedup))' \
		"$build/bench.log" | sed 's/^/bench: /' | tee -a "$report" || true
fi
if [ -f "$build/engine.log" ]; then
	grep -E '^engine' "$build/engine.log" | sed 's/^/engine: /' | tee -a "$report" || true
fi
log "elapsed $(($(date +%s) - t_start)) s, failed steps: $failed${failures:+ ($failures )}"
[ "$failed" -eq 0 ]
