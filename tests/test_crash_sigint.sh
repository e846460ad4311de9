#!/usr/bin/env bash
# test_crash_sigint.sh: SIGINT (Ctrl-C) and SIGTERM during a real CPU training run (the recipe
# of tests/reliability/common.sh, with save_steps 0 so that the only checkpoint is the one the
# interrupt writes): the run exits with the interrupted code (7) and says where the checkpoint
# is, the checkpoint of the interrupted step is on disk, no train artifact is committed, and
# the next run resumes from it and ends with the same adapter bytes as an uninterrupted run.
# Also: a damaged newest checkpoint is skipped (resume from the one before, same bytes), and
# Ctrl-C on a run waiting for another run's stage stops it at once.
set -u
. "$(dirname "$0")/reliability/common.sh"
rel_recipe "$W/r.yaml" 120 # long enough that the polls below catch it mid-run on a fast machine
cd "$W"
NOSAVE=(--set stages.train.save_steps=0) # not part of the cache key: same stage, same artifact

"$BIN" r.yaml -q --until data || { bad "the stages before training failed"; checks_done; exit 1; }
cp -a cache pre
"$BIN" r.yaml -q "${NOSAVE[@]}" || { bad "the uninterrupted run failed"; checks_done; exit 1; }
cp "$(art cache export)/adapter/adapter_model.safetensors" ref.safetensors

# interrupt SIG once the training log in the stage's work dir shows step AT
interrupt_at() { # SIG AT
    rm -rf cache; cp -a pre cache
    "$BIN" r.yaml "${NOSAVE[@]}" >out.txt 2>&1 & pid=$!
    local n=0
    for _ in $(seq 400); do
        n=$(cat cache/work/*/train_log.jsonl 2>/dev/null | grep -c '"type":"step"')
        [ "$n" -ge "$2" ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.01
    done
    kill -"$1" $pid; wait $pid; rc=$?
}

for sig in INT TERM; do
    interrupt_at $sig 5
    check "SIG$sig: exit code 7 (got $rc)" test $rc -eq 7
    step=$(sed -n 's/.*interrupted at step \([0-9]*\) of 120.*/\1/p' out.txt | head -n1)
    check "SIG$sig: the message names the step and the checkpoint" grep -q "interrupted at step [0-9]* of 120: checkpoint saved in '.*'; run again to resume" out.txt
    ck=$(ls cache/work/*/checkpoint-*.bin 2>/dev/null | tail -n1)
    check "SIG$sig: a checkpoint of the interrupted step (${step:-?}) is written" test -n "$step" -a "$ck" != "" -a "$(basename "$ck")" = "$(printf 'checkpoint-%08d.bin' "${step:-0}")"
    check "SIG$sig: 0 < step < 120" test "${step:-0}" -gt 0 -a "${step:-120}" -lt 120
    check "SIG$sig: no train artifact committed" test -z "$(art cache train)"
    ev=$(ls -d runs/rel/* | sort | tail -n1)/events.jsonl
    check "SIG$sig: events.jsonl records the interruption" grep -q '"type":"interrupted"' "$ev"
    "$BIN" r.yaml "${NOSAVE[@]}" >again.txt 2>&1; rc=$?
    check "SIG$sig: the next run succeeds" test $rc -eq 0
    check "SIG$sig: it resumes from the checkpoint of step $step" grep -q "resuming from checkpoint step $step " again.txt
    check "SIG$sig: the adapter is byte-identical to an uninterrupted run's" cmp -s ref.safetensors "$(art cache export)/adapter/adapter_model.safetensors"
done
# A damaged newest checkpoint (a crash of the disk rather than of the program: a flipped byte,
# a file cut short) is skipped with a message; the run resumes from the one before it and still
# ends with the same bytes.
for dmg in flip cut; do
    rm -rf cache; cp -a pre cache
    "$BIN" r.yaml >out.txt 2>&1 & pid=$!
    for _ in $(seq 400); do
        [ "$(cat cache/work/*/train_log.jsonl 2>/dev/null | grep -c '"type":"step"')" -ge 6 ] && break
        sleep 0.01
    done
    kill -9 $pid; wait $pid 2>/dev/null
    cks=$(ls cache/work/*/checkpoint-*.bin | sort)
    newest=$(tail -n1 <<<"$cks"); older=$(tail -n2 <<<"$cks" | head -n1)
    ostep=$(checkpoint_step <<<"$older")
    if [ $dmg = flip ]; then flip_byte "$newest" 200
    else truncate -s -100 "$newest"; fi
    "$BIN" r.yaml >again.txt 2>&1; rc=$?
    check "damaged checkpoint ($dmg): the run succeeds (rc $rc)" test $rc -eq 0
    check "damaged checkpoint ($dmg): skipped with a message" grep -Eq "skipping checkpoint: .*(checksum mismatch|truncated)" again.txt
    check "damaged checkpoint ($dmg): resumed from the one before (step $ostep)" grep -q "resuming from checkpoint step $ostep " again.txt
    check "damaged checkpoint ($dmg): the adapter is byte-identical" cmp -s ref.safetensors "$(art cache export)/adapter/adapter_model.safetensors"
done

# Ctrl-C on a run that waits for another run's stage (two runs on one cache): it stops at
# once with code 7, and the run computing the stage goes on.
rm -rf cache; cp -a pre cache
LONG=(--set stages.train.max_steps=100000)
"$BIN" r.yaml "${LONG[@]}" >a.txt 2>&1 & pa=$!
for _ in $(seq 400); do [ -n "$(cat cache/work/*/train_log.jsonl 2>/dev/null)" ] && break; sleep 0.01; done
"$BIN" r.yaml "${LONG[@]}" >b.txt 2>&1 & pb=$!
for _ in $(seq 400); do grep -q "waiting: another run is computing stage 'train'" b.txt && break; sleep 0.01; done
t0=$(now_ms)
kill -INT $pb; wait $pb; rc=$?
dt=$(( $(now_ms) - t0 ))
check "SIGINT while waiting for another run's stage: exit 7 (got $rc)" test $rc -eq 7
check "SIGINT while waiting: at once ($dt ms)" test $dt -lt 3000
check "SIGINT while waiting: it says so" grep -q "interrupted while waiting for another run to finish stage 'train'" b.txt
check "SIGINT while waiting: the other run goes on" kill -0 $pa
kill -INT $pa; wait $pa; rc=$?
check "and the other run stops with 7 when it gets its own (got $rc)" test $rc -eq 7
checks_done
