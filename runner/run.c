/* run.c: the recipe executor (see run.h). */
#define _GNU_SOURCE
#include "runner/run.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/collective.h"
#include "core/err.h"
#include "core/events.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "core/log.h"
#include "core/progress.h"
#include "runner/cache.h"
#include "model/device.h"
#include "runner/gates.h"
#include "runner/outdir.h"
#include "runner/plan.h"
#include "runner/ranks.h"
#include "runner/recipe.h"
#include "runner/report.h"
#include "runner/runrec.h"
#include "runner/tensorboard.h"
#include "runner/version.h"
#include "runner/yaml_tree.h"

static volatile int interrupted;

static void on_signal(int sig) {
    if (interrupted) { /* second Ctrl-C: stop now */
        signal(sig, SIG_DFL);
        raise(sig);
    }
    interrupted = 1;
}

enum { ST_PENDING, ST_RUNNING, ST_DONE, ST_FAILED };

typedef struct runner {
    recipe *r;
    plan p;
    cache c;
    events *ev;
    hooks *hooks; /* for on_stage_end and on_run_end */
    char *run_dir;
    int *state;
    int failed_rc;
    char *failed_msg;
    int n_ran, n_cached;
    json_t *history;   /* summaries of this recipe's earlier runs, oldest first (max_regression) */
    json_t *gate_rows; /* gates.h rows, in the order they were checked */
    tb_sink *tb;       /* report_to: [tensorboard] */
    int notify_failures; /* on_stage_end failures: warned about; after a few, not called again */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} runner;

static void utc_stamp(char *buf, size_t n, bool compact) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, compact ? "%Y%m%dT%H%M%SZ" : "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* print and qlora.log from on_stage_end / on_run_end: the console and the run's events */
static void run_hook_log(void *ud, const char *level, const char *msg) {
    runner *R = ud;
    if (!strcmp(level, "debug")) return;
    if (!strcmp(level, "warn") || !strcmp(level, "error")) warnf("hook: %s", msg);
    else outf("  hook: %s", msg);
    if (R->ev) events_emit(R->ev, "hook_log", json_pack("{s:s, s:s}", "level", level, "message", msg));
}

static void wait_note(void *arg) { notef("waiting: another run is computing stage '%s'", (const char *)arg); }

/* Another run may have produced the stage while we waited for its lock: then it is cached. */
static bool made_meanwhile(runner *R, int i) {
    recipe_stage *s = &R->r->stages[i];
    plan_stage *ps = &R->p.st[i];
    if (ps->forced || coll_world() > 1) return false;
    json_t *m = NULL;
    char *why = NULL;
    bool hit = cache_lookup(&R->c, s->kind->name, ps->key, &m, &why) == 0;
    if (hit) {
        ps->manifest = m;
        ps->status = PLAN_CACHED;
    }
    free(why);
    return hit;
}

/* The stage's log in the run record: <stage>.log, or <stage>.rankN.log (the step log of another
 * rank). NULL if it cannot be opened. */
static FILE *open_stage_log(const runner *R, const recipe_stage *s, char **logpath) {
    char name[128];
    if (coll_rank() == 0) snprintf(name, sizeof name, "%s.log", s->name);
    else snprintf(name, sizeof name, "%s.rank%d.log", s->name, coll_rank());
    *logpath = fs_join(R->run_dir, name);
    return fopen(*logpath, "a");
}

/* What the stage's run sees: its params, its inputs' artifacts, its output and work folders, the
 * run's log, events and interrupt flag. */
static void stage_ctx_init(runner *R, int i, stage_ctx *ctx, char *tmp, char *work, FILE *log) {
    recipe_stage *s = &R->r->stages[i];
    ctx->name = s->name;
    ctx->kind = s->kind;
    ctx->params = s->params;
    ctx->out_dir = tmp;
    ctx->recipe_path = R->r->path;
    ctx->recipe_dir = R->r->dir;
    ctx->cache_dir = R->c.root;
    ctx->work_dir = work;
    ctx->seed = R->r->seed;
    ctx->device = R->p.device;
    ctx->hooks = s->hooks;
    ctx->log = log;
    ctx->events = R->ev;
    ctx->interrupted = &interrupted;
    ctx->jobs = (int)sysconf(_SC_NPROCESSORS_ONLN);
    for (int k = 0; k < s->n_refs; k++) {
        int t = s->refs[k].target;
        stage_input *in = &ctx->inputs[ctx->n_inputs++];
        in->role = s->refs[k].role;
        in->stage = R->r->stages[t].name;
        in->kind = R->r->stages[t].kind->name;
        in->dir = cache_artifact_dir(&R->c, in->kind, R->p.st[t].key);
        in->manifest = R->p.st[t].manifest;
    }
    ctx->metrics = json_object();
    ctx->report = json_object();
}

static void stage_ctx_release(stage_ctx *ctx) {
    for (int k = 0; k < ctx->n_inputs; k++) free((char *)ctx->inputs[k].dir);
    json_decref(ctx->metrics);
    json_decref(ctx->report);
    json_decref(ctx->hook_files);
}

/* The artifact's manifest.json: what made it (kind, key, params, inputs), what it measured,
 * when, where and with which program. */
static json_t *stage_manifest(const runner *R, int i, const stage_ctx *ctx, const char *started, double secs) {
    const recipe_stage *s = &R->r->stages[i];
    const plan_stage *ps = &R->p.st[i];
    char finished[32];
    utc_stamp(finished, sizeof finished, false);
    json_t *m = json_object();
    json_object_set_new(m, "stage", json_string(s->name));
    json_object_set_new(m, "recipe", json_string(R->r->name));
    json_object_set_new(m, "kind", json_string(s->kind->name));
    json_object_set_new(m, "kind_version", json_integer(s->kind->version));
    json_object_set_new(m, "key", json_string(ps->key));
    json_object_set(m, "params", s->params);
    json_object_set(m, "key_doc", ps->key_doc);
    json_t *inputs = json_object();
    for (int k = 0; k < s->n_refs; k++) {
        json_t *in = json_object();
        int t = s->refs[k].target;
        json_object_set_new(in, "stage", json_string(R->r->stages[t].name));
        json_object_set_new(in, "kind", json_string(R->r->stages[t].kind->name));
        json_object_set_new(in, "key", json_string(R->p.st[t].key));
        json_object_set_new(inputs, s->refs[k].role, in);
    }
    json_object_set_new(m, "inputs", inputs);
    json_object_set(m, "metrics", ctx->metrics);
    json_object_set(m, "report", ctx->report);
    json_object_set_new(m, "device", json_string(R->p.device));
    json_object_set_new(m, "started", json_string(started));
    json_object_set_new(m, "finished", json_string(finished));
    json_object_set_new(m, "seconds", json_real(secs));
    json_object_set_new(m, "program_version", json_string(QLORA_VERSION));
    json_object_set_new(m, "program", version_json());
    if (json_array_size(ctx->hook_files)) json_object_set_new(m, "hook_files", plan_file_hashes(&R->c, ctx->hook_files));
    return m;
}

/* Rank 0 commits the finished artifact into the cache (the manifest, then the rename), reads its
 * manifest back for the stages after it, drops the work folder and says it is done. */
static int commit_stage(runner *R, int i, stage_ctx *ctx, const char *tmp, const char *work, const char *started,
                        double secs) {
    recipe_stage *s = &R->r->stages[i];
    plan_stage *ps = &R->p.st[i];
    json_t *m = stage_manifest(R, i, ctx, started, secs);
    int rc = cache_commit(&R->c, s->kind->name, ps->key, tmp, m);
    json_decref(m);
    if (rc) return rc;
    char *why = NULL;
    json_decref(ps->manifest); /* a forced stage had the old artifact's manifest */
    ps->manifest = NULL;
    cache_lookup(&R->c, s->kind->name, ps->key, &ps->manifest, &why);
    free(why);
    fs_rm_rf(work);
    err_clear();
    json_t *ev = json_object();
    json_object_set_new(ev, "seconds", json_real(secs));
    json_object_set(ev, "metrics", ctx->metrics);
    stage_event(ctx, "stage_end", ev);
    outf("  %s done in %.1f s", s->name, secs);
    return 0;
}

/* A failure goes into the events and the stage's log, and its message names the stage. */
static void note_stage_failure(stage_ctx *ctx, FILE *log, double secs, int rc) {
    json_t *ev = json_object();
    json_object_set_new(ev, "seconds", json_real(secs));
    json_object_set_new(ev, "code", json_integer(rc));
    json_object_set_new(ev, "error", json_string(err_msg()));
    stage_event(ctx, "stage_failed", ev);
    if (log) fprintf(log, "error: %s\n", err_msg());
    err_wrap("stage '%s'", ctx->name);
}

/* The stage's run into tmp, told in events, then committed (rank 0) or dropped (the others). */
static int run_stage_into(runner *R, int i, char *tmp, char *work, FILE *log) {
    recipe_stage *s = &R->r->stages[i];
    plan_stage *ps = &R->p.st[i];
    stage_ctx ctx = {0};
    stage_ctx_init(R, i, &ctx, tmp, work, log);
    json_t *ev = json_object();
    json_object_set_new(ev, "kind", json_string(s->kind->name));
    json_object_set_new(ev, "key", json_string(ps->key));
    json_object_set_new(ev, "why", json_string(ps->why ? ps->why : ""));
    stage_event(&ctx, "stage_start", ev);
    outf("> %s (%s): %s", s->name, s->kind->name, ps->why ? ps->why : "running");
    char started[32];
    utc_stamp(started, sizeof started, false);
    double t0 = clock_now_s();
    err_clear();
    int rc = s->kind->run(&ctx);
    progress_finish();
    double secs = clock_now_s() - t0;
    if (!rc && interrupted) rc = err_set(ERR_INTERRUPTED, "interrupted");
    if (!rc && coll_rank() != 0) fs_rm_rf(tmp); /* rank 0 commits the artifact; this rank's copy goes */
    else if (!rc) rc = commit_stage(R, i, &ctx, tmp, work, started, secs);
    if (rc) note_stage_failure(&ctx, log, secs, rc);
    stage_ctx_release(&ctx);
    return rc;
}

/* Run one stage (not cached): lock, re-check, temp dir, run, commit. Data parallel, the other
 * ranks of a data_parallel stage run it into a temp dir of their own that nothing commits, and
 * rank 0 runs it even if another run committed it while rank 0 waited for the lock (the other
 * ranks are already running it). */
static int exec_stage(runner *R, int i) {
    recipe_stage *s = &R->r->stages[i];
    plan_stage *ps = &R->p.st[i];
    int lockfd = -1;
    int rc = coll_rank() == 0 ? cache_lock(&R->c, ps->key, &lockfd, wait_note, s->name, &interrupted) : 0;
    if (rc) return rc;
    if (made_meanwhile(R, i)) {
        fs_unlock(&lockfd);
        return 0;
    }
    char *tmp = NULL, *work = cache_work_dir(&R->c, ps->work_key), *logpath = NULL;
    FILE *log = NULL;
    rc = cache_tmp_dir(&R->c, s->kind->name, ps->key, &tmp);
    if (!rc) rc = fs_mkdir_p(work);
    if (!rc) {
        log = open_stage_log(R, s, &logpath);
        rc = run_stage_into(R, i, tmp, work, log);
    }
    if (rc && tmp) { /* a failed stage leaves no temp artifact; its error stays */
        int keep = err_code();
        char msg[4096];
        snprintf(msg, sizeof msg, "%s", err_msg());
        fs_rm_rf(tmp);
        err_set(keep, "%s", msg);
    }
    if (log) fclose(log);
    free(logpath);
    free(tmp);
    free(work);
    fs_unlock(&lockfd);
    return rc;
}

static void record_cached(runner *R, int i) {
    recipe_stage *s = &R->r->stages[i];
    json_t *ev = json_object();
    json_object_set_new(ev, "stage", json_string(s->name));
    json_object_set_new(ev, "kind", json_string(s->kind->name));
    json_object_set_new(ev, "key", json_string(R->p.st[i].key));
    events_emit(R->ev, "stage_cached", ev);
    outf("= %s (%s): cached", s->name, s->kind->name);
    cache_drop_work(&R->c, R->p.st[i].work_key);
}

/* A stage in a run of several ranks (ranks.h): a data_parallel kind on every rank, any other on
 * rank 0 alone; then every rank agrees on the outcome, and the others read the artifact rank 0
 * committed. Every rank passes here for every stage in the same order (one worker thread). */
static int exec_ranked(runner *R, int i, int cached) {
    coll_agree_reset();
    int intr = interrupted;
    int rc = coll_agree(0, &intr); /* a Ctrl-C on one rank between stages stops them all here */
    if (rc) return rc;
    if (intr) {
        interrupted = 1;
        return err_set(ERR_INTERRUPTED, "interrupted: the next run resumes where this one stopped");
    }
    const bool lead = coll_rank() == 0;
    if (cached) {
        if (lead) record_cached(R, i);
        return 0;
    }
    if (lead || R->r->stages[i].kind->data_parallel) rc = exec_stage(R, i);
    rc = coll_agree(rc, NULL);
    plan_stage *ps = &R->p.st[i];
    if (!rc && !lead) {
        char *why = NULL;
        json_decref(ps->manifest);
        ps->manifest = NULL;
        if (cache_lookup(&R->c, R->r->stages[i].kind->name, ps->key, &ps->manifest, &why))
            rc = err_set(ERR_STAGE, "stage '%s' was done by rank 0, but its artifact is not in the cache of this "
                                    "rank (%s): every rank needs the same cache_dir on a shared filesystem",
                         R->r->stages[i].name, why ? why : "missing");
        free(why);
    }
    return coll_agree(rc, NULL);
}

/* Check the gates on stage i (just ended, ran or cached); a failure stops the run. Called
 * with R->mu held. */
static void check_gates(runner *R, int i) {
    const char *name = R->r->stages[i].name;
    if (!gates_on_stage(R->r, name)) return;
    size_t before = json_array_size(R->gate_rows);
    char *why = NULL;
    int failed = gates_check_stage(R->r, name, R->p.st[i].manifest, R->history, R->gate_rows, &why);
    for (size_t k = before; k < json_array_size(R->gate_rows); k++) {
        json_t *row = json_array_get(R->gate_rows, k);
        events_emit(R->ev, "gate", json_deep_copy(row));
        const char *res = json_string_value(json_object_get(row, "result"));
        outf("  gate %s: %s (%s)", json_string_value(json_object_get(row, "gate")), res,
             json_string_value(json_object_get(row, "why")));
    }
    if (failed && !R->failed_rc) {
        R->failed_rc = ERR_GATE;
        if (asprintf(&R->failed_msg, "quality gate failed: %s%s; nothing was exported or published", why ? why : name,
                     failed > 1 ? " (and more: see the run's summary.json)" : "") < 0)
            R->failed_msg = NULL;
    }
    free(why);
}

/* Gated stages outside the selection (--only/--until) are checked from their cached manifest
 * at the start; when one is not cached and a held-back stage would run, refuse. */
static int check_skipped_gates(runner *R) {
    const recipe *r = R->r;
    bool held_selected = false;
    for (int i = 0; i < r->n_stages; i++) held_selected |= R->p.st[i].status != PLAN_SKIP && recipe_stage_held(r, i);
    for (int i = 0; i < r->n_stages; i++) {
        if (R->p.st[i].status != PLAN_SKIP || !gates_on_stage(r, r->stages[i].name)) continue;
        if (R->p.st[i].manifest) check_gates(R, i);
        else if (held_selected)
            return err_set(ERR_USAGE, "stage '%s' has a gate but is neither cached nor selected, so the exports and uploads it holds back cannot run: run it first (drop --only, or use --until %s)",
                           r->stages[i].name, r->stages[i].name);
    }
    return 0;
}

static int ready(runner *R, int i) {
    recipe_stage *s = &R->r->stages[i];
    if (R->r->n_gates && recipe_stage_held(R->r, i)) /* after every gated stage has ended */
        for (int k = 0; k < R->r->n_stages; k++)
            if (gates_on_stage(R->r, R->r->stages[k].name) && R->p.st[k].status != PLAN_SKIP && R->state[k] != ST_DONE)
                return 0;
    for (int k = 0; k < s->n_refs; k++) {
        int t = s->refs[k].target;
        if (R->p.st[t].status == PLAN_SKIP) continue; /* cached input outside the selection */
        if (R->state[t] != ST_DONE) return 0;
    }
    return 1;
}

static void *worker(void *arg) {
    runner *R = arg;
    pthread_mutex_lock(&R->mu);
    for (;;) {
        int pick = -1, pending = 0;
        for (int i = 0; i < R->r->n_stages; i++) {
            if (R->p.st[i].status == PLAN_SKIP || R->state[i] != ST_PENDING) continue;
            pending++;
            if (pick < 0 && ready(R, i)) pick = i;
        }
        /* several ranks: an interrupt stops them at the next agreement, together */
        if (R->failed_rc || (interrupted && coll_world() == 1) || !pending) break;
        if (pick < 0) {
            int running = 0;
            for (int i = 0; i < R->r->n_stages; i++) running += R->state[i] == ST_RUNNING;
            if (!running) break; /* cannot happen with a valid DAG */
            pthread_cond_wait(&R->cv, &R->mu);
            continue;
        }
        R->state[pick] = ST_RUNNING;
        int cached = R->p.st[pick].status == PLAN_CACHED;
        pthread_mutex_unlock(&R->mu);
        int rc = 0;
        if (coll_world() > 1) rc = exec_ranked(R, pick, cached);
        else if (cached) record_cached(R, pick);
        else rc = exec_stage(R, pick);
        pthread_mutex_lock(&R->mu);
        if (rc) {
            R->state[pick] = ST_FAILED;
            if (!R->failed_rc) {
                R->failed_rc = rc;
                R->failed_msg = strdup(err_msg());
            }
        } else {
            R->state[pick] = ST_DONE;
            if (R->p.st[pick].status == PLAN_CACHED && !cached) {
                record_cached(R, pick);
                R->n_cached++;
            } else if (cached) {
                R->n_cached++;
            } else {
                R->n_ran++;
            }
            if (coll_rank() == 0) {
                json_t *ie = plan_index_entry(&R->p, pick);
                cache_index_put(&R->c, R->r->name, R->r->stages[pick].name, ie);
                json_decref(ie);
            }
            check_gates(R, pick);
            if (!cached && R->hooks && hooks_has(R->hooks, "on_stage_end") && R->notify_failures < 3 &&
                hooks_on_stage_end(R->hooks, R->r->stages[pick].name, R->p.st[pick].manifest)) {
                warnf("on_stage_end hook failed (%d of 3 failures allowed): %s", ++R->notify_failures, err_msg());
                if (R->notify_failures == 3) warnf("on_stage_end is not called again in this run");
                err_clear();
            }
        }
        pthread_cond_broadcast(&R->cv);
    }
    pthread_cond_broadcast(&R->cv);
    pthread_mutex_unlock(&R->mu);
    return NULL;
}

/* summary.json (runrec.h): every stage's outcome and metrics (a cached stage's from its
 * manifest), and the gate table */
static json_t *run_summary(runner *R, int rc, double secs) {
    const recipe *r = R->r;
    json_t *s = json_object(), *stages = json_object();
    char stamp[32];
    utc_stamp(stamp, sizeof stamp, false);
    json_object_set_new(s, "format", json_string("qlora-run-summary"));
    json_object_set_new(s, "version", json_integer(RUNREC_SUMMARY_VERSION));
    json_object_set_new(s, "recipe", json_string(r->name));
    json_object_set_new(s, "time", json_string(stamp));
    json_object_set_new(s, "ok", json_boolean(rc == 0));
    json_object_set_new(s, "status", json_string(rc == 0 ? "ok" : rc == ERR_GATE ? "gate failed" : "failed"));
    json_object_set_new(s, "code", json_integer(rc));
    if (rc) json_object_set_new(s, "error", json_string(err_msg()));
    json_object_set_new(s, "seconds", json_real(secs));
    json_object_set_new(s, "device", json_string(R->p.device));
    json_object_set_new(s, "program_version", json_string(QLORA_VERSION));
    json_object_set_new(s, "program", version_json());
    for (int i = 0; i < r->n_stages; i++) {
        const plan_stage *ps = &R->p.st[i];
        json_t *st = json_object();
        json_object_set_new(st, "kind", json_string(r->stages[i].kind->name));
        json_object_set_new(st, "key", json_string(ps->key));
        const char *status = ps->status == PLAN_SKIP ? "not selected"
                             : R->state[i] == ST_DONE ? (ps->status == PLAN_CACHED ? "cached" : "ran")
                             : R->state[i] == ST_FAILED ? "failed" : "not run";
        json_object_set_new(st, "status", json_string(status));
        if (ps->manifest && (R->state[i] == ST_DONE || ps->status == PLAN_SKIP)) {
            json_object_set(st, "metrics", json_object_get(ps->manifest, "metrics"));
            json_object_set(st, "seconds", json_object_get(ps->manifest, "seconds"));
            /* the stage's tables (evaluate's results, fetch's commit) for the report, when small */
            json_t *rep = json_object_get(ps->manifest, "report");
            char *txt = rep && json_object_size(rep) ? json_dumps(rep, JSON_COMPACT) : NULL;
            if (txt && strlen(txt) < 256 * 1024) json_object_set(st, "report", rep);
            free(txt);
        }
        json_object_set_new(stages, r->stages[i].name, st);
    }
    json_object_set_new(s, "stages", stages);
    json_object_set(s, "gates", R->gate_rows);
    return s;
}

static char *make_run_dir(const recipe *r) {
    char *base = runrec_base(r->runs_dir);
    char stamp[32];
    utc_stamp(stamp, sizeof stamp, true);
    char *dir, *parent;
    if (asprintf(&parent, "%s/%s", base, r->name) < 0) parent = NULL;
    int rc = parent ? fs_mkdir_p(parent) : ERR_STAGE;
    free(parent);
    /* mkdir itself decides: two runs started in the same second must not share a record */
    for (int k = 0; !rc; k++) {
        if (k == 0) { if (asprintf(&dir, "%s/%s/%s", base, r->name, stamp) < 0) break; }
        else if (asprintf(&dir, "%s/%s/%s-%d", base, r->name, stamp, k) < 0) break;
        if (mkdir(dir, 0777) == 0) {
            free(base);
            return dir;
        }
        int e = errno;
        free(dir);
        if (e != EEXIST) {
            errno = e;
            err_errno(ERR_STAGE, "cannot create a run record under '%s/%s'", base, r->name);
            break;
        }
    }
    free(base);
    return NULL;
}

/* Several ranks follow rank 0's plan: a stage another run committed between two ranks' planning
 * must not be cached for one rank and run by another. */
static int share_plan(runner *R) {
    int n = R->r->n_stages;
    if (coll_world() == 1 || n == 0) return 0;
    int *st = calloc((size_t)n, sizeof *st);
    if (!st) return err_set(ERR_STAGE, "out of memory");
    for (int i = 0; i < n; i++) st[i] = R->p.st[i].status;
    int rc = coll_bcast(st, (size_t)n * sizeof *st, 0);
    for (int i = 0; !rc && i < n; i++) {
        plan_stage *ps = &R->p.st[i];
        ps->status = st[i];
        if (ps->status == PLAN_CACHED && !ps->manifest) {
            char *why = NULL;
            if (cache_lookup(&R->c, R->r->stages[i].kind->name, ps->key, &ps->manifest, &why))
                rc = err_set(ERR_STAGE, "stage '%s' is cached for rank 0 but not in the cache of this rank (%s): every "
                                        "rank needs the same cache_dir on a shared filesystem",
                             R->r->stages[i].name, why ? why : "missing");
            free(why);
        }
    }
    free(st);
    return coll_agree(rc, NULL);
}

/* A side task at the end of a run (the summary, on_run_end, the report, TensorBoard) may set and
 * clear the error: the run's own outcome, rc and its message, is put back after it. */
typedef struct kept_err {
    int rc;
    char msg[4096];
} kept_err;

static void err_keep(kept_err *k, int rc) {
    k->rc = rc;
    snprintf(k->msg, sizeof k->msg, "%s", rc ? err_msg() : "");
}

static void err_put_back(const kept_err *k) {
    if (k->rc) err_set(k->rc, "%s", k->msg);
    else err_clear();
}

/* Before anything runs: the cache (in use, and the recipe's lock with --lock), the device of this
 * rank, the plan and the export folders it will write. */
static int run_prepare(runner *R, const run_opts *o, const char *outdir, int *lockfd, int *usefd) {
    recipe *r = R->r;
    const bool lead = coll_rank() == 0;
    int rc = cache_open(&R->c, r->cache_dir);
    if (!rc) rc = cache_use(&R->c, usefd);
    if (!rc && o->lock && lead) {
        char *lp;
        if (asprintf(&lp, "%s/locks/recipe-%s.lock", R->c.root, r->name) < 0) lp = NULL;
        rc = fs_lock(lp, false, lockfd);
        if (rc == ERR_LOCKED) err_set(ERR_LOCKED, "another run of recipe '%s' holds its lock (--lock): not starting", r->name);
        if (!rc) {
            char pid[32];
            int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
            if (ftruncate(*lockfd, 0) == 0 && write(*lockfd, pid, (size_t)n) < 0) { /* best effort */ }
        }
        free(lp);
    }
    plan_opts po = {o->only, o->until, o->force};
    if (!rc && lead) cache_clean_tmp(&R->c);
    if (!rc) rc = device_select_rank(r->device, coll_rank(), coll_local_rank(), coll_local_world());
    if (!rc) rc = plan_build(&R->p, r, &R->c, &po);
    for (int i = 0, first = 1; !rc && lead && outdir && !o->dry_run && i < r->n_stages; i++) { /* before any stage runs */
        if (!(r->stages[i].kind->flags & STAGE_KIND_EXPORTS) || R->p.st[i].status == PLAN_SKIP) continue;
        if (first) rc = outdir_check(outdir, r->name), first = 0;
        if (!rc) rc = outdir_check_stage(outdir, r->stages[i].name);
    }
    return rc;
}

/* The run record (rank 0's; the others write their stage logs into it): its directory, the
 * resolved recipe, events.jsonl and TensorBoard files; then the run_start event and the plan. */
static int run_record_open(runner *R, const char *path, const run_opts *o) {
    const recipe *r = R->r;
    const bool lead = coll_rank() == 0;
    int rc = 0;
    if (lead) {
        R->run_dir = make_run_dir(r);
        if (!R->run_dir) rc = err_wrap("cannot create the run record directory");
    }
    if (!(rc = coll_agree(rc, NULL))) rc = coll_bcast_str(&R->run_dir, 0);
    if (rc) return rc;
    if (lead) {
        char *y = yt_emit_json(r->resolved);
        char *rp = fs_join(R->run_dir, "recipe.yaml");
        fs_write_atomic(rp, y, strlen(y));
        free(rp);
        free(y);
        char *ep = fs_join(R->run_dir, "events.jsonl");
        rc = events_open(&R->ev, ep, o->json);
        free(ep);
        /* TensorBoard files are a view for people, as the report is: a failure warns */
        if (!rc && r->tensorboard && tb_open(&R->tb, R->run_dir, R->ev)) {
            warnf("TensorBoard events not written: %s", err_msg());
            err_clear();
        }
    }
    if ((rc = coll_agree(rc, NULL))) return rc;
    json_t *ev = json_object();
    json_object_set_new(ev, "recipe", json_string(r->name));
    json_object_set_new(ev, "path", json_string(path));
    json_object_set_new(ev, "device", json_string(R->p.device));
    json_object_set_new(ev, "run_dir", json_string(R->run_dir));
    json_object_set_new(ev, "program", version_json());
    events_emit(R->ev, "run_start", ev);
    if (!o->quiet && lead) plan_print(&R->p, stderr, false);
    if (coll_world() > 1)
        outf("data parallel: %d ranks (%s), rank 0 on %s", coll_world(), coll_launcher(), R->p.device);
    return 0;
}

/* The stages: rank 0's hooks, the history the gates compare with, then the workers (several
 * ranks: one worker, so every rank meets the agreements in the same order), with Ctrl-C caught
 * while they run. *secs: the workers' wall time. */
static int run_stages(runner *R, const run_opts *o, double *secs) {
    const recipe *r = R->r;
    const bool lead = coll_rank() == 0;
    int rc = 0;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (lead && hooks_open(&R->hooks, r->hooks)) rc = err_code();
    if ((rc = coll_agree(rc, NULL))) return rc;
    if (R->hooks) hooks_set_callbacks(R->hooks, &(lua_host_callbacks){.ud = R, .log = run_hook_log});
    R->state = calloc((size_t)r->n_stages, sizeof *R->state);
    R->gate_rows = json_array();
    {
        char *parent = fs_dirname(R->run_dir);
        const char *self = strrchr(R->run_dir, '/');
        R->history = runrec_history(parent, self ? self + 1 : R->run_dir, 60);
        free(parent);
    }
    if ((rc = check_skipped_gates(R)) != 0) return rc; /* a failed gate there: the workers start nothing */
    double t0 = clock_now_s();
    int jobs = o->jobs > 0 && coll_world() == 1 ? (int)o->jobs : 1;
    pthread_t th[64];
    if (jobs > 64) jobs = 64;
    for (int j = 0; j < jobs; j++) pthread_create(&th[j], NULL, worker, R);
    for (int j = 0; j < jobs; j++) pthread_join(th[j], NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    *secs = clock_now_s() - t0;
    return 0;
}

/* The cache's index of this run's keys, and the exports of every stage that completed, even when
 * a later one failed (a failure to publish is the run's failure unless it already has one). */
static void run_publish(runner *R, const char *outdir) {
    const recipe *r = R->r;
    const bool lead = coll_rank() == 0;
    json_t *keys = json_object();
    for (int i = 0; i < r->n_stages; i++)
        if (R->state[i] == ST_DONE) json_object_set_new(keys, r->stages[i].name, json_string(R->p.st[i].key));
    json_t *run_keys = json_object();
    char stamp[32];
    utc_stamp(stamp, sizeof stamp, false);
    json_object_set_new(run_keys, "time", json_string(stamp));
    json_object_set_new(run_keys, "keys", keys);
    if (lead) cache_index_run(&R->c, r->name, run_keys);
    json_decref(run_keys);
    for (int i = 0; lead && outdir && i < r->n_stages; i++) { /* complete exports, even when a later stage failed */
        if (R->state[i] != ST_DONE || !(r->stages[i].kind->flags & STAGE_KIND_EXPORTS)) continue;
        char *d = cache_artifact_dir(&R->c, r->stages[i].kind->name, R->p.st[i].key);
        int prc = outdir_publish(outdir, r->name, r->stages[i].name, d);
        if (!prc) {
            outf("exports of '%s' in %s/%s", r->stages[i].name, outdir, r->stages[i].name);
        } else if (!R->failed_rc) {
            R->failed_rc = prc;
            R->failed_msg = strdup(err_msg());
        } else {
            warnf("%s", err_msg());
        }
        free(d);
    }
}

/* The end of the record: the gates, summary.json, the on_run_end hook, the run_end event and the
 * report; none of them changes the outcome rc (or its message). */
static void run_record_close(runner *R, int rc, double secs) {
    const recipe *r = R->r;
    kept_err k;
    json_t *end = json_object();
    json_object_set_new(end, "seconds", json_real(secs));
    json_object_set_new(end, "ran", json_integer(R->n_ran));
    json_object_set_new(end, "cached", json_integer(R->n_cached));
    json_object_set_new(end, "code", json_integer(rc));
    if (rc) json_object_set_new(end, "error", json_string(err_msg()));
    if (r->n_gates) {
        gates_add_unchecked(r, R->gate_rows);
        events_emit(R->ev, "gates", json_pack("{s:O}", "gates", R->gate_rows));
    }
    err_keep(&k, rc);
    json_t *sum = run_summary(R, rc, secs);
    if (runrec_write_summary(R->run_dir, sum)) warnf("run summary not written: %s", err_msg());
    json_decref(sum);
    err_put_back(&k);
    if (R->hooks && hooks_has(R->hooks, "on_run_end")) {
        err_keep(&k, rc);
        json_t *summary = json_deep_copy(end);
        json_object_set_new(summary, "recipe", json_string(r->name));
        json_object_set_new(summary, "run_dir", json_string(R->run_dir));
        json_object_set_new(summary, "ok", json_boolean(rc == 0));
        json_object_set(summary, "gates", R->gate_rows);
        if (hooks_on_run_end(R->hooks, summary)) warnf("on_run_end hook: %s", err_msg());
        json_decref(summary);
        err_put_back(&k);
    }
    events_emit(R->ev, "run_end", end);
    /* the report is for people: a failure to write it warns and never changes the outcome */
    err_keep(&k, rc);
    if (report_write(R->run_dir)) warnf("report.html not written: %s", err_msg());
    err_put_back(&k);
}

/* where the final artifacts are: stages nothing else consumes */
static void print_final_artifacts(runner *R) {
    const recipe *r = R->r;
    for (int i = 0; i < r->n_stages; i++) {
        if (R->p.st[i].status == PLAN_SKIP) continue;
        int used = 0;
        for (int k = 0; k < r->n_stages; k++)
            for (int q = 0; q < r->stages[k].n_refs; q++) used |= r->stages[k].refs[q].target == i;
        if (!used) {
            char *d = cache_artifact_dir(&R->c, r->stages[i].kind->name, R->p.st[i].key);
            outf("  %s: %s", r->stages[i].name, d);
            free(d);
        }
    }
}

static void runner_free(runner *R, int rc, int *lockfd, int *usefd) {
    if (R->tb) {
        kept_err k;
        err_keep(&k, rc);
        if (tb_close(&R->tb, R->ev)) warnf("%s", err_msg());
        err_put_back(&k);
    }
    hooks_free(&R->hooks);
    if (R->ev) events_close(&R->ev);
    fs_unlock(lockfd);
    fs_unlock(usefd);
    plan_free(&R->p);
    free(R->state);
    free(R->failed_msg);
    json_decref(R->history);
    json_decref(R->gate_rows);
    free(R->run_dir);
    cache_close(&R->c);
    recipe_free(&R->r);
    pthread_mutex_destroy(&R->mu);
    pthread_cond_destroy(&R->cv);
}

static int run_ranked(const char *path, const run_opts *o) {
    recipe *r = NULL;
    int rc = recipe_load(&r, path, (char *const *)o->sets.v, o->sets.n);
    rc = ranks_check_same(r, rc);
    if (!rc && coll_world() == 1 && coll_env_world() == 0) { /* --gpus N / gpus: N: start the ranks */
        int n = 1;
        rc = ranks_wanted(o->gpus >= 0 ? o->gpus : r->gpus, &n);
        if (!rc && n > 1) rc = ranks_spawn(n, o->argc, o->argv);
    }
    if (rc) {
        recipe_free(&r);
        return rc;
    }
    const bool lead = coll_rank() == 0;
    runner R = {0};
    R.r = r;
    pthread_mutex_init(&R.mu, NULL);
    pthread_cond_init(&R.cv, NULL);
    int lockfd = -1, usefd = -1;
    const char *outdir = o->out ? o->out : r->output_dir;
    rc = run_prepare(&R, o, outdir, &lockfd, &usefd);
    rc = coll_agree(rc, NULL); /* one rank's failure is everyone's, with its message */
    if (!rc) rc = share_plan(&R);
    if (rc) goto done;
    if (o->dry_run) {
        if (lead) plan_print(&R.p, stdout, false);
        goto done;
    }
    if ((rc = run_record_open(&R, path, o))) goto done;
    double secs = 0;
    if ((rc = run_stages(&R, o, &secs))) goto done;
    run_publish(&R, outdir);

    if (R.failed_rc) {
        rc = R.failed_rc;
        err_set(rc, "%s", R.failed_msg);
    } else if (interrupted && coll_world() == 1) {
        rc = err_set(ERR_INTERRUPTED, "interrupted: the next run resumes where this one stopped");
    }
    run_record_close(&R, rc, secs);
    if (!rc) {
        outf("done in %.1f s: %d ran, %d cached; run record in %s", secs, R.n_ran, R.n_cached, R.run_dir);
        print_final_artifacts(&R);
    }
done:
    runner_free(&R, rc, &lockfd, &usefd);
    return rc;
}

int run_recipe(const char *path, const run_opts *o) {
    int rc = ranks_start();
    if (!rc) rc = run_ranked(path, o);
    if (coll_world() > 1) {
        /* rank 0 prints the one message (the agreement gave it the failing rank's), the others end
         * quietly, and none exits before rank 0 has printed: mpirun ends the whole job as soon as
         * one rank exits with a failure */
        if (rc && coll_rank() == 0 && err_msg()[0]) errorf("%s", err_msg());
        if (rc) err_set(rc, "%s", "");
        int32_t done = 1;
        coll_bcast(&done, sizeof done, 0);
    }
    coll_finalize();
    return rc;
}

void run_opts_free(run_opts *o) { cli_list_free(&o->sets); }

#define SET_OPT {"set", 0, CLI_LIST, "KEY=VALUE", "override a recipe key (e.g. stages.train.learning_rate=1e-4);\nrepeatable", CLI_AT(run_opts, sets), 0, 0}
#define STAGE_OPTS \
    {"only", 0, CLI_STR, "STAGE", "run only STAGE (its inputs must be cached)", CLI_AT(run_opts, only), 0, 0}, \
    {"until", 0, CLI_STR, "STAGE", "run STAGE and what it needs, nothing after it", CLI_AT(run_opts, until), 0, 0}, \
    {"force", 0, CLI_STR, "STAGE", "re-run STAGE and every stage after it, even if cached", CLI_AT(run_opts, force), 0, 0}

const cli_opt recipe_cli_opts[] = {SET_OPT, {0}};
const cli_opt show_cli_opts[] = {
    SET_OPT,
    {"stages", 0, CLI_FLAG, NULL, "print only the stage names, one a line (shell completion uses it)", CLI_AT(run_opts, stages), 0, 0},
    {0},
};
const cli_opt plan_cli_opts[] = {SET_OPT, STAGE_OPTS, {0}};
const cli_opt run_cli_opts[] = {
    SET_OPT,
    STAGE_OPTS,
    {"jobs", 'j', CLI_INT, "N", "run up to N independent stages at once", CLI_AT(run_opts, jobs), 1, 1024},
    {"gpus", 0, CLI_STR, "N|all", "train data parallel on N GPUs of this machine (ranks started by mpirun;\ndocs/multi-gpu.md)", CLI_AT(run_opts, gpus_text), 0, 0},
    {"dry-run", 0, CLI_FLAG, NULL, "print the plan and stop (same as `qlora-run plan`)", CLI_AT(run_opts, dry_run), 0, 0},
    {"out", 0, CLI_STR, "DIR", "copy the exports to DIR/STAGE/ when complete (overrides the recipe's output_dir;\ndocs/exports.md)", CLI_AT(run_opts, out), 0, 0},
    {"lock", 0, CLI_FLAG, NULL, "exit at once (code 6) if another run of this recipe is in progress", CLI_AT(run_opts, lock), 0, 0},
    {"json", 0, CLI_FLAG, NULL, "print events as JSON lines on stdout and nothing else (so not with --quiet)", CLI_AT(run_opts, json), 0, 0},
    {"quiet", 'q', CLI_FLAG, NULL, "no progress or notes, errors only", CLI_AT(run_opts, quiet), 0, 0},
    {0},
};

int run_parse_opts(const cli_cmd *c, int argc, char **argv, run_opts *o, const char **recipe_path) {
    memset(o, 0, sizeof *o);
    o->jobs = 1;
    o->gpus = -1;
    o->argc = argc;
    o->argv = argv;
    *recipe_path = NULL;
    const char **pos = calloc((size_t)argc + 1, sizeof *pos);
    int n_pos = 0;
    int rc = pos ? cli_parse(c, o, argc, argv, pos, &n_pos) : ERR_USAGE;
    if (!rc) *recipe_path = pos[0];
    free(pos);
    if (rc) return rc;
    if (o->only && o->until)
        return cli_usage_error(c, "--only and --until are alternatives: --only %s runs that stage alone, --until %s "
                                  "runs it with what it needs", o->only, o->until);
    if (o->json && o->quiet)
        return cli_usage_error(c, "--json and --quiet are alternatives (--json already prints nothing but JSON "
                                  "events on stdout)");
    if (o->gpus_text && recipe_parse_gpus(o->gpus_text, &o->gpus))
        return cli_usage_error(c, "--gpus needs a number of GPUs (1 to 4096) or 'all', not '%s'", o->gpus_text);
    if (o->json) o->quiet = true;
    if (o->quiet) log_set_quiet(true);
    return 0;
}
