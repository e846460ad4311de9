/* dataset_build.c: records -> tokenized, masked, packed dataset artifact (see dataset.h).
 *
 * Records are formatted on the calling thread (Lua hooks are single-threaded) into batches;
 * each batch is tokenized by o->jobs threads; finished sequences go into one token store.
 * When every record is in, the store is shuffled and split, packed first-fit-decreasing
 * (a max segment tree over the rows finds the leftmost row with room in O(log rows)), and
 * written split by split. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "tokenizer/tokenizer.h"
#include "train/dataset_build.h"

#define BATCH 4096
#define HIST_BINS 16
#define LOG_SKIPPED 5 /* skipped records logged one by one, the rest only counted */

/* ---- growable arrays ---- */

typedef struct vec32 {
    int32_t *p;
    size_t n, cap;
} vec32;

typedef struct vec64 {
    int64_t *p;
    size_t n, cap;
} vec64;

static int vec32_put(vec32 *v, const int32_t *x, size_t n) {
    if (v->n + n > v->cap) {
        size_t cap = v->cap ? v->cap : 1 << 16;
        while (cap < v->n + n) cap *= 2;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return err_set(ERR_STAGE, "out of memory (dataset of %zu tokens)", v->n + n);
        v->p = p;
        v->cap = cap;
    }
    memcpy(v->p + v->n, x, n * sizeof *x);
    v->n += n;
    return 0;
}

static int vec64_push(vec64 *v, int64_t x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 1024;
        int64_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return err_set(ERR_STAGE, "out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return 0;
}

/* ---- prompts and templates ---- */

static const char ALPACA_WITH_INPUT[] =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\n%s\n\n### Input:\n%s\n\n### Response:";
static const char ALPACA_NO_INPUT[] =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n%s\n\n### Response:";

char *dataset_alpaca_prompt(const char *instruction, const char *input) {
    char *s = NULL;
    int rc = input && input[0] ? asprintf(&s, ALPACA_WITH_INPUT, instruction, input)
                               : asprintf(&s, ALPACA_NO_INPUT, instruction);
    return rc < 0 ? NULL : s;
}

/* ---- formatted records ---- */

enum item_kind { ITEM_PAIR, ITEM_SEGMENTS, ITEM_TEXT, ITEM_CHAT /* rendered by a Jinja template in the tokenizer threads */ };
enum item_drop { DROP_NONE, DROP_LONG, DROP_NO_LABELS };

typedef struct item {
    enum item_kind kind;
    hooks_format_result f; /* the segments (PAIR: prompt, response; TEXT: one) */
    char *what;            /* "data/x.json: record 12" */
    json_t *rec;           /* ITEM_CHAT: the record, rendered by the tokenizer thread */
    /* filled by the tokenizer threads */
    int32_t *ids, *labels;
    size_t n;
    bool truncated;
    enum item_drop drop;
    int rc;
    char *err;
    char *rec_json; /* the record as compact JSON, for val.records.jsonl (NULL when there is no val split) */
} item;

static void item_free(item *it) {
    hooks_format_result_free(&it->f);
    json_decref(it->rec);
    free(it->what);
    free(it->ids);
    free(it->labels);
    free(it->err);
    free(it->rec_json);
    memset(it, 0, sizeof *it);
}

static int seg_add(hooks_format_result *f, const char *a, const char *b, const char *c, bool train) {
    size_t la = strlen(a), lb = b ? strlen(b) : 0, lc = c ? strlen(c) : 0;
    hooks_segment *ns = realloc(f->seg, (size_t)(f->n + 1) * sizeof *ns);
    if (!ns) return err_set(ERR_STAGE, "out of memory");
    f->seg = ns;
    char *t = malloc(la + lb + lc + 1);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    memcpy(t, a, la);
    if (lb) memcpy(t + la, b, lb);
    if (lc) memcpy(t + la + lb, c, lc);
    t[la + lb + lc] = 0;
    f->seg[f->n++] = (hooks_segment){t, la + lb + lc, train};
    return 0;
}

/* a string field: required (error if absent) or optional (NULL if absent or null) */
static int field_str(const json_t *rec, const char *key, bool required, const char *what, const char **out) {
    json_t *v = json_object_get(rec, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required) return err_set(ERR_DATA, "%s: missing '%s'", what, key);
        return 0;
    }
    if (!json_is_string(v))
        return err_set(ERR_DATA, "%s: '%s' must be a string, not %s (map a text field or column to it)", what, key,
                       json_is_array(v) ? "a list" : json_is_object(v) ? "an object" : json_is_boolean(v) ? "a boolean"
                                                                                               : "a number");
    *out = json_string_value(v);
    return 0;
}

static int format_alpaca(const json_t *rec, const char *what, hooks_format_result *f) {
    const char *ins, *in, *out;
    int rc = field_str(rec, "instruction", true, what, &ins);
    if (!rc) rc = field_str(rec, "input", false, what, &in);
    if (!rc) rc = field_str(rec, "output", true, what, &out);
    if (rc) return rc;
    char *p = dataset_alpaca_prompt(ins, in);
    if (!p) return err_set(ERR_STAGE, "out of memory");
    rc = seg_add(f, p, NULL, NULL, false);
    free(p);
    if (!rc) rc = seg_add(f, out, NULL, NULL, true);
    f->kind = HOOKS_FORMAT_PAIR;
    return rc;
}

/* a copy of s without leading and trailing white space (Jinja's trim / Python's strip) */
static char *strip_dup(const char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\v' || *s == '\f') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\v' ||
                 s[n - 1] == '\f'))
        n--;
    return strndup(s, n);
}

typedef struct chat_msg {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} chat_msg;

/* messages [{role, content}] or ShareGPT conversations [{from, value}] */
static int chat_messages(const json_t *rec, const char *what, chat_msg **out, size_t *n) {
    json_t *list = json_object_get(rec, "messages");
    bool sharegpt = false;
    if (!list) {
        list = json_object_get(rec, "conversations");
        sharegpt = true;
    }
    if (!list) return err_set(ERR_DATA, "%s: missing 'messages' (or ShareGPT 'conversations')", what);
    if (!json_is_array(list) || json_array_size(list) == 0)
        return err_set(ERR_DATA, "%s: '%s' must be a non-empty list", what, sharegpt ? "conversations" : "messages");
    *n = json_array_size(list);
    chat_msg *m = calloc(*n, sizeof *m);
    if (!m) return err_set(ERR_STAGE, "out of memory");
    size_t i;
    json_t *e;
    json_array_foreach(list, i, e) {
        const char *rk = sharegpt ? "from" : "role", *ck = sharegpt ? "value" : "content";
        const char *role = json_string_value(json_object_get(e, rk));
        const char *content = json_string_value(json_object_get(e, ck));
        if (!role || !content) {
            free(m);
            return err_set(ERR_DATA, "%s: message %zu needs string '%s' and '%s'", what, i, rk, ck);
        }
        if (!strcmp(role, "human") || !strcmp(role, "user")) role = "user";
        else if (!strcmp(role, "gpt") || !strcmp(role, "assistant") || !strcmp(role, "model")) role = "assistant";
        else if (!strcmp(role, "system")) role = "system";
        else {
            free(m);
            return err_set(ERR_DATA, "%s: message %zu has unknown role '%s' (system, user or assistant; human and "
                                     "gpt in ShareGPT data; model)", what, i, role);
        }
        if (!strcmp(role, "system") && i != 0) {
            free(m);
            return err_set(ERR_DATA, "%s: message %zu: a system message may only come first", what, i);
        }
        m[i] = (chat_msg){role, content};
    }
    *out = m;
    return 0;
}

/* The three templates below match the chat templates their models ship (tokenizer_config.json
 * chat_template) and hooks/{llama2,llama3,chatml}.lua; tests/unit/test_dataset.c checks that
 * both give the same tokens. Assistant turns are trained, with their end-of-turn marker. */
static int format_chat(const json_t *rec, const char *what, dataset_chat_template tpl, const dataset_tokenizer *tok,
                       hooks_format_result *f) {
    chat_msg *m = NULL;
    size_t n = 0;
    int rc = chat_messages(rec, what, &m, &n);
    if (rc) return rc;
    f->kind = HOOKS_FORMAT_SEGMENTS;
    size_t users = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char *c = strip_dup(m[i].content);
        if (!c) {
            rc = err_set(ERR_STAGE, "out of memory");
            break;
        }
        bool asst = !strcmp(m[i].role, "assistant");
        switch (tpl) {
        case DATASET_CHAT_LLAMA3:
            if (asst) {
                rc = seg_add(f, "<|start_header_id|>assistant<|end_header_id|>\n\n", NULL, NULL, false);
                if (!rc) rc = seg_add(f, c, "<|eot_id|>", NULL, true);
            } else {
                rc = seg_add(f, "<|start_header_id|>", m[i].role, "<|end_header_id|>\n\n", false);
                if (!rc) rc = seg_add(f, c, "<|eot_id|>", NULL, false);
            }
            break;
        case DATASET_CHAT_CHATML: /* content as it is: ChatML templates do not trim */
            rc = seg_add(f, "<|im_start|>", m[i].role, "\n", false);
            if (!rc) rc = seg_add(f, m[i].content, "<|im_end|>", NULL, asst);
            if (!rc) rc = seg_add(f, "\n", NULL, NULL, false);
            break;
        case DATASET_CHAT_LLAMA2:
            if (!strcmp(m[i].role, "system")) {
                /* folded into the first user turn, as Llama-2's template does */
                if (i + 1 >= n || strcmp(m[i + 1].role, "user")) {
                    rc = err_set(ERR_DATA, "%s: llama-2 needs a user message after the system message", what);
                    break;
                }
                /* the template strips the combined text, not its parts */
                char *joined = NULL, *t = NULL;
                if (asprintf(&joined, "<<SYS>>\n%s\n<</SYS>>\n\n%s", m[i].content, m[i + 1].content) < 0) joined = NULL;
                t = joined ? strip_dup(joined) : NULL;
                free(joined);
                rc = t ? seg_add(f, "[INST] ", t, " [/INST]", false) : err_set(ERR_STAGE, "out of memory");
                free(t);
                users++;
                i++;
            } else if (asst) {
                rc = seg_add(f, " ", c, " ", true);
                if (!rc) rc = seg_add(f, tok->eos_token, NULL, NULL, true);
            } else {
                /* BOS opens every user turn; the first one is the BOS we add ourselves */
                rc = seg_add(f, users ? tok->bos_token : "", "[INST] ", c, false);
                if (!rc) rc = seg_add(f, " [/INST]", NULL, NULL, false);
                users++;
            }
            break;
        }
        free(c);
    }
    free(m);
    return rc;
}

const char *const *dataset_chat_special_tokens(dataset_chat_template tpl) {
    static const char *const llama3[] = {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", NULL};
    static const char *const chatml[] = {"<|im_start|>", "<|im_end|>", NULL};
    static const char *const none[] = {NULL}; /* llama-2 writes [INST] as text, BOS and EOS by id */
    return tpl == DATASET_CHAT_LLAMA3 ? llama3 : tpl == DATASET_CHAT_CHATML ? chatml : none;
}

int dataset_chat_template_from_name(const char *name, dataset_chat_template *out) {
    if (!strcmp(name, "llama-2")) *out = DATASET_CHAT_LLAMA2;
    else if (!strcmp(name, "llama-3")) *out = DATASET_CHAT_LLAMA3;
    else if (!strcmp(name, "chatml")) *out = DATASET_CHAT_CHATML;
    else return err_set(ERR_RECIPE, "unknown chat template '%s' (llama-2, llama-3 or chatml)", name);
    return 0;
}

int dataset_chat_prompt(const json_t *rec, const char *what, dataset_chat_template tpl, const dataset_tokenizer *tok,
                        char **out) {
    *out = NULL;
    /* with an empty assistant turn appended when the conversation does not end with one, the
     * prompt is everything before the last trained run: the assistant header included */
    json_t *copy = json_deep_copy(rec);
    bool sharegpt = !json_object_get(copy, "messages");
    json_t *list = json_object_get(copy, sharegpt ? "conversations" : "messages");
    if (json_is_array(list) && json_array_size(list)) {
        json_t *last = json_array_get(list, json_array_size(list) - 1);
        const char *role = json_string_value(json_object_get(last, sharegpt ? "from" : "role"));
        if (!role || (strcmp(role, "assistant") && strcmp(role, "gpt") && strcmp(role, "model")))
            json_array_append_new(list, sharegpt ? json_pack("{s:s, s:s}", "from", "gpt", "value", "")
                                                 : json_pack("{s:s, s:s}", "role", "assistant", "content", ""));
    }
    hooks_format_result f = {0};
    int rc = format_chat(copy, what, tpl, tok, &f);
    json_decref(copy);
    if (rc) {
        hooks_format_result_free(&f);
        return rc;
    }
    int end = f.n;
    while (end > 0 && !f.seg[end - 1].train) end--;
    while (end > 0 && f.seg[end - 1].train) end--;
    size_t len = 0;
    for (int i = 0; i < end; i++) len += f.seg[i].len;
    char *s = malloc(len + 1);
    if (s) {
        size_t o = 0;
        for (int i = 0; i < end; i++) memcpy(s + o, f.seg[i].text, f.seg[i].len), o += f.seg[i].len;
        s[o] = 0;
    }
    hooks_format_result_free(&f);
    *out = s;
    return s ? 0 : err_set(ERR_STAGE, "out of memory");
}

/* ---- tokenizing one item (tokenizer threads) ---- */

static int encode(const dataset_tokenizer *tok, const char *s, size_t len, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    if (len == 0) return 0;
    return tok->encode(tok->ud, s, len, ids, n);
}

/* the item's segments as one text (*all, NUL-terminated, *total bytes) and the byte end of each */
static int join_segments(const hooks_format_result *f, char **all_out, size_t *total_out, size_t **ends_out) {
    size_t total = 0;
    for (int i = 0; i < f->n; i++) total += f->seg[i].len;
    char *all = malloc(total + 1);
    if (!all) return err_set(ERR_STAGE, "out of memory");
    size_t *ends = malloc((size_t)(f->n + 1) * sizeof *ends); /* byte end of each segment */
    if (!ends) {
        free(all);
        return err_set(ERR_STAGE, "out of memory");
    }
    size_t pos = 0;
    for (int i = 0; i < f->n; i++) {
        memcpy(all + pos, f->seg[i].text, f->seg[i].len);
        pos += f->seg[i].len;
        ends[i] = pos;
    }
    all[total] = 0;
    *all_out = all;
    *total_out = total;
    *ends_out = ends;
    return 0;
}

/* Token boundary of each segment (tb[f->n] = nf): the prefix ending there tokenized alone
 * (docs/alpaca.md: the prompt is tokenized alone), only where the train flag changes. */
static int segment_bounds(const dataset_opts *o, const dataset_tokenizer *tok, const hooks_format_result *f,
                          const char *all, const size_t *ends, size_t nf, size_t *tb) {
    int rc = 0;
    tb[f->n] = nf;
    for (int i = 1; i < f->n && !rc; i++) {
        if (o->train_on_inputs || f->seg[i].train == f->seg[i - 1].train) {
            tb[i] = tb[i - 1];
            continue;
        }
        int32_t *pre;
        size_t np;
        rc = encode(tok, all, ends[i - 1], &pre, &np);
        free(pre);
        tb[i] = np < tb[i - 1] ? tb[i - 1] : np > nf ? nf : np;
    }
    return rc;
}

/* Whether the sequence gets an EOS of ours: not for chat templates, nor where the text already
 * ends its turn with EOS (directly, or followed by white space). */
static bool eos_wanted(const dataset_tokenizer *tok, const item *it, const char *all, size_t total,
                       const int32_t *full, size_t nf) {
    bool add_eos = tok->eos >= 0 && it->kind != ITEM_CHAT;
    if (it->kind == ITEM_SEGMENTS && nf > 0 && full[nf - 1] == tok->eos) add_eos = false; /* template ended a turn with it */
    /* ... or ended it with EOS followed by white space (ChatML's "<|im_end|>\n" where EOS is
     * <|im_end|>): the turn's own EOS is the trained stop, a second one would teach a double stop */
    if (it->kind == ITEM_SEGMENTS && add_eos && tok->eos_token && tok->eos_token[0]) {
        size_t tl = total, el = strlen(tok->eos_token);
        while (tl && (all[tl - 1] == ' ' || all[tl - 1] == '\t' || all[tl - 1] == '\r' || all[tl - 1] == '\n')) tl--;
        if (tl >= el && !memcmp(all + tl - el, tok->eos_token, el)) add_eos = false;
    }
    return add_eos;
}

/* Cut to sequence_len (or drop, truncation: drop), and drop a sequence with nothing to train. */
static void item_fit(const dataset_opts *o, item *it, const int32_t *labels, size_t *n) {
    if (it->kind != ITEM_TEXT && *n > (size_t)o->sequence_len) {
        if (o->drop_long) it->drop = DROP_LONG;
        *n = (size_t)o->sequence_len;
        it->truncated = true;
    }
    if (it->kind != ITEM_TEXT && !it->drop) {
        size_t trained = 0;
        for (size_t t = 0; t < *n; t++) trained += labels[t] != DATASET_IGNORE_INDEX;
        if (!trained) it->drop = DROP_NO_LABELS;
    }
}

static int tokenize_item(const dataset_opts *o, const dataset_tokenizer *tok, item *it) {
    if (it->kind == ITEM_CHAT && chat_format_record(o->chat, it->rec, &it->f)) return err_wrap("%s", it->what);
    const hooks_format_result *f = &it->f;
    char *all = NULL;
    size_t total = 0, *ends = NULL;
    int rc = join_segments(f, &all, &total, &ends);
    if (rc) return rc;

    int32_t *full;
    size_t nf;
    rc = encode(tok, all, total, &full, &nf);
    size_t *tb = calloc((size_t)f->n + 1, sizeof *tb);
    if (!rc && !tb) rc = err_set(ERR_STAGE, "out of memory");
    if (!rc) rc = segment_bounds(o, tok, f, all, ends, nf, tb);
    if (rc) {
        free(all);
        free(ends);
        free(tb);
        free(full);
        return err_wrap("%s", it->what);
    }
    bool add_bos = tok->bos >= 0 && it->kind != ITEM_CHAT;
    /* EOS is trained when the response is: the last segment with more than white space
     * decides (a chat template's trailing newline does not) */
    int last = f->n - 1;
    while (last > 0 && strspn(f->seg[last].text, " \t\r\n") == f->seg[last].len) last--;
    bool last_trained = o->train_on_inputs || f->seg[last].train;
    bool add_eos = eos_wanted(tok, it, all, total, full, nf);
    size_t n = nf + add_bos + add_eos;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids), *labels = malloc((n ? n : 1) * sizeof *labels);
    if (!ids || !labels) {
        free(ids);
        free(labels);
        free(all);
        free(ends);
        free(tb);
        free(full);
        return err_set(ERR_STAGE, "out of memory");
    }
    size_t k = 0;
    if (add_bos) {
        ids[k] = tok->bos;
        labels[k++] = DATASET_IGNORE_INDEX;
    }
    int seg = 0;
    for (size_t t = 0; t < nf; t++) {
        while (seg + 1 < f->n && t >= tb[seg + 1]) seg++;
        bool train = o->train_on_inputs || it->kind == ITEM_TEXT || f->seg[seg].train;
        ids[k] = full[t];
        labels[k++] = train ? full[t] : DATASET_IGNORE_INDEX;
    }
    if (add_eos) {
        /* EOS closes the response and is always trained: it is what teaches the model to stop */
        ids[k] = tok->eos;
        labels[k++] = last_trained || it->kind == ITEM_TEXT ? tok->eos : DATASET_IGNORE_INDEX;
    }
    if (n) labels[0] = DATASET_IGNORE_INDEX; /* nothing in the sequence predicts its first token */
    free(all);
    free(ends);
    free(tb);
    free(full);

    item_fit(o, it, labels, &n);
    it->ids = ids;
    it->labels = labels;
    it->n = n;
    return 0;
}

/* ---- the builder ---- */

typedef struct builder {
    const dataset_opts *o;
    const dataset_tokenizer *tok;
    const dataset_callbacks *cb; /* never NULL: a table of NULLs when the caller gave none */
    hooks *hooks;
    json_t *hook_ctx;
    item *batch;
    size_t n_batch;
    vec32 ids, labels;
    vec64 seq; /* sequence start offsets, plus the end */
    /* the record of each sequence (offset, length pairs into rec_file), so the val split keeps
     * its records for evaluate's score(prediction, record); on disk, not in memory */
    FILE *rec_file;
    char *rec_path;
    vec64 rec_at;
    /* stats */
    size_t read, dropped_hook, dropped_long, dropped_no_labels, skipped, truncated;
    bool full; /* max_records reached */
    json_t *mix; /* the counts of a mix (stats "mix") */
} builder;

/* ---- reporting to the caller ---- */

static void say(const builder *b, const char *fmt, ...) ERR_PRINTF(2, 3);
static void say(const builder *b, const char *fmt, ...) {
    if (!b->cb->log) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    b->cb->log(b->cb->ud, line);
}

static void metric(const builder *b, const char *name, double v) {
    if (b->cb->metric) b->cb->metric(b->cb->ud, name, v);
}

typedef struct worker_arg {
    builder *b;
    atomic_size_t *next;
} worker_arg;

static void *tokenize_worker(void *p) {
    worker_arg *w = p;
    builder *b = w->b;
    for (;;) {
        size_t i = atomic_fetch_add(w->next, 16);
        if (i >= b->n_batch) break;
        size_t end = i + 16 < b->n_batch ? i + 16 : b->n_batch;
        for (; i < end; i++) {
            item *it = &b->batch[i];
            it->rc = tokenize_item(b->o, b->tok, it);
            if (it->rc) it->err = strdup(err_msg());
        }
    }
    return NULL;
}

static int note_skip(builder *b, int rc) {
    if (!b->o->skip_errors || rc == ERR_STAGE || rc == ERR_INTERRUPTED) return rc;
    if (b->skipped < LOG_SKIPPED) say(b, "skipped: %s", err_msg());
    b->skipped++;
    err_clear();
    return 0;
}

static int append_seq(builder *b, const int32_t *ids, const int32_t *labels, size_t n, int64_t rec_off,
                      int64_t rec_len) {
    int rc = vec32_put(&b->ids, ids, n);
    if (!rc) rc = vec32_put(&b->labels, labels, n);
    if (!rc) rc = vec64_push(&b->seq, (int64_t)b->ids.n);
    if (!rc && b->rec_file) rc = vec64_push(&b->rec_at, rec_off);
    if (!rc && b->rec_file) rc = vec64_push(&b->rec_at, rec_len);
    return rc;
}

/* write an item's record once; its sequences point at it */
static int keep_record(builder *b, const item *it, int64_t *off, int64_t *len) {
    *off = *len = 0;
    if (!b->rec_file || !it->rec_json) return 0;
    long at = ftell(b->rec_file);
    size_t n = strlen(it->rec_json);
    if (at < 0 || fwrite(it->rec_json, 1, n, b->rec_file) != n)
        return err_errno(ERR_STAGE, "cannot write '%s'", b->rec_path);
    *off = at;
    *len = (int64_t)n;
    return 0;
}

static int flush(builder *b) {
    if (!b->n_batch) return 0;
    atomic_size_t next = 0;
    worker_arg w = {b, &next};
    int jobs = b->o->jobs < 1 ? 1 : b->o->jobs > 64 ? 64 : b->o->jobs;
    if (b->n_batch < 64) jobs = 1;
    pthread_t th[64];
    int started = 0;
    for (int t = 1; t < jobs; t++)
        if (!pthread_create(&th[started], NULL, tokenize_worker, &w)) started++;
    tokenize_worker(&w);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);

    int rc = 0;
    for (size_t i = 0; i < b->n_batch; i++) {
        item *it = &b->batch[i];
        if (!rc && it->rc) {
            err_set(it->rc, "%s", it->err);
            rc = note_skip(b, it->rc);
        } else if (!rc && it->drop == DROP_LONG) {
            b->dropped_long++;
        } else if (!rc && it->drop == DROP_NO_LABELS) {
            b->dropped_no_labels++;
        } else if (!rc && it->kind == ITEM_TEXT) {
            /* completion: cut into sequence_len pieces; each piece's first label is masked */
            size_t L = (size_t)b->o->sequence_len;
            int64_t ro, rl;
            rc = keep_record(b, it, &ro, &rl);
            for (size_t off = 0; off + 1 < it->n && !rc; off += L) {
                size_t m = it->n - off < L ? it->n - off : L;
                int32_t first = it->labels[off];
                it->labels[off] = DATASET_IGNORE_INDEX;
                rc = append_seq(b, it->ids + off, it->labels + off, m, ro, rl);
                it->labels[off] = first;
            }
        } else if (!rc) {
            b->truncated += it->truncated;
            int64_t ro, rl;
            rc = keep_record(b, it, &ro, &rl);
            if (!rc) rc = append_seq(b, it->ids, it->labels, it->n, ro, rl);
        }
        item_free(it);
    }
    b->n_batch = 0;
    if (b->cb->progress) b->cb->progress(b->cb->ud, "records", (double)b->read, "records");
    if (!rc && b->cb->interrupted && b->cb->interrupted(b->cb->ud)) rc = err_set(ERR_INTERRUPTED, "interrupted");
    return rc;
}

/* one record in: format it, queue it for the tokenizer */
static int add_record(builder *b, const json_t *rec, const char *what) {
    const dataset_opts *o = b->o;
    if (o->max_records > 0 && b->read >= (size_t)o->max_records) {
        b->full = true;
        return 0;
    }
    if (o->max_records > 0 && b->read + 1 >= (size_t)o->max_records) b->full = true;
    b->read++;
    item *it = &b->batch[b->n_batch];
    memset(it, 0, sizeof *it);
    int rc = 0;
    if (!json_is_object(rec)) {
        rc = err_set(ERR_DATA, "%s: a record must be an object", what);
    } else {
        switch (o->format) {
        case DATASET_FORMAT_ALPACA: rc = format_alpaca(rec, what, &it->f); break;
        case DATASET_FORMAT_CHAT:
            if (o->chat) {
                it->rec = json_incref((json_t *)rec);
                it->kind = ITEM_CHAT;
            } else {
                rc = format_chat(rec, what, o->chat_template, b->tok, &it->f);
            }
            break;
        case DATASET_FORMAT_COMPLETION: {
            const char *text;
            rc = field_str(rec, "text", true, what, &text);
            if (!rc) rc = seg_add(&it->f, text, NULL, NULL, true);
            it->f.kind = HOOKS_FORMAT_SEGMENTS;
            it->kind = ITEM_TEXT;
            break;
        }
        case DATASET_FORMAT_LUA: rc = hooks_format(b->hooks, rec, b->hook_ctx, what, &it->f); break;
        }
    }
    if (rc) {
        hooks_format_result_free(&it->f);
        return note_skip(b, rc);
    }
    if (it->kind != ITEM_CHAT && it->f.kind == HOOKS_FORMAT_DROP) {
        b->dropped_hook++;
        return 0;
    }
    if (it->kind != ITEM_TEXT && it->kind != ITEM_CHAT) it->kind = it->f.kind == HOOKS_FORMAT_PAIR ? ITEM_PAIR : ITEM_SEGMENTS;
    it->what = strdup(what);
    if (b->rec_file) it->rec_json = json_dumps(rec, JSON_COMPACT | JSON_ENCODE_ANY);
    if (++b->n_batch == BATCH) return flush(b);
    return 0;
}

typedef struct gen_emit {
    builder *b;
    size_t index;
} gen_emit;

static int on_generated(void *ud, json_t *rec) {
    gen_emit *g = ud;
    char what[64];
    snprintf(what, sizeof what, "generate(): record %zu", g->index++);
    int rc = add_record(g->b, rec, what);
    json_decref(rec);
    return !rc && g->b->full ? HOOKS_STOP : rc;
}

/* ---- qlora.* callbacks for hooks run by this stage ---- */

static int cb_tokenize(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    const builder *b = ud;
    return encode(b->tok, text, len, ids, n);
}

static void cb_metric(void *ud, const char *name, double v) {
    builder *b = ud;
    metric(b, name, v);
}

static void cb_log(void *ud, const char *level, const char *msg) {
    builder *b = ud;
    if (strcmp(level, "debug")) say(b, "hook %s: %s", level, msg);
}

/* ---- split, pack, write ---- */

static size_t seq_len(const builder *b, size_t s) { return (size_t)(b->seq.p[s + 1] - b->seq.p[s]); }

typedef struct split_rows {
    size_t n_rows;
    size_t *row_start; /* n_rows + 1 offsets into order */
    size_t *order;     /* sequence ids, row by row */
} split_rows;

static void shuffle_sizes(size_t *a, size_t n, rng_state *r) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rng_next_below(r, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

typedef struct pack_key {
    size_t len, pos, seq;
} pack_key;

static int cmp_len_desc(const void *x, const void *y) {
    const pack_key *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->pos < b->pos ? -1 : a->pos > b->pos; /* ties keep the split's (shuffled) order */
}

/* first-fit-decreasing into rows of capacity L */
static int pack_ffd(const builder *b, const size_t *seqs, size_t n, size_t L, rng_state *rng, bool shuffle,
                    split_rows *out) {
    size_t leaves = 1;
    while (leaves < n) leaves *= 2;
    pack_key *keys = malloc((n ? n : 1) * sizeof *keys);
    size_t *row_of = malloc((n ? n : 1) * sizeof *row_of);
    size_t *tree = malloc(2 * leaves * sizeof *tree); /* max room left in each subtree */
    size_t *count = calloc(n + 1, sizeof *count);     /* sequences per row (at most n rows) */
    size_t *perm = malloc((n ? n : 1) * sizeof *perm);
    size_t *at = malloc((n ? n : 1) * sizeof *at);
    out->row_start = malloc((n + 1) * sizeof *out->row_start);
    out->order = malloc((n ? n : 1) * sizeof *out->order);
    int rc = 0;
    if (!keys || !row_of || !tree || !count || !perm || !at || !out->row_start || !out->order) {
        rc = err_set(ERR_STAGE, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) keys[i] = (pack_key){seq_len(b, seqs[i]), i, seqs[i]};
    qsort(keys, n, sizeof *keys, cmp_len_desc);
    for (size_t i = 0; i < 2 * leaves; i++) tree[i] = L; /* rows not opened yet are empty, to the right */
    size_t n_rows = 0;
    for (size_t i = 0; i < n; i++) {
        size_t node = 1;
        while (node < leaves) node = tree[2 * node] >= keys[i].len ? 2 * node : 2 * node + 1;
        size_t row = node - leaves;
        tree[node] -= keys[i].len;
        for (node /= 2; node; node /= 2)
            tree[node] = tree[2 * node] > tree[2 * node + 1] ? tree[2 * node] : tree[2 * node + 1];
        row_of[i] = row;
        count[row]++;
        if (row + 1 > n_rows) n_rows = row + 1;
    }
    /* FFD opens rows longest-first: shuffle the row order so batches mix lengths */
    for (size_t r = 0; r < n_rows; r++) perm[r] = r;
    if (shuffle) shuffle_sizes(perm, n_rows, rng);
    size_t off = 0;
    for (size_t k = 0; k < n_rows; k++) {
        out->row_start[k] = off;
        at[perm[k]] = off;
        off += count[perm[k]];
    }
    out->row_start[n_rows] = off;
    for (size_t i = 0; i < n; i++) out->order[at[row_of[i]]++] = keys[i].seq; /* keeps insertion order in a row */
    out->n_rows = n_rows;
done:
    free(keys);
    free(row_of);
    free(tree);
    free(count);
    free(perm);
    free(at);
    return rc;
}

/* <dir>/val.records.jsonl: line q is the record of val sequence q, in the order written */
static int write_records(const builder *b, const char *dir, const split_rows *sr) {
    if (fflush(b->rec_file)) return err_errno(ERR_STAGE, "cannot write '%s'", b->rec_path);
    char *p = fs_join(dir, "val.records.jsonl"), *buf = NULL;
    fs_file ff = {0};
    int rc = fs_file_open(&ff, p);
    size_t cap = 0;
    int fd = fileno(b->rec_file);
    for (size_t r = 0; r < sr->n_rows && !rc; r++)
        for (size_t k = sr->row_start[r]; k < sr->row_start[r + 1] && !rc; k++) {
            size_t s = sr->order[k];
            int64_t off = b->rec_at.p[2 * s], len = b->rec_at.p[2 * s + 1];
            if ((size_t)len + 1 > cap) {
                char *nb = realloc(buf, (size_t)len + 1);
                if (!nb) { rc = err_set(ERR_STAGE, "out of memory"); break; }
                buf = nb;
                cap = (size_t)len + 1;
            }
            if (pread(fd, buf, (size_t)len, off) != (ssize_t)len) {
                rc = err_errno(ERR_STAGE, "cannot read '%s'", b->rec_path);
                break;
            }
            buf[len] = '\n';
            rc = fs_file_write(&ff, buf, (size_t)len + 1);
        }
    if (ff.path) {
        if (rc) fs_file_abort(&ff);
        else rc = fs_file_commit(&ff);
    }
    free(buf);
    free(p);
    return rc;
}

static int write_split(const builder *b, const char *dir, const char *name, const split_rows *sr, json_t *splits,
                       size_t *tokens_out) {
    const char *ext[4] = {"ids.i32", "labels.i32", "rows.i64", "seqs.i64"};
    fs_file ff[4];
    memset(ff, 0, sizeof ff);
    int rc = 0;
    for (int i = 0; i < 4 && !rc; i++) {
        char fname[64];
        snprintf(fname, sizeof fname, "%s.%s", name, ext[i]);
        char *p = fs_join(dir, fname);
        rc = fs_file_open(&ff[i], p);
        free(p);
    }
    int64_t off = 0;
    size_t n_seqs = 0;
    for (size_t r = 0; r < sr->n_rows && !rc; r++) {
        rc = fs_file_write(&ff[2], &off, sizeof off);
        for (size_t k = sr->row_start[r]; k < sr->row_start[r + 1] && !rc; k++) {
            size_t s = sr->order[k];
            size_t n = seq_len(b, s);
            rc = fs_file_write(&ff[3], &off, sizeof off);
            if (!rc) rc = fs_file_write(&ff[0], b->ids.p + b->seq.p[s], n * sizeof(int32_t));
            if (!rc) rc = fs_file_write(&ff[1], b->labels.p + b->seq.p[s], n * sizeof(int32_t));
            off += (int64_t)n;
            n_seqs++;
        }
    }
    if (!rc) rc = fs_file_write(&ff[2], &off, sizeof off);
    if (!rc) rc = fs_file_write(&ff[3], &off, sizeof off);
    if (!rc && b->rec_file && !strcmp(name, "val")) rc = write_records(b, dir, sr);
    for (int i = 0; i < 4; i++) {
        if (!ff[i].path) continue;
        if (rc) fs_file_abort(&ff[i]);
        else rc = fs_file_commit(&ff[i]);
    }
    if (rc) return rc;
    json_object_set_new(splits, name,
                        json_pack("{s:I, s:I, s:I}", "rows", (json_int_t)sr->n_rows, "tokens", (json_int_t)off, "seqs",
                                  (json_int_t)n_seqs));
    *tokens_out = (size_t)off;
    return 0;
}

static json_t *stats_json(const builder *b, size_t n_seq, size_t train_rows, size_t train_tokens) {
    size_t L = (size_t)b->o->sequence_len, trained = 0;
    for (size_t i = 0; i < b->labels.n; i++) trained += b->labels.p[i] != DATASET_IGNORE_INDEX;
    json_t *hist = json_array();
    size_t counts[HIST_BINS] = {0};
    size_t width = (L + HIST_BINS - 1) / HIST_BINS;
    for (size_t s = 0; s < n_seq; s++) {
        size_t bin = (seq_len(b, s) - 1) / width;
        counts[bin < HIST_BINS ? bin : HIST_BINS - 1]++;
    }
    for (int i = 0; i < HIST_BINS; i++) json_array_append_new(hist, json_integer((json_int_t)counts[i]));
    size_t dropped = b->dropped_hook + b->dropped_long + b->dropped_no_labels + b->skipped;
    double masked = b->labels.n ? 1.0 - (double)trained / (double)b->labels.n : 0;
    double eff = train_rows ? (double)train_tokens / ((double)train_rows * (double)L) : 0;
    return json_pack("{s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, s:I, s:I, s:I, s:f, s:{s:I, s:o}, s:f}", "records_read",
                     (json_int_t)b->read, "records_dropped", (json_int_t)dropped, "dropped", "by_hook",
                     (json_int_t)b->dropped_hook, "too_long", (json_int_t)b->dropped_long, "no_trained_tokens",
                     (json_int_t)b->dropped_no_labels, "errors", (json_int_t)b->skipped, "records_truncated",
                     (json_int_t)b->truncated, "sequences", (json_int_t)n_seq, "tokens", (json_int_t)b->ids.n,
                     "trained_tokens", (json_int_t)trained, "masked_share", masked, "length_histogram", "bin_width",
                     (json_int_t)width, "counts", hist, "packing_efficiency", eff);
}

/* How records became text, for whoever formats prompts as the training data was (evaluate):
 * the format, its template or hook file, and the hook's ctx.args. */
static json_t *formatting_json(const builder *b) {
    static const char *const formats[] = {"alpaca", "chat", "completion", "lua"};
    static const char *const templates[] = {"llama-2", "llama-3", "chatml"};
    const dataset_opts *o = b->o;
    const char *hook = o->format == DATASET_FORMAT_LUA ? hooks_file(b->hooks, "format") : NULL;
    const char *tpl = o->format != DATASET_FORMAT_CHAT ? NULL
                      : o->chat ? (o->chat_file ? "file" : "tokenizer_default")
                                : templates[o->chat_template];
    json_t *f = json_pack("{s:s, s:s?, s:s?, s:b, s:O}", "format", formats[o->format], "chat_template", tpl,
                          "format_hook", hook, "train_on_inputs", o->train_on_inputs, "hook_args",
                          o->hook_args ? o->hook_args : json_null());
    if (o->chat) { /* what the Jinja path needs to render prompts as the data was rendered */
        const chat_format_opts *c = o->chat;
        if (o->chat_file) json_object_set_new(f, "chat_template_file", json_string(o->chat_file));
        if (c->field_messages) json_object_set_new(f, "field_messages", json_string(c->field_messages));
        if (c->role_key || c->content_key)
            json_object_set_new(f, "message_property_mappings", json_pack("{s:s?, s:s?}", "role", c->role_key,
                                                                          "content", c->content_key));
        if (c->kwargs) json_object_set(f, "chat_template_kwargs", (json_t *)c->kwargs);
    }
    return f;
}

static int finish(builder *b, const char *out_dir, json_t **stats_out) {
    const dataset_opts *o = b->o;
    size_t n_seq = b->seq.n - 1;
    if (n_seq == 0)
        return err_set(ERR_DATA,
                       "the dataset is empty: %zu records read, none left (dropped by the hook %zu, too long %zu, "
                       "without trained tokens %zu, errors %zu; sequence_len %lld)%s",
                       b->read, b->dropped_hook, b->dropped_long, b->dropped_no_labels, b->skipped,
                       (long long)o->sequence_len,
                       b->dropped_long + b->dropped_no_labels
                           ? ": raise sequence_len (or use truncation: truncate) so that prompts and answers fit"
                           : "");
    size_t n_val = o->val_set_size >= 1 ? (size_t)o->val_set_size
                                         : (size_t)((double)n_seq * o->val_set_size + 0.5);
    if (n_val >= n_seq)
        return err_set(ERR_DATA, "val_set_size %g leaves no training data (%zu sequences)", o->val_set_size, n_seq);

    size_t *perm = malloc(n_seq * sizeof *perm);
    if (!perm) return err_set(ERR_STAGE, "out of memory");
    for (size_t i = 0; i < n_seq; i++) perm[i] = i;
    rng_state rng;
    rng_seed(&rng, o->seed ^ rng_stream_of("dataset.shuffle"));
    if (o->shuffle) shuffle_sizes(perm, n_seq, &rng);

    json_t *splits = json_object();
    const char *names[2] = {"train", "val"};
    size_t starts[2] = {0, n_seq - n_val}, counts[2] = {n_seq - n_val, n_val};
    size_t train_rows = 0, train_tokens = 0;
    int rc = 0;
    for (int s = 0; s < 2 && !rc; s++) {
        split_rows sr = {0};
        const size_t *seqs = perm + starts[s];
        if (o->sample_packing) {
            rc = pack_ffd(b, seqs, counts[s], (size_t)o->sequence_len, &rng, o->shuffle, &sr);
        } else {
            sr.n_rows = counts[s];
            sr.row_start = malloc((counts[s] + 1) * sizeof *sr.row_start);
            sr.order = malloc((counts[s] ? counts[s] : 1) * sizeof *sr.order);
            if (!sr.row_start || !sr.order) rc = err_set(ERR_STAGE, "out of memory");
            for (size_t i = 0; !rc && i <= counts[s]; i++) sr.row_start[i] = i;
            if (!rc && counts[s]) memcpy(sr.order, seqs, counts[s] * sizeof *seqs);
        }
        size_t tokens = 0;
        if (!rc) rc = write_split(b, out_dir, names[s], &sr, splits, &tokens);
        if (s == 0) train_rows = sr.n_rows, train_tokens = tokens;
        free(sr.row_start);
        free(sr.order);
    }
    free(perm);
    if (rc) {
        json_decref(splits);
        return rc;
    }
    json_t *stats = stats_json(b, n_seq, train_rows, train_tokens);
    json_t *formatting = formatting_json(b);
    json_t *meta = json_pack("{s:i, s:I, s:o, s:O, s:{s:i, s:i, s:i}, s:i}", "version", DATASET_VERSION, "sequence_len",
                             (json_int_t)o->sequence_len, "splits", splits, "stats", stats, "tokenizer", "bos",
                             b->tok->bos, "eos", b->tok->eos, "vocab_size", b->tok->vocab_size, "label_ignore",
                             DATASET_IGNORE_INDEX);
    json_object_set_new(meta, "formatting", formatting);
    char *text = json_dumps(meta, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(meta);
    char *p = fs_join(out_dir, "meta.json");
    rc = text ? fs_write_atomic(p, text, strlen(text)) : err_set(ERR_STAGE, "out of memory");
    free(p);
    free(text);
    if (rc) {
        json_decref(stats);
        return rc;
    }
    metric(b, "records_read", (double)b->read);
    metric(b, "records_dropped", json_number_value(json_object_get(stats, "records_dropped")));
    metric(b, "records_truncated", (double)b->truncated);
    metric(b, "sequences", (double)n_seq);
    metric(b, "tokens", (double)b->ids.n);
    metric(b, "masked_share", json_number_value(json_object_get(stats, "masked_share")));
    metric(b, "packing_efficiency", json_number_value(json_object_get(stats, "packing_efficiency")));
    metric(b, "train_rows", (double)train_rows);
    if (b->skipped) say(b, "skipped %zu records with errors (on_error: skip)", b->skipped);
    if (stats_out) *stats_out = stats;
    else json_decref(stats);
    return 0;
}

/* The fields a built-in format reads (under the part's names), so that a columnar file decodes
 * only those; format lua sees every field. Alpaca's instruction and output, and completion's
 * text, are required of the file itself. */
static int read_columns(dataset_reader *r, dataset_format format, const dataset_part *p) {
    const char *ins = p && p->field_instruction ? p->field_instruction : "instruction";
    const char *in = p && p->field_input ? p->field_input : "input";
    const char *out = p && p->field_output ? p->field_output : "output";
    const char *text = p && p->field_text ? p->field_text : "text";
    const char *alpaca[] = {ins, in, out}, *const chat[] = {"messages", "conversations"}, *completion[] = {text};
    static const int alpaca_req[] = {1, 0, 1}, completion_req[] = {1};
    switch (format) {
    case DATASET_FORMAT_ALPACA: return dataset_reader_columns(r, alpaca, alpaca_req, 3);
    case DATASET_FORMAT_CHAT: return dataset_reader_columns(r, chat, NULL, 2);
    case DATASET_FORMAT_COMPLETION: return dataset_reader_columns(r, completion, completion_req, 1);
    default: return 0;
    }
}

/* a record with the part's field names renamed to the format's (a new reference) */
static json_t *remap(json_t *rec, const dataset_part *p) {
    const char *from[4] = {p->field_instruction, p->field_input, p->field_output, p->field_text};
    static const char *const to[4] = {"instruction", "input", "output", "text"};
    json_t *o = NULL;
    for (int k = 0; k < 4; k++) {
        if (!from[k] || !strcmp(from[k], to[k]) || !json_is_object(rec)) continue;
        if (!o) o = json_copy(rec);
        json_t *v = json_object_get(rec, from[k]);
        if (v) json_object_set(o, to[k], v);
        else json_object_del(o, to[k]);
    }
    return o ? o : json_incref(rec);
}

/* records of one part's files: counted (add == false) or added; pick (may be NULL) chooses by
 * index; the part's max_records ends it */
static int read_part(builder *b, const dataset_part *p, const bool *pick, bool add, size_t *count) {
    const dataset_opts *o = b->o;
    size_t idx = 0;
    int rc = 0;
    *count = 0;
    for (size_t f = 0; !rc && f < p->n_paths; f++) {
        dataset_reader *r;
        if ((rc = dataset_reader_open(&r, p->paths[f], p->type))) break;
        rc = read_columns(r, p->format, p);
        json_t *rec;
        while (!rc && !b->full && !(p->max_records > 0 && idx >= (size_t)p->max_records)) {
            rc = dataset_reader_next(r, &rec);
            if (rc == ERR_DATA && o->skip_errors && dataset_reader_can_go_on(r)) {
                rc = 0;
                if (add) { /* a bad line is a record too, as without a mix */
                    b->read++;
                    rc = note_skip(b, ERR_DATA);
                }
                idx++;
                continue;
            }
            if (rc || !rec) break;
            bool take = !pick || pick[idx];
            idx++;
            if (add && take) {
                char what[600];
                snprintf(what, sizeof what, "%s: record %zu", p->paths[f], dataset_reader_index(r));
                json_t *m = remap(rec, p);
                rc = add_record(b, m, what);
                json_decref(m);
                ++*count;
            } else if (!add) {
                ++*count;
            }
            json_decref(rec);
        }
        dataset_reader_close(&r);
    }
    return rc;
}

/* the parts of a mix, each with its own format, in the shares of their weights */
static int build_mix(builder *b, const dataset_source *src) {
    const dataset_opts *o = b->o;
    size_t n = src->n_parts;
    size_t *avail = calloc(n, sizeof *avail), *take = calloc(n, sizeof *take);
    int rc = avail && take ? 0 : err_set(ERR_STAGE, "out of memory");
    double wsum = 0;
    bool uniform = true;
    for (size_t i = 0; i < n; i++) {
        wsum += src->parts[i].weight;
        uniform &= src->parts[i].weight == src->parts[0].weight;
    }
    if (!rc && !(wsum > 0)) rc = err_set(ERR_RECIPE, "datasets: every weight is 0: nothing to train on");
    if (!rc && !uniform) { /* count first: the shares need every part's size */
        double t = -1;
        for (size_t i = 0; !rc && i < n; i++) {
            rc = read_part(b, &src->parts[i], NULL, false, &avail[i]);
            double share = src->parts[i].weight / wsum;
            if (!rc && share > 0 && (t < 0 || (double)avail[i] / share < t)) t = (double)avail[i] / share;
        }
        for (size_t i = 0; !rc && i < n; i++) {
            double want = src->parts[i].weight / wsum * t + 0.5;
            take[i] = want < (double)avail[i] ? (size_t)want : avail[i];
        }
    }
    json_t *mix = json_array();
    for (size_t i = 0; !rc && i < n && !b->full; i++) {
        const dataset_part *p = &src->parts[i];
        bool *pick = NULL;
        if (!uniform) {
            pick = calloc(avail[i] + 1, sizeof *pick);
            size_t *idx = malloc((avail[i] + 1) * sizeof *idx);
            if (!pick || !idx) {
                free(pick);
                free(idx);
                rc = err_set(ERR_STAGE, "out of memory");
                break;
            }
            /* take[i] of avail[i] without replacement: a partial Fisher-Yates shuffle */
            rng_state r;
            rng_seed(&r, o->seed ^ (0x9E3779B97F4A7C15ull * (i + 1)));
            for (size_t k = 0; k < avail[i]; k++) idx[k] = k;
            for (size_t k = 0; k < take[i]; k++) {
                size_t j = k + (size_t)rng_next_below(&r, (uint64_t)(avail[i] - k));
                size_t tmp = idx[k];
                idx[k] = idx[j];
                idx[j] = tmp;
                pick[idx[k]] = true;
            }
            free(idx);
        }
        dataset_opts po = *o;
        po.format = p->format;
        po.chat_template = p->chat_template;
        if (p->chat_builtin) po.chat = NULL;
        po.max_records = 0; /* the parts have their own */
        b->o = &po;
        size_t used = 0;
        rc = read_part(b, p, pick, true, &used);
        if (!rc) rc = flush(b); /* formatted with po: tokenize before po goes */
        b->o = o;
        free(pick);
        if (uniform) avail[i] = used;
        double share = p->weight / wsum;
        say(b, "mix: %s: %zu of %zu records (weight %g, %.1f%% of the weights)", p->name, used, avail[i], p->weight,
            100 * share);
        json_array_append_new(mix, json_pack("{s:s, s:I, s:I, s:f, s:f}", "name", p->name, "available",
                                             (json_int_t)avail[i], "used", (json_int_t)used, "weight", p->weight,
                                             "share", share));
        if (!rc && used == 0 && p->weight > 0)
            rc = err_set(ERR_DATA, "datasets: '%s' gives no records%s", p->name,
                         avail[i] ? "" : " (its files hold none)");
    }
    if (!rc) b->mix = mix;
    else json_decref(mix);
    free(avail);
    free(take);
    return rc;
}

static int tok_encode(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tokenizer_encode(ud, text, len, false, ids, n);
}

void dataset_tokenizer_of(tokenizer *t, dataset_tokenizer *out) {
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

int dataset_build(const dataset_opts *o, const dataset_source *src, const dataset_tokenizer *tok, const char *out_dir,
                  const dataset_callbacks *cb, json_t **stats) {
    static const dataset_callbacks none;
    if (stats) *stats = NULL;
    if (o->sequence_len < 2) return err_set(ERR_RECIPE, "sequence_len must be at least 2");
    if (o->format == DATASET_FORMAT_LUA && !hooks_has(src->hooks, "format"))
        return err_set(ERR_RECIPE, "format: lua needs a format hook (format_hook, or hooks.format in the recipe)");
    builder b = {.o = o, .tok = tok, .cb = cb ? cb : &none, .hooks = src->hooks};
    b.batch = calloc(BATCH, sizeof *b.batch);
    int rc = b.batch ? vec64_push(&b.seq, 0) : err_set(ERR_STAGE, "out of memory");
    if (!rc && o->val_set_size > 0) { /* scratch beside the artifact's files, removed below */
        b.rec_path = fs_join(out_dir, ".records.tmp");
        b.rec_file = b.rec_path ? fopen(b.rec_path, "w+") : NULL;
        if (!b.rec_file) rc = err_errno(ERR_STAGE, "cannot create '%s'", b.rec_path ? b.rec_path : out_dir);
    }
    if (!rc && src->hooks) {
        lua_host_callbacks lcb = {.ud = &b, .tokenize = cb_tokenize, .metric = cb_metric, .log = cb_log};
        hooks_set_callbacks(src->hooks, &lcb);
        b.hook_ctx = json_pack("{s:s, s:s, s:I, s:b, s:I, s:O}", "bos_token", tok->bos_token ? tok->bos_token : "",
                               "eos_token", tok->eos_token ? tok->eos_token : "", "sequence_len",
                               (json_int_t)o->sequence_len, "train_on_inputs", o->train_on_inputs, "seed",
                               (json_int_t)o->seed, "args", o->hook_args ? o->hook_args : json_null());
        if (o->max_records > 0) json_object_set_new(b.hook_ctx, "max_records", json_integer(o->max_records));
    }
    if (!rc && src->n_paths == 0 && src->n_parts == 0) {
        if (!hooks_has(src->hooks, "generate"))
            rc = err_set(ERR_RECIPE, "no data: set path (files), or a generator hook");
        else {
            gen_emit g = {&b, 0};
            rc = hooks_generate(src->hooks, b.hook_ctx, on_generated, &g);
        }
    }
    if (!rc && src->n_parts) rc = build_mix(&b, src);
    for (size_t f = 0; !rc && !src->n_parts && f < src->n_paths && !b.full; f++) {
        dataset_reader *r;
        if ((rc = dataset_reader_open(&r, src->paths[f], src->type))) break;
        if ((rc = read_columns(r, o->format, NULL))) {
            dataset_reader_close(&r);
            break;
        }
        json_t *rec;
        while (!b.full) {
            rc = dataset_reader_next(r, &rec);
            if (rc == ERR_DATA && o->skip_errors && dataset_reader_can_go_on(r)) {
                b.read++; /* a bad JSONL line or CSV row: counted, skipped */
                if ((rc = note_skip(&b, rc))) break;
                if (o->max_records > 0 && b.read >= (size_t)o->max_records) b.full = true;
                continue;
            }
            if (rc || !rec) break;
            char what[600];
            /* "file:LINE: record N": records count from 0, lines (as in parse errors) from 1 */
            if (dataset_reader_line(r))
                snprintf(what, sizeof what, "%s:%zu: record %zu", src->paths[f], dataset_reader_line(r),
                         dataset_reader_index(r));
            else
                snprintf(what, sizeof what, "%s: record %zu", src->paths[f], dataset_reader_index(r));
            rc = add_record(&b, rec, what);
            json_decref(rec);
            if (rc) break;
        }
        dataset_reader_close(&r);
    }
    if (!rc) rc = flush(&b);
    if (b.cb->progress_done) b.cb->progress_done(b.cb->ud);
    if (!rc) rc = finish(&b, out_dir, stats);
    if (!rc && b.mix && stats && *stats) json_object_set(*stats, "mix", b.mix);
    json_decref(b.mix);
    for (size_t i = 0; i < b.n_batch; i++) item_free(&b.batch[i]);
    if (src->hooks) hooks_set_callbacks(src->hooks, NULL);
    json_decref(b.hook_ctx);
    if (b.rec_file) fclose(b.rec_file);
    if (b.rec_path) unlink(b.rec_path);
    free(b.rec_path);
    free(b.rec_at.p);
    free(b.batch);
    free(b.ids.p);
    free(b.labels.p);
    free(b.seq.p);
    return rc;
}
