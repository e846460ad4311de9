/* upload.c: hub uploads (see upload.h and docs/hub-upload.md). One blocking request helper
 * (retries, backoff, the token only for the endpoint's origin); the steps in the order the hub
 * wants them; the commit last. */
#define _GNU_SOURCE
#include "upload.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"
#include "net/http.h"

#define SAMPLE_BYTES 512              /* preupload's "sample": the first bytes of a file */
#define RESP_LIMIT (4u << 20)         /* an API answer is small */
#define REGULAR_MAX ((int64_t)10 << 20) /* a "regular" file is sent inline; the hub wants larger ones in LFS */

typedef struct upfile {
    const hub_push_file *f;
    int64_t size;
    char sha[65];
    unsigned char sample[SAMPLE_BYTES];
    int sample_len;
    bool lfs, ignore;
} upfile;

typedef struct req {
    const char *method;  /* GET POST PUT */
    const char *url;
    const char *content_type; /* NULL: none */
    const char *body;    /* in memory, or */
    size_t body_len;
    FILE *file;          /* a range of a file */
    int64_t off, len;
    bool lfs_accept;     /* Accept: application/vnd.git-lfs+json */
    const char *const *extra; /* more header lines, NULL-terminated */
} req;

typedef struct resp {
    long status;
    net_buf body;
    char etag[256];
} resp;

typedef struct pusher {
    const hub_config *cfg;
    const hub_push_opts *o;
    hub_push_result *res;
    int64_t done, total;
} pusher;

static int strcmp_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const char *type_word(hub_repo_type t) { return t == HUB_REPO_DATASET ? "dataset" : t == HUB_REPO_SPACE ? "space" : "model"; }

/* a URL for messages: presigned storage URLs carry credentials in the query */
static void url_for_msg(char *out, size_t n, const char *url) {
    const char *q = strchr(url, '?');
    snprintf(out, n, "%.*s%s", q ? (int)(q - url) : (int)strlen(url), url, q ? "?..." : "");
}

typedef struct rd {
    FILE *f;
    int64_t left;
    pusher *p;
} rd;

static size_t read_range(char *buf, size_t size, size_t n, void *ud) {
    rd *r = ud;
    size_t want = size * n;
    if ((int64_t)want > r->left) want = (size_t)r->left;
    size_t got = want ? fread(buf, 1, want, r->f) : 0;
    r->left -= (int64_t)got;
    if (got < want && ferror(r->f)) return CURL_READFUNC_ABORT;
    return got;
}

static size_t on_header(char *b, size_t size, size_t n, void *ud) {
    resp *r = ud;
    size_t len = size * n;
    if (len > 5 && !strncasecmp(b, "etag:", 5)) {
        const char *v = b + 5;
        while (*v == ' ' || *v == '\t') v++;
        size_t l = (size_t)(b + len - v);
        while (l && (v[l - 1] == '\r' || v[l - 1] == '\n' || v[l - 1] == ' ')) l--;
        if (l >= sizeof r->etag) l = sizeof r->etag - 1;
        memcpy(r->etag, v, l);
        r->etag[l] = 0;
    }
    return len;
}

static void sleep_s(double s, volatile int *interrupted) {
    for (double end = clock_now_s() + s; clock_now_s() < end;) {
        if (interrupted && *interrupted) return;
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* One request with retries on transient failures. A final non-2xx answer is returned in
 * r->status for the caller to explain (0 returned); transport failures return ERR_NETWORK. */
static int request(pusher *p, const req *q, resp *r) {
    net_init();
    const hub_config *cfg = p->cfg;
    char errbuf[CURL_ERROR_SIZE];
    CURL *e = curl_easy_init();
    if (!e) return err_set(ERR_NETWORK, "cannot start libcurl");
    int rc = 0;
    for (int attempt = 1;; attempt++) {
        if (p->o->interrupted && *p->o->interrupted) { rc = err_set(ERR_INTERRUPTED, "interrupted"); break; }
        free(r->body.data);
        r->body = (net_buf){.limit = RESP_LIMIT};
        r->status = 0;
        r->etag[0] = 0;
        struct curl_slist *h = NULL;
        h = curl_slist_append(h, "Accept-Encoding: identity");
        if (q->lfs_accept) h = curl_slist_append(h, "Accept: application/vnd.git-lfs+json");
        char ct[128];
        if (q->content_type) {
            snprintf(ct, sizeof ct, "Content-Type: %s", q->content_type);
            h = curl_slist_append(h, ct);
        } else if (q->file || q->body) {
            h = curl_slist_append(h, "Content-Type:"); /* nothing, not curl's form type */
        }
        h = curl_slist_append(h, "Expect:");
        for (const char *const *x = q->extra; x && *x; x++) h = curl_slist_append(h, *x);
        if (cfg->token) { /* only to the endpoint: presigned storage URLs must not see it */
            char *a = net_url_origin(q->url), *b = net_url_origin(cfg->endpoint);
            if (a && b && !strcmp(a, b)) {
                char *line;
                if (asprintf(&line, "Authorization: Bearer %s", cfg->token) >= 0) {
                    h = curl_slist_append(h, line);
                    memset(line, 0, strlen(line));
                    free(line);
                }
            }
            free(a);
            free(b);
        }
        curl_easy_reset(e);
        net_opts no = {.timeout_s = cfg->timeout_s, .ca_file = cfg->ca_file};
        net_easy_setup(e, &no, q->url, h, errbuf);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, net_buf_write);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->body);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
        rd reader = {q->file, q->len, p};
        if (q->file) {
            if (fseeko(q->file, q->off, SEEK_SET)) { rc = err_errno(ERR_STAGE, "cannot read the file to upload"); curl_slist_free_all(h); break; }
            curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(e, CURLOPT_READFUNCTION, read_range);
            curl_easy_setopt(e, CURLOPT_READDATA, &reader);
            curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->len);
            if (strcmp(q->method, "PUT")) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q->method);
        } else if (q->body) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body);
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body_len);
            if (strcmp(q->method, "POST")) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q->method);
        }
        CURLcode c = curl_easy_perform(e);
        curl_slist_free_all(h);
        double delay = -1;
        if (c != CURLE_OK) {
            if (!net_curl_retryable(c) || attempt > cfg->max_retries) {
                char u[512];
                url_for_msg(u, sizeof u, q->url);
                rc = net_curl_error(c, errbuf, u, attempt);
                const char *m = err_msg();
                if (!strncmp(m, "download from ", 14)) { /* the engine's words are about downloads */
                    char *copy = strdup(m + 14);
                    err_set(rc, "request to %s (uploading to '%s'; nothing was committed)", copy, p->o->repo);
                    free(copy);
                }
                break;
            }
            delay = net_backoff_s(cfg->retry_base_s, attempt);
        } else {
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->status);
            if (net_status_retryable(r->status) && attempt <= cfg->max_retries) delay = net_backoff_s(cfg->retry_base_s, attempt);
        }
        if (delay < 0) break;
        sleep_s(delay, p->o->interrupted);
    }
    curl_easy_cleanup(e);
    return rc;
}

/* A final non-2xx answer as a message that says what to do. */
static int status_error(pusher *p, const char *step, const resp *r, const char *file) {
    char hubmsg[300] = "", extra[340] = "";
    json_t *j = r->body.data ? json_loadb(r->body.data, r->body.len, 0, NULL) : NULL;
    const char *m = json_string_value(json_object_get(j, "error"));
    if (!m) m = json_string_value(json_object_get(j, "message"));
    net_clean_text(hubmsg, sizeof hubmsg, m ? m : "");
    json_decref(j);
    if (*hubmsg) snprintf(extra, sizeof extra, " (hub: %s)", hubmsg);
    const char *repo = p->o->repo, *rev = p->o->revision ? p->o->revision : "main", *ep = p->cfg->endpoint;
    char what[600];
    if (file) snprintf(what, sizeof what, "%s ('%s' to %s '%s')", step, file, type_word(p->o->type), repo);
    else snprintf(what, sizeof what, "%s for %s '%s'", step, type_word(p->o->type), repo);
    const char *tail = "; nothing was committed";
    switch (r->status) {
    case 401:
        return err_set(ERR_NETWORK, "%s: authentication failed (HTTP 401): %s%s%s", what,
                       p->cfg->token ? "the token was refused: set HF_TOKEN to a valid token (huggingface.co/settings/tokens)"
                                     : "no token is set: export HF_TOKEN with a write token",
                       extra, tail);
    case 403:
        return err_set(ERR_NETWORK, "%s: forbidden (HTTP 403): the token cannot write there: use a token with write access, and a namespace you own or belong to%s%s",
                       what, extra, tail);
    case 404:
        return err_set(ERR_NETWORK, "%s: not found (HTTP 404): check the repo id '%s', the branch '%s' and HF_ENDPOINT (%s)%s%s", what,
                       repo, rev, ep, extra, tail);
    case 409:
        return err_set(ERR_NETWORK, "%s: conflict on branch '%s' (HTTP 409): it moved while uploading or is protected; run again, or push to another revision%s%s",
                       what, rev, extra, tail);
    case 413:
        return err_set(ERR_NETWORK, "%s: too large for the hub (HTTP 413): split big files (export's max_shard_size) or check the repo's storage quota%s%s",
                       what, extra, tail);
    default:
        if (r->status >= 500)
            return err_set(ERR_NETWORK, "%s: the hub failed (HTTP %ld) after %d retries: try again later%s%s", what, r->status,
                           p->cfg->max_retries, extra, tail);
        if (r->status == 429)
            return err_set(ERR_NETWORK, "%s: still rate limited (HTTP 429) after %d retries: try again later%s%s", what,
                           p->cfg->max_retries, extra, tail);
        return err_set(ERR_NETWORK, "%s: the hub answered HTTP %ld%s%s", what, r->status, extra, tail);
    }
}

static json_t *parse_json(const resp *r, const char *step) {
    json_error_t je;
    json_t *j = r->body.data ? json_loadb(r->body.data, r->body.len, 0, &je) : NULL;
    if (!j) err_set(ERR_DATA, "%s: the hub's answer is not JSON", step);
    return j;
}

static char *api_url(pusher *p, const char *what) {
    char *rq = hub_url_quote(p->o->revision ? p->o->revision : "main", false), *url;
    if (asprintf(&url, "%s/api/%ss/%s/%s/%s", p->cfg->endpoint, type_word(p->o->type), p->o->repo, what, rq) < 0) url = NULL;
    free(rq);
    return url;
}

static char *dump(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return s;
}

/* 1. the repo */
static int create_repo(pusher *p) {
    const char *slash = strchr(p->o->repo, '/');
    json_t *body = json_object();
    if (slash) {
        json_object_set_new(body, "name", json_string(slash + 1));
        json_object_set_new(body, "organization", json_stringn(p->o->repo, (size_t)(slash - p->o->repo)));
    } else {
        json_object_set_new(body, "name", json_string(p->o->repo));
    }
    json_object_set_new(body, "private", json_boolean(p->o->private_repo));
    if (p->o->type != HUB_REPO_MODEL) json_object_set_new(body, "type", json_string(type_word(p->o->type)));
    char *b = dump(body), *url;
    if (asprintf(&url, "%s/api/repos/create", p->cfg->endpoint) < 0) url = NULL;
    resp r = {0};
    req q = {.method = "POST", .url = url, .content_type = "application/json", .body = b, .body_len = strlen(b)};
    int rc = request(p, &q, &r);
    if (!rc) {
        if (r.status == 200 || r.status == 201) p->res->created_repo = true;
        else if (r.status != 409) rc = status_error(p, "creating the repo", &r, NULL); /* 409: it exists */
    }
    free(r.body.data);
    free(url);
    free(b);
    return rc;
}

/* 2. the branch, when it is not main */
static int create_branch(pusher *p) {
    const char *rev = p->o->revision;
    if (!rev || !strcmp(rev, "main")) return 0;
    char *url = api_url(p, "branch");
    resp r = {0};
    req q = {.method = "POST", .url = url, .content_type = "application/json", .body = "{}", .body_len = 2};
    int rc = request(p, &q, &r);
    if (!rc) {
        if (r.status == 200 || r.status == 201) p->res->created_branch = true;
        else if (r.status != 409) rc = status_error(p, "creating the branch", &r, NULL); /* 409: it exists */
    }
    free(r.body.data);
    free(url);
    return rc;
}

static char *b64(const unsigned char *d, size_t n) {
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out) EVP_EncodeBlock((unsigned char *)out, d, (int)n);
    return out;
}

/* 3. preupload: regular or lfs, per file */
static int preupload(pusher *p, upfile *u, int n) {
    json_t *files = json_array();
    for (int i = 0; i < n; i++) {
        char *s = b64(u[i].sample, (size_t)u[i].sample_len);
        json_array_append_new(files, json_pack("{s:s, s:s, s:I}", "path", u[i].f->path, "sample", s, "size", (json_int_t)u[i].size));
        free(s);
    }
    char *b = dump(json_pack("{s:o}", "files", files)), *url = api_url(p, "preupload");
    resp r = {0};
    req q = {.method = "POST", .url = url, .content_type = "application/json", .body = b, .body_len = strlen(b)};
    int rc = request(p, &q, &r);
    if (!rc && r.status != 200) rc = status_error(p, "asking how to upload (preupload)", &r, NULL);
    json_t *j = rc ? NULL : parse_json(&r, "preupload");
    if (!rc && !j) rc = ERR_DATA;
    if (!rc) {
        json_t *arr = json_object_get(j, "files");
        for (int i = 0; i < n && !rc; i++) {
            json_t *hit = NULL, *x;
            size_t k;
            json_array_foreach(arr, k, x) if (!strcmp(json_string_value(json_object_get(x, "path")) ?: "", u[i].f->path)) hit = x;
            const char *mode = json_string_value(json_object_get(hit, "uploadMode"));
            if (!mode || (strcmp(mode, "lfs") && strcmp(mode, "regular"))) {
                rc = err_set(ERR_DATA, "preupload: the hub said nothing usable about '%s' (uploadMode)", u[i].f->path);
                break;
            }
            u[i].lfs = !strcmp(mode, "lfs") || u[i].size > REGULAR_MAX;
            u[i].ignore = json_is_true(json_object_get(hit, "shouldIgnore"));
        }
    }
    json_decref(j);
    free(r.body.data);
    free(url);
    free(b);
    return rc;
}

static void progress(pusher *p, const char *file, int64_t add) {
    p->done += add;
    p->res->bytes_uploaded += add;
    if (p->o->progress) {
        hub_progress hp = {.file = file, .done = p->done, .total = p->total};
        p->o->progress(p->o->progress_user, &hp);
    }
}

static const char **action_headers(json_t *hdr) {
    size_t n = json_object_size(hdr), i = 0;
    const char **out = calloc(n + 1, sizeof *out);
    const char *k;
    json_t *v;
    json_object_foreach(hdr, k, v) {
        if (!json_is_string(v) || (k[0] >= '0' && k[0] <= '9') || !strcmp(k, "chunk_size")) continue;
        char *line;
        if (asprintf(&line, "%s: %s", k, json_string_value(v)) >= 0) out[i++] = line;
    }
    return out;
}

static void free_headers(const char **h) {
    for (const char **x = h; x && *x; x++) free((char *)*x);
    free(h);
}

static int lfs_basic(pusher *p, upfile *u, json_t *upload) {
    const char *href = json_string_value(json_object_get(upload, "href"));
    if (!href) return err_set(ERR_DATA, "LFS batch: no upload URL for '%s'", u->f->path);
    FILE *f = fopen(u->f->local, "rb");
    if (!f) return err_errno(ERR_STAGE, "cannot open '%s'", u->f->local);
    const char **hdrs = action_headers(json_object_get(upload, "header"));
    resp r = {0};
    req q = {.method = "PUT", .url = href, .file = f, .off = 0, .len = u->size, .extra = hdrs};
    int rc = request(p, &q, &r);
    if (!rc && (r.status < 200 || r.status >= 300)) rc = status_error(p, "uploading", &r, u->f->path);
    if (!rc) progress(p, u->f->path, u->size);
    free(r.body.data);
    free_headers(hdrs);
    fclose(f);
    return rc;
}

/* ---- resumable multipart: the parts already sent, remembered across runs ----
 * A multipart upload (S3's, behind the hub's LFS server) keeps the parts it received until it
 * is completed, and the hub hands out the same upload for an object again while it is open;
 * its presigned part URLs change with every batch answer, its upload id does not. So each part's
 * ETag is written (atomically) to STATE_DIR/multipart-<oid>.json as soon as the storage answers,
 * and a later run whose batch answer names the same upload sends only the parts missing, then
 * completes with every ETag. Another upload id (the old upload expired) starts over. */

/* the upload's identity: the uploadId query parameter of its URLs, else the completion URL
 * without its query (malloc'd) */
static char *multipart_id(const char *done_url, const char *part_url) {
    const char *urls[2] = {done_url, part_url};
    for (int i = 0; i < 2; i++) {
        const char *q = urls[i] ? strchr(urls[i], '?') : NULL;
        for (const char *a = q; a; a = strchr(a + 1, '&')) {
            if (strncmp(a + 1, "uploadId=", 9)) continue;
            size_t n = strcspn(a + 10, "&#");
            return strndup(a + 10, n);
        }
    }
    return strndup(done_url, strcspn(done_url, "?#"));
}

static char *multipart_state_path(const pusher *p, const upfile *u) {
    if (!p->o->state_dir) return NULL;
    char name[96];
    snprintf(name, sizeof name, "multipart-%s.json", u->sha);
    return fs_join(p->o->state_dir, name);
}

/* the ETags remembered for this object, upload and chunk size: {"1": "\"...\"", ...} (new ref) */
static json_t *multipart_state_load(const char *path, const upfile *u, const char *id, long long chunk) {
    json_t *j = path ? json_load_file(path, 0, NULL) : NULL, *parts = NULL;
    if (j && !strcmp(json_string_value(json_object_get(j, "format")) ?: "", "qlora-run-multipart") &&
        json_integer_value(json_object_get(j, "version")) == 1 &&
        !strcmp(json_string_value(json_object_get(j, "oid")) ?: "", u->sha) &&
        json_integer_value(json_object_get(j, "size")) == u->size &&
        json_integer_value(json_object_get(j, "chunk_size")) == chunk &&
        !strcmp(json_string_value(json_object_get(j, "upload")) ?: "", id) && json_is_object(json_object_get(j, "parts")))
        parts = json_incref(json_object_get(j, "parts"));
    json_decref(j);
    return parts ? parts : json_object();
}

static int multipart_state_save(const char *path, const upfile *u, const char *id, long long chunk, json_t *parts) {
    if (!path) return 0;
    json_t *j = json_pack("{s:s, s:i, s:s, s:I, s:I, s:s, s:O}", "format", "qlora-run-multipart", "version", 1, "oid", u->sha,
                          "size", (json_int_t)u->size, "chunk_size", (json_int_t)chunk, "upload", id, "parts", parts);
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(j);
    char *dir = fs_dirname(path);
    int rc = text ? fs_mkdir_p(dir) : err_set(ERR_STAGE, "out of memory");
    if (!rc) rc = fs_write_atomic(path, text, strlen(text));
    free(dir);
    free(text);
    return rc;
}

static int lfs_multipart(pusher *p, upfile *u, json_t *upload) {
    json_t *hdr = json_object_get(upload, "header");
    const char *cs = json_string_value(json_object_get(hdr, "chunk_size")), *done_url = json_string_value(json_object_get(upload, "href"));
    char *end = NULL;
    long long chunk = cs ? strtoll(cs, &end, 10) : 0;
    if (!cs || *end || chunk <= 0 || !done_url) return err_set(ERR_DATA, "LFS batch: a multipart answer for '%s' without a usable chunk_size or completion URL", u->f->path);
    int64_t parts = (u->size + chunk - 1) / chunk;
    if (parts > 100000) return err_set(ERR_DATA, "LFS batch: %lld parts for '%s'", (long long)parts, u->f->path);
    const char **urls = calloc((size_t)parts, sizeof *urls);
    const char *k;
    json_t *v;
    json_object_foreach(hdr, k, v) {
        char *e2;
        long idx = strtol(k, &e2, 10);
        if (*k && !*e2 && idx >= 1 && idx <= parts && json_is_string(v)) urls[idx - 1] = json_string_value(v);
        else if (*k >= '0' && *k <= '9') { free(urls); return err_set(ERR_DATA, "LFS batch: part '%s' of '%s' does not fit %lld parts of %lld bytes", k, u->f->path, (long long)parts, chunk); }
    }
    for (int64_t i = 0; i < parts; i++)
        if (!urls[i]) { free(urls); return err_set(ERR_DATA, "LFS batch: no URL for part %lld of '%s'", (long long)i + 1, u->f->path); }
    FILE *f = fopen(u->f->local, "rb");
    if (!f) { free(urls); return err_errno(ERR_STAGE, "cannot open '%s'", u->f->local); }
    json_t *plist = json_array();
    int rc = 0;
    char *id = multipart_id(done_url, urls[0]), *state = multipart_state_path(p, u);
    json_t *sent = multipart_state_load(state, u, id, chunk);
    for (int64_t i = 0; i < parts && !rc; i++) {
        int64_t off = i * chunk, len = u->size - off < chunk ? u->size - off : chunk;
        char num[24];
        snprintf(num, sizeof num, "%lld", (long long)i + 1);
        const char *had = json_string_value(json_object_get(sent, num));
        if (had) { /* sent by an earlier run to this same upload */
            json_array_append_new(plist, json_pack("{s:I, s:s}", "partNumber", (json_int_t)(i + 1), "etag", had));
            p->done += len;
            continue;
        }
        resp r = {0};
        req q = {.method = "PUT", .url = urls[i], .file = f, .off = off, .len = len};
        rc = request(p, &q, &r);
        if (!rc && (r.status < 200 || r.status >= 300)) rc = status_error(p, "uploading a part", &r, u->f->path);
        if (!rc && !r.etag[0]) rc = err_set(ERR_DATA, "part %lld of '%s': the storage answered without an ETag", (long long)i + 1, u->f->path);
        if (!rc) {
            json_array_append_new(plist, json_pack("{s:I, s:s}", "partNumber", (json_int_t)(i + 1), "etag", r.etag));
            json_object_set_new(sent, num, json_string(r.etag));
            if (multipart_state_save(state, u, id, chunk, sent)) err_clear(); /* resuming is a saving, not a need */
            progress(p, u->f->path, len);
        }
        free(r.body.data);
    }
    fclose(f);
    free(urls);
    json_decref(sent);
    free(id);
    if (rc) { json_decref(plist); free(state); return rc; }
    char *b = dump(json_pack("{s:s, s:o}", "oid", u->sha, "parts", plist));
    resp r = {0};
    req q = {.method = "POST", .url = done_url, .content_type = "application/vnd.git-lfs+json", .body = b, .body_len = strlen(b), .lfs_accept = true};
    rc = request(p, &q, &r);
    if (!rc && (r.status < 200 || r.status >= 300)) rc = status_error(p, "completing the multipart upload", &r, u->f->path);
    if (!rc && state) unlink(state); /* the upload is closed: its parts mean nothing any more */
    free(r.body.data);
    free(b);
    free(state);
    return rc;
}

static int lfs_verify(pusher *p, upfile *u, json_t *verify) {
    const char *href = json_string_value(json_object_get(verify, "href"));
    if (!href) return 0;
    const char **hdrs = action_headers(json_object_get(verify, "header"));
    char *b = dump(json_pack("{s:s, s:I}", "oid", u->sha, "size", (json_int_t)u->size));
    resp r = {0};
    req q = {.method = "POST", .url = href, .content_type = "application/vnd.git-lfs+json", .body = b, .body_len = strlen(b), .lfs_accept = true, .extra = hdrs};
    int rc = request(p, &q, &r);
    if (!rc && (r.status < 200 || r.status >= 300)) rc = status_error(p, "verifying the upload", &r, u->f->path);
    free(r.body.data);
    free(b);
    free_headers(hdrs);
    return rc;
}

/* 4. the LFS batch API, then each object's upload */
static int lfs_upload(pusher *p, upfile *u, int n) {
    json_t *objs = json_array();
    int nl = 0;
    for (int i = 0; i < n; i++)
        if (u[i].lfs && !u[i].ignore) json_array_append_new(objs, json_pack("{s:s, s:I}", "oid", u[i].sha, "size", (json_int_t)u[i].size)), nl++;
    if (!nl) { json_decref(objs); return 0; }
    json_t *body = json_pack("{s:s, s:[s,s], s:o, s:s}", "operation", "upload", "transfers", "basic", "multipart", "objects", objs,
                             "hash_algo", "sha256");
    json_object_set_new(body, "ref", json_pack("{s:s}", "name", p->o->revision ? p->o->revision : "main"));
    char *b = dump(body), *url;
    const char *prefix = p->o->type == HUB_REPO_DATASET ? "datasets/" : p->o->type == HUB_REPO_SPACE ? "spaces/" : "";
    if (asprintf(&url, "%s/%s%s.git/info/lfs/objects/batch", p->cfg->endpoint, prefix, p->o->repo) < 0) url = NULL;
    resp r = {0};
    req q = {.method = "POST", .url = url, .content_type = "application/vnd.git-lfs+json", .body = b, .body_len = strlen(b), .lfs_accept = true};
    int rc = request(p, &q, &r);
    if (!rc && r.status != 200) rc = status_error(p, "asking where to upload (LFS batch)", &r, NULL);
    json_t *j = rc ? NULL : parse_json(&r, "LFS batch");
    if (!rc && !j) rc = ERR_DATA;
    const char *transfer = json_string_value(json_object_get(j, "transfer"));
    for (int i = 0; i < n && !rc; i++) {
        if (!u[i].lfs || u[i].ignore) continue;
        json_t *hit = NULL, *x;
        size_t k;
        json_array_foreach(json_object_get(j, "objects"), k, x) if (!strcmp(json_string_value(json_object_get(x, "oid")) ?: "", u[i].sha)) hit = x;
        if (!hit) { rc = err_set(ERR_DATA, "LFS batch: the answer lacks '%s' (oid %.12s)", u[i].f->path, u[i].sha); break; }
        json_t *e = json_object_get(hit, "error");
        if (e) {
            resp er = {.status = json_integer_value(json_object_get(e, "code"))};
            char *eb = dump(json_pack("{s:s}", "error", json_string_value(json_object_get(e, "message")) ?: ""));
            er.body.data = eb;
            er.body.len = strlen(eb);
            rc = status_error(p, "uploading", &er, u[i].f->path);
            free(eb);
            break;
        }
        json_t *actions = json_object_get(hit, "actions"), *upload = json_object_get(actions, "upload");
        if (!upload) { /* already on the hub */
            p->res->n_lfs_skipped++;
            progress(p, u[i].f->path, 0);
            continue;
        }
        bool multipart = json_object_get(json_object_get(upload, "header"), "chunk_size") != NULL;
        if (multipart && transfer && strcmp(transfer, "multipart"))
            rc = err_set(ERR_DATA, "LFS batch: transfer '%s' with a multipart action", transfer);
        if (!rc) rc = multipart ? lfs_multipart(p, &u[i], upload) : lfs_basic(p, &u[i], upload);
        if (!rc && !multipart) rc = lfs_verify(p, &u[i], json_object_get(actions, "verify"));
    }
    json_decref(j);
    free(r.body.data);
    free(url);
    free(b);
    return rc;
}

char *hub_commit_ndjson(const char *summary, const char *description, const hub_push_file *files, const bool *lfs,
                        const char (*sha256)[65], int n) {
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (!m) return NULL;
    char *line = dump(json_pack("{s:s, s:{s:s, s:s}}", "key", "header", "value", "summary", summary, "description",
                                description ? description : ""));
    fprintf(m, "%s\n", line);
    free(line);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (lfs[i]) {
            line = dump(json_pack("{s:s, s:{s:s, s:s, s:s}}", "key", "lfsFile", "value", "path", files[i].path, "algo", "sha256",
                                  "oid", sha256[i]));
        } else {
            char *data = NULL;
            size_t dl = 0;
            if ((rc = fs_read_all(files[i].local, &data, &dl))) break;
            char *enc = b64((unsigned char *)data, dl);
            free(data);
            line = dump(json_pack("{s:s, s:{s:s, s:s, s:s}}", "key", "file", "value", "content", enc, "path", files[i].path,
                                  "encoding", "base64"));
            free(enc);
        }
        fprintf(m, "%s\n", line);
        free(line);
    }
    fclose(m);
    if (rc) { free(buf); return NULL; }
    return buf;
}

/* 5. the commit: the last request */
static int commit(pusher *p, upfile *u, int n) {
    hub_push_file *files = calloc((size_t)n, sizeof *files);
    bool *lfs = calloc((size_t)n, sizeof *lfs);
    char (*sha)[65] = calloc((size_t)n, sizeof *sha);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (u[i].ignore) continue;
        files[m] = *u[i].f;
        lfs[m] = u[i].lfs;
        memcpy(sha[m], u[i].sha, 65);
        m++;
        if (u[i].lfs) p->res->n_lfs++;
        else p->res->n_regular++, progress(p, u[i].f->path, u[i].size);
    }
    char *body = hub_commit_ndjson(p->o->commit_message, p->o->commit_description, files, lfs, (const char(*)[65])sha, m);
    int rc = body ? 0 : err_code() ? err_code() : ERR_STAGE;
    char *url = api_url(p, "commit");
    resp r = {0};
    if (!rc) {
        req q = {.method = "POST", .url = url, .content_type = "application/x-ndjson", .body = body, .body_len = strlen(body)};
        rc = request(p, &q, &r);
        if (!rc && r.status != 200 && r.status != 201) rc = status_error(p, "committing", &r, NULL);
    }
    json_t *j = rc ? NULL : parse_json(&r, "commit");
    if (!rc && !j) rc = ERR_DATA;
    if (!rc) {
        const char *oid = json_string_value(json_object_get(j, "commitOid")), *cu = json_string_value(json_object_get(j, "commitUrl"));
        if (!oid) rc = err_set(ERR_DATA, "commit: the hub's answer has no commitOid");
        else {
            p->res->commit_oid = strdup(oid);
            p->res->commit_url = cu ? strdup(cu) : NULL;
        }
    }
    json_decref(j);
    free(r.body.data);
    free(url);
    free(body);
    free(files);
    free(lfs);
    free(sha);
    return rc;
}

static int describe(upfile *u) {
    struct stat st;
    if (stat(u->f->local, &st) || !S_ISREG(st.st_mode)) return err_errno(ERR_STAGE, "cannot upload '%s': not a readable file", u->f->local);
    u->size = (int64_t)st.st_size;
    FILE *f = fopen(u->f->local, "rb");
    if (!f) return err_errno(ERR_STAGE, "cannot open '%s'", u->f->local);
    u->sample_len = (int)fread(u->sample, 1, SAMPLE_BYTES, f);
    fclose(f);
    return sha256_file_hex(u->f->local, u->sha);
}

int hub_push(const hub_config *cfg, const hub_push_opts *o, hub_push_result *res) {
    memset(res, 0, sizeof *res);
    if (!hub_repo_id_valid(o->repo)) return err_set(ERR_USAGE, "'%s' is not a repo id (expected org/name)", o->repo);
    if (o->revision && (!*o->revision || !hub_path_safe(o->revision)))
        return err_set(ERR_USAGE, "unusable revision '%s'", o->revision);
    if (cfg->offline) return err_set(ERR_NETWORK, "HF_HUB_OFFLINE is set: uploads need the network");
    if (!o->n_files) return err_set(ERR_USAGE, "nothing to upload");
    /* QLORA_HUB_RETRY_BASE_S: the first backoff (tests use a short one) */
    hub_config c2 = *cfg;
    const char *rb = getenv("QLORA_HUB_RETRY_BASE_S");
    if (rb && atof(rb) >= 0) c2.retry_base_s = atof(rb);
    pusher p = {&c2, o, res, 0, 0};
    upfile *u = calloc((size_t)o->n_files, sizeof *u);
    int rc = 0;
    for (int i = 0; i < o->n_files && !rc; i++) {
        if (!hub_path_safe(o->files[i].path)) rc = err_set(ERR_USAGE, "'%s' is not a safe path in a repo", o->files[i].path);
        u[i].f = &o->files[i];
        if (!rc) rc = describe(&u[i]);
        p.total += u[i].size;
    }
    if (!rc) rc = create_repo(&p);
    if (!rc) rc = create_branch(&p);
    if (!rc) rc = preupload(&p, u, o->n_files);
    if (!rc) rc = lfs_upload(&p, u, o->n_files);
    if (!rc) rc = commit(&p, u, o->n_files);
    free(u);
    if (rc) hub_push_result_free(res);
    return rc;
}

void hub_push_result_free(hub_push_result *r) {
    free(r->commit_oid);
    free(r->commit_url);
    r->commit_oid = r->commit_url = NULL;
}

/* ---- the model card ---- */

static void yaml_str(FILE *f, const char *s) { /* a JSON string is a YAML double-quoted scalar */
    json_t *j = json_string(s ? s : "");
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(q ? q : "\"\"", f);
    free(q);
    json_decref(j);
}

char *hub_model_card(const hub_card *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fputs("---\n", f);
    if (c->base_model) fputs("base_model: ", f), yaml_str(f, c->base_model), fputc('\n', f);
    fputs("library_name: ", f);
    yaml_str(f, c->library ? c->library : "transformers");
    fputs("\ntags:\n- qlora-run\n- qlora\n- lora\n", f);
    if (json_array_size(c->datasets)) {
        fputs("datasets:\n", f);
        size_t i;
        json_t *d;
        json_array_foreach(c->datasets, i, d) fputs("- ", f), yaml_str(f, json_string_value(d)), fputc('\n', f);
    }
    fputs("---\n\n# ", f);
    fputs(c->repo ? c->repo : "model", f);
    fputs("\n\n", f);
    if (c->base_model) fprintf(f, "A QLoRA fine-tune of [%s](https://huggingface.co/%s)", c->base_model, c->base_model);
    else fputs("A QLoRA fine-tune", f);
    fprintf(f, ", trained by qlora-run%s%s from the recipe `%s`.\n\n", c->program_version ? " " : "",
            c->program_version ? c->program_version : "", c->recipe ? c->recipe : "(none)");
    if (json_object_size(c->metrics)) {
        fputs("## Evaluation\n\n| metric | value |\n| --- | --- |\n", f);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)c->metrics, k, v) fprintf(f, "| %s | %.6g |\n", k, json_number_value(v));
        fputc('\n', f);
    }
    if (json_object_size(c->params)) {
        fputs("## Training parameters\n\n| parameter | value |\n| --- | --- |\n", f);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)c->params, k, v) {
            if (json_is_null(v)) continue;
            char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            fprintf(f, "| %s | `%s` |\n", k, s ? s : "");
            free(s);
        }
        fputc('\n', f);
    }
    if (json_array_size(c->files)) {
        fputs("## Files\n\n", f);
        size_t i;
        json_t *x;
        json_array_foreach(c->files, i, x) fprintf(f, "- `%s`\n", json_string_value(x));
        fputc('\n', f);
    }
    if (c->library && !strcmp(c->library, "peft") && c->base_model)
        fprintf(f, "## Use\n\n```python\nfrom peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"%s\")\n```\n",
                c->repo ? c->repo : "");
    fclose(f);
    return buf;
}

/* ---- a folder's files ---- */

static int list_into(const char *root, const char *rel, const char *prefix, hub_push_file **out, int *n, int *cap) {
    char *dir = *rel ? fs_join(root, rel) : strdup(root);
    DIR *d = opendir(dir);
    if (!d) {
        int rc = err_errno(ERR_STAGE, "cannot read folder '%s'", dir);
        free(dir);
        return rc;
    }
    int rc = 0;
    struct dirent *e;
    char **names = NULL;
    size_t nn = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        names = realloc(names, (nn + 1) * sizeof *names);
        names[nn++] = strdup(e->d_name);
    }
    closedir(d);
    if (nn) qsort(names, nn, sizeof *names, strcmp_ptr);
    for (size_t i = 0; i < nn; i++) {
        char *r2 = *rel ? fs_join(rel, names[i]) : strdup(names[i]), *full = fs_join(root, r2);
        struct stat st;
        if (rc || names[i][0] == '.' || (!*rel && !strcmp(names[i], "manifest.json"))) { /* hidden files; an artifact's manifest */
        } else if (stat(full, &st)) {
            rc = err_errno(ERR_STAGE, "cannot read '%s'", full);
        } else if (S_ISDIR(st.st_mode)) {
            rc = list_into(root, r2, prefix, out, n, cap);
        } else if (S_ISREG(st.st_mode)) {
            if (*n == *cap) *cap = *cap ? 2 * *cap : 16, *out = realloc(*out, (size_t)*cap * sizeof **out);
            char *path = *prefix ? fs_join(prefix, r2) : strdup(r2);
            (*out)[(*n)++] = (hub_push_file){full, path};
            full = NULL;
        }
        free(full);
        free(r2);
        free(names[i]);
    }
    free(names);
    free(dir);
    return rc;
}

int hub_push_list_folder(const char *dir, const char *path_in_repo, hub_push_file **files, int *n) {
    *files = NULL;
    *n = 0;
    int cap = 0;
    int rc = list_into(dir, "", path_in_repo ? path_in_repo : "", files, n, &cap);
    if (rc) hub_push_files_free(files, n);
    return rc;
}

void hub_push_files_free(hub_push_file **files, int *n) {
    for (int i = 0; i < *n; i++) free((char *)(*files)[i].local), free((char *)(*files)[i].path);
    free(*files);
    *files = NULL;
    *n = 0;
}
