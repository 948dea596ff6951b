/* The value generator of bench/make_model.c, shared with tests/test_make_model.c so the test can
 * regenerate any element of any tensor independently of the file.
 *
 * Counter-based: element e of the tensor in slot s is a pure function of (seed, s, e), so any
 * chunk of any tensor can be produced in any order by any number of threads with the same
 * result. One 64-bit draw, splitmix64's finaliser of (key + (d + 1) * golden gamma), gives the
 * four elements 4d .. 4d+3, one 16-bit lane each; lane u in [0, 65535] becomes the odd integer
 * v = 2u - 65535 in [-65535, 65535] (mean 0, symmetric).
 *   matrices: v * scale, scale = std * sqrt(3) / 65536: uniform on about [-std*sqrt(3), std*sqrt(3)],
 *             standard deviation std. Not Gaussian (nothing here needs it to be).
 *   norms:    1 + v * 2^-21: 1 plus noise within +-1/32.
 * Both are exact or single-rounding float expressions (one multiply; the norm sum is exact), so
 * the value does not depend on compiler flags such as FMA contraction or the optimisation level.
 *
 * Slots are numbered as in checkpoints/model_hf.c: 0 embed_tokens; 1 + 9*l + k for layer l with
 * k = 0 input_layernorm, 1 q_proj, 2 k_proj, 3 v_proj, 4 o_proj, 5 post_attention_layernorm,
 * 6 gate_proj, 7 down_proj, 8 up_proj; 1 + 9*L model.norm; 2 + 9*L lm_head. Elements are
 * numbered row-major in the file's (HF) layout, so q_proj/k_proj rows are HF rows.
 * Changing anything here changes every generated model: bump MM_GENERATOR_VERSION, which
 * make_model records in each shard's metadata, so cached models are rewritten. */
#ifndef BENCH_MAKE_MODEL_RNG_H
#define BENCH_MAKE_MODEL_RNG_H
#include <math.h>
#include <stdint.h>

#define MM_GENERATOR_VERSION "1"
#define MM_NORM_STEP (1.0f / 2097152.0f) /* 2^-21 */

static inline uint64_t mm_mix64(uint64_t z) {
    z ^= z >> 30;
    z *= 0xbf58476d1ce4e5b9ull;
    z ^= z >> 27;
    z *= 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z;
}

/* The key of the tensor in slot `slot` of a model generated from `seed`. */
static inline uint64_t mm_tensor_key(uint64_t seed, int slot) {
    return mm_mix64(mm_mix64(seed ^ 0x6a09e667f3bcc908ull) + (uint64_t)(slot + 1) * 0xd1b54a32d192ed03ull);
}

/* Draw d of a tensor: elements 4d .. 4d+3. */
static inline uint64_t mm_draw(uint64_t key, uint64_t d) { return mm_mix64(key + (d + 1) * 0x9e3779b97f4a7c15ull); }

/* The odd integer of lane k (0..3) of a draw, in [-65535, 65535]. */
static inline int mm_lane(uint64_t x, int k) { return 2 * (int)((x >> (16 * k)) & 0xffffu) - 65535; }

typedef struct mm_gen {
    uint64_t key;
    int is_norm;
    float scale; /* matrices: mm_matrix_scale(std) */
} mm_gen;

static inline float mm_matrix_scale(double std) { return (float)(std * sqrt(3.0) / 65536.0); }

static inline mm_gen mm_gen_of(uint64_t seed, int slot, int is_norm, float scale) {
    mm_gen g = {mm_tensor_key(seed, slot), is_norm, scale};
    return g;
}

static inline float mm_value_of_lane(const mm_gen *g, int v) {
    return g->is_norm ? 1.0f + (float)v * MM_NORM_STEP : (float)v * g->scale;
}

/* Element e (row-major, HF layout) of the tensor. */
static inline float mm_value(const mm_gen *g, uint64_t e) {
    return mm_value_of_lane(g, mm_lane(mm_draw(g->key, e >> 2), (int)(e & 3)));
}
#endif
