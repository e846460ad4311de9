/* test_export_golden.c: our exports as Python users load them (issue 8's proofs), against our
 * engine. Files in tests/golden/export/ (see check_export.py's header):
 *   make_export.yaml / make_export.sh   the tiny Llama (2 layers, hidden 64, GQA 4/2 heads), its
 *       NF4 quantization, two adapters trained 30 steps (nonzero B), and the exports:
 *       base/ (the NF4 base dequantized to bf16: export with no adapter, formats [merged]),
 *       merged/ (base + adapter_list merged), adapter_list/ and adapter_all/ (PEFT).
 *   check_export.py (run once where torch 2.11, transformers 5.17 and peft 0.21 are) loads them
 *       with AutoModelForCausalLM.from_pretrained and PeftModel.from_pretrained exactly as they
 *       are, checks that nothing is missing or changed, and dumps the logits of 16 fixed ids in
 *       fp32 and in bf16 to export_golden.safetensors (check_export.log: its output).
 *
 * PEFT users load the "bf16 base"; ours is the NF4 base dequantized to bf16 (export with no
 * adapter, formats [merged]) because our engine computes on the NF4 weights, so the comparison
 * is like for like. Each case runs our engine two ways:
 *  - as it runs: base/ quantized at load (blocksize 64, no double quant: the same 4-bit codes,
 *    each block's scale rounded to bf16, so the weights match torch's within bf16 rounding) and
 *    the adapter through formats/peft.h + model/llama_peft.h;
 *  - on the exact bf16 weights (exact_logits): the engine has no dense linears, so a full-rank
 *    "LoRA" adds back what NF4 lost (and carries the adapter's A and scale * B).
 * Error = max |ours - torch| / max |torch| (the logit scale; max |logit| ~ 3). Measured when the
 * dump was made (x86-64, CPU engine in fp32):
 *   vs torch fp32:     as it runs        exact weights     (exact vs torch bf16)
 *   base/              7.6e-3            8.7e-7            9.1e-3
 *   + adapter_list/    8.1e-3            6.8e-7            1.3e-2
 *   + adapter_all/     5.4e-3            8.9e-7            1.6e-2
 *   merged/            -                 7.6e-7            1.0e-2
 * torch's own bf16 vs fp32 logits differ by 0.9e-2 - 1.6e-2. Tolerances: TOL_EXACT 1e-4 (same
 * weights, fp32 both sides); TOL_BF16 2.5e-2 wherever bf16 rounding enters (the NF4 scales, or
 * torch in bf16). The adapters change the logits by 1.6 and 1.9 of the scale, so a lost or
 * mis-scaled adapter tensor cannot pass. Also checked: torch on merged/ gives our adapter path's
 * logits (4.1e-3: bf16 rounding of the merged weights; tol 1e-2), and AutoTokenizer on merged/
 * encodes like our tokenizer. The bitsandbytes-layout NF4 checkpoint (include_nf4) is not
 * checked: transformers needs bitsandbytes to load it, and the GPU machine has none. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "export/merge.h"
#include "formats/peft.h"
#include "formats/safetensors.h"
#include "model/llama.h"
#include "model/llama_peft.h"
#include "tokenizer/tokenizer.h"
#include "test.h"

#define DIR "golden/export"
#define TOL_BF16 2.5e-2            /* bf16 rounding somewhere: of the weights (NF4 re-quantized) or in torch */
#define TOL_EXACT 1e-4             /* the same weights, fp32 both sides */
#define TOL_MERGED_VS_ADAPTER 1e-2 /* bf16 rounding of the merged weights */

static st_model *gold;
static int T, V;
static int32_t ids[64];

static double rel_err(const float *ours, const float *ref, int64_t n) {
    double num = 0, den = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        num = fmax(num, fabs((double)ours[i] - ref[i]));
        den = fmax(den, fabs((double)ref[i]));
    }
    return num / den;
}

/* a dump tensor as fp32 (malloc'd): logits.<case>.f32 (F32) or .bf16 (BF16), [T, V] */
static float *gold_logits(const char *name) {
    const st_tensor *t = st_find(gold, name);
    if (!t || t->ndim != 2 || t->shape[0] != T || t->shape[1] != V) {
        fprintf(stderr, "export_golden.safetensors lacks '%s' [%d, %d]\n", name, T, V);
        return NULL;
    }
    float *f = malloc(sizeof(float) * (size_t)T * (size_t)V);
    if (st_read_f32(t, 0, (int64_t)T * V, f)) {
        fprintf(stderr, "%s\n", err_msg());
        free(f);
        return NULL;
    }
    return f;
}

static llama_model *load(const char *dir) {
    llama_model *m = NULL;
    llama_load_opts o = {.blocksize = 64, .double_quant = false};
    if (llama_load(&m, dir, &o, ops_cpu())) {
        fprintf(stderr, "%s: %s\n", dir, err_msg());
        return NULL;
    }
    return m;
}

static float *logits_of(llama_model *m) {
    float *lg = malloc(sizeof(float) * (size_t)T * (size_t)V);
    llama_batch b = {.ids = ids, .labels = NULL, .seq_start = NULL, .T = T};
    if (llama_plan(m, T, LLAMA_CKPT_NONE) || llama_forward_logits(m, &b, lg)) {
        fprintf(stderr, "%s\n", err_msg());
        free(lg);
        return NULL;
    }
    return lg;
}

/* ours against logits.<name>.f32 (tolerance tol) and .bf16 (TOL_BF16) */
static void compare(const char *what, const float *ours, const char *name, double tol) {
    char key[64];
    snprintf(key, sizeof key, "logits.%s.f32", name);
    float *f = gold_logits(key);
    snprintf(key, sizeof key, "logits.%s.bf16", name);
    float *b = gold_logits(key);
    CHECK(f && b && ours);
    double ef = 1, eb = 1;
    if (f && b && ours) {
        ef = rel_err(ours, f, (int64_t)T * V);
        eb = rel_err(ours, b, (int64_t)T * V);
        fprintf(stderr, "  %-36s vs torch fp32 %.2e (tol %.1e), vs torch bf16 %.2e (tol %.1e)\n", what, ef, tol, eb,
                TOL_BF16);
        CHECK(ef <= tol);
        CHECK(eb <= TOL_BF16);
    }
    free(f);
    free(b);
}

static float *adapter_logits(const char *adir) {
    llama_model *m = load(DIR "/base");
    CHECK(m != NULL);
    if (!m) return NULL;
    peft_adapter a;
    float *lg = NULL;
    int rc = peft_adapter_load(&a, adir);
    if (!rc) {
        rc = llama_peft_attach(m, &a, adir);
        peft_adapter_free(&a);
    }
    if (rc) fprintf(stderr, "%s\n", err_msg());
    CHECK(rc == 0);
    if (!rc) lg = logits_of(m);
    llama_free(&m);
    return lg;
}

/* host fp32 copy of a loaded linear's NF4 weight (absmax plain: loaded without double quant) */
static float *nf4_weight(const llama_model *m, const llama_linear *lin) {
    int64_t n = lin->out * lin->in, nb = (n + lin->w.blocksize - 1) / lin->w.blocksize;
    float *f = malloc(sizeof(float) * (size_t)n), *absmax = malloc(sizeof(float) * (size_t)nb), qm[16];
    uint8_t *codes = malloc((size_t)(n + 1) / 2);
    m->ops->download(codes, lin->w.codes, (size_t)(n + 1) / 2);
    m->ops->download(absmax, lin->w.absmax, sizeof(float) * (size_t)nb);
    m->ops->download(qm, lin->w.quant_map, sizeof qm);
    ops_nf4 h = lin->w;
    h.codes = codes, h.absmax = absmax, h.quant_map = qm;
    ops_nf4_dequant_rows(&h, 0, h.rows, f);
    free(codes);
    free(absmax);
    return f;
}

/* Our engine on the exact bf16 weights of dir (+ the adapter at adir): the engine has no dense
 * linears, so dir is quantized at load and every linear gets one combined "LoRA" of rank
 * ra + R (R = max in_features, scale 1): A = [A_adapter; I; 0], B = [s * B_adapter, W - W_nf4, 0],
 * which adds back exactly what NF4 lost and applies the adapter as y = W x + s B A x. */
static float *exact_logits(const char *dir, const char *adir) {
    llama_model *m = load(dir);
    st_model *st = NULL;
    peft_adapter a; /* load initializes it (on failure too) */
    int rc = adir ? peft_adapter_load(&a, adir) : (peft_adapter_init(&a), 0);
    rc = rc || !m || st_open(&st, dir);
    if (rc) fprintf(stderr, "%s\n", err_msg());
    CHECK(rc == 0);
    float *lp = NULL, *lg = NULL;
    if (rc) goto out;
    int ra = adir ? a.r : 0, R = m->C > m->I ? m->C : m->I;
    llama_lora_config lc = {.r = ra + R, .alpha = (float)(ra + R), .dropout = 0.0f, .rslora = false,
                            .targets = LLAMA_TARGETS_ALL};
    CHECK(llama_lora_attach(m, &lc) == 0);
    lp = calloc((size_t)m->n_lora_params, sizeof(float));
    int used = 0;
    for (int k = 0; k < m->n_lora_tensors; k++) {
        const llama_lora_tensor *t = &m->lora_tensors[k];
        const llama_linear *lin = &m->layers[t->layer].lin[t->target];
        float *dst = lp + t->offset;
        char name[200];
        snprintf(name, sizeof name, "model.layers.%d.%s", t->layer, llama_target_path(t->target));
        const peft_lora *l = adir ? peft_adapter_find(&a, name) : NULL;
        if (!t->is_B) { /* A [ra + R, in] */
            if (l) memcpy(dst, l->A, sizeof(float) * (size_t)(ra * lin->in));
            for (int64_t i = 0; i < lin->in; i++) dst[(ra + i) * t->cols + i] = 1.0f;
            used += l != NULL;
            continue;
        }
        double s = l ? peft_adapter_scale(&a, l) : 0; /* B [out, ra + R] */
        snprintf(name + strlen(name), sizeof name - strlen(name), ".weight");
        const st_tensor *w = st_find(st, name);
        CHECK(w && st_numel(w) == lin->out * lin->in);
        if (!w) continue;
        float *exact = malloc(sizeof(float) * (size_t)(lin->out * lin->in)), *q = nf4_weight(m, lin);
        CHECK(st_read_f32(w, 0, lin->out * lin->in, exact) == 0);
        for (int64_t o = 0; o < lin->out; o++) {
            for (int i = 0; l && i < ra; i++) dst[o * t->cols + i] = (float)(s * l->B[o * ra + i]);
            for (int64_t i = 0; i < lin->in; i++)
                dst[o * t->cols + ra + i] = exact[o * lin->in + i] - q[o * lin->in + i];
        }
        free(exact);
        free(q);
    }
    CHECK_EQ_INT(used, adir ? (int)a.n_lora : 0); /* every adapter module applied */
    m->ops->upload(m->lora_params, lp, sizeof(float) * (size_t)m->n_lora_params);
    lg = logits_of(m);
out:
    free(lp);
    peft_adapter_free(&a);
    st_close(&st);
    llama_free(&m);
    return lg;
}

/* the dump exists, its Python checks passed, and the ids are in range */
TEST(export_dump) {
    CHECK(st_open(&gold, DIR "/export_golden.safetensors") == 0);
    if (!gold) return;
    const st_tensor *t = st_find(gold, "ids");
    CHECK(t && t->dtype == ST_I32 && t->ndim == 1 && t->shape[0] <= 64);
    if (!t) return;
    T = (int)t->shape[0];
    memcpy(ids, t->data, sizeof(int32_t) * (size_t)T);
    const st_tensor *l = st_find(gold, "logits.base.f32");
    CHECK(l && l->ndim == 2);
    V = l ? (int)l->shape[1] : 0;
    for (int i = 0; i < T; i++) CHECK(ids[i] >= 0 && ids[i] < V);
    const char *rep = st_metadata(gold, "report");
    json_t *r = rep ? json_loads(rep, 0, NULL) : NULL;
    json_t *p = json_object_get(r, "problems");
    CHECK(json_is_array(p) && json_array_size(p) == 0); /* check_export.py found nothing wrong */
    fprintf(stderr, "  torch %s, transformers %s, peft %s; %d ids, vocab %d\n", st_metadata(gold, "torch"),
            st_metadata(gold, "transformers"), st_metadata(gold, "peft"), T, V);
    json_decref(r);
}

/* base/ alone: AutoModelForCausalLM against our engine */
TEST(export_base) {
    llama_model *m = load(DIR "/base");
    CHECK(m != NULL);
    if (!m) return;
    float *lg = logits_of(m);
    compare("base/ (NF4 at load)", lg, "base", TOL_BF16);
    free(lg);
    llama_free(&m);
    lg = exact_logits(DIR "/base", NULL);
    compare("base/ (exact weights)", lg, "base", TOL_EXACT);
    free(lg);
}

/* PeftModel.from_pretrained(base, adapter) against our engine with the same adapter */
TEST(export_adapter_list) {
    float *lg = adapter_logits(DIR "/adapter_list"), *base = gold_logits("logits.base.f32");
    compare("base/ (NF4) + adapter_list/ (peft.h)", lg, "list", TOL_BF16);
    if (lg && base) CHECK(rel_err(lg, base, (int64_t)T * V) > 0.5); /* the adapter matters */
    /* transformers on merged/ gives the adapter path's logits (ours) */
    float *merged = gold_logits("logits.merged.f32");
    if (lg && merged) {
        double e = rel_err(lg, merged, (int64_t)T * V);
        fprintf(stderr, "  torch merged/ vs our adapter path %.2e (tol %.0e)\n", e, TOL_MERGED_VS_ADAPTER);
        CHECK(e <= TOL_MERGED_VS_ADAPTER);
    }
    free(merged);
    free(base);
    free(lg);
    lg = exact_logits(DIR "/base", DIR "/adapter_list");
    compare("base/ + adapter_list/ (exact weights)", lg, "list", TOL_EXACT);
    free(lg);
}

TEST(export_adapter_all) {
    float *lg = adapter_logits(DIR "/adapter_all"), *base = gold_logits("logits.base.f32");
    compare("base/ (NF4) + adapter_all/ (peft.h)", lg, "all", TOL_BF16);
    if (lg && base) CHECK(rel_err(lg, base, (int64_t)T * V) > 0.5);
    free(base);
    free(lg);
    lg = exact_logits(DIR "/base", DIR "/adapter_all");
    compare("base/ + adapter_all/ (exact weights)", lg, "all", TOL_EXACT);
    free(lg);
}

/* merged/ alone: AutoModelForCausalLM against our engine on the same bf16 weights */
TEST(export_merged) {
    float *lg = exact_logits(DIR "/merged", NULL);
    compare("merged/ (exact weights)", lg, "merged", TOL_EXACT);
    free(lg);
}

/* ---- models run as they are (llama_load_opts.dense: what `generate --model DIR` does) ---- */

static llama_model *load_dense(const char *dir) {
    llama_model *m = NULL;
    llama_load_opts o = LLAMA_LOAD_OPTS_DEFAULT;
    o.dense = true;
    if (llama_load(&m, dir, &o, ops_cpu())) {
        fprintf(stderr, "%s: %s\n", dir, err_msg());
        return NULL;
    }
    return m;
}

/* logits of ids[0..n) (seen as one sequence) from dir as it is, with the adapter at adir (or none) */
static float *dense_logits(const char *dir, const char *adir, const int32_t *tok, int n) {
    llama_model *m = load_dense(dir);
    CHECK(m != NULL);
    if (!m) return NULL;
    CHECK(m->layers[0].lin[0].w.dense != NULL && m->layers[0].lin[0].w.codes == NULL);
    int rc = 0;
    if (adir) {
        peft_adapter a;
        rc = peft_adapter_load(&a, adir);
        if (!rc) {
            rc = llama_peft_attach(m, &a, adir);
            peft_adapter_free(&a);
        }
        if (rc) fprintf(stderr, "%s\n", err_msg());
        CHECK(rc == 0);
    }
    float *lg = rc ? NULL : malloc(sizeof(float) * (size_t)n * (size_t)m->V);
    llama_batch b = {.ids = tok, .labels = NULL, .seq_start = NULL, .T = n};
    if (lg && (llama_plan(m, n, LLAMA_CKPT_NONE) || llama_forward_logits(m, &b, lg))) {
        fprintf(stderr, "%s\n", err_msg());
        free(lg);
        lg = NULL;
    }
    llama_free(&m);
    return lg;
}

/* The dense path is the exact weights: the same figures as the full-rank trick of exact_logits,
 * against torch fp32 on the same files. */
TEST(dense_exact) {
    float *lg = dense_logits(DIR "/merged", NULL, ids, T);
    compare("merged/ as it is (dense)", lg, "merged", TOL_EXACT);
    float *la = dense_logits(DIR "/base", DIR "/adapter_list", ids, T);
    compare("base/ as it is + adapter_list/", la, "list", TOL_EXACT);
    /* the merged export, run as it is, against its base + adapter: bf16 rounding of the merge */
    if (lg && la) {
        double e = rel_err(lg, la, (int64_t)T * V);
        fprintf(stderr, "  merged/ vs base/ + adapter_list/, both as they are: %.2e (tol %.1e)\n", e,
                TOL_MERGED_VS_ADAPTER);
        CHECK(e <= TOL_MERGED_VS_ADAPTER);
    }
    free(lg);
    free(la);
}

/* Per family (the tiny checkpoints of test_golden, our init_model's layouts, and the adapters
 * make_golden.py loads with peft): merge with export/merge.c, run the merged model as it is,
 * compare with the base + adapter as they are (bf16 rounding of the merged weights; the adapters
 * move the logits by far more, checked below) and with the NF4 quantization of the merged model
 * (what generate did before: that differs by NF4's error, which the dense path must not have). */
static void family_merged(const char *name) {
    char base[96], adir[96], tmpl[] = "/tmp/qlora-dense-XXXXXX";
    snprintf(base, sizeof base, "golden/%s-tiny", name);
    snprintf(adir, sizeof adir, "golden/%s_adapter", name);
    char *tmp = mkdtemp(tmpl);
    CHECK(tmp != NULL);
    if (!tmp) return;
    char *out = fs_join(tmp, "merged");
    merge_src *ms = NULL;
    int rc = merge_open(&ms, base, adir, 2);
    if (!rc) rc = merge_write_model(ms, out, ST_BF16, 0, NULL, NULL);
    if (rc) fprintf(stderr, "%s: %s\n", name, err_msg());
    CHECK(rc == 0);
    merge_close(&ms);
    int32_t tok[40];
    llama_model *probe = rc ? NULL : load_dense(base);
    int vocab = probe ? probe->V : 0;
    llama_free(&probe);
    for (int i = 0; i < 40; i++) tok[i] = vocab ? (int32_t)((i * 7919 + 13) % vocab) : 0;
    float *merged = rc ? NULL : dense_logits(out, NULL, tok, 40);
    float *with_adapter = rc ? NULL : dense_logits(base, adir, tok, 40);
    float *plain = rc ? NULL : dense_logits(base, NULL, tok, 40);
    float *nf4 = NULL;
    if (!rc) {
        llama_model *m = NULL;
        llama_load_opts o = LLAMA_LOAD_OPTS_DEFAULT;
        CHECK(llama_load(&m, out, &o, ops_cpu()) == 0);
        if (m) {
            nf4 = malloc(sizeof(float) * 40 * (size_t)m->V);
            llama_batch b = {.ids = tok, .T = 40};
            CHECK(llama_plan(m, 40, LLAMA_CKPT_NONE) == 0 && llama_forward_logits(m, &b, nf4) == 0);
        }
        llama_free(&m);
    }
    CHECK(merged && with_adapter && plain && nf4);
    if (merged && with_adapter && plain && nf4) {
        int64_t n = 40 * (int64_t)vocab;
        double e = rel_err(merged, with_adapter, n), moved = rel_err(plain, with_adapter, n),
               e_nf4 = rel_err(nf4, with_adapter, n);
        fprintf(stderr, "  %s: merged as it is vs base + adapter %.2e (tol %.1e); the adapter moves the logits by "
                        "%.2e; merged quantized to NF4 %.2e\n", name, e, TOL_MERGED_VS_ADAPTER, moved, e_nf4);
        CHECK(e <= TOL_MERGED_VS_ADAPTER);
        CHECK(moved > 10 * TOL_MERGED_VS_ADAPTER);
        CHECK(e_nf4 > e);
    }
    free(merged), free(with_adapter), free(plain), free(nf4);
    fs_rm_rf(tmp);
    free(out);
}

TEST(dense_merged_qwen3) { family_merged("qwen3"); }
TEST(dense_merged_mistral) { family_merged("mistral"); }
TEST(dense_merged_gemma3) { family_merged("gemma3"); }

/* AutoTokenizer.from_pretrained(merged/) encodes the dump's text as our tokenizer does */
TEST(export_tokenizer) {
    const st_tensor *t = st_find(gold, "tok_ids");
    const char *text = st_metadata(gold, "text");
    tokenizer *tk = NULL;
    CHECK(t && text && tokenizer_load(&tk, DIR "/merged") == 0);
    if (!t || !text || !tk) {
        tokenizer_free(&tk);
        return;
    }
    int32_t *ours = NULL;
    size_t n = 0;
    CHECK(tokenizer_encode(tk, text, strlen(text), true, &ours, &n) == 0);
    CHECK_EQ_INT(n, st_numel(t));
    if (ours && (int64_t)n == st_numel(t)) CHECK(!memcmp(ours, t->data, sizeof(int32_t) * n));
    free(ours);
    tokenizer_free(&tk);
}

int main(void) {
    RUN(export_dump);
    if (!gold || !T || !V) return test_summary();
    RUN(export_base);
    RUN(export_adapter_list);
    RUN(export_adapter_all);
    RUN(export_merged);
    RUN(export_tokenizer);
    RUN(dense_exact);
    RUN(dense_merged_qwen3);
    RUN(dense_merged_mistral);
    RUN(dense_merged_gemma3);
    st_close(&gold);
    return test_summary();
}
