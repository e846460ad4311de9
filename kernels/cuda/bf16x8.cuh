// bf16x8.cuh: 8 bf16 in one 16-byte access, for the kernels of elementwise.cu and lora.cu. Include
// it after the CUDA headers or tests/emu/cuda_emu.h; it includes nothing.
#ifndef KERNELS_CUDA_BF16X8_CUH
#define KERNELS_CUDA_BF16X8_CUH

struct __align__(16) bf16x8 {
    __nv_bfloat162 h[4];
};

// 8 bf16 at p (16-byte aligned, global or shared memory) in one 16-byte access: read and written
// as a uint4 and copied to or from the pairs (a bf16x8 read through its own type is copied member
// by member, four 4-byte accesses: what every map and the fused LoRA kernels did until 2026-12-05,
// as the PTX showed; tests/check_kernels_ptx.sh holds it). bf16x8_of gives the pairs of a uint4
// read earlier (the fused LoRA kernels fetch a tile's bits before they need its values)
__device__ __forceinline__ bf16x8 bf16x8_of(uint4 raw) {
    bf16x8 v;
    memcpy(&v, &raw, sizeof v);
    return v;
}
__device__ __forceinline__ bf16x8 ld_bf16x8(const bf16 *p) { return bf16x8_of(*reinterpret_cast<const uint4 *>(p)); }
__device__ __forceinline__ void st_bf16x8(bf16 *p, const bf16x8 &v) {
    uint4 raw;
    memcpy(&raw, &v, sizeof raw);
    *reinterpret_cast<uint4 *>(p) = raw;
}

__device__ __forceinline__ void unpack8(float *f, bf16x8 v) {
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float2 t = __bfloat1622float2(v.h[j]);
        f[2 * j] = t.x;
        f[2 * j + 1] = t.y;
    }
}

__device__ __forceinline__ void load8(float *f, const bf16 *p) { unpack8(f, ld_bf16x8(p)); }

__device__ __forceinline__ void store8(bf16 *p, const float *f) {
    bf16x8 v;
#pragma unroll
    for (int j = 0; j < 4; j++) v.h[j] = __floats2bfloat162_rn(f[2 * j], f[2 * j + 1]);
    st_bf16x8(p, v);
}

#endif
