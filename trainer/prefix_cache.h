/* The frozen-prefix cache: the layers below the lowest adapted one compute the same hidden
 * states for an example in every epoch, so their output (the input of the first adapted layer,
 * [len, dim] f32 per example) is kept after the first time and reused instead of recomputed.
 *
 * Storage: f32 (16-bit would change the losses), in memory, or in a sparse file in the run
 * directory when it does not fit the memory budget (removed when the run ends). Keyed by dataset
 * example; valid for one process (a resumed run fills it again).
 * Exactness: a cached example gives the bits the frozen layers would give only when those
 * layers' arithmetic for a row does not depend on the rest of the micro-batch. The bf16 GEMM
 * (kn_gemm_bf16) is row-independent; OpenBLAS sgemm is not (a row's rounding depends on its place
 * in the block), so with --precision f32 the cache is exact only for unshuffled data.
 * Ownership: prefix_cache_init allocates (or creates the file); prefix_cache_free releases it. */
#ifndef TRAINER_PREFIX_CACHE_H
#define TRAINER_PREFIX_CACHE_H
#include <stddef.h>
#include <stdint.h>

#include "data/alpaca.h"
#include "data/loader.h"

typedef struct prefix_cache {
    int layers;           /* frozen layers whose output is cached (the first `layers` of the model) */
    int dim;
    int n;                /* dataset examples */
    const int64_t *off;   /* [n+1] token offsets of the dataset (borrowed) */
    unsigned char *have;  /* [n] 1 once example i is cached */
    float *mem;           /* [off[n], dim] in memory, or NULL with a file */
    int fd;               /* the file, or -1 */
    char path[4200];
    double bytes;         /* full size of the cache */
    int64_t hits, misses; /* micro-batches served / computed */
} prefix_cache;

/* A cache of the first `layers` layers' output for dataset d; in memory, or in DIR/prefix_cache.f32
 * when file_dir is not NULL. 0, or -1 with err. */
int prefix_cache_init(prefix_cache *pc, const dataset *d, int dim, int layers, const char *file_dir, char *err,
                      size_t errlen);
/* Releases it (removes the file); a zeroed, never initialised struct is left alone. */
void prefix_cache_free(prefix_cache *pc);
/* 1 when every sequence of mb is cached (counts a miss otherwise). */
int prefix_cache_has(prefix_cache *pc, const microbatch *mb);
/* Fills x [mb->T, dim] from the cache: 1, or 0 when an example could not be read back (it is
 * then computed again). */
int prefix_cache_load(prefix_cache *pc, const microbatch *mb, float *x);
/* Stores each sequence of mb from x [mb->T, dim] (the output of the cached layers). */
void prefix_cache_store(prefix_cache *pc, const microbatch *mb, const float *x);
#endif
