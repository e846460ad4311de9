// nf4.cu: 4-bit (NF4/FP4, bitsandbytes layout) dequantize, quantize and random fill kernels.
//
// Dequantize is memory-bound: 0.5 byte read and 2 bytes written per element. Each thread turns
// 4 code bytes (8 elements) into one 16-byte bf16 store, so a warp reads 128 contiguous bytes
// and writes 512; each thread keeps DQ_UNROLL such loads in flight before its first store.
// The 16-entry code table sits in shared memory: lanes reading the same entry broadcast and
// different entries lie in different banks, so the lookup never conflicts.
#include "launch.cuh"
#include "nf4_cuda.h"

#define DQ_THREADS 256
#define DQ_UNROLL 4

__global__ void nf4_dequant_bf16_kernel(bf16 *__restrict__ dst, const uint32_t *__restrict__ codes,
                                        const float *__restrict__ absmax, const float *__restrict__ quant_map,
                                        int64_t units, int blocksize) {
    __shared__ float qm[16];
    if (threadIdx.x < 16) qm[threadIdx.x] = quant_map[threadIdx.x];
    __syncthreads();
    int64_t base = (int64_t)blockIdx.x * DQ_THREADS * DQ_UNROLL + threadIdx.x;
    uint32_t c[DQ_UNROLL];
    float am[DQ_UNROLL];
#pragma unroll
    for (int k = 0; k < DQ_UNROLL; k++) {
        int64_t u = base + (int64_t)k * DQ_THREADS;
        if (u < units) {
            c[k] = __ldg(codes + u);
            am[k] = __ldg(absmax + (u * 8) / blocksize);
        }
    }
#pragma unroll
    for (int k = 0; k < DQ_UNROLL; k++) {
        int64_t u = base + (int64_t)k * DQ_THREADS;
        if (u >= units) break;
        // byte j of the little-endian word holds elements 2j (high nibble) and 2j+1 (low nibble)
        __align__(16) bf16 o[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t b = (c[k] >> (8 * j)) & 0xffu;
            o[2 * j] = __float2bfloat16_rn(qm[b >> 4] * am[k]);
            o[2 * j + 1] = __float2bfloat16_rn(qm[b & 15u] * am[k]);
        }
        reinterpret_cast<uint4 *>(dst)[u] = *reinterpret_cast<const uint4 *>(o);
    }
}

// The same with double-quantized absmax (bitsandbytes' compress_statistics kept on the device:
// 1 byte a block instead of 4): absmax[b] = nested_map[aq[b]] * nested_absmax[b / 256] + offset,
// multiplied and added in two roundings as the CPU reference does (no FMA contraction).
__device__ __forceinline__ float nf4_dq_absmax(const uint8_t *aq, const float *nested_absmax, const float *nmap,
                                               float offset, int64_t b) {
    return __fadd_rn(__fmul_rn(nmap[aq[b]], __ldg(nested_absmax + b / 256)), offset);
}

__global__ void nf4_dequant_dq_bf16_kernel(bf16 *__restrict__ dst, const uint32_t *__restrict__ codes,
                                           const uint8_t *__restrict__ aq, const float *__restrict__ nested_absmax,
                                           const float *__restrict__ nested_map, float offset,
                                           const float *__restrict__ quant_map, int64_t units, int blocksize) {
    __shared__ float qm[16], nmap[256];
    if (threadIdx.x < 16) qm[threadIdx.x] = quant_map[threadIdx.x];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) nmap[i] = nested_map[i];
    __syncthreads();
    int64_t base = (int64_t)blockIdx.x * DQ_THREADS * DQ_UNROLL + threadIdx.x;
    uint32_t c[DQ_UNROLL];
    float am[DQ_UNROLL];
#pragma unroll
    for (int k = 0; k < DQ_UNROLL; k++) {
        int64_t u = base + (int64_t)k * DQ_THREADS;
        if (u < units) {
            c[k] = __ldg(codes + u);
            am[k] = nf4_dq_absmax(aq, nested_absmax, nmap, offset, (u * 8) / blocksize);
        }
    }
#pragma unroll
    for (int k = 0; k < DQ_UNROLL; k++) {
        int64_t u = base + (int64_t)k * DQ_THREADS;
        if (u >= units) break;
        __align__(16) bf16 o[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t b = (c[k] >> (8 * j)) & 0xffu;
            o[2 * j] = __float2bfloat16_rn(qm[b >> 4] * am[k]);
            o[2 * j + 1] = __float2bfloat16_rn(qm[b & 15u] * am[k]);
        }
        reinterpret_cast<uint4 *>(dst)[u] = *reinterpret_cast<const uint4 *>(o);
    }
}

__global__ void nf4_dequant_dq_bf16_scalar_kernel(bf16 *__restrict__ dst, const uint8_t *__restrict__ codes,
                                                  const uint8_t *__restrict__ aq,
                                                  const float *__restrict__ nested_absmax,
                                                  const float *__restrict__ nested_map, float offset,
                                                  const float *__restrict__ quant_map, int64_t start, int64_t n,
                                                  int blocksize) {
    int64_t i = start + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint8_t b = codes[i >> 1];
    uint32_t code = (i & 1) ? (b & 15u) : (b >> 4);
    dst[i] = __float2bfloat16_rn(quant_map[code] * nf4_dq_absmax(aq, nested_absmax, nested_map, offset, i / blocksize));
}

// any alignment and the tail that is not a whole 8-element unit
__global__ void nf4_dequant_bf16_scalar_kernel(bf16 *__restrict__ dst, const uint8_t *__restrict__ codes,
                                               const float *__restrict__ absmax, const float *__restrict__ quant_map,
                                               int64_t start, int64_t n, int blocksize) {
    int64_t i = start + (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint8_t b = codes[i >> 1];
    uint32_t code = (i & 1) ? (b & 15u) : (b >> 4);
    dst[i] = __float2bfloat16_rn(quant_map[code] * absmax[i / blocksize]);
}

void launch_nf4_dequant_bf16(bf16 *dst, const uint8_t *codes, const float *absmax, const float *quant_map, int64_t n,
                             int blocksize, cudaStream_t s) {
    CUDA_REQUIRE(blocksize >= 8 && blocksize % 8 == 0, "nf4 blocksize must be a multiple of 8");
    if (n <= 0) return;
    int64_t vec_units = 0;
    if (((uintptr_t)codes & 3) == 0 && ((uintptr_t)dst & 15) == 0) {
        vec_units = n / 8;
        if (vec_units > 0) {
            int64_t grid = CEIL_DIV(vec_units, (int64_t)DQ_THREADS * DQ_UNROLL);
            nf4_dequant_bf16_kernel<<<(unsigned)grid, DQ_THREADS, 0, s>>>(dst, (const uint32_t *)codes, absmax,
                                                                          quant_map, vec_units, blocksize);
            CUDA_CHECK_LAUNCH();
        }
    }
    int64_t start = vec_units * 8;
    if (start < n) {
        int64_t grid = CEIL_DIV(n - start, (int64_t)256);
        nf4_dequant_bf16_scalar_kernel<<<(unsigned)grid, 256, 0, s>>>(dst, codes, absmax, quant_map, start, n,
                                                                      blocksize);
        CUDA_CHECK_LAUNCH();
    }
}

void launch_nf4_dequant_dq_bf16(bf16 *dst, const uint8_t *codes, const uint8_t *absmax_q, const float *nested_absmax,
                                const float *nested_map, float nested_offset, const float *quant_map, int64_t n,
                                int blocksize, cudaStream_t s) {
    CUDA_REQUIRE(blocksize >= 8 && blocksize % 8 == 0, "nf4 blocksize must be a multiple of 8");
    if (n <= 0) return;
    int64_t vec_units = 0;
    if (((uintptr_t)codes & 3) == 0 && ((uintptr_t)dst & 15) == 0) {
        vec_units = n / 8;
        if (vec_units > 0) {
            int64_t grid = CEIL_DIV(vec_units, (int64_t)DQ_THREADS * DQ_UNROLL);
            nf4_dequant_dq_bf16_kernel<<<(unsigned)grid, DQ_THREADS, 0, s>>>(
                dst, (const uint32_t *)codes, absmax_q, nested_absmax, nested_map, nested_offset, quant_map, vec_units,
                blocksize);
            CUDA_CHECK_LAUNCH();
        }
    }
    int64_t start = vec_units * 8;
    if (start < n) {
        int64_t grid = CEIL_DIV(n - start, (int64_t)256);
        nf4_dequant_dq_bf16_scalar_kernel<<<(unsigned)grid, 256, 0, s>>>(dst, codes, absmax_q, nested_absmax,
                                                                         nested_map, nested_offset, quant_map, start,
                                                                         n, blocksize);
        CUDA_CHECK_LAUNCH();
    }
}

// Columns [c0, c0+w) of a [rows, cols] weight into dst [rows, w] (either form of absmax: aq
// non-NULL selects double quant). The capped backward uses it: dx[:, c0..] = dy W[:, c0..] is
// one GEMM per column range with nothing summed across ranges, so the rounding is that of one
// GEMM. One thread per 8 elements when c0, w and cols are multiples of 8; else one per element.
__global__ void nf4_dequant_cols_kernel(bf16 *__restrict__ dst, const uint8_t *__restrict__ codes,
                                        const float *__restrict__ absmax, const uint8_t *__restrict__ aq,
                                        const float *__restrict__ nested_absmax,
                                        const float *__restrict__ nested_map, float offset,
                                        const float *__restrict__ quant_map, int64_t rows, int64_t cols, int64_t c0,
                                        int64_t w, int blocksize, int vec) {
    __shared__ float qm[16], nmap[256];
    if (threadIdx.x < 16) qm[threadIdx.x] = quant_map[threadIdx.x];
    if (aq)
        for (int i = threadIdx.x; i < 256; i += blockDim.x) nmap[i] = nested_map[i];
    __syncthreads();
    int64_t u = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (vec) {
        int64_t per_row = w / 8;
        if (u >= rows * per_row) return;
        int64_t r = u / per_row, j = (u % per_row) * 8, i = r * cols + c0 + j;
        int64_t b = i / blocksize;
        float am = aq ? nf4_dq_absmax(aq, nested_absmax, nmap, offset, b) : __ldg(absmax + b);
        uint32_t c = __ldg(reinterpret_cast<const uint32_t *>(codes + i / 2));
        __align__(16) bf16 o[8];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t byte = (c >> (8 * k)) & 0xffu;
            o[2 * k] = __float2bfloat16_rn(qm[byte >> 4] * am);
            o[2 * k + 1] = __float2bfloat16_rn(qm[byte & 15u] * am);
        }
        *reinterpret_cast<uint4 *>(dst + r * w + j) = *reinterpret_cast<const uint4 *>(o);
    } else {
        if (u >= rows * w) return;
        int64_t r = u / w, j = u % w, i = r * cols + c0 + j, b = i / blocksize;
        float am = aq ? nf4_dq_absmax(aq, nested_absmax, nmap, offset, b) : absmax[b];
        uint8_t byte = codes[i >> 1];
        dst[r * w + j] = __float2bfloat16_rn(qm[(i & 1) ? (byte & 15u) : (byte >> 4)] * am);
    }
}

void launch_nf4_dequant_cols(bf16 *dst, const ops_nf4 *W, int64_t c0, int64_t w, cudaStream_t s) {
    if (w <= 0 || W->rows <= 0) return;
    if (W->dense) { // not quantized: the columns as they are
        CUDA_CHECK(cudaMemcpy2DAsync(dst, (size_t)w * sizeof(bf16), (const bf16 *)W->dense + c0,
                                     (size_t)W->cols * sizeof(bf16), (size_t)w * sizeof(bf16), (size_t)W->rows,
                                     cudaMemcpyDeviceToDevice, s));
        return;
    }
    CUDA_REQUIRE(W->blocksize >= 8 && W->blocksize % 8 == 0, "nf4 blocksize must be a multiple of 8");
    int vec = c0 % 8 == 0 && w % 8 == 0 && W->cols % 8 == 0 && ((uintptr_t)W->codes & 3) == 0 &&
              ((uintptr_t)dst & 15) == 0;
    int64_t threads = vec ? W->rows * (w / 8) : W->rows * w;
    nf4_dequant_cols_kernel<<<(unsigned)CEIL_DIV(threads, (int64_t)256), 256, 0, s>>>(
        dst, W->codes, W->absmax, W->absmax_q, W->nested_absmax, W->nested_map, W->nested_offset, W->quant_map,
        W->rows, W->cols, c0, w, W->blocksize, vec);
    CUDA_CHECK_LAUNCH();
}

extern "C" void nf4_cuda_dequant_dq_bf16(uint16_t *dst, const uint8_t *codes, const uint8_t *absmax_q,
                                         const float *nested_absmax, const float *nested_map, float nested_offset,
                                         const float *quant_map, int64_t n, int blocksize) {
    launch_nf4_dequant_dq_bf16((bf16 *)dst, codes, absmax_q, nested_absmax, nested_map, nested_offset, quant_map, n,
                               blocksize, cuda_stream());
}

extern "C" void nf4_cuda_dequant_bf16(uint16_t *dst, const uint8_t *codes, const float *absmax,
                                      const float *quant_map, int64_t n, int blocksize) {
    launch_nf4_dequant_bf16((bf16 *)dst, codes, absmax, quant_map, n, blocksize, cuda_stream());
}

// One warp per quantization block. The thresholds are the fp32 midpoints of adjacent entries
// of the sorted table (docs/nf4.md: equal to bitsandbytes' literals to the bit); a code is the
// number of thresholds strictly below y, so ties take the lower code and NaN takes code 0.
__device__ __forceinline__ uint32_t nf4_code(float y, const float *th) {
    uint32_t c = 0;
#pragma unroll
    for (int k = 0; k < 15; k++) c += (y > th[k]) ? 1u : 0u;
    return c;
}

__global__ void nf4_quantize_f32_kernel(uint8_t *__restrict__ codes, float *__restrict__ absmax,
                                        const float *__restrict__ x, const float *__restrict__ quant_map, int64_t n,
                                        int blocksize, int64_t nblocks) {
    __shared__ float th[15];
    if (threadIdx.x < 15) th[threadIdx.x] = (quant_map[threadIdx.x] + quant_map[threadIdx.x + 1]) * 0.5f;
    __syncthreads();
    int lane = threadIdx.x & 31;
    int64_t blk = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (blk >= nblocks) return;
    int64_t b0 = blk * blocksize, b1 = b0 + blocksize < n ? b0 + blocksize : n;
    float m = 0.0f;
    for (int64_t i = b0 + lane; i < b1; i += 32) m = fmaxf(m, fabsf(x[i]));
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) absmax[blk] = m;
    float inv = __frcp_rn(m); // IEEE 1/absmax, as the reference (fast-math would approximate)
    // pairs (2j, 2j+1) never straddle blocks: block sizes are even
    for (int64_t i = b0 + 2 * lane; i < b1; i += 64) {
        uint32_t hi, lo;
        if (m == 0.0f) {
            hi = lo = 7u; // all-zero block: code of 0.0 (the torch path's choice)
        } else {
            hi = nf4_code(__fmul_rn(x[i], inv), th);
            lo = i + 1 < n ? nf4_code(__fmul_rn(x[i + 1], inv), th) : 7u; // odd n: pad with 0.0
        }
        codes[i >> 1] = (uint8_t)((hi << 4) | lo);
    }
}

extern "C" void nf4_cuda_quantize_f32(uint8_t *codes, float *absmax, const float *x, const float *quant_map,
                                      int64_t n, int blocksize) {
    CUDA_REQUIRE(blocksize >= 2 && blocksize % 2 == 0, "nf4 blocksize must be even");
    if (n <= 0) return;
    int64_t nblocks = CEIL_DIV(n, (int64_t)blocksize);
    const int warps = 8;
    nf4_quantize_f32_kernel<<<(unsigned)CEIL_DIV(nblocks, (int64_t)warps), warps * 32, 0, cuda_stream()>>>(
        codes, absmax, x, quant_map, n, blocksize, nblocks);
    CUDA_CHECK_LAUNCH();
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void nf4_fill_random_kernel(uint8_t *codes, float *absmax, int64_t nbytes, int64_t nblocks,
                                       uint64_t seed, float lo, float hi) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int64_t words = nbytes / 8;
    if (i < words) {
        reinterpret_cast<uint64_t *>(codes)[i] = mix64(seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1));
    } else if (i - words < nbytes % 8) {
        codes[words * 8 + (i - words)] = (uint8_t)mix64(seed ^ (uint64_t)i);
    }
    if (i < nblocks) {
        float u = (float)(mix64(~seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)) >> 40) * (1.0f / 16777216.0f);
        absmax[i] = lo + (hi - lo) * u;
    }
}

extern "C" void nf4_cuda_fill_random(uint8_t *codes, float *absmax, int64_t n, int blocksize, uint64_t seed,
                                     float lo, float hi) {
    CUDA_REQUIRE(((uintptr_t)codes & 7) == 0, "codes must be 8-byte aligned");
    int64_t nbytes = (n + 1) / 2, nblocks = CEIL_DIV(n, (int64_t)blocksize);
    int64_t work = nbytes / 8 + 8;
    if (nblocks > work) work = nblocks;
    nf4_fill_random_kernel<<<(unsigned)CEIL_DIV(work, (int64_t)256), 256, 0, cuda_stream()>>>(
        codes, absmax, nbytes, nblocks, seed, lo, hi);
    CUDA_CHECK_LAUNCH();
}
