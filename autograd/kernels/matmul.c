/* GEMM kernels: OpenBLAS sgemm, its naive reference, and the linear layer y = x W^T with W in
 * f32, f16 or bf16. 16-bit weights are converted to f32 a tile of rows at a time into the
 * caller's workspace and multiplied by sgemm; nothing is converted twice per call and the
 * converted tile never exceeds LIN_TILE rows. This is the one place a bf16/AMX path would go. */
#include <cblas.h>
#include <omp.h>
#include <string.h>

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

size_t kn_linear_workspace(ag_dtype wtype, int NI, int NO) {
    if (wtype == AG_F32) return 0;
    return (size_t)(NO < LIN_TILE ? NO : LIN_TILE) * (size_t)NI;
}

/* rows [r0, r0+n) of W as f32 into buf [n, NI] */
static void convert_rows(float *buf, const void *W, ag_dtype wtype, int r0, int n, int NI) {
    const uint16_t *src = (const uint16_t *)W + (size_t)r0 * NI;
    #pragma omp parallel for schedule(static) if ((size_t)n * NI > 65536)
    for (int r = 0; r < n; r++) ag_to_f32(buf + (size_t)r * NI, src + (size_t)r * NI, wtype, (size_t)NI);
}

void kn_linear_forward(float *y, const float *x, const void *W, ag_dtype wtype, int T, int NI, int NO,
                       float *work) {
    if (T == 0) return;
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

void kn_linear_backward_dw(float *dW, const float *dy, const float *x, int T, int NI, int NO) {
    if (T == 0) return;
    kn_sgemm(1, 0, NO, NI, T, 1.0f, dy, NO, x, NI, 1.0f, dW, NI);
}
