#!/usr/bin/env bash
# Quality gates (gates:): checked when the gated stage ends; a failure exits 9, starts nothing
# more (the publishing stage it holds back never runs), and the gate table reaches the run
# record (summary.json, events.jsonl) and on_run_end; max_regression compares with the last
# successful run; plan shows the gates; a gate on an unknown stage or metric is a recipe error
# with its position.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
test_init # W, QLORA_CACHE, QLORA_RUNS
export QLORA_TEST_KINDS=1 QLORA_TEST_LOG=$W/ran.log NOTIFY_FILE=$W/notes.txt
cp "$SRC"/tests/recipes/gates/* "$W/"
R=$W/gated.yaml
ran() { if [ -f "$W/ran.log" ]; then tr '\n' ' ' < "$W/ran.log"; fi; rm -f "$W/ran.log"; }
last_run() { echo "$(ls -d "$W"/runs/gated/* | sort | tail -n1)/"; }
py_get() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print($2)" "$1"; }

# the plan orders the held-back stage last and shows the gate
out=$("$BIN" plan "$R" 2>&1)
order=$(awk '/^  [a-z]/ && $2 ~ /test_/ {printf "%s ", $1}' <<<"$out")
[ "$order" = "a other pub " ] && ok "plan orders the publishing stage after the gated one" || bad "plan order '$order': $out"
grep -q "gate a.bytes: min 7, max_regression 25% (higher is better)" <<<"$out" && grep -q "holds back: pub" <<<"$out" \
  && ok "plan shows the gate and what it holds back" || bad "plan gates: $out"

# 1. passing: everything runs, the table says pass
rm -f "$NOTIFY_FILE"
TEXT=hello "$BIN" "$R" -q; rc=$?
got=$(ran)
[ $rc -eq 0 ] && [ "$got" = "a other pub " ] && ok "a passing gate lets the publishing stage run" || bad "pass: rc $rc ran '$got'"
s=$(last_run)summary.json
[ "$(py_get "$s" "s['gates'][0]['result'], s['gates'][0]['value'], s['ok']")" = "pass 8.0 True" ] \
  && ok "summary.json holds the gate row" || bad "summary: $(cat "$s")"
grep -q '"type":"gate"' "$(last_run)events.jsonl" && ok "events.jsonl has the gate event" || bad "no gate event"
grep -qx "a.bytes pass 8.0" "$NOTIFY_FILE" && ok "on_run_end gets the gate table" || bad "notes: $(cat "$NOTIFY_FILE")"

# 2. min: a value below the bound fails with exit 9, and nothing after it starts ('other' has
# to run, 'pub' is held back)
rm -f "$NOTIFY_FILE"
out=$(TEXT=hi "$BIN" "$R" -q --set stages.other.text=o2 2>&1); rc=$?
got=$(ran)
[ $rc -eq 9 ] && ok "a failing gate exits 9" || bad "min fail rc $rc: $out"
[ "$got" = "a " ] && ok "a failing gate starts nothing more (no publish, no other stage)" || bad "ran after failure: '$got'"
grep -q "error: quality gate failed: a.bytes = 5 is below min 7; nothing was exported or published" <<<"$out" \
  && ok "the error names the gate, the value and the bound" || bad "min message rc $rc: $out"
s=$(last_run)summary.json
[ "$(py_get "$s" "s['gates'][0]['result'], s['code'], s['stages']['pub']['status']")" = "fail 9 not run" ] \
  && ok "the failed gate is in the run record; pub did not run" || bad "summary after failure: $(cat "$s")"
grep -qx "a.bytes fail 5.0" "$NOTIFY_FILE" && grep -qx "ok false" "$NOTIFY_FILE" && ok "on_run_end sees the failure" \
  || bad "notes: $(cat "$NOTIFY_FILE")"

# 3. max_regression: compared with the last successful run (bytes 8 for 'hello', 12 for 'hello,bob')
TEXT=hello,bob "$BIN" "$R" -q; rc=$?; ran >/dev/null
[ $rc -eq 0 ] && ok "a better value passes" || bad "regression baseline rc $rc"
out=$(TEXT=hello "$BIN" "$R" -q 2>&1); rc=$?; ran >/dev/null
# 8 vs 12: 33% worse, more than 25%
[ $rc -eq 9 ] && grep -q "is 33.33% worse than 12 in the last good run" <<<"$out" && ok "a regression beyond max_regression fails" \
  || bad "regression rc $rc: $out"
s=$(last_run)summary.json
[ "$(py_get "$s" "s['gates'][0]['previous'], round(s['gates'][0]['bound'], 2)")" = "12.0 9.0" ] \
  && ok "the row has the previous value and the bound" || bad "regression row: $(cat "$s")"
out=$(TEXT=hello,b "$BIN" "$R" -q 2>&1); rc=$?; ran >/dev/null
# 10 vs 12 (the failed run is not a baseline): 17% worse, allowed
[ $rc -eq 0 ] && ok "a regression within max_regression passes (failed runs are no baseline)" || bad "within: rc $rc $out"
sed 's/max_regression: 0.25/max_regression: 0.0/' "$R" > "$W/strict.yaml"
out=$(TEXT=hello "$BIN" "$W/strict.yaml" -q 2>&1); rc=$?; ran >/dev/null
[ $rc -eq 9 ] && ok "max_regression 0 allows nothing worse" || bad "strict rc $rc: $out"

# 4. cached: the gate is checked again from the cached manifest
out=$(TEXT=hello "$BIN" "$W/strict.yaml" -q 2>&1); rc=$?; got=$(ran)
[ $rc -eq 9 ] && [ -z "$got" ] && ok "a cached gated stage is checked again and still fails" || bad "cached rc $rc ran '$got'"

# 5. --only the publishing stage: the gate comes from the cache
out=$(TEXT=hello,bob "$BIN" "$R" -q --only pub --set stages.pub.text=pub2 2>&1); rc=$?; got=$(ran)
[ $rc -eq 0 ] && [ "$got" = "pub " ] && ok "--only pub checks the cached gated stage first" || bad "--only pub rc $rc ran '$got': $out"
out=$(TEXT=new-text "$BIN" "$R" -q --only pub 2>&1); rc=$?; ran >/dev/null
[ $rc -eq 2 ] && grep -q "stage 'pub' needs 'a', which is not in the cache" <<<"$out" \
  && ok "--only pub with an uncached gated stage is refused" || bad "--only uncached rc $rc: $out"

# 6. --jobs: the held-back stage waits for the gated stage even when it does not read it
out=$("$BIN" "$W/parallel.yaml" -q --jobs 3 2>&1); rc=$?
got=$(ran)
ev="$(ls -d "$W"/runs/parallel/* | sort | tail -n1)/events.jsonl"
order=$(python3 -c "import json,sys; print(' '.join(e['type'] + ':' + e.get('stage', '') for e in map(json.loads, open(sys.argv[1])) if e['type'] in ('stage_start', 'stage_end', 'gate')))" "$ev")
[ $rc -eq 0 ] && grep -q "stage_end:slow gate:slow stage_start:pub" <<<"$order" && ok "with --jobs 3 the publishing stage starts after the gate" \
  || bad "parallel: rc $rc order '$order' $out"
out=$(TEXT=s "$BIN" "$W/parallel.yaml" -q --jobs 3 --set stages.pub.text=p2 2>&1); rc=$?
got=$(ran)
[ $rc -eq 9 ] && ! grep -q pub <<<"$got" && ok "and does not start when the gate fails" || bad "parallel fail: rc $rc ran '$got'"

# 7. recipe errors, each with its position
out=$("$BIN" validate "$W/bad.yaml" 2>&1); rc=$?
[ $rc -eq 3 ] && ok "bad gates: exit 3" || bad "bad gates rc $rc"
grep -q "bad.yaml:7:3: gates: 'aa.bytes' names stage 'aa', which does not exist (did you mean 'a'?)" <<<"$out" \
  && ok "unknown stage: position and suggestion" || bad "unknown stage: $out"
grep -q "bad.yaml:8:3: gates: a test_echo stage records no metric 'byts' (did you mean 'bytes'?); it records: bytes" <<<"$out" \
  && ok "unknown metric: position, suggestion and the kind's metrics" || bad "unknown metric: $out"
grep -q "bad.yaml:9:3: gates: 'pub.bytes' gates stage 'pub', which exports or publishes" <<<"$out" \
  && ok "a gate on a publishing stage is refused" || bad "gate on pub: $out"
grep -q "bad.yaml:10:13: gate 'a.bytes': unknown key 'mni' (did you mean 'min'?)" <<<"$out" \
  && ok "unknown condition: did you mean" || bad "unknown condition: $out"
printf 'name: g2\nstages:\n  a: {kind: test_echo}\ngates:\n  a.bytes: {}\n  a.bytes2: [1]\n' > "$W/g2.yaml"
out=$("$BIN" validate "$W/g2.yaml" 2>&1); rc=$?
[ $rc -eq 3 ] && grep -q "g2.yaml:5:12: gate 'a.bytes': no condition: give min, max or max_regression" <<<"$out" \
  && ok "a gate without a condition is refused" || bad "no condition: rc $rc $out"
printf 'name: g3\nstages:\n  a: {kind: test_echo}\ngates:\n  a.bytes: {min: 5, max: 1}\n' > "$W/g3.yaml"
out=$("$BIN" validate "$W/g3.yaml" 2>&1); rc=$?
[ $rc -eq 3 ] && grep -q "min 5 is above max 1" <<<"$out" && ok "min above max is refused" || bad "min>max: rc $rc $out"
printf 'name: g4\nstages:\n  a: {kind: test_echo}\ngates: [a.bytes]\n' > "$W/g4.yaml"
out=$("$BIN" validate "$W/g4.yaml" 2>&1); rc=$?
[ $rc -eq 3 ] && grep -q "g4.yaml:4:8: recipe: 'gates' must be a mapping" <<<"$out" && ok "gates as a list is refused" || bad "list: rc $rc $out"

# 8. the README documents exit code 9
grep -q "^| 9 | a quality gate failed" "$SRC/README.md" && ok "README documents exit 9" || bad "README exit 9"

checks_done
