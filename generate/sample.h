/* sample.h: choose the next token from logits, as transformers' generate does.
 *
 * The order of the logits processors is transformers': repetition penalty (a seen token's
 * logit is divided by the penalty when positive, multiplied when negative), then
 * temperature, top-k, top-p (keep the smallest set of most likely tokens whose probability
 * reaches top_p; at least one), then a draw. temperature <= 0 means greedy (argmax after
 * the repetition penalty). Draws come from an rng_state seeded once, so a seed gives the
 * same text on every run. Ownership: sampler_init/sampler_free. */
#ifndef MODEL_SAMPLE_H
#define MODEL_SAMPLE_H

#include <stdint.h>

#include "core/rng.h"

typedef struct sample_opts {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float repetition_penalty; /* 1: off */
    uint64_t seed;
} sample_opts;

#define SAMPLE_OPTS_GREEDY ((sample_opts){.temperature = 0, .top_k = 0, .top_p = 1, .repetition_penalty = 1})

typedef struct sampler {
    sample_opts o;
    int V;
    rng_state rng;
    float *probs;  /* [V] scratch */
    int32_t *idx;  /* [V] scratch */
    uint8_t *seen; /* [V] */
} sampler;

int sampler_init(sampler *s, int V, const sample_opts *o);
void sampler_free(sampler *s);
/* logits [V] (modified in place); history: the ids so far (prompt and generated) */
int32_t sampler_next(sampler *s, float *logits, const int32_t *history, int n_history);

#endif
