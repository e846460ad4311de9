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

static const char run_help[] =
    "usage: qlora-run RECIPE.yaml [options]\n"
    "\n"
    "Runs the recipe's stages in dependency order; a stage whose artifact is cached is not run.\n"
    "\n"
    "  --set KEY=VALUE   override a recipe key (e.g. stages.train.learning_rate=1e-4); repeatable\n"
    "  --only STAGE      run only STAGE (its inputs must be cached)\n"
    "  --until STAGE     run STAGE and what it needs, nothing after it\n"
    "  --force STAGE     re-run STAGE and every stage after it, even if cached\n"
    "  --dry-run         print the plan and stop (same as `qlora-run plan`)\n"
    "  --jobs N          run up to N independent stages at once\n"
    "  --lock            exit at once (code 6) if another run of this recipe is in progress\n"
    "  --json            print events as JSON lines on stdout\n"
    "  --quiet           no progress or notes, errors only\n";

int cmd_run(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(run_help, stdout); return 0; }
    run_opts o;
    const char *path;
    if (run_parse_opts(argc, argv, &o, &path, "run") < 0) { run_opts_free(&o); return err_code(); }
    int rc = run_recipe(path, &o);
    run_opts_free(&o);
    return rc;
}

static int load_for(int argc, char **argv, const char *cmd, const char *help, recipe **r, run_opts *o) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { fputs(help, stdout); return -1; }
    const char *path;
    if (run_parse_opts(argc, argv, o, &path, cmd) < 0) return err_code();
    return recipe_load(r, path, o->sets, o->n_sets);
}

int cmd_validate(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(argc, argv, "validate", "usage: qlora-run validate RECIPE.yaml [--set KEY=VALUE]...\n\nChecks the whole recipe (keys, types, ranges, references, files) without running anything.\n", &r, &o);
    if (rc == -1) { run_opts_free(&o); return 0; }
    if (!rc) notef("%s: ok (%d stages)", r->path, r->n_stages);
    recipe_free(&r);
    run_opts_free(&o);
    return rc;
}

int cmd_show(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(argc, argv, "show", "usage: qlora-run show RECIPE.yaml [--set KEY=VALUE]...\n\nPrints the resolved recipe (extends merged, overrides applied, every default filled in) as YAML.\n", &r, &o);
    if (rc == -1) { run_opts_free(&o); return 0; }
    if (!rc) {
        char *y = yt_emit_json(r->resolved);
        fputs(y, stdout);
        free(y);
    }
    recipe_free(&r);
    run_opts_free(&o);
    return rc;
}

int cmd_plan(int argc, char **argv) {
    recipe *r = NULL;
    run_opts o;
    int rc = load_for(argc, argv, "plan", "usage: qlora-run plan RECIPE.yaml [--set KEY=VALUE]... [--only|--until|--force STAGE]\n\nPrints each stage with whether it is cached or will run, and why.\n", &r, &o);
    if (rc == -1) { run_opts_free(&o); return 0; }
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
    return rc;
}
