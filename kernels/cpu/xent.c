/* xent.c: the lm_head + cross-entropy and the plain logits (plain C reference; cuda: xent.cu).
 *
 * The vocabulary is walked in XENT_CHUNK-row chunks of E (converted to fp32 once per chunk and
 * thread) with an online softmax (running max and sum), so no [T, V] logits tensor exists; the
 * backward makes a second pass that recomputes each chunk's logits. The matmuls go through
 * cpu_gemm_acc (register-blocked, see ops_cpu.c). With a soft-cap (Gemma-2's final logits) each
 * logit is cap * tanh(z / cap) wherever it is used, and the gradient of the raw z is the capped
 * logit's times 1 - tanh^2 = 1 - (capped / cap)^2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define XENT_CHUNK 128

/* ---- lm_head + cross-entropy ---- */

typedef struct xent_args {
    float *losses, *dx, *logits;
    const float *x;
    const uint16_t *E;
    const int32_t *target;
    int T, C, V;
    float grad_scale, softcap;
} xent_args;

/* z = cap * tanh(z / cap) over n logits (cap 0: unchanged) */
static void softcap_rows(float *z, int64_t n, float cap) {
    if (cap > 0)
        for (int64_t i = 0; i < n; i++) z[i] = cap * tanhf(z[i] / cap);
}

/* logits of rows [lo, hi) for one vocabulary chunk: L[n, nv] = x E^T (Et: the chunk transposed),
 * soft-capped when asked */
static void xent_chunk_logits(const xent_args *a, int64_t lo, int64_t n, const float *Et, int nv, float *L) {
    memset(L, 0, sizeof(float) * (size_t)(n * nv));
    cpu_gemm_acc(L, nv, a->x + lo * a->C, a->C, Et, nv, n, nv, a->C);
    softcap_rows(L, n * nv, a->softcap);
}

static void xent_rows(void *ctx, int64_t lo, int64_t hi) {
    const xent_args *a = ctx;
    int C = a->C, V = a->V;
    int64_t n = hi - lo;
    float *e = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    float *et = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    float *L = malloc(sizeof(float) * (size_t)(n * XENT_CHUNK));
    float *mx = malloc(sizeof(float) * (size_t)n), *sum = malloc(sizeof(float) * (size_t)n);
    for (int64_t t = 0; t < n; t++) mx[t] = -INFINITY, sum[t] = 0.0f, a->losses[lo + t] = 0.0f;
    /* pass 1: online softmax statistics (running max and sum); the target's logit on the way */
    for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
        int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
        cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
        cpu_transpose(et, e, nv, C);
        xent_chunk_logits(a, lo, n, et, nv, L);
        for (int64_t t = 0; t < n; t++) {
            int tg = a->target[lo + t];
            if (tg < 0) continue;
            const float *z = L + t * nv;
            float cm = mx[t];
            for (int v = 0; v < nv; v++) cm = fmaxf(cm, z[v]);
            float s = sum[t] * expf(mx[t] - cm);
            for (int v = 0; v < nv; v++) s += expf(z[v] - cm);
            mx[t] = cm, sum[t] = s;
            if (tg >= v0 && tg < v0 + nv) a->losses[lo + t] = -z[tg - v0]; /* completed below */
        }
    }
    for (int64_t t = 0; t < n; t++) {
        if (a->target[lo + t] < 0) continue;
        mx[t] += logf(sum[t]); /* now the log-sum-exp */
        a->losses[lo + t] += mx[t];
    }
    /* pass 2: dx = grad_scale * (softmax - onehot) E, chunk by chunk */
    if (a->dx) {
        memset(a->dx + lo * C, 0, sizeof(float) * (size_t)(n * C));
        for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
            int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
            cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
            cpu_transpose(et, e, nv, C);
            xent_chunk_logits(a, lo, n, et, nv, L);
            for (int64_t t = 0; t < n; t++) {
                int tg = a->target[lo + t];
                float *p = L + t * nv;
                if (tg < 0) {
                    memset(p, 0, sizeof(float) * (size_t)nv);
                    continue;
                }
                float cap = a->softcap;
                for (int v = 0; v < nv; v++) {
                    float g = expf(p[v] - mx[t]) - (v0 + v == tg ? 1.0f : 0.0f);
                    if (cap > 0) g *= 1.0f - (p[v] / cap) * (p[v] / cap);
                    p[v] = a->grad_scale * g;
                }
            }
            cpu_gemm_acc(a->dx + lo * C, C, L, nv, e, C, n, C, nv);
        }
    }
    free(e);
    free(et);
    free(L);
    free(mx);
    free(sum);
}

void cpu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target,
                      int T, int C, int V, float grad_scale, float softcap) {
    xent_args a = {.losses = losses, .dx = dx, .x = x, .E = E, .target = target, .T = T, .C = C, .V = V,
                   .grad_scale = grad_scale, .softcap = softcap};
    cpu_parallel_for(T, (dx ? 3.0 : 1.0) * T * C * V, xent_rows, &a);
}

static void logits_rows(void *ctx, int64_t lo, int64_t hi) {
    const xent_args *a = ctx;
    int C = a->C, V = a->V;
    float *e = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    float *et = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    for (int64_t t = lo; t < hi; t++) memset(a->logits + t * V, 0, sizeof(float) * (size_t)V);
    for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
        int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
        cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
        cpu_transpose(et, e, nv, C);
        cpu_gemm_acc(a->logits + lo * V + v0, V, a->x + lo * C, C, et, nv, hi - lo, nv, C);
    }
    softcap_rows(a->logits + lo * V, (hi - lo) * V, a->softcap);
    free(e);
    free(et);
}

void cpu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap) {
    xent_args a = {.logits = logits, .x = x, .E = E, .T = T, .C = C, .V = V, .softcap = softcap};
    cpu_parallel_for(T, (double)T * C * V, logits_rows, &a);
}
