/* mcentral: per size class, the spans no client caches (Go's mcentral).
 *
 * Owns, per class 1..87 (small classes, then the large classes of one
 * object per span: sizeclasses.h; a large-class span is never partial, since
 * its one object is live or the span is free), a partial list (CENTRAL spans with a free slot as of
 * their last sweep) and a full list (no free slot as of their last sweep), and
 * the header book objects_central. Daemon loop thread only, no locks: plain
 * linked lists replace Go's lock-free spanSets and the sweepgen dance, because
 * there is one thread and "sweeping" is turning FREED object states FREE,
 * which is idempotent.
 *
 * Ownership of the FREE and FREED object states (shm/layout.h): the client
 * caching a span allocates and sweeps; once the span is CENTRAL the daemon is
 * their only writer, so it may sweep. A span moves:
 *   cache:   partial (swept again: remote frees since) -> CACHED by the client
 *            else a full span that a sweep shows has room (at most 100 tried)
 *            else a new span from mheap
 *   uncache: CACHED -> sweep -> free (no live object) | partial | full
 *   background sweep: re-sweeps CENTRAL spans a bounded number per tick, so
 *            frees from other processes turn full spans partial and empty
 *            spans go back to the page allocator.
 *
 * Invariants (mcentral_check):
 *  - a span is on a class's partial or full list iff it is CENTRAL, and on the
 *    list of its own class; list kind matches the last sweep (partial: live <
 *    nelems; full: live == nelems; no CENTRAL span is empty after a sweep);
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
#define MCENTRAL_LARGE_BUDGET 16u    /* the same for a large class (full spans are live buffers) */

typedef struct mcentral {
    mheap_t *h;
    spanlist_t partial[HD_NUM_CLASSES];
    spanlist_t full[HD_NUM_CLASSES];
    unsigned bg_class;               /* where the background sweep resumes (1..87) */
    uint64_t bg_swept, bg_freed;     /* background sweep totals */
} mcentral_t;

/* What uncaching did with the span. */
enum mcentral_uncached {
    MC_PARTIAL = 0,
    MC_FULL = 1,
    MC_FREED = 2,
};

void mcentral_init(mcentral_t *c, mheap_t *h);

/* Go's cacheSpan: a span of sizeclass (1..87) with at least one free slot,
 * swept, now CACHED with owner client_id (owner written before the state).
 * Returns its id, -ENOMEM, or -EINVAL (bad class). */
int64_t mcentral_cache_span(mcentral_t *c, unsigned sizeclass, uint32_t client_id);

/* mheap_alloc_span, and when the heap is full, a sweep of every CENTRAL span
 * (frees from other processes empty them) and one more try. Same results. */
int64_t mcentral_alloc_span(mcentral_t *c, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages);

/* Take back a CACHED span (Release, or reclaim of a disconnected client): the
 * daemon becomes its owner, sweeps it, and files it, or frees it when nothing
 * in it is live. Returns enum mcentral_uncached, or -EINVAL if the span is not
 * a CACHED small span (nothing changed). The caller removes it from the
 * client's list first. */
int mcentral_uncache_span(mcentral_t *c, uint32_t id);

/* Reclaim a CACHED span from a client that is gone: first close the tiny
 * blocks it left open (class 2: an open block always lies in a span its
 * client caches, span.h), then uncache as above. Same results. */
int mcentral_reclaim_span(mcentral_t *c, uint32_t id);

/* Background sweep: re-sweep up to budget CENTRAL spans, round-robin over the
 * classes, partial lists first. Returns the spans swept. */
unsigned mcentral_bg_sweep(mcentral_t *c, unsigned budget);

/* Verify the invariants above (slow; tests). */
bool mcentral_check(mcentral_t *c, char *err, size_t errlen);

#endif
