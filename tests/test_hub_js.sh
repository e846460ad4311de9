#!/usr/bin/env bash
# test_hub_js.sh: the hub cache is shared with other tools. npm's @huggingface/hub (pinned,
# installed under $QLORA_BUILD/npm) writes the same layout as the Python tools (blobs named by
# ETag, relative snapshot links, refs). Against the nginx test hub (tests/hub_server.sh):
#   1. it downloads a model; `qlora-run fetch` then finds every file and sends no file request;
#   2. `qlora-run fetch` downloads into a fresh cache; it then finds every file there too.
# Fails when nginx, node, npm or the package are missing.
set -u
: "${QLORA_BIN:?}" "${QLORA_BUILD:?}" "${QLORA_SRC:=.}"
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
HUB_VERSION=2.17.5
[ -x "${NGINX:-/usr/sbin/nginx}" ] || { echo "FAIL: no nginx at ${NGINX:-/usr/sbin/nginx} (make deps, or apt-get install nginx-light)"; exit 1; }
. "$QLORA_SRC/tests/npm_pkg.sh"
npm_pkg HUB_JS_DIR @huggingface/hub "$HUB_VERSION"
. "$QLORA_SRC/tests/hub_server.sh"
hub_init
T=$HUB_T
unset HF_TOKEN HF_HUB_OFFLINE HF_HOME

# a generated model; the hub's three answers per file: resolve, tree entry, paths-info entry
"$QLORA_BIN" init-model --out "$T/gen" --preset tiny > /dev/null 2>&1 || { echo "FAIL init-model"; exit 1; }
REPO=org/tiny
C=$(hub_commit_of js-main)
files="" tree=""
mkdir -p "$HUB_WWW/api/models/$REPO/tree" "$HUB_WWW/api/models/$REPO/paths-info/$C"
for f in $(cd "$T/gen" && ls); do
    src=$T/gen/$f size=$(stat -c %s "$T/gen/$f") oid=$(git hash-object "$T/gen/$f")
    case $f in
        *.safetensors) hub_add_file "" $REPO $C "$f" "$src" 1
                       entry="{\"type\":\"file\",\"path\":\"$f\",\"oid\":\"$oid\",\"size\":$size,\"lfs\":{\"oid\":\"$(sha256sum < "$src" | cut -c1-64)\",\"size\":$size,\"pointerSize\":134}}" ;;
        *) hub_add_file "" $REPO $C "$f" "$src" 0
           entry="{\"type\":\"file\",\"path\":\"$f\",\"oid\":\"$oid\",\"size\":$size}" ;;
    esac
    files="$files $f"; tree="$tree${tree:+,}$entry"
    echo "[$entry]" > "$HUB_WWW/api/models/$REPO/paths-info/$C/$f"
done
echo "[$tree]" > "$HUB_WWW/api/models/$REPO/tree/$C"
hub_add_api models $REPO main $C $files
hub_start || { echo "FAIL nginx did not start"; exit 1; }
files_requested() { grep -c "/$REPO/resolve/" "$HUB_T/logs/hub.log"; }

# 1. written by @huggingface/hub, read by us
A=$T/cache-js
node "$QLORA_SRC/tests/hub_js.mjs" "$HUB_ENDPOINT" "$A" $REPO main > "$T/js.out" 2> "$T/js.err"
check "@huggingface/hub downloads the model" test "$?" = 0 -a -f "$A/models--org--tiny/snapshots/$C/config.json" || cat "$T/js.err"
n=$(files_requested)
out=$(HF_ENDPOINT=$HUB_ENDPOINT HF_HUB_CACHE=$A "$QLORA_BIN" fetch $REPO 2> "$T/err"); rc=$?
check "qlora-run fetch reuses its cache" test "$rc" = 0 -a "$out" = "$A/models--org--tiny/snapshots/$C"
check "... without requesting a file" test "$(files_requested)" = "$n"
check "... and reports nothing downloaded" grep -q "0.0 MB downloaded" "$T/err"

# 2. written by us, read by @huggingface/hub
B=$T/cache-ours
HF_ENDPOINT=$HUB_ENDPOINT HF_HUB_CACHE=$B "$QLORA_BIN" fetch $REPO > /dev/null 2>&1
check "qlora-run fetch downloads the model" test -f "$B/models--org--tiny/snapshots/$C/model.safetensors"
n=$(files_requested)
node "$QLORA_SRC/tests/hub_js.mjs" "$HUB_ENDPOINT" "$B" $REPO main > "$T/js.out" 2> "$T/js.err"
check "@huggingface/hub reuses our cache" test "$?" = 0 -a "$(cat "$T/js.out")" = "$B/models--org--tiny/snapshots/$C" || cat "$T/js.err"
check "... without requesting a file" test "$(files_requested)" = "$n"
for f in $files; do
    cmp -s "$A/models--org--tiny/snapshots/$C/$f" "$B/models--org--tiny/snapshots/$C/$f" || { echo "FAIL $f differs"; fails=$((fails + 1)); }
done
check "both caches have the same blob names and links" \
    test "$(cd "$A/models--org--tiny" && find blobs snapshots refs | sort; readlink snapshots/$C/*)" = \
         "$(cd "$B/models--org--tiny" && find blobs snapshots refs | sort; readlink snapshots/$C/*)"

checks_done
