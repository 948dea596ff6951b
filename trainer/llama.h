/* The LLaMA-Adapter model (DESIGN.md §1) built only from autograd ops.
 *
 * Forward over a packed micro-batch (sequences back to back, no padding). Layers below the
 * adapted ones (and every layer of a base-model or eval pass) run without a tape, and their
 * activations are released layer by layer; the adapted layers record. The adapter keys/values
 * ka = A_l Wk^T, va = A_l Wv^T are computed once per layer per micro-batch. The vocabulary
 * projection and softmax run only at positions that carry a label.
 * Ownership: tensors returned live in the tape's arena until it is reset. */
#ifndef TRAINER_LLAMA_H
#define TRAINER_LLAMA_H
#include "autograd/ops.h"
#include "checkpoints/model_file.h"
#include "data/loader.h"
#include "trainer/params.h"
#include "trainer/prefix_cache.h"

/* Final hidden states [T, dim] (before the final RMSNorm) of the micro-batch tokens.
 * ad: the adapter (NULL for the base model). Records on the tape only where something requires
 * a gradient (adapter parameters, or every weight in full mode). */
ag_tensor *llama_hidden(ag_tape *t, const model_weights *w, const trainable *ad, const int *ids,
                        const int *pos, const int *seq_off, int n_seq, int T);

/* Mean cross-entropy over the micro-batch's non-zero targets as a [1,1] tensor (0 when there
 * are none); *n_loss gets their count. */
ag_tensor *llama_loss(ag_tape *t, const model_weights *w, const trainable *ad, const microbatch *mb, int *n_loss);

/* llama_loss with the output of the frozen layers below the adapter taken from the prefix cache
 * when every example of mb is in it, and stored into it otherwise (pc may be NULL; it must cache
 * exactly the n_layers - ad->L frozen layers, else it is ignored). */
ag_tensor *llama_loss_cached(ag_tape *t, const model_weights *w, const trainable *ad, const microbatch *mb, int *n_loss,
                             prefix_cache *pc);

/* Logits [n, vocab] at the given rows of the hidden states h (final norm + classifier). */
ag_tensor *llama_logits(ag_tape *t, const model_weights *w, ag_tensor *h, const int *rows, int n);
#endif
