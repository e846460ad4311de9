/* train_fixture.h: what the train/evaluate stage tests share: a generated tiny llama (bf16
 * safetensors + config.json, quantized to NF4 by the engine at load), a synthetic dataset
 * artifact, and a stage context to run stages directly without the runner.
 *
 * The task: a row is "prompt + answer" where the answer is the prompt's tokens each
 * shifted by one (x -> x+1 inside a small alphabet); the prompt is masked (-100), the
 * answer and EOS are trained. A model learns it in a few dozen steps. */
#ifndef TESTS_TRAIN_FIXTURE_H
#define TESTS_TRAIN_FIXTURE_H

#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "core/half.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "stages/stage.h"

#define FIX_BOS 256
#define FIX_EOS 257
#define FIX_SEP 62 /* '>' */

typedef struct fix_weights {
    const model_config *c;
    uint64_t seed;
} fix_weights;

static int fix_fill(void *arg, const char *name, void *dst, uint64_t nbytes) {
    fix_weights *w = arg;
    uint16_t *o = dst;
    int64_t n = (int64_t)(nbytes / 2);
    int norm = strstr(name, "norm") != NULL;
    float std = strstr(name, "embed") || strstr(name, "lm_head") ? 0.5f : 0.08f;
    uint64_t st = rng_stream_of(name);
    for (int64_t i = 0; i < n; i++) o[i] = f32_to_bf16(norm ? 1.0f : std * rng_normal(w->seed, st, (uint64_t)i));
    return 0;
}

/* a small llama: vocab 259 (bytes + BOS/EOS/PAD), hidden 64, 2 layers, 4 heads, 2 kv heads */
static inline void fix_config(model_config *c) {
    config_preset(c, ARCH_LLAMA, "tiny");
    c->hidden_size = 64;
    c->intermediate_size = 128;
    c->num_layers = 2;
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->head_dim = 16;
    c->bos_token_id = FIX_BOS;
    c->eos_token_id = FIX_EOS;
}

/* <art>/model/{config.json, model.safetensors} */
static inline int fix_write_model(const char *art, const model_config *c, uint64_t seed) {
    char *dir = fs_join(art, "model");
    int rc = fs_mkdir_p(dir);
    if (!rc) rc = config_save(c, dir);
    config_tensor *ts = NULL;
    size_t n = 0;
    if (!rc) rc = config_tensors(c, &ts, &n);
    st_writer *w = NULL;
    fix_weights fw = {c, seed};
    if (!rc) rc = st_writer_open(&w, dir, "model", 0);
    for (size_t i = 0; !rc && i < n; i++)
        rc = st_writer_add(w, ts[i].name, ST_BF16, ts[i].ndim, ts[i].shape, NULL, fix_fill, &fw);
    if (!rc) rc = st_writer_finish(&w);
    else st_writer_free(&w);
    free(ts);
    free(dir);
    return rc;
}

static inline int fix_write_file(const char *dir, const char *name, const void *p, size_t n) {
    char *path = fs_join(dir, name);
    int rc = fs_write_atomic(path, p, n);
    free(path);
    return rc;
}

/* one split: n_rows rows of one sequence each; BOS, 3..6 letters a-h, '>', the letters + 1, EOS */
static inline int fix_write_split(const char *dir, const char *split, int n_rows, uint64_t seed) {
    int32_t *ids = malloc(sizeof(int32_t) * 16 * (size_t)n_rows), *lab = malloc(sizeof(int32_t) * 16 * (size_t)n_rows);
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)(n_rows + 1));
    int64_t nt = 0;
    for (int r = 0; r < n_rows; r++) {
        rows[r] = nt;
        int len = 3 + (int)(rng_u64(seed, 1, (uint64_t)r) % 4);
        int x[8];
        ids[nt] = FIX_BOS, lab[nt++] = -100;
        for (int i = 0; i < len; i++) {
            x[i] = 'a' + (int)(rng_u64(seed, 2, (uint64_t)(r * 8 + i)) % 8);
            ids[nt] = x[i], lab[nt++] = -100;
        }
        ids[nt] = FIX_SEP, lab[nt++] = -100;
        for (int i = 0; i < len; i++) ids[nt] = x[i] + 1, lab[nt] = ids[nt], nt++;
        ids[nt] = FIX_EOS, lab[nt] = FIX_EOS, nt++;
    }
    rows[n_rows] = nt;
    char name[64];
    int rc = 0;
    snprintf(name, sizeof name, "%s.ids.i32", split);
    rc |= fix_write_file(dir, name, ids, (size_t)nt * 4);
    snprintf(name, sizeof name, "%s.labels.i32", split);
    rc |= fix_write_file(dir, name, lab, (size_t)nt * 4);
    snprintf(name, sizeof name, "%s.rows.i64", split);
    rc |= fix_write_file(dir, name, rows, (size_t)(n_rows + 1) * 8);
    snprintf(name, sizeof name, "%s.seqs.i64", split); /* one sequence per row */
    rc |= fix_write_file(dir, name, rows, (size_t)(n_rows + 1) * 8);
    free(ids), free(lab), free(rows);
    return rc;
}

/* the dataset artifact's meta.json, saying its records were formatted with `format` */
static inline int fix_write_dataset_meta(const char *art, const char *format) {
    char meta[512];
    snprintf(meta, sizeof meta,
             "{\"version\":1,\"sequence_len\":16,\"splits\":{\"train\":{},\"val\":{}},\"stats\":{},"
             "\"formatting\":{\"format\":\"%s\",\"train_on_inputs\":false,\"hook_args\":null}}",
             format);
    return fix_write_file(art, "meta.json", meta, strlen(meta));
}

static inline int fix_write_dataset(const char *art, int n_train, int n_val) {
    int rc = fs_mkdir_p(art);
    if (!rc) rc = fix_write_split(art, "train", n_train, 11);
    if (!rc) rc = fix_write_split(art, "val", n_val, 12);
    if (!rc) rc = fix_write_dataset_meta(art, "completion");
    return rc;
}

/* a param_spec default (YAML text) as JSON: JSON scalars, flow lists of words, else a string */
static inline json_t *fix_yaml_value(const char *def) {
    json_t *v = json_loads(def, JSON_DECODE_ANY, NULL);
    if (v) return v;
    if (def[0] != '[') return json_string(def);
    json_t *a = json_array();
    char *copy = strdup(def + 1), *save = NULL;
    for (char *tok = strtok_r(copy, ",] ", &save); tok; tok = strtok_r(NULL, ",] ", &save))
        json_array_append_new(a, json_string(tok));
    free(copy);
    return a;
}

/* a stage context for running kind k directly; inputs added with fix_input */
static inline void fix_ctx(stage_ctx *ctx, const stage_kind *k, const char *name, json_t *params, const char *out,
                           const char *work) {
    memset(ctx, 0, sizeof *ctx);
    ctx->name = name;
    ctx->kind = k;
    ctx->params = params;
    ctx->out_dir = out;
    ctx->work_dir = work;
    ctx->seed = 1;
    ctx->device = "cpu";
    ctx->jobs = 1;
    /* every declared parameter present, defaults filled in as the runner does */
    for (const param_spec *p = k->params; p->name; p++)
        if (!json_object_get(params, p->name))
            json_object_set_new(params, p->name, p->def ? fix_yaml_value(p->def) : json_null());
}

static inline void fix_input(stage_ctx *ctx, const char *role, const char *kind, const char *dir) {
    ctx->inputs[ctx->n_inputs++] = (stage_input){.role = role, .stage = role, .kind = kind, .dir = dir,
                                                 .manifest = NULL};
}

#endif
