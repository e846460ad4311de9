/* cmd_data.c: `qlora-run data show RECIPE STAGE [--n N]`: decoded training samples of a
 * dataset stage's artifact with the masked spans marked, so users see exactly what the model
 * is trained on. The artifact must be in the cache: the command offers the run that makes it.
 * `qlora-run data read FILE [--type T] [--columns A,B] [--n N]`: the records the dataset stage
 * reads from a file, one JSON object a line (what a Parquet file looks like to qlora-run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "data/dataset_read.h"
#include "runner/cache.h"
#include "runner/commands.h"
#include "runner/plan.h"
#include "runner/recipe.h"
#include "train/dataset_build.h"

typedef struct data_args {
    int64_t n; /* 0: not given */
    const char *split;
    cli_list sets;
    const char *type, *columns;
} data_args;

static const cli_opt data_opts[] = {
    {"n", 0, CLI_INT, "N", "how many rows (show: 3) or records (read: all)", CLI_AT(data_args, n), 1, 1e15},
    {"split", 0, CLI_STR, "SPLIT", "show: train (the default) or val", CLI_AT(data_args, split), 0, 0},
    {"set", 0, CLI_LIST, "KEY=VALUE", "show: override a recipe key; repeatable", CLI_AT(data_args, sets), 0, 0},
    {"type", 0, CLI_STR, "TYPE", "read: the file type, as the dataset stage's type (auto)", CLI_AT(data_args, type), 0, 0},
    {"columns", 0, CLI_STR, "A,B", "read: only these fields (each one must exist)", CLI_AT(data_args, columns), 0, 0},
    {0},
};

const cli_cmd cli_data = {
    .name = "data",
    .usage = "data show RECIPE STAGE [--n N] [--split train|val] [--set KEY=VALUE]...\n"
             "data read FILE [--type TYPE] [--columns A,B] [--n N]",
    .summary = "decoded training samples, masked spans marked; the records of a data file",
    .about = "show: prints the first N (default 3) rows of a dataset stage's train (or val) split, decoded,\n"
             "with the spans that are masked out of the loss marked. The stage must have run (it is read from\n"
             "the cache).\n"
             "read: prints the records of a data file (JSON, JSONL, CSV, text or Parquet) one JSON object a\n"
             "line, as the dataset stage reads them.",
    .min_pos = 2, .max_pos = 3, .opts = data_opts,
};

/* data read FILE: the records as JSON lines */
static int data_read(const char *file, const data_args *o) {
    dataset_type t;
    int rc = dataset_type_parse(o->type ? o->type : "auto", &t);
    if (rc) return cli_usage_error(&cli_data, "%s", err_msg());
    dataset_reader *r = NULL;
    if ((rc = dataset_reader_open(&r, file, t))) return rc;
    if (o->columns) {
        char *copy = strdup(o->columns), *save = NULL;
        const char *names[256];
        int req[256];
        size_t k = 0;
        for (char *tok = strtok_r(copy, ",", &save); tok && k < 256; tok = strtok_r(NULL, ",", &save)) {
            names[k] = tok;
            req[k++] = 1;
        }
        rc = dataset_reader_columns(r, names, req, k);
        free(copy);
    }
    for (int64_t i = 0; !rc && (o->n <= 0 || i < o->n); i++) {
        json_t *rec;
        if ((rc = dataset_reader_next(r, &rec)) || !rec) break;
        char *line = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
        json_decref(rec);
        if (!line) rc = err_set(ERR_STAGE, "out of memory");
        else {
            fputs(line, stdout);
            fputc('\n', stdout);
            free(line);
        }
    }
    dataset_reader_close(&r);
    if (!rc && fflush(stdout)) rc = err_errno(ERR_STAGE, "cannot write the records");
    return rc;
}

int cmd_data(int argc, char **argv) {
    data_args o = {0};
    const char *pos[4];
    int n_pos, rc = cli_parse(&cli_data, &o, argc, argv, pos, &n_pos);
    if (rc) {
        cli_list_free(&o.sets);
        return rc == CLI_HELP ? 0 : rc;
    }
    if (!strcmp(pos[0], "read")) {
        cli_list_free(&o.sets);
        if (n_pos != 2) return cli_usage_error(&cli_data, "read takes one file (data read FILE)");
        return data_read(pos[1], &o);
    }
    if (strcmp(pos[0], "show")) {
        cli_list_free(&o.sets);
        return cli_usage_error(&cli_data, "unknown subcommand '%s' (show or read)", pos[0]);
    }
    if (n_pos != 3) {
        cli_list_free(&o.sets);
        return cli_usage_error(&cli_data, "show takes a recipe and a stage (data show RECIPE STAGE)");
    }
    if (o.split && strcmp(o.split, "train") && strcmp(o.split, "val")) {
        cli_list_free(&o.sets);
        return cli_usage_error(&cli_data, "--split '%s': a dataset has the splits train and val", o.split);
    }
    const char *path = pos[1], *stage = pos[2];
    int n = o.n > 0 ? (int)(o.n < 1000000000 ? o.n : 1000000000) : 3;
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
