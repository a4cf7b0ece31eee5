/* mheap: spans, the span table, the pagemap and the page allocator.
 *
 * Owns (daemon loop thread only, no locks):
 *  - the page allocator over the segment's heap pages (pagealloc.h);
 *  - every write to the span table and the pagemap in the meta memfd;
 *  - the header books about spans and pages;
 *  - a daemon-private record per span (list links, last-swept live count),
 *    indexed by span id like the span table, in a MAP_NORESERVE mapping.
 *
 * A span's life (Go's mheap.allocSpan / freeSpan):
 *   mheap_alloc_span: pages from pa_alloc (growing the heap by >= 128 MiB when
 *     it fails), backing committed, object states (and tiny words) reset,
 *     span fields written, pagemap[p] = id+1 for its pages, then the state
 *     published (shm/layout.h: the state is stored last, with release).
 *   mheap_set_state: CACHED <-> CENTRAL (mcentral).
 *   mheap_free_span: state FREE first (frees in flight stop at the state
 *     check), then the pagemap is cleared and the pages go back.
 *
 * Invariants (mheap_check verifies them):
 *  - spans[p].state != FREE  <=>  p is the first page of a live span;
 *  - pagemap[q] == p+1 for every page q of the live span at p, 0 on free pages;
 *  - spans[p].gen counts the spans ever created at page p, so (id, gen) names
 *    one span for its whole life (FreeLarge refuses stale names);
 *  - header books equal what the span table says; books_seq is odd while a
 *    batch of book changes is under way and even after mheap_publish;
 *  - pages the page allocator calls scavenged may lack backing; everything a
 *    client can reach (span pages, slot, tiny area, table entries) is committed.
 */
#ifndef HEAPD_DAEMON_MHEAP_H
#define HEAPD_DAEMON_MHEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pagealloc.h"
#include "memfd.h"

#define MHEAP_GROW_PAGES 16384u   /* grow the page allocator by at least 128 MiB */

/* Which kind of daemon list a span is on (span_priv_t.list). */
enum span_list {
    SL_NONE = 0,
    SL_PARTIAL,     /* CENTRAL, has a free slot (mcentral) */
    SL_FULL,        /* CENTRAL, no free slot as of its last sweep (mcentral) */
    SL_CACHED,      /* CACHED, on its owner's list (client) */
};

/* Daemon-private per-span record, at the span's id. */
typedef struct span_priv {
    uint32_t next, prev;        /* list links, HD_NO_SPAN at the ends */
    uint16_t live;              /* objects live as of the daemon's last sweep (CENTRAL) */
    uint8_t list;               /* enum span_list */
    uint8_t _pad;
    uint32_t pool;              /* mcentral's pool (0: the shared one; else a family's,
                                   whose spans only its members cache: mcentral.h) */
} span_priv_t;

/* A doubly-linked list of spans through span_priv_t links. */
typedef struct spanlist {
    uint32_t head, tail;        /* HD_NO_SPAN when empty */
    uint32_t n;
} spanlist_t;

typedef struct mheap {
    seg_t *seg;
    hd_seg_t *v;                /* &seg->view */
    hd_header_t *hdr;
    pagealloc_t pa;
    span_priv_t *priv;          /* [npages], MAP_NORESERVE */
    size_t priv_len;
    bool punch_broken;          /* a hole punch failed: no page is known zero any more */
    /* Limits (memlimit.c; all NULL without them). admit runs before a span
     * takes pages: 0, or -ENOMEM to refuse (nothing changed). on_alloc and
     * on_free run after a span was made / before its pages go back. */
    int (*admit)(void *ctx, uint64_t npages, uint32_t owner);
    void (*on_alloc)(void *ctx, uint32_t id, uint64_t npages, uint32_t owner);
    void (*on_free)(void *ctx, uint32_t id, uint64_t npages);
    void *limits_ctx;
} mheap_t;

/* Set up over a created segment. 0 or -errno. */
int mheap_init(mheap_t *h, seg_t *seg);
void mheap_destroy(mheap_t *h);

/* Allocate a span of npages pages. sizeclass 1..67 or 88 makes a small span
 * or a page chunk (npages must be the class's), CACHED by owner; sizeclass 0
 * a large one, LARGE with
 * owner the allocating client. align_pages 0/1: page aligned, else a power of
 * two: the span's address is a multiple of align_pages*8192. Returns the span
 * id, -ENOMEM (no room, or no backing store: nothing changed) or -EINVAL. */
int64_t mheap_alloc_span(mheap_t *h, uint64_t npages, unsigned sizeclass, uint32_t owner, uint64_t align_pages);

/* Free a live span (it must be on no list). 0 or -EINVAL (not a live span). */
int mheap_free_span(mheap_t *h, uint32_t id);

/* Move a live small span to CENTRAL (owner 0) or CACHED (owner = client id),
 * keeping the books; the owner is written before the state. */
void mheap_set_state(mheap_t *h, uint32_t id, enum hd_span_state st, uint32_t owner);

/* The header books are a seqlock (shm/segment.h): every change opens a
 * batch (books_seq odd), mheap_publish closes it (even) once the books agree
 * with each other again. Call it after each complete batch of changes. */
static inline void mheap_publish(mheap_t *h) { hd_books_end(h->hdr); }
static inline void mheap_book_add(mheap_t *h, _Atomic uint64_t *b, int64_t d) { hd_book_add(h->hdr, b, d); }

/* Whether span-table entry id may be read: inside the grown heap and on a
 * committed page of the table. A span's entry is committed when the span is
 * made, so an entry that fails this is FREE. Ids from clients and walks over
 * the table ask first: an uncommitted page reads as zero, but the read commits
 * it (a tmpfs read fault fills the hole) behind the books' back. */
bool mheap_entry_ok(mheap_t *h, uint64_t id);
/* The first span in use at id or after, or pa.grown when there is none. A
 * walk over the spans: for (id = mheap_next_span(h, 0); id < h->pa.grown;
 * id = mheap_next_span(h, id + npages)). Reads committed entries only. */
uint64_t mheap_next_span(mheap_t *h, uint64_t id);

/* hd_live_size (shm/live.h) of the object at heap offset off, for offsets a
 * client sent: 0 outside the grown heap or on an uncommitted pagemap page. */
size_t mheap_live_size(mheap_t *h, uint64_t off);

static inline hd_span_t *mheap_span(mheap_t *h, uint32_t id) { return &h->v->spans[id]; }
static inline uint8_t mheap_state(mheap_t *h, uint32_t id) { return hd_span_state_own(&h->v->spans[id]); }

/* Span lists (O(1) push/remove/pop). A span is on at most one list. */
void spanlist_init(spanlist_t *l);
void spanlist_push(mheap_t *h, spanlist_t *l, uint32_t id, enum span_list kind);   /* at the tail */
void spanlist_remove(mheap_t *h, spanlist_t *l, uint32_t id);
uint32_t spanlist_pop(mheap_t *h, spanlist_t *l);                                   /* head, or HD_NO_SPAN */

/* Verify the invariants above against the page allocator (slow; tests). */
bool mheap_check(mheap_t *h, char *err, size_t errlen);

#endif
