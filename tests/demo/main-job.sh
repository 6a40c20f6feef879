#!/bin/sh
# main-job.sh - the README's main job (make demo): start dashkvd on a
# private socket, attach the demo client through libdashkv-client to serve
# a long context next to exact attention, run the stories260K model with
# every layer's attention served by the daemon, show the daemon's status,
# and stop it.
#
# Environment: DEMO_TOKENS (context of the demo client, 262144),
# DASHKV_TEST_DATA (the shared data folder, ../shared/data).
set -u
b=${top_builddir:-.}
s=${top_srcdir:-.}
data=${DASHKV_TEST_DATA:-$s/../shared/data}
model=$data/models/stories260K.gguf
dir=$(mktemp -d "${TMPDIR:-/tmp}/dashkv-demo.XXXXXX") || exit 1
sock=$dir/d.sock
pid=
cleanup() {
	[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
say() { printf '\n== %s\n' "$*"; }

say "starting dashkvd on $sock"
. "$s/tests/lib/dashkvd-start.sh"
DASHKVD_CONF='log_level info
' start_dashkvd "$b/dashkvd" "$dir" || exit 1
"$b/dashkvctl" -s "$sock" status || exit 1

say "demo client: ${DEMO_TOKENS:-262144}-token context through dashkvd"
"$b/dashkv-demo" --address "unix:$sock" --tokens "${DEMO_TOKENS:-262144}" || exit 1

if [ -r "$model" ]; then
	say "stories260K, every layer's attention served by dashkvd"
	"$b/tests/model/stories" --model "$model" --connect "unix:$sock" \
		--mode exact --tokens 120 || exit 1
	say "stories260K: DASH-KV (top_k 16, window 16, candidates 64) against exact, 400 tokens"
	"$b/tests/model/stories" --model "$model" --connect "unix:$sock" \
		--compare --quiet --top-k 16 --window 16 --candidates 64 --tokens 400 || exit 1
else
	say "stories260K skipped: no $model (set DASHKV_TEST_DATA)"
fi

say "dashkvd after the run"
"$b/dashkvctl" -s "$sock" status || exit 1
kill -TERM "$pid" && wait "$pid"
rc=$?
pid=
echo "dashkvd stopped (exit status $rc); its log:"
cat "$dir/dlog"
exit $rc
