/* ops.h: the op set of the training engine, one signature per op, two backends.
 *
 * The model (model/llama.c) is written once against this table; ops_cpu() is the plain C
 * reference (kernels/cpu/, the truth CI runs) and ops_cuda() the fast one (kernels/cuda/,
 * checked against the reference on the GPU machine). Every buffer argument lives in the
 * backend's memory (host for cpu, device for cuda), allocated with the table's alloc.
 *
 * Types:
 *  - activations ("act"): the backend's activation type, act_dtype: OPS_F32 on cpu,
 *    OPS_BF16 on cuda. Passed as void *.
 *  - frozen dense weights (embedding, norms, lm_head, biases): bf16 (uint16_t) on both.
 *  - frozen linear weights: NF4 (ops_nf4: packed codes + fp32 absmax, already de-nested
 *    from double quant at load; bitsandbytes layout, first element in the high nibble).
 *  - LoRA A/B: fp32 master weights, fp32 gradients, fp32 AdamW state on both.
 * Shapes use T (tokens in the micro-batch, rows flattened), C (hidden), nh/nkv (heads),
 * hd (head dim), V (vocab). A linear weight is [out, in] and y = x W^T (nn.Linear).
 *
 * Packing: seq_start[t] is the index of the first token of the sequence token t belongs to;
 * attention of t covers [seq_start[t], t] only, and positions restart per sequence (pos[t]).
 *
 * Ownership: the caller owns every buffer; ops allocate nothing but their own scratch,
 * which they keep between calls (no allocation inside a training step after the first). */
#ifndef KERNELS_OPS_H
#define KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ops_dtype { OPS_F32 = 0, OPS_BF16 = 1 };
enum ops_quant { OPS_NF4 = 0, OPS_FP4 = 1 };

typedef struct ops_nf4 {
    const uint8_t *codes; /* (rows*cols+1)/2 bytes */
    const float *absmax;  /* ceil(rows*cols/blocksize) */
    const float *quant_map; /* 16 entries (the table stored in the checkpoint) */
    int64_t rows, cols;   /* out_features, in_features */
    int blocksize;
} ops_nf4;

typedef struct ops_lora {
    float *A;        /* [r, in]  fp32 master */
    float *B;        /* [out, r] fp32 master */
    float *dA, *dB;  /* gradients, accumulated (+=) by backward */
    int r;
    float scale;     /* alpha/r, or alpha/sqrt(r) with rslora */
    float dropout;   /* probability; the mask is a pure function of (seed, index) */
    uint64_t dropout_seed; /* set per layer and micro-step by the caller */
} ops_lora;

typedef struct ops_table {
    const char *name; /* "cpu" | "cuda" */
    int act_dtype;    /* enum ops_dtype */

    /* memory */
    void *(*alloc)(size_t bytes); /* zeroed */
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> backend */
    void (*download)(void *dst, const void *src, size_t bytes); /* backend -> host */
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);

    /* out[t] = table[ids[t]]  (table bf16 [V, C]) */
    void (*embedding_fwd)(void *out, const int32_t *ids, const uint16_t *table, int T, int C);
    /* out = x * rstd * w; rstd[T] saved for backward */
    void (*rmsnorm_fwd)(void *out, float *rstd, const void *x, const uint16_t *w, int T, int C, float eps);
    /* dx += d(out)/dx * dout  (accumulates into dx: the residual stream's gradient) */
    void (*rmsnorm_bwd)(void *dx, const void *dout, const void *x, const uint16_t *w, const float *rstd, int T, int C);
    /* y += x  (residual add), n elements */
    void (*add_inplace)(void *y, const void *x, int64_t n);
    /* in-place rotate_half RoPE on q [T, nh*hd] (heads contiguous) with inv_freq[hd/2] at
     * positions pos[T]; inverse = 1 applies the transpose (backward) */
    void (*rope)(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse);
    /* causal attention inside each packed sequence, GQA (head h reads kv head h/(nh/nkv)).
     * q [T, nh*hd], k/v [T, nkv*hd], out [T, nh*hd], lse [nh, T] (log-sum-exp saved). */
    void (*attention_fwd)(void *out, float *lse, const void *q, const void *k, const void *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd);
    /* dq, dk, dv overwritten */
    void (*attention_bwd)(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                          const void *q, const void *k, const void *v, const int32_t *seq_start,
                          int T, int nh, int nkv, int hd);
    /* out = silu(gate) * up */
    void (*swiglu_fwd)(void *out, const void *gate, const void *up, int64_t n);
    /* dgate, dup overwritten */
    void (*swiglu_bwd)(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n);
    /* y[T, out] = x W^T + bias + scale * (drop(x) A^T) B^T.
     * bias: bf16 [out] or NULL; lora NULL for a frozen-only layer; xa [T, r] (fp32) saved for backward. */
    void (*qlinear_fwd)(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                        float *xa, int T);
    /* dx (overwritten, or accumulated when accumulate=1) = dy W + scale * (dy B) A * dropmask;
     * lora->dA/dB accumulate. No gradient for W or bias (frozen). */
    void (*qlinear_bwd)(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                        const float *xa, int T, int accumulate);
    /* Fused lm_head + cross-entropy + backward, over vocabulary chunks (no [T, V] logits tensor):
     * for each t with target[t] >= 0: loss_sum += -log softmax(x[t] E^T)[target[t]],
     * dx[t] = grad_scale * (softmax - onehot) E; rows with target < 0 get dx = 0.
     * dx may be NULL (evaluation). Returns the summed loss through *loss_sum (fp32 accumulate, double out). */
    void (*xent_fwd_bwd)(double *loss_sum, void *dx, const void *x, const uint16_t *E, const int32_t *target,
                         int T, int C, int V, float grad_scale);
    /* logits[T, V] (fp32, backend memory) = x E^T: evaluation and generation only */
    void (*logits)(float *logits, const void *x, const uint16_t *E, int T, int C, int V);

    /* optimizer over fp32 tensors */
    void (*adamw)(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
    double (*sum_squares)(const float *g, int64_t n);
    void (*scale)(float *g, int64_t n, float s);
} ops_table;

const ops_table *ops_cpu(void);
/* NULL when built without CUDA or when no device is present */
const ops_table *ops_cuda(void);

/* Reference dequantization used by every backend's tests: rows [r0, r0+nr) of W to fp32. */
void ops_nf4_dequant_rows(const ops_nf4 *W, int64_t r0, int64_t nr, float *dst);

#ifdef __cplusplus
}
#endif
#endif
