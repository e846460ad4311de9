/* export.c: the export stage kind: the PEFT adapter, the merged bf16 model and/or a GGUF
 * file from a base model and an adapter (model/export.c, shared with `qlora-run export`). */
#include <stdlib.h>
#include <string.h>

#include "core/fsutil.h"
#include "export/export.h"
#include "export/gguf_export.h"
#include "model/init_model.h"
#include "stage.h"

static const param_spec params[] = {
    {"model", PARAM_REF, NULL, 0, -1, "quantize_nf4|init_model|fetch_model", "the base model", PARAM_REQUIRED},
    {"adapter", PARAM_REF, NULL, 0, -1, "train|attach_lora", "the LoRA adapter (none: the base alone, dequantized)", 0},
    {"formats", PARAM_LIST, "[peft]", 0, -1, "peft|merged|gguf",
     "what to write: peft (adapter/), merged (model/: bf16 safetensors), gguf (model-<type>.gguf)", 0},
    {"gguf_type", PARAM_ENUM, "f16", 0, -1, "f16|bf16|q8_0", "tensor type of the GGUF file's matrices", 0},
    {"merged_dtype", PARAM_ENUM, "bf16", 0, -1, "bf16|f16|f32", "tensor type of the merged model (formats: merged)", 0},
    {"include_nf4", PARAM_BOOL, "false", 0, -1, NULL, "also copy the 4-bit base checkpoint (bitsandbytes layout) to nf4/", 0},
    {"max_shard_size", PARAM_STRING, "5GB", 0, -1, NULL, "safetensors shard size limit of the merged model", 0},
    {0}};

static int formats_of(const json_t *list, unsigned *bits) {
    *bits = 0;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        unsigned b;
        int rc = export_format_from_name(json_string_value(v) ? json_string_value(v) : "", &b);
        if (rc) return rc;
        *bits |= b;
    }
    return 0;
}

static int check(const json_t *p) {
    unsigned bits;
    uint64_t shard;
    int rc = formats_of(json_object_get(p, "formats"), &bits);
    const char *ms = json_string_value(json_object_get(p, "max_shard_size"));
    if (!rc && ms) rc = init_model_parse_size(ms, &shard);
    if (!rc && (bits & EXPORT_PEFT) && json_is_null(json_object_get(p, "adapter")))
        rc = err_set(ERR_RECIPE, "formats: 'peft' needs an adapter (set adapter: to a train or attach_lora stage)");
    if (!rc && !bits && !json_is_true(json_object_get(p, "include_nf4")))
        rc = err_set(ERR_RECIPE, "formats: name at least one of peft, merged, gguf");
    return rc && rc != ERR_RECIPE ? stage_error_as_recipe() : rc;
}

static int on_progress(void *arg, const char *what, uint64_t done, uint64_t total) {
    stage_ctx *c = arg;
    stage_progress(c, what, (double)done / 1e6, (double)total / 1e6, "MB");
    return stage_interrupted(c);
}

static int run(stage_ctx *c) {
    export_opts o = {0};
    const stage_input *mi = stage_input_get(c, "model"), *ai = stage_input_get(c, "adapter");
    if (!mi) return err_set(ERR_STAGE, "export: no model input");
    int rc = formats_of(stage_json(c, "formats"), &o.formats);
    if (!rc) rc = gguf_export_type(stage_str(c, "gguf_type"), &o.gguf_type);
    if (!rc) rc = export_merged_dtype(stage_str(c, "merged_dtype"), &o.merged_dtype);
    if (!rc) rc = init_model_parse_size(stage_str(c, "max_shard_size"), &o.max_shard_bytes);
    if (rc) return rc;
    char *base = fs_join(mi->dir, "model"), *adapter = ai ? fs_join(ai->dir, "adapter") : NULL;
    o.base = base;
    o.adapter = adapter;
    o.include_nf4 = stage_bool(c, "include_nf4");
    /* adapter_config.json's base_model_name_or_path: the hub repo id or the source folder, as
     * peft writes it, whatever the adapter's own says (made by an older version, or by hand);
     * GGUF general.name: the model's own name (the repo's last part, or its folder's), as
     * llama.cpp's converter writes it. A generated base has no name to load it by: null and
     * "generated-<arch>" (docs/exports.md). */
    const char *mname = stage_model_name(mi);
    char *gname = export_model_name(mname, base);
    if (!gname) {
        rc = err_code();
        goto out;
    }
    o.set_base_model = true;
    o.base_model = mname;
    o.name = gname;
    o.threads = c->jobs > 0 ? c->jobs : 2;
    o.progress = on_progress;
    o.progress_arg = c;
    rc = export_run(&o, c->out_dir);
    stage_progress_done(c);
    if (!rc) {
        stage_logf(c, "exported%s%s%s%s from '%s'%s%s", o.formats & EXPORT_PEFT ? " adapter/" : "", o.formats & EXPORT_MERGED ? " model/" : "",
                   o.formats & EXPORT_GGUF ? " gguf" : "", o.include_nf4 ? " nf4/" : "", mi->stage, ai ? " + " : "", ai ? ai->stage : "");
    }
    free(gname);
out:
    free(base);
    free(adapter);
    return rc;
}

const stage_kind stage_kind_export = {
    .name = "export",
    .version = 2, /* 2: the base named as peft and llama.cpp name it, never a stage or cache path */
    .doc = "export the adapter (PEFT), the merged model (bf16 safetensors) and GGUF",
    .params = params,
    .check = check,
    .run = run,
    .flags = STAGE_KIND_PUBLISHES | STAGE_KIND_EXPORTS,
};
