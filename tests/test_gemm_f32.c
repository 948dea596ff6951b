/* The AVX-512F f32 GEMM kn_gemm_f32 against its naive reference, and the linear layer's use of it.
 *
 * The reference (kn_gemm_f32_ref) takes the operands' exact values (f16 and bf16 B converted to
 * f32 exactly, as the kernel's packing does) and sums in double, so what is left is the kernel's
 * f32 rounding: every entry must satisfy |got - ref| <= F32_BOUND(K) * 2^-24 * (|alpha| sum_k
 * |a_k b_k| + |beta c0|), with F32_BOUND(K) = 4 sqrt(K) + 4: at K = 4096 1/16 of the worst-case
 * bound of a chain of K f32 FMAs ((K + slices + 2) 2^-24), as rounding errors of either sign
 * cancel; observed, at most 0.31 of it (K of 1 to 3) and about 0.01 at K = 4099. The generic
 * tests of tests/gemm_fixture.h run with that bound: every transpose case x every B dtype on odd shapes,
 * several cache blocks, alpha/beta, determinism (repeat, 1 vs 2 threads, inside a parallel
 * region), row independence, a 7B-shaped product, small integers. Here besides: that the bound
 * rejects near misses (B or A rounded to bf16 or f16 on the way, one A element off by 2^-8),
 * that 16-bit B is converted exactly (subnormals and extremes come out bit for bit), and the
 * linear layer (kn_linear_forward / _backward_dx / _backward_dw): the same bits as kn_gemm_f32,
 * 16-bit weights the same bits as f32 weights holding their values, row independence across T,
 * and one workspace of kn_linear_workspace floats (unaligned) serving every T. Every workspace
 * is followed by a guard zone that must stay untouched.
 * On CPUs without AVX-512F every test SKIPs with the reason.
 * Not tested here: speed (bench/gemm_peak.c). */
#include "tests/gemm_fixture.h"

#define F32_U 0x1p-24

static double f32_bound(int K, double scale) { return (4.0 * sqrt((double)K) + 4.0) * F32_U * scale + 0x1p-140; }

static const gemm_kernel f32_kernel = {"kn_gemm_f32", "AVX-512F", kn_f32_gemm_available, kn_gemm_f32_workspace,
                                       kn_gemm_f32, kn_gemm_f32_ref, f32_bound};

/* The bound must reject near misses: references whose B or A went through bf16 or f16, or with
 * one element of A moved by 2^-8 of its value; each must put entries out of bound. */
static void test_tolerance_is_tight(void) {
    NEED_KERNEL();
    ag_rng r;
    ag_rng_seed(&r, 21);
    prob p;
    prob_make(&p, &r, 0, 1, 17, 33, 130, AG_F32, 0, 0);
    prob_run(&p, 0);
    double w, we, wb;
    int bad = prob_compare(&p, 1, NULL, NULL, &w, &we, &wb);
    CHECK(bad == 0, "right reference: %d out of bound", bad);
    printf("  right reference:          worst err %.3g vs bound %.3g (ratio %.3f), %d of %d out\n", we, wb, w, bad,
           p.M * p.N);
    size_t na = (size_t)p.M * p.lda, nb = (size_t)p.N * p.ldb;
    float *A1 = malloc(na * sizeof(float)), *B1 = malloc(nb * sizeof(float));
    const float *Bf = p.B;
    struct { const char *what; int a; } wrong[] = {{"B rounded to bf16", 0}, {"B rounded to f16", 0},
                                                  {"A rounded to bf16", 1}, {"A rounded to f16", 1},
                                                  {"A[0][5] off by 2^-8", 1}};
    for (int c = 0; c < 5; c++) {
        memcpy(A1, p.A, na * sizeof(float));
        memcpy(B1, Bf, nb * sizeof(float));
        for (size_t i = 0; i < (wrong[c].a ? na : nb); i++) {
            float *v = wrong[c].a ? &A1[i] : &B1[i];
            if (c == 0 || c == 2) *v = ag_bf16_to_f32(ag_f32_to_bf16(*v));
            if (c == 1 || c == 3) *v = ag_f16_to_f32(ag_f32_to_f16(*v));
        }
        if (c == 4) A1[5] *= 1.0f + 0x1p-8f;
        bad = prob_compare(&p, 1, wrong[c].a ? A1 : NULL, wrong[c].a ? NULL : B1, &w, &we, &wb);
        CHECK(bad > 0, "%s not detected", wrong[c].what);
        printf("  %-24s worst err %.3g vs bound %.3g (ratio %.1f), %d of %d out\n", wrong[c].what, we, wb, w, bad,
               p.M * p.N);
    }
    free(A1);
    free(B1);
    prob_free(&p);
}

/* 16-bit B is converted exactly: with A the identity (times 1), C reproduces B's f32 values bit
 * for bit, subnormals (f16 2^-24, bf16 2^-133, which become f32 normals / subnormals) and the
 * extremes (f16 65504, bf16 near 3.4e38) included, in every transpose case. */
static void test_exact_conversion(void) {
    NEED_KERNEL();
    enum { K = 37, N = 35 };
    float A[K * K], C[K * N], want[K * N];
    uint16_t Bh[2][K * N];
    for (int i = 0; i < K * K; i++) A[i] = i % (K + 1) == 0 ? 1.0f : 0.0f; /* identity: symmetric */
    ag_rng r;
    ag_rng_seed(&r, 22);
    void *ws = aligned_work(kn_gemm_f32_workspace(K, N, K));
    int cases = 0;
    for (int t = 0; t < 2; t++) {
        ag_dtype bt = t ? AG_BF16 : AG_F16;
        static const uint16_t special[2][6] = {{0x0001, 0x8001, 0x03ff, 0x7bff, 0xfbff, 0x0400},  /* f16 */
                                               {0x0001, 0x8001, 0x007f, 0x7f7f, 0xff7f, 0x0080}}; /* bf16 */
        for (int i = 0; i < K * N; i++) {
            float f = (float)ag_rng_normal(&r) * (i % 7 == 0 ? 1e-3f : 1.0f);
            Bh[t][i] = i < 6 ? special[t][i] : t ? ag_f32_to_bf16(f) : ag_f32_to_f16(f);
            want[i] = t ? ag_bf16_to_f32(Bh[t][i]) : ag_f16_to_f32(Bh[t][i]);
        }
        for (int tA = 0; tA < 2; tA++)
            for (int tB = 0; tB < 2; tB++) {
                /* transB: B stored as [N,K], element (k, j) at j*K + k: transpose the same values */
                uint16_t Bt[K * N];
                for (int k = 0; k < K; k++)
                    for (int j = 0; j < N; j++) Bt[(size_t)j * K + k] = Bh[t][(size_t)k * N + j];
                memset(C, 0x7f, sizeof C); /* beta 0: never read */
                kn_gemm_f32(tA, tB, K, N, K, 1.0f, A, K, tB ? Bt : Bh[t], bt, tB ? K : N, 0.0f, C, N, ws);
                CHECK(memcmp(C, want, sizeof C) == 0, "B %s trans (%d,%d): identity product is not B's exact values",
                      dtype_name(bt), tA, tB);
                cases++;
            }
    }
    free(ws);
    printf("  %d identity products: f16 and bf16 B (subnormals, extremes) reproduced bit for bit\n", cases);
}

/* The linear layer on the AVX-512 path (T > 1): one workspace of kn_linear_workspace floats,
 * deliberately 4 bytes off 64-byte alignment, for every T (including more rows than one shared A
 * slice); forward, dx and dW give the bits of kn_gemm_f32; 16-bit W gives the bits of f32 W
 * holding the same values; the first rows of a T-row forward equal a 2-row forward's; work NULL
 * takes OpenBLAS, within the bound. */
static void test_linear_layer(void) {
    NEED_KERNEL();
    enum { NI = 77, NO = 301, TMAX = 3001 };
    ag_rng r;
    ag_rng_seed(&r, 23);
    float *x = rand_values(&r, (size_t)TMAX * NI, AG_F32), *dy = rand_values(&r, (size_t)TMAX * NO, AG_F32);
    float *W = malloc((size_t)NO * NI * sizeof(float)), *Wr = malloc((size_t)NO * NI * sizeof(float));
    uint16_t *Wh = malloc((size_t)NO * NI * 2);
    for (int i = 0; i < NO * NI; i++) W[i] = (float)ag_rng_normal(&r);
    size_t nwork = kn_linear_workspace(AG_F32, NI, NO);
    CHECK(nwork >= kn_linear_workspace(AG_BF16, NI, NO), "f32 weights need the dW GEMM too");
    char *work_alloc = aligned_work((nwork + 1) * sizeof(float) + GUARD_BYTES);
    float *work = (float *)(work_alloc + 4); /* not 64-byte aligned */
    memset(work + nwork, 0xa5, GUARD_BYTES);
    float *y1 = malloc((size_t)TMAX * NO * 4), *y2 = malloc((size_t)TMAX * NO * 4), *y3 = malloc((size_t)TMAX * NO * 4);
    float *dx1 = malloc((size_t)TMAX * NI * 4), *dx2 = malloc((size_t)TMAX * NI * 4);
    float *dW1 = malloc((size_t)NO * NI * 4), *dW2 = malloc((size_t)NO * NI * 4);
    void *gw = aligned_work(kn_gemm_f32_workspace(-1, NO, -1)); /* any T, N <= NO */
    static const int Ts[] = {2, 3, 700, TMAX};
    for (int ti = 0; ti < 4; ti++) {
        int T = Ts[ti];
        kn_linear_forward(y1, x, W, AG_F32, T, NI, NO, work);
        kn_gemm_f32(0, 1, T, NO, NI, 1.0f, x, NI, W, AG_F32, NI, 0.0f, y2, NO, gw);
        CHECK(same_bits(y1, y2, (size_t)T * NO), "T %d: forward differs from kn_gemm_f32", T);
        kn_linear_forward(y3, x, W, AG_F32, 2, NI, NO, work);
        CHECK(same_bits(y1, y3, (size_t)2 * NO), "T %d: first 2 rows differ from a 2-row forward", T);
        for (int i = 0; i < T * NI; i++) dx1[i] = dx2[i] = x[i];
        kn_linear_backward_dx(dx1, dy, W, AG_F32, T, NI, NO, work);
        kn_gemm_f32(0, 0, T, NI, NO, 1.0f, dy, NO, W, AG_F32, NI, 1.0f, dx2, NI, gw);
        CHECK(same_bits(dx1, dx2, (size_t)T * NI), "T %d: dx differs from kn_gemm_f32", T);
        memcpy(dW1, W, (size_t)NO * NI * 4);
        memcpy(dW2, W, (size_t)NO * NI * 4);
        kn_linear_backward_dw(dW1, dy, x, T, NI, NO, work);
        kn_gemm_f32(1, 0, NO, NI, T, 1.0f, dy, NO, x, AG_F32, NI, 1.0f, dW2, NI, gw);
        CHECK(same_bits(dW1, dW2, (size_t)NO * NI), "T %d: dW differs from kn_gemm_f32", T);
    }
    /* 16-bit weights: the bits of f32 weights holding their exact values */
    int T = 700;
    for (int dt = AG_F16; dt <= AG_BF16; dt++) {
        for (int i = 0; i < NO * NI; i++) {
            Wh[i] = dt == AG_F16 ? ag_f32_to_f16(W[i]) : ag_f32_to_bf16(W[i]);
            Wr[i] = dt == AG_F16 ? ag_f16_to_f32(Wh[i]) : ag_bf16_to_f32(Wh[i]);
        }
        CHECK(kn_linear_workspace((ag_dtype)dt, NI, NO) <= nwork, "16-bit workspace above f32's");
        kn_linear_forward(y1, x, Wh, (ag_dtype)dt, T, NI, NO, work);
        kn_linear_forward(y2, x, Wr, AG_F32, T, NI, NO, work);
        CHECK(same_bits(y1, y2, (size_t)T * NO), "%s forward differs from f32 weights of the same values",
              dtype_name((ag_dtype)dt));
        for (int i = 0; i < T * NI; i++) dx1[i] = dx2[i] = 0.0f;
        kn_linear_backward_dx(dx1, dy, Wh, (ag_dtype)dt, T, NI, NO, work);
        kn_linear_backward_dx(dx2, dy, Wr, AG_F32, T, NI, NO, work);
        CHECK(same_bits(dx1, dx2, (size_t)T * NI), "%s dx differs from f32 weights of the same values",
              dtype_name((ag_dtype)dt));
    }
    size_t touched = 0;
    for (size_t i = 0; i < GUARD_BYTES; i++) touched += ((unsigned char *)(work + nwork))[i] != 0xa5;
    CHECK(touched == 0, "%zu bytes written past the %zu floats of kn_linear_workspace", touched, nwork);
    /* work NULL: OpenBLAS, close to the same result */
    kn_linear_forward(y1, x, W, AG_F32, T, NI, NO, work);
    kn_linear_forward(y2, x, W, AG_F32, T, NI, NO, NULL);
    double worst = 0;
    for (int i = 0; i < T; i++)
        for (int o = 0; o < NO; o++) {
            double s = 0;
            for (int k = 0; k < NI; k++) s += fabs((double)x[(size_t)i * NI + k] * W[(size_t)o * NI + k]);
            double e = fabs((double)y1[(size_t)i * NO + o] - y2[(size_t)i * NO + o]) / (2 * f32_bound(NI, s));
            if (e > worst) worst = e;
        }
    CHECK(worst <= 1.0, "OpenBLAS path (work NULL) differs by %.2f of twice the bound", worst);
    printf("  T = 2, 3, 700, 3001 on one workspace of %zu floats: forward, dx, dW bit-identical to kn_gemm_f32; "
           "f16/bf16 W = f32 W bit for bit; OpenBLAS within %.3f of twice the bound\n",
           nwork, worst);
    free(gw);
    free(x);
    free(dy);
    free(W);
    free(Wr);
    free(Wh);
    free(work_alloc);
    free(y1);
    free(y2);
    free(y3);
    free(dx1);
    free(dx2);
    free(dW1);
    free(dW2);
}

static void test_availability(void) {
    CHECK(kn_f32_gemm_available() == kn_cpu()->avx512f, "availability follows avx512f");
    printf("  cpu '%s': avx512f %d: f32 GEMM %s\n", kn_cpu()->brand, kn_cpu()->avx512f,
           kn_f32_gemm_available() ? "kn_gemm_f32 (AVX-512F)" : "OpenBLAS sgemm (no AVX-512F)");
    CHECK(kn_gemm_f32_workspace(0, 5, 5) == 0 && kn_gemm_f32_workspace(5, 5, 0) == 0, "empty workspaces");
    CHECK(kn_gemm_f32_workspace(-1, 300, 5000) >= kn_gemm_f32_workspace(100000, 300, 5000) &&
              kn_gemm_f32_workspace(300, 300, -1) >= kn_gemm_f32_workspace(300, 300, 100000),
          "the any-M / any-K workspace covers large M / K");
}

int main(void) {
    gk = &f32_kernel;
    RUN(test_availability);
    RUN(test_every_case_odd_shapes);
    RUN(test_multi_block_shapes);
    RUN(test_alpha_beta);
    RUN(test_deterministic);
    RUN(test_row_independent);
    RUN(test_7b_shape);
    RUN(test_tolerance_is_tight);
    RUN(test_exact_small_integers);
    RUN(test_exact_conversion);
    RUN(test_linear_layer);
    return TEST_MAIN_END("test_gemm_f32");
}
