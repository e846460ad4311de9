#!/bin/bash
# test_gguf_js.sh: export a generated tiny model + adapter as GGUF (f16 and q8_0) and merged
# safetensors, then read the GGUF back with an independent reader, npm's @huggingface/gguf
# (pinned, installed under $QLORA_BUILD/npm), checking metadata, tensor names, shapes and
# sampled values against the merged model and against base + adapter. Also the CLI's
# failure paths: a mismatched adapter and an unknown format leave nothing behind.
# Fails when node, npm or the package are missing (tests/npm_pkg.sh).
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
GGUF_VERSION=0.4.6
. "$QLORA_SRC/tests/npm_pkg.sh"
npm_pkg GGUF_JS_DIR @huggingface/gguf "$GGUF_VERSION"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
CHECK="$QLORA_SRC/tests/gguf_check.mjs"

for arch in llama qwen2; do
    "$QLORA_BIN" init-model --arch $arch --preset tiny --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
        --intermediate 96 --seed 5 --out "$W/$arch" 2>/dev/null
    node "$CHECK" make-adapter "$W/$arch" "$W/$arch-adapter"
    for type in f16 q8_0; do
        "$QLORA_BIN" export --base "$W/$arch" --adapter "$W/$arch-adapter" --format peft,merged,gguf \
            --gguf-type $type --out "$W/$arch-$type" 2>/dev/null
        node "$CHECK" check "$W/$arch" "$W/$arch-adapter" "$W/$arch-$type/model" "$W/$arch-$type/model-$type.gguf"
    done
done

# an adapter made for another model: exit 4, nothing written
"$QLORA_BIN" init-model --preset tiny --hidden 128 --layers 2 --seed 1 --out "$W/wide" 2>/dev/null
set +e
"$QLORA_BIN" export --base "$W/wide" --adapter "$W/llama-adapter" --format merged --out "$W/bad" 2>"$W/err"
rc=$?
set -e
[ $rc -eq 4 ] || { echo "FAIL: mismatched adapter: exit $rc (want 4)"; cat "$W/err"; exit 1; }
grep -q "another base model" "$W/err" || { echo "FAIL: mismatched adapter message:"; cat "$W/err"; exit 1; }
[ ! -e "$W/bad" ] || { echo "FAIL: '$W/bad' exists after a failed export"; exit 1; }
ls "$W" | grep -q '\.tmp\.' && { echo "FAIL: temp directory left behind"; ls "$W"; exit 1; }
set +e
"$QLORA_BIN" export --base "$W/wide" --format onnx --out "$W/bad" 2>"$W/err"
rc=$?
set -e
[ $rc -eq 2 ] || { echo "FAIL: unknown format: exit $rc (want 2)"; exit 1; }
grep -q "peft, merged or gguf" "$W/err" || { echo "FAIL: unknown format message:"; cat "$W/err"; exit 1; }
echo "ok"
