/* log.c: the errorf/warnf/notef family (see log.h). */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static bool quiet;
static int tty = -1; /* -1: not yet known */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void vlog(FILE *f, const char *prefix, const char *fmt, va_list ap) {
    pthread_mutex_lock(&log_mu);
    if (prefix) fputs(prefix, f);
    vfprintf(f, fmt, ap);
    fputc('\n', f);
    fflush(f);
    pthread_mutex_unlock(&log_mu);
}

void errorf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(stderr, "qlora-run: error: ", fmt, ap);
    va_end(ap);
}

void warnf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(stderr, "qlora-run: warning: ", fmt, ap);
    va_end(ap);
}

void notef(const char *fmt, ...) {
    if (quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(stderr, "qlora-run: ", fmt, ap);
    va_end(ap);
}

void outf(const char *fmt, ...) {
    if (quiet) return;
    va_list ap;
    va_start(ap, fmt);
    vlog(stderr, NULL, fmt, ap);
    va_end(ap);
}

void log_set_quiet(bool q) { quiet = q; }
bool log_quiet(void) { return quiet; }
bool log_is_tty(void) {
    if (tty < 0) tty = isatty(2) ? 1 : 0;
    return tty == 1 && !quiet;
}
void log_set_tty(bool on) { tty = on ? 1 : 0; }
