#!/usr/bin/env bash
# make_export.sh: regenerate the committed exports of the export golden test from
# make_export.yaml (run from the repo root with a built qlora-run: BIN=build/qlora-run).
# Writes tests/golden/export/{base,merged,adapter_list,adapter_all}; afterwards run
# check_export.py where torch, transformers and peft are installed, which rewrites
# export_golden.safetensors and check_export.log.
set -euo pipefail
BIN=${BIN:-build/qlora-run}
here=tests/golden/export
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
QLORA_CACHE="$tmp/cache" QLORA_RUNS="$tmp/runs" "$BIN" "$here/make_export.yaml" >"$tmp/log" 2>&1 || { cat "$tmp/log"; exit 1; }
art() { awk -v s="$1:" '$1 == s { print $2 }' "$tmp/log" | tail -1; }  # "  export_base: DIR" 
base=$(art export_base) list=$(art export_list) all=$(art export_all)
[ -d "$base/model" ] && [ -d "$list/adapter" ] && [ -d "$all/adapter" ] || { cat "$tmp/log"; echo "no export artifacts" >&2; exit 1; }
rm -rf "$here/base" "$here/merged" "$here/adapter_list" "$here/adapter_all"
cp -r "$base/model" "$here/base"
cp -r "$list/model" "$here/merged"
cp -r "$list/adapter" "$here/adapter_list"
cp -r "$all/adapter" "$here/adapter_all"
grep -E "val loss|exported" "$tmp/log"
