#!/usr/bin/env bash
# run.sh: build bench_dataset against the library objects of an existing build and run it.
#   bench/dataset/run.sh [--records N] [--jobs N] [--tokenizer DIR]
# BUILD (default build/) must hold a configured and built tree (cmake --build build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
build="${BUILD:-$src/build}"
objs=$(find "$build/CMakeFiles/qlora.dir" -name '*.o')
[ -n "$objs" ] || { echo "no library objects under $build: build first" >&2; exit 2; }
cuda=""
[ -f "$build/libqlora_cuda.a" ] && cuda="$build/libqlora_cuda.a -L/usr/local/cuda/lib64 -lcudart_static -lcublas -lcublasLt -ldl -lrt -lstdc++"
cc -std=gnu11 -O2 -I"$src" -DQLORA_VERSION='"bench"' $(pkg-config --cflags lua5.4 jansson libcurl) \
  -o "$build/bench_dataset" "$here/bench_dataset.c" $objs $cuda \
  $(pkg-config --libs yaml-0.1 lua5.4 libcurl jansson libpcre2-8 libxxhash openssl snappy libzstd zlib libbrotlidec) $(pkg-config --libs ompi-c 2>/dev/null) -lpthread -lm
exec "$build/bench_dataset" "$@"
