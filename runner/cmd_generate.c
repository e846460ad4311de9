/* cmd_generate.c: `qlora-run generate`, text generation outside a recipe. The same code as
 * the evaluate stage: model/generate.c over the engine's KV cache, LoRA from a PEFT adapter. */
#define _GNU_SOURCE
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
#include "model/device.h"
#include "model/llama_peft.h"
#include "tokenizer/tokenizer.h"
#include "runner/commands.h"

typedef struct generate_args {
    const char *model, *adapter, *prompt, *device;
    int64_t max_new_tokens, top_k, seed;
    double temperature, top_p, repetition_penalty;
    cli_list stops;
} generate_args;

static const cli_opt generate_opts[] = {
    {"model", 0, CLI_STR, "DIR", "base model (NF4-quantized at load when not already)", CLI_AT(generate_args, model), 0, 0},
    {"adapter", 0, CLI_STR, "DIR", "PEFT LoRA adapter", CLI_AT(generate_args, adapter), 0, 0},
    {"prompt", 0, CLI_STR, "TEXT", "the prompt ('-' reads it from stdin)", CLI_AT(generate_args, prompt), 0, 0},
    {"max-new-tokens", 0, CLI_INT, "N", "tokens to generate (128)", CLI_AT(generate_args, max_new_tokens), 1, 1e7},
    {"temperature", 0, CLI_NUM, "T", "0 for greedy (0)", CLI_AT(generate_args, temperature), 0, 100},
    {"top-k", 0, CLI_INT, "K", "sample among the K most likely tokens (0: off)", CLI_AT(generate_args, top_k), 0, 1e9},
    {"top-p", 0, CLI_NUM, "P", "nucleus sampling (1: off)", CLI_AT(generate_args, top_p), 0, 1},
    {"repetition-penalty", 0, CLI_NUM, "R", "penalise tokens already seen (1: off)", CLI_AT(generate_args, repetition_penalty), 0.01, 100},
    {"stop", 0, CLI_LIST, "STR", "stop before STR (repeatable)", CLI_AT(generate_args, stops), 0, 0},
    {"seed", 0, CLI_INT, "N", "sampling seed (0)", CLI_AT(generate_args, seed), 0, 9e18},
    {"device", 0, CLI_STR, "cpu|cuda|auto", "where to run (auto)", CLI_AT(generate_args, device), 0, 0},
    {0},
};

const cli_cmd cli_generate = {
    .name = "generate",
    .usage = "generate --model DIR [--adapter DIR] --prompt TEXT [options]",
    .summary = "text generation (with --adapter DIR)",
    .about = "Continue TEXT with the model (an HF model directory, or an artifact holding model/),\n"
             "optionally with a LoRA adapter (a PEFT directory, or an artifact holding adapter/).",
    .max_pos = 0, .opts = generate_opts,
};

/* DIR/sub when it exists, else DIR (malloc'd) */
static char *artifact_subdir(const char *dir, const char *sub, const char *marker) {
    char *s = fs_join(dir, sub), *m = fs_join(s, marker);
    bool inside = fs_exists(m);
    free(m);
    if (inside) return s;
    free(s);
    return strdup(dir);
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
    gen_opts go = {.sample = SAMPLE_OPTS_GREEDY, .max_new_tokens = 128};
    generate_args a = {.device = "auto", .max_new_tokens = go.max_new_tokens, .temperature = go.sample.temperature,
                       .top_k = go.sample.top_k, .top_p = go.sample.top_p,
                       .repetition_penalty = go.sample.repetition_penalty, .seed = (int64_t)go.sample.seed};
    int n_pos, rc = cli_parse(&cli_generate, &a, argc, argv, NULL, &n_pos);
    if (!rc && (!a.model || !a.prompt)) rc = cli_usage_error(&cli_generate, "--model and --prompt are required");
    if (rc) {
        cli_list_free(&a.stops);
        return rc == CLI_HELP ? 0 : rc;
    }
    const char *model = a.model, *adapter = a.adapter, *prompt = a.prompt, *device = a.device;
    go.max_new_tokens = (int)a.max_new_tokens;
    go.sample.temperature = (float)a.temperature;
    go.sample.top_k = (int)a.top_k;
    go.sample.top_p = (float)a.top_p;
    go.sample.repetition_penalty = (float)a.repetition_penalty;
    go.sample.seed = (uint64_t)a.seed;
    go.stop = a.stops.v;
    go.n_stop = a.stops.n;

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
out: /* main prints the message */
    free(out);
    free(text_in);
    llama_free(&m);
    tokenizer_free(&tok);
    peft_adapter_free(&ad);
    config_free(&cfg);
    free(mdir);
    free(adir);
    cli_list_free(&a.stops);
    return rc;
}
