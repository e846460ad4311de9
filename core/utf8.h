/* utf8.h: strict UTF-8 validation (RFC 3629), shared by the dataset readers, the tokenizer
 * and generation: overlong forms, surrogates (U+D800..U+DFFF) and code points past U+10FFFF
 * are invalid, as in the tokenizers library and Python's decoder. */
#ifndef CORE_UTF8_H
#define CORE_UTF8_H

#include <stddef.h>

/* The length of the longest valid UTF-8 prefix of s: len when all of s is valid, else the
 * offset of the first byte of the first invalid (or truncated) sequence. */
size_t utf8_valid_prefix(const void *s, size_t len);

#endif
