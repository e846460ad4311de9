#!/usr/bin/env bash
# test_export_proven.sh: the exports proven loadable by transformers and peft (tests/golden/export,
# check_export.py, test_export_golden.c) are still what `qlora-run export` writes today. Re-exports
# the committed adapter against the committed base and compares: the adapter byte for byte, the
# merged model's config, tokenizer files and safetensors header (names, dtypes, shapes, offsets)
# byte for byte, and its values (tests/merged_check.py): each targeted weight is base + scale *
# B @ A rounded to bf16, the others the base's bytes, and all within 1.5 bf16 steps of the proven
# merged/ (which started from the NF4 checkpoint's fp32 weights, this one from their bf16 copy).
# A failure means the export changed: regenerate as tests/golden/README.md says and rerun
# check_export.py where torch is.
set -euo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
G="$SRC/tests/golden/export"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$BIN" export --base "$G/base" --adapter "$G/adapter_list" --format peft,merged --out "$tmp/out" >"$tmp/log" 2>&1 ||
  { cat "$tmp/log"; fail "qlora-run export failed"; }
for f in adapter_config.json adapter_model.safetensors; do
  cmp -s "$tmp/out/adapter/$f" "$G/adapter_list/$f" || fail "adapter/$f differs from the proven tests/golden/export/adapter_list/$f"
done
for f in config.json generation_config.json tokenizer.json tokenizer_config.json special_tokens_map.json; do
  cmp -s "$tmp/out/model/$f" "$G/merged/$f" || fail "model/$f differs from the proven tests/golden/export/merged/$f"
done
header() { local n; n=$(od -An -tu8 -N8 "$1" | tr -d ' '); head -c $((8 + n)) "$1"; }
cmp -s <(header "$tmp/out/model/model.safetensors") <(header "$G/merged/model.safetensors") ||
  fail "model/model.safetensors: header differs from the proven tests/golden/export/merged/model.safetensors"
[ "$(ls "$tmp/out/model" | sort)" = "$(ls "$G/merged" | sort)" ] || fail "model/ holds other files than the proven merged/"
command -v python3 >/dev/null || fail "python3 is needed to compare the merged values (make deps, or apt-get install python3)"
python3 "$SRC/tests/merged_check.py" "$G/base" "$G/adapter_list" "$tmp/out/model" "$G/merged" || fail "model/model.safetensors: values"
echo "export golden: adapter and merged model as proven"
