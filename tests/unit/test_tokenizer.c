/* test_tokenizer.c: the tokenizer on small hand-made tokenizer.json files (tests/tokenizer/):
 * byte-level and SentencePiece-style BPE, merges as strings and as pairs, added tokens with
 * lstrip/rstrip, byte fallback and fused unknowns, Metaspace, SentencePiece words cut where
 * no merge joins (ids as if merged whole), NFC, decoding, invalid UTF-8,
 * concurrent encoding, and a corpus of malformed files that must be refused with a message.
 * The ids were checked against @huggingface/tokenizers (tests/tokenizer/oracle.mjs). */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/tokfile.h"
#include "test.h"

static tokenizer *load(const char *dir) {
    tokenizer *t = NULL;
    int rc = tokenizer_load(&t, dir);
    if (rc) fprintf(stderr, "load %s: %s\n", dir, err_msg());
    return t;
}

/* encode and compare with the expected ids */
static int enc_is(const tokenizer *t, const char *text, bool special, const int32_t *want, size_t nwant) {
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(t, text, strlen(text), special, &ids, &n)) {
        fprintf(stderr, "encode '%s': %s\n", text, err_msg());
        return 0;
    }
    int ok = n == nwant && !memcmp(ids, want, n * sizeof *ids);
    if (!ok) {
        fprintf(stderr, "encode '%s': got", text);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
    return ok;
}
#define ENC(t, text, special, ...) do { const int32_t w_[] = {__VA_ARGS__}; \
    CHECK(enc_is(t, text, special, w_, sizeof w_ / sizeof w_[0])); } while (0)

static char *dec(const tokenizer *t, const int32_t *ids, size_t n, bool skip) {
    char *s;
    size_t len;
    if (tokenizer_decode(t, ids, n, skip, &s, &len)) return NULL;
    return s;
}

static int round_trips(const tokenizer *t, const char *text) {
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(t, text, strlen(text), false, &ids, &n)) return 0;
    char *s = dec(t, ids, n, false);
    int ok = s && !strcmp(s, text);
    if (!ok) fprintf(stderr, "round trip '%s' -> '%s'\n", text, s ? s : "(error)");
    free(s);
    free(ids);
    return ok;
}

TEST(byte_level_bpe) {
    tokenizer *t = load("tokenizer/tiny-bl");
    if (!t) { CHECK(0); return; }
    /* the template appends <|end|> (265); "he" (rank 1) wins over "th" (rank 7) */
    ENC(t, "the the is", true, 116, 257, 258, 262, 265);
    ENC(t, "the the is", false, 116, 257, 258, 262);
    /* equal ranks merge left to right */
    ENC(t, "aaaaa", false, 259, 259, 97);
    ENC(t, "It's 12345", false, 73, 116, 39, 115, 32, 49, 50, 51, 52, 53);
    /* special tokens in the text; <mask> strips the spaces around it */
    ENC(t, "a <mask> b<|end|>c", false, 97, 266, 98, 265, 99);
    ENC(t, "", true, 265);
    /* "xy" is a single_word token: only where no word character touches it */
    ENC(t, "xy xyz", false, 267, 32, 120, 121, 122);
    ENC(t, "axy xy_ (xy)", false, 97, 120, 121, 32, 120, 121, 95, 32, 40, 267, 41);
    CHECK_EQ_INT(tokenizer_vocab_size(t), 268);
    CHECK_EQ_INT(tokenizer_eos(t), 265);
    CHECK_EQ_INT(tokenizer_pad(t), 265);
    CHECK_EQ_INT(tokenizer_bos(t), -1);
    CHECK(!tokenizer_adds_bos(t));
    CHECK_EQ_STR(tokenizer_token(t, 258), "Ġthe");
    CHECK(tokenizer_token(t, 268) == NULL);
    CHECK_EQ_INT(tokenizer_token_id(t, "Ġthe"), 258);
    CHECK_EQ_INT(tokenizer_token_id(t, "<mask>"), 266);
    CHECK_EQ_INT(tokenizer_token_id(t, "nope"), -1);
    CHECK(tokenizer_is_special(t, 265));
    CHECK(!tokenizer_is_special(t, 266));
    CHECK(round_trips(t, "the the is"));
    CHECK(round_trips(t, "中文 👨‍👩‍👧 e\xcc\x81  \t\n x"));
    /* decode: specials kept or skipped; a lone UTF-8 lead byte becomes U+FFFD */
    int32_t ids[] = {116, 257, 265, 0xC3 - 0x21 + 0}; /* 'Ã' is byte 0xC3's own character */
    ids[3] = tokenizer_token_id(t, "Ã");
    char *s = dec(t, ids, 4, false);
    CHECK_EQ_STR(s, "the<|end|>\xef\xbf\xbd");
    free(s);
    s = dec(t, ids, 3, true);
    CHECK_EQ_STR(s, "the");
    free(s);
    int32_t badid = 9999;
    CHECK(dec(t, &badid, 1, false) == NULL);
    CHECK_EQ_INT(err_code(), ERR_DATA);
    tokenizer_free(&t);
    CHECK(t == NULL);
}

TEST(string_and_pair_merges_agree) {
    tokenizer *a = load("tokenizer/tiny-bl"), *b = load("tokenizer/tiny-bl-strmerges");
    if (!a || !b) { CHECK(0); tokenizer_free(&a); tokenizer_free(&b); return; }
    const char *texts[] = {"the the is", "this is the thing", "aaaa aaa", "  the  "};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *x, *y;
        size_t nx, ny;
        CHECK_EQ_INT(tokenizer_encode(a, texts[i], strlen(texts[i]), true, &x, &nx), 0);
        CHECK_EQ_INT(tokenizer_encode(b, texts[i], strlen(texts[i]), true, &y, &ny), 0);
        CHECK(nx == ny && !memcmp(x, y, nx * sizeof *x));
        free(x);
        free(y);
    }
    tokenizer_free(&a);
    tokenizer_free(&b);
}

TEST(sentencepiece_bpe) {
    tokenizer *t = load("tokenizer/tiny-sp");
    if (!t) { CHECK(0); return; }
    CHECK_EQ_INT(tokenizer_bos(t), 1);
    CHECK(tokenizer_adds_bos(t));
    ENC(t, "ab abc b", true, 1, 265, 268, 266);
    /* é has no token: its two bytes fall back to <0xC3> <0xA9> */
    ENC(t, "abé c", true, 1, 265, 198, 172, 259, 262);
    ENC(t, "  a", false, 259, 259, 263);
    /* legacy layout: the text after an added token gets its own ▁ */
    ENC(t, "a<s>b", false, 263, 1, 266);
    int32_t ids[] = {1, 265, 198, 172, 259, 262};
    char *s = dec(t, ids, 6, true);
    CHECK_EQ_STR(s, "abé c");
    free(s);
    s = dec(t, ids, 6, false);
    CHECK_EQ_STR(s, "<s> abé c");
    free(s);
    int32_t lone[] = {265, 198}; /* half a character */
    s = dec(t, lone, 2, false);
    CHECK_EQ_STR(s, "ab\xef\xbf\xbd");
    free(s);
    CHECK(round_trips(t, "ab abc b"));
    CHECK(round_trips(t, "  a  b  "));
    tokenizer_free(&t);

    t = load("tokenizer/tiny-sp-unk"); /* no byte fallback: unknown characters fuse into one <unk> */
    if (!t) { CHECK(0); return; }
    ENC(t, "abé c", false, 265, 0, 259, 262);
    ENC(t, "aéé€b", false, 263, 0, 261);
    tokenizer_free(&t);

    t = load("tokenizer/tiny-sp-meta"); /* Metaspace, prepend always, split */
    if (!t) { CHECK(0); return; }
    ENC(t, "  a", false, 259, 263);
    ENC(t, "ab abc", false, 265, 268);
    int32_t m[] = {259, 263};
    s = dec(t, m, 2, false);
    CHECK_EQ_STR(s, " a");
    free(s);
    tokenizer_free(&t);
}

static int nfc_is(const char *in, const char *want) {
    tok_buf b = {0};
    int ok = !tok_nfc(in, strlen(in), &b) && b.p && !strcmp(b.p, want);
    if (!ok) fprintf(stderr, "nfc '%s' -> '%s', want '%s'\n", in, b.p ? b.p : "(null)", want);
    free(b.p);
    return ok;
}

/* Encode text as loaded (words cut where no merge joins) and again with cutting switched
 * off, every word merged whole as `tokenizers` does: the ids must agree. */
static int cut_agrees(tokenizer *t, const char *text) {
    int32_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    uint32_t cap = t->join_cap;
    int ok = !tokenizer_encode(t, text, strlen(text), false, &a, &na);
    t->join_cap = 0;
    ok = ok && !tokenizer_encode(t, text, strlen(text), false, &b, &nb);
    t->join_cap = cap;
    ok = ok && na == nb && !memcmp(a, b, na * sizeof *a);
    if (!ok) fprintf(stderr, "cut and whole encodings differ on '%s'\n", text);
    free(a);
    free(b);
    return ok;
}

TEST(sentencepiece_cuts_keep_ids) {
    /* tiny-sp may be cut before ▁; tiny-sp-join adds the merge (b, ▁a), which joins across a
     * space, so there the marker rule must stay off (ids checked with oracle.mjs) */
    tokenizer *t = load("tokenizer/tiny-sp");
    if (!t) { CHECK(0); return; }
    CHECK_EQ_INT((int)t->word_cut_len, 3);
    CHECK(t->join_cap > 0);
    tokenizer_free(&t);
    t = load("tokenizer/tiny-sp-join");
    if (!t) { CHECK(0); return; }
    CHECK_EQ_INT((int)t->word_cut_len, 0);
    ENC(t, "b a", false, 259, 269);
    ENC(t, "xb ab a", false, 259, 123, 269, 269);
    tokenizer_free(&t);
    /* random texts of known, byte-fallback and unknown characters, spaces and the marker
     * itself; every other one without spaces, so that words outgrow the long-word limit */
    const char *dirs[] = {"tokenizer/tiny-sp", "tokenizer/tiny-sp-join", "tokenizer/tiny-sp-unk", "tokenizer/tiny-sp-meta"};
    const char *alpha[] = {"a", "b", "c", "\xc3\xa9", "x", "\xe2\x82\xac", " ", "  ", "\xe2\x96\x81"};
    uint32_t seed = 12345;
    char text[400];
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        t = load(dirs[d]);
        if (!t) { CHECK(0); continue; }
        for (int k = 0; k < 400; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t len = 0, target = 1 + (seed >> 8) % (sizeof text - 8), n_alpha = k % 2 ? 6 : 9;
            while (len < target) {
                seed = seed * 1103515245u + 12345u;
                const char *c = alpha[(seed >> 8) % n_alpha];
                memcpy(text + len, c, strlen(c));
                len += strlen(c);
            }
            text[len] = 0;
            CHECK(cut_agrees(t, text));
        }
        tokenizer_free(&t);
    }
}

TEST(nfc) {
    CHECK(nfc_is("plain ascii", "plain ascii"));
    CHECK(nfc_is("e\xcc\x81", "\xc3\xa9"));                          /* e + acute -> é */
    CHECK(nfc_is("\xe2\x84\xab", "\xc3\x85"));                       /* Angstrom sign -> Å */
    CHECK(nfc_is("a\xcc\x87\xcc\xa3", "\xe1\xba\xa1\xcc\x87"));      /* dot above, dot below: reordered, ạ + dot above */
    CHECK(nfc_is("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8", "\xea\xb0\x81")); /* jamo -> 각 */
    CHECK(nfc_is("\xea\xb0\x80\xe1\x86\xa8", "\xea\xb0\x81"));       /* 가 + jamo T -> 각 */
    CHECK(nfc_is("\xcd\x84", "\xcc\x88\xcc\x81"));                   /* U+0344 decomposes and stays */
    CHECK(nfc_is("\xe0\xa5\x98", "\xe0\xa4\x95\xe0\xa4\xbc"));      /* U+0958 is a composition exclusion */
    CHECK(nfc_is("x\xcc\x81\xcc\x82\xcc\x83", "x\xcc\x81\xcc\x82\xcc\x83"));
    CHECK(nfc_is("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xc3\xa9"));
}

TEST(invalid_utf8_names_the_offset) {
    tokenizer *t = load("tokenizer/tiny-bl");
    if (!t) { CHECK(0); return; }
    struct { const char *s; size_t len, off; } cases[] = {
        {"ab\xc3", 3, 2},                  /* truncated */
        {"\xed\xa0\x80", 3, 0},            /* surrogate */
        {"x\xc0\xaf", 3, 1},               /* overlong */
        {"\xf4\x90\x80\x80", 4, 0},        /* past U+10FFFF */
        {"ok\x80", 3, 2},                  /* stray continuation */
        {"abcdefgh12345678\xff", 17, 16},  /* after the 8-byte fast path */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int32_t *ids;
        size_t n;
        CHECK_EQ_INT(tokenizer_encode(t, cases[i].s, cases[i].len, true, &ids, &n), ERR_DATA);
        char want[64];
        snprintf(want, sizeof want, "byte offset %zu ", cases[i].off);
        CHECK(strstr(err_msg(), want) != NULL);
        CHECK(ids == NULL);
    }
    /* NUL bytes are text like any other */
    int32_t *ids;
    size_t n;
    CHECK_EQ_INT(tokenizer_encode(t, "a\0b", 3, false, &ids, &n), 0);
    CHECK_EQ_INT(n, 3);
    free(ids);
    tokenizer_free(&t);
}

typedef struct { const tokenizer *t; const char **texts; size_t n; int32_t **want; size_t *nwant; int bad; } thr_arg;

static void *thr_main(void *p) {
    thr_arg *a = p;
    for (int rep = 0; rep < 200; rep++)
        for (size_t i = 0; i < a->n; i++) {
            int32_t *ids;
            size_t n;
            if (tokenizer_encode(a->t, a->texts[i], strlen(a->texts[i]), true, &ids, &n) || n != a->nwant[i] ||
                memcmp(ids, a->want[i], n * sizeof *ids))
                a->bad++;
            free(ids);
        }
    return NULL;
}

TEST(concurrent_encodes_agree) {
    tokenizer *t = load("tokenizer/tiny-bl");
    if (!t) { CHECK(0); return; }
    /* many distinct words, so the shared cache fills, evicts and is read while written */
    enum { NT = 64 };
    char buf[NT][96];
    const char *texts[NT];
    int32_t *want[NT];
    size_t nwant[NT];
    for (int i = 0; i < NT; i++) {
        snprintf(buf[i], sizeof buf[i], "the%d this is%x aaa%d theis <mask> w%dw the", i * 7919, i * 31, i, i * i);
        texts[i] = buf[i];
        CHECK_EQ_INT(tokenizer_encode(t, texts[i], strlen(texts[i]), true, &want[i], &nwant[i]), 0);
    }
    pthread_t th[4];
    thr_arg args[4];
    for (int k = 0; k < 4; k++) {
        args[k] = (thr_arg){t, texts, NT, want, nwant, 0};
        pthread_create(&th[k], NULL, thr_main, &args[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK_EQ_INT(args[k].bad, 0);
    }
    for (int i = 0; i < NT; i++) free(want[i]);
    tokenizer_free(&t);
}

TEST(long_inputs) {
    tokenizer *t = load("tokenizer/tiny-bl");
    if (!t) { CHECK(0); return; }
    /* a long run of spaces (regex backtracking) and a long word (past the word cache) */
    size_t n = 200000;
    char *s = malloc(n + 2);
    memset(s, ' ', n);
    s[n] = 'x';
    s[n + 1] = 0;
    CHECK(round_trips(t, s));
    memset(s, 'a', n);
    CHECK(round_trips(t, s));
    free(s);
    tokenizer_free(&t);
}

TEST(generated_byte_tokenizer_loads) {
    /* the byte-level tokenizer init-model writes (model/tokenizer_byte.c): id = byte value */
    char dir[] = "/tmp/qlora-tokbyte-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    CHECK_EQ_INT(tokenizer_write_byte(dir), 0);
    tokenizer *t = load(dir);
    if (!t) { CHECK(0); return; }
    CHECK_EQ_INT(tokenizer_vocab_size(t), 259);
    CHECK_EQ_INT(tokenizer_bos(t), 256);
    CHECK_EQ_INT(tokenizer_eos(t), 257);
    CHECK_EQ_INT(tokenizer_pad(t), 258);
    CHECK(tokenizer_adds_bos(t));
    ENC(t, "h\xc3\xa9 \n", true, 256, 'h', 0xC3, 0xA9, ' ', '\n');
    ENC(t, "a</s>", false, 'a', 257);
    CHECK(round_trips(t, "h\xc3\xa9llo, \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x91\x8d\t"));
    tokenizer_free(&t);
    const char *files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 3; i++) {
        char *p = fs_join(dir, files[i]);
        unlink(p);
        free(p);
    }
    rmdir(dir);
}

TEST(missing_files) {
    tokenizer *t = NULL;
    CHECK_EQ_INT(tokenizer_load(&t, "tokenizer/no-such-dir"), ERR_DATA);
    CHECK(strstr(err_msg(), "tokenizer.json") != NULL);
    CHECK(t == NULL);
}

TEST(malformed_files_are_refused) {
    static const struct { const char *file, *msg; } cases[] = {
        {"truncated", "invalid JSON"},
        {"not_json", "invalid JSON"},
        {"top_level_array", "JSON object"},
        {"no_model", "model: missing"},
        {"model_wordpiece", "unsupported model type 'WordPiece'"},
        {"missing_merges", "model.merges: missing"},
        {"missing_vocab", "model.vocab: missing"},
        {"merges_not_array", "model.merges: missing or not an array"},
        {"merge_unknown_token", "token 'zz' that is not in the vocabulary"},
        {"merge_result_unknown", "token 'ba' that is not in the vocabulary"},
        {"merge_wrong_type", "a merge must be"},
        {"merge_no_space", "two tokens separated by a space"},
        {"merge_triple", "a merge must be"},
        {"vocab_id_string", "token 'a' has an id"},
        {"vocab_id_negative", "token 'a' has an id"},
        {"vocab_id_huge", "token 'a' has an id"},
        {"vocab_empty", "vocabulary is empty"},
        {"added_not_array", "added_tokens: must be an array"},
        {"added_no_content", "added_tokens[3]"},
        {"added_empty_content", "added_tokens[3]"},
        {"normalizer_nfkc", "unsupported normalizer 'NFKC'"},
        {"normalizer_no_type", "normalizer: expected an object with a 'type'"},
        {"pre_whitespace", "unsupported pre_tokenizer 'Whitespace'"},
        {"pre_bad_regex", "cannot compile regex '(unclosed'"},
        {"pre_bad_behavior", "unsupported Split behavior"},
        {"metaspace_bad_scheme", "prepend_scheme"},
        {"decoder_wordpiece", "unsupported decoder 'WordPiece'"},
        {"post_roberta", "unsupported post_processor 'RobertaProcessing'"},
        {"template_unknown_special", "special token '<s>' has no 'ids'"},
        {"template_id_past_vocab", "past the vocabulary"},
        {"byte_fallback_string", "'byte_fallback' must be true or false"},
        {"dropout", "dropout"},
        {"unk_unknown", "model.unk_token"},
    };
    char dir[] = "/tmp/qlora-tok-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *dst = fs_join(dir, "tokenizer.json");
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char src[256];
        snprintf(src, sizeof src, "tokenizer/bad/%s.json", cases[i].file);
        char *data;
        size_t len;
        if (fs_read_all(src, &data, &len)) { CHECK(0); fprintf(stderr, "cannot read %s\n", src); continue; }
        CHECK_EQ_INT(fs_write_atomic(dst, data, len), 0);
        free(data);
        tokenizer *t = NULL;
        int rc = tokenizer_load(&t, dir);
        if (rc != ERR_DATA || !strstr(err_msg(), cases[i].msg) || !strstr(err_msg(), "tokenizer.json")) {
            fprintf(stderr, "%s: rc %d, message '%s', want '%s'\n", cases[i].file, rc, rc ? err_msg() : "", cases[i].msg);
            CHECK(0);
        }
        CHECK(t == NULL);
        tokenizer_free(&t);
    }
    unlink(dst);
    free(dst);
    rmdir(dir);
}

/* tokfile_model_type: the top-level model's type by scanning, whatever comes before it (nested
 * "model" keys, braces, quotes and escapes inside strings), and "" when there is none; the
 * fixtures' real tokenizer.json files (tokenizer/) give what their parse gives */
TEST(model_type_scan) {
    static const struct {
        const char *json, *want;
    } cases[] = {
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}", "BPE"},
        {"{\"version\":\"1.0\",\"model\":{\"type\":\"Unigram\"}}", "Unigram"},
        {"{\"decoder\": {\"model\": {\"type\": \"WordPiece\"}}, \"model\": {\"vocab\": {\"}\": 1, \"type\": 2}, "
         "\"type\": \"BPE\"}}", "BPE"},
        {"{\"added_tokens\": [{\"content\": \"\\\"model\\\": {\\\"type\\\": \\\"X\\\"\"}], \"model\": {\n  \"type\" :\n "
         "\"WordPiece\"}}", "WordPiece"},
        {"{\"model\": {\"merges\": [], \"vocab\": {}}}", ""},
        {"{\"model\": null, \"type\": \"BPE\"}", ""},
        {"{\"truncation\": null}", ""},
    };
    char dir[] = "/tmp/qlora-tokty-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *p = fs_join(dir, "tokenizer.json"), got[32];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        CHECK_EQ_INT(fs_write_atomic(p, cases[i].json, strlen(cases[i].json)), 0);
        CHECK_EQ_INT(tokfile_model_type(p, got, sizeof got), 0);
        if (strcmp(got, cases[i].want)) fprintf(stderr, "case %zu: '%s', want '%s'\n", i, got, cases[i].want);
        CHECK_EQ_STR(got, cases[i].want);
    }
    unlink(p);
    free(p);
    rmdir(dir);
    CHECK(tokfile_model_type("/nonexistent/tokenizer.json", got, sizeof got) != 0);
    err_clear();
    const char *real[] = {"tokenizer/tiny-bl", "tokenizer/tiny-sp", "tokenizer/tiny-sp-meta"};
    for (size_t i = 0; i < sizeof real / sizeof *real; i++) {
        char *f = fs_join(real[i], "tokenizer.json");
        CHECK_EQ_INT(tokfile_model_type(f, got, sizeof got), 0);
        CHECK_EQ_STR(got, "BPE");
        free(f);
    }
}

int main(void) {
    RUN(byte_level_bpe);
    RUN(string_and_pair_merges_agree);
    RUN(sentencepiece_bpe);
    RUN(sentencepiece_cuts_keep_ids);
    RUN(nfc);
    RUN(invalid_utf8_names_the_offset);
    RUN(concurrent_encodes_agree);
    RUN(long_inputs);
    RUN(generated_byte_tokenizer_loads);
    RUN(missing_files);
    RUN(malformed_files_are_refused);
    RUN(model_type_scan);
    return test_summary();
}
