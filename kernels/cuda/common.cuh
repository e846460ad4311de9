// common.cuh: what every CUDA kernel file of the engine shares: the check-macro family,
// CEIL_DIV, bf16 helpers, and the one stream and cuBLAS handles that ops_cuda() runs on.
//
// Errors: a failing CUDA or cuBLAS call inside an op is a bug or a device fault (the ops
// return void and allocate nothing inside a step), so the check macros go through one
// function, cuda_fatal(), that names the statement, function, file:line and device and
// aborts, as ggml does. Out-of-memory at allocation time is not fatal: alloc returns NULL.
#ifndef KERNELS_CUDA_COMMON_CUH
#define KERNELS_CUDA_COMMON_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

[[noreturn]] void cuda_fatal(const char *stmt, const char *func, const char *file, int line, const char *msg);

#define CUDA_CHECK(stmt)                                                                     \
    do {                                                                                     \
        cudaError_t err_ = (stmt);                                                           \
        if (err_ != cudaSuccess) cuda_fatal(#stmt, __func__, __FILE__, __LINE__, cudaGetErrorString(err_)); \
    } while (0)
#define CUBLAS_CHECK(stmt)                                                                   \
    do {                                                                                     \
        cublasStatus_t st_ = (stmt);                                                         \
        if (st_ != CUBLAS_STATUS_SUCCESS) cuda_fatal(#stmt, __func__, __FILE__, __LINE__, cublasGetStatusString(st_)); \
    } while (0)
// right after every launch: catches bad launch configurations at the launch site
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

typedef __nv_bfloat16 bf16;

// The stream every op is queued on, and the handles bound to it (created on first use).
cudaStream_t cuda_stream(void);
cublasHandle_t cuda_cublas(void);
// cuBLAS workspace: fixed size, allocated with the handle (never inside a step).
void *cuda_cublas_workspace(size_t *bytes);

// Op-private scratch that grows only when a larger shape is first seen (the first step),
// then is reused: slot names one buffer per purpose.
enum cuda_scratch_slot {
    SCRATCH_W_BF16 = 0,  // dequantized NF4 weight [out, in]
    SCRATCH_LORA_A,      // bf16 copy of A [r, in]
    SCRATCH_LORA_B,      // bf16 copy of B [out, r]
    SCRATCH_LORA_XA,     // bf16 xa / (dy B) [T, r]
    SCRATCH_DROP_X,      // dropout(x) [T, in] (bf16); in the backward, once dA has it, (dy B) A before the mask
    SCRATCH_XENT,        // logits chunk [Tc, V] fp32
    SCRATCH_ATTN_DQ,     // fp32 dq accumulator [T, nh*hd]
    SCRATCH_ATTN_D,      // rowsum(dout*out) [nh, T]
    SCRATCH_ATTN_DKV,    // fp32 dk, dv partial sums [2][T, nkv*hd] (grouped-query heads split over blocks);
                         // deterministic mode: one [2][T, nkv*hd] slice per share of the heads
    SCRATCH_ATTN_TURN,   // deterministic mode: int turn counters of the ordered dq sum [nh, T/32]
    SCRATCH_REDUCE,      // double accumulators and the per-block partial sums of the reductions
    SCRATCH_CUDNN_WS,    // cuDNN attention plan workspace (attention_cudnn.cu); also ATTN_DKV's buffer
    SCRATCH_LORA_PART,   // lora.cu: fp32 partial sums of the split reductions (cuda_lora_scratch_bytes)
    SCRATCH_LORA_TURN,   // lora.cu: int counters of the split reductions (zero between calls)
    SCRATCH_COUNT
};
void *cuda_scratch(int slot, size_t bytes);

// Deterministic mode (cuda_ext.h, docs/determinism.md): when set, every kernel that would sum
// in an order the scheduler picks (floating-point atomics) sums in a fixed order instead.
bool cuda_det(void);

// Preconditions: shapes the caller must respect (a bug if not); aborts with the message.
#define CUDA_REQUIRE(cond, msg) do { if (!(cond)) cuda_fatal(#cond, __func__, __FILE__, __LINE__, msg); } while (0)

#endif
