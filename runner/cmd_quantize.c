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

typedef struct quantize_args {
    const char *quant_type, *compute_dtype;
    int64_t blocksize, threads;
    bool no_double_quant;
    cli_list skip;
} quantize_args;

static const cli_opt quantize_opts[] = {
    {"quant-type", 0, CLI_STR, "nf4|fp4", "the 4-bit code (nf4)", CLI_AT(quantize_args, quant_type), 0, 0},
    {"blocksize", 0, CLI_INT, "N", "elements per absmax block: 32, 64 (default), 128, ..., 4096", CLI_AT(quantize_args, blocksize), 0, 0},
    {"no-double-quant", 0, CLI_FLAG, NULL, "keep absmax in f32 (4.5 bits a parameter instead of 4.127)",
     CLI_AT(quantize_args, no_double_quant), 0, 0},
    {"compute-dtype", 0, CLI_STR, "bf16|f16|f32", "recorded as bnb_4bit_compute_dtype (bf16)", CLI_AT(quantize_args, compute_dtype), 0, 0},
    {"skip", 0, CLI_LIST, "MODULE", "keep this module in full precision (repeatable), e.g. mlp.down_proj",
     CLI_AT(quantize_args, skip), 0, 0},
    {"threads", 0, CLI_INT, "N", "threads (2)", CLI_AT(quantize_args, threads), 1, 64},
    {0},
};

const cli_cmd cli_quantize = {
    .name = "quantize",
    .usage = "quantize IN_DIR OUT_DIR [--quant-type nf4|fp4] [--blocksize N] [--no-double-quant]\n"
             "       [--compute-dtype bf16|f16|f32] [--skip MODULE]... [--threads N]",
    .summary = "NF4/FP4 quantization in the bitsandbytes layout",
    .about = "Quantizes the linear weights of the Hugging Face model in IN_DIR (bf16, f16 or f32\n"
             "safetensors) and writes OUT_DIR in the layout transformers + bitsandbytes save, so that\n"
             "AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it. Embeddings, norms and lm_head are kept.",
    .min_pos = 2, .max_pos = 2, .opts = quantize_opts,
};

static void print_line(void *arg, const char *text) {
    (void)arg;
    outf("%s", text);
}

static void print_progress(void *arg, double done, double total) {
    (void)arg;
    progress_update("quantize", "weights", done / 1e6, total / 1e6, "MB");
}

int cmd_quantize(int argc, char **argv) {
    bnb_opts o;
    bnb_opts_default(&o);
    quantize_args a = {.blocksize = o.blocksize, .threads = o.nthreads};
    const char *pos[3];
    int n_pos, rc = cli_parse(&cli_quantize, &a, argc, argv, pos, &n_pos);
    if (!rc && a.quant_type) {
        if (!strcmp(a.quant_type, "nf4")) o.quant_type = OPS_NF4;
        else if (!strcmp(a.quant_type, "fp4")) o.quant_type = OPS_FP4;
        else rc = cli_usage_error(&cli_quantize, "--quant-type must be nf4 or fp4, not '%s'", a.quant_type);
    }
    if (!rc && !nf4_blocksize_valid((int)a.blocksize))
        rc = cli_usage_error(&cli_quantize, "--blocksize must be 32, 64, 128, ..., 4096, not %lld", (long long)a.blocksize);
    if (!rc && a.compute_dtype) {
        if (!strcmp(a.compute_dtype, "bf16")) o.compute_dtype = "bfloat16";
        else if (!strcmp(a.compute_dtype, "f16")) o.compute_dtype = "float16";
        else if (!strcmp(a.compute_dtype, "f32")) o.compute_dtype = "float32";
        else rc = cli_usage_error(&cli_quantize, "--compute-dtype must be bf16, f16 or f32, not '%s'", a.compute_dtype);
    }
    if (rc) {
        cli_list_free(&a.skip);
        return rc == CLI_HELP ? 0 : rc;
    }
    o.blocksize = (int)a.blocksize;
    o.nthreads = (int)a.threads;
    o.double_quant = !a.no_double_quant;
    o.n_skip = a.skip.n;
    const char **skip = a.skip.v;
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
    cli_list_free(&a.skip);
    return rc;
}
