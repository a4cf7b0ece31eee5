/* pagecache: a thread's page chunks, carved into large-class objects
 * (Go's per-P pageCache, grown from a 64-page bitmap for small spans to
 * chunks of HD_CHUNK_PAGES pages, 2 MiB, that serve every large class from
 * one pool of pages).
 *
 * Owns: the chunk table of one thread cache (hd_mcache_t.pc): for each
 * chunk (a span of class HD_CHUNK_CLASS this client caches, shm/span.h "Page
 * chunks") a private map of which pages objects use, where each object
 * starts and its class, and which pages may hold old data. Only the owning
 * thread touches it; nothing in it is shared or locked.
 *
 * Invariants (pc_check):
 *  - chunks are sorted by span id (address order) and distinct;
 *  - for each chunk, the `used` bits are exactly the pages of the objects
 *    `cls` records (an object of class c at page i uses pages i ..
 *    i + npages(c) - 1, inside the chunk, overlapping no other), nfree
 *    counts the pages that are not used and maxrun is at least the longest
 *    run of them; nempty counts the chunks with every page free;
 *  - every object recorded is ALLOCATED or FREED in the shared bytes, unless
 *    a process scribbled on them: the map, never the bytes, says where
 *    objects are, so a scribble can leak pages of this chunk but never make
 *    two objects share one.
 *
 * Placement is address-ordered first fit, chunks in id order and pages in
 * each from the low end (the policy that keeps fragmentation low for random
 * sizes and lifetimes, and lets the highest chunks empty out and go back).
 * How many wholly free chunks the cache keeps is mcache.c's to decide
 * (pc_take_empty).
 */
#ifndef HEAPD_CLIENT_PAGECACHE_H
#define HEAPD_CLIENT_PAGECACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "span.h"

#define PC_MAX_CHUNKS 32u               /* chunks one thread caches (64 MiB); the fullest goes past it */
#define PC_WORDS (HD_CHUNK_PAGES / 64u)

typedef struct pc_chunk {
    uint32_t id;                        /* its span id */
    uint16_t nfree;                     /* pages no object uses */
    uint16_t maxrun;                    /* at least the longest run of them: a chunk whose bound is
                                           below a request is skipped without a look */
    uintptr_t base;                     /* address of page 0 */
    hd_ostate_t *st;                    /* its state bytes */
    uint64_t used[PC_WORDS];            /* pages objects use */
    uint64_t dirty[PC_WORDS];           /* pages that may hold old data (calloc clears them) */
    uint8_t cls[HD_CHUNK_PAGES];        /* class of the object starting at page i, 0: none */
} pc_chunk_t;

typedef struct hd_pagecache {
    pc_chunk_t ch[PC_MAX_CHUNKS];
    unsigned n;
    unsigned nempty;                    /* chunks with nfree == HD_CHUNK_PAGES */
} hd_pagecache_t;

void pc_reset(hd_pagecache_t *pc);

/* An object of large class c from the chunks, first fit; NULL when no chunk
 * has a run of its pages. Sweeps the chunks' FREED objects (frees by other
 * threads and processes) before it gives up. zero: the object reads as zero
 * (calloc); size: the bytes to clear. */
void *pc_alloc(hd_pagecache_t *pc, unsigned c, size_t size, bool zero);

/* Take a new chunk (span id, just cached from the daemon, every page FREE;
 * needzero: its pages may hold old data). false when the table is full (the
 * caller gives one back first, pc_evict) or already holds id. It does not
 * check that id is a chunk of seg cached by this client: the caller does
 * (mcache.c's mc_chunk_refill, with mc_span_ok) before it adds one. */
bool pc_add(hd_pagecache_t *pc, const hd_seg_t *seg, uint32_t id, bool needzero);

/* Remove the chunk with the fewest free pages from the table and return its
 * id (to give back: its live objects stay where they are), or HD_NO_SPAN. */
uint32_t pc_evict(hd_pagecache_t *pc);

/* The owner-local free of the object starting at page i of chunk id: FREE at
 * once and its pages back in the map. HD_FREE_REMOTE when this table does
 * not hold the chunk (another thread's) or no object starts at page i in its
 * map (the shared path reports what the byte says). *cls: its class. */
enum hd_free_result pc_free(hd_pagecache_t *pc, uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls);

/* Remove the wholly free chunks beyond the first `keep` (the highest ids
 * go first), sweeping remote frees first when sweep; their ids into ids[]
 * (room for PC_MAX_CHUNKS). Returns how many. */
unsigned pc_take_empty(hd_pagecache_t *pc, unsigned keep, bool sweep, uint32_t *ids);

/* Remove every chunk; their ids into ids[] (room for PC_MAX_CHUNKS). */
unsigned pc_take_all(hd_pagecache_t *pc, uint32_t *ids);

/* Move chunk k of `from` (its map with it) into `to`, keeping both sorted:
 * false when `to` is full or holds that id. */
bool pc_move(hd_pagecache_t *from, unsigned k, hd_pagecache_t *to);

/* Wholly free chunks. */
unsigned pc_empty(const hd_pagecache_t *pc);

/* Pages of the chunks no object uses, as the map says (what the cache holds
 * free). */
uint64_t pc_free_pages(const hd_pagecache_t *pc);

/* The invariants above; false with a message in err. */
bool pc_check(const hd_pagecache_t *pc, char *err, size_t errlen);

#endif
