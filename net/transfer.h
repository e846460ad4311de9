/* transfer.h: the transfer engine. Many downloads at once on one curl multi handle, each file a
 * small state machine (HEAD -> GET -> check -> rename), on the plumbing of http.h:
 *   - a GET writes "<dest>.incomplete" (x->part) and resumes it with Range after a cut; a server
 *     that resumes elsewhere, or sends the whole file again, is followed;
 *   - transient failures (timeouts, 429, 5xx) are retried with backoff, scheduled by time, so a
 *     slow or rate-limited file never blocks the others; a 429's Retry-After is honoured;
 *   - the checksum a file must have (SHA-256, or git's blob SHA-1) is computed while the bytes
 *     arrive, and a file that fails it is deleted, never renamed into place;
 *   - a destination is claimed under a lock file, so two processes (or two files of one call
 *     with the same content) never write it at once: the second waits and then reuses it;
 *   - redirects are followed by hand and the token goes only to its own origin.
 * It knows no protocol above HTTP: what a HEAD's answer means (where the file goes, its size
 * and checksum), what to do once a file is in place, and what an HTTP error means to the user
 * are the caller's, through net_engine_hooks (hub/ is the caller).
 *
 * Ownership: the engine owns the transfers added to it (net_engine_free frees them, and their
 * user data through user_free); every char * field is malloc'd. */
#ifndef NET_TRANSFER_H
#define NET_TRANSFER_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/http.h"

#define NET_MAX_HOPS 10              /* redirects followed for one request */
#define NET_RETRY_AFTER_CAP_S 120.0  /* the longest Retry-After we wait */

/* The headers of a response, as libcurl hands them over. A new status line (after a
 * 100-continue or a followed redirect) starts a fresh set. The common ones are fields; the others
 * are kept by name (net_headers_get). A repeated header keeps its last value. */
typedef struct net_headers {
    long status;
    char *etag, *location, *retry_after, *content_range;
    int64_t content_length; /* -1 if absent */
    char **other;           /* name (lowercase), value, name, value, ... */
    int n_other;            /* pairs */
} net_headers;
void net_headers_init(net_headers *h);
void net_headers_free(net_headers *h); /* then empty again, as after init */
/* One header line ("Name: value\r\n", not NUL-terminated), or a status line. */
void net_headers_line(net_headers *h, const char *line, size_t len);
/* The value of a header kept by name (name in lowercase), or NULL. */
const char *net_headers_get(const net_headers *h, const char *name);
/* A size header: a non-negative decimal, or -1. */
int64_t net_headers_size(const net_headers *h, const char *name);

/* Retry-After: seconds or an HTTP date; -1 if unparseable. */
double net_retry_after_parse(const char *value, double now_epoch);

/* How the transfers of one engine (and blocking requests) behave. */
typedef struct net_policy {
    net_opts http;         /* timeouts, CA file */
    int parallel;          /* concurrent transfers */
    int max_retries;       /* per request, for transient failures */
    double retry_base_s;   /* first backoff; doubles each time, capped at NET_BACKOFF_CAP_S */
    const char *token;     /* a bearer token, or NULL: sent only to token_url's origin */
    const char *token_url;
} net_policy;

/* Progress over all files of one engine. Called at most ~10 times a second and once at the end. */
typedef struct net_progress {
    const char *file;      /* the file that moved last */
    int64_t done, total;   /* bytes; total grows while sizes become known */
    double rate;           /* bytes/s over the last second or so */
    int files_done, files_total;
} net_progress;
typedef void (*net_progress_fn)(void *user, const net_progress *p);

/* GET (or HEAD) url with retries on transient failures; redirects followed by hand, the token
 * only ever sent to its origin. On return h holds the final answer's headers and body its
 * content; a non-2xx final answer is left for the caller to explain (returns 0). *unreachable
 * tells a failure to get any answer (no retry for a refused connection: the caller may have the
 * answer cached). Returns 0, ERR_NETWORK or ERR_INTERRUPTED. */
int net_request(const net_policy *pol, const char *url, bool head, bool send_token, volatile int *interrupted,
                net_headers *h, net_buf *body, bool *unreachable);

/* Is the file at path what the checksum says? 64 hex: its SHA-256; 40 hex: git's blob id
 * (SHA-1 of "blob <size>\0" + the bytes); anything else checks nothing (*ok true). */
int net_checksum_file(const char *path, const char *checksum, bool *ok);

typedef enum net_xstate {
    NET_X_WAIT_HEAD, /* queued: a HEAD first, then the hooks' head_done names the destination */
    NET_X_WAIT_GET,  /* queued: the GET */
    NET_X_WAIT_LOCK, /* another writer holds the destination's lock */
    NET_X_RUNNING,
    NET_X_DONE,
    NET_X_MISSING    /* optional, and the server said 404 */
} net_xstate;

/* One file. The caller sets name, url, state (NET_X_WAIT_HEAD or NET_X_WAIT_GET) and, for a GET
 * without a HEAD, dest and part; optionally size, checksum, lock_path, optional, send_token, user.
 * The rest is the engine's. */
typedef struct net_xfer {
    char *name;        /* shown in messages and progress */
    char *url;         /* the current request */
    char *dest;        /* final path */
    char *part;        /* the partial file, renamed to dest when complete and checked */
    char *lock_path;   /* NULL: no lock */
    int64_t size;      /* expected size, -1 unknown */
    char checksum[130]; /* hex, see net_checksum_file; "" none */
    bool optional;     /* a 404 leaves it NET_X_MISSING instead of failing */
    bool send_token;
    void *user;        /* the caller's, freed with user_free (may be NULL) */
    void (*user_free)(void *user);
    /* the engine's */
    net_xstate state;
    bool get_phase;
    bool cached;       /* dest was already there (or another writer finished it) */
    int attempts, hops, checksum_failures;
    double not_before;
    CURL *easy;
    struct curl_slist *hdrs;
    char errbuf[CURL_ERROR_SIZE];
    net_headers h;     /* the last answer's headers */
    net_buf errbody;
    int fd;            /* the open partial file, -1 if none */
    void *md;          /* the running checksum (an EVP_MD_CTX) */
    int64_t md_off;    /* bytes of part that md has seen */
    struct net_sink *sink; /* while a GET writes */
    int64_t have;      /* bytes in part */
    int64_t start_have;
    int64_t req_have;  /* have when the current request started: progress resets the retry count */
    bool write_failed, range_mismatch;
    int write_errno;   /* why the write failed (ENOSPC, ...) */
    int lock_fd;
} net_xfer;

typedef struct net_engine net_engine;

/* What the caller decides. Each returns 0 or an error (err_set) that stops the engine. */
typedef struct net_engine_hooks {
    /* A HEAD answered 200, or redirected to another origin (download_url is then the redirect's
     * target, else x->url): set x->dest, part, size, checksum and lock_path from x->h. The engine
     * then reuses dest if it has the size, or takes the lock and GETs download_url. */
    int (*head_done)(net_engine *g, net_xfer *x);
    /* The file is in place (downloaded, or cached). NULL: nothing to do. */
    int (*file_done)(net_engine *g, net_xfer *x);
    /* The server's final answer is an error (x->h has its headers): the message. */
    int (*http_failed)(net_engine *g, net_xfer *x);
} net_engine_hooks;

struct net_engine {
    const net_policy *pol;
    net_engine_hooks hooks;
    void *user;                /* for the hooks */
    CURLM *multi;
    net_xfer **x;
    int n;
    net_progress_fn progress;
    void *progress_user;
    volatile int *interrupted; /* polled; may be NULL */
    int64_t downloaded;        /* bytes received by net_engine_run */
    bool unreachable;          /* the failure was getting no answer at all */
    double t_last_progress, rate, rate_t, rate_bytes;
};

/* pol must outlive the engine. */
void net_engine_init(net_engine *g, const net_policy *pol);
/* A new transfer (the caller sets the rest of it), added to the engine. */
net_xfer *net_engine_add(net_engine *g, const char *name, const char *url);
/* Run every transfer to the end; on the first hard failure stop the rest (their partial files
 * stay for a later resume) and return its error. */
int net_engine_run(net_engine *g);
void net_engine_free(net_engine *g);

#endif
