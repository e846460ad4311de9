/* ops_prof.c: an op table that times every op of another (ops_prof.h). */
#define _POSIX_C_SOURCE 200809L
#include "kernels/ops_prof.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/err.h"

static const ops_table *prof_real;
static ops_prof_clock prof_clock;
static int *prof_label; /* [prof_cap]: each call's index into prof_names */
static int prof_n, prof_cap, prof_nlabels, prof_failed;
static char prof_names[OPS_PROF_ROWS][64];

static int prof_label_of(const char *name) {
    for (int i = 0; i < prof_nlabels; i++)
        if (!strcmp(prof_names[i], name)) return i;
    if (prof_nlabels == OPS_PROF_ROWS) return OPS_PROF_ROWS - 1; /* the last row takes what does not fit */
    snprintf(prof_names[prof_nlabels], sizeof prof_names[0], "%s", name);
    return prof_nlabels++;
}

/* call prof_n begins: mark 2 prof_n (the labels and the clock's marks grow together) */
static void prof_begin(const char *name) {
    if (prof_n == prof_cap) {
        int cap = prof_cap ? 2 * prof_cap : 4096;
        int *l = realloc(prof_label, sizeof(int) * (size_t)cap);
        if (l) prof_label = l;
        if (!l || prof_clock.reserve(prof_clock.ud, 2 * cap)) {
            prof_failed = 1;
            return;
        }
        prof_cap = cap;
    }
    prof_label[prof_n] = prof_label_of(name);
    if (prof_clock.mark(prof_clock.ud, 2 * prof_n)) prof_failed = 1;
}

/* and ends: mark 2 prof_n + 1 */
static void prof_end(void) {
    if (prof_n < prof_cap && prof_clock.mark(prof_clock.ud, 2 * prof_n + 1)) prof_failed = 1;
    if (prof_n < prof_cap) prof_n++;
}

/* "qlinear_fwd 4096x4096" with what the call carries: LoRA, dropout, dense weights */
static const char *prof_linear(char *buf, size_t cap, const char *op, const ops_nf4 *W, const ops_lora *lora) {
    snprintf(buf, cap, "%s %lldx%lld%s%s%s", op, (long long)W->rows, (long long)W->cols, lora ? " +LoRA" : "",
             lora && lora->dropout > 0 ? " +dropout" : "", W->dense ? " (dense)" : "");
    return buf;
}

#define PROF(label, call)                                                                                 \
    do {                                                                                                  \
        prof_begin(label);                                                                                \
        call;                                                                                             \
        prof_end();                                                                                       \
    } while (0)

static void prof_copy(void *d, const void *s, size_t n) { PROF("copy", prof_real->copy(d, s, n)); }
static void prof_zero(void *p, size_t n) { PROF("zero", prof_real->zero(p, n)); }
static void prof_upload(void *d, const void *s, size_t n) { PROF("upload (host -> device)", prof_real->upload(d, s, n)); }
static void prof_download(void *d, const void *s, size_t n) {
    PROF("download (device -> host, a sync)", prof_real->download(d, s, n));
}
static void prof_embedding_fwd(void *out, const int32_t *ids, const uint16_t *t, int T, int C) {
    PROF("embedding_fwd", prof_real->embedding_fwd(out, ids, t, T, C));
}
static void prof_rmsnorm_fwd(void *out, float *rstd, const void *x, const uint16_t *w, float wa, int T, int C,
                             float eps) {
    PROF("rmsnorm_fwd", prof_real->rmsnorm_fwd(out, rstd, x, w, wa, T, C, eps));
}
static void prof_rmsnorm_bwd(void *dx, const void *dout, const void *x, const uint16_t *w, float wa, const float *rstd,
                             int T, int C) {
    PROF("rmsnorm_bwd", prof_real->rmsnorm_bwd(dx, dout, x, w, wa, rstd, T, C));
}
static void prof_add_inplace(void *y, const void *x, int64_t n) { PROF("add_inplace", prof_real->add_inplace(y, x, n)); }
static void prof_rope(void *q, const int32_t *pos, const float *inv, int T, int nh, int hd, int inverse) {
    PROF(inverse ? "rope (backward)" : "rope", prof_real->rope(q, pos, inv, T, nh, hd, inverse));
}
static void prof_attention_fwd(void *out, float *lse, const void *q, const void *k, const void *v, const int32_t *ss,
                               int T, int nh, int nkv, int hd) {
    PROF("attention_fwd", prof_real->attention_fwd(out, lse, q, k, v, ss, T, nh, nkv, hd));
}
static void prof_attention_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                               const void *q, const void *k, const void *v, const int32_t *ss, int T, int nh, int nkv,
                               int hd) {
    PROF("attention_bwd", prof_real->attention_bwd(dq, dk, dv, dout, out, lse, q, k, v, ss, T, nh, nkv, hd));
}
static void prof_attention_ex_fwd(void *out, float *lse, const void *q, const void *k, const void *v,
                                  const int32_t *ss, int T, int nh, int nkv, int hd, const ops_attn *opt) {
    PROF("attention_ex_fwd", prof_real->attention_ex_fwd(out, lse, q, k, v, ss, T, nh, nkv, hd, opt));
}
static void prof_attention_ex_bwd(void *dq, void *dk, void *dv, const void *dout, const void *out, const float *lse,
                                  const void *q, const void *k, const void *v, const int32_t *ss, int T, int nh,
                                  int nkv, int hd, const ops_attn *opt) {
    PROF("attention_ex_bwd", prof_real->attention_ex_bwd(dq, dk, dv, dout, out, lse, q, k, v, ss, T, nh, nkv, hd, opt));
}
static void prof_swiglu_fwd(void *out, const void *g, const void *u, int64_t n) {
    PROF("swiglu_fwd", prof_real->swiglu_fwd(out, g, u, n));
}
static void prof_swiglu_bwd(void *dg, void *du, const void *dout, const void *g, const void *u, int64_t n) {
    PROF("swiglu_bwd", prof_real->swiglu_bwd(dg, du, dout, g, u, n));
}
static void prof_geglu_fwd(void *out, const void *g, const void *u, int64_t n) {
    PROF("geglu_fwd", prof_real->geglu_fwd(out, g, u, n));
}
static void prof_geglu_bwd(void *dg, void *du, const void *dout, const void *g, const void *u, int64_t n) {
    PROF("geglu_bwd", prof_real->geglu_bwd(dg, du, dout, g, u, n));
}
static void prof_act_scale(void *x, int64_t n, float s) { PROF("act_scale", prof_real->act_scale(x, n, s)); }
static void prof_rope_ex(void *q, const int32_t *pos, const float *inv, int T, int nh, int hd, int rot, float ms,
                         int inverse) {
    PROF(inverse ? "rope_ex (backward)" : "rope_ex", prof_real->rope_ex(q, pos, inv, T, nh, hd, rot, ms, inverse));
}
static void prof_qlinear_fwd(void *y, const void *x, const ops_nf4 *W, const uint16_t *bias, const ops_lora *lora,
                             float *xa, int T) {
    char b[64];
    PROF(prof_linear(b, sizeof b, "qlinear_fwd", W, lora), prof_real->qlinear_fwd(y, x, W, bias, lora, xa, T));
}
static void prof_qlinear_bwd(void *dx, const void *dy, const void *x, const ops_nf4 *W, const ops_lora *lora,
                             const float *xa, int T, int acc) {
    char b[64];
    PROF(prof_linear(b, sizeof b, "qlinear_bwd", W, lora), prof_real->qlinear_bwd(dx, dy, x, W, lora, xa, T, acc));
}
static void prof_xent(float *losses, void *dx, const void *x, const uint16_t *E, const int32_t *tgt, int T, int C,
                      int V, float gs, float softcap) {
    PROF("xent_fwd_bwd (lm_head)", prof_real->xent_fwd_bwd(losses, dx, x, E, tgt, T, C, V, gs, softcap));
}
static void prof_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1, float b2,
                       float eps, float wd, int step) {
    PROF("adamw", prof_real->adamw(p, g, m, v, n, lr, b1, b2, eps, wd, step));
}
static double prof_sum_squares(const float *g, int64_t n) {
    double r;
    PROF("sum_squares (grad norm, a sync)", r = prof_real->sum_squares(g, n));
    return r;
}
static void prof_scale(float *g, int64_t n, float s) { PROF("scale", prof_real->scale(g, n, s)); }
static void prof_side_wait(int slot) { PROF("side_wait (offload copies)", prof_real->side_wait(slot)); }

void ops_prof_wrap(ops_table *out, const ops_table *real, const ops_prof_clock *clock) {
    prof_real = real;
    prof_clock = *clock;
    prof_n = prof_cap = prof_nlabels = prof_failed = 0; /* this clock has no marks reserved yet */
    ops_table t = *real;
    t.copy = prof_copy;
    t.zero = prof_zero;
    t.upload = prof_upload;
    t.download = prof_download;
    t.embedding_fwd = prof_embedding_fwd;
    t.rmsnorm_fwd = prof_rmsnorm_fwd;
    t.rmsnorm_bwd = prof_rmsnorm_bwd;
    t.add_inplace = prof_add_inplace;
    t.rope = prof_rope;
    t.attention_fwd = prof_attention_fwd;
    t.attention_bwd = prof_attention_bwd;
    t.swiglu_fwd = prof_swiglu_fwd;
    t.swiglu_bwd = prof_swiglu_bwd;
    t.qlinear_fwd = prof_qlinear_fwd;
    t.qlinear_bwd = prof_qlinear_bwd;
    t.xent_fwd_bwd = prof_xent;
    t.adamw = prof_adamw;
    t.sum_squares = prof_sum_squares;
    t.scale = prof_scale;
    if (real->attention_ex_fwd) t.attention_ex_fwd = prof_attention_ex_fwd;
    if (real->attention_ex_bwd) t.attention_ex_bwd = prof_attention_ex_bwd;
    if (real->geglu_fwd) t.geglu_fwd = prof_geglu_fwd;
    if (real->geglu_bwd) t.geglu_bwd = prof_geglu_bwd;
    if (real->act_scale) t.act_scale = prof_act_scale;
    if (real->rope_ex) t.rope_ex = prof_rope_ex;
    if (real->side_wait) t.side_wait = prof_side_wait;
    *out = t;
}
#undef PROF

static int row_cmp(const void *a, const void *b) {
    double x = ((const ops_prof_row *)a)->ms, y = ((const ops_prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : strcmp(((const ops_prof_row *)a)->name, ((const ops_prof_row *)b)->name);
}

int ops_prof_report_make(ops_prof_report *r) {
    memset(r, 0, sizeof *r);
    if (prof_failed) return err_set(ERR_STAGE, "profile: a clock mark could not be reserved or set (out of host "
                                      "memory, or no CUDA event could be made); the step ran, untimed");
    if (!prof_n) return err_set(ERR_STAGE, "profile: no op was called through the profiled table");
    for (int i = 0; i < prof_nlabels; i++) memcpy(r->rows[i].name, prof_names[i], sizeof r->rows[i].name);
    r->nrows = prof_nlabels;
    r->calls = prof_n;
    for (int i = 0; i < prof_n; i++) {
        double ms = prof_clock.ms(prof_clock.ud, 2 * i, 2 * i + 1);
        r->rows[prof_label[i]].calls++;
        r->rows[prof_label[i]].ms += ms;
        r->busy_ms += ms;
        if (i == 0) continue;
        double gap = prof_clock.ms(prof_clock.ud, 2 * i - 1, 2 * i);
        if (gap <= 0) continue;
        r->idle_ms += gap;
        r->idle_gaps += gap > 0.002;
        for (int k = 0; k < 4; k++)
            if (gap > r->worst[k].ms) {
                memmove(&r->worst[k + 1], &r->worst[k], sizeof r->worst[0] * (size_t)(3 - k));
                r->worst[k].ms = gap;
                memcpy(r->worst[k].after, prof_names[prof_label[i - 1]], sizeof r->worst[k].after);
                memcpy(r->worst[k].before, prof_names[prof_label[i]], sizeof r->worst[k].before);
                break;
            }
    }
    r->span_ms = prof_clock.ms(prof_clock.ud, 0, 2 * prof_n - 1);
    qsort(r->rows, (size_t)r->nrows, sizeof r->rows[0], row_cmp);
    return 0;
}

void ops_prof_print(FILE *f, const ops_prof_report *r, const char *what) {
    double span = r->span_ms > 0 ? r->span_ms : 1e-9;
    fprintf(f, "\n| op (%s) | calls | ms | share of the span |\n|---|---|---|---|\n", what);
    for (int i = 0; i < r->nrows; i++)
        fprintf(f, "| %s | %d | %.3f | %.1f%% |\n", r->rows[i].name, r->rows[i].calls, r->rows[i].ms,
                100.0 * r->rows[i].ms / span);
    fprintf(f, "| idle between ops (calls: the gaps over 2 us) | %d | %.3f | %.1f%% |\n", r->idle_gaps, r->idle_ms,
            100.0 * r->idle_ms / span);
    fprintf(f, "\nspan %.3f ms (the first op's start to the last op's end): ops %.3f ms, idle between them %.3f ms "
               "(%.2f%%), %d calls\n", r->span_ms, r->busy_ms, r->idle_ms, 100.0 * r->idle_ms / span, r->calls);
    fprintf(f, "largest idle gaps:");
    for (int k = 0; k < 4 && r->worst[k].ms > 0; k++)
        fprintf(f, " %.3f ms before %s (after %s);", r->worst[k].ms, r->worst[k].before, r->worst[k].after);
    fprintf(f, "\n");
}

/* ---- the host's clock ---- */

static double *wall_t;

static int wall_reserve(void *ud, int n) {
    (void)ud;
    double *t = realloc(wall_t, sizeof(double) * (size_t)n);
    if (!t) return -1;
    wall_t = t;
    return 0;
}

static int wall_mark(void *ud, int i) {
    (void)ud;
    wall_t[i] = 1e3 * clock_now_s();
    return 0;
}

static double wall_ms(void *ud, int a, int b) {
    (void)ud;
    return wall_t[b] - wall_t[a];
}

ops_prof_clock ops_prof_wall_clock(void) {
    return (ops_prof_clock){.reserve = wall_reserve, .mark = wall_mark, .ms = wall_ms};
}
