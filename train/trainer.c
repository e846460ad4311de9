/* trainer.c: the training loop, checkpoints and resume (see trainer.h). */
#define _GNU_SOURCE
#include "train/trainer.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/collective.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"
#include "core/rng.h"

/* ---- learning-rate schedules (transformers' get_*_schedule_with_warmup, 0-based step) ---- */

static const char *const schedule_names[] = {"constant", "linear", "cosine"};

const char *trainer_schedule_name(trainer_schedule s) { return schedule_names[s]; }

int trainer_schedule_from_name(const char *name) {
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, schedule_names[i])) return i;
    return -1;
}

double trainer_schedule_lr(trainer_schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total) {
    if (step < warmup) return base_lr * (double)step / (double)(warmup > 1 ? warmup : 1);
    double rest = (double)(total - warmup > 1 ? total - warmup : 1);
    double progress = (double)(step - warmup) / rest;
    switch (s) {
    case TRAINER_SCHEDULE_LINEAR: return base_lr * fmax(0.0, 1.0 - progress);
    case TRAINER_SCHEDULE_COSINE: return base_lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
    case TRAINER_SCHEDULE_CONSTANT: break;
    }
    return base_lr;
}

int64_t trainer_total_steps(const trainer_config *cfg, int64_t n_rows) {
    if (cfg->max_steps > 0) return cfg->max_steps;
    int64_t per_step = (int64_t)cfg->micro_batch_size * cfg->gradient_accumulation_steps * (cfg->world > 1 ? cfg->world : 1);
    double rows = cfg->num_epochs * (double)n_rows;
    int64_t steps = (int64_t)ceil(rows / (double)per_step - 1e-9);
    return steps > 0 ? steps : 1;
}

/* ---- helpers ---- */

static void hook_log(const trainer_hooks *h, const char *fmt, ...) ERR_PRINTF(2, 3);
static void hook_log(const trainer_hooks *h, const char *fmt, ...) {
    if (!h || !h->log) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    h->log(h->ud, buf);
}

static void hook_event(const trainer_hooks *h, const char *type, json_t *ev) {
    if (h && h->event) h->event(h->ud, type, ev);
    else json_decref(ev);
}

static bool hook_interrupted(const trainer_hooks *h) { return h && h->interrupted && *h->interrupted; }

/* ---- data order: one seeded permutation of the rows per epoch ---- */

typedef struct data_order {
    int64_t n, epoch;
    int64_t *perm;
    uint64_t seed;
} data_order;

static int order_init(data_order *o, int64_t n, uint64_t seed) {
    o->n = n;
    o->epoch = -1;
    o->seed = seed;
    o->perm = malloc((size_t)n * sizeof *o->perm);
    return o->perm ? 0 : err_set(ERR_STAGE, "out of memory for the data order of %lld rows", (long long)n);
}

/* the row at global position g of the stream (epochs laid end to end) */
static int64_t order_row(data_order *o, int64_t g) {
    int64_t e = g / o->n;
    if (e != o->epoch) {
        rng_state r;
        rng_seed(&r, rng_u64(o->seed, rng_stream_of("data_order"), (uint64_t)e));
        for (int64_t i = 0; i < o->n; i++) o->perm[i] = i;
        for (int64_t i = o->n - 1; i > 0; i--) {
            int64_t j = (int64_t)rng_next_below(&r, (uint64_t)i + 1);
            int64_t t = o->perm[i];
            o->perm[i] = o->perm[j];
            o->perm[j] = t;
        }
        o->epoch = e;
    }
    return o->perm[g % o->n];
}

/* ---- checkpoints ---- */

/* Fixed-width fields only, so the layout is the same on every build (little-endian hosts). */
typedef struct trainer_ckpt_header {
    int64_t step, total_steps;
    int64_t cursor;       /* rows of the stream consumed */
    uint64_t rng[4];      /* dropout-seed generator */
    int64_t n_params;
    uint64_t config_hash; /* what must match to resume: hyperparameters and data shape */
    double first_val_loss, last_val_loss, last_train_loss;
    int64_t tokens;       /* tokens processed up to this step */
} trainer_ckpt_header;

static uint64_t config_hash(const trainer_config *c, int64_t n_params, const train_data *train) {
    double f[] = {c->learning_rate, c->num_epochs, c->weight_decay, c->adam_beta1, c->adam_beta2, c->adam_epsilon,
                  c->max_grad_norm};
    int64_t i[] = {c->micro_batch_size, c->gradient_accumulation_steps, c->max_steps, c->warmup_steps, c->schedule,
                   (int64_t)c->seed, n_params, train->n_rows, train->n_tokens};
    hash_ctx *h = hash_new();
    hash_update(h, f, sizeof f);
    hash_update(h, i, sizeof i);
    char hex[HASH_HEX_LEN];
    hash_final_hex(h, hex);
    char head[17];
    memcpy(head, hex, 16);
    head[16] = 0;
    return strtoull(head, NULL, 16);
}

static char *ckpt_path(const char *dir, int64_t step) {
    char name[64];
    snprintf(name, sizeof name, "checkpoint-%08lld.bin", (long long)step);
    return fs_join(dir, name);
}

/* host copies of params, m, v (n floats each) */
typedef struct host_state {
    float *params, *m, *v;
} host_state;

static int ckpt_write(const char *dir, const trainer_ckpt_header *hd, const host_state *hs) {
    int rc = fs_mkdir_p(dir);
    if (rc) return rc;
    char *path = ckpt_path(dir, hd->step);
    fs_file ff;
    if ((rc = fs_file_open(&ff, path))) {
        free(path);
        return rc;
    }
    hash_ctx *h = hash_new();
    uint32_t ver = TRAINER_CKPT_VERSION, hbytes = sizeof *hd;
    size_t nb = (size_t)hd->n_params * sizeof(float);
    const void *parts[] = {TRAINER_CKPT_MAGIC, &ver, &hbytes, hd, hs->params, hs->m, hs->v};
    size_t sizes[] = {8, 4, 4, sizeof *hd, nb, nb, nb};
    for (int k = 0; k < 7 && !rc; k++) {
        hash_update(h, parts[k], sizes[k]);
        rc = fs_file_write(&ff, parts[k], sizes[k]);
    }
    char hex[HASH_HEX_LEN];
    hash_final_hex(h, hex);
    if (!rc) rc = fs_file_write(&ff, hex, 32);
    if (!rc) rc = fs_file_commit(&ff);
    else fs_file_abort(&ff);
    free(path);
    return rc;
}

/* Read and verify a checkpoint; on success hs holds n_params floats each (malloc'd). */
static int ckpt_read(const char *path, trainer_ckpt_header *hd, host_state *hs) {
    char *buf = NULL;
    size_t len = 0;
    int rc = fs_read_all(path, &buf, &len);
    if (rc) return rc;
    size_t head = 16 + sizeof *hd;
    uint32_t ver = 0, hbytes = 0;
    if (len < head + 32 || memcmp(buf, TRAINER_CKPT_MAGIC, 8)) {
        rc = err_set(ERR_DATA, "'%s': not a qlora-run checkpoint (bad magic or truncated)", path);
        goto out;
    }
    memcpy(&ver, buf + 8, 4);
    memcpy(&hbytes, buf + 12, 4);
    if (ver != TRAINER_CKPT_VERSION || hbytes != sizeof *hd) {
        rc = err_set(ERR_DATA, "'%s': checkpoint version %u, expected %d: delete it to start over", path, ver,
                     TRAINER_CKPT_VERSION);
        goto out;
    }
    memcpy(hd, buf + 16, sizeof *hd);
    size_t nb = (size_t)hd->n_params * sizeof(float);
    if (hd->n_params <= 0 || len != head + 3 * nb + 32) {
        rc = err_set(ERR_DATA, "'%s': truncated checkpoint (%zu bytes)", path, len);
        goto out;
    }
    char hex[HASH_HEX_LEN];
    hash_bytes_hex(buf, len - 32, hex);
    if (memcmp(hex, buf + len - 32, 32)) {
        rc = err_set(ERR_DATA, "'%s': checksum mismatch (a damaged checkpoint)", path);
        goto out;
    }
    hs->params = malloc(nb);
    hs->m = malloc(nb);
    hs->v = malloc(nb);
    if (!hs->params || !hs->m || !hs->v) {
        rc = err_set(ERR_STAGE, "out of memory reading '%s'", path);
        goto out;
    }
    memcpy(hs->params, buf + head, nb);
    memcpy(hs->m, buf + head + nb, nb);
    memcpy(hs->v, buf + head + 2 * nb, nb);
out:
    free(buf);
    return rc;
}

static void host_state_free(host_state *hs) {
    free(hs->params);
    free(hs->m);
    free(hs->v);
    memset(hs, 0, sizeof *hs);
}

/* steps of the checkpoint files in dir, newest first; returns the count (malloc'd *steps) */
static int ckpt_list(const char *dir, int64_t **steps) {
    *steps = NULL;
    DIR *d = dir ? opendir(dir) : NULL;
    if (!d) return 0;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long long s;
        int used = 0;
        if (sscanf(e->d_name, "checkpoint-%lld.bin%n", &s, &used) != 1 || used != (int)strlen(e->d_name) || s < 0)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            int64_t *p = realloc(*steps, (size_t)cap * sizeof *p);
            if (!p) break;
            *steps = p;
        }
        (*steps)[n++] = s;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort, descending */
        for (int j = i; j > 0 && (*steps)[j] > (*steps)[j - 1]; j--) {
            int64_t t = (*steps)[j];
            (*steps)[j] = (*steps)[j - 1];
            (*steps)[j - 1] = t;
        }
    return n;
}

int64_t trainer_checkpoint_latest(const char *work_dir) {
    int64_t *steps;
    int n = ckpt_list(work_dir, &steps);
    int64_t best = 0;
    for (int i = 0; i < n && !best; i++) {
        char *p = ckpt_path(work_dir, steps[i]);
        trainer_ckpt_header hd;
        host_state hs = {0};
        if (!ckpt_read(p, &hd, &hs)) best = hd.step;
        host_state_free(&hs);
        free(p);
    }
    free(steps);
    err_clear();
    return best;
}

/* remove all but the newest `keep` checkpoints */
static void ckpt_prune(const char *dir, int keep) {
    int64_t *steps;
    int n = ckpt_list(dir, &steps);
    for (int i = keep; i < n; i++) {
        char *p = ckpt_path(dir, steps[i]);
        unlink(p);
        free(p);
    }
    free(steps);
}

/* ---- evaluation ---- */

int trainer_evaluate(trainer_model *m, const train_data *d, int micro_batch_size, double *loss, int64_t *n_targets) {
    return trainer_evaluate_shared(m, d, micro_batch_size, 0, 1, loss, n_targets);
}

int trainer_evaluate_shared(trainer_model *m, const train_data *d, int micro_batch_size, int rank, int world,
                            double *loss, int64_t *n_targets) {
    train_batch b = {0};
    int64_t *idx = malloc((size_t)micro_batch_size * sizeof *idx);
    double sum = 0;
    int64_t nt = 0;
    int rc = idx ? 0 : err_set(ERR_STAGE, "out of memory");
    const int64_t stride = (int64_t)micro_batch_size * (world > 1 ? world : 1);
    for (int64_t r = (int64_t)micro_batch_size * (world > 1 ? rank : 0); !rc && r < d->n_rows; r += stride) {
        int n = 0;
        for (int64_t k = r; k < d->n_rows && n < micro_batch_size; k++) idx[n++] = k;
        if ((rc = train_data_batch(d, idx, n, &b))) break;
        if (b.n_targets == 0) continue;
        double s = 0;
        if ((rc = m->eval_loss(m->self, &b, &s))) break;
        sum += s;
        nt += b.n_targets;
    }
    free(idx);
    train_batch_free(&b);
    if (world > 1) { /* every rank reaches this, failed or not: the sums travel, the failure is agreed later */
        double v[2] = {sum, (double)nt};
        int c = coll_allreduce_f64(v, 2);
        if (!rc) rc = c;
        sum = v[0];
        nt = (int64_t)v[1];
    }
    *loss = nt ? sum / (double)nt : NAN;
    if (n_targets) *n_targets = nt;
    return rc;
}

/* ---- the loop ---- */

typedef struct run_state {
    const trainer_config *cfg;
    const ops_table *ops;
    trainer_model *m;
    const trainer_hooks *hooks;
    float *adam_m, *adam_v; /* backend memory */
    trainer_ckpt_header hd; /* the state after the last completed step */
    int64_t last_saved;     /* step of the newest checkpoint on disk (-1: none) */
    int rank, world;
    bool sharded;           /* ZeRO-1: adam_m, adam_v hold [shard[rank], shard[rank + 1]) only */
    int64_t *shard;         /* [world + 1] */
} run_state;

/* ZeRO-1: rank 0 gathers every rank's piece of m and v (a collective: every rank comes here at
 * the same step), then writes the one checkpoint, the same file an unsharded run writes */
static int save_checkpoint_sharded(run_state *s) {
    const int64_t n = s->m->n_params, lo = s->shard[s->rank], hi = s->shard[s->rank + 1];
    size_t nb = (size_t)n * sizeof(float);
    host_state hs = {malloc(nb), malloc(nb), malloc(nb)};
    int rc = (hs.params && hs.m && hs.v) ? 0 : err_set(ERR_STAGE, "out of memory for a checkpoint");
    if (hs.m && hs.v) {
        s->ops->download(hs.m + lo, s->adam_m, (size_t)(hi - lo) * sizeof(float));
        s->ops->download(hs.v + lo, s->adam_v, (size_t)(hi - lo) * sizeof(float));
        int c = coll_gather_f32(hs.m, s->shard, 0); /* every rank joins, failed allocation or not */
        if (!c) c = coll_gather_f32(hs.v, s->shard, 0);
        if (!rc) rc = c;
    }
    if (!rc && s->rank == 0) {
        s->ops->download(hs.params, s->m->params, nb);
        rc = ckpt_write(s->cfg->work_dir, &s->hd, &hs);
    }
    host_state_free(&hs);
    if (rc) return err_wrap("cannot write the checkpoint of step %lld", (long long)s->hd.step);
    s->last_saved = s->hd.step;
    if (s->rank == 0) ckpt_prune(s->cfg->work_dir, 2);
    return 0;
}

static int save_checkpoint(run_state *s) {
    if (!s->cfg->work_dir || s->last_saved == s->hd.step) return 0;
    if (s->sharded) return save_checkpoint_sharded(s);
    if (s->rank != 0) { /* rank 0 writes; the others' state is the same bytes */
        s->last_saved = s->hd.step;
        return 0;
    }
    size_t nb = (size_t)s->m->n_params * sizeof(float);
    host_state hs = {malloc(nb), malloc(nb), malloc(nb)};
    int rc = (hs.params && hs.m && hs.v) ? 0 : err_set(ERR_STAGE, "out of memory for a checkpoint");
    if (!rc) {
        s->ops->download(hs.params, s->m->params, nb);
        s->ops->download(hs.m, s->adam_m, nb);
        s->ops->download(hs.v, s->adam_v, nb);
        rc = ckpt_write(s->cfg->work_dir, &s->hd, &hs);
    }
    host_state_free(&hs);
    if (rc) return err_wrap("cannot write the checkpoint of step %lld", (long long)s->hd.step);
    s->last_saved = s->hd.step;
    ckpt_prune(s->cfg->work_dir, 2);
    return 0;
}

/* Load the newest usable checkpoint into the model and optimizer; 0 with hd.step = 0 if none. */
static int try_resume(run_state *s, uint64_t chash) {
    int64_t *steps;
    int n = ckpt_list(s->cfg->work_dir, &steps);
    int rc = 0;
    for (int i = 0; i < n; i++) {
        char *p = ckpt_path(s->cfg->work_dir, steps[i]);
        trainer_ckpt_header hd;
        host_state hs = {0};
        int r = ckpt_read(p, &hd, &hs);
        if (!r && (hd.config_hash != chash || hd.n_params != s->m->n_params)) {
            r = err_set(ERR_DATA, "'%s' was written by a different configuration", p);
        }
        if (r) {
            hook_log(s->hooks, "skipping checkpoint: %s", err_msg());
            err_clear();
        } else {
            size_t nb = (size_t)hd.n_params * sizeof(float);
            s->ops->upload(s->m->params, hs.params, nb);
            int64_t lo = s->sharded ? s->shard[s->rank] : 0, hi = s->sharded ? s->shard[s->rank + 1] : hd.n_params;
            s->ops->upload(s->adam_m, hs.m + lo, (size_t)(hi - lo) * sizeof(float));
            s->ops->upload(s->adam_v, hs.v + lo, (size_t)(hi - lo) * sizeof(float));
            s->hd = hd;
            s->last_saved = hd.step;
            hook_log(s->hooks, "resuming from checkpoint step %lld (%s)", (long long)hd.step, p);
        }
        host_state_free(&hs);
        free(p);
        if (!r) break;
    }
    free(steps);
    return rc;
}

static int run_eval(run_state *s, const train_data *val, int64_t step, double *loss_out) {
    double loss;
    int64_t nt;
    int rc = trainer_evaluate_shared(s->m, val, s->cfg->micro_batch_size, s->rank, s->world, &loss, &nt);
    if (rc) return rc;
    double ppl = exp(loss);
    hook_log(s->hooks, "eval step %lld | val_loss %.4f | ppl %.3f | %lld tokens", (long long)step, loss, ppl,
             (long long)nt);
    json_t *ev = json_pack("{s:I, s:f, s:f, s:I}", "step", (json_int_t)step, "val_loss", loss, "perplexity", ppl,
                           "tokens", (json_int_t)nt);
    hook_event(s->hooks, "eval", ev);
    *loss_out = loss;
    if (s->rank == 0 && s->hooks && s->hooks->on_eval && (rc = s->hooks->on_eval(s->hooks->ud, step, loss, ppl)))
        return rc;
    return 0;
}

static void format_rate(char *buf, size_t n, double v) {
    if (v >= 1e6) snprintf(buf, n, "%.1fM", v / 1e6);
    else if (v >= 1e3) snprintf(buf, n, "%.1fk", v / 1e3);
    else snprintf(buf, n, "%.0f", v);
}

static void log_step(run_state *s, const trainer_step_info *in) {
    char rate[32];
    format_rate(rate, sizeof rate, in->tokens_per_s);
    int64_t every = s->cfg->logging_steps > 0 ? s->cfg->logging_steps : 1;
    if (in->step % every == 0 || in->step == 1 || in->step == in->total_steps)
        hook_log(s->hooks, "step %lld/%lld | loss %.4f | gnorm %.3f | lr %.2e | %.0f ms | %s tok/s", (long long)in->step,
                 (long long)in->total_steps, in->loss, in->grad_norm, in->lr, in->ms, rate);
    json_t *ev = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:I, s:I, s:f}", "step", (json_int_t)in->step,
                           "total_steps", (json_int_t)in->total_steps, "loss", in->loss, "grad_norm", in->grad_norm,
                           "lr", in->lr, "ms", in->ms, "tokens_per_s", in->tokens_per_s, "tokens",
                           (json_int_t)in->tokens, "target_tokens", (json_int_t)in->target_tokens, "epoch", in->epoch);
    hook_event(s->hooks, "step", ev);
    if (s->hooks && s->hooks->progress) s->hooks->progress(s->hooks->ud, (double)in->step, (double)in->total_steps);
}

/* ---- the gradient all-reduce in buckets, started as the backward finishes each ----
 * A bucket is a run of whole decoder layers, from the top, closed once it holds bucket_bytes of
 * what travels (fp32, or fp64 for the exact sums); it is issued when the backward has finished
 * its lowest layer. */

typedef struct buckets {
    trainer_model *m;
    int n;             /* buckets a step */
    int *lo, *hi;      /* bucket k: layers lo[k] .. hi[k], k = 0 the top */
    int next;          /* layers finished this step: layer n_layers-1-next is due */
    int cur;           /* buckets issued this step */
    double *acc;       /* exact sums (host): layer l's gradients are added as it finishes */
    int64_t max_elems; /* the largest bucket */
    int rc;
} buckets;

static bool buckets_usable(const trainer_model *m) {
    return m->set_layer_done && m->n_layers > 0 && m->layer_off && m->layer_off[0] == 0 &&
           m->layer_off[m->n_layers] == m->n_params;
}

static int buckets_plan(buckets *b, trainer_model *m, int64_t cap_bytes, size_t elem) {
    b->m = m;
    b->lo = malloc(2 * sizeof(int) * (size_t)m->n_layers);
    if (!b->lo) return err_set(ERR_STAGE, "out of memory");
    b->hi = b->lo + m->n_layers;
    b->n = 0;
    int64_t have = 0;
    for (int l = m->n_layers - 1; l >= 0; l--) {
        if (have == 0) b->hi[b->n] = l;
        have += m->layer_off[l + 1] - m->layer_off[l];
        if (l == 0 || cap_bytes <= 0 || have * (int64_t)elem >= cap_bytes) {
            b->lo[b->n++] = l;
            if (have > b->max_elems) b->max_elems = have;
            have = 0;
        }
    }
    return 0;
}

static void bucket_issue(buckets *b, int layer) {
    trainer_model *m = b->m;
    int expect = m->n_layers - 1 - b->next;
    if (layer != expect) { /* the model finished layers in another order: take the due one anyway */
        if (!b->rc) b->rc = err_set(ERR_STAGE, "internal: layer %d's gradients came before layer %d's", layer, expect);
        layer = expect;
    }
    if (b->acc) /* the final micro-batch's share of this layer joins the exact sums */
        for (int64_t i = m->layer_off[layer]; i < m->layer_off[layer + 1]; i++) b->acc[i] += (double)m->grads[i];
    b->next++;
    if (b->cur >= b->n || layer != b->lo[b->cur]) {
        if (b->acc) coll_grads_progress();
        return;
    }
    int64_t off = m->layer_off[layer], n = m->layer_off[b->hi[b->cur] + 1] - off;
    int c = b->acc ? coll_allreduce_grads_f64(b->acc + off, n) : coll_allreduce_grads(m->grads + off, n);
    if (c && !b->rc) b->rc = c;
    b->cur++;
}

static void bucket_ready(void *ud, int layer) { bucket_issue(ud, layer); }

/* the divergence error: every rank sees the same loss and norm, so each reaches it at once */
static int diverged(run_state *s, int64_t step, double loss, double gnorm) {
    char where[512] = "no checkpoint was written yet";
    if (s->last_saved >= 0)
        snprintf(where, sizeof where, "the newest checkpoint is step %lld in '%s' (%s)", (long long)s->last_saved,
                 s->cfg->work_dir,
                 s->last_saved == step ? "the weights this step started from" : "written before the divergence");
    char lbuf[32], gbuf[32]; /* "nan", not printf's "-nan" */
    if (isnan(loss)) snprintf(lbuf, sizeof lbuf, "nan"); else snprintf(lbuf, sizeof lbuf, "%g", loss);
    if (isnan(gnorm)) snprintf(gbuf, sizeof gbuf, "nan"); else snprintf(gbuf, sizeof gbuf, "%g", gnorm);
    /* JSON has no NaN or Inf: a non-finite value is a null */
    json_t *ev = json_pack("{s:I, s:o, s:o, s:I}", "step", (json_int_t)(step + 1), "loss",
                           isfinite(loss) ? json_real(loss) : json_null(), "grad_norm",
                           isfinite(gnorm) ? json_real(gnorm) : json_null(), "last_checkpoint", (json_int_t)s->last_saved);
    hook_event(s->hooks, "diverged", ev);
    return err_set(ERR_DIVERGED,
                   "training diverged at step %lld: loss %s, gradient norm %s; %s; lower learning_rate or set "
                   "max_grad_norm",
                   (long long)(step + 1), lbuf, gbuf, where);
}

/* The loop's own state beside run_state: the data order, the step's rows, the sums and the
 * dropout seeds. */
typedef struct step_loop {
    const train_data *train, *val;
    data_order order;
    train_batch b;
    buckets bk;
    int64_t *idx;         /* [global_rows] the rows of the step, every rank's */
    int64_t *row_targets; /* [train rows] target tokens a row: the step's normaliser, known before it runs */
    double *acc;          /* [n_params] exact: the fp64 sum of the micro-batches' gradients */
    double *mb_loss;      /* [accum * world] the loss of each micro-batch, in the global order */
    rng_state rng;        /* dropout seeds, as of the last completed step */
    bool exact;           /* the CPU backend: gradients summed in fp64 (trainer.h) */
    bool reduce, bucketed;
    int mb, accum;
    int64_t local_rows, global_rows, total;
    size_t nb;            /* bytes of the trainable parameters */
    int64_t n_opt, opt_lo; /* the parameters this rank's optimizer updates */
} step_loop;

/* Buffers, the optimizer state (this rank's shard of it), the data order and the checks that need
 * the split: before any step. */
static int loop_setup(run_state *s, step_loop *L) {
    trainer_model *m = s->m;
    const ops_table *ops = s->ops;
    const int world = s->world;
    L->idx = malloc((size_t)L->global_rows * sizeof *L->idx);
    L->acc = L->exact ? malloc((size_t)m->n_params * sizeof *L->acc) : NULL;
    L->mb_loss = calloc((size_t)L->accum * (size_t)world, sizeof *L->mb_loss);
    s->shard = malloc(((size_t)world + 1) * sizeof *s->shard);
    if (!L->idx || (L->exact && !L->acc) || !L->mb_loss || !s->shard)
        return err_set(ERR_STAGE, "out of memory for the training state of %lld parameters", (long long)m->n_params);
    for (int k = 0; k <= world; k++) {
        int64_t lo, hi;
        coll_shard(m->n_params, world, k < world ? k : world - 1, &lo, &hi);
        s->shard[k] = k < world ? lo : hi;
    }
    L->n_opt = s->sharded ? s->shard[s->rank + 1] - s->shard[s->rank] : m->n_params;
    L->opt_lo = s->sharded ? s->shard[s->rank] : 0;
    const size_t nb_opt = (size_t)(L->n_opt > 0 ? L->n_opt : 1) * sizeof(float);
    s->adam_m = m->adam_m ? m->adam_m : ops->alloc(nb_opt);
    s->adam_v = m->adam_v ? m->adam_v : ops->alloc(nb_opt);
    if (m->adam_m) ops->zero(m->adam_m, nb_opt);
    if (m->adam_v) ops->zero(m->adam_v, nb_opt);
    if (!s->adam_m || !s->adam_v)
        return err_set(ERR_STAGE, "out of memory for the optimizer state of %lld parameters", (long long)L->n_opt);
    if (world > 1 && L->global_rows > L->train->n_rows)
        return err_set(ERR_RECIPE,
                       "the global batch of %lld rows (micro_batch_size %d x gradient_accumulation_steps %d x %d ranks) "
                       "is larger than the train split (%lld rows): run fewer ranks or lower the batch",
                       (long long)L->global_rows, L->mb, L->accum, world, (long long)L->train->n_rows);
    int rc = order_init(&L->order, L->train->n_rows, s->cfg->seed);
    if (rc) return rc;
    /* target tokens per row, known before a step runs: the step's normaliser */
    L->row_targets = malloc((size_t)L->train->n_rows * sizeof *L->row_targets);
    if (!L->row_targets) return err_set(ERR_STAGE, "out of memory");
    for (int64_t r = 0; r < L->train->n_rows; r++) L->row_targets[r] = train_data_row_targets(L->train, r);
    return 0;
}

/* The run starts where the newest checkpoint left it (or at step 0) and says what it will do. */
static int loop_start(run_state *s, step_loop *L, uint64_t chash, trainer_result *res) {
    const trainer_config *cfg = s->cfg;
    const trainer_hooks *hooks = s->hooks;
    const int world = s->world, rank = s->rank, mb = L->mb, accum = L->accum;
    const int64_t total = L->total, n_rows = L->train->n_rows, n_params = s->m->n_params;
    rng_seed(&L->rng, rng_u64(cfg->seed, rng_stream_of("dropout"), 0));
    s->hd = (trainer_ckpt_header){.total_steps = total, .n_params = n_params, .config_hash = chash,
                                  .first_val_loss = NAN, .last_val_loss = NAN, .last_train_loss = NAN};
    memcpy(s->hd.rng, L->rng.s, sizeof L->rng.s);
    int rc;
    if (cfg->work_dir && (rc = try_resume(s, chash))) return rc;
    memcpy(L->rng.s, s->hd.rng, sizeof L->rng.s);
    res->resumed_from = s->hd.step;
    /* every rank set up (or failed to) and read the same checkpoint before rank 0 writes one */
    if (world > 1 && (rc = coll_agree(0, NULL))) return rc;

    if (world > 1)
        hook_log(hooks, "training %lld steps: %d row%s x %d accumulation x %d ranks (rank %d), %lld rows, %lld "
                        "trainable parameters%s",
                 (long long)total, mb, mb == 1 ? "" : "s", accum, world, rank, (long long)n_rows,
                 (long long)n_params, s->hd.step ? " (resumed)" : "");
    else
        hook_log(hooks, "training %lld steps: %d row%s x %d accumulation, %lld rows, %lld trainable parameters%s",
                 (long long)total, mb, mb == 1 ? "" : "s", accum, (long long)n_rows, (long long)n_params,
                 s->hd.step ? " (resumed)" : "");
    if (s->sharded)
        hook_log(hooks, "optimizer state sharded over %d ranks (ZeRO-1): AdamW m and v %.2f MiB a rank instead of "
                        "%.2f MiB (rank %d updates parameters %lld..%lld, then every rank gathers them)",
                 world, 2.0 * (double)L->n_opt * 4 / 1048576.0, 2.0 * (double)n_params * 4 / 1048576.0, rank,
                 (long long)s->shard[rank], (long long)s->shard[rank + 1]);
    return 0;
}

/* The gradients travel (several ranks, or NCCL asked for on one to measure its path) in one
 * bucket a layer while the backward goes on, or in one piece after it for a model without layers. */
static int loop_buckets(run_state *s, step_loop *L) {
    trainer_model *m = s->m;
    const bool exact = L->exact;
    L->reduce = s->world > 1 || coll_nccl_active();
    L->bucketed = L->reduce && buckets_usable(m);
    if (!L->bucketed) return 0;
    int rc = buckets_plan(&L->bk, m, s->cfg->bucket_bytes, exact ? sizeof(double) : sizeof(float));
    if (rc) return rc;
    L->bk.acc = L->acc;
    char size[64] = "a layer each";
    if (s->cfg->bucket_bytes > 0)
        snprintf(size, sizeof size, "whole layers, at least %.2f MiB", (double)s->cfg->bucket_bytes / 1048576.0);
    hook_log(s->hooks, "gradients: %d bucket%s a step (%s; the largest %.3f MiB; %s sums)", L->bk.n,
             L->bk.n == 1 ? "" : "s", size, (double)L->bk.max_elems * (exact ? 8.0 : 4.0) / 1048576.0,
             exact ? "exact fp64" : "fp32");
    return 0;
}

/* This rank's micro-batches, forward and backward, gradients accumulated (exact: each on its own,
 * added in fp64; bucketed: sent layer by layer while the final backward goes on). Alone, an
 * interrupt between micro-steps sets *stop. */
static int step_gradients(run_state *s, step_loop *L, const int64_t *mine, float grad_scale, rng_state *step_rng,
                          int64_t *n_tokens, bool *stop) {
    trainer_model *m = s->m;
    const ops_table *ops = s->ops;
    const int world = s->world, rank = s->rank, accum = L->accum;
    const bool exact = L->exact, bucketed = L->bucketed;
    int rc = 0;
    L->bk.next = L->bk.cur = 0;
    L->bk.rc = 0;
    for (int a = 0; a < accum && !rc; a++) {
        if (world == 1 && hook_interrupted(s->hooks)) { /* alone: stop between micro-steps */
            *stop = true;
            break;
        }
        const bool last = a == accum - 1;
        if (bucketed && last) m->set_layer_done(m->self, bucket_ready, &L->bk); /* the final pass */
        uint64_t dseed = rng_next(step_rng);
        double ls = 0;
        if ((rc = train_data_batch(L->train, mine + (int64_t)a * L->mb, L->mb, &L->b))) break;
        if (exact && a > 0) ops->zero(m->grads, L->nb); /* each micro-batch's gradient on its own */
        if ((rc = m->train_step(m->self, &L->b, grad_scale, dseed, &ls))) break;
        L->mb_loss[(int64_t)rank * accum + a] = ls;
        *n_tokens += L->b.T;
        if (exact && !(bucketed && last))
            for (int64_t i = 0; i < m->n_params; i++) L->acc[i] += (double)m->grads[i];
    }
    if (bucketed) {
        m->set_layer_done(m->self, NULL, NULL);
        /* a rank that failed before its final pass still issues every bucket: all ranks pass the
         * same collectives */
        while (world > 1 && L->bk.next < m->n_layers) bucket_issue(&L->bk, m->n_layers - 1 - L->bk.next);
        int w = coll_grads_wait();
        if (!rc) rc = L->bk.rc ? L->bk.rc : w;
    }
    return rc;
}

/* The sums over the ranks: the gradients (when not sent in buckets), the micro-batches' losses
 * and the tokens; exact, the one rounding of the fp64 sum. Every rank joins, failed or not (rc:
 * its own failure so far, which shows at the step boundary). */
static int step_reduce(run_state *s, step_loop *L, int rc, int64_t *n_tokens) {
    trainer_model *m = s->m;
    const int world = s->world, accum = L->accum;
    if (L->reduce && !L->bucketed) {
        int c = L->exact ? coll_allreduce_grads_f64(L->acc, m->n_params) : coll_allreduce_grads(m->grads, m->n_params);
        int w = coll_grads_wait();
        if (!rc) rc = c ? c : w;
    }
    if (L->exact) /* one rounding, of the exact sum over every micro-batch of every rank */
        for (int64_t i = 0; i < m->n_params; i++) m->grads[i] = (float)L->acc[i];
    if (world > 1) {
        /* each micro-batch's loss sits in its own slot (zeros elsewhere: the sum is exact), and
         * is added in the global order, as one process adds them */
        double tok = (double)*n_tokens;
        int c = coll_allreduce_f64(L->mb_loss, accum * world);
        if (!c) c = coll_allreduce_f64(&tok, 1);
        if (!rc) rc = c;
        *n_tokens = (int64_t)tok;
    }
    return rc;
}

/* The update: a diverged step refused, gradients clipped, the learning rate (schedule, then the
 * lr hook), AdamW on this rank's piece; sharded, every rank then gathers the others' pieces. */
static int step_update(run_state *s, const step_loop *L, int64_t step, double loss, double *gnorm, double *lr) {
    const trainer_config *cfg = s->cfg;
    const ops_table *ops = s->ops;
    const trainer_hooks *hooks = s->hooks;
    trainer_model *m = s->m;
    int rc;
    *gnorm = sqrt(ops->sum_squares(m->grads, m->n_params));
    if (!isfinite(loss) || !isfinite(*gnorm)) return diverged(s, step, loss, *gnorm);
    if (cfg->max_grad_norm > 0 && *gnorm > cfg->max_grad_norm)
        ops->scale(m->grads, m->n_params, (float)(cfg->max_grad_norm / (*gnorm + 1e-6)));
    *lr = trainer_schedule_lr(cfg->schedule, cfg->learning_rate, step, cfg->warmup_steps, L->total);
    if (hooks && hooks->lr && (rc = hooks->lr(hooks->ud, step, L->total, cfg->learning_rate, lr))) return rc;
    /* sharded: this rank's piece only (AdamW is elementwise: the same bytes as the whole
     * update's), then every rank gathers the others' pieces */
    if (L->n_opt > 0)
        ops->adamw(m->params + L->opt_lo, m->grads + L->opt_lo, s->adam_m, s->adam_v, L->n_opt, (float)*lr,
                   (float)cfg->adam_beta1, (float)cfg->adam_beta2, (float)cfg->adam_epsilon,
                   (float)cfg->weight_decay, (int)(step + 1));
    if (s->sharded && (rc = coll_allgather_f32(m->params, s->shard))) return rc;
    ops->sync();
    return 0;
}

/* One optimizer step over the global batch, then its log line, evaluation, checkpoint and
 * on_step hook. Alone, an interrupt during it sets *stop and the partial step is dropped. With
 * several ranks a failure still joins the step's collectives and is returned, to be agreed on at
 * the next step boundary. */
static int train_one_step(run_state *s, step_loop *L, trainer_result *res, bool *stop) {
    const trainer_config *cfg = s->cfg;
    const trainer_hooks *hooks = s->hooks;
    trainer_model *m = s->m;
    const int world = s->world, rank = s->rank, accum = L->accum;
    double t0 = clock_now_s();
    const int64_t step = s->hd.step; /* 0-based index of the step being taken */
    int64_t n_targets = 0, n_tokens = 0;
    for (int64_t k = 0; k < L->global_rows; k++) {
        L->idx[k] = order_row(&L->order, s->hd.cursor + k);
        n_targets += L->row_targets[L->idx[k]];
    }
    const int64_t *mine = L->idx + (int64_t)rank * L->local_rows; /* this rank's share */
    /* a step with no target token at all (fully masked rows) still advances: zero gradient */
    const float grad_scale = n_targets ? 1.0f / (float)n_targets : 0.0f;
    s->ops->zero(m->grads, L->nb);
    if (L->exact) memset(L->acc, 0, (size_t)m->n_params * sizeof *L->acc);
    memset(L->mb_loss, 0, (size_t)accum * (size_t)world * sizeof *L->mb_loss);
    rng_state step_rng = L->rng;
    for (int k = 0; k < rank * accum; k++) rng_next(&step_rng); /* the seeds of the ranks before */
    int rc = step_gradients(s, L, mine, grad_scale, &step_rng, &n_tokens, stop);
    if (rc && world == 1) return rc;
    if (world == 1 && (*stop || hook_interrupted(hooks))) { /* the partial step is dropped */
        *stop = true;
        return 0;
    }
    for (int k = (rank + 1) * accum; k < world * accum; k++) rng_next(&step_rng); /* and of those after */
    if ((rc = step_reduce(s, L, rc, &n_tokens))) return rc;
    double loss_sum = 0;
    for (int k = 0; k < accum * world; k++) loss_sum += L->mb_loss[k];

    double loss = n_targets ? loss_sum / (double)n_targets : 0.0, gnorm = 0, lr = 0;
    if ((rc = step_update(s, L, step, loss, &gnorm, &lr))) return rc;

    L->rng = step_rng;
    s->hd.step = step + 1;
    s->hd.cursor += L->global_rows;
    s->hd.tokens += n_tokens;
    s->hd.last_train_loss = loss;
    memcpy(s->hd.rng, L->rng.s, sizeof L->rng.s);
    res->tokens += n_tokens;

    double secs = clock_now_s() - t0;
    trainer_step_info info = {.step = s->hd.step, .total_steps = L->total, .loss = loss, .grad_norm = gnorm, .lr = lr,
                              .ms = secs * 1e3, .tokens_per_s = secs > 0 ? (double)n_tokens / secs : 0,
                              .tokens = n_tokens, .target_tokens = n_targets,
                              .epoch = (double)s->hd.cursor / (double)L->train->n_rows};
    log_step(s, &info);
    if (L->val && cfg->eval_steps > 0 && s->hd.step % cfg->eval_steps == 0 && s->hd.step < L->total)
        rc = run_eval(s, L->val, s->hd.step, &s->hd.last_val_loss);
    if (!rc && cfg->save_steps > 0 && s->hd.step % cfg->save_steps == 0 && s->hd.step < L->total)
        rc = save_checkpoint(s);
    if (!rc && rank == 0 && hooks && hooks->on_step) rc = hooks->on_step(hooks->ud, &info);
    return rc;
}

/* The end: interrupted, a checkpoint to resume from and ERR_INTERRUPTED; finished, the final
 * validation loss and the last checkpoint. */
static int loop_end(run_state *s, const step_loop *L, bool interrupted) {
    const trainer_config *cfg = s->cfg;
    int rc;
    if (interrupted) {
        if ((rc = save_checkpoint(s))) return rc;
        rc = err_set(ERR_INTERRUPTED, "interrupted at step %lld of %lld%s%s%s", (long long)s->hd.step,
                     (long long)L->total, cfg->work_dir ? ": checkpoint saved in '" : "",
                     cfg->work_dir ? cfg->work_dir : "", cfg->work_dir ? "'; run again to resume" : "");
        hook_event(s->hooks, "interrupted", json_pack("{s:I}", "step", (json_int_t)s->hd.step));
        return rc;
    }
    if (L->val && (rc = run_eval(s, L->val, s->hd.step, &s->hd.last_val_loss))) return rc;
    return save_checkpoint(s);
}

static void loop_free(run_state *s, step_loop *L) {
    free(L->idx);
    free(L->row_targets);
    free(L->order.perm);
    free(L->acc);
    free(L->mb_loss);
    free(s->shard);
    free(L->bk.lo);
    train_batch_free(&L->b);
    if (s->adam_m && s->adam_m != s->m->adam_m) s->ops->free(s->adam_m);
    if (s->adam_v && s->adam_v != s->m->adam_v) s->ops->free(s->adam_v);
}

int trainer_run(const trainer_config *cfg, const ops_table *ops, trainer_model *m, const train_data *train,
                const train_data *val, const trainer_hooks *hooks, trainer_result *res) {
    memset(res, 0, sizeof *res);
    res->first_val_loss = res->final_val_loss = res->final_train_loss = NAN;
    if (cfg->micro_batch_size < 1 || cfg->gradient_accumulation_steps < 1)
        return err_set(ERR_RECIPE, "micro_batch_size and gradient_accumulation_steps must be at least 1");
    if (train->n_rows < 1) return err_set(ERR_DATA, "the train split has no rows: nothing to train on");
    if (val && val->n_rows < 1) val = NULL;

    const int world = cfg->world > 1 ? cfg->world : 1, rank = world > 1 ? cfg->rank : 0;
    /* the CPU backend (gradients in host memory) sums the micro-batches' gradients in fp64, so that
     * the sum is the same whatever the grouping: N ranks give one process's bytes (trainer.h) */
    run_state s = {.cfg = cfg, .ops = ops, .m = m, .hooks = hooks, .last_saved = -1, .rank = rank, .world = world,
                   .sharded = cfg->shard_optimizer && world > 1};
    step_loop L = {.train = train, .val = val, .exact = !ops->own_memory, .mb = cfg->micro_batch_size,
                   .accum = cfg->gradient_accumulation_steps, .total = trainer_total_steps(cfg, train->n_rows),
                   .nb = (size_t)m->n_params * sizeof(float)};
    L.local_rows = (int64_t)L.mb * L.accum;
    L.global_rows = L.local_rows * world;
    /* the number of ranks is left out on purpose: a run resumes with another number of ranks */
    const uint64_t chash = config_hash(cfg, m->n_params, train);

    int rc = loop_setup(&s, &L);
    if (!rc) rc = loop_start(&s, &L, chash, res);
    if (rc) goto out;
    if (val && s.hd.step == 0) { /* the loss the run starts from */
        rc = run_eval(&s, val, 0, &s.hd.first_val_loss);
        s.hd.last_val_loss = s.hd.first_val_loss;
        if (rc && world == 1) goto out;
    }
    int c = loop_buckets(&s, &L);
    if (c) {
        rc = c;
        goto out;
    }
    double t_run = clock_now_s();
    bool interrupted = false;
    for (;;) {
        /* the step boundary: with several ranks, everyone learns here whether anyone failed or
         * was interrupted; a failure after this point waits for the next boundary */
        int intr = hook_interrupted(hooks);
        if (world > 1) rc = coll_agree(rc, &intr);
        if (rc) goto out;
        if (intr) {
            interrupted = true;
            break;
        }
        if (s.hd.step >= L.total) break;
        bool stop = false;
        rc = train_one_step(&s, &L, res, &stop);
        if (rc && world == 1) goto out;
        if (stop) {
            interrupted = true;
            break;
        }
    }
    res->seconds = clock_now_s() - t_run;
    rc = loop_end(&s, &L, interrupted);

out:
    if (m->set_layer_done) m->set_layer_done(m->self, NULL, NULL);
    res->steps = s.hd.step;
    res->first_val_loss = s.hd.first_val_loss;
    res->final_val_loss = s.hd.last_val_loss;
    res->final_train_loss = s.hd.last_train_loss;
    if (hooks && hooks->progress) hooks->progress(hooks->ud, -1, -1); /* done */
    loop_free(&s, &L);
    return rc;
}
