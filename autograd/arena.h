/* Per-step bump arena: activations, saved caches, tape-created tensors and activation
 * gradients of one micro-batch. Allocation is a pointer bump (64-byte aligned); ag_arena_reset()
 * releases everything at once. When a block is full a new one is chained (never moved, so
 * pointers stay valid); at reset, a chain is replaced by one block of the high-water size, so a
 * steady training loop runs on a single block after its first step.
 * Ownership: the arena owns its blocks; ag_arena_free() releases them. */
#ifndef AG_ARENA_H
#define AG_ARENA_H
#include <stddef.h>

typedef struct ag_block ag_block;

typedef struct ag_arena {
    ag_block *head;      /* current block (chain through ->prev) */
    size_t used;         /* bytes handed out since the last reset */
    size_t high;         /* high-water mark of `used` over the arena's life */
    size_t block_bytes;  /* size of the next block to allocate */
} ag_arena;

void ag_arena_init(ag_arena *a, size_t initial_bytes);
void ag_arena_free(ag_arena *a);
/* Uninitialised, 64-byte aligned. Aborts with "needed X, available Y" only when the system is
 * out of memory. */
void *ag_arena_alloc(ag_arena *a, size_t bytes);
void *ag_arena_zalloc(ag_arena *a, size_t bytes);
void ag_arena_reset(ag_arena *a);
/* A position to rewind to: everything allocated after the mark is released by the rewind
 * (frozen layers that run without a tape give their activations back this way). */
typedef struct ag_arena_mark { ag_block *block; size_t block_used, used; } ag_arena_mark;
ag_arena_mark ag_arena_get_mark(const ag_arena *a);
void ag_arena_rewind(ag_arena *a, ag_arena_mark m);
/* Bytes in the current block (tests, memory reports). */
size_t ag_arena_capacity(const ag_arena *a);
#endif
