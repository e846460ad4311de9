/* jinja_lex.c: template source -> tokens.
 *
 * Text outside tags becomes T_TEXT after jinja2's whitespace control as transformers
 * configures it: "{%-"/"{{-"/"{#-" strip all white space before the tag, "-%}"/"-}}"/"-#}"
 * all white space after it; trim_blocks drops the first newline after a block or comment
 * tag; lstrip_blocks drops the spaces and tabs between the start of a line and a block or
 * comment tag ("{%+" keeps them). Comments vanish; {% raw %}...{% endraw %} is text. */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "jinja_impl.h"

typedef struct lexer {
    jarena *a;
    const char *src, *name;
    size_t len;
    jtok *toks;
    size_t n, cap;
    /* line/col of a position, found by scanning forward from the last one asked */
    size_t lc_pos;
    uint32_t lc_line, lc_col;
} lexer;

static void linecol(lexer *L, size_t pos, uint32_t *line, uint32_t *col) {
    if (pos < L->lc_pos) {
        L->lc_pos = 0;
        L->lc_line = 1;
        L->lc_col = 1;
    }
    for (; L->lc_pos < pos; L->lc_pos++) {
        unsigned char c = (unsigned char)L->src[L->lc_pos];
        if (c == '\n') {
            L->lc_line++;
            L->lc_col = 1;
        } else if ((c & 0xc0) != 0x80) {
            L->lc_col++;
        }
    }
    *line = L->lc_line;
    *col = L->lc_col;
}

static int lex_error(lexer *L, size_t pos, const char *msg, const char *arg) {
    uint32_t line, col;
    linecol(L, pos, &line, &col);
    return err_set(ERR_DATA, "%s:%u:%u: %s%s", L->name, line, col, msg, arg ? arg : "");
}

static jtok *push(lexer *L, int kind, size_t pos) {
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        jtok *t = jarena_alloc(L->a, cap * sizeof *t);
        if (!t) return NULL;
        if (L->n) memcpy(t, L->toks, L->n * sizeof *t);
        L->toks = t;
        L->cap = cap;
    }
    jtok *t = &L->toks[L->n++];
    memset(t, 0, sizeof *t);
    t->kind = (uint8_t)kind;
    linecol(L, pos, &t->line, &t->col);
    return t;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
static bool is_name0(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

static int push_text(lexer *L, size_t b, size_t e) {
    if (e <= b) return 0;
    jtok *t = push(L, T_TEXT, b);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    t->p = L->src + b;
    t->n = e - b;
    return 0;
}

/* a string literal at pos (the quote): Python's escapes, unescaped into the arena */
static int lex_string(lexer *L, size_t *pos) {
    size_t start = *pos, i = start + 1;
    char q = L->src[start];
    jbuf b = {.a = L->a};
    size_t run = i;
    while (i < L->len && L->src[i] != q) {
        if (L->src[i] != '\\') {
            i++;
            continue;
        }
        jbuf_put(&b, L->src + run, i - run);
        if (i + 1 >= L->len) break;
        char c = L->src[i + 1], o = 0;
        i += 2;
        switch (c) {
        case 'n': o = '\n'; break;
        case 't': o = '\t'; break;
        case 'r': o = '\r'; break;
        case '0': o = '\0'; break;
        case 'a': o = '\a'; break;
        case 'b': o = '\b'; break;
        case 'f': o = '\f'; break;
        case 'v': o = '\v'; break;
        case '\\': case '\'': case '"': o = c; break;
        case '\n': break; /* a line continuation */
        case 'x': case 'u': case 'U': {
            int nd = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int k = 0; k < nd; k++, i++) {
                char h = i < L->len ? L->src[i] : 0;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) return lex_error(L, i, "bad escape in a string literal", NULL);
                cp = cp * 16 + (uint32_t)v;
            }
            if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return lex_error(L, i, "escape is not a Unicode scalar value", NULL);
            ju8_encode(&b, cp);
            run = i;
            continue;
        }
        default: /* Python keeps an unknown escape as it is */
            jbuf_put(&b, L->src + i - 2, 2);
        }
        if (o || c == '0') jbuf_put(&b, &o, 1);
        run = i;
    }
    if (i >= L->len) return lex_error(L, start, "unterminated string literal", NULL);
    jbuf_put(&b, L->src + run, i - run);
    jtok *t = push(L, T_STRING, start);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    t->p = b.p ? b.p : "";
    t->n = b.n;
    *pos = i + 1;
    return 0;
}

static int lex_number(lexer *L, size_t *pos) {
    size_t i = *pos, start = i;
    bool is_float = false;
    while (i < L->len && (is_digit(L->src[i]) || L->src[i] == '_')) i++;
    if (i + 1 < L->len && L->src[i] == '.' && is_digit(L->src[i + 1])) {
        is_float = true;
        i++;
        while (i < L->len && (is_digit(L->src[i]) || L->src[i] == '_')) i++;
    }
    if (i < L->len && (L->src[i] == 'e' || L->src[i] == 'E')) {
        size_t j = i + 1;
        if (j < L->len && (L->src[j] == '+' || L->src[j] == '-')) j++;
        if (j < L->len && is_digit(L->src[j])) {
            is_float = true;
            i = j;
            while (i < L->len && is_digit(L->src[i])) i++;
        }
    }
    char buf[64];
    size_t k = 0;
    for (size_t j = start; j < i && k < sizeof buf - 1; j++)
        if (L->src[j] != '_') buf[k++] = L->src[j];
    buf[k] = 0;
    jtok *t = push(L, is_float ? T_FLOAT : T_INT, start);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    if (is_float) t->f = strtod(buf, NULL);
    else {
        char *end;
        unsigned long long v = strtoull(buf, &end, 10);
        if (v > INT64_MAX || i - start > 19) return lex_error(L, start, "integer literal too large", NULL);
        t->i = (int64_t)v;
    }
    *pos = i;
    return 0;
}

static const char *const OPS[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                  "=", ".", ",", ":", "|", "(", ")", "[", "]", "{", "}", NULL};

/* the inside of a tag, from pos up to its end marker; *pos is left after the marker.
 * kind: '{' for {{ }}, '%' for {% %}; *strip_after set by "-}}" / "-%}" */
static int lex_tag(lexer *L, size_t *pos, char kind, bool *strip_after) {
    size_t i = *pos;
    int depth = 0;
    char close = kind == '%' ? '%' : '}';
    for (;;) {
        while (i < L->len && is_ws(L->src[i])) i++;
        if (i >= L->len) return lex_error(L, *pos, kind == '%' ? "unclosed block tag: expected '%}'" : "unclosed '{{': expected '}}'", NULL);
        const char *s = L->src + i;
        size_t left = L->len - i;
        if (depth == 0) {
            if (left >= 3 && s[0] == '-' && s[1] == close && s[2] == '}') {
                *strip_after = true;
                *pos = i + 3;
                return 0;
            }
            if (left >= 2 && s[0] == close && s[1] == '}') {
                *strip_after = false;
                *pos = i + 2;
                return 0;
            }
        }
        char c = s[0];
        int rc = 0;
        if (c == '\'' || c == '"') {
            rc = lex_string(L, &i);
        } else if (is_digit(c)) {
            rc = lex_number(L, &i);
        } else if (is_name0(c)) {
            size_t b = i;
            while (i < L->len && (is_name0(L->src[i]) || is_digit(L->src[i]))) i++;
            jtok *t = push(L, T_NAME, b);
            if (!t) return err_set(ERR_STAGE, "out of memory");
            t->p = L->src + b;
            t->n = i - b;
        } else {
            const char *const *op = OPS;
            for (; *op; op++) {
                size_t n = strlen(*op);
                if (left >= n && !memcmp(s, *op, n)) break;
            }
            if (!*op) {
                char what[4] = {c, 0};
                return lex_error(L, i, "unexpected character in a tag: ", (unsigned char)c < 0x80 ? what : "(non-ASCII)");
            }
            if (c == '(' || c == '[' || c == '{') depth++;
            if ((c == ')' || c == ']' || c == '}') && depth > 0) depth--;
            jtok *t = push(L, T_OP, i);
            if (!t) return err_set(ERR_STAGE, "out of memory");
            t->p = s;
            t->n = strlen(*op);
            i += t->n;
        }
        if (rc) return rc;
    }
}

/* {% raw %} at the block opener b (tag content starts at after); true when handled */
static bool raw_block(lexer *L, size_t after, size_t *end_text_b, size_t *end_text_e, size_t *next) {
    size_t i = after;
    while (i < L->len && is_ws(L->src[i])) i++;
    if (L->len - i < 3 || memcmp(L->src + i, "raw", 3)) return false;
    i += 3;
    while (i < L->len && is_ws(L->src[i])) i++;
    bool strip = false;
    if (i < L->len && L->src[i] == '-') {
        strip = true;
        i++;
    }
    if (L->len - i < 2 || memcmp(L->src + i, "%}", 2)) return false;
    i += 2;
    if (strip)
        while (i < L->len && is_ws(L->src[i])) i++;
    size_t body = i;
    for (; i + 1 < L->len; i++) {
        if (L->src[i] != '{' || L->src[i + 1] != '%') continue;
        size_t j = i + 2, close = i;
        bool strip_before = j < L->len && L->src[j] == '-';
        if (strip_before) j++;
        while (j < L->len && is_ws(L->src[j])) j++;
        if (L->len - j < 6 || memcmp(L->src + j, "endraw", 6)) continue;
        j += 6;
        while (j < L->len && is_ws(L->src[j])) j++;
        bool strip_after = j < L->len && L->src[j] == '-';
        if (strip_after) j++;
        if (L->len - j < 2 || memcmp(L->src + j, "%}", 2)) continue;
        j += 2;
        if (strip_before)
            while (close > body && is_ws(L->src[close - 1])) close--;
        if (strip_after)
            while (j < L->len && is_ws(L->src[j])) j++;
        else if (j < L->len && L->src[j] == '\n') j++;
        *end_text_b = body;
        *end_text_e = close;
        *next = j;
        return true;
    }
    return false;
}

int jinja_lex(jarena *a, const char *src, size_t len, const char *name, jtok **toks, size_t *n) {
    lexer L = {.a = a, .src = src, .len = len, .name = name, .lc_line = 1, .lc_col = 1};
    size_t pos = 0;
    bool strip_next = false, line_starting = true;
    int rc = 0;
    while (!rc) {
        size_t text_b = pos;
        if (strip_next) {
            while (text_b < len && is_ws(src[text_b])) text_b++;
            if (text_b > pos && src[text_b - 1] == '\n') line_starting = true;
        }
        /* the next tag opener */
        size_t o = text_b;
        for (; o + 1 < len; o++)
            if (src[o] == '{' && (src[o + 1] == '{' || src[o + 1] == '%' || src[o + 1] == '#')) break;
        if (o + 1 >= len) {
            rc = push_text(&L, text_b, len);
            break;
        }
        char kind = src[o + 1];
        size_t after = o + 2, text_e = o;
        char mod = after < len ? src[after] : 0;
        if (mod == '-') {
            while (text_e > text_b && is_ws(src[text_e - 1])) text_e--;
            after++;
        } else if (mod == '+' && kind != '{') {
            after++;
        } else if (kind != '{') {
            /* lstrip_blocks: only spaces and tabs between the line's start and the tag */
            size_t k = text_e;
            while (k > text_b && (src[k - 1] == ' ' || src[k - 1] == '\t')) k--;
            if ((k > text_b && src[k - 1] == '\n') || (k == text_b && line_starting)) text_e = k;
        }
        rc = push_text(&L, text_b, text_e);
        if (rc) break;
        bool strip_after = false;
        if (kind == '#') {
            size_t e = o + 2;
            for (; e + 1 < len; e++)
                if (src[e] == '#' && src[e + 1] == '}') break;
            if (e + 1 >= len) {
                rc = lex_error(&L, o, "unclosed comment: expected '#}'", NULL);
                break;
            }
            strip_after = e > o + 2 && src[e - 1] == '-';
            pos = e + 2;
        } else if (kind == '%' && raw_block(&L, after, &text_b, &text_e, &pos)) {
            rc = push_text(&L, text_b, text_e);
            strip_next = false;
            line_starting = pos > 0 && src[pos - 1] == '\n';
            continue;
        } else {
            jtok *t = push(&L, kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, o);
            if (!t) return err_set(ERR_STAGE, "out of memory");
            pos = after;
            rc = lex_tag(&L, &pos, kind == '{' ? '{' : '%', &strip_after);
            if (rc) break;
            t = push(&L, kind == '{' ? T_VAR_END : T_BLOCK_END, pos - 2);
            if (!t) return err_set(ERR_STAGE, "out of memory");
        }
        strip_next = strip_after;
        line_starting = false;
        if (!strip_after && kind != '{') {
            /* trim_blocks */
            if (pos < len && src[pos] == '\n') {
                pos++;
                line_starting = true;
            } else if (pos + 1 < len && src[pos] == '\r' && src[pos + 1] == '\n') {
                pos += 2;
                line_starting = true;
            }
        }
    }
    if (rc) return rc;
    if (!push(&L, T_EOF, len)) return err_set(ERR_STAGE, "out of memory");
    *toks = L.toks;
    *n = L.n;
    return 0;
}
