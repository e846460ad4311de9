/* fuzz_config.c: config.json (llama, mistral, qwen2; quantization_config) on arbitrary bytes. */
#include <jansson.h>

#include "fuzz_common.h"
#include "model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_t *j = json_loadb((const char *)data, size, 0, NULL);
    if (j) {
        model_config c;
        if (config_from_json(&c, j, "config.json") == 0) {
            json_t *back = config_to_json(&c);
            json_decref(back);
            config_free(&c);
        }
        json_decref(j);
    }
    err_clear();
    return 0;
}
