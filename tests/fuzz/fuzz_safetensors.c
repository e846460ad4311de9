/* fuzz_safetensors.c: the safetensors header validator and reader on arbitrary bytes. */
#include "formats/safetensors.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_write("x.safetensors", data, size);
    st_model *m = NULL;
    if (st_open(&m, p) == 0) {
        for (size_t i = 0; i < st_count(m); i++) {
            const st_tensor *t = st_at(m, i);
            int64_t n = st_numel(t);
            float buf[16];
            if (n > 0) st_read_f32(t, 0, n < 16 ? n : 16, buf);
            if (!st_find(m, t->name)) abort();
        }
        st_close(&m);
    }
    err_clear();
    return 0;
}
