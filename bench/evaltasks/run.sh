#!/bin/bash
# run.sh: the evaluate speed benchmark on the GPU machine (bench/RESULTS.md): a generated 7B
# (qlora-run init-model --preset 7b) scores 14,042 5-shot MMLU-shaped questions through the
# evaluate stage (the linears kept dequantized when they fit: dense_weights auto), then a plain
# transformers loop scores the same requests for a fixed time, then 150 questions with
# dense_weights on and off, compared bit for bit.
# Self-contained: copied with the bundled qlora-run (../shared/tools/device-bundle) into
# .device/evaltasks/ and run there as .device/evaltasks/run.sh; logs under $OUT/evaltasks/.
set -u
D=$(cd "$(dirname "$0")" && pwd)
O=${OUT:-/tmp/out}/evaltasks
mkdir -p "$O"
HF_SECONDS=${HF_SECONDS:-15}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp start
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv,noheader
python3 "$D/make_mmlu.py" /tmp/mmlu &
"$D/bundle/run" qlora-run init-model --preset 7b --out /tmp/m7b --threads 16 > "$O/init.log" 2>&1; echo "init-model rc=$?"
wait
du -sh /tmp/m7b; wc -l /tmp/mmlu/*.jsonl
# transformers loads meanwhile and starts its timed loop once qlora-run is done
PYTHONUNBUFFERED=1 timeout 300 python3 "$D/hf_loop.py" /tmp/m7b /tmp/mmlu "$HF_SECONDS" /tmp/eval.done > "$O/hf.log" 2>&1 &
hf=$!
stamp evaluate
MODEL_DIR=/tmp/m7b TASK_DIR=/tmp/mmlu QLORA_CACHE=/tmp/qc QLORA_RUNS=/tmp/qr timeout 240 "$D/bundle/run" qlora-run \
  "$D/mmlu7b.yaml" --set device=cuda > "$O/eval.log" 2>&1; echo "evaluate rc=$?"
touch /tmp/eval.done
grep -E "task |device|kept|dequantized in|error|done in|took" "$O/eval.log" | head -20
r=$(ls /tmp/qc/artifacts/evaluate/*/results.json 2>/dev/null | head -1)
[ -n "$r" ] && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); b=r['tasks']['mmlu']['base']; b.pop('docs'); print(json.dumps(b)[:1500])" "$r" > "$O/summary.json"
[ -n "$r" ] && gzip -c "$r" > "$O/results.json.gz"
stamp transformers
wait $hf; echo "hf rc=$?"
grep -vE "Warning|warn" "$O/hf.log" | tail -4
# dense_weights (the linears kept dequantized, chosen by auto above): the same 150 questions with it
# on and off, every log-likelihood compared bit for bit
stamp dense-check
for mode in on off; do
  MODEL_DIR=/tmp/m7b TASK_DIR=/tmp/mmlu QLORA_CACHE=/tmp/qc QLORA_RUNS=/tmp/qr timeout 90 "$D/bundle/run" qlora-run \
    "$D/mmlu7b-150.yaml" --set device=cuda --set stages.eval.dense_weights=$mode --force eval > "$O/dense-$mode.log" 2>&1
  echo "dense_weights $mode rc=$?"
  python3 - "$O/dense-$mode.json" <<'PY'
import glob, json, sys
for p in glob.glob("/tmp/qc/artifacts/evaluate/*/results.json"):
    b = json.load(open(p))["tasks"]["mmlu"]["base"]
    if b["n"] == 150: json.dump([d["loglik"] for d in b["docs"]] + [b["seconds"]], open(sys.argv[1], "w"))
PY
done
python3 - "$O" <<'PY'
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/dense-{m}.json")) for m in ("on", "off"))
same = sum(x == y for u, v in zip(a[:-1], b[:-1]) for x, y in zip(u, v))
print(f"150 questions: {same} of {4 * (len(a) - 1)} log-likelihoods equal bit for bit, dense_weights on vs off; "
      f"{a[-1]:.2f} s vs {b[-1]:.2f} s")
PY
stamp end
