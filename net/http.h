/* http.h: the libcurl plumbing every HTTP user shares (the transfer engine in transfer.h, the
 * hub client in hub/, the Lua hooks' qlora.http_post through the runner): one process-wide curl
 * init, URL helpers, the retry policy (which failures are transient, exponential backoff), one
 * way to set up an easy handle (TLS verification on, http/https only, timeouts, no signals), curl
 * errors turned into messages that say what to do, and a bounded in-memory response body.
 *
 * The hub protocol itself (its headers, its cache layout, its error codes) is in hub/; nothing
 * here knows about it. Ownership: every char * returned is malloc'd and the caller frees it. */
#ifndef NET_HTTP_H
#define NET_HTTP_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* curl_global_init, once per process, from any thread. Every user of libcurl calls it first. */
void net_init(void);

/* "scheme://host:port" of a URL with the host lowercased (NULL if unparsable): credentials go
 * only to the origin they belong to. */
char *net_url_origin(const char *url);
/* base + relative reference -> absolute URL (NULL if unparsable). */
char *net_url_resolve(const char *base, const char *ref);

/* How a handle is set up. timeout_s bounds the connect and a transfer that stalls (no byte for
 * that long); ca_file (may be NULL) replaces the system's CA bundle. */
typedef struct net_opts {
    long timeout_s;
    const char *ca_file;
} net_opts;

/* URL, headers (borrowed until the transfer ends), user agent, protocols, TLS checks, timeouts,
 * no redirects (callers follow them by hand, so credentials never leave their origin), and
 * errbuf (CURL_ERROR_SIZE bytes) for libcurl's own message. */
void net_easy_setup(CURL *e, const net_opts *o, const char *url, struct curl_slist *hdrs, char *errbuf);

/* The retry policy: transport failures worth another attempt, HTTP statuses worth one (429 and
 * the 5xx of an overloaded server), and the delay before attempt n (1-based): base * 2^(n-1),
 * capped at NET_BACKOFF_CAP_S. */
#define NET_BACKOFF_CAP_S 30.0
bool net_curl_retryable(CURLcode c);
bool net_status_retryable(long status);
double net_backoff_s(double base_s, int attempt);

/* A libcurl failure as an ERR_NETWORK message: the host, what happened, what to try
 * (certificate, name resolution, attempts). Returns ERR_NETWORK. */
int net_curl_error(CURLcode c, const char *errbuf, const char *url, int attempts);

/* Server text made safe to print: control characters become '?', cut to cap - 1 bytes. */
void net_clean_text(char *dst, size_t cap, const char *src);

/* A response body in memory, refused (the transfer fails) past limit bytes. data is always
 * NUL-terminated once anything arrived. Free data with free(). */
typedef struct net_buf {
    char *data;
    size_t len, cap, limit;
} net_buf;
size_t net_buf_write(char *p, size_t size, size_t n, void *buf); /* a CURLOPT_WRITEFUNCTION */

/* One POST (no retries: webhooks and notifications are not idempotent) with the given header
 * lines ("Name: value"), the body, and a whole-request timeout. *status gets the HTTP status and
 * *resp (malloc'd, NUL-terminated, *resp_len bytes, at most limit) the response body. Returns 0,
 * or ERR_NETWORK with a message. Its signature is the Lua host's http_post client
 * (lua_host_set_http_post), which the program sets to this. */
int net_post(const char *url, const char *const *headers, int n_headers, const char *body, size_t body_len,
             long timeout_s, long *status, char **resp, size_t *resp_len, size_t limit);

#endif
