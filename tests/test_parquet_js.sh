#!/usr/bin/env bash
# test_parquet_js.sh: every record qlora-run reads from each Parquet fixture (tests/golden/parquet/,
# written by pyarrow with tests/golden/make_parquet.py) against an independent reader, npm's
# hyparquet with hyparquet-compressors (pinned, installed under $QLORA_BUILD/npm), and against
# the records pyarrow wrote (tests/parquet_check.mjs); int96.parquet (INT96 timestamps, which the
# fixtures' pyarrow does not write by default) is built by tests/golden/make_int96.py from the
# format's documentation, its expected records computed there with Python's datetime. Skips
# (exit 0) only when node or the npm registry is missing.
set -euo pipefail
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
. "$QLORA_SRC/tests/npm_pkg.sh"
npm_pkg HYPARQUET_DIR hyparquet 1.33.0
npm_pkg HYPARQUET_COMPRESSORS_DIR hyparquet-compressors 1.1.2
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
n=0
for f in "$QLORA_SRC"/tests/golden/parquet/*.parquet; do
    "$QLORA_BIN" data read "$f" > "$W/ours.jsonl"
    node "$QLORA_SRC/tests/parquet_check.mjs" "$f" "$W/ours.jsonl" "${f%.parquet}.jsonl"
    n=$((n + 1))
done
[ $n -ge 18 ] || { echo "FAIL: only $n fixtures"; exit 1; }
echo "ok: $n Parquet fixtures read as hyparquet and pyarrow read them"
