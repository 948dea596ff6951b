/* Kernels: pure math on float pointers and sizes. No allocation (callers pass workspaces), no
 * tape, no tensors. BLAS and OpenMP appear only in this folder.
 *
 * Threading (decided once): big GEMMs call OpenBLAS (OpenMP build) from outside any parallel
 * region and let it use every thread; loops over rows/heads are `omp parallel for`, and a GEMM
 * issued inside such a region runs single-threaded (the OpenMP OpenBLAS checks
 * omp_in_parallel()), so the cores are never oversubscribed.
 *
 * Letters: T tokens (rows), NI input width, NO output width (not I/O: complex.h takes I), H query heads, G key/value heads,
 * D head dim, K adapter prompts, V vocabulary. Backward kernels ACCUMULATE (+=) into gradients.
 * Backward argument order: gradient outputs, dout, saved inputs/caches, sizes. */
#ifndef AG_KERNELS_H
#define AG_KERNELS_H
#include <stddef.h>
#include <stdint.h>

#include "autograd/tensor.h"

/* ---- GEMM ---------------------------------------------------------------------------------
 * C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when the flag is set.
 * kn_sgemm goes to OpenBLAS; kn_sgemm_ref is the naive triple loop (double accumulation) that
 * tests compare it with. */
void kn_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);
void kn_sgemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A,
                  int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The linear layer, W [NO,NI] in f32, f16 or bf16, T rows. Two paths, chosen per call:
 *  - T > 1 on a CPU with AVX-512F (kn_f32_gemm_available()): kn_gemm_f32 (16-bit W converted
 *    exactly while packing), deterministic and row-independent (a row's result does not depend
 *    on T or on the other rows);
 *  - otherwise OpenBLAS: sgemm on f32 W, 16-bit W converted to f32 per tile of 256 rows, and for
 *    T == 1 the forward is a matrix-vector product in W's own type.
 * work: kn_linear_workspace(wtype, NI, NO) floats, any alignment, for every T and all three
 * functions: the GEMM's packing buffers for any T (about 2 x 2128 x min(1024, width) floats plus
 * 128K floats per thread) where it runs, and for 16-bit W the tile of 256 rows (0 for f32 W on
 * CPUs without AVX-512F); asked with omp_get_max_threads() as it is when calling. work == NULL
 * (allowed when the size is 0, and with f32 W) takes the OpenBLAS path. */
size_t kn_linear_workspace(ag_dtype wtype, int NI, int NO);
/* y[T,NO] = x[T,NI] W[NO,NI]^T */
void kn_linear_forward(float *y, const float *x, const void *W, ag_dtype wtype, int T, int NI, int NO,
                       float *work);
/* dx[T,NI] += dy[T,NO] W[NO,NI] */
void kn_linear_backward_dx(float *dx, const float *dy, const void *W, ag_dtype wtype, int T, int NI,
                           int NO, float *work);
/* dW[NO,NI] += dy[T,NO]^T x[T,NI] (f32 weights only) */
void kn_linear_backward_dw(float *dW, const float *dy, const float *x, int T, int NI, int NO, float *work);

/* ---- row-wise ------------------------------------------------------------------------------ */
/* out[t] = table[ids[t]] (table in any dtype) */
void kn_embedding_forward(float *out, const void *table, ag_dtype dtype, const int *ids, int T, int C);
/* dtable[ids[t]] += dout[t] (sequential: repeated ids accumulate) */
void kn_embedding_backward(float *dtable, const float *dout, const int *ids, int T, int C);
/* y = x * rstd * w, rstd[t] = 1/sqrt(mean(x[t]^2) + eps); rstd saved for backward */
void kn_rmsnorm_forward(float *y, float *rstd, const float *x, const float *w, int T, int C, float eps);
/* dx (may be NULL) and dw (may be NULL) accumulate */
void kn_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                         const float *rstd, int T, int C);
/* RoPE, Meta pair layout: in each head of width D, pair (2i, 2i+1) rotated by pos[t]*theta^(-2i/D).
 * x and y are [T, NH*D]. inverse=1 rotates by the negative angle (the backward pass). */
void kn_rope(float *y, const float *x, const int *pos, int T, int NH, int D, float theta, int inverse);
/* out = silu(a) * b, elementwise over n */
void kn_swiglu_forward(float *out, const float *a, const float *b, size_t n);
void kn_swiglu_backward(float *da, float *db, const float *dout, const float *a, const float *b, size_t n);
/* out[i] = x[idx[i]] rows of width C; backward scatters (sequential) */
void kn_gather_forward(float *out, const float *x, const int *idx, int n, int C);
void kn_gather_backward(float *dx, const float *dout, const int *idx, int n, int C);

/* ---- attention -----------------------------------------------------------------------------
 * Causal attention over n_seq sequences packed back to back, each attending only to itself,
 * grouped-query heads (head h uses kv head h / (H/G)), plus the gated adapter prefix of
 * DESIGN.md §1 (separate softmax over the K prompts, scaled by gval[h], no RoPE):
 *   o = softmax(q k^T / sqrt(D), causal) v + gval[h] * softmax(q ka^T / sqrt(D)) va
 * Sequence s has queries q rows [qo[s], qo[s+1]) and keys k/v rows [ko[s], ko[s+1]); the nq
 * queries are the LAST nq positions of its nk >= nq keys (nq == nk in training; a KV cache in
 * generation). q, out: [Tq, H*D]; k, v: [Tk, G*D]; ka, va: [K, G*D] or NULL (K = 0);
 * gval: [H] activated gate values, or NULL.
 * Blocked (autograd/kernels/attention.c): tiles of at most 64 x 64 scores, those above the causal
 * diagonal skipped, an online softmax; no [nq, nk] matrix is ever stored. The tile products are
 * f32 (the exact path), or with bf16 = 1 on a CPU with AVX512-BF16 (kn_bf16_gemm_available())
 * take bf16 operands summed in f32 (vdpbf16ps); the softmax, its statistics, the accumulators,
 * the adapter prefix and every output stay f32 either way. Odd D or no AVX512-BF16: f32.
 * lse_tok, lse_ad: [Tq, H] log-sum-exp of each softmax, saved for the backward pass (may be NULL
 * in inference). work: kn_attention_workspace() floats, 8-byte aligned at least (f32: per thread
 * a few tiles, about 85 KB at D = 128 whatever the length; bf16 adds the sequence's keys and
 * values in bf16, linear in its length). */
typedef struct kn_attn_shape {
    int n_seq, H, G, D, K;
    const int *qo, *ko;  /* [n_seq+1] row offsets */
    const float *o;      /* backward only: the forward's output [Tq, H*D], from which the backward
                          * takes rowsum(dout .* o) per row and head; NULL: the backward recomputes
                          * the token part instead (one more pass over the tiles) */
    int bf16;            /* 1: bf16 tile products where the CPU has them (see above); 0: f32 */
} kn_attn_shape;
size_t kn_attention_workspace(const kn_attn_shape *s, int max_threads);
void kn_attention_forward(float *out, float *lse_tok, float *lse_ad, const float *q, const float *k,
                          const float *v, const float *ka, const float *va, const float *gval,
                          const kn_attn_shape *s, float *work);
/* Gradients (each may be NULL when not needed): dq [Tq,H*D], dk, dv [Tk,G*D], dka, dva [K,G*D],
 * dgval [H] (gradient w.r.t. the ACTIVATED gate value). Requires qo == ko layouts (training).
 * Recomputes the probabilities tile by tile from lse_tok / lse_ad. work:
 * kn_attention_backward_workspace() floats (per thread two tiles, a few rows, and the prefix
 * gradient accumulators 2*K*G*D + H floats; bf16 adds twice the forward's key/value copies).
 * Results depend only on the inputs and the thread count (dq, dk, dv and the forward not even on
 * that), and a sequence's rows never on the other sequences of the batch. */
size_t kn_attention_backward_workspace(const kn_attn_shape *s, int max_threads);
void kn_attention_backward(float *dq, float *dk, float *dv, float *dka, float *dva, float *dgval,
                           const float *dout, const float *q, const float *k, const float *v,
                           const float *ka, const float *va, const float *gval, const float *lse_tok,
                           const float *lse_ad, const kn_attn_shape *s, float *work);

/* ---- loss ----------------------------------------------------------------------------------
 * Cross-entropy of logits [N, V] rows against targets (0 = ignored). Returns the mean over
 * counted rows (0 when none); lse [N] saved. backward: dlogits += (softmax - onehot) * scale for
 * counted rows, scale = dloss / count. */
float kn_cross_entropy_forward(float *lse, int *count, const float *logits, const int *targets, int N, int V);
void kn_cross_entropy_backward(float *dlogits, float scale, const float *logits, const float *lse,
                               const int *targets, int N, int V);

/* ---- CPU features and bf16 GEMM --------------------------------------------------------------
 * kn_cpu(): what this CPU and OS allow (autograd/kernels/cpu.c), detected once, never NULL.
 * avx512bf16 means the BF16 instructions plus the AVX-512 F/BW/VL/DQ subsets kn_gemm_bf16 uses;
 * amx_tile/amx_bf16 are reported only (no AMX kernel: kn_gemm_bf16 runs AVX512-BF16 there too). */
typedef struct kn_cpu_info {
    int avx2, fma, f16c, avx512f, avx512bw, avx512bf16, amx_tile, amx_bf16; /* 1 when the CPU and the OS allow it */
    char brand[64];                                                          /* cpuid brand string, trimmed */
} kn_cpu_info;
const kn_cpu_info *kn_cpu(void);

/* bf16 GEMM (autograd/kernels/gemm_bf16.c): C[M,N] = alpha * bf16(op(A)) bf16(op(B)) + beta * C,
 * row-major, op = transpose when the flag is set: op(A) is [M,K] (A is [M,K], lda >= K, or with
 * transA [K,M], lda >= M); op(B) is [K,N] (B is [K,N], ldb >= N, or with transB [N,K], ldb >= K);
 * C is [M,N], ldc >= N. A is f32; B is f32, f16 or bf16 (btype). Operands are rounded to bf16
 * (round to nearest even, as ag_f32_to_bf16; f16 goes through its exact f32 value, so it loses 3
 * mantissa bits) and their products summed in f32 with AVX512-BF16 vdpbf16ps.
 * beta == 0 never reads C; K == 0 or alpha == 0 gives C = beta * C without reading A or B.
 * Threads: from outside a parallel region it uses omp_get_max_threads() threads, from inside one
 * it runs single-threaded. Deterministic: the result does not depend on the thread count (threads
 * split C into blocks; each element is summed in the same fixed order).
 * work: kn_gemm_bf16_workspace(M, N, K) bytes, 64-byte aligned, caller-owned; the size covers
 * omp_get_max_threads() threads as it is when asked (ask again after raising it).
 * kn_bf16_gemm_available(): 1 when kn_gemm_bf16 can run here; calling it otherwise aborts.
 * kn_gemm_bf16_ref: the naive reference for tests (same bf16 rounding, double accumulation). */
int kn_bf16_gemm_available(void);
size_t kn_gemm_bf16_workspace(int M, int N, int K);
void kn_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work);
void kn_gemm_bf16_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                      const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc);

/* f32 GEMM (autograd/kernels/gemm_f32.c, sharing gemm_bf16.c's skeleton, gemm_skel.h):
 * C[M,N] = alpha * op(A) op(B) + beta * C with the shapes, flags and B types of kn_gemm_bf16, in
 * f32 arithmetic: B (f32, f16 or bf16) converted exactly to f32 while packing, products summed
 * with AVX-512F FMAs in one f32 accumulator per element and per slice of KN_F32_KC (1024) k, the
 * slices added in order. beta == 0 never reads C; K == 0 or alpha == 0 gives C = beta * C without
 * reading A or B. Threads as kn_gemm_bf16's. Deterministic and thread-count independent; an
 * element depends only on its row of op(A), its column of op(B), alpha, beta and its old value
 * (row independent: a row computed alone gives the same bits as in any product).
 * work: kn_gemm_f32_workspace(M, N, K) bytes, 64-byte aligned, caller-owned; M < 0 and/or K < 0
 * ask for a size that covers any M / any K (the packed A slice is capped at a fixed number of
 * rows and the K slice at KN_F32_KC); the size covers omp_get_max_threads() threads as it is
 * when asked. kn_f32_gemm_available(): 1 when the CPU has AVX-512F (kn_cpu()->avx512f); calling
 * kn_gemm_f32 otherwise aborts. kn_gemm_f32_ref: the naive reference for tests (exact operand
 * values, double accumulation). */
int kn_f32_gemm_available(void);
size_t kn_gemm_f32_workspace(int M, int N, int K);
void kn_gemm_f32(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                 ag_dtype btype, int ldb, float beta, float *C, int ldc, void *work);
void kn_gemm_f32_ref(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                     const void *B, ag_dtype btype, int ldb, float beta, float *C, int ldc);
#endif
