/* transfer.c: see transfer.h. */
#define _GNU_SOURCE
#include "net/transfer.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"

static bool is_hex(const char *s, size_t n) {
    if (strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i])) return false;
    return true;
}

/* ---------- response headers ---------- */

void net_headers_init(net_headers *h) {
    memset(h, 0, sizeof *h);
    h->content_length = -1;
}

void net_headers_free(net_headers *h) {
    free(h->etag);
    free(h->location);
    free(h->retry_after);
    free(h->content_range);
    for (int i = 0; i < 2 * h->n_other; i++) free(h->other[i]);
    free(h->other);
    net_headers_init(h);
}

static void set_str(char **dst, const char *v, size_t n) {
    free(*dst);
    *dst = strndup(v, n);
}

static void set_other(net_headers *h, const char *name, size_t nlen, const char *v, size_t vlen) {
    for (int i = 0; i < h->n_other; i++)
        if (strlen(h->other[2 * i]) == nlen && !strncasecmp(h->other[2 * i], name, nlen)) {
            set_str(&h->other[2 * i + 1], v, vlen);
            return;
        }
    char **grown = realloc(h->other, (size_t)(h->n_other + 1) * 2 * sizeof *grown);
    if (!grown) return;
    h->other = grown;
    char *n = strndup(name, nlen);
    for (char *p = n; p && *p; p++) *p = (char)tolower((unsigned char)*p);
    h->other[2 * h->n_other] = n;
    h->other[2 * h->n_other + 1] = strndup(v, vlen);
    h->n_other++;
}

void net_headers_line(net_headers *h, const char *line, size_t len) {
    if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
        net_headers_free(h);
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
    if (IS("etag")) set_str(&h->etag, v, vlen);
    else if (IS("location")) set_str(&h->location, v, vlen);
    else if (IS("retry-after")) set_str(&h->retry_after, v, vlen);
    else if (IS("content-range")) set_str(&h->content_range, v, vlen);
    else if (IS("content-length")) {
        char *s = strndup(v, vlen);
        char *e;
        long long x = s && *s && vlen < 32 ? strtoll(s, &e, 10) : -1;
        if (x >= 0 && !*e) h->content_length = x;
        free(s);
    } else set_other(h, line, nlen, v, vlen);
#undef IS
}

const char *net_headers_get(const net_headers *h, const char *name) {
    for (int i = 0; i < h->n_other; i++)
        if (!strcmp(h->other[2 * i], name)) return h->other[2 * i + 1];
    return NULL;
}

int64_t net_headers_size(const net_headers *h, const char *name) {
    const char *v = net_headers_get(h, name);
    if (!v || !*v || strlen(v) >= 32) return -1;
    char *e;
    long long x = strtoll(v, &e, 10);
    return *e || x < 0 ? -1 : x;
}

static size_t on_header(char *buf, size_t size, size_t n, void *user) {
    net_headers_line(user, buf, size * n);
    return size * n;
}

/* ---------- the retry policy ---------- */

double net_retry_after_parse(const char *value, double now_epoch) {
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

static double backoff_s(const net_policy *pol, int attempt) { return net_backoff_s(pol->retry_base_s, attempt); }

static double retry_delay(const net_policy *pol, const net_headers *h, int attempt) {
    if (h && h->status == 429) {
        double ra = net_retry_after_parse(h->retry_after, (double)time(NULL));
        if (ra >= 0) return ra > NET_RETRY_AFTER_CAP_S ? NET_RETRY_AFTER_CAP_S : ra;
    }
    return backoff_s(pol, attempt);
}

/* ---------- one easy handle, set up the same way everywhere ---------- */

static struct curl_slist *base_headers(const net_policy *pol, const char *url, bool send_token) {
    struct curl_slist *l = NULL;
    l = curl_slist_append(l, "Accept-Encoding: identity");
    if (send_token && pol->token) {
        char *a = net_url_origin(url), *b = pol->token_url ? net_url_origin(pol->token_url) : NULL;
        if (a && b && !strcmp(a, b)) {
            char *line = NULL;
            if (asprintf(&line, "Authorization: Bearer %s", pol->token) >= 0) {
                l = curl_slist_append(l, line);
                memset(line, 0, strlen(line));
                free(line);
            }
        }
        free(a);
        free(b);
    }
    return l;
}

/* ---------- blocking requests ---------- */

int net_request(const net_policy *pol, const char *url0, bool head, bool send_token, volatile int *interrupted,
                net_headers *h, net_buf *body, bool *unreachable) {
    net_init();
    char *url = strdup(url0);
    char errbuf[CURL_ERROR_SIZE];
    int rc = 0, attempt = 0, hops = 0;
    CURL *e = curl_easy_init();
    for (;;) {
        if (interrupted && *interrupted) { rc = err_set(ERR_INTERRUPTED, "interrupted"); break; }
        net_headers_free(h);
        body->len = 0;
        struct curl_slist *hdrs = base_headers(pol, url, send_token);
        curl_easy_reset(e);
        net_easy_setup(e, &pol->http, url, hdrs, errbuf);
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
            if (!net_curl_retryable(c) || c == CURLE_COULDNT_CONNECT || attempt > pol->max_retries) {
                rc = net_curl_error(c, errbuf, url, attempt);
                if (unreachable) *unreachable = c != CURLE_PEER_FAILED_VERIFICATION && c != CURLE_SSL_CACERT_BADFILE;
                break;
            }
            delay = backoff_s(pol, attempt);
        } else {
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &h->status);
            if (h->status >= 300 && h->status < 400 && h->location) {
                char *next = net_url_resolve(url, h->location);
                if (!next || ++hops > NET_MAX_HOPS) {
                    free(next);
                    rc = err_set(ERR_NETWORK, "too many or broken redirects from '%s'", url0);
                    break;
                }
                free(url);
                url = next;
                attempt = 0;
                continue;
            }
            if (net_status_retryable(h->status) && attempt <= pol->max_retries) delay = retry_delay(pol, h, attempt);
        }
        if (delay < 0) break;
        for (double end = clock_now_s() + delay; clock_now_s() < end;) {
            if (interrupted && *interrupted) break;
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    curl_easy_cleanup(e);
    free(url);
    return rc;
}

/* ---------- checksums ---------- */

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

int net_checksum_file(const char *path, const char *checksum, bool *ok) {
    *ok = true;
    if (is_hex(checksum, 64)) {
        char got[65];
        int rc = sha256_file_hex(path, got);
        if (rc) return rc;
        *ok = !strcasecmp(got, checksum);
    } else if (is_hex(checksum, 40)) {
        char got[41];
        int rc = git_blob_sha1_hex(path, got);
        if (rc) return rc;
        *ok = !strcasecmp(got, checksum);
    }
    return 0;
}

/* ---------- the sink ---------- */

/* Where the bytes of a GET go: the partial file and, when the file has one, the checksum, computed
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

typedef struct net_sink {
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

/* ---------- one transfer ---------- */

typedef net_xfer xfer;
typedef net_engine engine;

static void xfer_free(xfer *x) {
    if (!x) return;
    free(x->name);
    free(x->url);
    free(x->dest);
    free(x->part);
    free(x->lock_path);
    free(x->errbody.data);
    net_headers_free(&x->h);
    int64_t hashed;
    xsink_finish(&x->sink, &hashed);
    if (x->fd >= 0) close(x->fd);
    if (x->md) EVP_MD_CTX_free(x->md);
    if (x->lock_fd >= 0) fs_unlock(&x->lock_fd);
    if (x->user_free) x->user_free(x->user);
    free(x);
}

/* Start (or continue) the streaming checksum at offset `from` of the partial file: 64 hex is
 * SHA-256 of the bytes; 40 hex git's SHA-1 of "blob <size>\0" + bytes. A resumed file's first
 * part is read back once. */
static bool xfer_hash_begin(xfer *x, int64_t from) {
    if (x->md && x->md_off == from) return true;
    const EVP_MD *type = is_hex(x->checksum, 64)                  ? EVP_sha256()
                         : is_hex(x->checksum, 40) && x->size >= 0 ? EVP_sha1()
                                                                   : NULL;
    if (!type) return true;
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
    double t = clock_now_s();
    if (!force && t - g->t_last_progress < 0.1) return;
    g->t_last_progress = t;
    net_progress p = {.file = file};
    for (int i = 0; i < g->n && !p.file; i++) /* name a file that is moving */
        if (g->x[i]->state == NET_X_RUNNING && g->x[i]->get_phase) p.file = g->x[i]->name;
    int64_t dl = 0;
    for (int i = 0; i < g->n; i++) {
        xfer *x = g->x[i];
        if (x->size > 0) p.total += x->size;
        p.files_total += x->state != NET_X_MISSING;
        if (x->state == NET_X_DONE) { p.files_done++; p.done += x->size > 0 ? x->size : x->have; }
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
    g->progress(g->progress_user, &p);
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

static void schedule(xfer *x, net_xstate st, double delay) {
    x->state = st;
    x->not_before = clock_now_s() + delay;
}

static int xfer_start(engine *g, xfer *x) {
    x->get_phase = x->state == NET_X_WAIT_GET;
    net_headers_free(&x->h);
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
    x->hdrs = base_headers(g->pol, x->url, x->send_token);
    if (x->get_phase && x->have > 0) {
        char range[64];
        snprintf(range, sizeof range, "Range: bytes=%lld-", (long long)x->have);
        x->hdrs = curl_slist_append(x->hdrs, range);
    }
    net_easy_setup(x->easy, &g->pol->http, x->url, x->hdrs, x->errbuf);
    curl_easy_setopt(x->easy, CURLOPT_PRIVATE, x);
    curl_easy_setopt(x->easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, &x->h);
    if (x->get_phase) {
        curl_easy_setopt(x->easy, CURLOPT_WRITEFUNCTION, on_body_file);
        curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, x);
    } else {
        curl_easy_setopt(x->easy, CURLOPT_NOBODY, 1L);
    }
    x->state = NET_X_RUNNING;
    if (curl_multi_add_handle(g->multi, x->easy) != CURLM_OK) return err_set(ERR_STAGE, "curl_multi_add_handle failed");
    return 0;
}

/* the file is in place (downloaded or cached): the caller's last step, and done */
static int xfer_finish(engine *g, xfer *x) {
    if (x->lock_fd >= 0) fs_unlock(&x->lock_fd);
    if (g->hooks.file_done) {
        int rc = g->hooks.file_done(g, x);
        if (rc) return rc;
    }
    x->state = NET_X_DONE;
    engine_emit(g, x->name, false);
    return 0;
}

static int xfer_claim(engine *g, xfer *x);

/* After a HEAD: the caller names the destination; reuse it if it is there, else take the lock
 * and queue the GET of download_url. */
static int xfer_after_head(engine *g, xfer *x, const char *download_url) {
    int rc = g->hooks.head_done(g, x);
    if (rc) return rc;
    if (strcmp(download_url, x->url)) {
        free(x->url);
        x->url = strdup(download_url);
    }
    x->hops = 0;
    return xfer_claim(g, x);
}

/* Reuse the destination if it is there; else take its lock (another process, or another file of
 * ours with the same content, may be fetching it: then wait) and queue the GET. */
static int xfer_claim(engine *g, xfer *x) {
    if (fs_size(x->dest) == x->size) { /* already in the cache (ours or Python's) */
        x->cached = true;
        return xfer_finish(g, x);
    }
    if (x->lock_path && x->lock_fd < 0) {
        int rc = fs_lock(x->lock_path, false, &x->lock_fd);
        if (rc == ERR_LOCKED) {
            err_clear();
            schedule(x, NET_X_WAIT_LOCK, 0.2);
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
    schedule(x, NET_X_WAIT_GET, 0);
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
    if (x->checksum[0]) {
        bool ok = true;
        if (x->md && x->md_off == x->have) {
            unsigned char md[EVP_MAX_MD_SIZE];
            unsigned int n = 0;
            char hex[2 * EVP_MAX_MD_SIZE + 1];
            EVP_DigestFinal_ex(x->md, md, &n);
            for (unsigned i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", md[i]);
            ok = !strcasecmp(hex, x->checksum);
            EVP_MD_CTX_free(x->md);
            x->md = NULL;
        } else if ((rc = net_checksum_file(x->part, x->checksum, &ok))) {
            return rc;
        }
        if (!ok) {
            unlink(x->part); /* never keep bytes that fail their checksum */
            if (++x->checksum_failures >= 2)
                return err_set(ERR_DATA, "'%s': the downloaded bytes do not match the server's checksum %s twice; "
                                         "the partial file was deleted (a broken proxy or mirror?)", x->name, x->checksum);
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
    net_xstate again = x->get_phase ? NET_X_WAIT_GET : NET_X_WAIT_HEAD;

    if (c != CURLE_OK && !x->range_mismatch) {
        free(redirect);
        if (x->get_phase && x->have > x->req_have) x->attempts = 0; /* a cut after progress: resume freely */
        /* a refused connection before any answer is a server that is down, not a blip: fail at once
         * (the caller may have the file cached); during the download it is worth a retry */
        bool down = c == CURLE_COULDNT_CONNECT && !x->get_phase;
        if (!net_curl_retryable(c) || down || ++x->attempts > g->pol->max_retries) {
            g->unreachable = c == CURLE_COULDNT_CONNECT || c == CURLE_COULDNT_RESOLVE_HOST ||
                             c == CURLE_COULDNT_RESOLVE_PROXY || c == CURLE_OPERATION_TIMEDOUT;
            return net_curl_error(c, x->errbuf, x->url, x->attempts);
        }
        schedule(x, again, backoff_s(g->pol, x->attempts));
        return 0;
    }
    if (x->range_mismatch) { free(redirect); schedule(x, again, 0); return 0; }
    if (redirect) {
        if (++x->hops > NET_MAX_HOPS) { free(redirect); return err_set(ERR_NETWORK, "'%s': too many redirects", x->name); }
        char *a = net_url_origin(redirect), *b = net_url_origin(x->url);
        bool same = a && b && !strcmp(a, b);
        free(a);
        free(b);
        /* a HEAD sent to the CDN: its URL is the download URL, this answer is the HEAD's */
        if (!x->get_phase && g->hooks.head_done && !same) {
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
            if (!g->hooks.head_done) { schedule(x, NET_X_WAIT_GET, 0); return 0; }
            return xfer_after_head(g, x, x->url);
        }
        if (st == 416) { /* our partial file is already whole, or not this file at all */
            if (x->size < 0 || x->have != x->size) { unlink(x->part); x->have = 0; }
        }
        rc = xfer_after_get(g, x);
        if (rc == -1) {
            if (++x->attempts > g->pol->max_retries)
                return err_set(ERR_NETWORK, "'%s': the download kept stopping early (%lld of %lld bytes) after %d "
                                            "attempts", x->name, (long long)x->have, (long long)x->size, x->attempts);
            schedule(x, NET_X_WAIT_GET, x->checksum_failures && x->have == 0 ? 0 : backoff_s(g->pol, x->attempts));
            return 0;
        }
        return rc;
    }
    if (net_status_retryable(st) && ++x->attempts <= g->pol->max_retries) {
        schedule(x, again, retry_delay(g->pol, &x->h, x->attempts));
        return 0;
    }
    if (st == 404 && x->optional) {
        x->state = NET_X_MISSING;
        return 0;
    }
    if (g->hooks.http_failed) return g->hooks.http_failed(g, x);
    return err_set(ERR_NETWORK, "'%s': the server answered HTTP %ld", x->name, st);
}

int net_engine_run(engine *g) {
    int rc = 0;
    for (;;) {
        if (g->interrupted && *g->interrupted) { rc = err_set(ERR_INTERRUPTED, "download interrupted"); break; }
        double t = clock_now_s(), wait = 1.0;
        int running = 0, pending = 0;
        for (int i = 0; i < g->n; i++) running += g->x[i]->state == NET_X_RUNNING;
        for (int i = 0; i < g->n && !rc; i++) {
            xfer *x = g->x[i];
            if (x->state != NET_X_WAIT_HEAD && x->state != NET_X_WAIT_GET && x->state != NET_X_WAIT_LOCK) continue;
            pending++;
            if (x->not_before > t) { if (x->not_before - t < wait) wait = x->not_before - t; continue; }
            if (x->state == NET_X_WAIT_LOCK) { rc = xfer_claim(g, x); continue; }
            if (running >= g->pol->parallel) continue;
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

void net_engine_init(engine *g, const net_policy *pol) {
    memset(g, 0, sizeof *g);
    net_init();
    g->pol = pol;
    g->multi = curl_multi_init();
    /* separate connections for parallel files: bulk transfers multiplexed on one HTTP/2
     * connection share its window and go slower */
    curl_multi_setopt(g->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_NOTHING);
    curl_multi_setopt(g->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)pol->parallel);
}

net_xfer *net_engine_add(engine *g, const char *name, const char *url) {
    xfer *x = calloc(1, sizeof *x);
    x->name = strdup(name);
    x->url = strdup(url);
    x->size = -1;
    x->lock_fd = -1;
    x->fd = -1;
    x->errbody.limit = 8192;
    net_headers_init(&x->h);
    g->x = realloc(g->x, (size_t)(g->n + 1) * sizeof *g->x);
    g->x[g->n++] = x;
    return x;
}

void net_engine_free(engine *g) {
    for (int i = 0; i < g->n; i++) xfer_free(g->x[i]);
    free(g->x);
    if (g->multi) curl_multi_cleanup(g->multi);
    memset(g, 0, sizeof *g);
}
