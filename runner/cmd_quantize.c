/* cmd_quantize.c: qlora-run quantize: NF4/FP4 outside a recipe (model/bnb.c, shared with the
 * quantize_nf4 stage). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "core/progress.h"
#include "kernels/cpu/nf4.h"
#include "formats/bnb.h"
#include "runner/commands.h"

static const char quantize_help[] =
    "usage: qlora-run quantize IN_DIR OUT_DIR [--quant-type nf4|fp4] [--blocksize N] [--no-double-quant]\n"
    "                          [--compute-dtype bf16|f16|f32] [--skip MODULE]... [--threads N]\n"
    "\n"
    "Quantizes the linear weights of the Hugging Face model in IN_DIR (bf16, f16 or f32\n"
    "safetensors) and writes OUT_DIR in the layout transformers + bitsandbytes save, so that\n"
    "AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it. Embeddings, norms and lm_head are kept.\n"
    "\n"
    "  --quant-type       nf4 (default) or fp4\n"
    "  --blocksize        elements per absmax block: 32, 64 (default), 128, ..., 4096\n"
    "  --no-double-quant  keep absmax in f32 (4.5 bits a parameter instead of 4.127)\n"
    "  --compute-dtype    recorded as bnb_4bit_compute_dtype (default bf16)\n"
    "  --skip MODULE      keep this module in full precision (repeatable), e.g. mlp.down_proj\n"
    "  --threads N        default 2\n";

static void print_line(void *arg, const char *text) {
    (void)arg;
    outf("%s", text);
}

static void print_progress(void *arg, double done, double total) {
    (void)arg;
    progress_update("quantize", "weights", done / 1e6, total / 1e6, "MB");
}

static int usage(const char *fmt, const char *arg) {
    char msg[256];
    snprintf(msg, sizeof msg, fmt, arg);
    return err_set(ERR_USAGE, "%s (see qlora-run quantize --help)", msg);
}

int cmd_quantize(int argc, char **argv) {
    bnb_opts o;
    bnb_opts_default(&o);
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    const char **skip = calloc((size_t)argc + 1, sizeof *skip);
    int rc = 0;
    for (int i = 1; i < argc && !rc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(quantize_help, stdout);
            free(skip);
            return 0;
        }
        if (!strcmp(a, "--no-double-quant")) {
            o.double_quant = false;
            continue;
        }
        if (a[0] != '-') {
            if (npos == 2) rc = usage("unexpected argument '%s'", a);
            else pos[npos++] = a;
            continue;
        }
        if (i + 1 >= argc) {
            rc = usage("%s needs a value", a);
            break;
        }
        const char *v = argv[++i];
        char *end;
        if (!strcmp(a, "--quant-type")) {
            if (!strcmp(v, "nf4")) o.quant_type = OPS_NF4;
            else if (!strcmp(v, "fp4")) o.quant_type = OPS_FP4;
            else rc = usage("--quant-type must be nf4 or fp4, not '%s'", v);
        } else if (!strcmp(a, "--blocksize")) {
            long b = strtol(v, &end, 10);
            if (*end || !nf4_blocksize_valid((int)b)) rc = usage("--blocksize must be 32, 64, 128, ..., 4096, not '%s'", v);
            o.blocksize = (int)b;
        } else if (!strcmp(a, "--compute-dtype")) {
            if (!strcmp(v, "bf16")) o.compute_dtype = "bfloat16";
            else if (!strcmp(v, "f16")) o.compute_dtype = "float16";
            else if (!strcmp(v, "f32")) o.compute_dtype = "float32";
            else rc = usage("--compute-dtype must be bf16, f16 or f32, not '%s'", v);
        } else if (!strcmp(a, "--skip")) {
            skip[o.n_skip++] = v;
        } else if (!strcmp(a, "--threads")) {
            long t = strtol(v, &end, 10);
            if (*end || t < 1 || t > 64) rc = usage("--threads must be 1..64, not '%s'", v);
            o.nthreads = (int)t;
        } else {
            rc = usage("unknown option '%s'", a);
        }
    }
    if (!rc && npos != 2) rc = err_set(ERR_USAGE, "quantize needs IN_DIR and OUT_DIR (see qlora-run quantize --help)");
    if (rc) {
        free(skip);
        return rc;
    }
    o.skip = skip;
    o.progress = print_progress;
    bnb_report rep;
    rc = bnb_quantize_dir(pos[0], pos[1], &o, &rep);
    progress_finish();
    if (!rc) {
        bnb_report_lines(&rep, print_line, NULL);
        notef("wrote '%s'", pos[1]);
    } else {
        err_wrap("quantizing '%s'", pos[0]);
    }
    bnb_report_free(&rep);
    free(skip);
    return rc;
}
