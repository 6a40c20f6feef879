#!/bin/sh
# stories.sh - stories260K through the embedded engine: exact mode gives
# the known text; DASH-KV at a tight budget stays close to exact; the Q/K
# capture is well formed; a truncated or corrupt model file is refused.
#
# The DASH-KV floor: at top_k 16, window 16, candidates 64 (4 sinks, so
# 36 tokens exact and the rest estimated once the context passes 100; with
# the default candidates, 2048, the whole 512-token context would be
# attended exactly), 397 of 400 teacher-forced greedy choices matched
# exact when measured (scalar and AVX2 kernels alike).  The test asks for
# 380 (95 %) and for the free-running DASH-KV text to keep the known
# opening (it diverged at generated token 181).
set -u
. "${top_srcdir:-.}/tests/model/common.sh"
dir=$(mktemp -d "${TMPDIR:-/tmp}/stories-test.XXXXXX") || exit 99
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM

# (a) exact attention, embedded
"$stories" --connect embedded --mode exact --tokens 400 --quiet >"$dir/exact" ||
	fail "exact run exited $?"
starts_with "$dir/exact" || fail "exact text differs from the known text"
echo "exact, embedded: known text reproduced"

# DASH-KV at a tight budget, side by side with exact
"$stories" --compare --top-k 16 --window 16 --candidates 64 --tokens 400 >"$dir/cmp" 2>"$dir/err" ||
	fail "compare exited $?: $(cat "$dir/err")"
grep -E "^(agreement|teacher-forced):" "$dir/cmp"
forced=$(field teacher-forced "$dir/cmp")
[ -n "$forced" ] && [ "$forced" -ge $forced_floor ] ||
	fail "teacher-forced agreement ${forced:-?} below $forced_floor of 400"
sed -n '/^--- DASH-KV$/{n;p;}' "$dir/cmp" >"$dir/dash"
starts_with "$dir/dash" || fail "DASH-KV lost the known opening"

# the Q/K capture: size from the geometry, header, CRC (checked by python3)
"$stories" --mode dash --top-k 16 --window 16 --tokens 64 --quiet \
	--capture "$dir/cap" >/dev/null || fail "capture run exited $?"
size=$(wc -c <"$dir/cap")
want=$((8 + 32 + 5 * 64 * (4 * 8 + 8 * 8) * 4 + 4))
[ "$size" -eq "$want" ] || fail "capture is $size bytes, expected $want"
if command -v python3 >/dev/null 2>&1; then
	python3 - "$dir/cap" <<'PY' || fail "capture header or CRC"
import struct, sys, zlib
b = open(sys.argv[1], "rb").read()
assert b[:8] == b"DKVCAPT1", b[:8]
hdr = struct.unpack_from("<8I", b, 8)
assert hdr == (1, 8, 8, 4, 5, 64, 0, 0), hdr
crc, = struct.unpack_from("<I", b, len(b) - 4)
assert crc == zlib.crc32(b[:-4]), (hex(crc), hex(zlib.crc32(b[:-4])))
PY
else
	echo "note: python3 missing, capture CRC not checked"
fi

# (c) a truncated or corrupt model file: exit 2 with a message, no crash
refused() { # file what
	"$stories" --model "$1" --tokens 4 >"$dir/out" 2>"$dir/err"
	rc=$?
	[ $rc -eq 2 ] || fail "$2: exit $rc, expected 2 ($(cat "$dir/err"))"
	grep -q "^stories: .*$1" "$dir/err" || fail "$2: no message naming the file"
	grep -qi "$3" "$dir/err" || fail "$2: message lacks '$3': $(cat "$dir/err")"
	echo "refused ($2): $(cat "$dir/err")"
}
full=$(wc -c <"$model")
for n in 0 3 24 100 14000 $((full / 2)) $((full - 1)); do
	head -c $n "$model" >"$dir/trunc.gguf"
	refused "$dir/trunc.gguf" "truncated to $n bytes" "truncated"
done
{ printf 'GGUX'; tail -c +5 "$model"; } >"$dir/magic.gguf"
refused "$dir/magic.gguf" "bad magic" "magic"
# the tensor count (bytes 8..15) made huge
{ head -c 8 "$model"; printf '\377\377\377\377\377\377\377\177'; tail -c +17 "$model"; } \
	>"$dir/count.gguf"
refused "$dir/count.gguf" "huge tensor count" "implausible"
# the first key's length (bytes 24..31) made huge
{ head -c 24 "$model"; printf '\377\377\377\377\377\377\377\377'; tail -c +33 "$model"; } \
	>"$dir/key.gguf"
refused "$dir/key.gguf" "huge key length" "truncated"
"$stories" --model "$model" --tokens 0 >/dev/null 2>&1 && fail "--tokens 0 accepted"
"$stories" --model "$model" --mode fast >/dev/null 2>&1 && fail "--mode fast accepted"
echo "PASS"
