#!/usr/bin/env bash
# test_output_dir.sh: what exports name their base model by (issue 14 item 15: peft's
# base_model_name_or_path, GGUF general.name), and a recipe's output_dir / --out, where users find
# the exports without the cache's hash paths (docs/exports.md).
set -uo pipefail
: "${QLORA_BIN:?}" "${QLORA_SRC:=$(pwd)}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
BAD_SHOW=out.txt # bad shows the output of the last run
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export QLORA_CACHE="$W/cache" QLORA_RUNS="$W/runs"
cd "$W"
run() { "$QLORA_BIN" "$@" > out.txt 2>&1; }
gname() { python3 "$QLORA_SRC/tests/gguf_kv.py" "$1" general.name 2>&1; }
base_name() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["base_model_name_or_path"])' "$1" 2>&1; }

recipe() { # name, output_dir line (may be empty), base stage
    printf 'name: %s\n%s\nstages:\n%s\n' "$1" "$2" "$3"
    printf '  nf4: {kind: quantize_nf4, model: base}\n  lora: {kind: attach_lora, model: nf4}\n'
    printf '  export: {kind: export, model: nf4, adapter: lora, formats: [peft, gguf]}\n'
}
GEN='  base: {kind: init_model, hidden: 64, layers: 1}'

# ---- a generated base: no name a user can load it by, never the stage's or a cache path
mkdir -p gen/recipes && cd gen
recipe gen 'output_dir: ../exports' "$GEN" > recipes/r.yaml
run recipes/r.yaml
E="$W/gen/exports/export"
if [ "$(base_name "$E/adapter/adapter_config.json")" = None ]; then ok "generated base: base_model_name_or_path is null"
else bad "generated base named $(base_name "$E/adapter/adapter_config.json")"; fi
if [ "$(gname "$E/model-f16.gguf")" = generated-llama ]; then ok "generated base: general.name generated-llama"
else bad "generated base: general.name $(gname "$E/model-f16.gguf")"; fi

# ---- output_dir: relative to the recipe's folder, one folder per export stage, a marker
A=$(sed -n 's/^  export: //p' out.txt)
if [ -f exports/.qlora-run-output ] && [ -d "$E/adapter" ] && cmp -s "$A/model-f16.gguf" "$E/model-f16.gguf" &&
   cmp -s "$A/adapter/adapter_model.safetensors" "$E/adapter/adapter_model.safetensors" &&
   [ ! -e "$E/manifest.json" ] && grep -q "exports of 'export' in $W/gen/recipes/../exports/export" out.txt
then ok "output_dir holds the exports, equal to the cache's"
else bad "output_dir: $(ls -la exports "$E" 2>&1)"; fi

# a user's file beside the stage folders stays; a cached re-run copies again
echo mine > exports/notes.txt
rm -rf "$E/adapter"
run recipes/r.yaml
if [ $? -eq 0 ] && [ "$(cat exports/notes.txt)" = mine ] && [ -f "$E/adapter/adapter_config.json" ] && grep -q "4 cached" out.txt
then ok "a cached re-run copies the exports again, a user's notes stay"
else bad "re-run into a previous output_dir"; fi

# a user's file inside a stage folder: refused before any stage runs, nothing removed
echo mine > "$E/keep.txt"
run recipes/r.yaml --force nf4
if [ $? -eq 2 ] && grep -q "keep.txt" out.txt && [ -f "$E/keep.txt" ] && ! grep -q "ran" out.txt
then ok "a stage folder with a user's file is refused before the stages run"
else bad "a user's file inside the stage folder"; fi
rm "$E/keep.txt"

# a non-empty folder that is no output of this recipe, and another recipe's output: refused
mkdir -p theirs && echo x > theirs/a.txt
run recipes/r.yaml --out theirs
if [ $? -eq 2 ] && grep -q "not a previous output of this recipe" out.txt && [ "$(ls theirs)" = a.txt ]
then ok "--out a user's folder: refused, untouched"
else bad "--out a user's folder"; fi
run recipes/r.yaml --out theirs --until lora
if [ $? -eq 0 ] && [ "$(ls theirs)" = a.txt ]; then ok "a run that exports nothing does not check --out"
else bad "--until lora with a user's folder as --out"; fi
recipe other '' "$GEN" > recipes/other.yaml
run recipes/other.yaml --out exports
if [ $? -eq 2 ] && grep -q "holds the exports of recipe 'gen'" out.txt; then ok "another recipe's output_dir: refused"
else bad "another recipe's output_dir"; fi

# --out overrides output_dir, relative to the current folder
run recipes/r.yaml --out fresh
if [ $? -eq 0 ] && [ -f fresh/export/model-f16.gguf ] && [ -f fresh/.qlora-run-output ]; then ok "--out overrides output_dir"
else bad "--out"; fi
run validate recipes/r.yaml --set output_dir=
if [ $? -eq 3 ] && grep -q "output_dir" out.txt; then ok "an empty output_dir is a recipe error"
else bad "empty output_dir"; fi
cd "$W"

# ---- a folder base: its real path, as peft writes from_pretrained's argument
mkdir -p fold && cd fold
"$QLORA_BIN" init-model --out mybase --hidden 64 --layers 1 > /dev/null 2>&1
recipe fold 'output_dir: out' '  base: {kind: fetch_model, source: path, path: mybase}' > r.yaml
run r.yaml
if [ "$(base_name out/export/adapter/adapter_config.json)" = "$(realpath mybase)" ] &&
   [ "$(gname out/export/model-f16.gguf)" = mybase ]; then ok "folder base: its path and its name"
else bad "folder base: $(base_name out/export/adapter/adapter_config.json) / $(gname out/export/model-f16.gguf)"; fi

# ---- qlora-run export on artifacts: the GGUF is named as the stage names the model
Q=$(ls -d "$QLORA_CACHE"/artifacts/quantize_nf4/* | head -1)
L=$(ls -d "$QLORA_CACHE"/artifacts/attach_lora/* | head -1)
for q in "$QLORA_CACHE"/artifacts/quantize_nf4/*; do
    grep -q '"model_name"' "$q/manifest.json" && Q=$q
done
"$QLORA_BIN" export --base "$Q" --adapter "$L" --format gguf --out ex > out.txt 2>&1
if [ "$(gname ex/model-f16.gguf)" = mybase ]; then ok "export --base ARTIFACT: general.name from its manifest"
else bad "export --base ARTIFACT: general.name $(gname ex/model-f16.gguf)"; fi
cd "$W"

checks_done
