#!/usr/bin/env bash
# test_train_disk_full.sh: training on a full disk. The train stage's checkpoint directory is
# put on a 64 KiB tmpfs, smaller than one checkpoint: the run must fail with a clear message
# (exit 1, "No space left on device", naming the checkpoint), commit no train artifact, and
# succeed once there is room again. Needs root for the tmpfs (CI runs as root): fails without it.
set -uo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
tmp=$(mktemp -d)
small="$tmp/small"
mkdir -p "$small"
cleanup() { umount "$small" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
if ! out=$(mount -t tmpfs -o size=64k tmpfs "$small" 2>&1); then
  echo "FAIL: cannot mount a tmpfs for the full-disk test (uid $(id -u), needs root): $out"
  exit 1
fi
export QLORA_CACHE="$tmp/cache" QLORA_RUNS="$tmp/runs"
SET=(--set stages.train.max_steps=20 --set stages.train.save_steps=4 --quiet)

"$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until lora >/dev/null 2>&1 || fail "the stages before train failed"
rm -rf "$QLORA_CACHE/work"
ln -s "$small" "$QLORA_CACHE/work"
"$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >"$tmp/out.txt" 2>&1
rc=$?
cat "$tmp/out.txt"
[ "$rc" -eq 1 ] || fail "exit code $rc on a full disk, expected 1 (stage failed)"
grep -q "checkpoint" "$tmp/out.txt" && grep -q "No space left on device" "$tmp/out.txt" ||
  fail "the message does not say that the checkpoint could not be written for lack of space"
if [ -d "$QLORA_CACHE/artifacts/train" ] && [ -n "$(ls -A "$QLORA_CACHE/artifacts/train")" ]; then
  fail "a train artifact was committed after the failure"
fi
find "$small" -name 'checkpoint-*.bin.tmp*' | grep -q . && fail "a partial checkpoint was left behind"

# room again: the same run completes
rm "$QLORA_CACHE/work"
"$BIN" "$SRC/recipes/demo.yaml" "${SET[@]}" --until train >"$tmp/out2.txt" 2>&1 || { cat "$tmp/out2.txt"; fail "the run after freeing space failed"; }
echo "full disk: clear error, nothing committed, then success"
