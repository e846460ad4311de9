// xent.cu: the row kernel of the chunked lm_head + cross-entropy (ops_cuda.cu runs the GEMMs).
// One block per row of a logits chunk: max, sum of exp, log-sum-exp, the row's loss, then
// grad_scale * (softmax - onehot) written as bf16 over the start of the same row's memory.
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
                                 const int32_t *target, int V, float grad_scale, int want_grad) {
    __shared__ float sh[32];
    int row = blockIdx.x;
    const float *l = logits + (int64_t)row * ld_logits;
    int tgt = target[row];
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
                d[j] = __float2bfloat16_rn(g);
            }
        }
        __syncthreads();
    }
}

void launch_xent_rows(float *row_loss, float *logits, int ld_logits, bf16 *dlogits, int ld_dlogits,
                      const int32_t *target, int Tc, int V, float grad_scale, int want_grad) {
    if (Tc == 0) return;
    xent_rows_kernel<<<Tc, XENT_THREADS, 0, cuda_stream()>>>(row_loss, logits, ld_logits, dlogits, ld_dlogits, target,
                                                             V, grad_scale, want_grad);
    CUDA_CHECK_LAUNCH();
}
