#!/usr/bin/env bash
# test_parquet.sh: Parquet datasets through the runner, with the fixtures pyarrow wrote
# (tests/golden/parquet/, made by tests/golden/make_parquet.py):
#   - every fixture reads to as many records as pyarrow wrote (the records themselves are
#     compared field by field with pyarrow's and hyparquet's in test_parquet_js.sh);
#   - the same records as JSONL or as Parquet (every codec, dictionary or plain, pages v1 or v2)
#     give byte-identical dataset artifacts, for format alpaca and format chat;
#   - type: parquet on a file without the extension, and auto by the PAR1 magic;
#   - bad input (truncated, wrong magic, corrupt footer, a page that fails to decompress, a
#     column the format needs that the file lacks, a column of a type the format cannot use)
#     exits 4 naming the file and the place (the record, for a value),
#     and leaves nothing in the cache.
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_SRC:=$(pwd)}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
G="$QLORA_SRC/tests/golden/parquet"
W=$(mktemp -d)
trap '[ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
export QLORA_RUNS="$W/runs"
cd "$W"

# ---- every fixture: as many records as pyarrow wrote ----
for f in "$G"/*.parquet; do
    name=$(basename "$f" .parquet)
    "$QLORA_BIN" data read "$f" > "$name.out" 2> err.txt || { cat err.txt; fail "$name: data read"; }
    [ "$(wc -l < "$name.out")" = "$(wc -l < "$G/$name.jsonl")" ] || fail "$name: record count differs from pyarrow's"
done
grep -q '"messages":\[{"role":"system","content":"word the three"}' chat_element.out || fail "chat_element: first record"
grep -q '"messages":null' chat_item.out || fail "chat_item: a null list"
grep -q '"messages":\[\]' chat_item.out || fail "chat_item: an empty list"
# projection: only the columns asked for, in schema order
"$QLORA_BIN" data read "$G/chat_element.parquet" --columns source,id --n 1 > proj.out
[ "$(cat proj.out)" = '{"id":0,"source":null}' ] || { cat proj.out; fail "--columns"; }

# ---- the same records as JSONL or Parquet give the same artifact ----
# format chat with the byte tokenizer of init_model: a plain template file (the built-in ones
# need their special tokens)
printf '%s' '{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}' > plain.jinja
build() { # build NAME FILE FORMAT [TYPE]: the dataset artifact of FILE in cache-NAME
    local tpl=""
    [ "$3" = chat ] && tpl="    chat_template_file: plain.jinja"
    cat > "$1.yaml" <<YAML
name: pq-$1
stages:
  base:
    kind: init_model
    arch: llama
    layers: 1
    hidden: 64
  data:
    kind: dataset
    model: base
    path: $2
    format: $3
    type: ${4:-auto}
    sequence_len: 2048
    val_set_size: 0.1
$tpl
${BUILD_EXTRA:-}
YAML
    QLORA_CACHE="$W/cache-$1" "$QLORA_BIN" "$1.yaml" > "$1.log" 2>&1
}
same_artifact() { # same_artifact A B
    local a b
    a=$(ls -d "$W/cache-$1"/artifacts/dataset/*/) b=$(ls -d "$W/cache-$2"/artifacts/dataset/*/)
    for f in train.ids.i32 train.labels.i32 train.rows.i64 train.seqs.i64 val.ids.i32 val.labels.i32 meta.json; do
        cmp -s "$a/$f" "$b/$f" || fail "$2: $f differs from $1's"
    done
}
cp "$G/alpaca_snappy.jsonl" alpaca.jsonl
build jsonl alpaca.jsonl alpaca || { cat jsonl.log; fail "alpaca from JSONL"; }
grep -q "60 records -> 60 sequences" jsonl.log || { cat jsonl.log; fail "alpaca JSONL stats"; }
for v in snappy zstd gzip brotli none plain_v2; do
    build "$v" "$G/alpaca_$v.parquet" alpaca || { cat "$v.log"; fail "alpaca from $v Parquet"; }
    same_artifact jsonl "$v"
done
cp "$G/chat_clean.jsonl" chat.jsonl
build chat_jsonl chat.jsonl chat || { cat chat_jsonl.log; fail "chat from JSONL"; }
build chat_pq "$G/chat_clean.parquet" chat || { cat chat_pq.log; fail "chat from Parquet"; }
same_artifact chat_jsonl chat_pq

# ---- type: parquet without the extension; auto by the magic ----
cp "$G/alpaca_zstd.parquet" alpaca.data
build typed alpaca.data alpaca parquet || { cat typed.log; fail "type: parquet"; }
same_artifact jsonl typed
"$QLORA_BIN" data read alpaca.data --n 1 | grep -q '^{"instruction":' || fail "auto did not sniff PAR1"

# ---- bad input: exit 4, the file and the place, nothing cached ----
expect4() { # expect4 NAME FILE FORMAT PATTERN...
    local name=$1 file=$2 fmt=$3 rc=0
    shift 3
    build "$name" "$file" "$fmt" || rc=$?
    [ $rc = 4 ] || { cat "$name.log"; fail "$name: exit $rc, expected 4"; }
    for pat in "$@"; do grep -q -- "$pat" "$name.log" || { cat "$name.log"; fail "$name: no '$pat' in the message"; }; done
    ! ls -d "$W/cache-$name"/artifacts/dataset/*/ 2>/dev/null | grep -q . || fail "$name: a dataset artifact was cached"
}
src="$G/alpaca_gzip.parquet"
size=$(stat -c %s "$src")
head -c $((size - 100)) "$src" > truncated.parquet
expect4 truncated truncated.parquet alpaca "truncated.parquet" "truncated"
{ printf 'PAR0'; tail -c +5 "$src"; } > magic.parquet
expect4 magic magic.parquet alpaca "magic.parquet" "does not start with 'PAR1'"
# the footer: its first 16 bytes (the schema's start) overwritten
flen=$(tail -c 8 "$src" | head -c 4 | od -An -tu4 | tr -d ' ')
cp "$src" footer.parquet
printf '\377\377\377\377\377\377\377\377\377\377\377\377\377\377\377\377' |
    dd of=footer.parquet bs=1 seek=$((size - 8 - flen)) conv=notrunc status=none
expect4 footer footer.parquet alpaca "footer.parquet" "corrupt"
# a page: garble the deflate stream after the first gzip header (a page body)
off=$(LC_ALL=C grep -obUaP '\x1f\x8b\x08' "$src" | head -1 | cut -d: -f1)
cp "$src" page.parquet
printf '\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125\125' |
    dd of=page.parquet bs=1 seek=$((off + 12)) conv=notrunc status=none
expect4 page page.parquet alpaca "page.parquet: row group 0, column '" "page " "GZIP"
expect4 column "$G/chat_clean.parquet" alpaca "chat_clean.parquet: no column 'instruction' (the file has 'messages')"
# a column of a type the format cannot use (a list where alpaca reads text)
BUILD_EXTRA=$'    field_instruction: messages\n    field_output: messages' expect4 type "$G/chat_clean.parquet" alpaca \
    "chat_clean.parquet: record 0: 'instruction' must be a string, not a list"
# INT96 (legacy Spark/Impala timestamps) read as hyparquet reads them (all values: test_parquet_js.sh)
"$QLORA_BIN" data read "$G/int96.parquet" --columns ts,text --n 2 > int96.out
[ "$(sed -n 2p int96.out)" = '{"ts":"2021-03-04T05:06:07.123Z","text":"nanoseconds truncated"}' ] || { cat int96.out; fail "INT96"; }
# data read says the same
rc=0; "$QLORA_BIN" data read truncated.parquet > /dev/null 2> err.txt || rc=$?
[ $rc = 4 ] && grep -q "truncated.parquet" err.txt || { cat err.txt; fail "data read on a truncated file: exit $rc"; }
echo "ok: parquet fixtures, identical artifacts, bad input"
