#!/usr/bin/env bash
# test_hub.sh: the hub client against a real HTTP server on loopback.
#
# Starts nginx (Debian's, /usr/sbin/nginx) with its own prefix and config in a temp dir,
# serving a hub-like tree: the API listing (/api/models/ORG/NAME/revision/REV), the resolve
# paths (/ORG/NAME/resolve/COMMIT/PATH) with the headers the hub sends (X-Repo-Commit, ETag,
# X-Linked-Etag, X-Linked-Size, X-Error-Code), and a small safetensors model written here.
# Faults come from nginx itself: a proxy that times out mid-body cuts the connection; round-robin
# upstreams alternate a failing server with a good one (a 500, then success; a 429 with
# Retry-After, then success); a second server on 127.0.0.2 plays the CDN and logs the
# Authorization header it receives. Run from the repo root with QLORA_BIN set (ctest does it).
set -u
BIN=${QLORA_BIN:=build/qlora-run}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
NGINX=${NGINX:-/usr/sbin/nginx}
[ -x "$NGINX" ] || { echo "FAIL: no nginx at $NGINX (make deps, or apt-get install nginx-light)"; exit 1; }

. "$(dirname "$0")/hub_server.sh"
hub_init
T=$HUB_T
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_CACHE HUGGINGFACE_HUB_CACHE HF_HUB_OFFLINE TRANSFORMERS_OFFLINE


TOKEN=hf_SecretTestToken0123456789
WWW=$HUB_WWW CDN=$T/cdn
mkdir -p "$CDN/blobs" "$T/home"

# ---- the model files ----
# a safetensors file: one F32 tensor of n floats, random bytes
make_safetensors() { # out n
    local out=$1 n=$2 hdr len pad
    hdr="{\"w\":{\"dtype\":\"F32\",\"shape\":[$n],\"data_offsets\":[0,$((n * 4))]}}"
    pad=$(( (8 - ${#hdr} % 8) % 8 )); hdr="$hdr$(printf '%*s' $pad '')"; len=${#hdr}
    printf "$(printf '\\x%02x\\x%02x\\x00\\x00\\x00\\x00\\x00\\x00' $((len & 255)) $((len >> 8)))" > "$out"
    printf '%s' "$hdr" >> "$out"
    head -c $((n * 4)) /dev/urandom >> "$out"
}
SRC=$T/src; mkdir -p "$SRC"
echo '{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":8,"num_attention_heads":2,"num_key_value_heads":2,"num_hidden_layers":1,"intermediate_size":16,"vocab_size":16}' > "$SRC/config.json"
echo '{"architectures":["BertModel"],"model_type":"bert","hidden_size":8}' > "$SRC/bert-config.json"
echo '{"bos_token_id":1,"eos_token_id":2}' > "$SRC/generation_config.json"
echo '{"version":"1.0","model":{"type":"BPE","vocab":{}}}' > "$SRC/tokenizer.json"
echo '# a readme nobody asked for' > "$SRC/README.md"
printf 'PK\003\004 pickle' > "$SRC/pytorch_model.bin"
make_safetensors "$SRC/model.safetensors" 400000        # 1.6 MB: big enough to cut
make_safetensors "$SRC/small.safetensors" 1000
echo '[{"instruction":"say hi","input":"","output":"hi"}]' > "$SRC/alpaca.json"

commit_of() { hub_commit_of "$@"; }
add_file() { hub_add_file "$@"; }
add_api() { hub_add_api "$@"; }

C1=$(commit_of tiny-main); C2=$(commit_of tiny-pr1)
for f in config.json generation_config.json tokenizer.json README.md pytorch_model.bin; do add_file "" org/tiny $C1 $f "$SRC/$f" 0; done
add_file "" org/tiny $C1 model.safetensors "$SRC/model.safetensors" 1
add_file "" org/tiny $C2 config.json "$SRC/generation_config.json" 0
add_file "" org/tiny $C2 model.safetensors "$SRC/small.safetensors" 1
TINY_FILES="config.json generation_config.json tokenizer.json README.md pytorch_model.bin model.safetensors"
add_api models org/tiny main $C1 $TINY_FILES
hub_branch "" org/tiny main $C1
add_api models org/tiny v1.0 $C1 $TINY_FILES
add_api models org/tiny $C1 $C1 $TINY_FILES
add_api models org/tiny refs/pr/1 $C2 config.json model.safetensors

# fault repos: each serves config.json normally and model.safetensors through its fault
for r in cut badsha flaky ratelimited cdn private gated; do
    c=$(commit_of $r); eval "C_$r=$c"
    add_file "" org/$r $c config.json "$SRC/config.json" 0
    add_api models org/$r main $c config.json model.safetensors
done
for r in cut flaky ratelimited cdn private; do add_file "" org/$r $(commit_of $r) model.safetensors "$SRC/model.safetensors" 1; done
# badsha: the bytes are the model, the advertised sha256 is of other bytes
f="$WWW/org/badsha/resolve/$C_badsha/model.safetensors"; mkdir -p "$(dirname "$f")"; cp "$SRC/model.safetensors" "$f"
echo "\"/org/badsha/resolve/$C_badsha/model.safetensors\" \"$(sha256sum < "$SRC/small.safetensors" | cut -c1-64)\";" >> "$T/map.letag"
echo "\"/org/badsha/resolve/$C_badsha/model.safetensors\" $(stat -c %s "$SRC/model.safetensors");" >> "$T/map.lsize"
# cdn: the blob lives on the other server
cp "$SRC/model.safetensors" "$CDN/blobs/$(sha256sum < "$SRC/model.safetensors" | cut -c1-64)"
# pickle-only repo, and a listing that tries to escape
C_pickle=$(commit_of pickle)
add_file "" org/pickle $C_pickle config.json "$SRC/config.json" 0
add_file "" org/pickle $C_pickle pytorch_model.bin "$SRC/pytorch_model.bin" 0
add_api models org/pickle main $C_pickle config.json pytorch_model.bin
add_api models org/evil main $(commit_of evil) config.json ../../../../escaped.json
# an architecture the engine does not implement: the fetch_model stage reads config.json before the weights
C_bert=$(commit_of bert)
add_file "" org/bert $C_bert config.json "$SRC/bert-config.json" 0
add_file "" org/bert $C_bert model.safetensors "$SRC/model.safetensors" 1
add_api models org/bert main $C_bert config.json model.safetensors
hub_branch "" org/bert main $C_bert
# a dataset repo, fetched by branch
C_data=$(commit_of data)
add_file datasets/ org/data main alpaca.json "$SRC/alpaca.json" 0
hub_branch datasets/ org/data main $C_data
add_api datasets org/data main $C_data alpaca.json

# ---- nginx: the hub, plus a backend (P3) and a CDN on another host (P2) ----
hub_free_port; P2=$HUB_FREE_PORT; hub_free_port; P3=$HUB_FREE_PORT; hub_free_port; P4=$HUB_FREE_PORT; hub_free_port; P5=$HUB_FREE_PORT
hub_free_port; HUB_PORT=$HUB_FREE_PORT # chosen here: the proxy below points at the hub
# a certificate no system store trusts, for the TLS server
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/tls.key" -out "$T/tls.pem" -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 2> /dev/null
CDN_BLOB=$(sha256sum < "$SRC/model.safetensors" | cut -c1-64)
HTTP_EXTRA="
    map \$status \$rev_err { 404 RevisionNotFound; default \"\"; }
    map \$http_authorization \$auth_ok { \"Bearer $TOKEN\" 1; default 0; }
    upstream flaky_rr { server 127.0.0.2:$P2; server 127.0.0.1:$P3; }
    upstream ratelimited_rr { server 127.0.0.2:$P2; server 127.0.0.1:$P3; }"
HUB_LOCATIONS="
        location ^~ /api/models/org/tiny/ { add_header X-Error-Code \$rev_err always; }
        location ^~ /api/models/org/private/ {
            add_header X-Error-Code RepoNotFound always;
            if (\$auth_ok = 0) { return 401; }
        }
        location ^~ /org/private/resolve/ {
            include $T/hubhdrs.conf;
            if (\$auth_ok = 0) { return 401; }
        }
        location ^~ /org/gated/resolve/ {
            add_header X-Error-Code GatedRepo always;
            add_header X-Error-Message \"Access to model org/gated is restricted and you are not in the authorized list.\" always;
            return 403;
        }
        location = /org/cdn/resolve/$C_cdn/model.safetensors {
            include $T/hubhdrs.conf;
            return 302 http://127.0.0.2:$P2/blobs/$CDN_BLOB?signature=abc;
        }
        # the cut: the inner location stalls after 1 MB, the proxy gives up after 1 s and
        # closes the client's connection mid-body; a resumed request (< 1 MB left) passes
        location = /org/cut/resolve/$C_cut/model.safetensors {
            include $T/hubhdrs.conf;
            proxy_pass http://127.0.0.1:$P3/slow/org/cut/resolve/$C_cut/model.safetensors;
            proxy_buffering off;
            proxy_read_timeout 1s;
        }
        location = /org/flaky/resolve/$C_flaky/model.safetensors { proxy_pass http://flaky_rr; }
        location = /org/ratelimited/resolve/$C_ratelimited/model.safetensors { proxy_pass http://ratelimited_rr; }"
SERVERS="
    # the backend of the round robins, and the slow source of the cut
    server {
        listen 127.0.0.1:$P3;
        root $WWW;
        access_log $T/logs/backend.log hdrs;
        location / { include $T/hubhdrs.conf; }
        location /slow/ { alias $WWW/; limit_rate_after 1000k; limit_rate 1; }
    }
    # the CDN on another host, and the failing half of the round robins
    server {
        listen 127.0.0.2:$P2;
        root $CDN;
        access_log $T/logs/cdn.log hdrs;
        location /blobs/ { }
        location /org/flaky/ { return 500; }
        location /org/ratelimited/ { add_header Retry-After 2 always; return 429; }
    }
    # a forward proxy in front of the hub (it forwards whatever host was asked for to the hub)
    server {
        listen 127.0.0.1:$P5;
        access_log $T/logs/proxy.log hdrs;
        location / { proxy_pass http://127.0.0.1:$HUB_PORT; }
    }
    # the hub over TLS, with a self-signed certificate
    server {
        listen 127.0.0.1:$P4 ssl;
        ssl_certificate $T/tls.pem;
        ssl_certificate_key $T/tls.key;
        root $WWW;
        location ~ ^/[^/]+/[^/]+/resolve/ { include $T/hubhdrs.conf; }
    }"
hub_start "$HUB_LOCATIONS" "$SERVERS" "$HTTP_EXTRA" || { echo "FAIL nginx did not start"; exit 1; }
P1=$HUB_PORT

export HF_ENDPOINT=http://127.0.0.1:$P1 HF_HOME=$T/home
CACHE=$T/home/hub
OUT=$T/out; : > "$T/all-output"
run() { # run the client; output in $OUT.{out,err}, also appended to all-output; rc in $rc
    "$BIN" fetch "$@" > "$OUT.out" 2> "$OUT.err"; rc=$?
    cat "$OUT.out" "$OUT.err" >> "$T/all-output"
}
has() { grep -q -- "$1" "$OUT.err"; }

# 1. a plain fetch: default files only, cache layout as the Python tools write it
run org/tiny
SNAP=$CACHE/models--org--tiny/snapshots/$C1
check "fetch prints the snapshot" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$SNAP"
check "default files fetched" test -f "$SNAP/config.json" -a -f "$SNAP/generation_config.json" -a -f "$SNAP/tokenizer.json"
check "safetensors identical" cmp -s "$SNAP/model.safetensors" "$SRC/model.safetensors"
check "README and pickle not fetched" test ! -e "$SNAP/README.md" -a ! -e "$SNAP/pytorch_model.bin"
check "relative symlink to the blob" test "$(readlink "$SNAP/model.safetensors")" = "../../blobs/$(sha256sum < "$SRC/model.safetensors" | cut -c1-64)"
check "refs/main holds the commit, no newline" test "$(cat "$CACHE/models--org--tiny/refs/main")" = "$C1" -a "$(stat -c %s "$CACHE/models--org--tiny/refs/main")" = 40
check "no partial files" test -z "$(find "$CACHE" -name '*.incomplete')"

# 2. again: everything cached, only the listing is asked for
n0=$(grep -c resolve "$T/logs/hub.log")
run org/tiny
check "second fetch is cached" test "$rc" = 0 -a "$(grep -c resolve "$T/logs/hub.log")" = "$n0"

# 3. revisions: a tag, a commit, a PR ref, a bad one
run org/tiny@v1.0; check "tag resolves" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$SNAP"
run org/tiny@$C1; check "commit resolves" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$SNAP"
run org/tiny@refs/pr/1
check "refs/pr/1 resolves" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$CACHE/models--org--tiny/snapshots/$C2" -a -f "$CACHE/models--org--tiny/refs/refs/pr/1"
run org/tiny@nosuch; check "bad revision: exit 8" test "$rc" = 8; check "bad revision: says so" has "revision 'nosuch' not found"

# 4. include/exclude, pickle refused
run org/tiny --include 'README*'; check "--include" test "$rc" = 0 -a -f "$SNAP/README.md"
run org/tiny --include '*.bin'; check "pickle refused by --include: exit 4" test "$rc" = 4; check "pickle: says why" has "can run arbitrary code"
run org/pickle; check "pickle-only repo refused: exit 4" test "$rc" = 4; check "pickle-only: says so" has "no .safetensors weights"
run org/pickle --include '*.bin' --allow-pickle; check "--allow-pickle" test "$rc" = 0

# 5. errors: missing repo, 401 private, 403 gated, missing file, unsafe listing
run org/nope; check "missing repo: exit 8" test "$rc" = 8; check "missing repo: says so" has "'org/nope' not found"
run org/private; check "private without token: exit 8" test "$rc" = 8; check "private: mentions HF_TOKEN" has "HF_TOKEN"
HF_TOKEN=$TOKEN run org/private; check "private with HF_TOKEN" test "$rc" = 0
rm -rf "$CACHE/models--org--private"
echo "$TOKEN" > "$T/home/token"; run org/private; check "private with \$HF_HOME/token" test "$rc" = 0; rm "$T/home/token"
run org/gated; check "gated: exit 8" test "$rc" = 8; check "gated: accept the licence" has "accept its licence on $HF_ENDPOINT/org/gated"
run org/tiny --file nosuch.txt; check "missing file: exit 8" test "$rc" = 8
check "missing file remembered in .no_exist" test -e "$CACHE/models--org--tiny/.no_exist/$C1/nosuch.txt"
run org/evil --include '*'; check "escaping listing: exit 4" test "$rc" = 4; check "escaping listing: says unsafe" has "unsafe path"
check "nothing written outside" test -z "$(find "$T" -name escaped.json)"

# 6. faults: cut mid-file, wrong sha, 500 then success, 429 with Retry-After, CDN redirect
QLORA_HUB_HASH=thread run org/cut # the checksum in its thread, across the resume
check "cut: resumed" test "$rc" = 0 && check "cut: identical bytes" cmp -s "$CACHE/models--org--cut/snapshots/$C_cut/model.safetensors" "$SRC/model.safetensors"
check "cut: second request used Range" grep -q "model.safetensors 206 .*range=\"bytes=[1-9]" "$T/logs/backend.log"
QLORA_HUB_HASH=thread run org/badsha; check "wrong sha: exit 4" test "$rc" = 4; check "wrong sha: says checksum" has "checksum"
check "wrong sha: no blob kept" test -z "$(find "$CACHE/models--org--badsha/blobs/" -size +1000k)" -a ! -e "$CACHE/models--org--badsha/snapshots/$C_badsha/model.safetensors"
run org/flaky; check "500 then success" test "$rc" = 0 && check "500: identical" cmp -s "$CACHE/models--org--flaky/snapshots/$C_flaky/model.safetensors" "$SRC/model.safetensors"
t0=$(date +%s.%N); run org/ratelimited; t1=$(date +%s.%N)
check "429 then success" test "$rc" = 0
check "429: Retry-After honoured (>= 4 s for two waits of 2 s)" awk "BEGIN{exit !($t1 - $t0 >= 4)}"
QLORA_HUB_HASH=inline HF_TOKEN=$TOKEN run org/cdn
check "cdn redirect: fetched" test "$rc" = 0 && check "cdn: identical" cmp -s "$CACHE/models--org--cdn/snapshots/$C_cdn/model.safetensors" "$SRC/model.safetensors"
check "cdn: the hub got the token" grep -q "/org/cdn/resolve/.* auth=\"Bearer " "$T/logs/hub.log"
check "cdn: the token did not follow the redirect" test "$(grep -c 'auth="Bearer' "$T/logs/cdn.log")" = 0 -a "$(grep -c /blobs/ "$T/logs/cdn.log")" -gt 0

# 7. a resumed partial blob: a .incomplete left from an earlier cut is continued, not restarted
rm -rf "$CACHE/models--org--tiny"
BLOB=$(sha256sum < "$SRC/model.safetensors" | cut -c1-64)
mkdir -p "$CACHE/models--org--tiny/blobs"; head -c 700000 "$SRC/model.safetensors" > "$CACHE/models--org--tiny/blobs/$BLOB.incomplete"
run org/tiny
check "partial blob resumed" test "$rc" = 0 && check "resumed bytes identical" cmp -s "$SNAP/model.safetensors" "$SRC/model.safetensors"
check "resume asked for the rest" grep -q "range=\"bytes=700000-\"" "$T/logs/hub.log"

# 7b. a bit flipped in a cached blob: --verify finds it, deletes the blob and fetches it again
BLOBF=$CACHE/models--org--tiny/blobs/$BLOB
cp "$BLOBF" "$T/blob.before"; flip_byte "$BLOBF" 5000
check "the planted flip changed one byte of the blob" test "$(cmp -l "$BLOBF" "$T/blob.before" | wc -l)" = 1
run org/tiny; check "without --verify a cached blob is trusted" test "$rc" = 0
run org/tiny --verify
check "--verify: corrupt blob fetched again" test "$rc" = 0 && check "--verify: says so" has "failed their checksum"
check "--verify: bytes repaired" cmp -s "$SNAP/model.safetensors" "$SRC/model.safetensors"

# 8. a dataset file by branch
run --dataset org/data --file alpaca.json
check "dataset file" test "$rc" = 0 && check "dataset file content" cmp -s "$(cat "$OUT.out")" "$SRC/alpaca.json"
DSF=$(cat "$OUT.out")
t0=$(date +%s); HF_ENDPOINT=http://127.0.0.1:1 run --dataset org/data --file alpaca.json; t1=$(date +%s)
check "dataset file, hub down: the cached file serves" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$DSF"
check "hub down: no waiting on retries" test $((t1 - t0)) -lt 3

# 9. the fetch_model stage, driven without the runner (tests/unit/test_hub_parse.c --stage)
DRV=${QLORA_BUILD:-build}/tests/test_hub_parse
if [ -x "$DRV" ]; then
    stage() { "$DRV" --stage "$@" > "$OUT.out" 2> "$OUT.err"; rc=$?; cat "$OUT.out" "$OUT.err" >> "$T/all-output"; }
    stage "$T/art-hub" '{"repo":"org/tiny"}'
    check "stage hub: model links to the snapshot" test "$rc" = 0 -a "$(readlink "$T/art-hub/model")" = "$SNAP"
    check "stage hub: report records the commit" grep -q "\"commit\": \"$C1\"" "$OUT.out"
    stage "$T/art-path" "{\"source\":\"path\",\"path\":\"$SRC\"}"
    check "stage path: model links to the folder" test "$rc" = 0 -a "$(readlink "$T/art-path/model")" = "$(realpath "$SRC")"
    stage "$T/art-url" "{\"source\":\"url\",\"url\":\"$HF_ENDPOINT/org/tiny/resolve/$C1\"}"
    check "stage url: files fetched" test "$rc" = 0 -a -f "$T/art-url/model/config.json" -a -f "$T/art-url/model/tokenizer.json"
    check "stage url: weights identical" cmp -s "$T/art-url/model/model.safetensors" "$SRC/model.safetensors"
    check "stage url: no partial files" test -z "$(find "$T/art-url" -name '*.incomplete')"
    stage "$T/art-bad" '{"source":"hub"}'
    check "stage: repo required" test "$rc" = 3
    stage "$T/art-bert" '{"repo":"org/bert"}'
    check "stage: an unsupported model_type, exit 4 naming it" \
        bash -c "test $rc = 4 && grep -q \"org/bert@main: not downloaded: .*config.json: model_type 'bert' is not supported\" '$OUT.err'"
    check "... its config.json was, and its weights were not downloaded" \
        bash -c "grep -q 'org/bert/resolve/.*config.json' '$T/logs/hub.log' && ! grep -q 'org/bert/resolve/.*model.safetensors' '$T/logs/hub.log'"
    stage "$T/art-gated" '{"repo":"org/gated"}'
    check "stage gated: exit 8, nothing linked" test "$rc" = 8 -a ! -e "$T/art-gated/model"
else
    bad "stage driver $DRV not built"
fi

# 10. offline: cached snapshot served without a request; nothing cached: a clear error
n0=$(wc -l < "$T/logs/hub.log")
HF_HUB_OFFLINE=1 run org/tiny
check "offline with a cached snapshot" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$SNAP" -a "$(wc -l < "$T/logs/hub.log")" = "$n0"
HF_HUB_OFFLINE=1 run org/never; check "offline without cache: exit 8" test "$rc" = 8; check "offline: says so" has "HF_HUB_OFFLINE"
HF_ENDPOINT=http://127.0.0.1:1 run org/tiny
check "hub unreachable: the cached snapshot serves" test "$rc" = 0 -a "$(cat "$OUT.out")" = "$SNAP"

# 11. TLS: an untrusted certificate fails (verification is never off); its CA file makes it work
HF_ENDPOINT=https://127.0.0.1:$P4 HF_HOME=$T/home-tls run org/tiny
check "TLS with an untrusted certificate: exit 8" test "$rc" = 8; check "TLS: says the certificate failed" has "could not be verified"
HF_ENDPOINT=https://127.0.0.1:$P4 HF_HOME=$T/home-tls CURL_CA_BUNDLE=$T/tls.pem run org/tiny
check "TLS with CURL_CA_BUNDLE" test "$rc" = 0 && check "TLS: identical bytes" cmp -s "$T/home-tls/hub/models--org--tiny/snapshots/$C1/model.safetensors" "$SRC/model.safetensors"

# 11b. a proxy from the environment (libcurl's http_proxy): the hub's name resolves nowhere
# but at the proxy, so the fetch works only through it
rm -rf "$T/home-proxy"
unset no_proxy
http_proxy=http://127.0.0.1:$P5 HF_ENDPOINT=http://hub.invalid HF_HOME=$T/home-proxy HF_TOKEN=$TOKEN run org/tiny
export no_proxy='*'
check "proxy from http_proxy" test "$rc" = 0
check "proxy: the requests went through it" grep -q "/api/models/org/tiny/revision/main 200" "$T/logs/proxy.log"
check "proxy: identical bytes" cmp -s "$T/home-proxy/hub/models--org--tiny/snapshots/$C1/model.safetensors" "$SRC/model.safetensors"

# 12. a full disk (a 1 MB tmpfs; mounting needs root, as CI runs): a clear error, no blob, no link
mkdir -p "$T/full"
if mount -t tmpfs -o size=1m tmpfs "$T/full" 2> "$T/mount.err"; then
    HF_HOME=$T/full run org/tiny
    check "full disk: exit 1" test "$rc" = 1; check "full disk: says so" has "No space left on device"
    check "full disk: no blob under its final name" test -z "$(find "$T/full" -path '*blobs/*' ! -name '*.incomplete' -size +1000k)"
    umount "$T/full"
else
    bad "full disk: cannot mount a tmpfs (uid $(id -u), needs root): $(cat "$T/mount.err")"
fi

# 13. the token never appears in anything we printed
check "token never printed" test "$(grep -c "$TOKEN" "$T/all-output")" = 0

if [ "$CHECKS_FAILED" -gt 0 ]; then
    echo "--- last stderr:"; cat "$OUT.err"; echo "--- nginx error log:"; tail -20 "$T/logs/error.log"
fi
checks_done
