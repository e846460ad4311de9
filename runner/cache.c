/* cache.c: artifact directories, manifests, locks and the index (see cache.h). */
#define _GNU_SOURCE
#include "cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "core/hash.h"

int cache_open(cache *c, const char *root) {
    memset(c, 0, sizeof *c);
    if (root) {
        c->root = strdup(root);
    } else if (getenv("QLORA_CACHE") && *getenv("QLORA_CACHE")) {
        c->root = strdup(getenv("QLORA_CACHE"));
    } else {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg) c->root = fs_join(xdg, "qlora-run");
        else if (home && *home) {
            if (asprintf(&c->root, "%s/.cache/qlora-run", home) < 0) c->root = NULL;
        } else {
            c->root = strdup("/tmp/qlora-run-cache");
        }
    }
    static const char *subs[] = {"artifacts", "tmp", "work", "locks", "index"};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        char *p = fs_join(c->root, subs[i]);
        int rc = fs_mkdir_p(p);
        free(p);
        if (rc) {
            rc = err_wrap("cache '%s'", c->root);
            cache_close(c); /* nothing half-open for the caller to free */
            return rc;
        }
    }
    c->memo = fs_join(c->root, "hash-memo");
    return 0;
}

void cache_close(cache *c) {
    free(c->root);
    free(c->memo);
    memset(c, 0, sizeof *c);
}

char *cache_artifact_dir(const cache *c, const char *kind, const char *key) {
    char *p;
    if (asprintf(&p, "%s/artifacts/%s/%s", c->root, kind, key) < 0) return NULL;
    return p;
}

char *cache_work_dir(const cache *c, const char *key) {
    char *p;
    if (asprintf(&p, "%s/work/%s", c->root, key) < 0) return NULL;
    return p;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void list_rec(const char *base, const char *rel, char ***v, size_t *n, size_t *cap) {
    char *dir = rel[0] ? fs_join(base, rel) : strdup(base);
    DIR *d = opendir(dir);
    if (!d) { free(dir); return; }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *r = rel[0] ? fs_join(rel, e->d_name) : strdup(e->d_name);
        char *full = fs_join(base, r);
        struct stat st;
        if (lstat(full, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                list_rec(base, r, v, n, cap);
                free(r);
            } else {
                if (*n == *cap) { *cap = *cap ? 2 * *cap : 64; *v = realloc(*v, *cap * sizeof **v); }
                (*v)[(*n)++] = r;
            }
        } else {
            free(r);
        }
        free(full);
    }
    closedir(d);
    free(dir);
}

json_t *cache_list_files(const char *dir) {
    char **v = NULL;
    size_t n = 0, cap = 0;
    list_rec(dir, "", &v, &n, &cap);
    if (n) qsort(v, n, sizeof *v, cmp_str);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(a, json_string(v[i]));
        free(v[i]);
    }
    free(v);
    return a;
}

/* Drop the hash memo's entries for a file's current (dev, inode, size, mtime), so that the
 * next look-up re-hashes it. The memo trusts a file whose stat is unchanged: a byte flipped
 * in place with the mtime put back is only seen by a full re-hash (`cache verify`), and after
 * one has found it, the pre-use check of every later run must see it too. The line format is
 * core/hash.c's: "dev ino size mtime_ns hash path". */
/* Check one file entry {path, size, hash|link} of a manifest; memo NULL re-hashes always,
 * and then a file whose hash does not match is dropped from the memo `forget` (if not NULL). */
static int check_entry(const char *dir, json_t *f, const char *memo, const char *forget, char **why) {
    const char *rel = json_string_value(json_object_get(f, "path"));
    if (!rel || !fs_rel_path_safe(rel)) {
        if (asprintf(why, "manifest lists an unsafe path") < 0) *why = NULL;
        return 2;
    }
    char *p = fs_join(dir, rel);
    struct stat st;
    int rc = 0;
    if (lstat(p, &st)) {
        if (asprintf(why, "file '%s' is missing", rel) < 0) *why = NULL;
        rc = 2;
    } else if (json_object_get(f, "link")) {
        char tgt[4096];
        ssize_t l = readlink(p, tgt, sizeof tgt - 1);
        if (l < 0 || (tgt[l] = 0, strcmp(tgt, json_string_value(json_object_get(f, "link"))))) {
            if (asprintf(why, "link '%s' changed", rel) < 0) *why = NULL;
            rc = 2;
        }
    } else if ((json_int_t)st.st_size != json_integer_value(json_object_get(f, "size"))) {
        if (asprintf(why, "file '%s' has %lld bytes, the manifest says %lld", rel, (long long)st.st_size,
                     (long long)json_integer_value(json_object_get(f, "size"))) < 0) *why = NULL;
        rc = 2;
    } else {
        char h[HASH_HEX_LEN];
        if (hash_file_memo(memo, p, h)) {
            if (asprintf(why, "cannot read '%s'", rel) < 0) *why = NULL;
            err_clear();
            rc = 2;
        } else if (strcmp(h, json_string_value(json_object_get(f, "hash")) ? json_string_value(json_object_get(f, "hash")) : "")) {
            if (asprintf(why, "file '%s' does not match its hash (corrupt)", rel) < 0) *why = NULL;
            rc = 2;
            if (!memo) hash_memo_forget(forget, p);
        }
    }
    free(p);
    return rc;
}

static int load_manifest(const char *dir, json_t **out, char **why) {
    char *mp = fs_join(dir, "manifest.json");
    json_error_t je;
    json_t *m = json_load_file(mp, 0, &je);
    free(mp);
    if (!m) {
        if (asprintf(why, "manifest.json unreadable (%s)", je.text) < 0) *why = NULL;
        return 2;
    }
    if (json_integer_value(json_object_get(m, "manifest_version")) != MANIFEST_VERSION) {
        if (asprintf(why, "manifest version %lld, this program writes %d", (long long)json_integer_value(json_object_get(m, "manifest_version")), MANIFEST_VERSION) < 0) *why = NULL;
        json_decref(m);
        return 2;
    }
    *out = m;
    return 0;
}

static int verify(const char *dir, const char *memo, const char *forget, json_t **manifest, char **why) {
    json_t *m;
    int rc = load_manifest(dir, &m, why);
    if (rc) return rc;
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(m, "files"), i, f) {
        rc = check_entry(dir, f, memo, forget, why);
        if (rc) break;
    }
    if (rc || !manifest) json_decref(m);
    else *manifest = m;
    return rc;
}

int cache_lookup(const cache *c, const char *kind, const char *key, json_t **manifest, char **why) {
    *manifest = NULL;
    *why = NULL;
    char *dir = cache_artifact_dir(c, kind, key);
    int rc;
    if (!fs_is_dir(dir)) rc = 1;
    else rc = verify(dir, c->memo, NULL, manifest, why);
    free(dir);
    return rc;
}

int cache_verify_dir(const cache *c, const char *dir, char **why) {
    *why = NULL;
    return verify(dir, NULL, c->memo, NULL, why);
}

int cache_lock(const cache *c, const char *key, int *fd, void (*on_wait)(void *), void *arg,
               volatile int *interrupted) {
    char *p;
    if (asprintf(&p, "%s/locks/%s.lock", c->root, key) < 0) return err_set(ERR_STAGE, "out of memory");
    int rc = fs_lock(p, false, fd);
    if (rc && rc != ERR_LOCKED && access(c->root, W_OK) != 0) {
        free(p);
        return err_set(ERR_STAGE,
                       "the cache '%s' is read-only, and stage '%s' is not in it: point QLORA_CACHE (or the "
                       "recipe's cache_dir) at a writable cache, or run it where the cache is writable",
                       c->root, arg ? (const char *)arg : key);
    }
    if (rc == ERR_LOCKED) {
        err_clear();
        if (on_wait) on_wait(arg);
        /* poll instead of a blocking flock: Ctrl-C reaches the main thread, not this worker,
         * so a blocked flock would keep a stopped run waiting out the other run's stage */
        while ((rc = fs_lock(p, false, fd)) == ERR_LOCKED) {
            err_clear();
            if (interrupted && *interrupted) {
                rc = err_set(ERR_INTERRUPTED, "interrupted while waiting for another run to finish stage '%s'",
                             arg ? (const char *)arg : key);
                break;
            }
            struct timespec ts = {0, 50 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    free(p);
    return rc;
}

void cache_drop_work(const cache *c, const char *key) {
    char *w = cache_work_dir(c, key), *p = NULL;
    if (w && fs_exists(w) && asprintf(&p, "%s/locks/%s.lock", c->root, key) >= 0) {
        int fd = -1;
        if (fs_lock(p, false, &fd) == 0) { /* not while a --force run recomputes the key */
            fs_rm_rf(w);
            fs_unlock(&fd);
        }
    }
    err_clear();
    free(p);
    free(w);
}

/* Runs hold <root>/locks/cache-in-use shared for their whole length; gc takes it exclusive, so
 * it never deletes artifacts a run is reading or has just made (not yet in the run index). */
static int use_lock(const cache *c, int how, int *fd, const char *what) {
    char *p = fs_join(c->root, "locks/cache-in-use");
    *fd = p ? open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0666) : -1;
    /* a cache we may only read (a shared, read-only copy): a shared lock needs no write access,
     * and with no lock file to open at all, nobody can collect it either; a stage that must
     * be computed fails later, naming the cache (cache_tmp_dir) */
    if (*fd < 0 && p && (errno == EACCES || errno == EROFS || errno == EPERM) && how == LOCK_SH) {
        *fd = open(p, O_RDONLY | O_CLOEXEC);
        if (*fd < 0) {
            free(p);
            return 0;
        }
    }
    int rc = 0;
    if (*fd < 0) rc = err_errno(ERR_STAGE, "cannot open lock file '%s'", p ? p : "locks/cache-in-use");
    else if (flock(*fd, how)) {
        int e = errno;
        close(*fd);
        *fd = -1;
        if (e == EWOULDBLOCK) rc = err_set(ERR_LOCKED, "%s", what);
        else errno = e, rc = err_errno(ERR_STAGE, "cannot lock '%s'", p);
    }
    free(p);
    return rc;
}

int cache_use(const cache *c, int *fd) { return use_lock(c, LOCK_SH, fd, "the cache is being collected"); }

int cache_gc_lock(const cache *c, int *fd) {
    return use_lock(c, LOCK_EX | LOCK_NB, fd,
                    "cache gc: a run is using this cache: nothing removed (gc never deletes what a run may be "
                    "reading; try again when it ends)");
}

int cache_tmp_dir(const cache *c, const char *kind, const char *key, char **dir) {
    if (asprintf(dir, "%s/tmp/%s-%s.%d", c->root, kind, key, (int)getpid()) < 0) return err_set(ERR_STAGE, "out of memory");
    fs_rm_rf(*dir);
    err_clear();
    int rc = fs_mkdir_p(*dir);
    if (rc) { free(*dir); *dir = NULL; }
    return rc;
}

int cache_commit(const cache *c, const char *kind, const char *key, const char *tmp, json_t *manifest) {
    json_t *files = json_array(), *list = cache_list_files(tmp);
    size_t i;
    json_t *x;
    int rc = 0;
    uint64_t total = 0;
    json_array_foreach(list, i, x) {
        const char *rel = json_string_value(x);
        if (!strcmp(rel, "manifest.json")) continue;
        char *p = fs_join(tmp, rel);
        struct stat st;
        json_t *f = json_object();
        json_object_set_new(f, "path", json_string(rel));
        if (lstat(p, &st) == 0 && S_ISLNK(st.st_mode)) {
            char tgt[4096];
            ssize_t l = readlink(p, tgt, sizeof tgt - 1);
            if (l >= 0) tgt[l] = 0;
            json_object_set_new(f, "link", json_string(l >= 0 ? tgt : ""));
        } else {
            char h[HASH_HEX_LEN];
            /* a stage must have closed its files; sync each so the rename below publishes whole data */
            FILE *fh = fopen(p, "rb");
            if (fh) { fsync(fileno(fh)); fclose(fh); }
            rc = hash_file_memo(c->memo, p, h);
            json_object_set_new(f, "size", json_integer((json_int_t)st.st_size));
            json_object_set_new(f, "hash", json_string(rc ? "" : h));
            total += (uint64_t)st.st_size;
        }
        free(p);
        json_array_append_new(files, f);
        if (rc) break;
    }
    json_decref(list);
    if (rc) { json_decref(files); return rc; }
    json_object_set_new(manifest, "manifest_version", json_integer(MANIFEST_VERSION));
    json_object_set_new(manifest, "files", files);
    json_object_set_new(manifest, "bytes", json_integer((json_int_t)total));
    char *s = json_dumps(manifest, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    char *mp = fs_join(tmp, "manifest.json");
    rc = fs_write_atomic(mp, s, strlen(s));
    free(mp);
    free(s);
    if (rc) return rc;
    fs_fsync_dir(tmp);
    char *final = cache_artifact_dir(c, kind, key);
    char *parent = fs_dirname(final);
    rc = fs_mkdir_p(parent);
    if (!rc && fs_exists(final)) {
        /* a corrupt artifact we are replacing: move it aside first, then delete it */
        char *old;
        if (asprintf(&old, "%s.old.%d", final, (int)getpid()) < 0) old = NULL;
        if (old && rename(final, old) == 0) fs_rm_rf(old);
        free(old);
        err_clear();
    }
    if (!rc) rc = fs_rename_dir(tmp, final);
    free(parent);
    free(final);
    return rc;
}

/* remove the entries of dir named "<anything><marker><pid>" whose process is gone */
static void clean_dead(const char *dir, const char *marker) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *m = strstr(e->d_name, marker);
        if (!m || e->d_name[0] == '.') continue;
        const char *dot = strrchr(e->d_name, '.');
        int pid = atoi(dot + 1);
        if (pid <= 0 || pid == getpid()) continue;
        if (kill(pid, 0) == 0 || errno == EPERM) continue; /* still running */
        char *p = fs_join(dir, e->d_name);
        fs_rm_rf(p);
        free(p);
    }
    closedir(d);
}

void cache_clean_tmp(const cache *c) {
    char *dir = fs_join(c->root, "tmp");
    clean_dead(dir, ".");
    free(dir);
    /* a corrupt artifact moved aside by cache_commit, whose run died while deleting it */
    char *arts = fs_join(c->root, "artifacts");
    DIR *d = opendir(arts);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char *kd = fs_join(arts, e->d_name);
            clean_dead(kd, ".old.");
            free(kd);
        }
        closedir(d);
    }
    free(arts);
    err_clear();
}

static char *index_path(const cache *c, const char *recipe, const char *file) {
    char *p;
    if (asprintf(&p, "%s/index/%s/%s", c->root, recipe, file) < 0) return NULL;
    return p;
}

json_t *cache_index_get(const cache *c, const char *recipe, const char *stage) {
    char name[256];
    snprintf(name, sizeof name, "%s.json", stage);
    char *p = index_path(c, recipe, name);
    json_t *j = json_load_file(p, 0, NULL);
    free(p);
    return j;
}

void cache_index_put(const cache *c, const char *recipe, const char *stage, json_t *entry) {
    char name[256];
    snprintf(name, sizeof name, "%s.json", stage);
    char *p = index_path(c, recipe, name);
    char *d = fs_dirname(p);
    fs_mkdir_p(d);
    char *s = json_dumps(entry, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    fs_write_atomic(p, s, strlen(s));
    err_clear();
    free(s);
    free(d);
    free(p);
}

void cache_index_run(const cache *c, const char *recipe, json_t *keys) {
    char *p = index_path(c, recipe, "runs.jsonl");
    char *d = fs_dirname(p);
    fs_mkdir_p(d);
    FILE *f = fopen(p, "a+");
    if (f) {
        /* a run killed mid-append leaves a line without its newline: start a fresh line, so
         * only that run's record is lost, not this one too */
        int partial = 0;
        if (fseek(f, -1, SEEK_END) == 0) partial = fgetc(f) != '\n';
        char *s = json_dumps(keys, JSON_COMPACT);
        fprintf(f, "%s%s\n", partial ? "\n" : "", s);
        free(s);
        fclose(f);
    }
    err_clear();
    free(d);
    free(p);
}
