/* gguf.c: GGUF v3 writer (see gguf.h). The header (KVs and tensor infos) is assembled in
 * memory, then each tensor's bytes are produced by its fill callback and streamed out. */
#include "gguf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"

/* ---- encodings ---- */

uint64_t ggml_row_bytes(ggml_type t, int64_t ne0) {
    switch (t) {
    case GGML_TYPE_F32: return (uint64_t)ne0 * 4;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: return (uint64_t)ne0 * 2;
    case GGML_TYPE_Q8_0: return ne0 % GGML_Q8_0_BLOCK ? 0 : (uint64_t)(ne0 / GGML_Q8_0_BLOCK) * GGML_Q8_0_BYTES;
    }
    return 0;
}

const char *ggml_type_name(ggml_type t) {
    switch (t) {
    case GGML_TYPE_F32: return "f32";
    case GGML_TYPE_F16: return "f16";
    case GGML_TYPE_BF16: return "bf16";
    case GGML_TYPE_Q8_0: return "q8_0";
    }
    return "?";
}

void ggml_quantize_q8_0(const float *src, void *dst, int64_t n) {
    uint8_t *out = dst;
    for (int64_t b = 0; b < n / GGML_Q8_0_BLOCK; b++) {
        const float *x = src + b * GGML_Q8_0_BLOCK;
        float amax = 0;
        for (int i = 0; i < GGML_Q8_0_BLOCK; i++) amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        uint16_t h = f32_to_f16(d);
        memcpy(out, &h, 2);
        for (int i = 0; i < GGML_Q8_0_BLOCK; i++) out[2 + i] = (uint8_t)(int8_t)roundf(x[i] * id);
        out += GGML_Q8_0_BYTES;
    }
}

void ggml_dequantize_q8_0(const void *src, float *dst, int64_t n) {
    const uint8_t *in = src;
    for (int64_t b = 0; b < n / GGML_Q8_0_BLOCK; b++) {
        uint16_t h;
        memcpy(&h, in, 2);
        float d = f16_to_f32(h);
        for (int i = 0; i < GGML_Q8_0_BLOCK; i++) dst[b * GGML_Q8_0_BLOCK + i] = d * (float)(int8_t)in[2 + i];
        in += GGML_Q8_0_BYTES;
    }
}

void ggml_encode(ggml_type t, const float *src, void *dst, int64_t n) {
    switch (t) {
    case GGML_TYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case GGML_TYPE_F16: for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_f16(src[i]); break;
    case GGML_TYPE_BF16: for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = f32_to_bf16(src[i]); break;
    case GGML_TYPE_Q8_0: ggml_quantize_q8_0(src, dst, n); break;
    }
}

/* ---- writer ---- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} buf;

static void buf_put(buf *b, const void *data, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np) { b->oom = true; return; }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_u32(buf *b, uint32_t v) { buf_put(b, &v, 4); } /* little-endian hosts only */
static void put_u64(buf *b, uint64_t v) { buf_put(b, &v, 8); }
static void put_str(buf *b, const char *s) {
    size_t l = strlen(s);
    put_u64(b, l);
    buf_put(b, s, l);
}

typedef struct kv {
    char *key;
    buf value; /* the u32 type and the encoded value */
} kv;

typedef struct gtensor {
    char *name;
    ggml_type type;
    int n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
    gguf_fill_fn fill;
    void *arg;
} gtensor;

struct gguf_writer {
    kv *kv;
    size_t n_kv, cap_kv;
    gtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
};

int gguf_writer_open(gguf_writer **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return err_set(ERR_STAGE, "out of memory");
    (*out)->alignment = GGUF_DEFAULT_ALIGNMENT;
    return 0;
}

void gguf_writer_free(gguf_writer **pw) {
    gguf_writer *w = *pw;
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].value.p); }
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
    *pw = NULL;
}

static size_t value_size(gguf_value_type t) {
    switch (t) {
    case GGUF_VALUE_U8: case GGUF_VALUE_I8: case GGUF_VALUE_BOOL: return 1;
    case GGUF_VALUE_U16: case GGUF_VALUE_I16: return 2;
    case GGUF_VALUE_U32: case GGUF_VALUE_I32: case GGUF_VALUE_F32: return 4;
    case GGUF_VALUE_U64: case GGUF_VALUE_I64: case GGUF_VALUE_F64: return 8;
    default: return 0;
    }
}

/* a fresh value slot for key: replaces an earlier value of the same key in place */
static buf *slot(gguf_writer *w, const char *key, int *rc) {
    size_t l = strlen(key);
    if (!l || l > 65535) { *rc = err_set(ERR_STAGE, "gguf key '%s': must be 1 to 65535 bytes", key); return NULL; }
    for (size_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->kv[i].key, key)) {
            w->kv[i].value.n = 0;
            return &w->kv[i].value;
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        kv *nk = realloc(w->kv, cap * sizeof *nk);
        if (!nk) { *rc = err_set(ERR_STAGE, "out of memory"); return NULL; }
        w->kv = nk;
        w->cap_kv = cap;
    }
    kv *e = &w->kv[w->n_kv];
    memset(e, 0, sizeof *e);
    if (!(e->key = strdup(key))) { *rc = err_set(ERR_STAGE, "out of memory"); return NULL; }
    w->n_kv++;
    return &e->value;
}

static int finish_slot(buf *b, const char *key) {
    return b->oom ? err_set(ERR_STAGE, "out of memory for gguf key '%s'", key) : 0;
}

int gguf_set_scalar(gguf_writer *w, const char *key, gguf_value_type type, const void *v) {
    size_t sz = value_size(type);
    if (!sz) return err_set(ERR_STAGE, "gguf key '%s': type %d is not a fixed-size scalar", key, (int)type);
    int rc = 0;
    buf *b = slot(w, key, &rc);
    if (!b) return rc;
    put_u32(b, (uint32_t)type);
    buf_put(b, v, sz);
    if (!strcmp(key, "general.alignment") && type == GGUF_VALUE_U32) {
        uint32_t a;
        memcpy(&a, v, 4);
        if (!a || (a & (a - 1))) return err_set(ERR_STAGE, "general.alignment %u is not a power of two", a);
        w->alignment = a;
    }
    return finish_slot(b, key);
}

int gguf_set_u32(gguf_writer *w, const char *key, uint32_t v) { return gguf_set_scalar(w, key, GGUF_VALUE_U32, &v); }
int gguf_set_i32(gguf_writer *w, const char *key, int32_t v) { return gguf_set_scalar(w, key, GGUF_VALUE_I32, &v); }
int gguf_set_u64(gguf_writer *w, const char *key, uint64_t v) { return gguf_set_scalar(w, key, GGUF_VALUE_U64, &v); }
int gguf_set_f32(gguf_writer *w, const char *key, float v) { return gguf_set_scalar(w, key, GGUF_VALUE_F32, &v); }
int gguf_set_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    return gguf_set_scalar(w, key, GGUF_VALUE_BOOL, &b);
}

int gguf_set_str(gguf_writer *w, const char *key, const char *v) {
    int rc = 0;
    buf *b = slot(w, key, &rc);
    if (!b) return rc;
    put_u32(b, GGUF_VALUE_STRING);
    put_str(b, v);
    return finish_slot(b, key);
}

int gguf_set_array(gguf_writer *w, const char *key, gguf_value_type elem, const void *data, uint64_t n) {
    size_t sz = value_size(elem);
    if (!sz) return err_set(ERR_STAGE, "gguf key '%s': array of type %d needs gguf_set_str_array", key, (int)elem);
    int rc = 0;
    buf *b = slot(w, key, &rc);
    if (!b) return rc;
    put_u32(b, GGUF_VALUE_ARRAY);
    put_u32(b, (uint32_t)elem);
    put_u64(b, n);
    buf_put(b, data, (size_t)n * sz);
    return finish_slot(b, key);
}

int gguf_set_str_array(gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    int rc = 0;
    buf *b = slot(w, key, &rc);
    if (!b) return rc;
    put_u32(b, GGUF_VALUE_ARRAY);
    put_u32(b, GGUF_VALUE_STRING);
    put_u64(b, n);
    for (uint64_t i = 0; i < n; i++) put_str(b, v[i] ? v[i] : "");
    return finish_slot(b, key);
}

int gguf_add_tensor(gguf_writer *w, const char *name, ggml_type type, int n_dims, const int64_t *ne, gguf_fill_fn fill, void *arg) {
    if (strlen(name) > 63) return err_set(ERR_STAGE, "gguf tensor name '%s' is longer than 63 bytes", name);
    if (n_dims < 1 || n_dims > 4) return err_set(ERR_STAGE, "gguf tensor '%s': %d dimensions (1 to 4)", name, n_dims);
    for (size_t i = 0; i < w->n_t; i++)
        if (!strcmp(w->t[i].name, name)) return err_set(ERR_STAGE, "gguf tensor '%s' added twice", name);
    uint64_t row = ggml_row_bytes(type, ne[0]);
    if (!row) return err_set(ERR_STAGE, "gguf tensor '%s': a row of %lld elements cannot be stored as %s (blocks of %d)", name,
                             (long long)ne[0], ggml_type_name(type), GGML_Q8_0_BLOCK);
    uint64_t rows = 1;
    for (int d = 1; d < n_dims; d++) rows *= (uint64_t)ne[d];
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        gtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) return err_set(ERR_STAGE, "out of memory");
        w->t = nt;
        w->cap_t = cap;
    }
    gtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return err_set(ERR_STAGE, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->nbytes = row * rows;
    t->fill = fill;
    t->arg = arg;
    w->n_t++;
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int gguf_writer_write(gguf_writer **pw, const char *path) {
    gguf_writer *w = *pw;
    buf h = {0};
    buf_put(&h, "GGUF", 4);
    put_u32(&h, GGUF_VERSION);
    put_u64(&h, w->n_t);
    put_u64(&h, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(&h, w->kv[i].key);
        buf_put(&h, w->kv[i].value.p, w->kv[i].value.n);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        gtensor *t = &w->t[i];
        t->offset = off;
        off = align_up(off + t->nbytes, w->alignment);
        put_str(&h, t->name);
        put_u32(&h, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) put_u64(&h, (uint64_t)t->ne[d]);
        put_u32(&h, (uint32_t)t->type);
        put_u64(&h, t->offset);
    }
    static const uint8_t zeros[256] = {0};
    uint64_t pad = align_up(h.n, w->alignment) - h.n;
    while (pad) {
        uint64_t k = pad < sizeof zeros ? pad : sizeof zeros;
        buf_put(&h, zeros, k);
        pad -= k;
    }
    int rc = h.oom ? err_set(ERR_STAGE, "out of memory for the gguf header") : 0;
    fs_file ff;
    bool open = false;
    if (!rc) { rc = fs_file_open(&ff, path); open = !rc; }
    if (!rc) rc = fs_file_write(&ff, h.p, h.n);
    void *data = NULL;
    uint64_t cap = 0;
    for (size_t i = 0; i < w->n_t && !rc; i++) {
        gtensor *t = &w->t[i];
        if (t->nbytes > cap) {
            free(data);
            cap = t->nbytes;
            if (!(data = malloc(cap))) { rc = err_set(ERR_STAGE, "out of memory for tensor '%s'", t->name); break; }
        }
        rc = t->fill(t->arg, t->name, data, t->nbytes);
        if (!rc) rc = fs_file_write(&ff, data, t->nbytes);
        uint64_t tail = align_up(t->nbytes, w->alignment) - t->nbytes;
        while (!rc && tail) {
            uint64_t k = tail < sizeof zeros ? tail : sizeof zeros;
            rc = fs_file_write(&ff, zeros, k);
            tail -= k;
        }
    }
    free(data);
    if (open) {
        if (rc) fs_file_abort(&ff);
        else rc = fs_file_commit(&ff);
    }
    free(h.p);
    gguf_writer_free(pw);
    if (rc) err_wrap("writing '%s'", path);
    return rc;
}
