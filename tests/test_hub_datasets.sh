#!/usr/bin/env bash
# test_hub_datasets.sh: `url: hf://datasets/ORG/NAME` with config, split and revision, against the
# local hub (tests/hub_server.sh), with the Parquet fixtures as the data files:
#   - push_to_hub's layout (data/{split}-NNNNN-of-NNNNN.parquet, two train shards): the train split
#     reads both shards; the files land in the shared HF cache layout; the resolved commit and
#     file list are in the cache key: a second run is cached, a new commit on main re-runs;
#   - an unknown split names the available ones (exit 3);
#   - a README `configs:` block picks files per config and split (default: true honoured);
#   - a script dataset (no data file on main) falls back to refs/convert/parquet
#     ({config}/{split}/0000.parquet); an unknown config names the available ones;
#   - offline (HF_HUB_OFFLINE=1, the server stopped): cached datasets resolve from the HF cache to
#     the same key and artifact; an uncached split, dataset or shard is named.
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_SRC:=$(pwd)}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
. "$QLORA_SRC/tests/hub_server.sh"
hub_init
G="$QLORA_SRC/tests/golden/parquet"
W=$HUB_T/work
mkdir -p "$W"
cd "$W"

# push_to_hub layout at commit C1, then main moves to C2 (one more shard)
C1=$(hub_commit_of pq-1) C2=$(hub_commit_of pq-2)
hub_add_file datasets/ tst/alpaca-pq "$C1" data/train-00000-of-00002.parquet "$G/alpaca_snappy.parquet" 1
hub_add_file datasets/ tst/alpaca-pq "$C1" data/train-00001-of-00002.parquet "$G/alpaca_zstd.parquet" 1
hub_add_file datasets/ tst/alpaca-pq "$C1" data/test-00000-of-00001.parquet "$G/alpaca_gzip.parquet" 1
for rev in main "$C1"; do
    hub_add_api datasets tst/alpaca-pq "$rev" "$C1" .gitattributes data/test-00000-of-00001.parquet \
        data/train-00000-of-00002.parquet data/train-00001-of-00002.parquet
done
hub_add_file datasets/ tst/alpaca-pq "$C2" data/train-00000-of-00003.parquet "$G/alpaca_snappy.parquet" 1
hub_add_file datasets/ tst/alpaca-pq "$C2" data/train-00001-of-00003.parquet "$G/alpaca_zstd.parquet" 1
hub_add_file datasets/ tst/alpaca-pq "$C2" data/train-00002-of-00003.parquet "$G/alpaca_brotli.parquet" 1

# a README with configs: chat (default) and alpaca
cat > readme.md <<'EOF'
---
license: mit
configs:
- config_name: alpaca
  data_files: alpaca/*.parquet
- config_name: chat
  default: true
  data_files:
  - split: train
    path: "chat/train-*.parquet"
  - split: test
    path: chat/test.parquet
---
# A dataset card
EOF
CR=$(hub_commit_of cfg-1)
hub_add_file datasets/ tst/cfg "$CR" README.md readme.md 0
hub_add_file datasets/ tst/cfg "$CR" alpaca/part-0.parquet "$G/alpaca_brotli.parquet" 1
hub_add_file datasets/ tst/cfg "$CR" chat/train-0.parquet "$G/chat_clean.parquet" 1
hub_add_file datasets/ tst/cfg "$CR" chat/test.parquet "$G/chat_clean.parquet" 1
hub_add_api datasets tst/cfg main "$CR" README.md alpaca/part-0.parquet chat/test.parquet chat/train-0.parquet

# a script dataset: only a loading script on main; its conversion on refs/convert/parquet
CS=$(hub_commit_of script-1) CV=$(hub_commit_of convert-1)
echo "print('a loading script')" > script.py
hub_add_file datasets/ tst/script "$CS" script.py script.py 0
hub_add_api datasets tst/script main "$CS" script.py
hub_add_file datasets/ tst/script "$CV" default/train/0000.parquet "$G/alpaca_none.parquet" 1
hub_add_file datasets/ tst/script "$CV" default/validation/0000.parquet "$G/alpaca_gzip.parquet" 1
hub_add_file datasets/ tst/script "$CV" other/train/0000.parquet "$G/alpaca_plain_v2.parquet" 1
hub_add_api datasets tst/script refs/convert/parquet "$CV" default/train/0000.parquet \
    default/validation/0000.parquet other/train/0000.parquet
hub_start
export HF_ENDPOINT=$HUB_ENDPOINT HF_HOME=$W/hf HF_HUB_CACHE=$W/hf/hub QLORA_CACHE=$W/cache QLORA_RUNS=$W/runs
unset HF_TOKEN HF_HUB_OFFLINE

recipe() { # recipe NAME URL FORMAT [EXTRA YAML LINES]
    cat > "$1.yaml" <<YAML
name: hubds-$1
stages:
  base:
    kind: init_model
    arch: llama
    layers: 1
    hidden: 64
  data:
    kind: dataset
    model: base
    url: $2
    format: $3
    sequence_len: 2048
$(printf '%s\n' "${@:4}" | sed 's/^/    /')
YAML
}

recipe pushed hf://datasets/tst/alpaca-pq alpaca
"$QLORA_BIN" pushed.yaml > pushed.log 2>&1 || { cat pushed.log; fail "push_to_hub layout"; }
grep -q "hub dataset tst/alpaca-pq: config 'default', split 'train', main at commit ${C1:0:12}: 2 file(s)" pushed.log ||
    { cat pushed.log; fail "the resolution line"; }
grep -q "120 records -> 120 sequences" pushed.log || { cat pushed.log; fail "two shards of 60 records"; }
snap="$HF_HUB_CACHE/datasets--tst--alpaca-pq/snapshots/$C1"
[ -L "$snap/data/train-00000-of-00002.parquet" ] && [ -L "$snap/data/train-00001-of-00002.parquet" ] ||
    fail "the shards are not in the HF cache layout"
[ ! -e "$snap/data/test-00000-of-00001.parquet" ] || fail "the test split was downloaded too"
[ "$(cat "$HF_HUB_CACHE/datasets--tst--alpaca-pq/refs/main")" = "$C1" ] || fail "refs/main"
grep -q "\"commit\": \"$C1\"" cache/artifacts/dataset/*/manifest.json || fail "the commit is not in the manifest"
"$QLORA_BIN" pushed.yaml > pushed2.log 2>&1 || { cat pushed2.log; fail "second run"; }
grep -q "0 ran, 2 cached" pushed2.log || { cat pushed2.log; fail "an unchanged dataset ran again"; }
# main moves to C2 (its files are served from the start: nginx reads the ETag maps once)
hub_add_api datasets tst/alpaca-pq main "$C2" data/train-00000-of-00003.parquet data/train-00001-of-00003.parquet \
    data/train-00002-of-00003.parquet
"$QLORA_BIN" plan pushed.yaml > plan.txt 2>&1
grep -q "moved to commit ${C2:0:12}" plan.txt || { cat plan.txt; fail "a new commit did not re-run the dataset"; }
"$QLORA_BIN" pushed.yaml > pushed3.log 2>&1 || { cat pushed3.log; fail "third run"; }
grep -q "180 records -> 180 sequences" pushed3.log || { cat pushed3.log; fail "three shards"; }
# a pinned revision keeps the old files
recipe pinned hf://datasets/tst/alpaca-pq alpaca "revision: $C1" "split: test"
"$QLORA_BIN" pinned.yaml > pinned.log 2>&1 || { cat pinned.log; fail "pinned revision, test split"; }
grep -q "split 'test', $C1 at commit" pinned.log && grep -q "60 records" pinned.log || { cat pinned.log; fail "pinned"; }

# unknown split: exit 3, the available ones named
recipe nosplit hf://datasets/tst/alpaca-pq alpaca "split: validation"
rc=0; "$QLORA_BIN" nosplit.yaml > nosplit.log 2>&1 || rc=$?
[ $rc = 3 ] && grep -q "dataset 'tst/alpaca-pq' has no split 'validation' (it has 'train')" nosplit.log ||
    { cat nosplit.log; fail "unknown split: exit $rc"; }

# README configs
# a byte tokenizer has no chat template and no special tokens: a plain Jinja template file
printf '%s' '{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}' > plain.jinja
recipe cfgchat hf://datasets/tst/cfg chat "chat_template_file: plain.jinja"
"$QLORA_BIN" cfgchat.yaml > cfgchat.log 2>&1 || { cat cfgchat.log; fail "README configs, default config"; }
grep -q "config 'chat', split 'train'" cfgchat.log && grep -q "30 records" cfgchat.log || { cat cfgchat.log; fail "chat"; }
recipe cfgalp hf://datasets/tst/cfg alpaca "config: alpaca"
"$QLORA_BIN" cfgalp.yaml > cfgalp.log 2>&1 || { cat cfgalp.log; fail "README configs, config alpaca"; }
grep -q "config 'alpaca', split 'train'" cfgalp.log && grep -q "60 records" cfgalp.log || { cat cfgalp.log; fail "alpaca"; }
recipe cfgbad hf://datasets/tst/cfg chat "config: nope"
rc=0; "$QLORA_BIN" cfgbad.yaml > cfgbad.log 2>&1 || rc=$?
[ $rc = 3 ] && grep -q "has no config 'nope' (it has 'alpaca', 'chat')" cfgbad.log || { cat cfgbad.log; fail "unknown config: exit $rc"; }

# a script dataset: the Parquet conversion
recipe script hf://datasets/tst/script alpaca "split: validation"
"$QLORA_BIN" script.yaml > script.log 2>&1 || { cat script.log; fail "refs/convert/parquet"; }
grep -q "config 'default', split 'validation', refs/convert/parquet at commit ${CV:0:12}: 1 file(s)" script.log ||
    { cat script.log; fail "the conversion's resolution"; }
recipe script2 hf://datasets/tst/script alpaca "config: other"
"$QLORA_BIN" script2.yaml > script2.log 2>&1 || { cat script2.log; fail "refs/convert/parquet, config other"; }
recipe script3 hf://datasets/tst/script alpaca "config: third"
rc=0; "$QLORA_BIN" script3.yaml > script3.log 2>&1 || rc=$?
[ $rc = 3 ] && grep -q "has no config 'third' (it has 'default', 'other')" script3.log ||
    { cat script3.log; fail "unknown config of a conversion: exit $rc"; }
# offline (HF_HUB_OFFLINE=1, the hub stopped): a cached dataset resolves from the HF cache alone,
# to the same commit and files, so the same key and a byte-identical artifact; what is not cached
# is named
kill "$(cat "$HUB_T/nginx.pid")" # the server only: the work folder is under HUB_T
online_key=$(grep -l "\"split\": \"train\"" cache/artifacts/dataset/*/manifest.json | xargs grep -l "$C2" | head -1)
export HF_HUB_OFFLINE=1 QLORA_CACHE=$W/cache-offline
"$QLORA_BIN" pushed.yaml > off1.log 2>&1 || { cat off1.log; fail "offline: a cached hub dataset"; }
grep -q "main at commit ${C2:0:12}: 3 file(s)" off1.log && grep -q "180 records" off1.log || { cat off1.log; fail "offline resolution"; }
off_dir=$(ls -d cache-offline/artifacts/dataset/*/ | head -1)
[ "$(basename "$off_dir")" = "$(basename "$(dirname "$online_key")")" ] || fail "offline: another key than online"
for f in $(cd "$(dirname "$online_key")" && ls | grep -v manifest.json); do
    cmp -s "$(dirname "$online_key")/$f" "$off_dir/$f" || fail "offline: $f differs from the online artifact"
done
"$QLORA_BIN" script.yaml > off2.log 2>&1 || { cat off2.log; fail "offline: a cached Parquet conversion"; }
grep -q "refs/convert/parquet at commit ${CV:0:12}: 1 file(s)" off2.log || { cat off2.log; fail "offline conversion"; }
"$QLORA_BIN" cfgalp.yaml > off3.log 2>&1 || { cat off3.log; fail "offline: README configs"; }
recipe cfgtest hf://datasets/tst/cfg chat "split: test" "chat_template_file: plain.jinja"
rc=0; "$QLORA_BIN" cfgtest.yaml > off4.log 2>&1 || rc=$?
[ $rc = 4 ] && grep -q "HF_HUB_OFFLINE is set: only the files of the cached snapshot .* are known: dataset 'tst/cfg', config 'chat', split 'test'" off4.log ||
    { cat off4.log; fail "offline: an uncached split: exit $rc"; }
recipe never hf://datasets/tst/never alpaca
rc=0; "$QLORA_BIN" never.yaml > off5.log 2>&1 || rc=$?
[ $rc = 8 ] && grep -q "HF_HUB_OFFLINE is set, and dataset 'tst/never' at revision 'main' is not in the cache" off5.log ||
    { cat off5.log; fail "offline: an uncached dataset: exit $rc"; }
# an interrupted download (a shard's link missing) is not a smaller split
rm "$HF_HUB_CACHE/datasets--tst--alpaca-pq/snapshots/$C2/data/train-00001-of-00003.parquet"
rc=0; "$QLORA_BIN" pushed.yaml --force data > off6.log 2>&1 || rc=$?
[ $rc = 8 ] && grep -q "the cache holds 2 of the 3 files of 'data/train-\*-of-00003'" off6.log ||
    { cat off6.log; fail "offline: a missing shard: exit $rc"; }
unset HF_HUB_OFFLINE
echo "ok: hub datasets (push_to_hub layout, README configs, refs/convert/parquet, cache key by commit)"
