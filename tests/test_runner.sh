#!/usr/bin/env bash
# The runner's promises, with test-only stage kinds (stages/testkinds.c):
# cached re-runs run nothing; one changed parameter re-runs exactly that stage and its
# dependents; an edited file re-runs its stage; SIGKILL mid-stage leaves the cache clean and
# the next run completes; two concurrent runs compute each stage once; --lock; --only,
# --until, --force; a corrupt artifact is detected and recomputed; exit codes.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
test_init # W, QLORA_CACHE, QLORA_RUNS
export QLORA_TEST_KINDS=1 QLORA_TEST_LOG=$W/ran.log
cp "$SRC/tests/recipes/runner/chain.yaml" "$W/"
echo one > "$W/input.txt"
R=$W/chain.yaml
ran() { if [ -f "$W/ran.log" ]; then sort "$W/ran.log" | tr '\n' ' '; fi; rm -f "$W/ran.log"; }
expect_ran() { # name, expected sorted list
  local got; got=$(ran)
  if [ "$got" = "$2" ]; then ok "$1"; else bad "$1: ran '$got', expected '$2'"; fi
}

"$BIN" "$R" -q; expect_ran "first run runs every stage" "a b c side "
"$BIN" "$R" -q; expect_ran "second run is all cached" ""
"$BIN" "$R" -q --set stages.b.text=changed; expect_ran "a changed param re-runs the stage and its dependents" "b c "
"$BIN" "$R" -q --set stages.b.text=changed; expect_ran "and then it is cached" ""
echo two > "$W/input.txt"
"$BIN" "$R" -q --set stages.b.text=changed; expect_ran "an edited file re-runs its stage and dependents" "c side "
out=$("$BIN" plan "$R" --set stages.b.text=other 2>&1)
grep -q "why: text: \"changed\" -> \"other\"" <<<"$out" && ok "plan says which parameter changed" || bad "plan why: $out"
"$BIN" "$R" -q --force b; expect_ran "--force re-runs the stage and everything after it" "b c "
"$BIN" "$R" -q --only a --force a; expect_ran "--only runs one stage" "a "
"$BIN" "$R" -q --until b --set stages.a.text=new; expect_ran "--until stops after the stage" "a b "
"$BIN" "$R" -q --only c --set stages.a.text=new2 >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ] && ok "--only with an uncached input is a usage error" || bad "--only uncached: rc $rc"

# corrupt a cached artifact: detected before use, recomputed, and reported by cache verify
"$BIN" "$R" -q; ran >/dev/null
key=$("$BIN" plan "$R" | awk '$1 == "a" {print $4}')
f=$(ls "$W"/cache/artifacts/test_echo/$key*/out.txt | head -n1)
printf 'X' | dd of="$f" bs=1 seek=0 conv=notrunc 2>/dev/null; touch -d '2001-01-01' "$f"
"$BIN" cache verify >/dev/null 2>&1; rc=$?
[ $rc -eq 1 ] && ok "cache verify reports a flipped byte" || bad "cache verify rc $rc"
"$BIN" "$R" -q; got=$(ran)
[ -n "$got" ] && ok "a corrupt artifact is recomputed ($got)" || bad "corrupt artifact was used"
"$BIN" cache verify >/dev/null 2>&1 && ok "cache verify clean after recompute" || bad "still corrupt"

# SIGKILL during a stage: no artifact under a final name, next run completes
rm -rf "$W/cache"
SLEEP_MS=3000 "$BIN" "$R" -q & pid=$!
for _ in $(seq 100); do [ -d "$W/cache/tmp" ] && ls "$W"/cache/tmp | grep -q test_sleep && break; sleep 0.05; done
kill -9 $pid; wait $pid 2>/dev/null
n=$(ls "$W"/cache/artifacts/test_sleep 2>/dev/null | wc -l)
[ "$n" -eq 0 ] && ok "SIGKILL leaves no half artifact" || bad "artifact after kill: $n"
ran >/dev/null
SLEEP_MS=3000 "$BIN" "$R" -q; rc=$?
[ $rc -eq 0 ] && ok "the next run completes" || bad "rerun after kill rc $rc"
left=$(ls "$W"/cache/tmp | wc -l)
[ "$left" -eq 0 ] && ok "stale temp dirs are cleaned" || bad "tmp left: $left"

# two runs at once compute each stage once
rm -rf "$W/cache"; ran >/dev/null
SLEEP_MS=800 "$BIN" "$R" -q & p1=$!
SLEEP_MS=800 "$BIN" "$R" -q & p2=$!
wait $p1; r1=$?; wait $p2; r2=$?
got=$(ran)
[ $r1 -eq 0 ] && [ $r2 -eq 0 ] && [ "$got" = "a b c side " ] && ok "two concurrent runs compute each stage once" || bad "concurrent: rc $r1 $r2 ran '$got'"

# --lock: an overlapping run of the same recipe exits at once with code 6
rm -rf "$W/cache"
SLEEP_MS=1500 "$BIN" "$R" -q --lock & p1=$!
sleep 0.4
SLEEP_MS=1500 "$BIN" "$R" -q --lock 2>/dev/null; rc=$?
wait $p1
[ $rc -eq 6 ] && ok "--lock refuses an overlapping run (exit 6)" || bad "--lock rc $rc"

# SIGINT: interrupted exit code 7
rm -rf "$W/cache"
SLEEP_MS=5000 "$BIN" "$R" -q & pid=$!
for _ in $(seq 100); do ls "$W"/cache/tmp 2>/dev/null | grep -q test_sleep && break; sleep 0.05; done
kill -INT $pid; wait $pid; rc=$?
[ $rc -eq 7 ] && ok "SIGINT exits with the interrupted code (7)" || bad "SIGINT rc $rc"

# a failing stage: exit 1, nothing committed, the run record says so
"$BIN" "$R" -q --set stages.c.fail=true 2>/dev/null; rc=$?
[ $rc -eq 1 ] && ok "a failed stage exits 1" || bad "failed stage rc $rc"
last=$(ls -d "$W"/runs/chain/* | sort | tail -n1)
grep -q '"type":"stage_failed"' "$last/events.jsonl" && ok "events.jsonl records the failure" || bad "no stage_failed event"
[ -f "$last/recipe.yaml" ] && [ -f "$last/c.log" ] && ok "run record has the resolved recipe and stage logs" || bad "run record incomplete"

# --jobs: independent stages in parallel still give the same result
rm -rf "$W/cache"; ran >/dev/null
"$BIN" "$R" -q --jobs 3; rc=$?; got=$(ran)
[ $rc -eq 0 ] && [ "$got" = "a b c side " ] && ok "--jobs 3 runs everything once" || bad "--jobs: rc $rc ran '$got'"
# --json prints events on stdout
n=$("$BIN" "$R" --json | grep -c '"type":"stage_cached"')
[ "$n" -eq 4 ] && ok "--json prints one event per stage" || bad "--json events: $n"

# usage errors: exit 2
"$BIN" "$R" --bogus 2>/dev/null; [ $? -eq 2 ] && ok "unknown option exits 2" || bad "unknown option"
"$BIN" frobnicate 2>/dev/null; [ $? -eq 2 ] && ok "unknown command exits 2" || bad "unknown command"
"$BIN" --help | grep -q "usage: qlora-run" && ok "--help on stdout, exit 0" || bad "--help"
"$BIN" show "$R" | grep -q "mode: fast" && ok "show prints defaults" || bad "show"
"$BIN" cache ls | grep -q test_echo && ok "cache ls lists artifacts" || bad "cache ls"
"$BIN" runs ls | grep -q chain && ok "runs ls lists run records" || bad "runs ls"
"$BIN" cache gc --keep-last 1 | grep -q removed && ok "cache gc" || bad "cache gc"
"$BIN" "$R" -q; expect_ran "gc kept the last run's artifacts" ""
# a run killed while appending its record leaves half a line: the next record still counts
printf '{"time":"x","keys":{"a":' >> "$W/cache/index/chain/runs.jsonl"
"$BIN" "$R" -q; ran >/dev/null
"$BIN" cache gc --keep-last 1 >/dev/null
"$BIN" "$R" -q; expect_ran "a torn runs.jsonl line costs only that run's record" ""

# a keyword-or-directory parameter: a file edited inside the directory re-runs the stage
mkdir -p "$W/tokdir"; echo v1 > "$W/tokdir/tokenizer.json"
"$BIN" "$R" -q --set stages.a.source="$W/tokdir"; ran >/dev/null
echo v2 > "$W/tokdir/tokenizer.json"
out=$("$BIN" plan "$R" --set stages.a.source="$W/tokdir" 2>&1)
grep -q "file 'tokdir/tokenizer.json' changed" <<<"$out" && ok "a directory parameter's content is in the key" || bad "dir param: $out"
"$BIN" validate "$R" --set stages.a.source=no/such/dir >/dev/null 2>&1; [ $? -eq 3 ] && ok "a missing directory is a recipe error" || bad "missing dir accepted"

# notification hooks: on_stage_end per stage that ran, on_run_end once
cp "$SRC/tests/recipes/runner/hooked.yaml" "$SRC/tests/recipes/runner/notify.lua" "$W/"
NOTIFY_FILE=$W/notes.txt "$BIN" "$W/hooked.yaml" -q; rc=$?
got=$(tr '\n' '|' < "$W/notes.txt" 2>/dev/null)
[ $rc -eq 0 ] && [ "$got" = "stage a test_echo|stage b test_echo|run true ran=2|" ] && ok "on_stage_end and on_run_end hooks" || bad "hooks: rc $rc notes '$got'"
# without the io allowance the same hook cannot write: a warning, the run still succeeds
sed -i 's/allow: \[io\]/allow: []/' "$W/hooked.yaml"
out=$(NOTIFY_FILE=$W/notes2.txt "$BIN" "$W/hooked.yaml" --force a 2>&1); rc=$?
[ $rc -eq 0 ] && [ ! -f "$W/notes2.txt" ] && grep -q "warning: on_stage_end hook" <<<"$out" && ok "sandboxed hook cannot write files" || bad "sandbox: rc $rc out $out"

checks_done
