/* dataset.c: the `dataset` stage kind and `dataset_show` (see dataset.h).
 *
 * The stage reads its model input's tokenizer (<input dir>/model), gathers the records
 * (files and globs, a URL or hub dataset file through the hub client, or a Lua generator),
 * and hands everything to dataset_build. Hook files (format_hook, generator, and the
 * recipe's hooks.format / hooks.generate) run in the sandbox of core/lua_host.h. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "train/dataset_build.h"
#include "data/dataset_read.h"
#include "hub/hub.h"
#include "tokenizer/tokenizer.h"
#include "stages/stage.h"

static const param_spec dataset_params[] = {
    {"model", PARAM_REF, NULL, 1, 0, "init_model|fetch_model|quantize_nf4",
     "the stage whose model directory holds the tokenizer", PARAM_REQUIRED},
    {"path", PARAM_FILES, NULL, 1, 0, NULL, "data files or globs (JSON array, JSONL, CSV or text), relative to the recipe", 0},
    {"url", PARAM_STRING, NULL, 1, 0, NULL,
     "a data file by URL (https://...) or in a hub dataset repo (hf://datasets/org/name[@rev]/path)", 0},
    {"generator", PARAM_FILE, NULL, 1, 0, NULL, "a Lua file whose generate(ctx) yields records (instead of path)", 0},
    {"type", PARAM_ENUM, "auto", 1, 0, "auto|json|jsonl|csv|text", "file type; auto goes by the extension", 0},
    {"format", PARAM_ENUM, "alpaca", 1, 0, "alpaca|chat|completion|lua",
     "how a record becomes prompt and response: alpaca templates, a chat template, raw text, or a Lua format hook", 0},
    {"format_hook", PARAM_FILE, NULL, 1, 0, NULL, "a Lua file with format(record, ctx) (format: lua)", 0},
    {"chat_template", PARAM_ENUM, "llama-3", 1, 0, "llama-2|llama-3|chatml", "the chat template of format: chat", 0},
    {"sequence_len", PARAM_INT, "512", 2, 1048576, NULL, "tokens per row (and the longest sequence)", 0},
    {"truncation", PARAM_ENUM, "truncate", 1, 0, "truncate|drop", "what to do with a sequence longer than sequence_len", 0},
    {"train_on_inputs", PARAM_BOOL, "false", 1, 0, NULL, "train on prompt tokens too (false: they are masked)", 0},
    {"sample_packing", PARAM_BOOL, "false", 1, 0, NULL,
     "pack several sequences per row (first-fit-decreasing; attention and positions restart at each)", 0},
    {"val_set_size", PARAM_FLOAT, "0", 0, 1e12, NULL, "validation split: a fraction (< 1) or a count of sequences", 0},
    {"shuffle", PARAM_BOOL, "true", 1, 0, NULL, "shuffle sequences (and packed rows) with the seed", 0},
    {"seed", PARAM_INT, NULL, 0, 9007199254740991.0, NULL, "shuffle and split seed (default: the recipe's seed)", 0},
    {"on_error", PARAM_ENUM, "fail", 1, 0, "fail|skip", "a bad record stops the stage (fail) or is counted and left out", 0},
    {"max_records", PARAM_INT, "0", 0, 1e15, NULL, "read at most this many records (0: all)", 0},
    {"hook_args", PARAM_ANY, NULL, 1, 0, NULL, "any value, passed to the format and generate hooks as ctx.args", 0},
    {0},
};

static int dataset_check(const json_t *p) {
    bool has_path = json_array_size(json_object_get(p, "path")) > 0 || json_is_string(json_object_get(p, "path"));
    bool has_url = json_is_string(json_object_get(p, "url"));
    bool has_gen = json_is_string(json_object_get(p, "generator"));
    if (has_path + has_url + has_gen > 1)
        return err_set(ERR_RECIPE, "path, url and generator are alternatives: set one of them");
    const char *fmt = json_string_value(json_object_get(p, "format"));
    bool has_hook = json_is_string(json_object_get(p, "format_hook"));
    if (has_hook && fmt && strcmp(fmt, "lua"))
        return err_set(ERR_RECIPE, "format_hook is used only with format: lua (format is '%s')", fmt);
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && !strcmp(type, "text") && fmt && strcmp(fmt, "completion") && strcmp(fmt, "lua"))
        return err_set(ERR_RECIPE, "type: text gives records with only 'text': use format: completion (or lua)");
    return 0;
}

/* ---- the tokenizer behind dataset_tokenizer ---- */

static int tok_encode(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tokenizer_encode(ud, text, len, false, ids, n);
}

static void tok_adapt(tokenizer *t, dataset_tokenizer *out) {
    out->ud = t;
    out->encode = tok_encode;
    out->bos = tokenizer_bos(t);
    out->eos = tokenizer_eos(t);
    out->vocab_size = tokenizer_vocab_size(t);
    const char *b = out->bos >= 0 ? tokenizer_token(t, out->bos) : NULL;
    const char *e = out->eos >= 0 ? tokenizer_token(t, out->eos) : NULL;
    out->bos_token = b ? b : "";
    out->eos_token = e ? e : "";
}

/* ---- sources ---- */

static void hub_progress_cb(void *user, const hub_progress *p) {
    stage_progress(user, p->file, (double)p->done, (double)p->total, "B");
}

/* url: https://... or hf://datasets/org/name[@rev]/path -> a local file (malloc'd) */
static int fetch_url(stage_ctx *c, const char *url, char **local) {
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (rc) return rc;
    if (!strncmp(url, "hf://datasets/", 14)) {
        const char *s = url + 14, *slash1 = strchr(s, '/'), *slash2 = slash1 ? strchr(slash1 + 1, '/') : NULL;
        if (!slash2 || !slash2[1]) {
            hub_config_free(&cfg);
            return err_set(ERR_RECIPE, "url '%s': expected hf://datasets/org/name[@revision]/path/in/repo", url);
        }
        char *spec = strndup(s, (size_t)(slash2 - s)), *repo = NULL, *rev = NULL;
        rc = hub_parse_repo_spec(spec, &repo, &rev);
        if (rc) rc = err_set(ERR_RECIPE, "url '%s': %s", url, err_msg());
        else rc = hub_file_download(&cfg, HUB_REPO_DATASET, repo, rev, slash2 + 1, hub_progress_cb, c, local);
        free(spec);
        free(repo);
        free(rev);
    } else if (!strncmp(url, "https://", 8) || !strncmp(url, "http://", 7)) {
        rc = hub_url_download(&cfg, url, hub_progress_cb, c, local);
    } else {
        rc = err_set(ERR_RECIPE, "url '%s': expected https://... or hf://datasets/org/name/path", url);
    }
    stage_progress_done(c);
    hub_config_free(&cfg);
    return rc;
}

/* path entries resolved against the recipe directory, then globbed */
static int resolve_paths(stage_ctx *c, char ***paths, size_t *n) {
    json_t *p = stage_json(c, "path");
    json_t *one = NULL;
    if (json_is_string(p)) {
        one = json_array();
        json_array_append(one, p);
        p = one;
    }
    size_t k = json_array_size(p);
    char **pats = calloc(k ? k : 1, sizeof *pats);
    int rc = pats ? 0 : err_set(ERR_STAGE, "out of memory");
    for (size_t i = 0; i < k && !rc; i++) {
        const char *s = json_string_value(json_array_get(p, i));
        if (!s) rc = err_set(ERR_RECIPE, "path: expected file names or globs");
        else pats[i] = s[0] == '/' || !c->recipe_dir ? strdup(s) : fs_join(c->recipe_dir, s);
    }
    if (!rc) rc = dataset_glob((const char *const *)pats, k, paths, n);
    for (size_t i = 0; pats && i < k; i++) free(pats[i]);
    free(pats);
    json_decref(one);
    return rc;
}

/* only the data points of the recipe's hooks, so an lr or notifier hook never runs here */
static json_t *data_hooks_spec(const json_t *all) {
    json_t *s = json_object();
    const char *keep[] = {"format", "generate", "allow", "memory_mb", "instructions"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        json_t *v = json_object_get(all, keep[i]);
        if (v) json_object_set(s, keep[i], v);
    }
    return s;
}

/* the builder's callbacks, onto this stage's context */
static void on_log(void *ud, const char *line) { stage_logf(ud, "%s", line); }
static void on_metric(void *ud, const char *name, double v) { stage_metric(ud, name, v); }
static void on_progress(void *ud, const char *what, double done, const char *unit) {
    stage_progress(ud, what, done, 0, unit);
}
static void on_progress_done(void *ud) { stage_progress_done(ud); }
static bool on_interrupted(void *ud) { return stage_interrupted(ud); }

static int dataset_run(stage_ctx *c) {
    const stage_input *in = stage_input_get(c, "model");
    if (!in) return err_set(ERR_RECIPE, "%s: needs a model input (model: <stage>)", c->name);
    dataset_opts o = {0};
    const char *fmt = stage_str(c, "format"), *tpl = stage_str(c, "chat_template");
    o.format = !strcmp(fmt, "chat")         ? DATASET_FORMAT_CHAT
               : !strcmp(fmt, "completion") ? DATASET_FORMAT_COMPLETION
               : !strcmp(fmt, "lua")        ? DATASET_FORMAT_LUA
                                            : DATASET_FORMAT_ALPACA;
    o.chat_template = !strcmp(tpl, "llama-2")  ? DATASET_CHAT_LLAMA2
                      : !strcmp(tpl, "chatml") ? DATASET_CHAT_CHATML
                                               : DATASET_CHAT_LLAMA3;
    o.sequence_len = stage_int(c, "sequence_len");
    o.drop_long = !strcmp(stage_str(c, "truncation"), "drop");
    o.train_on_inputs = stage_bool(c, "train_on_inputs");
    o.sample_packing = stage_bool(c, "sample_packing");
    o.val_set_size = stage_float(c, "val_set_size");
    o.shuffle = stage_bool(c, "shuffle");
    json_t *seed = stage_json(c, "seed");
    o.seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : c->seed;
    o.skip_errors = !strcmp(stage_str(c, "on_error"), "skip");
    o.max_records = stage_int(c, "max_records");
    o.jobs = c->jobs > 0 ? c->jobs : 1;
    o.hook_args = stage_json(c, "hook_args");

    dataset_source src = {0};
    dataset_type_parse(stage_str(c, "type"), &src.type);
    char **paths = NULL, *fetched = NULL;
    size_t n_paths = 0;
    hooks *hk = NULL;
    tokenizer *t = NULL;
    json_t *spec = data_hooks_spec(c->hooks);
    int rc = hooks_open(&hk, spec);
    json_decref(spec);
    char *fh = stage_path(c, "format_hook"), *gen = stage_path(c, "generator");
    if (!rc && fh) rc = hooks_bind(hk, "format", fh);
    if (!rc && gen) rc = hooks_bind(hk, "generate", gen);
    free(fh);
    free(gen);
    if (!rc && stage_str(c, "url")) {
        rc = fetch_url(c, stage_str(c, "url"), &fetched);
        if (!rc) {
            paths = &fetched;
            n_paths = 1;
        }
    } else if (!rc && stage_json(c, "path") && !json_is_null(stage_json(c, "path")) && !stage_str(c, "generator")) {
        rc = resolve_paths(c, &paths, &n_paths);
    }
    if (!rc && o.format != DATASET_FORMAT_LUA && hooks_has(hk, "format"))
        stage_logf(c, "note: hooks.format is set but format is %s, so the hook is not used here (format: lua uses it)", fmt);
    if (!rc && n_paths == 0 && !hooks_has(hk, "generate"))
        rc = err_set(ERR_RECIPE, "%s: no data: set path, url or generator (or hooks.generate in the recipe)", c->name);
    if (!rc) {
        char *dir = fs_join(in->dir, "model");
        rc = tokenizer_load(&t, dir);
        if (rc) err_wrap("%s: the tokenizer of '%s'", c->name, in->stage);
        free(dir);
    }
    if (!rc) {
        dataset_tokenizer tok;
        tok_adapt(t, &tok);
        src.paths = paths;
        src.n_paths = n_paths;
        src.hooks = hk;
        json_t *stats = NULL;
        dataset_callbacks cb = {.ud = c, .log = on_log, .metric = on_metric, .progress = on_progress,
                                .progress_done = on_progress_done, .interrupted = on_interrupted};
        rc = dataset_build(&o, &src, &tok, c->out_dir, &cb, &stats);
        if (!rc) {
            stage_logf(c, "%lld records -> %lld sequences, %lld tokens (%.1f%% masked), packing efficiency %.1f%%",
                       (long long)json_integer_value(json_object_get(stats, "records_read")),
                       (long long)json_integer_value(json_object_get(stats, "sequences")),
                       (long long)json_integer_value(json_object_get(stats, "tokens")),
                       100 * json_number_value(json_object_get(stats, "masked_share")),
                       100 * json_number_value(json_object_get(stats, "packing_efficiency")));
            if (!c->report) c->report = json_object();
            json_object_set_new(c->report, "dataset", stats);
        }
    }
    tokenizer_free(&t);
    hooks_free(&hk);
    if (paths == &fetched) free(fetched);
    else dataset_paths_free(&paths, n_paths);
    return rc;
}

static const metric_spec dataset_metrics[] = {
    {"records_read", METRIC_NEITHER, "records read from every source"},
    {"records_dropped", METRIC_NEITHER, "records the format skipped"},
    {"records_truncated", METRIC_NEITHER, "records cut to max_seq_len"},
    {"sequences", METRIC_NEITHER, "training sequences after packing"},
    {"tokens", METRIC_NEITHER, "tokens in all sequences"},
    {"masked_share", METRIC_NEITHER, "share of tokens without a training target"},
    {"packing_efficiency", METRIC_HIGHER, "share of packed rows filled with tokens"},
    {"train_rows", METRIC_NEITHER, "rows in the train split"},
    {0}};

const stage_kind stage_kind_dataset = {
    .name = "dataset",
    .version = 2, /* 2: meta.json says how records were formatted (evaluate reads it) */
    .doc = "tokenize, mask, pack and split training data (Alpaca, chat, completion or a Lua format)",
    .params = dataset_params,
    .check = dataset_check,
    .run = dataset_run,
    .key_hooks = "format|generate",
    .metrics = dataset_metrics,
};
