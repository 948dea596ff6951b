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
#include <ftw.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* A whole file as a NUL-terminated malloc'ed string (*n bytes when n != NULL); NULL when it
 * cannot be read. */
static inline char *test_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(len > 0 ? len : 0) + 1);
    size_t k = b && len > 0 ? fread(b, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!b) return NULL;
    b[k] = '\0';
    if (n) *n = k;
    return b;
}

static inline int test_count_lines(const char *s) {
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

/* The binary under test: $LLAMA_ADAPTER_BIN (set by tests/run_tests.sh) or build/llama-adapter.
 * NULL, after a failed CHECK, when it is not there. */
static inline const char *test_bin(void) {
    const char *b = getenv("LLAMA_ADAPTER_BIN");
    if (!b) b = "build/llama-adapter";
    if (access(b, X_OK) != 0) {
        CHECK(0, "binary %s not found: build it (make build/llama-adapter) or set LLAMA_ADAPTER_BIN", b);
        return NULL;
    }
    return b;
}

/* Runs `BIN ARGS` through the shell with stdout and stderr captured in files of dir; *out and
 * *err (when not NULL) get them as malloc'ed strings. Returns the exit status, -1 when the
 * process did not exit normally. */
static inline int test_run_bin(const char *dir, const char *args, char **out, char **err) {
    if (out) *out = NULL;
    if (err) *err = NULL;
    const char *bin = test_bin();
    if (!bin) return -1;
    size_t n = strlen(bin) + strlen(args) + 2 * strlen(dir) + 64;
    char *cmd = malloc(n), *of = malloc(strlen(dir) + 32), *ef = malloc(strlen(dir) + 32);
    sprintf(of, "%s/run_stdout.txt", dir);
    sprintf(ef, "%s/run_stderr.txt", dir);
    snprintf(cmd, n, "%s %s >%s 2>%s", bin, args, of, ef);
    int st = system(cmd);
    if (out) *out = test_read_file(of, NULL);
    if (err) *err = test_read_file(ef, NULL);
    free(cmd);
    free(of);
    free(ef);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A shell command from a format; returns its exit status (128 + signal when killed). */
static inline int test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int test_sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int test_rm_entry_(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

/* Removes a directory tree (the tests' temporary folders). */
static inline void test_rmtree(const char *dir) { nftw(dir, test_rm_entry_, 16, FTW_DEPTH | FTW_PHYS); }
#endif
