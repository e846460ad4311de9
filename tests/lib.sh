# lib.sh: what the script tests share. Source it after `set -euo pipefail`:
#     . "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
#     test_init            # W, the caches, cd "$W"
# It checks QLORA_BIN (set by ctest), and gives:
#   W                      a temporary folder, removed at exit (kept when KEEP is set); the test
#                          runs in it, with QLORA_CACHE=$W/cache and QLORA_RUNS=$W/runs exported
#   fail MSG               print "FAIL: MSG" (on stderr) and exit 1: a test that stops at its first failure
#   ok NAME, bad NAME      a check that passed / failed, for a test that goes on after a failure:
#                          counted, and said ("ok   NAME" / "FAIL NAME"; bad then shows the first 30
#                          lines of the file BAD_SHOW names, when it is set and the file exists)
#   check NAME CMD [ARG...]
#                          run CMD: ok NAME when it succeeds, else bad NAME
#   checks_done            say "P passed, F failed"; its status is 1 when a check failed, so it ends
#                          the script (or: checks_done || exit 1)
#   dataset_recipe NAME [LINE...]
#                          a recipe on stdout: a generated one-layer Llama ('base', the byte
#                          tokenizer) and a dataset stage 'data' on it; each LINE is one more line
#                          of that stage, indented here. TOP (a variable) holds top-level lines
#                          that go after the name (seed:, hooks:).
#   expect_fail CODE TEXT CMD [ARG...]
#                          run CMD, its output in $W/expect.txt: it must exit CODE and say TEXT
#                          (a pattern for plain grep: basic regex); else the output is shown and the test fails
#   flip_byte FILE OFFSET  xor the byte at OFFSET with 0x20, in place: it always changes, whatever
#                          the file held (a constant written there may already be the byte)
: "${QLORA_BIN:?QLORA_BIN must name the qlora-run binary (ctest sets it)}"

fail() { echo "FAIL: $*" >&2; exit 1; }

CHECKS_PASSED=0 CHECKS_FAILED=0
ok() { CHECKS_PASSED=$((CHECKS_PASSED + 1)); echo "ok   $*"; }
bad() {
    CHECKS_FAILED=$((CHECKS_FAILED + 1))
    echo "FAIL $*"
    if [ -n "${BAD_SHOW:-}" ] && [ -f "$BAD_SHOW" ]; then sed 's/^/    /' "$BAD_SHOW" | head -30; fi
    return 0
}
check() {
    local name=$1
    shift
    if "$@"; then ok "$name"; else bad "$name"; fi
}
checks_done() {
    echo "$CHECKS_PASSED passed, $CHECKS_FAILED failed"
    [ "$CHECKS_FAILED" -eq 0 ]
}

test_init() {
    W=$(mktemp -d)
    trap '[ -n "${KEEP:-}" ] || rm -rf "$W"' EXIT
    export QLORA_CACHE="$W/cache" QLORA_RUNS="$W/runs"
    cd "$W"
}

dataset_recipe() {
    local name=$1 line
    shift
    printf 'name: %s\n' "$name"
    [ -z "${TOP:-}" ] || printf '%s\n' "$TOP"
    printf 'stages:\n  base:\n    kind: init_model\n    arch: llama\n    layers: 1\n    hidden: 64\n'
    printf '  data:\n    kind: dataset\n    model: base\n'
    for line in "$@"; do [ -z "$line" ] || printf '    %s\n' "$line"; done
}

expect_fail() {
    local code=$1 text=$2 rc=0
    shift 2
    "$@" > "$W/expect.txt" 2>&1 || rc=$?
    [ "$rc" = "$code" ] || { cat "$W/expect.txt"; fail "$*: exit $rc, expected $code"; }
    grep -q -- "$text" "$W/expect.txt" || { cat "$W/expect.txt"; fail "$*: the output lacks '$text'"; }
}

flip_byte() {
    local b
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "$(printf '\\%03o' $((b ^ 32)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
