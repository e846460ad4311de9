#!/bin/sh
# curve-check.sh: bench/curve-check.yaml on the CPU and on the GPU (separate caches), then the
# two loss curves side by side: every 20th step, the mean |difference| of the per-step losses,
# the largest difference of a 10-step mean, and both final eval losses.
# usage: bench/curve-check.sh [QLORA_BIN] [WORK_DIR]   (from the repository root)
set -e
bin=${1:-build/qlora-run}
work=${2:-/tmp/curve-check}
recipe=$(pwd)/bench/curve-check.yaml
mkdir -p "$work"
for dev in cpu cuda; do
    QLORA_CACHE="$work/cache-$dev" QLORA_RUNS="$work/runs-$dev" "$bin" "$recipe" --set device=$dev \
        > "$work/$dev.out" 2>&1 || { cat "$work/$dev.out"; exit 1; }
    cp "$(ls -d "$work"/cache-$dev/artifacts/train/*/ | head -1)/train_log.jsonl" "$work/$dev.jsonl"
    grep -E "loading|device:|plan:|kernels:|eval step|train done" "$work/$dev.out" | sed "s/^/$dev: /"
done
python3 - "$work/cpu.jsonl" "$work/cuda.jsonl" <<'PY'
import json, sys
def load(p):
    steps, evals = {}, {}
    for line in open(p):
        r = json.loads(line)
        if r["type"] == "step": steps[r["step"]] = r["loss"]
        elif r["type"] == "eval": evals[r["step"]] = r["val_loss"]
    return steps, evals
(cs, ce), (gs, ge) = load(sys.argv[1]), load(sys.argv[2])
n = min(max(cs), max(gs))
print("| step | cpu loss | gpu loss | diff |\n|---|---|---|---|")
for s in range(1, n + 1):
    if s == 1 or s % 20 == 0: print(f"| {s} | {cs[s]:.4f} | {gs[s]:.4f} | {gs[s]-cs[s]:+.4f} |")
d = [abs(gs[s] - cs[s]) for s in range(1, n + 1)]
w = [abs(sum(gs[s] for s in range(a, a + 10)) - sum(cs[s] for s in range(a, a + 10))) / 10 for a in range(1, n - 8, 10)]
print(f"steps {n}: mean |gpu - cpu| per step {sum(d)/len(d):.4f}, max {max(d):.4f}; worst 10-step mean diff {max(w):.4f}")
for s in sorted(set(ce) & set(ge)): print(f"eval step {s}: cpu {ce[s]:.4f} gpu {ge[s]:.4f} ({(ge[s]-ce[s])/ce[s]*100:+.2f}%)")
PY
