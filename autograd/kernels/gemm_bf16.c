/* bf16 GEMM with f32 accumulation on AVX512-BF16 (vdpbf16ps), chosen at run time.
 *
 *   C[M,N] = alpha * bf16(op(A)) bf16(op(B)) + beta * C        (row-major; shapes in kernels.h)
 *
 * Structure (GotoBLAS/BLIS style). Threads form a grid over C (N split first, M when N is narrow);
 * thread t owns C[m0:m1, n0:n1] and runs:
 *   for each MA-row super-block of its rows, for each KC-deep slice of K (pc):
 *     the threads of its grid row pack A[rows, pc:pc+kc] together as panels
 *       [rows/MR][kc/2][MR][2] bf16 (pairs of k per row; two slices in turn), one barrier;
 *     for each NC-wide block of its columns (jc):
 *       pack B[pc:pc+kc, jc:jc+nc] as panels [nc/NR][kc/2][NR][2] bf16 (its own buffer; the
 *       next block's source is prefetched while this one is multiplied)
 *       for each MC rows (ic), each NR panel of B (jr), each MR panel of A (ir):
 *         micro-kernel: an MR x NR tile of C in MR*NR/16 zmm accumulators; per k pair, NR/16
 *         vector loads of B and MR broadcasts of one 32-bit A pair, each feeding vdpbf16ps;
 *         then C = alpha*acc (+ beta*C on the first slice, + C on the others).
 * Packing rounds f32 (and f16, through its exact f32 value) to bf16 with round-to-nearest-even
 * exactly as ag_f32_to_bf16 (integer arithmetic, so subnormals are kept: the conversion
 * instructions would flush them); bf16 B is copied as is. Edges (any M, N, odd K) are zero-padded
 * in the packed panels and stored with masks, so the micro-kernel always runs full tiles.
 *
 * Determinism: nobody splits the K sum and KC is a compile-time constant, so every element of C
 * is summed in the same order whatever the thread count or grid: results are bit-identical for
 * 1, 2 or 64 threads, and from inside a parallel region (single-threaded).
 *
 * What it does not do: AMX (reported by kn_cpu() but never used), f16 arithmetic (f16 B is
 * rounded to bf16), any allocation, or run on CPUs without AVX512-BF16 (kn_bf16_gemm_available()
 * says so; the caller keeps its f32 path there). The AVX-512 code is compiled per function with
 * a target attribute, so the file builds and the binary runs on any x86-64 (and compiles to the
 * stubs on other architectures). vdpbf16ps treats bf16 subnormal inputs as zero (their products
 * are below 1e-38 and vanish in the f32 sums anyway). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/kernels/kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KN_BF16_X86 1
#endif

/* Blocking (compile-time: results depend on KC, so it never changes with the machine or the
 * thread count). MR x NR is the register tile, NR = 16 * NV: 14 x 32 keeps 28 accumulators in
 * zmm registers. KC (k, even) = 2048: the micro-kernel streams a 128 KB B panel and a 57 KB A
 * panel from L2, and C is read and written once per 2048 of K (smaller KC measured slower: C
 * traffic). MC = 112 rows (458 KB A block, stays in L2 with the B panel), NC = 128 columns
 * (512 KB B block), MA = 2688 rows per shared A slice. Tuned on a 2-core Zen 5 (48 KB L1d, 1 MB
 * L2 per core). */
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
#define MR KN_BF16_MR
#define NV KN_BF16_NV
#define NR (16 * NV)
#define KC KN_BF16_KC
#define MC (KN_BF16_MCP * MR)
#define NC (KN_BF16_NCP * NR)
#define MA (KN_BF16_MAB * MC)
_Static_assert(KC % 2 == 0 && MR >= 1 && MR <= 16 && NV >= 1 && NV <= 4, "blocking");

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- reference ------------------------------------------------------------------------------ */

/* One operand value rounded to bf16, as a double. */
static double bf16_value(const void *p, ag_dtype t, size_t i) {
    float f = t == AG_F32 ? ((const float *)p)[i]
            : t == AG_F16 ? ag_f16_to_f32(((const uint16_t *)p)[i])
                          : ag_bf16_to_f32(((const uint16_t *)p)[i]);
    return t == AG_BF16 ? f : ag_bf16_to_f32(ag_f32_to_bf16(f));
}

/* C = beta * C (0 when beta is 0, without reading C). */
static void scale_c(int M, int N, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f) memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int j = 0; j < N; j++) c[j] *= beta;
    }
}

void kn_gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                      const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc) {
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int p = 0; p < K; p++) {
                double a = bf16_value(A, AG_F32, transA ? (size_t)p * lda + i : (size_t)i * lda + p);
                double b = bf16_value(B, btype, transB ? (size_t)j * ldb + p : (size_t)p * ldb + j);
                acc += a * b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}

/* ---- workspace and thread grid -------------------------------------------------------------- */

/* The thread grid tm x tn (tm * tn = nth): threads in a grid row share one packed A slice (each
 * packs 1/tn of it) and own their columns' B blocks. Chosen to minimise the modelled per-thread
 * time: padded compute plus packing (A shared, B repacked per A super-block of MA rows); ties go
 * to the wider N split. A pure function of (nth, M, N), so the workspace size and every thread
 * agree on it. */
static void choose_grid(int nth, int M, int N, int *tm_out, int *tn_out) {
    int mt = (M + MR - 1) / MR, ntl = (N + NR - 1) / NR;
    double best = -1;
    *tm_out = *tn_out = 1;
    for (int tn = nth; tn >= 1; tn--) {
        if (nth % tn) continue;
        int tm = nth / tn;
        double rows = (double)((mt + tm - 1) / tm) * MR, cols = (double)((ntl + tn - 1) / tn) * NR;
        double cost = rows * cols / 64.0 + 0.25 * (rows / tn + cols * ceil(rows / MA));
        if (best < 0 || cost < best - 1e-9) best = cost, *tm_out = tm, *tn_out = tn;
    }
}

/* Threads a call uses: max_threads, or 1 for small products (no effect on the result). */
static int plan_threads(int M, int N, int K, int max_threads) {
    if ((double)M * N * K < 65536.0 * 16) return 1;
    return max_threads < 1 ? 1 : max_threads;
}

static int kc_max(int K) { return imin(KC, K + (K & 1)); }

/* Bytes of one packed A slice (rows of one grid row, at most MA) and of one thread's B block. */
static size_t a_slot_bytes(int M, int K, int tm) {
    int mt = (M + MR - 1) / MR;
    return align64((size_t)imin(MA, (mt + tm - 1) / tm * MR) * (size_t)(kc_max(K) / 2) * 4);
}
static size_t b_slot_bytes(int N, int K) {
    return align64((size_t)imin(NC, (N + NR - 1) / NR * NR) * (size_t)(kc_max(K) / 2) * 4);
}

/* Bytes of the A part of the workspace: the largest 2 * tm * a_slot over every team size the
 * call may get (a parallel region can get fewer threads than it asks for). */
static size_t a_part_bytes(int M, int N, int K, int nt) {
    size_t most = 0;
    for (int nth = 1; nth <= nt; nth++) {
        int tm, tn;
        choose_grid(nth, M, N, &tm, &tn);
        size_t z = (size_t)2 * tm * a_slot_bytes(M, K, tm); /* two slices per grid row */
        if (z > most) most = z;
    }
    return most;
}

size_t kn_gemm_bf16_workspace(int M, int N, int K) {
    if (M <= 0 || N <= 0 || K <= 0) return 0;
    int nt = plan_threads(M, N, K, omp_get_max_threads());
    return a_part_bytes(M, N, K, nt) + (size_t)nt * b_slot_bytes(N, K);
}

int kn_bf16_gemm_available(void) {
#ifdef KN_BF16_X86
    return kn_cpu()->avx512bf16;
#else
    return 0;
#endif
}

#ifdef KN_BF16_X86
/* ---- AVX-512 code (compiled for these features only, called only when kn_cpu() has them) ---- */
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* f32 lanes to bf16 (round to nearest even, NaN kept quiet) in the low 16 bits of each lane. */
TGT static inline __m512i round_bf16(__m512 f) {
    __m512i u = _mm512_castps_si512(f);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    __m512i q = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_mov_epi32(r, nan, q);
}

TGT static inline __m256i f32x16_to_bf16(__m512 f) { return _mm512_cvtepi32_epi16(round_bf16(f)); }

static inline __mmask16 mask16(int e) { return e >= 16 ? (__mmask16)0xffff : e <= 0 ? 0 : (__mmask16)((1u << e) - 1); }
static inline __mmask32 mask32(int e) { return e >= 32 ? (__mmask32)0xffffffffu : e <= 0 ? 0 : (__mmask32)((1u << e) - 1); }

/* 32 consecutive values p[0..32) of type t as bf16 (32 x u16 in a zmm); values from e on are 0
 * and are not read. */
TGT static inline __m512i load32_bf16(const void *p, ag_dtype t, int e) {
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

/* In-place transpose of a 16 x 16 matrix of 32-bit elements (r[i] is row i). */
TGT static inline void transpose16(__m512i r[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int j = 0; j < 4; j++) {
        b[4 * j + 0] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
        b[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
        b[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
    }
    /* b[4j+c] lane L holds column 4L+c of rows 4j..4j+3 */
    for (int c = 0; c < 4; c++) {
        __m512i p = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), q = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
        __m512i p2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), q2 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
        r[c] = _mm512_shuffle_i32x4(p, p2, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(p, p2, 0xdd);
        r[8 + c] = _mm512_shuffle_i32x4(q, q2, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(q, q2, 0xdd);
    }
}

/* Pack one panel of width R (lanes) from a source whose rows are the lanes and whose k runs along
 * each row (A without transA, B with transB): dst[p][l] = pair(src[l][k0+2p], src[l][k0+2p+1]),
 * p < ceil(kc/2), l < R; lanes from nv on (rows past the matrix) and k from kc on are 0.
 * src: row 0 of the panel at column k0 = 0 of the slice; ld in elements; t its type. */
TGT static void pack_rows(uint32_t *dst, int R, const void *src, size_t ld, ag_dtype t, int nv, int kc) {
    size_t es = ag_dtype_size(t);
    int np = (kc + 1) / 2;
    for (int g = 0; g * 16 < R; g++) {
        int lanes = imin(16, R - 16 * g), rv = imax(0, imin(lanes, nv - 16 * g));
        __mmask16 sm = mask16(lanes);
        for (int p0 = 0; p0 < np; p0 += 16) {
            int e = imin(32, kc - 2 * p0);
            __m512i r[16];
            for (int l = 0; l < 16; l++)
                r[l] = l < rv ? load32_bf16((const char *)src + ((size_t)(16 * g + l) * ld + 2 * (size_t)p0) * es, t, e)
                              : _mm512_setzero_si512();
            transpose16(r);
            int q_end = imin(16, np - p0);
            for (int q = 0; q < q_end; q++) _mm512_mask_storeu_epi32(dst + (size_t)(p0 + q) * R + 16 * g, sm, r[q]);
        }
    }
}

/* Pack one panel of width R from a source whose rows are k and whose lanes run along each row
 * (B without transB, A with transA): dst[p][l] = pair(src[k0+2p][l], src[k0+2p+1][l]); lanes
 * from nv on and k from kc on are 0. src: element (k0, lane 0); ld in elements. */
TGT static void pack_cols(uint32_t *dst, int R, const void *src, size_t ld, ag_dtype t, int nv, int kc) {
    size_t es = ag_dtype_size(t);
    int np = (kc + 1) / 2;
    /* interleave the u16 of two rows: lo takes lanes 0..15 of each, hi lanes 16..31 */
    const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                         39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
    for (int p = 0; p < np; p++) {
        const char *r0 = (const char *)src + (size_t)(2 * p) * ld * es;
        const char *r1 = 2 * p + 1 < kc ? r0 + ld * es : NULL;
        for (int g = 0; g * 32 < R; g++) {
            int e = imax(0, imin(32, nv - 32 * g)), w = R - 32 * g;
            __m512i v0 = load32_bf16(r0 + (size_t)(32 * g) * es, t, e);
            __m512i v1 = r1 ? load32_bf16(r1 + (size_t)(32 * g) * es, t, e) : _mm512_setzero_si512();
            uint32_t *d = dst + (size_t)p * R + 32 * g;
            _mm512_mask_storeu_epi32(d, mask16(w), _mm512_permutex2var_epi16(v0, ilo, v1));
            if (w > 16) _mm512_mask_storeu_epi32(d + 16, mask16(w - 16), _mm512_permutex2var_epi16(v0, ihi, v1));
        }
    }
}

typedef struct gemm_args {
    int transA, transB, M, N, K;
    float alpha, beta;
    const float *A;
    int lda;
    const void *B;
    ag_dtype bt;
    int ldb;
    float *C;
    int ldc;
} gemm_args;

/* B[pc:pc+kc, jc:jc+nc] as ceil(nc/NR) panels of ceil(kc/2) * NR pairs. */
TGT static void pack_b(uint32_t *bp, const gemm_args *g, int pc, int kc, int jc, int nc) {
    size_t es = ag_dtype_size(g->bt), psz = (size_t)((kc + 1) / 2) * NR;
    for (int j = 0; j < nc; j += NR) {
        int nv = imin(NR, nc - j);
        uint32_t *d = bp + (size_t)(j / NR) * psz;
        if (g->transB) /* B is [N,K]: rows are columns of op(B) */
            pack_rows(d, NR, (const char *)g->B + ((size_t)(jc + j) * g->ldb + pc) * es, g->ldb, g->bt, nv, kc);
        else /* B is [K,N] */
            pack_cols(d, NR, (const char *)g->B + ((size_t)pc * g->ldb + jc + j) * es, g->ldb, g->bt, nv, kc);
    }
}

/* A[ic:ic+mc, pc:pc+kc] (of op(A)) as ceil(mc/MR) panels of ceil(kc/2) * MR pairs. */
TGT static void pack_a(uint32_t *ap, const gemm_args *g, int pc, int kc, int ic, int mc) {
    size_t psz = (size_t)((kc + 1) / 2) * MR;
    for (int i = 0; i < mc; i += MR) {
        int nv = imin(MR, mc - i);
        uint32_t *d = ap + (size_t)(i / MR) * psz;
        if (g->transA) /* A is [K,M] */
            pack_cols(d, MR, g->A + (size_t)pc * g->lda + ic + i, g->lda, AG_F32, nv, kc);
        else /* A is [M,K] */
            pack_rows(d, MR, g->A + (size_t)(ic + i) * g->lda + pc, g->lda, AG_F32, nv, kc);
    }
}

/* The micro-kernel: C[0:mr, 0:nr] (ldc) = / += alpha * sum over np k pairs of a[p][i] . b[p][j].
 * a: [np][MR] pairs, b: [np][NR] pairs (64-byte aligned). mode 0: C = alpha*acc (C not read);
 * 1: C = alpha*acc + beta*C; 2: C += alpha*acc. */
TGT static void ukernel(int np, const uint32_t *restrict a, const uint32_t *restrict b, float *C, int ldc, int mr,
                        int nr, float alpha, float beta, int mode) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        /* the C tile is needed only at the end: fetch it now (first and last byte of each row) */
        _mm_prefetch((const char *)(C + (size_t)i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(C + (size_t)i * ldc + NR - 1), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    }
    for (int p = 0; p < np; p++) {
        __m512bh bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = (__m512bh)_mm512_load_si512(b + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
        }
        a += MR;
        b += NR;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __mmask16 m[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) m[v] = mask16(nr - 16 * v);
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *c = C + (size_t)i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            __m512 r;
            if (mode == 0) r = _mm512_mul_ps(va, acc[i][v]);
            else {
                __m512 old = _mm512_maskz_loadu_ps(m[v], c + 16 * v);
                r = _mm512_fmadd_ps(va, acc[i][v], mode == 1 ? _mm512_mul_ps(vb, old) : old);
            }
            _mm512_mask_storeu_ps(c + 16 * v, m[v], r);
        }
    }
}

/* Software prefetch of the next B block's source while the current one is multiplied: the
 * weights come from DRAM once per call, and packing would otherwise wait for them. A cursor
 * walks rows x lines of a strided region, a few lines per micro-kernel call. */
typedef struct pf_cursor {
    const char *base; /* first byte of row 0 (rounded down to a line) */
    size_t stride;    /* bytes between rows */
    int lines, rows;  /* lines per row, rows */
    int r, l;         /* position */
} pf_cursor;

static void pf_set(pf_cursor *c, const void *first, size_t stride, size_t row_bytes, int rows) {
    uintptr_t a = (uintptr_t)first, a0 = a & ~(uintptr_t)63;
    c->base = (const char *)a0;
    c->stride = stride;
    c->lines = (int)((a - a0 + row_bytes + 63) / 64);
    c->rows = rows;
    c->r = c->l = 0;
}

TGT static inline void pf_step(pf_cursor *c, int n) {
    for (; n > 0 && c->r < c->rows; n--) {
        _mm_prefetch(c->base + (size_t)c->r * c->stride + (size_t)c->l * 64, _MM_HINT_T1);
        if (++c->l == c->lines) c->l = 0, c->r++;
    }
}

/* The source of B block (pc, kc, jc, nc) as a prefetch cursor. */
static void pf_b(pf_cursor *c, const gemm_args *g, int pc, int kc, int jc, int nc) {
    size_t es = ag_dtype_size(g->bt), ld = (size_t)g->ldb * es;
    if (g->transB) pf_set(c, (const char *)g->B + (size_t)jc * ld + (size_t)pc * es, ld, (size_t)kc * es, nc);
    else pf_set(c, (const char *)g->B + (size_t)pc * ld + (size_t)jc * es, ld, (size_t)nc * es, kc);
}

/* Tiles [lo, hi) of n tiles split into parts: part q of parts (balanced, contiguous). */
static void split(int ntiles, int parts, int q, int *lo, int *hi) {
    int base = ntiles / parts, rem = ntiles % parts;
    *lo = q * base + imin(q, rem);
    *hi = *lo + base + (q < rem);
}

/* Thread t of nth: its block of C in the grid, C[m0:m1, n0:n1]. Loop order: rows in super-blocks
 * of MA and K in slices of KC (the grid row's threads pack the A slice together, then one
 * barrier); columns in blocks of NC (B packed by this thread, the next block's source prefetched
 * meanwhile); then MC rows at a time so the A block stays in L2 while the NR panels of B pass
 * through. Each C element adds the K slices in order (pc = 0 applies beta), whoever computes it.
 * Every thread runs the same number of barriers, with or without work. */
TGT static void run_thread(const gemm_args *g, int nth, int t, char *work, size_t a_part, size_t b_slot) {
    int tm, tn;
    choose_grid(nth, g->M, g->N, &tm, &tn);
    int mt = (g->M + MR - 1) / MR, ntl = (g->N + NR - 1) / NR, r = t / tn, c = t % tn;
    int mlo, mhi, nlo, nhi;
    split(mt, tm, r, &mlo, &mhi);
    split(ntl, tn, c, &nlo, &nhi);
    int m0 = mlo * MR, m1 = imin(g->M, mhi * MR), n0 = nlo * NR, n1 = imin(g->N, nhi * NR);
    int rows_most = imin(g->M, (mt + tm - 1) / tm * MR), n_super = (rows_most + MA - 1) / MA;
    /* two A slices per grid row, used in turn: while a thread packs slice i+1, the others may
     * still multiply with slice i, and slice i-1 is free (everyone passed the barrier after it) */
    size_t a_slot = a_slot_bytes(g->M, g->K, tm);
    uint32_t *bp = (uint32_t *)(work + a_part + (size_t)t * b_slot);
    int turn = 0;
    for (int sb = 0; sb < n_super; sb++) {
        int ia = m0 + sb * MA, ma = imax(0, imin(MA, m1 - ia));
        for (int pc = 0; pc < g->K; pc += KC, turn ^= 1) {
            int kc = imin(KC, g->K - pc), np = (kc + 1) / 2;
            int mode = pc > 0 ? 2 : g->beta == 0.0f ? 0 : 1;
            uint32_t *ap = (uint32_t *)(work + (size_t)(2 * r + turn) * a_slot);
            for (int p = c; p * MR < ma; p += tn)
                pack_a(ap + (size_t)p * np * MR, g, pc, kc, ia + p * MR, imin(MR, ma - p * MR));
            int busy = ma > 0 && n0 < n1;
            if (busy) pack_b(bp, g, pc, kc, n0, imin(NC, n1 - n0)); /* needs no A: before the wait */
            if (nth > 1) {
#pragma omp barrier
            } /* the slice is complete */
            if (!busy) continue;
            for (int jc = n0; jc < n1; jc += NC) {
                int nc = imin(NC, n1 - jc);
                if (jc > n0) pack_b(bp, g, pc, kc, jc, nc);
                /* the block packed next: same slice, next columns; else next slice; else next rows */
                pf_cursor pf = {0};
                if (jc + NC < n1) pf_b(&pf, g, pc, kc, jc + NC, imin(NC, n1 - jc - NC));
                else if (pc + KC < g->K) pf_b(&pf, g, pc + KC, imin(KC, g->K - pc - KC), n0, imin(NC, n1 - n0));
                else if (ia + MA < m1) pf_b(&pf, g, 0, imin(KC, g->K), n0, imin(NC, n1 - n0));
                int calls = ((ma + MR - 1) / MR) * ((nc + NR - 1) / NR);
                int per_call = (pf.rows * pf.lines + calls - 1) / calls;
                for (int ic = 0; ic < ma; ic += MC) {
                    int mc = imin(MC, ma - ic);
                    for (int jr = 0; jr < nc; jr += NR) {
                        const uint32_t *b = bp + (size_t)(jr / NR) * np * NR;
                        for (int ir = ic; ir < ic + mc; ir += MR) {
                            ukernel(np, ap + (size_t)(ir / MR) * np * MR, b,
                                    g->C + (size_t)(ia + ir) * g->ldc + jc + jr, g->ldc, imin(MR, ma - ir),
                                    imin(NR, nc - jr), g->alpha, g->beta, mode);
                            pf_step(&pf, per_call);
                        }
                    }
                }
            }
        }
    }
}

static void gemm_avx512(const gemm_args *g, void *work) {
    int nt = plan_threads(g->M, g->N, g->K, omp_in_parallel() ? 1 : omp_get_max_threads());
    size_t a_part = a_part_bytes(g->M, g->N, g->K, nt), b_slot = b_slot_bytes(g->N, g->K);
#pragma omp parallel num_threads(nt) if (nt > 1)
    run_thread(g, omp_get_num_threads(), omp_get_thread_num(), work, a_part, b_slot);
}
#endif /* KN_BF16_X86 */

void kn_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work) {
    AG_ASSERT(M >= 0 && N >= 0 && K >= 0, "kn_gemm_bf16: M %d N %d K %d", M, N, K);
    AG_ASSERT(btype == AG_F32 || btype == AG_F16 || btype == AG_BF16, "kn_gemm_bf16: btype %d", (int)btype);
    if (M == 0 || N == 0) return;
    AG_ASSERT(ldc >= N, "kn_gemm_bf16: ldc %d < N %d", ldc, N);
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    AG_ASSERT(lda >= (transA ? M : K) && ldb >= (transB ? K : N), "kn_gemm_bf16: lda %d ldb %d for M %d N %d K %d",
              lda, ldb, M, N, K);
    AG_ASSERT(kn_bf16_gemm_available(), "kn_gemm_bf16: this CPU has no usable AVX512-BF16 (%s)", kn_cpu()->brand);
    AG_ASSERT(work && ((uintptr_t)work & 63) == 0, "kn_gemm_bf16: workspace must be 64-byte aligned");
#ifdef KN_BF16_X86
    gemm_args g = {transA, transB, M, N, K, alpha, beta, A, lda, B, btype, ldb, C, ldc};
    gemm_avx512(&g, work);
#endif
}
