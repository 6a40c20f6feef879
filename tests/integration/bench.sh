#!/bin/sh
# bench.sh - dashkv-bench quality and speed end to end at small sizes:
# exit status, the expected rows and fields, valid JSON, and the quality
# figures within a small margin of what they measure (the generator is
# seeded and every kernel level gives the same figures; measured at 4096
# tokens: 8 queries mass recall 0.8580, output error 0.0146, every needle,
# top-1% mass 57.4%, per kind (current, earlier, needle) 0.0146, 0.0281 and
# 0.0010 against the oracle's 0.2096, 0.3015 and 0.0057; 4 queries (JSON)
# 0.9025 and 0.0101; speed's output error 0.0221).
set -u
: "${top_builddir:=.}"
bench="$top_builddir/dashkv-bench"
out=$(mktemp "${TMPDIR:-/tmp}/dkv-bench.XXXXXX") || exit 99
trap 'rm -f "$out"' EXIT

fail() {
	echo "bench.sh: FAIL: $*"
	echo "---- output ----"
	cat "$out"
	exit 1
}

# the value in column $2 of the first line starting with label $1
field() {
	awk -v l="$1" -v c="$2" 'index($0, l) == 3 { print $c; exit }' "$out"
}

# json_check FILE PYTHON-EXPRESSION: valid JSON, and the expression holds
json_check() {
	command -v python3 >/dev/null 2>&1 || { grep -q '^{' "$1" || fail "no JSON"; return; }
	python3 -m json.tool "$1" >/dev/null || fail "invalid JSON"
	python3 -c "import json, sys; d = json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" \
		"$1" || fail "JSON check failed: $2"
}

test -x "$bench" || { echo "bench.sh: $bench is not built"; exit 99; }

"$bench" --help >"$out" 2>&1 || fail "--help exited $?"
grep -q "quality" "$out" && grep -q "speed" "$out" || fail "--help lists no commands"
"$bench" nonsense >"$out" 2>&1
test $? -eq 2 || fail "an unknown command should exit 2"
"$bench" quality --top-k x >"$out" 2>&1
test $? -eq 2 || fail "a bad --top-k should exit 2"
"$bench" speed --tokens 4096 --scan-tokens 1073741824 >/dev/null 2>&1
test $? -eq 2 || fail "a scan past 2^30 keys should exit 2"

# ---- quality ----
"$bench" quality --tokens 4096 --queries 8 >"$out" 2>&1 || fail "quality exited $?"
cat "$out"
grep -q "^generator: the top 1% of tokens hold" "$out" || fail "no concentration line"
for l in "mass recall" "recall@" "output error" "tokens taken exactly" \
	 "oracle mass" "oracle output error"; do
	test -n "$(field "$l" 3)" || fail "no '$l' row"
done
grep -q "^needle hit rate: 1.000 (16 of 16 " "$out" || fail "a needle was missed"
mass=$(field "mass recall" 3)
err=$(field "output error" 3)
conc=$(sed -n 's/^generator: the top 1% of tokens hold \([0-9.]*\)%.*/\1/p' "$out")
awk -v m="$mass" -v e="$err" -v c="$conc" \
	'BEGIN { exit !(m > 0.82 && m <= 1.0001 && e >= 0 && e < 0.018 && c > 54 && c < 61) }' ||
	fail "quality out of bounds: mass recall $mass, output error $err, top-1% mass $conc%"
# per kind: heads, output error, oracle error (engine within its margin)
kind_ok() {
	awk -v k="$1" -v h="$2" -v e="$3" -v o="$4" \
		'index($0, k) == 3 { split(substr($0, length(k) + 3), f, " ");
		  if (f[1] == h && f[2] < e && f[3] > o) ok = 1 } END { exit !ok }' "$out" ||
		fail "per kind: no '$1' row with $2 heads, output error < $3, oracle > $4"
}
kind_ok "current topic" 32 0.018 0.19
kind_ok "earlier topic" 16 0.034 0.28
kind_ok "needle" 16 0.0015 0.005

"$bench" quality --tokens 4096 --queries 4 --json >"$out" 2>/dev/null || fail "quality --json exited $?"
json_check "$out" 'd["command"] == "quality" and d["tokens"] == 4096 and
	0.87 < d["engine"]["mass_recall"]["median"] <= 1.0001 and
	d["engine"]["output_error"]["median"] < 0.013 and
	d["engine"]["needle_hit_rate"] == 1 and "output_error" in d["oracle"] and
	0.56 < d["concentration_top1pct"] < 0.63 and
	d["kinds"]["needle"]["heads"] == 8 and d["kinds"]["current"]["heads"] == 16 and
	d["kinds"]["earlier"]["output_error"] < d["kinds"]["earlier"]["oracle_output_error"]'

# ---- speed ----
sp="--bw-mib 64 --scan-tokens 65536"
"$bench" speed --tokens 4096,8192 --reps 3 $sp >"$out" 2>&1 || fail "speed exited $?"
cat "$out"
for n in 4096 8192; do
	awk -v n="$n" '$1 == n && $2 == 3 && $3 > 0 && $4 > 0 { f = 1 } END { exit !f }' "$out" ||
		fail "no timing row for $n tokens"
done
grep -q "^memory read bandwidth: [0-9.]* GB/s" "$out" || fail "no bandwidth line"
grep -q "^coarse scan (krn .* scan as the engine runs it" "$out" || fail "no coarse scan line"
grep -q "1 query per pass: [0-9.]* GB/s of key data" "$out" || fail "no coarse scan bytes/s"

"$bench" speed --tokens 4096 --reps 2 $sp --json >"$out" 2>/dev/null || fail "speed --json exited $?"
json_check "$out" 'd["command"] == "speed" and len(d["rows"]) == 1 and
	d["rows"][0]["ok"] and d["rows"][0]["tokens"] == 4096 and
	d["rows"][0]["dash_ms"] > 0 and d["rows"][0]["exact_ms"] > 0 and
	d["rows"][0]["output_error"] < 0.028 and d["bandwidth"]["gbps"] > 0 and
	d["scan"]["one_query"]["gbps"] > 0 and d["scan"]["group"]["gbps"] > 0 and
	d["scan"]["bytes_per_key"] == 21 and
	d["scan"]["keys"] == d["scan"]["tokens"] * d["scan"]["kv_heads"] and
	d["scan"]["stride"] in (1, 8, 32, 64) and d["bandwidth"]["runs"] == 9 and
	d["scan"]["one_query"]["share_of_bandwidth"] > 0 and
	d["scan"]["group"]["share_of_bandwidth"] > 0'
# ---- scan: every level side by side, the same hits as the reference ----
"$bench" scan --scan-tokens 65536 >"$out" 2>&1 || fail "scan exited $?"
cat "$out"
grep -q "^dashkv-bench scan: 65536 tokens x 8 kv heads = 524288 keys" "$out" || fail "no scan header"
grep -q "scalar reference: identical$" "$out" || fail "scan: the levels' hits differ"
awk '$1 ~ /^(scalar|avx2|avx512)$/ && $2 > 0 && $3 > 0 { n++ } END { exit !n }' "$out" ||
	fail "scan: no timed level"
"$bench" scan --scan-tokens 65536 --json >"$out" 2>/dev/null || fail "scan --json exited $?"
json_check "$out" 'd["command"] == "scan" and d["hits_identical"] and
	d["keys"] == 524288 and d["rounds"] == 9 and len(d["levels"]) >= 1 and
	d["levels_checked"] >= len(d["levels"]) and
	all(l["one_query_ns_key"] > 0 and l["group_ns_key"] > 0 for l in d["levels"]) and
	d["levels"][0]["group_speedup"] == 1'
echo "bench.sh: ok"
exit 0
