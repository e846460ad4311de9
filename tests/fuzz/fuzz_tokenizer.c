/* fuzz_tokenizer.c: tokenizer.json loading on arbitrary bytes; when it loads, encode and
 * decode a few fixed texts and the input itself. */
#include "core/fsutil.h"
#include "fuzz_common.h"
#include "tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_tmpdir();
    char dir[128];
    snprintf(dir, sizeof dir, "%s/tok", fuzz_dir);
    fs_mkdir_p(dir);
    char path[192];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    fwrite(data, 1, size, f);
    fclose(f);
    tokenizer *t = NULL;
    if (tokenizer_load(&t, dir) == 0) {
        const char *texts[] = {"Hello world", " it's 2024!\n\n  tabs\t", "caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80"};
        for (size_t i = 0; i < 4; i++) {
            const char *s = i < 3 ? texts[i] : (const char *)data;
            size_t len = i < 3 ? strlen(texts[i]) : (size < 256 ? size : 256);
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(t, s, len, true, &ids, &n) == 0) {
                char *out = NULL;
                size_t ol = 0;
                if (tokenizer_decode(t, ids, n, false, &out, &ol) == 0) free(out);
            }
            free(ids);
        }
        tokenizer_free(&t);
    }
    err_clear();
    return 0;
}
