/* gates.c: quality gates checked against stage manifests and earlier runs (see gates.h). */
#define _GNU_SOURCE
#include "gates.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/runrec.h"

static const char *better_word(metric_better b) { return b == METRIC_LOWER ? "lower" : b == METRIC_HIGHER ? "higher" : "neither"; }

bool gates_on_stage(const recipe *r, const char *stage) {
    for (int i = 0; i < r->n_gates; i++)
        if (!strcmp(r->gates[i].stage, stage)) return true;
    return false;
}

char *gates_conditions_text(const recipe_gate *g) {
    char buf[256] = "";
    size_t n = 0;
    if (g->has_min) n += (size_t)snprintf(buf + n, sizeof buf - n, "min %g", g->min);
    if (g->has_max) n += (size_t)snprintf(buf + n, sizeof buf - n, "%smax %g", n ? ", " : "", g->max);
    if (g->has_regression)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%smax_regression %g%%", n ? ", " : "", g->max_regression * 100);
    if (g->better != METRIC_NEITHER && n < sizeof buf)
        snprintf(buf + n, sizeof buf - n, " (%s is better)", better_word(g->better));
    return strdup(buf);
}

static json_t *row_start(const recipe_gate *g) {
    json_t *row = json_object();
    json_object_set_new(row, "gate", json_string(g->label));
    json_object_set_new(row, "stage", json_string(g->stage));
    json_object_set_new(row, "metric", json_string(g->metric));
    json_object_set_new(row, "better", json_string(better_word(g->better)));
    if (g->has_min) json_object_set_new(row, "min", json_real(g->min));
    if (g->has_max) json_object_set_new(row, "max", json_real(g->max));
    if (g->has_regression) json_object_set_new(row, "max_regression", json_real(g->max_regression));
    return row;
}

/* One gate against value v; returns true when it passes, with why (malloc'd) either way. */
static bool check_one(const recipe_gate *g, double v, const json_t *history, json_t *row, char **why) {
    char buf[512];
    if (!isfinite(v)) {
        snprintf(buf, sizeof buf, "%s is %g", g->label, v);
        *why = strdup(buf);
        return false;
    }
    if (g->has_min && v < g->min) {
        snprintf(buf, sizeof buf, "%s = %.6g is below min %g", g->label, v, g->min);
        *why = strdup(buf);
        return false;
    }
    if (g->has_max && v > g->max) {
        snprintf(buf, sizeof buf, "%s = %.6g is above max %g", g->label, v, g->max);
        *why = strdup(buf);
        return false;
    }
    if (g->has_regression) {
        double prev;
        const char *run = NULL;
        if (runrec_last_ok_value(history, g->stage, g->metric, &prev, &run)) {
            double slack = g->max_regression * fabs(prev);
            double bound = g->better == METRIC_LOWER ? prev + slack : prev - slack;
            json_object_set_new(row, "previous", json_real(prev));
            json_object_set_new(row, "previous_run", json_string(run ? run : ""));
            json_object_set_new(row, "bound", json_real(bound));
            bool worse = g->better == METRIC_LOWER ? v > bound : v < bound;
            if (worse) {
                double rel = prev != 0 ? fabs(v - prev) / fabs(prev) * 100 : INFINITY;
                snprintf(buf, sizeof buf, "%s = %.6g is %.2f%% worse than %.6g in the last good run %s (max_regression %g%%)",
                         g->label, v, rel, prev, run ? run : "", g->max_regression * 100);
                *why = strdup(buf);
                return false;
            }
            snprintf(buf, sizeof buf, "%.6g, regression bound %.6g (%.6g in the last good run %s)", v, bound, prev,
                     run ? run : "");
            *why = strdup(buf);
            return true;
        }
        json_object_set_new(row, "previous", json_null());
        *why = strdup("no earlier successful run to compare with: max_regression not applied");
        return true;
    }
    *why = strdup("within bounds");
    return true;
}

int gates_check_stage(const recipe *r, const char *stage, const json_t *manifest, const json_t *history,
                      json_t *rows, char **first_failure) {
    int failed = 0;
    json_t *metrics = json_object_get(manifest, "metrics");
    for (int i = 0; i < r->n_gates; i++) {
        const recipe_gate *g = &r->gates[i];
        if (strcmp(g->stage, stage)) continue;
        json_t *row = row_start(g);
        json_t *v = json_object_get(metrics, g->metric);
        char *why = NULL;
        bool pass;
        if (!json_is_number(v)) {
            json_object_set_new(row, "value", json_null());
            if (asprintf(&why, "stage '%s' recorded no metric '%s' (it records it only when configured to: see docs/recipes.md)",
                         stage, g->metric) < 0)
                why = NULL;
            pass = false;
        } else {
            json_object_set_new(row, "value", json_real(json_number_value(v)));
            pass = check_one(g, json_number_value(v), history, row, &why);
        }
        json_object_set_new(row, "result", json_string(pass ? "pass" : "fail"));
        json_object_set_new(row, "why", json_string(why ? why : ""));
        if (!pass) {
            if (!failed && first_failure) *first_failure = why ? strdup(why) : NULL;
            failed++;
        }
        free(why);
        json_array_append_new(rows, row);
    }
    return failed;
}

void gates_add_unchecked(const recipe *r, json_t *rows) {
    for (int i = 0; i < r->n_gates; i++) {
        const recipe_gate *g = &r->gates[i];
        bool seen = false;
        size_t k;
        json_t *x;
        json_array_foreach(rows, k, x) seen |= !strcmp(json_string_value(json_object_get(x, "gate")), g->label);
        if (seen) continue;
        json_t *row = row_start(g);
        json_object_set_new(row, "value", json_null());
        json_object_set_new(row, "result", json_string("not checked"));
        json_object_set_new(row, "why", json_string("its stage did not finish in this run"));
        json_array_append_new(rows, row);
    }
}
