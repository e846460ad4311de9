/* runrec.c: run records read back (see runrec.h). */
#define _GNU_SOURCE
#include "runrec.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/fsutil.h"

char *runrec_base(const char *runs_dir) {
    if (runs_dir) return strdup(runs_dir);
    const char *e = getenv("QLORA_RUNS");
    return strdup(e && *e ? e : "runs");
}

static const char *base_name(const char *p) {
    size_t l = strlen(p);
    while (l > 1 && p[l - 1] == '/') l--;
    const char *s = p + l;
    while (s > p && s[-1] != '/') s--;
    return s;
}

/* The summary rebuilt from events.jsonl, line by line; a torn last line is skipped. */
static json_t *summary_from_events(const char *run_dir) {
    char *ep = fs_join(run_dir, "events.jsonl"), *text = NULL;
    size_t len = 0;
    int rc = fs_read_all(ep, &text, &len);
    free(ep);
    if (rc) { err_clear(); return NULL; }
    json_t *s = json_object(), *stages = json_object();
    json_object_set_new(s, "format", json_string("qlora-run-summary"));
    json_object_set_new(s, "version", json_integer(RUNREC_SUMMARY_VERSION));
    json_object_set_new(s, "ok", json_false());
    json_object_set_new(s, "status", json_string("incomplete"));
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        json_t *ev = json_loadb(line, nl ? (size_t)(nl - line) : strlen(line), 0, NULL);
        line = nl ? nl + 1 : NULL;
        if (!ev) continue;
        const char *type = json_string_value(json_object_get(ev, "type"));
        const char *stage = json_string_value(json_object_get(ev, "stage"));
        if (!type) type = "";
        if (!strcmp(type, "run_start")) {
            json_object_set(s, "recipe", json_object_get(ev, "recipe"));
            json_object_set(s, "device", json_object_get(ev, "device"));
            json_object_set(s, "time", json_object_get(ev, "t"));
        } else if (!strcmp(type, "run_end")) {
            json_int_t code = json_integer_value(json_object_get(ev, "code"));
            json_object_set_new(s, "code", json_integer(code));
            json_object_set_new(s, "ok", json_boolean(code == 0));
            json_object_set_new(s, "status", json_string(code ? "failed" : "ok"));
            json_object_set(s, "seconds", json_object_get(ev, "seconds"));
            if (json_object_get(ev, "error")) json_object_set(s, "error", json_object_get(ev, "error"));
        } else if (stage && (!strcmp(type, "stage_start") || !strcmp(type, "stage_end") || !strcmp(type, "stage_cached") ||
                             !strcmp(type, "stage_failed"))) {
            json_t *st = json_object_get(stages, stage);
            if (!st) json_object_set_new(stages, stage, st = json_object());
            if (json_object_get(ev, "kind")) json_object_set(st, "kind", json_object_get(ev, "kind"));
            if (json_object_get(ev, "key")) json_object_set(st, "key", json_object_get(ev, "key"));
            const char *status = !strcmp(type, "stage_end") ? "ran" : !strcmp(type, "stage_cached") ? "cached"
                                 : !strcmp(type, "stage_failed") ? "failed" : "running";
            json_object_set_new(st, "status", json_string(status));
            if (json_object_get(ev, "seconds")) json_object_set(st, "seconds", json_object_get(ev, "seconds"));
            if (json_object_get(ev, "metrics")) json_object_set(st, "metrics", json_object_get(ev, "metrics"));
        } else if (!strcmp(type, "gates")) {
            json_object_set(s, "gates", json_object_get(ev, "gates"));
        }
        json_decref(ev);
    }
    free(text);
    json_object_set_new(s, "stages", stages);
    return s;
}

json_t *runrec_summary(const char *run_dir) {
    char *sp = fs_join(run_dir, "summary.json");
    json_t *s = json_load_file(sp, 0, NULL);
    free(sp);
    if (s && !json_is_object(s)) { json_decref(s); s = NULL; }
    if (!s) s = summary_from_events(run_dir);
    if (!s) return NULL;
    json_object_set_new(s, "run", json_string(base_name(run_dir)));
    json_object_set_new(s, "dir", json_string(run_dir));
    return s;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* directory names under dir, sorted (UTC stamps sort by time) */
static char **list_dirs(const char *dir, size_t *n) {
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char **names = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *p = fs_join(dir, e->d_name);
        if (fs_is_dir(p)) {
            names = realloc(names, (*n + 1) * sizeof *names);
            names[(*n)++] = strdup(e->d_name);
        }
        free(p);
    }
    closedir(d);
    if (*n) qsort(names, *n, sizeof *names, cmp_str);
    return names;
}

json_t *runrec_history(const char *recipe_dir, const char *exclude, int max) {
    size_t n;
    char **names = list_dirs(recipe_dir, &n);
    json_t *out = json_array();
    size_t first = 0, kept = 0;
    for (size_t i = n; i-- > 0;) { /* the newest `max` */
        if (exclude && !strcmp(names[i], exclude)) continue;
        if ((int)++kept >= max) { first = i; break; }
    }
    for (size_t i = first; i < n; i++) {
        if (!(exclude && !strcmp(names[i], exclude))) {
            char *p = fs_join(recipe_dir, names[i]);
            json_t *s = runrec_summary(p);
            free(p);
            if (s) json_array_append_new(out, s);
        }
        free(names[i]);
    }
    for (size_t i = 0; i < first; i++) free(names[i]);
    free(names);
    return out;
}

bool runrec_last_ok_value(const json_t *history, const char *stage, const char *metric, double *value,
                          const char **run) {
    for (size_t i = json_array_size(history); i-- > 0;) {
        json_t *s = json_array_get(history, i);
        if (!json_is_true(json_object_get(s, "ok"))) continue;
        json_t *v = json_object_get(json_object_get(json_object_get(json_object_get(s, "stages"), stage), "metrics"), metric);
        if (!json_is_number(v)) continue;
        *value = json_number_value(v);
        if (run) *run = json_string_value(json_object_get(s, "run"));
        return true;
    }
    return false;
}

char *runrec_resolve(const char *runs_base, const char *arg) {
    if (arg && fs_is_dir(arg)) {
        char *ep = fs_join(arg, "events.jsonl");
        bool rec = fs_exists(ep);
        free(ep);
        if (rec) return strdup(arg);
        /* a recipe's folder of runs: its newest */
        size_t n;
        char **names = list_dirs(arg, &n);
        char *out = n ? fs_join(arg, names[n - 1]) : NULL;
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
        if (out) return out;
        err_set(ERR_USAGE, "'%s' holds no run record (no events.jsonl)", arg);
        return NULL;
    }
    if (arg && strchr(arg, '/')) {
        err_set(ERR_USAGE, "no run record at '%s'", arg);
        return NULL;
    }
    if (arg) { /* a recipe name */
        char *rd = fs_join(runs_base, arg);
        size_t n;
        char **names = list_dirs(rd, &n);
        char *out = n ? fs_join(rd, names[n - 1]) : NULL;
        for (size_t i = 0; i < n; i++) free(names[i]);
        free(names);
        free(rd);
        if (!out) err_set(ERR_USAGE, "no run record '%s': neither a run directory nor a recipe with runs under '%s'", arg, runs_base);
        return out;
    }
    /* the newest run of any recipe: compare the stamps */
    size_t nr;
    char **recipes = list_dirs(runs_base, &nr), *best = NULL, *best_name = NULL;
    for (size_t i = 0; i < nr; i++) {
        char *rd = fs_join(runs_base, recipes[i]);
        size_t n;
        char **names = list_dirs(rd, &n);
        if (n && (!best_name || strcmp(names[n - 1], best_name) > 0)) {
            free(best);
            free(best_name);
            best = fs_join(rd, names[n - 1]);
            best_name = strdup(names[n - 1]);
        }
        for (size_t k = 0; k < n; k++) free(names[k]);
        free(names);
        free(rd);
        free(recipes[i]);
    }
    free(recipes);
    free(best_name);
    if (!best) err_set(ERR_USAGE, "no run records under '%s' (set --dir or $QLORA_RUNS)", runs_base);
    return best;
}

int runrec_write_summary(const char *run_dir, const json_t *summary) {
    char *text = json_dumps(summary, JSON_INDENT(2));
    if (!text) return err_set(ERR_STAGE, "cannot encode the run summary");
    char *p = fs_join(run_dir, "summary.json");
    size_t l = strlen(text);
    text[l] = '\n';
    int rc = fs_write_atomic(p, text, l + 1);
    free(p);
    free(text);
    return rc;
}
