#!/bin/sh
# learn.sh - the capture -> dashkv-train -> model file path end to end:
# the generator's capture trains, the bench loads the model, and corrupt
# or mismatched files are refused with a clear message.
set -u
: "${top_builddir:=.}"
bench="$top_builddir/dashkv-bench"
train="$top_builddir/dashkv-train"
dir=$(mktemp -d "${TMPDIR:-/tmp}/dkv-learn.XXXXXX") || exit 99
trap 'rm -rf "$dir"' EXIT

fail() {
	echo "learn.sh: FAIL: $*"
	test -f "$dir/out" && { echo "---- output ----"; cat "$dir/out"; }
	exit 1
}

test -x "$bench" && test -x "$train" || { echo "learn.sh: tools not built"; exit 99; }

"$bench" capture --tokens 2048 --dim 64 --layers 2 --out "$dir/g.capt" >"$dir/out" 2>&1 ||
	fail "capture exited $?"
# header 40 bytes + 2 layers x 2048 tokens x (2 + 8 heads) x 64 floats + crc
size=$(wc -c <"$dir/g.capt")
test "$size" -eq $((40 + 2 * 2048 * 10 * 64 * 4 + 4)) || fail "capture size $size"

"$train" --steps 60 "$dir/g.capt" "$dir/g.model" >"$dir/out" 2>&1 || fail "train exited $?"
cat "$dir/out"
test "$(grep -c 'coarse recall' "$dir/out")" -eq 4 || fail "not 4 trained heads"
# every head's held-out loss went down
awk '/loss/ { split($0, a, "loss "); split(a[2], b, " "); if (!(b[3] + 0 < b[1] + 0)) bad = 1 }
     END { exit bad }' "$dir/out" || fail "a head's loss did not drop"

"$bench" quality --capture "$dir/g.capt" --layer 1 --hash learned --model "$dir/g.model" \
	--queries 4 --top-k 64 --candidates 256 >"$dir/out" 2>&1 || fail "quality --model exited $?"
grep -q "^engine: learned 128 bits" "$dir/out" || fail "no learned engine line"

# a flipped byte in the capture: refused with the crc named
cp "$dir/g.capt" "$dir/bad.capt"
printf 'X' | dd of="$dir/bad.capt" bs=1 seek=1000 conv=notrunc 2>/dev/null
"$train" "$dir/bad.capt" "$dir/x.model" >"$dir/out" 2>&1
test $? -eq 1 || fail "a corrupt capture should exit 1"
grep -q "crc mismatch" "$dir/out" || fail "no crc message"

# a flipped byte in the model file: refused by the engine
cp "$dir/g.model" "$dir/bad.model"
printf 'X' | dd of="$dir/bad.model" bs=1 seek=500 conv=notrunc 2>/dev/null
"$bench" quality --capture "$dir/g.capt" --hash learned --model "$dir/bad.model" \
	--queries 4 --top-k 64 --candidates 256 >"$dir/out" 2>&1
test $? -eq 1 || fail "a corrupt model should fail the run"
grep -q "crc mismatch" "$dir/out" || fail "no crc message for the model"

# a 64-bit model for a 128-bit sequence: both geometries in the message
"$train" --quiet --bits 64 --steps 5 "$dir/g.capt" "$dir/g64.model" || fail "train --bits 64"
"$bench" quality --capture "$dir/g.capt" --hash learned --model "$dir/g64.model" \
	--queries 4 --top-k 64 --candidates 256 >"$dir/out" 2>&1
test $? -eq 1 || fail "a mismatched model should fail the run"
grep -q "model is for 64 bits" "$dir/out" || fail "no geometry message"

"$train" --bits 96 "$dir/g.capt" "$dir/y.model" >"$dir/out" 2>&1
test $? -eq 2 || fail "--bits 96 should exit 2"
"$train" "$dir/missing.capt" "$dir/y.model" >"$dir/out" 2>&1
test $? -eq 1 || fail "a missing capture should exit 1"
echo "learn.sh: OK"
