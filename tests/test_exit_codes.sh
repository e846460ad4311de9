#!/usr/bin/env bash
# test_exit_codes.sh: every exit code of README.md's table, through the qlora-run binary on
# real stages (the recipe of tests/reliability/common.sh and small variants of it), each with
# the message a user needs:
#   0 success   1 a stage failed (I/O)   2 usage   3 recipe invalid   4 data or model invalid
#   5 training diverged   6 --lock: another run holds the lock   7 interrupted   8 download failed
set -u
. "$(dirname "$0")/reliability/common.sh"
rel_recipe "$W/r.yaml" 20
cd "$W"
expect() { # CODE NAME GREP-PATTERN COMMAND... : runs it, checks the code and the message
    local code=$1 name=$2 pat=$3; shift 3
    "$@" >out.txt 2>&1; local rc=$?
    check "exit $code: $name (got $rc)" test $rc -eq "$code"
    if [ -n "$pat" ]; then
        check "exit $code: $name: the message says '$pat'" grep -Eq -- "$pat" out.txt
    fi
    [ $rc -eq "$code" ] || sed 's/^/     | /' out.txt | tail -n5
}

# 0
expect 0 "the recipe runs" "done in .*: 6 ran, 0 cached" "$BIN" r.yaml
expect 0 "a second run is all cached" "0 ran, 6 cached" "$BIN" r.yaml

# 1: an I/O error in a real stage: a file where the cache keeps export artifacts
mv cache/artifacts/export exported
touch cache/artifacts/export
expect 1 "a stage failed (I/O error)" "stage 'out': cannot rename '.*' to '.*artifacts/export/[0-9a-f]+': Not a directory" "$BIN" r.yaml -q
check "exit 1: the run record says which stage failed" grep -q '"type":"stage_failed".*"stage":"out"' "$(ls -d runs/rel/* | sort | tail -n1)/events.jsonl"
rm cache/artifacts/export; mv exported cache/artifacts/export

# 2
expect 2 "an unknown option" "run: unknown option '--fast'" "$BIN" r.yaml --fast
expect 2 "--only names no stage" "--only 'nosuch': the recipe has no such stage" "$BIN" r.yaml --only nosuch
expect 2 "--jobs 0" "--jobs must be between 1 and 1024, not 0" "$BIN" r.yaml --jobs 0
expect 2 "export --merged-dtype f8" "unknown merged model dtype 'f8' \(bf16, f16 or f32\)" \
  "$BIN" export --base nowhere --format merged --merged-dtype f8 --out nowhere-out
expect 2 "export --format safetensors" "unknown export format 'safetensors' \(peft, merged or gguf\)" \
  "$BIN" export --base nowhere --format safetensors --out nowhere-out
QLORA_CACHE=$W/empty expect 2 "--only a stage whose inputs are not cached" "" "$BIN" r.yaml --only train

# 3
expect 3 "a misspelt key" "r2.yaml:[0-9]+:[0-9]+: stage 'train': unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)" \
    sh -c "sed 's/learning_rate:/lerning_rate:/' r.yaml > r2.yaml && exec \"$BIN\" r2.yaml -q"
expect 3 "a --set of the wrong type" "'learning_rate' must be a number, not 'fast'" "$BIN" r.yaml -q --set stages.train.learning_rate=fast
expect 3 "a dangling reference" "r3.yaml:[0-9]+:[0-9]+: .*'nosuch'" \
    sh -c "sed 's/adapter: lora/adapter: nosuch/' r.yaml > r3.yaml && exec \"$BIN\" r3.yaml -q"

# 4: a malformed JSONL dataset (file:line:col), a truncated model file
printf '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "c", "input": x}\n' > bad.jsonl
sed -e 's/generator: demo_task.lua/path: bad.jsonl/' -e '/format: lua/d' -e '/format_hook:/d' -e '/hook_args:/d' r.yaml > r4.yaml
expect 4 "a malformed JSONL dataset, named by file:line:col" "stage 'data': .*bad.jsonl:2:[0-9]+: " "$BIN" r4.yaml -q
mkdir broken
cp "$(art cache init_model)"/model/* broken/
truncate -s 100000 broken/model.safetensors
sed -e '/^  base:/,/^  nf4:/{/^  nf4:/!d}' -e 's/model: base/model: base/' r.yaml > r5.yaml
sed -i 's/^  nf4:/  base:\n    kind: fetch_model\n    source: path\n    path: broken\n  nf4:/' r5.yaml
expect 4 "a truncated safetensors file" "model.safetensors: tensor '[^']+': .*the file is truncated" "$BIN" r5.yaml -q

# 5: a huge learning rate (from an lr hook: the recipe's learning_rate stops at 1e6) diverges
printf 'function lr(step, total, base)\n  if step >= 4 then return 1e30 end\n  return base\nend\n' > huge.lua
expect 5 "training diverged, naming the step and the newest checkpoint" \
    "stage 'train': training diverged at step [0-9]+: loss .*the newest checkpoint is step [0-9]+ in '" \
    "$BIN" r.yaml -q --set stages.train.lr_hook=huge.lua
check "exit 5: events.jsonl records the divergence" grep -q '"type":"diverged"' "$(ls -d runs/rel/* | sort | tail -n1)/events.jsonl"

# 6 and 7: a long run holding --lock; a second --lock run exits 6 at once; SIGINT ends the first with 7
LONG=(--set stages.train.max_steps=2000 --lock)
rm -rf cache/work/* # the diverged run's checkpoints: the poll below watches the new run's log
"$BIN" r.yaml -q "${LONG[@]}" >long.txt 2>&1 & pid=$!
for _ in $(seq 500); do
    [ "$(cat cache/work/*/train_log.jsonl 2>/dev/null | grep -c '"type":"step"')" -ge 2 ] && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.01
done
t0=$(now_ms)
expect 6 "--lock while another run of the recipe holds it" "another run of recipe 'rel' holds its lock \(--lock\): not starting" "$BIN" r.yaml -q "${LONG[@]}"
check "exit 6: at once ($(( $(now_ms) - t0 )) ms)" test $(( $(now_ms) - t0 )) -lt 5000
kill -INT $pid; wait $pid; rc=$?
check "exit 7: SIGINT during training (got $rc)" test $rc -eq 7
check "exit 7: the message says how to resume" grep -q "interrupted at step [1-9][0-9]* of 2000: checkpoint saved in '.*'; run again to resume" long.txt

# 8: a fetch_model stage with the hub unreachable (a closed port), nothing cached
port=1
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
cat > r8.yaml <<'YAML'
name: fetch
stages:
  m:
    kind: fetch_model
    repo: org/tiny
  nf4:
    kind: quantize_nf4
    model: m
YAML
( unset HF_HUB_OFFLINE TRANSFORMERS_OFFLINE; export HF_ENDPOINT=http://127.0.0.1:$port HF_HOME=$W/hf no_proxy='*'
  expect 8 "download failed: the hub unreachable" "stage 'm': request to http://127.0.0.1:$port failed: .*not in the cache .*: download it once online" "$BIN" r8.yaml -q
  expect 8 "download failed: qlora-run fetch" "request to http://127.0.0.1:$port failed" "$BIN" fetch org/tiny
  echo "$CHECKS_PASSED $CHECKS_FAILED" > counts )
read -r CHECKS_PASSED CHECKS_FAILED < counts
check "exit 8: nothing committed" test -z "$(grep -l "\"recipe\": \"fetch\"" cache/artifacts/*/*/manifest.json)"
checks_done
