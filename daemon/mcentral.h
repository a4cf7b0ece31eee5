/* mcentral: per size class, the spans no client caches (Go's mcentral).
 *
 * Owns pools of central lists. A pool has, per span class 1..67 and 88 (the
 * small classes and page chunks, sizeclasses.h; a chunk is never partial:
 * one with a live object is full, since no other client may carve it, and an
 * empty one goes back to the page allocator), a partial list (CENTRAL
 * spans with a free slot as of their
 * last sweep) and a full list (no free slot as of their last sweep). Pool 0
 * is the shared pool every libheapd client draws from. A family pool (issue
 * 10, preload mode) belongs to a family of clients that said in their Hello
 * that nobody else holds their objects: its spans carry the pool's number
 * (span_priv_t.pool) from the moment mheap makes them until they are empty
 * and go back to the page allocator, only members of the family cache them,
 * and when the last member has gone mcentral_pool_end frees everything still
 * in them. A family never takes a span from the shared pool or another
 * family's (they may hold other processes' objects), and nobody else takes
 * one of its spans. Also the header book objects_central. Daemon loop thread
 * only, no locks: plain linked lists replace Go's lock-free spanSets and the
 * sweepgen dance, because there is one thread and "sweeping" is turning
 * FREED object states FREE, which is idempotent.
 *
 * Ownership of the FREE and FREED object states (shm/layout.h): the client
 * caching a span allocates and sweeps; once the span is CENTRAL the daemon is
 * their only writer, so it may sweep. A span moves:
 *   cache:   partial of the client's pool (swept again: remote frees since)
 *            -> CACHED by the client
 *            else a full span of that pool that a sweep shows has room (at
 *            most 100 tried)
 *            else a new span from mheap, tagged with the pool
 *   uncache: CACHED -> sweep -> free (no live object) | partial | full of
 *            the pool its tag names
 *   background sweep: re-sweeps CENTRAL spans a bounded number per tick, pool
 *            after pool, so frees from other processes turn full spans
 *            partial and empty spans go back to the page allocator.
 *   pool end: every span of a family pool (CENTRAL on its lists, LARGE ones
 *            its members allocated) is freed whatever its objects' states.
 *
 * Invariants (mcentral_check):
 *  - a span is on a class's partial or full list of pool p iff it is
 *    CENTRAL with tag p, and on the list of its own class; list kind matches
 *    the last sweep (partial: live < nelems; full: live == nelems, or a
 *    chunk with live > 0; no
 *    CENTRAL span is empty after a sweep);
 *  - a CACHED or LARGE span's tag is the pool of the client it was made for;
 *    only a live pool's number is on a span that is not FREE;
 *  - objects_central == sum of span_priv_t.live over CENTRAL spans.
 *
 * The daemon never trusts the object states: a sweep counts the span's
 * nelems objects only, and any byte that is not FREE as live, so a live count
 * is always <= nelems whatever a client wrote.
 */
#ifndef HEAPD_DAEMON_MCENTRAL_H
#define HEAPD_DAEMON_MCENTRAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mheap.h"

#define MCENTRAL_SWEEP_BUDGET 100u   /* spans cacheSpan sweeps before growing (Go's spanBudget) */
#define MCENTRAL_CHUNK_BUDGET 16u    /* the same for page chunks (full ones hold live buffers) */

/* One pool of central lists (see the top). */
typedef struct mcentral_pool {
    spanlist_t partial[HD_NUM_SPAN_CLASSES];
    spanlist_t full[HD_NUM_SPAN_CLASSES];
    /* the background sweep's cursor in it: class (1..87), list (0 partial,
     * 1 full), and the spans left of that list's pass when one is under way */
    unsigned bg_class, bg_list;
    uint32_t bg_left;
    bool bg_active;
    unsigned bg_visits;              /* lists whose pass ended in the cursor's current cycle */
    unsigned members;                /* family pools: clients in the family (conn.c counts) */
} mcentral_pool_t;

typedef struct mcentral {
    mheap_t *h;
    mcentral_pool_t shared;          /* pool 0 */
    mcentral_pool_t **pools;         /* [npools]: pools[0] = &shared, NULL = a free number */
    unsigned npools;
    unsigned bg_pool;                /* the pool the background sweep is in */
    uint64_t bg_swept, bg_freed;     /* background sweep totals */
} mcentral_t;

/* What uncaching did with the span. */
enum mcentral_uncached {
    MC_PARTIAL = 0,
    MC_FULL = 1,
    MC_FREED = 2,
};

/* 0, or -ENOMEM (the pool table). */
int mcentral_init(mcentral_t *c, mheap_t *h);
void mcentral_destroy(mcentral_t *c);

/* Go's cacheSpan: a span of sizeclass (1..67, or 88: an empty page chunk)
 * with at least one free slot,
 * from pool (0: shared) or new, swept, now CACHED with owner client_id (owner
 * written before the state). Returns its id, -ENOMEM, or -EINVAL (bad class
 * or pool). */
int64_t mcentral_cache_span(mcentral_t *c, unsigned sizeclass, uint32_t client_id, unsigned pool);

/* mheap_alloc_span, and when the heap is full, a sweep of every CENTRAL span
 * (frees from other processes empty them) and one more try; the new span is
 * tagged with pool. Same results. */
int64_t mcentral_alloc_span(mcentral_t *c, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages,
                            unsigned pool);

/* A new family pool: its number (>= 1), or 0 when out of memory. */
unsigned mcentral_pool_new(mcentral_t *c);

/* What mcentral_pool_end freed: per class, the objects that were still
 * ALLOCATED (small_frees for classes 1..67, lclass_frees for the large
 * classes), and LARGE spans (large_frees, large_free_bytes). */
typedef struct mcentral_freed {
    uint64_t objects[HD_NUM_CLASSES];
    uint64_t large, large_bytes;
    uint64_t spans;                  /* spans given back to the page allocator */
} mcentral_freed_t;

/* The family of pool has gone (no member lives; the caller reclaimed their
 * cached spans first): free every span tagged with it, CENTRAL or LARGE,
 * whatever its objects' states, add what was live to *out, and retire the
 * number. One pass over the span table. */
void mcentral_pool_end(mcentral_t *c, unsigned pool, mcentral_freed_t *out);

/* CENTRAL spans of class cls, all pools (memstats). */
uint64_t mcentral_class_spans(const mcentral_t *c, unsigned cls);

/* Take back a CACHED span (Release, or reclaim of a disconnected client): the
 * daemon becomes its owner, sweeps it, and files it, or frees it when nothing
 * in it is live. Returns enum mcentral_uncached, or -EINVAL if the span is not
 * a CACHED small span (nothing changed). The caller removes it from the
 * client's list first. */
int mcentral_uncache_span(mcentral_t *c, uint32_t id);

/* Reclaim a CACHED span from a client that is gone: first close the tiny
 * blocks it left open (class 2: an open block always lies in a span its
 * client caches, span.h; *closed, when not NULL, counts the blocks freed by
 * closing them), then uncache as above. Same results. */
int mcentral_reclaim_span(mcentral_t *c, uint32_t id, unsigned *closed);

/* Background sweep: re-sweep up to budget CENTRAL spans from a cursor that
 * goes round the classes of a pool (partial list, then full) and then on to
 * the next pool; a list's pass covers the spans it had when the pass began,
 * and resumes where the budget stopped it, so neither a long class nor the
 * shared pool starves the others. Returns the spans swept. */
unsigned mcentral_bg_sweep(mcentral_t *c, unsigned budget);

/* Sweep every CENTRAL span of every pool once, now (empty ones go back to the
 * page allocator). Returns the spans swept. */
unsigned mcentral_sweep_all(mcentral_t *c);

/* Verify the invariants above (slow; tests). */
bool mcentral_check(mcentral_t *c, char *err, size_t errlen);

#endif
