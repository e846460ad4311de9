/* merge.c: merged weights from a base checkpoint (bf16 or bitsandbytes 4-bit) and a PEFT
 * LoRA adapter (see merge.h). */
#include "export/merge.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/pubdir.h"
#include "formats/pyjson.h"
#include "formats/safetensors.h"
#include "model/adapter.h"
#include "formats/bnb.h"
#include "tokenizer/tokfile.h"

struct merge_src {
    char *base_dir;
    model_config cfg;   /* as written: not quantized, bfloat16 */
    bool quantized;     /* the base is bnb 4-bit */
    st_model *st;
    peft_adapter adapter;
    bool has_adapter;
    config_tensor *t;
    size_t n;
    int threads;
};

const model_config *merge_config(const merge_src *m) { return &m->cfg; }
const char *merge_base_dir(const merge_src *m) { return m->base_dir; }
const peft_adapter *merge_adapter(const merge_src *m) { return m->has_adapter ? &m->adapter : NULL; }
const config_tensor *merge_tensors(const merge_src *m, size_t *n) {
    *n = m->n;
    return m->t;
}

void merge_close(merge_src **pm) {
    merge_src *m = *pm;
    if (!m) return;
    st_close(&m->st);
    if (m->has_adapter) peft_adapter_free(&m->adapter);
    config_free(&m->cfg);
    free(m->t);
    free(m->base_dir);
    free(m);
    *pm = NULL;
}

static int64_t numel_of(const config_tensor *t) { return t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1); }

/* ---- bitsandbytes 4-bit tensors (model/bnb.h reads them) ---- */

/* load the 4-bit Linear of tensor ct ("<prefix>.weight"); its shape must be the config's */
static int quant_load(const merge_src *m, const config_tensor *ct, bnb_linear *l) {
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%.*s", (int)(strlen(ct->name) - strlen(".weight")), ct->name);
    int rc = bnb_linear_load(m->st, prefix, l);
    if (rc) return err_wrap("%s", m->base_dir);
    if (l->w.rows != ct->shape[0] || l->w.cols != ct->shape[1]) {
        rc = err_set(ERR_DATA, "%s: '%s' is quantized with shape [%lld, %lld] but config.json implies [%lld, %lld]", m->base_dir, ct->name,
                     (long long)l->w.rows, (long long)l->w.cols, (long long)ct->shape[0], (long long)ct->shape[1]);
        bnb_linear_free(l);
    }
    return rc;
}

/* true when the base stores ct as a bitsandbytes 4-bit group */
static bool is_quantized(const merge_src *m, const config_tensor *ct) {
    if (!m->quantized || ct->role != TROLE_LINEAR) return false;
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%.*s", (int)(strlen(ct->name) - strlen(".weight")), ct->name);
    return bnb_linear_present(m->st, prefix);
}

/* ---- opening ---- */

static int check_tensors(merge_src *m) {
    for (size_t i = 0; i < m->n; i++) {
        const config_tensor *ct = &m->t[i];
        if (is_quantized(m, ct)) {
            bnb_linear l;
            int rc = quant_load(m, ct, &l);
            if (rc) return rc;
            bnb_linear_free(&l);
            continue;
        }
        const st_tensor *t = st_find(m->st, ct->name);
        if (!t) return err_set(ERR_DATA, "%s: tensor '%s' is missing from the checkpoint", m->base_dir, ct->name);
        if (t->dtype != ST_BF16 && t->dtype != ST_F16 && t->dtype != ST_F32)
            return err_set(ERR_DATA, "%s: tensor '%s' has dtype %s (expected BF16, F16 or F32%s)", t->file, ct->name, st_dtype_name(t->dtype),
                           m->quantized ? ", or a bitsandbytes 4-bit group" : "");
        bool same = t->ndim == ct->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = t->shape[d] == ct->shape[d];
        if (!same)
            return err_set(ERR_DATA, "%s: tensor '%s' has shape [%lld%s%lld] but config.json implies [%lld%s%lld]", t->file, ct->name,
                           (long long)t->shape[0], t->ndim > 1 ? ", " : "", (long long)(t->ndim > 1 ? t->shape[1] : 0),
                           (long long)ct->shape[0], ct->ndim > 1 ? ", " : "", (long long)(ct->ndim > 1 ? ct->shape[1] : 0));
    }
    return 0;
}

int merge_open(merge_src **out, const char *base_dir, const char *adapter_dir, int threads) {
    *out = NULL;
    merge_src *m = calloc(1, sizeof *m);
    if (!m) return err_set(ERR_STAGE, "out of memory");
    m->base_dir = strdup(base_dir);
    m->threads = threads > 0 ? threads : 1;
    int rc = config_load(&m->cfg, base_dir);
    if (!rc) {
        m->quantized = m->cfg.quantized;
        /* llm_int8_skip_modules stay in the model dtype: check_tensors reads them as such */
        m->cfg.quantized = false;
        json_decref(m->cfg.skip_modules);
        m->cfg.skip_modules = NULL;
        snprintf(m->cfg.dtype, sizeof m->cfg.dtype, "bfloat16");
        rc = config_tensors(&m->cfg, &m->t, &m->n);
    }
    if (!rc) rc = st_open(&m->st, base_dir);
    if (!rc) rc = check_tensors(m);
    if (!rc && adapter_dir) {
        rc = peft_adapter_load(&m->adapter, adapter_dir);
        m->has_adapter = !rc;
        if (!rc) rc = adapter_validate(&m->adapter, &m->cfg, adapter_dir);
    }
    if (rc) {
        merge_close(&m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---- reading merged tensors ---- */

typedef struct delta_job {
    float *w;
    const peft_lora *l;
    float scale;
    int64_t row0, row1;
} delta_job;

/* W[o, :] += scale * sum_k B[o, k] * A[k, :]  (fp32, row by row) */
static void *add_delta(void *arg) {
    const delta_job *j = arg;
    const peft_lora *l = j->l;
    for (int64_t o = j->row0; o < j->row1; o++) {
        float *row = j->w + o * l->in;
        for (int k = 0; k < l->r; k++) {
            float s = j->scale * l->B[o * l->r + k];
            if (s == 0.0f) continue;
            const float *a = l->A + (int64_t)k * l->in;
            for (int64_t i = 0; i < l->in; i++) row[i] += s * a[i];
        }
    }
    return NULL;
}

static void merge_lora(const merge_src *m, const peft_lora *l, float *w) {
    float scale = (float)peft_adapter_scale(&m->adapter, l);
    int nt = m->threads < 1 ? 1 : m->threads > 16 ? 16 : m->threads;
    delta_job jobs[16];
    pthread_t tid[16];
    bool running[16] = {0};
    for (int k = 0; k < nt; k++) jobs[k] = (delta_job){w, l, scale, l->out * k / nt, l->out * (k + 1) / nt};
    for (int k = 1; k < nt; k++) running[k] = pthread_create(&tid[k], NULL, add_delta, &jobs[k]) == 0;
    add_delta(&jobs[0]);
    for (int k = 1; k < nt; k++) {
        if (running[k]) pthread_join(tid[k], NULL);
        else add_delta(&jobs[k]);
    }
}

int merge_read(merge_src *m, const char *name, float *dst) {
    const config_tensor *ct = NULL;
    for (size_t i = 0; i < m->n && !ct; i++)
        if (!strcmp(m->t[i].name, name)) ct = &m->t[i];
    if (!ct) return err_set(ERR_STAGE, "internal: '%s' is not a tensor of this model", name);
    int rc = 0;
    if (is_quantized(m, ct)) {
        bnb_linear l;
        if ((rc = quant_load(m, ct, &l))) return rc;
        bnb_linear_dequant(&l, dst);
        bnb_linear_free(&l);
        st_release(st_find(m->st, name));
    } else {
        const st_tensor *t = st_find(m->st, name);
        rc = st_read_f32(t, 0, numel_of(ct), dst);
        st_release(t);
    }
    if (rc || !m->has_adapter || (ct->role != TROLE_LINEAR && ct->role != TROLE_LM_HEAD)) return rc;
    char module[96];
    snprintf(module, sizeof module, "%.*s", (int)(strlen(name) - strlen(".weight")), name);
    const peft_lora *l = peft_adapter_find(&m->adapter, module);
    if (l) merge_lora(m, l, dst);
    return 0;
}

/* ---- the merged HF model ---- */

typedef struct write_ctx {
    merge_src *m;
    st_dtype dtype; /* ST_BF16, ST_F16 or ST_F32 */
    float *buf;
    int64_t cap;
    uint64_t done, total;
    int (*progress)(void *, uint64_t, uint64_t);
    void *arg;
} write_ctx;

static int fill_tensor(void *arg, const char *name, void *dst, uint64_t nbytes) {
    write_ctx *c = arg;
    int64_t n = (int64_t)(nbytes / st_dtype_size(c->dtype));
    if (n > c->cap) {
        free(c->buf);
        c->cap = n;
        if (!(c->buf = malloc((size_t)n * sizeof *c->buf))) return err_set(ERR_STAGE, "out of memory for tensor '%s'", name);
    }
    int rc = merge_read(c->m, name, c->buf);
    if (rc) return rc;
    uint16_t *o = dst;
    if (c->dtype == ST_F32) memcpy(dst, c->buf, (size_t)n * 4);
    else if (c->dtype == ST_F16)
        for (int64_t i = 0; i < n; i++) o[i] = f32_to_f16(c->buf[i]);
    else
        for (int64_t i = 0; i < n; i++) o[i] = f32_to_bf16(c->buf[i]);
    c->done += nbytes;
    if (c->progress && c->progress(c->arg, c->done, c->total)) return err_set(ERR_INTERRUPTED, "interrupted while writing '%s'", name);
    return 0;
}

static int copy_small_files(const char *from, const char *to) {
    int rc = 0;
    for (int i = 0; tokfile_names[i] && !rc; i++) {
        char *a = fs_join(from, tokfile_names[i]), *b = fs_join(to, tokfile_names[i]);
        if (fs_exists(a)) {
            char *data = NULL;
            size_t len = 0;
            rc = fs_read_all(a, &data, &len);
            if (!rc) rc = fs_write_atomic(b, data, len);
            free(data);
        }
        free(a);
        free(b);
    }
    return rc;
}

static int write_generation_config(const char *base, const char *dir, const model_config *c) {
    char *src = fs_join(base, "generation_config.json"), *dst = fs_join(dir, "generation_config.json");
    int rc;
    if (fs_exists(src)) {
        char *data = NULL;
        size_t len = 0;
        rc = fs_read_all(src, &data, &len);
        if (!rc) rc = fs_write_atomic(dst, data, len);
        free(data);
    } else {
        json_t *j = json_pack("{s:b}", "_from_model_config", 1);
        if (c->bos_token_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(c->bos_token_id));
        if (c->eos_token_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(c->eos_token_id));
        json_object_set_new(j, "transformers_version", json_string("4.46.0"));
        rc = pyjson_write_config(j, dir, "generation_config.json");
        json_decref(j);
    }
    free(src);
    free(dst);
    return rc;
}

int merge_write_model(merge_src *m, const char *out_dir, st_dtype dtype, uint64_t max_shard_bytes,
                      int (*progress)(void *arg, uint64_t done, uint64_t total), void *arg) {
    if (dtype != ST_F16 && dtype != ST_F32) dtype = ST_BF16;
    write_ctx c = {m, dtype, NULL, 0, 0, 0, progress, arg};
    model_config cfg = m->cfg;
    snprintf(cfg.dtype, sizeof cfg.dtype, "%s", st_float_dtype_torch_name(dtype));
    char *tmp = NULL;
    st_writer *w = NULL;
    int rc = pubdir_begin(&tmp, out_dir);
    if (!rc) rc = st_writer_open(&w, tmp, "model", max_shard_bytes ? max_shard_bytes : 5000000000ull);
    for (size_t i = 0; i < m->n && !rc; i++) {
        c.total += (uint64_t)numel_of(&m->t[i]) * st_dtype_size(dtype);
        rc = st_writer_add(w, m->t[i].name, dtype, m->t[i].ndim, m->t[i].shape, NULL, fill_tensor, &c);
    }
    if (!rc) rc = st_writer_finish(&w);
    if (!rc) rc = config_save(&cfg, tmp);
    if (!rc) rc = write_generation_config(m->base_dir, tmp, &cfg);
    if (!rc) rc = copy_small_files(m->base_dir, tmp);
    if (!rc) rc = pubdir_commit(&tmp, out_dir);
    st_writer_free(&w);
    pubdir_abort(&tmp);
    free(c.buf);
    if (rc) err_wrap("writing the merged model '%s'", out_dir);
    return rc;
}
