/* nf4_cuda.h: NF4/FP4 4-bit quantize and dequantize on the GPU (bitsandbytes layout: flat
 * C-order elements, blocks of `blocksize`, first element of a pair in the high nibble, fp32
 * absmax per block, or the double-quantized form as stored: the _dq_ variant).
 * All pointers are device memory; work is queued on the ops_cuda() stream. C-callable.
 *
 * Dequantize is what training uses (into a bf16 scratch right before each GEMM); its output is
 * bit-identical to ops_nf4_dequant_rows() rounded to bf16 (round to nearest even). Quantize
 * follows docs/nf4.md: absmax in fp32, y = x * (1/absmax) with an IEEE reciprocal,
 * code = number of midpoints of adjacent quant_map entries strictly below y. */
#ifndef KERNELS_CUDA_NF4_CUDA_H
#define KERNELS_CUDA_NF4_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* dst (bf16, n elements) = quant_map[code] * absmax[i / blocksize] */
void nf4_cuda_dequant_bf16(uint16_t *dst, const uint8_t *codes, const float *absmax, const float *quant_map,
                           int64_t n, int blocksize);
/* The same with double-quantized absmax as bitsandbytes stores it (1 byte a block):
 * absmax[b] = nested_map[absmax_q[b]] * nested_absmax[b / 256] + nested_offset, in fp32 with
 * separate roundings (as nf4_double_dequant() on the CPU). Keeping this form on the device saves
 * 3 bytes per 64 weights: 0.3 GB on a 7B model, 3.2 GB on a 70B one. */
void nf4_cuda_dequant_dq_bf16(uint16_t *dst, const uint8_t *codes, const uint8_t *absmax_q, const float *nested_absmax,
                              const float *nested_map, float nested_offset, const float *quant_map, int64_t n,
                              int blocksize);
/* x (fp32, n elements) -> codes ((n+1)/2 bytes) and absmax (ceil(n/blocksize)); quant_map is the
 * sorted 16-entry code table (NF4). An all-zero block stores absmax 0 and code 7 (0.0) pairs. */
void nf4_cuda_quantize_f32(uint8_t *codes, float *absmax, const float *x, const float *quant_map, int64_t n,
                           int blocksize);
/* Random codes (uniform bytes) and absmax in [lo, hi) from a seed: benchmark weights made on the
 * device, no disk or host traffic. */
void nf4_cuda_fill_random(uint8_t *codes, float *absmax, int64_t n, int blocksize, uint64_t seed, float lo, float hi);

#ifdef __cplusplus
}
#endif
#endif
