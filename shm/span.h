/* span: the per-span bitmap protocol that replaces Go's GC sweep.
 *
 * Each small span has, in its slot (segment.h), alloc_bits and free_bits:
 *  - allocation (owner only): the owner finds a clear alloc bit (freeindex +
 *    allocCache, in the client) and sets it. The owner is the client thread
 *    caching the span, or the daemon while the span is CENTRAL: one writer.
 *  - free (any thread of any process): find the span by the pagemap, the index
 *    by divMagic, check the address is an object start and its alloc bit is
 *    set, then atomically set its free bit. A free bit already set is a double
 *    free; a clear alloc bit is an invalid (or double, after a sweep) free.
 *  - sweep (owner only): for each word, take free_bits with an atomic exchange
 *    to 0 and clear those bits in alloc_bits. That is the whole sweep.
 * Class-2 spans (16 B objects) serve the tiny allocator: each 16 B block packs
 * objects under 16 B, and its word in the span's hd_tiny_t (segment.h) records
 * where live objects start and where objects end. The block's alloc bit stays
 * set until the last object is freed and no cache holds it open; only then is
 * its free bit set. A 16-byte request is a block holding one object. Tiny
 * frees are validated exactly (the start bit must be set) and their usable
 * size is known (the next end bit). Known limit: a double free that races a
 * sweep of the same span can slip through (the second free lands after the
 * fold); serial double frees are always caught.
 */
#ifndef HEAPD_SHM_SPAN_H
#define HEAPD_SHM_SPAN_H

#include <stdbool.h>
#include <stdint.h>

#include "segment.h"

enum hd_free_result {
    HD_FREE_OK = 0,
    HD_FREE_LARGE,       /* p is a large object: free it with FreeLarge */
    HD_FREE_NOT_HEAP,    /* p is not in the heap pages or not in a live span */
    HD_FREE_NOT_START,   /* p is inside an object, not at its start */
    HD_FREE_NOT_LIVE,    /* the object is not allocated (invalid or double free) */
    HD_FREE_DOUBLE,      /* already freed and not yet swept */
};

static inline hd_slot_t *hd_slot_of(const hd_seg_t *s, uint32_t id) { return &s->slots[id]; }

static inline unsigned hd_bitmap_words(unsigned nelems) { return (nelems + 63) / 64; }

static inline bool hd_bit_get(_Atomic uint64_t *bm, unsigned i)
{
    return atomic_load_explicit(&bm[i / 64], memory_order_relaxed) >> (i % 64) & 1;
}

/* Owner only: mark object i allocated. A plain read-modify-write: the owner is
 * the only writer of alloc_bits; release order so that a process that learns of
 * the object through shared memory also sees the bit. */
static inline void hd_alloc_bit_set(hd_slot_t *sl, unsigned i)
{
    uint64_t w = atomic_load_explicit(&sl->alloc_bits[i / 64], memory_order_relaxed);
    atomic_store_explicit(&sl->alloc_bits[i / 64], w | (1ull << (i % 64)), memory_order_release);
}

/* Owner only: fold free_bits into alloc_bits. Returns the live objects left;
 * *nfreed (if not NULL) gets how many frees were folded. */
static inline unsigned hd_span_sweep(hd_slot_t *sl, unsigned nelems, unsigned *nfreed)
{
    unsigned live = 0, freed = 0;
    for (unsigned w = 0; w < hd_bitmap_words(nelems); w++) {
        uint64_t a = atomic_load_explicit(&sl->alloc_bits[w], memory_order_relaxed);
        if (atomic_load_explicit(&sl->free_bits[w], memory_order_relaxed)) {
            uint64_t f = atomic_exchange_explicit(&sl->free_bits[w], 0, memory_order_acq_rel);
            f &= a;                          /* stray bits on free slots mean nothing */
            freed += (unsigned)__builtin_popcountll(f);
            a &= ~f;
            atomic_store_explicit(&sl->alloc_bits[w], a, memory_order_release);
        }
        live += (unsigned)__builtin_popcountll(a);
    }
    if (nfreed)
        *nfreed = freed;
    return live;
}

/* Set object i's free bit. */
static inline enum hd_free_result hd_free_index(hd_slot_t *sl, unsigned i)
{
    if (!hd_bit_get(sl->alloc_bits, i))
        return HD_FREE_NOT_LIVE;
    uint64_t bit = 1ull << (i % 64);
    uint64_t old = atomic_fetch_or_explicit(&sl->free_bits[i / 64], bit, memory_order_acq_rel);
    return (old & bit) ? HD_FREE_DOUBLE : HD_FREE_OK;
}

static inline hd_tiny_t *hd_tiny_of(const hd_seg_t *s, uint32_t id) { return &s->tiny[id]; }

/* Free the tiny object starting at byte j of block b. *block_freed says
 * whether this free also freed the block (it was the last one out). */
static inline enum hd_free_result hd_tiny_free_ex(hd_slot_t *sl, hd_tiny_t *t, unsigned b, unsigned j,
                                                  bool *block_freed)
{
    *block_freed = false;
    uint32_t w = atomic_load_explicit(&t->block[b], memory_order_relaxed), nw;
    do {
        if (!(w & (1u << j)))
            return HD_FREE_NOT_LIVE;
        nw = w & ~(1u << j);
        if ((nw & 0xffffu) == 0 && !(nw & HD_TINY_OPEN))
            nw = 0;                                  /* last one out resets the block */
    } while (!atomic_compare_exchange_weak_explicit(&t->block[b], &w, nw, memory_order_acq_rel,
                                                    memory_order_relaxed));
    *block_freed = nw == 0;
    return nw == 0 ? hd_free_index(sl, b) : HD_FREE_OK;
}

static inline enum hd_free_result hd_tiny_free(hd_slot_t *sl, hd_tiny_t *t, unsigned b, unsigned j)
{
    bool freed;
    return hd_tiny_free_ex(sl, t, b, j, &freed);
}

/* Close block b: clear its open bit. If no object in it is live, the word
 * resets and the block itself is freed (its free bit set; the next sweep
 * folds it). The cache that opened the block calls this when it moves to
 * another block or gives the span back; an open block always lies in a span
 * its client caches, so the daemon closes every block still open in the
 * class-2 spans it reclaims from a client that is gone. */
static inline enum hd_free_result hd_tiny_close_ex(hd_slot_t *sl, hd_tiny_t *t, unsigned b, bool *block_freed)
{
    *block_freed = false;
    uint32_t w = atomic_load_explicit(&t->block[b], memory_order_relaxed), nw;
    do {
        if (!(w & HD_TINY_OPEN))
            return HD_FREE_OK;                       /* not open: nothing to do */
        nw = w & ~HD_TINY_OPEN;
        if ((nw & 0xffffu) == 0)
            nw = 0;
    } while (!atomic_compare_exchange_weak_explicit(&t->block[b], &w, nw, memory_order_acq_rel,
                                                    memory_order_relaxed));
    *block_freed = nw == 0;
    return nw == 0 ? hd_free_index(sl, b) : HD_FREE_OK;
}

static inline enum hd_free_result hd_tiny_close(hd_slot_t *sl, hd_tiny_t *t, unsigned b)
{
    bool freed;
    return hd_tiny_close_ex(sl, t, b, &freed);
}

/* Usable bytes of the tiny object starting at byte j of block word w. */
static inline unsigned hd_tiny_usable(uint32_t w, unsigned j)
{
    uint32_t ends = (w >> 16 & 0x7fffu) >> j;        /* ends at bytes >= j */
    unsigned end = ends ? j + (unsigned)__builtin_ctz(ends) : 15;
    return end - j + 1;
}

/* The free path for any pointer, from any process. Small objects are freed
 * here; large ones are reported as HD_FREE_LARGE for the caller's RPC. *idp
 * gets the span id when one was found. On HD_FREE_OK, *cls gets the size
 * class of the object whose free bit was set (for memstats), or 0 when none
 * was: a tiny object whose block still holds others. */
static inline enum hd_free_result hd_free_ex(const hd_seg_t *s, void *p, uint32_t *idp, unsigned *cls)
{
    *cls = 0;
    uint32_t id = hd_span_of(s, p);
    if (id == HD_NO_SPAN)
        return HD_FREE_NOT_HEAP;
    *idp = id;
    const hd_span_t *sp = &s->spans[id];
    uint8_t st = atomic_load_explicit(&((hd_span_t *)sp)->state, memory_order_acquire);
    uintptr_t off = (uintptr_t)p - hd_page_addr(s, id);
    if (st == HD_SPAN_LARGE)
        return off == 0 ? HD_FREE_LARGE : HD_FREE_NOT_START;
    if (st != HD_SPAN_CACHED && st != HD_SPAN_CENTRAL)
        return HD_FREE_NOT_HEAP;
    hd_slot_t *sl = hd_slot_of(s, id);
    if (sp->sizeclass == HD_TINY_SIZE_CLASS) {      /* tiny objects start at any byte */
        bool block;
        enum hd_free_result r = hd_tiny_free_ex(sl, hd_tiny_of(s, id), (unsigned)(off / HD_TINY_SIZE),
                                                (unsigned)(off % HD_TINY_SIZE), &block);
        *cls = block ? HD_TINY_SIZE_CLASS : 0;
        return r;
    }
    unsigned i = (unsigned)(((uint64_t)off * sp->divmagic) >> 32);
    if (i >= sp->nelems)
        return HD_FREE_NOT_START;                   /* in the span's tail waste */
    if ((uintptr_t)i * sp->elemsize != off)
        return HD_FREE_NOT_START;
    *cls = sp->sizeclass;
    return hd_free_index(sl, i);
}

static inline enum hd_free_result hd_free(const hd_seg_t *s, void *p, uint32_t *idp)
{
    unsigned cls;
    return hd_free_ex(s, p, idp, &cls);
}

#endif
