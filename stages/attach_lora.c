/* attach_lora.c: the attach_lora stage. Creates a fresh LoRA adapter for a model (A from
 * kaiming-uniform, B zeros, from the seed) and writes it in PEFT format to <out>/adapter/.
 * It reports what peft's print_trainable_parameters prints. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "formats/peft.h"
#include "model/config.h"
#include "model/lora_init.h"
#include "stages/stage.h"

static const param_spec attach_params[] = {
    {"model", PARAM_REF, NULL, 0, -1, "quantize_nf4|init_model|fetch_model", "the base model", PARAM_REQUIRED},
    {"lora_r", PARAM_INT, "8", 1, 4096, NULL, "LoRA rank r", 0},
    {"lora_alpha", PARAM_FLOAT, "16", 0, 1e9, NULL, "LoRA alpha: the update is scaled by alpha/r", 0},
    {"lora_dropout", PARAM_FLOAT, "0.05", 0, 0.999, NULL, "dropout on the LoRA branch input", 0},
    {"lora_target_modules", PARAM_LIST, "[q_proj, v_proj]", 0, -1, NULL,
     "modules that get LoRA (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) or all-linear", 0},
    {"use_rslora", PARAM_BOOL, "false", 0, -1, NULL, "scale by alpha/sqrt(r) (rank-stabilized LoRA)", 0},
    {"seed", PARAM_INT, NULL, 0, 9.2e18, NULL, "seed for A's initialisation (default: the recipe's seed)", 0},
    {0}};

static int attach_check(const json_t *params) {
    bool sel[LORA_N_KINDS];
    return lora_targets_select(json_object_get(params, "lora_target_modules"), sel);
}

/* before anything runs: every target a module of the family the model input will hold */
static int attach_check_model(const json_t *params, const model_config *c, const char **key) {
    bool sel[LORA_N_KINDS];
    *key = "lora_target_modules";
    return lora_targets_check(json_object_get(params, "lora_target_modules"), c, sel);
}

/* "1,234,567" */
static void format_thousands(char *buf, size_t n, int64_t v) {
    char raw[32];
    snprintf(raw, sizeof raw, "%lld", (long long)v);
    size_t len = strlen(raw), o = 0;
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        if (i && (len - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = 0;
}

/* the base model's name for adapter_config.json, as peft writes it: the hub repo id or the
 * folder the model was loaded from, so that AutoPeftModelForCausalLM finds the base; a generated
 * model (init_model) has no name a user can load it by: null, never a path inside the cache
 * (docs/exports.md) */
static char *base_model_name(const stage_input *in) {
    const char *name = stage_model_name(in);
    return name ? strdup(name) : NULL;
}

static int attach_run(stage_ctx *ctx) {
    const stage_input *in = stage_input_get(ctx, "model");
    if (!in) return err_set(ERR_STAGE, "attach_lora: no model input");
    char *mdir = fs_join(in->dir, "model");
    model_config cfg;
    int rc = config_load(&cfg, mdir);
    free(mdir);
    if (rc) return rc;

    json_t *seed = stage_json(ctx, "seed");
    char *base_name = base_model_name(in);
    lora_init_opts o = {.r = (int)stage_int(ctx, "lora_r"),
                        .alpha = stage_float(ctx, "lora_alpha"),
                        .dropout = stage_float(ctx, "lora_dropout"),
                        .use_rslora = stage_bool(ctx, "use_rslora"),
                        .seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : ctx->seed,
                        .targets = stage_json(ctx, "lora_target_modules"),
                        .base_model = base_name};
    peft_adapter a;
    rc = lora_adapter_create(&a, &cfg, &o);
    free(base_name);
    if (rc) {
        config_free(&cfg);
        return rc;
    }
    char *adir = fs_join(ctx->out_dir, "adapter");
    rc = peft_adapter_save(&a, adir);
    free(adir);
    if (!rc) {
        int64_t trainable = lora_adapter_param_count(&a);
        int64_t total = config_param_count(&cfg) + trainable;
        double pct = total ? 100.0 * (double)trainable / (double)total : 0.0;
        char t1[32], t2[32];
        format_thousands(t1, sizeof t1, trainable);
        format_thousands(t2, sizeof t2, total);
        stage_logf(ctx, "trainable params: %s || all params: %s || trainable%%: %.4f", t1, t2, pct);
        stage_logf(ctx, "LoRA r=%d alpha=%g on %zu modules (%d layers), scale %.4g", a.r, a.alpha, a.n_lora,
                   cfg.num_layers, a.n_lora ? peft_adapter_scale(&a, &a.lora[0]) : 0.0);
        stage_metric(ctx, "trainable_params", (double)trainable);
        stage_metric(ctx, "total_params", (double)total);
        stage_metric(ctx, "trainable_percent", pct);
        stage_metric(ctx, "lora_modules", (double)a.n_lora);
    }
    peft_adapter_free(&a);
    config_free(&cfg);
    return rc;
}

static const metric_spec attach_metrics[] = {
    {"trainable_params", METRIC_NEITHER, "LoRA parameters that train"},
    {"total_params", METRIC_NEITHER, "parameters of the model with the adapter"},
    {"trainable_percent", METRIC_NEITHER, "trainable share, in percent"},
    {"lora_modules", METRIC_NEITHER, "linear layers that got an adapter"},
    {0}};

const stage_kind stage_kind_attach_lora = {
    .name = "attach_lora",
    .version = 2, /* 2: a generated base is named null, not by its cache path */
    .doc = "create a LoRA adapter (A kaiming-uniform, B zero) for a model, in PEFT format",
    .params = attach_params,
    .check = attach_check,
    .run = attach_run,
    .check_model = attach_check_model,
    .metrics = attach_metrics,
};
