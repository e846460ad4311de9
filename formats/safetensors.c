/* safetensors.c: validated mmap reader and streaming sharded writer (see safetensors.h). */
#define _GNU_SOURCE
#include "safetensors.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"

#define ST_HEADER_MAX 100000000ull

static const char *dtype_names[ST_DTYPE_COUNT] = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16",
                                                  "I32", "U32", "F32", "F64", "I64", "U64"};
static const size_t dtype_sizes[ST_DTYPE_COUNT] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};
/* Rank in the safetensors Dtype enum order: data is laid out by rank descending. */
static const int dtype_rank[ST_DTYPE_COUNT] = {0, 4, 5, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19};

const char *st_dtype_name(st_dtype d) { return d < ST_DTYPE_COUNT ? dtype_names[d] : "?"; }
size_t st_dtype_size(st_dtype d) { return d < ST_DTYPE_COUNT ? dtype_sizes[d] : 0; }
int st_dtype_from_name(const char *s) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++)
        if (!strcmp(s, dtype_names[i])) return i;
    return -1;
}

int st_float_dtype_parse(const char *name, st_dtype *d) {
    if (!strcmp(name, "bf16") || !strcmp(name, "bfloat16")) *d = ST_BF16;
    else if (!strcmp(name, "f16") || !strcmp(name, "float16") || !strcmp(name, "fp16")) *d = ST_F16;
    else if (!strcmp(name, "f32") || !strcmp(name, "float32") || !strcmp(name, "fp32")) *d = ST_F32;
    else return -1;
    return 0;
}

const char *st_float_dtype_torch_name(st_dtype d) {
    return d == ST_F32 ? "float32" : d == ST_F16 ? "float16" : "bfloat16";
}

int64_t st_numel(const st_tensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* ---- reader ---- */

typedef struct st_map {
    char *path;
    uint8_t *base;
    size_t size;
    json_t *meta;
} st_map;

struct st_model {
    st_map *maps;
    size_t n_maps;
    st_tensor *tensors;
    size_t n, cap;
};

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct span {
    uint64_t b, e;
    const char *name;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e < y->e ? -1 : x->e > y->e);
}

static int map_file(st_model *m, const char *path, st_map **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno(ERR_DATA, "cannot open '%s'", path);
    struct stat st;
    if (fstat(fd, &st)) { close(fd); return err_errno(ERR_DATA, "cannot stat '%s'", path); }
    size_t size = (size_t)st.st_size;
    if (size < 8) { close(fd); return err_set(ERR_DATA, "%s: not a safetensors file: %zu bytes is shorter than the 8-byte header length", path, size); }
    void *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (base == MAP_FAILED) return err_errno(ERR_DATA, "cannot map '%s'", path);
    st_map *nm = realloc(m->maps, (m->n_maps + 1) * sizeof *nm);
    if (!nm) { munmap(base, size); return err_set(ERR_STAGE, "out of memory"); }
    m->maps = nm;
    st_map *mp = &m->maps[m->n_maps++];
    memset(mp, 0, sizeof *mp);
    mp->path = strdup(path);
    mp->base = base;
    mp->size = size;
    *out = mp;
    return 0;
}

static int parse_file(st_model *m, const char *path) {
    st_map *mp = NULL;
    int rc = map_file(m, path, &mp);
    if (rc) return rc;
    uint64_t hn;
    memcpy(&hn, mp->base, 8);
    if (hn > ST_HEADER_MAX) return err_set(ERR_DATA, "%s: header length %llu is larger than the 100 MB limit (a corrupt or non-safetensors file)", path, (unsigned long long)hn);
    if (hn + 8 > mp->size) return err_set(ERR_DATA, "%s: header length %llu runs past the end of the file (%zu bytes): the file is truncated", path, (unsigned long long)hn, mp->size);
    if (hn < 2) return err_set(ERR_DATA, "%s: header of %llu bytes is too short to be a JSON object", path, (unsigned long long)hn);
    json_error_t je;
    json_t *h = json_loadb((const char *)mp->base + 8, (size_t)hn, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!h) return err_set(ERR_DATA, "%s: header is not valid JSON (column %d: %s)", path, je.column, je.text);
    if (!json_is_object(h)) { json_decref(h); return err_set(ERR_DATA, "%s: header is not a JSON object", path); }
    uint64_t buflen = mp->size - 8 - hn;
    const uint8_t *buf = mp->base + 8 + hn;
    size_t nt = json_object_size(h);
    span *spans = calloc(nt ? nt : 1, sizeof *spans);
    size_t ns = 0;
    const char *key;
    json_t *val;
    rc = 0;
    json_object_foreach(h, key, val) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val)) { rc = err_set(ERR_DATA, "%s: __metadata__ is not an object of strings", path); break; }
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) { rc = err_set(ERR_DATA, "%s: __metadata__ value of '%s' is not a string", path, mk); break; }
            }
            if (rc) break;
            mp->meta = json_incref(val);
            continue;
        }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"), *jo = json_object_get(val, "data_offsets");
        if (!json_is_object(val) || !json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2) {
            rc = err_set(ERR_DATA, "%s: tensor '%s': expected {\"dtype\": str, \"shape\": [..], \"data_offsets\": [begin, end]}", path, key);
            break;
        }
        int dt = st_dtype_from_name(json_string_value(jd));
        if (dt < 0) { rc = err_set(ERR_DATA, "%s: tensor '%s': unsupported dtype '%s' (supported: F32, F16, BF16, F64, U8, I8, I16, U16, I32, U32, I64, U64, BOOL)", path, key, json_string_value(jd)); break; }
        if (json_array_size(js) > ST_MAX_DIMS) { rc = err_set(ERR_DATA, "%s: tensor '%s': %zu dimensions (at most %d)", path, key, json_array_size(js), ST_MAX_DIMS); break; }
        if (m->n == m->cap) {
            m->cap = m->cap ? 2 * m->cap : 256;
            m->tensors = realloc(m->tensors, m->cap * sizeof *m->tensors);
        }
        st_tensor *t = &m->tensors[m->n];
        memset(t, 0, sizeof *t);
        t->dtype = (st_dtype)dt;
        t->ndim = (int)json_array_size(js);
        unsigned __int128 numel = 1;
        for (int i = 0; i < t->ndim; i++) {
            json_t *d = json_array_get(js, (size_t)i);
            if (!json_is_integer(d) || json_integer_value(d) < 0) { rc = err_set(ERR_DATA, "%s: tensor '%s': shape entries must be non-negative integers", path, key); break; }
            t->shape[i] = json_integer_value(d);
            numel *= (unsigned __int128)t->shape[i];
            if (numel > ((unsigned __int128)1 << 62)) { rc = err_set(ERR_DATA, "%s: tensor '%s': absurd shape", path, key); break; }
        }
        if (rc) break;
        json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
        if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < json_integer_value(b)) {
            rc = err_set(ERR_DATA, "%s: tensor '%s': data_offsets must be two integers 0 <= begin <= end", path, key);
            break;
        }
        uint64_t ub = (uint64_t)json_integer_value(b), ue = (uint64_t)json_integer_value(e);
        unsigned __int128 want = numel * dtype_sizes[dt];
        if ((unsigned __int128)(ue - ub) != want) {
            rc = err_set(ERR_DATA, "%s: tensor '%s': %llu bytes in data_offsets, but dtype %s and its shape need %llu", path, key,
                         (unsigned long long)(ue - ub), dtype_names[dt], (unsigned long long)want);
            break;
        }
        if (ue > buflen) { rc = err_set(ERR_DATA, "%s: tensor '%s': data_offsets end %llu is past the data (%llu bytes): the file is truncated", path, key, (unsigned long long)ue, (unsigned long long)buflen); break; }
        t->name = strdup(key);
        t->nbytes = ue - ub;
        t->data = buf + ub;
        t->file = mp->path;
        spans[ns++] = (span){ub, ue, t->name};
        m->n++;
    }
    if (!rc) {
        qsort(spans, ns, sizeof *spans, cmp_span);
        uint64_t pos = 0;
        for (size_t i = 0; i < ns && !rc; i++) {
            if (spans[i].b < pos) rc = err_set(ERR_DATA, "%s: tensor '%s' overlaps the previous tensor's bytes", path, spans[i].name);
            else if (spans[i].b > pos) rc = err_set(ERR_DATA, "%s: gap in the data before tensor '%s' (offset %llu, expected %llu)", path, spans[i].name, (unsigned long long)spans[i].b, (unsigned long long)pos);
            pos = spans[i].e;
        }
        if (!rc && pos != buflen) rc = err_set(ERR_DATA, "%s: %llu bytes of data after the last tensor (expected the tensors to cover the file exactly)", path, (unsigned long long)(buflen - pos));
    }
    free(spans);
    json_decref(h);
    return rc;
}

static int open_index(st_model *m, const char *index_path) {
    json_error_t je;
    json_t *idx = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
    if (!idx) return err_set(ERR_DATA, "%s:%d:%d: %s", index_path, je.line, je.column, je.text);
    json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm)) { json_decref(idx); return err_set(ERR_DATA, "%s: no \"weight_map\" object", index_path); }
    char *dir = fs_dirname(index_path);
    /* the distinct shard files, in first-seen order */
    json_t *files = json_array();
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach(wm, k, v) {
        if (!json_is_string(v)) { rc = err_set(ERR_DATA, "%s: weight_map entry '%s' is not a file name", index_path, k); break; }
        if (!fs_rel_path_safe(json_string_value(v))) { rc = err_set(ERR_DATA, "%s: weight_map entry '%s' names an unsafe path '%s'", index_path, k, json_string_value(v)); break; }
        size_t i;
        json_t *f;
        int seen = 0;
        json_array_foreach(files, i, f) if (json_equal(f, v)) { seen = 1; break; }
        if (!seen) json_array_append(files, v);
    }
    size_t i;
    json_t *f;
    json_array_foreach(files, i, f) {
        if (rc) break;
        char *p = fs_join(dir, json_string_value(f));
        rc = parse_file(m, p);
        free(p);
    }
    /* every tensor the index names must exist in the file it names */
    if (!rc) {
        json_object_foreach(wm, k, v) {
            int found = 0;
            for (size_t t = 0; t < m->n && !found; t++) found = !strcmp(m->tensors[t].name, k);
            if (!found) { rc = err_set(ERR_DATA, "%s: tensor '%s' is listed in the index but missing from '%s'", index_path, k, json_string_value(v)); break; }
        }
    }
    json_decref(files);
    json_decref(idx);
    free(dir);
    return rc;
}

void st_close(st_model **pm) {
    st_model *m = *pm;
    if (!m) return;
    for (size_t i = 0; i < m->n; i++) free((char *)m->tensors[i].name);
    for (size_t i = 0; i < m->n_maps; i++) {
        munmap(m->maps[i].base, m->maps[i].size);
        free(m->maps[i].path);
        json_decref(m->maps[i].meta);
    }
    free(m->maps);
    free(m->tensors);
    free(m);
    *pm = NULL;
}

int st_open(st_model **out, const char *path) {
    *out = NULL;
    st_model *m = calloc(1, sizeof *m);
    int rc;
    if (fs_is_dir(path)) {
        char *idx = fs_join(path, "model.safetensors.index.json");
        char *one = fs_join(path, "model.safetensors");
        if (fs_exists(idx)) rc = open_index(m, idx);
        else if (fs_exists(one)) rc = parse_file(m, one);
        else rc = err_set(ERR_DATA, "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
        free(idx);
        free(one);
    } else {
        size_t l = strlen(path);
        if (l > 5 && !strcmp(path + l - 5, ".json")) rc = open_index(m, path);
        else rc = parse_file(m, path);
    }
    if (!rc) {
        qsort(m->tensors, m->n, sizeof *m->tensors, cmp_tensor_name);
        for (size_t i = 1; i < m->n; i++)
            if (!strcmp(m->tensors[i].name, m->tensors[i - 1].name)) {
                rc = err_set(ERR_DATA, "%s: tensor '%s' appears in two files ('%s' and '%s')", path, m->tensors[i].name, m->tensors[i - 1].file, m->tensors[i].file);
                break;
            }
    }
    if (rc) { st_close(&m); return rc; }
    *out = m;
    return 0;
}

size_t st_count(const st_model *m) { return m->n; }
const st_tensor *st_at(const st_model *m, size_t i) { return i < m->n ? &m->tensors[i] : NULL; }

const st_tensor *st_find(const st_model *m, const char *name) {
    st_tensor key = {.name = name};
    return bsearch(&key, m->tensors, m->n, sizeof key, cmp_tensor_name);
}

const char *st_metadata(const st_model *m, const char *key) {
    if (!m->n_maps || !m->maps[0].meta) return NULL;
    return json_string_value(json_object_get(m->maps[0].meta, key));
}

void st_release(const st_tensor *t) {
    if (!t) return;
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)t->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t e = ((uintptr_t)t->data + t->nbytes) & ~((uintptr_t)page - 1);
    /* whole pages inside the tensor only: neighbours may still be in use */
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

int st_read_f32(const st_tensor *t, int64_t first, int64_t n, float *dst) {
    if (first < 0 || n < 0 || first + n > st_numel(t)) return err_set(ERR_STAGE, "tensor '%s': read of [%lld, %lld) out of range", t->name, (long long)first, (long long)(first + n));
    const uint8_t *p = t->data + (uint64_t)first * dtype_sizes[t->dtype];
    switch (t->dtype) {
    case ST_F32: memcpy(dst, p, (size_t)n * 4); break;
    case ST_BF16: for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = bf16_to_f32(h); } break;
    case ST_F16: for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, p + 2 * i, 2); dst[i] = f16_to_f32(h); } break;
    case ST_F64: for (int64_t i = 0; i < n; i++) { double d; memcpy(&d, p + 8 * i, 8); dst[i] = (float)d; } break;
    default: return err_set(ERR_DATA, "%s: tensor '%s' has dtype %s where a float tensor (F32, F16, BF16) was expected", t->file, t->name, dtype_names[t->dtype]);
    }
    return 0;
}

/* ---- writer ---- */

typedef struct wtensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;
    st_fill_fn fill;
    void *arg;
    int shard;
} wtensor;

struct st_writer {
    char *dir, *base;
    uint64_t max_shard;
    wtensor *t;
    size_t n, cap;
    json_t *meta;
};

int st_writer_open(st_writer **out, const char *dir, const char *base, uint64_t max_shard_bytes) {
    st_writer *w = calloc(1, sizeof *w);
    w->dir = strdup(dir);
    w->base = strdup(base ? base : "model");
    w->max_shard = max_shard_bytes;
    w->meta = json_object();
    json_object_set_new(w->meta, "format", json_string("pt"));
    *out = w;
    return 0;
}

int st_writer_meta(st_writer *w, const char *key, const char *value) {
    json_object_set_new(w->meta, key, json_string(value));
    return 0;
}

int st_writer_add(st_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *shape, const void *data,
                  st_fill_fn fill, void *arg) {
    if (ndim < 0 || ndim > ST_MAX_DIMS) return err_set(ERR_STAGE, "tensor '%s': %d dimensions", name, ndim);
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->t[i].name, name)) return err_set(ERR_STAGE, "tensor '%s' added twice", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->t = realloc(w->t, w->cap * sizeof *w->t);
    }
    wtensor *t = &w->t[w->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = dtype;
    t->ndim = ndim;
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) { t->shape[i] = shape[i]; numel *= (uint64_t)shape[i]; }
    t->nbytes = numel * dtype_sizes[dtype];
    t->data = data;
    t->fill = fill;
    t->arg = arg;
    return 0;
}

void st_writer_free(st_writer **pw) {
    st_writer *w = *pw;
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    free(w->dir);
    free(w->base);
    json_decref(w->meta);
    free(w);
    *pw = NULL;
}

static int cmp_wt_layout(const void *a, const void *b) {
    const wtensor *x = *(wtensor *const *)a, *y = *(wtensor *const *)b;
    int rx = dtype_rank[x->dtype], ry = dtype_rank[y->dtype];
    if (rx != ry) return ry - rx; /* higher rank first */
    return strcmp(x->name, y->name);
}

static char *header_json(st_writer *w, wtensor **order, size_t n, uint64_t *hlen) {
    /* compact JSON in layout order: __metadata__ first, then tensors by offset */
    json_t *h = json_object();
    json_object_set(h, "__metadata__", w->meta);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_object(), *sh = json_array(), *of = json_array();
        for (int d = 0; d < order[i]->ndim; d++) json_array_append_new(sh, json_integer(order[i]->shape[d]));
        json_array_append_new(of, json_integer((json_int_t)off));
        off += order[i]->nbytes;
        json_array_append_new(of, json_integer((json_int_t)off));
        json_object_set_new(e, "dtype", json_string(dtype_names[order[i]->dtype]));
        json_object_set_new(e, "shape", sh);
        json_object_set_new(e, "data_offsets", of);
        json_object_set_new(h, order[i]->name, e);
    }
    char *s = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    size_t l = strlen(s);
    size_t pad = (8 - l % 8) % 8;
    s = realloc(s, l + pad + 1);
    memset(s + l, ' ', pad);
    s[l + pad] = 0;
    *hlen = l + pad;
    return s;
}

static int write_shard(st_writer *w, const char *fname, wtensor **order, size_t n) {
    qsort(order, n, sizeof *order, cmp_wt_layout);
    uint64_t hlen;
    char *hdr = header_json(w, order, n, &hlen);
    char *path = fs_join(w->dir, fname);
    fs_file ff;
    int rc = fs_file_open(&ff, path);
    if (!rc) rc = fs_file_write(&ff, &hlen, 8);
    if (!rc) rc = fs_file_write(&ff, hdr, hlen);
    void *buf = NULL;
    size_t bufcap = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        wtensor *t = order[i];
        if (t->data) {
            rc = fs_file_write(&ff, t->data, t->nbytes);
            continue;
        }
        if (t->nbytes > bufcap) {
            free(buf);
            bufcap = t->nbytes;
            buf = malloc(bufcap ? bufcap : 1);
            if (!buf) { rc = err_set(ERR_STAGE, "out of memory for tensor '%s' (%llu bytes)", t->name, (unsigned long long)t->nbytes); break; }
        }
        rc = t->fill(t->arg, t->name, buf, t->nbytes);
        if (!rc) rc = fs_file_write(&ff, buf, t->nbytes);
    }
    free(buf);
    if (rc) fs_file_abort(&ff);
    else rc = fs_file_commit(&ff);
    if (rc) err_wrap("writing '%s'", path);
    free(path);
    free(hdr);
    return rc;
}

int st_writer_finish(st_writer **pw) {
    st_writer *w = *pw;
    int rc = fs_mkdir_p(w->dir);
    if (rc) { st_writer_free(pw); return rc; }
    /* greedy shard assignment in insertion order */
    int shards = 1;
    uint64_t cur = 0, total = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (w->max_shard && cur > 0 && cur + w->t[i].nbytes > w->max_shard) { shards++; cur = 0; }
        w->t[i].shard = shards - 1;
        cur += w->t[i].nbytes;
        total += w->t[i].nbytes;
    }
    wtensor **order = malloc((w->n ? w->n : 1) * sizeof *order);
    if (shards == 1) {
        for (size_t i = 0; i < w->n; i++) order[i] = &w->t[i];
        char fname[512];
        snprintf(fname, sizeof fname, "%s.safetensors", w->base);
        rc = write_shard(w, fname, order, w->n);
    } else {
        json_t *idx = json_object(), *meta = json_object(), *wm = json_object();
        json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
        for (int s = 0; s < shards && !rc; s++) {
            size_t n = 0;
            char fname[512];
            snprintf(fname, sizeof fname, "%s-%05d-of-%05d.safetensors", w->base, s + 1, shards);
            for (size_t i = 0; i < w->n; i++)
                if (w->t[i].shard == s) {
                    order[n++] = &w->t[i];
                    json_object_set_new(wm, w->t[i].name, json_string(fname));
                }
            rc = write_shard(w, fname, order, n);
        }
        json_object_set_new(idx, "metadata", meta);
        json_object_set_new(idx, "weight_map", wm);
        if (!rc) {
            char *s = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
            size_t l = strlen(s);
            s = realloc(s, l + 2);
            s[l] = '\n';
            s[l + 1] = 0;
            char iname[512];
            snprintf(iname, sizeof iname, "%s.safetensors.index.json", w->base);
            char *p = fs_join(w->dir, iname);
            rc = fs_write_atomic(p, s, l + 1);
            free(p);
            free(s);
        }
        json_decref(idx);
    }
    free(order);
    st_writer_free(pw);
    return rc;
}
