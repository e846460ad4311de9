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

typedef struct data_args {
    int64_t n;
    const char *split;
    cli_list sets;
} data_args;

static const cli_opt data_opts[] = {
    {"n", 0, CLI_INT, "N", "how many rows (3)", CLI_AT(data_args, n), 1, 1e9},
    {"split", 0, CLI_STR, "SPLIT", "train (the default) or val", CLI_AT(data_args, split), 0, 0},
    {"set", 0, CLI_LIST, "KEY=VALUE", "override a recipe key; repeatable", CLI_AT(data_args, sets), 0, 0},
    {0},
};

const cli_cmd cli_data = {
    .name = "data",
    .usage = "data show RECIPE STAGE [--n N] [--split train|val] [--set KEY=VALUE]...",
    .summary = "decoded training samples, masked spans marked",
    .about = "Prints the first N (default 3) training rows of a dataset stage, decoded, with the spans\n"
             "that are masked out of the loss marked. The stage must have run (it is read from the cache).",
    .min_pos = 3, .max_pos = 3, .opts = data_opts,
};

int cmd_data(int argc, char **argv) {
    data_args o = {.n = 3};
    const char *pos[4];
    int n_pos, rc = cli_parse(&cli_data, &o, argc, argv, pos, &n_pos);
    if (rc) {
        cli_list_free(&o.sets);
        return rc == CLI_HELP ? 0 : rc;
    }
    const char *path = pos[1], *stage = pos[2];
    int n = (int)o.n;
    if (strcmp(pos[0], "show")) {
        cli_list_free(&o.sets);
        return cli_usage_error(&cli_data, "unknown subcommand '%s' (the subcommand is 'show')", pos[0]);
    }
    if (o.split && strcmp(o.split, "train") && strcmp(o.split, "val")) {
        cli_list_free(&o.sets);
        return cli_usage_error(&cli_data, "--split '%s': a dataset has the splits train and val", o.split);
    }
    recipe *r = NULL;
    rc = recipe_load(&r, path, (char *const *)o.sets.v, o.sets.n);
    cli_list_free(&o.sets);
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
        rc = dataset_show_split(adir, tokdir, o.split ? o.split : "train", n, stdout);
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
