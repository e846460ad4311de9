/* jinja_impl.h: the renderer's internals, shared by its four parts:
 *   jinja_value.c   arena, values (Python semantics: str(), repr, ==, <, truth), JSON in and out
 *   jinja_lex.c     source -> tokens, with jinja2's whitespace control
 *   jinja_parse.c   tokens -> syntax tree (template arena)
 *   jinja_eval.c    the tree walker: statements, expressions, scopes, limits
 *   jinja_lib.c     filters, tests, string/dict methods and global functions
 * Nothing here is public: callers use jinja.h. */
#ifndef TOKENIZER_JINJA_IMPL_H
#define TOKENIZER_JINJA_IMPL_H

#include <setjmp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jinja.h"

/* ---- arena: every render value and every tree node lives in one; freed at once ---- */

typedef struct jarena_chunk jarena_chunk;
typedef struct jarena {
    jarena_chunk *head;
    size_t used, cap; /* bytes handed out from chunks; cap 0: unlimited */
    jmp_buf *oom;     /* where to jump when cap is passed (render), or NULL (abort-free: return NULL) */
} jarena;

void *jarena_alloc(jarena *a, size_t n); /* zeroed, 16-byte aligned; NULL only when oom is NULL */
void jarena_free(jarena *a);

/* ---- values ---- */

typedef enum jv_type {
    JV_UNDEF, JV_NONE, JV_BOOL, JV_INT, JV_FLOAT, JV_STR, JV_LIST, JV_DICT,
    JV_NS,     /* namespace(): a dict whose attributes can be set */
    JV_FUNC,   /* a builtin function or bound method */
    JV_MACRO,  /* a {% macro %} (or the caller of a {% call %} block) */
    JV_LOOP    /* the loop variable of a for */
} jv_type;

typedef struct jstr {
    size_t len;
    char p[]; /* NUL-terminated */
} jstr;

typedef struct jv {
    uint8_t t;
    union {
        bool b;
        int64_t i;
        double f;
        jstr *s;
        struct jlist *l;
        struct jdict *d; /* DICT and NS */
        struct jfunc *fn;
        struct jmacro *m;
        struct jloop *loop;
    } u;
} jv;

typedef struct jlist {
    size_t n, cap;
    jv *v;
    bool tuple; /* printed as (a, b): items() pairs and (a, b) literals */
} jlist;

typedef struct jdict {
    size_t n, cap;
    jv *k, *v;
} jdict;

typedef struct jloop {
    jlist *items;
    size_t i; /* index0 */
    int depth0;
} jloop;

struct jnode;
struct jframe;
typedef struct jmacro {
    const struct jnode *def; /* N_MACRO, or the N_CALLBLOCK for caller() */
    struct jframe *closure;
    const struct jnode *caller_body; /* set on a macro called from a {% call %} block */
    struct jframe *caller_frame;
} jmacro;

typedef struct jfunc {
    int id;  /* a builtin (jinja_lib.c) */
    jv self; /* the bound object of a method, else undefined */
} jfunc;

static inline jv jv_undef(void) { return (jv){.t = JV_UNDEF}; }
static inline jv jv_none(void) { return (jv){.t = JV_NONE}; }
static inline jv jv_bool(bool b) { return (jv){.t = JV_BOOL, .u.b = b}; }
static inline jv jv_int(int64_t i) { return (jv){.t = JV_INT, .u.i = i}; }
static inline jv jv_float(double f) { return (jv){.t = JV_FLOAT, .u.f = f}; }

jv jv_str(jarena *a, const char *p, size_t n);
jv jv_cstr(jarena *a, const char *p);
jlist *jlist_new(jarena *a, size_t cap);
void jlist_push(jarena *a, jlist *l, jv x);
jdict *jdict_new(jarena *a, size_t cap);
void jdict_set(jarena *a, jdict *d, jv k, jv v);
jv *jdict_get(const jdict *d, jv k);
jv *jdict_gets(const jdict *d, const char *k, size_t n);
static inline jv jv_list(jlist *l) { return (jv){.t = JV_LIST, .u.l = l}; }
static inline jv jv_dict(jdict *d) { return (jv){.t = JV_DICT, .u.d = d}; }

bool jv_truthy(jv x);
bool jv_equal(jv a, jv b);
/* Python's ordering for numbers with numbers and strings with strings; *ok false otherwise */
int jv_compare(jv a, jv b, bool *ok);
const char *jv_type_name(jv x); /* Python's name: 'str', 'int', 'dict', ... */

/* A growable output buffer. */
typedef struct jbuf {
    char *p;
    size_t n, cap;
    size_t limit; /* 0: none */
    jarena *a;    /* grows in the arena when set, else with realloc */
} jbuf;
void jbuf_put(jbuf *b, const char *s, size_t n); /* longjmps through the arena's oom on overflow */
static inline void jbuf_puts(jbuf *b, const char *s) { jbuf_put(b, s, __builtin_strlen(s)); }

/* str(x) appended to b (what {{ x }} prints) and repr(x) (inside lists and dicts) */
void jv_write_str(jbuf *b, jv x);
void jv_write_repr(jbuf *b, jv x);
jv jv_to_str(jarena *a, jv x); /* str(x) as a value (x itself when it is a string) */
void jv_write_float(jbuf *b, double f); /* Python's repr of a float */

/* json.dumps(x, ensure_ascii=False, indent=indent (<0: none), separators, sort_keys) */
typedef struct jjson_opts {
    int indent;          /* < 0: no newlines */
    const char *item_sep, *key_sep;
    bool sort_keys;
} jjson_opts;
int jv_write_json(jbuf *b, jv x, const jjson_opts *o, int depth); /* -1: a value JSON cannot hold */

jv jv_from_json(jarena *a, const json_t *j);

/* UTF-8 helpers on valid strings */
size_t ju8_count(const char *s, size_t n);           /* code points */
size_t ju8_offset(const char *s, size_t n, size_t k); /* byte offset of code point k (n when past the end) */
uint32_t ju8_decode(const char *s, size_t n, size_t *adv);
void ju8_encode(jbuf *b, uint32_t cp);
bool ju8_isspace(uint32_t cp); /* Python's str.isspace() for one code point */

/* ---- syntax tree ---- */

typedef enum jnode_kind {
    /* statements */
    N_BODY, N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_ATTR, N_SET_BLOCK, N_MACRO, N_CALL_BLOCK,
    N_FILTER_BLOCK, N_BREAK, N_CONTINUE, N_GENERATION,
    /* expressions */
    N_LIT, N_NAME, N_LIST, N_TUPLE, N_DICT, N_ATTR, N_ITEM, N_SLICE, N_CALL, N_FILTER, N_TEST,
    N_BINOP, N_NEG, N_POS, N_NOT, N_AND, N_OR, N_COND, N_CONCAT
} jnode_kind;

typedef enum jop {
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN
} jop;

typedef struct jnode {
    uint8_t kind, op;
    bool neg;        /* N_TEST: is not */
    uint32_t line, col;
    const char *name; /* N_NAME, N_ATTR, N_FILTER, N_TEST, N_SET, N_MACRO...: NUL-terminated */
    size_t name_len;
    jv lit;           /* N_LIT, N_TEXT */
    struct jnode *a, *b, *c, *d;
    struct jnode **kids; /* body statements, list items, call arguments, for targets ... */
    size_t n;
    const char **kw;     /* keyword-argument names (N_CALL, N_FILTER, N_TEST), macro parameter names */
    struct jnode **kwv;  /* their values (macro parameter defaults: NULL where none) */
    size_t nkw;
    const char **names;  /* for targets / set targets / call-block parameters */
    size_t nnames;
} jnode;

struct jinja_template {
    jarena arena;
    jnode *root;
    char *name;
    bool has_generation;
};

/* ---- lexer ---- */

typedef enum jtok_kind {
    T_EOF, T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP
} jtok_kind;

typedef struct jtok {
    uint8_t kind;
    uint32_t line, col;
    const char *p; /* T_TEXT / T_STRING: the (unescaped) value in the template arena; T_NAME/T_OP: source */
    size_t n;
    int64_t i;
    double f;
} jtok;

/* tokens into *toks (arena); errors "name:line:col: ..." (ERR_DATA) */
int jinja_lex(jarena *a, const char *src, size_t len, const char *name, jtok **toks, size_t *n);
int jinja_parse_tokens(jinja_template *t, const jtok *toks, size_t n);

/* ---- the evaluator's state, shared with the library ---- */

typedef struct jframe {
    struct jframe *parent;
    size_t n, cap;
    const char **names;
    size_t *lens;
    jv *vals;
} jframe;

typedef struct jrender {
    jarena arena;
    jmp_buf fail;
    const jinja_template *t;
    jinja_limits lim;
    uint64_t steps;
    int depth;
    jbuf *out;
    jbuf gen; /* pairs of size_t offsets, kept as bytes */
    int capture; /* > 0 inside set/filter blocks: generation spans are not recorded */
    jframe *globals;
    const jnode *at; /* the node being evaluated, for error positions */
    int code;
} jrender;

/* stop the render with an error at r->at's position (never returns) */
_Noreturn void jr_fail(jrender *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void jr_step(jrender *r, uint64_t n); /* count work against max_steps */

jv jr_call(jrender *r, jv fn, const jv *args, size_t n, const char **kw, const jv *kwv, size_t nkw);
jv jr_getattr(jrender *r, jv obj, const char *name, size_t n);
jv jr_getitem(jrender *r, jv obj, jv key);

/* the library (jinja_lib.c) */
jv jlib_filter(jrender *r, const char *name, jv in, const jv *args, size_t n, const char **kw, const jv *kwv, size_t nkw);
bool jlib_test(jrender *r, const char *name, jv x, const jv *args, size_t n);
bool jlib_has_test(const char *name);
bool jlib_has_filter(const char *name);
jv jlib_global(jrender *r, const char *name, size_t n); /* JV_UNDEF when none */
jv jlib_method(jrender *r, jv obj, const char *name, size_t n); /* JV_UNDEF when none */
jv jlib_call_builtin(jrender *r, const jfunc *f, const jv *args, size_t n, const char **kw, const jv *kwv, size_t nkw);
jv jlib_to_list(jrender *r, jv x); /* iterate x: list, dict keys, string characters */

#endif
