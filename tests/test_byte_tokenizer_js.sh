#!/bin/bash
# test_byte_tokenizer_js.sh: the byte-level tokenizer that `init-model --tokenizer byte` writes
# is loaded by npm's @huggingface/tokenizers (pinned, installed under $QLORA_BUILD/npm) and
# encodes every byte to its own id with <s> first. Fails when node, npm or the package are missing.
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
VERSION=0.2.0
. "$QLORA_SRC/tests/npm_pkg.sh"
npm_pkg TOKENIZERS_JS_DIR @huggingface/tokenizers "$VERSION"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$QLORA_BIN" init-model --preset tiny --layers 1 --out "$W/m" 2>/dev/null
node "$QLORA_SRC/tests/byte_tokenizer_check.mjs" "$W/m"
