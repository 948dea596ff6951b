/* Autograd ops against an independent double-precision implementation.
 *
 * Gradient-check table: for every op (and each attention variant) the float forward is compared
 * with a plain double-precision forward written here, and every gradient the tape computes is
 * compared with central finite differences of that double forward (h = 1e-6) for the loss
 * sum(out * r) with a fixed random r. Tolerances: forward atol 1e-5 + rtol 1e-4; gradients
 * atol 2e-5 + rtol 1e-3 (float32 arithmetic against double references). Inputs that do not
 * require a gradient must end with no gradient buffer, and no dW GEMM may run for them.
 * Also: sgemm vs the naive reference on odd shapes in every transpose case, the 16-bit linear
 * path, the zero-gate invariant, tape pruning, and the blocked attention's own properties (the
 * cached nq < nk variant against the full one, bit-identical results whatever the other
 * sequences of the batch and the thread count, the backward without the forward output, a
 * workspace that does not grow with the sequence length). */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/kernels/kernels.h"
#include "autograd/kernels/vexp.h"
#include "autograd/ops.h"
#include "autograd/ops_infer.h"
#include "autograd/rng.h"
#include "tests/test.h"

#define MAXIN 6

typedef struct gc_ctx {
    int H, G, K, n_seq, act;
    const int *ids, *pos, *off, *targets;
    int n_ids;
    float eps, theta;
} gc_ctx;

typedef struct gc_case gc_case;
struct gc_case {
    const char *op, *variant;
    int n_in;
    int rows[MAXIN], cols[MAXIN], grad[MAXIN];
    float scale[MAXIN]; /* random values are N(0,1) * scale (0 -> 1) */
    float shift[MAXIN]; /* plus shift */
    int out_rows, out_cols;
    ag_tensor *(*fwd)(ag_tape *t, ag_tensor **in, const gc_ctx *c);
    void (*ref)(double *out, double **in, const gc_case *gc, const gc_ctx *c);
    gc_ctx ctx;
    int expect_dw; /* dW GEMMs the backward must run */
};

/* ---- double references ------------------------------------------------------------------- */
static void ref_linear(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int T = gc->rows[0], I = gc->cols[0], O = gc->rows[1];
    for (int t = 0; t < T; t++)
        for (int o = 0; o < O; o++) {
            double s = 0;
            for (int i = 0; i < I; i++) s += in[0][t * I + i] * in[1][o * I + i];
            out[t * O + o] = s;
        }
}
static void ref_embedding(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int C = gc->cols[0];
    for (int t = 0; t < c->n_ids; t++) memcpy(out + t * C, in[0] + c->ids[t] * C, C * sizeof(double));
}
static void ref_gather(double *out, double **in, const gc_case *gc, const gc_ctx *c) { ref_embedding(out, in, gc, c); }
static void ref_rmsnorm(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int T = gc->rows[0], C = gc->cols[0];
    for (int t = 0; t < T; t++) {
        double ss = 0;
        for (int i = 0; i < C; i++) ss += in[0][t * C + i] * in[0][t * C + i];
        double r = 1.0 / sqrt(ss / C + c->eps);
        for (int i = 0; i < C; i++) out[t * C + i] = in[0][t * C + i] * r * in[1][i];
    }
}
static void ref_rope(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int T = gc->rows[0], W = gc->cols[0], D = W / c->H;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < c->H; h++)
            for (int i = 0; i < D / 2; i++) {
                double ang = c->pos[t] * pow(c->theta, -2.0 * i / D);
                double a = in[0][t * W + h * D + 2 * i], b = in[0][t * W + h * D + 2 * i + 1];
                out[t * W + h * D + 2 * i] = a * cos(ang) - b * sin(ang);
                out[t * W + h * D + 2 * i + 1] = a * sin(ang) + b * cos(ang);
            }
}
static void ref_swiglu(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int n = gc->rows[0] * gc->cols[0];
    for (int i = 0; i < n; i++) {
        double a = in[0][i];
        out[i] = a / (1 + exp(-a)) * in[1][i];
    }
}
static void ref_add(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    for (int i = 0; i < gc->rows[0] * gc->cols[0]; i++) out[i] = in[0][i] + in[1][i];
}
static void ref_gate(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    for (int i = 0; i < gc->cols[0]; i++) out[i] = c->act == AG_GATE_TANH ? tanh(in[0][i]) : in[0][i];
}
/* in: q, k, v, ka, va, gval */
static void ref_attention_core(double *out, double **in, int T, const gc_ctx *c, int D) {
    int H = c->H, G = c->G, K = c->K, rep = H / G;
    double sc = 1.0 / sqrt((double)D), p[512];
    for (int s = 0; s < c->n_seq; s++)
        for (int h = 0; h < H; h++) {
            int g = h / rep;
            for (int i = c->off[s]; i < c->off[s + 1]; i++) {
                const double *qi = in[0] + (size_t)i * H * D + h * D;
                double mx = -1e300, sum = 0, *o = out + (size_t)i * H * D + h * D;
                int n = i - c->off[s] + 1;
                for (int j = 0; j < n; j++) {
                    const double *kj = in[1] + (size_t)(c->off[s] + j) * G * D + g * D;
                    double d = 0;
                    for (int x = 0; x < D; x++) d += qi[x] * kj[x];
                    p[j] = d * sc;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < n; j++) sum += (p[j] = exp(p[j] - mx));
                for (int x = 0; x < D; x++) o[x] = 0;
                for (int j = 0; j < n; j++)
                    for (int x = 0; x < D; x++) o[x] += p[j] / sum * in[2][(size_t)(c->off[s] + j) * G * D + g * D + x];
                if (!K) continue;
                mx = -1e300;
                sum = 0;
                for (int j = 0; j < K; j++) {
                    double d = 0;
                    for (int x = 0; x < D; x++) d += qi[x] * in[3][j * G * D + g * D + x];
                    p[j] = d * sc;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < K; j++) sum += (p[j] = exp(p[j] - mx));
                for (int j = 0; j < K; j++)
                    for (int x = 0; x < D; x++) o[x] += in[5][h] * p[j] / sum * in[4][j * G * D + g * D + x];
            }
        }
    (void)T;
}
static void ref_attention(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    ref_attention_core(out, in, gc->rows[0], c, gc->cols[0] / c->H);
}
/* in: q, k, v, ka, va, raw gate (through the gate activation) */
static void ref_gated_attention(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    double gv[16], *in2[6] = {in[0], in[1], in[2], in[3], in[4], gv};
    for (int h = 0; h < c->H; h++) gv[h] = c->act == AG_GATE_TANH ? tanh(in[5][h]) : in[5][h];
    ref_attention_core(out, in2, gc->rows[0], c, gc->cols[0] / c->H);
}
static void ref_cross_entropy(double *out, double **in, const gc_case *gc, const gc_ctx *c) {
    int N = gc->rows[0], V = gc->cols[0], cnt = 0;
    double total = 0;
    for (int i = 0; i < N; i++) {
        if (c->targets[i] <= 0) continue;
        double mx = -1e300, s = 0;
        for (int j = 0; j < V; j++) mx = in[0][i * V + j] > mx ? in[0][i * V + j] : mx;
        for (int j = 0; j < V; j++) s += exp(in[0][i * V + j] - mx);
        total += mx + log(s) - in[0][i * V + c->targets[i]];
        cnt++;
    }
    out[0] = cnt ? total / cnt : 0;
}

/* ---- the ops under test ------------------------------------------------------------------ */
static ag_tensor *f_linear(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_linear(t, in[0], in[1]); }
static ag_tensor *f_embedding(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_embedding(t, in[0], c->ids, c->n_ids); }
static ag_tensor *f_gather(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_gather(t, in[0], c->ids, c->n_ids); }
static ag_tensor *f_rmsnorm(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_rmsnorm(t, in[0], in[1], c->eps); }
static ag_tensor *f_rope(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_rope(t, in[0], c->H, c->pos, c->theta); }
static ag_tensor *f_swiglu(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_swiglu(t, in[0], in[1]); }
static ag_tensor *f_add(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_add(t, in[0], in[1]); }
static ag_tensor *f_gate(ag_tape *t, ag_tensor **in, const gc_ctx *c) { return ag_gate(t, in[0], c->act); }
static ag_tensor *f_attention(ag_tape *t, ag_tensor **in, const gc_ctx *c) {
    return ag_attention(t, in[0], in[1], in[2], c->K ? in[3] : NULL, c->K ? in[4] : NULL, c->K ? in[5] : NULL,
                        c->H, c->G, c->off, c->n_seq);
}
static ag_tensor *f_gated_attention(ag_tape *t, ag_tensor **in, const gc_ctx *c) {
    ag_tensor *g = ag_gate(t, in[5], c->act);
    return ag_attention(t, in[0], in[1], in[2], in[3], in[4], g, c->H, c->G, c->off, c->n_seq);
}
static ag_tensor *f_cross_entropy(ag_tape *t, ag_tensor **in, const gc_ctx *c) {
    return ag_cross_entropy(t, in[0], c->targets, NULL);
}

/* ---- the checker ------------------------------------------------------------------------- */
static double ref_loss(const gc_case *gc, double **in, const double *r, double *out) {
    gc->ref(out, in, gc, &gc->ctx);
    double L = 0;
    for (int i = 0; i < gc->out_rows * gc->out_cols; i++) L += out[i] * r[i];
    return L;
}

static void gradcheck(const gc_case *gc, uint64_t seed) {
    ag_rng rng;
    ag_rng_seed(&rng, seed);
    ag_arena arena;
    ag_arena_init(&arena, 1 << 20);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    float *fdata[MAXIN], *fgrad[MAXIN];
    double *ddata[MAXIN];
    ag_tensor tens[MAXIN], *in[MAXIN];
    for (int k = 0; k < gc->n_in; k++) {
        size_t n = (size_t)gc->rows[k] * gc->cols[k];
        fdata[k] = malloc(n * sizeof(float));
        ddata[k] = malloc(n * sizeof(double));
        fgrad[k] = calloc(n, sizeof(float));
        float sc = gc->scale[k] ? gc->scale[k] : 1.0f;
        for (size_t i = 0; i < n; i++) {
            fdata[k][i] = (float)ag_rng_normal(&rng) * sc + gc->shift[k];
            ddata[k][i] = fdata[k][i];
        }
        tens[k] = ag_tensor_of(fdata[k], gc->rows[k], gc->cols[k], AG_F32);
        tens[k].requires_grad = gc->grad[k];
        tens[k].grad = gc->grad[k] ? fgrad[k] : NULL;
        in[k] = &tens[k];
    }
    int nout = gc->out_rows * gc->out_cols;
    double *r = malloc(nout * sizeof(double)), *dout = malloc(nout * sizeof(double));
    float *rf = malloc(nout * sizeof(float));
    for (int i = 0; i < nout; i++) rf[i] = (float)(r[i] = ag_rng_normal(&rng));

    ag_tensor *out = gc->fwd(&tape, in, &gc->ctx);
    CHECK(out->rows == gc->out_rows && out->cols == gc->out_cols, "%s/%s: output [%d,%d]", gc->op, gc->variant, out->rows, out->cols);
    ref_loss(gc, ddata, r, dout);
    double fwd_err = 0;
    for (int i = 0; i < nout; i++) {
        double e = fabs(ag_f32(out)[i] - dout[i]);
        fwd_err = e > fwd_err ? e : fwd_err;
        CHECK_CLOSE(ag_f32(out)[i], dout[i], 1e-5, 1e-4, "forward");
        if (t_cur_failed > 3) break;
    }
    ag_backward_from(&tape, out, rf);

    double max_abs = 0, max_rel = 0;
    int checked = 0;
    const double h = 1e-6, atol = 2e-5, rtol = 1e-3;
    for (int k = 0; k < gc->n_in; k++) {
        if (!gc->grad[k]) {
            CHECK(tens[k].grad == NULL, "%s/%s: frozen input %d got a gradient buffer", gc->op, gc->variant, k);
            continue;
        }
        size_t n = (size_t)gc->rows[k] * gc->cols[k];
        size_t step = n > 60 ? n / 60 : 1; /* at most ~60 coordinates per input */
        for (size_t i = 0; i < n; i += step) {
            double keep = ddata[k][i];
            ddata[k][i] = keep + h;
            double lp = ref_loss(gc, ddata, r, dout);
            ddata[k][i] = keep - h;
            double lm = ref_loss(gc, ddata, r, dout);
            ddata[k][i] = keep;
            double fd = (lp - lm) / (2 * h), an = fgrad[k][i];
            double ae = fabs(an - fd);
            max_abs = ae > max_abs ? ae : max_abs;
            double re = ae / (fabs(fd) + 1e-12);
            if (ae > atol) max_rel = re > max_rel ? re : max_rel;
            CHECK(ae <= atol + rtol * fabs(fd), "%s/%s: d input%d[%zu]: tape %.8g, finite difference %.8g",
                  gc->op, gc->variant, k, i, an, fd);
            checked++;
        }
    }
    CHECK(tape.stats.gemm_dw == gc->expect_dw, "%s/%s: %lld dW GEMMs, expected %d", gc->op, gc->variant,
          (long long)tape.stats.gemm_dw, gc->expect_dw);
    printf("  | %-14s | %-36s | %4d | %9.2e | %9.2e | %9.2e | %s\n", gc->op, gc->variant, checked, fwd_err,
           max_abs, max_rel, t_cur_failed ? "FAIL" : "ok");
    for (int k = 0; k < gc->n_in; k++) {
        free(fdata[k]);
        free(ddata[k]);
        free(fgrad[k]);
    }
    free(r);
    free(dout);
    free(rf);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

static const int IDS[] = {3, 0, 5, 3, 6, 1, 3};
static const int POS[] = {0, 1, 2, 7, 0, 1, 11, 3};
static const int OFF_1[] = {0, 5};
static const int OFF_3[] = {0, 4, 5, 11};   /* lengths 4, 1, 6 */
static const int OFF_LEN1[] = {0, 1};
static const int OFF_LONG[] = {0, 150, 151, 221};  /* lengths 150, 1, 70: several 64-key blocks, tails */
static const int OFF_LONG2[] = {0, 130, 194, 259}; /* lengths 130, 64 (exactly one block), 65 */
static const int TARGETS[] = {2, 0, 7, 1, 0, 9};
static const int TARGETS_NONE[] = {0, 0, 0};

#define ATTN_IN(T, H, G, D, K) \
    6, {T, T, T, K, K, 1}, {H * D, G * D, G * D, G * D, G * D, H}, {1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 0.7f}, \
    {0, 0, 0, 0, 0, 0}, T, H * D

static void test_gradcheck_table(void) {
    static const gc_case cases[] = {
        {"linear", "x and W trainable, odd shapes", 2, {5, 7}, {9, 9}, {1, 1}, {0}, {0}, 5, 7, f_linear, ref_linear, {0}, 1},
        {"linear", "W frozen (no dW GEMM)", 2, {4, 6}, {3, 3}, {1, 0}, {0}, {0}, 4, 6, f_linear, ref_linear, {0}, 0},
        {"linear", "x frozen, W trainable", 2, {3, 5}, {4, 4}, {0, 1}, {0}, {0}, 3, 5, f_linear, ref_linear, {0}, 1},
        {"embedding", "repeated ids", 1, {7}, {5}, {1}, {0}, {0}, 7, 5, f_embedding, ref_embedding, {.ids = IDS, .n_ids = 7}, 0},
        {"gather", "repeated rows", 1, {8}, {3}, {1}, {0}, {0}, 7, 3, f_gather, ref_gather, {.ids = IDS, .n_ids = 7}, 0},
        {"rmsnorm", "x and w", 2, {4, 1}, {10, 10}, {1, 1}, {0}, {0, 1}, 4, 10, f_rmsnorm, ref_rmsnorm, {.eps = 1e-5f}, 0},
        {"rmsnorm", "w frozen", 2, {3, 1}, {6, 6}, {1, 0}, {0}, {0, 1}, 3, 6, f_rmsnorm, ref_rmsnorm, {.eps = 1e-6f}, 0},
        {"rope", "3 heads, positions 0..11", 1, {8}, {12}, {1}, {0}, {0}, 8, 12, f_rope, ref_rope, {.H = 3, .pos = POS, .theta = 10000}, 0},
        {"rope", "theta 500000", 1, {8}, {8}, {1}, {0}, {0}, 8, 8, f_rope, ref_rope, {.H = 1, .pos = POS, .theta = 500000}, 0},
        {"swiglu", "a and b", 2, {4, 4}, {7, 7}, {1, 1}, {2, 1}, {0}, 4, 7, f_swiglu, ref_swiglu, {0}, 0},
        {"add", "residual", 2, {3, 3}, {5, 5}, {1, 1}, {0}, {0}, 3, 5, f_add, ref_add, {0}, 0},
        {"add", "one side frozen", 2, {3, 3}, {5, 5}, {0, 1}, {0}, {0}, 3, 5, f_add, ref_add, {0}, 0},
        {"gate", "tanh", 1, {1}, {4}, {1}, {0}, {0}, 1, 4, f_gate, ref_gate, {.act = AG_GATE_TANH}, 0},
        {"gate", "identity", 1, {1}, {4}, {1}, {0}, {0}, 1, 4, f_gate, ref_gate, {.act = AG_GATE_IDENTITY}, 0},
        {"attention", "MHA H=G=2 K=3, one sequence", ATTN_IN(5, 2, 2, 4, 3), f_attention, ref_attention,
         {.H = 2, .G = 2, .K = 3, .n_seq = 1, .off = OFF_1}, 0},
        {"attention", "GQA H=4 G=2 K=3, lengths 4,1,6", ATTN_IN(11, 4, 2, 4, 3), f_attention, ref_attention,
         {.H = 4, .G = 2, .K = 3, .n_seq = 3, .off = OFF_3}, 0},
        {"attention", "GQA H=4 G=1 K=1 (one prompt)", ATTN_IN(11, 4, 1, 2, 1), f_attention, ref_attention,
         {.H = 4, .G = 1, .K = 1, .n_seq = 3, .off = OFF_3}, 0},
        {"attention", "sequence of length 1", ATTN_IN(1, 2, 1, 4, 2), f_attention, ref_attention,
         {.H = 2, .G = 1, .K = 2, .n_seq = 1, .off = OFF_LEN1}, 0},
        {"attention", "no prefix (K=0), lengths 4,1,6", 3, {11, 11, 11}, {8, 4, 4}, {1, 1, 1}, {0}, {0}, 11, 8,
         f_attention, ref_attention, {.H = 2, .G = 1, .K = 0, .n_seq = 3, .off = OFF_3}, 0},
        {"attention", "tanh gate param, GQA, lengths 4,1,6", ATTN_IN(11, 4, 2, 4, 3), f_gated_attention, ref_gated_attention,
         {.H = 4, .G = 2, .K = 3, .n_seq = 3, .off = OFF_3, .act = AG_GATE_TANH}, 0},
        {"attention", "identity gate param, MHA", ATTN_IN(5, 2, 2, 4, 3), f_gated_attention, ref_gated_attention,
         {.H = 2, .G = 2, .K = 3, .n_seq = 1, .off = OFF_1, .act = AG_GATE_IDENTITY}, 0},
        {"attention", "prefix only trainable (frozen q,k,v)", 6, {11, 11, 11, 3, 3, 1}, {16, 8, 8, 8, 8, 4},
         {0, 0, 0, 1, 1, 1}, {1, 1, 1, 1, 1, 0.7f}, {0}, 11, 16, f_attention, ref_attention,
         {.H = 4, .G = 2, .K = 3, .n_seq = 3, .off = OFF_3}, 0},
        {"attention", "GQA 150,1,70 tokens (64-blocks) D=16", ATTN_IN(221, 4, 2, 16, 3), f_attention, ref_attention,
         {.H = 4, .G = 2, .K = 3, .n_seq = 3, .off = OFF_LONG}, 0},
        {"attention", "K=0, lengths 130,64,65, D=20", 3, {259, 259, 259}, {40, 40, 40}, {1, 1, 1}, {0}, {0}, 259, 40,
         f_attention, ref_attention, {.H = 2, .G = 2, .K = 0, .n_seq = 3, .off = OFF_LONG2}, 0},
        {"attention", "tanh gate, K=10, lengths 130,64,65", ATTN_IN(259, 2, 1, 8, 10), f_gated_attention,
         ref_gated_attention, {.H = 2, .G = 1, .K = 10, .n_seq = 3, .off = OFF_LONG2, .act = AG_GATE_TANH}, 0},
        {"cross_entropy", "ignore label 0", 1, {6}, {11}, {1}, {2}, {0}, 1, 1, f_cross_entropy, ref_cross_entropy,
         {.targets = TARGETS}, 0},
        {"cross_entropy", "no counted row: 0, no NaN", 1, {3}, {5}, {1}, {0}, {0}, 1, 1, f_cross_entropy,
         ref_cross_entropy, {.targets = TARGETS_NONE}, 0},
    };
    printf("  | %-14s | %-36s | %4s | %9s | %9s | %9s |\n", "op", "variant", "n", "fwd abs", "grad abs", "grad rel");
    printf("  tolerances: forward 1e-5 + 1e-4*|ref|, gradients 2e-5 + 1e-3*|fd| (fd: central, h=1e-6, double)\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) gradcheck(&cases[i], 1000 + i);
}

/* sgemm against the naive triple loop on odd shapes, every transpose case, strided, beta 0/1. */
static void test_sgemm_matches_reference(void) {
    ag_rng rng;
    ag_rng_seed(&rng, 7);
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 1, 9}, {13, 31, 5}, {33, 65, 129}, {2, 300, 3}};
    double worst = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int beta = 0; beta < 2; beta++) {
                    int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                    int ar = ta ? K : M, br = tb ? N : K;
                    float *A = malloc(sizeof(float) * ar * lda), *B = malloc(sizeof(float) * br * ldb);
                    float *C1 = malloc(sizeof(float) * M * ldc), *C2 = malloc(sizeof(float) * M * ldc);
                    for (int i = 0; i < ar * lda; i++) A[i] = (float)ag_rng_normal(&rng);
                    for (int i = 0; i < br * ldb; i++) B[i] = (float)ag_rng_normal(&rng);
                    for (int i = 0; i < M * ldc; i++) C1[i] = C2[i] = (float)ag_rng_normal(&rng);
                    kn_sgemm(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, (float)beta, C1, ldc);
                    kn_sgemm_ref(ta, tb, M, N, K, 0.75f, A, lda, B, ldb, (float)beta, C2, ldc);
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < ldc; j++) {
                            double e = fabs(C1[i * ldc + j] - C2[i * ldc + j]);
                            worst = e > worst ? e : worst;
                            if (j >= N) CHECK(C1[i * ldc + j] == C2[i * ldc + j], "padding column touched");
                            else CHECK(e <= 1e-4 * (1 + sqrt((double)K)), "M%d N%d K%d ta%d tb%d: %g vs %g", M, N, K, ta, tb,
                                       C1[i * ldc + j], C2[i * ldc + j]);
                        }
                    free(A); free(B); free(C1); free(C2);
                }
    printf("  sgemm vs reference: worst abs difference %.2e over 6 shapes x 4 transposes x 2 betas\n", worst);
}

/* 16-bit frozen weights: the tiled conversion path (T > 1) and the direct matrix-vector path
 * (T = 1, decoding) equal f32 math on the rounded weights; T = 1 with f32 weights (sgemv) equals
 * the naive reference. */
static void check_linear_16bit(int T) {
    ag_rng rng;
    ag_rng_seed(&rng, 11);
    int I = 37, O = 300; /* O > one tile of 256 rows */
    float *x = malloc(sizeof(float) * T * I), *W = malloc(sizeof(float) * O * I), *Wr = malloc(sizeof(float) * O * I);
    uint16_t *Wh = malloc(2 * O * I);
    float *y16 = malloc(sizeof(float) * T * O), *y32 = malloc(sizeof(float) * T * O);
    float *dy = malloc(sizeof(float) * T * O), *dx16 = calloc(T * I, 4), *dx32 = calloc(T * I, 4);
    float *work = malloc(sizeof(float) * kn_linear_workspace(AG_BF16, I, O));
    for (int i = 0; i < T * I; i++) x[i] = (float)ag_rng_normal(&rng);
    for (int i = 0; i < T * O; i++) dy[i] = (float)ag_rng_normal(&rng);
    for (int i = 0; i < O * I; i++) W[i] = (float)ag_rng_normal(&rng);
    for (int dt = AG_F16; dt <= AG_BF16; dt++) {
        for (int i = 0; i < O * I; i++) {
            Wh[i] = dt == AG_F16 ? ag_f32_to_f16(W[i]) : ag_f32_to_bf16(W[i]);
            Wr[i] = dt == AG_F16 ? ag_f16_to_f32(Wh[i]) : ag_bf16_to_f32(Wh[i]);
        }
        memset(dx16, 0, 4 * T * I);
        memset(dx32, 0, 4 * T * I);
        kn_linear_forward(y16, x, Wh, (ag_dtype)dt, T, I, O, work);
        kn_linear_forward(y32, x, Wr, AG_F32, T, I, O, NULL);
        kn_linear_backward_dx(dx16, dy, Wh, (ag_dtype)dt, T, I, O, work);
        kn_linear_backward_dx(dx32, dy, Wr, AG_F32, T, I, O, NULL);
        for (int i = 0; i < T * O; i++) CHECK_CLOSE(y16[i], y32[i], 1e-5, 1e-5, dt == AG_F16 ? "f16 forward" : "bf16 forward");
        for (int i = 0; i < T * I; i++) CHECK_CLOSE(dx16[i], dx32[i], 1e-4, 1e-5, dt == AG_F16 ? "f16 dx" : "bf16 dx");
        /* and the rounding itself is to nearest */
        for (int i = 0; i < O * I; i++) CHECK(fabsf(Wr[i] - W[i]) <= fabsf(W[i]) * (dt == AG_F16 ? 0x1p-11f : 0x1p-8f) + 1e-7f,
                                              "rounding of %g to %g", W[i], Wr[i]);
    }
    CHECK(ag_f16_to_f32(ag_f32_to_f16(65504.0f)) == 65504.0f, "f16 max");
    CHECK(ag_f16_to_f32(0x0001) == 0x1p-24f, "f16 smallest subnormal");
    CHECK(ag_bf16_to_f32(ag_f32_to_bf16(1.00390625f)) == 1.0f, "bf16 ties to even");
    free(x); free(W); free(Wr); free(Wh); free(y16); free(y32); free(dy); free(dx16); free(dx32); free(work);
}

static void test_linear_16bit_weights(void) {
    check_linear_16bit(1);
    check_linear_16bit(5);
    ag_rng rng;
    ag_rng_seed(&rng, 12);
    int I = 41, O = 19;
    float x[41], W[19 * 41], y[19], yr[19];
    for (int i = 0; i < I; i++) x[i] = (float)ag_rng_normal(&rng);
    for (int i = 0; i < I * O; i++) W[i] = (float)ag_rng_normal(&rng);
    kn_linear_forward(y, x, W, AG_F32, 1, I, O, NULL);
    kn_sgemm_ref(0, 1, 1, O, I, 1.0f, x, I, W, I, 0.0f, yr, O);
    for (int o = 0; o < O; o++) CHECK_CLOSE(y[o], yr[o], 1e-5, 1e-5, "f32 single-row forward");
}

/* With gate 0 the prefix changes nothing: output equals attention without it; the prompt
 * gradients are exactly 0 while the gate gradients are not. */
static void test_zero_gate_invariant(void) {
    ag_rng rng;
    ag_rng_seed(&rng, 5);
    int H = 4, G = 2, D = 4, K = 3, T = 11, dim = 12;
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    float q[11 * 16], k[11 * 8], v[11 * 8], prompts[3 * 12], wk[8 * 12], wv[8 * 12], gate[4] = {0};
    float dprompts[3 * 12] = {0}, dgate[4] = {0};
    float *all[] = {q, k, v, prompts, wk, wv};
    int sizes[] = {11 * 16, 11 * 8, 11 * 8, 36, 96, 96};
    for (int a = 0; a < 6; a++)
        for (int i = 0; i < sizes[a]; i++) all[a][i] = (float)ag_rng_normal(&rng);
    ag_tensor tq = ag_tensor_of(q, T, H * D, AG_F32), tk = ag_tensor_of(k, T, G * D, AG_F32), tv = ag_tensor_of(v, T, G * D, AG_F32);
    ag_tensor tp = ag_tensor_of(prompts, K, dim, AG_F32), tg = ag_tensor_of(gate, 1, H, AG_F32);
    ag_tensor twk = ag_tensor_of(wk, G * D, dim, AG_F32), twv = ag_tensor_of(wv, G * D, dim, AG_F32);
    tp.requires_grad = tg.requires_grad = 1;
    tp.grad = dprompts;
    tg.grad = dgate;
    ag_tensor *ka = ag_linear(&tape, &tp, &twk), *va = ag_linear(&tape, &tp, &twv);
    ag_tensor *gv = ag_gate(&tape, &tg, AG_GATE_TANH);
    ag_tensor *with = ag_attention(&tape, &tq, &tk, &tv, ka, va, gv, H, G, OFF_3, 3);
    tape.no_grad = 1;
    ag_tensor *without = ag_attention(&tape, &tq, &tk, &tv, NULL, NULL, NULL, H, G, OFF_3, 3);
    tape.no_grad = 0;
    int same = 1;
    for (int i = 0; i < T * H * D; i++) same &= ag_f32(with)[i] == ag_f32(without)[i];
    CHECK(same, "attention output with zero gates differs from attention without the prefix");
    float r[11 * 16];
    for (int i = 0; i < T * H * D; i++) r[i] = (float)ag_rng_normal(&rng);
    ag_backward_from(&tape, with, r);
    int zero = 1, gate_nonzero = 1;
    for (int i = 0; i < K * dim; i++) zero &= dprompts[i] == 0.0f;
    for (int h = 0; h < H; h++) gate_nonzero &= dgate[h] != 0.0f;
    CHECK(zero, "prompt gradients must be exactly 0 with zero gates");
    CHECK(gate_nonzero, "every gate gradient must be non-zero (got %g %g %g %g)", dgate[0], dgate[1], dgate[2], dgate[3]);
    CHECK(twk.grad == NULL && twv.grad == NULL && tape.stats.gemm_dw == 0, "frozen Wk/Wv must get no gradient and no dW GEMM");
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* ---- blocked attention: properties beyond the gradient table -------------------------------- */
typedef struct attn_prob {
    int T, H, G, D, K;
    float *q, *k, *v, *ka, *va, *gv, *dout;
} attn_prob;

static float *randn(ag_rng *r, size_t n, float sc) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)ag_rng_normal(r) * sc;
    return x;
}

static attn_prob attn_prob_new(uint64_t seed, int T, int H, int G, int D, int K) {
    ag_rng r;
    ag_rng_seed(&r, seed);
    attn_prob p = {T, H, G, D, K, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    p.q = randn(&r, (size_t)T * H * D, 1.0f);
    p.k = randn(&r, (size_t)T * G * D, 1.0f);
    p.v = randn(&r, (size_t)T * G * D, 1.0f);
    p.ka = randn(&r, (size_t)K * G * D, 1.0f);
    p.va = randn(&r, (size_t)K * G * D, 1.0f);
    p.gv = randn(&r, (size_t)H, 0.5f);
    p.dout = randn(&r, (size_t)T * H * D, 1.0f);
    return p;
}

static void attn_prob_free(attn_prob *p) {
    free(p->q); free(p->k); free(p->v); free(p->ka); free(p->va); free(p->gv); free(p->dout);
}

/* results of one forward + backward */
typedef struct attn_res { float *o, *lt, *la, *dq, *dk, *dv, *dka, *dva, *dg; } attn_res;

static attn_res attn_run(const attn_prob *p, const int *off, int n_seq, int with_o, int bf16) {
    int T = p->T, H = p->H, G = p->G, D = p->D, K = p->K;
    attn_res r;
    r.o = malloc(sizeof(float) * T * H * D);
    r.lt = malloc(sizeof(float) * T * H);
    r.la = malloc(sizeof(float) * T * H);
    r.dq = calloc((size_t)T * H * D, sizeof(float));
    r.dk = calloc((size_t)T * G * D, sizeof(float));
    r.dv = calloc((size_t)T * G * D, sizeof(float));
    r.dka = calloc((size_t)K * G * D + 1, sizeof(float));
    r.dva = calloc((size_t)K * G * D + 1, sizeof(float));
    r.dg = calloc((size_t)H, sizeof(float));
    kn_attn_shape sh = {.n_seq = n_seq, .H = H, .G = G, .D = D, .K = K, .qo = off, .ko = off, .bf16 = bf16};
    int th = omp_get_max_threads();
    float *w = malloc(sizeof(float) * kn_attention_workspace(&sh, th));
    kn_attention_forward(r.o, r.lt, K ? r.la : NULL, p->q, p->k, p->v, K ? p->ka : NULL, K ? p->va : NULL,
                         K ? p->gv : NULL, &sh, w);
    free(w);
    sh.o = with_o ? r.o : NULL;
    w = malloc(sizeof(float) * kn_attention_backward_workspace(&sh, th));
    kn_attention_backward(r.dq, r.dk, r.dv, K ? r.dka : NULL, K ? r.dva : NULL, K ? r.dg : NULL, p->dout, p->q, p->k,
                          p->v, K ? p->ka : NULL, K ? p->va : NULL, K ? p->gv : NULL, r.lt, K ? r.la : NULL, &sh, w);
    free(w);
    return r;
}

static void attn_res_free(attn_res *r) {
    free(r->o); free(r->lt); free(r->la); free(r->dq); free(r->dk); free(r->dv); free(r->dka); free(r->dva); free(r->dg);
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Generation runs the forward with nq < nk (the queries are the last nq positions): it must
 * equal the rows of the full causal forward, from one query (a decode step) to all of them, in
 * the kernel and through ag_attention_cached. */
static void test_attention_cached_matches_full(void) {
    const int cases[][2] = {{150, 1}, {150, 37}, {150, 64}, {150, 150}, {1, 1}, {70, 6}, {300, 2}};
    const int H = 4, G = 2, D = 16, K = 3;
    double worst = 0;
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int P = cases[ci][0], n = cases[ci][1];
        attn_prob p = attn_prob_new(40 + ci, P, H, G, D, K);
        int off[2] = {0, P};
        attn_res full = attn_run(&p, off, 1, 1, 0);
        int qo[2] = {0, n}, ko[2] = {0, P};
        kn_attn_shape sh = {.n_seq = 1, .H = H, .G = G, .D = D, .K = K, .qo = qo, .ko = ko};
        float *o = malloc(sizeof(float) * n * H * D), *w = malloc(sizeof(float) * kn_attention_workspace(&sh, omp_get_max_threads()));
        const float *qn = p.q + (size_t)(P - n) * H * D, *want = full.o + (size_t)(P - n) * H * D;
        kn_attention_forward(o, NULL, NULL, qn, p.k, p.v, p.ka, p.va, p.gv, &sh, w);
        for (int i = 0; i < n * H * D; i++) {
            worst = fmax(worst, fabs(o[i] - want[i]));
            CHECK_CLOSE(o[i], want[i], 1e-6, 1e-5, "cached forward row");
            if (t_cur_failed > 3) break;
        }
        /* the op, on a no-grad tape */
        ag_arena arena;
        ag_arena_init(&arena, 1 << 16);
        ag_tape tape;
        ag_tape_init(&tape, &arena);
        tape.no_grad = 1;
        ag_tensor tq = ag_tensor_of((float *)qn, n, H * D, AG_F32), tk = ag_tensor_of(p.k, P, G * D, AG_F32);
        ag_tensor tv = ag_tensor_of(p.v, P, G * D, AG_F32), tka = ag_tensor_of(p.ka, K, G * D, AG_F32);
        ag_tensor tva = ag_tensor_of(p.va, K, G * D, AG_F32), tg = ag_tensor_of(p.gv, 1, H, AG_F32);
        ag_tensor *oc = ag_attention_cached(&tape, &tq, &tk, &tv, &tka, &tva, &tg, H, G);
        CHECK(same_bits(ag_f32(oc), o, (size_t)n * H * D), "ag_attention_cached differs from the kernel (P=%d n=%d)", P, n);
        ag_tape_free(&tape);
        ag_arena_free(&arena);
        free(o);
        free(w);
        attn_res_free(&full);
        attn_prob_free(&p);
    }
    printf("  cached (nq < nk) vs full forward: worst abs difference %.2e over %zu (P, n) cases\n", worst,
           sizeof cases / sizeof cases[0]);
}

/* A sequence's attention is its own: alone or packed among others (in any position), its output
 * and its dq, dk, dv rows are bit-identical; those do not depend on the thread count either; and
 * the same inputs and thread count give the same bits everywhere, prefix gradients included. In
 * f32 and, where the CPU has AVX512-BF16, with the bf16 tile products. */
static void test_attention_bits_independent_of_batch_and_threads(void) {
    const int H = 4, G = 2, D = 16, K = 3, la = 150, lb = 70;
    int nthreads = omp_get_max_threads();
    attn_prob pa = attn_prob_new(7, la, H, G, D, K);
    attn_prob pk = attn_prob_new(8, la + lb + 1, H, G, D, K); /* packed: [B (70), A (150), C (1)] */
    size_t qa = (size_t)H * D, ka = (size_t)G * D;
    /* copy A into rows [lb, lb + la) of the packed problem, with the same prefix and gates */
    memcpy(pk.q + lb * qa, pa.q, la * qa * sizeof(float));
    memcpy(pk.dout + lb * qa, pa.dout, la * qa * sizeof(float));
    memcpy(pk.k + lb * ka, pa.k, la * ka * sizeof(float));
    memcpy(pk.v + lb * ka, pa.v, la * ka * sizeof(float));
    memcpy(pk.ka, pa.ka, K * ka * sizeof(float));
    memcpy(pk.va, pa.va, K * ka * sizeof(float));
    memcpy(pk.gv, pa.gv, H * sizeof(float));
    int off_a[2] = {0, la}, off_k[4] = {0, lb, lb + la, lb + la + 1};
    for (int bf = 0; bf <= kn_bf16_gemm_available(); bf++) {
        const char *prec = bf ? "bf16" : "f32";
        attn_res ra = attn_run(&pa, off_a, 1, 1, bf), rk = attn_run(&pk, off_k, 3, 1, bf);
        CHECK(same_bits(ra.o, rk.o + lb * qa, la * qa), "%s: output of a sequence depends on its batch", prec);
        CHECK(same_bits(ra.lt, rk.lt + lb * H, la * H), "%s: log-sum-exp of a sequence depends on its batch", prec);
        CHECK(same_bits(ra.dq, rk.dq + lb * qa, la * qa), "%s: dq of a sequence depends on its batch", prec);
        CHECK(same_bits(ra.dk, rk.dk + lb * ka, la * ka), "%s: dk of a sequence depends on its batch", prec);
        CHECK(same_bits(ra.dv, rk.dv + lb * ka, la * ka), "%s: dv of a sequence depends on its batch", prec);
        omp_set_num_threads(1);
        attn_res r1 = attn_run(&pk, off_k, 3, 1, bf);
        omp_set_num_threads(nthreads);
        attn_res r2 = attn_run(&pk, off_k, 3, 1, bf);
        size_t T = (size_t)pk.T;
        CHECK(same_bits(r1.o, rk.o, T * qa) && same_bits(r1.dq, rk.dq, T * qa) && same_bits(r1.dk, rk.dk, T * ka) &&
                  same_bits(r1.dv, rk.dv, T * ka), "%s: forward or dq, dk, dv depend on the thread count (1 vs %d)", prec,
              nthreads);
        CHECK(same_bits(r2.o, rk.o, T * qa) && same_bits(r2.dq, rk.dq, T * qa) && same_bits(r2.dk, rk.dk, T * ka) &&
                  same_bits(r2.dv, rk.dv, T * ka) && same_bits(r2.dka, rk.dka, K * ka) &&
                  same_bits(r2.dva, rk.dva, K * ka) && same_bits(r2.dg, rk.dg, H),
              "%s: two runs with the same inputs and threads differ", prec);
        for (size_t i = 0; i < K * ka; i++) CHECK_CLOSE(r1.dka[i], rk.dka[i], 1e-5, 1e-5, "dka, 1 thread vs all");
        printf("  %s: a 150-token sequence alone and packed between 70 and 1 tokens: bit-identical; %d threads\n", prec,
               nthreads);
        attn_res_free(&ra); attn_res_free(&rk); attn_res_free(&r1); attn_res_free(&r2);
    }
    attn_prob_free(&pa); attn_prob_free(&pk);
}

/* ||a - b|| / ||b|| */
static double rel_norm(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

/* The bf16 tile products (AVX512-BF16 only) track the f32 path within bf16 rounding, for every
 * output and gradient, on lengths that cross blocks, end mid-block and are odd (pairs of keys
 * and queries padded with 0), a head dim with a masked tail, GQA and K = 0; and the op takes the
 * precision from the tape, for its backward too. */
static void test_attention_bf16_tracks_f32(void) {
    if (!kn_bf16_gemm_available()) SKIP("this CPU has no AVX512-BF16: the bf16 attention products never run here");
    const int off[] = {0, 150, 151, 221}, shapes[][4] = {{4, 2, 16, 3}, {2, 2, 20, 0}, {2, 1, 128, 10}};
    double worst = 0;
    for (int si = 0; si < 3; si++) {
        int H = shapes[si][0], G = shapes[si][1], D = shapes[si][2], K = shapes[si][3];
        attn_prob p = attn_prob_new(20 + si, 221, H, G, D, K);
        attn_res f = attn_run(&p, off, 3, 1, 0), b = attn_run(&p, off, 3, 1, 1);
        size_t nq = (size_t)221 * H * D, nk = (size_t)221 * G * D, na = (size_t)K * G * D;
        double e[7] = {rel_norm(b.o, f.o, nq), rel_norm(b.dq, f.dq, nq), rel_norm(b.dk, f.dk, nk), rel_norm(b.dv, f.dv, nk),
                       K ? rel_norm(b.dka, f.dka, na) : 0, K ? rel_norm(b.dva, f.dva, na) : 0, K ? rel_norm(b.dg, f.dg, H) : 0};
        const char *nm[7] = {"o", "dq", "dk", "dv", "dka", "dva", "dgval"};
        for (int i = 0; i < 7; i++) {
            worst = fmax(worst, e[i]);
            CHECK(e[i] < 1.5e-2, "H=%d G=%d D=%d K=%d: bf16 %s off by %.3g (relative norm)", H, G, D, K, nm[i], e[i]);
        }
        CHECK(e[0] > 0, "the bf16 flag changed nothing");
        attn_res_free(&f); attn_res_free(&b);
        attn_prob_free(&p);
    }
    printf("  bf16 vs f32 products: worst relative-norm difference %.2e over o, dq, dk, dv, dka, dva, dgval\n", worst);
    /* through the op: tape->bf16 reaches the forward and the backward */
    attn_prob p = attn_prob_new(30, 221, 4, 2, 16, 3);
    attn_res want = attn_run(&p, off, 3, 1, 1);
    ag_arena arena;
    ag_arena_init(&arena, 1 << 20);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    tape.bf16 = 1;
    float *dq = calloc((size_t)221 * 64, sizeof(float));
    ag_tensor tq = ag_tensor_of(p.q, 221, 64, AG_F32), tk = ag_tensor_of(p.k, 221, 32, AG_F32);
    ag_tensor tv = ag_tensor_of(p.v, 221, 32, AG_F32), tka = ag_tensor_of(p.ka, 3, 32, AG_F32);
    ag_tensor tva = ag_tensor_of(p.va, 3, 32, AG_F32), tg = ag_tensor_of(p.gv, 1, 4, AG_F32);
    tq.requires_grad = 1;
    tq.grad = dq;
    ag_tensor *o = ag_attention(&tape, &tq, &tk, &tv, &tka, &tva, &tg, 4, 2, off, 3);
    tape.bf16 = 0; /* the backward follows what the forward recorded */
    ag_backward_from(&tape, o, p.dout);
    CHECK(same_bits(ag_f32(o), want.o, (size_t)221 * 64), "op forward under tape->bf16 differs from the bf16 kernel");
    CHECK(same_bits(dq, want.dq, (size_t)221 * 64), "op backward under tape->bf16 differs from the bf16 kernel");
    free(dq);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
    attn_res_free(&want);
    attn_prob_free(&p);
}

/* The backward reads rowsum(dout .* o) from the forward output when it has it; without it
 * (kn_attn_shape.o NULL) it recomputes the token output tile by tile: same gradients (in bf16 up
 * to the rounding of the recomputed output). */
static void test_attention_backward_without_forward_output(void) {
    const int off[] = {0, 150, 151, 221};
    for (int bf = 0; bf <= kn_bf16_gemm_available(); bf++)
        for (int K = 0; K <= 3; K += 3) {
            attn_prob p = attn_prob_new(9 + K, 221, 4, 2, 16, K);
            attn_res a = attn_run(&p, off, 3, 1, bf), b = attn_run(&p, off, 3, 0, bf);
            size_t nq = (size_t)221 * 64, nk = (size_t)221 * 32, na = (size_t)K * 32;
            if (!bf) {
                for (size_t i = 0; i < nq; i++) CHECK_CLOSE(b.dq[i], a.dq[i], 1e-5, 1e-4, "dq without o");
                for (size_t i = 0; i < nk; i++) CHECK_CLOSE(b.dk[i], a.dk[i], 1e-5, 1e-4, "dk without o");
                for (size_t i = 0; i < na; i++) CHECK_CLOSE(b.dka[i], a.dka[i], 1e-5, 1e-4, "dka without o");
            } else {
                CHECK(rel_norm(b.dq, a.dq, nq) < 1e-2 && rel_norm(b.dk, a.dk, nk) < 1e-2, "bf16: dq, dk without o");
            }
            CHECK(same_bits(b.dv, a.dv, nk), "dv does not use o");
            CHECK(!K || same_bits(b.dg, a.dg, 4), "dgval does not use o");
            attn_res_free(&a); attn_res_free(&b);
            attn_prob_free(&p);
        }
}

/* No [n, n] buffer: the workspace is a few tiles per thread, the same at 512 and at 8192 tokens. */
static void test_attention_workspace_does_not_grow_with_length(void) {
    int o512[2] = {0, 512}, o8k[2] = {0, 8192}, q1[2] = {0, 1};
    kn_attn_shape a = {.n_seq = 1, .H = 32, .G = 32, .D = 128, .K = 10, .qo = o512, .ko = o512};
    kn_attn_shape b = a, c = a;
    b.qo = b.ko = o8k;
    c.qo = q1;
    c.ko = o8k; /* a decode step at position 8191 */
    size_t f512 = kn_attention_workspace(&a, 1), f8k = kn_attention_workspace(&b, 1), fdec = kn_attention_workspace(&c, 1);
    size_t b512 = kn_attention_backward_workspace(&a, 1), b8k = kn_attention_backward_workspace(&b, 1);
    printf("  workspace per thread at H=32 D=128 K=10: forward %zu KB, backward %zu KB (n = 512 and 8192), decode %zu KB\n",
           f512 * 4 / 1024, b512 * 4 / 1024, fdec * 4 / 1024);
    CHECK(f512 == f8k && b512 == b8k, "workspace grows with the length: %zu -> %zu, %zu -> %zu", f512, f8k, b512, b8k);
    CHECK(f512 < 512 * 512 / 4 && fdec <= f512, "forward workspace %zu floats", f512);
    CHECK(kn_attention_workspace(&a, 4) == 4 * f512, "workspace is per thread");
}

/* A tape whose inputs are all frozen records nothing; no-grad records nothing either. */
static void test_tape_prunes_frozen_work(void) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, w[12] = {0}, g[12] = {0};
    ag_tensor tx = ag_tensor_of(x, 3, 4, AG_F32), tw = ag_tensor_of(w, 3, 4, AG_F32);
    ag_tensor *y = ag_linear(&tape, &tx, &tw);
    y = ag_add(&tape, y, y);
    CHECK(tape.n == 0 && !y->requires_grad, "frozen inputs recorded %d entries", tape.n);
    tw.requires_grad = 1;
    tw.grad = g;
    tape.no_grad = 1;
    y = ag_linear(&tape, &tx, &tw);
    CHECK(tape.n == 0 && !y->requires_grad, "no-grad mode recorded %d entries", tape.n);
    tape.no_grad = 0;
    y = ag_linear(&tape, &tx, &tw);
    CHECK(tape.n == 1 && y->requires_grad, "a trainable W must record (n=%d)", tape.n);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* add() hands its output gradient to an input that has none yet; the same tensor on both sides
 * and a tensor used by two adds must still get every contribution: c = (a + a) + a, a = x W^T
 * gives dW = 3 r^T x. */
static void test_add_gradient_sharing(void) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    float x[6] = {1, -2, 3, 0.5f, 1, 2}, w[4] = {0.1f, 0.2f, 0.3f, -0.4f}, g[4] = {0}, r[6] = {1, 2, -1, 0.5f, 3, -2};
    ag_tensor tx = ag_tensor_of(x, 3, 2, AG_F32), tw = ag_tensor_of(w, 2, 2, AG_F32);
    tw.requires_grad = 1;
    tw.grad = g;
    ag_tensor *a = ag_linear(&tape, &tx, &tw);
    ag_tensor *c = ag_add(&tape, ag_add(&tape, a, a), a);
    ag_backward_from(&tape, c, r);
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 2; i++) {
            double want = 0;
            for (int t = 0; t < 3; t++) want += 3.0 * r[t * 2 + o] * x[t * 2 + i];
            CHECK_CLOSE(g[o * 2 + i], want, 1e-6, 1e-6, "dW through (a + a) + a");
        }
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* The op hook sees every forward (recorded or not) and every backward entry, with its op. */
typedef struct hook_count { int fwd[AG_OP_COUNT], bwd[AG_OP_COUNT], no_grad_fwd; } hook_count;
static void count_hook(void *ctx, const ag_tape *t, ag_op op, int backward, const ag_tensor *out, ag_tensor *const *src,
                       double seconds) {
    hook_count *h = ctx;
    (void)out;
    (void)src;
    if (backward) h->bwd[op]++;
    else h->fwd[op]++;
    if (!backward && t->no_grad) h->no_grad_fwd++;
    CHECK(seconds >= 0, "negative time");
}

static void test_op_hook_sees_every_op(void) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    hook_count h;
    memset(&h, 0, sizeof h);
    tape.hook = count_hook;
    tape.hook_ctx = &h;
    float x[6] = {1, -2, 3, 0.5f, 1, 2}, w[6] = {0.1f, 0.2f, 0.3f, -0.4f, 0.5f, 0.6f}, g[6] = {0};
    ag_tensor tx = ag_tensor_of(x, 3, 2, AG_F32), tw = ag_tensor_of(w, 3, 2, AG_F32);
    tape.no_grad = 1;
    ag_linear(&tape, &tx, &tw); /* frozen work is seen too */
    tape.no_grad = 0;
    tw.requires_grad = 1;
    tw.grad = g;
    int tg[3] = {1, 0, 2};
    ag_tensor *loss = ag_cross_entropy(&tape, ag_linear(&tape, &tx, &tw), tg, NULL);
    ag_backward(&tape, loss, 1.0f);
    CHECK(h.fwd[AG_OP_LINEAR] == 2 && h.fwd[AG_OP_CROSS_ENTROPY] == 1 && h.no_grad_fwd == 1, "forward calls seen");
    CHECK(h.bwd[AG_OP_LINEAR] == 1 && h.bwd[AG_OP_CROSS_ENTROPY] == 1, "backward calls seen");
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* Activation gradients are reused once their producer's backward has run: a chain of 20 linear
 * layers needs about 20 activations plus a few gradients, not 20 of each. */
static void test_backward_reuses_activation_gradients(void) {
    enum { T = 64, C = 64, NL = 20 };
    ag_arena arena;
    ag_arena_init(&arena, 1 << 12);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    static float x[T * C], w[NL][C * C], g[NL][C * C], r[T * C];
    ag_tensor tw[NL];
    ag_rng rng;
    ag_rng_seed(&rng, 3);
    for (int i = 0; i < T * C; i++) x[i] = (float)ag_rng_normal(&rng), r[i] = 1.0f;
    for (int l = 0; l < NL; l++) {
        for (int i = 0; i < C * C; i++) w[l][i] = (float)(ag_rng_normal(&rng) / 8.0);
        tw[l] = ag_tensor_of(w[l], C, C, AG_F32);
        tw[l].requires_grad = 1;
        tw[l].grad = g[l];
    }
    ag_tensor tx = ag_tensor_of(x, T, C, AG_F32), *y = &tx;
    for (int l = 0; l < NL; l++) y = ag_linear(&tape, y, &tw[l]);
    size_t act = arena.used, one = (size_t)T * C * sizeof(float);
    ag_backward_from(&tape, y, r);
    size_t grads = arena.high - act;
    printf("  %d activations of %zu KB: backward added %zu KB of gradients (%.1f tensors)\n", NL, one / 1024, grads / 1024,
           (double)grads / (double)one);
    CHECK(grads <= 4 * one, "backward held %.1f activation gradients at once, expected a few", (double)grads / (double)one);
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* Gradients accumulate across two backward passes (micro-batch accumulation needs nothing else). */
static void test_gradients_accumulate(void) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape tape;
    ag_tape_init(&tape, &arena);
    float x[6] = {1, -2, 3, 0.5f, 1, 2}, w[6] = {0.1f, 0.2f, 0.3f, -0.4f, 0.5f, 0.6f}, g[6] = {0};
    ag_tensor tx = ag_tensor_of(x, 3, 2, AG_F32), tw = ag_tensor_of(w, 3, 2, AG_F32);
    tw.requires_grad = 1;
    tw.grad = g;
    float once[6];
    for (int pass = 0; pass < 2; pass++) {
        ag_tape_reset(&tape);
        ag_arena_reset(&arena);
        ag_tensor *y = ag_linear(&tape, &tx, &tw);
        int tg[3] = {1, 0, 2};
        ag_tensor *loss = ag_cross_entropy(&tape, y, tg, NULL);
        ag_backward(&tape, loss, 0.5f);
        if (pass == 0) memcpy(once, g, sizeof once);
    }
    for (int i = 0; i < 6; i++) CHECK_CLOSE(g[i], 2 * once[i], 1e-7, 1e-6, "accumulated gradient");
    ag_tape_free(&tape);
    ag_arena_free(&arena);
}

/* The vectorised exp of the softmax kernels against double-precision exp over its whole range:
 * relative error <= 4e-7 (a few ulp), exactly 0 below the float underflow, and the row sum. */
static void test_vector_exp_matches_libm(void) {
    enum { N = 4099 };
    static float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = -100.0f + 188.0f * (float)i / (N - 1);
    double sum = kn_exp_shift(y, x, N, 0.0f), want_sum = 0, worst = 0;
    for (int i = 0; i < N; i++) {
        double want = exp((double)x[i]);
        want_sum += y[i];
        if (x[i] < -87.3f) {
            CHECK(y[i] == 0.0f || y[i] < 1.2e-38f, "exp(%g) = %g below the underflow", x[i], y[i]);
            continue;
        }
        if (x[i] > 88.3f) continue;
        double rel = fabs(y[i] - want) / want;
        worst = fmax(worst, rel);
        CHECK(rel <= 4e-7, "exp(%.9g): %.9g vs %.9g (rel %.2e)", x[i], y[i], want, rel);
        if (t_cur_failed > 5) break;
    }
    CHECK_CLOSE(sum, want_sum, 0, 1e-12, "returned sum");
    float shifted[64];
    for (int i = 0; i < 64; i++) shifted[i] = (float)i * 0.25f;
    double s2 = kn_sum_exp_shift(shifted, 64, 15.75f), w2 = 0;
    for (int i = 0; i < 64; i++) w2 += exp((double)shifted[i] - 15.75);
    CHECK_CLOSE(s2, w2, 0, 1e-6, "sum of exp(x - shift)");
    printf("  vectorised exp: max relative error %.2e over [-87, 88]\n", worst);
}

/* The bulk 16-bit -> f32 conversion (vectorised) equals the scalar one on every bit pattern. */
static void test_bulk_conversion_every_16bit_pattern(void) {
    static uint16_t h[65536];
    static float f[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int dt = AG_F16; dt <= AG_BF16; dt++) {
        ag_to_f32(f, h, (ag_dtype)dt, 65536);
        int bad = 0;
        for (int i = 0; i < 65536; i++) {
            float want = dt == AG_F16 ? ag_f16_to_f32(h[i]) : ag_bf16_to_f32(h[i]);
            if (isnan(want) ? !isnan(f[i]) : memcmp(&want, &f[i], 4) != 0) bad++;
        }
        CHECK(bad == 0, "%s: %d of 65536 patterns differ", dt == AG_F16 ? "f16" : "bf16", bad);
    }
}

static void test_arena_chains_and_reuses(void) {
    ag_arena a;
    ag_arena_init(&a, 4096);
    char *p1 = ag_arena_alloc(&a, 1000), *p2 = ag_arena_alloc(&a, 10000);
    CHECK(((uintptr_t)p1 & 63) == 0 && ((uintptr_t)p2 & 63) == 0, "64-byte alignment");
    memset(p1, 1, 1000);
    memset(p2, 2, 10000);
    CHECK(p1[999] == 1, "first block intact after chaining");
    size_t high = a.high;
    ag_arena_reset(&a);
    CHECK(a.used == 0 && a.high == high && ag_arena_capacity(&a) >= high, "reset keeps one block of the high-water size");
    ag_arena_free(&a);
}

int main(void) {
    RUN(test_gradcheck_table);
    RUN(test_sgemm_matches_reference);
    RUN(test_linear_16bit_weights);
    RUN(test_zero_gate_invariant);
    RUN(test_attention_cached_matches_full);
    RUN(test_attention_bits_independent_of_batch_and_threads);
    RUN(test_attention_bf16_tracks_f32);
    RUN(test_attention_backward_without_forward_output);
    RUN(test_attention_workspace_does_not_grow_with_length);
    RUN(test_tape_prunes_frozen_work);
    RUN(test_gradients_accumulate);
    RUN(test_add_gradient_sharing);
    RUN(test_op_hook_sees_every_op);
    RUN(test_backward_reuses_activation_gradients);
    RUN(test_arena_chains_and_reuses);
    RUN(test_vector_exp_matches_libm);
    RUN(test_bulk_conversion_every_16bit_pattern);
    return TEST_MAIN_END("test_ops");
}
