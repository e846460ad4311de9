// attention.cu: the attention ops (forward, backward, KV-cache generation): argument checks,
// the backward's shared preparation (D = rowsum(dout * out), the fp32 dq accumulator and its
// conversion to bf16), the choice between cuDNN's fused attention (attention_cudnn.cu, for the
// layouts and options it takes: head dims up to 256; the score scale and sliding windows when
// cuda_attention_cudnn_ex is on; never soft-capping) and our two kernel families (cuda_ext.h;
// head dims over 128 take the tiled one), and the ops_attn options (sliding window, score scale,
// soft-capping) resolved into attn_params.
// In deterministic mode (cuda_det()) cuDNN runs only with plans built for it (deterministic
// reductions, engines without the nondeterministic note: attention_cudnn.cu); where cuDNN
// cannot, the backward runs on the mma family, which has the fixed-order dq sum.
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
        snprintf(name, sizeof name, "cudnn (fused flash attention, %s%s; other layouts on mma)", why,
                 cuda_attention_cudnn_ex(-1) ? ", sliding windows and score scales too" : "");
    else
        snprintf(name, sizeof name, "mma (cuDNN unavailable: %s)", why);
    return name;
}

extern "C" long cuda_attention_cudnn_calls(void) { return g_cudnn_calls; }

// The layout of the last seq_start uploaded (cuda_attention_layout): its device address, T,
// the common sequence length L (0: the sequences differ in length) and, for the ragged case,
// where each sequence starts (g_starts[0..g_nseq], the last entry T) and a generation count.
static const int32_t *g_layout_dev;
static int g_layout_T, g_layout_L, g_nseq, g_max_len;
static int *g_starts;
static long g_layout_gen;

extern "C" void cuda_attention_layout(const int32_t *seq_start, const int32_t *h_seq_start, int T) {
    g_layout_dev = nullptr, g_layout_T = 0, g_layout_L = 0, g_nseq = 0, g_layout_gen++;
    int n = 0, max_len = 0;
    for (int t = 0; t < T; t++) n += h_seq_start[t] == t;
    int *starts = (int *)realloc(g_starts, sizeof(int) * (size_t)(n + 1));
    if (!starts) return; // no memory for the table: every layout runs on mma
    g_starts = starts;
    n = 0;
    for (int t = 0; t < T; t++)
        if (h_seq_start[t] == t) starts[n++] = t;
    starts[n] = T;
    int L = n > 0 && T % n == 0 ? T / n : 0;
    for (int i = 0; i < n; i++) {
        int len = starts[i + 1] - starts[i];
        if (len != L) L = 0;
        if (len > max_len) max_len = len;
    }
    g_layout_dev = seq_start, g_layout_T = T, g_layout_L = L, g_nseq = n, g_max_len = max_len;
}

// the ragged layout's device arrays for the current layout and these head counts (uploaded once
// per layout and shape: lengths [b], offsets [b+1] of q-, kv- and lse-shaped tensors)
static const int32_t *ragged_arrays(int b, int nh, int nkv, int hd) {
    static int32_t *dev, *host;
    static size_t cap;
    static long gen = -1;
    static int key[4];
    size_t need = (size_t)4 * b + 3;
    if (gen == g_layout_gen && key[0] == b && key[1] == nh && key[2] == nkv && key[3] == hd) return dev;
    if (need > cap) {
        if (dev) CUDA_CHECK(cudaFree(dev)); // waits for the work that may still read it
        free(host);
        dev = nullptr, host = (int32_t *)malloc(need * sizeof(int32_t));
        if (!host || cudaMalloc((void **)&dev, need * sizeof(int32_t)) != cudaSuccess) {
            cudaGetLastError();
            free(host), host = nullptr, dev = nullptr, cap = 0, gen = -1;
            return nullptr;
        }
        cap = need;
    }
    int32_t *len = host, *oq = host + b, *okv = oq + b + 1, *ost = okv + b + 1;
    for (int i = 0; i <= b; i++) {
        int st = g_starts[i < g_nseq ? i : g_nseq]; // sequences past g_nseq are empty, at T
        if (i < b) len[i] = i < g_nseq ? g_starts[i + 1] - g_starts[i] : 0;
        oq[i] = st * nh * hd, okv[i] = st * nkv * hd, ost[i] = st;
    }
    // pageable source: staged before the call returns, so host can be rewritten at once
    CUDA_CHECK(cudaMemcpyAsync(dev, host, need * sizeof(int32_t), cudaMemcpyHostToDevice, cuda_stream()));
    gen = g_layout_gen, key[0] = b, key[1] = nh, key[2] = nkv, key[3] = hd;
    return dev;
}

// The cuDNN layout of seq_start for these heads: dense (one sequence, or equal sequences) or
// ragged (the sequence count rounded up to a power of two with empty sequences, the longest
// sequence to a power of two of 64 or more: a plan costs 0.1-1 s to build, so a few cached plans
// serve batches of any lengths; the padding costs only idle thread blocks); 0 when seq_start is
// not the one cuda_attention_layout was told about, or the offsets would not fit int32.
static int cudnn_layout(const int32_t *seq_start, int T, int nh, int nkv, int hd, attn_cudnn_layout *L) {
    L->T = T, L->dev = nullptr;
    if (!seq_start) {
        L->b = 1, L->s = T;
        return 1;
    }
    if (seq_start != g_layout_dev || T != g_layout_T || g_nseq <= 0) return 0;
    if (g_layout_L > 0) {
        L->b = T / g_layout_L, L->s = g_layout_L;
        return 1;
    }
    // ragged: head dims that are multiples of 16 only (the backward gave wrong gradients at hd 24
    // on cuDNN 9.19 while 32, 64, 80 and 128 matched the reference; dense batches take hd 24)
    if (hd % 16 || (int64_t)T * nh * hd >= INT32_MAX || (int64_t)T * nkv * hd >= INT32_MAX) return 0;
    int b = 1, sp = 64;
    while (b < g_nseq) b *= 2;
    while (sp < g_max_len) sp *= 2;
    L->b = b, L->s = sp;
    L->dev = ragged_arrays(b, nh, nkv, hd);
    return L->dev != nullptr;
}

// cuDNN was asked for by name and is missing: stop with why
static void cudnn_missing(void) {
    char why[512], msg[640];
    if (!g_cudnn_required || cuda_attention_cudnn_probe(why, sizeof why) == 0) return;
    snprintf(msg, sizeof msg, "QLORA_CUDA_ATTENTION=cudnn but %s", why);
    CUDA_REQUIRE(0, msg);
}

// The memory plan's count of cuDNN's workspace (ops attn_workspace, model/llama_plan.c): the
// larger of the forward and backward plans of one sequence of T tokens, windowed or not as the
// model's layers are; 0 in deterministic mode (its own cap bounds it) or when cuDNN is not the
// kernel asked for. A layout that would take more runs within cuda_attention_workspace_cap_set.
extern "C" double cuda_attention_workspace(int T, int nh, int nkv, int hd, int windowed) {
    if (T <= 0 || cuda_det() || cuda_attention_selected() != CUDA_ATTN_CUDNN) return 0;
    double ws = 0;
    for (int w = 0; w <= (windowed && cuda_attention_cudnn_ex(-1) ? 1 : 0); w++)
        for (int bwd = 0; bwd < 2; bwd++)
            ws = fmax(ws, cuda_attention_cudnn_workspace(bwd, 1, T, T, 0, nh, nkv, hd, w));
    return ws;
}

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

static int g_cudnn_ex = -1;

extern "C" int cuda_attention_cudnn_ex(int on) {
    if (on >= 0) {
        g_cudnn_ex = on ? 1 : 0;
    } else if (g_cudnn_ex < 0) {
        const char *e = getenv("QLORA_CUDA_ATTENTION_EX");
        if (e && !strcmp(e, "off"))
            g_cudnn_ex = 0;
        else if (!e || !*e || !strcmp(e, "cudnn"))
            g_cudnn_ex = 1;
        else
            CUDA_REQUIRE(0, "QLORA_CUDA_ATTENTION_EX must be cudnn or off");
    }
    return g_cudnn_ex;
}

// cuDNN's graphs take the score scale and a sliding window (cuda_attention_cudnn_ex on; else only
// plain causal attention at 1/sqrt(hd)); soft-capping goes to our kernels
static bool attn_cudnn_takes(attn_params ap, int hd) {
    if (ap.softcap != 0.0f) return false;
    return cuda_attention_cudnn_ex(-1) || (ap.window == 0 && ap.scale == 1.0f / sqrtf((float)hd));
}

// a window that reaches back over the longest sequence masks nothing: the plain causal graph
static attn_params attn_cudnn_params(attn_params ap, const attn_cudnn_layout *L) {
    if (ap.window >= (L->dev ? g_max_len : L->s)) ap.window = 0;
    return ap;
}

static void attn_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, const int32_t *seq_start,
                     int Tq, int Tk, int q_off, int nh, int nkv, int hd, attn_params ap) {
    int vec = attn_vec(q, k, v, hd);
    int sel = cuda_attention_selected();
    attn_cudnn_layout L;
    if (sel == CUDA_ATTN_CUDNN && attn_cudnn_takes(ap, hd) && Tq == Tk && vec && lse &&
        attn_vec(out, lse, q, 8)) {
        cudnn_missing();
        if (cudnn_layout(seq_start, Tq, nh, nkv, hd, &L) &&
            attn_cudnn_fwd(out, lse, q, k, v, &L, nh, nkv, hd, attn_cudnn_params(ap, &L)) == 0) {
            g_cudnn_calls++;
            return;
        }
    }
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
    int vec = attn_vec(q, k, v, hd) && attn_vec(dout, dk, dv, hd), sel = cuda_attention_selected();
    attn_cudnn_layout L;
    if (sel == CUDA_ATTN_CUDNN && attn_cudnn_takes(ap, hd) && vec && attn_vec(dq, out, lse, 8)) {
        cudnn_missing();
        if (cudnn_layout(seq_start, T, nh, nkv, hd, &L) &&
            attn_cudnn_bwd(dq, dk, dv, dout, out, lse, q, k, v, &L, nh, nkv, hd, attn_cudnn_params(ap, &L)) == 0) {
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
    // cuda_deterministic_set refuses QLORA_CUDA_ATTENTION=tiled; head dims over 128 reach here
    CUDA_REQUIRE(!(cuda_det() && attn_use_tiled(hd)),
                 "attention: deterministic mode has no fixed-order backward for the tiled kernels (head dims over "
                 "128, or QLORA_CUDA_ATTENTION=tiled): set deterministic: false");
    if (attn_use_tiled(hd))
        attn_tiled_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    else
        attn_mma_bwd(dq_acc, dk, dv, dout, lse, D, q, k, v, seq_start, T, nh, nkv, hd, vec, ap);
    launch_f32_to_bf16(dq, dq_acc, (int64_t)nq);
}
