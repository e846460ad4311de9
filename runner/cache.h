/* cache.h: the artifact cache.
 *
 * Layout under the cache root (default ~/.cache/qlora-run, $QLORA_CACHE, or cache_dir):
 *   artifacts/<kind>/<key>/            a complete artifact: the stage's files + manifest.json
 *   tmp/<kind>-<key>.<pid>/            an artifact being written (renamed into place when done)
 *   work/<key>/                        a stage's persistent scratch (training checkpoints)
 *   locks/<key>.lock                   held while a stage computes (two runs compute it once)
 *   locks/cache-in-use                 held shared by every run, exclusive by cache gc
 *   index/<recipe>/<stage>.json        what the last run used for this stage ("why" in plan)
 *   index/<recipe>/runs.jsonl          the keys each run used (cache gc --keep-last)
 *   hash-memo                          (dev, inode, size, mtime) -> content hash
 * An artifact is used only if its manifest parses and every file listed has its size and
 * content hash (through the memo: a file whose stat changed is re-hashed). Between two
 * `cache verify` runs, the pre-use check trusts a file whose (dev, inode, size, mtime) is
 * unchanged: a byte flipped in place with the mtime put back (touch -r) is found only by
 * `cache verify`, which re-hashes everything and drops the memo entries of what it found
 * corrupt, so that every later run sees it too and recomputes the artifact. */
#ifndef RUNNER_CACHE_H
#define RUNNER_CACHE_H

#include <jansson.h>
#include <stdbool.h>

#define MANIFEST_VERSION 1

typedef struct cache {
    char *root, *memo;
} cache;

int cache_open(cache *c, const char *root); /* root NULL: default */
void cache_close(cache *c);
char *cache_artifact_dir(const cache *c, const char *kind, const char *key);
char *cache_work_dir(const cache *c, const char *key);

/* 0 and *manifest (new ref) if a valid artifact exists; 1 if absent; 2 if present but
 * corrupt (reason in *why, malloc'd): the caller recomputes it. */
int cache_lookup(const cache *c, const char *kind, const char *key, json_t **manifest, char **why);

/* Take the key's lock (waiting if another run holds it; on_wait called once then, with arg,
 * the stage's name). While waiting, *interrupted (if not NULL) set ends the wait with
 * ERR_INTERRUPTED. */
int cache_lock(const cache *c, const char *key, int *fd, void (*on_wait)(void *), void *arg,
               volatile int *interrupted);
/* The cache-wide use lock (release with fs_unlock): a run holds it shared from start to end
 * (cache_use waits while a gc runs); cache gc takes it exclusive without waiting, ERR_LOCKED
 * while any run is in progress, so it never deletes what a run reads or has just made. */
int cache_use(const cache *c, int *fd);
int cache_gc_lock(const cache *c, int *fd);
/* Remove the work dir (checkpoints) of a key whose artifact is committed, if one is left: a
 * run killed between the commit and the removal leaves it behind. Skipped while another run
 * holds the key's lock (a --force recompute uses it). */
void cache_drop_work(const cache *c, const char *key);
/* A fresh temp dir for the artifact. */
int cache_tmp_dir(const cache *c, const char *kind, const char *key, char **dir);
/* Hash the files, write manifest.json (adding "files"), rename into place. Steals nothing. */
int cache_commit(const cache *c, const char *kind, const char *key, const char *tmp, json_t *manifest);

/* Re-hash every file of one artifact dir against its manifest (not trusting the memo); 0 if
 * intact. A file found corrupt is dropped from the memo, so the next cache_lookup re-hashes
 * it and sees the corruption too (the memo alone would trust its unchanged stat). */
int cache_verify_dir(const cache *c, const char *dir, char **why);
/* Delete stale tmp dirs of dead processes, and corrupt artifacts they were deleting. */
void cache_clean_tmp(const cache *c);

/* Index of what a recipe's stage used last, for plan's "why". */
json_t *cache_index_get(const cache *c, const char *recipe, const char *stage);
void cache_index_put(const cache *c, const char *recipe, const char *stage, json_t *entry);
void cache_index_run(const cache *c, const char *recipe, json_t *keys); /* append a line */

/* list files of dir recursively (regular files and symlinks), relative paths, sorted */
json_t *cache_list_files(const char *dir);

#endif
