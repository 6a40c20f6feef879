#!/bin/sh
# gpu-shards-emu.sh - tests/gpu/gpu-shards (the program device-check.sh
# runs on a GPU machine) on the emulated GPU module, at small sizes: its
# parity checks must pass and it must print every figure.
set -eu
: "${top_builddir:=.}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
DASHKV_CUDA_MODULE="$top_builddir/tests/gpu/.libs/dashkv-gpu-emu.so" \
	"$top_builddir/tests/gpu/gpu-shards" -p 20000 -s 12000 -n 3 >"$out" 2>&1 || {
	cat "$out"
	echo "gpu-shards-emu.sh: gpu-shards failed" >&2
	exit 1
}
cat "$out"
for want in 'engine gpu:0: emulated module, 1 GPU shard on device 0' \
	'engine_parity_dash_f32: .*: PASS' 'engine_parity_exact_bf16: .*: PASS' \
	'engine_decode_11k_gpu_ms [0-9]' 'engine_decode_11k_exact_gpu_ms [0-9]' \
	'engine_decode_11k_speedup_vs_exact_gpu [0-9]' 'engine_gpu_fallbacks 0' \
	'engine_parity: PASS'; do
	grep -q "^$want" "$out" || { echo "gpu-shards-emu.sh: no line '$want'" >&2; exit 1; }
done
