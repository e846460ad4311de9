/* cmd_cache.c: qlora-run cache ls|verify|gc and qlora-run runs ls. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "runner/cache.h"
#include "runner/commands.h"

typedef struct cache_args {
    const char *dir;
    int64_t keep;
} cache_args;

static const cli_opt cache_opts[] = {
    {"cache", 0, CLI_STR, "DIR", "the cache directory (default $QLORA_CACHE, or ~/.cache/qlora-run)", CLI_AT(cache_args, dir), 0, 0},
    {"keep-last", 0, CLI_INT, "N", "gc: keep the artifacts of each recipe's last N runs (3)", CLI_AT(cache_args, keep), 0, 1e9},
    {0},
};

const cli_cmd cli_cache = {
    .name = "cache",
    .usage = "cache ls [--cache DIR]\ncache verify [--cache DIR]\ncache gc [--keep-last N] [--cache DIR]",
    .summary = "the artifact cache: ls, verify, gc",
    .args = "ls      every artifact: kind, key, producing recipe and stage, size, date\n"
            "verify  re-hash every file of every artifact; corrupt ones are reported (exit 1) and\n"
            "        are recomputed by the next run that needs them\n"
            "gc      delete artifacts no recent run used: keeps those of each recipe's last N runs\n"
            "        (default 3), and stale temporary directories; while a run uses the cache it\n"
            "        removes nothing and exits 6",
    .footer = "The cache is $QLORA_CACHE, or ~/.cache/qlora-run; a recipe's cache_dir names another.",
    .min_pos = 1, .max_pos = 1, .opts = cache_opts,
};

typedef void (*artifact_fn)(const char *dir, const char *kind, const char *key, json_t *manifest, void *arg);

static void each_artifact(const cache *c, artifact_fn fn, void *arg) {
    char *root = fs_join(c->root, "artifacts");
    DIR *d = opendir(root);
    if (!d) { free(root); return; }
    struct dirent *kd;
    while ((kd = readdir(d))) {
        if (kd->d_name[0] == '.') continue;
        char *kdir = fs_join(root, kd->d_name);
        DIR *d2 = opendir(kdir);
        if (d2) {
            struct dirent *ad;
            while ((ad = readdir(d2))) {
                if (ad->d_name[0] == '.' || strchr(ad->d_name, '.')) continue;
                char *adir = fs_join(kdir, ad->d_name);
                char *mp = fs_join(adir, "manifest.json");
                json_t *m = json_load_file(mp, 0, NULL);
                fn(adir, kd->d_name, ad->d_name, m, arg);
                json_decref(m);
                free(mp);
                free(adir);
            }
            closedir(d2);
        }
        free(kdir);
    }
    closedir(d);
    free(root);
}

static void human(double b, char *out, size_t n) {
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) { b /= 1000; i++; }
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

static void ls_one(const char *dir, const char *kind, const char *key, json_t *m, void *arg) {
    double *total = arg;
    char sz[32];
    double b = (double)json_integer_value(json_object_get(m, "bytes"));
    *total += b;
    human(b, sz, sizeof sz);
    const char *rec = json_string_value(json_object_get(m, "recipe")), *st = json_string_value(json_object_get(m, "stage"));
    const char *fin = json_string_value(json_object_get(m, "finished"));
    printf("%-14s %.12s  %-24s %10s  %s\n", kind, key, m ? "" : "(no manifest)", sz, fin ? fin : "");
    if (m) printf("%-14s %12s  %s/%s\n", "", "", rec ? rec : "?", st ? st : "?");
    (void)dir;
}

typedef struct verify_acc {
    const cache *c;
    int ok, bad;
} verify_acc;

static void verify_one(const char *dir, const char *kind, const char *key, json_t *m, void *arg) {
    verify_acc *a = arg;
    char *why = NULL;
    if (cache_verify_dir(a->c, dir, &why) == 0) {
        a->ok++;
    } else {
        a->bad++;
        printf("corrupt: %s/%s: %s\n", kind, key, why ? why : "?");
    }
    free(why);
}

typedef struct gc_acc {
    const cache *c;
    json_t *keep;
    int removed;
    double freed;
} gc_acc;

static void gc_one(const char *dir, const char *kind, const char *key, json_t *m, void *arg) {
    gc_acc *a = arg;
    if (json_object_get(a->keep, key)) return;
    a->freed += (double)json_integer_value(json_object_get(m, "bytes"));
    if (fs_rm_rf(dir) == 0) a->removed++;
    /* what the key left besides its artifact: checkpoints of its training, its lock file */
    char *w = cache_work_dir(a->c, key), *l = NULL;
    if (w) fs_rm_rf(w);
    if (asprintf(&l, "%s/locks/%s.lock", a->c->root, key) >= 0) unlink(l);
    free(w);
    free(l);
    err_clear();
}

/* Work dirs left empty by stages that failed before writing a checkpoint (a non-empty one
 * holds checkpoints that the next run resumes from: kept). Returns how many were kept. */
static int gc_empty_work(const cache *c) {
    char *wd = fs_join(c->root, "work");
    DIR *d = opendir(wd);
    int kept = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char *p = fs_join(wd, e->d_name);
        if (p && rmdir(p) != 0) kept++;
        free(p);
    }
    if (d) closedir(d);
    free(wd);
    return kept;
}

/* Lock files whose key has neither an artifact nor a work dir any more (gc holds the cache
 * exclusively, so no run is using them), and the --lock files of recipes. */
static int gc_locks(const cache *c) {
    char *ld = fs_join(c->root, "locks");
    DIR *d = opendir(ld);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".lock")) continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(l - 5), e->d_name);
        bool used = false;
        if (strncmp(key, "recipe-", 7)) {
            char *w = cache_work_dir(c, key);
            used = w && fs_exists(w);
            free(w);
            char *ad = fs_join(c->root, "artifacts");
            DIR *kd = opendir(ad);
            for (struct dirent *k; !used && kd && (k = readdir(kd));) {
                if (k->d_name[0] == '.') continue;
                char *a = cache_artifact_dir(c, k->d_name, key);
                used = fs_exists(a);
                free(a);
            }
            if (kd) closedir(kd);
            free(ad);
        }
        if (used) continue;
        char *p = fs_join(ld, e->d_name);
        if (p && unlink(p) == 0) n++;
        free(p);
    }
    if (d) closedir(d);
    free(ld);
    return n;
}

/* keys used by the last n runs of every recipe */
static json_t *recent_keys(const cache *c, int n) {
    json_t *keep = json_object();
    char *idx = fs_join(c->root, "index");
    DIR *d = opendir(idx);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char *rp;
            if (asprintf(&rp, "%s/%s/runs.jsonl", idx, e->d_name) < 0) continue;
            char *text = NULL;
            size_t len;
            if (fs_exists(rp) && fs_read_all(rp, &text, &len) == 0) {
                /* walk lines from the end */
                int seen = 0;
                for (char *p = text + len; p > text && seen < n;) {
                    char *end = p;
                    while (p > text && p[-1] != '\n') p--;
                    if (end > p) {
                        json_t *j = json_loadb(p, (size_t)(end - p), 0, NULL);
                        if (j) {
                            const char *k;
                            json_t *v;
                            json_object_foreach(json_object_get(j, "keys"), k, v) json_object_set_new(keep, json_string_value(v), json_true());
                            json_decref(j);
                            seen++;
                        }
                    }
                    if (p > text) p--;
                }
            }
            err_clear();
            free(text);
            free(rp);
        }
        closedir(d);
    }
    free(idx);
    return keep;
}

int cmd_cache(int argc, char **argv) {
    cache_args o = {.keep = 3};
    const char *pos[2];
    int n_pos, rc = cli_parse(&cli_cache, &o, argc, argv, pos, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    const char *sub = pos[0], *dir = o.dir;
    int keep = (int)o.keep;
    if (strcmp(sub, "ls") && strcmp(sub, "verify") && strcmp(sub, "gc"))
        return cli_usage_error(&cli_cache, "unknown subcommand '%s' (ls, verify or gc)", sub);
    cache c;
    rc = cache_open(&c, dir);
    if (rc) return rc;
    if (!strcmp(sub, "ls")) {
        double total = 0;
        printf("cache %s\n", c.root);
        printf("%-14s %-12s  %-24s %10s  %s\n", "KIND", "KEY", "", "SIZE", "FINISHED (UTC)");
        printf("%-14s %12s  %s\n", "", "", "RECIPE/STAGE");
        each_artifact(&c, ls_one, &total);
        char sz[32];
        human(total, sz, sizeof sz);
        printf("total %s\n", sz);
    } else if (!strcmp(sub, "verify")) {
        verify_acc a = {&c, 0, 0};
        each_artifact(&c, verify_one, &a);
        printf("%d intact, %d corrupt\n", a.ok, a.bad);
        if (a.bad) rc = err_set(ERR_STAGE, "%d corrupt artifact%s: the next run that needs one recomputes it", a.bad, a.bad == 1 ? "" : "s");
    } else if (!strcmp(sub, "gc")) {
        int usefd = -1;
        if ((rc = cache_gc_lock(&c, &usefd))) {
            cache_close(&c);
            return rc;
        }
        gc_acc a = {&c, recent_keys(&c, keep), 0, 0};
        each_artifact(&c, gc_one, &a);
        cache_clean_tmp(&c);
        int kept_work = gc_empty_work(&c);
        gc_locks(&c);
        char sz[32];
        human(a.freed, sz, sizeof sz);
        printf("removed %d artifacts (%s); kept those of each recipe's last %d runs\n", a.removed, sz, keep);
        if (kept_work)
            printf("kept %d work dir%s under %s/work: checkpoints of unfinished stages, which their next run resumes\n",
                   kept_work, kept_work == 1 ? "" : "s", c.root);
        json_decref(a.keep);
        fs_unlock(&usefd);
    } else {
        rc = err_set(ERR_USAGE, "cache: unknown subcommand '%s' (ls, verify or gc)", sub);
    }
    cache_close(&c);
    return rc;
}

typedef struct run_row {
    char *recipe, *time;
    const char *status;  /* ok | failed | interrupted | incomplete (no run_end: killed, or running) */
    char *failed_stage;  /* the stage whose stage_failed event is last, NULL if none */
    double secs;
    long ran, cached;
} run_row;

static int cmp_run(const void *a, const void *b) {
    const run_row *x = a, *y = b;
    int c = strcmp(x->time, y->time);
    return c ? c : strcmp(x->recipe, y->recipe);
}

/* the outcome of one run from its events.jsonl: the run_end event and the last stage_failed */
static void read_run(const char *events_path, run_row *r) {
    char *text = NULL;
    size_t len;
    if (fs_read_all(events_path, &text, &len) == 0) {
        for (char *ls = text; ls < text + len;) {
            char *le = memchr(ls, '\n', (size_t)(text + len - ls));
            size_t n = le ? (size_t)(le - ls) : (size_t)(text + len - ls);
            bool end = memmem(ls, n, "\"type\":\"run_end\"", 16) != NULL;
            bool failed = memmem(ls, n, "\"type\":\"stage_failed\"", 21) != NULL;
            if (end || failed) {
                json_t *j = json_loadb(ls, n, 0, NULL);
                if (j && failed) {
                    free(r->failed_stage);
                    const char *st = json_string_value(json_object_get(j, "stage"));
                    r->failed_stage = st ? strdup(st) : NULL;
                } else if (j) {
                    json_int_t code = json_integer_value(json_object_get(j, "code"));
                    r->status = code == ERR_INTERRUPTED ? "interrupted" : code ? "failed" : "ok";
                    r->secs = json_number_value(json_object_get(j, "seconds"));
                    r->ran = (long)json_integer_value(json_object_get(j, "ran"));
                    r->cached = (long)json_integer_value(json_object_get(j, "cached"));
                }
                json_decref(j);
            }
            ls += n + 1;
        }
    }
    err_clear();
    free(text);
}

typedef struct runs_args {
    const char *dir;
} runs_args;

static const cli_opt runs_opts[] = {
    {"dir", 0, CLI_STR, "RUNS_DIR", "where the run records are (default $QLORA_RUNS, or runs)", CLI_AT(runs_args, dir), 0, 0},
    {0},
};

const cli_cmd cli_runs = {
    .name = "runs",
    .usage = "runs ls [--dir RUNS_DIR]\nruns diff A B [--dir RUNS_DIR]",
    .summary = "run records; the differences between two runs",
    .about = "Lists run records (runs/<recipe>/<UTC time>/) with their outcome.",
    .min_pos = 1, .max_pos = 1, .opts = runs_opts,
};

int runs_diff(int argc, char **argv); /* cmd_report.c */

int cmd_runs(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "diff")) return runs_diff(argc - 1, argv + 1);
    runs_args o = {getenv("QLORA_RUNS") && *getenv("QLORA_RUNS") ? getenv("QLORA_RUNS") : "runs"};
    const char *pos[2];
    int n_pos, rc = cli_parse(&cli_runs, &o, argc, argv, pos, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (strcmp(pos[0], "ls")) return cli_usage_error(&cli_runs, "unknown subcommand '%s' (the subcommand is 'ls')", pos[0]);
    const char *base = o.dir;
    DIR *d = opendir(base);
    if (!d) { printf("no runs in '%s'\n", base); return 0; }
    run_row *rows = NULL;
    size_t n_rows = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char *rdir = fs_join(base, e->d_name);
        DIR *d2 = opendir(rdir);
        for (struct dirent *e2; d2 && (e2 = readdir(d2));) {
            if (e2->d_name[0] == '.') continue;
            run_row *nr = realloc(rows, (n_rows + 1) * sizeof *rows);
            if (!nr) break;
            rows = nr;
            run_row *r = &rows[n_rows++];
            *r = (run_row){strdup(e->d_name), strdup(e2->d_name), "incomplete", NULL, 0, 0, 0};
            char *ep;
            if (asprintf(&ep, "%s/%s/events.jsonl", rdir, e2->d_name) >= 0) {
                read_run(ep, r);
                free(ep);
            }
        }
        if (d2) closedir(d2);
        free(rdir);
    }
    closedir(d);
    /* newest last, across recipes: the time stamp first, then the recipe */
    if (n_rows) qsort(rows, n_rows, sizeof *rows, cmp_run);
    printf("%-17s  %-20s  %-11s  %9s  %4s  %6s  %s\n", "TIME (UTC)", "RECIPE", "STATUS", "SECONDS", "RAN", "CACHED",
           "FAILED STAGE");
    for (size_t i = 0; i < n_rows; i++) {
        run_row *r = &rows[i];
        printf("%-17s  %-20s  %-11s  %9.1f  %4ld  %6ld  %s\n", r->time, r->recipe, r->status, r->secs, r->ran, r->cached,
               r->failed_stage ? r->failed_stage : "-");
        free(r->recipe);
        free(r->time);
        free(r->failed_stage);
    }
    free(rows);
    return 0;
}
