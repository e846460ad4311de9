/* clock.h: the clocks every floor times with (durations, deadlines, backoff, CPU time). */
#ifndef CORE_CLOCK_H
#define CORE_CLOCK_H

/* seconds on CLOCK_MONOTONIC: only differences mean anything */
double clock_now_s(void);

/* CPU seconds this thread has run (CLOCK_THREAD_CPUTIME_ID): on a shared machine the wall clock
 * also counts other jobs' turns */
double clock_thread_cpu_s(void);

/* CPU seconds every thread of this process has run (CLOCK_PROCESS_CPUTIME_ID) */
double clock_process_cpu_s(void);

#endif
