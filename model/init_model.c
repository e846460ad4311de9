/* init_model.c: generated HF model directories (see init_model.h). */
#include "init_model.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/rng.h"
#include "core/pubdir.h"
#include "formats/pyjson.h"
#include "tokenizer/tokenizer_byte.h"
#include "tokenizer/tokfile.h"

void init_model_opts_default(init_model_opts *o) {
    memset(o, 0, sizeof *o);
    config_preset(&o->cfg, ARCH_LLAMA, "tiny");
    o->vocab_mode = INIT_VOCAB_AT_LEAST;
    o->tokenizer = "byte";
    o->dtype = ST_BF16;
    o->threads = 2;
}

int init_model_dtype(const char *name, st_dtype *d) {
    return st_float_dtype_parse(name, d) ? err_set(ERR_USAGE, "unknown dtype '%s' (bf16, f16 or f32)", name) : 0;
}

/* ---- weights ---- */

typedef struct gen_tensor {
    const config_tensor *t;
    int64_t pad_row; /* embedding row to zero (transformers zeroes padding_idx), -1: none */
} gen_tensor;

typedef struct gen_ctx {
    const init_model_opts *o;
    gen_tensor *g;
    size_t n;
    uint64_t done, total;
} gen_ctx;

typedef struct gen_job {
    const gen_tensor *g;
    uint64_t seed, stream;
    float std;
    st_dtype dtype;
    void *dst;
    int64_t first, count;
    int64_t zero_lo, zero_hi; /* elements [lo, hi) are 0: the padding row */
} gen_job;

static void *gen_range(void *arg) {
    const gen_job *j = arg;
    const config_tensor *t = j->g->t;
    for (int64_t i = j->first; i < j->first + j->count; i++) {
        float v;
        if (t->role == TROLE_NORM) v = 1.0f;
        else if (t->role == TROLE_BIAS) v = 0.0f;
        else if (i >= j->zero_lo && i < j->zero_hi) v = 0.0f;
        else v = j->std * rng_normal(j->seed, j->stream, (uint64_t)i);
        switch (j->dtype) {
        case ST_F32: ((float *)j->dst)[i] = v; break;
        case ST_F16: ((uint16_t *)j->dst)[i] = f32_to_f16(v); break;
        default: ((uint16_t *)j->dst)[i] = f32_to_bf16(v); break;
        }
    }
    return NULL;
}

static int gen_fill(void *arg, const char *name, void *dst, uint64_t nbytes) {
    gen_ctx *c = arg;
    const gen_tensor *g = NULL;
    for (size_t i = 0; i < c->n && !g; i++)
        if (!strcmp(c->g[i].t->name, name)) g = &c->g[i];
    if (!g) return err_set(ERR_STAGE, "internal: no generator for tensor '%s'", name);
    int64_t numel = g->t->shape[0] * (g->t->ndim > 1 ? g->t->shape[1] : 1);
    int nt = c->o->threads > 0 ? c->o->threads : 2;
    if (nt > 64) nt = 64;
    if (numel < 65536) nt = 1;
    gen_job jobs[64];
    pthread_t tid[64];
    bool running[64] = {0};
    int64_t row_len = g->t->ndim > 1 ? g->t->shape[1] : numel;
    int64_t zlo = g->pad_row >= 0 ? g->pad_row * row_len : 0, zhi = g->pad_row >= 0 ? zlo + row_len : 0;
    for (int k = 0; k < nt; k++) {
        int64_t a = numel * k / nt, b = numel * (k + 1) / nt;
        jobs[k] = (gen_job){g, c->o->seed, rng_stream_of(name), (float)c->o->cfg.initializer_range, c->o->dtype, dst, a, b - a, zlo, zhi};
    }
    /* the last range runs on this thread, as does any range whose thread fails to start */
    for (int k = 0; k < nt - 1; k++) running[k] = pthread_create(&tid[k], NULL, gen_range, &jobs[k]) == 0;
    for (int k = 0; k < nt - 1; k++)
        if (!running[k]) gen_range(&jobs[k]);
    gen_range(&jobs[nt - 1]);
    for (int k = 0; k < nt - 1; k++)
        if (running[k]) pthread_join(tid[k], NULL);
    c->done += nbytes;
    if (c->o->progress && c->o->progress(c->o->progress_arg, c->done, c->total))
        return err_set(ERR_INTERRUPTED, "interrupted while writing '%s'", name);
    return 0;
}

/* ---- small files ---- */

static int write_generation_config(const model_config *c, const char *dir) {
    json_t *j = json_object();
    json_object_set_new(j, "_from_model_config", json_true());
    if (c->bos_token_id >= 0) json_object_set_new(j, "bos_token_id", json_integer(c->bos_token_id));
    if (c->eos_token_id >= 0) json_object_set_new(j, "eos_token_id", json_integer(c->eos_token_id));
    if (c->pad_token_id >= 0) json_object_set_new(j, "pad_token_id", json_integer(c->pad_token_id));
    json_object_set_new(j, "transformers_version", json_string("4.46.0"));
    int rc = pyjson_write_config(j, dir, "generation_config.json");
    json_decref(j);
    return rc;
}

static int copy_file(const char *from, const char *to) {
    char *data = NULL;
    size_t len = 0;
    int rc = fs_read_all(from, &data, &len);
    if (!rc) rc = fs_write_atomic(to, data, len);
    free(data);
    return rc;
}

/* copy the tokenizer files that exist in src into dir */
static int copy_tokenizer(const char *src, const char *dir) {
    int rc = 0;
    for (int i = 0; tokfile_names[i] && !rc; i++) {
        char *a = fs_join(src, tokfile_names[i]), *b = fs_join(dir, tokfile_names[i]);
        if (fs_exists(a)) rc = copy_file(a, b);
        free(a);
        free(b);
    }
    return rc;
}

/* vocab size and special ids from the tokenizer */
static int apply_tokenizer(const init_model_opts *o, model_config *c) {
    int32_t n_vocab, bos, eos, pad;
    if (!strcmp(o->tokenizer, "byte")) {
        n_vocab = TOKBYTE_VOCAB;
        bos = TOKBYTE_BOS;
        eos = TOKBYTE_EOS;
        pad = TOKBYTE_PAD;
    } else {
        tokfile t;
        int rc = tokfile_load(&t, o->tokenizer);
        if (rc) return err_wrap("tokenizer '%s'", o->tokenizer);
        n_vocab = t.n_vocab;
        bos = t.bos;
        eos = t.eos;
        pad = t.pad;
        tokfile_free(&t);
    }
    switch (o->vocab_mode) {
    case INIT_VOCAB_TOKENIZER: c->vocab_size = n_vocab; break;
    case INIT_VOCAB_AT_LEAST: if (c->vocab_size < n_vocab) c->vocab_size = n_vocab; break;
    case INIT_VOCAB_KEEP:
        if (c->vocab_size < n_vocab)
            return err_set(ERR_USAGE, "vocab size %lld is smaller than the tokenizer's %d ids", (long long)c->vocab_size, n_vocab);
        break;
    }
    c->bos_token_id = bos;
    c->eos_token_id = eos;
    c->pad_token_id = pad;
    return 0;
}

int init_model_write(const init_model_opts *o, const char *dir, model_config *final_cfg) {
    model_config cfg = o->cfg;
    cfg.skip_modules = NULL;
    cfg.quantized = false;
    snprintf(cfg.dtype, sizeof cfg.dtype, "%s", st_float_dtype_torch_name(o->dtype));
    if (o->dtype != ST_BF16 && o->dtype != ST_F16 && o->dtype != ST_F32) return err_set(ERR_USAGE, "generated weights must be bf16, f16 or f32");
    int rc = apply_tokenizer(o, &cfg);
    if (!rc) rc = config_check(&cfg);
    if (rc) return rc;
    config_tensor *ts = NULL;
    size_t n = 0;
    if ((rc = config_tensors(&cfg, &ts, &n))) return rc;
    gen_ctx gc = {o, calloc(n, sizeof(gen_tensor)), n, 0, 0};
    char *tmp = NULL;
    st_writer *w = NULL;
    if (!gc.g) { free(ts); return err_set(ERR_STAGE, "out of memory"); }
    if ((rc = pubdir_begin(&tmp, dir))) goto out;
    if ((rc = st_writer_open(&w, tmp, "model", o->max_shard_bytes ? o->max_shard_bytes : INIT_DEFAULT_SHARD_BYTES))) goto out;
    for (size_t i = 0; i < n && !rc; i++) {
        gc.g[i].t = &ts[i];
        gc.g[i].pad_row = ts[i].role == TROLE_EMBED && cfg.pad_token_id >= 0 && cfg.pad_token_id < cfg.vocab_size ? cfg.pad_token_id : -1;
        gc.total += (uint64_t)(ts[i].shape[0] * (ts[i].ndim > 1 ? ts[i].shape[1] : 1)) * st_dtype_size(o->dtype);
        rc = st_writer_add(w, ts[i].name, o->dtype, ts[i].ndim, ts[i].shape, NULL, gen_fill, &gc);
    }
    if (!rc) rc = st_writer_finish(&w);
    if (!rc) rc = config_save(&cfg, tmp);
    if (!rc) rc = write_generation_config(&cfg, tmp);
    if (!rc) rc = !strcmp(o->tokenizer, "byte") ? tokenizer_write_byte_len(tmp, cfg.max_position_embeddings) : copy_tokenizer(o->tokenizer, tmp);
    if (!rc) rc = pubdir_commit(&tmp, dir);
out:
    st_writer_free(&w);
    pubdir_abort(&tmp);
    free(gc.g);
    free(ts);
    if (rc) return err_wrap("generating a model in '%s'", dir);
    if (final_cfg) *final_cfg = cfg;
    return 0;
}

/* ---- shapes from names and overrides ---- */

int init_model_resolve(init_model_opts *o, const init_model_shape *s) {
    model_arch arch = ARCH_LLAMA, named_arch;
    int rc = s->arch ? config_arch_from_name(s->arch, &arch) : 0;
    const char *preset = s->preset ? s->preset : "tiny";
    if (!rc && config_preset_is_named(preset, &named_arch)) {
        if (s->arch && named_arch != arch)
            return err_set(ERR_USAGE, "preset '%s' is a %s model, not %s (leave the architecture out)", preset,
                           config_arch_name(named_arch), s->arch);
        arch = named_arch;
    }
    if (!rc) rc = config_preset(&o->cfg, arch, preset);
    if (rc) return rc;
    model_config *c = &o->cfg;
    bool custom = s->hidden || s->layers || s->heads || s->intermediate;
    if (s->hidden) c->hidden_size = s->hidden;
    if (s->layers) {
        c->num_layers = (int)s->layers;
        if (c->max_window_layers) c->max_window_layers = c->num_layers;
    }
    if (s->intermediate) c->intermediate_size = s->intermediate;
    if (s->heads) {
        c->num_heads = (int)s->heads;
        /* keep the preset's grouping when it still divides, else plain multi-head */
        if (!s->kv_heads && c->num_heads % c->num_kv_heads) c->num_kv_heads = c->num_heads;
    }
    if (s->kv_heads) c->num_kv_heads = (int)s->kv_heads;
    if (s->max_position) c->max_position_embeddings = s->max_position;
    if (s->hidden > 1 << 20 || s->layers > 4096 || s->heads > 4096 || s->kv_heads > 4096 || s->vocab > 1 << 24 || s->intermediate > 1 << 22)
        return err_set(ERR_USAGE, "model sizes out of range");
    /* qwen3's and gemma's head_dim is their own (the preset's); elsewhere it follows hidden / heads */
    if (arch != ARCH_QWEN3 && arch != ARCH_GEMMA3 && arch != ARCH_GEMMA2) {
        if (c->hidden_size % c->num_heads)
            return err_set(ERR_USAGE, "hidden size %lld is not a multiple of the %d heads", (long long)c->hidden_size, c->num_heads);
        c->head_dim = (int)(c->hidden_size / c->num_heads);
    }
    if (s->vocab) {
        c->vocab_size = s->vocab;
        o->vocab_mode = INIT_VOCAB_KEEP;
    } else {
        o->vocab_mode = custom || !strcmp(preset, "tiny") ? INIT_VOCAB_TOKENIZER : INIT_VOCAB_AT_LEAST;
    }
    return config_check(c);
}

int init_model_parse_size(const char *text, uint64_t *bytes) {
    char *end;
    double v = strtod(text, &end);
    if (end == text || v < 0) return err_set(ERR_USAGE, "bad size '%s' (examples: 5GB, 500MB, 2GiB, 1000000)", text);
    while (*end == ' ') end++;
    static const struct { const char *u; double m; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    for (size_t i = 0; i < sizeof units / sizeof *units; i++)
        if (!strcasecmp(end, units[i].u)) {
            *bytes = (uint64_t)(v * units[i].m);
            return 0;
        }
    return err_set(ERR_USAGE, "bad size '%s' (examples: 5GB, 500MB, 2GiB, 1000000)", text);
}
