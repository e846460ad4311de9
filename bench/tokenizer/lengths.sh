#!/usr/bin/env bash
# bench/tokenizer/lengths.sh: encode throughput against input length (lengths.c says how), for
# Llama-2 (both layouts) and Llama-3, on the Moby-Dick text and vocabularies bench.sh lays out.
#
#   bench/tokenizer/lengths.sh [BUILD_DIR]     (default: build; run bench.sh once first)
set -euo pipefail
SRC="$(cd "$(dirname "$0")/../.." && pwd)"
BUILD="$(cd "${1:-$SRC/build}" && pwd)"
W="$BUILD/tokenizer-bench"
[ -f "$W/moby.txt" ] || { echo "no $W/moby.txt: run bench/tokenizer/bench.sh first" >&2; exit 2; }
objs=$(find "$BUILD/CMakeFiles/qlora.dir" -name '*.o')
[ -n "$objs" ] || { echo "no library objects under $BUILD: build first" >&2; exit 2; }
cuda=""
[ -f "$BUILD/libqlora_cuda.a" ] && cuda="$BUILD/libqlora_cuda.a -L/usr/local/cuda/lib64 -lcudart_static -lcublas -lcublasLt -ldl -lrt -lstdc++"
cc -std=gnu11 -O2 -I"$SRC" -o "$BUILD/bench_lengths" "$SRC/bench/tokenizer/lengths.c" $objs $cuda \
  $(pkg-config --libs yaml-0.1 lua5.4 libcurl jansson libpcre2-8 libxxhash openssl) -lpthread -lm
for d in llama2 llama2-ms llama3; do "$BUILD/bench_lengths" "$W/$d" "$W/moby.txt"; done
