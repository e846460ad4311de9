// lora_kernels.cuh: the device code of the fused LoRA kernels (lora.cu says what they compute) and
// the grids they run on, apart from their launchers so that a test can also run them on the CPU
// (tests/emu/: a SIMT emulation of one block at a time, its warps and WMMA). Include it after the
// CUDA headers (launch.cuh, <mma.h>) or the emulation's stand-ins for them; it includes only
// bf16x8.cuh (8 bf16 in one 16-byte access: bf16x8, load8, store8).
#ifndef KERNELS_CUDA_LORA_KERNELS_CUH
#define KERNELS_CUDA_LORA_KERNELS_CUH

#include "bf16x8.cuh"

using namespace nvcuda;

#define LORA_THREADS 128 // 4 warps
#define XS_LD 72         // bf16 row stride of a 16 x 64 tile in shared memory (64 + 8: banks)
#define YS_LD 68         // fp32 row stride of a 16 x 64 tile

// 8 elements of row t of x from column c (zero past T or past cend), dropped and scaled; keep bits
// of the 8 into *bits at bit b0
__device__ __forceinline__ void load_drop8(float *f, uint32_t *bits, int b0, const bf16 *x, int t, int T, int in,
                                           int c, int cend, bool vec, float p, float inv, uint64_t seed) {
    if (t < T && vec && c + 8 <= cend) {
        load8(f, x + (int64_t)t * in + c);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = t < T && c + j < cend ? __bfloat162float(x[(int64_t)t * in + c + j]) : 0.0f;
    }
    if (p > 0.0f) {
        uint64_t base = (uint64_t)t * (uint64_t)in + (uint64_t)c;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            bool keep = ops_dropout_keep(seed, base + j, p);
            f[j] = keep ? f[j] * inv : 0.0f;
            if (keep) *bits |= 1u << (b0 + j);
        }
    } else {
        *bits |= 0xffu << b0;
    }
}


// rows [0, RP) x columns [c, c+64) of A [r, in] (fp32) to bf16 at dst (row stride XS_LD), zero past r
// and past cend; the threads tid, tid+nthr, ... of the group each take 4 columns
template <int RP>
__device__ __forceinline__ void load_a_tile(bf16 *dst, const float *A, int r, int in, int c, int cend, bool vec4,
                                            int tid, int nthr) {
    for (int e = tid; e < RP * 16; e += nthr) {
        int rr = e >> 4, c4 = (e & 15) * 4, cc = c + c4;
        float a[4];
        if (rr < r && vec4 && cc + 4 <= cend) {
            float4 v = *reinterpret_cast<const float4 *>(A + (int64_t)rr * in + cc);
            a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) a[j] = rr < r && cc + j < cend ? A[(int64_t)rr * in + cc + j] : 0.0f;
        }
        __nv_bfloat162 *d = reinterpret_cast<__nv_bfloat162 *>(dst + rr * XS_LD + c4);
        d[0] = __floats2bfloat162_rn(a[0], a[1]);
        d[1] = __floats2bfloat162_rn(a[2], a[3]);
    }
}

// ---------------------------------------------------------------------------------------------
// lora_down: xa = drop(x) A^T. Block: 16 rows of x and one split [k0, k1) of the in dimension;
// each warp takes 64-column chunks of the split in turn.

template <int R16>
__global__ void __launch_bounds__(LORA_THREADS)
lora_down_kernel(float *xa, bf16 *xa16, float *part, int *cnt, const bf16 *x, const float *A, int T, int in, int r,
                 int kchunk, float p, float inv, uint64_t seed, int vec, int vec4) {
    constexpr int RP = R16 * 16, RL = RP + 4;
    __shared__ __align__(32) bf16 xs[4][16 * XS_LD];
    // each warp's A tile [RP, 64]; after the loop, the warps' xa parts [16, RP] (row stride RL)
    __shared__ __align__(32) bf16 as[4][RP * XS_LD];
    static_assert(4 * 16 * RL * sizeof(float) <= sizeof as, "the warps' parts fit the A tiles");
    __shared__ int last;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t0 = blockIdx.x * 16, ks = blockIdx.y, KS = gridDim.y;
    int k0 = ks * kchunk, k1 = min(in, k0 + kchunk);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[R16];
#pragma unroll
    for (int n = 0; n < R16; n++) wmma::fill_fragment(acc[n], 0.0f);
    // a 16 x 64 tile in four steps of 4 rows: lane takes 8 columns of row 4v + lane/8 (a step reads
    // four whole 128-byte rows)
    int lrow = lane >> 3, col = (lane & 7) * 8;
    for (int kc = k0 + warp * 64; kc < k1; kc += 4 * 64) {
        uint32_t bits = 0;
#pragma unroll
        for (int v = 0; v < 4; v++) {
            float f[8];
            int row = 4 * v + lrow;
            load_drop8(f, &bits, v * 8, x, t0 + row, T, in, kc + col, k1, vec, p, inv, seed);
            store8(xs[warp] + row * XS_LD + col, f);
        }
        load_a_tile<RP>(as[warp], A, r, in, kc, k1, vec4, lane, 32);
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
            wmma::load_matrix_sync(fa, xs[warp] + kk * 16, XS_LD);
#pragma unroll
            for (int n = 0; n < R16; n++) { // B = A^T tile [16 k, 16 r]: A's rows are its columns
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
                wmma::load_matrix_sync(fb, as[warp] + n * 16 * XS_LD + kk * 16, XS_LD);
                wmma::mma_sync(acc[n], fa, fb, acc[n]);
            }
        }
        __syncwarp();
    }
    __syncthreads(); // every warp is done with its A tile
    float *red = reinterpret_cast<float *>(&as[0][0]);
#pragma unroll
    for (int n = 0; n < R16; n++)
        wmma::store_matrix_sync(red + warp * 16 * RL + n * 16, acc[n], RL, wmma::mem_row_major);
    __syncthreads();
    float *mine = part + ((size_t)ks * gridDim.x + blockIdx.x) * 16 * RP;
    for (int e = threadIdx.x; e < 16 * RP; e += LORA_THREADS) {
        int i = e / RP, j = e % RP, o = i * RL + j;
        float s = ((red[o] + red[16 * RL + o]) + red[2 * 16 * RL + o]) + red[3 * 16 * RL + o];
        if (KS > 1) {
            mine[e] = s;
        } else if (t0 + i < T && j < r) {
            if (xa) xa[(int64_t)(t0 + i) * r + j] = s;
            if (xa16) xa16[(int64_t)(t0 + i) * r + j] = __float2bfloat16_rn(s);
        }
    }
    if (KS == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1) == KS - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int e = threadIdx.x; e < 16 * RP; e += LORA_THREADS) {
        int i = e / RP, j = e % RP;
        if (t0 + i >= T || j >= r) continue;
        float s = 0.0f;
        for (int z = 0; z < KS; z++) s += __ldcg(part + ((size_t)z * gridDim.x + blockIdx.x) * 16 * RP + e);
        if (xa) xa[(int64_t)(t0 + i) * r + j] = s;
        if (xa16) xa16[(int64_t)(t0 + i) * r + j] = __float2bfloat16_rn(s);
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
}

// ---------------------------------------------------------------------------------------------
// lora_up_bwd: one block a 64-column strip of x and dx and one split [tb0, tb1) of the rows; each
// warp takes 16-row chunks of the split in turn, keeping its dA [RP, 64] part in registers.

template <int R16>
__global__ void __launch_bounds__(LORA_THREADS)
lora_up_bwd_kernel(float *dA, bf16 *dx, int accumulate, float *part, int *cnt, const bf16 *g, const bf16 *x,
                   const float *A, int T, int in, int r, int tchunk, float p, float inv, uint64_t seed, int vec,
                   int vec4) {
    constexpr int RP = R16 * 16, GL = RP + 8;
    __shared__ __align__(32) bf16 as[RP * XS_LD];
    __shared__ __align__(32) bf16 xs[4][16 * XS_LD];
    __shared__ __align__(32) bf16 gs[4][16 * GL];
    __shared__ __align__(32) float ys[4 * 16 * YS_LD]; // per warp (g A) [16, 64]; then dA's sum [RP, 64]
    static_assert(RP * YS_LD <= 4 * 16 * YS_LD, "dA's block sum fits the (g A) tiles");
    __shared__ int last;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int strip = blockIdx.x, c0 = strip * 64, ts = blockIdx.y, TS = gridDim.y;
    int tb0 = ts * tchunk, tb1 = min(T, tb0 + tchunk);
    load_a_tile<RP>(as, A, r, in, c0, in, vec4, threadIdx.x, LORA_THREADS);
    __syncthreads();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dacc[R16][4];
#pragma unroll
    for (int m = 0; m < R16; m++)
#pragma unroll
        for (int n = 0; n < 4; n++) wmma::fill_fragment(dacc[m][n], 0.0f);
    int lrow = lane >> 3, col = (lane & 7) * 8; // as in lora_down: row 4v + lrow, 8 columns from col
    float *y = ys + warp * 16 * YS_LD;
    for (int t = tb0 + warp * 16; t < tb1; t += 4 * 16) {
        for (int e = lane; e < 16 * RP; e += 32) {
            int i = e / RP, j = e % RP;
            gs[warp][i * GL + j] = t + i < tb1 && j < r ? g[(int64_t)(t + i) * r + j] : __float2bfloat16_rn(0.0f);
        }
        uint32_t bits = 0;
#pragma unroll
        for (int v = 0; v < 4; v++) {
            float f[8];
            int row = 4 * v + lrow;
            load_drop8(f, &bits, v * 8, x, t + row, tb1, in, c0 + col, in, vec, p, inv, seed);
            store8(xs[warp] + row * XS_LD + col, f);
        }
        __syncwarp();
        // dA [RP, 64] += g^T [RP, 16] drop(x) [16, 64]
#pragma unroll
        for (int m = 0; m < R16; m++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> fa;
            wmma::load_matrix_sync(fa, gs[warp] + m * 16, GL);
#pragma unroll
            for (int n = 0; n < 4; n++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
                wmma::load_matrix_sync(fb, xs[warp] + n * 16, XS_LD);
                wmma::mma_sync(dacc[m][n], fa, fb, dacc[m][n]);
            }
        }
        if (dx) { // dx [16, 64] (+)= (g [16, RP] A [RP, 64]) * keep / (1-p)
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4];
#pragma unroll
            for (int n = 0; n < 4; n++) wmma::fill_fragment(acc[n], 0.0f);
#pragma unroll
            for (int k = 0; k < R16; k++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
                wmma::load_matrix_sync(fa, gs[warp] + k * 16, GL);
#pragma unroll
                for (int n = 0; n < 4; n++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
                    wmma::load_matrix_sync(fb, as + k * 16 * XS_LD + n * 16, XS_LD);
                    wmma::mma_sync(acc[n], fa, fb, acc[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < 4; n++) wmma::store_matrix_sync(y + n * 16, acc[n], YS_LD, wmma::mem_row_major);
            __syncwarp();
#pragma unroll
            for (int v = 0; v < 4; v++) {
                int row = 4 * v + lrow, tt = t + row, c = c0 + col;
                if (tt < tb1) {
                    float f[8];
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        f[j] = (bits >> (v * 8 + j)) & 1u ? y[row * YS_LD + col + j] * inv : 0.0f;
                    bf16 *d = dx + (int64_t)tt * in + c;
                    if (vec && c + 8 <= in) {
                        if (accumulate) {
                            float o[8];
                            load8(o, d);
#pragma unroll
                            for (int j = 0; j < 8; j++) f[j] += o[j];
                        }
                        store8(d, f);
                    } else {
                        for (int j = 0; j < 8 && c + j < in; j++)
                            d[j] = __float2bfloat16_rn(f[j] + (accumulate ? __bfloat162float(d[j]) : 0.0f));
                    }
                }
            }
        }
        __syncwarp();
    }
    // the block's dA part: the warps' parts added in warp order through shared memory
    __syncthreads();
    float *red = ys; // [RP, 64], row stride YS_LD
    for (int w = 0; w < 4; w++) {
        if (warp == w) {
            if (w > 0) { // every lane has read the sum so far before any lane writes over it
#pragma unroll
                for (int m = 0; m < R16; m++)
#pragma unroll
                    for (int n = 0; n < 4; n++) {
                        wmma::fragment<wmma::accumulator, 16, 16, 16, float> prev;
                        wmma::load_matrix_sync(prev, red + m * 16 * YS_LD + n * 16, YS_LD, wmma::mem_row_major);
#pragma unroll
                        for (int i = 0; i < prev.num_elements; i++) dacc[m][n].x[i] = prev.x[i] + dacc[m][n].x[i];
                    }
                __syncwarp();
            }
#pragma unroll
            for (int m = 0; m < R16; m++)
#pragma unroll
                for (int n = 0; n < 4; n++)
                    wmma::store_matrix_sync(red + m * 16 * YS_LD + n * 16, dacc[m][n], YS_LD, wmma::mem_row_major);
        }
        __syncthreads();
    }
    float *mine = part + ((size_t)ts * gridDim.x + strip) * RP * 64;
    for (int e = threadIdx.x; e < RP * 64; e += LORA_THREADS) {
        int rr = e >> 6, c = e & 63;
        float s = red[rr * YS_LD + c];
        if (TS > 1) mine[e] = s;
        else if (rr < r && c0 + c < in) dA[(int64_t)rr * in + c0 + c] += s;
    }
    if (TS == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[strip], 1) == TS - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int e = threadIdx.x; e < RP * 64; e += LORA_THREADS) {
        int rr = e >> 6, c = e & 63;
        if (rr >= r || c0 + c >= in) continue;
        float s = 0.0f;
        for (int z = 0; z < TS; z++) s += __ldcg(part + ((size_t)z * gridDim.x + strip) * RP * 64 + e);
        dA[(int64_t)rr * in + c0 + c] += s;
    }
    if (threadIdx.x == 0) cnt[strip] = 0;
}

// ---------------------------------------------------------------------------------------------
// grids


struct lora_down_shape {
    int rowtiles, ks, kchunk;
};

// the grid of lora_down for x [T, in], aiming at `target` blocks (a few per multiprocessor)
static inline lora_down_shape lora_down_grid(int T, int in, int target) {
    lora_down_shape s;
    s.rowtiles = CEIL_DIV(T, 16);
    int want = CEIL_DIV(target, s.rowtiles);
    int most = CEIL_DIV(in, 256); // a split of at least 256 columns: one chunk for each warp
    int ks = want < most ? want : most;
    if (ks < 1) ks = 1;
    s.kchunk = CEIL_DIV(CEIL_DIV(in, ks), 64) * 64;
    s.ks = CEIL_DIV(in, s.kchunk);
    return s;
}

struct lora_up_shape {
    int strips, ts, tchunk;
};

// the grid of lora_up_bwd, likewise
static inline lora_up_shape lora_up_grid(int T, int in, int target) {
    lora_up_shape s;
    s.strips = CEIL_DIV(in, 64);
    int want = CEIL_DIV(target, s.strips);
    int most = CEIL_DIV(T, 64);
    int ts = want < most ? want : most;
    if (ts < 1) ts = 1;
    s.tchunk = CEIL_DIV(CEIL_DIV(T, ts), 64) * 64;
    s.ts = CEIL_DIV(T, s.tchunk);
    return s;
}

#endif
