// ops_cuda.cu: the CUDA op table (ops_cuda()) and the runtime under it: memory, streams, scratch,
// deterministic mode and the cuBLAS GEMM wrapper. Each op lives in the file named like its
// plain C reference in kernels/cpu/: qlinear.cu (qlinear with its LoRA branch), xent.cu (the
// chunked lm_head + cross-entropy, logits), elementwise.cu, attention.cu, optim.cu, nf4.cu;
// the table entries here are the launcher calls and small wrappers.
//
// Everything runs on one non-blocking stream (cuda_stream()), so a training step can be
// captured into a CUDA graph; cuBLAS gets a fixed workspace so it never allocates inside a step.
// The one exception is the NF4 dequantization that feeds a GEMM (qlinear.cu): it runs on a side
// stream (g_side) that the main stream waits on through events.
#include "launch.cuh"
#include "cuda_ext.h"
#include "device.h"
#include "nf4_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

void cuda_fatal(const char *stmt, const char *func, const char *file, int line, const char *msg) {
    int dev = -1;
    cudaGetDevice(&dev);
    // kernels/ has no logger of its own (it sits below core/): a device fault is a bug, so
    // say where and stop, as ggml_cuda_error does
    fprintf(stderr, "qlora-run: CUDA error: %s\n  in %s (%s:%d) on device %d: %s\n", msg, func, file, line, dev,
            stmt);
    abort();
}

// ---------------------------------------------------------------------------------------------
// runtime: stream, cuBLAS, scratch, allocation accounting

static cudaStream_t g_stream;
cudaStream_t g_side;                            // launch.cuh
cudaEvent_t g_ev_start, g_ev_chunk[DQ_CHUNKS]; // launch.cuh
static cublasHandle_t g_cublas;
static void *g_cublas_ws;
static const size_t CUBLAS_WS_BYTES = 32u << 20;
static void *g_scratch[SCRATCH_COUNT];
static size_t g_scratch_bytes[SCRATCH_COUNT];
static std::mutex g_mem_mu;
static std::unordered_map<void *, size_t> *g_sizes;
static size_t g_live_bytes, g_peak_bytes;

static void mem_note_alloc(void *p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mem_mu);
    if (!g_sizes) g_sizes = new std::unordered_map<void *, size_t>();
    (*g_sizes)[p] = bytes;
    g_live_bytes += bytes;
    if (g_live_bytes > g_peak_bytes) g_peak_bytes = g_live_bytes;
}

static void mem_note_free(void *p) {
    std::lock_guard<std::mutex> lock(g_mem_mu);
    if (!g_sizes) return;
    auto it = g_sizes->find(p);
    if (it == g_sizes->end()) return;
    g_live_bytes -= it->second;
    g_sizes->erase(it);
}

static void runtime_init(void) {
    if (g_stream) return;
    CUDA_CHECK(cudaSetDevice(cuda_device_selected()));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&g_side, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_start, cudaEventDisableTiming));
    for (int i = 0; i < DQ_CHUNKS; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_chunk[i], cudaEventDisableTiming));
    CUBLAS_CHECK(cublasCreate(&g_cublas));
    CUBLAS_CHECK(cublasSetStream(g_cublas, g_stream));
    CUDA_CHECK(cudaMalloc(&g_cublas_ws, CUBLAS_WS_BYTES));
    mem_note_alloc(g_cublas_ws, CUBLAS_WS_BYTES);
    CUBLAS_CHECK(cublasSetWorkspace(g_cublas, g_cublas_ws, CUBLAS_WS_BYTES));
}

cudaStream_t cuda_stream(void) {
    runtime_init();
    return g_stream;
}

cublasHandle_t cuda_cublas(void) {
    runtime_init();
    return g_cublas;
}

void *cuda_cublas_workspace(size_t *bytes) {
    runtime_init();
    *bytes = CUBLAS_WS_BYTES;
    return g_cublas_ws;
}

// The logits chunk of the cross-entropy and the fp32 dq accumulator of attention's backward
// share the dequantized-weight slot: all three are used by one op at a time on the main stream,
// and the side stream's dequantization waits for the main stream's earlier work (g_ev_start).
// The mma kernels' fp32 dk, dv partial sums share cuDNN's workspace slot: one attention backward
// runs on one of the two, and the memory plan counts the larger (model/llama_plan.c).
size_t g_scratch_cap; // 0: unlimited (cuda_scratch_cap_set); launch.cuh

extern "C" void cuda_scratch_cap_set(size_t bytes) { g_scratch_cap = bytes; }
extern "C" size_t cuda_scratch_cap(void) { return g_scratch_cap; }

void *cuda_scratch(int slot, size_t bytes) {
    if (slot == SCRATCH_XENT || slot == SCRATCH_ATTN_DQ) slot = SCRATCH_W_BF16;
    if (slot == SCRATCH_ATTN_DKV) slot = SCRATCH_CUDNN_WS;
    if (bytes == 0) bytes = 1;
    if (bytes > g_scratch_bytes[slot]) {
        // grows only on the first call with a larger shape (the first step): the step after it
        // allocates nothing, which is what lets the step be replayed as a CUDA graph
        if (g_scratch[slot]) {
            CUDA_CHECK(cudaDeviceSynchronize()); // both streams may still use the old buffer
            mem_note_free(g_scratch[slot]);
            CUDA_CHECK(cudaFree(g_scratch[slot]));
        }
        size_t sz = (bytes + 255) & ~(size_t)255;
        CUDA_CHECK(cudaMalloc(&g_scratch[slot], sz));
        mem_note_alloc(g_scratch[slot], sz);
        g_scratch_bytes[slot] = sz;
    }
    return g_scratch[slot];
}

extern "C" size_t cuda_scratch_slot_bytes(int slot) {
    return slot >= 0 && slot < SCRATCH_COUNT ? g_scratch_bytes[slot] : 0;
}

extern "C" void cuda_mem_stats(size_t *live_bytes, size_t *peak_bytes) {
    std::lock_guard<std::mutex> lock(g_mem_mu);
    *live_bytes = g_live_bytes;
    *peak_bytes = g_peak_bytes;
}

extern "C" void cuda_mem_reset_peak(void) {
    std::lock_guard<std::mutex> lock(g_mem_mu);
    g_peak_bytes = g_live_bytes;
}

extern "C" void *cuda_stream_handle(void) { return cuda_stream(); }

static cudaStream_t g_comm;
static cudaEvent_t g_ev_main, g_ev_comm;

extern "C" void *cuda_comm_stream(void) {
    runtime_init();
    if (!g_comm) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&g_comm, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_main, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_comm, cudaEventDisableTiming));
    }
    return g_comm;
}

extern "C" void cuda_comm_after_main(void) {
    cuda_comm_stream();
    CUDA_CHECK(cudaEventRecord(g_ev_main, g_stream));
    CUDA_CHECK(cudaStreamWaitEvent(g_comm, g_ev_main, 0));
}

extern "C" void cuda_main_after_comm(void) {
    cuda_comm_stream();
    CUDA_CHECK(cudaEventRecord(g_ev_comm, g_comm));
    CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_ev_comm, 0));
}

// ---------------------------------------------------------------------------------------------
// deterministic mode (cuda_ext.h)

static int g_det = -1;

static void det_init(void) {
    if (g_det >= 0) return;
    const char *e = getenv("QLORA_CUDA_DETERMINISTIC");
    g_det = e && (!strcmp(e, "1") || !strcmp(e, "true"));
}

bool cuda_det(void) {
    det_init();
    return g_det == 1;
}

extern "C" int cuda_deterministic(void) { return cuda_det() ? 1 : 0; }

extern "C" int cuda_deterministic_set(int on, char *why, size_t cap) {
    if (on && cuda_attention_selected() == CUDA_ATTN_TILED) {
        if (why && cap)
            snprintf(why, cap, "the tiled attention kernels (QLORA_CUDA_ATTENTION=tiled) have no fixed-order "
                               "backward: unset QLORA_CUDA_ATTENTION (the default mma kernels have one) or set "
                               "deterministic: false");
        return -1;
    }
    g_det = on ? 1 : 0;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// GEMM

void gemm_rm(int ta, int tb, int M, int N, int K, float alpha, const bf16 *A, int lda, const bf16 *B, int ldb,
             float beta, void *C, int ldc, int c_f32) {
    if (M == 0 || N == 0) return;
    // row-major C[M,N] = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands.
    cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    // Deterministic in both modes: cuBLAS picks its algorithm from the shape, the types and the
    // device alone, and gives the same bits run to run on one GPU model when every call goes to
    // one stream with one fixed workspace (runtime_init: cublasSetWorkspace, never a second
    // stream for the handle). Its split-K variants reduce through that workspace in a fixed order.
    CUBLAS_CHECK(cublasGemmEx(cuda_cublas(), opa, opb, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                              &beta, C, c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------------------------------------
// table entries

static void *cu_alloc(size_t bytes) {
    runtime_init();
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess) {
        cudaGetLastError(); // out of memory is the caller's to report
        return NULL;
    }
    mem_note_alloc(p, bytes);
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream()));
    return p;
}

static void cu_free(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
    mem_note_free(p);
    CUDA_CHECK(cudaFree(p));
}

// Pinned, device-mapped host memory (ops.h alloc_host): with unified addressing the device alias
// cudaHostGetDevicePointer gives is the host pointer itself, so one pointer serves the kernels and
// the host; a platform where they differ gets NULL (the caller keeps the state on the device).
// Counted apart from the device bytes: it is what the plan moved off the device.
static size_t g_host_live_bytes;
static std::unordered_map<void *, size_t> *g_host_sizes;

// zeroes n bytes at p, a large block on up to 16 threads (a slice of 1 GiB or more each): one
// thread writes at one core's bandwidth, and the offloaded layer inputs of a long context take
// 100 GiB and more (the 80 GiB cells of bench/RESULTS.md: 108 GiB pinned, 85-100 s before the
// first step, this memset one part of it)
static void zero_host(void *p, size_t n) {
    const size_t slice = (size_t)1 << 30;
    unsigned hw = std::thread::hardware_concurrency();
    size_t k = hw < 2 ? 1 : hw > 16 ? 16 : hw;
    if (n / slice < k) k = n / slice > 0 ? n / slice : 1;
    if (k < 2) {
        memset(p, 0, n);
        return;
    }
    std::vector<std::thread> th;
    size_t per = ((n + k - 1) / k + 4095) & ~(size_t)4095; // k slices cover n
    for (size_t i = 0; i < k; i++) {
        size_t a = i * per, b = a + per < n ? a + per : n;
        if (a >= b) break;
        try {
            th.emplace_back([=] { memset((char *)p + a, 0, b - a); });
        } catch (...) { // no thread to be had: this one does the slice
            memset((char *)p + a, 0, b - a);
        }
    }
    for (auto &t : th) t.join();
}

static void *cu_alloc_host(size_t bytes) {
    runtime_init();
    void *p = NULL, *dev = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocMapped) != cudaSuccess) {
        cudaGetLastError(); // out of pinned memory is the caller's to report
        return NULL;
    }
    if (cudaHostGetDevicePointer(&dev, p, 0) != cudaSuccess || dev != p) {
        cudaGetLastError();
        cudaFreeHost(p);
        return NULL;
    }
    zero_host(p, bytes);
    std::lock_guard<std::mutex> lock(g_mem_mu);
    if (!g_host_sizes) g_host_sizes = new std::unordered_map<void *, size_t>();
    (*g_host_sizes)[p] = bytes;
    g_host_live_bytes += bytes;
    return p;
}

static void cu_free_host(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream())); // a kernel may still stream over it
    {
        std::lock_guard<std::mutex> lock(g_mem_mu);
        auto it = g_host_sizes ? g_host_sizes->find(p) : std::unordered_map<void *, size_t>::iterator();
        if (g_host_sizes && it != g_host_sizes->end()) {
            g_host_live_bytes -= it->second;
            g_host_sizes->erase(it);
        }
    }
    CUDA_CHECK(cudaFreeHost(p));
}

// Side copies (ops.h side_copy): one copy stream of their own, an event per slot. A copy waits
// for the main stream's work so far (g_ev_side_start), then records its slot's event.
static cudaStream_t g_copy;
static cudaEvent_t g_ev_side_start, g_ev_slot[OPS_SIDE_SLOTS];

static void cu_side_copy(int slot, void *dst, const void *src, size_t bytes) {
    runtime_init();
    if (!g_copy) {
        CUDA_CHECK(cudaStreamCreateWithFlags(&g_copy, cudaStreamNonBlocking));
        CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_side_start, cudaEventDisableTiming));
        for (int i = 0; i < OPS_SIDE_SLOTS; i++) CUDA_CHECK(cudaEventCreateWithFlags(&g_ev_slot[i], cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaEventRecord(g_ev_side_start, g_stream));
    CUDA_CHECK(cudaStreamWaitEvent(g_copy, g_ev_side_start, 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, g_copy));
    CUDA_CHECK(cudaEventRecord(g_ev_slot[slot], g_copy));
}

static void cu_side_wait(int slot) {
    if (g_copy) CUDA_CHECK(cudaStreamWaitEvent(g_stream, g_ev_slot[slot], 0));
}

extern "C" size_t cuda_host_mem_live(void) {
    std::lock_guard<std::mutex> lock(g_mem_mu);
    return g_host_live_bytes;
}

// cudaMemcpyDefault: the pointers say where they live, so a buffer of alloc_host (host memory
// standing in for a device one) is copied as correctly as a device buffer
static void cu_upload(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cuda_stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
}

static void cu_download(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cuda_stream()));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream()));
}

static void cu_copy(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cuda_stream()));
}

static void cu_zero(void *p, size_t bytes) { CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream())); }

static void cu_sync(void) { CUDA_CHECK(cudaStreamSynchronize(cuda_stream())); }

static void cu_embedding_fwd(void *out, const int32_t *ids, const uint16_t *table, int T, int C) {
    launch_embedding_fwd((bf16 *)out, ids, (const bf16 *)table, T, C);
}

static void cu_rmsnorm_fwd(void *out, float *rstd, const void *x, const uint16_t *w, float w_add, int T, int C,
                           float eps) {
    launch_rmsnorm_fwd((bf16 *)out, rstd, (const bf16 *)x, (const bf16 *)w, w_add, T, C, eps);
}

static void cu_rmsnorm_bwd(void *dx, const void *dout, const void *x, const uint16_t *w, float w_add,
                           const float *rstd, int T, int C) {
    launch_rmsnorm_bwd((bf16 *)dx, (const bf16 *)dout, (const bf16 *)x, (const bf16 *)w, w_add, rstd, T, C);
}

static void cu_add_inplace(void *y, const void *x, int64_t n) { launch_add_inplace((bf16 *)y, (const bf16 *)x, n); }

static void cu_rope(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse) {
    launch_rope((bf16 *)q, pos, inv_freq, T, nh, hd, inverse);
}

static void cu_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                             const int32_t *seq_start, int T, int nh, int nkv, int hd) {
    launch_attention_fwd((bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, T, nh, nkv,
                         hd, NULL);
}

static void cu_attention_ex_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                                const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt) {
    launch_attention_fwd((bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, T, nh, nkv,
                         hd, opt);
}

static void cu_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                             const void *q, const void *k, const void *v, const int32_t *seq_start, int T, int nh,
                             int nkv, int hd) {
    launch_attention_bwd((bf16 *)dq, (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, (const bf16 *)out, lse,
                         (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, T, nh, nkv, hd, NULL);
}

static void cu_attention_ex_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                                const void *q, const void *k, const void *v, const int32_t *seq_start, int T, int nh,
                                int nkv, int hd, const ops_attn *opt) {
    launch_attention_bwd((bf16 *)dq, (bf16 *)dk, (bf16 *)dv, (const bf16 *)dout, (const bf16 *)out, lse,
                         (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, seq_start, T, nh, nkv, hd, opt);
}

static void cu_attention_cached(void *out, const void *q, const void *kcache, const void *vcache, int Tq, int Tk,
                                int nh, int nkv, int hd) {
    launch_attention_cached((bf16 *)out, (const bf16 *)q, (const bf16 *)kcache, (const bf16 *)vcache, Tq, Tk, nh, nkv,
                            hd, NULL);
}

static void cu_attention_ex_cached(void *out, const void *q, const void *kcache, const void *vcache, int Tq, int Tk,
                                   int nh, int nkv, int hd, const ops_attn *opt) {
    launch_attention_cached((bf16 *)out, (const bf16 *)q, (const bf16 *)kcache, (const bf16 *)vcache, Tq, Tk, nh, nkv,
                            hd, opt);
}

static void cu_swiglu_fwd(void *out, const void *gate, const void *up, int64_t n) {
    launch_swiglu_fwd((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n);
}

static void cu_swiglu_bwd(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n) {
    launch_swiglu_bwd((bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout, (const bf16 *)gate, (const bf16 *)up, n);
}

static void cu_geglu_fwd(void *out, const void *gate, const void *up, int64_t n) {
    launch_geglu_fwd((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, n);
}

static void cu_geglu_bwd(void *dgate, void *dup, const void *dout, const void *gate, const void *up, int64_t n) {
    launch_geglu_bwd((bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout, (const bf16 *)gate, (const bf16 *)up, n);
}

static void cu_act_scale(void *x, int64_t n, float s) { launch_act_scale((bf16 *)x, n, s); }

static void cu_rope_ex(void *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                       int inverse) {
    launch_rope_ex((bf16 *)q, pos, inv_freq, T, nh, hd, rot, mscale, inverse);
}

static void cu_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                     float beta2, float eps, float weight_decay, int step) {
    launch_adamw(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}

static double cu_sum_squares(const float *g, int64_t n) {
    double *acc = (double *)cuda_scratch(SCRATCH_REDUCE, (1 + SUM_SQUARES_MAX_BLOCKS) * sizeof(double));
    launch_sum_squares(acc, acc + 1, g, n);
    double r = 0;
    cu_download(&r, acc, sizeof r);
    return r;
}

static void cu_scale(float *g, int64_t n, float s) { launch_scale(g, n, s); }

static void cu_info(ops_backend_info *out) {
    cuda_device_info d;
    if (cuda_device_query(&d) == 0 && d.count > 0) {
        snprintf(out->name, sizeof out->name, "%s", d.name);
        out->total_bytes = (double)d.total_bytes;
        out->free_bytes = (double)d.free_bytes;
    }
    size_t live = 0, peak = 0;
    cuda_mem_stats(&live, &peak);
    out->live_bytes = (double)live;
    out->peak_bytes = (double)peak;
    out->attention = cuda_attention_name(cuda_attention_selected());
    out->scratch_cap = cuda_scratch_cap();
    out->deterministic = cuda_det() ? 1 : 0;
    out->det_attn_workspace_cap = out->deterministic ? cuda_attention_det_workspace_cap() : 0;
    cuda_versions(&out->cuda_driver, &out->cuda_runtime);
    cuda_driver_release(out->driver, sizeof out->driver);
}

static int cu_deterministic_set(int on, char *why, size_t cap) { return cuda_deterministic_set(on, why, cap); }

static const ops_table g_table = {
    "cuda",
    OPS_BF16,
    cu_alloc,
    cu_free,
    cu_upload,
    cu_download,
    cu_copy,
    cu_zero,
    cu_sync,
    cu_alloc_host,
    cu_free_host,
    cu_embedding_fwd,
    cu_rmsnorm_fwd,
    cu_rmsnorm_bwd,
    cu_add_inplace,
    cu_rope,
    cu_attention_fwd,
    cu_attention_bwd,
    cu_attention_cached,
    cu_swiglu_fwd,
    cu_swiglu_bwd,
    cu_qlinear_fwd,
    cu_qlinear_bwd,
    cu_xent_fwd_bwd,
    cu_logits,
    cu_adamw,
    cu_sum_squares,
    cu_scale,
    cu_attention_ex_fwd,
    cu_attention_ex_bwd,
    cu_attention_ex_cached,
    cu_geglu_fwd,
    cu_geglu_bwd,
    cu_act_scale,
    cu_rope_ex,
    cuda_attention_layout,
    1, /* own_memory */
    cu_info,
    cuda_scratch_cap_set,
    cu_side_copy,
    cu_side_wait,
    cu_deterministic_set,
    cu_nf4_dequant,
    cuda_attention_det_workspace_cap_set,
    cuda_attention_workspace,
    cuda_attention_workspace_cap_set,
};

extern "C" const ops_table *ops_cuda(void) {
    static int have = -1;
    if (have < 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
            cudaGetLastError();
            have = 0;
        } else {
            have = 1;
        }
    }
    return have ? &g_table : NULL;
}
