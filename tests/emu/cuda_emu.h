/* cuda_emu.h: just enough of CUDA to run a kernel's source on the CPU, for tests on machines
 * without a GPU (CI). One block at a time: its threads are real threads (std::thread), so
 * __syncthreads and __syncwarp are barriers and __shared__ variables are statics the block's
 * threads share; blocks run one after another (a kernel whose blocks wait on each other would
 * hang). WMMA fragments hold the whole 16 x 16 tile in every lane (each lane does the warp's whole
 * product: slow, but the same arithmetic: bf16 operands, fp32 sums), so the element order of a
 * fragment is the tile's, row by row. bf16 is rounded to nearest even, as __float2bfloat16_rn.
 * What it cannot show: speed, races between blocks, alignment faults, the hardware's own order of
 * the 16 products inside one mma. */
#ifndef TESTS_EMU_CUDA_EMU_H
#define TESTS_EMU_CUDA_EMU_H

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __nv_bfloat16 { uint16_t u; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __nv_bfloat16 bf16;

inline float __bfloat162float(bf16 h) {
    uint32_t v = (uint32_t)h.u << 16;
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline bf16 __float2bfloat16_rn(float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    if ((v & 0x7fffffffu) > 0x7f800000u) return bf16{(uint16_t)((v >> 16) | 0x40)}; /* NaN stays NaN */
    v += 0x7fffu + ((v >> 16) & 1u);
    return bf16{(uint16_t)(v >> 16)};
}
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {__bfloat162float(h.x), __bfloat162float(h.y)}; }

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct emu_idx { unsigned x, y, z; };
inline thread_local emu_idx threadIdx, blockIdx;
inline dim3 gridDim, blockDim;
inline std::barrier<> *emu_block_bar, *emu_warp_bar[32];

inline void __syncthreads() { emu_block_bar->arrive_and_wait(); }
inline void __syncwarp() { emu_warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }
/* the value of lane ^ o: every lane of the warp must take part (a barrier each side) */
inline float emu_shfl_slot[32][32];
inline float __shfl_xor_sync(unsigned, float v, int o) {
    unsigned w = threadIdx.x >> 5, l = threadIdx.x & 31;
    emu_shfl_slot[w][l] = v;
    __syncwarp();
    float r = emu_shfl_slot[w][l ^ (unsigned)o];
    __syncwarp();
    return r;
}
/* the device's fast approximations, here the library's functions */
inline void __sincosf(float a, float *s, float *c) {
    *s = sinf(a);
    *c = cosf(a);
}
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline float __ldcg(const float *p) {
    float v;
    __atomic_load(p, &v, __ATOMIC_SEQ_CST);
    return v;
}

/* run body (one kernel call) over grid with `threads` threads a block (a multiple of 32, <= 1024) */
inline void emu_launch(dim3 grid, unsigned threads, const std::function<void()> &body) {
    gridDim = grid;
    blockDim = dim3(threads);
    std::barrier<> bar((std::ptrdiff_t)threads);
    std::vector<std::barrier<> *> warps;
    for (unsigned w = 0; w < threads / 32; w++) warps.push_back(new std::barrier<>(32));
    emu_block_bar = &bar;
    for (unsigned w = 0; w < threads / 32; w++) emu_warp_bar[w] = warps[w];
    std::vector<std::thread> th;
    for (unsigned t = 0; t < threads; t++)
        th.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned by = 0; by < grid.y; by++)
                for (unsigned bx = 0; bx < grid.x; bx++) {
                    bar.arrive_and_wait(); /* the block before is done with the shared statics */
                    blockIdx = {bx, by, 0};
                    body();
                }
        });
    for (auto &t : th) t.join();
    for (auto *w : warps) delete w;
}

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
/* element (i, j) of the 16 x 16 tile at x[i * 16 + j] (for matrix_b: i the k index) */
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static constexpr int num_elements = 256;
    float x[256];
};
template <class F> inline void fill_fragment(F &f, float v) {
    for (int i = 0; i < 256; i++) f.x[i] = v;
}
/* row_major: element (i, j) at p[i * ld + j]; col_major: at p[i + j * ld] */
template <class Use, class L> inline void load_matrix_sync(fragment<Use, 16, 16, 16, bf16, L> &f, const bf16 *p, unsigned ld) {
    constexpr bool col = std::is_same<L, col_major>::value;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.x[i * 16 + j] = __bfloat162float(col ? p[i + j * ld] : p[i * ld + j]);
}
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ld, layout_t l) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.x[i * 16 + j] = l == mem_row_major ? p[i * ld + j] : p[i + j * ld];
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ld, layout_t l) {
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) (l == mem_row_major ? p[i * ld + j] : p[i + j * ld]) = f.x[i * 16 + j];
}
template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, bf16, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, bf16, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
    float t[256];
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.x[i * 16 + j];
            for (int k = 0; k < 16; k++) s += a.x[i * 16 + k] * b.x[k * 16 + j];
            t[i * 16 + j] = s;
        }
    memcpy(d.x, t, sizeof t);
}
} // namespace wmma
} // namespace nvcuda

#endif
