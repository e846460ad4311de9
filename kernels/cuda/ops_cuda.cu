// ops_cuda.cu: the CUDA op table (ops_cuda()): memory, the cuBLAS GEMM wrapper, and the ops
// that are compositions of GEMMs and small kernels (qlinear with its LoRA branch, the chunked
// lm_head + cross-entropy, logits). Elementwise kernels live in elementwise.cu, attention in
// attention.cu, the optimizer in optim.cu, NF4 in nf4.cu.
//
// Everything runs on one non-blocking stream (cuda_stream()), so a training step can be
// captured into a CUDA graph; cuBLAS gets a fixed workspace so it never allocates inside a step.
// The one exception is the NF4 dequantization that feeds a GEMM: it runs on a side stream that
// the main stream waits on through events. With QLORA_CUDA_DQ_CHUNKS=2..4 a large weight goes in
// row chunks, so chunk i+1 dequantizes (memory-bound) while the GEMM of chunk i runs
// (compute-bound). Measured on the H200 that overlap loses (7B q,v 2048x1: 143.2 ms a step with
// 4 chunks, 134.0 ms with 1: the smaller GEMMs and the contention cost more than the 10 ms of
// dequantization it hides), so the default is one chunk.
#include "launch.cuh"
#include "cuda_ext.h"
#include "device.h"
#include "nf4_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mutex>
#include <unordered_map>

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

static cudaStream_t g_stream, g_side;
#define DQ_CHUNKS 4
static cudaEvent_t g_ev_start, g_ev_chunk[DQ_CHUNKS];
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
static size_t g_scratch_cap; // 0: unlimited (cuda_scratch_cap_set)

extern "C" void cuda_scratch_cap_set(size_t bytes) { g_scratch_cap = bytes; }
extern "C" size_t cuda_scratch_cap(void) { return g_scratch_cap; }

void *cuda_scratch(int slot, size_t bytes) {
    if (slot == SCRATCH_XENT || slot == SCRATCH_ATTN_DQ) slot = SCRATCH_W_BF16;
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
    memset(p, 0, bytes);
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

static void cu_rmsnorm_fwd(void *out, float *rstd, const void *x, const uint16_t *w, int T, int C, float eps) {
    launch_rmsnorm_fwd((bf16 *)out, rstd, (const bf16 *)x, (const bf16 *)w, T, C, eps);
}

static void cu_rmsnorm_bwd(void *dx, const void *dout, const void *x, const uint16_t *w, const float *rstd, int T,
                           int C) {
    launch_rmsnorm_bwd((bf16 *)dx, (const bf16 *)dout, (const bf16 *)x, (const bf16 *)w, rstd, T, C);
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

// rows [r0, r0+nr) of W to bf16 at dst, queued on stream s (either form of absmax)
static void dequant_rows(bf16 *dst, const ops_nf4 *W, int64_t r0, int64_t nr, cudaStream_t s) {
    int64_t e0 = r0 * W->cols, n = nr * W->cols, b0 = e0 / W->blocksize;
    if (W->dense) // not quantized: bf16 rows as they are
        CUDA_CHECK(cudaMemcpyAsync(dst, (const bf16 *)W->dense + e0, (size_t)n * sizeof(bf16), cudaMemcpyDeviceToDevice, s));
    else if (W->absmax_q)
        launch_nf4_dequant_dq_bf16(dst, W->codes + e0 / 2, W->absmax_q + b0, W->nested_absmax + b0 / 256,
                                   W->nested_map, W->nested_offset, W->quant_map, n, W->blocksize, s);
    else
        launch_nf4_dequant_bf16(dst, W->codes + e0 / 2, W->absmax + b0, W->quant_map, n, W->blocksize, s);
}

// a chunk may start at element e when e is a whole number of blocks (and of 256 blocks with
// double quant, whose nested scales cover 256 blocks each) and of 8 elements (vector stores)
static bool chunk_start_ok(const ops_nf4 *W, int64_t e) {
    int64_t unit = (int64_t)W->blocksize * (W->absmax_q ? 256 : 1);
    return e % unit == 0 && e % 8 == 0;
}

// The frozen weight is dequantized into one reusable bf16 scratch (sized by the largest linear
// layer, never the whole model) right before the GEMMs that read it, in row chunks on the side
// stream: chunk c covers rows [bound[c], bound[c+1]) and is ready when g_ev_chunk[c] fires.
typedef struct wchunks {
    const bf16 *w; // [rows, cols]
    int n;         // chunks
    int bound[DQ_CHUNKS + 1];
} wchunks;

static wchunks dequant_weight(const ops_nf4 *W) {
    size_t n = (size_t)W->rows * (size_t)W->cols;
    bf16 *w = (bf16 *)cuda_scratch(SCRATCH_W_BF16, n * sizeof(bf16));
    wchunks c;
    c.w = w;
    // chunk starts must fall on whole quantization blocks, even elements and 16-byte rows;
    // one chunk unless QLORA_CUDA_DQ_CHUNKS asks for the overlap (see the top of this file)
    static int max_chunks = -1;
    if (max_chunks < 0) {
        const char *e = getenv("QLORA_CUDA_DQ_CHUNKS");
        max_chunks = e && atoi(e) >= 1 && atoi(e) <= DQ_CHUNKS ? atoi(e) : 1;
    }
    int chunks = n >= ((size_t)8 << 20) ? max_chunks : 1;
    for (int i = 1; i < chunks; i++)
        if (!chunk_start_ok(W, W->rows * i / chunks * W->cols)) chunks = 1;
    c.n = chunks;
    for (int i = 0; i <= chunks; i++) c.bound[i] = (int)(W->rows * i / chunks);
    cudaStream_t main_s = cuda_stream();
    // the side stream may overwrite the scratch only after the previous op's GEMMs read it
    CUDA_CHECK(cudaEventRecord(g_ev_start, main_s));
    CUDA_CHECK(cudaStreamWaitEvent(g_side, g_ev_start, 0));
    for (int i = 0; i < chunks; i++) {
        dequant_rows(w + (size_t)c.bound[i] * W->cols, W, c.bound[i], c.bound[i + 1] - c.bound[i], g_side);
        CUDA_CHECK(cudaEventRecord(g_ev_chunk[i], g_side));
    }
    return c;
}

static void wait_chunk(int i) { CUDA_CHECK(cudaStreamWaitEvent(cuda_stream(), g_ev_chunk[i], 0)); }

// Runs f(r0, nr, rows) over row ranges of W dequantized to bf16. Under a scratch cap
// (cuda_scratch_cap_set: the lean plan of a checkpointed run) a weight larger than the cap goes
// through one cap-sized buffer in sequence on the main stream, so the scratch never holds more
// than the cap, whatever the model (a 70B down_proj is 448 MiB in bf16).
template <typename F> static void for_weight_rows(const ops_nf4 *W, F f) {
    size_t bytes = (size_t)W->rows * (size_t)W->cols * sizeof(bf16);
    if (g_scratch_cap && bytes > g_scratch_cap) {
        int64_t rc = (int64_t)(g_scratch_cap / sizeof(bf16)) / W->cols;
        while (rc > 1 && !chunk_start_ok(W, rc * W->cols)) rc--;
        if (rc < 1 || !chunk_start_ok(W, rc * W->cols)) { // no aligned row count under the cap
            rc = 1;
            while (rc < W->rows && !chunk_start_ok(W, rc * W->cols)) rc++;
        }
        bf16 *w = (bf16 *)cuda_scratch(SCRATCH_W_BF16, (size_t)rc * W->cols * sizeof(bf16));
        for (int64_t r0 = 0; r0 < W->rows; r0 += rc) {
            int64_t nr = W->rows - r0 < rc ? W->rows - r0 : rc;
            dequant_rows(w, W, r0, nr, cuda_stream());
            f((int)r0, (int)nr, (const bf16 *)w);
        }
        return;
    }
    wchunks wc = dequant_weight(W);
    for (int i = 0; i < wc.n; i++) {
        int r0 = wc.bound[i], nr = wc.bound[i + 1] - r0;
        wait_chunk(i);
        f(r0, nr, wc.w + (size_t)r0 * W->cols);
    }
}

// y = x W^T + bias + scale * (drop(x) A^T) B^T; xa = drop(x) A^T saved (fp32) for backward.
// Fused (lora.cu: ranks up to 64, while cuda_lora_fused() is on): xa in one pass over x with the
// mask drawn on the fly, then y = scale xa B^T, and the base GEMMs add x W^T onto it (beta = 1:
// cuBLAS reads y in its epilogue, no pass of its own over y). Otherwise the dropout input is
// materialized and the LoRA output is accumulated into y by the second GEMM (beta = 1).
static void cu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                           float *xa, int T) {
    int out = (int)W->rows, in = (int)W->cols;
    bool fused = lora && lora_fused_ok(lora->r);
    if (fused) {
        int r = lora->r;
        bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
        bf16 *xa16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16));
        launch_f32_to_bf16(b16, lora->B, (int64_t)out * r);
        launch_lora_down(xa, xa16, (const bf16 *)x, lora->A, T, in, r, lora->dropout, lora->dropout_seed);
        gemm_rm(0, 1, T, out, r, lora->scale, xa16, r, b16, r, 0.0f, y, out, 0);
    }
    for_weight_rows(W, [&](int r0, int nr, const bf16 *w) { // y[:, rows r0..] (+)= x W[r0..]^T
        gemm_rm(0, 1, T, nr, in, 1.0f, (const bf16 *)x, in, w, in, fused ? 1.0f : 0.0f, (bf16 *)y + r0, out, 0);
    });
    if (bias) launch_add_bias((bf16 *)y, (const bf16 *)bias, T, out);
    if (!lora || fused) return;
    int r = lora->r;
    bf16 *a16 = (bf16 *)cuda_scratch(SCRATCH_LORA_A, (size_t)r * in * sizeof(bf16));
    bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
    bf16 *xa16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16));
    launch_f32_to_bf16(a16, lora->A, (int64_t)r * in);
    launch_f32_to_bf16(b16, lora->B, (int64_t)out * r);
    const bf16 *xin = (const bf16 *)x;
    if (lora->dropout > 0.0f) {
        bf16 *xd = (bf16 *)cuda_scratch(SCRATCH_DROP_X, (size_t)T * in * sizeof(bf16));
        launch_dropout_bf16(xd, xin, (int64_t)T * in, lora->dropout, lora->dropout_seed);
        xin = xd;
    }
    if (xa) { // kept in fp32 for the backward's dB
        gemm_rm(0, 1, T, r, in, 1.0f, xin, in, a16, in, 0.0f, xa, r, 1);
        launch_f32_to_bf16(xa16, xa, (int64_t)T * r);
    } else {
        gemm_rm(0, 1, T, r, in, 1.0f, xin, in, a16, in, 0.0f, xa16, r, 0);
    }
    gemm_rm(0, 1, T, out, r, lora->scale, xa16, r, b16, r, 1.0f, y, out, 0);
}

// dx = dy W + scale (dy B) A * mask; dA += scale (dy B)^T drop(x); dB += scale dy^T xa.
// Fused (lora.cu): dB and g = scale dy B on cuBLAS, then dA and dx's LoRA part in one pass over x
// (the mask drawn again from the hash), then the base GEMMs add dy W onto dx (beta = 1).
static void cu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                           const float *xa, int T, int accumulate) {
    int out = (int)W->rows, in = (int)W->cols;
    size_t wbytes = (size_t)out * (size_t)in * sizeof(bf16);
    bool fused = lora && lora_fused_ok(lora->r);
    if (fused) {
        int r = lora->r;
        bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
        bf16 *g16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16) * 2);
        bf16 *xa16 = g16 + (size_t)T * r;
        launch_f32_to_bf16(b16, lora->B, (int64_t)out * r);
        launch_f32_to_bf16(xa16, xa, (int64_t)T * r);
        gemm_rm(1, 0, out, r, T, lora->scale, (const bf16 *)dy, out, xa16, r, 1.0f, lora->dB, r, 1);
        gemm_rm(0, 0, T, r, out, lora->scale, (const bf16 *)dy, out, b16, r, 0.0f, g16, r, 0);
        launch_lora_up_bwd(lora->dA, (bf16 *)dx, accumulate, g16, (const bf16 *)x, lora->A, T, in, r, lora->dropout,
                           lora->dropout_seed);
        accumulate = 1; // dx holds the LoRA part now
    }
    if (dx && g_scratch_cap && wbytes > g_scratch_cap) {
        // capped: dx[:, c0..c0+w) = dy W[:, c0..c0+w), column range by column range, so each
        // element of dx comes from one GEMM (row ranges would sum many bf16 partial results)
        int64_t wc = (int64_t)(g_scratch_cap / sizeof(bf16)) / out / 8 * 8;
        if (wc < 8) wc = 8;
        bf16 *w = (bf16 *)cuda_scratch(SCRATCH_W_BF16, (size_t)wc * out * sizeof(bf16));
        for (int64_t c0 = 0; c0 < in; c0 += wc) {
            int64_t nw = in - c0 < wc ? in - c0 : wc;
            launch_nf4_dequant_cols(w, W, c0, nw, cuda_stream());
            gemm_rm(0, 0, T, (int)nw, out, 1.0f, (const bf16 *)dy, out, w, (int)nw, accumulate ? 1.0f : 0.0f,
                    (bf16 *)dx + c0, in, 0);
        }
    } else if (dx) { // dx (+)= dy[:, rows r0..] W[r0..]: the row ranges (the overlap's chunks) split the sum
        for_weight_rows(W, [&](int r0, int nr, const bf16 *w) {
            gemm_rm(0, 0, T, in, nr, 1.0f, (const bf16 *)dy + r0, out, w, in, (accumulate || r0 > 0) ? 1.0f : 0.0f,
                    dx, in, 0);
        });
    }
    if (!lora || fused) return;
    int r = lora->r;
    bf16 *a16 = (bf16 *)cuda_scratch(SCRATCH_LORA_A, (size_t)r * in * sizeof(bf16));
    bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
    bf16 *g16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16) * 2);
    bf16 *xa16 = g16 + (size_t)T * r;
    launch_f32_to_bf16(a16, lora->A, (int64_t)r * in);
    launch_f32_to_bf16(b16, lora->B, (int64_t)out * r);
    launch_f32_to_bf16(xa16, xa, (int64_t)T * r);
    // dB [out, r] += scale dy^T xa
    gemm_rm(1, 0, out, r, T, lora->scale, (const bf16 *)dy, out, xa16, r, 1.0f, lora->dB, r, 1);
    // g [T, r] = scale dy B
    gemm_rm(0, 0, T, r, out, lora->scale, (const bf16 *)dy, out, b16, r, 0.0f, g16, r, 0);
    // dA [r, in] += g^T drop(x)
    const bf16 *xin = (const bf16 *)x;
    if (lora->dropout > 0.0f) {
        bf16 *xd = (bf16 *)cuda_scratch(SCRATCH_DROP_X, (size_t)T * in * sizeof(bf16));
        launch_dropout_bf16(xd, xin, (int64_t)T * in, lora->dropout, lora->dropout_seed);
        xin = xd;
    }
    gemm_rm(1, 0, r, in, T, 1.0f, g16, r, xin, in, 1.0f, lora->dA, in, 1);
    if (!dx) return;
    // dx += (g A) * mask / (1 - p): straight into dx when there is no dropout
    if (lora->dropout > 0.0f) {
        // drop(x) is no longer needed: its buffer takes (dy B) A (same stream, in order)
        bf16 *tmp = (bf16 *)cuda_scratch(SCRATCH_DROP_X, (size_t)T * in * sizeof(bf16));
        gemm_rm(0, 0, T, in, r, 1.0f, g16, r, a16, in, 0.0f, tmp, in, 0);
        launch_add_masked((bf16 *)dx, tmp, (int64_t)T * in, lora->dropout, lora->dropout_seed);
    } else {
        gemm_rm(0, 0, T, in, r, 1.0f, g16, r, a16, in, 1.0f, dx, in, 0);
    }
}

// lm_head + cross-entropy + its backward, in chunks of tokens each over the whole vocabulary
// (two GEMMs per chunk, where vocabulary chunks with an online softmax need a third to recompute
// the logits for the gradient):
// one chunk's fp32 logits [Tc, V] (at most XENT_CHUNK_BYTES) is the only logits memory there
// is. The row kernel overwrites each logits row with its bf16 gradient in place (the bf16 row
// fits in the first half of the fp32 row), which the dx GEMM then reads with a stride of 2V.
static const size_t XENT_CHUNK_BYTES = 64u << 20;

static int xent_chunk_rows(int T, int V) {
    size_t cap = g_scratch_cap && g_scratch_cap < XENT_CHUNK_BYTES ? g_scratch_cap : XENT_CHUNK_BYTES;
    size_t rows = cap / ((size_t)V * sizeof(float));
    if (rows < 16) rows = 16;
    if (rows > (size_t)T) rows = (size_t)T;
    return (int)rows;
}

static void cu_xent_fwd_bwd(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *target, int T,
                            int C, int V, float grad_scale, float softcap) {
    int Tc = xent_chunk_rows(T, V);
    float *logits = (float *)cuda_scratch(SCRATCH_XENT, (size_t)Tc * V * sizeof(float));
    for (int t0 = 0; t0 < T; t0 += Tc) {
        int n = T - t0 < Tc ? T - t0 : Tc;
        const bf16 *xc = (const bf16 *)x + (size_t)t0 * C;
        gemm_rm(0, 1, n, V, C, 1.0f, xc, C, (const bf16 *)E, C, 0.0f, logits, V, 1);
        launch_xent_rows(losses + t0, logits, V, (bf16 *)logits, 2 * V, target + t0, n, V, grad_scale, dx != NULL,
                         softcap);
        if (dx)
            gemm_rm(0, 0, n, C, V, 1.0f, (const bf16 *)logits, 2 * V, (const bf16 *)E, C, 0.0f,
                    (bf16 *)dx + (size_t)t0 * C, C, 0);
    }
}

static void cu_logits(float *logits, const void *x, const uint16_t *E, int T, int C, int V, float softcap) {
    gemm_rm(0, 1, T, V, C, 1.0f, (const bf16 *)x, C, (const bf16 *)E, C, 0.0f, logits, V, 1);
    launch_softcap(logits, (int64_t)T * V, softcap);
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
