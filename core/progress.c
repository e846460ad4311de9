/* progress.c: a throttled single-line progress bar (see progress.h). */
#include "progress.h"

#include <stdio.h>
#include <string.h>

#include "core/clock.h"
#include "log.h"

static double t_start, t_last;
static char cur_label[64];
static int shown;

void progress_update(const char *label, const char *what, double done, double total, const char *unit) {
    if (!log_is_tty()) return;
    double t = clock_now_s();
    if (strncmp(cur_label, label, sizeof cur_label - 1)) {
        snprintf(cur_label, sizeof cur_label, "%s", label);
        t_start = t;
        t_last = 0;
    }
    if (t - t_last < 0.1 && done < total) return;
    t_last = t;
    char bar[41];
    int width = 30, fill = total > 0 ? (int)(width * (done / total)) : 0;
    if (fill > width) fill = width;
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '-';
    bar[width] = 0;
    double el = t - t_start, rate = el > 0 ? done / el : 0;
    if (what && unit && !strcmp(what, unit)) what = NULL; /* "5/10 steps ... steps" says it twice */
    if (total > 0) {
        double eta = rate > 0 ? (total - done) / rate : 0;
        fprintf(stderr, "\r\033[K  %-10s [%s] %3.0f%%  %.0f/%.0f %s  %.1f %s/s  ETA %d:%02d  %s", label, bar,
                100.0 * done / total, done, total, unit, rate, unit, (int)eta / 60, (int)eta % 60, what ? what : "");
    } else {
        fprintf(stderr, "\r\033[K  %-10s %.0f %s  %.1f %s/s  %s", label, done, unit, rate, unit, what ? what : "");
    }
    fflush(stderr);
    shown = 1;
}

void progress_clear(void) {
    if (shown && log_is_tty()) { fputs("\r\033[K", stderr); fflush(stderr); }
}

void progress_finish(void) {
    progress_clear();
    shown = 0;
    cur_label[0] = 0;
}
