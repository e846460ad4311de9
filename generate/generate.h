/* generate.h: text generation with the engine's KV cache.
 *
 * generate_ids runs the prompt through the model once (filling the cache), then draws one
 * token at a time with model/sample.c until max_new_tokens, the EOS id, or the stop
 * callback says so. generate_text wraps it with the tokenizer: encodes the prompt (BOS as
 * the tokenizer's config says), decodes the new tokens, and cuts the text at the first
 * stop string (which is not included), as transformers' stop_strings do.
 * Ownership: *out arrays and strings are malloc'd; the caller frees them. */
#ifndef MODEL_GENERATE_H
#define MODEL_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "model/llama.h"
#include "generate/sample.h"
#include "tokenizer/tokenizer.h"

typedef struct gen_opts {
    sample_opts sample;
    int max_new_tokens;
    int32_t eos_id;            /* -1: none */
    const char *const *stop;   /* stop strings (generate_text) */
    int n_stop;
} gen_opts;

/* ids generated after the prompt (EOS not included); *n_out may be 0 */
int generate_ids(llama_model *m, const int32_t *prompt, int n_prompt, const gen_opts *o,
                 bool (*stop)(void *ud, const int32_t *ids, int n), void *stop_ud, int32_t **out, int *n_out);

/* the continuation of already-tokenized prompt ids as text, cut at the first stop string */
int generate_text_ids(llama_model *m, const tokenizer *tok, const int32_t *ids, int n, const gen_opts *o, char **text,
                      int *n_tokens);
/* the continuation of prompt as text; *n_tokens: tokens generated (may be NULL) */
int generate_text(llama_model *m, const tokenizer *tok, const char *prompt, const gen_opts *o, char **text,
                  int *n_tokens);

/* s with invalid UTF-8 replaced by U+FFFD (malloc'd; NULL when out of memory) */
char *generate_utf8_lossy(const char *s);

#endif
