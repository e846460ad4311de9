/* cmd_recipe.c: qlora-run RECIPE / validate / show / plan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "runner/cache.h"
#include "runner/commands.h"
#include "runner/plan.h"
#include "runner/recipe.h"
#include "runner/run.h"
#include "runner/yaml_tree.h"

const cli_cmd cli_run = {
    .name = "",
    .usage = "RECIPE.yaml [options]",
    .summary = "run a recipe",
    .about = "Runs the recipe's stages in dependency order; a stage whose artifact is cached is not run.",
    .min_pos = 1, .max_pos = 1, .opts = run_cli_opts,
};
const cli_cmd cli_validate = {
    .name = "validate", .usage = "validate RECIPE.yaml [--set KEY=VALUE]...",
    .summary = "check the whole recipe without running anything",
    .about = "Checks the whole recipe (keys, types, ranges, references, files, hooks) without running anything.",
    .min_pos = 1, .max_pos = 1, .opts = recipe_cli_opts,
};
const cli_cmd cli_show = {
    .name = "show", .usage = "show RECIPE.yaml [--set KEY=VALUE]... [--stages]",
    .summary = "print the resolved recipe with every default",
    .about = "Prints the resolved recipe (extends merged, overrides applied, every default filled in).",
    .min_pos = 1, .max_pos = 1, .opts = show_cli_opts,
};
const cli_cmd cli_plan = {
    .name = "plan", .usage = "plan RECIPE.yaml [--set KEY=VALUE]... [--only|--until|--force STAGE]",
    .summary = "print each stage: cached or will run, and why",
    .about = "Prints each stage with whether it is cached or will run, and why.",
    .min_pos = 1, .max_pos = 1, .opts = plan_cli_opts,
};

int cmd_run(int argc, char **argv) {
    run_opts o;
    const char *path;
    int rc = run_parse_opts(&cli_run, argc, argv, &o, &path);
    if (!rc) rc = run_recipe(path, &o);
    run_opts_free(&o);
    return rc == CLI_HELP ? 0 : rc;
}

/* parse and load: 0 with *r loaded, CLI_HELP, or an error code */
static int load_for(const cli_cmd *c, int argc, char **argv, recipe **r, run_opts *o) {
    const char *path;
    int rc = run_parse_opts(c, argc, argv, o, &path);
    if (rc) return rc;
    return recipe_load(r, path, (char *const *)o->sets.v, o->sets.n);
}

int cmd_validate(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(&cli_validate, argc, argv, &r, &o);
    if (!rc) notef("%s: ok (%d stages)", r->path, r->n_stages);
    recipe_free(&r);
    run_opts_free(&o);
    return rc == CLI_HELP ? 0 : rc;
}

int cmd_show(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(&cli_show, argc, argv, &r, &o);
    if (!rc && o.stages) {
        for (int i = 0; i < r->n_stages; i++) puts(r->stages[i].name);
    } else if (!rc) {
        char *y = yt_emit_json(r->resolved);
        fputs(y, stdout);
        free(y);
    }
    recipe_free(&r);
    run_opts_free(&o);
    return rc == CLI_HELP ? 0 : rc;
}

int cmd_plan(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(&cli_plan, argc, argv, &r, &o);
    if (!rc) {
        cache c;
        rc = cache_open(&c, r->cache_dir);
        if (!rc) {
            plan p;
            plan_opts po = {o.only, o.until, o.force};
            rc = plan_build(&p, r, &c, &po);
            if (!rc) {
                plan_print(&p, stdout, true);
            }
            plan_free(&p);
            cache_close(&c);
        }
    }
    recipe_free(&r);
    run_opts_free(&o);
    return rc == CLI_HELP ? 0 : rc;
}
