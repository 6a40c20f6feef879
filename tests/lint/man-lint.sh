#!/bin/sh
# man-lint.sh - the man pages are mandoc-clean, every public function has
# its page, and every section-3 cross-reference to a dkv_ page resolves.
# Exit 77 (skipped) when mandoc is not installed.

: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
mandir=$top_srcdir/man
header=$top_srcdir/include/dashkv.h
fail=0

if ! command -v mandoc >/dev/null 2>&1; then
	echo "man-lint: mandoc not found, skipping" >&2
	exit 77
fi

pages=$(ls "$mandir"/*.[1-9] 2>/dev/null)
if [ -z "$pages" ]; then
	echo "man-lint: no pages in $mandir" >&2
	exit 1
fi

# 1. mandoc lint at warning level: any output is a failure.
for p in $pages; do
	out=$(mandoc -T lint -W warning "$p" 2>&1)
	if [ -n "$out" ]; then
		printf '%s\n' "$out"
		fail=1
	fi
done

# 2. every function declared in the public header has a page.
funcs=$(grep -oE 'dkv_[a-z_]+\(' "$header" | tr -d '(' | sort -u)
if [ -z "$funcs" ]; then
	echo "man-lint: no functions found in $header" >&2
	fail=1
fi
for f in $funcs; do
	if [ ! -f "$mandir/$f.3" ]; then
		echo "man-lint: $f is declared in dashkv.h but man/$f.3 is missing"
		fail=1
	fi
done

# 3. every Xr to a section-3 dkv_ page (at the start of a macro line or
# called inside one) points to an existing page.
for p in $pages; do
	refs=$(grep -E '^\.' "$p" |
		grep -oE '(^\.|[[:space:]])Xr[[:space:]]+dkv_[A-Za-z0-9_]+[[:space:]]+3([[:space:]]|$)' |
		sed -E 's/.*Xr[[:space:]]+(dkv_[A-Za-z0-9_]+).*/\1/' | sort -u)
	for r in $refs; do
		if [ ! -f "$mandir/$r.3" ]; then
			echo "man-lint: $(basename "$p") refers to $r(3), which has no page"
			fail=1
		fi
	done
done

if [ "$fail" -ne 0 ]; then
	echo "man-lint: FAILED" >&2
	exit 1
fi
echo "man-lint: $(echo "$pages" | wc -l | tr -d ' ') pages OK"
exit 0
