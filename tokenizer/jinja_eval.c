/* jinja_eval.c: the tree walker. One render owns one arena (every value it makes) and one
 * jmp_buf: an error anywhere (a raise_exception, a type error, a passed bound) records its
 * message with the template position of the node being evaluated and jumps back to
 * jinja_render, which frees the arena. Scopes follow jinja2: a for loop's body and a macro's
 * body have their own scope (a set inside them is not seen after), if blocks do not;
 * namespace() objects are the one mutable thing a template can reach. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "jinja_impl.h"

enum { FLOW_NEXT, FLOW_BREAK, FLOW_CONTINUE };

_Noreturn void jr_fail(jrender *r, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (r->at) err_set(ERR_DATA, "%s:%u:%u: %s", r->t->name, r->at->line, r->at->col, msg);
    else err_set(ERR_DATA, "%s: %s", r->t->name, msg);
    longjmp(r->fail, 1);
}

void jr_step(jrender *r, uint64_t n) {
    r->steps += n;
    if (r->steps > r->lim.max_steps)
        jr_fail(r, "the template ran more than %llu steps (loop iterations, calls and filter items): stopped",
                (unsigned long long)r->lim.max_steps);
}

/* ---- scopes ---- */

static jframe *frame_new(jrender *r, jframe *parent) {
    jframe *f = jarena_alloc(&r->arena, sizeof *f);
    f->parent = parent;
    return f;
}

static void frame_set(jrender *r, jframe *f, const char *name, size_t len, jv v) {
    for (size_t i = 0; i < f->n; i++)
        if (f->lens[i] == len && !memcmp(f->names[i], name, len)) {
            f->vals[i] = v;
            return;
        }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        const char **nn = jarena_alloc(&r->arena, cap * sizeof *nn);
        size_t *nl = jarena_alloc(&r->arena, cap * sizeof *nl);
        jv *nv = jarena_alloc(&r->arena, cap * sizeof *nv);
        if (f->n) {
            memcpy(nn, f->names, f->n * sizeof *nn);
            memcpy(nl, f->lens, f->n * sizeof *nl);
            memcpy(nv, f->vals, f->n * sizeof *nv);
        }
        f->names = nn;
        f->lens = nl;
        f->vals = nv;
        f->cap = cap;
    }
    f->names[f->n] = name;
    f->lens[f->n] = len;
    f->vals[f->n++] = v;
}

static jv lookup(jrender *r, jframe *f, const char *name, size_t len) {
    for (; f; f = f->parent)
        for (size_t i = f->n; i-- > 0;)
            if (f->lens[i] == len && !memcmp(f->names[i], name, len)) return f->vals[i];
    return jlib_global(r, name, len);
}

/* ---- attribute and item access ---- */

static jv loop_attr(jrender *r, const jloop *l, const char *name, size_t n) {
    size_t len = l->items->n;
#define IS(s) (n == sizeof(s) - 1 && !memcmp(name, s, n))
    if (IS("index")) return jv_int((int64_t)l->i + 1);
    if (IS("index0")) return jv_int((int64_t)l->i);
    if (IS("revindex")) return jv_int((int64_t)(len - l->i));
    if (IS("revindex0")) return jv_int((int64_t)(len - l->i - 1));
    if (IS("first")) return jv_bool(l->i == 0);
    if (IS("last")) return jv_bool(l->i + 1 == len);
    if (IS("length")) return jv_int((int64_t)len);
    if (IS("depth")) return jv_int(l->depth0 + 1);
    if (IS("depth0")) return jv_int(l->depth0);
    if (IS("previtem")) return l->i > 0 ? l->items->v[l->i - 1] : jv_undef();
    if (IS("nextitem")) return l->i + 1 < len ? l->items->v[l->i + 1] : jv_undef();
#undef IS
    (void)r;
    return jv_undef();
}

jv jr_getattr(jrender *r, jv obj, const char *name, size_t n) {
    switch (obj.t) {
    case JV_UNDEF: jr_fail(r, "cannot read attribute '%.*s' of an undefined value", (int)n, name);
    case JV_DICT: {
        /* jinja2 tries the Python attribute first: d.items is the method */
        jv m = jlib_method(r, obj, name, n);
        if (m.t != JV_UNDEF) return m;
        jv *v = jdict_gets(obj.u.d, name, n);
        return v ? *v : jv_undef();
    }
    case JV_NS: {
        jv *v = jdict_gets(obj.u.d, name, n);
        return v ? *v : jv_undef();
    }
    case JV_LOOP: return loop_attr(r, obj.u.loop, name, n);
    default: return jlib_method(r, obj, name, n);
    }
}

jv jr_getitem(jrender *r, jv obj, jv key) {
    switch (obj.t) {
    case JV_UNDEF: jr_fail(r, "cannot index an undefined value");
    case JV_DICT:
    case JV_NS: {
        jv *v = jdict_get(obj.u.d, key);
        if (v) return *v;
        if (key.t == JV_STR && obj.t == JV_DICT) return jlib_method(r, obj, key.u.s->p, key.u.s->len);
        return jv_undef();
    }
    case JV_LIST:
        if (key.t == JV_INT || key.t == JV_BOOL) {
            int64_t i = key.t == JV_INT ? key.u.i : key.u.b, n = (int64_t)obj.u.l->n;
            if (i < 0) i += n;
            return i >= 0 && i < n ? obj.u.l->v[i] : jv_undef();
        }
        return jv_undef();
    case JV_STR:
        if (key.t == JV_INT) {
            const jstr *s = obj.u.s;
            int64_t n = (int64_t)ju8_count(s->p, s->len), i = key.u.i;
            if (i < 0) i += n;
            if (i < 0 || i >= n) return jv_undef();
            size_t b = ju8_offset(s->p, s->len, (size_t)i), e = ju8_offset(s->p, s->len, (size_t)i + 1);
            return jv_str(&r->arena, s->p + b, e - b);
        }
        if (key.t == JV_STR) return jlib_method(r, obj, key.u.s->p, key.u.s->len);
        return jv_undef();
    case JV_LOOP:
        if (key.t == JV_STR) return loop_attr(r, obj.u.loop, key.u.s->p, key.u.s->len);
        return jv_undef();
    default: return jv_undef();
    }
}

/* Python's slice indices for a sequence of n */
static void slice_indices(jrender *r, jv start, jv stop, jv step, int64_t n, int64_t *b, int64_t *e, int64_t *st) {
    *st = 1;
    if (step.t != JV_NONE && step.t != JV_UNDEF) {
        if (step.t != JV_INT) jr_fail(r, "slice step must be an integer");
        *st = step.u.i;
        if (*st == 0) jr_fail(r, "slice step cannot be zero");
    }
    bool neg = *st < 0;
    int64_t lo = neg ? -1 : 0, hi = neg ? n - 1 : n;
    jv bounds[2] = {start, stop};
    int64_t out[2] = {neg ? hi : lo, neg ? lo : hi};
    for (int k = 0; k < 2; k++) {
        jv x = bounds[k];
        if (x.t == JV_NONE || x.t == JV_UNDEF) continue;
        if (x.t != JV_INT) jr_fail(r, "slice indices must be integers");
        int64_t v = x.u.i;
        if (v < 0) {
            v += n;
            if (v < lo) v = lo;
        } else if (v > hi) {
            v = hi;
        }
        out[k] = v;
    }
    *b = out[0];
    *e = out[1];
}

static jv do_slice(jrender *r, jv obj, jv start, jv stop, jv step) {
    int64_t b, e, st;
    if (obj.t == JV_LIST) {
        slice_indices(r, start, stop, step, (int64_t)obj.u.l->n, &b, &e, &st);
        jlist *l = jlist_new(&r->arena, 0);
        for (int64_t i = b; st > 0 ? i < e : i > e; i += st) jlist_push(&r->arena, l, obj.u.l->v[i]);
        jr_step(r, l->n);
        return jv_list(l);
    }
    if (obj.t == JV_STR) {
        const jstr *s = obj.u.s;
        size_t ncp = ju8_count(s->p, s->len);
        slice_indices(r, start, stop, step, (int64_t)ncp, &b, &e, &st);
        if (ncp == s->len && st == 1) return jv_str(&r->arena, s->p + b, e > b ? (size_t)(e - b) : 0);
        /* code point offsets, then pick */
        size_t *off = jarena_alloc(&r->arena, (ncp + 1) * sizeof *off);
        for (size_t i = 0, k = 0; i <= s->len && k <= ncp; k++) {
            off[k] = i;
            if (i < s->len) {
                i++;
                while (i < s->len && ((unsigned char)s->p[i] & 0xc0) == 0x80) i++;
            } else {
                break;
            }
        }
        off[ncp] = s->len;
        jbuf out = {.a = &r->arena, .limit = r->lim.max_output};
        for (int64_t i = b; st > 0 ? i < e : i > e; i += st) jbuf_put(&out, s->p + off[i], off[i + 1] - off[i]);
        return jv_str(&r->arena, out.p ? out.p : "", out.n);
    }
    if (obj.t == JV_UNDEF) jr_fail(r, "cannot slice an undefined value");
    jr_fail(r, "cannot slice a value of type '%s'", jv_type_name(obj));
}

/* ---- expressions ---- */

static jv eval(jrender *r, const jnode *n, jframe *f);
static int exec_body(jrender *r, const jnode *n, jframe *f);

static jv capture(jrender *r, const jnode *body, jframe *f) {
    jbuf *saved = r->out;
    jbuf b = {.a = &r->arena, .limit = r->lim.max_output};
    r->out = &b;
    r->capture++;
    exec_body(r, body, f);
    r->capture--;
    r->out = saved;
    return jv_str(&r->arena, b.p ? b.p : "", b.n);
}

static jv call_macro(jrender *r, const jmacro *m, const jv *args, size_t n, const char **kw, const jv *kwv, size_t nkw,
                     const jmacro *caller) {
    const jnode *def = m->def;
    if (++r->depth > r->lim.max_depth) jr_fail(r, "macro calls nested more than %d deep", r->lim.max_depth);
    jr_step(r, 1);
    jframe *fr = frame_new(r, m->closure);
    for (size_t i = 0; i < def->nkw; i++) {
        jv v = jv_undef();
        bool set = false;
        if (i < n) {
            v = args[i];
            set = true;
        }
        for (size_t k = 0; k < nkw && !set; k++)
            if (!strcmp(kw[k], def->kw[i])) {
                v = kwv[k];
                set = true;
            }
        if (!set && def->kwv[i]) {
            const jnode *saved = r->at;
            v = eval(r, def->kwv[i], fr);
            r->at = saved;
        }
        frame_set(r, fr, def->kw[i], strlen(def->kw[i]), v);
    }
    if (caller) {
        jmacro *c = jarena_alloc(&r->arena, sizeof *c);
        *c = *caller;
        frame_set(r, fr, "caller", 6, (jv){.t = JV_MACRO, .u.m = c});
    }
    jv out = capture(r, def->b, fr);
    r->depth--;
    return out;
}

jv jr_call(jrender *r, jv fn, const jv *args, size_t n, const char **kw, const jv *kwv, size_t nkw) {
    if (fn.t == JV_MACRO) return call_macro(r, fn.u.m, args, n, kw, kwv, nkw, NULL);
    if (fn.t == JV_FUNC) {
        jr_step(r, 1);
        return jlib_call_builtin(r, fn.u.fn, args, n, kw, kwv, nkw);
    }
    if (fn.t == JV_UNDEF) jr_fail(r, "cannot call an undefined value");
    jr_fail(r, "a value of type '%s' is not callable", jv_type_name(fn));
}

typedef struct argv_ {
    jv *v, *kwv;
    size_t n, nkw;
} argv_;

static argv_ eval_args(jrender *r, const jnode *n, jframe *f) {
    argv_ a = {.n = n->n, .nkw = n->nkw};
    a.v = n->n ? jarena_alloc(&r->arena, n->n * sizeof *a.v) : NULL;
    a.kwv = n->nkw ? jarena_alloc(&r->arena, n->nkw * sizeof *a.kwv) : NULL;
    for (size_t i = 0; i < n->n; i++) a.v[i] = eval(r, n->kids[i], f);
    for (size_t i = 0; i < n->nkw; i++) a.kwv[i] = eval(r, n->kwv[i], f);
    return a;
}

static int64_t checked(jrender *r, bool overflow, const int64_t *v) {
    if (overflow) jr_fail(r, "integer overflow");
    return *v;
}

static bool is_num(jv x) { return x.t == JV_INT || x.t == JV_FLOAT || x.t == JV_BOOL; }
static double num(jv x) { return x.t == JV_FLOAT ? x.u.f : x.t == JV_INT ? (double)x.u.i : (double)x.u.b; }
static int64_t inum(jv x) { return x.t == JV_INT ? x.u.i : x.u.b; }

static jv repeat(jrender *r, jv seq, int64_t k) {
    if (k < 0) k = 0;
    if (seq.t == JV_STR) {
        if (seq.u.s->len && (uint64_t)k > r->lim.max_output / seq.u.s->len) jr_fail(r, "string repetition exceeds the output bound");
        jbuf b = {.a = &r->arena, .limit = r->lim.max_output};
        for (int64_t i = 0; i < k; i++) jbuf_put(&b, seq.u.s->p, seq.u.s->len);
        return jv_str(&r->arena, b.p ? b.p : "", b.n);
    }
    jr_step(r, (uint64_t)k * seq.u.l->n);
    jlist *l = jlist_new(&r->arena, 0);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++) jlist_push(&r->arena, l, seq.u.l->v[j]);
    return jv_list(l);
}

static bool contains(jrender *r, jv hay, jv needle) {
    switch (hay.t) {
    case JV_STR:
        if (needle.t != JV_STR) jr_fail(r, "'in <string>' requires a string as left operand, not %s", jv_type_name(needle));
        if (!needle.u.s->len) return true;
        return memmem(hay.u.s->p, hay.u.s->len, needle.u.s->p, needle.u.s->len) != NULL;
    case JV_LIST:
        for (size_t i = 0; i < hay.u.l->n; i++)
            if (jv_equal(hay.u.l->v[i], needle)) return true;
        return false;
    case JV_DICT:
    case JV_NS: return jdict_get(hay.u.d, needle) != NULL;
    case JV_UNDEF: return false;
    default: jr_fail(r, "argument of type '%s' is not iterable", jv_type_name(hay));
    }
}

static jv binop(jrender *r, int op, jv a, jv b) {
    int64_t x = 0;
    bool ok;
    switch (op) {
    case OP_ADD:
        if ((a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL))
            return jv_int(checked(r, __builtin_add_overflow(inum(a), inum(b), &x), &x));
        if (is_num(a) && is_num(b)) return jv_float(num(a) + num(b));
        if (a.t == JV_STR && b.t == JV_STR) {
            jbuf o = {.a = &r->arena, .limit = r->lim.max_output};
            jbuf_put(&o, a.u.s->p, a.u.s->len);
            jbuf_put(&o, b.u.s->p, b.u.s->len);
            return jv_str(&r->arena, o.p ? o.p : "", o.n);
        }
        if (a.t == JV_LIST && b.t == JV_LIST) {
            jlist *l = jlist_new(&r->arena, a.u.l->n + b.u.l->n);
            memcpy(l->v, a.u.l->v, a.u.l->n * sizeof *l->v);
            memcpy(l->v + a.u.l->n, b.u.l->v, b.u.l->n * sizeof *l->v);
            l->n = a.u.l->n + b.u.l->n;
            jr_step(r, l->n);
            return jv_list(l);
        }
        break;
    case OP_SUB:
        if ((a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL))
            return jv_int(checked(r, __builtin_sub_overflow(inum(a), inum(b), &x), &x));
        if (is_num(a) && is_num(b)) return jv_float(num(a) - num(b));
        break;
    case OP_MUL:
        if ((a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL))
            return jv_int(checked(r, __builtin_mul_overflow(inum(a), inum(b), &x), &x));
        if (is_num(a) && is_num(b)) return jv_float(num(a) * num(b));
        if ((a.t == JV_STR || a.t == JV_LIST) && (b.t == JV_INT || b.t == JV_BOOL)) return repeat(r, a, inum(b));
        if ((b.t == JV_STR || b.t == JV_LIST) && (a.t == JV_INT || a.t == JV_BOOL)) return repeat(r, b, inum(a));
        break;
    case OP_DIV:
        if (is_num(a) && is_num(b)) {
            if (num(b) == 0) jr_fail(r, "division by zero");
            return jv_float(num(a) / num(b));
        }
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if ((a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL)) {
            int64_t p = inum(a), q = inum(b);
            if (q == 0) jr_fail(r, "integer division or modulo by zero");
            if (p == INT64_MIN && q == -1) jr_fail(r, "integer overflow");
            int64_t d = p / q, m = p % q;
            if (m != 0 && ((m < 0) != (q < 0))) {
                d--;
                m += q;
            }
            return jv_int(op == OP_MOD ? m : d);
        }
        if (is_num(a) && is_num(b)) {
            double p = num(a), q = num(b);
            if (q == 0) jr_fail(r, "float division or modulo by zero");
            double d = floor(p / q);
            return jv_float(op == OP_MOD ? p - d * q : d);
        }
        if (op == OP_MOD && a.t == JV_STR) jr_fail(r, "printf-style '%%' formatting of strings is not supported");
        break;
    case OP_POW:
        if ((a.t == JV_INT || a.t == JV_BOOL) && (b.t == JV_INT || b.t == JV_BOOL) && inum(b) >= 0) {
            int64_t base = inum(a), e = inum(b), res = 1;
            for (int64_t i = 0; i < e; i++) {
                if (__builtin_mul_overflow(res, base, &res)) jr_fail(r, "integer overflow");
                if (res == 0 || res == 1) break;
                if (i > 64 && (base == -1)) {
                    res = (e % 2) ? -1 : 1;
                    break;
                }
            }
            return jv_int(res);
        }
        if (is_num(a) && is_num(b)) return jv_float(pow(num(a), num(b)));
        break;
    case OP_EQ: return jv_bool(jv_equal(a, b));
    case OP_NE: return jv_bool(!jv_equal(a, b));
    case OP_LT:
    case OP_LE:
    case OP_GT:
    case OP_GE: {
        int c = jv_compare(a, b, &ok);
        if (!ok) jr_fail(r, "cannot compare '%s' with '%s'", jv_type_name(a), jv_type_name(b));
        return jv_bool(op == OP_LT ? c < 0 : op == OP_LE ? c <= 0 : op == OP_GT ? c > 0 : c >= 0);
    }
    case OP_IN: return jv_bool(contains(r, b, a));
    case OP_NOTIN: return jv_bool(!contains(r, b, a));
    }
    static const char *const names[] = {"+", "-", "*", "/", "//", "%", "**"};
    jr_fail(r, "unsupported operand types for %s: '%s' and '%s'", op <= OP_POW ? names[op] : "?", jv_type_name(a),
            jv_type_name(b));
}

/* a filter chain whose innermost input is a placeholder (filter blocks, set blocks) */
static jv eval_chain(jrender *r, const jnode *n, jframe *f, jv in) {
    if (n->kind != N_FILTER) return in;
    jv x = eval_chain(r, n->a, f, in);
    argv_ a = eval_args(r, n, f);
    r->at = n;
    return jlib_filter(r, n->name, x, a.v, a.n, n->kw, a.kwv, a.nkw);
}

static jv eval(jrender *r, const jnode *n, jframe *f) {
    r->at = n;
    switch (n->kind) {
    case N_LIT: return n->lit;
    case N_NAME: return lookup(r, f, n->name, n->name_len);
    case N_LIST:
    case N_TUPLE: {
        jlist *l = jlist_new(&r->arena, n->n);
        for (size_t i = 0; i < n->n; i++) l->v[i] = eval(r, n->kids[i], f);
        l->n = n->n;
        l->tuple = n->kind == N_TUPLE;
        return jv_list(l);
    }
    case N_DICT: {
        jdict *d = jdict_new(&r->arena, n->n / 2);
        for (size_t i = 0; i + 1 < n->n; i += 2) {
            jv k = eval(r, n->kids[i], f), v = eval(r, n->kids[i + 1], f);
            jdict_set(&r->arena, d, k, v);
        }
        return jv_dict(d);
    }
    case N_ATTR: {
        jv o = eval(r, n->a, f);
        r->at = n;
        return jr_getattr(r, o, n->name, n->name_len);
    }
    case N_ITEM: {
        jv o = eval(r, n->a, f), k = eval(r, n->b, f);
        r->at = n;
        return jr_getitem(r, o, k);
    }
    case N_SLICE: {
        jv o = eval(r, n->a, f);
        jv b = n->b ? eval(r, n->b, f) : jv_none(), e = n->c ? eval(r, n->c, f) : jv_none(),
           s = n->d ? eval(r, n->d, f) : jv_none();
        r->at = n;
        return do_slice(r, o, b, e, s);
    }
    case N_CALL: {
        jv fn = eval(r, n->a, f);
        argv_ a = eval_args(r, n, f);
        r->at = n;
        return jr_call(r, fn, a.v, a.n, n->kw, a.kwv, a.nkw);
    }
    case N_FILTER: {
        jv x = eval(r, n->a, f);
        argv_ a = eval_args(r, n, f);
        r->at = n;
        return jlib_filter(r, n->name, x, a.v, a.n, n->kw, a.kwv, a.nkw);
    }
    case N_TEST: {
        jv x = eval(r, n->a, f);
        argv_ a = eval_args(r, n, f);
        r->at = n;
        bool t = jlib_test(r, n->name, x, a.v, a.n);
        return jv_bool(n->neg ? !t : t);
    }
    case N_BINOP: {
        jv a = eval(r, n->a, f), b = eval(r, n->b, f);
        r->at = n;
        return binop(r, n->op, a, b);
    }
    case N_NEG:
    case N_POS: {
        jv a = eval(r, n->a, f);
        r->at = n;
        if (a.t == JV_INT || a.t == JV_BOOL) {
            int64_t v = inum(a);
            if (n->kind == N_POS) return jv_int(v);
            if (v == INT64_MIN) jr_fail(r, "integer overflow");
            return jv_int(-v);
        }
        if (a.t == JV_FLOAT) return jv_float(n->kind == N_NEG ? -a.u.f : a.u.f);
        jr_fail(r, "bad operand type for unary %s: '%s'", n->kind == N_NEG ? "-" : "+", jv_type_name(a));
    }
    case N_NOT: return jv_bool(!jv_truthy(eval(r, n->a, f)));
    case N_AND: {
        jv a = eval(r, n->a, f);
        return jv_truthy(a) ? eval(r, n->b, f) : a;
    }
    case N_OR: {
        jv a = eval(r, n->a, f);
        return jv_truthy(a) ? a : eval(r, n->b, f);
    }
    case N_COND:
        if (jv_truthy(eval(r, n->a, f))) return eval(r, n->b, f);
        return n->c ? eval(r, n->c, f) : jv_undef();
    case N_CONCAT: {
        jv a = eval(r, n->a, f), b = eval(r, n->b, f);
        jbuf o = {.a = &r->arena, .limit = r->lim.max_output};
        jv_write_str(&o, a);
        jv_write_str(&o, b);
        return jv_str(&r->arena, o.p ? o.p : "", o.n);
    }
    }
    jr_fail(r, "internal: expression kind %d", n->kind);
}

/* ---- statements ---- */

static void assign(jrender *r, jframe *f, const jnode *n, jv v) {
    if (n->nnames == 1) {
        frame_set(r, f, n->names[0], strlen(n->names[0]), v);
        return;
    }
    if (v.t != JV_LIST) jr_fail(r, "cannot unpack a value of type '%s' into %zu names", jv_type_name(v), n->nnames);
    if (v.u.l->n != n->nnames)
        jr_fail(r, "cannot unpack %zu values into %zu names", v.u.l->n, n->nnames);
    for (size_t i = 0; i < n->nnames; i++) frame_set(r, f, n->names[i], strlen(n->names[i]), v.u.l->v[i]);
}

static int exec_for(jrender *r, const jnode *n, jframe *f) {
    jv seq = eval(r, n->a, f);
    r->at = n;
    if (seq.t == JV_NONE || seq.t == JV_BOOL || seq.t == JV_INT || seq.t == JV_FLOAT)
        jr_fail(r, "'%s' object is not iterable", jv_type_name(seq));
    jlist *items = jlib_to_list(r, seq).u.l;
    jframe *lf = frame_new(r, f);
    if (n->d) { /* {% for x in xs if cond %}: filtered first, so loop.length counts what is kept */
        jlist *kept = jlist_new(&r->arena, 0);
        for (size_t i = 0; i < items->n; i++) {
            jr_step(r, 1);
            r->at = n;
            assign(r, lf, n, items->v[i]);
            if (jv_truthy(eval(r, n->d, lf))) jlist_push(&r->arena, kept, items->v[i]);
        }
        items = kept;
    }
    if (items->n == 0) {
        if (n->c) return exec_body(r, n->c, f);
        return FLOW_NEXT;
    }
    jloop *loop = jarena_alloc(&r->arena, sizeof *loop);
    loop->items = items;
    jv outer = lookup(r, f, "loop", 4);
    loop->depth0 = outer.t == JV_LOOP ? outer.u.loop->depth0 + 1 : 0;
    for (size_t i = 0; i < items->n; i++) {
        jr_step(r, 1);
        loop->i = i;
        jframe *it = frame_new(r, f);
        r->at = n;
        assign(r, it, n, items->v[i]);
        frame_set(r, it, "loop", 4, (jv){.t = JV_LOOP, .u.loop = loop});
        int flow = exec_body(r, n->b, it);
        if (flow == FLOW_BREAK) break;
    }
    return FLOW_NEXT;
}

static int exec_stmt(jrender *r, const jnode *n, jframe *f) {
    r->at = n;
    switch (n->kind) {
    case N_TEXT: jbuf_put(r->out, n->lit.u.s->p, n->lit.u.s->len); return FLOW_NEXT;
    case N_OUTPUT: {
        jv v = eval(r, n->a, f);
        jv_write_str(r->out, v);
        return FLOW_NEXT;
    }
    case N_IF:
        for (const jnode *c = n; c;) {
            if (c->kind != N_IF) return exec_body(r, c, f);
            if (jv_truthy(eval(r, c->a, f))) return exec_body(r, c->b, f);
            c = c->c;
        }
        return FLOW_NEXT;
    case N_FOR: return exec_for(r, n, f);
    case N_SET: assign(r, f, n, eval(r, n->a, f)); return FLOW_NEXT;
    case N_SET_ATTR: {
        jv ns = lookup(r, f, n->a->name, n->a->name_len);
        jv v = eval(r, n->b, f);
        r->at = n;
        if (ns.t != JV_NS) jr_fail(r, "cannot assign attribute '%s' on '%s': only a namespace() can be changed", n->name, n->a->name);
        jdict_set(&r->arena, ns.u.d, jv_cstr(&r->arena, n->name), v);
        return FLOW_NEXT;
    }
    case N_SET_BLOCK: {
        jv v = capture(r, n->b, f);
        if (n->d) v = eval_chain(r, n->d, f, v);
        assign(r, f, n, v);
        return FLOW_NEXT;
    }
    case N_FILTER_BLOCK: {
        jv v = capture(r, n->b, f);
        v = eval_chain(r, n->d, f, v);
        jv_write_str(r->out, v);
        return FLOW_NEXT;
    }
    case N_MACRO: {
        jmacro *m = jarena_alloc(&r->arena, sizeof *m);
        m->def = n;
        m->closure = f;
        frame_set(r, f, n->name, n->name_len, (jv){.t = JV_MACRO, .u.m = m});
        return FLOW_NEXT;
    }
    case N_CALL_BLOCK: {
        const jnode *call = n->a;
        jv fn = eval(r, call->a, f);
        argv_ a = eval_args(r, call, f);
        r->at = n;
        if (fn.t != JV_MACRO) jr_fail(r, "a call block needs a macro, not '%s'", jv_type_name(fn));
        jmacro caller = {.def = n, .closure = f};
        jv out = call_macro(r, fn.u.m, a.v, a.n, call->kw, a.kwv, a.nkw, &caller);
        jv_write_str(r->out, out);
        return FLOW_NEXT;
    }
    case N_BREAK: return FLOW_BREAK;
    case N_CONTINUE: return FLOW_CONTINUE;
    case N_GENERATION: {
        size_t b = r->out->n;
        int flow = exec_body(r, n->b, f);
        if (!r->capture) {
            size_t span[2] = {b, r->out->n};
            jbuf_put(&r->gen, (const char *)span, sizeof span);
        }
        return flow;
    }
    case N_BODY: return exec_body(r, n, f);
    }
    jr_fail(r, "internal: statement kind %d", n->kind);
}

static int exec_body(jrender *r, const jnode *n, jframe *f) {
    if (!n) return FLOW_NEXT;
    if (n->kind != N_BODY) return exec_stmt(r, n, f);
    for (size_t i = 0; i < n->n; i++) {
        int flow = exec_stmt(r, n->kids[i], f);
        if (flow != FLOW_NEXT) return flow;
    }
    return FLOW_NEXT;
}

/* ---- entry ---- */

int jinja_render(const jinja_template *t, const json_t *ctx, const jinja_limits *lim, jinja_result *out) {
    memset(out, 0, sizeof *out);
    jrender *r = calloc(1, sizeof *r);
    if (!r) return err_set(ERR_STAGE, "out of memory");
    r->t = t;
    if (lim) r->lim = *lim;
    if (!r->lim.max_steps) r->lim.max_steps = 10000000;
    if (!r->lim.max_output) r->lim.max_output = (size_t)64 << 20;
    if (!r->lim.max_memory) r->lim.max_memory = (size_t)512 << 20;
    if (!r->lim.max_depth) r->lim.max_depth = 64;
    r->arena.cap = r->lim.max_memory;
    r->arena.oom = &r->fail;
    jbuf main_out = {.a = &r->arena, .limit = r->lim.max_output};
    r->gen.a = &r->arena;
    r->out = &main_out;
    int rc = 0;
    int jumped = setjmp(r->fail);
    if (jumped) {
        if (jumped == 2)
            rc = err_set(ERR_DATA, "%s: the render needs more than %zu MiB of memory: stopped", t->name, r->lim.max_memory >> 20);
        else if (jumped == 3)
            rc = err_set(ERR_DATA, "%s: the output passes %zu bytes: stopped", t->name, r->lim.max_output);
        else rc = err_code() ? err_code() : ERR_DATA;
    } else {
        r->globals = frame_new(r, NULL);
        if (ctx && json_is_object(ctx)) {
            const char *k;
            json_t *v;
            json_object_foreach((json_t *)ctx, k, v) {
                jv key = jv_cstr(&r->arena, k);
                frame_set(r, r->globals, key.u.s->p, key.u.s->len, jv_from_json(&r->arena, v));
            }
        }
        exec_body(r, t->root, frame_new(r, r->globals));
        out->text = malloc(main_out.n + 1);
        size_t ng = r->gen.n / (2 * sizeof(size_t));
        out->gen = ng ? malloc(ng * sizeof *out->gen) : NULL;
        if (!out->text || (ng && !out->gen)) {
            free(out->text);
            free(out->gen);
            memset(out, 0, sizeof *out);
            rc = err_set(ERR_STAGE, "out of memory");
        } else {
            if (main_out.n) memcpy(out->text, main_out.p, main_out.n);
            out->text[main_out.n] = 0;
            out->len = main_out.n;
            for (size_t i = 0; i < ng; i++) {
                size_t span[2];
                memcpy(span, r->gen.p + i * sizeof span, sizeof span);
                out->gen[i] = (jinja_span){span[0], span[1]};
            }
            out->n_gen = ng;
        }
    }
    jarena_free(&r->arena);
    free(r);
    return rc;
}

void jinja_result_free(jinja_result *r) {
    free(r->text);
    free(r->gen);
    memset(r, 0, sizeof *r);
}
