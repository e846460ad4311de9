/* hub.c: the Hugging Face Hub client (see hub.h for the protocol and the cache layout).
 *
 * Three parts, on the libcurl plumbing of net/http.c (init, retry policy, handle setup, error
 * messages): small parsers (exposed for tests and fuzzing), a blocking request for the
 * API listing and HEAD revalidation, and a transfer engine on one curl multi handle that
 * runs every file as a little state machine (HEAD -> GET -> verify -> rename -> link),
 * with retries scheduled by time so one slow or rate-limited file never blocks the rest. */
#define _GNU_SOURCE
#include "hub/hub.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
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
#include "net/http.h"

#ifndef QLORA_VERSION
#define QLORA_VERSION "dev"
#endif

#define HUB_MAX_HOPS 10
#define HUB_RETRY_AFTER_CAP_S 120.0

/* ---------- small helpers ---------- */

static char *xasprintf(const char *fmt, ...) ERR_PRINTF(1, 2);
static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

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

double hub_retry_after_parse(const char *value, double now_epoch) {
    if (!value) return -1;
    while (*value == ' ') value++;
    char *end;
    double s = strtod(value, &end);
    if (end != value) {
        while (*end == ' ' || *end == '\r' || *end == '\n') end++;
        return *end || s < 0 ? -1 : s;
    }
    time_t t = curl_getdate(value, NULL); /* an HTTP date */
    if (t < 0) return -1;
    double d = (double)t - now_epoch;
    return d < 0 ? 0 : d;
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

/* ---------- response headers ---------- */

typedef struct resp_headers {
    long status;
    char *commit, *etag, *linked_etag, *location, *error_code, *error_message, *retry_after, *content_range;
    int64_t linked_size, content_length; /* -1 if absent */
} resp_headers;

static void headers_reset(resp_headers *h) {
    free(h->commit);
    free(h->etag);
    free(h->linked_etag);
    free(h->location);
    free(h->error_code);
    free(h->error_message);
    free(h->retry_after);
    free(h->content_range);
    memset(h, 0, sizeof *h);
    h->linked_size = h->content_length = -1;
}

static void set_str(char **dst, const char *v, size_t n) {
    free(*dst);
    *dst = strndup(v, n);
}

/* One header line as libcurl hands it over ("Name: value\r\n"). A new status line (after a
 * 100-continue or a followed redirect) starts a fresh set. */
static void headers_line(resp_headers *h, const char *line, size_t len) {
    if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
        headers_reset(h);
        /* the status code: up to three digits after the first space (the line is not
         * NUL-terminated, so no strtol on it) */
        const char *sp = memchr(line, ' ', len), *end = line + len;
        long st = 0;
        if (sp)
            for (const char *p = sp + 1; p < end && p < sp + 4 && *p >= '0' && *p <= '9'; p++) st = st * 10 + (*p - '0');
        h->status = st;
        return;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon) return;
    size_t nlen = (size_t)(colon - line);
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) end--;
    size_t vlen = (size_t)(end - v);
#define IS(name) (nlen == sizeof(name) - 1 && !strncasecmp(line, name, nlen))
    if (IS("x-repo-commit")) set_str(&h->commit, v, vlen);
    else if (IS("etag")) set_str(&h->etag, v, vlen);
    else if (IS("x-linked-etag")) set_str(&h->linked_etag, v, vlen);
    else if (IS("location")) set_str(&h->location, v, vlen);
    else if (IS("x-error-code")) set_str(&h->error_code, v, vlen);
    else if (IS("x-error-message")) set_str(&h->error_message, v, vlen);
    else if (IS("retry-after")) set_str(&h->retry_after, v, vlen);
    else if (IS("content-range")) set_str(&h->content_range, v, vlen);
    else if (IS("x-linked-size") || IS("content-length")) {
        char buf[32];
        if (vlen == 0 || vlen >= sizeof buf) return;
        memcpy(buf, v, vlen);
        buf[vlen] = 0;
        char *e;
        long long x = strtoll(buf, &e, 10);
        if (*e || x < 0) return;
        if (IS("x-linked-size")) h->linked_size = x;
        else h->content_length = x;
    }
#undef IS
}

static size_t on_header(char *buf, size_t size, size_t n, void *user) {
    headers_line(user, buf, size * n);
    return size * n;
}

/* What a HEAD on resolve says about a file (docs/hub-protocol.md): all three are required. */
static int meta_from_headers(const resp_headers *h, hub_file_meta *m) {
    memset(m, 0, sizeof *m);
    m->status = h->status;
    const char *raw = h->linked_etag ? h->linked_etag : h->etag;
    if (!h->commit || !is_hex(h->commit, 40))
        return err_set(ERR_DATA, "no commit in the answer (X-Repo-Commit): is HF_ENDPOINT a hub?");
    memcpy(m->commit, h->commit, 41);
    if (!raw || !hub_etag_normalize(raw, m->etag, sizeof m->etag))
        return err_set(ERR_DATA, "no usable ETag in the answer");
    m->size = h->linked_size >= 0 ? h->linked_size : (h->status / 100 == 3 ? -1 : h->content_length);
    if (m->size < 0) return err_set(ERR_DATA, "no file size in the answer (X-Linked-Size or Content-Length)");
    return 0;
}

int hub_file_meta_parse(const char *raw, size_t len, hub_file_meta *m) {
    resp_headers h;
    memset(&h, 0, sizeof h);
    headers_reset(&h);
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(raw + i, '\n', len - i);
        size_t n = nl ? (size_t)(nl - (raw + i)) + 1 : len - i;
        headers_line(&h, raw + i, n);
        i += n;
    }
    int rc = meta_from_headers(&h, m);
    headers_reset(&h);
    return rc;
}

/* ---------- messages ---------- */

typedef struct err_subject {
    const hub_config *cfg;
    hub_repo_type type;
    const char *repo, *revision, *file; /* any may be NULL */
} err_subject;

static int http_error(const err_subject *s, const resp_headers *h, const char *url) {
    char code[64] = "", msg[300] = "", what[700];
    net_clean_text(code, sizeof code, h->error_code);
    net_clean_text(msg, sizeof msg, h->error_message);
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

static double backoff_s(const hub_config *cfg, int attempt) { return net_backoff_s(cfg->retry_base_s, attempt); }

static double retry_delay(const hub_config *cfg, const resp_headers *h, int attempt) {
    if (h && h->status == 429) {
        double ra = hub_retry_after_parse(h->retry_after, (double)time(NULL));
        if (ra >= 0) return ra > HUB_RETRY_AFTER_CAP_S ? HUB_RETRY_AFTER_CAP_S : ra;
    }
    return backoff_s(cfg, attempt);
}

/* ---------- one easy handle, set up the same way everywhere ---------- */

static struct curl_slist *base_headers(const hub_config *cfg, const char *url, bool send_token) {
    struct curl_slist *l = NULL;
    l = curl_slist_append(l, "Accept-Encoding: identity");
    if (send_token && cfg->token) {
        char *a = net_url_origin(url), *b = net_url_origin(cfg->endpoint);
        if (a && b && !strcmp(a, b)) {
            char *line = xasprintf("Authorization: Bearer %s", cfg->token);
            l = curl_slist_append(l, line);
            memset(line, 0, strlen(line));
            free(line);
        }
        free(a);
        free(b);
    }
    return l;
}

static void easy_setup(CURL *e, const hub_config *cfg, const char *url, struct curl_slist *hdrs, char *errbuf) {
    net_opts o = {.timeout_s = cfg->timeout_s, .ca_file = cfg->ca_file};
    net_easy_setup(e, &o, url, hdrs, errbuf);
}

/* ---------- blocking requests: API listing and HEAD revalidation ---------- */

/* GET (or HEAD) url with retries on transient failures; redirects followed by hand, the token
 * only ever sent to the endpoint's origin. On return h holds the final answer's headers and
 * body its content; a non-2xx final answer is left for the caller to explain (returns 0).
 * *unreachable tells a failure to get any answer (no retry for a refused connection: the
 * caller may have the answer cached, as the Python tools do). */
static int request_blocking(const hub_config *cfg, const char *url0, bool head, bool send_token,
                            volatile int *interrupted, resp_headers *h, net_buf *body, bool *unreachable) {
    net_init();
    char *url = strdup(url0);
    char errbuf[CURL_ERROR_SIZE];
    int rc = 0, attempt = 0, hops = 0;
    CURL *e = curl_easy_init();
    for (;;) {
        if (interrupted && *interrupted) { rc = err_set(ERR_INTERRUPTED, "interrupted"); break; }
        headers_reset(h);
        body->len = 0;
        struct curl_slist *hdrs = base_headers(cfg, url, send_token);
        curl_easy_reset(e);
        easy_setup(e, cfg, url, hdrs, errbuf);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, net_buf_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, body);
        if (head) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
        CURLcode c = curl_easy_perform(e);
        curl_slist_free_all(hdrs);
        attempt++;
        double delay = -1;
        if (c != CURLE_OK) {
            if (!net_curl_retryable(c) || c == CURLE_COULDNT_CONNECT || attempt > cfg->max_retries) {
                rc = net_curl_error(c, errbuf, url, attempt);
                if (unreachable) *unreachable = c != CURLE_PEER_FAILED_VERIFICATION && c != CURLE_SSL_CACERT_BADFILE;
                break;
            }
            delay = backoff_s(cfg, attempt);
        } else {
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &h->status);
            if (h->status >= 300 && h->status < 400 && h->location) {
                char *next = net_url_resolve(url, h->location);
                if (!next || ++hops > HUB_MAX_HOPS) {
                    free(next);
                    rc = err_set(ERR_NETWORK, "too many or broken redirects from '%s'", url0);
                    break;
                }
                free(url);
                url = next;
                attempt = 0;
                continue;
            }
            if (net_status_retryable(h->status) && attempt <= cfg->max_retries) delay = retry_delay(cfg, h, attempt);
        }
        if (delay < 0) break;
        for (double end = net_now() + delay; net_now() < end;) {
            if (interrupted && *interrupted) break;
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    curl_easy_cleanup(e);
    free(url);
    return rc;
}

/* ---------- the transfer engine ---------- */

/* Where the bytes of a GET go: the partial file and, for a hub blob, the checksum, computed
 * while the bytes arrive (no second pass). libcurl hands over 16 KB pieces at arbitrary file
 * offsets; writing each as it comes made the page cache zero the part of every page a piece
 * did not cover (measured: 5% of the transfer in memset alone). So the pieces are gathered into
 * page-aligned 256 KB blocks, each written (in page-aligned 16 KB writes, see XS_WRITE) and
 * hashed from the same memory while it is hot.
 *
 * SHA-256 costs about 0.5 s of CPU a GB, as much as receiving and writing the bytes: with a
 * second core, a hashing thread digests the blocks (a ring of 16, so a thread that is briefly
 * descheduled does not stall the receiver) while the receiving thread goes on writing; without
 * one, the receiving thread hashes each block after writing it. QLORA_HUB_HASH=thread|inline
 * forces one. */
#define XS_BLOCK (256u << 10)
#define XS_RING 16
#define XS_PAGE 4096

typedef struct xsink {
    int fd;
    EVP_MD_CTX *md;          /* NULL: nothing to check */
    char *buf[XS_RING];
    size_t len[XS_RING];     /* bytes of each submitted block */
    size_t fill;             /* bytes in the block being filled, buf[submitted % XS_RING] */
    int64_t off;             /* file offset of that block's first byte */
    int64_t hashed;          /* bytes fed to md */
    int err;                 /* errno of a failed write */
    bool threaded;
    /* with a thread: blocks [done, submitted) are its to hash */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t submitted, done;
    bool stop, waiting;
} xsink;

static void *xsink_main(void *arg) {
    xsink *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->done == s->submitted && !s->stop) pthread_cond_wait(&s->cv, &s->mu);
        if (s->done == s->submitted) break;
        int i = (int)(s->done % XS_RING);
        size_t n = s->len[i];
        pthread_mutex_unlock(&s->mu);
        EVP_DigestUpdate(s->md, s->buf[i], n);
        pthread_mutex_lock(&s->mu);
        s->hashed += (int64_t)n;
        s->done++;
        if (s->waiting) pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* a thread wherever there is a second core: both ways do the same work (gather, write, hash),
 * the thread only moves the hash off the receiving thread (2 cores, loopback, 2 GB: median
 * 797 MB/s with the thread against 700 inline; choosing by the load average picked inline
 * whenever the previous download had raised it) */
static bool hash_thread_wanted(void) {
    const char *force = getenv("QLORA_HUB_HASH");
    if (force && !strcmp(force, "thread")) return true;
    if (force && !strcmp(force, "inline")) return false;
    return sysconf(_SC_NPROCESSORS_ONLN) >= 2;
}

/* bytes go to fd from offset `off`; md (may be NULL) has seen everything before it */
static xsink *xsink_start(int fd, int64_t off, EVP_MD_CTX *md) {
    xsink *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->fd = fd;
    s->off = off;
    s->md = md;
    s->threaded = md && hash_thread_wanted();
    int nbuf = s->threaded ? XS_RING : 1;
    for (int i = 0; i < nbuf; i++)
        if (!(s->buf[i] = malloc(XS_BLOCK))) goto fail;
    if (s->threaded) {
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->cv, NULL);
        if (pthread_create(&s->th, NULL, xsink_main, s)) {
            pthread_mutex_destroy(&s->mu);
            pthread_cond_destroy(&s->cv);
            goto fail;
        }
    }
    return s;
fail:
    for (int i = 0; i < XS_RING; i++) free(s->buf[i]);
    free(s);
    return NULL;
}

/* A block goes out in 16 KB writes: one write of 256 KB makes the page cache take a large folio,
 * and on the benchmark's VM (free memory handed back to the host) those cost up to twice the
 * CPU of small ones and vary wildly (2 GB, loopback, median of 4: 16 KB writes 978 MB/s, 64 KB
 * 600, 256 KB 720 with runs from 350 to 990; curl writes ~8 KB at a time). */
#define XS_WRITE (16u << 10)

static bool xsink_pwrite(xsink *s, const char *p, size_t n) {
    for (size_t done = 0; done < n;) {
        size_t want = n - done < XS_WRITE ? n - done : XS_WRITE;
        ssize_t w = pwrite(s->fd, p + done, want, (off_t)(s->off + (int64_t)done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            s->err = w < 0 ? errno : EIO;
            return false;
        }
        done += (size_t)w;
    }
    return true;
}

/* write the block being filled, hand it to the hash, start the next one */
static bool xsink_flush(xsink *s) {
    if (!s->fill) return !s->err;
    int i = s->threaded ? (int)(s->submitted % XS_RING) : 0;
    char *p = s->buf[i];
    size_t n = s->fill;
    if (s->threaded) { /* the thread reads the block while we write it */
        pthread_mutex_lock(&s->mu);
        s->len[i] = n;
        s->submitted++;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    bool ok = !s->err && xsink_pwrite(s, p, n);
    if (!s->threaded && s->md) {
        EVP_DigestUpdate(s->md, p, n);
        s->hashed += (int64_t)n;
    }
    s->off += (int64_t)n;
    s->fill = 0;
    if (s->threaded) { /* the next block to fill must be hashed already */
        pthread_mutex_lock(&s->mu);
        s->waiting = true;
        while (s->submitted - s->done >= XS_RING) pthread_cond_wait(&s->cv, &s->mu);
        s->waiting = false;
        pthread_mutex_unlock(&s->mu);
    }
    return ok;
}

static bool xsink_put(xsink *s, const char *p, size_t n) {
    while (n) {
        /* the first block ends on a page boundary of the file (a resume starts anywhere) */
        size_t cap = XS_BLOCK - (size_t)(s->off % XS_PAGE);
        char *b = s->buf[s->threaded ? s->submitted % XS_RING : 0];
        size_t k = cap - s->fill < n ? cap - s->fill : n;
        memcpy(b + s->fill, p, k);
        s->fill += k;
        p += k;
        n -= k;
        if (s->fill == cap && !xsink_flush(s)) return false;
    }
    return !s->err;
}

/* write what is left, finish the hash; *hashed: the bytes fed to md. 0, or the errno of a
 * failed write (the file then holds an unknown prefix of the bytes) */
static int xsink_finish(xsink **sp, int64_t *hashed) {
    xsink *s = *sp;
    *hashed = 0;
    if (!s) return 0;
    xsink_flush(s);
    if (s->threaded) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
    }
    *hashed = s->hashed;
    int err = s->err;
    for (int i = 0; i < XS_RING; i++) free(s->buf[i]);
    free(s);
    *sp = NULL;
    return err;
}

typedef enum xstate { X_WAIT_HEAD, X_WAIT_GET, X_WAIT_LOCK, X_RUNNING, X_DONE, X_MISSING } xstate;

typedef struct xfer {
    /* what: set by the caller */
    char *name;        /* shown in messages and progress */
    char *url;         /* the current request */
    bool hub;          /* HEAD first, blob cache, snapshot link */
    bool optional;     /* a 404 leaves it X_MISSING instead of failing */
    char *commit;      /* hub: the commit the file must belong to (NULL: take it from the HEAD) */
    char *dest;        /* final path (hub: blob_dir/<etag>, known after the HEAD) */
    char *blob_dir, *lock_dir; /* hub: <repo>/blobs and .locks/<folder> */
    char *snapshot_root, *rel; /* hub: snapshots/<commit> and the repo path, for the link */
    int64_t size;      /* expected size, -1 unknown */
    char etag[130];
    bool send_token;
    /* how it goes */
    xstate state, next;
    bool get_phase;
    int attempts, hops, checksum_failures;
    double not_before;
    CURL *easy;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    resp_headers h;
    net_buf errbody;
    int fd;            /* the open partial file, -1 if none */
    char *part;        /* dest + ".incomplete" */
    EVP_MD_CTX *md;    /* the checksum, computed while the bytes arrive (no second pass) */
    int64_t md_off;    /* bytes of part that md has seen */
    xsink *sink;       /* while a GET writes */
    int64_t have;      /* bytes in part */
    int64_t start_have;
    int64_t req_have;  /* have when the current request started: progress resets the retry count */
    bool cached;       /* answered from the cache */
    bool write_failed, range_mismatch;
    int write_errno;   /* why the write failed (ENOSPC, ...) */
    int lock_fd;
    char *lock_path;
} xfer;

typedef struct engine {
    const hub_config *cfg;
    CURLM *multi;
    xfer **x;
    int n;
    err_subject subj;
    hub_progress_fn progress;
    void *user;
    volatile int *interrupted;
    int64_t downloaded;
    bool unreachable;  /* the failure was getting no answer at all */
    double t_last_progress, rate, rate_t, rate_bytes;
} engine;

static void xfer_free(xfer *x) {
    if (!x) return;
    free(x->name);
    free(x->url);
    free(x->commit);
    free(x->dest);
    free(x->blob_dir);
    free(x->lock_dir);
    free(x->snapshot_root);
    free(x->rel);
    free(x->part);
    free(x->lock_path);
    free(x->errbody.data);
    headers_reset(&x->h);
    int64_t hashed;
    xsink_finish(&x->sink, &hashed);
    if (x->fd >= 0) close(x->fd);
    if (x->md) EVP_MD_CTX_free(x->md);
    if (x->lock_fd >= 0) fs_unlock(&x->lock_fd);
    free(x);
}

static xfer *xfer_new(const char *name, const char *url) {
    xfer *x = calloc(1, sizeof *x);
    x->name = strdup(name);
    x->url = strdup(url);
    x->size = -1;
    x->lock_fd = -1;
    x->fd = -1;
    x->errbody.limit = 8192;
    headers_reset(&x->h);
    return x;
}

/* Start (or continue) the streaming checksum at offset `from` of the partial file: the ETag
 * names the hash (64 hex: SHA-256 of the bytes; 40 hex: git's SHA-1 of "blob <size>\0" + bytes).
 * A resumed file's first part is read back once. */
static bool xfer_hash_begin(xfer *x, int64_t from) {
    if (x->md && x->md_off == from) return true;
    const EVP_MD *type = is_hex(x->etag, 64) ? EVP_sha256() : is_hex(x->etag, 40) && x->size >= 0 ? EVP_sha1() : NULL;
    if (!x->hub || !type) return true;
    if (!x->md) x->md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(x->md, type, NULL);
    x->md_off = 0;
    if (type == EVP_sha1()) {
        char head[64];
        int hl = snprintf(head, sizeof head, "blob %lld", (long long)x->size);
        EVP_DigestUpdate(x->md, head, (size_t)hl + 1);
    }
    size_t cap = 1 << 20;
    char *buf = from > 0 ? malloc(cap) : NULL;
    while (x->md_off < from) {
        size_t want = from - x->md_off < (int64_t)cap ? (size_t)(from - x->md_off) : cap;
        ssize_t k = buf ? pread(x->fd, buf, want, (off_t)x->md_off) : -1;
        if (k <= 0) { free(buf); return false; }
        EVP_DigestUpdate(x->md, buf, (size_t)k);
        x->md_off += k;
    }
    free(buf);
    return true;
}

static size_t on_body_file(char *buf, size_t size, size_t n, void *user) {
    xfer *x = user;
    size_t k = size * n;
    long st = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &st);
    if (st != 200 && st != 206) { /* an error page: keep its start for the message */
        size_t room = x->errbody.limit > x->errbody.len ? x->errbody.limit - x->errbody.len : 0;
        if (room) net_buf_write(buf, 1, k < room ? k : room, &x->errbody);
        return k;
    }
    if (x->fd < 0) {
        x->fd = open(x->part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (x->fd < 0) { x->write_failed = true; x->write_errno = errno; return 0; }
        if (st == 206) {
            long long a = -1;
            if (!x->h.content_range || sscanf(x->h.content_range, "bytes %lld-", &a) != 1 || a != x->have) {
                x->range_mismatch = true; /* the server resumed somewhere else: start over */
                return 0;
            }
        } else { /* 200: the whole file again, even if we asked for a range */
            /* truncate only a file that has bytes: on ext4 a truncation to 0 marks the file as
             * "replaced by truncation", and its close then starts writeback of every byte written
             * since (measured: close took ~1 s on a 2 GB blob) */
            struct stat sb;
            x->have = 0;
            if (fstat(x->fd, &sb) || (sb.st_size > 0 && ftruncate(x->fd, 0))) {
                x->write_failed = true;
                x->write_errno = errno;
                return 0;
            }
        }
        if (!xfer_hash_begin(x, x->have)) { x->write_failed = true; x->write_errno = errno; return 0; }
        if (!(x->sink = xsink_start(x->fd, x->have, x->md))) {
            x->write_failed = true;
            x->write_errno = ENOMEM;
            return 0;
        }
    }
    if (!xsink_put(x->sink, buf, k)) {
        x->write_failed = true;
        x->write_errno = x->sink->err;
        return 0;
    }
    x->have += (int64_t)k;
    return k;
}

/* Finish the partial file of this request. No fsync: a blob is named by its checksum and
 * checked before the rename; forcing gigabytes to disk would cost the disk's sync speed (the
 * Python tools do not either). */
static int xfer_close_out(xfer *x) {
    int64_t hashed;
    int err = xsink_finish(&x->sink, &hashed);
    if (x->md) x->md_off += hashed;
    if (x->fd >= 0 && close(x->fd) && !err) err = errno;
    x->fd = -1;
    if (err) {
        errno = err;
        return err_errno(ERR_STAGE, "cannot write '%s'", x->part);
    }
    return 0;
}

static void engine_emit(engine *g, const char *file, bool force) {
    if (!g->progress) return;
    double t = net_now();
    if (!force && t - g->t_last_progress < 0.1) return;
    g->t_last_progress = t;
    hub_progress p = {.file = file};
    for (int i = 0; i < g->n && !p.file; i++) /* name a file that is moving */
        if (g->x[i]->state == X_RUNNING && g->x[i]->get_phase) p.file = g->x[i]->name;
    int64_t dl = 0;
    for (int i = 0; i < g->n; i++) {
        xfer *x = g->x[i];
        if (x->size > 0) p.total += x->size;
        p.files_total += x->state != X_MISSING;
        if (x->state == X_DONE) { p.files_done++; p.done += x->size > 0 ? x->size : x->have; }
        else p.done += x->have;
        dl += x->have - x->start_have;
    }
    if (t - g->rate_t >= 1.0 || force) {
        if (g->rate_t > 0) g->rate = (double)(dl - g->rate_bytes) / (t - g->rate_t);
        if (g->rate < 0) g->rate = 0;
        g->rate_t = t;
        g->rate_bytes = (double)dl;
    }
    p.rate = g->rate;
    g->progress(g->user, &p);
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

/* git's blob id: sha1("blob <size>\0" + content), the ETag of a small (non-LFS) hub file */
static int git_blob_sha1_hex(const char *path, char out[41]) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_errno(ERR_STAGE, "cannot open '%s'", path);
    int64_t size = fs_size(path);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha1(), NULL);
    char head[64];
    int hl = snprintf(head, sizeof head, "blob %lld", (long long)size);
    EVP_DigestUpdate(c, head, (size_t)hl + 1);
    char buf[65536];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(c, buf, k);
    fclose(f);
    unsigned char md[20];
    EVP_DigestFinal_ex(c, md, NULL);
    EVP_MD_CTX_free(c);
    for (int i = 0; i < 20; i++) sprintf(out + 2 * i, "%02x", md[i]);
    return 0;
}

/* Is the finished file what the ETag promised? 64 hex: SHA-256 (LFS); 40 hex: git SHA-1. */
static int verify_blob(const char *path, const char *etag, bool *ok) {
    *ok = true;
    if (is_hex(etag, 64)) {
        char got[65];
        int rc = sha256_file_hex(path, got);
        if (rc) return rc;
        *ok = !strcasecmp(got, etag);
    } else if (is_hex(etag, 40)) {
        char got[41];
        int rc = git_blob_sha1_hex(path, got);
        if (rc) return rc;
        *ok = !strcasecmp(got, etag);
    }
    return 0;
}

static void engine_detach(engine *g, xfer *x) {
    if (x->easy) {
        curl_multi_remove_handle(g->multi, x->easy);
        curl_easy_cleanup(x->easy);
        x->easy = NULL;
    }
    curl_slist_free_all(x->hdrs);
    x->hdrs = NULL;
}

static void schedule(xfer *x, xstate st, double delay) {
    x->state = st;
    x->not_before = net_now() + delay;
}

static int xfer_start(engine *g, xfer *x) {
    x->get_phase = x->state == X_WAIT_GET;
    headers_reset(&x->h);
    x->errbody.len = 0;
    x->write_failed = x->range_mismatch = false;
    x->write_errno = 0;
    if (x->get_phase) {
        x->have = fs_size(x->part);
        if (x->have < 0) x->have = 0;
        if (x->size >= 0 && x->have > x->size) { /* not this file: start over */
            unlink(x->part);
            x->have = 0;
        }
        if (!x->attempts && !x->hops) x->start_have = x->have;
        x->req_have = x->have;
    }
    x->easy = curl_easy_init();
    if (!x->easy) return err_set(ERR_STAGE, "curl_easy_init failed");
    x->hdrs = base_headers(g->cfg, x->url, x->send_token);
    if (x->get_phase && x->have > 0) {
        char range[64];
        snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)x->have);
        x->hdrs = curl_slist_append(x->hdrs, range);
    }
    easy_setup(x->easy, g->cfg, x->url, x->hdrs, x->errbuf);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, &x->h);
    if (x->get_phase) {
        curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, on_body_file);
        curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    } else {
        curl_easy_setopt(x->easy, CURLOPT_NOBODY, 1L);
    }
    x->state = X_RUNNING;
    if (curl_multi_add_handle(g->multi, x->easy) != CURLM_OK) return err_set(ERR_STAGE, "curl_multi_add_handle failed");
    return 0;
}

/* the blob is in place (downloaded or cached): link it and finish */
static int xfer_finish(engine *g, xfer *x) {
    if (x->lock_fd >= 0) fs_unlock(&x->lock_fd);
    if (x->hub) {
        int rc = link_snapshot(x->snapshot_root, x->rel, x->etag);
        if (rc) return rc;
    }
    x->state = X_DONE;
    engine_emit(g, x->name, false);
    return 0;
}

static int xfer_claim(engine *g, xfer *x);

/* After a HEAD: decide the blob, reuse it if cached, else take the lock and queue the GET. */
static int xfer_after_head(engine *g, xfer *x, const char *download_url) {
    hub_file_meta m;
    int rc = meta_from_headers(&x->h, &m);
    if (rc) return err_wrap("'%s' from %s", x->name, g->cfg->endpoint);
    if (x->commit && strcasecmp(x->commit, m.commit))
        return err_set(ERR_DATA, "'%s': the server answered for commit %s, not the listed %s", x->name, m.commit,
                       x->commit);
    memcpy(x->etag, m.etag, sizeof x->etag);
    x->size = m.size;
    if (!x->commit) x->commit = strdup(m.commit);
    if (!x->snapshot_root) {
        char *repo_dir = fs_dirname(x->blob_dir);
        x->snapshot_root = xasprintf("%s/snapshots/%s", repo_dir, x->commit);
        free(repo_dir);
    }
    if (strcmp(download_url, x->url)) {
        free(x->url);
        x->url = strdup(download_url);
    }
    free(x->dest);
    free(x->part);
    free(x->lock_path);
    x->dest = xasprintf("%s/%s", x->blob_dir, x->etag);
    x->part = xasprintf("%s.incomplete", x->dest);
    x->lock_path = xasprintf("%s/%s.lock", x->lock_dir, x->etag);
    x->hops = 0;
    return xfer_claim(g, x);
}

/* Reuse the blob if it is there; else take its lock (another process, or another file of ours
 * with the same content, may be fetching it: then wait) and queue the GET. */
static int xfer_claim(engine *g, xfer *x) {
    if (fs_size(x->dest) == x->size) { /* already in the cache (ours or Python's) */
        x->cached = true;
        return xfer_finish(g, x);
    }
    if (x->lock_fd < 0) {
        int rc = fs_lock(x->lock_path, false, &x->lock_fd);
        if (rc == ERR_LOCKED) {
            err_clear();
            schedule(x, X_WAIT_LOCK, 0.2);
            return 0;
        }
        if (rc) return rc;
        if (fs_size(x->dest) == x->size) { /* it finished while we waited */
            x->cached = true;
            return xfer_finish(g, x);
        }
    }
    if (fs_exists(x->dest)) unlink(x->dest); /* a blob of the wrong size is corrupt: fetch it again */
    x->attempts = 0;
    schedule(x, X_WAIT_GET, 0);
    return 0;
}

/* A GET ended with a complete body: check it, move it into place. */
static int xfer_after_get(engine *g, xfer *x) {
    int rc = xfer_close_out(x);
    if (rc) return rc;
    if (x->size >= 0 && x->have != x->size) { /* the server closed early without an error */
        if (x->have > x->size) unlink(x->part);
        return -1;                            /* retry */
    }
    if (x->hub) {
        bool ok = true;
        if (x->md && x->md_off == x->have) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int n = 0;
            char hex[2 * EVP_MAX_MD_SIZE + 1];
            EVP_DigestFinal_ex(x->md, md, &n);
            for (unsigned i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", md[i]);
            ok = !strcasecmp(hex, x->etag);
            EVP_MD_CTX_free(x->md);
            x->md = NULL;
        } else if ((rc = verify_blob(x->part, x->etag, &ok))) {
            return rc;
        }
        if (!ok) {
            unlink(x->part); /* never keep bytes that fail their checksum */
            if (++x->checksum_failures >= 2)
                return err_set(ERR_DATA, "'%s': the downloaded bytes do not match the hub's checksum %s twice; "
                                         "the partial blob was deleted (a broken proxy or mirror?)", x->name, x->etag);
            x->have = 0;
            x->start_have = 0;
            return -1;
        }
    }
    if (rename(x->part, x->dest)) return err_errno(ERR_STAGE, "cannot rename '%s' into place", x->part);
    char *dir = fs_dirname(x->dest);
    fs_fsync_dir(dir);
    free(dir);
    return xfer_finish(g, x);
}

static int xfer_done(engine *g, xfer *x, CURLcode c) {
    long st = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &st);
    x->h.status = st;
    char *redirect = NULL;
    if (st >= 300 && st < 400 && x->h.location) redirect = net_url_resolve(x->url, x->h.location);
    engine_detach(g, x);
    int rc = 0;
    if (x->get_phase && (rc = xfer_close_out(x))) { free(redirect); return rc; }
    if (x->range_mismatch) { unlink(x->part); x->have = 0; x->md_off = -1; }
    if (x->write_failed && !x->range_mismatch) {
        free(redirect);
        errno = x->write_errno ? x->write_errno : EIO;
        return err_errno(ERR_STAGE, "cannot write '%s'", x->part);
    }
    xstate again = x->get_phase ? X_WAIT_GET : X_WAIT_HEAD;

    if (c != CURLE_OK && !x->range_mismatch) {
        free(redirect);
        if (x->get_phase && x->have > x->req_have) x->attempts = 0; /* a cut after progress: resume freely */
        /* a refused connection before any answer is a hub that is down, not a blip: fail at once
         * (the caller may have the file cached); during the download it is worth a retry */
        bool down = c == CURLE_COULDNT_CONNECT && !x->get_phase;
        if (!net_curl_retryable(c) || down || ++x->attempts > g->cfg->max_retries) {
            g->unreachable = c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
                             c == CURLE_COULDNT_RESOLVE_PROXY || c == CURLE_OPERATION_TIMEDOUT;
            return net_curl_error(c, x->errbuf, x->url, x->attempts);
        }
        schedule(x, again, backoff_s(g->cfg, x->attempts));
        return 0;
    }
    if (x->range_mismatch) { free(redirect); schedule(x, again, 0); return 0; }
    if (redirect) {
        if (++x->hops > HUB_MAX_HOPS) { free(redirect); return err_set(ERR_NETWORK, "'%s': too many redirects", x->name); }
        char *a = net_url_origin(redirect), *b = net_url_origin(x->url);
        bool same = a && b && !strcmp(a, b);
        free(a);
        free(b);
        if (!x->get_phase && x->hub && !same) { /* the CDN: its URL is the download URL, this answer is the HEAD's */
            rc = xfer_after_head(g, x, redirect);
            free(redirect);
            return rc;
        }
        free(x->url);
        x->url = redirect; /* a relative or same-host redirect (a renamed repo), or the GET's CDN hop */
        schedule(x, again, 0);
        return 0;
    }
    if (st == 200 || st == 206 || (st == 416 && x->get_phase)) {
        if (!x->get_phase) {
            if (!x->hub) { schedule(x, X_WAIT_GET, 0); return 0; }
            return xfer_after_head(g, x, x->url);
        }
        if (st == 416) { /* our partial file is already whole, or not this file at all */
            if (x->size < 0 || x->have != x->size) { unlink(x->part); x->have = 0; }
        }
        rc = xfer_after_get(g, x);
        if (rc == -1) {
            if (++x->attempts > g->cfg->max_retries)
                return err_set(ERR_NETWORK, "'%s': the download kept stopping early (%lld of %lld bytes) after %d "
                                            "attempts", x->name, (long long)x->have, (long long)x->size, x->attempts);
            schedule(x, X_WAIT_GET, x->checksum_failures && x->have == 0 ? 0 : backoff_s(g->cfg, x->attempts));
            return 0;
        }
        return rc;
    }
    if (net_status_retryable(st) && ++x->attempts <= g->cfg->max_retries) {
        schedule(x, again, retry_delay(g->cfg, &x->h, x->attempts));
        return 0;
    }
    if (st == 404 && x->optional) {
        x->state = X_MISSING;
        return 0;
    }
    if (st == 404 && x->hub && x->h.commit && is_hex(x->h.commit, 40) && x->h.error_code &&
        !strcmp(x->h.error_code, "EntryNotFound") && x->blob_dir) {
        /* remember the absence, as the Python tools do: .no_exist/<commit>/<path> */
        char *repo_dir = fs_dirname(x->blob_dir);
        char *ne = xasprintf("%s/.no_exist/%s/%s", repo_dir, x->h.commit, x->rel);
        char *ned = fs_dirname(ne);
        if (!fs_mkdir_p(ned)) fs_write_atomic(ne, "", 0);
        err_clear();
        free(repo_dir);
        free(ne);
        free(ned);
    }
    err_subject s = g->subj;
    if (x->hub) s.file = x->rel;
    else { s.repo = NULL; s.file = NULL; }
    return http_error(&s, &x->h, x->name);
}

/* Run every transfer to the end; on the first hard failure stop the rest (their partial
 * files stay for a later resume) and return its error. */
static int engine_run(engine *g) {
    int rc = 0;
    for (;;) {
        if (g->interrupted && *g->interrupted) { rc = err_set(ERR_INTERRUPTED, "download interrupted"); break; }
        double t = net_now(), wait = 1.0;
        int running = 0, pending = 0;
        for (int i = 0; i < g->n; i++) running += g->x[i]->state == X_RUNNING;
        for (int i = 0; i < g->n && !rc; i++) {
            xfer *x = g->x[i];
            if (x->state != X_WAIT_HEAD && x->state != X_WAIT_GET && x->state != X_WAIT_LOCK) continue;
            pending++;
            if (x->not_before > t) { if (x->not_before - t < wait) wait = x->not_before - t; continue; }
            if (x->state == X_WAIT_LOCK) { rc = xfer_claim(g, x); continue; }
            if (running >= g->cfg->parallel) continue;
            rc = xfer_start(g, x);
            running++;
        }
        if (rc) break;
        if (!running && !pending) break;
        int still = 0;
        curl_multi_perform(g->multi, &still);
        CURLMsg *m;
        int left, finished = 0;
        while (!rc && (m = curl_multi_info_read(g->multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            rc = xfer_done(g, x, m->data.result);
            finished++;
        }
        if (rc) break;
        engine_emit(g, NULL, false);
        /* a request ended: start what it queued (the GET after a HEAD) or finish, without
         * first sleeping in the poll below (that cost up to 100 ms a file) */
        if (finished) continue;
        if (running) {
            int ms = (int)(wait * 1000);
            curl_multi_poll(g->multi, NULL, 0, ms < 100 ? (ms < 1 ? 1 : ms) : 100, NULL);
        } else if (pending) {
            struct timespec ts = {0, (long)((wait < 0.05 ? wait : 0.05) * 1e9) + 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (int i = 0; i < g->n; i++) {
        xfer *x = g->x[i];
        engine_detach(g, x);
        int64_t hashed; /* partial files stay for a resume; errors here would hide the real one */
        xsink_finish(&x->sink, &hashed);
        if (x->md) x->md_off += hashed;
        if (x->fd >= 0) { close(x->fd); x->fd = -1; }
        if (x->lock_fd >= 0) fs_unlock(&x->lock_fd);
    }
    for (int i = 0; i < g->n; i++) g->downloaded += g->x[i]->have - g->x[i]->start_have;
    if (!rc) engine_emit(g, NULL, true);
    return rc;
}

static void engine_init(engine *g, const hub_config *cfg) {
    memset(g, 0, sizeof *g);
    net_init();
    g->cfg = cfg;
    g->multi = curl_multi_init();
    /* separate connections for parallel files: bulk transfers multiplexed on one HTTP/2
     * connection share its window and go slower */
    curl_multi_setopt(g->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    curl_multi_setopt(g->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cfg->parallel);
}

static void engine_add(engine *g, xfer *x) {
    g->x = realloc(g->x, (size_t)(g->n + 1) * sizeof *g->x);
    g->x[g->n++] = x;
}

static void engine_free(engine *g) {
    for (int i = 0; i < g->n; i++) xfer_free(g->x[i]);
    free(g->x);
    if (g->multi) curl_multi_cleanup(g->multi);
    memset(g, 0, sizeof *g);
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
    int rc = verify_blob(link, etag, ok);
    if (rc || *ok) return rc;
    char *dir = fs_dirname(link), *blob = fs_join(dir, target);
    if (unlink(blob) && errno != ENOENT) rc = err_errno(ERR_STAGE, "cannot delete the corrupt blob '%s'", blob);
    else if (unlink(link)) rc = err_errno(ERR_STAGE, "cannot delete '%s'", link);
    free(dir);
    free(blob);
    return rc;
}

/* every hub transfer learns its blob name from the HEAD; it needs the folders first */
static int engine_prepare_hub(engine *g, const repo_paths *p) {
    char *blobs = xasprintf("%s/blobs", p->repo_dir);
    int rc = fs_mkdir_p(blobs);
    if (!rc) rc = fs_mkdir_p(p->locks);
    for (int i = 0; i < g->n && !rc; i++) {
        g->x[i]->blob_dir = strdup(blobs);
        g->x[i]->lock_dir = strdup(p->locks);
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

int hub_snapshot_download(const hub_config *cfg, const hub_fetch_opts *o, hub_snapshot *out) {
    memset(out, 0, sizeof *out);
    if (!hub_repo_id_valid(o->repo)) return err_set(ERR_USAGE, "not a repo id: '%s' (expected org/name)", o->repo);
    const char *rev = o->revision && *o->revision ? o->revision : "main";
    repo_paths p;
    repo_paths_init(&p, cfg, o->type, o->repo);
    int rc = 0;
    char *commit = NULL, **files = NULL;
    int n_files = 0;
    engine g;
    engine_init(&g, cfg);
    g.subj = (err_subject){cfg, o->type, o->repo, rev, NULL};
    g.progress = o->progress;
    g.user = o->progress_user;
    g.interrupted = o->interrupted;

    if (cfg->offline) {
        rc = snapshot_from_cache(cfg, o, &p, rev, out, "HF_HUB_OFFLINE is set");
        goto done;
    }
    /* 1. the listing: revision -> commit, and the file names */
    char *qrev = hub_url_quote(rev, false);
    char *api = xasprintf("%s/api/%ss/%s/revision/%s", cfg->endpoint, repo_noun(o->type), o->repo, qrev);
    free(qrev);
    resp_headers h;
    memset(&h, 0, sizeof h);
    headers_reset(&h);
    net_buf body = {.limit = 64u << 20};
    bool unreachable = false;
    rc = request_blocking(cfg, api, false, true, o->interrupted, &h, &body, &unreachable);
    if (rc == ERR_NETWORK && unreachable) {
        /* the hub is unreachable: a cached snapshot still serves, as with the Python tools */
        char why[512];
        snprintf(why, sizeof why, "%s", err_msg());
        err_clear();
        if (!snapshot_from_cache(cfg, o, &p, rev, out, why)) rc = 0;
        else rc = ERR_NETWORK;
        free(api);
        free(body.data);
        headers_reset(&h);
        goto done;
    }
    if (!rc && h.status != 200) rc = http_error(&g.subj, &h, api);
    if (!rc) rc = hub_listing_parse(body.data ? body.data : "", body.len, &commit, &files, &n_files);
    if (rc == ERR_DATA && h.status == 200) err_wrap("%s", api);
    free(api);
    free(body.data);
    headers_reset(&h);
    if (rc) goto done;

    /* 2. the wanted files, pickle refused */
    const char **want = calloc((size_t)n_files + 1, sizeof *want);
    bool *picked = o->select ? calloc((size_t)n_files + 1, sizeof *picked) : NULL;
    if (!want || (o->select && !picked)) {
        free((void *)want);
        free(picked);
        rc = err_set(ERR_STAGE, "out of memory");
        goto done;
    }
    if (o->select && (rc = o->select(o->select_user, commit, files, n_files, picked))) {
        free((void *)want);
        free(picked);
        goto done;
    }
    int n_want = 0, n_safetensors = 0;
    const char *a_pickle = NULL;
    for (int i = 0; i < n_files; i++) {
        const char *f = files[i];
        if (hub_path_is_pickle(f) && !a_pickle) a_pickle = f;
        if (picked ? !picked[i] : !wanted(o, f)) continue;
        if (hub_path_is_pickle(f) && !o->allow_pickle) {
            rc = err_set(ERR_DATA, "refusing '%s' of '%s': PyTorch pickle files can run arbitrary code when loaded; "
                                   "use the repo's .safetensors files, or set allow_pickle if you trust it", f, o->repo);
            break;
        }
        size_t fl = strlen(f);
        if (fl > 12 && !strcmp(f + fl - 12, ".safetensors")) n_safetensors++;
        want[n_want++] = f;
    }
    if (!rc && o->type == HUB_REPO_MODEL && !o->include && !n_safetensors && a_pickle && !o->allow_pickle)
        rc = err_set(ERR_DATA, "model '%s' at '%s' has no .safetensors weights, only PyTorch pickle files such as '%s' "
                               "(refused: a pickle can run code when loaded); pick a revision or repo with "
                               "safetensors weights, or set allow_pickle if you trust it", o->repo, rev, a_pickle);
    free(picked);
    if (!rc && !n_want && o->select) { /* the listing was all the caller wanted */
        free((void *)want);
        out->commit = strdup(commit);
        goto done;
    }
    if (!rc && !n_want)
        rc = err_set(ERR_NETWORK, "no file of %s '%s' at '%s' matches the include/exclude patterns", repo_noun(o->type),
                     o->repo, rev);
    if (rc) { free((void *)want); goto done; }
    rc = write_ref(&p, rev, commit);
    if (rc) { free((void *)want); goto done; }

    /* 3. a transfer per file not already in the snapshot */
    char *snap = xasprintf("%s/snapshots/%s", p.repo_dir, commit);
    out->files = calloc((size_t)n_want + 1, sizeof *out->files);
    for (int i = 0; i < n_want; i++) {
        out->files[out->n_files++] = strdup(want[i]);
        char *local = fs_join(snap, want[i]);
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
        char *qpath = hub_url_quote(want[i], true);
        char *url = xasprintf("%s/%s%s/resolve/%s/%s", cfg->endpoint, repo_prefix(o->type), o->repo, commit, qpath);
        free(qpath);
        xfer *x = xfer_new(want[i], url);
        free(url);
        x->hub = true;
        x->send_token = true;
        x->commit = strdup(commit);
        x->snapshot_root = strdup(snap);
        x->rel = strdup(want[i]);
        x->state = X_WAIT_HEAD;
        engine_add(&g, x);
    }
    free((void *)want);
    if (!rc && g.n) rc = engine_prepare_hub(&g, &p);
    if (!rc && g.n) rc = engine_run(&g);
    for (int i = 0; i < g.n; i++) out->bytes_total += g.x[i]->size > 0 ? g.x[i]->size : 0;
    out->bytes_downloaded = g.downloaded;
    if (!rc) {
        out->commit = strdup(commit);
        out->dir = abs_path(snap);
    }
    free(snap);
done:
    if (rc) {
        hub_snapshot_free(out);
    }
    engine_free(&g);
    free(commit);
    free_list(files, n_files);
    repo_paths_free(&p);
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
    engine g;
    engine_init(&g, cfg);
    g.subj = (err_subject){cfg, type, repo, rev, NULL};
    g.progress = progress;
    g.user = user;
    char *qrev = hub_url_quote(rev, false), *qpath = hub_url_quote(path, true);
    char *url = xasprintf("%s/%s%s/resolve/%s/%s", cfg->endpoint, repo_prefix(type), repo, qrev, qpath);
    free(qrev);
    free(qpath);
    xfer *x = xfer_new(path, url);
    free(url);
    x->hub = true;
    x->send_token = true;
    x->rel = strdup(path);
    x->state = X_WAIT_HEAD;
    engine_add(&g, x);
    rc = engine_prepare_hub(&g, &p);
    if (!rc) rc = engine_run(&g);
    if (rc == ERR_NETWORK && g.unreachable && commit) { /* the hub is down: the cached file serves */
        char *snap = xasprintf("%s/snapshots/%s", p.repo_dir, commit), *local = fs_join(snap, path);
        if (fs_size(local) >= 0) {
            err_clear();
            rc = 0;
            *local_path = abs_file_path(snap, path);
        }
        free(snap);
        free(local);
    } else {
        if (!rc) rc = write_ref(&p, rev, x->commit);
        if (!rc) *local_path = abs_file_path(x->snapshot_root, path);
    }
    free(commit);
    engine_free(&g);
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
    resp_headers h;
    memset(&h, 0, sizeof h);
    headers_reset(&h);
    net_buf body = {.limit = 1 << 16};
    bool unreachable = false;
    rc = request_blocking(cfg, url, true, false, NULL, &h, &body, &unreachable);
    if (rc && unreachable && complete) { /* keep working with what we have */
        err_clear();
        rc = 0;
        *local_path = abs_path(dest);
        headers_reset(&h);
        goto out;
    }
    free(body.data);
    if (rc) { headers_reset(&h); goto out; }
    char etag[130] = "";
    if (h.status == 200 && h.etag && !hub_etag_normalize(h.etag, etag, sizeof etag)) {
        /* an ETag that is no file name is still fine to compare */
        snprintf(etag, sizeof etag, "%.128s", h.etag);
    }
    int64_t size = h.status == 200 ? h.content_length : -1;
    if (h.status == 404 || h.status == 401 || h.status == 403) {
        err_subject s = {cfg, HUB_REPO_MODEL, NULL, NULL, NULL};
        rc = http_error(&s, &h, url);
        headers_reset(&h);
        goto out;
    }
    headers_reset(&h);
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
        engine g;
        engine_init(&g, cfg);
        g.subj = (err_subject){cfg, HUB_REPO_MODEL, NULL, NULL, NULL};
        g.progress = progress;
        g.user = user;
        xfer *x = xfer_new(url, url);
        x->dest = strdup(dest);
        x->part = strdup(part);
        x->size = size;
        x->state = X_WAIT_GET;
        engine_add(&g, x);
        rc = engine_run(&g);
        engine_free(&g);
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
    engine g;
    engine_init(&g, cfg);
    g.subj = (err_subject){cfg, HUB_REPO_MODEL, NULL, NULL, NULL};
    g.progress = progress;
    g.user = user;
    size_t bl = strlen(base_url);
    bool slash = bl > 0 && base_url[bl - 1] == '/';
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        found[i] = false;
        if (!hub_path_safe(names[i])) { rc = err_set(ERR_USAGE, "unsafe file name '%s'", names[i]); break; }
        char *q = hub_url_quote(names[i], true);
        char *url = xasprintf("%s%s%s", base_url, slash ? "" : "/", q);
        free(q);
        xfer *x = xfer_new(names[i], url);
        free(url);
        x->dest = fs_join(dir, names[i]);
        x->part = xasprintf("%s.incomplete", x->dest);
        x->optional = optional && optional[i];
        x->state = X_WAIT_GET;
        char *d = fs_dirname(x->dest);
        rc = fs_mkdir_p(d);
        free(d);
        engine_add(&g, x);
    }
    if (!rc) rc = engine_run(&g);
    for (int i = 0; i < g.n && !rc; i++) found[i] = g.x[i]->state == X_DONE;
    engine_free(&g);
    return rc;
}
