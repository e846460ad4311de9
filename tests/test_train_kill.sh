#!/usr/bin/env bash
# test_train_kill.sh: crash safety of training through the real program. The demo recipe
# (shortened) is killed with SIGKILL at KILLS (default 8) random moments, run again after each
# kill, and must end with an adapter byte-identical to an uninterrupted run's every time.
# Then SIGINT: the run stops with exit code 7 (interrupted), and the next run resumes.
set -uo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
SRC=${QLORA_SRC:-.}
KILLS=${KILLS:-8} # the 20-of-20 proof over a whole recipe is tests/test_crash_kill.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export QLORA_RUNS="$tmp/runs"
SET=(--set stages.train.max_steps=40 --set stages.train.save_steps=4 --set stages.train.eval_steps=0 --quiet)
fail() { echo "FAIL: $*" >&2; exit 1; }

# the trained adapter of the run whose cache is $1
adapter_of() { find "$1/artifacts/train" -name adapter_model.safetensors | head -1; }

QLORA_CACHE="$tmp/ref" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >/dev/null 2>&1 || fail "reference run failed"
ref=$(adapter_of "$tmp/ref")
[ -f "$ref" ] || fail "no reference adapter"
# the stages before train, reused by every killed run, so the kills land in training
cp -r "$tmp/ref" "$tmp/base" && rm -rf "$tmp/base/artifacts/train" "$tmp/base/work"

ok=0
for i in $(seq 1 "$KILLS"); do
  c="$tmp/k$i"
  cp -r "$tmp/base" "$c"
  # kill after 50..849 ms: anywhere in loading, stepping, checkpointing or writing the artifact
  delay=$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", 0.05 + (r % 800) / 1000 }')
  QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >/dev/null 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >"$tmp/resume$i.txt" 2>&1 ||
    { cat "$tmp/resume$i.txt"; fail "run after kill $i (at ${delay}s) failed"; }
  got=$(adapter_of "$c")
  if cmp -s "$ref" "$got"; then ok=$((ok + 1)); else echo "kill $i at ${delay}s: adapter differs"; fi
  rm -rf "$c"
done
echo "kill -9 and resume: $ok of $KILLS identical"
[ "$ok" -eq "$KILLS" ] || fail "resumed adapters differ"

# SIGINT: checkpoint, exit code 7, then the next run resumes to the same bytes
c="$tmp/int"
cp -r "$tmp/base" "$c"
QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1 400); do
  ls "$c"/work/*/checkpoint-*.bin >/dev/null 2>&1 && break
  sleep 0.01
done
kill -INT "$pid"
wait "$pid"
rc=$?
[ "$rc" -eq 7 ] || fail "SIGINT: exit code $rc, expected 7 (interrupted)"
ls "$c"/work/*/checkpoint-*.bin >/dev/null 2>&1 || fail "SIGINT: no checkpoint kept"
QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >"$tmp/int.txt" 2>&1 || { cat "$tmp/int.txt"; fail "run after SIGINT failed"; }
cmp -s "$ref" "$(adapter_of "$c")" || fail "SIGINT: the resumed adapter differs"
echo "SIGINT: exit 7, resumed to identical bytes"
