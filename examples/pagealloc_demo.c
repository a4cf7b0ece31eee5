/* pagealloc-demo: the page allocator on its own, on a 64 GiB segment.
 *
 * Allocates and frees random runs of pages the way a heap would (grow on
 * failure, free at random), runs the scavenger's candidate search now and then,
 * and prints what the allocator holds after each round. No memory is mapped:
 * the allocator works on page indices. Usage: pagealloc-demo [rounds] [seed] */
#include <stdio.h>
#include <stdlib.h>

#include "pagealloc.h"

static uint64_t rng(uint64_t *s)   /* xorshift64* */
{
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void show(const pagealloc_t *pa, int round, uint64_t live_runs)
{
    const double mib = (double)(1u << 20) / 8192;          /* pages per MiB */
    uint64_t inuse = pa->grown - pa->free_pages;
    printf("%5d  %9.1f  %9.1f  %9.1f  %9.1f  %9.1f  %8llu\n", round, pa->grown / mib, inuse / mib,
           (pa->free_pages - pa->scav_pages) / mib, pa->scav_pages / mib, pa_longest_free(pa) / mib,
           (unsigned long long)live_runs);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 42;
    const uint64_t npages = (64ull << 30) / 8192;          /* 64 GiB */
    pagealloc_t pa;
    if (pa_init(&pa, npages) != 0) {
        fprintf(stderr, "pagealloc-demo: cannot reserve metadata\n");
        return 1;
    }
    enum { MAXLIVE = 1 << 16 };
    static struct { uint64_t base, n; } live[MAXLIVE];
    uint64_t nlive = 0, s = seed;

    printf("page allocator demo: 64 GiB segment (%llu pages of 8 KiB), %u summary levels, seed %llu\n",
           (unsigned long long)npages, pa.nlevels, (unsigned long long)seed);
    printf("each round: 20000 random allocs (1..2048 pages) and frees, then scavenge up to 256 MiB\n\n");
    printf("round  grown MiB  inuse MiB   free MiB   scav MiB  longest MiB  live runs\n");
    for (int r = 1; r <= rounds; r++) {
        for (int i = 0; i < 20000; i++) {
            bool grow_phase = r <= rounds / 2;
            if (nlive && (nlive == MAXLIVE || rng(&s) % 100 < (grow_phase ? 40u : 60u))) {
                uint64_t k = rng(&s) % nlive;
                pa_free(&pa, live[k].base, live[k].n);
                live[k] = live[--nlive];
                continue;
            }
            uint64_t n = rng(&s) % 2 ? 1 + rng(&s) % 8 : 1 + rng(&s) % 2048, scav;
            uint64_t p = pa_alloc(&pa, n, &scav);
            if (p == PA_FAIL && pa_grow(&pa, n))
                p = pa_alloc(&pa, n, &scav);
            if (p == PA_FAIL)
                continue;                                 /* segment full: skip */
            live[nlive].base = p;
            live[nlive++].n = n;
        }
        /* the scavenger: release free pages from the top, 256 MiB per round */
        uint64_t budget = (256u << 20) / 8192, base, n;
        while (budget && pa_scav_find(&pa, budget, &base, &n))
            budget -= pa_mark_scavenged(&pa, base, n) <= budget ? n : budget;
        show(&pa, r, nlive);
    }
    char err[256];
    bool ok = pa_check(&pa, err, sizeof(err));
    printf("\ninvariants: %s%s\nmetadata resident: %zu KiB of %zu KiB reserved\n", ok ? "ok" : "BROKEN: ",
           ok ? "" : err, pa_meta_resident(&pa) >> 10, pa.meta_len >> 10);
    pa_destroy(&pa);
    return ok ? 0 : 1;
}
