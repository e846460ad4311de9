#!/usr/bin/env bash
# test_lib.sh: the shared helpers of the script tests (tests/lib.sh) do what the tests rely on: a
# failed check makes checks_done fail (else a broken test would pass), fail exits 1 with its
# message, expect_fail refuses a wrong exit code or message.
set -u
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
lib=$QLORA_SRC/tests/lib.sh
n=0
want() { # NAME EXPECTED-STATUS 'script' [OUTPUT-PATTERN]: run the script in a shell that sourced lib.sh
    local name=$1 code=$2 body=$3 pat=${4:-} rc=0
    bash -c ". '$lib'; $body" > "$T/out" 2>&1 || rc=$?
    n=$((n + 1))
    if [ "$rc" != "$code" ]; then cat "$T/out"; echo "FAIL $name: status $rc, expected $code"; exit 1; fi
    if [ -n "$pat" ] && ! grep -q -- "$pat" "$T/out"; then cat "$T/out"; echo "FAIL $name: output lacks '$pat'"; exit 1; fi
    echo "ok   $name"
}
want "checks that pass: checks_done succeeds" 0 'check a true; ok b; checks_done' '^2 passed, 0 failed$'
want "one failed check: checks_done fails" 1 'check a true; check b false; ok c; checks_done' '^2 passed, 1 failed$'
want "bad alone: checks_done fails" 1 'bad "x y"; checks_done' '^FAIL x y$'
want "check passes its arguments" 0 'check "args" test "a b" = "a b"; checks_done'
want "BAD_SHOW: bad shows the file" 0 'printf "line one\n" > "'"$T"'/shown"; BAD_SHOW="'"$T"'/shown"; bad z' '^    line one$'
want "fail exits 1 with its message" 1 'fail "the reason"; echo after' 'FAIL: the reason'
want "fail stops the script" 1 'fail x; echo after-fail' ''
grep -q after-fail "$T/out" && { echo "FAIL the script went on after fail"; exit 1; }
W=$T
want "expect_fail: the code and text" 0 'W="'"$T"'"; expect_fail 3 "went wrong" bash -c "echo it went wrong; exit 3"'
want "expect_fail: another code fails" 1 'W="'"$T"'"; expect_fail 3 "went wrong" bash -c "echo it went wrong; exit 4"' 'exit 4, expected 3'
want "expect_fail: missing text fails" 1 'W="'"$T"'"; expect_fail 3 "not said" bash -c "echo it went wrong; exit 3"' "lacks 'not said'"
# flip_byte changes the byte whatever it held (the ends, NUL, space, % and \ that printf
# could take for its own, 0x7f/0x80 and 0x5a, which test_hub once wrote over itself), and only that byte
want "flip_byte: the byte changes, nothing else does" 0 'cd "'"$T"'"
    for v in 0 1 32 37 90 92 127 128 223 254 255; do
        printf "ab\\000%b\\000z" "\\0$(printf %o $v)" > f; cp f g; flip_byte f 3
        [ "$(od -An -tu1 -j3 -N1 f | tr -d " ")" = $((v ^ 32)) ] || { echo "byte $v: $(od -An -tu1 f)"; exit 1; }
        [ "$(cmp -l f g | wc -l)" = 1 ] && [ "$(stat -c %s f)" = 6 ] || { echo "byte $v: other bytes moved"; exit 1; }
    done'
echo "$n passed, 0 failed"
