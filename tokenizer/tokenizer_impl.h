/* tokenizer_impl.h: the inside of a loaded tokenizer, shared by the tokenizer_*.c files.
 *
 * Loading (tokenizer.c) turns tokenizer.json into flat tables; encoding (tokenizer_encode.c)
 * and decoding (tokenizer_decode.c) only read them, except the word cache, which has its own
 * locks. For byte-level vocabularies every token is kept as the raw bytes it stands for (the
 * GPT-2 byte<->unicode alphabet undone at load), so encoding never builds the mapped string:
 * a pre-token's bytes are its initial symbols and whole-word lookups use the raw bytes. */
#ifndef MODEL_TOKENIZER_IMPL_H
#define MODEL_TOKENIZER_IMPL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer/tokenizer.h"

/* ---- string -> id hash (open addressing, keys point into the tokenizer's arena) ---- */
typedef struct tok_strmap {
    uint32_t cap; /* power of two */
    uint32_t n;
    struct tok_strmap_slot {
        uint64_t hash;
        const char *key;
        uint32_t len;
        int32_t id; /* -1: empty */
    } *slots;
} tok_strmap;

int tok_strmap_init(tok_strmap *m, uint32_t expected);
void tok_strmap_free(tok_strmap *m);
/* Insert or overwrite; the key memory must outlive the map. */
int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t id);
int32_t tok_strmap_get(const tok_strmap *m, const char *key, uint32_t len);
uint64_t tok_hash_bytes(const void *p, size_t len);

/* ---- (left id, right id) -> (rank, merged id) ---- */
typedef struct tok_mergemap {
    uint32_t cap, n;
    struct tok_merge_slot { /* one cache line serves a probe: the merge loop's lookups miss */
        uint64_t key;     /* (left << 32 | right) + 1; 0 = empty */
        uint32_t rank;
        int32_t merged;
    } *slots;
} tok_mergemap;

/* ---- the word cache: pre-token bytes -> ids, sharded, each shard under a mutex ---- */
#define TOK_CACHE_SHARDS 64
#define TOK_CACHE_MAX_WORD 255 /* longer pre-tokens are not cached */
typedef struct tok_cache_shard {
    pthread_mutex_t mu;
    uint32_t cap, n; /* slots, used */
    struct tok_cache_slot { uint64_t hash; uint32_t off; } *slots; /* off into arena; 0 = empty */
    char *arena;    /* entries: u16 key length, u16 id count, key bytes, pad, ids */
    uint32_t arena_cap, arena_used;
} tok_cache_shard;

/* ---- the pipeline steps that tokenizer.json describes ---- */
enum tok_norm_kind { TOK_NORM_NFC, TOK_NORM_PREPEND, TOK_NORM_REPLACE };
typedef struct tok_norm {
    enum tok_norm_kind kind;
    char *a, *b; /* PREPEND: a = text; REPLACE: a = pattern, b = content */
    size_t alen, blen;
} tok_norm;

enum tok_pre_kind { TOK_PRE_SPLIT, TOK_PRE_BYTELEVEL, TOK_PRE_METASPACE };
enum tok_split_behavior { TOK_SPLIT_ISOLATED, TOK_SPLIT_REMOVED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT };
enum tok_prepend_scheme { TOK_PREPEND_ALWAYS, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
typedef struct tok_pre {
    enum tok_pre_kind kind;
    pcre2_code *re;          /* SPLIT, BYTELEVEL with use_regex */
    char *literal;           /* SPLIT on a String pattern (no regex) */
    size_t literal_len;
    enum tok_split_behavior behavior;
    bool invert;
    bool add_prefix_space;   /* BYTELEVEL */
    char replacement[8];     /* METASPACE: UTF-8 of the replacement char */
    size_t replacement_len;
    enum tok_prepend_scheme prepend;
    bool split;
} tok_pre;

enum tok_dec_kind { TOK_DEC_BYTELEVEL, TOK_DEC_REPLACE, TOK_DEC_BYTEFALLBACK, TOK_DEC_FUSE, TOK_DEC_STRIP, TOK_DEC_METASPACE };
typedef struct tok_dec {
    enum tok_dec_kind kind;
    char *a, *b; /* REPLACE: pattern, content; STRIP: content; METASPACE: replacement */
    size_t alen, blen;
    int start, stop; /* STRIP */
    enum tok_prepend_scheme prepend; /* METASPACE */
} tok_dec;

typedef struct tok_added {
    char *content;      /* as matched in the raw text */
    size_t len;
    char *norm;         /* content after the normalizer (normalized tokens match on it) */
    size_t norm_len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

struct tokenizer {
    int32_t n_ids;          /* max id + 1 over vocab and added tokens */
    char **tok;             /* id -> token string as written in tokenizer.json (NULL: hole) */
    uint32_t *tok_len;
    char **raw;             /* byte-level: id -> the bytes it stands for (decoding, lookups) */
    uint32_t *raw_len;
    bool *is_special;       /* id -> special added token */
    tok_strmap vocab;       /* model vocabulary: token strings as written */
    tok_strmap vocab_raw;   /* byte-level only: the raw bytes of each token (encoding) */
    const tok_strmap *words;/* the map encoding looks words up in: vocab_raw or vocab */
    tok_mergemap merges;

    bool byte_level;        /* a ByteLevel pre-tokenizer maps bytes to the GPT-2 alphabet */
    int32_t byte_id[256];   /* byte-level: initial symbol of each byte (-1: not in vocab) */
    int32_t byte_fb[256];   /* byte_fallback: id of <0xXX> (-1: absent) */
    int32_t ascii_id[128];  /* not byte-level: id of each ASCII character (-1: not in vocab) */
    bool byte_fallback, fuse_unk, ignore_merges, has_byte_fb_all;
    int32_t unk_id;         /* -1: none */
    /* Cutting long words where no merge can join (tokenizer_bpe.c says why the ids stay
     * the same): before each run of the space marker word_cut (word_cut_len 0: not safe for
     * this vocabulary), and, in what is still longer, between characters p q when the
     * (p, q) pair is not in join_ascii (bit p * 128 + q) or join (open addressing over
     * (p << 32 | q) + 1; 0 empty). join_cap 0: words are never cut. */
    char word_cut[8];
    size_t word_cut_len;
    uint8_t join_ascii[128 * 128 / 8];
    uint64_t *join;
    uint32_t join_cap;

    tok_added *added;       /* sorted by content */
    size_t n_added;
    /* matching passes: [0] non-normalized tokens on the raw text, [1] normalized tokens on
     * the normalized text; added_idx[p][added_start[p][b] .. added_start[p][b+1]) are the
     * tokens whose (matched form) starts with byte b */
    int32_t *added_idx[2];
    uint32_t added_start[2][257];
    size_t n_added_pass[2];
    int added_first[2];     /* the first byte all of a pass's tokens share (found with memchr), -1: several */

    tok_norm *norm;
    size_t n_norm;
    tok_pre *pre;
    size_t n_pre;
    tok_dec *dec;
    size_t n_dec;

    int32_t *prefix, *suffix;   /* post-processor ids around the sequence when add_special */
    size_t n_prefix, n_suffix;
    int32_t bos, eos, pad;

    tok_cache_shard cache[TOK_CACHE_SHARDS];

    struct tok_chunk *arena; /* all strings above live in these chunks */
};

/* The GPT-2 byte <-> unicode alphabet. */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp); /* -1 if cp is not in the alphabet */

/* UTF-8 helpers */
/* Strict validation (no overlongs, surrogates or code points past U+10FFFF). Returns the
 * offset of the first invalid byte, or len if the text is valid. */
/* Decode one code point of valid UTF-8 at s; returns its byte length. */
static inline int tok_utf8_next(const uint8_t *s, uint32_t *cp) {
    uint8_t c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F); return 2; }
    if (c < 0xF0) { *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F); return 3; }
    *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return 4;
}
static inline int tok_utf8_put(uint8_t *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12)); o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18)); o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}
static inline int tok_utf8_len(uint8_t c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

/* First occurrence of p (pn >= 1 bytes) in s[0..n), or NULL. For the short needles of the
 * pipeline (a space, the space marker) memchr on the first byte beats memmem, whose set-up
 * per call dominates when it is called once per word. */
static inline bool tok_same(const char *a, const char *b, size_t n) { /* memcmp without a call, for a few bytes */
    for (size_t k = 0; k < n; k++)
        if (a[k] != b[k]) return false;
    return true;
}
static inline const char *tok_find(const char *s, size_t n, const char *p, size_t pn) {
    const char *end = s + n;
    while ((size_t)(end - s) >= pn) {
        const char *h = memchr(s, p[0], (size_t)(end - s) - pn + 1);
        if (!h) return NULL;
        if (tok_same(h + 1, p + 1, pn - 1)) return h;
        s = h + 1;
    }
    return NULL;
}

/* A growable byte buffer. */
typedef struct tok_buf { char *p; size_t len, cap; } tok_buf;
int tok_buf_reserve(tok_buf *b, size_t extra);
int tok_buf_add(tok_buf *b, const void *p, size_t n);

/* NFC normalization of valid UTF-8 (tokenizer_nfc.c). Appends to out. */
int tok_nfc(const char *s, size_t len, tok_buf *out);
bool tok_nfc_is_quick_yes(const char *s, size_t len);

/* Merge map and word cache (tokenizer_bpe.c). */
int tok_mergemap_init(tok_mergemap *m, uint32_t expected);
void tok_mergemap_free(tok_mergemap *m);
void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);
static inline uint64_t tok_merge_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }
static inline bool tok_mergemap_get(const tok_mergemap *m, int32_t a, int32_t b, uint32_t *rank, int32_t *merged) {
    uint64_t k = tok_merge_key(a, b);
    uint32_t mask = m->cap - 1;
    uint32_t i = (uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & mask;
    for (;;) {
        uint64_t s = m->slots[i].key;
        if (s == k) { *rank = m->slots[i].rank; *merged = m->slots[i].merged; return true; }
        if (!s) return false;
        i = (i + 1) & mask;
    }
}
int tok_cache_init(tokenizer *t);
/* After the model, normalizer and pre-tokenizers are loaded: the tables for cutting long
 * words (left empty where cutting is not safe). */
int tok_word_cut_init(tokenizer *t);
void tok_cache_free(tokenizer *t);

/* An id vector (encode output). */
typedef struct tok_ids { int32_t *p; size_t n, cap; } tok_ids;
int tok_ids_push(tok_ids *v, int32_t id);

/* BPE one pre-token (bytes of the word as the model sees it: raw bytes for byte-level
 * vocabularies, the normalized string otherwise) and append its ids. */
int tok_bpe_word(const tokenizer *t, const char *w, size_t len, tok_ids *out);

#endif
