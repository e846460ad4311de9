/* cmd_report.c: `qlora-run report [RUN]` rebuilds a run's report.html; `qlora-run runs diff A B`
 * (reached from cmd_runs) prints what differs between two runs: resolved parameters, stage
 * outcomes and metrics. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "runner/cli.h"
#include "runner/commands.h"
#include "runner/report.h"
#include "runner/runrec.h"
#include "runner/yaml_tree.h"

int runs_diff(int argc, char **argv);

typedef struct report_args {
    const char *dir;
} report_args;

static const cli_opt report_opts[] = {
    {"dir", 0, CLI_STR, "RUNS_DIR", "where the run records are (default $QLORA_RUNS, or runs)", CLI_AT(report_args, dir), 0, 0},
    {0},
};

const cli_cmd cli_report = {
    .name = "report",
    .usage = "report [RUN] [--dir RUNS_DIR]",
    .summary = "rebuild a run's report.html",
    .about = "Rebuilds RUN's report.html (one self-contained page: plots, stage timeline, evaluation,\n"
             "gates, history of the recipe's runs, recipe and environment) and prints its path.\n"
             "RUN is a run record directory, a recipe's name (its newest run) or nothing (the newest\n"
             "run of any recipe).",
    .min_pos = 0, .max_pos = 1, .opts = report_opts,
};

int cmd_report(int argc, char **argv) {
    report_args a = {0};
    const char **pos = calloc((size_t)argc + 1, sizeof *pos); /* cli_parse: capacity argc */
    int n_pos, rc = cli_parse(&cli_report, &a, argc, argv, pos, &n_pos);
    const char *arg = n_pos ? pos[0] : NULL;
    free(pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    char *base = runrec_base(a.dir), *run = runrec_resolve(base, arg);
    free(base);
    if (!run) return ERR_USAGE;
    rc = report_write(run);
    if (!rc) {
        char *p = fs_join(run, "report.html");
        printf("%s\n", p);
        free(p);
    }
    free(run);
    return rc;
}

/* ---- runs diff ---- */

static json_t *load_recipe_json(const char *run) {
    char *p = fs_join(run, "recipe.yaml");
    yt_node *n = NULL;
    json_t *j = NULL;
    if (yt_parse_file(p, &n) == 0) j = yt_to_json(n);
    else err_clear();
    yt_free(&n);
    free(p);
    return j;
}

static void show(char *buf, size_t n, const json_t *v) {
    if (!v) { snprintf(buf, n, "(absent)"); return; }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, n, "%s", s ? s : "?");
    free(s);
}

/* every leaf that differs, by dotted path */
static int diff_json(const char *path, const json_t *a, const json_t *b) {
    int n = 0;
    if (json_is_object(a) && json_is_object(b)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v) {
            char *p;
            if (asprintf(&p, "%s%s%s", path, *path ? "." : "", k) < 0) continue;
            n += diff_json(p, v, json_object_get(b, k));
            free(p);
        }
        json_object_foreach((json_t *)b, k, v) {
            if (json_object_get(a, k)) continue;
            char *p;
            if (asprintf(&p, "%s%s%s", path, *path ? "." : "", k) < 0) continue;
            n += diff_json(p, NULL, v);
            free(p);
        }
        return n;
    }
    if (a && b && json_equal((json_t *)a, (json_t *)b)) return 0;
    char x[256], y[256];
    show(x, sizeof x, a);
    show(y, sizeof y, b);
    printf("  %s: %s -> %s\n", path, x, y);
    return 1;
}

typedef struct diff_args {
    const char *dir;
} diff_args;

static const cli_opt diff_opts[] = {
    {"dir", 0, CLI_STR, "RUNS_DIR", "where the run records are (default $QLORA_RUNS, or runs)", CLI_AT(diff_args, dir), 0, 0},
    {0},
};

static const cli_cmd cli_runs_diff = {
    .name = "runs diff",
    .usage = "runs diff A B [--dir RUNS_DIR]",
    .summary = "parameters and metrics that differ between two runs",
    .about = "Prints what differs between two runs: resolved recipe parameters (path: old -> new),\n"
             "stage outcomes and cache keys, what produced each artifact (deterministic mode, device,\n"
             "driver, CUDA and program versions), and every metric (old -> new, with the change in %).\n"
             "A and B are run record directories or recipe names (their newest run).",
    .min_pos = 2, .max_pos = 2, .opts = diff_opts,
};

int runs_diff(int argc, char **argv) {
    diff_args da = {0};
    const char **pos = calloc((size_t)argc + 1, sizeof *pos), *args[2] = {NULL, NULL};
    int na, prc = cli_parse(&cli_runs_diff, &da, argc, argv, pos, &na);
    if (na == 2) args[0] = pos[0], args[1] = pos[1];
    free(pos);
    if (prc) return prc == CLI_HELP ? 0 : prc;
    const char *dir = da.dir;
    if (na != 2) return cli_usage_error(&cli_runs_diff, "which two runs? (qlora-run runs diff A B)");
    char *base = runrec_base(dir), *ra = runrec_resolve(base, args[0]), *rb = ra ? runrec_resolve(base, args[1]) : NULL;
    free(base);
    if (!ra || !rb) {
        free(ra);
        return ERR_USAGE;
    }
    json_t *sa = runrec_summary(ra), *sb = runrec_summary(rb);
    int rc = 0;
    if (!sa || !sb) {
        rc = err_set(ERR_USAGE, "'%s' is not a readable run record", !sa ? ra : rb);
        goto out;
    }
    printf("A: %s (%s)\nB: %s (%s)\n", ra, json_string_value(json_object_get(sa, "status")) ?: "?", rb,
           json_string_value(json_object_get(sb, "status")) ?: "?");
    json_t *ja = load_recipe_json(ra), *jb = load_recipe_json(rb);
    printf("parameters:\n");
    if (!diff_json("", ja, jb)) printf("  (none differ)\n");
    json_decref(ja);
    json_decref(jb);
    printf("stages:\n");
    json_t *stA = json_object_get(sa, "stages"), *stB = json_object_get(sb, "stages");
    const char *name;
    json_t *a;
    int nd = 0;
    json_object_foreach(stA, name, a) {
        json_t *b = json_object_get(stB, name);
        const char *ka = json_string_value(json_object_get(a, "key")), *kb = json_string_value(json_object_get(b, "key"));
        const char *xa = json_string_value(json_object_get(a, "status")), *xb = json_string_value(json_object_get(b, "status"));
        if (!b) { printf("  %s: only in A\n", name); nd++; continue; }
        if (ka && kb && strcmp(ka, kb)) printf("  %s: different artifact (key %.12s -> %.12s)\n", name, ka, kb), nd++;
        if (xa && xb && strcmp(xa, xb)) printf("  %s: %s -> %s\n", name, xa, xb), nd++;
    }
    json_object_foreach(stB, name, a) if (!json_object_get(stA, name)) printf("  %s: only in B\n", name), nd++;
    if (!nd) printf("  (same artifacts)\n");
    /* what produced each artifact (stage_note_environment): deterministic mode, device, driver,
     * CUDA and program versions; a bit-for-bit comparison needs all of them equal */
    printf("environment:\n");
    nd = 0;
    json_object_foreach(stA, name, a) {
        json_t *ea = json_object_get(json_object_get(a, "report"), "environment");
        json_t *eb = json_object_get(json_object_get(json_object_get(stB, name), "report"), "environment");
        if (!ea && !eb) continue;
        char path[256];
        snprintf(path, sizeof path, "%s", name);
        int n = diff_json(path, ea, eb);
        if (!n) {
            printf("  %s: same (deterministic %s, %s, driver %s, CUDA %s, qlora-run %s)\n", name,
                   json_is_true(json_object_get(ea, "deterministic")) ? "true" : "false",
                   json_string_value(json_object_get(ea, "device")) ?: "?",
                   *(json_string_value(json_object_get(ea, "driver")) ?: "") ? json_string_value(json_object_get(ea, "driver")) : "-",
                   *(json_string_value(json_object_get(ea, "cuda_runtime")) ?: "") ? json_string_value(json_object_get(ea, "cuda_runtime")) : "-",
                   json_string_value(json_object_get(ea, "program_version")) ?: "?");
        }
        nd++;
    }
    if (!nd) printf("  (not recorded)\n");
    printf("metrics:\n");
    nd = 0;
    json_object_foreach(stA, name, a) {
        json_t *ma = json_object_get(a, "metrics"), *mb = json_object_get(json_object_get(stB, name), "metrics");
        const char *mk;
        json_t *va;
        json_object_foreach(ma, mk, va) {
            json_t *vb = json_object_get(mb, mk);
            if (!json_is_number(vb) || json_number_value(va) == json_number_value(vb)) continue;
            double x = json_number_value(va), y = json_number_value(vb);
            printf("  %s.%s: %.6g -> %.6g", name, mk, x, y);
            if (x != 0) printf(" (%+.2f%%)", (y - x) / fabs(x) * 100);
            printf("\n");
            nd++;
        }
    }
    if (!nd) printf("  (none differ)\n");
out:
    json_decref(sa);
    json_decref(sb);
    free(ra);
    free(rb);
    return rc;
}
