/* gemm_peak: how close the f32 GEMM (kn_gemm_f32), the bf16 GEMM (kn_gemm_bf16) and OpenBLAS
 * sgemm get to this CPU's instruction peaks at the 7B layer shapes. Prints one table; never
 * pass/fail.
 *
 *   build/bench/gemm_peak            (OMP_NUM_THREADS threads, default: all; GEMM_PEAK_REPS=2)
 *
 * (1) Instruction peaks from register-only loops (16 independent accumulators, no memory):
 *     f32 FMA on zmm and on ymm (OpenBLAS may use either), and vdpbf16ps on zmm; GFLOP/s with 2
 *     flops per multiply-add (vdpbf16ps: 32 multiply-adds per zmm), one thread and all threads.
 * (2) OpenBLAS sgemm (f32 W), (3) kn_gemm_f32 (f32 W, the same operands as sgemm) and (4)
 *     kn_gemm_bf16 (bf16 W) at T = 2048 and 512 tokens, dim 4096, hidden 11008: forward
 *     y = x W^T (trans (0,1)) and input gradient dx += dy W (trans (0,0)) for W [4096,4096],
 *     [11008,4096], [4096,11008], plus the weight gradient dW += dy^T x (trans (1,0), B = x in
 *     f32) at T = 512. Best of GEMM_PEAK_REPS timed calls per shape (one untimed call of each GEMM
 *     first warms up the thread pool and OpenBLAS's buffers); % is of the matching instruction
 *     peak (sgemm: the faster f32 FMA, f32: zmm FMA, bf16: vdpbf16ps) for all threads, taken as
 *     the larger of the all-thread loop and threads x the 1-thread loop (on a shared machine the
 *     all-thread loop may be slowed by other processes).
 * What it does not do: check results (tests/test_gemm_f32.c and test_gemm_bf16.c do), time
 * conversion of 16-bit weights for sgemm (kn_linear_forward's fallback path), or run the f32 /
 * bf16 kernel columns on CPUs without AVX-512F / AVX512-BF16 (they print "n/a"). The whole run
 * takes about 45 s on 2 idle cores. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/rng.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GP_X86 1
#endif

#define NACC 16

#ifdef GP_X86
/* iters x 16 dependent-free vdpbf16ps zmm: returns a value so the loop is kept */
__attribute__((target("avx512f,avx512bf16"), noinline)) static float loop_dpbf16(long iters) {
    __m512 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x00010001);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < NACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a)); /* a is opaque: no hoisting */
    }
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f"), noinline)) static float loop_fma512(long iters) {
    __m512 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-30f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < NACC; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    __m512 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"), noinline)) static float loop_fma256(long iters) {
    __m256 acc[NACC];
    for (int i = 0; i < NACC; i++) acc[i] = _mm256_set1_ps((float)i);
    __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-30f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < NACC; i++) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+x"(a));
    }
    __m256 s = acc[0];
    for (int i = 1; i < NACC; i++) s = _mm256_add_ps(s, acc[i]);
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[7];
}
#endif

typedef float (*loop_fn)(long);
static volatile float sink;

/* GFLOP/s of fn (flops_per_iter each iteration) on `threads` threads, best of 3. */
static double peak(loop_fn fn, double flops_per_iter, int threads) {
    long iters = 20000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads)
        {
            float v = fn(iters);
            if (v == 12345.0f) sink = v;
        }
        double g = flops_per_iter * iters * threads / (omp_get_wtime() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

typedef struct shape {
    const char *what;
    int tA, tB, M, N, K, T, wn, wk; /* GEMM and its origin: tokens, W [wn, wk] */
    float beta;
} shape;

static void fill(float *p, size_t n, ag_rng *r) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        ag_rng rr;
        ag_rng_seed(&rr, (uint64_t)i * 7919 + r->s[0]);
        p[i] = (float)(ag_rng_uniform(&rr) * 2 - 1);
    }
}

int main(void) {
    const kn_cpu_info *ci = kn_cpu();
    int nt = omp_get_max_threads();
    const char *re = getenv("GEMM_PEAK_REPS");
    int reps = re ? atoi(re) : 2;
    if (reps < 1) reps = 1;
    int bf16 = kn_bf16_gemm_available(), f32 = kn_f32_gemm_available();
    printf("# gemm_peak: CPU '%s', %d threads\n", ci->brand, nt);
    printf("# features: avx2 %d fma %d f16c %d avx512f %d avx512bw %d avx512bf16 %d amx_tile %d amx_bf16 %d "
           "(f32 GEMM: %s; bf16 GEMM: %s)\n",
           ci->avx2, ci->fma, ci->f16c, ci->avx512f, ci->avx512bw, ci->avx512bf16, ci->amx_tile, ci->amx_bf16,
           f32 ? "AVX-512F vfmadd231ps" : "not available", bf16 ? "AVX512-BF16 vdpbf16ps" : "not available");

    /* (1) instruction peaks */
    double pk_fma512 = 0, pk_fma256 = 0, pk_bf16 = 0, pk_f32_1 = 0, pk_bf16_1 = 0, pk_zmm_1 = 0;
    printf("\n## instruction peaks (register-only loops), GFLOP/s\n");
    printf("| instruction | flops/instr | 1 thread | %d threads |\n|---|---|---|---|\n", nt);
#ifdef GP_X86
    if (ci->avx2 && ci->fma) {
        double one = peak(loop_fma256, NACC * 16.0, 1);
        pk_fma256 = peak(loop_fma256, NACC * 16.0, nt);
        if (one > pk_f32_1) pk_f32_1 = one;
        printf("| f32 FMA ymm (vfmadd231ps) | 16 | %.1f | %.1f |\n", one, pk_fma256);
    }
    if (ci->avx512f) {
        double one = peak(loop_fma512, NACC * 32.0, 1);
        pk_zmm_1 = one;
        pk_fma512 = peak(loop_fma512, NACC * 32.0, nt);
        if (one > pk_f32_1) pk_f32_1 = one;
        printf("| f32 FMA zmm (vfmadd231ps) | 32 | %.1f | %.1f |\n", one, pk_fma512);
    }
    if (bf16) {
        pk_bf16_1 = peak(loop_dpbf16, NACC * 64.0, 1);
        double one = pk_bf16_1;
        pk_bf16 = peak(loop_dpbf16, NACC * 64.0, nt);
        printf("| bf16 dot zmm (vdpbf16ps) | 64 | %.1f | %.1f |\n", one, pk_bf16);
    }
#endif
    double pk_f32 = pk_fma512 > pk_fma256 ? pk_fma512 : pk_fma256;
    /* the hardware peak of nt threads is at least nt times one thread's: on a shared machine the
     * all-thread loop can come out lower, and the percentages would then flatter the GEMMs */
    if (pk_f32 < nt * pk_f32_1) pk_f32 = nt * pk_f32_1;
    double pk_zmm = pk_fma512 < nt * pk_zmm_1 ? nt * pk_zmm_1 : pk_fma512; /* kn_gemm_f32's */
    if (pk_bf16 < nt * pk_bf16_1) pk_bf16 = nt * pk_bf16_1;

    /* (2), (3) GEMMs at the 7B shapes */
    enum { DIM = 4096, HID = 11008 };
    const int Ts[2] = {2048, 512}, W[3][2] = {{DIM, DIM}, {HID, DIM}, {DIM, HID}};
    shape sh[32];
    int ns = 0;
    for (int ti = 0; ti < 2; ti++)
        for (int kind = 0; kind < (ti ? 3 : 2); kind++)
            for (int w = 0; w < 3; w++) {
                int T = Ts[ti], wn = W[w][0], wk = W[w][1];
                shape s = {NULL, 0, 0, 0, 0, 0, T, wn, wk, 0.0f};
                if (kind == 0) s.what = "fwd  y = x W^T", s.tB = 1, s.M = T, s.N = wn, s.K = wk;
                else if (kind == 1) s.what = "dx  += dy W", s.M = T, s.N = wk, s.K = wn, s.beta = 1.0f;
                else s.what = "dW  += dy^T x", s.tA = 1, s.M = wn, s.N = wk, s.K = T, s.beta = 1.0f;
                sh[ns++] = s;
            }
    size_t wmax = (size_t)HID * DIM, amax = (size_t)2048 * HID, cmax = wmax > amax ? wmax : amax;
    ag_rng r;
    ag_rng_seed(&r, 1);
    float *Wf = malloc(wmax * sizeof(float)), *X = malloc(amax * sizeof(float)), *Y = malloc(cmax * sizeof(float));
    float *X2 = malloc(amax * sizeof(float)); /* the f32 B of the dW rows (x) */
    uint16_t *Wb = malloc(wmax * sizeof(uint16_t));
    fill(Wf, wmax, &r);
    fill(X, amax, &r);
    fill(X2, amax, &r);
    fill(Y, cmax, &r);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < wmax; i++) Wb[i] = ag_f32_to_bf16(Wf[i]);
    size_t wsz = 0;
    for (int i = 0; i < ns; i++) {
        size_t z = kn_gemm_bf16_workspace(sh[i].M, sh[i].N, sh[i].K);
        if (z > wsz) wsz = z;
        z = kn_gemm_f32_workspace(sh[i].M, sh[i].N, sh[i].K);
        if (z > wsz) wsz = z;
    }
    void *work = NULL;
    if (posix_memalign(&work, 64, wsz ? wsz : 64)) return 1;
    memset(work, 0, wsz);

    printf("\n## GEMMs at the 7B layer shapes (dim 4096, hidden 11008), %d threads, best of %d\n", nt, reps);
    printf("sgemm: OpenBLAS, f32 W; f32: kn_gemm_f32, the same f32 operands; bf16: kn_gemm_bf16, bf16 W (x, dy in "
           "f32, rounded while packing)\n");
    printf("| T | GEMM | W | trans | M x N x K | sgemm GFLOP/s | %% f32 FMA peak | f32 GFLOP/s | %% zmm FMA peak | "
           "f32 / sgemm | bf16 GFLOP/s | %% vdpbf16ps peak | bf16 / sgemm |\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    double t_start = omp_get_wtime();
    kn_sgemm(0, 1, 512, DIM, DIM, 1.0f, X, DIM, Wf, DIM, 0.0f, Y, DIM); /* warm-up */
    if (bf16) kn_gemm_bf16(0, 1, 512, DIM, DIM, 1.0f, X, DIM, Wb, AG_BF16, DIM, 0.0f, Y, DIM, work);
    if (f32) kn_gemm_f32(0, 1, 512, DIM, DIM, 1.0f, X, DIM, Wf, AG_F32, DIM, 0.0f, Y, DIM, work);
    for (int i = 0; i < ns; i++) {
        const shape *s = &sh[i];
        double flops = 2.0 * s->M * s->N * s->K, best_s = 1e30, best_b = 1e30, best_f = 1e30;
        /* operands: A is x/dy [T, *] (or dy^T for dW), B is W (or x for dW) */
        int lda = s->tA ? s->M : s->K, ldb = s->tB ? s->K : s->N;
        const float *Bf = s->tA ? X2 : Wf;
        const void *Bb = s->tA ? (const void *)X2 : (const void *)Wb;
        ag_dtype bt = s->tA ? AG_F32 : AG_BF16;
        for (int rep = 1; rep <= reps; rep++) {
            double t0 = omp_get_wtime();
            kn_sgemm(s->tA, s->tB, s->M, s->N, s->K, 1.0f, X, lda, Bf, ldb, s->beta, Y, s->N);
            double dt = omp_get_wtime() - t0;
            if (dt < best_s) best_s = dt;
        }
        if (f32)
            for (int rep = 1; rep <= reps; rep++) {
                double t0 = omp_get_wtime();
                kn_gemm_f32(s->tA, s->tB, s->M, s->N, s->K, 1.0f, X, lda, Bf, AG_F32, ldb, s->beta, Y, s->N, work);
                double dt = omp_get_wtime() - t0;
                if (dt < best_f) best_f = dt;
            }
        if (bf16)
            for (int rep = 1; rep <= reps; rep++) {
                double t0 = omp_get_wtime();
                kn_gemm_bf16(s->tA, s->tB, s->M, s->N, s->K, 1.0f, X, lda, Bb, bt, ldb, s->beta, Y, s->N, work);
                double dt = omp_get_wtime() - t0;
                if (dt < best_b) best_b = dt;
            }
        double gs = flops / best_s * 1e-9, gb = bf16 ? flops / best_b * 1e-9 : 0, gf = f32 ? flops / best_f * 1e-9 : 0;
        char wname[32], dims[48], bcol[24], bpct[24], ratio[24], fcol[24], fpct[24], fratio[24];
        snprintf(wname, sizeof wname, "[%d,%d]", s->wn, s->wk);
        snprintf(dims, sizeof dims, "%d x %d x %d", s->M, s->N, s->K);
        snprintf(bcol, sizeof bcol, bf16 ? "%.1f" : "n/a", gb);
        snprintf(bpct, sizeof bpct, bf16 && pk_bf16 > 0 ? "%.1f%%" : "n/a", 100.0 * gb / (pk_bf16 > 0 ? pk_bf16 : 1));
        snprintf(ratio, sizeof ratio, bf16 ? "%.2fx" : "n/a", gb / gs);
        snprintf(fcol, sizeof fcol, f32 ? "%.1f" : "n/a", gf);
        snprintf(fpct, sizeof fpct, f32 && pk_zmm > 0 ? "%.1f%%" : "n/a", 100.0 * gf / (pk_zmm > 0 ? pk_zmm : 1));
        snprintf(fratio, sizeof fratio, f32 ? "%.2fx" : "n/a", gf / gs);
        printf("| %d | %s | %s | (%d,%d) | %s | %.1f | %.1f%% | %s | %s | %s | %s | %s | %s |\n", s->T, s->what, wname,
               s->tA, s->tB, dims, gs, 100.0 * gs / (pk_f32 > 0 ? pk_f32 : 1), fcol, fpct, fratio, bcol, bpct, ratio);
        fflush(stdout);
    }
    printf("\n# peaks used for %%: f32 FMA %.1f GFLOP/s (%s), zmm FMA %.1f GFLOP/s, vdpbf16ps %.1f GFLOP/s (each the "
           "larger of the %d-thread loop and %d x the 1-thread loop); GEMM part took %.1f s\n",
           pk_f32, pk_fma512 > pk_fma256 ? "zmm" : "ymm", pk_zmm, pk_bf16, nt, nt, omp_get_wtime() - t_start);
    free(Wf);
    free(X);
    free(X2);
    free(Y);
    free(Wb);
    free(work);
    return 0;
}
