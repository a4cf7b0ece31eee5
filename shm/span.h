/* span: the object-state protocol that replaces Go's GC sweep.
 *
 * Each object of a small span has a state byte (layout.h: FREE, ALLOCATED,
 * FREED, and who may make which move):
 *  - allocation (owner only): the owner finds a FREE byte (freeindex +
 *    allocCache, in the client: a 64-bit mask of FREE bytes) and stores
 *    ALLOCATED. The owner is the client thread caching the span, or the daemon
 *    while it is CENTRAL: one writer of FREE bytes, so a plain store.
 *  - free (any thread of any process): find the span by the pagemap, the index
 *    by divMagic, check the address is an object start, then one CAS
 *    ALLOCATED -> FREED. A FREED byte is a double free (not yet swept), a FREE
 *    byte an invalid or double free (after the sweep); neither is written.
 *  - sweep (owner only): every FREED byte becomes FREE. That is the whole
 *    sweep; the count of bytes that are not FREE afterwards is the live count.
 * Since a free checks and sets in one step, there are no stale free bits: a
 * double free is caught, or (once the slot was handed out again) frees the
 * object that lives there at that moment: never a later one.
 * Class-2 spans (16 B objects) serve the tiny allocator: each 16 B block packs
 * objects under 16 B, and its word in the span's aux area (layout.h) records
 * where live objects start and where objects end. The block's state stays
 * ALLOCATED until the last object is freed and no cache holds it open; only
 * then is it FREED (by whoever took the word to 0, with a plain store: see
 * hd_tiny_block_freed). A 16-byte request is a block holding one object. Tiny
 * frees are validated exactly (the start bit must be set) and their usable
 * size is known (the next end bit).
 */
#ifndef HEAPD_SHM_SPAN_H
#define HEAPD_SHM_SPAN_H

#include <stdbool.h>
#include <stdint.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "segment.h"

/* ThreadSanitizer cannot see a vector load of atomic bytes as atomic: under
 * it the masks read byte by byte (the portable path). */
#if defined(__SANITIZE_THREAD__)
#define HD_STATES_SIMD 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HD_STATES_SIMD 0
#endif
#endif
#ifndef HD_STATES_SIMD
#if defined(__SSE2__)
#define HD_STATES_SIMD 1
#else
#define HD_STATES_SIMD 0
#endif
#endif

enum hd_free_result {
    HD_FREE_OK = 0,
    HD_FREE_LARGE,       /* p is a large object: free it with FreeLarge */
    HD_FREE_NOT_HEAP,    /* p is not in the heap pages or not in a live span */
    HD_FREE_NOT_START,   /* p is inside an object, not at its start */
    HD_FREE_NOT_LIVE,    /* the object is not allocated (invalid or double free) */
    HD_FREE_DOUBLE,      /* already freed and not yet swept */
    HD_FREE_REMOTE,      /* (owner-local hook only) not the caller's span: take the shared path */
};

/* The state bytes of small span id of class sizeclass: in its slot, or for
 * class 1 (1024 objects, the only class with more than HD_SLOT_STATES; the
 * span suite checks it) in its aux area. A compare, not a table load: this
 * is on every free. */
#define HD_STATES_AUX_CLASS 1u
typedef _Atomic uint8_t hd_ostate_t;
static inline hd_ostate_t *hd_states_of(const hd_seg_t *s, uint32_t id, unsigned sizeclass)
{
    return sizeclass == HD_STATES_AUX_CLASS ? s->tiny[id].state : s->slots[id].state;
}

static inline hd_slot_t *hd_slot_of(const hd_seg_t *s, uint32_t id) { return &s->slots[id]; }

/* Bytes of state a span of class c needs (nelems, rounded up to 64-object
 * windows: the allocCache reads whole windows). */
static inline unsigned hd_states_len(unsigned nelems) { return (nelems + 63) & ~63u; }

/* Object i's state, as the owner reads it (relaxed: the owner's own writes,
 * or a FREE/ALLOCATED it only compares). */
static inline uint8_t hd_obj_state(const hd_ostate_t *st, unsigned i)
{
    return atomic_load_explicit((hd_ostate_t *)&st[i], memory_order_relaxed);
}

/* Object i's state as anyone reads it (heapd_usable_size): acquire, pairs
 * with the release of hd_obj_alloc. */
static inline uint8_t hd_obj_state_acquire(const hd_ostate_t *st, unsigned i)
{
    return atomic_load_explicit((hd_ostate_t *)&st[i], memory_order_acquire);
}

/* Owner only: object i (FREE) is allocated. A plain store: nobody else ever
 * writes a FREE byte. Release, so that a process that learns of the object
 * through shared memory and frees it (CAS acquire) finds it ALLOCATED. */
static inline void hd_obj_alloc(hd_ostate_t *st, unsigned i)
{
    HD_DEBUG_CHECK(hd_obj_state(st, i) == HD_OBJ_FREE, "allocating object %u in state %u", i, hd_obj_state(st, i));
    atomic_store_explicit(&st[i], HD_OBJ_ALLOCATED, memory_order_release);
}

/* Anyone: free object i: one CAS ALLOCATED -> FREED. acq_rel: release so the
 * owner's sweep (acquire) sees the freer's last writes to the object before
 * handing it out again; acquire pairs with hd_obj_alloc's release. */
static inline enum hd_free_result hd_obj_free(hd_ostate_t *st, unsigned i)
{
    uint8_t want = HD_OBJ_ALLOCATED;
    if (atomic_compare_exchange_strong_explicit(&st[i], &want, HD_OBJ_FREED, memory_order_acq_rel,
                                                memory_order_relaxed))
        return HD_FREE_OK;
    return want == HD_OBJ_FREED ? HD_FREE_DOUBLE : HD_FREE_NOT_LIVE;
}

/* The owner thread's own free (issue 9, item 3): the thread whose cache
 * holds the span (an exact claim: client/mcache.c's owner table) frees with
 * a load and a plain store of FREED, no RMW. Sound because every other write
 * to this byte that could fall between the two is the owner's own (its
 * allocation and its sweep: the same thread, so never between them); the one
 * that can is a remote double free's CAS of the same allocation, and then
 * both report success: the object is FREED once, memstats count two frees,
 * and the double free goes unreported (a program bug, raced within
 * nanoseconds). The byte reads FREED at once, so validation elsewhere and
 * heapd_usable_size stay exact, and the owner's next sweep folds it like any
 * free. tests/test_span.c runs the two steps (hd_obj_state, then
 * hd_obj_free_plain_from) against the owner and remote frees in every order.
 * A stale claim would break that (a sweep of another thread could fall
 * between), which is why the table is exact. */
static inline enum hd_free_result hd_obj_free_plain_from(hd_ostate_t *st, unsigned i, uint8_t b)
{
    if (b != HD_OBJ_ALLOCATED)
        return b == HD_OBJ_FREED ? HD_FREE_DOUBLE : HD_FREE_NOT_LIVE;
    atomic_store_explicit(&st[i], HD_OBJ_FREED, memory_order_relaxed);   /* its sweep is this thread's */
    return HD_FREE_OK;
}

static inline enum hd_free_result hd_obj_free_plain(hd_ostate_t *st, unsigned i)
{
    return hd_obj_free_plain_from(st, i, hd_obj_state(st, i));
}

/* Owner only (the sweep of one object): FREED -> FREE, in two steps:
 * hd_obj_freed, an acquire load (pairs with the release of hd_obj_free, so
 * the freer's writes to the object happen before the owner hands it out
 * again), then hd_obj_unfree, a plain store: nobody else writes a FREED byte.
 * hd_obj_sweep does both; returns whether the object was FREED. */
static inline bool hd_obj_freed(const hd_ostate_t *st, unsigned i)
{
    return atomic_load_explicit((hd_ostate_t *)&st[i], memory_order_acquire) == HD_OBJ_FREED;
}
static inline void hd_obj_unfree(hd_ostate_t *st, unsigned i)
{
    atomic_store_explicit(&st[i], HD_OBJ_FREE, memory_order_relaxed);
}
static inline bool hd_obj_sweep(hd_ostate_t *st, unsigned i)
{
    if (!hd_obj_freed(st, i))
        return false;
    hd_obj_unfree(st, i);
    return true;
}

/* Daemon, making a span: every state byte of it FREE. Atomic stores, not a
 * memset: a free that passed its span check before the span's pages went
 * back may still CAS a byte here (it fails: the byte is not ALLOCATED), and
 * atomics on both sides keep that a defined race. */
static inline void hd_states_reset(hd_ostate_t *st, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        atomic_store_explicit(&st[i], HD_OBJ_FREE, memory_order_relaxed);
}

/* Bit k set iff byte k of the first min(n, 64) bytes at st (a 64-aligned
 * window) equals v; bits from n up are 0 or 1, don't care (callers mask).
 * Reads whole 16-byte chunks. Relaxed as a whole: the owner builds its
 * allocCache from FREE bytes, which only it writes. */
static inline uint64_t hd_states_mask(const hd_ostate_t *st, uint8_t v, unsigned n)
{
#if HD_STATES_SIMD
    const __m128i *p = (const __m128i *)(const void *)st, want = _mm_set1_epi8((char)v);
    uint64_t m = 0;
    for (unsigned k = 0; k < 4 && 16 * k < n; k++)
        m |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_load_si128(p + k), want)) << (16 * k);
    return m;
#else
    uint64_t m = 0;
    for (unsigned k = 0; k < 64 && k < n; k++)
        m |= (uint64_t)(hd_obj_state(st, k) == v) << k;
    return m;
#endif
}

static inline uint64_t hd_states_mask64(const hd_ostate_t *st, uint8_t v) { return hd_states_mask(st, v, 64); }

/* The allocCache word of window w: bit k set iff object 64w+k is FREE. Bytes
 * of any other value (ALLOCATED, FREED, or a scribble) are never handed out. */
static inline uint64_t hd_states_free_mask(const hd_ostate_t *st, unsigned w)
{
    return hd_states_mask64(st + 64 * w, HD_OBJ_FREE);
}

/* Mask of the first n % 64 objects of the last window (all 64 when n%64 == 0). */
static inline uint64_t hd_window_mask(unsigned nelems, unsigned w)
{
    unsigned left = nelems - 64 * w;
    return left >= 64 ? ~0ull : (1ull << left) - 1;
}

/* Objects that are not FREE among the first nelems: live ones (ALLOCATED),
 * freed ones not yet swept, and scribbles. At most nelems whatever a process
 * wrote. */
static inline unsigned hd_span_inuse(const hd_ostate_t *st, unsigned nelems)
{
    unsigned n = 0;
    for (unsigned w = 0; w * 64 < nelems; w++)
        n += (unsigned)__builtin_popcountll(~hd_states_mask(st + 64 * w, HD_OBJ_FREE, nelems - 64 * w) &
                                            hd_window_mask(nelems, w));
    return n;
}

/* Owner only: sweep: every FREED object of the first nelems becomes FREE.
 * Returns the objects still not FREE (live); *nfreed (if not NULL) gets how
 * many frees were swept. Bounded by nelems whatever the bytes hold.
 * With the vector masks (HD_STATES_SIMD): nobody but the owner writes a
 * FREED or a FREE byte (a free CASes only ALLOCATED ones), so what the mask
 * read FREED is still FREED at the store, and one acquire fence after the
 * masks orders the freers' writes to the objects (their CAS released them)
 * before we hand the objects out. Each FREED byte then gets a plain store of
 * FREE, and a 16-byte chunk whose bytes all read FREED or FREE one vector
 * store (a chunk may reach past nelems, the state bytes of a span being
 * whole 64-byte windows: those bytes must read FREE or FREED too, and become
 * FREE; no object lives there). Without them (TSan) each object goes through
 * hd_obj_sweep (an acquire load, then the store). (A hostile process that
 * scribbles a byte between the look and the store has it overwritten with
 * FREE, as if it had written FREE: still only state values, counts still
 * bounded by nelems.) The live count is what was
 * neither FREE nor swept: a byte that turns FREED meanwhile was ALLOCATED,
 * not FREE, either way. */
typedef struct hd_sweep_look {
    uint64_t freed, free;            /* FREED and FREE objects among the window's first n */
    uint64_t quiet;                  /* SIMD: bytes of the chunks read (past n too) that were FREED or FREE */
} hd_sweep_look_t;

/* The sweep of one 64-object window (n objects of it in the span), in its
 * two steps: look reads the masks, apply stores FREE; frees of other
 * threads may fall between them (tests/test_span.c runs that gap in every
 * order). apply returns the objects it made FREE. */
static inline hd_sweep_look_t hd_sweep_look(const hd_ostate_t *ws, unsigned n)
{
    uint64_t win = n >= 64 ? ~0ull : (1ull << n) - 1;
    uint64_t fa = hd_states_mask(ws, HD_OBJ_FREED, n), ea = hd_states_mask(ws, HD_OBJ_FREE, n);
    hd_sweep_look_t v = {fa & win, ea & win, fa | ea};
#if HD_STATES_SIMD
    if (v.freed)
        atomic_thread_fence(memory_order_acquire);
#endif
    return v;
}

static inline uint64_t hd_sweep_apply(hd_ostate_t *ws, unsigned n, const hd_sweep_look_t *v)
{
    uint64_t swept = 0;
#if HD_STATES_SIMD
    for (unsigned k = 0; k < 4 && 16 * k < n; k++) {
        uint64_t ck = 0xffffull << (16 * k);
        if ((v->freed & ck) && (v->quiet & ck) == ck) {
            _mm_store_si128((__m128i *)(void *)(ws + 16 * k), _mm_set1_epi8((char)HD_OBJ_FREE));
            swept |= v->freed & ck;
        }
    }
    for (uint64_t m = v->freed & ~swept; m; m &= m - 1)
        hd_obj_unfree(ws, (unsigned)__builtin_ctzll(m));
    return v->freed;
#else
    (void)n;
    for (uint64_t m = v->freed; m; m &= m - 1) {
        unsigned i = (unsigned)__builtin_ctzll(m);
        if (hd_obj_sweep(ws, i))
            swept |= 1ull << i;
    }
    return swept;
#endif
}

static inline unsigned hd_span_sweep_ex(hd_ostate_t *st, unsigned nelems, unsigned *nfreed, uint64_t *free0)
{
    unsigned live = 0, freed = 0;
    for (unsigned w = 0; w * 64 < nelems; w++) {
        unsigned n = nelems - 64 * w;
        hd_ostate_t *ws = st + 64 * w;
        hd_sweep_look_t v = hd_sweep_look(ws, n);
        uint64_t swept = v.freed ? hd_sweep_apply(ws, n, &v) : 0;
        live += (unsigned)__builtin_popcountll(hd_window_mask(nelems, w) & ~(v.free | swept));
        freed += (unsigned)__builtin_popcountll(swept);
        if (w == 0 && free0)
            *free0 = v.free | swept;
    }
    if (nfreed)
        *nfreed = freed;
    return live;
}

/* hd_span_sweep_ex without free0. With free0 (not NULL), it also gets the
 * FREE mask of window 0 after the sweep (what hd_states_free_mask would
 * read), so that an owner starting over at object 0 need not read back, with
 * a vector load, bytes it just stored (a load that waits for those stores). */
static inline unsigned hd_span_sweep(hd_ostate_t *st, unsigned nelems, unsigned *nfreed)
{
    return hd_span_sweep_ex(st, nelems, nfreed, NULL);
}

static inline hd_tiny_t *hd_tiny_of(const hd_seg_t *s, uint32_t id) { return &s->tiny[id]; }

/* Daemon, making a class-2 span: every block word 0 (atomic stores for the
 * reason given at hd_states_reset). */
static inline void hd_tiny_reset(hd_tiny_t *t)
{
    for (unsigned b = 0; b < HD_TINY_BLOCKS; b++)
        atomic_store_explicit(&t->block[b], 0, memory_order_relaxed);
}

/* A block word, as anyone reads it (usable size, the daemon closing open
 * blocks): acquire, pairs with the owner's release store of a new block
 * word and the frees' CAS. */
static inline uint32_t hd_tiny_word(const hd_tiny_t *t, unsigned b)
{
    return atomic_load_explicit(&((hd_tiny_t *)t)->block[b], memory_order_acquire);
}

/* Owner only: block b (its state just became ALLOCATED) starts with word w.
 * Release: a free that finds one of its objects (CAS acquire) sees it. */
static inline void hd_tiny_start(hd_tiny_t *t, unsigned b, uint32_t w)
{
    atomic_store_explicit(&t->block[b], w, memory_order_release);
}

/* Owner only: pack one more object into its open block b (bits: its start
 * and end). fetch_or, because frees of the block's other objects CAS the
 * word at the same time. Release: pairs with the acquire of those frees. */
static inline void hd_tiny_pack(hd_tiny_t *t, unsigned b, uint32_t bits)
{
    atomic_fetch_or_explicit(&t->block[b], bits, memory_order_release);
}

/* A tiny free or close is two steps: the word step (one CAS on the block
 * word; the retries of its loop change nothing), then, for the one whose
 * CAS took the word to 0 (the last one out), the block's state byte
 * ALLOCATED -> FREED with a plain release store, not a CAS: a class-2 block
 * is ALLOCATED before its word is ever non-zero (the owner stores the state,
 * then the word with release, which our acq_rel CAS acquires), nobody but the
 * last one out moves an ALLOCATED block byte (a class-2 free always goes
 * through the word), and only one CAS takes the word to 0. So the byte is
 * ALLOCATED and ours alone at the store (tests/test_span.c runs both steps
 * against the owner's in every order). Release, as in hd_obj_free: the
 * owner's sweep acquires it before handing the block out again. */
static inline enum hd_free_result hd_tiny_block_freed(hd_ostate_t *st, unsigned b)
{
    atomic_store_explicit(&st[b], HD_OBJ_FREED, memory_order_release);
    return HD_FREE_OK;
}

/* The word step of freeing the tiny object starting at byte j of block b:
 * clear its start bit; *last: this CAS took the word to 0. */
static inline enum hd_free_result hd_tiny_clear(hd_tiny_t *t, unsigned b, unsigned j, bool *last)
{
    *last = false;
    uint32_t w = atomic_load_explicit(&t->block[b], memory_order_relaxed), nw;
    do {
        if (!(w & (1u << j)))
            return HD_FREE_NOT_LIVE;
        nw = w & ~(1u << j);
        if ((nw & 0xffffu) == 0 && !(nw & HD_TINY_OPEN))
            nw = 0;                                  /* last one out resets the block */
        /* acq_rel: acquire pairs with the owner's release of hd_tiny_start /
         * hd_tiny_pack (the object's bits are its own); release, so the
         * owner that reuses a reset block sees the frees before it */
    } while (!atomic_compare_exchange_weak_explicit(&t->block[b], &w, nw, memory_order_acq_rel,
                                                    memory_order_relaxed));
    *last = nw == 0;
    return HD_FREE_OK;
}

/* Free the tiny object starting at byte j of block b. *block_freed says
 * whether this free also freed the block (it was the last one out). */
static inline enum hd_free_result hd_tiny_free_ex(hd_ostate_t *st, hd_tiny_t *t, unsigned b, unsigned j,
                                                  bool *block_freed)
{
    enum hd_free_result r = hd_tiny_clear(t, b, j, block_freed);
    return *block_freed ? hd_tiny_block_freed(st, b) : r;
}

static inline enum hd_free_result hd_tiny_free(hd_ostate_t *st, hd_tiny_t *t, unsigned b, unsigned j)
{
    bool freed;
    return hd_tiny_free_ex(st, t, b, j, &freed);
}

/* Close block b: clear its open bit. If no object in it is live, the word
 * resets and the block itself is freed (its state FREED; the next sweep
 * makes it FREE). The cache that opened the block calls this when it moves to
 * another block or gives the span back; an open block always lies in a span
 * its client caches, so the daemon closes every block still open in the
 * class-2 spans it reclaims from a client that is gone. */
static inline void hd_tiny_unopen(hd_tiny_t *t, unsigned b, bool *last)
{
    *last = false;
    uint32_t w = atomic_load_explicit(&t->block[b], memory_order_relaxed), nw;
    do {
        if (!(w & HD_TINY_OPEN))
            return;                                  /* not open: nothing to do */
        nw = w & ~HD_TINY_OPEN;
        if ((nw & 0xffffu) == 0)
            nw = 0;
        /* acq_rel: as in hd_tiny_clear; pairs with the frees' CAS */
    } while (!atomic_compare_exchange_weak_explicit(&t->block[b], &w, nw, memory_order_acq_rel,
                                                    memory_order_relaxed));
    *last = nw == 0;
}

static inline enum hd_free_result hd_tiny_close_ex(hd_ostate_t *st, hd_tiny_t *t, unsigned b, bool *block_freed)
{
    hd_tiny_unopen(t, b, block_freed);
    return *block_freed ? hd_tiny_block_freed(st, b) : HD_FREE_OK;
}

static inline enum hd_free_result hd_tiny_close(hd_ostate_t *st, hd_tiny_t *t, unsigned b)
{
    bool freed;
    return hd_tiny_close_ex(st, t, b, &freed);
}

/* Usable bytes of the tiny object starting at byte j of block word w. */
static inline unsigned hd_tiny_usable(uint32_t w, unsigned j)
{
    uint32_t ends = (w >> 16 & 0x7fffu) >> j;        /* ends at bytes >= j */
    unsigned end = ends ? j + (unsigned)__builtin_ctz(ends) : 15;
    return end - j + 1;
}

/* ---- page chunks (issue 9) ----------------------------------------------------
 * A span of class HD_CHUNK_CLASS has HD_CHUNK_PAGES pages and one state byte
 * per page, in its slot. The client thread caching it carves large-class
 * objects (a run of their class's pages) out of it; the byte of an object's
 * first page says what it is, every other byte of the chunk is FREE (0):
 *     bits 0..1  HD_OBJ_ALLOCATED or HD_OBJ_FREED (never both bits)
 *     bits 2..6  the object's large class - HD_FIRST_LARGE_CLASS + 1 (1..20)
 * so a free finds the object (the page's index, as for any span), checks it
 * (its byte says ALLOCATED) and learns its size from the same byte it
 * CASes: the class a free counts is the one the allocation wrote, whatever
 * happens to the pages after (memstats count bytes from one source).
 * The moves, as for a small span's bytes (layout.h): FREE -> ALLOCATED by
 * the owner (release store, after it picked the pages from its private map
 * of the chunk); ALLOCATED -> FREED by anyone (CAS); FREED -> FREE by the
 * owner's sweep; ALLOCATED -> FREE by the owner's own free (CAS: a remote
 * free may race it). A byte the owner never wrote (a scribble) is never
 * taken for an object: the owner trusts its private map, not the bytes, to
 * know where objects start and how long they are. The daemon frees a CENTRAL
 * chunk only when every byte of it is FREE, and never hands one with a live
 * object to another client (daemon/mcentral.h). */
static inline uint8_t hd_chunk_byte(unsigned c, uint8_t state)
{
    return (uint8_t)((c - HD_FIRST_LARGE_CLASS + 1u) << 2 | state);
}

/* The large class a chunk byte names, or 0 (FREE, or a scribble). */
static inline unsigned hd_chunk_cls(uint8_t b)
{
    unsigned k = b >> 2;
    return k >= 1 && k <= HD_NUM_LARGE_CLASSES && (b & 3u) ? HD_FIRST_LARGE_CLASS + k - 1u : 0;
}

/* Owner only: the object of class c starting at page i is allocated. */
static inline void hd_chunk_alloc(hd_ostate_t *st, unsigned i, unsigned c)
{
    atomic_store_explicit(&st[i], hd_chunk_byte(c, HD_OBJ_ALLOCATED), memory_order_release);
}

/* Free the object starting at page i, whose byte read b: ALLOCATED -> to
 * (FREED: anyone; FREE: the owner). One CAS from b, so check and set are one
 * step (a second free sees FREED or FREE); acq_rel as in hd_obj_free. *cls
 * gets the class b named. A CAS that fails found the byte changed since b was
 * read: the object b named was freed by another free meanwhile, so this is a
 * double free, reported and not retried on what the byte says now: that may
 * be an object allocated since, of another class, and a free must never free
 * an object allocated after it began (a retry did: tests/test_span.c, "chunk
 * bytes"). Reuse by the same class between the read and the CAS is the one
 * case no byte can tell: the free then frees the new object, as a free issued
 * at its CAS would. */
static inline enum hd_free_result hd_chunk_free_from(hd_ostate_t *st, unsigned i, uint8_t b, uint8_t to, unsigned *cls)
{
    unsigned c = hd_chunk_cls(b);
    if (!c || (b & 3u) != HD_OBJ_ALLOCATED)
        return c && (b & 3u) == HD_OBJ_FREED ? HD_FREE_DOUBLE : HD_FREE_NOT_LIVE;
    uint8_t want = b, set = to == HD_OBJ_FREE ? 0 : (uint8_t)((b & ~3u) | to);
    if (!atomic_compare_exchange_strong_explicit(&st[i], &want, set, memory_order_acq_rel, memory_order_relaxed))
        return HD_FREE_DOUBLE;
    *cls = c;
    return HD_FREE_OK;
}

/* hd_chunk_free_from of the byte as it is now. */
static inline enum hd_free_result hd_chunk_free_to(hd_ostate_t *st, unsigned i, uint8_t to, unsigned *cls)
{
    return hd_chunk_free_from(st, i, hd_obj_state(st, i), to, cls);
}

/* Owner only: free its own object of class c at page i (its map says one
 * starts there): exactly ALLOCATED|c -> FREE, one CAS (a remote free may
 * race it on this byte); acq_rel as in hd_obj_free. */
static inline enum hd_free_result hd_chunk_free_owner(hd_ostate_t *st, unsigned i, unsigned c)
{
    uint8_t want = hd_chunk_byte(c, HD_OBJ_ALLOCATED);
    if (atomic_compare_exchange_strong_explicit(&st[i], &want, HD_OBJ_FREE, memory_order_acq_rel,
                                                memory_order_relaxed))
        return HD_FREE_OK;
    return want == hd_chunk_byte(c, HD_OBJ_FREED) ? HD_FREE_DOUBLE : HD_FREE_NOT_LIVE;
}

/* Usable bytes of the live object starting at page i of a chunk, or 0.
 * Acquire: pairs with hd_chunk_alloc. */
static inline size_t hd_chunk_live_size(const hd_ostate_t *st, unsigned i)
{
    uint8_t b = hd_obj_state_acquire(st, i);
    unsigned c = hd_chunk_cls(b);
    return c && (b & 3u) == HD_OBJ_ALLOCATED ? hd_cls_size(c) : 0;
}

/* The daemon's sweep of a chunk it owns (CENTRAL): FREED bytes become FREE;
 * returns the bytes still not FREE (live objects, and scribbles: counted
 * live, so the chunk is not freed under them). */
static inline unsigned hd_chunk_sweep(hd_ostate_t *st)
{
    unsigned live = 0;
    for (unsigned i = 0; i < HD_CHUNK_PAGES; i++) {
        uint8_t b = hd_obj_state_acquire(st, i);
        if (b && hd_chunk_cls(b) && (b & 3u) == HD_OBJ_FREED)
            hd_obj_unfree(st, i);
        else
            live += b != 0;
    }
    return live;
}

/* The owner-local free (issue 9, item 3): a client passes a hook that, for
 * an object of a page chunk CACHED by client `me`, frees it as the chunk's
 * owner when the calling thread is the one caching the chunk (ALLOCATED ->
 * FREE, its pages back in the thread's map at once, no sweep) and returns
 * the result with *cls, or returns HD_FREE_REMOTE when another thread caches
 * it. Why a CAS and not a plain store: a free by another process may race on
 * the same ALLOCATED byte (a double free across processes); with a load and
 * a store both could succeed, the object counted freed twice and, worse, a
 * remote FREED landing after our FREE and a reallocation would be swept
 * FREE under a live object. (A small object's owner thread frees with a
 * plain store of FREED instead, hd_obj_free_plain: it never makes the byte
 * FREE, so a remote FREED cannot land under a reallocation before the
 * owner's own sweep.) */
typedef enum hd_free_result (*hd_free_local_fn)(uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls);

/* The free path for any pointer, from any process. Small objects and
 * large-class objects (in page chunks) are freed here; LARGE spans are
 * reported as HD_FREE_LARGE for the caller's RPC. *idp gets the span id when
 * one was found. On HD_FREE_OK, *cls gets the size class of the object that
 * became FREED or FREE (for memstats), or 0 when none was freed: a tiny
 * object whose block still holds others. local (may be NULL) is the
 * owner-local hook above, for spans CACHED by client me. */
static inline __attribute__((always_inline)) enum hd_free_result
hd_free_impl(const hd_seg_t *s, void *p, uint32_t *idp, unsigned *cls, uint32_t me, hd_free_local_fn local, bool defer,
             const _Atomic uint32_t *owners, uint32_t tid)
{
    *cls = 0;
    uint32_t id = hd_span_of(s, p);
    if (id == HD_NO_SPAN)
        return HD_FREE_NOT_HEAP;
    *idp = id;
    const hd_span_t *sp = &s->spans[id];
    uint8_t st = hd_span_state(sp);
    uintptr_t off = (uintptr_t)p - hd_page_addr(s, id);
    if (st == HD_SPAN_LARGE)
        return off == 0 ? HD_FREE_LARGE : HD_FREE_NOT_START;
    if (st != HD_SPAN_CACHED && st != HD_SPAN_CENTRAL)
        return HD_FREE_NOT_HEAP;
    if (sp->sizeclass == HD_TINY_SIZE_CLASS) {      /* tiny objects start at any byte */
        bool block;
        enum hd_free_result r = hd_tiny_free_ex(hd_states_of(s, id, HD_TINY_SIZE_CLASS), hd_tiny_of(s, id), (unsigned)(off / HD_TINY_SIZE),
                                                (unsigned)(off % HD_TINY_SIZE), &block);
        *cls = block ? HD_TINY_SIZE_CLASS : 0;
        return r;
    }
    unsigned i = (unsigned)(((uint64_t)off * sp->divmagic) >> 32);
    if (i >= sp->nelems)
        return HD_FREE_NOT_START;                   /* in the span's tail waste */
    if ((uintptr_t)i * sp->elemsize != off)
        return HD_FREE_NOT_START;
    hd_ostate_t *states = hd_states_of(s, id, sp->sizeclass);
    if (sp->sizeclass == HD_CHUNK_CLASS) {          /* a large-class object carved from a chunk */
        if ((local || defer) && st == HD_SPAN_CACHED && sp->owner == me) {
            if (defer)
                return HD_FREE_REMOTE;   /* nothing written: the caller calls hd_free_by with its hook */
            enum hd_free_result r = local(id, states, i, cls);
            if (r != HD_FREE_REMOTE)
                return r;
        }
        return hd_chunk_free_to(states, i, HD_OBJ_FREED, cls);
    }
    *cls = sp->sizeclass;
    if (owners && atomic_load_explicit(&owners[id], memory_order_relaxed) == tid)
        return hd_obj_free_plain(states, i);        /* the calling thread's own span */
    return hd_obj_free(states, i);
}

static inline enum hd_free_result hd_free_by(const hd_seg_t *s, void *p, uint32_t *idp, unsigned *cls, uint32_t me,
                                             hd_free_local_fn local)
{
    return hd_free_impl(s, p, idp, cls, me, local, false, NULL, 0);
}

/* hd_free_by for a caller that wants its common path free of calls (the
 * client's heapd_free): an object the owner-local hook would take (a
 * large-class object of a chunk CACHED by me) is left alone and reported as
 * HD_FREE_REMOTE, and the caller frees it with hd_free_by and its hook. A
 * small object of a span whose owners[] entry is tid (the calling thread's
 * own, an exact claim) is freed with hd_obj_free_plain. */
static inline enum hd_free_result hd_free_by_deferred(const hd_seg_t *s, void *p, uint32_t *idp, unsigned *cls,
                                                      uint32_t me, const _Atomic uint32_t *owners, uint32_t tid)
{
    return hd_free_impl(s, p, idp, cls, me, NULL, true, owners, tid);
}

static inline enum hd_free_result hd_free_ex(const hd_seg_t *s, void *p, uint32_t *idp, unsigned *cls)
{
    return hd_free_by(s, p, idp, cls, 0, NULL);
}

static inline enum hd_free_result hd_free(const hd_seg_t *s, void *p, uint32_t *idp)
{
    unsigned cls;
    return hd_free_ex(s, p, idp, &cls);
}

#endif
