/* qlinear.c: the NF4 linear with its LoRA branch, and the lm_head + cross-entropy (plain C
 * reference).
 *
 * qlinear: y = x W^T + bias + scale * (drop(x) A^T) B^T. W stays 4-bit: QL_TILE rows at a time
 * are dequantized into a small fp32 scratch (ops_nf4_dequant_rows) and used for every token
 * before the next tile, so the whole matrix is never materialised and a tile stays in cache.
 * The forward splits output tiles between threads; the backward splits tokens (each thread
 * dequantizes the tiles it needs: the dequant is 1/T_thread of the multiply-adds).
 *
 * lm_head + cross-entropy: the vocabulary is walked in XENT_CHUNK-row chunks of E (converted
 * to fp32 once per chunk and thread) with an online softmax (running max and sum), so no [T, V]
 * logits tensor exists; the backward makes a second pass that recomputes each chunk's logits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define QL_TILE 32
#define XENT_CHUNK 128

/* drop(x) for row t into dst: the mask is ops_dropout_keep over the flat index t*in + i */
static void lora_drop_row(float *dst, const float *xt, int64_t t, int64_t in, const ops_lora *lora) {
    if (lora->dropout <= 0.0f) {
        memcpy(dst, xt, sizeof(float) * (size_t)in);
        return;
    }
    float keep_scale = 1.0f / (1.0f - lora->dropout);
    for (int64_t i = 0; i < in; i++)
        dst[i] = ops_dropout_keep(lora->dropout_seed, (uint64_t)(t * in + i), lora->dropout) ? xt[i] * keep_scale : 0.0f;
}

typedef struct ql_args {
    float *y, *dx, *xa, *g;
    const float *x, *dy;
    const ops_nf4 *W;
    const uint16_t *bias;
    const ops_lora *lora;
    int T, accumulate;
} ql_args;

/* forward over output tiles [lo, hi) */
static void ql_fwd_tiles(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    int64_t out = a->W->rows, in = a->W->cols;
    float *w = malloc(sizeof(float) * (size_t)(QL_TILE * in));
    for (int64_t tile = lo; tile < hi; tile++) {
        int64_t o0 = tile * QL_TILE, no = out - o0 < QL_TILE ? out - o0 : QL_TILE;
        ops_nf4_dequant_rows(a->W, o0, no, w);
        for (int t = 0; t < a->T; t++) {
            const float *xt = a->x + (int64_t)t * in;
            float *yt = a->y + (int64_t)t * out + o0;
            for (int64_t o = 0; o < no; o++) {
                float b = 0.0f;
                if (a->bias) {
                    uint32_t u = (uint32_t)a->bias[o0 + o] << 16;
                    memcpy(&b, &u, 4);
                }
                yt[o] = cpu_dot(xt, w + o * in, in) + b;
            }
        }
    }
    free(w);
}

/* the LoRA branch for tokens [lo, hi): xa = drop(x) A^T, y += scale * xa B^T */
static void ql_fwd_lora_rows(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    const ops_lora *L = a->lora;
    int64_t out = a->W->rows, in = a->W->cols, r = L->r;
    float *xd = malloc(sizeof(float) * (size_t)in);
    for (int64_t t = lo; t < hi; t++) {
        lora_drop_row(xd, a->x + t * in, t, in, L);
        float *xat = a->xa + t * r;
        for (int64_t j = 0; j < r; j++) xat[j] = cpu_dot(xd, L->A + j * in, in);
        float *yt = a->y + t * out;
        for (int64_t o = 0; o < out; o++) yt[o] += L->scale * cpu_dot(xat, L->B + o * r, r);
    }
    free(xd);
}

void cpu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                     float *xa, int T) {
    ql_args a = {.y = y, .x = x, .W = W, .bias = bias, .lora = lora, .xa = xa, .T = T};
    int64_t tiles = (W->rows + QL_TILE - 1) / QL_TILE;
    cpu_parallel_for(tiles, (double)T * W->rows * W->cols, ql_fwd_tiles, &a);
    if (!lora) return;
    float *own = NULL;
    if (!a.xa) a.xa = own = malloc(sizeof(float) * (size_t)T * (size_t)lora->r);
    cpu_parallel_for(T, (double)T * lora->r * (W->rows + W->cols), ql_fwd_lora_rows, &a);
    free(own);
}

/* backward over tokens [lo, hi): dx = dy W (+ scale * g A masked), g = dy B precomputed */
static void ql_bwd_rows(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    int64_t out = a->W->rows, in = a->W->cols;
    float *w = malloc(sizeof(float) * (size_t)(QL_TILE * in));
    if (!a->accumulate)
        for (int64_t t = lo; t < hi; t++) memset(a->dx + t * in, 0, sizeof(float) * (size_t)in);
    for (int64_t o0 = 0; o0 < out; o0 += QL_TILE) {
        int64_t no = out - o0 < QL_TILE ? out - o0 : QL_TILE;
        ops_nf4_dequant_rows(a->W, o0, no, w);
        for (int64_t t = lo; t < hi; t++) {
            const float *dyt = a->dy + t * out + o0;
            float *dxt = a->dx + t * in;
            for (int64_t o = 0; o < no; o++)
                if (dyt[o] != 0.0f) cpu_axpy(dxt, dyt[o], w + o * in, in);
        }
    }
    free(w);
    const ops_lora *L = a->lora;
    if (!L) return;
    float *tmp = malloc(sizeof(float) * (size_t)in);
    float keep_scale = L->dropout > 0.0f ? 1.0f / (1.0f - L->dropout) : 1.0f;
    for (int64_t t = lo; t < hi; t++) {
        memset(tmp, 0, sizeof(float) * (size_t)in);
        for (int64_t j = 0; j < L->r; j++) cpu_axpy(tmp, a->g[t * L->r + j], L->A + j * in, in);
        float *dxt = a->dx + t * in;
        for (int64_t i = 0; i < in; i++) {
            int keep = L->dropout <= 0.0f || ops_dropout_keep(L->dropout_seed, (uint64_t)(t * in + i), L->dropout);
            if (keep) dxt[i] += L->scale * keep_scale * tmp[i];
        }
    }
    free(tmp);
}

/* dA rows [lo, hi): dA[j] += scale * sum_t g[t, j] drop(x[t]) */
static void ql_bwd_dA(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    const ops_lora *L = a->lora;
    int64_t in = a->W->cols, r = L->r;
    float *xd = malloc(sizeof(float) * (size_t)in);
    for (int64_t t = 0; t < a->T; t++) {
        lora_drop_row(xd, a->x + t * in, t, in, L);
        for (int64_t j = lo; j < hi; j++) cpu_axpy(L->dA + j * in, L->scale * a->g[t * r + j], xd, in);
    }
    free(xd);
}

/* dB rows [lo, hi): dB[o] += scale * sum_t dy[t, o] xa[t] */
static void ql_bwd_dB(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    const ops_lora *L = a->lora;
    int64_t out = a->W->rows, r = L->r;
    for (int64_t t = 0; t < a->T; t++)
        for (int64_t o = lo; o < hi; o++) cpu_axpy(L->dB + o * r, L->scale * a->dy[t * out + o], a->xa + t * r, r);
}

void cpu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                     const float *xa, int T, int accumulate) {
    ql_args a = {.dx = dx, .dy = dy, .x = x, .W = W, .lora = lora, .xa = (float *)xa, .T = T,
                 .accumulate = accumulate};
    int64_t out = W->rows, in = W->cols;
    if (lora) { /* g = dy B  [T, r] */
        int64_t r = lora->r;
        a.g = calloc((size_t)(T * r), sizeof(float));
        for (int64_t t = 0; t < T; t++)
            for (int64_t o = 0; o < out; o++) cpu_axpy(a.g + t * r, a.dy[t * out + o], lora->B + o * r, r);
    }
    cpu_parallel_for(T, (double)T * out * in, ql_bwd_rows, &a);
    if (lora) {
        cpu_parallel_for(lora->r, (double)T * lora->r * in, ql_bwd_dA, &a);
        cpu_parallel_for(out, (double)T * lora->r * out, ql_bwd_dB, &a);
        free(a.g);
    }
}

/* ---- lm_head + cross-entropy ---- */

typedef struct xent_args {
    float *losses, *dx, *logits;
    const float *x;
    const uint16_t *E;
    const int32_t *target;
    int T, C, V;
    float grad_scale;
} xent_args;

static void xent_rows(void *ctx, int64_t lo, int64_t hi) {
    const xent_args *a = ctx;
    int C = a->C, V = a->V;
    int64_t n = hi - lo;
    float *e = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    float *mx = malloc(sizeof(float) * (size_t)n), *sum = malloc(sizeof(float) * (size_t)n);
    for (int64_t t = 0; t < n; t++) mx[t] = -INFINITY, sum[t] = 0.0f;
    /* pass 1: online softmax statistics; the target's logit is picked up on the way */
    for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
        int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
        cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
        for (int64_t t = 0; t < n; t++) {
            int tg = a->target[lo + t];
            if (tg < 0) continue;
            const float *xt = a->x + (lo + t) * C;
            for (int v = 0; v < nv; v++) {
                float z = cpu_dot(xt, e + (int64_t)v * C, C);
                if (z > mx[t]) {
                    sum[t] = sum[t] * expf(mx[t] - z) + 1.0f;
                    mx[t] = z;
                } else {
                    sum[t] += expf(z - mx[t]);
                }
                if (v0 + v == tg) a->losses[lo + t] = -z; /* completed below */
            }
        }
    }
    for (int64_t t = 0; t < n; t++) {
        if (a->target[lo + t] < 0) {
            a->losses[lo + t] = 0.0f;
            mx[t] = 0.0f; /* lse, reused below */
        } else {
            mx[t] += logf(sum[t]);
            a->losses[lo + t] += mx[t];
        }
    }
    /* pass 2: dx = grad_scale * (softmax - onehot) E */
    if (a->dx) {
        for (int64_t t = 0; t < n; t++) memset(a->dx + (lo + t) * C, 0, sizeof(float) * (size_t)C);
        for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
            int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
            cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
            for (int64_t t = 0; t < n; t++) {
                int tg = a->target[lo + t];
                if (tg < 0) continue;
                const float *xt = a->x + (lo + t) * C;
                float *dxt = a->dx + (lo + t) * C;
                for (int v = 0; v < nv; v++) {
                    float p = expf(cpu_dot(xt, e + (int64_t)v * C, C) - mx[t]);
                    if (v0 + v == tg) p -= 1.0f;
                    cpu_axpy(dxt, a->grad_scale * p, e + (int64_t)v * C, C);
                }
            }
        }
    }
    free(e);
    free(mx);
    free(sum);
}

void cpu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target,
                      int T, int C, int V, float grad_scale) {
    xent_args a = {.losses = losses, .dx = dx, .x = x, .E = E, .target = target, .T = T, .C = C, .V = V,
                   .grad_scale = grad_scale};
    cpu_parallel_for(T, (dx ? 3.0 : 1.0) * T * C * V, xent_rows, &a);
}

static void logits_rows(void *ctx, int64_t lo, int64_t hi) {
    const xent_args *a = ctx;
    int C = a->C, V = a->V;
    float *e = malloc(sizeof(float) * (size_t)XENT_CHUNK * (size_t)C);
    for (int v0 = 0; v0 < V; v0 += XENT_CHUNK) {
        int nv = V - v0 < XENT_CHUNK ? V - v0 : XENT_CHUNK;
        cpu_bf16_to_f32(e, a->E + (int64_t)v0 * C, (int64_t)nv * C);
        for (int64_t t = lo; t < hi; t++)
            for (int v = 0; v < nv; v++) a->logits[t * V + v0 + v] = cpu_dot(a->x + t * C, e + (int64_t)v * C, C);
    }
    free(e);
}

void cpu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V) {
    xent_args a = {.logits = logits, .x = x, .E = E, .T = T, .C = C, .V = V};
    cpu_parallel_for(T, (double)T * C * V, logits_rows, &a);
}
