#!/usr/bin/env bash
# qlora-run doctor: one line a check, warnings for what a run can do without (GPU, hub, token),
# exit 1 when a check fails (an unwritable cache), the token never printed; --version says the
# commit, build type, CUDA and the libraries.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
T=$(mktemp -d); trap 'chmod -R u+w "$T"; rm -rf "$T"' EXIT
secret=hf_doctorTestSecret0123456789
HF_TOKEN=$secret HF_ENDPOINT=http://127.0.0.1:1 QLORA_CACHE=$T/cache "$BIN" doctor --timeout 2 >"$T/out" 2>&1
rc=$?
check "a machine without hub access: warnings only, exit 0 (got $rc)" test $rc -eq 0
check "the program line names version and commit" grep -qE '^ok +program +qlora-run [0-9.]+ \(commit [0-9a-f]{7,}' "$T/out"
check "the cache is checked: writable, free space" grep -qE "^ok +cache +'$T/cache': writable, [0-9.]+ GB free" "$T/out"
check "the token is found" grep -qE '^ok +token +a Hugging Face token is set \(HF_TOKEN\)' "$T/out"
check "the token is never printed" bash -c "! grep -q '$secret' '$T/out'"
check "the unreachable hub is a warning that says what still works" grep -qE '^warn +hub +request to http://127.0.0.1:1 failed.*cached models still work' "$T/out"
check "the GPU line says what happens without one" grep -qE '^(warn|ok) +(gpu|cuda) ' "$T/out"
check "MPI and NCCL are checked" bash -c "grep -qE '^(ok|warn) +mpi ' '$T/out' && grep -qE '^(ok|warn) +nccl ' '$T/out'"
check "a summary line" grep -qE '^[0-9]+ warnings?, 0 failed$' "$T/out"
# an unwritable cache fails the check and the command
mkdir -p "$T/ro"
if [ "$(id -u)" = 0 ]; then mount -t tmpfs -o ro,size=1m tmpfs "$T/ro" && trap 'umount "$T/ro"; rm -rf "$T"' EXIT
else chmod 555 "$T/ro"; fi
QLORA_CACHE=$T/ro/cache "$BIN" doctor --offline >"$T/out2" 2>&1
rc=$?
check "an unwritable cache: exit 1 (got $rc)" test $rc -eq 1
check "... naming the fix" grep -qE '^FAIL +cache .*set QLORA_CACHE to a writable directory' "$T/out2"
check "--offline does not try the hub" grep -qE '^ok +hub +not checked \(--offline\)' "$T/out2"
# --version: commit, build type, CUDA or not, library versions
"$BIN" --version >"$T/v"
check "--version: commit and build type" grep -qE '^qlora-run [0-9.]+ \(commit [0-9a-f]{7,}(-dirty)?, [A-Za-z]+, (CUDA sm_[0-9]+|no CUDA)' "$T/v"
check "--version: the libraries it runs with" grep -qE '^libyaml [0-9.]+, Lua 5\.[0-9]+, libcurl [0-9.]+, jansson [0-9.]+, OpenSSL' "$T/v"
checks_done
