// qlinear.cu: the NF4 linear with its LoRA branch, the op table's qlinear_fwd and qlinear_bwd
// (plain C reference: kernels/cpu/qlinear.c). Compositions of cuBLAS GEMMs (gemm_rm) and small
// kernels; the frozen weight is dequantized to bf16 (nf4.cu) right before the GEMMs that read it.
//
// The dequantization runs on a side stream (g_side, ops_cuda.cu) that the main stream waits on
// through events. With QLORA_CUDA_DQ_CHUNKS=2..4 a large weight goes in row chunks, so chunk i+1
// dequantizes (memory-bound) while the GEMM of chunk i runs (compute-bound). Measured on the
// H200 that overlap loses (7B q,v 2048x1: 143.2 ms a step with 4 chunks, 134.0 ms with 1: the
// smaller GEMMs and the contention cost more than the 10 ms of dequantization it hides), so the
// default is one chunk.
#include "launch.cuh"

#include <stdlib.h>

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

// the whole of W, as dequant_rows writes each chunk of it (the values every qlinear tile holds):
// the table's nf4_dequant (evaluate's dense_weights keeps it)
void cu_nf4_dequant(void *dst, const ops_nf4 *W) { dequant_rows((bf16 *)dst, W, 0, W->rows, cuda_stream()); }

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

// the row chunks of W (c.w unset): chunk starts must fall on whole quantization blocks, even
// elements and 16-byte rows; one chunk unless QLORA_CUDA_DQ_CHUNKS asks for the overlap (see the
// top of this file)
static wchunks weight_chunks(const ops_nf4 *W) {
    size_t n = (size_t)W->rows * (size_t)W->cols;
    wchunks c;
    c.w = NULL;
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
    return c;
}

static wchunks dequant_weight(const ops_nf4 *W) {
    size_t n = (size_t)W->rows * (size_t)W->cols;
    wchunks c = weight_chunks(W);
    bf16 *w = (bf16 *)cuda_scratch(SCRATCH_W_BF16, n * sizeof(bf16));
    c.w = w;
    int chunks = c.n;
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
// than the cap, whatever the model (a 70B down_proj is 448 MiB in bf16). A dense W (kept
// dequantized, or never quantized) is read where it is, in the same row ranges: the same GEMMs.
template <typename F> static void for_weight_rows(const ops_nf4 *W, F f) {
    size_t bytes = (size_t)W->rows * (size_t)W->cols * sizeof(bf16);
    if (g_scratch_cap && bytes > g_scratch_cap) {
        int64_t rc = (int64_t)(g_scratch_cap / sizeof(bf16)) / W->cols;
        while (rc > 1 && !chunk_start_ok(W, rc * W->cols)) rc--;
        if (rc < 1 || !chunk_start_ok(W, rc * W->cols)) { // no aligned row count under the cap
            rc = 1;
            while (rc < W->rows && !chunk_start_ok(W, rc * W->cols)) rc++;
        }
        bf16 *w = W->dense ? NULL : (bf16 *)cuda_scratch(SCRATCH_W_BF16, (size_t)rc * W->cols * sizeof(bf16));
        for (int64_t r0 = 0; r0 < W->rows; r0 += rc) {
            int64_t nr = W->rows - r0 < rc ? W->rows - r0 : rc;
            if (W->dense) {
                f((int)r0, (int)nr, (const bf16 *)W->dense + (size_t)r0 * W->cols);
                continue;
            }
            dequant_rows(w, W, r0, nr, cuda_stream());
            f((int)r0, (int)nr, (const bf16 *)w);
        }
        return;
    }
    if (W->dense) {
        wchunks wc = weight_chunks(W);
        for (int i = 0; i < wc.n; i++)
            f(wc.bound[i], wc.bound[i + 1] - wc.bound[i], (const bf16 *)W->dense + (size_t)wc.bound[i] * W->cols);
        return;
    }
    wchunks wc = dequant_weight(W);
    for (int i = 0; i < wc.n; i++) {
        int r0 = wc.bound[i], nr = wc.bound[i + 1] - r0;
        wait_chunk(i);
        f(r0, nr, wc.w + (size_t)r0 * W->cols);
    }
}

// the bf16 copies the GEMMs read of a LoRA branch's fp32 A [r, in] and B [out, r] and of its saved
// xa [T, r] (each dst NULL: not wanted), in one launch
static void lora_to_bf16(const ops_lora *lora, bf16 *a16, bf16 *b16, bf16 *xa16, const float *xa, int in, int out,
                         int T) {
    bf16 *dst[3];
    const float *src[3];
    int64_t n[3];
    int k = 0;
    if (a16) dst[k] = a16, src[k] = lora->A, n[k++] = (int64_t)lora->r * in;
    if (b16) dst[k] = b16, src[k] = lora->B, n[k++] = (int64_t)out * lora->r;
    if (xa16) dst[k] = xa16, src[k] = xa, n[k++] = (int64_t)T * lora->r;
    launch_f32_to_bf16_pieces(k, dst, src, n);
}

// y = x W^T + bias + scale * (drop(x) A^T) B^T; xa = drop(x) A^T saved (fp32) for backward.
// The LoRA branch first: y = scale xa B^T, then the base GEMMs add x W^T onto it (beta = 1: cuBLAS
// reads y in its compute-bound epilogue, where the memory-bound rank-r GEMM would have read it
// after them). Fused (lora.cu: ranks up to 64, while cuda_lora_fused() is on): xa in one pass over
// x with the mask drawn on the fly; otherwise the dropout input is materialized and xa is a GEMM.
void cu_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                    float *xa, int T) {
    int out = (int)W->rows, in = (int)W->cols;
    if (lora) {
        int r = lora->r;
        bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
        bf16 *xa16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16));
        if (lora_fused_ok(r)) {
            launch_f32_to_bf16(b16, lora->B, (int64_t)out * r);
            launch_lora_down(xa, xa16, (const bf16 *)x, lora->A, T, in, r, lora->dropout, lora->dropout_seed);
        } else {
            bf16 *a16 = (bf16 *)cuda_scratch(SCRATCH_LORA_A, (size_t)r * in * sizeof(bf16));
            lora_to_bf16(lora, a16, b16, NULL, NULL, in, out, 0);
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
        }
        gemm_rm(0, 1, T, out, r, lora->scale, xa16, r, b16, r, 0.0f, y, out, 0);
    }
    for_weight_rows(W, [&](int r0, int nr, const bf16 *w) { // y[:, rows r0..] (+)= x W[r0..]^T
        gemm_rm(0, 1, T, nr, in, 1.0f, (const bf16 *)x, in, w, in, lora ? 1.0f : 0.0f, (bf16 *)y + r0, out, 0);
    });
    if (bias) launch_add_bias((bf16 *)y, (const bf16 *)bias, T, out);
}

// dx = dy W + scale (dy B) A * mask; dA += scale (dy B)^T drop(x); dB += scale dy^T xa.
// Fused (lora.cu): dB and g = scale dy B on cuBLAS, then dA and dx's LoRA part in one pass over x
// (the mask drawn again from the hash), then the base GEMMs add dy W onto dx (beta = 1).
void cu_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                    const float *xa, int T, int accumulate) {
    int out = (int)W->rows, in = (int)W->cols;
    size_t wbytes = (size_t)out * (size_t)in * sizeof(bf16);
    bool fused = lora && lora_fused_ok(lora->r);
    if (fused) {
        int r = lora->r;
        bf16 *b16 = (bf16 *)cuda_scratch(SCRATCH_LORA_B, (size_t)out * r * sizeof(bf16));
        bf16 *g16 = (bf16 *)cuda_scratch(SCRATCH_LORA_XA, (size_t)T * r * sizeof(bf16) * 2);
        bf16 *xa16 = g16 + (size_t)T * r;
        lora_to_bf16(lora, NULL, b16, xa16, xa, in, out, T);
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
    lora_to_bf16(lora, a16, b16, xa16, xa, in, out, T);
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
