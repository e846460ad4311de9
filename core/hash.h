/* hash.h: content hashes for cache keys and manifests.
 *
 * XXH3-128 (xxhash) for everything we hash ourselves, printed as 32 hex digits:
 * fast enough to hash multi-GB weights at memory speed. hash_file_memo avoids
 * re-reading large files: it keeps (path, size, mtime, inode) -> hash in a memo
 * file under the cache, re-hashing only when the stat changes. SHA-256 (OpenSSL)
 * is for the hub's LFS checks. */
#ifndef CORE_HASH_H
#define CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_HEX_LEN 33 /* 32 hex digits + NUL */

typedef struct hash_ctx hash_ctx;
hash_ctx *hash_new(void);
void hash_update(hash_ctx *h, const void *data, size_t len);
void hash_update_str(hash_ctx *h, const char *s); /* includes a terminating NUL as separator */
void hash_final_hex(hash_ctx *h, char out[HASH_HEX_LEN]); /* frees h */

void hash_bytes_hex(const void *data, size_t len, char out[HASH_HEX_LEN]);
int hash_file_hex(const char *path, char out[HASH_HEX_LEN]);
/* memo_path may be NULL (no memo) */
int hash_file_memo(const char *memo_path, const char *path, char out[HASH_HEX_LEN]);

/* Drop the memo's entry for path's current (dev, inode, size, mtime), so the next
 * hash_file_memo re-reads the file: for a file found corrupt by a full re-hash. */
void hash_memo_forget(const char *memo_path, const char *path);

/* SHA-256 of a file, 64 hex digits + NUL */
int sha256_file_hex(const char *path, char out[65]);

#endif
