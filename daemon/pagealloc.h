/* pagealloc: Go's page allocator over the pages of one segment.
 *
 * Owns: which 8 KiB pages of the segment are in use, which free pages have been
 * returned to the OS (scavenged), and the radix tree of summaries that finds the
 * lowest-addressed run of N free pages in O(levels * 8) summary reads.
 * Lives in daemon-private memory and is touched only by the daemon's loop thread:
 * no locks. Pages are named by their index in the segment (0 .. npages-1), not by
 * address, so the same code serves any base address and the tests need no segment.
 *
 * Structure (Go's mpagealloc.go, sized to the segment instead of the address space):
 *  - chunks of 512 pages (4 MiB): an alloc bitmap (1 = in use) and a scavenged
 *    bitmap (1 = returned to the OS) of 8 words each;
 *  - summaries: a pa_sum_t per chunk at the leaf level and one per 8 children above,
 *    up to 5 levels, so a root entry covers at most 2^21 pages (16 GiB) and the
 *    21-bit fields never overflow. A 1 TiB segment has 64 root entries.
 *  - a pa_sum_t packs (start, max, end): free pages at the start of the range, the
 *    longest free run inside it, free pages at its end; 21 bits each. A fully free
 *    root-level range has max == 2^21, stored as bit 63 alone.
 *
 * Invariants (pa_check verifies all of them):
 *  - every summary equals the summary of what it covers; 0 means "no free page",
 *    which is also what the never-grown part of the segment reads as;
 *  - every page below `search` is allocated (first-fit starts there);
 *  - scavenged pages are free: alloc clears the scavenged bits of what it takes;
 *  - pages in [grown, npages) are neither free nor in use: they are not yet part of
 *    the heap. grow() adds whole chunks, free and scavenged (untouched memory);
 *  - pages past npages in the last chunk are permanently marked in use.
 *
 * Memory: all metadata is one MAP_NORESERVE reservation; a page of it becomes
 * resident only when touched, so an untouched 1 TiB segment costs next to nothing.
 */
#ifndef HEAPD_PAGEALLOC_H
#define HEAPD_PAGEALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PA_CHUNK_PAGES   512u                  /* pages per chunk (4 MiB) */
#define PA_CHUNK_WORDS   (PA_CHUNK_PAGES / 64)
#define PA_LOG_CHUNK     9
#define PA_LEVEL_BITS    3                     /* 8 children per summary: one cache line */
#define PA_MAX_LEVELS    5                     /* root entries span <= 2^(9+3*4) = 2^21 pages */
#define PA_SUM_LOG_MAX   21
#define PA_HUGE_PAGES    256u                  /* pages per 2 MiB huge page */
#define PA_MAX_NPAGES    (1ull << 31)          /* 16 TiB of 8 KiB pages */
#define PA_FAIL          UINT64_MAX

typedef uint64_t pa_sum_t;

typedef struct pa_chunk {
    uint64_t alloc[PA_CHUNK_WORDS];            /* 1 = page in use */
    uint64_t scav[PA_CHUNK_WORDS];             /* 1 = free and returned to the OS */
} pa_chunk_t;

typedef struct pagealloc {
    uint64_t npages;                           /* segment size in pages, fixed */
    uint64_t nchunks;                          /* ceil(npages / 512) */
    uint64_t grown;                            /* [0, grown) is the heap; chunk multiple or npages */
    uint64_t search;                           /* every page below is allocated */
    unsigned nlevels;                          /* 1..5; level 0 is the root */
    uint64_t level_len[PA_MAX_LEVELS];         /* entries per level (unpadded) */
    pa_sum_t *sum[PA_MAX_LEVELS];              /* sum[nlevels-1][c] summarizes chunk c */
    pa_chunk_t *chunks;
    uint64_t *scav_hint;                       /* bit per chunk: may hold free, unscavenged pages */
    uint64_t free_pages;                       /* free pages in [0, grown) */
    uint64_t scav_pages;                       /* free pages that are scavenged */
    void *meta;                                /* the one reservation behind all arrays */
    size_t meta_len;
} pagealloc_t;

/* Packed summaries (exposed for the tests). */
pa_sum_t pa_sum_pack(uint64_t start, uint64_t max, uint64_t end);
uint64_t pa_sum_start(pa_sum_t s);
uint64_t pa_sum_max(pa_sum_t s);
uint64_t pa_sum_end(pa_sum_t s);
/* Fold n summaries of ranges of 2^logpages pages each, left to right. */
pa_sum_t pa_sum_merge(const pa_sum_t *sums, unsigned n, unsigned logpages);
/* Summary of one chunk's alloc bitmap. */
pa_sum_t pa_chunk_summarize(const uint64_t alloc[PA_CHUNK_WORDS]);
/* Lowest index of n consecutive 1 bits in x (1 <= n <= 64), or 64. */
unsigned pa_find_bit_range64(uint64_t x, unsigned n);

/* Set up an allocator for a segment of npages (1 .. PA_MAX_NPAGES). Nothing is
 * in the heap until pa_grow. Returns 0 or -errno (EINVAL, ENOMEM). */
int pa_init(pagealloc_t *pa, uint64_t npages);
void pa_destroy(pagealloc_t *pa);

/* Add whole chunks to the heap, at least npages worth, as free and scavenged
 * pages. Returns the pages added: 0 when the segment is fully grown. */
uint64_t pa_grow(pagealloc_t *pa, uint64_t npages);

/* Allocate the lowest-addressed run of npages free pages. Returns its first page
 * or PA_FAIL (nothing changed). *scav receives how many of the pages were
 * scavenged (their backing must be committed again before use). */
uint64_t pa_alloc(pagealloc_t *pa, uint64_t npages, uint64_t *scav);

/* Free pages [base, base+npages). Returns 0, or -EINVAL without changing
 * anything if the range is outside the heap or holds a page that is not in use. */
int pa_free(pagealloc_t *pa, uint64_t base, uint64_t npages);

/* Scavenger support. Find the highest-addressed run of free, unscavenged pages,
 * at most max_pages long (within one chunk), widened so that it never splits a
 * free 2 MiB huge page. Returns false when there is none. Does not mark it. */
bool pa_scav_find(pagealloc_t *pa, uint64_t max_pages, uint64_t *base, uint64_t *npages);
/* Mark free pages [base, base+npages) scavenged; returns how many were not before.
 * Pages that are in use are left alone (they cannot be scavenged). */
uint64_t pa_mark_scavenged(pagealloc_t *pa, uint64_t base, uint64_t npages);

/* Is page p released as far as the allocator knows (free and scavenged, or
 * not yet part of the heap)? Such a page should have no backing. */
bool pa_released(const pagealloc_t *pa, uint64_t p);
/* Longest run of free pages in the heap, from the root summaries. */
uint64_t pa_longest_free(const pagealloc_t *pa);
/* Resident bytes of the metadata reservation (mincore), for stats and tests. */
size_t pa_meta_resident(const pagealloc_t *pa);
/* Verify every invariant above from scratch (slow). Returns true, or false with
 * a message in err. */
bool pa_check(const pagealloc_t *pa, char *err, size_t errlen);

#endif
