#!/bin/bash
# gpu-lora.sh: the sitting that checks and measures the fused LoRA kernels (kernels/cuda/lora.cu,
# issue 21): the qlinear op tests through both LoRA paths and the fixed-order check, the golden tests
# with the fused path on, train_gpu ops (the all-linear LoRA path of one layer: frozen, fused, GEMMs)
# and the train rows of bench/RESULTS.md with QLORA_CUDA_LORA=fused and =gemm in the same binaries.
# Run from the repository root with the programs bundled in .device/lora
# (../shared/tools/device-bundle .device/lora build-cuda/bench/train_gpu build-cuda/tests/test_ops_gpu
# build-cuda/tests/test_golden_gpu; a -DQLORA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 build).
# `gpu-lora.sh quick` trains three rows instead of seven.
B=$(cd "$(dirname "$0")/../.device/lora" && pwd)
R=$(pwd)
O=${OUT:-/tmp/gpu-lora}
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
(cd "$R/tests" && QLORA_TEST_ONLY=deterministic_same_bits,qlinear QLORA_TEST_VERBOSE=1 timeout 200 "$B/run" test_ops_gpu \
    > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "FAIL|elements off|nmse .* over|differ|passed|failed|LoRA path|seed" "$O/test_ops_gpu.log" | tail -30
(cd "$R/tests" && QLORA_CUDA_LORA=fused timeout 90 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "worst|passed|failed|FAIL" "$O/test_golden_gpu.log" | tail -8
stamp ops
timeout 100 "$B/run" train_gpu ops > "$O/ops.log" 2>&1; echo "ops rc=$?"
grep -E "qlinear|linear fwd|^\| (q|k|v|o|gate|up|down|layer)" "$O/ops.log"
stamp train
tr() { echo "## QLORA_CUDA_LORA=$L $*"; QLORA_CUDA_LORA=$L timeout 100 "$B/run" train_gpu train "$@"; }
{
    for t in all-linear q,v; do
        L=fused tr --model 7b --targets $t --seq 2048 --batch 1
        L=gemm tr --model 7b --targets $t --seq 2048 --batch 1
        [ "$1" = quick ] && break
    done
    if [ "$1" != quick ]; then
        L=fused tr --model 7b --targets all-linear --seq 2048 --batch 4
        L=gemm tr --model 7b --targets all-linear --seq 2048 --batch 4
        L=fused tr --model 7b --targets q,v --seq 2048 --batch 4
    fi
} > "$O/bench.log" 2>&1
grep -E "^##|^\| [^m-]|error" "$O/bench.log"
stamp end
