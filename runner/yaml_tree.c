/* yaml_tree.c: libyaml document -> located node tree, ${ENV} expansion, YAML emitter. */
#define _GNU_SOURCE
#include "yaml_tree.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "core/err.h"
#include "core/fsutil.h"

#define YT_MAX_DEPTH 64

/* ---- source texts, for the caret display ---- */

typedef struct yt_source {
    char *file, *text;
} yt_source;

static yt_source *sources;
static size_t n_sources;

static const char *source_intern(const char *file, const char *text) {
    for (size_t i = 0; i < n_sources; i++)
        if (!strcmp(sources[i].file, file)) {
            if (text && strcmp(sources[i].text, text)) {
                free(sources[i].text);
                sources[i].text = strdup(text);
            }
            return sources[i].file;
        }
    sources = realloc(sources, (n_sources + 1) * sizeof *sources);
    sources[n_sources].file = strdup(file);
    sources[n_sources].text = strdup(text ? text : "");
    return sources[n_sources++].file;
}

static const char *source_text(const char *file) {
    for (size_t i = 0; i < n_sources; i++)
        if (sources[i].file == file || !strcmp(sources[i].file, file)) return sources[i].text;
    return NULL;
}

static char *located_v(const char *file, int line, int col, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    char *out = NULL;
    const char *text = file ? source_text(file) : NULL;
    if (!file) {
        if (asprintf(&out, "%s", msg) < 0) out = NULL;
        return out;
    }
    if (line <= 0 || !text) {
        if (asprintf(&out, "%s: %s", file, msg) < 0) out = NULL;
        return out;
    }
    const char *p = text;
    for (int l = 1; l < line && p; l++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (!p) p = "";
    const char *e = strchr(p, '\n');
    int len = e ? (int)(e - p) : (int)strlen(p);
    char caret[512];
    int c = col > 0 ? col - 1 : 0;
    if (c > (int)sizeof caret - 2) c = (int)sizeof caret - 2;
    for (int i = 0; i < c; i++) caret[i] = (i < len && p[i] == '\t') ? '\t' : ' ';
    caret[c] = '^';
    caret[c + 1] = 0;
    if (asprintf(&out, "%s:%d:%d: %s\n    %.*s\n    %s", file, line, col, msg, len, p, caret) < 0) out = NULL;
    return out;
}

char *yt_located(const yt_node *n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = located_v(n ? n->file : NULL, n ? n->line : 0, n ? n->col : 0, fmt, ap);
    va_end(ap);
    return s;
}

static int located_err(const char *file, int line, int col, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = located_v(file, line, col, fmt, ap);
    va_end(ap);
    err_set(ERR_RECIPE, "%s", s);
    free(s);
    return ERR_RECIPE;
}

/* ---- ${VAR} and ${VAR:-default} ---- */

static int expand_env(const char *in, const char *file, int line, int col, char **out) {
    size_t cap = strlen(in) + 64, n = 0;
    char *buf = malloc(cap);
    for (const char *p = in; *p;) {
        if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            if (!end) {
                free(buf);
                return located_err(file, line, col, "unterminated '${' in '%s' (write ${NAME} or ${NAME:-default})", in);
            }
            char name[256];
            const char *def = NULL;
            size_t nl = (size_t)(end - (p + 2));
            const char *sep = memmem(p + 2, nl, ":-", 2);
            size_t namel = sep ? (size_t)(sep - (p + 2)) : nl;
            if (namel == 0 || namel >= sizeof name) {
                free(buf);
                return located_err(file, line, col, "bad variable reference in '%s'", in);
            }
            memcpy(name, p + 2, namel);
            name[namel] = 0;
            for (size_t i = 0; i < namel; i++)
                if (!(isalnum((unsigned char)name[i]) || name[i] == '_')) {
                    free(buf);
                    return located_err(file, line, col, "bad variable name '%s' in '%s'", name, in);
                }
            char *defbuf = NULL;
            if (sep) defbuf = strndup(sep + 2, (size_t)(end - (sep + 2)));
            const char *val = getenv(name);
            if (!val || (!*val && defbuf)) def = defbuf, val = def;
            if (!val) {
                free(buf);
                return located_err(file, line, col, "environment variable '%s' is not set (set it, or write ${%s:-default})", name, name);
            }
            size_t vl = strlen(val);
            if (n + vl + 1 > cap) { cap = (n + vl + 1) * 2; buf = realloc(buf, cap); }
            memcpy(buf + n, val, vl);
            n += vl;
            free(defbuf);
            p = end + 1;
            continue;
        }
        if (n + 2 > cap) { cap *= 2; buf = realloc(buf, cap); }
        buf[n++] = *p++;
    }
    buf[n] = 0;
    *out = buf;
    return 0;
}

/* ---- libyaml document -> tree ---- */

static yt_node *node_new(yt_type t, const char *file, int line, int col) {
    yt_node *n = calloc(1, sizeof *n);
    n->type = t;
    n->file = file;
    n->line = line;
    n->col = col;
    return n;
}

static void node_push(yt_node *n, yt_node *k, yt_node *v) {
    n->vals = realloc(n->vals, (n->n + 1) * sizeof *n->vals);
    if (n->type == YT_MAP) {
        n->keys = realloc(n->keys, (n->n + 1) * sizeof *n->keys);
        n->keys[n->n] = k;
    }
    n->vals[n->n++] = v;
}

static int convert(yaml_document_t *doc, yaml_node_t *yn, const char *file, int depth, yt_node **out) {
    *out = NULL;
    int line = (int)yn->start_mark.line + 1, col = (int)yn->start_mark.column + 1;
    if (depth > YT_MAX_DEPTH) return located_err(file, line, col, "nesting deeper than %d levels", YT_MAX_DEPTH);
    int rc = 0;
    switch (yn->type) {
    case YAML_SCALAR_NODE: {
        yt_node *n = node_new(YT_SCALAR, file, line, col);
        n->quoted = yn->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        char *raw = strndup((const char *)yn->data.scalar.value, yn->data.scalar.length);
        if (strlen(raw) != yn->data.scalar.length) {
            free(raw);
            free(n);
            return located_err(file, line, col, "NUL byte in a scalar");
        }
        rc = expand_env(raw, file, line, col, &n->text);
        free(raw);
        if (rc) { free(n); return rc; }
        *out = n;
        return 0;
    }
    case YAML_SEQUENCE_NODE: {
        yt_node *n = node_new(YT_SEQ, file, line, col);
        for (yaml_node_item_t *it = yn->data.sequence.items.start; it < yn->data.sequence.items.top; it++) {
            yt_node *c;
            rc = convert(doc, yaml_document_get_node(doc, *it), file, depth + 1, &c);
            if (rc) { yt_free(&n); return rc; }
            node_push(n, NULL, c);
        }
        *out = n;
        return 0;
    }
    case YAML_MAPPING_NODE: {
        yt_node *n = node_new(YT_MAP, file, line, col);
        for (yaml_node_pair_t *pr = yn->data.mapping.pairs.start; pr < yn->data.mapping.pairs.top; pr++) {
            yt_node *k, *v;
            yaml_node_t *kn = yaml_document_get_node(doc, pr->key);
            if (kn->type != YAML_SCALAR_NODE) {
                yt_free(&n);
                return located_err(file, (int)kn->start_mark.line + 1, (int)kn->start_mark.column + 1,
                                   "mapping keys must be plain names, not lists or mappings");
            }
            rc = convert(doc, kn, file, depth + 1, &k);
            if (rc) { yt_free(&n); return rc; }
            for (size_t i = 0; i < n->n; i++)
                if (!strcmp(n->keys[i]->text, k->text)) {
                    rc = located_err(file, k->line, k->col, "duplicate key '%s' (first defined at line %d)", k->text, n->keys[i]->line);
                    yt_free(&k);
                    yt_free(&n);
                    return rc;
                }
            rc = convert(doc, yaml_document_get_node(doc, pr->value), file, depth + 1, &v);
            if (rc) { yt_free(&k); yt_free(&n); return rc; }
            node_push(n, k, v);
        }
        *out = n;
        return 0;
    }
    default:
        return located_err(file, line, col, "empty YAML node");
    }
}

static int parse(const char *text, size_t len, const char *file, yt_node **out) {
    *out = NULL;
    yaml_parser_t p;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&p)) return err_set(ERR_STAGE, "out of memory");
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int rc = 0;
    if (!yaml_parser_load(&p, &doc)) {
        const char *what = p.problem ? p.problem : "invalid YAML";
        if (p.context)
            rc = located_err(file, (int)p.problem_mark.line + 1, (int)p.problem_mark.column + 1, "%s %s", p.context, what);
        else
            rc = located_err(file, (int)p.problem_mark.line + 1, (int)p.problem_mark.column + 1, "%s", what);
        yaml_parser_delete(&p);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) rc = located_err(file, 0, 0, "the file is empty (a recipe is a mapping with 'name' and 'stages')");
    else rc = convert(&doc, root, file, 0, out);
    /* a second document in the stream is a mistake worth reporting */
    if (!rc) {
        yaml_document_t doc2;
        if (yaml_parser_load(&p, &doc2)) {
            if (yaml_document_get_root_node(&doc2)) {
                yaml_node_t *r2 = yaml_document_get_root_node(&doc2);
                rc = located_err(file, (int)r2->start_mark.line + 1, (int)r2->start_mark.column + 1,
                                 "a second YAML document ('---') in one recipe: keep one document per file");
                yt_free(out);
            }
            yaml_document_delete(&doc2);
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&p);
    return rc;
}

int yt_parse_file(const char *path, yt_node **out) {
    char *text;
    size_t len;
    *out = NULL;
    int rc = fs_read_all(path, &text, &len);
    if (rc) return err_set(ERR_RECIPE, "%s", err_msg());
    if (strlen(text) != len) {
        free(text);
        return err_set(ERR_RECIPE, "%s: contains a NUL byte: not a YAML text file", path);
    }
    const char *file = source_intern(path, text);
    rc = parse(text, len, file, out);
    free(text);
    return rc;
}

int yt_parse_string(const char *text, const char *origin, yt_node **out) {
    const char *file = source_intern(origin, text);
    return parse(text, strlen(text), file, out);
}

void yt_free(yt_node **pn) {
    yt_node *n = *pn;
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        if (n->keys) yt_free(&n->keys[i]);
        yt_free(&n->vals[i]);
    }
    free(n->keys);
    free(n->vals);
    free(n->text);
    free(n);
    *pn = NULL;
}

yt_node *yt_clone(const yt_node *n) {
    if (!n) return NULL;
    yt_node *c = node_new(n->type, n->file, n->line, n->col);
    c->quoted = n->quoted;
    c->text = n->text ? strdup(n->text) : NULL;
    for (size_t i = 0; i < n->n; i++) node_push(c, n->keys ? yt_clone(n->keys[i]) : NULL, yt_clone(n->vals[i]));
    return c;
}

yt_node *yt_map_get(const yt_node *map, const char *key) {
    if (!map || map->type != YT_MAP) return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i]->text, key)) return map->vals[i];
    return NULL;
}

yt_node *yt_map_key(const yt_node *map, const char *key) {
    if (!map || map->type != YT_MAP) return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i]->text, key)) return map->keys[i];
    return NULL;
}

yt_node *yt_new_map(const yt_node *pos) {
    return node_new(YT_MAP, pos ? pos->file : NULL, pos ? pos->line : 0, pos ? pos->col : 0);
}

void yt_map_set(yt_node *map, const char *key, yt_node *val, const yt_node *pos) {
    for (size_t i = 0; i < map->n; i++)
        if (!strcmp(map->keys[i]->text, key)) {
            yt_free(&map->vals[i]);
            map->vals[i] = val;
            return;
        }
    yt_node *k = node_new(YT_SCALAR, pos ? pos->file : val->file, pos ? pos->line : val->line, pos ? pos->col : val->col);
    k->text = strdup(key);
    node_push(map, k, val);
}

bool yt_is_null(const yt_node *n) {
    if (!n) return true;
    if (n->type != YT_SCALAR || n->quoted) return false;
    return !strcmp(n->text, "") || !strcmp(n->text, "~") || !strcmp(n->text, "null") || !strcmp(n->text, "Null") ||
           !strcmp(n->text, "NULL");
}

/* ---- to JSON (YAML 1.2 core schema for plain scalars) ---- */

static json_t *scalar_json(const yt_node *n) {
    if (n->quoted) return json_string(n->text);
    if (yt_is_null(n)) return json_null();
    const char *t = n->text;
    if (!strcmp(t, "true") || !strcmp(t, "True") || !strcmp(t, "TRUE")) return json_true();
    if (!strcmp(t, "false") || !strcmp(t, "False") || !strcmp(t, "FALSE")) return json_false();
    char *end;
    errno = 0;
    long long ll = strtoll(t, &end, 10);
    if (*t && !*end && errno == 0 && !strchr(t, '.')) return json_integer(ll);
    errno = 0;
    double d = strtod(t, &end);
    if (*t && !*end && errno == 0 && (isdigit((unsigned char)t[0]) || t[0] == '-' || t[0] == '+' || t[0] == '.') &&
        isfinite(d) && strpbrk(t, "0123456789"))
        return json_real(d);
    return json_string(t);
}

json_t *yt_to_json(const yt_node *n) {
    if (!n) return json_null();
    switch (n->type) {
    case YT_SCALAR: return scalar_json(n);
    case YT_SEQ: {
        json_t *a = json_array();
        for (size_t i = 0; i < n->n; i++) json_array_append_new(a, yt_to_json(n->vals[i]));
        return a;
    }
    case YT_MAP: {
        json_t *o = json_object();
        for (size_t i = 0; i < n->n; i++) json_object_set_new(o, n->keys[i]->text, yt_to_json(n->vals[i]));
        return o;
    }
    }
    return json_null();
}

/* ---- JSON -> block YAML ---- */

typedef struct sbuf {
    char *s;
    size_t n, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t l) {
    if (b->n + l + 1 > b->cap) {
        b->cap = (b->n + l + 1) * 2;
        b->s = realloc(b->s, b->cap);
    }
    memcpy(b->s + b->n, s, l);
    b->n += l;
    b->s[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_indent(sbuf *b, int k) {
    for (int i = 0; i < k; i++) sb_put(b, "  ", 2);
}

static bool needs_quotes(const char *s) {
    if (!*s) return true;
    if (strpbrk(s, ":#{}[],&*!|>'\"%@`\n\t") || isspace((unsigned char)s[0]) || isspace((unsigned char)s[strlen(s) - 1]))
        return true;
    if (s[0] == '-' || s[0] == '?') return true;
    static const char *words[] = {"true", "false", "null", "yes", "no", "on", "off", "~", "True", "False", "Null", "NULL", "TRUE", "FALSE"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (!strcmp(s, words[i])) return true;
    char *end;
    strtod(s, &end);
    return *end == 0; /* looks like a number */
}

void yt_format_real(double d, char *out, size_t n) {
    char g[64], f[48];
    snprintf(g, sizeof g, "%.17g", d);
    /* the shortest form that reads back as the same double ... */
    for (int p = 1; p <= 17; p++) {
        snprintf(g, sizeof g, "%.*g", p, d);
        if (strtod(g, NULL) == d) break;
    }
    /* ... written out when %g chose an exponent for a plain number (20, not 2e+01) */
    if (strpbrk(g, "eE") && fabs(d) >= 1e-4 && fabs(d) < 1e15) {
        for (int p = 0; p <= 17; p++) {
            snprintf(f, sizeof f, "%.*f", p, d);
            if (strtod(f, NULL) == d) {
                snprintf(g, sizeof g, "%s", f);
                break;
            }
        }
    }
    if (!strpbrk(g, ".eEni")) strcat(g, ".0"); /* stays a float in YAML (not inf/nan) */
    snprintf(out, n, "%s", g);
}

static void emit_scalar(sbuf *b, const json_t *j) {
    char tmp[64];
    switch (json_typeof(j)) {
    case JSON_NULL: sb_puts(b, "null"); break;
    case JSON_TRUE: sb_puts(b, "true"); break;
    case JSON_FALSE: sb_puts(b, "false"); break;
    case JSON_INTEGER: snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(j)); sb_puts(b, tmp); break;
    case JSON_REAL: {
        yt_format_real(json_real_value(j), tmp, sizeof tmp);
        sb_puts(b, tmp);
        break;
    }
    case JSON_STRING: {
        const char *s = json_string_value(j);
        if (!needs_quotes(s)) { sb_puts(b, s); break; }
        char *q = json_dumps(j, JSON_ENCODE_ANY);
        sb_puts(b, q);
        free(q);
        break;
    }
    default: break;
    }
}

static void emit(sbuf *b, const json_t *j, int ind);

static bool is_empty_container(const json_t *j) {
    return (json_is_object(j) && json_object_size(j) == 0) || (json_is_array(j) && json_array_size(j) == 0);
}

static void emit_value_after_key(sbuf *b, const json_t *v, int ind) {
    if (is_empty_container(v)) {
        sb_puts(b, json_is_object(v) ? " {}\n" : " []\n");
    } else if (json_is_object(v) || json_is_array(v)) {
        sb_puts(b, "\n");
        emit(b, v, ind + 1);
    } else {
        sb_puts(b, " ");
        emit_scalar(b, v);
        sb_puts(b, "\n");
    }
}

static void emit(sbuf *b, const json_t *j, int ind) {
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            sb_indent(b, ind);
            json_t *ks = json_string(k);
            emit_scalar(b, ks);
            json_decref(ks);
            sb_puts(b, ":");
            emit_value_after_key(b, v, ind);
        }
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            sb_indent(b, ind);
            sb_puts(b, "-");
            if (json_is_object(v) && json_object_size(v)) {
                /* first key on the dash line, the rest indented under it */
                sbuf inner = {0};
                emit(&inner, v, ind + 1);
                const char *body = inner.s + 2 * (ind + 1);
                sb_puts(b, " ");
                sb_puts(b, body);
                free(inner.s);
            } else {
                emit_value_after_key(b, v, ind);
            }
        }
    } else {
        sb_indent(b, ind);
        emit_scalar(b, j);
        sb_puts(b, "\n");
    }
}

char *yt_emit_json(const json_t *j) {
    sbuf b = {0};
    emit(&b, j, 0);
    if (!b.s) return strdup("");
    return b.s;
}
