/* Shared declarations of the unit-test runner (tests/unit_main.c). */
#ifndef HEAPD_TESTS_UNIT_H
#define HEAPD_TESTS_UNIT_H
#include <stdint.h>
#include <stdlib.h>

/* Suite registration: in a test file, UNIT_SUITE(register_fn) where
 * register_fn adds a CUnit suite and its tests. */
#define UNIT_MAX_SUITES 64
extern void (*unit_suites[UNIT_MAX_SUITES])(void);
extern unsigned unit_nsuites;
#define UNIT_SUITE(fn)                                                  \
    static void __attribute__((constructor)) fn##_ctor(void)           \
    {                                                                   \
        if (unit_nsuites < UNIT_MAX_SUITES)                             \
            unit_suites[unit_nsuites++] = fn;                           \
    }

/* The seed for randomized tests: HEAPD_TEST_SEED or a fixed default. */
static inline uint64_t test_seed(uint64_t dflt)
{
    const char *s = getenv("HEAPD_TEST_SEED");
    return s ? strtoull(s, NULL, 0) : dflt;
}

/* splitmix64: a small, well-mixed deterministic PRNG for tests and benchmarks. */
static inline uint64_t test_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
#endif
