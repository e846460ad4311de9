/* stage.c: parameter accessors and reporting for stage implementations (see stage.h). */
#define _GNU_SOURCE
#include "stage.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "core/events.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/progress.h"

const param_spec *stage_param_find(const stage_kind *k, const char *name) {
    for (const param_spec *p = k->params; p && p->name; p++)
        if (!strcmp(p->name, name)) return p;
    return NULL;
}

const metric_spec *stage_metric_find(const stage_kind *k, const char *name) {
    const metric_spec *any = NULL;
    for (const metric_spec *m = k->metrics; m && m->name; m++) {
        if (!strcmp(m->name, name)) return m;
        if (!strcmp(m->name, "*")) any = m;
    }
    return any;
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

char *stage_path(const stage_ctx *c, const char *key) {
    const char *p = stage_str(c, key);
    if (!p) return NULL;
    if (p[0] == '/' || !c->recipe_dir) return strdup(p);
    return fs_join(c->recipe_dir, p);
}

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
