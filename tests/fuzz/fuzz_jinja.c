/* fuzz_jinja.c: the chat-template renderer (tokenizer/jinja.h) on arbitrary templates.
 *
 * Input: a template, optionally followed by "\n#CTX\n" and a JSON object of variables (else a
 * fixed conversation with a tool call). Parse, then render under small bounds; a render must
 * either fail with a message or give output whose generation spans lie inside it. */
#define _GNU_SOURCE
#include "fuzz_common.h"
#include "tokenizer/jinja.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char DEFAULT_CTX[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \" sys \"}, {\"role\": \"user\", \"content\": \"héllo <think>\"},"
    "{\"role\": \"assistant\", \"content\": \"<think>x</think>\\n\\nhi\", \"tool_calls\": [{\"type\": \"function\","
    "\"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1, \"b\": [true, null]}}}]}, {\"role\": \"tool\", "
    "\"content\": \"42\"}], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"bos_token\": \"<s>\","
    "\"eos_token\": \"</s>\", \"add_generation_prompt\": true}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    log_set_quiet(1);
    const char *src = (const char *)data;
    size_t tlen = size;
    const char *sep = size >= 6 ? memmem(data, size, "\n#CTX\n", 6) : NULL;
    json_t *ctx = NULL;
    if (sep) {
        tlen = (size_t)(sep - src);
        ctx = json_loadb(sep + 6, size - tlen - 6, 0, NULL);
    }
    if (!ctx) ctx = json_loads(DEFAULT_CTX, 0, NULL);
    jinja_template *t = NULL;
    if (jinja_parse(&t, src, tlen, "fuzz.jinja") == 0) {
        jinja_limits lim = {.max_steps = 200000, .max_output = 1 << 20, .max_memory = 64 << 20, .max_depth = 32, .now = 1};
        jinja_result r;
        if (jinja_render(t, ctx, &lim, &r) == 0) {
            if (strlen(r.text) > r.len) abort();
            for (size_t i = 0; i < r.n_gen; i++)
                if (r.gen[i].begin > r.gen[i].end || r.gen[i].end > r.len) abort();
            jinja_result_free(&r);
        }
        jinja_free(&t);
    }
    json_decref(ctx);
    err_clear();
    return 0;
}
