/* Gradient checkpointing of a block: y = fn(x), with x and y of one shape [T, C].
 *   forward:  fn runs without a tape; only x (the caller's) and y are kept, everything fn
 *             allocated is given back to the arena at once.
 *   backward: fn runs again on a copy of x under a tape of its own (same arena, same scratch),
 *             that tape is replayed from dy, dx is handed to x, and the arena is rewound to where
 *             it was: the block's activations and their gradients exist for this moment only.
 * Same kernels on the same inputs in the same order as the plain (recorded) block, so every
 * gradient is bit-identical to recording fn directly; the price is one more forward of fn.
 * What it does not do: blocks with several inputs or outputs, or a non-deterministic fn. */
#include <string.h>

#include "autograd/op_internal.h"
#include "autograd/ops.h"

typedef struct ckpt_closure {
    ag_block_fn fn;
    void *ctx;
} ckpt_closure;

ag_tensor *ag_checkpoint(ag_tape *t, ag_block_fn fn, void *ctx, ag_tensor *x, int params_need_grad) {
    ag_tensor *y = ag_new(t, x->rows, x->cols);
    int rec = !t->no_grad && (x->requires_grad || params_need_grad);
    ag_arena_mark m = ag_arena_get_mark(t->arena);
    int saved_no_grad = t->no_grad;
    t->no_grad = 1;
    ag_tensor *r = fn(t, ctx, x);
    t->no_grad = saved_no_grad;
    AG_ASSERT(r->rows == x->rows && r->cols == x->cols, "checkpoint: block maps [%d,%d] to [%d,%d]", x->rows, x->cols,
              r->rows, r->cols);
    memcpy(y->data, r->data, ag_numel(x) * sizeof(float));
    ag_arena_rewind(t->arena, m);
    if (rec) {
        ckpt_closure *c = ag_arena_alloc(t->arena, sizeof *c);
        c->fn = fn;
        c->ctx = ctx;
        ag_entry *e = ag_record(t, AG_OP_CHECKPOINT, y);
        e->src[0] = x;
        e->saved[0] = c;
    }
    return y;
}

void ag_checkpoint_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *x = e->src[0], *y = e->out;
    const ckpt_closure *c = e->saved[0];
    /* dx outlives the rewind: take it before the mark. A gradient x already has is borrowed by
     * the copy, so the block's contributions add into it in the same order as without
     * checkpointing. */
    int had = x->grad != NULL;
    float *dx = !x->requires_grad ? NULL : had ? x->grad : ag_grad_overwrite(t, x);
    ag_arena_mark m = ag_arena_get_mark(t->arena);
    ag_tape sub;
    ag_tape_init(&sub, t->arena);
    sub.scratch = t->scratch; /* borrowed, handed back below (it may grow) */
    sub.scratch_cap = t->scratch_cap;
    sub.hook = t->hook;
    sub.bf16 = t->bf16;
    sub.hook_ctx = t->hook_ctx;
    ag_tensor *xc = ag_new(&sub, x->rows, x->cols);
    memcpy(xc->data, x->data, ag_numel(x) * sizeof(float));
    xc->requires_grad = x->requires_grad;
    if (had) xc->grad = dx; /* grad_pooled 0: the sub-tape never gives it to its pool */
    ag_tensor *yc = c->fn(&sub, c->ctx, xc);
    AG_ASSERT(yc->requires_grad, "checkpoint: the recomputed block recorded nothing");
    /* dy seeds the sub-tape as the block output's own gradient: borrowed, and since the block's
     * backward runs before anything else reads it, the sub-tape may reuse it once consumed */
    yc->grad = y->grad;
    yc->grad_pooled = 0;
    ag_tape_replay(&sub);
    if (dx && !had) memcpy(dx, xc->grad, ag_numel(x) * sizeof(float));
    t->stats.gemm_forward += sub.stats.gemm_forward;
    t->stats.gemm_dx += sub.stats.gemm_dx;
    t->stats.gemm_dw += sub.stats.gemm_dw;
    t->scratch = sub.scratch;
    t->scratch_cap = sub.scratch_cap;
    sub.scratch = NULL;
    ag_tape_free(&sub);
    ag_arena_rewind(t->arena, m);
}
