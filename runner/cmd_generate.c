/* cmd_generate.c: `qlora-run generate`, text generation outside a recipe. The same code as
 * the evaluate stage: model/generate.c over the engine's KV cache, LoRA from a PEFT adapter. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"
#include "core/log.h"
#include "formats/peft.h"
#include "model/adapter.h"
#include "model/config.h"
#include "generate/generate.h"
#include "model/llama.h"
#include "model/device.h"
#include "model/llama_peft.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"
#include "runner/commands.h"

typedef struct generate_args {
    const char *model, *adapter, *prompt, *device, *chat_kwargs, *quantize;
    bool chat;
    int64_t max_new_tokens, top_k, seed;
    double temperature, top_p, repetition_penalty;
    cli_list stops;
    bool ids;
} generate_args;

static const cli_opt generate_opts[] = {
    {"model", 0, CLI_STR, "DIR", "the model, run as it is (bf16, f16, f32 or bitsandbytes 4-bit)", CLI_AT(generate_args, model), 0, 0},
    {"quantize", 0, CLI_STR, "none|nf4", "nf4: quantize a float model's linears to NF4 at load, as training does\n"
                                         "(none: as it is, the default)", CLI_AT(generate_args, quantize), 0, 0},
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
    {"chat", 0, CLI_FLAG, NULL, "TEXT is a user message (or a JSON record {\"messages\": [...], \"tools\": ...}):\n"
                                "the model's chat template renders it with the generation prompt",
     CLI_AT(generate_args, chat), 0, 0},
    {"chat-kwargs", 0, CLI_STR, "JSON", "template variables for --chat, e.g. '{\"enable_thinking\": false}'",
     CLI_AT(generate_args, chat_kwargs), 0, 0},
    {"ids", 0, CLI_FLAG, NULL, "TEXT is token ids (\"1 2 3\", no BOS added) and the output the new ids,\n"
                               "exactly --max-new-tokens of them (EOS does not stop)", CLI_AT(generate_args, ids), 0, 0},
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
/* An export's model/ already holds its adapter/ merged into the weights: applying that adapter
 * again would add the update twice. Exports write both side by side, so the adapter that sits
 * next to the merged model (the same export), or has the same bytes, is that adapter. */
static int check_not_merged(const char *mdir, const char *adir) {
    char *mreal = realpath(mdir, NULL), *areal = realpath(adir, NULL);
    int rc = 0;
    if (mreal && areal) {
        char *mp = fs_dirname(mreal), *ap = fs_dirname(areal);
        char *twin = fs_join(mp, "adapter");
        char *t1 = fs_join(twin, "adapter_model.safetensors"), *t2 = fs_join(areal, "adapter_model.safetensors");
        char h1[HASH_HEX_LEN] = "", h2[HASH_HEX_LEN] = "";
        bool export_model = !strcmp(mreal + strlen(mp), "/model") && fs_is_dir(twin);
        bool same = export_model && (!strcmp(mp, ap) || (fs_exists(t1) && fs_exists(t2) && !hash_file_hex(t1, h1) &&
                                                          !hash_file_hex(t2, h2) && !strcmp(h1, h2)));
        err_clear();
        if (same)
            rc = err_set(ERR_USAGE, "--model '%s' is a merged export of the adapter '%s' (the LoRA update is already in "
                                    "its weights): drop --adapter, or give the base model with --model", mdir, adir);
        free(t1), free(t2), free(twin), free(mp), free(ap);
    }
    free(mreal);
    free(areal);
    return rc;
}

char *command_artifact_subdir(const char *dir, const char *sub, const char *marker) {
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

/* --chat: the text as a user message, or a JSON record with messages (and tools, ...), through
 * the model's chat template with add_generation_prompt (malloc'd) */
static int chat_prompt(const char *model_dir, const char *text, const char *kwargs_text, char **out) {
    chat_template *ct = NULL;
    int rc = chat_template_load(&ct, model_dir, NULL);
    if (rc) return rc;
    json_t *rec = text[0] == '{' ? json_loads(text, 0, NULL) : NULL;
    if (!json_is_array(json_object_get(rec, "messages"))) {
        json_decref(rec);
        rec = json_pack("{s:[{s:s, s:s}]}", "messages", "role", "user", "content", text);
    }
    json_t *kw = kwargs_text ? json_loads(kwargs_text, 0, NULL) : NULL;
    if (kwargs_text && !json_is_object(kw)) rc = err_set(ERR_USAGE, "--chat-kwargs needs a JSON object, not '%s'", kwargs_text);
    jinja_result r = {0};
    if (!rc && !rec) rc = err_set(ERR_STAGE, "out of memory");
    if (!rc) rc = chat_template_render(ct, json_object_get(rec, "messages"), json_object_get(rec, "tools"),
                                       json_object_get(rec, "documents"), kw, true, NULL, &r);
    if (!rc) {
        *out = r.text;
        r.text = NULL;
    }
    jinja_result_free(&r);
    json_decref(rec);
    json_decref(kw);
    chat_template_free(&ct);
    return rc;
}

/* --ids: the prompt as ids, the continuation printed as ids (what tests compare with llama.cpp) */
static int generate_print_ids(llama_model *m, const char *text, gen_opts *go) {
    size_t cap = strlen(text) / 2 + 1;
    int32_t *ids = malloc(sizeof *ids * cap), *out = NULL;
    int n = 0, n_out = 0, rc = 0;
    for (const char *p = text; ids && *p;) {
        char *end;
        while (*p == ' ' || *p == '\n' || *p == '\t') p++;
        if (!*p) break;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > INT32_MAX || (*end && *end != ' ' && *end != '\n' && *end != '\t')) {
            free(ids);
            return err_set(ERR_USAGE, "--ids: '%.20s' is not a token id", p);
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (!ids) return err_set(ERR_STAGE, "out of memory");
    if (!n) rc = err_set(ERR_USAGE, "--ids: the prompt holds no token id");
    go->eos_id = -1;
    if (!rc) rc = generate_ids(m, ids, n, go, NULL, NULL, &out, &n_out);
    for (int i = 0; !rc && i < n_out; i++) printf(i ? " %d" : "%d", out[i]);
    if (!rc) putchar('\n');
    free(ids);
    free(out);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    gen_opts go = {.sample = SAMPLE_OPTS_GREEDY, .max_new_tokens = 128};
    generate_args a = {.device = "auto", .max_new_tokens = go.max_new_tokens, .temperature = go.sample.temperature,
                       .top_k = go.sample.top_k, .top_p = go.sample.top_p,
                       .repetition_penalty = go.sample.repetition_penalty, .seed = (int64_t)go.sample.seed};
    int n_pos, rc = cli_parse(&cli_generate, &a, argc, argv, NULL, &n_pos);
    if (!rc && (!a.model || !a.prompt)) rc = cli_usage_error(&cli_generate, "--model and --prompt are required");
    if (!rc && a.quantize && strcmp(a.quantize, "none") && strcmp(a.quantize, "nf4"))
        rc = cli_usage_error(&cli_generate, "--quantize must be none or nf4, not '%s'", a.quantize);
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

    char *mdir = command_artifact_subdir(model, "model", "config.json");
    char *adir = adapter ? command_artifact_subdir(adapter, "adapter", PEFT_CONFIG_FILE) : NULL;
    char *text_in = !strcmp(prompt, "-") ? read_stdin() : NULL, *out = NULL;
    model_config cfg = {0};
    peft_adapter ad = {0}; /* peft_adapter_load fills it; free is safe on a zeroed one */
    tokenizer *tok = NULL;
    llama_model *m = NULL;
    const ops_table *ops;
    if (adir && (rc = check_not_merged(mdir, adir))) goto out;
    if ((rc = device_ops(device, &ops))) goto out;
    if ((rc = config_load(&cfg, mdir)) || (rc = tokenizer_load(&tok, mdir))) goto out;
    llama_load_opts lo = LLAMA_LOAD_OPTS_DEFAULT;
    lo.dense = !a.quantize || !strcmp(a.quantize, "none"); /* a merged export checks against itself */
    if ((rc = llama_init(&m, &cfg, mdir, &lo, ops))) goto out;
    if (adir && ((rc = peft_adapter_load(&ad, adir)) || (rc = adapter_validate(&ad, &cfg, adir)) ||
                 (rc = llama_peft_attach(m, &ad, adir))))
        goto out;
    go.eos_id = tokenizer_eos(tok);
    if (a.ids) { /* token ids in and out (llama.cpp comparisons) */
        rc = generate_print_ids(m, text_in ? text_in : prompt, &go);
        goto out;
    }
    if (a.chat || a.chat_kwargs) {
        /* the template writes the special tokens itself: encode its text without adding any */
        char *rendered = NULL;
        int32_t *ids = NULL;
        size_t n = 0;
        if ((rc = chat_prompt(mdir, text_in ? text_in : prompt, a.chat_kwargs, &rendered))) goto out;
        rc = tokenizer_encode(tok, rendered, strlen(rendered), false, &ids, &n);
        free(rendered);
        if (!rc) rc = generate_text_ids(m, tok, ids, (int)n, &go, &out, NULL);
        free(ids);
        if (rc) goto out;
    } else if ((rc = generate_text(m, tok, text_in ? text_in : prompt, &go, &out, NULL))) {
        goto out;
    }
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
