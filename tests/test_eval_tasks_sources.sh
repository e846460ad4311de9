#!/usr/bin/env bash
# evaluate's tasks from other sources (issue 22): format lua (a task(record, ctx) hook scores the
# same as the built-in arc format on the same questions), url (a whole hub dataset's split with
# fewshot_split, and one file by URL, against the local hub: the same scores as the local files),
# limit's seeded subset, and the bad-input cases: an answer not among the choices, a few-shot split
# shorter than k (exit 4, naming the record or subject), contexts longer than the model's limit
# (cut from the left and counted).
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
. "$SRC/tests/hub_server.sh"
hub_init
T=$HUB_T/work
mkdir -p "$T"
jqt() { jq -e "$@" >/dev/null; }
cp "$SRC"/tests/recipes/tasks/* "$T/"
cd "$T"
# the hub: tst/mmlu in push_to_hub's layout, a test and a dev split
C=$(hub_commit_of mmlu-1)
hub_add_file datasets/ tst/mmlu "$C" data/test-00000-of-00001.jsonl mmlu.jsonl 1
hub_add_file datasets/ tst/mmlu "$C" data/dev-00000-of-00001.jsonl mmlu_dev.jsonl 1
hub_add_api datasets tst/mmlu main "$C" .gitattributes data/dev-00000-of-00001.jsonl data/test-00000-of-00001.jsonl
hub_add_file datasets/ tst/mmlu main data/test-00000-of-00001.jsonl mmlu.jsonl 1 # the file by URL, at main
hub_branch datasets/ tst/mmlu main "$C"
hub_start
export HF_ENDPOINT=$HUB_ENDPOINT HF_HOME=$T/hf HF_HUB_CACHE=$T/hf/hub QLORA_CACHE=$T/cache QLORA_RUNS=$T/runs
unset HF_TOKEN HF_HUB_OFFLINE

recipe() { # recipe NAME TASK-LINES...
    { cat <<'Y'
seed: 1
device: cpu
stages:
  base: {kind: init_model, preset: tiny, hidden: 64, layers: 2}
  eval:
    kind: evaluate
    model: base
    max_new_tokens: 2
    tasks:
Y
      printf '      - %s\n' "${@:2}"; } > "$1.yaml"
    sed -i "1i name: $1" "$1.yaml"
}
res() { ls -d "$T"/cache/artifacts/evaluate/*/ | while read -r d; do
    grep -q "\"$1\"" "$d/results.json" 2>/dev/null && echo "$d/results.json"; done | head -1; }

# lua: the hook's table (nil leaves a record out; gold as a choice's text or an index)
recipe luafmt '{name: arcref, format: arc, path: arc.jsonl, num_fewshot: 1}' \
    '{name: arclua, format: lua, path: arc_custom.jsonl, hook: arc_custom.lua, num_fewshot: 1}'
"$BIN" luafmt.yaml --quiet > lua.log 2>&1; rc=$?
check "format lua runs (rc $rc)" test $rc -eq 0
[ $rc -eq 0 ] || cat lua.log
r=$(res arclua)
check "the hook left out the record it returned nil for: 4 questions" jqt '.tasks.arclua.base.n == 4' "$r"
check "lua's log-likelihoods equal the arc format's on the same questions" jqt '
  (.tasks.arcref.base.docs | map({key: (.record | tostring), value: .loglik}) | from_entries) as $a
  | [.tasks.arclua.base.docs[] | . as $d | ($a[(if .record > 2 then .record - 1 else .record end) | tostring]) as $ref
     | select($ref != null) | [$d.loglik, $ref] | transpose[] | (.[0] - .[1]) | fabs] | length > 0 and max < 1e-9' "$r"
out=$("$BIN" plan luafmt.yaml 2>&1)
check "unchanged: cached" grep -qE "eval +evaluate +cached" <<<"$out"
echo "-- a comment" >> arc_custom.lua
out=$("$BIN" plan luafmt.yaml 2>&1)
check "an edited task hook re-runs evaluate" grep -qE "eval +evaluate +run" <<<"$out"
printf 'function task(record, ctx)\n  return {text = record.q, choices = record.opts, gold = "purple"}\nend\n' > notamong.lua
recipe luabad '{name: t, format: lua, path: arc_custom.jsonl, hook: notamong.lua}'
"$BIN" luabad.yaml --quiet > luabad.log 2>&1; rc=$?
check "an answer not among the choices: exit 4 (got $rc)" test $rc -eq 4
check "... naming the file and record" grep -q "arc_custom.jsonl: record 0: the answer 'purple' is not among the choices" luabad.log
printf 'function task(record, ctx)\n  return {text = record.q, choices = record.opts, gold = 1} .. 1\nend\n' > broken.lua
recipe luaerr '{name: t, format: lua, path: arc_custom.jsonl, hook: broken.lua}'
"$BIN" luaerr.yaml --quiet > luaerr.log 2>&1; rc=$?
check "a failing hook: exit 4 naming its line (got $rc)" bash -c "test $rc -eq 4 && grep -q 'broken.lua:2' luaerr.log"
recipe luanohook '{name: t, format: lua, path: arc_custom.jsonl}'
"$BIN" luanohook.yaml --quiet > luanohook.log 2>&1; rc=$?
check "format lua without a hook: exit 3 saying what to set (got $rc)" \
    bash -c "test $rc -eq 3 && grep -q 'format lua needs a hook' luanohook.log"
# lua through the recipe's hooks: {task: FILE} (no per-task hook), the tuned side of an adapter
# (attach_lora: B = 0, so the base's numbers): NAME.acc and NAME.acc_norm in the manifest, the
# same accuracy as the arc format's on the same questions; the hook file in the key; bad hooks
luarecipe() { # luarecipe NAME HOOK
    cat > "$1.yaml" <<Y
name: $1
seed: 1
device: cpu
hooks: {task: $2}
stages:
  base: {kind: init_model, preset: tiny, hidden: 64, layers: 2}
  lora: {kind: attach_lora, model: base, lora_r: 4}
  eval:
    kind: evaluate
    model: base
    adapter: lora
    compare_base: false
    max_new_tokens: 2
    tasks:
      - {name: arcref, format: arc, path: arc.jsonl, num_fewshot: 1}
      - {name: arclua, format: lua, path: arc_custom.jsonl, num_fewshot: 1}
Y
}
cp arc_custom.lua recipe_task.lua
luarecipe luahooks recipe_task.lua
"$BIN" luahooks.yaml --quiet > luahooks.log 2>&1; rc=$?
check "hooks.task in the recipe runs format lua (rc $rc)" test $rc -eq 0
[ $rc -eq 0 ] || cat luahooks.log
r=$(for d in "$T"/cache/artifacts/evaluate/*/; do jq -e .tasks.arclua.tuned "$d/results.json" >/dev/null 2>&1 && echo "$d/results.json"; done | head -1)
m=${r%results.json}manifest.json
check "the manifest has arclua.acc and arclua.acc_norm (tuned), no _base" jqt --slurpfile r "$r" '
  .metrics["arclua.acc"] == $r[0].tasks.arclua.tuned.acc and .metrics["arclua.acc_norm"] == $r[0].tasks.arclua.tuned.acc_norm
  and (.metrics | has("arclua.acc_base") | not) and $r[0].tasks.arclua.tuned.n == 4' "$m"
check "... the arc format's accuracy on the same four questions" jqt -n --slurpfile r "$r" --slurpfile m "$m" '
  ($r[0].tasks.arcref.tuned.docs | map(select(.record < 4)) | map(if .pred == .gold then 1 else 0 end) | add / 4)
  == $m[0].metrics["arclua.acc"]'
out=$("$BIN" plan luahooks.yaml 2>&1)
check "unchanged: cached" grep -qE "eval +evaluate +cached" <<<"$out"
echo "-- edited" >> recipe_task.lua
out=$("$BIN" plan luahooks.yaml 2>&1)
check "an edited hooks.task file re-runs evaluate" grep -qE "eval +evaluate +run" <<<"$out"
printf 'function task(record, ctx)\n  return "Question: " .. record.q\nend\n' > notatable.lua
luarecipe luastr notatable.lua
"$BIN" luastr.yaml --quiet > luastr.log 2>&1; rc=$?
check "hooks.task returning a string: exit 4 (got $rc)" test $rc -eq 4
check "... naming the hook, the record and what it must return" \
    grep -q "notatable.lua: task() for .*arc_custom.jsonl: record 0 must return a table {text=, choices=, gold=} or nil, not a string" luastr.log
printf 'function task(record, ctx)\n  return {text = record.q, choices = record.opts, gold = 1\nend\n' > syntax.lua
luarecipe luasyn syntax.lua
"$BIN" luasyn.yaml --quiet > luasyn.log 2>&1; rc=$?
check "hooks.task with a syntax error: exit 3 (got $rc) at the recipe line, naming the file and line" \
    bash -c "test $rc -eq 3 && grep -q 'luasyn.yaml:4:[0-9]*: hooks: .*syntax.lua:3: ' luasyn.log"
cp arc.jsonl arc_bad.jsonl
echo '{"question": "Which?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"}' >> arc_bad.jsonl
recipe arcbad '{name: t, format: arc, path: arc_bad.jsonl}'
"$BIN" arcbad.yaml --quiet > arcbad.log 2>&1; rc=$?
check "an ARC answer key not among the labels: exit 4 (got $rc)" test $rc -eq 4
check "... naming the record" grep -q "arc_bad.jsonl: record 6: the answer 'E' is not among the choices (nor their labels)" arcbad.log

# url: the hub dataset's test split with 2-shot examples from its dev split, and the test file by
# URL with local examples, score as the local files do
recipe local '{name: mmlu, format: mmlu, path: mmlu.jsonl, num_fewshot: 2, fewshot_path: mmlu_dev.jsonl}'
recipe hub '{name: mmluhub, format: mmlu, url: "hf://datasets/tst/mmlu", num_fewshot: 2, fewshot_split: dev}' \
    "{name: mmluurl, format: mmlu, url: \"hf://datasets/tst/mmlu/data/test-00000-of-00001.jsonl\", num_fewshot: 2, fewshot_path: mmlu_dev.jsonl}"
"$BIN" local.yaml --quiet > local.log 2>&1 && "$BIN" hub.yaml --quiet > hub.log 2>&1; rc=$?
check "tasks from the hub run (rc $rc)" test $rc -eq 0
[ $rc -eq 0 ] || cat local.log hub.log
rl=$(res mmlu) rh=$(res mmluhub)
check "hub split + fewshot_split: the local files' log-likelihoods" jq -e -n --slurpfile a "$rl" --slurpfile b "$rh" '
  [$a[0].tasks.mmlu.base.docs, $b[0].tasks.mmluhub.base.docs] | transpose | map(.[0].loglik == .[1].loglik) | all and length == 12'
check "one file by URL: the same" jq -e -n --slurpfile a "$rl" --slurpfile b "$rh" '
  [$a[0].tasks.mmlu.base.docs, $b[0].tasks.mmluurl.base.docs] | transpose | map(.[0].loglik == .[1].loglik) | all and length == 12'
check "the hub files are in the HF cache" test -e "$HF_HUB_CACHE/datasets--tst--mmlu/snapshots/$C/data/dev-00000-of-00001.jsonl"
recipe nosplit '{name: t, format: mmlu, url: "hf://datasets/tst/mmlu", split: validation}'
"$BIN" nosplit.yaml --quiet > nosplit.log 2>&1; rc=$?
check "an unknown split: exit 3 naming the ones there (got $rc)" \
    bash -c "test $rc -eq 3 && grep -q \"has no split 'validation' (it has 'dev', 'test')\" nosplit.log"
recipe splitfile '{name: t, format: mmlu, path: mmlu.jsonl, split: test}'
"$BIN" validate splitfile.yaml > splitfile.log 2>&1; rc=$?
check "split on a file: exit 3 with the position (got $rc)" \
    bash -c "test $rc -eq 3 && grep -q 'splitfile.yaml:[0-9]*:[0-9]*: .*split picks a part of a whole hub dataset' splitfile.log"

# limit: a seeded subset, the same for the same seed, another for another seed
recipe lim1 '{name: m, format: mmlu, path: mmlu.jsonl, limit: 5}'
sed 's/^seed: 1/seed: 2/' lim1.yaml > lim2.yaml; sed -i 's/^name: lim1/name: lim2/' lim2.yaml
rm -rf cache; "$BIN" lim1.yaml --quiet > /dev/null 2>&1; a=$(jq -c '[.tasks.m.base.docs[].record]' cache/artifacts/evaluate/*/results.json)
rm -rf cache; "$BIN" lim1.yaml --quiet > /dev/null 2>&1; b=$(jq -c '[.tasks.m.base.docs[].record]' cache/artifacts/evaluate/*/results.json)
rm -rf cache; "$BIN" lim2.yaml --quiet > /dev/null 2>&1; c=$(jq -c '[.tasks.m.base.docs[].record]' cache/artifacts/evaluate/*/results.json)
check "limit 5: five records in file order ($a)" jq -e 'length == 5 and . == sort' <<<"$a"
check "the same seed, the same subset" test "$a" = "$b"
check "another seed, another subset ($c)" test "$a" != "$c"

# few-shot source shorter than k: exit 4 naming the subject
recipe short '{name: m, format: mmlu, path: mmlu.jsonl, num_fewshot: 5, fewshot_path: mmlu_dev.jsonl}'
"$BIN" short.yaml --quiet > short.log 2>&1; rc=$?
check "5-shot from a dev split of 3 a subject: exit 4 (got $rc)" test $rc -eq 4
check "... naming the task, the doc and the subject" grep -q "task 'm', doc 0: 5-shot needs 5 examples of subject 'anatomy', the few-shot source has 3" short.log
# longer than the model's limit: cut from the left, counted, as the harness does
recipe long '{name: m, format: mmlu, path: mmlu.jsonl, num_fewshot: 2, fewshot_path: mmlu_dev.jsonl}'
sed -i 's/    max_new_tokens: 2/    max_new_tokens: 2\n    task_max_tokens: 300/' long.yaml
rm -rf cache; "$BIN" long.yaml > long.log 2>&1; rc=$?
check "contexts over task_max_tokens run (rc $rc)" test $rc -eq 0
n=$(jq '.tasks.m.base.truncated' cache/artifacts/evaluate/*/results.json)
check "... 48 sequences cut from the left, counted ($n)" test "$n" = 48
check "... and said in the log" grep -q "note: task m: 48 sequences longer than 300 tokens were cut from the left" long.log
[ -n "${KEEP:-}" ] && cp -r "$T" /tmp/evt-keep
checks_done
