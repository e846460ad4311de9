#!/usr/bin/env bash
# run.sh: build bench_parquet against the library objects of an existing build and run it.
#   bench/parquet/run.sh FILE.parquet [--jobs N] [--tokenizer DIR] [--repeat N]
# BUILD (default build/) must hold a configured and built tree (cmake --build build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
build="${BUILD:-$src/build}"
objs=$(find "$build/CMakeFiles/qlora.dir" -name '*.o')
[ -n "$objs" ] || { echo "no library objects under $build: build first" >&2; exit 2; }
cc -std=gnu11 -O2 -I"$src" -DQLORA_VERSION='"bench"' $(pkg-config --cflags lua5.4 jansson libcurl) \
  -o "$build/bench_parquet" "$here/bench_parquet.c" $objs \
  $(pkg-config --libs yaml-0.1 lua5.4 libcurl jansson libpcre2-8 libxxhash openssl snappy libzstd zlib libbrotlidec) \
  $(pkg-config --libs ompi-c 2>/dev/null) \
  -lpthread -lm
exec "$build/bench_parquet" "$@"
