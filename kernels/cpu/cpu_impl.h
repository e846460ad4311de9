/* cpu_impl.h: internals shared by the plain C reference ops (kernels/cpu/), not a public header.
 *
 * Activations are fp32 on this backend, so every `void *` act argument of ops.h is a float *.
 * Work is split over cpu_threads() threads (pthreads; 2 unless QLORA_CPU_THREADS says 1..16)
 * where it pays: the matmul-shaped ops (qlinear, lm_head + cross-entropy, attention). Each op runs
 * a loop body over a range of rows; cpu_parallel_for hands the ranges out and joins before
 * returning, so ops stay synchronous. */
#ifndef KERNELS_CPU_IMPL_H
#define KERNELS_CPU_IMPL_H

#include <stdint.h>
#include <string.h>

#include "kernels/ops.h"

#define CPU_THREADS 2      /* the default */
#define CPU_MAX_THREADS 16
int cpu_threads(void);

/* body(ctx, lo, hi) over [0, n) split into contiguous ranges, one per thread. work is a rough
 * count of multiply-adds: small jobs run on the calling thread alone (a thread costs ~20 us). */
typedef void (*cpu_range_fn)(void *ctx, int64_t lo, int64_t hi);
void cpu_parallel_for(int64_t n, double work, cpu_range_fn body, void *ctx);

/* C[M, N] += A[M, K] B[K, N], row-major with leading dimensions (elements). Register-blocked
 * (4 rows x 16 columns of C held in a local accumulator the compiler keeps in vector registers)
 * and blocked over K so a strip of B stays in cache; edges fall back to plain loops. */
void cpu_gemm_acc(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t M,
                  int64_t N, int64_t K);
/* the same over CPU_THREADS threads, splitting the rows of C, or its columns when M is small */
void cpu_gemm_acc_mt(float *C, int64_t ldc, const float *A, int64_t lda, const float *B, int64_t ldb, int64_t M,
                     int64_t N, int64_t K);
/* dst[cols, rows] = src[rows, cols]^T */
void cpu_transpose(float *dst, const float *src, int64_t rows, int64_t cols);

/* fp32 dot product with independent partial sums (vectorisable without -ffast-math) */
float cpu_dot(const float *a, const float *b, int64_t n);
/* y += a * x */
void cpu_axpy(float *y, float a, const float *x, int64_t n);
void cpu_bf16_to_f32(float *dst, const uint16_t *src, int64_t n);

static inline float bf16f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* the ops, each in the file named as its CUDA kernels' file: elementwise.c */
void cpu_embedding_fwd(void *out, const int32_t *ids, const uint16_t *table, int T, int C);
void cpu_rmsnorm_fwd(void *out, float *rstd, const void *x, const uint16_t *w, float w_add, int T, int C, float eps);
void cpu_rmsnorm_bwd(void *dx, const void *dout, const void *x, const uint16_t *w, float w_add, const float *rstd,
                     int T, int C);
void cpu_add_inplace(void *y, const void *x, int64_t n);
void cpu_rope(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse);
void cpu_rope_ex(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                 int inverse);
void cpu_swiglu_fwd(void *out, const void *gate, const void *up, int64_t n);
void cpu_swiglu_bwd(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n);
void cpu_geglu_fwd(void *out, const void *gate, const void *up, int64_t n);
void cpu_geglu_bwd(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n);
void cpu_act_scale(void *x, int64_t n, float s);
/* optim.c */
void cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2, float eps,
               float weight_decay, int step);
double cpu_sum_squares(const float *g, int64_t n);
void cpu_scale(float *g, int64_t n, float s);
/* attention.c, qlinear.c, xent.c */
void cpu_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                       const int32_t *seq_start, int T, int nh, int nkv, int hd);
void cpu_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                       const void *q, const void *k, const void *v, const int32_t *seq_start,
                       int T, int nh, int nkv, int hd);
void cpu_attention_cached(void *out, const void *q, const void *kcache, const void *vcache,
                          int Tq, int Tk, int nh, int nkv, int hd);
void cpu_attention_ex_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt);
void cpu_attention_ex_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                          const void *q, const void *k, const void *v, const int32_t *seq_start,
                          int T, int nh, int nkv, int hd, const ops_attn *opt);
void cpu_attention_ex_cached(void *out, const void *q, const void *kcache, const void *vcache,
                             int Tq, int Tk, int nh, int nkv, int hd, const ops_attn *opt);
void cpu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                     float *xa, int T);
void cpu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                     const float *xa, int T, int accumulate);
void cpu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target,
                      int T, int C, int V, float grad_scale, float softcap);
void cpu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap);

#endif
