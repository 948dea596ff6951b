/* Backward functions of the ops, one per ag_op, for the dispatch table in tape.c. Each reads
 * e->out->grad and accumulates into the gradients of the inputs that require one. */
#ifndef AG_OP_INTERNAL_H
#define AG_OP_INTERNAL_H
#include "autograd/tape.h"

void ag_linear_backward(ag_tape *t, ag_entry *e);
void ag_embedding_backward(ag_tape *t, ag_entry *e);
void ag_rmsnorm_backward(ag_tape *t, ag_entry *e);
void ag_rope_backward(ag_tape *t, ag_entry *e);
void ag_swiglu_backward(ag_tape *t, ag_entry *e);
void ag_add_backward(ag_tape *t, ag_entry *e);
void ag_gather_backward(ag_tape *t, ag_entry *e);
void ag_attention_backward(ag_tape *t, ag_entry *e);
void ag_gate_backward(ag_tape *t, ag_entry *e);
void ag_cross_entropy_backward(ag_tape *t, ag_entry *e);
void ag_checkpoint_backward(ag_tape *t, ag_entry *e);

/* Runs the backward of every entry whose output has a gradient, newest first (ag_backward and
 * the checkpoint op's sub-tape). */
void ag_tape_replay(ag_tape *t);

/* An input's gradient buffer if it requires one, else NULL. */
static inline float *ag_grad_if(ag_tape *t, ag_tensor *x) {
    return x && x->requires_grad ? ag_grad(t, x) : NULL;
}
#endif
