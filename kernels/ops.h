/* ops.h: the op set of the training engine, one signature per op, two backends.
 *
 * The model (model/llama.c) is written once against this table; ops_cpu() is the plain C
 * reference (kernels/cpu/, the truth CI runs) and ops_cuda() the fast one (kernels/cuda/,
 * checked against the reference on the GPU machine). Every buffer argument lives in the
 * backend's memory (host for cpu, device for cuda), allocated with the table's alloc; the
 * model never dereferences one (it may offset a pointer by whole rows, e.g. into a KV cache).
 * Struct arguments (ops_nf4, ops_lora) are host structs holding backend pointers.
 *
 * Types:
 *  - activations ("act"): the backend's activation type, act_dtype: OPS_F32 on cpu,
 *    OPS_BF16 on cuda. Passed as void *; an act buffer of n elements is n * ops_act_size().
 *  - frozen dense weights (embedding, norms, lm_head, biases): bf16 (uint16_t) on both.
 *  - frozen linear weights: NF4 (ops_nf4: packed codes + a scale per block, either fp32 absmax
 *    or bitsandbytes' double-quantized form kept as stored: 1 byte a block plus an fp32 scale per
 *    256 blocks, de-nested block by block inside the ops; bitsandbytes layout, first element in
 *    the high nibble).
 *  - LoRA A/B: fp32 master weights, fp32 gradients, fp32 AdamW state on both.
 *  - small per-token side arrays (rstd, lse, xa, losses): fp32 on both.
 * Shapes use T (tokens in the micro-batch, rows flattened), C (hidden), nh/nkv (heads),
 * hd (head dim), V (vocab). A linear weight is [out, in] and y = x W^T (nn.Linear).
 * Integer arrays (ids, pos, seq_start, target) are int32 in backend memory.
 *
 * Packing: seq_start[t] is the index of the first token of the sequence token t belongs to;
 * attention of t covers [seq_start[t], t] only, and positions restart per sequence (pos[t]).
 *
 * LoRA dropout: element i of the [T, in] input of a LoRA branch is kept when
 * ops_dropout_keep(seed, i, p) (below; a pure function, so forward, backward, recompute and
 * both backends draw the same mask) and then scaled by 1/(1-p), as torch.nn.Dropout does.
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

#ifdef __CUDACC__
#define OPS_HD __host__ __device__
#else
#define OPS_HD
#endif

enum ops_dtype { OPS_F32 = 0, OPS_BF16 = 1 };
enum ops_quant { OPS_NF4 = 0, OPS_FP4 = 1 };

typedef struct ops_nf4 {
    const uint8_t *codes;   /* (rows*cols+1)/2 bytes */
    const float *absmax;    /* ceil(rows*cols/blocksize); NULL when absmax_q is set */
    const float *quant_map; /* 16 entries (the table stored in the checkpoint) */
    int64_t rows, cols;     /* out_features, in_features */
    int blocksize;
    /* double quant (bitsandbytes' compress_statistics), used when absmax_q is not NULL:
     * absmax[b] = nested_map[absmax_q[b]] * nested_absmax[b / 256] + nested_offset, the product
     * and the sum rounded separately to fp32 (ops_nf4_block_scale) */
    const uint8_t *absmax_q;     /* ceil(rows*cols/blocksize) */
    const float *nested_absmax;  /* ceil(blocks / 256) */
    const float *nested_map;     /* 256 entries (bitsandbytes' dynamic map) */
    float nested_offset;
    /* not quantized at all when set: rows*cols values in the backend's activation dtype (fp32 on
     * cpu, bf16 on cuda), row-major; codes and scales unused. A float model run as it is
     * (generation of a merged export), through the same ops. */
    const void *dense;
} ops_nf4;

/* the scale of block b of a host-memory W (either form; not for a dense W) */
static inline float ops_nf4_block_scale(const ops_nf4 *W, int64_t b) {
    if (!W->absmax_q) return W->absmax[b];
    float v = W->nested_map[W->absmax_q[b]] * W->nested_absmax[b / 256];
    return v + W->nested_offset;
}

typedef struct ops_lora {
    float *A;        /* [r, in]  fp32 master */
    float *B;        /* [out, r] fp32 master */
    float *dA, *dB;  /* gradients, accumulated (+=) by backward */
    int r;
    float scale;     /* alpha/r, or alpha/sqrt(r) with rslora */
    float dropout;   /* probability p in [0, 1); 0 disables (evaluation, generation) */
    uint64_t dropout_seed; /* set per layer, module and micro-step by the caller */
} ops_lora;

/* The dropout hash: splitmix64's finaliser over seed and index (both backends use this one).
 * keep when the top 24 bits, as a uniform in [0, 1), are >= p. */
static inline OPS_HD uint64_t ops_hash_u64(uint64_t seed, uint64_t i) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + i * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline OPS_HD int ops_dropout_keep(uint64_t seed, uint64_t i, float p) {
    return (float)(ops_hash_u64(seed, i) >> 40) * (1.0f / 16777216.0f) >= p;
}

/* What a backend says about its device (ops_table.info): what callers would otherwise learn by
 * comparing the table's name. */
typedef struct ops_backend_info {
    char name[256];                 /* the device's name; the backend's name when it has none */
    double total_bytes, free_bytes; /* the device's own memory (cudaMemGetInfo); 0 on cpu */
    double live_bytes, peak_bytes;  /* allocated through the table and the ops' scratch */
    const char *attention;          /* the attention kernels in use ("mma" | "tiled"), or "" */
    size_t scratch_cap;             /* the cap scratch_cap_set set: 0 when uncapped */
    int deterministic;              /* 1 when every op sums in a fixed order (always 1 on cpu) */
    double det_attn_workspace_cap;  /* deterministic mode: the most attention's backward takes as a
                                     * workspace of 2 h s^2 bytes a sequence (cuDNN's dS buffer) beyond
                                     * the plan; 0 when it takes none */
    char driver[64];                /* the GPU driver's release ("580.159.04"); "" on cpu */
    int cuda_driver, cuda_runtime;  /* CUDA versions as CUDA writes them (13000 = 13.0); 0 on cpu */
    double host_free_bytes;         /* a device's backend: the host RAM its pinned allocations (alloc_host)
                                     * may still take; 0: not known (model/device.h's
                                     * device_host_free_bytes then reads MemAvailable) */
} ops_backend_info;

/* what the _ex attention ops add to plain causal attention (all zero: the same as attention_fwd)
 *  window:  sliding window: key s is visible to query t only when t - s < window (0: none), as
 *           transformers' sliding-window masks (Mistral, Qwen2/3 with use_sliding_window, Gemma)
 *  scale:   the score scale (0: 1/sqrt(hd)); Gemma's is query_pre_attn_scalar^-0.5
 *  softcap: Gemma-2's attention soft-capping, score = softcap * tanh(score / softcap) (0: none) */
typedef struct ops_attn {
    int window;
    float scale;
    float softcap;
} ops_attn;

typedef struct ops_table {
    const char *name; /* "cpu" | "cuda": for messages and the resolved `device`, not for questions */
    int act_dtype;    /* enum ops_dtype */

    /* memory */
    void *(*alloc)(size_t bytes); /* zeroed; NULL when out of memory */
    void (*free)(void *p);
    void (*upload)(void *dst, const void *src, size_t bytes);   /* host -> backend */
    void (*download)(void *dst, const void *src, size_t bytes); /* backend -> host */
    void (*copy)(void *dst, const void *src, size_t bytes);     /* backend -> backend */
    void (*zero)(void *p, size_t bytes);
    void (*sync)(void);
    /* Host memory the ops also accept as a backend buffer (zeroed; NULL when it cannot be had):
     * plain memory on cpu; on cuda pinned, device-mapped host memory whose pointer is valid on
     * both sides (unified addressing), so a kernel reads and writes it over PCIe with no copy and
     * it takes no device memory. The host may memcpy it only after sync(); upload, download,
     * copy and zero accept it too. Freed with free_host (which waits for the ops in flight).
     * For state a step streams over once (the AdamW m and v: the "paged optimizer" saving). */
    void *(*alloc_host)(size_t bytes);
    void (*free_host)(void *p);

    /* out[t] = table[ids[t]]  (table bf16 [V, C]) */
    void (*embedding_fwd)(void *out, const int32_t *ids, const uint16_t *table, int T, int C);
    /* out = x * rstd * (w_add + w), the scale summed in fp32 (Gemma's (1 + w): w_add 1; else 0);
     * rstd[T] saved for backward */
    void (*rmsnorm_fwd)(void *out, float *rstd, const void *x, const uint16_t *w, float w_add, int T, int C,
                        float eps);
    /* dx += d(out)/dx * dout  (accumulates into dx: the residual stream's gradient) */
    void (*rmsnorm_bwd)(void *dx, const void *dout, const void *x, const uint16_t *w, float w_add, const float *rstd,
                        int T, int C);
    /* y += x  (residual add), n elements */
    void (*add_inplace)(void *y, const void *x, int64_t n);
    /* in-place rotate_half RoPE on rows of q [T, ld] (nh heads of hd, contiguous from the row start;
     * ld = nh*hd) with inv_freq[hd/2] (fp32, computed by the model incl. rope scaling) at positions
     * pos[T]: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) for dims (j, j+hd/2).
     * inverse = 1 applies the transpose (the backward). */
    void (*rope)(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse);
    /* causal attention inside each packed sequence, GQA (head h reads kv head h/(nh/nkv)),
     * softmax scale 1/sqrt(hd). q [T, nh*hd], k/v [T, nkv*hd], out [T, nh*hd],
     * lse [nh, T] (natural-log log-sum-exp of the scaled scores, saved for backward). */
    void (*attention_fwd)(void *out, float *lse, const void *q, const void *k, const void *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd);
    /* dq, dk, dv overwritten */
    void (*attention_bwd)(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                          const void *q, const void *k, const void *v, const int32_t *seq_start,
                          int T, int nh, int nkv, int hd);
    /* generation with a KV cache (one sequence): q [Tq, nh*hd] are the last Tq of Tk positions,
     * k/v cache [Tk, nkv*hd]; query i attends to keys [0, Tk-Tq+i]. out [Tq, nh*hd]. */
    void (*attention_cached)(void *out, const void *q, const void *kcache, const void *vcache,
                             int Tq, int Tk, int nh, int nkv, int hd);
    /* out = silu(gate) * up */
    void (*swiglu_fwd)(void *out, const void *gate, const void *up, int64_t n);
    /* dgate, dup overwritten; they may be gate and up themselves (in place) */
    void (*swiglu_bwd)(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n);
    /* y[T, out] = x W^T + bias + scale * (drop(x) A^T) B^T, W dequantized tile by tile.
     * bias: bf16 [out] or NULL; lora NULL for a frozen-only layer; xa [T, r] (fp32) receives
     * drop(x) A^T for the backward (NULL when no backward follows). */
    void (*qlinear_fwd)(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                        float *xa, int T);
    /* dx (overwritten, or accumulated when accumulate=1) = dy W + scale * ((dy B) A) * dropmask/(1-p);
     * lora->dA += scale * (dy B)^T drop(x), lora->dB += scale * dy^T xa. No gradient for W or bias. */
    void (*qlinear_bwd)(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                        const float *xa, int T, int accumulate);
    /* Fused lm_head + cross-entropy (+ backward), over vocabulary chunks (no [T, V] logits tensor):
     * for each t with target[t] >= 0: losses[t] = -log softmax(x[t] E^T)[target[t]],
     * dx[t] = grad_scale * (softmax - onehot) E; rows with target < 0 get losses[t] = 0, dx[t] = 0.
     * losses [T] fp32 in backend memory (the model sums it in double on the host);
     * dx may be NULL (evaluation). E bf16 [V, C].
     * softcap > 0: Gemma-2's final logit soft-capping, every logit z = x E^T taken as
     * softcap * tanh(z / softcap) (the loss's softmax, and dx through its 1 - tanh^2); 0: none. */
    void (*xent_fwd_bwd)(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target,
                         int T, int C, int V, float grad_scale, float softcap);
    /* logits[T, V] (fp32, backend memory) = x E^T, soft-capped as above when softcap > 0:
     * evaluation and generation only */
    void (*logits)(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap);

    /* optimizer over fp32 tensors, torch.optim.AdamW semantics (step counts from 1):
     * p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= (lr / (1-b1^step)) * m / (sqrt(v) / sqrt(1-b2^step) + eps) */
    void (*adamw)(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
    double (*sum_squares)(const float *g, int64_t n); /* sum of g^2 in double */
    void (*scale)(float *g, int64_t n, float s);      /* g *= s */

    /* The family ops (sliding window, Gemma, phi3's rotary): both backends have them. An op added
     * later may be NULL in a backend that lacks it; the model then refuses a configuration that
     * needs it before it runs (llama_init names the op and the backend), and the op stays outside
     * OPS_TABLE_OPS (below) until the cuda table has it and test_ops_gpu checks it. */
    /* attention_fwd / _bwd / _cached with the ops_attn options (host struct; head dims up to 256) */
    void (*attention_ex_fwd)(void *out, float *lse, const void *q, const void *k, const void *v,
                             const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt);
    void (*attention_ex_bwd)(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                             const void *q, const void *k, const void *v, const int32_t *seq_start,
                             int T, int nh, int nkv, int hd, const ops_attn *opt);
    void (*attention_ex_cached)(void *out, const void *q, const void *kcache, const void *vcache,
                                int Tq, int Tk, int nh, int nkv, int hd, const ops_attn *opt);
    /* out = gelu_tanh(gate) * up (torch's gelu(approximate="tanh")); the backward as swiglu_bwd's */
    void (*geglu_fwd)(void *out, const void *gate, const void *up, int64_t n);
    void (*geglu_bwd)(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n);
    /* x *= s over n activations (Gemma's embedding scale) */
    void (*act_scale)(void *x, int64_t n, float s);
    /* rope over the first rot dims of each head only (j pairs with j + rot/2, inv_freq[rot/2]), the
     * rest passing unchanged, cos and sin multiplied by mscale (phi3's partial rotary and longrope's
     * attention factor); inverse = 1 applies the transpose (times mscale). rot = hd, mscale = 1: rope. */
    void (*rope_ex)(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                    int inverse);
    /* seq_start [T] (backend memory) now holds h_seq_start [T] (host): called by the model after
     * each upload, so that the backend can pick an attention kernel for the layout without reading
     * device memory back (the CUDA backend runs equal-length sequences on cuDNN's fused attention) */
    void (*attention_layout)(const int32_t *seq_start, const int32_t *h_seq_start, int T);
    /* questions about the backend (last, so the positional CUDA table stays readable) */
    int own_memory; /* 1: memory apart from the host's (a GPU): plans must fit it, and alloc_host
                       is host memory distinct from alloc's; 0: backend memory is host memory */
    /* fill out with the device's name, memory and kernels; NULL: only name, the rest 0 / "" */
    void (*info)(ops_backend_info *out);
    /* cap the ops' largest scratch (the dequantized weight, shared with the cross-entropy chunk
     * and attention's dq) at bytes, 0 lifting the cap; NULL: the backend has no such scratch */
    void (*scratch_cap_set)(size_t bytes);
    /* Copies beside the compute (activation offload, model/llama.c): side_copy queues a copy of
     * bytes from src to dst (backend or alloc_host memory) that starts once the work queued so far
     * has run and overlaps the work queued after it; side_wait(slot) makes the work queued after
     * it wait until the last copy queued on that slot (0..OPS_SIDE_SLOTS-1) has ended. Copies run
     * in the order they were queued. The CPU copies at once (a test of the bookkeeping). */
    void (*side_copy)(int slot, void *dst, const void *src, size_t bytes);
    void (*side_wait)(int slot);
    /* deterministic mode (docs/determinism.md): on, every op reduces in a fixed order, so equal
     * inputs give equal bits run after run; 0, or -1 with the reason in why (naming the op or
     * kernel without a fixed-order form) when the backend cannot honour it. NULL: the backend is
     * deterministic always (cpu: its reductions run in a fixed order whatever the thread count). */
    int (*deterministic_set)(int on, char *why, size_t cap);
    /* Optional: the whole of W (NF4, either form of scales) dequantized into dst (backend memory:
     * rows*cols values in the activation dtype, row-major), each value the one qlinear_fwd's tiles
     * hold, bit for bit. A model may then keep them as W's dense copy (ops_nf4.dense) and skip the
     * dequantization in every forward (inference only: llama_dense_weights). */
    void (*nf4_dequant)(void *dst, const ops_nf4 *W);
    /* Optional: in deterministic mode, lower the workspace attention's backward may take to bytes
     * (ops_backend_info.det_attn_workspace_cap reports it; 0 restores the backend's default): a
     * memory plan with less room than that workspace trades it for more, smaller calls. */
    void (*det_workspace_cap_set)(double bytes);
    /* Optional, outside deterministic mode: attention's own workspace beside the plan (cuDNN's;
     * with grouped-query heads its backward keeps dK and dV for every q head). attn_workspace: the
     * bytes the forward or backward of one sequence of T tokens takes (0: none; windowed: the
     * model has sliding-window layers); attn_workspace_cap_set: the most any call may take (0: no
     * cap), a layout that would take more (a packed batch's padded shape) running on kernels
     * whose scratch llama_token_scratch_bytes counts. */
    double (*attn_workspace)(int T, int nh, int nkv, int hd, int windowed);
    void (*attn_workspace_cap_set)(double bytes);
} ops_table;
#define OPS_SIDE_SLOTS 8

/* Every op of the table, in table order: the function pointers from embedding_fwd to rope_ex. A
 * static assertion (ops_cpu.c) keeps the list and the struct in step, and test_ops_gpu fails for
 * an op of the list that it does not check against the reference. */
#define OPS_TABLE_OPS(X)                                                                                    \
    X(embedding_fwd) X(rmsnorm_fwd) X(rmsnorm_bwd) X(add_inplace) X(rope) X(attention_fwd) X(attention_bwd) \
    X(attention_cached) X(swiglu_fwd) X(swiglu_bwd) X(qlinear_fwd) X(qlinear_bwd) X(xent_fwd_bwd) X(logits)  \
    X(adamw) X(sum_squares) X(scale) X(attention_ex_fwd) X(attention_ex_bwd) X(attention_ex_cached) X(geglu_fwd)   \
    X(geglu_bwd) X(act_scale) X(rope_ex)

static inline size_t ops_act_size(const ops_table *ops) { return ops->act_dtype == OPS_F32 ? 4 : 2; }

const ops_table *ops_cpu(void);
/* NULL when built without CUDA or when no device is present */
const ops_table *ops_cuda(void);

/* Reference dequantization used by every backend's tests: rows [r0, r0+nr) of W to fp32
 * (host memory; kernels/cpu/nf4.c, the nf4 helper's). */
void ops_nf4_dequant_rows(const ops_nf4 *W, int64_t r0, int64_t nr, float *dst);

#ifdef __cplusplus
}
#endif
#endif
