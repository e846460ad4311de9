/* registry.c: every stage kind, one line each.
 *
 * The declarations are weak so that a kind whose file is not built yet reads as NULL and is
 * reported as unavailable instead of breaking the link. */
#include <string.h>

#include "stage.h"

#define KIND(n) extern const stage_kind stage_kind_##n __attribute__((weak));
KIND(fetch_model)
KIND(init_model)
KIND(quantize_nf4)
KIND(attach_lora)
KIND(dataset)
KIND(train)
KIND(evaluate)
KIND(export)
KIND(push_to_hub)
KIND(lua)
KIND(test_echo) /* test-only kinds (stages/testkinds.c), enabled by QLORA_TEST_KINDS=1 */
KIND(test_sleep)
KIND(test_publish)
#undef KIND

static const stage_kind *all[16];

const stage_kind *const *stage_kind_all(void) {
    if (!all[0]) {
        const stage_kind *cand[] = {&stage_kind_fetch_model, &stage_kind_init_model, &stage_kind_quantize_nf4,
                                    &stage_kind_attach_lora, &stage_kind_dataset, &stage_kind_train,
                                    &stage_kind_evaluate, &stage_kind_export, &stage_kind_push_to_hub, &stage_kind_lua,
                                    &stage_kind_test_echo, &stage_kind_test_sleep, &stage_kind_test_publish};
        int n = 0;
        for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
            if (cand[i]) all[n++] = cand[i];
        all[n] = NULL;
    }
    return all;
}

const stage_kind *stage_kind_find(const char *name) {
    for (const stage_kind *const *k = stage_kind_all(); *k; k++)
        if (!strcmp((*k)->name, name)) return *k;
    return NULL;
}
