/* fuzz_hub.c: the hub client's parsers of what a server sends: response headers, the
 * repository listing JSON, ETags, file names from listings, Retry-After values and REPO@REV
 * specs. Besides crashes it checks the promises the downloader relies on: a listed name is
 * a safe relative path, an ETag (a blob's file name) has no '/' and no leading '.'. */
#include "hub/hub.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool escapes(const char *s) {
    size_t n = strlen(s);
    return s[0] == '/' || !strncmp(s, "../", 3) || strstr(s, "/../") || !strcmp(s, "..") ||
           (n >= 3 && !strcmp(s + n - 3, "/..")) || strstr(s, "//");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hub_file_meta m;
    memset(&m, 0, sizeof m);
    if (hub_file_meta_parse((const char *)data, size, &m) == 0 &&
        (m.size < 0 || strlen(m.commit) != 40 || strchr(m.etag, '/') || m.etag[0] == '.'))
        abort();
    char *commit = NULL, **files = NULL;
    int n = 0;
    if (hub_listing_parse((const char *)data, size, &commit, &files, &n) == 0) {
        for (int i = 0; i < n; i++) {
            if (!hub_path_safe(files[i]) || escapes(files[i])) abort();
            free(files[i]);
        }
        free(files);
        free(commit);
    }
    char *s = strndup((const char *)data, size), *repo = NULL, *rev = NULL;
    if (hub_parse_repo_spec(s, &repo, &rev) == 0) { free(repo); free(rev); }
    char e[130];
    if (hub_etag_normalize(s, e, sizeof e) && (strchr(e, '/') || e[0] == '.' || !e[0])) abort();
    if (hub_path_safe(s) && escapes(s)) abort();
    (void)net_retry_after_parse(s, 1.7e9);
    free(s);
    err_clear();
    return 0;
}
