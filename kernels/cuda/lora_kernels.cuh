// lora_kernels.cuh: the device code of the fused LoRA kernels (lora.cu says what they compute) and
// the grids they run on, apart from their launchers so that a test can also run them on the CPU
// (tests/emu/: a SIMT emulation of one block at a time, its warps and WMMA). Include it after the
// CUDA headers (launch.cuh, <mma.h>) or the emulation's stand-ins for them; it includes only
// bf16x8.cuh (8 bf16 in one 16-byte access: bf16x8, bf16x8_of, unpack8, store8).
#ifndef KERNELS_CUDA_LORA_KERNELS_CUH
#define KERNELS_CUDA_LORA_KERNELS_CUH

#include "bf16x8.cuh"

using namespace nvcuda;

#define LORA_THREADS 128 // 4 warps
// the blocks a multiprocessor keeps resident, which the grids aim at: lora_down at every rank and
// lora_up_bwd at rank 16 fit their registers to it (larger ranks hold more accumulators and would
// spill), so a grid of LORA_BLOCKS_PER_SM blocks per multiprocessor runs in one wave
#define LORA_BLOCKS_PER_SM 4
#define XS_LD 72         // bf16 row stride of a 16 x 64 tile in shared memory (64 + 8: banks)
#define YS_LD 68         // fp32 row stride of a 16 x 64 tile

// 8 bf16 of row t of x (row stride `in`) from column c, raw, in one 16-byte access where vec and the
// 8 lie before cend; zero past T or past cend. The loads of a tile are issued through this before
// the work on the tile before it, and turned into operands after (drop8)
__device__ __forceinline__ uint4 fetch8(const bf16 *x, int t, int T, int in, int c, int cend, bool vec) {
    uint4 raw = {0u, 0u, 0u, 0u};
    if (t >= T) return raw;
    if (vec && c + 8 <= cend) return *reinterpret_cast<const uint4 *>(x + (int64_t)t * in + c);
    bf16 h[8];
#pragma unroll
    for (int j = 0; j < 8; j++) h[j] = c + j < cend ? x[(int64_t)t * in + c + j] : __float2bfloat16_rn(0.0f);
    memcpy(&raw, h, sizeof raw);
    return raw;
}

// the 8 elements fetch8 read from row t, column c, dropped and scaled; keep bits of the 8 into
// *bits at bit b0 (elements fetch8 zeroed stay zero either way)
__device__ __forceinline__ void drop8(float *f, uint32_t *bits, int b0, uint4 raw, int t, int in, int c, float p,
                                      float inv, uint64_t seed) {
    bf16x8 v = bf16x8_of(raw);
    unpack8(f, v);
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

// 4 fp32 of row rr of A [r, in] from column cc, in one 16-byte access where vec4 and the 4 lie
// before cend; zero past r or past cend
__device__ __forceinline__ float4 fetch_a4(const float *A, int rr, int r, int in, int cc, int cend, bool vec4) {
    float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
    if (rr >= r) return v;
    if (vec4 && cc + 4 <= cend) return *reinterpret_cast<const float4 *>(A + (int64_t)rr * in + cc);
    const float *a = A + (int64_t)rr * in;
    if (cc < cend) v.x = a[cc];
    if (cc + 1 < cend) v.y = a[cc + 1];
    if (cc + 2 < cend) v.z = a[cc + 2];
    if (cc + 3 < cend) v.w = a[cc + 3];
    return v;
}

__device__ __forceinline__ void put_a4(bf16 *d, float4 v) {
    __nv_bfloat162 *p = reinterpret_cast<__nv_bfloat162 *>(d);
    p[0] = __floats2bfloat162_rn(v.x, v.y);
    p[1] = __floats2bfloat162_rn(v.z, v.w);
}

// rows [0, RP) x columns [c, c+64) of A [r, in] (fp32) to bf16 at dst (row stride XS_LD), zero past r
// and past cend; the threads tid, tid+nthr, ... of the group each take 4 columns
template <int RP>
__device__ __forceinline__ void load_a_tile(bf16 *dst, const float *A, int r, int in, int c, int cend, bool vec4,
                                            int tid, int nthr) {
    for (int e = tid; e < RP * 16; e += nthr) {
        int rr = e >> 4, c4 = (e & 15) * 4;
        put_a4(dst + rr * XS_LD + c4, fetch_a4(A, rr, r, in, c + c4, cend, vec4));
    }
}

// ---------------------------------------------------------------------------------------------
// lora_down: xa = drop(x) A^T. Block: LORA_DOWN_ROWS (64) rows of x, warp w its rows 16w..16w+15,
// and one split [k0, k1) of the in dimension, walked in 64-column chunks. A chunk's x tile [64, 64]
// and A tile [RP, 64] (one for the four warps' rows) are read into registers while the tensor cores
// work on the chunk before; each warp keeps its rows' xa in its accumulators.

#define LORA_DOWN_ROWS 64

// a chunk of lora_down from column kc, raw: the thread's 8 columns from kc + col of x's rows t,
// t + 4, t + 8, t + 12 and its AV float4s of the A tile (rows arow + 8i, 4 columns from kc + acol);
// zero past T, k1 and r
template <int AV>
__device__ __forceinline__ void fetch_down_chunk(uint4 *xr, float4 *ar, const bf16 *x, const float *A, int t, int T,
                                                 int in, int kc, int k1, int col, int arow, int acol, int r, bool vec,
                                                 bool vec4) {
#pragma unroll
    for (int v = 0; v < 4; v++) xr[v] = fetch8(x, t + 4 * v, T, in, kc + col, k1, vec);
#pragma unroll
    for (int i = 0; i < AV; i++) ar[i] = fetch_a4(A, arow + 8 * i, r, in, kc + acol, k1, vec4);
}

template <int R16>
__global__ void __launch_bounds__(LORA_THREADS, LORA_BLOCKS_PER_SM)
lora_down_kernel(float *xa, bf16 *xa16, float *part, int *cnt, const bf16 *x, const float *A, int T, int in, int r,
                 int kchunk, float p, float inv, uint64_t seed, int vec, int vec4) {
    constexpr int RP = R16 * 16, RL = RP + 4;
    constexpr int AV = RP * 16 / LORA_THREADS; // the A tile's float4s a thread fetches
    constexpr int TILES = (LORA_DOWN_ROWS + RP) * XS_LD * 2, RED = 4 * 16 * RL * 4;
    // the x tile [64, 64] and A tile [RP, 64] in bf16; after the loop, each warp's xa [16, RP]
    // (row stride RL) in fp32
    __shared__ __align__(32) unsigned char sm[TILES > RED ? TILES : RED];
    bf16 *xs = reinterpret_cast<bf16 *>(sm), *as = xs + LORA_DOWN_ROWS * XS_LD;
    __shared__ int last;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t0 = blockIdx.x * LORA_DOWN_ROWS, tw = t0 + warp * 16, ks = blockIdx.y, KS = gridDim.y;
    int k0 = ks * kchunk, k1 = min(in, k0 + kchunk);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[R16];
#pragma unroll
    for (int n = 0; n < R16; n++) wmma::fill_fragment(acc[n], 0.0f);
    // the warp's 16 x 64 tile in four steps of 4 rows: lane takes 8 columns of row 4v + lane/8 (a
    // step reads four whole 128-byte rows); the A tile: thread takes 4 columns of rows arow + 8i
    int lrow = lane >> 3, col = (lane & 7) * 8, arow = threadIdx.x >> 4, acol = (threadIdx.x & 15) * 4;
    uint4 xr[4];
    float4 ar[AV];
    fetch_down_chunk<AV>(xr, ar, x, A, tw + lrow, T, in, k0, k1, col, arow, acol, r, vec, vec4);
    for (int kc = k0; kc < k1; kc += 64) {
        uint32_t bits = 0;
#pragma unroll
        for (int v = 0; v < 4; v++) {
            float f[8];
            int row = 4 * v + lrow;
            drop8(f, &bits, v * 8, xr[v], tw + row, in, kc + col, p, inv, seed);
            store8(xs + (warp * 16 + row) * XS_LD + col, f);
        }
#pragma unroll
        for (int i = 0; i < AV; i++) put_a4(as + (arow + 8 * i) * XS_LD + acol, ar[i]);
        __syncthreads();
        if (kc + 64 < k1) // the next chunk's loads, in flight during this chunk's products
            fetch_down_chunk<AV>(xr, ar, x, A, tw + lrow, T, in, kc + 64, k1, col, arow, acol, r, vec, vec4);
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
            wmma::load_matrix_sync(fa, xs + warp * 16 * XS_LD + kk * 16, XS_LD);
#pragma unroll
            for (int n = 0; n < R16; n++) { // B = A^T tile [16 k, 16 r]: A's rows are its columns
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> fb;
                wmma::load_matrix_sync(fb, as + n * 16 * XS_LD + kk * 16, XS_LD);
                wmma::mma_sync(acc[n], fa, fb, acc[n]);
            }
        }
        __syncthreads(); // every warp is done with the tiles before the next chunk overwrites them
    }
    float *red = reinterpret_cast<float *>(sm) + warp * 16 * RL;
#pragma unroll
    for (int n = 0; n < R16; n++) wmma::store_matrix_sync(red + n * 16, acc[n], RL, wmma::mem_row_major);
    __syncwarp();
    // the block's part [64, RP]: warp w's rows at 16w
    float *mine = part + ((size_t)ks * gridDim.x + blockIdx.x) * LORA_DOWN_ROWS * RP + (size_t)warp * 16 * RP;
    for (int e = lane; e < 16 * RP; e += 32) {
        int i = e / RP, j = e % RP;
        float s = red[i * RL + j];
        if (KS > 1) {
            mine[e] = s;
        } else if (tw + i < T && j < r) {
            if (xa) xa[(int64_t)(tw + i) * r + j] = s;
            if (xa16) xa16[(int64_t)(tw + i) * r + j] = __float2bfloat16_rn(s);
        }
    }
    if (KS == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&cnt[blockIdx.x], 1) == KS - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int e = threadIdx.x; e < LORA_DOWN_ROWS * RP; e += LORA_THREADS) {
        int i = e / RP, j = e % RP;
        if (t0 + i >= T || j >= r) continue;
        float s = 0.0f;
        for (int z = 0; z < KS; z++) s += __ldcg(part + ((size_t)z * gridDim.x + blockIdx.x) * LORA_DOWN_ROWS * RP + e);
        if (xa) xa[(int64_t)(t0 + i) * r + j] = s;
        if (xa16) xa16[(int64_t)(t0 + i) * r + j] = __float2bfloat16_rn(s);
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
}

// ---------------------------------------------------------------------------------------------
// lora_up_bwd: one block a 64-column strip of x and dx and one split [tb0, tb1) of the rows; each
// warp takes 16-row chunks of the split in turn, keeping its dA [RP, 64] part in registers. A
// chunk's x and g are read into registers while the warp works on the chunk before, and its dx
// (where dx is accumulated into) while the warp works on its products.

// a warp's chunk from row t, raw: x's 16 x 64 tile (lane: 8 columns from c of rows 4v + lrow) and
// g's [16, RP] (lane: the pieces e = lane + 32k of 8 columns, row e / G8, columns 8 (e % G8)); zero
// past tb1, in and r
template <int R16>
__device__ __forceinline__ void fetch_up_chunk(uint4 *xr, uint4 *gr, const bf16 *x, const bf16 *g, int t, int tb1,
                                               int in, int c, int lrow, int lane, int r, bool vec, bool gvec) {
    constexpr int G8 = R16 * 2;
#pragma unroll
    for (int v = 0; v < 4; v++) xr[v] = fetch8(x, t + 4 * v + lrow, tb1, in, c, in, vec);
#pragma unroll
    for (int k = 0; k < R16; k++) {
        int e = lane + 32 * k;
        gr[k] = fetch8(g, t + e / G8, tb1, r, 8 * (e % G8), r, gvec);
    }
}

template <int R16>
__global__ void __launch_bounds__(LORA_THREADS, R16 == 1 ? LORA_BLOCKS_PER_SM : 1)
lora_up_bwd_kernel(float *dA, bf16 *dx, int accumulate, float *part, int *cnt, const bf16 *g, const bf16 *x,
                   const float *A, int T, int in, int r, int tchunk, float p, float inv, uint64_t seed, int vec,
                   int vec4, int gvec) {
    constexpr int RP = R16 * 16, GL = RP + 8, G8 = RP / 8; // g's 16 x RP tile: 16 * G8 pieces of 8
    __shared__ __align__(32) bf16 as[RP * XS_LD];
    __shared__ __align__(32) bf16 xs[4][16 * XS_LD];
    __shared__ __align__(32) bf16 gs[4][16 * GL];
    __shared__ __align__(32) float ys[4 * 16 * YS_LD]; // per warp (g A) [16, 64]; then dA's sum [RP, 64]
    static_assert(RP * YS_LD <= 4 * 16 * YS_LD, "dA's block sum fits the (g A) tiles");
    static_assert(16 * G8 % 32 == 0, "g's tile is whole pieces for every lane");
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
    uint4 xr[4], gr[R16]; // g's pieces e = lane + 32k: row e / G8, columns 8 (e % G8)
    int t = tb0 + warp * 16;
    fetch_up_chunk<R16>(xr, gr, x, g, t, tb1, in, c0 + col, lrow, lane, r, vec, gvec);
    for (; t < tb1; t += 4 * 16) {
        uint4 dr[4] = {};
        if (dx && accumulate) { // this chunk's dx, in flight during its products
#pragma unroll
            for (int v = 0; v < 4; v++) dr[v] = fetch8(dx, t + 4 * v + lrow, tb1, in, c0 + col, in, vec);
        }
#pragma unroll
        for (int k = 0; k < R16; k++) {
            int e = lane + 32 * k;
            *reinterpret_cast<uint4 *>(gs[warp] + (e / G8) * GL + 8 * (e % G8)) = gr[k];
        }
        uint32_t bits = 0;
#pragma unroll
        for (int v = 0; v < 4; v++) {
            float f[8];
            int row = 4 * v + lrow;
            drop8(f, &bits, v * 8, xr[v], t + row, in, c0 + col, p, inv, seed);
            store8(xs[warp] + row * XS_LD + col, f);
        }
        __syncwarp();
        int tn = t + 4 * 16;
        if (tn < tb1) // the next chunk's x and g, in flight during this chunk's products
            fetch_up_chunk<R16>(xr, gr, x, g, tn, tb1, in, c0 + col, lrow, lane, r, vec, gvec);
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
                    if (accumulate) {
                        float o[8];
                        unpack8(o, bf16x8_of(dr[v]));
#pragma unroll
                        for (int j = 0; j < 8; j++) f[j] += o[j];
                    }
                    bf16 *d = dx + (int64_t)tt * in + c;
                    if (vec && c + 8 <= in) {
                        store8(d, f);
                    } else {
                        for (int j = 0; j < 8 && c + j < in; j++) d[j] = __float2bfloat16_rn(f[j]);
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
    size_t part; // floats of the split's partial sums (0: one split)
};

// the grid of lora_down for x [T, in] at rank r, aiming at no more than `target` blocks (those one
// wave keeps resident) where the splits allow
static inline lora_down_shape lora_down_grid(int T, int in, int r, int target) {
    lora_down_shape s;
    s.rowtiles = CEIL_DIV(T, LORA_DOWN_ROWS);
    int want = target / s.rowtiles;
    int most = CEIL_DIV(in, 128); // a split of at least two 64-column chunks: one to load while one works
    int ks = want < most ? want : most;
    if (ks < 1) ks = 1;
    s.kchunk = CEIL_DIV(CEIL_DIV(in, ks), 64) * 64;
    s.ks = CEIL_DIV(in, s.kchunk);
    s.part = s.ks > 1 ? (size_t)s.ks * s.rowtiles * LORA_DOWN_ROWS * CEIL_DIV(r, 16) * 16 : 0;
    return s;
}

struct lora_up_shape {
    int strips, ts, tchunk;
    size_t part;
};

// the grid of lora_up_bwd, likewise
static inline lora_up_shape lora_up_grid(int T, int in, int r, int target) {
    lora_up_shape s;
    s.strips = CEIL_DIV(in, 64);
    int want = target / s.strips;
    int most = CEIL_DIV(T, 64);
    int ts = want < most ? want : most;
    if (ts < 1) ts = 1;
    s.tchunk = CEIL_DIV(CEIL_DIV(T, ts), 64) * 64;
    s.ts = CEIL_DIV(T, s.tchunk);
    s.part = s.ts > 1 ? (size_t)s.ts * s.strips * CEIL_DIV(r, 16) * 16 * 64 : 0;
    return s;
}

#endif
