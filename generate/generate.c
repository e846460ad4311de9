/* generate.c: KV-cache generation loop and stop strings (see generate.h). */
#define _GNU_SOURCE
#include "generate/generate.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/utf8.h"

int generate_ids(llama_model *m, const int32_t *prompt, int n_prompt, const gen_opts *o,
                 bool (*stop)(void *ud, const int32_t *ids, int n), void *stop_ud, int32_t **out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    if (n_prompt < 1) return err_set(ERR_USAGE, "an empty prompt: nothing to continue");
    int max_len = n_prompt + (o->max_new_tokens > 0 ? o->max_new_tokens : 0);
    if (m->cfg.max_position_embeddings > 0 && max_len > m->cfg.max_position_embeddings)
        max_len = (int)m->cfg.max_position_embeddings;
    if (n_prompt >= max_len && o->max_new_tokens > 0)
        return err_set(ERR_USAGE, "the prompt has %d tokens, the model's context is %lld", n_prompt,
                       (long long)m->cfg.max_position_embeddings);
    int32_t *hist = malloc(sizeof(int32_t) * (size_t)(max_len + 1));
    float *logits = malloc(sizeof(float) * (size_t)m->V);
    sampler s = {0};
    int rc = (!hist || !logits) ? err_set(ERR_STAGE, "out of memory for generation") : 0;
    if (!rc) rc = sampler_init(&s, m->V, &o->sample);
    if (!rc) rc = llama_generate_begin(m, max_len);
    if (!rc) {
        memcpy(hist, prompt, sizeof(int32_t) * (size_t)n_prompt);
        rc = llama_decode(m, prompt, n_prompt, logits);
    }
    int n = n_prompt;
    while (!rc && n < max_len) {
        int32_t next = sampler_next(&s, logits, hist, n);
        if (next == o->eos_id) break;
        hist[n++] = next;
        if (stop && stop(stop_ud, hist + n_prompt, n - n_prompt)) break;
        if (n < max_len) rc = llama_decode(m, &next, 1, logits);
    }
    sampler_free(&s);
    free(logits);
    if (rc) {
        free(hist);
        return rc;
    }
    *n_out = n - n_prompt;
    memmove(hist, hist + n_prompt, sizeof(int32_t) * (size_t)*n_out);
    *out = hist;
    return 0;
}

typedef struct stop_state {
    const tokenizer *tok;
    const gen_opts *o;
} stop_state;

/* the earliest occurrence of any stop string in text, or -1 */
static long find_stop(const gen_opts *o, const char *text) {
    long best = -1;
    for (int i = 0; i < o->n_stop; i++) {
        if (!o->stop[i][0]) continue;
        const char *p = strstr(text, o->stop[i]);
        if (p && (best < 0 || p - text < best)) best = p - text;
    }
    return best;
}

static bool stop_check(void *ud, const int32_t *ids, int n) {
    stop_state *st = ud;
    char *text = NULL;
    size_t len = 0;
    if (tokenizer_decode(st->tok, ids, (size_t)n, true, &text, &len)) return false;
    long at = find_stop(st->o, text);
    free(text);
    return at >= 0;
}

/* Invalid UTF-8 (a byte token cut a character, or a model emitting junk) becomes U+FFFD, as
 * the tokenizers library's lossy decode does, so the text is safe for JSON and terminals. */
char *generate_utf8_lossy(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1), *p = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n;) {
        size_t ok = utf8_valid_prefix(s + i, n - i);
        memcpy(p, s + i, ok);
        p += ok;
        i += ok;
        if (i < n) { /* one replacement character a bad byte */
            memcpy(p, "\xEF\xBF\xBD", 3);
            p += 3;
            i++;
        }
    }
    *p = 0;
    return o;
}

int generate_text_ids(llama_model *m, const tokenizer *tok, const int32_t *ids, int n, const gen_opts *o, char **text,
                      int *n_tokens) {
    *text = NULL;
    int32_t *gen = NULL;
    int ng = 0;
    stop_state st = {.tok = tok, .o = o};
    int rc = generate_ids(m, ids, n, o, o->n_stop ? stop_check : NULL, &st, &gen, &ng);
    size_t len = 0;
    if (!rc) rc = tokenizer_decode(tok, gen, (size_t)ng, true, text, &len);
    if (!rc) {
        long at = find_stop(o, *text);
        if (at >= 0) (*text)[at] = 0;
        char *clean = generate_utf8_lossy(*text);
        free(*text);
        *text = clean;
        if (!clean) rc = err_set(ERR_STAGE, "out of memory");
    }
    if (n_tokens) *n_tokens = ng;
    free(gen);
    return rc;
}

int generate_text(llama_model *m, const tokenizer *tok, const char *prompt, const gen_opts *o, char **text,
                  int *n_tokens) {
    *text = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(tok, prompt, strlen(prompt), true, &ids, &n);
    if (!rc) rc = generate_text_ids(m, tok, ids, (int)n, o, text, n_tokens);
    free(ids);
    return rc;
}
