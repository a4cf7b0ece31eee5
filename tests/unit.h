/* Shared declarations of the unit-test runner (tests/unit_main.c). */
#ifndef HEAPD_TESTS_UNIT_H
#define HEAPD_TESTS_UNIT_H
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* After registration: HEAPD_UNIT_SUITES=a,b leaves only the suites named
 * active. A suite named "timing" (bounds on CPU time, rates, latencies: they
 * depend on the machine, so no gating run may contain them) is active only
 * when named: make test-timing. Needs <CUnit/CUnit.h> before unit.h. */
#ifdef CUNIT_CUNIT_H_SEEN
static inline bool unit_suite_named(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
            return true;
    return false;
}

static inline void unit_select_suites(void)
{
    const char *only = getenv("HEAPD_UNIT_SUITES");
    CU_set_fail_on_inactive(CU_FALSE);
    for (CU_pSuite s = CU_get_registry()->pSuite; s; s = s->pNext) {
        bool on = only && *only ? unit_suite_named(only, s->pName) : strcmp(s->pName, "timing") != 0;
        CU_set_suite_active(s, on ? CU_TRUE : CU_FALSE);
    }
}
#endif

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

/* ---- waiting for something to happen ------------------------------------------
 * Tests never sleep to let something happen (a daemon notice a close, a flush
 * land, a thread run): they wait for the condition itself, with a deadline,
 * through these. A bare sleep is only for pacing a workload, and says so. */

/* Monotonic milliseconds. */
static inline uint64_t test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Sleep ms milliseconds (pacing, or between two looks at a condition). */
static inline void test_pause_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* Poll cond(arg) until it holds or timeout_ms pass (first every 1 ms, then up
 * to every 20 ms); returns its last value. */
static inline bool test_wait_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t t0 = test_now_ms();
    unsigned step = 1;
    for (;;) {
        if (cond(arg))
            return true;
        if (test_now_ms() - t0 >= timeout_ms)
            return cond(arg);
        test_pause_ms(step);
        step = step < 20 ? step * 2 : 20;
    }
}

/* The same for an expression: TEST_WAIT(expr, timeout_ms) is true once expr
 * holds, false if it still does not at the deadline. */
#define TEST_WAIT(expr, timeout_ms)                                                     \
    ({                                                                                  \
        uint64_t tw_t0_ = test_now_ms();                                                \
        unsigned tw_step_ = 1;                                                          \
        bool tw_ok_;                                                                    \
        while (!(tw_ok_ = (expr)) && test_now_ms() - tw_t0_ < (uint64_t)(timeout_ms)) { \
            test_pause_ms(tw_step_);                                                    \
            tw_step_ = tw_step_ < 20 ? tw_step_ * 2 : 20;                               \
        }                                                                               \
        tw_ok_ || (expr);                                                               \
    })
#endif
