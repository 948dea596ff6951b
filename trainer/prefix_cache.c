/* Frozen-prefix cache (see prefix_cache.h). */
#include "trainer/prefix_cache.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int prefix_cache_init(prefix_cache *pc, const dataset *d, int dim, int layers, const char *file_dir, char *err,
                      size_t errlen) {
    memset(pc, 0, sizeof *pc);
    pc->fd = -1;
    pc->layers = layers;
    pc->dim = dim;
    pc->n = d->n;
    pc->off = d->off;
    pc->bytes = (double)d->off[d->n] * dim * sizeof(float);
    pc->have = calloc((size_t)(d->n ? d->n : 1), 1);
    if (!pc->have) {
        snprintf(err, errlen, "prefix cache: out of memory");
        return -1;
    }
    if (!file_dir) {
        /* anonymous pages: only what is stored becomes resident */
        void *m = mmap(NULL, (size_t)pc->bytes + 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errlen, "prefix cache: cannot reserve %.0f bytes: %s", pc->bytes, strerror(errno));
            free(pc->have);
            pc->have = NULL;
            return -1;
        }
        pc->mem = m;
        return 0;
    }
    snprintf(pc->path, sizeof pc->path, "%s/prefix_cache.f32", file_dir);
    pc->fd = open(pc->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (pc->fd < 0) {
        snprintf(err, errlen, "%s: cannot create the prefix cache: %s", pc->path, strerror(errno));
        free(pc->have);
        pc->have = NULL;
        return -1;
    }
    return 0;
}

void prefix_cache_free(prefix_cache *pc) {
    if (!pc->have) return; /* never set up (a zeroed struct), or freed already */
    if (pc->mem) munmap(pc->mem, (size_t)pc->bytes + 1);
    if (pc->fd >= 0) {
        close(pc->fd);
        unlink(pc->path);
    }
    free(pc->have);
    memset(pc, 0, sizeof *pc);
    pc->fd = -1;
}

static int io_all(int fd, void *buf, size_t n, off_t at, int write) {
    char *p = buf;
    while (n) {
        ssize_t k = write ? pwrite(fd, p, n, at) : pread(fd, p, n, at);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
        at += k;
    }
    return 0;
}

int prefix_cache_has(prefix_cache *pc, const microbatch *mb) {
    if (!pc->have) return 0;
    for (int s = 0; s < mb->n_seq; s++)
        if (!pc->have[mb->example[s]]) {
            pc->misses++;
            return 0;
        }
    return 1;
}

int prefix_cache_load(prefix_cache *pc, const microbatch *mb, float *x) {
    for (int s = 0; s < mb->n_seq; s++) {
        int e = mb->example[s];
        size_t len = (size_t)(mb->seq_off[s + 1] - mb->seq_off[s]), n = len * (size_t)pc->dim * sizeof(float);
        float *dst = x + (size_t)mb->seq_off[s] * pc->dim;
        if (pc->mem) {
            memcpy(dst, pc->mem + (size_t)pc->off[e] * pc->dim, n);
        } else if (io_all(pc->fd, dst, n, (off_t)pc->off[e] * pc->dim * (off_t)sizeof(float), 0)) {
            pc->have[e] = 0; /* unreadable: compute it again */
            pc->misses++;
            return 0;
        }
    }
    pc->hits++;
    return 1;
}

void prefix_cache_store(prefix_cache *pc, const microbatch *mb, const float *x) {
    if (!pc->have) return;
    for (int s = 0; s < mb->n_seq; s++) {
        int e = mb->example[s];
        if (pc->have[e]) continue;
        size_t len = (size_t)(mb->seq_off[s + 1] - mb->seq_off[s]), n = len * (size_t)pc->dim * sizeof(float);
        /* a sequence's rows in the batch are exactly the example: the loader packs whole examples */
        if ((int64_t)len != pc->off[e + 1] - pc->off[e]) continue;
        const float *src = x + (size_t)mb->seq_off[s] * pc->dim;
        if (pc->mem) memcpy(pc->mem + (size_t)pc->off[e] * pc->dim, src, n);
        else if (io_all(pc->fd, (void *)src, n, (off_t)pc->off[e] * pc->dim * (off_t)sizeof(float), 1)) continue;
        pc->have[e] = 1;
    }
}
