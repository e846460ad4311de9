#!/usr/bin/env bash
# make_mc_golden_families.sh: transformers' log-likelihoods of tests/recipes/tasks' three tasks for
# a generated model of each family (golden/mc/FAMILY.json), as golden/mc/golden.json is the llama's.
# Part one runs anywhere qlora-run is built: for each family, tasks.yaml with --set
# stages.base.arch=FAMILY (init_model's tiny shape, hidden 64, 2 layers, seed 1), then the weights
# the engine computes with (NF4, exported dequantized in f32, as the CPU path computes with them)
# into OUT/deq-FAMILY/model and the stage's results into OUT/ours-FAMILY.json. Part two needs torch and transformers (the GPU machine's
# CPU): make_mc_golden.py on each of them.
#
#   BIN=build/qlora-run tests/golden/make_mc_golden_families.sh OUT            # part one
#   tests/golden/make_mc_golden_families.sh --score OUT tests/golden/mc        # part two
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
FAMILIES="llama mistral qwen2 qwen3 gemma2 gemma3 phi3"
if [ "${1:-}" = --score ]; then
  out=$2 dst=$3
  for f in $FAMILIES; do
    python3 "$SRC/tests/golden/make_mc_golden.py" "$out/deq-$f/model" "$SRC/tests/recipes/tasks" \
      "$(cat "$out/arc-pick-$f.json")" > "$dst/$f.json.tmp" && mv "$dst/$f.json.tmp" "$dst/$f.json"
  done
  exit 0
fi
out=$(mkdir -p "$1" && cd "$1" && pwd)
BIN=$(cd "$(dirname "${BIN:?BIN=path to qlora-run}")" && pwd)/$(basename "$BIN")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$SRC"/tests/recipes/tasks/* "$work/"
cd "$work"
for f in $FAMILIES; do
  QLORA_CACHE=$work/c-$f QLORA_RUNS=$work/r-$f "$BIN" tasks.yaml --set stages.base.arch=$f --quiet
  cp c-$f/artifacts/evaluate/*/results.json "$out/ours-$f.json"
  jq -c '[.tasks.arc.base.docs[].record]' "$out/ours-$f.json" > "$out/arc-pick-$f.json"
  rm -rf "$out/deq-$f" nf4-$f
  "$BIN" quantize c-$f/artifacts/init_model/*/model nf4-$f > log 2>&1 || { cat log; exit 1; }
  "$BIN" export --base nf4-$f --format merged --merged-dtype f32 --out "$out/deq-$f" > log 2>&1 || { cat log; exit 1; }
done
