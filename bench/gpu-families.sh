#!/bin/bash
# famgpu (issue 15): the family ops on CUDA and the family benchmark rows, self-contained.
#   bash .device/famgpu/run.sh      (from the repository root on the GPU machine; logs in $OUT/famgpu/)
# test_ops_gpu: every op of the table (the sliding-window / scaled / soft-capped attention, GeGLU
# and act_scale among them) against the CPU reference; test_golden_gpu: the PyTorch + peft dumps
# of llama, qwen2, qwen3, mistral (sliding window) and gemma3 through CUDA; then train_gpu rows for
# Llama-3-8B (128k vocabulary), Qwen3-8B and Gemma-3-12B at 2048 x 1, q,v then all-linear.
# BUDGET (seconds, default 420): rows that would start later than that are skipped.
B=$(cd "$(dirname "$0")" && pwd); O=${OUT:-/tmp/o}/famgpu; mkdir -p "$O"
T0=$(date +%s); BUDGET=${BUDGET:-420}
stamp() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s $*"; }
{
stamp start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
(cd tests && timeout ${OPS_TIMEOUT:-150} "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "^FAIL|off \(|nmse|passed|^seed" "$O/test_ops_gpu.log" | tail -n 14
stamp golden
(cd tests && timeout ${GOLDEN_TIMEOUT:-120} "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "^ok|^FAIL|worst|passed" "$O/test_golden_gpu.log" | tail -n 24
stamp bench
for t in q,v all-linear; do
  for m in llama3-8b qwen3-8b gemma3-12b; do
    if [ $(( $(date +%s) - T0 )) -gt "$BUDGET" ]; then echo "row $m $t skipped (BUDGET)"; continue; fi
    timeout ${ROW_TIMEOUT:-100} "$B/run" train_gpu train --model $m --targets $t --seq 2048 --batch 1 \
      --steps ${STEPS:-10} --warmup 2 --ckpt auto >> "$O/bench.log" 2>&1; echo "row $m $t rc=$?"
  done
done
grep -E "^\||error|plan:|attention kernels" "$O/bench.log"
stamp end
} 2>&1 | tee "$O/run.log"
