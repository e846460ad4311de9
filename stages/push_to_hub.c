/* push_to_hub.c: the push_to_hub stage kind: upload an artifact (the PEFT adapter, the merged
 * model, a GGUF file: any folder of an export, train or attach_lora artifact) to a hub repo,
 * with a generated model card, through hub/upload.c (shared with `qlora-run push`).
 *
 * Its cache key is the uploaded artifact's key plus the target (repo, revision, repo type,
 * folder, path in the repo, the card's inputs): a re-run with nothing changed publishes
 * nothing; a new adapter or a new target publishes once. Its artifact is the receipt
 * (push.json: repo, revision, commit, files) and the README.md it uploaded. Held back by gates. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "hub/upload.h"
#include "stage.h"

static const param_spec params[] = {
    {"artifact", PARAM_REF, NULL, 0, -1, "export|train|attach_lora|lua", "the stage whose output is uploaded", PARAM_REQUIRED},
    {"folder", PARAM_STRING, "", 0, -1, NULL, "a folder of that artifact to upload (export: adapter, model); empty: all of it", 0},
    {"repo", PARAM_STRING, NULL, 0, -1, NULL, "the hub repo id, org/name (created when missing)", PARAM_REQUIRED},
    {"revision", PARAM_STRING, "main", 0, -1, NULL, "the branch to commit to (created from main when missing)", 0},
    {"repo_type", PARAM_ENUM, "model", 0, -1, "model|dataset", "the kind of repo", 0},
    {"path_in_repo", PARAM_STRING, "", 0, -1, NULL, "a folder in the repo to put the files in (empty: the root)", 0},
    {"private", PARAM_BOOL, "true", 0, -1, NULL, "a repo this creates is private (an existing repo keeps its visibility)", PARAM_NOKEY},
    {"commit_message", PARAM_STRING, "Upload from qlora-run", 0, -1, NULL, "the commit's summary line", PARAM_NOKEY},
    {"model_card", PARAM_BOOL, "true", 0, -1, NULL, "write and upload README.md (metadata, metrics, parameters) unless the folder has one", 0},
    {"base", PARAM_REF, NULL, 0, -1, "fetch_model|init_model|quantize_nf4", "the base model, for the card's base_model", 0},
    {"eval", PARAM_REF, NULL, 0, -1, "evaluate", "an evaluate stage whose metrics the card shows", 0},
    {"data", PARAM_REF, NULL, 0, -1, "dataset", "the training data, for the card's datasets", 0},
    {0}};

static int check(const json_t *p) {
    const char *repo = json_string_value(json_object_get(p, "repo")), *rev = json_string_value(json_object_get(p, "revision"));
    const char *folder = json_string_value(json_object_get(p, "folder")), *pir = json_string_value(json_object_get(p, "path_in_repo"));
    if (repo && !hub_repo_id_valid(repo)) return err_set(ERR_RECIPE, "'repo': '%s' is not a hub repo id (org/name)", repo);
    if (rev && (!*rev || !hub_path_safe(rev))) return err_set(ERR_RECIPE, "'revision': unusable branch name '%s'", rev);
    if (folder && *folder && !hub_path_safe(folder)) return err_set(ERR_RECIPE, "'folder': '%s' must be a relative path inside the artifact", folder);
    if (pir && *pir && !hub_path_safe(pir)) return err_set(ERR_RECIPE, "'path_in_repo': '%s' must be a relative path", pir);
    return 0;
}

static void on_progress(void *user, const hub_progress *p) {
    stage_progress(user, p->file ? p->file : "", (double)p->done / 1e6, (double)p->total / 1e6, "MB");
}

/* hf://datasets/org/name/... in a dataset stage's params: the card's datasets */
static void collect_datasets(const json_t *v, json_t *out) {
    if (json_is_string(v) && !strncmp(json_string_value(v), "hf://datasets/", 14)) {
        const char *s = json_string_value(v) + 14, *a = strchr(s, '/'), *b = a ? strpbrk(a + 1, "/@") : NULL;
        if (a) json_array_append_new(out, b ? json_stringn(s, (size_t)(b - s)) : json_string(s));
    } else if (json_is_array(v) || json_is_object(v)) {
        size_t i;
        json_t *x;
        const char *k;
        if (json_is_array(v)) json_array_foreach(v, i, x) collect_datasets(x, out);
        else json_object_foreach((json_t *)v, k, x) collect_datasets(x, out);
    }
}

static int run(stage_ctx *c) {
    const stage_input *art = stage_input_get(c, "artifact");
    const char *folder = stage_str(c, "folder"), *pir = stage_str(c, "path_in_repo");
    char *src = folder && *folder ? fs_join(art->dir, folder) : strdup(art->dir);
    if (!fs_is_dir(src)) {
        int rc = err_set(ERR_STAGE, "'folder: %s': stage '%s' wrote no such folder (it has: see %s)", folder, art->stage, art->dir);
        free(src);
        return rc;
    }
    hub_push_file *files = NULL;
    int n = 0;
    int rc = hub_push_list_folder(src, pir, &files, &n);
    json_t *paths = json_array();
    bool has_readme = false, adapter = false;
    for (int i = 0; i < n; i++) {
        json_array_append_new(paths, json_string(files[i].path));
        const char *base = strrchr(files[i].path, '/');
        base = base ? base + 1 : files[i].path;
        has_readme |= !strcmp(files[i].path, "README.md") || (pir && *pir && !strcmp(base, "README.md") && !strchr(files[i].path + strlen(pir) + 1, '/'));
        adapter |= !strcmp(base, "adapter_config.json");
    }
    if (!rc && !n) rc = err_set(ERR_STAGE, "nothing to upload in '%s'", src);
    char *card_path = NULL;
    if (!rc && stage_bool(c, "model_card") && !has_readme) {
        const stage_input *base = stage_input_get(c, "base"), *ev = stage_input_get(c, "eval"), *data = stage_input_get(c, "data");
        json_t *metrics = json_object(), *datasets = json_array();
        if (ev) {
            const char *k;
            json_t *v;
            json_object_foreach(json_object_get(ev->manifest, "metrics"), k, v) {
                char *name;
                if (asprintf(&name, "%s.%s", ev->stage, k) >= 0) json_object_set(metrics, name, v), free(name);
            }
        }
        if (data) collect_datasets(json_object_get(data->manifest, "params"), datasets);
        const char *base_model = NULL;
        if (base && !strcmp(base->kind, "fetch_model")) base_model = json_string_value(json_object_get(json_object_get(base->manifest, "params"), "repo"));
        hub_card card = {.repo = stage_str(c, "repo"), .base_model = base_model, .library = adapter ? "peft" : "transformers",
                         .datasets = datasets, .metrics = metrics, .params = json_object_get(art->manifest, "params"),
                         .recipe = json_string_value(json_object_get(art->manifest, "recipe")), .program_version = QLORA_VERSION,
                         .files = paths};
        char *text = hub_model_card(&card);
        card_path = fs_join(c->out_dir, "README.md");
        rc = text ? fs_write_atomic(card_path, text, strlen(text)) : err_set(ERR_STAGE, "cannot build the model card");
        free(text);
        json_decref(metrics);
        json_decref(datasets);
        if (!rc) {
            files = realloc(files, (size_t)(n + 1) * sizeof *files);
            files[n++] = (hub_push_file){strdup(card_path), pir && *pir ? fs_join(pir, "README.md") : strdup("README.md")};
        }
    }
    hub_config cfg = {0};
    if (!rc) rc = hub_config_from_env(&cfg);
    hub_push_result res = {0};
    if (!rc) {
        char desc[512];
        snprintf(desc, sizeof desc, "qlora-run recipe '%s', stage '%s', artifact %s", json_string_value(json_object_get(art->manifest, "recipe")) ?: "?",
                 c->name, json_string_value(json_object_get(art->manifest, "key")) ?: "?");
        hub_push_opts o = {.type = !strcmp(stage_str(c, "repo_type"), "dataset") ? HUB_REPO_DATASET : HUB_REPO_MODEL,
                           .repo = stage_str(c, "repo"), .revision = stage_str(c, "revision"), .private_repo = stage_bool(c, "private"),
                           .commit_message = stage_str(c, "commit_message"), .commit_description = desc, .files = files, .n_files = n,
                           .progress = on_progress, .progress_user = c, .interrupted = c->interrupted,
                           .state_dir = c->work_dir};
        rc = hub_push(&cfg, &o, &res);
        stage_progress_done(c);
    }
    if (!rc) {
        stage_logf(c, "%s@%s: commit %s (%d files: %d regular, %d LFS, %d already on the hub; %.1f MB sent)%s", stage_str(c, "repo"),
                   stage_str(c, "revision"), res.commit_oid, n, res.n_regular, res.n_lfs, res.n_lfs_skipped, res.bytes_uploaded / 1e6,
                   res.created_repo ? "; created the repo" : "");
        json_t *receipt = json_pack("{s:s, s:s, s:s, s:s, s:s*, s:O, s:b}", "repo", stage_str(c, "repo"), "revision", stage_str(c, "revision"),
                                    "repo_type", stage_str(c, "repo_type"), "commit", res.commit_oid, "commit_url", res.commit_url, "files",
                                    paths, "created_repo", res.created_repo);
        char *text = json_dumps(receipt, JSON_INDENT(2)), *rp = fs_join(c->out_dir, "push.json");
        rc = fs_write_atomic(rp, text, strlen(text));
        free(text);
        free(rp);
        json_decref(receipt);
        stage_metric(c, "files", (double)n);
        stage_metric(c, "lfs_files", (double)res.n_lfs);
        stage_metric(c, "bytes_uploaded", (double)res.bytes_uploaded);
    }
    hub_push_result_free(&res);
    hub_config_free(&cfg);
    hub_push_files_free(&files, &n);
    json_decref(paths);
    free(card_path);
    free(src);
    return rc;
}

/* The hub the artifact goes to (HF_ENDPOINT) is part of the target, with repo, revision and
 * path_in_repo: publishing the same artifact to another endpoint is not "already done". The
 * token is not: it says who uploads, not where. */
static int push_resolve(const json_t *p, json_t **out) {
    (void)p;
    hub_config cfg;
    *out = NULL;
    int rc = hub_config_from_env(&cfg);
    if (!rc) *out = json_pack("{s:s}", "endpoint", cfg.endpoint);
    hub_config_free(&cfg);
    return rc;
}

static const metric_spec push_metrics[] = {
    {"files", METRIC_NEITHER, "files in the commit"},
    {"lfs_files", METRIC_NEITHER, "files that went through LFS"},
    {"bytes_uploaded", METRIC_NEITHER, "bytes sent (LFS objects the hub had are not sent again)"},
    {0}};

const stage_kind stage_kind_push_to_hub = {
    .name = "push_to_hub",
    .version = 1,
    .doc = "upload an artifact (adapter, merged model, GGUF) to a hub repo with a generated model card",
    .params = params,
    .check = check,
    .run = run,
    .resolve = push_resolve,
    .metrics = push_metrics,
    .flags = STAGE_KIND_PUBLISHES,
};
