/* err.c: thread-local error message and code (see err.h). */
#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define ERR_MSG_MAX 4096

static _Thread_local char err_buf[ERR_MSG_MAX];
static _Thread_local int err_cur;

int err_set(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
    err_cur = code;
    return code;
}

int err_wrap(const char *fmt, ...) {
    char ctx[ERR_MSG_MAX], old[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, err_buf, sizeof old);
    size_t n = strlen(ctx);
    if (n > ERR_MSG_MAX - 3) n = ERR_MSG_MAX - 3;
    memcpy(err_buf, ctx, n);
    memcpy(err_buf + n, ": ", 2);
    size_t rest = ERR_MSG_MAX - n - 3;
    size_t ol = strnlen(old, rest);
    memcpy(err_buf + n + 2, old, ol);
    err_buf[n + 2 + ol] = 0;
    if (err_cur == 0) err_cur = ERR_STAGE;
    return err_cur;
}

int err_errno(int code, const char *fmt, ...) {
    int e = errno;
    char what[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return err_set(code, "%s: %s", what, strerror(e));
}

const char *err_msg(void) { return err_buf; }
int err_code(void) { return err_cur; }
void err_clear(void) { err_buf[0] = 0; err_cur = 0; }
