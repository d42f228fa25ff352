/* fuzz_common.h - small helpers shared by the fuzz targets in fuzz/:
 * the fixed secret and clock they use, a deterministic PRNG and a
 * crash-on-violation check that works with and without libFuzzer. */
#ifndef PPC_FUZZ_COMMON_H
#define PPC_FUZZ_COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* The secret and the clock the targets verify against. fuzz/make_corpus.py
 * uses the same values to build a valid announcement seed. */
#define FUZZ_SECRET "fuzz-secret"
#define FUZZ_SECRET_LEN (sizeof(FUZZ_SECRET) - 1)
#define FUZZ_NOW 1700000000u
#define FUZZ_MAX_AGE 60u
#define FUZZ_FRAME_LIMIT ((uint64_t)1 << 20)

/* An invariant that does not hold is a bug: abort so that libFuzzer (or the
 * standalone driver under ASan) records the input. */
#define FUZZ_ASSERT(c)                                                                      \
    do {                                                                                    \
        if (!(c)) {                                                                         \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                                        \
        }                                                                                   \
    } while (0)

/* xorshift64*: deterministic, never 0 once seeded with non-zero. */
static inline uint64_t fuzz_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* FNV-1a 64 of a byte string, used to derive per-input seeds. */
static inline uint64_t fuzz_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#endif
