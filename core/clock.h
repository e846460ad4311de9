/* clock.h: the one monotonic clock every floor times with (durations, deadlines, backoff). */
#ifndef CORE_CLOCK_H
#define CORE_CLOCK_H

/* seconds on CLOCK_MONOTONIC: only differences mean anything */
double clock_now_s(void);

#endif
