/* Seeded random numbers: xoshiro256** state in a struct passed explicitly (never global).
 * Same seed, same sequence on every machine. */
#ifndef AG_RNG_H
#define AG_RNG_H
#include <math.h>
#include <stdint.h>

typedef struct ag_rng { uint64_t s[4]; } ag_rng;

static inline uint64_t ag_rng_splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline void ag_rng_seed(ag_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = ag_rng_splitmix(&seed);
}
static inline uint64_t ag_rng_u64(ag_rng *r) {
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5, res = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}
/* Uniform in [0, 1) with 53 random bits. */
static inline double ag_rng_uniform(ag_rng *r) { return (double)(ag_rng_u64(r) >> 11) * 0x1.0p-53; }
/* Uniform integer in [0, n). */
static inline uint64_t ag_rng_below(ag_rng *r, uint64_t n) { return (uint64_t)(ag_rng_uniform(r) * (double)n); }
/* Standard normal (Box-Muller, one value per call). */
static inline double ag_rng_normal(ag_rng *r) {
    double u1 = ag_rng_uniform(r), u2 = ag_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif
