/* GEMM kernels: OpenBLAS sgemm, its naive reference, and the linear layer y = x W^T with W in
 * f32, f16 or bf16. More than one row on a CPU with AVX-512F: our f32 GEMM (kn_gemm_f32, 16-bit
 * W converted exactly while packing; OpenBLAS may run an AVX2 kernel there). Otherwise OpenBLAS:
 * 16-bit weights are converted to f32 a tile of rows at a time into the caller's workspace and
 * multiplied by sgemm; nothing is converted twice per call and the converted tile never exceeds
 * LIN_TILE rows. One row (decoding): a matrix-vector product in W's own type. */
#include <cblas.h>
#include <omp.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KN_AVX2 1
#endif

#include "autograd/kernels/kernels.h"

#define LIN_TILE 256 /* rows of W converted per tile */

void kn_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void kn_sgemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int p = 0; p < K; p++) {
                double a = transA ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                double b = transB ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                acc += a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}

/* The f32 GEMM runs for T > 1 rows when the CPU has AVX-512F and the caller gave a workspace. */
static int use_gemm_f32(int T, const float *work) { return T > 1 && work && kn_f32_gemm_available(); }

/* The workspace rounded up to 64 bytes (kn_linear_workspace counts the slack). */
static void *gemm_work(float *work) { return (void *)(((uintptr_t)work + 63) & ~(uintptr_t)63); }

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

size_t kn_linear_workspace(ag_dtype wtype, int NI, int NO) {
    if (NI <= 0 || NO <= 0) return 0;
    /* the 16-bit tile (dx of a single row takes the tile path) */
    size_t tile = wtype == AG_F32 ? 0 : (size_t)(NO < LIN_TILE ? NO : LIN_TILE) * (size_t)NI;
    if (kn_f32_gemm_available()) { /* forward (T x NO x NI), dx (T x NI x NO), dW (NO x NI x T), any T */
        size_t bytes = zmax(kn_gemm_f32_workspace(-1, NO, NI), kn_gemm_f32_workspace(-1, NI, NO));
        if (wtype == AG_F32) bytes = zmax(bytes, kn_gemm_f32_workspace(NO, NI, -1));
        return zmax(tile, (bytes + 64 + sizeof(float) - 1) / sizeof(float));
    }
    return tile;
}

/* rows [r0, r0+n) of W as f32 into buf [n, NI] */
static void convert_rows(float *buf, const void *W, ag_dtype wtype, int r0, int n, int NI) {
    const uint16_t *src = (const uint16_t *)W + (size_t)r0 * NI;
    #pragma omp parallel for schedule(static) if ((size_t)n * NI > 65536)
    for (int r = 0; r < n; r++) ag_to_f32(buf + (size_t)r * NI, src + (size_t)r * NI, wtype, (size_t)NI);
}

/* dot(W row of NI 16-bit values, x) in float; 8-wide FMA when the CPU has AVX2/FMA/F16C. */
static float dot16(const uint16_t *w, const float *x, ag_dtype wtype, int NI) {
    int i = 0;
    float acc = 0.0f;
#ifdef KN_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= NI; i += 16) {
        __m256 w0, w1;
        if (wtype == AG_BF16) {
            w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i))), 16));
            w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w + i + 8))), 16));
        } else {
            w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i)));
            w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8)));
        }
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), a1);
    }
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    acc = _mm_cvtss_f32(h);
#endif
    for (; i < NI; i++) acc += (wtype == AG_BF16 ? ag_bf16_to_f32(w[i]) : ag_f16_to_f32(w[i])) * x[i];
    return acc;
}

/* Decoding (a single row): one pass over W, memory-bound, so read it once in its own type. */
static void matvec(float *y, const float *x, const void *W, ag_dtype wtype, int NI, int NO) {
    if (wtype == AG_F32) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, NO, NI, 1.0f, W, NI, x, 1, 0.0f, y, 1);
        return;
    }
    const uint16_t *w = W;
    #pragma omp parallel for schedule(static) if ((size_t)NI * NO > 65536)
    for (int o = 0; o < NO; o++) y[o] = dot16(w + (size_t)o * NI, x, wtype, NI);
}

void kn_linear_forward(float *y, const float *x, const void *W, ag_dtype wtype, int T, int NI, int NO,
                       float *work) {
    if (T == 0) return;
    if (T == 1) {
        matvec(y, x, W, wtype, NI, NO);
        return;
    }
    if (use_gemm_f32(T, work)) {
        kn_gemm_f32(0, 1, T, NO, NI, 1.0f, x, NI, W, wtype, NI, 0.0f, y, NO, gemm_work(work));
        return;
    }
    if (wtype == AG_F32) {
        kn_sgemm(0, 1, T, NO, NI, 1.0f, x, NI, W, NI, 0.0f, y, NO);
        return;
    }
    for (int r0 = 0; r0 < NO; r0 += LIN_TILE) {
        int n = NO - r0 < LIN_TILE ? NO - r0 : LIN_TILE;
        convert_rows(work, W, wtype, r0, n, NI);
        kn_sgemm(0, 1, T, n, NI, 1.0f, x, NI, work, NI, 0.0f, y + r0, NO);
    }
}

void kn_linear_backward_dx(float *dx, const float *dy, const void *W, ag_dtype wtype, int T, int NI,
                           int NO, float *work) {
    if (T == 0) return;
    if (use_gemm_f32(T, work)) {
        kn_gemm_f32(0, 0, T, NI, NO, 1.0f, dy, NO, W, wtype, NI, 1.0f, dx, NI, gemm_work(work));
        return;
    }
    if (wtype == AG_F32) {
        kn_sgemm(0, 0, T, NI, NO, 1.0f, dy, NO, W, NI, 1.0f, dx, NI);
        return;
    }
    for (int r0 = 0; r0 < NO; r0 += LIN_TILE) {
        int n = NO - r0 < LIN_TILE ? NO - r0 : LIN_TILE;
        convert_rows(work, W, wtype, r0, n, NI);
        kn_sgemm(0, 0, T, NI, n, 1.0f, dy + r0, NO, work, NI, 1.0f, dx, NI);
    }
}

void kn_linear_backward_dw(float *dW, const float *dy, const float *x, int T, int NI, int NO, float *work) {
    if (T == 0) return;
    if (use_gemm_f32(T, work)) {
        kn_gemm_f32(1, 0, NO, NI, T, 1.0f, dy, NO, x, AG_F32, NI, 1.0f, dW, NI, gemm_work(work));
        return;
    }
    kn_sgemm(1, 0, NO, NI, T, 1.0f, dy, NO, x, NI, 1.0f, dW, NI);
}
