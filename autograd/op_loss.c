/* Cross-entropy op: logits [N, V], targets [N] (0 = ignored) -> mean over counted rows, [1, 1].
 *   loss = (1/n) sum_{i: target>0} (logsumexp(logits_i) - logits_i[target_i])
 *   dlogits_i = dloss/n * (softmax(logits_i) - onehot(target_i)) for counted rows, 0 otherwise.
 * With n = 0 the loss is 0 and every gradient 0 (never NaN).
 * Reference: F.cross_entropy(ignore_index=0), computed only at rows that carry a label (the model
 * gathers those rows before the vocabulary projection). */
#include "autograd/kernels/kernels.h"
#include "autograd/op_internal.h"
#include "autograd/ops.h"

ag_tensor *ag_cross_entropy(ag_tape *t, ag_tensor *logits, const int *targets, int *count) {
    double t0_ = ag_hook_start(t);
    int N = logits->rows, V = logits->cols;
    for (int i = 0; i < N; i++)
        AG_ASSERT(targets[i] >= 0 && targets[i] < V, "cross_entropy: target %d at row %d outside [0,%d)", targets[i], i, V);
    ag_tensor *loss = ag_new(t, 1, 1);
    float *lse = ag_arena_alloc(t->arena, (size_t)(N ? N : 1) * sizeof(float));
    int cnt = 0;
    ag_f32(loss)[0] = kn_cross_entropy_forward(lse, &cnt, ag_f32(logits), targets, N, V);
    if (count) *count = cnt;
    if (ag_should_record(t, &logits, 1)) {
        ag_entry *e = ag_record(t, AG_OP_CROSS_ENTROPY, loss);
        e->src[0] = logits;
        e->saved[0] = lse;
        e->saved[1] = (void *)targets;
        e->i[0] = cnt;
    }
    ag_hook_end(t, AG_OP_CROSS_ENTROPY, loss, (ag_tensor *[AG_MAX_SRC]){logits}, t0_);
    return loss;
}

void ag_cross_entropy_backward(ag_tape *t, ag_entry *e) {
    ag_tensor *logits = e->src[0];
    int cnt = (int)e->i[0];
    if (cnt == 0) return;
    kn_cross_entropy_backward(ag_grad(t, logits), e->out->grad[0] / cnt, ag_f32(logits), e->saved[0],
                              e->saved[1], logits->rows, logits->cols);
}
