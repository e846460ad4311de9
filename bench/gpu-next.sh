#!/bin/bash
# gpu-next.sh PART: the GPU sittings prepared by the sessions of 2026-12-04 21:24 and 2026-12-05
# 00:26 UTC. Parts A-G ran on 2026-12-05 03:30-04:12 UTC on an H200, H-J at 05:29-05:37 on an
# H100 (bench/RESULTS.md, "Sitting of 2026-12-05" and the one after it); M at 10:09 on an H100;
# N, K and L's 48 GiB cells at 13:57-14:16 on an H200 ("Sitting of 2026-12-05 13:57-14:30 UTC").
# R and L's 24 and 48 GiB cells ran at 16:42-17:12 on an H100 ("Sitting of 2026-12-05 16:42-17:12
# UTC"). L's 80 GiB cells of Phi-4, Qwen3-32B and Llama-3-70B and R ran at 19:13-19:34 on an
# H200 ("Sitting of 2026-12-05 19:11-19:34 UTC"). V ran at 22:12 and R and U at 23:03 on an H100
# ("Sitting of 2026-12-05 22:12-22:15 UTC" and "... 23:03-23:09 UTC"). Left for the next sitting,
# on an H200 (issue 21's targets are the H200's; needs_h200 only for the 8B cell: an 80 GiB budget
# does not fit an H100), in this order (1-3 about 830 s of calls beside the machine's start):
#   1. R (~260 s): the recipe's rows with this session's kernels on the H200 (the x4 row was 1.0%
#      short there before them; 19,716 on an H100 with them); the checkpointed row at 5.3GB.
#   2. I (~450 s, carry .device/peer too): the peer (transformers + peft + bitsandbytes) on the
#      7B rows in the same sitting as ours, which issue 21's "Show" asks for.
#   3. X (~450 s; any card, carry .device/lora too): the fused LoRA kernels rewritten for their
#      bytes (2026-12-06 00:00, not yet run on a GPU): test_ops_gpu, ncu, the rows on both paths.
#   4. V (~140 s) on the H200, if the lease allows.
#   5. Llama-3-8B at 80 GiB (~700 s over two calls; likely a sitting of its own): its step is
#      about 540 s and the set-up (the model, 108 GiB of pinned host memory) took 85-100 s for the
#      other 80 GiB cells, over a call's 600 s. A process that starts its own session (setsid)
#      runs on between calls while the machine is held (idle_release is 30 s: the second call at
#      once), so one call that starts it and waits, then one that waits for its end:
#     setsid bash -c 'OUT=/tmp/gpu-next L_SECONDS=900 bash bench/gpu-next.sh L llama3-8b:80:487936:700 \
#         > /tmp/cell-8b.txt 2>&1' < /dev/null & sleep 585; cat /tmp/cell-8b.txt
#     until grep -q "end of part L" /tmp/cell-8b.txt; do sleep 5; done; cat /tmp/cell-8b.txt; cp -r /tmp/gpu-next/L $OUT/
# Each PART fits one `run` call (at most 600 s):
#   R  issue 21's rows through `qlora-run recipes/bench-7b.yaml` on one cache: 7B q,v 2048 x 1
#      (dense_weights auto), 2048 x 4, all-linear, every layer checkpointed within memory_budget
#      5.2GB and 5.3GB (the whole process; train_gpu's 4.2 GiB of its own allocations), then the
#      1.1B at 2048 x 4; the median step of steps 3-20 as tok/s; then train_gpu's rows in the same
#      sitting over the same 20 steps, two of them on the recipe's quantized 7B; the SM clock and
#      power beside each                                                                   ~260 s
#   N  Gemma checkpointed on the GPU (test_golden_gpu's packed cases, Gemma-3-12B at 16k in 24 GiB);
#      train_gpu ops (the per-op table of one 7B layer, after); one whole step op by op and the
#      device's idle time between ops (train --profile on: 7B q,v, all-linear, checkpointed; 1.1B)
#                                                                                          ~300 s
#   V  the kernels of 2026-12-05 21:10-22:00 against those before them (the bundle of 1207694,
#      kept as .device/prev/b.tar.xz): test_ops_gpu, test_golden_gpu, train_gpu ops of both, then
#      7B q,v x1 and x4 and 1.1B x4 by each, twice; all-linear on GEMMs and fused         ~400 s
#   U  a LoRA branch kernel by kernel: q, up and down, forward and backward, frozen, on GEMMs and
#      fused (train_gpu lora-kernels under ncu --profile-from-start off)                   ~120 s
#   W  cuDNN's attention workspace by heads, tokens and layout (train_gpu attn-ws)        ~150 s
#   L CELL...  the memory table's longer cells, one step each (CELL = MODEL:GIB:TOKENS:SECONDS)
#   K  the floor; dense on/off on the four plain rows (this card's shares of its floor); the
#      1.1B 2048 x 4 deterministic twice (split, one checksum); the checkpointed 7B deterministic
#      within 4.2 GiB (the workspace lowered); test_ops_gpu (the split under a lowered cap); on an
#      H200, the 70B row at 38 GiB and its floor                                  ~250 s (H200: ~400 s)
#   M  issue 21's memory table: train_gpu fit (the train stage's plan, llama_plan_longest) for
#      llama3-8b, phi4, qwen3-32b, llama3-70b at 8-80 GiB, then one step at each length within
#      that memory_budget (train --memory-budget, shortest first, M_SECONDS=420)           ~500 s
#   H  test_golden_gpu, test_ops_gpu; deterministic on/split/off on six train_gpu rows;
#      checkpointed 7B at 4.2 GiB; 70B at 38 GiB                                            ~400 s
#   I  recipes/bench-7b.yaml at 7B, its train stage twice deterministic; the peer's 7B rows  ~450 s
#   J  the floor at 32,768 tokens and the long-context rows (8B at 32k and 80k in 24 GiB, 70B at
#      16k in 48 GiB)                                                                      ~300 s
#   A  test_ops_gpu (every op, the new ones included: rope_ex, soft-capped cross-entropy, fused
#      LoRA, nf4_dequant, cuDNN's deterministic backward), gemma2's golden dumps made with torch +
#      transformers + peft (then commit tests/golden/gemma2*_golden.safetensors), test_golden_gpu,
#      transformers' multiple-choice log-likelihoods for every family
#      (tests/golden/make_mc_golden_families.sh part two, on .device/mcfam; then commit
#      $OUT/A/mc/FAMILY.json as tests/golden/mc/, which test_eval_tasks.sh then compares)   ~150 s
#   F  bench/gpu-determinism.sh (the deterministic mode's proofs and costs)               ~200 s
#   B  bench/gpu-lora.sh (the fused LoRA kernels against the GEMM path: ops, rows) and
#      bench/gpu-phi3.sh (phi3 on CUDA; cuDNN for windows and head dim 256)          ~350 s
#   C  bench/evaltasks/run.sh (dense_weights + task_batch on 14,042 MMLU-shaped questions beside
#      transformers) and the family rows (Llama-3-8B, Qwen3-8B, Gemma-3-12B; q,v, all-linear) ~450 s
#   E  the same family rows by transformers + peft + bitsandbytes (the peer), right after C  ~300 s
#   D  dense weights in training (the train stage's dense_weights, train_gpu --dense): the rows with
#      the linears kept dequantized against dequantized in each pass, the same checksum in
#      deterministic mode either way, and the 1b bench recipe with dense_weights auto and off ~330 s
# Logs under $OUT/<part>/; each sub-script says what it shows and what to copy into RESULTS.md.
#
# Prepare on the development machine (the carry limit is 64 MiB, so the programs travel packed):
#   cmake -S . -B build-cuda -DQLORA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DQLORA_WERROR=ON
#   cmake --build build-cuda -j2
#   ../shared/tools/device-bundle .device/next/b build-cuda/qlora-run build-cuda/bench/train_gpu \
#       build-cuda/tests/test_ops_gpu build-cuda/tests/test_golden_gpu
#   strip .device/next/b/bin/* && tar -C .device/next -cJf .device/next/b.tar.xz b && rm -rf .device/next/b
# and, for parts E and I's peer, bitsandbytes built for sm_90 from its source for the sitting
# (never committed) in .device/peer/bnb (its python package with libbitsandbytes_cuda130.so), its
# commit in .device/peer/BNB_COMMIT (the peer's report records it).
# and, for part A's multiple-choice dumps, part one of tests/golden/make_mc_golden_families.sh:
#   BIN=build/qlora-run tests/golden/make_mc_golden_families.sh .device/mcfam/out
# Then: run `bash bench/gpu-next.sh A` with carry [".device/next", ".device/mcfam"] (B, D, H, J, K,
# L, M, N, R, U, W: [".device/next"]; V: [".device/next", ".device/prev"]; E, I: [".device/next",
# ".device/peer"]; X: [".device/next", ".device/lora"]). .device/prev/b.tar.xz is the bundle of
# 1207694 (the kernels before V's), made as above from a worktree of that commit when this checkout
# lacks it; X's .device/next is the bundle of c4f1cb7 (the fused kernels before X's) and
# .device/lora that of c782947 or later, made as above into .device/lora.
set -u
PART=${1:?usage: gpu-next.sh A|B|C|D|E|F|G|H|I|J|K|L|M|N|R|U|V|W|X}
R=$(pwd)
O=${OUT:-/tmp/gpu-next}/$PART
mkdir -p "$O"
export PYTHONUNBUFFERED=1
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
# the memory table's models: LoRA on q,v; on phi4 its fused q, k, v projection
tg() { [ $1 = phi4 ] && echo qkv_proj || echo q,v; }
# one step of the memory table's cell MODEL in BUDGET GiB at TOKENS, within SECONDS: the train
# stage's plan within that memory_budget, every layer checkpointed; its log is cell-MODEL-BUDGET.log
# (bench/memory_table.py reads it)
table_step() {
    local c="$O/cell-$1-$2.log"
    timeout $4 "$B/run" train_gpu train --model $1 --targets $(tg $1) --seq $3 --batch 1 --ckpt every \
        --memory-budget $2 --steps 1 --warmup 0 > "$c" 2>&1 < /dev/null
    echo "$1 $2 GiB $3: rc=$? $(grep -E '^\|' "$c")"
    grep -E "stage plan|scratch MiB|cap;|offloaded|pinned" "$c"
}
NB=/tmp/gpu-next
# unpack NAME DIR: .device/NAME/b.tar.xz into DIR/b. A warm machine keeps it unpacked; a new one
# (another checksum) replaces it
unpack() {
    local t="$R/.device/$1/b.tar.xz" sum
    sum=$(sha256sum "$t" 2>/dev/null | cut -c1-16)
    if [ ! -x "$2/b/run" ] || [ "$(cat "$2/b.sum" 2>/dev/null)" != "$sum" ]; then
        rm -rf "$2/b" && mkdir -p "$2" && tar -C "$2" -xJf "$t" || { echo "no bundle (.device/$1/b.tar.xz)"; exit 2; }
        echo "$sum" > "$2/b.sum"
    fi
}
unpack next "$NB"
B=$NB/b
stamp "part $PART"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
git -C "$R" log --oneline -1 2>/dev/null

# ncu_linear LINEAR PATH [BUNDLE TAG]: one linear's forward and backward (train_gpu lora-kernels) by
# BUNDLE's programs ($B's by default), each kernel timed by Nsight Compute where it is installed (on
# Firecracker; on gVisor ncu cannot read the device, and the mean times alone come back); the log
# is $O/ncu-LINEAR-PATH[-TAG].csv
ncu_linear() {
    local lin=$1 path=$2 b=${3:-$B} f="$O/ncu-$1-$2${4:+-$4}"
    NCU=${NCU-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)}
    if [ -n "$NCU" ]; then
        timeout 120 "$NCU" --clock-control none --profile-from-start off --metrics gpu__time_duration.sum --csv \
            "$b/run" train_gpu lora-kernels --linear $lin --path $path > "$f.csv" 2> "$f.err"
        echo "$lin $path${4:+ ($4)}: rc=$? $(grep -E '^\| ' "$f.csv")"
        python3 - "$f.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if rows:
    h = rows[0]
    k, u, v = h.index("Kernel Name"), h.index("Metric Unit"), h.index("Metric Value")
    tot = 0
    for r in rows[1:]:
        us = float(r[v].replace(",", "")) / {"ns": 1000, "nsecond": 1000, "us": 1, "usecond": 1, "ms": 0.001,
                                             "msecond": 0.001}[r[u]]
        tot += us
        print("   %8.1f us  %s" % (us, r[k][:110]))
    print("   %8.1f us  in all, %d kernels" % (tot, len(rows) - 1))
PY
    else
        echo "$lin $path${4:+ ($4)}: ncu not found, so train_gpu's own event times (ncu's per-kernel table needs Nsight Compute on the PATH or under /opt/nvidia/nsight-compute)"
        timeout 60 "$b/run" train_gpu lora-kernels --linear $lin --path $path 2>&1 | grep -E "^\| |error"
    fi
}

# window_row BUNDLE LOG MODEL TARGETS SEQ BATCH: a row over the recipe's window (train_gpu, 18
# steps, the median of 3-18, dense weights) by BUNDLE's programs, its log LOG, its table line said;
# QLORA_CUDA_LORA in the environment picks the LoRA path
window_row() {
    timeout 90 "$1/run" train_gpu train --model $3 --targets $4 --seq $5 --batch $6 --ckpt auto --dense on \
        --steps 18 --warmup 2 > "$2" 2>&1
    grep -E '^\| ' "$2" | tail -1
}

case $PART in
A)
    (cd tests && timeout 240 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^(ok|FAIL)|check failed|differ|calls ran|deterministic|passed" "$O/test_ops_gpu.log" | head -60
    stamp "gemma2 golden dumps"
    (cd tests && timeout 120 python3 golden/make_golden.py golden golden gemma2 > "$O/make_golden_gemma2.log" 2>&1
     echo "make_golden gemma2 rc=$?"
     timeout 60 python3 golden/check_merged_families.py golden golden/export_families gemma2 > "$O/check_merged_gemma2.log" 2>&1
     echo "check_merged gemma2 rc=$?"
     cp golden/gemma2_golden.safetensors golden/gemma2_packed_golden.safetensors "$O/" 2>/dev/null)
    tail -3 "$O/make_golden_gemma2.log" "$O/check_merged_gemma2.log"
    (cd tests && timeout 150 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
    grep -E "^(ok|FAIL|SKIP)|worst|passed" "$O/test_golden_gpu.log" | head -40
    stamp "multiple-choice log-likelihoods by transformers, every family"
    mkdir -p "$O/mc"
    timeout 120 bash tests/golden/make_mc_golden_families.sh --score "$R/.device/mcfam/out" "$O/mc" > "$O/mc.log" 2>&1
    echo "make_mc_golden_families --score rc=$?"; ls "$O/mc"
    python3 - "$O/mc" "$R/.device/mcfam/out" <<'PY' 2>&1 | tail -9
import json, os, sys
d, ours = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(d)):
    fam = f[:-5]; g = json.load(open(os.path.join(d, f))); r = json.load(open(f"{ours}/ours-{fam}.json"))
    worst = max(abs(v - r["tasks"][t]["base"]["docs"][i]["loglik"][k])
                for t in g for i, row in enumerate(g[t]["loglik"]) for k, v in enumerate(row))
    same = all(g[t]["acc"] == r["tasks"][t]["base"]["acc"] for t in g)
    print(f"{fam}: worst |loglik difference| {worst:.2e}, accuracies equal: {same}")
PY
    ;;
G)
    # the defaults flipped after parts A-E (cuDNN for windows and scales, cuDNN's deterministic
    # backward, dense_weights auto in training) and gemma's norms summed in fp32: the op tests,
    # the golden models, transformers' multiple-choice log-likelihoods on the f32 export, the
    # determinism proofs again, the deterministic mode's cost on more train_gpu rows. In order of
    # need, each log written as it ends (a call cut short keeps what ran).
    (cd tests && timeout 100 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^FAIL|off \(worst|passed" "$O/test_ops_gpu.log" | head
    (cd tests && timeout 100 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
    grep -E "^(ok|FAIL|SKIP)|passed|failed" "$O/test_golden_gpu.log" | tr '\n' ' '; echo
    mkdir -p "$O/mc"
    timeout 150 bash tests/golden/make_mc_golden_families.sh --score "$R/.device/mcfam/out" "$O/mc" > "$O/mc.log" 2>&1
    echo "make_mc_golden_families --score rc=$?"
    (cd "$O" && tar -czf mc.tgz mc && rm -rf mc)
    stamp determinism
    OUT=$O DET_RUNS=2 BUNDLE=$B timeout 200 bash bench/gpu-determinism.sh > "$O/determinism.txt" 2>&1
    (cd "$O" && tar -czf determinism.tgz determinism && rm -rf determinism)
    grep -E "^== (PASS|FAIL)|tok/s|spread|final loss" "$O/determinism.txt" | head -30
    stamp "deterministic mode's cost on more rows (on, off)"
    for r in "7b q,v 2048 4" "7b all-linear 2048 1" "1b q,v 2048 4" "7b q,v 4096 1"; do
        set -- $r
        for d in on off; do
            timeout 60 "$B/run" train_gpu train --model $1 --targets $2 --seq $3 --batch $4 --ckpt auto --steps 8 \
                --warmup 2 --deterministic $d 2>&1 | grep -E "^\||over the .* cap" >> "$O/det-rows.txt"
        done
    done
    cat "$O/det-rows.txt"
    ;;
H)
    # what parts A-G left of issues 21 and 23 (the session of 2026-12-05 ran out of device time):
    # the deterministic mode's cost on every train_gpu row with its defaults (cuDNN's deterministic
    # backward; the mma form over its 320 MiB workspace), with the split of such shapes into rows
    # and head groups (QLORA_CUDA_DET_CUDNN_SPLIT=1: test_ops_gpu's det_split_check first), and
    # off; if split keeps every row within 3%, flip det_split_on's default (attention_cudnn.cu)
    # and then `deterministic`'s (issue 23); issue 21's checkpointed 7B
    # (>= 12,000 tok/s at <= 4.2 GiB) and 70B (>= 1,550 tok/s at <= 38 GiB) rows
    # first the golden models: phi3's fused rows quantized at load keep the whole tensor's
    # de-nested scales since this sitting's tree (not yet run on a GPU with that change)
    (cd tests && timeout 100 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
    grep -E "^(ok|FAIL|SKIP)|passed|failed" "$O/test_golden_gpu.log" | tr '\n' ' '; echo
    (cd tests && timeout 120 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^FAIL|off \(worst|split|passed" "$O/test_ops_gpu.log" | head
    stamp "the floor of the 2048-token rows on this card (the floors in train_gpu are the H200's)"
    timeout 90 python3 bench/step_floor.py 7b:2048x1 7b:2048x4 1b:2048x4 70b:2048x1 > "$O/floor.jsonl" 2> "$O/floor.err"
    echo "step_floor rc=$?"; cat "$O/floor.jsonl"
    stamp "deterministic mode's cost on each row (on, split, off)"
    for r in "7b q,v 2048 4 auto" "7b all-linear 2048 1 auto" "1b q,v 2048 4 auto" "7b q,v 4096 1 auto" \
             "7b q,v 2048 1 every --budget-gib 4.2" "7b q,v 2048 1 auto --dense on"; do
        set -- $r
        for d in on split off; do # split: QLORA_CUDA_DET_CUDNN_SPLIT=1 (rows and head groups under the cap)
            echo "## $r --deterministic $d" >> "$O/det-rows.txt"
            QLORA_CUDA_DET_CUDNN_SPLIT=$([ $d = split ] && echo 1 || echo 0) timeout 60 "$B/run" train_gpu train \
                --model $1 --targets $2 --seq $3 --batch $4 --ckpt $5 ${@:6} --steps 8 --warmup 2 \
                --deterministic $([ $d = off ] && echo off || echo on) 2>&1 \
                | grep -E "^\||over the .* cap|workspace cap|^checksum" >> "$O/det-rows.txt"
        done
    done
    cat "$O/det-rows.txt"
    stamp "issue 21's memory rows"
    T="timeout 120 $B/run train_gpu train"
    {
        $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.2
        $T --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.2 --act-offload on
        $T --model 70b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 38 --steps 4 --warmup 1
    } > "$O/memory-rows.log" 2>&1
    grep -E "^\||plan total|error" "$O/memory-rows.log"
    ;;
R)
    # issue 21's targets name bench/train_gpu "and the same rows through qlora-run
    # recipes/bench-7b.yaml": each row a variant of the recipe (--set), on one cache, so the 7B
    # model is made and quantized once; tok/s from the median step time of steps 3-20
    export QLORA_CACHE=/tmp/r-cache QLORA_RUNS=/tmp/r-runs
    # the SM clock and the board's power, sampled every 200 ms while a row runs: the recipe's rows
    # ran 2-4% below train_gpu's on the same plan (2026-12-05 19:17, H200), a gap that grew with
    # the tokens; a card held at its power limit clocks down more on some values than others
    smi_on() { nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 200 > "$O/smi-$1.csv" 2>/dev/null & SMI=$!; }
    smi_off() { kill $SMI 2>/dev/null; wait $SMI 2>/dev/null
        python3 - "$O/smi-$1.csv" "$1" <<'PY'
import statistics, sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.count(",") == 1]
busy = [(float(c), float(w)) for c, w in rows if float(w) > 200]  # the steps, not the set-up
if busy:
    print("   %s: SM clock median %.0f MHz (min %.0f), power median %.0f W over %d samples above 200 W" % (
        sys.argv[2], statistics.median(c for c, _ in busy), min(c for c, _ in busy),
        statistics.median(w for _, w in busy), len(busy)))
PY
    }
    row() { # LABEL TOKENS-A-STEP [--set ...]
        local label=$1 tok=$2; shift 2
        stamp "$label"
        smi_on "$label"
        timeout 200 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" "$@" > "$O/$label.log" 2>&1; local rc=$?
        smi_off "$label"
        python3 - "$O/$label.log" "$tok" "$label" "$rc" <<'PY'
import re, statistics, sys
log, tok, label, rc = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ms = [float(m.group(2)) for m in (re.search(r"step (\d+)/\d+ .*\| (\d+) ms \|", l) for l in open(log)) if m and int(m.group(1)) >= 3]
peak = [l.strip() for l in open(log) if "device memory:" in l or "kept" in l or "error" in l][-2:]
print("| %s | %s | %s | rc %s | %s |" % (label, "%.0f" % (tok / statistics.median(ms) * 1000) if ms else "-",
      "%.1f ms" % statistics.median(ms) if ms else "-", rc, " / ".join(peak)[:160]))
PY
    }
    row 7b-qv-2048x1 2048
    row 7b-qv-2048x4 8192 --set stages.train.micro_batch_size=4
    row 7b-all-linear-2048x1 2048 --set "stages.lora.lora_target_modules=[all-linear]"
    # memory_budget bounds the whole process, where train_gpu's --budget-gib 4.2 bounds its own
    # allocations: on the H100 of 2026-12-05 17:11 the stage found 4.35 GiB in use before its plan
    # (weights 3.60, LoRA state 0.13, cuBLAS's workspace, the CUDA context and libraries 0.59) and
    # counted 0.81 GiB for 2048 tokens (half its 1 GiB margin for the ops' fixed scratch
    # included), so 4.8GB was refused and 5.2GB is the least; the train stage's "device memory:"
    # line gives the run's allocation peak (train_gpu's peak column) and the whole process's use
    row 7b-qv-every-5.2GB 2048 --set stages.train.activation_checkpointing=every_layer --set stages.train.memory_budget=5.2GB \
        --set stages.train.dense_weights=off
    # 5.2GB is the least that takes the row, with the lean knobs (10,807 tok/s in 4.04 GiB on the
    # H200 of 19:18); the plan without them, train_gpu's 4.16 GiB row, needs about 5.3GB
    # --force train: memory_budget shapes the plan, not the result, so it is not in the train
    # stage's cache key and the 5.2GB row's adapter would be taken as cached (H100, 23:05)
    row 7b-qv-every-5.3GB 2048 --set stages.train.activation_checkpointing=every_layer --set stages.train.memory_budget=5.3GB \
        --set stages.train.dense_weights=off --force train
    row 1b-qv-2048x4 8192 --set stages.base.preset=1b --set stages.train.micro_batch_size=4
    stamp "the same rows by train_gpu in this sitting"
    # the recipe's own quantized 7B (quantize_nf4's artifact) as train_gpu's weights: the harness
    # on the recipe's values, beside its synthetic ones
    W7=$(python3 -c 'import glob, json, sys
print(next((d[:-12] for d in glob.glob("/tmp/r-cache/artifacts/quantize_nf4/*/model/config.json")
            if json.load(open(d)).get("hidden_size") == 4096), ""))')
    echo "the recipe's 7B: ${W7:-not found}"
    # 20 steps, the median of steps 3-20: the recipe's window (train_gpu had run 8, the median of
    # 3-8: a card that warms over a longer run clocks down, and the recipe's x4 row runs 8.5 s);
    # each row's whole log kept, its step times in it
    for r in "7b q,v 2048 1 auto --dense on" "7b q,v 2048 4 auto --dense on" "7b all-linear 2048 1 auto --dense on" \
             "1b q,v 2048 4 auto --dense on" "7b q,v 2048 1 every --budget-gib 4.2" \
             ${W7:+"7b q,v 2048 1 auto --dense on --weights $W7" "7b q,v 2048 4 auto --dense on --weights $W7"}; do
        set -- $r
        label="train_gpu-$1-$2-$3x$4-$5${7:+-$7}${9:+-weights}"
        smi_on "$label"
        timeout 90 "$B/run" train_gpu train --model $1 --targets $2 --seq $3 --batch $4 --ckpt $5 ${@:6} --steps 18 \
            --warmup 2 > "$O/$label.log" 2>&1
        grep -E "^\||^weights|error" "$O/$label.log" | tee -a "$O/train_gpu-rows.txt"
        smi_off "$label"
    done
    rm -rf /tmp/r-cache /tmp/r-runs
    ;;
I)
    # the user's path and the peer for the 7B rows, in one sitting: recipes/bench-7b.yaml at the 7B
    # shape through qlora-run (dense_weights auto), its train stage again deterministic twice on
    # the same cache (one adapter), then transformers + peft + bitsandbytes on the same rows
    # (carry .device/peer too)
    # I_PEER_ONLY=1: the peer alone, in a sitting whose R gave the recipe's rows
    [ "${I_PEER_ONLY:-0}" = 1 ] || {
    stamp "recipes/bench-7b.yaml, 7B"
    export QLORA_CACHE=/tmp/i-cache QLORA_RUNS=/tmp/i-runs
    timeout 240 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" > "$O/recipe-7b.log" 2>&1; echo "recipe rc=$?"
    grep -E "plan:|kernels:|kept|step (1|10|20)/|done in|error" "$O/recipe-7b.log" | tail -12
    for i in 1 2; do
        timeout 90 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" --set deterministic=true --force train > "$O/recipe-det-$i.log" 2>&1
        echo "deterministic run $i rc=$? adapter $(find /tmp/i-cache/artifacts/train -name adapter_model.safetensors \
            -newer "$O/recipe-7b.log" -exec sha256sum {} + | cut -c1-16 | sort -u | tr '\n' ' ')"
    done
    rm -rf /tmp/i-cache /tmp/i-runs
    }
    stamp "the peer, 7B rows"
    export PYTHONPATH=$R/.device/peer/bnb${PYTHONPATH:+:$PYTHONPATH} BNB_COMMIT=$(cat "$R/.device/peer/BNB_COMMIT" 2>/dev/null)
    timeout 200 python3 bench/hf_qlora_bench.py --shape 7b --model-dir /tmp/hf-7b --qlora 2048x1:qv,2048x4:qv,2048x1:all \
        --no-grad-ckpt --steps 6 --warmup 2 --jsonl "$O/peer.jsonl" > "$O/peer-7b.log" 2>&1; echo "peer rc=$?"
    timeout 100 python3 bench/hf_qlora_bench.py --shape 7b --model-dir /tmp/hf-7b --qlora 2048x1:qv \
        --steps 6 --warmup 2 --jsonl "$O/peer.jsonl" >> "$O/peer-7b.log" 2>&1; echo "peer (checkpointed) rc=$?"
    grep -h '"phase": "bench"' "$O/peer.jsonl" 2>/dev/null | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print(r["label"], r["tokens_per_s"], "tok/s", r["peak_alloc_gib"], "GiB peak")'
    ;;
J)
    # issue 21's long-context rows: the floor at 32,768 tokens (bench/step_floor.py, torch + cuDNN
    # SDPA) beside the Llama-3-8B row at that length within 24 GiB (target: >= 60% of that floor),
    # the 81,920-token row again, and the 70B shape at 16,384 tokens within 48 GiB
    stamp "the floor at 32,768 tokens"
    timeout 150 python3 bench/step_floor.py llama3-8b:32768x1 > "$O/floor-32k.json" 2> "$O/floor-32k.err"
    echo "step_floor rc=$?"; cat "$O/floor-32k.json"
    stamp "long-context rows"
    T="timeout 150 $B/run train_gpu train"
    {
        $T --model llama3-8b --targets q,v --seq 32768 --batch 1 --ckpt every --budget-gib 23 --steps 2 --warmup 1
        $T --model llama3-8b --targets q,v --seq 81920 --batch 1 --ckpt every --budget-gib 23 --steps 1 --warmup 1
        $T --model 70b --targets q,v --seq 16384 --batch 1 --ckpt every --budget-gib 47 --steps 1 --warmup 1
    } > "$O/long-rows.log" 2>&1
    grep -E "^\||plan total|error|fit" "$O/long-rows.log"
    ;;
K)
    # after H-J (2026-12-05 05:29-05:37 UTC, an H100): the rows with the linears kept dequantized
    # (--dense on) beside NF4 alone and the floor on the same card; deterministic mode with the
    # split now its default (1b 2048 x 4 twice: one checksum) and the checkpointed 7B in 4.2 GiB
    # with attention backward's workspace lowered to fit; test_ops_gpu (the split under a lowered cap)
    stamp "the floor of the 2048-token rows"
    timeout 60 python3 bench/step_floor.py 7b:2048x1 7b:2048x4 1b:2048x4 > "$O/floor.jsonl" 2> "$O/floor.err"
    echo "step_floor rc=$?"; cat "$O/floor.jsonl"
    stamp "dense on and off"
    for r in "7b q,v 2048 1" "7b q,v 2048 4" "7b all-linear 2048 1" "1b q,v 2048 4"; do
        set -- $r
        for d in on off; do
            timeout 60 "$B/run" train_gpu train --model $1 --targets $2 --seq $3 --batch $4 --ckpt auto --dense $d \
                --steps 8 --warmup 2 2>&1 | grep -E "^\||error" | tee -a "$O/dense-rows.txt"
        done
    done
    stamp "deterministic mode, split by default"
    for i in 1 2; do
        timeout 60 "$B/run" train_gpu train --model 1b --targets q,v --seq 2048 --batch 4 --ckpt auto --deterministic on \
            --steps 8 --warmup 2 2>&1 | grep -E "^\||^checksum|cap|error" | tee -a "$O/det.txt"
    done
    for d in on off; do
        timeout 60 "$B/run" train_gpu train --model 7b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 4.2 \
            --deterministic $d --steps 8 --warmup 2 2>&1 | grep -E "^\||^checksum|lowered|plan total|cap|error" | tee -a "$O/det.txt"
    done
    (cd tests && timeout 150 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^FAIL|split|passed" "$O/test_ops_gpu.log" | head
    # the 70B row's target is the H200's: on one, that row at this commit (last seen there at
    # ca27b30, 1,607 tok/s at 37.94 GiB) and its floor
    if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
        stamp "70B at 38 GiB on this H200"
        timeout 90 python3 bench/step_floor.py 70b:2048x1 >> "$O/floor.jsonl" 2>> "$O/floor.err"; tail -1 "$O/floor.jsonl"
        timeout 120 "$B/run" train_gpu train --model 70b --targets q,v --seq 2048 --batch 1 --ckpt every --budget-gib 38 \
            --steps 4 --warmup 1 2>&1 | grep -E "^\||plan total|error" | tee "$O/70b.txt"
    fi
    ;;
M)
    # issue 21's memory table: train_gpu fit (the train stage's own plan, llama_plan_longest: what
    # `memory_budget: G` takes with every layer checkpointed) for the 8B, 14B, 32B and 70B shapes
    # at 8-80 GiB, then one training step at each length found, planned by the train stage's
    # llama_plan_auto within that memory_budget (the used column is nvidia-smi's: all of the
    # process's device memory), shortest first, while this part's time lasts (a step at 390k
    # tokens takes minutes); then, on the development machine, `python3 bench/memory_table.py M`
    # prints README's table
    for mdl in llama3-8b phi4 qwen3-32b llama3-70b; do
        timeout 90 "$B/run" train_gpu fit --model $mdl --targets $(tg $mdl) 2>/dev/null | tee -a "$O/fit.md"
    done
    python3 - "$O/fit.md" > "$O/cells.txt" <<'PY'
import sys
cells = []
for l in open(sys.argv[1]):
    f = [x.strip() for x in l.strip().strip("|").split("|")]
    if len(f) == 6 and f[3].isdigit() and float(f[2]) < 79:
        cells.append((int(f[3]) * {"llama3-8b": 1, "phi4": 2, "qwen3-32b": 4, "llama3-70b": 9}[f[0]], f[0], f[2], f[3]))
for c in sorted(cells): print(*c[1:])
PY
    cat "$O/cells.txt"
    end=$(( $(date +%s) + ${M_SECONDS:-420} ))
    while read -r mdl bud len; do
        left=$(( end - $(date +%s) ))
        [ $left -lt 30 ] && { echo "| $mdl | q,v | $bud GiB | $len | not measured (time) |"; continue; }
        table_step $mdl $bud $len $left
    done < "$O/cells.txt"
    ;;
N)
    # in the order of what matters most, should the call's time run out: Gemma checkpointed on the
    # GPU (since c3fa974; before, its plan kept every layer's activations): the golden packed cases
    # run the checkpointed plan; where one whole 7B step's device time goes, op by op, and the time
    # the device waits between ops (what capturing the step in a CUDA graph could take back);
    # Gemma-3-12B at 16,384 tokens within a 24 GiB memory_budget (the plan on paper takes 99,328
    # there); the per-op table at the 7B layer shape (the after of RESULTS.md's); two more profiles
    stamp "gemma checkpointed: golden dumps"
    (cd tests && timeout 120 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
    grep -E "^FAIL|gemma|passed" "$O/test_golden_gpu.log" | head
    prof() {
        timeout 90 "$B/run" train_gpu train --model $1 --targets $2 --seq $3 --batch $4 --ckpt $5 --steps 6 --warmup 2 \
            --profile on > "$O/profile-$1-${2/,/}-$4-$5.md" 2>&1; echo "profile $* rc=$?"
        grep -E "^\||^span|^largest|^host wall" "$O/profile-$1-${2/,/}-$4-$5.md" | head -45
    }
    stamp "one 7B step op by op (train --profile on)"
    prof 7b q,v 2048 1 auto
    prof 7b q,v 2048 1 every
    stamp "Gemma-3-12B at 16k in 24 GiB"
    timeout 120 "$B/run" train_gpu train --model gemma3-12b --targets q,v --seq 16384 --batch 1 --ckpt every \
        --memory-budget 24 --steps 2 --warmup 1 > "$O/gemma-16k.log" 2>&1; echo "gemma 16k rc=$?"
    grep -E "^\||stage plan|scratch MiB|error" "$O/gemma-16k.log"
    stamp "per-op times at the 7B layer shape, 2048 tokens"
    timeout 120 "$B/run" train_gpu ops --seq 2048 > "$O/ops.md" 2>&1; echo "ops rc=$?"
    grep -E "^\|" "$O/ops.md" | head -40
    prof 7b all-linear 2048 1 auto
    prof 1b q,v 2048 4 auto
    ;;
V)
    # the session of 2026-12-05 21:10's changes against the bundle before them (1207694, in
    # .device/prev/b.tar.xz): the block-a-row RMSNorm and the block-a-token RoPE
    # (kernels/cuda/elementwise_kernels.cuh; in the 7B step of 13:57 rmsnorm_fwd ran 16.6 us a
    # call, rmsnorm_bwd 35.6, rope 28.3: 2.0, 1.9 and 1.2 TB/s of the 4.8 the card has, 7.0 ms of
    # 117 in all), the layer's forward without its two copies of x (0.9 ms), a LoRA branch's
    # conversions in one launch and its output written before the base GEMMs (qlinear rows), and
    # every map's 16-byte accesses, which had been four 4-byte ones (28a0e02)
    unpack prev "$NB/prev"
    bundle() { [ "$1" = prev ] && echo "$NB/prev/b" || echo "$B"; } # the programs of prev or new
    (cd tests && timeout 240 "$B/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^(ok|FAIL)|check failed|passed" "$O/test_ops_gpu.log" | grep -iE "rmsnorm|rope|FAIL|failed|passed" | head -20
    (cd tests && timeout 120 "$B/run" test_golden_gpu > "$O/test_golden_gpu.log" 2>&1; echo "test_golden_gpu rc=$?")
    grep -E "FAIL|failed|passed" "$O/test_golden_gpu.log" | head -8
    for k in prev new; do
        b=$(bundle $k)
        stamp "train_gpu ops, $k"
        timeout 120 "$b/run" train_gpu ops > "$O/ops-$k.md" 2>&1
        grep -E "^\| (rmsnorm|rope|swiglu|qlinear|layer)" "$O/ops-$k.md"
    done
    # the rows over the recipe's window, each bundle in turn, twice
    for pass in 1 2; do
        for r in "7b q,v 2048 1" "7b q,v 2048 4" "1b q,v 2048 4"; do
            for k in prev new; do
                set -- $r
                echo "$k: $(window_row "$(bundle $k)" "$O/row-$pass-$k-$1-$4.log" "$@")"
            done
        done
    done
    # the fused LoRA kernels read x 16 bytes at a time since 28a0e02 (4 before): all-linear on
    # both LoRA paths of the new bundle (they had tied, 15,043 against 14,978 tok/s)
    for lp in gemm fused; do
        echo "all-linear, LoRA on $lp: $(QLORA_CUDA_LORA=$lp window_row "$B" "$O/row-all-linear-$lp.log" 7b all-linear 2048 1)"
    done
    ;;
U)
    # where a LoRA branch's time goes, kernel by kernel: one linear's forward and backward, frozen,
    # on the GEMM path and on the fused kernels (train_gpu lora-kernels), each kernel timed by
    # Nsight Compute (on Firecracker; on gVisor ncu cannot read the device, and the mean times
    # alone come back). The branch costs about 148 us a linear a step where its bytes need about
    # 30 (train_gpu ops, 2026-12-05 13:57: the layer's seven 3,467 us against 2,432 frozen). What
    # to look at: map8_kernel<dropout_op> and <add_masked_op> against their bytes (8 us for q's
    # [2048, 4096] at 4 TB/s): the mask's hash (ops_dropout_keep: splitmix64, three 64-bit
    # multiplies and a 64-bit int-to-float conversion an element) may bind them, and a 32-bit
    # hash would free them; the rank-16 GEMMs (cuBLAS with 16 columns or rows) against theirs
    for lin in q up down; do
        for path in frozen gemm fused; do ncu_linear $lin $path; done
    done
    ;;
X)
    # the fused LoRA kernels rewritten (2026-12-06 00:00 UTC; the bundle of that commit as
    # .device/lora/b.tar.xz, carried beside .device/next, the kernels before it): lora_down a block
    # of 64 rows sharing each A tile (it read A once per 16 rows, twice x's bytes from L2), both
    # kernels reading their next tile into registers while the tensor cores work on the one before,
    # the grids one wave of 4 blocks a multiprocessor. U of 23:03 (H100): lora_down 73.3 us where
    # its 45 MB need ~15, lora_up_bwd 83.8 where its 135 MB need ~45; the branch 196.8 fused, 211.6
    # on GEMMs. Then the rows on both paths, twice: if fused wins every row, flip
    # LORA_FUSED_DEFAULT (lora.cu)
    unpack lora "$NB/lora"
    L=$NB/lora/b
    (cd tests && timeout 150 "$L/run" test_ops_gpu > "$O/test_ops_gpu.log" 2>&1; echo "test_ops_gpu rc=$?")
    grep -E "^FAIL|lora|passed|failed" "$O/test_ops_gpu.log" | head -12
    # in order of need (a call cut short keeps what ran): down's kernels, the rows once, q's
    # kernels, the rows again
    for pass in 1 2; do
        lin=$([ $pass = 1 ] && echo down || echo q)
        ncu_linear $lin fused "$L" new
        ncu_linear $lin fused "$B" before
        ncu_linear $lin gemm "$L" new
        for r in "7b all-linear 2048 1" "7b q,v 2048 1" "7b q,v 2048 4" "1b q,v 2048 4"; do
            set -- $r
            for lp in gemm fused; do
                echo "$lp: $(QLORA_CUDA_LORA=$lp window_row "$L" "$O/row-$pass-$lp-$1-$2-$4.log" "$@")"
            done
        done
    done
    ;;
W)
    stamp "cuDNN attention workspace by layout"
    timeout 150 "$B/run" train_gpu attn-ws 2>&1 | tee "$O/attn-ws.md" | grep -vE "^\| (32/32|40/10)"
    ;;
L)
    # the memory table's longer cells (README): one step at each CELL (MODEL:GIB:TOKENS:SECONDS,
    # the length train_gpu fit found on the device in part M), with the train stage's plan within
    # that memory_budget, while this call's time lasts: a cell starts only when its SECONDS (the
    # step's estimate, with the model's set-up) are left; then `python3 bench/memory_table.py L`
    # prints README's table with L's steps in it
    shift
    end=$(( $(date +%s) + ${L_SECONDS:-570} ))
    for cell in "$@"; do
        IFS=: read -r mdl bud len est <<< "$cell"
        left=$(( end - $(date +%s) ))
        [ $left -lt $est ] && { echo "$mdl $bud GiB $len: not started ($left s left, about $est s needed)"; continue; }
        stamp "$mdl at $len tokens within $bud GiB"
        table_step $mdl $bud $len $left
    done
    ;;
F)
    stamp determinism
    OUT=$O DET_RUNS=2 BUNDLE=$B timeout 330 bash bench/gpu-determinism.sh > "$O/determinism.txt" 2>&1
    grep -E "^== (PASS|FAIL)|tok/s|spread|final loss" "$O/determinism.txt" | head -30
    ;;
B)
    rm -rf .device/lora && ln -s "$B" .device/lora
    OUT=$O/lora timeout 330 bash bench/gpu-lora.sh 2>&1 | tail -40
    cp bench/gpu-phi3.sh "$B/gpu-phi3.sh"
    OUT=$O BUDGET=150 timeout 220 bash "$B/gpu-phi3.sh" 2>&1 | tail -40
    ;;
C)
    E=$NB/evaltasks
    mkdir -p "$E" && cp bench/evaltasks/* "$E/" && ln -sfn "$B" "$E/bundle"
    OUT=$O timeout 330 bash "$E/run.sh" 2>&1 | tail -30
    stamp "family rows: qlora-run (train_gpu) and transformers + peft + bitsandbytes, 2048 x 1, no recompute"
    for m in llama3-8b qwen3-8b gemma3-12b; do
        for t in q,v all-linear; do
            timeout 60 "$B/run" train_gpu train --model $m --targets $t --seq 2048 --batch 1 --ckpt auto --steps 6 \
                --warmup 2 2>&1 | grep -E "^\||error"
        done
    done | tee "$O/rows.log"
    ;;
E)
    stamp "the peer for part C's family rows: transformers + peft + bitsandbytes, 2048 x 1, no recompute"
    export PYTHONPATH=$R/.device/peer/bnb${PYTHONPATH:+:$PYTHONPATH} BNB_COMMIT=$(cat "$R/.device/peer/BNB_COMMIT" 2>/dev/null)
    for s in llama3-8b qwen3-8b gemma3-12b; do
        timeout 150 python3 bench/hf_qlora_bench.py --shape $s --model-dir /tmp/hf-$s --qlora 2048x1:qv,2048x1:all \
            --no-grad-ckpt --steps 6 --warmup 2 --jsonl "$O/peer.jsonl" > "$O/peer-$s.log" 2>&1
        echo "peer $s rc=$?"; rm -rf /tmp/hf-$s
    done
    grep -h '"phase": "bench"' "$O/peer.jsonl" 2>/dev/null | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print(r["label"], r["tokens_per_s"], "tok/s", r["peak_alloc_gib"], "GiB peak")'
    ;;
D)
    stamp "dense weights: train_gpu rows, --dense on against off"
    for row in "7b q,v 2048 1" "7b all-linear 2048 1" "7b q,v 2048 4" "1b q,v 2048 4"; do
        set -- $row
        for d in on off; do
            timeout 70 "$B/run" train_gpu train --model $1 --targets $2 --seq $3 --batch $4 --ckpt auto --steps 8 \
                --warmup 2 --dense $d 2>&1 | grep -E "^\||kept dequantized|error"
        done
    done | tee "$O/rows.log"
    stamp "dense weights change no bit: deterministic 7B q,v, --dense on and off, the same checksum"
    for d in on off; do
        timeout 70 "$B/run" train_gpu train --model 7b --targets q,v --seq 2048 --batch 1 --steps 6 --warmup 0 \
            --deterministic on --dense $d 2>&1 | grep -E "^checksum|error"
    done | tee "$O/det-checksums.log"
    [ "$(grep -c '^checksum' "$O/det-checksums.log")" = 2 ] && [ "$(cut -d, -f1 "$O/det-checksums.log" | sort -u | wc -l)" = 1 ] \
        && echo "== PASS: the same checksum with and without dense weights" || echo "== FAIL: checksums differ"
    stamp "the bench recipe (1b preset, 12 steps): dense_weights auto and off"
    for d in auto off; do
        QLORA_CACHE=/tmp/dcache QLORA_RUNS=/tmp/druns timeout 120 "$B/run" qlora-run "$R/recipes/bench-7b.yaml" \
            --set stages.base.preset=1b --set stages.train.max_steps=12 --set stages.train.dense_weights=$d --force train \
            > "$O/recipe-$d.log" 2>&1
        echo "recipe dense_weights=$d rc=$?"
        grep -E "kept dequantized|dequantized in each pass|kernels:|step (6|12)/" "$O/recipe-$d.log" | tail -5
    done
    ;;
*) echo "PART must be A, B, C, D, E or F"; exit 2 ;;
esac
stamp "end of part $PART"
