#!/bin/sh
# daemon.sh - a real dashkvd on a temporary socket: the API through
# "unix:", daemon vs embedded bit for bit, a bad config line, a refused
# user, dashkvctl status/sessions/stats/drain, and the reliability cases:
# 32 concurrent clients, garbage and truncated messages, forged ring
# descriptors, a client SIGKILLed mid-step (memory back to its level), an
# over-limit session, SIGHUP, a stopped (hung) daemon, a step past
# step_timeout and a daemon killed under a waiting client.  A bystander session ("witness") runs through the
# hostile cases and checks every output of its own against the embedded
# engine.
set -u
b=${top_builddir:-.}
dmn=$b/dashkvd
ctl=$b/dashkvctl
cli=$b/tests/integration/ipc_client
src=${top_srcdir:-.}
dir=$(mktemp -d "${TMPDIR:-/tmp}/dashkvd-test.XXXXXX") || exit 99
sock=$dir/d.sock
pid=
hold=
wit=
cleanup() {
	[ -n "$hold" ] && kill -9 "$hold" 2>/dev/null
	[ -n "$wit" ] && kill -9 "$wit" 2>/dev/null
	[ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "FAIL: $*"; [ -f "$dir/log" ] && cat "$dir/log"; exit 1; }

start() { # config [keep: leave a stale socket for the daemon to replace]
	[ "${2:-}" = keep ] || rm -f "$sock" # a daemon killed before left it behind
	n0=$(grep -c "listening on" "$dir/log" 2>/dev/null)
	"$dmn" -c "$1" -s "$sock" 2>>"$dir/log" &
	pid=$!
	i=0
	# listening once it says so (the socket file exists a little earlier)
	while [ "$(grep -c "listening on" "$dir/log")" = "${n0:-0}" ]; do
		i=$((i + 1))
		[ $i -gt 200 ] && fail "dashkvd did not start"
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

# wait_for FILE PATTERN: up to 10 s for a line in a client's output
wait_for() {
	i=0
	until grep -q "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt 200 ] && fail "no \"$2\" in $1: $(cat "$1")"
		sleep 0.05
	done
}

stat_of() { "$ctl" -s "$sock" stats | sed -n "s/^$1 //p"; }

# wait_sessions N: until the daemon serves N sessions (up to 10 s)
wait_sessions() {
	i=0
	until [ "$(stat_of sessions)" = "$1" ]; do
		i=$((i + 1))
		[ $i -gt 200 ] && fail "sessions stay at $(stat_of sessions), not $1"
		sleep 0.05
	done
}

# The daemon's shared regions: mappings and resident kB.
memfd_maps() { grep -c 'memfd:dashkv-session' "/proc/$pid/maps"; }
memfd_rss() {
	awk '/memfd:dashkv-session/ { on = 1; next } /^[0-9a-f]+-/ { on = 0 }
	     on && /^Rss:/ { kb += $2 } END { print kb + 0 }' "/proc/$pid/smaps"
}

uid=$(id -u)
printf 'allow_users %s\nlog_level debug\n' "$uid" >"$dir/ok.conf"

# the systemd unit: systemd-analyze finds nothing to say (our dashkvd in
# ExecStart, no man pages installed)
if command -v systemd-analyze >/dev/null 2>&1 && [ -f "$b/daemon/dashkvd.service" ]; then
	sed "s|^ExecStart=[^ ]*|ExecStart=$(cd "$b" && pwd)/dashkvd|" \
		"$b/daemon/dashkvd.service" >"$dir/dashkvd.service"
	systemd-analyze verify --man=no "$dir/dashkvd.service" >"$dir/verify" 2>&1 ||
		fail "systemd-analyze verify: $(cat "$dir/verify")"
	[ -s "$dir/verify" ] && fail "systemd-analyze verify: $(cat "$dir/verify")"
	grep -q '^Type=notify$' "$dir/dashkvd.service" || fail "unit: not Type=notify"
	for k in NoNewPrivileges=yes UMask=0077 RuntimeDirectory=dashkv \
		RestrictAddressFamilies=AF_UNIX 'DeviceAllow=/dev/nvidiactl rw'; do
		grep -q "^$k\$" "$dir/dashkvd.service" || fail "unit lacks $k"
	done
else
	echo "no systemd-analyze: the unit is not verified"
fi

# -t, -T and a bad line reported with file:line
"$dmn" -t -c "$dir/ok.conf" || fail "-t on a good config"
"$dmn" -T -c "$dir/ok.conf" | grep -q "^allow_users $uid\$" || fail "-T"
printf 'log_level info\nmax_sessions lots\n' >"$dir/bad.conf"
"$dmn" -t -c "$dir/bad.conf" 2>"$dir/err" && fail "-t accepted a bad config"
grep -q "bad.conf:2:" "$dir/err" || fail "no file:line in: $(cat "$dir/err")"
"$dmn" -c "$dir/bad.conf" -s "$sock" 2>/dev/null && fail "started on a bad config"
"$dmn" -V | grep -q dashkvd || fail "-V"

# shards: --plan with the configuration's spec, -t refuses a bad one
syn="pack:1 numa:1 core:4 pu:1"
printf 'allow_users %s\nshards cpu:2\n' "$uid" >"$dir/shards.conf"
"$dmn" -c "$dir/shards.conf" --plan --synthetic "$syn" >"$dir/plan" || fail "--plan"
[ "$(grep -c '^shard [01] cpu ' "$dir/plan")" -eq 2 ] || fail "--plan: $(cat "$dir/plan")"
"$dmn" --plan --synthetic "$syn" --shards cpu:4 | grep -q '^plan: 4 shards' ||
	fail "--plan --shards cpu:4"
"$dmn" --plan --bogus 2>/dev/null; [ $? -eq 2 ] || fail "--plan: bad option"
"$dmn" -t -c "$dir/shards.conf" || fail "-t on shards cpu:2"
printf 'shards bogus\n' >"$dir/badshards.conf"
"$dmn" -t -c "$dir/badshards.conf" 2>/dev/null && fail "-t accepted shards bogus"

# the socket path: anything there but a stale socket is refused and left
# as it is (a regular file, a symbolic link)
echo precious >"$sock"
"$dmn" -c "$dir/ok.conf" -s "$sock" 2>"$dir/err" && fail "started over a regular file"
grep -q "a regular file is there, not a socket" "$dir/err" || fail "regular file: $(cat "$dir/err")"
[ "$(cat "$sock")" = precious ] || fail "the regular file at the socket path changed"
rm -f "$sock"
ln -s "$dir/ok.conf" "$sock"
"$dmn" -c "$dir/ok.conf" -s "$sock" 2>"$dir/err" && fail "started over a symbolic link"
grep -q "a symbolic link is there, not a socket" "$dir/err" || fail "symlink: $(cat "$dir/err")"
[ "$(readlink "$sock")" = "$dir/ok.conf" ] || fail "the symbolic link at the socket path changed"
[ -s "$dir/ok.conf" ] || fail "the symbolic link's target changed"
rm -f "$sock"

# two daemons started at once on one path: one serves, the other stops
# and says that another daemon holds the path
"$dmn" -c "$dir/ok.conf" -s "$sock" 2>"$dir/race1" &
r1=$!
"$dmn" -c "$dir/ok.conf" -s "$sock" 2>"$dir/race2" &
r2=$!
i=0
while kill -0 "$r1" 2>/dev/null && kill -0 "$r2" 2>/dev/null; do
	i=$((i + 1))
	[ $i -gt 200 ] && { kill -9 "$r1" "$r2"; fail "two daemons serve one path"; }
	sleep 0.05
done
if kill -0 "$r1" 2>/dev/null; then pid=$r1 lost=$r2 log2=$dir/race2; else pid=$r2 lost=$r1 log2=$dir/race1; fi
wait "$lost" && fail "the second daemon on one path exited 0"
grep -q "another daemon holds it\|another daemon listens there" "$log2" ||
	fail "second daemon: $(cat "$log2")"
i=0
until "$ctl" -s "$sock" status >/dev/null 2>&1; do
	i=$((i + 1))
	[ $i -gt 200 ] && fail "the daemon that won the path does not answer"
	sleep 0.05
done
[ "$(stat -c %a "$sock")" = 660 ] || fail "socket mode $(stat -c %a "$sock"), want 660 (socket_mode)"
kill -TERM "$pid"
wait "$pid" || fail "dashkvd exit status $?"
pid=
[ -e "$sock" ] && fail "socket left behind"
echo "socket path: regular file and symbolic link refused, one daemon of two"

# a user that is not allowed
printf 'allow_users %s\n' $((uid + 12345)) >"$dir/perm.conf"
start "$dir/perm.conf"
"$cli" perm "unix:$sock" || fail "refused user"
"$ctl" -s "$sock" status 2>"$dir/err" && fail "dashkvctl of a refused user"
grep -q "not allowed" "$dir/err" || fail "dashkvctl refusal: $(cat "$dir/err")"
stop

# privilege drop: started as root with "user nobody", it serves as nobody
printf 'allow_users %s\nuser no-such-user-dkv\n' "$uid" >"$dir/nouser.conf"
"$dmn" -c "$dir/nouser.conf" -s "$sock" 2>"$dir/err" && fail "started as an unknown user"
grep -q "no such user" "$dir/err" || fail "unknown user: $(cat "$dir/err")"
if [ "$uid" -eq 0 ] && nob=$(id -u nobody 2>/dev/null); then
	chmod 0711 "$dir" && mkdir "$dir/priv" && chown nobody "$dir/priv"
	printf 'allow_users 0\nuser nobody\n' >"$dir/user.conf"
	main_sock=$sock
	sock=$dir/priv/d.sock
	start "$dir/user.conf"
	ids=$(awk '/^[UG]id:/ { printf "%s %s %s %s ", $2, $3, $4, $5 }' "/proc/$pid/status")
	[ "$ids" = "$nob $nob $nob $nob $(id -g nobody) $(id -g nobody) $(id -g nobody) $(id -g nobody) " ] ||
		fail "after the drop: $ids"
	grep -Eq '^Groups:.*(\s|^)0(\s|$)' "/proc/$pid/status" && fail "kept group 0"
	[ "$(stat -c %u "$sock")" = "$nob" ] || fail "socket not handed to nobody"
	"$cli" api "unix:$sock" || fail "api through a daemon running as nobody"
	stop
	sock=$main_sock
	echo "privilege drop: uid/gid $ids"
else
	echo "not root: the privilege drop is not tested"
fi

# two shards in the daemon: the same outputs as the embedded engine
start "$dir/shards.conf"
grep -q "2 shard(s)" "$dir/log" || fail "daemon with shards cpu:2"
"$cli" api "unix:$sock" || fail "api through a daemon of 2 shards"
stop

# a session thread that sleeps at once after a step, and one that polls
# 3 ms: the same outputs as the embedded engine
for poll in 0 3000; do
	printf 'allow_users %s\nidle_poll_us %s\n' "$uid" "$poll" >"$dir/poll.conf"
	start "$dir/poll.conf"
	"$cli" api "unix:$sock" || fail "api through a daemon with idle_poll_us $poll"
	stop
done

# GPU shards: without the GPU module -t refuses them and says why; on the
# emulated module (tests/gpu/gpu_emu.c: the CPU kernels behind the GPU
# table) the daemon serves the embedded engine's bytes
printf 'allow_users %s\nshards gpu:0\n' "$uid" >"$dir/gpu.conf"
DASHKV_CUDA_MODULE=/nonexistent/dashkv-cuda.so "$dmn" -t -c "$dir/gpu.conf" 2>"$dir/err" &&
	fail "-t accepted shards gpu:0 without a GPU module"
grep -q "GPU module" "$dir/err" || fail "gpu:0 refusal: $(cat "$dir/err")"
emu=$b/tests/gpu/.libs/dashkv-gpu-emu.so
if [ -f "$emu" ]; then
	printf 'allow_users %s\nshards gpu:0,1\n' "$uid" >"$dir/gpu.conf"
	DASHKV_CUDA_MODULE=$emu
	export DASHKV_CUDA_MODULE
	start "$dir/gpu.conf"
	unset DASHKV_CUDA_MODULE
	grep -q "2 shard(s): emulated module, 2 GPU shards" "$dir/log" ||
		fail "daemon with shards gpu:0,1"
	"$cli" api "unix:$sock" || fail "api through a daemon of 2 emulated GPU shards"
	stop
else
	echo "no emulated GPU module: the daemon's GPU shards are not tested"
fi

start "$dir/ok.conf"
"$cli" api "unix:$sock" || fail "api through the daemon"

$ctl -s "$sock" status >"$dir/status" || fail "dashkvctl status"
grep -q "^sessions [01] of 64 (1 since start)" "$dir/status" || fail "status: $(cat "$dir/status")"
"$ctl" -s "$sock" bogus 2>/dev/null; [ $? -eq 2 ] || fail "dashkvctl: bad command"

# the bystander: a session that lives through everything below
"$cli" witness "unix:$sock" "$dir/witness.stop" >"$dir/witness.out" &
wit=$!
wait_for "$dir/witness.out" ready
wait_sessions 1
"$ctl" -s "$sock" sessions >"$dir/sessions" || fail "dashkvctl sessions"
sed -n 2p "$dir/sessions" | grep -Eq "^[0-9]+ +$uid/$wit +1 +[1-9][0-9]* +[1-9][0-9]* +[0-9]+ +0 " ||
	fail "sessions: $(cat "$dir/sessions")"
[ "$(wc -l <"$dir/sessions")" -eq 2 ] || fail "sessions: $(cat "$dir/sessions")"

# 32 clients at once, each bit for bit against its own embedded run
"$cli" many "unix:$sock" 32 || fail "32 concurrent clients"
wait_sessions 1

# garbage and truncated messages on the socket (python3)
py=python3
command -v python3 >/dev/null 2>&1 || { echo "no python3: garbage, forged descriptors not tested"; py=:; }
before=$(stat_of rejected_message)
$py - "$sock" <<'PY' || fail "garbage client"
import socket, struct, sys, os
HDR = struct.Struct("<IHHII")
hello = HDR.pack(0x564B4444, 1, 1, 16, 1) + struct.pack("<IIQ", 1, 0, 1 << 20)
junk = [b"\0" * 16, os.urandom(4000), b"DDKV" + b"\xff" * 60,
        HDR.pack(0x564B4444, 1, 1, 4096, 1),           # payload size lies
        HDR.pack(0x564B4444, 9, 1, 16, 1) + bytes(16),  # protocol version
        HDR.pack(0x564B4444, 1, 99, 0, 1)]              # unknown type
for j in junk:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(j)
    s.settimeout(5)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
# truncated: half a header, a header without its payload, then close
for j in [hello[:7], hello[:16], hello[:20]]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(j)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    s.recv(4096)   # the daemon hangs up, or answers an error
    s.close()
# after a good hello: a truncated request, then garbage
for j in [HDR.pack(0x564B4444, 1, 3, 136, 2) + bytes(10), os.urandom(300)]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(hello)
    s.recv(4096)
    s.sendall(j)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(5)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
PY
kill -0 "$pid" || fail "dashkvd died of garbage"
[ $py = : ] || [ "$(stat_of rejected_message)" -ge $((before + 5)) ] ||
	fail "garbage not counted: $(stat_of rejected_message)"

# hostile shared memory: forged descriptors, ring indices (python3.9+)
if [ $py != : ] && python3 -c 'import socket; socket.recv_fds' 2>/dev/null; then
	before=$(stat_of rejected_descriptor)
	python3 "$src/tests/integration/ipc_hostile.py" "$sock" || fail "hostile client"
	kill -0 "$pid" || fail "dashkvd died of a hostile client"
	[ "$(stat_of rejected_descriptor)" -ge $((before + 11)) ] ||
		fail "forged descriptors not counted"
	[ "$(stat_of rejected_input)" -ge 1 ] || fail "NaN step not counted"
	[ "$(stat_of dropped)" -gt 0 ] || fail "dropped entries not counted"
else
	echo "python3 without socket.recv_fds: forged descriptors not tested"
fi

# an impostor's shared region (tests/integration/fake_daemon.py): the
# client maps a memfd sealed as dashkvd seals it, and refuses one that
# could still shrink under its mapping, or a pipe (python3.9+)
if [ $py != : ] && python3 -c 'import os, socket; socket.send_fds; os.memfd_create' 2>/dev/null; then
	for k in sealed:0: unsealed:-7:"not sealed against resizing" pipe:-7:"not a regular file"; do
		kind=${k%%:*} rest=${k#*:}
		code=${rest%%:*} text=${rest#*:}
		: >"$dir/fake.out"
		python3 "$src/tests/integration/fake_daemon.py" "$dir/fake-$kind.sock" "$kind" \
			>"$dir/fake.out" &
		fk=$!
		wait_for "$dir/fake.out" ready
		"$cli" connect "unix:$dir/fake-$kind.sock" "$code" "$text" ||
			{ kill "$fk"; fail "an impostor's $kind region"; }
		wait "$fk" || fail "fake_daemon.py $kind exited $?"
	done
	echo "impostor's region: sealed memfd mapped, unsealed memfd and pipe refused"
else
	echo "python3 without socket.send_fds or os.memfd_create: the region's seals not tested"
fi
wait_sessions 1

# a client killed with SIGKILL mid-step: memory back to its level
bytes0=$(stat_of bytes_used)
region0=$(stat_of region_bytes)
maps0=$(memfd_maps)
rss0=$(memfd_rss)
"$cli" busy "unix:$sock" >"$dir/busy.out" &
hold=$!
wait_for "$dir/busy.out" ready
sleep 0.3
[ "$(stat_of region_bytes)" -gt "$region0" ] || fail "busy client has no region"
kill -9 "$hold"
wait "$hold" 2>/dev/null
hold=
wait_sessions 1
kill -0 "$pid" || fail "dashkvd died with its client"
[ "$(stat_of bytes_used)" = "$bytes0" ] || fail "bytes_used $(stat_of bytes_used), was $bytes0"
[ "$(stat_of region_bytes)" = "$region0" ] || fail "region_bytes $(stat_of region_bytes), was $region0"
[ "$(memfd_maps)" = "$maps0" ] || fail "memfd mappings $(memfd_maps), were $maps0"
[ "$(memfd_rss)" -le "$rss0" ] || fail "memfd RSS $(memfd_rss) kB, was $rss0 kB"
echo "SIGKILL mid-step: bytes_used $bytes0, region_bytes $region0, memfd maps $maps0, RSS $rss0 kB, all back"

# reload: a reloadable setting changes, the witness keeps its session
printf 'allow_users %s\nlog_level debug\nmax_sessions 50\n' "$uid" >"$dir/ok.conf"
kill -HUP "$pid"
i=0
until [ "$(stat_of max_sessions)" = 50 ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && fail "SIGHUP: max_sessions stays $(stat_of max_sessions)"
	sleep 0.05
done
grep -q "configuration reloaded" "$dir/log" || fail "SIGHUP reload not logged"
printf 'allow_users %s\nmax_sessions nope\n' "$uid" >"$dir/ok2.conf"
"$cli" api "unix:$sock" || fail "api after reload"
[ -n "${DASHKV_IPC_LATENCY:-}" ] && "$cli" lat "unix:$sock"

# dashkv-bench ipc on this daemon (JSON) and on one of its own
bench=$b/dashkv-bench
"$bench" ipc --connect "unix:$sock" --reps 200 --heads 8 --kv-heads 2 --json \
	>"$dir/bench.json" || fail "dashkv-bench ipc --connect"
$py -c '
import json, sys
d = json.load(open(sys.argv[1]))
rows = {r["step"]: r for r in d["rows"]}
assert set(rows) == {"1 query", "empty", "empty,futex"}, rows
for r in rows.values():
    assert 0 < r["daemon_median_us"] <= r["daemon_p90_us"], r
    assert 0 < r["embedded_median_us"] <= r["embedded_p90_us"], r
    assert r["daemon_calls_s"] > 0 and r["embedded_calls_s"] > 0, r
' "$dir/bench.json" || fail "dashkv-bench ipc JSON: $(cat "$dir/bench.json")"
"$bench" ipc --reps 100 --heads 8 --kv-heads 2 >"$dir/bench.out" ||
	fail "dashkv-bench ipc with its own daemon: $(cat "$dir/bench.out")"
grep -q "^empty " "$dir/bench.out" || fail "dashkv-bench ipc: $(cat "$dir/bench.out")"
"$bench" ipc --connect tcp:1 2>/dev/null; [ $? -eq 2 ] || fail "dashkv-bench ipc: bad address"

# the witness saw every one of its outputs equal to the embedded engine's
touch "$dir/witness.stop"
wait "$wit" || fail "witness: $(cat "$dir/witness.out")"
wit=
cat "$dir/witness.out"
"$ctl" -s "$sock" stats | grep '^rejected_' | tr '\n' ' '
echo
stop

# the per-session memory limit
printf 'allow_users %s\nsession_memory_limit 1M\n' "$uid" >"$dir/limit.conf"
start "$dir/limit.conf"
"$cli" limit "unix:$sock" || fail "session memory limit"
[ "$(stat_of rejected_nospace)" -ge 1 ] || fail "over-limit step not counted"
stop

# max_sessions 1: a second session is refused, dashkvctl still answers
printf 'allow_users %s\nmax_sessions 1\n' "$uid" >"$dir/one.conf"
start "$dir/one.conf"
: >"$dir/hold.out" # truncated here, not later in the child: wait_for must not see an old "ready"
"$cli" hold "unix:$sock" >>"$dir/hold.out" &
hold=$!
wait_for "$dir/hold.out" ready
"$cli" api "unix:$sock" 2>"$dir/err" && fail "a session beyond max_sessions"
grep -q "too many sessions" "$dir/err" || fail "beyond max_sessions: $(cat "$dir/err")"
[ "$(stat_of sessions)" = 1 ] || fail "sessions $(stat_of sessions) with max_sessions 1"
[ "$(stat_of rejected_busy)" -ge 1 ] || fail "refused session not counted"
kill -9 "$hold"
wait "$hold" 2>/dev/null
hold=
wait_sessions 0
"$cli" api "unix:$sock" || fail "api once the slot is free"
stop

# drain: no new sessions, exit once the last one ends; another allowed
# user may look but not drain
printf 'allow_users %s,nobody\n' "$uid" >"$dir/drain.conf"
start "$dir/drain.conf"
if [ "$uid" -eq 0 ] && command -v setpriv >/dev/null 2>&1 && nob=$(id -u nobody 2>/dev/null); then
	chmod 0711 "$dir" && chmod 0666 "$sock"
	setpriv --reuid "$nob" --regid "$nob" --clear-groups "$ctl" -s "$sock" status >/dev/null ||
		fail "dashkvctl status as nobody"
	setpriv --reuid "$nob" --regid "$nob" --clear-groups "$ctl" -s "$sock" drain 2>"$dir/err" &&
		fail "nobody drained the daemon"
	grep -q "only root" "$dir/err" || fail "drain as nobody: $(cat "$dir/err")"
	[ "$(stat_of draining)" = no ] || fail "draining after a refused drain"
fi
: >"$dir/hold.out" # truncated here, not later in the child: wait_for must not see an old "ready"
"$cli" hold "unix:$sock" >>"$dir/hold.out" &
hold=$!
wait_for "$dir/hold.out" ready
"$ctl" -s "$sock" drain | grep -q draining || fail "dashkvctl drain"
[ "$(stat_of draining)" = yes ] || fail "stats: not draining"
"$cli" api "unix:$sock" 2>/dev/null && fail "a new session while draining"
kill -0 "$pid" || fail "dashkvd exited before its last session"
kill -9 "$hold"
wait "$hold" 2>/dev/null
hold=
i=0
while kill -0 "$pid" 2>/dev/null; do
	i=$((i + 1))
	[ $i -gt 200 ] && fail "dashkvd did not exit after draining"
	sleep 0.05
done
wait "$pid" || fail "exit status $? after draining"
pid=
[ -e "$sock" ] && fail "socket left behind after draining"

# a hung daemon (SIGSTOP) under a waiting client: DKV_E_TIMEOUT in bounded
# time; once continued it serves again
start "$dir/ok.conf"
"$cli" hung "unix:$sock" "$pid" || fail "client of a hung daemon"
kill -CONT "$pid"
"$cli" api "unix:$sock" || fail "api after the daemon was continued"
stop

# a step past step_timeout: the test knob DASHKVD_TEST_STALL (dashkvd(8))
# stalls every step on layer 2 for 4 s, step_timeout is 1 s.  The client
# gets DKV_E_TIMEOUT in [1, 3) s, then DKV_E_DISCONNECTED on every call;
# its session ends with the step and gives its memory back; a bystander
# session steps through it all, bit for bit.  A bad knob stops the start.
printf 'allow_users %s\nstep_timeout 1\n' "$uid" >"$dir/stall.conf"
for bad in bogus 2:0 -1:5 2: :5 2:5x 4096:5 2:600001; do
	DASHKVD_TEST_STALL=$bad "$dmn" -c "$dir/stall.conf" -s "$sock" 2>"$dir/err" &&
		fail "started with DASHKVD_TEST_STALL=$bad"
	grep -q "DASHKVD_TEST_STALL=$bad: want LAYER:MS" "$dir/err" ||
		fail "DASHKVD_TEST_STALL=$bad: $(cat "$dir/err")"
done
export DASHKVD_TEST_STALL=2:4000
start "$dir/stall.conf"
unset DASHKVD_TEST_STALL
grep -q "test knob DASHKVD_TEST_STALL: every step on layer 2" "$dir/log" ||
	fail "the test knob is not logged"
rm -f "$dir/witness.stop"
: >"$dir/witness.out"
DASHKV_IPC_TIMEOUT_MS=1500 "$cli" witness "unix:$sock" "$dir/witness.stop" >>"$dir/witness.out" &
wit=$!
wait_for "$dir/witness.out" ready
wait_sessions 1
bytes0=$(stat_of bytes_used)
: >"$dir/hold.out"
DASHKV_IPC_TIMEOUT_MS=500 "$cli" stall "unix:$sock" 2 "$dir/stall.go" >>"$dir/hold.out" &
hold=$!
wait_for "$dir/hold.out" "given up"
# the client still holds its handle: the daemon ends the session anyway,
# once the stalled step returns, and its memory comes back
wait_sessions 1
[ "$(stat_of bytes_used)" = "$bytes0" ] || fail "bytes_used $(stat_of bytes_used) after the stall, was $bytes0"
touch "$dir/stall.go"
wait "$hold" || fail "a step past step_timeout: $(cat "$dir/hold.out")"
hold=
cat "$dir/hold.out"
kill -0 "$pid" || fail "dashkvd died with a stalled step"
grep -q "a step on layer 2 ran [0-9]* ms, past step_timeout" "$dir/log" ||
	fail "the overlong step is not logged"
touch "$dir/witness.stop"
wait "$wit" || fail "witness beside a stalled step: $(cat "$dir/witness.out")"
wit=
cat "$dir/witness.out"
stop

# the daemon killed under a waiting client, and before a call
start "$dir/ok.conf"
"$cli" killwait "unix:$sock" "$pid" || fail "client of a daemon killed mid-step"
wait "$pid" 2>/dev/null
pid=
[ -S "$sock" ] || fail "a killed daemon left no socket to replace"
start "$dir/ok.conf" keep # its stale socket is replaced
"$cli" dead "unix:$sock" "$pid" || fail "client of a dead daemon"
wait "$pid" 2>/dev/null
pid=
echo "PASS"
