/* hash.c: XXH3-128 and SHA-256 helpers, and the stat-keyed hash memo (see hash.h). */
#define _GNU_SOURCE
#include "hash.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <xxhash.h>

#include "err.h"
#include "fsutil.h"

struct hash_ctx {
    XXH3_state_t *st;
};

hash_ctx *hash_new(void) {
    hash_ctx *h = malloc(sizeof *h);
    h->st = XXH3_createState();
    XXH3_128bits_reset(h->st);
    return h;
}

void hash_update(hash_ctx *h, const void *data, size_t len) { XXH3_128bits_update(h->st, data, len); }
void hash_update_str(hash_ctx *h, const char *s) { XXH3_128bits_update(h->st, s, strlen(s) + 1); }

static void hex128(XXH128_hash_t v, char out[HASH_HEX_LEN]) {
    snprintf(out, HASH_HEX_LEN, "%016llx%016llx", (unsigned long long)v.high64, (unsigned long long)v.low64);
}

void hash_final_hex(hash_ctx *h, char out[HASH_HEX_LEN]) {
    hex128(XXH3_128bits_digest(h->st), out);
    XXH3_freeState(h->st);
    free(h);
}

void hash_bytes_hex(const void *data, size_t len, char out[HASH_HEX_LEN]) { hex128(XXH3_128bits(data, len), out); }

int hash_file_hex(const char *path, char out[HASH_HEX_LEN]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno(ERR_DATA, "cannot open '%s'", path);
    hash_ctx *h = hash_new();
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf, cap)) > 0) hash_update(h, buf, (size_t)r);
    free(buf);
    close(fd);
    if (r < 0) {
        char tmp[HASH_HEX_LEN];
        hash_final_hex(h, tmp);
        return err_errno(ERR_DATA, "cannot read '%s'", path);
    }
    hash_final_hex(h, out);
    return 0;
}

/* The memo is a text file of lines "dev ino size mtime_ns hash path". Small files are
 * hashed directly: the memo only pays for files of 1 MiB and more. */
static int memo_key(const struct stat *st, char *key, size_t n) {
    long long mt = (long long)st->st_mtim.tv_sec * 1000000000ll + st->st_mtim.tv_nsec;
    return snprintf(key, n, "%llu %llu %lld %lld ", (unsigned long long)st->st_dev, (unsigned long long)st->st_ino,
                    (long long)st->st_size, mt);
}

void hash_memo_forget(const char *memo_path, const char *path) {
    struct stat st;
    char *text = NULL;
    size_t len = 0;
    if (!memo_path || stat(path, &st) || !fs_exists(memo_path) || fs_read_all(memo_path, &text, &len)) {
        err_clear();
        return;
    }
    char key[256];
    size_t kl = (size_t)memo_key(&st, key, sizeof key), n = 0;
    int dropped = 0;
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        size_t l = nl ? (size_t)(nl - line) + 1 : (size_t)(text + len - line);
        if (l >= kl && !memcmp(line, key, kl)) dropped = 1;
        else memmove(text + n, line, l), n += l;
        line += l;
    }
    if (dropped) fs_write_atomic(memo_path, text, n);
    err_clear();
    free(text);
}

int hash_file_memo(const char *memo_path, const char *path, char out[HASH_HEX_LEN]) {
    struct stat st;
    if (stat(path, &st)) return err_errno(ERR_DATA, "cannot stat '%s'", path);
    if (!memo_path || st.st_size < (1 << 20)) return hash_file_hex(path, out);
    char key[256];
    memo_key(&st, key, sizeof key);
    char *memo = NULL;
    size_t len = 0;
    if (fs_exists(memo_path) && fs_read_all(memo_path, &memo, &len) == 0) {
        size_t kl = strlen(key);
        for (char *line = memo; line && *line;) {
            char *nl = strchr(line, '\n');
            if (!strncmp(line, key, kl) && strlen(line + kl) >= 32) {
                memcpy(out, line + kl, 32);
                out[32] = 0;
                free(memo);
                return 0;
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    err_clear();
    int rc = hash_file_hex(path, out);
    if (rc) { free(memo); return rc; }
    /* append by rewriting atomically; concurrent writers may lose an entry, which only costs a re-hash */
    size_t nl = strlen(key) + 32 + 1 + strlen(path) + 2;
    char *nmemo = malloc(len + nl + 1);
    size_t n = 0;
    if (memo) { memcpy(nmemo, memo, len); n = len; }
    n += (size_t)sprintf(nmemo + n, "%s%s %s\n", key, out, path);
    fs_write_atomic(memo_path, nmemo, n);
    err_clear();
    free(nmemo);
    free(memo);
    return 0;
}

int sha256_file_hex(const char *path, char out[65]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno(ERR_DATA, "cannot open '%s'", path);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    size_t cap = 1 << 20;
    unsigned char *buf = malloc(cap);
    ssize_t r;
    while ((r = read(fd, buf, cap)) > 0) EVP_DigestUpdate(c, buf, (size_t)r);
    free(buf);
    close(fd);
    unsigned char md[32];
    unsigned int mdl = 32;
    EVP_DigestFinal_ex(c, md, &mdl);
    EVP_MD_CTX_free(c);
    if (r < 0) return err_errno(ERR_DATA, "cannot read '%s'", path);
    for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", md[i]);
    return 0;
}
