/* Micro-batches without padding (DESIGN.md §2 "Order"): examples packed back to back with
 * per-sequence offsets, next-token targets and positions.
 *   no shuffle: micro-batch i of every epoch = examples [i*B, (i+1)*B)
 *   shuffle:    the same over perm_e, a Fisher-Yates permutation drawn from an ag_rng seeded with
 *               seed ^ (0x9e3779b97f4a7c15 * (epoch + 1)); it depends on (seed, epoch) alone,
 *               so {epoch, index} plus the seed resumes exactly.
 * floor(n / B) micro-batches per epoch (drop_last).
 * Data-parallel ranks take interleaved shards (loader_set_shard).
 * Deliberately not here: length bucketing, prefetching. */
#include <stdlib.h>
#include <string.h>

#include "autograd/rng.h"
#include "data/loader.h"

/* Makes room for n sequences and T tokens in l->mb; 0 or -1. */
static int mb_reserve(loader *l, int n, int T) {
    microbatch *m = &l->mb;
    if (n < 1) n = 1; /* seq_off always has n + 1 entries */
    if (T < 1) T = 1;
    if (n > l->cap_seq) {
        int *e = realloc(m->example, (size_t)n * sizeof *e);
        if (e) m->example = e;
        int *o = realloc(m->seq_off, ((size_t)n + 1) * sizeof *o);
        if (o) m->seq_off = o;
        if (!e || !o) return -1;
        l->cap_seq = n;
    }
    if (T > l->cap_tok) {
        int *a = realloc(m->ids, (size_t)T * sizeof *a);
        if (a) m->ids = a;
        int *b = realloc(m->targets, (size_t)T * sizeof *b);
        if (b) m->targets = b;
        int *c = realloc(m->pos, (size_t)T * sizeof *c);
        if (c) m->pos = c;
        if (!a || !b || !c) return -1;
        l->cap_tok = T;
    }
    return 0;
}

int loader_init(loader *l, const dataset *d, int batch_size, int shuffle, uint64_t seed) {
    memset(l, 0, sizeof *l);
    if (!d || batch_size < 1 || d->n < 0) return -1;
    l->d = d;
    l->batch_size = batch_size;
    l->shuffle = shuffle;
    l->seed = seed;
    l->epoch = -1;
    l->world = 1;
    l->perm = malloc((size_t)(d->n ? d->n : 1) * sizeof *l->perm);
    l->pick = malloc((size_t)batch_size * sizeof *l->pick);
    if (!l->perm || !l->pick) {
        loader_free(l);
        return -1;
    }
    for (int i = 0; i < d->n; i++) l->perm[i] = i;
    /* size the buffers once for the longest possible training micro-batch */
    int maxlen = 0;
    for (int i = 0; i < d->n; i++) {
        int L = (int)(d->off[i + 1] - d->off[i]);
        if (L > maxlen) maxlen = L;
    }
    int B = batch_size < d->n ? batch_size : d->n;
    if (B > 0 && mb_reserve(l, B, B * maxlen)) {
        loader_free(l);
        return -1;
    }
    return 0;
}

void loader_free(loader *l) {
    if (!l) return;
    free(l->perm);
    free(l->pick);
    free(l->mb.ids);
    free(l->mb.targets);
    free(l->mb.pos);
    free(l->mb.seq_off);
    free(l->mb.example);
    memset(l, 0, sizeof *l);
}

int loader_set_shard(loader *l, int rank, int world) {
    if (world < 1 || rank < 0 || rank >= world) return -1;
    l->rank = rank;
    l->world = world;
    return 0;
}

int loader_steps_per_epoch(const loader *l) { return l->d->n / (l->batch_size * l->world); }

static void loader_permute(loader *l, int epoch) {
    int n = l->d->n;
    for (int i = 0; i < n; i++) l->perm[i] = i;
    if (l->shuffle) {
        ag_rng r;
        ag_rng_seed(&r, l->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(epoch + 1)));
        for (int i = n - 1; i > 0; i--) {
            int j = (int)ag_rng_below(&r, (uint64_t)i + 1);
            int t = l->perm[i];
            l->perm[i] = l->perm[j];
            l->perm[j] = t;
        }
    }
    l->epoch = epoch;
}

const microbatch *loader_get(loader *l, int epoch, int index) {
    if (epoch < 0 || index < 0 || index >= loader_steps_per_epoch(l)) return NULL;
    if (l->epoch != epoch) loader_permute(l, epoch);
    for (int j = 0; j < l->batch_size; j++)
        l->pick[j] = l->perm[((size_t)index * l->batch_size + (size_t)j) * (size_t)l->world + (size_t)l->rank];
    return loader_pack(l, l->pick, l->batch_size);
}

const microbatch *loader_pack(loader *l, const int *examples, int n) {
    const dataset *d = l->d;
    int64_t T = 0;
    for (int s = 0; s < n; s++) {
        int e = examples[s];
        if (e < 0 || e >= d->n) return NULL;
        T += d->off[e + 1] - d->off[e];
    }
    if (T > 0x7fffffff) return NULL;
    if (mb_reserve(l, n, (int)T)) return NULL;
    microbatch *m = &l->mb;
    int t = 0, n_loss = 0;
    m->seq_off[0] = 0;
    for (int s = 0; s < n; s++) {
        int e = examples[s];
        const int *ids = d->ids + d->off[e], *lab = d->labels + d->off[e];
        int L = (int)(d->off[e + 1] - d->off[e]);
        memcpy(m->ids + t, ids, (size_t)L * sizeof *ids);
        for (int k = 0; k < L; k++) {
            int y = k + 1 < L ? lab[k + 1] : 0;
            m->targets[t + k] = y;
            m->pos[t + k] = k;
            n_loss += y != 0;
        }
        t += L;
        m->example[s] = e;
        m->seq_off[s + 1] = t;
    }
    m->n_seq = n;
    m->T = t;
    m->n_loss = n_loss;
    return m;
}
