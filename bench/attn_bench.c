/* Attention micro-benchmark: kn_attention_forward and kn_attention_backward alone, on the shapes
 * that matter for training (4 sequences per micro-batch, the K = 10 prompt prefix):
 *   7B      H = G = 32, D = 128: 4 x 512 tokens, and 4 sequences of Alpaca's mean ~130 tokens
 *   medium  H = G = 12, D = 64:  the same two micro-batches
 * For each: best-of-R wall time of the forward and of the backward (every gradient wanted), their
 * best process CPU time (run with OMP_WAIT_POLICY=passive on a shared machine), the
 * workspace each asks for (bytes per thread, and the part that does not grow with the thread
 * count), and a checksum of the output and of dq (to compare two builds: equal up to rounding).
 * Then one decode step per shape: 1 query against 512 cached keys (the generation forward).
 * With the argument `bf16` it also times the bf16 variant (kn_attn_shape.bf16 = 1).
 *
 *   build/bench/attn_bench [reps] [f32|bf16|bf16only] [shape 0-3]   (threads: OMP_NUM_THREADS)
 *
 * What it does not do: check correctness (tests/test_ops.c does), or time anything but the two
 * kernels (no RoPE, no projections). Never pass/fail. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/kernels/kernels.h"
#include "autograd/rng.h"

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "attn_bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static void fill(float *x, size_t n, ag_rng *r, float sc) {
    for (size_t i = 0; i < n; i++) x[i] = (float)ag_rng_normal(r) * sc;
}

/* CPU seconds of the whole process (every thread): with OMP_WAIT_POLICY=passive the idle threads
 * sleep, so this is the work done, unlike wall time on a machine shared with other jobs. */
static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double checksum(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)((i % 7) + 1);
    return s;
}

typedef struct shape {
    const char *name;
    int H, D, K, n_seq;
    int len[4];
} shape;

static void run(const shape *sp, int reps, int bf16) {
    const int H = sp->H, G = sp->H, D = sp->D, K = sp->K, ns = sp->n_seq, dim = H * D;
    int off[5] = {0};
    for (int s = 0; s < ns; s++) off[s + 1] = off[s] + sp->len[s];
    const int T = off[ns];
    kn_attn_shape as = {.n_seq = ns, .H = H, .G = G, .D = D, .K = K, .qo = off, .ko = off};
    as.bf16 = bf16;
    if (bf16 && !kn_bf16_gemm_available()) return;
    ag_rng r;
    ag_rng_seed(&r, 42);
    size_t nq = (size_t)T * dim, nk = (size_t)T * G * D, na = (size_t)K * G * D;
    float *q = xmalloc(nq * 4), *k = xmalloc(nk * 4), *v = xmalloc(nk * 4), *o = xmalloc(nq * 4);
    float *dout = xmalloc(nq * 4), *dq = xmalloc(nq * 4), *dk = xmalloc(nk * 4), *dv = xmalloc(nk * 4);
    float *ka = xmalloc(na * 4 + 4), *va = xmalloc(na * 4 + 4), *dka = xmalloc(na * 4 + 4), *dva = xmalloc(na * 4 + 4);
    float *lt = xmalloc((size_t)T * H * 4), *la = xmalloc((size_t)T * H * 4), gv[64], dg[64];
    as.o = o; /* the backward reads the forward's output */
    fill(q, nq, &r, 1.0f);
    fill(k, nk, &r, 1.0f);
    fill(v, nk, &r, 1.0f);
    fill(dout, nq, &r, 1.0f);
    fill(ka, na, &r, 1.0f);
    fill(va, na, &r, 1.0f);
    for (int h = 0; h < H; h++) gv[h] = 0.3f;
    int th = omp_get_max_threads();
    size_t wf = kn_attention_workspace(&as, th), wb = kn_attention_backward_workspace(&as, th);
    size_t wf1 = kn_attention_workspace(&as, 1), wb1 = kn_attention_backward_workspace(&as, 1);
    size_t wf_per = th > 1 ? (wf - wf1) / (size_t)(th - 1) : wf1, wb_per = th > 1 ? (wb - wb1) / (size_t)(th - 1) : wb1;
    float *wsf = xmalloc(wf * 4), *wsb = xmalloc(wb * 4);
    double best_f = 1e30, best_b = 1e30, cpu_f = 1e30, cpu_b = 1e30;
    for (int it = 0; it < reps; it++) {
        double c0 = cpu_now(), t0 = omp_get_wtime();
        kn_attention_forward(o, lt, la, q, k, v, ka, va, gv, &as, wsf);
        double t1 = omp_get_wtime(), c1 = cpu_now();
        memset(dq, 0, nq * 4);
        memset(dk, 0, nk * 4);
        memset(dv, 0, nk * 4);
        memset(dka, 0, na * 4);
        memset(dva, 0, na * 4);
        memset(dg, 0, sizeof dg);
        double c2 = cpu_now(), t2 = omp_get_wtime();
        kn_attention_backward(dq, dk, dv, dka, dva, dg, dout, q, k, v, ka, va, gv, lt, la, &as, wsb);
        double t3 = omp_get_wtime(), c3 = cpu_now();
        best_f = t1 - t0 < best_f ? t1 - t0 : best_f;
        best_b = t3 - t2 < best_b ? t3 - t2 : best_b;
        cpu_f = c1 - c0 < cpu_f ? c1 - c0 : cpu_f;
        cpu_b = c3 - c2 < cpu_b ? c3 - c2 : cpu_b;
    }
    char lens[64];
    snprintf(lens, sizeof lens, "%d,%d,%d,%d", sp->len[0], sp->len[1], sp->len[2], sp->len[3]);
    printf("| %-7s %-4s | %-15s | %8.2f | %8.2f | %8.2f | %8.2f | %8.2f | %9zu | %9zu | %9zu | %+.9e %+.9e %+.6e\n",
           sp->name, bf16 ? "bf16" : "f32", lens, best_f * 1e3, best_b * 1e3, (best_f + best_b) * 1e3, cpu_f * 1e3,
           cpu_b * 1e3, wf_per * 4, wb_per * 4,
           (wb1 - wb_per) * 4, checksum(o, nq), checksum(dq, nq), checksum(dka, na) + checksum(dg, (size_t)H));
    fflush(stdout);
    free(q); free(k); free(v); free(o); free(dout); free(dq); free(dk); free(dv);
    free(ka); free(va); free(dka); free(dva); free(lt); free(la); free(wsf); free(wsb);
}

/* One decode step: 1 query at position nk-1 against nk cached keys (forward only), microseconds. */
static void run_decode(const char *name, int H, int D, int K, int nk, int reps) {
    const int G = H, dim = H * D;
    ag_rng r;
    ag_rng_seed(&r, 43);
    float *q = xmalloc((size_t)dim * 4), *k = xmalloc((size_t)nk * dim * 4), *v = xmalloc((size_t)nk * dim * 4);
    float *o = xmalloc((size_t)dim * 4), *ka = xmalloc((size_t)K * dim * 4 + 4), *va = xmalloc((size_t)K * dim * 4 + 4);
    float gv[64];
    fill(q, (size_t)dim, &r, 1.0f);
    fill(k, (size_t)nk * dim, &r, 1.0f);
    fill(v, (size_t)nk * dim, &r, 1.0f);
    fill(ka, (size_t)K * dim, &r, 1.0f);
    fill(va, (size_t)K * dim, &r, 1.0f);
    for (int h = 0; h < H; h++) gv[h] = 0.3f;
    int qo[2] = {0, 1}, ko[2] = {0, nk};
    kn_attn_shape as = {.n_seq = 1, .H = H, .G = G, .D = D, .K = K, .qo = qo, .ko = ko};
    float *w = xmalloc(kn_attention_workspace(&as, omp_get_max_threads()) * 4);
    double best = 1e30, cpu = 1e30;
    for (int it = 0; it < reps * 20; it++) {
        double c0 = cpu_now(), t0 = omp_get_wtime();
        kn_attention_forward(o, NULL, NULL, q, k, v, ka, va, gv, &as, w);
        double t1 = omp_get_wtime(), c1 = cpu_now();
        best = t1 - t0 < best ? t1 - t0 : best;
        cpu = c1 - c0 < cpu ? c1 - c0 : cpu;
    }
    printf("| %-7s dec  | 1 query, %4d keys | %8.1f us wall | %8.1f us cpu | %+.9e\n", name, nk, best * 1e6, cpu * 1e6,
           checksum(o, (size_t)dim));
    free(q); free(k); free(v); free(o); free(ka); free(va); free(w);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5, want_bf16 = argc > 2 && !strncmp(argv[2], "bf16", 4);
    int want_f32 = !(argc > 2 && !strcmp(argv[2], "bf16only"));
    int only = argc > 3 ? atoi(argv[3]) : -1; /* one shape (0-3), for profiling */
    if (reps < 1) reps = 1;
    const shape shapes[] = {
        {"7B", 32, 128, 10, 4, {512, 512, 512, 512}},
        {"7B", 32, 128, 10, 4, {141, 127, 130, 122}},
        {"medium", 12, 64, 10, 4, {512, 512, 512, 512}},
        {"medium", 12, 64, 10, 4, {141, 127, 130, 122}},
    };
    printf("attention fwd/bwd, %d threads, best of %d: wall ms, process CPU ms; workspace bytes: fwd per thread, bwd per "
           "thread, bwd shared\n", omp_get_max_threads(), reps);
    printf("| shape   prec | lengths         |  fwd ms  |  bwd ms  | total ms | fwd cpu  | bwd cpu  | fwd ws/th | bwd ws/th | "
           "bwd shared | checksums o, dq, dka+dg\n");
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        if (only >= 0 && (size_t)only != i) continue;
        if (want_f32) run(&shapes[i], reps, 0);
        if (want_bf16) run(&shapes[i], reps, 1);
    }
    if (only >= 0) return 0;
    run_decode("7B", 32, 128, 10, 512, reps);
    run_decode("medium", 12, 64, 10, 512, reps);
    return 0;
}
