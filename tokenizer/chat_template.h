/* chat_template.h: a model's own chat template, found and rendered as transformers'
 * apply_chat_template(conversation, tools=..., documents=..., add_generation_prompt=...,
 * **kwargs) renders it with tokenize=False.
 *
 * Where the template comes from, first found wins: an explicit file; <dir>/chat_template.jinja
 * (what transformers 5.x saves); "chat_template" in <dir>/tokenizer_config.json (a string, or
 * a list of {name, template} of which "default" is taken). The template sees: messages,
 * tools and documents (null when the record has none, as transformers passes them),
 * add_generation_prompt, the special tokens of tokenizer_config.json / special_tokens_map.json
 * as strings (bos_token, eos_token, unk_token, pad_token), then the kwargs.
 *
 * Ownership: chat_template_load gives a template the caller frees with chat_template_free;
 * rendering is thread-safe. */
#ifndef TOKENIZER_CHAT_TEMPLATE_H
#define TOKENIZER_CHAT_TEMPLATE_H

#include <jansson.h>
#include <stdbool.h>

#include "tokenizer/jinja.h"

/* The built-in templates a recipe may name instead (stages/dataset.c). */
#define CHAT_TEMPLATE_BUILTINS "llama-2, llama-3, chatml"

typedef struct chat_template {
    jinja_template *tpl;
    char *source;   /* the file it came from, for messages */
    char *text;     /* the template's text (hashed into cache keys) */
    json_t *tokens; /* {"bos_token": "<s>", ...}: the special tokens as strings */
} chat_template;

/* template_file: NULL for the model's own. Errors: ERR_DATA (no template: the message names
 * the built-in choices; a template that does not parse: file:line:col). */
int chat_template_load(chat_template **out, const char *model_dir, const char *template_file);
void chat_template_free(chat_template **ct);

/* Render one conversation. tools, documents, kwargs may be NULL; kwargs is an object whose
 * keys become template variables (enable_thinking, date_string, ...). lim may be NULL. */
int chat_template_render(const chat_template *ct, const json_t *messages, const json_t *tools,
                         const json_t *documents, const json_t *kwargs, bool add_generation_prompt,
                         const jinja_limits *lim, jinja_result *out);

#endif
