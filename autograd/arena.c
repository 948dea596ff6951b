/* Bump arena with chained blocks (see arena.h). */
#include "autograd/arena.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ag_block {
    ag_block *prev;
    size_t cap, used;
    char *mem;
};

static ag_block *block_new(size_t cap, ag_block *prev) {
    ag_block *b = malloc(sizeof *b);
    void *mem = NULL;
    if (!b || posix_memalign(&mem, 64, cap ? cap : 64) != 0) {
        fprintf(stderr, "arena: out of memory: needed %zu bytes, available none\n", cap);
        abort();
    }
    b->prev = prev;
    b->cap = cap;
    b->used = 0;
    b->mem = mem;
    return b;
}

void ag_arena_init(ag_arena *a, size_t initial_bytes) {
    a->head = NULL;
    a->used = a->high = 0;
    a->block_bytes = initial_bytes < 4096 ? 4096 : initial_bytes;
}

static void free_chain(ag_block *b) {
    while (b) {
        ag_block *p = b->prev;
        free(b->mem);
        free(b);
        b = p;
    }
}

void ag_arena_free(ag_arena *a) {
    free_chain(a->head);
    a->head = NULL;
    a->used = 0;
}

void *ag_arena_alloc(ag_arena *a, size_t bytes) {
    size_t need = (bytes + 63) & ~(size_t)63;
    ag_block *b = a->head;
    if (!b || b->used + need > b->cap) {
        size_t cap = a->block_bytes;
        if (b && cap < 2 * b->cap) cap = 2 * b->cap;
        if (cap < need) cap = need;
        a->head = b = block_new(cap, b);
    }
    void *p = b->mem + b->used;
    b->used += need;
    a->used += need;
    if (a->used > a->high) a->high = a->used;
    return p;
}

void *ag_arena_zalloc(ag_arena *a, size_t bytes) {
    void *p = ag_arena_alloc(a, bytes);
    memset(p, 0, bytes);
    return p;
}

void ag_arena_reset(ag_arena *a) {
    if (a->head && a->head->prev) { /* several blocks: replace by one of the high-water size */
        free_chain(a->head);
        a->head = block_new(a->high, NULL);
    }
    if (a->head) a->head->used = 0;
    a->used = 0;
}

size_t ag_arena_capacity(const ag_arena *a) { return a->head ? a->head->cap : 0; }

ag_arena_mark ag_arena_get_mark(const ag_arena *a) {
    ag_arena_mark m = {a->head, a->head ? a->head->used : 0, a->used};
    return m;
}

void ag_arena_rewind(ag_arena *a, ag_arena_mark m) {
    while (a->head && a->head != m.block) { /* blocks chained after the mark */
        ag_block *p = a->head->prev;
        free(a->head->mem);
        free(a->head);
        a->head = p;
    }
    if (a->head) a->head->used = m.block_used;
    a->used = m.used;
}
