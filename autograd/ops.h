/* Differentiable ops. Each checks shapes, takes its output from the step arena, runs a forward
 * kernel and records one tape entry when an input requires a gradient (see tape.h).
 * Shapes: rows are tokens; every tensor is 2-D row-major f32 except frozen weights (any dtype).
 * `tape` may run in no-grad mode (tape->no_grad = 1): then nothing is recorded. */
#ifndef AG_OPS_H
#define AG_OPS_H
#include "autograd/tape.h"

/* y[T,O] = x[T,I] W[O,I]^T. dx when x requires a gradient; dW only when W does (never for a
 * frozen weight). W may be f16/bf16 when frozen. */
ag_tensor *ag_linear(ag_tape *t, ag_tensor *x, ag_tensor *W);
/* out[T,C] = table[ids[t]]; ids borrowed until backward. */
ag_tensor *ag_embedding(ag_tape *t, ag_tensor *table, const int *ids, int T);
/* RMSNorm over the columns: y = x / sqrt(mean(x^2) + eps) * w, w [1, C]. */
ag_tensor *ag_rmsnorm(ag_tape *t, ag_tensor *x, ag_tensor *w, float eps);
/* RoPE (Meta pair layout) on x [T, n_heads*head_dim] at positions pos[T]. */
ag_tensor *ag_rope(ag_tape *t, ag_tensor *x, int n_heads, const int *pos, float theta);
/* silu(a) * b, a and b of the same shape. */
ag_tensor *ag_swiglu(ag_tape *t, ag_tensor *a, ag_tensor *b);
/* a + b, same shape. */
ag_tensor *ag_add(ag_tape *t, ag_tensor *a, ag_tensor *b);
/* out[n, C] = x[idx[i]] (rows); idx borrowed until backward. */
ag_tensor *ag_gather(ag_tape *t, ag_tensor *x, const int *idx, int n);
/* Activated gate values g(gate) [1, H]: tanh (GATE_ACT_TANH) or identity (GATE_ACT_IDENTITY). */
enum { AG_GATE_TANH = 0, AG_GATE_IDENTITY = 1 };
ag_tensor *ag_gate(ag_tape *t, ag_tensor *gate, int act);

/* Packed causal GQA attention plus the gated adapter prefix (DESIGN.md §1, kernels.h):
 * q [T, H*D] (rotated), k, v [T, G*D]; ka, va [K, G*D] or NULL; gval [1, H] activated gate values
 * (from ag_gate) or NULL; seq_off [n_seq+1] borrowed until backward. */
ag_tensor *ag_attention(ag_tape *t, ag_tensor *q, ag_tensor *k, ag_tensor *v, ag_tensor *ka,
                        ag_tensor *va, ag_tensor *gval, int n_heads, int n_kv_heads,
                        const int *seq_off, int n_seq);

/* Mean cross-entropy of logits [N, V] against targets[N] (0 = ignored) as a [1,1] tensor;
 * 0 with zero gradient when no row counts. *count (may be NULL) gets the counted rows. */
ag_tensor *ag_cross_entropy(ag_tape *t, ag_tensor *logits, const int *targets, int *count);

/* Gradient checkpointing: y = fn(t, ctx, x) [same shape as x] computed without keeping what fn
 * allocates; the backward re-runs fn on x under a tape of its own and backpropagates through it
 * (bit-identical gradients, one more forward of fn). Records when x requires a gradient or
 * params_need_grad (fn reads trainable tensors). ctx must live until backward (e.g. arena). */
typedef ag_tensor *(*ag_block_fn)(ag_tape *t, void *ctx, ag_tensor *x);
ag_tensor *ag_checkpoint(ag_tape *t, ag_block_fn fn, void *ctx, ag_tensor *x, int params_need_grad);
#endif
