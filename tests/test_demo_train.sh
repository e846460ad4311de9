#!/usr/bin/env bash
# test_demo_train.sh: the embedded demo recipe end to end on the CPU. It must finish within
# 60 s, lower the validation loss by at least 30%, and the tuned model's exact match must be
# clearly above the base model's; a second run finds every stage cached.
set -euo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export QLORA_CACHE="$tmp/cache" QLORA_RUNS="$tmp/runs"


start=$(date +%s.%N)
"$BIN" "$SRC/recipes/demo.yaml" >"$tmp/out.txt" 2>&1 || { cat "$tmp/out.txt"; fail "the demo failed"; }
end=$(date +%s.%N)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
cat "$tmp/out.txt"

# "val loss 5.4270 -> 0.7559 (86.1% lower), perplexity 2.130" (the train stage's summary)
read -r v0 v1 < <(awk '/val loss [0-9.]+ -> [0-9.]+/ { print $3, $5 }' "$tmp/out.txt")
[ -n "${v0:-}" ] || fail "no 'val loss A -> B' line from the train stage"
awk -v a="$v0" -v b="$v1" 'BEGIN { exit !(b <= 0.7 * a) }' || fail "val loss $v0 -> $v1 is not 30% lower"

# "score (mean of 66)   0.0000   0.8182" (the evaluate stage's table: base, tuned)
read -r sb st < <(awk '/score \(mean of/ { print $(NF-1), $NF }' "$tmp/out.txt")
[ -n "${sb:-}" ] || fail "no score row in the evaluate table"
awk -v b="$sb" -v t="$st" 'BEGIN { exit !(t >= b + 0.3) }' || fail "tuned exact match $st is not clearly above base $sb"

echo "demo: ${secs}s, val loss $v0 -> $v1, exact match base $sb -> tuned $st"
# the 60 s limit is for a normal build; sanitizer builds run several times slower
if [ -n "${QLORA_BUILD:-}" ] && grep -q '^SANITIZE:STRING=.' "$QLORA_BUILD/CMakeCache.txt" 2>/dev/null; then
  echo "sanitizer build: time limit not checked"
else
  awk -v s="$secs" 'BEGIN { exit !(s <= 60) }' || fail "the demo took ${secs}s (limit 60 s)"
fi

# a second run computes nothing
"$BIN" "$SRC/recipes/demo.yaml" >"$tmp/out2.txt" 2>&1 || { cat "$tmp/out2.txt"; fail "the second run failed"; }
grep -q "0 ran, 7 cached" "$tmp/out2.txt" || { cat "$tmp/out2.txt"; fail "the second run recomputed a stage"; }

# qlora-run generate on the demo's artifacts: the tuned model sorts, --help and misuse behave
nf4=$(dirname "$(find "$QLORA_CACHE/artifacts/quantize_nf4" -name config.json | head -1)")
tuned=$(find "$QLORA_CACHE/artifacts/train" -mindepth 1 -maxdepth 1 -type d | head -1)
out=$("$BIN" generate --model "$nf4" --adapter "$tuned" --prompt $'Sort the letters.\nhgfe\n=' \
      --max-new-tokens 8 --stop $'\n') || fail "generate failed"
[ "$out" = "efgh" ] || fail "generate: expected 'efgh', got '$out'"
"$BIN" generate --help | grep -q -- "--max-new-tokens" || fail "generate --help"
set +e
"$BIN" generate --prompt x >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] || fail "generate without --model: exit $rc, expected 2"
echo "generate: ok"
