/* fsutil.h: files written so that a crash never leaves half a file under its final name.
 *
 * The rule for every artifact and checkpoint: write to "<path>.tmp.<pid>", fsync,
 * rename over the final name, fsync the directory. Functions return 0 or an ERR_*
 * code with a message naming the path (see err.h). */
#ifndef CORE_FSUTIL_H
#define CORE_FSUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdbool.h>

int fs_mkdir_p(const char *path);
int fs_rm_rf(const char *path);
bool fs_exists(const char *path);
bool fs_is_dir(const char *path);
int64_t fs_size(const char *path); /* -1 if missing */

/* Read a whole file; *out is malloc'd and NUL-terminated (caller frees). */
int fs_read_all(const char *path, char **out, size_t *len);
/* Write a whole file atomically (temp, fsync, rename, fsync dir). */
int fs_write_atomic(const char *path, const void *data, size_t len);

/* Streaming atomic write: open a temp file next to path, write with fs_file_write,
 * then fs_file_commit (fsync + rename) or fs_file_abort (unlink). */
typedef struct fs_file {
    FILE *f;
    char *path, *tmp;
    int failed; /* set by a failed write: commit then refuses */
} fs_file;
int fs_file_open(fs_file *ff, const char *path);
int fs_file_write(fs_file *ff, const void *data, size_t len);
int fs_file_commit(fs_file *ff);
void fs_file_abort(fs_file *ff);

int fs_fsync_dir(const char *dir);
/* rename a complete temp directory into place atomically, then fsync the parent */
int fs_rename_dir(const char *tmp, const char *final);

/* Exclusive advisory lock on a file (created if missing). Blocks if wait, else
 * returns ERR_LOCKED at once. *fd receives the descriptor; fs_unlock closes it. */
int fs_lock(const char *path, bool wait, int *fd);
void fs_unlock(int *fd);

/* path helpers: malloc'd results */
char *fs_join(const char *a, const char *b);
char *fs_dirname(const char *path);
/* true if rel is a safe relative path: no "..", not absolute, no empty parts */
bool fs_rel_path_safe(const char *rel);

#endif
