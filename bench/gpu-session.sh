#!/bin/bash
# gpu-session.sh: every GPU check and benchmark of issue 9 in one sitting on the GPU machine
# (bench/RESULTS.md, GPU engine details). Run from a checkout's root, with the programs bundled beside this
# script by ../shared/tools/device-bundle (B/run PROGRAM) and B/q a wrapper running qlora-run:
#   B/session.sh            logs under $OUT (or /tmp/gpu-session)
# B also holds bench/curve-check.{yaml,sh}, hooks/ and recipes/bench-7b.yaml of this commit.
B=$(cd "$(dirname "$0")" && pwd)
R=$(pwd)
O=${OUT:-/tmp/gpu-session}
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm --format=csv
stamp test_ops_gpu
(cd "$R/tests" && timeout 240 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "FAIL|passed|failed" "$O/test_ops_gpu.log" | tail -8
stamp test_golden_gpu
(cd "$R/tests" && timeout 120 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "rel err|FAIL|passed|failed" "$O/test_golden_gpu.log" | tail -24
stamp train_gpu
T="$B/run train_gpu train"
{
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt auto
    $T --model 7b --targets q,v --seq 2048 --batch 4 --ckpt auto
    $T --model 7b --targets all-linear --seq 2048 --batch 1 --ckpt auto
    $T --model 1b --targets q,v --seq 2048 --batch 4 --ckpt auto
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every
    $T --model 70b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 40 --steps 4 --warmup 1
    $T --model 7b --targets all-linear --seq 2048 --batch 1 --ckpt every
} > "$O/bench.log" 2>&1
grep -E "^\||plan total|plan:|error" "$O/bench.log"
stamp curve-check
(cd "$B" && timeout 240 bench/curve-check.sh "$B/q" /tmp/curve > "$O/curve.log" 2>&1; echo "curve-check rc=$?")
cat "$O/curve.log" | tail -24
stamp recipe
(cd "$B" && QLORA_CACHE=/tmp/rcache QLORA_RUNS=/tmp/rruns timeout 200 "$B/q" recipes/bench-7b.yaml \
    --set stages.base.preset=1b --set stages.train.max_steps=12 > "$O/recipe.log" 2>&1; echo "recipe rc=$?")
grep -E "device:|plan:|kernels:|loading|step (1|6|12)/|done in|error" "$O/recipe.log" | tail -14
stamp end
