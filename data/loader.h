/* Micro-batches without padding: B examples packed back to back with offsets.
 * Order: file order, or a seeded permutation per epoch (derived from (seed, epoch) alone, so
 * the cursor {epoch, index} plus the seed resumes exactly). drop_last: an incomplete last
 * micro-batch is never produced.
 * Ownership: loader_init() allocates; loader_free() frees; a microbatch is valid until the next
 * loader_get() on the same loader. */
#ifndef DATA_LOADER_H
#define DATA_LOADER_H
#include <stdint.h>
#include "data/alpaca.h"

typedef struct microbatch {
    int n_seq;       /* sequences (examples) in the micro-batch */
    int T;           /* total tokens = seq_off[n_seq] */
    int *ids;        /* [T] token ids */
    int *targets;    /* [T] label of the NEXT position within the same sequence (labels[t+1]),
                        0 at the last position of each sequence and wherever it is ignored */
    int *pos;        /* [T] position of each token within its sequence (0-based) */
    int *seq_off;    /* [n_seq+1] start of each sequence */
    int *example;    /* [n_seq] dataset index of each sequence */
    int n_loss;      /* number of non-zero targets */
} microbatch;

typedef struct loader {
    const dataset *d;
    int batch_size;
    int shuffle;
    uint64_t seed;
    int epoch;        /* cached permutation's epoch, -1 when none */
    int *perm;        /* [d->n] */
    microbatch mb;    /* buffers reused by loader_get */
    int cap_seq, cap_tok; /* allocated sizes of mb's per-sequence and per-token buffers */
    int rank, world;  /* data-parallel shard: this process takes every world-th example */
    int *pick;        /* [batch_size] examples of the current micro-batch */
} loader;

int loader_init(loader *l, const dataset *d, int batch_size, int shuffle, uint64_t seed);
void loader_free(loader *l);
/* Data parallelism: rank r of `world` takes, for its micro-batch i, the examples
 * order[(i*B + j)*world + r], j < B: rank r's shard is order[r::world] (as the reference's
 * DistributedSampler) cut into micro-batches of B. Default: rank 0 of 1. 0 or -1. */
int loader_set_shard(loader *l, int rank, int world);
/* Micro-batches per epoch (per rank): floor(n / (batch_size * world)). */
int loader_steps_per_epoch(const loader *l);
/* Micro-batch `index` (0-based) of `epoch`. Returns a pointer to l->mb; NULL when index is out
 * of [0, loader_steps_per_epoch) or epoch < 0. */
const microbatch *loader_get(loader *l, int epoch, int index);
/* Packs the given examples (in this order) into l->mb; used by loader_get and by eval. Buffers
 * grow as needed (loader_init sizes them for batch_size of the longest examples). NULL on an
 * index outside the dataset or out of memory. */
const microbatch *loader_pack(loader *l, const int *examples, int n);
#endif
