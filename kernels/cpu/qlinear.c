/* qlinear.c: the NF4 linear with its LoRA branch (plain C reference; cuda: qlinear.cu; the
 * lm_head and the cross-entropy are in xent.c, as on cuda).
 *
 * qlinear: y = x W^T + bias + scale * (drop(x) A^T) B^T. W stays 4-bit: QL_TILE rows at a time
 * are dequantized into a small fp32 scratch (ops_nf4_dequant_rows) and used for every token
 * before the next tile, so the whole matrix is never materialised and a tile stays in cache.
 * The forward splits output tiles between threads; the backward splits tokens (each thread
 * dequantizes the tiles it needs: the dequant is 1/T_thread of the multiply-adds).
 * Every matmul-shaped loop goes through cpu_gemm_acc (register-blocked, see ops_cpu.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

#define QL_TILE 32

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
    float *y, *dx, *xa, *g, *xd;
    const float *x, *dy, *At, *Bt;
    const ops_nf4 *W;
    const uint16_t *bias;
    const ops_lora *lora;
    int T, accumulate;
} ql_args;

/* forward over output tiles [lo, hi): y[:, tile] = bias + x tile^T */
static void ql_fwd_tiles(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    int64_t out = a->W->rows, in = a->W->cols;
    float *w = malloc(sizeof(float) * (size_t)(QL_TILE * in)), *wt = malloc(sizeof(float) * (size_t)(QL_TILE * in));
    for (int64_t tile = lo; tile < hi; tile++) {
        int64_t o0 = tile * QL_TILE, no = out - o0 < QL_TILE ? out - o0 : QL_TILE;
        ops_nf4_dequant_rows(a->W, o0, no, w);
        cpu_transpose(wt, w, no, in); /* [in, no]: the GEMM's B */
        float b[QL_TILE] = {0};
        if (a->bias) cpu_bf16_to_f32(b, a->bias + o0, no);
        for (int t = 0; t < a->T; t++) memcpy(a->y + (int64_t)t * out + o0, b, sizeof(float) * (size_t)no);
        cpu_gemm_acc(a->y + o0, out, a->x, in, wt, no, a->T, no, in);
    }
    free(w);
    free(wt);
}

/* drop(x) for rows [lo, hi) into a->xd */
static void ql_drop_rows(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    int64_t in = a->W->cols;
    for (int64_t t = lo; t < hi; t++) lora_drop_row(a->xd + t * in, a->x + t * in, t, in, a->lora);
}

void cpu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                     float *xa, int T) {
    ql_args a = {.y = y, .x = x, .W = W, .bias = bias, .lora = lora, .xa = xa, .T = T};
    int64_t tiles = (W->rows + QL_TILE - 1) / QL_TILE;
    cpu_parallel_for(tiles, (double)T * W->rows * W->cols, ql_fwd_tiles, &a);
    if (!lora) return;
    /* The LoRA branch: xa = drop(x) A^T, y += scale * xa B^T. The first product has only r
     * columns, so it runs transposed (xa^T = A drop(x)^T, r rows and T columns) to keep the
     * GEMM's vector width busy. */
    int64_t r = lora->r, in = W->cols, out = W->rows;
    float *xd = (float *)a.x, *own_xd = NULL;
    if (lora->dropout > 0.0f) {
        xd = a.xd = own_xd = malloc(sizeof(float) * (size_t)(T * in));
        cpu_parallel_for(T, (double)T * in * 8, ql_drop_rows, &a);
    }
    float *xdt = malloc(sizeof(float) * (size_t)(T * in)), *xat = calloc((size_t)(r * T), sizeof(float));
    float *sxa = malloc(sizeof(float) * (size_t)(T * r)), *Bt = malloc(sizeof(float) * (size_t)(out * r));
    cpu_transpose(xdt, xd, T, in);
    cpu_gemm_acc_mt(xat, T, lora->A, in, xdt, T, r, T, in);
    cpu_transpose(sxa, xat, r, T);
    if (xa) memcpy(xa, sxa, sizeof(float) * (size_t)(T * r));
    for (int64_t i = 0; i < T * r; i++) sxa[i] *= lora->scale;
    cpu_transpose(Bt, lora->B, out, r);
    cpu_gemm_acc_mt(a.y, out, sxa, r, Bt, out, T, out, r);
    free(own_xd);
    free(xdt);
    free(xat);
    free(sxa);
    free(Bt);
}

/* backward over tokens [lo, hi): dx = dy W (+ scale * (g A) masked), g = dy B precomputed */
static void ql_bwd_rows(void *ctx, int64_t lo, int64_t hi) {
    const ql_args *a = ctx;
    int64_t out = a->W->rows, in = a->W->cols, n = hi - lo;
    float *dx = a->dx + lo * in;
    if (!a->accumulate) memset(dx, 0, sizeof(float) * (size_t)(n * in));
    float *w = malloc(sizeof(float) * (size_t)(QL_TILE * in));
    for (int64_t o0 = 0; o0 < out; o0 += QL_TILE) {
        int64_t no = out - o0 < QL_TILE ? out - o0 : QL_TILE;
        ops_nf4_dequant_rows(a->W, o0, no, w);
        cpu_gemm_acc(dx, in, a->dy + lo * out + o0, out, w, in, n, in, no);
    }
    free(w);
    const ops_lora *L = a->lora;
    if (!L) return;
    float *tmp = calloc((size_t)(n * in), sizeof(float));
    cpu_gemm_acc(tmp, in, a->g + lo * L->r, L->r, L->A, in, n, in, L->r);
    float keep_scale = L->dropout > 0.0f ? 1.0f / (1.0f - L->dropout) : 1.0f, s = L->scale * keep_scale;
    for (int64_t t = lo; t < hi; t++) {
        const float *tt = tmp + (t - lo) * in;
        float *dxt = a->dx + t * in;
        if (L->dropout <= 0.0f) {
            for (int64_t i = 0; i < in; i++) dxt[i] += s * tt[i];
        } else {
            for (int64_t i = 0; i < in; i++)
                if (ops_dropout_keep(L->dropout_seed, (uint64_t)(t * in + i), L->dropout)) dxt[i] += s * tt[i];
        }
    }
    free(tmp);
}

void cpu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                     const float *xa, int T, int accumulate) {
    ql_args a = {.dx = dx, .dy = dy, .x = x, .W = W, .lora = lora, .xa = (float *)xa, .T = T,
                 .accumulate = accumulate};
    int64_t out = W->rows, in = W->cols;
    if (!lora) {
        cpu_parallel_for(T, (double)T * out * in, ql_bwd_rows, &a);
        return;
    }
    /* g = dy B [T, r], computed transposed (g^T = B^T dy^T: r rows, T columns) like xa forward */
    int64_t r = lora->r;
    float *dyt = malloc(sizeof(float) * (size_t)(out * T)), *Bt = malloc(sizeof(float) * (size_t)(r * out));
    float *gt = calloc((size_t)(r * T), sizeof(float)), *g = malloc(sizeof(float) * (size_t)(T * r));
    cpu_transpose(dyt, a.dy, T, out);
    cpu_transpose(Bt, lora->B, out, r);
    cpu_gemm_acc_mt(gt, T, Bt, out, dyt, T, r, T, out);
    cpu_transpose(g, gt, r, T);
    a.g = g;
    cpu_parallel_for(T, (double)T * out * in, ql_bwd_rows, &a);
    /* dA += scale g^T drop(x) */
    float *xd = (float *)a.x, *own_xd = NULL;
    if (lora->dropout > 0.0f) {
        xd = a.xd = own_xd = malloc(sizeof(float) * (size_t)(T * in));
        cpu_parallel_for(T, (double)T * in * 8, ql_drop_rows, &a);
    }
    for (int64_t i = 0; i < r * T; i++) gt[i] *= lora->scale;
    cpu_gemm_acc_mt(lora->dA, in, gt, T, xd, in, r, in, T);
    /* dB += scale dy^T xa, computed as its transpose (xa^T dy: [r, out]) so the GEMM runs wide */
    float *xat = malloc(sizeof(float) * (size_t)(r * T)), *dbt = calloc((size_t)(r * out), sizeof(float));
    cpu_transpose(xat, xa, T, r);
    cpu_gemm_acc_mt(dbt, out, xat, T, a.dy, out, r, out, T);
    for (int64_t o = 0; o < out; o++)
        for (int64_t j = 0; j < r; j++) lora->dB[o * r + j] += lora->scale * dbt[j * out + o];
    free(dyt);
    free(Bt);
    free(gt);
    free(g);
    free(own_xd);
    free(xat);
    free(dbt);
}
