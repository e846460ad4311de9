/* jinja_parse.c: tokens -> syntax tree, by recursive descent in jinja2's precedence order
 * (lowest first): conditional expression, or, and, not, comparisons (== != < > <= >= in,
 * not in), + -, ~, * / // %, **, unary - +, then primaries with their postfixes (.attr,
 * [item], [a:b:c], (call)) and filters / tests (| f(...), is [not] t). Nesting is bounded
 * so a hostile template cannot exhaust the stack. */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/utf8.h"
#include "jinja_impl.h"

#define MAX_NEST 200

typedef struct parser {
    jinja_template *t;
    jarena *a;
    const jtok *tok;
    size_t n, i;
    int depth;
    jmp_buf fail;
} parser;

static const jtok *peek(parser *P) { return &P->tok[P->i]; }
static const jtok *peek2(parser *P) { return &P->tok[P->i + 1 < P->n ? P->i + 1 : P->i]; }
static const jtok *next(parser *P) {
    const jtok *t = &P->tok[P->i];
    if (P->i + 1 < P->n) P->i++;
    return t;
}

static const char *tok_desc(const jtok *t) {
    switch (t->kind) {
    case T_EOF: return "end of template";
    case T_TEXT: return "text";
    case T_VAR_BEGIN: return "'{{'";
    case T_VAR_END: return "'}}'";
    case T_BLOCK_BEGIN: return "'{%'";
    case T_BLOCK_END: return "'%}'";
    case T_NAME: return "a name";
    case T_STRING: return "a string";
    case T_INT: case T_FLOAT: return "a number";
    default: return "an operator";
    }
}

__attribute__((format(printf, 3, 4))) _Noreturn static void perr(parser *P, const jtok *t, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    err_set(ERR_DATA, "%s:%u:%u: %s", P->t->name, t->line, t->col, msg);
    longjmp(P->fail, 1);
}

static void *palloc(parser *P, size_t n) {
    void *p = jarena_alloc(P->a, n);
    if (!p) {
        err_set(ERR_STAGE, "out of memory");
        longjmp(P->fail, 1);
    }
    return p;
}

static bool is_op(const jtok *t, const char *op) {
    return t->kind == T_OP && t->n == strlen(op) && !memcmp(t->p, op, t->n);
}
static bool is_name(const jtok *t, const char *nm) {
    return t->kind == T_NAME && t->n == strlen(nm) && !memcmp(t->p, nm, t->n);
}

static void expect_op(parser *P, const char *op) {
    const jtok *t = next(P);
    if (!is_op(t, op)) perr(P, t, "expected '%s', found %s", op, tok_desc(t));
}

static jnode *mk(parser *P, int kind, const jtok *at) {
    jnode *n = palloc(P, sizeof *n);
    n->kind = (uint8_t)kind;
    n->line = at->line;
    n->col = at->col;
    return n;
}

static const char *name_dup(parser *P, const jtok *t, size_t *len) {
    char *s = palloc(P, t->n + 1);
    memcpy(s, t->p, t->n);
    s[t->n] = 0;
    if (len) *len = t->n;
    return s;
}

static const char *expect_name(parser *P, size_t *len) {
    const jtok *t = next(P);
    if (t->kind != T_NAME) perr(P, t, "expected a name, found %s", tok_desc(t));
    return name_dup(P, t, len);
}

/* a growable node list in the arena */
typedef struct nvec {
    jnode **v;
    size_t n, cap;
} nvec;

static void nv_push(parser *P, nvec *v, jnode *x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        jnode **p = palloc(P, cap * sizeof *p);
        if (v->n) memcpy(p, v->v, v->n * sizeof *p);
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

typedef struct svec {
    const char **v;
    size_t n, cap;
} svec;

static void sv_push(parser *P, svec *v, const char *x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 4;
        const char **p = palloc(P, cap * sizeof *p);
        if (v->n) memcpy(p, v->v, v->n * sizeof *p);
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

static void enter(parser *P) {
    if (++P->depth > MAX_NEST) perr(P, peek(P), "nested too deeply (more than %d levels)", MAX_NEST);
}

/* ---- expressions ---- */

static jnode *parse_expr(parser *P);
static jnode *parse_or(parser *P);
static jnode *parse_unary(parser *P, bool with_filter);

/* (args) after a callee, filter or test: positional then keyword arguments */
static void parse_args(parser *P, jnode *n) {
    expect_op(P, "(");
    nvec args = {0}, kwv = {0};
    svec kw = {0};
    while (!is_op(peek(P), ")")) {
        if (args.n + kwv.n) expect_op(P, ",");
        if (is_op(peek(P), ")")) break; /* a trailing comma */
        if (peek(P)->kind == T_NAME && is_op(peek2(P), "=")) {
            sv_push(P, &kw, name_dup(P, next(P), NULL));
            next(P);
            nv_push(P, &kwv, parse_expr(P));
        } else {
            if (kw.n) perr(P, peek(P), "a positional argument after keyword arguments");
            nv_push(P, &args, parse_expr(P));
        }
    }
    next(P);
    n->kids = args.v;
    n->n = args.n;
    n->kw = kw.v;
    n->kwv = kwv.v;
    n->nkw = kw.n;
}

static jnode *parse_primary(parser *P) {
    const jtok *t = next(P);
    jnode *n;
    switch (t->kind) {
    case T_NAME:
        n = mk(P, N_LIT, t);
        if (is_name(t, "true") || is_name(t, "True")) n->lit = jv_bool(true);
        else if (is_name(t, "false") || is_name(t, "False")) n->lit = jv_bool(false);
        else if (is_name(t, "none") || is_name(t, "None")) n->lit = jv_none();
        else {
            n->kind = N_NAME;
            n->name = name_dup(P, t, &n->name_len);
        }
        return n;
    case T_STRING: {
        /* adjacent literals concatenate */
        jbuf b = {.a = P->a};
        jbuf_put(&b, t->p, t->n);
        while (peek(P)->kind == T_STRING) {
            const jtok *s = next(P);
            jbuf_put(&b, s->p, s->n);
        }
        n = mk(P, N_LIT, t);
        n->lit = jv_str(P->a, b.p ? b.p : "", b.n);
        if (!n->lit.u.s) longjmp(P->fail, 1);
        return n;
    }
    case T_INT:
        n = mk(P, N_LIT, t);
        n->lit = jv_int(t->i);
        return n;
    case T_FLOAT:
        n = mk(P, N_LIT, t);
        n->lit = jv_float(t->f);
        return n;
    case T_OP:
        if (is_op(t, "(")) {
            enter(P);
            if (is_op(peek(P), ")")) {
                next(P);
                n = mk(P, N_TUPLE, t);
            } else {
                jnode *e = parse_expr(P);
                if (!is_op(peek(P), ",")) {
                    expect_op(P, ")");
                    P->depth--;
                    return e;
                }
                nvec items = {0};
                nv_push(P, &items, e);
                while (is_op(peek(P), ",")) {
                    next(P);
                    if (is_op(peek(P), ")")) break;
                    nv_push(P, &items, parse_expr(P));
                }
                expect_op(P, ")");
                n = mk(P, N_TUPLE, t);
                n->kids = items.v;
                n->n = items.n;
            }
            P->depth--;
            return n;
        }
        if (is_op(t, "[")) {
            enter(P);
            nvec items = {0};
            while (!is_op(peek(P), "]")) {
                if (items.n) expect_op(P, ",");
                if (is_op(peek(P), "]")) break;
                nv_push(P, &items, parse_expr(P));
            }
            next(P);
            n = mk(P, N_LIST, t);
            n->kids = items.v;
            n->n = items.n;
            P->depth--;
            return n;
        }
        if (is_op(t, "{")) {
            enter(P);
            nvec items = {0}; /* key, value, key, value ... */
            while (!is_op(peek(P), "}")) {
                if (items.n) expect_op(P, ",");
                if (is_op(peek(P), "}")) break;
                nv_push(P, &items, parse_expr(P));
                expect_op(P, ":");
                nv_push(P, &items, parse_expr(P));
            }
            next(P);
            n = mk(P, N_DICT, t);
            n->kids = items.v;
            n->n = items.n;
            P->depth--;
            return n;
        }
        break;
    default: break;
    }
    perr(P, t, "expected an expression, found %s", tok_desc(t));
}

static jnode *parse_postfix(parser *P, jnode *n) {
    for (;;) {
        const jtok *t = peek(P);
        if (is_op(t, ".")) {
            next(P);
            const jtok *nm = next(P);
            jnode *a = mk(P, N_ATTR, t);
            a->a = n;
            if (nm->kind == T_NAME) a->name = name_dup(P, nm, &a->name_len);
            else if (nm->kind == T_INT) { /* x.0 is x[0] */
                a->kind = N_ITEM;
                a->b = mk(P, N_LIT, nm);
                a->b->lit = jv_int(nm->i);
            } else perr(P, nm, "expected an attribute name after '.', found %s", tok_desc(nm));
            n = a;
        } else if (is_op(t, "[")) {
            next(P);
            enter(P);
            jnode *parts[3] = {0};
            int k = 0;
            bool slice = false;
            for (;;) {
                if (is_op(peek(P), ":")) {
                    next(P);
                    slice = true;
                    if (++k > 2) perr(P, peek(P), "a slice has at most three parts");
                    continue;
                }
                if (is_op(peek(P), "]")) break;
                if (parts[k]) perr(P, peek(P), "expected ':' or ']'");
                parts[k] = parse_expr(P);
            }
            next(P);
            P->depth--;
            jnode *s = mk(P, slice ? N_SLICE : N_ITEM, t);
            s->a = n;
            if (slice) {
                s->b = parts[0];
                s->c = parts[1];
                s->d = parts[2];
            } else {
                if (!parts[0]) perr(P, t, "empty subscript");
                s->b = parts[0];
            }
            n = s;
        } else if (is_op(t, "(")) {
            jnode *c = mk(P, N_CALL, t);
            c->a = n;
            c->line = n->line; /* errors of a call point at its callee */
            c->col = n->col;
            enter(P);
            parse_args(P, c);
            P->depth--;
            n = c;
        } else {
            return n;
        }
    }
}

static bool starts_test_arg(const jtok *t) {
    if (t->kind == T_STRING || t->kind == T_INT || t->kind == T_FLOAT) return true;
    if (t->kind == T_NAME)
        return !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and") && !is_name(t, "if") &&
               !is_name(t, "in") && !is_name(t, "is") && !is_name(t, "not");
    return is_op(t, "[") || is_op(t, "{");
}

static jnode *parse_filter_expr(parser *P, jnode *n) {
    for (;;) {
        const jtok *t = peek(P);
        if (is_op(t, "|")) {
            next(P);
            const jtok *nt = peek(P);
            jnode *f = mk(P, N_FILTER, nt);
            f->name = expect_name(P, &f->name_len);
            while (is_op(peek(P), ".")) { /* dotted filter names are jinja2 syntax too; none we know */
                next(P);
                expect_name(P, NULL);
            }
            if (!jlib_has_filter(f->name)) perr(P, nt, "no filter named '%s'", f->name);
            f->a = n;
            if (is_op(peek(P), "(")) parse_args(P, f);
            n = f;
        } else if (is_name(t, "is")) {
            next(P);
            jnode *x = mk(P, N_TEST, t);
            if (is_name(peek(P), "not")) {
                next(P);
                x->neg = true;
            }
            const jtok *nt = peek(P);
            if (nt->kind == T_NAME && (is_name(nt, "none") || is_name(nt, "true") || is_name(nt, "false"))) {
                next(P);
                x->name = name_dup(P, nt, &x->name_len);
            } else {
                x->name = expect_name(P, &x->name_len);
            }
            if (!jlib_has_test(x->name)) perr(P, nt, "no test named '%s'", x->name);
            x->a = n;
            if (is_op(peek(P), "(")) parse_args(P, x);
            else if (starts_test_arg(peek(P))) {
                jnode **k = palloc(P, sizeof *k);
                k[0] = parse_unary(P, false);
                x->kids = k;
                x->n = 1;
            }
            n = x;
        } else {
            return n;
        }
    }
}

static jnode *parse_unary(parser *P, bool with_filter) {
    const jtok *t = peek(P);
    jnode *n;
    enter(P);
    if (is_op(t, "-") || is_op(t, "+")) {
        next(P);
        n = mk(P, is_op(t, "-") ? N_NEG : N_POS, t);
        n->a = parse_unary(P, false);
    } else {
        n = parse_postfix(P, parse_primary(P));
    }
    if (with_filter) n = parse_filter_expr(P, n);
    P->depth--;
    return n;
}

static jnode *binop(parser *P, const jtok *t, int op, jnode *l, jnode *r) {
    jnode *n = mk(P, N_BINOP, t);
    n->op = (uint8_t)op;
    n->a = l;
    n->b = r;
    return n;
}

static jnode *parse_pow(parser *P) {
    jnode *l = parse_unary(P, true);
    while (is_op(peek(P), "**")) {
        const jtok *t = next(P);
        l = binop(P, t, OP_POW, l, parse_unary(P, true));
    }
    return l;
}

static jnode *parse_math2(parser *P) {
    jnode *l = parse_pow(P);
    for (;;) {
        const jtok *t = peek(P);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV : is_op(t, "%") ? OP_MOD : -1;
        if (op < 0) return l;
        next(P);
        l = binop(P, t, op, l, parse_pow(P));
    }
}

static jnode *parse_concat(parser *P) {
    jnode *l = parse_math2(P);
    while (is_op(peek(P), "~")) {
        const jtok *t = next(P);
        jnode *n = mk(P, N_CONCAT, t);
        n->a = l;
        n->b = parse_math2(P);
        l = n;
    }
    return l;
}

static jnode *parse_math1(parser *P) {
    jnode *l = parse_concat(P);
    for (;;) {
        const jtok *t = peek(P);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : -1;
        if (op < 0) return l;
        next(P);
        l = binop(P, t, op, l, parse_concat(P));
    }
}

/* a < b < c is (a < b) and (b < c), as in Python */
static jnode *parse_compare(parser *P) {
    jnode *l = parse_math1(P), *last = NULL;
    for (;;) {
        const jtok *t = peek(P);
        int op = is_op(t, "==") ? OP_EQ : is_op(t, "!=") ? OP_NE : is_op(t, "<") ? OP_LT : is_op(t, "<=") ? OP_LE
               : is_op(t, ">") ? OP_GT : is_op(t, ">=") ? OP_GE : is_name(t, "in") ? OP_IN : -1;
        if (op < 0 && is_name(t, "not") && is_name(peek2(P), "in")) {
            next(P);
            op = OP_NOTIN;
        }
        if (op < 0) return l;
        next(P);
        jnode *rhs = parse_math1(P);
        if (!last) {
            l = binop(P, t, op, l, rhs);
        } else {
            jnode *and = mk(P, N_AND, t);
            and->a = l;
            and->b = binop(P, t, op, last, rhs);
            l = and;
        }
        last = rhs;
    }
}

static jnode *parse_not(parser *P) {
    if (is_name(peek(P), "not")) {
        const jtok *t = next(P);
        enter(P);
        jnode *n = mk(P, N_NOT, t);
        n->a = parse_not(P);
        P->depth--;
        return n;
    }
    return parse_compare(P);
}

static jnode *parse_and(parser *P) {
    jnode *l = parse_not(P);
    while (is_name(peek(P), "and")) {
        const jtok *t = next(P);
        jnode *n = mk(P, N_AND, t);
        n->a = l;
        n->b = parse_not(P);
        l = n;
    }
    return l;
}

static jnode *parse_or(parser *P) {
    jnode *l = parse_and(P);
    while (is_name(peek(P), "or")) {
        const jtok *t = next(P);
        jnode *n = mk(P, N_OR, t);
        n->a = l;
        n->b = parse_and(P);
        l = n;
    }
    return l;
}

static jnode *parse_expr(parser *P) {
    enter(P);
    jnode *e = parse_or(P);
    while (is_name(peek(P), "if")) {
        const jtok *t = next(P);
        jnode *c = mk(P, N_COND, t);
        c->b = e;
        c->a = parse_or(P);
        if (is_name(peek(P), "else")) {
            next(P);
            c->c = parse_expr(P);
        }
        e = c;
    }
    P->depth--;
    return e;
}

/* ---- statements ---- */

static void expect_block_end(parser *P) {
    const jtok *t = next(P);
    if (t->kind != T_BLOCK_END) perr(P, t, "expected '%%}', found %s", tok_desc(t));
}

/* statements until a block tag named in ends; returns that tag's name token (consumed, its
 * block begin too); *out gets the body */
static const jtok *parse_body(parser *P, const char *const *ends, jnode **out, const jtok *opener);

static jnode *body_node(parser *P, nvec *v, const jtok *at) {
    jnode *b = mk(P, N_BODY, at);
    b->kids = v->v;
    b->n = v->n;
    return b;
}

static void parse_targets(parser *P, svec *names) {
    sv_push(P, names, expect_name(P, NULL));
    while (is_op(peek(P), ",")) {
        next(P);
        sv_push(P, names, expect_name(P, NULL));
    }
}


/* a macro's or call block's parameters after its "(", through the ")": names, each with an
 * optional default (n->kw names, n->kwv defaults or NULL, n->nkw how many) */
static void parse_params(parser *P, jnode *n) {
    svec params = {0};
    nvec defs = {0};
    while (!is_op(peek(P), ")")) {
        if (params.n) expect_op(P, ",");
        if (is_op(peek(P), ")")) break;
        sv_push(P, &params, expect_name(P, NULL));
        jnode *d = NULL;
        if (is_op(peek(P), "=")) {
            next(P);
            d = parse_expr(P);
        }
        nv_push(P, &defs, d);
    }
    next(P);
    n->kw = params.v;
    n->kwv = defs.v;
    n->nkw = params.n;
}

/* the body of a block statement up to its {% END %}, which is consumed */
static void parse_until(parser *P, const char *end, jnode **body, const jtok *opener) {
    const char *const ends[] = {end, NULL};
    parse_body(P, ends, body, opener);
    expect_block_end(P);
}

/* {% if %} ... {% elif %} ... {% else %} ... {% endif %} */
static jnode *parse_if(parser *P, const jtok *t) {
    jnode *n = mk(P, N_IF, t);
    n->a = parse_expr(P);
    expect_block_end(P);
    static const char *const ends[] = {"elif", "else", "endif", NULL};
    jnode *cur = n;
    for (;;) {
        const jtok *e = parse_body(P, ends, &cur->b, t);
        if (is_name(e, "elif")) {
            jnode *el = mk(P, N_IF, e);
            el->a = parse_expr(P);
            expect_block_end(P);
            cur->c = el;
            cur = el;
        } else if (is_name(e, "else")) {
            expect_block_end(P);
            parse_until(P, "endif", &cur->c, t);
            break;
        } else {
            expect_block_end(P);
            break;
        }
    }
    return n;
}

/* {% for targets in iterable [if filter] %} ... [{% else %} ...] {% endfor %} */
static jnode *parse_for(parser *P, const jtok *t) {
    jnode *n = mk(P, N_FOR, t);
    svec names = {0};
    parse_targets(P, &names);
    n->names = names.v;
    n->nnames = names.n;
    const jtok *in = next(P);
    if (!is_name(in, "in")) perr(P, in, "expected 'in' in a for loop, found %s", tok_desc(in));
    n->a = parse_or(P); /* no conditional expression: its 'if' filters the loop */
    if (is_name(peek(P), "if")) {
        next(P);
        n->d = parse_expr(P);
    }
    if (is_name(peek(P), "recursive")) perr(P, peek(P), "recursive loops are not supported");
    expect_block_end(P);
    static const char *const ends[] = {"else", "endfor", NULL};
    const jtok *e = parse_body(P, ends, &n->b, t);
    if (is_name(e, "else")) {
        expect_block_end(P);
        static const char *const end_for[] = {"endfor", NULL};
        parse_body(P, end_for, &n->c, t);
    }
    expect_block_end(P);
    return n;
}

/* {% set ns.attr = x %}, {% set a[, b] = x[, y] %} or the block form {% set x [| filters] %} ... {% endset %} */
static jnode *parse_set(parser *P, const jtok *t) {
    jnode *n;
    const jtok *nt = peek(P);
    if (nt->kind == T_NAME && is_op(peek2(P), ".")) {
        n = mk(P, N_SET_ATTR, t);
        n->a = mk(P, N_NAME, nt);
        n->a->name = expect_name(P, &n->a->name_len);
        next(P);
        n->name = expect_name(P, &n->name_len);
        expect_op(P, "=");
        n->b = parse_expr(P);
        expect_block_end(P);
    } else {
        svec names = {0};
        parse_targets(P, &names);
        if (is_op(peek(P), "=")) {
            next(P);
            n = mk(P, N_SET, t);
            n->names = names.v;
            n->nnames = names.n;
            n->a = parse_expr(P);
            if (is_op(peek(P), ",")) { /* set a, b = x, y */
                nvec items = {0};
                nv_push(P, &items, n->a);
                while (is_op(peek(P), ",")) {
                    next(P);
                    nv_push(P, &items, parse_expr(P));
                }
                jnode *tu = mk(P, N_TUPLE, t);
                tu->kids = items.v;
                tu->n = items.n;
                n->a = tu;
            }
            expect_block_end(P);
        } else {
            if (names.n != 1) perr(P, peek(P), "a block set takes one name");
            n = mk(P, N_SET_BLOCK, t);
            n->names = names.v;
            n->nnames = 1;
            jnode *filters = NULL; /* {% set x | filter %} */
            if (is_op(peek(P), "|")) {
                jnode *ph = mk(P, N_LIT, peek(P));
                filters = parse_filter_expr(P, ph);
                n->d = filters;
            }
            expect_block_end(P);
            parse_until(P, "endset", &n->b, t);
        }
    }
    return n;
}

/* {% macro name(params) %} ... {% endmacro [name] %} */
static jnode *parse_macro(parser *P, const jtok *t) {
    jnode *n = mk(P, N_MACRO, t);
    n->name = expect_name(P, &n->name_len);
    expect_op(P, "(");
    parse_params(P, n);
    expect_block_end(P);
    static const char *const ends[] = {"endmacro", NULL};
    parse_body(P, ends, &n->b, t);
    if (peek(P)->kind == T_NAME) next(P); /* {% endmacro name %} */
    expect_block_end(P);
    return n;
}

/* {% call[(params)] m(args) %} ... {% endcall %} */
static jnode *parse_call_block(parser *P, const jtok *t) {
    jnode *n = mk(P, N_CALL_BLOCK, t);
    if (is_op(peek(P), "(")) {
        next(P);
        parse_params(P, n);
    }
    n->a = parse_expr(P);
    if (n->a->kind != N_CALL) perr(P, t, "a call block needs a macro call: {%% call m(...) %%}");
    expect_block_end(P);
    parse_until(P, "endcall", &n->b, t);
    return n;
}

/* {% filter f(args) | ... %} ... {% endfilter %} */
static jnode *parse_filter_block(parser *P, const jtok *t) {
    jnode *n = mk(P, N_FILTER_BLOCK, t);
    /* the filter chain applied to a placeholder that the evaluator fills with the body */
    jnode *ph = mk(P, N_LIT, t);
    const jtok *ft = peek(P);
    jnode *f = mk(P, N_FILTER, ft);
    f->name = expect_name(P, &f->name_len);
    if (!jlib_has_filter(f->name)) perr(P, ft, "no filter named '%s'", f->name);
    f->a = ph;
    if (is_op(peek(P), "(")) parse_args(P, f);
    n->d = parse_filter_expr(P, f);
    expect_block_end(P);
    parse_until(P, "endfilter", &n->b, t);
    return n;
}

/* {% generation %} ... {% endgeneration %}: the assistant spans a template marks */
static jnode *parse_generation(parser *P, const jtok *t) {
    jnode *n = mk(P, N_GENERATION, t);
    P->t->has_generation = true;
    expect_block_end(P);
    parse_until(P, "endgeneration", &n->b, t);
    return n;
}

static jnode *parse_statement(parser *P, const jtok *open) {
    const jtok *t = next(P);
    if (t->kind != T_NAME) perr(P, t, "expected a statement name after '{%%', found %s", tok_desc(t));
    enter(P);
    jnode *n;
    if (is_name(t, "if")) {
        n = parse_if(P, t);
    } else if (is_name(t, "for")) {
        n = parse_for(P, t);
    } else if (is_name(t, "set")) {
        n = parse_set(P, t);
    } else if (is_name(t, "macro")) {
        n = parse_macro(P, t);
    } else if (is_name(t, "call")) {
        n = parse_call_block(P, t);
    } else if (is_name(t, "filter")) {
        n = parse_filter_block(P, t);
    } else if (is_name(t, "break") || is_name(t, "continue")) {
        n = mk(P, is_name(t, "break") ? N_BREAK : N_CONTINUE, t);
        expect_block_end(P);
    } else if (is_name(t, "generation")) {
        n = parse_generation(P, t);
    } else if (is_name(t, "include") || is_name(t, "import") || is_name(t, "from") || is_name(t, "extends")) {
        perr(P, t, "'%.*s' reads other files, which a chat template may not do", (int)t->n, t->p);
    } else {
        perr(P, t, "unknown statement '%.*s'", (int)t->n, t->p);
    }
    (void)open;
    P->depth--;
    return n;
}

static const jtok *parse_body(parser *P, const char *const *ends, jnode **out, const jtok *opener) {
    nvec v = {0};
    const jtok *start = peek(P);
    for (;;) {
        const jtok *t = peek(P);
        if (t->kind == T_EOF) {
            if (!ends) {
                *out = body_node(P, &v, start);
                return t;
            }
            perr(P, opener, "'%.*s' is never closed (expected '{%% %s %%}')", (int)opener->n, opener->p,
                 ends[0] ? ends[0] : "end");
        }
        if (t->kind == T_TEXT) {
            next(P);
            jnode *n = mk(P, N_TEXT, t);
            n->lit = jv_str(P->a, t->p, t->n);
            if (!n->lit.u.s) longjmp(P->fail, 1);
            nv_push(P, &v, n);
        } else if (t->kind == T_VAR_BEGIN) {
            next(P);
            jnode *n = mk(P, N_OUTPUT, t);
            n->a = parse_expr(P);
            const jtok *e = next(P);
            if (e->kind != T_VAR_END) perr(P, e, "expected '}}', found %s", tok_desc(e));
            nv_push(P, &v, n);
        } else if (t->kind == T_BLOCK_BEGIN) {
            const jtok *nm = peek2(P);
            if (ends)
                for (const char *const *e = ends; *e; e++)
                    if (is_name(nm, *e)) {
                        next(P);
                        next(P);
                        *out = body_node(P, &v, start);
                        return nm;
                    }
            if (nm->kind == T_NAME && nm->n > 3 && !memcmp(nm->p, "end", 3))
                perr(P, nm, "unexpected '%.*s'%s%s", (int)nm->n, nm->p, ends ? ": expected " : "", ends ? ends[0] : "");
            if (is_name(nm, "elif") || is_name(nm, "else")) perr(P, nm, "unexpected '%.*s'", (int)nm->n, nm->p);
            next(P);
            nv_push(P, &v, parse_statement(P, nm));
        } else {
            perr(P, t, "unexpected %s", tok_desc(t));
        }
    }
}

int jinja_parse_tokens(jinja_template *t, const jtok *toks, size_t n) {
    parser P = {.t = t, .a = &t->arena, .tok = toks, .n = n};
    if (setjmp(P.fail)) return err_code() ? err_code() : err_set(ERR_DATA, "%s: cannot parse", t->name);
    parse_body(&P, NULL, &t->root, toks);
    return 0;
}

int jinja_parse(jinja_template **out, const char *src, size_t len, const char *name) {
    *out = NULL;
    size_t ok = utf8_valid_prefix(src, len);
    if (ok < len) return err_set(ERR_DATA, "%s: byte %zu: the template is not valid UTF-8", name, ok);
    if (memchr(src, 0, len)) return err_set(ERR_DATA, "%s: the template holds a NUL byte", name);
    jinja_template *t = calloc(1, sizeof *t);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    t->arena.cap = (size_t)64 << 20;
    t->name = strdup(name ? name : "template");
    jtok *toks = NULL;
    size_t nt = 0;
    err_clear();
    jmp_buf oom;
    int rc;
    if (setjmp(oom)) {
        rc = err_set(ERR_DATA, "%s: the template is too large to parse (more than %zu MiB of syntax tree)", t->name,
                     t->arena.cap >> 20);
    } else {
        t->arena.oom = &oom;
        rc = t->name ? jinja_lex(&t->arena, src, len, t->name, &toks, &nt) : err_set(ERR_STAGE, "out of memory");
        if (!rc) rc = jinja_parse_tokens(t, toks, nt);
    }
    t->arena.oom = NULL;
    if (rc) {
        jinja_free(&t);
        return rc;
    }
    *out = t;
    return 0;
}

void jinja_free(jinja_template **t) {
    if (!*t) return;
    jarena_free(&(*t)->arena);
    free((*t)->name);
    free(*t);
    *t = NULL;
}

bool jinja_has_generation(const jinja_template *t) { return t->has_generation; }
