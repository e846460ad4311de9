# common.sh: shared by the reliability tests (tests/test_crash_*.sh, test_disk_full.sh, ...):
# tests/lib.sh's checks (ok, bad, check, checks_done, flip_byte), a temp dir, and the small real
# recipe they run: a generated tiny Llama (init_model), NF4 (quantize_nf4), LoRA (attach_lora), a
# synthetic task from the Lua generator hooks/demo_task.lua (dataset), a short CPU training run
# with a checkpoint every step (train) and an export of the adapter and the merged model (export).
# Source it from a test run from the repo root with QLORA_BIN set (ctest does it).
BIN=${QLORA_BIN:?set QLORA_BIN to the built qlora-run}
SRC=${QLORA_SRC:-$(pwd)}
. "$SRC/tests/lib.sh"
W=$(mktemp -d /tmp/qlora-rel.XXXXXX)
rel_cleanup_extra=:
rel_cleanup() { eval "$rel_cleanup_extra"; rm -rf "$W"; }
trap rel_cleanup EXIT
export QLORA_CACHE=$W/cache QLORA_RUNS=$W/runs QLORA_CPU_THREADS=${QLORA_CPU_THREADS:-2}
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE QLORA_TEST_KINDS

# rel_recipe FILE [STEPS]: the recipe above, `name: rel`, the hook file copied beside it
rel_recipe() {
    local out=$1 steps=${2:-40}
    cp "$SRC/hooks/demo_task.lua" "$(dirname "$out")/demo_task.lua"
    cat > "$out" <<YAML
name: rel
seed: 11
device: cpu
stages:
  base:
    kind: init_model
    preset: tiny
  nf4:
    kind: quantize_nf4
    model: base
  lora:
    kind: attach_lora
    model: nf4
    lora_target_modules: [q_proj, v_proj, down_proj]
  data:
    kind: dataset
    model: nf4
    generator: demo_task.lua
    format: lua
    format_hook: demo_task.lua
    sequence_len: 64
    sample_packing: true
    val_set_size: 16
    hook_args: {n: 400}
  train:
    kind: train
    model: nf4
    adapter: lora
    data: data
    max_steps: $steps
    save_steps: 1
    learning_rate: 1e-3
    warmup_steps: 3
  out:
    kind: export
    model: nf4
    adapter: train
    formats: [peft, merged]
YAML
}

# the artifact directory of a kind in the cache $1 (the only one of that kind)
art() { ls -d "$1"/artifacts/"$2"/*/ 2>/dev/null | grep -v '\.old\.' | head -n1; }
# the step of each checkpoint file named on stdin (.../checkpoint-00000012.bin -> 12)
checkpoint_step() { sed 's/.*checkpoint-0*\([0-9]*\)\.bin/\1/'; }
# the step of the newest checkpoint in ./cache's work folders, or nothing
newest_checkpoint() { ls cache/work/*/checkpoint-*.bin 2>/dev/null | checkpoint_step | sort -n | tail -n1; }
# milliseconds since the epoch
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# a reproducible pseudo-random stream (an LCG in shell arithmetic: same numbers in every bash)
lcg_state=1
lcg_seed() { lcg_state=$1; }
# lcg_next: sets LCG to the next number in 0..32767 (no subshell, so the state advances)
lcg_next() { lcg_state=$(( (lcg_state * 1103515245 + 12345) % 2147483648 )); LCG=$(( lcg_state / 65536 )); }
