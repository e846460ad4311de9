/* recipe.h: a recipe loaded, merged (extends, --set), validated and resolved.
 *
 * recipe_load does everything that can be checked before any work: YAML syntax, the
 * top-level schema, every stage's keys against its kind's param table (types, bounds,
 * allowed values, required keys, unknown keys with a did-you-mean), references between
 * stages (dangling, wrong kind, cycles, named), and every referenced file. All errors are
 * collected (up to a limit) and returned as one ERR_RECIPE message, each located
 * `file:line:col` with the source line and a caret. On success every stage has its
 * resolved params (defaults filled in) and the stages are in topological order; when the
 * recipe has gates, the stages they hold back (exports, publishing and what reads them) come
 * after every other stage. */
#ifndef RUNNER_RECIPE_H
#define RUNNER_RECIPE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "runner/yaml_tree.h"
#include "stages/stage.h"

typedef struct recipe_ref {
    char *role;  /* the param name */
    int target;  /* index into recipe.stages */
} recipe_ref;

typedef struct recipe_stage {
    char *name;
    const stage_kind *kind;
    json_t *params;     /* resolved, defaults filled */
    json_t *key_files;  /* absolute paths whose content is part of the cache key */
    json_t *hooks;      /* the hooks this stage is given (absolute paths), NULL if none */
    bool hook_shaped;   /* a hook shapes its output (hooks.format, format_hook, ...): only then
                           do the hooks' allowances enter its key */
    int n_refs;
    recipe_ref refs[STAGE_MAX_INPUTS];
    const yt_node *node; /* the stage's mapping, for messages */
} recipe_stage;

/* One entry of `gates:`: STAGE.METRIC and its conditions (see runner/gates.h). */
typedef struct recipe_gate {
    char *label;             /* "eval.val_loss" as written */
    char *stage, *metric;
    metric_better better;    /* METRIC_LOWER/HIGHER, or NEITHER (min/max only) */
    bool has_min, has_max, has_regression;
    double min, max, max_regression; /* max_regression: 0.02 allows 2% worse than the last good run */
    const yt_node *node;     /* for messages */
} recipe_gate;

typedef struct recipe {
    char *path, *dir;
    char *name;
    uint64_t seed;
    bool deterministic; /* the top-level `deterministic`: what train and evaluate default to */
    char device[8]; /* auto | cuda | cpu */
    int gpus;       /* processes to start on this machine (gpus: N); 0 = all its GPUs */
    char *cache_dir, *runs_dir; /* NULL: defaults */
    char *output_dir;           /* output_dir: absolute; NULL: exports stay in the cache only */
    json_t *hooks;  /* resolved hooks mapping (absolute paths) */
    int n_stages;
    recipe_stage *stages; /* topological order */
    yt_node *root;
    json_t *resolved; /* the whole recipe with every default, for `show` and the run record */
    int n_gates;
    recipe_gate *gates;
    bool tensorboard; /* report_to: [tensorboard] */
} recipe;

int recipe_load(recipe **out, const char *path, char *const *sets, int n_sets);
/* "all" -> 0, "N" -> N (1..4096); -1 for anything else (gpus stays 1) */
int recipe_parse_gpus(const char *text, int *gpus);
void recipe_free(recipe **r);
int recipe_stage_index(const recipe *r, const char *name); /* -1 if absent */
/* true when stage i exports or publishes, or reads from one that does: held back by gates */
bool recipe_stage_held(const recipe *r, int i);

/* The schema of the recipe's top level and of `hooks:` (for docs/recipes.md). */
const param_spec *recipe_top_params(void);
const param_spec *recipe_hook_params(void);
const param_spec *recipe_gate_params(void);

/* Levenshtein-based suggestion among candidates ('|'-separated or NULL-terminated array). */
const char *recipe_suggest(const char *word, const char *const *cands, size_t n);

#endif
