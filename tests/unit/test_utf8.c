/* test_utf8.c: strict UTF-8 validation (core/utf8.h): what is refused, and where. */
#include "core/utf8.h"
#include "test.h"

TEST(valid_text) {
    const char *s = "plain ascii, caf\xC3\xA9, \xE4\xBD\xA0\xE5\xA5\xBD, \xF0\x9F\x98\x80, U+10FFFF \xF4\x8F\xBF\xBF";
    CHECK_EQ_INT(utf8_valid_prefix(s, strlen(s)), strlen(s));
    CHECK_EQ_INT(utf8_valid_prefix("", 0), 0);
}

TEST(invalid_sequences_name_their_offset) {
    struct { const char *s; size_t len, want; } cases[] = {
        {"ab\xC0\x80", 4, 2},          /* overlong NUL */
        {"ab\xE0\x80\x80", 5, 2},      /* overlong 3-byte */
        {"ab\xF0\x80\x80\x80", 6, 2},  /* overlong 4-byte */
        {"ab\xED\xA0\x80", 5, 2},      /* a surrogate */
        {"ab\xF4\x90\x80\x80", 6, 2},  /* past U+10FFFF */
        {"ab\xF5\x80\x80\x80", 6, 2},  /* no such lead byte */
        {"abcdefghij\x80", 11, 10},    /* a lone continuation after the ASCII fast path */
        {"ab\xC3", 3, 2},              /* truncated at the end */
        {"ab\xE4\xBD" "x", 5, 2},      /* a continuation missing */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) CHECK_EQ_INT(utf8_valid_prefix(cases[i].s, cases[i].len), cases[i].want);
}

int main(void) {
    RUN(valid_text);
    RUN(invalid_sequences_name_their_offset);
    return test_summary();
}
