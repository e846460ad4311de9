#!/usr/bin/env bash
# evaluate's `tasks:` (eval/mc.c) through the real program: MMLU (2-shot from a dev file), ARC
# (a seeded subset) and HellaSwag on a generated model; metrics in the manifest, per-subject
# results, the task files in the cache key, and bad tasks refused with their position.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
jqt() { jq -e "$@" >/dev/null; }
cp "$SRC"/tests/recipes/tasks/* "$T/"
cd "$T"
export QLORA_CACHE=$T/cache QLORA_RUNS=$T/runs
"$BIN" tasks.yaml --quiet >"$T/run.log" 2>&1
rc=$?
check "the recipe with tasks runs (rc $rc)" test $rc -eq 0
[ $rc -eq 0 ] || cat "$T/run.log"
art=$(ls -d "$T"/cache/artifacts/evaluate/*/ 2>/dev/null | head -1)
m="$art/manifest.json"
check "manifest has mmlu.acc_base and acc_norm_base" jqt '.metrics["mmlu.acc_base"] >= 0 and .metrics["mmlu.acc_norm_base"] <= 1' "$m"
check "manifest has arc and hellaswag" jqt '.metrics["arc.acc_base"] != null and .metrics["hellaswag.acc_base"] != null' "$m"
r="$art/results.json"
check "per-subject MMLU results" jqt '.tasks.mmlu.base.subjects | has("anatomy") and has("high school mathematics")' "$r"
check "every MMLU question scored with four log-likelihoods below 0" jqt '[.tasks.mmlu.base.docs[] | .loglik | length == 4 and all(. < 0)] | all and length == 12' "$r"
check "limit: 4 ARC questions" jqt '.tasks.arc.base.n == 4' "$r"
check "acc is the share of argmax == gold" jqt '(.tasks.mmlu.base.docs | map(if .pred == .gold then 1 else 0 end) | add / length) == .tasks.mmlu.base.acc' "$r"
# the log-likelihoods and accuracies against transformers (tests/golden/make_mc_golden.py, fp32, run
# on the weights our engine computes with: the NF4 base dequantized, exported in f32): results.json
# R against the dump G, for the model WHO. Both sides compute in fp32 on the same weights, so 1e-4
# is room for summation order only (the dumps of 2026-12-05 agree within 5e-6)
mc_against() {
  local g=$1 r=$2 who=$3 worst
  worst=$(jq -n --slurpfile g "$g" --slurpfile r "$r" '
    [ $g[0] | to_entries[] | .key as $t | .value.loglik | to_entries[] | .key as $i | .value | to_entries[]
      | (.value - $r[0].tasks[$t].base.docs[$i].loglik[.key]) | fabs ] | max')
  check "$who: every choice's log-likelihood within ${MC_TOL:=1e-4} of transformers' (worst $worst)" \
    awk -v w="$worst" -v t="$MC_TOL" 'BEGIN { exit !(w != "" && w + 0 <= t + 0) }'
  for t in mmlu arc hellaswag; do
    check "$who $t: acc and acc_norm equal transformers'" jqt -n --slurpfile g "$g" --slurpfile r "$r" \
      "\$g[0].$t.acc == \$r[0].tasks.$t.base.acc and \$g[0].$t.acc_norm == \$r[0].tasks.$t.base.acc_norm"
  done
}
mc_against "$SRC/tests/golden/mc/golden.json" "$r" llama
# the other families' dumps (tests/golden/make_mc_golden_families.sh; golden.json is the llama's):
# the same tasks on a generated model of each
for g in "$SRC"/tests/golden/mc/*.json; do
  f=$(basename "$g" .json)
  case $f in golden|llama) continue ;; esac
  QLORA_CACHE=$T/cache-$f QLORA_RUNS=$T/runs-$f "$BIN" tasks.yaml --set stages.base.arch=$f --quiet >"$T/run-$f.log" 2>&1
  rc=$?
  check "$f: the tasks run (rc $rc)" test $rc -eq 0
  mc_against "$g" "$(ls "$T"/cache-$f/artifacts/evaluate/*/results.json 2>/dev/null | head -1)" "$f"
done
# dense_weights: on (the linears kept dequantized; not part of the key, so --force): every
# log-likelihood the same, bit for bit, and the log says so; a budget without a unit is refused
cp "$r" "$T/results-nf4.json"
"$BIN" tasks.yaml --set stages.eval.dense_weights=on --force eval >"$T/dense.log" 2>&1
rc=$?
check "dense_weights: on runs (rc $rc)" test $rc -eq 0
check "... and says the weights were kept" grep -q "base weights kept dequantized on cpu: [0-9.]* MiB (dense_weights: on)" "$T/dense.log"
check "... the same log-likelihoods, bit for bit" jqt -n --slurpfile a "$T/results-nf4.json" --slurpfile b "$r" '
  [$a[0].tasks[], $b[0].tasks[]] | length == 6 and
  ([$a[0].tasks | to_entries[] | .value.base.docs[].loglik] == [$b[0].tasks | to_entries[] | .value.base.docs[].loglik])'
"$BIN" validate tasks.yaml --set stages.eval.memory_budget=12 >"$T/mb.log" 2>&1; rc=$?
check "memory_budget without a unit: exit 3 saying how to write it (got $rc)" \
  bash -c "test $rc -eq 3 && grep -q \"memory_budget '12' needs a unit: write 12GB or 12MB\" '$T/mb.log'"
# a second run: cached; an edited task file: evaluate runs again
out=$("$BIN" plan tasks.yaml 2>&1)
check "unchanged: evaluate cached" grep -qE "eval +evaluate +cached" <<<"$out"
sed -i '1s/which one/which two/' mmlu.jsonl
out=$("$BIN" plan tasks.yaml 2>&1)
check "an edited task file re-runs evaluate" grep -qE "eval +evaluate +run" <<<"$out"
check "... and plan says why" grep -q "why: file 'mmlu.jsonl' changed" <<<"$out"
# task metrics are gate-able, higher being better (issue 22 with the nightly gates)
printf 'extends: tasks.yaml\ngates:\n  eval.mmlu.acc_base: {min: 0.0, max_regression: 0.5}\n' > gated.yaml
out=$("$BIN" plan gated.yaml 2>&1)
check "a gate on eval.mmlu.acc_base: higher is better" grep -q "gate eval.mmlu.acc_base: min 0, max_regression 50% (higher is better)" <<<"$out"
# bad tasks: position and fix
cat > bad1.yaml <<'Y'
name: bad1
stages:
  base: {kind: init_model, preset: tiny, hidden: 64, layers: 2}
  eval:
    kind: evaluate
    model: base
    tasks:
      - {name: mmlu, format: mmmlu, path: mmlu.jsonl}
Y
"$BIN" validate bad1.yaml >"$T/b1" 2>&1; rc=$?
check "unknown format: exit 3 (got $rc)" test $rc -eq 3
check "... with the position and the choices" grep -q "bad1.yaml:[0-9]*:[0-9]*: .*tasks\[0\] ('mmlu'): unknown task format 'mmmlu' (mmlu, arc, hellaswag or lua)" "$T/b1"
sed 's/format: mmmlu, path: mmlu.jsonl/format: mmlu, path: nosuch.jsonl/' bad1.yaml > bad2.yaml
"$BIN" validate bad2.yaml >"$T/b2" 2>&1; rc=$?
check "missing task file: exit 3 naming it (got $rc)" bash -c "test $rc -eq 3 && grep -q \"file 'nosuch.jsonl' does not exist\" '$T/b2'"
printf '%s\n' '{"question":"q","subject":"s","choices":["a","b","c","d"],"answer":7}' > broken.jsonl
sed 's/format: mmmlu, path: mmlu.jsonl/format: mmlu, path: broken.jsonl/' bad1.yaml > bad3.yaml
"$BIN" bad3.yaml --quiet >"$T/b3" 2>&1; rc=$?
check "an answer out of range: exit 4 (got $rc)" test $rc -eq 4
check "... naming the file and record" grep -q "broken.jsonl: record 0: answer index 7 is out of range (4 choices)" "$T/b3"
checks_done
