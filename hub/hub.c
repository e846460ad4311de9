/* hub.c: the Hugging Face Hub client (see hub.h for the protocol and the cache layout).
 *
 * On the transfer engine of net/transfer.h (parallel ranged downloads, retries, checksums while
 * the bytes arrive): small parsers (exposed for tests and fuzzing), what a HEAD on resolve says
 * about a file, the hub's error messages, the cache layout (blobs, snapshot links, refs,
 * .no_exist) and the calls that resolve, list, filter and download a snapshot, one file or a
 * plain URL. */
#define _GNU_SOURCE
#include "hub/hub.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"
#include "core/json_in.h"
#include "core/str.h"
#include "net/http.h"
#include "net/transfer.h"

#ifndef QLORA_VERSION
#define QLORA_VERSION "dev"
#endif


/* ---------- small helpers ---------- */

static bool is_hex(const char *s, size_t n) {
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i])) return false;
    return true;
}

static const char *repo_prefix(hub_repo_type t) {
    return t == HUB_REPO_DATASET ? "datasets/" : t == HUB_REPO_SPACE ? "spaces/" : "";
}
static const char *repo_noun(hub_repo_type t) {
    return t == HUB_REPO_DATASET ? "dataset" : t == HUB_REPO_SPACE ? "space" : "model";
}

/* ---------- configuration ---------- */

static char *env_dup(const char *name) {
    const char *v = getenv(name);
    return v && *v ? strdup(v) : NULL;
}

static bool env_true(const char *name) {
    const char *v = getenv(name);
    if (!v) return false;
    return !strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on");
}

int hub_config_from_env(hub_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->endpoint = env_dup("HF_ENDPOINT");
    if (!cfg->endpoint) cfg->endpoint = strdup("https://huggingface.co");
    size_t n = strlen(cfg->endpoint);
    while (n > 0 && cfg->endpoint[n - 1] == '/') cfg->endpoint[--n] = 0;
    char *origin = net_url_origin(cfg->endpoint);
    if (!origin) {
        hub_config_free(cfg);
        return err_set(ERR_USAGE, "HF_ENDPOINT is not a URL: '%s'", getenv("HF_ENDPOINT"));
    }
    free(origin);

    cfg->home = env_dup("HF_HOME");
    if (!cfg->home) {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg) cfg->home = xasprintf("%s/huggingface", xdg);
        else cfg->home = xasprintf("%s/.cache/huggingface", home && *home ? home : ".");
    }
    cfg->cache_dir = env_dup("HF_HUB_CACHE");
    if (!cfg->cache_dir) cfg->cache_dir = env_dup("HUGGINGFACE_HUB_CACHE");
    if (!cfg->cache_dir) cfg->cache_dir = xasprintf("%s/hub", cfg->home);
    cfg->url_cache = xasprintf("%s/qlora/urls", cfg->home);

    cfg->token = env_dup("HF_TOKEN");
    if (!cfg->token) cfg->token = env_dup("HUGGING_FACE_HUB_TOKEN");
    if (!cfg->token) {
        char *path = xasprintf("%s/token", cfg->home), *buf = NULL;
        size_t len = 0;
        if (fs_exists(path) && !fs_read_all(path, &buf, &len)) {
            while (len > 0 && isspace((unsigned char)buf[len - 1])) buf[--len] = 0;
            if (len > 0) cfg->token = buf;
            else free(buf);
        }
        err_clear();
        free(path);
    }
    if (cfg->token) { /* a token with a newline or control byte would corrupt the header */
        for (char *p = cfg->token; *p; p++)
            if ((unsigned char)*p < 0x21 || *p == 0x7f) {
                hub_config_free(cfg);
                return err_set(ERR_USAGE, "the HF token contains spaces or control characters: check HF_TOKEN "
                                          "or $HF_HOME/token");
            }
    }
    cfg->ca_file = env_dup("CURL_CA_BUNDLE");
    if (!cfg->ca_file) cfg->ca_file = env_dup("REQUESTS_CA_BUNDLE");
    cfg->offline = env_true("HF_HUB_OFFLINE") || env_true("TRANSFORMERS_OFFLINE");
    cfg->parallel = 8;
    cfg->max_retries = 5;
    cfg->retry_base_s = 1.0;
    cfg->timeout_s = 10;
    const char *t = getenv("HF_HUB_DOWNLOAD_TIMEOUT");
    if (t && atol(t) > 0) cfg->timeout_s = atol(t);
    return 0;
}

void hub_config_free(hub_config *cfg) {
    if (!cfg) return;
    if (cfg->token) { /* do not leave the secret in freed memory */
        volatile char *p = cfg->token;
        while (*p) *p++ = 0;
    }
    free(cfg->endpoint);
    free(cfg->token);
    free(cfg->home);
    free(cfg->cache_dir);
    free(cfg->url_cache);
    free(cfg->ca_file);
    memset(cfg, 0, sizeof *cfg);
}

/* ---------- parsers ---------- */

const char *const hub_default_include[] = {
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", NULL};

bool hub_repo_id_valid(const char *repo) {
    /* "name" or "org/name": letters, digits, '-', '_', '.'; no "--", no leading/trailing '.' or '-' */
    if (!repo || !*repo || strlen(repo) > 200) return false;
    int slashes = 0;
    const char *part = repo;
    for (const char *p = repo;; p++) {
        if (*p == '/' || !*p) {
            size_t n = (size_t)(p - part);
            if (n == 0 || part[0] == '.' || part[0] == '-' || part[n - 1] == '.' || part[n - 1] == '-') return false;
            if (!*p) break;
            if (++slashes > 1) return false;
            part = p + 1;
            continue;
        }
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') return false;
        if ((p[0] == '-' && p[1] == '-') || (p[0] == '.' && p[1] == '.')) return false;
    }
    return true;
}

int hub_parse_repo_spec(const char *spec, char **repo, char **rev) {
    *repo = *rev = NULL;
    const char *at = strchr(spec, '@');
    size_t n = at ? (size_t)(at - spec) : strlen(spec);
    char *r = strndup(spec, n);
    if (!hub_repo_id_valid(r)) {
        free(r);
        return err_set(ERR_USAGE, "not a repo id: '%s' (expected org/name or org/name@revision)", spec);
    }
    if (at && !at[1]) {
        free(r);
        return err_set(ERR_USAGE, "empty revision after '@' in '%s'", spec);
    }
    *repo = r;
    *rev = at ? strdup(at + 1) : NULL;
    return 0;
}

char *hub_repo_folder(hub_repo_type type, const char *repo) {
    const char *kind = type == HUB_REPO_DATASET ? "datasets" : type == HUB_REPO_SPACE ? "spaces" : "models";
    size_t n = strlen(kind) + 2 + strlen(repo) * 2 + 1;
    char *out = malloc(n), *o = out;
    o += sprintf(o, "%s--", kind);
    for (const char *p = repo; *p; p++) {
        if (*p == '/') { *o++ = '-'; *o++ = '-'; }
        else *o++ = *p;
    }
    *o = 0;
    return out;
}

char *hub_url_quote(const char *s, bool keep_slash) {
    static const char hex[] = "0123456789ABCDEF";
    char *out = malloc(strlen(s) * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~' || (keep_slash && *p == '/')) *o++ = (char)*p;
        else { *o++ = '%'; *o++ = hex[*p >> 4]; *o++ = hex[*p & 15]; }
    }
    *o = 0;
    return out;
}

bool hub_etag_normalize(const char *raw, char *out, size_t cap) {
    if (!raw) return false;
    while (*raw == ' ') raw++;
    if (!strncmp(raw, "W/", 2)) raw += 2;
    size_t n = strlen(raw);
    while (n > 0 && (raw[n - 1] == ' ' || raw[n - 1] == '\r' || raw[n - 1] == '\n')) n--;
    if (n >= 2 && raw[0] == '"' && raw[n - 1] == '"') { raw++; n -= 2; }
    if (n == 0 || n + 1 > cap || n > 128 || raw[0] == '.') return false;
    for (size_t i = 0; i < n; i++) /* the ETag becomes a file name under blobs/ */
        if (!isalnum((unsigned char)raw[i]) && raw[i] != '-' && raw[i] != '_' && raw[i] != '.') return false;
    memcpy(out, raw, n);
    out[n] = 0;
    return true;
}

bool hub_path_safe(const char *rel) {
    if (!rel || strlen(rel) > 1024 || !fs_rel_path_safe(rel)) return false;
    for (const unsigned char *p = (const unsigned char *)rel; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '\\') return false;
    size_t n = strlen(rel);
    return rel[n - 1] != '/';
}

bool hub_pattern_match(const char *pattern, const char *path) {
    size_t n = strlen(pattern);
    if (n > 0 && pattern[n - 1] == '/') {
        char *p = xasprintf("%s*", pattern);
        bool m = fnmatch(p, path, 0) == 0;
        free(p);
        return m;
    }
    return fnmatch(pattern, path, 0) == 0;
}

bool hub_path_is_pickle(const char *path) {
    static const char *const ext[] = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", NULL};
    size_t n = strlen(path);
    for (int i = 0; ext[i]; i++) {
        size_t e = strlen(ext[i]);
        if (n > e && !strcasecmp(path + n - e, ext[i])) return true;
    }
    return false;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int hub_listing_parse(const char *json, size_t len, char **commit, char ***files, int *n_files) {
    *commit = NULL;
    *files = NULL;
    *n_files = 0;
    json_t *root = NULL;
    if (json_in_loadb(json, len, 0, "the hub's answer", &root)) return err_code();
    int rc = 0;
    const char *sha = json_string_value(json_object_get(root, "sha"));
    json_t *sib = json_object_get(root, "siblings");
    if (!sha || !is_hex(sha, 40)) {
        rc = err_set(ERR_DATA, "the hub's answer has no commit ('sha' of 40 hex digits)");
        goto done;
    }
    if (!json_is_array(sib)) {
        rc = err_set(ERR_DATA, "the hub's answer has no file list ('siblings')");
        goto done;
    }
    size_t n = json_array_size(sib);
    char **list = calloc(n + 1, sizeof *list);
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = json_string_value(json_object_get(json_array_get(sib, i), "rfilename"));
        if (!name) {
            rc = err_set(ERR_DATA, "the hub's file list: entry %zu has no 'rfilename'", i);
            break;
        }
        if (!hub_path_safe(name)) {
            char clean[256];
            net_clean_text(clean, sizeof clean, name);
            rc = err_set(ERR_DATA, "the hub's file list names an unsafe path '%s' (absolute, '..' or "
                                   "control characters): refusing to write it", clean);
            break;
        }
        list[k++] = strdup(name);
    }
    if (rc) {
        for (int i = 0; i < k; i++) free(list[i]);
        free(list);
        goto done;
    }
    qsort(list, (size_t)k, sizeof *list, cmp_str);
    *commit = strdup(sha);
    *files = list;
    *n_files = k;
done:
    json_decref(root);
    return rc;
}

char *hub_blob_link_target(const char *rel_path, const char *etag) {
    int depth = 0;
    for (const char *p = rel_path; *p; p++)
        if (*p == '/') depth++;
    size_t n = (size_t)(depth + 2) * 3 + strlen("blobs/") + strlen(etag) + 1;
    char *out = malloc(n), *o = out;
    for (int i = 0; i < depth + 2; i++) o += sprintf(o, "../");
    sprintf(o, "blobs/%s", etag);
    return out;
}

/* ---------- what a HEAD says ---------- */

/* What a HEAD on resolve says about a file (docs/hub-protocol.md): all three are required. */
static int meta_from_headers(const net_headers *h, hub_file_meta *m) {
    memset(m, 0, sizeof *m);
    m->status = h->status;
    const char *commit = net_headers_get(h, "x-repo-commit"), *linked_etag = net_headers_get(h, "x-linked-etag");
    const char *raw = linked_etag ? linked_etag : h->etag;
    int64_t linked_size = net_headers_size(h, "x-linked-size");
    if (!commit || !is_hex(commit, 40))
        return err_set(ERR_DATA, "no commit in the answer (X-Repo-Commit): is HF_ENDPOINT a hub?");
    memcpy(m->commit, commit, 41);
    if (!raw || !hub_etag_normalize(raw, m->etag, sizeof m->etag))
        return err_set(ERR_DATA, "no usable ETag in the answer");
    m->size = linked_size >= 0 ? linked_size : (h->status / 100 == 3 ? -1 : h->content_length);
    if (m->size < 0) return err_set(ERR_DATA, "no file size in the answer (X-Linked-Size or Content-Length)");
    return 0;
}

int hub_file_meta_parse(const char *raw, size_t len, hub_file_meta *m) {
    net_headers h;
    net_headers_init(&h);
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(raw + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (raw + i)) + 1 : len - i;
        net_headers_line(&h, raw + i, n);
        i += n;
    }
    int rc = meta_from_headers(&h, m);
    net_headers_free(&h);
    return rc;
}

/* ---------- messages ---------- */

typedef struct err_subject {
    const hub_config *cfg;
    hub_repo_type type;
    const char *repo, *revision, *file; /* any may be NULL */
} err_subject;

static int http_error(const err_subject *s, const net_headers *h, const char *url) {
    char code[64] = "", msg[300] = "", what[700];
    net_clean_text(code, sizeof code, net_headers_get(h, "x-error-code"));
    net_clean_text(msg, sizeof msg, net_headers_get(h, "x-error-message"));
    const char *noun = repo_noun(s->type);
    if (s->repo && s->file) snprintf(what, sizeof what, "'%s' in %s '%s'", s->file, noun, s->repo);
    else if (s->repo) snprintf(what, sizeof what, "%s '%s'", noun, s->repo);
    else snprintf(what, sizeof what, "'%s'", url);
    const char *tok = s->cfg->token ? "the token in use has no access to it"
                                    : "no token is set (HF_TOKEN or $HF_HOME/token)";
    char extra[340] = "";
    if (*msg) snprintf(extra, sizeof extra, " (hub: %s)", msg);
    long st = h->status;
    if (s->repo && !strcmp(code, "GatedRepo"))
        return err_set(ERR_NETWORK, "%s '%s' is gated: accept its licence on %s/%s%s while logged in, then set "
                                    "HF_TOKEN to a read token of that account; %s%s",
                       noun, s->repo, s->cfg->endpoint, repo_prefix(s->type), s->repo, tok, extra);
    if (s->repo && (!strcmp(code, "RepoNotFound") || (st == 401 && !*code)))
        return err_set(ERR_NETWORK, "%s %s '%s' not found on %s, or it is private: check the name; for a private "
                                    "repo %s%s", noun, s->repo[0] ? "repo" : "", s->repo, s->cfg->endpoint, tok, extra);
    if (s->repo && !strcmp(code, "RevisionNotFound"))
        return err_set(ERR_NETWORK, "revision '%s' not found in %s '%s': check the branch, tag or commit%s",
                       s->revision ? s->revision : "main", noun, s->repo, extra);
    if (s->repo && s->file && (!strcmp(code, "EntryNotFound") || st == 404))
        return err_set(ERR_NETWORK, "%s not found at revision '%s'%s", what, s->revision ? s->revision : "main", extra);
    if (st == 401)
        return err_set(ERR_NETWORK, "%s: authentication required (HTTP 401): %s%s", what, tok, extra);
    if (st == 403)
        return err_set(ERR_NETWORK, "%s: access forbidden (HTTP 403): %s%s", what, tok, extra);
    if (st == 404) return err_set(ERR_NETWORK, "%s not found (HTTP 404)%s", what, extra);
    if (st == 429) return err_set(ERR_NETWORK, "%s: still rate limited (HTTP 429) after %d retries: try later%s",
                                  what, s->cfg->max_retries, extra);
    return err_set(ERR_NETWORK, "%s: the server answered HTTP %ld%s", what, st, extra);
}

/* relative symlink snapshots/<commit>/<rel> -> ../../blobs/<etag>, parents checked to be real
 * directories inside the snapshot (a symlinked folder could point anywhere) */
static int link_snapshot(const char *root, const char *rel, const char *etag) {
    int rc = fs_mkdir_p(root);
    if (rc) return rc;
    char *dir = strdup(root);
    const char *p = rel;
    for (const char *slash; (slash = strchr(p, '/'));) {
        char *part = strndup(p, (size_t)(slash - p));
        char *next = fs_join(dir, part);
        free(part);
        free(dir);
        dir = next;
        struct stat st;
        if (lstat(dir, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                rc = err_set(ERR_DATA, "'%s' in the snapshot is not a plain folder (a symlink?): refusing to write "
                                       "'%s' through it", dir, rel);
                break;
            }
        } else if (mkdir(dir, 0755) && errno != EEXIST) {
            rc = err_errno(ERR_STAGE, "cannot create '%s'", dir);
            break;
        }
        p = slash + 1;
    }
    free(dir);
    if (rc) return rc;
    char *path = fs_join(root, rel), *target = hub_blob_link_target(rel, etag);
    char cur[1024];
    ssize_t k = readlink(path, cur, sizeof cur - 1);
    if (k >= 0) cur[k] = 0;
    if (k < 0 || strcmp(cur, target)) {
        char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
        unlink(tmp);
        if (symlink(target, tmp) || rename(tmp, path)) rc = err_errno(ERR_STAGE, "cannot link '%s'", path);
        unlink(tmp);
        free(tmp);
    }
    free(path);
    free(target);
    return rc;
}

/* ---------- hub files on the transfer engine (net/transfer.h) ---------- */

/* The engine's settings from the hub's: the token only ever goes to the endpoint's origin. */
static net_policy hub_policy(const hub_config *cfg) {
    return (net_policy){.http = {.timeout_s = cfg->timeout_s, .ca_file = cfg->ca_file},
                        .parallel = cfg->parallel,
                        .max_retries = cfg->max_retries,
                        .retry_base_s = cfg->retry_base_s,
                        .token = cfg->token,
                        .token_url = cfg->endpoint};
}

/* What a repo file adds to its transfer: where its blob, lock and snapshot link go. A transfer
 * without one (a plain URL) goes straight to its destination. */
typedef struct hub_file {
    char *commit;              /* the commit the file must belong to (NULL: take it from the HEAD) */
    char *blob_dir, *lock_dir; /* <repo>/blobs and .locks/<folder> */
    char *snapshot_root, *rel; /* snapshots/<commit> and the repo path, for the link */
} hub_file;

static void hub_file_free(void *p) {
    hub_file *f = p;
    if (!f) return;
    free(f->commit);
    free(f->blob_dir);
    free(f->lock_dir);
    free(f->snapshot_root);
    free(f->rel);
    free(f);
}

/* One call's engine: the transfers, and what its messages name. */
typedef struct hub_engine {
    net_engine g;
    net_policy pol;
    err_subject subj;
} hub_engine;

/* After the HEAD of a repo file: the blob is named by its ETag, checked against it, and written
 * under the blob's lock. */
static int hub_head_done(net_engine *g, net_xfer *x) {
    const hub_engine *he = g->user;
    hub_file *f = x->user;
    hub_file_meta m;
    int rc = meta_from_headers(&x->h, &m);
    if (rc) return err_wrap("'%s' from %s", x->name, he->subj.cfg->endpoint);
    if (f->commit && strcasecmp(f->commit, m.commit))
        return err_set(ERR_DATA, "'%s': the server answered for commit %s, not the listed %s", x->name, m.commit,
                       f->commit);
    memcpy(x->checksum, m.etag, sizeof x->checksum);
    x->size = m.size;
    if (!f->commit) f->commit = strdup(m.commit);
    if (!f->snapshot_root) {
        char *repo_dir = fs_dirname(f->blob_dir);
        f->snapshot_root = xasprintf("%s/snapshots/%s", repo_dir, f->commit);
        free(repo_dir);
    }
    free(x->dest);
    free(x->part);
    free(x->lock_path);
    x->dest = xasprintf("%s/%s", f->blob_dir, x->checksum);
    x->part = xasprintf("%s.incomplete", x->dest);
    x->lock_path = xasprintf("%s/%s.lock", f->lock_dir, x->checksum);
    return 0;
}

/* the blob is in place (downloaded or cached): link it into the snapshot */
static int hub_file_done(net_engine *g, net_xfer *x) {
    (void)g;
    hub_file *f = x->user;
    return f ? link_snapshot(f->snapshot_root, f->rel, x->checksum) : 0;
}

static int hub_http_failed(net_engine *g, net_xfer *x) {
    const hub_engine *he = g->user;
    hub_file *f = x->user;
    const char *commit = net_headers_get(&x->h, "x-repo-commit"), *code = net_headers_get(&x->h, "x-error-code");
    if (x->h.status == 404 && f && commit && is_hex(commit, 40) && code && !strcmp(code, "EntryNotFound") &&
        f->blob_dir) {
        /* remember the absence, as the Python tools do: .no_exist/<commit>/<path> */
        char *repo_dir = fs_dirname(f->blob_dir);
        char *ne = xasprintf("%s/.no_exist/%s/%s", repo_dir, commit, f->rel);
        char *ned = fs_dirname(ne);
        if (!fs_mkdir_p(ned)) fs_write_atomic(ne, "", 0);
        err_clear();
        free(repo_dir);
        free(ne);
        free(ned);
    }
    err_subject s = he->subj;
    if (f) s.file = f->rel;
    else { s.repo = NULL; s.file = NULL; }
    return http_error(&s, &x->h, x->name);
}

/* he must not move while the engine runs (the engine points to its policy). */
static void hub_engine_init(hub_engine *he, const hub_config *cfg, err_subject subj, hub_progress_fn progress,
                            void *user, volatile int *interrupted) {
    he->pol = hub_policy(cfg);
    he->subj = subj;
    net_engine_init(&he->g, &he->pol);
    he->g.hooks = (net_engine_hooks){hub_head_done, hub_file_done, hub_http_failed};
    he->g.user = he;
    he->g.progress = progress;
    he->g.progress_user = user;
    he->g.interrupted = interrupted;
}

/* A repo file: a HEAD on url first. commit: the one it must belong to (NULL: the HEAD says);
 * snapshot_root: where it is linked (NULL: snapshots/<that commit>). */
static net_xfer *hub_engine_add_file(hub_engine *he, const char *rel, const char *url, const char *commit,
                                     const char *snapshot_root) {
    net_xfer *x = net_engine_add(&he->g, rel, url);
    hub_file *f = calloc(1, sizeof *f);
    f->rel = strdup(rel);
    f->commit = commit ? strdup(commit) : NULL;
    f->snapshot_root = snapshot_root ? strdup(snapshot_root) : NULL;
    x->user = f;
    x->user_free = hub_file_free;
    x->send_token = true;
    x->state = NET_X_WAIT_HEAD;
    return x;
}

/* ---------- the hub ---------- */

typedef struct repo_paths {
    char *folder;   /* models--org--name */
    char *repo_dir; /* <cache>/models--org--name */
    char *locks;    /* <cache>/.locks/models--org--name */
} repo_paths;

static void repo_paths_init(repo_paths *p, const hub_config *cfg, hub_repo_type type, const char *repo) {
    p->folder = hub_repo_folder(type, repo);
    p->repo_dir = fs_join(cfg->cache_dir, p->folder);
    p->locks = xasprintf("%s/.locks/%s", cfg->cache_dir, p->folder);
}

static void repo_paths_free(repo_paths *p) {
    free(p->folder);
    free(p->repo_dir);
    free(p->locks);
}

/* refs/<revision> -> commit; a full commit stands for itself */
static char *cached_commit(const repo_paths *p, const char *rev) {
    if (is_hex(rev, 40)) return strdup(rev);
    if (!hub_path_safe(rev)) return NULL;
    char *ref = xasprintf("%s/refs/%s", p->repo_dir, rev), *buf = NULL;
    size_t len = 0;
    char *out = NULL;
    if (fs_exists(ref) && !fs_read_all(ref, &buf, &len)) {
        while (len > 0 && isspace((unsigned char)buf[len - 1])) buf[--len] = 0;
        if (is_hex(buf, 40)) out = strdup(buf);
    }
    err_clear();
    free(buf);
    free(ref);
    return out;
}

static int write_ref(const repo_paths *p, const char *rev, const char *commit) {
    if (!strcmp(rev, commit)) return 0;
    if (!hub_path_safe(rev)) return err_set(ERR_USAGE, "unusable revision name '%s'", rev);
    char *ref = xasprintf("%s/refs/%s", p->repo_dir, rev);
    char *buf = NULL;
    size_t len = 0;
    int rc = 0;
    if (!(fs_exists(ref) && !fs_read_all(ref, &buf, &len) && len == 40 && !memcmp(buf, commit, 40))) {
        err_clear();
        char *dir = fs_dirname(ref);
        rc = fs_mkdir_p(dir);
        if (!rc) rc = fs_write_atomic(ref, commit, 40);
        free(dir);
    }
    free(buf);
    free(ref);
    return rc;
}

/* the files under a snapshot directory, as repo paths (for offline answers) */
static void list_tree(const char *root, const char *rel, char ***files, int *n) {
    char *dir = rel ? fs_join(root, rel) : strdup(root);
    DIR *d = opendir(dir);
    if (!d) { free(dir); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *r = rel ? xasprintf("%s/%s", rel, e->d_name) : strdup(e->d_name);
        char *full = fs_join(root, r);
        struct stat st, lst;
        if (lstat(full, &lst) == 0 && S_ISDIR(lst.st_mode)) {
            list_tree(root, r, files, n);
            free(r);
        } else if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            *files = realloc(*files, (size_t)(*n + 1) * sizeof **files);
            (*files)[(*n)++] = r;
        } else {
            free(r);
        }
        free(full);
    }
    closedir(d);
    free(dir);
}

static bool wanted(const hub_fetch_opts *o, const char *path) {
    const char *const *inc = o->include ? o->include : hub_default_include;
    bool in = false;
    for (int i = 0; inc[i] && !in; i++) in = hub_pattern_match(inc[i], path);
    if (!in) return false;
    for (int i = 0; o->exclude && o->exclude[i]; i++)
        if (hub_pattern_match(o->exclude[i], path)) return false;
    return true;
}

static void free_list(char **l, int n) {
    for (int i = 0; i < n; i++) free(l[i]);
    free(l);
}

static int snapshot_from_cache(const hub_config *cfg, const hub_fetch_opts *o, const repo_paths *p, const char *rev,
                               hub_snapshot *out, const char *why) {
    char *commit = cached_commit(p, rev);
    char *dir = commit ? xasprintf("%s/snapshots/%s", p->repo_dir, commit) : NULL;
    if (!dir || !fs_is_dir(dir)) {
        free(commit);
        free(dir);
        return err_set(ERR_NETWORK, "%s, and %s '%s' at revision '%s' is not in the cache (%s): download it once "
                                    "online", why, repo_noun(o->type), o->repo, rev, cfg->cache_dir);
    }
    char **all = NULL;
    int n = 0;
    list_tree(dir, NULL, &all, &n);
    qsort(all, (size_t)n, sizeof *all, cmp_str);
    /* a caller that picks files itself (a hub dataset: configs and splits) picks among the cached
     * ones, the listing huggingface_hub's offline mode knows too */
    bool *picked = o->select ? calloc((size_t)n + 1, sizeof *picked) : NULL;
    int rc = o->select && !picked ? err_set(ERR_STAGE, "out of memory") : 0;
    if (!rc && o->select && (rc = o->select(o->select_user, commit, all, n, picked)))
        err_wrap("%s: only the files of the cached snapshot %s are known", why, dir);
    out->files = calloc((size_t)n + 1, sizeof *out->files);
    for (int i = 0; i < n; i++) {
        if (!rc && (picked ? picked[i] : wanted(o, all[i]))) out->files[out->n_files++] = all[i];
        else free(all[i]);
    }
    free(all);
    free(picked);
    if (rc || (o->select && !out->n_files)) { /* an error, or the listing was all the caller wanted */
        if (rc) {
            free(commit);
            free(dir);
            free(out->files);
            out->files = NULL;
            return rc;
        }
        out->commit = commit;
        out->dir = dir;
        out->offline = true;
        return 0;
    }
    if (!out->n_files) {
        free(commit);
        free(dir);
        free(out->files);
        out->files = NULL;
        return err_set(ERR_NETWORK, "%s, and the cached snapshot of '%s' (%s) holds none of the wanted files", why,
                       o->repo, rev);
    }
    qsort(out->files, (size_t)out->n_files, sizeof *out->files, cmp_str);
    for (int i = 0; i < out->n_files; i++) {
        char *f = fs_join(dir, out->files[i]);
        int64_t s = fs_size(f);
        if (s > 0) out->bytes_total += s;
        free(f);
    }
    out->commit = commit;
    out->dir = dir;
    out->offline = true;
    return 0;
}

/* Re-hash a cached snapshot file against its blob name (the ETag: SHA-256 or git SHA-1). A
 * corrupt blob is deleted with the link, so the file is fetched again; *ok says it was fine. */
static int verify_cached(const char *link, bool *ok) {
    char target[1024];
    ssize_t k = readlink(link, target, sizeof target - 1);
    *ok = true;
    if (k <= 0) return 0;
    target[k] = 0;
    const char *etag = strrchr(target, '/');
    etag = etag ? etag + 1 : target;
    int rc = net_checksum_file(link, etag, ok);
    if (rc || *ok) return rc;
    char *dir = fs_dirname(link), *blob = fs_join(dir, target);
    if (unlink(blob) && errno != ENOENT) rc = err_errno(ERR_STAGE, "cannot delete the corrupt blob '%s'", blob);
    else if (unlink(link)) rc = err_errno(ERR_STAGE, "cannot delete '%s'", link);
    free(dir);
    free(blob);
    return rc;
}

/* every hub transfer learns its blob name from the HEAD; it needs the folders first */
static int engine_prepare_hub(hub_engine *he, const repo_paths *p) {
    char *blobs = xasprintf("%s/blobs", p->repo_dir);
    int rc = fs_mkdir_p(blobs);
    if (!rc) rc = fs_mkdir_p(p->locks);
    for (int i = 0; i < he->g.n && !rc; i++) {
        hub_file *f = he->g.x[i]->user;
        f->blob_dir = strdup(blobs);
        f->lock_dir = strdup(p->locks);
    }
    free(blobs);
    return rc;
}

/* dir made absolute (its own symlinks resolved) joined with rel, whose last part stays as it
 * is: a snapshot file is the link, whose name (and extension) readers go by, not the blob */
static char *abs_file_path(const char *dir, const char *rel) {
    char *d = realpath(dir, NULL);
    char *out = fs_join(d ? d : dir, rel);
    free(d);
    return out;
}

static char *abs_path(const char *p) {
    char *r = realpath(p, NULL);
    return r ? r : strdup(p);
}

/* One hub_snapshot_download call: what its steps share. */
typedef struct snapshot_call {
    const hub_config *cfg;
    const hub_fetch_opts *o;
    const char *rev;
    repo_paths p;
    hub_engine he;      /* must not move while it runs */
    char *commit;       /* the listing: the revision's commit and every file */
    char **files;
    int n_files;
    const char **want;  /* the wanted files (borrowed from files) */
    int n_want;
} snapshot_call;

static void snapshot_call_free(snapshot_call *sc) {
    net_engine_free(&sc->he.g);
    free(sc->commit);
    free_list(sc->files, sc->n_files);
    free((void *)sc->want);
    repo_paths_free(&sc->p);
}

/* 1. The listing: revision -> commit, and the file names. When the hub cannot be reached, a
 * cached snapshot still serves, as with the Python tools: *served says it did (out is filled). */
static int snapshot_list(snapshot_call *sc, hub_snapshot *out, bool *served) {
    const hub_config *cfg = sc->cfg;
    const hub_fetch_opts *o = sc->o;
    char *qrev = hub_url_quote(sc->rev, false);
    char *api = xasprintf("%s/api/%ss/%s/revision/%s", cfg->endpoint, repo_noun(o->type), o->repo, qrev);
    free(qrev);
    net_headers h;
    net_headers_init(&h);
    net_buf body = {.limit = 64u << 20};
    bool unreachable = false;
    int rc = net_request(&sc->he.pol, api, false, true, o->interrupted, &h, &body, &unreachable);
    if (rc == ERR_NETWORK && unreachable) {
        char why[512];
        snprintf(why, sizeof why, "%s", err_msg());
        err_clear();
        rc = snapshot_from_cache(cfg, o, &sc->p, sc->rev, out, why) ? ERR_NETWORK : 0;
        *served = !rc;
    } else {
        if (!rc && h.status != 200) rc = http_error(&sc->he.subj, &h, api);
        if (!rc) rc = hub_listing_parse(body.data ? body.data : "", body.len, &sc->commit, &sc->files, &sc->n_files);
        if (rc == ERR_DATA && h.status == 200) err_wrap("%s", api);
    }
    free(api);
    free(body.data);
    net_headers_free(&h);
    return rc;
}

/* 2. The wanted files (the caller's select, else include/exclude), pickle refused. None wanted is
 * an error, unless the caller selects: then the listing was all it wanted. */
static int snapshot_pick(snapshot_call *sc) {
    const hub_fetch_opts *o = sc->o;
    int n_files = sc->n_files;
    sc->want = calloc((size_t)n_files + 1, sizeof *sc->want);
    bool *picked = o->select ? calloc((size_t)n_files + 1, sizeof *picked) : NULL;
    if (!sc->want || (o->select && !picked)) {
        free(picked);
        return err_set(ERR_STAGE, "out of memory");
    }
    int rc = o->select ? o->select(o->select_user, sc->commit, sc->files, n_files, picked) : 0;
    int n_safetensors = 0;
    const char *a_pickle = NULL;
    for (int i = 0; i < n_files && !rc; i++) {
        const char *f = sc->files[i];
        if (hub_path_is_pickle(f) && !a_pickle) a_pickle = f;
        if (picked ? !picked[i] : !wanted(o, f)) continue;
        if (hub_path_is_pickle(f) && !o->allow_pickle) {
            rc = err_set(ERR_DATA, "refusing '%s' of '%s': PyTorch pickle files can run arbitrary code when loaded; "
                                   "use the repo's .safetensors files, or set allow_pickle if you trust it", f, o->repo);
            break;
        }
        size_t fl = strlen(f);
        if (fl > 12 && !strcmp(f + fl - 12, ".safetensors")) n_safetensors++;
        sc->want[sc->n_want++] = f;
    }
    free(picked);
    if (!rc && o->type == HUB_REPO_MODEL && !o->include && !n_safetensors && a_pickle && !o->allow_pickle)
        rc = err_set(ERR_DATA, "model '%s' at '%s' has no .safetensors weights, only PyTorch pickle files such as '%s' "
                               "(refused: a pickle can run code when loaded); pick a revision or repo with "
                               "safetensors weights, or set allow_pickle if you trust it", o->repo, sc->rev, a_pickle);
    if (!rc && !sc->n_want && !o->select)
        rc = err_set(ERR_NETWORK, "no file of %s '%s' at '%s' matches the include/exclude patterns", repo_noun(o->type),
                     o->repo, sc->rev);
    return rc;
}

/* 3. A transfer per wanted file not already in the snapshot (with verify, a cached one is
 * re-hashed first and fetched again when corrupt), all run at once; out gets the snapshot. */
static int snapshot_fetch(snapshot_call *sc, hub_snapshot *out) {
    const hub_config *cfg = sc->cfg;
    const hub_fetch_opts *o = sc->o;
    int rc = write_ref(&sc->p, sc->rev, sc->commit);
    if (rc) return rc;
    char *snap = xasprintf("%s/snapshots/%s", sc->p.repo_dir, sc->commit);
    out->files = calloc((size_t)sc->n_want + 1, sizeof *out->files);
    for (int i = 0; i < sc->n_want; i++) {
        const char *f = sc->want[i];
        out->files[out->n_files++] = strdup(f);
        char *local = fs_join(snap, f);
        int64_t s = fs_size(local); /* follows the link: a blob is there */
        struct stat lst;
        bool linked = lstat(local, &lst) == 0 && S_ISLNK(lst.st_mode);
        if (s >= 0 && linked && o->verify) {
            rc = verify_cached(local, &linked);
            if (rc) { free(local); break; }
            if (!linked) out->n_corrupt++;
        }
        free(local);
        if (s >= 0 && linked) { out->bytes_total += s; continue; }
        char *qpath = hub_url_quote(f, true);
        char *url = xasprintf("%s/%s%s/resolve/%s/%s", cfg->endpoint, repo_prefix(o->type), o->repo, sc->commit, qpath);
        free(qpath);
        hub_engine_add_file(&sc->he, f, url, sc->commit, snap);
        free(url);
    }
    net_engine *g = &sc->he.g;
    if (!rc && g->n) rc = engine_prepare_hub(&sc->he, &sc->p);
    if (!rc && g->n) rc = net_engine_run(g);
    for (int i = 0; i < g->n; i++) out->bytes_total += g->x[i]->size > 0 ? g->x[i]->size : 0;
    out->bytes_downloaded = g->downloaded;
    if (!rc) {
        out->commit = strdup(sc->commit);
        out->dir = abs_path(snap);
    }
    free(snap);
    return rc;
}

int hub_snapshot_download(const hub_config *cfg, const hub_fetch_opts *o, hub_snapshot *out) {
    memset(out, 0, sizeof *out);
    if (!hub_repo_id_valid(o->repo)) return err_set(ERR_USAGE, "not a repo id: '%s' (expected org/name)", o->repo);
    snapshot_call sc = {.cfg = cfg, .o = o, .rev = o->revision && *o->revision ? o->revision : "main"};
    repo_paths_init(&sc.p, cfg, o->type, o->repo);
    hub_engine_init(&sc.he, cfg, (err_subject){cfg, o->type, o->repo, sc.rev, NULL}, o->progress, o->progress_user,
                    o->interrupted);
    bool served = false;
    int rc;
    if (cfg->offline) rc = snapshot_from_cache(cfg, o, &sc.p, sc.rev, out, "HF_HUB_OFFLINE is set");
    else if (!(rc = snapshot_list(&sc, out, &served)) && !served && !(rc = snapshot_pick(&sc))) {
        if (sc.n_want) rc = snapshot_fetch(&sc, out);
        else out->commit = strdup(sc.commit); /* the listing was all the caller wanted */
    }
    if (rc) hub_snapshot_free(out);
    snapshot_call_free(&sc);
    return rc;
}

void hub_snapshot_free(hub_snapshot *s) {
    if (!s) return;
    free(s->commit);
    free(s->dir);
    free_list(s->files, s->n_files);
    memset(s, 0, sizeof *s);
}

int hub_file_download(const hub_config *cfg, hub_repo_type type, const char *repo, const char *revision,
                      const char *path, hub_progress_fn progress, void *user, char **local_path) {
    *local_path = NULL;
    if (!hub_repo_id_valid(repo)) return err_set(ERR_USAGE, "not a repo id: '%s' (expected org/name)", repo);
    if (!hub_path_safe(path)) return err_set(ERR_USAGE, "unsafe file name '%s' in %s '%s'", path, repo_noun(type), repo);
    const char *rev = revision && *revision ? revision : "main";
    repo_paths p;
    repo_paths_init(&p, cfg, type, repo);
    int rc = 0;
    char *commit = cached_commit(&p, rev);
    if (commit) { /* a cached answer: the file, or the remembered absence */
        char *local = xasprintf("%s/snapshots/%s/%s", p.repo_dir, commit, path);
        char *absent = xasprintf("%s/.no_exist/%s/%s", p.repo_dir, commit, path);
        bool have = fs_size(local) >= 0, gone = fs_exists(absent);
        free(absent);
        /* a branch may have moved: only a pinned commit, or offline mode, trusts the cache alone */
        if ((cfg->offline || is_hex(rev, 40)) && (have || gone)) {
            if (have) {
                char *snap = xasprintf("%s/snapshots/%s", p.repo_dir, commit);
                *local_path = abs_file_path(snap, path);
                free(snap);
            } else {
                rc = err_set(ERR_NETWORK, "'%s' not found in %s '%s' at revision '%s' (remembered in the cache)", path,
                             repo_noun(type), repo, rev);
            }
            free(local);
            free(commit);
            repo_paths_free(&p);
            return rc;
        }
        free(local);
    }
    if (cfg->offline) {
        free(commit);
        repo_paths_free(&p);
        return err_set(ERR_NETWORK, "HF_HUB_OFFLINE is set, and '%s' of %s '%s' at revision '%s' is not in the cache "
                                    "(%s): download it once online", path, repo_noun(type), repo, rev, cfg->cache_dir);
    }
    hub_engine he;
    hub_engine_init(&he, cfg, (err_subject){cfg, type, repo, rev, NULL}, progress, user, NULL);
    char *qrev = hub_url_quote(rev, false), *qpath = hub_url_quote(path, true);
    char *url = xasprintf("%s/%s%s/resolve/%s/%s", cfg->endpoint, repo_prefix(type), repo, qrev, qpath);
    free(qrev);
    free(qpath);
    net_xfer *x = hub_engine_add_file(&he, path, url, NULL, NULL);
    hub_file *f = x->user;
    free(url);
    rc = engine_prepare_hub(&he, &p);
    if (!rc) rc = net_engine_run(&he.g);
    if (rc == ERR_NETWORK && he.g.unreachable && commit) { /* the hub is down: the cached file serves */
        char *snap = xasprintf("%s/snapshots/%s", p.repo_dir, commit), *local = fs_join(snap, path);
        if (fs_size(local) >= 0) {
            err_clear();
            rc = 0;
            *local_path = abs_file_path(snap, path);
        }
        free(snap);
        free(local);
    } else {
        if (!rc) rc = write_ref(&p, rev, f->commit);
        if (!rc) *local_path = abs_file_path(f->snapshot_root, path);
    }
    free(commit);
    net_engine_free(&he.g);
    repo_paths_free(&p);
    return rc;
}

static void sha256_hex_str(const char *s, char out[65]) {
    unsigned char md[32];
    unsigned int n = 0;
    EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", md[i]);
}

/* the last path segment of a URL, made a safe file name ("download" if none) */
static char *url_basename(const char *url) {
    CURLU *u = curl_url();
    char *path = NULL, *out = NULL;
    if (u && !curl_url_set(u, CURLUPART_URL, url, 0) && !curl_url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE)) {
        const char *b = strrchr(path, '/');
        b = b ? b + 1 : path;
        if (*b && strcmp(b, ".") && strcmp(b, "..")) {
            out = strdup(b);
            for (char *c = out; *c; c++)
                if ((unsigned char)*c < 0x20 || *c == '/' || *c == '\\') *c = '_';
            if (out[0] == '.') out[0] = '_';
        }
    }
    curl_free(path);
    if (u) curl_url_cleanup(u);
    return out ? out : strdup("download");
}

int hub_url_download(const hub_config *cfg, const char *url, hub_progress_fn progress, void *user,
                     char **local_path) {
    *local_path = NULL;
    char *origin = net_url_origin(url);
    if (!origin || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8))) {
        free(origin);
        return err_set(ERR_USAGE, "not an http(s) URL: '%s'", url);
    }
    free(origin);
    char key[65];
    sha256_hex_str(url, key);
    key[16] = 0;
    char *base = url_basename(url);
    char *dir = xasprintf("%s/%s", cfg->url_cache, key);
    char *dest = xasprintf("%s/%s", dir, base), *meta_path = xasprintf("%s/.meta.json", dir);
    free(base);
    int rc = 0;
    json_t *meta = json_load_file(meta_path, 0, NULL);
    bool complete = json_is_true(json_object_get(meta, "complete")) && fs_exists(dest);
    if (cfg->offline) {
        if (complete) *local_path = abs_path(dest);
        else rc = err_set(ERR_NETWORK, "HF_HUB_OFFLINE is set, and '%s' was never downloaded", url);
        goto out;
    }
    /* revalidate: the same ETag and size as last time means the same bytes */
    net_headers h;
    net_headers_init(&h);
    net_buf body = {.limit = 1 << 16};
    bool unreachable = false;
    net_policy pol = hub_policy(cfg);
    rc = net_request(&pol, url, true, false, NULL, &h, &body, &unreachable);
    if (rc && unreachable && complete) { /* keep working with what we have */
        err_clear();
        rc = 0;
        *local_path = abs_path(dest);
        net_headers_free(&h);
        goto out;
    }
    free(body.data);
    if (rc) { net_headers_free(&h); goto out; }
    char etag[130] = "";
    if (h.status == 200 && h.etag && !hub_etag_normalize(h.etag, etag, sizeof etag)) {
        /* an ETag that is no file name is still fine to compare */
        snprintf(etag, sizeof etag, "%.128s", h.etag);
    }
    int64_t size = h.status == 200 ? h.content_length : -1;
    if (h.status == 404 || h.status == 401 || h.status == 403) {
        err_subject s = {cfg, HUB_REPO_MODEL, NULL, NULL, NULL};
        rc = http_error(&s, &h, url);
        net_headers_free(&h);
        goto out;
    }
    net_headers_free(&h);
    const char *old_etag = json_string_value(json_object_get(meta, "etag"));
    json_t *old_size = json_object_get(meta, "size");
    bool same = *etag && old_etag && !strcmp(old_etag, etag) &&
                (size < 0 || (json_is_integer(old_size) && json_integer_value(old_size) == size));
    if (complete && same && (size < 0 || fs_size(dest) == size)) {
        *local_path = abs_path(dest);
        goto out;
    }
    rc = fs_mkdir_p(dir);
    if (rc) goto out;
    char *part = xasprintf("%s.incomplete", dest);
    if (!same || !*etag) unlink(part); /* a partial file of other bytes cannot be resumed */
    json_t *m = json_pack("{s:s, s:s, s:I, s:b}", "url", url, "etag", etag, "size", (json_int_t)size, "complete", 0);
    char *txt = json_dumps(m, JSON_SORT_KEYS);
    rc = fs_write_atomic(meta_path, txt, strlen(txt));
    free(txt);
    if (!rc) {
        unlink(dest);
        hub_engine he;
        hub_engine_init(&he, cfg, (err_subject){cfg, HUB_REPO_MODEL, NULL, NULL, NULL}, progress, user, NULL);
        net_xfer *x = net_engine_add(&he.g, url, url);
        x->dest = strdup(dest);
        x->part = strdup(part);
        x->size = size;
        x->state = NET_X_WAIT_GET;
        rc = net_engine_run(&he.g);
        net_engine_free(&he.g);
    }
    if (!rc) {
        json_object_set_new(m, "complete", json_true());
        txt = json_dumps(m, JSON_SORT_KEYS);
        rc = fs_write_atomic(meta_path, txt, strlen(txt));
        free(txt);
    }
    if (!rc) *local_path = abs_path(dest);
    json_decref(m);
    free(part);
out:
    json_decref(meta);
    free(dir);
    free(dest);
    free(meta_path);
    return rc;
}

int hub_url_fetch_files(const hub_config *cfg, const char *base_url, const char *const *names,
                        const bool *optional, int n, const char *dir, hub_progress_fn progress, void *user,
                        bool *found) {
    if (strncmp(base_url, "http://", 7) && strncmp(base_url, "https://", 8))
        return err_set(ERR_USAGE, "not an http(s) URL: '%s'", base_url);
    if (cfg->offline) return err_set(ERR_NETWORK, "HF_HUB_OFFLINE is set: cannot download from '%s'", base_url);
    hub_engine he;
    hub_engine_init(&he, cfg, (err_subject){cfg, HUB_REPO_MODEL, NULL, NULL, NULL}, progress, user, NULL);
    size_t bl = strlen(base_url);
    bool slash = bl > 0 && base_url[bl - 1] == '/';
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        found[i] = false;
        if (!hub_path_safe(names[i])) { rc = err_set(ERR_USAGE, "unsafe file name '%s'", names[i]); break; }
        char *q = hub_url_quote(names[i], true);
        char *url = xasprintf("%s%s%s", base_url, slash ? "" : "/", q);
        free(q);
        net_xfer *x = net_engine_add(&he.g, names[i], url);
        free(url);
        x->dest = fs_join(dir, names[i]);
        x->part = xasprintf("%s.incomplete", x->dest);
        x->optional = optional && optional[i];
        x->state = NET_X_WAIT_GET;
        char *d = fs_dirname(x->dest);
        rc = fs_mkdir_p(d);
        free(d);
    }
    if (!rc) rc = net_engine_run(&he.g);
    for (int i = 0; i < he.g.n && !rc; i++) found[i] = he.g.x[i]->state == NET_X_DONE;
    net_engine_free(&he.g);
    return rc;
}
