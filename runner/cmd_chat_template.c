/* cmd_chat_template.c: `qlora-run chat-template`, a model's chat template applied to JSONL
 * conversations on stdin: one JSON string per record, what transformers'
 * apply_chat_template(messages, tools=..., documents=..., add_generation_prompt=..., **kwargs,
 * tokenize=False) returns. For users debugging a template, and for the tests that hold our
 * renderer against @huggingface/jinja and jinja2. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/log.h"
#include "runner/commands.h"
#include "tokenizer/chat_template.h"

typedef struct chat_template_args {
    const char *model, *template_file, *kwargs;
    bool add_generation_prompt, keep_going, spans;
    int64_t now;
} chat_template_args;

static const cli_opt chat_template_opts[] = {
    {"model", 0, CLI_STR, "DIR", "a model directory, or one with just its tokenizer files; the template is\n"
                                 "DIR/chat_template.jinja or tokenizer_config.json's chat_template",
     CLI_AT(chat_template_args, model), 0, 0},
    {"template", 0, CLI_STR, "FILE", "render this Jinja file instead (special tokens still from DIR)",
     CLI_AT(chat_template_args, template_file), 0, 0},
    {"add-generation-prompt", 0, CLI_FLAG, NULL, "end with the prompt for the assistant's next turn",
     CLI_AT(chat_template_args, add_generation_prompt), 0, 0},
    {"kwargs", 0, CLI_STR, "JSON", "template variables for every record, e.g. '{\"enable_thinking\": false}'",
     CLI_AT(chat_template_args, kwargs), 0, 0},
    {"now", 0, CLI_INT, "SECONDS", "the clock strftime_now reads, in Unix seconds (default: the real one)",
     CLI_AT(chat_template_args, now), 1, 9e15},
    {"keep-going", 0, CLI_FLAG, NULL, "a record that fails prints null (its error goes to stderr) and the rest\n"
                                      "are rendered; the exit status is still 4",
     CLI_AT(chat_template_args, keep_going), 0, 0},
    {"spans", 0, CLI_FLAG, NULL, "print {\"text\": ..., \"spans\": [[start, end], ...]} per record: the characters each\n"
                                 "{% generation %} block wrote, as transformers' return_assistant_tokens_mask\n"
                                 "finds them (the assistant tokens the training mask keeps)",
     CLI_AT(chat_template_args, spans), 0, 0},
    {0},
};

const cli_cmd cli_chat_template = {
    .name = "chat-template",
    .usage = "chat-template --model DIR [--template FILE] [--add-generation-prompt] [--kwargs JSON]\n"
             "              [--now SECONDS] [--keep-going]",
    .summary = "render JSONL conversations with the model's chat template",
    .about = "Reads JSONL records on stdin, each {\"messages\": [...]} with optional \"tools\", \"documents\",\n"
             "\"add_generation_prompt\" (true/false, overrides the option) and \"chat_template_kwargs\" (an\n"
             "object of extra template variables), and prints each rendering as one JSON string per line:\n"
             "what transformers' apply_chat_template(..., tokenize=False) returns (docs/chat-templates.md).",
    .footer = "Exit status: 0 ok, 2 usage, 4 a template that does not parse, a record it rejects\n"
              "(raise_exception) or a bad record; the message names the template's line:col and the record.",
    .max_pos = 0, .opts = chat_template_opts,
};

/* chars_before: the number of characters (code points, Python's string index) in the first
 * `byte` bytes of a UTF-8 text */
static size_t chars_before(const char *text, size_t byte) {
    size_t n = 0;
    for (size_t i = 0; i < byte; i++) n += ((unsigned char)text[i] & 0xC0) != 0x80;
    return n;
}

/* spans_json: {"text": TEXT, "spans": [[start, end], ...]} with character offsets */
static json_t *spans_json(const jinja_result *res) {
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "text", json_stringn(res->text, res->len));
    json_object_set_new(o, "spans", arr);
    for (size_t i = 0; i < res->n_gen; i++)
        json_array_append_new(arr, json_pack("[II]", (json_int_t)chars_before(res->text, res->gen[i].begin),
                                             (json_int_t)chars_before(res->text, res->gen[i].end)));
    if (!json_is_string(json_object_get(o, "text"))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int render_record(const chat_template *ct, const json_t *rec, const json_t *kwargs, bool agp, bool spans,
                         const jinja_limits *lim) {
    if (!json_is_object(rec)) return err_set(ERR_DATA, "expected a JSON object");
    json_t *msgs = json_object_get(rec, "messages");
    if (!json_is_array(msgs)) return err_set(ERR_DATA, "expected 'messages': a list of {role, content}");
    json_t *a = json_object_get(rec, "add_generation_prompt");
    if (a && !json_is_boolean(a)) return err_set(ERR_DATA, "'add_generation_prompt' must be true or false");
    if (a) agp = json_is_true(a);
    json_t *kw = json_object_get(rec, "chat_template_kwargs");
    if (kw && !json_is_object(kw)) return err_set(ERR_DATA, "'chat_template_kwargs' must be an object");
    json_t *all = json_object();
    if (kwargs) json_object_update(all, (json_t *)kwargs);
    if (kw) json_object_update(all, kw);
    jinja_result res;
    int rc = chat_template_render(ct, msgs, json_object_get(rec, "tools"), json_object_get(rec, "documents"), all, agp,
                                  lim, &res);
    json_decref(all);
    if (rc) return rc;
    json_t *s = spans ? spans_json(&res) : json_stringn(res.text, res.len);
    char *out = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    jinja_result_free(&res);
    if (!out) return err_set(ERR_DATA, "the rendering is not valid UTF-8");
    fputs(out, stdout);
    fputc('\n', stdout);
    free(out);
    return 0;
}

int cmd_chat_template(int argc, char **argv) {
    chat_template_args a = {0};
    int n_pos, rc = cli_parse(&cli_chat_template, &a, argc, argv, NULL, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (!a.model) return cli_usage_error(&cli_chat_template, "--model DIR is required");
    const char *model = a.model, *file = a.template_file, *kwargs_text = a.kwargs;
    bool agp = a.add_generation_prompt, keep_going = a.keep_going, spans = a.spans;
    int failed = 0, fail_code = 0;
    jinja_limits lim = {.now = a.now};
    json_t *kwargs = NULL;
    if (kwargs_text) {
        json_error_t je;
        kwargs = json_loads(kwargs_text, 0, &je);
        if (!json_is_object(kwargs)) {
            json_decref(kwargs);
            return cli_usage_error(&cli_chat_template, "--kwargs needs a JSON object, not '%s'", kwargs_text);
        }
    }
    chat_template *ct = NULL;
    rc = chat_template_load(&ct, model, file);
    if (rc) {
        json_decref(kwargs);
        return rc; /* main prints the message */
    }
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    char *line = NULL;
    size_t cap = 0, lineno = 0, record = 0;
    ssize_t n;
    while (!rc && (n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (strspn(line, " \t") >= len) continue;
        json_error_t je;
        json_t *rec = json_loadb(line, len, 0, &je);
        if (!rec) rc = err_set(ERR_DATA, "stdin:%zu:%d: record %zu: invalid JSON: %s", lineno, je.column, record, je.text);
        else {
            rc = render_record(ct, rec, kwargs, agp, spans, &lim);
            if (rc) err_wrap("stdin:%zu: record %zu", lineno, record);
        }
        if (rc && keep_going) {
            errorf("%s", err_msg());
            fputs("null\n", stdout);
            failed++;
            fail_code = rc;
            rc = 0;
        }
        json_decref(rec);
        record++;
    }
    free(line);
    if (!rc && failed) rc = err_set(fail_code, "%d record(s) failed (see above)", failed);
    chat_template_free(&ct);
    json_decref(kwargs);
    if (fflush(stdout) && !rc) {
        rc = err_set(ERR_STAGE, "cannot write to stdout: %s", strerror(errno));
    }
    return rc;
}
