/* fuzz_recipe.c: the recipe loader (YAML, schema, references, cycles) on arbitrary bytes. */
#include "fuzz_common.h"
#include "runner/recipe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    setenv("QLORA_TEST_KINDS", "1", 1);
    const char *p = fuzz_write("recipe.yaml", data, size);
    recipe *r = NULL;
    if (recipe_load(&r, p, NULL, 0) == 0) recipe_free(&r);
    err_clear();
    return 0;
}
