// elementwise_kernels.cuh: the RMSNorm and RoPE kernels of elementwise.cu and the helpers they
// share with its maps, kept apart so that tests/emu/elementwise_emu.cpp runs their source on the CPU
// through tests/emu/cuda_emu.h. The includer provides bf16 and the CUDA intrinsics.
#ifndef KERNELS_CUDA_ELEMENTWISE_KERNELS_CUH
#define KERNELS_CUDA_ELEMENTWISE_KERNELS_CUH

#include "bf16x8.cuh"

// the vector paths' condition on each pointer they read or write 16 bytes at a time
static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// ---------------------------------------------------------------------------------------------
// fp32 -> bf16, rounded to nearest even, 8 elements a thread, over up to CVT_MAX_PIECES arrays in
// one launch (a LoRA branch's A, B and xa: three small arrays whose launches cost more than their
// bytes), each piece a run of whole blocks; launch_f32_to_bf16 is the launch of one piece

struct f32_to_bf16_op {
    bf16 *dst;
    const float *src;
    __device__ void vec(int64_t i) const {
        float4 a = reinterpret_cast<const float4 *>(src + i)[0], b = reinterpret_cast<const float4 *>(src + i)[1];
        float f[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
        store8(dst + i, f);
    }
    __device__ void one(int64_t i) const { dst[i] = __float2bfloat16_rn(src[i]); }
};

#define CVT_MAX_PIECES 4
struct cvt_pieces {
    bf16 *dst[CVT_MAX_PIECES];
    const float *src[CVT_MAX_PIECES];
    int64_t n[CVT_MAX_PIECES];
    int vec[CVT_MAX_PIECES];             /* 16-byte aligned dst and src */
    unsigned first_block[CVT_MAX_PIECES + 1]; /* piece i: blocks [first_block[i], first_block[i + 1]) */
    int k;
};

// the launch of k pieces of `threads`-thread blocks; *blocks: the grid (0: nothing to convert)
inline cvt_pieces cvt_pieces_make(int k, bf16 *const *dst, const float *const *src, const int64_t *n, int threads,
                                  unsigned *blocks) {
    cvt_pieces p = {};
    unsigned b = 0;
    for (int i = 0; i < k; i++) {
        p.dst[i] = dst[i], p.src[i] = src[i], p.n[i] = n[i];
        p.vec[i] = aligned16(dst[i]) && aligned16(src[i]);
        p.first_block[i] = b;
        b += (unsigned)((n[i] + 8 * (int64_t)threads - 1) / (8 * (int64_t)threads));
    }
    p.first_block[k] = b;
    p.k = k;
    *blocks = b;
    return p;
}

__global__ void f32_to_bf16_pieces_kernel(cvt_pieces p) {
    int k = 0;
    while (k + 1 < p.k && blockIdx.x >= p.first_block[k + 1]) k++;
    int64_t i0 = ((int64_t)(blockIdx.x - p.first_block[k]) * blockDim.x + threadIdx.x) * 8, n = p.n[k];
    if (i0 >= n) return;
    f32_to_bf16_op f{p.dst[k], p.src[k]};
    if (p.vec[k] && i0 + 8 <= n)
        f.vec(i0);
    else
        for (int64_t i = i0; i < n && i < i0 + 8; i++) f.one(i);
}

// ---------------------------------------------------------------------------------------------
// RMSNorm. Hidden sizes of 1024 and more (the residual stream): a block a row, each thread holding
// up to NORM_VPT vectors of 8 in registers between the sum and the scaling, so the row is read once
// and every multiprocessor has rows in flight. Narrower rows (Gemma's q/k norms over a head) and
// shapes off the 8-element vectors: a warp a row, whose second pass reads the row again from L1/L2.

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// the norm's scale is wadd + w in fp32 (Gemma's 1 + w); wadd 0 leaves w as it is, bit for bit
__device__ __forceinline__ float norm_scale(float w, float wadd) { return wadd != 0.0f ? w + wadd : w; }

__device__ __forceinline__ void add_scale8(float g[8], float wadd) {
#pragma unroll
    for (int j = 0; j < 8; j++) g[j] = norm_scale(g[j], wadd);
}

// v summed over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum,
// added in one fixed order (each warp's lanes, then the warps in turn)
__device__ __forceinline__ float block_sum(float v, float *red) {
    v = warp_sum(v);
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5, nw = (int)blockDim.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float s = lane < nw ? red[lane] : 0.0f;
    s = warp_sum(s);
    __syncthreads(); /* red is free again for a next sum */
    return s;
}

#define NORM_VPT 4
#define NORM_ROW_MIN_C 1024
#define NORM_ROW_MAX_THREADS 512
#define NORM_ROW_MAX_C (NORM_ROW_MAX_THREADS * NORM_VPT * 8)

__global__ void rmsnorm_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const bf16 *w, float wadd, int T, int C,
                                   float eps, int vec) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= T) return;
    const bf16 *xr = x + (int64_t)row * C;
    bf16 *orow = out + (int64_t)row * C;
    float ss = 0.0f;
    if (vec) {
        for (int c = lane * 8; c < C; c += 256) {
            float f[8];
            load8(f, xr + c);
#pragma unroll
            for (int j = 0; j < 8; j++) ss += f[j] * f[j];
        }
    } else {
        for (int c = lane; c < C; c += 32) {
            float f = __bfloat162float(xr[c]);
            ss += f * f;
        }
    }
    ss = warp_sum(ss);
    float r = rsqrtf(ss / (float)C + eps);
    if (lane == 0) rstd[row] = r;
    if (vec) {
        for (int c = lane * 8; c < C; c += 256) {
            float f[8], g[8];
            load8(f, xr + c);
            load8(g, w + c);
            add_scale8(g, wadd);
#pragma unroll
            for (int j = 0; j < 8; j++) f[j] = f[j] * r * g[j];
            store8(orow + c, f);
        }
    } else {
        for (int c = lane; c < C; c += 32)
            orow[c] = __float2bfloat16_rn(__bfloat162float(xr[c]) * r * norm_scale(__bfloat162float(w[c]), wadd));
    }
}

// one row a block: blockDim.x threads, vector k (of C / 8) at thread k % blockDim.x; the same sums
// and products as rmsnorm_fwd_kernel, the squares added in another order
__global__ void __launch_bounds__(NORM_ROW_MAX_THREADS) rmsnorm_fwd_row_kernel(bf16 *out, float *rstd, const bf16 *x, const bf16 *w,
                                                               float wadd, int C, float eps) {
    __shared__ float red[32];
    const int row = blockIdx.x, nv = C / 8, tid = threadIdx.x, nt = blockDim.x;
    const bf16 *xr = x + (int64_t)row * C;
    bf16x8 v[NORM_VPT];
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        int c = tid + k * nt;
        if (c < nv) v[k] = ld_bf16x8(xr + 8 * c);
    }
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        if (tid + k * nt >= nv) break;
        float f[8];
        unpack8(f, v[k]);
#pragma unroll
        for (int j = 0; j < 8; j++) ss += f[j] * f[j];
    }
    ss = block_sum(ss, red);
    float r = rsqrtf(ss / (float)C + eps);
    if (tid == 0) rstd[row] = r;
    bf16 *orow = out + (int64_t)row * C;
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        int c = tid + k * nt;
        if (c >= nv) break;
        float f[8], g[8];
        unpack8(f, v[k]);
        load8(g, w + 8 * c);
        add_scale8(g, wadd);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = f[j] * r * g[j];
        store8(orow + 8 * c, f);
    }
}

// dx += rstd * w * dout - x * rstd^3 / C * sum(dout * w * x)
__global__ void rmsnorm_bwd_kernel(bf16 *dx, const bf16 *dout, const bf16 *x, const bf16 *w, float wadd,
                                   const float *rstd, int T, int C, int vec) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (row >= T) return;
    const bf16 *xr = x + (int64_t)row * C, *dr = dout + (int64_t)row * C;
    bf16 *dxr = dx + (int64_t)row * C;
    float s = 0.0f;
    if (vec) {
        for (int c = lane * 8; c < C; c += 256) {
            float a[8], b[8], g[8];
            load8(a, xr + c);
            load8(b, dr + c);
            load8(g, w + c);
            add_scale8(g, wadd);
#pragma unroll
            for (int j = 0; j < 8; j++) s += a[j] * b[j] * g[j];
        }
    } else {
        for (int c = lane; c < C; c += 32)
            s += __bfloat162float(xr[c]) * __bfloat162float(dr[c]) * norm_scale(__bfloat162float(w[c]), wadd);
    }
    s = warp_sum(s);
    float r = rstd[row];
    float k = r * r * r * s / (float)C;
    if (vec) {
        for (int c = lane * 8; c < C; c += 256) {
            float a[8], b[8], g[8], d[8];
            load8(a, xr + c);
            load8(b, dr + c);
            load8(g, w + c);
            load8(d, dxr + c);
            add_scale8(g, wadd);
#pragma unroll
            for (int j = 0; j < 8; j++) d[j] += r * g[j] * b[j] - a[j] * k;
            store8(dxr + c, d);
        }
    } else {
        for (int c = lane; c < C; c += 32) {
            float a = __bfloat162float(xr[c]), b = __bfloat162float(dr[c]);
            float g = norm_scale(__bfloat162float(w[c]), wadd);
            dxr[c] = __float2bfloat16_rn(__bfloat162float(dxr[c]) + r * g * b - a * k);
        }
    }
}

// one row a block, as rmsnorm_fwd_row_kernel: x and dout held between the sum and the update (w, the
// same for every row, read again from the caches)
__global__ void __launch_bounds__(NORM_ROW_MAX_THREADS) rmsnorm_bwd_row_kernel(bf16 *dx, const bf16 *dout, const bf16 *x, const bf16 *w,
                                                               float wadd, const float *rstd, int C) {
    __shared__ float red[32];
    const int row = blockIdx.x, nv = C / 8, tid = threadIdx.x, nt = blockDim.x;
    const bf16 *xr = x + (int64_t)row * C, *dr = dout + (int64_t)row * C;
    bf16x8 xv[NORM_VPT], dv[NORM_VPT];
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        int c = tid + k * nt;
        if (c < nv) xv[k] = ld_bf16x8(xr + 8 * c), dv[k] = ld_bf16x8(dr + 8 * c);
    }
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        int c = tid + k * nt;
        if (c >= nv) break;
        float a[8], b[8], g[8];
        unpack8(a, xv[k]);
        unpack8(b, dv[k]);
        load8(g, w + 8 * c);
        add_scale8(g, wadd);
#pragma unroll
        for (int j = 0; j < 8; j++) s += a[j] * b[j] * g[j];
    }
    s = block_sum(s, red);
    float r = rstd[row];
    float kk = r * r * r * s / (float)C;
    bf16 *dxr = dx + (int64_t)row * C;
#pragma unroll
    for (int k = 0; k < NORM_VPT; k++) {
        int c = tid + k * nt;
        if (c >= nv) break;
        float a[8], b[8], g[8], d[8];
        unpack8(a, xv[k]);
        unpack8(b, dv[k]);
        load8(g, w + 8 * c);
        load8(d, dxr + 8 * c);
        add_scale8(g, wadd);
#pragma unroll
        for (int j = 0; j < 8; j++) d[j] += r * g[j] * b[j] - a[j] * kk;
        store8(dxr + 8 * c, d);
    }
}

// the launchers' choice: a block a row where the row is in 16-byte vectors (vec: C % 8 == 0 and
// every pointer 16-byte aligned) and as wide as the residual stream; its threads: the row's C / 8
// vectors at most NORM_VPT a thread, in whole warps
inline bool norm_by_row(int C, int vec) { return vec && C >= NORM_ROW_MIN_C && C <= NORM_ROW_MAX_C; }
inline int norm_row_threads(int C) { return ((C / 8 + NORM_VPT - 1) / NORM_VPT + 31) / 32 * 32; }

// ---------------------------------------------------------------------------------------------
// RoPE, rotate_half convention: (x1, x2) = (q[i], q[i + rot/2]) -> (x1 c - x2 s, x2 c + x1 s) over
// the first rot dims of each head of hd (rot = hd: the whole head; phi3's partial rotary: fewer,
// the rest of the head passing unchanged, so no thread touches it). mscale multiplies cos and sin
// (longrope's attention factor), as the reference scales them in fp32 before the rotation.
// The angle is pos * inv_freq in fp32 as the reference computes it. Fast-math sine and cosine
// lose accuracy at angles of thousands of radians, so the angle is first reduced to [-pi, pi]
// in double (exact enough: the fp32 angle times a double 1/(2 pi)), then __sincosf takes it
// (absolute error ~1e-6, far below bf16's resolution).

__device__ __forceinline__ void rope_cos_sin(float ang, float mscale, int inverse, float *c, float *s) {
    const double two_pi = 6.283185307179586;
    double turns = rint((double)ang * (1.0 / two_pi));
    float red = (float)fma(-turns, two_pi, (double)ang), sr, cr;
    __sincosf(red, &sr, &cr);
    *c = cr * mscale;
    *s = (inverse ? -sr : sr) * mscale;
}

// a thread a pair: any even rot, any alignment
__global__ void rope_kernel(bf16 *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot,
                            float mscale, int inverse) {
    int half = rot / 2;
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)T * nh * half) return;
    int j = (int)(i % half);
    int64_t th = i / half; // t * nh + head
    int t = (int)(th / nh);
    float c, s;
    rope_cos_sin((float)pos[t] * inv_freq[j], mscale, inverse, &c, &s);
    bf16 *p = q + th * hd;
    float x1 = __bfloat162float(p[j]), x2 = __bfloat162float(p[j + half]);
    p[j] = __float2bfloat16_rn(x1 * c - x2 * s);
    p[j + half] = __float2bfloat16_rn(x2 * c + x1 * s);
}

// a block a token: its rot / 2 angles' cosines and sines once into shared memory, then every head's
// pairs eight at a time (16-byte accesses; rot / 2 and hd multiples of 8, q 16-byte aligned), the
// same arithmetic as rope_kernel
#define ROPE_ROW_MAX_HALF 512
inline bool rope_by_row(int hd, int rot, bool aligned) {
    return (rot / 2) % 8 == 0 && hd % 8 == 0 && rot / 2 <= ROPE_ROW_MAX_HALF && aligned;
}
// a thread for each eight pairs of a token's heads, in whole warps, at most 256 (more loop)
inline int rope_row_threads(int nh, int rot) {
    int t = (nh * (rot / 16) + 31) / 32 * 32;
    return t < 256 ? t : 256;
}
__global__ void __launch_bounds__(256) rope_row_kernel(bf16 *q, const int32_t *pos, const float *inv_freq, int nh,
                                                       int hd, int rot, float mscale, int inverse) {
    __shared__ float cs[2 * ROPE_ROW_MAX_HALF];
    const int t = blockIdx.x, half = rot / 2, half8 = half / 8;
    const float p = (float)pos[t];
    for (int j = (int)threadIdx.x; j < half; j += (int)blockDim.x) rope_cos_sin(p * inv_freq[j], mscale, inverse, cs + j, cs + half + j);
    __syncthreads();
    bf16 *row = q + (int64_t)t * nh * hd;
    for (int k = (int)threadIdx.x; k < nh * half8; k += (int)blockDim.x) {
        int h = k / half8, j = (k - h * half8) * 8;
        bf16 *p1 = row + (int64_t)h * hd + j, *p2 = p1 + half;
        float x1[8], x2[8], o1[8], o2[8];
        load8(x1, p1);
        load8(x2, p2);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            float c = cs[j + e], s = cs[half + j + e];
            o1[e] = x1[e] * c - x2[e] * s;
            o2[e] = x2[e] * c + x1[e] * s;
        }
        store8(p1, o1);
        store8(p2, o2);
    }
}

#endif
