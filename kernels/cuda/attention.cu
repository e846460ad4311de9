// attention.cu: the attention ops (forward, backward, KV-cache generation): argument checks,
// the backward's shared preparation (D = rowsum(dout * out), the fp32 dq accumulator and its
// conversion to bf16), and the choice between cuDNN's fused attention (attention_cudnn.cu, for
// the layouts it takes) and our two kernel families (cuda_ext.h).
#include "attention_common.cuh"
#include "cuda_ext.h"

#include <stdlib.h>
#include <string.h>

static int g_attn_kernel = -1;
static int g_cudnn_required; // QLORA_CUDA_ATTENTION=cudnn: a missing cuDNN is an error
static long g_cudnn_calls;

extern "C" void cuda_attention_select(int kernel) {
    g_attn_kernel = kernel == CUDA_ATTN_TILED || kernel == CUDA_ATTN_CUDNN ? kernel : CUDA_ATTN_MMA;
    g_cudnn_required = 0;
}

extern "C" int cuda_attention_selected(void) {
    if (g_attn_kernel < 0) {
        const char *e = getenv("QLORA_CUDA_ATTENTION");
        if (!e || !*e || !strcmp(e, "auto"))
            g_attn_kernel = CUDA_ATTN_CUDNN;
        else if (!strcmp(e, "cudnn"))
            g_attn_kernel = CUDA_ATTN_CUDNN, g_cudnn_required = 1;
        else if (!strcmp(e, "mma"))
            g_attn_kernel = CUDA_ATTN_MMA;
        else if (!strcmp(e, "tiled"))
            g_attn_kernel = CUDA_ATTN_TILED;
        else
            CUDA_REQUIRE(0, "QLORA_CUDA_ATTENTION must be cudnn, mma, tiled or auto");
    }
    return g_attn_kernel;
}

extern "C" const char *cuda_attention_name(int kernel) {
    static char name[640];
    if (kernel == CUDA_ATTN_TILED) return "tiled (wmma)";
    if (kernel != CUDA_ATTN_CUDNN) return "mma";
    char why[512];
    if (cuda_attention_cudnn_probe(why, sizeof why) == 0)
        snprintf(name, sizeof name, "cudnn (fused flash attention, %s; other layouts on mma)", why);
    else
        snprintf(name, sizeof name, "mma (cuDNN unavailable: %s)", why);
    return name;
}

extern "C" long cuda_attention_cudnn_calls(void) { return g_cudnn_calls; }

// the layout of the last seq_start uploaded (cuda_attention_layout): its device address, T and
// the common sequence length L (0: the sequences differ in length)
static const int32_t *g_layout_dev;
static int g_layout_T, g_layout_L;

extern "C" void cuda_attention_layout(const int32_t *seq_start, const int32_t *h_seq_start, int T) {
    int L = T;
    for (int t = 1; t < T; t++)
        if (h_seq_start[t] != 0) {
            L = t;
            break;
        }
    if (L <= 0 || T % L) L = 0;
    for (int t = 0; t < T && L; t++)
        if (h_seq_start[t] != t - t % L) L = 0;
    g_layout_dev = seq_start, g_layout_T = T, g_layout_L = L;
}

// b sequences of s tokens when seq_start is one that cuDNN can take; 0 otherwise
static int cudnn_shape(const int32_t *seq_start, int T, int *b, int *s) {
    if (!seq_start) {
        *b = 1, *s = T;
        return 1;
    }
    if (seq_start != g_layout_dev || T != g_layout_T || g_layout_L <= 0) return 0;
    *b = T / g_layout_L, *s = g_layout_L;
    return 1;
}

// cuDNN was asked for by name and is missing: stop with why
static void cudnn_missing(void) {
    char why[512], msg[640];
    if (!g_cudnn_required || cuda_attention_cudnn_probe(why, sizeof why) == 0) return;
    snprintf(msg, sizeof msg, "QLORA_CUDA_ATTENTION=cudnn but %s", why);
    CUDA_REQUIRE(0, msg);
}

static int attn_vec(const void *a, const void *b, const void *c, int hd) {
    return hd % 8 == 0 && ((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0 && ((uintptr_t)c & 15) == 0;
}

static void attn_check(int hd, int nh, int nkv) {
    CUDA_REQUIRE(hd > 0 && hd <= 128, "attention: head dim must be in 1..128");
    CUDA_REQUIRE(nkv > 0 && nh % nkv == 0, "attention: heads must be a multiple of kv heads");
}

static void attn_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                     int Tq, int Tk, int q_off, int nh, int nkv, int hd) {
    int vec = attn_vec(q, k, v, hd);
    int sel = cuda_attention_selected(), b, s;
    if (sel == CUDA_ATTN_CUDNN && Tq == Tk && vec && lse && attn_vec(out, lse, q, 8)) {
        cudnn_missing();
        if (cudnn_shape(seq_start, Tq, &b, &s) && attn_cudnn_fwd(out, lse, q, k, v, b, s, nh, nkv, hd) == 0) {
            g_cudnn_calls++;
            return;
        }
    }
    if (sel == CUDA_ATTN_TILED)
        attn_tiled_fwd(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec);
    else
        attn_mma_fwd(out, lse, q, k, v, seq_start, Tq, Tk, q_off, nh, nkv, hd, vec);
}

void launch_attention_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd) {
    attn_check(hd, nh, nkv);
    if (T == 0) return;
    attn_fwd(out, lse, q, k, v, seq_start, T, T, 0, nh, nkv, hd);
}

// generation: the Tq queries are the last Tq of Tk cached positions, one sequence
void launch_attention_cached(bf16 *out, const bf16 *q, const bf16 *kc, const bf16 *vc, int Tq, int Tk, int nh,
                             int nkv, int hd) {
    attn_check(hd, nh, nkv);
    CUDA_REQUIRE(Tq <= Tk, "attention: more queries than cached positions");
    if (Tq == 0) return;
    attn_fwd(out, NULL, q, kc, vc, NULL, Tq, Tk, Tk - Tq, nh, nkv, hd);
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
                          int nkv, int hd) {
    attn_check(hd, nh, nkv);
    if (T == 0) return;
    int vec = attn_vec(q, k, v, hd) && attn_vec(dout, dk, dv, hd), sel = cuda_attention_selected(), nb, ns;
    if (sel == CUDA_ATTN_CUDNN && vec && attn_vec(dq, out, lse, 8)) {
        cudnn_missing();
        if (cudnn_shape(seq_start, T, &nb, &ns) &&
            attn_cudnn_bwd(dq, dk, dv, dout, out, lse, q, k, v, nb, ns, nh, nkv, hd) == 0) {
            g_cudnn_calls++;
            return;
        }
    }
    cudaStream_t s = cuda_stream();
    size_t nq = (size_t)T * nh * hd;
    float *dq_acc = (float *)cuda_scratch(SCRATCH_ATTN_DQ, nq * sizeof(float));
    float *D = (float *)cuda_scratch(SCRATCH_ATTN_D, (size_t)T * nh * sizeof(float));
    CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, nq * sizeof(float), s));
    int64_t warps = (int64_t)T * nh;
    attn_bwd_dot_kernel<<<(unsigned)CEIL_DIV(warps * 32, (int64_t)256), 256, 0, s>>>(D, dout, out, T, nh, hd);
    CUDA_CHECK_LAUNCH();
    if (sel == CUDA_ATTN_TILED)
        attn_tiled_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec);
    else
        attn_mma_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec);
    launch_f32_to_bf16(dq, dq_acc, (int64_t)nq);
}
