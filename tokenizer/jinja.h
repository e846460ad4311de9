/* jinja.h: a sandboxed Jinja renderer for chat templates, rendering as transformers'
 * apply_chat_template does (jinja2's ImmutableSandboxedEnvironment with trim_blocks and
 * lstrip_blocks, transformers' tojson, raise_exception and strftime_now).
 *
 * Templates are code from the internet: a template reads only the variables it is given,
 * has no file, environment or clock access beyond strftime_now, and every render is bounded
 * in steps (loop iterations, calls, filter work), call depth, output bytes and memory. What
 * is supported, and where it differs from jinja2, is in docs/chat-templates.md.
 *
 * Ownership: jinja_parse returns a template the caller frees with jinja_free; it is
 * immutable, so several threads may render one template at once. jinja_render fills a
 * jinja_result the caller frees with jinja_result_free. */
#ifndef TOKENIZER_JINJA_H
#define TOKENIZER_JINJA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct jinja_template jinja_template;

typedef struct jinja_limits {
    uint64_t max_steps;   /* loop iterations + calls + per-item filter work; 0: 10,000,000 */
    size_t max_output;    /* bytes of output (also of any captured block); 0: 64 MiB */
    size_t max_memory;    /* bytes the render may allocate; 0: 512 MiB */
    int max_depth;        /* nested macro calls; 0: 64 */
    int64_t now;          /* strftime_now's clock (Unix seconds, local time); 0: the real clock */
} jinja_limits;

/* Parse src (len bytes, valid UTF-8 or an error) of a template called name (used in
 * messages: "<name>:<line>:<col>: ..."). Errors: ERR_DATA. */
int jinja_parse(jinja_template **out, const char *src, size_t len, const char *name);
void jinja_free(jinja_template **t);

/* whether the template has {% generation %} blocks */
bool jinja_has_generation(const jinja_template *t);

typedef struct jinja_span {
    size_t begin, end; /* byte offsets into the output */
} jinja_span;

typedef struct jinja_result {
    char *text; /* NUL-terminated; len bytes */
    size_t len;
    jinja_span *gen; /* the output of each {% generation %} block, in order */
    size_t n_gen;
} jinja_result;

/* Render with the variables of ctx (a JSON object: messages, tools, add_generation_prompt,
 * bos_token, ...). lim may be NULL (defaults). Errors (ERR_DATA): "<name>:<line>:<col>: ..."
 * for runtime errors; raise_exception gives "<name>:<line>:<col>: template error: <message>". */
int jinja_render(const jinja_template *t, const json_t *ctx, const jinja_limits *lim, jinja_result *out);
void jinja_result_free(jinja_result *r);

#endif
