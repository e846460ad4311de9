/* parquet.c: the Parquet reader (see parquet.h; docs/parquet.md for the format).
 *
 * Three layers:
 *   footer   FileMetaData from the Thrift footer: the schema (a depth-first list of elements,
 *            turned into a tree with the maximum definition and repetition level of every node)
 *            and, per row group, where each column chunk lies and how it is compressed.
 *   chunks   one leaf column of one row group decoded page by page into three arrays: the
 *            definition levels, the repetition levels (one entry per "slot", nulls and empty
 *            lists included) and the non-null values (numbers, or views of string bytes that
 *            point into the mapped file, a decompressed page or the dictionary page).
 *   records  the rows assembled from those arrays (Dremel record assembly): a node consumes,
 *            from every leaf below it, exactly the level entries of its own instance; a list
 *            goes on while the next entry's repetition level is the list's own.
 * Only the projected top-level fields are decoded, one row group at a time. */
#define _GNU_SOURCE
#include "data/parquet.h"

#include <brotli/decode.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <snappy-c.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "core/err.h"
#include "core/utf8.h"
#include "data/thrift.h"

/* physical types */
enum { T_BOOLEAN, T_INT32, T_INT64, T_INT96, T_FLOAT, T_DOUBLE, T_BYTE_ARRAY, T_FIXED };
static const char *const type_names[] = {"BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY",
                                         "FIXED_LEN_BYTE_ARRAY"};
enum { R_REQUIRED, R_OPTIONAL, R_REPEATED };
enum { K_PLAIN, K_LIST, K_MAP };
/* encodings */
enum { E_PLAIN = 0, E_PLAIN_DICT = 2, E_RLE = 3, E_BIT_PACKED = 4, E_DELTA_BINARY = 5, E_DELTA_LENGTH = 6,
       E_DELTA_BYTE_ARRAY = 7, E_RLE_DICT = 8, E_BYTE_STREAM_SPLIT = 9 };
/* codecs */
enum { C_NONE = 0, C_SNAPPY = 1, C_GZIP = 2, C_LZO = 3, C_BROTLI = 4, C_LZ4 = 5, C_ZSTD = 6, C_LZ4_RAW = 7 };
/* page types */
enum { P_DATA = 0, P_INDEX = 1, P_DICT = 2, P_DATA_V2 = 3 };

#define MAX_SCHEMA_DEPTH 64
#define MAX_PAGE_BYTES (1u << 30)      /* one decompressed page */
/* level entries of one column chunk (fuzzing: small, so that a few corrupt bytes cannot ask
 * for gigabytes and be reported as running out of memory) */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define MAX_CHUNK_ENTRIES (1u << 20)
#else
#define MAX_CHUNK_ENTRIES (1u << 26)
#endif

typedef struct pq_node {
    char *name;
    char *path;      /* dotted, for messages */
    int type;        /* physical type of a leaf; -1 for a group */
    int32_t type_length;
    int rep;         /* R_* */
    int kind;        /* K_* (groups) */
    bool is_unsigned, is_decimal;
    int scale;
    int n_children;
    int *children;   /* node indices */
    int def_level, rep_level;  /* maximum levels at this node */
    int leaf_first, leaf_end;  /* leaf column indices below it */
} pq_node;

typedef struct chunk_meta {
    int type, codec;
    int64_t num_values, start, size; /* level entries; bytes [start, start + size) */
} chunk_meta;

typedef struct row_group {
    int64_t num_rows;
    chunk_meta *cols; /* one per leaf */
} row_group;

/* a decoded value: a number or a view of bytes */
typedef struct pq_val {
    union {
        int64_t i;
        double d;
        const uint8_t *p;
    } u;
    uint32_t n;
} pq_val;

/* one leaf column of the current row group, decoded */
typedef struct pq_col {
    uint16_t *def, *rep;
    size_t n_lev, cap_lev;
    pq_val *val;
    size_t n_val, cap_val;
    pq_val *dict;
    size_t n_dict;
    uint8_t **bufs; /* page buffers the values point into, kept for the next row group */
    size_t *buf_cap;
    size_t n_bufs, n_alloc, cap_bufs; /* in use, allocated, slots */
    size_t lpos, vpos; /* assembly cursors */
    size_t string_bytes;
} pq_col;

struct pq_file {
    char *path;
    const uint8_t *map;
    size_t size;
    pq_node *nodes;
    int n_nodes;
    int *leaves; /* leaf index -> node */
    int n_leaves;
    int64_t num_rows;
    row_group *rgs;
    int n_rgs;
    int *proj; /* projected top-level nodes */
    int n_proj;
    bool *leaf_used;
    pq_col *cols; /* n_leaves, only used ones filled */
    int rg;        /* loaded row group, -1 none */
    int64_t rg_row, row; /* rows of it returned; rows of the file returned */
    bool done;     /* past the last row, or stopped by an error */
    uint32_t *idx; /* scratch for dictionary indices */
    size_t idx_cap;
};

/* ---- error context ---- */

typedef struct where {
    const pq_file *f;
    int rg, leaf, page;
} where;

static int bad(const where *w, const char *fmt, ...) ERR_PRINTF(2, 3);
static int bad(const where *w, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const pq_file *f = w->f;
    if (w->leaf >= 0)
        return err_set(ERR_DATA, "%s: row group %d, column '%s', page %d: %s", f->path, w->rg,
                       f->nodes[f->leaves[w->leaf]].path, w->page, msg);
    if (w->rg >= 0) return err_set(ERR_DATA, "%s: row group %d: %s", f->path, w->rg, msg);
    return err_set(ERR_DATA, "%s: %s", f->path, msg);
}

/* ---- footer ---- */

typedef struct schema_el {
    int type, rep, converted, n_children, logical, int_bits, scale;
    bool has_type, int_signed;
    int32_t type_length;
    const uint8_t *name;
    size_t name_len;
} schema_el;

static void parse_logical(thrift_in *t, schema_el *e) {
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    while (thrift_field(t, &s, &id, &ty)) {
        if (ty == THRIFT_STRUCT) e->logical = id;
        if (id == 10 && ty == THRIFT_STRUCT) { /* IntType {1: bitWidth byte, 2: isSigned bool} */
            thrift_struct s2;
            if (!thrift_struct_begin(t, &s2)) return;
            int16_t id2;
            uint8_t ty2;
            while (thrift_field(t, &s2, &id2, &ty2)) {
                if (id2 == 1 && ty2 == THRIFT_BYTE && t->p < t->end) e->int_bits = (int8_t)*t->p++;
                else if (id2 == 2 && (ty2 == THRIFT_TRUE || ty2 == THRIFT_FALSE)) e->int_signed = thrift_bool(t, ty2);
                else thrift_skip(t, ty2);
            }
            thrift_struct_end(t);
        } else if (id == 5 && ty == THRIFT_STRUCT) { /* DecimalType {1: scale, 2: precision} */
            thrift_struct s2;
            if (!thrift_struct_begin(t, &s2)) return;
            int16_t id2;
            uint8_t ty2;
            while (thrift_field(t, &s2, &id2, &ty2)) {
                if (id2 == 1 && ty2 == THRIFT_I32) e->scale = thrift_i32(t);
                else thrift_skip(t, ty2);
            }
            thrift_struct_end(t);
        } else {
            thrift_skip(t, ty);
        }
    }
    thrift_struct_end(t);
}

static void parse_schema_el(thrift_in *t, schema_el *e) {
    memset(e, 0, sizeof *e);
    e->converted = -1;
    e->int_signed = true;
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    while (thrift_field(t, &s, &id, &ty)) {
        if (id == 1 && ty == THRIFT_I32) e->type = thrift_i32(t), e->has_type = true;
        else if (id == 2 && ty == THRIFT_I32) e->type_length = thrift_i32(t);
        else if (id == 3 && ty == THRIFT_I32) e->rep = thrift_i32(t);
        else if (id == 4 && ty == THRIFT_BINARY) thrift_binary(t, &e->name, &e->name_len);
        else if (id == 5 && ty == THRIFT_I32) e->n_children = thrift_i32(t);
        else if (id == 6 && ty == THRIFT_I32) e->converted = thrift_i32(t);
        else if (id == 7 && ty == THRIFT_I32) e->scale = thrift_i32(t);
        else if (id == 10 && ty == THRIFT_STRUCT) parse_logical(t, e);
        else thrift_skip(t, ty);
    }
    thrift_struct_end(t);
}

static void parse_column_meta(thrift_in *t, chunk_meta *c, int64_t *dict_off, int64_t *data_off) {
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    while (thrift_field(t, &s, &id, &ty)) {
        if (id == 1 && ty == THRIFT_I32) c->type = thrift_i32(t);
        else if (id == 4 && ty == THRIFT_I32) c->codec = thrift_i32(t);
        else if (id == 5 && ty == THRIFT_I64) c->num_values = thrift_i64(t);
        else if (id == 7 && ty == THRIFT_I64) c->size = thrift_i64(t);
        else if (id == 9 && ty == THRIFT_I64) *data_off = thrift_i64(t);
        else if (id == 11 && ty == THRIFT_I64) *dict_off = thrift_i64(t);
        else thrift_skip(t, ty);
    }
    thrift_struct_end(t);
}

static void parse_column_chunk(thrift_in *t, chunk_meta *c, bool *external) {
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    int64_t dict_off = -1, data_off = -1;
    bool has_meta = false;
    while (thrift_field(t, &s, &id, &ty)) {
        if (id == 1 && ty == THRIFT_BINARY) {
            const uint8_t *p;
            size_t n;
            if (thrift_binary(t, &p, &n) && n) *external = true;
        } else if (id == 3 && ty == THRIFT_STRUCT) {
            parse_column_meta(t, c, &dict_off, &data_off);
            has_meta = true;
        } else {
            thrift_skip(t, ty);
        }
    }
    thrift_struct_end(t);
    if (!has_meta) thrift_fail(t, "a column chunk without metadata");
    /* the chunk starts at its dictionary page when there is one (some writers store 0 for none) */
    c->start = dict_off > 0 && dict_off < data_off ? dict_off : data_off;
}

static void parse_row_group(thrift_in *t, row_group *g, int n_leaves, bool *external, int *n_cols) {
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    *n_cols = -1;
    while (thrift_field(t, &s, &id, &ty)) {
        if (id == 1 && ty == THRIFT_LIST) {
            uint8_t et;
            uint32_t n;
            if (!thrift_list(t, &et, &n)) break;
            if (et != THRIFT_STRUCT) {
                thrift_fail(t, "columns are not structures");
                break;
            }
            *n_cols = (int)n;
            if ((int)n != n_leaves) {
                thrift_fail(t, "a row group's column count differs from the schema's");
                break;
            }
            for (uint32_t i = 0; i < n && !t->bad; i++) parse_column_chunk(t, &g->cols[i], external);
        } else if (id == 3 && ty == THRIFT_I64) {
            g->num_rows = thrift_i64(t);
        } else {
            thrift_skip(t, ty);
        }
    }
    thrift_struct_end(t);
}

/* build the node tree from the depth-first element list; returns the next element index */
static int build_tree(pq_file *f, schema_el *els, int i, int parent, int depth, int def, int rep, int *leaf,
                      const where *w, int *rc) {
    if (*rc) return i;
    if (i >= f->n_nodes) {
        *rc = bad(w, "the schema lists fewer elements than its groups say they hold");
        return i;
    }
    if (depth > MAX_SCHEMA_DEPTH) {
        *rc = bad(w, "the schema nests deeper than %d levels", MAX_SCHEMA_DEPTH);
        return i;
    }
    schema_el *e = &els[i];
    pq_node *n = &f->nodes[i];
    if (!e->name) {
        *rc = bad(w, "schema element %d has no name", i);
        return i;
    }
    if (utf8_valid_prefix(e->name, e->name_len) < e->name_len || memchr(e->name, 0, e->name_len)) {
        *rc = bad(w, "schema element %d has a name that is not UTF-8 text", i);
        return i;
    }
    n->name = strndup((const char *)e->name, e->name_len);
    if (!n->name) {
        *rc = err_set(ERR_STAGE, "out of memory");
        return i;
    }
    if (parent > 0) {
        if (asprintf(&n->path, "%s.%s", f->nodes[parent].path, n->name) < 0) n->path = NULL;
    } else {
        n->path = strdup(n->name);
    }
    if (!n->path) {
        *rc = err_set(ERR_STAGE, "out of memory");
        return i;
    }
    n->rep = parent < 0 ? R_REQUIRED : e->rep;
    if (n->rep < R_REQUIRED || n->rep > R_REPEATED) {
        *rc = bad(w, "field '%s' has an unknown repetition %d", n->path, n->rep);
        return i;
    }
    n->def_level = def + (n->rep != R_REQUIRED);
    n->rep_level = rep + (n->rep == R_REPEATED);
    n->type_length = e->type_length;
    n->scale = e->scale;
    n->is_decimal = e->converted == 5 || e->logical == 5;
    n->is_unsigned = (e->converted >= 11 && e->converted <= 14) || (e->logical == 10 && !e->int_signed);
    n->leaf_first = *leaf;
    if (e->n_children > 0 || !e->has_type) {
        if (e->n_children <= 0) {
            *rc = bad(w, "group '%s' has no fields", n->path);
            return i;
        }
        n->type = -1;
        n->kind = e->converted == 3 || e->logical == 3   ? K_LIST
                  : e->converted == 1 || e->converted == 2 || e->logical == 2 ? K_MAP
                                                                               : K_PLAIN;
        if (e->n_children > f->n_nodes - i - 1) {
            *rc = bad(w, "group '%s' says it has %d fields, more than the schema lists", n->path, e->n_children);
            return i;
        }
        n->n_children = e->n_children;
        n->children = calloc((size_t)e->n_children, sizeof *n->children);
        if (!n->children) {
            *rc = err_set(ERR_STAGE, "out of memory");
            return i;
        }
        int next = i + 1;
        for (int k = 0; k < e->n_children && !*rc; k++) {
            n->children[k] = next;
            next = build_tree(f, els, next, i, depth + 1, n->def_level, n->rep_level, leaf, w, rc);
        }
        n = &f->nodes[i];
        n->leaf_end = *leaf;
        if (!*rc && n->kind != K_PLAIN) {
            const pq_node *c = &f->nodes[n->children[0]];
            if (n->n_children != 1 || c->rep != R_REPEATED)
                *rc = bad(w, "%s '%s' must hold one repeated field", n->kind == K_LIST ? "list" : "map", n->path);
            else if (n->kind == K_MAP && (c->n_children < 1 || c->n_children > 2))
                *rc = bad(w, "map '%s' must hold key and value", n->path);
        }
        return next;
    }
    if (e->type < T_BOOLEAN || e->type > T_FIXED) {
        *rc = bad(w, "field '%s' has an unknown type %d", n->path, e->type);
        return i;
    }
    if (e->type == T_FIXED && e->type_length <= 0) {
        *rc = bad(w, "field '%s' is FIXED_LEN_BYTE_ARRAY without a length", n->path);
        return i;
    }
    n->type = e->type;
    n->leaf_end = ++*leaf;
    return i + 1;
}

/* the row groups' metadata (the list at rg_at, up to end), now that the schema gives the leaves */
static int footer_row_groups(pq_file *f, where *w, const uint8_t *rg_at, const uint8_t *end) {
    thrift_in t2;
    thrift_init(&t2, rg_at, (size_t)(end - rg_at));
    uint8_t et;
    uint32_t n_rg;
    if (thrift_list(&t2, &et, &n_rg)) {
        if (et != THRIFT_STRUCT) thrift_fail(&t2, "row groups are not structures");
        f->rgs = calloc(n_rg ? n_rg : 1, sizeof *f->rgs);
        if (!f->rgs) return err_set(ERR_STAGE, "out of memory");
        for (uint32_t g = 0; g < n_rg && !t2.bad; g++) {
            f->n_rgs = (int)g + 1;
            f->rgs[g].cols = calloc((size_t)f->n_leaves, sizeof *f->rgs[g].cols);
            if (!f->rgs[g].cols) return err_set(ERR_STAGE, "out of memory");
            bool external = false;
            int n_cols = -1;
            parse_row_group(&t2, &f->rgs[g], f->n_leaves, &external, &n_cols);
            if (!t2.bad && external) {
                w->rg = (int)g;
                return bad(w, "a column lives in another file (file_path is set); qlora-run reads "
                              "self-contained Parquet files");
            }
            if (!t2.bad && n_cols < 0) thrift_fail(&t2, "a row group without columns");
        }
    }
    if (t2.bad) return bad(w, "corrupt row group metadata (%s)", t2.why);
    return 0;
}

/* every chunk of every row group: its type the schema's, its bytes inside the file; the row
 * groups' rows add up to the file's */
static int footer_check_chunks(pq_file *f, where *w) {
    int rc = 0;
    int64_t total = 0;
    for (int g = 0; !rc && g < f->n_rgs; g++) {
        row_group *rg = &f->rgs[g];
        w->rg = g;
        if (rg->num_rows < 0) rc = bad(w, "negative row count");
        total += rg->num_rows;
        for (int c = 0; !rc && c < f->n_leaves; c++) {
            chunk_meta *m = &rg->cols[c];
            if (m->type != f->nodes[f->leaves[c]].type)
                rc = bad(w, "column '%s' is %s in the row group but %s in the schema", f->nodes[f->leaves[c]].path,
                        m->type >= 0 && m->type <= T_FIXED ? type_names[m->type] : "?",
                        type_names[f->nodes[f->leaves[c]].type]);
            else if (m->start < 4 || m->size < 0 || m->num_values < 0 || (uint64_t)m->start > f->size ||
                     (uint64_t)m->size > f->size - (uint64_t)m->start)
                rc = bad(w, "column '%s' lies outside the file (bytes %lld+%lld of %zu); the file is truncated or "
                            "damaged", f->nodes[f->leaves[c]].path, (long long)m->start, (long long)m->size, f->size);
        }
    }
    if (!rc && total != f->num_rows) {
        w->rg = -1;
        rc = bad(w, "the row groups hold %lld rows but the file says %lld", (long long)total, (long long)f->num_rows);
    }
    return rc;
}

static int parse_footer(pq_file *f, const uint8_t *p, size_t n) {
    where w = {f, -1, -1, -1};
    thrift_in t;
    thrift_init(&t, p, n);
    thrift_struct s;
    schema_el *els = NULL;
    uint32_t n_els = 0;
    int rc = 0;
    const uint8_t *rg_at = NULL;
    thrift_struct_begin(&t, &s);
    int16_t id;
    uint8_t ty;
    while (thrift_field(&t, &s, &id, &ty)) {
        if (id == 2 && ty == THRIFT_LIST && !els) {
            uint8_t et;
            if (!thrift_list(&t, &et, &n_els)) break;
            if (et != THRIFT_STRUCT || n_els == 0) {
                thrift_fail(&t, "the schema is not a list of elements");
                break;
            }
            els = calloc(n_els, sizeof *els);
            if (!els) return err_set(ERR_STAGE, "out of memory");
            for (uint32_t i = 0; i < n_els && !t.bad; i++) parse_schema_el(&t, &els[i]);
        } else if (id == 3 && ty == THRIFT_I64) {
            f->num_rows = thrift_i64(&t);
        } else if (id == 4 && ty == THRIFT_LIST) {
            rg_at = t.p; /* parsed once the schema is known */
            thrift_skip(&t, ty);
        } else {
            thrift_skip(&t, ty);
        }
    }
    thrift_struct_end(&t);
    if (t.bad) rc = bad(&w, "corrupt file metadata (%s); the file is damaged or not Parquet", t.why);
    else if (!els) rc = bad(&w, "the file metadata has no schema");
    if (!rc) {
        f->n_nodes = (int)n_els;
        f->nodes = calloc(n_els, sizeof *f->nodes);
        if (!f->nodes) rc = err_set(ERR_STAGE, "out of memory");
    }
    if (!rc) {
        int leaf = 0;
        if (els[0].n_children <= 0) rc = bad(&w, "the schema has no fields");
        int end = rc ? 0 : build_tree(f, els, 0, -1, 0, 0, 0, &leaf, &w, &rc);
        if (!rc && end != (int)n_els) rc = bad(&w, "the schema lists %u elements but its groups hold %d", n_els, end);
        f->n_leaves = leaf;
    }
    free(els);
    if (!rc) {
        f->leaves = calloc((size_t)f->n_leaves + 1, sizeof *f->leaves);
        if (!f->leaves) return err_set(ERR_STAGE, "out of memory");
        for (int i = 0; i < f->n_nodes; i++)
            if (f->nodes[i].type >= 0) f->leaves[f->nodes[i].leaf_first] = i;
    }
    if (!rc && rg_at) rc = footer_row_groups(f, &w, rg_at, p + n);
    if (!rc) rc = footer_check_chunks(f, &w);
    return rc;
}

/* ---- open / close / projection ---- */

static void col_reset(pq_col *c) {
    c->n_bufs = 0; /* the buffers stay allocated: the next row group reuses them */
    c->n_lev = c->n_val = c->n_dict = 0;
    c->lpos = c->vpos = 0;
    c->string_bytes = 0;
    free(c->dict);
    c->dict = NULL;
}

static void col_free(pq_col *c) {
    col_reset(c);
    for (size_t i = 0; i < c->n_alloc; i++) free(c->bufs[i]);
    free(c->bufs);
    free(c->buf_cap);
    free(c->def);
    free(c->rep);
    free(c->val);
}

void pq_close(pq_file **fp) {
    pq_file *f = *fp;
    if (!f) return;
    for (int i = 0; i < f->n_nodes; i++) {
        free(f->nodes[i].name);
        free(f->nodes[i].path);
        free(f->nodes[i].children);
    }
    free(f->nodes);
    for (int g = 0; g < f->n_rgs; g++) free(f->rgs[g].cols);
    free(f->rgs);
    if (f->cols)
        for (int i = 0; i < f->n_leaves; i++) col_free(&f->cols[i]);
    free(f->cols);
    free(f->leaves);
    free(f->proj);
    free(f->leaf_used);
    free(f->idx);
    if (f->map && f->size) munmap((void *)f->map, f->size);
    free(f->path);
    free(f);
    *fp = NULL;
}

int pq_open(pq_file **out, const char *path) {
    *out = NULL;
    pq_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return err_set(ERR_STAGE, "out of memory");
    }
    f->rg = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = err_errno(ERR_DATA, "cannot open '%s'", path);
        pq_close(&f);
        return rc;
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st)) rc = err_errno(ERR_DATA, "cannot read '%s'", path);
    else if (S_ISDIR(st.st_mode)) rc = err_set(ERR_DATA, "'%s' is a directory", path);
    if (!rc) {
        f->size = (size_t)st.st_size;
        if (f->size < 12) {
            rc = err_set(ERR_DATA, "%s: %zu bytes is too short for a Parquet file (truncated?)", path, f->size);
        } else {
            void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) rc = err_errno(ERR_DATA, "cannot map '%s'", path);
            else f->map = m;
        }
    }
    close(fd);
    where w = {f, -1, -1, -1};
    if (!rc && memcmp(f->map, "PAR1", 4))
        rc = bad(&w, "not a Parquet file (it does not start with 'PAR1')");
    if (!rc && memcmp(f->map + f->size - 4, "PAR1", 4))
        rc = bad(&w, "no 'PAR1' at the end: the file is truncated (an interrupted download?) or not Parquet");
    if (!rc) {
        uint32_t flen;
        memcpy(&flen, f->map + f->size - 8, 4); /* little endian on every platform we build for */
        if ((size_t)flen > f->size - 12)
            rc = bad(&w, "the footer length (%u bytes) is larger than the file; the file is damaged", flen);
        else rc = parse_footer(f, f->map + f->size - 8 - flen, flen);
    }
    if (!rc) {
        f->cols = calloc((size_t)f->n_leaves, sizeof *f->cols);
        f->leaf_used = calloc((size_t)f->n_leaves, sizeof *f->leaf_used);
        if (!f->cols || !f->leaf_used) rc = err_set(ERR_STAGE, "out of memory");
    }
    if (!rc) rc = pq_project(f, NULL, NULL, 0);
    if (rc) {
        pq_close(&f);
        return rc;
    }
    madvise((void *)f->map, f->size, MADV_SEQUENTIAL);
    *out = f;
    return 0;
}

int64_t pq_num_rows(const pq_file *f) { return f->num_rows; }
int pq_num_row_groups(const pq_file *f) { return f->n_rgs; }
size_t pq_num_fields(const pq_file *f) { return (size_t)f->nodes[0].n_children; }
const char *pq_field_name(const pq_file *f, size_t i) { return f->nodes[f->nodes[0].children[i]].name; }
int64_t pq_row_index(const pq_file *f) { return f->row; }

static int field_list(const pq_file *f, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (size_t i = 0; i < pq_num_fields(f) && k + 8 < cap; i++) {
        int n = snprintf(buf + k, cap - k, "%s'%s'", i ? ", " : "", pq_field_name(f, i));
        if (n < 0) break;
        k += (size_t)n;
    }
    if (k + 8 >= cap) strcpy(buf + cap - 5, "...");
    return 0;
}

int pq_project(pq_file *f, const char *const *names, const int *required, size_t n) {
    const pq_node *root = &f->nodes[0];
    int *proj = calloc((size_t)root->n_children + 1, sizeof *proj);
    if (!proj) return err_set(ERR_STAGE, "out of memory");
    int np = 0, rc = 0;
    for (int k = 0; k < root->n_children && !rc; k++) {
        const pq_node *c = &f->nodes[root->children[k]];
        bool want = !names;
        for (size_t i = 0; names && i < n; i++)
            if (!strcmp(names[i], c->name)) want = true;
        if (want) proj[np++] = root->children[k];
    }
    for (size_t i = 0; names && i < n && !rc; i++) {
        if (!required || !required[i]) continue;
        bool found = false;
        for (int k = 0; k < np; k++) found |= !strcmp(f->nodes[proj[k]].name, names[i]);
        if (!found) {
            char list[400];
            field_list(f, list, sizeof list);
            rc = err_set(ERR_DATA, "%s: no column '%s' (the file has %s); name the right column or pick another format",
                         f->path, names[i], list);
        }
    }
    if (rc) {
        free(proj);
        return rc;
    }
    free(f->proj);
    f->proj = proj;
    f->n_proj = np;
    memset(f->leaf_used, 0, (size_t)f->n_leaves * sizeof *f->leaf_used);
    for (int k = 0; k < np; k++)
        for (int l = f->nodes[proj[k]].leaf_first; l < f->nodes[proj[k]].leaf_end; l++) f->leaf_used[l] = true;
    return 0;
}

/* ---- decompression ---- */

static const char *codec_name(int c) {
    static const char *const names[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO", "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
    return c >= 0 && c <= 7 ? names[c] : "unknown";
}

static int col_buffer(pq_col *c, size_t n, uint8_t **out);


/* src[0..n) -> a buffer of c's (reused from row group to row group) of exactly want bytes */
static int decompress(const where *w, pq_col *c, int codec, const uint8_t *src, size_t n, size_t want, uint8_t **out) {
    *out = NULL;
    if (want > MAX_PAGE_BYTES) return bad(w, "a page of %zu bytes is larger than qlora-run reads (1 GiB)", want);
    if (codec < C_NONE || codec == C_LZO || codec == C_LZ4 || codec > C_ZSTD)
        return bad(w, "codec %s (%d) is not supported (qlora-run reads UNCOMPRESSED, SNAPPY, GZIP, BROTLI and "
                      "ZSTD); rewrite the file with one of those", codec_name(codec), codec);
    uint8_t *dst;
    int rc = col_buffer(c, want, &dst);
    if (rc) return rc;
    bool ok = false;
    switch (codec) {
    case C_SNAPPY: {
        size_t len;
        ok = snappy_uncompressed_length((const char *)src, n, &len) == SNAPPY_OK && len == want &&
             snappy_uncompress((const char *)src, n, (char *)dst, &len) == SNAPPY_OK && len == want;
        break;
    }
    case C_GZIP: {
        z_stream z = {0};
        if (inflateInit2(&z, 15 + 32) != Z_OK) break; /* 15 + 32: a gzip or zlib header */
        z.next_in = (Bytef *)src;
        z.avail_in = (uInt)n;
        z.next_out = dst;
        z.avail_out = (uInt)want;
        int zr = inflate(&z, Z_FINISH);
        ok = (zr == Z_STREAM_END || (zr == Z_OK && z.avail_out == 0) || (zr == Z_BUF_ERROR && z.avail_out == 0)) &&
             z.total_out == want;
        inflateEnd(&z);
        break;
    }
    case C_BROTLI: {
        size_t len = want;
        ok = BrotliDecoderDecompress(n, src, &len, dst) == BROTLI_DECODER_RESULT_SUCCESS && len == want;
        break;
    }
    case C_ZSTD: {
        size_t r = ZSTD_decompress(dst, want, src, n);
        ok = !ZSTD_isError(r) && r == want;
        break;
    }
    default: break;
    }
    if (!ok) {
        c->n_bufs--; /* the buffer goes back */
        return bad(w, "the %s data does not decompress to the %zu bytes the page header says; the file is damaged",
                   codec_name(codec), want);
    }
    *out = dst;
    return 0;
}

/* ---- bit-level decoders ---- */

static bool uvarint(const uint8_t **pp, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    const uint8_t *p = *pp;
    for (int shift = 0; shift < 64; shift += 7) {
        if (p >= end) return false;
        uint8_t b = *p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *pp = p;
            *v = x;
            return true;
        }
    }
    return false;
}

static int bit_width(unsigned max) {
    int b = 0;
    while (max) b++, max >>= 1;
    return b;
}

/* unpack n values of bw bits (LSB first) from p (at least (n * bw + 7) / 8 bytes) */
static void unpack32(const uint8_t *p, int bw, uint32_t *out, size_t n) {
    if (bw == 0) {
        memset(out, 0, n * sizeof *out);
        return;
    }
    uint64_t buf = 0, mask = bw == 32 ? 0xffffffffu : (1u << bw) - 1;
    int bits = 0;
    for (size_t k = 0; k < n; k++) {
        while (bits < bw) {
            buf |= (uint64_t)*p++ << bits;
            bits += 8;
        }
        out[k] = (uint32_t)(buf & mask);
        buf >>= bw;
        bits -= bw;
    }
}

/* The RLE / bit-packed hybrid: count values of bw bits. False when the data ends early. */
static bool rle_decode(const uint8_t *p, const uint8_t *end, int bw, uint32_t *out, size_t count) {
    size_t i = 0;
    size_t vbytes = ((size_t)bw + 7) / 8;
    while (i < count) {
        uint64_t h;
        if (!uvarint(&p, end, &h)) return false;
        if (h & 1) {
            uint64_t groups = h >> 1;
            if (groups > (uint64_t)(end - p)) groups = (uint64_t)(end - p); /* a short last run */
            size_t vals = (size_t)groups * 8, avail = (size_t)(end - p);
            size_t take = vals < count - i ? vals : count - i;
            if (((uint64_t)take * (uint64_t)bw + 7) / 8 > avail) return false;
            unpack32(p, bw, out + i, take);
            i += take;
            size_t used = (size_t)groups * (size_t)bw;
            p += used < avail ? used : avail;
        } else {
            uint64_t run = h >> 1;
            if ((size_t)(end - p) < vbytes) return false;
            uint32_t v = 0;
            for (size_t b = 0; b < vbytes; b++) v |= (uint32_t)p[b] << (8 * b);
            p += vbytes;
            size_t take = run < count - i ? (size_t)run : count - i;
            for (size_t k = 0; k < take; k++) out[i + k] = v;
            i += take;
        }
    }
    return true;
}

/* the deprecated BIT_PACKED level encoding: MSB first, no header */
static bool bitpacked_decode(const uint8_t *p, const uint8_t *end, int bw, uint32_t *out, size_t count) {
    if (((uint64_t)count * (uint64_t)bw + 7) / 8 > (uint64_t)(end - p)) return false;
    size_t bit = 0;
    for (size_t k = 0; k < count; k++) {
        uint32_t v = 0;
        for (int b = 0; b < bw; b++, bit++) v = (v << 1) | ((p[bit >> 3] >> (7 - (bit & 7))) & 1);
        out[k] = v;
    }
    return true;
}

static uint64_t bits_at(const uint8_t *p, size_t bitpos, int w) {
    uint64_t v = 0;
    for (int k = 0; k < w;) {
        size_t byte = (bitpos + (size_t)k) >> 3;
        int off = (int)((bitpos + (size_t)k) & 7), take = 8 - off < w - k ? 8 - off : w - k;
        v |= (uint64_t)((p[byte] >> off) & ((1u << take) - 1)) << k;
        k += take;
    }
    return v;
}

/* DELTA_BINARY_PACKED: up to max values into out, *n the count in the header; *pp moves past
 * the encoded data (the last miniblock that holds values, padding included) */
static const char *delta_decode(const uint8_t **pp, const uint8_t *end, int64_t **out, size_t *n) {
    const uint8_t *p = *pp;
    uint64_t block, n_mini, total, first;
    *out = NULL;
    if (!uvarint(&p, end, &block) || !uvarint(&p, end, &n_mini) || !uvarint(&p, end, &total) ||
        !uvarint(&p, end, &first))
        return "truncated DELTA_BINARY_PACKED header";
    if (block == 0 || block % 128 || n_mini == 0 || block % n_mini || (block / n_mini) % 32 || block > 1 << 20)
        return "bad DELTA_BINARY_PACKED block layout";
    if (total > MAX_CHUNK_ENTRIES) return "too many DELTA_BINARY_PACKED values";
    size_t per_mini = (size_t)(block / n_mini);
    int64_t *v = malloc((total ? total : 1) * sizeof *v);
    if (!v) return "out of memory";
    uint64_t cur = (uint64_t)((int64_t)(first >> 1) ^ -(int64_t)(first & 1));
    size_t i = 0;
    if (total) v[i++] = (int64_t)cur;
    while (i < total) {
        uint64_t md;
        if (!uvarint(&p, end, &md)) {
            free(v);
            return "truncated DELTA_BINARY_PACKED block";
        }
        uint64_t min_delta = (uint64_t)((int64_t)(md >> 1) ^ -(int64_t)(md & 1));
        if ((uint64_t)(end - p) < n_mini) {
            free(v);
            return "truncated DELTA_BINARY_PACKED block";
        }
        const uint8_t *widths = p;
        p += n_mini;
        for (uint64_t m = 0; m < n_mini && i < total; m++) {
            int w = widths[m];
            if (w > 64) {
                free(v);
                return "DELTA_BINARY_PACKED bit width above 64";
            }
            size_t need = total - i < per_mini ? total - i : per_mini;
            size_t full = per_mini * (size_t)w / 8, avail = (size_t)(end - p);
            if ((need * (size_t)w + 7) / 8 > avail) {
                free(v);
                return "truncated DELTA_BINARY_PACKED miniblock";
            }
            for (size_t k = 0; k < need; k++) {
                cur += min_delta + bits_at(p, k * (size_t)w, w);
                v[i++] = (int64_t)cur;
            }
            p += full < avail ? full : avail;
        }
    }
    *pp = p;
    *out = v;
    *n = (size_t)total;
    return NULL;
}

/* ---- values ---- */

static int col_grow_vals(pq_col *c, size_t more) {
    if (c->cap_val && c->n_val + more <= c->cap_val) return 0; /* (never NULL: no arithmetic on it) */
    size_t cap = c->cap_val ? c->cap_val : 1024;
    while (cap < c->n_val + more) cap *= 2;
    pq_val *v = realloc(c->val, cap * sizeof *v);
    if (!v) return err_set(ERR_STAGE, "out of memory");
    c->val = v;
    c->cap_val = cap;
    return 0;
}

/* a buffer of at least n bytes that lives until the next row group: one already allocated by an
 * earlier row group when there is one (fresh pages cost a page fault every 4 KiB) */
static int col_buffer(pq_col *c, size_t n, uint8_t **out) {
    if (c->n_bufs == c->n_alloc) {
        if (c->n_alloc == c->cap_bufs) {
            size_t cap = c->cap_bufs ? c->cap_bufs * 2 : 16;
            uint8_t **b = realloc(c->bufs, cap * sizeof *b);
            if (!b) return err_set(ERR_STAGE, "out of memory");
            c->bufs = b;
            size_t *bc = realloc(c->buf_cap, cap * sizeof *bc);
            if (!bc) return err_set(ERR_STAGE, "out of memory");
            c->buf_cap = bc;
            c->cap_bufs = cap;
        }
        c->bufs[c->n_alloc] = NULL;
        c->buf_cap[c->n_alloc++] = 0;
    }
    size_t i = c->n_bufs;
    if (c->buf_cap[i] < n) {
        free(c->bufs[i]);
        c->bufs[i] = malloc(n ? n : 1);
        c->buf_cap[i] = c->bufs[i] ? n : 0;
        if (!c->bufs[i]) return err_set(ERR_STAGE, "out of memory (a page of %zu bytes)", n);
    }
    c->n_bufs++;
    *out = c->bufs[i];
    return 0;
}

static int64_t sign_ext32(uint32_t x) { return (int64_t)(int32_t)x; }

/* PLAIN values of a leaf: n of them from [p, end) into out */
static int plain_decode(const where *w, const pq_node *leaf, const uint8_t *p, const uint8_t *end, pq_val *out,
                        size_t n, size_t *string_bytes) {
    size_t avail = (size_t)(end - p);
    switch (leaf->type) {
    case T_BOOLEAN:
        if ((n + 7) / 8 > avail) break;
        for (size_t i = 0; i < n; i++) out[i].u.i = (p[i >> 3] >> (i & 7)) & 1;
        return 0;
    case T_INT32:
    case T_FLOAT:
        if (n > avail / 4) break;
        for (size_t i = 0; i < n; i++) {
            uint32_t x;
            memcpy(&x, p + 4 * i, 4);
            if (leaf->type == T_INT32) out[i].u.i = sign_ext32(x);
            else {
                float fl;
                memcpy(&fl, &x, 4);
                out[i].u.d = fl;
            }
        }
        return 0;
    case T_INT64:
    case T_DOUBLE:
        if (n > avail / 8) break;
        for (size_t i = 0; i < n; i++) memcpy(&out[i].u, p + 8 * i, 8);
        return 0;
    case T_INT96:
        if (n > avail / 12) break;
        for (size_t i = 0; i < n; i++) out[i].u.p = p + 12 * i, out[i].n = 12;
        return 0;
    case T_FIXED: {
        size_t len = (size_t)leaf->type_length;
        if (n > avail / len) break;
        for (size_t i = 0; i < n; i++) out[i].u.p = p + len * i, out[i].n = (uint32_t)len;
        *string_bytes += n * len;
        return 0;
    }
    case T_BYTE_ARRAY: {
        size_t sb = 0;
        for (size_t i = 0; i < n; i++) {
            if (end - p < 4) return bad(w, "PLAIN strings end early (value %zu of %zu)", i, n);
            uint32_t len;
            memcpy(&len, p, 4);
            p += 4;
            if (len > (size_t)(end - p))
                return bad(w, "a PLAIN string of %u bytes runs past the page (value %zu of %zu)", len, i, n);
            out[i].u.p = p;
            out[i].n = len;
            p += len;
            sb += len;
        }
        *string_bytes += sb;
        return 0;
    }
    }
    return bad(w, "PLAIN values end early (%zu %s values need more than the %zu bytes left)", n,
               type_names[leaf->type], avail);
}

/* dictionary indices (RLE/bit-packed hybrid, width byte first) into the page's dictionary */
static int dict_decode(pq_file *f, const where *w, const pq_node *leaf, pq_col *c, const uint8_t *p,
                       const uint8_t *end, pq_val *out, size_t nn) {
    if (!c->dict && nn) return bad(w, "dictionary-encoded values but no dictionary page before them");
    if (nn == 0) return 0;
    if (p >= end) return bad(w, "dictionary indices missing");
    int bw = *p++;
    if (bw > 32) return bad(w, "dictionary index width %d is above 32", bw);
    if (nn > f->idx_cap) {
        uint32_t *ix = realloc(f->idx, nn * sizeof *ix);
        if (!ix) return err_set(ERR_STAGE, "out of memory");
        f->idx = ix;
        f->idx_cap = nn;
    }
    if (!rle_decode(p, end, bw, f->idx, nn)) return bad(w, "dictionary indices end early");
    size_t sb = 0, nd = c->n_dict;
    const pq_val *d = c->dict;
    for (size_t i = 0; i < nn; i++) {
        uint32_t k = f->idx[i];
        if (k >= nd) return bad(w, "dictionary index %u is past the dictionary's %zu entries", k, nd);
        out[i] = d[k];
        sb += d[k].n;
    }
    if (leaf->type == T_BYTE_ARRAY || leaf->type == T_FIXED) c->string_bytes += sb;
    return 0;
}

/* RLE booleans: a 4-byte length, then the hybrid runs of width 1 */
static int rle_bool_decode(const where *w, const pq_node *leaf, const uint8_t *p, const uint8_t *end, pq_val *out,
                           size_t nn) {
    if (leaf->type != T_BOOLEAN) return bad(w, "RLE values in a %s column", type_names[leaf->type]);
    if (end - p < 4) return bad(w, "RLE booleans without their length");
    uint32_t len;
    memcpy(&len, p, 4);
    p += 4;
    if (len > (size_t)(end - p)) return bad(w, "RLE booleans run past the page");
    uint32_t *tmp = malloc((nn ? nn : 1) * sizeof *tmp);
    if (!tmp) return err_set(ERR_STAGE, "out of memory");
    bool ok = rle_decode(p, p + len, 1, tmp, nn);
    for (size_t i = 0; ok && i < nn; i++) out[i].u.i = tmp[i] & 1;
    free(tmp);
    if (!ok) return bad(w, "RLE booleans end early");
    return 0;
}

/* DELTA_BINARY_PACKED integers */
static int delta_int_decode(const where *w, const pq_node *leaf, const uint8_t *p, const uint8_t *end, pq_val *out,
                            size_t nn) {
    int rc = 0;
    if (leaf->type != T_INT32 && leaf->type != T_INT64)
        return bad(w, "DELTA_BINARY_PACKED values in a %s column", type_names[leaf->type]);
    int64_t *v;
    size_t n;
    const char *why = delta_decode(&p, end, &v, &n);
    if (why) return bad(w, "%s", why);
    if (n < nn) rc = bad(w, "DELTA_BINARY_PACKED holds %zu values, the levels say %zu", n, nn);
    for (size_t i = 0; !rc && i < nn; i++) out[i].u.i = leaf->type == T_INT32 ? sign_ext32((uint32_t)v[i]) : v[i];
    free(v);
    return rc;
}

/* DELTA_LENGTH_BYTE_ARRAY (lengths, then the bytes) and DELTA_BYTE_ARRAY (prefix lengths shared
 * with the value before, suffix lengths, then the suffixes: the values rebuilt in the column's
 * buffer) */
static int delta_bytes_decode(const where *w, const pq_node *leaf, pq_col *c, int enc, const uint8_t *p,
                              const uint8_t *end, pq_val *out, size_t nn) {
    int rc = 0;
    if (leaf->type != T_BYTE_ARRAY && (enc == E_DELTA_LENGTH || leaf->type != T_FIXED))
        return bad(w, "%s values in a %s column", enc == E_DELTA_LENGTH ? "DELTA_LENGTH_BYTE_ARRAY" : "DELTA_BYTE_ARRAY",
                   type_names[leaf->type]);
    int64_t *pre = NULL, *len = NULL;
    size_t npre = nn, nlen;
    const char *why = NULL;
    if (enc == E_DELTA_BYTE_ARRAY) why = delta_decode(&p, end, &pre, &npre);
    if (!why) why = delta_decode(&p, end, &len, &nlen);
    if (!why && (nlen < nn || npre < nn)) why = "fewer lengths than values";
    uint64_t total = 0, suffix = 0;
    for (size_t i = 0; !why && i < nn; i++) {
        if (len[i] < 0 || (pre && pre[i] < 0)) why = "a negative length";
        else if (pre && (i == 0 ? pre[i] != 0 : (uint64_t)pre[i] > out[i - 1].n)) why = "a prefix longer than the value before it";
        else {
            suffix += (uint64_t)len[i];
            total += (uint64_t)len[i] + (pre ? (uint64_t)pre[i] : 0);
            if (total > MAX_PAGE_BYTES) why = "values larger than a page may hold";
            else out[i].n = (uint32_t)(len[i] + (pre ? pre[i] : 0));
        }
    }
    if (!why && suffix > (uint64_t)(end - p)) why = "the string bytes run past the page";
    if (!why && !pre) {
        for (size_t i = 0; i < nn; i++) out[i].u.p = p, p += out[i].n;
    } else if (!why) {
        uint8_t *buf;
        if ((rc = col_buffer(c, (size_t)total, &buf))) {
            free(pre);
            free(len);
            return rc;
        }
        uint8_t *q = buf;
        for (size_t i = 0; i < nn; i++) {
            if (pre[i]) memcpy(q, out[i - 1].u.p, (size_t)pre[i]);
            memcpy(q + pre[i], p, (size_t)len[i]);
            p += len[i];
            out[i].u.p = q;
            q += out[i].n;
        }
    }
    free(pre);
    free(len);
    if (why) return bad(w, "%s: %s", enc == E_DELTA_LENGTH ? "DELTA_LENGTH_BYTE_ARRAY" : "DELTA_BYTE_ARRAY", why);
    c->string_bytes += total;
    return 0;
}

/* BYTE_STREAM_SPLIT: byte j of value i at p[j * nn + i] */
static int byte_stream_split_decode(const where *w, const pq_node *leaf, const uint8_t *p, const uint8_t *end,
                                    pq_val *out, size_t nn) {
    size_t k = leaf->type == T_INT32 || leaf->type == T_FLOAT    ? 4
               : leaf->type == T_INT64 || leaf->type == T_DOUBLE ? 8
                                                                 : 0;
    if (!k) return bad(w, "BYTE_STREAM_SPLIT values in a %s column", type_names[leaf->type]);
    if (nn > (size_t)(end - p) / k) return bad(w, "BYTE_STREAM_SPLIT values end early");
    for (size_t i = 0; i < nn; i++) {
        uint8_t b[8];
        for (size_t j = 0; j < k; j++) b[j] = p[j * nn + i];
        if (k == 4) {
            uint32_t x;
            memcpy(&x, b, 4);
            if (leaf->type == T_INT32) out[i].u.i = sign_ext32(x);
            else {
                float fl;
                memcpy(&fl, &x, 4);
                out[i].u.d = fl;
            }
        } else {
            memcpy(&out[i].u, b, 8);
        }
    }
    return 0;
}

/* the values of one data page (nn non-null ones) in encoding enc from [p, end) */
static int decode_values(pq_file *f, const where *w, const pq_node *leaf, pq_col *c, int enc, const uint8_t *p,
                         const uint8_t *end, size_t nn) {
    int rc = col_grow_vals(c, nn);
    if (rc) return rc;
    pq_val *out = c->val + c->n_val;
    switch (enc) {
    case E_PLAIN: rc = plain_decode(w, leaf, p, end, out, nn, &c->string_bytes); break;
    case E_PLAIN_DICT:
    case E_RLE_DICT: rc = dict_decode(f, w, leaf, c, p, end, out, nn); break;
    case E_RLE: rc = rle_bool_decode(w, leaf, p, end, out, nn); break;
    case E_DELTA_BINARY: rc = delta_int_decode(w, leaf, p, end, out, nn); break;
    case E_DELTA_LENGTH:
    case E_DELTA_BYTE_ARRAY: rc = delta_bytes_decode(w, leaf, c, enc, p, end, out, nn); break;
    case E_BYTE_STREAM_SPLIT: rc = byte_stream_split_decode(w, leaf, p, end, out, nn); break;
    default: return bad(w, "encoding %d is not supported", enc);
    }
    if (!rc) c->n_val += nn;
    return rc;
}

/* ---- pages ---- */

typedef struct page_header {
    int type;
    int32_t usize, csize;
    int32_t num_values, num_nulls, num_rows, encoding, def_enc, rep_enc, def_len, rep_len;
    bool is_compressed, has_v1, has_v2, has_dict;
} page_header;

static void parse_sub(thrift_in *t, page_header *h, int which) {
    thrift_struct s;
    if (!thrift_struct_begin(t, &s)) return;
    int16_t id;
    uint8_t ty;
    while (thrift_field(t, &s, &id, &ty)) {
        if (ty == THRIFT_TRUE || ty == THRIFT_FALSE) {
            if (which == 2 && id == 7) h->is_compressed = thrift_bool(t, ty);
            continue;
        }
        if (ty != THRIFT_I32) {
            thrift_skip(t, ty);
            continue;
        }
        int32_t v = thrift_i32(t);
        if (id == 1) h->num_values = v;
        else if (which == 1) { /* DataPageHeader: 2 encoding, 3 def, 4 rep */
            if (id == 2) h->encoding = v;
            else if (id == 3) h->def_enc = v;
            else if (id == 4) h->rep_enc = v;
        } else if (which == 3) { /* DictionaryPageHeader: 2 encoding */
            if (id == 2) h->encoding = v;
        } else { /* DataPageHeaderV2 */
            if (id == 2) h->num_nulls = v;
            else if (id == 3) h->num_rows = v;
            else if (id == 4) h->encoding = v;
            else if (id == 5) h->def_len = v;
            else if (id == 6) h->rep_len = v;
        }
    }
    thrift_struct_end(t);
}

static const char *parse_page_header(thrift_in *t, page_header *h) {
    memset(h, 0, sizeof *h);
    h->type = -1;
    h->is_compressed = true;
    thrift_struct s;
    thrift_struct_begin(t, &s);
    int16_t id;
    uint8_t ty;
    while (thrift_field(t, &s, &id, &ty)) {
        if (id == 1 && ty == THRIFT_I32) h->type = thrift_i32(t);
        else if (id == 2 && ty == THRIFT_I32) h->usize = thrift_i32(t);
        else if (id == 3 && ty == THRIFT_I32) h->csize = thrift_i32(t);
        else if (id == 5 && ty == THRIFT_STRUCT) parse_sub(t, h, 1), h->has_v1 = true;
        else if (id == 7 && ty == THRIFT_STRUCT) parse_sub(t, h, 3), h->has_dict = true;
        else if (id == 8 && ty == THRIFT_STRUCT) parse_sub(t, h, 2), h->has_v2 = true;
        else thrift_skip(t, ty);
    }
    thrift_struct_end(t);
    if (t->bad) return t->why;
    if (h->usize < 0 || h->csize < 0) return "negative page size";
    if (h->num_values < 0 || h->def_len < 0 || h->rep_len < 0) return "negative count";
    return NULL;
}

static int levels_grow(pq_col *c, size_t more, bool def, bool rep) {
    if (c->cap_lev && c->n_lev + more <= c->cap_lev) return 0; /* (never NULL: no arithmetic on it) */
    size_t cap = c->cap_lev ? c->cap_lev : 1024;
    while (cap < c->n_lev + more) cap *= 2;
    if (def) {
        uint16_t *d = realloc(c->def, cap * sizeof *d);
        if (!d) return err_set(ERR_STAGE, "out of memory");
        c->def = d;
    }
    if (rep) {
        uint16_t *r = realloc(c->rep, cap * sizeof *r);
        if (!r) return err_set(ERR_STAGE, "out of memory");
        c->rep = r;
    }
    c->cap_lev = cap;
    return 0;
}

/* levels of n entries into dst; v1 RLE levels carry a 4-byte length (with_len) */
static int decode_levels(pq_file *f, const where *w, const char *what, int enc, bool with_len, const uint8_t **pp,
                         const uint8_t *end, int max, uint16_t *dst, size_t n) {
    const uint8_t *p = *pp;
    int bw = bit_width((unsigned)max);
    if (n > f->idx_cap) {
        uint32_t *ix = realloc(f->idx, n * sizeof *ix);
        if (!ix) return err_set(ERR_STAGE, "out of memory");
        f->idx = ix;
        f->idx_cap = n;
    }
    const uint8_t *stop = end;
    if (enc == E_RLE) {
        if (with_len) {
            if (end - p < 4) return bad(w, "%s levels without their length", what);
            uint32_t len;
            memcpy(&len, p, 4);
            p += 4;
            if (len > (size_t)(end - p)) return bad(w, "%s levels (%u bytes) run past the page", what, len);
            stop = p + len;
        }
        if (!rle_decode(p, stop, bw, f->idx, n)) return bad(w, "%s levels end early", what);
        p = stop;
    } else if (enc == E_BIT_PACKED) {
        if (!bitpacked_decode(p, end, bw, f->idx, n)) return bad(w, "%s levels end early", what);
        p += ((size_t)n * (size_t)bw + 7) / 8;
    } else {
        return bad(w, "%s levels in encoding %d (expected RLE or BIT_PACKED)", what, enc);
    }
    for (size_t i = 0; i < n; i++) {
        if (f->idx[i] > (uint32_t)max)
            return bad(w, "%s level %u is above the column's maximum %d", what, f->idx[i], max);
        dst[i] = (uint16_t)f->idx[i];
    }
    *pp = p;
    return 0;
}

static int dict_page(pq_file *f, const where *w, const pq_node *leaf, pq_col *c, const page_header *h,
                     const uint8_t *data, size_t len) {
    if (c->dict) return bad(w, "a second dictionary page in one column chunk");
    if (h->encoding != E_PLAIN && h->encoding != E_PLAIN_DICT)
        return bad(w, "dictionary page in encoding %d (expected PLAIN)", h->encoding);
    size_t n = (size_t)h->num_values;
    size_t width = leaf->type == T_BOOLEAN ? 0
                   : leaf->type == T_BYTE_ARRAY || leaf->type == T_INT32 || leaf->type == T_FLOAT ? 4
                   : leaf->type == T_INT96 ? 12
                   : leaf->type == T_FIXED ? (size_t)leaf->type_length
                                           : 8;
    if (width ? n > len / width : n > len * 8) return bad(w, "a dictionary of %zu values in %zu bytes", n, len);
    c->dict = malloc((n ? n : 1) * sizeof *c->dict);
    if (!c->dict) return err_set(ERR_STAGE, "out of memory");
    c->n_dict = n;
    size_t sb = 0;
    (void)f;
    return plain_decode(w, leaf, data, data + len, c->dict, n, &sb);
}

/* a dictionary page (decompressed when the chunk is) into the column's dictionary */
static int load_dict_page(pq_file *f, const where *w, const chunk_meta *m, const pq_node *node, pq_col *c,
                          const page_header *h, const uint8_t *body) {
    int rc;
    if (!h->has_dict) return bad(w, "a dictionary page without its header");
    uint8_t *buf = NULL;
    const uint8_t *data = body;
    if (m->codec != C_NONE) {
        if ((rc = decompress(w, c, m->codec, body, (size_t)h->csize, (size_t)h->usize, &buf))) return rc;
        data = buf;
    }
    return dict_page(f, w, node, c, h, data, m->codec != C_NONE ? (size_t)h->usize : (size_t)h->csize);
}

/* a data page (v1: levels inside the compressed bytes; v2: levels before them, uncompressed): its
 * repetition and definition levels, then its non-null values */
static int load_data_page(pq_file *f, const where *w, const chunk_meta *m, const pq_node *node, pq_col *c,
                          const page_header *h, const uint8_t *body) {
    bool has_def = node->def_level > 0, has_rep = node->rep_level > 0;
    int rc;
    if (h->type != P_DATA && h->type != P_DATA_V2) return bad(w, "unknown page type %d", h->type);
    if ((h->type == P_DATA && !h->has_v1) || (h->type == P_DATA_V2 && !h->has_v2))
        return bad(w, "a data page without its header");
    size_t n = (size_t)h->num_values;
    if (n > (size_t)m->num_values - c->n_lev)
        return bad(w, "the pages hold more values than the column chunk's %lld", (long long)m->num_values);
    if ((rc = levels_grow(c, n, has_def, has_rep))) return rc;
    const uint8_t *q, *qend;
    uint8_t *buf = NULL;
    if (h->type == P_DATA) {
        q = body;
        qend = body + h->csize;
        if (m->codec != C_NONE) {
            if ((rc = decompress(w, c, m->codec, body, (size_t)h->csize, (size_t)h->usize, &buf))) return rc;
            q = buf;
            qend = buf + h->usize;
        }
        if (has_rep && (rc = decode_levels(f, w, "repetition", h->rep_enc, true, &q, qend, node->rep_level,
                                           c->rep + c->n_lev, n)))
            return rc;
        if (has_def && (rc = decode_levels(f, w, "definition", h->def_enc, true, &q, qend, node->def_level,
                                           c->def + c->n_lev, n)))
            return rc;
    } else {
        size_t lv = (size_t)h->rep_len + (size_t)h->def_len;
        if (lv > (size_t)h->csize || lv > (size_t)h->usize)
            return bad(w, "the levels (%zu bytes) are larger than the page", lv);
        q = body;
        if (has_rep && (rc = decode_levels(f, w, "repetition", E_RLE, false, &q, body + h->rep_len,
                                           node->rep_level, c->rep + c->n_lev, n)))
            return rc;
        q = body + h->rep_len;
        if (has_def && (rc = decode_levels(f, w, "definition", E_RLE, false, &q, q + h->def_len, node->def_level,
                                           c->def + c->n_lev, n)))
            return rc;
        q = body + lv;
        qend = body + h->csize;
        if (m->codec != C_NONE && h->is_compressed) {
            if ((rc = decompress(w, c, m->codec, q, (size_t)h->csize - lv, (size_t)h->usize - lv, &buf))) return rc;
            q = buf;
            qend = buf + (h->usize - lv);
        }
    }
    size_t nn = n;
    if (has_def) {
        nn = 0;
        const uint16_t *d = c->def + c->n_lev;
        uint16_t md = (uint16_t)node->def_level;
        for (size_t i = 0; i < n; i++) nn += d[i] == md;
    }
    if (has_rep && n && c->rep[c->n_lev] != 0 && c->n_lev == 0)
        return bad(w, "the first value of the column chunk continues a row (repetition level %d)", c->rep[0]);
    c->n_lev += n;
    return decode_values(f, w, node, c, h->encoding, q, qend, nn);
}

/* decode column chunk `leaf` of row group rg into f->cols[leaf] */
static int load_chunk(pq_file *f, int rg, int leaf) {
    const chunk_meta *m = &f->rgs[rg].cols[leaf];
    const pq_node *node = &f->nodes[f->leaves[leaf]];
    pq_col *c = &f->cols[leaf];
    col_reset(c);
    where w = {f, rg, leaf, 0};
    bool has_rep = node->rep_level > 0;
    const uint8_t *p = f->map + m->start, *end = p + m->size;
    int rc = 0;
    if ((uint64_t)m->num_values > MAX_CHUNK_ENTRIES)
        return bad(&w, "%lld values in one column chunk is more than qlora-run reads at once (%u)",
                   (long long)m->num_values, MAX_CHUNK_ENTRIES);
    while (!rc && c->n_lev < (size_t)m->num_values) {
        if (p >= end)
            return bad(&w, "the column chunk ends after %zu of its %lld values; the file is truncated or damaged",
                       c->n_lev, (long long)m->num_values);
        thrift_in t;
        thrift_init(&t, p, (size_t)(end - p));
        page_header h;
        const char *why = parse_page_header(&t, &h);
        if (why) return bad(&w, "corrupt page header (%s)", why);
        p = t.p;
        if ((size_t)h.csize > (size_t)(end - p))
            return bad(&w, "the page (%d bytes) runs past its column chunk; the file is truncated or damaged", h.csize);
        const uint8_t *body = p;
        p += h.csize;
        if (h.type == P_INDEX) {
            w.page++;
            continue;
        }
        if (h.type == P_DICT) {
            rc = load_dict_page(f, &w, m, node, c, &h, body);
            w.page++;
            continue;
        }
        if ((rc = load_data_page(f, &w, m, node, c, &h, body))) return rc;
        w.page++;
    }
    if (rc) return rc;
    /* rows: one per entry, or one per entry that starts a row */
    size_t rows = c->n_lev;
    if (has_rep) {
        rows = 0;
        for (size_t i = 0; i < c->n_lev; i++) rows += c->rep[i] == 0;
    }
    if ((int64_t)rows != f->rgs[rg].num_rows) {
        w.page = -1;
        return bad(&w, "the column holds %zu rows, the row group %lld", rows, (long long)f->rgs[rg].num_rows);
    }
    return 0;
}

/* let the kernel drop the mapped pages of row group rg's chunks: nothing points into them once
 * the next row group is loaded, so the file's pages in memory stay at about one row group too */
static void unmap_row_group(pq_file *f, int rg) {
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    for (int l = 0; l < f->n_leaves; l++) {
        if (!f->leaf_used[l]) continue;
        const chunk_meta *m = &f->rgs[rg].cols[l];
        uintptr_t a = ((uintptr_t)(f->map + m->start) + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
        uintptr_t e = (uintptr_t)(f->map + m->start + m->size) & ~((uintptr_t)page - 1);
        if (e > a) madvise((void *)a, e - a, MADV_DONTNEED);
    }
}

static int load_row_group(pq_file *f, int rg) {
    if (f->rg >= 0 && f->rg < f->n_rgs) unmap_row_group(f, f->rg);
    for (int l = 0; l < f->n_leaves; l++) col_reset(&f->cols[l]);
    f->rg = rg;
    f->rg_row = 0;
    for (int l = 0; l < f->n_leaves; l++) {
        if (!f->leaf_used[l]) continue;
        int rc = load_chunk(f, rg, l);
        if (rc) {
            f->rg = -1;
            return rc;
        }
    }
    return 0;
}

int pq_decode_row_group(pq_file *f, int rg, size_t *string_bytes) {
    *string_bytes = 0;
    if (rg < 0 || rg >= f->n_rgs) return err_set(ERR_USAGE, "%s: no row group %d", f->path, rg);
    int rc = load_row_group(f, rg);
    for (int l = 0; !rc && l < f->n_leaves; l++) *string_bytes += f->cols[l].string_bytes;
    f->rg = -1; /* pq_next starts afresh */
    return rc;
}

/* ---- record assembly ---- */

typedef struct asm_ctx {
    pq_file *f;
    int rc;
} asm_ctx;

static int row_bad(asm_ctx *a, const pq_node *n, const char *fmt, const char *detail) {
    if (!a->rc)
        a->rc = err_set(ERR_DATA, "%s: row %lld (row group %d), column '%s': %s%s", a->f->path, (long long)a->f->row,
                        a->f->rg, n->path, fmt, detail ? detail : "");
    return a->rc;
}

static pq_col *first_col(asm_ctx *a, const pq_node *n) { return &a->f->cols[n->leaf_first]; }

/* the definition level at the cursor of the first leaf below n (-1 at its end) */
static int peek_def(asm_ctx *a, const pq_node *n) {
    pq_col *c = first_col(a, n);
    if (c->lpos >= c->n_lev) {
        row_bad(a, n, "the column's levels end before its rows do", NULL);
        return -1;
    }
    return c->def ? c->def[c->lpos] : n->def_level + 99;
}

/* every leaf below n moves past one entry (n is null or an empty list here) */
static void skip_one(asm_ctx *a, const pq_node *n) {
    for (int l = n->leaf_first; l < n->leaf_end; l++) a->f->cols[l].lpos++;
}

/* An INT96 value (a legacy Spark/Impala timestamp: 8 bytes of nanoseconds within the day, then
 * 4 of the Julian day, both little-endian) as the JSON text hyparquet gives it (its Date's
 * toJSON): the instant truncated toward zero to milliseconds, "YYYY-MM-DDTHH:MM:SS.mmmZ" (a
 * year outside 0..9999 as +/-YYYYYY); null beyond a JavaScript Date's range, 8.64e15 ms either
 * side of 1970 (docs/parquet.md). */
static json_t *int96_json(const uint8_t *p) {
    int64_t nod;
    int32_t jday;
    memcpy(&nod, p, 8);
    memcpy(&jday, p + 8, 4);
    __int128 ns = (__int128)((int64_t)jday - 2440588) * 86400000000000LL + nod;
    __int128 ms = ns / 1000000; /* C division truncates toward zero, as BigInt's does */
    if (ms > (__int128)8640000000000000LL || ms < -(__int128)8640000000000000LL) return json_null();
    int64_t t = (int64_t)ms, days = t / 86400000, rem = t % 86400000;
    if (rem < 0) rem += 86400000, days--;
    /* civil date from days since 1970-01-01 (proleptic Gregorian), by 400-year eras */
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    char year[16], buf[64];
    if (y >= 0 && y <= 9999) snprintf(year, sizeof year, "%04lld", (long long)y);
    else snprintf(year, sizeof year, "%c%06lld", y < 0 ? '-' : '+', (long long)(y < 0 ? -y : y));
    snprintf(buf, sizeof buf, "%s-%02lld-%02lldT%02lld:%02lld:%02lld.%03lldZ", year, (long long)m, (long long)d,
             (long long)(rem / 3600000), (long long)(rem / 60000 % 60), (long long)(rem / 1000 % 60),
             (long long)(rem % 1000));
    return json_string(buf);
}

static json_t *leaf_json(asm_ctx *a, const pq_node *n, const pq_val *v) {
    switch (n->type) {
    case T_BOOLEAN: return json_boolean(v->u.i);
    case T_INT32:
        if (n->is_decimal) return json_real((double)v->u.i / pow(10, n->scale));
        return json_integer(n->is_unsigned ? (json_int_t)(uint32_t)v->u.i : (json_int_t)v->u.i);
    case T_INT64:
        if (n->is_decimal) return json_real((double)v->u.i / pow(10, n->scale));
        if (n->is_unsigned && v->u.i < 0) return json_real((double)(uint64_t)v->u.i);
        return json_integer((json_int_t)v->u.i);
    case T_FLOAT:
    case T_DOUBLE: return isfinite(v->u.d) ? json_real(v->u.d) : json_null();
    case T_BYTE_ARRAY:
    case T_FIXED: {
        size_t ok = utf8_valid_prefix(v->u.p, v->n);
        if (ok < v->n) {
            char d[64];
            snprintf(d, sizeof d, " (byte %zu is 0x%02x)", ok, v->u.p[ok]);
            row_bad(a, n, "the value is not UTF-8 text; qlora-run reads text columns", d);
            return NULL;
        }
        if (memchr(v->u.p, 0, v->n)) {
            row_bad(a, n, "the value holds a NUL byte (binary data, not text)", NULL);
            return NULL;
        }
        return json_stringn_nocheck((const char *)v->u.p, v->n);
    }
    case T_INT96: return int96_json(v->u.p);
    default: row_bad(a, n, "a value of an unknown physical type", NULL); return NULL;
    }
}

static json_t *node_value(asm_ctx *a, int ni);

/* a repeated node: the JSON array of its instances at the cursor */
static json_t *list_value(asm_ctx *a, int ri, bool elem_is_child) {
    const pq_node *r = &a->f->nodes[ri];
    json_t *arr = json_array();
    int d = peek_def(a, r);
    if (d < 0) {
        json_decref(arr);
        return NULL;
    }
    if (d < r->def_level) { /* an empty list */
        skip_one(a, r);
        return arr;
    }
    pq_col *c = first_col(a, r);
    for (;;) {
        json_t *e;
        if (elem_is_child) {
            e = node_value(a, r->children[0]);
        } else if (r->type >= 0) { /* a repeated primitive */
            pq_col *lc = &a->f->cols[r->leaf_first];
            if (lc->vpos >= lc->n_val) {
                row_bad(a, r, "fewer values than the levels say", NULL);
                e = NULL;
            } else {
                e = leaf_json(a, r, &lc->val[lc->vpos++]);
                lc->lpos++;
            }
        } else { /* the repeated group is the element: a struct */
            e = json_object();
            for (int k = 0; k < r->n_children && e; k++) {
                const pq_node *ch = &a->f->nodes[r->children[k]];
                json_t *v = node_value(a, r->children[k]);
                if (!v) {
                    json_decref(e);
                    e = NULL;
                } else {
                    json_object_set_new_nocheck(e, ch->name, v);
                }
            }
        }
        if (!e || json_array_append_new(arr, e)) {
            json_decref(arr);
            return NULL;
        }
        if (c->lpos >= c->n_lev || !c->rep || c->rep[c->lpos] != r->rep_level) break;
    }
    return arr;
}

/* does a LIST's repeated field hold the element (3-level) or is it the element (2-level)? */
static bool list_three_level(const pq_file *f, const pq_node *list, const pq_node *r) {
    if (r->type >= 0 || r->n_children != 1) return false;
    if (!strcmp(r->name, "array")) return false;
    size_t ln = strlen(list->name);
    if (!strncmp(r->name, list->name, ln) && !strcmp(r->name + ln, "_tuple")) return false;
    (void)f;
    return true;
}

/* map entries [{key, value}] -> {key: value} (keys as text) */
static json_t *map_object(asm_ctx *a, const pq_node *n, json_t *pairs) {
    json_t *o = json_object();
    size_t i;
    json_t *e;
    json_array_foreach(pairs, i, e) {
        json_t *k = json_object_get(e, a->f->nodes[a->f->nodes[n->children[0]].children[0]].name);
        json_t *v = json_object_get(e, "value");
        if (!v && json_object_size(e) == 2) {
            const char *key;
            json_t *x;
            json_object_foreach(e, key, x) if (x != k) v = x;
        }
        char num[32];
        const char *ks = json_string_value(k);
        if (!ks && json_is_integer(k)) snprintf(num, sizeof num, "%lld", (long long)json_integer_value(k)), ks = num;
        if (!ks) {
            json_decref(o);
            row_bad(a, n, "a map key that is not text or an integer", NULL);
            return NULL;
        }
        json_object_set(o, ks, v ? v : json_null());
    }
    return o;
}

/* the value of node ni at the cursors (a non-repeated node, or a repeated one as a list) */
static json_t *node_value(asm_ctx *a, int ni) {
    const pq_node *n = &a->f->nodes[ni];
    if (n->rep == R_REPEATED) return list_value(a, ni, false);
    if (n->type >= 0) {
        pq_col *c = &a->f->cols[n->leaf_first];
        if (c->lpos >= c->n_lev) {
            row_bad(a, n, "the column's levels end before its rows do", NULL);
            return NULL;
        }
        int d = c->def ? c->def[c->lpos] : n->def_level;
        c->lpos++;
        if (d < n->def_level) return json_null();
        if (c->vpos >= c->n_val) {
            row_bad(a, n, "fewer values than the levels say", NULL);
            return NULL;
        }
        return leaf_json(a, n, &c->val[c->vpos++]);
    }
    int d = peek_def(a, n);
    if (d < 0) return NULL;
    if (n->rep == R_OPTIONAL && d < n->def_level) {
        skip_one(a, n);
        return json_null();
    }
    if (n->kind != K_PLAIN) {
        const pq_node *r = &a->f->nodes[n->children[0]];
        json_t *l = list_value(a, n->children[0], n->kind == K_LIST && list_three_level(a->f, n, r));
        if (!l || n->kind == K_LIST) return l;
        json_t *o = map_object(a, n, l);
        json_decref(l);
        return o;
    }
    json_t *o = json_object();
    for (int k = 0; k < n->n_children; k++) {
        json_t *v = node_value(a, n->children[k]);
        if (!v) {
            json_decref(o);
            return NULL;
        }
        json_object_set_new_nocheck(o, a->f->nodes[n->children[k]].name, v);
    }
    return o;
}

int pq_next(pq_file *f, json_t **rec) {
    *rec = NULL;
    for (;;) {
        if (f->done) return 0;
        if (f->rg >= 0 && f->rg_row < f->rgs[f->rg].num_rows) break;
        if (f->rg >= 0) {
            /* every level and value of the row group used: the sibling columns agreed */
            for (int l = 0; l < f->n_leaves; l++) {
                pq_col *c = &f->cols[l];
                if (f->leaf_used[l] && (c->lpos != c->n_lev || c->vpos != c->n_val)) {
                    where w = {f, f->rg, l, -1};
                    f->done = true;
                    return bad(&w, "the column holds more values than its rows use; the file is damaged");
                }
            }
        }
        int next = f->rg + 1;
        if (next >= f->n_rgs) {
            f->done = true;
            return 0;
        }
        int rc = load_row_group(f, next);
        if (rc) {
            f->done = true;
            return rc;
        }
    }
    asm_ctx a = {f, 0};
    json_t *o = json_object();
    for (int k = 0; k < f->n_proj && !a.rc; k++) {
        const pq_node *n = &f->nodes[f->proj[k]];
        pq_col *c = first_col(&a, n);
        if (c->rep && c->lpos < c->n_lev && c->rep[c->lpos] != 0) {
            row_bad(&a, n, "the levels do not start a new row here", NULL);
            break;
        }
        json_t *v = node_value(&a, f->proj[k]);
        if (v) json_object_set_new_nocheck(o, n->name, v);
    }
    if (a.rc) {
        json_decref(o);
        f->done = true;
        return a.rc;
    }
    f->rg_row++;
    f->row++;
    *rec = o;
    return 0;
}
