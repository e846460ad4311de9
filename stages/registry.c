/* registry.c: every stage kind, one line each. */
#include <string.h>

#include "stage.h"

/* add a kind: declare it here and list it below */

static const stage_kind *const kinds[] = {
    NULL
};

const stage_kind *const *stage_kind_all(void) { return kinds; }

const stage_kind *stage_kind_find(const char *name) {
    for (const stage_kind *const *k = kinds; *k; k++)
        if (!strcmp((*k)->name, name)) return *k;
    return NULL;
}
