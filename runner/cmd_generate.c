/* cmd_generate.c: `qlora-run generate`, text generation outside a recipe. The same code as
 * the evaluate stage: model/generate.c over the engine's KV cache, LoRA from a PEFT adapter. */
#define _GNU_SOURCE
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "formats/peft.h"
#include "model/adapter.h"
#include "model/config.h"
#include "generate/generate.h"
#include "model/llama.h"
#include "model/llama_peft.h"
#include "tokenizer/tokenizer.h"
#include "runner/commands.h"

static const char generate_usage[] =
    "usage: qlora-run generate --model DIR [--adapter DIR] --prompt TEXT [options]\n"
    "\n"
    "Continue TEXT with the model (an HF model directory, or an artifact holding model/),\n"
    "optionally with a LoRA adapter (a PEFT directory, or an artifact holding adapter/).\n"
    "\n"
    "  --model DIR               base model (NF4-quantized at load when not already)\n"
    "  --adapter DIR             PEFT LoRA adapter\n"
    "  --prompt TEXT             the prompt ('-' reads it from stdin)\n"
    "  --max-new-tokens N        tokens to generate (default 128)\n"
    "  --temperature T           0 for greedy (default 0)\n"
    "  --top-k K                 sample among the K most likely tokens (default 0: off)\n"
    "  --top-p P                 nucleus sampling (default 1: off)\n"
    "  --repetition-penalty R    penalise tokens already seen (default 1: off)\n"
    "  --stop STR                stop before STR (repeatable)\n"
    "  --seed N                  sampling seed (default 0)\n"
    "  --device cpu|cuda|auto    where to run (default auto)\n"
    "  -h, --help                this text\n";

/* DIR/sub when it exists, else DIR (malloc'd) */
static char *artifact_subdir(const char *dir, const char *sub, const char *marker) {
    char *s = fs_join(dir, sub), *m = fs_join(s, marker);
    bool inside = fs_exists(m);
    free(m);
    if (inside) return s;
    free(s);
    return strdup(dir);
}

static int parse_num(const char *opt, const char *v, double lo, double hi, double *out) {
    char *end;
    double x = strtod(v, &end);
    if (*end || end == v || x < lo || x > hi) {
        errorf("%s: '%s' is not a number in [%g, %g]", opt, v, lo, hi);
        return ERR_USAGE;
    }
    *out = x;
    return 0;
}

static char *read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
        n += r;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    if (buf) buf[n] = 0;
    return buf;
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"adapter", required_argument, 0, 'a'},
        {"prompt", required_argument, 0, 'p'},      {"max-new-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'}, {"top-k", required_argument, 0, 'k'},
        {"top-p", required_argument, 0, 'P'},       {"repetition-penalty", required_argument, 0, 'r'},
        {"stop", required_argument, 0, 's'},        {"seed", required_argument, 0, 'S'},
        {"device", required_argument, 0, 'd'},      {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *adapter = NULL, *prompt = NULL, *device = "auto";
    const char **stops = calloc((size_t)argc + 1, sizeof *stops);
    int n_stop = 0;
    gen_opts go = {.sample = SAMPLE_OPTS_GREEDY, .max_new_tokens = 128};
    double x;
    int c, rc = 0;
    optind = 1;
    while (!rc && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'a': adapter = optarg; break;
        case 'p': prompt = optarg; break;
        case 'd': device = optarg; break;
        case 's': stops[n_stop++] = optarg; break;
        case 'n': if (!(rc = parse_num("--max-new-tokens", optarg, 1, 1e7, &x))) go.max_new_tokens = (int)x; break;
        case 't': if (!(rc = parse_num("--temperature", optarg, 0, 100, &x))) go.sample.temperature = (float)x; break;
        case 'k': if (!(rc = parse_num("--top-k", optarg, 0, 1e9, &x))) go.sample.top_k = (int)x; break;
        case 'P': if (!(rc = parse_num("--top-p", optarg, 0, 1, &x))) go.sample.top_p = (float)x; break;
        case 'r': if (!(rc = parse_num("--repetition-penalty", optarg, 0.01, 100, &x))) go.sample.repetition_penalty = (float)x; break;
        case 'S': if (!(rc = parse_num("--seed", optarg, 0, 9e18, &x))) go.sample.seed = (uint64_t)x; break;
        case 'h': fputs(generate_usage, stdout); free(stops); return 0;
        default: rc = ERR_USAGE; break;
        }
    }
    if (!rc && (!model || !prompt || optind < argc)) {
        errorf(optind < argc ? "unexpected argument '%s'" : "--model and --prompt are required%s",
               optind < argc ? argv[optind] : "");
        rc = ERR_USAGE;
    }
    if (rc) {
        fputs("see 'qlora-run generate --help'\n", stderr);
        free(stops);
        return rc;
    }
    go.stop = stops;
    go.n_stop = n_stop;

    char *mdir = artifact_subdir(model, "model", "config.json");
    char *adir = adapter ? artifact_subdir(adapter, "adapter", PEFT_CONFIG_FILE) : NULL;
    char *text_in = !strcmp(prompt, "-") ? read_stdin() : NULL, *out = NULL;
    model_config cfg = {0};
    peft_adapter ad = {0}; /* peft_adapter_load fills it; free is safe on a zeroed one */
    tokenizer *tok = NULL;
    llama_model *m = NULL;
    const ops_table *ops;
    if ((rc = device_ops(device, &ops))) goto out;
    if ((rc = config_load(&cfg, mdir)) || (rc = tokenizer_load(&tok, mdir))) goto out;
    if ((rc = llama_init(&m, &cfg, mdir, &LLAMA_LOAD_OPTS_DEFAULT, ops))) goto out;
    if (adir && ((rc = peft_adapter_load(&ad, adir)) || (rc = adapter_validate(&ad, &cfg, adir)) ||
                 (rc = llama_peft_attach(m, &ad, adir))))
        goto out;
    go.eos_id = tokenizer_eos(tok);
    if ((rc = generate_text(m, tok, text_in ? text_in : prompt, &go, &out, NULL))) goto out;
    fputs(out, stdout);
    fputc('\n', stdout);
out:
    if (rc) errorf("%s", err_msg());
    free(out);
    free(text_in);
    llama_free(&m);
    tokenizer_free(&tok);
    peft_adapter_free(&ad);
    config_free(&cfg);
    free(mdir);
    free(adir);
    free(stops);
    return rc;
}
