#!/usr/bin/env bash
# build-train-gpu.sh: links bench/train_gpu.c against an existing CUDA build tree, until the
# build has a target for it (see the CMake lines in bench/RESULTS-gpu.md).
#
#   bench/build-train-gpu.sh [BUILD_DIR]     -> BUILD_DIR/bench/train_gpu
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$src/build}
[ -f "$build/libqlora_cuda.a" ] || { echo "build-train-gpu: no CUDA build in '$build' (cmake with nvcc first)" >&2; exit 1; }
cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
mkdir -p "$build/bench"
objs=$(find "$build/CMakeFiles/qlora.dir" -name '*.o')
gcc -std=gnu11 -O2 -g -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Wno-unused-parameter \
    -I"$src" -I"$cuda_home/include" -DQLORA_HAVE_CUDA=1 -c "$src/bench/train_gpu.c" -o "$build/bench/train_gpu.o"
g++ -o "$build/bench/train_gpu" "$build/bench/train_gpu.o" $objs "$build/libqlora_cuda.a" \
    -L"$cuda_home/lib64" -L"$cuda_home/targets/x86_64-linux/lib" -lcublasLt -lcublas -lcudart_static \
    $(pkg-config --libs yaml-0.1 lua5.4 libcurl jansson libpcre2-8 libxxhash openssl) -lpthread -ldl -lrt -lm
echo "built $build/bench/train_gpu"
