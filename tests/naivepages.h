/* naivepages: the obviously-correct reference page allocator.
 *
 * One bit per page and a linear first-fit scan from the lowest free page. The
 * page-allocator model check compares pagealloc against it after every
 * operation, and bench/pagealloc runs it beside pagealloc as the baseline. */
#ifndef HEAPD_NAIVEPAGES_H
#define HEAPD_NAIVEPAGES_H
#include <stdbool.h>
#include <stdint.h>

typedef struct naive_pages {
    uint64_t npages;     /* pages the heap may hold */
    uint64_t limit;      /* pages [0, limit) are usable (mirrors pagealloc's grown) */
    uint64_t *bits;      /* 1 = in use */
    uint64_t free_pages;
    uint64_t lowest;     /* no free page below this */
} naive_pages_t;

int naive_init(naive_pages_t *np, uint64_t npages);
void naive_destroy(naive_pages_t *np);
void naive_set_limit(naive_pages_t *np, uint64_t limit);
uint64_t naive_alloc(naive_pages_t *np, uint64_t n);   /* first page or UINT64_MAX */
void naive_free(naive_pages_t *np, uint64_t base, uint64_t n);
uint64_t naive_longest_free(const naive_pages_t *np);
bool naive_in_use(const naive_pages_t *np, uint64_t page);
#endif
