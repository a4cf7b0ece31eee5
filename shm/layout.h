/* layout: every struct that lives in the shared segment, and who may touch
 * which field of it, when, and with which memory order.
 *
 * Two memfds, mapped back to back at the same base address in every process
 * (segment.h has the layout computation and the accessors):
 *
 *   base                                  base + meta_size
 *   | meta memfd (clients: read-only)     | heap memfd (read-write for all)             |
 *   | header | span table | pagemap | roots | slots | aux areas | client stats | heap pages ... |
 *
 * The rules below are the protocol. Every cross-process access goes through
 * an inline function of shm/ (segment.h: header books, span publish and
 * lookup, pagemap; span.h: object state bytes, tiny words; cstats.h: the
 * stats-slot seqlock); daemon/ and client/ never name a shared atomic.
 *
 * FIELD TABLE. "daemon" is the daemon's loop thread (one thread); "owner" is
 * the one party allowed to allocate from a small span: the client thread
 * caching it (state CACHED, span.owner = its client id) or the daemon (state
 * CENTRAL). "anyone" is any thread of any process mapping the segment,
 * hostile ones included: the daemon trusts nothing in the heap memfd.
 *
 * | field                         | writer            | readers          | ordering                                  | hand-over                              |
 * |-------------------------------|-------------------|------------------|-------------------------------------------|----------------------------------------|
 * | header layout fields          | daemon, at create | everyone         | none (before any client maps it)          | never changes                          |
 * | header books (spans_*, ...)   | daemon            | everyone         | relaxed, inside the books_seq seqlock     | -                                      |
 * | header books_seq              | daemon            | books readers    | odd (relaxed) + release fence on the      | -                                      |
 * |                               |                   |                  | first change of a batch, even (release)   |                                        |
 * |                               |                   |                  | at hd_books_end; readers acquire/retry    |                                        |
 * | span table entry except state | daemon            | everyone         | plain, ordered by the state store below   | written only while the span is FREE    |
 * |                               |                   |                  |                                           | or by the daemon before a publish      |
 * | span.state                    | daemon            | everyone         | release store (hd_span_publish), LAST     | CACHED: to the client owner; CENTRAL:  |
 * |                               |                   |                  | after fields, slot and pagemap; readers   | back to the daemon; FREE: pages back   |
 * |                               |                   |                  | load acquire (hd_span_state)              | to the page allocator                  |
 * | pagemap[p]                    | daemon            | everyone         | release store before the state publish;   | set while the span is still FREE,      |
 * |                               |                   |                  | acquire load (hd_span_of)                 | cleared after it went FREE             |
 * | slot/aux object state bytes   | see below         | owner, free path | see below                                 | with the span's owner                  |
 * | aux tiny block words (cls 2)  | owner (new block),| anyone           | owner: release store of a new block word, | the word of a FREE object is the       |
 * |                               | anyone (CAS)      |                  | packing fetch_or (release); frees and     | owner's; of an ALLOCATED block anyone's|
 * |                               |                   |                  | closes CAS acq_rel                        | (CAS)                                  |
 * | cstats slot counters (its own | its client        | daemon           | relaxed, inside the slot's seq seqlock    | daemon gives the slot at Hello (owner) |
 * |  memfd, not in the heap; incl.|                   |                  |                                           |                                        |
 * |  lclass_*, refill_wait*)      |                   |                  |                                           |                                        |
 * | cstats.seq                    | its client        | daemon           | odd + release fence, even release; the    | -                                      |
 * |                               |                   |                  | daemon loads acquire, fence, reloads      |                                        |
 * | cstats.owner                  | daemon            | daemon, heapctl  | release store at assign/retire            | assign: to the client at Hello;        |
 * |                               |                   |                  |                                           | retire: back only once the process is  |
 * |                               |                   |                  |                                           | dead or detached (the slot's lease)    |
 * | roots directory entries       | daemon            | everyone         | per-entry seqlock: seq odd (relaxed) +    | -                                      |
 * |                               |                   |                  | release fence, fields relaxed, seq even   |                                        |
 * |                               |                   |                  | (release); readers acquire/retry (roots.h)|                                        |
 * | heap pages                    | the object holder | the holder       | the program's own synchronization         | alloc (owner) / free (anyone)          |
 *
 * OBJECT STATE BYTES. Each object of a small span has one _Atomic uint8_t:
 *   FREE (0) -> ALLOCATED (1):  owner only, plain release store. Nobody else
 *                               ever writes a FREE byte, so no RMW is needed.
 *   ALLOCATED -> FREED (2):     anyone, one compare_exchange (acq_rel): check
 *                               and set are one step, so a second free of the
 *                               same allocation sees FREED (double free) or
 *                               FREE (after the sweep) and writes nothing.
 *                               The owner thread itself (an exact claim:
 *                               client/mcache.c's owner table): a load, then a
 *                               plain store (span.h hd_obj_free_plain); a
 *                               remote double free racing it goes unreported.
 *   FREED -> FREE:              owner only (its sweep), acquire load then
 *                               plain store. Nobody else writes a FREED byte.
 *   ALLOCATED -> FREE:          page chunks only: the owner thread's own free
 *                               of a large-class object (span.h
 *                               hd_chunk_free_owner, a CAS because a remote
 *                               free may race it on the same byte).
 * Page chunks (span class 88, sizeclasses.h) have one byte per page that
 * also names the class of the object starting there (span.h "Page chunks"):
 * the same moves, by the same parties; their CENTRAL chunks are the daemon's
 * to sweep and free, never to hand out while an object in them lives
 * (docs/design.md "Large classes"). A free of a large-class object is the
 * CAS above, never a message, so none is lost when a process dies.
 * So a "stale free bit" cannot exist: a free either lands on the allocation
 * it was meant for, or on a later allocation of the same slot at the moment
 * it runs (a double free after reuse frees the new object then; no allocator
 * without generations can tell), never on an allocation made after it.
 * Any other value (a hostile process wrote it) reads as "not FREE": never
 * allocated, counted live, never freed; the owner never loops on it.
 *
 * What stays outside shm/: daemon/ and client/ name no shared atomic. The
 * atomics left there are process-private: the client's connection state,
 * epoch and generation counters (attach.c, transport.c, pressure.c), its
 * bad-free count (malloc.c), and its cache count and per-thread memstats
 * counters (mcache.c, cstats.c: st_thread_t, mc_tls_frees), which other
 * threads of the same process read when they flush them.
 *
 * Where the bytes are: objects 0..511 in the span's slot (HD_SLOT_STATES
 * bytes per page of the slot array, enough for every class but class 1);
 * class 1 (8 B objects, 1024 per span) keeps all 1024 in the span's aux area
 * instead, which otherwise holds the tiny block words of class-2 spans.
 */
#ifndef HEAPD_SHM_LAYOUT_H
#define HEAPD_SHM_LAYOUT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "sizeclasses.h"

#define HD_MAGIC            0x3176645f70616568ull   /* "heapd_v1" little-endian */
#define HD_LAYOUT_VERSION   6u                      /* 2: client stats slots; 3: object state bytes;
                                                       4: roots directory; 5: large classes, refill
                                                       waits in the stats slot; 6: page chunks */
#define HD_PROTO_VERSION    5u                      /* 2: RootUpdate; 3: Refill of large classes 68..87;
                                                       4: families (ForkBegin/ForkDone, full reclaim);
                                                       5: Refill of page chunks (88), not of 68..87 */
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

/* Span states. The daemon moves spans between them; clients only read them.
 * Legal moves (HEAPD_DEBUG asserts them at every publish):
 *   FREE -> CENTRAL | CACHED | LARGE,  CENTRAL <-> CACHED,
 *   CENTRAL | CACHED | LARGE -> FREE. */
enum hd_span_state {
    HD_SPAN_FREE = 0,    /* pages belong to the page allocator; no objects */
    HD_SPAN_CENTRAL = 1, /* in an mcentral set; the daemon owns the FREE/FREED bytes */
    HD_SPAN_CACHED = 2,  /* cached by client `owner`; it owns the FREE/FREED bytes */
    HD_SPAN_LARGE = 3,   /* one large object (sizeclass 0), allocated by `owner` */
};

/* Object states (one byte per object of a small span; the rules above). */
enum hd_obj_state {
    HD_OBJ_FREE = 0,
    HD_OBJ_ALLOCATED = 1,
    HD_OBJ_FREED = 2,    /* freed, not yet swept */
};

/* One span, in the span table at its first page. 32 bytes.
 * The daemon writes every field while the span is FREE (or, for owner and
 * needzero, while it owns the span), then the slot and the pagemap, and
 * stores `state` LAST with release order (hd_span_publish): a process that
 * loads the state with acquire (hd_span_state) sees all of the rest. */
typedef struct hd_span {
    uint32_t npages;            /* pages in the span */
    _Atomic uint8_t state;      /* enum hd_span_state: stored last, release */
    uint8_t sizeclass;          /* 1..67 small, 88 a page chunk, 0 for a LARGE span */
    uint8_t needzero;           /* 1: free slots/pages may hold old data (pages reused
                                   unpunched, or the span came back from a cache);
                                   0: everything not allocated reads as zero */
    uint8_t _pad0;
    uint32_t elemsize;          /* bytes per object; npages*8192 for large (0 from 4 GiB: use npages) */
    uint32_t divmagic;          /* hd_class_to_divmagic[sizeclass]; 0 for large */
    uint16_t nelems;            /* objects in the span (a chunk: its pages); 1 for LARGE */
    uint16_t _pad1;
    uint32_t owner;             /* client id while CACHED, allocating client if LARGE */
    uint32_t gen;               /* bumped every time a span starts at this page */
    uint32_t _pad2;
} hd_span_t;
_Static_assert(sizeof(hd_span_t) == 32, "span table entry size");

/* Per-span slot in the heap memfd, at slots_off + id * sizeof(hd_slot_t):
 * the state bytes of objects 0..HD_SLOT_STATES-1 (all of a span's objects,
 * except for class 1, whose 1024 live in the aux area). */
#define HD_SLOT_STATES 512u
typedef struct hd_slot {
    _Alignas(64) _Atomic uint8_t state[HD_SLOT_STATES];     /* enum hd_obj_state per object; 64-aligned
                                                               windows are read 16 bytes at a time */
} hd_slot_t;
_Static_assert(sizeof(hd_slot_t) == HD_SLOT_STATES, "slot size");
_Static_assert(HD_CHUNK_PAGES <= HD_SLOT_STATES, "a page chunk's bytes fit its slot");

/* Aux area: tiny_off + id * 2 KiB, committed for class-1 and class-2 spans.
 *
 * Class 1: the 1024 object state bytes (the slot has room for 512).
 *
 * Class 2: spans cut into 16 B blocks that pack objects under 16 B. Each
 * block has a word:
 *   bits  0..15  an object that is still live starts at this byte
 *   bits 16..30  an object allocated in this block ends at byte (bit - 16);
 *                an object whose end has no bit ends at byte 15
 *   bit  31      the block is open: a cache is still packing objects into it
 * A block is free when no start bit is set and it is not open; whoever makes
 * it so (a free, or the cache closing it) resets the word to 0 and frees the
 * block's object (its state byte ALLOCATED -> FREED). */
#define HD_TINY_BLOCKS  (HD_PAGE_SIZE / HD_TINY_SIZE)  /* 512 blocks in a class-2 span */
#define HD_TINY_OPEN    (1u << 31)
typedef union hd_tiny {
    _Atomic uint32_t block[HD_TINY_BLOCKS];             /* class 2 */
    _Alignas(64) _Atomic uint8_t state[HD_MAX_OBJS_PER_SPAN];   /* class 1 */
} hd_tiny_t;
_Static_assert(sizeof(hd_tiny_t) == 2048, "aux area size");
_Static_assert(HD_TINY_BLOCKS <= HD_SLOT_STATES, "class-2 states fit the slot");

/* Client stats slots (memstats, Go's consistentHeapStats): one per connected
 * client, each in a one-page memfd of its own (sealed SHRINK|GROW|SEAL) that
 * the daemon maps and passes to that client alone, as the third fd of its
 * Welcome: no other client has a mapping of it, so none can write it. (The
 * array at cstats_off in the heap memfd is what they used to be: nothing
 * reads or writes it any more; it stays until the next layout change so
 * that the offsets after it do not move.) The daemon assigns a slot at Hello
 * (Welcome.slot, its number; slot 0 is never used, so 0 means none), zeroes
 * it and writes `owner`; the client adds its threads'
 * counters into it under `seq` (odd while an update is under way) on refill,
 * release, thread exit, heapd_flush and detach; the daemon reads it without
 * an RPC, retrying while seq is odd or changed, and folds it into retired
 * totals when the client disconnects. Counters only grow. cstats.h has the
 * writer and the reader.
 *  - small_allocs[c]: objects of class c allocated (class 2: 16 B tiny blocks)
 *  - small_frees[c]:  objects of class c freed by this process (tiny blocks
 *                     when their last object goes, or their cache closes them)
 *  - tiny_allocs:     tiny objects packed into an open block (Go's
 *                     tinyAllocCount: counted as a malloc and a free at once)
 *  - large_*:         large objects and their bytes (whole pages)
 *  - mcache_bytes:    a gauge: bytes of this process's thread caches
 *  - lclass_allocs/frees[k]: objects of large class 68+k (also in large_*,
 *                     with the class's bytes, counted at alloc and at free
 *                     from the same class table)
 *  - refill_waits, refill_wait_ns: allocations that blocked on the daemon
 *                     (a Refill or AllocLarge they waited for, or a refill
 *                     submitted ahead whose reply had not come) and the time
 *  - bad_frees:       invalid and double frees this process detected (all of
 *                     them, including those its rate-limited reports left out) */
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
    _Atomic uint64_t lclass_allocs[HD_NUM_LARGE_CLASSES];
    _Atomic uint64_t lclass_frees[HD_NUM_LARGE_CLASSES];
    _Atomic uint64_t refill_waits, refill_wait_ns;
    _Atomic uint64_t bad_frees;
    uint64_t _reserved[256 - 2 - 2 * HD_NUM_SIZE_CLASSES - 7 - 2 * HD_NUM_LARGE_CLASSES - 3];
} hd_cstats_t;
_Static_assert(sizeof(hd_cstats_t) == 2048, "client stats slot size");

/* The first 4 KiB of the meta memfd. Layout fields are fixed at creation; the
 * books below them are published by the daemon under books_seq (segment.h:
 * hd_book_add/hd_book_set write, hd_books_end closes a batch,
 * hd_books_snapshot reads a consistent copy). */
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
    uint64_t tiny_off;          /* heap-memfd offset of hd_tiny_t[npages] (aux areas) */
    uint64_t pages_off;         /* heap-memfd offset of page 0 (2 MiB aligned) */
    uint64_t cstats_off;        /* heap-memfd offset of the old hd_cstats_t[HD_STAT_SLOTS]: unused */
    uint64_t roots_off;         /* meta offset of hd_root_t[HD_MAX_ROOTS] (roots.h) */
    uint64_t _layout_reserved[3];

    /* daemon books: a seqlock, books_seq odd while a batch is under way */
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
    _Atomic uint64_t resident_gap_bytes;            /* memfds' st_blocks beyond committed_bytes, as
                                                       last measured (released pages a client dirtied) */
} hd_header_t;
_Static_assert(sizeof(hd_header_t) <= HD_HEADER_BYTES, "header fits its page");

/* The books, first to last (hd_books_snapshot copies this range: every
 * field in it is an _Atomic uint64_t, and the last one ends the header). */
#define HD_BOOKS_FIRST spans_inuse
#define HD_BOOKS_LAST  resident_gap_bytes
_Static_assert(offsetof(hd_header_t, HD_BOOKS_FIRST) == offsetof(hd_header_t, books_seq) + 8 &&
                   offsetof(hd_header_t, HD_BOOKS_LAST) + 8 == sizeof(hd_header_t),
               "books are one run of u64 after books_seq");

#endif
