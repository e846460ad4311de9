/* outdir.c: a recipe's output_dir (see outdir.h). */
#include "runner/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "export/export.h"

#define OUTDIR_MARKER ".qlora-run-output"
#define OUTDIR_FORMAT "qlora-run-output"

/* the recipe named by dir's marker (malloc'd), NULL when there is none or it is not ours */
static char *marker_recipe(const char *dir) {
    char *p = fs_join(dir, OUTDIR_MARKER);
    json_t *j = json_load_file(p, 0, NULL);
    free(p);
    const char *fmt = json_string_value(json_object_get(j, "format"));
    const char *name = json_string_value(json_object_get(j, "recipe"));
    char *out = fmt && name && !strcmp(fmt, OUTDIR_FORMAT) ? strdup(name) : NULL;
    json_decref(j);
    return out;
}

int outdir_check(const char *dir, const char *name) {
    struct stat st;
    if (stat(dir, &st)) {
        if (errno == ENOENT) return 0;
        return err_errno(ERR_USAGE, "output_dir '%s'", dir);
    }
    if (!S_ISDIR(st.st_mode)) return err_set(ERR_USAGE, "output_dir '%s' is a file: name a folder for the exports", dir);
    char *owner = marker_recipe(dir);
    if (owner) {
        int rc = strcmp(owner, name) ? err_set(ERR_USAGE, "output_dir '%s' holds the exports of recipe '%s', not of '%s': "
                                                          "name another folder (output_dir: or --out)", dir, owner, name)
                                     : 0;
        free(owner);
        return rc;
    }
    DIR *d = opendir(dir);
    if (!d) return err_errno(ERR_USAGE, "output_dir '%s': cannot read the folder", dir);
    char first[256] = "";
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (!n++) snprintf(first, sizeof first, "%s", e->d_name);
    }
    closedir(d);
    if (n)
        return err_set(ERR_USAGE, "output_dir '%s' is not empty and is not a previous output of this recipe (it holds '%s'%s "
                                  "and no %s): name a new or empty folder (output_dir: or --out), e.g. '%s/%s'",
                       dir, first, n > 1 ? ", ..." : "", OUTDIR_MARKER, dir, name);
    return 0;
}

int outdir_check_stage(const char *dir, const char *stage) {
    char *to = fs_join(dir, stage);
    int rc = export_check_out(to, "output_dir's folder");
    free(to);
    return rc;
}

int outdir_publish(const char *dir, const char *name, const char *stage, const char *artifact) {
    int rc = outdir_check(dir, name);
    if (!rc) rc = fs_mkdir_p(dir);
    char *owner = rc ? NULL : marker_recipe(dir);
    if (!rc && !owner) {
        json_t *j = json_pack("{s:s, s:i, s:s}", "format", OUTDIR_FORMAT, "version", 1, "recipe", name);
        char *text = json_dumps(j, JSON_INDENT(2));
        char *p = fs_join(dir, OUTDIR_MARKER);
        rc = fs_write_atomic(p, text, strlen(text));
        free(p);
        free(text);
        json_decref(j);
    }
    free(owner);
    char *to = fs_join(dir, stage);
    if (!rc) rc = export_copy_out(artifact, to, "output_dir's folder");
    if (rc) err_wrap("copying the exports of stage '%s' to '%s'", stage, to);
    free(to);
    return rc;
}
