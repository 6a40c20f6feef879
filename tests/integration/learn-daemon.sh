#!/bin/sh
# learn-daemon.sh - hash_model through a real dashkvd: a model file of
# dashkv-train given at open gives the daemon the embedded engine's
# outputs bit for bit (and those of the model loaded after open); corrupt,
# truncated, mismatched, relative, missing, FIFO and directory paths are
# refused with their status and message, embedded and through the daemon,
# and the daemon keeps serving; a newline in a refused path is logged
# escaped.
set -u
b=${top_builddir:-.}
src=${top_srcdir:-.}
cli=$b/tests/integration/model_client
dir=$(mktemp -d "${TMPDIR:-/tmp}/dkv-learn-dmn.XXXXXX") || exit 99
pid=
cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "learn-daemon.sh: FAIL: $*"; [ -f "$dir/dlog" ] && cat "$dir/dlog"; exit 1; }

test -x "$cli" && test -x "$b/dashkv-train" || { echo "learn-daemon.sh: tools not built"; exit 99; }
"$b/dashkv-bench" capture --tokens 2048 --dim 64 --layers 2 --out "$dir/g.capt" \
	>"$dir/out" 2>&1 || fail "capture exited $?"
"$b/dashkv-train" --quiet --steps 60 "$dir/g.capt" "$dir/g.model" || fail "train exited $?"
"$b/dashkv-train" --quiet --steps 5 --bits 64 "$dir/g.capt" "$dir/g64.model" ||
	fail "train --bits 64 exited $?"
cp "$dir/g.model" "$dir/bad.model"
printf 'X' | dd of="$dir/bad.model" bs=1 seek=700 conv=notrunc 2>/dev/null
head -c 1000 "$dir/g.model" >"$dir/short.model"
mkfifo "$dir/fifo" || fail "mkfifo"

. "$src/tests/lib/dashkvd-start.sh"
start_dashkvd "$b/dashkvd" "$dir" || fail "dashkvd did not start"

# refuse ADDR FILE STATUS TEXT (DKV_E_INVAL -1, DKV_E_NOTFOUND -9)
refuse() {
	"$cli" refuse "$@" || fail "refuse $*"
}
for a in "unix:$sock" embedded; do
	refuse "$a" "$dir/bad.model" -1 "crc mismatch"
	refuse "$a" "$dir/short.model" -1 "truncated"
	refuse "$a" "$dir/g64.model" -1 "model is for 64 bits"
	refuse "$a" "$dir/fifo" -1 "not a regular file"
	refuse "$a" "$dir" -1 "not a regular file"
	refuse "$a" "$dir/missing.model" -9 "No such file"
done
# a client's path is escaped in the daemon's log: a newline in it cannot
# forge a log line
nl='
'
refuse "unix:$sock" "$dir/missing${nl}dashkvd[1]: error: forged" -9 "No such file"
grep -q '^dashkvd\[1\]: error: forged' "$dir/dlog" && fail "a client's path forged a log line"
grep -q 'missing\\ndashkvd\[1\]: error: forged' "$dir/dlog" ||
	fail "the refused path is not logged escaped"
# the daemon has its own working directory: a relative path is refused
(cd "$dir" && "$cli" refuse "unix:$sock" g.model -1 "absolute path") ||
	fail "a relative path through the daemon"
kill -0 "$pid" || fail "dashkvd died"

"$cli" same "unix:$sock" "$dir/g.model" || fail "daemon and embedded differ"
# embedded, a relative path is the caller's own
(cd "$dir" && "$cli" same embedded g.model) || fail "a relative path embedded"

kill -TERM "$pid"
wait "$pid" || fail "dashkvd exit status $?"
pid=
echo "learn-daemon.sh: OK"
