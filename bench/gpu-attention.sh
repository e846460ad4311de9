#!/bin/bash
# gpu-attention.sh: the GPU sitting of the cuDNN attention work (issue 21). From the repository root
# on the GPU machine, with the programs bundled in .device/attn/b (device-bundle of test_ops_gpu,
# test_golden_gpu and train_gpu from a -DCMAKE_CUDA_ARCHITECTURES=90 build). Logs go to
# $OUT/attn/. Checks every CUDA op against the CPU reference (attention through cuDNN, mma and
# tiled), the golden tests through the CUDA path (attention on cuDNN, the default), per-op
# attention times and the 7B q,v 2048x1 and 1.1B 2048x4 rows, each with cuDNN and with mma.
# ATTN_PARTS (default "tests ops rows"; "extra" adds the issue's other rows) picks the parts.
B=$(cd "$(dirname "$0")/../.device/attn/b" && pwd)
R=$(pwd)
O=${OUT:-/tmp}/attn
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY' 2>/dev/null | tee "$O/cudnn-lib.txt"
import glob, site
for sp in site.getsitepackages():
    for f in sorted(glob.glob(sp + "/nvidia/cudnn/lib/libcudnn.so*")):
        print("cudnn:", f)
PY
P=" ${ATTN_PARTS:-tests ops rows} "
if [[ $P == *" tests "* ]]; then
(cd "$R/tests" && timeout 240 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
grep -E "kernels:|cuDNN|attention|FAIL|failed|passed" "$O/test_ops_gpu.log" | head -40
(cd "$R/tests" && timeout 150 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
grep -E "cuDNN|worst|FAIL|failed|passed" "$O/test_golden_gpu.log" | tail -8
fi
if [[ $P == *" ops "* ]]; then
stamp ops
timeout 120 "$B/run" train_gpu ops > "$O/ops.log" 2>&1; echo "ops rc=$?"
grep -E "attention|cuDNN" "$O/ops.log"
fi
if [[ $P == *" rows "* ]]; then
stamp rows
T="timeout 120 $B/run train_gpu train"
for a in cudnn mma; do
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt auto --attention $a
    $T --model 1b --targets q,v --seq 2048 --batch 4 --ckpt auto --attention $a
done > "$O/bench.log" 2>&1
grep -E "^\||error|attention kernels|cuDNN" "$O/bench.log"
fi
if [[ $P == *" extra "* ]]; then # the issue's other rows, on cuDNN (not in the default parts)
stamp extra
T="timeout 120 $B/run train_gpu train"
{
    $T --model 7b --targets q,v --seq 2048 --batch 4 --ckpt auto
    $T --model 7b --targets all-linear --seq 2048 --batch 1 --ckpt auto
    $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.5
    $T --model 7b --targets q,v --seq 16384 --batch 1 --ckpt auto --steps 4 --warmup 1 --attention cudnn
    $T --model 7b --targets q,v --seq 16384 --batch 1 --ckpt auto --steps 4 --warmup 1 --attention mma
} > "$O/extra.log" 2>&1
grep -E "^\||error|attention kernels|cuDNN" "$O/extra.log"
fi
stamp end
