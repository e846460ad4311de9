#!/usr/bin/env bash
# bench/tokenizer/bench.sh: tokenizer throughput, MB/s of one thread encoding ~1 MB of English
# (Moby-Dick, one paragraph a line, each line encoded on its own, as the Rust peer of
# bench/RESULTS.md was measured), for the Llama-3, Qwen3 and Llama-2 tokenizer.json, ours against
# @huggingface/tokenizers (JavaScript) on the same machine.
#
#   bench/tokenizer/bench.sh [BUILD_DIR]     (default: build; needs node + npm the first time)
#
# Ours: `qlora-run tokenize --stats` times the encode calls alone (no load, no I/O), one cold
# pass, in wall time and in thread CPU time (steadier when other work shares the cores). The
# JavaScript figure is wall time of its second pass (the first warms its word cache). Best of 3.
set -euo pipefail
SRC="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="$(cd "${1:-$SRC/build}" && pwd)"
BIN="$BUILD/qlora-run"
W="$BUILD/tokenizer-bench"
NM="$BUILD/npm/node_modules"
if [ ! -d "$NM/@huggingface/tokenizers" ]; then
  echo "installing the reference packages (through the tokenizer test)" >&2
  QLORA_BIN="$BIN" QLORA_BUILD="$BUILD" QLORA_SRC="$SRC" bash "$SRC/tests/test_tokenizer_ref.sh" > /dev/null || true
fi
mkdir -p "$W"
node "$SRC/tests/tokenizer/build_dirs.mjs" "$NM" "$W"
TEXT="$W/moby.txt"
echo "text: $(wc -c < "$TEXT") bytes, $(wc -l < "$TEXT") lines; $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf "%-8s %16s %16s %24s\n" tokenizer "ours MB/s wall" "ours MB/s cpu" "@huggingface/tokenizers"
for d in llama3 qwen3 llama2; do
  best=0 cbest=0
  for i in 1 2 3; do
    line=$("$BIN" tokenize --model "$W/$d" --stats < "$TEXT" 2>&1 >/dev/null)
    r=$(echo "$line" | sed -n 's/.*), \([0-9.]*\) MB\/s (cpu.*/\1/p')
    c=$(echo "$line" | sed -n 's/.*(cpu \([0-9.]*\) MB\/s)$/\1/p')
    best=$(echo "$r $best" | awk '{print ($1 > $2) ? $1 : $2}')
    cbest=$(echo "$c $cbest" | awk '{print ($1 > $2) ? $1 : $2}')
  done
  jbest=0
  for i in 1 2 3; do
    r=$(node "$SRC/tests/tokenizer/oracle.mjs" "$NM" "$W/$d" time "$TEXT" | awk '{print $1}')
    jbest=$(echo "$r $jbest" | awk '{print ($1 > $2) ? $1 : $2}')
  done
  printf "%-8s %16s %16s %24s\n" "$d" "$best" "$cbest" "$jbest"
done
