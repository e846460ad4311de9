/* events.c: events.jsonl writer (see events.h). */
#include "events.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

#include "err.h"

struct events {
    FILE *f;
    bool to_stdout;
    pthread_mutex_t mu;
    events_tap_fn tap;
    void *tap_ud;
};

void events_set_tap(events *e, events_tap_fn fn, void *ud) {
    pthread_mutex_lock(&e->mu);
    e->tap = fn;
    e->tap_ud = ud;
    pthread_mutex_unlock(&e->mu);
}

int events_open(events **out, const char *path, bool to_stdout) {
    events *e = calloc(1, sizeof *e);
    pthread_mutex_init(&e->mu, NULL);
    e->to_stdout = to_stdout;
    if (path) {
        e->f = fopen(path, "a");
        if (!e->f) {
            free(e);
            return err_errno(ERR_STAGE, "cannot open '%s'", path);
        }
    }
    *out = e;
    return 0;
}

void events_close(events **pe) {
    events *e = *pe;
    if (!e) return;
    if (e->f) fclose(e->f);
    pthread_mutex_destroy(&e->mu);
    free(e);
    *pe = NULL;
}

void events_emit(events *e, const char *type, json_t *ev) {
    if (!ev) ev = json_object();
    if (!e) { json_decref(ev); return; }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    json_t *o = json_object();
    json_object_set_new(o, "t", json_string(ts));
    json_object_set_new(o, "type", json_string(type));
    json_object_update(o, ev);
    json_decref(ev);
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    pthread_mutex_lock(&e->mu);
    if (e->f) { fputs(s, e->f); fputc('\n', e->f); fflush(e->f); }
    if (e->to_stdout) { fputs(s, stdout); fputc('\n', stdout); fflush(stdout); }
    if (e->tap) e->tap(e->tap_ud, type, o);
    pthread_mutex_unlock(&e->mu);
    json_decref(o);
    free(s);
}
