/* Elementwise and per-row ops: RMSNorm, RoPE, SwiGLU, residual add, gate activation.
 *   rmsnorm: x [T, C], w [1, C] -> y = x * rstd * w, rstd = 1/sqrt(mean(x^2) + eps)
 *            dx = rstd*(dy*w) - x*rstd^3*mean(dy*w*x);  dw += sum_t dy*x*rstd
 *   rope:    x [T, NH*D] -> pairs (2i, 2i+1) of each head rotated by pos*theta^(-2i/D);
 *            dx = rotation of dy by the negative angle
 *   swiglu:  a, b [T, F] -> silu(a)*b;  da = dy*b*s*(1 + a(1-s)), db = dy*silu(a), s = sigmoid(a)
 *   add:     a + b;  da += dy, db += dy
 *   gate:    g [1, H] -> tanh(g) or g;  dg += dy*(1 - tanh^2) or dy
 * Reference: the LLaMA RMSNorm, apply_rotary_emb (complex pairs), F.silu(w1 x) * w3 x. */
#include <math.h>

#include "autograd/kernels/kernels.h"
#include "autograd/op_internal.h"
#include "autograd/ops.h"

ag_tensor *ag_rmsnorm(ag_tape *t, ag_tensor *x, ag_tensor *w, float eps) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(w->rows == 1 && w->cols == x->cols, "rmsnorm: x [%d,%d] vs w [%d,%d]", x->rows, x->cols, w->rows, w->cols);
    ag_tensor *y = ag_new(t, x->rows, x->cols);
    ag_tensor *src[2] = {x, w};
    int rec = ag_should_record(t, src, 2);
    float *rstd = rec ? ag_arena_alloc(t->arena, (size_t)x->rows * sizeof(float)) : NULL;
    kn_rmsnorm_forward(ag_f32(y), rstd, ag_f32(x), ag_f32(w), x->rows, x->cols, eps);
    if (rec) {
        ag_entry *e = ag_record(t, AG_OP_RMSNORM, y);
        e->src[0] = x;
        e->src[1] = w;
        e->saved[0] = rstd;
    }
    ag_hook_end(t, AG_OP_RMSNORM, y, (ag_tensor *[AG_MAX_SRC]){x, w}, t0_);
    return y;
}

void ag_rmsnorm_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *x = e->src[0], *w = e->src[1];
    kn_rmsnorm_backward(ag_grad_if(t, x), ag_grad_if(t, w), e->out->grad, ag_f32(x), ag_f32(w),
                        e->saved[0], x->rows, x->cols);
}

ag_tensor *ag_rope(ag_tape *t, ag_tensor *x, int n_heads, const int *pos, float theta) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(n_heads > 0 && x->cols % n_heads == 0 && (x->cols / n_heads) % 2 == 0,
              "rope: [%d,%d] with %d heads", x->rows, x->cols, n_heads);
    ag_tensor *y = ag_new(t, x->rows, x->cols);
    kn_rope(ag_f32(y), ag_f32(x), pos, x->rows, n_heads, x->cols / n_heads, theta, 0);
    if (ag_should_record(t, &x, 1)) {
        ag_entry *e = ag_record(t, AG_OP_ROPE, y);
        e->src[0] = x;
        e->saved[0] = (void *)pos;
        e->i[0] = n_heads;
        e->f[0] = theta;
    }
    ag_hook_end(t, AG_OP_ROPE, y, (ag_tensor *[AG_MAX_SRC]){x}, t0_);
    return y;
}

void ag_rope_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *x = e->src[0];
    int nh = (int)e->i[0];
    /* dx += R(-angle) dy: rotate into scratch, then accumulate */
    size_t n = ag_numel(x);
    if (!x->grad) { /* the rotation of dy is the whole gradient: write it in place */
        kn_rope(ag_grad_overwrite(t, x), e->out->grad, e->saved[0], x->rows, nh, x->cols / nh, e->f[0], 1);
        return;
    }
    float *tmp = ag_scratch(t, n), *dx = x->grad;
    kn_rope(tmp, e->out->grad, e->saved[0], x->rows, nh, x->cols / nh, e->f[0], 1);
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dx[i] += tmp[i];
}

ag_tensor *ag_swiglu(ag_tape *t, ag_tensor *a, ag_tensor *b) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(a->rows == b->rows && a->cols == b->cols, "swiglu: [%d,%d] vs [%d,%d]", a->rows, a->cols, b->rows, b->cols);
    ag_tensor *y = ag_new(t, a->rows, a->cols);
    kn_swiglu_forward(ag_f32(y), ag_f32(a), ag_f32(b), ag_numel(a));
    ag_tensor *src[2] = {a, b};
    if (ag_should_record(t, src, 2)) {
        ag_entry *e = ag_record(t, AG_OP_SWIGLU, y);
        e->src[0] = a;
        e->src[1] = b;
    }
    ag_hook_end(t, AG_OP_SWIGLU, y, (ag_tensor *[AG_MAX_SRC]){a, b}, t0_);
    return y;
}

void ag_swiglu_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *a = e->src[0], *b = e->src[1];
    kn_swiglu_backward(ag_grad_if(t, a), ag_grad_if(t, b), e->out->grad, ag_f32(a), ag_f32(b), ag_numel(a));
}

ag_tensor *ag_add(ag_tape *t, ag_tensor *a, ag_tensor *b) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(a->rows == b->rows && a->cols == b->cols, "add: [%d,%d] vs [%d,%d]", a->rows, a->cols, b->rows, b->cols);
    ag_tensor *y = ag_new(t, a->rows, a->cols);
    float *yd = ag_f32(y), *ad = ag_f32(a), *bd = ag_f32(b);
    size_t n = ag_numel(a);
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) yd[i] = ad[i] + bd[i];
    ag_tensor *src[2] = {a, b};
    if (ag_should_record(t, src, 2)) {
        ag_entry *e = ag_record(t, AG_OP_ADD, y);
        e->src[0] = a;
        e->src[1] = b;
    }
    ag_hook_end(t, AG_OP_ADD, y, (ag_tensor *[AG_MAX_SRC]){a, b}, t0_);
    return y;
}

void ag_add_backward(ag_tape *t, ag_entry *e) {
    const float *dy = e->out->grad;
    size_t n = ag_numel(e->out);
    int handed = 0;
    for (int s = 0; s < 2; s++) {
        ag_tensor *x = e->src[s];
        if (!x->requires_grad) continue;
        if (!x->grad && !handed) {
            /* dx = dy: give the input dy's buffer (complete now, and no other entry reads it)
             * instead of zero-filling a new one and adding; for x + x the second pass doubles it */
            x->grad = e->out->grad;
            x->grad_pooled = e->out->grad_pooled; /* the buffer's ownership moves with it */
            e->out->grad_pooled = 0;
            handed = 1;
            continue;
        }
        float *d = ag_grad(t, x);
        #pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) d[i] += dy[i];
    }
}

ag_tensor *ag_gate(ag_tape *t, ag_tensor *gate, int act) {
    double t0_ = ag_hook_start(t);
    AG_ASSERT(act == AG_GATE_TANH || act == AG_GATE_IDENTITY, "gate: unknown activation %d", act);
    ag_tensor *y = ag_new(t, gate->rows, gate->cols);
    float *yd = ag_f32(y), *g = ag_f32(gate);
    for (size_t i = 0; i < ag_numel(gate); i++) yd[i] = act == AG_GATE_TANH ? tanhf(g[i]) : g[i];
    if (ag_should_record(t, &gate, 1)) {
        ag_entry *e = ag_record(t, AG_OP_GATE, y);
        e->src[0] = gate;
        e->i[0] = act;
    }
    ag_hook_end(t, AG_OP_GATE, y, (ag_tensor *[AG_MAX_SRC]){gate}, t0_);
    return y;
}

void ag_gate_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *gate = e->src[0];
    float *dg = ag_grad(t, gate), *y = ag_f32(e->out);
    const float *dy = e->out->grad;
    for (size_t i = 0; i < ag_numel(gate); i++)
        dg[i] += e->i[0] == AG_GATE_TANH ? dy[i] * (1.0f - y[i] * y[i]) : dy[i];
}
