/* The test fixture shared by the AVX-512 GEMM tests (tests/test_gemm_bf16.c, tests/test_gemm_f32.c):
 * a kernel is described by a gemm_kernel record (the GEMM, its workspace size, its naive reference,
 * its availability and its error bound) and the generic tests below run against the one in gk,
 * which the test's main() sets before RUN.
 *
 * The reference rounds (or converts) the operands exactly as the kernel does and sums in double,
 * so the only difference left is the kernel's f32 accumulation order: every entry must satisfy
 * |got - ref| <= bound(K, |alpha| sum_k |a_k b_k| + |beta c0|), the sum of absolute products being
 * the reference run on |A|, |B|. Entries are checked one by one (a 1x1 reference call at the
 * entry's row of A and column of B), all of them on small shapes and a sample on big ones.
 * Generic tests: every transpose case x every B dtype on odd shapes with padded leading
 * dimensions and unaligned pointers (the padding of C must stay untouched), shapes spanning
 * several cache blocks, alpha/beta (beta 0 over NaN, beta 1 accumulating, alpha 0, K 0),
 * determinism (repeat and 1 vs 2 threads vs inside a parallel region, bit for bit), row
 * independence (rows and columns of a product computed alone give the same bits), a 7B-shaped
 * product, and exactness on small integers. On CPUs without the kernel's instructions they SKIP
 * with the reason. Everything here is static: each test binary includes it once, after test.h. */
#ifndef TESTS_GEMM_FIXTURE_H
#define TESTS_GEMM_FIXTURE_H
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/rng.h"
#include "tests/test.h"

typedef struct gemm_kernel {
    const char *name, *isa; /* "kn_gemm_f32", "AVX-512F" (messages) */
    int (*available)(void);
    size_t (*workspace)(int M, int N, int K);
    void (*gemm)(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                 ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work);
    void (*ref)(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                ag_dtype btype, int ldb, float beta, float *C, int ldc);
    /* largest |got - ref| allowed for depth K and scale |alpha| sum |a b| + |beta c0| */
    double (*bound)(int K, double scale);
} gemm_kernel;

static const gemm_kernel *gk; /* the kernel under test */

#define NEED_KERNEL()                                                                                   \
    do {                                                                                                \
        if (!gk->available())                                                                           \
            SKIP("CPU '%s' has no usable %s (%s not available)", kn_cpu()->brand, gk->isa, gk->name);    \
    } while (0)

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

#define GUARD_BYTES 4096 /* after the workspace: the kernel must not write there */

/* C = C0 (the padding columns get a sentinel), then the kernel with nthreads (0: as is), its
 * workspace exactly the size it asked for followed by a guard zone that must stay untouched (the
 * kernel's vector stores are not seen by AddressSanitizer). */
static void prob_run(prob *p, int nthreads) {
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->ldc; j++)
            p->C[(size_t)i * p->ldc + j] = j < p->N ? p->C0[(size_t)i * p->ldc + j] : 12345.0f;
    int old = omp_get_max_threads();
    if (nthreads) omp_set_num_threads(nthreads);
    size_t ws = gk->workspace(p->M, p->N, p->K);
    unsigned char *w = aligned_work(ws + GUARD_BYTES);
    memset(w + ws, 0xa5, GUARD_BYTES);
    gk->gemm(p->tA, p->tB, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->bt, p->ldb, p->beta, p->C,
                 p->ldc, w);
    size_t touched = 0;
    for (size_t i = 0; i < GUARD_BYTES; i++) touched += w[ws + i] != 0xa5;
    CHECK(touched == 0, "%dx%dx%d: %zu bytes written past the %zu-byte workspace", p->M, p->N, p->K, touched, ws);
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
    gk->ref(p->tA, p->tB, 1, 1, p->K, p->alpha, ai, p->lda, bj, p->bt, p->ldb, p->beta, &c, 1);
    gk->ref(p->tA, p->tB, 1, 1, p->K, 1.0f, aai, p->lda, abj, p->bt, p->ldb, 0.0f, &s, 1);
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
            double bound = gk->bound(p->K, fabs(p->alpha) * s + (p->beta == 0 ? 0 : fabs((double)p->beta * c0)));
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


/* ---- correctness ------------------------------------------------------------------------------- */
static void test_every_case_odd_shapes(void) {
    NEED_KERNEL();
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
    NEED_KERNEL();
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
    NEED_KERNEL();
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
    void *ws = aligned_work(gk->workspace(p.M, p.N, p.K));
    gk->gemm(0, 1, p.M, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 1.0f, twice, p.ldc, ws);
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
    gk->gemm(0, 1, p.M, p.N, 0, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, p.C, p.ldc, ws);
    ok = 1;
    for (int i = 0; i < p.M; i++)
        for (int j = 0; j < p.N; j++) ok &= p.C[(size_t)i * p.ldc + j] == 0.0f;
    CHECK(ok, "K 0, beta 0 gives zeros");
    /* M or N = 0: nothing touched */
    gk->gemm(0, 1, 0, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, NULL, p.ldc, NULL);
    gk->gemm(0, 1, p.M, 0, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 0.0f, NULL, p.ldc, NULL);
    CHECK(gk->workspace(0, 5, 5) == 0 && gk->workspace(5, 5, 0) == 0, "empty workspaces");
    free(ws);
    prob_free(&p);
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Bit-identical results: repeated, 1 vs 2 threads, and single-threaded inside a parallel region.
 * Shapes: several K slices and column blocks (threads split N), and a narrow N with tall M
 * (threads split M, each grid row with its own A slice). */
static void test_deterministic(void) {
    NEED_KERNEL();
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
        void *ws = aligned_work(gk->workspace(p.M, p.N, p.K));
        int inside = 0;
#pragma omp parallel num_threads(2)
        {
#pragma omp single
            {
                inside = omp_in_parallel();
                gk->gemm(0, tB, p.M, p.N, p.K, 1.0f, p.A, p.lda, p.B, p.bt, p.ldb, 1.0f, p.C, p.ldc, ws);
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
    NEED_KERNEL();
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


/* Small integers are exact in bf16, f16 and f32 and so are their products and sums: the result
 * must then be exact for every B dtype (the conversions keep exact values exact). */
static void test_exact_small_integers(void) {
    NEED_KERNEL();
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
    void *ws = aligned_work(gk->workspace(M, N, K));
    const void *Bs[3] = {Bf, Bh, Bb};
    for (int bt = 0; bt < 3; bt++) {
        gk->gemm(0, 0, M, N, K, 1.0f, A, K, Bs[bt], (ag_dtype)bt, N, 0.0f, C, N, ws);
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

/* Row independence: rows of a product (any block of them, or one alone) equal, bit for bit, the
 * same rows inside a bigger product, for every transpose case, several K slices and 2 threads;
 * and the same for columns. What the frozen-prefix cache and the bit-identity of padded and
 * unpadded batches rely on. */
static void test_row_independent(void) {
    NEED_KERNEL();
    ag_rng r;
    ag_rng_seed(&r, 17);
    int checked = 0;
    for (int tA = 0; tA < 2; tA++)
        for (int tB = 0; tB < 2; tB++) {
            prob p;
            prob_make(&p, &r, tA, tB, 301, 150, 2500, (ag_dtype)((tA + 2 * tB) % 3), 3, 1);
            p.beta = tA ? 0.5f : 0.0f;
            prob_run(&p, 2);
            static const int blocks[][2] = {{0, 1}, {7, 1}, {13, 15}, {150, 29}, {290, 11}, {300, 1}};
            size_t es = ag_dtype_size(p.bt);
            for (int b = 0; b < 6; b++) {
                int i0 = blocks[b][0], m = blocks[b][1];
                float *c = malloc((size_t)m * p.ldc * sizeof(float));
                memcpy(c, p.C0 + (size_t)i0 * p.ldc, (size_t)m * p.ldc * sizeof(float));
                void *ws = aligned_work(gk->workspace(m, p.N, p.K));
                const float *a = p.tA ? p.A + i0 : p.A + (size_t)i0 * p.lda;
                gk->gemm(p.tA, p.tB, m, p.N, p.K, p.alpha, a, p.lda, p.B, p.bt, p.ldb, p.beta, c, p.ldc, ws);
                int same = 1;
                for (int i = 0; i < m; i++)
                    same &= same_bits(c + (size_t)i * p.ldc, p.C + (size_t)(i0 + i) * p.ldc, (size_t)p.N);
                CHECK(same, "trans (%d,%d): rows [%d,%d) alone differ from the same rows of the %d-row product", tA, tB, i0,
                      i0 + m, p.M);
                free(ws);
                free(c);
                checked++;
            }
            /* columns [j0, j0+n) alone: B offset by j0 columns (transB: rows) */
            static const int cols[][2] = {{0, 1}, {5, 33}, {149, 1}};
            for (int b = 0; b < 3; b++) {
                int j0 = cols[b][0], n = cols[b][1];
                float *c = malloc((size_t)p.M * p.ldc * sizeof(float));
                memcpy(c, p.C0, (size_t)p.M * p.ldc * sizeof(float));
                void *ws = aligned_work(gk->workspace(p.M, n, p.K));
                const char *bj = (const char *)p.B + (p.tB ? (size_t)j0 * p.ldb : (size_t)j0) * es;
                gk->gemm(p.tA, p.tB, p.M, n, p.K, p.alpha, p.A, p.lda, bj, p.bt, p.ldb, p.beta, c + j0, p.ldc, ws);
                int same = 1;
                for (int i = 0; i < p.M; i++)
                    same &= same_bits(c + (size_t)i * p.ldc + j0, p.C + (size_t)i * p.ldc + j0, (size_t)n);
                CHECK(same, "trans (%d,%d): columns [%d,%d) alone differ from the same columns of the product", tA, tB, j0,
                      j0 + n);
                free(ws);
                free(c);
                checked++;
            }
            prob_free(&p);
        }
    printf("  %d row blocks and column blocks of 301x150x2500 products bit-identical to the whole\n", checked);
}
#endif
