// attention.cu: the attention ops (forward, backward, KV-cache generation): argument checks,
// the backward's shared preparation (D = rowsum(dout * out), the fp32 dq accumulator and its
// conversion to bf16), the choice between the two kernel families (cuda_ext.h; head dims over 128
// always take the tiled one), and the ops_attn options (sliding window, score scale, soft-capping)
// resolved into attn_params.
#include "attention_common.cuh"
#include "cuda_ext.h"

#include <stdlib.h>
#include <string.h>

static int g_attn_kernel = -1;

extern "C" void cuda_attention_select(int kernel) { g_attn_kernel = kernel == CUDA_ATTN_TILED ? CUDA_ATTN_TILED : CUDA_ATTN_MMA; }

extern "C" int cuda_attention_selected(void) {
    if (g_attn_kernel < 0) {
        const char *e = getenv("QLORA_CUDA_ATTENTION");
        g_attn_kernel = e && !strcmp(e, "tiled") ? CUDA_ATTN_TILED : CUDA_ATTN_MMA;
    }
    return g_attn_kernel;
}

extern "C" const char *cuda_attention_name(int kernel) { return kernel == CUDA_ATTN_TILED ? "tiled (wmma)" : "mma"; }

static int attn_vec(const void *a, const void *b, const void *c, int hd) {
    return hd % 8 == 0 && ((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0 && ((uintptr_t)c & 15) == 0;
}

static void attn_check(int hd, int nh, int nkv) {
    CUDA_REQUIRE(hd > 0 && hd <= 256, "attention: head dim must be in 1..256");
    CUDA_REQUIRE(nkv > 0 && nh % nkv == 0, "attention: heads must be a multiple of kv heads");
}

// ops_attn (NULL: plain causal attention) as the kernels take it
static attn_params attn_resolve(const ops_attn *opt, int hd) {
    attn_params p = {0, 1.0f / sqrtf((float)hd), 0.0f};
    if (opt) {
        CUDA_REQUIRE(opt->window >= 0 && opt->scale >= 0 && opt->softcap >= 0, "attention: negative option");
        p.window = opt->window;
        if (opt->scale > 0) p.scale = opt->scale;
        p.softcap = opt->softcap;
    }
    return p;
}

static bool attn_use_tiled(int hd) { return hd > 128 || cuda_attention_selected() == CUDA_ATTN_TILED; }

static void attn_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                     int Tq, int Tk, int q_off, int nh, int nkv, int hd, attn_params ap) {
    int vec = attn_vec(q, k, v, hd);
    if (attn_use_tiled(hd))
        attn_tiled_fwd(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
    else
        attn_mma_fwd(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec, ap);
}

void launch_attention_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt) {
    attn_check(hd, nh, nkv);
    if (T == 0) return;
    attn_fwd(out, lse, q, k, v, seq_start, T, T, 0, nh, nkv, hd, attn_resolve(opt, hd));
}

// generation: the Tq queries are the last Tq of Tk cached positions, one sequence
void launch_attention_cached(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc, int Tq, int Tk, int nh,
                             int nkv, int hd, const ops_attn *opt) {
    attn_check(hd, nh, nkv);
    CUDA_REQUIRE(Tq <= Tk, "attention: more queries than cached positions");
    if (Tq == 0) return;
    attn_fwd(out, NULL, q, kc, vc, NULL, Tq, Tk, Tk - Tq, nh, nkv, hd, attn_resolve(opt, hd));
}

// D[h, t] = sum_d dout[t, h, d] * out[t, h, d]: one warp per (t, h)
__global__ void attn_bwd_dot_kernel(float *D, const bf16 *dout, const bf16 *out, int T, int nh, int hd) {
    int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (w >= (int64_t)T * nh) return;
    int t = (int)(w / nh), h = (int)(w % nh);
    const bf16 *a = dout + w * hd, *b = out + w * hd;
    float s = 0.0f;
    for (int d = lane; d < hd; d += 32) s += __bfloat162float(a[d]) * __bfloat162float(b[d]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) D[(int64_t)h * T + t] = s;
}

void launch_attention_bwd(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *out, const float *lse,
                          const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start, int T, int nh,
                          int nkv, int hd, const ops_attn *opt) {
    attn_check(hd, nh, nkv);
    if (T == 0) return;
    attn_params ap = attn_resolve(opt, hd);
    cudaStream_t s = cuda_stream();
    size_t nq = (size_t)T * nh * hd;
    float *dq_acc = (float *)cuda_scratch(SCRATCH_ATTN_DQ, nq * sizeof(float));
    float *D = (float *)cuda_scratch(SCRATCH_ATTN_D, (size_t)T * nh * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, nq * sizeof(float), s));
    int64_t warps = (int64_t)T * nh;
    attn_bwd_dot_kernel<<<(unsigned)CEIL_DIV(warps * 32, (int64_t)256), 256, 0, s>>>(D, dout, out, T, nh, hd);
    CUDA_CHECK_LAUNCH();
    int vec = attn_vec(q, k, v, hd) && attn_vec(dout, dk, dv, hd);
    if (attn_use_tiled(hd))
        attn_tiled_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    else
        attn_mma_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    launch_f32_to_bf16(dq, dq_acc, (int64_t)nq);
}
