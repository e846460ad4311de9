/* progress.h: one progress bar on stderr when it is a terminal (nothing otherwise).
 * "  train  [########------------]  40%  120/300 steps  12.3 steps/s  ETA 0:15" */
#ifndef CORE_PROGRESS_H
#define CORE_PROGRESS_H

void progress_update(const char *label, const char *what, double done, double total, const char *unit);
void progress_clear(void); /* erase the bar line before other output */
void progress_finish(void);

#endif
