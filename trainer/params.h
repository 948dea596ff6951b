/* Trainable parameters as one flat block (params, grads), so AdamW, zeroing and checkpointing
 * are single loops.
 *   adapter mode: [adapter_query (L*K*dim) | gates (L*H)], views `query` [L*K, dim] and
 *                 gate[j] [1, H] for adapted layer n_layers-L+j (DESIGN.md §1).
 *   full mode:    every weight of the model, copied into the block in file order; the model's
 *                 tensors are repointed into it (a tied classifier shares the embedding).
 * Ownership: *_init allocates; trainable_free releases. The model must outlive a full-mode
 * trainable and is modified by it (its tensors point into the block). */
#ifndef TRAINER_PARAMS_H
#define TRAINER_PARAMS_H
#include <stdint.h>

#include "autograd/tensor.h"
#include "checkpoints/adapter_file.h"
#include "checkpoints/model_file.h"

typedef struct trainable {
    size_t n;               /* floats in each block */
    float *p, *g;           /* parameters and their gradients */
    /* adapter mode only */
    int is_adapter;
    int K, L, n_layers, H, dim, gate_act;
    ag_tensor query;        /* [L*K, dim] */
    ag_tensor *gate;        /* [L] tensors of [1, H] */
} trainable;

/* Adapter with adapter_query ~ N(0, 1) from seed, gates 0. 0, or -1 with err when K/L do not fit. */
int trainable_adapter_init(trainable *tr, const llama_config *cfg, int K, int L, int gate_act,
                           uint64_t seed, char *err, size_t errlen);
/* Adapter from imported/exported data (copies). */
int trainable_adapter_from(trainable *tr, const llama_config *cfg, const adapter_data *a, char *err, size_t errlen);
/* A view of the adapter as adapter_data (pointers into tr->p; do not free). */
adapter_data trainable_adapter_view(const trainable *tr);
/* Every weight of w trainable (converts w to f32 first). 0 or -1 with err. */
int trainable_full_init(trainable *tr, model_weights *w, char *err, size_t errlen);
void trainable_free(trainable *tr);
void trainable_zero_grad(trainable *tr);
#endif
