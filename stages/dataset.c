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
#include "hub/datasets.h"
#include "hub/hub.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "stages/stage.h"

/* The keys of format: chat, as axolotl names them. One macro so that a per-dataset entry's
 * table can take the same keys (chat_opts_load reads them from any JSON object). */
#define DATASET_CHAT_PARAMS                                                                                           \
    {"chat_template", PARAM_ENUM, NULL, 1, 0, "tokenizer_default|llama-2|llama-3|chatml",                             \
     "format: chat: the model's own Jinja template (tokenizer_default; the default when the model has one, "         \
     "else llama-3) or a built-in one", PARAM_ENTRY},                                                                           \
    {"chat_template_file", PARAM_FILE, NULL, 1, 0, NULL, "format: chat: a Jinja chat template file instead", PARAM_ENTRY},     \
    {"chat_template_kwargs", PARAM_ANY, NULL, 1, 0, NULL,                                                             \
     "extra variables for the Jinja template (e.g. {enable_thinking: false})", PARAM_ENTRY},                                    \
    {"field_messages", PARAM_STRING, NULL, 1, 0, NULL,                                                                \
     "the record's key holding the messages (default messages, or ShareGPT conversations)", PARAM_ENTRY},                       \
    {"message_property_mappings", PARAM_ANY, NULL, 1, 0, NULL,                                                        \
     "the message keys of role and content, e.g. {role: from, content: value}", PARAM_ENTRY},                                  \
    {"roles_to_train", PARAM_LIST, "[assistant]", 0, -1, NULL, "Jinja templates: the roles whose turns are trained", PARAM_ENTRY}, \
    {"train_on_eos", PARAM_ENUM, "turn", 1, 0, "turn|last|all|none",                                                 \
     "Jinja templates: train the end-of-turn marker after each trained turn, the last one, all, or none", PARAM_ENTRY},        \
    {"eot_tokens", PARAM_LIST, NULL, 0, -1, NULL,                                                                     \
     "Jinja templates: the end-of-turn texts (default: the EOS token and the known markers the vocabulary has)", PARAM_ENTRY}

static const param_spec dataset_params[] = {
    {"model", PARAM_REF, NULL, 1, 0, "init_model|fetch_model|quantize_nf4",
     "the stage whose model directory holds the tokenizer", PARAM_REQUIRED},
    {"path", PARAM_FILES, NULL, 1, 0, NULL, "data files or globs (JSON array, JSONL, CSV, text or Parquet), relative to the recipe", PARAM_ENTRY},
    {"datasets", PARAM_ENTRIES, NULL, 1, 0, NULL,
     "several datasets mixed in one stage: a list of entries, each with its own source (path or url, with "
     "config, split, revision), type, format keys, field names, max_records and weight; unset keys come from the stage", 0},
    {"weight", PARAM_FLOAT, "1", 0, 1e9, NULL,
     "(in a datasets entry) its share of the mix, weight / the sum of the weights; records chosen with the seed", PARAM_ENTRY_ONLY},
    {"url", PARAM_STRING, NULL, 1, 0, NULL,
     "a data file by URL (https://...) or in a hub dataset repo (hf://datasets/org/name[@rev]/path), or a whole hub "
     "dataset (hf://datasets/org/name[@rev]: its config and split)", PARAM_ENTRY},
    {"config", PARAM_STRING, NULL, 1, 0, NULL,
     "a hub dataset's config (subset), as in load_dataset(name, config); default: its default or only one", PARAM_ENTRY},
    {"split", PARAM_STRING, "train", 1, 0, NULL, "a hub dataset's split (train, validation, test or its own names)", PARAM_ENTRY},
    {"revision", PARAM_STRING, NULL, 1, 0, NULL,
     "a hub dataset's branch, tag or commit (default main); its commit and files are part of the cache key", PARAM_ENTRY},
    {"generator", PARAM_FILE, NULL, 1, 0, "generate", "a Lua file whose generate(ctx) yields records (instead of path)", PARAM_HOOK},
    {"type", PARAM_ENUM, "auto", 1, 0, "auto|json|jsonl|csv|text|parquet",
     "file type; auto goes by the extension (and reads a file that starts with PAR1 as Parquet)", PARAM_ENTRY},
    {"format", PARAM_ENUM, "alpaca", 1, 0, "alpaca|chat|completion|lua",
     "how a record becomes prompt and response: alpaca templates, a chat template, raw text, or a Lua format hook", PARAM_ENTRY},
    {"field_instruction", PARAM_STRING, NULL, 1, 0, NULL, "format alpaca: the field holding the instruction (default instruction)", PARAM_ENTRY},
    {"field_input", PARAM_STRING, NULL, 1, 0, NULL, "format alpaca: the field holding the input (default input)", PARAM_ENTRY},
    {"field_output", PARAM_STRING, NULL, 1, 0, NULL, "format alpaca: the field holding the output (default output)", PARAM_ENTRY},
    {"field", PARAM_STRING, NULL, 1, 0, NULL, "format completion: the field holding the text (default text)", PARAM_ENTRY},
    {"format_hook", PARAM_FILE, NULL, 1, 0, "format", "a Lua file with format(record, ctx) (format: lua)", PARAM_HOOK},
    DATASET_CHAT_PARAMS,
    {"sequence_len", PARAM_INT, "512", 2, 1048576, NULL, "tokens per row (and the longest sequence)", 0},
    {"truncation", PARAM_ENUM, "truncate", 1, 0, "truncate|drop", "what to do with a sequence longer than sequence_len", 0},
    {"train_on_inputs", PARAM_BOOL, "false", 1, 0, NULL, "train on prompt tokens too (false: they are masked)", 0},
    {"sample_packing", PARAM_BOOL, "false", 1, 0, NULL,
     "pack several sequences per row (first-fit-decreasing; attention and positions restart at each)", 0},
    {"val_set_size", PARAM_FLOAT, "0", 0, 1e12, NULL, "validation split: a fraction (< 1) or a count of sequences", 0},
    {"shuffle", PARAM_BOOL, "true", 1, 0, NULL, "shuffle sequences (and packed rows) with the seed", 0},
    {"seed", PARAM_INT, NULL, 0, 9007199254740991.0, NULL, "shuffle and split seed (default: the recipe's seed)", 0},
    {"on_error", PARAM_ENUM, "fail", 1, 0, "fail|skip", "a bad record stops the stage (fail) or is counted and left out", 0},
    {"max_records", PARAM_INT, "0", 0, 1e15, NULL, "read at most this many records (0: all; with datasets, per entry)", PARAM_ENTRY},
    {"hook_args", PARAM_ANY, NULL, 1, 0, NULL, "any value, passed to the format and generate hooks as ctx.args", 0},
    {0},
};

/* ---- format: chat with a Jinja template: the keys of DATASET_CHAT_PARAMS ---- */

/* load-time checks of the chat keys in p (a stage's params or a per-dataset entry) */
static int chat_params_check(const json_t *p, const char *fmt) {
    bool is_chat = fmt && !strcmp(fmt, "chat");
    const char *tpl = json_string_value(json_object_get(p, "chat_template"));
    bool has_file = json_is_string(json_object_get(p, "chat_template_file"));
    if (!is_chat && has_file) return err_set(ERR_RECIPE, "chat_template_file is used only with format: chat");
    if (tpl && has_file)
        return err_set(ERR_RECIPE, "chat_template and chat_template_file are alternatives: set one of them");
    json_t *kw = json_object_get(p, "chat_template_kwargs");
    if (kw && !json_is_null(kw) && !json_is_object(kw))
        return err_set(ERR_RECIPE, "chat_template_kwargs: expected a mapping of template variables, e.g. {enable_thinking: false}");
    json_t *mp = json_object_get(p, "message_property_mappings");
    if (mp && !json_is_null(mp)) {
        if (!json_is_object(mp)) return err_set(ERR_RECIPE, "message_property_mappings: expected {role: KEY, content: KEY}");
        const char *k;
        json_t *v;
        json_object_foreach(mp, k, v) {
            if (strcmp(k, "role") && strcmp(k, "content"))
                return err_set(ERR_RECIPE, "message_property_mappings: unknown key '%s' (role or content)", k);
            if (!json_is_string(v)) return err_set(ERR_RECIPE, "message_property_mappings.%s: expected a key name", k);
        }
    }
    return 0;
}

/* what chat_opts_load builds; chat_opts_free releases it */
typedef struct dataset_chat {
    chat_format_opts o;
    chat_template *tpl;
    const char **roles, **eot; /* borrowed strings (params, tokenizer) */
    char *eos_copy;
} dataset_chat;

static void chat_opts_free(dataset_chat *d) {
    chat_template_free(&d->tpl);
    free(d->roles);
    free(d->eot);
    free(d->eos_copy);
    memset(d, 0, sizeof *d);
}

/* end-of-turn markers that chat templates close turns with; those the vocabulary holds as one
 * token are looked for after each trained turn, with the EOS token */
static const char *const KNOWN_EOT[] = {"<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|eom_id|>",
                                        "<｜end▁of▁sentence｜>", NULL};

static bool one_token(tokenizer *t, const char *s) {
    int32_t *ids = NULL;
    size_t n = 0;
    bool one = !tokenizer_encode(t, s, strlen(s), false, &ids, &n) && n == 1;
    free(ids);
    if (!one) err_clear();
    return one;
}

/* Read the chat keys of p. *use_jinja false: the built-in template *builtin (by name) is used.
 * file: chat_template_file resolved (or NULL). log (may be NULL) gets one line saying which. */
static int chat_opts_load(const json_t *p, const char *file, const char *model_dir, tokenizer *t, dataset_chat *d,
                          bool *use_jinja, const char **builtin, char *log, size_t log_len) {
    memset(d, 0, sizeof *d);
    *use_jinja = false;
    const char *tpl = json_string_value(json_object_get(p, "chat_template"));
    *builtin = tpl && strcmp(tpl, "tokenizer_default") ? tpl : "llama-3";
    if (tpl && strcmp(tpl, "tokenizer_default")) {
        snprintf(log, log_len, "chat template: the built-in %s", tpl);
        return 0;
    }
    int rc = chat_template_load(&d->tpl, model_dir, file);
    if (rc) {
        /* unset and the model has none: the built-in default, as before there were Jinja templates */
        if (!tpl && !file && err_code() == ERR_DATA && strstr(err_msg(), "has no chat template")) {
            err_clear();
            snprintf(log, log_len, "chat template: the model has none, so the built-in llama-3 (set chat_template to choose)");
            return 0;
        }
        return rc;
    }
    snprintf(log, log_len, "chat template: %s%s", d->tpl->source, jinja_has_generation(d->tpl->tpl) ? " ({% generation %} spans)" : "");
    *use_jinja = true;
    chat_format_opts *o = &d->o;
    o->tpl = d->tpl;
    o->field_messages = json_string_value(json_object_get(p, "field_messages"));
    json_t *mp = json_object_get(p, "message_property_mappings");
    o->role_key = json_string_value(json_object_get(mp, "role"));
    o->content_key = json_string_value(json_object_get(mp, "content"));
    json_t *kw = json_object_get(p, "chat_template_kwargs");
    o->kwargs = json_is_object(kw) ? kw : NULL;
    const char *eot = json_string_value(json_object_get(p, "train_on_eos"));
    o->train_on_eos = !eot || !strcmp(eot, "turn") ? CHAT_EOS_TURN : !strcmp(eot, "last") ? CHAT_EOS_LAST
                      : !strcmp(eot, "all") ? CHAT_EOS_ALL : CHAT_EOS_NONE;
    json_t *roles = json_object_get(p, "roles_to_train");
    if (json_is_string(roles) || json_is_array(roles)) {
        size_t n = json_is_string(roles) ? 1 : json_array_size(roles);
        d->roles = calloc(n + 1, sizeof *d->roles);
        if (!d->roles) return err_set(ERR_STAGE, "out of memory");
        for (size_t i = 0; i < n; i++)
            d->roles[i] = json_string_value(json_is_string(roles) ? roles : json_array_get(roles, i));
        o->roles_to_train = d->roles;
        o->n_roles = n;
    }
    json_t *eots = json_object_get(p, "eot_tokens");
    size_t n_user = json_is_array(eots) ? json_array_size(eots) : json_is_string(eots) ? 1 : 0;
    d->eot = calloc(n_user + sizeof KNOWN_EOT / sizeof KNOWN_EOT[0] + 1, sizeof *d->eot);
    if (!d->eot) return err_set(ERR_STAGE, "out of memory");
    size_t k = 0;
    if (n_user) {
        for (size_t i = 0; i < n_user; i++) d->eot[k++] = json_string_value(json_is_string(eots) ? eots : json_array_get(eots, i));
    } else {
        int32_t eos = tokenizer_eos(t);
        const char *e = eos >= 0 ? tokenizer_token(t, eos) : NULL;
        if (e) {
            d->eos_copy = strdup(e);
            if (d->eos_copy) d->eot[k++] = d->eos_copy;
        }
        for (size_t i = 0; KNOWN_EOT[i]; i++)
            if ((!e || strcmp(e, KNOWN_EOT[i])) && one_token(t, KNOWN_EOT[i])) d->eot[k++] = KNOWN_EOT[i];
    }
    o->eot = d->eot;
    o->n_eot = k;
    return 0;
}

static int dataset_check_one(const json_t *p);

/* the stage's params with one datasets entry's keys over them (a new reference) */
static json_t *entry_params(const json_t *stage, const json_t *entry) {
    json_t *m = json_copy((json_t *)stage);
    json_object_del(m, "datasets");
    /* the source is the entry's own: the stage's path/url/generator never leak into it */
    json_object_set_new(m, "path", json_null());
    json_object_set_new(m, "url", json_null());
    json_object_set_new(m, "generator", json_null());
    json_object_update(m, (json_t *)entry);
    if (!json_object_get(entry, "weight")) json_object_set_new(m, "weight", json_real(1));
    return m;
}

static int dataset_check(const json_t *p) {
    json_t *list = json_object_get(p, "datasets");
    if (!json_array_size(list)) return dataset_check_one(p);
    if (json_array_size(json_object_get(p, "path")) || json_is_string(json_object_get(p, "url")) ||
        json_is_string(json_object_get(p, "generator")))
        return err_set(ERR_RECIPE, "datasets names the sources: set path or url in each entry, not for the stage");
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        json_t *m = entry_params(p, e);
        int rc = 0;
        if (!json_array_size(json_object_get(m, "path")) && !json_is_string(json_object_get(m, "url")))
            rc = err_set(ERR_RECIPE, "datasets entry %zu: set its path or url", i);
        if (!rc) rc = dataset_check_one(m);
        json_decref(m);
        if (rc) return err_wrap("datasets entry %zu", i);
    }
    return 0;
}

static int dataset_check_one(const json_t *p) {
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
    return chat_params_check(p, fmt);
}

/* ---- sources ---- */

static void hub_progress_cb(void *user, const hub_progress *p) {
    stage_progress(user, p->file, (double)p->done, (double)p->total, "B");
}

/* the resolution of a whole hub dataset: params -> commit and files (download: fetched too) */
static int resolve_hub_dataset(const json_t *params, bool download, stage_ctx *c, hub_dataset *d) {
    char *repo, *rev;
    if (!hub_dataset_url(json_string_value(json_object_get(params, "url")), &repo, &rev)) return 1;
    const char *prev = json_string_value(json_object_get(params, "revision"));
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (!rc && rev && prev && strcmp(rev, prev))
        rc = err_set(ERR_RECIPE, "url names revision '%s' and revision '%s': keep one", rev, prev);
    if (!rc) {
        hub_dataset_opts o = {.repo = repo, .revision = prev ? prev : rev,
                              .config = json_string_value(json_object_get(params, "config")),
                              .split = json_string_value(json_object_get(params, "split")), .download = download,
                              .progress = c ? hub_progress_cb : NULL, .progress_user = c,
                              .interrupted = c ? c->interrupted : NULL};
        rc = hub_dataset_resolve(&cfg, &o, d);
        hub_config_free(&cfg);
    }
    free(repo);
    free(rev);
    return rc;
}

static json_t *hub_dataset_json(const hub_dataset *d) {
    json_t *files = json_array();
    for (int i = 0; i < d->n_files; i++) json_array_append_new(files, json_string(d->files[i]));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:o}", "repo", d->repo, "revision", d->revision, "commit", d->commit,
                     "config", d->config ? d->config : "default", "split", d->split, "files", files);
}

/* the plan's key: a whole hub dataset's commit and file list (stage_kind.resolve) */
static int resolve_one(const json_t *params, json_t **out) {
    *out = NULL;
    hub_dataset d;
    int rc = resolve_hub_dataset(params, false, NULL, &d);
    if (rc == 1) return 0; /* not a whole hub dataset: nothing to resolve */
    if (rc) return rc;
    *out = hub_dataset_json(&d);
    hub_dataset_free(&d);
    return 0;
}

static json_t *entry_params(const json_t *stage, const json_t *entry);

static int dataset_resolve(const json_t *params, json_t **out) {
    json_t *list = json_object_get(params, "datasets");
    if (!json_array_size(list)) return resolve_one(params, out);
    *out = NULL;
    json_t *all = json_array();
    bool any = false;
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        json_t *m = entry_params(params, e), *one = NULL;
        int rc = resolve_one(m, &one);
        json_decref(m);
        if (rc) {
            json_decref(all);
            return err_wrap("datasets entry %zu", i);
        }
        any |= one != NULL;
        json_array_append_new(all, one ? one : json_null());
    }
    if (any) *out = all;
    else json_decref(all);
    return 0;
}

/* url: https://... or hf://datasets/org/name[@rev]/path -> a local file (malloc'd) */
static int fetch_url(stage_ctx *c, const char *url, char **local) {
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (rc) return rc;
    rc = hub_fetch_url(&cfg, url, hub_progress_cb, c, local);
    stage_progress_done(c);
    hub_config_free(&cfg);
    return rc;
}

/* path entries resolved against the recipe directory, then globbed */
static int resolve_paths(stage_ctx *c, json_t *p, char ***paths, size_t *n) {
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
        else pats[i] = stage_recipe_path(c, s);
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

static dataset_format format_of(const char *fmt) {
    return !strcmp(fmt, "chat")         ? DATASET_FORMAT_CHAT
           : !strcmp(fmt, "completion") ? DATASET_FORMAT_COMPLETION
           : !strcmp(fmt, "lua")        ? DATASET_FORMAT_LUA
                                        : DATASET_FORMAT_ALPACA;
}

static dataset_chat_template template_of(const char *tpl) {
    if (!tpl) return DATASET_CHAT_LLAMA3;
    return !strcmp(tpl, "llama-2") ? DATASET_CHAT_LLAMA2 : !strcmp(tpl, "chatml") ? DATASET_CHAT_CHATML : DATASET_CHAT_LLAMA3;
}

/* the sources of a mix: the files of each part, and what owns them */
typedef struct part_src {
    json_t *params; /* the stage's with the entry's keys over them */
    char **paths, *fetched;
    size_t n;
    hub_dataset hd;
    bool hub;
    char *name;
} part_src;

static int part_files(stage_ctx *c, part_src *ps) {
    const char *url = json_string_value(json_object_get(ps->params, "url"));
    char *repo, *rev;
    if (hub_dataset_url(url, &repo, &rev)) {
        free(repo);
        free(rev);
        ps->hub = true;
        int rc = resolve_hub_dataset(ps->params, true, c, &ps->hd);
        stage_progress_done(c);
        if (rc) return rc;
        ps->paths = ps->hd.local;
        ps->n = (size_t)ps->hd.n_files;
        bool plain = !strcmp(ps->hd.config, "default") && !strcmp(ps->hd.split, "train");
        if (plain) ps->name = strdup(ps->hd.repo);
        else if (asprintf(&ps->name, "%s (%s/%s)", ps->hd.repo, ps->hd.config, ps->hd.split) < 0) ps->name = NULL;
        return 0;
    }
    if (url) {
        int rc = fetch_url(c, url, &ps->fetched);
        if (rc) return rc;
        ps->paths = &ps->fetched;
        ps->n = 1;
        ps->name = strdup(url);
        return 0;
    }
    int rc = resolve_paths(c, json_object_get(ps->params, "path"), &ps->paths, &ps->n);
    if (rc) return rc;
    const char *first = ps->n ? strrchr(ps->paths[0], '/') : NULL;
    first = first ? first + 1 : ps->n ? ps->paths[0] : "?";
    if (ps->n > 1) {
        if (asprintf(&ps->name, "%s (+%zu files)", first, ps->n - 1) < 0) ps->name = NULL;
    } else {
        ps->name = strdup(first);
    }
    return 0;
}

static void part_src_free(part_src *ps) {
    if (ps->hub) hub_dataset_free(&ps->hd);
    else if (ps->paths == &ps->fetched) free(ps->fetched);
    else dataset_paths_free(&ps->paths, ps->n);
    json_decref(ps->params);
    free(ps->name);
}

static const char *str_or_null(const json_t *p, const char *k) { return json_string_value(json_object_get(p, k)); }

/* the parts of the mix (datasets:, or the stage's one source when it renames fields) */
static int build_parts(stage_ctx *c, part_src **srcs_out, dataset_part **parts_out, size_t *n_out) {
    json_t *list = stage_json(c, "datasets");
    size_t n = json_array_size(list) ? json_array_size(list) : 1;
    part_src *srcs = calloc(n, sizeof *srcs);
    dataset_part *parts = calloc(n, sizeof *parts);
    int rc = srcs && parts ? 0 : err_set(ERR_STAGE, "out of memory");
    size_t made = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        part_src *ps = &srcs[i];
        ps->params = json_array_size(list) ? entry_params(c->params, json_array_get(list, i)) : json_incref(c->params);
        made++;
        rc = part_files(c, ps);
        if (rc) {
            if (json_array_size(list)) err_wrap("datasets entry %zu", i);
            break;
        }
        const json_t *m = ps->params;
        dataset_part *p = &parts[i];
        p->name = ps->name ? ps->name : "?";
        p->paths = ps->paths;
        p->n_paths = ps->n;
        dataset_type_parse(str_or_null(m, "type"), &p->type);
        p->format = format_of(str_or_null(m, "format"));
        const char *ct = str_or_null(m, "chat_template");
        p->chat_template = template_of(ct);
        p->chat_builtin = ct && strcmp(ct, "tokenizer_default");
        p->field_instruction = str_or_null(m, "field_instruction");
        p->field_input = str_or_null(m, "field_input");
        p->field_output = str_or_null(m, "field_output");
        p->field_text = str_or_null(m, "field");
        p->max_records = json_integer_value(json_object_get(m, "max_records"));
        json_t *w = json_object_get(m, "weight");
        p->weight = json_is_number(w) ? json_number_value(w) : 1;
        if (ps->hub) {
            if (!c->report) c->report = json_object();
            json_t *hd = json_object_get(c->report, "hub_datasets");
            if (!hd) json_object_set_new(c->report, "hub_datasets", hd = json_array());
            json_array_append_new(hd, hub_dataset_json(&ps->hd));
            stage_logf(c, "hub dataset %s: config '%s', split '%s', %s at commit %.12s: %d file(s)", ps->hd.repo,
                       ps->hd.config, ps->hd.split, ps->hd.revision, ps->hd.commit, ps->hd.n_files);
        }
    }
    if (rc) {
        for (size_t i = 0; i < made; i++) part_src_free(&srcs[i]);
        free(srcs);
        free(parts);
        return rc;
    }
    *srcs_out = srcs;
    *parts_out = parts;
    *n_out = n;
    return 0;
}

/* A built-in template's special tokens must be tokens of the model: otherwise "<|eot_id|>" is
 * tokenized as ordinary text (the count doubles, the mask boundary falls inside a token) and
 * the model never learns its own end of turn. */
static int check_template_tokens(const tokenizer *t, const char *tpl_name, const char *model_stage) {
    dataset_chat_template tpl;
    int rc = dataset_chat_template_from_name(tpl_name, &tpl);
    if (rc) return rc;
    char missing[256] = "";
    int n = 0;
    for (const char *const *s = dataset_chat_special_tokens(tpl); *s; s++) {
        if (tokenizer_token_id(t, *s) >= 0) continue;
        if (n++) strncat(missing, ", ", sizeof missing - strlen(missing) - 1);
        strncat(missing, *s, sizeof missing - strlen(missing) - 1);
    }
    if (!n) return 0;
    return err_set(ERR_RECIPE,
                   "chat_template: %s needs the special token%s %s, which the tokenizer of '%s' lacks (they would "
                   "be split into ordinary text and the masks would fall inside tokens): set chat_template to the model's own template "
                   "(chatml for Qwen, llama-3 for Llama 3, llama-2 for Llama 2 and Mistral), or use format: lua "
                   "with a hook",
                   tpl_name, n > 1 ? "s" : "", missing, model_stage);
}

/* Truncated and dropped records, said out loud: a truncated answer loses its end and its EOS
 * ("30" becomes "3"), a dropped one is gone; past a few percent it is a warning naming the fix. */
#define LOSS_WARN_SHARE 0.02
static void report_losses(stage_ctx *c, const json_t *stats) {
    json_t *d = json_object_get(stats, "dropped");
    long long read = json_integer_value(json_object_get(stats, "records_read"));
    long long trunc = json_integer_value(json_object_get(stats, "records_truncated"));
    long long longr = json_integer_value(json_object_get(d, "too_long"));
    long long nolab = json_integer_value(json_object_get(d, "no_trained_tokens"));
    long long hook = json_integer_value(json_object_get(d, "by_hook"));
    long long len = stage_int(c, "sequence_len");
    if (trunc)
        stage_logf(c, "%lld of %lld records truncated to sequence_len %lld (their answers lose their end and EOS)",
                   trunc, read, len);
    if (longr || nolab || hook)
        stage_logf(c, "%lld of %lld records dropped: %lld longer than sequence_len %lld (truncation: drop), %lld with "
                      "nothing left to train within it, %lld by the format hook",
                   longr + nolab + hook, read, longr, len, nolab, hook);
    if (read > 0 && (double)(trunc + longr + nolab) > LOSS_WARN_SHARE * (double)read)
        stage_warnf(c, "%.0f%% of the records do not fit in sequence_len %lld (%lld truncated, %lld dropped): "
                       "raise sequence_len if the answers matter",
                       100.0 * (double)(trunc + longr + nolab) / (double)read, len, trunc, longr + nolab);
}

/* the build's options from the stage's parameters */
static void dataset_opts_of(stage_ctx *c, dataset_opts *o) {
    const char *fmt = stage_str(c, "format");
    o->format = !strcmp(fmt, "chat")         ? DATASET_FORMAT_CHAT
                : !strcmp(fmt, "completion") ? DATASET_FORMAT_COMPLETION
                : !strcmp(fmt, "lua")        ? DATASET_FORMAT_LUA
                                             : DATASET_FORMAT_ALPACA;
    o->sequence_len = stage_int(c, "sequence_len");
    o->drop_long = !strcmp(stage_str(c, "truncation"), "drop");
    o->train_on_inputs = stage_bool(c, "train_on_inputs");
    o->sample_packing = stage_bool(c, "sample_packing");
    o->val_set_size = stage_float(c, "val_set_size");
    o->shuffle = stage_bool(c, "shuffle");
    json_t *seed = stage_json(c, "seed");
    o->seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : c->seed;
    o->skip_errors = !strcmp(stage_str(c, "on_error"), "skip");
    o->max_records = stage_int(c, "max_records");
    o->jobs = c->jobs > 0 ? c->jobs : 1;
    o->hook_args = stage_json(c, "hook_args");
}

/* the data hooks: the recipe's, with the stage's format_hook and generator bound over them */
static int dataset_hooks_open(stage_ctx *c, hooks **hk) {
    json_t *spec = data_hooks_spec(c->hooks);
    int rc = hooks_open(hk, spec);
    json_decref(spec);
    char *fh = stage_path(c, "format_hook"), *gen = stage_path(c, "generator");
    if (!rc && fh) rc = hooks_bind(*hk, "format", fh);
    if (!rc && gen) rc = hooks_bind(*hk, "generate", gen);
    free(fh);
    free(gen);
    return rc;
}

/* Where the records come from: a mix of entries (parts), a whole hub dataset's split, one URL, or
 * local paths; none with a generator. */
typedef struct data_sources {
    char **paths, *fetched;
    size_t n_paths;
    hub_dataset hd;
    bool whole; /* paths are hd's */
    part_src *psrc;
    dataset_part *parts;
    size_t n_parts;
} data_sources;

static int data_sources_open(stage_ctx *c, dataset_opts *o, data_sources *d) {
    char *hrepo = NULL, *hrev = NULL;
    d->whole = hub_dataset_url(stage_str(c, "url"), &hrepo, &hrev);
    free(hrepo);
    free(hrev);
    int rc = 0;
    bool mixed = json_array_size(stage_json(c, "datasets")) || stage_str(c, "field_instruction") ||
                 stage_str(c, "field_input") || stage_str(c, "field_output") || stage_str(c, "field");
    if (mixed) {
        d->whole = false;
        rc = build_parts(c, &d->psrc, &d->parts, &d->n_parts);
        if (!rc && json_array_size(stage_json(c, "datasets"))) o->max_records = 0; /* per entry */
        else if (!rc) d->parts[0].max_records = o->max_records, o->max_records = 0;
    } else if (d->whole) {
        hub_dataset *hd = &d->hd;
        rc = resolve_hub_dataset(c->params, true, c, hd);
        stage_progress_done(c);
        if (!rc) {
            stage_logf(c, "hub dataset %s: config '%s', split '%s', %s at commit %.12s: %d file(s)", hd->repo, hd->config,
                       hd->split, hd->revision, hd->commit, hd->n_files);
            if (!c->report) c->report = json_object();
            json_object_set_new(c->report, "hub_dataset", hub_dataset_json(hd));
            d->paths = hd->local;
            d->n_paths = (size_t)hd->n_files;
        }
    } else if (stage_str(c, "url")) {
        rc = fetch_url(c, stage_str(c, "url"), &d->fetched);
        if (!rc) {
            d->paths = &d->fetched;
            d->n_paths = 1;
        }
    } else if (stage_json(c, "path") && !json_is_null(stage_json(c, "path")) && !stage_str(c, "generator")) {
        rc = resolve_paths(c, stage_json(c, "path"), &d->paths, &d->n_paths);
    }
    return rc;
}

static void data_sources_free(data_sources *d) {
    for (size_t i = 0; i < d->n_parts; i++) part_src_free(&d->psrc[i]);
    free(d->psrc);
    free(d->parts);
    if (d->paths == &d->fetched) free(d->fetched);
    else if (d->whole) hub_dataset_free(&d->hd);
    else dataset_paths_free(&d->paths, d->n_paths);
}

/* The chat keys: the stage's, or in a mix whose stage is not chat, the first chat entry's; that
 * Jinja template serves every chat entry. *chat_file: the template file, kept until the build has
 * written meta.json. */
static int dataset_chat_setup(stage_ctx *c, const stage_input *in, dataset_opts *o, const data_sources *d,
                              tokenizer *t, dataset_chat *chat, char **chat_file) {
    const json_t *cp = c->params;
    for (size_t i = 0; o->format != DATASET_FORMAT_CHAT && i < d->n_parts; i++)
        if (d->parts[i].format == DATASET_FORMAT_CHAT) {
            cp = d->psrc[i].params;
            break;
        }
    const char *cf = json_string_value(json_object_get(cp, "chat_template_file"));
    char *dir = fs_join(in->dir, "model"), line[1024];
    char *file = stage_recipe_path(c, cf);
    bool jinja;
    const char *builtin;
    int rc = chat_opts_load(cp, file, dir, t, chat, &jinja, &builtin, line, sizeof line);
    if (rc) err_wrap("%s", c->name);
    else stage_logf(c, "%s", line);
    if (!rc && jinja) o->chat = &chat->o, o->chat_file = *chat_file = file, file = NULL;
    if (!rc && !jinja) rc = check_template_tokens(t, builtin, in->stage);
    o->chat_template = !strcmp(builtin, "llama-2") ? DATASET_CHAT_LLAMA2
                       : !strcmp(builtin, "chatml") ? DATASET_CHAT_CHATML
                                                    : DATASET_CHAT_LLAMA3;
    free(dir);
    free(file);
    return rc;
}

/* the build itself, then its figures in the log, the loss warnings and the report */
static int dataset_build_report(stage_ctx *c, const dataset_opts *o, const data_sources *d, hooks *hk,
                                tokenizer *t) {
    dataset_source src = {0};
    dataset_type_parse(stage_str(c, "type"), &src.type);
    dataset_tokenizer tok;
    dataset_tokenizer_of(t, &tok);
    src.paths = d->paths;
    src.n_paths = d->n_paths;
    src.hooks = hk;
    src.parts = d->parts;
    src.n_parts = d->n_parts;
    json_t *stats = NULL;
    dataset_callbacks cb = {.ud = c, .log = on_log, .metric = on_metric, .progress = on_progress,
                            .progress_done = on_progress_done, .interrupted = on_interrupted};
    int rc = dataset_build(o, &src, &tok, c->out_dir, &cb, &stats);
    if (!rc) {
        stage_logf(c, "%lld records -> %lld sequences, %lld tokens (%.1f%% masked), packing efficiency %.1f%%",
                   (long long)json_integer_value(json_object_get(stats, "records_read")),
                   (long long)json_integer_value(json_object_get(stats, "sequences")),
                   (long long)json_integer_value(json_object_get(stats, "tokens")),
                   100 * json_number_value(json_object_get(stats, "masked_share")),
                   100 * json_number_value(json_object_get(stats, "packing_efficiency")));
        report_losses(c, stats);
        if (!c->report) c->report = json_object();
        json_object_set_new(c->report, "dataset", stats);
    }
    return rc;
}

static int dataset_run(stage_ctx *c) {
    const stage_input *in = stage_input_get(c, "model");
    if (!in) return err_set(ERR_RECIPE, "%s: needs a model input (model: <stage>)", c->name);
    dataset_opts o = {0};
    dataset_opts_of(c, &o);
    hooks *hk = NULL;
    tokenizer *t = NULL;
    data_sources d = {0};
    int rc = dataset_hooks_open(c, &hk);
    if (!rc) rc = data_sources_open(c, &o, &d);
    if (!rc && o.format != DATASET_FORMAT_LUA && hooks_has(hk, "format"))
        stage_logf(c, "note: hooks.format is set but format is %s, so the hook is not used here (format: lua uses it)",
                   stage_str(c, "format"));
    if (!rc && d.n_paths == 0 && !d.n_parts && !hooks_has(hk, "generate"))
        rc = err_set(ERR_RECIPE, "%s: no data: set path, url or generator (or hooks.generate in the recipe)", c->name);
    if (!rc) {
        char *dir = fs_join(in->dir, "model");
        rc = tokenizer_load(&t, dir);
        if (rc) err_wrap("%s: the tokenizer of '%s'", c->name, in->stage);
        free(dir);
    }
    dataset_chat chat = {0};
    char *chat_file = NULL; /* kept until the build has written meta.json */
    bool any_chat = o.format == DATASET_FORMAT_CHAT;
    for (size_t i = 0; i < d.n_parts; i++) any_chat |= d.parts[i].format == DATASET_FORMAT_CHAT;
    if (!rc && any_chat) rc = dataset_chat_setup(c, in, &o, &d, t, &chat, &chat_file);
    if (!rc) rc = dataset_build_report(c, &o, &d, hk, t);
    chat_opts_free(&chat);
    free(chat_file);
    if (!rc) stage_note_hook_files(c, hk, "format|generate");
    tokenizer_free(&t);
    hooks_free(&hk);
    data_sources_free(&d);
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
    .version = 2, /* 2: format: chat renders the model's own Jinja template by default, and
                     meta.json says how records were formatted (evaluate reads it) */
    .doc = "tokenize, mask, pack and split training data (Alpaca, chat, completion or a Lua format)",
    .params = dataset_params,
    .check = dataset_check,
    .run = dataset_run,
    .key_hooks = "format|generate",
    .resolve = dataset_resolve,
    .metrics = dataset_metrics,
};
