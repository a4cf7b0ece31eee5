/* mcache.c: the per-thread span cache (Go's mcache) and everything that
 * allocates: small objects from cached spans, tiny objects packed into 16 B
 * blocks, large objects by RPC.
 *
 * Owns: one hd_mcache_t per thread (mmap'd on first use, never malloc'd;
 * found through a TLS pointer, registered in a list so detach and fork can
 * reach every cache, and flushed by a pthread key destructor at thread exit).
 * Only its thread touches a cache, so nothing in it is locked.
 *
 * The common path of a small malloc is inline in mc_alloc_small and makes no
 * call (the TLS load, the class lookup, nextFreeFast); everything else is
 * mc_alloc_full.
 *
 * Small allocation, per size class (Go's mallocgc small path):
 *   cur span: freeindex + allocCache (a 64-bit mask of the FREE object
 *   states of the window at freeindex); nextFreeFast is a ctz; the owner
 *   then stores the object's state ALLOCATED (shm/span.h: a byte store, no
 *   atomic RMW), so the segment always knows what is live.
 *   When cur is exhausted:
 *     0. (small classes of >= 8 objects per span, with kept full spans)
 *        cur's count needs no read:
 *        every object that was FREE when its windows were read is allocated
 *        now. If the oldest kept span, swept, has half of it free, it becomes
 *        cur and cur joins the back of the kept spans unswept: its state
 *        bytes were just stored, and sweeping them at once reads them back
 *        with vector loads that wait for those stores (bench/peers larson:
 *        +7%, docs/performance.md). Else:
 *     1. sweep it (FREED states, from local and remote frees, become FREE);
 *        at least an eighth of it free again → rewind and go on (less is
 *        not worth it: a program that frees one object per allocation would
 *        pay a sweep per allocation);
 *     2. else it joins the class's full spans, kept for their frees;
 *        take a span from the stash (the rest of the last refill batch);
 *     3. else sweep the kept full spans, oldest first, and take the first
 *        with an eighth free (see mc_reuse_full for why not less);
 *     4. else Refill a batch (below).
 *   Bound: a class keeps at most mc_keep_full(c) = clamp(2 MiB / span
 *   bytes, 1, 64) full spans; when another one joins, the oldest is
 *   released (async Release). Keeping full spans costs no memory (their
 *   objects are live either way) and saves a round trip each time frees
 *   make room in them; the bound caps the sweeping a slow path can do.

 * The batch rule. A refill costs one round trip (microseconds); a span holds
 * from 1 (32 KiB class) to 1024 (8 B class) objects. The largest batch for
 * class c is
 *     mc_batch_max(c) = clamp(min(ceil(256 objects / objects per span),
 *                                 256 KiB / span bytes), 1, 32)
 * so a hot class gets >= 256 objects per round trip when that costs at most
 * 256 KiB, and otherwise 256 KiB of spans (e.g. 8 objects of 32 KiB, 3 spans
 * of 80 KiB). Cold classes should not pin 256 KiB per thread, so batches grow
 * with demand (tcmalloc's slow start): the n-th refill of a class in a row
 * asks for min(2^(n-1), mc_batch_max(c)) spans; a flush (thread exit, daemon
 * Flush, heapd_flush) starts the class over at 1.
 *
 * Tiny objects (Go's mallocgcTiny, with explicit free): sizes 1..15 pack into
 * the cache's open 16 B block, a class-2 object whose block word
 * (segment.h) records each object's start and end; the open bit keeps the
 * block allocated while we pack into it. Alignment by size as in Go (size%8
 * == 0 → 8, %4 → 4, %2 → 2), or what aligned_alloc asks for, up to 16. A new
 * block replaces the open one when it has more room left, as in Go; closing
 * a block clears the open bit and frees the block if nothing in it is live.
 * Invariant: an open block lies in a span this cache holds, so a span is
 * never released while its block is open, and a dead client's open blocks
 * are all in spans the daemon reclaims. A 16 B request takes a whole block
 * (start bit 0, never open).
 *
 * Zeroing (calloc), as Go does it: a span the daemon hands out with
 * needzero == 0 has never been cached before and reads as zero wherever no
 * object is allocated (segment.h: the daemon sets needzero when a span comes
 * back from a cache). Such a span is "fresh" in the cache until one of our
 * sweeps folds a free, because until then every slot we hand out has never
 * been used; calloc clears an object only when its span is not fresh. Tiny
 * objects are always cleared (a few bytes). Large objects are cleared when
 * their span's needzero is set.
 *
 * Large classes (issue 9; shm/sizeclasses.h): a request above 32 KiB up to
 * 1 MiB with at most page alignment is an object of a large class, a run of
 * its class's pages carved out of one of the thread's page chunks
 * (pagecache.c: 2 MiB spans of class HD_CHUNK_CLASS, address-ordered first
 * fit). The thread frees its own objects into its map at once (the
 * owner-local free below); frees by other threads and processes are CASes to
 * FREED that the chunk's sweep folds when no chunk has a run for a request.
 * Only then does the thread ask the daemon for another chunk (one Refill,
 * counted as a wait): a pool of buffers whose live bytes wander reuses the
 * same pages for every size and never asks again below its high-water
 * (docs/performance.md: buffer-pool pages in spans / live). Wholly free
 * chunks go back by low-water decay (mc_chunk_trim), and after a Flush from
 * the daemon (a limit is near) for MC_LARGE_TIGHT_FOR bytes of large-class
 * allocation none is kept and no new chunk is taken: a request no chunk has
 * room for is one AllocLarge round trip of its class's pages, as is one whose
 * chunk the daemon refuses (ENOMEM: a hard limit or quota with less than
 * 2 MiB of room). A thread that exits leaves its chunks that hold a live
 * object to the process's other threads (mc_orphans: adopted before a
 * Refill). A thread with PC_MAX_CHUNKS chunks gives back the fullest
 * one (its live objects stay valid: the daemon keeps it until they are
 * freed) before it takes another.
 * Objects are counted one by one (st_counts small_allocs[c] at allocation,
 * mc_tls_frees[c] at free; cstats.c adds them to the large totals with the
 * class's bytes). Larger requests, or larger alignments, are one AllocLarge
 * round trip each.
 *
 * Refills ahead (issue 9): when a small class that has refilled at least
 * twice in a row takes the last span of its stash, it submits the next Refill at once
 * (tp_refill_submit) and collects it when it runs dry again, after its kept
 * spans had their chance (a cache never grows while frees refill it). At most
 * one refill per class and cache is in flight; a release cancels it (the
 * spans go back when they come), and so does a class that did not collect
 * it within the cache's next MC_AHEAD_STALE refills (it went cold); a class
 * refills ahead only while it is among the cache's last MC_AHEAD_RECENT
 * refills, so classes a program visits in turn do not each hold a batch.
 * Chunks do not come ahead: one is 2 MiB, memory held for nothing under a
 * limit, and a pool needs a new one only when its live bytes pass their
 * high-water. An allocation that blocks on the daemon (a
 * synchronous Refill, a collect whose reply has not come, an AllocLarge) is
 * counted with its time in refill_waits / refill_wait_ns.
 *
 * Owner-local free (issue 9): a free of a large-class object of one of the
 * calling thread's chunks makes it FREE at once and puts its pages back in
 * the thread's map (pc_free: one CAS, see shm/span.h for why not a plain
 * store). Small objects take the shared path (docs/design.md "The owner's
 * plain free").
 *
 * Stale caches: detach and the fork child reset every cache directly
 * (mc_forget_all_locked); hdc_epoch makes any cache that escaped that forget
 * its spans at its next slow path. A Flush from the daemon bumps tp_flush_gen;
 * a cache that sees a new value at a slow path gives its spans back.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"
#include "lockorder.h"
#include "pagecache.h"

#define MC_BATCH_CAP 32u                /* spans per refill, at most (<= HD_MAX_BATCH) */
#define MC_REFILL_OBJS 256u
#define MC_REFILL_BYTES (256u << 10)
#define MC_KEEP_BYTES (2u << 20)       /* full spans a class may keep, in bytes... */
#define MC_KEEP_CAP 64u                 /* ...and in spans */
#define MC_MAX_REFILLS 4                /* refills per slow path before giving up */
#define MC_MAX_REWINDS 2                /* sweeps of the current span per slow path that found room */
#define MC_ROTATE_MIN_OBJS 8u           /* step 0 for spans of at least this many objects */
#define MC_AHEAD_STREAK 2               /* refills in a row before the class refills ahead */
#define MC_AHEAD_RECENT 4               /* ...the last of them among the cache's last 4 refills */
#define MC_AHEAD_STALE 32               /* a refill ahead not collected within 32 refills goes back */
#define MC_LARGE_TIGHT_FOR (64u << 20)  /* after a Flush (a limit is near), for this many large-class
                                           bytes: no free chunk kept, no refill ahead */
#define MC_CHUNK_PERIOD 8192u           /* large-class allocations and frees of a thread per period of
                                           its chunk trim: at a period's end half of the wholly free
                                           chunks the whole period left unused go back */
_Static_assert(MC_BATCH_CAP <= HD_MAX_BATCH, "a batch fits one message");

typedef struct mc_class {
    mc_span_t cur;                      /* the span allocations come from */
    uint32_t stash[MC_BATCH_CAP];       /* refilled spans not used yet (a stack) */
    uint32_t full[MC_KEEP_CAP];         /* spans full at their last sweep, oldest first */
    uint8_t nstash, nfull;
    uint8_t streak;                     /* refills in a row since the last flush */
    uint64_t ahead;                     /* token of the refill submitted ahead, 0: none */
    uint32_t ahead_at;                  /* the cache's refill clock when `ahead` was asked for */
    uint32_t last_refill;               /* ...and at this class's last refill */
} mc_class_t;

typedef struct hd_mcache {
    mc_class_t cls[HD_NUM_SIZE_CLASSES]; /* small classes (large ones are carved from pc) */
    /* the open tiny block (tiny == 0: none) */
    uintptr_t tiny;                     /* its address */
    unsigned tiny_off;                  /* bytes of it used */
    hd_tiny_t *tiny_words;              /* its span's block words */
    hd_ostate_t *tiny_states;           /* its span's object states */
    uint32_t tiny_span, tiny_block;     /* its span id and block index */
    st_thread_t st;                     /* memstats counters (internal.h, cstats.c) */
    uint32_t rclock;                    /* refills this cache made (its classes' clock) */
    uint64_t tight;                     /* large-class bytes left of keeping no free chunk (after a Flush) */
    uint32_t lticks;                    /* large-class allocations and frees in this period */
    uint32_t empty_low;                 /* the fewest wholly free chunks seen in this period */
    hd_pagecache_t pc;                  /* page chunks: the large classes (pagecache.h) */
    uint64_t epoch;                     /* hdc_epoch when the cache last checked */
    uint64_t flush_gen;                 /* tp_flush_gen when the cache last checked */
    uint32_t tid;                       /* its mark in the owner table (never 0 or UINT32_MAX) */
    struct hd_mcache *next, *prev;      /* the registry (mc_reg_mu) */
} hd_mcache_t;

static __thread hd_mcache_t *mc_tls __attribute__((tls_model("initial-exec")));
__thread _Atomic uint64_t mc_tls_frees[HD_NUM_CLASSES] __attribute__((tls_model("initial-exec")));

/* ---- the owner table (issue 9, item 3) --------------------------------------------------
 * mc_owners[id] is the mark (hd_mcache_t.tid) of the thread whose cache holds
 * small span id, 0 when no thread of this process does. heapd_free compares
 * it with the calling thread's mc_tls_tid and, when they are equal, frees
 * with a load and a plain store (shm/span.h hd_obj_free_plain) instead of a
 * CAS. That is sound only while the claim is exact for the calling thread
 * (a stale one lets another thread's sweep fall between the load and the
 * store: tests/test_span.c), so:
 *  - a span gets a thread's mark only from that thread, when it enters its
 *    cache (mc_stash);
 *  - the mark goes (mc_disown: a CAS from the cache's own mark, so it never
 *    clears another thread's) before the span leaves the cache: given back
 *    (mc_rel_add, before its Release is queued, so no other thread can have
 *    it yet), or forgotten (not ours any more, a new epoch, detach);
 *  - a thread without a cache has the mark UINT32_MAX, which no entry holds;
 *    a cache's mark is new for every cache and never reused;
 *  - a fork child zeroes the table (its parent's threads' marks) and gives
 *    its one cache a new mark.
 * Process-private: one u32 per heap page in an anonymous mapping (attach
 * maps it, mc_owners_map), touched only where spans were cached. */
_Atomic uint32_t *mc_owners;
__thread uint32_t mc_tls_tid __attribute__((tls_model("initial-exec"))) = UINT32_MAX;
static uint64_t mc_owners_len;          /* entries (heap pages) */
static _Atomic uint32_t mc_next_tid;

int mc_owners_map(uint64_t npages)
{
    if (mc_owners && mc_owners_len == npages) {
        madvise((void *)mc_owners, npages * sizeof *mc_owners, MADV_DONTNEED);   /* reads as 0 again */
        return 0;
    }
    if (mc_owners)
        munmap((void *)mc_owners, mc_owners_len * sizeof *mc_owners);
    mc_owners = NULL;
    mc_owners_len = 0;
    void *t = mmap(NULL, npages * sizeof *mc_owners, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (t == MAP_FAILED) {
        errno = ENOMEM;
        return -1;
    }
    mc_owners = t;
    mc_owners_len = npages;
    return 0;
}

static uint32_t mc_new_tid(void)
{
    uint32_t t;
    do
        t = atomic_fetch_add(&mc_next_tid, 1) + 1;
    while (t == 0 || t == UINT32_MAX);
    return t;
}

static void mc_own(hd_mcache_t *mc, uint32_t id)
{
    if (mc_owners && id < mc_owners_len)
        atomic_store_explicit(&mc_owners[id], mc->tid, memory_order_relaxed);
}

static void mc_disown(const hd_mcache_t *mc, uint32_t id)
{
    uint32_t t = mc->tid;
    if (mc_owners && id < mc_owners_len)
        atomic_compare_exchange_strong_explicit(&mc_owners[id], &t, 0, memory_order_relaxed, memory_order_relaxed);
}
static _Atomic unsigned mc_ncaches;     /* registered caches, for the mcache_bytes gauge */
static pthread_mutex_t mc_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static hd_mcache_t *mc_reg;             /* every live cache (mc_reg_mu) */

/* Orphan chunks (mc_reg_mu): page chunks of threads that exited holding a
 * live object in them, with their private maps, for the process's other
 * threads to adopt before they ask the daemon for a chunk (given back, a
 * chunk with a live object would wait at the daemon, its free pages
 * stranded, until that object is freed). At most MC_ORPHANS_MAX; they are
 * swept and the wholly free ones given back at every thread exit, Flush and
 * heapd_flush. Of the epoch mc_orphans_epoch: a new epoch forgets them. */
#define MC_ORPHANS_MAX 8u
static hd_pagecache_t mc_orphans;
static uint64_t mc_orphans_epoch;
static pthread_key_t mc_key;
static pthread_once_t mc_key_once = PTHREAD_ONCE_INIT;

void mc_reg_lock(void)
{
    pthread_mutex_lock(&mc_reg_mu);
    HD_LOCK_TAKEN(HD_LOCK_MC_REG, "mc_reg_mu");
}
void mc_reg_unlock(void)
{
    HD_LOCK_DROPPED(HD_LOCK_MC_REG);
    pthread_mutex_unlock(&mc_reg_mu);
}
void mc_reg_lock_reinit(void) { pthread_mutex_init(&mc_reg_mu, NULL); }

/* ---- rules ------------------------------------------------------------------ */

unsigned mc_batch_max(unsigned c)
{
    unsigned nobj = hd_cls_nobjs(c);
    size_t by_objs = (MC_REFILL_OBJS + nobj - 1) / nobj;
    size_t by_bytes = MC_REFILL_BYTES / hd_span_bytes(c);
    size_t n = by_objs < by_bytes ? by_objs : by_bytes;
    return n < 1 ? 1 : n > MC_BATCH_CAP ? MC_BATCH_CAP : (unsigned)n;
}

unsigned mc_batch_for(unsigned c, unsigned nth)
{
    unsigned max = mc_batch_max(c);
    if (nth == 0)
        nth = 1;
    return nth > 6 || (1u << (nth - 1)) >= max ? max : 1u << (nth - 1);
}

unsigned mc_keep_full(unsigned c)
{
    size_t bytes = hd_span_bytes(c);
    size_t n = MC_KEEP_BYTES / bytes;
    return n < 1 ? 1 : n > MC_KEEP_CAP ? MC_KEEP_CAP : (unsigned)n;
}

unsigned mc_aligned_class(size_t size, size_t align)
{
    if (size > HD_MAX_SMALL_SIZE)
        return 0;
    for (unsigned c = hd_size_to_class(size ? size : 1); c < HD_NUM_SIZE_CLASSES; c++)
        if (hd_class_to_size[c] % align == 0)
            return c;
    return 0;
}

/* ---- one span: freeindex and allocCache (Go's mbitmap.go) ---------------------- */

static inline uint64_t mc_cache_word(const mc_span_t *s, unsigned w)
{
    return hd_states_free_mask(s->states, w);
}

void mc_span_rewind(mc_span_t *s)
{
    s->freeindex = 0;
    s->alloc_cache = s->nelems ? mc_cache_word(s, 0) : 0;
}

/* mc_span_rewind with window 0's FREE mask already known (hd_span_sweep_ex). */
static void mc_span_rewind_to(mc_span_t *s, uint64_t free0)
{
    s->freeindex = 0;
    s->alloc_cache = free0;
}

static void mc_span_clear(mc_span_t *s)
{
    *s = (mc_span_t){.id = HD_NO_SPAN};
}

/* Point s at span id whose sweep just found `live` objects not FREE and
 * folded nfreed frees (the caller swept it). */
static void mc_span_load_swept(mc_span_t *s, const hd_seg_t *seg, uint32_t id, unsigned live, unsigned nfreed,
                               uint64_t free0)
{
    const hd_span_t *sp = &seg->spans[id];
    s->id = id;
    s->base = hd_page_addr(seg, id);
    s->nelems = sp->nelems;
    s->elemsize = sp->elemsize;
    s->states = hd_states_of(seg, id, sp->sizeclass);
    s->live0 = (int32_t)live;        /* allocations are counted from here */
    s->fresh = sp->needzero == 0 && nfreed == 0;
    mc_span_rewind_to(s, free0);
}

void mc_span_load(mc_span_t *s, const hd_seg_t *seg, uint32_t id)
{
    const hd_span_t *sp = &seg->spans[id];
    unsigned nfreed;
    uint64_t free0 = 0;
    unsigned live = hd_span_sweep_ex(hd_states_of(seg, id, sp->sizeclass), sp->nelems, &nfreed, &free0);
    mc_span_load_swept(s, seg, id, live, nfreed, free0);
}

unsigned mc_span_next(mc_span_t *s)
{
    for (;;) {
        if (s->alloc_cache) {
            unsigned b = (unsigned)__builtin_ctzll(s->alloc_cache);
            unsigned r = s->freeindex + b;
            if (r >= s->nelems)
                break;               /* only the tail past nelems was free */
            s->alloc_cache = (s->alloc_cache >> b) >> 1;   /* b+1 may be 64 */
            s->freeindex = r + 1;
            if (s->freeindex % 64 == 0 && s->freeindex < s->nelems)
                s->alloc_cache = mc_cache_word(s, s->freeindex / 64);
            return r;
        }
        unsigned f = (s->freeindex + 64) & ~63u;   /* the next window */
        if (f >= s->nelems)
            break;
        s->freeindex = f;
        s->alloc_cache = mc_cache_word(s, f / 64);
    }
    s->freeindex = s->nelems;
    s->alloc_cache = 0;
    return s->nelems;
}

/* Object i of s is ours now. */
static inline void *mc_take(mc_span_t *s, unsigned i)
{
    hd_obj_alloc(s->states, i);
    return (void *)(s->base + (uintptr_t)i * s->elemsize);
}

/* nextFreeFast: within the current 64-object window only. */
static inline void *mc_fast(mc_span_t *s)
{
    uint64_t c = s->alloc_cache;
    if (hd_likely(c)) {
        unsigned b = (unsigned)__builtin_ctzll(c);
        unsigned r = s->freeindex + b;
        if (hd_likely(r < s->nelems && (r + 1) % 64 != 0)) {
            s->alloc_cache = (c >> b) >> 1;
            s->freeindex = r + 1;
            return mc_take(s, r);
        }
    }
    return NULL;
}

/* ---- the cache's life ------------------------------------------------------------ */

static void mc_thread_exit(void *arg);

static void mc_key_init(void) { pthread_key_create(&mc_key, mc_thread_exit); }

/* Forget the small spans and the tiny block (the chunks stay). */
static void mc_reset_spans(hd_mcache_t *mc)
{
    for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
        mc_class_t *k = &mc->cls[c];
        if (k->cur.id != HD_NO_SPAN)
            mc_disown(mc, k->cur.id);
        for (unsigned i = 0; i < k->nstash; i++)
            mc_disown(mc, k->stash[i]);
        for (unsigned i = 0; i < k->nfull; i++)
            mc_disown(mc, k->full[i]);
        mc_span_clear(&k->cur);
        k->nstash = k->nfull = k->streak = 0;
        k->ahead = 0;
    }
    mc->tiny = 0;
    mc->tiny_off = 0;
    mc->tiny_words = NULL;
}

/* Forget everything the cache holds. */
static void mc_reset(hd_mcache_t *mc)
{
    mc_reset_spans(mc);
    mc->tight = 0;
    mc->lticks = mc->empty_low = 0;
    pc_reset(&mc->pc);
}

/* The calling thread's cache, made on first use. NULL with errno when not
 * attached (no cache is made for nothing). */
static hd_mcache_t *mc_get(void)
{
    hd_mcache_t *mc = mc_tls;
    if (hd_likely(mc != NULL))
        return mc;
    if (atomic_load(&hdc_state) == HDC_DETACHED) {
        errno = ENOTCONN;
        return NULL;
    }
    pthread_once(&mc_key_once, mc_key_init);
    mc = mmap(NULL, sizeof *mc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mc == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    mc->tid = mc_new_tid();
    mc_reset(mc);
    mc->epoch = atomic_load(&hdc_epoch);
    mc->flush_gen = atomic_load(&tp_flush_gen);
    mc_reg_lock();
    mc->prev = NULL;
    mc->next = mc_reg;
    if (mc_reg)
        mc_reg->prev = mc;
    mc_reg = mc;
    atomic_fetch_add(&mc_ncaches, 1);
    mc_reg_unlock();
    mc->st.frees = mc_tls_frees;
    mc_tls = mc;
    mc_tls_tid = mc->tid;
    pthread_setspecific(mc_key, mc);
    return mc;
}

/* Close the open tiny block: clear the open bit; if no object in it is live,
 * the block word resets and the block itself is freed (our sweep folds it). */
static void mc_tiny_close(hd_mcache_t *mc)
{
    if (!mc->tiny)
        return;
    bool freed;
    if (hd_tiny_close_ex(mc->tiny_states, mc->tiny_words, mc->tiny_block, &freed) ==
            HD_FREE_OK && freed)
        st_bump(&mc->st.frees[HD_TINY_SIZE_CLASS], 1);   /* we freed the block (our thread: mc's) */
    mc->tiny = 0;
    mc->tiny_off = 0;
    mc->tiny_words = NULL;
}

/* Ids to release, gathered so a flush takes tp_lock once per batch. */
typedef struct mc_relbuf {
    uint32_t ids[HD_MAX_BATCH];
    unsigned n;
    void (*send)(const uint32_t *ids, unsigned n);   /* NULL: tp_release */
} mc_relbuf_t;

static void mc_rel_add(hd_mcache_t *mc, mc_relbuf_t *rb, uint32_t id)
{
    if (mc->tiny && mc->tiny_span == id)
        mc_tiny_close(mc);           /* never release a span under an open block */
    mc_disown(mc, id);               /* before anyone else can have it */
    rb->ids[rb->n++] = id;
    if (rb->n == HD_MAX_BATCH) {
        (rb->send ? rb->send : tp_release)(rb->ids, rb->n);
        rb->n = 0;
    }
}

/* ---- memstats -------------------------------------------------------------------------- */

/* Count the objects allocated from s since its allocations were last counted
 * (Go counts at refill and release too): only this thread makes states
 * ALLOCATED while it caches s (a remote free turns one FREED, still not
 * FREE), and only its sweeps make them FREE, which recount (live0). */
static void mc_span_account(st_thread_t *st, unsigned c, mc_span_t *s)
{
    if (s->id == HD_NO_SPAN || !s->states)
        return;
    int32_t pop = (int32_t)hd_span_inuse(s->states, s->nelems);
    if (pop > s->live0)
        st_bump(&st->cur.small_allocs[c], (uint64_t)(pop - s->live0));
    s->live0 = pop;
}

/* The slow path's sweep of the current span s, with its count: the objects
 * not FREE before the sweep are those it leaves live plus those it folded
 * (a remote free meanwhile turns ALLOCATED to FREED: not FREE either way),
 * so one pass both counts (as mc_span_account would) and sweeps. */
static uint64_t mc_span_sweep_account(st_thread_t *st, unsigned c, mc_span_t *s)
{
    unsigned nfreed;
    uint64_t free0 = 0;
    int32_t live = (int32_t)hd_span_sweep_ex(s->states, s->nelems, &nfreed, &free0), pop = live + (int32_t)nfreed;
    if (pop > s->live0)
        st_bump(&st->cur.small_allocs[c], (uint64_t)(pop - s->live0));
    s->live0 = live;
    return free0;                    /* window 0's FREE mask after the sweep */
}

/* The current spans of every class (the cache's own thread, or a thread
 * that has stopped). */
static void mc_account(hd_mcache_t *mc)
{
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++)
        mc_span_account(&mc->st, c, &mc->cls[c].cur);
}

static uint64_t mc_cache_bytes(void) { return (uint64_t)atomic_load(&mc_ncaches) * sizeof(hd_mcache_t); }

/* This cache's thread: count and add to the slot. */
static void mc_stats_flush(hd_mcache_t *mc)
{
    if (mc->epoch == atomic_load(&hdc_epoch))
        mc_account(mc);
    st_flush(&mc->st, mc_cache_bytes());
}

void mc_stats_flush_current(void)
{
    if (mc_tls)
        mc_stats_flush(mc_tls);
}

void mc_stats_free_tick(void)
{
    int e = errno;                  /* free() leaves errno alone */
    hd_mcache_t *mc = mc_get();
    errno = e;
    if (mc)
        mc_stats_flush(mc);
}

void mc_count_large(bool alloc, uint64_t bytes)
{
    int e = errno;
    hd_mcache_t *mc = mc_get();
    errno = e;
    if (!mc)
        return;
    st_thread_t *t = &mc->st;
    if (alloc) {
        st_bump(&t->cur.large_allocs, 1);
        st_bump(&t->cur.large_alloc_bytes, bytes);
    } else {
        st_bump(&t->cur.large_frees, 1);
        st_bump(&t->cur.large_free_bytes, bytes);
    }
}

void mc_stats_flush_all_locked(bool all_threads)
{
    mc_reg_lock();
    uint64_t e = atomic_load(&hdc_epoch);
    if (all_threads)
        for (hd_mcache_t *mc = mc_reg; mc; mc = mc->next)
            if (mc->epoch == e)
                mc_account(mc);
    if (!st_have_slot() && atomic_load(&hdc_state) == HDC_FORKED) {
        bool pending = false;       /* a fork child that only freed: it needs a slot of its own */
        for (hd_mcache_t *mc = mc_reg; mc && !pending; mc = mc->next)
            pending = st_pending(&mc->st);
        if (pending)
            (void)hdc_reconnect_locked();
    }
    if (mc_tls && mc_tls->epoch == e)
        mc_account(mc_tls);
    for (hd_mcache_t *mc = mc_reg; mc; mc = mc->next)
        st_flush(&mc->st, mc_cache_bytes());
    mc_reg_unlock();
}

void mc_stats_reset_locked(void)
{
    mc_reg_lock();
    for (hd_mcache_t *mc = mc_reg; mc; mc = mc->next) {
        memset(&mc->st.cur, 0, sizeof mc->st.cur);
        memset(&mc->st.done, 0, sizeof mc->st.done);
        for (unsigned c = 0; mc->st.frees && c < HD_NUM_CLASSES; c++)
            atomic_store_explicit(&mc->st.frees[c], 0, memory_order_relaxed);
    }
    for (unsigned c = 0; c < HD_NUM_CLASSES; c++)
        atomic_store_explicit(&mc_tls_frees[c], 0, memory_order_relaxed);
    mc_reg_unlock();
}

/* Give every span back (async Release through send, NULL: tp_release) and
 * close the tiny block. keep_live: a Flush from the daemon, or a refusal,
 * wants free memory back, and a chunk with a live object in it has less
 * than it seems: given back, its free pages would wait at the daemon for its
 * last object to go, where here they serve the next large allocation. Such
 * chunks stay (wholly free ones go back). */
static void mc_release_ex(hd_mcache_t *mc, void (*send)(const uint32_t *ids, unsigned n), bool keep_live)
{
    mc_relbuf_t rb = {.n = 0, .send = send};
    mc_account(mc);                  /* the current spans' allocations, before they go */
    mc_tiny_close(mc);
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        mc_class_t *k = &mc->cls[c];
        if (k->ahead) {              /* its spans go back when they come */
            (send == tp_release_locked ? tp_refill_cancel_locked : tp_refill_cancel)(k->ahead);
            k->ahead = 0;
        }
        if (k->cur.id != HD_NO_SPAN)
            mc_rel_add(mc, &rb, k->cur.id);
        for (unsigned i = 0; i < k->nstash; i++)
            mc_rel_add(mc, &rb, k->stash[i]);
        for (unsigned i = 0; i < k->nfull; i++)
            mc_rel_add(mc, &rb, k->full[i]);
    }
    uint32_t ids[PC_MAX_CHUNKS];
    unsigned n = keep_live ? pc_take_empty(&mc->pc, 0, true, ids) : pc_take_all(&mc->pc, ids);
    for (unsigned i = 0; i < n; i++)
        mc_rel_add(mc, &rb, ids[i]);
    if (rb.n)
        (send ? send : tp_release)(rb.ids, rb.n);
    if (keep_live)
        mc_reset_spans(mc);          /* the chunks left (a live object in each) stay */
    else
        mc_reset(mc);
    st_flush(&mc->st, mc_cache_bytes());
}

/* ---- orphan chunks (see mc_orphans) --------------------------------------------------------- */

/* mc_reg_mu held: orphans of another epoch are forgotten (not ours to give back). */
static void mc_orphans_epoch_locked(void)
{
    uint64_t e = atomic_load(&hdc_epoch);
    if (mc_orphans_epoch != e) {
        pc_reset(&mc_orphans);
        mc_orphans_epoch = e;
    }
}

/* Flush, heapd_flush: sweep the orphans, give back the wholly free ones. */
static void mc_orphans_trim(void)
{
    uint32_t ids[PC_MAX_CHUNKS];
    mc_reg_lock();
    mc_orphans_epoch_locked();
    unsigned n = pc_take_empty(&mc_orphans, 0, true, ids);
    mc_reg_unlock();
    if (n)
        tp_release(ids, n);
}

/* Thread exit: the cache's chunks that hold a live object become orphans
 * (past MC_ORPHANS_MAX the fullest orphan goes back); wholly free ones, and
 * orphans that emptied, go back. */
static void mc_orphan_chunks(hd_mcache_t *mc)
{
    uint32_t ids[2 * PC_MAX_CHUNKS + MC_ORPHANS_MAX];
    unsigned n = pc_take_empty(&mc->pc, 0, true, ids);
    mc_reg_lock();
    mc_orphans_epoch_locked();
    n += pc_take_empty(&mc_orphans, 0, true, ids + n);
    while (mc->pc.n) {
        if (mc_orphans.n >= MC_ORPHANS_MAX)
            ids[n++] = pc_evict(&mc_orphans);
        if (!pc_move(&mc->pc, 0, &mc_orphans))
            break;                   /* (cannot: room was made, ids are distinct) mc_release gives it back */
    }
    mc_reg_unlock();
    if (n)
        tp_release(ids, n);
}

/* No chunk of the thread has room for class c: adopt orphans, the roomiest
 * first, until one does. NULL when none. */
static void *mc_adopt(hd_mcache_t *mc, unsigned c, size_t size, bool zero)
{
    void *p = NULL;
    while (!p && mc->pc.n < PC_MAX_CHUNKS) {
        bool moved = false;
        mc_reg_lock();
        mc_orphans_epoch_locked();
        if (mc_orphans.n) {
            unsigned best = 0;
            for (unsigned k = 1; k < mc_orphans.n; k++)
                if (mc_orphans.ch[k].nfree > mc_orphans.ch[best].nfree)
                    best = k;
            moved = pc_move(&mc_orphans, best, &mc->pc);
        }
        mc_reg_unlock();
        if (!moved)
            break;
        p = pc_alloc(&mc->pc, c, size, zero);    /* sweeps: frees since the orphaning fold */
    }
    return p;
}

static void mc_release_via(hd_mcache_t *mc, void (*send)(const uint32_t *ids, unsigned n))
{
    mc_release_ex(mc, send, false);
}

static void mc_release(hd_mcache_t *mc) { mc_release_via(mc, NULL); }

void mc_release_all_locked(void)
{
    uint64_t e = atomic_load(&hdc_epoch);
    mc_reg_lock();
    for (hd_mcache_t *mc = mc_reg; mc; mc = mc->next)
        if (mc->epoch == e)
            mc_release_via(mc, tp_release_locked);
    mc_orphans_epoch_locked();
    uint32_t ids[PC_MAX_CHUNKS];
    tp_release_locked(ids, pc_take_all(&mc_orphans, ids));
    mc_reg_unlock();
}

void mc_release_current_free(void)
{
    hd_mcache_t *mc = mc_tls;
    if (mc && mc->epoch == atomic_load(&hdc_epoch))
        mc_release_ex(mc, NULL, true);
    mc_orphans_trim();
}

void mc_release_current(void)
{
    hd_mcache_t *mc = mc_tls;
    if (mc && mc->epoch == atomic_load(&hdc_epoch))
        mc_release(mc);
}

static void mc_unregister(hd_mcache_t *mc)
{
    if (mc->prev)
        mc->prev->next = mc->next;
    else
        mc_reg = mc->next;
    if (mc->next)
        mc->next->prev = mc->prev;
}

void mc_forget_all_locked(bool fork_child)
{
    if (fork_child) {                /* this thread's free counts so far are the parent's */
        for (unsigned c = 0; c < HD_NUM_CLASSES; c++)
            atomic_store_explicit(&mc_tls_frees[c], 0, memory_order_relaxed);
        if (mc_owners)               /* the parent's threads' marks: none is ours */
            madvise((void *)mc_owners, mc_owners_len * sizeof *mc_owners, MADV_DONTNEED);
        if (mc_tls) {
            mc_tls->tid = mc_new_tid();
            mc_tls_tid = mc_tls->tid;
        }
    }
    mc_reg_lock();
    pc_reset(&mc_orphans);           /* not ours to give back (any more) */
    for (hd_mcache_t *mc = mc_reg, *next; mc; mc = next) {
        next = mc->next;
        if (fork_child && mc != mc_tls) {
            mc_unregister(mc);       /* its thread does not exist in the child */
            atomic_fetch_sub(&mc_ncaches, 1);
            munmap(mc, sizeof *mc);
        } else {
            mc_reset(mc);            /* spans are not ours to release (any more) */
            if (fork_child) {        /* the counts so far are the parent's to report */
                memset(&mc->st.cur, 0, sizeof mc->st.cur);
                memset(&mc->st.done, 0, sizeof mc->st.done);
            }
        }
    }
    mc_reg_unlock();
}

static void mc_thread_exit(void *arg)
{
    hd_mcache_t *mc = arg;
    if (mc->epoch == atomic_load(&hdc_epoch) && atomic_load(&hdc_state) != HDC_DETACHED) {
        mc_orphan_chunks(mc);        /* chunks with live objects stay for the other threads */
        mc_release(mc);              /* flushes its counts too */
        tp_flush();
    } else if (atomic_load(&hdc_state) != HDC_DETACHED) {
        st_flush(&mc->st, mc_cache_bytes());    /* frees it made since */
    }
    mc_reset_spans(mc);              /* marks of spans a stale cache forgets */
    mc_tls_tid = UINT32_MAX;
    mc_reg_lock();
    mc_unregister(mc);
    atomic_fetch_sub(&mc_ncaches, 1);
    mc_reg_unlock();
    if (mc_tls == mc)
        mc_tls = NULL;
    munmap(mc, sizeof *mc);
}

/* At a slow path: forget spans of another epoch; give spans back when the
 * daemon asked for a flush. */
static void mc_check_stale(hd_mcache_t *mc)
{
    uint64_t e = atomic_load(&hdc_epoch);
    if (hd_unlikely(mc->epoch != e)) {
        mc_reset(mc);
        mc->epoch = e;
        mc->flush_gen = atomic_load(&tp_flush_gen);
        return;
    }
    uint64_t g = atomic_load(&tp_flush_gen);
    if (hd_unlikely(mc->flush_gen != g)) {
        mc->flush_gen = g;
        mc_release_ex(mc, NULL, true);   /* chunks with live objects stay: see there */
        mc_orphans_trim();
        mc->tight = MC_LARGE_TIGHT_FOR;  /* a limit is near: hold no free chunk for a while */
    }
}

/* A refusal (ENOMEM) came with Flush and/or Pressure (the daemon's hard
 * limit or our quota, see pressure.c): give back this thread's spans, let
 * the pressure callback run, and say whether one retry is worth it. errno
 * stays ENOMEM. */
static bool mc_holds_spans(const hd_mcache_t *mc)
{
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        const mc_class_t *k = &mc->cls[c];
        if (k->cur.id != HD_NO_SPAN || k->nstash || k->nfull || k->ahead)
            return true;
    }
    for (unsigned i = 0; i < mc->pc.n; i++)
        if (mc->pc.ch[i].nfree == HD_CHUNK_PAGES)
            return true;             /* a wholly free chunk (what release gives back of them) */
    return false;
}

static bool mc_enomem_retry(hd_mcache_t *mc, uint64_t pgen, uint64_t fgen)
{
    bool again = false;
    if (mc && atomic_load(&tp_flush_gen) != fgen) {
        mc_check_stale(mc);         /* queues Release; it goes out ahead of the retry */
        again = true;
    } else if (mc && mc_holds_spans(mc)) {
        mc_release_ex(mc, NULL, true);  /* the free memory may be in our own cache (spans, free
                                           chunks): it goes back ahead of the retry */
        again = true;
    }
    if (hdc_pressure_settle(pgen))
        again = true;
    errno = ENOMEM;
    return again;
}

/* ---- the small slow path ------------------------------------------------------------ */

/* Is id a span the daemon just made ours, of class c? (It is trusted, but a
 * wrong span here would corrupt someone else's objects.) */
static bool mc_span_ok(uint32_t id, unsigned c)
{
    if (id >= hdc_seg.npages)
        return false;
    hd_span_t *sp = &hdc_seg.spans[id];
    return hd_span_state(sp) == HD_SPAN_CACHED &&
           sp->owner == hdc_client_id && sp->sizeclass == c &&
           sp->nelems == hd_cls_nobjs(c) && sp->elemsize == hd_cls_size(c) &&
           sp->npages == hd_cls_npages(c) && id + (uint64_t)sp->npages <= hdc_seg.npages;
}

/* Is a span we kept still ours to allocate from? The daemon lends it until we
 * give it back or our process dies (daemon/conn.h), so this holds unless
 * something broke; a slow path checks it before it takes objects from a kept
 * span, so it never writes into a span another client may own. */
static bool mc_still_ours(uint32_t id)
{
    hd_span_t *sp = &hdc_seg.spans[id];
    return hd_span_state(sp) == HD_SPAN_CACHED && sp->owner == hdc_client_id;
}

static void mc_push_full(hd_mcache_t *mc, unsigned c, uint32_t id)
{
    mc_class_t *k = &mc->cls[c];
    if (k->nfull >= mc_keep_full(c)) {
        mc_relbuf_t rb = {.n = 0};
        mc_rel_add(mc, &rb, k->full[0]);
        tp_release(rb.ids, rb.n);
        memmove(&k->full[0], &k->full[1], (k->nfull - 1u) * sizeof k->full[0]);
        k->nfull--;
    }
    k->full[k->nfull++] = id;
}

/* Step 3: the oldest kept full span that has room again becomes cur. */
/* Room worth switching to: at least an eighth of the span (and one slot).
 * Rewinding a span for a single freed slot costs a sweep per allocation when
 * the program frees one object for each it allocates. */
static inline unsigned mc_min_room(unsigned nelems) { return nelems >= 16 ? nelems / 8 : 1; }

/* Take the oldest kept span with an eighth free. Spans with less stay kept:
 * handing them out one slot at a time would spread the next frees thinly
 * over every span and keep the class on the slow path for good; left alone,
 * they gather frees until they are worth it. */
/* A one-object span's object (the 24 and 32 KiB small classes, and others
 * of few objects): swept if FREED; is it FREE? One byte, where
 * hd_span_sweep would read two 64-byte windows. */
static inline bool mc_lspan_free(const hd_seg_t *seg, uint32_t id, unsigned c)
{
    hd_ostate_t *st = hd_states_of(seg, id, c);
    uint8_t v = hd_obj_state(st, 0);
    return v == HD_OBJ_FREE || (v == HD_OBJ_FREED && hd_obj_sweep(st, 0));
}

static bool mc_reuse_full_n(hd_mcache_t *mc, mc_class_t *k, unsigned scan, unsigned half)
{
    unsigned best = UINT32_MAX, live = 0, nfreed = 0;
    uint64_t free0 = 0;
    for (unsigned i = 0; i < k->nfull && i < scan; i++) {
        uint32_t id = k->full[i];
        if (!mc_still_ours(id)) {    /* forget it: not ours to touch */
            mc_disown(mc, id);
            memmove(&k->full[i], &k->full[i + 1], (k->nfull - i - 1u) * sizeof k->full[0]);
            k->nfull--;
            i--;
            continue;
        }
        const hd_span_t *sp = &hdc_seg.spans[id];
        unsigned nelems = sp->nelems;
        if (nelems == 1) {
            live = !mc_lspan_free(&hdc_seg, id, sp->sizeclass);
            nfreed = 1;              /* not fresh: its object was used */
            free0 = !live;
        } else {
            live = hd_span_sweep_ex(hd_states_of(&hdc_seg, id, sp->sizeclass), nelems, &nfreed, &free0);
        }
        if (nelems - live >= (half ? (nelems + 1) / 2 : mc_min_room(nelems))) {
            best = i;
            break;
        }
    }
    if (best == UINT32_MAX)
        return false;
    uint32_t id = k->full[best];
    memmove(&k->full[best], &k->full[best + 1], (k->nfull - best - 1u) * sizeof k->full[0]);
    k->nfull--;
    mc_span_load_swept(&k->cur, &hdc_seg, id, live, nfreed, free0);   /* just swept: not again */
    k->cur.fresh = false;            /* it had room again: slots were freed */
    return true;
}

static bool mc_reuse_full(hd_mcache_t *mc, mc_class_t *k) { return mc_reuse_full_n(mc, k, UINT32_MAX, false); }

/* Step 0: cur (a small class) is exhausted: every object that was FREE when
 * its windows were read is allocated now (only this cache makes objects of
 * its spans FREE), so its count needs no read. Its state bytes were written a
 * moment ago, and a vector load over bytes still in the store buffer waits
 * for them (and for the program's stores ahead of them), while the oldest
 * kept span has had longest to gather frees: try that one first; with half
 * of it free, it becomes cur and cur goes to the back of the list, unswept.
 * Half, not the eighth of step 3: rotating for less can settle a FIFO
 * program on exactly the spans its live objects fill, one slot freed per
 * allocation, and a slow path for every allocation (bench/alloc 1024 B:
 * 10.4 -> 25 ns with an eighth). Spans of fewer than MC_ROTATE_MIN_OBJS
 * objects skip it: they reach the slow path every few allocations anyway,
 * and a failed try is one sweep more (bench/alloc 12 KiB, 2 per span:
 * 21.0 -> 23.3 ns with it). */
static bool mc_rotate(hd_mcache_t *mc, mc_class_t *k, unsigned c)
{
    mc_span_t *s = &k->cur;
    if (s->live0 < (int32_t)s->nelems)
        st_bump(&mc->st.cur.small_allocs[c], (uint64_t)((int32_t)s->nelems - s->live0));
    s->live0 = (int32_t)s->nelems;
    uint32_t id = s->id;
    if (!mc_reuse_full_n(mc, k, 1, true))
        return false;
    mc_push_full(mc, c, id);
    return true;
}

static uint64_t mc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* An allocation blocked on the daemon for ns. */
static void mc_count_wait(hd_mcache_t *mc, uint64_t ns)
{
    st_bump(&mc->st.cur.refill_waits, 1);
    st_bump(&mc->st.cur.refill_wait_ns, ns);
}

/* Stash the spans a refill gave (in reverse: ids[0] is used first); how
 * many were good. */
static unsigned mc_stash(hd_mcache_t *mc, mc_class_t *k, unsigned c, const uint32_t *ids, int n)
{
    unsigned good = 0;
    for (int j = n - 1; j >= 0; j--)
        if (k->nstash < MC_BATCH_CAP && mc_span_ok(ids[j], c)) {
            k->stash[k->nstash++] = ids[j], good++;
            mc_own(mc, ids[j]);
        }
    return good;
}

/* The class just took the last span of its stash: a class that keeps
 * refilling asks for the next batch now, so that it is there when needed. */
static void mc_refill_ahead(hd_mcache_t *mc, mc_class_t *k, unsigned c)
{
    if (k->ahead || k->nstash || k->streak < MC_AHEAD_STREAK || mc->tight ||
        mc->rclock - k->last_refill > MC_AHEAD_RECENT)
        return;
    if (k->streak < 255)
        k->streak++;
    k->ahead = tp_refill_submit(c, mc_batch_for(c, k->streak));
    k->ahead_at = mc->rclock;
}

/* A refill happens for class c: tick the clock, and send back what classes
 * asked for ahead and never needed (a class that went cold). */
static void mc_refill_tick(hd_mcache_t *mc, mc_class_t *k)
{
    k->last_refill = ++mc->rclock;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        mc_class_t *o = &mc->cls[c];
        if (o->ahead && mc->rclock - o->ahead_at > MC_AHEAD_STALE) {
            tp_refill_cancel(o->ahead);
            o->ahead = 0;
            o->streak = 0;
        }
    }
}

/* One synchronous Refill of count spans of class c, counted as a wait;
 * *pgen and *fgen get the pressure and flush generations from before it
 * (mc_enomem_retry's). */
static int mc_refill_sync(hd_mcache_t *mc, unsigned c, unsigned count, uint32_t *ids, uint64_t *pgen, uint64_t *fgen)
{
    *pgen = hdc_pressure_gen();
    *fgen = atomic_load(&tp_flush_gen);
    uint64_t t0 = mc_now_ns();
    int n = tp_refill(c, count, ids);
    mc_count_wait(mc, mc_now_ns() - t0);
    if (n > 0)
        HDC_CRASHPOINT("refill");     /* the spans are ours at the daemon, not in the cache */
    return n;
}

static void *mc_class_slow(hd_mcache_t *mc, unsigned c)
{
    if (c >= HD_NUM_SIZE_CLASSES) {  /* small classes only (and it tells -O2 the bounds) */
        errno = EINVAL;
        return NULL;
    }
    mc_check_stale(mc);
    mc_class_t *k = &mc->cls[c];
    int refills = 0;
    unsigned rewinds = 0;    /* the state bytes are anyone's: a scribbler flipping them between
                                the sweep and the scan must not keep us here */
    bool retried = false;
    if (k->cur.id != HD_NO_SPAN && !mc_still_ours(k->cur.id)) {
        mc_disown(mc, k->cur.id);
        mc_span_clear(&k->cur);      /* not ours any more: never sweep or take from it */
    }
    for (;;) {
        mc_span_t *s = &k->cur;
        if (s->id != HD_NO_SPAN) {
            unsigned i = mc_span_next(s);
            if (i < s->nelems)
                return mc_take(s, i);
            if (k->nfull && !rewinds && s->nelems >= MC_ROTATE_MIN_OBJS &&
                mc_rotate(mc, k, c))                                              /* step 0 */
                continue;
            uint64_t free0 = mc_span_sweep_account(&mc->st, c, s);
            if (s->nelems - (unsigned)s->live0 >= mc_min_room(s->nelems) && rewinds++ < MC_MAX_REWINDS) {  /* step 1 */
                s->fresh = false;    /* room means frees: used slots come round again */
                mc_span_rewind_to(s, free0);
                continue;
            }
            mc_push_full(mc, c, s->id);                                   /* step 2 */
            mc_span_clear(s);
        }
        /* One object per span: a kept span whose object was freed is as good
         * as a new one, and taking it first keeps the cache from growing
         * while frees refill it. */
        bool one = hd_cls_nobjs(c) == 1;
        if (one && mc_reuse_full(mc, k))
            continue;
        if (k->nstash) {
            uint32_t id = k->stash[--k->nstash];
            if (mc_still_ours(id))
                mc_span_load(s, &hdc_seg, id);
            else
                mc_disown(mc, id);
            mc_refill_ahead(mc, k, c);
            continue;
        }
        if (!one && mc_reuse_full(mc, k))                                     /* step 3 */
            continue;
        uint32_t ids[MC_BATCH_CAP];
        mc_refill_tick(mc, k);
        if (k->ahead) {              /* step 4a: the refill submitted ahead */
            uint64_t waited = 0;
            int n = tp_refill_collect(k->ahead, true, ids, &waited);
            k->ahead = 0;
            if (waited)
                mc_count_wait(mc, waited);
            if (n > 0)
                HDC_CRASHPOINT("refill");
            if (n > 0 && mc_stash(mc, k, c, ids, n))
                continue;
            /* refused (ENOMEM: the synchronous refill below handles the
             * limits' Flush/Pressure and the retry) or dropped */
        }
        if (refills++ == MC_MAX_REFILLS) {                                /* step 4 */
            errno = ENOMEM;          /* the daemon keeps handing out full spans */
            return NULL;
        }
        if (k->streak < 255)
            k->streak++;
        mc_stats_flush(mc);                  /* memstats: counts go out at every refill */
        uint64_t pgen, fgen;
        int n = mc_refill_sync(mc, c, mc_batch_for(c, k->streak), ids, &pgen, &fgen);
        if (n < 0) {
            if (errno == ENOMEM && !retried && mc_enomem_retry(mc, pgen, fgen)) {
                retried = true;
                refills--;
                continue;
            }
            return NULL;
        }
        if (!mc_stash(mc, k, c, ids, n)) {
            errno = EPROTO;
            return NULL;
        }
    }
}

/* Everything an allocation of class c may need: the cache made, the slow
 * path, a whole tiny block's word, calloc's clearing. */
static __attribute__((noinline)) void *mc_alloc_full(unsigned c, size_t size, bool zero)
{
    hd_mcache_t *mc = mc_get();
    if (hd_unlikely(!mc))
        return NULL;
    mc_span_t *s = &mc->cls[c].cur;
    void *p = mc_fast(s);
    if (hd_unlikely(!p) && !(p = mc_class_slow(mc, c)))
        return NULL;
    if (c == HD_TINY_SIZE_CLASS) {
        /* a whole block: one object at byte 0, ending at size-1 */
        unsigned b = (unsigned)(((uintptr_t)p - s->base) / HD_TINY_SIZE);
        uint32_t w = 1u | (size < HD_TINY_SIZE ? 1u << (16 + size - 1) : 0);
        hd_tiny_start(hd_tiny_of(&hdc_seg, s->id), b, w);
    }
    if (zero && !s->fresh)
        memset(p, 0, size);
    return p;
}

/* The common case inline and without a call: a malloc of a small size is a
 * class lookup, the TLS load and nextFreeFast (heapd_malloc tail-calls
 * mc_alloc_small, which is a leaf unless it needs mc_alloc_full). */
static inline __attribute__((always_inline)) void *mc_alloc_in(unsigned c, size_t size, bool zero)
{
    hd_mcache_t *mc = mc_tls;
    if (hd_likely(mc != NULL) && !zero && c != HD_TINY_SIZE_CLASS) {
        void *p = mc_fast(&mc->cls[c].cur);
        if (hd_likely(p != NULL))
            return p;
    }
    return mc_alloc_full(c, size, zero);
}

void *mc_alloc_class(unsigned c, size_t size, bool zero) { return mc_alloc_in(c, size, zero); }

void *mc_alloc_small(size_t size, bool zero) { return mc_alloc_in(hd_size_to_class(size), size, zero); }

/* ---- tiny ------------------------------------------------------------------------------ */

void *mc_alloc_tiny(size_t size, size_t align, bool zero)
{
    hd_mcache_t *mc = mc_get();
    if (hd_unlikely(!mc))
        return NULL;
    unsigned off = (mc->tiny_off + (unsigned)align - 1) & ~((unsigned)align - 1);
    unsigned end = off + (unsigned)size - 1;
    void *p;
    if (hd_likely(mc->tiny && end < HD_TINY_SIZE)) {
        uint32_t bits = 1u << off | (end < 15 ? 1u << (16 + end) : 0);
        hd_tiny_pack(mc->tiny_words, mc->tiny_block, bits);
        st_bump(&mc->st.cur.tiny_allocs, 1);     /* Go's tinyAllocs */
        mc->tiny_off = end + 1;
        p = (void *)(mc->tiny + off);
    } else {
        /* a new block (this may flush the cache, closing the open block) */
        mc_span_t *s = &mc->cls[HD_TINY_SIZE_CLASS].cur;
        p = mc_fast(s);
        if (!p && !(p = mc_class_slow(mc, HD_TINY_SIZE_CLASS)))
            return NULL;
        unsigned b = (unsigned)(((uintptr_t)p - s->base) / HD_TINY_SIZE);
        hd_tiny_t *words = hd_tiny_of(&hdc_seg, s->id);
        uint32_t w = 1u | (size < 16 ? 1u << (16 + size - 1) : 0);
        if (!mc->tiny || size < mc->tiny_off) {   /* more room left than the open one */
            mc_tiny_close(mc);
            w |= HD_TINY_OPEN;
            mc->tiny = (uintptr_t)p;
            mc->tiny_off = (unsigned)size;
            mc->tiny_words = words;
            mc->tiny_states = s->states;
            mc->tiny_span = s->id;
            mc->tiny_block = b;
        }
        hd_tiny_start(words, b, w);
    }
    if (zero)
        memset(p, 0, size);
    return p;
}

/* ---- large ----------------------------------------------------------------------------- */

/* After each large-class allocation or free of this thread: the chunk trim
 * (jemalloc's low-water decay). Wholly free chunks stay while the thread may
 * need them: at the end of each period of MC_CHUNK_PERIOD large-class
 * allocations and frees, half (rounded up) of the fewest wholly free
 * chunks the period saw go back (memory the period never needed; a pool whose live bytes
 * wander keeps what its high moments take, and never refills below its
 * high-water: a spare-or-two rule refilled 0.3% of a pool's allocations in
 * the unit test "a warm pool"). While tight (after a Flush) none stays.
 * Keeping chunks does not raise the peak: a chunk is only kept after the
 * thread needed it. */
static void mc_chunk_trim(hd_mcache_t *mc)
{
    uint32_t ids[PC_MAX_CHUNKS];
    unsigned empty = pc_empty(&mc->pc), keep = empty;
    if (mc->tight) {
        keep = 0;
    } else {
        if (empty < mc->empty_low)
            mc->empty_low = empty;
        if (++mc->lticks >= MC_CHUNK_PERIOD) {
            keep = empty - (mc->empty_low + 1) / 2;
            mc->lticks = 0;
            mc->empty_low = keep;
        }
    }
    if (keep >= empty)
        return;
    unsigned n = pc_take_empty(&mc->pc, keep, false, ids);
    if (n) {
        mc_relbuf_t rb = {.n = 0};
        for (unsigned i = 0; i < n; i++)
            mc_rel_add(mc, &rb, ids[i]);
        tp_release(rb.ids, rb.n);
    }
}

/* No chunk of the thread has a run for class c: take one more from the
 * daemon (a round trip, counted as a wait), giving back the fullest first
 * when the table is full, and carve from it. NULL with errno (ENOMEM: a
 * limit or quota; the caller falls back to AllocLarge). */
static void *mc_chunk_refill(hd_mcache_t *mc, unsigned c, size_t size, bool zero)
{
    if (mc->pc.n >= PC_MAX_CHUNKS) {
        mc_relbuf_t rb = {.n = 0};
        mc_rel_add(mc, &rb, pc_evict(&mc->pc));
        tp_release(rb.ids, rb.n);
    }
    mc_stats_flush(mc);                  /* memstats: counts go out at every refill */
    for (bool retried = false;;) {
        uint32_t id;
        uint64_t pgen, fgen;
        int n = mc_refill_sync(mc, HD_CHUNK_CLASS, 1, &id, &pgen, &fgen);
        if (n < 0) {
            if (errno == ENOMEM && !retried && mc_enomem_retry(mc, pgen, fgen)) {
                retried = true;
                void *p = pc_alloc(&mc->pc, c, size, zero);   /* the retry's sweep may have made room */
                if (p)
                    return p;
                continue;
            }
            if (errno == EAGAIN)
                errno = ENOMEM;      /* near the soft limit: no chunk, the caller's round trip */
            return NULL;
        }
        if (n != 1 || !mc_span_ok(id, HD_CHUNK_CLASS) ||
            !pc_add(&mc->pc, &hdc_seg, id, hdc_seg.spans[id].needzero)) {
            errno = EPROTO;
            return NULL;
        }
        return pc_alloc(&mc->pc, c, size, zero);   /* a fresh chunk holds any class */
    }
}

/* Object p of large class c came from the thread's chunks: count it. */
static void *mc_lclass_done(hd_mcache_t *mc, unsigned c, void *p)
{
    st_bump(&mc->st.cur.small_allocs[c], 1);
    uint64_t b = hd_cls_size(c);
    mc->tight = mc->tight > b ? mc->tight - b : 0;
    mc_chunk_trim(mc);
#if HEAPD_DEBUG
    char err[160];
    HD_DEBUG_CHECK(pc_check(&mc->pc, err, sizeof err), "page cache: %s", err);
#endif
    return p;
}

/* An object of large class c, from the thread's chunks. NULL with
 * *round_trip set: the caller takes one AllocLarge of the class's pages
 * instead, because no chunk fits a limit or quota (ENOMEM), or because a
 * limit is near (tight) and no chunk has room: a new 2 MiB chunk for one
 * object would commit up to 2 MiB the limit has no room for, one AllocLarge
 * commits the object's pages (itest "soft limit respected": 18.7 MiB
 * committed under a 16 MiB limit with a chunk, 16.x with this). */
static void *mc_alloc_lclass(unsigned c, size_t size, bool zero, bool *round_trip)
{
    hd_mcache_t *mc = mc_get();
    if (!mc)
        return NULL;
    mc_check_stale(mc);
    uint64_t b = hd_cls_size(c);
    void *p = pc_alloc(&mc->pc, c, size, zero);
    if (!p)
        p = mc_adopt(mc, c, size, zero);     /* an exited thread's chunk: no new memory */
    if (!p && mc->tight) {
        mc->tight = mc->tight > b ? mc->tight - b : 0;
        *round_trip = true;
        return NULL;
    }
    if (!p && !(p = mc_chunk_refill(mc, c, size, zero))) {
        *round_trip = errno == ENOMEM;
        return NULL;
    }
    return mc_lclass_done(mc, c, p);
}

void *mc_alloc_large(size_t size, size_t align, bool zero)
{
    int st = atomic_load(&hdc_state);
    if (st == HDC_DETACHED) {
        errno = ENOTCONN;
        return NULL;
    }
    unsigned c = align <= HD_PAGE_SIZE ? hd_large_to_class(size) : 0;
    if (c) {                         /* a large class: from the thread's chunks */
        bool round_trip = false;
        void *p = mc_alloc_lclass(c, size, zero, &round_trip);
        if (p || !round_trip)
            return p;
        size = hd_cls_size(c);       /* one round trip for its class's pages instead */
    }
    uint64_t pages = size / HD_PAGE_SIZE + (size % HD_PAGE_SIZE != 0);
    if (pages > hdc_seg.npages) {
        errno = ENOMEM;              /* cannot fit, whatever the daemon has */
        return NULL;
    }
    uint64_t align_pages = align > HD_PAGE_SIZE ? align / HD_PAGE_SIZE : 0;
    uint32_t id;
    uint64_t pgen = hdc_pressure_gen(), fgen = atomic_load(&tp_flush_gen);
    uint64_t t0 = mc_now_ns();
    int rc = tp_alloc_large(pages, align_pages, zero, &id);
    if (rc < 0) {
        hd_mcache_t *mc = mc_tls;
        if (mc && mc->epoch != atomic_load(&hdc_epoch))
            mc = NULL;
        if (errno == ENOMEM && mc_enomem_retry(mc, pgen, fgen)) {
            /* a large class: the pressure callback may have freed objects
             * of our chunks (another thread's frees: FREED, swept here) */
            void *q = c && mc ? pc_alloc(&mc->pc, c, size, zero) : NULL;
            if (q) {
                mc_count_wait(mc, mc_now_ns() - t0);
                return mc_lclass_done(mc, c, q);
            }
            rc = tp_alloc_large(pages, align_pages, zero, &id);
        }
    }
    int e = errno;
    hd_mcache_t *mc = mc_get();
    if (mc)
        mc_count_wait(mc, mc_now_ns() - t0);    /* a round trip per object: it always waits */
    errno = e;
    if (rc < 0)
        return NULL;
    hd_span_t *sp = id < hdc_seg.npages ? &hdc_seg.spans[id] : NULL;
    uintptr_t p = sp ? hd_page_addr(&hdc_seg, id) : 0;
    if (!sp || hd_span_state(sp) != HD_SPAN_LARGE ||
        sp->npages < pages || id + (uint64_t)sp->npages > hdc_seg.npages ||
        (align && p % align)) {
        errno = EPROTO;
        return NULL;
    }
    HDC_CRASHPOINT("large");          /* allocated at the daemon, never returned */
    if (zero && sp->needzero)
        memset((void *)p, 0, size);
    mc_count_large(true, (uint64_t)sp->npages * HD_PAGE_SIZE);
    mc_stats_flush_current();
    return (void *)p;
}

/* ---- owner-local free --------------------------------------------------------------------- */

enum hd_free_result mc_free_local(uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls)
{
    hd_mcache_t *mc = mc_tls;
    if (!mc || mc->epoch != atomic_load_explicit(&hdc_epoch, memory_order_relaxed))
        return HD_FREE_REMOTE;       /* no chunk of ours, or a cache about to forget them */
    return pc_free(&mc->pc, id, st, i, cls);
}

/* This thread freed a large-class object (malloc.c): a Flush that came
 * meanwhile is acted on now (a thread that only frees must give memory back
 * too), and a chunk that emptied goes back beyond the one kept. */
void mc_large_freed(unsigned c)
{
    hd_mcache_t *mc = mc_tls;
    if (!mc || !hd_is_lclass(c) || mc->epoch != atomic_load_explicit(&hdc_epoch, memory_order_relaxed))
        return;
    int e = errno;                   /* free() leaves errno alone */
    mc_check_stale(mc);
    mc_chunk_trim(mc);
    errno = e;
}
