// launch.cuh: the launchers of the CUDA backend, one per kernel, each on cuda_stream().
// Internal to kernels/cuda (C++ linkage); ops_cuda.cu binds them into the op table, with the
// entries of the ops that are compositions of GEMMs and kernels (qlinear.cu, xent.cu).
#ifndef KERNELS_CUDA_LAUNCH_CUH
#define KERNELS_CUDA_LAUNCH_CUH

#include "common.cuh"
#include "kernels/ops.h"

// elementwise.cu
void launch_embedding_fwd(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C);
void launch_rmsnorm_fwd(bf16 *out, float *rstd, const bf16 *x, const bf16 *w, float wadd, int T, int C, float eps);
void launch_rmsnorm_bwd(bf16 *dx, const bf16 *dout, const bf16 *x, const bf16 *w, float wadd, const float *rstd, int T,
                        int C);
void launch_add_inplace(bf16 *y, const bf16 *x, int64_t n);
void launch_rope(bf16 *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse);
// the first rot dims of each head only, cos and sin times mscale (ops.h rope_ex)
void launch_rope_ex(bf16 *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                    int inverse);
void launch_swiglu_fwd(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n);
void launch_swiglu_bwd(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up, int64_t n);
void launch_geglu_fwd(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n);
void launch_geglu_bwd(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up, int64_t n);
void launch_act_scale(bf16 *x, int64_t n, float s);
void launch_f32_to_bf16(bf16 *dst, const float *src, int64_t n);
// the same over k (1..4) arrays in one launch: dst[i][0..n[i]) = bf16(src[i][0..n[i]))
void launch_f32_to_bf16_pieces(int k, bf16 *const *dst, const float *const *src, const int64_t *n);
// dst[i] = bf16(sum over z = 0..ns-1, in that order, of src[z * stride + i])
void launch_sum_slices_bf16(bf16 *dst, const float *src, int ns, int64_t stride, int64_t n);
void launch_add_bias(bf16 *y, const bf16 *bias, int T, int n_out);
void launch_dropout_bf16(bf16 *dst, const bf16 *x, int64_t n, float p, uint64_t seed);
void launch_add_masked(bf16 *dx, const bf16 *src, int64_t n, float p, uint64_t seed);

// lora.cu: the x side of a LoRA branch, dropout drawn on the fly (ops_dropout_keep over t*in + c,
// scaled by 1/(1-p); p = 0: none). Ranks 1..LORA_FUSED_MAX_R; larger ones, and every rank while
// cuda_lora_fused() is 0, take the GEMM path of qlinear.cu: lora_fused_ok(r) says which.
#define LORA_FUSED_MAX_R 64
bool lora_fused_ok(int r);
// xa [T, r] fp32 (may be NULL) and xa16 [T, r] bf16 (may be NULL) = drop(x) A^T; x bf16 [T, in], A fp32 [r, in]
void launch_lora_down(float *xa, bf16 *xa16, const bf16 *x, const float *A, int T, int in, int r, float p,
                      uint64_t seed);
// dA [r, in] += g^T drop(x); dx [T, in] = (accumulate ? dx : 0) + (g A) * keep / (1-p) (dx NULL: only
// dA); g bf16 [T, r] (the branch's scale already in it)
void launch_lora_up_bwd(float *dA, bf16 *dx, int accumulate, const bf16 *g, const bf16 *x, const float *A, int T,
                        int in, int r, float p, uint64_t seed);

// attention.cu; opt NULL: plain causal attention scaled by 1/sqrt(hd)
void launch_attention_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt);
void launch_attention_cached(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc, int Tq, int Tk, int nh,
                             int nkv, int hd, const ops_attn *opt);
void launch_attention_bwd(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                          const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                          int T, int nh, int nkv, int hd, const ops_attn *opt);

// optim.cu
void launch_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                  float beta2, float eps, float weight_decay, int step);
// *acc = sum of g[i]^2, summed in a fixed order (one fp64 partial a block into part[], then one
// block adds the partials in index order): the same bits on every run, in either mode
#define SUM_SQUARES_MAX_BLOCKS 4096
void launch_sum_squares(double *acc, double *part, const float *g, int64_t n);
void launch_scale(float *g, int64_t n, float s);

// qlinear.cu: the op table's qlinear entries (ops.h)
void cu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                    float *xa, int T);
void cu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                    const float *xa, int T, int accumulate);

// xent.cu: the op table's lm_head + cross-entropy and logits entries (ops.h)
void cu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target, int T,
                     int C, int V, float grad_scale, float softcap);
void cu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap);
void cu_nf4_dequant(void *dst, const ops_nf4 *W);
// per-row loss (0 where target < 0) into row_loss[Tc]; dlogits written in place as bf16
void launch_xent_rows(float *row_loss, float *logits, int ld_logits, bf16 *dlogits, int ld_dlogits,
                      const int32_t *target, int Tc, int V, float grad_scale, int want_grad, float softcap);
// z = cap * tanh(z / cap) over n fp32 values (the soft-capped logits of generation and evaluation)
void launch_softcap(float *z, int64_t n, float cap);

// nf4.cu (see nf4_cuda.h for the exported C API)
void launch_nf4_dequant_bf16(bf16 *dst, const uint8_t *codes, const float *absmax, const float *quant_map,
                             int64_t n, int blocksize, cudaStream_t s);
// double-quantized absmax (ops_nf4.absmax_q); nested_absmax indexed by (block / 256) from the
// pointers given, so a range must start on a multiple of 256 blocks
void launch_nf4_dequant_dq_bf16(bf16 *dst, const uint8_t *codes, const uint8_t *absmax_q, const float *nested_absmax,
                                const float *nested_map, float nested_offset, const float *quant_map, int64_t n,
                                int blocksize, cudaStream_t s);
// columns [c0, c0+w) of W (either absmax form) into dst [rows, w]
void launch_nf4_dequant_cols(bf16 *dst, const ops_nf4 *W, int64_t c0, int64_t w, cudaStream_t s);

// ops_cuda.cu: row-major GEMM through cuBLAS, C = alpha op(A) op(B) + beta C, fp32 accumulate.
// op(A) is [M, K], op(B) is [K, N]; ta/tb say A/B are stored transposed ([K, M] / [N, K]);
// lda/ldb/ldc are row strides in elements. A and B are bf16; C is bf16 or fp32 (c_f32).
void gemm_rm(int ta, int tb, int M, int N, int K, float alpha, const bf16 *A, int lda, const bf16 *B,
             int ldb, float beta, void *C, int ldc, int c_f32);

// ops_cuda.cu: the runtime state qlinear.cu and xent.cu read. g_side: the stream the NF4
// dequantization feeding a GEMM runs on; g_ev_start: the main stream's work before it (the side
// stream waits on it); g_ev_chunk[c]: row chunk c of the weight is dequantized (at most
// DQ_CHUNKS chunks, QLORA_CUDA_DQ_CHUNKS); g_scratch_cap: cuda_scratch_cap_set's cap, 0 for none.
#define DQ_CHUNKS 4
extern cudaStream_t g_side;
extern cudaEvent_t g_ev_start, g_ev_chunk[DQ_CHUNKS];
extern size_t g_scratch_cap;

#endif
