/* tokenizer_nfc.c: Unicode NFC (canonical decomposition, canonical ordering, canonical
 * composition), the normalizer Qwen's tokenizer.json names.
 *
 * Almost all text is already NFC, so a quick check comes first: a string with no code point
 * from the "may change" table is copied as it is. Otherwise the whole string goes through
 * the full algorithm (UAX #15). Tables: model/tokenizer_nfc_tables.h (generated). */
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokenizer_nfc_tables.h"

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28,
       NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return true;
    }
    return false;
}

static int ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = N_OF(nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_ccc[mid][0]) hi = mid;
        else if (cp > nfc_ccc[mid][1]) lo = mid + 1;
        else return (int)nfc_ccc[mid][2];
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp, uint32_t *n) {
    size_t lo = 0, hi = N_OF(nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < nfc_decomp[mid][0]) hi = mid;
        else if (cp > nfc_decomp[mid][0]) lo = mid + 1;
        else {
            *n = nfc_decomp[mid][2];
            return nfc_decomp_pool + nfc_decomp[mid][1];
        }
    }
    return NULL;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = N_OF(nfc_comp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = nfc_comp[mid];
        if (a < e[0] || (a == e[0] && b < e[1])) hi = mid;
        else if (a > e[0] || b > e[1]) lo = mid + 1;
        else return e[2];
    }
    return 0;
}

bool tok_nfc_is_quick_yes(const char *s, size_t len) {
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < len;) {
        if (u[i] < 0xCC) { i += tok_utf8_len(u[i]); continue; } /* below U+0300: never changes */
        uint32_t cp;
        i += (size_t)tok_utf8_next(u + i, &cp);
        if (in_ranges(nfc_unsafe, N_OF(nfc_unsafe), cp)) return false;
    }
    return true;
}

int tok_nfc(const char *s, size_t len, tok_buf *out) {
    if (tok_nfc_is_quick_yes(s, len)) return tok_buf_add(out, s, len);
    /* decompose: at most 4 code points per input byte is far more than any decomposition needs
     * (the longest, 4 code points, comes from a 3-byte character) */
    uint32_t *cps = malloc((len * 2 + 4) * sizeof *cps);
    if (!cps) return err_set(ERR_STAGE, "out of memory");
    size_t n = 0;
    const uint8_t *u = (const uint8_t *)s;
    for (size_t i = 0; i < len;) {
        uint32_t cp, dn;
        i += (size_t)tok_utf8_next(u + i, &cp);
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t si = cp - SBASE;
            cps[n++] = LBASE + si / NCOUNT;
            cps[n++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) cps[n++] = TBASE + si % TCOUNT;
            continue;
        }
        const uint32_t *d = cp >= 0xC0 ? decomp_of(cp, &dn) : NULL;
        if (d) for (uint32_t k = 0; k < dn; k++) cps[n++] = d[k];
        else cps[n++] = cp;
    }
    /* canonical ordering: stable insertion sort of each run of non-starters by class */
    for (size_t i = 1; i < n; i++) {
        int c = ccc_of(cps[i]);
        if (!c) continue;
        size_t j = i;
        uint32_t x = cps[i];
        while (j > 0) {
            int pc = ccc_of(cps[j - 1]);
            if (pc <= c) break;
            cps[j] = cps[j - 1];
            j--;
        }
        cps[j] = x;
    }
    /* composition: each character joins the last starter unless blocked by a character of the
     * same or higher class between them */
    size_t w = 0, starter = (size_t)-1;
    int last_ccc = 0; /* class of the last character kept after the starter */
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = cps[i];
        int c = ccc_of(cp);
        if (starter != (size_t)-1 && (w == starter + 1 || (last_ccc != 0 && last_ccc < c))) {
            uint32_t comp = compose(cps[starter], cp);
            if (comp) {
                cps[starter] = comp;
                continue;
            }
        }
        if (c == 0) starter = w;
        last_ccc = c;
        cps[w++] = cp;
    }
    int rc = tok_buf_reserve(out, w * 4);
    if (!rc) {
        for (size_t i = 0; i < w; i++) out->len += (size_t)tok_utf8_put((uint8_t *)out->p + out->len, cps[i]);
        out->p[out->len] = 0;
    }
    free(cps);
    return rc;
}
