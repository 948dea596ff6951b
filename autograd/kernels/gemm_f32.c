/* f32 GEMM on AVX-512F (vfmadd231ps on zmm), chosen at run time: the f32 path's linear layers.
 *
 *   C[M,N] = alpha * op(A) op(B) + beta * C        (row-major; shapes in kernels.h)
 *
 * Why: OpenBLAS sgemm runs an AVX2 kernel on some AVX-512 CPUs (e.g. Zen 5 under
 * OPENBLAS_CORETYPE=Haswell), under half of the zmm FMA peak. The blocking, thread grid, packing
 * of row-major panels, micro-kernel loop, prefetch and driver are the skeleton shared with the
 * bf16 kernel (gemm_skel.h: structure and determinism are described there). What is f32 here: a
 * packed word is one f32 value of one k, the micro-kernel's multiply-add is an f32 FMA (16 per
 * zmm), and packing converts B exactly (f16 with vcvtph2ps, bf16 by a 16-bit shift; subnormals
 * kept, NaN and infinities carried), so the products and sums are those of f32 arithmetic on
 * the operands' exact values. Each element is summed k by k in one f32 accumulator per KC slice
 * (fused multiply-add, no intermediate rounding of the products), the slices added to C in order.
 *
 * What it does not do: allocate, or run on CPUs without AVX-512F (kn_f32_gemm_available() says
 * so; the caller keeps OpenBLAS there). Only AVX-512F instructions are used (no BW/VL/DQ), and the
 * code is compiled per function with a target attribute, so the file builds and the binary runs
 * on any x86-64 (and compiles to the stubs on other architectures). */
#include "autograd/kernels/kernels.h"

/* Blocking (compile-time: results depend on KC). 14 x 32 keeps 28 accumulators in zmm registers
 * (two FMA pipes of 4 cycles' latency need 8). KC = 1024: the same bytes per packed slice as the
 * bf16 kernel's 2048 (a 128 KB B panel and a 57 KB A panel streamed from L2; 256 and 512
 * measured no faster). MC = 112 rows, NC = 128 columns, MA = 2128 rows per shared A slice: the
 * recipe's micro-batch (4 x 512 tokens) in one super-block, so the weights are read and packed
 * once per call, and a workspace for any number of rows of 2 x 2128 x 1024 x 4 bytes (17 MB)
 * plus 512 KB per thread. */
#ifndef KN_F32_MR
#define KN_F32_MR 14
#endif
#ifndef KN_F32_NV
#define KN_F32_NV 2
#endif
#ifndef KN_F32_KC
#define KN_F32_KC 1024
#endif
#ifndef KN_F32_MCP
#define KN_F32_MCP 8
#endif
#ifndef KN_F32_NCP
#define KN_F32_NCP 4
#endif
#ifndef KN_F32_MAB
#define KN_F32_MAB 19
#endif
#define SK_NAME "kn_gemm_f32"
#define SK_ISA "AVX-512F"
#define SK_KP 1
#define SK_MR KN_F32_MR
#define SK_NV KN_F32_NV
#define SK_KC KN_F32_KC
#define SK_MCP KN_F32_MCP
#define SK_NCP KN_F32_NCP
#define SK_MAB KN_F32_MAB
#define SK_AVAILABLE() kn_f32_gemm_available()
#define SK_TGT __attribute__((target("avx512f")))
#define SK_MADD(acc, aw, bv) \
    _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_set1_epi32((int)(aw))), _mm512_castsi512_ps(bv), acc)
#include "autograd/kernels/gemm_skel.h"

/* One operand value (exact), as a double. */
static double sk_value(const void *p, ag_dtype t, size_t i) {
    return t == AG_F32 ? ((const float *)p)[i]
         : t == AG_F16 ? ag_f16_to_f32(((const uint16_t *)p)[i])
                       : ag_bf16_to_f32(((const uint16_t *)p)[i]);
}

void kn_gemm_f32_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                     const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc) {
    sk_ref(transA, transB, M, N, K, alpha, A, lda, B, btype, ldb, beta, C, ldc);
}

size_t kn_gemm_f32_workspace(int M, int N, int K) { return sk_workspace(M, N, K); }

int kn_f32_gemm_available(void) {
#ifdef SK_X86
    return kn_cpu()->avx512f;
#else
    return 0;
#endif
}

void kn_gemm_f32(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                 ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work) {
    sk_gemm(transA, transB, M, N, K, alpha, A, lda, B, btype, ldb, beta, C, ldc, work);
}

#ifdef SK_X86
/* 16 consecutive values p[0..16) of type t as f32 words; values from e on are 0 and not read. */
SK_TGT static inline __m512i sk_load_words(const void *p, ag_dtype t, int e) {
    if (t == AG_F32) return _mm512_castps_si512(_mm512_maskz_loadu_ps(mask16(e), p));
    __m256i h;
    if (e >= 16) h = _mm256_loadu_si256((const __m256i *)p);
    else { /* masked 16-bit loads need AVX512BW: copy the tail */
        uint16_t tmp[16] = {0};
        if (e > 0) memcpy(tmp, p, (size_t)e * 2);
        h = _mm256_loadu_si256((const __m256i *)tmp);
    }
    if (t == AG_F16) return _mm512_castps_si512(_mm512_cvtph_ps(h));
    return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16); /* bf16: the high half of an f32 */
}

/* Rows of k copied: word p of lane l = src[k0+p][l], 16 lanes per load. */
SK_TGT static void sk_pack_cols(uint32_t *dst, int R, size_t pstride, int W, const void *src, size_t ld, ag_dtype t,
                                int nv, int kc) {
    size_t es = ag_dtype_size(t);
    for (int p = 0; p < kc; p++) {
        const char *row = (const char *)src + (size_t)p * ld * es;
        for (int l = 0; l < W; l += 16)
            _mm512_mask_storeu_epi32(dst + (size_t)(l / R) * pstride + (size_t)p * R + l % R, mask16(R - l % R),
                                     sk_load_words(row + (size_t)l * es, t, imax(0, imin(16, nv - l))));
    }
}
#endif
