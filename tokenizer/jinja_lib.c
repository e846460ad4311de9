/* jinja_lib.c: what a template can call. jinja2's filters and tests that chat templates use,
 * the Python str and dict methods they call (strip, split, startswith, get, items, ...), and
 * the globals transformers gives them (raise_exception, strftime_now) plus jinja2's range,
 * namespace and dict. Strings are UTF-8 and counted in code points as Python counts them.
 * Upper and lower case cover ASCII, Latin-1, Greek and Cyrillic (docs/chat-templates.md). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_impl.h"

enum builtin_id {
    F_RANGE, F_NAMESPACE, F_RAISE, F_STRFTIME, F_DICT,
    M_STRIP, M_LSTRIP, M_RSTRIP, M_SPLIT, M_RSPLIT, M_STARTSWITH, M_ENDSWITH, M_REPLACE, M_UPPER, M_LOWER,
    M_TITLE, M_CAPITALIZE, M_FIND, M_COUNT, M_JOIN, M_ISDIGIT, M_ISALPHA, M_ISSPACE, M_ISUPPER, M_ISLOWER,
    M_SPLITLINES, M_REMOVEPREFIX, M_REMOVESUFFIX, M_RFIND, M_INDEX,
    M_GET, M_ITEMS, M_KEYS, M_VALUES
};

#define EQ(a, n, lit) ((n) == sizeof(lit) - 1 && !memcmp((a), (lit), (n)))

static jv mkfunc(jrender *r, int id, jv self) {
    jfunc *f = jarena_alloc(&r->arena, sizeof *f);
    f->id = id;
    f->self = self;
    return (jv){.t = JV_FUNC, .u.fn = f};
}

static jv str_of(jrender *r, const jbuf *b) { return jv_str(&r->arena, b->p ? b->p : "", b->n); }
static jbuf newbuf(jrender *r) { return (jbuf){.a = &r->arena, .limit = r->lim.max_output}; }

/* ---- case mapping ---- */

static uint32_t cp_upper(uint32_t c) {
    if (c >= 'a' && c <= 'z') return c - 32;
    if (c < 0x80) return c;
    if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
    if (c == 0xff) return 0x178;
    if (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) return c - 32;
    if (c == 0x3c2) return 0x3a3;
    if (c >= 0x430 && c <= 0x44f) return c - 32;
    if (c >= 0x450 && c <= 0x45f) return c - 80;
    return c;
}

static uint32_t cp_lower(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c < 0x80) return c;
    if (c >= 0xc0 && c <= 0xde && c != 0xd7) return c + 32;
    if (c == 0x178) return 0xff;
    if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2) return c + 32;
    if (c >= 0x410 && c <= 0x42f) return c + 32;
    if (c >= 0x400 && c <= 0x40f) return c + 80;
    return c;
}

static bool cp_cased(uint32_t c) { return cp_upper(c) != c || cp_lower(c) != c; }

/* mode: 0 lower, 1 upper, 2 capitalize, 3 title (Python's str.title) */
static jv recase(jrender *r, jv s, int mode) {
    jv x = jv_to_str(&r->arena, s);
    const jstr *t = x.u.s;
    jbuf b = newbuf(r);
    bool prev_cased = false;
    for (size_t i = 0, k = 0; i < t->len; k++) {
        size_t adv;
        uint32_t c = ju8_decode(t->p + i, t->len - i, &adv);
        uint32_t o;
        if (c == 0xdf && (mode == 1 || (mode == 2 && k == 0) || (mode == 3 && !prev_cased))) {
            /* Python upper-cases sharp s to "SS" (title and capitalize to "Ss") */
            jbuf_puts(&b, mode == 1 ? "SS" : "Ss");
            prev_cased = true;
            i += adv;
            continue;
        }
        if (mode == 0) o = cp_lower(c);
        else if (mode == 1) o = cp_upper(c);
        else if (mode == 2) o = k == 0 ? cp_upper(c) : cp_lower(c);
        else {
            o = prev_cased ? cp_lower(c) : cp_upper(c);
            prev_cased = cp_cased(c);
        }
        if (o == c) jbuf_put(&b, t->p + i, adv);
        else ju8_encode(&b, o);
        i += adv;
    }
    return str_of(r, &b);
}

/* jinja2's title filter: words start after white space, '-', '(', '{', '[' or '<' */
static jv title_filter(jrender *r, jv s) {
    jv x = jv_to_str(&r->arena, s);
    const jstr *t = x.u.s;
    jbuf b = newbuf(r);
    bool start = true;
    for (size_t i = 0; i < t->len;) {
        size_t adv;
        uint32_t c = ju8_decode(t->p + i, t->len - i, &adv);
        bool sep = ju8_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
        uint32_t o = sep ? c : start ? cp_upper(c) : cp_lower(c);
        start = sep;
        if (o == c) jbuf_put(&b, t->p + i, adv);
        else ju8_encode(&b, o);
        i += adv;
    }
    return str_of(r, &b);
}

/* ---- str methods ---- */

static bool in_chars(const jstr *chars, uint32_t c) {
    for (size_t i = 0; i < chars->len;) {
        size_t adv;
        if (ju8_decode(chars->p + i, chars->len - i, &adv) == c) return true;
        i += adv;
    }
    return false;
}

/* which: 1 left, 2 right, 3 both; chars NULL: white space */
static jv strip(jrender *r, jv s, const jstr *chars, int which) {
    const jstr *t = s.u.s;
    size_t b = 0, e = t->len;
    if (which & 1)
        while (b < e) {
            size_t adv;
            uint32_t c = ju8_decode(t->p + b, e - b, &adv);
            if (chars ? !in_chars(chars, c) : !ju8_isspace(c)) break;
            b += adv;
        }
    if (which & 2)
        while (e > b) {
            size_t k = e - 1;
            while (k > b && ((unsigned char)t->p[k] & 0xc0) == 0x80) k--;
            size_t adv;
            uint32_t c = ju8_decode(t->p + k, e - k, &adv);
            if (chars ? !in_chars(chars, c) : !ju8_isspace(c)) break;
            e = k;
        }
    if (b == 0 && e == t->len) return s;
    return jv_str(&r->arena, t->p + b, e - b);
}

static jv split(jrender *r, const jstr *t, const jstr *sep, int64_t maxsplit, bool from_right) {
    jlist *l = jlist_new(&r->arena, 0);
    if (!sep) {
        /* runs of white space; leading and trailing ignored */
        size_t i = 0;
        if (from_right && maxsplit >= 0) {
            /* rare: rsplit() with a limit; build from the right, then reverse */
            size_t e = t->len;
            int64_t done = 0;
            while (e > 0) {
                size_t k = e;
                while (k > 0) {
                    size_t p = k - 1;
                    while (p > 0 && ((unsigned char)t->p[p] & 0xc0) == 0x80) p--;
                    size_t adv;
                    if (!ju8_isspace(ju8_decode(t->p + p, k - p, &adv))) break;
                    k = p;
                }
                e = k;
                if (!e) break;
                size_t w = e;
                if (done == maxsplit) {
                    jlist_push(&r->arena, l, strip(r, jv_str(&r->arena, t->p, e), NULL, 1));
                    break;
                }
                while (w > 0) {
                    size_t p = w - 1;
                    while (p > 0 && ((unsigned char)t->p[p] & 0xc0) == 0x80) p--;
                    size_t adv;
                    if (ju8_isspace(ju8_decode(t->p + p, w - p, &adv))) break;
                    w = p;
                }
                jlist_push(&r->arena, l, jv_str(&r->arena, t->p + w, e - w));
                done++;
                e = w;
            }
            for (size_t a = 0, z = l->n ? l->n - 1 : 0; a < z; a++, z--) {
                jv tmp = l->v[a];
                l->v[a] = l->v[z];
                l->v[z] = tmp;
            }
            return jv_list(l);
        }
        int64_t done = 0;
        while (i < t->len) {
            size_t adv;
            while (i < t->len && ju8_isspace(ju8_decode(t->p + i, t->len - i, &adv))) i += adv;
            if (i >= t->len) break;
            if (maxsplit >= 0 && done == maxsplit) {
                jv rest = strip(r, jv_str(&r->arena, t->p + i, t->len - i), NULL, 2);
                jlist_push(&r->arena, l, rest);
                break;
            }
            size_t w = i;
            while (w < t->len && !ju8_isspace(ju8_decode(t->p + w, t->len - w, &adv))) w += adv;
            jlist_push(&r->arena, l, jv_str(&r->arena, t->p + i, w - i));
            done++;
            i = w;
        }
        return jv_list(l);
    }
    if (!sep->len) jr_fail(r, "empty separator");
    if (from_right && maxsplit >= 0) {
        size_t e = t->len;
        int64_t done = 0;
        jlist *rev = jlist_new(&r->arena, 0);
        while (done < maxsplit) {
            const char *hit = NULL;
            for (size_t k = e >= sep->len ? e - sep->len + 1 : 0; k-- > 0;)
                if (!memcmp(t->p + k, sep->p, sep->len)) {
                    hit = t->p + k;
                    break;
                }
            if (!hit) break;
            size_t k = (size_t)(hit - t->p);
            jlist_push(&r->arena, rev, jv_str(&r->arena, hit + sep->len, e - k - sep->len));
            e = k;
            done++;
        }
        jlist_push(&r->arena, l, jv_str(&r->arena, t->p, e));
        for (size_t k = rev->n; k-- > 0;) jlist_push(&r->arena, l, rev->v[k]);
        return jv_list(l);
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *hit = maxsplit >= 0 && done == maxsplit ? NULL : memmem(t->p + i, t->len - i, sep->p, sep->len);
        if (!hit) {
            jlist_push(&r->arena, l, jv_str(&r->arena, t->p + i, t->len - i));
            break;
        }
        jlist_push(&r->arena, l, jv_str(&r->arena, t->p + i, (size_t)(hit - t->p) - i));
        i = (size_t)(hit - t->p) + sep->len;
        done++;
        jr_step(r, 1);
    }
    return jv_list(l);
}

static jv replace(jrender *r, jv s, jv old, jv new_, int64_t count) {
    const jstr *t = s.u.s, *o = old.u.s, *n = new_.u.s;
    jbuf b = newbuf(r);
    int64_t done = 0;
    if (!o->len) {
        /* Python inserts the replacement around every code point */
        size_t i = 0;
        while (count < 0 || done < count) {
            jbuf_put(&b, n->p, n->len);
            done++;
            if (i >= t->len) break;
            size_t adv;
            ju8_decode(t->p + i, t->len - i, &adv);
            jbuf_put(&b, t->p + i, adv);
            i += adv;
        }
        jbuf_put(&b, t->p + i, t->len - i);
        return str_of(r, &b);
    }
    size_t i = 0;
    while (count < 0 || done < count) {
        const char *hit = memmem(t->p + i, t->len - i, o->p, o->len);
        if (!hit) break;
        jbuf_put(&b, t->p + i, (size_t)(hit - t->p) - i);
        jbuf_put(&b, n->p, n->len);
        i = (size_t)(hit - t->p) + o->len;
        done++;
    }
    jbuf_put(&b, t->p + i, t->len - i);
    return str_of(r, &b);
}

static bool affix(const jstr *t, const jstr *a, bool end) {
    if (a->len > t->len) return false;
    return !memcmp(end ? t->p + t->len - a->len : t->p, a->p, a->len);
}

/* ---- iteration ---- */

jv jlib_to_list(jrender *r, jv x) {
    switch (x.t) {
    case JV_LIST: return x;
    case JV_UNDEF: return jv_list(jlist_new(&r->arena, 0));
    case JV_DICT:
    case JV_NS: {
        jlist *l = jlist_new(&r->arena, x.u.d->n);
        memcpy(l->v, x.u.d->k, x.u.d->n * sizeof *l->v);
        l->n = x.u.d->n;
        return jv_list(l);
    }
    case JV_STR: {
        const jstr *s = x.u.s;
        jlist *l = jlist_new(&r->arena, s->len);
        for (size_t i = 0; i < s->len;) {
            size_t adv;
            ju8_decode(s->p + i, s->len - i, &adv);
            l->v[l->n++] = jv_str(&r->arena, s->p + i, adv);
            i += adv;
        }
        jr_step(r, l->n);
        return jv_list(l);
    }
    default: jr_fail(r, "'%s' object is not iterable", jv_type_name(x));
    }
}

static jv items_of(jrender *r, jv d) {
    if (d.t == JV_UNDEF) return jv_list(jlist_new(&r->arena, 0));
    if (d.t != JV_DICT && d.t != JV_NS) jr_fail(r, "items() of a value of type '%s'", jv_type_name(d));
    jlist *l = jlist_new(&r->arena, d.u.d->n);
    for (size_t i = 0; i < d.u.d->n; i++) {
        jlist *p = jlist_new(&r->arena, 2);
        p->v[0] = d.u.d->k[i];
        p->v[1] = d.u.d->v[i];
        p->n = 2;
        p->tuple = true;
        l->v[l->n++] = jv_list(p);
    }
    jr_step(r, l->n);
    return jv_list(l);
}

/* ---- arguments ---- */

typedef struct args {
    const jv *v;
    size_t n;
    const char **kw;
    const jv *kwv;
    size_t nkw;
} args;

/* positional i, or keyword name, or undefined */
static jv arg(const args *a, size_t i, const char *name) {
    if (i < a->n) return a->v[i];
    for (size_t k = 0; k < a->nkw; k++)
        if (!strcmp(a->kw[k], name)) return a->kwv[k];
    return jv_undef();
}

static const jstr *arg_str(jrender *r, const args *a, size_t i, const char *name, const char *fn) {
    jv x = arg(a, i, name);
    if (x.t == JV_UNDEF || x.t == JV_NONE) return NULL;
    if (x.t != JV_STR) jr_fail(r, "%s: argument '%s' must be a string, not %s", fn, name, jv_type_name(x));
    return x.u.s;
}

static int64_t arg_int(jrender *r, const args *a, size_t i, const char *name, int64_t dflt, const char *fn) {
    jv x = arg(a, i, name);
    if (x.t == JV_UNDEF || x.t == JV_NONE) return dflt;
    if (x.t == JV_INT) return x.u.i;
    if (x.t == JV_BOOL) return x.u.b;
    jr_fail(r, "%s: argument '%s' must be an integer, not %s", fn, name, jv_type_name(x));
}

static jv need_str(jrender *r, jv x, const char *what) {
    if (x.t != JV_STR) jr_fail(r, "%s needs a string, not %s", what, jv_type_name(x));
    return x;
}

/* attribute paths "a.b.0" as jinja2's make_attrgetter reads them */
static jv get_path(jrender *r, jv x, const jstr *path) {
    size_t i = 0;
    while (i <= path->len) {
        const char *dot = memchr(path->p + i, '.', path->len - i);
        size_t e = dot ? (size_t)(dot - path->p) : path->len;
        const char *part = path->p + i;
        size_t n = e - i;
        bool digits = n > 0;
        for (size_t k = 0; k < n; k++) digits &= part[k] >= '0' && part[k] <= '9';
        if (x.t == JV_UNDEF) return x;
        if (digits) x = jr_getitem(r, x, jv_int(strtoll(part, NULL, 10)));
        else if (x.t == JV_DICT || x.t == JV_NS) {
            jv *v = jdict_gets(x.u.d, part, n);
            x = v ? *v : jv_undef();
        } else x = jr_getattr(r, x, part, n);
        if (!dot) break;
        i = e + 1;
    }
    return x;
}

/* ---- sorting ---- */

typedef struct sort_ctx {
    jrender *r;
    bool case_sensitive;
} sort_ctx;

static jv sort_key(jrender *r, jv x, bool case_sensitive) {
    if (!case_sensitive && x.t == JV_STR) return recase(r, x, 0);
    return x;
}

static int cmp_keys(jrender *r, jv a, jv b) {
    bool ok;
    int c = jv_compare(a, b, &ok);
    if (!ok) jr_fail(r, "cannot sort: '<' between '%s' and '%s'", jv_type_name(a), jv_type_name(b));
    return c;
}

/* a stable merge sort of (key, value) pairs */
static void msort(jrender *r, jv *k, jv *v, size_t n, jv *tk, jv *tv, bool reverse) {
    if (n < 2) return;
    size_t h = n / 2;
    msort(r, k, v, h, tk, tv, reverse);
    msort(r, k + h, v + h, n - h, tk, tv, reverse);
    size_t i = 0, j = h, o = 0;
    while (i < h && j < n) {
        int c = cmp_keys(r, k[j], k[i]);
        if (reverse ? c > 0 : c < 0) {
            tk[o] = k[j];
            tv[o++] = v[j++];
        } else {
            tk[o] = k[i];
            tv[o++] = v[i++];
        }
    }
    while (i < h) {
        tk[o] = k[i];
        tv[o++] = v[i++];
    }
    while (j < n) {
        tk[o] = k[j];
        tv[o++] = v[j++];
    }
    memcpy(k, tk, n * sizeof *k);
    memcpy(v, tv, n * sizeof *v);
}

static jv sorted(jrender *r, jlist *in, jv *keys, bool reverse) {
    size_t n = in->n;
    jlist *l = jlist_new(&r->arena, n);
    memcpy(l->v, in->v, n * sizeof *l->v);
    l->n = n;
    jv *tk = jarena_alloc(&r->arena, (n + 1) * sizeof *tk), *tv = jarena_alloc(&r->arena, (n + 1) * sizeof *tv);
    jr_step(r, n);
    msort(r, keys, l->v, n, tk, tv, reverse);
    return jv_list(l);
}

/* ---- tests ---- */

static const char *const TESTS[] = {"boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "even",
                                    "false", "float", "ge", "gt", "in", "integer", "iterable", "le", "lower", "lt",
                                    "mapping", "ne", "none", "number", "odd", "sameas", "sequence", "string", "true",
                                    "undefined", "upper", "filter", "test", ">", "<", ">=", "<=", "!=", NULL};

bool jlib_has_test(const char *name) {
    for (const char *const *t = TESTS; *t; t++)
        if (!strcmp(*t, name)) return true;
    return false;
}

bool jlib_test(jrender *r, const char *name, jv x, const jv *av, size_t n) {
    jv a0 = n ? av[0] : jv_undef();
    bool ok;
    if (!strcmp(name, "defined")) return x.t != JV_UNDEF;
    if (!strcmp(name, "undefined")) return x.t == JV_UNDEF;
    if (!strcmp(name, "none")) return x.t == JV_NONE;
    if (!strcmp(name, "string")) return x.t == JV_STR;
    if (!strcmp(name, "mapping")) return x.t == JV_DICT;
    if (!strcmp(name, "iterable")) return x.t == JV_LIST || x.t == JV_DICT || x.t == JV_STR || x.t == JV_UNDEF;
    if (!strcmp(name, "sequence")) return x.t == JV_LIST || x.t == JV_DICT || x.t == JV_STR || x.t == JV_UNDEF;
    if (!strcmp(name, "number")) return x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL;
    if (!strcmp(name, "integer")) return x.t == JV_INT;
    if (!strcmp(name, "float")) return x.t == JV_FLOAT;
    if (!strcmp(name, "boolean")) return x.t == JV_BOOL;
    if (!strcmp(name, "true")) return x.t == JV_BOOL && x.u.b;
    if (!strcmp(name, "false")) return x.t == JV_BOOL && !x.u.b;
    if (!strcmp(name, "callable")) return x.t == JV_FUNC || x.t == JV_MACRO;
    if (!strcmp(name, "even") || !strcmp(name, "odd")) {
        if (x.t != JV_INT) jr_fail(r, "test '%s' needs an integer", name);
        return (x.u.i % 2 == 0) == !strcmp(name, "even");
    }
    if (!strcmp(name, "divisibleby")) {
        if (x.t != JV_INT || a0.t != JV_INT || a0.u.i == 0) jr_fail(r, "divisibleby needs integers (and a non-zero divisor)");
        return x.u.i % a0.u.i == 0;
    }
    if (!strcmp(name, "eq") || !strcmp(name, "equalto") || !strcmp(name, "==")) return jv_equal(x, a0);
    if (!strcmp(name, "ne") || !strcmp(name, "!=")) return !jv_equal(x, a0);
    if (!strcmp(name, "sameas")) return x.t == a0.t && (x.t == JV_NONE || x.t == JV_UNDEF || (x.t == JV_BOOL && x.u.b == a0.u.b) || jv_equal(x, a0));
    if (!strcmp(name, "lt") || !strcmp(name, "<")) return jv_compare(x, a0, &ok) < 0 && ok;
    if (!strcmp(name, "le") || !strcmp(name, "<=")) return jv_compare(x, a0, &ok) <= 0 && ok;
    if (!strcmp(name, "gt") || !strcmp(name, ">")) return jv_compare(x, a0, &ok) > 0 && ok;
    if (!strcmp(name, "ge") || !strcmp(name, ">=")) return jv_compare(x, a0, &ok) >= 0 && ok;
    if (!strcmp(name, "in")) {
        if (a0.t == JV_STR && x.t == JV_STR) return memmem(a0.u.s->p, a0.u.s->len, x.u.s->p, x.u.s->len) || !x.u.s->len;
        if (a0.t == JV_LIST) {
            for (size_t i = 0; i < a0.u.l->n; i++)
                if (jv_equal(a0.u.l->v[i], x)) return true;
            return false;
        }
        if (a0.t == JV_DICT) return jdict_get(a0.u.d, x) != NULL;
        return false;
    }
    if (!strcmp(name, "lower") || !strcmp(name, "upper")) {
        if (x.t != JV_STR) return false;
        jv c = recase(r, x, !strcmp(name, "upper"));
        return jv_equal(c, x);
    }
    if (!strcmp(name, "filter")) return a0.t == JV_STR && jlib_has_filter(a0.u.s->p);
    if (!strcmp(name, "test")) return a0.t == JV_STR && jlib_has_test(a0.u.s->p);
    jr_fail(r, "no test named '%s'", name);
}

/* ---- filters ---- */

static int64_t length_of(jrender *r, jv x) {
    switch (x.t) {
    case JV_STR: return (int64_t)ju8_count(x.u.s->p, x.u.s->len);
    case JV_LIST: return (int64_t)x.u.l->n;
    case JV_DICT:
    case JV_NS: return (int64_t)x.u.d->n;
    case JV_UNDEF: return 0;
    default: jr_fail(r, "object of type '%s' has no len()", jv_type_name(x));
    }
}

/* select/reject/selectattr/rejectattr: keep items whose test (or truth) is want */
static jv select_items(jrender *r, jv seq, const args *a, bool by_attr, bool want) {
    jlist *in = jlib_to_list(r, seq).u.l, *out = jlist_new(&r->arena, 0);
    size_t first = 0;
    const jstr *attr = NULL;
    if (by_attr) {
        if (a->n < 1 || a->v[0].t != JV_STR) jr_fail(r, "selectattr/rejectattr need an attribute name");
        attr = a->v[0].u.s;
        first = 1;
    }
    const char *test = NULL;
    if (a->n > first) {
        if (a->v[first].t != JV_STR) jr_fail(r, "the test name must be a string");
        test = a->v[first].u.s->p;
        if (!jlib_has_test(test)) jr_fail(r, "no test named '%s'", test);
    }
    jr_step(r, in->n);
    for (size_t i = 0; i < in->n; i++) {
        jv x = attr ? get_path(r, in->v[i], attr) : in->v[i];
        bool t = test ? jlib_test(r, test, x, a->v + first + 1, a->n - first - 1) : jv_truthy(x);
        if (t == want) jlist_push(&r->arena, out, in->v[i]);
    }
    return jv_list(out);
}

static jv tojson(jrender *r, jv x, const args *a) {
    jv ind = arg(a, 1, "indent"), seps = arg(a, 2, "separators"), sk = arg(a, 3, "sort_keys");
    jv ea = arg(a, 0, "ensure_ascii");
    if (ea.t != JV_UNDEF && jv_truthy(ea)) jr_fail(r, "tojson: ensure_ascii=True is not supported");
    jjson_opts o = {.indent = -1, .item_sep = ", ", .key_sep = ": ", .sort_keys = jv_truthy(sk)};
    if (ind.t == JV_INT) {
        if (ind.u.i < 0 || ind.u.i > 64) jr_fail(r, "tojson: indent %lld is out of range", (long long)ind.u.i);
        o.indent = (int)ind.u.i;
        o.item_sep = ",";
    } else if (ind.t != JV_UNDEF && ind.t != JV_NONE) {
        jr_fail(r, "tojson: indent must be an integer");
    }
    if (seps.t == JV_LIST) {
        if (seps.u.l->n != 2 || seps.u.l->v[0].t != JV_STR || seps.u.l->v[1].t != JV_STR)
            jr_fail(r, "tojson: separators must be two strings");
        o.item_sep = seps.u.l->v[0].u.s->p;
        o.key_sep = seps.u.l->v[1].u.s->p;
    }
    jbuf b = newbuf(r);
    if (jv_write_json(&b, x, &o, 0)) jr_fail(r, "tojson: a value of type '%s' is not JSON serializable", jv_type_name(x));
    return str_of(r, &b);
}

static jv indent(jrender *r, jv s, const args *a) {
    jv w = arg(a, 0, "width");
    jbuf ind = newbuf(r);
    if (w.t == JV_STR) jbuf_put(&ind, w.u.s->p, w.u.s->len);
    else {
        int64_t k = w.t == JV_INT ? w.u.i : 4;
        for (int64_t i = 0; i < k && i < 1024; i++) jbuf_put(&ind, " ", 1);
    }
    bool first = jv_truthy(arg(a, 1, "first")), blank = jv_truthy(arg(a, 2, "blank"));
    const jstr *t = jv_to_str(&r->arena, s).u.s;
    jbuf b = newbuf(r);
    if (first) jbuf_put(&b, ind.p ? ind.p : "", ind.n);
    size_t i = 0;
    bool line0 = true;
    while (i <= t->len) {
        size_t e = i;
        while (e < t->len && t->p[e] != '\n' && t->p[e] != '\r') e++;
        if (e == t->len && i == t->len && !line0) break; /* splitlines drops the final empty piece */
        if (!line0) {
            jbuf_put(&b, "\n", 1);
            if (blank || e > i) jbuf_put(&b, ind.p ? ind.p : "", ind.n);
        }
        jbuf_put(&b, t->p + i, e - i);
        line0 = false;
        if (e >= t->len) break;
        i = e + (t->p[e] == '\r' && e + 1 < t->len && t->p[e + 1] == '\n' ? 2 : 1);
    }
    return str_of(r, &b);
}

static bool parse_int_text(const jstr *s, int64_t *out) {
    const char *p = s->p, *e = s->p + s->len;
    while (p < e && (*p == ' ' || (*p >= '\t' && *p <= '\r'))) p++;
    while (e > p && (e[-1] == ' ' || (e[-1] >= '\t' && e[-1] <= '\r'))) e--;
    if (p == e) return false;
    bool neg = false;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    if (p == e) return false;
    int64_t v = 0;
    for (; p < e; p++) {
        if (*p == '_') continue;
        if (*p < '0' || *p > '9') return false;
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *p - '0', &v)) return false;
    }
    *out = neg ? -v : v;
    return true;
}

/* One function a filter: x is the value filtered, a its arguments, name the name it was called by. */
typedef jv (*filter_fn)(jrender *r, jv x, const args *a, const char *name);

static jv filter_trim(jrender *r, jv x, const args *a, const char *name) {
    jv s = jv_to_str(&r->arena, x);
    return strip(r, s, arg_str(r, a, 0, "chars", "trim"), 3);
}

static jv filter_tojson(jrender *r, jv x, const args *a, const char *name) { return tojson(r, x, a); }

static jv filter_length(jrender *r, jv x, const args *a, const char *name) { return jv_int(length_of(r, x)); }

static jv filter_safe(jrender *r, jv x, const args *a, const char *name) { return x; }

static jv filter_string(jrender *r, jv x, const args *a, const char *name) { return jv_to_str(&r->arena, x); }

static jv filter_upper(jrender *r, jv x, const args *a, const char *name) { return recase(r, x, 1); }

static jv filter_lower(jrender *r, jv x, const args *a, const char *name) { return recase(r, x, 0); }

static jv filter_capitalize(jrender *r, jv x, const args *a, const char *name) { return recase(r, x, 2); }

static jv filter_title(jrender *r, jv x, const args *a, const char *name) { return title_filter(r, x); }

static jv filter_default(jrender *r, jv x, const args *a, const char *name) {
    jv dflt = arg(a, 0, "default_value");
    bool boolean = jv_truthy(arg(a, 1, "boolean"));
    if (x.t == JV_UNDEF || (boolean && !jv_truthy(x))) return dflt.t == JV_UNDEF ? jv_str(&r->arena, "", 0) : dflt;
    return x;
}

static jv filter_join(jrender *r, jv x, const args *a, const char *name) {
    const jstr *d = arg_str(r, a, 0, "d", "join");
    const jstr *attr = arg_str(r, a, 1, "attribute", "join");
    jlist *l = jlib_to_list(r, x).u.l;
    jr_step(r, l->n);
    jbuf b = newbuf(r);
    for (size_t i = 0; i < l->n; i++) {
        if (i && d) jbuf_put(&b, d->p, d->len);
        jv_write_str(&b, attr ? get_path(r, l->v[i], attr) : l->v[i]);
    }
    return str_of(r, &b);
}

static jv filter_first_last(jrender *r, jv x, const args *a, const char *name) {
    if (x.t == JV_UNDEF) return x;
    jlist *l = jlib_to_list(r, x).u.l;
    if (!l->n) return jv_undef();
    return !strcmp(name, "first") ? l->v[0] : l->v[l->n - 1];
}

static jv filter_list(jrender *r, jv x, const args *a, const char *name) {
    jv l = jlib_to_list(r, x);
    if (x.t != JV_LIST) return l;
    jlist *c = jlist_new(&r->arena, l.u.l->n);
    memcpy(c->v, l.u.l->v, l.u.l->n * sizeof *c->v);
    c->n = l.u.l->n;
    return jv_list(c);
}

static jv filter_items(jrender *r, jv x, const args *a, const char *name) { return items_of(r, x); }

static jv filter_reverse(jrender *r, jv x, const args *a, const char *name) {
    if (x.t == JV_STR) {
        jlist *cs = jlib_to_list(r, x).u.l;
        jbuf b = newbuf(r);
        for (size_t i = cs->n; i-- > 0;) jbuf_put(&b, cs->v[i].u.s->p, cs->v[i].u.s->len);
        return str_of(r, &b);
    }
    jlist *l = jlib_to_list(r, x).u.l, *o = jlist_new(&r->arena, l->n);
    for (size_t i = l->n; i-- > 0;) o->v[o->n++] = l->v[i];
    return jv_list(o);
}

static jv filter_map(jrender *r, jv x, const args *a, const char *name) {
    jlist *l = jlib_to_list(r, x).u.l, *o = jlist_new(&r->arena, l->n);
    jr_step(r, l->n);
    const jstr *attr = NULL;
    for (size_t k = 0; k < a->nkw; k++)
        if (!strcmp(a->kw[k], "attribute")) attr = need_str(r, a->kwv[k], "map(attribute=...)").u.s;
    if (attr) {
        jv dflt = arg(&(args){NULL, 0, a->kw, a->kwv, a->nkw}, 0, "default");
        for (size_t i = 0; i < l->n; i++) {
            jv v = get_path(r, l->v[i], attr);
            o->v[o->n++] = v.t == JV_UNDEF && dflt.t != JV_UNDEF ? dflt : v;
        }
        return jv_list(o);
    }
    if (!a->n || a->v[0].t != JV_STR) jr_fail(r, "map needs a filter name or attribute=");
    const char *f = a->v[0].u.s->p;
    if (!jlib_has_filter(f)) jr_fail(r, "no filter named '%s'", f);
    for (size_t i = 0; i < l->n; i++)
        o->v[o->n++] = jlib_filter(r, f, l->v[i], a->v + 1, a->n - 1, a->kw, a->kwv, a->nkw);
    return jv_list(o);
}

static jv filter_select(jrender *r, jv x, const args *a, const char *name) {
    return select_items(r, x, a, false, true);
}

static jv filter_reject(jrender *r, jv x, const args *a, const char *name) {
    return select_items(r, x, a, false, false);
}

static jv filter_selectattr(jrender *r, jv x, const args *a, const char *name) {
    return select_items(r, x, a, true, true);
}

static jv filter_rejectattr(jrender *r, jv x, const args *a, const char *name) {
    return select_items(r, x, a, true, false);
}

static jv filter_dictsort(jrender *r, jv x, const args *a, const char *name) {
    if (x.t != JV_DICT) jr_fail(r, "dictsort needs a dict, not %s", jv_type_name(x));
    bool cs = jv_truthy(arg(a, 0, "case_sensitive"));
    const jstr *by = arg_str(r, a, 1, "by", "dictsort");
    bool rev = jv_truthy(arg(a, 2, "reverse"));
    bool by_value = by && EQ(by->p, by->len, "value");
    jlist *it = items_of(r, x).u.l;
    jv *keys = jarena_alloc(&r->arena, (it->n + 1) * sizeof *keys);
    for (size_t i = 0; i < it->n; i++) keys[i] = sort_key(r, it->v[i].u.l->v[by_value], cs);
    return sorted(r, it, keys, rev);
}

static jv filter_sort(jrender *r, jv x, const args *a, const char *name) {
    bool rev = jv_truthy(arg(a, 0, "reverse")), cs = jv_truthy(arg(a, 1, "case_sensitive"));
    const jstr *attr = arg_str(r, a, 2, "attribute", "sort");
    jlist *l = jlib_to_list(r, x).u.l;
    jv *keys = jarena_alloc(&r->arena, (l->n + 1) * sizeof *keys);
    for (size_t i = 0; i < l->n; i++) keys[i] = sort_key(r, attr ? get_path(r, l->v[i], attr) : l->v[i], cs);
    return sorted(r, l, keys, rev);
}

static jv filter_unique(jrender *r, jv x, const args *a, const char *name) {
    bool cs = jv_truthy(arg(a, 0, "case_sensitive"));
    const jstr *attr = arg_str(r, a, 1, "attribute", "unique");
    jlist *l = jlib_to_list(r, x).u.l, *o = jlist_new(&r->arena, 0), *seen = jlist_new(&r->arena, 0);
    jr_step(r, l->n * (l->n + 1) / 2 > 1000000 ? 1000000 : l->n * (l->n + 1) / 2);
    for (size_t i = 0; i < l->n; i++) {
        jv k = sort_key(r, attr ? get_path(r, l->v[i], attr) : l->v[i], cs);
        bool dup = false;
        for (size_t j = 0; j < seen->n && !dup; j++) dup = jv_equal(seen->v[j], k);
        if (!dup) {
            jlist_push(&r->arena, seen, k);
            jlist_push(&r->arena, o, l->v[i]);
        }
    }
    return jv_list(o);
}

static jv filter_replace(jrender *r, jv x, const args *a, const char *name) {
    jv s = jv_to_str(&r->arena, x);
    jv old = need_str(r, arg(a, 0, "old"), "replace"), nw = need_str(r, arg(a, 1, "new"), "replace");
    return replace(r, s, old, nw, arg_int(r, a, 2, "count", -1, "replace"));
}

static jv filter_int(jrender *r, jv x, const args *a, const char *name) {
    int64_t dflt = arg_int(r, a, 0, "default", 0, "int");
    if (x.t == JV_INT) return x;
    if (x.t == JV_BOOL) return jv_int(x.u.b);
    if (x.t == JV_FLOAT) return isfinite(x.u.f) && fabs(x.u.f) < 9.2e18 ? jv_int((int64_t)x.u.f) : jv_int(dflt);
    if (x.t == JV_STR) {
        int64_t v;
        if (parse_int_text(x.u.s, &v)) return jv_int(v);
        char *end;
        double f = strtod(x.u.s->p, &end);
        if (end != x.u.s->p && !*end && isfinite(f) && fabs(f) < 9.2e18) return jv_int((int64_t)f);
    }
    return jv_int(dflt);
}

static jv filter_float(jrender *r, jv x, const args *a, const char *name) {
    jv d = arg(a, 0, "default");
    double dflt = d.t == JV_FLOAT ? d.u.f : d.t == JV_INT ? (double)d.u.i : 0.0;
    if (x.t == JV_FLOAT) return x;
    if (x.t == JV_INT) return jv_float((double)x.u.i);
    if (x.t == JV_BOOL) return jv_float(x.u.b);
    if (x.t == JV_STR) {
        char *end;
        double f = strtod(x.u.s->p, &end);
        if (end != x.u.s->p && !*end) return jv_float(f);
    }
    return jv_float(dflt);
}

static jv filter_abs(jrender *r, jv x, const args *a, const char *name) {
    if (x.t == JV_INT) return x.u.i == INT64_MIN ? jv_float(9.223372036854775808e18) : jv_int(x.u.i < 0 ? -x.u.i : x.u.i);
    if (x.t == JV_FLOAT) return jv_float(fabs(x.u.f));
    jr_fail(r, "abs needs a number, not %s", jv_type_name(x));
}

static jv filter_round(jrender *r, jv x, const args *a, const char *name) {
    int64_t prec = arg_int(r, a, 0, "precision", 0, "round");
    const jstr *method = arg_str(r, a, 1, "method", "round");
    double v = x.t == JV_FLOAT ? x.u.f : x.t == JV_INT ? (double)x.u.i : 0;
    double m = pow(10, (double)prec);
    if (method && EQ(method->p, method->len, "floor")) v = floor(v * m) / m;
    else if (method && EQ(method->p, method->len, "ceil")) v = ceil(v * m) / m;
    else v = round(v * m) / m;
    return jv_float(v);
}

static jv filter_sum(jrender *r, jv x, const args *a, const char *name) {
    const jstr *attr = arg_str(r, a, 0, "attribute", "sum");
    jv acc = arg(a, 1, "start");
    if (acc.t == JV_UNDEF) acc = jv_int(0);
    jlist *l = jlib_to_list(r, x).u.l;
    jr_step(r, l->n);
    for (size_t i = 0; i < l->n; i++) {
        jv v = attr ? get_path(r, l->v[i], attr) : l->v[i];
        if ((acc.t == JV_INT || acc.t == JV_FLOAT) && (v.t == JV_INT || v.t == JV_FLOAT || v.t == JV_BOOL)) {
            if (acc.t == JV_INT && v.t != JV_FLOAT) {
                int64_t s;
                if (__builtin_add_overflow(acc.u.i, v.t == JV_INT ? v.u.i : v.u.b, &s)) jr_fail(r, "integer overflow");
                acc = jv_int(s);
            } else {
                acc = jv_float((acc.t == JV_INT ? (double)acc.u.i : acc.u.f) +
                               (v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : v.u.b));
            }
        } else {
            jr_fail(r, "sum: cannot add '%s'", jv_type_name(v));
        }
    }
    return acc;
}

static jv filter_min_max(jrender *r, jv x, const args *a, const char *name) {
    jlist *l = jlib_to_list(r, x).u.l;
    if (!l->n) return jv_undef();
    bool cs = jv_truthy(arg(a, 0, "case_sensitive"));
    const jstr *attr = arg_str(r, a, 1, "attribute", name);
    jv best = l->v[0], bk = sort_key(r, attr ? get_path(r, best, attr) : best, cs);
    for (size_t i = 1; i < l->n; i++) {
        jv k = sort_key(r, attr ? get_path(r, l->v[i], attr) : l->v[i], cs);
        int c = cmp_keys(r, k, bk);
        if (!strcmp(name, "min") ? c < 0 : c > 0) {
            best = l->v[i];
            bk = k;
        }
    }
    return best;
}

static jv filter_attr(jrender *r, jv x, const args *a, const char *name) {
    jv nm = need_str(r, arg(a, 0, "name"), "attr");
    return jr_getattr(r, x, nm.u.s->p, nm.u.s->len);
}

static jv filter_indent(jrender *r, jv x, const args *a, const char *name) { return indent(r, x, a); }

static jv filter_wordcount(jrender *r, jv x, const args *a, const char *name) {
    jv s = jv_to_str(&r->arena, x);
    return jv_int((int64_t)split(r, s.u.s, NULL, -1, false).u.l->n);
}
/* Every filter a template may name (the parser refuses others); a NULL function: known to Jinja
 * but not supported here, which fails when the template reaches it. */
static const struct {
    const char *name;
    filter_fn fn;
} FILTERS[] = {
    {"abs", filter_abs}, {"attr", filter_attr}, {"capitalize", filter_capitalize}, {"count", filter_length},
    {"d", filter_default}, {"default", filter_default}, {"dictsort", filter_dictsort}, {"first", filter_first_last},
    {"float", filter_float}, {"indent", filter_indent}, {"int", filter_int}, {"items", filter_items},
    {"join", filter_join}, {"last", filter_first_last}, {"length", filter_length}, {"list", filter_list},
    {"lower", filter_lower}, {"map", filter_map}, {"max", filter_min_max}, {"min", filter_min_max}, {"reject", filter_reject},
    {"rejectattr", filter_rejectattr}, {"replace", filter_replace}, {"reverse", filter_reverse},
    {"round", filter_round}, {"safe", filter_safe}, {"select", filter_select}, {"selectattr", filter_selectattr},
    {"sort", filter_sort}, {"string", filter_string}, {"sum", filter_sum}, {"title", filter_title},
    {"tojson", filter_tojson}, {"trim", filter_trim}, {"unique", filter_unique}, {"upper", filter_upper},
    {"wordcount", filter_wordcount}, {"center", NULL}, {"batch", NULL}, {"e", NULL}, {"escape", NULL},
    {"striptags", NULL}, {NULL, NULL}
};

static int filter_index(const char *name) {
    for (int i = 0; FILTERS[i].name; i++)
        if (!strcmp(FILTERS[i].name, name)) return i;
    return -1;
}

bool jlib_has_filter(const char *name) { return filter_index(name) >= 0; }

jv jlib_filter(jrender *r, const char *name, jv x, const jv *av, size_t n, const char **kw, const jv *kwv, size_t nkw) {
    int i = filter_index(name);
    if (i < 0 || !FILTERS[i].fn) jr_fail(r, "the filter '%s' is not supported", name);
    args a = {av, n, kw, kwv, nkw};
    return FILTERS[i].fn(r, x, &a, name);
}

/* ---- methods and globals ---- */

jv jlib_method(jrender *r, jv obj, const char *name, size_t n) {
    static const struct {
        const char *name;
        int id;
    } STR_M[] = {{"strip", M_STRIP}, {"lstrip", M_LSTRIP}, {"rstrip", M_RSTRIP}, {"split", M_SPLIT},
                 {"rsplit", M_RSPLIT}, {"startswith", M_STARTSWITH}, {"endswith", M_ENDSWITH},
                 {"replace", M_REPLACE}, {"upper", M_UPPER}, {"lower", M_LOWER}, {"title", M_TITLE},
                 {"capitalize", M_CAPITALIZE}, {"find", M_FIND}, {"rfind", M_RFIND}, {"index", M_INDEX},
                 {"count", M_COUNT}, {"join", M_JOIN}, {"isdigit", M_ISDIGIT}, {"isalpha", M_ISALPHA},
                 {"isspace", M_ISSPACE}, {"isupper", M_ISUPPER}, {"islower", M_ISLOWER},
                 {"splitlines", M_SPLITLINES}, {"removeprefix", M_REMOVEPREFIX}, {"removesuffix", M_REMOVESUFFIX},
                 {NULL, 0}},
      DICT_M[] = {{"get", M_GET}, {"items", M_ITEMS}, {"keys", M_KEYS}, {"values", M_VALUES}, {NULL, 0}};
    const void *tab = obj.t == JV_STR ? (const void *)STR_M : obj.t == JV_DICT ? (const void *)DICT_M : NULL;
    if (!tab) return jv_undef();
    for (int i = 0;; i++) {
        const char *m = obj.t == JV_STR ? STR_M[i].name : DICT_M[i].name;
        if (!m) break;
        if (strlen(m) == n && !memcmp(m, name, n)) return mkfunc(r, obj.t == JV_STR ? STR_M[i].id : DICT_M[i].id, obj);
    }
    return jv_undef();
}

jv jlib_global(jrender *r, const char *name, size_t n) {
    if (EQ(name, n, "range")) return mkfunc(r, F_RANGE, jv_undef());
    if (EQ(name, n, "namespace")) return mkfunc(r, F_NAMESPACE, jv_undef());
    if (EQ(name, n, "raise_exception")) return mkfunc(r, F_RAISE, jv_undef());
    if (EQ(name, n, "strftime_now")) return mkfunc(r, F_STRFTIME, jv_undef());
    if (EQ(name, n, "dict")) return mkfunc(r, F_DICT, jv_undef());
    return jv_undef();
}

static jv find(jrender *r, const jstr *t, const jstr *sub, bool right) {
    const char *hit = NULL;
    if (!right) hit = sub->len ? memmem(t->p, t->len, sub->p, sub->len) : t->p;
    else if (sub->len <= t->len)
        for (size_t k = t->len - sub->len + 1; k-- > 0;)
            if (!memcmp(t->p + k, sub->p, sub->len)) {
                hit = t->p + k;
                break;
            }
    (void)r;
    return jv_int(hit ? (int64_t)ju8_count(t->p, (size_t)(hit - t->p)) : -1);
}

/* range(stop) or range(start, stop[, step]) */
static jv builtin_range(jrender *r, const jfunc *f, const args *a) {
    int64_t b = 0, e, st = 1;
    if (a->n == 1) e = arg_int(r, a, 0, "stop", 0, "range");
    else if (a->n >= 2) {
        b = arg_int(r, a, 0, "start", 0, "range");
        e = arg_int(r, a, 1, "stop", 0, "range");
        st = arg_int(r, a, 2, "step", 1, "range");
    } else jr_fail(r, "range expected at least 1 argument");
    if (st == 0) jr_fail(r, "range() arg 3 must not be zero");
    jlist *l = jlist_new(&r->arena, 0);
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st) {
        jr_step(r, 1);
        jlist_push(&r->arena, l, jv_int(i));
        if ((st > 0 && i > INT64_MAX - st) || (st < 0 && i < INT64_MIN - st)) break;
    }
    return jv_list(l);
}

/* namespace(...) and dict(...): a dict (or namespace) from a dict and keyword arguments */
static jv builtin_dict(jrender *r, const jfunc *f, const args *a) {
    jdict *d = jdict_new(&r->arena, a->nkw);
    if (a->n >= 1 && a->v[0].t == JV_DICT)
        for (size_t i = 0; i < a->v[0].u.d->n; i++) jdict_set(&r->arena, d, a->v[0].u.d->k[i], a->v[0].u.d->v[i]);
    for (size_t i = 0; i < a->nkw; i++) jdict_set(&r->arena, d, jv_cstr(&r->arena, a->kw[i]), a->kwv[i]);
    return (jv){.t = f->id == F_NAMESPACE ? JV_NS : JV_DICT, .u.d = d};
}

/* strftime_now(format): the render's clock (lim.now when set) in local time */
static jv builtin_strftime(jrender *r, const jfunc *f, const args *a) {
    jv fmt = need_str(r, arg(a, 0, "format"), "strftime_now");
    time_t now = r->lim.now ? (time_t)r->lim.now : time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    char buf[512];
    size_t k = fmt.u.s->len < 200 ? strftime(buf, sizeof buf, fmt.u.s->p, &tm) : 0;
    return jv_str(&r->arena, buf, k);
}

/* str.splitlines() */
static jv str_splitlines(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    jlist *l = jlist_new(&r->arena, 0);
    size_t i = 0;
    while (i < s->len) {
        size_t e = i;
        while (e < s->len && s->p[e] != '\n' && s->p[e] != '\r') e++;
        jlist_push(&r->arena, l, jv_str(&r->arena, s->p + i, e - i));
        if (e < s->len && s->p[e] == '\r' && e + 1 < s->len && s->p[e + 1] == '\n') e++;
        i = e + 1;
    }
    return jv_list(l);
}

/* str.startswith / str.endswith: a string or a tuple of strings */
static jv str_affix(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    jv p = arg(a, 0, "prefix");
    bool end = f->id == M_ENDSWITH;
    if (p.t == JV_STR) return jv_bool(affix(s, p.u.s, end));
    if (p.t == JV_LIST) {
        for (size_t i = 0; i < p.u.l->n; i++)
            if (need_str(r, p.u.l->v[i], "startswith/endswith").u.s && affix(s, p.u.l->v[i].u.s, end)) return jv_bool(true);
        return jv_bool(false);
    }
    jr_fail(r, "%s needs a string or a tuple of strings", end ? "endswith" : "startswith");
}

/* str.count(sub) */
static jv str_count(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    const jstr *sub = need_str(r, arg(a, 0, "sub"), "count").u.s;
    if (!sub->len) return jv_int((int64_t)ju8_count(s->p, s->len) + 1);
    int64_t k = 0;
    for (const char *p = s->p; (p = memmem(p, s->len - (size_t)(p - s->p), sub->p, sub->len)); p += sub->len) k++;
    return jv_int(k);
}

/* str.join(iterable) */
static jv str_join(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    jlist *l = jlib_to_list(r, arg(a, 0, "iterable")).u.l;
    jbuf b = newbuf(r);
    for (size_t i = 0; i < l->n; i++) {
        if (i) jbuf_put(&b, s->p, s->len);
        jbuf_put(&b, need_str(r, l->v[i], "join").u.s->p, l->v[i].u.s->len);
    }
    return str_of(r, &b);
}

/* str.isdigit / isalpha / isspace / isupper / islower */
static jv str_is(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    if (!s->len) return jv_bool(false);
    bool any_cased = false;
    for (size_t i = 0; i < s->len;) {
        size_t adv;
        uint32_t c = ju8_decode(s->p + i, s->len - i, &adv);
        i += adv;
        bool ok = f->id == M_ISDIGIT   ? c >= '0' && c <= '9'
                  : f->id == M_ISALPHA ? (c < 0x80 ? ((c | 32) >= 'a' && (c | 32) <= 'z') : cp_cased(c))
                  : f->id == M_ISSPACE ? ju8_isspace(c)
                  : f->id == M_ISUPPER ? cp_upper(c) == c
                                       : cp_lower(c) == c;
        if (!ok) return jv_bool(false);
        any_cased |= cp_cased(c);
    }
    return jv_bool(f->id == M_ISUPPER || f->id == M_ISLOWER ? any_cased : true);
}

/* str.removeprefix / str.removesuffix */
static jv str_remove_affix(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    const jstr *x = need_str(r, arg(a, 0, "prefix"), "removeprefix").u.s;
    bool end = f->id == M_REMOVESUFFIX;
    if (!affix(s, x, end)) return self;
    return jv_str(&r->arena, end ? s->p : s->p + x->len, s->len - x->len);
}

/* dict.values() */
static jv dict_values(jrender *r, const jfunc *f, const args *a) {
    jv self = f->self;
    jlist *l = jlist_new(&r->arena, self.u.d->n);
    memcpy(l->v, self.u.d->v, self.u.d->n * sizeof *l->v);
    l->n = self.u.d->n;
    return jv_list(l);
}

jv jlib_call_builtin(jrender *r, const jfunc *f, const jv *av, size_t n, const char **kw, const jv *kwv, size_t nkw) {
    args a = {av, n, kw, kwv, nkw};
    jv self = f->self;
    const jstr *s = self.t == JV_STR ? self.u.s : NULL;
    switch (f->id) {
    case F_RANGE: return builtin_range(r, f, &a);
    case F_NAMESPACE:
    case F_DICT: return builtin_dict(r, f, &a);
    case F_RAISE: {
        jv m = n ? jv_to_str(&r->arena, av[0]) : jv_cstr(&r->arena, "");
        jr_fail(r, "template error: %s", m.u.s->p);
    }
    case F_STRFTIME: return builtin_strftime(r, f, &a);
    case M_STRIP: return strip(r, self, arg_str(r, &a, 0, "chars", "strip"), 3);
    case M_LSTRIP: return strip(r, self, arg_str(r, &a, 0, "chars", "lstrip"), 1);
    case M_RSTRIP: return strip(r, self, arg_str(r, &a, 0, "chars", "rstrip"), 2);
    case M_SPLIT:
    case M_RSPLIT:
        return split(r, s, arg_str(r, &a, 0, "sep", "split"), arg_int(r, &a, 1, "maxsplit", -1, "split"), f->id == M_RSPLIT);
    case M_SPLITLINES: return str_splitlines(r, f, &a);
    case M_STARTSWITH:
    case M_ENDSWITH: return str_affix(r, f, &a);
    case M_REPLACE:
        return replace(r, self, need_str(r, arg(&a, 0, "old"), "replace"), need_str(r, arg(&a, 1, "new"), "replace"),
                       arg_int(r, &a, 2, "count", -1, "replace"));
    case M_UPPER: return recase(r, self, 1);
    case M_LOWER: return recase(r, self, 0);
    case M_TITLE: return recase(r, self, 3);
    case M_CAPITALIZE: return recase(r, self, 2);
    case M_FIND:
    case M_RFIND:
    case M_INDEX: {
        jv v = find(r, s, need_str(r, arg(&a, 0, "sub"), "find").u.s, f->id == M_RFIND);
        if (f->id == M_INDEX && v.u.i < 0) jr_fail(r, "substring not found");
        return v;
    }
    case M_COUNT: return str_count(r, f, &a);
    case M_JOIN: return str_join(r, f, &a);
    case M_ISDIGIT:
    case M_ISALPHA:
    case M_ISSPACE:
    case M_ISUPPER:
    case M_ISLOWER: return str_is(r, f, &a);
    case M_REMOVEPREFIX:
    case M_REMOVESUFFIX: return str_remove_affix(r, f, &a);
    case M_GET: {
        jv k = arg(&a, 0, "key"), d = arg(&a, 1, "default");
        jv *v = jdict_get(self.u.d, k);
        return v ? *v : d.t == JV_UNDEF ? jv_none() : d;
    }
    case M_ITEMS: return items_of(r, self);
    case M_KEYS: return jlib_to_list(r, self);
    case M_VALUES: return dict_values(r, f, &a);
    }
    jr_fail(r, "internal: builtin %d", f->id);
}
