/* plan.h: the DAG of a loaded recipe against the cache: each stage's cache key, whether it
 * is cached or will run, and why (what changed since the last run of this recipe).
 *
 * A stage's key is XXH3-128 of a canonical JSON document: its kind and kind version, its
 * resolved params (sorted keys; NOKEY params left out; references replaced by the referenced
 * stage's key; file params by their content hash), the content hash of every file it reads
 * (hook scripts, local data), and the device for stages whose numbers depend on it. */
#ifndef RUNNER_PLAN_H
#define RUNNER_PLAN_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "runner/cache.h"
#include "runner/recipe.h"

enum plan_status { PLAN_SKIP, PLAN_CACHED, PLAN_RUN };

typedef struct plan_stage {
    char key[33];
    json_t *key_doc;  /* what the key hashes */
    int status;       /* enum plan_status */
    bool selected, forced;
    bool stale;       /* cached under the same key, but a file its hooks read while it ran (the
                         manifest's hook_files) has changed since: it re-runs, and so does every
                         stage made from it */
    char *why;        /* why it runs (or NULL when cached) */
    json_t *manifest; /* the cached artifact's manifest when cached */
} plan_stage;

typedef struct plan_opts {
    const char *only, *until, *force; /* stage names or NULL */
} plan_opts;

typedef struct plan {
    recipe *r;
    const cache *c;
    char device[8]; /* resolved: cpu | cuda */
    plan_stage *st; /* parallel to r->stages */
} plan;

int plan_build(plan *p, recipe *r, const cache *c, const plan_opts *o);
void plan_free(plan *p);
void plan_print(const plan *p, FILE *f, bool with_keys);
/* the index entry recorded after a stage completes */
json_t *plan_index_entry(const plan *p, int i);
/* {path: content hash} of the given absolute paths ("missing" for one that cannot be read):
 * what a manifest keeps of the files a stage's hooks read (its hook_files) */
json_t *plan_file_hashes(const cache *c, const json_t *paths);
/* resolve `device: auto` */
const char *plan_resolve_device(const char *want);

#endif
