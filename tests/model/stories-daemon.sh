#!/bin/sh
# stories-daemon.sh - stories260K with every layer's attention served by a
# real dashkvd on a temporary socket: exact mode gives the known text, and
# DASH-KV at top_k 16, window 16 agrees with exact over 400 tokens as well
# as it does embedded (the same figures: the daemon runs the same engine).
set -u
. "${top_srcdir:-.}/tests/model/common.sh"
dmn=$b/dashkvd
dir=$(mktemp -d "${TMPDIR:-/tmp}/stories-dmn.XXXXXX") || exit 99
sock=$dir/d.sock
pid=
cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

. "${top_srcdir:-.}/tests/lib/dashkvd-start.sh"
start_dashkvd "$dmn" "$dir" || fail "dashkvd did not start"

"$stories" --connect "unix:$sock" --mode exact --tokens 400 --quiet >"$dir/exact" ||
	fail "exact run through dashkvd exited $?"
starts_with "$dir/exact" || fail "exact text through dashkvd differs from the known text"
echo "exact, dashkvd: known text reproduced"

"$stories" --connect "unix:$sock" --compare --top-k 16 --window 16 --candidates 64 --tokens 400 \
	>"$dir/cmp" 2>"$dir/err" || fail "compare through dashkvd exited $?: $(cat "$dir/err")"
grep -E "^(agreement|teacher-forced):" "$dir/cmp"
forced=$(field teacher-forced "$dir/cmp")
[ -n "$forced" ] && [ "$forced" -ge $forced_floor ] ||
	fail "teacher-forced agreement ${forced:-?} below $forced_floor of 400"
sed -n '/^--- DASH-KV$/{n;p;}' "$dir/cmp" >"$dir/dash"
starts_with "$dir/dash" || fail "DASH-KV through dashkvd lost the known opening"

# the daemon serves the embedded engine's outputs bit for bit
"$stories" --connect embedded --compare --top-k 16 --window 16 --candidates 64 --tokens 400 \
	>"$dir/cmp-emb" 2>/dev/null || fail "embedded compare exited $?"
cmp -s "$dir/cmp" "$dir/cmp-emb" || fail "daemon and embedded runs differ"

kill -TERM "$pid"
wait "$pid" || fail "dashkvd exit status $?"
pid=
echo "PASS"
