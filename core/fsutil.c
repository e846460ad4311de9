/* fsutil.c: atomic writes, locks and path helpers (see fsutil.h). */
#define _GNU_SOURCE
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

int fs_mkdir_p(const char *path) {
    char *p = strdup(path);
    if (!p) return err_set(ERR_STAGE, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0777) && errno != EEXIST) {
            int rc = err_errno(ERR_STAGE, "cannot create directory '%s'", p);
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0777) && errno != EEXIST) rc = err_errno(ERR_STAGE, "cannot create directory '%s'", p);
    free(p);
    return rc;
}

int fs_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st)) return errno == ENOENT ? 0 : err_errno(ERR_STAGE, "cannot stat '%s'", path);
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return err_errno(ERR_STAGE, "cannot open directory '%s'", path);
        struct dirent *e;
        int rc = 0;
        while (!rc && (e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *c = fs_join(path, e->d_name);
            rc = fs_rm_rf(c);
            free(c);
        }
        closedir(d);
        if (rc) return rc;
        if (rmdir(path)) return err_errno(ERR_STAGE, "cannot remove '%s'", path);
        return 0;
    }
    if (unlink(path)) return err_errno(ERR_STAGE, "cannot remove '%s'", path);
    return 0;
}

bool fs_exists(const char *path) { return access(path, F_OK) == 0; }

bool fs_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int64_t fs_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (int64_t)st.st_size;
}

int fs_read_all(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return err_errno(ERR_DATA, "cannot open '%s'", path);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) { free(buf); fclose(f); return err_set(ERR_STAGE, "out of memory reading '%s'", path); }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return err_errno(ERR_DATA, "cannot read '%s'", path); }
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return 0;
}

int fs_fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return err_errno(ERR_STAGE, "cannot open directory '%s'", dir);
    fsync(fd); /* some filesystems refuse fsync on directories; not an error */
    close(fd);
    return 0;
}

int fs_file_open(fs_file *ff, const char *path) {
    memset(ff, 0, sizeof *ff);
    ff->path = strdup(path);
    if (asprintf(&ff->tmp, "%s.tmp.%d", path, (int)getpid()) < 0) ff->tmp = NULL;
    if (!ff->path || !ff->tmp) return err_set(ERR_STAGE, "out of memory");
    ff->f = fopen(ff->tmp, "wb");
    if (!ff->f) {
        int rc = err_errno(ERR_STAGE, "cannot create '%s'", ff->tmp);
        free(ff->path); free(ff->tmp);
        ff->path = ff->tmp = NULL;
        return rc;
    }
    return 0;
}

int fs_file_write(fs_file *ff, const void *data, size_t len) {
    if (ff->failed) return ERR_STAGE;
    if (len && fwrite(data, 1, len, ff->f) != len) {
        ff->failed = 1;
        return err_errno(ERR_STAGE, "cannot write '%s'", ff->path);
    }
    return 0;
}

int fs_file_commit(fs_file *ff) {
    int rc = 0;
    if (ff->failed) rc = err_code() ? err_code() : ERR_STAGE;
    if (!rc && fflush(ff->f)) rc = err_errno(ERR_STAGE, "cannot write '%s'", ff->path);
    if (!rc && fsync(fileno(ff->f))) rc = err_errno(ERR_STAGE, "cannot sync '%s'", ff->path);
    if (fclose(ff->f) && !rc) rc = err_errno(ERR_STAGE, "cannot close '%s'", ff->path);
    ff->f = NULL;
    if (!rc && rename(ff->tmp, ff->path)) rc = err_errno(ERR_STAGE, "cannot rename '%s' to '%s'", ff->tmp, ff->path);
    if (rc) unlink(ff->tmp);
    else {
        char *d = fs_dirname(ff->path);
        fs_fsync_dir(d);
        free(d);
    }
    free(ff->path); free(ff->tmp);
    ff->path = ff->tmp = NULL;
    return rc;
}

void fs_file_abort(fs_file *ff) {
    if (ff->f) fclose(ff->f);
    if (ff->tmp) unlink(ff->tmp);
    free(ff->path); free(ff->tmp);
    memset(ff, 0, sizeof *ff);
}

int fs_write_atomic(const char *path, const void *data, size_t len) {
    fs_file ff;
    int rc = fs_file_open(&ff, path);
    if (rc) return rc;
    rc = fs_file_write(&ff, data, len);
    if (rc) { fs_file_abort(&ff); return rc; }
    return fs_file_commit(&ff);
}

int fs_rename_dir(const char *tmp, const char *final) {
    if (rename(tmp, final)) return err_errno(ERR_STAGE, "cannot rename '%s' to '%s'", tmp, final);
    char *d = fs_dirname(final);
    fs_fsync_dir(d);
    free(d);
    return 0;
}

int fs_lock(const char *path, bool wait, int *fd) {
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (*fd < 0) return err_errno(ERR_STAGE, "cannot open lock file '%s'", path);
    if (flock(*fd, LOCK_EX | (wait ? 0 : LOCK_NB))) {
        int e = errno;
        close(*fd);
        *fd = -1;
        if (e == EWOULDBLOCK) return err_set(ERR_LOCKED, "'%s' is locked by another run", path);
        errno = e;
        return err_errno(ERR_STAGE, "cannot lock '%s'", path);
    }
    return 0;
}

void fs_unlock(int *fd) {
    if (*fd >= 0) {
        flock(*fd, LOCK_UN);
        close(*fd);
    }
    *fd = -1;
}

char *fs_join(const char *a, const char *b) {
    char *r;
    size_t la = strlen(a);
    if (la && a[la - 1] == '/') la--;
    if (asprintf(&r, "%.*s/%s", (int)la, a, b) < 0) return NULL;
    return r;
}

char *fs_dirname(const char *path) {
    const char *s = strrchr(path, '/');
    if (!s) return strdup(".");
    if (s == path) return strdup("/");
    return strndup(path, (size_t)(s - path));
}

bool fs_rel_path_safe(const char *rel) {
    if (!rel || !*rel || rel[0] == '/') return false;
    const char *p = rel;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return false;
        if (!e) break;
        p = e + 1;
    }
    return true;
}
