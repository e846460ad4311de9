#!/usr/bin/env bash
# test_crash_kill.sh: kill -9 at 20 moments of a real recipe run (tests/reliability/common.sh:
# init_model, quantize_nf4, attach_lora, dataset, a 40-step CPU training run checkpointing
# every step, export), each time resumed by running the recipe again: the final adapter (and
# merged model) must be byte-identical to an uninterrupted run's, 20 of 20.
#
# Each trial starts from a cache holding the stages before training (base, nf4, lora, data) and
# runs the recipe, which trains and exports. An even trial i (0..18) kills at (i/2 + r_i)/10 of
# the wall time of an uninterrupted run made just before it (load on the machine changes it
# several-fold), so kills land in start-up, in training steps, in checkpoint writes, in the
# commit of the train artifact and in export. An odd trial kills in training whatever the load:
# it waits for the checkpoint of step s_i (1..30) to appear, then r_i x 20 ms more. r_i in [0,1)
# and s_i come from a fixed-seed LCG (reproducible; KILL_SEED changes it). After each
# kill: every artifact under a final name is complete (`cache verify` passes); then the next
# run succeeds, resuming from the last checkpoint, and leaves no temp or work files.
set -u
. "$(dirname "$0")/reliability/common.sh"
N=${KILL_TRIALS:-20}
lcg_seed "${KILL_SEED:-20261129}"
rel_recipe "$W/r.yaml" 40
cd "$W"

# the stages before training, kept aside; then the uninterrupted reference run from there
"$BIN" r.yaml -q --until data || { bad "the stages before training failed"; checks_done; exit 1; }
cp -a cache pre
t0=$(now_ms)
"$BIN" r.yaml -q; rc=$?
T=$(( $(now_ms) - t0 ))
[ $rc -eq 0 ] || { bad "the uninterrupted run failed (rc $rc)"; checks_done; exit 1; }
mkdir ref
cp "$(art cache train)/adapter/adapter_model.safetensors" ref/train.safetensors
cp "$(art cache export)/adapter/adapter_model.safetensors" ref/export.safetensors
cp "$(art cache export)/model/model.safetensors" ref/merged.safetensors
# A second uninterrupted run gives the same bytes (else nothing below can pass).
rm -rf cache; cp -a pre cache; "$BIN" r.yaml -q && cmp -s ref/export.safetensors "$(art cache export)/adapter/adapter_model.safetensors"
check "an uninterrupted run is deterministic (reference run took $T ms)" test $? -eq 0

same=0 resumed=0 in_train=0 before_train=0 after_train=0
for ((i = 0; i < N; i++)); do
    # An even trial's moment is a share of an uninterrupted run timed just before: on a machine
    # busy with other work (ctest -j2, a build) one run takes 0.6-5 s, and a window timed once at
    # the start put 17 of 20 kills after training on 2026-12-05 (or 14 before the first
    # checkpoint). Timing alone still failed "a quarter in training" once that day, under three
    # jobs on two cores: an odd trial waits for a checkpoint instead, whatever the load.
    lcg_next
    if ((i % 2 == 0)); then
        rm -rf cache; cp -a pre cache
        t0=$(now_ms)
        "$BIN" r.yaml -q >/dev/null 2>&1 || { bad "trial $i: the uninterrupted run that times it failed"; continue; }
        T=$(( $(now_ms) - t0 ))
    fi
    rm -rf cache; cp -a pre cache
    "$BIN" r.yaml -q >/dev/null 2>&1 & pid=$!
    t0=$(now_ms)
    if ((i % 2 == 0)); then
        d=$(( (i / 2 * 32768 + LCG) * T / ((N + 1) / 2 * 32768) ))
        sleep "$(printf '%d.%03d' $((d / 1000)) $((d % 1000)))"
        moment="at $d ms"
    else
        s=$(( 1 + LCG % 30 )) d=$(( LCG * 20 / 32768 ))
        while kill -0 $pid 2>/dev/null; do
            ck=$(newest_checkpoint)
            [ -n "$ck" ] && [ "$ck" -ge $s ] && break
            sleep 0.005
        done
        sleep "0.$(printf '%03d' $d)"
        moment="at $(( $(now_ms) - t0 )) ms, step $s's checkpoint + $d ms"
    fi
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    # where did it land?
    ck=$(newest_checkpoint)
    if [ -n "$(art cache train)" ]; then where="after training"; after_train=$((after_train + 1))
    elif [ -n "$ck" ]; then where="in training (checkpoint of step $ck)"; in_train=$((in_train + 1))
    else where="before the first checkpoint"; before_train=$((before_train + 1)); fi
    # nothing half-written under a final name
    if ! "$BIN" cache verify >verify.out 2>&1; then
        bad "trial $i: kill $moment ($where) left a corrupt artifact: $(cat verify.out)"; continue
    fi
    for a in cache/artifacts/*/*/; do
        [ -e "$a" ] && [ ! -f "$a/manifest.json" ] && bad "trial $i: $a has no manifest"
    done
    "$BIN" r.yaml -q >rerun.out 2>&1; rc=$?
    if [ $rc -ne 0 ]; then bad "trial $i: the run after a kill $moment ($where) failed (rc $rc): $(tail -n3 rerun.out)"; continue; fi
    grep -q '"resumed_from_step"' "$(art cache train)/manifest.json" && resumed=$((resumed + 1))
    if cmp -s ref/train.safetensors "$(art cache train)/adapter/adapter_model.safetensors" &&
       cmp -s ref/export.safetensors "$(art cache export)/adapter/adapter_model.safetensors" &&
       cmp -s ref/merged.safetensors "$(art cache export)/model/model.safetensors"; then
        same=$((same + 1))
        echo "     trial $i: kill $moment ($where): identical"
    else
        bad "trial $i: kill $moment ($where): the final adapter differs from the uninterrupted run's"
    fi
    left=$(find cache/tmp cache/work -mindepth 1 | head -n3)
    [ -z "$left" ] || bad "trial $i: temp or work files left after the successful run: $left"
done
echo "     kills: $before_train before the first checkpoint, $in_train in training, $after_train after; $resumed runs resumed from a checkpoint"
# The one window a kill can leave garbage in: after the train artifact is committed, before
# its checkpoints are removed. Made on purpose here: the next run (train cached) removes them.
key=$(basename "$(art cache train)")
mkdir -p "cache/work/$key"; cp ref/train.safetensors "cache/work/$key/checkpoint-00000040.bin"
"$BIN" r.yaml -q
check "checkpoints left by a kill after the commit are removed by the next run" test ! -e "cache/work/$key"
check "kill -9 at $N moments: final adapter byte-identical $same of $N" test $same -eq $N
# The test only proves something if kills hit the training loop: ask for a quarter of them.
check "at least $((N / 4)) kills landed mid-training ($in_train)" test $in_train -ge $((N / 4))
checks_done
