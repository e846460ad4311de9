#!/usr/bin/env bash
# One option parser for every command (runner/cli.c): --opt value and --opt=value, typed values
# with bounds, did-you-mean, `--`, -h/--help on stdout with exit 0, misuse on stderr with exit 2.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
# expect CODE 'message regex' cmd...: exit code and a stderr line
expect() {
  local code=$1 re=$2; shift 2
  "$@" >"$T/out" 2>"$T/err"; local rc=$?
  if [ $rc -eq "$code" ] && { [ -z "$re" ] || grep -qE -- "$re" "$T/err"; }; then ok "$* -> $code"
  else bad "$* -> $rc (want $code, '$re'): $(head -3 "$T/err")"; fi
}
expect 2 "tokenize: unknown option '--modle' \(did you mean '--model'\?\)" "$BIN" tokenize --modle x
expect 2 "init-model: --hidden needs a whole number, not 'abc'" "$BIN" init-model --out "$T/m" --hidden abc
expect 2 "init-model: --hidden needs a whole number, not 'abc'" "$BIN" init-model --out "$T/m" --hidden=abc
expect 2 "generate: --top-p must be between 0 and 1, not 2" "$BIN" generate --model x --prompt y --top-p 2
expect 2 "generate: --model needs a value" "$BIN" generate --model
expect 2 "generate: --quantize must be none or nf4, not 'int8'" "$BIN" generate --model x --prompt y --quantize int8
expect 2 "schema: --commands takes no value" "$BIN" schema --commands=yes
expect 2 "inspect: unexpected argument 'b' \(after 'a'\)" "$BIN" inspect a b
expect 2 "cache: missing arguments" "$BIN" cache
expect 2 "cache: unknown subcommand 'lss'" "$BIN" cache lss
expect 2 "try 'qlora-run tokenize --help'" "$BIN" tokenize --tokens --ids --model x
# both spellings give the same result, and -- ends the options
"$BIN" init-model --out "$T/a" --preset tiny --hidden 32 --layers 1 --heads 2 --kv-heads 2 --intermediate 64 --seed 3 >/dev/null 2>&1
"$BIN" init-model --out="$T/b" --preset=tiny --hidden=32 --layers=1 --heads=2 --kv-heads=2 --intermediate=64 --seed=3 >/dev/null 2>&1
if cmp -s "$T/a/model.safetensors" "$T/b/model.safetensors" && [ -s "$T/a/model.safetensors" ]; then ok "--opt value and --opt=value agree"
else bad "--opt value and --opt=value gave different models"; fi
expect 0 "" "$BIN" inspect -- "$T/a"
# --set= works for every recipe command, not only run
expect 0 "" "$BIN" validate --set=stages.train.learning_rate=1e-3 "$SRC/recipes/demo.yaml"
expect 3 "learning_rate" "$BIN" show "$SRC/recipes/demo.yaml" --set stages.train.learning_rate=fast
# help goes to stdout with exit 0 and lists the options from the table
if "$BIN" generate --help 2>/dev/null | grep -q -- '--repetition-penalty R' && "$BIN" generate -h >/dev/null; then ok "--help from the table"
else bad "generate --help lacks the table's options"; fi
checks_done
