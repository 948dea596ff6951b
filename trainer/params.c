/* Flat trainable blocks for adapter and full fine-tuning (see params.h). */
#include "trainer/params.h"

#include <stdio.h>
#include <string.h>

#include "autograd/rng.h"

static int alloc_blocks(trainable *tr, size_t n, char *err, size_t errlen) {
    tr->n = n;
    tr->p = calloc(n ? n : 1, sizeof(float));
    tr->g = calloc(n ? n : 1, sizeof(float));
    if (!tr->p || !tr->g) {
        snprintf(err, errlen, "out of memory: needed %zu bytes for trainable parameters", 2 * n * sizeof(float));
        free(tr->p);
        free(tr->g);
        return -1;
    }
    return 0;
}

static int adapter_layout(trainable *tr, const llama_config *cfg, int K, int L, int gate_act, char *err, size_t errlen) {
    memset(tr, 0, sizeof *tr);
    if (K < 1 || L < 1 || L > cfg->n_layers) {
        snprintf(err, errlen, "adapter: adapter_len %d and adapter_layer %d must be >= 1, adapter_layer <= %d layers",
                 K, L, cfg->n_layers);
        return -1;
    }
    if (gate_act != GATE_TANH && gate_act != GATE_IDENTITY) {
        snprintf(err, errlen, "adapter: unknown gate activation %d", gate_act);
        return -1;
    }
    size_t nq = (size_t)L * K * cfg->dim;
    if (alloc_blocks(tr, nq + (size_t)L * cfg->n_heads, err, errlen)) return -1;
    tr->is_adapter = 1;
    tr->K = K;
    tr->L = L;
    tr->n_layers = cfg->n_layers;
    tr->H = cfg->n_heads;
    tr->dim = cfg->dim;
    tr->gate_act = gate_act;
    tr->query = ag_tensor_of(tr->p, L * K, cfg->dim, AG_F32);
    tr->query.grad = tr->g;
    tr->query.requires_grad = 1;
    tr->gate = calloc((size_t)L, sizeof(ag_tensor));
    for (int j = 0; j < L; j++) {
        size_t o = nq + (size_t)j * cfg->n_heads;
        tr->gate[j] = ag_tensor_of(tr->p + o, 1, cfg->n_heads, AG_F32);
        tr->gate[j].grad = tr->g + o;
        tr->gate[j].requires_grad = 1;
    }
    return 0;
}

int trainable_adapter_init(trainable *tr, const llama_config *cfg, int K, int L, int gate_act,
                           uint64_t seed, char *err, size_t errlen) {
    if (adapter_layout(tr, cfg, K, L, gate_act, err, errlen)) return -1;
    ag_rng rng;
    ag_rng_seed(&rng, seed);
    for (size_t i = 0; i < (size_t)L * K * cfg->dim; i++) tr->p[i] = (float)ag_rng_normal(&rng);
    return 0; /* gates stay 0: zero-init attention */
}

int trainable_adapter_from(trainable *tr, const llama_config *cfg, const adapter_data *a, char *err, size_t errlen) {
    if (a->dim != cfg->dim || a->n_heads != cfg->n_heads || a->n_layers != cfg->n_layers) {
        snprintf(err, errlen, "adapter: made for dim %d, %d heads, %d layers; the model has dim %d, %d heads, %d layers",
                 a->dim, a->n_heads, a->n_layers, cfg->dim, cfg->n_heads, cfg->n_layers);
        return -1;
    }
    if (adapter_layout(tr, cfg, a->adapter_len, a->adapter_layer, a->gate_act, err, errlen)) return -1;
    size_t nq = (size_t)tr->L * tr->K * tr->dim;
    memcpy(tr->p, a->query, nq * sizeof(float));
    memcpy(tr->p + nq, a->gates, (size_t)tr->L * tr->H * sizeof(float));
    return 0;
}

adapter_data trainable_adapter_view(const trainable *tr) {
    adapter_data a = {tr->K, tr->L, tr->n_layers, tr->H, tr->dim, tr->gate_act, tr->p,
                      tr->p + (size_t)tr->L * tr->K * tr->dim};
    return a;
}

/* Every distinct weight tensor of w, in file order (the tied classifier is not repeated). */
static int weight_list(model_weights *w, ag_tensor **out) {
    int n = 0;
    out[n++] = &w->tok_emb;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        llama_layer_weights *L = &w->layers[l];
        ag_tensor *t[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_norm, &L->w1, &L->w2, &L->w3};
        for (int i = 0; i < 9; i++) out[n++] = t[i];
    }
    out[n++] = &w->norm;
    if (!w->cfg.tied) out[n++] = &w->cls;
    return n;
}

int trainable_full_init(trainable *tr, model_weights *w, char *err, size_t errlen) {
    memset(tr, 0, sizeof *tr);
    if (model_to_f32(w, err, errlen)) return -1;
    ag_tensor **list = malloc(sizeof(ag_tensor *) * (size_t)(9 * w->cfg.n_layers + 3));
    int n = weight_list(w, list);
    size_t total = 0;
    for (int i = 0; i < n; i++) total += ag_numel(list[i]);
    if (alloc_blocks(tr, total, err, errlen)) {
        free(list);
        return -1;
    }
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        size_t k = ag_numel(list[i]);
        memcpy(tr->p + o, list[i]->data, k * sizeof(float));
        list[i]->data = tr->p + o;
        list[i]->grad = tr->g + o;
        list[i]->requires_grad = 1;
        o += k;
    }
    if (w->cfg.tied) w->cls = w->tok_emb;
    free(list);
    return 0;
}

void trainable_free(trainable *tr) {
    free(tr->p);
    free(tr->g);
    free(tr->gate);
    memset(tr, 0, sizeof *tr);
}

void trainable_zero_grad(trainable *tr) { memset(tr->g, 0, tr->n * sizeof(float)); }
