/* elementwise.c: embedding, RMSNorm, residual add, RoPE and SwiGLU (plain C reference; cuda:
 * elementwise.cu). fp32 throughout. */
#include <math.h>

#include "cpu_impl.h"

/* ---- embedding, RMSNorm, residual ---- */

void cpu_embedding_fwd(void *out_, const int32_t *ids, const uint16_t *table, int T, int C) {
    float *out = out_;
    for (int t = 0; t < T; t++) cpu_bf16_to_f32(out + (int64_t)t * C, table + (int64_t)ids[t] * C, C);
}

/* HF LlamaRMSNorm: y = w * x / sqrt(mean(x^2) + eps), the mean taken in fp32 */
/* the norm's scale: w_add + w in fp32 (0 + w is w: no bit changes where w_add is 0) */
static inline float norm_scale(const uint16_t *w, float w_add, int i) {
    return w_add != 0.0f ? w_add + bf16f(w[i]) : bf16f(w[i]);
}

void cpu_rmsnorm_fwd(void *out_, float *rstd, const void *x_, const uint16_t *w, float w_add, int T, int C,
                     float eps) {
    float *out = out_;
    const float *x = x_;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (int64_t)t * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xt[i] * xt[i];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        rstd[t] = r;
        float *ot = out + (int64_t)t * C;
        for (int i = 0; i < C; i++) ot[i] = norm_scale(w, w_add, i) * (xt[i] * r);
    }
}

/* with g = w * dout: dx = r * g - r^3 / C * x * sum(g * x) */
void cpu_rmsnorm_bwd(void *dx_, const void *dout_, const void *x_, const uint16_t *w, float w_add, const float *rstd,
                     int T, int C) {
    float *dx = dx_;
    const float *dout = dout_, *x = x_;
    for (int t = 0; t < T; t++) {
        const float *xt = x + (int64_t)t * C, *dt = dout + (int64_t)t * C;
        float r = rstd[t];
        double gx = 0;
        for (int i = 0; i < C; i++) gx += (double)norm_scale(w, w_add, i) * dt[i] * xt[i];
        float c = (float)(gx * r * r * r / C);
        float *dxt = dx + (int64_t)t * C;
        for (int i = 0; i < C; i++) dxt[i] += r * norm_scale(w, w_add, i) * dt[i] - c * xt[i];
    }
}

void cpu_add_inplace(void *y_, const void *x_, int64_t n) {
    float *y = y_;
    const float *x = x_;
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

/* ---- RoPE (rotate_half layout: dim j pairs with j + hd/2) ---- */

void cpu_rope(void *q_, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int inverse) {
    float *q = q_;
    int half = hd / 2;
    float sgn = inverse ? -1.0f : 1.0f;
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < half; j++) {
            float ang = (float)pos[t] * inv_freq[j]; /* fp32 product, as transformers computes it */
            float c = cosf(ang), s = sgn * sinf(ang);
            for (int h = 0; h < nh; h++) {
                float *qh = q + ((int64_t)t * nh + h) * hd;
                float x1 = qh[j], x2 = qh[j + half];
                qh[j] = x1 * c - x2 * s;
                qh[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* partial rotary with a scale (phi3): dims [0, rot) of each head rotate as cpu_rope's over rot
 * (j pairs with j + rot/2, inv_freq[rot/2]), dims [rot, hd) pass unchanged; the rotated ones are
 * multiplied by mscale (cos and sin scaled, as transformers' attention_scaling) */
void cpu_rope_ex(void *q_, const int32_t *pos, const float *inv_freq, int T, int nh, int hd, int rot, float mscale,
                 int inverse) {
    float *q = q_;
    int half = rot / 2;
    float sgn = inverse ? -1.0f : 1.0f;
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < half; j++) {
            float ang = (float)pos[t] * inv_freq[j];
            float c = cosf(ang) * mscale, s = sgn * sinf(ang) * mscale; /* transformers scales cos, sin in fp32 */
            for (int h = 0; h < nh; h++) {
                float *qh = q + ((int64_t)t * nh + h) * hd;
                float x1 = qh[j], x2 = qh[j + half];
                qh[j] = x1 * c - x2 * s;
                qh[j + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* ---- SwiGLU ---- */

void cpu_swiglu_fwd(void *out_, const void *gate_, const void *up_, int64_t n) {
    float *out = out_;
    const float *g = gate_, *u = up_;
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

/* d silu(g)/dg = sig(g) * (1 + g * (1 - sig(g))) */
void cpu_swiglu_bwd(void *dgate_, void *dup_, const void *dout_, const void *gate_, const void *up_,
                    int64_t n) {
    float *dg = dgate_, *du = dup_;
    const float *d = dout_, *g = gate_, *u = up_;
    for (int64_t i = 0; i < n; i++) { /* read before writing: dgate/dup may be gate/up */
        float gi = g[i], ui = u[i], di = d[i];
        float sig = 1.0f / (1.0f + expf(-gi));
        dg[i] = di * ui * sig * (1.0f + gi * (1.0f - sig));
        du[i] = di * gi * sig;
    }
}

/* ---- GeGLU (Gemma) and the activation scale ---- */

/* GeGLU with the tanh GELU (torch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh):
 * gelu(g) = 0.5 g (1 + tanh(u)), u = sqrt(2/pi) (g + 0.044715 g^3);
 * d gelu/dg = 0.5 (1 + tanh u) + 0.5 g (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 g^2) */
#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
void cpu_geglu_fwd(void *out_, const void *gate_, const void *up_, int64_t n) {
    float *out = out_;
    const float *g = gate_, *u = up_;
    for (int64_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x))) * u[i];
    }
}

void cpu_geglu_bwd(void *dgate_, void *dup_, const void *dout_, const void *gate_, const void *up_, int64_t n) {
    float *dg = dgate_, *du = dup_;
    const float *d = dout_, *g = gate_, *u = up_;
    for (int64_t i = 0; i < n; i++) { /* read before writing: dgate/dup may be gate/up */
        float x = g[i], ui = u[i], di = d[i];
        float th = tanhf(GELU_K * (x + 0.044715f * x * x * x));
        float gelu = 0.5f * x * (1.0f + th);
        float dgelu = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        dg[i] = di * ui * dgelu;
        du[i] = di * gelu;
    }
}

/* x *= s over n activations (Gemma's embedding scale) */
void cpu_act_scale(void *x_, int64_t n, float s) {
    float *x = x_;
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}
