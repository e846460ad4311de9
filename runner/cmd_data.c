/* cmd_data.c: `qlora-run data show RECIPE STAGE [--n N]`: decoded training samples of a
 * dataset stage's artifact with the masked spans marked, so users see exactly what the model
 * is trained on. The artifact must be in the cache: the command offers the run that makes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "runner/cache.h"
#include "runner/commands.h"
#include "runner/plan.h"
#include "runner/recipe.h"
#include "train/dataset_build.h"

static const char data_help[] =
    "usage: qlora-run data show RECIPE STAGE [--n N] [--set KEY=VALUE]...\n"
    "\n"
    "Prints the first N (default 3) training rows of a dataset stage, decoded, with the spans\n"
    "that are masked out of the loss marked. The stage must have run (it is read from the cache).\n";

int cmd_data(int argc, char **argv) {
    const char *sub = NULL, *path = NULL, *stage = NULL;
    int n = 3;
    char **sets = NULL;
    int n_sets = 0, rc = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(data_help, stdout); free(sets); return 0; }
        if (!strcmp(argv[i], "--n") && i + 1 < argc) {
            n = atoi(argv[++i]);
            if (n < 1) { free(sets); return err_set(ERR_USAGE, "data show: --n needs a number >= 1"); }
        } else if (!strcmp(argv[i], "--set") && i + 1 < argc) {
            sets = realloc(sets, (size_t)(n_sets + 1) * sizeof *sets);
            sets[n_sets++] = argv[++i];
        } else if (argv[i][0] == '-') {
            free(sets);
            return err_set(ERR_USAGE, "data: unknown option '%s' (see qlora-run data --help)", argv[i]);
        } else if (!sub) sub = argv[i];
        else if (!path) path = argv[i];
        else if (!stage) stage = argv[i];
        else { free(sets); return err_set(ERR_USAGE, "data: unexpected argument '%s'", argv[i]); }
    }
    if (!sub || strcmp(sub, "show") || !path || !stage) {
        free(sets);
        return err_set(ERR_USAGE, "data: usage: qlora-run data show RECIPE STAGE [--n N] (see --help)");
    }
    recipe *r = NULL;
    rc = recipe_load(&r, path, sets, n_sets);
    free(sets);
    if (rc) return rc;
    int i = recipe_stage_index(r, stage);
    if (i < 0) rc = err_set(ERR_USAGE, "data show: recipe '%s' has no stage '%s'", r->name, stage);
    else if (strcmp(r->stages[i].kind->name, "dataset"))
        rc = err_set(ERR_USAGE, "data show: stage '%s' is a %s stage, not a dataset stage", stage, r->stages[i].kind->name);
    cache c = {0};
    plan p = {0};
    if (!rc) rc = cache_open(&c, r->cache_dir);
    if (!rc) {
        plan_opts po = {NULL, stage, NULL};
        rc = plan_build(&p, r, &c, &po);
    }
    if (!rc && p.st[i].status != PLAN_CACHED)
        rc = err_set(ERR_USAGE, "data show: stage '%s' is not in the cache yet: run 'qlora-run %s --until %s' first", stage, path, stage);
    if (!rc) {
        const recipe_stage *s = &r->stages[i];
        int model = -1;
        for (int k = 0; k < s->n_refs; k++)
            if (!strcmp(s->refs[k].role, "model")) model = s->refs[k].target;
        if (model < 0) {
            rc = err_set(ERR_USAGE, "data show: stage '%s' names no model, so there is no tokenizer to decode with", stage);
            goto out;
        }
        char *adir = cache_artifact_dir(&c, "dataset", p.st[i].key);
        char *mdir = cache_artifact_dir(&c, r->stages[model].kind->name, p.st[model].key);
        char *tokdir = fs_join(mdir, "model");
        rc = dataset_show(adir, tokdir, n, stdout);
        free(tokdir);
        free(mdir);
        free(adir);
    }
out:
    plan_free(&p);
    if (c.root) cache_close(&c);
    recipe_free(&r);
    return rc;
}
