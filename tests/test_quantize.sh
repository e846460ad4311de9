#!/usr/bin/env bash
# qlora-run quantize / inspect and the quantize_nf4 stage, end to end: the command reproduces
# the transformers-saved fixture's config.json and tensors names, inspect reads both layouts, a
# recipe runs init_model -> quantize_nf4 and caches it, and bad input gives the documented exit
# codes with nothing left behind.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
test_init # W, QLORA_CACHE, QLORA_RUNS
FIX=$SRC/tests/fixtures/bnb

out=$("$BIN" quantize "$FIX/tiny-llama-bf16" "$W/q" 2>&1); rc=$?
[ $rc -eq 0 ] && ok "quantize runs" || bad "quantize rc $rc: $out"
grep -q "^q_proj .* 2 " <<<"$out" && grep -q "^total" <<<"$out" && ok "the table lists module types and a total" || bad "table: $out"
cmp -s "$W/q/config.json" "$FIX/tiny-llama-nf4/config.json" && ok "config.json equals transformers'" || bad "config.json differs"
[ -f "$W/q/generation_config.json" ] && ok "generation_config.json copied" || bad "no generation_config.json"

out=$("$BIN" inspect "$W/q" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "nf4+double quant" <<<"$out" && ok "inspect reads a quantized dir" || bad "inspect rc $rc: $out"
out=$("$BIN" inspect "$FIX/tiny-llama-bf16" 2>&1)
grep -q "^total .* 426624 " <<<"$out" && ok "inspect counts parameters" || bad "inspect: $out"

"$BIN" quantize "$FIX/tiny-llama-nf4" "$W/again" >/dev/null 2>&1; rc=$?
[ $rc -eq 4 ] && [ ! -e "$W/again" ] && ok "an already quantized input is a data error (4)" || bad "requantize rc $rc"
"$BIN" quantize "$FIX/tiny-llama-bf16" "$W/x" --blocksize 48 >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "a bad blocksize is a usage error (2)" || bad "blocksize rc $rc"
"$BIN" quantize --help | grep -q "no-double-quant" && ok "--help" || bad "--help"

cp "$SRC/tests/recipes/quantize/tiny.yaml" "$W/"
out=$("$BIN" "$W/tiny.yaml" 2>&1); rc=$?
[ $rc -eq 0 ] && ok "recipe init_model -> quantize_nf4 runs" || bad "recipe rc $rc: $out"
grep -q "bits each" <<<"$out" && ok "the stage logs its table" || bad "stage table: $out"
m=$(ls -d "$W"/cache/artifacts/quantize_nf4/*/model 2>/dev/null | head -n1)
[ -n "$m" ] && [ -f "$m/model.safetensors" ] && grep -q '"llm_int8_skip_modules": \[' "$m/config.json" \
  && ok "the artifact holds the quantized model with skip_modules" || bad "artifact: '$m'"
man=$(dirname "$m")/manifest.json
grep -q '"rel_rmse"' "$man" && grep -q '"bits_per_param"' "$man" && ok "the manifest keeps the report and metrics" \
  || bad "manifest: $(head -c 300 "$man" 2>/dev/null)"
out=$("$BIN" "$W/tiny.yaml" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "0 ran, 2 cached" <<<"$out" && ! grep -q "bits each" <<<"$out" \
  && ok "second run succeeds with both stages cached" || bad "second run rc $rc: $out"

# a NaN in a weight, through fetch_model (source: path): exit 4, the tensor and index named,
# no quantize_nf4 artifact left in the cache
cp -r "$FIX/tiny-llama-bf16" "$W/nan"
f=$W/nan/model.safetensors
hdr=$(od -An -tu8 -N8 "$f" | tr -d ' ')
off=$(grep -ao '"model.layers.0.self_attn.q_proj.weight":{[^}]*}' "$f" | sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
printf '\xc0\x7f' | dd of="$f" bs=1 seek=$((8 + hdr + off + 2 * 1000)) conv=notrunc 2>/dev/null
cp "$SRC/tests/recipes/quantize/from_path.yaml" "$W/"
before=$(ls "$W"/cache/artifacts/quantize_nf4 2>/dev/null | wc -l)
out=$(MODEL_DIR=$W/nan "$BIN" "$W/from_path.yaml" 2>&1); rc=$?
[ $rc -eq 4 ] && ok "a NaN weight fails the stage with exit 4" || bad "NaN rc $rc: $out"
grep -q "tensor 'model.layers.0.self_attn.q_proj.weight' holds NaN at flat index 1000 (row 7, column 104)" <<<"$out" \
  && ok "the error names the tensor and the first bad index" || bad "NaN message: $out"
n=$(ls "$W"/cache/artifacts/quantize_nf4 2>/dev/null | wc -l)
[ "$n" -eq "$before" ] && ok "nothing committed for the failed stage" || bad "quantize_nf4 artifacts: $before -> $n"

checks_done
