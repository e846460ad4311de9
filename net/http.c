/* http.c: see http.h. */
#define _GNU_SOURCE
#include "net/http.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/lua_host.h"

#ifndef QLORA_VERSION
#define QLORA_VERSION "dev"
#endif

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }
void net_init(void) { pthread_once(&curl_once, curl_init_once); }

char *net_url_origin(const char *url) {
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *out = NULL;
    if (u && !curl_url_set(u, CURLUPART_URL, url, 0) && !curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) &&
        !curl_url_get(u, CURLUPART_HOST, &host, 0) && !curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT)) {
        for (char *p = host; *p; p++) *p = (char)tolower((unsigned char)*p);
        if (asprintf(&out, "%s://%s:%s", scheme, host, port) < 0) out = NULL;
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    if (u) curl_url_cleanup(u);
    return out;
}

char *net_url_resolve(const char *base, const char *ref) {
    CURLU *u = curl_url();
    char *abs = NULL, *out = NULL;
    if (u && !curl_url_set(u, CURLUPART_URL, base, 0) && !curl_url_set(u, CURLUPART_URL, ref, 0) &&
        !curl_url_get(u, CURLUPART_URL, &abs, 0))
        out = strdup(abs);
    curl_free(abs);
    if (u) curl_url_cleanup(u);
    return out;
}

void net_easy_setup(CURL *e, const net_opts *o, const char *url, struct curl_slist *hdrs, char *errbuf) {
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "qlora-run/" QLORA_VERSION " (libcurl)");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (o->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, o->timeout_s);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->timeout_s);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    /* the curl tool's receive buffer: with 512 KB the loopback benchmark ran ~8% slower (median
     * 976 against 1060 MB/s over 4 rounds; 32 KB: 1057), the bigger reads leaving the socket
     * full longer and the bytes out of the cache by the time they are copied on */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 100L * 1024);
    errbuf[0] = 0;
}

bool net_curl_retryable(CURLcode c) {
    switch (c) {
    case CURLE_OPERATION_TIMEDOUT: case CURLE_PARTIAL_FILE: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING: case CURLE_COULDNT_CONNECT: case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
        return true;
    default:
        return false;
    }
}

bool net_status_retryable(long st) { return st == 429 || st == 500 || st == 502 || st == 503 || st == 504; }

double net_backoff_s(double base_s, int attempt) {
    double d = base_s;
    for (int i = 1; i < attempt && d < NET_BACKOFF_CAP_S; i++) d *= 2;
    return d > NET_BACKOFF_CAP_S ? NET_BACKOFF_CAP_S : d;
}

void net_clean_text(char *dst, size_t cap, const char *src) {
    size_t j = 0;
    for (size_t i = 0; src && src[i] && j + 1 < cap; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[j++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    dst[j] = 0;
}

int net_curl_error(CURLcode c, const char *errbuf, const char *url, int attempts) {
    char host[256] = "";
    char *origin = net_url_origin(url);
    net_clean_text(host, sizeof host, origin ? origin : url);
    free(origin);
    const char *detail = errbuf && *errbuf ? errbuf : curl_easy_strerror(c);
    if (c == CURLE_PEER_FAILED_VERIFICATION || c == CURLE_SSL_CACERT_BADFILE)
        return err_set(ERR_NETWORK, "TLS certificate of %s could not be verified: %s (verification stays on; for a "
                                    "private CA set CURL_CA_BUNDLE to its certificate file)", host, detail);
    if (c == CURLE_COULDNT_RESOLVE_HOST || c == CURLE_COULDNT_RESOLVE_PROXY)
        return err_set(ERR_NETWORK, "cannot resolve %s: %s (check the network or HF_ENDPOINT; with the files "
                                    "already cached, set HF_HUB_OFFLINE=1)", host, detail);
    if (attempts > 1)
        return err_set(ERR_NETWORK, "download from %s failed after %d attempts: %s", host, attempts, detail);
    return err_set(ERR_NETWORK, "request to %s failed: %s", host, detail);
}

size_t net_buf_write(char *p, size_t size, size_t n, void *user) {
    net_buf *m = user;
    size_t k = size * n;
    if (m->len + k > m->limit) return 0; /* fails the transfer: the caller said what is too big */
    if (m->len + k + 1 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 65536;
        while (cap < m->len + k + 1) cap *= 2;
        char *d = realloc(m->data, cap);
        if (!d) return 0;
        m->data = d;
        m->cap = cap;
    }
    memcpy(m->data + m->len, p, k);
    m->len += k;
    m->data[m->len] = 0;
    return k;
}

int net_post(const char *url, const char *const *headers, int n_headers, const char *body, size_t body_len,
             long timeout_s, long *status, char **resp_out, size_t *resp_len, size_t limit) {
    net_init();
    *status = 0;
    *resp_out = NULL;
    *resp_len = 0;
    net_buf buf = {.limit = limit}, *resp = &buf;
    CURL *c = curl_easy_init();
    if (!c) return err_set(ERR_NETWORK, "%s: cannot start libcurl", url);
    struct curl_slist *hdrs = NULL;
    for (int i = 0; i < n_headers; i++) hdrs = curl_slist_append(hdrs, headers[i]);
    char errbuf[CURL_ERROR_SIZE] = "";
    net_opts o = {.timeout_s = timeout_s < 10 ? timeout_s : 10};
    net_easy_setup(c, &o, url, hdrs, errbuf);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "qlora-run/" QLORA_VERSION);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, net_buf_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 16L * 1024);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        free(buf.data);
        if (rc == CURLE_WRITE_ERROR && buf.len + CURL_MAX_WRITE_SIZE > limit)
            return err_set(ERR_NETWORK, "%s: response larger than %zu MiB", url, limit >> 20);
        return err_set(ERR_NETWORK, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }
    *resp_out = buf.data;
    *resp_len = buf.len;
    return 0;
}

/* net/ is the program's HTTP client for the Lua hooks' qlora.http_post (core/ knows nothing of
 * libcurl): registered when the program starts, in every program linked with the library */
__attribute__((constructor)) static void register_lua_http(void) { lua_host_set_http_post(net_post); }
