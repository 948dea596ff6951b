/* Data parallelism across processes with MPI (Open MPI), as the reference's
 * DistributedDataParallel: every rank holds the same parameters, processes its own shard of each
 * micro-batch group, and the gradients are averaged (allreduce) before every optimizer step.
 * MPI is initialised only when the process was started by mpirun (OMPI_COMM_WORLD_SIZE, or
 * PMI/PMIx variables, in the environment); otherwise the world is one process and no MPI call is
 * made, so the plain binary never pays for MPI. */
#ifndef TRAINER_DIST_H
#define TRAINER_DIST_H
#include <stddef.h>
#include <stdint.h>

typedef struct dist {
    int rank, world;
    int active;       /* MPI_Init was called */
    int local_world;  /* ranks on this machine (for the default thread count) */
} dist;

void dist_init(dist *d, int *argc, char ***argv);
void dist_finalize(dist *d);
/* In-place sums over every rank (no-ops for a world of one). */
void dist_sum_f32(const dist *d, float *x, size_t n);
double dist_sum_f64(const dist *d, double x);
int64_t dist_sum_i64(const dist *d, int64_t x);
int dist_max_int(const dist *d, int x);
void dist_barrier(const dist *d);
/* Ends every rank with `code` (a failure on one rank must not leave the others waiting). */
void dist_abort(const dist *d, int code);
#endif
