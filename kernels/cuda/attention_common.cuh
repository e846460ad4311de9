// attention_common.cuh: what the two attention kernel families (attention_tiled.cu,
// attention_mma.cu) share: tile loading, constants, and their launchers, which attention.cu
// dispatches to. Shapes and conventions as in ops.h: q [Tq, nh*hd], k/v [Tk, nkv*hd], lse
// [nh, Tq] in natural log; query i sits at key position q_off + i and attends to keys
// [seq_start[i] (0 when seq_start is NULL), q_off + i]. Head dims up to 128 are zero-padded to
// 64 or 128 on load. Backward kernels accumulate dq in fp32 (dq_acc, zeroed by the caller)
// and take D[h, t] = sum_d dout * out precomputed. Every kernel takes attn_params (ops.h's
// ops_attn resolved): a key is visible to a query at position p when it lies in
// [first, p] and, with a sliding window, p - key < window; the score is q.k * scale, soft-capped
// as cap * tanh(score / cap) when cap > 0 (its backward multiplies dS by 1 - (score / cap)^2).
// Head dims up to 256 (Gemma-3's); over 128 only the tiled kernels (attention.cu routes them).
#ifndef KERNELS_CUDA_ATTENTION_COMMON_CUH
#define KERNELS_CUDA_ATTENTION_COMMON_CUH

#include "launch.cuh"

#include <limits.h>

static const float LOG2E = 1.4426950408889634f;
static const float LN2 = 0.6931471805599453f;

struct attn_params {
    int window;    // 0: no sliding window
    float scale;   // the score scale (1/sqrt(hd) unless the model says otherwise)
    float softcap; // 0: none
};

// key visible to the query at position pos whose sequence starts at first
__device__ __forceinline__ bool attn_visible(int key, int first, int pos, int window) {
    return key >= first && key <= pos && (window <= 0 || pos - key < window);
}

// the first key the query at position pos (sequence start first) sees
__host__ __device__ __forceinline__ int attn_first_key(int first, int pos, int window) {
    return window > 0 && pos - window + 1 > first ? pos - window + 1 : first;
}

// the final score from q.k, in the log2 domain
__device__ __forceinline__ float attn_score_log2(float raw, const attn_params &p) {
    float s = raw * p.scale;
    if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
    return s * LOG2E;
}

// dS's factor from the soft-capping: 1 - tanh^2 = 1 - (score / cap)^2, score from its log2 form
__device__ __forceinline__ float attn_cap_grad(float score_log2, const attn_params &p) {
    if (p.softcap <= 0.0f) return 1.0f;
    float t = score_log2 * LN2 / p.softcap;
    return 1.0f - t * t;
}

// rows x HDP tile into shared memory (row stride ldd), zero beyond rows_valid and hd; 16-byte
// loads when vec (hd % 8 == 0 and 16-byte aligned rows)
template <int HDP>
__device__ __forceinline__ void load_tile(bf16 *dst, int ldd, const bf16 *src, int64_t lds, int rows, int rows_valid,
                                          int hd, bool vec) {
    if (vec) {
        const int CH = HDP / 8;
        for (int i = threadIdx.x; i < rows * CH; i += blockDim.x) {
            int r = i / CH, c = (i % CH) * 8;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (r < rows_valid && c < hd) val = *reinterpret_cast<const uint4 *>(src + (int64_t)r * lds + c);
            *reinterpret_cast<uint4 *>(dst + r * ldd + c) = val;
        }
    } else {
        for (int i = threadIdx.x; i < rows * HDP; i += blockDim.x) {
            int r = i / HDP, c = i % HDP;
            dst[r * ldd + c] = (r < rows_valid && c < hd) ? src[(int64_t)r * lds + c] : __float2bfloat16_rn(0.0f);
        }
    }
}

void attn_tiled_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                    int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec, attn_params ap);
void attn_tiled_bwd(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                    const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh, int nkv,
                    int hd, int vec, attn_params ap);
void attn_mma_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                  int Tq, int Tk, int q_off, int nh, int nkv, int hd, int vec, attn_params ap);
void attn_mma_bwd(float *dq_acc, bf16 *dk, bf16 *dv, const bf16 *dout, const float *lse, const float *D,
                  const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh, int nkv,
                  int hd, int vec, attn_params ap);
// cuDNN's fused attention (attention_cudnn.cu). Layout of the T tokens: dev NULL: b sequences of
// s tokens (T = b*s); dev set: b sequences of at most s tokens back to back (some may be empty),
// dev pointing to int32 device arrays: lengths [b], then the first element of each sequence (and
// one past the last) [b+1] in q-shaped ([T, nh*hd]), kv-shaped ([T, nkv*hd]) and lse-shaped
// ([nh, T]: the token index) tensors. Same tensor layouts as above; it uses the dq/D scratch
// slots itself. ap: the score scale and a sliding window (ap.window > 0) go into the graph;
// soft-capping does not (-1). -1 when cuDNN is missing or cannot take the shape: the caller runs
// our kernels instead.
struct attn_cudnn_layout {
    int b, s, T;
    const int32_t *dev;
};
int attn_cudnn_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const attn_cudnn_layout *L,
                   int nh, int nkv, int hd, attn_params ap);
int attn_cudnn_bwd(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse, const bf16 *q,
                   const bf16 *k, const bf16 *v, const attn_cudnn_layout *L, int nh, int nkv, int hd, attn_params ap);

#endif
