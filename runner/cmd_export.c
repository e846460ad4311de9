/* cmd_export.c: qlora-run export: PEFT adapter, merged model or GGUF outside a recipe
 * (model/export.c, shared with the export stage). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/progress.h"
#include "core/pubdir.h"
#include "export/export.h"
#include "export/gguf_export.h"
#include "model/init_model.h"
#include "runner/commands.h"

static const char help[] =
    "usage: qlora-run export --base DIR [--adapter DIR] --format peft|merged|gguf[,...] --out DIR\n"
    "                        [--gguf-type f16|bf16|q8_0|f32] [--include-nf4] [--max-shard-size 5GB]\n"
    "                        [--threads N]\n"
    "\n"
    "  --base      a Hugging Face model directory: bf16/f16/f32, or a bitsandbytes 4-bit checkpoint\n"
    "              (dequantized before merging; the 4-bit codes are never merged into)\n"
    "  --adapter   a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)\n"
    "  --format    peft:   OUT/adapter/, checked against the base and saved as peft writes it\n"
    "              merged: OUT/model/, W + scale*B@A in fp32, saved as bf16 safetensors shards\n"
    "              gguf:   OUT/model-<type>.gguf for llama.cpp (default type f16)\n"
    "              repeat the option or separate formats with commas\n"
    "  --include-nf4  also copy the 4-bit base checkpoint to OUT/nf4/\n"
    "\n"
    "OUT appears complete or not at all; an existing OUT is replaced.\n";

static int on_progress(void *arg, const char *what, uint64_t done, uint64_t total) {
    progress_update("export", what, (double)done / 1e6, (double)total / 1e6, "MB");
    return 0;
}

int cmd_export(int argc, char **argv) {
    export_opts o = {0};
    const char *out = NULL, *shard = "5GB";
    int64_t threads = 2;
    o.gguf_type = GGML_TYPE_F16;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return 0;
        }
        if (!strcmp(a, "--include-nf4")) { o.include_nf4 = true; continue; }
        if (a[0] != '-' || a[1] != '-') return err_set(ERR_USAGE, "unexpected argument '%s' (see qlora-run export --help)", a);
        if (i + 1 >= argc) return err_set(ERR_USAGE, "%s needs a value (see qlora-run export --help)", a);
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(a, "--base")) o.base = v;
        else if (!strcmp(a, "--adapter")) o.adapter = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--gguf-type")) rc = gguf_export_type(v, &o.gguf_type);
        else if (!strcmp(a, "--max-shard-size")) shard = v;
        else if (!strcmp(a, "--threads")) {
            char *end;
            threads = strtoll(v, &end, 10);
            if (*end || threads < 1) rc = err_set(ERR_USAGE, "--threads needs a positive integer, not '%s'", v);
        } else if (!strcmp(a, "--format")) {
            char *list = strdup(v), *save = NULL;
            for (char *f = strtok_r(list, ",", &save); f && !rc; f = strtok_r(NULL, ",", &save)) {
                unsigned bit;
                rc = export_format_from_name(f, &bit);
                o.formats |= bit;
            }
            free(list);
        } else {
            rc = err_set(ERR_USAGE, "unknown option '%s' (see qlora-run export --help)", a);
        }
        if (rc) return rc;
    }
    if (!o.base || !out) return err_set(ERR_USAGE, "--base DIR and --out DIR are required (see qlora-run export --help)");
    if (!o.formats && !o.include_nf4) return err_set(ERR_USAGE, "--format is required: peft, merged or gguf (see qlora-run export --help)");
    int rc = init_model_parse_size(shard, &o.max_shard_bytes);
    if (rc) return rc;
    o.threads = (int)threads;
    o.progress = on_progress;
    char *tmp = NULL;
    rc = pubdir_begin(&tmp, out);
    if (!rc) rc = export_run(&o, tmp);
    progress_finish();
    if (!rc) rc = pubdir_commit(&tmp, out);
    pubdir_abort(&tmp);
    if (!rc) notef("wrote '%s'", out);
    return rc;
}
