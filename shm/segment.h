/* segment: the layout of the shared heap, as daemon and clients both see it.
 *
 * Two memfds, mapped back to back at the same base address in every process,
 * so that a pointer into the heap means the same object everywhere:
 *
 *   base                                  base + meta_size
 *   | meta memfd (clients: read-only)            | heap memfd (read-write for all)             |
 *   | header | span table | pagemap | roots      | slots | tiny areas | client stats | heap pages ... |
 *
 * The meta memfd is written only by the daemon, through the mapping it made
 * before sealing the memfd with F_SEAL_FUTURE_WRITE; any later mapping is
 * read-only, so a client cannot corrupt the span table even with mprotect.
 * The heap memfd holds what clients must write: objects, per span the
 * alloc/free bitmaps (a "slot"), and for tiny spans the block words.
 *
 * Who writes what:
 *  - header, span table, pagemap, roots directory (roots.h): the daemon's
 *    loop thread only.
 *  - a span's slot: alloc_bits by the span's owner (the client thread caching
 *    it, or the daemon while it is CENTRAL); free_bits and tiny block words by
 *    any process, atomically. See span.h.
 *  - heap pages: whoever holds the objects.
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

#include "sizeclasses.h"

#define HD_MAGIC            0x3176645f70616568ull   /* "heapd_v1" little-endian */
#define HD_LAYOUT_VERSION   3u                      /* 2: client stats slots; 3: roots directory */
#define HD_PROTO_VERSION    2u                      /* 2: RootUpdate */
#define HD_DEFAULT_BASE     0x200000000000ull       /* 32 TiB: far above brk, below mmap_base */
#define HD_SEG_ALIGN        (2u << 20)              /* region alignment: 2 MiB huge pages */
#define HD_HEADER_BYTES     4096u
#define HD_MAX_MSG          65536u                  /* largest RPC packet */
#define HD_MAX_BATCH        64u                     /* spans per Refill/Release/FreeLarge */
#define HD_MAX_NPAGES       (1ull << 31)            /* span ids and pagemap entries are u32 */
#define HD_NO_SPAN          UINT32_MAX
#define HD_NULL_OFFSET      UINT64_MAX              /* an offset no object has (heapd.h HEAPD_NULL_OFFSET) */
#define HD_MAX_ROOTS        1024u                   /* entries of the roots directory (roots.h) */
#define HD_ROOT_BYTES       128u                    /* bytes per entry */
#define HD_ROOTS_BYTES      (HD_MAX_ROOTS * HD_ROOT_BYTES)

/* Span states. The daemon moves spans between them; clients only read them. */
enum hd_span_state {
    HD_SPAN_FREE = 0,    /* pages belong to the page allocator; no objects */
    HD_SPAN_CENTRAL = 1, /* in an mcentral set; the daemon owns alloc_bits */
    HD_SPAN_CACHED = 2,  /* cached by client `owner`; it owns alloc_bits */
    HD_SPAN_LARGE = 3,   /* one large object (sizeclass 0), allocated by `owner` */
};

/* One span, in the span table at its first page. 32 bytes. */
typedef struct hd_span {
    uint32_t npages;            /* pages in the span */
    _Atomic uint8_t state;      /* enum hd_span_state (daemon stores with release) */
    uint8_t sizeclass;          /* 1..67, or 0 for a large span */
    uint8_t needzero;           /* 1: free slots/pages may hold old data (pages reused
                                   unpunched, or the span came back from a cache);
                                   0: everything not allocated reads as zero */
    uint8_t _pad0;
    uint32_t elemsize;          /* bytes per object; npages*8192 for large (0 from 4 GiB: use npages) */
    uint32_t divmagic;          /* hd_class_to_divmagic[sizeclass]; 0 for large */
    uint16_t nelems;            /* objects in the span; 1 for large */
    uint16_t _pad1;
    uint32_t owner;             /* client id while CACHED, allocating client if LARGE */
    uint32_t gen;               /* bumped every time a span starts at this page */
    uint32_t _pad2;
} hd_span_t;
_Static_assert(sizeof(hd_span_t) == 32, "span table entry size");

/* Per-span slot in the heap memfd, at slots_off + id * sizeof(hd_slot_t). */
#define HD_BITMAP_WORDS (HD_MAX_OBJS_PER_SPAN / 64)
typedef struct hd_slot {
    _Atomic uint64_t alloc_bits[HD_BITMAP_WORDS]; /* 1 = allocated (owner writes) */
    _Atomic uint64_t free_bits[HD_BITMAP_WORDS];  /* 1 = freed, not yet swept (anyone) */
} hd_slot_t;
_Static_assert(sizeof(hd_slot_t) == 256, "slot size");

/* Tiny blocks: class-2 spans are cut into 16 B blocks that pack objects under
 * 16 B. Each block has a word in the span's hd_tiny_t (tiny_off + id * 2 KiB;
 * committed only for class-2 spans):
 *   bits  0..15  an object that is still live starts at this byte
 *   bits 16..30  an object allocated in this block ends at byte (bit - 16);
 *                an object whose end has no bit ends at byte 15
 *   bit  31      the block is open: a cache is still packing objects into it
 * A block is free when no start bit is set and it is not open; whoever makes
 * it so (a free, or the cache closing it) resets the word to 0 and frees the
 * block's object in the bitmap. */
#define HD_TINY_BLOCKS  (HD_PAGE_SIZE / HD_TINY_SIZE)  /* 512 blocks in a class-2 span */
#define HD_TINY_OPEN    (1u << 31)
typedef struct hd_tiny {
    _Atomic uint32_t block[HD_TINY_BLOCKS];
} hd_tiny_t;
_Static_assert(sizeof(hd_tiny_t) == 2048, "tiny area size");

/* Client stats slots (memstats, Go's consistentHeapStats): one per connected
 * client, at cstats_off + slot * sizeof(hd_cstats_t) in the heap memfd. The
 * daemon assigns a slot at Hello (Welcome.slot; slot 0 is never used, so 0
 * means none), zeroes it and writes `owner`; the client adds its threads'
 * counters into it under `seq` (odd while an update is under way) on refill,
 * release, thread exit, heapd_flush and detach; the daemon reads it without
 * an RPC, retrying while seq is odd or changed, and folds it into retired
 * totals when the client disconnects. Counters only grow.
 *  - small_allocs[c]: objects of class c allocated (class 2: 16 B tiny blocks)
 *  - small_frees[c]:  objects of class c freed by this process (tiny blocks
 *                     when their last object goes, or their cache closes them)
 *  - tiny_allocs:     tiny objects packed into an open block (Go's
 *                     tinyAllocCount: counted as a malloc and a free at once)
 *  - large_*:         large objects and their bytes (whole pages)
 *  - mcache_bytes:    a gauge: bytes of this process's thread caches */
#define HD_STAT_SLOTS       4096u
typedef struct hd_cstats {
    _Atomic uint64_t seq;                /* odd while the client updates the counters */
    _Atomic uint32_t owner;              /* client id the daemon gave the slot to */
    uint32_t _pad0;
    _Atomic uint64_t small_allocs[HD_NUM_SIZE_CLASSES];
    _Atomic uint64_t small_frees[HD_NUM_SIZE_CLASSES];
    _Atomic uint64_t tiny_allocs;
    _Atomic uint64_t large_allocs, large_alloc_bytes;
    _Atomic uint64_t large_frees, large_free_bytes;
    _Atomic uint64_t mcache_bytes;
    _Atomic uint64_t flushes;            /* updates made (diagnostics) */
    uint64_t _reserved[256 - 2 - 2 * HD_NUM_SIZE_CLASSES - 7];
} hd_cstats_t;
_Static_assert(sizeof(hd_cstats_t) == 2048, "client stats slot size");

/* The first 4 KiB of the meta memfd. Layout fields are fixed at creation; the
 * books below them are published by the daemon after every change. */
typedef struct hd_header {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t proto_version;
    uint64_t base;              /* address of the meta mapping in every process */
    uint64_t meta_size;         /* bytes of the meta memfd; the heap maps at base+meta_size */
    uint64_t heap_size;         /* bytes of the heap memfd */
    uint64_t npages;            /* heap pages */
    uint64_t span_off;          /* meta offset of hd_span_t[npages] */
    uint64_t pagemap_off;       /* meta offset of uint32_t[npages] */
    uint64_t slots_off;         /* heap-memfd offset of hd_slot_t[npages] */
    uint64_t tiny_off;          /* heap-memfd offset of hd_tiny_t[npages] */
    uint64_t pages_off;         /* heap-memfd offset of page 0 (2 MiB aligned) */
    uint64_t cstats_off;        /* heap-memfd offset of hd_cstats_t[HD_STAT_SLOTS] */
    uint64_t roots_off;         /* meta offset of hd_root_t[HD_MAX_ROOTS] (roots.h) */
    uint64_t _layout_reserved[3];

    /* daemon books (relaxed atomics; `books_seq` bumps after each update) */
    _Atomic uint64_t books_seq;
    _Atomic uint64_t spans_inuse;       /* spans not FREE */
    _Atomic uint64_t spans_cached;
    _Atomic uint64_t spans_central;
    _Atomic uint64_t spans_large;
    _Atomic uint64_t pages_inuse;       /* pages in spans */
    _Atomic uint64_t pages_grown;       /* pages the page allocator has taken on */
    _Atomic uint64_t objects_central;   /* live objects in CENTRAL spans, as of their last sweep */
    _Atomic uint64_t clients;           /* connected clients */
    _Atomic uint64_t clients_total;     /* clients ever accepted */
    _Atomic uint64_t refills;           /* Refill requests served */
    _Atomic uint64_t bad_requests;      /* requests refused as invalid */
    /* limits and the scavenger (daemon/scavenge.h says what each counts) */
    _Atomic uint64_t soft_limit, hard_limit;        /* bytes, 0 = none */
    _Atomic uint64_t committed_bytes;   /* heap pages in use + free unreleased, + metadata */
    _Atomic uint64_t released_bytes;    /* free heap pages returned to the OS (or never touched) */
    _Atomic uint64_t overshoot_max;     /* most committed_bytes ever exceeded soft_limit by */
    _Atomic uint64_t scavenged_total;   /* bytes released since start */
    _Atomic uint64_t scavenge_runs;     /* background slices + forced passes */
    _Atomic uint64_t pressure_sent, flush_sent;     /* unsolicited messages sent */
    _Atomic uint64_t hard_limit_refusals;           /* ENOMEM from the hard limit or a quota */
} hd_header_t;
_Static_assert(sizeof(hd_header_t) <= HD_HEADER_BYTES, "header fits its page");

/* A process's view of a mapped segment (filled from the header at attach). */
typedef struct hd_seg {
    hd_header_t *hdr;
    hd_span_t *spans;
    uint32_t *pagemap;
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
    s->pagemap = (uint32_t *)(meta + hdr->pagemap_off);
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

/* Span id of the live span holding p, or HD_NO_SPAN (p outside the heap pages
 * or on a page no span covers). */
static inline uint32_t hd_span_of(const hd_seg_t *s, const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (a < s->pages)
        return HD_NO_SPAN;
    uint64_t page = (a - s->pages) >> HD_PAGE_SHIFT;
    if (page >= s->npages)
        return HD_NO_SPAN;
    uint32_t e = __atomic_load_n(&s->pagemap[page], __ATOMIC_ACQUIRE);
    return e ? e - 1 : HD_NO_SPAN;
}

/* Offsets, for data that must outlive a mapping: relative to heap page 0. */
static inline uint64_t hd_offset_of(const hd_seg_t *s, const void *p) { return (uintptr_t)p - s->pages; }

/* Parse a size the way GOMEMLIMIT does: digits with an optional B, KiB, MiB,
 * GiB or TiB suffix (also K/M/G/T and KB/MB/GB/TB, as powers of 1024).
 * Returns 0 and *out, or -1 for anything else (empty, junk, overflow). */
int hd_parse_size(const char *s, uint64_t *out);

/* The default socket path, shared by heapd and libheapd: $HEAPD_SOCKET, else
 * $XDG_RUNTIME_DIR/heapd.sock, else /tmp/heapd-UID/heapd.sock. 0, or -1 if it
 * does not fit in len. */
int hd_default_socket(char *buf, size_t len);

#endif
