/* Size classes: the table that maps a small request (1..32768 bytes) to a
 * fixed object size and span length, shared by the daemon and every client.
 *
 * This component owns the constants below, the generated tables
 * (hd_class_to_*, hd_size_to_class*; written at build time by
 * shm/mksizeclasses.c, which runs Go's mksizeclasses algorithm) and the
 * lookup helpers. Because daemon and clients index the same shared spans
 * with these tables, both sides must be built from the same generated file.
 *
 * Invariants (checked by hd_sizeclasses_check at startup and by the unit tests):
 *   - class 0 is not a size class: it stands for "large" (> 32768 bytes,
 *     allocated as whole pages). Classes 1..67 are real, 68 entries in all.
 *   - class sizes strictly increase, are multiples of 8 (16 from 32 bytes,
 *     128 from 1024), and the last is HD_MAX_SMALL_SIZE; class 2 is the
 *     16-byte tiny class, and 512 is a class boundary.
 *   - a class's span is hd_class_to_npages[c] pages (<= 10), all classes
 *     up to 512 bytes use one-page spans.
 *   - objects per span = span bytes / size, with no scan/noscan split (no
 *     heap-bitmap reservation at the span tail; these are Go's noscan
 *     counts). The leftover tail is at most 1/8 of the span.
 *   - hd_class_to_divmagic[c] = UINT32_MAX / size + 1, and
 *     hd_obj_index(divmagic, off) == off / size exactly for every offset
 *     0..span bytes, so object indices never need a division.
 *   - hd_size_to_class(n) is the smallest class whose size >= n. */
#ifndef HEAPD_SHM_SIZECLASSES_H
#define HEAPD_SHM_SIZECLASSES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HD_PAGE_SHIFT 13
#define HD_PAGE_SIZE (1u << HD_PAGE_SHIFT)      /* 8 KiB */
#define HD_MAX_SMALL_SIZE 32768u
#define HD_SMALL_SIZE_DIV 8u
#define HD_SMALL_SIZE_MAX 1024u
#define HD_LARGE_SIZE_DIV 128u
#define HD_NUM_SIZE_CLASSES 68                  /* 67 classes + class 0 (large) */
#define HD_MAX_OBJS_PER_SPAN 1024u
#define HD_MAX_SIZE_CLASS_NPAGES 10u
#define HD_TINY_SIZE 16u
#define HD_TINY_SIZE_CLASS 2u

#define HD_NUM_LARGE_CLASSES 20                 /* large classes 68..87 (below) */
extern const uint8_t hd_lclass_npages[HD_NUM_LARGE_CLASSES];     /* 5, 6, 7, 8, 10, ... 128 */

/* Lengths of the two request-size lookup tables. */
#define HD_SIZE_TO_CLASS8_LEN (HD_SMALL_SIZE_MAX / HD_SMALL_SIZE_DIV + 1)                        /* 129 */
#define HD_SIZE_TO_CLASS128_LEN ((HD_MAX_SMALL_SIZE - HD_SMALL_SIZE_MAX) / HD_LARGE_SIZE_DIV + 1) /* 249 */

extern const uint32_t hd_class_to_size[HD_NUM_SIZE_CLASSES];     /* bytes per object; 0 for class 0 */
extern const uint8_t  hd_class_to_npages[HD_NUM_SIZE_CLASSES];   /* pages per span */
extern const uint16_t hd_class_to_nobjs[HD_NUM_SIZE_CLASSES];    /* objects per span */
extern const uint32_t hd_class_to_divmagic[HD_NUM_SIZE_CLASSES]; /* see hd_obj_index */
/* Entry i: first class whose size >= i*8. */
extern const uint8_t  hd_size_to_class8[HD_SIZE_TO_CLASS8_LEN];
/* Entry i: first class whose size >= 1024 + i*128. */
extern const uint8_t  hd_size_to_class128[HD_SIZE_TO_CLASS128_LEN];

/* The size class for a small request, 1 <= size <= HD_MAX_SMALL_SIZE.
 * Go's split: sizes up to 1016 use the 8-byte table; 1017..1024 land on
 * entry 0 of the 128-byte table (size+127-1024 is 120..127, >>7 = 0), which
 * is the 1024-byte class, so the two tables meet without a gap. */
static inline unsigned hd_size_to_class(size_t size)
{
    if (size <= HD_SMALL_SIZE_MAX - HD_SMALL_SIZE_DIV)
        return hd_size_to_class8[(size + HD_SMALL_SIZE_DIV - 1) >> 3];
    return hd_size_to_class128[(size + HD_LARGE_SIZE_DIV - 1 - HD_SMALL_SIZE_MAX) >> 7];
}

/* Index of the object containing byte `offset` of a span (offset from the
 * span base): offset / size via a multiply, exact for offsets up to the span
 * length (verified at generation time and by the tests). */
static inline uint32_t hd_obj_index(uint32_t divmagic, uint64_t offset)
{
    return (uint32_t)((offset * divmagic) >> 32);
}

/* Bytes in one span of class c (c >= 1). */
static inline size_t hd_span_bytes(unsigned c)
{
    if (c >= HD_NUM_SIZE_CLASSES + HD_NUM_LARGE_CLASSES)   /* classes only; tells -O3 bounds checks */
        __builtin_unreachable();
    return (size_t)(c >= HD_NUM_SIZE_CLASSES ? hd_lclass_npages[c - HD_NUM_SIZE_CLASSES] : hd_class_to_npages[c])
           << HD_PAGE_SHIFT;
}

/* ---- large classes (issue 9) ------------------------------------------------
 * Requests above 32 KiB up to HD_MAX_CLASS_SIZE (1 MiB) belong to a large
 * class: jemalloc's four classes per doubling of pages, from 5 pages (40 KiB)
 * to 128 (1 MiB), 20 classes numbered HD_FIRST_LARGE_CLASS (68) ..
 * HD_NUM_CLASSES-1 (87), after Go's 67 so that every table indexed by a
 * small class keeps its 68 rows. A large-class object is a run of its
 * class's pages carved by the allocating thread out of a page chunk (below)
 * it caches; the class is its size and its row in memstats. Internal
 * fragmentation: a request is rounded up to its class, at most 20% of the
 * class (a request one byte above 4, 8, 16, ... pages: 5/4, 10/8, 20/16 ...)
 * where the page rounding of a round trip per object wasted at most one page.
 * Above 1 MiB, and for alignments above a page, each object is one AllocLarge
 * round trip (state LARGE, sizeclass 0): writing 1 MiB costs about as much as
 * the ~50 us round trip, so a cache would not pay for what it pins.
 *
 * Page chunks (span class HD_CHUNK_CLASS, 88): a span of HD_CHUNK_PAGES
 * pages (2 MiB) with one state byte per page, Go's per-P page cache grown to
 * serve every large class from one pool of pages: a free 1 MiB run becomes
 * two 512 KiB objects without the daemon. Its byte encoding and rules are in
 * shm/span.h ("Page chunks"). HD_NUM_CLASSES counts object classes (memstats
 * tables); HD_NUM_SPAN_CLASSES, span classes (the daemon's lists). */
#define HD_FIRST_LARGE_CLASS HD_NUM_SIZE_CLASSES                   /* 68 */
#define HD_NUM_CLASSES (HD_NUM_SIZE_CLASSES + HD_NUM_LARGE_CLASSES) /* 88: small, then large */
#define HD_MAX_CLASS_SIZE (1u << 20)
#define HD_CHUNK_CLASS HD_NUM_CLASSES                              /* 88 */
#define HD_NUM_SPAN_CLASSES (HD_CHUNK_CLASS + 1)                   /* 89 */
#define HD_CHUNK_PAGES 256u                                        /* 2 MiB; one state byte per page */

static inline bool hd_is_lclass(unsigned c) { return c >= HD_FIRST_LARGE_CLASS && c < HD_NUM_CLASSES; }

/* Any span class 1..HD_CHUNK_CLASS: pages per span, bytes per object, objects
 * per span and division magic (small classes: the generated tables; a large
 * class: one object of its pages; a chunk: its pages, one "object" per page,
 * which is what the free path's index and start check need). */
static inline unsigned hd_cls_npages(unsigned c)
{
    if (c == HD_CHUNK_CLASS)
        return HD_CHUNK_PAGES;
    return hd_is_lclass(c) ? hd_lclass_npages[c - HD_FIRST_LARGE_CLASS] : hd_class_to_npages[c];
}
static inline uint32_t hd_cls_size(unsigned c)
{
    if (c == HD_CHUNK_CLASS)
        return HD_PAGE_SIZE;
    return hd_is_lclass(c) ? (uint32_t)hd_cls_npages(c) << HD_PAGE_SHIFT : hd_class_to_size[c];
}
static inline unsigned hd_cls_nobjs(unsigned c)
{
    if (c == HD_CHUNK_CLASS)
        return HD_CHUNK_PAGES;
    return hd_is_lclass(c) ? 1u : hd_class_to_nobjs[c];
}
static inline uint32_t hd_cls_divmagic(unsigned c)
{
    return c == HD_CHUNK_CLASS || hd_is_lclass(c) ? UINT32_MAX / hd_cls_size(c) + 1 : hd_class_to_divmagic[c];
}

/* The large class of a request of HD_MAX_SMALL_SIZE < size <= HD_MAX_CLASS_SIZE
 * bytes (0 outside that range): the smallest whose pages hold it. */
static inline unsigned hd_large_to_class(size_t size)
{
    if (size <= HD_MAX_SMALL_SIZE || size > HD_MAX_CLASS_SIZE)
        return 0;
    size_t pages = (size + HD_PAGE_SIZE - 1) >> HD_PAGE_SHIFT;
    unsigned k = 0;
    while (hd_lclass_npages[k] < pages)
        k++;
    return HD_FIRST_LARGE_CLASS + k;
}

/* Startup self-check of the tables (the checks Go's mallocinit makes, plus
 * the invariants above). Returns false and writes a message to err
 * (truncated to errlen, may be NULL/0) when a table is inconsistent. */
bool hd_sizeclasses_check(char *err, size_t errlen);

#endif
