/* golden_check.h: the golden comparison shared by test_golden (ops_cpu, tight tolerances) and
 * test_golden_gpu (ops_cuda, bf16 tolerances); the cases and files are described in
 * test_golden.c. Include once, from a test file (static functions). */
#ifndef TESTS_GOLDEN_CHECK_H
#define TESTS_GOLDEN_CHECK_H

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/half.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "model/config.h"
#include "model/llama.h"
#include "test.h"

#define GT 24     /* tokens in the row */
#define GSPLIT 13 /* the packed row: [0, 13) and [13, 24) */
#define ADAM_STEPS 10
#define ADAM_LR 1e-2f
#define ADAM_WD 0.01f

typedef struct gmodel {
    const char *name, *dir; /* checkpoint dir, relative to tests/ */
    int r;
    float alpha;
    bool rslora;
    uint32_t targets;
} gmodel;

static const gmodel models[] = {
    {"llama", "fixtures/bnb/tiny-llama-bf16", 4, 8.0f, false, LLAMA_TARGETS_ALL},
    {"qwen2", "golden/qwen2-tiny", 8, 16.0f, true,
     (1u << LLAMA_Q) | (1u << LLAMA_V) | (1u << LLAMA_O) | (1u << LLAMA_UP) | (1u << LLAMA_DOWN)},
    /* qwen3: q/k per-head norms, head_dim 24 with hidden 64 and 4 heads, untied */
    {"qwen3", "golden/qwen3-tiny", 4, 8.0f, false, LLAMA_TARGETS_ALL},
    /* mistral: a sliding window of 6 (both packed sequences and the whole row are longer), linear
     * rope scaling (factor 2) */
    {"mistral", "golden/mistral-tiny", 4, 8.0f, false,
     (1u << LLAMA_Q) | (1u << LLAMA_K) | (1u << LLAMA_V) | (1u << LLAMA_O) | (1u << LLAMA_DOWN)},
    {"gemma3", "golden/gemma3-tiny", 4, 8.0f, false, LLAMA_TARGETS_ALL},
    /* phi3: fused qkv_proj and gate_up_proj, rotary on half of each head, longrope (the whole row is
     * beyond its original context of 16: long factors; the packed sequences are not: short), a
     * window of 10; LoRA on all four of its linears */
    {"phi3", "golden/phi3-tiny", 4, 8.0f, false, LLAMA_TARGETS_ALL},
    /* gemma2: gemma3's layer without q/k norms, one rope base, layer 0 sliding (window 6), layer 1
     * global, attention scores capped at 1 and final logits at 3 (small caps, so that they bite) */
    {"gemma2", "golden/gemma2-tiny", 4, 8.0f, false, LLAMA_TARGETS_ALL},
};

/* the LoRA target names of mask for c's family, as peft names the modules (a JSON array) */
static inline json_t *golden_target_names(const model_config *c, uint32_t mask) {
    json_t *tg = json_array();
    for (int k = 0; k < LLAMA_NTARGETS; k++) {
        const char *mod = llama_target_module(c, (llama_target)k);
        if ((mask & (1u << k)) && mod) json_array_append_new(tg, json_string(strrchr(mod, '.') + 1));
    }
    return tg;
}

static int model_config_of(const gmodel *g, model_config *c) {
    int rc = config_load(c, g->dir);
    if (rc) return rc;
    if (!strcmp(g->name, "llama")) { /* exercise llama3 scaling: its middle band covers some of hd=32 */
        c->rope_type = ROPE_LLAMA3;
        c->rope_factor = 8.0;
        c->rope_low_freq_factor = 1.0;
        c->rope_high_freq_factor = 4.0;
        c->rope_original_max_position = 64;
    }
    return 0;
}

/* the batch: ids from a fixed stream; a masked prompt at the start of each sequence */
static void golden_batch(int V, int32_t *ids, int32_t *labels, int32_t *seq_start, bool packed) {
    for (int t = 0; t < GT; t++) {
        ids[t] = (int32_t)(rng_u64(2024, 1, (uint64_t)t) % (uint64_t)V);
        labels[t] = ids[t];
        seq_start[t] = packed && t >= GSPLIT ? GSPLIT : 0;
    }
    for (int t = 0; t < 4; t++) labels[t] = -100;
    for (int t = GSPLIT; t < GSPLIT + 3; t++) labels[t] = -100;
}

/* fp32 host copy of a whole tensor of the loaded model, dequantizing NF4 linears */
static float *model_tensor_f32(llama_model *m, const config_tensor *t) {
    int64_t numel = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    float *f = malloc(sizeof(float) * (size_t)numel);
    const ops_table *o = m->ops;
    const uint16_t *dense = NULL;
    char prefix[96];
    int l = t->layer;
    if (t->role == TROLE_LINEAR || t->role == TROLE_BIAS) {
        for (int k = 0; k < LLAMA_NTARGETS; k++) {
            const char *mod = llama_target_module(&m->cfg, (llama_target)k);
            if (!mod) continue;
            snprintf(prefix, sizeof prefix, "model.layers.%d.%s.", l, mod);
            if (strncmp(t->name, prefix, strlen(prefix))) continue;
            if (t->role == TROLE_BIAS) {
                dense = m->layers[l].lin[k].bias;
                break;
            }
            /* a fused module (phi3): its blocks one after the other */
            float *at = f;
            for (int u = k; u < LLAMA_NTARGETS && (int)llama_target_group(&m->cfg, (llama_target)u) == k; u++) {
            const llama_linear *lin = &m->layers[l].lin[u];
            numel = lin->out * lin->in;
            /* download the packed codes and the scales (either form), dequantize on the host */
            int64_t nb = (numel + lin->w.blocksize - 1) / lin->w.blocksize, nn = (nb + 255) / 256;
            uint8_t *codes = malloc((size_t)(numel + 1) / 2), *aq = NULL;
            float *absmax = NULL, *nested = NULL, *nmap = NULL, qm[16];
            o->download(codes, lin->w.codes, (size_t)(numel + 1) / 2);
            o->download(qm, lin->w.quant_map, sizeof qm);
            ops_nf4 h = lin->w;
            if (lin->w.absmax_q) { /* double quant, as bitsandbytes keeps it */
                aq = malloc((size_t)nb);
                nested = malloc(sizeof(float) * (size_t)nn);
                nmap = malloc(sizeof(float) * 256);
                o->download(aq, lin->w.absmax_q, (size_t)nb);
                o->download(nested, lin->w.nested_absmax, sizeof(float) * (size_t)nn);
                o->download(nmap, lin->w.nested_map, sizeof(float) * 256);
                h.absmax_q = aq, h.nested_absmax = nested, h.nested_map = nmap;
            } else {
                absmax = malloc(sizeof(float) * (size_t)nb);
                o->download(absmax, lin->w.absmax, sizeof(float) * (size_t)nb);
                h.absmax = absmax;
            }
            h.codes = codes, h.quant_map = qm;
            ops_nf4_dequant_rows(&h, 0, h.rows, at);
            at += numel;
            free(codes);
            free(absmax);
            free(aq);
            free(nested);
            free(nmap);
            }
            return f;
        }
    } else if (t->role == TROLE_EMBED) {
        dense = m->embed;
    } else if (t->role == TROLE_LM_HEAD) {
        dense = m->lm_head;
    } else if (!strcmp(t->name, "model.norm.weight")) {
        dense = m->final_norm;
    } else if (strstr(t->name, "self_attn.q_norm")) {
        dense = m->layers[l].q_norm;
    } else if (strstr(t->name, "self_attn.k_norm")) {
        dense = m->layers[l].k_norm;
    } else if (strstr(t->name, "input_layernorm")) {
        dense = m->layers[l].attn_norm;
    } else if (config_gemma(&m->cfg) && strstr(t->name, "post_attention_layernorm")) {
        dense = m->layers[l].post_attn_norm;
    } else if (strstr(t->name, "post_feedforward_layernorm")) {
        dense = m->layers[l].post_mlp_norm;
    } else {
        dense = m->layers[l].mlp_norm;
    }
    uint16_t *h = malloc(2 * (size_t)numel);
    o->download(h, dense, 2 * (size_t)numel);
    /* norms as the checkpoint has them (gemma's 1 + w is added in the op: norm_add) */
    for (int64_t i = 0; i < numel; i++) f[i] = bf16_to_f32(h[i]);
    free(h);
    return f;
}

/* weights: g's bf16 checkpoint quantized at load (making inputs), or the inputs file itself */
static llama_model *golden_model(const gmodel *g, model_config *c, const char *weights, const ops_table *ops) {
    llama_model *m = NULL;
    /* Re-quantizing dequantized NF4 weights without double quant is the identity (each block's
     * absmax is its largest |w|, a code of +-1, and every w/absmax is a code value), so loading
     * the inputs file gives bit for bit the weights torch used, whatever our quantizer does now. */
    llama_load_opts opts = {.blocksize = 64, .double_quant = weights == NULL};
    if (model_config_of(g, c) || llama_init(&m, c, weights ? weights : g->dir, &opts, ops)) {
        fprintf(stderr, "%s: %s\n", g->name, err_msg());
        return NULL;
    }
    llama_lora_config lc = {.r = g->r, .alpha = g->alpha, .dropout = 0.0f, .rslora = g->rslora, .targets = g->targets};
    if (llama_lora_attach(m, &lc)) {
        fprintf(stderr, "%s: %s\n", g->name, err_msg());
        llama_free(&m);
    }
    return m;
}

/* ---- the comparison ---- */

static double rel_err(const float *ours, const float *ref, int64_t n) {
    double num = 0, den = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)ours[i] - ref[i]));
        den = fmax(den, fabs((double)ref[i]));
    }
    return num / den;
}

static const float *golden_f32(st_model *st, const char *name, int64_t numel) {
    const st_tensor *t = st_find(st, name);
    if (!t || t->dtype != ST_F32 || st_numel(t) != numel) {
        fprintf(stderr, "golden file lacks '%s' (F32, %lld elements)\n", name, (long long)numel);
        return NULL;
    }
    return (const float *)t->data;
}

/* tolerances (relative errors, see test_golden.c); the CPU reference uses the tightest */
typedef struct golden_tol {
    double inv_freq, logits, loss, grads, curve;
} golden_tol;
#define GOLDEN_TOL_CPU ((golden_tol){1e-6, 1e-4, 1e-4, 1e-3, 1e-3})

/* gemma2's dumps wait for a sitting where torch is (tests/golden/README.md): until they are
 * committed its cases say so and are skipped; once they exist they count like every other */
static bool golden_pending(const gmodel *g, bool packed) {
    char path[128];
    snprintf(path, sizeof path, "golden/%s%s_golden.safetensors", g->name, packed ? "_packed" : "");
    if (strcmp(g->name, "gemma2") || fs_exists(path)) return false;
    fprintf(stderr, "  SKIP %s: %s is not generated yet (make_golden.py %s where torch is: tests/golden/README.md)\n",
            g->name, path, g->name);
    return true;
}

/* ---- check_case's steps: weights, LoRA, forward, loss, gradients, AdamW ---- */

/* every weight the model holds equals, bit for bit, the one torch used (the inputs file in) */
static void golden_check_weights(llama_model *m, model_config *c, st_model *in) {
    config_tensor *ts;
    size_t n;
    config_tensors(c, &ts, &n);
    for (size_t i = 0; i < n; i++) {
        int64_t numel = ts[i].ndim == 2 ? ts[i].shape[0] * ts[i].shape[1] : ts[i].shape[0];
        float *f = model_tensor_f32(m, &ts[i]);
        const float *ref = golden_f32(in, ts[i].name, numel);
        bool same = ref && !memcmp(f, ref, sizeof(float) * (size_t)numel);
        if (!same) fprintf(stderr, "  %s: differs from the inputs file (rel err %.2e)\n", ts[i].name, ref ? rel_err(f, ref, numel) : 1.0);
        CHECK(same);
        free(f);
    }
    free(ts);
}

/* the inputs file holds every LoRA A/B; they are uploaded, and the host copy returned (the caller
 * frees it) */
static float *golden_load_lora(llama_model *m, st_model *in) {
    float *lp = malloc(sizeof(float) * (size_t)m->n_lora_params);
    for (int k = 0; k < m->n_lora_tensors; k++) {
        const llama_lora_tensor *t = &m->lora_tensors[k];
        const float *src = golden_f32(in, t->name, t->rows * t->cols);
        CHECK(src != NULL);
        if (src) memcpy(lp + t->offset, src, sizeof(float) * (size_t)(t->rows * t->cols));
    }
    m->ops->upload(m->lora_params, lp, sizeof(float) * (size_t)m->n_lora_params);
    return lp;
}

/* the rope frequencies and a forward's logits match torch's within tol */
static void golden_check_forward(const gmodel *g, bool packed, llama_model *m, llama_batch b, st_model *gold,
                                 golden_tol tol) {
    float inv[64];
    m->ops->download(inv, m->inv_freq, sizeof(float) * (size_t)(m->rot / 2));
    const float *ginv = golden_f32(gold, "inv_freq", m->rot / 2);
    CHECK(ginv && rel_err(inv, ginv, m->rot / 2) <= tol.inv_freq);

    float *logits = malloc(sizeof(float) * (size_t)GT * (size_t)m->V);
    CHECK(llama_forward_logits(m, &b, logits) == 0);
    const float *glog = golden_f32(gold, "logits", (int64_t)GT * m->V);
    double e = glog ? rel_err(logits, glog, (int64_t)GT * m->V) : 1;
    fprintf(stderr, "  %s%s: logits rel err %.2e\n", g->name, packed ? " packed" : "", e);
    CHECK(e <= tol.logits);
    free(logits);
}

/* a forward-backward counts the batch's targets and its mean loss matches torch's within tol;
 * returns the target count, which scales every later step */
static int64_t golden_check_loss(const gmodel *g, bool packed, llama_model *m, llama_batch b, st_model *gold,
                                 golden_tol tol) {
    int64_t nt = llama_count_targets(&b), nt2;
    double loss_sum;
    llama_lora_zero_grads(m);
    CHECK(llama_forward_backward(m, &b, 1.0f / (float)nt, 0, &loss_sum, &nt2) == 0);
    CHECK_EQ_INT(nt, nt2);
    float loss = (float)(loss_sum / (double)nt);
    const float *gloss = golden_f32(gold, "loss", 1);
    double e = gloss ? fabs(loss - gloss[0]) / fabs(gloss[0]) : 1;
    fprintf(stderr, "  %s%s: loss %.6f (torch %.6f) rel err %.2e\n", g->name, packed ? " packed" : "", loss,
            gloss ? gloss[0] : 0.0f, e);
    CHECK(e <= tol.loss);
    return nt;
}

/* that backward's LoRA gradients, tensor by tensor, match torch's within tol */
static void golden_check_grads(const gmodel *g, bool packed, llama_model *m, st_model *gold, golden_tol tol) {
    float *grads = malloc(sizeof(float) * (size_t)m->n_lora_params);
    m->ops->download(grads, m->lora_grads, sizeof(float) * (size_t)m->n_lora_params);
    double worst = 0;
    for (int k = 0; k < m->n_lora_tensors; k++) {
        const llama_lora_tensor *t = &m->lora_tensors[k];
        char name[200];
        snprintf(name, sizeof name, "grad.%s", t->name);
        const float *gg = golden_f32(gold, name, t->rows * t->cols);
        double ek = gg ? rel_err(grads + t->offset, gg, t->rows * t->cols) : 1;
        if (ek > tol.grads) fprintf(stderr, "  %s: rel err %.2e\n", name, ek);
        worst = fmax(worst, ek);
    }
    fprintf(stderr, "  %s%s: worst LoRA gradient rel err %.2e over %d tensors\n", g->name, packed ? " packed" : "",
            worst, m->n_lora_tensors);
    CHECK(worst <= tol.grads);
    free(grads);
}

/* 10 AdamW steps on the same batch (nt targets): the loss before each step matches torch's within
 * tol, and the curve falls */
static void golden_check_adam(const gmodel *g, bool packed, llama_model *m, llama_batch b, st_model *gold, int64_t nt,
                              golden_tol tol) {
    int64_t nt2;
    double loss_sum;
    const float *gcurve = golden_f32(gold, "adam_losses", ADAM_STEPS);
    float curve[ADAM_STEPS];
    for (int s = 0; s < ADAM_STEPS; s++) {
        llama_lora_zero_grads(m);
        llama_forward_backward(m, &b, 1.0f / (float)nt, 0, &loss_sum, &nt2);
        curve[s] = (float)(loss_sum / (double)nt);
        m->ops->adamw(m->lora_params, m->lora_grads, m->lora_m, m->lora_v, m->n_lora_params, ADAM_LR, 0.9f, 0.999f,
                      1e-8f, ADAM_WD, s + 1);
    }
    /* each step against that step's torch loss: the curve falls 10.5 -> 0.05 on qwen2, so an error
     * measured against the first (largest) value would let the last steps be off many times over */
    double e = gcurve ? 0 : 1;
    for (int s = 0; gcurve && s < ADAM_STEPS; s++) e = fmax(e, fabs((double)curve[s] - gcurve[s]) / fabs((double)gcurve[s]));
    fprintf(stderr, "  %s%s: adam curve %.5f -> %.5f (torch %.5f -> %.5f) worst step rel err %.2e; per step:", g->name,
            packed ? " packed" : "", curve[0], curve[ADAM_STEPS - 1], gcurve ? gcurve[0] : 0.0f,
            gcurve ? gcurve[ADAM_STEPS - 1] : 0.0f, e);
    for (int s = 0; gcurve && s < ADAM_STEPS; s++) fprintf(stderr, " %.1e", fabs((double)curve[s] - gcurve[s]) / fabs((double)gcurve[s]));
    fprintf(stderr, "\n");
    CHECK(e <= tol.curve);
    CHECK(curve[ADAM_STEPS - 1] < curve[0]);
}

/* one golden case: g's inputs file and (packed or not) torch's dump, compared step by step */
static void check_case(const gmodel *g, bool packed, const ops_table *ops, golden_tol tol) {
    if (golden_pending(g, packed)) return;
    char path[128];
    snprintf(path, sizeof path, "golden/%s_inputs.safetensors", g->name);
    st_model *in = NULL, *gold = NULL;
    if (st_open(&in, path)) {
        fprintf(stderr, "%s\n", err_msg());
        CHECK(0);
        return;
    }
    snprintf(path, sizeof path, "golden/%s%s_golden.safetensors", g->name, packed ? "_packed" : "");
    if (st_open(&gold, path)) {
        fprintf(stderr, "%s\n", err_msg());
        st_close(&in);
        CHECK(0);
        return;
    }
    model_config c;
    snprintf(path, sizeof path, "golden/%s_inputs.safetensors", g->name);
    llama_model *m = golden_model(g, &c, path, ops);
    CHECK(m != NULL);
    if (!m) goto out;
    golden_check_weights(m, &c, in);
    float *lp = golden_load_lora(m, in);
    /* the packed case also exercises checkpointing: recomputed layers must give the same gradients */
    CHECK(llama_plan(m, GT, packed ? LLAMA_CKPT_EVERY : LLAMA_CKPT_NONE) == 0);
    int32_t ids[GT], labels[GT], ss[GT];
    golden_batch(m->V, ids, labels, ss, packed);
    llama_batch b = {.ids = ids, .labels = labels, .seq_start = ss, .T = GT};
    golden_check_forward(g, packed, m, b, gold, tol);
    int64_t nt = golden_check_loss(g, packed, m, b, gold, tol);
    golden_check_grads(g, packed, m, gold, tol);
    golden_check_adam(g, packed, m, b, gold, nt, tol);
    free(lp);
    config_free(&c);
    llama_free(&m);
out:
    st_close(&in);
    st_close(&gold);
}

/* llama_dense_weights changes no bit (the evaluate and train stages' dense_weights): g's checkpoint
 * quantized at load (double quant), LoRA B made non-zero; the logits of a forward, the loss and LoRA
 * gradients of a backward, and a KV-cache decode's losses and last logits, with the linears kept
 * dequantized (all of them, then the first half), equal the NF4 path's bit for bit, and again after
 * they are dropped. */
static void check_dense_bits(const gmodel *g, const ops_table *ops) {
    model_config c;
    llama_model *m = golden_model(g, &c, NULL, ops);
    CHECK(m != NULL);
    if (!m) return;
    llama_lora_init_peft(m, 7);
    float *lp = malloc(sizeof(float) * (size_t)m->n_lora_params);
    m->ops->download(lp, m->lora_params, sizeof(float) * (size_t)m->n_lora_params);
    for (int k = 0; k < m->n_lora_tensors; k++) {
        const llama_lora_tensor *t = &m->lora_tensors[k];
        if (!t->is_B) continue;
        for (int64_t i = 0; i < t->rows * t->cols; i++) lp[t->offset + i] = 0.02f * (float)rng_normal(11, (uint64_t)k, (uint64_t)i);
    }
    m->ops->upload(m->lora_params, lp, sizeof(float) * (size_t)m->n_lora_params);
    CHECK(llama_plan(m, GT, LLAMA_CKPT_NONE) == 0);
    int32_t ids[GT], labels[GT], ss[GT];
    golden_batch(m->V, ids, labels, ss, false);
    llama_batch b = {.ids = ids, .labels = labels, .seq_start = ss, .T = GT};
    size_t nlog = (size_t)GT * (size_t)m->V, np = (size_t)m->n_lora_params;
    enum { NDEC = 9 };
    /* per pass: logits, loss, gradients, the decode's losses and last logits */
    size_t per = nlog + 1 + np + NDEC + (size_t)m->V;
    enum { PASSES = 4 };
    float *out[PASSES];
    for (int pass = 0; pass < PASSES; pass++) {
        float *o = out[pass] = calloc(per, sizeof(float));
        if (pass == 1) {
            CHECK(llama_dense_weights(m, true) == 0);
            CHECK(m->dense_mem != NULL && m->dense_bytes == llama_dense_bytes(m) && m->dense_bytes > 0);
            for (int l = 0; l < m->L; l++)
                for (int t = 0; t < LLAMA_NTARGETS; t++) CHECK(m->layers[l].lin[t].w.dense != NULL);
        } else if (pass == 2) { /* about half of them: the first layers' kept, the others dequantized */
            CHECK(llama_dense_weights_within(m, llama_dense_bytes(m) / 2) == 0);
            CHECK(m->dense_mem != NULL && m->dense_bytes > 0 && m->dense_bytes <= llama_dense_bytes(m) / 2);
            CHECK(m->layers[0].lin[0].w.dense != NULL && m->layers[m->L - 1].lin[LLAMA_NTARGETS - 1].w.dense == NULL);
        } else if (pass == 3) {
            CHECK(llama_dense_weights(m, false) == 0);
            CHECK(m->dense_mem == NULL && m->layers[0].lin[0].w.dense == NULL);
        }
        CHECK(llama_forward_logits(m, &b, o) == 0);
        double loss;
        int64_t nt;
        llama_lora_zero_grads(m);
        CHECK(llama_forward_backward(m, &b, 0.5f, 0, &loss, &nt) == 0);
        o[nlog] = (float)loss;
        m->ops->download(o + nlog + 1, m->lora_grads, sizeof(float) * np);
        int32_t tg[NDEC];
        for (int t = 0; t < NDEC; t++) tg[t] = ids[t + 1];
        CHECK(llama_generate_begin(m, 16) == 0);
        CHECK(llama_decode_losses(m, ids, 3, tg, o + nlog + 1 + np, NULL) == 0); /* a context, then the rest on the cache */
        CHECK(llama_decode_losses(m, ids + 3, NDEC - 3, tg + 3, o + nlog + 1 + np + 3, o + nlog + 1 + np + NDEC) == 0);
    }
    for (int pass = 1; pass < PASSES; pass++) {
        size_t first = per;
        for (size_t i = 0; i < per && first == per; i++)
            if (memcmp(&out[0][i], &out[pass][i], sizeof(float))) first = i;
        if (first < per)
            fprintf(stderr, "  %s: dense pass %d differs from the NF4 path at value %zu of %zu (%g vs %g)\n", g->name,
                    pass, first, per, out[0][first], out[pass][first]);
        CHECK(first == per);
    }
    fprintf(stderr, "  %s on %s: %zu values equal bit for bit with the linears kept dequantized, all or half\n", g->name,
            ops->name, per);
    for (int pass = 0; pass < PASSES; pass++) free(out[pass]);
    free(lp);
    config_free(&c);
    llama_free(&m);
}

#endif
