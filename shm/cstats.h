/* cstats: the client stats slot's seqlock (layout.h hd_cstats_t; Go's
 * consistentHeapStats). One writer, the client the slot was given to (its
 * threads serialized by its own lock); one reader, the daemon, which never
 * waits for the writer.
 *
 * Writer: hd_cstats_begin (seq odd), hd_cstats_add/hd_cstats_set on the
 * counters, hd_cstats_end (seq even). Reader: hd_cstats_read_once copies the
 * counters and says whether the copy is consistent (seq even and unchanged
 * around it); the daemon retries a bounded number of times.
 * The owner field is the daemon's: hd_cstats_assign gives the slot to a
 * client, hd_cstats_retire takes it back. The client does not check it
 * before an update (a check-then-write would race with reuse): the slot's
 * lease makes the writer safe instead. The daemon retires a slot, and may
 * give it to another client, only after the client's process is dead (its
 * pidfd) or after it closed its connection with nothing cached (a detach); a
 * connection the daemon drops or that breaks keeps the slot quarantined until
 * the process exits (docs/design.md "Faults and leases", client/cstats.c).
 */
#ifndef HEAPD_SHM_CSTATS_H
#define HEAPD_SHM_CSTATS_H

#include <stdbool.h>
#include <stdint.h>

#include "layout.h"

/* The counters of one slot, as plain values. */
typedef struct hd_cstats_vals {
    uint64_t small_allocs[HD_NUM_SIZE_CLASSES];
    uint64_t small_frees[HD_NUM_SIZE_CLASSES];
    uint64_t tiny_allocs;
    uint64_t large_allocs, large_alloc_bytes;
    uint64_t large_frees, large_free_bytes;
    uint64_t mcache_bytes;          /* a gauge */
    uint64_t flushes;
    uint64_t lclass_allocs[HD_NUM_LARGE_CLASSES], lclass_frees[HD_NUM_LARGE_CLASSES];
    uint64_t refill_waits, refill_wait_ns;
    uint64_t bad_frees;
} hd_cstats_vals_t;

static inline uint64_t hd_cstats_ld(const _Atomic uint64_t *x)
{
    return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

/* ---- the client (writer) ---- */

/* Start an update: seq odd. The release fence orders it before the counter
 * stores that follow (pairs with the reader's acquire fence: a reader that
 * sees a new counter value also sees seq changed). Returns the even seq. */
static inline uint64_t hd_cstats_begin(hd_cstats_t *s)
{
    uint64_t q = hd_cstats_ld(&s->seq) & ~1ull;
    atomic_store_explicit(&s->seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    return q;
}

/* Counter += d / = v, inside an update (relaxed: the seqlock orders them;
 * one writer, so load + store, no RMW). */
static inline void hd_cstats_add(_Atomic uint64_t *f, uint64_t d)
{
    atomic_store_explicit(f, hd_cstats_ld(f) + d, memory_order_relaxed);
}
static inline void hd_cstats_set(_Atomic uint64_t *f, uint64_t v)
{
    atomic_store_explicit(f, v, memory_order_relaxed);
}

/* End the update begun at q: seq even. Release: pairs with the reader's
 * acquire load of seq, so a reader that sees q + 2 sees every counter. */
static inline void hd_cstats_end(hd_cstats_t *s, uint64_t q)
{
    atomic_store_explicit(&s->seq, q + 2, memory_order_release);
}

/* ---- the daemon (owner field, reader) ---- */

/* Give the slot to client_id: every field zero, then the owner (release:
 * a reader that sees the id sees the zeroed slot). Atomic stores, not memset: under the lease
 * the previous holder is gone, but a hostile process may still be writing
 * the heap memfd, and a torn plain store would be undefined behaviour. */
static inline void hd_cstats_assign(hd_cstats_t *s, uint32_t client_id)
{
    atomic_store_explicit(&s->owner, 0, memory_order_relaxed);
    atomic_store_explicit(&s->seq, 0, memory_order_relaxed);
    for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
        hd_cstats_set(&s->small_allocs[c], 0);
        hd_cstats_set(&s->small_frees[c], 0);
    }
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        hd_cstats_set(&s->lclass_allocs[k], 0);
        hd_cstats_set(&s->lclass_frees[k], 0);
    }
    _Atomic uint64_t *rest[] = {&s->tiny_allocs, &s->large_allocs, &s->large_alloc_bytes, &s->large_frees,
                                &s->large_free_bytes, &s->mcache_bytes, &s->flushes, &s->refill_waits,
                                &s->refill_wait_ns, &s->bad_frees};
    for (unsigned k = 0; k < sizeof rest / sizeof rest[0]; k++)
        hd_cstats_set(rest[k], 0);
    atomic_store_explicit(&s->owner, client_id, memory_order_release);
}

/* Take the slot back (owner 0): the client's later updates are dropped.
 * Release: pairs with hd_cstats_owner (the client sees 0 and stops). */
static inline void hd_cstats_retire(hd_cstats_t *s)
{
    atomic_store_explicit(&s->owner, 0, memory_order_release);
}

/* Copy the counters (relaxed loads: each value is whole; seq says whether
 * they belong together). */
static inline void hd_cstats_copy(const hd_cstats_t *s, hd_cstats_vals_t *o)
{
    for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
        o->small_allocs[c] = hd_cstats_ld(&s->small_allocs[c]);
        o->small_frees[c] = hd_cstats_ld(&s->small_frees[c]);
    }
    o->tiny_allocs = hd_cstats_ld(&s->tiny_allocs);
    o->large_allocs = hd_cstats_ld(&s->large_allocs);
    o->large_alloc_bytes = hd_cstats_ld(&s->large_alloc_bytes);
    o->large_frees = hd_cstats_ld(&s->large_frees);
    o->large_free_bytes = hd_cstats_ld(&s->large_free_bytes);
    o->mcache_bytes = hd_cstats_ld(&s->mcache_bytes);
    o->flushes = hd_cstats_ld(&s->flushes);
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        o->lclass_allocs[k] = hd_cstats_ld(&s->lclass_allocs[k]);
        o->lclass_frees[k] = hd_cstats_ld(&s->lclass_frees[k]);
    }
    o->refill_waits = hd_cstats_ld(&s->refill_waits);
    o->refill_wait_ns = hd_cstats_ld(&s->refill_wait_ns);
    o->bad_frees = hd_cstats_ld(&s->bad_frees);
}

/* One try at a consistent copy: true when seq was even and unchanged around
 * the copy (an update in progress or one that ended meanwhile: false). */
static inline bool hd_cstats_read_once(const hd_cstats_t *s, hd_cstats_vals_t *o)
{
    uint64_t s1 = atomic_load_explicit(&((hd_cstats_t *)s)->seq, memory_order_acquire); /* pairs with hd_cstats_end */
    if (s1 & 1)
        return false;
    hd_cstats_copy(s, o);
    atomic_thread_fence(memory_order_acquire);          /* pairs with the fence in hd_cstats_begin */
    return hd_cstats_ld(&s->seq) == s1;
}

#endif
