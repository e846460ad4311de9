/* chat_format.c: a chat record through its model's Jinja template, cut into trained and
 * untrained pieces (see chat_format.h).
 *
 * The placeholder diff: render R with the real messages and P with turn i's content replaced by
 * a placeholder; the longest common prefix and suffix of R and P bound turn i's rendered content
 * in R. If the content happens to begin (or end) with the placeholder's first (last) character
 * the common prefix (suffix) runs too far; a second placeholder with other characters bounds it
 * from the other side, and the smaller of the two is right, since no text can begin with both.
 * The placeholders are control characters that Python's strip() keeps and no template tests. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "train/chat_format.h"

static const char PH1[] = "\x01\x02\x03", PH2[] = "\x04\x05\x06";
#define PH_LEN 3

typedef struct span {
    size_t b, e;
} span;

typedef struct spans {
    span *v;
    size_t n, cap;
} spans;

/* empty spans are kept: an empty turn still has its end-of-turn marker trained */
static int span_add(spans *s, size_t b, size_t e) {
    if (e < b) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        span *v = realloc(s->v, cap * sizeof *v);
        if (!v) return err_set(ERR_STAGE, "out of memory");
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (span){b, e};
    return 0;
}

static int span_cmp(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b;
}

static const char *role_alias(const char *r) {
    if (!strcmp(r, "human")) return "user";
    if (!strcmp(r, "gpt")) return "assistant";
    return r;
}

int chat_format_messages(const chat_format_opts *o, const json_t *rec, json_t **messages, bool **train) {
    *messages = NULL;
    if (train) *train = NULL;
    const char *field = o->field_messages ? o->field_messages : "messages";
    const char *rk = o->role_key ? o->role_key : "role", *ck = o->content_key ? o->content_key : "content";
    json_t *list = json_object_get(rec, field);
    if (!list && !o->field_messages) {
        list = json_object_get(rec, "conversations");
        if (list && !o->role_key) rk = "from";
        if (list && !o->content_key) ck = "value";
        field = "conversations";
    }
    if (!list)
        return err_set(ERR_DATA, "missing '%s'%s", field,
                       o->field_messages ? " (field_messages)" : " (or ShareGPT 'conversations'; field_messages names another key)");
    if (!json_is_array(list) || json_array_size(list) == 0) return err_set(ERR_DATA, "'%s' must be a non-empty list", field);
    size_t n = json_array_size(list);
    json_t *out = json_array();
    bool *tr = calloc(n, sizeof *tr);
    if (!out || !tr) {
        json_decref(out);
        free(tr);
        return err_set(ERR_STAGE, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(list, i);
        if (!json_is_object(m)) {
            json_decref(out);
            free(tr);
            return err_set(ERR_DATA, "message %zu: expected an object", i);
        }
        const char *role = json_string_value(json_object_get(m, rk));
        if (!role) {
            json_decref(out);
            free(tr);
            return err_set(ERR_DATA, "message %zu: needs a string '%s' (message_property_mappings.role names another key)", i, rk);
        }
        json_t *nm = json_object();
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v) {
            if (!strcmp(k, rk) || !strcmp(k, ck) || !strcmp(k, "train") || !strcmp(k, "training")) continue;
            json_object_set(nm, k, v);
        }
        json_object_set_new(nm, "role", json_string(role_alias(role)));
        json_t *content = json_object_get(m, ck);
        if (content) json_object_set(nm, "content", content);
        json_t *t = json_object_get(m, "train");
        if (!t) t = json_object_get(m, "training");
        if (t && !json_is_boolean(t)) {
            json_decref(nm);
            json_decref(out);
            free(tr);
            return err_set(ERR_DATA, "message %zu: 'train' must be true or false", i);
        }
        tr[i] = !t || json_is_true(t);
        json_array_append_new(out, nm);
    }
    *messages = out;
    if (train) *train = tr;
    else free(tr);
    return 0;
}

static bool role_trained(const chat_format_opts *o, const char *role) {
    if (!o->roles_to_train) return !strcmp(role, "assistant");
    for (size_t i = 0; i < o->n_roles; i++)
        if (!strcmp(o->roles_to_train[i], role)) return true;
    return false;
}

static int render(const chat_format_opts *o, json_t *msgs, const json_t *rec, jinja_result *r) {
    return chat_template_render(o->tpl, msgs, json_object_get(rec, "tools"), json_object_get(rec, "documents"), o->kwargs,
                                false, &o->lim, r);
}

/* the common prefix and suffix of R and the placeholder rendering */
static int diff_with(const chat_format_opts *o, json_t *msgs, const json_t *rec, json_t *msg, const char *ph,
                     const jinja_result *R, size_t *pre, size_t *suf, bool *exact) {
    json_t *saved = json_incref(json_object_get(msg, "content"));
    json_object_set_new(msg, "content", json_string(ph));
    jinja_result P;
    int rc = render(o, msgs, rec, &P);
    json_object_set_new(msg, "content", saved);
    if (rc) return rc;
    size_t p = 0, n = R->len < P.len ? R->len : P.len;
    while (p < n && R->text[p] == P.text[p]) p++;
    size_t s = 0;
    while (s < n - p && R->text[R->len - 1 - s] == P.text[P.len - 1 - s]) s++;
    /* exact when the placeholder stands whole at both ends of the differing region */
    *exact = P.len >= p + s + PH_LEN && !memcmp(P.text + p, ph, PH_LEN) && !memcmp(P.text + P.len - s - PH_LEN, ph, PH_LEN);
    *pre = p;
    *suf = s;
    jinja_result_free(&P);
    return 0;
}

static int content_span(const chat_format_opts *o, json_t *msgs, const json_t *rec, json_t *msg, const jinja_result *R,
                        span *out) {
    size_t p1, s1, p2, s2;
    bool exact;
    int rc = diff_with(o, msgs, rec, msg, PH1, R, &p1, &s1, &exact);
    if (!rc && !exact) {
        bool exact2;
        rc = diff_with(o, msgs, rec, msg, PH2, R, &p2, &s2, &exact2);
        if (p2 < p1) p1 = p2;
        if (s2 < s1) s1 = s2;
    }
    if (rc) return rc;
    if (p1 + s1 > R->len) s1 = R->len - p1;
    *out = (span){p1, R->len - s1};
    return 0;
}

/* the first end-of-turn text at or after pos (before limit); false when none */
static bool find_eot(const chat_format_opts *o, const jinja_result *R, size_t pos, size_t limit, span *out) {
    const char *best = NULL;
    size_t best_len = 0;
    for (size_t k = 0; k < o->n_eot; k++) {
        size_t l = strlen(o->eot[k]);
        if (!l || pos >= R->len) continue;
        const char *hit = memmem(R->text + pos, R->len - pos, o->eot[k], l);
        if (hit && (size_t)(hit - R->text) + l <= limit && (!best || hit < best)) {
            best = hit;
            best_len = l;
        }
    }
    if (!best) return false;
    *out = (span){(size_t)(best - R->text), (size_t)(best - R->text) + best_len};
    return true;
}

static bool ends_with_eot(const chat_format_opts *o, const jinja_result *R, span s) {
    for (size_t k = 0; k < o->n_eot; k++) {
        size_t l = strlen(o->eot[k]);
        if (l && s.e - s.b >= l && !memcmp(R->text + s.e - l, o->eot[k], l)) return true;
    }
    return false;
}

/* trained content spans (in order) -> plus the end-of-turn spans train_on_eos asks for */
static int add_eots(const chat_format_opts *o, const jinja_result *R, spans *content, spans *all) {
    int rc = 0;
    for (size_t i = 0; i < content->n && !rc; i++) rc = span_add(all, content->v[i].b, content->v[i].e);
    if (o->train_on_eos == CHAT_EOS_NONE || rc) return rc;
    if (o->train_on_eos == CHAT_EOS_ALL) {
        span e;
        for (size_t pos = 0; !rc && find_eot(o, R, pos, R->len, &e); pos = e.e) rc = span_add(all, e.b, e.e);
        return rc;
    }
    for (size_t i = 0; i < content->n && !rc; i++) {
        if (o->train_on_eos == CHAT_EOS_LAST && i + 1 < content->n) continue;
        if (ends_with_eot(o, R, content->v[i])) continue; /* a generation block that holds its marker */
        size_t limit = i + 1 < content->n ? content->v[i + 1].b : R->len;
        span e;
        if (find_eot(o, R, content->v[i].e, limit, &e)) rc = span_add(all, e.b, e.e);
    }
    return rc;
}

static int seg_push(hooks_format_result *f, const char *p, size_t n, bool train) {
    if (!n) return 0;
    if (f->n && f->seg[f->n - 1].train == train) { /* extend the last piece */
        hooks_segment *s = &f->seg[f->n - 1];
        char *t = realloc(s->text, s->len + n + 1);
        if (!t) return err_set(ERR_STAGE, "out of memory");
        memcpy(t + s->len, p, n);
        s->len += n;
        t[s->len] = 0;
        s->text = t;
        return 0;
    }
    hooks_segment *ns = realloc(f->seg, (size_t)(f->n + 1) * sizeof *ns);
    if (!ns) return err_set(ERR_STAGE, "out of memory");
    f->seg = ns;
    char *t = malloc(n + 1);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    memcpy(t, p, n);
    t[n] = 0;
    f->seg[f->n++] = (hooks_segment){t, n, train};
    return 0;
}

int chat_format_record(const chat_format_opts *o, const json_t *rec, hooks_format_result *f) {
    json_t *msgs = NULL;
    bool *train = NULL;
    int rc = chat_format_messages(o, rec, &msgs, &train);
    if (rc) return rc;
    jinja_result R = {0};
    spans content = {0}, all = {0};
    rc = render(o, msgs, rec, &R);
    size_t n = json_array_size(msgs);
    if (!rc && jinja_has_generation(o->tpl->tpl)) {
        /* {% generation %} spans are the assistant turns, in order: per-turn train flags apply
         * when they pair up one to one */
        size_t n_asst = 0;
        for (size_t i = 0; i < n; i++) n_asst += !strcmp(json_string_value(json_object_get(json_array_get(msgs, i), "role")), "assistant");
        for (size_t g = 0, i = 0; g < R.n_gen && !rc; g++) {
            bool keep = true;
            if (n_asst == R.n_gen) {
                while (i < n && strcmp(json_string_value(json_object_get(json_array_get(msgs, i), "role")), "assistant")) i++;
                keep = i < n && train[i] && role_trained(o, "assistant");
                i++;
            }
            if (keep) rc = span_add(&content, R.gen[g].begin, R.gen[g].end);
        }
    } else {
        for (size_t i = 0; i < n && !rc; i++) {
            json_t *m = json_array_get(msgs, i);
            if (!train[i] || !role_trained(o, json_string_value(json_object_get(m, "role")))) continue;
            if (!json_is_string(json_object_get(m, "content"))) continue; /* no text to find (tool calls only, parts) */
            span s;
            rc = content_span(o, msgs, rec, m, &R, &s);
            if (!rc) rc = span_add(&content, s.b, s.e);
        }
    }
    if (!rc) {
        qsort(content.v, content.n, sizeof *content.v, span_cmp);
        rc = add_eots(o, &R, &content, &all);
    }
    if (!rc) {
        qsort(all.v, all.n, sizeof *all.v, span_cmp);
        f->kind = HOOKS_FORMAT_SEGMENTS;
        size_t pos = 0;
        for (size_t i = 0; i < all.n && !rc; i++) {
            size_t b = all.v[i].b < pos ? pos : all.v[i].b;
            if (all.v[i].e <= b) continue;
            rc = seg_push(f, R.text + pos, b - pos, false);
            if (!rc) rc = seg_push(f, R.text + b, all.v[i].e - b, true);
            pos = all.v[i].e;
        }
        if (!rc) rc = seg_push(f, R.text + pos, R.len - pos, false);
        if (!rc && f->n == 0) { /* an empty rendering: one empty piece */
            f->seg = calloc(1, sizeof *f->seg);
            if (f->seg) f->seg[0].text = calloc(1, 1);
            if (!f->seg || !f->seg[0].text) rc = err_set(ERR_STAGE, "out of memory");
            else f->n = 1;
        }
    }
    jinja_result_free(&R);
    free(content.v);
    free(all.v);
    free(train);
    json_decref(msgs);
    return rc;
}
