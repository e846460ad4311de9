/* dataset_read.c: streaming readers for JSON, JSONL, CSV and text datasets (see dataset_read.h).
 *
 * The file is memory-mapped and parsed in place: a JSON array is walked element by element
 * with jansson's JSON_DISABLE_EOF_CHECK (which reports how many bytes one value took), so
 * memory stays at one record whatever the file size. Line and column numbers are counted by
 * the reader, not taken from jansson, because jansson only sees one element at a time. */
#define _GNU_SOURCE
#include "data/dataset_read.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/utf8.h"
#include "data/parquet.h"

struct dataset_reader {
    char *path;
    dataset_type type;
    const char *buf; /* the file's bytes (after a BOM) */
    size_t len;
    void *map;
    size_t map_len;
    size_t pos;        /* parse position */
    size_t line;       /* 1-based line of pos */
    size_t line_start; /* offset where that line starts */
    size_t index;      /* records returned so far */
    size_t rec_line;   /* line of the record last returned */
    int state;         /* JSON: 0 before '[', 1 inside, 2 after ']' */
    bool broken;       /* a CSV quoting error: the row structure is lost from here on */
    /* CSV */
    char **header;
    size_t n_header;
    char *field;       /* scratch for one field */
    size_t field_cap;
    pq_file *pq;       /* Parquet */
};

static const struct {
    const char *name;
    dataset_type type;
} type_names[] = {{"auto", DATASET_TYPE_AUTO},
                  {"json", DATASET_TYPE_JSON},
                  {"jsonl", DATASET_TYPE_JSONL},
                  {"csv", DATASET_TYPE_CSV},
                  {"text", DATASET_TYPE_TEXT},
                  {"parquet", DATASET_TYPE_PARQUET}};

int dataset_type_parse(const char *name, dataset_type *out) {
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (!strcmp(type_names[i].name, name)) {
            *out = type_names[i].type;
            return 0;
        }
    return err_set(ERR_RECIPE, "unknown dataset type '%s' (expected auto, json, jsonl, csv, text or parquet)", name);
}

const char *dataset_type_name(dataset_type t) {
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (type_names[i].type == t) return type_names[i].name;
    return "?";
}

/* ---- UTF-8 ---- */

/* ---- positions ---- */

/* move pos forward to p, counting lines */
static void advance(dataset_reader *r, size_t p) {
    const char *b = r->buf;
    for (size_t i = r->pos; i < p; i++) {
        const char *nl = memchr(b + i, '\n', p - i);
        if (!nl) break;
        i = (size_t)(nl - b);
        r->line++;
        r->line_start = i + 1;
    }
    r->pos = p;
}

/* the line and column of offset p (>= pos) without moving */
static void locate(const dataset_reader *r, size_t p, size_t *line, size_t *col) {
    size_t l = r->line, ls = r->line_start;
    for (size_t i = r->pos; i < p && i < r->len; i++)
        if (r->buf[i] == '\n') l++, ls = i + 1;
    *line = l;
    *col = p - ls + 1;
}

static int error_at(const dataset_reader *r, size_t p, const char *msg) {
    size_t line, col;
    locate(r, p, &line, &col);
    return err_set(ERR_DATA, "%s:%zu:%zu: %s", r->path, line, col, msg);
}

static void skip_ws(dataset_reader *r) {
    size_t p = r->pos;
    while (p < r->len && (r->buf[p] == ' ' || r->buf[p] == '\t' || r->buf[p] == '\n' || r->buf[p] == '\r')) p++;
    advance(r, p);
}

static int utf8_error(const dataset_reader *r, size_t bad) {
    char msg[96];
    snprintf(msg, sizeof msg, "invalid UTF-8 (byte 0x%02x); convert the file to UTF-8 (e.g. with iconv)",
             (unsigned char)r->buf[bad]);
    return error_at(r, bad, msg);
}

/* ---- JSON array and JSON lines ---- */

/* parse the object at start; *used: the bytes it took */
static int json_parse_object(dataset_reader *r, size_t start, size_t len, json_t **rec, size_t *used) {
    json_error_t e;
    json_t *j = json_loadb(r->buf + start, len, JSON_DISABLE_EOF_CHECK, &e); /* \u0000 refused: C strings downstream */
    if (!j) {
        /* jansson reports non-UTF-8 input as a decode error; name it plainly */
        size_t span = (size_t)e.position + 4 < len ? (size_t)e.position + 4 : len;
        size_t ok = utf8_valid_prefix(r->buf + start, span);
        if (ok < span) return utf8_error(r, start + ok);
        /* a JSONL record is parsed alone: what jansson calls the end of the file is the end of the line */
        char msg[sizeof e.text + 32];
        const char *eof = strstr(e.text, "end of file");
        if (r->type == DATASET_TYPE_JSONL && eof)
            snprintf(msg, sizeof msg, "%.*send of the line%s", (int)(eof - e.text), e.text, eof + strlen("end of file"));
        else
            snprintf(msg, sizeof msg, "%s", e.text);
        return error_at(r, start + (size_t)(e.position > 0 ? e.position - 1 : 0), msg);
    }
    *rec = j;
    *used = e.position > 0 ? (size_t)e.position : 1; /* bytes consumed (JSON_DISABLE_EOF_CHECK) */
    return 0;
}

static int next_json(dataset_reader *r, json_t **rec) {
    if (r->state == 0) {
        skip_ws(r);
        if (r->pos >= r->len) return error_at(r, r->pos, "empty file (expected a JSON array of records)");
        if (r->buf[r->pos] != '[')
            return error_at(r, r->pos, "expected a JSON array of records ('['); use type: jsonl for one object per line");
        advance(r, r->pos + 1);
        r->state = 1;
        skip_ws(r);
        if (r->pos < r->len && r->buf[r->pos] == ']') {
            advance(r, r->pos + 1);
            r->state = 2;
        }
    } else if (r->state == 1) {
        skip_ws(r);
        if (r->pos >= r->len) return error_at(r, r->pos, "unexpected end of file (the array is not closed with ']')");
        char c = r->buf[r->pos];
        if (c == ']') {
            advance(r, r->pos + 1);
            r->state = 2;
        } else if (c == ',') {
            advance(r, r->pos + 1);
            skip_ws(r);
        } else {
            return error_at(r, r->pos, "expected ',' or ']' after a record");
        }
    }
    if (r->state == 2) {
        skip_ws(r);
        if (r->pos < r->len) return error_at(r, r->pos, "unexpected text after the closing ']'");
        return 0;
    }
    if (r->pos >= r->len) return error_at(r, r->pos, "unexpected end of file (the array is not closed with ']')");
    if (r->buf[r->pos] != '{') {
        char msg[96];
        snprintf(msg, sizeof msg, "record %zu is not a JSON object", r->index);
        return error_at(r, r->pos, msg);
    }
    r->rec_line = r->line;
    size_t used;
    int rc = json_parse_object(r, r->pos, r->len - r->pos, rec, &used);
    if (rc) return rc;
    advance(r, r->pos + used);
    return 0;
}

static int next_jsonl(dataset_reader *r, json_t **rec) {
    while (r->pos < r->len) {
        const char *b = r->buf + r->pos;
        const char *nl = memchr(b, '\n', r->len - r->pos);
        size_t n = nl ? (size_t)(nl - b) : r->len - r->pos;
        size_t next = r->pos + n + (nl ? 1 : 0);
        size_t k = 0;
        while (k < n && (b[k] == ' ' || b[k] == '\t' || b[k] == '\r')) k++;
        if (k == n) { /* blank line */
            advance(r, next);
            continue;
        }
        int rc = 0;
        if (b[k] != '{') {
            char msg[96];
            snprintf(msg, sizeof msg, "record %zu is not a JSON object (one object per line)", r->index);
            rc = error_at(r, r->pos + k, msg);
        } else {
            size_t used;
            rc = json_parse_object(r, r->pos + k, n - k, rec, &used);
            for (size_t t = k + used; !rc && t < n; t++)
                if (b[t] != ' ' && b[t] != '\t' && b[t] != '\r') {
                    json_decref(*rec);
                    *rec = NULL;
                    rc = error_at(r, r->pos + t, "unexpected text after the record (one object per line)");
                }
        }
        r->rec_line = r->line;
        advance(r, next); /* past the line even when it was bad: a caller may skip it and go on */
        if (rc) r->index++; /* the bad line still counts as a record */
        return rc;
    }
    return 0;
}

/* ---- CSV ---- */

static int field_put(dataset_reader *r, size_t n, char c) {
    if (n + 2 > r->field_cap) {
        size_t cap = r->field_cap ? r->field_cap * 2 : 256;
        char *f = realloc(r->field, cap);
        if (!f) return err_set(ERR_STAGE, "out of memory");
        r->field = f;
        r->field_cap = cap;
    }
    r->field[n] = c;
    return 0;
}

/* Parse one row into fields (malloc'd strings). *n_fields 0 at the end of the file. */
static int csv_row(dataset_reader *r, char ***fields, size_t *n_fields) {
    *fields = NULL;
    *n_fields = 0;
    if (r->pos >= r->len) return 0;
    size_t cap = 0;
    char **fs = NULL;
    size_t nf = 0;
    size_t p = r->pos;
    const char *b = r->buf;
    for (;;) {
        size_t n = 0;
        int rc = 0;
        if (p < r->len && b[p] == '"') {
            size_t open = p++;
            for (;;) {
                if (p >= r->len) {
                    size_t line, col;
                    locate(r, open, &line, &col);
                    rc = err_set(ERR_DATA, "%s:%zu:%zu: unterminated quoted field", r->path, line, col);
                    break;
                }
                if (b[p] == '"') {
                    if (p + 1 < r->len && b[p + 1] == '"') {
                        if ((rc = field_put(r, n++, '"'))) break;
                        p += 2;
                        continue;
                    }
                    p++;
                    break;
                }
                if ((rc = field_put(r, n++, b[p++]))) break;
            }
            if (!rc && p < r->len && b[p] != ',' && b[p] != '\n' && b[p] != '\r')
                rc = error_at(r, p, "unexpected character after a closing quote (quotes inside a field are written \"\")");
        } else {
            while (p < r->len && b[p] != ',' && b[p] != '\n' && b[p] != '\r') {
                if (b[p] == '"') {
                    rc = error_at(r, p, "quote inside an unquoted field (quote the whole field and write \"\")");
                    break;
                }
                if ((rc = field_put(r, n++, b[p++]))) break;
            }
        }
        if (!rc && nf == cap) {
            cap = cap ? cap * 2 : 8;
            char **nfs = realloc(fs, cap * sizeof *nfs);
            if (!nfs) rc = err_set(ERR_STAGE, "out of memory");
            else fs = nfs;
        }
        if (!rc) {
            fs[nf] = strndup(r->field ? r->field : "", n);
            if (!fs[nf]) rc = err_set(ERR_STAGE, "out of memory");
            else nf++;
        }
        if (rc) {
            for (size_t i = 0; i < nf; i++) free(fs[i]);
            free(fs);
            r->broken = true;
            return rc;
        }
        if (p < r->len && b[p] == ',') {
            p++;
            continue;
        }
        if (p < r->len && b[p] == '\r') p++;
        if (p < r->len && b[p] == '\n') p++;
        break;
    }
    r->rec_line = r->line;
    advance(r, p);
    *fields = fs;
    *n_fields = nf;
    return 0;
}

static void fields_free(char **f, size_t n) {
    for (size_t i = 0; i < n; i++) free(f[i]);
    free(f);
}

static int next_csv(dataset_reader *r, json_t **rec) {
    char **f;
    size_t nf;
    int rc;
    if (!r->header) {
        if ((rc = csv_row(r, &f, &nf))) return rc;
        if (nf == 0 || (nf == 1 && !f[0][0])) {
            fields_free(f, nf);
            return err_set(ERR_DATA, "%s:1: empty file (a CSV dataset starts with a header row naming the fields)", r->path);
        }
        for (size_t i = 0; i < nf; i++) {
            for (size_t k = 0; k < i; k++)
                if (!strcmp(f[i], f[k])) {
                    rc = err_set(ERR_DATA, "%s:%zu: the header names field '%s' twice", r->path, r->rec_line, f[i]);
                    fields_free(f, nf);
                    return rc;
                }
        }
        r->header = f;
        r->n_header = nf;
    }
    for (;;) {
        if ((rc = csv_row(r, &f, &nf))) return rc;
        if (nf == 0) return 0;
        if (nf == 1 && !f[0][0]) { /* blank line */
            fields_free(f, nf);
            continue;
        }
        break;
    }
    if (nf != r->n_header) {
        r->index++;
        rc = err_set(ERR_DATA, "%s:%zu: row has %zu fields, the header has %zu", r->path, r->rec_line, nf, r->n_header);
        fields_free(f, nf);
        return rc;
    }
    json_t *o = json_object();
    for (size_t i = 0; i < nf; i++) json_object_set_new(o, r->header[i], json_string(f[i]));
    fields_free(f, nf);
    *rec = o;
    return 0;
}

/* ---- text ---- */

static int next_text(dataset_reader *r, json_t **rec) {
    if (r->state) return 0;
    r->state = 1;
    r->rec_line = 1;
    *rec = json_pack("{s:s%}", "text", r->buf, r->len);
    r->pos = r->len;
    return 0;
}

/* ---- open / next / close ---- */

static dataset_type guess_type(const char *path, const char *buf, size_t len) {
    const char *dot = strrchr(path, '.');
    const char *ext = dot && !strchr(dot, '/') ? dot + 1 : "";
    if (!strcasecmp(ext, "jsonl") || !strcasecmp(ext, "ndjson")) return DATASET_TYPE_JSONL;
    if (!strcasecmp(ext, "csv")) return DATASET_TYPE_CSV;
    if (!strcasecmp(ext, "parquet") || (len >= 4 && !memcmp(buf, "PAR1", 4))) return DATASET_TYPE_PARQUET;
    if (!strcasecmp(ext, "json")) {
        size_t i = 0;
        while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r')) i++;
        return i < len && buf[i] == '{' ? DATASET_TYPE_JSONL : DATASET_TYPE_JSON;
    }
    return DATASET_TYPE_TEXT;
}

int dataset_reader_open(dataset_reader **out, const char *path, dataset_type type) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno(ERR_DATA, "cannot open '%s'", path);
    struct stat st;
    if (fstat(fd, &st)) {
        int rc = err_errno(ERR_DATA, "cannot read '%s'", path);
        close(fd);
        return rc;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return err_set(ERR_DATA, "'%s' is a directory (name files or a glob such as 'data/*.jsonl')", path);
    }
    dataset_reader *r = calloc(1, sizeof *r);
    if (!r) {
        close(fd);
        return err_set(ERR_STAGE, "out of memory");
    }
    r->path = strdup(path);
    r->line = 1;
    r->buf = "";
    if (st.st_size > 0) {
        r->map_len = (size_t)st.st_size;
        r->map = mmap(NULL, r->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (r->map == MAP_FAILED) {
            r->map = NULL;
            int rc = err_errno(ERR_DATA, "cannot map '%s'", path);
            close(fd);
            dataset_reader_close(&r);
            return rc;
        }
        madvise(r->map, r->map_len, MADV_SEQUENTIAL);
        r->buf = r->map;
        r->len = r->map_len;
    }
    close(fd);
    if (type == DATASET_TYPE_PARQUET || (type == DATASET_TYPE_AUTO && guess_type(path, r->buf, r->len) == DATASET_TYPE_PARQUET)) {
        /* the Parquet reader maps the file itself */
        if (r->map) munmap(r->map, r->map_len);
        r->map = NULL;
        r->buf = "";
        r->len = 0;
        r->type = DATASET_TYPE_PARQUET;
        int rc = pq_open(&r->pq, path);
        if (rc) {
            dataset_reader_close(&r);
            return rc;
        }
        *out = r;
        return 0;
    }
    if (r->len >= 3 && !memcmp(r->buf, "\xEF\xBB\xBF", 3)) {
        r->buf += 3;
        r->len -= 3;
    }
    r->type = type == DATASET_TYPE_AUTO ? guess_type(path, r->buf, r->len) : type;
    if (r->type == DATASET_TYPE_CSV || r->type == DATASET_TYPE_TEXT) {
        /* one pass up front: these formats carry no structure that would catch bad bytes */
        size_t ok = utf8_valid_prefix(r->buf, r->len);
        if (ok < r->len) {
            int rc = utf8_error(r, ok);
            dataset_reader_close(&r);
            return rc;
        }
        const char *nul = memchr(r->buf, 0, r->len);
        if (nul) {
            int rc = error_at(r, (size_t)(nul - r->buf), "NUL byte (is this a binary file?)");
            dataset_reader_close(&r);
            return rc;
        }
    }
    *out = r;
    return 0;
}

int dataset_reader_next(dataset_reader *r, json_t **rec) {
    *rec = NULL;
    int rc;
    switch (r->type) {
    case DATASET_TYPE_JSON: rc = next_json(r, rec); break;
    case DATASET_TYPE_JSONL: rc = next_jsonl(r, rec); break;
    case DATASET_TYPE_CSV: rc = next_csv(r, rec); break;
    case DATASET_TYPE_PARQUET: rc = pq_next(r->pq, rec); break;
    default: rc = next_text(r, rec); break;
    }
    if (rc) {
        json_decref(*rec);
        *rec = NULL;
        return rc;
    }
    if (*rec) r->index++;
    return 0;
}

size_t dataset_reader_index(const dataset_reader *r) {
    return r->index ? r->index - 1 : 0;
}

int dataset_reader_columns(dataset_reader *r, const char *const *names, const int *required, size_t n) {
    return r->pq ? pq_project(r->pq, names, required, n) : 0;
}
bool dataset_reader_can_go_on(const dataset_reader *r) {
    return r->type == DATASET_TYPE_JSONL || (r->type == DATASET_TYPE_CSV && r->header && !r->broken);
}
size_t dataset_reader_line(const dataset_reader *r) { return r->rec_line; }
const char *dataset_reader_path(const dataset_reader *r) { return r->path; }
dataset_type dataset_reader_type(const dataset_reader *r) { return r->type; }

void dataset_reader_close(dataset_reader **rp) {
    dataset_reader *r = *rp;
    if (!r) return;
    if (r->map) munmap(r->map, r->map_len);
    pq_close(&r->pq);
    fields_free(r->header, r->n_header);
    free(r->field);
    free(r->path);
    free(r);
    *rp = NULL;
}

/* ---- globs ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int dataset_glob(const char *const *patterns, size_t n_patterns, char ***paths, size_t *n_paths) {
    *paths = NULL;
    *n_paths = 0;
    char **out = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (size_t i = 0; i < n_patterns && !rc; i++) {
        glob_t g;
        int gr = glob(patterns[i], GLOB_MARK, NULL, &g);
        if (gr == GLOB_NOMATCH) {
            rc = err_set(ERR_DATA, "'%s' matches no files", patterns[i]);
        } else if (gr) {
            rc = err_set(ERR_DATA, "cannot expand '%s'", patterns[i]);
        } else {
            for (size_t k = 0; k < g.gl_pathc && !rc; k++) {
                const char *p = g.gl_pathv[k];
                size_t pl = strlen(p);
                if (pl && p[pl - 1] == '/') {
                    rc = err_set(ERR_DATA, "'%s' is a directory (name files or a glob such as '%s*.jsonl')", p, p);
                    break;
                }
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    char **no = realloc(out, cap * sizeof *no);
                    if (!no) {
                        rc = err_set(ERR_STAGE, "out of memory");
                        break;
                    }
                    out = no;
                }
                out[n++] = strdup(p);
            }
        }
        if (gr != GLOB_NOMATCH) globfree(&g);
    }
    if (rc) {
        dataset_paths_free(&out, n);
        return rc;
    }
    qsort(out, n, sizeof *out, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u && !strcmp(out[u - 1], out[i])) {
            free(out[i]);
            continue;
        }
        out[u++] = out[i];
    }
    *paths = out;
    *n_paths = u;
    return 0;
}

void dataset_paths_free(char ***paths, size_t n) {
    if (!*paths) return;
    for (size_t i = 0; i < n; i++) free((*paths)[i]);
    free(*paths);
    *paths = NULL;
}
