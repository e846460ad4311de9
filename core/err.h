/* err.h: user and data errors as values.
 *
 * A function that can fail on bad input returns an int: 0 for success, or one of
 * the ERR_* codes below, after recording a message with err_set(). Callers add
 * context on the way up with err_wrap() ("recipe.yaml: " + message) and main()
 * prints the message once and exits with the code. assert() is for bugs only.
 * The message lives in thread-local storage: copy it before the next err_set. */
#ifndef CORE_ERR_H
#define CORE_ERR_H

#include <stdarg.h>

/* Exit codes: documented in README.md; tests check each one. */
enum err_code {
    ERR_OK = 0,
    ERR_STAGE = 1,       /* a stage failed (I/O, disk full, internal) */
    ERR_USAGE = 2,       /* bad command line */
    ERR_RECIPE = 3,      /* the recipe is invalid */
    ERR_DATA = 4,        /* input data or model files are invalid */
    ERR_DIVERGED = 5,    /* training produced NaN/Inf */
    ERR_LOCKED = 6,      /* --lock: another run of this recipe holds the lock */
    ERR_INTERRUPTED = 7, /* SIGINT/SIGTERM: state saved, run stopped */
    ERR_NETWORK = 8,     /* download or upload failed (hub unreachable, auth, not found) */
    ERR_GATE = 9         /* a quality gate failed: nothing was exported or published */
};

#if defined(__GNUC__)
#define ERR_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ERR_PRINTF(a, b)
#endif

/* Record a message and return code (so `return err_set(ERR_DATA, ...)` works). */
int err_set(int code, const char *fmt, ...) ERR_PRINTF(2, 3);
/* Prepend context to the current message: "<context>: <old message>"; returns the current code. */
int err_wrap(const char *fmt, ...) ERR_PRINTF(1, 2);
/* Set from errno: "<what>: strerror(errno)"; returns code. */
int err_errno(int code, const char *fmt, ...) ERR_PRINTF(2, 3);
const char *err_msg(void);
int err_code(void);
void err_clear(void);

#endif
