/* jinja_value.c: the arena and the renderer's values with Python's semantics, since
 * transformers renders with jinja2: str() of None is "None", floats print as Python's repr,
 * lists and dicts print as Python's repr, tojson is json.dumps(ensure_ascii=False). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jinja_impl.h"

/* ---- arena ---- */

struct jarena_chunk {
    jarena_chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char mem[];
};

#define CHUNK_MIN (64 * 1024)

void *jarena_alloc(jarena *a, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (a->cap && a->used + n > a->cap) {
        if (a->oom) longjmp(*a->oom, 2);
        return NULL;
    }
    jarena_chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > CHUNK_MIN / 2 ? n : CHUNK_MIN;
        c = malloc(sizeof *c + size);
        if (!c) {
            if (a->oom) longjmp(*a->oom, 2);
            return NULL;
        }
        c->size = size;
        c->used = 0;
        /* a big allocation gets its own chunk behind the current one, which keeps its room */
        if (a->head && size > CHUNK_MIN) {
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->mem + c->used;
    c->used += n;
    a->used += n;
    memset(p, 0, n);
    return p;
}

void jarena_free(jarena *a) {
    jarena_chunk *c = a->head;
    while (c) {
        jarena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->used = 0;
}

/* ---- strings, lists, dicts ---- */

jv jv_str(jarena *a, const char *p, size_t n) {
    jstr *s = jarena_alloc(a, sizeof *s + n + 1);
    s->len = n;
    if (n) memcpy(s->p, p, n);
    s->p[n] = 0;
    return (jv){.t = JV_STR, .u.s = s};
}

jv jv_cstr(jarena *a, const char *p) { return jv_str(a, p, strlen(p)); }

jlist *jlist_new(jarena *a, size_t cap) {
    jlist *l = jarena_alloc(a, sizeof *l);
    l->cap = cap;
    l->v = cap ? jarena_alloc(a, cap * sizeof *l->v) : NULL;
    return l;
}

void jlist_push(jarena *a, jlist *l, jv x) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        jv *v = jarena_alloc(a, cap * sizeof *v);
        if (l->n) memcpy(v, l->v, l->n * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

jdict *jdict_new(jarena *a, size_t cap) {
    jdict *d = jarena_alloc(a, sizeof *d);
    d->cap = cap;
    if (cap) {
        d->k = jarena_alloc(a, cap * sizeof *d->k);
        d->v = jarena_alloc(a, cap * sizeof *d->v);
    }
    return d;
}

jv *jdict_get(const jdict *d, jv k) {
    if (k.t == JV_STR) return jdict_gets(d, k.u.s->p, k.u.s->len);
    for (size_t i = 0; i < d->n; i++)
        if (jv_equal(d->k[i], k)) return &d->v[i];
    return NULL;
}

jv *jdict_gets(const jdict *d, const char *k, size_t n) {
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s->len == n && !memcmp(d->k[i].u.s->p, k, n)) return &d->v[i];
    return NULL;
}

void jdict_set(jarena *a, jdict *d, jv k, jv v) {
    jv *old = jdict_get(d, k);
    if (old) {
        *old = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        jv *nk = jarena_alloc(a, cap * sizeof *nk), *nv = jarena_alloc(a, cap * sizeof *nv);
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof *nk);
            memcpy(nv, d->v, d->n * sizeof *nv);
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

/* ---- truth, equality, order ---- */

bool jv_truthy(jv x) {
    switch (x.t) {
    case JV_UNDEF:
    case JV_NONE: return false;
    case JV_BOOL: return x.u.b;
    case JV_INT: return x.u.i != 0;
    case JV_FLOAT: return x.u.f != 0;
    case JV_STR: return x.u.s->len != 0;
    case JV_LIST: return x.u.l->n != 0;
    case JV_DICT: return x.u.d->n != 0;
    default: return true;
    }
}

static bool is_num(jv x) { return x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL; }
static double num(jv x) { return x.t == JV_FLOAT ? x.u.f : x.t == JV_INT ? (double)x.u.i : (double)x.u.b; }

bool jv_equal(jv a, jv b) {
    if (is_num(a) && is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) return (a.t == JV_INT ? a.u.i : a.u.b) == (b.t == JV_INT ? b.u.i : b.u.b);
        return num(a) == num(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE: return true;
    case JV_STR: return a.u.s->len == b.u.s->len && !memcmp(a.u.s->p, b.u.s->p, a.u.s->len);
    case JV_LIST:
        if (a.u.l->n != b.u.l->n) return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_equal(a.u.l->v[i], b.u.l->v[i])) return false;
        return true;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n) return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            jv *o = jdict_get(b.u.d, a.u.d->k[i]);
            if (!o || !jv_equal(a.u.d->v[i], *o)) return false;
        }
        return true;
    default: return a.u.d == b.u.d;
    }
}

int jv_compare(jv a, jv b, bool *ok) {
    *ok = true;
    if (is_num(a) && is_num(b)) {
        if (a.t == JV_INT && b.t == JV_INT) return a.u.i < b.u.i ? -1 : a.u.i > b.u.i;
        double x = num(a), y = num(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        /* byte order of UTF-8 is code point order, as Python compares */
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int c = memcmp(a.u.s->p, b.u.s->p, n);
        if (c) return c < 0 ? -1 : 1;
        return a.u.s->len < b.u.s->len ? -1 : a.u.s->len > b.u.s->len;
    }
    if (a.t == JV_LIST && b.t == JV_LIST) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            int c = jv_compare(a.u.l->v[i], b.u.l->v[i], ok);
            if (!*ok || c) return c;
        }
        return a.u.l->n < b.u.l->n ? -1 : a.u.l->n > b.u.l->n;
    }
    *ok = false;
    return 0;
}

const char *jv_type_name(jv x) {
    switch (x.t) {
    case JV_UNDEF: return "Undefined";
    case JV_NONE: return "NoneType";
    case JV_BOOL: return "bool";
    case JV_INT: return "int";
    case JV_FLOAT: return "float";
    case JV_STR: return "str";
    case JV_LIST: return "list";
    case JV_DICT: return "dict";
    case JV_NS: return "Namespace";
    case JV_LOOP: return "LoopContext";
    default: return "function";
    }
}

/* ---- output buffer ---- */

void jbuf_put(jbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        if (b->limit && b->n + n > b->limit) {
            if (b->a && b->a->oom) longjmp(*b->a->oom, 3);
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p;
        if (b->a) {
            p = jarena_alloc(b->a, cap);
            if (p && b->n) memcpy(p, b->p, b->n);
        } else {
            p = realloc(b->p, cap);
        }
        if (!p) {
            if (b->a && b->a->oom) longjmp(*b->a->oom, 2);
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* ---- str() and repr() ---- */

void jv_write_float(jbuf *b, double f) {
    char s[40];
    if (isnan(f)) {
        jbuf_puts(b, "nan");
        return;
    }
    if (isinf(f)) {
        jbuf_puts(b, f < 0 ? "-inf" : "inf");
        return;
    }
    /* the shortest digits that read back as f, laid out as Python's repr does */
    int prec;
    for (prec = 1; prec < 17; prec++) {
        snprintf(s, sizeof s, "%.*e", prec - 1, f);
        if (strtod(s, NULL) == f) break;
    }
    snprintf(s, sizeof s, "%.*e", prec - 1, f);
    /* s = [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = s[0] == '-';
    const char *p = s + neg;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    int exp = atoi(p + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    if (neg) jbuf_put(b, "-", 1);
    if (exp < -4 || exp >= 16) {
        jbuf_put(b, digits, 1);
        if (nd > 1) {
            jbuf_put(b, ".", 1);
            jbuf_put(b, digits + 1, (size_t)nd - 1);
        }
        snprintf(s, sizeof s, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        jbuf_puts(b, s);
    } else if (exp < 0) {
        jbuf_puts(b, "0.");
        for (int i = 0; i < -exp - 1; i++) jbuf_put(b, "0", 1);
        jbuf_put(b, digits, (size_t)nd);
    } else {
        if (nd <= exp + 1) {
            jbuf_put(b, digits, (size_t)nd);
            for (int i = nd; i < exp + 1; i++) jbuf_put(b, "0", 1);
            jbuf_puts(b, ".0");
        } else {
            jbuf_put(b, digits, (size_t)exp + 1);
            jbuf_put(b, ".", 1);
            jbuf_put(b, digits + exp + 1, (size_t)(nd - exp - 1));
        }
    }
}

static void write_int(jbuf *b, int64_t i) {
    char s[24];
    int n = snprintf(s, sizeof s, "%lld", (long long)i);
    jbuf_put(b, s, (size_t)n);
}

/* Python's repr of a str: single quotes unless the text has ' and no " */
static void write_str_repr(jbuf *b, const jstr *s) {
    char q = memchr(s->p, '\'', s->len) && !memchr(s->p, '"', s->len) ? '"' : '\'';
    jbuf_put(b, &q, 1);
    size_t i = 0;
    while (i < s->len) {
        unsigned char c = (unsigned char)s->p[i];
        char e[8];
        if (c == '\\' || c == (unsigned char)q) {
            e[0] = '\\';
            e[1] = (char)c;
            jbuf_put(b, e, 2);
        } else if (c == '\n') jbuf_put(b, "\\n", 2);
        else if (c == '\r') jbuf_put(b, "\\r", 2);
        else if (c == '\t') jbuf_put(b, "\\t", 2);
        else if (c < 0x20 || c == 0x7f) {
            snprintf(e, sizeof e, "\\x%02x", c);
            jbuf_put(b, e, 4);
        } else if (c < 0x80) jbuf_put(b, (const char *)&s->p[i], 1);
        else {
            size_t adv;
            uint32_t cp = ju8_decode(s->p + i, s->len - i, &adv);
            if (cp >= 0x80 && cp < 0xa0) {
                snprintf(e, sizeof e, "\\x%02x", cp);
                jbuf_put(b, e, 4);
            } else {
                jbuf_put(b, s->p + i, adv);
            }
            i += adv;
            continue;
        }
        i++;
    }
    jbuf_put(b, &q, 1);
}

void jv_write_repr(jbuf *b, jv x) {
    switch (x.t) {
    case JV_STR: write_str_repr(b, x.u.s); return;
    case JV_LIST:
        jbuf_put(b, x.u.l->tuple ? "(" : "[", 1);
        for (size_t i = 0; i < x.u.l->n; i++) {
            if (i) jbuf_put(b, ", ", 2);
            jv_write_repr(b, x.u.l->v[i]);
        }
        if (x.u.l->tuple && x.u.l->n == 1) jbuf_put(b, ",", 1);
        jbuf_put(b, x.u.l->tuple ? ")" : "]", 1);
        return;
    case JV_DICT:
        jbuf_put(b, "{", 1);
        for (size_t i = 0; i < x.u.d->n; i++) {
            if (i) jbuf_put(b, ", ", 2);
            jv_write_repr(b, x.u.d->k[i]);
            jbuf_put(b, ": ", 2);
            jv_write_repr(b, x.u.d->v[i]);
        }
        jbuf_put(b, "}", 1);
        return;
    case JV_UNDEF: return;
    default: jv_write_str(b, x);
    }
}

void jv_write_str(jbuf *b, jv x) {
    switch (x.t) {
    case JV_UNDEF: return;
    case JV_NONE: jbuf_puts(b, "None"); return;
    case JV_BOOL: jbuf_puts(b, x.u.b ? "True" : "False"); return;
    case JV_INT: write_int(b, x.u.i); return;
    case JV_FLOAT: jv_write_float(b, x.u.f); return;
    case JV_STR: jbuf_put(b, x.u.s->p, x.u.s->len); return;
    case JV_LIST:
    case JV_DICT: jv_write_repr(b, x); return;
    case JV_NS: jbuf_puts(b, "<Namespace>"); return;
    case JV_LOOP: jbuf_puts(b, "<LoopContext>"); return;
    default: jbuf_puts(b, "<function>"); return;
    }
}

jv jv_to_str(jarena *a, jv x) {
    if (x.t == JV_STR) return x;
    jbuf b = {.a = a};
    jv_write_str(&b, x);
    return jv_str(a, b.p ? b.p : "", b.n);
}

/* ---- JSON ---- */

static void json_indent(jbuf *b, const jjson_opts *o, int depth) {
    jbuf_put(b, "\n", 1);
    for (int i = 0; i < o->indent * depth; i++) jbuf_put(b, " ", 1);
}

static void json_str_out(jbuf *b, const char *p, size_t n) {
    jbuf_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        const char *e = NULL;
        char u[8];
        if (c == '"') e = "\\\"";
        else if (c == '\\') e = "\\\\";
        else if (c == '\n') e = "\\n";
        else if (c == '\r') e = "\\r";
        else if (c == '\t') e = "\\t";
        else if (c == '\b') e = "\\b";
        else if (c == '\f') e = "\\f";
        else if (c < 0x20) {
            snprintf(u, sizeof u, "\\u%04x", c);
            e = u;
        }
        if (e) {
            jbuf_put(b, p + run, i - run);
            jbuf_puts(b, e);
            run = i + 1;
        }
    }
    jbuf_put(b, p + run, n - run);
    jbuf_put(b, "\"", 1);
}

typedef struct kv_ref {
    jv k, v;
} kv_ref;

static int kv_cmp(const void *x, const void *y) {
    const kv_ref *a = x, *b = y;
    bool ok;
    return jv_compare(a->k, b->k, &ok);
}

int jv_write_json(jbuf *b, jv x, const jjson_opts *o, int depth) {
    if (depth > 512) return -1;
    switch (x.t) {
    case JV_NONE: jbuf_puts(b, "null"); return 0;
    case JV_BOOL: jbuf_puts(b, x.u.b ? "true" : "false"); return 0;
    case JV_INT: write_int(b, x.u.i); return 0;
    case JV_FLOAT:
        if (isnan(x.u.f)) jbuf_puts(b, "NaN");
        else if (isinf(x.u.f)) jbuf_puts(b, x.u.f < 0 ? "-Infinity" : "Infinity");
        else jv_write_float(b, x.u.f);
        return 0;
    case JV_STR: json_str_out(b, x.u.s->p, x.u.s->len); return 0;
    case JV_LIST:
        if (!x.u.l->n) {
            jbuf_puts(b, "[]");
            return 0;
        }
        jbuf_put(b, "[", 1);
        for (size_t i = 0; i < x.u.l->n; i++) {
            if (i) jbuf_puts(b, o->item_sep);
            if (o->indent >= 0) json_indent(b, o, depth + 1);
            if (jv_write_json(b, x.u.l->v[i], o, depth + 1)) return -1;
        }
        if (o->indent >= 0) json_indent(b, o, depth);
        jbuf_put(b, "]", 1);
        return 0;
    case JV_DICT:
    case JV_NS: {
        jdict *d = x.u.d;
        if (!d->n) {
            jbuf_puts(b, "{}");
            return 0;
        }
        kv_ref *kv = jarena_alloc(b->a, d->n * sizeof *kv);
        if (!kv) return -1;
        for (size_t i = 0; i < d->n; i++) {
            if (d->k[i].t != JV_STR) return -1;
            kv[i] = (kv_ref){d->k[i], d->v[i]};
        }
        if (o->sort_keys) qsort(kv, d->n, sizeof *kv, kv_cmp);
        jbuf_put(b, "{", 1);
        for (size_t i = 0; i < d->n; i++) {
            if (i) jbuf_puts(b, o->item_sep);
            if (o->indent >= 0) json_indent(b, o, depth + 1);
            json_str_out(b, kv[i].k.u.s->p, kv[i].k.u.s->len);
            jbuf_puts(b, o->key_sep);
            if (jv_write_json(b, kv[i].v, o, depth + 1)) return -1;
        }
        if (o->indent >= 0) json_indent(b, o, depth);
        jbuf_put(b, "}", 1);
        return 0;
    }
    default: return -1;
    }
}

jv jv_from_json(jarena *a, const json_t *j) {
    switch (json_typeof(j)) {
    case JSON_NULL: return jv_none();
    case JSON_TRUE: return jv_bool(true);
    case JSON_FALSE: return jv_bool(false);
    case JSON_INTEGER: return jv_int((int64_t)json_integer_value(j));
    case JSON_REAL: return jv_float(json_real_value(j));
    case JSON_STRING: return jv_str(a, json_string_value(j), json_string_length(j));
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        jlist *l = jlist_new(a, n);
        for (size_t i = 0; i < n; i++) l->v[i] = jv_from_json(a, json_array_get(j, i));
        l->n = n;
        return jv_list(l);
    }
    case JSON_OBJECT: {
        jdict *d = jdict_new(a, json_object_size(j));
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            d->k[d->n] = jv_cstr(a, k);
            d->v[d->n++] = jv_from_json(a, v);
        }
        return jv_dict(d);
    }
    }
    return jv_undef();
}

/* ---- UTF-8 (inputs are validated before they get here) ---- */

uint32_t ju8_decode(const char *s, size_t n, size_t *adv) {
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80 || n < 2) {
        *adv = 1;
        return u[0];
    }
    if (u[0] < 0xe0) {
        *adv = 2;
        return (uint32_t)(u[0] & 0x1f) << 6 | (u[1] & 0x3f);
    }
    if (u[0] < 0xf0 || n < 4) {
        *adv = n < 3 ? n : 3;
        return n < 3 ? 0xfffd : (uint32_t)(u[0] & 0x0f) << 12 | (uint32_t)(u[1] & 0x3f) << 6 | (u[2] & 0x3f);
    }
    *adv = 4;
    return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3f) << 12 | (uint32_t)(u[2] & 0x3f) << 6 | (u[3] & 0x3f);
}

void ju8_encode(jbuf *b, uint32_t cp) {
    char s[4];
    if (cp < 0x80) {
        s[0] = (char)cp;
        jbuf_put(b, s, 1);
    } else if (cp < 0x800) {
        s[0] = (char)(0xc0 | cp >> 6);
        s[1] = (char)(0x80 | (cp & 0x3f));
        jbuf_put(b, s, 2);
    } else if (cp < 0x10000) {
        s[0] = (char)(0xe0 | cp >> 12);
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[2] = (char)(0x80 | (cp & 0x3f));
        jbuf_put(b, s, 3);
    } else {
        s[0] = (char)(0xf0 | cp >> 18);
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        s[3] = (char)(0x80 | (cp & 0x3f));
        jbuf_put(b, s, 4);
    }
}

size_t ju8_count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xc0) != 0x80;
    return k;
}

size_t ju8_offset(const char *s, size_t n, size_t k) {
    size_t i = 0;
    while (i < n && k) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xc0) == 0x80) i++;
        k--;
    }
    return i;
}

bool ju8_isspace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f ||
           cp == 0x3000;
}
