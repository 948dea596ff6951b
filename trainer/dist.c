/* MPI data parallelism (see dist.h). Sums are MPI_Allreduce over MPI_COMM_WORLD; large float
 * buffers go in chunks so the count fits an int. */
#include "trainer/dist.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static int launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

void dist_init(dist *d, int *argc, char ***argv) {
    memset(d, 0, sizeof *d);
    d->world = d->local_world = 1;
    if (!launched_by_mpirun()) return;
    MPI_Init(argc, argv);
    d->active = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->world);
    const char *lw = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    d->local_world = lw && atoi(lw) > 0 ? atoi(lw) : d->world;
}

void dist_finalize(dist *d) {
    if (d->active) MPI_Finalize();
    d->active = 0;
}

void dist_sum_f32(const dist *d, float *x, size_t n) {
    if (d->world < 2) return;
    const size_t chunk = (size_t)1 << 28;
    for (size_t o = 0; o < n; o += chunk) {
        int k = (int)(n - o < chunk ? n - o : chunk);
        MPI_Allreduce(MPI_IN_PLACE, x + o, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
}

double dist_sum_f64(const dist *d, double x) {
    if (d->world > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return x;
}

int64_t dist_sum_i64(const dist *d, int64_t x) {
    if (d->world > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    return x;
}

int dist_max_int(const dist *d, int x) {
    if (d->world > 1) MPI_Allreduce(MPI_IN_PLACE, &x, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return x;
}

void dist_barrier(const dist *d) {
    if (d->world > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void dist_abort(const dist *d, int code) {
    if (d->world > 1) MPI_Abort(MPI_COMM_WORLD, code);
}
