#!/usr/bin/env bash
# test_export_families.sh: the phi3, qwen3, gemma3 and gemma2 exports that transformers and peft were shown
# to load (tests/golden/check_merged_families.py on the GPU machine's CPU, its log beside it: no
# missing or unexpected key, every LoRA tensor unchanged, the merged weights within half a bf16 step
# of peft's merge_and_unload, merged logits within 4e-3 of base + adapter) are still what
# `qlora-run export` writes. For each family: re-export golden/<f>_adapter against golden/<f>-tiny
# and compare with tests/golden/export_families/<f>/: the adapter byte for byte, the merged model's
# config.json, generation_config.json and safetensors header byte for byte, and its values
# (tests/merged_check.py: base + scale * B @ A rounded to bf16, phi3's fused qkv_proj and
# gate_up_proj included). A failure means the export changed: regenerate as tests/golden/README.md
# says and rerun check_merged_families.py where torch is.
set -euo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
G="$SRC/tests/golden"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v python3 >/dev/null || fail "python3 is needed to compare the merged values (make deps, or apt-get install python3)"
header() { local n; n=$(od -An -tu8 -N8 "$1" | tr -d ' '); head -c $((8 + n)) "$1"; }
for f in phi3 qwen3 gemma3 gemma2; do
  P="$G/export_families/$f"
  "$BIN" export --base "$G/$f-tiny" --adapter "$G/${f}_adapter" --format peft,merged --out "$tmp/$f" >"$tmp/log" 2>&1 ||
    { cat "$tmp/log"; fail "$f: qlora-run export failed"; }
  for x in adapter_config.json adapter_model.safetensors; do
    cmp -s "$tmp/$f/adapter/$x" "$P/adapter/$x" || fail "$f: adapter/$x differs from the proven $P/adapter/$x"
  done
  for x in config.json generation_config.json; do
    cmp -s "$tmp/$f/model/$x" "$P/model/$x" || fail "$f: model/$x differs from the proven $P/model/$x"
  done
  cmp -s <(header "$tmp/$f/model/model.safetensors") <(header "$P/model/model.safetensors") ||
    fail "$f: model/model.safetensors: header differs from the proven one"
  [ "$(ls "$tmp/$f/model" | sort)" = "$(ls "$P/model" | sort)" ] || fail "$f: model/ holds other files than the proven one"
  python3 "$SRC/tests/merged_check.py" "$G/$f-tiny" "$G/${f}_adapter" "$tmp/$f/model" "$P/model" >"$tmp/check" 2>&1 ||
    { cat "$tmp/check"; fail "$f: model/model.safetensors: values"; }
  echo "$f: $(tail -1 "$tmp/check")"
done
# a gemma2 llama.cpp would run as another model (it fixes the score scale at head_dim^-0.5; this one
# has query_pre_attn_scalar 24 of a head_dim of 32) has no GGUF form: an error naming why, no file
if "$BIN" export --base "$G/gemma2-tiny" --adapter "$G/gemma2_adapter" --format gguf --out "$tmp/g2gguf" >"$tmp/log" 2>&1; then
  fail "gemma2: a GGUF was written for query_pre_attn_scalar 24"
fi
grep -q "query_pre_attn_scalar 24, attn_logit_softcapping 1, final_logit_softcapping 3.*has no GGUF form" "$tmp/log" ||
  { cat "$tmp/log"; fail "gemma2: the GGUF refusal does not say why"; }
[ ! -e "$tmp/g2gguf" ] || fail "gemma2: the refused GGUF export left $tmp/g2gguf"
echo "export families: adapters and merged models as proven"
