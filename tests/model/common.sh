# common.sh - sourced by the stories260K tests: paths, the known text, checks.
b=${top_builddir:-.}
stories=$b/tests/model/stories
data=${DASHKV_TEST_DATA:-${top_srcdir:-.}/../shared/data}
model=$data/models/stories260K.gguf
if [ ! -r "$model" ]; then
	echo "SKIP: $model not found (set DASHKV_TEST_DATA to the shared data folder)"
	exit 77
fi
export DASHKV_TEST_DATA="$data"

# Greedy decoding from BOS, as data/README.md records it.
known="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high"

fail() { echo "FAIL: $*"; exit 1; }

# starts_with FILE: the file's first line begins with the known text
starts_with() {
	first=$(head -n 1 "$1")
	case "$first" in
	"$known"*) return 0 ;;
	esac
	echo "expected: $known"
	echo "got:      $first"
	return 1
}

# field NAME FILE: the count in "NAME: X of N ..." of a --compare report
field() {
	sed -n "s/^$1: \([0-9]*\) of [0-9]* .*/\1/p" "$2"
}

# Floors for DASH-KV at top_k 16, window 16 over 400 tokens, see stories.sh.
forced_floor=380
