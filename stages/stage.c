/* stage.c: parameter accessors and reporting for stage implementations (see stage.h). */
#define _GNU_SOURCE
#include "stage.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/collective.h"
#include "core/events.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "core/log.h"
#include "core/progress.h"
#include "model/device.h"
#include "model/llama.h"

const param_spec *stage_param_find(const stage_kind *k, const char *name) {
    for (const param_spec *p = k->params; p && p->name; p++)
        if (!strcmp(p->name, name)) return p;
    return NULL;
}

const metric_spec *stage_metric_find(const stage_kind *k, const char *name) {
    const metric_spec *any = NULL, *suffix = NULL;
    size_t ln = strlen(name);
    for (const metric_spec *m = k->metrics; m && m->name; m++) {
        if (!strcmp(m->name, name)) return m;
        if (!strcmp(m->name, "*")) any = m;
        /* "*.acc": any name ending in ".acc" (evaluate's tasks: NAME.acc) */
        size_t lm = strlen(m->name);
        if (!suffix && m->name[0] == '*' && lm > 1 && ln > lm - 1 && !strcmp(name + ln - (lm - 1), m->name + 1))
            suffix = m;
    }
    return suffix ? suffix : any;
}

const char *stage_str(const stage_ctx *c, const char *key) {
    return json_string_value(json_object_get(c->params, key));
}

int64_t stage_int(const stage_ctx *c, const char *key) {
    json_t *v = json_object_get(c->params, key);
    return json_is_integer(v) ? json_integer_value(v) : (int64_t)json_number_value(v);
}

double stage_float(const stage_ctx *c, const char *key) { return json_number_value(json_object_get(c->params, key)); }
bool stage_bool(const stage_ctx *c, const char *key) { return json_is_true(json_object_get(c->params, key)); }
json_t *stage_json(const stage_ctx *c, const char *key) { return json_object_get(c->params, key); }

char *stage_path_in(const char *recipe_dir, const char *p) {
    if (!p) return NULL;
    if (p[0] == '/' || !recipe_dir) return strdup(p);
    return fs_join(recipe_dir, p);
}

char *stage_recipe_path(const stage_ctx *c, const char *p) { return stage_path_in(c->recipe_dir, p); }

char *stage_path(const stage_ctx *c, const char *key) { return stage_recipe_path(c, stage_str(c, key)); }

const stage_input *stage_input_get(const stage_ctx *c, const char *role) {
    for (int i = 0; i < c->n_inputs; i++)
        if (!strcmp(c->inputs[i].role, role)) return &c->inputs[i];
    return NULL;
}

void stage_logf(stage_ctx *c, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (c && c->log) { fprintf(c->log, "%s\n", buf); fflush(c->log); }
    progress_clear();
    outf("  %s", buf);
}

void stage_warnf(stage_ctx *c, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (c && c->log) { fprintf(c->log, "warning: %s\n", buf); fflush(c->log); }
    progress_clear();
    warnf("stage '%s': %s", c && c->name ? c->name : "?", buf);
    if (c && c->events) {
        json_t *ev = json_object();
        json_object_set_new(ev, "message", json_string(buf));
        stage_event(c, "warning", ev);
    }
}

void stage_metric(stage_ctx *c, const char *name, double value) {
    if (!c->metrics) c->metrics = json_object();
    json_object_set_new(c->metrics, name, json_real(value));
}

void stage_progress(stage_ctx *c, const char *what, double done, double total, const char *unit) {
    progress_update(c->name, what, done, total, unit);
}

void stage_progress_done(stage_ctx *c) { progress_finish(); }

void stage_event(stage_ctx *c, const char *type, json_t *ev) {
    if (!ev) ev = json_object();
    json_object_set_new(ev, "stage", json_string(c->name));
    events_emit(c->events, type, ev);
}

bool stage_interrupted(const stage_ctx *c) { return c->interrupted && *c->interrupted; }

int stage_error_as_recipe(void) {
    char *msg = strdup(err_msg());
    int rc = err_set(ERR_RECIPE, "%s", msg ? msg : "invalid parameters");
    free(msg);
    return rc;
}

void stage_note_files(stage_ctx *c, const json_t *paths) {
    if (!c->hook_files) c->hook_files = json_array();
    size_t cl = c->cache_dir ? strlen(c->cache_dir) : 0, i, k;
    json_t *x, *y;
    json_array_foreach(paths, i, x) {
        const char *p = json_string_value(x);
        /* artifacts of the inputs are keyed through the inputs' keys already */
        if (!p || (cl && !strncmp(p, c->cache_dir, cl) && p[cl] == '/')) continue;
        bool have = false;
        json_array_foreach(c->hook_files, k, y) if (json_equal(x, y)) have = true;
        if (!have) json_array_append(c->hook_files, x);
    }
}

void stage_note_hook_files(stage_ctx *c, struct hooks *h, const char *points) {
    if (!h || !points) return;
    json_t *all = json_array();
    char *list = strdup(points), *save = NULL;
    for (char *p = strtok_r(list, "|", &save); p; p = strtok_r(NULL, "|", &save)) hooks_loaded_files(h, p, all);
    free(list);
    stage_note_files(c, all);
    json_decref(all);
}

const char *stage_model_name(const stage_input *in) {
    if (!in) return NULL;
    const char *n = json_string_value(json_object_get(json_object_get(in->manifest, "report"), "model_name"));
    if (n) return n;
    /* artifacts made before model_name was recorded: a fetched hub repo still names itself */
    return json_string_value(json_object_get(json_object_get(in->manifest, "params"), "repo"));
}

json_t *stage_environment(const ops_table *ops) {
    device_info di;
    device_info_get(ops, &di);
    char cd[32] = "", cr[32] = "";
    if (di.cuda_driver) snprintf(cd, sizeof cd, "%d.%d", di.cuda_driver / 1000, di.cuda_driver % 1000 / 10);
    if (di.cuda_runtime) snprintf(cr, sizeof cr, "%d.%d", di.cuda_runtime / 1000, di.cuda_runtime % 1000 / 10);
    json_t *env = json_pack("{s:b, s:s, s:s, s:s, s:s, s:s, s:i}", "deterministic", di.deterministic, "device", di.name,
                            "driver", di.driver, "cuda_driver", cd, "cuda_runtime", cr, "program_version",
#ifdef QLORA_VERSION
                            QLORA_VERSION,
#else
                            "dev",
#endif
                            "ranks", coll_world());
    return env ? env : json_object();
}

void stage_note_environment(stage_ctx *c, const ops_table *ops) {
    if (c->report) json_object_set_new(c->report, "environment", stage_environment(ops));
}

int stage_parse_budget(const char *s, double *bytes) {
    *bytes = 0;
    if (!s) return 0;
    char *end;
    double v = strtod(s, &end);
    if (v > 0 && end != s && !*end)
        return err_set(ERR_RECIPE, "memory_budget '%s' needs a unit: write %sGB or %sMB", s, s, s);
    bool gb = !strcasecmp(end, "GB") || !strcasecmp(end, "GiB"), mb = !strcasecmp(end, "MB") || !strcasecmp(end, "MiB");
    if (!(v > 0) || !isfinite(v) || !(gb || mb))
        return err_set(ERR_RECIPE, "memory_budget '%s' must look like 8GB or 512MB", s);
    *bytes = v * (gb ? 1073741824.0 : 1048576.0);
    return 0;
}

int stage_model_preview_copy(stage_model_preview *out, const stage_model_preview *in) {
    *out = (stage_model_preview){0};
    if (!in || !in->config) return 0;
    out->config = malloc(sizeof *out->config);
    out->from = in->from ? strdup(in->from) : NULL;
    if (!out->config || (in->from && !out->from)) {
        stage_model_preview_free(out);
        return err_set(ERR_STAGE, "out of memory");
    }
    *out->config = *in->config;
    json_incref(out->config->skip_modules);
    return 0;
}

void stage_model_preview_free(stage_model_preview *p) {
    if (p->config) config_free(p->config);
    free(p->config);
    free(p->from);
    *p = (stage_model_preview){0};
}

int stage_dense_weights(stage_ctx *c, llama_model *m, bool *kept) {
    const char *mode = stage_str(c, "dense_weights");
    double budget;
    int rc = stage_parse_budget(stage_str(c, "memory_budget"), &budget);
    if (rc) return rc;
    llama_dense_choice ch;
    rc = llama_dense_auto(m, !strcmp(mode, "on") ? LLAMA_DENSE_ON : !strcmp(mode, "off") ? LLAMA_DENSE_OFF : LLAMA_DENSE_AUTO,
                          budget, &ch);
    if (rc) return err_wrap("dense_weights: %s (auto keeps them only when they fit; off never does)", mode);
    const double gib = 1073741824.0;
    if (ch.kept && ch.kept_bytes < ch.need_bytes)
        stage_logf(c, "base weights kept dequantized on %s in part: %.1f of %.1f MiB, the first layers' linears "
                      "(dense_weights: %s; what is left after the plan); the rest dequantized in each pass",
                   m->ops->name, ch.kept_bytes / 1048576.0, ch.need_bytes / 1048576.0, mode);
    else if (ch.kept)
        stage_logf(c, "base weights kept dequantized on %s: %.1f MiB (dense_weights: %s)", m->ops->name,
                   ch.need_bytes / 1048576.0, mode);
    else if (!strcmp(mode, "auto") && ch.room_bytes != 0)
        stage_logf(c, "base weights dequantized in each pass: keeping them would take %.2f GiB, %.2f GiB are left",
                   ch.need_bytes / gib, ch.room_bytes / gib);
    if (kept) *kept = ch.kept;
    return 0;
}
