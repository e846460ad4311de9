#!/usr/bin/env bash
# test_security.sh: the security promises of issue 10 that other tests do not already cover
# (test_lua_host.c: the sandbox's tables; test_hub.sh: a '..' listing, pickle refused by
# `qlora-run fetch`, the token kept off the CDN and the console; test_runner.sh: a notify hook
# that cannot write). Here, through real recipes and a local hub (Debian's nginx):
#  1. hooks are sandboxed: a dataset generator hook cannot run programs (os.execute, io.popen,
#     package.loadlib), write, remove or rename files, load binary chunks, reach debug or C
#     modules, or exit the process; `allow: [io]` grants writes and nothing more;
#  2. file names from the hub cannot escape: an absolute path, a nested '..', a folder that is
#     a symlink planted in the snapshot, an ETag that is a path; a cached manifest naming
#     '..' or an absolute path is refused and the artifact recomputed; a symlink inside an
#     artifact never leads `cache gc` outside the cache, nor does a fetch_model link;
#  3. no pickle: a fetch_model stage refuses .bin weights by default, and a local model
#     folder with only pickle weights is refused, not loaded;
#  4. the HF token never reaches the run record, the cache, the HF cache or the output, on
#     success or on an authentication failure;
#  5. TLS verification is on: a self-signed hub is refused (exit 8, saying why and how to
#     trust a private CA), with no way to turn it off silently; with CURL_CA_BUNDLE naming
#     its certificate the same fetch works; a hook's qlora.http_post is verified too.
set -u
. "$(dirname "$0")/reliability/common.sh"
NGINX=${NGINX:-/usr/sbin/nginx}
cd "$W"
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy HF_HUB_CACHE HUGGINGFACE_HUB_CACHE \
      TRANSFORMERS_OFFLINE CURL_CA_BUNDLE REQUESTS_CA_BUNDLE SSL_CERT_FILE SSL_CERT_DIR
export no_proxy='*' HF_HOME=$W/hf

# ---------------------------------------------------------------- 1. the hook sandbox
cat > evil.lua <<'LUA'
-- tries what a hook must not do without the recipe's allowance; ctx.args.try picks what
function generate(ctx)
  local t, mark, victim = ctx.args.try, ctx.args.mark, ctx.args.victim
  if t == "os.execute" then os.execute("touch " .. mark)
  elseif t == "io.popen" then io.popen("touch " .. mark)
  elseif t == "io.open-w" then local f = assert(io.open(mark, "w")); f:write("x"); f:close()
  elseif t == "io.output" then io.output(mark); io.write("x"); io.close()
  elseif t == "os.remove" then assert(os.remove(victim))
  elseif t == "os.rename" then assert(os.rename(victim, mark))
  elseif t == "package.loadlib" then assert(package.loadlib("libc.so.6", "system"))("touch " .. mark)
  elseif t == "load-binary" then assert(load(string.dump(function() return 1 end), "x", "b"))()
  elseif t == "require-C" then require("ffi")
  elseif t == "debug" then debug.sethook(function() end, "l")
  elseif t == "os.exit" then os.exit(0)
  end
  coroutine.yield({instruction = "a", input = "b", output = "c"})
end
LUA
sandbox() { # TRY ALLOW
    cat > sb.yaml <<YAML
name: sandbox
seed: 1
device: cpu
hooks: {allow: [$2]}
stages:
  base: {kind: init_model, preset: tiny}
  data:
    kind: dataset
    model: base
    generator: evil.lua
    hook_args: {try: $1, mark: $W/MARK, victim: $W/victim}
YAML
    echo v > victim; rm -f MARK
    "$BIN" sb.yaml -q >sb.out 2>&1; rc=$?
}
for t in os.execute io.popen io.open-w io.output os.remove os.rename package.loadlib load-binary require-C debug os.exit; do
    sandbox "$t" ""
    check "sandbox: $t fails in a hook (rc $rc), nothing done" test $rc -ne 0 -a ! -e MARK -a -e victim
    check "sandbox: $t: the error names the hook's line" grep -q "evil.lua:[0-9]*: " sb.out
done
grep -q "hooks may write files only with \`allow: \[io\]\`" <(sandbox io.open-w ""; cat sb.out)
check "sandbox: a refused write says how to allow it" test $? -eq 0
sandbox io.open-w io
check "sandbox: allow: [io] grants file writes (rc $rc)" test $rc -eq 0 -a -e MARK
for t in os.execute io.popen package.loadlib; do
    sandbox "$t" io
    check "sandbox: allow: [io] still refuses $t" test $rc -ne 0 -a ! -e MARK
done

# ---------------------------------------------------------------- the local hub
[ -x "$NGINX" ] || { bad "no nginx at $NGINX (apt-get install nginx-light): the hub checks cannot run"; checks_done; exit 1; }
command -v openssl >/dev/null || { bad "no openssl program: the TLS checks cannot run"; checks_done; exit 1; }
TOKEN=hf_SecurityTestToken$(date +%N)XYZ
WWW=$W/www
mkdir -p "$WWW" logs tmp
"$BIN" init-model --out model --preset tiny --tokenizer byte --seed 5 >/dev/null 2>&1 || { bad "init-model failed"; checks_done; exit 1; }
commit_of() { printf '%s' "$1" | sha1sum | cut -c1-40; }
: > etags.map; : > commits.map
add_file() { # repo commit path srcfile
    local uri="/$1/resolve/$2/$3"
    mkdir -p "$(dirname "$WWW$uri")"; cp "$4" "$WWW$uri"
    echo "\"$uri\" \"\\\"$(git hash-object "$4")\\\"\";" >> etags.map
}
add_api() { # repo commit files...
    local repo=$1 commit=$2 sib="" x; shift 2
    for x in "$@"; do sib="$sib${sib:+,}{\"rfilename\":\"$x\"}"; done
    mkdir -p "$WWW/api/models/$repo/revision"
    echo "{\"id\":\"$repo\",\"sha\":\"$commit\",\"private\":false,\"siblings\":[$sib]}" > "$WWW/api/models/$repo/revision/main"
    cp "$WWW/api/models/$repo/revision/main" "$WWW/api/models/$repo/revision/$commit" # the hub answers for the commit too
}
MODEL_FILES=$(cd model && ls)
for r in private tiny; do
    c=$(commit_of $r)
    for f in $MODEL_FILES; do add_file org/$r "$c" "$f" "model/$f"; done
    add_api org/$r "$c" $MODEL_FILES
done
c=$(commit_of abs); add_file org/abs "$c" config.json model/config.json; add_api org/abs "$c" config.json "$W/escaped-abs.json"
c=$(commit_of dots); add_file org/dots "$c" config.json model/config.json; add_api org/dots "$c" config.json "sub/../../../../escaped-dots.json"
C_plant=$(commit_of plant); add_file org/plant "$C_plant" config.json model/config.json; add_file org/plant "$C_plant" sub/config.json model/config.json
add_api org/plant "$C_plant" config.json sub/config.json
c=$(commit_of badetag); add_file org/badetag "$c" config.json model/config.json; add_api org/badetag "$c" config.json
sed -i "\|/org/badetag/|d" etags.map
echo "\"/org/badetag/resolve/$c/config.json\" \"\\\"../../../../escaped-etag\\\"\";" >> etags.map
c=$(commit_of pickle); add_file org/pickle "$c" config.json model/config.json; add_file org/pickle "$c" pytorch_model.bin model/config.json
add_api org/pickle "$c" config.json pytorch_model.bin

openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1 || { bad "openssl could not make a certificate"; checks_done; exit 1; }
free_port() {
    local p
    for p in $(shuf -i 20000-60000 -n 50); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null || { echo $p; return; }; done
}
write_conf() {
cat > nginx.conf <<NGX
$( [ "$(id -u)" = 0 ] && echo "user $(id -un) $(id -gn);" )
worker_processes 1;
pid $W/nginx.pid;
error_log $W/logs/error.log warn;
events { worker_connections 64; }
http {
    client_body_temp_path $W/tmp/body; proxy_temp_path $W/tmp/proxy; fastcgi_temp_path $W/tmp/fcgi;
    uwsgi_temp_path $W/tmp/uwsgi; scgi_temp_path $W/tmp/scgi;
    default_type application/octet-stream;
    map_hash_bucket_size 256;
    etag off;
    log_format hdrs '\$server_port \$request_method \$uri \$status auth="\$http_authorization"';
    access_log $W/logs/access.log hdrs;
    map \$uri \$hub_etag { default ""; $(cat etags.map) }
    map \$uri \$hub_commit { default ""; "~^/[^/]+/[^/]+/resolve/(?<c>[0-9a-f]{40})/" \$c; }
    map \$http_authorization \$auth_ok { "Bearer $TOKEN" 1; default 0; }
    server {
        listen 127.0.0.1:$P1;
        listen 127.0.0.1:$P2 ssl;
        ssl_certificate $W/cert.pem;
        ssl_certificate_key $W/key.pem;
        root $WWW;
        location / { add_header X-Repo-Commit \$hub_commit always; add_header ETag \$hub_etag always; }
        location ^~ /api/models/org/private/ {
            add_header X-Error-Code RepoNotFound always;
            if (\$auth_ok = 0) { return 401; }
        }
        location ^~ /org/private/resolve/ {
            add_header X-Repo-Commit \$hub_commit always; add_header ETag \$hub_etag always;
            if (\$auth_ok = 0) { return 401; }
        }
        location = /hook { return 200 "ok"; }
    }
}
NGX
}
started=0
for _ in 1 2 3 4 5; do # ports picked free may be taken by the time nginx binds: try others
    P1=$(free_port); P2=$(free_port)
    [ "$P1" = "$P2" ] && continue
    write_conf
    if "$NGINX" -p "$W" -c "$W/nginx.conf" -e "$W/logs/error.log" 2>nginx.err; then started=1; break; fi
done
[ $started = 1 ] || { cat nginx.err logs/error.log; bad "nginx did not start"; checks_done; exit 1; }
rel_cleanup_extra='[ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null; sleep 0.2'
for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$P1) 2>/dev/null && break; sleep 0.1; done
export HF_ENDPOINT=http://127.0.0.1:$P1
HUB=$HF_HOME/hub

# ---------------------------------------------------------------- 2. escaping names
fetch() { "$BIN" fetch "$@" >f.out 2>&1; rc=$?; }
fetch org/abs --include '*'
check "hub: an absolute path in the listing is refused (rc $rc)" test $rc -eq 4 && check "hub: it says unsafe path" grep -q "unsafe path '$W/escaped-abs.json'" f.out
fetch org/dots --include '*'
check "hub: a nested '..' in the listing is refused (rc $rc)" test $rc -eq 4 && check "hub: it says unsafe path" grep -q "unsafe path 'sub/../" f.out
mkdir -p outside "$HUB/models--org--plant/snapshots/$C_plant"
ln -s "$W/outside" "$HUB/models--org--plant/snapshots/$C_plant/sub"
fetch org/plant --include '*'
check "hub: a symlinked folder planted in the snapshot is not written through (rc $rc)" test $rc -ne 0 -a -z "$(ls -A outside)"
check "hub: it says why" grep -q "is not a plain folder (a symlink?): refusing to write 'sub/config.json'" f.out
fetch org/badetag
check "hub: an ETag that is a path is refused (rc $rc)" test $rc -ne 0 -a -z "$(find "$W" -name 'escaped-*')"
check "hub: nothing escaped" test -z "$(find "$W" -name 'escaped-*')"

# a cached manifest naming '..' or an absolute path: refused (recomputed), never followed
cat > m.yaml <<'YAML'
name: manifest
stages:
  base: {kind: init_model, preset: tiny, hidden: 64}
YAML
export QLORA_CACHE=$W/cache-m # a cache of its own: art() below finds the one artifact
"$BIN" m.yaml -q
man=$(art cache-m init_model)manifest.json
echo secret > outside/victim.txt
for p in "../../../../outside/victim.txt" "$W/outside/victim.txt"; do
    cp "$man" man.bak
    sed -i "0,/\"path\": \"[^\"]*\"/s||\"path\": \"$(printf '%s' "$p" | sed 's/[\/&]/\\&/g')\"|" "$man"
    out=$("$BIN" plan m.yaml 2>&1)
    check "manifest naming '$p': refused before use" grep -q "manifest lists an unsafe path" <<<"$out"
    "$BIN" m.yaml -q; check "manifest naming '$p': recomputed, outside file untouched" test $? -eq 0 -a "$(cat outside/victim.txt)" = secret
    man=$(art cache-m init_model)manifest.json
done
# a symlink inside an artifact, and a fetch_model link: gc removes the link, not what it points at
ln -s "$W/outside" "$(art cache-m init_model)planted"
cat > p.yaml <<YAML
name: linked
stages:
  m: {kind: fetch_model, source: path, path: $W/model}
YAML
"$BIN" p.yaml -q
"$BIN" cache gc --keep-last 0 >gc.out
check "cache gc: the artifacts are gone" test -z "$(find cache-m/artifacts -mindepth 2)"
[ -z "$(find cache-m/artifacts -mindepth 2)" ] || cat gc.out
export QLORA_CACHE=$W/cache
check "cache gc: nothing outside the cache removed" test -f outside/victim.txt -a -f model/model.safetensors

# ---------------------------------------------------------------- 3. no pickle
cat > k.yaml <<'YAML'
name: pickle
stages:
  m:
    kind: fetch_model
    repo: org/pickle
  nf4: {kind: quantize_nf4, model: m}
YAML
"$BIN" k.yaml -q >k.out 2>&1; rc=$?
check "pickle: a hub repo with only .bin weights is refused (rc $rc)" test $rc -eq 4 && check "pickle: it says so" grep -q "no .safetensors weights" k.out
sed -i 's|repo: org/pickle|repo: org/pickle\n    include: ["*.bin", "config.json"]|' k.yaml
"$BIN" k.yaml -q >k.out 2>&1; rc=$?
check "pickle: include: ['*.bin'] is refused without allow_pickle (rc $rc)" test $rc -eq 4 && check "pickle: it says why" grep -q "can run arbitrary code" k.out
check "pickle: no .bin downloaded" test -z "$(find "$HUB" -name '*.bin')"
mkdir pk; cp model/config.json model/tokenizer*.json pk/; cp model/model.safetensors pk/pytorch_model.bin
cat > k2.yaml <<YAML
name: pickle2
stages:
  m: {kind: fetch_model, source: path, path: $W/pk}
  nf4: {kind: quantize_nf4, model: m}
YAML
"$BIN" k2.yaml -q >k.out 2>&1; rc=$?
check "pickle: a local folder with only pytorch_model.bin is refused (rc $rc)" test $rc -eq 4
echo "     message: $(head -n1 k.out)"

# ---------------------------------------------------------------- 4. the token
cat > t.yaml <<'YAML'
name: token
seed: 2
device: cpu
stages:
  m: {kind: fetch_model, repo: org/private}
  nf4: {kind: quantize_nf4, model: m}
  lora: {kind: attach_lora, model: nf4}
YAML
HF_TOKEN=$TOKEN "$BIN" t.yaml --json >t.out 2>&1; rc=$?
check "token: a private repo fetched with HF_TOKEN in a recipe (rc $rc)" test $rc -eq 0
check "token: the hub got it" grep -q "auth=\"Bearer $TOKEN\"" logs/access.log
HF_TOKEN=${TOKEN}x "$BIN" t.yaml --force m >t2.out 2>&1; rc=$?
check "token: a wrong token fails with exit 8" test $rc -eq 8
leaks=$(grep -rl -- "$TOKEN" runs cache "$HF_HOME" t.out t2.out 2>/dev/null)
check "token: not in run records, events, logs, manifests, the caches or the output" test -z "$leaks"
[ -z "$leaks" ] || echo "     found in: $leaks"

# ---------------------------------------------------------------- 5. TLS
export HF_ENDPOINT=https://127.0.0.1:$P2
fetch org/tiny
check "tls: a self-signed hub is refused (exit 8, got $rc)" test $rc -eq 8
check "tls: it says the certificate could not be verified and how to trust a CA" grep -q "TLS certificate of https://127.0.0.1:$P2 could not be verified.*CURL_CA_BUNDLE" f.out
check "tls: no file fetched" test ! -e "$HUB/models--org--tiny/snapshots"
CURL_CA_BUNDLE= fetch org/tiny
check "tls: an empty CURL_CA_BUNDLE does not turn verification off (rc $rc)" test $rc -eq 8
HF_HUB_DISABLE_SSL_VERIFICATION=1 CURL_INSECURE=1 PYTHONHTTPSVERIFY=0 fetch org/tiny
check "tls: no environment variable turns it off (rc $rc)" test $rc -eq 8
CURL_CA_BUNDLE=$W/cert.pem fetch org/tiny
check "tls: with CURL_CA_BUNDLE naming the certificate, the fetch works (rc $rc)" test $rc -eq 0
# a hook's http_post: refused certificate (the hook gets nil + message; the request never arrives)
cat > post.lua <<'LUA'
local qlora = require "qlora"
function on_run_end(summary)
  local status, msg = qlora.http_post("URL", "{}")
  if status then error("posted: " .. tostring(status)) end
  error("refused: " .. tostring(msg))
end
LUA
sed "s|^name: manifest|name: posting\nhooks: {on_run_end: post.lua, allow: [http]}|" m.yaml > h.yaml
n0=$(grep -c "POST /hook" logs/access.log)
sed -i "s|URL|https://127.0.0.1:$P2/hook|" post.lua
"$BIN" h.yaml >h.out 2>&1
check "tls: a hook's https post to a self-signed server is refused" grep -q "on_run_end hook: .*refused: .*\(certificate\|SSL\)" h.out
check "tls: the request never reached the server" test "$(grep -c "POST /hook" logs/access.log)" -eq "$n0"
checks_done
