/* clock.c: the clocks (clock.h). */
#define _POSIX_C_SOURCE 200809L
#include "core/clock.h"

#include <time.h>

static double seconds_on(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double clock_now_s(void) { return seconds_on(CLOCK_MONOTONIC); }
double clock_thread_cpu_s(void) { return seconds_on(CLOCK_THREAD_CPUTIME_ID); }
double clock_process_cpu_s(void) { return seconds_on(CLOCK_PROCESS_CPUTIME_ID); }
