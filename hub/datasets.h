/* datasets.h: a dataset repo on the hub, a config and a split -> the data files, as the
 * `datasets` library finds them (docs/hub-datasets.md):
 *   1. the README's YAML `configs:` block (config_name, data_files as a pattern, a list of
 *      patterns, or a list of {split, path}; `default: true`);
 *   2. otherwise the file names: push_to_hub's `data/{split}-NNNNN-of-NNNNN.*`, else split
 *      keywords in a path (train/training; validation/valid/val/dev; test/testing/eval/evaluation),
 *      else every data file is the train split;
 *   3. when the revision holds no data file qlora-run reads (a script dataset), the hub's own
 *      Parquet conversion on refs/convert/parquet: `{config}/{split}/NNNN.parquet`.
 * Data files are .parquet, .jsonl, .json, .csv and .txt. The files are downloaded into the shared
 * HF cache (hub.h). An unknown config or split is an ERR_RECIPE naming the available ones.
 * Ownership: hub_dataset_free. */
#ifndef HUB_DATASETS_H
#define HUB_DATASETS_H

#include <stdbool.h>

#include "hub/hub.h"

typedef struct hub_dataset {
    char *repo;
    char *revision;  /* the revision listed: the recipe's (or main), or refs/convert/parquet */
    char *commit;    /* what it resolved to */
    char *config;    /* the config used ("default" when the repo declares none) */
    char *split;
    char **files;    /* repo paths of the split's files, sorted */
    char **local;    /* their snapshot paths (after a download; NULL otherwise) */
    int n_files;
} hub_dataset;

typedef struct hub_dataset_opts {
    const char *repo;      /* org/name */
    const char *revision;  /* NULL: main */
    const char *config;    /* NULL: the default config (or the only one) */
    const char *split;     /* NULL: train */
    bool download;         /* false: resolve only (the plan's cache key) */
    hub_progress_fn progress;
    void *progress_user;
    volatile int *interrupted;
} hub_dataset_opts;

int hub_dataset_resolve(const hub_config *cfg, const hub_dataset_opts *o, hub_dataset *out);

/* A recipe's `url:` for data (the dataset stage, evaluate's tasks):
 * hub_dataset_url: true when url is a whole hub dataset, "hf://datasets/org/name[@rev]" (no file
 * path), with *repo and *rev (NULL: none given) malloc'd; false otherwise (nothing allocated).
 * hub_fetch_url: a single file, "hf://datasets/org/name[@rev]/path/in/repo" or https://..., into the
 * HF cache; *local (malloc'd) is its path there. ERR_RECIPE for another form, naming the url. */
bool hub_dataset_url(const char *url, char **repo, char **rev);
int hub_fetch_url(const hub_config *cfg, const char *url, hub_progress_fn progress, void *user, char **local);
void hub_dataset_free(hub_dataset *d);

/* ---- pieces exposed for tests ---- */

/* Choose the files of (config, split) from a listing and the README's text (may be NULL).
 * *found: whether any data file was there at all (false: try refs/convert/parquet). */
int hub_dataset_pick(const char *repo, char *const *files, int n, const char *readme, const char *config,
                     const char *split, bool converted, bool *want, char **config_used, bool *found);

#endif
