/* str.c: see str.h. */
#define _GNU_SOURCE
#include "core/str.h"

#include <stdarg.h>
#include <stdio.h>

char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}
