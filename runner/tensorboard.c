/* tensorboard.c: run events to TensorBoard scalars (see tensorboard.h). */
#define _GNU_SOURCE
#include "tensorboard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/tfevents.h"

struct tb_sink {
    tfevents *w;
    int failed;      /* a write failed: later ones are skipped, tb_close reports it */
    char msg[1024];
};

static double wall_now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec * 1e-6;
}

static void put(tb_sink *s, const char *stage, const char *name, int64_t step, double wall, const json_t *v) {
    if (s->failed || !json_is_number(v)) return;
    char tag[512];
    snprintf(tag, sizeof tag, "%s/%s", stage, name);
    if (tfevents_scalar(s->w, tag, step, wall, (float)json_number_value(v))) {
        s->failed = 1;
        snprintf(s->msg, sizeof s->msg, "%s", err_msg());
        err_clear();
    }
}

static void on_event(void *ud, const char *type, const json_t *ev) {
    tb_sink *s = ud;
    const char *stage = json_string_value(json_object_get(ev, "stage"));
    if (!stage) return;
    double wall = wall_now();
    int64_t step = (int64_t)json_number_value(json_object_get(ev, "step"));
    if (!strcmp(type, "step")) {
        put(s, stage, "loss", step, wall, json_object_get(ev, "loss"));
        put(s, stage, "learning_rate", step, wall, json_object_get(ev, "lr"));
        put(s, stage, "grad_norm", step, wall, json_object_get(ev, "grad_norm"));
        put(s, stage, "tokens_per_s", step, wall, json_object_get(ev, "tokens_per_s"));
    } else if (!strcmp(type, "eval")) {
        put(s, stage, "val_loss", step, wall, json_object_get(ev, "val_loss"));
        put(s, stage, "perplexity", step, wall, json_object_get(ev, "perplexity"));
    } else if (!strcmp(type, "stage_end")) {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(ev, "metrics"), k, v) {
            char name[300];
            snprintf(name, sizeof name, "%s.%s", stage, k);
            put(s, "metrics", name, 0, wall, v);
        }
    }
}

int tb_open(tb_sink **out, const char *run_dir, events *ev) {
    *out = NULL;
    char *dir = fs_join(run_dir, "tensorboard");
    tb_sink *s = calloc(1, sizeof *s);
    int rc = tfevents_open(&s->w, dir, wall_now());
    free(dir);
    if (rc) {
        free(s);
        return rc;
    }
    events_set_tap(ev, on_event, s);
    *out = s;
    return 0;
}

int tb_close(tb_sink **ps, events *ev) {
    tb_sink *s = *ps;
    if (!s) return 0;
    if (ev) events_set_tap(ev, NULL, NULL);
    int rc = s->failed ? err_set(ERR_STAGE, "TensorBoard events: %s", s->msg) : 0;
    tfevents_close(&s->w);
    free(s);
    *ps = NULL;
    return rc;
}
