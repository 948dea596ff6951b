/* kn_cpu() feature detection and the AVX512-BF16 GEMM kn_gemm_bf16 against its naive reference.
 *
 * The reference (kn_gemm_bf16_ref) rounds the operands to bf16 exactly as the kernel does and sums
 * in double, so the only difference left is the kernel's f32 accumulation order: every entry must
 * satisfy |got - ref| <= 1e-5 * (|alpha| sum_k |a_k b_k| + |beta c0|) + 1e-6. The generic tests of
 * tests/gemm_fixture.h (every transpose case x every B dtype on odd shapes, several cache blocks,
 * alpha/beta, determinism, row independence, a 7B-shaped product, small integers) run with that
 * bound; here: kn_cpu() against /proc/cpuinfo, and that the bound is tight enough to reject a
 * slightly wrong reference. On CPUs without AVX512-BF16 the GEMM tests SKIP with the reason; the
 * kn_cpu() test always runs.
 * Not tested here: speed (bench/gemm_peak.c) and AMX (detected, never used). */
#include "tests/gemm_fixture.h"

#define TOL_REL 1e-5
#define TOL_ABS 1e-6

static double bf16_bound(int K, double scale) { return TOL_REL * scale + TOL_ABS; }

static const gemm_kernel bf16_kernel = {"kn_gemm_bf16", "AVX512-BF16", kn_bf16_gemm_available, kn_gemm_bf16_workspace,
                                        kn_gemm_bf16, kn_gemm_bf16_ref, bf16_bound};

/* ---- kn_cpu ---------------------------------------------------------------------------------- */
static void test_cpu_features(void) {
    const kn_cpu_info *c = kn_cpu();
    CHECK(c != NULL && c == kn_cpu(), "kn_cpu() is one static record");
    int fl[] = {c->avx2, c->fma, c->f16c, c->avx512f, c->avx512bw, c->avx512bf16, c->amx_tile, c->amx_bf16};
    for (int i = 0; i < 8; i++) CHECK(fl[i] == 0 || fl[i] == 1, "flag %d is %d", i, fl[i]);
    CHECK(c->brand[0] != '\0' && c->brand[0] != ' ' && strlen(c->brand) < sizeof c->brand, "brand '%s'", c->brand);
    CHECK(!c->avx512bf16 || (c->avx512f && c->avx512bw), "avx512bf16 without avx512f/bw");
    CHECK(!c->avx512bw || c->avx512f, "avx512bw without avx512f");
    CHECK(!c->amx_bf16 || c->amx_tile, "amx_bf16 without amx_tile");
    CHECK(kn_bf16_gemm_available() == c->avx512bf16, "availability follows avx512bf16");
    printf("  cpu '%s': avx2 %d fma %d f16c %d avx512f %d avx512bw %d avx512bf16 %d amx_tile %d amx_bf16 %d\n",
           c->brand, c->avx2, c->fma, c->f16c, c->avx512f, c->avx512bw, c->avx512bf16, c->amx_tile, c->amx_bf16);
    /* the first "flags" line as " f1 f2 ... fn " (the kernel lists what the CPU has and the OS
     * enabled); read line by line: /proc files have no size for test_read_file */
    FILE *f = fopen("/proc/cpuinfo", "r");
    char *info = NULL, *colon = NULL;
    size_t cap = 0;
    while (f && getline(&info, &cap, f) > 0)
        if (!strncmp(info, "flags", 5) && (colon = strchr(info, ':'))) break;
    if (f) fclose(f);
    if (!colon) {
        printf("  /proc/cpuinfo absent or without flags: no cross-check\n");
        free(info);
        return;
    }
    size_t n = strcspn(colon + 1, "\n"); /* the flags after the colon, which start with a space */
    char *line = malloc(n + 2);
    memcpy(line, colon + 1, n);
    line[n] = ' ';
    line[n + 1] = '\0';
    struct { const char *name; int have; } m[] = {{" avx512_bf16 ", c->avx512bf16}, {" avx512f ", c->avx512f},
                                                  {" avx512bw ", c->avx512bw},       {" avx2 ", c->avx2},
                                                  {" fma ", c->fma},                 {" f16c ", c->f16c},
                                                  {" amx_bf16 ", c->amx_bf16},       {" amx_tile ", c->amx_tile}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        int listed = strstr(line, m[i].name) != NULL;
        CHECK(listed == m[i].have, "%s: /proc/cpuinfo lists it %d, kn_cpu says %d", m[i].name, listed, m[i].have);
    }
    free(line);
    free(info);
}

/* The bound must reject near misses: references with a one-ulp change of a single A element,
 * with A left in f32 (no bf16 rounding) and with B rounded down instead of to nearest. */
static void test_tolerance_is_tight(void) {
    NEED_KERNEL();
    ag_rng r;
    ag_rng_seed(&r, 16);
    prob p;
    prob_make(&p, &r, 0, 1, 17, 33, 130, AG_F32, 0, 0);
    prob_run(&p, 0);
    double w, we, wb;
    int bad = prob_compare(&p, 1, NULL, NULL, &w, &we, &wb);
    CHECK(bad == 0, "right reference: %d out of bound", bad);
    printf("  right reference:         worst err %.3g vs bound %.3g (ratio %.3f), %d of %d out\n", we, wb, w, bad,
           p.M * p.N);
    size_t na = (size_t)p.M * p.lda, nb = (size_t)p.N * p.ldb;
    /* one element of A moved by one bf16 ulp */
    float *A1 = malloc(na * sizeof(float));
    memcpy(A1, p.A, na * sizeof(float));
    A1[5] = ag_bf16_to_f32((uint16_t)(ag_f32_to_bf16(A1[5]) + 1));
    bad = prob_compare(&p, 1, A1, NULL, &w, &we, &wb);
    CHECK(bad > 0, "one-ulp change of A[0][5] not detected");
    printf("  A[0][5] one ulp off:     worst err %.3g vs bound %.3g (ratio %.1f), %d of %d out\n", we, wb, w, bad,
           p.M * p.N);
    /* A rounded to the other bf16 neighbour: each element mirrored around its f32 value, so the
     * reference's rounding lands one bf16 ulp away whenever the value is not exact in bf16 */
    for (size_t i = 0; i < na; i++) {
        float f = p.A[i], q = ag_bf16_to_f32(ag_f32_to_bf16(f));
        A1[i] = f + (f - q); /* mirror around the f32 value: rounds elsewhere when not exact */
    }
    bad = prob_compare(&p, 1, A1, NULL, &w, &we, &wb);
    CHECK(bad > 0, "A rounded differently not detected");
    printf("  A rounded differently:   worst err %.3g vs bound %.3g (ratio %.1f), %d of %d out\n", we, wb, w, bad,
           p.M * p.N);
    /* B truncated to bf16 instead of rounded to nearest */
    float *B1 = malloc(nb * sizeof(float));
    for (size_t i = 0; i < nb; i++) {
        union { float f; uint32_t u; } v = {((const float *)p.B)[i]};
        v.u &= 0xffff0000u;
        B1[i] = v.f;
    }
    bad = prob_compare(&p, 1, NULL, B1, &w, &we, &wb);
    CHECK(bad > 0, "B truncated not detected");
    printf("  B truncated to bf16:     worst err %.3g vs bound %.3g (ratio %.1f), %d of %d out\n", we, wb, w, bad,
           p.M * p.N);
    free(A1);
    free(B1);
    prob_free(&p);
}

int main(void) {
    gk = &bf16_kernel;
    RUN(test_cpu_features);
    RUN(test_every_case_odd_shapes);
    RUN(test_multi_block_shapes);
    RUN(test_alpha_beta);
    RUN(test_deterministic);
    RUN(test_row_independent);
    RUN(test_7b_shape);
    RUN(test_tolerance_is_tight);
    RUN(test_exact_small_integers);
    return TEST_MAIN_END("test_gemm_bf16");
}
