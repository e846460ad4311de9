/* evaluate.c: the evaluate stage. The base model and the tuned one (base + adapter) side by
 * side, on the same data and the same prompts:
 *   - loss and perplexity on the val split of every dataset input (data, extra_data);
 *   - generations for the recipe's prompts (strings used verbatim, or records formatted by
 *     the recipe's format hook, as in training) and for prompts_file (JSONL records or
 *     text lines);
 *   - the task metric on up to score_records val sequences of `data`: the prompt is the
 *     sequence's untrained prefix (token ids as trained), the reference its trained part
 *     (without EOS); the score is the `score(prediction, record)` hook's, or exact match
 *     (whitespace-trimmed) without a hook. The record is the dataset's own record of that
 *     sequence (the dataset stage keeps val.records.jsonl: one JSON record a line, in val
 *     sequence order), else, for an artifact made before it did, {prompt=, response=,
 *     output=} (output: the alpaca name of the response). Record prompts from the recipe are
 *     scored by the hook too, with the record as written. A third argument says what the
 *     prompt became: {prompt=, reference= (val only), source="val"|"prompts"|"prompts_file"}.
 *   - multiple-choice benchmark tasks (`tasks:`, eval/mc.h): MMLU, ARC, HellaSwag scored as
 *     lm-evaluation-harness scores them; NAME.acc and NAME.acc_norm (and _base) as metrics.
 * The base is the model with the LoRA update zeroed (an untrained adapter, B = 0, computes
 * exactly that). Results: <out>/results.json, the manifest's report and metrics, events,
 * and one table in the log. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/collective.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "formats/peft.h"
#include "model/adapter.h"
#include "model/config.h"
#include "generate/generate.h"
#include "model/llama.h"
#include "model/device.h"
#include "model/llama_peft.h"
#include "train/llama_trainer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "train/chat_format.h"
#include "train/trainer.h"
#include "train/dataset_build.h"
#include "eval/mc.h"
#include "hub/datasets.h"
#include "stages/stage.h"

static const param_spec eval_params[] = {
    {"model", PARAM_REF, NULL, 0, -1, "quantize_nf4|init_model|fetch_model", "the base model", PARAM_REQUIRED},
    {"adapter", PARAM_REF, NULL, 0, -1, "train|attach_lora", "the tuned adapter (none: the base model only)", 0},
    {"data", PARAM_REF, NULL, 0, -1, "dataset", "loss and perplexity on its val split; val records to score", 0},
    {"extra_data", PARAM_REF, NULL, 0, -1, "dataset", "another dataset to report loss and perplexity on", 0},
    {"prompts", PARAM_ANY, "[]", 0, -1, NULL, "prompts: strings (used verbatim) or records (formatted as the data was: its format hook, alpaca, or chat template)", 0},
    {"prompts_file", PARAM_FILE, NULL, 0, -1, NULL, "more prompts: a .jsonl of records or a text file, one a line", 0},
    {"compare_base", PARAM_BOOL, "true", 0, -1, NULL, "also evaluate the base model, side by side", 0},
    {"max_new_tokens", PARAM_INT, "64", 1, 1e6, NULL, "tokens to generate per prompt", 0},
    {"temperature", PARAM_FLOAT, "0", 0, 100, NULL, "sampling temperature (0: greedy)", 0},
    {"top_k", PARAM_INT, "0", 0, 1e9, NULL, "sample from the k most likely tokens (0: off)", 0},
    {"top_p", PARAM_FLOAT, "1", 0, 1, NULL, "nucleus sampling threshold (1: off)", 0},
    {"repetition_penalty", PARAM_FLOAT, "1", 0.01, 100, NULL, "divide the logits of seen tokens (1: off)", 0},
    {"stop", PARAM_LIST, "[]", 0, -1, NULL, "stop strings: generation ends before the first one", 0},
    {"score_records", PARAM_INT, "64", 0, 1e9, NULL, "val sequences of data to generate for and score (0: none)", 0},
    {"batch_rows", PARAM_INT, "8", 1, 65536, NULL, "rows per forward pass for the loss", PARAM_NOKEY},
    {"seed", PARAM_INT, NULL, 0, 9.2e18, NULL, "sampling seed (default: the recipe's seed)", 0},
    {"deterministic", PARAM_BOOL, NULL, 0, -1, NULL,
     "fixed-order GPU reductions: the same losses and greedy generations run after run (default: the recipe's "
     "deterministic; docs/determinism.md)", 0},
    {"tasks", PARAM_ANY, "[]", 0, -1, NULL,
     "multiple-choice benchmarks scored as lm-evaluation-harness does: [{name, format: mmlu|arc|hellaswag|lua, "
     "path | url (a file, or hf://datasets/ORG/NAME with config and split, default test), num_fewshot, "
     "fewshot_path | fewshot_split, limit (a seeded subset), hook (format lua: task(record, ctx))}]", 0},
    {"task_max_tokens", PARAM_INT, "2048", 16, 1 << 20, NULL,
     "longest task sequence (context + answer); longer ones are cut from the left, as the harness does", 0},
    {"task_batch", PARAM_INT, "16", 1, 256, NULL,
     "questions whose shared context is in the KV cache scored side by side in one pass, each attending to the "
     "context and itself only (1: one at a time; on a GPU the sums may differ in their last bits)", 0},
    {"dense_weights", PARAM_ENUM, "auto", 0, -1, "auto|on|off",
     "keep the base's linear weights dequantized (bf16 on a GPU) for the whole stage instead of dequantizing "
     "them in every forward: the same numbers, bit for bit, in less time (auto: on a GPU, as many layers' as fit "
     "memory_budget, or the device's free memory, beside the weights, activations and KV cache)", PARAM_NOKEY},
    {"memory_budget", PARAM_STRING, NULL, 0, -1, NULL,
     "memory the stage may use, e.g. 24GB: on a GPU all of the process's device memory, which decides "
     "dense_weights: auto (default: what the device has free)", PARAM_NOKEY},
    {0}};

/* the keys of one `tasks:` entry */
static const char *const task_keys[] = {"name", "format", "path", "url", "config", "split", "num_fewshot",
                                        "fewshot_path", "fewshot_split", "limit", "hook"};
#define TASK_KEYS_TEXT "name, format, path, url, config, split, num_fewshot, fewshot_path, fewshot_split, limit, hook"

static bool whole_hub_url(const char *url) {
    char *repo, *rev;
    bool whole = hub_dataset_url(url, &repo, &rev);
    free(repo);
    free(rev);
    return whole;
}

static int check_tasks(const json_t *tasks) {
    if (!json_is_array(tasks)) return err_set(ERR_RECIPE, "tasks must be a list of mappings");
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t) {
        if (!json_is_object(t)) return err_set(ERR_RECIPE, "tasks[%zu] must be a mapping {name, format, path, ...}", i);
        const char *k;
        json_t *v;
        json_object_foreach(t, k, v) {
            bool known = false;
            for (size_t j = 0; j < sizeof task_keys / sizeof *task_keys; j++) known |= !strcmp(k, task_keys[j]);
            if (!known) return err_set(ERR_RECIPE, "tasks[%zu]: unknown key '%s' (" TASK_KEYS_TEXT ")", i, k);
        }
        const char *name = json_string_value(json_object_get(t, "name")), *fmt = json_string_value(json_object_get(t, "format"));
        if (!name || !*name || strchr(name, '.')) return err_set(ERR_RECIPE, "tasks[%zu] needs a 'name' (no dots: it names the metrics NAME.acc)", i);
        mc_format f;
        if (!fmt) return err_set(ERR_RECIPE, "tasks[%zu] ('%s') needs a 'format': mmlu, arc, hellaswag or lua", i, name);
        if (mc_format_parse(fmt, &f)) return err_wrap("tasks[%zu] ('%s')", i, name);
        json_t *path = json_object_get(t, "path"), *url = json_object_get(t, "url");
        if (path && url) return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): path and url are alternatives: set one", i, name);
        if (path && !json_is_string(path)) return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): path must be a file", i, name);
        if (!path && !json_is_string(url))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s') needs a 'path' (a JSON, JSONL, CSV or Parquet file of records) or a 'url' "
                                       "(hf://datasets/ORG/NAME with split, hf://datasets/ORG/NAME/FILE or https://...)", i, name);
        const char *u = json_string_value(url);
        if (u && strncmp(u, "hf://datasets/", 14) && strncmp(u, "https://", 8) && strncmp(u, "http://", 7))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): url '%s': expected hf://datasets/ORG/NAME[@REV][/FILE] or https://...",
                           i, name, u);
        bool whole = u && whole_hub_url(u);
        static const char *const split_keys[] = {"config", "split", "fewshot_split"};
        for (size_t j = 0; j < 3; j++) {
            json_t *sv = json_object_get(t, split_keys[j]);
            if (!sv) continue;
            if (!json_is_string(sv) || !*json_string_value(sv))
                return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): %s must be a name", i, name, split_keys[j]);
            if (!whole)
                return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): %s picks a part of a whole hub dataset (url: "
                                           "hf://datasets/ORG/NAME); %s", i, name, split_keys[j],
                               u ? "this url is one file" : "a path is one file (use fewshot_path for the examples)");
        }
        json_t *k1 = json_object_get(t, "num_fewshot"), *lim = json_object_get(t, "limit"), *fp = json_object_get(t, "fewshot_path");
        if (k1 && (!json_is_integer(k1) || json_integer_value(k1) < 0 || json_integer_value(k1) > 64))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): num_fewshot must be a whole number from 0 to 64", i, name);
        if (lim && (!json_is_integer(lim) || json_integer_value(lim) < 0))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): limit must be a whole number >= 0", i, name);
        if (fp && !json_is_string(fp)) return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): fewshot_path must be a file", i, name);
        if (fp && json_object_get(t, "fewshot_split"))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): fewshot_path and fewshot_split are alternatives: set one", i, name);
        json_t *hook = json_object_get(t, "hook");
        if (hook && (!json_is_string(hook) || f != MC_LUA))
            return err_set(ERR_RECIPE, "tasks[%zu] ('%s'): hook is the Lua file of a task of format lua "
                                       "(it defines task(record, ctx))", i, name);
    }
    return 0;
}

/* the files a task entry names: their content is part of the key */
static const char *const task_file_keys[] = {"path", "fewshot_path", "hook"};

static void eval_key_paths(const json_t *p, void (*add)(void *ud, const char *path, stage_key_path what), void *ud) {
    size_t i;
    json_t *t;
    json_array_foreach(json_object_get(p, "tasks"), i, t) {
        for (size_t k = 0; k < sizeof task_file_keys / sizeof *task_file_keys; k++) {
            const char *f = json_string_value(json_object_get(t, task_file_keys[k]));
            if (f) add(ud, f, STAGE_KEY_FILE);
        }
    }
}

static void task_hub_progress(void *user, const hub_progress *p) {
    stage_progress(user, p->file, (double)p->done, (double)p->total, "B");
}

/* one split of a task's whole hub dataset (url: hf://datasets/ORG/NAME[@REV]) */
static int task_hub_split(const json_t *t, const char *split, bool download, stage_ctx *c, hub_dataset *d) {
    char *repo, *rev;
    if (!hub_dataset_url(json_string_value(json_object_get(t, "url")), &repo, &rev))
        return err_set(ERR_RECIPE, "not a whole hub dataset");
    hub_config cfg;
    int rc = hub_config_from_env(&cfg);
    if (!rc) {
        hub_dataset_opts o = {.repo = repo, .revision = rev, .config = json_string_value(json_object_get(t, "config")),
                              .split = split, .download = download, .interrupted = c ? c->interrupted : NULL,
                              .progress = c ? task_hub_progress : NULL, .progress_user = c};
        rc = hub_dataset_resolve(&cfg, &o, d);
        hub_config_free(&cfg);
    }
    free(repo);
    free(rev);
    return rc;
}

static const char *task_split(const json_t *t) {
    const char *s = json_string_value(json_object_get(t, "split"));
    return s ? s : "test"; /* the split benchmarks are scored on */
}

/* the plan's key: each whole hub dataset's commit and files, for its split and fewshot_split */
static int eval_resolve(const json_t *p, json_t **out) {
    *out = NULL;
    json_t *all = json_object();
    size_t i;
    json_t *t;
    int rc = 0;
    json_array_foreach(json_object_get(p, "tasks"), i, t) {
        if (!whole_hub_url(json_string_value(json_object_get(t, "url")))) continue;
        const char *splits[2] = {task_split(t), json_string_value(json_object_get(t, "fewshot_split"))};
        json_t *one = json_object();
        for (int k = 0; k < 2 && !rc && splits[k]; k++) {
            hub_dataset d;
            if ((rc = task_hub_split(t, splits[k], false, NULL, &d))) break;
            json_t *files = json_array();
            for (int f = 0; f < d.n_files; f++) json_array_append_new(files, json_string(d.files[f]));
            json_object_set_new(one, k ? "fewshot" : "records", json_pack("{s:s, s:s, s:s, s:s, s:o}", "repo", d.repo,
                                "commit", d.commit, "config", d.config ? d.config : "default", "split", d.split, "files", files));
            hub_dataset_free(&d);
        }
        json_object_set_new(all, json_string_value(json_object_get(t, "name")), one);
        if (rc) {
            err_wrap("tasks[%zu] ('%s')", i, json_string_value(json_object_get(t, "name")));
            break;
        }
    }
    if (rc || !json_object_size(all)) json_decref(all);
    else *out = all;
    return rc;
}

static int eval_check(const json_t *p) {
    int trc = check_tasks(json_object_get(p, "tasks"));
    if (trc) return trc;
    double budget;
    if ((trc = stage_parse_budget(json_string_value(json_object_get(p, "memory_budget")), &budget))) return trc;
    json_t *pr = json_object_get(p, "prompts");
    if (!json_is_array(pr)) return err_set(ERR_RECIPE, "prompts must be a list of strings or records");
    size_t i;
    json_t *v;
    json_array_foreach(pr, i, v) if (!json_is_string(v) && !json_is_object(v))
        return err_set(ERR_RECIPE, "prompts[%zu] must be a string or a record (a mapping)", i);
    return 0;
}

/* one prompt: the text given to the model and, for scoring, the record it came from */
typedef struct prompt_item {
    char *text;         /* the prompt as text (encoded with BOS unless ids are given) */
    int32_t *ids;       /* val sequences: the prompt's token ids as trained; NULL otherwise */
    int n_ids;
    json_t *record;     /* what score() receives; NULL for a plain string prompt (not scored) */
    char *reference;    /* val sequences: the trained response, for exact match */
    const char *source; /* "prompts", "prompts_file", "val" */
} prompt_item;

typedef struct eval_state {
    stage_ctx *ctx;
    hooks *hooks;
    json_t *fmt_ctx; /* ctx of format(record, ctx), as the dataset stage passes it */
    bool alpaca;     /* the data used the built-in alpaca format */
    chat_template *chat;    /* the data used format: chat with this Jinja template, else NULL */
    chat_format_opts chat_o; /* its record keys (field_messages, mappings) and kwargs */
    bool chat_builtin;      /* ... or format: chat with the built-in template chat_builtin_tpl */
    dataset_chat_template chat_builtin_tpl;
    tokenizer *tok;
    llama_model *m;
    gen_opts gen;
    prompt_item *items;
    size_t n_items, cap;
} eval_state;

/* the prompt text of a record: the format hook's untrained part, or its "prompt" field */
static int record_prompt(eval_state *e, const json_t *record, const char *what, char **out) {
    *out = NULL;
    const char *instruction = json_string_value(json_object_get(record, "instruction"));
    if (!hooks_has(e->hooks, "format") && e->alpaca && instruction) {
        *out = dataset_alpaca_prompt(instruction, json_string_value(json_object_get(record, "input")));
        return *out ? 0 : err_set(ERR_STAGE, "out of memory");
    }
    if (!hooks_has(e->hooks, "format") && e->chat_builtin &&
        (json_object_get(record, "messages") || json_object_get(record, "conversations"))) {
        int32_t bos = tokenizer_bos(e->tok), eos = tokenizer_eos(e->tok);
        dataset_tokenizer dt = {.bos = bos, .eos = eos,
                                .bos_token = bos >= 0 ? tokenizer_token(e->tok, bos) : "",
                                .eos_token = eos >= 0 ? tokenizer_token(e->tok, eos) : ""};
        return dataset_chat_prompt(record, what, e->chat_builtin_tpl, &dt, out);
    }
    if (!hooks_has(e->hooks, "format")) {
        const char *p = json_string_value(json_object_get(record, "prompt"));
        if (!p) return err_set(ERR_RECIPE, "%s: a record prompt needs a format hook (hooks: {format: ...}, or the data's "
                                           "format_hook), alpaca or chat data (with 'messages'), or a 'prompt' field", what);
        *out = strdup(p);
        return 0;
    }
    hooks_format_result r = {0};
    int rc = hooks_format(e->hooks, record, e->fmt_ctx, what, &r);
    if (rc) return rc;
    if (r.kind != HOOKS_FORMAT_DROP) {
        size_t len = 0;
        for (int i = 0; i < r.n && !r.seg[i].train; i++) len += r.seg[i].len;
        char *s = malloc(len + 1);
        size_t o = 0;
        for (int i = 0; s && i < r.n && !r.seg[i].train; i++) memcpy(s + o, r.seg[i].text, r.seg[i].len), o += r.seg[i].len;
        if (s) s[o] = 0;
        *out = s;
    }
    hooks_format_result_free(&r);
    return 0;
}

static int push_item(eval_state *e, prompt_item it) {
    if (e->n_items == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 16;
        prompt_item *p = realloc(e->items, cap * sizeof *p);
        if (!p) return err_set(ERR_STAGE, "out of memory");
        e->items = p;
        e->cap = cap;
    }
    e->items[e->n_items++] = it;
    return 0;
}

/* A chat record as the data was rendered: its messages up to the last user turn (a final
 * assistant turn is the reference answer) through the template with add_generation_prompt.
 * The template writes the special tokens, so the ids are encoded without adding any. */
static int chat_prompt(eval_state *e, const json_t *record, char **text, int32_t **ids, int *n_ids) {
    json_t *msgs = NULL;
    int rc = chat_format_messages(&e->chat_o, record, &msgs, NULL);
    if (rc) return rc;
    size_t n = json_array_size(msgs);
    while (n > 1 && !strcmp(json_string_value(json_object_get(json_array_get(msgs, n - 1), "role")), "assistant"))
        json_array_remove(msgs, --n);
    jinja_result r = {0};
    rc = chat_template_render(e->chat, msgs, json_object_get(record, "tools"), json_object_get(record, "documents"),
                              e->chat_o.kwargs, true, NULL, &r);
    json_decref(msgs);
    size_t k = 0;
    if (!rc) rc = tokenizer_encode(e->tok, r.text, r.len, false, ids, &k);
    if (!rc && k > INT32_MAX) rc = err_set(ERR_DATA, "the prompt is too long");
    if (rc) {
        jinja_result_free(&r);
        return rc;
    }
    *n_ids = (int)k;
    *text = r.text;
    r.text = NULL;
    jinja_result_free(&r);
    return 0;
}

static int add_item(eval_state *e, const json_t *v, const char *source, size_t index) {
    char what[160];
    snprintf(what, sizeof what, "%s[%zu]", source, index);
    char *text = NULL;
    if (e->chat && json_is_object(v) && !hooks_has(e->hooks, "format")) {
        int32_t *ids = NULL;
        int n_ids = 0;
        int rc = chat_prompt(e, v, &text, &ids, &n_ids);
        if (rc) return err_wrap("%s", what);
        return push_item(e, (prompt_item){.text = text, .ids = ids, .n_ids = n_ids, .record = json_incref((json_t *)v),
                                          .source = source});
    }
    if (json_is_string(v)) {
        text = strdup(json_string_value(v));
    } else {
        int rc = record_prompt(e, v, what, &text);
        if (rc) return rc;
        if (!text) return 0; /* the format hook dropped it */
    }
    return push_item(e, (prompt_item){.text = text, .record = json_is_object(v) ? json_incref((json_t *)v) : NULL,
                                      .source = source});
}

static int load_prompts_file(eval_state *e, const char *path) {
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_all(path, &buf, &len);
    if (rc) return rc;
    bool jsonl = strlen(path) > 6 && !strcmp(path + strlen(path) - 6, ".jsonl");
    size_t index = 0;
    for (char *line = buf, *nl; !rc && line < buf + len; line = nl + 1, index++) {
        nl = strchr(line, '\n');
        if (!nl) nl = buf + len;
        *nl = 0;
        if (!*line) continue;
        if (jsonl) {
            json_error_t je;
            json_t *rec = json_loads(line, 0, &je);
            if (!json_is_object(rec)) rc = err_set(ERR_DATA, "'%s':%zu: %s", path, index + 1, rec ? "not a record" : je.text);
            else rc = add_item(e, rec, "prompts_file", index);
            json_decref(rec);
        } else {
            json_t *s = json_string(line);
            rc = add_item(e, s, "prompts_file", index);
            json_decref(s);
        }
    }
    free(buf);
    return rc;
}

/* Up to max val sequences of d as scored prompts: the untrained prefix is the prompt, the
 * trained tokens (EOS left out) the reference. */
static int add_val_sequences(eval_state *e, const train_data *d, const char *dir, int64_t max) {
    int32_t eos = tokenizer_eos(e->tok);
    int rc = 0;
    /* the dataset's own records, when it keeps them (line q: val sequence q) */
    char *rpath = fs_join(dir, "val.records.jsonl"), *rbuf = NULL, **lines = NULL;
    size_t rlen = 0, n_lines = 0;
    if (fs_exists(rpath) && !fs_read_all(rpath, &rbuf, &rlen)) {
        lines = malloc(sizeof(char *) * (size_t)(d->n_seqs + 1));
        for (char *l = rbuf, *nl; lines && l < rbuf + rlen && n_lines <= (size_t)d->n_seqs; l = nl + 1) {
            nl = strchr(l, '\n');
            if (!nl) nl = rbuf + rlen;
            *nl = 0;
            lines[n_lines++] = l;
        }
        if (n_lines != (size_t)d->n_seqs) {
            stage_logf(e->ctx, "note: '%s' has %zu records for %lld val sequences: scoring with the decoded text instead",
                       rpath, n_lines, (long long)d->n_seqs);
            n_lines = 0;
        }
    }
    err_clear();
    for (int64_t q = 0; !rc && q < d->n_seqs && (int64_t)e->n_items < max; q++) {
        int64_t a = d->seqs[q], b = d->seqs[q + 1], j = a;
        while (j < b && d->labels[j] < 0) j++;
        if (j == a || j == b) continue; /* nothing to prompt with, or nothing trained */
        int64_t end = b;
        while (end > j && (d->labels[end - 1] < 0 || d->ids[end - 1] == eos)) end--;
        prompt_item it = {.n_ids = (int)(j - a), .source = "val"};
        size_t len;
        char *resp = NULL;
        it.ids = malloc(sizeof(int32_t) * (size_t)it.n_ids);
        if (!it.ids) {
            rc = err_set(ERR_STAGE, "out of memory");
            break;
        }
        memcpy(it.ids, d->ids + a, sizeof(int32_t) * (size_t)it.n_ids);
        if ((rc = tokenizer_decode(e->tok, it.ids, (size_t)it.n_ids, true, &it.text, &len)) ||
            (rc = tokenizer_decode(e->tok, d->ids + j, (size_t)(end - j), true, &resp, &len))) {
            free(it.ids);
            free(it.text);
            break;
        }
        char *t = generate_utf8_lossy(it.text), *r = generate_utf8_lossy(resp);
        free(it.text);
        free(resp);
        it.text = t;
        it.reference = r;
        if (!t || !r) {
            free(it.ids), free(t), free(r);
            rc = err_set(ERR_STAGE, "out of memory");
            break;
        }
        it.record = n_lines ? json_loads(lines[q], 0, NULL) : NULL;
        if (n_lines && !json_is_object(it.record)) {
            json_decref(it.record);
            free(it.ids), free(t), free(r);
            rc = err_set(ERR_DATA, "'%s': line %lld is not a JSON record", rpath, (long long)q + 1);
            break;
        }
        if (!it.record) it.record = json_pack("{s:s, s:s, s:s}", "prompt", t, "response", r, "output", r);
        rc = push_item(e, it);
    }
    free(lines);
    free(rbuf);
    free(rpath);
    return rc;
}

/* exact match after trimming whitespace at both ends */
static double exact_match(const char *pred, const char *ref) {
    while (*pred == ' ' || *pred == '\n' || *pred == '\t') pred++;
    while (*ref == ' ' || *ref == '\n' || *ref == '\t') ref++;
    size_t lp = strlen(pred), lr = strlen(ref);
    while (lp && strchr(" \n\t", pred[lp - 1])) lp--;
    while (lr && strchr(" \n\t", ref[lr - 1])) lr--;
    return lp == lr && !memcmp(pred, ref, lp) ? 1.0 : 0.0;
}

typedef struct side {
    double loss[2], ppl[2];
    int64_t tokens;
    const char *name;
} side;

/* One side (base or tuned). Data parallel (several ranks): the val micro-batches and the prompts
 * are split over the ranks (prompt i on rank i mod world), the loss sums all-reduced and each
 * generation and score sent from its rank to all, so every rank ends with the one merged table.
 * A failure on a rank waits for the end of the side (every rank passes the same collectives) and
 * then stops all with its message. Generation seeds its sampler per prompt, so the split does
 * not change a text. */
static int run_side(eval_state *e, int tuned, json_t *gens, side *sides, int n_sides, const train_data *sets,
                    int batch_rows, double *score_sum, int *score_n) {
    const int world = coll_world(), rank = coll_rank();
    int rc = 0;
    for (int i = 0; i < n_sides; i++) {
        trainer_model tm;
        llama_trainer_bind(e->m, &tm);
        double loss = NAN;
        int64_t nt = 0;
        int r = trainer_evaluate_shared(&tm, &sets[i], batch_rows, rank, world, &loss, &nt);
        if (r && !rc) rc = r;
        if (rc && world == 1) return rc;
        sides[i].loss[tuned] = loss;
        sides[i].ppl[tuned] = exp(loss);
        sides[i].tokens = nt;
    }
    *score_sum = 0;
    *score_n = 0;
    for (size_t i = 0; i < e->n_items; i++) {
        char *text = NULL;
        int ntok = 0;
        const prompt_item *it = &e->items[i];
        const int owner = (int)(i % (size_t)world);
        bool hook = hooks_has(e->hooks, "score");
        double sc[2] = {0, 0}; /* score, scored */
        if (owner == rank && !rc) {
            int r = it->ids ? generate_text_ids(e->m, e->tok, it->ids, it->n_ids, &e->gen, &text, &ntok)
                            : generate_text(e->m, e->tok, it->text, &e->gen, &text, &ntok);
            if (r) rc = err_wrap("generating for %s prompt %zu", e->items[i].source, i);
            if (!rc && it->record && (hook || it->reference)) {
                char what[64];
                snprintf(what, sizeof what, "%s record %zu", it->source, i);
                if (!hook) sc[0] = exact_match(text, it->reference);
                else {
                    json_t *info = json_pack("{s:s, s:s}", "prompt", it->text, "source", it->source);
                    if (it->reference) json_object_set_new(info, "reference", json_string(it->reference));
                    rc = hooks_score_info(e->hooks, text, it->record, info, what, &sc[0]);
                    json_decref(info);
                }
                sc[1] = 1;
            }
        }
        if (world > 1) {
            int b = coll_bcast_str(&text, owner);
            if (!b) b = coll_bcast(sc, sizeof sc, owner);
            if (b && !rc) rc = b;
        }
        if (rc && world == 1) {
            free(text);
            return rc;
        }
        json_t *g = json_array_get(gens, i);
        json_object_set_new(g, tuned ? "tuned" : "base", json_string(text ? text : ""));
        if (sc[1] > 0) {
            json_object_set_new(g, tuned ? "score_tuned" : "score_base", json_real(sc[0]));
            *score_sum += sc[0];
            (*score_n)++;
        }
        free(text);
        stage_progress(e->ctx, tuned ? "generating (tuned)" : "generating (base)", (double)(i + 1),
                       (double)e->n_items, "prompts");
    }
    if (e->n_items) stage_progress_done(e->ctx);
    return world > 1 ? coll_agree(rc, NULL) : rc;
}

static int cb_tokenize(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tokenizer_encode(((eval_state *)ud)->tok, text, len, false, ids, n);
}

static void cb_metric(void *ud, const char *name, double value) { stage_metric(((eval_state *)ud)->ctx, name, value); }

static void cb_log(void *ud, const char *level, const char *msg) {
    if (!strcmp(level, "info")) stage_logf(((eval_state *)ud)->ctx, "%s", msg);
    else stage_logf(((eval_state *)ud)->ctx, "%s: %s", level, msg);
}

/* one line for the log: newlines shown as \n, cut to width */
static void show(char *dst, size_t n, const char *s, size_t width) {
    size_t o = 0;
    for (; *s && o + 3 < n && o < width; s++) {
        if (*s == '\n') dst[o++] = '\\', dst[o++] = 'n';
        else dst[o++] = *s;
    }
    if (*s && o + 3 < n) dst[o++] = '.', dst[o++] = '.';
    dst[o] = 0;
}

static void log_table(stage_ctx *ctx, const side *sides, int n_sides, bool base, bool tuned, int score_n,
                      const double *score, json_t *gens) {
    const char *c1 = base ? "base" : "", *c2 = tuned ? "tuned" : "";
    stage_logf(ctx, "%-32s %12s %12s", "", c1, c2);
    char label[64], v1[32], v2[32];
    for (int i = 0; i < n_sides; i++) {
        for (int k = 0; k < 2; k++) {
            snprintf(label, sizeof label, "%s (%s)", k ? "val perplexity" : "val loss", sides[i].name);
            const double *v = k ? sides[i].ppl : sides[i].loss;
            if (base) snprintf(v1, sizeof v1, "%.4f", v[0]); else v1[0] = 0;
            if (tuned) snprintf(v2, sizeof v2, "%.4f", v[1]); else v2[0] = 0;
            stage_logf(ctx, "%-32s %12s %12s", label, v1, v2);
        }
    }
    if (score_n) {
        snprintf(label, sizeof label, "score (mean of %d)", score_n);
        if (base) snprintf(v1, sizeof v1, "%.4f", score[0]); else v1[0] = 0;
        if (tuned) snprintf(v2, sizeof v2, "%.4f", score[1]); else v2[0] = 0;
        stage_logf(ctx, "%-32s %12s %12s", label, v1, v2);
    }
    size_t i;
    json_t *g;
    json_array_foreach(gens, i, g) {
        if (i >= 4) {
            stage_logf(ctx, "(%zu more generations in results.json)", json_array_size(gens) - 4);
            break;
        }
        char buf[256];
        show(buf, sizeof buf, json_string_value(json_object_get(g, "prompt")), 70);
        stage_logf(ctx, "prompt: %s", buf);
        if (base) show(buf, sizeof buf, json_string_value(json_object_get(g, "base")), 70), stage_logf(ctx, "  base:  %s", buf);
        if (tuned) show(buf, sizeof buf, json_string_value(json_object_get(g, "tuned")), 70), stage_logf(ctx, "  tuned: %s", buf);
    }
}

/* ---- multiple-choice tasks (eval/mc.h) on the model ---- */

typedef struct task_scorer {
    llama_model *m;
    int max_T;           /* the KV cache's positions (the longest task sequence) */
    int32_t *cache;      /* host copy of the tokens in the KV cache [cache_len] */
    int cache_len;
    bool lp_valid;       /* lp holds log p(. | cache) (the last cached position's distribution) */
    double *lp;          /* [V] */
    float *logits, *losses;
    int32_t *targets;
    int64_t fed, total;  /* tokens through the model, tokens in the requests */
    int64_t forwards;    /* passes through the model */
    double shared_ll;    /* log-likelihood of the cached continuation tokens after shared_cs */
    int shared_cs;
    int batch;           /* task_batch: questions scored side by side in one pass (1: one at a time) */
    int batch_rows;      /* the most tokens such a pass may have (the plan's) */
    float *blogits;      /* [batch, V]: each question's distribution after its context */
    int32_t *bids, *btargets;
    float *blosses;      /* [batch_rows] */
} task_scorer;

static int enc_tok(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tokenizer_encode(ud, text, len, false, ids, n);
}

/* log-softmax of logits into lp: the terms exp(l - max) <= 1 in float (a vector loop; once a
 * question, on the host), summed in double */
static void log_softmax(const float *logits, int V, double *lp) {
    float mx = -INFINITY;
    for (int v = 0; v < V; v++) mx = logits[v] > mx ? logits[v] : mx;
    double z = 0;
    for (int v = 0; v < V; v++) z += (double)expf(logits[v] - mx);
    double lz = (double)mx + log(z);
    for (int v = 0; v < V; v++) lp[v] = (double)logits[v] - lz;
}

/* One request on the KV cache. Its tokens up to X (the context, and the first tokens of the
 * continuation that the neighbouring requests share: " " before each letter with a byte-level
 * tokenizer) are computed once: the part already in the cache (the longest common prefix: the
 * few-shot examples of the previous question) is not computed again, the rest is decoded with the
 * log-likelihood of its continuation tokens and the distribution after its last token kept. Each
 * choice then reads its next token from that distribution, and a longer remainder is decoded after
 * it and cut off the cache again. mc_run hands the requests over sorted by their tokens, so the
 * choices of a question and questions with the same examples come one after the other. */
static int score_one(task_scorer *s, const mc_seq *q, double *loglik) {
    llama_model *m = s->m;
    int len = (int)q->len, cs = (int)q->cont_start;
    if (cs < 1) return err_set(ERR_DATA, "a task context encodes to no token");
    if (len > s->max_T) return err_set(ERR_DATA, "a task sequence of %d tokens is longer than the %d planned", len, s->max_T);
    int X = (int)q->shared; /* the tokens computed once: [cs, len - 1] */
    if (X < cs) X = cs;
    if (X > len - 1) X = len - 1;
    int lcp = 0;
    while (lcp < s->cache_len && lcp < X && s->cache[lcp] == q->ids[lcp]) lcp++;
    int rc = 0;
    s->total += len - 1;
    if (!(s->lp_valid && lcp == X && s->cache_len == X && s->shared_cs == cs)) {
        int keep = lcp < cs - 1 ? lcp : cs - 1; /* from the context's last token on: its logits are needed */
        s->lp_valid = false;
        if ((rc = llama_kv_truncate(m, keep))) return rc;
        s->cache_len = keep;
        int n = X - keep;
        for (int t = 0; t < n - 1; t++) s->targets[t] = keep + t >= cs - 1 ? q->ids[keep + t + 1] : -1;
        s->targets[n - 1] = -1;
        if ((rc = llama_decode_losses(m, q->ids + keep, n, s->targets, s->losses, s->logits))) return rc;
        s->forwards++;
        memcpy(s->cache + keep, q->ids + keep, sizeof(int32_t) * (size_t)n);
        s->cache_len = X;
        s->fed += n;
        s->shared_ll = 0;
        for (int t = 0; t < n - 1; t++) s->shared_ll -= s->losses[t];
        s->shared_cs = cs;
        log_softmax(s->logits, m->V, s->lp);
        s->lp_valid = true;
    }
    double ll = s->shared_ll + s->lp[q->ids[X]];
    int rest = len - X - 1; /* tokens after that, each predicted by the one before */
    if (rest > 0) {
        for (int t = 0; t < rest; t++) s->targets[t] = q->ids[X + 1 + t];
        rc = llama_decode_losses(m, q->ids + X, rest, s->targets, s->losses, NULL);
        s->fed += rest;
        s->forwards++;
        int r2 = llama_kv_truncate(m, X); /* the shared part stays cached for the next choice */
        if (rc || (rc = r2)) {
            s->lp_valid = false, s->cache_len = 0;
            return rc;
        }
        for (int t = 0; t < rest; t++) ll -= s->losses[t];
    }
    *loglik = ll;
    return 0;
}

/* a request's X (score_one's): the tokens up to it are its context and what its neighbours share */
static int seq_x(const mc_seq *q) {
    int len = (int)q->len, cs = (int)q->cont_start, X = (int)q->shared;
    if (X < cs) X = cs;
    if (X > len - 1) X = len - 1;
    return X;
}

static int common_prefix(const int32_t *a, int na, const int32_t *b, int nb) {
    int k = 0;
    while (k < na && k < nb && a[k] == b[k]) k++;
    return k;
}

/* Several questions in one pass (task_batch): the requests from seqs[0] on, a question being the
 * run of requests with the same tokens up to the same X, each answer one token after X (MMLU's
 * letters). When the KV cache already holds all that the questions share (the description and
 * the solved examples: the question before them put it there), each question's own tokens from
 * the end of that common part go through the model side by side with the others'
 * (llama_decode_segments: each attends to the cache and itself only), and every request reads its
 * answer from its question's distribution, as score_one does. *used: the requests scored (0: none
 * here, score_one goes on). */
#define BATCH_SLACK 64 /* tokens a question may recompute that the cache could have given it */
static int score_batch(task_scorer *s, const mc_seq *seqs, size_t n, double *loglik, size_t *used) {
    *used = 0;
    enum { MAXQ = 256 };
    size_t first[MAXQ + 1];
    int nq = 0, P = s->cache_len, rows = 0, shared = INT32_MAX;
    size_t i = 0;
    while (i < n && nq < s->batch && nq < MAXQ) {
        const mc_seq *q = &seqs[i];
        int X = seq_x(q), cs = (int)q->cont_start;
        if ((int)q->len - X - 1 != 0 || cs < 1 || (int)q->len > s->max_T) break; /* a longer answer: score_one */
        size_t e = i + 1;
        while (e < n && seq_x(&seqs[e]) == X && (int)seqs[e].cont_start == cs && (int)seqs[e].len - X - 1 == 0 &&
               !memcmp(seqs[e].ids, q->ids, sizeof(int32_t) * (size_t)X))
            e++;
        int lcp = common_prefix(s->cache, s->cache_len, q->ids, X);
        int keep = lcp < cs - 1 ? lcp : cs - 1;
        int p = keep < P ? keep : P;
        /* the pass computes each question's tokens from p on: worth it while the cache holds what
         * they have in common, give or take a few tokens (else the first goes alone and puts it there) */
        if (nq) {
            int mutual = common_prefix(seqs[first[0]].ids, seq_x(&seqs[first[0]]), q->ids, X);
            int sh = mutual < shared ? mutual : shared;
            if (sh - p > BATCH_SLACK) break;
            shared = sh;
        }
        int grown = rows + (X - p) + nq * (P - p); /* the earlier questions start at p too */
        if (grown > s->batch_rows) break;
        rows = grown, P = p;
        first[nq++] = i;
        i = e;
    }
    if (nq < 2) return 0;
    first[nq] = i;
    int seg[MAXQ], t = 0;
    for (int j = 0; j < nq; j++) {
        const mc_seq *q = &seqs[first[j]];
        int X = seq_x(q), cs = (int)q->cont_start;
        seg[j] = X - P;
        for (int r = 0; r < seg[j]; r++) {
            s->bids[t + r] = q->ids[P + r];
            /* row P + r predicts token P + r + 1: the context's last token onwards (cs - 1), short of X */
            s->btargets[t + r] = P + r >= cs - 1 && P + r + 1 < X ? q->ids[P + r + 1] : -1;
        }
        t += seg[j];
    }
    llama_model *m = s->m;
    int rc = llama_kv_truncate(m, P);
    if (!rc) rc = llama_decode_segments(m, s->bids, seg, nq, s->btargets, s->blosses, s->blogits);
    if (rc) {
        s->lp_valid = false, s->cache_len = 0;
        return rc;
    }
    s->cache_len = P; /* the cache keeps the common part; score_one's distribution is gone */
    s->lp_valid = false;
    s->fed += t;
    s->forwards++;
    for (int j = 0, t0 = 0; j < nq; t0 += seg[j], j++) {
        double ll0 = 0;
        for (int r = 0; r < seg[j]; r++) ll0 -= s->btargets[t0 + r] >= 0 ? s->blosses[t0 + r] : 0.0f;
        log_softmax(s->blogits + (size_t)j * (size_t)m->V, m->V, s->lp);
        for (size_t k = first[j]; k < first[j + 1]; k++) {
            loglik[k] = ll0 + s->lp[seqs[k].ids[seq_x(&seqs[k])]];
            s->total += (int64_t)seqs[k].len - 1;
        }
    }
    *used = i;
    return 0;
}

static int score_seqs(void *ud, const mc_seq *seqs, size_t n, double *loglik) {
    task_scorer *s = ud;
    for (size_t i = 0; i < n;) {
        size_t used = 0;
        int rc = s->batch > 1 ? score_batch(s, seqs + i, n - i, loglik + i, &used) : 0;
        if (!rc && !used) rc = score_one(s, &seqs[i], &loglik[i]), used = 1;
        if (rc) return rc;
        i += used;
    }
    return 0;
}

static void task_progress(void *ud, size_t done, size_t total) {
    stage_progress(ud, "tasks", (double)done, (double)total, "questions");
}

/* where a task's records (or its few-shot examples) are: local files or downloaded ones */
typedef struct task_files {
    char **paths;
    size_t n;
    hub_dataset hd; /* a whole hub dataset's split (hub) */
    bool hub;
} task_files;

static void task_files_free(task_files *tf) {
    if (tf->hub) hub_dataset_free(&tf->hd);
    else {
        for (size_t i = 0; i < tf->n; i++) free(tf->paths[i]);
        free(tf->paths);
    }
    memset(tf, 0, sizeof *tf);
}

/* records (fewshot false): path, or url (one file, or a whole hub dataset's split, "test" by
 * default); few-shot examples (true): fewshot_path, or the whole hub dataset's fewshot_split;
 * none (n = 0) when neither is set. */
static int task_source(stage_ctx *ctx, const json_t *t, bool fewshot, task_files *tf) {
    memset(tf, 0, sizeof *tf);
    const char *path = json_string_value(json_object_get(t, fewshot ? "fewshot_path" : "path"));
    const char *url = json_string_value(json_object_get(t, "url"));
    const char *split = fewshot ? json_string_value(json_object_get(t, "fewshot_split")) : task_split(t);
    int rc = 0;
    if (path) {
        tf->paths = malloc(sizeof *tf->paths);
        if (!tf->paths || !(tf->paths[0] = stage_recipe_path(ctx, path))) rc = err_set(ERR_STAGE, "out of memory");
        else tf->n = 1;
    } else if (url && whole_hub_url(url)) {
        if (!split) return 0;
        hub_dataset *d = &tf->hd;
        rc = task_hub_split(t, split, true, ctx, d);
        stage_progress_done(ctx);
        if (!rc) {
            tf->hub = true;
            tf->paths = d->local;
            tf->n = (size_t)d->n_files;
        }
    } else if (url && !fewshot) {
        hub_config cfg;
        tf->paths = calloc(1, sizeof *tf->paths);
        if (!tf->paths) return err_set(ERR_STAGE, "out of memory");
        if (!(rc = hub_config_from_env(&cfg))) {
            rc = hub_fetch_url(&cfg, url, task_hub_progress, ctx, &tf->paths[0]);
            stage_progress_done(ctx);
            hub_config_free(&cfg);
        }
        if (!rc) tf->n = 1;
    }
    if (rc) task_files_free(tf);
    return rc;
}

typedef struct lua_task {
    hooks *h;
    json_t *ctx; /* task(record, ctx)'s ctx: {task=, purpose="evaluate"} */
} lua_task;

static int lua_record(void *ud, const json_t *record, const char *what, json_t **out) {
    lua_task *lt = ud;
    return hooks_task(lt->h, record, lt->ctx, what, out);
}

/* the scorer's buffers for the plan's rows and max_T cache positions */
static int task_scorer_init(task_scorer *sc, llama_model *m, int max_T, int batch) {
    *sc = (task_scorer){.m = m, .max_T = max_T, .batch = batch, .batch_rows = m->plan_T};
    sc->bids = malloc(sizeof(int32_t) * (size_t)m->plan_T);
    sc->btargets = malloc(sizeof(int32_t) * (size_t)m->plan_T);
    sc->blosses = malloc(sizeof(float) * (size_t)m->plan_T);
    sc->blogits = malloc(sizeof(float) * (size_t)sc->batch * (size_t)m->V);
    sc->cache = malloc(sizeof(int32_t) * (size_t)max_T);
    sc->targets = malloc(sizeof(int32_t) * (size_t)max_T);
    sc->losses = malloc(sizeof(float) * (size_t)max_T);
    sc->logits = malloc(sizeof(float) * (size_t)m->V);
    sc->lp = malloc(sizeof(double) * (size_t)m->V);
    return sc->cache && sc->targets && sc->losses && sc->logits && sc->lp && sc->bids && sc->btargets && sc->blosses &&
                   sc->blogits
               ? 0
               : err_set(ERR_STAGE, "out of memory");
}

static void task_scorer_free(task_scorer *sc) {
    void *bufs[] = {sc->cache, sc->targets, sc->losses, sc->logits, sc->lp, sc->bids, sc->btargets, sc->blosses, sc->blogits};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) free(bufs[i]);
}

/* format lua: the task's own hook, else the recipe's hooks.task; the recipe's sandbox settings */
static int task_hook_open(stage_ctx *ctx, const json_t *t, hooks **th) {
    const char *hk = json_string_value(json_object_get(t, "hook"));
    char *hpath = hk ? stage_recipe_path(ctx, hk) : NULL;
    int rc = hooks_open(th, ctx->hooks);
    if (!rc && hpath) rc = hooks_bind(*th, "task", hpath);
    if (!rc && !hooks_has(*th, "task"))
        rc = err_set(ERR_RECIPE, "format lua needs a hook: the task's 'hook' (a Lua file defining task(record, ctx)) "
                                 "or the recipe's hooks: {task: FILE}");
    free(hpath);
    return rc;
}

/* what one task's scoring cost: tokens in the requests, tokens computed, passes, seconds */
typedef struct task_cost {
    int64_t total, fed, forwards;
    double secs;
} task_cost;

/* a task's result into results[name][base|tuned], the stage's metrics and the log */
static void task_record(stage_ctx *ctx, const char *name, bool tuned, const mc_result *r, const task_cost *c,
                        int max_T, json_t *results) {
    const char *which = tuned ? "tuned" : "base";
    json_t *tr = json_object_get(results, name);
    if (!tr) json_object_set_new(results, name, tr = json_object());
    json_object_set_new(tr, which, json_pack("{s:f, s:f, s:I, s:I, s:O, s:O, s:I, s:I, s:I, s:f}", "acc", r->acc,
                                            "acc_norm", r->acc_norm, "n", (json_int_t)r->n, "truncated",
                                            (json_int_t)r->truncated, "subjects", r->subjects, "docs", r->per_doc,
                                            "tokens", (json_int_t)c->total, "tokens_computed", (json_int_t)c->fed,
                                            "forwards", (json_int_t)c->forwards, "seconds", c->secs));
    char metric[300];
    snprintf(metric, sizeof metric, "%s.acc%s", name, tuned ? "" : "_base");
    stage_metric(ctx, metric, r->acc);
    snprintf(metric, sizeof metric, "%s.acc_norm%s", name, tuned ? "" : "_base");
    stage_metric(ctx, metric, r->acc_norm);
    stage_logf(ctx, "task %s (%s): acc %.4f, acc_norm %.4f over %zu questions%s", name, which, r->acc, r->acc_norm,
               r->n, r->truncated ? " (some contexts cut from the left)" : "");
    stage_logf(ctx, "task %s (%s): %lld request tokens in %.1f s (%.0f tokens/s), %lld of them computed "
               "in %lld passes, the rest shared with a context already in the cache", name, which,
               (long long)c->total, c->secs, c->secs > 0 ? (double)c->total / c->secs : 0.0, (long long)c->fed,
               (long long)c->forwards);
    if (r->truncated)
        stage_logf(ctx, "note: task %s: %zu sequences longer than %d tokens were cut from the left", name, r->truncated,
                   max_T);
}

/* the questions of task t (and its few-shot examples) scored from an empty cache, timed */
static int task_score(stage_ctx *ctx, task_scorer *sc, tokenizer *tok, const json_t *t, mc_format f, mc_doc *docs,
                      size_t n, mc_doc *shots, size_t ns, bool tuned, json_t *results) {
    const char *name = json_string_value(json_object_get(t, "name"));
    mc_task task = {.name = name, .format = f, .docs = docs, .n_docs = n, .shots = shots, .n_shots = ns,
                    .num_fewshot = (int)json_integer_value(json_object_get(t, "num_fewshot")),
                    .max_len = (size_t)sc->max_T, .bos = -1};
    mc_result r;
    double t0 = clock_now_s();
    task_cost c = {.total = sc->total, .fed = sc->fed, .forwards = sc->forwards};
    sc->cache_len = 0, sc->lp_valid = false; /* each task from an empty cache: its scores depend on it alone */
    /* the requests handed over at a time: enough for task_batch questions of four answers */
    int rc = mc_run(&task, enc_tok, tok, score_seqs, sc, sc->batch > 16 ? 4 * (size_t)sc->batch : 64, task_progress, ctx, &r);
    double t1 = clock_now_s();
    stage_progress_done(ctx);
    if (rc) return rc;
    c.secs = t1 - t0;
    c.total = sc->total - c.total, c.fed = sc->fed - c.fed, c.forwards = sc->forwards - c.forwards;
    task_record(ctx, name, tuned, &r, &c, sc->max_T, results);
    mc_result_free(&r);
    return 0;
}

/* one entry of tasks: its records and few-shot examples loaded (through its Lua hook for format
 * lua), scored, and recorded */
static int run_task(stage_ctx *ctx, task_scorer *sc, tokenizer *tok, const json_t *t, bool tuned, json_t *results) {
    const char *name = json_string_value(json_object_get(t, "name"));
    mc_format f;
    mc_format_parse(json_string_value(json_object_get(t, "format")), &f);
    task_files recs = {0}, fs = {0};
    hooks *th = NULL;
    lua_task lt = {.ctx = json_pack("{s:s, s:s}", "task", name, "purpose", "evaluate")};
    mc_doc *docs = NULL, *shots = NULL;
    size_t n = 0, ns = 0;
    int rc = f == MC_LUA ? task_hook_open(ctx, t, &th) : 0;
    lt.h = th;
    if (!rc) rc = task_source(ctx, t, false, &recs);
    if (!rc) rc = mc_load_docs(f, recs.paths, recs.n, th ? lua_record : NULL, &lt,
                               json_integer_value(json_object_get(t, "limit")), ctx->seed, &docs, &n);
    if (!rc) rc = task_source(ctx, t, true, &fs);
    if (!rc && fs.n) rc = mc_load_docs(f, fs.paths, fs.n, th ? lua_record : NULL, &lt, 0, 0, &shots, &ns);
    if (!rc) rc = task_score(ctx, sc, tok, t, f, docs, n, shots, ns, tuned, results);
    if (rc) err_wrap("task '%s'", name);
    mc_docs_free(&docs, n);
    mc_docs_free(&shots, ns);
    task_files_free(&recs);
    task_files_free(&fs);
    if (th && !rc) stage_note_hook_files(ctx, th, "task");
    hooks_free(&th);
    json_decref(lt.ctx);
    return rc;
}

/* every task on the model as it is now; results under results[name][side], metrics NAME.acc... */
static int run_tasks(stage_ctx *ctx, llama_model *m, tokenizer *tok, int max_T, bool tuned, json_t *results) {
    task_scorer sc;
    int rc = task_scorer_init(&sc, m, max_T, (int)stage_int(ctx, "task_batch"));
    if (!rc) rc = llama_generate_begin(m, max_T); /* the KV cache the requests share */
    size_t i;
    json_t *t;
    json_array_foreach(stage_json(ctx, "tasks"), i, t) {
        if (rc) break;
        rc = run_task(ctx, &sc, tok, t, tuned, results);
    }
    task_scorer_free(&sc);
    return rc;
}

/* Prompts are formatted as the data was (the dataset artifact's meta.json, *dfmt, says how): the
 * recipe's format hook, else the data's format hook, chat template or built-in alpaca format,
 * with the same ctx.args. The chat options point into *dfmt, which the caller frees last. */
static int eval_formatting(stage_ctx *ctx, eval_state *e, const char *mdir, json_t **dfmt_out) {
    int rc;
    json_t *dfmt = NULL;
    const stage_input *fin = stage_input_get(ctx, "data");
    if (fin && (rc = train_data_formatting(fin->dir, &dfmt))) return rc;
    *dfmt_out = dfmt;
    const char *dformat = json_string_value(json_object_get(dfmt, "format"));
    const char *dhook = json_string_value(json_object_get(dfmt, "format_hook"));
    if (!hooks_has(e->hooks, "format") && dformat && !strcmp(dformat, "lua") && dhook &&
        (rc = hooks_bind(e->hooks, "format", dhook)))
        return rc;
    e->alpaca = dformat && !strcmp(dformat, "alpaca");
    if (dformat && !strcmp(dformat, "chat")) {
        /* the Jinja template the data was rendered with, when it was one (docs/chat-templates.md) */
        const char *dtpl = json_string_value(json_object_get(dfmt, "chat_template"));
        const char *dfile = json_string_value(json_object_get(dfmt, "chat_template_file")); /* absolute */
        if (dtpl && (!strcmp(dtpl, "tokenizer_default") || !strcmp(dtpl, "file")) &&
            (rc = chat_template_load(&e->chat, mdir, dfile)))
            return rc;
        json_t *mp = json_object_get(dfmt, "message_property_mappings");
        json_t *kw = json_object_get(dfmt, "chat_template_kwargs");
        e->chat_o = (chat_format_opts){.tpl = e->chat,
                                       .field_messages = json_string_value(json_object_get(dfmt, "field_messages")),
                                       .role_key = json_string_value(json_object_get(mp, "role")),
                                       .content_key = json_string_value(json_object_get(mp, "content")),
                                       .kwargs = json_is_object(kw) ? kw : NULL};
    }
    e->chat_builtin = !e->chat && dformat && !strcmp(dformat, "chat");
    if (e->chat_builtin) {
        const char *btpl = json_string_value(json_object_get(dfmt, "chat_template"));
        if ((rc = dataset_chat_template_from_name(btpl ? btpl : "llama-3", &e->chat_builtin_tpl))) return rc;
    }
    int32_t bos = tokenizer_bos(e->tok), eos = tokenizer_eos(e->tok);
    const char *bos_t = bos >= 0 ? tokenizer_token(e->tok, bos) : NULL, *eos_t = eos >= 0 ? tokenizer_token(e->tok, eos) : NULL;
    json_t *dargs = json_object_get(dfmt, "hook_args");
    e->fmt_ctx = json_pack("{s:s, s:s, s:s, s:s, s:b, s:O}", "stage", ctx->name, "purpose", "evaluate", "bos_token",
                           bos_t ? bos_t : "", "eos_token", eos_t ? eos_t : "", "train_on_inputs", 0, "args",
                           dargs ? dargs : json_null());
    if (json_is_integer(json_object_get(dfmt, "sequence_len")))
        json_object_set(e->fmt_ctx, "sequence_len", json_object_get(dfmt, "sequence_len"));
    hooks_set_callbacks(e->hooks, &(lua_host_callbacks){.ud = e, .tokenize = cb_tokenize, .metric = cb_metric,
                                                         .log = cb_log});
    return 0;
}

/* The sampling and stopping options of the generations; returns the stop list (the caller frees
 * it; its strings belong to the stage's parameters). */
static const char **eval_gen_opts(stage_ctx *ctx, eval_state *e) {
    json_t *seed = stage_json(ctx, "seed"), *stop = stage_json(ctx, "stop");
    const char **stops = calloc(json_array_size(stop) + 1, sizeof *stops);
    for (size_t i = 0; i < json_array_size(stop); i++) stops[i] = json_string_value(json_array_get(stop, i));
    e->gen = (gen_opts){.sample = {.temperature = (float)stage_float(ctx, "temperature"),
                                   .top_k = (int)stage_int(ctx, "top_k"),
                                   .top_p = (float)stage_float(ctx, "top_p"),
                                   .repetition_penalty = (float)stage_float(ctx, "repetition_penalty"),
                                   .seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : ctx->seed},
                        .max_new_tokens = (int)stage_int(ctx, "max_new_tokens"),
                        .eos_id = tokenizer_eos(e->tok),
                        .stop = stops,
                        .n_stop = (int)json_array_size(stop)};
    return stops;
}

/* Every dataset input's val split into sets[] (sides[] names them), the longest row into
 * *max_row; the data input's records also give prompts to score. */
static int eval_open_sets(stage_ctx *ctx, eval_state *e, train_data *sets, side *sides, int *n_sets_out,
                          int64_t *max_row_out) {
    int rc;
    int n_sets = 0;
    int64_t max_row = *max_row_out;
    for (int k = 0; k < ctx->n_inputs; k++) {
        if (strcmp(ctx->inputs[k].kind, "dataset")) continue;
        if (train_data_open(&sets[n_sets], ctx->inputs[k].dir, "val")) {
            stage_logf(ctx, "note: dataset '%s' has no val split: %s", ctx->inputs[k].stage, err_msg());
            err_clear();
            continue;
        }
        if (sets[n_sets].n_rows == 0) {
            train_data_free(&sets[n_sets]);
            continue;
        }
        for (int64_t r = 0; r < sets[n_sets].n_rows; r++)
            if (sets[n_sets].rows[r + 1] - sets[n_sets].rows[r] > max_row)
                max_row = sets[n_sets].rows[r + 1] - sets[n_sets].rows[r];
        sides[n_sets] = (side){.name = ctx->inputs[k].stage};
        if (!strcmp(ctx->inputs[k].role, "data") &&
            (rc = add_val_sequences(e, &sets[n_sets], ctx->inputs[k].dir,
                                    (int64_t)e->n_items + stage_int(ctx, "score_records")))) {
            *n_sets_out = n_sets + 1; /* freed by the caller */
            return rc;
        }
        n_sets++;
    }
    *n_sets_out = n_sets;
    *max_row_out = max_row;
    return 0;
}

/* The results: one table, base and tuned side by side (val losses, scores, generations, tasks),
 * logged, as metrics, in results.json, as the stage's report and event, and to the on_eval hook. */
static int eval_write_results(stage_ctx *ctx, eval_state *e, const ops_table *ops, json_t *gens,
                              json_t *task_results, side *sides, int n_sets, bool base, bool tuned, int score_n,
                              const double *score, json_t **results_out) {
    int rc;
    bool has_tasks = json_array_size(stage_json(ctx, "tasks")) > 0;
    json_t *results = json_object();
    *results_out = results; /* freed by the caller */
    json_t *losses = json_object();
    for (int k = 0; k < n_sets; k++) {
        json_t *row = json_pack("{s:I}", "tokens", (json_int_t)sides[k].tokens);
        if (base) json_object_set_new(row, "base", json_pack("{s:f, s:f}", "loss", sides[k].loss[0], "perplexity", sides[k].ppl[0]));
        if (tuned) json_object_set_new(row, "tuned", json_pack("{s:f, s:f}", "loss", sides[k].loss[1], "perplexity", sides[k].ppl[1]));
        json_object_set_new(losses, sides[k].name, row);
    }
    json_object_set_new(results, "val", losses);
    if (score_n) {
        json_t *s = json_pack("{s:i, s:s}", "n", score_n, "metric", hooks_has(e->hooks, "score") ? "score hook" : "exact_match");
        if (base) json_object_set_new(s, "base", json_real(score[0]));
        if (tuned) json_object_set_new(s, "tuned", json_real(score[1]));
        json_object_set_new(results, "score", s);
    }
    json_object_set(results, "generations", gens);
    if (has_tasks) json_object_set(results, "tasks", task_results);
    json_object_set_new(results, "generation", json_pack("{s:i, s:f, s:i, s:f, s:f}", "max_new_tokens",
                                                         e->gen.max_new_tokens, "temperature", e->gen.sample.temperature,
                                                         "top_k", e->gen.sample.top_k, "top_p", e->gen.sample.top_p,
                                                         "repetition_penalty", e->gen.sample.repetition_penalty));
    log_table(ctx, sides, n_sets, base, tuned, score_n, score, gens);
    if (n_sets) {
        if (tuned) stage_metric(ctx, "val_loss", sides[0].loss[1]), stage_metric(ctx, "perplexity", sides[0].ppl[1]);
        if (base) stage_metric(ctx, "val_loss_base", sides[0].loss[0]), stage_metric(ctx, "perplexity_base", sides[0].ppl[0]);
    }
    if (score_n) {
        if (tuned) stage_metric(ctx, "score", score[1]);
        if (base) stage_metric(ctx, "score_base", score[0]);
    }
    json_object_set_new(results, "environment", stage_environment(ops)); /* what produced them */
    char *text = json_dumps(results, JSON_INDENT(2) | JSON_SORT_KEYS), *rp = fs_join(ctx->out_dir, "results.json");
    rc = text ? fs_write_atomic(rp, text, strlen(text)) : err_set(ERR_STAGE, "cannot encode the results");
    free(text);
    free(rp);
    if (rc) return rc;
    json_decref(ctx->report);
    ctx->report = json_incref(results);
    stage_event(ctx, "eval_results", json_deep_copy(results)); /* the event gets fields added */
    if (coll_rank() == 0 && hooks_has(e->hooks, "on_eval")) rc = hooks_on_eval(e->hooks, results);
    return rc;
}

/* dense_weights: the KV cache the stage will use is allocated first (the longest of the tasks' and
 * the generations'), so that what the device has left is known, then the linears are kept
 * dequantized when the mode and the memory say so */
static int keep_dense(eval_state *e, int task_T) {
    stage_ctx *ctx = e->ctx;
    llama_model *m = e->m;
    int rc, kv = task_T;
    for (size_t i = 0; i < e->n_items; i++) {
        int n = e->items[i].n_ids;
        if (!e->items[i].ids) {
            int32_t *ids = NULL;
            size_t nt = 0;
            if ((rc = tokenizer_encode(e->tok, e->items[i].text, strlen(e->items[i].text), true, &ids, &nt))) return rc;
            free(ids);
            n = (int)nt;
        }
        n += e->gen.max_new_tokens;
        if (m->cfg.max_position_embeddings > 0 && n > m->cfg.max_position_embeddings) n = (int)m->cfg.max_position_embeddings;
        if (n > kv) kv = n;
    }
    if (kv > 0 && (rc = llama_generate_begin(m, kv))) return rc;
    return stage_dense_weights(ctx, m, NULL);
}

static int eval_run(stage_ctx *ctx) {
    const stage_input *min = stage_input_get(ctx, "model"), *ain = stage_input_get(ctx, "adapter");
    if (!min) return err_set(ERR_STAGE, "evaluate: no model input");
    char *mdir = fs_join(min->dir, "model"), *adir = ain ? fs_join(ain->dir, "adapter") : NULL;
    char *pfile = stage_path(ctx, "prompts_file");
    model_config cfg = {0};
    peft_adapter ad = {0}; /* peft_adapter_load fills it; free is safe on a zeroed one */
    eval_state e = {.ctx = ctx};
    train_data sets[STAGE_MAX_INPUTS];
    side sides[STAGE_MAX_INPUTS];
    int n_sets = 0;
    memset(sets, 0, sizeof sets);
    json_t *gens = json_array(), *results = NULL, *task_results = NULL, *dfmt = NULL;
    const char **stops = NULL;
    const ops_table *ops;
    int rc;

    if ((rc = device_ops(ctx->device, &ops))) goto out;
    if ((rc = device_deterministic(ops, stage_bool(ctx, "deterministic"), 1))) goto out;
    if ((rc = config_load(&cfg, mdir)) || (rc = tokenizer_load(&e.tok, mdir))) goto out;
    if ((rc = hooks_open(&e.hooks, ctx->hooks))) goto out;
    if ((rc = eval_formatting(ctx, &e, mdir, &dfmt))) goto out;

    stops = eval_gen_opts(ctx, &e);

    /* prompts: the recipe's, the file's, then val records to score */
    json_t *pr = stage_json(ctx, "prompts"), *v;
    size_t i;
    json_array_foreach(pr, i, v) if ((rc = add_item(&e, v, "prompts", i))) goto out;
    if (pfile && (rc = load_prompts_file(&e, pfile))) goto out;

    int64_t max_row = 1;
    if ((rc = eval_open_sets(ctx, &e, sets, sides, &n_sets, &max_row))) goto out;

    if ((rc = llama_init(&e.m, &cfg, mdir, &LLAMA_LOAD_OPTS_DEFAULT, ops))) goto out;
    if (ain && ((rc = peft_adapter_load(&ad, adir)) || (rc = adapter_validate(&ad, &cfg, adir)) ||
                (rc = llama_peft_attach(e.m, &ad, adir))))
        goto out;
    int batch_rows = (int)stage_int(ctx, "batch_rows");
    int plan_T = (int)(max_row * batch_rows);
    bool has_tasks = json_array_size(stage_json(ctx, "tasks")) > 0;
    int task_T = (int)stage_int(ctx, "task_max_tokens");
    if (has_tasks && cfg.max_position_embeddings > 0 && task_T > cfg.max_position_embeddings)
        task_T = (int)cfg.max_position_embeddings;
    if (has_tasks && task_T > plan_T) plan_T = task_T;
    /* a train stage before this one in the process may have capped attention's workspace to fit
     * its budget (llama_plan_auto): the defaults again (llama_dense_auto caps it to this plan) */
    if (e.m->ops->det_workspace_cap_set) e.m->ops->det_workspace_cap_set(0);
    if (e.m->ops->attn_workspace_cap_set) e.m->ops->attn_workspace_cap_set(0);
    if ((rc = llama_plan(e.m, plan_T, LLAMA_CKPT_NONE))) goto out;
    if ((rc = keep_dense(&e, has_tasks ? task_T : 0))) goto out;
    task_results = json_object();

    for (i = 0; i < e.n_items; i++)
        json_array_append_new(gens, json_pack("{s:s, s:s, s:s*}", "prompt", e.items[i].text, "source",
                                              e.items[i].source, "reference", e.items[i].reference));
    bool tuned = ain != NULL, base = !ain || stage_bool(ctx, "compare_base");
    double score[2] = {NAN, NAN};
    int score_n = 0;
    /* several ranks: all set up (or one failed) before the first collective of the sides */
    if (coll_world() > 1 && (rc = coll_agree(0, NULL))) goto out;
    if (base) {
        if (ain) llama_peft_zero(e.m);
        double sum;
        if ((rc = run_side(&e, 0, gens, sides, n_sets, sets, batch_rows, &sum, &score_n))) goto out;
        if (score_n) score[0] = sum / score_n;
        if (has_tasks && (rc = run_tasks(ctx, e.m, e.tok, task_T, false, task_results))) goto out;
    }
    if (tuned) {
        if (base && (rc = llama_peft_upload(e.m, &ad, adir))) goto out;
        double sum;
        if ((rc = run_side(&e, 1, gens, sides, n_sets, sets, batch_rows, &sum, &score_n))) goto out;
        if (score_n) score[1] = sum / score_n;
        if (has_tasks && (rc = run_tasks(ctx, e.m, e.tok, task_T, true, task_results))) goto out;
    }

    rc = eval_write_results(ctx, &e, ops, gens, task_results, sides, n_sets, base, tuned, score_n, score, &results);

out:
    json_decref(task_results);
    json_decref(results);
    json_decref(gens);
    json_decref(dfmt);
    for (size_t k = 0; k < e.n_items; k++) {
        free(e.items[k].text);
        free(e.items[k].ids);
        free(e.items[k].reference);
        json_decref(e.items[k].record);
    }
    free(e.items);
    chat_template_free(&e.chat);
    for (int k = 0; k < n_sets; k++) train_data_free(&sets[k]);
    free(stops);
    llama_free(&e.m);
    if (!rc) stage_note_hook_files(ctx, e.hooks, "format|score|generate");
    hooks_free(&e.hooks);
    json_decref(e.fmt_ctx);
    tokenizer_free(&e.tok);
    peft_adapter_free(&ad);
    config_free(&cfg);
    free(mdir);
    free(adir);
    free(pfile);
    return rc;
}

static const metric_spec eval_metrics[] = {
    {"val_loss", METRIC_LOWER, "tuned model's loss on the val split of data"},
    {"perplexity", METRIC_LOWER, "tuned model's perplexity on the val split of data"},
    {"val_loss_base", METRIC_LOWER, "base model's loss on the same split"},
    {"perplexity_base", METRIC_LOWER, "base model's perplexity"},
    {"score", METRIC_HIGHER, "tuned model's mean task score (score hook, or exact match)"},
    {"score_base", METRIC_HIGHER, "base model's mean task score"},
    {"*.acc", METRIC_HIGHER, "a multiple-choice task's accuracy, tuned (tasks: NAME.acc)"},
    {"*.acc_norm", METRIC_HIGHER, "a task's length-normalised accuracy, tuned (NAME.acc_norm)"},
    {"*.acc_base", METRIC_HIGHER, "a task's accuracy, base model (NAME.acc_base)"},
    {"*.acc_norm_base", METRIC_HIGHER, "a task's length-normalised accuracy, base model"},
    {"*", METRIC_ANY, "a metric a score hook records (qlora.metric): the gate says which way is better"},
    {0}};

const stage_kind stage_kind_evaluate = {
    .name = "evaluate",
    .version = 1,
    .doc = "loss, perplexity, generations and hook scores of the base and tuned model, side by side",
    .params = eval_params,
    .check = eval_check,
    .key_paths = eval_key_paths,
    .resolve = eval_resolve,
    .run = eval_run,
    .key_hooks = "format|score|generate|task",
    .device_dependent = true,
    .data_parallel = true,
    .metrics = eval_metrics,
};
