# hub_server.sh: a hub-like HTTP server on loopback for script tests (sourced, not run).
#
# nginx (Debian's /usr/sbin/nginx, its own prefix and config in a temp dir) serves static files
# at the hub's paths with the hub's headers:
#   /api/{models,datasets}/ORG/NAME/revision/REV  the listing: {"sha": commit, "siblings": [...]}
#   /[datasets/]ORG/NAME/resolve/REV/PATH          the file, with X-Repo-Commit, ETag (git SHA-1)
#                                                  or X-Linked-Etag + X-Linked-Size (LFS: SHA-256)
# A 404 under resolve carries X-Error-Code EntryNotFound, one under /api/ RepoNotFound.
#
#   hub_init                              sets HUB_T (temp dir), HUB_WWW
#   hub_add_file PREFIX REPO REV PATH SRC LFS(0|1)   serve SRC as PATH (PREFIX: "" or datasets/)
#   hub_add_api KIND REPO REV COMMIT FILES...        the listing (KIND: models or datasets)
#   hub_branch PREFIX REPO BRANCH COMMIT             resolve/BRANCH/... answers with COMMIT
#   hub_start [HUB_LOCATIONS] [SERVERS] [HTTP]       nginx.conf text spliced into the hub's server
#                                                    block, after it, and into http{}; sets HUB_PORT
#                                                    and HUB_ENDPOINT
#   hub_stop                                         (also on EXIT through hub_init's trap)
# Inside spliced text, $HUB_T/hubhdrs.conf holds the hub's headers for an `include`.
HUB_NGINX=${NGINX:-/usr/sbin/nginx}

hub_commit_of() { printf '%s' "$1" | sha1sum | cut -c1-40; }

HUB_USED_PORTS=" "
hub_free_port() { # sets HUB_FREE_PORT (not a subshell: it remembers the ports it gave out)
    local p
    for p in $(shuf -i 20000-32000 -n 50); do # below the ephemeral range (32768-)
        case "$HUB_USED_PORTS" in *" $p "*) continue ;; esac
        (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && continue
        HUB_USED_PORTS="$HUB_USED_PORTS$p "
        HUB_FREE_PORT=$p
        return 0
    done
    return 1
}

hub_init() {
    HUB_T=$(mktemp -d /tmp/qlora-hub.XXXXXX)
    HUB_WWW=$HUB_T/www
    mkdir -p "$HUB_WWW" "$HUB_T/logs" "$HUB_T/tmp"
    : > "$HUB_T/map.etag"; : > "$HUB_T/map.letag"; : > "$HUB_T/map.lsize"; : > "$HUB_T/map.commit"
    trap hub_stop EXIT
    unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy
    export no_proxy='*'
}

hub_stop() {
    if [ -n "${HUB_T:-}" ] && [ -d "$HUB_T" ]; then
        [ -f "$HUB_T/nginx.pid" ] && kill "$(cat "$HUB_T/nginx.pid")" 2>/dev/null
        sleep 0.2
        local m # a test that mounted something below HUB_T and stopped early
        for m in $(awk -v t="$HUB_T/" 'index($2, t) == 1 {print $2}' /proc/mounts 2> /dev/null); do umount "$m"; done
        rm -rf "$HUB_T"
    fi
}

hub_add_file() { # prefix repo rev path src lfs
    local uri="/$1$2/resolve/$3/$4" f="$HUB_WWW/$1$2/resolve/$3/$4"
    mkdir -p "$(dirname "$f")"; cp "$5" "$f"
    if [ "$6" = 1 ]; then
        echo "\"$uri\" \"\\\"$(sha256sum < "$5" | cut -c1-64)\\\"\";" >> "$HUB_T/map.letag"
        echo "\"$uri\" $(stat -c %s "$5");" >> "$HUB_T/map.lsize"
    else
        echo "\"$uri\" \"\\\"$(git hash-object "$5")\\\"\";" >> "$HUB_T/map.etag"
    fi
}

hub_add_api() { # kind repo rev commit files...
    local kind=$1 repo=$2 rev=$3 commit=$4; shift 4
    local f="$HUB_WWW/api/$kind/$repo/revision/$rev" sib="" x
    for x in "$@"; do sib="$sib${sib:+,}{\"rfilename\":\"$x\"}"; done
    mkdir -p "$(dirname "$f")"
    echo "{\"id\":\"$repo\",\"sha\":\"$commit\",\"private\":false,\"siblings\":[$sib]}" > "$f"
    # the hub answers for the commit itself too (a download pinned to it, as fetch_model's is)
    [ -e "$HUB_WWW/api/$kind/$repo/revision/$commit" ] || cp "$f" "$HUB_WWW/api/$kind/$repo/revision/$commit"
}

hub_branch() { echo "~^/$1$2/resolve/$3/ $4;" >> "$HUB_T/map.commit"; }

hub_start() {
    [ -n "${HUB_PORT:-}" ] || { hub_free_port; HUB_PORT=$HUB_FREE_PORT; } # a caller may pick it first
    HUB_ENDPOINT=http://127.0.0.1:$HUB_PORT
    cat > "$HUB_T/hubhdrs.conf" <<EOF
etag off;
add_header X-Repo-Commit \$hub_commit always;
add_header ETag \$hub_etag always;
add_header X-Linked-Etag \$hub_linked_etag always;
add_header X-Linked-Size \$hub_linked_size always;
add_header X-Error-Code \$hub_entry_err always;
EOF
    cat > "$HUB_T/nginx.conf" <<EOF
$( [ "$(id -u)" = 0 ] && echo "user $(id -un) $(id -gn);" )
worker_processes 1;
pid $HUB_T/nginx.pid;
error_log $HUB_T/logs/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $HUB_T/tmp/body; proxy_temp_path $HUB_T/tmp/proxy; fastcgi_temp_path $HUB_T/tmp/fcgi;
    uwsgi_temp_path $HUB_T/tmp/uwsgi; scgi_temp_path $HUB_T/tmp/scgi;
    default_type application/octet-stream;
    map_hash_bucket_size 256;
    sendfile on;
    log_format hdrs '\$server_port \$request_method \$uri \$status auth="\$http_authorization" range="\$http_range"';
    map \$uri \$hub_etag { default ""; $(cat "$HUB_T/map.etag") }
    map \$uri \$hub_linked_etag { default ""; $(cat "$HUB_T/map.letag") }
    map \$uri \$hub_linked_size { default ""; $(cat "$HUB_T/map.lsize") }
    map \$uri \$hub_commit { default ""; $(cat "$HUB_T/map.commit") "~^/(datasets/)?[^/]+/[^/]+/resolve/(?<c>[0-9a-f]{40})/" \$c; }
    map \$status \$hub_entry_err { 404 EntryNotFound; default ""; }
    map \$status \$api_err { 404 RepoNotFound; default ""; }
    ${3:-}
    server {
        listen 127.0.0.1:$HUB_PORT;
        root $HUB_WWW;
        access_log $HUB_T/logs/hub.log hdrs;
        location /api/ { add_header X-Error-Code \$api_err always; }
        location ~ ^/(datasets/)?[^/]+/[^/]+/resolve/ { include $HUB_T/hubhdrs.conf; }
        ${1:-}
    }
    ${2:-}
}
EOF
    "$HUB_NGINX" -p "$HUB_T" -c "$HUB_T/nginx.conf" -e "$HUB_T/logs/error.log" || { cat "$HUB_T/logs/error.log"; return 1; }
    local _
    for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$HUB_PORT) 2>/dev/null && return 0; sleep 0.1; done
    return 1
}
