// lora.cu: the x side of a LoRA branch in one pass each, the dropout mask drawn on the fly.
//
// The branch of y = x W^T + s (drop(x) A^T) B^T costs little arithmetic (r = 16: 2 T in r flops a
// product) but, done as separate steps, many passes over [T, in] tensors: drop(x) written and read
// back twice, the skinny GEMMs drop(x) A^T and g^T drop(x) (cuBLAS gets few blocks out of an output
// of r columns), (g A) written, then masked and added to dx. Measured on the H200 (issue 21) that
// was about 140 us a module a step at the 7B shape, where the bytes need about 30. Here:
//   lora_down:   xa [T, r] = drop(x) A^T            one read of x, A from its fp32 master
//   lora_up_bwd: dA [r, in] += g^T drop(x) and
//                dx [T, in] (+)= (g A) * keep/(1-p)  one read of x, one write (or read-modify-write) of dx
// where g = s dy B [T, r]. The mask is the one the CPU reference and every other path draw:
// element i = t*in + c is kept when ops_dropout_keep(seed, i, p), recomputed here from the hash, never
// stored. Products run on the tensor cores (WMMA, bf16 in, fp32 accumulate) with the operands rounded
// to bf16 exactly as the cuBLAS path rounds them (drop(x) = bf16(x / (1-p)), A in bf16).
//
// Reductions in a fixed order, so both kernels give the same bits run after run (deterministic mode
// needs nothing more): a block's warps are summed in warp order; where the reduced dimension is split
// over blocks (lora_down: in; lora_up_bwd: T), each block writes its partial sum to scratch and the
// last block of a group to finish (an atomic counter, which decides only who adds, not the order)
// adds the partials in split order and resets the counter for the next call.
#include "launch.cuh"
#include "cuda_ext.h"

#include <mma.h>
#include <stdlib.h>
#include <string.h>

#include "lora_kernels.cuh"

static int sm_count(void) {
    static int n = 0;
    if (!n) {
        int dev = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
        if (n < 1) n = 1;
    }
    return n;
}

// Off by default: on the GPU (test_ops_gpu passed on them) they tied the GEMM path on every row until
// 2026-12-05, and their rewrite of 2026-12-06 (lora_kernels.cuh: 64-row blocks of lora_down, the next
// tile fetched during the products) is checked only on the CPU (tests/emu/lora_emu.cpp) until
// `bench/gpu-next.sh X` runs it; flip this if X shows the fused path ahead on every row.
#define LORA_FUSED_DEFAULT 0

static int g_fused = -1; // cuda_lora_fused_set; -1: not read from the environment yet

extern "C" int cuda_lora_fused(void) {
    if (g_fused < 0) {
        const char *e = getenv("QLORA_CUDA_LORA");
        g_fused = e && !strcmp(e, "fused") ? 1 : e && !strcmp(e, "gemm") ? 0 : LORA_FUSED_DEFAULT;
    }
    return g_fused;
}

extern "C" void cuda_lora_fused_set(int on) { g_fused = on ? 1 : 0; }

bool lora_fused_ok(int r) { return r >= 1 && r <= LORA_FUSED_MAX_R && cuda_lora_fused(); }

// ---------------------------------------------------------------------------------------------
// launchers

static bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// the split counters: zero when first allocated, and every kernel leaves them zero
static int *lora_counters(size_t n) {
    static size_t zeroed = 0;
    int *c = (int *)cuda_scratch(SCRATCH_LORA_TURN, n * sizeof(int));
    if (n > zeroed) {
        CUDA_CHECK(cudaMemsetAsync(c, 0, n * sizeof(int), cuda_stream()));
        zeroed = n;
    }
    return c;
}

// the blocks a launch aims at: one wave of LORA_BLOCKS_PER_SM on every multiprocessor
static int lora_target_blocks(void) { return LORA_BLOCKS_PER_SM * sm_count(); }

static int r16_of(int r) { return CEIL_DIV(r, 16); }

extern "C" size_t cuda_lora_scratch_bytes(int64_t T, int64_t in, int r) {
    if (r < 1 || r > LORA_FUSED_MAX_R || T <= 0 || in <= 0) return 0;
    lora_down_shape d = lora_down_grid((int)T, (int)in, r, lora_target_blocks());
    lora_up_shape u = lora_up_grid((int)T, (int)in, r, lora_target_blocks());
    size_t cnt = (size_t)(d.rowtiles > u.strips ? d.rowtiles : u.strips);
    return (d.part > u.part ? d.part : u.part) * sizeof(float) + cnt * sizeof(int);
}

void launch_lora_down(float *xa, bf16 *xa16, const bf16 *x, const float *A, int T, int in, int r, float p,
                      uint64_t seed) {
    CUDA_REQUIRE(r >= 1 && r <= LORA_FUSED_MAX_R, "lora_down: rank out of the fused range");
    if (T <= 0) return;
    lora_down_shape s = lora_down_grid(T, in, r, lora_target_blocks());
    int R16 = r16_of(r);
    float *part = (float *)cuda_scratch(SCRATCH_LORA_PART, s.part * sizeof(float));
    int *cnt = lora_counters((size_t)s.rowtiles);
    int vec = in % 8 == 0 && al16(x), vec4 = in % 4 == 0 && al16(A);
    float inv = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    dim3 grid((unsigned)s.rowtiles, (unsigned)s.ks);
    cudaStream_t st = cuda_stream();
#define DOWN(R)                                                                                                     \
    lora_down_kernel<R><<<grid, LORA_THREADS, 0, st>>>(xa, xa16, part, cnt, x, A, T, in, r, s.kchunk, p, inv, seed, \
                                                       vec, vec4)
    switch (R16) {
    case 1: DOWN(1); break;
    case 2: DOWN(2); break;
    case 3: DOWN(3); break;
    default: DOWN(4); break;
    }
#undef DOWN
    CUDA_CHECK_LAUNCH();
}

void launch_lora_up_bwd(float *dA, bf16 *dx, int accumulate, const bf16 *g, const bf16 *x, const float *A, int T,
                        int in, int r, float p, uint64_t seed) {
    CUDA_REQUIRE(r >= 1 && r <= LORA_FUSED_MAX_R, "lora_up_bwd: rank out of the fused range");
    if (T <= 0) return;
    lora_up_shape s = lora_up_grid(T, in, r, lora_target_blocks());
    int R16 = r16_of(r);
    float *part = (float *)cuda_scratch(SCRATCH_LORA_PART, s.part * sizeof(float));
    int *cnt = lora_counters((size_t)s.strips);
    int vec = in % 8 == 0 && al16(x) && (!dx || al16(dx)), vec4 = in % 4 == 0 && al16(A), gvec = r % 8 == 0 && al16(g);
    float inv = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    dim3 grid((unsigned)s.strips, (unsigned)s.ts);
    cudaStream_t st = cuda_stream();
#define UP(R)                                                                                                       \
    lora_up_bwd_kernel<R><<<grid, LORA_THREADS, 0, st>>>(dA, dx, accumulate, part, cnt, g, x, A, T, in, r, s.tchunk, \
                                                         p, inv, seed, vec, vec4, gvec)
    switch (R16) {
    case 1: UP(1); break;
    case 2: UP(2); break;
    case 3: UP(3); break;
    default: UP(4); break;
    }
#undef UP
    CUDA_CHECK_LAUNCH();
}
