/* The tape: forward ops append fixed-size entries; ag_backward() replays them in reverse through
 * a table of {name, backward} kept in step with the op enum.
 *
 * Recording rule: an op records only when the tape is recording (not no-grad) and at least one
 * input requires a gradient; its output then requires a gradient too. So layers below the adapter
 * (whose inputs are all frozen) leave no entries and no saved activations.
 * Gradients only accumulate. Parameter gradients live in the caller's flat block (tensor.grad set
 * before the forward); activation gradients are taken zeroed from the arena on first use.
 * Ownership: the tape borrows the arena; tensors made by ops live in the arena until reset. */
#ifndef AG_TAPE_H
#define AG_TAPE_H
#include <stdint.h>
#include <stdio.h>

#include "autograd/arena.h"
#include "autograd/tensor.h"

typedef enum {
    AG_OP_LINEAR,
    AG_OP_EMBEDDING,
    AG_OP_RMSNORM,
    AG_OP_ROPE,
    AG_OP_SWIGLU,
    AG_OP_ADD,
    AG_OP_GATHER,
    AG_OP_ATTENTION,
    AG_OP_GATE,
    AG_OP_CROSS_ENTROPY,
    AG_OP_CHECKPOINT,
    AG_OP_COUNT
} ag_op;

#define AG_MAX_SRC 6
#define AG_MAX_SAVED 4

typedef struct ag_entry {
    ag_op op;
    ag_tensor *out;
    ag_tensor *src[AG_MAX_SRC]; /* inputs (NULL where unused) */
    void *saved[AG_MAX_SAVED];  /* caches from the forward (arena memory) */
    int64_t i[6];               /* inline integer arguments */
    float f[2];                 /* inline float arguments */
} ag_entry;

/* Work counters, for tests and benchmarks. */
typedef struct ag_stats {
    int64_t gemm_forward;   /* linear forward GEMMs */
    int64_t gemm_dx;        /* linear input-gradient GEMMs */
    int64_t gemm_dw;        /* linear weight-gradient GEMMs (must stay 0 for frozen weights) */
} ag_stats;

struct ag_tape;
/* An optional observer of every op (profilers): called after each forward (recorded or not,
 * backward = 0; the tape's no_grad tells frozen from recorded work) and after each backward
 * entry (backward = 1), with the op's output, inputs and the seconds it took. */
typedef void (*ag_op_hook)(void *ctx, const struct ag_tape *t, ag_op op, int backward, const ag_tensor *out,
                           ag_tensor *const *src, double seconds);

typedef struct ag_tape {
    ag_arena *arena;
    ag_entry *entries;
    int n, cap;
    int no_grad;      /* 1: record nothing, outputs never require gradients */
    int bf16;         /* 1: linear layers multiply in bf16 (kn_gemm_bf16: operands rounded to bf16,
                       * products summed in f32); 0: f32 (OpenBLAS sgemm), the exact path */
    int checkpoint;   /* 1: model code wraps its recorded blocks in ag_checkpoint (recompute them in
                       * backward instead of keeping their activations); the tape itself ignores it */
    ag_stats stats;
    float *scratch;   /* workspace whose life ends inside one kernel call (owned, grows) */
    size_t scratch_cap;
    ag_op_hook hook;  /* NULL: no observer (the default; costs one branch per op) */
    void *hook_ctx;
    /* activation gradients no longer needed (their producer's backward has run), by size, for
     * reuse: a backward pass then holds about one layer of activation gradients at a time
     * instead of all of them. Arena memory: forgotten at reset. */
    struct { size_t bytes; float *p; } *pool;
    int n_pool, cap_pool;
} ag_tape;

void ag_tape_init(ag_tape *t, ag_arena *arena);
void ag_tape_free(ag_tape *t);
/* Forgets the entries (call with the arena reset, once per micro-batch). Stats are kept. */
void ag_tape_reset(ag_tape *t);

/* A new [rows, cols] f32 tensor from the arena (data uninitialised). */
ag_tensor *ag_new(ag_tape *t, int rows, int cols);
/* At least n floats of scratch, valid until the next ag_scratch() call. */
float *ag_scratch(ag_tape *t, size_t n);
/* x->grad, zeroed, from the gradient pool or the arena when still NULL. */
float *ag_grad(ag_tape *t, ag_tensor *x);
/* A new, uninitialised x->grad for a backward that writes every element (x->grad must be NULL). */
float *ag_grad_overwrite(ag_tape *t, ag_tensor *x);

/* Runs the tape backwards from a scalar loss [1,1], seeding dloss = seed (1 for a plain
 * gradient, 1/accum_iter for gradient accumulation). Aborts with a fix-it message on a
 * non-scalar loss or a loss that does not require a gradient. */
void ag_backward(ag_tape *t, ag_tensor *loss, float seed);

/* Runs the tape backwards from any recorded output, seeding its gradient with dout
 * [rows*cols] (gradient checks: loss = sum(out * dout)). */
void ag_backward_from(ag_tape *t, ag_tensor *out, const float *dout);

/* One line per entry: op, output shape, input shapes and their requires_grad flags. */
void ag_tape_dump(const ag_tape *t, FILE *f);

/* --- used by the op files ------------------------------------------------------------------ */
/* 1 when the tape records an op with these inputs (any requires_grad, tape recording). */
int ag_should_record(const ag_tape *t, ag_tensor *const *src, int n);
ag_entry *ag_record(ag_tape *t, ag_op op, ag_tensor *out);
/* Op timing for the hook: start returns a clock reading (0 without a hook); end reports. */
double ag_hook_start(const ag_tape *t);
void ag_hook_end(ag_tape *t, ag_op op, const ag_tensor *out, ag_tensor *const *src, double t0);
#endif
