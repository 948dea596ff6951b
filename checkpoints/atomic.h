/* Atomic file replacement: write PATH.tmp, fsync, rename over PATH, fsync the directory.
 * A crash at any point leaves either the old PATH or the new one, never a torn file. */
#ifndef CKPT_ATOMIC_H
#define CKPT_ATOMIC_H
#include <stdio.h>

typedef struct atomic_file {
    FILE *f;            /* write here */
    char path[4096];    /* final name */
    char tmp[4096];     /* PATH.tmp */
} atomic_file;

/* Opens PATH.tmp for writing. 0 or -1 with err. */
int atomic_open(atomic_file *a, const char *path, char *err, size_t errlen);
/* Flushes, fsyncs and renames into place. 0 or -1 with err (the temporary is removed). */
int atomic_commit(atomic_file *a, char *err, size_t errlen);
/* Gives up: closes and removes the temporary; PATH is untouched. */
void atomic_abort(atomic_file *a);
/* For writers that produce the temporary by other means (HDF5): fsync `tmp` and rename it to
 * `path`, then fsync the directory. 0 or -1 with err. */
int atomic_rename(const char *tmp, const char *path, char *err, size_t errlen);
#endif
