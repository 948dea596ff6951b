/* Forward-only attention against a KV cache (see ops_infer.h).
 *   q [n, H*D], kc, vc [P, G*D] (P >= n), ka, va [K, G*D], gval [1, H] -> o [n, H*D]
 *   query i (position P-n+i) sees keys 0 .. P-n+i:
 *   o = softmax(q kc^T/sqrt(D), causal) vc + gval[h] * softmax(q ka^T/sqrt(D)) va
 * The kernel is kn_attention_forward with one sequence whose nq queries are the last nq of its
 * nk keys (blocked like training: the query block's last position decides which key blocks are
 * read; the scratch is a few tiles per thread, whatever P). Always the f32 products, also under
 * tape->bf16: a decode step reads each cached key and value once, so it is memory-bound and bf16
 * copies of the cache (made per step) would only add work. No backward: generation needs none,
 * and the training op (op_attention.c) keeps its nq == nk layout. */
#include <omp.h>

#include "autograd/kernels/kernels.h"
#include "autograd/ops_infer.h"

ag_tensor *ag_attention_cached(ag_tape *t, ag_tensor *q, ag_tensor *kc, ag_tensor *vc, ag_tensor *ka,
                               ag_tensor *va, ag_tensor *gval, int n_heads, int n_kv_heads) {
    int H = n_heads, G = n_kv_heads;
    AG_ASSERT(H > 0 && G > 0 && H % G == 0 && q->cols % H == 0, "attention_cached: %d heads, %d kv heads, q [%d,%d]",
              H, G, q->rows, q->cols);
    int D = q->cols / H, n = q->rows, P = kc->rows;
    AG_ASSERT(vc->rows == P && kc->cols == G * D && vc->cols == G * D && P >= n,
              "attention_cached: q [%d,%d] kc [%d,%d] vc [%d,%d] for %d/%d heads", q->rows, q->cols, kc->rows,
              kc->cols, vc->rows, vc->cols, H, G);
    int K = ka ? ka->rows : 0;
    if (ka || va || gval)
        AG_ASSERT(ka && va && gval && va->rows == K && ka->cols == G * D && va->cols == G * D && gval->rows == 1 &&
                      gval->cols == H,
                  "attention_cached: prefix ka [%d,%d] va [%d,%d] gval [%d,%d]", ka ? ka->rows : -1,
                  ka ? ka->cols : -1, va ? va->rows : -1, va ? va->cols : -1, gval ? gval->rows : -1,
                  gval ? gval->cols : -1);
    ag_tensor *src[6] = {q, kc, vc, ka, va, gval};
    AG_ASSERT(!ag_should_record(t, src, 6), "attention_cached is forward-only: run it with tape->no_grad = 1");
    int qo[2] = {0, n}, ko[2] = {0, P};
    kn_attn_shape sh = {.n_seq = 1, .H = H, .G = G, .D = D, .K = K, .qo = qo, .ko = ko}; /* f32: see above */
    ag_tensor *out = ag_new(t, n, H * D);
    float *work = ag_scratch(t, kn_attention_workspace(&sh, omp_get_max_threads()));
    kn_attention_forward(ag_f32(out), NULL, NULL, ag_f32(q), ag_f32(kc), ag_f32(vc), ka ? ag_f32(ka) : NULL,
                         va ? ag_f32(va) : NULL, gval ? ag_f32(gval) : NULL, &sh, work);
    return out;
}
