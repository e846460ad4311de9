#!/bin/bash
# gpu-dp.sh: world size 1 over NCCL against the plain single-GPU path (since dp2 a world of one
# calls no all-reduce and makes no stream wait: the two rows should be equal within noise).
# Run from the repository root, with the programs bundled by
#   ../shared/tools/device-bundle .device/NAME/bundle build-cuda/qlora-run build-cuda/bench/train_gpu
# and BUNDLE=.device/NAME/bundle (default .device/dataparallel/bundle). About 100 s.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=$(cd "${BUNDLE:-$(dirname "$0")/../.device/dataparallel/bundle}" && pwd)
O=${OUT:-/tmp/gpu-dp}
mkdir -p "$O"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import nvidia.nccl, os; print("nccl wheel:", os.path.dirname(nvidia.nccl.__file__ or list(nvidia.nccl.__path__)[0]))' 2>&1 | tail -1
T="timeout 40 $B/run train_gpu train --model 7b --targets q,v --seq 2048 --batch 1 --steps 12 --warmup 2"
for k in 1 2; do
  $T --nccl off > "$O/plain$k.log" 2>&1; echo "plain$k rc=$?"
  NCCL_DEBUG=VERSION $T --nccl on > "$O/nccl$k.log" 2>&1; echo "nccl$k rc=$?"
done
grep -h -E "^\||NCCL version|nccl:|error" "$O"/plain*.log "$O"/nccl*.log
stamp demo
QLORA_NCCL=1 QLORA_CACHE=/tmp/qc QLORA_RUNS=/tmp/qr timeout 50 "$B/run" qlora-run recipes/demo.yaml --set device=cuda \
  --set stages.train.max_steps=40 --until train > "$O/demo.log" 2>&1; echo "demo rc=$?"
grep -E "device:|gradients:|training|step 40|val loss|done in|error" "$O/demo.log" | head -12
stamp end
