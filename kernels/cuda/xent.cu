// xent.cu: the chunked lm_head + cross-entropy and the plain logits, the op table's xent_fwd_bwd
// and logits (plain C reference: kernels/cpu/xent.c): cuBLAS GEMMs (gemm_rm) around one row
// kernel. The row kernel: one block per row of a logits chunk: max, sum of exp, log-sum-exp, the
// row's loss, then grad_scale * (softmax - onehot) written as bf16 over the start of the same
// row's memory.
// A soft-cap (Gemma-2's final logits, cap > 0) first rewrites the row as cap * tanh(z / cap); the
// gradient of the raw z is then the capped one's times 1 - (capped / cap)^2.
#include "launch.cuh"

#include <float.h>

#define XENT_THREADS 256
#define XENT_K 8 // elements a thread holds while the row is overwritten in place

__device__ __forceinline__ float block_reduce(float v, float *sh, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    int w = threadIdx.x / 32, lane = threadIdx.x & 31;
    __syncthreads(); // sh may still be read by a previous reduction
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x / 32) ? sh[lane] : (is_max ? -FLT_MAX : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float u = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, u) : v + u;
    }
    return v;
}

__global__ void xent_rows_kernel(float *row_loss, float *logits, int ld_logits, bf16 *dlogits, int ld_dlogits,
                                 const int32_t *target, int V, float grad_scale, int want_grad, float softcap) {
    __shared__ float sh[32];
    int row = blockIdx.x;
    float *l = logits + (int64_t)row * ld_logits;
    int tgt = target[row];
    if (softcap > 0.0f) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) l[j] = softcap * tanhf(l[j] / softcap);
        __syncthreads();
    }
    float mx = -FLT_MAX;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = block_reduce(mx, sh, true);
    float s = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += __expf(l[j] - mx);
    s = block_reduce(s, sh, false);
    float lse = mx + __logf(s);
    if (threadIdx.x == 0) row_loss[row] = tgt >= 0 ? lse - l[tgt] : 0.0f;
    if (!want_grad) return;
    bf16 *d = dlogits + (int64_t)row * ld_dlogits;
    float inv_s = 1.0f / s;
    // bf16 element j overlays fp32 element j/2 of this row: read a whole chunk into registers,
    // barrier, then write it, so no thread overwrites a logit another has yet to read
    const int chunk = XENT_THREADS * XENT_K;
    for (int c0 = 0; c0 < V; c0 += chunk) {
        float v[XENT_K];
#pragma unroll
        for (int k = 0; k < XENT_K; k++) {
            int j = c0 + k * XENT_THREADS + threadIdx.x;
            v[k] = j < V ? l[j] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < XENT_K; k++) {
            int j = c0 + k * XENT_THREADS + threadIdx.x;
            if (j < V) {
                float g = tgt >= 0 ? grad_scale * (__expf(v[k] - mx) * inv_s - (j == tgt ? 1.0f : 0.0f)) : 0.0f;
                if (softcap > 0.0f) g *= 1.0f - (v[k] / softcap) * (v[k] / softcap);
                d[j] = __float2bfloat16_rn(g);
            }
        }
        __syncthreads();
    }
}

void launch_xent_rows(float *row_loss, float *logits, int ld_logits, bf16 *dlogits, int ld_dlogits,
                      const int32_t *target, int Tc, int V, float grad_scale, int want_grad, float softcap) {
    if (Tc == 0) return;
    xent_rows_kernel<<<Tc, XENT_THREADS, 0, cuda_stream()>>>(row_loss, logits, ld_logits, dlogits, ld_dlogits, target,
                                                             V, grad_scale, want_grad, softcap);
    CUDA_CHECK_LAUNCH();
}

__global__ void softcap_kernel(float *z, int64_t n, float cap) {
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        z[i] = cap * tanhf(z[i] / cap);
}

void launch_softcap(float *z, int64_t n, float cap) {
    if (n == 0 || cap <= 0.0f) return;
    int64_t blocks = (n + 255) / 256;
    softcap_kernel<<<(unsigned)(blocks < 65535 ? blocks : 65535), 256, 0, cuda_stream()>>>(z, n, cap);
    CUDA_CHECK_LAUNCH();
}

// lm_head + cross-entropy + its backward, in chunks of tokens each over the whole vocabulary
// (two GEMMs per chunk, where vocabulary chunks with an online softmax need a third to recompute
// the logits for the gradient):
// one chunk's fp32 logits [Tc, V] (at most XENT_CHUNK_BYTES) is the only logits memory there
// is. The row kernel overwrites each logits row with its bf16 gradient in place (the bf16 row
// fits in the first half of the fp32 row), which the dx GEMM then reads with a stride of 2V.
static const size_t XENT_CHUNK_BYTES = 64u << 20;

static int xent_chunk_rows(int T, int V) {
    size_t cap = g_scratch_cap && g_scratch_cap < XENT_CHUNK_BYTES ? g_scratch_cap : XENT_CHUNK_BYTES;
    size_t rows = cap / ((size_t)V * sizeof(float));
    if (rows < 16) rows = 16;
    if (rows > (size_t)T) rows = (size_t)T;
    return (int)rows;
}

void cu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target, int T,
                     int C, int V, float grad_scale, float softcap) {
    int Tc = xent_chunk_rows(T, V);
    float *logits = (float *)cuda_scratch(SCRATCH_XENT, (size_t)Tc * V * sizeof(float));
    for (int t0 = 0; t0 < T; t0 += Tc) {
        int n = T - t0 < Tc ? T - t0 : Tc;
        const bf16 *xc = (const bf16 *)x + (size_t)t0 * C;
        gemm_rm(0, 1, n, V, C, 1.0f, xc, C, (const bf16 *)E, C, 0.0f, logits, V, 1);
        launch_xent_rows(losses + t0, logits, V, (bf16 *)logits, 2 * V, target + t0, n, V, grad_scale, dx != NULL,
                         softcap);
        if (dx)
            gemm_rm(0, 0, n, C, V, 1.0f, (const bf16 *)logits, 2 * V, (const bf16 *)E, C, 0.0f,
                    (bf16 *)dx + (size_t)t0 * C, C, 0);
    }
}

void cu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap) {
    gemm_rm(0, 1, T, V, C, 1.0f, (const bf16 *)x, C, (const bf16 *)E, C, 0.0f, logits, V, 1);
    launch_softcap(logits, (int64_t)T * V, softcap);
}
