/* tokenizer_bpe.c: the BPE model: vocabulary and merge hash maps, the merge loop of one word,
 * and the word cache.
 *
 * The merge loop follows `tokenizers` (models/bpe/word.rs) step for step, since ties decide
 * ids: symbols form a linked list over the word; a min-heap holds candidate merges ordered by
 * (rank, position); a popped entry is stale when its left symbol is gone or the pair now at
 * its position merges to another id. Before merging, each character (each byte for byte-level
 * vocabularies) becomes a symbol; a character missing from the vocabulary becomes its <0xXX>
 * byte tokens (byte_fallback) or the unknown token (consecutive ones fused with fuse_unk).
 *
 * The cache maps a pre-token's bytes to its ids. English text repeats words, so most words
 * cost one hash probe; 64 shards, each with its own mutex and a bump arena that is simply
 * emptied when full, keep it bounded and safe to share between threads. */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "core/err.h"
#include "tokenizer/tokenizer_impl.h"

/* ---- small utilities ---- */

uint64_t tok_hash_bytes(const void *p, size_t len) { return XXH3_64bits(p, len); }

int tok_buf_reserve(tok_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return err_set(ERR_STAGE, "out of memory");
    b->p = p;
    b->cap = cap;
    return 0;
}

int tok_buf_add(tok_buf *b, const void *p, size_t n) {
    if (tok_buf_reserve(b, n)) return ERR_STAGE;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int tok_ids_push(tok_ids *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->p, cap * sizeof *p);
        if (!p) return err_set(ERR_STAGE, "out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = id;
    return 0;
}

/* GPT-2's alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes map in
 * order to U+0100.. (docs/tokenizer-json.md). */
static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t tok_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t n = 0;
    for (unsigned k = 0; k < b; k++)
        if (!byte_is_printable(k)) n++;
    return 0x100 + n;
}

int tok_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    /* the 68 shifted bytes, in order: 0x00-0x20, 0x7F-0xA0, 0xAD */
    uint32_t n = cp - 0x100;
    return n <= 0x20 ? (int)n : n <= 0x20 + 34 ? (int)(0x7F + n - 0x21) : 0xAD;
}

/* ---- string map ---- */

int tok_strmap_init(tok_strmap *m, uint32_t expected) {
    uint32_t cap = 16;
    while (cap < expected * 2u + 16) cap *= 2;
    m->cap = cap;
    m->n = 0;
    m->slots = malloc((size_t)cap * sizeof *m->slots);
    if (!m->slots) return err_set(ERR_STAGE, "out of memory");
    for (uint32_t i = 0; i < cap; i++) m->slots[i].id = -1;
    return 0;
}

void tok_strmap_free(tok_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static int strmap_grow(tok_strmap *m) {
    tok_strmap g;
    if (tok_strmap_init(&g, m->cap)) return ERR_STAGE;
    for (uint32_t i = 0; i < m->cap; i++) {
        struct tok_strmap_slot *s = &m->slots[i];
        if (s->id < 0) continue;
        uint32_t j = (uint32_t)s->hash & (g.cap - 1);
        while (g.slots[j].id >= 0) j = (j + 1) & (g.cap - 1);
        g.slots[j] = *s;
        g.n++;
    }
    free(m->slots);
    *m = g;
    return 0;
}

int tok_strmap_put(tok_strmap *m, const char *key, uint32_t len, int32_t id) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return ERR_STAGE;
    uint64_t h = tok_hash_bytes(key, len);
    uint32_t i = (uint32_t)h & (m->cap - 1);
    for (;;) {
        struct tok_strmap_slot *s = &m->slots[i];
        if (s->id < 0) {
            *s = (struct tok_strmap_slot){h, key, len, id};
            m->n++;
            return 0;
        }
        if (s->hash == h && s->len == len && !memcmp(s->key, key, len)) {
            s->id = id;
            return 0;
        }
        i = (i + 1) & (m->cap - 1);
    }
}

int32_t tok_strmap_get(const tok_strmap *m, const char *key, uint32_t len) {
    if (!m->cap) return -1;
    uint64_t h = tok_hash_bytes(key, len);
    uint32_t i = (uint32_t)h & (m->cap - 1);
    for (;;) {
        const struct tok_strmap_slot *s = &m->slots[i];
        if (s->id < 0) return -1;
        if (s->hash == h && s->len == len && !memcmp(s->key, key, len)) return s->id;
        i = (i + 1) & (m->cap - 1);
    }
}

/* ---- merge map ---- */

int tok_mergemap_init(tok_mergemap *m, uint32_t expected) {
    uint32_t cap = 16;
    while (cap < expected * 2u + 16) cap *= 2;
    m->cap = cap;
    m->n = 0;
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return err_set(ERR_STAGE, "out of memory");
    return 0;
}

void tok_mergemap_free(tok_mergemap *m) {
    free(m->slots);
    memset(m, 0, sizeof *m);
}

/* Sized at init for all merges, so no growth. A repeated pair takes the later rank, as a
 * hash map filled in rank order does in `tokenizers`. */
void tok_mergemap_put(tok_mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged) {
    uint64_t k = tok_merge_key(a, b);
    uint32_t mask = m->cap - 1;
    uint32_t i = (uint32_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & mask;
    while (m->slots[i].key && m->slots[i].key != k) i = (i + 1) & mask;
    if (!m->slots[i].key) m->n++;
    m->slots[i] = (struct tok_merge_slot){k, rank, merged};
}

/* ---- word cache ---- */

#define CACHE_SLOTS 2048            /* per shard, power of two */
#define CACHE_ARENA (96u * 1024u)   /* per shard */

int tok_cache_init(tokenizer *t) {
    for (int s = 0; s < TOK_CACHE_SHARDS; s++) {
        tok_cache_shard *c = &t->cache[s];
        pthread_mutex_init(&c->mu, NULL);
        c->cap = CACHE_SLOTS;
        c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
        c->arena = malloc(CACHE_ARENA);
        c->arena_cap = CACHE_ARENA;
        c->arena_used = 8; /* offset 0 marks an empty slot */
        if (!c->slots || !c->arena) return err_set(ERR_STAGE, "out of memory");
    }
    return 0;
}

void tok_cache_free(tokenizer *t) {
    for (int s = 0; s < TOK_CACHE_SHARDS; s++) {
        tok_cache_shard *c = &t->cache[s];
        if (!c->slots && !c->arena) continue;
        pthread_mutex_destroy(&c->mu);
        free(c->slots);
        free(c->arena);
        c->slots = NULL;
        c->arena = NULL;
    }
}

/* Look the word up; on a hit append its ids to out and return true. */
static bool cache_get(tok_cache_shard *c, uint64_t h, const char *w, size_t len, tok_ids *out, int *rc) {
    bool hit = false;
    pthread_mutex_lock(&c->mu);
    uint32_t i = (uint32_t)(h >> 8) & (c->cap - 1);
    for (;;) {
        struct tok_cache_slot *s = &c->slots[i];
        if (!s->off) break;
        if (s->hash == h) {
            const char *e = c->arena + s->off;
            uint16_t kl, ni;
            memcpy(&kl, e, 2);
            memcpy(&ni, e + 2, 2);
            if (kl == len && !memcmp(e + 4, w, len)) {
                const char *ids = e + 4 + ((len + 3) & ~(size_t)3);
                if (out->n + ni > out->cap) {
                    size_t cap = out->cap ? out->cap : 64;
                    while (cap < out->n + ni) cap *= 2;
                    int32_t *p = realloc(out->p, cap * sizeof *p);
                    if (!p) { *rc = err_set(ERR_STAGE, "out of memory"); break; }
                    out->p = p;
                    out->cap = cap;
                }
                memcpy(out->p + out->n, ids, (size_t)ni * 4);
                out->n += ni;
                hit = true;
                break;
            }
        }
        i = (i + 1) & (c->cap - 1);
    }
    pthread_mutex_unlock(&c->mu);
    return hit;
}

static void cache_put(tok_cache_shard *c, uint64_t h, const char *w, size_t len, const int32_t *ids, size_t n) {
    if (n > 0xFFFF) return;
    size_t need = 4 + ((len + 3) & ~(size_t)3) + n * 4;
    pthread_mutex_lock(&c->mu);
    if (c->arena_used + need > c->arena_cap || (c->n + 1) * 4 > c->cap * 3) {
        /* full: start the shard over (cheaper than LRU bookkeeping, and words that matter
         * come straight back) */
        memset(c->slots, 0, (size_t)c->cap * sizeof *c->slots);
        c->n = 0;
        c->arena_used = 8;
    }
    if (c->arena_used + need <= c->arena_cap) {
        uint32_t i = (uint32_t)(h >> 8) & (c->cap - 1);
        bool dup = false;
        while (c->slots[i].off) {
            if (c->slots[i].hash == h) {
                const char *e = c->arena + c->slots[i].off;
                uint16_t kl;
                memcpy(&kl, e, 2);
                if (kl == len && !memcmp(e + 4, w, len)) { dup = true; break; }
            }
            i = (i + 1) & (c->cap - 1);
        }
        if (!dup) {
            char *e = c->arena + c->arena_used;
            uint16_t kl = (uint16_t)len, ni = (uint16_t)n;
            memcpy(e, &kl, 2);
            memcpy(e + 2, &ni, 2);
            memcpy(e + 4, w, len);
            memcpy(e + 4 + ((len + 3) & ~(size_t)3), ids, n * 4);
            c->slots[i].hash = h;
            c->slots[i].off = c->arena_used;
            c->arena_used += (uint32_t)((need + 7) & ~(size_t)7);
            c->n++;
        }
    }
    pthread_mutex_unlock(&c->mu);
}

/* ---- the merge loop ---- */

typedef struct sym { int32_t id, prev, next; } sym;
typedef struct cand { uint32_t rank; int32_t pos, merged, left, right; } cand; /* left, right: the pair's ids when found */

static inline bool cand_less(const cand *a, const cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(cand *h, size_t *n, cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, size_t *n) {
    cand top = h[0];
    cand last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m) break;
        size_t r = l + 1, c = (r < m && cand_less(&h[r], &h[l])) ? r : l;
        if (!cand_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

/* Initial symbols of a word, as word.rs builds them. Returns the count (<= 4 * len). */
static size_t word_symbols(const tokenizer *t, const char *w, size_t len, sym *s) {
    size_t n = 0;
    if (t->byte_level) {
        for (size_t i = 0; i < len; i++) {
            int32_t id = t->byte_id[(uint8_t)w[i]];
            if (id >= 0) s[n++].id = id;
            else if (t->unk_id >= 0) {
                if (t->fuse_unk && n > 0 && s[n - 1].id == t->unk_id) continue;
                s[n++].id = t->unk_id;
            }
        }
        return n;
    }
    int32_t pending_unk = 0; /* an unknown run not yet emitted (fuse_unk) */
    for (size_t i = 0; i < len;) {
        int cl = tok_utf8_len((uint8_t)w[i]);
        if (i + (size_t)cl > len) cl = (int)(len - i);
        int32_t id = cl == 1 && (uint8_t)w[i] < 0x80 ? t->ascii_id[(uint8_t)w[i]] : tok_strmap_get(t->words, w + i, (uint32_t)cl);
        if (id >= 0) {
            if (pending_unk) { s[n++].id = t->unk_id; pending_unk = 0; }
            s[n++].id = id;
        } else {
            bool done = false;
            if (t->byte_fallback) {
                bool all = true;
                for (int k = 0; k < cl; k++)
                    if (t->byte_fb[(uint8_t)w[i + k]] < 0) all = false;
                if (all) {
                    for (int k = 0; k < cl; k++) s[n++].id = t->byte_fb[(uint8_t)w[i + k]];
                    done = true;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (pending_unk && !t->fuse_unk) s[n++].id = t->unk_id;
                pending_unk = 1;
            }
        }
        i += (size_t)cl;
    }
    if (pending_unk) s[n++].id = t->unk_id;
    return n;
}

/* A short word: rescan its few pairs for the lowest rank after each merge instead of keeping
 * a heap. The merges are word.rs's: it applies the lowest (rank, position) pair still present,
 * which is the pair the scan finds (strict < keeps the leftmost of equal ranks); a stale heap
 * entry only ever applies when its pair is still there. Returns the new symbol count; the ids
 * are s[0..n). */
#define BPE_SMALL 16
static size_t merge_small(const tokenizer *t, sym *s, size_t n) {
    uint32_t rank[BPE_SMALL];   /* rank[i], merged[i]: the pair (s[i], s[i + 1]); UINT32_MAX: none */
    int32_t merged[BPE_SMALL];
    for (size_t i = 0; i + 1 < n; i++)
        if (!tok_mergemap_get(&t->merges, s[i].id, s[i + 1].id, &rank[i], &merged[i])) rank[i] = UINT32_MAX;
    while (n > 1) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < n; i++)
            if (rank[i] < rank[best]) best = i;
        if (rank[best] == UINT32_MAX) break;
        s[best].id = merged[best];
        for (size_t i = best + 1; i + 1 < n; i++) s[i].id = s[i + 1].id; /* the right symbol goes */
        for (size_t i = best + 1; i + 2 < n; i++) { /* and the pairs after it move down */
            rank[i] = rank[i + 1];
            merged[i] = merged[i + 1];
        }
        n--;
        if (best > 0 && !tok_mergemap_get(&t->merges, s[best - 1].id, s[best].id, &rank[best - 1], &merged[best - 1]))
            rank[best - 1] = UINT32_MAX;
        if (best + 1 < n && !tok_mergemap_get(&t->merges, s[best].id, s[best + 1].id, &rank[best], &merged[best]))
            rank[best] = UINT32_MAX;
    }
    return n;
}

static int bpe_merge(const tokenizer *t, const char *w, size_t len, tok_ids *out) {
    sym sbuf[256];
    cand hbuf[256];
    sym *s = sbuf;
    cand *h = hbuf;
    if (len > 64) { /* up to 4 symbols a byte (byte fallback of a 4-byte char) */
        s = malloc(len * 4 * sizeof *s);
        h = malloc(len * 4 * sizeof *h);
        if (!s || !h) {
            free(s);
            free(h);
            return err_set(ERR_STAGE, "out of memory");
        }
    }
    size_t n = word_symbols(t, w, len, s);
    if (n <= BPE_SMALL) {
        n = merge_small(t, s, n);
        int rc = 0;
        for (size_t i = 0; i < n && !rc; i++) rc = tok_ids_push(out, s[i].id);
        if (s != sbuf) {
            free(s);
            free(h);
        }
        return rc;
    }
    size_t nh = 0;
    for (size_t i = 0; i < n; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    uint32_t rank;
    int32_t merged;
    for (size_t i = 0; i + 1 < n; i++)
        if (tok_mergemap_get(&t->merges, s[i].id, s[i + 1].id, &rank, &merged))
            heap_push(h, &nh, (cand){rank, (int32_t)i, merged, s[i].id, s[i + 1].id});
    while (nh) {
        cand c = heap_pop(h, &nh);
        sym *a = &s[c.pos];
        if (a->id < 0 || a->next < 0) continue;
        sym *b = &s[a->next];
        /* stale unless the pair is the one it was found for, or (word.rs's rule) whatever pair
         * is there now merges to the same id */
        if ((a->id != c.left || b->id != c.right) && (!tok_mergemap_get(&t->merges, a->id, b->id, &rank, &merged) || merged != c.merged))
            continue;
        a->id = c.merged;
        a->next = b->next;
        b->id = -1;
        if (a->next >= 0) s[a->next].prev = c.pos;
        if (a->prev >= 0 && tok_mergemap_get(&t->merges, s[a->prev].id, a->id, &rank, &merged))
            heap_push(h, &nh, (cand){rank, a->prev, merged, s[a->prev].id, a->id});
        if (a->next >= 0 && tok_mergemap_get(&t->merges, a->id, s[a->next].id, &rank, &merged))
            heap_push(h, &nh, (cand){rank, c.pos, merged, a->id, s[a->next].id});
    }
    int rc = 0;
    for (int32_t i = n ? 0 : -1; i >= 0 && !rc; i = s[i].next) rc = tok_ids_push(out, s[i].id);
    if (s != sbuf) {
        free(s);
        free(h);
    }
    return rc;
}

/* One word (or one part of a cut word): a whole-word lookup with ignore_merges, the cache,
 * then the merge loop. */
static int bpe_part(const tokenizer *t, const char *w, size_t len, tok_ids *out) {
    if (!len) return 0;
    if (t->ignore_merges) {
        int32_t id = tok_strmap_get(t->words, w, (uint32_t)len);
        if (id >= 0) return tok_ids_push(out, id);
    }
    if (len == 1 && t->byte_level && t->byte_id[(uint8_t)w[0]] >= 0) return tok_ids_push(out, t->byte_id[(uint8_t)w[0]]);
    if (len > TOK_CACHE_MAX_WORD) return bpe_merge(t, w, len, out);
    uint64_t h = tok_hash_bytes(w, len);
    /* the cache is the one mutable part of a loaded tokenizer; its shards carry locks */
    tok_cache_shard *c = (tok_cache_shard *)&t->cache[h % TOK_CACHE_SHARDS];
    int rc = 0;
    if (cache_get(c, h, w, len, out, &rc)) return 0;
    if (rc) return rc;
    size_t start = out->n;
    if ((rc = bpe_merge(t, w, len, out))) return rc;
    cache_put(c, h, w, len, out->p + start, out->n - start);
    return 0;
}

/* ---- cutting long words ----
 *
 * A word may be merged in parts when no merge can ever join the two symbols on either side
 * of a cut: then every merge inside a part is applied in the same relative (rank, position)
 * order as in the whole word, and the ids are the same. SentencePiece-style vocabularies
 * without a pre-tokenizer need this, since a whole paragraph reaches BPE as one word: merged
 * whole it never hits the word cache and the merge heap grows with the paragraph (O(n log n),
 * with a cache miss per heap level once it outgrows the CPU caches).
 *
 * What a cut needs: the symbol left of it is a concatenation of initial symbols ending with
 * the character p before the cut, and the symbol right of it one starting with the character
 * q after it, provided both characters are vocabulary tokens (then each is its own initial
 * symbol, never a <0xXX> byte or the unknown token). So no merge can join across the cut if
 * no merge (l, r) has l ending with p and r starting with q. Two rules use this:
 *  - the space marker c (Metaspace's replacement, or what a Replace normalizer turns spaces
 *    into): a cut before each run of c is safe when no merge has r starting with c and l
 *    ending with anything but c (the character before the cut may be missing from the
 *    vocabulary, so c must not end "<0xXX>" or the unknown token either). SentencePiece pieces hold c only at the start or in runs,
 *    so this holds for them; it is checked on the merges at load, and a vocabulary that
 *    breaks it is not cut. Found with memchr, this turns paragraphs into words.
 *  - any pair: a part still longer than BPE_LONG bytes (text without spaces: CJK, long
 *    URLs, code) is cut between every two vocabulary characters p q that no merge joins,
 *    from the set of (last character of l, first character of r) over all merges. That
 *    bounds the heap by the longest run of joinable characters, not by the text. */

#define BPE_LONG 64

static bool str_starts(const char *s, size_t n, const char *p, size_t pn) { return n >= pn && !memcmp(s, p, pn); }
static bool str_ends(const char *s, size_t n, const char *p, size_t pn) { return n >= pn && !memcmp(s + n - pn, p, pn); }

static uint32_t str_first_cp(const char *s) {
    uint32_t cp;
    tok_utf8_next((const uint8_t *)s, &cp);
    return cp;
}

static uint32_t str_last_cp(const char *s, size_t n) {
    size_t k = n - 1;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    return str_first_cp(s + k);
}

static inline uint32_t join_slot(uint64_t key, uint32_t cap) { return (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1); }

/* Does some merge join a token ending with p to one starting with q? */
static bool pair_joins(const tokenizer *t, uint32_t p, uint32_t q) {
    if (p < 128 && q < 128) return t->join_ascii[(p << 7 | q) >> 3] & (1u << (q & 7));
    uint64_t key = ((uint64_t)p << 32 | q) + 1;
    for (uint32_t i = join_slot(key, t->join_cap);; i = (i + 1) & (t->join_cap - 1)) {
        if (t->join[i] == key) return true;
        if (!t->join[i]) return false;
    }
}

static int pairs_init(tokenizer *t) {
    const tok_mergemap *m = &t->merges;
    t->join_cap = 16;
    while (t->join_cap < m->n * 2u + 16) t->join_cap *= 2;
    t->join = calloc(t->join_cap, sizeof *t->join);
    if (!t->join) return err_set(ERR_STAGE, "out of memory");
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        uint64_t k = m->slots[i].key - 1;
        int32_t l = (int32_t)(k >> 32), r = (int32_t)(uint32_t)k;
        uint32_t p = str_last_cp(t->tok[l], t->tok_len[l]), q = str_first_cp(t->tok[r]);
        if (p < 128 && q < 128) {
            t->join_ascii[(p << 7 | q) >> 3] |= (uint8_t)(1u << (q & 7));
            continue;
        }
        uint64_t key = ((uint64_t)p << 32 | q) + 1;
        uint32_t j = join_slot(key, t->join_cap);
        while (t->join[j] && t->join[j] != key) j = (j + 1) & (t->join_cap - 1);
        t->join[j] = key;
    }
    return 0;
}

int tok_word_cut_init(tokenizer *t) {
    t->word_cut_len = 0;
    if (t->byte_level || t->ignore_merges) return 0; /* byte-level words are already short; ignore_merges looks whole words up */
    for (int32_t id = 0; id < t->n_ids; id++)
        if (t->tok[id] && !t->tok_len[id]) return 0; /* an empty token has no first or last character */
    int rc = pairs_init(t);
    if (rc) return rc;
    /* the space marker */
    const char *c = NULL;
    size_t cl = 0;
    for (size_t k = 0; k < t->n_pre; k++)
        if (t->pre[k].kind == TOK_PRE_METASPACE) {
            c = t->pre[k].replacement;
            cl = t->pre[k].replacement_len;
        }
    for (size_t k = 0; !c && k < t->n_norm; k++) {
        const tok_norm *n = &t->norm[k];
        if (n->kind == TOK_NORM_REPLACE && n->alen == 1 && n->a[0] == ' ' && n->blen && tok_utf8_len((uint8_t)n->b[0]) == (int)n->blen) {
            c = n->b;
            cl = n->blen;
        }
    }
    if (!c || cl > sizeof t->word_cut || tok_strmap_get(&t->vocab, c, (uint32_t)cl) < 0) return 0;
    /* the character before a cut need not be in the vocabulary: its symbol may be a <0xXX>
     * byte or the unknown token, whose strings must not end with c either */
    if (str_ends(">", 1, c, cl) || (t->unk_id >= 0 && str_ends(t->tok[t->unk_id], t->tok_len[t->unk_id], c, cl))) return 0;
    const tok_mergemap *m = &t->merges;
    for (uint32_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        uint64_t k = m->slots[i].key - 1;
        int32_t l = (int32_t)(k >> 32), r = (int32_t)(uint32_t)k;
        if (str_starts(t->tok[r], t->tok_len[r], c, cl) && !str_ends(t->tok[l], t->tok_len[l], c, cl)) return 0;
    }
    memcpy(t->word_cut, c, cl);
    t->word_cut_len = cl;
    return 0;
}

static bool char_in_vocab(const tokenizer *t, const char *s, int n) {
    return n == 1 ? t->ascii_id[(uint8_t)s[0]] >= 0 : tok_strmap_get(&t->vocab, s, (uint32_t)n) >= 0;
}

/* A long part: cut between vocabulary characters that no merge joins. */
static int bpe_long(const tokenizer *t, const char *w, size_t len, tok_ids *out) {
    size_t a = 0;
    uint32_t p;
    int pn = tok_utf8_next((const uint8_t *)w, &p);
    bool p_in = char_in_vocab(t, w, pn);
    for (size_t i = (size_t)pn; i < len;) {
        uint32_t q;
        int qn = tok_utf8_next((const uint8_t *)w + i, &q);
        bool q_in = char_in_vocab(t, w + i, qn);
        if (p_in && q_in && !pair_joins(t, p, q)) {
            int rc = bpe_part(t, w + a, i - a, out);
            if (rc) return rc;
            a = i;
        }
        p = q;
        p_in = q_in;
        i += (size_t)qn;
    }
    return bpe_part(t, w + a, len - a, out);
}

int tok_bpe_word(const tokenizer *t, const char *w, size_t len, tok_ids *out) {
    if (!t->join_cap) return bpe_part(t, w, len, out);
    size_t cl = t->word_cut_len;
    size_t a = 0, i = 1; /* a: where the current part starts; cuts are searched from i */
    while (cl && i < len) {
        const char *hit = tok_find(w + i, len - i, t->word_cut, cl);
        if (!hit) break;
        size_t h = (size_t)(hit - w);
        i = h + cl;
        if (h >= cl && tok_same(w + h - cl, t->word_cut, cl)) continue; /* inside a run of c */
        int rc = h - a > BPE_LONG ? bpe_long(t, w + a, h - a, out) : bpe_part(t, w + a, h - a, out);
        if (rc) return rc;
        a = h;
    }
    return len - a > BPE_LONG ? bpe_long(t, w + a, len - a, out) : bpe_part(t, w + a, len - a, out);
}
