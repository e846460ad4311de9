/* optim.c: AdamW, the sum of squares for the gradient norm, and scaling (plain C reference;
 * cuda: optim.cu). */
#include <math.h>

#include "cpu_impl.h"

/* ---- optimizer ---- */

/* torch.optim.AdamW (foreach=False), step by step, so the C and torch curves agree to rounding */
void cpu_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1, float beta2,
               float eps, float weight_decay, int step) {
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    float decay = 1.0f - lr * weight_decay;
    for (int64_t i = 0; i < n; i++) {
        p[i] *= decay;
        m[i] += (g[i] - m[i]) * (1.0f - beta1);
        v[i] = v[i] * beta2 + (1.0f - beta2) * g[i] * g[i];
        float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}

double cpu_sum_squares(const float *g, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

void cpu_scale(float *g, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) g[i] *= s;
}
