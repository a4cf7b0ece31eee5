/* segment: the shared heap as daemon and clients both see it: the layout
 * computation, a process's view of a mapping, and the accessors of the
 * segment-wide shared fields (span table states, pagemap, header books).
 * layout.h has the structs and the field table (who writes what, with which
 * ordering, when ownership passes); span.h the object state bytes and tiny
 * words; cstats.h the stats-slot seqlock.
 *
 * The meta memfd (header, span table, pagemap) is written only by the daemon,
 * through the mapping it made before sealing the memfd with
 * F_SEAL_FUTURE_WRITE; any later mapping is read-only, so a client cannot
 * corrupt the span table even with mprotect. The heap memfd holds what clients
 * must write: objects, per span the object state bytes (a "slot"), the aux
 * areas (class-1 state bytes, class-2 block words) and the stats slots.
 *
 * Mapping: meta PROT_READ, heap PROT_READ|PROT_WRITE, both MAP_SHARED |
 * MAP_FIXED_NOREPLACE, and the heap also MAP_NORESERVE: with a hugetlb heap
 * (heapd --hugetlb, or a hugetlbfs --backing file) a shared mapping without it
 * tries to reserve huge pages for the whole sparse range and fails. The
 * daemon commits (fallocate) everything it hands out, so nothing faults.
 *
 * Span ids are the index of the span's first page; span_table[id] describes
 * it, and pagemap[p] = id + 1 for every page p of a live span (0: no span).
 */
#ifndef HEAPD_SHM_SEGMENT_H
#define HEAPD_SHM_SEGMENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "debug.h"
#include "layout.h"
#include "sizeclasses.h"

/* A process's view of a mapped segment (filled from the header at attach). */
typedef struct hd_seg {
    hd_header_t *hdr;
    hd_span_t *spans;
    _Atomic uint32_t *pagemap;
    hd_slot_t *slots;
    hd_tiny_t *tiny;
    hd_cstats_t *cstats;        /* client stats slots */
    struct hd_root *roots;      /* the roots directory (roots.h) */
    uintptr_t pages;            /* address of heap page 0 */
    uint64_t npages;
} hd_seg_t;

static inline uint64_t hd_align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Layout for a heap of npages pages: fills the header's layout fields. */
static inline void hd_layout(hd_header_t *h, uint64_t base, uint64_t npages)
{
    h->magic = HD_MAGIC;
    h->layout_version = HD_LAYOUT_VERSION;
    h->proto_version = HD_PROTO_VERSION;
    h->base = base;
    h->npages = npages;
    h->span_off = HD_HEADER_BYTES;
    h->pagemap_off = h->span_off + hd_align_up(npages * sizeof(hd_span_t), 4096);
    h->roots_off = hd_align_up(h->pagemap_off + npages * sizeof(uint32_t), 4096);
    h->meta_size = hd_align_up(h->roots_off + HD_ROOTS_BYTES, HD_SEG_ALIGN);
    h->slots_off = 0;
    h->tiny_off = hd_align_up(npages * sizeof(hd_slot_t), 4096);
    h->cstats_off = hd_align_up(h->tiny_off + npages * sizeof(hd_tiny_t), 4096);
    h->pages_off = hd_align_up(h->cstats_off + HD_STAT_SLOTS * sizeof(hd_cstats_t), HD_SEG_ALIGN);
    h->heap_size = h->pages_off + npages * HD_PAGE_SIZE;
}

/* The view of a segment whose meta memfd is mapped at hdr. */
static inline void hd_seg_view(hd_seg_t *s, hd_header_t *hdr)
{
    char *meta = (char *)hdr, *heap = meta + hdr->meta_size;
    s->hdr = hdr;
    s->spans = (hd_span_t *)(meta + hdr->span_off);
    s->pagemap = (_Atomic uint32_t *)(meta + hdr->pagemap_off);
    s->slots = (hd_slot_t *)(heap + hdr->slots_off);
    s->tiny = (hd_tiny_t *)(heap + hdr->tiny_off);
    s->cstats = (hd_cstats_t *)(heap + hdr->cstats_off);
    s->roots = (struct hd_root *)(meta + hdr->roots_off);
    s->pages = (uintptr_t)(heap + hdr->pages_off);
    s->npages = hdr->npages;
}

static inline uintptr_t hd_page_addr(const hd_seg_t *s, uint64_t page)
{
    return s->pages + (uintptr_t)page * HD_PAGE_SIZE;
}

/* ---- span table and pagemap (writer: the daemon; layout.h) ---------------- */

/* A span's state, as anyone reads it: acquire, pairs with the release in
 * hd_span_publish, so the span's fields, slot and pagemap written before the
 * publish are visible. */
static inline uint8_t hd_span_state(const hd_span_t *sp)
{
    return atomic_load_explicit(&((hd_span_t *)sp)->state, memory_order_acquire);
}

/* The daemon reading a state it wrote itself (its own thread: no ordering). */
static inline uint8_t hd_span_state_own(const hd_span_t *sp)
{
    return atomic_load_explicit(&((hd_span_t *)sp)->state, memory_order_relaxed);
}

static inline int hd_span_move_legal(uint8_t from, uint8_t to)
{
    switch (from) {
    case HD_SPAN_FREE:    return to == HD_SPAN_CENTRAL || to == HD_SPAN_CACHED || to == HD_SPAN_LARGE;
    case HD_SPAN_CENTRAL: return to == HD_SPAN_CACHED || to == HD_SPAN_FREE;
    case HD_SPAN_CACHED:  return to == HD_SPAN_CENTRAL || to == HD_SPAN_FREE;
    case HD_SPAN_LARGE:   return to == HD_SPAN_FREE;
    default:              return 0;
    }
}

/* Daemon only: publish a span's new state. Release: everything written to the
 * span, its slot and its pagemap before this is seen by whoever loads the
 * state with hd_span_state (acquire). Stored LAST. */
static inline void hd_span_publish(hd_span_t *sp, uint8_t st)
{
    HD_DEBUG_CHECK(hd_span_move_legal(hd_span_state_own(sp), st), "illegal span state move %u -> %u",
                   hd_span_state_own(sp), st);
    atomic_store_explicit(&sp->state, st, memory_order_release);
}

/* Daemon only: pagemap[page] = id + 1 (0: no span). Release, and before the
 * state publish when a span is made: a reader that finds the entry through
 * hd_span_of (acquire) and then loads the state sees a consistent span. */
static inline void hd_pagemap_set(const hd_seg_t *s, uint64_t page, uint32_t v)
{
    atomic_store_explicit(&s->pagemap[page], v, memory_order_release);
}

/* The raw entry (id + 1, or 0): acquire, pairs with hd_pagemap_set. */
static inline uint32_t hd_pagemap_get(const hd_seg_t *s, uint64_t page)
{
    return atomic_load_explicit(&s->pagemap[page], memory_order_acquire);
}

/* Span id of the live span holding p, or HD_NO_SPAN (p outside the heap pages
 * or on a page no span covers). The caller then checks hd_span_state: the
 * entry may belong to a span that is going away. */
static inline uint32_t hd_span_of(const hd_seg_t *s, const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (a < s->pages)
        return HD_NO_SPAN;
    uint64_t page = (a - s->pages) >> HD_PAGE_SHIFT;
    if (page >= s->npages)
        return HD_NO_SPAN;
    uint32_t e = hd_pagemap_get(s, page);
    return e ? e - 1 : HD_NO_SPAN;
}

/* ---- header books (writer: the daemon; a seqlock on books_seq) -------------- */

/* Daemon: open a batch of book updates (seq odd) unless one is open. The
 * release fence orders the odd seq before the book stores that follow, for a
 * reader that sees a book value it must also see seq odd or changed (pairs
 * with the acquire fence in hd_books_snapshot). */
static inline void hd_books_begin(hd_header_t *h)
{
    uint64_t q = atomic_load_explicit(&h->books_seq, memory_order_relaxed);
    if (!(q & 1)) {
        atomic_store_explicit(&h->books_seq, q + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
    }
}

/* Daemon: close the batch (seq even). Release: pairs with the acquire load of
 * books_seq in hd_books_snapshot, so a reader that sees the new even value
 * sees every book of the batch. */
static inline void hd_books_end(hd_header_t *h)
{
    uint64_t q = atomic_load_explicit(&h->books_seq, memory_order_relaxed);
    if (q & 1)
        atomic_store_explicit(&h->books_seq, q + 1, memory_order_release);
}

/* Daemon: book += d, inside a batch (relaxed: the seqlock orders it). */
static inline void hd_book_add(hd_header_t *h, _Atomic uint64_t *b, int64_t d)
{
    hd_books_begin(h);
    atomic_store_explicit(b, atomic_load_explicit(b, memory_order_relaxed) + (uint64_t)d, memory_order_relaxed);
}

/* Daemon: book = v, inside a batch. */
static inline void hd_book_set(hd_header_t *h, _Atomic uint64_t *b, uint64_t v)
{
    hd_books_begin(h);
    atomic_store_explicit(b, v, memory_order_relaxed);
}

/* One book, on its own (relaxed: a value the daemon stored whole). */
static inline uint64_t hd_book(const _Atomic uint64_t *b)
{
    return atomic_load_explicit((_Atomic uint64_t *)b, memory_order_relaxed);
}

/* Anyone: a consistent copy of every book (out's layout fields are copied
 * too, plainly: they never change). Retries while a batch is under way or
 * one ended meanwhile, at most tries times; false when none succeeded (the
 * copy is then whatever the last try read). */
static inline int hd_books_snapshot(const hd_header_t *h, hd_header_t *out, unsigned tries)
{
    hd_header_t *w = (hd_header_t *)h;
    for (unsigned t = 0; t < tries; t++) {
        uint64_t s1 = atomic_load_explicit(&w->books_seq, memory_order_acquire);  /* pairs with hd_books_end */
        *out = (hd_header_t){0};
        out->magic = w->magic;
        out->layout_version = w->layout_version;
        out->proto_version = w->proto_version;
        out->base = w->base;
        out->meta_size = w->meta_size;
        out->heap_size = w->heap_size;
        out->npages = w->npages;
        out->span_off = w->span_off;
        out->pagemap_off = w->pagemap_off;
        out->slots_off = w->slots_off;
        out->tiny_off = w->tiny_off;
        out->pages_off = w->pages_off;
        out->cstats_off = w->cstats_off;
        for (_Atomic uint64_t *b = &w->HD_BOOKS_FIRST, *o = &out->HD_BOOKS_FIRST; b <= &w->HD_BOOKS_LAST; b++, o++)
            atomic_store_explicit(o, hd_book(b), memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);      /* pairs with the fence in hd_books_begin */
        uint64_t s2 = atomic_load_explicit(&w->books_seq, memory_order_relaxed);
        atomic_store_explicit(&out->books_seq, s2, memory_order_relaxed);
        if (s1 == s2 && !(s1 & 1))
            return 1;
    }
    return 0;
}

/* Offsets, for data that must outlive a mapping: relative to heap page 0. */
static inline uint64_t hd_offset_of(const hd_seg_t *s, const void *p) { return (uintptr_t)p - s->pages; }

#endif
