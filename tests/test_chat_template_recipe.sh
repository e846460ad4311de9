#!/usr/bin/env bash
# test_chat_template_recipe.sh: format: chat with a Jinja template through the runner. A
# generated model (byte tokenizer) and a template file: the stage renders each record, trains
# the assistant turns with their end-of-turn marker (data show puts the rest in [[...]]),
# reads ShareGPT records and per-turn train: false; a changed template file means a new cache
# key. Bad input exits 4 with the template's line:col or the record, and caches nothing; a model
# without a template and chat_template: tokenizer_default names the built-in templates.
set -euo pipefail
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
test_init

cat > tpl.jinja <<'EOF2'
{{- bos_token }}
{%- for m in messages %}
    {%- if (m.role == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('roles must alternate user/assistant') }}
    {%- endif %}
    {{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content | trim + '<|eot_id|>' }}
{%- endfor %}
EOF2
cat > chat.jsonl <<'EOF2'
{"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}
{"conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1", "train": false}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": " A2 "}]}
EOF2
recipe() { # recipe NAME FILE [DATASET LINE...]
    local name=$1 file=$2
    shift 2
    dataset_recipe "$name" "path: $file" "format: chat" "sequence_len: 256" "shuffle: false" "$@" > "$name.yaml"
}
recipe good chat.jsonl "chat_template_file: tpl.jinja" "eot_tokens: ['<|eot_id|>']"
"$QLORA_BIN" good.yaml > out.txt 2>&1 || { cat out.txt; fail "the recipe with a template file"; }
grep -q "chat template: .*tpl.jinja" out.txt || { cat out.txt; fail "the log does not name the template"; }
"$QLORA_BIN" data show good.yaml data > show.txt 2>&1 || { cat show.txt; fail "data show"; }
grep -qF '[[<s><|start_header_id|>user<|end_header_id|>

Hi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>

]]Hello!<|eot_id|>' show.txt || { cat show.txt; fail "record 0: the assistant turn and its marker are not the trained span"; }
grep -qF '[[<s><|start_header_id|>user<|end_header_id|>

Q1<|eot_id|><|start_header_id|>assistant<|end_header_id|>

A1<|eot_id|><|start_header_id|>user<|end_header_id|>

Q2<|eot_id|><|start_header_id|>assistant<|end_header_id|>

]]A2<|eot_id|>' show.txt || { cat show.txt; fail "record 1 (ShareGPT, train: false on A1)"; }
"$QLORA_BIN" good.yaml > out2.txt 2>&1
grep -q "0 ran, 2 cached" out2.txt || { cat out2.txt; fail "second run not cached"; }
echo "{#- changed -#}" >> tpl.jinja
"$QLORA_BIN" plan good.yaml > plan.txt 2>&1
grep -A1 "^  data" plan.txt | grep -q "run" || { cat plan.txt; fail "a changed template did not invalidate the dataset"; }

expect4() { # $1 recipe, $2 message pattern
    local before after
    before=$(ls cache/artifacts/dataset 2>/dev/null | wc -l)
    expect_fail 4 "$2" "$QLORA_BIN" "$1.yaml"
    after=$(ls cache/artifacts/dataset 2>/dev/null | wc -l)
    [ "$before" = "$after" ] || fail "$1: a dataset artifact was cached ($before -> $after)"
}
printf '{%% if messages %%}\n{{ messages[0].content }\n' > bad.jinja
recipe badtpl chat.jsonl "chat_template_file: bad.jinja"
expect4 badtpl "bad.jinja:2:"
echo '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}' > alt.jsonl
recipe reject alt.jsonl "chat_template_file: tpl.jinja"
expect4 reject "record 0: .*tpl.jinja:4:13: template error: roles must alternate"
recipe nodefault chat.jsonl "chat_template: tokenizer_default"
expect4 nodefault "has no chat template.*llama-2, llama-3, chatml"
recipe unset chat.jsonl
# unset on a model with no template: the built-in llama-3, whose special tokens this byte tokenizer
# lacks, so an error naming the way out (issue 14 item 8), not a silently broken dataset
expect_fail 3 "chat_template: llama-3 needs the special tokens" "$QLORA_BIN" unset.yaml
echo "ok: chat template recipe, masks, cache key, errors"
