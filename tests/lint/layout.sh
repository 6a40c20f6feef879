#!/bin/sh
# layout.sh - the source tree keeps the shape the layout promises:
#   - no C or CUDA source under kernels/, shard/, runtime/ or daemon/ longer
#     than 1,000 lines;
#   - no function there longer than 80 lines (from its opening brace at
#     the start of a line to its closing one);
#   - no include cycle between modules (a module is a source file, the
#     header of the same name beside it and, for a module written in
#     several files, its internal header NAME_int.h): each quoted #include is resolved
#     as the compiler does (the including file's folder, then include/,
#     kernels/, shard/, runtime/) and the module graph goes through tsort(1),
#     which names every loop;
#   - one message-buffer length (KRN_MSGLEN) and one formatting helper
#     (krn_msgf), both in kernels/msg.h: no other *ERRLEN or *MSGLEN
#     constant, no vsnprintf in a source but the daemon's log.
# Run by hand: sh tests/lint/layout.sh (from the source tree).
set -u
: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$top_srcdir" || exit 99
dirs="kernels shard runtime daemon"
status=0
fail() { echo "FAIL: $*"; status=1; }

srcs=$(find $dirs -name '*.c' -o -name '*.cu' | sort)
heads=$(find $dirs -name '*.h' -o -name '*.cuh' | sort)
[ -n "$srcs" ] || { echo "no sources under $top"; exit 99; }

# file length
for f in $srcs; do
	n=$(wc -l <"$f")
	[ "$n" -le 1000 ] || fail "$f has $n lines (at most 1000)"
done
echo "file lengths checked: $(echo "$srcs" | wc -l) sources"

# function length
long=$(awk '
	FNR == 1 { start = 0 }
	/^[A-Za-z_].*\(/ { sig = $0 }
	/^\{/ { start = FNR; name = sig }
	/^\}/ && start {
		len = FNR - start + 1
		if (len > 80) printf "%s:%d: %d lines: %s\n", FILENAME, start, len, name
		start = 0
	}' $srcs $heads)
[ -z "$long" ] || fail "functions longer than 80 lines:
$long"
echo "function lengths checked"

# include graph between modules
edges=$(for f in $srcs $heads; do
	d=$(dirname "$f")
	m=${f%.*}
	m=${m%_int}
	sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" |
	while read -r inc; do
		for p in "$d" include kernels shard runtime; do
			if [ -f "$p/$inc" ]; then
				t=$(cd "$(dirname "$p/$inc")" && pwd -P)/$(basename "$inc")
				t=${t#"$(pwd -P)/"}
				t=${t%.*}
				t=${t%_int}
				[ "$t" = "$m" ] || echo "$m $t"
				break
			fi
		done
	done
done | sort -u)
[ -n "$edges" ] || fail "no include edges found"
loops=$(echo "$edges" | tsort 2>&1 >/dev/null)
[ -z "$loops" ] || fail "include cycles between modules:
$loops"
echo "include graph checked: $(echo "$edges" | wc -l) edges between modules"

# one message length, one formatting helper
other=$(grep -rnE '#define[[:space:]]+[A-Z_]*(ERRLEN|MSGLEN)\b' $dirs include |
	grep -v '^kernels/msg\.h:.*KRN_MSGLEN')
[ -z "$other" ] || fail "message-buffer lengths other than KRN_MSGLEN:
$other"
grep -qE '#define[[:space:]]+KRN_MSGLEN\b' kernels/msg.h 2>/dev/null ||
	fail "kernels/msg.h does not define KRN_MSGLEN"
grep -q 'krn_msgf' kernels/msg.h 2>/dev/null ||
	fail "kernels/msg.h has no krn_msgf"
fmt=$(grep -n 'vsnprintf' $srcs | grep -v '^daemon/log\.c:')
[ -z "$fmt" ] || fail "message formatting outside krn_msgf:
$fmt"
echo "message convention checked"
exit $status
