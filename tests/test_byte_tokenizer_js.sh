#!/bin/bash
# test_byte_tokenizer_js.sh: the byte-level tokenizer that `init-model --tokenizer byte` writes
# is loaded by npm's @huggingface/tokenizers (pinned, installed under $QLORA_BUILD/npm) and
# encodes every byte to its own id with <s> first. Skips (exit 0) only when npm is unreachable.
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
VERSION=0.2.0
mkdir -p "$QLORA_BUILD/npm"
export TOKENIZERS_JS_DIR="$(cd "$QLORA_BUILD/npm" && pwd)/tokenizers-$VERSION"
if [ ! -f "$TOKENIZERS_JS_DIR/node_modules/@huggingface/tokenizers/package.json" ]; then
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
        echo "SKIP: node/npm are not installed"; exit 0
    fi
    mkdir -p "$TOKENIZERS_JS_DIR"
    if ! timeout 300 npm install --prefix "$TOKENIZERS_JS_DIR" --no-audit --no-fund --loglevel=error "@huggingface/tokenizers@$VERSION"; then
        if ! timeout 30 npm ping >/dev/null 2>&1; then
            echo "SKIP: the npm registry is unreachable, cannot install @huggingface/tokenizers@$VERSION"; exit 0
        fi
        echo "FAIL: npm install @huggingface/tokenizers@$VERSION failed"; exit 1
    fi
fi
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$QLORA_BIN" init-model --preset tiny --layers 1 --out "$W/m" 2>/dev/null
node "$QLORA_SRC/tests/byte_tokenizer_check.mjs" "$W/m"
