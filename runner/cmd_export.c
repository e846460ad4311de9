/* cmd_export.c: qlora-run export: PEFT adapter, merged model or GGUF outside a recipe
 * (model/export.c, shared with the export stage). */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/pubdir.h"
#include "export/export.h"
#include "export/gguf_export.h"
#include "model/init_model.h"
#include "runner/commands.h"

typedef struct export_args {
    const char *base, *adapter, *out, *gguf_type, *merged_dtype, *shard;
    cli_list formats;
    bool include_nf4;
    int64_t threads;
} export_args;

static const cli_opt export_opts_table[] = {
    {"base", 0, CLI_STR, "DIR", "a Hugging Face model directory: bf16/f16/f32, or a bitsandbytes 4-bit\n"
                                "checkpoint (dequantized before merging), or a stage artifact or export\nholding one in model/",
     CLI_AT(export_args, base), 0, 0},
    {"adapter", 0, CLI_STR, "DIR", "a PEFT LoRA adapter directory (adapter_config.json +\nadapter_model.safetensors), or an artifact or export holding one in adapter/",
     CLI_AT(export_args, adapter), 0, 0},
    {"format", 0, CLI_LIST, "FMT", "peft:   OUT/adapter/, checked against the base, saved as peft writes it\n"
                                   "merged: OUT/model/, W + scale*B@A in fp32, saved as bf16 safetensors\n"
                                   "        (--merged-dtype)\n"
                                   "gguf:   OUT/model-<type>.gguf for llama.cpp (default type f16)\n"
                                   "repeat the option or separate formats with commas",
     CLI_AT(export_args, formats), 0, 0},
    {"out", 0, CLI_STR, "DIR", "where the exports go", CLI_AT(export_args, out), 0, 0},
    {"gguf-type", 0, CLI_STR, "TYPE", "f16, bf16, q8_0 or f32 (f16)", CLI_AT(export_args, gguf_type), 0, 0},
    {"merged-dtype", 0, CLI_STR, "TYPE", "bf16, f16 or f32: the merged model's tensors (bf16)", CLI_AT(export_args, merged_dtype), 0, 0},
    {"include-nf4", 0, CLI_FLAG, NULL, "also copy the 4-bit base checkpoint to OUT/nf4/", CLI_AT(export_args, include_nf4), 0, 0},
    {"max-shard-size", 0, CLI_STR, "SIZE", "largest safetensors shard of a merged model (5GB)", CLI_AT(export_args, shard), 0, 0},
    {"threads", 0, CLI_INT, "N", "threads for merging and writing (2)", CLI_AT(export_args, threads), 1, 1024},
    {0},
};

const cli_cmd cli_export = {
    .name = "export",
    .usage = "export --base DIR [--adapter DIR] --format peft|merged|gguf[,...] --out DIR\n"
             "       [--gguf-type f16|bf16|q8_0|f32] [--merged-dtype bf16|f16|f32] [--include-nf4]\n"
             "       [--max-shard-size 5GB] [--threads N]",
    .summary = "PEFT adapter, merged model or GGUF",
    .footer = "OUT appears complete or not at all. An existing OUT is replaced only when it holds nothing\n"
              "but a previous export (adapter/, model/, nf4/, model-*.gguf); a folder with other files is refused.",
    .max_pos = 0, .opts = export_opts_table,
};

static int on_progress(void *arg, const char *what, uint64_t done, uint64_t total) {
    progress_update("export", what, (double)done / 1e6, (double)total / 1e6, "MB");
    return 0;
}

int cmd_export(int argc, char **argv) {
    export_opts o = {0};
    export_args a = {.shard = "5GB", .threads = 2};
    o.gguf_type = GGML_TYPE_F16;
    int n_pos, rc = cli_parse(&cli_export, &a, argc, argv, NULL, &n_pos);
    for (int i = 0; !rc && i < a.formats.n; i++) {
        char *list = strdup(a.formats.v[i]), *save = NULL;
        for (char *f = strtok_r(list, ",", &save); f && !rc; f = strtok_r(NULL, ",", &save)) {
            unsigned bit;
            rc = export_format_from_name(f, &bit);
            o.formats |= bit;
        }
        free(list);
    }
    cli_list_free(&a.formats);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (a.gguf_type && (rc = gguf_export_type(a.gguf_type, &o.gguf_type))) return rc;
    if (a.merged_dtype && (rc = export_merged_dtype(a.merged_dtype, &o.merged_dtype))) return rc;
    o.base = a.base;
    o.adapter = a.adapter;
    o.include_nf4 = a.include_nf4;
    const char *out = a.out, *shard = a.shard;
    int64_t threads = a.threads;
    if (!o.base || !out) return cli_usage_error(&cli_export, "--base DIR and --out DIR are required");
    if (!o.formats && !o.include_nf4) return cli_usage_error(&cli_export, "--format is required: peft, merged or gguf");
    rc = init_model_parse_size(shard, &o.max_shard_bytes);
    if (rc) return rc;
    o.threads = (int)threads;
    o.progress = on_progress;
    if ((rc = export_check_out(out, "--out"))) return rc;
    /* the same forms as generate: a stage artifact or an export holding model/ or adapter/ */
    char *bdir = command_artifact_subdir(o.base, "model", "config.json");
    char *adir = o.adapter ? command_artifact_subdir(o.adapter, "adapter", "adapter_config.json") : NULL;
    o.base = bdir;
    o.adapter = adir;
    /* GGUF general.name: an artifact's model as its stage names it (the hub repo, the source
     * folder, or generated-<arch>), never the artifact's "model" folder or hash */
    char *gname = NULL;
    if (strcmp(bdir, a.base)) {
        char *mp = fs_join(a.base, "manifest.json");
        json_t *man = json_load_file(mp, 0, NULL);
        free(mp);
        const char *mn = json_string_value(json_object_get(json_object_get(man, "report"), "model_name"));
        if (!mn) mn = json_string_value(json_object_get(json_object_get(man, "params"), "repo"));
        if (man) gname = export_model_name(mn, bdir);
        json_decref(man);
        err_clear();
        o.name = gname;
    }
    /* "." or "dir/..": publish under the directory's real name (rename cannot move "." aside) */
    char *real = NULL;
    const char *last = strrchr(out, '/') ? strrchr(out, '/') + 1 : out;
    if (!strcmp(last, ".") || !strcmp(last, "..")) {
        real = realpath(out, NULL);
        if (real) out = real;
    }
    char *tmp = NULL;
    rc = pubdir_begin(&tmp, out);
    if (!rc) rc = export_run(&o, tmp);
    progress_finish();
    if (!rc) rc = pubdir_commit(&tmp, out);
    pubdir_abort(&tmp);
    if (!rc) notef("wrote '%s'", out);
    free(real);
    free(gname);
    free(bdir);
    free(adir);
    return rc;
}
