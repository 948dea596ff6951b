/* Text generation: a KV-cache inference engine over the frozen model plus an optional adapter,
 * and the sampler (temperature, top-p nucleus) of the reference's generate().
 *
 * The engine keeps, per layer, the rotated keys and values of every position fed so far
 * ([max_len, Hkv*hd] f32 each) and, per adapted layer, the prefix keys/values
 * ka = A_l Wk^T, va = A_l Wv^T and the activated gate values, computed once when the engine is
 * created. A prompt goes through one batched forward; then one token per forward. Forwards run
 * with the tape in no-grad mode; the engine's arena is reset before each forward and every layer
 * gives its activations back when it is done, so memory does not grow with the tokens.
 * Ownership: gen_engine_new() returns an engine the caller frees with gen_engine_free(); the
 * model and the adapter are borrowed and must outlive it (the adapter is read only at creation).
 * gen_sampler_init() allocates buffers freed by gen_sampler_free(). */
#ifndef TRAINER_GENERATE_H
#define TRAINER_GENERATE_H
#include <stddef.h>
#include <stdint.h>

#include "autograd/rng.h"
#include "checkpoints/model_file.h"
#include "trainer/params.h"

typedef struct gen_engine gen_engine;

/* An engine whose cache holds max_len positions (1 <= max_len; above the model's max_seq_len
 * when that is known is refused). ad: the adapter, or NULL for the base model. NULL with err. */
gen_engine *gen_engine_new(const model_weights *w, const trainable *ad, int max_len, char *err, size_t errlen);
/* Multi-token forwards (prompts) in bf16 when on (see trainer/precision.h); decoding single
 * tokens is memory-bound and unchanged. */
void gen_engine_set_bf16(gen_engine *e, int on);
void gen_engine_free(gen_engine *e);
/* Forgets the cached positions (the adapter prefixes stay). */
void gen_engine_reset(gen_engine *e);
/* Positions in the cache / its capacity. */
int gen_engine_pos(const gen_engine *e);
int gen_engine_max_len(const gen_engine *e);
/* Feeds ids[0..n) (n >= 1) at positions pos .. pos+n-1 in one forward and returns the logits
 * [vocab] of the last one (engine memory, valid until the next feed). NULL with err when the
 * cache would overflow or an id is outside [0, vocab). */
const float *gen_engine_feed(gen_engine *e, const int *ids, int n, char *err, size_t errlen);
/* Bytes of the KV cache and prefixes, and of the per-forward workspace (arena block + scratch;
 * constant from one decode step to the next). Memory reports and tests. */
size_t gen_engine_bytes(const gen_engine *e);
size_t gen_engine_work_bytes(const gen_engine *e);

/* Sampler. temperature 0: greedy argmax (lowest id on ties). Otherwise
 * probs = softmax(logits / temperature), sorted descending; a token is dropped when the mass
 * before it exceeds top_p (the reference's sample_top_p: mask cumsum - p_sorted > top_p),
 * the rest renormalised and one drawn with the sampler's seeded RNG. */
typedef struct gen_cand { float p; int id; } gen_cand;
typedef struct gen_sampler {
    float temperature, top_p;
    ag_rng rng;
    int V;
    gen_cand *cand; /* [V] workspace */
} gen_sampler;

/* 0, or -1 when V < 1 or out of memory. */
int gen_sampler_init(gen_sampler *s, int V, float temperature, float top_p, uint64_t seed);
void gen_sampler_free(gen_sampler *s);
int gen_sample(gen_sampler *s, const float *logits);
int gen_argmax(const float *logits, int V);

/* Called after every generated token with all the ids generated so far; returning non-zero
 * stops the generation. */
typedef int (*gen_token_fn)(void *ctx, const int *ids, int n);

typedef struct gen_stats {
    int n_prompt, n_gen;     /* prompt tokens fed, tokens generated (eos included) */
    int n_decode;            /* single-token forwards */
    double prompt_s;         /* the batched prompt forward */
    double decode_s;         /* the single-token forwards and sampling */
    int hit_eos;             /* 1 when the last generated id is eos */
} gen_stats;

/* Resets the engine, feeds the prompt (n_prompt >= 1) and generates until eos (eos < 0: never),
 * max_new tokens, or until prompt + generated tokens fill the engine's max_len positions (the
 * reference's total_len; the last token is never fed, so it needs no cache row). out: room for max_new ids; the eos that
 * ends a generation is stored too. Returns the number generated, or -1 with err. */
int gen_generate(gen_engine *e, const int *prompt, int n_prompt, int max_new, int eos, gen_sampler *s,
                 int *out, gen_token_fn cb, void *ctx, gen_stats *st, char *err, size_t errlen);
#endif
