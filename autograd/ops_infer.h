/* Forward-only ops for inference (generation with a KV cache). They never record on the tape:
 * calling one with a tape that would record (an input requires a gradient and the tape is not
 * in no-grad mode) is a programmer error and aborts.
 * Ownership: outputs live in the tape's arena until it is reset or rewound; the cache tensors
 * passed in are borrowed. */
#ifndef AG_OPS_INFER_H
#define AG_OPS_INFER_H
#include "autograd/tape.h"

/* Causal GQA attention of n new queries against a key/value cache, plus the gated adapter prefix
 * (the same math as ag_attention, DESIGN.md §1):
 *   q [n, H*D] (rotated) are the LAST n positions of the P = kc->rows cached keys;
 *   kc, vc [P, G*D] (rotated keys and values of positions 0..P-1, the n new ones included);
 *   ka, va [K, G*D] and gval [1, H] (activated gate values), or all three NULL.
 * Returns o [n, H*D]. One sequence. */
ag_tensor *ag_attention_cached(ag_tape *t, ag_tensor *q, ag_tensor *kc, ag_tensor *vc, ag_tensor *ka,
                               ag_tensor *va, ag_tensor *gval, int n_heads, int n_kv_heads);
#endif
