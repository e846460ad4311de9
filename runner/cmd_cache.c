/* cmd_cache.c: qlora-run cache ls|verify|gc and qlora-run runs ls. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
    json_t *keep;
    int removed;
    double freed;
} gc_acc;

static void gc_one(const char *dir, const char *kind, const char *key, json_t *m, void *arg) {
    gc_acc *a = arg;
    if (json_object_get(a->keep, key)) return;
    a->freed += (double)json_integer_value(json_object_get(m, "bytes"));
    if (fs_rm_rf(dir) == 0) a->removed++;
    err_clear();
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
        gc_acc a = {recent_keys(&c, keep), 0, 0};
        each_artifact(&c, gc_one, &a);
        cache_clean_tmp(&c);
        char sz[32];
        human(a.freed, sz, sizeof sz);
        printf("removed %d artifacts (%s); kept those of each recipe's last %d runs\n", a.removed, sz, keep);
        json_decref(a.keep);
        fs_unlock(&usefd);
    } else {
        rc = err_set(ERR_USAGE, "cache: unknown subcommand '%s' (ls, verify or gc)", sub);
    }
    cache_close(&c);
    return rc;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

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
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *rdir = fs_join(base, e->d_name);
        DIR *d2 = opendir(rdir);
        if (!d2) { free(rdir); continue; }
        char **names = NULL;
        size_t n = 0;
        struct dirent *e2;
        while ((e2 = readdir(d2)))
            if (e2->d_name[0] != '.') { names = realloc(names, (n + 1) * sizeof *names); names[n++] = strdup(e2->d_name); }
        closedir(d2);
        if (n) qsort(names, n, sizeof *names, cmp_str);
        for (size_t i = 0; i < n; i++) {
            char *ep;
            if (asprintf(&ep, "%s/%s/events.jsonl", rdir, names[i]) < 0) continue;
            char *text = NULL;
            size_t len;
            const char *status = "incomplete";
            double secs = 0;
            long ran = 0, cached = 0;
            if (fs_read_all(ep, &text, &len) == 0) {
                char *last = strstr(text, "\"type\":\"run_end\"");
                if (last) {
                    char *ls = last;
                    while (ls > text && ls[-1] != '\n') ls--;
                    char *le = strchr(ls, '\n');
                    json_t *j = json_loadb(ls, le ? (size_t)(le - ls) : strlen(ls), 0, NULL);
                    if (j) {
                        status = json_integer_value(json_object_get(j, "code")) ? "failed" : "ok";
                        secs = json_number_value(json_object_get(j, "seconds"));
                        ran = (long)json_integer_value(json_object_get(j, "ran"));
                        cached = (long)json_integer_value(json_object_get(j, "cached"));
                        json_decref(j);
                    }
                }
            }
            err_clear();
            printf("%-24s %-20s %-10s %7.1f s  %ld ran, %ld cached\n", e->d_name, names[i], status, secs, ran, cached);
            free(text);
            free(ep);
            free(names[i]);
        }
        free(names);
        free(rdir);
    }
    closedir(d);
    return 0;
}
