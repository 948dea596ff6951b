/* bf16 GEMM with f32 accumulation on AVX512-BF16 (vdpbf16ps), chosen at run time.
 *
 *   C[M,N] = alpha * bf16(op(A)) bf16(op(B)) + beta * C        (row-major; shapes in kernels.h)
 *
 * The blocking, thread grid, packing of row-major panels, micro-kernel loop, prefetch and driver
 * are the skeleton shared with the f32 kernel (gemm_skel.h: structure and determinism are
 * described there). What is bf16 here: a packed word is a PAIR of consecutive k (panels
 * [kc/2][R][2] bf16, odd K padded with a 0), the micro-kernel's multiply-add is vdpbf16ps (32
 * multiply-adds per zmm), and packing rounds f32 (and f16, through its exact f32 value) to bf16
 * with round-to-nearest-even exactly as ag_f32_to_bf16 (integer arithmetic, so subnormals are
 * kept: the conversion instructions would flush them); bf16 B is copied as is.
 *
 * What it does not do: AMX (reported by kn_cpu() but never used), f16 arithmetic (f16 B is
 * rounded to bf16), any allocation, or run on CPUs without AVX512-BF16 (kn_bf16_gemm_available()
 * says so; the caller keeps its f32 path there). The AVX-512 code is compiled per function with
 * a target attribute, so the file builds and the binary runs on any x86-64 (and compiles to the
 * stubs on other architectures). vdpbf16ps treats bf16 subnormal inputs as zero (their products
 * are below 1e-38 and vanish in the f32 sums anyway). */
#include "autograd/kernels/kernels.h"

/* Blocking (compile-time: results depend on KC, so it never changes with the machine or the
 * thread count). 14 x 32 keeps 28 accumulators in zmm registers. KC (k, even) = 2048: the
 * micro-kernel streams a 128 KB B panel and a 57 KB A panel from L2, and C is read and written
 * once per 2048 of K (smaller KC measured slower: C traffic). MC = 112 rows (458 KB A block,
 * stays in L2 with the B panel), NC = 128 columns (512 KB B block), MA = 2688 rows per shared A
 * slice. Tuned on a 2-core Zen 5 (48 KB L1d, 1 MB L2 per core). */
#ifndef KN_BF16_MR
#define KN_BF16_MR 14
#endif
#ifndef KN_BF16_NV
#define KN_BF16_NV 2
#endif
#ifndef KN_BF16_KC
#define KN_BF16_KC 2048
#endif
#ifndef KN_BF16_MCP
#define KN_BF16_MCP 8 /* MC = MCP * MR */
#endif
#ifndef KN_BF16_NCP
#define KN_BF16_NCP 4 /* NC = NCP * NR */
#endif
#ifndef KN_BF16_MAB
#define KN_BF16_MAB 24 /* MA = MAB * MC: rows of A packed at once (one K slice), shared by threads */
#endif
#define SK_NAME "kn_gemm_bf16"
#define SK_ISA "AVX512-BF16"
#define SK_KP 2
#define SK_MR KN_BF16_MR
#define SK_NV KN_BF16_NV
#define SK_KC KN_BF16_KC
#define SK_MCP KN_BF16_MCP
#define SK_NCP KN_BF16_NCP
#define SK_MAB KN_BF16_MAB
#define SK_AVAILABLE() kn_bf16_gemm_available()
#define SK_TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define SK_MADD(acc, aw, bv) _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32((int)(aw)), (__m512bh)(bv))
#include "autograd/kernels/gemm_skel.h"

/* One operand value rounded to bf16, as a double. */
static double sk_value(const void *p, ag_dtype t, size_t i) {
    float f = t == AG_F32 ? ((const float *)p)[i]
            : t == AG_F16 ? ag_f16_to_f32(((const uint16_t *)p)[i])
                          : ag_bf16_to_f32(((const uint16_t *)p)[i]);
    return t == AG_BF16 ? f : ag_bf16_to_f32(ag_f32_to_bf16(f));
}

void kn_gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                      const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc) {
    sk_ref(transA, transB, M, N, K, alpha, A, lda, B, btype, ldb, beta, C, ldc);
}

size_t kn_gemm_bf16_workspace(int M, int N, int K) {
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    return sk_workspace(M, N, K);
}

int kn_bf16_gemm_available(void) {
#ifdef SK_X86
    return kn_cpu()->avx512bf16;
#else
    return 0;
#endif
}

void kn_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work) {
    sk_gemm(transA, transB, M, N, K, alpha, A, lda, B, btype, ldb, beta, C, ldc, work);
}

#ifdef SK_X86
/* f32 lanes to bf16 (round to nearest even, NaN kept quiet) in the low 16 bits of each lane. */
SK_TGT static inline __m512i round_bf16(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_mov_epi32(r, nan, q);
}

SK_TGT static inline __m256i f32x16_to_bf16(__m512 f) { return _mm512_cvtepi32_epi16(round_bf16(f)); }

static inline __mmask32 mask32(int e) { return e >= 32 ? (__mmask32)0xffffffffu : e <= 0 ? 0 : (__mmask32)((1u << e) - 1); }

/* 32 consecutive values p[0..32) of type t as bf16 (32 x u16 in a zmm: 16 pairs); values from e
 * on are 0 and are not read. */
SK_TGT static inline __m512i sk_load_words(const void *p, ag_dtype t, int e) {
    if (t == AG_BF16) return _mm512_maskz_loadu_epi16(mask32(e), p);
    __m512 lo, hi;
    if (t == AG_F16) {
        const uint16_t *h = p;
        lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(e), h));
        hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(e - 16), h + 16));
    } else {
        const float *f = p;
        lo = _mm512_maskz_loadu_ps(mask16(e), f);
        hi = _mm512_maskz_loadu_ps(mask16(e - 16), f + 16);
    }
    return _mm512_inserti64x4(_mm512_castsi256_si512(f32x16_to_bf16(lo)), f32x16_to_bf16(hi), 1);
}

/* Pairs from two consecutive rows of k: word p of lane l = (src[k0+2p][l], src[k0+2p+1][l]), 32
 * lanes per pair of loads. */
SK_TGT static void sk_pack_cols(uint32_t *dst, int R, size_t pstride, int W, const void *src, size_t ld, ag_dtype t,
                                int nv, int kc) {
    size_t es = ag_dtype_size(t);
    int np = (kc + 1) / 2;
    /* interleave the u16 of two rows: lo takes lanes 0..15 of each, hi lanes 16..31 */
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                         39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
    for (int p = 0; p < np; p++) {
        const char *r0 = (const char *)src + (size_t)(2 * p) * ld * es;
        const char *r1 = 2 * p + 1 < kc ? r0 + ld * es : NULL;
        for (int l = 0; l < W; l += 32) {
            int e = imax(0, imin(32, nv - l)), w = R - l % R;
            __m512i v0 = sk_load_words(r0 + (size_t)l * es, t, e);
            __m512i v1 = r1 ? sk_load_words(r1 + (size_t)l * es, t, e) : _mm512_setzero_si512();
            uint32_t *d = dst + (size_t)(l / R) * pstride + (size_t)p * R + l % R;
            _mm512_mask_storeu_epi32(d, mask16(w), _mm512_permutex2var_epi16(v0, ilo, v1));
            if (w > 16) _mm512_mask_storeu_epi32(d + 16, mask16(w - 16), _mm512_permutex2var_epi16(v0, ihi, v1));
        }
    }
}
#endif
