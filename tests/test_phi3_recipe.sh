#!/usr/bin/env bash
# test_phi3_recipe.sh: a whole recipe on the phi3 family, CPU only: the demo recipe
# (recipes/demo.yaml) with its generated tiny model made a phi3 (fused qkv_proj and gate_up_proj),
# 150 steps. The tuned model's validation loss must fall well below the base's and it must get
# some sorts right; the PEFT adapter must name phi3's modules (qkv_proj, o_proj, gate_up_proj,
# down_proj, as peft does for Phi3ForCausalLM) with B over all rows of the fused weight; the merged
# model keeps the fused tensors; the GGUF is a phi3 one.
set -euo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
QLORA_CACHE="$W/cache" QLORA_RUNS="$W/runs" "$BIN" "$SRC/recipes/demo.yaml" --set stages.base.arch=phi3 \
  --set stages.train.max_steps=150 > "$W/log" 2>&1 || { tail -20 "$W/log"; fail "the phi3 demo recipe failed"; }
read -r base tuned < <(awk '/val loss \(data\)/ {print $4, $5}' "$W/log")
score=$(awk '/score \(mean of/ {print $NF}' "$W/log")
echo "phi3 demo: val loss $base -> $tuned, score $score"
awk -v b="$base" -v t="$tuned" 'BEGIN {exit !(t < b - 2)}' || fail "val loss did not fall enough: $base -> $tuned"
awk -v s="$score" 'BEGIN {exit !(s > 0)}' || fail "the tuned phi3 sorts nothing right (score $score)"
E=$(ls -d "$W"/cache/artifacts/export/*)
grep -q '"qkv_proj"' "$E/adapter/adapter_config.json" && grep -q '"gate_up_proj"' "$E/adapter/adapter_config.json" ||
  fail "adapter_config.json does not target phi3's fused modules: $(grep -A6 target_modules "$E/adapter/adapter_config.json")"
header() { local n; n=$(od -An -tu8 -N8 "$1" | tr -d ' '); head -c $((8 + n)) "$1" | tail -c "$n"; }
h=$(header "$E/adapter/adapter_model.safetensors")
# r 16, hidden 64, 4 heads and 2 kv heads of 16: qkv_proj's B is [64 + 2*32, 16]; gate_up_proj's [2*128, 16]
[[ $h == *'"base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight":{"dtype":"F32","shape":[128,16]'* ]] ||
  fail "qkv_proj's lora_B is not [128, 16]"
[[ $h == *'"base_model.model.model.layers.1.mlp.gate_up_proj.lora_B.weight":{"dtype":"F32","shape":[256,16]'* ]] ||
  fail "gate_up_proj's lora_B is not [256, 16]"
m=$(header "$E/model/model.safetensors")
[[ $m == *'"model.layers.1.self_attn.qkv_proj.weight":{"dtype":"BF16","shape":[128,64]'* ]] || fail "merged model lacks qkv_proj [128, 64]"
[[ $m != *q_proj* ]] || fail "merged model has a q_proj"
grep -aq 'phi3.rope.dimension_count' "$E"/model-*.gguf && grep -aq 'blk.0.attn_qkv.weight' "$E"/model-*.gguf ||
  fail "the GGUF is not a phi3 one"
echo "phi3 recipe: trained, adapter, merged and GGUF as phi3 has them"
