/* fuzz_hub.c: the hub client's parsers of what a server sends: response headers, the
 * repository listing JSON, and REPO@REV specs. */
#include "formats/hub.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    hub_file_meta m;
    memset(&m, 0, sizeof m);
    hub_file_meta_parse((const char *)data, size, &m);
    char *commit = NULL, **files = NULL;
    int n = 0;
    if (hub_listing_parse((const char *)data, size, &commit, &files, &n) == 0) {
        for (int i = 0; i < n; i++) free(files[i]);
        free(files);
        free(commit);
    }
    char *s = strndup((const char *)data, size), *repo = NULL, *rev = NULL;
    if (hub_parse_repo_spec(s, &repo, &rev) == 0) { free(repo); free(rev); }
    free(s);
    err_clear();
    return 0;
}
