#!/usr/bin/env bash
# CUDA kernels on the CPU: each tests/emu/*_emu.cpp runs kernels' own CUDA source through a SIMT
# emulation (tests/emu/cuda_emu.h), so a machine without a GPU (CI) checks their tiling, masks,
# bounds, block sums and split reductions: lora_emu the fused LoRA kernels (lora_kernels.cuh),
# elementwise_emu the RMSNorm and RoPE kernels (elementwise_kernels.cuh). test_ops_gpu checks the
# same kernels on a GPU.
set -u
SRC=${QLORA_SRC:-$(pwd)}
CXX=${CXX:-g++}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail=0
for src in "$SRC"/tests/emu/*_emu.cpp; do
    name=$(basename "$src" .cpp)
    # -fno-strict-aliasing: the kernels read and write bf16 buffers as uint4 (16-byte accesses), as
    # CUDA code does; g++'s aliasing rules would let it reorder those against the bf16 accesses
    if ! "$CXX" -std=c++20 -O2 -fno-strict-aliasing -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unknown-pragmas -I"$SRC" \
        -o "$W/$name" "$src" -lpthread; then
        echo "FAIL tests/emu/$name.cpp does not build with $CXX"
        fail=1
        continue
    fi
    "$W/$name" || fail=1
done
exit $fail
