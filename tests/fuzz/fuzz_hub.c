/* fuzz_hub.c: libFuzzer target for the hub client's readers of outside bytes: the API listing
 * (JSON), a HEAD's header block, ETags, file names from listings and Retry-After values.
 * The first input byte picks the reader; the rest is its input.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. tests/fuzz/fuzz_hub.c formats/hub.c \
 *       core/err.c core/fsutil.c core/hash.c $(pkg-config --cflags --libs libcurl jansson openssl libxxhash) \
 *       -o fuzz_hub && ./fuzz_hub -max_total_time=600 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hub.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int which = data[0] % 5;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    char *s = malloc(n + 1); /* the string readers take NUL-terminated text */
    memcpy(s, in, n);
    s[n] = 0;
    switch (which) {
    case 0: {
        char *commit, **files;
        int k;
        if (!hub_listing_parse(in, n, &commit, &files, &k)) {
            for (int i = 0; i < k; i++) {
                if (!hub_path_safe(files[i])) abort(); /* a listed name must have passed the check */
                free(files[i]);
            }
            free(files);
            free(commit);
        }
        break;
    }
    case 1: {
        hub_file_meta m;
        if (!hub_file_meta_parse(in, n, &m) && (m.size < 0 || strlen(m.commit) != 40 || strstr(m.etag, "/")))
            abort();
        break;
    }
    case 2: {
        char e[130];
        if (hub_etag_normalize(s, e, sizeof e) && (strchr(e, '/') || e[0] == '.' || !e[0])) abort();
        break;
    }
    case 3:
        if (hub_path_safe(s) && (s[0] == '/' || !strncmp(s, "../", 3) || strstr(s, "/../") || !strcmp(s, "..") ||
                                 (strlen(s) >= 3 && !strcmp(s + strlen(s) - 3, "/..")) || strstr(s, "//")))
            abort();
        break;
    default:
        (void)hub_retry_after_parse(s, 1.7e9);
        break;
    }
    free(s);
    return 0;
}
