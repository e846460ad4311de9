/* attention.c: causal grouped-query attention over packed sequences, forward and backward,
 * and the KV-cache variant for generation (plain C reference).
 *
 * Token t attends to keys s in [seq_start[t], t] (its own sequence only), scores scaled by
 * 1/sqrt(hd), softmax in fp32. The forward saves lse = log(sum exp(score)) per (head, token), so
 * the backward recomputes the probabilities p = exp(score - lse) instead of storing a [T, T]
 * matrix, as flash attention does. With GQA, query head h reads kv head h / (nh/nkv); the
 * backward runs per kv head so the heads that share it accumulate dk, dv without races.
 * The _ex variants take ops_attn: a sliding window (key s visible to t only when t - s < window),
 * another score scale, and Gemma-2's soft-capping score = cap * tanh(raw / cap), whose backward
 * multiplies by 1 - tanh^2 = 1 - (score / cap)^2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_impl.h"

typedef struct attn_args {
    float *out, *lse, *dq, *dk, *dv;
    const float *q, *k, *v, *dout, *o;
    const int32_t *seq_start;
    int T, nh, nkv, hd;
    ops_attn opt;
} attn_args;

static float attn_scale(const ops_attn *o, int hd) { return o->scale > 0 ? o->scale : 1.0f / sqrtf((float)hd); }

/* the first key t may see */
static int attn_first(const ops_attn *o, int s0, int t) {
    return o->window > 0 && t - o->window + 1 > s0 ? t - o->window + 1 : s0;
}

/* a raw scaled score q.k * sc, soft-capped when asked */
static float attn_cap(const ops_attn *o, float x) { return o->softcap > 0 ? o->softcap * tanhf(x / o->softcap) : x; }

/* heads [lo, hi) */
static void attn_fwd_heads(void *ctx, int64_t lo, int64_t hi) {
    const attn_args *a = ctx;
    int T = a->T, hd = a->hd, group = a->nh / a->nkv;
    int64_t qs = (int64_t)a->nh * hd, ks = (int64_t)a->nkv * hd;
    float sc = attn_scale(&a->opt, hd);
    float *p = malloc(sizeof(float) * (size_t)T);
    for (int64_t h = lo; h < hi; h++) {
        int64_t kh = h / group;
        for (int t = 0; t < T; t++) {
            const float *qt = a->q + t * qs + h * hd;
            int s0 = attn_first(&a->opt, a->seq_start[t], t);
            float mx = -INFINITY;
            for (int s = s0; s <= t; s++) {
                p[s] = attn_cap(&a->opt, cpu_dot(qt, a->k + s * ks + kh * hd, hd) * sc);
                if (p[s] > mx) mx = p[s];
            }
            double sum = 0;
            for (int s = s0; s <= t; s++) {
                p[s] = expf(p[s] - mx);
                sum += p[s];
            }
            float inv = (float)(1.0 / sum);
            float *ot = a->out + t * qs + h * hd;
            memset(ot, 0, sizeof(float) * (size_t)hd);
            for (int s = s0; s <= t; s++) cpu_axpy(ot, p[s] * inv, a->v + s * ks + kh * hd, hd);
            a->lse[h * T + t] = mx + (float)log(sum);
        }
    }
    free(p);
}

void cpu_attention_ex_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                          const int32_t *seq_start, int T, int nh, int nkv, int hd, const ops_attn *opt) {
    attn_args a = {.out = out, .lse = lse, .q = q, .k = k, .v = v, .seq_start = seq_start,
                   .T = T, .nh = nh, .nkv = nkv, .hd = hd, .opt = *opt};
    cpu_parallel_for(nh, (double)nh * T * T * hd, attn_fwd_heads, &a);
}

void cpu_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                       const int32_t *seq_start, int T, int nh, int nkv, int hd) {
    ops_attn none = {0};
    cpu_attention_ex_fwd(out, lse, q, k, v, seq_start, T, nh, nkv, hd, &none);
}

/* kv heads [lo, hi): for each query head of the group and each token t,
 * dp_s = dout_t . v_s, D = dout_t . out_t, ds = p_s (dp_s - D);
 * dq_t = sc * sum ds k_s, dk_s += sc * ds q_t, dv_s += p_s dout_t */
static void attn_bwd_kvheads(void *ctx, int64_t lo, int64_t hi) {
    const attn_args *a = ctx;
    int T = a->T, hd = a->hd, group = a->nh / a->nkv;
    int64_t qs = (int64_t)a->nh * hd, ks = (int64_t)a->nkv * hd;
    float sc = attn_scale(&a->opt, hd), cap = a->opt.softcap;
    for (int64_t kh = lo; kh < hi; kh++) {
        for (int t = 0; t < T; t++) {
            memset(a->dk + t * ks + kh * hd, 0, sizeof(float) * (size_t)hd);
            memset(a->dv + t * ks + kh * hd, 0, sizeof(float) * (size_t)hd);
        }
        for (int64_t h = kh * group; h < (kh + 1) * group; h++) {
            for (int t = 0; t < T; t++) {
                const float *qt = a->q + t * qs + h * hd, *dot = a->dout + t * qs + h * hd;
                float *dqt = a->dq + t * qs + h * hd;
                memset(dqt, 0, sizeof(float) * (size_t)hd);
                float D = cpu_dot(dot, a->o + t * qs + h * hd, hd), L = a->lse[h * T + t];
                for (int s = attn_first(&a->opt, a->seq_start[t], t); s <= t; s++) {
                    const float *ksv = a->k + s * ks + kh * hd, *vs = a->v + s * ks + kh * hd;
                    float score = attn_cap(&a->opt, cpu_dot(qt, ksv, hd) * sc);
                    float p = expf(score - L);
                    float ds = p * (cpu_dot(dot, vs, hd) - D);
                    if (cap > 0) ds *= 1.0f - (score / cap) * (score / cap);
                    cpu_axpy(dqt, ds * sc, ksv, hd);
                    cpu_axpy(a->dk + s * ks + kh * hd, ds * sc, qt, hd);
                    cpu_axpy(a->dv + s * ks + kh * hd, p, dot, hd);
                }
            }
        }
    }
}

void cpu_attention_ex_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                          const void *q, const void *k, const void *v, const int32_t *seq_start,
                          int T, int nh, int nkv, int hd, const ops_attn *opt) {
    attn_args a = {.dq = dq, .dk = dk, .dv = dv, .dout = dout, .o = out, .lse = (float *)lse, .q = q, .k = k,
                   .v = v, .seq_start = seq_start, .T = T, .nh = nh, .nkv = nkv, .hd = hd, .opt = *opt};
    cpu_parallel_for(nkv, 2.0 * nh * T * T * hd, attn_bwd_kvheads, &a);
}

void cpu_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                       const void *q, const void *k, const void *v, const int32_t *seq_start,
                       int T, int nh, int nkv, int hd) {
    ops_attn none = {0};
    cpu_attention_ex_bwd(dq, dk, dv, dout, out, lse, q, k, v, seq_start, T, nh, nkv, hd, &none);
}

void cpu_attention_ex_cached(void *out_, const void *q_, const void *kcache, const void *vcache,
                             int Tq, int Tk, int nh, int nkv, int hd, const ops_attn *opt) {
    float *out = out_;
    const float *q = q_, *k = kcache, *v = vcache;
    int group = nh / nkv;
    int64_t qs = (int64_t)nh * hd, ks = (int64_t)nkv * hd;
    float sc = attn_scale(opt, hd);
    float *p = malloc(sizeof(float) * (size_t)Tk);
    for (int i = 0; i < Tq; i++) {
        int last = Tk - Tq + i, first = attn_first(opt, 0, last);
        for (int h = 0; h < nh; h++) {
            int kh = h / group;
            const float *qi = q + i * qs + (int64_t)h * hd;
            float mx = -INFINITY;
            for (int s = first; s <= last; s++) {
                p[s] = attn_cap(opt, cpu_dot(qi, k + s * ks + (int64_t)kh * hd, hd) * sc);
                if (p[s] > mx) mx = p[s];
            }
            double sum = 0;
            for (int s = first; s <= last; s++) {
                p[s] = expf(p[s] - mx);
                sum += p[s];
            }
            float inv = (float)(1.0 / sum);
            float *oi = out + i * qs + (int64_t)h * hd;
            memset(oi, 0, sizeof(float) * (size_t)hd);
            for (int s = first; s <= last; s++) cpu_axpy(oi, p[s] * inv, v + s * ks + (int64_t)kh * hd, hd);
        }
    }
    free(p);
}

void cpu_attention_cached(void *out, const void *q, const void *kcache, const void *vcache,
                          int Tq, int Tk, int nh, int nkv, int hd) {
    ops_attn none = {0};
    cpu_attention_ex_cached(out, q, kcache, vcache, Tq, Tk, nh, nkv, hd, &none);
}
