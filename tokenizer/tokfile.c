/* tokfile.c: read tokenizer.json / tokenizer_config.json as data (see tokfile.h). */
#include "tokenizer/tokfile.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/json_in.h"

const char *const tokfile_names[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                                     "chat_template.jinja", "added_tokens.json", NULL};

/* the pre-tokenizer regexes llama.cpp knows by name (docs/tokenizer-json.md) */
static const char LLAMA3_REGEX[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_REGEX[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

void tokfile_free(tokfile *t) {
    for (int32_t i = 0; t->tokens && i < t->n_vocab; i++) free(t->tokens[i]);
    for (size_t i = 0; i < t->n_merges; i++) free(t->merges[i]);
    free(t->tokens);
    free(t->added);
    free(t->special);
    free(t->merges);
    free(t->chat_template);
    free(t->pre);
    memset(t, 0, sizeof *t);
}

int32_t tokfile_id(const tokfile *t, const char *token) {
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (t->tokens[i] && !strcmp(t->tokens[i], token)) return i;
    return -1;
}

/* find a Split regex or a ByteLevel use_regex flag anywhere in the pre_tokenizer tree */
static void scan_pre(const json_t *p, const char **regex, bool *bytelevel_regex) {
    if (!json_is_object(p)) return;
    const char *type = json_string_value(json_object_get(p, "type"));
    if (type && !strcmp(type, "Split")) {
        const char *r = json_string_value(json_object_get(json_object_get(p, "pattern"), "Regex"));
        if (r) *regex = r;
    }
    if (type && !strcmp(type, "ByteLevel") && !json_is_false(json_object_get(p, "use_regex"))) *bytelevel_regex = true;
    json_t *seq = json_object_get(p, "pretokenizers");
    size_t i;
    json_t *e;
    json_array_foreach(seq, i, e) scan_pre(e, regex, bytelevel_regex);
}

/* the string starting at p (just after its opening quote): the position of its closing quote,
 * escapes stepped over; end when unterminated */
static const char *string_end(const char *p, const char *end) {
    while (p < end && *p != '"') p += *p == '\\' ? 2 : 1;
    return p < end ? p : end;
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

int tokfile_model_type(const char *path, char *out, size_t cap) {
    char *buf = NULL;
    size_t n = 0;
    if (cap) *out = 0;
    int rc = fs_read_all(path, &buf, &n);
    if (rc) return rc;
    const char *end = buf + n;
    int depth = 0, model_depth = -1; /* model_depth: the depth inside "model": {...} while there */
    bool model_next = false;         /* the value after the top-level key "model" comes next */
    for (const char *p = buf; p < end; p++) {
        if (*p == '"') {
            const char *s = p + 1, *q = string_end(s, end);
            if (q >= end) break;
            const char *after = skip_ws(q + 1, end);
            p = q;
            if (after >= end || *after != ':') { /* a value */
                model_next = false;
                continue;
            }
            size_t len = (size_t)(q - s);
            if (depth == 1 && len == 5 && !memcmp(s, "model", 5)) model_next = true;
            else if (depth == model_depth && len == 4 && !memcmp(s, "type", 4)) {
                const char *v = skip_ws(after + 1, end);
                if (v < end && *v == '"') {
                    const char *ve = string_end(v + 1, end);
                    size_t vl = (size_t)(ve - v - 1);
                    if (cap) snprintf(out, cap, "%.*s", (int)(vl < cap ? vl : cap - 1), v + 1);
                }
                break;
            }
            p = after; /* the ':' */
        } else if (*p == '{' || *p == '[') {
            depth++;
            if (*p == '{' && model_next && depth == 2) model_depth = 2;
            model_next = false;
        } else if (*p == '}' || *p == ']') {
            if (depth == model_depth) break; /* the model object ended without a type */
            depth--;
        } else if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != ',') {
            model_next = false; /* a literal value (null, a number) */
        }
    }
    free(buf);
    return 0;
}

/* "<s>" or {"content": "<s>", ...} */
static const char *token_text(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    return json_string_value(json_object_get(v, "content"));
}

static int parse(tokfile *t, json_t *tj, json_t *cfg, const char *path) {
    json_t *model = json_object_get(tj, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype || strcmp(mtype, "BPE"))
        return err_set(ERR_DATA, "%s: model type '%s' is not supported (only BPE tokenizers)", path, mtype ? mtype : "(none)");
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab)) return err_set(ERR_DATA, "%s: model.vocab is not an object", path);
    json_t *added = json_object_get(tj, "added_tokens");
    int64_t maxid = -1;
    const char *k;
    json_t *v;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 16777216)
            return err_set(ERR_DATA, "%s: vocab entry '%s' has no valid id", path, k);
        if (json_integer_value(v) > maxid) maxid = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > 16777216 || !json_is_string(json_object_get(v, "content")))
            return err_set(ERR_DATA, "%s: added_tokens[%zu] needs an id and a content", path, i);
        if (json_integer_value(id) > maxid) maxid = json_integer_value(id);
    }
    if (maxid < 0) return err_set(ERR_DATA, "%s: empty vocabulary", path);
    t->n_vocab = (int32_t)(maxid + 1);
    t->tokens = calloc((size_t)t->n_vocab, sizeof *t->tokens);
    t->added = calloc((size_t)t->n_vocab, 1);
    t->special = calloc((size_t)t->n_vocab, 1);
    if (!t->tokens || !t->added || !t->special) return err_set(ERR_STAGE, "out of memory");
    json_object_foreach(vocab, k, v) {
        int64_t id = json_integer_value(v);
        if (t->tokens[id]) return err_set(ERR_DATA, "%s: id %lld is used by two vocab entries", path, (long long)id);
        t->tokens[id] = strdup(k);
    }
    json_array_foreach(added, i, v) {
        int64_t id = json_integer_value(json_object_get(v, "id"));
        const char *content = json_string_value(json_object_get(v, "content"));
        if (t->tokens[id] && strcmp(t->tokens[id], content))
            return err_set(ERR_DATA, "%s: added token '%s' reuses id %lld of '%s'", path, content, (long long)id, t->tokens[id]);
        if (!t->tokens[id]) t->tokens[id] = strdup(content);
        t->added[id] = 1;
        t->special[id] = json_is_true(json_object_get(v, "special"));
    }
    /* merges: "a b" strings (older writers) or ["a", "b"] pairs (newer) */
    json_t *merges = json_object_get(model, "merges");
    if (merges && !json_is_array(merges)) return err_set(ERR_DATA, "%s: model.merges is not a list", path);
    t->merges = calloc(json_array_size(merges) + 1, sizeof *t->merges);
    if (!t->merges) return err_set(ERR_STAGE, "out of memory");
    json_array_foreach(merges, i, v) {
        char *m = NULL;
        if (json_is_string(v) && strchr(json_string_value(v), ' ')) {
            m = strdup(json_string_value(v));
        } else if (json_is_array(v) && json_array_size(v) == 2 && json_is_string(json_array_get(v, 0)) && json_is_string(json_array_get(v, 1))) {
            const char *a = json_string_value(json_array_get(v, 0)), *b = json_string_value(json_array_get(v, 1));
            m = malloc(strlen(a) + strlen(b) + 2);
            if (m) sprintf(m, "%s %s", a, b);
        } else {
            return err_set(ERR_DATA, "%s: merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", path, i);
        }
        if (!m) return err_set(ERR_STAGE, "out of memory");
        t->merges[t->n_merges++] = m;
    }
    /* style: byte fallback or the ▁ metaspace marks SentencePiece-style BPE */
    bool spm = json_is_true(json_object_get(model, "byte_fallback"));
    json_t *pre = json_object_get(tj, "pre_tokenizer");
    const char *ptype = json_string_value(json_object_get(pre, "type"));
    if (ptype && !strcmp(ptype, "Metaspace")) spm = true;
    t->style = spm ? TOKFILE_SENTENCEPIECE : TOKFILE_BYTE_LEVEL;
    const char *regex = NULL;
    bool bl_regex = false;
    scan_pre(pre, &regex, &bl_regex);
    const char *pname = "default";
    if (regex && !strcmp(regex, LLAMA3_REGEX)) pname = "llama-bpe";
    else if (regex && !strcmp(regex, QWEN2_REGEX)) pname = "qwen2";
    else if (!regex && bl_regex) pname = "gpt-2";
    t->pre = strdup(pname);
    /* specials and BOS/EOS behaviour from tokenizer_config.json */
    t->bos = t->eos = t->pad = t->unk = -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk) t->unk = tokfile_id(t, unk);
    if (cfg) {
        struct { const char *key; int32_t *dst; } sp[] = {{"bos_token", &t->bos}, {"eos_token", &t->eos}, {"pad_token", &t->pad}, {"unk_token", &t->unk}};
        for (size_t s = 0; s < 4; s++) {
            const char *txt = token_text(json_object_get(cfg, sp[s].key));
            if (txt) *sp[s].dst = tokfile_id(t, txt);
        }
        /* transformers' defaults: Llama tokenizers add BOS unless told otherwise */
        json_t *ab = json_object_get(cfg, "add_bos_token");
        t->add_bos = ab ? json_is_true(ab) : t->style == TOKFILE_SENTENCEPIECE;
        t->add_eos = json_is_true(json_object_get(cfg, "add_eos_token"));
        const char *ct = json_string_value(json_object_get(cfg, "chat_template"));
        if (ct) t->chat_template = strdup(ct);
    }
    /* a TemplateProcessing post-processor that prepends the BOS also means add_bos */
    json_t *post = json_object_get(tj, "post_processor");
    const char *post_type = json_string_value(json_object_get(post, "type"));
    if (!cfg && post_type && !strcmp(post_type, "TemplateProcessing")) t->add_bos = true;
    return 0;
}

/* the tokenizer_config.json keys read here, with a clear error for a wrong type (parse reads
 * them leniently afterwards) */
static int check_config_types(const json_t *cfg, const char *path) {
    if (!json_is_object(cfg)) return err_set(ERR_DATA, "%s: not a JSON object", path);
    bool b;
    int rc = json_in_bool(cfg, "add_bos_token", path, false, &b);
    if (!rc) rc = json_in_bool(cfg, "add_eos_token", path, false, &b);
    return rc;
}

int tokfile_load(tokfile *t, const char *dir) {
    memset(t, 0, sizeof *t);
    char *tp = fs_join(dir, "tokenizer.json"), *cp = fs_join(dir, "tokenizer_config.json"), *jp = fs_join(dir, "chat_template.jinja");
    json_t *tj = NULL, *cfg = NULL;
    int rc = 0;
    if (!fs_exists(tp))
        rc = err_set(ERR_DATA, "%s: no tokenizer.json (only tokenizers saved by the `tokenizers` library are supported)", dir);
    if (!rc) rc = json_in_load_file(tp, 0, &tj);
    if (!rc && fs_exists(cp)) rc = json_in_load_file(cp, 0, &cfg);
    if (!rc && cfg) rc = check_config_types(cfg, cp);
    if (!rc) rc = parse(t, tj, cfg, tp);
    if (!rc && !t->chat_template && fs_exists(jp)) {
        char *s = NULL;
        size_t len;
        rc = fs_read_all(jp, &s, &len);
        t->chat_template = s;
    }
    json_decref(tj);
    json_decref(cfg);
    free(tp);
    free(cp);
    free(jp);
    if (rc) tokfile_free(t);
    return rc;
}
