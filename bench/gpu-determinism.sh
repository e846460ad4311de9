#!/bin/bash
# run.sh: the GPU proof of deterministic mode (issue 23), one sitting on the GPU machine.
# Run from the repository root with the programs bundled next to this script in bundle/ (built
# with -DQLORA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DQLORA_WERROR=ON, then
# ../shared/tools/device-bundle .device/determinism/bundle build-cuda/qlora-run
# build-cuda/tests/test_ops_gpu build-cuda/bench/train_gpu; stripped). Builds nothing. Logs go to
# $OUT/determinism/; the summary lines (== ...) go to stdout. A copy is kept in git as
# bench/gpu-determinism.sh (BUNDLE=DIR points it at the bundle).
#   a. test_ops_gpu: every CUDA op against the CPU reference, the deterministic backward too, and
#      each op deterministic mode changes run twice on one input (same bits)
#   b. recipes/bench-7b.yaml on the 1b preset, deterministic: true, twice, each with an empty
#      cache: adapter sha256 and every step's loss and grad norm must be equal
#   c. the same run (train forced, checkpoints every 5 steps) killed with SIGKILL after the
#      checkpoint of a random step, then run again: it resumes, and its adapter must equal the
#      uninterrupted one
#   d. the 7B shape (train_gpu: the same model code on generated NF4 weights, no disk), q,v,
#      2048 x 1, 10 steps: twice deterministic (LoRA params and loss sum bit for bit), and
#      tokens/s deterministic vs not, alternating; the default mode's final-loss spread over 5 runs
#   e. per-op times of the attention backward in both modes (train_gpu ops)
# Knobs for a dry run without a GPU: PRESET, STEPS, EXTRA (more --set options), DEVICE.
set -u
H=$(cd "$(dirname "$0")" && pwd)
B=${BUNDLE:-$H/bundle}
R=$(pwd)
O=${OUT:-/tmp/determinism-out}/determinism
mkdir -p "$O"
PRESET=${PRESET:-1b}
STEPS=${STEPS:-30}
EXTRA=${EXTRA:-}
DEVICE=${DEVICE:-cuda}
W=$(mktemp -d /tmp/det.XXXXXX)
exec > >(tee "$O/run-output.txt") 2>&1
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
have() { [ -x "$B/bin/$1" ]; }
Q() { "$B/run" qlora-run "$@"; }
[ -x "$B/run" ] || { echo "no bundle at $B"; exit 2; }
stamp start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$O/gpu.txt"
git -C "$R" log --oneline -1 2>/dev/null | tee "$O/commit.txt"
fails=0
verdict() { if [ "$1" = ok ]; then echo "== PASS $2"; else echo "== FAIL $2"; fails=$((fails + 1)); fi; }

# ---- a. the op tests
det_ok=1
if have test_ops_gpu; then
    stamp test_ops_gpu
    (cd "$R/tests" && timeout 100 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1); rc=$?
    grep -E "^FAIL|differ|default mode|kernels:|passed" "$O/test_ops_gpu.log" | head -20
    [ $rc -eq 0 ] && verdict ok "test_ops_gpu" || verdict bad "test_ops_gpu rc=$rc"
    [ $rc -eq 124 ] && det_ok=0 # a hang: the recipe runs below would hang too
fi

# ---- b. two deterministic runs of the recipe, each with an empty cache
set_args=(--set device=$DEVICE --set deterministic=true --set stages.base.preset=$PRESET
          --set stages.train.max_steps=$STEPS $EXTRA)
adapter_of() { find "$1/artifacts/train" -name adapter_model.safetensors 2>/dev/null | head -n1; }
steps_of() { # step, loss, grad norm of every step, in full precision, from the train artifact's log
    local log; log=$(dirname "$(dirname "$1")")/train_log.jsonl
    python3 -c 'import json,sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if "loss" in e and "step" in e: print(e["step"], repr(e["loss"]), repr(e.get("grad_norm")))' "$log"
}
one_run() { # $1: name; the rest: extra arguments
    local n=$1; shift
    QLORA_CACHE=$W/cache-$n QLORA_RUNS=$W/runs-$n timeout 60 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" \
        "${set_args[@]}" "$@" > "$O/recipe-$n.log" 2>&1
}
if [ $det_ok -eq 1 ]; then
    stamp "recipe twice ($PRESET, $STEPS steps, deterministic, empty caches)"
    for n in A B; do
        one_run $n; rc=$?
        a=$(adapter_of "$W/cache-$n")
        echo "run $n rc=$rc adapter ${a:+$(sha256sum < "$a" | cut -c1-64)}" | tee -a "$O/summary.txt"
        [ -n "$a" ] && steps_of "$a" > "$O/steps-$n.txt"
        grep -E "deterministic:|kernels:|device:" "$O/recipe-$n.log" | head -3
    done
    aA=$(adapter_of "$W/cache-A"); aB=$(adapter_of "$W/cache-B")
    tail -n 1 "$O/steps-A.txt" 2>/dev/null | sed 's/^/last step A: /'
    if [ -n "$aA" ] && [ -n "$aB" ] && cmp -s "$aA" "$aB" && [ -s "$O/steps-A.txt" ] && cmp -s "$O/steps-A.txt" "$O/steps-B.txt"; then
        verdict ok "two deterministic runs: same adapter sha256 and the same $(wc -l < "$O/steps-A.txt") step losses and grad norms"
    else
        verdict bad "two deterministic runs differ"; diff "$O/steps-A.txt" "$O/steps-B.txt" | head -5
    fi
    Q runs diff "$(ls -d "$W"/runs-A/bench-7b/* | head -n1)" "$(ls -d "$W"/runs-B/bench-7b/* | head -n1)" > "$O/runs-diff.txt" 2>&1
    sed -n '/^environment:/,/^metrics:/p' "$O/runs-diff.txt" | head -4

    # ---- c. kill -9 at a random step, then resume (run B's cache: the train stage forced, its
    # checkpoints every 5 steps; the second run resumes from the newest)
    k=$(( (RANDOM % 4 + 1) * 5 )) # wait for the checkpoint of step 5, 10, 15 or 20, then kill
    stamp "kill -9 after the checkpoint of step $k, then resume"
    kset=("${set_args[@]}" --set stages.train.save_steps=5 --force train)
    # no timeout wrapper: bundle/run execs, so $! is qlora-run itself
    QLORA_CACHE=$W/cache-B QLORA_RUNS=$W/runs-K "$B/run" qlora-run "$R/recipes/bench-7b.yaml" \
        "${kset[@]}" > "$O/recipe-K1.log" 2>&1 & pid=$!
    killed="" c=""
    for _ in $(seq 4000); do # at most ~60 s
        c=$(find "$W/cache-B/work" -name "checkpoint-$(printf %08d $k).bin" 2>/dev/null | head -n1)
        if [ -n "$c" ]; then kill -9 $pid 2>/dev/null; killed=1; break; fi
        kill -0 $pid 2>/dev/null || break
        sleep 0.01
    done
    [ -z "$killed" ] && kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    sleep 0.5
    [ -n "$c" ] && ls "$(dirname "$c")" | tr '\n' ' ' > "$O/kill-checkpoints.txt"
    echo "killed=${killed:-no} work dir after the kill: $(cat "$O/kill-checkpoints.txt" 2>/dev/null)"
    QLORA_CACHE=$W/cache-B QLORA_RUNS=$W/runs-K timeout 60 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" \
        "${kset[@]}" > "$O/recipe-K2.log" 2>&1; rc=$?
    grep -iE "resuming" "$O/recipe-K2.log" | head -1
    aK=$(adapter_of "$W/cache-B")
    echo "resumed run rc=$rc adapter ${aK:+$(sha256sum < "$aK" | cut -c1-64)}" | tee -a "$O/summary.txt"
    if [ -n "$killed" ] && [ $rc -eq 0 ] && [ -n "$aK" ] && [ -n "$aA" ] && cmp -s "$aK" "$aA" && grep -q "resuming" "$O/recipe-K2.log"; then
        verdict ok "killed after the checkpoint of step $k and resumed: the same adapter as the uninterrupted run"
    else
        verdict bad "kill and resume (killed=${killed:-no}, rc=$rc)"
    fi
fi

# ---- d. the 7B shape: bits, tokens/s in both modes, the default mode's spread
# ---- d. evaluate (issue 23, item 3): the demo recipe on cuda in deterministic mode, twice with
# empty caches: its evaluate results (val loss base and tuned, greedy generations, scores) equal
if [ $det_ok -eq 1 ]; then
    stamp "demo recipe twice on cuda, deterministic: evaluate's results"
    for n in E1 E2; do
        QLORA_CACHE=$W/cache-$n QLORA_RUNS=$W/runs-$n timeout 90 "$B/run" qlora-run "$R/recipes/demo.yaml" \
            --set device=$DEVICE --set deterministic=true > "$O/demo-$n.log" 2>&1
        echo "demo $n rc=$?"
    done
    e1=$(find "$W/cache-E1/artifacts/evaluate" -name results.json | head -n1)
    e2=$(find "$W/cache-E2/artifacts/evaluate" -name results.json | head -n1)
    [ -n "$e1" ] && python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("val loss", r["val"]["data"]["tuned"]["loss"], "first generation", repr(r["generations"][0]["tuned"]))' "$e1"
    if [ -n "$e1" ] && [ -n "$e2" ] && cmp -s "$e1" "$e2"; then
        verdict ok "evaluate twice in deterministic mode: results.json byte-identical (losses, generations, scores)"
    else
        verdict bad "evaluate in deterministic mode differs between two runs"
    fi
fi

if have train_gpu && [ $det_ok -eq 1 ]; then
    stamp "7B q,v 2048 x 1 (train_gpu, 10 steps)"
    T="timeout 40 $B/run train_gpu train --model 7b --targets q,v --seq 2048 --batch 1 --ckpt auto --steps 10 --warmup 2"
    for i in 1 2 3 4 5; do # alternating, so drift hits both modes alike
        [ $i -le ${DET_RUNS:-2} ] && $T --deterministic on >> "$O/train_gpu.log" 2>&1
        $T --deterministic off >> "$O/train_gpu.log" 2>&1
    done
    grep -E "^\|" "$O/train_gpu.log" | tee -a "$O/summary.txt"
    grep -E "^checksum" "$O/train_gpu.log" | tee "$O/checksums.txt"
    nd=$(grep -c "deterministic on" "$O/checksums.txt"); nu=$(grep "deterministic on" "$O/checksums.txt" | sort -u | wc -l)
    [ "$nd" -ge 2 ] && [ "$nu" -eq 1 ] && verdict ok "7B: $nd deterministic runs, one checksum" || verdict bad "7B deterministic checksums ($nd runs, $nu distinct)"
    echo "default mode: $(grep "deterministic off" "$O/checksums.txt" | sort -u | wc -l) distinct checksums of 5"
    python3 - "$O/train_gpu.log" <<'PY'
import re, sys, statistics as st
rows = [l for l in open(sys.argv[1]) if l.startswith("| 7b")]
det = [float(r.split("|")[5]) for r in rows if "deterministic" in r]
non = [float(r.split("|")[5]) for r in rows if "deterministic" not in r]
sums = {}
for l in open(sys.argv[1]):
    m = re.match(r"checksum: .* loss sum over the steps (\S+), last loss (\S+) \(deterministic (\w+)\)", l)
    if m: sums.setdefault(m.group(3), []).append((float(m.group(1)), float(m.group(2))))
lastloss = [x[1] for x in sums.get("off", [])]
if det and non:
    md, mn = st.median(det), st.median(non)
    print(f"7B q,v 2048x1 tok/s: deterministic {det} median {md:.0f}; default {non} median {mn:.0f}; cost {100*(1-md/mn):+.2f}%")
if lastloss:
    print(f"default mode final loss over {len(lastloss)} runs: {lastloss} spread {max(lastloss)-min(lastloss):.3g}")
if "on" in sums:
    print(f"deterministic mode final loss over {len(sums['on'])} runs: {[x[1] for x in sums['on']]}")
PY
    # the mma kernels' fixed-order backward (the deterministic form for shapes over cuDNN's
    # workspace cap; QLORA_CUDA_DET_CUDNN_BWD=0 asks for it everywhere): one checksum too, and its cost
    stamp "7B q,v 2048 x 1, deterministic with QLORA_CUDA_DET_CUDNN_BWD=0 (the mma backward, twice)"
    for i in 1 2; do QLORA_CUDA_DET_CUDNN_BWD=0 $T --deterministic on >> "$O/train_gpu_mma.log" 2>&1; done
    grep -E "^\||^checksum" "$O/train_gpu_mma.log" | tee -a "$O/summary.txt"
    nc=$(grep "^checksum" "$O/train_gpu_mma.log" | sed 's/, loss.*//' | sort -u | wc -l)
    [ "$nc" -eq 1 ] && verdict ok "7B, the mma deterministic backward: one checksum of 2 runs" \
        || verdict bad "7B, the mma deterministic backward ($nc distinct checksums)"
    # cuDNN's deterministic backward is the default: the runs above used it unless the plan fell back
    grep -q "is over the .* cap" "$O/train_gpu.log" && verdict bad "7B: cuDNN's deterministic plan fell back to mma"
    stamp "per-op attention backward (train_gpu ops)"
    timeout 40 "$B/run" train_gpu ops > "$O/ops.log" 2>&1
    grep -E "attention_bwd" "$O/ops.log"
fi
stamp "end: $fails failed"
rm -rf "$W"
# the device tool returns at most 8 files: every log in one archive, the main ones beside it
(cd "$O" && tar czf all-logs.tar.gz --exclude=all-logs.tar.gz . && ls | grep -vxE \
    'all-logs.tar.gz|run-output.txt|summary.txt|test_ops_gpu.log|train_gpu.log|ops.log|runs-diff.txt|gpu.txt' | xargs -r rm -f)
[ $fails -eq 0 ]
