/* rng.h: deterministic random numbers from a seed.
 *
 * Counter-based: rng_u64(seed, stream, i) is a pure function, so a tensor's element i
 * has the same value whichever thread or chunk computes it, and generated models can
 * be written in streaming, parallel chunks with identical bytes. rng_state is a
 * sequential generator (xoshiro256**) for shuffles and dropout masks; its state is
 * four words, saved in checkpoints so a resumed run draws the same numbers. */
#ifndef CORE_RNG_H
#define CORE_RNG_H

#include <stdint.h>

uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t i);
/* uniform in [0, 1) with 24 random bits */
float rng_uniform(uint64_t seed, uint64_t stream, uint64_t i);
/* standard normal (Box-Muller on two counter draws) */
float rng_normal(uint64_t seed, uint64_t stream, uint64_t i);
/* a stream id from a name (e.g. a tensor name): FNV-1a 64 */
uint64_t rng_stream_of(const char *name);

typedef struct rng_state {
    uint64_t s[4];
} rng_state;

void rng_seed(rng_state *r, uint64_t seed);
uint64_t rng_next(rng_state *r);
float rng_next_uniform(rng_state *r); /* [0, 1) */
uint64_t rng_next_below(rng_state *r, uint64_t n); /* [0, n), unbiased */

#endif
