// xent.cu: the row kernel of the chunked lm_head + cross-entropy (ops_cuda.cu runs the GEMMs).
// One block per row of a logits chunk: max, sum of exp, log-sum-exp, the row's loss, then
// grad_scale * (softmax - onehot) written as bf16 over the start of the same row's memory.
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
