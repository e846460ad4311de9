#!/usr/bin/env bash
# test_train_kill.sh: crash safety of training through the real program. The demo recipe
# (shortened) is killed with SIGKILL at KILLS (default 8) moments spread over an uninterrupted
# train run's wall time (even kill i at (i + r)/KILLS of it, r random in [0, 1); odd ones soon after
# a checkpoint appears), run again after each
# kill, and must end with an adapter byte-identical to an uninterrupted run's every time. Where
# each kill landed is read from the cache (before the first checkpoint, in training, after the
# artifact): at least a quarter must land in training, or the test proved nothing about resuming.
# Then SIGINT: the run stops with exit code 7 (interrupted), and the next run resumes.
set -uo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
KILLS=${KILLS:-8} # the 20-of-20 proof over a whole recipe is tests/test_crash_kill.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export QLORA_RUNS="$tmp/runs"
SET=(--set stages.train.max_steps=40 --set stages.train.save_steps=4 --set stages.train.eval_steps=0 --quiet)

# the trained adapter of the run whose cache is $1
adapter_of() { find "$1/artifacts/train" -name adapter_model.safetensors | head -1; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# the stages before train, reused by every run below, so the kills land in the train stage
QLORA_CACHE="$tmp/base" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until lora >/dev/null 2>&1 || fail "the stages before train failed"
rm -rf "$tmp/base/work"
cp -r "$tmp/base" "$tmp/ref"
t0=$(now_ms)
QLORA_CACHE="$tmp/ref" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >/dev/null 2>&1 || fail "reference run failed"
T=$(( $(now_ms) - t0 ))
ref=$(adapter_of "$tmp/ref")
[ -f "$ref" ] || fail "no reference adapter"

ok=0 before=0 in_train=0 after=0
for i in $(seq 0 $((KILLS - 1))); do
  c="$tmp/k$i"
  cp -r "$tmp/base" "$c"
  d=$(( (i * 32768 + RANDOM) * T / (KILLS * 32768) )) # ms into the run
  QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >/dev/null 2>&1 &
  pid=$!
  if [ $((i % 2)) -eq 1 ]; then
    # every other kill waits for a checkpoint (then up to 0.1 s more): on a loaded machine the
    # start-up takes most of the run's wall time, and kills placed by the clock alone would miss
    # the training loop
    for _ in $(seq 1 2000); do
      ls "$c"/work/*/checkpoint-*.bin >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.01
    done
    d="a checkpoint + $((RANDOM % 100))"
    sleep "0.0$((RANDOM % 10))"
  else
    sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
  fi
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ -n "$(adapter_of "$c" 2>/dev/null)" ]; then where="after the train artifact"; after=$((after + 1))
  elif ls "$c"/work/*/checkpoint-*.bin >/dev/null 2>&1; then where="in training"; in_train=$((in_train + 1))
  else where="before the first checkpoint"; before=$((before + 1)); fi
  QLORA_CACHE="$c" "$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >"$tmp/resume$i.txt" 2>&1 ||
    { cat "$tmp/resume$i.txt"; fail "run after kill $i (at $d ms, $where) failed"; }
  got=$(adapter_of "$c")
  if cmp -s "$ref" "$got"; then ok=$((ok + 1)); else echo "kill $i at $d ms ($where): adapter differs"; fi
  rm -rf "$c"
done
echo "kill -9 and resume: $ok of $KILLS identical; kills over a $T ms run: $before before the first checkpoint, $in_train in training, $after after"
[ "$ok" -eq "$KILLS" ] || fail "resumed adapters differ"
[ "$in_train" -ge $(( (KILLS + 3) / 4 )) ] || fail "only $in_train of $KILLS kills landed in training (want a quarter): the resume path was not tested"

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
