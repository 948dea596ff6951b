/* The LLaMA-Adapter model against an independent double-precision forward written here
 * (per sequence, plain loops, no ops, no packing), on real file formats.
 *
 * Tolerances: logits atol 2e-4 + rtol 1e-4 (float32 model vs double); loss 1e-5 relative;
 * adapter gradients vs central finite differences of the double model (h = 1e-5):
 * atol 1e-5 + rtol 2e-3. Bit-exact where the arithmetic is the same (same weights in two file
 * formats, zero gates). */
#include <cJSON.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "autograd/rng.h"
#include "checkpoints/model_file.h"
#include "tests/test.h"
#include "trainer/llama.h"

/* ---- double reference model --------------------------------------------------------------- */
typedef struct dmodel {
    llama_config c;
    double *emb, *norm, *cls;
    double *an[16], *wq[16], *wk[16], *wv[16], *wo[16], *fn[16], *w1[16], *w2[16], *w3[16];
} dmodel;

static double *to_d(const ag_tensor *t) {
    size_t n = ag_numel(t);
    float *f = malloc(n * sizeof(float));
    ag_to_f32(f, t->data, t->dtype, n);
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    return d;
}

static void dmodel_init(dmodel *m, const model_weights *w) {
    m->c = w->cfg;
    m->emb = to_d(&w->tok_emb);
    m->norm = to_d(&w->norm);
    m->cls = to_d(&w->cls);
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const llama_layer_weights *L = &w->layers[l];
        m->an[l] = to_d(&L->attn_norm); m->wq[l] = to_d(&L->wq); m->wk[l] = to_d(&L->wk); m->wv[l] = to_d(&L->wv);
        m->wo[l] = to_d(&L->wo); m->fn[l] = to_d(&L->ffn_norm); m->w1[l] = to_d(&L->w1); m->w2[l] = to_d(&L->w2);
        m->w3[l] = to_d(&L->w3);
    }
}

static void dmodel_free(dmodel *m) {
    free(m->emb); free(m->norm); free(m->cls);
    for (int l = 0; l < m->c.n_layers; l++) {
        free(m->an[l]); free(m->wq[l]); free(m->wk[l]); free(m->wv[l]); free(m->wo[l]); free(m->fn[l]);
        free(m->w1[l]); free(m->w2[l]); free(m->w3[l]);
    }
}

static void d_rmsnorm(double *y, const double *x, const double *w, int C, double eps) {
    double ss = 0;
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    double r = 1 / sqrt(ss / C + eps);
    for (int i = 0; i < C; i++) y[i] = x[i] * r * w[i];
}

/* y[O] = W[O, I] x[I] */
static void d_matvec(double *y, const double *W, const double *x, int O, int I) {
    for (int o = 0; o < O; o++) {
        double s = 0;
        for (int i = 0; i < I; i++) s += W[(size_t)o * I + i] * x[i];
        y[o] = s;
    }
}

static void d_rope(double *v, int nh, int D, int pos, double theta) {
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < D / 2; i++) {
            double a = pos * pow(theta, -2.0 * i / D), x0 = v[h * D + 2 * i], x1 = v[h * D + 2 * i + 1];
            v[h * D + 2 * i] = x0 * cos(a) - x1 * sin(a);
            v[h * D + 2 * i + 1] = x0 * sin(a) + x1 * cos(a);
        }
}

/* Logits [n, V] of one sequence. query [L*K, dim] and gates [L, H] (NULL: no adapter). */
static void d_forward(const dmodel *m, const int *ids, int n, const double *query, const double *gates, int K, int Lad,
                      int act, double *logits) {
    const llama_config *c = &m->c;
    int dim = c->dim, H = c->n_heads, G = c->n_kv_heads, D = dim / H, kvd = G * D, F = c->hidden_dim;
    double *x = malloc(sizeof(double) * n * dim), *h = malloc(sizeof(double) * dim);
    double *q = malloc(sizeof(double) * n * dim), *k = malloc(sizeof(double) * n * kvd), *v = malloc(sizeof(double) * n * kvd);
    double *o = malloc(sizeof(double) * dim), *t = malloc(sizeof(double) * dim), *att = malloc(sizeof(double) * n * dim);
    double *a = malloc(sizeof(double) * F), *b = malloc(sizeof(double) * F), *p = malloc(sizeof(double) * (n + K + 1));
    double *ka = malloc(sizeof(double) * (K + 1) * kvd), *va = malloc(sizeof(double) * (K + 1) * kvd);
    for (int i = 0; i < n; i++) memcpy(x + i * dim, m->emb + (size_t)ids[i] * dim, sizeof(double) * dim);
    for (int l = 0; l < c->n_layers; l++) {
        int j = l - (c->n_layers - Lad), adapted = query && j >= 0;
        for (int i = 0; i < n; i++) {
            d_rmsnorm(h, x + i * dim, m->an[l], dim, c->norm_eps);
            d_matvec(q + i * dim, m->wq[l], h, dim, dim);
            d_matvec(k + i * kvd, m->wk[l], h, kvd, dim);
            d_matvec(v + i * kvd, m->wv[l], h, kvd, dim);
            d_rope(q + i * dim, H, D, i, c->rope_theta);
            d_rope(k + i * kvd, G, D, i, c->rope_theta);
        }
        if (adapted)
            for (int r = 0; r < K; r++) {
                d_matvec(ka + r * kvd, m->wk[l], query + (size_t)(j * K + r) * dim, kvd, dim);
                d_matvec(va + r * kvd, m->wv[l], query + (size_t)(j * K + r) * dim, kvd, dim);
            }
        for (int i = 0; i < n; i++)
            for (int hh = 0; hh < H; hh++) {
                int g = hh / (H / G);
                double *oh = att + i * dim + hh * D, mx = -1e300, s = 0;
                for (int jj = 0; jj <= i; jj++) {
                    double d = 0;
                    for (int e = 0; e < D; e++) d += q[i * dim + hh * D + e] * k[jj * kvd + g * D + e];
                    p[jj] = d / sqrt((double)D);
                    mx = fmax(mx, p[jj]);
                }
                for (int jj = 0; jj <= i; jj++) s += (p[jj] = exp(p[jj] - mx));
                for (int e = 0; e < D; e++) {
                    double acc = 0;
                    for (int jj = 0; jj <= i; jj++) acc += p[jj] / s * v[jj * kvd + g * D + e];
                    oh[e] = acc;
                }
                if (!adapted) continue;
                double gv = act == 0 ? tanh(gates[j * H + hh]) : gates[j * H + hh];
                mx = -1e300;
                s = 0;
                for (int r = 0; r < K; r++) {
                    double d = 0;
                    for (int e = 0; e < D; e++) d += q[i * dim + hh * D + e] * ka[r * kvd + g * D + e];
                    p[r] = d / sqrt((double)D);
                    mx = fmax(mx, p[r]);
                }
                for (int r = 0; r < K; r++) s += (p[r] = exp(p[r] - mx));
                for (int e = 0; e < D; e++) {
                    double acc = 0;
                    for (int r = 0; r < K; r++) acc += p[r] / s * va[r * kvd + g * D + e];
                    oh[e] += gv * acc;
                }
            }
        for (int i = 0; i < n; i++) {
            d_matvec(o, m->wo[l], att + i * dim, dim, dim);
            for (int e = 0; e < dim; e++) x[i * dim + e] += o[e];
            d_rmsnorm(h, x + i * dim, m->fn[l], dim, c->norm_eps);
            d_matvec(a, m->w1[l], h, F, dim);
            d_matvec(b, m->w3[l], h, F, dim);
            for (int f = 0; f < F; f++) a[f] = a[f] / (1 + exp(-a[f])) * b[f];
            d_matvec(t, m->w2[l], a, dim, F);
            for (int e = 0; e < dim; e++) x[i * dim + e] += t[e];
        }
    }
    for (int i = 0; i < n; i++) {
        d_rmsnorm(h, x + i * dim, m->norm, dim, c->norm_eps);
        d_matvec(logits + (size_t)i * c->vocab_size, m->cls, h, c->vocab_size, dim);
    }
    free(x); free(h); free(q); free(k); free(v); free(o); free(t); free(att); free(a); free(b); free(p); free(ka); free(va);
}

/* A packed micro-batch of random sequences with random targets (about 1 in 4 ignored). */
typedef struct mbuf {
    microbatch mb;
    int ids[64], targets[64], pos[64], off[8], ex[8];
} mbuf;

static void make_batch(mbuf *b, const int *lens, int n_seq, int vocab, uint64_t seed) {
    ag_rng r;
    ag_rng_seed(&r, seed);
    int T = 0;
    b->off[0] = 0;
    for (int s = 0; s < n_seq; s++) {
        for (int i = 0; i < lens[s]; i++, T++) {
            b->ids[T] = (int)ag_rng_below(&r, (uint64_t)vocab);
            b->pos[T] = i;
        }
        b->off[s + 1] = T;
        b->ex[s] = s;
    }
    int nl = 0;
    for (int s = 0; s < n_seq; s++)
        for (int t = b->off[s]; t < b->off[s + 1]; t++) {
            b->targets[t] = t + 1 < b->off[s + 1] && ag_rng_uniform(&r) > 0.25 ? b->ids[t + 1] : 0;
            if (b->targets[t] == 0 && t + 1 < b->off[s + 1] && b->ids[t + 1] > 0 && ag_rng_uniform(&r) < 0) b->targets[t] = 1;
            nl += b->targets[t] != 0;
        }
    microbatch mb = {n_seq, T, b->ids, b->targets, b->pos, b->off, b->ex, nl};
    b->mb = mb;
}

static double d_loss(const dmodel *m, const mbuf *b, const double *query, const double *gates, int K, int L, int act) {
    double total = 0;
    int cnt = 0, V = m->c.vocab_size;
    for (int s = 0; s < b->mb.n_seq; s++) {
        int o = b->off[s], n = b->off[s + 1] - o;
        double *lg = malloc(sizeof(double) * n * V);
        d_forward(m, b->ids + o, n, query, gates, K, L, act, lg);
        for (int i = 0; i < n; i++) {
            int tg = b->targets[o + i];
            if (!tg) continue;
            double mx = -1e300, sum = 0;
            for (int v = 0; v < V; v++) mx = fmax(mx, lg[i * V + v]);
            for (int v = 0; v < V; v++) sum += exp(lg[i * V + v] - mx);
            total += mx + log(sum) - lg[i * V + tg];
            cnt++;
        }
        free(lg);
    }
    return cnt ? total / cnt : 0;
}

static llama_config tiny_config(int H, int G, int tied) {
    llama_config c = {.dim = 16, .n_layers = 3, .n_heads = H, .n_kv_heads = G, .hidden_dim = 24, .vocab_size = 37,
                      .max_seq_len = 64, .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied = tied};
    return c;
}

/* Logits of every position of the micro-batch from the float model. */
static float *model_logits(const model_weights *w, const trainable *ad, const microbatch *mb) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 20);
    ag_tape t;
    ag_tape_init(&t, &arena);
    t.no_grad = 1;
    ag_tensor *h = llama_hidden(&t, w, ad, mb->ids, mb->pos, mb->seq_off, mb->n_seq, mb->T);
    int rows[64];
    for (int i = 0; i < mb->T; i++) rows[i] = i;
    ag_tensor *lg = llama_logits(&t, w, h, rows, mb->T);
    float *out = malloc(ag_numel(lg) * sizeof(float));
    memcpy(out, lg->data, ag_numel(lg) * sizeof(float));
    ag_tape_free(&t);
    ag_arena_free(&arena);
    return out;
}

static void compare_logits(const dmodel *m, const mbuf *b, const float *lg, const double *query, const double *gates,
                           int K, int L, int act, const char *what) {
    int V = m->c.vocab_size;
    double worst = 0;
    for (int s = 0; s < b->mb.n_seq; s++) {
        int o = b->off[s], n = b->off[s + 1] - o;
        double *ref = malloc(sizeof(double) * n * V);
        d_forward(m, b->ids + o, n, query, gates, K, L, act, ref);
        for (int i = 0; i < n * V; i++) {
            double e = fabs(lg[(size_t)o * V + i] - ref[i]);
            worst = fmax(worst, e);
            if (e > 2e-4 + 1e-4 * fabs(ref[i])) {
                CHECK(0, "%s: logit %d of sequence %d: %.7g vs double %.7g", what, i, s, lg[(size_t)o * V + i], ref[i]);
                break;
            }
        }
        free(ref);
    }
    printf("  %s: max |logit - double reference| = %.2e\n", what, worst);
}

/* Loss and every adapter gradient vs the double model (finite differences), GQA and MHA,
 * tanh and identity gates, three sequences of different lengths in one micro-batch. */
static void check_adapter_gradients(int H, int G, int act) {
    llama_config c = tiny_config(H, G, 0);
    model_weights w;
    CHECK(model_init_random(&w, &c, 42, 0.3f) == 0, "random model");
    dmodel m;
    dmodel_init(&m, &w);
    trainable tr;
    char err[256];
    int K = 2, L = 2;
    CHECK(trainable_adapter_init(&tr, &c, K, L, act, 7, err, sizeof err) == 0, "%s", err);
    ag_rng r;
    ag_rng_seed(&r, 99);
    for (int j = 0; j < L * H; j++) tr.p[L * K * c.dim + j] = (float)(0.5 * ag_rng_normal(&r)); /* non-zero gates */
    int lens[3] = {5, 1, 7};
    mbuf b;
    make_batch(&b, lens, 3, c.vocab_size, 3);
    ag_arena arena;
    ag_arena_init(&arena, 1 << 20);
    ag_tape t;
    ag_tape_init(&t, &arena);
    trainable_zero_grad(&tr);
    int n_loss = 0;
    ag_tensor *loss = llama_loss(&t, &w, &tr, &b.mb, &n_loss);
    ag_backward(&t, loss, 1.0f);
    CHECK(t.stats.gemm_dw == 0, "adapter training ran %lld dW GEMMs on frozen weights", (long long)t.stats.gemm_dw);
    double *p = malloc(sizeof(double) * tr.n);
    for (size_t i = 0; i < tr.n; i++) p[i] = tr.p[i];
    double *query = p, *gates = p + (size_t)L * K * c.dim;
    double ref = d_loss(&m, &b, query, gates, K, L, act);
    CHECK_CLOSE(ag_f32(loss)[0], ref, 0, 1e-5, "loss");
    double h = 1e-5, worst = 0;
    for (size_t i = 0; i < tr.n; i++) {
        double keep = p[i];
        p[i] = keep + h;
        double lp = d_loss(&m, &b, query, gates, K, L, act);
        p[i] = keep - h;
        double lm = d_loss(&m, &b, query, gates, K, L, act);
        p[i] = keep;
        double fd = (lp - lm) / (2 * h), e = fabs(tr.g[i] - fd);
        worst = fmax(worst, e);
        if (e > 1e-5 + 2e-3 * fabs(fd)) {
            CHECK(0, "H%d G%d %s: d param[%zu] (%s): tape %.8g, finite difference %.8g", H, G, act ? "identity" : "tanh", i,
                  i < (size_t)L * K * c.dim ? "adapter_query" : "gate", tr.g[i], fd);
        }
    }
    printf("  H=%d G=%d gate %-8s: loss %.7f (double %.7f, %d tokens), %zu adapter gradients, max |tape - fd| = %.2e\n", H, G,
           act ? "identity" : "tanh", ag_f32(loss)[0], ref, n_loss, tr.n, worst);
    free(p);
    ag_tape_free(&t);
    ag_arena_free(&arena);
    trainable_free(&tr);
    dmodel_free(&m);
    model_free(&w);
}

static void test_loss_and_adapter_gradients_match_double_model(void) {
    check_adapter_gradients(4, 2, 0);
    check_adapter_gradients(4, 4, 0);
    check_adapter_gradients(4, 1, 1);
}

/* Full fine-tuning: every weight gets a gradient; spot-check against the double model. */
static void test_full_mode_gradients(void) {
    llama_config c = tiny_config(4, 2, 1);
    model_weights w;
    CHECK(model_init_random(&w, &c, 5, 0.3f) == 0, "random model");
    trainable tr;
    char err[256];
    CHECK(trainable_full_init(&tr, &w, err, sizeof err) == 0, "%s", err);
    int lens[2] = {4, 6};
    mbuf b;
    make_batch(&b, lens, 2, c.vocab_size, 8);
    ag_arena arena;
    ag_arena_init(&arena, 1 << 20);
    ag_tape t;
    ag_tape_init(&t, &arena);
    trainable_zero_grad(&tr);
    ag_tensor *loss = llama_loss(&t, &w, NULL, &b.mb, NULL);
    ag_backward(&t, loss, 1.0f);
    CHECK(t.stats.gemm_dw == 7 * c.n_layers + 1, "full mode: %lld dW GEMMs, expected %d", (long long)t.stats.gemm_dw, 7 * c.n_layers + 1);
    ag_rng r;
    ag_rng_seed(&r, 1);
    double worst = 0;
    for (int probe = 0; probe < 40; probe++) {
        size_t i = (size_t)ag_rng_below(&r, tr.n);
        float keep = tr.p[i];
        double hh = 1e-3;
        dmodel m;
        tr.p[i] = keep + (float)hh;
        dmodel_init(&m, &w);
        double lp = d_loss(&m, &b, NULL, NULL, 0, 0, 0);
        dmodel_free(&m);
        tr.p[i] = keep - (float)hh;
        dmodel_init(&m, &w);
        double lm = d_loss(&m, &b, NULL, NULL, 0, 0, 0);
        dmodel_free(&m);
        tr.p[i] = keep;
        double step = (double)(keep + (float)hh) - (double)(keep - (float)hh);
        double fd = (lp - lm) / step, e = fabs(tr.g[i] - fd);
        worst = fmax(worst, e);
        CHECK(e <= 2e-4 + 5e-3 * fabs(fd), "full weight %zu: tape %.7g, fd %.7g", i, tr.g[i], fd);
    }
    printf("  full mode: %zu parameters, 40 random weights, max |tape - fd| = %.2e\n", tr.n, worst);
    ag_tape_free(&t);
    ag_arena_free(&arena);
    trainable_free(&tr);
    model_free(&w);
}

/* Loss and gradients of one micro-batch with the tape in checkpoint mode or not; returns the
 * loss, fills g (tr.n floats), the arena high-water mark and the GEMM counts. */
static float loss_grads(const model_weights *w, trainable *tr, int adapter, const mbuf *b, int checkpoint, float *g,
                        size_t *high, ag_stats *stats) {
    ag_arena arena;
    ag_arena_init(&arena, 1 << 16);
    ag_tape t;
    ag_tape_init(&t, &arena);
    t.checkpoint = checkpoint;
    trainable_zero_grad(tr);
    ag_tensor *loss = llama_loss(&t, w, adapter ? tr : NULL, &b->mb, NULL);
    ag_backward(&t, loss, 0.5f);
    float l = ag_f32(loss)[0];
    memcpy(g, tr->g, tr->n * sizeof(float));
    *high = arena.high;
    *stats = t.stats;
    ag_tape_free(&t);
    ag_arena_free(&arena);
    return l;
}

/* Gradient checkpointing (recompute each recorded layer in backward) changes no bit: adapter
 * training with GQA on f32 and on bf16 weights, and full fine-tuning; and it keeps less. */
static void test_recompute_is_bit_identical(void) {
    for (int variant = 0; variant < 3; variant++) {
        llama_config c = tiny_config(4, 2, variant == 2);
        c.n_layers = 4;
        model_weights w;
        CHECK(model_init_random(&w, &c, 11 + variant, 0.3f) == 0, "random model");
        if (variant == 1) { /* bf16 weights, as a HF BF16 file keeps them (in place: the f32 buffer is larger) */
            for (int l = 0; l < c.n_layers; l++) {
                llama_layer_weights *L = &w.layers[l];
                ag_tensor *m[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
                for (int i = 0; i < 7; i++) {
                    size_t n = ag_numel(m[i]);
                    uint16_t *h = malloc(n * 2);
                    for (size_t k = 0; k < n; k++) h[k] = ag_f32_to_bf16(ag_f32(m[i])[k]);
                    memcpy(m[i]->data, h, n * 2);
                    m[i]->dtype = AG_BF16;
                    free(h);
                }
            }
        }
        trainable tr;
        char err[256];
        int adapter = variant != 2;
        if (adapter) {
            CHECK(trainable_adapter_init(&tr, &c, 3, 3, AG_GATE_TANH, 5, err, sizeof err) == 0, "%s", err);
            for (int j = 0; j < 3 * c.n_heads; j++) tr.p[3 * 3 * c.dim + j] = 0.3f * (float)(j % 5) - 0.6f;
        } else {
            CHECK(trainable_full_init(&tr, &w, err, sizeof err) == 0, "%s", err);
        }
        int lens[3] = {9, 2, 13};
        mbuf b;
        make_batch(&b, lens, 3, c.vocab_size, 21);
        float *g0 = malloc(tr.n * sizeof(float)), *g1 = malloc(tr.n * sizeof(float));
        size_t h0, h1;
        ag_stats s0, s1;
        float l0 = loss_grads(&w, &tr, adapter, &b, 0, g0, &h0, &s0);
        float l1 = loss_grads(&w, &tr, adapter, &b, 1, g1, &h1, &s1);
        const char *what[] = {"adapter, f32 weights", "adapter, bf16 weights", "full fine-tuning"};
        CHECK(memcmp(&l0, &l1, sizeof l0) == 0, "%s: loss %.9g vs %.9g with recompute", what[variant], l0, l1);
        size_t diff = 0, nonzero = 0;
        for (size_t i = 0; i < tr.n; i++) {
            diff += memcmp(&g0[i], &g1[i], sizeof(float)) != 0;
            nonzero += g0[i] != 0;
        }
        CHECK(diff == 0, "%s: %zu of %zu gradients differ with recompute", what[variant], diff, tr.n);
        CHECK(nonzero > tr.n / 2, "%s: only %zu of %zu gradients are non-zero", what[variant], nonzero, tr.n);
        CHECK(s1.gemm_forward > s0.gemm_forward && s1.gemm_dx == s0.gemm_dx && s1.gemm_dw == s0.gemm_dw,
              "%s: GEMMs forward %lld -> %lld, dx %lld -> %lld, dW %lld -> %lld", what[variant], (long long)s0.gemm_forward,
              (long long)s1.gemm_forward, (long long)s0.gemm_dx, (long long)s1.gemm_dx, (long long)s0.gemm_dw,
              (long long)s1.gemm_dw);
        CHECK(h1 < h0, "%s: arena high-water %zu with recompute, %zu without", what[variant], h1, h0);
        printf("  %s: loss %.7g, %zu gradients bit-identical; arena %zu -> %zu bytes\n", what[variant], l0, tr.n, h0, h1);
        free(g0);
        free(g1);
        trainable_free(&tr);
        model_free(&w);
    }
}

/* With every gate 0 the adapted model computes the base model exactly. */
static void test_zero_init_equals_base_model(void) {
    llama_config c = tiny_config(4, 2, 0);
    model_weights w;
    CHECK(model_init_random(&w, &c, 11, 0.3f) == 0, "random model");
    trainable tr;
    char err[256];
    CHECK(trainable_adapter_init(&tr, &c, 3, 3, GATE_TANH, 1, err, sizeof err) == 0, "%s", err);
    for (uint64_t seed = 1; seed <= 5; seed++) {
        int lens[3] = {3 + (int)seed, 2, 9};
        mbuf b;
        make_batch(&b, lens, 3, c.vocab_size, seed);
        float *with = model_logits(&w, &tr, &b.mb), *without = model_logits(&w, NULL, &b.mb);
        CHECK(memcmp(with, without, sizeof(float) * b.mb.T * c.vocab_size) == 0, "seed %llu: logits differ with zero gates",
              (unsigned long long)seed);
        free(with);
        free(without);
        ag_arena arena;
        ag_arena_init(&arena, 1 << 20);
        ag_tape t;
        ag_tape_init(&t, &arena);
        ag_tensor *l1 = llama_loss(&t, &w, &tr, &b.mb, NULL);
        float loss_ad = ag_f32(l1)[0];
        trainable_zero_grad(&tr);
        ag_backward(&t, l1, 1.0f);
        ag_tape_reset(&t);
        ag_tensor *l0 = llama_loss(&t, &w, NULL, &b.mb, NULL);
        CHECK(loss_ad == ag_f32(l0)[0], "loss with zero gates %.9g != base %.9g", loss_ad, ag_f32(l0)[0]);
        int qzero = 1, gnonzero = 0;
        for (size_t i = 0; i < (size_t)tr.L * tr.K * tr.dim; i++) qzero &= tr.g[i] == 0.0f;
        for (size_t i = (size_t)tr.L * tr.K * tr.dim; i < tr.n; i++) gnonzero += tr.g[i] != 0.0f;
        CHECK(qzero, "step-0 prompt gradients must be exactly 0");
        CHECK(gnonzero == tr.L * tr.H, "every gate gradient non-zero at step 0 (%d of %d)", gnonzero, tr.L * tr.H);
        ag_tape_free(&t);
        ag_arena_free(&arena);
    }
    trainable_free(&tr);
    model_free(&w);
}

static char tmpdir[256];

static void round_to_bf16(model_weights *w) {
    ag_tensor *list[64];
    int n = 0;
    list[n++] = &w->tok_emb;
    list[n++] = &w->norm;
    if (!w->cfg.tied) list[n++] = &w->cls;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        llama_layer_weights *L = &w->layers[l];
        ag_tensor *t[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w1, &L->w2, &L->w3};
        for (int i = 0; i < 9; i++) list[n++] = t[i];
    }
    for (int i = 0; i < n; i++) {
        float *d = ag_f32(list[i]);
        for (size_t k = 0; k < ag_numel(list[i]); k++) d[k] = ag_bf16_to_f32(ag_f32_to_bf16(d[k]));
    }
}

/* Weights served from the file mapping give the same logits, bit for bit, as the same weights
 * copied into owned memory (bf16 file: 16-bit tensors mapped as they are); inspect's view of
 * what is mapped is right: every matrix but the HF-permuted wq/wk is mapped, norms are copies. */
static void test_mapped_weights_equal_copied(void) {
    llama_config c = tiny_config(4, 2, 0);
    model_weights w;
    CHECK(model_init_random(&w, &c, 23, 0.3f) == 0, "random model");
    char dir16[512], err[512];
    snprintf(dir16, sizeof dir16, "%s/hf_mapped", tmpdir);
    CHECK(model_save_hf(dir16, &w, AG_BF16, 0, err, sizeof err) == 0, "%s", err);
    model_free(&w);
    model_weights a;
    CHECK(model_load(dir16, &a, err, sizeof err) == 0, "%s", err);
    int lens[3] = {7, 3, 11};
    mbuf mb;
    make_batch(&mb, lens, 3, c.vocab_size, 9);
    float *mapped = model_logits(&a, NULL, &mb.mb);
    /* the same tensors copied into owned buffers */
    ag_tensor *list[64];
    int n = 0, n_mapped = 0;
    list[n++] = &a.tok_emb;
    list[n++] = &a.cls;
    for (int l = 0; l < c.n_layers; l++) {
        llama_layer_weights *L = &a.layers[l];
        CHECK(!model_is_mapped(&a, &L->wq) && !model_is_mapped(&a, &L->wk), "layer %d: HF wq/wk are un-permuted copies", l);
        CHECK(!model_is_mapped(&a, &L->attn_norm), "layer %d: norms are f32 copies", l);
        ag_tensor *t[] = {&L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
        for (int i = 0; i < 5; i++) list[n++] = t[i];
    }
    void *copies[64];
    for (int i = 0; i < n; i++) {
        n_mapped += model_is_mapped(&a, list[i]);
        size_t bytes = ag_numel(list[i]) * ag_dtype_size(list[i]->dtype);
        copies[i] = malloc(bytes);
        memcpy(copies[i], list[i]->data, bytes);
    }
    CHECK(n_mapped == n, "%d of %d big tensors are mapped from the file", n_mapped, n);
    for (int i = 0; i < n; i++) list[i]->data = copies[i];
    CHECK(!model_is_mapped(&a, &a.layers[0].wv), "a repointed tensor is no longer reported as mapped");
    float *copied = model_logits(&a, NULL, &mb.mb);
    CHECK(memcmp(mapped, copied, (size_t)mb.mb.T * c.vocab_size * sizeof(float)) == 0,
          "logits from mapped and copied weights differ");
    printf("  %d of %d big tensors mapped (16-bit, as in the file); logits bit-identical to owned copies\n", n_mapped, n);
    free(mapped);
    free(copied);
    for (int i = 0; i < n; i++) free(copies[i]);
    model_free(&a);
}

/* The same weights as HF F32, HF BF16 and llama2.c files give the same logits (and equal the
 * double reference), with GQA and an untied classifier. */
static void test_hf_and_llama2c_files_give_same_logits(void) {
    llama_config c = tiny_config(4, 2, 0);
    model_weights w;
    CHECK(model_init_random(&w, &c, 21, 0.3f) == 0, "random model");
    round_to_bf16(&w); /* so that the BF16 file holds exactly the same values */
    char hf32[512], hf16[512], bin[512], err[512];
    snprintf(hf32, sizeof hf32, "%s/hf32", tmpdir);
    snprintf(hf16, sizeof hf16, "%s/hfbf16", tmpdir);
    snprintf(bin, sizeof bin, "%s/model.bin", tmpdir);
    CHECK(model_save_hf(hf32, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    CHECK(model_save_hf(hf16, &w, AG_BF16, 0, err, sizeof err) == 0, "%s", err);
    CHECK(model_save_llama2c(bin, &w, err, sizeof err) == 0, "%s", err);
    model_weights a, b2, d;
    CHECK(model_load(hf32, &a, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(hf16, &b2, err, sizeof err) == 0, "%s", err);
    CHECK(model_load(bin, &d, err, sizeof err) == 0, "%s", err);
    CHECK(b2.dtype == AG_BF16, "BF16 weights stay 16-bit in memory");
    int lens[3] = {6, 2, 9};
    mbuf mb;
    make_batch(&mb, lens, 3, c.vocab_size, 4);
    float *la = model_logits(&a, NULL, &mb.mb), *lb = model_logits(&b2, NULL, &mb.mb), *ld = model_logits(&d, NULL, &mb.mb);
    size_t n = (size_t)mb.mb.T * c.vocab_size;
    CHECK(memcmp(la, ld, n * sizeof(float)) == 0, "HF F32 and llama2.c logits differ");
    double worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(la[i] - lb[i]));
    CHECK(worst <= 1e-5, "HF BF16 logits differ from F32 by %.3g", worst);
    printf("  HF F32 == llama2.c bit for bit; HF BF16 (16-bit in memory) max diff %.2e\n", worst);
    dmodel m;
    dmodel_init(&m, &a);
    compare_logits(&m, &mb, la, NULL, NULL, 0, 0, 0, "HF F32 vs double reference");
    dmodel_free(&m);
    free(la); free(lb); free(ld);
    model_free(&a); model_free(&b2); model_free(&d); model_free(&w);
}

static void test_stories260k_matches_plain_forward(void) {
    char buf[512];
    const char *path = test_shared("models/stories260K.bin", buf, sizeof buf);
    if (!path) SKIP("../shared/models/stories260K.bin is absent");
    model_weights w;
    char err[512];
    CHECK(model_load(path, &w, err, sizeof err) == 0, "%s", err);
    CHECK(w.cfg.dim == 64 && w.cfg.n_layers == 5 && w.cfg.n_heads == 8 && w.cfg.n_kv_heads == 4 && w.cfg.vocab_size == 512,
          "stories260K config");
    int lens[2] = {12, 30};
    mbuf mb;
    make_batch(&mb, lens, 2, w.cfg.vocab_size, 77);
    mb.ids[0] = mb.ids[12] = 1; /* BOS */
    float *lg = model_logits(&w, NULL, &mb.mb);
    dmodel m;
    dmodel_init(&m, &w);
    compare_logits(&m, &mb, lg, NULL, NULL, 0, 0, 0, "stories260K vs double reference");
    /* and with an adapter (non-zero gates) on the top 3 layers */
    trainable tr;
    CHECK(trainable_adapter_init(&tr, &w.cfg, 4, 3, GATE_TANH, 3, err, sizeof err) == 0, "%s", err);
    for (int j = 0; j < 3 * 8; j++) tr.p[3 * 4 * 64 + j] = 0.1f * (float)(j % 7) - 0.3f;
    float *lga = model_logits(&w, &tr, &mb.mb);
    double *p = malloc(sizeof(double) * tr.n);
    for (size_t i = 0; i < tr.n; i++) p[i] = tr.p[i];
    compare_logits(&m, &mb, lga, p, p + 3 * 4 * 64, 4, 3, 0, "stories260K + adapter vs double reference");
    free(p);
    free(lg);
    free(lga);
    trainable_free(&tr);
    dmodel_free(&m);
    model_free(&w);
}

/* Runs the binary; returns the exit status and the first stderr line; there must be one line. */
static int run_bin(const char *args, char *line, size_t n) {
    char *err = NULL;
    int st = test_run_bin(tmpdir, args, NULL, &err);
    CHECK(test_count_lines(err) == 1, "expected one line on stderr, got [%s]", err ? err : "");
    snprintf(line, n, "%s", err ? err : "");
    free(err);
    return st;
}

static void expect_bad(const char *path, const char *needle) {
    char args[1024], line[2048];
    snprintf(args, sizeof args, "inspect %s", path);
    int st = run_bin(args, line, sizeof line);
    CHECK(st == 1, "inspect %s: exit %d, expected 1", path, st);
    CHECK(strstr(line, needle) != NULL, "inspect %s: message '%s' lacks '%s'", path, line, needle);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
}

/* Rewrites one integer key of DIR/config.json. */
static void set_config_int(const char *dir, const char *key, int value) {
    char path[700];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "r");
    char text[8192];
    size_t got = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[got] = 0;
    cJSON *root = cJSON_Parse(text);
    CHECK(root && cJSON_GetObjectItem(root, key), "%s has %s", path, key);
    if (!root) return;
    cJSON_ReplaceItemInObject(root, key, cJSON_CreateNumber(value));
    char *out = cJSON_Print(root);
    write_file(path, out, strlen(out));
    free(out);
    cJSON_Delete(root);
}

static void test_bad_model_files_fail_with_one_line(void) {
    llama_config c = tiny_config(4, 2, 1);
    model_weights w;
    char err[512], p[512], q[700];
    (void)q;
    CHECK(model_init_random(&w, &c, 3, 0.3f) == 0, "random model");
    /* truncated llama2.c file */
    snprintf(p, sizeof p, "%s/trunc.bin", tmpdir);
    CHECK(model_save_llama2c(p, &w, err, sizeof err) == 0, "%s", err);
    CHECK(truncate(p, 1000) == 0, "truncate");
    expect_bad(p, "truncated");
    /* wrong header */
    int hdr[7] = {16, 24, 3, 5, 2, 37, 64}; /* 5 heads do not divide dim 16 */
    snprintf(p, sizeof p, "%s/badhdr.bin", tmpdir);
    write_file(p, hdr, sizeof hdr);
    expect_bad(p, "badhdr.bin");
    /* non-Llama config */
    snprintf(p, sizeof p, "%s/gpt2", tmpdir);
    CHECK(model_save_hf(p, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    snprintf(q, sizeof q, "%s/config.json", p);
    const char *cfg = "{\"model_type\":\"gpt2\",\"architectures\":[\"GPT2LMHeadModel\"]}";
    write_file(q, cfg, strlen(cfg));
    expect_bad(p, "not a Llama model");
    /* shape mismatch: config says another hidden size than the tensors */
    snprintf(p, sizeof p, "%s/shape", tmpdir);
    CHECK(model_save_hf(p, &w, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    set_config_int(p, "intermediate_size", 32);
    expect_bad(p, "mlp");
    /* missing tensor: a two-layer file whose config claims three layers */
    snprintf(p, sizeof p, "%s/missing", tmpdir);
    llama_config c2 = c;
    c2.n_layers = 2;
    model_weights w2;
    CHECK(model_init_random(&w2, &c2, 3, 0.3f) == 0, "random model");
    CHECK(model_save_hf(p, &w2, AG_F32, 0, err, sizeof err) == 0, "%s", err);
    set_config_int(p, "num_hidden_layers", 3);
    expect_bad(p, "model.layers.2");
    /* not a model at all */
    snprintf(p, sizeof p, "%s/nothing.txt", tmpdir);
    write_file(p, "hello", 5);
    expect_bad(p, "nothing.txt");
    model_free(&w);
    model_free(&w2);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_model_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(test_loss_and_adapter_gradients_match_double_model);
    RUN(test_full_mode_gradients);
    RUN(test_recompute_is_bit_identical);
    RUN(test_zero_init_equals_base_model);
    RUN(test_hf_and_llama2c_files_give_same_logits);
    RUN(test_mapped_weights_equal_copied);
    RUN(test_stories260k_matches_plain_forward);
    RUN(test_bad_model_files_fail_with_one_line);
    test_rmtree(tmpdir);
    return TEST_MAIN_END("test_model");
}
