/* test_trainer.c: the training loop on a toy model (a bigram table trained by softmax
 * cross-entropy): data batches and shifted targets, schedules, loss normalisation across
 * gradient accumulation, kill -9 and resume to identical bytes, SIGINT, corrupt
 * checkpoints, divergence. The Llama engine is tested elsewhere; the loop is the same. */
#define _GNU_SOURCE
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/rng.h"
#include "train/trainer.h"
#include "test.h"

/* ---- host "backend": only what the trainer calls ---- */
static void *h_alloc(size_t n) { return calloc(1, n ? n : 1); }
static void h_free(void *p) { free(p); }
static void h_copy(void *d, const void *s, size_t n) { memcpy(d, s, n); }
static void h_zero(void *p, size_t n) { memset(p, 0, n); }
static void h_sync(void) {}
static void h_adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float b1, float b2, float eps,
                    float wd, int t) {
    float c1 = 1.0f - powf(b1, (float)t), c2 = 1.0f - powf(b2, (float)t);
    for (int64_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / c1 / (sqrtf(v[i] / c2) + eps) + wd * p[i]);
    }
}
static double h_sumsq(const float *g, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}
static void h_scale(float *g, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) g[i] *= s;
}
static ops_table host_ops = {.name = "host", .alloc = h_alloc, .free = h_free, .upload = h_copy, .download = h_copy,
                             .zero = h_zero, .sync = h_sync, .adamw = h_adamw, .sum_squares = h_sumsq,
                             .scale = h_scale};

/* ---- toy model: logits(t) = W[ids[t]] ---- */
#define V 16
typedef struct toy {
    float W[V * V], G[V * V];
    int dropout; /* perturb gradients from the dropout seed, so resume must restore the RNG */
} toy;

static double toy_loss_row(const float *w, int target, float *p) {
    float mx = w[0];
    for (int j = 1; j < V; j++) mx = fmaxf(mx, w[j]);
    double z = 0;
    for (int j = 0; j < V; j++) z += exp((double)(w[j] - mx));
    for (int j = 0; j < V; j++) p[j] = (float)(exp((double)(w[j] - mx)) / z);
    return log(z) + mx - w[target];
}

static int toy_step(void *self, const train_batch *b, float scale, uint64_t seed, double *loss) {
    toy *m = self;
    float p[V];
    *loss = 0;
    for (int t = 0; t < b->T; t++) {
        if (b->targets[t] < 0) continue;
        const float *w = m->W + b->ids[t] * V;
        *loss += toy_loss_row(w, b->targets[t], p);
        float keep = m->dropout ? 1.0f + 0.1f * rng_uniform(seed, 0, (uint64_t)t) : 1.0f;
        for (int j = 0; j < V; j++) m->G[b->ids[t] * V + j] += scale * keep * (p[j] - (j == b->targets[t]));
    }
    return 0;
}

static int toy_eval(void *self, const train_batch *b, double *loss) {
    toy *m = self;
    float p[V];
    *loss = 0;
    for (int t = 0; t < b->T; t++)
        if (b->targets[t] >= 0) *loss += toy_loss_row(m->W + b->ids[t] * V, b->targets[t], p);
    return 0;
}

static void toy_init(toy *m, trainer_model *tm, int dropout) {
    memset(m, 0, sizeof *m);
    m->dropout = dropout;
    *tm = (trainer_model){.self = m, .n_params = V * V, .params = m->W, .grads = m->G, .train_step = toy_step,
                          .eval_loss = toy_eval};
}

/* ---- a dataset artifact: sequences following x -> (3x+1) mod V, the first 2 tokens masked,
 * of varying length, packed 1 to 3 to a row ---- */
static void write_split(const char *dir, const char *split, int n_rows, uint64_t seed) {
    int32_t ids[4096], labels[4096];
    int64_t rows[512], seqs[1024];
    int nt = 0, nr = 0, ns = 0;
    for (int r = 0; r < n_rows; r++) {
        rows[nr++] = nt;
        int k = 1 + (int)(rng_u64(seed, 1, (uint64_t)r) % 3);
        for (int q = 0; q < k; q++) {
            seqs[ns++] = nt;
            int len = 3 + (int)(rng_u64(seed, 2, (uint64_t)(r * 4 + q)) % 6);
            int x = (int)(rng_u64(seed, 3, (uint64_t)(r * 4 + q)) % V);
            for (int i = 0; i < len; i++) {
                ids[nt] = x;
                labels[nt] = i < 2 ? -100 : x;
                nt++;
                x = (3 * x + 1) % V;
            }
        }
    }
    rows[nr] = nt;
    seqs[ns] = nt;
    char name[256];
    snprintf(name, sizeof name, "%s/%s.ids.i32", dir, split);
    fs_write_atomic(name, ids, (size_t)nt * 4);
    snprintf(name, sizeof name, "%s/%s.labels.i32", dir, split);
    fs_write_atomic(name, labels, (size_t)nt * 4);
    snprintf(name, sizeof name, "%s/%s.rows.i64", dir, split);
    fs_write_atomic(name, rows, (size_t)(nr + 1) * 8);
    snprintf(name, sizeof name, "%s/%s.seqs.i64", dir, split);
    fs_write_atomic(name, seqs, (size_t)(ns + 1) * 8);
}

static char tmpdir[256];
static train_data train, val;

static void make_dataset(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qlora-test-trainer-%d", (int)getpid());
    fs_rm_rf(tmpdir);
    fs_mkdir_p(tmpdir);
    char *data = fs_join(tmpdir, "data");
    fs_mkdir_p(data);
    write_split(data, "train", 40, 7);
    write_split(data, "val", 8, 99);
    const char *meta = "{\"version\":1,\"sequence_len\":32,\"splits\":{\"train\":{},\"val\":{}},\"stats\":{}}";
    char *mp = fs_join(data, "meta.json");
    fs_write_atomic(mp, meta, strlen(meta));
    int rc = train_data_open(&train, data, "train");
    if (rc) fprintf(stderr, "%s\n", err_msg());
    rc = train_data_open(&val, data, "val");
    if (rc) fprintf(stderr, "%s\n", err_msg());
    free(mp);
    free(data);
}

static trainer_config base_config(const char *work) {
    return (trainer_config){.learning_rate = 0.05, .micro_batch_size = 2, .gradient_accumulation_steps = 2,
                            .num_epochs = 3, .schedule = TRAINER_SCHEDULE_COSINE, .warmup_steps = 3,
                            .weight_decay = 0.01, .adam_beta1 = 0.9, .adam_beta2 = 0.999, .adam_epsilon = 1e-8,
                            .max_grad_norm = 1.0, .eval_steps = 10, .save_steps = 5, .logging_steps = 1, .seed = 42,
                            .work_dir = work};
}

static char *work_path(const char *name) {
    char *p = fs_join(tmpdir, name);
    fs_rm_rf(p);
    return p;
}

/* ---- hooks used by the tests ---- */
typedef struct hook_state {
    int64_t kill_at, interrupt_at, steps_seen;
    volatile int flag;
    int logged_step_lines;
} hook_state;

static void cb_log(void *ud, const char *line) {
    hook_state *h = ud;
    if (!strncmp(line, "step ", 5)) h->logged_step_lines++;
    if (getenv("TEST_VERBOSE")) fprintf(stderr, "  | %s\n", line);
}

static volatile sig_atomic_t sigint_flag;
static void on_sigint(int sig) { (void)sig; sigint_flag = 1; }

static int cb_step(void *ud, const trainer_step_info *in) {
    hook_state *h = ud;
    h->steps_seen++;
    if (h->kill_at && in->step == h->kill_at) raise(SIGKILL); /* a real kill -9: no cleanup at all */
    if (h->interrupt_at && in->step == h->interrupt_at) raise(SIGINT);
    return 0;
}

static int train_once(const trainer_config *cfg, toy *m, hook_state *hs, trainer_result *res, int dropout) {
    trainer_model tm;
    toy_init(m, &tm, dropout);
    /* the toy's initial weights: the trainer must not depend on them being zero */
    for (int i = 0; i < V * V; i++) m->W[i] = 0.1f * rng_normal(5, 0, (uint64_t)i);
    trainer_hooks hk = {.ud = hs, .log = cb_log, .on_step = cb_step, .interrupted = (volatile int *)&sigint_flag};
    sigint_flag = 0;
    return trainer_run(cfg, &host_ops, &tm, &train, &val, &hk, res);
}

TEST(test_batch_targets) {
    train_batch b = {0};
    int64_t idx[2] = {0, 1};
    CHECK_EQ_INT(train_data_batch(&train, idx, 2, &b), 0);
    CHECK_EQ_INT(b.T, (int)(train.rows[2] - train.rows[0]));
    int64_t want = train_data_row_targets(&train, 0) + train_data_row_targets(&train, 1);
    CHECK_EQ_INT(b.n_targets, want);
    for (int t = 0; t < b.T; t++) {
        CHECK(b.pos[t] == t - b.seq_start[t]);
        if (b.targets[t] >= 0) {
            CHECK(t + 1 < b.T && b.seq_start[t + 1] == b.seq_start[t]); /* never across a sequence start */
            CHECK_EQ_INT(b.targets[t], (3 * b.ids[t] + 1) % V);
        }
    }
    CHECK_EQ_INT(b.seq_start[0], 0);
    int row1 = (int)(train.rows[1] - train.rows[0]);
    CHECK_EQ_INT(b.seq_start[row1], row1); /* a row starts a sequence */
    CHECK_EQ_INT(b.targets[row1 - 1], -1);
    train_batch_free(&b);
}

TEST(test_schedules) {
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_CONSTANT, 1e-3, 0, 0, 100), 1e-3, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_CONSTANT, 1e-3, 5, 10, 100), 5e-4, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_LINEAR, 1.0, 0, 10, 110), 0.0, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_LINEAR, 1.0, 10, 10, 110), 1.0, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_LINEAR, 1.0, 60, 10, 110), 0.5, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_LINEAR, 1.0, 110, 10, 110), 0.0, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_COSINE, 1.0, 10, 10, 110), 1.0, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_COSINE, 1.0, 60, 10, 110), 0.5, 1e-12);
    CHECK_NEAR(trainer_schedule_lr(TRAINER_SCHEDULE_COSINE, 1.0, 35, 10, 110), 0.5 * (1 + cos(M_PI * 0.25)), 1e-12);
    CHECK_EQ_INT(trainer_schedule_from_name("cosine"), TRAINER_SCHEDULE_COSINE);
    CHECK_EQ_INT(trainer_schedule_from_name("wsd"), -1);
    trainer_config c = base_config(NULL);
    CHECK_EQ_INT(trainer_total_steps(&c, 40), 30); /* 3 epochs x 40 rows / 4 rows a step */
    c.max_steps = 7;
    CHECK_EQ_INT(trainer_total_steps(&c, 40), 7);
}

/* one step of accum 2 x mb 1 and accum 1 x mb 2 over the same two rows: the same gradient */
TEST(test_accumulation_normalisation) {
    toy a, b;
    hook_state h1 = {0}, h2 = {0};
    trainer_result r1, r2;
    trainer_config c = base_config(NULL);
    c.max_steps = 1;
    c.max_grad_norm = 0;
    c.warmup_steps = 0;
    c.micro_batch_size = 1;
    c.gradient_accumulation_steps = 2;
    CHECK_EQ_INT(train_once(&c, &a, &h1, &r1, 0), 0);
    c.micro_batch_size = 2;
    c.gradient_accumulation_steps = 1;
    CHECK_EQ_INT(train_once(&c, &b, &h2, &r2, 0), 0);
    double maxd = 0, maxg = 0;
    for (int i = 0; i < V * V; i++) {
        maxd = fmax(maxd, fabs((double)a.G[i] - b.G[i]));
        maxg = fmax(maxg, fabs((double)a.G[i]));
    }
    CHECK(maxg > 1e-3);
    CHECK(maxd <= 1e-6 * maxg);
    CHECK_NEAR(r1.final_train_loss, r2.final_train_loss, 1e-6);
    /* rows 0 and 1 of the first epoch hold different target counts, so a per-micro-batch
     * mean would differ: make sure the test data exercises that */
    CHECK(train_data_row_targets(&train, 0) != train_data_row_targets(&train, 1) ||
          train_data_row_targets(&train, 2) != train_data_row_targets(&train, 3));
}

TEST(test_loss_decreases) {
    toy m;
    hook_state h = {0};
    trainer_result r;
    trainer_config c = base_config(NULL);
    CHECK_EQ_INT(train_once(&c, &m, &h, &r, 1), 0);
    CHECK_EQ_INT(r.steps, 30);
    if (getenv("TEST_VERBOSE")) fprintf(stderr, "val loss %.4f -> %.4f\n", r.first_val_loss, r.final_val_loss);
    CHECK(r.final_val_loss < 0.7 * r.first_val_loss);
    CHECK_EQ_INT(h.logged_step_lines, 30);
}

/* a run killed with SIGKILL at step k, then run again, ends with the same bytes */
TEST(test_kill_and_resume) {
    char *wa = work_path("work-a");
    toy ref;
    hook_state h = {0};
    trainer_result r;
    trainer_config c = base_config(wa);
    CHECK_EQ_INT(train_once(&c, &ref, &h, &r, 1), 0);
    CHECK_EQ_INT(trainer_checkpoint_latest(wa), 30);
    int64_t kills[] = {1, 4, 5, 13, 29, 30};
    for (size_t k = 0; k < sizeof kills / sizeof kills[0]; k++) {
        char name[32];
        snprintf(name, sizeof name, "work-k%zu", k);
        char *wk = work_path(name);
        trainer_config ck = base_config(wk);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            toy m;
            hook_state hk = {.kill_at = kills[k]};
            trainer_result rr;
            train_once(&ck, &m, &hk, &rr, 1);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
        /* the newest checkpoint before the kill (the final one is written after the last on_step) */
        int64_t expect = (kills[k] < 30 ? kills[k] : 29) / 5 * 5;
        CHECK_EQ_INT(trainer_checkpoint_latest(wk), expect);
        toy m;
        hook_state h2 = {0};
        trainer_result r2;
        CHECK_EQ_INT(train_once(&ck, &m, &h2, &r2, 1), 0);
        CHECK_EQ_INT(r2.resumed_from, expect);
        CHECK(memcmp(m.W, ref.W, sizeof ref.W) == 0);
        CHECK(r2.first_val_loss == r.first_val_loss);
        CHECK(r2.final_val_loss == r.final_val_loss);
        free(wk);
    }
    free(wa);
}

/* SIGINT: a checkpoint at the current step, ERR_INTERRUPTED, then resume to the same bytes */
TEST(test_sigint) {
    char *wa = work_path("work-ref"), *wi = work_path("work-int");
    toy ref, m;
    hook_state h = {0};
    trainer_result r;
    trainer_config c = base_config(wa);
    CHECK_EQ_INT(train_once(&c, &ref, &h, &r, 1), 0);
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    trainer_config ci = base_config(wi);
    hook_state hi = {.interrupt_at = 7};
    int rc = train_once(&ci, &m, &hi, &r, 1);
    CHECK_EQ_INT(rc, ERR_INTERRUPTED);
    CHECK(strstr(err_msg(), "interrupted at step 7") != NULL);
    CHECK_EQ_INT(trainer_checkpoint_latest(wi), 7);
    sigaction(SIGINT, &old, NULL);
    hook_state h2 = {0};
    CHECK_EQ_INT(train_once(&ci, &m, &h2, &r, 1), 0);
    CHECK_EQ_INT(r.resumed_from, 7);
    CHECK(memcmp(m.W, ref.W, sizeof ref.W) == 0);
    free(wa);
    free(wi);
}

/* a damaged newest checkpoint is skipped: resume from the one before, same bytes at the end */
TEST(test_corrupt_checkpoint) {
    char *wa = work_path("work-ref2"), *wc = work_path("work-corrupt");
    toy ref, m;
    hook_state h = {.kill_at = 12};
    trainer_result r;
    trainer_config c = base_config(wa);
    h.kill_at = 0;
    CHECK_EQ_INT(train_once(&c, &ref, &h, &r, 1), 0);
    trainer_config cc = base_config(wc);
    cc.max_steps = 10; /* checkpoints 5 and 10 */
    CHECK_EQ_INT(train_once(&cc, &m, &h, &r, 1), 0);
    char *p = fs_join(wc, "checkpoint-00000010.bin");
    FILE *f = fopen(p, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 200, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, 200, SEEK_SET);
        fputc(ch ^ 0x10, f);
        fclose(f);
    }
    CHECK_EQ_INT(trainer_checkpoint_latest(wc), 5);
    /* a truncated file is skipped too */
    char *q = fs_join(wc, "checkpoint-00000009.bin");
    fs_write_atomic(q, "QLRACKPT", 8);
    CHECK_EQ_INT(trainer_checkpoint_latest(wc), 5);
    free(p);
    free(q);
    free(wa);
    free(wc);
}

TEST(test_divergence) {
    char *wd = work_path("work-div");
    toy m;
    hook_state h = {0};
    trainer_result r;
    trainer_config c = base_config(wd);
    c.learning_rate = 1e36;
    c.warmup_steps = 0;
    c.max_grad_norm = 0;
    c.save_steps = 1;
    c.schedule = TRAINER_SCHEDULE_CONSTANT;
    int rc = train_once(&c, &m, &h, &r, 0);
    CHECK_EQ_INT(rc, ERR_DIVERGED);
    char want[64];
    snprintf(want, sizeof want, "diverged at step %lld", (long long)(r.steps + 1));
    CHECK(strstr(err_msg(), want) != NULL);
    CHECK(strstr(err_msg(), "newest checkpoint is step") != NULL);
    CHECK(r.steps >= 1 && r.steps < 30);
    CHECK_EQ_INT(trainer_checkpoint_latest(wd), r.steps);
    free(wd);
}

int main(void) {
    make_dataset();
    RUN(test_batch_targets);
    RUN(test_schedules);
    RUN(test_accumulation_normalisation);
    RUN(test_loss_decreases);
    RUN(test_kill_and_resume);
    RUN(test_sigint);
    RUN(test_corrupt_checkpoint);
    RUN(test_divergence);
    train_data_free(&train);
    train_data_free(&val);
    fs_rm_rf(tmpdir);
    return test_summary();
}
