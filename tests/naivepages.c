/* naivepages.c: see naivepages.h. Written for obviousness, not speed. */
#include "naivepages.h"

#include <stdlib.h>

static inline bool get(const naive_pages_t *np, uint64_t p) { return np->bits[p / 64] >> (p % 64) & 1; }

int naive_init(naive_pages_t *np, uint64_t npages)
{
    np->npages = npages;
    np->limit = 0;
    np->free_pages = 0;
    np->lowest = 0;
    np->bits = calloc((npages + 63) / 64, sizeof(uint64_t));
    return np->bits ? 0 : -1;
}

void naive_destroy(naive_pages_t *np) { free(np->bits); np->bits = NULL; }

void naive_set_limit(naive_pages_t *np, uint64_t limit)
{
    np->free_pages += limit - np->limit;
    np->limit = limit;
}

bool naive_in_use(const naive_pages_t *np, uint64_t page) { return get(np, page); }

uint64_t naive_alloc(naive_pages_t *np, uint64_t n)
{
    uint64_t run = 0;
    for (uint64_t p = np->lowest; p < np->limit; p++) {
        /* skip whole used words */
        if (p % 64 == 0 && np->bits[p / 64] == ~0ull && p + 64 <= np->limit) {
            run = 0;
            p += 63;
            continue;
        }
        run = get(np, p) ? 0 : run + 1;
        if (run == n) {
            uint64_t base = p + 1 - n;
            for (uint64_t q = base; q <= p; q++)
                np->bits[q / 64] |= 1ull << (q % 64);
            np->free_pages -= n;
            if (base == np->lowest) {
                while (np->lowest < np->limit && get(np, np->lowest))
                    np->lowest++;
            }
            return base;
        }
    }
    return UINT64_MAX;
}

void naive_free(naive_pages_t *np, uint64_t base, uint64_t n)
{
    for (uint64_t q = base; q < base + n; q++)
        np->bits[q / 64] &= ~(1ull << (q % 64));
    np->free_pages += n;
    if (base < np->lowest)
        np->lowest = base;
}

uint64_t naive_longest_free(const naive_pages_t *np)
{
    uint64_t best = 0, run = 0;
    for (uint64_t p = 0; p < np->limit; p++) {
        if (p % 64 == 0 && p + 64 <= np->limit) {
            uint64_t w = np->bits[p / 64];
            if (w == 0) { run += 64; p += 63; if (run > best) best = run; continue; }
            if (w == ~0ull) { run = 0; p += 63; continue; }
        }
        run = get(np, p) ? 0 : run + 1;
        if (run > best)
            best = run;
    }
    return best;
}
