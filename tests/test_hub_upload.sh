#!/usr/bin/env bash
# Publishing to the hub against tests/hub_upload_server.py (a stand-in for the hub's upload API
# that checks every request against docs/hub-upload.md): `qlora-run push` uploads regular files
# inline, LFS files through the batch API (basic PUT + verify, and multipart + completion), and
# commits last; the files on the "hub" equal the originals; the repo is created private; a
# branch is created; the token never reaches storage URLs or the output; an LFS object already
# there is not sent again; transient 5xx are retried; 401/403/404/409/413/5xx end with exit 8,
# advice, and no commit; a push killed mid-multipart resumes with the missing parts. The
# push_to_hub stage: publishes once (cache key = artifact + target, HF_ENDPOINT included), again
# for a new target or endpoint, and never when a gate fails.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
W=$(mktemp -d)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
TOKEN=hf_test_Secret_Token_123
# HF_HUB_DOWNLOAD_TIMEOUT: a stalled transfer is given up after this many seconds; the server is
# slow on a loaded machine, and a test that fails on load proves nothing
export HF_TOKEN=$TOKEN QLORA_HUB_RETRY_BASE_S=0.01 HF_HOME=$W/hf QLORA_CACHE=$W/cache QLORA_RUNS=$W/runs HF_HUB_DOWNLOAD_TIMEOUT=60

start() { # start [ENV=VALUE...]: a fresh server with its own state dir in $S
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  S=$(mktemp -d -p "$W")
  env EXPECT_TOKEN=$TOKEN LFS_THRESHOLD=4096 CHUNK=65536 MULTIPART_THRESHOLD=200000 "$@" \
    python3 "$SRC/tests/hub_upload_server.py" "$S" > "$S/port" 2>"$S/server.err" & SERVER_PID=$!
  for _ in $(seq 300); do [ -s "$S/port" ] && break; sleep 0.1; done # a loaded CI machine starts Python slowly
  [ -s "$S/port" ] || { echo "FAIL the test server did not start: $(cat "$S/server.err")"; exit 1; }
  export HF_ENDPOINT=http://127.0.0.1:$(cat "$S/port")
}
reqs() { cut -d' ' -f1,2 "$S/requests.log" | sed -E 's/[0-9a-f]{64}/OID/g' | tr '\n' ';'; }

D=$W/folder
mkdir -p "$D/sub" "$D/empty"                                    # an empty folder: nothing to send
echo '{"r": 4}' > "$D/adapter_config.json"                    # regular
{ printf '\0\1\2'; head -c 2997 /dev/urandom; } > "$D/weights.bin.part"  # binary (a NUL byte): LFS, basic
head -c 300000 /dev/urandom > "$D/sub/model.safetensors"       # LFS, multipart (5 parts of 64 KiB)
printf 'x%.0s' $(seq 5000) > "$D/sub/notes.txt"                # text but large: LFS

start
out=$("$BIN" push "$D" org/model 2>&1); rc=$?
[ $rc -eq 0 ] && ok "push uploads a folder (exit 0)" || bad "push rc $rc: $out $(cat "$S/server.err")"
grep -q " 400 " "$S/requests.log" && bad "the server found malformed requests: $(grep ' 400 ' "$S/requests.log")" \
  || ok "every request matches the documented formats"
same=0
for f in adapter_config.json weights.bin.part sub/model.safetensors sub/notes.txt; do
  cmp -s "$D/$f" "$S/repos/org/model/main/$f" && same=$((same+1))
done
[ $same -eq 4 ] && ok "the files on the hub equal the originals" || bad "only $same of 4 files arrived intact"
order=$(reqs)
[ "$order" = "POST /api/repos/create;POST /api/models/org/model/preupload/main;POST /org/model.git/info/lfs/objects/batch;PUT /storage/OID/part/1;PUT /storage/OID/part/2;PUT /storage/OID/part/3;PUT /storage/OID/part/4;PUT /storage/OID/part/5;POST /lfs/complete/OID;PUT /storage/OID;POST /lfs/verify;PUT /storage/OID;POST /lfs/verify;POST /api/models/org/model/commit/main;" ] \
  && ok "create, preupload, LFS batch, basic + verify, multipart + completion, then the commit last" || bad "request order: $order"
grep -q "org/model private=True" "$S/created.log" && ok "the repo is created private by default" || bad "created: $(cat "$S/created.log")"
[ "$(grep -c ' /storage/\| /lfs/' "$S/requests.log")" -gt 0 ] && ! grep -E ' /(storage|lfs)/.* yes ' "$S/requests.log" >/dev/null \
  && ok "the token is never sent to storage or LFS action URLs" || bad "token sent to storage: $(grep -E ' /(storage|lfs)/' "$S/requests.log")"
grep -q "$TOKEN" <<<"$out" && bad "the token appears in the output" || ok "the token is not in the output"
head -1 "$S/repos/org/model/main/README.md" | grep -qx -- "---" && grep -q '^library_name: "peft"' "$S/repos/org/model/main/README.md" \
  && ok "a model card (README.md with metadata) is generated" || bad "model card: $(head -5 "$S/repos/org/model/main/README.md")"

# again: the repo exists (409 is fine), the LFS objects are on the hub already: nothing re-sent
: > "$S/requests.log"
out=$("$BIN" push "$D" org/model --message "second" 2>&1); rc=$?
[ $rc -eq 0 ] && ! grep -q " /storage/" "$S/requests.log" && grep -q "0.0 MB sent" <<<"$out" \
  && ok "a second push re-sends no LFS object the hub has" || bad "second push rc $rc: $out; $(reqs)"

# a branch
out=$("$BIN" push "$D" org/model --revision nightly-1 2>&1); rc=$?
[ $rc -eq 0 ] && grep -q "POST /api/models/org/model/branch/nightly-1" "$S/requests.log" && [ -f "$S/repos/org/model/nightly-1/sub/model.safetensors" ] \
  && ok "--revision creates the branch and commits to it" || bad "branch rc $rc: $out"

# transient failures are retried with backoff
start FAIL=503:part:2
"$BIN" push "$D" org/model >/dev/null 2>&1; rc=$?
[ $rc -eq 0 ] && [ "$(grep -c '/part/1 no 503' "$S/requests.log")" -eq 2 ] && cmp -s "$D/sub/model.safetensors" "$S/repos/org/model/main/sub/model.safetensors" \
  && ok "a part that fails twice with 503 is retried and the upload completes" || bad "retry rc $rc: $(reqs)"

# a push killed mid-upload resumes with the parts missing: the parts sent are remembered (the
# cache's work folder), the hub keeps the open upload, and the next run completes it
start HANG_PART=3
"$BIN" push "$D" org/resume > "$W/killed.out" 2>&1 & PUSH_PID=$!
for _ in $(seq 300); do [ -f "$S/hanging" ] && break; sleep 0.1; done
kill -9 $PUSH_PID; wait $PUSH_PID 2>/dev/null
st=$(ls "$QLORA_CACHE"/work/push/multipart-*.json 2>/dev/null | head -1)
[ -f "$S/hanging" ] && [ -n "$st" ] && python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["parts"]; sys.exit(sorted(p) != ["1", "2"])' "$st" \
  && ok "a push killed at part 3 has parts 1 and 2 remembered" || bad "killed push: state '$st' $(cat "$st" 2>&1) $(reqs)"
: > "$S/requests.log"
out=$("$BIN" push "$D" org/resume 2>&1); rc=$?
sent=$(grep -o 'PUT /storage/[0-9a-f]*/part/[0-9]* no 200' "$S/requests.log" | sed 's/.*part.\([0-9]*\) .*/\1/' | tr '\n' ,)
[ $rc -eq 0 ] && [ "$sent" = "3,4,5," ] && cmp -s "$D/sub/model.safetensors" "$S/repos/org/resume/main/sub/model.safetensors" \
  && ! grep -q " 400 " "$S/requests.log" && [ ! -e "$st" ] \
  && ok "the next push sends only parts 3-5, completes the upload, and forgets its state" || bad "resume rc $rc: parts $sent; $out $(reqs)"

# hub errors: exit 8, advice, nothing committed
check_error() { # STATUS STEP EXPECTED-TEXT
  start FAIL="$1:$2"
  out=$("$BIN" push "$D" org/model 2>&1); rc=$?
  if [ $rc -eq 8 ] && grep -q -- "$3" <<<"$out" && ! grep -q " /commit/.* 200" "$S/requests.log" && [ ! -d "$S/repos" ] \
     && ! grep -q "$TOKEN" <<<"$out"; then ok "HTTP $1 at $2: exit 8, '$3', nothing committed"
  else bad "HTTP $1 at $2: rc $rc: $out"; fi
}
check_error 401 create "set HF_TOKEN to a valid token"
check_error 403 preupload "use a token with write access"
check_error 404 preupload "check the repo id 'org/model'"
check_error 409 commit "conflict on branch 'main'"
check_error 413 batch "too large for the hub"
check_error 500 commit "the hub failed (HTTP 500) after 5 retries: try again later"
check_error 502 put "the hub failed (HTTP 502)"
start
out=$(HF_TOKEN= "$BIN" push "$D" org/model 2>&1); rc=$?
[ $rc -eq 8 ] && grep -q "no token is set: export HF_TOKEN" <<<"$out" && ok "no token: exit 8 with what to set" || bad "no token: rc $rc $out"
"$BIN" push "$D" "org/bad name" >/dev/null 2>&1; [ $? -eq 2 ] && ok "a bad repo id is a usage error" || bad "bad repo id"
"$BIN" push "$W/nope" org/model >/dev/null 2>&1; [ $? -eq 2 ] && ok "a missing folder is a usage error" || bad "missing folder"

# the push_to_hub stage in a recipe
start
cp "$SRC/tests/recipes/hub_upload/publish.yaml" "$W/"
out=$("$BIN" "$W/publish.yaml" 2>&1); rc=$?
[ $rc -eq 0 ] && cmp -s "$S/repos/org/adapter/main/adapter_model.safetensors" "$(ls -d "$W"/cache/artifacts/attach_lora/*/)adapter/adapter_model.safetensors" \
  && ok "push_to_hub publishes the adapter" || bad "stage rc $rc: $out"
grep -q '^base_model\|^library_name: "peft"' "$S/repos/org/adapter/main/README.md" && grep -q "lora_r" "$S/repos/org/adapter/main/README.md" \
  && ok "the stage's model card names the library and the parameters" || bad "stage card: $(cat "$S/repos/org/adapter/main/README.md")"
n=$(wc -l < "$S/requests.log")
out=$("$BIN" "$W/publish.yaml" 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(wc -l < "$S/requests.log")" -eq "$n" ] && ok "a re-run publishes nothing (cached: artifact key + target)" \
  || bad "re-run sent requests: rc $rc $(reqs)"
BRANCH=nightly "$BIN" "$W/publish.yaml" -q; rc=$?
[ $rc -eq 0 ] && [ -f "$S/repos/org/adapter/nightly/adapter_model.safetensors" ] && ok "a new target publishes again" || bad "new target rc $rc"
: > "$S/requests.log"
out=$(RANK=8 MIN_PARAMS=1e12 "$BIN" "$W/publish.yaml" 2>&1); rc=$?
[ $rc -eq 9 ] && [ ! -s "$S/requests.log" ] && ok "a failed gate publishes nothing (exit 9, no request)" || bad "gate: rc $rc $(reqs)"
start FAIL=409:commit
out=$(RANK=2 "$BIN" "$W/publish.yaml" 2>&1); rc=$?
[ $rc -eq 8 ] && grep -q "stage 'push'.*conflict on branch" <<<"$out" && ok "a hub error in the stage exits 8" || bad "stage 409: rc $rc $out"

# another hub (HF_ENDPOINT) is another target: the same artifact is published there too
start
out=$("$BIN" "$W/publish.yaml" 2>&1); rc=$?
same=0
for a in "$W"/cache/artifacts/attach_lora/*/; do cmp -s "$S/repos/org/adapter/main/adapter_model.safetensors" "$a/adapter/adapter_model.safetensors" && same=1; done
[ $rc -eq 0 ] && [ $same = 1 ] && grep -q "commit/main no 200\|commit/main yes 200" "$S/requests.log" \
  && ok "another HF_ENDPOINT publishes again (the endpoint is in the key)" || bad "new endpoint: rc $rc $out $(reqs)"

checks_done
