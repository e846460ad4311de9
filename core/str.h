/* str.h: small string helpers every floor shares. */
#ifndef CORE_STR_H
#define CORE_STR_H

#include "core/err.h" /* ERR_PRINTF */

/* printf into a new string (malloc'd, the caller frees it); NULL when out of memory. */
char *xasprintf(const char *fmt, ...) ERR_PRINTF(1, 2);

#endif
