/* emu_check.h: what the tests/emu programs share beside the emulation: a reproducible uniform
 * random source, the count of checks and failures, and the summary line and exit code. */
#ifndef TESTS_EMU_EMU_CHECK_H
#define TESTS_EMU_EMU_CHECK_H

#include <cstdarg>
#include <cstdint>
#include <cstdio>

inline uint64_t emu_rng = 0x9e3779b97f4a7c15ull;
/* uniform in [-1, 1): the same values on every machine */
inline float emu_rnd(void) {
    emu_rng = emu_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((emu_rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

inline int emu_checks, emu_failed;

/* one check: ok, or a failure with what (printf-style) said */
__attribute__((format(printf, 2, 3))) inline void emu_expect(bool ok, const char *fmt, ...) {
    emu_checks++;
    if (ok) return;
    emu_failed++;
    va_list ap;
    va_start(ap, fmt);
    fputs("  FAIL ", stdout);
    vprintf(fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
}

/* the summary line; the program's exit code */
inline int emu_summary(void) {
    printf("%d checks, %d failed\n", emu_checks, emu_failed);
    return emu_failed ? 1 : 0;
}

#endif
