/* report.c: the run report (see report.h). The page is written into a memory stream and
 * renamed into place when complete. SVG charts are drawn here: a viewBox scales them to the
 * screen, so a phone shows the same chart narrower. */
#define _GNU_SOURCE
#include "report.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "runner/runrec.h"

#define MAX_POINTS 800 /* a longer series is thinned to this many points (every k-th, last kept) */

typedef struct series {
    const char *name, *color;
    double *x, *y;
    int n, cap;
    int dots; /* draw points (a sparse series such as val loss) */
} series;

static void series_add(series *s, double x, double y) {
    if (!isfinite(x) || !isfinite(y)) return;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        s->x = realloc(s->x, (size_t)s->cap * sizeof *s->x);
        s->y = realloc(s->y, (size_t)s->cap * sizeof *s->y);
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
}

static void series_free(series *s) {
    free(s->x);
    free(s->y);
    s->x = s->y = NULL;
    s->n = s->cap = 0;
}

/* text for HTML content and attribute values */
static void esc(FILE *f, const char *s) {
    for (const char *p = s ? s : ""; *p; p++) {
        switch (*p) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*p, f);
        }
    }
}

/* 1, 2 or 5 times a power of ten near range/n */
static double nice_step(double range, int n) {
    if (!(range > 0)) return 1;
    double raw = range / n, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

static void num(char *buf, size_t n, double v) {
    double a = fabs(v);
    if (v == 0) snprintf(buf, n, "0");
    else if (a >= 1e5 || a < 1e-3) snprintf(buf, n, "%.2g", v);
    else snprintf(buf, n, "%.4g", v);
}

/* A line chart of one or more series sharing axes. id names it for tests and links. */
static void chart(FILE *f, const char *id, const char *title, const char *xlabel, series *ss, int ns) {
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    int total = 0;
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < ss[i].n; k++) {
            x0 = fmin(x0, ss[i].x[k]), x1 = fmax(x1, ss[i].x[k]);
            y0 = fmin(y0, ss[i].y[k]), y1 = fmax(y1, ss[i].y[k]);
            total++;
        }
    if (!total) return;
    if (x1 == x0) x0 -= 1, x1 += 1;
    if (y1 == y0) y0 -= fabs(y0) * 0.1 + 1e-9, y1 += fabs(y1) * 0.1 + 1e-9;
    double pad = (y1 - y0) * 0.05;
    y0 -= pad, y1 += pad;
    const double W = 640, H = 280, L = 64, R = 16, T = 34, B = 38, pw = W - L - R, ph = H - T - B;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (T + ph - ((v) - y0) / (y1 - y0) * ph)
    fprintf(f, "<figure class=\"chart\"><svg class=\"plot\" id=\"%s\" viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"", id, W, H);
    esc(f, title);
    fprintf(f, "\" xmlns=\"http://www.w3.org/2000/svg\">\n<text class=\"title\" x=\"%.0f\" y=\"18\">", L);
    esc(f, title);
    fputs("</text>\n", f);
    double ys = nice_step(y1 - y0, 4);
    char b[64];
    /* k bounds the loops: a step too small to move v (a huge offset, a tiny range) draws no more ticks */
    int nt = 0;
    for (double v = ceil(y0 / ys) * ys; v <= y1 + ys * 1e-9 && nt < 12; v += ys, nt++) {
        num(b, sizeof b, fabs(v) < ys * 1e-9 ? 0 : v);
        fprintf(f, "<line class=\"grid\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/><text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                L, W - R, PY(v), PY(v), L - 6, PY(v) + 4, b);
    }
    double xs = nice_step(x1 - x0, 5);
    bool int_x = true; /* steps and run numbers: no tick between two integers */
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < ss[i].n; k++) int_x &= ss[i].x[k] == floor(ss[i].x[k]);
    if (int_x && xs < 1) xs = 1;
    nt = 0;
    for (double v = ceil(x0 / xs) * xs; v <= x1 + xs * 1e-9 && nt < 12; v += xs, nt++) {
        num(b, sizeof b, v);
        fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", PX(v), H - B + 16, b);
    }
    fprintf(f, "<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, W - R, T + ph, T + ph);
    fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", W - R, H - 4);
    esc(f, xlabel);
    fputs("</text>\n", f);
    double lx = L + 8;
    for (int i = 0; i < ns; i++) {
        series *s = &ss[i];
        if (!s->n) continue;
        int step = s->n > MAX_POINTS ? (s->n + MAX_POINTS - 1) / MAX_POINTS : 1;
        if (s->n > 1 || !s->dots) {
            fprintf(f, "<polyline class=\"line\" data-series=\"%s\" fill=\"none\" stroke=\"%s\" points=\"", s->name, s->color);
            for (int k = 0; k < s->n; k += step) fprintf(f, "%.1f,%.1f ", PX(s->x[k]), PY(s->y[k]));
            if ((s->n - 1) % step) fprintf(f, "%.1f,%.1f", PX(s->x[s->n - 1]), PY(s->y[s->n - 1]));
            fputs("\"/>\n", f);
        }
        if (s->dots)
            for (int k = 0; k < s->n; k += step) {
                num(b, sizeof b, s->y[k]);
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>%s %s at %g</title></circle>\n", PX(s->x[k]),
                        PY(s->y[k]), s->color, s->name, b, s->x[k]);
            }
        if (ns > 1) {
            fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"4\" fill=\"%s\"/><text class=\"tick\" x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                    lx, T + 4, s->color, lx + 14, T + 10, s->name);
            lx += 14 + 8.5 * (double)strlen(s->name) + 14;
        }
    }
    fputs("</svg></figure>\n", f);
#undef PX
#undef PY
}

/* "2026-12-04T15:33:38.167Z" to seconds since the epoch (NAN if it does not parse) */
static double iso_time(const char *t) {
    struct tm tm = {0};
    double frac = 0;
    int ms = 0, n = 0;
    if (!t || sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) < 6)
        return NAN;
    if (t[n] == '.' && sscanf(t + n + 1, "%3d", &ms) == 1) frac = ms / 1000.0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (double)timegm(&tm) + frac;
}

/* ---- what the page shows, gathered from the records ---- */

typedef struct train_series {
    char *stage, *from_run; /* from_run: the earlier run whose events the plots come from */
    series loss, val, lr, gnorm, tps;
} train_series;

typedef struct span {
    char *stage, *status;
    double start, end;
} span;

typedef struct page {
    json_t *summary, *history, *eval_results; /* eval_results: evaluate's table from events (borrowed into summary if cached) */
    train_series *tr;
    int n_tr;
    span *spans;
    int n_spans;
    double t0, t1;
} page;

static train_series *train_get(page *pg, const char *stage) {
    for (int i = 0; i < pg->n_tr; i++)
        if (!strcmp(pg->tr[i].stage, stage)) return &pg->tr[i];
    pg->tr = realloc(pg->tr, (size_t)(pg->n_tr + 1) * sizeof *pg->tr);
    train_series *t = &pg->tr[pg->n_tr++];
    memset(t, 0, sizeof *t);
    t->stage = strdup(stage);
    t->loss = (series){.name = "train loss", .color = "#2563eb"};
    t->val = (series){.name = "val loss", .color = "#dc2626", .dots = 1};
    t->lr = (series){.name = "learning rate", .color = "#7c3aed"};
    t->gnorm = (series){.name = "grad norm", .color = "#d97706"};
    t->tps = (series){.name = "tokens/s", .color = "#059669"};
    return t;
}

static span *span_get(page *pg, const char *stage) {
    for (int i = 0; i < pg->n_spans; i++)
        if (!strcmp(pg->spans[i].stage, stage)) return &pg->spans[i];
    pg->spans = realloc(pg->spans, (size_t)(pg->n_spans + 1) * sizeof *pg->spans);
    span *s = &pg->spans[pg->n_spans++];
    *s = (span){strdup(stage), strdup("running"), NAN, NAN};
    return s;
}

/* Read one events.jsonl. With only_stage set, only that stage's step/eval events are taken
 * (the plots of a cached train stage from an earlier run). */
static int read_events(page *pg, const char *run_dir, const char *only_stage) {
    char *ep = fs_join(run_dir, "events.jsonl"), *text = NULL;
    size_t len;
    int rc = fs_read_all(ep, &text, &len);
    free(ep);
    if (rc) return rc;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        json_t *ev = json_loadb(line, nl ? (size_t)(nl - line) : strlen(line), 0, NULL);
        line = nl ? nl + 1 : NULL;
        if (!ev) continue;
        const char *type = json_string_value(json_object_get(ev, "type")), *stage = json_string_value(json_object_get(ev, "stage"));
        double t = iso_time(json_string_value(json_object_get(ev, "t")));
        if (!type) type = "";
        if (stage && (!only_stage || !strcmp(stage, only_stage))) {
            if (!strcmp(type, "step")) {
                train_series *ts = train_get(pg, stage);
                double x = json_number_value(json_object_get(ev, "step"));
                series_add(&ts->loss, x, json_number_value(json_object_get(ev, "loss")));
                series_add(&ts->lr, x, json_number_value(json_object_get(ev, "lr")));
                series_add(&ts->gnorm, x, json_number_value(json_object_get(ev, "grad_norm")));
                series_add(&ts->tps, x, json_number_value(json_object_get(ev, "tokens_per_s")));
            } else if (!strcmp(type, "eval") && json_object_get(ev, "val_loss")) {
                series_add(&train_get(pg, stage)->val, json_number_value(json_object_get(ev, "step")),
                           json_number_value(json_object_get(ev, "val_loss")));
            }
        }
        if (!only_stage) {
            if (isfinite(t)) {
                if (!isfinite(pg->t0) || t < pg->t0) pg->t0 = t;
                if (!isfinite(pg->t1) || t > pg->t1) pg->t1 = t;
            }
            if (stage && (!strcmp(type, "stage_start") || !strcmp(type, "stage_end") || !strcmp(type, "stage_cached") ||
                          !strcmp(type, "stage_failed"))) {
                span *s = span_get(pg, stage);
                if (!strcmp(type, "stage_start")) s->start = t;
                else {
                    if (!isfinite(s->start)) s->start = t;
                    s->end = t;
                    free(s->status);
                    s->status = strdup(!strcmp(type, "stage_end") ? "ran" : !strcmp(type, "stage_cached") ? "cached" : "failed");
                }
            } else if (!strcmp(type, "eval_results")) {
                json_decref(pg->eval_results);
                pg->eval_results = json_incref(ev);
            }
        }
        json_decref(ev);
    }
    free(text);
    return 0;
}

/* A train stage cached in this run: its plots from the newest run that trained that key. */
static void steps_from_history(page *pg) {
    json_t *stages = json_object_get(pg->summary, "stages");
    const char *name;
    json_t *st;
    json_object_foreach(stages, name, st) {
        if (strcmp(json_string_value(json_object_get(st, "kind")) ? json_string_value(json_object_get(st, "kind")) : "", "train"))
            continue;
        const char *status = json_string_value(json_object_get(st, "status")), *key = json_string_value(json_object_get(st, "key"));
        bool have = false;
        for (int i = 0; i < pg->n_tr; i++) have |= !strcmp(pg->tr[i].stage, name) && pg->tr[i].loss.n;
        if (have || !status || strcmp(status, "cached") || !key) continue;
        for (size_t i = json_array_size(pg->history); i-- > 0;) {
            json_t *h = json_array_get(pg->history, i), *hs = json_object_get(json_object_get(h, "stages"), name);
            const char *hk = json_string_value(json_object_get(hs, "key")), *hst = json_string_value(json_object_get(hs, "status"));
            if (!hk || strcmp(hk, key) || !hst || strcmp(hst, "ran")) continue;
            if (read_events(pg, json_string_value(json_object_get(h, "dir")), name) == 0) {
                train_series *ts = train_get(pg, name);
                free(ts->from_run);
                ts->from_run = strdup(json_string_value(json_object_get(h, "run")));
            }
            err_clear();
            break;
        }
    }
}

/* ---- sections ---- */

static const char css[] =
    ":root{--fg:#1f2937;--mut:#6b7280;--bd:#e5e7eb;--ok:#047857;--bad:#b91c1c;--warn:#b45309}"
    "*{box-sizing:border-box}body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:#f9fafb}"
    "main{max-width:1100px;margin:0 auto;padding:12px}h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .5em;border-bottom:1px solid var(--bd)}"
    ".badge{display:inline-block;padding:.1em .6em;border-radius:1em;color:#fff;font-weight:600;font-size:.85em}"
    ".ok{background:var(--ok)}.fail{background:var(--bad)}.other{background:var(--warn)}.mut{color:var(--mut)}"
    ".grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:10px}"
    "figure.chart{margin:0;background:#fff;border:1px solid var(--bd);border-radius:6px;padding:4px}"
    "svg.plot{width:100%;height:auto;display:block}svg text{font-size:14px;fill:var(--mut)}svg text.title{font-size:16px;fill:var(--fg);font-weight:600}"
    "svg .grid{stroke:#eef0f3}svg .axis{stroke:#9ca3af}svg .line{stroke-width:1.6}"
    ".scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}table{border-collapse:collapse;background:#fff;min-width:100%}"
    "th,td{border:1px solid var(--bd);padding:4px 8px;text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}"
    "pre{background:#fff;border:1px solid var(--bd);padding:8px;overflow-x:auto;font-size:12px}pre.error{white-space:pre-wrap;border-color:var(--bad)}"
    "code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;white-space:pre-wrap;word-break:break-word}"
    "details{margin:.6em 0}summary{cursor:pointer;font-weight:600}";

static void cell_num(FILE *f, const json_t *v) {
    char b[64];
    if (json_is_number(v)) num(b, sizeof b, json_number_value(v));
    else snprintf(b, sizeof b, "-");
    fprintf(f, "<td class=\"n\">%s</td>", b);
}

static const char *badge_class(const char *result) {
    if (!result) return "other";
    if (!strcmp(result, "pass") || !strcmp(result, "ok") || !strcmp(result, "ran") || !strcmp(result, "cached")) return "ok";
    if (!strcmp(result, "fail") || !strcmp(result, "failed") || !strcmp(result, "gate failed")) return "fail";
    return "other";
}

static void section_gates(FILE *f, const json_t *gates) {
    if (!json_array_size(gates)) return;
    fputs("<h2 id=\"gates\">Gates</h2><div class=\"scroll\"><table><tr><th>gate</th><th>result</th><th>value</th><th>min</th><th>max</th>"
          "<th>max regression</th><th>previous</th><th>why</th></tr>\n", f);
    size_t i;
    json_t *g;
    json_array_foreach(gates, i, g) {
        const char *res = json_string_value(json_object_get(g, "result"));
        fputs("<tr><td class=\"mono\">", f);
        esc(f, json_string_value(json_object_get(g, "gate")));
        fprintf(f, "</td><td><span class=\"badge %s\">", badge_class(res));
        esc(f, res);
        fputs("</span></td>", f);
        cell_num(f, json_object_get(g, "value"));
        cell_num(f, json_object_get(g, "min"));
        cell_num(f, json_object_get(g, "max"));
        json_t *mr = json_object_get(g, "max_regression");
        if (json_is_number(mr)) fprintf(f, "<td class=\"n\">%g%%</td>", json_number_value(mr) * 100);
        else fputs("<td class=\"n\">-</td>", f);
        cell_num(f, json_object_get(g, "previous"));
        fputs("<td>", f);
        esc(f, json_string_value(json_object_get(g, "why")));
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

static void section_training(FILE *f, page *pg) {
    for (int i = 0; i < pg->n_tr; i++) {
        train_series *t = &pg->tr[i];
        if (!t->loss.n && !t->val.n) continue;
        fputs("<h2>Training: <span class=\"mono\">", f);
        esc(f, t->stage);
        fputs("</span></h2>\n", f);
        if (t->from_run) {
            fputs("<p class=\"mut\">Cached in this run: the curves are those of run ", f);
            esc(f, t->from_run);
            fputs(", which trained this adapter.</p>\n", f);
        }
        char id[160];
        fputs("<div class=\"grid2\">\n", f);
        series lv[2] = {t->loss, t->val};
        snprintf(id, sizeof id, "plot-%s-loss", t->stage);
        chart(f, id, "loss (train, and val at each evaluation)", "step", lv, 2);
        snprintf(id, sizeof id, "plot-%s-lr", t->stage);
        chart(f, id, "learning rate", "step", &t->lr, 1);
        snprintf(id, sizeof id, "plot-%s-grad-norm", t->stage);
        chart(f, id, "gradient norm (before clipping)", "step", &t->gnorm, 1);
        snprintf(id, sizeof id, "plot-%s-tokens-per-s", t->stage);
        chart(f, id, "tokens per second", "step", &t->tps, 1);
        fputs("</div>\n", f);
    }
}

static void section_timeline(FILE *f, page *pg) {
    json_t *stages = json_object_get(pg->summary, "stages");
    if (!json_object_size(stages)) return;
    fputs("<h2 id=\"stages\">Stages</h2>\n", f);
    double t0 = pg->t0, span_s = isfinite(pg->t1 - pg->t0) && pg->t1 > pg->t0 ? pg->t1 - pg->t0 : 1;
    int n = (int)json_object_size(stages);
    const double W = 640, L = 130, R = 70, rowh = 24;
    fprintf(f, "<figure class=\"chart\"><svg class=\"plot timeline\" id=\"plot-timeline\" viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"stage timeline\" xmlns=\"http://www.w3.org/2000/svg\">\n",
            W, rowh * n + 26);
    int row = 0;
    const char *name;
    json_t *st;
    json_object_foreach(stages, name, st) {
        const char *status = json_string_value(json_object_get(st, "status"));
        span *sp = NULL;
        for (int i = 0; i < pg->n_spans; i++)
            if (!strcmp(pg->spans[i].stage, name)) sp = &pg->spans[i];
        double y = 6 + row * rowh;
        fprintf(f, "<text class=\"tick\" x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">", L - 6, y + 13);
        esc(f, name);
        fputs("</text>", f);
        if (sp && isfinite(sp->start)) {
            double a = L + (sp->start - t0) / span_s * (W - L - R), e = isfinite(sp->end) ? sp->end : sp->start;
            double w = fmax(2, (e - sp->start) / span_s * (W - L - R));
            const char *col = status && !strcmp(status, "ran") ? "#2563eb" : status && !strcmp(status, "failed") ? "#dc2626" : "#9ca3af";
            fprintf(f, "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"14\" rx=\"2\" fill=\"%s\"><title>", a, y + 2, w, col);
            esc(f, name);
            fprintf(f, ": %s, %.1f s</title></rect><text class=\"tick\" x=\"%.1f\" y=\"%.1f\">", status ? status : "", e - sp->start,
                    fmin(a + w + 4, W - R + 4), y + 13);
            if (status && !strcmp(status, "ran")) fprintf(f, "%.1f s", e - sp->start);
            else esc(f, status);
            fputs("</text>\n", f);
        } else {
            fprintf(f, "<text class=\"tick\" x=\"%.0f\" y=\"%.1f\">", L, y + 13);
            esc(f, status);
            fputs("</text>\n", f);
        }
        row++;
    }
    fprintf(f, "<text class=\"tick\" x=\"%.0f\" y=\"%.0f\">0 s</text><text class=\"tick\" x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\">%.1f s</text>\n",
            L, rowh * n + 22, W - R, rowh * n + 22, span_s);
    fputs("</svg></figure>\n<div class=\"scroll\"><table><tr><th>stage</th><th>kind</th><th>status</th><th>seconds</th><th>key</th><th>metrics</th></tr>\n", f);
    json_object_foreach(stages, name, st) {
        const char *status = json_string_value(json_object_get(st, "status"));
        fputs("<tr><td class=\"mono\">", f);
        esc(f, name);
        fputs("</td><td>", f);
        esc(f, json_string_value(json_object_get(st, "kind")));
        fprintf(f, "</td><td><span class=\"badge %s\">", badge_class(status));
        esc(f, status);
        fputs("</span></td>", f);
        cell_num(f, json_object_get(st, "seconds"));
        fputs("<td class=\"mono\">", f);
        const char *key = json_string_value(json_object_get(st, "key"));
        fprintf(f, "%.12s", key ? key : "");
        fputs("</td><td class=\"mono\">", f);
        const char *mk;
        json_t *mv;
        int k = 0;
        json_object_foreach(json_object_get(st, "metrics"), mk, mv) {
            char b[64];
            num(b, sizeof b, json_number_value(mv));
            fprintf(f, "%s", k++ ? ", " : "");
            esc(f, mk);
            fprintf(f, " %s", b);
        }
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

static void section_eval(FILE *f, page *pg) {
    /* evaluate's tables: from this run's event, else from the summary (a cached stage's manifest) */
    json_t *stages = json_object_get(pg->summary, "stages");
    const char *name;
    json_t *st;
    json_object_foreach(stages, name, st) {
        const char *kind = json_string_value(json_object_get(st, "kind"));
        if (!kind || strcmp(kind, "evaluate")) continue;
        json_t *res = json_object_get(st, "report");
        if (pg->eval_results && !strcmp(json_string_value(json_object_get(pg->eval_results, "stage")) ?: "", name))
            res = pg->eval_results;
        if (!json_object_size(res)) continue;
        fputs("<h2 id=\"eval\">Evaluation: <span class=\"mono\">", f);
        esc(f, name);
        fputs("</span></h2>\n<div class=\"scroll\"><table><tr><th>data</th><th>base loss</th><th>tuned loss</th><th>base perplexity</th><th>tuned perplexity</th><th>tokens</th></tr>\n", f);
        const char *dk;
        json_t *row;
        json_object_foreach(json_object_get(res, "val"), dk, row) {
            json_t *b = json_object_get(row, "base"), *t = json_object_get(row, "tuned");
            fputs("<tr><td class=\"mono\">", f);
            esc(f, dk);
            fputs("</td>", f);
            cell_num(f, json_object_get(b, "loss"));
            cell_num(f, json_object_get(t, "loss"));
            cell_num(f, json_object_get(b, "perplexity"));
            cell_num(f, json_object_get(t, "perplexity"));
            cell_num(f, json_object_get(row, "tokens"));
            fputs("</tr>\n", f);
        }
        json_t *sc = json_object_get(res, "score");
        if (sc) {
            fputs("<tr><td>score (", f);
            esc(f, json_string_value(json_object_get(sc, "metric")));
            fprintf(f, ", %lld records)</td>", (long long)json_integer_value(json_object_get(sc, "n")));
            cell_num(f, json_object_get(sc, "base"));
            cell_num(f, json_object_get(sc, "tuned"));
            fputs("<td></td><td></td><td></td></tr>\n", f);
        }
        fputs("</table></div>\n", f);
        json_t *gens = json_object_get(res, "generations");
        if (json_array_size(gens)) {
            fputs("<h2>Sample generations</h2><div class=\"scroll\"><table><tr><th>prompt</th><th>reference</th><th>base</th><th>tuned</th></tr>\n", f);
            size_t i;
            json_t *g;
            json_array_foreach(gens, i, g) {
                if (i >= 12) break;
                const char *cols[4] = {"prompt", "reference", "base", "tuned"};
                fputs("<tr>", f);
                for (int c = 0; c < 4; c++) {
                    fputs("<td class=\"mono\">", f);
                    esc(f, json_string_value(json_object_get(g, cols[c])));
                    char sk[32];
                    snprintf(sk, sizeof sk, "score_%s", cols[c]);
                    json_t *s = json_object_get(g, sk);
                    if (json_is_number(s)) fprintf(f, " <span class=\"mut\">(%g)</span>", json_number_value(s));
                    fputs("</td>", f);
                }
                fputs("</tr>\n", f);
            }
            fprintf(f, "</table></div>%s\n", json_array_size(gens) > 12 ? "<p class=\"mut\">The first 12; results.json in the artifact has all.</p>" : "");
        }
    }
}

/* the metrics worth a trend: gated ones, else evaluate's and train's losses and scores */
static bool trend_metric(const json_t *summary, const char *stage, const char *metric) {
    size_t i;
    json_t *g;
    bool any_gate = json_array_size(json_object_get(summary, "gates")) > 0;
    json_array_foreach(json_object_get(summary, "gates"), i, g) if (!strcmp(json_string_value(json_object_get(g, "stage")) ?: "", stage) &&
                                                                    !strcmp(json_string_value(json_object_get(g, "metric")) ?: "", metric)) return true;
    if (any_gate) return false;
    return !strcmp(metric, "val_loss") || !strcmp(metric, "score") || !strcmp(metric, "tokens_per_s");
}

static void section_history(FILE *f, page *pg) {
    size_t nh = json_array_size(pg->history);
    if (!nh) return;
    fputs("<h2 id=\"history\">History of this recipe</h2>\n", f);
    /* trends: one chart per metric, x = run number */
    json_t *stages = json_object_get(pg->summary, "stages");
    const char *sname;
    json_t *st;
    fputs("<div class=\"grid2\">\n", f);
    json_object_foreach(stages, sname, st) {
        const char *mk;
        json_t *mv;
        json_object_foreach(json_object_get(st, "metrics"), mk, mv) {
            if (!trend_metric(pg->summary, sname, mk)) continue;
            series ok = {.name = "successful runs", .color = "#2563eb", .dots = 1}, bad = {.name = "failed runs", .color = "#dc2626", .dots = 1};
            for (size_t i = 0; i < nh; i++) {
                json_t *h = json_array_get(pg->history, i);
                json_t *v = json_object_get(json_object_get(json_object_get(json_object_get(h, "stages"), sname), "metrics"), mk);
                if (!json_is_number(v)) continue;
                series_add(json_is_true(json_object_get(h, "ok")) ? &ok : &bad, (double)(i + 1), json_number_value(v));
            }
            if (ok.n + bad.n >= 1) {
                char id[200], title[200];
                snprintf(id, sizeof id, "trend-%s-%s", sname, mk);
                snprintf(title, sizeof title, "%s.%s across runs", sname, mk);
                series both[2] = {ok, bad};
                chart(f, id, title, "run (oldest first)", both, 2);
            }
            series_free(&ok);
            series_free(&bad);
        }
    }
    fputs("</div>\n<div class=\"scroll\"><table><tr><th>#</th><th>run</th><th>status</th><th>seconds</th><th>metrics</th></tr>\n", f);
    for (size_t i = nh; i-- > 0;) {
        json_t *h = json_array_get(pg->history, i);
        const char *status = json_string_value(json_object_get(h, "status"));
        if (!status) status = json_is_true(json_object_get(h, "ok")) ? "ok" : "failed";
        fprintf(f, "<tr><td class=\"n\">%zu</td><td class=\"mono\">", i + 1);
        esc(f, json_string_value(json_object_get(h, "run")));
        fprintf(f, "</td><td><span class=\"badge %s\">", badge_class(status));
        esc(f, status);
        fputs("</span></td>", f);
        cell_num(f, json_object_get(h, "seconds"));
        fputs("<td class=\"mono\">", f);
        int k = 0;
        json_object_foreach(json_object_get(h, "stages"), sname, st) {
            const char *mk;
            json_t *mv;
            json_object_foreach(json_object_get(st, "metrics"), mk, mv) {
                if (!trend_metric(pg->summary, sname, mk)) continue;
                char b[64];
                num(b, sizeof b, json_number_value(mv));
                fprintf(f, "%s", k++ ? ", " : "");
                esc(f, sname);
                fputc('.', f);
                esc(f, mk);
                fprintf(f, " %s", b);
            }
        }
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
}

static void section_recipe_env(FILE *f, page *pg, const char *run_dir) {
    fputs("<h2 id=\"environment\">Environment</h2><div class=\"scroll\"><table>\n", f);
    struct utsname u;
    const char *rows[][2] = {{"device", json_string_value(json_object_get(pg->summary, "device"))},
                             {"program version", json_string_value(json_object_get(pg->summary, "program_version"))},
                             {"run record", run_dir},
                             {"host", uname(&u) == 0 ? u.nodename : NULL},
                             {"system", uname(&u) == 0 ? u.sysname : NULL}};
    char sys[512] = "";
    if (uname(&u) == 0) snprintf(sys, sizeof sys, "%s %s %s", u.sysname, u.release, u.machine);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const char *v = i == 4 ? sys : rows[i][1];
        if (!v) continue;
        fputs("<tr><th>", f);
        esc(f, rows[i][0]);
        fputs("</th><td class=\"mono\">", f);
        esc(f, v);
        fputs("</td></tr>\n", f);
    }
    /* the program: version, commit, build type, libraries (runner/version.c) */
    const char *pk;
    json_t *pv;
    json_object_foreach(json_object_get(pg->summary, "program"), pk, pv) {
        char *txt = json_is_string(pv) ? strdup(json_string_value(pv)) : json_dumps(pv, JSON_COMPACT | JSON_ENCODE_ANY);
        fputs("<tr><th>program ", f);
        esc(f, pk);
        fputs("</th><td class=\"mono\">", f);
        esc(f, txt);
        fputs("</td></tr>\n", f);
        free(txt);
    }
    /* the models' sources: the hub commit a fetch resolved to */
    const char *name;
    json_t *st;
    json_object_foreach(json_object_get(pg->summary, "stages"), name, st) {
        json_t *fr = json_object_get(json_object_get(st, "report"), "fetch");
        if (!fr) continue;
        fputs("<tr><th>model <span class=\"mono\">", f);
        esc(f, name);
        fputs("</span></th><td class=\"mono\">", f);
        esc(f, json_string_value(json_object_get(fr, "repo")));
        fputc('@', f);
        esc(f, json_string_value(json_object_get(fr, "revision")));
        fputs(" = commit ", f);
        esc(f, json_string_value(json_object_get(fr, "commit")));
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>\n", f);
    char *rp = fs_join(run_dir, "recipe.yaml"), *text = NULL;
    if (fs_read_all(rp, &text, NULL) == 0) {
        fputs("<details><summary>Resolved recipe (every default filled in)</summary><pre>", f);
        esc(f, text);
        fputs("</pre></details>\n", f);
    }
    err_clear();
    free(text);
    free(rp);
}

static void page_free(page *pg) {
    for (int i = 0; i < pg->n_tr; i++) {
        train_series *t = &pg->tr[i];
        free(t->stage);
        free(t->from_run);
        series_free(&t->loss), series_free(&t->val), series_free(&t->lr), series_free(&t->gnorm), series_free(&t->tps);
    }
    free(pg->tr);
    for (int i = 0; i < pg->n_spans; i++) free(pg->spans[i].stage), free(pg->spans[i].status);
    free(pg->spans);
    json_decref(pg->summary);
    json_decref(pg->history);
    json_decref(pg->eval_results);
}

int report_write(const char *run_dir) {
    page pg = {.t0 = NAN, .t1 = NAN};
    pg.summary = runrec_summary(run_dir);
    if (!pg.summary) return err_set(ERR_STAGE, "'%s' is not a run record (no summary.json or events.jsonl)", run_dir);
    char *parent = fs_dirname(run_dir);
    pg.history = runrec_history(parent, NULL, 60);
    free(parent);
    if (read_events(&pg, run_dir, NULL)) err_clear();
    steps_from_history(&pg);

    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) { page_free(&pg); return err_errno(ERR_STAGE, "cannot build the report"); }
    const char *recipe = json_string_value(json_object_get(pg.summary, "recipe"));
    const char *run = json_string_value(json_object_get(pg.summary, "run"));
    const char *status = json_string_value(json_object_get(pg.summary, "status"));
    if (!status) status = json_is_true(json_object_get(pg.summary, "ok")) ? "ok" : "failed";
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
          "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n<title>",
          f);
    esc(f, recipe);
    fputs(" ", f);
    esc(f, run);
    fprintf(f, " - qlora-run report</title>\n<style>%s</style></head><body><main>\n", css);
    fputs("<h1>", f);
    esc(f, recipe);
    fprintf(f, " <span class=\"badge %s\" id=\"status\">", badge_class(status));
    esc(f, status);
    fputs("</span></h1>\n<p class=\"mut\">run ", f);
    esc(f, run);
    json_t *secs = json_object_get(pg.summary, "seconds");
    if (json_is_number(secs)) fprintf(f, " &middot; %.1f s", json_number_value(secs));
    int ran = 0, cached = 0;
    const char *name;
    json_t *st;
    json_object_foreach(json_object_get(pg.summary, "stages"), name, st) {
        const char *s = json_string_value(json_object_get(st, "status"));
        ran += s && !strcmp(s, "ran");
        cached += s && !strcmp(s, "cached");
    }
    fprintf(f, " &middot; %d ran, %d cached</p>\n", ran, cached);
    const char *error = json_string_value(json_object_get(pg.summary, "error"));
    if (error && *error) {
        fputs("<pre class=\"error\">", f);
        esc(f, error);
        fputs("</pre>\n", f);
    }
    section_gates(f, json_object_get(pg.summary, "gates"));
    section_training(f, &pg);
    section_eval(f, &pg);
    section_timeline(f, &pg);
    section_history(f, &pg);
    section_recipe_env(f, &pg, run_dir);
    fputs("<p class=\"mut\">Written by qlora-run; rebuild with <code>qlora-run report ", f);
    esc(f, run_dir);
    fputs("</code>.</p>\n</main></body></html>\n", f);
    fclose(f);
    char *out = fs_join(run_dir, "report.html");
    int rc = fs_write_atomic(out, buf, len);
    free(out);
    free(buf);
    page_free(&pg);
    return rc;
}
