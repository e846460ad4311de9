#!/usr/bin/env bash
# bench/hub/bench.sh: download throughput of `qlora-run fetch` against the curl command line,
# one large LFS-style file from nginx on loopback (the same server, file and disk for both).
#
#   bench/hub/bench.sh [SIZE_MB=2048] [ROUNDS=3]      (QLORA_BIN: the program, default build/qlora-run;
#                                                     QLORA_HUB_HASH=thread|inline forces the hashing mode)
#
# Our client does the whole hub protocol: API listing, HEAD, GET into blobs/<sha>.incomplete,
# SHA-256 of every byte (streamed while it arrives), rename, snapshot symlink. curl only
# writes the bytes. Both write to the same file system; the source file is in the page cache.
set -eu
SIZE_MB=${1:-2048}; ROUNDS=${2:-3}
BIN=$(realpath "${QLORA_BIN:-build/qlora-run}")
NGINX=${NGINX:-/usr/sbin/nginx}
T=$(mktemp -d "${BENCH_DIR:-/tmp}/qlora-hub-bench.XXXXXX")
trap '[ -f "$T/nginx.pid" ] && kill "$(cat "$T/nginx.pid")"; rm -rf "$T"' EXIT
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY HF_TOKEN; export no_proxy='*'

COMMIT=$(printf bench | sha1sum | cut -c1-40)
D=$T/www/org/big/resolve/$COMMIT; mkdir -p "$D" "$T/www/api/models/org/big/revision" "$T/logs" "$T/tmp"
echo '{"model_type":"llama"}' > "$D/config.json"
echo "generating $SIZE_MB MB of random bytes..." >&2
head -c $((SIZE_MB * 1048576)) /dev/urandom > "$D/big.safetensors"
SHA=$(sha256sum < "$D/big.safetensors" | cut -c1-64)
echo "{\"sha\":\"$COMMIT\",\"siblings\":[{\"rfilename\":\"config.json\"},{\"rfilename\":\"big.safetensors\"}]}" \
    > "$T/www/api/models/org/big/revision/main"
for p in $(shuf -i 20000-32000 -n 50); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null || { PORT=$p; break; }; done
cat > "$T/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user $(id -un) $(id -gn);" )
worker_processes 1;
pid $T/nginx.pid;
error_log $T/logs/error.log warn;
events { worker_connections 64; }
http {
    access_log off; sendfile on; tcp_nopush on;
    client_body_temp_path $T/tmp/b; proxy_temp_path $T/tmp/p; fastcgi_temp_path $T/tmp/f; uwsgi_temp_path $T/tmp/u; scgi_temp_path $T/tmp/s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$PORT; root $T/www;
        location /org/big/resolve/ {
            etag off;
            add_header X-Repo-Commit $COMMIT always;
            add_header X-Linked-Etag "\"$SHA\"" always;
            add_header X-Linked-Size $((SIZE_MB * 1048576)) always;
        }
    }
}
CONF
"$NGINX" -p "$T" -c "$T/nginx.conf" -e "$T/logs/error.log"
sleep 0.3
URL=http://127.0.0.1:$PORT/org/big/resolve/$COMMIT/big.safetensors
cat "$D/big.safetensors" > /dev/null # into the page cache

now() { date +%s.%N; }
mbps() { awk "BEGIN{printf \"%.1f\", $SIZE_MB * 1.048576 / ($2 - $1)}"; }
echo "# $(date -u +%FT%TZ) commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null) size ${SIZE_MB} MB," \
     "hash ${QLORA_HUB_HASH:-auto}, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "round curl_MBps qlora_MBps ratio curl_cpu_s qlora_cpu_s"
TF="%U %S"
run_curl() {
    sync
    t0=$(now); /usr/bin/time -o "$T/cpu.curl" -f "$TF" curl -s -o "$T/curl.out" "$URL"; t1=$(now)
    cmp -s "$T/curl.out" "$D/big.safetensors" || { echo "curl copy differs"; exit 1; }
    rm -f "$T/curl.out"
}
run_qlora() {
    sync
    t2=$(now)
    HF_ENDPOINT=http://127.0.0.1:$PORT HF_HOME=$T/home /usr/bin/time -o "$T/cpu.q" -f "$TF" "$BIN" fetch -q org/big --include big.safetensors > /dev/null
    t3=$(now)
    f=$T/home/hub/models--org--big/snapshots/$COMMIT/big.safetensors
    [ "$(stat -L -c %s "$f")" = $((SIZE_MB * 1048576)) ] || { echo "qlora copy incomplete"; exit 1; }
    cmp -s "$f" "$D/big.safetensors" || { echo "qlora copy differs"; exit 1; }
    rm -rf "$T/home"
}
# an untimed round first: the first client after the 2 GB source was generated paid several
# times the CPU for its page-cache writes (curl: 6.3-6.9 s against ~2 s in later rounds)
run_curl; run_qlora
for r in $(seq "$ROUNDS"); do
    # odd rounds curl first, even rounds ours first: neither always follows the other's deletion
    if [ $((r % 2)) = 1 ]; then run_curl; run_qlora; else run_qlora; run_curl; fi
    c=$(mbps "$t0" "$t1"); q=$(mbps "$t2" "$t3")
    echo "$r $c $q $(awk "BEGIN{printf \"%.2f\", $q / $c}") $(awk '{print $1+$2}' "$T/cpu.curl") $(awk '{print $1+$2}' "$T/cpu.q")" | tee -a "$T/rounds"
done
# medians: on a VM that hands free memory back to its host, one round's page-cache writes can
# cost several times another's, for curl and for us alike
med() { cut -d' ' -f"$1" "$T/rounds" | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
echo "median curl $(med 2) MB/s, qlora-run $(med 3) MB/s, ratio $(med 4)"
