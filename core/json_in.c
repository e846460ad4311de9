/* json_in.c: outside JSON with integers beyond int64, and typed getters (see json_in.h). */
#include "core/json_in.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"

/* digits d[0..n) (no sign, no leading zero) exceed int64's magnitude (max+1 when negative) */
static bool digits_overflow(const char *d, size_t n, bool negative) {
    static const char lim[] = "9223372036854775807";
    if (n != 19) return n > 19;
    int c = memcmp(d, lim, 19);
    if (c == 0) return false;
    if (negative && memcmp(d, "9223372036854775808", 19) == 0) return false;
    return c > 0;
}

/* d[0..n) -> "D.DDDDeE" of the same length n (n >= 19, so there are at least 14 decimals) */
static void rewrite_as_real(char *d, size_t n) {
    char exp[8];
    int elen = snprintf(exp, sizeof exp, "%zu", n - 1);
    size_t k = n - 3 - (size_t)elen; /* decimals kept */
    memmove(d + 2, d + 1, k);
    d[1] = '.';
    d[2 + k] = 'e';
    memcpy(d + 3 + k, exp, (size_t)elen);
}

/* a copy of text with every integer literal beyond int64 rewritten as a real, or NULL when
 * there is none (the common case: nothing is copied) */
static char *widen_big_integers(const char *text, size_t len) {
    char *copy = NULL;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_str) {
            if (c == '\\') i++;
            else if (c == '"') in_str = false;
            continue;
        }
        if (c == '"') { in_str = true; continue; }
        if (c != '-' && (c < '0' || c > '9')) continue;
        size_t s = i + (c == '-'), e = s;
        while (e < len && text[e] >= '0' && text[e] <= '9') e++;
        bool is_real = e < len && (text[e] == '.' || text[e] == 'e' || text[e] == 'E');
        if (!is_real && e - s >= 19 && text[s] != '0' && digits_overflow(text + s, e - s, c == '-')) {
            if (!copy) {
                copy = malloc(len + 1);
                if (!copy) return NULL;
                memcpy(copy, text, len);
                copy[len] = 0;
            }
            rewrite_as_real(copy + s, e - s);
        }
        /* skip the rest of the number (fraction and exponent included) */
        while (e < len && strchr("0123456789.eE+-", text[e])) e++;
        i = e - 1;
    }
    return copy;
}

int json_in_loadb(const char *text, size_t len, size_t flags, const char *name, json_t **out) {
    *out = NULL;
    char *wide = widen_big_integers(text, len);
    json_error_t je;
    json_t *j = json_loadb(wide ? wide : text, len, flags, &je);
    free(wide);
    if (!j) return err_set(ERR_DATA, "%s:%d:%d: invalid JSON: %s", name, je.line, je.column, je.text);
    *out = j;
    return 0;
}

int json_in_load_file(const char *path, size_t flags, json_t **out) {
    *out = NULL;
    char *text = NULL;
    size_t len = 0;
    if (!fs_exists(path)) return err_set(ERR_DATA, "'%s': no such file", path);
    int rc = fs_read_all(path, &text, &len);
    if (rc) return rc;
    rc = json_in_loadb(text, len, flags, path, out);
    free(text);
    return rc;
}

const char *json_in_type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    case JSON_NULL: return "null";
    }
    return "?";
}

/* the value of key, or NULL when absent or null */
static json_t *present(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

static int wrong(const char *path, const char *key, const char *expected, const json_t *v) {
    if (json_is_number(v))
        return err_set(ERR_DATA, "%s: \"%s\" must be %s (got %.17g)", path, key, expected, json_number_value(v));
    return err_set(ERR_DATA, "%s: \"%s\" must be %s (got %s)", path, key, expected, json_in_type_name(v));
}

int json_in_int(const json_t *obj, const char *key, const char *path, int64_t def, int64_t min, int64_t max,
                int64_t *out) {
    json_t *v = present(obj, key);
    if (!v) { *out = def; return 0; }
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char what[96];
        if (max == INT64_MAX) snprintf(what, sizeof what, "an integer >= %lld", (long long)min);
        else snprintf(what, sizeof what, "an integer in [%lld, %lld]", (long long)min, (long long)max);
        return wrong(path, key, what, v);
    }
    *out = json_integer_value(v);
    return 0;
}

int json_in_limit(const json_t *obj, const char *key, const char *path, int64_t def, int64_t *out) {
    json_t *v = present(obj, key);
    if (!v) { *out = def; return 0; }
    if (json_is_integer(v) && json_integer_value(v) >= 1) { *out = json_integer_value(v); return 0; }
    if (json_is_real(v) && json_real_value(v) >= 9223372036854775808.0) { *out = INT64_MAX; return 0; }
    return wrong(path, key, "a positive integer (or a huge one for no limit)", v);
}

int json_in_num(const json_t *obj, const char *key, const char *path, double def, double *out) {
    json_t *v = present(obj, key);
    if (!v) { *out = def; return 0; }
    if (!json_is_number(v)) return wrong(path, key, "a number", v);
    *out = json_number_value(v);
    return 0;
}

int json_in_bool(const json_t *obj, const char *key, const char *path, bool def, bool *out) {
    json_t *v = present(obj, key);
    if (!v) { *out = def; return 0; }
    if (!json_is_boolean(v)) return wrong(path, key, "true or false", v);
    *out = json_is_true(v);
    return 0;
}

int json_in_str(const json_t *obj, const char *key, const char *path, const char *def, const char **out) {
    json_t *v = present(obj, key);
    if (!v) { *out = def; return 0; }
    if (!json_is_string(v)) return wrong(path, key, "a string", v);
    *out = json_string_value(v);
    return 0;
}
