#!/usr/bin/env bash
# test_dataset_recipe.sh: the dataset stage through the runner: a generated model plus the
# demo task's generator and format hook; the same data from a file through the recipe-level
# format hook; the cache (a changed hook file means a new key); exit codes and messages for a
# broken hook (3) and malformed data (4).
set -euo pipefail
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
test_init
cp -r "$QLORA_SRC/hooks" "$W/hooks"

TOP="seed: 7" dataset_recipe data-gen "generator: hooks/demo_task.lua" "format: lua" \
    "format_hook: hooks/demo_task.lua" "hook_args: {n: 300}" "sequence_len: 128" "sample_packing: true" \
    "val_set_size: 0.1" > gen.yaml
"$QLORA_BIN" gen.yaml > out.txt 2>&1 || { cat out.txt; fail "generator recipe"; }
grep -q "300 records -> 300 sequences" out.txt || { cat out.txt; fail "generator stats"; }
art=$(ls -d cache/artifacts/dataset/*/ | head -1)
for f in train.ids.i32 train.labels.i32 train.rows.i64 train.seqs.i64 val.ids.i32 meta.json; do
    [ -f "$art/$f" ] || fail "missing $f"
done
grep -q '"seqs": 30' "$art/meta.json" || fail "val split of 10%"
"$QLORA_BIN" gen.yaml > out2.txt 2>&1
grep -q "0 ran, 2 cached" out2.txt || { cat out2.txt; fail "second run not cached"; }
# the hook file is part of the key
echo "-- changed" >> hooks/demo_task.lua
"$QLORA_BIN" plan gen.yaml > plan.txt 2>&1
grep -A1 "^  data" plan.txt | grep -q "run" || { cat plan.txt; fail "a changed hook did not invalidate the dataset"; }

cat > alpaca.json <<'JSON'
[
  {"instruction": "Say hi.", "input": "", "output": "Hi!"},
  {"instruction": "Add.", "input": "2 3", "output": "5"}
]
JSON
TOP="hooks:
  format: hooks/alpaca.lua" dataset_recipe data-file "path: alpaca.json" "format: lua" "sequence_len: 512" > file.yaml
"$QLORA_BIN" file.yaml > out.txt 2>&1 || { cat out.txt; fail "file recipe"; }
grep -q "2 records -> 2 sequences" out.txt || { cat out.txt; fail "file stats"; }

# a broken hook is a recipe error before anything runs
printf 'function format(r)\n  return {prompt = r.x response = 1}\nend\n' > hooks/broken.lua
sed 's|hooks/alpaca.lua|hooks/broken.lua|' file.yaml > broken.yaml
expect_fail 3 "broken.lua:2:" "$QLORA_BIN" validate broken.yaml

# malformed data: exit 4 with file:line:col
printf '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]\n' > alpaca.json
expect_fail 4 "alpaca.json:3:" "$QLORA_BIN" file.yaml
# a missing field names the record
printf '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]\n' > alpaca.json
sed -i 's|hooks:|hooks:\n  allow: []|' file.yaml
expect_fail 4 "missing 'output'.*record 1" "$QLORA_BIN" file.yaml

# a url source goes through the hub client's plain-URL download (python3's http.server here)
command -v python3 >/dev/null || fail "python3 is needed to serve the url source (make deps, or apt-get install python3)"
mkdir -p www
printf '{"instruction": "Say hi.", "output": "Hi!"}\n{"instruction": "Bye.", "output": "Bye!"}\n' > www/d.jsonl
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 --directory www > /dev/null 2>&1 &
srv=$!
trap 'kill $srv 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
sed -e "s|    path: alpaca.json|    url: http://127.0.0.1:$port/d.jsonl|" -e 's|format: lua|format: alpaca|' file.yaml > url.yaml
HF_HOME="$W/hf" "$QLORA_BIN" url.yaml > out.txt 2>&1 || { cat out.txt; fail "url recipe"; }
grep -q "2 records -> 2 sequences" out.txt || { cat out.txt; fail "url stats"; }
echo "ok"
