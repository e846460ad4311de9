#!/usr/bin/env bash
# test_tokenize_cli.sh: `qlora-run tokenize` on the hand-made tokenizers in tests/tokenizer/:
# ids, tokens, decode, --no-special, one output line per input line, and the failure paths
# (usage errors exit 2, bad files and bad input exit 4 with a message).
set -uo pipefail
: "${QLORA_BIN:?set QLORA_BIN to the qlora-run program}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
T=tests/tokenizer
expect() { # expect NAME WANT GOT
  [ "$2" = "$3" ] || bad "$1: got '$3', want '$2'"
}
run() { "$QLORA_BIN" tokenize "$@"; }

expect "ids" "$(printf '116 257 258 262 265\n259 259 97 265\n265\n')" "$(printf 'the the is\naaaaa\n\n' | run --model $T/tiny-bl)"
expect "no trailing newline" "116 257" "$(printf 'the' | run --model $T/tiny-bl --no-special)"
expect "tokens" "t he Ġthe Ġis" "$(printf 'the the is\n' | run --model $T/tiny-bl --tokens --no-special)"
expect "sentencepiece" "1 265 198 172 259 262" "$(printf 'abé c\n' | run --model $T/tiny-sp)"
expect "decode" "$(printf 'abé c\n\nab')" "$(printf '1 265 198 172 259 262\n\n265\n' | run --model $T/tiny-sp --decode --no-special)"
expect "decode keeps specials" "<s> ab" "$(printf '1 265\n' | run --model $T/tiny-sp --decode)"
expect "empty input" "" "$(run --model $T/tiny-bl < /dev/null)"

out=$(run --help); rc=$?
[ $rc -eq 0 ] && [[ "$out" == *"usage: qlora-run tokenize"* ]] || bad "--help: exit $rc"
run --model $T/tiny-bl --bogus < /dev/null > /dev/null 2>&1; expect "unknown option exit" 2 $?
run < /dev/null > /dev/null 2>&1; expect "missing --model exit" 2 $?
run --model $T/tiny-bl --decode --tokens < /dev/null > /dev/null 2>&1; expect "--decode --tokens exit" 2 $?
err=$(run --model $T/no-such-dir < /dev/null 2>&1 >/dev/null); rc=$?
expect "missing tokenizer exit" 4 $rc
[[ "$err" == *"tokenizer.json"* ]] || bad "missing tokenizer: message '$err'"
err=$(printf 'ok\n\xc3\x28 bad\n' | run --model $T/tiny-bl 2>&1 >/dev/null); rc=$?
expect "invalid UTF-8 exit" 4 $rc
[[ "$err" == *"line 2: invalid UTF-8 at byte offset 0"* ]] || bad "invalid UTF-8: message '$err'"
err=$(printf '1 2\n3 x7\n' | run --model $T/tiny-bl --decode 2>&1 >/dev/null); rc=$?
expect "bad id exit" 4 $rc
[[ "$err" == *"line 2: 'x7' is not a token id"* ]] || bad "bad id: message '$err'"
err=$(printf '99999\n' | run --model $T/tiny-bl --decode 2>&1 >/dev/null); rc=$?
expect "unknown id exit" 4 $rc
[[ "$err" == *"token id 99999"* ]] || bad "unknown id: message '$err'"

if [ $CHECKS_FAILED -eq 0 ]; then echo "1 passed, 0 failed"; exit 0; fi
echo "0 passed, 1 failed ($CHECKS_FAILED checks)"
exit 1
