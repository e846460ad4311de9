#!/usr/bin/env bash
# run.sh: build bench_parquet (a target of the build tree, built on request) and run it.
#   bench/parquet/run.sh FILE.parquet [--jobs N] [--tokenizer DIR] [--repeat N]
# BUILD (default build/) must hold a configured tree (cmake -S . -B build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
build="${BUILD:-$src/build}"
[ -f "$build/CMakeCache.txt" ] || { echo "no configured build tree in $build: cmake -S $src -B $build first" >&2; exit 2; }
cmake --build "$build" --target bench_parquet >&2
exec "$build/bench_parquet" "$@"
