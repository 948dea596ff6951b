/* kn_cpu() feature detection and the AVX512-BF16 GEMM kn_gemm_bf16 against its naive reference.
 *
 * The reference (kn_gemm_bf16_ref) rounds the operands to bf16 exactly as the kernel does and sums
 * in double, so the only difference left is the kernel's f32 accumulation order: every entry must
 * satisfy |got - ref| <= 1e-5 * (|alpha| sum_k |a_k b_k| + |beta c0|) + 1e-6, the sum of absolute
 * products being the reference run on |A|, |B|. Entries are checked one by one (a 1x1 reference
 * call at the entry's row of A and column of B), all of them on small shapes and a sample on big
 * ones. Covered: every transpose case x every B dtype on odd shapes with padded leading
 * dimensions and unaligned pointers (the padding of C must stay untouched), shapes spanning
 * several cache blocks, alpha/beta (beta 0 over NaN, beta 1 accumulating, alpha 0, K 0),
 * determinism (repeat and 1 vs 2 threads vs inside a parallel region, bit for bit), a 7B-shaped
 * product, and that the bound is tight enough to reject a slightly wrong reference.
 * On CPUs without AVX512-BF16 the GEMM tests SKIP with the reason; the kn_cpu() test always runs.
 * Not tested here: speed (bench/gemm_peak.c) and AMX (detected, never used). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/rng.h"
#include "tests/test.h"

#define TOL_REL 1e-5
#define TOL_ABS 1e-6

static const char *dtype_name(ag_dtype t) { return t == AG_F32 ? "f32" : t == AG_F16 ? "f16" : "bf16"; }

/* n values N(0,1) in type t (malloc'ed). */
static void *rand_values(ag_rng *r, size_t n, ag_dtype t) {
    void *p = malloc(n * ag_dtype_size(t) + 64);
    for (size_t i = 0; i < n; i++) {
        float f = (float)ag_rng_normal(r);
        if (t == AG_F32) ((float *)p)[i] = f;
        else if (t == AG_F16) ((uint16_t *)p)[i] = ag_f32_to_f16(f);
        else ((uint16_t *)p)[i] = ag_f32_to_bf16(f);
    }
    return p;
}

static void *abs_values(const void *src, size_t n, ag_dtype t) {
    void *p = malloc(n * ag_dtype_size(t) + 64);
    for (size_t i = 0; i < n; i++) {
        if (t == AG_F32) ((float *)p)[i] = fabsf(((const float *)src)[i]);
        else ((uint16_t *)p)[i] = ((const uint16_t *)src)[i] & 0x7fff;
    }
    return p;
}

static void *aligned_work(size_t bytes) {
    void *w = NULL;
    if (posix_memalign(&w, 64, bytes ? bytes : 64)) return NULL;
    return w;
}

/* One problem: operands, their absolute values, C before and after. */
typedef struct prob {
    int tA, tB, M, N, K, lda, ldb, ldc;
    ag_dtype bt;
    float alpha, beta;
    float *A, *Aabs, *C0, *C; /* A and C may be offset (unaligned) views into the allocations */
    void *B, *Babs;
    void *allocA, *allocB; /* what to free */
    int off;               /* element offset of A, B and C in their allocations */
} prob;

/* Allocates with padded leading dimensions; offset 1 element makes the pointers unaligned. */
static void prob_make(prob *p, ag_rng *r, int tA, int tB, int M, int N, int K, ag_dtype bt, int pad, int off) {
    memset(p, 0, sizeof *p);
    p->off = off;
    p->tA = tA, p->tB = tB, p->M = M, p->N = N, p->K = K, p->bt = bt, p->alpha = 1.0f, p->beta = 0.0f;
    int arows = tA ? K : M, acols = tA ? M : K, brows = tB ? N : K, bcols = tB ? K : N;
    p->lda = acols + pad, p->ldb = bcols + pad, p->ldc = N + pad;
    size_t na = (size_t)arows * p->lda + off, nb = (size_t)brows * p->ldb + off, nc = (size_t)M * p->ldc + off;
    p->allocA = rand_values(r, na, AG_F32);
    p->A = (float *)p->allocA + off;
    p->Aabs = abs_values(p->A, na - off, AG_F32);
    p->allocB = rand_values(r, nb, bt);
    p->B = (char *)p->allocB + off * ag_dtype_size(bt);
    p->Babs = abs_values(p->B, nb - off, bt);
    p->C0 = malloc(nc * sizeof(float));
    p->C = malloc((nc + 1) * sizeof(float));
    for (size_t i = 0; i < nc; i++) p->C0[i] = (float)ag_rng_normal(r);
    p->C += off;
}

static void prob_free(prob *p) {
    free(p->allocA);
    free(p->Aabs);
    free(p->allocB);
    free(p->Babs);
    free(p->C0);
    free(p->C - p->off);
}

/* C = C0 (the padding columns get a sentinel), then the kernel with nthreads (0: as is). */
static void prob_run(prob *p, int nthreads) {
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->ldc; j++)
            p->C[(size_t)i * p->ldc + j] = j < p->N ? p->C0[(size_t)i * p->ldc + j] : 12345.0f;
    int old = omp_get_max_threads();
    if (nthreads) omp_set_num_threads(nthreads);
    size_t ws = kn_gemm_bf16_workspace(p->M, p->N, p->K);
    void *w = aligned_work(ws);
    kn_gemm_bf16(p->tA, p->tB, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->bt, p->ldb, p->beta, p->C,
                 p->ldc, w);
    free(w);
    if (nthreads) omp_set_num_threads(old);
}

/* Reference of entry (i, j) through a 1x1 reference call; *abs_sum gets sum_k |a_k b_k|. */
static double ref_entry(const prob *p, const float *A, const void *B, int i, int j, float c0, double *abs_sum) {
    size_t es = ag_dtype_size(p->bt);
    const float *ai = p->tA ? p->A + i : p->A + (size_t)i * p->lda;
    const char *bj = (const char *)p->B + (p->tB ? (size_t)j * p->ldb : (size_t)j) * es;
    const float *aai = p->tA ? p->Aabs + i : p->Aabs + (size_t)i * p->lda;
    const char *abj = (const char *)p->Babs + (p->tB ? (size_t)j * p->ldb : (size_t)j) * es;
    if (A) ai = p->tA ? A + i : A + (size_t)i * p->lda; /* a substitute A (a wrong reference) */
    if (B) bj = (const char *)B + (p->tB ? (size_t)j * p->ldb : (size_t)j) * es;
    float c = c0, s = 0.0f;
    kn_gemm_bf16_ref(p->tA, p->tB, 1, 1, p->K, p->alpha, ai, p->lda, bj, p->bt, p->ldb, p->beta, &c, 1);
    kn_gemm_bf16_ref(p->tA, p->tB, 1, 1, p->K, 1.0f, aai, p->lda, abj, p->bt, p->ldb, 0.0f, &s, 1);
    *abs_sum = s;
    return c;
}

/* Compares every step-th entry (all when 1) with the reference (or a substitute A / B: a wrong
 * reference); returns the number of entries out of bound, *worst the largest err / bound. Also
 * checks that the padding of C is untouched. */
static int prob_compare(const prob *p, int step, const float *Asub, const void *Bsub, double *worst, double *worst_err,
                        double *worst_bound) {
    int bad = 0;
    *worst = 0;
    if (worst_err) *worst_err = 0, *worst_bound = 0;
    size_t cnt = 0;
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->ldc; j++) {
            float got = p->C[(size_t)i * p->ldc + j];
            if (j >= p->N) {
                if (got != 12345.0f) bad++;
                continue;
            }
            if (cnt++ % (size_t)step) continue;
            float c0 = p->C0[(size_t)i * p->ldc + j];
            double s, want = ref_entry(p, Asub, Bsub, i, j, c0, &s);
            double bound = TOL_REL * (fabs(p->alpha) * s + (p->beta == 0 ? 0 : fabs((double)p->beta * c0))) + TOL_ABS;
            double err = fabs((double)got - want);
            if (!(err <= bound)) bad++; /* NaN counts as out of bound */
            double ratio = err == err ? err / bound : INFINITY;
            if (ratio > *worst) {
                *worst = ratio;
                if (worst_err) *worst_err = err, *worst_bound = bound;
            }
        }
    return bad;
}

#define NEED_BF16()                                                                                 \
    do {                                                                                            \
        if (!kn_bf16_gemm_available())                                                              \
            SKIP("CPU '%s' has no usable AVX512-BF16 (kn_bf16_gemm_available() == 0)", kn_cpu()->brand); \
    } while (0)

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

/* ---- correctness ------------------------------------------------------------------------------- */
static void test_every_case_odd_shapes(void) {
    NEED_BF16();
    static const int shapes[][3] = {{1, 1, 1},    {3, 17, 33},   {17, 3, 65},   {33, 65, 1},  {65, 130, 3},
                                    {130, 33, 17}, {1, 130, 130}, {130, 1, 65},  {17, 17, 17}, {65, 33, 130},
                                    {3, 1, 2},     {33, 130, 64}, {14, 32, 32},  {15, 33, 31}, {28, 64, 2}};
    const int nshape = (int)(sizeof shapes / sizeof shapes[0]);
    ag_rng r;
    ag_rng_seed(&r, 11);
    double worst = 0;
    int runs = 0;
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++)
            for (int bt = 0; bt < 3; bt++)
                for (int s = 0; s < nshape; s++) {
                    prob p;
                    int pad = (s % 3) * 3, off = s % 2; /* padded leading dims, unaligned pointers */
                    prob_make(&p, &r, tA, tB, shapes[s][0], shapes[s][1], shapes[s][2], (ag_dtype)bt, pad, off);
                    p.alpha = s % 4 == 3 ? -0.75f : 1.0f;
                    p.beta = s % 5 == 4 ? 0.5f : 0.0f;
                    prob_run(&p, 0);
                    double w;
                    int bad = prob_compare(&p, 1, NULL, NULL, &w, NULL, NULL);
                    CHECK(bad == 0, "trans (%d,%d) B %s M %d N %d K %d pad %d: %d entries out of bound (worst %.2f)", tA,
                          tB, dtype_name(p.bt), p.M, p.N, p.K, pad, bad, w);
                    if (w > worst) worst = w;
                    runs++;
                    prob_free(&p);
                }
    printf("  %d products, worst |err| / bound = %.3f\n", runs, worst);
}

/* Shapes spanning several cache blocks in M, N and K (3 K slices, odd K: a padded last pair; M
 * past one shared A slice), sampled. */
static void test_multi_block_shapes(void) {
    NEED_BF16();
    ag_rng r;
    ag_rng_seed(&r, 12);
    double worst = 0;
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            prob p;
            ag_dtype bt = (ag_dtype)((tA * 2 + tB) % 3);
            prob_make(&p, &r, tA, tB, 350, 300, 4099, bt, 5, 1);
            p.beta = 1.0f;
            prob_run(&p, 0);
            double w;
            int bad = prob_compare(&p, 7, NULL, NULL, &w, NULL, NULL);
            CHECK(bad == 0, "trans (%d,%d) B %s 350x300x4099: %d entries out of bound (worst %.2f)", tA, tB,
                  dtype_name(bt), bad, w);
            if (w > worst) worst = w;
            prob_free(&p);
        }
    prob p;
    prob_make(&p, &r, 0, 1, 2750, 150, 2051, AG_BF16, 0, 0);
    prob_run(&p, 0);
    double w;
    int bad = prob_compare(&p, 61, NULL, NULL, &w, NULL, NULL);
    CHECK(bad == 0, "2750x150x2051: %d entries out of bound (worst %.2f)", bad, w);
    if (w > worst) worst = w;
    prob_free(&p);
    printf("  worst |err| / bound = %.3f\n", worst);
}

static void test_alpha_beta(void) {
    NEED_BF16();
    ag_rng r;
    ag_rng_seed(&r, 13);
    prob p;
    prob_make(&p, &r, 0, 1, 33, 47, 65, AG_BF16, 2, 0);
    /* beta 0 over NaN: C must not be read */
    for (size_t i = 0; i < (size_t)p.M * p.ldc; i++) p.C0[i] = NAN;
    p.alpha = 2.0f, p.beta = 0.0f;
    prob_run(&p, 0);
    double w;
    CHECK(prob_compare(&p, 1, NULL, NULL, &w, NULL, NULL) == 0, "beta 0 over NaN (worst %.2f)", w);
    /* beta 1 accumulates */
    for (size_t i = 0; i < (size_t)p.M * p.ldc; i++) p.C0[i] = (float)ag_rng_normal(&r) * 10;
    p.alpha = 1.0f, p.beta = 1.0f;
    prob_run(&p, 0);
    CHECK(prob_compare(&p, 1, NULL, NULL, &w, NULL, NULL) == 0, "beta 1 (worst %.2f)", w);
    /* accumulating twice = alpha 2 on top of C0 (within rounding) */
    float *twice = malloc((size_t)p.M * p.ldc * sizeof(float));
    memcpy(twice, p.C, (size_t)p.M * p.ldc * sizeof(float));
    void *ws = aligned_work(kn_gemm_bf16_workspace(p.M, p.N, p.K));
    kn_gemm_bf16(0, 1, p.M, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 1.0f, twice, p.ldc, ws);
    float *saveC = p.C;
    p.C = twice, p.alpha = 2.0f;
    CHECK(prob_compare(&p, 1, NULL, NULL, &w, NULL, NULL) == 0, "two beta-1 calls = alpha 2 (worst %.2f)", w);
    p.C = saveC;
    free(twice);
    /* general alpha, beta */
    p.alpha = -0.375f, p.beta = -1.5f;
    prob_run(&p, 0);
    CHECK(prob_compare(&p, 1, NULL, NULL, &w, NULL, NULL) == 0, "alpha -0.375 beta -1.5 (worst %.2f)", w);
    /* alpha 0: C = beta C, A and B not used (NaN in A must not leak) */
    float keep = p.A[0];
    p.A[0] = NAN;
    p.alpha = 0.0f, p.beta = 0.5f;
    prob_run(&p, 0);
    int ok = 1;
    for (int i = 0; i < p.M; i++)
        for (int j = 0; j < p.N; j++) ok &= p.C[(size_t)i * p.ldc + j] == 0.5f * p.C0[(size_t)i * p.ldc + j];
    CHECK(ok, "alpha 0 gives beta * C");
    p.A[0] = keep;
    /* K = 0: C = beta C; beta 0 gives zeros over NaN */
    for (size_t i = 0; i < (size_t)p.M * p.ldc; i++) p.C[i] = NAN;
    kn_gemm_bf16(0, 1, p.M, p.N, 0, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, p.C, p.ldc, ws);
    ok = 1;
    for (int i = 0; i < p.M; i++)
        for (int j = 0; j < p.N; j++) ok &= p.C[(size_t)i * p.ldc + j] == 0.0f;
    CHECK(ok, "K 0, beta 0 gives zeros");
    /* M or N = 0: nothing touched */
    kn_gemm_bf16(0, 1, 0, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, NULL, p.ldc, NULL);
    kn_gemm_bf16(0, 1, p.M, 0, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, NULL, p.ldc, NULL);
    CHECK(kn_gemm_bf16_workspace(0, 5, 5) == 0 && kn_gemm_bf16_workspace(5, 5, 0) == 0, "empty workspaces");
    free(ws);
    prob_free(&p);
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Bit-identical results: repeated, 1 vs 2 threads, and single-threaded inside a parallel region.
 * Shapes: several K slices and column blocks (threads split N), and a narrow N with tall M
 * (threads split M, each grid row with its own A slice). */
static void test_deterministic(void) {
    NEED_BF16();
    ag_rng r;
    ag_rng_seed(&r, 14);
    static const int shapes[][4] = {{371, 1000, 4099, 1}, {371, 1000, 4099, 0}, {3000, 20, 2500, 1}};
    for (int s = 0; s < 3; s++) {
        int tB = shapes[s][3];
        prob p;
        prob_make(&p, &r, 0, tB, shapes[s][0], shapes[s][1], shapes[s][2], AG_BF16, 0, 0);
        p.beta = 1.0f;
        size_t n = (size_t)p.M * p.ldc;
        float *c1 = malloc(n * sizeof(float)), *c2 = malloc(n * sizeof(float)), *c3 = malloc(n * sizeof(float));
        prob_run(&p, 2);
        memcpy(c1, p.C, n * sizeof(float));
        prob_run(&p, 2);
        memcpy(c2, p.C, n * sizeof(float));
        prob_run(&p, 1);
        memcpy(c3, p.C, n * sizeof(float));
        CHECK(same_bits(c1, c2, n), "%dx%dx%d: two 2-thread calls differ", p.M, p.N, p.K);
        CHECK(same_bits(c1, c3, n), "%dx%dx%d: 1 thread differs from 2 threads", p.M, p.N, p.K);
        /* inside a parallel region: single-threaded, still the same bits */
        memcpy(p.C, p.C0, n * sizeof(float));
        void *ws = aligned_work(kn_gemm_bf16_workspace(p.M, p.N, p.K));
        int inside = 0;
#pragma omp parallel num_threads(2)
        {
#pragma omp single
            {
                inside = omp_in_parallel();
                kn_gemm_bf16(0, tB, p.M, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 1.0f, p.C, p.ldc, ws);
            }
        }
        CHECK(same_bits(c1, p.C, n), "%dx%dx%d: call inside a parallel region (%d) differs", p.M, p.N, p.K, inside);
        double w;
        CHECK(prob_compare(&p, 101, NULL, NULL, &w, NULL, NULL) == 0, "%dx%dx%d: out of bound", p.M, p.N, p.K);
        printf("  %dx%dx%d trans (0,%d): repeat, 1 vs 2 threads and inside a parallel region bit-identical\n", p.M,
               p.N, p.K, tB);
        free(ws);
        free(c1);
        free(c2);
        free(c3);
        prob_free(&p);
    }
}

/* The 7B layer shape at T = 512: forward x W^T and input gradient dy W, sampled entries. */
static void test_7b_shape(void) {
    NEED_BF16();
    ag_rng r;
    ag_rng_seed(&r, 15);
    for (int tB = 1; tB >= 0; tB--) {
        prob p;
        prob_make(&p, &r, 0, tB, 512, 4096, 4096, AG_BF16, 0, 0);
        p.beta = tB ? 0.0f : 1.0f;
        double t0 = omp_get_wtime();
        prob_run(&p, 0);
        double dt = omp_get_wtime() - t0, w, we, wb;
        int bad = prob_compare(&p, 4099, NULL, NULL, &w, &we, &wb);
        CHECK(bad == 0, "512x4096x4096 trans (0,%d): %d sampled entries out of bound", tB, bad);
        printf("  512x4096x4096 trans (0,%d): %.1f GFLOP/s (incl. workspace), worst err %.3g vs bound %.3g (%.3f)\n", tB,
               2.0 * 512 * 4096 * 4096 / dt * 1e-9, we, wb, w);
        prob_free(&p);
    }
}

/* The bound must reject near misses: references with a one-ulp change of a single A element,
 * with A left in f32 (no bf16 rounding) and with B rounded down instead of to nearest. */
static void test_tolerance_is_tight(void) {
    NEED_BF16();
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

/* Small integers are exact in bf16, f16 and f32 and so are their products and sums: the result
 * must then be exact for every B dtype (the conversions keep exact values exact). */
static void test_exact_small_integers(void) {
    NEED_BF16();
    int M = 19, N = 45, K = 37;
    float *A = malloc((size_t)M * K * sizeof(float)), *C = malloc((size_t)M * N * sizeof(float));
    uint16_t *Bh = malloc((size_t)K * N * 2), *Bb = malloc((size_t)K * N * 2);
    float *Bf = malloc((size_t)K * N * sizeof(float));
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 7) % 11 - 5);
    for (int i = 0; i < K * N; i++) {
        Bf[i] = (float)((i * 5) % 13 - 6);
        Bh[i] = ag_f32_to_f16(Bf[i]);
        Bb[i] = ag_f32_to_bf16(Bf[i]);
    }
    void *ws = aligned_work(kn_gemm_bf16_workspace(M, N, K));
    const void *Bs[3] = {Bf, Bh, Bb};
    for (int bt = 0; bt < 3; bt++) {
        kn_gemm_bf16(0, 0, M, N, K, 1.0f, A, K, Bs[bt], (ag_dtype)bt, N, 0.0f, C, N, ws);
        int ok = 1;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                int s = 0;
                for (int k = 0; k < K; k++) s += (int)A[i * K + k] * (int)Bf[k * N + j];
                ok &= C[i * N + j] == (float)s;
            }
        CHECK(ok, "B %s: small-integer product not exact", dtype_name((ag_dtype)bt));
    }
    free(ws);
    free(A);
    free(C);
    free(Bh);
    free(Bb);
    free(Bf);
}

int main(void) {
    RUN(test_cpu_features);
    RUN(test_every_case_odd_shapes);
    RUN(test_multi_block_shapes);
    RUN(test_alpha_beta);
    RUN(test_deterministic);
    RUN(test_7b_shape);
    RUN(test_tolerance_is_tight);
    RUN(test_exact_small_integers);
    return TEST_MAIN_END("test_gemm_bf16");
}
