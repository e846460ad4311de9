/* tokenizer_decode.c: ids -> text through the decoder chain of tokenizer.json.
 *
 * The steps work on a list of token strings exactly as `tokenizers` chains them (ByteLevel
 * and Fuse join the list into one string; Replace, ByteFallback, Strip and Metaspace work
 * token by token), then the list is concatenated. Bytes that do not form UTF-8 (a byte-level
 * token split inside a character, a lone <0xXX>) become U+FFFD, one per maximal invalid
 * sequence, as String::from_utf8_lossy does. A tokenizer whose decoder is only ByteLevel takes
 * a shortcut: the raw bytes of each id, kept since load, are concatenated. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer_impl.h"

typedef struct toklist { tok_buf *v; size_t n, cap; } toklist;

static void toklist_free(toklist *l) {
    for (size_t i = 0; i < l->cap; i++) free(l->v[i].p);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static tok_buf *toklist_add(toklist *l) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        tok_buf *v = realloc(l->v, cap * sizeof *v);
        if (!v) return NULL;
        memset(v + l->cap, 0, (cap - l->cap) * sizeof *v);
        l->v = v;
        l->cap = cap;
    }
    tok_buf *b = &l->v[l->n++];
    b->len = 0;
    if (tok_buf_add(b, "", 0)) return NULL;
    return b;
}

static const char FFFD[] = "\xEF\xBF\xBD";

/* Append bytes to out as valid UTF-8, invalid sequences replaced by U+FFFD. */
static int add_lossy(tok_buf *out, const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        size_t ok = utf8_valid_prefix(s + i, len - i);
        if (tok_buf_add(out, s + i, ok)) return ERR_STAGE;
        i += ok;
        if (i >= len) break;
        /* the maximal prefix of a valid sequence at i counts as one error */
        uint8_t c = s[i];
        size_t n = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 1;
        size_t k = 1;
        if (n > 1) {
            uint8_t lo = 0x80, hi = 0xBF;
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
            else if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
            if (i + 1 < len && s[i + 1] >= lo && s[i + 1] <= hi) {
                k = 2;
                while (k < n && i + k < len && (s[i + k] & 0xC0) == 0x80) k++;
            }
        }
        if (tok_buf_add(out, FFFD, 3)) return ERR_STAGE;
        i += k;
    }
    return 0;
}

/* The bytes a token stands for under the ByteLevel decoder. */
static int bytelevel_bytes(const tokenizer *t, const char *tok, size_t len, int32_t id, tok_buf *out) {
    if (t->raw && id >= 0) return tok_buf_add(out, t->raw[id], t->raw_len[id]);
    size_t start = out->len;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        i += (size_t)tok_utf8_next((const uint8_t *)tok + i, &cp);
        int b = tok_cp_to_byte(cp);
        if (b < 0) { /* not the GPT-2 alphabet: the token's own UTF-8 */
            out->len = start;
            return tok_buf_add(out, tok, len);
        }
        uint8_t ch = (uint8_t)b;
        if (tok_buf_add(out, &ch, 1)) return ERR_STAGE;
    }
    return 0;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int replace_all(tok_buf *dst, const char *s, size_t len, const char *pat, size_t plen, const char *rep, size_t rlen) {
    size_t i = 0;
    while (i < len) {
        const char *hit = len - i >= plen ? memmem(s + i, len - i, pat, plen) : NULL;
        size_t upto = hit ? (size_t)(hit - s) : len;
        if (tok_buf_add(dst, s + i, upto - i)) return ERR_STAGE;
        if (hit && tok_buf_add(dst, rep, rlen)) return ERR_STAGE;
        i = hit ? upto + plen : len;
    }
    return 0;
}

static int run_step(const tokenizer *t, const tok_dec *d, toklist *in, const int32_t *ids, toklist *out) {
    out->n = 0;
    tok_buf *o;
    switch (d->kind) {
    case TOK_DEC_BYTELEVEL: {
        tok_buf bytes = {0};
        int rc = 0;
        for (size_t i = 0; i < in->n && !rc; i++) rc = bytelevel_bytes(t, in->v[i].p, in->v[i].len, ids ? ids[i] : -1, &bytes);
        if (!rc && !(o = toklist_add(out))) rc = err_set(ERR_STAGE, "out of memory");
        if (!rc) rc = add_lossy(o, (const uint8_t *)bytes.p, bytes.len);
        free(bytes.p);
        return rc;
    }
    case TOK_DEC_FUSE:
        if (!(o = toklist_add(out))) return err_set(ERR_STAGE, "out of memory");
        for (size_t i = 0; i < in->n; i++)
            if (tok_buf_add(o, in->v[i].p, in->v[i].len)) return ERR_STAGE;
        return 0;
    case TOK_DEC_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            if (!(o = toklist_add(out))) return err_set(ERR_STAGE, "out of memory");
            if (replace_all(o, in->v[i].p, in->v[i].len, d->a, d->alen, d->b, d->blen)) return ERR_STAGE;
        }
        return 0;
    case TOK_DEC_BYTEFALLBACK: {
        tok_buf run = {0};
        int rc = 0;
        for (size_t i = 0; i <= in->n && !rc; i++) {
            const tok_buf *x = i < in->n ? &in->v[i] : NULL;
            int hi, lo;
            bool is_byte = x && x->len == 6 && !memcmp(x->p, "<0x", 3) && x->p[5] == '>' && (hi = hexval(x->p[3])) >= 0 &&
                           (lo = hexval(x->p[4])) >= 0;
            if (is_byte) {
                uint8_t b = (uint8_t)(hi * 16 + lo);
                rc = tok_buf_add(&run, &b, 1);
                continue;
            }
            if (run.len) { /* flush: valid UTF-8 as one token, else one U+FFFD a byte */
                if (!(o = toklist_add(out))) rc = err_set(ERR_STAGE, "out of memory");
                else if (utf8_valid_prefix((const uint8_t *)run.p, run.len) == run.len) rc = tok_buf_add(o, run.p, run.len);
                else
                    for (size_t k = 0; k < run.len && !rc; k++) rc = tok_buf_add(o, FFFD, 3);
                run.len = 0;
            }
            if (x && !rc) {
                if (!(o = toklist_add(out))) rc = err_set(ERR_STAGE, "out of memory");
                else rc = tok_buf_add(o, x->p, x->len);
            }
        }
        free(run.p);
        return rc;
    }
    case TOK_DEC_STRIP:
        for (size_t i = 0; i < in->n; i++) {
            const char *s = in->v[i].p;
            size_t len = in->v[i].len, a = 0, e = len;
            for (int k = 0; k < d->start && e - a >= d->alen && !memcmp(s + a, d->a, d->alen); k++) a += d->alen;
            for (int k = 0; k < d->stop && e - a >= d->alen && !memcmp(s + e - d->alen, d->a, d->alen); k++) e -= d->alen;
            if (!(o = toklist_add(out)) || tok_buf_add(o, s + a, e - a)) return err_set(ERR_STAGE, "out of memory");
        }
        return 0;
    case TOK_DEC_METASPACE:
        for (size_t i = 0; i < in->n; i++) {
            /* the first token loses every replacement character, not only a leading one, as
             * in `tokenizers` */
            bool drop = i == 0 && d->prepend != TOK_PREPEND_NEVER;
            if (!(o = toklist_add(out))) return err_set(ERR_STAGE, "out of memory");
            if (replace_all(o, in->v[i].p, in->v[i].len, d->a, d->alen, drop ? "" : " ", drop ? 0 : 1)) return ERR_STAGE;
        }
        return 0;
    }
    return 0;
}

int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n_ids || !t->tok[ids[i]])
            return err_set(ERR_DATA, "token id %d at position %zu is not in the vocabulary (%d ids)", ids[i], i, t->n_ids);
    tok_buf res = {0};
    int rc = 0;
    if (t->n_dec == 1 && t->dec[0].kind == TOK_DEC_BYTELEVEL && t->raw) {
        tok_buf bytes = {0};
        for (size_t i = 0; i < n && !rc; i++)
            if (!(skip_special && t->is_special[ids[i]])) rc = tok_buf_add(&bytes, t->raw[ids[i]], t->raw_len[ids[i]]);
        if (!rc) rc = add_lossy(&res, (const uint8_t *)bytes.p, bytes.len);
        free(bytes.p);
    } else {
        toklist l[2] = {{0}};
        int32_t *kept = malloc((n ? n : 1) * sizeof *kept);
        if (!kept) return err_set(ERR_STAGE, "out of memory");
        for (size_t i = 0; i < n && !rc; i++) {
            if (skip_special && t->is_special[ids[i]]) continue;
            tok_buf *b = toklist_add(&l[0]);
            if (!b || tok_buf_add(b, t->tok[ids[i]], t->tok_len[ids[i]])) rc = err_set(ERR_STAGE, "out of memory");
            kept[l[0].n - 1] = ids[i];
        }
        int cur = 0;
        for (size_t k = 0; k < t->n_dec && !rc; k++) {
            /* ids line up with tokens only before the first step that changes the list */
            rc = run_step(t, &t->dec[k], &l[cur], k == 0 ? kept : NULL, &l[cur ^ 1]);
            cur ^= 1;
        }
        for (size_t i = 0; i < l[cur].n && !rc; i++) {
            if (i && !t->n_dec) rc = tok_buf_add(&res, " ", 1); /* no decoder: tokens joined by spaces */
            if (!rc) rc = tok_buf_add(&res, l[cur].v[i].p, l[cur].v[i].len);
        }
        free(kept);
        toklist_free(&l[0]);
        toklist_free(&l[1]);
    }
    if (!rc && !res.p) rc = tok_buf_add(&res, "", 0);
    if (rc) {
        free(res.p);
        return rc;
    }
    *out = res.p;
    *len = res.len;
    return 0;
}
