#!/usr/bin/env bash
# test_chat_template_spans.sh: the {% generation %} spans of `qlora-run chat-template --spans`
# (the characters that format: chat trains when a template marks its assistant turns) against
# transformers' render_jinja_template(..., return_assistant_tokens_mask=True) over the 240
# conversations of tests/chat_template/corpus.jsonl (string contents only, as the golden script
# renders them), with tests/chat_template/chatml_generation.jinja. The golden file
# tests/chat_template/golden/chatml.spans.jsonl was written on the GPU machine by
# `render_goldens.py corpus.jsonl OUT --spans chatml=chatml_generation.jinja` (transformers 5.17).
# Every record's text and spans must be equal (format: chat trains exactly these spans, plus the
# end-of-turn token train/chat_format.c adds).
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_SRC:=.}"
T="$QLORA_SRC/tests/chat_template"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
echo '{}' > "$W/tokenizer_config.json"
python3 - "$T/corpus.jsonl" > "$W/in.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    msgs = [m for m in r["messages"] if isinstance(m.get("content"), str)]
    print(json.dumps({"messages": msgs, "add_generation_prompt": bool(r.get("add_generation_prompt"))}, ensure_ascii=False))
PY
"$QLORA_BIN" chat-template --model "$W" --template "$T/chatml_generation.jinja" --spans < "$W/in.jsonl" > "$W/ours.jsonl"
python3 - "$W/ours.jsonl" "$T/golden/chatml.spans.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
gold = [json.loads(l) for l in open(sys.argv[2], encoding="utf-8")]
assert len(ours) == len(gold), f"{len(ours)} records rendered, golden has {len(gold)}"
bad = 0
n_spans = 0
for i, (o, g) in enumerate(zip(ours, gold)):
    gs = [list(s) for s in g["spans"]]
    n_spans += len(gs)
    if o["text"] != g["text"] or o["spans"] != gs:
        bad += 1
        if bad <= 3:
            print(f"record {i}: text equal: {o['text'] == g['text']}; ours {o['spans']}, transformers {gs}")
assert bad == 0, f"{bad} of {len(gold)} records differ from transformers"
assert n_spans > 100, f"only {n_spans} spans: the golden file does not exercise generation blocks"
print(f"{len(gold)} records, {n_spans} generation spans equal to transformers'")
PY
