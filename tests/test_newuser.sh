#!/usr/bin/env bash
# test_newuser.sh: what a new user tripped over (issue 14), one check per item, through the
# program as a user runs it. Each check names its item; every one failed before its fix.
set -uo pipefail
: "${QLORA_BIN:?}" "${QLORA_SRC:=$(pwd)}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
BAD_SHOW=out.txt # bad shows the output of the last run
W=$(mktemp -d)
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
export QLORA_CACHE="$W/cache" QLORA_RUNS="$W/runs"
cd "$W"
run() { "$QLORA_BIN" "$@" > out.txt 2>&1; }

base_yaml() { # name, then extra stages on stdin
    printf 'name: %s\nseed: 3\nstages:\n  base:\n    kind: init_model\n    arch: llama\n    layers: 1\n    hidden: 64\n' "$1"
    cat
}

# ---- item 1: a file a hook loads (require at the top, an io read inside format) is keyed
mkdir -p i1 && cd i1
cat > helper.lua <<'LUA'
return {head = "Q: "}
LUA
echo "A: " > answer_prefix.txt
cat > fmt.lua <<'LUA'
local h = require "helper"
function format(r)
  local f = assert(io.open("answer_prefix.txt"))
  local a = f:read("l")
  f:close()
  return {prompt = h.head .. r.q .. "\n", response = a .. r.a}
end
LUA
printf '{"q": "one", "a": "1"}\n{"q": "two", "a": "2"}\n' > d.jsonl
base_yaml i1 > r.yaml <<'YAML'
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: lua
    format_hook: fmt.lua
    sequence_len: 64
  stats:
    kind: lua
    script: stats.lua
    input: data
YAML
echo 'function run(ctx) return {n = 1} end' > stats.lua
if run r.yaml && run r.yaml && grep -q "0 ran" out.txt; then
    echo 'return {head = "Question: "}' > helper.lua
    run plan r.yaml
    if grep -A1 "^  data" out.txt | grep -q "file 'helper.lua' changed"; then ok "1 require'd helper in the key"
    else bad "1 a changed require'd helper left the dataset cached"; fi
    run r.yaml
    run data show r.yaml data
    if grep -q "Question: one" out.txt; then ok "1 data show shows the new prompt"; else bad "1 data show after a helper change"; fi
    echo "Answer: " > answer_prefix.txt
    run plan r.yaml
    if grep -A1 "^  data" out.txt | grep -q "answer_prefix.txt' (read by a hook) changed" &&
       grep -A1 "^  stats" out.txt | grep -q "input 'data' is made again"; then ok "1 a file read inside format() re-runs data and what follows"
    else bad "1 a file read by format() at run time left the dataset cached"; fi
    run r.yaml
    run r.yaml
    grep -q "0 ran" out.txt && ok "1 cached again after the re-run" || bad "1 not cached after the re-run"
else bad "1 first runs"; fi
cd "$W"

# ---- item 2: export --out never deletes a user's files
mkdir -p i2 && cd i2
"$QLORA_BIN" init-model --out base --hidden 64 --layers 1 > /dev/null 2>&1
mkdir mywork && echo "my notes" > mywork/notes.txt
run export --base base --format gguf --out mywork
if [ $? -eq 2 ] && [ -f mywork/notes.txt ] && grep -q "notes.txt" out.txt; then ok "2 export refuses a folder with a user's file"
else bad "2 export --out into a user's folder (notes.txt: $(cat mywork/notes.txt 2>&1))"; fi
run export --base base --format gguf --out fresh && run export --base base --format gguf,merged --out fresh
if [ $? -eq 0 ] && [ -f fresh/model-f16.gguf ] && [ -d fresh/model ]; then ok "2 export replaces a previous export"
else bad "2 re-export over a previous export"; fi
mkdir empty && (cd empty && "$QLORA_BIN" export --base ../base --format gguf --out . > ../out.txt 2>&1)
if [ $? -eq 0 ] && [ -f empty/model-f16.gguf ]; then ok "2 export --out . into an empty folder"
else bad "2 export --out . (an empty working directory)"; fi
(cd mywork && "$QLORA_BIN" export --base ../base --format gguf --out . > ../out.txt 2>&1)
if [ $? -eq 2 ] && [ -f mywork/notes.txt ] && grep -q "an export did not write" out.txt; then ok "2 export --out . in a user's folder is refused clearly"
else bad "2 export --out . in a user's folder"; fi
cd "$W"

# ---- item 3: a fully cached run needs no write access to the cache
mkdir -p i3 && cd i3
printf '{"instruction": "a", "output": "b"}\n' > d.jsonl
base_yaml i3 > r.yaml <<'YAML'
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: alpaca
    sequence_len: 512
YAML
export QLORA_CACHE="$W/i3/cache"
run r.yaml
mkdir -p "$W/i3/runs" && chmod 777 "$W/i3/runs" && chmod 755 "$W" "$W/i3"
if [ "$(id -u)" = 0 ] && command -v setpriv > /dev/null; then as_reader() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
else chmod -R a-w cache; as_reader() { "$@"; }; fi
QLORA_RUNS="$W/i3/runs" as_reader "$QLORA_BIN" r.yaml > out.txt 2>&1
if [ $? -eq 0 ] && grep -q "0 ran, 2 cached" out.txt; then ok "3 a cached run on a read-only cache"
else bad "3 a cached run on a read-only cache failed"; fi
QLORA_RUNS="$W/i3/runs" as_reader "$QLORA_BIN" r.yaml --set stages.data.sequence_len=500 > out.txt 2>&1
if [ $? -eq 1 ] && grep -q "is read-only, and stage 'data' is not in it" out.txt; then ok "3 a stage to compute on a read-only cache is named"
else bad "3 computing on a read-only cache: unclear error"; fi
chmod -R u+w cache
export QLORA_CACHE="$W/cache"
cd "$W"

# ---- item 6: evaluate prompts given as chat records, formatted with the dataset's template
mkdir -p i6 && cd i6
printf '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n%.0s' 1 2 3 4 > d.jsonl
base_yaml i6 > r.yaml <<'YAML'
  lora: {kind: attach_lora, model: base}
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: chat
    chat_template: llama-2
    sequence_len: 128
  eval:
    kind: evaluate
    model: base
    adapter: lora
    data: data
    compare_base: false
    score_records: 0
    max_new_tokens: 2
    prompts:
      - {messages: [{role: user, content: "what is two?"}]}
      - {conversations: [{from: human, value: "and three?"}, {from: gpt, value: "3"}]}
YAML
run r.yaml
res=$(ls "$QLORA_CACHE"/artifacts/evaluate/*/results.json 2>/dev/null | head -1)
if [ -n "$res" ] && grep -qF '[INST] what is two? [/INST]' "$res" && grep -qF '[INST] and three? [/INST]' "$res" &&
   ! grep -qF '[/INST] 3' "$res"; then ok "6 chat prompts rendered with the dataset's template"
else bad "6 chat records as evaluate prompts"; fi
cd "$W"

# ---- item 8: a built-in template's special tokens must be in the vocabulary
mkdir -p i8 && cd i8
printf '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' > d.jsonl
base_yaml i8 > r.yaml <<'YAML'
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: chat
    sequence_len: 256
YAML
run r.yaml
if [ $? -eq 3 ] && grep -q "chat_template: llama-3 needs the special tokens <|start_header_id|>, <|end_header_id|>, <|eot_id|>, which the tokenizer of 'base' lacks" out.txt
then ok "8 llama-3 template on a tokenizer without its tokens is an error"
else bad "8 llama-3 template on a byte tokenizer was accepted"; fi
cd "$W"

# ---- item 9: option conflicts and stage-name typos on the command line
mkdir -p i9 && cd i9
printf 'name: i9\nstages:\n  data: {kind: test_echo}\n  train: {kind: test_echo, input: data}\n' > r.yaml
QLORA_TEST_KINDS=1 "$QLORA_BIN" r.yaml --only train --until data > out.txt 2>&1
[ $? -eq 2 ] && grep -q "\-\-only and --until are alternatives" out.txt && ok "9 --only with --until refused" || bad "9 --only --until accepted"
QLORA_TEST_KINDS=1 "$QLORA_BIN" r.yaml --json --quiet > out.txt 2>&1
[ $? -eq 2 ] && grep -q "\-\-json and --quiet are alternatives" out.txt && ok "9 --json with --quiet refused" || bad "9 --json --quiet accepted"
QLORA_TEST_KINDS=1 "$QLORA_BIN" r.yaml --only trian > out.txt 2>&1
[ $? -eq 2 ] && grep -q "(did you mean 'train'?)" out.txt && ok "9 --only trian: did you mean" || bad "9 --only trian has no did-you-mean"
cd "$W"

# ---- item 10: truncated and dropped records are counted and warned about
mkdir -p i10 && cd i10
{ for i in $(seq 8); do printf '{"instruction": "a%s", "output": "b"}\n' $i; done
  printf '{"instruction": "%s", "output": "%s"}\n' "$(printf 'x%.0s' $(seq 40))" "$(printf 'y%.0s' $(seq 40))"
  printf '{"instruction": "%s", "output": "z"}\n' "$(printf 'w%.0s' $(seq 90))"; } > d.jsonl
base_yaml i10 > r.yaml <<'YAML'
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: alpaca
    sequence_len: 200
YAML
run r.yaml
if grep -q "1 of 10 records truncated to sequence_len 200" out.txt && grep -q "1 of 10 records dropped: 0 longer than sequence_len 200 (truncation: drop), 1 with nothing left to train" out.txt &&
   grep -q "warning: stage 'data': 20% of the records do not fit in sequence_len 200" out.txt; then ok "10 truncated and dropped records are reported"
else bad "10 truncation and dropping are silent"; fi
sed -i 's/sequence_len: 200/sequence_len: 100/' r.yaml
run r.yaml
if [ $? -eq 4 ] && grep -q "without trained tokens 10, errors 0; sequence_len 100)" out.txt && grep -q "raise sequence_len" out.txt; then ok "10 an empty dataset names sequence_len"
else bad "10 an empty dataset does not name sequence_len"; fi
cd "$W"

# ---- item 11: score() gets the original record for val records and prompts alike
mkdir -p i11 && cd i11
for i in $(seq 10); do printf '{"instruction": "n%s", "output": "o%s", "answer": "a%s"}\n' $i $i $i; done > d.jsonl
cat > score.lua <<'LUA'
function score(pred, rec, info)
  assert(rec.answer, "no record.answer")
  assert(info and info.source and info.prompt, "no info")
  if info.source == "val" then assert(info.reference == rec.output, "reference") end
  return rec.answer:sub(1, 1) == "a"
end
LUA
{ printf 'hooks:\n  score: score.lua\n'; base_yaml i11 <<'YAML'
  lora: {kind: attach_lora, model: base}
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: alpaca
    sequence_len: 256
    val_set_size: 3
  eval:
    kind: evaluate
    model: base
    adapter: lora
    data: data
    compare_base: false
    max_new_tokens: 1
    prompts:
      - {instruction: "extra", answer: "a0"}
YAML
} > r.yaml
run r.yaml
if grep -qE "score \(mean of 4\) +1\.0000" out.txt; then ok "11 score() sees record.answer for val records and prompts"
else bad "11 score() without the original record"; fi
cd "$W"

# ---- item 13: a micro-batch larger than the data says so
mkdir -p i13 && cd i13
for i in $(seq 12); do printf '{"instruction": "n%s", "output": "o%s"}\n' $i $i; done > d.jsonl
base_yaml i13 > r.yaml <<'YAML'
  lora: {kind: attach_lora, model: base}
  data: {kind: dataset, model: base, path: d.jsonl, format: alpaca, sequence_len: 256, sample_packing: false}
  train: {kind: train, model: base, adapter: lora, data: data, micro_batch_size: 100, max_steps: 1}
YAML
run r.yaml
if grep -q "warning: stage 'train': micro_batch_size 100 is more than the 12 training rows" out.txt; then ok "13 micro_batch_size above the row count warns"
else bad "13 micro_batch_size 100 on 12 rows was silent"; fi
cd "$W"

# ---- item 12: logging hooks log; a failing logger warns and the run goes on
mkdir -p i12 && cd i12
for i in $(seq 12); do printf '{"instruction": "n%s", "output": "o%s"}\n' $i $i; done > d.jsonl
cat > notes.lua <<'LUA'
local qlora = require "qlora"
function on_stage_end(stage, manifest) print("finished " .. stage) end
function on_run_end(summary) qlora.log("info", "run over, ok=" .. tostring(summary.ok)) end
function on_step(m) error("logger down") end
LUA
{ printf 'hooks:\n  on_step: notes.lua\n  on_stage_end: notes.lua\n  on_run_end: notes.lua\n'; base_yaml i12 <<'YAML'
  lora: {kind: attach_lora, model: base}
  data: {kind: dataset, model: base, path: d.jsonl, format: alpaca, sequence_len: 256}
  train: {kind: train, model: base, adapter: lora, data: data, micro_batch_size: 2, max_steps: 6}
YAML
} > r.yaml
run r.yaml
rc=$?
ev=$(ls -d "$QLORA_RUNS"/i12/*/ | tail -1)events.jsonl
if [ $rc -eq 0 ] && grep -q "hook: finished train" out.txt && grep -q "hook: run over, ok=true" out.txt &&
   grep -q '"hook_log"' "$ev" && grep -q "finished train" "$ev"; then ok "12 print and qlora.log in on_stage_end/on_run_end reach the console and events"
else bad "12 on_stage_end/on_run_end output lost (exit $rc)"; fi
if [ $rc -eq 0 ] && [ "$(grep -c "on_step hook failed" out.txt)" = 3 ] && grep -q "logger down" out.txt &&
   grep -q "not called again" out.txt; then ok "12 a failing on_step warns three times and training finishes"
else bad "12 a failing on_step hook"; fi
cd "$W"

# ---- items 16, 17: export and generate accept the same forms; generate's errors
mkdir -p i16 && cd i16
export QLORA_CACHE="$W/i16/cache"
printf 'name: i16\nseed: 3\nstages:\n  base: {kind: init_model, arch: llama, layers: 2, hidden: 64}\n  small: {kind: init_model, arch: llama, layers: 1, hidden: 64}\n  lora: {kind: attach_lora, model: base}\n  lora1: {kind: attach_lora, model: small}\n  export: {kind: export, model: base, adapter: lora, formats: [peft, merged]}\n' > r.yaml
run r.yaml
art() { for d in "$QLORA_CACHE"/artifacts/$1/*; do grep -q "^  \"stage\": \"$2\"" "$d/manifest.json" && echo "$d"; done | head -1; }
B=$(art init_model base) S=$(art init_model small) L=$(art attach_lora lora) L1=$(art attach_lora lora1) E=$(art export export)
run export --base "$B" --adapter "$L" --format peft --out ex16
if [ $? -eq 0 ] && [ -f ex16/adapter/adapter_config.json ]; then ok "16 export --base takes an artifact directory, as generate --model does"
else bad "16 export --base rejects an artifact directory"; fi
run generate --model "$E" --adapter "$E" --prompt hi --max-new-tokens 1
if [ $? -eq 2 ] && grep -q "is a merged export of the adapter" out.txt; then ok "17 generate refuses an export's adapter on its own merged model"
else bad "17 generate applied LoRA on a merged export"; fi
run generate --model "$W/nowhere" --prompt hi
if [ $? -ne 0 ] && [ "$(grep -c "error:" out.txt)" = 1 ]; then ok "17 generate prints an error once"
else bad "17 generate prints its error $(grep -c "error:" out.txt) times"; fi
run generate --model "$B" --adapter "$L1" --prompt hi --max-new-tokens 1
if [ $? -ne 0 ] && grep -q "the adapter has LoRA weights for 1 layer (highest layers.0) but the model has 2 layers" out.txt
then ok "17 a 1-layer adapter on a 2-layer model names the mismatch"
else bad "17 an adapter for another model: unclear message"; fi
export QLORA_CACHE="$W/cache"
cd "$W"

# ---- item 15: exports name the base model as peft and llama.cpp expect
mkdir -p i15 && cd i15
"$QLORA_BIN" init-model --out mybase --hidden 64 --layers 1 > /dev/null 2>&1
printf 'name: i15\nstages:\n  base: {kind: fetch_model, source: path, path: mybase}\n  nf4: {kind: quantize_nf4, model: base}\n  lora: {kind: attach_lora, model: nf4}\n  export: {kind: export, model: nf4, adapter: lora, formats: [peft, gguf]}\n' > r.yaml
run r.yaml
E=$(sed -n 's/^  export: //p' out.txt)
if [ -n "$E" ] && grep -q "\"base_model_name_or_path\": \"$W/i15/mybase\"" "$E/adapter/adapter_config.json" &&
   grep -aq "mybase" "$E"/model-f16.gguf; then ok "15 adapter_config.json and GGUF name the base model's folder"
else bad "15 exports name the stage: $(grep base_model_name_or_path "$E/adapter/adapter_config.json" 2>&1)"; fi
cd "$W"

# ---- item 19: record errors name the line; JSONL parse errors say "end of the line"; roles listed
mkdir -p i19 && cd i19
printf '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n' > missing.jsonl
printf '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"\n{"instruction": "e", "output": "f"}\n' > broken.jsonl
printf '{"conversations": [{"from": "robot", "value": "x"}]}\n' > roles.jsonl
for f in missing broken roles; do
  fmt=alpaca; [ $f = roles ] && fmt="chat, chat_template: llama-2"
  base_yaml i19$f > $f.yaml <<YAML
  data: {kind: dataset, model: base, path: $f.jsonl, format: $fmt, sequence_len: 512}
YAML
done
run missing.yaml
grep -q "missing.jsonl:2: record 1: missing 'output'" out.txt && ok "19 a record error names its line" || bad "19 record error without its line"
run broken.yaml
grep -q "broken.jsonl:2:.*expected near end of the line" out.txt && ok "19 a bad JSONL line ends at the end of the line" || bad "19 a bad JSONL line: 'end of file'"
run roles.yaml
grep -q "unknown role 'robot' (system, user or assistant; human and gpt" out.txt && ok "19 the unknown-role message lists human and gpt" || bad "19 unknown role message omits human/gpt"
cd "$W"

# ---- item 21: numbers as written, the progress bar's unit once, data show --split val
mkdir -p i21 && cd i21
cp -r "$QLORA_SRC/hooks" hooks
base_yaml i21 > r.yaml <<'YAML'
  data: {kind: dataset, model: base, generator: hooks/demo_task.lua, format: lua, format_hook: hooks/demo_task.lua, hook_args: {n: 60}, sequence_len: 128, val_set_size: 20}
  lora: {kind: attach_lora, model: base}
  train: {kind: train, model: base, adapter: lora, data: data, learning_rate: 0.005, max_steps: 3}
YAML
run show r.yaml
if grep -q "val_set_size: 20.0" out.txt && grep -q "learning_rate: 0.005$" out.txt; then ok "21 show prints 20.0 and 0.005"
else bad "21 show: $(grep -E 'val_set_size|learning_rate' out.txt | tr -d '\n')"; fi
run r.yaml
run plan r.yaml --set stages.train.learning_rate=0.004
if grep -q "learning_rate: 0.005 -> 0.004$" out.txt; then ok "21 plan prints 0.005 -> 0.004"
else bad "21 plan: $(grep learning_rate out.txt)"; fi
run data show r.yaml data --split val --n 1
if [ $? -eq 0 ] && grep -q "^20 val rows" out.txt; then ok "21 data show --split val"
else bad "21 data show cannot show the val split"; fi
if command -v script > /dev/null; then
  script -qec "$QLORA_BIN r.yaml --force train" /dev/null > tty.txt 2>&1
  if grep -q "steps/s" tty.txt && ! grep -aE "steps/s +ETA [0-9]+:[0-9]+ +steps" tty.txt > /dev/null; then ok "21 the progress bar names its unit once"
  else bad "21 the progress bar ends with a stray ' steps'"; fi
fi
cd "$W"

# ---- item 20: runs ls sorted across recipes with the failed stage; cache ls headers; gc leaves nothing
mkdir -p i20 && cd i20
export QLORA_CACHE="$W/i20/cache" QLORA_RUNS="$W/i20/runs" QLORA_TEST_KINDS=1
printf 'name: zeta\nstages:\n  a: {kind: test_echo}\n' > zeta.yaml
printf 'name: alpha\nstages:\n  a: {kind: test_echo}\n  b: {kind: test_echo, input: a, fail: true}\n' > alpha.yaml
run zeta.yaml; sleep 1.1; run alpha.yaml; sleep 1.1; run zeta.yaml
run runs ls
order=$(awk 'NR > 1 {print $2}' out.txt | tr '\n' ' ')
if head -1 out.txt | grep -q "TIME (UTC).*RECIPE.*STATUS.*FAILED STAGE" && [ "$order" = "zeta alpha zeta " ] &&
   grep -E "alpha +failed .* b$" out.txt > /dev/null; then ok "20 runs ls: one time order across recipes, header, failed stage"
else bad "20 runs ls (order: $order)"; fi
run cache ls
grep -q "KIND.*KEY.*SIZE" out.txt && ok "20 cache ls has a header" || bad "20 cache ls has no header"
run cache gc --keep-last 0
left=$(ls cache/work cache/locks | grep -v -e '^cache/' -e '^$' -e '^cache-in-use$' | tr '\n' ' ')
if [ -z "$left" ]; then ok "20 cache gc leaves no work dirs or lock files of removed keys"
else bad "20 cache gc left: $left"; fi
export QLORA_CACHE="$W/cache" QLORA_RUNS="$W/runs"
unset QLORA_TEST_KINDS
cd "$W"

# ---- item 4: allow: [io] (used only by on_step) is not in the dataset's key
mkdir -p i4 && cd i4
echo 'function on_step(m) end' > step.lua
printf '{"instruction": "a", "output": "b"}\n' > d.jsonl
{ printf 'hooks:\n  on_step: step.lua\n  allow: [io]\n'; base_yaml i4 <<'YAML'
  data:
    kind: dataset
    model: base
    path: d.jsonl
    format: alpaca
    sequence_len: 512
YAML
} > r.yaml
run r.yaml
sed -i '/allow: \[io\]/d' r.yaml
run plan r.yaml
if grep -A1 "^  data" out.txt | grep -q "cached"; then ok "4 dropping allow: [io] keeps the dataset cached"
else bad "4 dropping allow: [io] re-made the dataset"; fi
cd "$W"

checks_done
