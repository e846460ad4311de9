#!/usr/bin/env bash
# test_data_parallel.sh: data-parallel training through MPI on the CPU backend (docs/multi-gpu.md).
# The demo recipe, shortened, trained by one process with gradient_accumulation_steps 4 and by two
# ranks with 2 each (the same global batch of 16 rows): every step's loss and gradient norm must
# be equal and the adapters the same bytes (the CPU backend sums the micro-batches' gradients in
# fp64 and rounds once, train/trainer.h). The same on three ranks with the optimizer state sharded
# (ZeRO-1) and a bucket a layer, and with two processes started as a Slurm without PMIx starts them (only
# SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, meeting at MASTER_ADDR:MASTER_PORT). The ranks are
# started once with mpirun and once by --gpus 2.
# Then: rank 1 killed mid-run, the next run resumes from rank 0's checkpoint and ends with the
# same bytes as an uninterrupted run; SIGINT on rank 1 stops both with a checkpoint (exit 7); a
# checkpoint of two ranks resumed by one process; evaluate split over the ranks; and bad input
# (a recipe that differs between ranks, a global batch larger than the data), each one error
# from rank 0 and one exit code.
set -uo pipefail
BIN=${QLORA_BIN:?QLORA_BIN must name the qlora-run program}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-.}
tmp=$(mktemp -d)
mpid=""
cleanup() { [ -n "$mpid" ] && kill "$mpid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
command -v mpirun >/dev/null || fail "mpirun is missing: install openmpi-bin (make deps)"
command -v node >/dev/null || fail "node is missing (make deps)"
# CI runs as root on 2 cores: Open MPI's consent to root, and two ranks on whatever cores there are
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader NCCL_NVLS_ENABLE=0 QLORA_RUNS="$tmp/runs"
# Under SANITIZE=address the ranks run without LeakSanitizer: Open MPI keeps allocations past
# MPI_Finalize in plugins it has unloaded, which no suppression can name; the one-process runs
# below still check the same code for leaks
NOLEAK="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
MPI=(env ASAN_OPTIONS="$NOLEAK" mpirun -np 2 --oversubscribe)
# LoRA dropout on, so each rank must also take its own run of the dropout seeds
DROP=(--set stages.lora.lora_dropout=0.1)
LOUD=(--until train --set device=cpu "${DROP[@]}" --set stages.train.micro_batch_size=4 --set stages.train.save_steps=4
      --set stages.train.eval_steps=0)
BASE=("${LOUD[@]}" --quiet)
STEPS=(--set stages.train.max_steps=12)
CMP="node $SRC/tests/dp_compare.mjs"

artifact_of() { find "$1/artifacts/train" -mindepth 1 -maxdepth 1 -type d | head -1; }

# the stages before train, shared by every run below
QLORA_CACHE="$tmp/base" "$BIN" "$SRC/recipes/demo.yaml" --until lora --quiet --set device=cpu "${DROP[@]}" >/dev/null 2>&1 ||
  fail "the stages before train failed"
fresh() { rm -rf "$1" && cp -r "$tmp/base" "$1"; }

# 1. one process, accumulation 4
fresh "$tmp/one"
QLORA_CACHE="$tmp/one" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${STEPS[@]}" \
  --set stages.train.gradient_accumulation_steps=4 >"$tmp/one.txt" 2>&1 || { cat "$tmp/one.txt"; fail "the one-process run failed"; }
one=$(artifact_of "$tmp/one")

# 2. two ranks through mpirun, accumulation 2
fresh "$tmp/two"
QLORA_CACHE="$tmp/two" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${STEPS[@]}" \
  --set stages.train.gradient_accumulation_steps=2 >"$tmp/two.txt" 2>&1 || { cat "$tmp/two.txt"; fail "the two-rank run failed"; }
two=$(artifact_of "$tmp/two")
[ -d "$two" ] || fail "no train artifact from the two-rank run"
$CMP losses "$one/train_log.jsonl" "$two/train_log.jsonl" 0 || fail "per-step losses differ between 1 process and 2 ranks"
cmp "$one/adapter/adapter_model.safetensors" "$two/adapter/adapter_model.safetensors" ||
  fail "the adapters of 1 process and 2 ranks differ"
grep -q "gradients: 1 bucket a step" "$tmp"/runs/demo/*/train.rank1.log || fail "the demo's gradients did not go in one bucket"

# 2b. three ranks (uneven pieces), the optimizer state sharded over them (ZeRO-1), a bucket a layer,
# clipping at work: the bytes of one process with the same global batch of 12 rows
SHARD=(--set stages.train.micro_batch_size=2 --set stages.train.max_grad_norm=0.5)
fresh "$tmp/one6"
QLORA_CACHE="$tmp/one6" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${STEPS[@]}" "${SHARD[@]}" \
  --set stages.train.gradient_accumulation_steps=6 >"$tmp/one6.txt" 2>&1 || { cat "$tmp/one6.txt"; fail "the one-process run (accumulation 6) failed"; }
fresh "$tmp/zero"
QLORA_CACHE="$tmp/zero" env ASAN_OPTIONS="$NOLEAK" mpirun -np 3 --oversubscribe "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" \
  "${STEPS[@]}" "${SHARD[@]}" --set stages.train.gradient_accumulation_steps=2 --set stages.train.shard_optimizer=true \
  --set stages.train.grad_bucket_mb=0 >"$tmp/zero.txt" 2>&1 || { cat "$tmp/zero.txt"; fail "the sharded run failed"; }
grep -q "optimizer state sharded over 3 ranks (ZeRO-1): AdamW m and v .* MiB a rank instead of" "$tmp/zero.txt" ||
  { cat "$tmp/zero.txt"; fail "the sharded run did not report its memory"; }
grep -q "gradients: 2 buckets a step" "$tmp/zero.txt" || { cat "$tmp/zero.txt"; fail "expected a bucket a layer"; }
one6=$(artifact_of "$tmp/one6")
$CMP losses "$one6/train_log.jsonl" "$(artifact_of "$tmp/zero")/train_log.jsonl" 0 || fail "the sharded run's losses differ"
cmp "$one6/adapter/adapter_model.safetensors" "$(artifact_of "$tmp/zero")/adapter/adapter_model.safetensors" ||
  fail "the sharded optimizer on 3 ranks trained another adapter than one process"

# 2c. a Slurm without PMIx: two processes with only SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and
# torchrun's MASTER_ADDR / MASTER_PORT; they meet there and train what one process trains
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
fresh "$tmp/srun"
mkdir -p "$tmp/rdvtmp"
SRUN=(env -u OMPI_MCA_btl ASAN_OPTIONS="$NOLEAK" TMPDIR="$tmp/rdvtmp" QLORA_CACHE="$tmp/srun" SLURM_NTASKS=2 MASTER_ADDR=127.0.0.1
      MASTER_PORT="$port" QLORA_RENDEZVOUS_TIMEOUT=120)
"${SRUN[@]}" SLURM_PROCID=1 SLURM_LOCALID=1 "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${STEPS[@]}" \
  --set stages.train.gradient_accumulation_steps=2 >"$tmp/srun1.txt" 2>&1 &
mpid=$!
"${SRUN[@]}" SLURM_PROCID=0 SLURM_LOCALID=0 "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${STEPS[@]}" \
  --set stages.train.gradient_accumulation_steps=2 >"$tmp/srun0.txt" 2>&1
rc0=$?
wait "$mpid"
rc1=$?
mpid=""
[ "$rc0$rc1" = 00 ] || { cat "$tmp/srun0.txt" "$tmp/srun1.txt"; fail "srun without PMI: exit $rc0 and $rc1"; }
grep -q "data parallel: 2 ranks (srun)" "$tmp/srun0.txt" || { cat "$tmp/srun0.txt"; fail "srun without PMI: not 2 ranks"; }
cmp "$one/adapter/adapter_model.safetensors" "$(artifact_of "$tmp/srun")/adapter/adapter_model.safetensors" ||
  fail "the ranks joined at MASTER_PORT trained another adapter than one process"
[ -z "$(ls -A "$tmp/rdvtmp")" ] || fail "rank 0 left its name server's files behind: $(ls "$tmp/rdvtmp")"
# without MASTER_PORT a step of srun without PMI says what to set
env SLURM_STEP_NUM_TASKS=2 SLURM_NTASKS=2 SLURM_PROCID=0 "$BIN" "$SRC/recipes/demo.yaml" --set device=cpu --until train \
  >"$tmp/nomaster.txt" 2>&1
rc=$?
[ "$rc" = 2 ] || { cat "$tmp/nomaster.txt"; fail "srun without PMI and MASTER_PORT: exit $rc, expected 2"; }
grep -q "srun started 2 tasks without PMI .*set MASTER_ADDR .* and MASTER_PORT" "$tmp/nomaster.txt" ||
  { cat "$tmp/nomaster.txt"; fail "no clear message for srun without PMI and MASTER_PORT"; }
[ "$(ls "$tmp/two/artifacts/train" | wc -l)" = 1 ] || fail "more than one train artifact from two ranks"
ls "$tmp"/runs/demo/*/train.rank1.log >/dev/null 2>&1 || fail "no per-rank step log (train.rank1.log)"

# 3. the same through --gpus 2 (qlora-run starts mpirun itself); the run record is written once
fresh "$tmp/gpus"
rm -rf "$tmp/runs"
QLORA_CACHE="$tmp/gpus" ASAN_OPTIONS="$NOLEAK" "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${STEPS[@]}" --gpus 2 \
  --set stages.train.gradient_accumulation_steps=2 >"$tmp/gpus.txt" 2>&1 || { cat "$tmp/gpus.txt"; fail "--gpus 2 failed"; }
grep -q "data parallel: 2 ranks (mpirun)" "$tmp/gpus.txt" || { cat "$tmp/gpus.txt"; fail "--gpus 2 did not start 2 ranks"; }
[ "$(grep -c '^done in' "$tmp/gpus.txt")" = 1 ] || { cat "$tmp/gpus.txt"; fail "expected one 'done' line (rank 0's)"; }
[ "$(ls -d "$tmp"/runs/demo/*/ | wc -l)" = 1 ] || fail "expected one run record for two ranks"
[ "$(grep -c '"type":"run_start"' "$tmp"/runs/demo/*/events.jsonl)" = 1 ] || fail "run_start written more than once"
cmp -s "$two/adapter/adapter_model.safetensors" "$(artifact_of "$tmp/gpus")/adapter/adapter_model.safetensors" ||
  fail "--gpus 2 and mpirun -np 2 trained different adapters"

# 3b. evaluate split over two ranks (val batches, prompts) gives one process's table; sampling on,
# so each prompt's seed must not depend on which rank generates it
EVAL=(--until eval --quiet --set device=cpu "${DROP[@]}" --set stages.eval.adapter=lora --set stages.eval.score_records=9
      --set stages.eval.temperature=0.8 --set stages.eval.max_new_tokens=6)
fresh "$tmp/ev1"
QLORA_CACHE="$tmp/ev1" "$BIN" "$SRC/recipes/demo.yaml" "${EVAL[@]}" >/dev/null 2>&1 || fail "evaluate in one process failed"
fresh "$tmp/ev2"
QLORA_CACHE="$tmp/ev2" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${EVAL[@]}" >"$tmp/ev2.txt" 2>&1 ||
  { cat "$tmp/ev2.txt"; fail "evaluate on two ranks failed"; }
$CMP results "$(find "$tmp/ev1/artifacts/evaluate" -name results.json)" "$(find "$tmp/ev2/artifacts/evaluate" -name results.json)" 1e-12 ||
  fail "evaluate on two ranks differs from one process"

# 4. rank 1 killed in the middle of a longer run; the next run resumes and matches a whole run
LONG=(--set stages.train.max_steps=80 --set stages.train.gradient_accumulation_steps=2)
fresh "$tmp/ref"
QLORA_CACHE="$tmp/ref" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${LONG[@]}" >/dev/null 2>&1 ||
  fail "the uninterrupted two-rank run failed"
ref=$(artifact_of "$tmp/ref")/adapter/adapter_model.safetensors
fresh "$tmp/kill"
QLORA_CACHE="$tmp/kill" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${LONG[@]}" >"$tmp/kill.txt" 2>&1 &
mpid=$!
rank1=""
for _ in $(seq 1 600); do # wait for a checkpoint beyond the first, then kill rank 1
  n=$(find "$tmp/kill/work" -name 'checkpoint-*.bin' 2>/dev/null | wc -l)
  if [ -z "$rank1" ]; then
    for p in $(ps -o pid= --ppid "$mpid" 2>/dev/null); do
      tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' && rank1=$p
    done
  fi
  [ -n "$rank1" ] && [ "$n" -ge 2 ] && break
  sleep 0.05
done
[ -n "$rank1" ] || fail "rank 1 of the run to kill was not found"
kill -9 "$rank1" 2>/dev/null
wait "$mpid"
krc=$?
mpid=""
[ "$krc" != 0 ] || fail "the run with a killed rank ended with 0 (it finished before the kill?)"
[ -z "$(find "$tmp/kill/artifacts/train" -mindepth 1 -maxdepth 1 2>/dev/null)" ] || fail "a killed run committed a train artifact"
# (resumed with the optimizer sharded: each rank takes its piece of the whole checkpoint)
QLORA_CACHE="$tmp/kill" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${LONG[@]}" \
  --set stages.train.shard_optimizer=true >"$tmp/resume.txt" 2>&1 ||
  { cat "$tmp/resume.txt"; fail "the run after the kill failed"; }
grep -q "resuming from checkpoint step" "$tmp/resume.txt" || { cat "$tmp/resume.txt"; fail "the run after the kill did not resume"; }
echo "rank 1 killed (mpirun exit $krc); $(grep -o 'resuming from checkpoint step [0-9]*' "$tmp/resume.txt" | head -1)"
cmp -s "$ref" "$(artifact_of "$tmp/kill")/adapter/adapter_model.safetensors" ||
  fail "after a killed rank and a resume the adapter differs from an uninterrupted run's"

# 4b. Ctrl-C on rank 1 alone: every rank stops at the next step boundary, rank 0 saves, exit 7
fresh "$tmp/int"
QLORA_CACHE="$tmp/int" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${LONG[@]}" \
  --set stages.train.shard_optimizer=true >"$tmp/int.txt" 2>&1 &
mpid=$!
rank1=""
for _ in $(seq 1 600); do
  if [ -z "$rank1" ]; then
    for p in $(ps -o pid= --ppid "$mpid" 2>/dev/null); do
      tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' && rank1=$p
    done
  fi
  [ -n "$rank1" ] && [ "$(find "$tmp/int/work" -name 'checkpoint-*.bin' 2>/dev/null | wc -l)" -ge 1 ] && break
  sleep 0.05
done
[ -n "$rank1" ] || fail "rank 1 of the run to interrupt was not found"
kill -INT "$rank1" 2>/dev/null
wait "$mpid"
irc=$?
mpid=""
[ "$irc" = 7 ] || { cat "$tmp/int.txt"; fail "SIGINT on rank 1: exit $irc, expected 7"; }
[ "$(grep -c 'qlora-run: error: .*interrupted at step' "$tmp/int.txt")" = 1 ] || { cat "$tmp/int.txt"; fail "SIGINT on rank 1: expected one 'interrupted at step' message"; }
# the sharded run's checkpoint (m and v gathered from both ranks) resumed without sharding
QLORA_CACHE="$tmp/int" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${LONG[@]}" >"$tmp/int2.txt" 2>&1 ||
  { cat "$tmp/int2.txt"; fail "the run after SIGINT failed"; }
grep -q "resuming from checkpoint step" "$tmp/int2.txt" || { cat "$tmp/int2.txt"; fail "the run after SIGINT did not resume"; }
cmp -s "$ref" "$(artifact_of "$tmp/int")/adapter/adapter_model.safetensors" ||
  fail "a sharded run interrupted and resumed unsharded differs from an uninterrupted run"

# 5. a checkpoint of two ranks resumed by one process (another number of ranks)
fresh "$tmp/kill1"
QLORA_CACHE="$tmp/kill1" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${LONG[@]}" >/dev/null 2>&1 &
mpid=$!
for _ in $(seq 1 600); do
  [ "$(find "$tmp/kill1/work" -name 'checkpoint-*.bin' 2>/dev/null | wc -l)" -ge 1 ] && break
  sleep 0.05
done
kill -9 "$mpid" 2>/dev/null
wait "$mpid" 2>/dev/null
mpid=""
QLORA_CACHE="$tmp/kill1" "$BIN" "$SRC/recipes/demo.yaml" "${LOUD[@]}" "${LONG[@]}" >"$tmp/resume1.txt" 2>&1 ||
  { cat "$tmp/resume1.txt"; fail "one process could not continue the two ranks' run"; }
grep -q "resuming from checkpoint step" "$tmp/resume1.txt" || { cat "$tmp/resume1.txt"; fail "one process did not resume the two ranks' checkpoint"; }
echo "one process: $(grep -o 'resuming from checkpoint step [0-9]*' "$tmp/resume1.txt" | head -1) of two ranks"

# 6. bad input: one message from rank 0, one exit code
printf 'extends: %s\ndescription: rank ${OMPI_COMM_WORLD_RANK}\n' "$(cd "$SRC" && pwd)/recipes/demo.yaml" >"$tmp/differ.yaml"
"${MPI[@]}" "$BIN" "$tmp/differ.yaml" --set device=cpu --until train >"$tmp/differ.txt" 2>&1
rc=$?
[ "$rc" = 3 ] || { cat "$tmp/differ.txt"; fail "a recipe that differs between ranks: exit $rc, expected 3"; }
grep -q "rank 1: the resolved recipe .* differs from rank 0's" "$tmp/differ.txt" || { cat "$tmp/differ.txt"; fail "no clear message for differing recipes"; }
[ "$(grep -c 'qlora-run: error' "$tmp/differ.txt")" = 1 ] || { cat "$tmp/differ.txt"; fail "the error was printed more than once"; }

fresh "$tmp/big"
QLORA_CACHE="$tmp/big" "${MPI[@]}" "$BIN" "$SRC/recipes/demo.yaml" "${BASE[@]}" "${STEPS[@]}" \
  --set stages.train.gradient_accumulation_steps=500 >"$tmp/big.txt" 2>&1
rc=$?
[ "$rc" = 3 ] || { cat "$tmp/big.txt"; fail "a global batch larger than the data: exit $rc, expected 3"; }
grep -q "global batch of 4000 rows .* is larger than the train split" "$tmp/big.txt" || { cat "$tmp/big.txt"; fail "no clear message for a batch too large"; }
[ "$(grep -c 'qlora-run: error' "$tmp/big.txt")" = 1 ] || { cat "$tmp/big.txt"; fail "the error was printed more than once"; }
echo "data parallel: 1 process = 2 ranks; kill, resume and bad input ok"
