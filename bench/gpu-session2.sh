#!/bin/bash
# gpu-session2.sh: the second sitting (after the capped backward went by column ranges and the
# checkpointed plan got its knobs picked by budget): GPU op and golden tests, checkpointed rows.
B=$(cd "$(dirname "$0")" && pwd)
R=$(pwd)
O=${OUT:-/tmp/gpu-session}
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start
(cd "$R/tests" && timeout 120 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "FAIL|off \(|passed|failed" "$O/test_ops_gpu.log" | tail -8
(cd "$R/tests" && timeout 60 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "worst|passed|failed" "$O/test_golden_gpu.log" | tail -6
stamp train_gpu
T="$B/run train_gpu train"
{
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.5
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every
    $T --model 70b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 40 --steps 4 --warmup 1
    $T --model 7b --targets all-linear --seq 2048 --batch 1 --ckpt every --budget-gib 5.5
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt auto
} > "$O/bench.log" 2>&1
grep -E "^\||plan total|error" "$O/bench.log"
stamp end
