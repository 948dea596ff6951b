/* Minimal test harness shared by every tests/test_*.c.
 *
 * A test is a function `static void test_name(void)`; main() calls RUN(test_name) for each.
 * CHECK(cond, fmt, ...) records a failure (with file:line and the message) and goes on;
 * SKIP(fmt, ...) marks the running test skipped with a printed reason and returns.
 * TEST_MAIN_END() prints "# <binary>: P passed, F failed, S skipped" and returns the exit status;
 * tests/run_tests.sh sums those lines into the final "N passed, N failed".
 * Everything here is static: each test binary includes it once. */
#ifndef TEST_H
#define TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_passed, t_failed, t_skipped, t_cur_failed, t_cur_skipped;
static const char *t_name;

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            t_cur_failed++;                                                          \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                 \
            printf(__VA_ARGS__);                                                     \
            printf("\n");                                                            \
        }                                                                            \
    } while (0)

/* |a-b| <= atol + rtol*|b|, with the values printed on failure. */
#define CHECK_CLOSE(a, b, atol, rtol, what)                                          \
    do {                                                                             \
        double ca_ = (double)(a), cb_ = (double)(b);                                 \
        CHECK(fabs(ca_ - cb_) <= (atol) + (rtol) * fabs(cb_) && ca_ == ca_,          \
              "%s: got %.9g want %.9g (diff %.3g)", what, ca_, cb_, fabs(ca_ - cb_)); \
    } while (0)

#define SKIP(...)                                                                    \
    do {                                                                             \
        t_cur_skipped = 1;                                                           \
        printf("  skip reason: ");                                                   \
        printf(__VA_ARGS__);                                                         \
        printf("\n");                                                                \
        return;                                                                      \
    } while (0)

#define RUN(fn)                                                                      \
    do {                                                                             \
        t_name = #fn;                                                                \
        t_cur_failed = 0;                                                            \
        t_cur_skipped = 0;                                                           \
        fflush(stdout);                                                              \
        fn();                                                                        \
        if (t_cur_failed) { t_failed++; printf("FAIL %s\n", t_name); }               \
        else if (t_cur_skipped) { t_skipped++; printf("SKIP %s\n", t_name); }        \
        else { t_passed++; printf("ok   %s\n", t_name); }                            \
        fflush(stdout);                                                              \
    } while (0)

#define TEST_MAIN_END(binary)                                                        \
    (printf("# %s: %d passed, %d failed, %d skipped\n", binary, t_passed, t_failed,  \
            t_skipped),                                                              \
     t_failed ? 1 : 0)

/* Path of ../shared relative to the repository root (tests run from the root), or NULL when
 * the file is absent: tests that need it SKIP with the printed reason. */
static inline const char *test_shared(const char *rel, char *buf, size_t n) {
    const char *root = getenv("LLAMA_ADAPTER_SHARED");
    snprintf(buf, n, "%s/%s", root ? root : "../shared", rel);
    FILE *f = fopen(buf, "rb");
    if (!f) return NULL;
    fclose(f);
    return buf;
}
#endif
