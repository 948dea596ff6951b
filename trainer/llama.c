/* LLaMA decoder + adapter forward from ops (see llama.h). What it does not do: KV caching
 * (trainer/generate.c) and any padding. */
#include "trainer/llama.h"

#include <string.h>

static ag_tensor *layer_forward(ag_tape *t, const model_weights *w, int l, const trainable *ad, ag_tensor *x,
                                const int *pos, const int *seq_off, int n_seq) {
    const llama_config *c = &w->cfg;
    llama_layer_weights *L = &w->layers[l];
    ag_tensor *h = ag_rmsnorm(t, x, &L->attn_norm, c->norm_eps);
    ag_tensor *q = ag_rope(t, ag_linear(t, h, &L->wq), c->n_heads, pos, c->rope_theta);
    ag_tensor *k = ag_rope(t, ag_linear(t, h, &L->wk), c->n_kv_heads, pos, c->rope_theta);
    ag_tensor *v = ag_linear(t, h, &L->wv);
    ag_tensor *ka = NULL, *va = NULL, *gv = NULL;
    int first = ad ? c->n_layers - ad->L : c->n_layers;
    if (ad && l >= first) {
        int j = l - first;
        ag_tensor *A = ag_arena_alloc(t->arena, sizeof *A);
        *A = ag_rows(&ad->query, j * ad->K, ad->K);
        ka = ag_linear(t, A, &L->wk); /* the prompts go through the SAME frozen Wk, Wv */
        va = ag_linear(t, A, &L->wv);
        gv = ag_gate(t, &ad->gate[j], ad->gate_act);
    }
    ag_tensor *o = ag_attention(t, q, k, v, ka, va, gv, c->n_heads, c->n_kv_heads, seq_off, n_seq);
    x = ag_add(t, x, ag_linear(t, o, &L->wo));
    h = ag_rmsnorm(t, x, &L->ffn_norm, c->norm_eps);
    ag_tensor *f = ag_linear(t, ag_swiglu(t, ag_linear(t, h, &L->w1), ag_linear(t, h, &L->w3)), &L->w2);
    return ag_add(t, x, f);
}

/* layer_forward as an ag_block_fn, for gradient checkpointing */
typedef struct layer_ctx {
    const model_weights *w;
    const trainable *ad;
    const int *pos, *seq_off;
    int l, n_seq;
} layer_ctx;

static ag_tensor *layer_block(ag_tape *t, void *ctx, ag_tensor *x) {
    const layer_ctx *c = ctx;
    return layer_forward(t, c->w, c->l, c->ad, x, c->pos, c->seq_off, c->n_seq);
}

/* llama_hidden, with the output of the first pc->layers (tape-less) layers taken from or given
 * to the prefix cache when pc is not NULL (mb: the micro-batch, for the example indices). */
static ag_tensor *hidden(ag_tape *t, const model_weights *w, const trainable *ad, const int *ids, const int *pos,
                         const int *seq_off, int n_seq, int T, prefix_cache *pc, const microbatch *mb) {
    const llama_config *c = &w->cfg;
    int saved_no_grad = t->no_grad, l0 = 0;
    ag_tensor *x;
    /* x for a run of tape-less layers lives in a buffer allocated before their activations, so
     * each such layer can give its memory back as soon as it is done */
    ag_tensor *carry = NULL;
    if (pc && pc->layers > 0 && prefix_cache_has(pc, mb) && prefix_cache_load(pc, mb, (carry = ag_new(t, T, c->dim))->data)) {
        x = carry;
        l0 = pc->layers;
    } else {
        x = ag_embedding(t, (ag_tensor *)&w->tok_emb, ids, T);
        carry = NULL;
    }
    for (int l = l0; l < c->n_layers; l++) {
        int records = !t->no_grad && (x->requires_grad || w->layers[l].wq.requires_grad ||
                                      (ad && l >= c->n_layers - ad->L));
        if (records && t->checkpoint) { /* keep only the layer's input; recompute it in backward */
            layer_ctx *lc = ag_arena_alloc(t->arena, sizeof *lc);
            *lc = (layer_ctx){w, ad, pos, seq_off, l, n_seq};
            x = ag_checkpoint(t, layer_block, lc, x, 1);
            continue;
        }
        if (records) {
            x = layer_forward(t, w, l, ad, x, pos, seq_off, n_seq);
            continue;
        }
        if (!carry) {
            carry = ag_new(t, T, c->dim);
            memcpy(carry->data, x->data, (size_t)T * c->dim * sizeof(float));
            x = carry;
        }
        ag_arena_mark m = ag_arena_get_mark(t->arena);
        t->no_grad = 1;
        ag_tensor *y = layer_forward(t, w, l, ad, x, pos, seq_off, n_seq);
        t->no_grad = saved_no_grad;
        memcpy(carry->data, y->data, (size_t)T * c->dim * sizeof(float));
        ag_arena_rewind(t->arena, m);
        if (pc && l + 1 == pc->layers) prefix_cache_store(pc, mb, carry->data);
    }
    return x;
}

ag_tensor *llama_hidden(ag_tape *t, const model_weights *w, const trainable *ad, const int *ids,
                        const int *pos, const int *seq_off, int n_seq, int T) {
    return hidden(t, w, ad, ids, pos, seq_off, n_seq, T, NULL, NULL);
}

ag_tensor *llama_logits(ag_tape *t, const model_weights *w, ag_tensor *h, const int *rows, int n) {
    ag_tensor *hs = ag_gather(t, h, rows, n);
    hs = ag_rmsnorm(t, hs, (ag_tensor *)&w->norm, w->cfg.norm_eps);
    return ag_linear(t, hs, (ag_tensor *)&w->cls);
}

ag_tensor *llama_loss(ag_tape *t, const model_weights *w, const trainable *ad, const microbatch *mb, int *n_loss) {
    return llama_loss_cached(t, w, ad, mb, n_loss, NULL);
}

ag_tensor *llama_loss_cached(ag_tape *t, const model_weights *w, const trainable *ad, const microbatch *mb, int *n_loss,
                             prefix_cache *pc) {
    if (pc && (!ad || pc->layers != w->cfg.n_layers - ad->L)) pc = NULL; /* only the adapter's frozen prefix */
    ag_tensor *h = hidden(t, w, ad, mb->ids, mb->pos, mb->seq_off, mb->n_seq, mb->T, pc, mb);
    int n = 0;
    for (int i = 0; i < mb->T; i++) n += mb->targets[i] != 0;
    int *rows = ag_arena_alloc(t->arena, sizeof(int) * (size_t)(n ? n : 1));
    int *tg = ag_arena_alloc(t->arena, sizeof(int) * (size_t)(n ? n : 1));
    n = 0;
    for (int i = 0; i < mb->T; i++)
        if (mb->targets[i]) {
            rows[n] = i;
            tg[n++] = mb->targets[i];
        }
    if (n_loss) *n_loss = n;
    ag_tensor *logits = llama_logits(t, w, h, rows, n);
    return ag_cross_entropy(t, logits, tg, NULL);
}
