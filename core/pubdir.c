/* pubdir.c: build a directory under a temp name, then rename it into place (see pubdir.h). */
#include "core/pubdir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"

static char *path_with_suffix(const char *final, const char *what) {
    size_t n = strlen(final) + 64;
    char *p = malloc(n);
    if (!p) return NULL;
    /* strip trailing slashes so the temp dir is a sibling, not a child */
    size_t l = strlen(final);
    while (l > 1 && final[l - 1] == '/') l--;
    snprintf(p, n, "%.*s.%s.%ld", (int)l, final, what, (long)getpid());
    return p;
}

int pubdir_begin(char **tmp, const char *final) {
    *tmp = path_with_suffix(final, "tmp");
    if (!*tmp) return err_set(ERR_STAGE, "out of memory");
    int rc = 0;
    if (fs_exists(*tmp)) rc = fs_rm_rf(*tmp);
    if (!rc) rc = fs_mkdir_p(*tmp);
    if (rc) {
        free(*tmp);
        *tmp = NULL;
    }
    return rc;
}

int pubdir_commit(char **tmp, const char *final) {
    int rc = 0;
    char *old = NULL;
    if (fs_exists(final)) {
        if (!fs_is_dir(final)) {
            rc = err_set(ERR_STAGE, "cannot write '%s': a file of that name is in the way", final);
            goto out;
        }
        old = path_with_suffix(final, "old");
        if (!old) { rc = err_set(ERR_STAGE, "out of memory"); goto out; }
        if (rename(final, old)) { rc = err_errno(ERR_STAGE, "cannot move '%s' aside", final); goto out; }
    }
    rc = fs_rename_dir(*tmp, final);
    if (rc && old) rename(old, final); /* put the previous version back */
    if (!rc && old) fs_rm_rf(old);
out:
    free(old);
    if (rc) pubdir_abort(tmp);
    free(*tmp);
    *tmp = NULL;
    return rc;
}

void pubdir_abort(char **tmp) {
    if (!*tmp) return;
    /* keep the error that made us abort, not one from the clean-up */
    int code = err_code();
    char *msg = code ? strdup(err_msg()) : NULL;
    fs_rm_rf(*tmp);
    if (code) err_set(code, "%s", msg ? msg : "out of memory");
    free(msg);
    free(*tmp);
    *tmp = NULL;
}
