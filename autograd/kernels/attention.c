/* Packed causal attention with grouped-query heads and the gated adapter prefix, blocked
 * (flash-attention style): the [n, n] scores and probabilities of a sequence are never stored,
 * only tiles of them, and the tiles entirely above the causal diagonal are never computed.
 * Shapes and letters in kernels.h; the math is DESIGN.md §1:
 *   o = softmax(q k^T / sqrt(D), causal) v + gval[h] * softmax(q ka^T / sqrt(D)) va
 *
 * Tiles are kept transposed, keys by queries: T [w, mq] with T[c][a] = k_c . q_a / sqrt(D), so
 * that every product below reads its right-hand operand as contiguous rows (q^T and do^T are
 * packed once per query block, nothing per tile) and the per-query softmax statistics are vectors.
 *
 * Forward, per (sequence, head), per query block of m <= BQ queries (mq = m rounded up to 16):
 *   Qt = q_blk^T [D, mq]; for each key block [c0, c0 + w) visible to the block's last query:
 *     T = k_blk Qt / sqrt(D), masked entries -inf      online softmax per query (column):
 *     mx' = max(mx, colmax T), T = exp(T - mx'), l = l exp(mx - mx') + colsum T,
 *     O *= exp(mx - mx') (rows whose max moved), O += T^T v_blk        O [m, D] f32 accumulator
 *   o = O / l, lse_tok = mx + log(l); then the prefix for the block's queries, all K prompts at
 *   once: Sa^T = ka Qt / sqrt(D), its own softmax per query (lse_ad), o += gval[h] Sa va.
 * Backward, per (sequence, kv head), per head of its group, per query block: the prefix first
 *   (Pa recomputed from lse_ad; dPa = do va^T; dva += gval Pa^T do; dgval += sum(Pa .* dPa);
 *   dSa = gval Pa .* (dPa - rowsum(Pa .* dPa)); dq += dSa ka / sqrt(D); dka += dSa^T q / sqrt(D)),
 *   then D_a = do_a . o_tok_a = do_a . o_a - gval[h] rowsum(Pa .* dPa)_a (o is the forward output,
 *   kn_attn_shape.o; without it o_tok is recomputed tile by tile, one more pass), then per visible
 *   key block: P = exp(T - lse_tok) (0 where masked), dv += P do, dP = v_blk do^T,
 *   dS = P .* (dP - D), dq += dS^T k_blk / sqrt(D), dk += dS q / sqrt(D).
 *
 * Blocks: BQ = 64 queries by BK = 64 keys (16 KB tiles, cache-resident with their operands). A query
 * block of fewer queries (a sequence's last block, a decode step) takes keys in wider blocks
 * (BQ*BK/mq rounded down to 16), so a tile never exceeds BQ*BK floats. Block boundaries count from
 * the sequence's own start, so a sequence's numbers never depend on the other sequences of the
 * micro-batch. Work above the diagonal is only the masked part of the diagonal tiles: at n = 512,
 * 36 of 64 tiles.
 *
 * Products. f32 (the default, the exact path): tile_gemm, a register-blocked kernel (MR rows x NV
 * vectors; AVX-512, AVX2+FMA or scalar, chosen at compile time like the rest of the -march=native
 * build) that sums each element in order over the contracted index with FMAs in f32, so AVX-512
 * and AVX2 builds give the same bits. bf16 (kn_attn_shape.bf16 on a CPU with AVX512-BF16; the
 * training op sets it from tape->bf16): the seven tile products take operands rounded to bf16
 * (round to nearest even, as ag_f32_to_bf16, subnormals kept) in pairs along the contracted index
 * and sum them in f32 with vdpbf16ps; the scores are those f32 sums, and the softmax, its running
 * max and sums, the O accumulator, D, the prefix (all of it) and every output stay f32. The keys
 * and values of the (sequence, kv head) are rounded once per task into bf16 copies laid out for
 * their products; q, do once per query block; P and dS once per tile. No AMX kernel.
 *
 * Workspace per thread (floats): f32: forward Qt [D, BQ], a tile [BQ*BK], O [BQ, D], Sa [K, BQ]
 * and a few [BQ] vectors; backward Qt, dOt [D, BQ], two tiles, Pa, dPa [K, BQ], [BQ] vectors,
 * O [BQ, D] only without kn_attn_shape.o, and the prefix-gradient accumulators [2 K G D + H].
 * Nothing grows with the sequence length. bf16 adds bf16 tiles and the sequence's keys and values
 * in bf16, n*D/2 floats per copy (forward two copies, backward three, four without
 * kn_attn_shape.o): linear in n, never n^2. The caller saves only lse_tok and lse_ad ([Tq, H]).
 *
 * Threads and determinism: parallel over (sequence, head) forward and (sequence, kv head)
 * backward with a static round-robin schedule, so the rows each task writes are its own and each
 * is summed in a fixed order; the prefix gradients (shared by every sequence) go to per-thread
 * buffers summed at the end in thread order. Same inputs and thread count give the same bits
 * (bit-exact resume relies on it); the forward outputs and dq, dk, dv do not depend on the thread
 * count at all. Does not handle padding (there is none), dropout (the reference has none), or a
 * backward with nq < nk (generation needs none). */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/kernels/vexp.h"

#ifndef KN_ATT_BQ
#define KN_ATT_BQ 64
#endif
#ifndef KN_ATT_BK
#define KN_ATT_BK 64
#endif
#define BQ KN_ATT_BQ /* queries per block (a multiple of 16) */
#define BK KN_ATT_BK /* keys per block when the query block is full (a multiple of 16) */

/* Dispatch of a register-tile kernel FN(mr, nv, masked, ...) with compile-time mr <= MRMAX,
 * nv <= NVMAX (the last vector masked when masked) from run-time mr, nv, masked. */
#define ROWS_CASES(FN, MRMAX, NVV, MSK, ...)                                 \
    switch (mr) {                                                           \
    case 1: FN(1, NVV, MSK, __VA_ARGS__); break;                            \
    case 2: FN(2 < MRMAX ? 2 : MRMAX, NVV, MSK, __VA_ARGS__); break;        \
    case 3: FN(3 < MRMAX ? 3 : MRMAX, NVV, MSK, __VA_ARGS__); break;        \
    case 4: FN(4 < MRMAX ? 4 : MRMAX, NVV, MSK, __VA_ARGS__); break;        \
    case 5: FN(5 < MRMAX ? 5 : MRMAX, NVV, MSK, __VA_ARGS__); break;        \
    default: FN(MRMAX, NVV, MSK, __VA_ARGS__); break;                       \
    }
#define TILE_CASES(FN, MRMAX, NVMAX, ...)                                                                \
    if (!masked && nv == NVMAX) {                                                                       \
        ROWS_CASES(FN, MRMAX, NVMAX, 0, __VA_ARGS__)                                                     \
    } else {                                                                                            \
        switch (nv) {                                                                                   \
        case 1:                                                                                         \
            if (masked) { ROWS_CASES(FN, MRMAX, 1, 1, __VA_ARGS__) }                                    \
            else { ROWS_CASES(FN, MRMAX, 1, 0, __VA_ARGS__) }                                           \
            break;                                                                                      \
        case 2:                                                                                         \
            if (masked) { ROWS_CASES(FN, MRMAX, 2 < NVMAX ? 2 : NVMAX, 1, __VA_ARGS__) }                \
            else { ROWS_CASES(FN, MRMAX, 2 < NVMAX ? 2 : NVMAX, 0, __VA_ARGS__) }                       \
            break;                                                                                      \
        case 3:                                                                                         \
            if (masked) { ROWS_CASES(FN, MRMAX, 3 < NVMAX ? 3 : NVMAX, 1, __VA_ARGS__) }                \
            else { ROWS_CASES(FN, MRMAX, 3 < NVMAX ? 3 : NVMAX, 0, __VA_ARGS__) }                       \
            break;                                                                                      \
        default: ROWS_CASES(FN, MRMAX, NVMAX, 1, __VA_ARGS__) break;                                    \
        }                                                                                               \
    }

/* ---- f32 tile products: the vector layer (VL lanes, MR x NV register tile) ------------------- */
#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512 vf;
typedef __mmask16 vmask;
#define VL 16
#define MR 6
#define NV 4
static inline vf v_zero(void) { return _mm512_setzero_ps(); }
static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
static inline vmask v_mask(int n) { return (vmask)((1u << n) - 1); }
static inline vf v_load(const float *p, int masked, vmask m) { return masked ? _mm512_maskz_loadu_ps(m, p) : _mm512_loadu_ps(p); }
static inline void v_store(float *p, vf x, int masked, vmask m) {
    if (masked) _mm512_mask_storeu_ps(p, m, x);
    else _mm512_storeu_ps(p, x);
}
static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
typedef __m256 vf;
typedef __m256i vmask;
#define VL 8
#define MR 4
#define NV 3
static inline vf v_zero(void) { return _mm256_setzero_ps(); }
static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
static inline vmask v_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
static inline vf v_load(const float *p, int masked, vmask m) { return masked ? _mm256_maskload_ps(p, m) : _mm256_loadu_ps(p); }
static inline void v_store(float *p, vf x, int masked, vmask m) {
    if (masked) _mm256_maskstore_ps(p, m, x);
    else _mm256_storeu_ps(p, x);
}
static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
#else
typedef float vf;
typedef int vmask;
#define VL 1
#define MR 4
#define NV 4
static inline vf v_zero(void) { return 0.0f; }
static inline vf v_set1(float x) { return x; }
static inline vmask v_mask(int n) { return n; }
static inline vf v_load(const float *p, int masked, vmask m) { return *p; }
static inline void v_store(float *p, vf x, int masked, vmask m) { *p = x; }
static inline vf v_fma(vf a, vf b, vf c) { return a * b + c; }
static inline vf v_mul(vf a, vf b) { return a * b; }
#endif

/* One register tile: C[0:mr, 0:(nv-1)*VL + tail] (=|+=) alpha * sum_p A(r, p) B[p, :], where
 * A(r, p) = A[r*ars + p*acs] (any strides: the kernel broadcasts single elements) and B rows are
 * contiguous. mr, nv, masked are compile-time constants at every call (see TILE_CASES). */
static inline __attribute__((always_inline)) void tile_mk(int mr, int nv, int masked, vmask tail, int kd, float alpha,
                                                          const float *A, size_t ars, size_t acs, const float *B,
                                                          size_t ldb, int accumulate, float *C, size_t ldc) {
    vf acc[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = v_zero();
    for (int p = 0; p < kd; p++) {
        vf b[NV];
        const float *bp = B + (size_t)p * ldb, *ap = A + (size_t)p * acs;
        for (int v = 0; v < nv; v++) b[v] = v_load(bp + v * VL, masked && v == nv - 1, tail);
        for (int r = 0; r < mr; r++) {
            vf a = v_set1(ap[(size_t)r * ars]);
            for (int v = 0; v < nv; v++) acc[r][v] = v_fma(a, b[v], acc[r][v]);
        }
    }
    vf al = v_set1(alpha);
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            float *c = C + (size_t)r * ldc + v * VL;
            int mk = masked && v == nv - 1;
            vf x = accumulate ? v_fma(acc[r][v], al, v_load(c, mk, tail)) : v_mul(acc[r][v], al);
            v_store(c, x, mk, tail);
        }
}

static void tile_dispatch(int mr, int nv, int masked, vmask tail, int kd, float alpha, const float *A, size_t ars,
                          size_t acs, const float *B, size_t ldb, int accumulate, float *C, size_t ldc) {
    TILE_CASES(tile_mk, MR, NV, tail, kd, alpha, A, ars, acs, B, ldb, accumulate, C, ldc)
}

/* C[M, N] = alpha * A B (+ C when accumulate), A(r, p) = A[r*ars + p*acs], B [kd, N] rows of
 * stride ldb, C rows of stride ldc. Each C element is one register accumulator summed over p in
 * order: the result does not depend on M, N or where the element sits in the tile. */
static void tile_gemm(int M, int N, int kd, float alpha, const float *A, size_t ars, size_t acs, const float *B,
                      size_t ldb, int accumulate, float *C, size_t ldc) {
    const int NR = NV * VL;
    for (int j = 0; j < N; j += NR) {
        int nr = N - j < NR ? N - j : NR, nv = (nr + VL - 1) / VL, masked = nr % VL != 0;
        vmask tail = v_mask(masked ? nr % VL : VL);
        for (int i = 0; i < M; i += MR)
            tile_dispatch(M - i < MR ? M - i : MR, nv, masked, tail, kd, alpha, A + (size_t)i * ars, ars, acs, B + j,
                          ldb, accumulate, C + (size_t)i * ldc + j, ldc);
    }
}

/* ---- bf16 tile products (AVX512-BF16, selected at run time) ----------------------------------
 * Operands are uint32 pairs of bf16 along the contracted index (the even index in the low half):
 * bgemm is tile_gemm with A(r, p2) = A[r*ars + p2*acs] and B [kd2, N] pairs, summed with
 * vdpbf16ps. Packing: bf_rows rounds rows as they are (pairs = neighbours in a row);
 * bf_pairs_rows interleaves rows 2i and 2i+1 (pairs along the rows; an odd last row pairs with 0),
 * which also makes the q^T pairs [D/2, mq] from the packed f32 q^T [D, mq]. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ATT_BF16 1
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define BMR 6
#define BNV 4

BF16_TARGET static inline __m512i bf_round16(__m512 x) { /* bf16 bits in the low half of each lane */
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
}

BF16_TARGET static inline __attribute__((always_inline)) void bmk(int mr, int nv, int masked, __mmask16 tail, int kd2,
                                                                  float alpha, const uint32_t *A, size_t ars,
                                                                  size_t acs, const uint32_t *B, size_t ldb,
                                                                  int accumulate, float *C, size_t ldc) {
    __m512 acc[BMR][BNV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < kd2; p++) {
        __m512i b[BNV];
        const uint32_t *bp = B + (size_t)p * ldb, *ap = A + (size_t)p * acs;
        for (int v = 0; v < nv; v++)
            b[v] = masked && v == nv - 1 ? _mm512_maskz_loadu_epi32(tail, bp + v * 16) : _mm512_loadu_si512(bp + v * 16);
        for (int r = 0; r < mr; r++) {
            __m512i a = _mm512_set1_epi32((int)ap[(size_t)r * ars]);
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)b[v]);
        }
    }
    __m512 al = _mm512_set1_ps(alpha);
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) {
            float *c = C + (size_t)r * ldc + v * 16;
            __mmask16 m = masked && v == nv - 1 ? tail : (__mmask16)0xffff;
            __m512 x = accumulate ? _mm512_fmadd_ps(acc[r][v], al, _mm512_maskz_loadu_ps(m, c)) : _mm512_mul_ps(acc[r][v], al);
            _mm512_mask_storeu_ps(c, m, x);
        }
}

BF16_TARGET static void bmk_dispatch(int mr, int nv, int masked, __mmask16 tail, int kd2, float alpha, const uint32_t *A,
                                     size_t ars, size_t acs, const uint32_t *B, size_t ldb, int accumulate, float *C,
                                     size_t ldc) {
    TILE_CASES(bmk, BMR, BNV, tail, kd2, alpha, A, ars, acs, B, ldb, accumulate, C, ldc)
}

BF16_TARGET static void bgemm(int M, int N, int kd2, float alpha, const uint32_t *A, size_t ars, size_t acs,
                              const uint32_t *B, size_t ldb, int accumulate, float *C, size_t ldc) {
    const int NR = BNV * 16;
    for (int j = 0; j < N; j += NR) {
        int nr = N - j < NR ? N - j : NR, nv = (nr + 15) / 16, masked = nr % 16 != 0;
        __mmask16 tail = (__mmask16)((1u << (masked ? nr % 16 : 16)) - 1);
        for (int i = 0; i < M; i += BMR)
            bmk_dispatch(M - i < BMR ? M - i : BMR, nv, masked, tail, kd2, alpha, A + (size_t)i * ars, ars, acs, B + j,
                         ldb, accumulate, C + (size_t)i * ldc + j, ldc);
    }
}

/* rows [n, len] (stride ld, len even) -> bf16 rows [n, len] = pairs [n, len/2] */
BF16_TARGET static void bf_rows(uint32_t *dst, const float *src, size_t ld, int n, int len) {
    uint16_t *d = (uint16_t *)dst;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < len; j += 16) {
            __mmask16 m = (__mmask16)((1u << (len - j < 16 ? len - j : 16)) - 1);
            __m256i y = _mm512_cvtepi32_epi16(bf_round16(_mm512_maskz_loadu_ps(m, src + (size_t)r * ld + j)));
            _mm256_mask_storeu_epi16(d + (size_t)r * len + j, m, y);
        }
}

/* rows [n, len] (stride ld) -> pairs [(n+1)/2, len]: (row 2i, row 2i+1) elementwise */
BF16_TARGET static void bf_pairs_rows(uint32_t *dst, const float *src, size_t ld, int n, int len) {
    for (int i = 0; i < (n + 1) / 2; i++) {
        const float *r0 = src + (size_t)(2 * i) * ld, *r1 = 2 * i + 1 < n ? r0 + ld : NULL;
        for (int j = 0; j < len; j += 16) {
            __mmask16 m = (__mmask16)((1u << (len - j < 16 ? len - j : 16)) - 1);
            __m512i lo = bf_round16(_mm512_maskz_loadu_ps(m, r0 + j));
            __m512i hi = r1 ? bf_round16(_mm512_maskz_loadu_ps(m, r1 + j)) : _mm512_setzero_si512();
            _mm512_mask_storeu_epi32(dst + (size_t)i * len + j, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}
#else
#define BMR 1
static void bgemm(int M, int N, int kd2, float alpha, const uint32_t *A, size_t ars, size_t acs, const uint32_t *B,
                  size_t ldb, int accumulate, float *C, size_t ldc) {
    AG_ASSERT(0, "bf16 attention needs x86-64 with AVX512-BF16");
}
static void bf_rows(uint32_t *dst, const float *src, size_t ld, int n, int len) { AG_ASSERT(0, "no bf16 attention here"); }
static void bf_pairs_rows(uint32_t *dst, const float *src, size_t ld, int n, int len) {
    AG_ASSERT(0, "no bf16 attention here");
}
#endif

/* the bf16 products run when asked for and possible (even D: q, k pairs along d) */
static int use_bf16(const kn_attn_shape *s) { return s->bf16 && s->D % 2 == 0 && kn_bf16_gemm_available(); }

/* ---- tiles and workspace -------------------------------------------------------------------- */
static int imin(int a, int b) { return a < b ? a : b; }
static size_t al16(size_t n) { return (n + 15) & ~(size_t)15; } /* 64-byte aligned sub-buffers */
static int round16(int n) { return (n + 15) & ~15; }

static int max_len(const int *off, int n) {
    int m = 0;
    for (int s = 0; s < n; s++) m = off[s + 1] - off[s] > m ? off[s + 1] - off[s] : m;
    return m;
}

/* Keys per block for a query block of mq (padded) queries: the tile stays within BQ*BK floats;
 * a multiple of 16, so key blocks start at even keys (bf16 pairs of keys). */
static int key_block(int mq) { return mq >= BQ ? BK : ((BQ * BK) / mq) & ~15; }

/* Floats of one tile for these lengths (never more than BQ*BK). */
static size_t tile_floats(int nq_max, int nk_max) {
    size_t cap = (size_t)BQ * BK, full = (size_t)imin(round16(nq_max), BQ) * (size_t)nk_max;
    return al16(full < cap ? full : cap);
}

/* q rows [a0, a0 + m) of one head as columns: Qt[d][a] (mq columns, the padding zero). Reads
 * the rows in order (the source rows are far apart) and scatters into the L1-sized Qt. */
static void pack_t(float *Qt, const float *Q, size_t ldq, int m, int mq, int D) {
    for (int a = 0; a < m; a++) {
        const float *row = Q + (size_t)a * ldq;
        for (int d = 0; d < D; d++) Qt[(size_t)d * mq + a] = row[d];
    }
    if (m < mq)
        for (int d = 0; d < D; d++) memset(Qt + (size_t)d * mq + m, 0, (size_t)(mq - m) * sizeof(float));
}

/* sum of a[i] * b[i] in f32 lanes of 8, the lanes summed in double (fixed order) */
static double dot_f(const float *a, const float *b, int n) {
    int i = 0;
    double sum = 0;
#ifdef KN_VEXP
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    sum = kn_hsum8_d(acc);
#endif
    for (; i < n; i++) sum += (double)a[i] * b[i];
    return sum;
}

/* -inf where key c0 + c may not see query a0 + a (position a0 + a + shift): a < c0 + c - a0 - shift. */
static void mask_tile(float *T, int w, int mq, int a0, int c0, int shift) {
    for (int c = 0; c < w; c++) {
        int first = c0 + c - a0 - shift;
        if (first <= 0) continue;
        if (first > mq) first = mq;
        for (int a = 0; a < first; a++) T[(size_t)c * mq + a] = -INFINITY;
    }
}

/* T[c][a] = exp(T[c][a] - sh[a]) in place (0 for -inf); colsum[a] += the new column sums when
 * colsum != NULL. mq is a multiple of 16. */
static void exp_tile(float *T, int w, int mq, const float *sh, float *colsum) {
#ifdef KN_VEXP
    for (int a = 0; a < mq; a += 8) {
        __m256 s = _mm256_loadu_ps(sh + a), acc = _mm256_setzero_ps();
        for (int c = 0; c < w; c++) {
            float *t = T + (size_t)c * mq + a;
            __m256 e = kn_exp8(_mm256_sub_ps(_mm256_loadu_ps(t), s));
            _mm256_storeu_ps(t, e);
            acc = _mm256_add_ps(acc, e);
        }
        if (colsum) _mm256_storeu_ps(colsum + a, _mm256_add_ps(_mm256_loadu_ps(colsum + a), acc));
    }
#else
    for (int c = 0; c < w; c++)
        for (int a = 0; a < mq; a++) {
            float *t = T + (size_t)c * mq + a;
            *t = expf(*t - sh[a]);
            if (colsum) colsum[a] += *t;
        }
#endif
}

/* The key-block products of one (sequence, kv head): f32 reads k, v in place; bf16 reads their
 * rounded copies, made once (kp, vp: rows [n, D/2] pairs along d; ki, vi: pairs of rows
 * [n/2, D] along the keys). */
typedef struct kv_src {
    const float *K, *V; /* first key row of the sequence and kv head, stride ldk */
    size_t ldk;
    int bf;
    uint32_t *kp, *vp, *ki, *vi;
} kv_src;

/* T [w, mq] = scale * k[c0, c0 + w) Qt (Qt: f32 [D, mq], or bf16 pairs [D/2, mq]) */
static void scores(float *T, const kv_src *kv, int c0, int w, int mq, int D, float scale, const void *Qt) {
    if (kv->bf) bgemm(w, mq, D / 2, scale, kv->kp + (size_t)c0 * (D / 2), D / 2, 1, Qt, mq, 0, T, mq);
    else tile_gemm(w, mq, D, scale, kv->K + (size_t)c0 * kv->ldk, kv->ldk, 1, Qt, mq, 0, T, mq);
}

/* O [m, D] (=|+=) T^T v[c0, c0 + w): T [w, mq] f32, rounded into pbuf as key pairs for bf16 */
static void times_v(float *O, size_t ldo, int accumulate, const float *T, uint32_t *pbuf, const kv_src *kv, int c0, int w,
                    int m, int mq, int D) {
    if (kv->bf) {
        bf_pairs_rows(pbuf, T, mq, w, mq);
        bgemm(m, D, (w + 1) / 2, 1.0f, pbuf, 1, mq, kv->vi + (size_t)(c0 / 2) * D, D, accumulate, O, ldo);
    } else {
        tile_gemm(m, D, w, 1.0f, T, 1, mq, kv->V + (size_t)c0 * kv->ldk, kv->ldk, accumulate, O, ldo);
    }
}

/* per-thread forward scratch (floats; the bf16 buffers hold uint32 pairs) */
typedef struct fwd_buf { float *Qt, *T, *O, *Sa, *mx, *nm, *cs, *qp, *pb, *kp, *vi; double *l; } fwd_buf;

static size_t fwd_layout(fwd_buf *b, float *base, const kn_attn_shape *s) {
    int nq = max_len(s->qo, s->n_seq), nk = max_len(s->ko, s->n_seq), bf = use_bf16(s);
    size_t bq = (size_t)imin(round16(nq), BQ), D = (size_t)s->D, tile = tile_floats(nq, nk), at = 0;
    float *p = base;
#define TAKE(field, n) (b->field = p ? p + at : NULL, at += al16(n))
    TAKE(Qt, D * bq);
    TAKE(T, tile);
    TAKE(O, bq * D);
    TAKE(Sa, (size_t)s->K * bq);
    TAKE(mx, bq);
    TAKE(nm, bq);
    TAKE(cs, bq);
    TAKE(qp, bf ? D / 2 * bq : 0);
    TAKE(pb, bf ? tile / 2 + bq : 0);
    TAKE(kp, bf ? (size_t)nk * D / 2 : 0);
    TAKE(vi, bf ? (size_t)(nk + 1) / 2 * D : 0);
    b->l = p ? (double *)(p + at) : NULL;
    at += al16(2 * bq);
#undef TAKE
    return at;
}

size_t kn_attention_workspace(const kn_attn_shape *s, int max_threads) {
    fwd_buf b;
    return (size_t)max_threads * fwd_layout(&b, NULL, s);
}

/* One query block of the forward token part: queries [a0, a0 + m) of head h into o rows (stride
 * ldq) and lse (stride H, may be NULL). Qh: the head's first query row of the sequence;
 * shift = nk - nq. Leaves the block's f32 q^T in b->Qt for the prefix. */
static void forward_block(float *Oh, float *lse, const float *Qh, const kv_src *kv, int a0, int m, int shift,
                          const kn_attn_shape *s, const fwd_buf *b) {
    const int H = s->H, D = s->D, ldq = H * D, mq = round16(m), bw = key_block(mq);
    const float scale = 1.0f / sqrtf((float)D);
    const int kend = a0 + m + shift; /* keys [0, kend) are visible to some query of the block */
    float *T = b->T, *O = b->O, *mx = b->mx, *nm = b->nm, *cs = b->cs;
    double *l = b->l;
    const float *Q = Qh + (size_t)a0 * ldq;
    pack_t(b->Qt, Q, ldq, m, mq, D); /* f32 q^T: the products (bf16: their source), the prefix */
    if (kv->bf) bf_pairs_rows((uint32_t *)b->qp, b->Qt, mq, D, mq);
    for (int a = 0; a < mq; a++) mx[a] = -INFINITY, l[a] = 0;
    for (int c0 = 0; c0 < kend; c0 += bw) {
        int w = imin(bw, kend - c0);
        scores(T, kv, c0, w, mq, D, scale, kv->bf ? (const void *)b->qp : b->Qt);
        if (c0 + w - 1 > a0 + shift) mask_tile(T, w, mq, a0, c0, shift);
        for (int a = 0; a < mq; a++) nm[a] = mx[a], cs[a] = 0.0f;
        for (int c = 0; c < w; c++)
            for (int a = 0; a < mq; a++) nm[a] = T[(size_t)c * mq + a] > nm[a] ? T[(size_t)c * mq + a] : nm[a];
        exp_tile(T, w, mq, nm, cs);
        for (int a = 0; a < m; a++) {
            if (nm[a] != mx[a] && c0 > 0) { /* the running max moved: rescale what was summed */
                float alpha = expf(mx[a] - nm[a]);
                l[a] *= alpha;
                float *Or = O + (size_t)a * D;
                for (int d = 0; d < D; d++) Or[d] *= alpha;
            }
            mx[a] = nm[a];
            l[a] += cs[a];
        }
        /* key 0 is visible to every query, so the first block (no accumulate) initialises O */
        times_v(O, D, c0 > 0, T, (uint32_t *)b->pb, kv, c0, w, m, mq, D);
    }
    for (int a = 0; a < m; a++) {
        float inv = (float)(1.0 / l[a]), *o = Oh + (size_t)(a0 + a) * ldq;
        const float *Or = O + (size_t)a * D;
        for (int d = 0; d < D; d++) o[d] = Or[d] * inv;
        if (lse) lse[(size_t)(a0 + a) * H] = mx[a] + (float)log(l[a]);
    }
}

void kn_attention_forward(float *out, float *lse_tok, float *lse_ad, const float *q, const float *k,
                          const float *v, const float *ka, const float *va, const float *gval,
                          const kn_attn_shape *s, float *work) {
    const int H = s->H, G = s->G, D = s->D, K = s->K, rep = H / G, bf = use_bf16(s);
    const int ldq = H * D, ldk = G * D;
    const float scale = 1.0f / sqrtf((float)D);
    fwd_buf lay;
    const size_t per_thread = fwd_layout(&lay, NULL, s);
    const int tasks = s->n_seq * H;
    AG_ASSERT(K == 0 || (ka && va && gval), "adapter prefix needs ka, va and gate values");
    #pragma omp parallel for schedule(static, 1) if (tasks > 1)
    for (int task = 0; task < tasks; task++) {
        int sq = task / H, h = task % H, g = h / rep;
        int q0 = s->qo[sq], nq = s->qo[sq + 1] - q0, k0 = s->ko[sq], nk = s->ko[sq + 1] - k0;
        if (nq == 0) continue;
        AG_ASSERT(nk >= nq, "attention: sequence %d has %d queries but %d keys", sq, nq, nk);
        fwd_buf b;
        fwd_layout(&b, work + (size_t)omp_get_thread_num() * per_thread, s);
        kv_src kv = {k + (size_t)k0 * ldk + g * D, v + (size_t)k0 * ldk + g * D, (size_t)ldk, bf,
                     (uint32_t *)b.kp, NULL, NULL, (uint32_t *)b.vi};
        if (bf) {
            bf_rows(kv.kp, kv.K, kv.ldk, nk, D);
            bf_pairs_rows(kv.vi, kv.V, kv.ldk, nk, D);
        }
        const float *Qh = q + (size_t)q0 * ldq + h * D;
        float *Oh = out + (size_t)q0 * ldq + h * D;
        float *lt = lse_tok ? lse_tok + (size_t)q0 * H + h : NULL;
        for (int a0 = 0; a0 < nq; a0 += BQ) {
            int m = imin(BQ, nq - a0), mq = round16(m);
            forward_block(Oh, lt, Qh, &kv, a0, m, nk - nq, s, &b);
            if (K > 0) { /* b.Qt holds the block's q^T: Sa^T [K, mq] = ka Qt, softmax per column */
                tile_gemm(K, mq, D, scale, ka + g * D, ldk, 1, b.Qt, mq, 0, b.Sa, mq);
                for (int a = 0; a < mq; a++) {
                    b.nm[a] = b.Sa[a], b.cs[a] = 0.0f;
                    for (int j = 1; j < K; j++) b.nm[a] = b.Sa[(size_t)j * mq + a] > b.nm[a] ? b.Sa[(size_t)j * mq + a] : b.nm[a];
                }
                exp_tile(b.Sa, K, mq, b.nm, b.cs);
                for (int a = 0; a < m; a++) {
                    float inv = 1.0f / b.cs[a];
                    for (int j = 0; j < K; j++) b.Sa[(size_t)j * mq + a] *= inv;
                    if (lse_ad) lse_ad[(size_t)(q0 + a0 + a) * H + h] = b.nm[a] + logf(b.cs[a]);
                }
                tile_gemm(m, D, K, gval[h], b.Sa, 1, mq, va + g * D, ldk, 1, Oh + (size_t)a0 * ldq, ldq);
            }
        }
    }
}

/* per-thread backward scratch (floats; the bf16 buffers hold uint32 pairs) */
typedef struct bwd_buf {
    float *Qt, *dOt, *T, *dP, *Pa, *dPa, *lv, *Dr, *pdp, *Ot, *acc;
    float *qp, *dop, *qi, *doi, *pp, *pi, *kp, *vp, *ki, *vi; /* bf16 */
} bwd_buf;

static size_t bwd_layout(bwd_buf *b, float *base, const kn_attn_shape *s) {
    int n = max_len(s->qo, s->n_seq), bf = use_bf16(s);
    size_t bq = (size_t)imin(round16(n), BQ), D = (size_t)s->D, K = (size_t)s->K, tile = tile_floats(n, n), at = 0;
    size_t n2 = (size_t)(n + 1) / 2;
    float *p = base;
#define TAKE(field, cnt) (b->field = p ? p + at : NULL, at += al16(cnt))
    TAKE(Qt, D * bq);
    TAKE(dOt, D * bq);
    TAKE(T, tile);
    TAKE(dP, tile);
    TAKE(Pa, K * bq);
    TAKE(dPa, K * bq);
    TAKE(lv, bq);
    TAKE(Dr, bq);
    TAKE(pdp, bq);
    TAKE(Ot, s->o ? 0 : bq * D);
    TAKE(acc, 2 * K * (size_t)s->G * D + (size_t)s->H);
    TAKE(qp, bf ? D / 2 * bq : 0);
    TAKE(dop, bf ? D / 2 * bq : 0);
    TAKE(qi, bf ? bq / 2 * D : 0);
    TAKE(doi, bf ? bq / 2 * D : 0);
    TAKE(pp, bf ? tile / 2 : 0);
    TAKE(pi, bf ? tile / 2 + bq : 0);
    TAKE(kp, bf ? (size_t)n * D / 2 : 0);
    TAKE(vp, bf ? (size_t)n * D / 2 : 0);
    TAKE(ki, bf ? n2 * D : 0);
    TAKE(vi, bf && !s->o ? n2 * D : 0); /* only to recompute o_tok */
#undef TAKE
    return at;
}

size_t kn_attention_backward_workspace(const kn_attn_shape *s, int max_threads) {
    bwd_buf b;
    return (size_t)max_threads * bwd_layout(&b, NULL, s);
}

void kn_attention_backward(float *dq, float *dk, float *dv, float *dka, float *dva, float *dgval,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *ka, const float *va, const float *gval, const float *lse_tok,
                           const float *lse_ad, const kn_attn_shape *s, float *work) {
    const int H = s->H, G = s->G, D = s->D, K = s->K, rep = H / G, bf = use_bf16(s);
    const int ldq = H * D, ldk = G * D;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t adsz = (size_t)K * G * D;
    bwd_buf lay;
    const size_t per = bwd_layout(&lay, NULL, s);
    const int tasks = s->n_seq * G;
    const int want_d = dq || dk, want_tok = want_d || dv;
    const int do_ad = K > 0 && (dq || dk || dka || dva || dgval); /* D needs rowsum(Pa .* dPa) too */
    for (int sq = 0; sq < s->n_seq; sq++)
        AG_ASSERT(s->qo[sq] == s->ko[sq], "attention backward needs equal query and key layouts");
    int nthreads = tasks > 1 ? omp_get_max_threads() : 1;
    for (int t = 0; t < nthreads; t++) {
        bwd_buf b;
        bwd_layout(&b, work + (size_t)t * per, s);
        memset(b.acc, 0, (2 * adsz + H) * sizeof(float));
    }
    #pragma omp parallel for schedule(static, 1) if (tasks > 1)
    for (int task = 0; task < tasks; task++) {
        int sq = task / G, g = task % G;
        int o0 = s->qo[sq], n = s->qo[sq + 1] - o0;
        if (n == 0) continue;
        bwd_buf b;
        bwd_layout(&b, work + (size_t)omp_get_thread_num() * per, s);
        float *T = b.T, *dP = b.dP, *lv = b.lv, *Dr = b.Dr;
        float *my_dka = b.acc, *my_dva = my_dka + adsz, *my_dg = my_dva + adsz;
        kv_src kv = {k + (size_t)o0 * ldk + g * D, v + (size_t)o0 * ldk + g * D, (size_t)ldk, bf,
                     (uint32_t *)b.kp, (uint32_t *)b.vp, (uint32_t *)b.ki, (uint32_t *)b.vi};
        if (bf && want_tok) { /* the copies this backward reads */
            bf_rows(kv.kp, kv.K, kv.ldk, n, D);
            if (want_d) bf_rows(kv.vp, kv.V, kv.ldk, n, D);
            if (want_d && !s->o) bf_pairs_rows(kv.vi, kv.V, kv.ldk, n, D);
            if (dq) bf_pairs_rows(kv.ki, kv.K, kv.ldk, n, D);
        }
        const float *kag = K ? ka + g * D : NULL, *vag = K ? va + g * D : NULL;
        float *dKg = dk ? dk + (size_t)o0 * ldk + g * D : NULL, *dVg = dv ? dv + (size_t)o0 * ldk + g * D : NULL;
        for (int h = g * rep; h < (g + 1) * rep; h++) {
            double dg_sum = 0;
            for (int a0 = 0; a0 < n; a0 += BQ) {
                const int m = imin(BQ, n - a0), mq = round16(m), bw = key_block(mq), kend = a0 + m;
                const size_t row0 = (size_t)(o0 + a0);
                const float *Q = q + row0 * ldq + h * D, *dO = dout + row0 * ldq + h * D;
                float *dQ = dq ? dq + row0 * ldq + h * D : NULL;
                if (want_tok || do_ad) pack_t(b.Qt, Q, ldq, m, mq, D);
                if (want_d || do_ad) pack_t(b.dOt, dO, ldq, m, mq, D);
                if (do_ad) { /* the prefix (f32), transposed like the tiles: Pa^T, dPa^T [K, mq] */
                    for (int a = 0; a < mq; a++) lv[a] = a < m ? lse_ad[(row0 + a) * H + h] : 0.0f;
                    tile_gemm(K, mq, D, scale, kag, ldk, 1, b.Qt, mq, 0, b.Pa, mq);
                    exp_tile(b.Pa, K, mq, lv, NULL);
                    tile_gemm(K, mq, D, 1.0f, vag, ldk, 1, b.dOt, mq, 0, b.dPa, mq);
                    if (dva) tile_gemm(K, D, m, gval[h], b.Pa, mq, 1, dO, ldq, 1, my_dva + g * D, ldk);
                    for (int a = 0; a < mq; a++) {
                        double dot = 0;
                        for (int j = 0; j < K && a < m; j++) dot += (double)b.Pa[(size_t)j * mq + a] * b.dPa[(size_t)j * mq + a];
                        dg_sum += dot;
                        b.pdp[a] = (float)dot;
                    }
                    for (int j = 0; j < K; j++) { /* dSa = gval Pa .* (dPa - rowsum(Pa .* dPa)), in place of dPa */
                        float *d = b.dPa + (size_t)j * mq;
                        const float *p = b.Pa + (size_t)j * mq;
                        for (int a = 0; a < mq; a++) d[a] = gval[h] * p[a] * (d[a] - b.pdp[a]);
                    }
                    if (dQ) tile_gemm(m, D, K, scale, b.dPa, 1, mq, kag, ldk, 1, dQ, ldq);
                    if (dka) tile_gemm(K, D, m, scale, b.dPa, mq, 1, Q, ldq, 1, my_dka + g * D, ldk);
                }
                if (!want_tok) continue;
                const void *qop = b.Qt, *dop = b.dOt; /* the right-hand operands of the score products */
                uint32_t *pp = (uint32_t *)b.pp, *pi = (uint32_t *)b.pi;
                if (bf) {
                    bf_pairs_rows((uint32_t *)b.qp, b.Qt, mq, D, mq);
                    qop = b.qp;
                    if (want_d) bf_pairs_rows((uint32_t *)b.dop, b.dOt, mq, D, mq), dop = b.dop;
                    if (dv) bf_pairs_rows((uint32_t *)b.doi, dO, ldq, m, D);
                    if (dk) bf_pairs_rows((uint32_t *)b.qi, Q, ldq, m, D);
                }
                for (int a = 0; a < mq; a++) lv[a] = a < m ? lse_tok[(row0 + a) * H + h] : 0.0f, Dr[a] = 0.0f;
                if (want_d && s->o) { /* D_a = do . o - gval do . (Pa va) = do . o_tok */
                    const float *Ob = s->o + row0 * ldq + h * D;
                    for (int a = 0; a < m; a++) {
                        double dot = dot_f(dO + (size_t)a * ldq, Ob + (size_t)a * ldq, D);
                        Dr[a] = (float)(K > 0 ? dot - (double)gval[h] * b.pdp[a] : dot);
                    }
                } else if (want_d) { /* no forward output given: o_tok recomputed tile by tile */
                    for (int c0 = 0; c0 < kend; c0 += bw) {
                        int w = imin(bw, kend - c0);
                        scores(T, &kv, c0, w, mq, D, scale, qop);
                        if (c0 + w - 1 > a0) mask_tile(T, w, mq, a0, c0, 0);
                        exp_tile(T, w, mq, lv, NULL);
                        times_v(b.Ot, D, c0 > 0, T, pi, &kv, c0, w, m, mq, D);
                    }
                    for (int a = 0; a < m; a++) Dr[a] = (float)dot_f(dO + (size_t)a * ldq, b.Ot + (size_t)a * D, D);
                }
                for (int c0 = 0; c0 < kend; c0 += bw) {
                    const int w = imin(bw, kend - c0);
                    scores(T, &kv, c0, w, mq, D, scale, qop);
                    if (c0 + w - 1 > a0) mask_tile(T, w, mq, a0, c0, 0);
                    exp_tile(T, w, mq, lv, NULL); /* P^T; columns a >= m are padding, never read */
                    if (dVg) { /* dv[c] += sum_a P[c][a] do[a] */
                        float *dVb = dVg + (size_t)c0 * ldk;
                        if (bf) bf_rows(pp, T, mq, w, mq), bgemm(w, D, (m + 1) / 2, 1.0f, pp, mq / 2, 1, (uint32_t *)b.doi, D, 1, dVb, ldk);
                        else tile_gemm(w, D, m, 1.0f, T, mq, 1, dO, ldq, 1, dVb, ldk);
                    }
                    if (!want_d) continue;
                    /* dP^T = v_blk do^T */
                    if (bf) bgemm(w, mq, D / 2, 1.0f, kv.vp + (size_t)c0 * (D / 2), D / 2, 1, dop, mq, 0, dP, mq);
                    else tile_gemm(w, mq, D, 1.0f, kv.V + (size_t)c0 * ldk, ldk, 1, dop, mq, 0, dP, mq);
                    for (int c = 0; c < w; c++) { /* dS = P .* (dP - D), in place of dP */
                        float *dr = dP + (size_t)c * mq;
                        const float *pr = T + (size_t)c * mq;
                        for (int a = 0; a < mq; a++) dr[a] = pr[a] * (dr[a] - Dr[a]);
                    }
                    if (dQ) { /* dq[a] += scale sum_c dS[c][a] k[c] */
                        if (bf) bf_pairs_rows(pi, dP, mq, w, mq), bgemm(m, D, (w + 1) / 2, scale, pi, 1, mq, kv.ki + (size_t)(c0 / 2) * D, D, 1, dQ, ldq);
                        else tile_gemm(m, D, w, scale, dP, 1, mq, kv.K + (size_t)c0 * ldk, ldk, 1, dQ, ldq);
                    }
                    if (dKg) { /* dk[c] += scale sum_a dS[c][a] q[a] */
                        float *dKb = dKg + (size_t)c0 * ldk;
                        if (bf) bf_rows(pp, dP, mq, w, mq), bgemm(w, D, (m + 1) / 2, scale, pp, mq / 2, 1, (uint32_t *)b.qi, D, 1, dKb, ldk);
                        else tile_gemm(w, D, m, scale, dP, mq, 1, Q, ldq, 1, dKb, ldk);
                    }
                }
            }
            if (dgval && K > 0) my_dg[h] += (float)dg_sum;
        }
    }
    for (int t = 0; t < nthreads; t++) {
        bwd_buf b;
        bwd_layout(&b, work + (size_t)t * per, s);
        if (dka) for (size_t i = 0; i < adsz; i++) dka[i] += b.acc[i];
        if (dva) for (size_t i = 0; i < adsz; i++) dva[i] += b.acc[adsz + i];
        if (dgval) for (int h = 0; h < H; h++) dgval[h] += b.acc[2 * adsz + h];
    }
}
