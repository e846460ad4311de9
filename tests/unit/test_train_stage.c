/* test_train_stage.c: attach_lora + train stages on a generated tiny llama and a synthetic
 * task, run directly (no runner): the loss falls, the artifact is complete, a run killed
 * with SIGKILL or stopped by SIGINT resumes to the same adapter bytes, a huge learning rate
 * is reported as divergence (and leaves no adapter), a bad lr hook is a clear error,
 * optimizer_offload is accepted on the CPU, where it is a no-op (test_offload_gpu tests what it does),
 * and dense_weights: on changes no bit. */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/log.h"
#include "formats/peft.h"
#include "model/device.h"
#include "model/llama_peft.h"
#include "train/llama_trainer.h"
#include "train/trainer.h"
#include "test.h"
#include "train_fixture.h"

extern const stage_kind stage_kind_attach_lora, stage_kind_train;

static char root[256];
static char *model_art, *data_art, *lora_art;

static json_t *train_params(double lr, int max_steps) {
    return json_pack("{s:s, s:s, s:s, s:f, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f}", "model", "m", "adapter", "lora",
                     "data", "d", "learning_rate", lr, "micro_batch_size", 8, "max_steps", max_steps, "warmup_steps",
                     3, "eval_steps", 20, "save_steps", 5, "logging_steps", 10, "lr_scheduler", "cosine",
                     "max_grad_norm", 1.0);
}

static json_t *last_report; /* the report of the last run_train */

static int run_train(json_t *params, const char *out, const char *work, volatile int *interrupted, json_t **metrics) {
    stage_ctx ctx;
    fix_ctx(&ctx, &stage_kind_train, "train", params, out, work);
    ctx.report = json_object();
    fix_input(&ctx, "model", "init_model", model_art);
    fix_input(&ctx, "adapter", "attach_lora", lora_art);
    fix_input(&ctx, "data", "dataset", data_art);
    ctx.interrupted = interrupted;
    int rc = stage_kind_train.check(params);
    if (!rc) rc = stage_kind_train.run(&ctx);
    if (metrics) *metrics = ctx.metrics;
    else json_decref(ctx.metrics);
    json_decref(ctx.hook_files);
    json_decref(last_report);
    last_report = ctx.report;
    json_decref(params);
    return rc;
}

static char *read_adapter(const char *out, size_t *n) {
    char *p = fs_join(out, "adapter/" PEFT_WEIGHTS_FILE), *buf = NULL;
    if (fs_read_all(p, &buf, n)) buf = NULL;
    free(p);
    return buf;
}

static char *ref_out;

TEST(test_train_loss_falls) {
    ref_out = fs_join(root, "train-ref");
    char *work = fs_join(root, "work-ref");
    json_t *metrics = NULL;
    double t0 = clock_now_s();
    int rc = run_train(train_params(3e-3, 30), ref_out, work, NULL, &metrics);
    if (rc) fprintf(stderr, "%s\n", err_msg());
    CHECK_EQ_INT(rc, 0);
    double v0 = json_real_value(json_object_get(metrics, "val_loss_start"));
    double v1 = json_real_value(json_object_get(metrics, "val_loss"));
    fprintf(stderr, "val loss %.4f -> %.4f in %.2f s\n", v0, v1,
            clock_now_s() - t0);
    CHECK(v1 < 0.7 * v0);
    CHECK_EQ_INT((int)json_real_value(json_object_get(metrics, "steps")), 30);
    json_decref(metrics);
    peft_adapter a;
    char *ad = fs_join(ref_out, "adapter");
    CHECK_EQ_INT(peft_adapter_load(&a, ad), 0);
    int nzB = 0;
    for (int64_t i = 0; a.n_lora && i < a.lora[0].out * a.lora[0].r; i++) nzB += a.lora[0].B[i] != 0;
    CHECK(nzB > 0); /* B moved away from zero */
    peft_adapter_free(&a);
    char *log = fs_join(ref_out, "train_log.jsonl"), *text;
    size_t n;
    CHECK_EQ_INT(fs_read_all(log, &text, &n), 0);
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    CHECK_EQ_INT(lines, 30 + 3); /* steps and evaluations at 0, 20, 30 */
    free(text);
    free(log);
    free(ad);
    free(work);
}

/* kill -9 the stage in a child at a moment chosen by the checkpoints on disk, run again */
TEST(test_train_kill_resume) {
    size_t nref = 0;
    char *ref = read_adapter(ref_out, &nref);
    CHECK(ref != NULL);
    int64_t waits[] = {5, 15};
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "work-kill%d", k);
        char *work = fs_join(root, name);
        snprintf(name, sizeof name, "out-kill%d", k);
        char *out = fs_join(root, name);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            log_set_quiet(true);
            _exit(run_train(train_params(3e-3, 30), out, work, NULL, NULL));
        }
        /* wait until the child has written a checkpoint at or past waits[k], then kill it */
        for (int i = 0; i < 20000 && trainer_checkpoint_latest(work) < waits[k]; i++) usleep(1000);
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st));
        int64_t at = trainer_checkpoint_latest(work);
        CHECK(at >= waits[k]);
        json_t *metrics = NULL;
        CHECK_EQ_INT(run_train(train_params(3e-3, 30), out, work, NULL, &metrics), 0);
        CHECK_EQ_INT((int64_t)json_real_value(json_object_get(metrics, "resumed_from_step")), at);
        json_decref(metrics);
        size_t n = 0;
        char *got = read_adapter(out, &n);
        CHECK(got && n == nref && memcmp(got, ref, n) == 0);
        free(got);
        free(work);
        free(out);
    }
    free(ref);
}

/* the reference run's parameters with KEY set to value (json_true() when NULL; the reference is
 * taken), into out-NAME and work-NAME (*work, for the caller to free): whether its adapter equals
 * the reference run's byte for byte; its metrics in *metrics when asked */
static int same_adapter_with(const char *name, const char *key, json_t *value, char **work, json_t **metrics) {
    char od[64], wd[64];
    snprintf(od, sizeof od, "out-%s", name), snprintf(wd, sizeof wd, "work-%s", name);
    char *out = fs_join(root, od);
    *work = fs_join(root, wd);
    json_t *p = train_params(3e-3, 30);
    json_object_set_new(p, key, value ? value : json_true());
    size_t nref = 0, n = 0;
    int same = run_train(p, out, *work, NULL, metrics) == 0;
    char *ref = read_adapter(ref_out, &nref), *got = same ? read_adapter(out, &n) : NULL;
    same = ref && got && n == nref && memcmp(got, ref, n) == 0;
    free(ref), free(got), free(out);
    return same;
}

/* optimizer_offload on the CPU backend is a no-op by design (m and v are host memory already): the
 * option is accepted and changes no bit, the adapter and the final checkpoint (params, m, v) equal
 * the reference run's. What offloading does is tested on the GPU, in test_offload_gpu. */
TEST(test_train_offload_cpu_is_noop) {
    size_t nc_ref = 0, nc = 0;
    char *work = NULL;
    CHECK(same_adapter_with("offload", "optimizer_offload", NULL, &work, NULL));
    char *cref_path = fs_join(root, "work-ref/checkpoint-00000030.bin"), *c_path = fs_join(work, "checkpoint-00000030.bin");
    char *cref = NULL, *c = NULL;
    CHECK_EQ_INT(fs_read_all(cref_path, &cref, &nc_ref), 0);
    CHECK_EQ_INT(fs_read_all(c_path, &c, &nc), 0);
    CHECK(cref && c && nc == nc_ref && memcmp(c, cref, nc) == 0);
    free(cref), free(c), free(cref_path), free(c_path), free(work);
}

/* deterministic: true on the CPU: accepted (its reductions are fixed-order whatever the thread
 * count), the same adapter bytes as the reference run, and the artifact records what produced it */
TEST(test_train_deterministic_cpu) {
    char *work = NULL;
    CHECK(same_adapter_with("det", "deterministic", NULL, &work, NULL));
    json_t *env = json_object_get(last_report, "environment");
    CHECK(json_is_true(json_object_get(env, "deterministic")));
    CHECK_EQ_STR(json_string_value(json_object_get(env, "device")), "cpu");
    CHECK_EQ_STR(json_string_value(json_object_get(env, "driver")), "");
    CHECK_EQ_STR(json_string_value(json_object_get(env, "cuda_runtime")), "");
    CHECK(json_string_value(json_object_get(env, "program_version")) != NULL);
    CHECK_EQ_INT(json_integer_value(json_object_get(env, "ranks")), 1);
    free(work);
}

/* dense_weights: on, the base's linears kept dequantized for the whole run (fp32 on the CPU, which
 * auto never chooses there): the forwards and backwards read the kept copy and change no bit, and
 * the metric says how much was kept; off keeps nothing. A wrong value in the copy, or a pass that
 * dequantized other rows than it reads, changes the adapter. */
TEST(test_train_dense_weights) {
    char *work = NULL;
    json_t *metrics = NULL;
    CHECK(same_adapter_with("dense", "dense_weights", json_string("on"), &work, &metrics));
    double mb = json_number_value(json_object_get(metrics, "dense_weights_mb"));
    CHECK(mb > 0);
    /* the device memory report is a GPU's: on the CPU no figure stands in for it */
    CHECK(json_object_get(metrics, "device_peak_mb") == NULL && json_object_get(metrics, "device_used_mb") == NULL);
    fprintf(stderr, "  dense_weights: on kept %.3f MiB; the adapter equals the reference's\n", mb);
    json_decref(metrics), free(work), metrics = NULL;
    CHECK(same_adapter_with("dense-off", "dense_weights", json_string("off"), &work, &metrics));
    CHECK(json_number_value(json_object_get(metrics, "dense_weights_mb")) == 0);
    json_decref(metrics), free(work);
}

/* a backend that cannot honour the mode, and a data-parallel all-reduce in the switch: errors
 * before anything runs, naming the path and the fix */
static int refuse_det(int on, char *why, size_t cap) {
    if (on) snprintf(why, cap, "the tiled attention kernels have no fixed-order backward");
    return on ? -1 : 0;
}
static int accept_det(int on, char *why, size_t cap) {
    (void)on, (void)why, (void)cap;
    return 0;
}

TEST(test_deterministic_refusals) {
    ops_table t = *ops_cpu();
    t.name = "cuda";
    t.deterministic_set = refuse_det;
    CHECK_EQ_INT(device_deterministic(&t, false, 1), 0);
    CHECK_EQ_INT(device_deterministic(&t, true, 1), ERR_RECIPE);
    CHECK(strstr(err_msg(), "deterministic: true") && strstr(err_msg(), "tiled"));
    err_clear();
    t.deterministic_set = accept_det;
    CHECK_EQ_INT(device_deterministic(&t, true, 1), 0);
    setenv("NCCL_ALGO", "NVLS,Ring", 1);
    CHECK_EQ_INT(device_deterministic(&t, true, 1), 0); /* one rank: no all-reduce */
    CHECK_EQ_INT(device_deterministic(&t, true, 2), ERR_RECIPE);
    CHECK(strstr(err_msg(), "NCCL_ALGO=NVLS,Ring"));
    err_clear();
    CHECK_EQ_INT(device_deterministic(&t, false, 2), 0);
    unsetenv("NCCL_ALGO");
    setenv("NCCL_NVLS_ENABLE", "1", 1);
    CHECK_EQ_INT(device_deterministic(&t, true, 2), ERR_RECIPE);
    CHECK(strstr(err_msg(), "NCCL_NVLS_ENABLE=1"));
    err_clear();
    unsetenv("NCCL_NVLS_ENABLE");
    unsetenv("NCCL_COLLNET_ENABLE");
    CHECK_EQ_INT(device_deterministic(&t, true, 2), 0); /* and keeps NCCL from picking them */
    CHECK_EQ_STR(getenv("NCCL_NVLS_ENABLE"), "0");
    CHECK_EQ_STR(getenv("NCCL_COLLNET_ENABLE"), "0");
    unsetenv("NCCL_NVLS_ENABLE");
    unsetenv("NCCL_COLLNET_ENABLE");
    /* a head dim the fixed-order backward does not take (Gemma-3's 256): refused before loading */
    CHECK_EQ_INT(device_deterministic_model(&t, true, 128, "m"), 0);
    CHECK_EQ_INT(device_deterministic_model(&t, false, 256, "m"), 0);
    CHECK_EQ_INT(device_deterministic_model(&t, true, 256, "/models/gemma3"), ERR_RECIPE);
    CHECK(strstr(err_msg(), "'/models/gemma3'") && strstr(err_msg(), "head_dim is 256"));
    err_clear();
    CHECK_EQ_INT(device_deterministic_model(ops_cpu(), true, 256, "m"), 0);
    /* the cpu backend is deterministic always: accepted at any world size */
    CHECK_EQ_INT(device_deterministic(ops_cpu(), true, 4), 0);
}

static volatile int int_flag;
static void on_sigint(int s) {
    (void)s;
    int_flag = 1;
}

TEST(test_train_sigint) {
    char *work = fs_join(root, "work-int"), *out = fs_join(root, "out-int");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct sigaction sa = {0};
        sa.sa_handler = on_sigint;
        sigaction(SIGINT, &sa, NULL);
        log_set_quiet(true);
        _exit(run_train(train_params(3e-3, 30), out, work, &int_flag, NULL));
    }
    for (int i = 0; i < 20000 && trainer_checkpoint_latest(work) < 10; i++) usleep(1000);
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == ERR_INTERRUPTED);
    int64_t at = trainer_checkpoint_latest(work);
    CHECK(at >= 10);
    CHECK_EQ_INT(run_train(train_params(3e-3, 30), out, work, NULL, NULL), 0);
    size_t n1 = 0, n2 = 0;
    char *a = read_adapter(ref_out, &n1), *b = read_adapter(out, &n2);
    CHECK(a && b && n1 == n2 && memcmp(a, b, n1) == 0);
    free(a), free(b), free(work), free(out);
}

TEST(test_train_diverges) {
    char *work = fs_join(root, "work-div"), *out = fs_join(root, "out-div");
    json_t *p = train_params(1e9, 30);
    json_object_set_new(p, "max_grad_norm", json_real(0));
    json_object_set_new(p, "save_steps", json_integer(1));
    json_object_set_new(p, "warmup_steps", json_integer(0));
    int rc = run_train(p, out, work, NULL, NULL);
    CHECK_EQ_INT(rc, ERR_DIVERGED);
    CHECK(strstr(err_msg(), "diverged at step ") != NULL);
    char *adapter = fs_join(out, "adapter");
    CHECK(!fs_exists(adapter)); /* a diverged run leaves no adapter in its output */
    free(adapter), free(work), free(out);
}

TEST(test_train_lr_hook) {
    char *work = fs_join(root, "work-hook"), *out = fs_join(root, "out-hook"), *hook = fs_join(root, "lr.lua");
    const char *src = "function lr(step, total, base)\n  return base * 0.5\nend\n";
    fs_write_atomic(hook, src, strlen(src));
    json_t *p = train_params(3e-3, 4);
    json_object_set_new(p, "lr_hook", json_string(hook));
    CHECK_EQ_INT(run_train(p, out, work, NULL, NULL), 0);
    char *log = fs_join(out, "train_log.jsonl"), *text = NULL;
    size_t n;
    CHECK_EQ_INT(fs_read_all(log, &text, &n), 0);
    CHECK(text && strstr(text, "\"lr\":0.0015") != NULL);
    free(text);
    /* a hook that returns a string */
    const char *bad = "function lr(step, total, base)\n  return 'fast'\nend\n";
    fs_write_atomic(hook, bad, strlen(bad));
    char *work2 = fs_join(root, "work-hook2"), *out2 = fs_join(root, "out-hook2");
    p = train_params(3e-3, 4);
    json_object_set_new(p, "lr_hook", json_string(hook));
    int rc = run_train(p, out2, work2, NULL, NULL);
    CHECK(rc != 0);
    CHECK(strstr(err_msg(), "lr.lua") != NULL);
    free(log), free(work), free(out), free(hook), free(work2), free(out2);
}

/* with the real engine: one step of 2 micro-batches x 1 row and of 1 x 2 rows give the same
 * gradient (the loss is normalised by the target tokens of the whole step) */
static float *one_step_grads(int mb, int accum, int64_t *n) {
    model_config c;
    char *mdir = fs_join(model_art, "model"), *adir = fs_join(lora_art, "adapter");
    peft_adapter ad;
    llama_model *m = NULL;
    train_data tr = {0};
    float *g = NULL;
    if (config_load(&c, mdir) || peft_adapter_load(&ad, adir)) return NULL;
    if (!llama_init(&m, &c, mdir, &LLAMA_LOAD_OPTS_DEFAULT, ops_cpu()) && !llama_peft_attach(m, &ad, adir) &&
        !llama_plan(m, 64, LLAMA_CKPT_NONE) && !train_data_open(&tr, data_art, "train")) {
        /* a nonzero B, so that every LoRA tensor gets a gradient */
        float *p = malloc(sizeof(float) * (size_t)m->n_lora_params);
        for (int64_t i = 0; i < m->n_lora_params; i++) p[i] = 0.05f * rng_normal(9, 0, (uint64_t)i);
        ops_cpu()->upload(m->lora_params, p, sizeof(float) * (size_t)m->n_lora_params);
        free(p);
        trainer_model tm;
        llama_trainer_bind(m, &tm);
        trainer_config tc = {.learning_rate = 1e-3, .micro_batch_size = mb, .gradient_accumulation_steps = accum,
                             .max_steps = 1, .adam_beta1 = 0.9, .adam_beta2 = 0.999, .adam_epsilon = 1e-8,
                             .seed = 3};
        trainer_result res;
        if (!trainer_run(&tc, ops_cpu(), &tm, &tr, NULL, NULL, &res)) {
            *n = m->n_lora_params;
            g = malloc(sizeof(float) * (size_t)*n);
            memcpy(g, m->lora_grads, sizeof(float) * (size_t)*n);
        }
    }
    train_data_free(&tr);
    llama_free(&m);
    peft_adapter_free(&ad);
    config_free(&c);
    free(mdir), free(adir);
    return g;
}

TEST(test_train_accumulation_engine) {
    int64_t n1 = 0, n2 = 0;
    float *a = one_step_grads(1, 2, &n1), *b = one_step_grads(2, 1, &n2);
    CHECK(a && b && n1 == n2);
    double maxd = 0, maxg = 0;
    for (int64_t i = 0; a && b && i < n1; i++) {
        maxd = fmax(maxd, fabs((double)a[i] - b[i]));
        maxg = fmax(maxg, fabs((double)a[i]));
    }
    CHECK(maxg > 0);
    CHECK(maxd <= 1e-5 * maxg);
    free(a), free(b);
}

int main(void) {
    snprintf(root, sizeof root, "/tmp/qlora-test-train-%d", (int)getpid());
    fs_rm_rf(root);
    fs_mkdir_p(root);
    model_config c;
    fix_config(&c);
    model_art = fs_join(root, "model-art");
    data_art = fs_join(root, "data-art");
    lora_art = fs_join(root, "lora-art");
    int rc = fix_write_model(model_art, &c, 3);
    if (!rc) rc = fix_write_dataset(data_art, 96, 16);
    stage_ctx ctx;
    json_t *lp = json_pack("{s:s, s:i, s:f, s:f, s:[s], s:I}", "model", "m", "lora_r", 8, "lora_alpha", 16.0, "lora_dropout", 0.0,
                           "lora_target_modules", "all-linear", "seed", (json_int_t)5);
    fix_ctx(&ctx, &stage_kind_attach_lora, "lora", lp, lora_art, NULL);
    fix_input(&ctx, "model", "init_model", model_art);
    if (!rc) rc = stage_kind_attach_lora.run(&ctx);
    { json_decref(ctx.metrics); json_decref(ctx.hook_files); }
    json_decref(lp);
    if (rc) {
        fprintf(stderr, "fixture: %s\n", err_msg());
        return 1;
    }
    RUN(test_train_accumulation_engine);
    RUN(test_train_loss_falls);
    RUN(test_train_kill_resume);
    RUN(test_train_deterministic_cpu);
    RUN(test_deterministic_refusals);
    RUN(test_train_offload_cpu_is_noop);
    RUN(test_train_dense_weights);
    RUN(test_train_sigint);
    RUN(test_train_diverges);
    RUN(test_train_lr_hook);
    config_free(&c);
    free(model_art), free(data_art), free(lora_art), free(ref_out);
    json_decref(last_report);
    fs_rm_rf(root);
    return test_summary();
}
