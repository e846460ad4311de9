/* test.h: the smallest test harness that does the job.
 *
 *   TEST(name) { CHECK(cond); CHECK_EQ_INT(a, b); CHECK_NEAR(a, b, tol); }
 *   int main(void) { RUN(name); ...; return test_summary(); }
 *
 * Prints one line per failed check (file:line and the values) and closes with
 * "N passed, N failed" so CI's runner reads the result. QLORA_TEST_ONLY=a,b runs only the tests
 * named there (a sitting on a lent GPU that needs a few of them). */
#ifndef TESTS_TEST_H
#define TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failed_checks, test_passed, test_failed, test_cur_failed;

#define TEST(name) static void name(void)
#define CHECK(c) do { if (!(c)) { test_cur_failed = 1; test_failed_checks++; \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); } } while (0)
#define CHECK_EQ_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); if (_a != _b) { \
    test_cur_failed = 1; test_failed_checks++; \
    fprintf(stderr, "%s:%d: %s == %s failed: %lld vs %lld\n", __FILE__, __LINE__, #a, #b, _a, _b); } } while (0)
#define CHECK_EQ_STR(a, b) do { const char *_a = (a), *_b = (b); if (!_a || !_b || strcmp(_a, _b)) { \
    test_cur_failed = 1; test_failed_checks++; \
    fprintf(stderr, "%s:%d: %s == %s failed: '%s' vs '%s'\n", __FILE__, __LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)"); } } while (0)
#define CHECK_NEAR(a, b, tol) do { double _a = (double)(a), _b = (double)(b); if (!(fabs(_a - _b) <= (tol))) { \
    test_cur_failed = 1; test_failed_checks++; \
    fprintf(stderr, "%s:%d: |%s - %s| <= %g failed: %.9g vs %.9g\n", __FILE__, __LINE__, #a, #b, (double)(tol), _a, _b); } } while (0)
/* the test is in QLORA_TEST_ONLY's comma-separated list, or the list is unset or empty */
static inline int test_selected(const char *name) {
    const char *only = getenv("QLORA_TEST_ONLY");
    if (!only || !*only) return 1;
    size_t n = strlen(name);
    for (const char *p = only; *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        p += len + (e ? 1 : 0);
    }
    return 0;
}
#define RUN(name) do { if (!test_selected(#name)) break; test_cur_failed = 0; name(); if (test_cur_failed) { test_failed++; \
    fprintf(stderr, "FAIL %s\n", #name); } else { test_passed++; fprintf(stderr, "ok   %s\n", #name); } } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

#endif
