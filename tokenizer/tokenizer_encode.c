/* tokenizer_encode.c: text -> ids, in the order `tokenizers` runs its pipeline:
 *
 *   1. non-normalized added tokens are cut out of the raw text (leftmost-longest, with
 *      lstrip/rstrip/single_word); each remaining segment is then on its own:
 *   2. normalizer (NFC, Prepend, Replace), applied per segment,
 *   3. normalized added tokens are cut out of the normalized segment,
 *   4. pre-tokenizers split the rest into words (regex Split, ByteLevel, Metaspace),
 *   5. BPE turns each word into ids (tokenizer_bpe.c, with the word cache),
 *   6. the post-processor template adds BOS/EOS when asked.
 * Pieces of text are (offset, length) pairs into one buffer; a step that rewrites text
 * (Metaspace, a prefix space) writes a new buffer. Everything lives in an encode_state on
 * the caller's stack, so concurrent encodes share nothing but the word cache. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer_impl.h"

typedef struct piece { size_t off, len; } piece;
typedef struct pieces { piece *p; size_t n, cap; } pieces;

typedef struct encode_state {
    const tokenizer *t;
    tok_ids out;
    tok_buf norm[2];            /* normalizer ping-pong */
    tok_buf work[2];            /* pre-tokenizer rewrites ping-pong */
    pieces pc[2];
    pieces spans;               /* pre_split scratch */
    pcre2_match_data *md;
    pcre2_match_context *mctx;  /* only once a regex ran out of JIT stack */
    pcre2_jit_stack *jstack;
} encode_state;

static int pieces_push(pieces *v, size_t off, size_t len) {
    if (!len) return 0;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        piece *p = realloc(v->p, cap * sizeof *p);
        if (!p) return err_set(ERR_STAGE, "out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = (piece){off, len};
    return 0;
}

/* Unicode White_Space (Rust's char::is_whitespace) */
static bool is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The regex \w that `tokenizers` checks around single_word tokens, approximated: ASCII
 * letters, digits and '_', and every non-ASCII character that is not whitespace (no
 * supported family has a single_word token) */
static bool is_wordch(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_';
    return !is_ws(c);
}

static uint32_t cp_before(const char *s, size_t i) {
    size_t k = i;
    while (k > 0 && ((uint8_t)s[k - 1] & 0xC0) == 0x80) k--;
    if (k > 0) k--;
    uint32_t cp;
    tok_utf8_next((const uint8_t *)s + k, &cp);
    return cp;
}

/* Find the next added token of a pass in s[from..len): leftmost, then longest. */
static bool added_find(const tokenizer *t, int pass, const char *s, size_t len, size_t from, size_t *ms, size_t *me, int32_t *id) {
    const uint32_t *st = t->added_start[pass];
    const int32_t *idx = t->added_idx[pass];
    for (size_t i = from; i < len; i++) {
        if (t->added_first[pass] >= 0) { /* typically '<': skip to the next one */
            const char *h = memchr(s + i, t->added_first[pass], len - i);
            if (!h) return false;
            i = (size_t)(h - s);
        }
        uint8_t b = (uint8_t)s[i];
        if (st[b] == st[b + 1]) continue;
        const tok_added *best = NULL;
        size_t best_len = 0;
        for (uint32_t k = st[b]; k < st[b + 1]; k++) {
            const tok_added *x = &t->added[idx[k]];
            const char *c = pass ? x->norm : x->content;
            size_t cl = pass ? x->norm_len : x->len;
            if (cl > best_len && cl <= len - i && !memcmp(s + i, c, cl)) {
                best = x;
                best_len = cl;
            }
        }
        if (!best) continue;
        size_t a = i, e = i + best_len;
        if (best->single_word) {
            uint32_t cp;
            bool left_ok = a == 0 || !is_wordch(cp_before(s, a));
            bool right_ok = e == len || (tok_utf8_next((const uint8_t *)s + e, &cp), !is_wordch(cp));
            if (!left_ok || !right_ok) {
                i = e - 1; /* matching goes on after the discarded match, as aho-corasick's does */
                continue;
            }
        }
        if (best->lstrip)
            while (a > from) {
                size_t k = a - 1;
                while (k > from && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
                uint32_t cp;
                tok_utf8_next((const uint8_t *)s + k, &cp);
                if (!is_ws(cp)) break;
                a = k;
            }
        if (best->rstrip)
            while (e < len) {
                uint32_t cp;
                int n = tok_utf8_next((const uint8_t *)s + e, &cp);
                if (!is_ws(cp)) break;
                e += (size_t)n;
            }
        *ms = a;
        *me = e;
        *id = best->id;
        return true;
    }
    return false;
}

int tok_normalize(const tokenizer *t, const char *s, size_t len, tok_buf *out);

/* Apply the normalizer steps; the result goes to out (which must differ from s). */
int tok_normalize(const tokenizer *t, const char *s, size_t len, tok_buf *out) {
    tok_buf tmp = {0};
    const char *cur = s;
    size_t cur_len = len;
    int rc = 0;
    for (size_t k = 0; k < t->n_norm && !rc; k++) {
        const tok_norm *n = &t->norm[k];
        tok_buf *dst = ((t->n_norm - 1 - k) % 2 == 0) ? out : &tmp; /* the last step writes out */
        dst->len = 0;
        switch (n->kind) {
        case TOK_NORM_NFC:
            rc = tok_nfc(cur, cur_len, dst);
            break;
        case TOK_NORM_PREPEND:
            if (cur_len) rc = tok_buf_add(dst, n->a, n->alen);
            if (!rc) rc = tok_buf_add(dst, cur, cur_len);
            break;
        case TOK_NORM_REPLACE: {
            /* room for the worst case up front, then plain copies (this runs once a word) */
            size_t most = n->blen > n->alen ? cur_len / n->alen * n->blen + cur_len % n->alen : cur_len;
            if ((rc = tok_buf_reserve(dst, most))) break;
            char *o = dst->p;
            for (size_t i = 0; i < cur_len;) {
                const char *hit = tok_find(cur + i, cur_len - i, n->a, n->alen);
                size_t upto = hit ? (size_t)(hit - cur) : cur_len;
                memcpy(o, cur + i, upto - i);
                o += upto - i;
                if (!hit) break;
                memcpy(o, n->b, n->blen);
                o += n->blen;
                i = upto + n->alen;
            }
            dst->len = (size_t)(o - dst->p);
            dst->p[dst->len] = 0;
            break;
        }
        }
        cur = dst->p;
        cur_len = dst->len;
    }
    if (!rc && !t->n_norm) {
        out->len = 0;
        rc = tok_buf_add(out, cur, cur_len);
    }
    free(tmp.p);
    return rc;
}

/* One regex search: 0 and the match span, -1 for no match, or an ERR_* code. Grows a JIT
 * stack once if the default one is too small. */
static int regex_match(encode_state *es, pcre2_code *re, const char *s, size_t len, size_t pos, size_t *ms, size_t *me) {
    if (!es->md) {
        es->md = pcre2_match_data_create(4, NULL);
        if (!es->md) return err_set(ERR_STAGE, "out of memory");
    }
    for (;;) {
        int r = pcre2_match(re, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, es->md, es->mctx);
        if (r == PCRE2_ERROR_NOMATCH) return -1;
        if (r == PCRE2_ERROR_JIT_STACKLIMIT && !es->jstack) {
            es->mctx = pcre2_match_context_create(NULL);
            es->jstack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!es->mctx || !es->jstack) return err_set(ERR_STAGE, "out of memory");
            pcre2_jit_stack_assign(es->mctx, NULL, es->jstack);
            continue;
        }
        if (r < 0) {
            PCRE2_UCHAR msg[200];
            pcre2_get_error_message(r, msg, sizeof msg);
            return err_set(ERR_DATA, "pre-tokenizer regex failed at byte %zu: %s", pos, (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(es->md);
        *ms = ov[0];
        *me = ov[1];
        return 0;
    }
}

/* Split every piece of in by p (regex or literal) into out, per the split behavior. */
static int pre_split(encode_state *es, const tok_pre *p, const char *base, const pieces *in, pieces *out) {
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        const char *s = base + in->p[k].off;
        size_t len = in->p[k].len, off0 = in->p[k].off;
        /* the spans that cover the piece: gaps and matches, in order */
        pieces *sp = &es->spans;
        sp->n = 0;
        size_t pos = 0, prev_end = 0;
        int rc = 0;
        while (pos < len) {
            size_t ms = 0, me = 0;
            if (p->re) {
                int r = regex_match(es, p->re, s, len, pos, &ms, &me);
                if (r > 0) return r;
                if (r < 0) break;
                if (me == ms) { /* empty match: no span, move on one character */
                    pos = ms + (size_t)tok_utf8_len((uint8_t)s[ms]);
                    continue;
                }
            } else {
                const char *hit = len - pos >= p->literal_len ? memmem(s + pos, len - pos, p->literal, p->literal_len) : NULL;
                if (!hit) break;
                ms = (size_t)(hit - s);
                me = ms + p->literal_len;
            }
            if (ms > prev_end) rc = pieces_push(sp, prev_end, ms - prev_end); /* gap: odd offsets mark matches below */
            if (!rc) rc = pieces_push(sp, ms | ((size_t)1 << 62), me - ms);
            if (rc) return rc;
            prev_end = pos = me;
        }
        if (prev_end < len && (rc = pieces_push(sp, prev_end, len - prev_end))) return rc;
        /* behaviors, as `tokenizers` folds them (normalizer.rs, split) */
        const size_t MATCH = (size_t)1 << 62;
        size_t first = out->n;
        if (p->behavior == TOK_SPLIT_MERGED_NEXT) {
            /* walk backwards: a match joins the piece after it unless that one was a match */
            bool prev_match = false;
            for (size_t q = sp->n; q-- > 0;) {
                bool m = !!(sp->p[q].off & MATCH) != p->invert;
                size_t a = (sp->p[q].off & ~MATCH) + off0, l = sp->p[q].len;
                if (m && !prev_match && out->n > first) {
                    piece *last = &out->p[out->n - 1];
                    last->len += last->off - a;
                    last->off = a;
                } else if ((rc = pieces_push(out, a, l))) return rc;
                prev_match = m;
            }
            for (size_t i = first, j = out->n; i + 1 < j; i++, j--) { /* back to text order */
                piece tmp = out->p[i];
                out->p[i] = out->p[j - 1];
                out->p[j - 1] = tmp;
            }
            continue;
        }
        bool prev_match = false;
        for (size_t q = 0; q < sp->n; q++) {
            bool m = !!(sp->p[q].off & MATCH) != p->invert;
            size_t a = (sp->p[q].off & ~MATCH) + off0, l = sp->p[q].len;
            if (p->behavior == TOK_SPLIT_REMOVED) {
                if (!m) rc = pieces_push(out, a, l);
            } else if (p->behavior == TOK_SPLIT_MERGED_PREV && m && !prev_match && out->n > first) {
                out->p[out->n - 1].len += l; /* a match joins the piece before it */
            } else rc = pieces_push(out, a, l);
            if (rc) return rc;
            prev_match = m;
        }
    }
    return 0;
}

/* Metaspace: spaces become the replacement character, a prefix is added per the scheme,
 * and with split the text breaks before each replacement character. */
static int pre_metaspace(const tok_pre *p, const char *base, const pieces *in, bool at_start, tok_buf *nb, pieces *out) {
    nb->len = 0;
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        const char *s = base + in->p[k].off;
        size_t len = in->p[k].len, start = nb->len;
        bool starts_rep = len >= p->replacement_len && !memcmp(s, p->replacement, p->replacement_len);
        if (!(s[0] == ' ') && !starts_rep &&
            (p->prepend == TOK_PREPEND_ALWAYS || (p->prepend == TOK_PREPEND_FIRST && at_start && k == 0)))
            if (tok_buf_add(nb, p->replacement, p->replacement_len)) return ERR_STAGE;
        for (size_t i = 0; i < len;) {
            const char *sp = memchr(s + i, ' ', len - i);
            size_t upto = sp ? (size_t)(sp - s) : len;
            if (tok_buf_add(nb, s + i, upto - i)) return ERR_STAGE;
            if (sp && tok_buf_add(nb, p->replacement, p->replacement_len)) return ERR_STAGE;
            i = sp ? upto + 1 : len;
        }
        if (!p->split) {
            if (pieces_push(out, start, nb->len - start)) return ERR_STAGE;
            continue;
        }
        /* MergedWithNext on the replacement: each occurrence opens a new piece */
        size_t a = start;
        for (size_t i = start + 1; i + p->replacement_len <= nb->len; i++)
            if (!memcmp(nb->p + i, p->replacement, p->replacement_len)) {
                if (pieces_push(out, a, i - a)) return ERR_STAGE;
                a = i;
            }
        if (pieces_push(out, a, nb->len - a)) return ERR_STAGE;
    }
    return 0;
}

/* ByteLevel's prefix space, per piece. */
static int pre_prefix_space(const char *base, const pieces *in, tok_buf *nb, pieces *out) {
    nb->len = 0;
    out->n = 0;
    for (size_t k = 0; k < in->n; k++) {
        size_t start = nb->len;
        if (base[in->p[k].off] != ' ' && tok_buf_add(nb, " ", 1)) return ERR_STAGE;
        if (tok_buf_add(nb, base + in->p[k].off, in->p[k].len)) return ERR_STAGE;
        if (pieces_push(out, start, nb->len - start)) return ERR_STAGE;
    }
    return 0;
}

/* Steps 4 and 5 for one stretch of normalized text. */
static int encode_words(encode_state *es, const char *s, size_t len, bool at_start) {
    const tokenizer *t = es->t;
    if (!len) return 0;
    if (!t->n_pre) return tok_bpe_word(t, s, len, &es->out);
    const char *base = s;
    pieces *cur = &es->pc[0], *nxt = &es->pc[1];
    cur->n = 0;
    if (pieces_push(cur, 0, len)) return ERR_STAGE;
    int wb = 0, rc = 0;
#define SWAP_PIECES() do { pieces *sw_ = cur; cur = nxt; nxt = sw_; } while (0)
    for (size_t k = 0; k < t->n_pre && !rc; k++) {
        const tok_pre *p = &t->pre[k];
        switch (p->kind) {
        case TOK_PRE_SPLIT:
            rc = pre_split(es, p, base, cur, nxt);
            SWAP_PIECES();
            break;
        case TOK_PRE_METASPACE:
            rc = pre_metaspace(p, base, cur, at_start, &es->work[wb], nxt);
            base = es->work[wb].p;
            wb ^= 1;
            SWAP_PIECES();
            break;
        case TOK_PRE_BYTELEVEL:
            /* the byte mapping itself is implicit: BPE works on raw bytes */
            if (p->add_prefix_space) {
                rc = pre_prefix_space(base, cur, &es->work[wb], nxt);
                base = es->work[wb].p;
                wb ^= 1;
                SWAP_PIECES();
            }
            if (!rc && p->re) {
                tok_pre gpt2 = {.kind = TOK_PRE_SPLIT, .re = p->re, .behavior = TOK_SPLIT_ISOLATED};
                rc = pre_split(es, &gpt2, base, cur, nxt);
                SWAP_PIECES();
            }
            break;
        }
    }
#undef SWAP_PIECES
    for (size_t k = 0; k < cur->n && !rc; k++) rc = tok_bpe_word(t, base + cur->p[k].off, cur->p[k].len, &es->out);
    return rc;
}

/* Steps 2 to 5 for one segment of raw text between added tokens. */
static int encode_segment(encode_state *es, const char *s, size_t len, bool at_start) {
    const tokenizer *t = es->t;
    if (t->n_norm) {
        tok_buf *nb = &es->norm[0];
        nb->len = 0;
        int rc = tok_normalize(t, s, len, nb);
        if (rc) return rc;
        s = nb->p;
        len = nb->len;
    }
    if (!t->n_added_pass[1]) return encode_words(es, s, len, at_start);
    size_t pos = 0, ms, me;
    int32_t id;
    while (pos < len && added_find(t, 1, s, len, pos, &ms, &me, &id)) {
        int rc = encode_words(es, s + pos, ms - pos, at_start && pos == 0);
        if (!rc) rc = tok_ids_push(&es->out, id);
        if (rc) return rc;
        pos = me;
    }
    return encode_words(es, s + pos, len - pos, at_start && pos == 0);
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special, int32_t **ids, size_t *n) {
    *ids = NULL;
    *n = 0;
    size_t bad = utf8_valid_prefix((const uint8_t *)text, len);
    if (bad != len)
        return err_set(ERR_DATA, "invalid UTF-8 at byte offset %zu (byte 0x%02X): text must be UTF-8", bad, (uint8_t)text[bad]);
    encode_state es = {.t = t};
    int rc = 0;
    if (add_special)
        for (size_t k = 0; k < t->n_prefix && !rc; k++) rc = tok_ids_push(&es.out, t->prefix[k]);
    size_t pos = 0, ms, me;
    int32_t id;
    while (!rc && pos < len && t->n_added_pass[0] && added_find(t, 0, text, len, pos, &ms, &me, &id)) {
        rc = encode_segment(&es, text + pos, ms - pos, pos == 0);
        if (!rc) rc = tok_ids_push(&es.out, id);
        pos = me;
    }
    if (!rc && pos < len) rc = encode_segment(&es, text + pos, len - pos, pos == 0);
    if (add_special)
        for (size_t k = 0; k < t->n_suffix && !rc; k++) rc = tok_ids_push(&es.out, t->suffix[k]);
    if (!rc && !es.out.p) { /* an empty result is still an allocation, never NULL */
        rc = tok_ids_push(&es.out, 0);
        es.out.n = 0;
    }
    for (int k = 0; k < 2; k++) {
        free(es.norm[k].p);
        free(es.work[k].p);
        free(es.pc[k].p);
    }
    free(es.spans.p);
    if (es.md) pcre2_match_data_free(es.md);
    if (es.mctx) pcre2_match_context_free(es.mctx);
    if (es.jstack) pcre2_jit_stack_free(es.jstack);
    if (rc) {
        free(es.out.p);
        return rc;
    }
    *ids = es.out.p;
    *n = es.out.n;
    return 0;
}
