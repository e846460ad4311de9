// elementwise.cu: embedding, RMSNorm forward/backward, residual add, RoPE, SwiGLU, and the
// small helpers of the qlinear op (fp32 -> bf16 copies, bias, dropout). All memory-bound: bf16
// in and out, fp32 arithmetic, 16-byte (8 x bf16) accesses where the shape and alignment allow.
// The RMSNorm and RoPE kernels are in elementwise_kernels.cuh (tests/emu runs them on the CPU).
#include "launch.cuh"

#include "elementwise_kernels.cuh"

#define EW_THREADS 256

// ---------------------------------------------------------------------------------------------
// embedding: out[t] = table[ids[t]]

__global__ void embedding_fwd_kernel(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C, int vec) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    int per_row = vec ? C / 8 : C;
    if (i >= (int64_t)T * per_row) return;
    int t = (int)(i / per_row), c = (int)(i % per_row);
    const bf16 *src = table + (int64_t)ids[t] * C;
    if (vec)
        reinterpret_cast<uint4 *>(out + (int64_t)t * C)[c] = reinterpret_cast<const uint4 *>(src)[c];
    else
        out[(int64_t)t * C + c] = src[c];
}

void launch_embedding_fwd(bf16 *out, const int32_t *ids, const bf16 *table, int T, int C) {
    int vec = C % 8 == 0 && aligned16(out) && aligned16(table);
    int64_t n = (int64_t)T * (vec ? C / 8 : C);
    if (n == 0) return;
    embedding_fwd_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)EW_THREADS), EW_THREADS, 0, cuda_stream()>>>(out, ids, table,
                                                                                                       T, C, vec);
    CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (elementwise_kernels.cuh): a block a row for the residual stream's widths, else a warp

void launch_rmsnorm_fwd(bf16 *out, float *rstd, const bf16 *x, const bf16 *w, float wadd, int T, int C, float eps) {
    if (T == 0) return;
    int vec = C % 8 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
    if (norm_by_row(C, vec)) {
        rmsnorm_fwd_row_kernel<<<T, norm_row_threads(C), 0, cuda_stream()>>>(out, rstd, x, w, wadd, C, eps);
        CUDA_CHECK_LAUNCH();
        return;
    }
    const int rows_per_block = 8;
    rmsnorm_fwd_kernel<<<CEIL_DIV(T, rows_per_block), rows_per_block * 32, 0, cuda_stream()>>>(out, rstd, x, w, wadd,
                                                                                               T, C, eps, vec);
    CUDA_CHECK_LAUNCH();
}

void launch_rmsnorm_bwd(bf16 *dx, const bf16 *dout, const bf16 *x, const bf16 *w, float wadd, const float *rstd, int T,
                        int C) {
    if (T == 0) return;
    int vec = C % 8 == 0 && aligned16(dx) && aligned16(dout) && aligned16(x) && aligned16(w);
    if (norm_by_row(C, vec)) {
        rmsnorm_bwd_row_kernel<<<T, norm_row_threads(C), 0, cuda_stream()>>>(dx, dout, x, w, wadd, rstd, C);
        CUDA_CHECK_LAUNCH();
        return;
    }
    const int rows_per_block = 8;
    rmsnorm_bwd_kernel<<<CEIL_DIV(T, rows_per_block), rows_per_block * 32, 0, cuda_stream()>>>(dx, dout, x, w, wadd,
                                                                                               rstd, T, C, vec);
    CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------------
// n-element maps: thread i covers elements [8i, 8i+8); the vector path needs every pointer
// 16-byte aligned, else (and for the tail) elements go one by one.

template <typename F>
__global__ void map8_kernel(int64_t n, int vec, F f) {
    int64_t i0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i0 >= n) return;
    if (vec && i0 + 8 <= n)
        f.vec(i0);
    else
        for (int64_t i = i0; i < n && i < i0 + 8; i++) f.one(i);
}

template <typename F>
static void launch_map8(int64_t n, int vec, F f) {
    if (n <= 0) return;
    map8_kernel<<<(unsigned)CEIL_DIV(CEIL_DIV(n, (int64_t)8), (int64_t)EW_THREADS), EW_THREADS, 0, cuda_stream()>>>(
        n, vec, f);
    CUDA_CHECK_LAUNCH();
}

struct add_op {
    bf16 *y;
    const bf16 *x;
    __device__ void vec(int64_t i) const {
        float a[8], b[8];
        load8(a, y + i);
        load8(b, x + i);
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] += b[j];
        store8(y + i, a);
    }
    __device__ void one(int64_t i) const {
        y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(x[i]));
    }
};

void launch_add_inplace(bf16 *y, const bf16 *x, int64_t n) {
    launch_map8(n, aligned16(y) && aligned16(x), add_op{y, x});
}

__device__ __forceinline__ float silu_f(float g) { return g / (1.0f + __expf(-g)); }

struct swiglu_fwd_op {
    bf16 *out;
    const bf16 *gate, *up;
    __device__ void vec(int64_t i) const {
        float g[8], u[8];
        load8(g, gate + i);
        load8(u, up + i);
#pragma unroll
        for (int j = 0; j < 8; j++) g[j] = silu_f(g[j]) * u[j];
        store8(out + i, g);
    }
    __device__ void one(int64_t i) const {
        out[i] = __float2bfloat16_rn(silu_f(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
    }
};

void launch_swiglu_fwd(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n) {
    launch_map8(n, aligned16(out) && aligned16(gate) && aligned16(up), swiglu_fwd_op{out, gate, up});
}

// d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g)
struct swiglu_bwd_op {
    bf16 *dgate, *dup;
    const bf16 *dout, *gate, *up;
    __device__ static void one_f(float d, float g, float u, float *dg, float *du) {
        float s = 1.0f / (1.0f + __expf(-g));
        *du = d * g * s;
        *dg = d * u * s * (1.0f + g * (1.0f - s));
    }
    __device__ void vec(int64_t i) const {
        float d[8], g[8], u[8], dg[8], du[8];
        load8(d, dout + i);
        load8(g, gate + i);
        load8(u, up + i);
#pragma unroll
        for (int j = 0; j < 8; j++) one_f(d[j], g[j], u[j], &dg[j], &du[j]);
        store8(dgate + i, dg);
        store8(dup + i, du);
    }
    __device__ void one(int64_t i) const {
        float dg, du;
        one_f(__bfloat162float(dout[i]), __bfloat162float(gate[i]), __bfloat162float(up[i]), &dg, &du);
        dgate[i] = __float2bfloat16_rn(dg);
        dup[i] = __float2bfloat16_rn(du);
    }
};

void launch_swiglu_bwd(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up, int64_t n) {
    int vec = aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up);
    launch_map8(n, vec, swiglu_bwd_op{dgate, dup, dout, gate, up});
}

// GeGLU with the tanh GELU (Gemma's gelu_pytorch_tanh), as cpu_geglu_fwd/_bwd:
// gelu(g) = 0.5 g (1 + tanh u), u = sqrt(2/pi) (g + 0.044715 g^3),
// d gelu/dg = 0.5 (1 + tanh u) + 0.5 g (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 g^2)
#define GELU_K 0.7978845608028654f
__device__ __forceinline__ float gelu_tanh_f(float g) {
    return 0.5f * g * (1.0f + tanhf(GELU_K * (g + 0.044715f * g * g * g)));
}

struct geglu_fwd_op {
    bf16 *out;
    const bf16 *gate, *up;
    __device__ void vec(int64_t i) const {
        float g[8], u[8];
        load8(g, gate + i);
        load8(u, up + i);
#pragma unroll
        for (int j = 0; j < 8; j++) g[j] = gelu_tanh_f(g[j]) * u[j];
        store8(out + i, g);
    }
    __device__ void one(int64_t i) const {
        out[i] = __float2bfloat16_rn(gelu_tanh_f(__bfloat162float(gate[i])) * __bfloat162float(up[i]));
    }
};

void launch_geglu_fwd(bf16 *out, const bf16 *gate, const bf16 *up, int64_t n) {
    launch_map8(n, aligned16(out) && aligned16(gate) && aligned16(up), geglu_fwd_op{out, gate, up});
}

struct geglu_bwd_op {
    bf16 *dgate, *dup;
    const bf16 *dout, *gate, *up;
    __device__ static void one_f(float d, float g, float u, float *dg, float *du) {
        float th = tanhf(GELU_K * (g + 0.044715f * g * g * g));
        float dgelu = 0.5f * (1.0f + th) + 0.5f * g * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * 0.044715f * g * g);
        *du = d * 0.5f * g * (1.0f + th);
        *dg = d * u * dgelu;
    }
    __device__ void vec(int64_t i) const {
        float d[8], g[8], u[8], dg[8], du[8];
        load8(d, dout + i);
        load8(g, gate + i);
        load8(u, up + i);
#pragma unroll
        for (int j = 0; j < 8; j++) one_f(d[j], g[j], u[j], &dg[j], &du[j]);
        store8(dgate + i, dg);
        store8(dup + i, du);
    }
    __device__ void one(int64_t i) const {
        float dg, du;
        one_f(__bfloat162float(dout[i]), __bfloat162float(gate[i]), __bfloat162float(up[i]), &dg, &du);
        dgate[i] = __float2bfloat16_rn(dg);
        dup[i] = __float2bfloat16_rn(du);
    }
};

void launch_geglu_bwd(bf16 *dgate, bf16 *dup, const bf16 *dout, const bf16 *gate, const bf16 *up, int64_t n) {
    int vec = aligned16(dgate) && aligned16(dup) && aligned16(dout) && aligned16(gate) && aligned16(up);
    launch_map8(n, vec, geglu_bwd_op{dgate, dup, dout, gate, up});
}

// x *= s (Gemma's embedding scale, s already rounded to the model's dtype by the caller)
struct act_scale_op {
    bf16 *x;
    float s;
    __device__ void vec(int64_t i) const {
        float a[8];
        load8(a, x + i);
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] *= s;
        store8(x + i, a);
    }
    __device__ void one(int64_t i) const { x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * s); }
};

void launch_act_scale(bf16 *x, int64_t n, float s) { launch_map8(n, aligned16(x), act_scale_op{x, s}); }

void launch_f32_to_bf16(bf16 *dst, const float *src, int64_t n) { launch_f32_to_bf16_pieces(1, &dst, &src, &n); }

void launch_f32_to_bf16_pieces(int k, bf16 *const *dst, const float *const *src, const int64_t *n) {
    CUDA_REQUIRE(k >= 1 && k <= CVT_MAX_PIECES, "f32_to_bf16_pieces: 1 to 4 pieces");
    unsigned blocks;
    cvt_pieces p = cvt_pieces_make(k, dst, src, n, EW_THREADS, &blocks);
    if (blocks == 0) return;
    f32_to_bf16_pieces_kernel<<<blocks, EW_THREADS, 0, cuda_stream()>>>(p);
    CUDA_CHECK_LAUNCH();
}

// dst[i] = bf16(src[i] + src[stride + i] + ... ) over ns slices, added in slice order (the
// deterministic mode's fixed-order sum of partial results)
__global__ void sum_slices_bf16_kernel(bf16 *dst, const float *src, int ns, int64_t stride, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = src[i];
    for (int z = 1; z < ns; z++) s += src[(int64_t)z * stride + i];
    dst[i] = __float2bfloat16_rn(s);
}

void launch_sum_slices_bf16(bf16 *dst, const float *src, int ns, int64_t stride, int64_t n) {
    if (n <= 0) return;
    sum_slices_bf16_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)256), 256, 0, cuda_stream()>>>(dst, src, ns, stride, n);
    CUDA_CHECK_LAUNCH();
}

// dropout of the LoRA input: dst = x * keep / (1 - p), the mask from ops_dropout.h
struct dropout_op {
    bf16 *dst;
    const bf16 *x;
    float p, inv;
    uint64_t seed;
    __device__ void one(int64_t i) const {
        dst[i] = __float2bfloat16_rn(ops_dropout_keep(seed, (uint64_t)i, p) ? __bfloat162float(x[i]) * inv : 0.0f);
    }
    __device__ void vec(int64_t i) const {
        float f[8];
        load8(f, x + i);
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = ops_dropout_keep(seed, (uint64_t)(i + j), p) ? f[j] * inv : 0.0f;
        store8(dst + i, f);
    }
};

void launch_dropout_bf16(bf16 *dst, const bf16 *x, int64_t n, float p, uint64_t seed) {
    launch_map8(n, aligned16(dst) && aligned16(x), dropout_op{dst, x, p, 1.0f / (1.0f - p), seed});
}

// dx += src * keep / (1 - p)
struct add_masked_op {
    bf16 *dx;
    const bf16 *src;
    float p, inv;
    uint64_t seed;
    __device__ void one(int64_t i) const {
        if (ops_dropout_keep(seed, (uint64_t)i, p))
            dx[i] = __float2bfloat16_rn(__bfloat162float(dx[i]) + __bfloat162float(src[i]) * inv);
    }
    __device__ void vec(int64_t i) const {
        float d[8], s[8];
        load8(d, dx + i);
        load8(s, src + i);
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (ops_dropout_keep(seed, (uint64_t)(i + j), p)) d[j] += s[j] * inv;
        store8(dx + i, d);
    }
};

void launch_add_masked(bf16 *dx, const bf16 *src, int64_t n, float p, uint64_t seed) {
    launch_map8(n, aligned16(dx) && aligned16(src), add_masked_op{dx, src, p, 1.0f / (1.0f - p), seed});
}

__global__ void add_bias_kernel(bf16 *y, const bf16 *bias, int64_t n, int n_out) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(bias[i % n_out]));
}

void launch_add_bias(bf16 *y, const bf16 *bias, int T, int n_out) {
    int64_t n = (int64_t)T * n_out;
    if (n == 0) return;
    add_bias_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)EW_THREADS), EW_THREADS, 0, cuda_stream()>>>(y, bias, n, n_out);
    CUDA_CHECK_LAUNCH();
}

// ---------------------------------------------------------------------------------------------
// RoPE (elementwise_kernels.cuh): a block a token where the pairs go eight at a time, else a thread
// a pair

void launch_rope_ex(bf16 *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                    int inverse) {
    CUDA_REQUIRE(rot > 0 && rot % 2 == 0 && rot <= hd, "rope: the rotated dims must be even and at most head_dim");
    int64_t n = (int64_t)T * nh * (rot / 2);
    if (n == 0) return;
    if (rope_by_row(hd, rot, aligned16(q))) {
        rope_row_kernel<<<T, rope_row_threads(nh, rot), 0, cuda_stream()>>>(q, pos, inv_freq, nh, hd, rot, mscale,
                                                                            inverse);
        CUDA_CHECK_LAUNCH();
        return;
    }
    rope_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)EW_THREADS), EW_THREADS, 0, cuda_stream()>>>(q, pos, inv_freq, T, nh,
                                                                                              hd, rot, mscale, inverse);
    CUDA_CHECK_LAUNCH();
}

void launch_rope(bf16 *q, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse) {
    launch_rope_ex(q, pos, inv_freq, T, nh, hd, hd, 1.0f, inverse);
}
