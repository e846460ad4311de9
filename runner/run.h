/* run.h: executing a planned recipe: stages in dependency order (independent ones in
 * parallel with --jobs), each one cached, locked, run into a temp dir and committed;
 * the run record under runs/<recipe>/<UTC time>/. */
#ifndef RUNNER_RUN_H
#define RUNNER_RUN_H

#include <stdbool.h>

typedef struct run_opts {
    char **sets;
    int n_sets;
    const char *only, *until, *force;
    bool dry_run, lock, json, quiet;
    int jobs;
} run_opts;

int run_recipe(const char *path, const run_opts *o);
/* shared by commands: parse the common recipe options; returns index of first unused arg or -1 */
int run_parse_opts(int argc, char **argv, run_opts *o, const char **recipe_path, const char *cmd);
void run_opts_free(run_opts *o);

#endif
