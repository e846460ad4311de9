#!/usr/bin/env bash
# bench/quantize.sh: CPU NF4 quantization speed and memory.
#   bench/quantize.sh [BUILD_DIR]          kernel MB/s, then a generated 1B-shaped model end to end
#   BENCH_7B=1 bench/quantize.sh [BUILD]   also a 7B-shaped model (13.5 GB of bf16; about 20 GB of
#                                          disk under ${BENCH_DIR:-/tmp/qlora-bench}), with peak RSS
# Prints a markdown block for bench/RESULTS.md (NF4 section). Runs under nice: the machine may be shared.
set -eu
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
BIN=$BUILD/qlora-run
DIR=${BENCH_DIR:-/tmp/qlora-bench}
mkdir -p "$DIR"
echo "## $(date -u +%Y-%m-%d) commit $(git -C "$SRC" rev-parse --short HEAD)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: figures are lower bounds)"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem/ {print $2}') GB RAM"
echo
echo '### kernels (4096x11008 bf16, best of 3)'
echo '```'
cc -O2 -I"$SRC" -o "$DIR/quantize_kernel" "$SRC/bench/quantize_kernel.c" "$SRC/kernels/cpu/nf4.c" "$SRC/core/clock.c" -lm -lpthread
nice "$DIR/quantize_kernel"
echo '```'

run_model() { # preset
  local p=$1 m="$DIR/$1-bf16" q="$DIR/$1-nf4"
  [ -f "$m/config.json" ] || nice "$BIN" init-model --preset "$p" --out "$m" --threads 2 >/dev/null
  rm -rf "$q"
  echo
  echo "### $p-shaped model: \`qlora-run quantize $m $q\`"
  echo '```'
  nice /usr/bin/time -v -o "$DIR/time-$p.txt" "$BIN" quantize "$m" "$q" 2>&1 | tail -n 3
  grep -E "Maximum resident|Elapsed \(wall|User time|System time" "$DIR/time-$p.txt" | sed 's/^\s*//'
  echo "input $(du -sh "$m" | cut -f1), output $(du -sh "$q" | cut -f1)"
  echo '```'
}
run_model 1b
if [ "${BENCH_7B:-0}" = 1 ]; then run_model 7b; fi
