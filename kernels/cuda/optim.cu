// optim.cu: AdamW over one contiguous fp32 buffer (all LoRA tensors of the model live in one
// allocation, so one launch updates them all), the global sum of squares for the grad norm,
// and in-place scaling for clipping.
// Nothing here sums through atomics: the results are the same bits on every run.
#include "launch.cuh"

#include <math.h>

// PyTorch AdamW: decoupled decay p -= lr wd p, then the bias-corrected Adam step.
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1,
                             float beta2, float eps, float weight_decay, float bc1, float sqrt_bc2) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = grad[i], p = param[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * g;
    float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p -= lr * weight_decay * p;
    p -= (lr / bc1) * mi / (__fsqrt_rn(vi) / sqrt_bc2 + eps);
    param[i] = p;
}

void launch_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int step) {
    if (n <= 0) return;
    float bc1 = (float)(1.0 - pow((double)beta1, step));
    float sqrt_bc2 = (float)sqrt(1.0 - pow((double)beta2, step));
    adamw_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)256), 256, 0, cuda_stream()>>>(param, grad, m, v, n, lr, beta1, beta2,
                                                                                 eps, weight_decay, bc1, sqrt_bc2);
    CUDA_CHECK_LAUNCH();
}

// The global sum of squares, in a fixed order: grid-stride partial sums in fp32 per thread, an
// fp32 tree within the block (fixed shuffle pattern), one fp64 partial a block into part[b];
// then one block adds part[0..nb) in fp64, thread j taking b = j, j + 256, ... and a fixed tree
// after. The grid size depends on n only, so the same gradients give the same bits every run.
template <typename F>
__global__ void reduce_part_kernel(double *part, const float *x, int64_t n, F f) {
    __shared__ float sh[32];
    float s = 0.0f;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        s += f(x[i]);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) part[blockIdx.x] = (double)s;
    }
}

__global__ void reduce_final_kernel(double *acc, const double *part, int nb) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int b = threadIdx.x; b < nb; b += blockDim.x) s += part[b];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) *acc = s;
    }
}

struct square_f {
    __device__ float operator()(float v) const { return v * v; }
};

static unsigned reduce_grid(int64_t n) {
    int64_t g = CEIL_DIV(n, (int64_t)256 * 16); // ~16 elements a thread
    if (g < 1) g = 1;
    if (g > SUM_SQUARES_MAX_BLOCKS) g = SUM_SQUARES_MAX_BLOCKS;
    return (unsigned)g;
}

void launch_sum_squares(double *acc, double *part, const float *g, int64_t n) {
    if (n <= 0) {
        CUDA_CHECK(cudaMemsetAsync(acc, 0, sizeof(double), cuda_stream()));
        return;
    }
    unsigned nb = reduce_grid(n);
    reduce_part_kernel<<<nb, 256, 0, cuda_stream()>>>(part, g, n, square_f{});
    CUDA_CHECK_LAUNCH();
    reduce_final_kernel<<<1, 256, 0, cuda_stream()>>>(acc, part, (int)nb);
    CUDA_CHECK_LAUNCH();
}

__global__ void scale_kernel(float *g, int64_t n, float s) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] *= s;
}

void launch_scale(float *g, int64_t n, float s) {
    if (n <= 0) return;
    scale_kernel<<<(unsigned)CEIL_DIV(n, (int64_t)256), 256, 0, cuda_stream()>>>(g, n, s);
    CUDA_CHECK_LAUNCH();
}
