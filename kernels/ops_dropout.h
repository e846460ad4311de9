/* ops_dropout.h: the LoRA dropout mask as a pure function of (seed, element index), shared by
 * every backend so the CPU reference and the CUDA kernels drop the same elements.
 *
 * keep(seed, i, p) hashes (seed, i) with splitmix64 and keeps the element when the top 24 bits,
 * as a uniform u in [0, 1), are >= p. Kept elements are scaled by 1/(1-p) (inverted dropout, as
 * torch.nn.Dropout). The index is the flat element index of the layer input x [T, in]. */
#ifndef KERNELS_OPS_DROPOUT_H
#define KERNELS_OPS_DROPOUT_H

#include <stdint.h>

#ifdef __CUDACC__
#define OPS_HD __host__ __device__ __forceinline__
#else
#define OPS_HD static inline
#endif

OPS_HD uint64_t ops_dropout_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* 1 when element i is kept at drop probability p (p == 0 keeps everything) */
OPS_HD int ops_dropout_keep(uint64_t seed, uint64_t i, float p) {
    float u = (float)(ops_dropout_hash(seed, i) >> 40) * (1.0f / 16777216.0f);
    return u >= p;
}

#endif
