/* The tape: recording, reverse replay and dump (see tape.h). */
#include "autograd/tape.h"

#include <omp.h>
#include <string.h>

#include "autograd/op_internal.h"

typedef struct {
    const char *name;
    void (*backward)(ag_tape *t, ag_entry *e);
} op_info;

static const op_info OPS[] = {
    [AG_OP_LINEAR] = {"linear", ag_linear_backward},
    [AG_OP_EMBEDDING] = {"embedding", ag_embedding_backward},
    [AG_OP_RMSNORM] = {"rmsnorm", ag_rmsnorm_backward},
    [AG_OP_ROPE] = {"rope", ag_rope_backward},
    [AG_OP_SWIGLU] = {"swiglu", ag_swiglu_backward},
    [AG_OP_ADD] = {"add", ag_add_backward},
    [AG_OP_GATHER] = {"gather", ag_gather_backward},
    [AG_OP_ATTENTION] = {"attention", ag_attention_backward},
    [AG_OP_GATE] = {"gate", ag_gate_backward},
    [AG_OP_CROSS_ENTROPY] = {"cross_entropy", ag_cross_entropy_backward},
    [AG_OP_CHECKPOINT] = {"checkpoint", ag_checkpoint_backward},
};
_Static_assert(sizeof OPS / sizeof OPS[0] == AG_OP_COUNT, "OPS table out of step with ag_op");

void ag_tape_init(ag_tape *t, ag_arena *arena) {
    memset(t, 0, sizeof *t);
    t->arena = arena;
}

void ag_tape_free(ag_tape *t) {
    free(t->pool);
    t->pool = NULL;
    t->n_pool = t->cap_pool = 0;
    free(t->scratch);
    t->scratch = NULL;
    t->scratch_cap = 0;
    free(t->entries);
    t->entries = NULL;
    t->n = t->cap = 0;
}

void ag_tape_reset(ag_tape *t) {
    t->n = 0;
    t->n_pool = 0; /* its buffers live in the arena, which is reset with the tape */
}

ag_tensor *ag_new(ag_tape *t, int rows, int cols) {
    ag_tensor *x = ag_arena_alloc(t->arena, sizeof *x);
    *x = ag_tensor_of(ag_arena_alloc(t->arena, (size_t)rows * cols * sizeof(float)), rows, cols, AG_F32);
    return x;
}

float *ag_scratch(ag_tape *t, size_t n) {
    if (n > t->scratch_cap) {
        free(t->scratch);
        t->scratch = NULL;
        if (posix_memalign((void **)&t->scratch, 64, (n ? n : 1) * sizeof(float)) != 0) t->scratch = NULL;
        AG_ASSERT(t->scratch, "out of memory: needed %zu bytes of scratch", n * sizeof(float));
        t->scratch_cap = n;
    }
    return t->scratch;
}

/* x->grad from the pool or the arena, uninitialised. */
static float *grad_take(ag_tape *t, ag_tensor *x) {
    size_t bytes = ag_numel(x) * sizeof(float);
    x->grad = NULL;
    for (int i = t->n_pool - 1; i >= 0 && !x->grad; i--)
        if (t->pool[i].bytes == bytes) {
            x->grad = t->pool[i].p;
            t->pool[i] = t->pool[--t->n_pool];
        }
    if (!x->grad) x->grad = ag_arena_alloc(t->arena, bytes);
    x->grad_pooled = 1;
    return x->grad;
}

float *ag_grad(ag_tape *t, ag_tensor *x) {
    if (x->grad) return x->grad;
    return memset(grad_take(t, x), 0, ag_numel(x) * sizeof(float));
}

float *ag_grad_overwrite(ag_tape *t, ag_tensor *x) {
    AG_ASSERT(!x->grad, "ag_grad_overwrite on a tensor that already has a gradient");
    return grad_take(t, x);
}

/* Gives an activation gradient back to the pool (its producer's backward has run). */
static void pool_release(ag_tape *t, ag_tensor *x) {
    if (!x->grad || !x->grad_pooled) return;
    if (t->n_pool == t->cap_pool) {
        int cap = t->cap_pool ? 2 * t->cap_pool : 64;
        void *p = realloc(t->pool, (size_t)cap * sizeof *t->pool);
        if (!p) return; /* not reusing is always safe */
        t->pool = p;
        t->cap_pool = cap;
    }
    t->pool[t->n_pool].bytes = ag_numel(x) * sizeof(float);
    t->pool[t->n_pool++].p = x->grad;
    x->grad = NULL;
    x->grad_pooled = 0;
}

int ag_should_record(const ag_tape *t, ag_tensor *const *src, int n) {
    if (!t || t->no_grad) return 0;
    for (int i = 0; i < n; i++)
        if (src[i] && src[i]->requires_grad) return 1;
    return 0;
}

ag_entry *ag_record(ag_tape *t, ag_op op, ag_tensor *out) {
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 256;
        ag_entry *e = realloc(t->entries, (size_t)cap * sizeof *e);
        AG_ASSERT(e, "out of memory growing the tape to %d entries", cap);
        t->entries = e;
        t->cap = cap;
    }
    ag_entry *e = &t->entries[t->n++];
    memset(e, 0, sizeof *e);
    e->op = op;
    e->out = out;
    out->requires_grad = 1;
    return e;
}

double ag_hook_start(const ag_tape *t) { return t->hook ? omp_get_wtime() : 0.0; }

void ag_hook_end(ag_tape *t, ag_op op, const ag_tensor *out, ag_tensor *const *src, double t0) {
    if (t->hook) t->hook(t->hook_ctx, t, op, 0, out, src, omp_get_wtime() - t0);
}

void ag_tape_replay(ag_tape *t) {
    for (int i = t->n - 1; i >= 0; i--) {
        ag_entry *e = &t->entries[i];
        if (!e->out->grad) continue; /* nothing flowed into this output */
        double t0 = ag_hook_start(t);
        OPS[e->op].backward(t, e);
        if (t->hook) t->hook(t->hook_ctx, t, e->op, 1, e->out, e->src, omp_get_wtime() - t0);
        pool_release(t, e->out);
    }
}

void ag_backward(ag_tape *t, ag_tensor *loss, float seed) {
    AG_ASSERT(loss->rows == 1 && loss->cols == 1,
              "backward needs a scalar loss, got [%d,%d]: reduce it first (e.g. ag_cross_entropy)",
              loss->rows, loss->cols);
    AG_ASSERT(loss->requires_grad,
              "the loss does not depend on any trainable tensor: set requires_grad on the "
              "parameters (and give them gradient buffers) before the forward pass");
    ag_grad(t, loss)[0] += seed;
    ag_tape_replay(t);
}

void ag_backward_from(ag_tape *t, ag_tensor *out, const float *dout) {
    AG_ASSERT(out->requires_grad, "backward from a tensor that no recorded op produced");
    float *g = ag_grad(t, out);
    for (size_t i = 0; i < ag_numel(out); i++) g[i] += dout[i];
    ag_tape_replay(t);
}

void ag_tape_dump(const ag_tape *t, FILE *f) {
    for (int i = 0; i < t->n; i++) {
        const ag_entry *e = &t->entries[i];
        fprintf(f, "%4d %-14s out [%d,%d]", i, OPS[e->op].name, e->out->rows, e->out->cols);
        for (int s = 0; s < AG_MAX_SRC; s++)
            if (e->src[s])
                fprintf(f, "  src%d [%d,%d]%s%s", s, e->src[s]->rows, e->src[s]->cols,
                        e->src[s]->requires_grad ? " grad" : "", e->src[s]->dtype != AG_F32 ? " 16bit" : "");
        fputc('\n', f);
    }
}
