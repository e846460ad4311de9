#!/bin/bash
# test_model_stages.sh: the init_model and export stage kinds through the runner: a recipe
# that generates a tiny model and exports it merged and as GGUF runs, is cached on the second
# run, and recipes with bad export parameters are rejected at validation (exit 3).
set -euo pipefail
: "${QLORA_BIN:?}"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export QLORA_CACHE="$W/cache"
cat > "$W/r.yaml" <<'YAML'
name: model-stages
seed: 3
stages:
  base:
    kind: init_model
    arch: qwen2
    layers: 1
    hidden: 64
  out:
    kind: export
    model: base
    formats: [merged, gguf]
    gguf_type: q8_0
YAML
cd "$W"
"$QLORA_BIN" r.yaml --quiet >/dev/null 2>&1 || { echo "FAIL: the recipe did not run"; "$QLORA_BIN" r.yaml; exit 1; }
art=$(ls -d cache/artifacts/export/*/ | head -1)
for f in model/config.json model/model.safetensors model/tokenizer.json model-q8_0.gguf; do
    [ -s "$art/$f" ] || { echo "FAIL: export artifact lacks $f"; ls -R "$art"; exit 1; }
done
grep -q '"model_type": "qwen2"' "$art/model/config.json" || { echo "FAIL: merged config"; exit 1; }
base=$(ls -d cache/artifacts/init_model/*/ | head -1)
grep -q '"hidden_size": 64' "$base/model/config.json" || { echo "FAIL: init_model config"; exit 1; }
# every stage cached (the export too, not just one of them)
"$QLORA_BIN" plan r.yaml > plan.txt 2>&1 || { cat plan.txt; echo "FAIL: plan failed"; exit 1; }
for s in base out; do
    grep -Eq "^  $s +[a-z_]+ +cached " plan.txt || { cat plan.txt; echo "FAIL: stage '$s' is not cached in the second plan"; exit 1; }
done
expect_invalid() { # sed-expression expected-text
    sed "$1" r.yaml > bad.yaml
    set +e
    "$QLORA_BIN" validate bad.yaml > out.txt 2>&1
    rc=$?
    set -e
    [ $rc -eq 3 ] || { echo "FAIL: '$1': exit $rc (want 3)"; cat out.txt; exit 1; }
    grep -q "$2" out.txt || { echo "FAIL: '$1': message lacks '$2'"; cat out.txt; exit 1; }
}
expect_invalid "s/gguf_type: q8_0/gguf_type: q4_k/" "q4_k"
expect_invalid "s/formats: .*/formats: [peft]/" "needs an adapter"
expect_invalid "s/gguf_type: q8_0/max_shard_size: 5 parsecs/" "bad size"
expect_invalid "s/formats: .*/formats: [onnx]/" "onnx"
expect_invalid "s/hidden: 64/hidden: 65/" "multiple of"

# the QLoRA path: generated -> NF4 -> LoRA attached -> every export, with the 4-bit checkpoint
cat > q.yaml <<'YAML'
name: model-stages-qlora
seed: 4
stages:
  base:
    kind: init_model
    layers: 2
  nf4:
    kind: quantize_nf4
    model: base
  lora:
    kind: attach_lora
    model: nf4
    lora_r: 4
    lora_target_modules: [q_proj, v_proj, down_proj]
  out:
    kind: export
    model: nf4
    adapter: lora
    formats: [peft, merged, gguf]
    gguf_type: f16
    include_nf4: true
YAML
"$QLORA_BIN" q.yaml --quiet >/dev/null 2>&1 || { echo "FAIL: the QLoRA recipe did not run"; "$QLORA_BIN" q.yaml; exit 1; }
nf4dir=$(ls -d cache/artifacts/export/*/nf4 2>/dev/null | head -1 || true)
[ -n "$nf4dir" ] || { echo "FAIL: no export artifact with nf4/"; exit 1; }
art=$(dirname "$nf4dir")
for f in adapter/adapter_config.json adapter/adapter_model.safetensors model/config.json model-f16.gguf nf4/config.json nf4/model.safetensors; do
    [ -s "$art/$f" ] || { echo "FAIL: export artifact lacks $f"; ls -R "$art"; exit 1; }
done
lora=$(ls -d cache/artifacts/attach_lora/*/ | head -1)
cmp -s "$lora/adapter/adapter_config.json" "$art/adapter/adapter_config.json" ||
    { echo "FAIL: the exported adapter_config.json differs from attach_lora's"; diff "$lora/adapter/adapter_config.json" "$art/adapter/adapter_config.json"; exit 1; }
grep -q quantization_config "$art/model/config.json" && { echo "FAIL: merged config keeps quantization_config"; exit 1; }
grep -q quantization_config "$art/nf4/config.json" || { echo "FAIL: nf4/config.json lacks quantization_config"; exit 1; }
echo ok
