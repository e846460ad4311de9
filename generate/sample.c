/* sample.c: logits processors and the draw (see sample.h). */
#include "generate/sample.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

int sampler_init(sampler *s, int V, const sample_opts *o) {
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->V = V;
    rng_seed(&s->rng, o->seed);
    s->probs = malloc((size_t)V * sizeof *s->probs);
    s->idx = malloc((size_t)V * sizeof *s->idx);
    s->seen = malloc((size_t)V);
    if (!s->probs || !s->idx || !s->seen) {
        sampler_free(s);
        return err_set(ERR_STAGE, "out of memory for a sampler over %d tokens", V);
    }
    return 0;
}

void sampler_free(sampler *s) {
    free(s->probs);
    free(s->idx);
    free(s->seen);
    memset(s, 0, sizeof *s);
}

/* descending by probability, ties by id (deterministic) */
static const float *sort_probs;
static int cmp_desc(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (sort_probs[i] != sort_probs[j]) return sort_probs[i] > sort_probs[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

int32_t sampler_next(sampler *s, float *logits, const int32_t *history, int n_history) {
    const int V = s->V;
    if (s->o.repetition_penalty != 1.0f && s->o.repetition_penalty > 0) {
        memset(s->seen, 0, (size_t)V);
        for (int i = 0; i < n_history; i++)
            if (history[i] >= 0 && history[i] < V) s->seen[history[i]] = 1;
        for (int v = 0; v < V; v++)
            if (s->seen[v])
                logits[v] = logits[v] > 0 ? logits[v] / s->o.repetition_penalty : logits[v] * s->o.repetition_penalty;
    }
    int32_t best = 0;
    for (int v = 1; v < V; v++)
        if (logits[v] > logits[best]) best = v;
    if (s->o.temperature <= 0) return best;

    /* softmax at the temperature */
    double z = 0;
    for (int v = 0; v < V; v++) {
        double e = exp((double)(logits[v] - logits[best]) / s->o.temperature);
        s->probs[v] = (float)e;
        z += e;
    }
    for (int v = 0; v < V; v++) s->probs[v] = (float)(s->probs[v] / z);
    int n = V;
    for (int v = 0; v < V; v++) s->idx[v] = v;
    bool filter = (s->o.top_k > 0 && s->o.top_k < V) || (s->o.top_p > 0 && s->o.top_p < 1);
    if (filter) {
        sort_probs = s->probs;
        qsort(s->idx, (size_t)V, sizeof *s->idx, cmp_desc);
        if (s->o.top_k > 0 && s->o.top_k < n) n = s->o.top_k;
        if (s->o.top_p > 0 && s->o.top_p < 1) {
            /* renormalise over the top-k survivors first, as the processors chain does */
            double kept = 0;
            for (int i = 0; i < n; i++) kept += s->probs[s->idx[i]];
            double cum = 0;
            int m = 0;
            while (m < n && cum < s->o.top_p * kept) cum += s->probs[s->idx[m++]];
            n = m > 0 ? m : 1;
        }
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += s->probs[s->idx[i]];
    double u = (double)rng_next_uniform(&s->rng) * total, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[s->idx[i]];
        if (u < acc) return s->idx[i];
    }
    return s->idx[n - 1];
}
