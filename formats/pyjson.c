/* pyjson.c: Python json.dumps-compatible serialisation (see pyjson.h). */
#include "pyjson.h"

#include "core/err.h"
#include "core/fsutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sbuf {
    char *s;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) { b->oom = true; return; }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

void pyjson_float_repr(double x, char *buf, size_t n) {
    if (isnan(x)) { snprintf(buf, n, "NaN"); return; }
    if (isinf(x)) { snprintf(buf, n, x > 0 ? "Infinity" : "-Infinity"); return; }
    if (x == 0) { snprintf(buf, n, signbit(x) ? "-0.0" : "0.0"); return; }
    /* the shortest %.*e that reads back to the same double: Python's repr digits */
    char e[40];
    for (int p = 0; p < 17; p++) {
        snprintf(e, sizeof e, "%.*e", p, x);
        if (strtod(e, NULL) == x) break;
    }
    /* split "-d.ddde[+-]XX" into sign, digits and decimal exponent */
    const char *q = e;
    bool neg = *q == '-';
    if (neg) q++;
    char digits[24];
    int nd = 0;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    int exp10 = atoi(q + 1);
    char out[64];
    int o = 0;
    if (neg) out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        /* scientific: "1e-05", "1.5e+16" */
        out[o++] = digits[0];
        if (nd > 1) { out[o++] = '.'; for (int i = 1; i < nd; i++) out[o++] = digits[i]; }
        o += snprintf(out + o, sizeof out - (size_t)o, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    } else if (exp10 < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -exp10 - 1; i++) out[o++] = '0';
        for (int i = 0; i < nd; i++) out[o++] = digits[i];
        out[o] = 0;
    } else {
        for (int i = 0; i <= exp10; i++) out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > exp10 + 1) for (int i = exp10 + 1; i < nd; i++) out[o++] = digits[i];
        else out[o++] = '0';
        out[o] = 0;
    }
    snprintf(buf, n, "%s", out);
}

static void put_string(sbuf *b, const char *s, size_t len) {
    sb_put(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    char tmp[16];
    while (p < end) {
        unsigned c = *p;
        if (c == '"') { sb_put(b, "\\\"", 2); p++; continue; }
        if (c == '\\') { sb_put(b, "\\\\", 2); p++; continue; }
        if (c == '\n') { sb_put(b, "\\n", 2); p++; continue; }
        if (c == '\r') { sb_put(b, "\\r", 2); p++; continue; }
        if (c == '\t') { sb_put(b, "\\t", 2); p++; continue; }
        if (c == '\b') { sb_put(b, "\\b", 2); p++; continue; }
        if (c == '\f') { sb_put(b, "\\f", 2); p++; continue; }
        if (c >= 0x20 && c < 0x7f) { sb_put(b, (const char *)p, 1); p++; continue; }
        /* decode one UTF-8 sequence (jansson strings are valid UTF-8) */
        uint32_t cp = c;
        int extra = 0;
        if (c >= 0xf0) { cp = c & 0x07; extra = 3; }
        else if (c >= 0xe0) { cp = c & 0x0f; extra = 2; }
        else if (c >= 0xc0) { cp = c & 0x1f; extra = 1; }
        for (int i = 0; i < extra && p + 1 + i < end; i++) cp = (cp << 6) | (p[1 + i] & 0x3f);
        p += 1 + extra;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(tmp, sizeof tmp, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
        } else {
            snprintf(tmp, sizeof tmp, "\\u%04x", cp);
        }
        sb_str(b, tmp);
    }
    sb_put(b, "\"", 1);
}

static void put_newline(sbuf *b, int indent, int level) {
    sb_put(b, "\n", 1);
    for (int i = 0; i < indent * level; i++) sb_put(b, " ", 1);
}

static int cmp_key(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void put_value(sbuf *b, const json_t *j, int indent, int level, bool sort) {
    char tmp[64];
    switch (json_typeof(j)) {
    case JSON_NULL: sb_str(b, "null"); break;
    case JSON_TRUE: sb_str(b, "true"); break;
    case JSON_FALSE: sb_str(b, "false"); break;
    case JSON_INTEGER:
        snprintf(tmp, sizeof tmp, "%lld", (long long)json_integer_value(j));
        sb_str(b, tmp);
        break;
    case JSON_REAL:
        pyjson_float_repr(json_real_value(j), tmp, sizeof tmp);
        sb_str(b, tmp);
        break;
    case JSON_STRING: put_string(b, json_string_value(j), json_string_length(j)); break;
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        if (!n) { sb_str(b, "[]"); break; }
        sb_str(b, "[");
        for (size_t i = 0; i < n; i++) {
            if (i) sb_str(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) put_newline(b, indent, level + 1);
            put_value(b, json_array_get(j, i), indent, level + 1, sort);
        }
        if (indent >= 0) put_newline(b, indent, level);
        sb_str(b, "]");
        break;
    }
    case JSON_OBJECT: {
        size_t n = json_object_size(j);
        if (!n) { sb_str(b, "{}"); break; }
        const char **keys = malloc(n * sizeof *keys);
        if (!keys) { b->oom = true; break; }
        size_t k = 0;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)j, key, v) keys[k++] = key;
        if (sort) qsort(keys, n, sizeof *keys, cmp_key);
        sb_str(b, "{");
        for (size_t i = 0; i < n; i++) {
            if (i) sb_str(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) put_newline(b, indent, level + 1);
            put_string(b, keys[i], strlen(keys[i]));
            sb_str(b, ": ");
            put_value(b, json_object_get(j, keys[i]), indent, level + 1, sort);
        }
        free(keys);
        if (indent >= 0) put_newline(b, indent, level);
        sb_str(b, "}");
        break;
    }
    }
}

char *pyjson_dumps(const json_t *j, int indent, bool sort_keys) {
    sbuf b = {0};
    put_value(&b, j, indent, 0, sort_keys);
    if (b.oom) { free(b.s); return NULL; }
    return b.s;
}

int pyjson_write_config(const json_t *j, const char *dir, const char *name) {
    char *s = pyjson_dumps(j, 2, true);
    if (!s) return err_set(ERR_STAGE, "out of memory");
    size_t l = strlen(s);
    char *t = realloc(s, l + 2);
    if (!t) {
        free(s);
        return err_set(ERR_STAGE, "out of memory");
    }
    t[l] = '\n';
    t[l + 1] = 0;
    char *path = fs_join(dir, name);
    int rc = fs_write_atomic(path, t, l + 1);
    free(path);
    free(t);
    return rc;
}
