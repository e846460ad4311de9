/* fuzz_peft.c: a user's PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
 * on arbitrary bytes. The first input byte picks which of the two files gets the rest of the
 * input; the other one is a valid file from the seed adapter (an r=4 q_proj/v_proj adapter). */
#include "core/fsutil.h"
#include "formats/peft.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char adir[128];

static void seed_adapter(void) {
    snprintf(adir, sizeof adir, "%s/adapter", fuzz_tmpdir());
    peft_adapter a;
    peft_adapter_init(&a);
    a.r = 4;
    a.alpha = 8;
    const char *mods[] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"};
    for (int i = 0; i < 2; i++) {
        peft_lora *l;
        if (peft_adapter_add(&a, mods[i], 8, 8, &l)) abort();
        for (int k = 0; k < 32; k++) l->A[k] = l->B[k] = 0.01f * (float)k;
    }
    peft_adapter_add_target(&a, "q_proj");
    peft_adapter_add_target(&a, "v_proj");
    if (peft_adapter_save(&a, adir)) abort();
    peft_adapter_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!adir[0]) seed_adapter();
    if (!size) return 0;
    const char *which = data[0] & 1 ? "adapter_config.json" : "adapter_model.safetensors";
    char path[256], keep[256];
    snprintf(path, sizeof path, "%s/%s", adir, which);
    snprintf(keep, sizeof keep, "%s.orig", path);
    if (!fs_exists(keep)) { /* keep the valid file to restore after each input */
        char *buf;
        size_t len;
        if (fs_read_all(path, &buf, &len) || fs_write_atomic(keep, buf, len)) abort();
        free(buf);
    }
    if (fs_write_atomic(path, data + 1, size - 1)) abort();
    peft_adapter a = {0};
    if (peft_adapter_load(&a, adir) == 0) peft_adapter_free(&a);
    char *buf;
    size_t len;
    if (fs_read_all(keep, &buf, &len) || fs_write_atomic(path, buf, len)) abort();
    free(buf);
    err_clear();
    return 0;
}
