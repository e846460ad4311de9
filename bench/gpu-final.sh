#!/bin/bash
# gpu-final.sh: one sitting on the GPU machine that checks a release: the CUDA ops and the
# golden tests on the GPU path, the demo recipe trained through qlora-run on the GPU, and the
# benchmark table of bench/RESULTS.md. Run from the repository root with the programs bundled
# in .device/final (../shared/tools/device-bundle .device/final build/qlora-run
# build/tests/test_ops_gpu build/tests/test_golden_gpu build/bench/train_gpu).
B=$(cd "$(dirname "$0")/../.device/final" && pwd)
R=$(pwd)
O=${OUT:-/tmp/gpu-final}
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
(cd "$R/tests" && timeout 150 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
tail -n 2 "$O/test_ops_gpu.log"
(cd "$R/tests" && timeout 90 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "worst|passed" "$O/test_golden_gpu.log" | tail -6
stamp demo-on-gpu
QLORA_CACHE=/tmp/qc QLORA_RUNS=/tmp/qr timeout 240 "$B/run" qlora-run recipes/demo.yaml --set device=cuda > "$O/demo.log" 2>&1; echo "demo rc=$?"
grep -E "device:|plan:|kernels|val loss|score|done in" "$O/demo.log" | head -12
stamp train_gpu
T="timeout 150 $B/run train_gpu train"
{
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt auto
    $T --model 7b --targets q,v --seq 2048 --batch 4 --ckpt auto
    $T --model 7b --targets all-linear --seq 2048 --batch 1 --ckpt auto
    $T --model 1b --targets q,v --seq 2048 --batch 4 --ckpt auto
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.5
    $T --model 70b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 40 --steps 4 --warmup 1
} > "$O/bench.log" 2>&1
grep -E "^\||error" "$O/bench.log"
stamp end
