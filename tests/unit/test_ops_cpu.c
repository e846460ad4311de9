/* test_ops_cpu.c: the plain C reference ops against finite differences and direct formulas.
 *
 * Every backward op is checked by central differences of a scalar probe loss
 * L = sum(out * R) (R fixed random) on small random inputs; attention with two packed sequences
 * must equal the two sequences run separately; the NF4 linear must equal a dense matmul with the
 * fully dequantized weight; the KV-cache attention must equal the last rows of the full one. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/half.h"
#include "kernels/cpu/nf4.h"
#include "kernels/ops.h"
#include "test.h"

static const ops_table *ops;

static void fill(float *x, int64_t n, uint64_t stream, float amp) {
    for (int64_t i = 0; i < n; i++) x[i] = amp * rng_normal(7, stream, (uint64_t)i);
}

static void fill_bf16(uint16_t *x, int64_t n, uint64_t stream, float amp, float base) {
    for (int64_t i = 0; i < n; i++) x[i] = f32_to_bf16(base + amp * rng_normal(7, stream, (uint64_t)i));
}

static double probe(const float *out, const float *R, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)out[i] * R[i];
    return s;
}

/* a probe loss as a function of the current inputs */
typedef double (*loss_fn)(void *ctx);

/* central differences at `samples` indices of param against analytic; relative to the gradient's scale */
static double fd_max_err(float *param, int64_t n, const float *analytic, loss_fn f, void *ctx, int samples) {
    double scale = 1e-6;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(analytic[i]));
    double worst = 0;
    for (int s = 0; s < samples; s++) {
        int64_t i = samples >= n ? s : (int64_t)(rng_u64(3, 99, (uint64_t)s) % (uint64_t)n);
        if (i >= n) break;
        float keep = param[i], h = 1e-2f * fmaxf(1.0f, fabsf(keep));
        param[i] = keep + h;
        double lp = f(ctx);
        param[i] = keep - h;
        double lm = f(ctx);
        param[i] = keep;
        double num = (lp - lm) / (2.0 * h);
        worst = fmax(worst, fabs(num - analytic[i]) / scale);
    }
    return worst;
}

/* ---- RMSNorm ---- */

typedef struct { float *x, *out, *R, *rstd; uint16_t *w; float w_add; int T, C; } norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    ops->rmsnorm_fwd(c->out, c->rstd, c->x, c->w, c->w_add, c->T, c->C, 1e-5f);
    return probe(c->out, c->R, (int64_t)c->T * c->C);
}

TEST(rmsnorm_grad) {
    int T = 3, C = 16;
    float x[48], out[48], R[48], rstd[3], dx[48], dx0[48];
    uint16_t w[16];
    fill(x, 48, 1, 1.0f), fill(R, 48, 2, 1.0f), fill(dx0, 48, 3, 1.0f);
    fill_bf16(w, 16, 4, 0.3f, 1.0f);
    /* w_add 0 (w as it is) and 1 (gemma's 1 + w, w near 0) */
    for (int a = 0; a < 2; a++) {
        if (a) fill_bf16(w, 16, 5, 0.05f, 0.0f);
        norm_ctx c = {x, out, R, rstd, w, (float)a, T, C};
        norm_loss(&c);
        /* dx accumulates: start from dx0 and subtract it */
        memcpy(dx, dx0, sizeof dx);
        ops->rmsnorm_bwd(dx, R, x, w, (float)a, rstd, T, C);
        for (int i = 0; i < 48; i++) dx[i] -= dx0[i];
        CHECK(fd_max_err(x, 48, dx, norm_loss, &c, 48) < 1e-2);
        /* the forward itself: (w_add + w) * x / rms, the sum in fp32 (not rounded to bf16) */
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)x[i] * x[i];
        for (int i = 0; i < C; i++)
            CHECK_NEAR(out[i], ((float)a + bf16_to_f32(w[i])) * x[i] / sqrt(ss / C + 1e-5), 1e-5);
    }
}

/* ---- RoPE ---- */

TEST(rope_inverse_is_transpose) {
    int T = 4, nh = 3, hd = 8, n = T * nh * hd;
    float x[96], y[96], rx[96], ry[96], inv[4];
    int32_t pos[4] = {0, 1, 5, 17};
    fill(x, n, 5, 1.0f), fill(y, n, 6, 1.0f);
    for (int j = 0; j < hd / 2; j++) inv[j] = powf(10000.0f, -2.0f * j / hd);
    memcpy(rx, x, sizeof x), memcpy(ry, y, sizeof y);
    ops->rope(rx, pos, inv, T, nh, hd, 0);
    ops->rope(ry, pos, inv, T, nh, hd, 1);
    CHECK_NEAR(probe(rx, y, n), probe(x, ry, n), 1e-4); /* <R x, y> == <x, R^T y> */
    ops->rope(rx, pos, inv, T, nh, hd, 1);
    for (int i = 0; i < n; i++) CHECK_NEAR(rx[i], x[i], 1e-5);
    /* position 0 is the identity; the pair (j, j+hd/2) rotates by pos * inv[j] */
    float q[8] = {1, 2, 3, 4, 5, 6, 7, 8}, q0[8];
    memcpy(q0, q, sizeof q);
    int32_t p3 = 3;
    ops->rope(q, &p3, inv, 1, 1, 8, 0);
    float a = 3 * inv[1];
    CHECK_NEAR(q[1], q0[1] * cosf(a) - q0[5] * sinf(a), 1e-6);
    CHECK_NEAR(q[5], q0[5] * cosf(a) + q0[1] * sinf(a), 1e-6);
}

/* rope_ex: phi3's partial rotary (the first rot dims of each head) times a scale */
TEST(rope_ex_partial_scaled) {
    int T = 4, nh = 3, hd = 8, rot = 4, n = T * nh * hd;
    float x[96], y[96], rx[96], ry[96], inv[4], full[96];
    int32_t pos[4] = {0, 1, 5, 17};
    fill(x, n, 7, 1.0f), fill(y, n, 8, 1.0f);
    for (int j = 0; j < rot / 2; j++) inv[j] = powf(10000.0f, -2.0f * j / rot);
    memcpy(rx, x, sizeof x), memcpy(ry, y, sizeof y);
    ops->rope_ex(rx, pos, inv, T, nh, hd, rot, 1.5f, 0);
    ops->rope_ex(ry, pos, inv, T, nh, hd, rot, 1.5f, 1);
    CHECK_NEAR(probe(rx, y, n), probe(x, ry, n), 1e-4); /* the backward is the transpose */
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++)
            for (int j = 0; j < hd; j++) {
                int i = (t * nh + h) * hd + j;
                if (j >= rot) CHECK(rx[i] == x[i]); /* the pass-through dims */
            }
    /* pair (j, j + rot/2) rotates by pos * inv[j], scaled */
    float a = 5 * inv[1];
    int i = (2 * nh + 1) * hd;
    CHECK_NEAR(rx[i + 1], 1.5f * (x[i + 1] * cosf(a) - x[i + 3] * sinf(a)), 1e-5);
    CHECK_NEAR(rx[i + 3], 1.5f * (x[i + 3] * cosf(a) + x[i + 1] * sinf(a)), 1e-5);
    /* the whole head with scale 1 is plain rope */
    float inv8[4];
    for (int j = 0; j < hd / 2; j++) inv8[j] = powf(10000.0f, -2.0f * j / hd);
    memcpy(rx, x, sizeof x), memcpy(full, x, sizeof x);
    ops->rope_ex(rx, pos, inv8, T, nh, hd, hd, 1.0f, 0);
    ops->rope(full, pos, inv8, T, nh, hd, 0);
    for (int k = 0; k < n; k++) CHECK(rx[k] == full[k]);
}

/* ---- attention ---- */

enum { AT = 7, ANH = 4, ANKV = 2, AHD = 8 };
typedef struct {
    float q[AT * ANH * AHD], k[AT * ANKV * AHD], v[AT * ANKV * AHD], out[AT * ANH * AHD], R[AT * ANH * AHD];
    float lse[ANH * AT];
    int32_t ss[AT];
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *c = p;
    ops->attention_fwd(c->out, c->lse, c->q, c->k, c->v, c->ss, AT, ANH, ANKV, AHD);
    return probe(c->out, c->R, AT * ANH * AHD);
}

TEST(attention_grad_packed) {
    static attn_ctx c;
    fill(c.q, sizeof c.q / 4, 10, 1.0f), fill(c.k, sizeof c.k / 4, 11, 1.0f), fill(c.v, sizeof c.v / 4, 12, 1.0f);
    fill(c.R, sizeof c.R / 4, 13, 1.0f);
    int32_t ss[AT] = {0, 0, 0, 0, 4, 4, 4}; /* two packed sequences: [0,4) and [4,7) */
    memcpy(c.ss, ss, sizeof ss);
    attn_loss(&c);
    static float dq[AT * ANH * AHD], dk[AT * ANKV * AHD], dv[AT * ANKV * AHD];
    ops->attention_bwd(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, c.ss, AT, ANH, ANKV, AHD);
    CHECK(fd_max_err(c.q, sizeof c.q / 4, dq, attn_loss, &c, 60) < 1e-2);
    CHECK(fd_max_err(c.k, sizeof c.k / 4, dk, attn_loss, &c, 60) < 1e-2);
    CHECK(fd_max_err(c.v, sizeof c.v / 4, dv, attn_loss, &c, 60) < 1e-2);
}

TEST(attention_packing_equals_separate) {
    static attn_ctx c;
    fill(c.q, sizeof c.q / 4, 20, 1.0f), fill(c.k, sizeof c.k / 4, 21, 1.0f), fill(c.v, sizeof c.v / 4, 22, 1.0f);
    int32_t ss[AT] = {0, 0, 0, 3, 3, 3, 3};
    ops->attention_fwd(c.out, c.lse, c.q, c.k, c.v, ss, AT, ANH, ANKV, AHD);
    /* the second sequence alone: rows 3..6 */
    int n2 = 4;
    int32_t ss2[4] = {0, 0, 0, 0};
    static float out2[4 * ANH * AHD], lse2[ANH * 4];
    ops->attention_fwd(out2, lse2, c.q + 3 * ANH * AHD, c.k + 3 * ANKV * AHD, c.v + 3 * ANKV * AHD, ss2, n2, ANH, ANKV,
                       AHD);
    double worst = 0;
    for (int i = 0; i < n2 * ANH * AHD; i++) worst = fmax(worst, fabs(out2[i] - c.out[3 * ANH * AHD + i]));
    for (int h = 0; h < ANH; h++)
        for (int t = 0; t < n2; t++) worst = fmax(worst, fabs(lse2[h * n2 + t] - c.lse[h * AT + 3 + t]));
    CHECK(worst < 1e-6);
    /* and the first: rows 0..2, causal from 0 */
    static float out1[3 * ANH * AHD], lse1[ANH * 3];
    ops->attention_fwd(out1, lse1, c.q, c.k, c.v, ss2, 3, ANH, ANKV, AHD);
    worst = 0;
    for (int i = 0; i < 3 * ANH * AHD; i++) worst = fmax(worst, fabs(out1[i] - c.out[i]));
    CHECK(worst < 1e-6);
}

TEST(attention_cached_equals_full) {
    static attn_ctx c;
    fill(c.q, sizeof c.q / 4, 30, 1.0f), fill(c.k, sizeof c.k / 4, 31, 1.0f), fill(c.v, sizeof c.v / 4, 32, 1.0f);
    memset(c.ss, 0, sizeof c.ss);
    ops->attention_fwd(c.out, c.lse, c.q, c.k, c.v, c.ss, AT, ANH, ANKV, AHD);
    static float out[2 * ANH * AHD];
    ops->attention_cached(out, c.q + 5 * ANH * AHD, c.k, c.v, 2, AT, ANH, ANKV, AHD);
    for (int i = 0; i < 2 * ANH * AHD; i++) CHECK_NEAR(out[i], c.out[5 * ANH * AHD + i], 1e-6);
}

/* the _ex attention: a window of 3, another scale and soft-capping (Gemma-2's formula; no model
 * uses it yet, so this is its test), by finite differences; and a window the sequences never reach
 * equal to plain attention; and the cached form equal to the full one */
static ops_attn ex_opt = {3, 0.6f, 1.5f};

static double attn_ex_loss(void *p) {
    attn_ctx *c = p;
    ops->attention_ex_fwd(c->out, c->lse, c->q, c->k, c->v, c->ss, AT, ANH, ANKV, AHD, &ex_opt);
    return probe(c->out, c->R, AT * ANH * AHD);
}

TEST(attention_ex_window_scale_softcap) {
    static attn_ctx c;
    fill(c.q, sizeof c.q / 4, 50, 1.5f), fill(c.k, sizeof c.k / 4, 51, 1.5f), fill(c.v, sizeof c.v / 4, 52, 1.0f);
    fill(c.R, sizeof c.R / 4, 53, 1.0f);
    int32_t ss[AT] = {0, 0, 0, 0, 0, 5, 5};
    memcpy(c.ss, ss, sizeof ss);
    attn_ex_loss(&c);
    static float dq[AT * ANH * AHD], dk[AT * ANKV * AHD], dv[AT * ANKV * AHD];
    ops->attention_ex_bwd(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, c.ss, AT, ANH, ANKV, AHD, &ex_opt);
    CHECK(fd_max_err(c.q, sizeof c.q / 4, dq, attn_ex_loss, &c, 60) < 1e-2);
    CHECK(fd_max_err(c.k, sizeof c.k / 4, dk, attn_ex_loss, &c, 60) < 1e-2);
    CHECK(fd_max_err(c.v, sizeof c.v / 4, dv, attn_ex_loss, &c, 60) < 1e-2);
    /* row 4 sees keys 2..4 only: moving key 1 changes nothing there */
    static float before[AT * ANH * AHD];
    attn_ex_loss(&c); /* the probes above left out at a perturbed input */
    memcpy(before, c.out, sizeof before);
    for (int i = 0; i < ANKV * AHD; i++) c.k[1 * ANKV * AHD + i] += 3.0f;
    attn_ex_loss(&c);
    for (int i = 0; i < ANH * AHD; i++) CHECK(c.out[4 * ANH * AHD + i] == before[4 * ANH * AHD + i]);
    CHECK(c.out[3 * ANH * AHD] != before[3 * ANH * AHD]); /* row 3 sees it */
    /* the cached form: the last 2 rows of the one sequence [0, 5) */
    static float out[2 * ANH * AHD];
    ops->attention_ex_cached(out, c.q + 3 * ANH * AHD, c.k, c.v, 2, 5, ANH, ANKV, AHD, &ex_opt);
    for (int i = 0; i < 2 * ANH * AHD; i++) CHECK_NEAR(out[i], c.out[3 * ANH * AHD + i], 1e-6);
    /* a window no sequence reaches, default scale, no cap: plain attention */
    ops_attn none = {100, 0, 0};
    static float out_ex[AT * ANH * AHD], lse_ex[ANH * AT];
    ops->attention_ex_fwd(out_ex, lse_ex, c.q, c.k, c.v, c.ss, AT, ANH, ANKV, AHD, &none);
    ops->attention_fwd(c.out, c.lse, c.q, c.k, c.v, c.ss, AT, ANH, ANKV, AHD);
    CHECK(!memcmp(out_ex, c.out, sizeof out_ex));
}

/* ---- GeGLU (tanh) ---- */

typedef struct { float g[40], u[40], out[40], R[40]; } geglu_ctx;

static double geglu_loss(void *p) {
    geglu_ctx *c = p;
    ops->geglu_fwd(c->out, c->g, c->u, 40);
    return probe(c->out, c->R, 40);
}

TEST(geglu_grad) {
    geglu_ctx c;
    fill(c.g, 40, 60, 2.0f), fill(c.u, 40, 61, 1.0f), fill(c.R, 40, 62, 1.0f);
    float dg[40], du[40];
    ops->geglu_bwd(dg, du, c.R, c.g, c.u, 40);
    CHECK(fd_max_err(c.g, 40, dg, geglu_loss, &c, 40) < 1e-2);
    CHECK(fd_max_err(c.u, 40, du, geglu_loss, &c, 40) < 1e-2);
    double x = c.g[3]; /* torch's gelu(approximate="tanh") */
    CHECK_NEAR(c.out[3], 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))) * c.u[3], 1e-5);
    float y[3] = {1, -2, 0.5f};
    ops->act_scale(y, 3, 4.0f);
    CHECK(y[0] == 4 && y[1] == -8 && y[2] == 2);
}

/* ---- SwiGLU ---- */

typedef struct { float g[40], u[40], out[40], R[40]; } swiglu_ctx;

static double swiglu_loss(void *p) {
    swiglu_ctx *c = p;
    ops->swiglu_fwd(c->out, c->g, c->u, 40);
    return probe(c->out, c->R, 40);
}

TEST(swiglu_grad) {
    swiglu_ctx c;
    fill(c.g, 40, 40, 2.0f), fill(c.u, 40, 41, 1.0f), fill(c.R, 40, 42, 1.0f);
    float dg[40], du[40];
    ops->swiglu_bwd(dg, du, c.R, c.g, c.u, 40);
    CHECK(fd_max_err(c.g, 40, dg, swiglu_loss, &c, 40) < 1e-2);
    CHECK(fd_max_err(c.u, 40, du, swiglu_loss, &c, 40) < 1e-2);
    CHECK_NEAR(c.out[3], c.g[3] / (1 + expf(-c.g[3])) * c.u[3], 1e-6);
}

/* ---- NF4 linear with LoRA ---- */

enum { QT = 5, QIN = 128, QOUT = 72, QR = 4 };
typedef struct {
    float x[QT * QIN], y[QT * QOUT], R[QT * QOUT], A[QR * QIN], B[QOUT * QR], xa[QT * QR];
    uint16_t bias[QOUT];
    uint8_t codes[QIN * QOUT / 2];
    float absmax[QIN * QOUT / 64];
    ops_nf4 W;
    ops_lora L;
} ql_ctx;

static double ql_loss(void *p) {
    ql_ctx *c = p;
    ops->qlinear_fwd(c->y, c->x, &c->W, c->bias, &c->L, c->xa, QT);
    return probe(c->y, c->R, QT * QOUT);
}

static void ql_setup(ql_ctx *c, float dropout) {
    static float w[QIN * QOUT];
    fill(w, QIN * QOUT, 50, 0.1f);
    nf4_quantize(c->codes, c->absmax, w, NF4_SRC_F32, QIN * QOUT, 64, OPS_NF4, 1);
    c->W = (ops_nf4){.codes = c->codes, .absmax = c->absmax, .quant_map = nf4_quant_map(OPS_NF4), .rows = QOUT,
                     .cols = QIN, .blocksize = 64};
    fill(c->x, QT * QIN, 51, 1.0f), fill(c->R, QT * QOUT, 52, 1.0f);
    fill(c->A, QR * QIN, 53, 0.1f), fill(c->B, QOUT * QR, 54, 0.1f);
    fill_bf16(c->bias, QOUT, 55, 0.1f, 0.0f);
    c->L = (ops_lora){.A = c->A, .B = c->B, .r = QR, .scale = 2.0f, .dropout = dropout, .dropout_seed = 1234};
}

TEST(qlinear_matches_dense) {
    static ql_ctx c;
    ql_setup(&c, 0.0f);
    ql_loss(&c);
    static float w[QIN * QOUT];
    ops_nf4_dequant_rows(&c.W, 0, QOUT, w);
    double worst = 0;
    for (int t = 0; t < QT; t++)
        for (int o = 0; o < QOUT; o++) {
            double s = bf16_to_f32(c.bias[o]);
            for (int i = 0; i < QIN; i++) s += (double)c.x[t * QIN + i] * w[o * QIN + i];
            for (int j = 0; j < QR; j++) {
                double xa = 0;
                for (int i = 0; i < QIN; i++) xa += (double)c.x[t * QIN + i] * c.A[j * QIN + i];
                s += 2.0 * xa * c.B[o * QR + j];
            }
            worst = fmax(worst, fabs(s - c.y[t * QOUT + o]));
        }
    CHECK(worst < 1e-4);
}

static void ql_grad_check(float dropout) {
    static ql_ctx c;
    ql_setup(&c, dropout);
    ql_loss(&c);
    static float dx[QT * QIN], dA[QR * QIN], dB[QOUT * QR];
    memset(dA, 0, sizeof dA), memset(dB, 0, sizeof dB);
    c.L.dA = dA, c.L.dB = dB;
    ops->qlinear_bwd(dx, c.R, c.x, &c.W, &c.L, c.xa, QT, 0);
    CHECK(fd_max_err(c.x, QT * QIN, dx, ql_loss, &c, 80) < 1e-2);
    CHECK(fd_max_err(c.A, QR * QIN, dA, ql_loss, &c, 80) < 1e-2);
    CHECK(fd_max_err(c.B, QOUT * QR, dB, ql_loss, &c, 80) < 1e-2);
    /* accumulate=1 adds to dx */
    static float dx2[QT * QIN];
    for (int i = 0; i < QT * QIN; i++) dx2[i] = 1.0f;
    ops->qlinear_bwd(dx2, c.R, c.x, &c.W, &c.L, c.xa, QT, 1);
    for (int i = 0; i < QT * QIN; i += 37) CHECK_NEAR(dx2[i], dx[i] + 1.0f, 1e-5);
}

TEST(qlinear_grad) { ql_grad_check(0.0f); }
TEST(qlinear_grad_dropout) { ql_grad_check(0.25f); }

TEST(dropout_mask_rate) {
    int kept = 0, n = 100000;
    for (int i = 0; i < n; i++) kept += ops_dropout_keep(42, (uint64_t)i, 0.1f);
    CHECK(fabs(kept / (double)n - 0.9) < 0.005);
    CHECK(ops_dropout_keep(42, 7, 0.0f));
}

/* ---- lm_head + cross-entropy ---- */

enum { XT = 4, XC = 24, XV = 300 };
typedef struct {
    float x[XT * XC], losses[XT];
    uint16_t E[XV * XC];
    int32_t target[XT];
    float cap; /* the final logits' soft-cap (0: none) */
} xent_ctx;

static double xent_loss(void *p) {
    xent_ctx *c = p;
    ops->xent_fwd_bwd(c->losses, NULL, c->x, c->E, c->target, XT, XC, XV, 1.0f, c->cap);
    double s = 0;
    for (int t = 0; t < XT; t++) s += c->losses[t];
    return s;
}

TEST(xent_grad_and_value) {
    static xent_ctx c;
    fill(c.x, XT * XC, 60, 1.0f);
    fill_bf16(c.E, XV * XC, 61, 0.5f, 0.0f);
    int32_t tg[XT] = {3, -100, 299, 150};
    memcpy(c.target, tg, sizeof tg);
    float dx[XT * XC];
    ops->xent_fwd_bwd(c.losses, dx, c.x, c.E, c.target, XT, XC, XV, 0.5f, 0.0f);
    for (int i = 0; i < XT * XC; i++) dx[i] *= 2.0f; /* grad_scale 0.5 */
    CHECK(fd_max_err(c.x, XT * XC, dx, xent_loss, &c, XT * XC) < 1e-2);
    for (int i = XC; i < 2 * XC; i++) CHECK(dx[i] == 0.0f); /* ignored row */
    CHECK(c.losses[1] == 0.0f);
    /* the value against logits + a double log-softmax */
    xent_loss(&c); /* the probes above left the losses of a perturbed x */
    static float lg[XT * XV];
    ops->logits(lg, c.x, c.E, XT, XC, XV, 0.0f);
    double mx = -1e30, s = 0;
    for (int v = 0; v < XV; v++) mx = fmax(mx, lg[3 * XV + v]);
    for (int v = 0; v < XV; v++) s += exp(lg[3 * XV + v] - mx);
    CHECK_NEAR(c.losses[3], mx + log(s) - lg[3 * XV + 150], 1e-4);
}

/* Gemma-2's final logit soft-capping, at a cap of 1.5 where the logits reach about 3: the loss is
 * the log-softmax of cap * tanh(z / cap), the gradient goes through tanh, the logits are capped */
TEST(xent_softcap) {
    static xent_ctx c;
    fill(c.x, XT * XC, 62, 1.0f);
    fill_bf16(c.E, XV * XC, 63, 0.5f, 0.0f);
    int32_t tg[XT] = {7, 42, -100, 299};
    memcpy(c.target, tg, sizeof tg);
    c.cap = 1.5f;
    float dx[XT * XC];
    ops->xent_fwd_bwd(c.losses, dx, c.x, c.E, c.target, XT, XC, XV, 1.0f, c.cap);
    CHECK(fd_max_err(c.x, XT * XC, dx, xent_loss, &c, XT * XC) < 1e-2);
    for (int i = 2 * XC; i < 3 * XC; i++) CHECK(dx[i] == 0.0f); /* ignored row */
    xent_loss(&c);
    static float raw[XT * XV], capped[XT * XV];
    ops->logits(raw, c.x, c.E, XT, XC, XV, 0.0f);
    ops->logits(capped, c.x, c.E, XT, XC, XV, c.cap);
    double most = 0;
    for (int i = 0; i < XT * XV; i++) {
        CHECK_NEAR(capped[i], c.cap * tanh(raw[i] / c.cap), 1e-5);
        most = fmax(most, fabs(raw[i]));
    }
    CHECK(most > 2 * c.cap); /* the cap bites */
    for (int t = 0; t < XT; t++) {
        if (tg[t] < 0) continue;
        double mx = -1e30, s = 0;
        for (int v = 0; v < XV; v++) mx = fmax(mx, capped[t * XV + v]);
        for (int v = 0; v < XV; v++) s += exp(capped[t * XV + v] - mx);
        CHECK_NEAR(c.losses[t], mx + log(s) - capped[t * XV + tg[t]], 1e-4);
    }
    /* the same rows uncapped give another loss */
    float capped_loss = c.losses[0];
    c.cap = 0;
    xent_loss(&c);
    CHECK(fabsf(c.losses[0] - capped_loss) > 1e-2f);
}

/* ---- AdamW ---- */

TEST(adamw_torch_semantics) {
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.1f, -0.3f, 0.0f}, m[3] = {0}, v[3] = {0};
    double P[3] = {1.0, -2.0, 0.5}, M[3] = {0}, Vv[3] = {0};
    double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    for (int step = 1; step <= 3; step++) {
        ops->adamw(p, g, m, v, 3, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, step);
        for (int i = 0; i < 3; i++) {
            P[i] *= 1 - lr * wd;
            M[i] = b1 * M[i] + (1 - b1) * g[i];
            Vv[i] = b2 * Vv[i] + (1 - b2) * (double)g[i] * g[i];
            double mh = M[i] / (1 - pow(b1, step)), vh = Vv[i] / (1 - pow(b2, step));
            P[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    for (int i = 0; i < 3; i++) CHECK_NEAR(p[i], P[i], 1e-6);
    CHECK_NEAR(ops->sum_squares(g, 3), 0.01 + 0.09, 1e-7);
    ops->scale(g, 3, 2.0f);
    CHECK_NEAR(g[1], -0.6, 1e-7);
}

TEST(embedding_and_add) {
    uint16_t table[3 * 4];
    fill_bf16(table, 12, 70, 1.0f, 0.0f);
    int32_t ids[2] = {2, 0};
    float out[8], y[8];
    ops->embedding_fwd(out, ids, table, 2, 4);
    CHECK(out[1] == bf16_to_f32(table[9]) && out[6] == bf16_to_f32(table[2]));
    for (int i = 0; i < 8; i++) y[i] = 1.0f;
    ops->add_inplace(y, out, 8);
    CHECK(y[1] == 1.0f + out[1]);
}

int main(void) {
    ops = ops_cpu();
    RUN(rmsnorm_grad);
    RUN(rope_inverse_is_transpose);
    RUN(rope_ex_partial_scaled);
    RUN(attention_grad_packed);
    RUN(attention_packing_equals_separate);
    RUN(attention_cached_equals_full);
    RUN(attention_ex_window_scale_softcap);
    RUN(geglu_grad);
    RUN(swiglu_grad);
    RUN(qlinear_matches_dense);
    RUN(qlinear_grad);
    RUN(qlinear_grad_dropout);
    RUN(dropout_mask_rate);
    RUN(xent_grad_and_value);
    RUN(xent_softcap);
    RUN(adamw_torch_semantics);
    RUN(embedding_and_add);
    return test_summary();
}
