/* The BLAS the build loads (issue 15): the OpenMP build of OpenBLAS, whatever Debian's
 * libopenblas.so.0 alternative points at (with libopenblas-pthread-dev installed too, it points
 * at the pthreads build, whose threads spin with sched_yield against ours). Checked in this
 * test binary (openblas_get_parallel() and /proc/self/maps; it is linked like the tool) and in
 * the built llama-adapter (ldd, and its --version line).
 * Deliberately not here: speed (README: the wait-policy measurements). */
#include <string.h>

#include "tests/test.h"

extern int openblas_get_parallel(void);
extern char *openblas_get_config(void);

/* A Debian multiarch directory of the OpenMP build, or NULL on other layouts. */
static const char *openmp_dir(void) {
    static char buf[256];
    FILE *p = popen("ls -d /usr/lib/*/openblas-openmp /usr/lib64/openblas-openmp 2>/dev/null | head -n 1", "r");
    if (!p) return NULL;
    buf[0] = 0;
    if (!fgets(buf, sizeof buf, p)) buf[0] = 0;
    pclose(p);
    buf[strcspn(buf, "\n")] = 0;
    return buf[0] ? buf : NULL;
}

static int both_variants_installed(void) {
    return test_sh("ls -d /usr/lib/*/openblas-pthread/libopenblas.so.0 > /dev/null 2>&1") == 0 && openmp_dir() != NULL;
}

static void test_this_process_runs_the_openmp_openblas(void) {
    printf("  openblas: %s; parallel %d; both Debian variants installed: %s\n", openblas_get_config(),
           openblas_get_parallel(), both_variants_installed() ? "yes" : "no");
    CHECK(openblas_get_parallel() == 2, "openblas_get_parallel() = %d, expected 2 (OpenMP)", openblas_get_parallel());
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4600], path[4096] = "";
    while (f && fgets(line, sizeof line, f)) {
        char *p = strchr(line, '/');
        if (p && strstr(p, "libopenblas")) {
            p[strcspn(p, "\n")] = 0;
            snprintf(path, sizeof path, "%s", p);
            break;
        }
    }
    if (f) fclose(f);
    printf("  mapped: %s\n", path);
    CHECK(path[0], "no libopenblas in /proc/self/maps");
    const char *dir = openmp_dir();
    CHECK(!dir || strstr(path, "openblas-openmp"), "mapped %s, not the OpenMP build in %s", path, dir ? dir : "");
}

static void test_the_binary_loads_the_openmp_openblas(void) {
    const char *bin = test_bin();
    if (!bin) return;
    char cmd[600], out[2048] = "";
    snprintf(cmd, sizeof cmd, "ldd %s 2>/dev/null | grep libopenblas", bin);
    FILE *p = popen(cmd, "r");
    if (p) {
        if (!fgets(out, sizeof out, p)) out[0] = 0;
        pclose(p);
    }
    printf("  ldd: %s", out[0] ? out : "(no libopenblas line)\n");
    const char *dir = openmp_dir();
    CHECK(out[0] && (!dir || strstr(out, "openblas-openmp/")), "ldd resolves libopenblas to '%s'", out);
    char *vout = NULL;
    int st = test_run_bin("/tmp", "--version", &vout, NULL);
    const char *blas = vout ? strstr(vout, "blas: ") : NULL;
    CHECK(st == 0 && blas && strstr(blas, "(OpenMP threading)"), "--version: %s", vout ? vout : "");
    if (blas) printf("  %.*s\n", (int)strcspn(blas, "\n"), blas);
    free(vout);
}

int main(void) {
    RUN(test_this_process_runs_the_openmp_openblas);
    RUN(test_the_binary_loads_the_openmp_openblas);
    return TEST_MAIN_END("test_robust_blas");
}
