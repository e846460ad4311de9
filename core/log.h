/* log.h: every message the program prints goes through these.
 *
 * errorf/warnf/notef write "qlora-run: error: ..." style lines to stderr (git's habit:
 * lowercase, no trailing period, the subject quoted). notef is silenced by --quiet.
 * log_is_tty() tells whether progress bars and colour are allowed. */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdbool.h>
#include "err.h"

void errorf(const char *fmt, ...) ERR_PRINTF(1, 2);
void warnf(const char *fmt, ...) ERR_PRINTF(1, 2);
void notef(const char *fmt, ...) ERR_PRINTF(1, 2);
/* Like notef, but without the prefix: tables and plain report lines. */
void outf(const char *fmt, ...) ERR_PRINTF(1, 2);

void log_set_quiet(bool quiet);
bool log_quiet(void);
bool log_is_tty(void);
void log_set_tty(bool on); /* tests and --no-progress */

#endif
