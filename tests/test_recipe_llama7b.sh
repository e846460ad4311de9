#!/usr/bin/env bash
# test_recipe_llama7b.sh: recipes/llama7b-alpaca.yaml end to end against a local hub.
#
# nginx (tests/hub_server.sh) plays huggingface.co: meta-llama/Llama-2-7b-hf is a generated tiny
# model behind a gate (403 GatedRepo without the right token), yahma/alpaca-cleaned holds a small
# alpaca_data_cleaned.json. The recipe runs unchanged except for sizes shrunk with --set (CPU,
# two steps). Checked: the gate's message, the whole run, the fetch artifact linking the HF
# cache snapshot with its commit, a second run fully cached, and the token in no output, log,
# event or manifest.
set -u
BIN=${QLORA_BIN:=build/qlora-run}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
[ -x "${NGINX:-/usr/sbin/nginx}" ] || { echo "FAIL: no nginx at ${NGINX:-/usr/sbin/nginx} (make deps, or apt-get install nginx-light)"; exit 1; }
. "$(dirname "$0")/hub_server.sh"
hub_init
T=$HUB_T
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_CACHE HF_HUB_OFFLINE LLAMA_REVISION
TOKEN=hf_LlamaGateToken987654321

# the stand-in model and data
"$BIN" init-model --out "$T/gen" --preset tiny > /dev/null 2>&1 || { echo "FAIL init-model"; exit 1; }
REPO=meta-llama/Llama-2-7b-hf
C=$(hub_commit_of llama-main)
files=""
for f in $(cd "$T/gen" && ls); do
    case $f in *.safetensors) lfs=1 ;; *) lfs=0 ;; esac
    hub_add_file "" $REPO $C "$f" "$T/gen/$f" $lfs
    files="$files $f"
done
hub_add_api models $REPO main $C $files
{
    printf '['
    for i in $(seq 40); do
        [ $i -gt 1 ] && printf ','
        if [ $((i % 3)) = 0 ]; then
            printf '{"instruction":"Add %d and %d.","input":"","output":"%d"}' $i $i $((2 * i))
        else
            printf '{"instruction":"Repeat the word.","input":"word %d","output":"word %d"}' $i $i
        fi
    done
    printf ']\n'
} > "$T/alpaca.json"
DC=$(hub_commit_of alpaca-main)
hub_add_file datasets/ yahma/alpaca-cleaned main alpaca_data_cleaned.json "$T/alpaca.json" 0
hub_branch datasets/ yahma/alpaca-cleaned main $DC
hub_add_api datasets yahma/alpaca-cleaned main $DC alpaca_data_cleaned.json

GATE="
        location ^~ /$REPO/resolve/ {
            if (\$http_authorization != \"Bearer $TOKEN\") {
                add_header X-Error-Code GatedRepo always;
                add_header X-Error-Message \"Access to model $REPO is restricted. You must have access to it and be authenticated to access it. Please log in.\" always;
                return 403;
            }
            include $T/hubhdrs.conf;
        }"
hub_start "$GATE" || { echo "FAIL nginx did not start"; exit 1; }

export HF_ENDPOINT=$HUB_ENDPOINT HF_HOME=$T/hf QLORA_CACHE=$T/cache QLORA_RUNS=$T/runs
SMALL=(--set device=cpu
       --set stages.alpaca.sequence_len=256 --set stages.alpaca.val_set_size=4
       --set stages.train.max_steps=2 --set stages.train.micro_batch_size=1
       --set stages.train.gradient_accumulation_steps=1 --set stages.train.warmup_steps=0
       --set stages.train.eval_steps=0 --set stages.train.save_steps=0
       --set stages.eval.max_new_tokens=4 --set stages.eval.score_records=2
       --set stages.export.formats=[peft])
: > "$T/output"
run() { "$BIN" recipes/llama7b-alpaca.yaml "${SMALL[@]}" "$@" > "$T/out" 2> "$T/err"; rc=$?; cat "$T/out" "$T/err" >> "$T/output"; }

run
check "gated without a token: exit 8" test "$rc" = 8
check "gated: says to accept the licence and set HF_TOKEN" grep -q "accept its licence on $HF_ENDPOINT/$REPO.*HF_TOKEN" "$T/err"

HF_TOKEN=$TOKEN run
check "the recipe runs end to end" test "$rc" = 0
[ "$rc" = 0 ] || tail -20 "$T/err"
SNAP=$HF_HOME/hub/models--meta-llama--Llama-2-7b-hf/snapshots/$C
art=$(dirname "$(grep -rl '"kind": *"fetch_model"' "$QLORA_CACHE" --include manifest.json | head -1)")
check "fetch artifact: model links to the HF cache snapshot" test "$(readlink "$art/model")" = "$SNAP"
check "fetch manifest records the commit" grep -q "\"commit\": *\"$C\"" "$art/manifest.json"
check "the dataset file came through the hub client" test -f "$HF_HOME/hub/datasets--yahma--alpaca-cleaned/snapshots/$DC/alpaca_data_cleaned.json"
exp=$(dirname "$(grep -rl '"kind": *"export"' "$QLORA_CACHE" --include manifest.json | head -1)")
check "the export stage wrote the adapter" test -f "$exp/adapter/adapter_model.safetensors"

n=$(wc -l < "$HUB_T/logs/hub.log")
HF_TOKEN=$TOKEN run
check "second run: all cached, no request" test "$rc" = 0 -a "$(wc -l < "$HUB_T/logs/hub.log")" = "$n"

check "token in no output" test "$(grep -c "$TOKEN" "$T/output")" = 0
check "token in no run record (logs, events)" test -z "$(grep -rl "$TOKEN" "$QLORA_RUNS")"
check "token in no cache manifest" test -z "$(grep -rl "$TOKEN" "$QLORA_CACHE" --include '*.json')"

checks_done
