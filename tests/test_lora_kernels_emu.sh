#!/usr/bin/env bash
# The fused LoRA kernels (kernels/cuda/lora_kernels.cuh) on the CPU: tests/emu/lora_emu.cpp runs their
# CUDA source through a SIMT emulation (tests/emu/cuda_emu.h) against double-precision sums, so a
# machine without a GPU (CI) checks their tiling, masks, bounds and split reductions.
# test_ops_gpu checks the same kernels on a GPU.
set -u
SRC=${QLORA_SRC:-$(pwd)}
CXX=${CXX:-g++}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
if ! "$CXX" -std=c++20 -O2 -Wall -Wextra -Werror -Wno-unused-parameter -Wno-unknown-pragmas -I"$SRC" \
    -o "$W/lora_emu" "$SRC/tests/emu/lora_emu.cpp" -lpthread; then
    echo "FAIL tests/emu/lora_emu.cpp does not build with $CXX"
    exit 1
fi
"$W/lora_emu"
