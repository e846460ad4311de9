/* cuda_ext.h: what the CUDA backend offers beyond the op table (kernels/ops.h), for tests,
 * benchmarks and the training stage's start-up report. C-callable; device code stays internal. */
#ifndef KERNELS_CUDA_CUDA_EXT_H
#define KERNELS_CUDA_CUDA_EXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Live and peak bytes allocated through ops_cuda()'s alloc and the ops' own scratch (what
 * torch.cuda.max_memory_allocated counts; the CUDA context is not included). */
void cuda_mem_stats(size_t *live_bytes, size_t *peak_bytes);
void cuda_mem_reset_peak(void);
/* Bytes of pinned, device-mapped host memory live through ops_cuda()'s alloc_host (not in the
 * figures above: that memory is host RAM the kernels reach over PCIe). */
size_t cuda_host_mem_live(void);
/* Cap the ops' largest scratch (the dequantized weight, shared with the cross-entropy's logits
 * chunk and attention's fp32 dq accumulator) at bytes; 0 (the default) is no cap. A weight over
 * the cap is dequantized and multiplied in row ranges through one cap-sized buffer: what a run
 * that checkpoints every layer wants (7B: 86 MiB -> the cap; 70B: 448 MiB -> the cap). */
void cuda_scratch_cap_set(size_t bytes);
size_t cuda_scratch_cap(void);
/* the cudaStream_t every op runs on (for events and graph capture in benchmarks) */
void *cuda_stream_handle(void);
/* Data parallel: a second stream for the gradient all-reduce, so that NCCL sums the LoRA gradients
 * of one layer while the main stream computes the backward of the next (llm.c's overlap).
 * cuda_comm_after_main: the comm stream waits for everything queued on the main stream so far (a
 * bucket's gradients are final); cuda_main_after_comm: the main stream waits for everything queued
 * on the comm stream (before the norm and the optimizer read the gradients). */
void *cuda_comm_stream(void);
void cuda_comm_after_main(void);
void cuda_main_after_comm(void);

/* The attention kernels: CUDA_ATTN_CUDNN (default: cuDNN's fused flash attention, opened with
 * dlopen on first use; it takes equal-length sequences, see cuda_attention_layout, and every
 * other layout, head dims cuDNN cannot take, or a machine without cuDNN runs CUDA_ATTN_MMA),
 * CUDA_ATTN_MMA (our register-resident FlashAttention-2 order on mma.sync tensor-core
 * instructions) or CUDA_ATTN_TILED (the first, simpler tiled kernels on WMMA with shared-memory
 * accumulators, kept as a cross-check). The environment variable
 * QLORA_CUDA_ATTENTION=cudnn|mma|tiled sets the initial choice; "cudnn" set there makes a
 * missing cuDNN an error instead of a fallback. */
enum cuda_attn_kernel { CUDA_ATTN_MMA = 0, CUDA_ATTN_TILED = 1, CUDA_ATTN_CUDNN = 2 };
void cuda_attention_select(int kernel);
int cuda_attention_selected(void);
const char *cuda_attention_name(int kernel);
/* 0 when cuDNN is loaded (msg: its version), -1 and why not (msg) otherwise */
int cuda_attention_cudnn_probe(char *msg, size_t cap);
/* the host copy of seq_start [T] just uploaded to seq_start (the op table's attention_layout):
 * attention calls with that device pointer and T run on cuDNN when it holds T/L sequences of L
 * tokens each; NULL seq_start is one sequence */
void cuda_attention_layout(const int32_t *seq_start, const int32_t *h_seq_start, int T);
/* attention forward and backward calls that ran on cuDNN so far (tests, benchmarks) */
long cuda_attention_cudnn_calls(void);
/* the bytes a scratch slot of common.cuh holds now (0: none allocated): what the memory plan
 * counts is checked against them (bench/train_gpu) */
size_t cuda_scratch_slot_bytes(int slot);
/* deterministic mode: the largest workspace a cuDNN attention backward plan may take (bytes); a
 * shape needing more is split into rows and head groups under it, or runs on the mma kernels */
double cuda_attention_det_workspace_cap(void);
/* lower that cap to bytes (a memory plan with little room; more, smaller calls); 0 or more than
 * the default: the default (320 MiB) */
void cuda_attention_det_workspace_cap_set(double bytes);
/* Outside deterministic mode: the workspace cuDNN's attention plans take for one sequence of T
 * tokens (the larger of forward and backward; 0 when cuDNN is not the kernel asked for), which
 * the memory plan counts; and the most any plan may take (0: no cap), a layout over it (a ragged
 * batch padded to more) running on the mma kernels. See attention_cudnn.cu. */
double cuda_attention_workspace(int T, int nh, int nkv, int hd, int windowed);
void cuda_attention_workspace_cap_set(double bytes);
/* the workspace of cuDNN's forward (bwd 0) or backward plan of b sequences of s tokens, T in all
 * (ragged: of at most s tokens, packed), in the current mode; -1 when no plan builds (bench) */
double cuda_attention_cudnn_workspace(int bwd, int b, int s, int T, int ragged, int nh, int nkv, int hd, int windowed);
/* deterministic mode's backward on cuDNN's deterministic plans (1, the default) or the mma
 * kernels (0; QLORA_CUDA_DET_CUDNN_BWD=0 sets 0): see attention_cudnn.cu */
void cuda_attention_det_cudnn_bwd(int on);
/* deterministic mode, a dense batch whose cuDNN backward plan needs more workspace than the cap:
 * one call per row and group of kv heads (1, the default), or the mma kernels (0;
 * QLORA_CUDA_DET_CUDNN_SPLIT=0 sets 0): see attention_cudnn.cu */
void cuda_attention_det_cudnn_split(int on);
/* the cuDNN calls that split so far, one a row and group of kv heads (tests) */
long cuda_attention_det_split_calls(void);
/* The _ex options on cuDNN (on by default since the H200 sitting of 2026-12-05: test_ops_gpu's
 * cases, the golden models, and +53% on Gemma-3-12B in bench/gpu-phi3.sh): on, sliding windows and
 * a score scale other than 1/sqrt(hd) go into cuDNN's graph (docs/cuda-attention.md); off, such
 * calls run on our kernels, as plain
 * causal attention at 1/sqrt(hd) always runs on cuDNN. QLORA_CUDA_ATTENTION_EX=cudnn|off sets the
 * initial value; cuda_attention_cudnn_ex(-1) only reads it. Returns the value now in force. */
int cuda_attention_cudnn_ex(int on);

/* Deterministic mode (docs/determinism.md): on, every op sums in a fixed order, so the same
 * inputs give the same bits on every run (same GPU model, driver and build): attention's backward
 * adds each dq tile's per-key-block parts in a fixed order (ordered hand-off between blocks) and
 * its split grouped-query dK/dV partial sums through a fixed-order second pass. The reductions of
 * sum_squares, the cross-entropy rows and cuBLAS (one stream, one fixed workspace) are fixed-order
 * in both modes. Returns 0, or -1 with the reason in why when the mode cannot be honoured: the
 * tiled attention kernels (QLORA_CUDA_ATTENTION=tiled) have no fixed-order backward. Off by
 * default; QLORA_CUDA_DETERMINISTIC=1 sets the initial value (benchmarks). */
int cuda_deterministic_set(int on, char *why, size_t cap);
int cuda_deterministic(void);

/* Scratch bytes the fused LoRA kernels (kernels/cuda/lora.cu) take for a branch of rank r on an
 * input [T, in] (partial sums and counters); 0 for a rank they do not take (r > 64: the GEMM path,
 * whose dropout input is T * in bf16). For memory plans. */
size_t cuda_lora_scratch_bytes(int64_t T, int64_t in, int r);
/* 1: the LoRA branches of qlinear run the fused kernels where the rank allows; 0: the cuBLAS GEMMs
 * with the dropout input materialized, as before them. QLORA_CUDA_LORA=fused|gemm sets the value at
 * start; unset, the default of lora.cu (LORA_FUSED_DEFAULT: 0 until a GPU sitting has checked the
 * fused kernels). Tests and benchmarks set it to run both paths. */
void cuda_lora_fused_set(int on);
int cuda_lora_fused(void);

#ifdef __cplusplus
}
#endif
#endif
