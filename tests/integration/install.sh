#!/bin/sh
# install.sh - make install into a DESTDIR, then use the installed copy as
# an integrator would: build a C and a C++ program with pkg-config against
# the installed header and library, run them embedded and against the
# installed dashkvd; check the library's SONAME and exports, the man pages,
# the unit file, the sample configuration, and --with-systemdsystemunitdir.
set -u
b=${top_builddir:-.}
src=${top_srcdir:-.}
dir=$(mktemp -d "${TMPDIR:-/tmp}/dashkv-install.XXXXXX") || exit 99
dest=$dir/dest
pid=
cleanup() {
	[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() { echo "FAIL: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

for t in pkg-config cc nm objdump; do
	have $t || { echo "SKIP: $t not found"; exit 77; }
done

# the configured directories, from the build tree's Makefile
mkvar() { sed -n "s/^$1 = //p" "$b/Makefile" | head -n 1; }
for v in prefix exec_prefix datarootdir bindir sbindir libdir includedir \
	sysconfdir mandir systemdsystemunitdir PACKAGE_VERSION; do
	eval "$v=\"$(mkvar $v)\""
done
[ -n "$prefix" ] && [ -n "$libdir" ] || fail "no prefix/libdir in $b/Makefile"

# a make of our own: not the parent's jobserver or command-line variables
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL ${MAKE:-make} -s -C "$b" install \
	DESTDIR="$dest" >"$dir/install.log" 2>&1 || {
	cat "$dir/install.log"
	fail "make install DESTDIR=$dest"
}
echo "installed into $dest$prefix"

# files an operator and an integrator need
for f in "$bindir/dashkvctl" "$bindir/dashkv-bench" "$bindir/dashkv-plan" \
	"$sbindir/dashkvd" "$includedir/dashkv.h" "$libdir/pkgconfig/dashkv-client.pc" \
	"$systemdsystemunitdir/dashkvd.service" "$sysconfdir/dashkv/dashkv.conf" \
	"$mandir/man3/libdashkv-client.3" "$mandir/man7/dashkv.7" \
	"$mandir/man8/dashkvd.8" "$mandir/man8/dashkvctl.8" \
	"$mandir/man5/dashkv.conf.5" "$mandir/man1/dashkv-bench.1"; do
	[ -s "$dest$f" ] || fail "not installed: $f"
done
# one page per function of the installed header
funcs=$(sed -n 's/^[a-z].*[ *]\(dkv_[a-z_0-9]*\)(.*/\1/p' "$dest$includedir/dashkv.h" | sort -u)
[ -n "$funcs" ] || fail "no functions found in the installed dashkv.h"
for fn in $funcs; do
	[ -s "$dest$mandir/man3/$fn.3" ] || fail "no installed man page for $fn"
done
echo "man pages: $(echo $funcs | wc -w) functions, each with its page"

# the unit names the installed daemon and configuration
unit=$dest$systemdsystemunitdir/dashkvd.service
grep -q "^ExecStart=$sbindir/dashkvd .*-c $sysconfdir/dashkv/dashkv.conf" "$unit" ||
	fail "unit ExecStart: $(grep ExecStart "$unit")"
"$dest$sbindir/dashkvd" -t -c "$dest$sysconfdir/dashkv/dashkv.conf" ||
	fail "the installed dashkvd rejects the installed sample configuration"

# the library: SONAME, a versioned symlink, nothing but dkv_* exported
lib=$(ls "$dest$libdir"/libdashkv-client.so.*.*.* 2>/dev/null | head -n 1)
[ -n "$lib" ] || fail "no libdashkv-client.so.X.Y.Z in $dest$libdir"
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
echo "$soname" | grep -Eq '^libdashkv-client\.so\.[0-9]+$' || fail "SONAME '$soname'"
[ -e "$dest$libdir/$soname" ] || fail "no $soname link in $libdir"
nm -D --defined-only "$lib" | awk '$2 != "A" { print $3 }' | sed 's/@.*//' |
	sort -u >"$dir/exports"
grep -v '^dkv_' "$dir/exports" >"$dir/stray" && fail "exported beyond dkv_*: $(cat "$dir/stray")"
for fn in $funcs; do
	grep -qx "$fn" "$dir/exports" || fail "$fn not exported"
done
echo "library: SONAME $soname, $(wc -l <"$dir/exports") symbols, all dkv_*"

# pkg-config against the installed copy
export PKG_CONFIG_PATH="$dest$libdir/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$dest"
export PKG_CONFIG_ALLOW_SYSTEM_CFLAGS=1 PKG_CONFIG_ALLOW_SYSTEM_LIBS=1
[ "$(pkg-config --modversion dashkv-client)" = "$PACKAGE_VERSION" ] ||
	fail "pkg-config --modversion: $(pkg-config --modversion dashkv-client)"
flags=$(pkg-config --cflags --libs dashkv-client) || fail "pkg-config --cflags --libs"
echo "pkg-config: $flags"

# A small client, valid C and C++: one exact step whose output it checks
# against its own softmax, an error path, the stored length.
cat >"$dir/app.c" <<'C'
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <dashkv.h>

#define T 3
#define D 8

int main(int argc, char **argv)
{
	const char *addr = argc > 1 ? argv[1] : "embedded";
	float q[2][D], k[T][D], v[T][D], out[2][D];
	dkv_client *c = NULL;
	dkv_seq *s = NULL;
	dkv_seq_config cfg;
	uint64_t len = 0;
	int rc, bad = 0;

	for (int d = 0; d < D; d++) {
		q[0][d] = 0.5f * (float)(d % 3) - 0.4f;
		q[1][d] = (d & 1) ? 0.7f : -0.3f;
		for (int t = 0; t < T; t++) {
			k[t][d] = 0.25f * (float)((t + 1) * (d % 4)) - 0.5f;
			v[t][d] = (float)t + 0.125f * (float)d;
		}
	}
	if ((rc = dkv_connect(addr, &c)) != DKV_OK) {
		fprintf(stderr, "dkv_connect(%s): %s\n", addr, dkv_strerror(rc));
		return 1;
	}
	dkv_seq_config_init(&cfg);
	cfg.n_layers = 1;
	cfg.n_q_heads = 2;
	cfg.n_kv_heads = 1;
	cfg.head_dim = D;
	cfg.dtype = DKV_F32;
	cfg.exact = 1;
	if ((rc = dkv_seq_open(c, &cfg, &s)) != DKV_OK ||
	    (rc = dkv_step(s, 0, q, 1, k, v, T, out)) != DKV_OK) {
		fprintf(stderr, "open/step: %s: %s\n", dkv_strerror(rc), dkv_errmsg(c));
		return 1;
	}
	for (int h = 0; h < 2; h++) {
		float l[T], m = -INFINITY, z = 0.0f;
		for (int t = 0; t < T; t++) {
			l[t] = 0.0f;
			for (int d = 0; d < D; d++)
				l[t] += q[h][d] * k[t][d];
			l[t] /= sqrtf((float)D);
			m = l[t] > m ? l[t] : m;
		}
		for (int t = 0; t < T; t++)
			z += expf(l[t] - m);
		for (int d = 0; d < D; d++) {
			float o = 0.0f;
			for (int t = 0; t < T; t++)
				o += expf(l[t] - m) / z * v[t][d];
			if (fabsf(o - out[h][d]) > 1e-5f) {
				fprintf(stderr, "head %d dim %d: %g, expected %g\n", h, d,
					(double)out[h][d], (double)o);
				bad = 1;
			}
		}
	}
	if (dkv_step(s, 7, q, 1, k, v, 1, out) != DKV_E_INVAL || !*dkv_errmsg(c)) {
		fprintf(stderr, "layer 7 of 1 was not refused with a message\n");
		bad = 1;
	}
	if (dkv_seq_length(s, 0, &len) != DKV_OK || len != T) {
		fprintf(stderr, "length %llu, expected %d\n", (unsigned long long)len, T);
		bad = 1;
	}
	dkv_seq_close(s);
	dkv_disconnect(c);
	if (!bad)
		printf("%s: ok through %s\n", argv[0], addr);
	return bad;
}
C
# shellcheck disable=SC2086
cc -std=c99 -Wall -Wextra -Werror -o "$dir/app-c" "$dir/app.c" $flags -lm ||
	fail "C program against the installed copy"
bins=$dir/app-c
if have g++; then
	# shellcheck disable=SC2086
	g++ -x c++ -Wall -Wextra -Werror -o "$dir/app-cxx" "$dir/app.c" $flags ||
		fail "C++ program against the installed copy"
	bins="$bins $dir/app-cxx"
else
	echo "note: g++ not found, the C++ half is skipped"
fi

export LD_LIBRARY_PATH="$dest$libdir"
for app in $bins; do
	ldd "$app" 2>/dev/null | grep -q "=> $dest$libdir/$soname" ||
		fail "$app does not load the installed library: $(ldd "$app" | grep dashkv)"
	"$app" embedded || fail "$app embedded"
done

# the installed daemon
. "$src/tests/lib/dashkvd-start.sh"
start_dashkvd "$dest$sbindir/dashkvd" "$dir" || fail "the installed dashkvd did not start"
for app in $bins; do
	"$app" "unix:$sock" || fail "$app through the installed dashkvd"
done
"$dest$bindir/dashkvctl" -s "$sock" status >/dev/null || fail "installed dashkvctl status"
kill -TERM "$pid"
wait "$pid" || fail "dashkvd exit status $?"
pid=

# --with-systemdsystemunitdir (and --prefix) in a fresh configure; a source
# tree configured in place takes no second, out-of-tree configure, so
# there the out-of-tree builds (make distcheck, CI's other builds) check it
if [ -f "$src/config.status" ]; then
	echo "--with-systemdsystemunitdir: not checked (the source tree is configured in place)"
else
	mkdir "$dir/uc" && cd "$dir/uc" || exit 99
	"$src/configure" -q --prefix=/opt/dkv-test --with-systemdsystemunitdir=/opt/dkv-units \
		>"$dir/uc.log" 2>&1 || { cat "$dir/uc.log"; fail "configure --with-systemdsystemunitdir"; }
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL ${MAKE:-make} -s install-systemdsystemunitDATA \
		DESTDIR="$dir/uc-dest" >>"$dir/uc.log" 2>&1 || { cat "$dir/uc.log"; fail "unit install"; }
	grep -q '^ExecStart=/opt/dkv-test/sbin/dashkvd .*-c /opt/dkv-test/etc/dashkv/dashkv.conf' \
		"$dir/uc-dest/opt/dkv-units/dashkvd.service" ||
		fail "--with-systemdsystemunitdir=/opt/dkv-units not honoured"
	echo "--with-systemdsystemunitdir honoured"
fi
echo "PASS"
