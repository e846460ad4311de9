/* nf4.h: bitsandbytes 4-bit blockwise quantization (NF4 and FP4) and its double quantization,
 * on the CPU: the bit-exact reference of what bitsandbytes' cpu path writes.
 *
 * Layout (docs/nf4.md): a tensor of n elements, flattened in C order, is cut into
 * blocks of `blocksize` elements (the last one may be partial); absmax[b] (f32) is the largest
 * |x| of block b; every element becomes the 4-bit code nearest to x * (1/absmax[b]) (ties to
 * the lower value; the partial last block divides by max(absmax, 1e-38) instead, and stores
 * that); two codes share a byte, the first (even) element in the high nibble, and an odd n ends
 * with the padding code of 0.0. Double quantization stores absmax as u8 codes of the 256-entry
 * dynamic map: c = absmax - offset, blocks of 256, nested_absmax[j] = max |c| of nested block j.
 * These are bitsandbytes' cpu-path numerics at 95f9af30, reproduced bit for bit (test_nf4).
 *
 * Every quantizer has a scalar `_ref` twin (the plain statement of the rule, for tests); the
 * unsuffixed functions are the fast ones, split over `nthreads` pthreads where it pays.
 * Nothing here allocates more than per-call thread bookkeeping and the 64 KiB table of
 * nf4_double_quant; the caller owns every buffer. */
#ifndef KERNELS_CPU_NF4_H
#define KERNELS_CPU_NF4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"

/* element type of a tensor to quantize */
enum nf4_src { NF4_SRC_F32 = 0, NF4_SRC_F16 = 1, NF4_SRC_BF16 = 2 };

#define NF4_NESTED_BLOCKSIZE 256
#define NF4_DYNAMIC_MAP_SIZE 256

/* the 16 code values, indexed by code (quant_type: enum ops_quant): NF4 ascending; FP4 in code
 * order (sign bit 3, magnitude index in bits 0-2), as bitsandbytes stores quant_map */
const float *nf4_quant_map(int quant_type);

/* blocksizes bitsandbytes accepts for 4-bit: 32, 64, ..., 4096 */
bool nf4_blocksize_valid(int blocksize);
static inline int64_t nf4_nblocks(int64_t n, int blocksize) { return (n + blocksize - 1) / blocksize; }
static inline int64_t nf4_packed_bytes(int64_t n) { return (n + 1) / 2; }

/* The code of one scaled value y (y = x * (1/absmax), in [-1, 1]). NaN gives code 0. */
uint8_t nf4_encode(float y, int quant_type);

/* Quantize blocks [b0, b1) of src (n elements of type enum nf4_src): writes absmax[b0..b1) and the
 * code bytes of those blocks (blocksize is even, so blocks own whole bytes). An all-zero block gets
 * absmax 0 and the code of 0.0 (what the cpu path writes; 0x77 for NF4).
 * Returns the index of the first NaN or Inf element in those blocks, or -1 when all are finite
 * (codes for a block holding one are unspecified). */
int64_t nf4_quantize_blocks_ref(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                                int blocksize, int quant_type, int64_t b0, int64_t b1);
int64_t nf4_quantize_blocks(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n,
                            int blocksize, int quant_type, int64_t b0, int64_t b1);
/* the whole tensor: codes [(n+1)/2], absmax [nblocks]; same return */
int64_t nf4_quantize_ref(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                         int quant_type);
int64_t nf4_quantize(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                     int quant_type, int nthreads);

/* nf4_quantize that also measures the reconstruction: err[0] = sum (x - quant_map[code] * s)^2,
 * err[1] = sum x^2, with s = recon_absmax[block] when given (what the checkpoint will really
 * store, e.g. the de-nested absmax) or the computed absmax. Same return. */
int64_t nf4_quantize_err(uint8_t *codes, float *absmax, const void *src, int src_dtype, int64_t n, int blocksize,
                         int quant_type, int nthreads, const float *recon_absmax, double err[2]);
/* absmax only, exactly as nf4_quantize stores it (a first pass that needs no code buffer);
 * same return */
int64_t nf4_absmax(float *absmax, const void *src, int src_dtype, int64_t n, int blocksize, int nthreads);

/* elements [first, first+count) to f32: dst[i] = quant_map[code] * absmax[block] */
void nf4_dequantize_ref(float *dst, const uint8_t *codes, const float *absmax, const float *quant_map,
                        int blocksize, int64_t first, int64_t count);
void nf4_dequantize(float *dst, const uint8_t *codes, const float *absmax, const float *quant_map, int blocksize,
                    int64_t first, int64_t count, int nthreads);

/* ---- double quantization (compress_statistics) ---- */

/* create_dynamic_map(signed=True, 7, 8) bit for bit (torch's fma linspace): 256 ascending f32 */
void nf4_dynamic_map(float map[NF4_DYNAMIC_MAP_SIZE]);
/* mean of absmax (the offset), accumulated in double and rounded to f32 once */
float nf4_absmax_mean(const float *absmax, int64_t nb);
/* q[b] = the map entry for y = (absmax[b] - offset) * (1/nested_absmax[b/256]), chosen as the cpu
 * path does: y rounded to a 65536-point grid of [-1, 1], then the entry whose midpoint interval
 * holds that grid point (nearest up to 3e-5; ties to the lower index). An all-zero nested block
 * gets index 0. nested_absmax [ceil(nb/256)]. */
void nf4_double_quant_ref(uint8_t *q, float *nested_absmax, const float *absmax, int64_t nb, float offset,
                          const float *map);
void nf4_double_quant(uint8_t *q, float *nested_absmax, const float *absmax, int64_t nb, float offset,
                      const float *map);
/* absmax[b] = map[q[b]] * nested_absmax[b/256] + offset, in f32 */
void nf4_double_dequant(float *absmax, const uint8_t *q, const float *nested_absmax, const float *map, int64_t nb,
                        float offset);

#endif
