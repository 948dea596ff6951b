/* Loss of a model (with or without an adapter) over a whole dataset: the sum of per-token
 * cross-entropies divided by the number of loss tokens (not a mean of batch means), in no-grad
 * mode, batch_size examples at a time in file order (the last partial batch included). */
#ifndef TRAINER_EVAL_H
#define TRAINER_EVAL_H
#include <stdint.h>

#include "autograd/tape.h"
#include "checkpoints/model_file.h"
#include "data/loader.h"
#include "trainer/params.h"

typedef struct eval_result {
    double loss;      /* mean over loss tokens (0 when none) */
    int64_t tokens;   /* loss tokens */
    int64_t total;    /* all tokens */
    double seconds;
} eval_result;

/* ad may be NULL. The tape is used in no-grad mode and reset; its arena is reset per batch. */
eval_result eval_dataset(ag_tape *t, const model_weights *w, const trainable *ad, const dataset *d, int batch_size);
/* An adapter for w from an export, a training checkpoint or a run directory (its newest
 * checkpoint). default_len: K for files without metadata. 0 or -1 with err. */
int load_adapter_for(const char *path, const model_weights *w, int default_len, trainable *tr, char *err, size_t errlen);
#endif
