#!/usr/bin/env bash
# test_cache_real.sh: the cache's promises on real stages (test_runner.sh proves them with
# test-only kinds).
# 1. A bit flipped in a cached artifact: a multi-MB quantized model (the 4-bit weights of a
#    generated model, big enough for the hash memo, which only keeps files of 1 MiB and more).
#    - flipped with a new mtime (what a bad disk or a stray write does): detected before use
#      (plan says why), recomputed by the next run, bytes identical to the original again;
#    - flipped with size and mtime put back (touch -r): by design the pre-use check trusts a
#      file whose (dev, inode, size, mtime) did not change since it was last hashed, so plan
#      still says cached; `cache verify` (a full re-hash) reports it, and from then on every
#      run sees it and recomputes the artifact;
#    - a small file (hashed on every use, never memoised), a truncated file and a damaged
#      manifest.json are detected before use, even with the mtime put back.
# 2. A local model folder (fetch_model source: path): editing its files re-runs its stage.
# 3. Two runs of one real recipe at once on one cache (init_model ... train ... export):
#    both succeed and each stage is computed once (stage_start events across both runs'
#    events.jsonl), and both end with the same artifact.
# 4. `cache gc` while a run uses the cache removes nothing (exit 6): it would delete the
#    artifacts the run reads or has just made.
set -u
. "$(dirname "$0")/reliability/common.sh"
cd "$W"
cat > c.yaml <<'YAML'
name: relc
seed: 3
device: cpu
stages:
  base:
    kind: init_model
    preset: tiny
    hidden: 256
    intermediate: 704
  nf4:
    kind: quantize_nf4
    model: base
  lora:
    kind: attach_lora
    model: nf4
YAML
"$BIN" c.yaml -q || { bad "the recipe did not run"; checks_done; exit 1; }
NF4=$(art cache quantize_nf4)
ST=$NF4/model/model.safetensors
cp -p "$ST" orig.safetensors
size=$(stat -c %s "$ST")
check "the quantized weights are over 1 MiB, so the hash memo keeps them ($size bytes)" test "$size" -ge 1048576
check "the memo holds them" grep -q " $size [0-9]* [0-9a-f]\{32\} " cache/hash-memo

ran_nf4() { # did the last run compute nf4 (a stage_start event), and why?
    local ev; ev=$(ls -d runs/relc/* | sort | tail -n1)/events.jsonl
    grep '"type":"stage_start"' "$ev" | grep '"stage":"nf4"' | sed 's/.*"why":"\([^"]*\)".*/\1/'
}
restored() { cmp -s "$ST" orig.safetensors; }

# --- a flipped byte, mtime changed
flip_byte "$ST" $((size / 2))
plan=$("$BIN" plan c.yaml 2>&1)
check "flip: plan sees the corruption before use" grep -q "why: cached artifact is corrupt: file 'model/model.safetensors' does not match its hash" <<<"$plan"
"$BIN" c.yaml -q; rc=$?
check "flip: the run recomputes nf4 (rc $rc, why: $(ran_nf4))" test $rc -eq 0 -a -n "$(ran_nf4)"
check "flip: the recomputed weights equal the original bytes" restored
check "flip: lora (same key) stays cached" test -z "$(grep '"type":"stage_start"' "$(ls -d runs/relc/* | sort | tail -n1)/events.jsonl" | grep '"stage":"lora"')"
"$BIN" cache verify >/dev/null 2>&1; check "flip: cache verify clean afterwards" test $? -eq 0

# --- a flipped byte with size and mtime put back: the memo is trusted until a verify
ST=$(art cache quantize_nf4)/model/model.safetensors
cp -p "$ST" stamp
flip_byte "$ST" $((size / 3))
touch -r stamp "$ST"
check "touch -r: size and mtime unchanged" test "$(stat -c '%s %Y' "$ST")" = "$(stat -c '%s %Y' stamp)" -a "$(stat -c %y "$ST")" = "$(stat -c %y stamp)"
plan=$("$BIN" plan c.yaml 2>&1)
check "touch -r: the pre-use check trusts the unchanged stat (the design: plan says cached)" grep -Eq "^ +nf4 +quantize_nf4 +cached" <<<"$plan"
out=$("$BIN" cache verify 2>&1); rc=$?
check "touch -r: cache verify finds it (exit 1)" test $rc -eq 1
check "touch -r: cache verify names the artifact and file" grep -q "corrupt: quantize_nf4/[0-9a-f]*: file 'model/model.safetensors' does not match its hash" <<<"$out"
plan=$("$BIN" plan c.yaml 2>&1)
check "touch -r: after the verify, plan sees it before use" grep -q "why: cached artifact is corrupt: file 'model/model.safetensors'" <<<"$plan"
"$BIN" c.yaml -q; rc=$?
check "touch -r: the next run recomputes nf4 (rc $rc, why: $(ran_nf4))" test $rc -eq 0 -a -n "$(ran_nf4)"
check "touch -r: the recomputed weights equal the original bytes" restored
"$BIN" cache verify >/dev/null 2>&1; check "touch -r: cache verify clean afterwards" test $? -eq 0

# --- small files, truncation, the manifest: caught before use even with the mtime put back
damage_and_rerun() { # NAME FILE COMMAND...
    local name=$1 f=$2; shift 2
    cp -p "$f" stamp
    "$@"
    touch -r stamp "$f"
    plan=$("$BIN" plan c.yaml 2>&1)
    check "$name: plan sees it before use" grep -q "why: cached artifact is corrupt" <<<"$plan"
    "$BIN" c.yaml -q; rc=$?
    check "$name: the run recomputes nf4 (rc $rc, why: $(ran_nf4))" test $rc -eq 0 -a -n "$(ran_nf4)"
    ST=$(art cache quantize_nf4)/model/model.safetensors
    check "$name: the artifact is whole again" restored
}
NF4=$(art cache quantize_nf4)
damage_and_rerun "small file (config.json) flipped" "$NF4/model/config.json" flip_byte "$NF4/model/config.json" 10
NF4=$(art cache quantize_nf4)
damage_and_rerun "weights truncated" "$NF4/model/model.safetensors" truncate -s -1 "$NF4/model/model.safetensors"
NF4=$(art cache quantize_nf4)
damage_and_rerun "manifest.json damaged" "$NF4/manifest.json" truncate -s 100 "$NF4/manifest.json"
"$BIN" cache verify >/dev/null 2>&1; check "cache verify clean at the end" test $? -eq 0
# a corrupt artifact moved aside (<key>.old.<pid>) by a run that died while deleting it
sh -c 'exit 0' & dead=$!; wait $dead
NF4=$(art cache quantize_nf4); cp -a "$NF4" "${NF4%/}.old.$dead"
"$BIN" c.yaml -q
check "a dead run's half-deleted corrupt artifact is removed by the next run" test -z "$(ls -d cache/artifacts/quantize_nf4/*.old.* 2>/dev/null)"

# --- a local model folder (fetch_model source: path) is linked, not copied: replacing its
#     weights in place must re-run what was made from them, not reuse a stale artifact
mkdir -p folder
cp "$(art cache init_model)"/model/* folder/
cat > p.yaml <<'YAML'
name: relp
stages:
  m: {kind: fetch_model, source: path, path: folder}
  nf4: {kind: quantize_nf4, model: m}
YAML
"$BIN" p.yaml -q; rc=$?
check "a local model folder is linked and quantized (rc $rc)" test $rc -eq 0 -a -n "$("$BIN" plan p.yaml | grep -E '^ +nf4 +quantize_nf4 +cached')"
"$BIN" init-model --out other --preset tiny --hidden 256 --intermediate 704 --seed 9 >/dev/null 2>&1
cp other/model.safetensors folder/model.safetensors
plan=$("$BIN" plan p.yaml 2>&1)
check "weights replaced in the folder: plan re-runs m and nf4" grep -q "why: file 'folder/model.safetensors' changed" <<<"$plan"
"$BIN" p.yaml -q; rc=$?
check "and the new quantized weights differ from the stale ones (rc $rc)" test $rc -eq 0 && ! cmp -s orig.safetensors "$(ls -t cache/artifacts/quantize_nf4/*/model/model.safetensors | head -n1)"

# --- two runs of one real recipe at once on one cache
rel_recipe "$W/r.yaml" 30
export QLORA_CACHE=$W/cache2
"$BIN" r.yaml >run1.out 2>&1 & p1=$!
"$BIN" r.yaml >run2.out 2>&1 & p2=$!
wait $p1; r1=$?; wait $p2; r2=$?
check "two concurrent runs both succeed (rc $r1 $r2)" test $r1 -eq 0 -a $r2 -eq 0
evs=$(ls -d runs/rel/*/ | sort)
check "two run records" test "$(echo "$evs" | wc -l)" -eq 2
starts=$(cat runs/rel/*/events.jsonl | grep '"type":"stage_start"' | sed 's/.*"stage":"\([a-z0-9_]*\)".*/\1/' | sort | tr '\n' ' ')
check "each stage computed once across both runs: $starts" test "$starts" = "base data lora nf4 out train "
cached=$(cat runs/rel/*/events.jsonl | grep -c '"type":"stage_cached"')
check "the other run found each stage cached ($cached stage_cached events)" test "$cached" -eq 6
ends=$(cat runs/rel/*/events.jsonl | grep -c '"type":"run_end","seconds":[0-9.e+-]*,"ran":[0-9]*,"cached":[0-9]*,"code":0')
check "both runs end with code 0 in events.jsonl" test "$ends" -eq 2
check "one export artifact, verified" test "$(ls cache2/artifacts/export | wc -l)" -eq 1 -a -z "$("$BIN" cache verify | grep '^corrupt')"
echo "     $(cat run1.out run2.out | grep -c 'waiting: another run is computing stage') times a run waited for the other's lock"

# --- cache gc while a run uses the cache: it removes nothing (exit 6) and the run succeeds;
#     afterwards it collects
"$BIN" r.yaml --set stages.train.max_steps=2000 >long.out 2>&1 & pid=$!
for _ in $(seq 400); do grep -q "step 3/" long.out && break; sleep 0.01; done
"$BIN" cache gc --keep-last 0 >gc.out 2>&1; rc=$?
check "cache gc during a run: exit 6 (got $rc), nothing removed" test $rc -eq 6 -a -n "$(art cache2 quantize_nf4)"
check "cache gc during a run: it says why" grep -q "a run is using this cache: nothing removed" gc.out
kill -INT $pid; wait $pid; rc=$?
check "the run was not disturbed (interrupted by us: 7, got $rc)" test $rc -eq 7
"$BIN" cache gc --keep-last 0 >gc.out 2>&1; rc=$?
check "cache gc with no run: collects (rc $rc)" test $rc -eq 0 -a -z "$(art cache2 quantize_nf4)"
checks_done
