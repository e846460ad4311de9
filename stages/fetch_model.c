/* fetch_model.c: the stage that brings a model in, from the hub, a local folder or a URL.
 *
 * The artifact is `<out>/model`: for the hub, a symlink to the snapshot directory in the
 * shared HF cache (gigabytes are never copied, and the Python tools see the same files);
 * for `path`, a symlink to the (absolute) folder; for `url`, the files themselves, fetched
 * from a base URL that holds an HF model directory. The manifest's report records the
 * source and, for the hub, the commit the revision resolved to. */
#define _GNU_SOURCE
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "hub/hub.h"
#include "model/config.h"
#include "tokenizer/tokfile.h"
#include "stages/stage.h"

static const param_spec fetch_params[] = {
    {"source", PARAM_ENUM, "hub", 1, 0, "hub|path|url", "where the model comes from", 0},
    {"repo", PARAM_STRING, NULL, 1, 0, NULL, "hub repo id, org/name (source: hub)", 0},
    {"revision", PARAM_STRING, "main", 1, 0, NULL, "branch, tag, commit or refs/pr/N; pin a commit for repeatable runs", 0},
    {"path", PARAM_STRING, NULL, 1, 0, NULL, "a local HF model folder (source: path); linked, not copied", 0},
    {"url", PARAM_STRING, NULL, 1, 0, NULL, "base URL of an HF model folder (source: url)", 0},
    {"include", PARAM_LIST, NULL, 1, 0, NULL,
     "file patterns to fetch (default: config, generation config, safetensors + index, tokenizer files)", 0},
    {"exclude", PARAM_LIST, NULL, 1, 0, NULL, "file patterns to skip", 0},
    {"allow_pickle", PARAM_BOOL, "false", 1, 0, NULL, "allow PyTorch pickle weights (.bin/.pt: they can run code)", 0},
    {"verify", PARAM_BOOL, "false", 1, 0, NULL,
     "re-hash files already in the HF cache; a corrupt one is deleted and fetched again", PARAM_NOKEY},
    {0},
};

static int fetch_check(const json_t *params) {
    const char *source = json_string_value(json_object_get(params, "source"));
    const char *repo = json_string_value(json_object_get(params, "repo"));
    const char *path = json_string_value(json_object_get(params, "path"));
    const char *url = json_string_value(json_object_get(params, "url"));
    if (!source || !strcmp(source, "hub")) {
        if (!repo) return err_set(ERR_RECIPE, "'repo' is required with source: hub (e.g. repo: meta-llama/Llama-2-7b-hf)");
        if (!hub_repo_id_valid(repo)) return err_set(ERR_RECIPE, "'repo': not a hub repo id: '%s' (expected org/name)", repo);
        const char *rev = json_string_value(json_object_get(params, "revision"));
        if (rev && (!*rev || !hub_path_safe(rev))) return err_set(ERR_RECIPE, "'revision': unusable revision '%s'", rev);
    } else if (!strcmp(source, "path")) {
        if (!path) return err_set(ERR_RECIPE, "'path' is required with source: path");
    } else if (!strcmp(source, "url")) {
        if (!url || (strncmp(url, "http://", 7) && strncmp(url, "https://", 8)))
            return err_set(ERR_RECIPE, "'url' must be an http(s) URL with source: url");
    }
    return 0;
}

/* NULL-terminated pattern array borrowing the JSON strings (NULL if the list is unset) */
static const char **patterns(const stage_ctx *c, const char *key) {
    json_t *l = stage_json(c, key);
    if (json_is_string(l)) {
        const char **a = calloc(2, sizeof *a);
        a[0] = json_string_value(l);
        return a;
    }
    if (!json_is_array(l)) return NULL;
    const char **a = calloc(json_array_size(l) + 1, sizeof *a);
    size_t i, k = 0;
    json_t *v;
    json_array_foreach(l, i, v) if (json_is_string(v)) a[k++] = json_string_value(v);
    return a;
}

typedef struct fetch_state {
    stage_ctx *ctx;
    double last_event;
} fetch_state;

/* a bar on a terminal; without one, a progress event every 10 s for the run's log */
static void on_progress(void *user, const hub_progress *p) {
    fetch_state *st = user;
    stage_ctx *c = st->ctx;
    stage_progress(c, p->file ? p->file : "", (double)p->done / 1e6, (double)p->total / 1e6, "MB");
    double t = clock_now_s();
    if (!log_is_tty() && t - st->last_event >= 10.0) {
        st->last_event = t;
        stage_event(c, "fetch_progress",
                    json_pack("{s:I, s:I, s:f, s:i, s:i}", "bytes_done", (json_int_t)p->done, "bytes_total",
                              (json_int_t)p->total, "bytes_per_s", p->rate, "files_done", p->files_done,
                              "files_total", p->files_total));
    }
}

static int link_model(stage_ctx *c, const char *target) {
    char *link = fs_join(c->out_dir, "model");
    int rc = 0;
    if (symlink(target, link)) rc = err_errno(ERR_STAGE, "cannot create the link '%s'", link);
    free(link);
    return rc;
}

/* dir's tokenizer.json, when there is one, of a model the engine does not implement (Unigram, WordPiece) */
static int preview_tokenizer(const char *dir) {
    char *tj = fs_join(dir, "tokenizer.json"), type[64] = "";
    int rc = fs_exists(tj) ? tokfile_model_type(tj, type, sizeof type) : 0;
    if (!rc && *type && strcmp(type, "BPE"))
        rc = err_set(ERR_DATA, "%s: model type '%s' is not supported (only BPE tokenizers)", tj, type);
    free(tj);
    return rc;
}

/* Before the weights: config.json and tokenizer.json alone, read as the stages after this one will
 * read them, so that an architecture, rope type or tokenizer the engine does not implement costs
 * two small files instead of the download. *commit: the commit they came from, which pins the
 * download that follows (a branch moving in between cannot mix two commits). */
static int hub_precheck(const hub_config *cfg, const hub_fetch_opts *o, char **commit) {
    static const char *const small[] = {"config.json", "tokenizer.json", NULL};
    hub_fetch_opts p = *o;
    p.include = small;
    p.select = NULL;
    hub_snapshot s;
    int rc = hub_snapshot_download(cfg, &p, &s);
    if (rc) return rc;
    char *cj = fs_join(s.dir, "config.json");
    if (fs_exists(cj)) {
        model_config mc;
        rc = config_load(&mc, s.dir);
        config_free(&mc);
    }
    if (!rc) rc = preview_tokenizer(s.dir);
    if (rc) err_wrap("%s@%s: not downloaded", o->repo, o->revision ? o->revision : "main");
    else *commit = strdup(s.commit);
    free(cj);
    hub_snapshot_free(&s);
    return rc;
}

static int fetch_hub(stage_ctx *c, json_t *report) {
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (rc) return rc;
    const char **inc = patterns(c, "include"), **exc = patterns(c, "exclude");
    fetch_state st = {c, clock_now_s()};
    hub_fetch_opts o = {
        .type = HUB_REPO_MODEL,
        .repo = stage_str(c, "repo"),
        .revision = stage_str(c, "revision"),
        .include = inc,
        .exclude = exc,
        .allow_pickle = stage_bool(c, "allow_pickle"),
        .verify = stage_bool(c, "verify"),
        .progress = on_progress,
        .progress_user = &st,
        .interrupted = c->interrupted,
    };
    hub_snapshot s = {0};
    double t0 = clock_now_s();
    const char *rev = o.revision ? o.revision : "main";
    char *commit = NULL;
    rc = hub_precheck(&cfg, &o, &commit);
    o.revision = commit;
    if (!rc) rc = hub_snapshot_download(&cfg, &o, &s);
    double dt = clock_now_s() - t0;
    stage_progress_done(c);
    free((void *)inc);
    free((void *)exc);
    if (!rc) {
        char *cfgjson = fs_join(s.dir, "config.json");
        if (!fs_exists(cfgjson))
            rc = err_set(ERR_DATA, "model '%s' has no config.json among the fetched files: is it an HF model repo?", o.repo);
        free(cfgjson);
    }
    if (!rc) rc = link_model(c, s.dir);
    if (!rc) {
        if (s.offline && !cfg.offline) stage_logf(c, "the hub is unreachable: using the cached snapshot");
        if (s.n_corrupt) stage_logf(c, "%d cached file(s) failed their checksum and were fetched again", s.n_corrupt);
        stage_logf(c, "%s@%s is commit %s: %d files, %.1f MB (%.1f MB downloaded%s)", o.repo, rev, s.commit, s.n_files,
                   (double)s.bytes_total / 1e6, (double)s.bytes_downloaded / 1e6,
                   s.bytes_downloaded > 0 && dt > 0 ? "" : ", all cached");
        if (s.bytes_downloaded > 0 && dt > 0)
            stage_logf(c, "downloaded at %.1f MB/s", (double)s.bytes_downloaded / 1e6 / dt);
        json_object_set_new(report, "repo", json_string(o.repo));
        json_object_set_new(report, "revision", json_string(rev));
        json_object_set_new(report, "commit", json_string(s.commit));
        json_object_set_new(report, "snapshot", json_string(s.dir));
        json_t *files = json_array();
        for (int i = 0; i < s.n_files; i++) json_array_append_new(files, json_string(s.files[i]));
        json_object_set_new(report, "files", files);
        stage_metric(c, "bytes_total", (double)s.bytes_total);
        stage_metric(c, "bytes_downloaded", (double)s.bytes_downloaded);
        stage_metric(c, "download_s", dt);
        json_t *ev = json_pack("{s:s, s:s, s:I, s:I}", "repo", o.repo, "commit", s.commit, "bytes_total",
                               (json_int_t)s.bytes_total, "bytes_downloaded", (json_int_t)s.bytes_downloaded);
        stage_event(c, "fetch", ev);
    }
    hub_snapshot_free(&s);
    free(commit);
    hub_config_free(&cfg);
    return rc;
}

static int fetch_path(stage_ctx *c, json_t *report) {
    char *p = stage_path(c, "path");
    char *real = realpath(p, NULL);
    int rc = 0;
    if (!real || !fs_is_dir(real)) {
        rc = err_set(ERR_DATA, "'path': '%s' is not a folder", p);
        goto out;
    }
    char *cfgjson = fs_join(real, "config.json");
    if (!fs_exists(cfgjson)) rc = err_set(ERR_DATA, "'%s' has no config.json: not an HF model folder", p);
    free(cfgjson);
    if (!rc) rc = link_model(c, real);
    if (!rc) {
        stage_logf(c, "linked the model folder '%s'", real);
        json_object_set_new(report, "path", json_string(real));
    }
out:
    free(real);
    free(p);
    return rc;
}

/* a URL source: fetch the HF layout by name (no listing exists): the small files, then the
 * shards named by the index, or the single model.safetensors */
static int fetch_url(stage_ctx *c, json_t *report) {
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (rc) return rc;
    const char *url = stage_str(c, "url");
    char *dir = fs_join(c->out_dir, "model");
    const char *first[] = {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                           "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"};
    const bool optional[] = {false, true, true, true, true, true, true};
    bool found[7] = {0};
    fetch_state st = {c, clock_now_s()};
    rc = hub_url_fetch_files(&cfg, url, first, optional, 7, dir, on_progress, &st, found);
    json_t *files = json_array();
    for (int i = 0; i < 7 && !rc; i++)
        if (found[i]) json_array_append_new(files, json_string(first[i]));
    if (!rc) {
        const char **shards = NULL;
        int n = 0;
        json_t *index = NULL;
        if (found[2]) {
            char *ip = fs_join(dir, "model.safetensors.index.json");
            index = json_load_file(ip, 0, NULL);
            free(ip);
            json_t *wm = json_object_get(index, "weight_map");
            if (!json_is_object(wm)) rc = err_set(ERR_DATA, "%s/model.safetensors.index.json: no 'weight_map'", url);
            shards = calloc(json_object_size(wm) + 1, sizeof *shards);
            const char *k;
            json_t *v;
            json_object_foreach(wm, k, v) {
                const char *f = json_string_value(v);
                bool dup = false;
                for (int i = 0; i < n && f; i++) dup |= !strcmp(shards[i], f);
                if (f && !dup) shards[n++] = f;
            }
        } else {
            shards = calloc(2, sizeof *shards);
            shards[n++] = "model.safetensors";
        }
        bool *got = calloc((size_t)n + 1, sizeof *got);
        if (!rc) rc = hub_url_fetch_files(&cfg, url, shards, NULL, n, dir, on_progress, &st, got);
        for (int i = 0; i < n && !rc; i++) json_array_append_new(files, json_string(shards[i]));
        free(got);
        free((void *)shards);
        json_decref(index);
    }
    stage_progress_done(c);
    if (!rc) {
        stage_logf(c, "fetched %zu files from %s", json_array_size(files), url);
        json_object_set_new(report, "url", json_string(url));
        json_object_set_new(report, "files", files);
    } else {
        json_decref(files);
    }
    free(dir);
    hub_config_free(&cfg);
    return rc;
}

static int fetch_run(stage_ctx *c) {
    const char *source = stage_str(c, "source");
    if (!source) source = "hub";
    json_t *report = json_object();
    json_object_set_new(report, "source", json_string(source));
    int rc;
    if (!strcmp(source, "path")) rc = fetch_path(c, report);
    else if (!strcmp(source, "url")) rc = fetch_url(c, report);
    else rc = fetch_hub(c, report);
    if (!rc) {
        if (!c->report) c->report = json_object();
        /* what peft's base_model_name_or_path and GGUF's general.name should say */
        const char *name = !strcmp(source, "path") ? NULL : !strcmp(source, "url") ? stage_str(c, "url") : stage_str(c, "repo");
        char *path = !strcmp(source, "path") ? stage_path(c, "path") : NULL, *real = path ? realpath(path, NULL) : NULL;
        if (path) name = real ? real : path;
        if (name) json_object_set_new(c->report, "model_name", json_string(name));
        free(real);
        free(path);
        json_object_set_new(c->report, "fetch", report);
    } else {
        json_decref(report);
    }
    return rc;
}

/* source: path links a local folder instead of copying it: the folder enters the key as a
 * directory (the content of every file in it, as for a tokenizer directory), so that replacing
 * the weights in place re-runs what was made from them instead of reusing stale artifacts. The
 * hash memo keeps this to a stat per file after the first run. */
static void fetch_key_paths(const json_t *params, void (*add)(void *ud, const char *path, stage_key_path what),
                            void *ud) {
    const char *source = json_string_value(json_object_get(params, "source"));
    const char *path = json_string_value(json_object_get(params, "path"));
    if (source && !strcmp(source, "path") && path) add(ud, path, STAGE_KEY_DIR);
}
/* source: path: the folder's config.json, read as the stages after it will read it, and its
 * tokenizer's model type (a folder without them is the run's to report); the hub and URLs are
 * not known before the fetch */
static int fetch_preview(const json_t *params, const char *recipe_dir, const stage_model_preview *in,
                         stage_model_preview *out) {
    (void)in;
    const char *source = json_string_value(json_object_get(params, "source"));
    const char *path = json_string_value(json_object_get(params, "path"));
    if (!source || strcmp(source, "path") || !path) return 0;
    /* a recipe in the current folder: messages name the path as written, not ./path */
    char *dir = stage_path_in(recipe_dir && strcmp(recipe_dir, ".") ? recipe_dir : NULL, path);
    char *cj = fs_join(dir, "config.json");
    int rc = 0;
    if (fs_exists(cj) && !fs_is_dir(cj)) {
        out->config = calloc(1, sizeof *out->config);
        rc = out->config ? config_load(out->config, dir) : err_set(ERR_STAGE, "out of memory");
        if (rc) {
            if (out->config) config_free(out->config);
            free(out->config);
            out->config = NULL;
        } else {
            out->from = cj;
            cj = NULL;
        }
    }
    if (!rc) rc = preview_tokenizer(dir);
    free(cj);
    free(dir);
    return rc;
}

static const metric_spec fetch_metrics[] = {
    {"bytes_total", METRIC_NEITHER, "size of the model's files"},
    {"bytes_downloaded", METRIC_NEITHER, "bytes this run downloaded"},
    {"download_s", METRIC_LOWER, "seconds spent downloading"},
    {0}};

const stage_kind stage_kind_fetch_model = {
    .name = "fetch_model",
    .version = 1,
    .doc = "bring a model in: a hub repo (into the shared HF cache, linked), a local folder (linked) or a URL",
    .params = fetch_params,
    .check = fetch_check,
    .run = fetch_run,
    .key_paths = fetch_key_paths,
    .model_preview = fetch_preview,
    .metrics = fetch_metrics,
};
