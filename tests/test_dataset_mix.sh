#!/usr/bin/env bash
# test_dataset_mix.sh: `datasets:` in one dataset stage: entries with their own source, format,
# field names (axolotl's), max_records and weight.
#   - weights 2:1:1 over 60, 60 and 20 (max_records) records give 40, 20 and 20 (the part that
#     runs out first gives all of it), printed and recorded in the manifest;
#   - seeded: the same seed gives the same artifact, another seed another sample;
#   - field_instruction/field_input/field_output rename fields: renamed JSONL gives the same
#     artifact as the original; the same at the stage level without datasets;
#   - an entry file is in the cache key; errors: weight outside an entry, an unknown entry key,
#     an entry without a source (exit 3), a renamed column the Parquet file lacks (exit 4).
set -euo pipefail
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
G="$QLORA_SRC/tests/golden/parquet"
test_init

cp "$G/alpaca_snappy.parquet" a.parquet
cp "$G/chat_clean.parquet" chat.parquet
cp "$G/alpaca_gzip.jsonl" plain.jsonl
# the same records under other field names
sed -e 's/"instruction":/"q":/; s/"input":/"ctx":/; s/"output":/"a":/' plain.jsonl > qa.jsonl
grep -q '"q":' qa.jsonl && ! grep -q '"instruction":' qa.jsonl || fail "qa.jsonl"

stage_head() { # stage_head NAME SEED
    TOP="seed: $2" dataset_recipe "mix-$1" "sequence_len: 2048" "shuffle: false"
}
mix() { # mix NAME SEED
    stage_head "$1" "$2"
    cat <<'YAML'
    datasets:
      - path: a.parquet
        weight: 2
      - path: qa.jsonl
        field_instruction: q
        field_input: ctx
        field_output: a
      - path: chat.parquet
        format: chat
        chat_template_file: plain.jinja
        max_records: 20
YAML
}
run() { QLORA_CACHE="$W/cache-$1" "$QLORA_BIN" "$1.yaml" > "$1.log" 2>&1; }
art() { ls -d "$W/cache-$1"/artifacts/dataset/*/; }

# a byte tokenizer has no chat template and no special tokens: a plain Jinja template file
printf '%s' '{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}' > plain.jinja
mix m1 7 > m1.yaml
run m1 || { cat m1.log; fail "the mix"; }
grep -q "mix: a.parquet: 40 of 60 records (weight 2, 50.0% of the weights)" m1.log &&
    grep -q "mix: qa.jsonl: 20 of 60 records (weight 1, 25.0% of the weights)" m1.log &&
    grep -q "mix: chat.parquet: 20 of 20 records (weight 1, 25.0% of the weights)" m1.log &&
    grep -q "80 records -> 80 sequences" m1.log || { cat m1.log; fail "the counts"; }
grep -A40 '"mix"' "$(art m1)/manifest.json" | grep -q '"used": 40' || fail "the counts are not in the manifest"
# seeded: the same seed, the same bytes; another seed, another sample of the same size (shuffle
# is off, so the bytes differ only if the sample does)
mix m2 7 > m2.yaml
run m2 || { cat m2.log; fail "the mix again"; }
cmp -s "$(art m1)/train.ids.i32" "$(art m2)/train.ids.i32" || fail "the same seed gave another dataset"
mix m3 8 > m3.yaml
run m3 || { cat m3.log; fail "the mix, seed 8"; }
grep -q "80 records -> 80 sequences" m3.log || fail "seed 8: the counts"
! cmp -s "$(art m1)/train.ids.i32" "$(art m3)/train.ids.i32" || fail "another seed gave the same dataset"
# an entry's file is in the key
echo '{"q": "one more", "ctx": "", "a": "record"}' >> qa.jsonl
QLORA_CACHE="$W/cache-m1" "$QLORA_BIN" plan m1.yaml > plan.txt 2>&1
grep -q "file .*qa.jsonl' changed" plan.txt || { cat plan.txt; fail "a changed entry file did not re-run"; }
sed -i '$d' qa.jsonl

# renamed fields give what the original names give (in a one-entry mix, and at the stage level)
{ stage_head plain 7; echo "    path: plain.jsonl"; } > plain.yaml
run plain || { cat plain.log; fail "plain"; }
{ stage_head renamed 7; printf '    datasets:\n      - path: qa.jsonl\n        field_instruction: q\n        field_input: ctx\n        field_output: a\n'; } > renamed.yaml
run renamed || { cat renamed.log; fail "renamed entry"; }
{ stage_head top 7; printf '    path: qa.jsonl\n    field_instruction: q\n    field_input: ctx\n    field_output: a\n'; } > top.yaml
run top || { cat top.log; fail "renamed at the stage"; }
for f in train.ids.i32 train.labels.i32 train.rows.i64; do
    cmp -s "$(art plain)/$f" "$(art renamed)/$f" || fail "renamed entry: $f differs"
    cmp -s "$(art plain)/$f" "$(art top)/$f" || fail "renamed at the stage: $f differs"
done

# errors
expect() { # expect CODE NAME PATTERN
    local rc=0
    run "$2" || rc=$?
    [ $rc = "$1" ] && grep -q -- "$3" "$2.log" || { cat "$2.log"; fail "$2: exit $rc, expected $1 and '$3'"; }
}
{ stage_head w 7; printf '    path: plain.jsonl\n    weight: 2\n'; } > w.yaml
expect 3 w "'weight' is set per entry of 'datasets', not for the whole stage"
{ stage_head k 7; printf '    datasets:\n      - path: plain.jsonl\n        wieght: 2\n'; } > k.yaml
expect 3 k "unknown key 'wieght' (did you mean 'weight'?)"
{ stage_head s 7; printf '    datasets:\n      - weight: 2\n'; } > s.yaml
expect 3 s "datasets entry 0: set its path or url"
{ stage_head c 7; printf '    datasets:\n      - path: a.parquet\n        field_output: answer\n'; } > c.yaml
expect 4 c "a.parquet: no column 'answer'"
echo "ok: datasets mixed by weight, seeded, renamed fields, errors"
