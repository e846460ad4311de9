/* quantize_nf4.c: the quantize_nf4 stage kind. Reads the model artifact of its `model` input
 * (<input>/model), writes <out>/model/ in the transformers + bitsandbytes 4-bit layout
 * (model/bnb.c, shared with `qlora-run quantize`), logs a per-module table and keeps the
 * per-tensor report (relative RMSE, bytes before and after) in the manifest. */
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "kernels/cpu/nf4.h"
#include "formats/bnb.h"
#include "stage.h"

static const param_spec params[] = {
    {"model", PARAM_REF, NULL, 0, -1, "init_model|fetch_model", "the model to quantize", PARAM_REQUIRED},
    {"quant_type", PARAM_ENUM, "nf4", 0, -1, "nf4|fp4", "4-bit data type (bnb_4bit_quant_type)", 0},
    {"blocksize", PARAM_INT, "64", 32, 4096, NULL, "elements per absmax block: 32, 64, ..., 4096", 0},
    {"double_quant", PARAM_BOOL, "true", 0, -1, NULL,
     "quantize the absmax too (bnb_4bit_use_double_quant): 4.127 instead of 4.5 bits a parameter", 0},
    {"compute_dtype", PARAM_ENUM, "bf16", 0, -1, "bf16|f16|f32", "dtype the training stage computes in (recorded)", 0},
    {"skip_modules", PARAM_LIST, "[]", 0, -1, NULL,
     "modules kept in full precision (llm_int8_skip_modules), e.g. [mlp.down_proj]", 0},
    {0}};

static int check(const json_t *p) {
    int bs = (int)json_integer_value(json_object_get(p, "blocksize"));
    if (!nf4_blocksize_valid(bs))
        return err_set(ERR_RECIPE, "blocksize: %d is not one bitsandbytes accepts (32, 64, 128, ..., 4096)", bs);
    return 0;
}

static const char *torch_dtype(const char *s) {
    return !strcmp(s, "f16") ? "float16" : !strcmp(s, "f32") ? "float32" : "bfloat16";
}

static void on_progress(void *arg, double done, double total) {
    stage_progress(arg, "quantize", done / 1e6, total / 1e6, "MB");
}

static void on_line(void *arg, const char *text) { stage_logf(arg, "%s", text); }

static int run(stage_ctx *c) {
    const stage_input *in = stage_input_get(c, "model");
    if (!in) return err_set(ERR_STAGE, "quantize_nf4: no model input");
    json_t *skip = stage_json(c, "skip_modules");
    size_t n_skip = json_is_array(skip) ? json_array_size(skip) : 0;
    const char **names = calloc(n_skip + 1, sizeof *names);
    for (size_t i = 0; i < n_skip; i++) names[i] = json_string_value(json_array_get(skip, i));

    bnb_opts o;
    bnb_opts_default(&o);
    o.quant_type = !strcmp(stage_str(c, "quant_type"), "fp4") ? OPS_FP4 : OPS_NF4;
    o.blocksize = (int)stage_int(c, "blocksize");
    o.double_quant = stage_bool(c, "double_quant");
    o.compute_dtype = torch_dtype(stage_str(c, "compute_dtype"));
    o.skip = names;
    o.n_skip = (int)n_skip;
    o.nthreads = c->jobs > 0 ? c->jobs : 2;
    o.interrupted = c->interrupted;
    o.progress = on_progress;
    o.progress_arg = c;

    char *src = fs_join(in->dir, "model"), *dst = fs_join(c->out_dir, "model");
    bnb_report rep;
    int rc = bnb_quantize_dir(src, dst, &o, &rep);
    stage_progress_done(c);
    if (rc) {
        err_wrap("quantizing '%s'", src); /* the runner adds the stage's name */
    } else {
        bnb_report_lines(&rep, on_line, c);
        stage_metric(c, "bits_per_param", rep.bits_per_param);
        stage_metric(c, "rel_rmse", rep.rel_rmse);
        stage_metric(c, "params", (double)rep.params);
        stage_metric(c, "params_quantized", (double)rep.params_quantized);
        stage_metric(c, "bytes_before", (double)rep.bytes_before);
        stage_metric(c, "bytes_after", (double)rep.bytes_after);
        stage_metric(c, "seconds", rep.seconds);
        if (c->report) json_object_set_new(c->report, "quantize", bnb_report_json(&rep));
        if (c->report && stage_model_name(in)) json_object_set_new(c->report, "model_name", json_string(stage_model_name(in)));
    }
    bnb_report_free(&rep);
    free(src);
    free(dst);
    free(names);
    return rc;
}

static const metric_spec quantize_metrics[] = {
    {"bits_per_param", METRIC_LOWER, "stored bits per parameter"},
    {"rel_rmse", METRIC_LOWER, "relative RMS error of the quantized weights"},
    {"params", METRIC_NEITHER, "parameters"},
    {"params_quantized", METRIC_NEITHER, "parameters stored in 4 bits"},
    {"bytes_before", METRIC_NEITHER, "weight bytes before"},
    {"bytes_after", METRIC_NEITHER, "weight bytes after"},
    {"seconds", METRIC_LOWER, "seconds spent"},
    {0}};

/* the model of its input, quantized */
static int preview(const json_t *p, const char *recipe_dir, const stage_model_preview *in, stage_model_preview *out) {
    (void)p, (void)recipe_dir;
    return stage_model_preview_copy(out, in);
}

const stage_kind stage_kind_quantize_nf4 = {
    .name = "quantize_nf4",
    .version = 1,
    .doc = "quantize a model's linear weights to NF4/FP4 in the transformers + bitsandbytes layout",
    .params = params,
    .check = check,
    .run = run,
    .model_preview = preview,
    .metrics = quantize_metrics,
};
