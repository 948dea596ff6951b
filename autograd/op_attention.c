/* Attention op: packed causal GQA attention with the gated adapter prefix.
 *   q [T, H*D] (rotated), k, v [T, G*D], ka, va [K, G*D], gval [1, H] -> o [T, H*D]
 *   o = softmax(q k^T/sqrt(D) + causal mask) v + gval[h] * softmax(q ka^T/sqrt(D)) va
 * per sequence of seq_off (each sequence attends only to itself). The math, the blocking and the
 * backward formulas are in kernels/attention.c; this file checks shapes and records. Saved: the
 * log-sum-exp of each softmax row, [T, H] twice (never the [n, n] probabilities); the backward
 * also reads the op's own output (rowsum(dout .* o) per row and head). Precision: tape->bf16
 * selects the kernels' bf16 tile products (softmax and everything else f32), for the forward and
 * its backward alike. Scratch: the kernels' per-thread tiles, from ag_scratch. Does not run with
 * nq != nk (generation: op_attention_cached.c). */
#include <omp.h>

#include "autograd/kernels/kernels.h"
#include "autograd/op_internal.h"
#include "autograd/ops.h"

ag_tensor *ag_attention(ag_tape *t, ag_tensor *q, ag_tensor *k, ag_tensor *v, ag_tensor *ka,
                        ag_tensor *va, ag_tensor *gval, int n_heads, int n_kv_heads,
                        const int *seq_off, int n_seq) {
    double t0_ = ag_hook_start(t);
    int H = n_heads, G = n_kv_heads;
    AG_ASSERT(H > 0 && G > 0 && H % G == 0 && q->cols % H == 0, "attention: %d heads, %d kv heads, q [%d,%d]", H, G, q->rows, q->cols);
    int D = q->cols / H, T = q->rows;
    AG_ASSERT(k->rows == T && v->rows == T && k->cols == G * D && v->cols == G * D,
              "attention: q [%d,%d] k [%d,%d] v [%d,%d] for %d/%d heads", q->rows, q->cols, k->rows, k->cols, v->rows, v->cols, H, G);
    AG_ASSERT(seq_off[0] == 0 && seq_off[n_seq] == T, "attention: sequence offsets cover [%d,%d) of %d rows", seq_off[0], seq_off[n_seq], T);
    for (int s = 0; s < n_seq; s++) AG_ASSERT(seq_off[s + 1] >= seq_off[s], "attention: offsets decrease at %d", s);
    int K = ka ? ka->rows : 0;
    if (ka) {
        AG_ASSERT(va && gval && va->rows == K && ka->cols == G * D && va->cols == G * D && gval->rows == 1 && gval->cols == H,
                  "attention: prefix ka [%d,%d] va [%d,%d] gval [%d,%d]", ka->rows, ka->cols, va ? va->rows : -1,
                  va ? va->cols : -1, gval ? gval->rows : -1, gval ? gval->cols : -1);
    }
    kn_attn_shape sh = {.n_seq = n_seq, .H = H, .G = G, .D = D, .K = K, .qo = seq_off, .ko = seq_off, .bf16 = t->bf16};
    ag_tensor *out = ag_new(t, T, H * D);
    ag_tensor *src[6] = {q, k, v, ka, va, gval};
    int rec = ag_should_record(t, src, 6);
    float *lse_tok = rec ? ag_arena_alloc(t->arena, (size_t)T * H * sizeof(float)) : NULL;
    float *lse_ad = rec && K ? ag_arena_alloc(t->arena, (size_t)T * H * sizeof(float)) : NULL;
    float *work = ag_scratch(t, kn_attention_workspace(&sh, omp_get_max_threads()));
    kn_attention_forward(ag_f32(out), lse_tok, lse_ad, ag_f32(q), ag_f32(k), ag_f32(v),
                         ka ? ag_f32(ka) : NULL, va ? ag_f32(va) : NULL, gval ? ag_f32(gval) : NULL, &sh, work);
    if (rec) {
        ag_entry *e = ag_record(t, AG_OP_ATTENTION, out);
        for (int i = 0; i < 6; i++) e->src[i] = src[i];
        e->saved[0] = lse_tok;
        e->saved[1] = lse_ad;
        e->saved[2] = (void *)seq_off;
        e->i[0] = n_seq;
        e->i[1] = H;
        e->i[2] = G;
        e->i[3] = sh.bf16; /* the backward's products in the forward's precision */
    }
    ag_hook_end(t, AG_OP_ATTENTION, out, (ag_tensor *[AG_MAX_SRC]){q, k, v, ka, va, gval}, t0_);
    return out;
}

void ag_attention_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *q = e->src[0], *k = e->src[1], *v = e->src[2], *ka = e->src[3], *va = e->src[4], *gval = e->src[5];
    int H = (int)e->i[1], G = (int)e->i[2];
    const int *off = e->saved[2];
    kn_attn_shape sh = {.n_seq = (int)e->i[0], .H = H, .G = G, .D = q->cols / H, .K = ka ? ka->rows : 0, .qo = off,
                        .ko = off, .o = ag_f32(e->out), .bf16 = (int)e->i[3]};
    float *work = ag_scratch(t, kn_attention_backward_workspace(&sh, omp_get_max_threads()));
    kn_attention_backward(ag_grad_if(t, q), ag_grad_if(t, k), ag_grad_if(t, v), ag_grad_if(t, ka),
                          ag_grad_if(t, va), ag_grad_if(t, gval), e->out->grad, ag_f32(q), ag_f32(k),
                          ag_f32(v), ka ? ag_f32(ka) : NULL, va ? ag_f32(va) : NULL,
                          gval ? ag_f32(gval) : NULL, e->saved[0], e->saved[1], &sh, work);
}
