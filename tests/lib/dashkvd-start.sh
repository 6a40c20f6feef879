# dashkvd-start.sh - sourced by the tests and the main job: start a dashkvd
# for the current user on a private socket and wait until it listens.
#
#   start_dashkvd DASHKVD DIR    config DIR/d.conf (allow_users: this
#                                user, plus any lines in $DASHKVD_CONF),
#                                socket DIR/d.sock, log DIR/dlog; sets
#                                $pid and $sock; returns 1 (log on stderr)
#                                when the daemon exits or does not say it
#                                listens within 10 s (log_level info or
#                                more, the default)
start_dashkvd() {
	sock=$2/d.sock
	printf 'allow_users %s\n%s' "$(id -u)" "${DASHKVD_CONF:-}" >"$2/d.conf"
	: >>"$2/dlog"
	_n0=$(grep -c "listening on" "$2/dlog")
	"$1" -c "$2/d.conf" -s "$sock" 2>>"$2/dlog" &
	pid=$!
	_i=0
	# listening once it says so: the socket file exists a little earlier
	while [ "$(grep -c "listening on" "$2/dlog")" = "$_n0" ]; do
		_i=$((_i + 1))
		if [ $_i -gt 200 ] || ! kill -0 "$pid" 2>/dev/null; then
			echo "dashkvd did not start:" >&2
			cat "$2/dlog" >&2
			return 1
		fi
		sleep 0.05
	done
	return 0
}
