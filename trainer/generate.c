/* KV-cache generation engine and sampler (see generate.h).
 *
 * One forward of n new tokens at positions p .. p+n-1, per layer (DESIGN.md §1, as llama.c):
 *   h = RMSNorm(x); q = RoPE(h Wq^T), k = RoPE(h Wk^T), v = h Wv^T  (positions p..p+n-1)
 *   k, v appended to the layer's cache rows [p, p+n)
 *   o = attention of q against cache rows [0, p+n) (+ the gated adapter prefix)
 *   x = x + o Wo^T; x = x + W2(silu(W1 n) * W3 n), n = RMSNorm(x)
 * then the final norm and classifier on the last row only.
 * Deliberately not here: batches of several prompts (one sequence per engine), beam search,
 * repetition penalties, and any backward pass. */
#include "trainer/generate.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "autograd/kernels/kernels.h"
#include "autograd/ops.h"
#include "autograd/ops_infer.h"
#include "trainer/llama.h"

struct gen_engine {
    const model_weights *w;
    int max_len, pos, kv_dim;
    float *kc, *vc;   /* [n_layers][max_len, kv_dim] rotated keys, values */
    int first_ad, K;  /* first adapted layer (n_layers when no adapter), prompts per layer */
    float *ka, *va;   /* [L][K, kv_dim] prefix keys/values, computed once */
    float *gval;      /* [L][H] activated gate values */
    float *logits;    /* [vocab] of the last fed position */
    int *positions;   /* [max_len]: positions[i] = i (RoPE input) */
    ag_arena arena;
    ag_tape tape;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_f32(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) return NULL;
    return p;
}

void gen_engine_free(gen_engine *e) {
    if (!e) return;
    free(e->kc);
    free(e->vc);
    free(e->ka);
    free(e->va);
    free(e->gval);
    free(e->logits);
    free(e->positions);
    ag_tape_free(&e->tape);
    ag_arena_free(&e->arena);
    free(e);
}

/* ka, va and the gate values of every adapted layer, through the ops in no-grad mode. */
static void compute_prefixes(gen_engine *e, const trainable *ad) {
    const llama_config *c = &e->w->cfg;
    ag_tape *t = &e->tape;
    size_t kv = (size_t)ad->K * e->kv_dim;
    for (int j = 0; j < ad->L; j++) {
        llama_layer_weights *Lw = &e->w->layers[e->first_ad + j];
        ag_arena_reset(&e->arena);
        ag_tensor A = ag_rows(&ad->query, j * ad->K, ad->K);
        ag_tensor *ka = ag_linear(t, &A, &Lw->wk); /* the SAME frozen Wk, Wv; no norm, no RoPE */
        ag_tensor *va = ag_linear(t, &A, &Lw->wv);
        ag_tensor *g = ag_gate(t, &ad->gate[j], ad->gate_act);
        memcpy(e->ka + j * kv, ka->data, kv * sizeof(float));
        memcpy(e->va + j * kv, va->data, kv * sizeof(float));
        memcpy(e->gval + (size_t)j * c->n_heads, g->data, (size_t)c->n_heads * sizeof(float));
    }
    ag_arena_reset(&e->arena);
}

void gen_engine_set_bf16(gen_engine *e, int on) { e->tape.bf16 = on; }

gen_engine *gen_engine_new(const model_weights *w, const trainable *ad, int max_len, char *err, size_t errlen) {
    const llama_config *c = &w->cfg;
    if (max_len < 1 || (c->max_seq_len > 0 && max_len > c->max_seq_len)) {
        snprintf(err, errlen, "generate: cache of %d positions: expected 1 .. max_seq_len %d", max_len, c->max_seq_len);
        return NULL;
    }
    if (ad && (!ad->is_adapter || ad->n_layers != c->n_layers || ad->dim != c->dim || ad->H != c->n_heads ||
               ad->L < 1 || ad->L > c->n_layers)) {
        snprintf(err, errlen, "generate: adapter for %d layers, dim %d, %d heads (%d adapted); the model has %d "
                 "layers, dim %d, %d heads", ad->n_layers, ad->dim, ad->H, ad->L, c->n_layers, c->dim, c->n_heads);
        return NULL;
    }
    gen_engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "generate: out of memory");
        return NULL;
    }
    e->w = w;
    e->max_len = max_len;
    e->kv_dim = c->n_kv_heads * (c->dim / c->n_heads);
    e->first_ad = ad ? c->n_layers - ad->L : c->n_layers;
    e->K = ad ? ad->K : 0;
    size_t cache = (size_t)c->n_layers * max_len * e->kv_dim;
    int L = ad ? ad->L : 0;
    e->kc = alloc_f32(cache);
    e->vc = alloc_f32(cache);
    e->ka = alloc_f32((size_t)L * e->K * e->kv_dim);
    e->va = alloc_f32((size_t)L * e->K * e->kv_dim);
    e->gval = alloc_f32((size_t)L * c->n_heads);
    e->logits = alloc_f32((size_t)c->vocab_size);
    e->positions = malloc((size_t)max_len * sizeof(int));
    if (!e->kc || !e->vc || !e->ka || !e->va || !e->gval || !e->logits || !e->positions) {
        snprintf(err, errlen, "generate: out of memory: needed %zu bytes for the KV cache of %d positions",
                 2 * cache * sizeof(float), max_len);
        gen_engine_free(e);
        return NULL;
    }
    for (int i = 0; i < max_len; i++) e->positions[i] = i;
    /* one decode step's activations; a prompt forward grows the arena once (reset keeps the
     * high-water block) */
    ag_arena_init(&e->arena, (size_t)16 * (c->dim + c->hidden_dim + c->vocab_size) * sizeof(float) + (1 << 16));
    ag_tape_init(&e->tape, &e->arena);
    e->tape.no_grad = 1;
    /* the attention workspace of a single-token step at the last position, so decoding never
     * regrows the scratch (a batched prompt may grow it once) */
    int qo[2] = {0, 1}, ko[2] = {0, max_len};
    kn_attn_shape sh = {.n_seq = 1, .H = c->n_heads, .G = c->n_kv_heads, .D = c->dim / c->n_heads, .K = e->K, .qo = qo, .ko = ko};
    ag_scratch(&e->tape, kn_attention_workspace(&sh, omp_get_max_threads()));
    if (ad) compute_prefixes(e, ad);
    return e;
}

void gen_engine_reset(gen_engine *e) { e->pos = 0; }
int gen_engine_pos(const gen_engine *e) { return e->pos; }
int gen_engine_max_len(const gen_engine *e) { return e->max_len; }

size_t gen_engine_work_bytes(const gen_engine *e) {
    return ag_arena_capacity(&e->arena) + e->tape.scratch_cap * sizeof(float);
}

size_t gen_engine_bytes(const gen_engine *e) {
    const llama_config *c = &e->w->cfg;
    int L = c->n_layers - e->first_ad;
    return sizeof(float) * (2 * (size_t)c->n_layers * e->max_len * e->kv_dim +
                            2 * (size_t)L * e->K * e->kv_dim + (size_t)L * c->n_heads);
}

/* One layer for n new tokens at position e->pos; x [n, dim] -> new residual stream [n, dim]. */
static ag_tensor *layer_step(gen_engine *e, int l, ag_tensor *x, int n) {
    const llama_config *c = &e->w->cfg;
    llama_layer_weights *Lw = &e->w->layers[l];
    ag_tape *t = &e->tape;
    const int *pos = e->positions + e->pos;
    int kv = e->kv_dim, P = e->pos + n;
    ag_tensor *h = ag_rmsnorm(t, x, &Lw->attn_norm, c->norm_eps);
    ag_tensor *q = ag_rope(t, ag_linear(t, h, &Lw->wq), c->n_heads, pos, c->rope_theta);
    ag_tensor *k = ag_rope(t, ag_linear(t, h, &Lw->wk), c->n_kv_heads, pos, c->rope_theta);
    ag_tensor *v = ag_linear(t, h, &Lw->wv);
    float *kc = e->kc + (size_t)l * e->max_len * kv, *vc = e->vc + (size_t)l * e->max_len * kv;
    memcpy(kc + (size_t)e->pos * kv, k->data, (size_t)n * kv * sizeof(float));
    memcpy(vc + (size_t)e->pos * kv, v->data, (size_t)n * kv * sizeof(float));
    ag_tensor kct = ag_tensor_of(kc, P, kv, AG_F32), vct = ag_tensor_of(vc, P, kv, AG_F32);
    ag_tensor kat, vat, gvt, *ka = NULL, *va = NULL, *gv = NULL;
    if (l >= e->first_ad) {
        int j = l - e->first_ad;
        kat = ag_tensor_of(e->ka + (size_t)j * e->K * kv, e->K, kv, AG_F32);
        vat = ag_tensor_of(e->va + (size_t)j * e->K * kv, e->K, kv, AG_F32);
        gvt = ag_tensor_of(e->gval + (size_t)j * c->n_heads, 1, c->n_heads, AG_F32);
        ka = &kat;
        va = &vat;
        gv = &gvt;
    }
    ag_tensor *o = ag_attention_cached(t, q, &kct, &vct, ka, va, gv, c->n_heads, c->n_kv_heads);
    x = ag_add(t, x, ag_linear(t, o, &Lw->wo));
    h = ag_rmsnorm(t, x, &Lw->ffn_norm, c->norm_eps);
    ag_tensor *f = ag_linear(t, ag_swiglu(t, ag_linear(t, h, &Lw->w1), ag_linear(t, h, &Lw->w3)), &Lw->w2);
    return ag_add(t, x, f);
}

const float *gen_engine_feed(gen_engine *e, const int *ids, int n, char *err, size_t errlen) {
    const model_weights *w = e->w;
    const llama_config *c = &w->cfg;
    if (n < 1 || e->pos + n > e->max_len) {
        snprintf(err, errlen, "generate: %d more tokens after %d: the cache holds %d positions", n, e->pos, e->max_len);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size) {
            snprintf(err, errlen, "generate: token id %d (input position %d) outside the vocabulary [0, %d)", ids[i],
                     e->pos + i, c->vocab_size);
            return NULL;
        }
    ag_tape *t = &e->tape;
    ag_arena_reset(&e->arena);
    ag_tape_reset(t);
    ag_tensor *x = ag_embedding(t, (ag_tensor *)&w->tok_emb, ids, n);
    for (int l = 0; l < c->n_layers; l++) {
        /* x was allocated before the layer's activations: rewinding to the mark frees them */
        ag_arena_mark m = ag_arena_get_mark(&e->arena);
        ag_tensor *y = layer_step(e, l, x, n);
        memcpy(x->data, y->data, (size_t)n * c->dim * sizeof(float));
        ag_arena_rewind(&e->arena, m);
    }
    int last = n - 1;
    ag_tensor *lg = llama_logits(t, w, x, &last, 1);
    memcpy(e->logits, lg->data, (size_t)c->vocab_size * sizeof(float));
    e->pos += n;
    return e->logits;
}

/* ---- sampling ------------------------------------------------------------------------------ */

int gen_sampler_init(gen_sampler *s, int V, float temperature, float top_p, uint64_t seed) {
    memset(s, 0, sizeof *s);
    if (V < 1) return -1;
    s->V = V;
    s->temperature = temperature;
    s->top_p = top_p;
    ag_rng_seed(&s->rng, seed);
    s->cand = malloc((size_t)V * sizeof *s->cand);
    return s->cand ? 0 : -1;
}

void gen_sampler_free(gen_sampler *s) {
    free(s->cand);
    s->cand = NULL;
}

int gen_argmax(const float *logits, int V) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* probabilities descending, ties by id (a deterministic order whatever qsort does) */
static int by_prob_desc(const void *a, const void *b) {
    const gen_cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

int gen_sample(gen_sampler *s, const float *logits) {
    int V = s->V;
    if (!(s->temperature > 0.0f)) return gen_argmax(logits, V);
    gen_cand *c = s->cand;
    float mx = logits[0];
    for (int i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        c[i].p = expf((logits[i] - mx) / s->temperature);
        c[i].id = i;
        sum += c[i].p;
    }
    float inv = (float)(1.0 / sum);
    /* A token with p < (1 - top_p) / (V - 1) can never be in the nucleus unless it is the top one
     * (it and everything after it sum to less than 1 - top_p), so only the others are sorted. */
    double cut = V > 1 ? (1.0 - (double)s->top_p) / (double)(V - 1) : 0.0;
    int n = 0;
    for (int i = 0; i < V; i++) {
        float p = c[i].p * inv;
        if ((double)p >= cut) c[n++] = (gen_cand){p, i};
    }
    if (n == 0) { /* everything below the cut (near-uniform, top_p ~ 0): sort them all */
        for (int i = 0; i < V; i++) c[i] = (gen_cand){expf((logits[i] - mx) / s->temperature) * inv, i};
        n = V;
    }
    qsort(c, (size_t)n, sizeof *c, by_prob_desc);
    /* keep the sorted prefix whose mass before each token is <= top_p, renormalise, draw */
    double cum = 0;
    int keep = 0;
    while (keep < n && cum <= (double)s->top_p) cum += c[keep++].p;
    double r = ag_rng_uniform(&s->rng) * cum, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += c[i].p;
        if (r < acc) return c[i].id;
    }
    return c[keep - 1].id;
}

/* ---- the generation loop ------------------------------------------------------------------- */

int gen_generate(gen_engine *e, const int *prompt, int n_prompt, int max_new, int eos, gen_sampler *s,
                 int *out, gen_token_fn cb, void *ctx, gen_stats *st, char *err, size_t errlen) {
    gen_stats z = {0};
    if (!st) st = &z;
    memset(st, 0, sizeof *st);
    if (n_prompt < 1) {
        snprintf(err, errlen, "generate: empty prompt: expected at least one token (bos)");
        return -1;
    }
    if (n_prompt > e->max_len) {
        snprintf(err, errlen, "generate: the prompt has %d tokens: the cache holds %d positions", n_prompt, e->max_len);
        return -1;
    }
    gen_engine_reset(e);
    double t0 = now_s();
    const float *logits = gen_engine_feed(e, prompt, n_prompt, err, errlen);
    if (!logits) return -1;
    double t1 = now_s();
    st->n_prompt = n_prompt;
    st->prompt_s = t1 - t0;
    /* the token sampled next sits at position e->pos: the sequence never exceeds max_len */
    int n = 0;
    while (n < max_new && e->pos < e->max_len) {
        int id = gen_sample(s, logits);
        out[n++] = id;
        if (id == eos) st->hit_eos = 1;
        int stop = cb ? cb(ctx, out, n) : 0;
        if (stop || id == eos || n == max_new || e->pos + 1 >= e->max_len) break;
        logits = gen_engine_feed(e, &id, 1, err, errlen);
        if (!logits) return -1;
        st->n_decode++;
    }
    st->n_gen = n;
    st->decode_s = now_s() - t1;
    return n;
}
