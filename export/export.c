/* export.c: PEFT, merged and GGUF exports (see export.h). */
#define _GNU_SOURCE
#include "export/export.h"

#include <dirent.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/peft.h"
#include "core/pubdir.h"
#include "model/config.h"
#include "export/gguf_export.h"
#include "export/merge.h"

int export_format_from_name(const char *name, unsigned *bit) {
    if (!strcmp(name, "peft")) *bit = EXPORT_PEFT;
    else if (!strcmp(name, "merged")) *bit = EXPORT_MERGED;
    else if (!strcmp(name, "gguf")) *bit = EXPORT_GGUF;
    else return err_set(ERR_USAGE, "unknown export format '%s' (peft, merged or gguf)", name);
    return 0;
}

int export_merged_dtype(const char *name, st_dtype *dtype) {
    if (st_float_dtype_parse(name, dtype))
        return err_set(ERR_USAGE, "unknown merged model dtype '%s' (bf16, f16 or f32)", name);
    return 0;
}

void export_gguf_name(ggml_type t, char *out, size_t n) { snprintf(out, n, "model-%s.gguf", ggml_type_name(t)); }

typedef struct prog {
    const export_opts *o;
    const char *what;
} prog;

static int on_progress(void *arg, uint64_t done, uint64_t total) {
    prog *p = arg;
    return p->o->progress ? p->o->progress(p->o->progress_arg, p->what, done, total) : 0;
}

/* copy one file in 8 MB pieces (checkpoints are too big to read whole) */
static int copy_stream(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in) return err_errno(ERR_DATA, "cannot open '%s'", from);
    fs_file ff;
    int rc = fs_file_open(&ff, to);
    size_t cap = 8 << 20;
    char *buf = rc ? NULL : malloc(cap);
    if (!rc && !buf) rc = err_set(ERR_STAGE, "out of memory");
    while (!rc) {
        size_t k = fread(buf, 1, cap, in);
        if (k) rc = fs_file_write(&ff, buf, k);
        if (k < cap) {
            if (ferror(in)) rc = err_errno(ERR_STAGE, "cannot read '%s'", from);
            break;
        }
    }
    free(buf);
    fclose(in);
    if (rc) { fs_file_abort(&ff); return rc; }
    return fs_file_commit(&ff);
}

/* the base's 4-bit checkpoint: every regular file of its directory */
static int copy_nf4(const char *base, const char *dst) {
    char *tmp = NULL;
    int rc = pubdir_begin(&tmp, dst);
    if (rc) return rc;
    DIR *d = opendir(base);
    if (!d) rc = err_errno(ERR_DATA, "cannot open '%s'", base);
    struct dirent *e;
    while (!rc && d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char *a = fs_join(base, e->d_name), *b = fs_join(tmp, e->d_name);
        if (!fs_is_dir(a)) rc = copy_stream(a, b);
        free(a);
        free(b);
    }
    if (d) closedir(d);
    if (!rc) rc = pubdir_commit(&tmp, dst);
    pubdir_abort(&tmp);
    return rc;
}

int export_run(const export_opts *o, const char *dir) {
    if (!o->formats && !o->include_nf4) return err_set(ERR_USAGE, "nothing to export: name at least one format (peft, merged, gguf)");
    if ((o->formats & EXPORT_PEFT) && !o->adapter) return err_set(ERR_USAGE, "the peft format needs an adapter");
    /* validate everything first: the base's config and tensors, the adapter against them */
    merge_src *m = NULL;
    int rc = merge_open(&m, o->base, o->adapter, o->threads);
    if (rc) return rc;
    model_config base_cfg;
    if (o->include_nf4 && !(rc = config_load(&base_cfg, o->base))) {
        if (!base_cfg.quantized) rc = err_set(ERR_USAGE, "include_nf4: the base model '%s' is not a bitsandbytes 4-bit checkpoint", o->base);
        config_free(&base_cfg);
    }
    if (!rc && (o->formats & EXPORT_PEFT)) {
        char *p = fs_join(dir, "adapter");
        peft_adapter named = *merge_adapter(m); /* shallow: only the name differs, save only reads */
        if (o->set_base_model) named.base_model = (char *)o->base_model;
        rc = peft_adapter_save(&named, p);
        free(p);
    }
    if (!rc && (o->formats & EXPORT_MERGED)) {
        char *p = fs_join(dir, "model");
        prog pg = {o, "merged"};
        rc = merge_write_model(m, p, o->merged_dtype, o->max_shard_bytes, on_progress, &pg);
        free(p);
    }
    if (!rc && (o->formats & EXPORT_GGUF)) {
        char name[64];
        export_gguf_name(o->gguf_type, name, sizeof name);
        char *p = fs_join(dir, name);
        prog pg = {o, "gguf"};
        rc = gguf_export_write(m, p, o->gguf_type, o->name, on_progress, &pg);
        free(p);
    }
    if (!rc && o->include_nf4) {
        char *p = fs_join(dir, "nf4");
        rc = copy_nf4(o->base, p);
        free(p);
    }
    merge_close(&m);
    return rc;
}

char *export_model_name(const char *model_name, const char *base_dir) {
    if (model_name) {
        const char *slash = strrchr(model_name, '/');
        return strdup(slash && slash[1] ? slash + 1 : model_name);
    }
    model_config cfg;
    if (config_load(&cfg, base_dir)) return NULL;
    char *out = NULL;
    if (asprintf(&out, "generated-%s", config_arch_name(cfg.arch)) < 0) out = NULL;
    config_free(&cfg);
    return out;
}

bool export_entry(const char *name) {
    return !strcmp(name, "adapter") || !strcmp(name, "model") || !strcmp(name, "nf4") ||
           !fnmatch("model-*.gguf", name, 0) || !fnmatch("model-*.gguf.tmp*", name, 0);
}

int export_check_out(const char *out, const char *label) {
    struct stat st;
    if (stat(out, &st)) return 0; /* a new directory */
    if (!S_ISDIR(st.st_mode)) return err_set(ERR_USAGE, "%s '%s' is a file: name a new directory for the export", label, out);
    DIR *d = opendir(out);
    if (!d) return err_errno(ERR_USAGE, "%s '%s': cannot read the directory", label, out);
    char list[256] = "";
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || export_entry(e->d_name)) continue;
        if (n++ >= 3) continue;
        if (n > 1) strncat(list, ", ", sizeof list - strlen(list) - 1);
        strncat(list, "'", sizeof list - strlen(list) - 1);
        strncat(list, e->d_name, sizeof list - strlen(list) - 1);
        strncat(list, "'", sizeof list - strlen(list) - 1);
    }
    closedir(d);
    if (n)
        return err_set(ERR_USAGE,
                       "%s '%s' holds %d file%s that an export did not write (%s%s): an export replaces its folder "
                       "as a whole, so it writes only into a new or empty directory or over a previous export; "
                       "name another directory (e.g. %s/export)",
                       label, out, n, n > 1 ? "s" : "", list, n > 3 ? ", ..." : "", out);
    return 0;
}

/* copy a tree of regular files and directories (an export's adapter/, model/, nf4/) */
static int copy_tree(const char *from, const char *to) {
    if (!fs_is_dir(from)) return copy_stream(from, to);
    int rc = fs_mkdir_p(to);
    DIR *d = rc ? NULL : opendir(from);
    if (!rc && !d) rc = err_errno(ERR_STAGE, "cannot open '%s'", from);
    for (struct dirent *e; !rc && d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *a = fs_join(from, e->d_name), *b = fs_join(to, e->d_name);
        rc = copy_tree(a, b);
        free(a);
        free(b);
    }
    if (d) closedir(d);
    return rc;
}

int export_copy_out(const char *from, const char *to, const char *label) {
    int rc = export_check_out(to, label);
    char *tmp = NULL;
    if (!rc) rc = pubdir_begin(&tmp, to);
    DIR *d = rc ? NULL : opendir(from);
    if (!rc && !d) rc = err_errno(ERR_STAGE, "cannot open '%s'", from);
    for (struct dirent *e; !rc && d && (e = readdir(d));) {
        if (!export_entry(e->d_name) || strstr(e->d_name, ".tmp")) continue;
        char *a = fs_join(from, e->d_name), *b = fs_join(tmp, e->d_name);
        rc = copy_tree(a, b);
        free(a);
        free(b);
    }
    if (d) closedir(d);
    if (!rc) rc = pubdir_commit(&tmp, to);
    pubdir_abort(&tmp);
    return rc;
}
