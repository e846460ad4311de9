/* registry.c: every stage kind, one line each.
 *
 * The declarations are weak so that a kind whose file is not built yet reads as NULL and is
 * reported as unavailable instead of breaking the link. */
#include <string.h>

#include "stage.h"

/* The one list of kinds, in the order docs and messages show them. The last three are test-only
 * kinds (stages/testkinds.c), enabled by QLORA_TEST_KINDS=1. */
#define STAGE_KINDS(X) \
    X(fetch_model)     \
    X(init_model)      \
    X(quantize_nf4)    \
    X(attach_lora)     \
    X(dataset)         \
    X(train)           \
    X(evaluate)        \
    X(export)          \
    X(push_to_hub)     \
    X(lua)             \
    X(test_echo)       \
    X(test_sleep)      \
    X(test_publish)

#define DECLARE(n) extern const stage_kind stage_kind_##n __attribute__((weak));
STAGE_KINDS(DECLARE)
#undef DECLARE

#define ADDRESS(n) &stage_kind_##n,
static const stage_kind *const candidates[] = {STAGE_KINDS(ADDRESS)};
#undef ADDRESS

static const stage_kind *all[sizeof candidates / sizeof candidates[0] + 1];

const stage_kind *const *stage_kind_all(void) {
    if (!all[0]) {
        int n = 0;
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
            if (candidates[i]) all[n++] = candidates[i];
        all[n] = NULL;
    }
    return all;
}

const stage_kind *stage_kind_find(const char *name) {
    for (const stage_kind *const *k = stage_kind_all(); *k; k++)
        if (!strcmp((*k)->name, name)) return *k;
    return NULL;
}
