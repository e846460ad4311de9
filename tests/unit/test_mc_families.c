/* test_mc_families.c: evaluate's multiple-choice scores on every supported family (issue 22, item 5).
 *
 * For a generated model of each family (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3: init_model's
 * tiny shape, hidden 64, 2 layers, seed 1, the byte tokenizer), the evaluate stage scores
 * tests/recipes/tasks' three tasks (MMLU 2-shot, ARC limit 4, HellaSwag) on the CPU through its KV
 * cache: contexts shared between requests computed once, answers decoded after them, one
 * question at a time (task_batch: 1) and the questions of a subject side by side after their shared
 * examples (task_batch: 16, fewer passes through the model). Here every
 * request is scored again from scratch, one whole-sequence forward each (llama_forward_logits,
 * log-softmax in double), through the same request builder (mc_run) and the same NF4 weights:
 * every choice's log-likelihood agrees within 1e-4 and the accuracies are equal.
 *
 * The whole-sequence forward of each family is what test_golden holds against transformers'
 * logits (1e-4 relative; gemma2's dumps are still to be made); so the stage's scores are
 * transformers' for every family through that chain. The llama's are also compared with transformers' own log-likelihoods directly
 * (tests/test_eval_tasks.sh, golden/mc/golden.json). */
#define _GNU_SOURCE
#include <math.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "eval/mc.h"
#include "model/init_model.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "test.h"
#include "train_fixture.h"

extern const stage_kind stage_kind_evaluate;

#define TASK_DIR "recipes/tasks/"

/* the reference scorer: each request alone, its whole sequence through one forward */
typedef struct full_scorer {
    llama_model *m;
    float *logits; /* [max_T, V] */
} full_scorer;

static int score_full(void *ud, const mc_seq *seqs, size_t n, double *loglik) {
    full_scorer *s = ud;
    int V = s->m->V;
    for (size_t i = 0; i < n; i++) {
        const mc_seq *q = &seqs[i];
        llama_batch b = {.ids = q->ids, .labels = q->ids, .seq_start = NULL, .T = (int)q->len};
        int rc = llama_forward_logits(s->m, &b, s->logits);
        if (rc) return rc;
        double ll = 0;
        for (size_t t = q->cont_start; t < q->len; t++) {
            const float *row = s->logits + (size_t)(t - 1) * (size_t)V;
            double mx = -INFINITY, z = 0;
            for (int v = 0; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
            ll += (double)row[q->ids[t]] - mx - log(z);
        }
        loglik[i] = ll;
    }
    return 0;
}

static int enc(void *ud, const char *text, size_t len, int32_t **ids, size_t *n) {
    return tokenizer_encode(ud, text, len, false, ids, n);
}

typedef struct task_def {
    const char *name, *json; /* the stage's task entry */
    mc_format f;
    const char *path, *shots;
    int k, limit;
} task_def;

static const task_def tasks[] = {
    {"mmlu", "{\"name\": \"mmlu\", \"format\": \"mmlu\", \"path\": \"" TASK_DIR "mmlu.jsonl\", \"num_fewshot\": 2, "
             "\"fewshot_path\": \"" TASK_DIR "mmlu_dev.jsonl\"}",
     MC_MMLU, TASK_DIR "mmlu.jsonl", TASK_DIR "mmlu_dev.jsonl", 2, 0},
    {"arc", "{\"name\": \"arc\", \"format\": \"arc\", \"path\": \"" TASK_DIR "arc.jsonl\", \"limit\": 4}", MC_ARC,
     TASK_DIR "arc.jsonl", NULL, 0, 4},
    {"hellaswag", "{\"name\": \"hellaswag\", \"format\": \"hellaswag\", \"path\": \"" TASK_DIR "hellaswag.jsonl\"}",
     MC_HELLASWAG, TASK_DIR "hellaswag.jsonl", NULL, 0, 0},
};
#define N_TASKS (sizeof tasks / sizeof *tasks)

/* the stage's results of task name on the base model (borrowed) */
static json_t *task_base(json_t *report, const char *name) {
    return json_object_get(json_object_get(json_object_get(report, "tasks"), name), "base");
}

static void check_family(const char *arch) {
    char root[] = "/tmp/test_mc_families_XXXXXX";
    CHECK(mkdtemp(root) != NULL);
    char *art = fs_join(root, "base"), *mdir = fs_join(art, "model"), *out = fs_join(root, "eval");
    init_model_opts o;
    init_model_opts_default(&o);
    init_model_shape shape = {.arch = arch, .preset = "tiny", .hidden = 64, .layers = 2};
    o.seed = 1;
    model_config cfg;
    int rc = init_model_resolve(&o, &shape);
    if (!rc) rc = init_model_write(&o, mdir, &cfg);
    if (rc) fprintf(stderr, "%s: %s\n", arch, err_msg());
    CHECK_EQ_INT(rc, 0);

    /* the stage, as a recipe runs it: questions one at a time (task_batch 1), then side by side */
    json_t *reports[2] = {NULL, NULL};
    for (int b = 0; b < 2; b++) {
        json_t *tl = json_array();
        for (size_t t = 0; t < N_TASKS; t++) json_array_append_new(tl, json_loads(tasks[t].json, 0, NULL));
        json_t *params = json_pack("{s:s, s:o, s:i, s:i, s:i}", "model", "base", "tasks", tl, "max_new_tokens", 2,
                                   "score_records", 0, "task_batch", b ? 16 : 1);
        stage_ctx ctx;
        fix_ctx(&ctx, &stage_kind_evaluate, "eval", params, out, NULL);
        fix_input(&ctx, "model", "init_model", art);
        fs_mkdir_p(out);
        if (!rc) rc = stage_kind_evaluate.check(params);
        if (!rc) rc = stage_kind_evaluate.run(&ctx);
        if (rc) fprintf(stderr, "%s: evaluate: %s\n", arch, err_msg());
        CHECK_EQ_INT(rc, 0);
        reports[b] = ctx.report;
        json_decref(ctx.metrics);
        json_decref(ctx.hook_files);
        json_decref(params);
    }
    /* side by side: fewer passes through the model for MMLU (its questions share their examples) */
    json_int_t pass1 = json_integer_value(json_object_get(task_base(reports[0], "mmlu"), "forwards"));
    json_int_t pass16 = json_integer_value(json_object_get(task_base(reports[1], "mmlu"), "forwards"));
    fprintf(stderr, "  %s: MMLU in %lld passes one question at a time, %lld side by side\n", arch, (long long)pass1, (long long)pass16);
    CHECK(pass1 >= 12 && pass16 > 0 && pass16 < pass1);

    /* the reference: the same weights (NF4 at load, as the stage), each request from scratch */
    tokenizer *tok = NULL;
    llama_model *m = NULL;
    int max_T = cfg.max_position_embeddings > 0 && cfg.max_position_embeddings < 2048 ? (int)cfg.max_position_embeddings : 2048;
    if (!rc) rc = tokenizer_load(&tok, mdir);
    if (!rc) rc = llama_load(&m, mdir, NULL, ops_cpu());
    if (!rc) rc = llama_plan(m, max_T, LLAMA_CKPT_NONE);
    CHECK_EQ_INT(rc, 0);
    full_scorer fs = {.m = m, .logits = m ? malloc(sizeof(float) * (size_t)max_T * (size_t)m->V) : NULL};
    double worst = 0;
    size_t compared = 0;
    for (size_t t = 0; !rc && t < N_TASKS; t++) {
        const task_def *d = &tasks[t];
        char *p[1] = {(char *)d->path}, *sp[1] = {(char *)d->shots};
        mc_doc *docs = NULL, *shots = NULL;
        size_t n = 0, ns = 0;
        rc = mc_load_docs(d->f, p, 1, NULL, NULL, d->limit, 1, &docs, &n);
        if (!rc && d->shots) rc = mc_load_docs(d->f, sp, 1, NULL, NULL, 0, 0, &shots, &ns);
        mc_task task = {.name = d->name, .format = d->f, .docs = docs, .n_docs = n, .shots = shots, .n_shots = ns,
                        .num_fewshot = d->k, .max_len = (size_t)max_T, .bos = -1};
        mc_result r = {0};
        if (!rc) rc = mc_run(&task, enc, tok, score_full, &fs, 64, NULL, NULL, &r);
        CHECK_EQ_INT(rc, 0);
        for (int rb = 0; rb < 2; rb++) {
            json_t *base = task_base(reports[rb], d->name);
            json_t *sd = json_object_get(base, "docs");
            CHECK(!rc && json_array_size(sd) == json_array_size(r.per_doc) && json_array_size(sd) == n && n > 0);
            for (size_t i = 0; !rc && i < json_array_size(sd) && i < json_array_size(r.per_doc); i++) {
                json_t *a = json_object_get(json_array_get(sd, i), "loglik"), *b = json_object_get(json_array_get(r.per_doc, i), "loglik");
                CHECK(json_array_size(a) == json_array_size(b) && json_array_size(a) > 0);
                for (size_t j = 0; j < json_array_size(a) && j < json_array_size(b); j++) {
                    double e = fabs(json_real_value(json_array_get(a, j)) - json_real_value(json_array_get(b, j)));
                    worst = e > worst || isnan(e) ? e : worst;
                    compared++;
                }
            }
            if (!rc) {
                CHECK(json_real_value(json_object_get(base, "acc")) == r.acc);
                CHECK(json_real_value(json_object_get(base, "acc_norm")) == r.acc_norm);
            }
        }
        mc_result_free(&r);
        mc_docs_free(&docs, n);
        mc_docs_free(&shots, ns);
    }
    fprintf(stderr, "  %s: %zu log-likelihoods, KV-cache scoring against whole forwards: worst %.2e\n", arch, compared,
            worst);
    CHECK(compared >= 2 * (12 * 4 + 4 * 4 + 4 * 4) && worst <= 1e-4);
    free(fs.logits);
    llama_free(&m);
    tokenizer_free(&tok);
    json_decref(reports[0]);
    json_decref(reports[1]);
    fs_rm_rf(root);
    free(art);
    free(mdir);
    free(out);
}

TEST(mc_llama) { check_family("llama"); }
TEST(mc_mistral) { check_family("mistral"); }
TEST(mc_qwen2) { check_family("qwen2"); }
TEST(mc_qwen3) { check_family("qwen3"); }
TEST(mc_gemma2) { check_family("gemma2"); }
TEST(mc_gemma3) { check_family("gemma3"); }
TEST(mc_phi3) { check_family("phi3"); }

int main(void) {
    RUN(mc_llama);
    RUN(mc_mistral);
    RUN(mc_qwen2);
    RUN(mc_qwen3);
    RUN(mc_gemma2);
    RUN(mc_gemma3);
    RUN(mc_phi3);
    return test_summary();
}
