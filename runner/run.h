/* run.h: executing a planned recipe: stages in dependency order (independent ones in
 * parallel with --jobs), each one cached, locked, run into a temp dir and committed;
 * the run record under runs/<recipe>/<UTC time>/. */
#ifndef RUNNER_RUN_H
#define RUNNER_RUN_H

#include <stdbool.h>
#include <stdint.h>

#include "runner/cli.h"

/* The options of `qlora-run RECIPE` (and of validate, show, plan, data show, which take the
 * recipe ones): filled by cli_parse from run_cli_opts. */
typedef struct run_opts {
    cli_list sets;                    /* --set KEY=VALUE, in order */
    const char *only, *until, *force;
    bool dry_run, lock, json, quiet;
    bool stages;                      /* show --stages: stage names only */
    int64_t jobs;
    const char *gpus_text; /* --gpus as given */
    const char *out;       /* --out: the exports' folder, overriding the recipe's output_dir */
    int gpus;     /* --gpus: -1 unset, 0 all, N */
    int argc;     /* the command line, for --gpus to start the ranks with */
    char **argv;
} run_opts;

/* the option table of `qlora-run RECIPE`; recipe_cli_opts: only --set (validate, show, data),
 * plan_cli_opts: --set and the stage selection */
extern const cli_opt run_cli_opts[], recipe_cli_opts[], plan_cli_opts[], show_cli_opts[];

int run_recipe(const char *path, const run_opts *o);
/* Parse a recipe command's argv against c (whose positional argument is the recipe) into o and
 * *recipe_path: 0, CLI_HELP (help printed) or ERR_USAGE (printed). Applies --quiet/--json to
 * the log. Free o with run_opts_free whatever it returned. */
int run_parse_opts(const cli_cmd *c, int argc, char **argv, run_opts *o, const char **recipe_path);
void run_opts_free(run_opts *o);

#endif
