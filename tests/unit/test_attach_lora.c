/* test_attach_lora.c: the attach_lora stage on a tiny llama config: PEFT files, shapes,
 * kaiming-uniform A, zero B, seeded determinism, targets, and the trainable-parameter report. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/fsutil.h"
#include "formats/peft.h"
#include "model/adapter.h"
#include "model/config.h"
#include "model/lora_init.h"
#include "stages/stage.h"
#include "test.h"

extern const stage_kind stage_kind_attach_lora;

static char root[256];
static model_config cfg;

static int run_attach(const char *out, const char *targets_json, int64_t seed, json_t **metrics) {
    char *model_art = fs_join(root, "model-art"), *mdir = fs_join(model_art, "model");
    fs_mkdir_p(mdir);
    config_save(&cfg, mdir);
    json_t *params = json_pack("{s:s, s:i, s:f, s:f, s:o, s:b, s:I}", "model", "m", "lora_r", 4, "lora_alpha", 8.0, "lora_dropout",
                               0.05, "lora_target_modules", json_loads(targets_json, 0, NULL), "use_rslora", 0, "seed",
                               (json_int_t)seed);
    json_t *manifest = json_object();
    stage_ctx ctx = {.name = "lora", .kind = &stage_kind_attach_lora, .params = params, .out_dir = out, .seed = 1,
                     .n_inputs = 1};
    ctx.inputs[0] = (stage_input){.role = "model", .stage = "m", .kind = "init_model", .dir = model_art,
                                  .manifest = manifest};
    int rc = stage_kind_attach_lora.check(params);
    if (!rc) rc = stage_kind_attach_lora.run(&ctx);
    *metrics = ctx.metrics;
    json_decref(ctx.report);
    json_decref(params);
    json_decref(manifest);
    free(model_art);
    free(mdir);
    return rc;
}

TEST(test_default_targets) {
    char *out = fs_join(root, "a1"), *adir = fs_join(out, "adapter");
    json_t *metrics = NULL;
    CHECK_EQ_INT(run_attach(out, "[\"q_proj\", \"v_proj\"]", 7, &metrics), 0);
    peft_adapter a;
    CHECK_EQ_INT(peft_adapter_load(&a, adir), 0);
    CHECK_EQ_INT(a.n_lora, 2 * cfg.num_layers);
    CHECK_EQ_INT(a.r, 4);
    CHECK_EQ_INT(adapter_validate(&a, &cfg, adir), 0);
    const peft_lora *q = peft_adapter_find(&a, "model.layers.0.self_attn.q_proj");
    const peft_lora *v = peft_adapter_find(&a, "model.layers.3.self_attn.v_proj");
    CHECK(q && v);
    if (q && v) {
        CHECK_EQ_INT(q->in, cfg.hidden_size);
        CHECK_EQ_INT(v->out, cfg.num_kv_heads * cfg.head_dim);
        double bound = 1.0 / sqrt((double)q->in), mx = 0, sum = 0;
        for (int64_t i = 0; i < q->r * q->in; i++) {
            mx = fmax(mx, fabs(q->A[i]));
            sum += q->A[i];
        }
        CHECK(mx <= bound && mx > 0.9 * bound);
        CHECK(fabs(sum / (double)(q->r * q->in)) < 0.1 * bound);
        int nz = 0;
        for (int64_t i = 0; i < v->out * v->r; i++) nz += v->B[i] != 0;
        CHECK_EQ_INT(nz, 0);
    }
    int64_t trainable = (int64_t)json_real_value(json_object_get(metrics, "trainable_params"));
    CHECK_EQ_INT(trainable, lora_adapter_param_count(&a));
    double pct = json_real_value(json_object_get(metrics, "trainable_percent"));
    CHECK_NEAR(pct, 100.0 * (double)trainable / (double)(config_param_count(&cfg) + trainable), 1e-9);
    peft_adapter_free(&a);
    json_decref(metrics);

    /* the same seed gives the same bytes; another seed another A */
    char *out2 = fs_join(root, "a2"), *out3 = fs_join(root, "a3");
    CHECK_EQ_INT(run_attach(out2, "[\"q_proj\", \"v_proj\"]", 7, &metrics), 0);
    json_decref(metrics);
    CHECK_EQ_INT(run_attach(out3, "[\"q_proj\", \"v_proj\"]", 8, &metrics), 0);
    json_decref(metrics);
    char *f1 = fs_join(adir, PEFT_WEIGHTS_FILE), *f2 = fs_join(out2, "adapter/" PEFT_WEIGHTS_FILE),
         *f3 = fs_join(out3, "adapter/" PEFT_WEIGHTS_FILE);
    char *b1, *b2, *b3;
    size_t n1, n2, n3;
    CHECK_EQ_INT(fs_read_all(f1, &b1, &n1) | fs_read_all(f2, &b2, &n2) | fs_read_all(f3, &b3, &n3), 0);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0);
    CHECK(n1 == n3 && memcmp(b1, b3, n1) != 0);
    free(b1), free(b2), free(b3), free(f1), free(f2), free(f3), free(out2), free(out3);
    free(adir);
    free(out);
}

TEST(test_all_linear_and_bad_target) {
    char *out = fs_join(root, "a4"), *adir = fs_join(out, "adapter");
    json_t *metrics = NULL;
    CHECK_EQ_INT(run_attach(out, "[\"all-linear\"]", 1, &metrics), 0);
    json_decref(metrics);
    peft_adapter a;
    CHECK_EQ_INT(peft_adapter_load(&a, adir), 0);
    CHECK_EQ_INT(a.n_lora, 7 * cfg.num_layers);
    const peft_lora *d = peft_adapter_find(&a, "model.layers.1.mlp.down_proj");
    CHECK(d && d->in == cfg.intermediate_size && d->out == cfg.hidden_size);
    peft_adapter_free(&a);
    char *cj = fs_join(adir, PEFT_CONFIG_FILE), *text;
    size_t n;
    CHECK_EQ_INT(fs_read_all(cj, &text, &n), 0);
    CHECK(strstr(text, "\"down_proj\"") != NULL && strstr(text, "\"all-linear\"") == NULL);
    free(text);
    free(cj);
    char *out5 = fs_join(root, "a5");
    metrics = NULL;
    CHECK_EQ_INT(run_attach(out5, "[\"qproj\"]", 1, &metrics), ERR_RECIPE);
    CHECK(strstr(err_msg(), "'qproj'") != NULL);
    json_decref(metrics);
    free(out5);
    free(adir);
    free(out);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/qlora-test-attach-%d", (int)getpid());
    fs_rm_rf(root);
    fs_mkdir_p(root);
    config_preset(&cfg, ARCH_LLAMA, "tiny");
    RUN(test_default_targets);
    RUN(test_all_linear_and_bad_target);
    config_free(&cfg);
    fs_rm_rf(root);
    return test_summary();
}
