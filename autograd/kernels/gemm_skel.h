/* The skeleton shared by the AVX-512 GEMMs (gemm_bf16.c: vdpbf16ps on bf16 pairs; gemm_f32.c:
 * vfmadd231ps on f32): blocking, thread grid, workspace, packing of row-major panels, the
 * micro-kernel loop, B prefetch, the driver, the argument checks and the naive reference. Each
 * of the two files defines its element type's hooks and includes this header once; everything
 * here is static, so the two copies never meet.
 *
 *   C[M,N] = alpha * op(A) op(B) + beta * C        (row-major; shapes and flags in kernels.h)
 *
 * The unit of packing is a 32-bit WORD holding SK_KP consecutive k of one row (bf16: a pair, so
 * SK_KP 2; f32: one value, SK_KP 1); a panel of width R is [ceil(kc/SK_KP)][R] words, k-major.
 *
 * Structure (GotoBLAS/BLIS style). Threads form a grid of tm rows of tn threads (tm > 1 only
 * when N is narrow); grid row r owns rows C[m0:m1] and its threads run:
 *   for each super-block of the rows (MA / tm rows), for each KC-deep slice of K (pc):
 *     the threads of the grid row pack A[rows, pc:pc+kc] together as MR-wide panels (two slices
 *       in turn), one barrier;
 *     for each column block (at most NC wide) the thread takes from the grid row's counter:
 *       pack B[pc:pc+kc, jc:jc+nc] as NR-wide panels (its own buffer; the source of the block it
 *       takes next is prefetched while this one is multiplied)
 *       for each MC rows (ic), each NR panel of B (jr), each MR panel of A (ir):
 *         micro-kernel: an MR x NR tile of C in MR*NR/16 zmm accumulators; per word, NR/16 vector
 *         loads of B and MR broadcasts of one A word, each feeding SK_MADD;
 *         then C = alpha*acc (+ beta*C on the first slice, + C on the others).
 * Edges (any M, N, K) are zero-padded in the packed panels and stored with masks, so the
 * micro-kernel always runs full tiles.
 *
 * Determinism: nobody splits the K sum and KC is a compile-time constant, so every element of C
 * is summed in the same order whatever the thread count, grid, super-block or which thread took
 * its column block: results are bit-identical for 1, 2 or 64 threads, and from inside a parallel
 * region (single-threaded). An
 * element depends only on its row of op(A), its column of op(B), K, alpha, beta and its old
 * value: never on M, N, the strides or its place in a block (row independence).
 *
 * The includer defines, before including:
 *   SK_NAME, SK_ISA    "kn_gemm_xxx" and the instruction set it needs ("AVX-512F"), for messages
 *   SK_KP              k per packed word (1 or 2)
 *   SK_MR, SK_NV, SK_KC, SK_MCP, SK_NCP, SK_MAB   blocking (see below)
 *   SK_AVAILABLE()     1 when this CPU can run the AVX-512 code
 *   SK_TGT             the target attribute of the AVX-512 code
 *   SK_MADD(acc, aw, bv)  acc (__m512) + the products of A word aw (uint32_t, broadcast) with the
 *                      16 B words of bv (__m512i)
 * and after it, as static functions:
 *   double sk_value(const void *p, ag_dtype t, size_t i)  operand i as the kernel multiplies it
 *   SK_TGT __m512i sk_load_words(const void *p, ag_dtype t, int e): 16 words made of the
 *       16 * SK_KP consecutive values of type t at p (values from e on are 0 and not read)
 *   SK_TGT void sk_pack_cols(uint32_t *dst, int R, size_t pstride, int W, const void *src, size_t ld,
 *       ag_dtype t, int nv, int kc): W lanes as ceil(W/R) panels of width R, pstride words apart,
 *       from a source whose rows are k and whose lanes run along each row (B without transB, A
 *       with transA): word p of lane l, at dst[(l / R) pstride + p R + l % R], holds
 *       src[k0 + SK_KP p + q][l]; lanes from nv on and k from kc on are 0. src: element (k0,
 *       lane 0); ld in elements. W == R (one panel), or R a multiple of 16 * SK_KP (the lanes
 *       one load gives) so that no load straddles two panels; a whole row of the block is read
 *       at once (source rows are far apart: reading them panel by panel thrashes L1 sets).
 * It defines the static functions sk_ref, sk_workspace and sk_gemm that the public API wraps. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/kernels/kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SK_X86 1
#endif

/* Blocking. MR x NR is the register tile, NR = 16 * NV (14 x 32: 28 zmm accumulators). KC (k, a
 * multiple of SK_KP) is the depth of a packed slice: results depend on it, so it is fixed at
 * compile time. MC = MCP * MR rows per A block (kept in L2 while B panels pass), NC = NCP * NR
 * columns per B block, MA = MAB * MC rows per shared A slice (split between the grid rows). */
#define MR SK_MR
#define NV SK_NV
#define NR (16 * NV)
#define KC SK_KC
#define KP SK_KP
#define MC (SK_MCP * MR)
#define NC (SK_NCP * NR)
#define MA (SK_MAB * MC)
_Static_assert(KC % KP == 0 && MR >= 1 && MR <= 16 && NV >= 1 && NV <= 4 && (KP == 1 || KP == 2), "blocking");

static int imin(int a, int b) { return a < b ? a : b; }
static int imax(int a, int b) { return a > b ? a : b; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static double sk_value(const void *p, ag_dtype t, size_t i);

/* ---- reference ------------------------------------------------------------------------------ */

/* C = beta * C (0 when beta is 0, without reading C). */
static void scale_c(int M, int N, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f) memset(c, 0, (size_t)N * sizeof(float));
        else if (beta != 1.0f)
            for (int j = 0; j < N; j++) c[j] *= beta;
    }
}

/* The naive triple loop: operands as sk_value gives them, products summed in double. */
static void sk_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                   ag_dtype btype, int ldb, float beta, float *C, int ldc) {
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0;
            for (int p = 0; p < K; p++) {
                double a = sk_value(A, AG_F32, transA ? (size_t)p * lda + i : (size_t)i * lda + p);
                double b = sk_value(B, btype, transB ? (size_t)j * ldb + p : (size_t)p * ldb + j);
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

/* Threads a call uses: max_threads, or 1 for small products (no effect on the result). M or K
 * negative: unknown (any size), as large. */
static int plan_threads(int M, int N, int K, int max_threads) {
    if (M >= 0 && K >= 0 && (double)M * N * K < 65536.0 * 16) return 1;
    return max_threads < 1 ? 1 : max_threads;
}

/* Rows of one super-block of a grid row: the MA rows of a shared slice split between the tm grid
 * rows (so the A part of the workspace stays near 2 MA slices whatever the grid). */
static int sb_rows(int tm) { return imax(MR, MA / tm / MR * MR); }

/* Words per packed row of a slice, at most (K < 0: any K). */
static int words_max(int K) { return K < 0 ? KC / KP : (imin(KC, K) + KP - 1) / KP; }

/* Bytes of one packed A slice (one super-block of a grid row; M < 0: any M) and of one thread's
 * B block. */
static size_t a_slot_bytes(int M, int K, int tm) {
    int rows = sb_rows(tm);
    if (M >= 0) rows = imin(rows, ((M + MR - 1) / MR + tm - 1) / tm * MR);
    return align64((size_t)rows * (size_t)words_max(K) * 4);
}
static size_t b_slot_bytes(int N, int K) {
    return align64((size_t)imin(NC, (N + NR - 1) / NR * NR) * (size_t)words_max(K) * 4);
}

/* Bytes of the A part of the workspace: the largest 2 * tm * a_slot over every team size the
 * call may get (a parallel region can get fewer threads than it asks for); M < 0: over every
 * grid a team of that size may take. */
static size_t a_part_bytes(int M, int N, int K, int nt) {
    size_t most = 0;
    for (int nth = 1; nth <= nt; nth++) {
        int tm = 1, tn = 1;
        if (M >= 0) choose_grid(nth, M, N, &tm, &tn);
        for (int d = 1; d <= nth; d++) {
            if (M >= 0 ? d != tm : nth % d != 0) continue; /* M unknown: every divisor of nth */
            size_t z = (size_t)2 * d * a_slot_bytes(M, K, d); /* two slices per grid row */
            if (z > most) most = z;
        }
    }
    return most;
}

#define CTR_BYTES 64 /* one column-block counter per grid row, a cache line each */

/* Bytes of workspace for a call (M or K < 0: enough for any M, any K): the counters, the packed
 * A slices, one B block per thread. */
static size_t sk_workspace(int M, int N, int K) {
    if (M == 0 || N <= 0 || K == 0) return 0;
    int nt = plan_threads(M, N, K, omp_get_max_threads());
    return align64((size_t)nt * CTR_BYTES) + a_part_bytes(M, N, K, nt) + (size_t)nt * b_slot_bytes(N, K);
}

#ifdef SK_X86
/* ---- AVX-512 code (compiled for SK_TGT only, called only when SK_AVAILABLE()) ---------------- */

static inline __mmask16 mask16(int e) { return e >= 16 ? (__mmask16)0xffff : e <= 0 ? 0 : (__mmask16)((1u << e) - 1); }

SK_TGT static inline __m512i sk_load_words(const void *p, ag_dtype t, int e);
SK_TGT static void sk_pack_cols(uint32_t *dst, int R, size_t pstride, int W, const void *src, size_t ld, ag_dtype t,
                                int nv, int kc);

/* In-place transpose of a 16 x 16 matrix of 32-bit elements (r[i] is row i). */
SK_TGT static inline void transpose16(__m512i r[16]) {
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
 * each row (A without transA, B with transB): word p of lane l holds src[l][k0 + KP p + q],
 * p < ceil(kc/KP); lanes from nv on (rows past the matrix) and k from kc on are 0.
 * src: row 0 of the panel at column k0 = 0 of the slice; ld in elements; t its type. */
SK_TGT static void pack_rows(uint32_t *dst, int R, const void *src, size_t ld, ag_dtype t, int nv, int kc) {
    size_t es = ag_dtype_size(t);
    int np = (kc + KP - 1) / KP;
    for (int g = 0; g * 16 < R; g++) {
        int lanes = imin(16, R - 16 * g), rv = imax(0, imin(lanes, nv - 16 * g));
        __mmask16 sm = mask16(lanes);
        for (int p0 = 0; p0 < np; p0 += 16) {
            int e = imin(16 * KP, kc - KP * p0);
            __m512i r[16];
            for (int l = 0; l < 16; l++)
                r[l] = l < rv ? sk_load_words((const char *)src + ((size_t)(16 * g + l) * ld + KP * (size_t)p0) * es, t, e)
                              : _mm512_setzero_si512();
            transpose16(r);
            int q_end = imin(16, np - p0);
            for (int q = 0; q < q_end; q++) _mm512_mask_storeu_epi32(dst + (size_t)(p0 + q) * R + 16 * g, sm, r[q]);
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

/* B[pc:pc+kc, jc:jc+nc] as ceil(nc/NR) panels of ceil(kc/KP) * NR words. */
SK_TGT static void pack_b(uint32_t *bp, const gemm_args *g, int pc, int kc, int jc, int nc) {
    size_t es = ag_dtype_size(g->bt), psz = (size_t)((kc + KP - 1) / KP) * NR;
    if (!g->transB && NR % (16 * KP) == 0) { /* B is [K,N]: all panels row by row */
        sk_pack_cols(bp, NR, psz, (nc + NR - 1) / NR * NR, (const char *)g->B + ((size_t)pc * g->ldb + jc) * es, g->ldb,
                     g->bt, nc, kc);
        return;
    }
    for (int j = 0; j < nc; j += NR) {
        int nv = imin(NR, nc - j);
        uint32_t *d = bp + (size_t)(j / NR) * psz;
        if (g->transB) /* B is [N,K]: rows are columns of op(B) */
            pack_rows(d, NR, (const char *)g->B + ((size_t)(jc + j) * g->ldb + pc) * es, g->ldb, g->bt, nv, kc);
        else
            sk_pack_cols(d, NR, psz, NR, (const char *)g->B + ((size_t)pc * g->ldb + jc + j) * es, g->ldb, g->bt, nv, kc);
    }
}

/* A[ic:ic+mc, pc:pc+kc] (of op(A)) as ceil(mc/MR) panels of ceil(kc/KP) * MR words. */
SK_TGT static void pack_a(uint32_t *ap, const gemm_args *g, int pc, int kc, int ic, int mc) {
    size_t psz = (size_t)((kc + KP - 1) / KP) * MR;
    for (int i = 0; i < mc; i += MR) {
        int nv = imin(MR, mc - i);
        uint32_t *d = ap + (size_t)(i / MR) * psz;
        if (g->transA) /* A is [K,M] */
            sk_pack_cols(d, MR, psz, MR, g->A + (size_t)pc * g->lda + ic + i, g->lda, AG_F32, nv, kc);
        else /* A is [M,K] */
            pack_rows(d, MR, g->A + (size_t)(ic + i) * g->lda + pc, g->lda, AG_F32, nv, kc);
    }
}

/* The micro-kernel: C[0:mr, 0:nr] (ldc) = / += alpha * sum over np words of a[p][i] . b[p][j].
 * a: [np][MR] words, b: [np][NR] words (64-byte aligned). mode 0: C = alpha*acc (C not read);
 * 1: C = alpha*acc + beta*C; 2: C += alpha*acc. */
SK_TGT static void ukernel(int np, const uint32_t *restrict a, const uint32_t *restrict b, float *C, int ldc, int mr,
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
        __m512i bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) bv[v] = _mm512_load_si512(b + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[i][v] = SK_MADD(acc[i][v], a[i], bv[v]);
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

SK_TGT static inline void pf_step(pf_cursor *c, int n) {
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

/* Column blocks of a grid row: thread c takes a fixed first block in each slice (so that its
 * source can be prefetched during the slice before), then the others in turn from the row's
 * counter as it finishes: even threads from the front (ascending), odd ones from the back
 * (descending), so that the blocks a thread takes follow one another in memory. */
static int first_block(int c, int tn, int nblk) {
    if (nblk < tn) return c < nblk ? c : -1;
    return c & 1 ? nblk - 1 - c / 2 : c / 2;
}

#define SLICE_MASK 0xffffffu /* the counter: slice (24 bits) << 40 | front (20) << 20 | back (20) */
#define BLK_MASK 0xfffffu
static uint32_t next_slice(uint32_t q) { return q == SLICE_MASK ? 1 : q + 1; } /* never 0 */

/* The next column block of slice q (1 to SLICE_MASK, counting the (super-block, K slice) pairs of
 * the call modulo the mask) for a thread of the given side (0: front, 1: back), or -1 when the
 * blocks of slice q are all handed out. A thread asks for slice q only after its own last
 * request for the slice before came back -1, so the counter leaves a slice only once it is
 * exhausted, and no thread is more than one slice ahead of it. */
static int grab(uint64_t *ctr, uint32_t q, int side, int tn, int nblk) {
    uint32_t f0 = nblk < tn ? 0 : (uint32_t)(tn + 1) / 2, b0 = nblk < tn ? 0 : (uint32_t)(nblk - tn / 2);
    uint64_t v = __atomic_load_n(ctr, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t sl = (uint32_t)(v >> 40) & SLICE_MASK, f = f0, b = b0;
        if (sl == next_slice(q)) return -1;
        if (sl == q) f = (uint32_t)(v >> 20) & BLK_MASK, b = (uint32_t)v & BLK_MASK;
        if (f >= b) return -1;
        int got = side ? (int)--b : (int)f++;
        uint64_t nv = (uint64_t)q << 40 | (uint64_t)f << 20 | b;
        if (__atomic_compare_exchange_n(ctr, &v, nv, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return got;
    }
}

/* Thread t of nth, in grid row r = t / tn: rows C[m0:m1] (the row's share of M), all columns.
 * Loop order: rows in super-blocks of sb_rows(tm) and K in slices of KC (the grid row's threads
 * pack the A slice together, then one barrier); the columns in blocks of nb (at most NC), which
 * the row's threads take in turn from a shared counter as they finish (so a thread slowed by
 * other processes holds nobody up; see first_block and grab), each packing its block of B into
 * its own buffer and prefetching the source of the block it takes next; then MC rows at a time so the A block stays
 * in L2 while the NR panels of B pass through. Whoever computes a tile, each C element adds the
 * K slices in order (pc = 0 applies beta): one thread per tile and slice, and the barrier of
 * slice q + 1 comes after every tile of slice q. Every thread runs the same number of barriers,
 * with or without work. */
SK_TGT static void run_thread(const gemm_args *g, int nth, int t, char *work, size_t a_part, size_t b_slot) {
    int tm, tn;
    choose_grid(nth, g->M, g->N, &tm, &tn);
    int mt = (g->M + MR - 1) / MR, ntl = (g->N + NR - 1) / NR, r = t / tn, c = t % tn;
    int mlo, mhi;
    split(mt, tm, r, &mlo, &mhi);
    int m0 = mlo * MR, m1 = imin(g->M, mhi * MR);
    /* column blocks: at least about 4 per thread of the row when N allows, at most NC wide */
    int nb = NR * imax(1, imin(NC / NR, (ntl + 4 * tn - 1) / (4 * tn))), nblk = (g->N + nb - 1) / nb;
    int b1 = first_block(c, tn, nblk);
    uint64_t *ctr = (uint64_t *)(work + (size_t)r * CTR_BYTES);
    int sb = sb_rows(tm), rows_most = imin(g->M, (mt + tm - 1) / tm * MR), n_super = (rows_most + sb - 1) / sb;
    /* two A slices per grid row, used in turn: while a thread packs slice i+1, the others may
     * still multiply with slice i, and slice i-1 is free (everyone passed the barrier after it) */
    size_t a_slot = a_slot_bytes(g->M, g->K, tm);
    char *a_base = work + align64((size_t)nth * CTR_BYTES);
    uint32_t *bp = (uint32_t *)(a_base + a_part + (size_t)t * b_slot);
    int turn = 0;
    uint32_t q = 0; /* becomes 1 on the first slice */
    for (int s = 0; s < n_super; s++) {
        int ia = m0 + s * sb, ma = imax(0, imin(sb, m1 - ia));
        for (int pc = 0; pc < g->K; pc += KC, turn ^= 1) {
            int kc = imin(KC, g->K - pc), np = (kc + KP - 1) / KP;
            int mode = pc > 0 ? 2 : g->beta == 0.0f ? 0 : 1;
            uint32_t *ap = (uint32_t *)(a_base + (size_t)(2 * r + turn) * a_slot);
            q = next_slice(q);
            for (int p = c; p * MR < ma; p += tn)
                pack_a(ap + (size_t)p * np * MR, g, pc, kc, ia + p * MR, imin(MR, ma - p * MR));
            int cur = ma > 0 ? b1 : -1;
            if (cur >= 0) pack_b(bp, g, pc, kc, cur * nb, imin(nb, g->N - cur * nb)); /* needs no A: before the wait */
            if (nth > 1) {
#pragma omp barrier
            } /* the slice is complete */
            while (cur >= 0) {
                int jc = cur * nb, nc = imin(nb, g->N - jc), next = grab(ctr, q, c & 1, tn, nblk);
                /* the block packed next: the one just taken; else the first block of the next slice,
                 * or of the next super-block's first slice */
                pf_cursor pf = {0};
                if (next >= 0) pf_b(&pf, g, pc, kc, next * nb, imin(nb, g->N - next * nb));
                else if (b1 >= 0 && pc + KC < g->K)
                    pf_b(&pf, g, pc + KC, imin(KC, g->K - pc - KC), b1 * nb, imin(nb, g->N - b1 * nb));
                else if (b1 >= 0 && ia + sb < m1) pf_b(&pf, g, 0, imin(KC, g->K), b1 * nb, imin(nb, g->N - b1 * nb));
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
                if ((cur = next) >= 0) pack_b(bp, g, pc, kc, cur * nb, imin(nb, g->N - cur * nb));
            }
        }
    }
}

static void gemm_avx512(const gemm_args *g, void *work) {
    int nt = plan_threads(g->M, g->N, g->K, omp_in_parallel() ? 1 : omp_get_max_threads());
    size_t a_part = a_part_bytes(g->M, g->N, g->K, nt), b_slot = b_slot_bytes(g->N, g->K);
    memset(work, 0, (size_t)nt * CTR_BYTES); /* the block counters: slice 0, none handed out */
#pragma omp parallel num_threads(nt) if (nt > 1)
    run_thread(g, omp_get_num_threads(), omp_get_thread_num(), work, a_part, b_slot);
}
#endif /* SK_X86 */

/* The public entry: argument checks, the trivial cases, then the AVX-512 driver. */
static void sk_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                    ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work) {
    AG_ASSERT(M >= 0 && N >= 0 && K >= 0, SK_NAME ": M %d N %d K %d", M, N, K);
    AG_ASSERT(btype == AG_F32 || btype == AG_F16 || btype == AG_BF16, SK_NAME ": btype %d", (int)btype);
    if (M == 0 || N == 0) return;
    AG_ASSERT(ldc >= N, SK_NAME ": ldc %d < N %d", ldc, N);
    AG_ASSERT((N + 16 * SK_NV - 1) / (16 * SK_NV) <= 0xfffff, SK_NAME ": N %d too large", N);
    if (K == 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    AG_ASSERT(lda >= (transA ? M : K) && ldb >= (transB ? K : N), SK_NAME ": lda %d ldb %d for M %d N %d K %d", lda,
              ldb, M, N, K);
    AG_ASSERT(SK_AVAILABLE(), SK_NAME ": this CPU has no usable " SK_ISA " (%s)", kn_cpu()->brand);
    AG_ASSERT(work && ((uintptr_t)work & 63) == 0, SK_NAME ": workspace must be 64-byte aligned");
#ifdef SK_X86
    gemm_args g = {transA, transB, M, N, K, alpha, beta, A, lda, B, btype, ldb, C, ldc};
    gemm_avx512(&g, work);
#endif
}
