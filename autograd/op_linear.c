/* Ops that move rows: linear (y = x W^T), embedding lookup, row gather.
 *   linear:    x [T, NI], W [NO, NI] (f32, or f16/bf16 when frozen) -> y [T, NO]
 *              dx += dy W;  dW += dy^T x only when W requires a gradient (frozen: never).
 *   embedding: table [V, C], ids [T] -> out [T, C];  dtable[ids[t]] += dout[t]
 *   gather:    x [N, C], idx [n] -> out [n, C];     dx[idx[i]] += dout[i]
 * Precision: with tape->bf16 the linear GEMMs of more than one row (forward, dx, dW) run in bf16
 * (kn_gemm_bf16, products summed in f32) on the weights as they are stored; single rows
 * (decoding) stay on the memory-bound f32/16-bit matvec, which bf16 would not speed up. Without
 * it (f32) the kn_linear_* kernels choose: kn_gemm_f32 on AVX-512F CPUs, OpenBLAS elsewhere; they
 * take kn_linear_workspace floats of the tape's scratch either way.
 * Reference: nn.Linear(bias=False), nn.Embedding, tensor indexing. */
#include "autograd/kernels/kernels.h"
#include "autograd/op_internal.h"
#include "autograd/ops.h"

ag_tensor *ag_linear(ag_tape *t, ag_tensor *x, ag_tensor *W) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(x->cols == W->cols, "linear: x [%d,%d] vs W [%d,%d]", x->rows, x->cols, W->rows, W->cols);
    AG_ASSERT(!W->requires_grad || W->dtype == AG_F32, "linear: a trainable W must be f32");
    ag_tensor *y = ag_new(t, x->rows, W->rows);
    int T = x->rows, NI = W->cols, NO = W->rows;
    if (t->bf16 && T > 1) {
        void *work = ag_scratch(t, kn_gemm_bf16_workspace(T, NO, NI) / sizeof(float) + 1);
        kn_gemm_bf16(0, 1, T, NO, NI, 1.0f, ag_f32(x), NI, W->data, W->dtype, NI, 0.0f, ag_f32(y), NO, work);
    } else {
        float *work = ag_scratch(t, kn_linear_workspace(W->dtype, NI, NO));
        kn_linear_forward(ag_f32(y), ag_f32(x), W->data, W->dtype, T, NI, NO, work);
    }
    t->stats.gemm_forward++;
    ag_tensor *src[2] = {x, W};
    if (ag_should_record(t, src, 2)) {
        ag_entry *e = ag_record(t, AG_OP_LINEAR, y);
        e->src[0] = x;
        e->src[1] = W;
    }
    ag_hook_end(t, AG_OP_LINEAR, y, (ag_tensor *[AG_MAX_SRC]){x, W}, t0_);
    return y;
}

void ag_linear_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *x = e->src[0], *W = e->src[1];
    const float *dy = e->out->grad;
    int T = x->rows, NI = W->cols, NO = W->rows;
    int bf16 = t->bf16 && T > 1;
    if (x->requires_grad) {
        if (bf16) {
            void *work = ag_scratch(t, kn_gemm_bf16_workspace(T, NI, NO) / sizeof(float) + 1);
            kn_gemm_bf16(0, 0, T, NI, NO, 1.0f, dy, NO, W->data, W->dtype, NI, 1.0f, ag_grad(t, x), NI, work);
        } else {
            float *work = ag_scratch(t, kn_linear_workspace(W->dtype, NI, NO));
            kn_linear_backward_dx(ag_grad(t, x), dy, W->data, W->dtype, T, NI, NO, work);
        }
        t->stats.gemm_dx++;
    }
    if (W->requires_grad) {
        if (bf16) {
            void *work = ag_scratch(t, kn_gemm_bf16_workspace(NO, NI, T) / sizeof(float) + 1);
            kn_gemm_bf16(1, 0, NO, NI, T, 1.0f, dy, NO, ag_f32(x), AG_F32, NI, 1.0f, ag_grad(t, W), NI, work);
        } else {
            float *work = ag_scratch(t, kn_linear_workspace(W->dtype, NI, NO));
            kn_linear_backward_dw(ag_grad(t, W), dy, ag_f32(x), T, NI, NO, work);
        }
        t->stats.gemm_dw++;
    }
}

ag_tensor *ag_embedding(ag_tape *t, ag_tensor *table, const int *ids, int T) {
    double t0_ = ag_hook_start(t);
    for (int i = 0; i < T; i++)
        AG_ASSERT(ids[i] >= 0 && ids[i] < table->rows, "embedding: id %d at %d outside [0,%d)", ids[i], i, table->rows);
    ag_tensor *out = ag_new(t, T, table->cols);
    kn_embedding_forward(ag_f32(out), table->data, table->dtype, ids, T, table->cols);
    if (ag_should_record(t, &table, 1)) {
        ag_entry *e = ag_record(t, AG_OP_EMBEDDING, out);
        e->src[0] = table;
        e->saved[0] = (void *)ids;
    }
    ag_hook_end(t, AG_OP_EMBEDDING, out, (ag_tensor *[AG_MAX_SRC]){table}, t0_);
    return out;
}

void ag_embedding_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *table = e->src[0];
    kn_embedding_backward(ag_grad(t, table), e->out->grad, e->saved[0], e->out->rows, table->cols);
}

ag_tensor *ag_gather(ag_tape *t, ag_tensor *x, const int *idx, int n) {
    double t0_ = ag_hook_start(t);
    for (int i = 0; i < n; i++)
        AG_ASSERT(idx[i] >= 0 && idx[i] < x->rows, "gather: index %d at %d outside [0,%d)", idx[i], i, x->rows);
    ag_tensor *out = ag_new(t, n, x->cols);
    kn_gather_forward(ag_f32(out), ag_f32(x), idx, n, x->cols);
    if (ag_should_record(t, &x, 1)) {
        ag_entry *e = ag_record(t, AG_OP_GATHER, out);
        e->src[0] = x;
        e->saved[0] = (void *)idx;
    }
    ag_hook_end(t, AG_OP_GATHER, out, (ag_tensor *[AG_MAX_SRC]){x}, t0_);
    return out;
}

void ag_gather_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *x = e->src[0];
    kn_gather_backward(ag_grad(t, x), e->out->grad, e->saved[0], e->out->rows, x->cols);
}
