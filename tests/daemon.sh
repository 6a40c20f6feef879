#!/bin/sh
# daemon.sh - a real dashkvd on a temporary socket: the API through
# "unix:", daemon vs embedded bit for bit, a bad config line, a refused
# user, garbage on the socket, a client killed mid-session, SIGHUP, and a
# daemon killed under a client (DKV_E_DISCONNECTED within 2 s).
set -u
b=${top_builddir:-.}
dmn=$b/dashkvd
cli=$b/tests/ipc_client
dir=$(mktemp -d "${TMPDIR:-/tmp}/dashkvd-test.XXXXXX") || exit 99
sock=$dir/d.sock
pid=
hold=
cleanup() {
	[ -n "$hold" ] && kill -9 "$hold" 2>/dev/null
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "FAIL: $*"; [ -f "$dir/log" ] && cat "$dir/log"; exit 1; }

start() { # config
	"$dmn" -c "$1" -s "$sock" 2>>"$dir/log" &
	pid=$!
	i=0
	while [ ! -S "$sock" ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "dashkvd did not start"
		kill -0 "$pid" 2>/dev/null || fail "dashkvd exited"
		sleep 0.05
	done
}

stop() {
	kill -TERM "$pid"
	wait "$pid" || fail "dashkvd exit status $?"
	pid=
	[ -e "$sock" ] && fail "socket left behind"
}

uid=$(id -u)
printf 'allow_users %s\nlog_level debug\n' "$uid" >"$dir/ok.conf"

# -t, -T and a bad line reported with file:line
"$dmn" -t -c "$dir/ok.conf" || fail "-t on a good config"
"$dmn" -T -c "$dir/ok.conf" | grep -q "^allow_users $uid\$" || fail "-T"
printf 'log_level info\nmax_sessions lots\n' >"$dir/bad.conf"
"$dmn" -t -c "$dir/bad.conf" 2>"$dir/err" && fail "-t accepted a bad config"
grep -q "bad.conf:2:" "$dir/err" || fail "no file:line in: $(cat "$dir/err")"
"$dmn" -c "$dir/bad.conf" -s "$sock" 2>/dev/null && fail "started on a bad config"
"$dmn" -V | grep -q dashkvd || fail "-V"

# a user that is not allowed
printf 'allow_users %s\n' $((uid + 12345)) >"$dir/perm.conf"
start "$dir/perm.conf"
"$cli" perm "unix:$sock" || fail "refused user"
stop

start "$dir/ok.conf"
"$cli" api "unix:$sock" || fail "api through the daemon"

$b/dashkvctl -s "$sock" status >"$dir/status" || fail "dashkvctl status"
grep -q "^sessions [01] of 64 (1 since start)" "$dir/status" || fail "status: $(cat "$dir/status")"
rejects() { $b/dashkvctl -s "$sock" status | sed -n 's/^rejected \([0-9]*\) .*/\1/p'; }
before=$(rejects)

# garbage bytes on the socket
if command -v python3 >/dev/null 2>&1; then
	python3 - "$sock" <<'PY' || fail "garbage client"
import socket, sys, os
for junk in [b"\0" * 16, os.urandom(4000), b"DDKV" + b"\xff" * 60, b""]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        s.sendall(junk)
        s.settimeout(3)
        s.recv(4096)
    except OSError:
        pass
    s.close()
PY
fi
kill -0 "$pid" || fail "dashkvd died of garbage"
# hostile shared memory (python3.9+ for socket.recv_fds)
if python3 -c 'import socket; socket.recv_fds' 2>/dev/null; then
	python3 "${top_srcdir:-.}/tests/ipc_hostile.py" "$sock" || fail "hostile client"
	kill -0 "$pid" || fail "dashkvd died of a hostile client"
fi
[ "$(rejects)" -gt "$before" ] || fail "garbage not counted"

# a client killed with SIGKILL mid-session
"$cli" hold "unix:$sock" >"$dir/hold.out" &
hold=$!
i=0
until grep -q ready "$dir/hold.out" 2>/dev/null; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail "hold client not ready"
	sleep 0.05
done
kill -9 "$hold"
wait "$hold" 2>/dev/null
hold=
sleep 0.2
kill -0 "$pid" || fail "dashkvd died with its client"
grep -q "session of pid .* ended" "$dir/log" || fail "dead client not noticed"

# reload, then the API still works
kill -HUP "$pid"
sleep 0.3
grep -q "configuration reloaded" "$dir/log" || fail "SIGHUP reload"
"$cli" api "unix:$sock" || fail "api after reload"
[ -n "${DASHKV_IPC_LATENCY:-}" ] && "$cli" lat "unix:$sock"
stop

# the per-session memory limit
printf 'allow_users %s\nsession_memory_limit 1M\n' "$uid" >"$dir/limit.conf"
start "$dir/limit.conf"
"$cli" limit "unix:$sock" || fail "session memory limit"
stop

# the daemon dies under a client
start "$dir/ok.conf"
"$cli" dead "unix:$sock" "$pid" || fail "client of a dead daemon"
wait "$pid" 2>/dev/null
pid=
echo "PASS"
