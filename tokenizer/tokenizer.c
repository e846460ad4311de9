/* tokenizer.c: loading tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) into
 * the flat tables of tokenizer_impl.h, and the small accessors.
 *
 * Supported, which covers GPT-2, Llama-2/Mistral/TinyLlama, Llama-3 and Qwen2/3:
 *   model         BPE (merges as "a b" strings or ["a","b"] pairs; byte_fallback, fuse_unk,
 *                 ignore_merges, unk_token)
 *   normalizer    NFC, Prepend, Replace (String pattern), Sequence
 *   pre_tokenizer Split (Regex through PCRE2 with JIT, or String), ByteLevel (last in a
 *                 Sequence), Metaspace, Sequence
 *   post          TemplateProcessing (single), ByteLevel, Sequence
 *   decoder       ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence
 * Anything else is refused at load with a message that names the component, so that a model
 * never gets ids that differ from the reference library's in silence. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/err.h"
#include "core/utf8.h"
#include "core/fsutil.h"
#include "tokenizer/tokenizer_impl.h"
#include "core/json_in.h"

/* ---- string arena: chunks that never move ---- */
struct tok_chunk { struct tok_chunk *next; size_t used, cap; char data[]; };

static char *arena_dup(tokenizer *t, const char *s, size_t n) {
    struct tok_chunk *c = t->arena;
    if (!c || c->used + n + 1 > c->cap) {
        size_t cap = n + 1 > (1u << 20) ? n + 1 : (1u << 20);
        c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = t->arena;
        t->arena = c;
    }
    char *p = c->data + c->used;
    memcpy(p, s, n);
    p[n] = 0;
    c->used += n + 1;
    return p;
}

/* ---- JSON helpers: every complaint names the file and the JSON path ---- */
typedef struct loadctx { tokenizer *t; const char *path; } loadctx;

static int bad(const loadctx *c, const char *where, const char *what) {
    return err_set(ERR_DATA, "'%s': %s: %s", c->path, where, what);
}

static int get_str(const loadctx *c, json_t *o, const char *key, const char *where, bool required, const char **out, size_t *len) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (required) {
            char m[160];
            snprintf(m, sizeof m, "missing '%s'", key);
            return bad(c, where, m);
        }
        *out = NULL;
        if (len) *len = 0;
        return 0;
    }
    if (!json_is_string(v)) {
        char m[160];
        snprintf(m, sizeof m, "'%s' must be a string", key);
        return bad(c, where, m);
    }
    *out = json_string_value(v);
    if (len) *len = json_string_length(v);
    return 0;
}

static int get_bool(const loadctx *c, json_t *o, const char *key, const char *where, bool def, bool *out) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) { *out = def; return 0; }
    if (!json_is_boolean(v)) {
        char m[160];
        snprintf(m, sizeof m, "'%s' must be true or false", key);
        return bad(c, where, m);
    }
    *out = json_is_true(v);
    return 0;
}

static const char *type_of(json_t *o) {
    json_t *v = json_is_object(o) ? json_object_get(o, "type") : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The String form of a {"String": ...} / {"Regex": ...} pattern. */
static int get_pattern(const loadctx *c, json_t *o, const char *where, const char **str, size_t *slen, const char **regex) {
    json_t *p = json_object_get(o, "pattern");
    *str = *regex = NULL;
    if (!json_is_object(p)) return bad(c, where, "'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
    json_t *s = json_object_get(p, "String"), *r = json_object_get(p, "Regex");
    if (json_is_string(s)) {
        *str = json_string_value(s);
        *slen = json_string_length(s);
        return 0;
    }
    if (json_is_string(r)) {
        *regex = json_string_value(r);
        return 0;
    }
    return bad(c, where, "'pattern' must be {\"String\": ...} or {\"Regex\": ...}");
}

/* ---- regexes ---- */

/* Oniguruma, which `tokenizers` uses, counts U+0085 as \s and PCRE2 10.42 does not; rewrite
 * \s (and \S outside classes) to the Unicode White_Space set so both agree. */
#define WS_SET "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static char *regex_translate(const char *re) {
    size_t n = strlen(re);
    tok_buf b = {0};
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char ch = re[i];
        if (ch == '\\' && i + 1 < n) {
            char e = re[i + 1];
            i++;
            if (e == 's') tok_buf_add(&b, in_class ? WS_SET : "[" WS_SET "]", strlen(in_class ? WS_SET : "[" WS_SET "]"));
            else if (e == 'S' && !in_class) tok_buf_add(&b, "[^" WS_SET "]", strlen("[^" WS_SET "]"));
            else {
                char two[2] = {ch, e};
                tok_buf_add(&b, two, 2);
            }
            continue;
        }
        if (!in_class && ch == '[') {
            in_class = true;
            tok_buf_add(&b, &ch, 1);
            if (i + 1 < n && re[i + 1] == '^') tok_buf_add(&b, &re[++i], 1);
            if (i + 1 < n && re[i + 1] == ']') tok_buf_add(&b, &re[++i], 1); /* a leading ] is literal */
            continue;
        }
        if (in_class && ch == ']') in_class = false;
        tok_buf_add(&b, &ch, 1);
    }
    if (!b.p) tok_buf_add(&b, "", 0);
    return b.p;
}

static int regex_compile(const loadctx *c, const char *where, const char *re, pcre2_code **out) {
    char *tr = regex_translate(re);
    if (!tr) return err_set(ERR_STAGE, "out of memory");
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)tr, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &ecode, &eoff, NULL);
    free(tr);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        char m[512];
        snprintf(m, sizeof m, "cannot compile regex '%s': %s", re, (const char *)msg);
        return bad(c, where, m);
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* without JIT the interpreter still works */
    *out = code;
    return 0;
}

/* GPT-2's pre-tokenization regex, built into the ByteLevel pre-tokenizer. */
static const char gpt2_regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- components ---- */

static int parse_normalizer(const loadctx *c, json_t *o, const char *where) {
    tokenizer *t = c->t;
    if (!o || json_is_null(o)) return 0;
    const char *ty = type_of(o);
    if (!ty) return bad(c, where, "expected an object with a 'type'");
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(o, "normalizers");
        if (!json_is_array(a)) return bad(c, where, "Sequence needs a 'normalizers' array");
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e) {
            int rc = parse_normalizer(c, e, where);
            if (rc) return rc;
        }
        return 0;
    }
    tok_norm *nn = realloc(t->norm, (t->n_norm + 1) * sizeof *nn);
    if (!nn) return err_set(ERR_STAGE, "out of memory");
    t->norm = nn;
    tok_norm *n = &t->norm[t->n_norm];
    memset(n, 0, sizeof *n);
    const char *s, *re;
    size_t sl;
    int rc;
    if (!strcmp(ty, "NFC")) n->kind = TOK_NORM_NFC;
    else if (!strcmp(ty, "Prepend")) {
        n->kind = TOK_NORM_PREPEND;
        if ((rc = get_str(c, o, "prepend", where, true, &s, &sl))) return rc;
        n->a = arena_dup(t, s, sl);
        n->alen = sl;
    } else if (!strcmp(ty, "Replace")) {
        n->kind = TOK_NORM_REPLACE;
        if ((rc = get_pattern(c, o, where, &s, &sl, &re))) return rc;
        if (re) return bad(c, where, "Replace normalizer with a Regex pattern is not supported (String only)");
        if (!sl) return bad(c, where, "Replace normalizer with an empty pattern");
        n->a = arena_dup(t, s, sl);
        n->alen = sl;
        if ((rc = get_str(c, o, "content", where, true, &s, &sl))) return rc;
        n->b = arena_dup(t, s, sl);
        n->blen = sl;
    } else {
        char m[200];
        snprintf(m, sizeof m, "unsupported normalizer '%s' (supported: NFC, Prepend, Replace, Sequence)", ty);
        return bad(c, where, m);
    }
    t->n_norm++;
    return 0;
}

static int parse_pre(const loadctx *c, json_t *o, const char *where) {
    tokenizer *t = c->t;
    if (!o || json_is_null(o)) return 0;
    const char *ty = type_of(o);
    if (!ty) return bad(c, where, "expected an object with a 'type'");
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(o, "pretokenizers");
        if (!json_is_array(a)) return bad(c, where, "Sequence needs a 'pretokenizers' array");
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e) {
            int rc = parse_pre(c, e, where);
            if (rc) return rc;
        }
        return 0;
    }
    if (t->byte_level) return bad(c, where, "a pre-tokenizer after ByteLevel is not supported");
    tok_pre *np = realloc(t->pre, (t->n_pre + 1) * sizeof *np);
    if (!np) return err_set(ERR_STAGE, "out of memory");
    t->pre = np;
    tok_pre *p = &t->pre[t->n_pre];
    memset(p, 0, sizeof *p);
    t->n_pre++; /* counted now so that tokenizer_free releases a half-built step */
    int rc;
    if (!strcmp(ty, "Split")) {
        p->kind = TOK_PRE_SPLIT;
        const char *s, *re, *beh;
        size_t sl;
        if ((rc = get_pattern(c, o, where, &s, &sl, &re))) return rc;
        if (re) {
            if ((rc = regex_compile(c, where, re, &p->re))) return rc;
        } else {
            if (!sl) return bad(c, where, "Split with an empty pattern");
            p->literal = arena_dup(t, s, sl);
            p->literal_len = sl;
        }
        if ((rc = get_str(c, o, "behavior", where, true, &beh, NULL))) return rc;
        if (!strcmp(beh, "Isolated")) p->behavior = TOK_SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) p->behavior = TOK_SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) p->behavior = TOK_SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) p->behavior = TOK_SPLIT_MERGED_NEXT;
        else return bad(c, where, "unsupported Split behavior (supported: Isolated, Removed, MergedWithPrevious, MergedWithNext)");
        if ((rc = get_bool(c, o, "invert", where, false, &p->invert))) return rc;
    } else if (!strcmp(ty, "ByteLevel")) {
        p->kind = TOK_PRE_BYTELEVEL;
        bool use_regex;
        if ((rc = get_bool(c, o, "add_prefix_space", where, true, &p->add_prefix_space))) return rc;
        if ((rc = get_bool(c, o, "use_regex", where, true, &use_regex))) return rc;
        if (use_regex && (rc = regex_compile(c, where, gpt2_regex, &p->re))) return rc;
        t->byte_level = true;
    } else if (!strcmp(ty, "Metaspace")) {
        p->kind = TOK_PRE_METASPACE;
        const char *r, *ps;
        size_t rl;
        if ((rc = get_str(c, o, "replacement", where, false, &r, &rl))) return rc;
        if (!r) { r = "\xe2\x96\x81"; rl = 3; }
        if (rl == 0 || rl >= sizeof p->replacement || tok_utf8_len((uint8_t)r[0]) != (int)rl)
            return bad(c, where, "Metaspace 'replacement' must be one character");
        memcpy(p->replacement, r, rl);
        p->replacement_len = rl;
        if ((rc = get_str(c, o, "prepend_scheme", where, false, &ps, NULL))) return rc;
        if (!ps) {
            bool aps;
            if ((rc = get_bool(c, o, "add_prefix_space", where, true, &aps))) return rc;
            p->prepend = aps ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        } else if (!strcmp(ps, "first")) p->prepend = TOK_PREPEND_FIRST;
        else if (!strcmp(ps, "always")) p->prepend = TOK_PREPEND_ALWAYS;
        else if (!strcmp(ps, "never")) p->prepend = TOK_PREPEND_NEVER;
        else return bad(c, where, "Metaspace 'prepend_scheme' must be first, always or never");
        if ((rc = get_bool(c, o, "split", where, true, &p->split))) return rc;
    } else {
        char m[200];
        snprintf(m, sizeof m, "unsupported pre_tokenizer '%s' (supported: Split, ByteLevel, Metaspace, Sequence)", ty);
        return bad(c, where, m);
    }
    return 0;
}

static int parse_decoder(const loadctx *c, json_t *o, const char *where) {
    tokenizer *t = c->t;
    if (!o || json_is_null(o)) return 0;
    const char *ty = type_of(o);
    if (!ty) return bad(c, where, "expected an object with a 'type'");
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(o, "decoders");
        if (!json_is_array(a)) return bad(c, where, "Sequence needs a 'decoders' array");
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e) {
            int rc = parse_decoder(c, e, where);
            if (rc) return rc;
        }
        return 0;
    }
    tok_dec *nd = realloc(t->dec, (t->n_dec + 1) * sizeof *nd);
    if (!nd) return err_set(ERR_STAGE, "out of memory");
    t->dec = nd;
    tok_dec *d = &t->dec[t->n_dec];
    memset(d, 0, sizeof *d);
    const char *s, *re;
    size_t sl;
    int rc;
    if (!strcmp(ty, "ByteLevel")) d->kind = TOK_DEC_BYTELEVEL;
    else if (!strcmp(ty, "ByteFallback")) d->kind = TOK_DEC_BYTEFALLBACK;
    else if (!strcmp(ty, "Fuse")) d->kind = TOK_DEC_FUSE;
    else if (!strcmp(ty, "Replace")) {
        d->kind = TOK_DEC_REPLACE;
        if ((rc = get_pattern(c, o, where, &s, &sl, &re))) return rc;
        if (re || !sl) return bad(c, where, "Replace decoder needs a non-empty String pattern");
        d->a = arena_dup(t, s, sl);
        d->alen = sl;
        if ((rc = get_str(c, o, "content", where, true, &s, &sl))) return rc;
        d->b = arena_dup(t, s, sl);
        d->blen = sl;
    } else if (!strcmp(ty, "Strip")) {
        d->kind = TOK_DEC_STRIP;
        if ((rc = get_str(c, o, "content", where, true, &s, &sl))) return rc;
        if (tok_utf8_len((uint8_t)s[0]) != (int)sl) return bad(c, where, "Strip 'content' must be one character");
        d->a = arena_dup(t, s, sl);
        d->alen = sl;
        json_t *st = json_object_get(o, "start"), *sp = json_object_get(o, "stop");
        if (!json_is_integer(st) || !json_is_integer(sp) || json_integer_value(st) < 0 || json_integer_value(sp) < 0)
            return bad(c, where, "Strip needs integer 'start' and 'stop'");
        d->start = (int)json_integer_value(st);
        d->stop = (int)json_integer_value(sp);
    } else if (!strcmp(ty, "Metaspace")) {
        d->kind = TOK_DEC_METASPACE;
        const char *ps;
        if ((rc = get_str(c, o, "replacement", where, false, &s, &sl))) return rc;
        if (!s) { s = "\xe2\x96\x81"; sl = 3; }
        d->a = arena_dup(t, s, sl);
        d->alen = sl;
        if ((rc = get_str(c, o, "prepend_scheme", where, false, &ps, NULL))) return rc;
        if (!ps) {
            bool aps;
            if ((rc = get_bool(c, o, "add_prefix_space", where, true, &aps))) return rc;
            d->prepend = aps ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
        } else d->prepend = !strcmp(ps, "never") ? TOK_PREPEND_NEVER : !strcmp(ps, "first") ? TOK_PREPEND_FIRST : TOK_PREPEND_ALWAYS;
    } else {
        char m[200];
        snprintf(m, sizeof m, "unsupported decoder '%s' (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)", ty);
        return bad(c, where, m);
    }
    if (d->a == NULL && (d->kind == TOK_DEC_REPLACE || d->kind == TOK_DEC_STRIP || d->kind == TOK_DEC_METASPACE))
        return err_set(ERR_STAGE, "out of memory");
    t->n_dec++;
    return 0;
}

static int ids_append(int32_t **v, size_t *n, int32_t id) {
    int32_t *p = realloc(*v, (*n + 1) * sizeof *p);
    if (!p) return err_set(ERR_STAGE, "out of memory");
    *v = p;
    p[(*n)++] = id;
    return 0;
}

static int parse_post(const loadctx *c, json_t *o, const char *where) {
    tokenizer *t = c->t;
    if (!o || json_is_null(o)) return 0;
    const char *ty = type_of(o);
    if (!ty) return bad(c, where, "expected an object with a 'type'");
    if (!strcmp(ty, "Sequence")) {
        json_t *a = json_object_get(o, "processors");
        if (!json_is_array(a)) return bad(c, where, "Sequence needs a 'processors' array");
        size_t i;
        json_t *e;
        json_array_foreach(a, i, e) {
            int rc = parse_post(c, e, where);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) return 0; /* only trims offsets */
    if (strcmp(ty, "TemplateProcessing")) {
        char m[200];
        snprintf(m, sizeof m, "unsupported post_processor '%s' (supported: TemplateProcessing, ByteLevel, Sequence)", ty);
        return bad(c, where, m);
    }
    json_t *single = json_object_get(o, "single"), *specials = json_object_get(o, "special_tokens");
    if (!json_is_array(single)) return bad(c, where, "TemplateProcessing needs a 'single' array");
    bool seen_seq = false;
    size_t i;
    json_t *e;
    json_array_foreach(single, i, e) {
        json_t *st = json_object_get(e, "SpecialToken");
        if (json_object_get(e, "Sequence")) {
            if (seen_seq) return bad(c, where, "TemplateProcessing 'single' names the sequence twice");
            seen_seq = true;
            continue;
        }
        const char *name;
        int rc;
        if (!json_is_object(st) || (rc = get_str(c, st, "id", where, true, &name, NULL)))
            return bad(c, where, "TemplateProcessing 'single' items must be {\"Sequence\"} or {\"SpecialToken\"}");
        json_t *sp = json_object_get(specials, name), *ids = json_object_get(sp, "ids");
        if (!json_is_array(ids)) {
            char m[200];
            snprintf(m, sizeof m, "TemplateProcessing special token '%s' has no 'ids' in 'special_tokens'", name);
            return bad(c, where, m);
        }
        size_t k;
        json_t *idv;
        json_array_foreach(ids, k, idv) {
            if (!json_is_integer(idv) || json_integer_value(idv) < 0 || json_integer_value(idv) > INT32_MAX)
                return bad(c, where, "TemplateProcessing ids must be non-negative integers");
            int32_t id = (int32_t)json_integer_value(idv);
            rc = seen_seq ? ids_append(&t->suffix, &t->n_suffix, id) : ids_append(&t->prefix, &t->n_prefix, id);
            if (rc) return rc;
        }
    }
    if (!seen_seq) return bad(c, where, "TemplateProcessing 'single' lacks {\"Sequence\"}");
    return 0;
}

/* ---- the model ---- */

static int set_token(tokenizer *t, int32_t id, const char *s, size_t len) {
    char *p = arena_dup(t, s, len);
    if (!p) return err_set(ERR_STAGE, "out of memory");
    t->tok[id] = p;
    t->tok_len[id] = (uint32_t)len;
    return 0;
}

/* Undo the GPT-2 alphabet: returns false when s holds a character outside it. */
static bool bytelevel_unmap(const char *s, size_t len, tok_buf *out) {
    out->len = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int n = tok_utf8_next((const uint8_t *)s + i, &cp);
        int b = tok_cp_to_byte(cp);
        if (b < 0) return false;
        uint8_t ch = (uint8_t)b;
        if (tok_buf_add(out, &ch, 1)) return false;
        i += (size_t)n;
    }
    if (!out->p) tok_buf_add(out, "", 0);
    return true;
}

#define MAX_IDS (1 << 24)

/* the BPE model's options: those we do not support refused, the flags read */
static int model_options(const loadctx *c, json_t *m) {
    tokenizer *t = c->t;
    const char *s;
    int rc;
    if ((rc = get_str(c, m, "continuing_subword_prefix", "model", false, &s, NULL))) return rc;
    if (s && *s) return bad(c, "model", "continuing_subword_prefix is not supported");
    if ((rc = get_str(c, m, "end_of_word_suffix", "model", false, &s, NULL))) return rc;
    if (s && *s) return bad(c, "model", "end_of_word_suffix is not supported");
    json_t *drop = json_object_get(m, "dropout");
    if (drop && !json_is_null(drop) && (!json_is_number(drop) || json_number_value(drop) != 0.0))
        return bad(c, "model", "BPE dropout is not supported (set it to null)");
    if ((rc = get_bool(c, m, "byte_fallback", "model", false, &t->byte_fallback))) return rc;
    if ((rc = get_bool(c, m, "fuse_unk", "model", false, &t->fuse_unk))) return rc;
    if ((rc = get_bool(c, m, "ignore_merges", "model", false, &t->ignore_merges))) return rc;
    return 0;
}

/* Ids: the vocabulary's and the added tokens' (the largest sizes the tables), every vocabulary
 * token's text, and the map from text to id. */
static int model_ids(const loadctx *c, json_t *vocab, json_t *added) {
    tokenizer *t = c->t;
    int rc;
    int64_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_IDS) {
            char msg[200];
            snprintf(msg, sizeof msg, "token '%.60s' has an id that is not an integer in [0, %d)", key, MAX_IDS);
            return bad(c, "model.vocab", msg);
        }
        if (json_integer_value(v) > max_id) max_id = json_integer_value(v);
    }
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        json_t *id = json_object_get(a, "id");
        if (!json_is_object(a) || !json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= MAX_IDS ||
            !json_is_string(json_object_get(a, "content")) || !json_string_length(json_object_get(a, "content"))) {
            char where[64];
            snprintf(where, sizeof where, "added_tokens[%zu]", i);
            return bad(c, where, "needs an integer 'id' and a non-empty string 'content'");
        }
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    if (max_id < 0) return bad(c, "model.vocab", "the vocabulary is empty");
    t->n_ids = (int32_t)max_id + 1;
    t->tok = calloc((size_t)t->n_ids, sizeof *t->tok);
    t->tok_len = calloc((size_t)t->n_ids, sizeof *t->tok_len);
    t->is_special = calloc((size_t)t->n_ids, sizeof *t->is_special);
    if (!t->tok || !t->tok_len || !t->is_special) return err_set(ERR_STAGE, "out of memory");
    if ((rc = tok_strmap_init(&t->vocab, (uint32_t)json_object_size(vocab)))) return rc;
    json_object_foreach(vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        size_t len = strlen(key); /* jansson object keys are NUL-terminated */
        if ((rc = set_token(t, id, key, len))) return rc;
        if ((rc = tok_strmap_put(&t->vocab, t->tok[id], (uint32_t)len, id))) return rc;
    }
    t->words = &t->vocab;
    return 0;
}

/* Byte-level vocabularies: every id's raw bytes and the map encoding looks words up in; others:
 * the ids of single ASCII characters. Both: the <0xNN> byte-fallback ids. */
static int model_byte_tables(tokenizer *t, size_t vocab_size) {
    int rc;
    if (t->byte_level) {
        /* raw bytes of every id, and the map encoding looks words up in */
        t->raw = calloc((size_t)t->n_ids, sizeof *t->raw);
        t->raw_len = calloc((size_t)t->n_ids, sizeof *t->raw_len);
        if (!t->raw || !t->raw_len) return err_set(ERR_STAGE, "out of memory");
        if ((rc = tok_strmap_init(&t->vocab_raw, (uint32_t)vocab_size))) return rc;
        tok_buf b = {0};
        for (int32_t id = 0; id < t->n_ids; id++) {
            if (!t->tok[id]) continue;
            if (bytelevel_unmap(t->tok[id], t->tok_len[id], &b)) {
                char *p = arena_dup(t, b.p, b.len);
                if (!p) { free(b.p); return err_set(ERR_STAGE, "out of memory"); }
                t->raw[id] = p;
                t->raw_len[id] = (uint32_t)b.len;
                if ((rc = tok_strmap_put(&t->vocab_raw, p, (uint32_t)b.len, id))) { free(b.p); return rc; }
            } else {
                /* not reachable by merging bytes; decodes as its own UTF-8, as `tokenizers` does */
                t->raw[id] = t->tok[id];
                t->raw_len[id] = t->tok_len[id];
            }
        }
        free(b.p);
        t->words = &t->vocab_raw;
        for (int b2 = 0; b2 < 256; b2++) {
            char ch = (char)b2;
            t->byte_id[b2] = tok_strmap_get(&t->vocab_raw, &ch, 1);
        }
    } else {
        for (int b2 = 0; b2 < 256; b2++) t->byte_id[b2] = -1;
        for (int b2 = 0; b2 < 128; b2++) { /* initial symbols of ASCII text without a hash probe each */
            char ch = (char)b2;
            t->ascii_id[b2] = tok_strmap_get(&t->vocab, &ch, 1);
        }
    }
    for (int b2 = 0; b2 < 256; b2++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b2);
        t->byte_fb[b2] = tok_strmap_get(&t->vocab, name, 6);
    }
    return 0;
}

/* the merges, in rank order: each a string "a b" or a pair ["a", "b"] of vocabulary tokens whose
 * concatenation is a vocabulary token too */
static int model_merges(const loadctx *c, json_t *merges) {
    tokenizer *t = c->t;
    int rc;
    size_t i;
    if ((rc = tok_mergemap_init(&t->merges, (uint32_t)json_array_size(merges)))) return rc;
    tok_buf cat = {0};
    json_t *mg;
    rc = 0;
    json_array_foreach(merges, i, mg) {
        const char *l, *r;
        size_t ll, rl;
        char where[64];
        snprintf(where, sizeof where, "model.merges[%zu]", i);
        if (json_is_string(mg)) {
            l = json_string_value(mg);
            const char *sp = strchr(l, ' ');
            if (!sp) { rc = bad(c, where, "a string merge must be two tokens separated by a space"); break; }
            ll = (size_t)(sp - l);
            r = sp + 1;
            rl = json_string_length(mg) - ll - 1;
        } else if (json_is_array(mg) && json_array_size(mg) == 2 && json_is_string(json_array_get(mg, 0)) &&
                   json_is_string(json_array_get(mg, 1))) {
            l = json_string_value(json_array_get(mg, 0));
            ll = json_string_length(json_array_get(mg, 0));
            r = json_string_value(json_array_get(mg, 1));
            rl = json_string_length(json_array_get(mg, 1));
        } else {
            rc = bad(c, where, "a merge must be a string \"a b\" or a pair [\"a\", \"b\"]");
            break;
        }
        int32_t li = tok_strmap_get(&t->vocab, l, (uint32_t)ll), ri = tok_strmap_get(&t->vocab, r, (uint32_t)rl);
        cat.len = 0;
        if (tok_buf_add(&cat, l, ll) || tok_buf_add(&cat, r, rl)) { rc = ERR_STAGE; break; }
        int32_t mi = tok_strmap_get(&t->vocab, cat.p, (uint32_t)cat.len);
        if (li < 0 || ri < 0 || mi < 0) {
            const char *miss = li < 0 ? l : ri < 0 ? r : cat.p;
            size_t ml = li < 0 ? ll : ri < 0 ? rl : cat.len;
            char msg[300];
            snprintf(msg, sizeof msg, "merge names token '%.*s' that is not in the vocabulary", (int)(ml > 80 ? 80 : ml), miss);
            rc = bad(c, where, msg);
            break;
        }
        tok_mergemap_put(&t->merges, li, ri, (uint32_t)i, mi);
    }
    free(cat.p);
    if (rc) return rc;
    return rc;
}

/* unk_token: a vocabulary token or an added one */
static int model_unk(const loadctx *c, json_t *m, json_t *added) {
    tokenizer *t = c->t;
    const char *s;
    int rc;
    size_t i;
    json_t *a;
    if ((rc = get_str(c, m, "unk_token", "model", false, &s, NULL))) return rc;
    t->unk_id = s ? tok_strmap_get(&t->vocab, s, (uint32_t)strlen(s)) : -1;
    if (s && t->unk_id < 0) {
        json_array_foreach(added, i, a)
            if (!strcmp(json_string_value(json_object_get(a, "content")), s)) t->unk_id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if (t->unk_id < 0) return bad(c, "model.unk_token", "names a token that is not in the vocabulary");
    }
    return 0;
}

static int parse_model(const loadctx *c, json_t *root, json_t *added) {
    tokenizer *t = c->t;
    json_t *m = json_object_get(root, "model");
    if (!json_is_object(m)) return bad(c, "model", "missing or not an object");
    const char *ty = type_of(m);
    if (!ty && json_object_get(m, "merges")) ty = "BPE"; /* old files omit the type */
    if (!ty || strcmp(ty, "BPE")) {
        char msg[200];
        snprintf(msg, sizeof msg, "unsupported model type '%s' (supported: BPE)", ty ? ty : "(none)");
        return bad(c, "model", msg);
    }
    json_t *vocab = json_object_get(m, "vocab"), *merges = json_object_get(m, "merges");
    if (!json_is_object(vocab)) return bad(c, "model.vocab", "missing or not an object");
    if (!json_is_array(merges)) return bad(c, "model.merges", "missing or not an array");
    int rc;
    if ((rc = model_options(c, m)) || (rc = model_ids(c, vocab, added))) return rc;
    if ((rc = model_byte_tables(t, json_object_size(vocab)))) return rc;
    if ((rc = model_merges(c, merges))) return rc;
    return model_unk(c, m, added);
}

/* Normalize an added token's content the way encoding normalizes text (tokenizer_encode.c). */
int tok_normalize(const tokenizer *t, const char *s, size_t len, tok_buf *out);

static int cmp_added(const void *a, const void *b) {
    const tok_added *x = a, *y = b;
    int r = memcmp(x->content, y->content, x->len < y->len ? x->len : y->len);
    if (r) return r;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : 0; /* longer first */
}

static int parse_added(const loadctx *c, json_t *added) {
    tokenizer *t = c->t;
    size_t n = json_array_size(added);
    if (!n) return 0;
    t->added = calloc(n, sizeof *t->added);
    if (!t->added) return err_set(ERR_STAGE, "out of memory");
    size_t i;
    json_t *a;
    int rc;
    tok_buf nb = {0};
    json_array_foreach(added, i, a) {
        tok_added *x = &t->added[t->n_added];
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        const char *content;
        size_t len;
        if ((rc = get_str(c, a, "content", where, true, &content, &len))) goto out;
        if (utf8_valid_prefix((const uint8_t *)content, len) != len) { rc = bad(c, where, "content is not valid UTF-8"); goto out; }
        x->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if ((rc = get_bool(c, a, "special", where, false, &x->special)) ||
            (rc = get_bool(c, a, "lstrip", where, false, &x->lstrip)) ||
            (rc = get_bool(c, a, "rstrip", where, false, &x->rstrip)) ||
            (rc = get_bool(c, a, "single_word", where, false, &x->single_word)) ||
            (rc = get_bool(c, a, "normalized", where, !x->special, &x->normalized)))
            goto out;
        x->content = arena_dup(t, content, len);
        x->len = len;
        if (!x->content) { rc = err_set(ERR_STAGE, "out of memory"); goto out; }
        if ((rc = set_token(t, x->id, content, len))) goto out;
        t->is_special[x->id] = x->special;
        if (t->raw) {
            tok_buf b = {0};
            if (bytelevel_unmap(content, len, &b) && (t->raw[x->id] = arena_dup(t, b.p, b.len))) t->raw_len[x->id] = (uint32_t)b.len;
            else {
                t->raw[x->id] = t->tok[x->id];
                t->raw_len[x->id] = t->tok_len[x->id];
            }
            free(b.p);
        }
        if (x->normalized && t->n_norm) {
            nb.len = 0;
            if ((rc = tok_normalize(t, content, len, &nb))) goto out;
            if (!nb.len) { t->n_added++; x->normalized = false; continue; }
            x->norm = arena_dup(t, nb.p, nb.len);
            x->norm_len = nb.len;
        } else {
            x->norm = x->content;
            x->norm_len = len;
        }
        t->n_added++;
    }
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    /* per pass (raw text, normalized text), the tokens grouped by first byte */
    t->added_idx[0] = malloc(t->n_added * sizeof(int32_t));
    t->added_idx[1] = malloc(t->n_added * sizeof(int32_t));
    if (!t->added_idx[0] || !t->added_idx[1]) { rc = err_set(ERR_STAGE, "out of memory"); goto out; }
    for (int pass = 0; pass < 2; pass++) {
        uint32_t *st = t->added_start[pass];
        memset(st, 0, 257 * sizeof *st);
        for (i = 0; i < t->n_added; i++)
            if (t->added[i].normalized == (pass == 1)) st[(uint8_t)(pass ? t->added[i].norm : t->added[i].content)[0] + 1]++;
        for (int b2 = 0; b2 < 256; b2++) st[b2 + 1] += st[b2];
        uint32_t fill[256];
        memcpy(fill, st, sizeof fill);
        for (i = 0; i < t->n_added; i++)
            if (t->added[i].normalized == (pass == 1))
                t->added_idx[pass][fill[(uint8_t)(pass ? t->added[i].norm : t->added[i].content)[0]]++] = (int32_t)i;
        t->n_added_pass[pass] = st[256];
        t->added_first[pass] = -1;
        for (int b2 = 0, firsts = 0; b2 < 256; b2++)
            if (st[b2] != st[b2 + 1]) t->added_first[pass] = ++firsts == 1 ? b2 : -1;
    }
    rc = 0;
out:
    free(nb.p);
    return rc;
}

/* ---- special tokens from the config files ---- */

static int32_t lookup_any(const tokenizer *t, const char *s) {
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == strlen(s) && !memcmp(t->added[i].content, s, t->added[i].len)) return t->added[i].id;
    return tok_strmap_get(&t->vocab, s, (uint32_t)strlen(s));
}

/* "bos_token": "<s>" or {"content": "<s>", ...}; absent keeps *id as it was, null clears it */
/* a special token of tokenizer_config.json or special_tokens_map.json: a string, an AddedToken
 * object ({"content": ...}) or null */
static int config_token(const tokenizer *t, json_t *cfg, const char *key, const char *path, int32_t *id) {
    json_t *v = json_object_get(cfg, key);
    if (!v) return 0;
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (json_is_null(v)) *id = -1;
    else if (json_is_string(v)) *id = lookup_any(t, json_string_value(v));
    else return err_set(ERR_DATA, "'%s': \"%s\" must be a token string, an object with \"content\" or null (got %s)",
                        path, key, v ? json_in_type_name(v) : "an object without \"content\"");
    return 0;
}

static int load_json_file(const char *path, json_t **out, bool required) {
    *out = NULL;
    if (!fs_exists(path)) {
        if (required) return err_set(ERR_DATA, "'%s': no such file (a model directory needs tokenizer.json)", path);
        return 0;
    }
    json_t *j;
    int rc = json_in_load_file(path, 0, &j);
    if (rc) return rc;
    if (!json_is_object(j)) {
        json_decref(j);
        return err_set(ERR_DATA, "'%s': expected a JSON object at the top level", path);
    }
    *out = j;
    return 0;
}

static int configure_specials(tokenizer *t, const char *dir) {
    char *p1 = fs_join(dir, "tokenizer_config.json"), *p2 = fs_join(dir, "special_tokens_map.json");
    json_t *cfg = NULL, *map = NULL;
    int rc = load_json_file(p1, &cfg, false);
    if (!rc) rc = load_json_file(p2, &map, false);
    if (rc) goto out;
    t->bos = t->eos = t->pad = -1;
    /* the config first; special_tokens_map.json, when present, has the last word */
    json_t *srcs[2] = {cfg, map};
    const char *paths[2] = {p1, p2};
    for (int k = 0; k < 2; k++) {
        if (!srcs[k]) continue;
        if ((rc = config_token(t, srcs[k], "bos_token", paths[k], &t->bos)) ||
            (rc = config_token(t, srcs[k], "eos_token", paths[k], &t->eos)) ||
            (rc = config_token(t, srcs[k], "pad_token", paths[k], &t->pad)))
            goto out;
    }
    bool flag;
    if ((rc = json_in_bool(cfg, "add_bos_token", p1, false, &flag)) ||
        (rc = json_in_bool(cfg, "add_eos_token", p1, false, &flag)))
        goto out;
    /* transformers rebuilds the post-processor from add_bos_token/add_eos_token when the
     * config states them; otherwise tokenizer.json's TemplateProcessing stands */
    json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
    if (json_is_boolean(ab) || json_is_boolean(ae)) {
        bool add_bos = json_is_boolean(ab) ? json_is_true(ab) : (t->n_prefix && t->prefix[0] == t->bos);
        bool add_eos = json_is_true(ae);
        t->n_prefix = t->n_suffix = 0;
        if (add_bos && t->bos >= 0 && (rc = ids_append(&t->prefix, &t->n_prefix, t->bos))) goto out;
        if (add_eos && t->eos >= 0 && (rc = ids_append(&t->suffix, &t->n_suffix, t->eos))) goto out;
    }
out:
    json_decref(cfg);
    json_decref(map);
    free(p1);
    free(p2);
    return rc;
}

/* ---- load / free ---- */

int tokenizer_load(tokenizer **out, const char *dir) {
    *out = NULL;
    char *path = fs_join(dir, "tokenizer.json");
    json_t *root = NULL;
    int rc = load_json_file(path, &root, true);
    if (rc) {
        free(path);
        return rc;
    }
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        free(path);
        json_decref(root);
        return err_set(ERR_STAGE, "out of memory");
    }
    t->unk_id = t->bos = t->eos = t->pad = -1;
    t->added_first[0] = t->added_first[1] = -1;
    loadctx c = {t, path};
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        rc = bad(&c, "added_tokens", "must be an array");
        goto fail;
    }
    if (!added || json_is_null(added)) added = NULL;
    json_t *empty = json_array();
    if (!added) added = empty;
    if ((rc = parse_normalizer(&c, json_object_get(root, "normalizer"), "normalizer")) ||
        (rc = parse_pre(&c, json_object_get(root, "pre_tokenizer"), "pre_tokenizer")) ||
        (rc = parse_post(&c, json_object_get(root, "post_processor"), "post_processor")) ||
        (rc = parse_decoder(&c, json_object_get(root, "decoder"), "decoder")) ||
        (rc = parse_model(&c, root, added)) || (rc = parse_added(&c, added))) {
        json_decref(empty);
        goto fail;
    }
    json_decref(empty);
    for (size_t k = 0; k < t->n_prefix; k++)
        if (t->prefix[k] >= t->n_ids) { rc = bad(&c, "post_processor", "a template id is past the vocabulary"); goto fail; }
    for (size_t k = 0; k < t->n_suffix; k++)
        if (t->suffix[k] >= t->n_ids) { rc = bad(&c, "post_processor", "a template id is past the vocabulary"); goto fail; }
    if ((rc = configure_specials(t, dir))) goto fail;
    if ((rc = tok_cache_init(t))) goto fail;
    if ((rc = tok_word_cut_init(t))) goto fail;
    json_decref(root);
    free(path);
    *out = t;
    return 0;
fail:
    json_decref(root);
    free(path);
    tokenizer_free(&t);
    return rc;
}

void tokenizer_free(tokenizer **tp) {
    tokenizer *t = tp ? *tp : NULL;
    if (!t) return;
    tok_cache_free(t);
    tok_strmap_free(&t->vocab);
    tok_strmap_free(&t->vocab_raw);
    tok_mergemap_free(&t->merges);
    free(t->join);
    for (size_t i = 0; i < t->n_pre; i++)
        if (t->pre[i].re) pcre2_code_free(t->pre[i].re);
    free(t->pre);
    free(t->norm);
    free(t->dec);
    free(t->added);
    free(t->added_idx[0]);
    free(t->added_idx[1]);
    free(t->prefix);
    free(t->suffix);
    free(t->tok);
    free(t->tok_len);
    free(t->raw);
    free(t->raw_len);
    free(t->is_special);
    while (t->arena) {
        struct tok_chunk *n = t->arena->next;
        free(t->arena);
        t->arena = n;
    }
    free(t);
    *tp = NULL;
}

/* ---- accessors ---- */

int32_t tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }
int32_t tokenizer_bos(const tokenizer *t) { return t->bos; }
int32_t tokenizer_eos(const tokenizer *t) { return t->eos; }
int32_t tokenizer_pad(const tokenizer *t) { return t->pad; }

bool tokenizer_adds_bos(const tokenizer *t) {
    for (size_t i = 0; i < t->n_prefix; i++)
        if (t->prefix[i] == t->bos && t->bos >= 0) return true;
    return false;
}

const char *tokenizer_token(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids ? t->tok[id] : NULL;
}

int32_t tokenizer_token_id(const tokenizer *t, const char *token) { return lookup_any(t, token); }

bool tokenizer_is_special(const tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_ids && t->is_special[id];
}
