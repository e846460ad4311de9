/* rng.c: splitmix-style counter hashing and xoshiro256** (see rng.h). */
#include "rng.h"

#include <math.h>

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_u64(uint64_t seed, uint64_t stream, uint64_t i) {
    return mix64(mix64(seed * 0x9e3779b97f4a7c15ull + stream) + i * 0x9e3779b97f4a7c15ull);
}

float rng_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    return (float)(rng_u64(seed, stream, i) >> 40) * (1.0f / 16777216.0f);
}

float rng_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    uint64_t a = rng_u64(seed, stream, 2 * i), b = rng_u64(seed, stream, 2 * i + 1);
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740993.0); /* (0, 1] */
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t rng_stream_of(const char *name) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

void rng_seed(rng_state *r, uint64_t seed) {
    for (int k = 0; k < 4; k++) r->s[k] = mix64(seed + 0x9e3779b97f4a7c15ull * (uint64_t)(k + 1));
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t rng_next(rng_state *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

float rng_next_uniform(rng_state *r) { return (float)(rng_next(r) >> 40) * (1.0f / 16777216.0f); }

uint64_t rng_next_below(rng_state *r, uint64_t n) {
    uint64_t lim = -n % n; /* 2^64 mod n */
    for (;;) {
        uint64_t x = rng_next(r);
        if (x >= lim) return x % n;
    }
}
