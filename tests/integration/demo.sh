#!/bin/sh
# demo.sh - dashkv-demo end to end at a small size: it runs, prints every
# step and a summary, and DASH-KV's output stays close to exact attention.
set -u
: "${top_builddir:=.}"
demo="$top_builddir/dashkv-demo"
out=$(mktemp "${TMPDIR:-/tmp}/dkv-demo.XXXXXX") || exit 99
trap 'rm -f "$out"' EXIT

fail() {
	echo "demo.sh: FAIL: $*"
	echo "---- output ----"
	cat "$out"
	exit 1
}

test -x "$demo" || { echo "demo.sh: $demo is not built"; exit 99; }

"$demo" --help >"$out" 2>&1 || fail "--help exited $?"
grep -q -- "--tokens" "$out" || fail "--help does not list --tokens"

"$demo" --tokens 0 >"$out" 2>&1
test $? -eq 2 || fail "a bad --tokens should exit 2"

"$demo" --tokens 8192 --steps 3 >"$out" 2>&1 || fail "the demo exited $?"
cat "$out"
grep -q "Prefilling 8192 tokens" "$out" || fail "no prefill line"
grep -q "8192 / 8192 tokens (100%)" "$out" || fail "prefill did not reach 100%"
rows=$(grep -c '^ *[123] *819[234] ' "$out")
test "$rows" -eq 3 || fail "expected 3 decode rows, got $rows"
grep -q "median step latency: DASH-KV" "$out" || fail "no latency summary"
grep -q "memory held, DASH-KV" "$out" || fail "no memory line"
grep -q "memory held, exact" "$out" || fail "no memory line for exact mode"

# every step's error, and the median, below a loose bound
awk '/^ *[123] *819[234] / { if ($NF + 0 > 0.5 || $NF != $NF + 0) bad = 1 }
     END { exit bad }' "$out" || fail "a decode step's output error is above 0.5"
err=$(sed -n 's/.*median output error vs exact: \([^ ]*\).*/\1/p' "$out")
test -n "$err" || fail "no median output error"
awk -v e="$err" 'BEGIN { exit !(e >= 0 && e < 0.5) }' || fail "median output error $err"
echo "demo.sh: ok (median output error $err)"

# the README's main job (make demo) at a small context: daemon up, demo
# client and stories260K through it, daemon stopped cleanly
job=$(mktemp "${TMPDIR:-/tmp}/main-job.XXXXXX") || exit 99
DEMO_TOKENS=8192 sh "$top_srcdir/tests/demo/main-job.sh" >"$job" 2>&1 ||
	{ cat "$job"; rm -f "$job"; fail "main job exited $?"; }
grep -q "^sessions " "$job" || { cat "$job"; fail "main job: no dashkvctl status"; }
grep -q "median step latency: DASH-KV" "$job" || { cat "$job"; fail "main job: no demo summary"; }
grep -q "dashkvd stopped (exit status 0)" "$job" || { cat "$job"; fail "main job: dashkvd did not stop cleanly"; }
if grep -q "stories260K skipped" "$job"; then
	echo "demo.sh: main job ran without stories260K (model file absent)"
else
	grep -q "^Once upon a time, there was a little girl named Lily." "$job" ||
		{ cat "$job"; fail "main job: stories260K text"; }
	grep -q "^agreement: " "$job" || { cat "$job"; fail "main job: no agreement line"; }
fi
rm -f "$job"
echo "demo.sh: main job ok"
exit 0
