/* bench_tool: the C half of `make bench` (bench/run_bench.sh drives it).
 *
 *   bench_tool peak     [--n 2048] [--threads T]       the peak of each compute path, 1 thread
 *                                                      and T: f32 FMA and vdpbf16ps instruction
 *                                                      peaks, sgemm and kn_gemm_bf16 on n^3;
 *                                                      AMX named (one JSON line)
 *   bench_tool kernels  [--threads T] [--model small|medium] [--batch-tokens N] [--seq N] [--peak GFLOPS]
 *                                                      kernel micro-benchmarks at training shapes
 *   bench_tool fixtures --out DIR [--shared DIR] [--sizes small,medium,7b-slice] [--dtypes f32,bf16,f16]
 *                       [--train-examples 28]          random HF Llama models (f32, bf16; f16
 *                                                      on request; the 7B slice in bf16 only),
 *                                                      training data (the first 28 examples in
 *                                                      file order), profile data (the longest
 *                                                      micro-batch first, for the warm-up),
 *                                                      tokenizer, Alpaca data; DIR/fixtures.sh
 *   bench_tool tokens   --tokenizer T --data D [--max-seq-len N] --out FILE
 *                                                      the tokenized examples as JSON, for the
 *                                                      PyTorch peer (same ids on both sides)
 *   bench_tool adapter  --model DIR --adapter-len K --adapter-layer L --out FILE [--gate-std X]
 *                                                      a starting adapter (prompts N(0,1), gates
 *                                                      N(0,X) or 0) as safetensors: both sides
 *                                                      start from the same numbers
 *   bench_tool profile  --model DIR --tokenizer T --data D [--adapter-layer L] [--first W]
 *                       [--steps N] [--threads T] [--precision f32|bf16]
 *                                                      where an adapter training step spends its
 *                                                      time, op by op (forward frozen/adapted,
 *                                                      backward, AdamW), through the library ops
 *   bench_tool prompt-ids --tokens FILE                the first example's prompt ids (no bos)
 *   bench_tool report   --results FILE                 the tables of `make bench`
 *
 * FLOP counting (the report's MFU; one formula for every implementation, useful work only):
 *   per layer run forward: 2*T*(2*dim*dim + 2*dim*kv_dim + 3*dim*hidden) linear
 *                          + sum_s 4*n_s^2*dim attention (QK^T and PV, full square, as PaLM)
 *   adapted layer extra:   4*K*dim*kv_dim (prompt keys/values) + sum_s 4*n_s*K*dim (prefix)
 *   classifier:            2*N_loss*dim*vocab (only rows that carry a label are useful)
 *   adapter backward:      adapted layers' linears once (dX only, frozen weights have no dW),
 *                          their attention, prefix and prompt k/v twice, classifier dX once.
 *                          The lowest adapted layer's input gradients (not needed) are counted
 *                          too: at most 1/L of the backward.
 *   full backward:         every linear twice (dX and dW), attention twice, classifier twice.
 *   T, n_s and N_loss are the real tokens of the step's micro-batch: what PyTorch spends on
 *   padding, on logits at unlabelled positions or on weight conversions is not useful work, so
 *   the same step counts the same FLOPs for every implementation and MFU compares like with like.
 *   Per timed step s: useful GFLOP/s_s = FLOPs_s / seconds_s; a row reports the median over the
 *   timed steps (loss tokens/s and tokens/s likewise, each the median of per-step rates).
 *   MFU = that median / the measured instruction peak of the path the run's GEMMs use, all
 *   threads (cmd_peak): f32 FMA for f32 runs (C --precision f32, PyTorch fp32), vdpbf16ps for
 *   bf16 runs (C --precision bf16, PyTorch bf16 and autocast, whose oneDNN GEMMs use
 *   AVX512-BF16 on this kind of CPU). Against an instruction peak, not a GEMM's rate: 100% is
 *   out of reach even for a GEMM alone (the report prints what sgemm and kn_gemm_bf16 reach).
 * What it deliberately does not do: time the C trainer itself (the real binary does, through
 * metrics.jsonl), or pass/fail anything (tests/test_torch_reference.c is the check). */
#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h> /* the instruction-peak loops (cmd_peak) */
#define PK_X86 1
#endif

#include "autograd/kernels/kernels.h"
#include "trainer/llama.h"
#include "autograd/ops.h"
#include "autograd/rng.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"
#include "data/alpaca.h"
#include "data/loader.h"
#include "data/tok.h"
#include "trainer/optim.h"
#include "trainer/params.h"

/* ---- small helpers -------------------------------------------------------------------------- */

/* The value of --name in argv, or def. */
static const char *opt(int argc, char **argv, const char *name, const char *def) {
    for (int i = 2; i + 1 < argc; i++)
        if (argv[i][0] == '-' && argv[i][1] == '-' && !strcmp(argv[i] + 2, name)) return argv[i + 1];
    return def;
}

static int opt_int(int argc, char **argv, const char *name, int def) {
    const char *v = opt(argc, argv, name, NULL);
    return v ? atoi(v) : def;
}

static double now(void) { return omp_get_wtime(); }

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = (size_t)n;
    return b;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench_tool: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* ---- peak ----------------------------------------------------------------------------------- */

/* Best of `reps` square GEMMs C = A B^T of size n, GFLOP/s, with `threads` OpenMP/OpenBLAS
 * threads: OpenBLAS sgemm (bf16 = 0), or kn_gemm_bf16 with B in bf16 (bf16 = 1, the forward form
 * x W^T of the bf16 path). */
static double gemm_gflops(int n, int threads, int reps, int bf16) {
    omp_set_num_threads(threads);
    size_t nn = (size_t)n * n;
    float *A = xmalloc(nn * 4), *B = xmalloc(nn * 4), *C = xmalloc(nn * 4);
    uint16_t *Bb = bf16 ? xmalloc(nn * 2) : NULL;
    void *work = NULL;
    ag_rng r;
    ag_rng_seed(&r, 7);
    for (size_t i = 0; i < nn; i++) {
        A[i] = (float)ag_rng_uniform(&r) - 0.5f;
        B[i] = (float)ag_rng_uniform(&r) - 0.5f;
        if (Bb) Bb[i] = ag_f32_to_bf16(B[i]);
    }
    if (bf16 && posix_memalign(&work, 64, kn_gemm_bf16_workspace(n, n, n) + 64)) work = NULL;
    if (bf16 && !work) {
        free(A), free(B), free(C), free(Bb);
        return 0;
    }
    double best = 1e30;
    for (int k = 0; k <= reps; k++) { /* k = 0: the untimed warm-up */
        double t0 = now();
        if (bf16) kn_gemm_bf16(0, 1, n, n, n, 1.0f, A, n, Bb, AG_BF16, n, 0.0f, C, n, work);
        else kn_sgemm(0, 1, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
        double dt = now() - t0;
        if (k && dt < best) best = dt;
    }
    free(A);
    free(B);
    free(C);
    free(Bb);
    free(work);
    return 2.0 * n * (double)n * n / best / 1e9;
}

static double sgemm_gflops(int n, int threads, int reps) { return gemm_gflops(n, threads, reps, 0); }

/* Instruction peaks: register-only loops of 16 independent accumulators (no memory traffic), the
 * method of bench/gemm_peak.c (copied here so the bench does not depend on that program's output
 * format): f32 FMA on zmm and ymm (the f32 path's instruction: OpenBLAS uses one of them), and
 * vdpbf16ps on zmm (the bf16 path's: 32 bf16 multiply-adds into 16 f32 sums per instruction).
 * GFLOP/s count 2 flops per multiply-add. */
#define PK_NACC 16
#ifdef PK_X86
__attribute__((target("avx512f,avx512bf16"), noinline)) static float pk_loop_dpbf16(long iters) {
    __m512 acc[PK_NACC];
    for (int i = 0; i < PK_NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x00010001);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < PK_NACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a)); /* a is opaque: nothing is hoisted */
    }
    __m512 s = acc[0];
    for (int i = 1; i < PK_NACC; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f"), noinline)) static float pk_loop_fma512(long iters) {
    __m512 acc[PK_NACC];
    for (int i = 0; i < PK_NACC; i++) acc[i] = _mm512_set1_ps((float)i);
    __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1e-30f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < PK_NACC; i++) acc[i] = _mm512_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+v"(a));
    }
    __m512 s = acc[0];
    for (int i = 1; i < PK_NACC; i++) s = _mm512_add_ps(s, acc[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"), noinline)) static float pk_loop_fma256(long iters) {
    __m256 acc[PK_NACC];
    for (int i = 0; i < PK_NACC; i++) acc[i] = _mm256_set1_ps((float)i);
    __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1e-30f);
    for (long it = 0; it < iters; it++) {
#pragma GCC unroll 16
        for (int i = 0; i < PK_NACC; i++) acc[i] = _mm256_fmadd_ps(a, b, acc[i]);
        __asm__ volatile("" : "+x"(a));
    }
    __m256 s = acc[0];
    for (int i = 1; i < PK_NACC; i++) s = _mm256_add_ps(s, acc[i]);
    float o[8];
    _mm256_storeu_ps(o, s);
    return o[0] + o[7];
}
#endif

static volatile float pk_sink;

/* GFLOP/s of loop fn (flops_per_iter per iteration) on `threads` threads at once, best of 3. */
static double pk_rate(float (*fn)(long), double flops_per_iter, int threads) {
    long iters = 10000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
#pragma omp parallel num_threads(threads)
        {
            float v = fn(iters);
            if (v == 12345.0f) pk_sink = v;
        }
        double g = flops_per_iter * iters * threads / (now() - t0) * 1e-9;
        if (g > best) best = g;
    }
    return best;
}

/* One JSON line: the peak of each compute path on this machine, 1 thread and `threads`.
 *   f32 path (OpenBLAS sgemm): the f32 FMA instruction peak (zmm when the CPU has AVX-512,
 *     otherwise ymm), and what sgemm reaches on a square n x n x n GEMM;
 *   bf16 path (kn_gemm_bf16, AVX512-BF16): the vdpbf16ps instruction peak, and what
 *     kn_gemm_bf16 reaches on the same GEMM with B in bf16 (0 when the CPU lacks AVX512-BF16);
 *   AMX: named only (this build has no AMX kernel; see trainer/precision.h).
 * The report's MFU divides by the instruction peak of the path a run used. */
static int cmd_peak(int argc, char **argv) {
    int n = opt_int(argc, argv, "n", 2048), threads = opt_int(argc, argv, "threads", omp_get_num_procs());
    const kn_cpu_info *ci = kn_cpu();
    double f1 = 0, ft = 0, b1 = 0, bt = 0;
    const char *isa = "none";
#ifdef PK_X86
    if (ci->avx512f) {
        f1 = pk_rate(pk_loop_fma512, PK_NACC * 32.0, 1), ft = pk_rate(pk_loop_fma512, PK_NACC * 32.0, threads);
        isa = "vfmadd231ps zmm";
    } else if (ci->avx2 && ci->fma) {
        f1 = pk_rate(pk_loop_fma256, PK_NACC * 16.0, 1), ft = pk_rate(pk_loop_fma256, PK_NACC * 16.0, threads);
        isa = "vfmadd231ps ymm";
    }
    if (kn_bf16_gemm_available())
        b1 = pk_rate(pk_loop_dpbf16, PK_NACC * 64.0, 1), bt = pk_rate(pk_loop_dpbf16, PK_NACC * 64.0, threads);
#endif
    double g1 = sgemm_gflops(n, 1, 3), gt = sgemm_gflops(n, threads, 3);
    double gb = kn_bf16_gemm_available() ? gemm_gflops(n, threads, 3, 1) : 0;
    char brand[sizeof ci->brand];
    snprintf(brand, sizeof brand, "%s", ci->brand);
    for (char *p = brand; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 32) *p = ' ';
    const char *amx = ci->amx_tile && ci->amx_bf16 ? "present, but this build has no AMX kernel (bf16 runs on AVX512-BF16)"
                                                   : "not available (this CPU has no AMX tiles)";
    printf("{\"kind\":\"peak\",\"cpu\":\"%s\",\"n\":%d,\"threads\":%d,\"gflops_1t\":%.2f,\"gflops\":%.2f,"
           "\"f32_isa\":\"%s\",\"f32_peak_1t\":%.2f,\"f32_peak\":%.2f,\"bf16_peak_1t\":%.2f,\"bf16_peak\":%.2f,"
           "\"bf16_gemm\":%.2f,\"amx\":\"%s\"}\n",
           brand, n, threads, g1, gt, isa, f1, ft, b1, bt, gb, amx);
    return 0;
}

/* ---- kernels: micro-benchmarks at the shapes of a training step ------------------------------ */

static void fill(float *x, size_t n, ag_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * ((float)ag_rng_uniform(r) - 0.5f);
}

typedef struct kstat { double seconds, flops, bytes; } kstat;

static void kprint(const char *name, const char *shape, kstat s, double peak) {
    printf("  %-34s %-26s %9.3f ms", name, shape, s.seconds * 1e3);
    if (s.flops > 0) printf("  %7.1f GFLOP/s (%3.0f%% of peak)", s.flops / s.seconds / 1e9, 100.0 * s.flops / s.seconds / 1e9 / peak);
    if (s.bytes > 0) printf("  %7.2f GB/s", s.bytes / s.seconds / 1e9);
    printf("\n");
}

/* The best of `reps` timed runs of stmt, after one untimed warm-up run. */
#define TIME_BEST(reps, best, stmt)                    \
    do {                                               \
        stmt; /* warm-up */                            \
        best = 1e30;                                   \
        for (int rep_ = 0; rep_ < (reps); rep_++) {    \
            double t0_ = now();                        \
            stmt;                                      \
            double dt_ = now() - t0_;                  \
            if (dt_ < best) best = dt_;                \
        }                                              \
    } while (0)

static int cmd_kernels(int argc, char **argv) {
    int threads = opt_int(argc, argv, "threads", omp_get_num_procs());
    const char *size = opt(argc, argv, "model", "medium");
    int T = opt_int(argc, argv, "batch-tokens", 640), n = opt_int(argc, argv, "seq", 160);
    int medium = !strcmp(size, "medium");
    int dim = medium ? 768 : 256, hidden = medium ? 2048 : 768, H = medium ? 12 : 8, V = 32000, K = 10;
    int D = dim / H, NL = T / 2; /* about half the tokens carry a label in Alpaca */
    omp_set_num_threads(threads);
    const char *pk = opt(argc, argv, "peak", NULL);
    double peak = pk ? atof(pk) : sgemm_gflops(2048, threads, 3);
    printf("kernels at the shapes of a %s training micro-batch (T=%d tokens, sequences of %d, %d with a label), %d threads;\n"
           "%% of peak: of %.1f GFLOP/s (--peak, default the sgemm n=2048 rate)\n",
           size, T, n, NL, threads, peak);
    ag_rng r;
    ag_rng_seed(&r, 3);
    size_t big = (size_t)V * dim;
    float *x = xmalloc((size_t)T * hidden * 4), *y = xmalloc((size_t)T * (hidden > V ? hidden : V) * 4);
    float *W = xmalloc(big * 4), *lg = xmalloc((size_t)NL * V * 4), *dl = xmalloc((size_t)NL * V * 4);
    uint16_t *Wb = xmalloc(big * 2);
    fill(x, (size_t)T * hidden, &r, 1.0f);
    fill(W, big, &r, 0.1f);
    for (size_t i = 0; i < big; i++) Wb[i] = ag_f32_to_bf16(W[i]);
    float *work = xmalloc(kn_linear_workspace(AG_BF16, dim > hidden ? dim : hidden, V) * 4 + 64);
    double best;
    char shape[64];
    struct { const char *name; int NI, NO; } lins[] = {{"linear fwd f32 (wq/wo)", dim, dim}, {"linear fwd f32 (w1/w3)", dim, hidden},
                                                        {"linear fwd f32 (w2)", hidden, dim}};
    for (int i = 0; i < 3; i++) {
        TIME_BEST(5, best, kn_linear_forward(y, x, W, AG_F32, T, lins[i].NI, lins[i].NO, NULL));
        snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]^T", T, lins[i].NI, lins[i].NO, lins[i].NI);
        kprint(lins[i].name, shape, (kstat){best, 2.0 * T * lins[i].NI * lins[i].NO, 0}, peak);
    }
    TIME_BEST(3, best, kn_linear_forward(y, x, Wb, AG_BF16, T, dim, hidden, work));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]^T", T, dim, hidden, dim);
    kprint("linear fwd bf16 (w1/w3)", shape, (kstat){best, 2.0 * T * dim * hidden, 0}, peak);
    memset(y, 0, (size_t)T * dim * 4);
    TIME_BEST(3, best, kn_linear_backward_dx(y, x, W, AG_F32, T, dim, hidden, NULL));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]", T, hidden, hidden, dim);
    kprint("linear dX f32 (w1/w3)", shape, (kstat){best, 2.0 * T * dim * hidden, 0}, peak);
    TIME_BEST(3, best, kn_linear_backward_dx(y, x, Wb, AG_BF16, T, dim, hidden, work));
    kprint("linear dX bf16 (w1/w3)", shape, (kstat){best, 2.0 * T * dim * hidden, 0}, peak);
    TIME_BEST(3, best, kn_linear_forward(lg, x, W, AG_F32, NL, dim, V, NULL));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]^T", NL, dim, V, dim);
    kprint("classifier fwd f32", shape, (kstat){best, 2.0 * NL * dim * V, 0}, peak);
    TIME_BEST(3, best, kn_linear_forward(lg, x, Wb, AG_BF16, NL, dim, V, work));
    kprint("classifier fwd bf16", shape, (kstat){best, 2.0 * NL * dim * V, 0}, peak);
    TIME_BEST(3, best, kn_linear_backward_dx(y, lg, Wb, AG_BF16, NL, dim, V, work));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]", NL, V, V, dim);
    kprint("classifier dX bf16", shape, (kstat){best, 2.0 * NL * dim * V, 0}, peak);
    /* the 16-bit conversion alone (what the bf16/f16 paths add per call) */
    TIME_BEST(3, best, ag_to_f32(W, Wb, AG_BF16, big));
    snprintf(shape, sizeof shape, "%zu values", big);
    kprint("bf16 -> f32 conversion (1 thread)", shape, (kstat){best, 0, 6.0 * big}, peak);
    uint16_t *Wh = xmalloc(big * 2);
    for (size_t i = 0; i < big; i++) Wh[i] = ag_f32_to_f16(W[i]);
    TIME_BEST(3, best, ag_to_f32(W, Wh, AG_F16, big));
    kprint("f16 -> f32 conversion (1 thread)", shape, (kstat){best, 0, 6.0 * big}, peak);
    free(Wh);
    /* cross-entropy forward + backward over the labelled rows */
    int *tg = xmalloc((size_t)NL * sizeof(int));
    for (int i = 0; i < NL; i++) tg[i] = 1 + (int)ag_rng_below(&r, (uint64_t)V - 1);
    float *lse = xmalloc((size_t)NL * 4);
    int cnt;
    TIME_BEST(3, best, kn_cross_entropy_forward(lse, &cnt, lg, tg, NL, V));
    snprintf(shape, sizeof shape, "[%d,%d]", NL, V);
    kprint("cross-entropy fwd", shape, (kstat){best, 0, 4.0 * NL * V}, peak);
    memset(dl, 0, (size_t)NL * V * 4);
    TIME_BEST(3, best, kn_cross_entropy_backward(dl, 1.0f / NL, lg, lse, tg, NL, V));
    kprint("cross-entropy bwd", shape, (kstat){best, 0, 12.0 * NL * V}, peak);
    /* attention over T/n sequences of n tokens, with the K-prompt prefix */
    int ns = T / n, Tq = ns * n;
    int *off = xmalloc(((size_t)ns + 1) * sizeof(int));
    for (int s = 0; s <= ns; s++) off[s] = s * n;
    kn_attn_shape as = {.n_seq = ns, .H = H, .G = H, .D = D, .K = K, .qo = off, .ko = off};
    float *q = xmalloc((size_t)Tq * dim * 4), *k = xmalloc((size_t)Tq * dim * 4), *v = xmalloc((size_t)Tq * dim * 4);
    float *o = xmalloc((size_t)Tq * dim * 4), *ka = xmalloc((size_t)K * dim * 4), *va = xmalloc((size_t)K * dim * 4);
    float *dq = xmalloc((size_t)Tq * dim * 4), *dk = xmalloc((size_t)Tq * dim * 4), *dv = xmalloc((size_t)Tq * dim * 4);
    float *dka = xmalloc((size_t)K * dim * 4), *dva = xmalloc((size_t)K * dim * 4), gv[64], dg[64];
    float *lt = xmalloc((size_t)Tq * H * 4), *la = xmalloc((size_t)Tq * H * 4);
    fill(q, (size_t)Tq * dim, &r, 1.0f);
    fill(k, (size_t)Tq * dim, &r, 1.0f);
    fill(v, (size_t)Tq * dim, &r, 1.0f);
    fill(ka, (size_t)K * dim, &r, 1.0f);
    fill(va, (size_t)K * dim, &r, 1.0f);
    for (int h = 0; h < H; h++) gv[h] = 0.1f;
    float *aw = xmalloc(kn_attention_workspace(&as, threads) * 4);
    float *bw = xmalloc(kn_attention_backward_workspace(&as, threads) * 4);
    double af = (double)ns * (4.0 * n * n * dim + 4.0 * n * K * dim);
    TIME_BEST(3, best, kn_attention_forward(o, lt, la, q, k, v, ka, va, gv, &as, aw));
    snprintf(shape, sizeof shape, "%d seq x %d, H %d, D %d", ns, n, H, D);
    kprint("attention fwd (+prefix)", shape, (kstat){best, af, 0}, peak);
    TIME_BEST(3, best, kn_attention_backward(dq, dk, dv, dka, dva, dg, o, q, k, v, ka, va, gv, lt, la, &as, bw));
    kprint("attention bwd (+prefix)", shape, (kstat){best, 2 * af, 0}, peak);
    /* the same with the unequal lengths of a real Alpaca micro-batch: the static schedule over
     * (sequence, head) tasks gives whole sequences to one thread */
    {
        int lens[4] = {141, 349, 150, 127}, uoff[5] = {0};
        for (int s2 = 0; s2 < 4; s2++) uoff[s2 + 1] = uoff[s2] + lens[s2];
        kn_attn_shape us = {.n_seq = 4, .H = H, .G = H, .D = D, .K = K, .qo = uoff, .ko = uoff};
        float *uq = xmalloc((size_t)uoff[4] * dim * 4), *uk = xmalloc((size_t)uoff[4] * dim * 4);
        float *uv = xmalloc((size_t)uoff[4] * dim * 4), *uo = xmalloc((size_t)uoff[4] * dim * 4);
        float *ult = xmalloc((size_t)uoff[4] * H * 4), *ula = xmalloc((size_t)uoff[4] * H * 4);
        float *udq = xmalloc((size_t)uoff[4] * dim * 4), *udk = xmalloc((size_t)uoff[4] * dim * 4);
        float *udv = xmalloc((size_t)uoff[4] * dim * 4);
        fill(uq, (size_t)uoff[4] * dim, &r, 1.0f);
        fill(uk, (size_t)uoff[4] * dim, &r, 1.0f);
        fill(uv, (size_t)uoff[4] * dim, &r, 1.0f);
        float *uaw = xmalloc(kn_attention_workspace(&us, threads) * 4);
        float *ubw = xmalloc(kn_attention_backward_workspace(&us, threads) * 4);
        double uf = 0;
        for (int s2 = 0; s2 < 4; s2++) uf += 4.0 * lens[s2] * lens[s2] * dim + 4.0 * lens[s2] * K * dim;
        for (int th = 1; th <= threads; th += threads > 1 ? threads - 1 : 1) {
            omp_set_num_threads(th);
            char nm[64];
            snprintf(shape, sizeof shape, "seqs 141,349,150,127 %d thr", th);
            TIME_BEST(3, best, kn_attention_forward(uo, ult, ula, uq, uk, uv, ka, va, gv, &us, uaw));
            snprintf(nm, sizeof nm, "attention fwd, unequal lengths");
            kprint(nm, shape, (kstat){best, uf, 0}, th == threads ? peak : peak / threads);
            TIME_BEST(3, best, kn_attention_backward(udq, udk, udv, dka, dva, dg, uo, uq, uk, uv, ka, va, gv, ult, ula, &us, ubw));
            snprintf(nm, sizeof nm, "attention bwd, unequal lengths");
            kprint(nm, shape, (kstat){best, 2 * uf, 0}, th == threads ? peak : peak / threads);
            if (threads == 1) break;
        }
        omp_set_num_threads(threads);
        free(uq); free(uk); free(uv); free(uo); free(ult); free(ula); free(udq); free(udk); free(udv); free(uaw); free(ubw);
    }
    /* row-wise kernels with transcendental functions (scalar libm calls) */
    {
        size_t nh = (size_t)T * hidden;
        float *a = xmalloc(nh * 4), *b = xmalloc(nh * 4), *c = xmalloc(nh * 4), *da = xmalloc(nh * 4), *db = xmalloc(nh * 4);
        fill(a, nh, &r, 4.0f);
        fill(b, nh, &r, 4.0f);
        memset(da, 0, nh * 4);
        memset(db, 0, nh * 4);
        TIME_BEST(3, best, kn_swiglu_forward(c, a, b, nh));
        snprintf(shape, sizeof shape, "[%d,%d]", T, hidden);
        kprint("swiglu fwd (expf)", shape, (kstat){best, 0, 12.0 * nh}, peak);
        TIME_BEST(3, best, kn_swiglu_backward(da, db, c, a, b, nh));
        kprint("swiglu bwd (expf)", shape, (kstat){best, 0, 28.0 * nh}, peak);
        int *pos = xmalloc(sizeof(int) * (size_t)T);
        for (int t = 0; t < T; t++) pos[t] = t % n;
        TIME_BEST(3, best, kn_rope(c, a, pos, T, H, D, 10000.0f, 0));
        snprintf(shape, sizeof shape, "[%d,%d] H %d", T, dim, H);
        kprint("rope (pow/cos/sin per row)", shape, (kstat){best, 0, 8.0 * T * dim}, peak);
        float *wn = xmalloc((size_t)dim * 4), *rs = xmalloc((size_t)T * 4);
        for (int i = 0; i < dim; i++) wn[i] = 1.0f;
        TIME_BEST(3, best, kn_rmsnorm_forward(c, rs, a, wn, T, dim, 1e-6f));
        snprintf(shape, sizeof shape, "[%d,%d]", T, dim);
        kprint("rmsnorm fwd", shape, (kstat){best, 0, 8.0 * T * dim}, peak);
        TIME_BEST(3, best, kn_rmsnorm_backward(da, NULL, b, a, wn, rs, T, dim));
        kprint("rmsnorm bwd (dx)", shape, (kstat){best, 0, 16.0 * T * dim}, peak);
        free(a); free(b); free(c); free(da); free(db); free(pos); free(wn); free(rs);
    }
    /* one (sequence, head) GEMM of the attention, single-threaded as inside the parallel loop */
    omp_set_num_threads(1);
    float *S = xmalloc((size_t)n * n * 4);
    TIME_BEST(20, best, kn_sgemm(0, 1, n, n, D, 1.0f, q, dim, k, dim, 0.0f, S, n));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]^T 1 thr", n, D, n, D);
    kprint("per-head sgemm Q K^T", shape, (kstat){best, 2.0 * n * n * D, 0}, peak / threads);
    TIME_BEST(20, best, kn_sgemm(0, 0, n, D, n, 1.0f, S, n, v, dim, 0.0f, o, dim));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d] 1 thr", n, n, n, D);
    kprint("per-head sgemm P V", shape, (kstat){best, 2.0 * n * n * D, 0}, peak / threads);
    TIME_BEST(20, best, kn_sgemm(0, 1, n, K, D, 1.0f, q, dim, ka, dim, 0.0f, S, K));
    snprintf(shape, sizeof shape, "[%d,%d]x[%d,%d]^T 1 thr", n, D, K, D);
    kprint("per-head sgemm Q Ka^T (prefix)", shape, (kstat){best, 2.0 * n * K * D, 0}, peak / threads);
    omp_set_num_threads(threads);
    free(S);
    free(x); free(y); free(W); free(lg); free(dl); free(Wb); free(work); free(tg); free(lse); free(off);
    free(q); free(k); free(v); free(o); free(ka); free(va); free(dq); free(dk); free(dv); free(dka); free(dva);
    free(lt); free(la); free(aw); free(bw);
    return 0;
}

/* ---- fixtures ------------------------------------------------------------------------------- */

typedef struct size_spec { const char *name; int dim, n_layers, n_heads, hidden, bf16_only; } size_spec;
static const size_spec SIZES[] = {
    {"small", 256, 4, 8, 768, 0},    /* hidden = LLaMA's rule: 256-multiple of 2/3 * 4 * dim */
    {"medium", 768, 12, 12, 2048, 0}, /* GPT-2-small-like */
    /* two layers of LLaMA-7B's shape (LLaMA-2-7B's config; 1.3 GB): written in bf16 only, as 7B
     * checkpoints are distributed (an f32 copy would be 2.6 GB and serve no configuration) */
    {"7b-slice", 4096, 2, 32, 11008, 1},
};

/* 1 when the comma- or space-separated list holds item. */
static int list_has(const char *list, const char *item) {
    size_t n = strlen(item);
    for (const char *p = list; (p = strstr(p, item)); p += n)
        if ((p == list || p[-1] == ',' || p[-1] == ' ') && (p[n] == 0 || p[n] == ',' || p[n] == ' ')) return 1;
    return 0;
}

static int mkdir_p(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || !*p) {
            char keep = *p;
            *p = 0;
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
            *p = keep;
            if (!keep) break;
        }
    }
    return 0;
}

/* Writes the first n examples of an Alpaca JSON array to out. */
static int alpaca_head(const char *in, const char *out, int n) {
    char *txt = read_all(in, NULL);
    cJSON *a = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!cJSON_IsArray(a)) {
        cJSON_Delete(a);
        return -1;
    }
    cJSON *o = cJSON_CreateArray();
    int i = 0;
    for (cJSON *e = a->child; e && i < n; e = e->next, i++) cJSON_AddItemToArray(o, cJSON_Duplicate(e, 1));
    char *s = cJSON_Print(o);
    FILE *f = fopen(out, "w");
    int rc = f && s && fputs(s, f) >= 0 ? 0 : -1;
    if (f && fclose(f)) rc = -1;
    free(s);
    cJSON_Delete(o);
    cJSON_Delete(a);
    return rc;
}

/* Writes `in` reordered: the B examples with the most tokens among the first 256, twice (the
 * two warm-up micro-batches), then the others in file order. */
static int longest_first(const char *in, const char *tokp, const char *out, int B, char *err, size_t errlen) {
    tok *t = tok_load(tokp, err, errlen);
    alpaca_set raw = {0};
    dataset d;
    memset(&d, 0, sizeof d);
    if (!t || alpaca_load(in, &raw, err, errlen) || dataset_build(&d, &raw, t, 512, err, errlen)) {
        tok_free(t);
        alpaca_free(&raw);
        return -1;
    }
    int n = d.n, lim = n < 256 ? n : 256, *pick = xmalloc(sizeof(int) * (size_t)B);
    char *used = calloc((size_t)n, 1);
    for (int b = 0; b < B && b < lim; b++) {
        int best = -1;
        for (int i = 0; i < lim; i++)
            if (!used[i] && (best < 0 || d.off[i + 1] - d.off[i] > d.off[best + 1] - d.off[best])) best = i;
        pick[b] = best;
        used[best] = 1;
    }
    char *txt = read_all(in, NULL);
    cJSON *a = txt ? cJSON_Parse(txt) : NULL, *o = cJSON_CreateArray();
    free(txt);
    for (int rep = 0; rep < 2; rep++) /* twice: the second warm-up step runs on the arena's final block */
        for (int b = 0; b < B && b < lim; b++) cJSON_AddItemToArray(o, cJSON_Duplicate(cJSON_GetArrayItem(a, pick[b]), 1));
    int i = 0;
    for (cJSON *e = a ? a->child : NULL; e; e = e->next, i++)
        if (!used[i]) cJSON_AddItemToArray(o, cJSON_Duplicate(e, 1));
    char *js = cJSON_Print(o);
    FILE *f = fopen(out, "w");
    int rc = f && js && fputs(js, f) >= 0 ? 0 : -1;
    if (f && fclose(f)) rc = -1;
    if (rc) snprintf(err, errlen, "%s: cannot write", out);
    free(js);
    cJSON_Delete(o);
    cJSON_Delete(a);
    free(used);
    free(pick);
    dataset_free(&d);
    alpaca_free(&raw);
    tok_free(t);
    return rc;
}

/* Pseudo-words from syllables: a deterministic vocabulary for the synthetic data. */
static void make_word(char *w, size_t n, ag_rng *r) {
    static const char *syl[] = {"ka", "lo", "mi", "ren", "ta", "sul", "ve", "dor", "pi", "an", "ex", "ro", "ni", "que",
                                "bra", "the", "ing", "is", "of", "to", "and", "st", "ple", "mon"};
    int k = 1 + (int)ag_rng_below(r, 3);
    w[0] = 0;
    for (int i = 0; i < k; i++) strncat(w, syl[ag_rng_below(r, 24)], n - strlen(w) - 1);
}

static void emit_words(FILE *f, char words[][16], int nw, int count, ag_rng *r) {
    for (int i = 0; i < count; i++) {
        fputs(words[ag_rng_below(r, (uint64_t)nw)], f);
        if (i + 1 < count) fputc(ag_rng_below(r, 12) == 0 ? ',' : ' ', f);
        if (i + 1 < count && ag_rng_below(r, 12) == 0) fputc(' ', f);
    }
}

/* Alpaca-like examples with Alpaca-like lengths (instruction 6-25 words, an input 40% of the
 * time, output 5-180 words), and a corpus to train a tokenizer on. */
static int synth_data(const char *json_path, const char *corpus_path, int n) {
    ag_rng r;
    ag_rng_seed(&r, 11);
    static char words[600][16];
    for (int i = 0; i < 600; i++) make_word(words[i], 16, &r);
    FILE *f = fopen(json_path, "w"), *c = fopen(corpus_path, "w");
    if (!f || !c) {
        if (f) fclose(f);
        if (c) fclose(c);
        return -1;
    }
    fputs("[\n", f);
    for (int i = 0; i < n; i++) {
        fprintf(f, "%s{\"instruction\": \"", i ? ",\n" : "");
        emit_words(f, words, 600, 6 + (int)ag_rng_below(&r, 20), &r);
        fputs(".\", \"input\": \"", f);
        if (ag_rng_below(&r, 10) < 4) emit_words(f, words, 600, 3 + (int)ag_rng_below(&r, 40), &r);
        fputs("\", \"output\": \"", f);
        int ow = 5 + (int)(ag_rng_uniform(&r) * ag_rng_uniform(&r) * 176);
        emit_words(f, words, 600, ow, &r);
        fputs(".\"}", f);
    }
    fputs("\n]\n", f);
    for (int i = 0; i < 3000; i++) {
        emit_words(c, words, 600, 20, &r);
        fputc('\n', c);
    }
    fputs("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n### Instruction:\n### Input:\n### Response:\n", c);
    int rc = fclose(f) | fclose(c);
    return rc ? -1 : 0;
}

static int cmd_fixtures(int argc, char **argv) {
    const char *out = opt(argc, argv, "out", NULL), *shared = opt(argc, argv, "shared", "../shared");
    const char *sizes = opt(argc, argv, "sizes", "small,medium");
    if (!out) {
        fprintf(stderr, "bench_tool fixtures: --out DIR is required\n");
        return 2;
    }
    if (mkdir_p(out)) {
        fprintf(stderr, "bench_tool fixtures: %s: cannot create: %s\n", out, strerror(errno));
        return 1;
    }
    char tokp[4096], datap[4096], evalp[4096], p[4096], err[1024], source[256];
    snprintf(tokp, sizeof tokp, "%s/tokenizers/llama2.model", shared);
    snprintf(datap, sizeof datap, "%s/data/alpaca_small.json", shared);
    snprintf(evalp, sizeof evalp, "%s/eval.json", out);
    if (file_exists(tokp) && file_exists(datap)) {
        char abs1[PATH_MAX], abs2[PATH_MAX];
        if (realpath(tokp, abs1)) snprintf(tokp, sizeof tokp, "%s", abs1);
        if (realpath(datap, abs2)) snprintf(datap, sizeof datap, "%s", abs2);
        snprintf(source, sizeof source, "../shared: LLaMA-2 tokenizer (32000 pieces), alpaca_small.json (training: its first 28 examples in file order)");
    } else { /* offline fallback: synthetic Alpaca-like data and a tokenizer trained on it */
        char corpus[4096], prefix[4096];
        snprintf(datap, sizeof datap, "%s/synth_alpaca.json", out);
        snprintf(corpus, sizeof corpus, "%s/synth_corpus.txt", out);
        snprintf(prefix, sizeof prefix, "%s/synth_tok", out);
        snprintf(tokp, sizeof tokp, "%s.model", prefix);
        if (!file_exists(tokp) || !file_exists(datap)) {
            if (synth_data(datap, corpus, 800)) {
                fprintf(stderr, "bench_tool fixtures: %s: cannot write synthetic data\n", datap);
                return 1;
            }
            if (tok_train(corpus, prefix, 4000, "bpe", err, sizeof err)) {
                fprintf(stderr, "bench_tool fixtures: %s\n", err);
                return 1;
            }
        }
        snprintf(source, sizeof source, "synthetic (no ../shared): 800 Alpaca-like examples (training: the first 28), BPE tokenizer trained on them");
    }
    /* the timed training runs (issue 11's setup): the first --train-examples (28: 7 micro-batches of
     * 4, 2 warm-up + 5 timed steps) examples in file order.
     * The profile's data: the B longest of the first 256 examples twice first, so the two warm-up
     * steps meet the largest micro-batch (the arena and allocators reach their high-water mark and
     * touch their pages before the timed steps), then the rest in file order. */
    char trainp[4096];
    snprintf(trainp, sizeof trainp, "%s/train_head.json", out);
    if (alpaca_head(datap, trainp, opt_int(argc, argv, "train-examples", 28))) {
        fprintf(stderr, "bench_tool fixtures: %s: cannot write the first examples of %s\n", trainp, datap);
        return 1;
    }
    {
        char benchp[4096];
        snprintf(benchp, sizeof benchp, "%s/bench_data.json", out);
        if (longest_first(datap, tokp, benchp, opt_int(argc, argv, "batch", 4), err, sizeof err)) {
            fprintf(stderr, "bench_tool fixtures: %s\n", err);
            return 1;
        }
        if (alpaca_head(datap, evalp, 32)) { /* evaluation: the first 32 examples in file order */
            fprintf(stderr, "bench_tool fixtures: %s: cannot read the first 32 examples into %s\n", datap, evalp);
            return 1;
        }
        snprintf(datap, sizeof datap, "%s", benchp);
    }
    for (size_t s = 0; s < sizeof SIZES / sizeof SIZES[0]; s++) {
        const size_spec *z = &SIZES[s];
        if (!list_has(sizes, z->name)) continue;
        llama_config c = {.dim = z->dim, .n_layers = z->n_layers, .n_heads = z->n_heads, .n_kv_heads = z->n_heads,
                          .hidden_dim = z->hidden, .vocab_size = 32000, .max_seq_len = 1024, .norm_eps = 1e-6f,
                          .rope_theta = 10000.0f, .tied = 0};
        char stamp[256];
        snprintf(stamp, sizeof stamp, "dim %d layers %d heads %d hidden %d vocab %d seed %zu std 0.02 v1\n", c.dim,
                 c.n_layers, c.n_heads, c.hidden_dim, c.vocab_size, s + 1);
        const char *dts[3] = {"f32", "bf16", "f16"};
        const ag_dtype dtv[3] = {AG_F32, AG_BF16, AG_F16};
        int nd = list_has(opt(argc, argv, "dtypes", "f32,bf16"), "f16") ? 3 : 2, d0 = z->bf16_only ? 1 : 0;
        if (z->bf16_only) nd = 2;
        int have = 1;
        for (int d = d0; d < nd; d++) {
            snprintf(p, sizeof p, "%s/%s-%s/bench_stamp", out, z->name, dts[d]);
            char *old = read_all(p, NULL);
            have &= old && !strcmp(old, stamp);
            free(old);
        }
        if (have) continue;
        model_weights w;
        double t0 = now();
        if (model_init_random(&w, &c, s + 1, 0.02f)) {
            fprintf(stderr, "bench_tool fixtures: cannot make the %s model\n", z->name);
            return 1;
        }
        for (int d = d0; d < nd; d++) {
            snprintf(p, sizeof p, "%s/%s-%s", out, z->name, dts[d]);
            if (model_save_hf(p, &w, dtv[d], 0, err, sizeof err)) {
                fprintf(stderr, "bench_tool fixtures: %s\n", err);
                model_free(&w);
                return 1;
            }
            snprintf(p, sizeof p, "%s/%s-%s/bench_stamp", out, z->name, dts[d]);
            FILE *f = fopen(p, "w");
            if (f) {
                fputs(stamp, f);
                fclose(f);
            }
        }
        fprintf(stderr, "fixtures: %s model (%zu parameters) written as %s%s in %.1f s\n", z->name,
                model_param_count(&c), d0 ? "bf16" : "f32, bf16", nd > 2 ? ", f16" : "", now() - t0);
        model_free(&w);
    }
    snprintf(p, sizeof p, "%s/fixtures.sh", out);
    FILE *f = fopen(p, "w");
    if (!f) {
        fprintf(stderr, "bench_tool fixtures: %s: cannot write\n", p);
        return 1;
    }
    fprintf(f, "TOKENIZER='%s'\nDATA='%s'\nTRAIN_DATA='%s'\nEVAL_DATA='%s'\nDATA_SOURCE='%s'\n", tokp, datap, trainp, evalp,
            source);
    fclose(f);
    return 0;
}

/* ---- tokens --------------------------------------------------------------------------------- */

static int cmd_tokens(int argc, char **argv) {
    const char *tokp = opt(argc, argv, "tokenizer", NULL), *data = opt(argc, argv, "data", NULL);
    const char *out = opt(argc, argv, "out", NULL);
    int max_seq_len = opt_int(argc, argv, "max-seq-len", 512);
    if (!tokp || !data || !out) {
        fprintf(stderr, "bench_tool tokens: --tokenizer, --data and --out are required\n");
        return 2;
    }
    char err[1024];
    tok *t = tok_load(tokp, err, sizeof err);
    alpaca_set raw = {0};
    dataset d;
    memset(&d, 0, sizeof d);
    if (!t || alpaca_load(data, &raw, err, sizeof err) || dataset_build(&d, &raw, t, max_seq_len, err, sizeof err)) {
        fprintf(stderr, "bench_tool tokens: %s\n", err);
        tok_free(t);
        alpaca_free(&raw);
        return 1;
    }
    int rc = 0;
    if (dataset_write_json(&d, t, tokp, out, err, sizeof err)) {
        fprintf(stderr, "bench_tool tokens: %s\n", err);
        rc = 1;
    }
    dataset_free(&d);
    alpaca_free(&raw);
    tok_free(t);
    return rc;
}

/* ---- adapter ------------------------------------------------------------------------------- */

static int cmd_adapter(int argc, char **argv) {
    const char *model = opt(argc, argv, "model", NULL), *out = opt(argc, argv, "out", NULL);
    int K = opt_int(argc, argv, "adapter-len", 10), L = opt_int(argc, argv, "adapter-layer", 30);
    double gstd = atof(opt(argc, argv, "gate-std", "0"));
    char err[1024];
    model_weights w;
    if (!model || !out) {
        fprintf(stderr, "bench_tool adapter: --model and --out are required\n");
        return 2;
    }
    if (model_load(model, &w, err, sizeof err)) {
        fprintf(stderr, "bench_tool adapter: %s\n", err);
        return 1;
    }
    if (L > w.cfg.n_layers) L = w.cfg.n_layers;
    adapter_data a = {K, L, w.cfg.n_layers, w.cfg.n_heads, w.cfg.dim, GATE_TANH, NULL, NULL};
    a.query = xmalloc(sizeof(float) * (size_t)L * K * w.cfg.dim);
    a.gates = xmalloc(sizeof(float) * (size_t)L * w.cfg.n_heads);
    ag_rng r;
    ag_rng_seed(&r, 1234);
    for (size_t i = 0; i < (size_t)L * K * w.cfg.dim; i++) a.query[i] = (float)ag_rng_normal(&r);
    for (int i = 0; i < L * w.cfg.n_heads; i++) a.gates[i] = (float)(gstd * ag_rng_normal(&r));
    int rc = adapter_export(out, EXPORT_SAFETENSORS, &a, err, sizeof err);
    if (rc) fprintf(stderr, "bench_tool adapter: %s\n", err);
    free(a.query);
    free(a.gates);
    model_free(&w);
    return rc ? 1 : 0;
}

/* ---- profile: the training step op by op --------------------------------------------------
 * The real training step (llama_loss, ag_backward) with the tape's op hook timing every op:
 * forward ops split by whether they ran in the frozen (tape-less) layers or the recorded ones,
 * linears named by the weight they multiply. */

enum { P_EMB, P_NORM, P_QKV, P_ROPE, P_PROMPT_KV, P_GATE, P_ATTN, P_WO, P_ADD, P_W13, P_SWIGLU, P_W2, P_GATHER,
       P_CLS, P_CE, P_OTHER, P_NCAT };
static const char *P_NAMES[P_NCAT] = {"embedding", "rmsnorm", "linear q/k/v", "rope", "prompt k/v (A Wk^T, A Wv^T)",
                                      "gate tanh", "attention", "linear wo", "residual add", "linear w1/w3", "swiglu",
                                      "linear w2", "gather labelled rows", "classifier", "cross-entropy", "other ops"};

typedef struct prof {
    double fwd[P_NCAT][2]; /* [category][0 frozen layers / 1 recorded layers and head] */
    double bwd[P_NCAT];
    double adam, total;
    const model_weights *w;
    const trainable *ad;
} prof;

/* Which weight a linear multiplies by (the prompt projections share wk/wv but have the K prompts
 * as input rows). */
static int linear_category(const prof *P, const void *W, const float *x) {
    if (W == P->w->cls.data) return P_CLS;
    for (int l = 0; l < P->w->cfg.n_layers; l++) {
        const llama_layer_weights *L = &P->w->layers[l];
        if (W == L->wk.data || W == L->wv.data) return x >= P->ad->p && x < P->ad->p + P->ad->n ? P_PROMPT_KV : P_QKV;
        if (W == L->wq.data) return P_QKV;
        if (W == L->wo.data) return P_WO;
        if (W == L->w1.data || W == L->w3.data) return P_W13;
        if (W == L->w2.data) return P_W2;
    }
    return P_OTHER;
}

static void prof_hook(void *ctx, const ag_tape *t, ag_op op, int backward, const ag_tensor *out, ag_tensor *const *src,
                      double seconds) {
    prof *P = ctx;
    int cat = P_OTHER;
    (void)out;
    switch (op) {
    case AG_OP_LINEAR: cat = linear_category(P, src[1]->data, src[0]->data); break;
    case AG_OP_EMBEDDING: cat = P_EMB; break;
    case AG_OP_RMSNORM: cat = P_NORM; break;
    case AG_OP_ROPE: cat = P_ROPE; break;
    case AG_OP_SWIGLU: cat = P_SWIGLU; break;
    case AG_OP_ADD: cat = P_ADD; break;
    case AG_OP_GATHER: cat = P_GATHER; break;
    case AG_OP_ATTENTION: cat = P_ATTN; break;
    case AG_OP_GATE: cat = P_GATE; break;
    case AG_OP_CROSS_ENTROPY: cat = P_CE; break;
    default: break;
    }
    if (backward) P->bwd[cat] += seconds;
    else P->fwd[cat][t->no_grad ? 0 : 1] += seconds;
}

static int cmd_profile(int argc, char **argv) {
    const char *model = opt(argc, argv, "model", NULL), *tokp = opt(argc, argv, "tokenizer", NULL);
    const char *data = opt(argc, argv, "data", NULL);
    int L = opt_int(argc, argv, "adapter-layer", 30), K = opt_int(argc, argv, "adapter-len", 10);
    int B = opt_int(argc, argv, "batch-size", 4), W = opt_int(argc, argv, "first", 2), N = opt_int(argc, argv, "steps", 4);
    int threads = opt_int(argc, argv, "threads", omp_get_num_procs());
    int bf16 = !strcmp(opt(argc, argv, "precision", "f32"), "bf16");
    if (!model || !tokp || !data) {
        fprintf(stderr, "bench_tool profile: --model, --tokenizer and --data are required\n");
        return 2;
    }
    if (bf16 && !kn_bf16_gemm_available()) {
        fprintf(stderr, "bench_tool profile: --precision bf16: this CPU has no AVX512-BF16\n");
        return 1;
    }
    omp_set_num_threads(threads);
    char err[1024];
    model_weights w;
    tok *tk = NULL;
    alpaca_set raw = {0};
    dataset d;
    memset(&d, 0, sizeof d);
    trainable tr;
    memset(&tr, 0, sizeof tr);
    if (model_load(model, &w, err, sizeof err)) {
        fprintf(stderr, "bench_tool profile: %s\n", err);
        return 1;
    }
    if (L > w.cfg.n_layers) L = w.cfg.n_layers;
    if (!(tk = tok_load(tokp, err, sizeof err)) || alpaca_load(data, &raw, err, sizeof err) ||
        dataset_build(&d, &raw, tk, 512, err, sizeof err) ||
        trainable_adapter_init(&tr, &w.cfg, K, L, GATE_TANH, 1, err, sizeof err)) {
        fprintf(stderr, "bench_tool profile: %s\n", err);
        return 1;
    }
    for (int j = 0; j < L * w.cfg.n_heads; j++) tr.p[(size_t)L * K * w.cfg.dim + j] = 0.1f; /* gates: every path runs */
    loader ld;
    adamw opt_;
    ag_arena arena;
    ag_tape tape;
    loader_init(&ld, &d, B, 0, 0);
    adamw_init(&opt_, tr.n, 0.9, 0.95, 1e-8, 0.02);
    ag_arena_init(&arena, 1 << 24);
    ag_tape_init(&tape, &arena);
    tape.bf16 = bf16; /* as the trainer sets it for --precision bf16 */
    prof P, junk;
    memset(&P, 0, sizeof P);
    P.w = &w;
    P.ad = &tr;
    tape.hook = prof_hook;
    double tokens = 0, ltokens = 0;
    for (int s = 0; s < W + N; s++) {
        prof *pp = s < W ? &junk : &P;
        memset(&junk, 0, sizeof junk);
        junk.w = &w;
        junk.ad = &tr;
        tape.hook_ctx = pp;
        const microbatch *mb = loader_get(&ld, 0, s);
        double t0 = now();
        trainable_zero_grad(&tr);
        ag_tape_reset(&tape);
        ag_arena_reset(&arena);
        ag_tensor *loss = llama_loss(&tape, &w, &tr, mb, NULL);
        ag_backward(&tape, loss, 1.0f);
        double t1 = now();
        adamw_step(&opt_, tr.p, tr.g, 1e-4);
        pp->adam += now() - t1;
        pp->total += now() - t0;
        if (s >= W) {
            tokens += mb->T;
            ltokens += mb->n_loss;
        }
    }
    printf("profile: %s, adapter K=%d L=%d of %d layers, batch %d, %d timed steps after %d warm-up, %d threads, %s GEMMs\n", model,
           K, L, w.cfg.n_layers, B, N, W, threads, bf16 ? "bf16" : "f32");
    printf("         %.0f tokens (%.0f with a label) in %.3f s: %.0f tok/s; arena high-water %.1f MB\n", tokens, ltokens, P.total,
           tokens / P.total, arena.high / 1e6);
    printf("  %-30s %10s %10s %10s %7s\n", "op", "fwd frozen", "fwd adapt.", "backward", "share");
    double acc = 0;
    for (int c = 0; c < P_NCAT; c++) {
        double tot = P.fwd[c][0] + P.fwd[c][1] + P.bwd[c];
        acc += tot;
        if (tot <= 0) continue;
        printf("  %-30s %9.1fms %9.1fms %9.1fms %6.1f%%\n", P_NAMES[c], 1e3 * P.fwd[c][0] / N, 1e3 * P.fwd[c][1] / N,
               1e3 * P.bwd[c] / N, 100.0 * tot / P.total);
    }
    printf("  %-30s %32.1fms %6.1f%%\n", "AdamW", 1e3 * P.adam / N, 100.0 * P.adam / P.total);
    printf("  %-30s %32.1fms %6.1f%%\n", "other (zero grad, resets, ...)", 1e3 * (P.total - acc - P.adam) / N,
           100.0 * (P.total - acc - P.adam) / P.total);
    printf("  %-30s %32.1fms\n", "step", 1e3 * P.total / N);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
    adamw_free(&opt_);
    loader_free(&ld);
    trainable_free(&tr);
    dataset_free(&d);
    alpaca_free(&raw);
    tok_free(tk);
    model_free(&w);
    return 0;
}

/* ---- prompt-ids: the first example's prompt (without its bos), comma-separated --------------- */

static int cmd_prompt_ids(int argc, char **argv) {
    const char *path = opt(argc, argv, "tokens", NULL);
    char *txt = path ? read_all(path, NULL) : NULL;
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "examples"), 0);
    if (!e) {
        fprintf(stderr, "bench_tool prompt-ids: --tokens FILE: no examples in %s\n", path ? path : "(none)");
        cJSON_Delete(j);
        return 2;
    }
    int np = (int)cJSON_GetArrayItem(e, 0)->valuedouble;
    for (int k = 2; k <= np && k < cJSON_GetArraySize(e); k++) printf("%s%d", k > 2 ? "," : "", cJSON_GetArrayItem(e, k)->valueint);
    printf("\n");
    cJSON_Delete(j);
    return 0;
}

/* ---- report --------------------------------------------------------------------------------- */

typedef struct tokset { int n; int *len; int *nloss; } tokset; /* per example */

static int tokset_load(const char *path, tokset *ts) {
    memset(ts, 0, sizeof *ts);
    char *txt = read_all(path, NULL);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    cJSON *ex = cJSON_GetObjectItem(j, "examples");
    if (!cJSON_IsArray(ex)) {
        cJSON_Delete(j);
        return -1;
    }
    ts->n = cJSON_GetArraySize(ex);
    ts->len = xmalloc(sizeof(int) * (size_t)ts->n);
    ts->nloss = xmalloc(sizeof(int) * (size_t)ts->n);
    int i = 0;
    for (cJSON *e = ex->child; e; e = e->next, i++) {
        int L = cJSON_GetArraySize(e) - 1, np = (int)cJSON_GetArrayItem(e, 0)->valuedouble;
        ts->len[i] = L;
        /* targets: labels[t+1] for t < L-1, non-zero from position np on (ids are never 0 there) */
        int lo = np > 1 ? np : 1;
        ts->nloss[i] = L > lo ? L - lo : 0;
    }
    cJSON_Delete(j);
    return 0;
}

typedef struct mcfg { int dim, L, H, G, hidden, V; } mcfg;

static int mcfg_load(const char *model_dir, mcfg *m) {
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", model_dir);
    char *txt = read_all(p, NULL);
    cJSON *j = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!j) return -1;
    m->dim = cJSON_GetObjectItem(j, "hidden_size")->valueint;
    m->L = cJSON_GetObjectItem(j, "num_hidden_layers")->valueint;
    m->H = cJSON_GetObjectItem(j, "num_attention_heads")->valueint;
    cJSON *g = cJSON_GetObjectItem(j, "num_key_value_heads");
    m->G = g ? g->valueint : m->H;
    m->hidden = cJSON_GetObjectItem(j, "intermediate_size")->valueint;
    m->V = cJSON_GetObjectItem(j, "vocab_size")->valueint;
    cJSON_Delete(j);
    return 0;
}

/* Counted FLOPs (see the file comment) of micro-batches [first, first+steps) of batch B.
 * mode: 0 adapter training, 1 full training, 2 forward only (eval). Also the tokens. */
static double count_flops(const mcfg *m, const tokset *ts, int B, int first, int steps, int mode, int K, int Lad,
                          double *tokens, double *loss_tokens) {
    double kv = (double)m->dim / m->H * m->G, dim = m->dim;
    double lin = 2.0 * (2 * dim * dim + 2 * dim * kv + 3 * dim * m->hidden); /* per token per layer */
    double total = 0;
    *tokens = *loss_tokens = 0;
    for (int s = first; s < first + steps; s++) {
        double T = 0, NL = 0, sq = 0, sn = 0;
        for (int e = s * B; e < (s + 1) * B && e < ts->n; e++) {
            T += ts->len[e];
            NL += ts->nloss[e];
            sq += (double)ts->len[e] * ts->len[e];
            sn += ts->len[e];
        }
        int la = mode == 1 ? 0 : (mode == 0 ? Lad : Lad); /* eval with an adapter: Lad layers have a prefix */
        double attn = 4.0 * sq * dim, pre = 4.0 * sn * K * dim + 4.0 * K * dim * kv;
        double fwd = m->L * (lin * T + attn) + la * pre + 2.0 * NL * dim * m->V;
        double bwd = 0;
        if (mode == 0) bwd = Lad * (lin * T + 2 * attn + 2 * pre) + 2.0 * NL * dim * m->V;
        if (mode == 1) bwd = m->L * (2 * lin * T + 2 * attn) + 4.0 * NL * dim * m->V;
        total += fwd + bwd;
        *tokens += T;
        *loss_tokens += NL;
    }
    return total;
}

static const char *sget(cJSON *j, const char *k) {
    cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsString(v) ? v->valuestring : "";
}
static double nget(cJSON *j, const char *k, double def) {
    cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

/* Per-step seconds of steps [first, first+steps) and the losses of every step (up to max_losses)
 * from a C run's metrics.jsonl (a step's seconds: total_tokens / total_tokens_per_s). */
static int c_metrics(const char *path, int first, int steps, double *sec, double *losses, int max_losses, int *n_losses) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192];
    int i = 0, got = 0;
    *n_losses = 0;
    while (fgets(line, sizeof line, f)) {
        cJSON *o = cJSON_Parse(line);
        if (!o) continue;
        double tt = nget(o, "total_tokens", 0), tps = nget(o, "total_tokens_per_s", 0);
        if (i < max_losses) losses[(*n_losses)++] = nget(o, "loss", NAN);
        if (i >= first && i < first + steps && tps > 0) sec[got++] = tt / tps;
        cJSON_Delete(o);
        i++;
    }
    fclose(f);
    return got == steps ? 0 : -1;
}

typedef struct rec {
    cJSON *j;
    const char *kind, *impl, *model, *method;
} rec;

/* Per-step seconds of the timed steps and the losses of a train record (C records point at
 * their metrics.jsonl; PyTorch records carry step_seconds, warm-up steps included). */
static int train_numbers(cJSON *j, double *sec, double *losses, int *nl) {
    int first = (int)nget(j, "first", 0), steps = (int)nget(j, "steps", 0);
    if (steps < 1 || steps > 64) return -1;
    if (!strcmp(sget(j, "impl"), "c")) return c_metrics(sget(j, "metrics"), first, steps, sec, losses, 64, nl);
    cJSON *st = cJSON_GetObjectItem(j, "step_seconds"), *l = cJSON_GetObjectItem(j, "losses");
    if (cJSON_GetArraySize(st) < first + steps) return -1;
    for (int i = 0; i < steps; i++) sec[i] = cJSON_GetArrayItem(st, first + i)->valuedouble;
    *nl = 0;
    for (cJSON *e = l ? l->child : NULL; e && *nl < 64; e = e->next) losses[(*nl)++] = e->valuedouble;
    return 0;
}

static const char *impl_name(const char *impl) {
    if (!strcmp(impl, "c")) return "C llama-adapter";
    if (!strcmp(impl, "torch-ref")) return "PyTorch padded to longest";
    if (!strcmp(impl, "torch-ref512")) return "PyTorch reference-style";
    if (!strcmp(impl, "torch-opt")) return "PyTorch optimised";
    return impl;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(const double *v, int n) {
    double t[64];
    if (n < 1) return 0;
    if (n > 64) n = 64;
    memcpy(t, v, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* The peaks of the compute paths (bench_tool peak) and PyTorch's GEMM rates (peer_torch matmul). */
typedef struct peaks {
    double f32, f32_1t, bf16, bf16_1t, sgemm, sgemm_1t, bf16_gemm, torch_f32, torch_bf16;
    int threads, n;
    const char *cpu, *isa, *amx;
} peaks;

/* The measured peak a run at precision prec is held against: the f32 FMA instruction peak for
 * f32, the vdpbf16ps peak for bf16 and autocast (bf16 GEMMs), f32's where the CPU has no bf16. */
static double path_peak(const peaks *P, const char *prec) {
    return strcmp(prec, "f32") && P->bf16 > 0 ? P->bf16 : P->f32;
}

/* One (implementation, precision, weights) row of a training table: the numbers of its best
 * run (the highest median loss tokens/s) over the timed steps of that run. */
typedef struct trow {
    const char *impl, *prec, *wts;
    int runs, nl;
    double lps, tps, sps, gfl, rss; /* medians of loss tok/s, tok/s, s/step, useful GFLOP/s; peak RSS MB */
    double lps_worst, padded;
    double losses[64];
} trow;

/* What the summary keeps of one training table. */
typedef struct tsum {
    const char *size, *method;
    const trow *cbf, *cf, *fast, *opt32, *ref512;
    double pk_f32, pk_bf16;
} tsum;

static void print_summary(const tsum *S, int ns) {
    int any = 0;
    for (int i = 0; i < ns; i++) any |= !strcmp(S[i].method, "adapter");
    if (!any) return;
    printf("\n== summary: adapter training, loss tokens/s (MFU against the path's instruction peak); C f32: the faster of\n"
           "   its runs on the bf16 and the f32 file\n\n");
    printf("| shape | C bf16 | C f32 | fastest PyTorch | PyTorch fp32 unpadded | PyTorch reference-style | C bf16 / fastest "
           "PyTorch | C f32 / PyTorch fp32 unpadded | C bf16 / reference-style |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < ns; i++) {
        const tsum *s = &S[i];
        if (strcmp(s->method, "adapter")) continue;
        char c[5][96], r[3][24];
        const trow *rw[5] = {s->cbf, s->cf, s->fast, s->opt32, s->ref512};
        for (int k = 0; k < 5; k++) {
            if (!rw[k]) {
                snprintf(c[k], sizeof c[k], "-");
                continue;
            }
            double pk = strcmp(rw[k]->prec, "f32") && s->pk_bf16 > 0 ? s->pk_bf16 : s->pk_f32;
            if (k == 2) /* which configuration was the fastest */
                snprintf(c[k], sizeof c[k], "%.1f (%.0f%%; %s, %s)", rw[k]->lps, 100.0 * rw[k]->gfl / pk, rw[k]->prec,
                         !strcmp(rw[k]->impl, "torch-opt")   ? "unpadded"
                         : !strcmp(rw[k]->impl, "torch-ref") ? "padded to longest"
                                                             : "padded to 512");
            else snprintf(c[k], sizeof c[k], "%.1f (%.0f%%)", rw[k]->lps, 100.0 * rw[k]->gfl / pk);
        }
        const trow *num[3] = {s->cbf, s->cf, s->cbf}, *den[3] = {s->fast, s->opt32, s->ref512};
        for (int k = 0; k < 3; k++) {
            if (num[k] && den[k] && den[k]->lps > 0) snprintf(r[k], sizeof r[k], "%.2fx", num[k]->lps / den[k]->lps);
            else snprintf(r[k], sizeof r[k], "-");
        }
        printf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s->size, c[0], c[1], c[2], c[3], c[4], r[0], r[1], r[2]);
    }
}

static int cmd_report(int argc, char **argv) {
    const char *path = opt(argc, argv, "results", NULL);
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) {
        fprintf(stderr, "bench_tool report: --results FILE: cannot read %s\n", path ? path : "(none)");
        return 2;
    }
    rec *rs = NULL;
    int n = 0, cap = 0;
    char line[1 << 16];
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            rs = realloc(rs, sizeof *rs * (size_t)cap);
        }
        rs[n++] = (rec){j, sget(j, "kind"), sget(j, "impl"), sget(j, "model"), sget(j, "method")};
    }
    fclose(f);
    peaks P = {0};
    P.cpu = P.isa = P.amx = "";
    for (int i = 0; i < n; i++) {
        cJSON *j = rs[i].j;
        if (!strcmp(rs[i].kind, "peak")) {
            P.sgemm = nget(j, "gflops", 0), P.sgemm_1t = nget(j, "gflops_1t", 0), P.n = (int)nget(j, "n", 0);
            P.threads = (int)nget(j, "threads", 0), P.f32 = nget(j, "f32_peak", 0), P.f32_1t = nget(j, "f32_peak_1t", 0);
            P.bf16 = nget(j, "bf16_peak", 0), P.bf16_1t = nget(j, "bf16_peak_1t", 0), P.bf16_gemm = nget(j, "bf16_gemm", 0);
            P.cpu = sget(j, "cpu"), P.isa = sget(j, "f32_isa"), P.amx = sget(j, "amx");
            if (P.f32 <= 0) P.f32 = P.sgemm; /* no FMA loop for this CPU: the sgemm rate stands in */
        }
        if (!strcmp(rs[i].kind, "torch_peak")) P.torch_f32 = nget(j, "gflops", 0), P.torch_bf16 = nget(j, "gflops_bf16", 0);
    }
    printf("\nmachine: %s, %d threads; peak of each compute path, GFLOP/s (1 thread / %d threads):\n", P.cpu, P.threads, P.threads);
    printf("   f32 path (OpenBLAS sgemm): instruction peak %s %.1f / %.1f; sgemm %d^3 reaches %.1f / %.1f\n", P.isa, P.f32_1t,
           P.f32, P.n, P.sgemm_1t, P.sgemm);
    if (P.bf16 > 0)
        printf("   bf16 path (AVX512-BF16):   instruction peak vdpbf16ps zmm %.1f / %.1f; kn_gemm_bf16 %d^3 reaches %.1f (%d threads)\n",
               P.bf16_1t, P.bf16, P.n, P.bf16_gemm, P.threads);
    else printf("   bf16 path (AVX512-BF16):   not available on this CPU\n");
    printf("   AMX:                       %s\n", P.amx);
    /* register-only loops scale with the threads on an idle machine: less means other load shared
     * the cores while the peaks were measured, and every MFU below is then too high */
    if (P.threads > 1 && P.f32_1t > 0 && P.f32 < 0.8 * P.threads * P.f32_1t)
        printf("   warning: the %d-thread instruction peak is only %.2fx the 1-thread one: other processes shared the cores\n"
               "   while it was measured, so the MFU figures below are overstated\n",
               P.threads, P.f32 / P.f32_1t);
    if (P.torch_f32 > 0)
        printf("   PyTorch torch.matmul %d^3: f32 %.1f, bf16 %.1f (%d threads)\n", P.n, P.torch_f32, P.torch_bf16, P.threads);
    for (int i = 0; i < n; i++)
        if (!strcmp(rs[i].kind, "note")) printf("note: %s\n", sget(rs[i].j, "text"));
    /* training tables: one per (size, method) in order of appearance */
    const char *groups[16][2];
    int ng = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(rs[i].kind, "train")) continue;
        const char *sz = sget(rs[i].j, "size");
        int k;
        for (k = 0; k < ng; k++)
            if (!strcmp(groups[k][0], sz) && !strcmp(groups[k][1], rs[i].method)) break;
        if (k == ng && ng < 16) {
            groups[ng][0] = sz;
            groups[ng++][1] = rs[i].method;
        }
    }
    static trow rows[16][24];
    tsum sums[16];
    int nsum = 0;
    for (int g = 0; g < ng; g++) {
        trow *R = rows[g];
        int nr = 0, B = 4, first = 0, steps = 0, K = 10, Lad = 0, full = 0, have = 0;
        mcfg m;
        tokset ts;
        double stT[64], stNL[64], stF[64], ntok = 0, ltok = 0, fl = 0;
        for (int i = 0; i < n; i++) {
            cJSON *j = rs[i].j;
            if (strcmp(rs[i].kind, "train") || strcmp(sget(j, "size"), groups[g][0]) || strcmp(rs[i].method, groups[g][1]))
                continue;
            if (!have) {
                if (mcfg_load(sget(j, "model_dir"), &m) || tokset_load(sget(j, "tokens"), &ts)) {
                    printf("  (record %d: cannot read its model config or tokens)\n", i);
                    continue;
                }
                B = (int)nget(j, "batch", 4), first = (int)nget(j, "first", 0), steps = (int)nget(j, "steps", 0);
                K = (int)nget(j, "K", 10), Lad = (int)nget(j, "L", 0), full = !strcmp(rs[i].method, "full");
                if (steps > 64) steps = 64;
                for (int s = 0; s < steps; s++) {
                    stF[s] = count_flops(&m, &ts, B, first + s, 1, full, K, Lad, &stT[s], &stNL[s]);
                    ntok += stT[s], ltok += stNL[s], fl += stF[s];
                }
                have = 1;
            }
            const char *prec = sget(j, "precision");
            if (!*prec) prec = "f32";
            int r;
            for (r = 0; r < nr; r++)
                if (!strcmp(R[r].impl, rs[i].impl) && !strcmp(R[r].prec, prec) && !strcmp(R[r].wts, sget(j, "weights"))) break;
            if (r == nr) {
                if (nr == 24) continue;
                memset(&R[nr], 0, sizeof R[nr]);
                R[nr].impl = rs[i].impl, R[nr].prec = prec, R[nr].wts = sget(j, "weights");
                R[nr].padded = nget(j, "padded_tokens", 0);
                nr++;
            }
            double sec[64], losses[64], v[64];
            int nl;
            if ((int)nget(j, "first", 0) != first || (int)nget(j, "steps", 0) != steps || train_numbers(j, sec, losses, &nl))
                continue;
            for (int s = 0; s < steps; s++) v[s] = stNL[s] / sec[s];
            double lps = median(v, steps);
            if (!R[r].runs || lps < R[r].lps_worst) R[r].lps_worst = lps;
            if (!R[r].runs || lps > R[r].lps) {
                R[r].lps = lps;
                for (int s = 0; s < steps; s++) v[s] = stT[s] / sec[s];
                R[r].tps = median(v, steps);
                R[r].sps = median(sec, steps);
                for (int s = 0; s < steps; s++) v[s] = stF[s] / sec[s] / 1e9;
                R[r].gfl = median(v, steps);
                R[r].rss = nget(j, "peak_rss_mb", 0);
                memcpy(R[r].losses, losses, sizeof(double) * (size_t)nl);
                R[r].nl = nl;
            }
            R[r].runs++;
        }
        if (!have) continue;
        printf("\n== %s training, %s (dim %d, %d layers, %d heads, hidden %d, vocab %d)", full ? "full" : "adapter",
               groups[g][0], m.dim, m.L, m.H, m.hidden, m.V);
        if (!full) printf(", adapter K=%d L=%d", K, Lad);
        printf("\n   batch %d, %d warm-up + %d timed steps (micro-batches %d..%d): %.0f tokens, %.0f with a label; "
               "%.1f useful GFLOP/step on average\n",
               B, first, steps, first, first + steps - 1, ntok, ltok, fl / steps / 1e9);
        printf("   %-27s %-8s %-4s %9s %8s %8s %8s %6s %8s %s\n", "implementation", "compute", "wts", "label/s", "tok/s", "s/step",
               "GFLOP/s", "MFU", "RSS MB", "runs: spread");
        tsum *S = &sums[nsum++];
        memset(S, 0, sizeof *S);
        S->size = groups[g][0], S->method = groups[g][1], S->pk_f32 = P.f32, S->pk_bf16 = P.bf16;
        for (int r = 0; r < nr; r++) {
            trow *w = &R[r];
            if (!w->runs) {
                printf("   %-27s %-8s %-4s   (no timing: the run failed, see its log)\n", impl_name(w->impl), w->prec, w->wts);
                continue;
            }
            printf("   %-27s %-8s %-4s %9.1f %8.0f %8.3f %8.1f %5.1f%% %8.0f %d: %.0f%%", impl_name(w->impl), w->prec, w->wts, w->lps,
                   w->tps, w->sps, w->gfl, 100.0 * w->gfl / path_peak(&P, w->prec), w->rss, w->runs,
                   100.0 * (w->lps / w->lps_worst - 1));
            if (w->padded > 0) printf("  (%.0f%% of its tokens padding)", 100.0 * (1 - ntok / w->padded));
            printf("\n");
            int c = !strcmp(w->impl, "c");
            if (c && !strcmp(w->prec, "bf16") && (!S->cbf || w->lps > S->cbf->lps)) S->cbf = w;
            if (c && !strcmp(w->prec, "f32") && (!S->cf || w->lps > S->cf->lps)) S->cf = w;
            if (!c && (!S->fast || w->lps > S->fast->lps)) S->fast = w;
            if (!strcmp(w->impl, "torch-opt") && !strcmp(w->prec, "f32")) S->opt32 = w;
            if (!strcmp(w->impl, "torch-ref512") && !strcmp(w->prec, "f32")) S->ref512 = w;
        }
        /* loss cross-checks: the same values on both sides (C reads the bf16 file, PyTorch converts
         * it exactly to f32), same batches and schedule */
        for (int k = 0; k < 2; k++) {
            const char *pc = k ? "bf16" : "f32";
            const trow *a = NULL, *b = NULL;
            for (int r = 0; r < nr; r++) {
                if (!R[r].runs || strcmp(R[r].prec, pc) || (!strcmp(R[r].impl, "c") && strcmp(R[r].wts, "bf16"))) continue;
                if (!strcmp(R[r].impl, "c") && !a) a = &R[r];
                if (!strcmp(R[r].impl, "torch-opt") && !b) b = &R[r];
            }
            if (!a || !b) continue;
            int kk = a->nl < b->nl ? a->nl : b->nl;
            double worst = 0;
            for (int i = 0; i < kk; i++) worst = fmax(worst, fabs(a->losses[i] - b->losses[i]) / fabs(b->losses[i]));
            printf("   losses, C %s vs PyTorch %s (%s): %d steps, C %.6f .. %.6f, PyTorch %.6f .. %.6f, max rel diff %.2e\n", pc,
                   pc, k ? "different bf16 roundings: agreement within ~1e-3 expected" : "the same f32 values", kk, a->losses[0],
                   a->losses[kk - 1], b->losses[0], b->losses[kk - 1], worst);
        }
        if (S->cbf && S->fast)
            printf("   C bf16 / fastest PyTorch (%s, %s): %.2fx\n", impl_name(S->fast->impl), S->fast->prec, S->cbf->lps / S->fast->lps);
        if (S->cf && S->opt32) printf("   C f32 / PyTorch fp32 unpadded: %.2fx\n", S->cf->lps / S->opt32->lps);
        if (S->cbf && S->ref512)
            printf("   C bf16 / PyTorch reference-style (fp32, padded to max_seq_len): %.2fx\n", S->cbf->lps / S->ref512->lps);
        if (full && !S->cbf && S->cf && S->fast)
            printf("   C f32 / fastest PyTorch (%s, %s): %.2fx\n", impl_name(S->fast->impl), S->fast->prec, S->cf->lps / S->fast->lps);
        free(ts.len);
        free(ts.nloss);
    }
    print_summary(sums, nsum);
    /* forward-only evaluation */
    int header = 0;
    for (int i = 0; i < n; i++) {
        cJSON *j = rs[i].j;
        if (strcmp(rs[i].kind, "eval")) continue;
        mcfg m;
        tokset ts;
        if (mcfg_load(sget(j, "model_dir"), &m) || tokset_load(sget(j, "tokens"), &ts)) continue;
        int B = (int)nget(j, "batch", 4), ne = (int)nget(j, "examples", 32);
        double ntok, ltok, sec = nget(j, "seconds", -1);
        double fl = count_flops(&m, &ts, B, 0, (ne + B - 1) / B, 2, 0, 0, &ntok, &ltok);
        const char *prec = *sget(j, "precision") ? sget(j, "precision") : "f32";
        if (!header) {
            printf("\n== forward-only evaluation (base model, no adapter; loss over the labelled tokens; one cold pass)\n");
            printf("   %-8s %-27s %-8s %-4s %10s %10s %6s %12s\n", "model", "implementation", "compute", "wts", "tok/s", "label/s",
                   "MFU", "loss");
            header = 1;
        }
        if (sec > 0)
            printf("   %-8s %-27s %-8s %-4s %10.0f %10.0f %5.1f%% %12.6f\n", sget(j, "size"), impl_name(rs[i].impl), prec,
                   sget(j, "weights"), ntok / sec, ltok / sec, 100.0 * fl / sec / 1e9 / path_peak(&P, prec), nget(j, "loss", NAN));
        else printf("   %-8s %-27s %-8s %-4s   (failed)\n", sget(j, "size"), impl_name(rs[i].impl), prec, sget(j, "weights"));
        free(ts.len);
        free(ts.nloss);
    }
    /* generation */
    header = 0;
    for (int i = 0; i < n; i++) {
        cJSON *j = rs[i].j;
        if (strcmp(rs[i].kind, "gen")) continue;
        const char *prec = *sget(j, "precision") ? sget(j, "precision") : "f32";
        if (!header) {
            printf("\n== generation: greedy decode with a KV cache, batch 1 (tok/s of the single-token steps)\n");
            printf("   %-8s %-27s %-8s %-4s %8s %8s %10s %12s\n", "model", "implementation", "compute", "wts", "prompt", "new",
                   "decode t/s", "weights GB/s");
            header = 1;
        }
        if (!strcmp(sget(j, "status"), "skipped")) {
            printf("   %-8s %-27s %-8s %-4s   skipped: %s\n", sget(j, "size"), impl_name(rs[i].impl), prec, sget(j, "weights"),
                   sget(j, "reason"));
            continue;
        }
        double sec = nget(j, "seconds", -1), nd = nget(j, "decode_steps", 0), wbytes = 0;
        mcfg m;
        if (!mcfg_load(sget(j, "model_dir"), &m)) { /* weights read per decoded token: all but the embedding */
            double kv = (double)m.dim / m.H * m.G;
            double np = m.L * (2.0 * m.dim * m.dim + 2.0 * m.dim * kv + 3.0 * m.dim * m.hidden) + (double)m.dim * m.V;
            wbytes = np * (!strcmp(sget(j, "weights"), "bf16") ? 2 : 4);
        }
        printf("   %-8s %-27s %-8s %-4s %8.0f %8.0f %10.1f %12.2f", sget(j, "size"), impl_name(rs[i].impl), prec,
               sget(j, "weights"), nget(j, "prompt", 0), nget(j, "new", 0), sec > 0 ? nd / sec : 0,
               sec > 0 ? wbytes * nd / sec / 1e9 : 0);
        if (strcmp(rs[i].impl, "c")) { /* greedy ids against the C f32 run on the same (bf16) weights */
            for (int c = 0; c < n; c++) {
                cJSON *cj = rs[c].j;
                if (strcmp(rs[c].kind, "gen") || strcmp(rs[c].impl, "c") || strcmp(sget(cj, "size"), sget(j, "size")) ||
                    strcmp(sget(cj, "weights"), "bf16") || strcmp(sget(cj, "precision"), "f32"))
                    continue;
                cJSON *a = cJSON_GetObjectItem(cj, "ids"), *b = cJSON_GetObjectItem(j, "ids");
                int same = 0, na = cJSON_GetArraySize(a), nb = cJSON_GetArraySize(b);
                while (same < na && same < nb &&
                       cJSON_GetArrayItem(a, same)->valueint == cJSON_GetArrayItem(b, same)->valueint)
                    same++;
                printf("  greedy ids: first %d of %d equal to C's (f32, bf16 weights)", same, nb);
                break;
            }
        }
        printf("\n");
    }
    printf("\nHow the numbers are made (bench/bench_tool.c): label/s = loss-bearing tokens / s, tok/s = real tokens / s\n"
           "(padding excluded), s/step = one optimizer step, each the median over the timed steps of the best run; GFLOP/s\n"
           "= useful FLOPs / s (the same count for every implementation: no padding, the classifier at labelled rows only,\n"
           "no dW of frozen weights, attention as the full square); MFU = GFLOP/s / the instruction peak of the path the\n"
           "run's GEMMs use (f32: FMA; bf16 and autocast: vdpbf16ps); RSS = the process's peak resident set, load included.\n");
    for (int i = 0; i < n; i++) cJSON_Delete(rs[i].j);
    free(rs);
    return 0;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "peak")) return cmd_peak(argc, argv);
    if (!strcmp(cmd, "kernels")) return cmd_kernels(argc, argv);
    if (!strcmp(cmd, "fixtures")) return cmd_fixtures(argc, argv);
    if (!strcmp(cmd, "tokens")) return cmd_tokens(argc, argv);
    if (!strcmp(cmd, "adapter")) return cmd_adapter(argc, argv);
    if (!strcmp(cmd, "profile")) return cmd_profile(argc, argv);
    if (!strcmp(cmd, "prompt-ids")) return cmd_prompt_ids(argc, argv);
    if (!strcmp(cmd, "report")) return cmd_report(argc, argv);
    fprintf(stderr, "usage: bench_tool peak|kernels|fixtures|tokens|adapter|profile|prompt-ids|report [options] (see bench/bench_tool.c)\n");
    return 2;
}
