#!/bin/bash
# phi3gpu (issue 15): phi3 on CUDA (rope_ex) and cuDNN attention for Gemma-3 (head dim 256, windows).
#   bash .device/phi3gpu/run.sh      (from the repository root on the GPU machine; logs in $OUT/phi3gpu/)
# test_ops_gpu (rope_ex against the reference; the _ex attention cases on cuDNN: windows, scales,
# head dim 256), test_golden_gpu (phi3's dumps among the families), then train_gpu rows: Phi-3-mini
# (fused qkv_proj / gate_up_proj LoRA) and Gemma-3-12B on our kernels (--attention mma: head dim
# 256 on tiled, the "before"), on cuDNN as the default has it (global layers; the sliding ones on
# tiled) and with QLORA_CUDA_ATTENTION_EX=cudnn (windows and scales in cuDNN's graph: off by default
# until this sitting has run). A test_ops_gpu_mutant beside the programs
# (built for the sitting only, not committed) is run too when present.
# BUDGET (seconds, default 200): rows that would start later than that are skipped.
# Made ready with (on the development machine; the device call then carries .device/phi3gpu):
#   cmake -S . -B build-cuda -DQLORA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DQLORA_WERROR=ON
#   cmake --build build-cuda -j2 --target train_gpu test_ops_gpu test_golden_gpu
#   ../shared/tools/device-bundle .device/phi3gpu build-cuda/tests/test_ops_gpu \
#     build-cuda/tests/test_golden_gpu build-cuda/bench/train_gpu && strip .device/phi3gpu/bin/*
#   cp bench/gpu-phi3.sh .device/phi3gpu/run.sh
# and, for the mutant (two faults the new checks must catch, never committed): in
# kernels/cuda/elementwise.cu drop "* mscale" from rope_kernel's sine (longrope's factor on cos
# only), in kernels/cuda/attention_cudnn.cu make windowed()'s CMP_GT a CMP_GE (one key too many);
# rebuild test_ops_gpu, copy it to .device/phi3gpu/bin/test_ops_gpu_mutant, strip, restore both.
# Expected: rope_ex fails at mscale 1.19 and 1.5 (not at 1), attention fails on the windowed _ex
# cases with the options on.
# Not yet run (written while the device was not lent). The famgpu sitting (bench/RESULTS.md, 18:46)
# ran test_ops_gpu, the golden and six such rows in 23 s; this one has two more rows and a second
# pass of the _ex attention cases, so budget about a minute plus the machine's start.
B=$(cd "$(dirname "$0")" && pwd); O=${OUT:-/tmp/o}/phi3gpu; mkdir -p "$O"
T0=$(date +%s); BUDGET=${BUDGET:-200}
stamp() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s $*"; }
{
stamp start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
(cd tests && timeout ${OPS_TIMEOUT:-150} "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "^FAIL|off \(|nmse|passed|failed|^seed|cuDNN|kernels:" "$O/test_ops_gpu.log" | grep -v "^  ex " | tail -n 30
grep -E "^  ex " "$O/test_ops_gpu.log" | sort | uniq -c | head -n 30
stamp golden
(cd tests && timeout ${GOLDEN_TIMEOUT:-120} "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "^ok|^FAIL|worst|passed|failed|phi3" "$O/test_golden_gpu.log" | tail -n 30
if [ -x "$B/bin/test_ops_gpu_mutant" ]; then
  stamp mutant
  (cd tests && timeout ${OPS_TIMEOUT:-150} "$B/run" test_ops_gpu_mutant > "$O/mutant.log" 2>&1; echo "test_ops_gpu_mutant rc=$?")
  grep -E "^FAIL|passed|failed" "$O/mutant.log" | tail -n 8
  grep -E "rope_ex|window=" "$O/mutant.log" | grep -E "off|nmse|changed" | head -n 12
fi
stamp bench
row() { # EX ARGS...: EX is QLORA_CUDA_ATTENTION_EX's value
  local ex=$1; shift
  if [ $(( $(date +%s) - T0 )) -gt "$BUDGET" ]; then echo "row $* skipped (BUDGET)"; return; fi
  echo "### QLORA_CUDA_ATTENTION_EX=$ex train_gpu train $*" >> "$O/bench.log"
  QLORA_CUDA_ATTENTION_EX=$ex timeout ${ROW_TIMEOUT:-60} "$B/run" train_gpu train "$@" --seq 2048 --batch 1 \
    --steps ${STEPS:-10} --warmup 2 --ckpt auto >> "$O/bench.log" 2>&1; echo "row $ex $* rc=$?"
}
row off --model phi3-mini --targets qkv_proj
row off --model phi3-mini --targets all-linear
row cudnn --model phi3-mini --targets qkv_proj
row off --model gemma3-12b --targets q,v --attention mma
row off --model gemma3-12b --targets q,v
row cudnn --model gemma3-12b --targets q,v
row cudnn --model gemma3-12b --targets all-linear
row off --model 7b --targets q,v
grep -E "^###|^\||error|plan:|attention|cuDNN" "$O/bench.log"
stamp end
} 2>&1 | tee "$O/run.log"
