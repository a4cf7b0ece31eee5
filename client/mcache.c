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
 * 1 MiB with at most page alignment is an object of a large class, a span
 * of one object that goes through all of the above (cur, stash, kept full
 * spans, sweep): the cache keeps what it frees and what other processes free
 * (their CAS to FREED, found by the sweep of its kept spans), and refills in
 * batches (up to 256 KiB of spans). A kept full span costs nothing while its
 * object lives and is the cache of that size once it is freed, so large
 * classes keep more of them: clamp(128 MiB / span bytes, 4, 128). A freed one
 * is not free of cost (its pages stay committed), so every
 * MC_LARGE_GC_BYTES of large-class allocation, or of this thread's large
 * frees, the cache trims them (jemalloc's tcache GC; the interval grows to
 * the live large-class bytes the cache holds, so a pool of big buffers is
 * not trimmed at every turn of its working set), by demand with hysteresis:
 *   - a class that allocated nothing in the last two intervals gives back
 *     all its free spans (cur's too);
 *   - an active class may hold `want` spans, live and free: want grows to
 *     the spans the class has used (all it holds but the stash, the rest of
 *     a batch: no more than its demand needed, since free spans are reused
 *     before a refill) and, at the end of each period of
 *     MC_LARGE_PERIOD trims, sheds half of the fewest spans of it that a
 *     trim of the period found unused (jemalloc's low-water GC). A pool's
 *     count per size is a random walk: a cache that gives back what the
 *     walk did not need lately refills when it comes back (the trim by
 *     recent allocations this replaces made 0.64% of bench/peers'
 *     buffer-pool allocations wait, more than half of its run time);
 *   - the budget: the large classes hold at most twice their live
 *     high-water lpeak (live + free; lpeak sheds half its excess over the
 *     period's high-water at the end of a period), and at least
 *     MC_LARGE_FREE_BYTES free; the excess goes back, biggest spans first.
 * The price is memory: each class keeps its own high-water, and a free
 * 1 MiB span cannot serve two 512 KiB requests without the daemon
 * (docs/performance.md: buffer-pool pages in spans / live). After a
 * Flush from the daemon (a limit is near) the next MC_LARGE_TIGHT_FOR bytes
 * trim at every allocation and free and keep no free span (want 0) but
 * the current span of a class (the one its next allocation takes: given
 * back under a hard limit, that allocation could fail: the fleet of
 * scripts/test-preload.sh), and no class refills ahead. Only an idle class
 * gives back its current span.
 * Everything a cache holds goes back on Flush, pressure and release like
 * small spans.
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
 * refills, so classes a program visits in turn do not each hold a batch. Large classes do not refill ahead: their
 * next span is one buffer of up to 1 MiB that under a limit is memory held
 * for nothing (itest "soft limit respected by a workload that frees as it
 * goes": 20-22 MiB with, 16-18 without), and the trim by demand keeps the
 * spans a pool comes back to (bench/peers buffer-pool: 0.01% of allocations
 * wait, when a class's count passes its high-water). An allocation that blocks on the daemon (a
 * synchronous Refill, a collect whose reply has not come, an AllocLarge) is
 * counted with its time in refill_waits / refill_wait_ns.
 *
 * Owner-local free (issue 9): a free of an object of the calling thread's
 * current span of its class makes it FREE at once (hd_obj_free_owner, one
 * CAS, see shm/span.h for why not a plain store), and lowers the span's
 * live0 so memstats still count each allocation once.
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

#define MC_BATCH_CAP 32u                /* spans per refill, at most (<= HD_MAX_BATCH) */
#define MC_REFILL_OBJS 256u
#define MC_REFILL_BYTES (256u << 10)
#define MC_KEEP_BYTES (2u << 20)       /* full spans a class may keep, in bytes... */
#define MC_KEEP_CAP 64u                 /* ...and in spans */
#define MC_KEEP_LARGE_CAP 128u          /* spans a large class may keep (live buffers cost nothing) */
#define MC_KEEP_LARGE_BYTES (128u << 20) /* full spans a large class may keep, in bytes (4..128 spans) */
#define MC_MAX_REFILLS 4                /* refills per slow path before giving up */
#define MC_MAX_REWINDS 2                /* sweeps of the current span per slow path that found room */
#define MC_ROTATE_MIN_OBJS 8u           /* step 0 for spans of at least this many objects */
#define MC_AHEAD_STREAK 2               /* refills in a row before the class refills ahead */
#define MC_AHEAD_RECENT 4               /* ...the last of them among the cache's last 4 refills */
#define MC_AHEAD_STALE 32               /* a refill ahead not collected within 32 refills goes back */
#define MC_LARGE_GC_BYTES (4u << 20)    /* large-class bytes allocated between two trims of the free
                                           ones, at least (or the live large-class bytes held) */
#define MC_LARGE_TIGHT_FOR (64u << 20)  /* after a Flush (a limit is near), for this many large-class
                                           bytes: a trim at every allocation, no free span kept
                                           (but a class's cur),
                                           no refill ahead */
#define MC_LARGE_FREE_BYTES (4u << 20)  /* the budget of free large-class spans is at least this */
#define MC_LARGE_PERIOD 512u            /* trims per period: at its end a large class's allowance sheds
                                           half of what stayed unused all period */
_Static_assert(MC_BATCH_CAP <= HD_MAX_BATCH, "a batch fits one message");

typedef struct mc_class {
    mc_span_t cur;                      /* the span allocations come from */
    uint32_t stash[MC_BATCH_CAP];       /* refilled spans not used yet (a stack) */
    uint32_t full[MC_KEEP_LARGE_CAP];   /* spans full at their last sweep, oldest first
                                           (small classes use MC_KEEP_CAP of them) */
    uint8_t nstash, nfull;
    uint8_t streak;                     /* refills in a row since the last flush */
    uint64_t ahead;                     /* token of the refill submitted ahead, 0: none */
    uint32_t ahead_at;                  /* the cache's refill clock when `ahead` was asked for */
    uint32_t last_refill;               /* ...and at this class's last refill */
    uint32_t gc_allocs;                 /* large classes: allocations since the last trim */
    uint32_t gc_prev;                   /* ...and in the interval before */
    uint16_t want;                      /* large classes: spans (live + free) the trim lets it hold */
    uint16_t unused;                    /* ...the fewest of them a trim of this period found unused */
} mc_class_t;

typedef struct hd_mcache {
    mc_class_t cls[HD_NUM_CLASSES];     /* small classes, then the large ones */
    /* the open tiny block (tiny == 0: none) */
    uintptr_t tiny;                     /* its address */
    unsigned tiny_off;                  /* bytes of it used */
    hd_tiny_t *tiny_words;              /* its span's block words */
    hd_ostate_t *tiny_states;           /* its span's object states */
    uint32_t tiny_span, tiny_block;     /* its span id and block index */
    st_thread_t st;                     /* memstats counters (internal.h, cstats.c) */
    uint64_t lbytes;                    /* large-class bytes allocated since the last trim */
    uint64_t gc_every;                  /* the next trim after this many (0: MC_LARGE_GC_BYTES) */
    uint32_t rclock;                    /* refills this cache made (its classes' clock) */
    uint32_t kept[HD_NUM_LARGE_CLASSES][MC_KEEP_LARGE_CAP];   /* mc_release_ex's scratch */
    uint64_t lfreed;                    /* large-class bytes this thread freed since the last trim */
    uint64_t lpeak;                     /* live large-class bytes, high-water (decays each period) */
    uint64_t lhigh;                     /* ...and in this period */
    uint32_t period;                    /* trims in this period (MC_LARGE_PERIOD) */
    uint64_t tight;                     /* bytes left of tight trimming (after a Flush) */
    uint64_t epoch;                     /* hdc_epoch when the cache last checked */
    uint64_t flush_gen;                 /* tp_flush_gen when the cache last checked */
    struct hd_mcache *next, *prev;      /* the registry (mc_reg_mu) */
} hd_mcache_t;

static __thread hd_mcache_t *mc_tls __attribute__((tls_model("initial-exec")));
__thread _Atomic uint64_t mc_tls_frees[HD_NUM_CLASSES] __attribute__((tls_model("initial-exec")));
static _Atomic unsigned mc_ncaches;     /* registered caches, for the mcache_bytes gauge */
static pthread_mutex_t mc_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static hd_mcache_t *mc_reg;             /* every live cache (mc_reg_mu) */
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
    if (hd_is_lclass(c)) {
        size_t n = MC_KEEP_LARGE_BYTES / bytes;
        return n < 4 ? 4 : n > MC_KEEP_LARGE_CAP ? MC_KEEP_LARGE_CAP : (unsigned)n;
    }
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

static void mc_reset(hd_mcache_t *mc)
{
    for (unsigned c = 0; c < HD_NUM_CLASSES; c++) {
        mc_class_t *k = &mc->cls[c];
        mc_span_clear(&k->cur);
        k->nstash = k->nfull = k->streak = 0;
        k->ahead = 0;
        k->gc_allocs = k->gc_prev = 0;
        k->want = 0;
        k->unused = UINT16_MAX;
    }
    mc->lbytes = mc->tight = mc->gc_every = mc->lfreed = mc->lpeak = mc->lhigh = 0;
    mc->period = 0;
    mc->tiny = 0;
    mc->tiny_off = 0;
    mc->tiny_words = NULL;
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
    if (s->id == HD_NO_SPAN || !s->states || hd_is_lclass(c))
        return;                      /* large classes count per object */
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
    if (pop > s->live0 && !hd_is_lclass(c))
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
 * close the tiny block. */
/* Give every span back (async Release through send, NULL: tp_release) and
 * close the tiny block. keep_live: a Flush from the daemon wants free memory
 * back, and a large-class span whose one object is live has none: it stays
 * kept (released, it would wait FREED in the daemon's lists for a sweep
 * once the program frees the object, instead of coming round here). */
static void mc_release_ex(hd_mcache_t *mc, void (*send)(const uint32_t *ids, unsigned n), bool keep_live)
{
    mc_relbuf_t rb = {.n = 0, .send = send};
    uint32_t (*kept)[MC_KEEP_LARGE_CAP] = mc->kept;
    uint8_t nkept[HD_NUM_LARGE_CLASSES] = {0};
    mc_account(mc);                  /* the current spans' allocations, before they go */
    mc_tiny_close(mc);
    for (unsigned c = 1; c < HD_NUM_CLASSES; c++) {
        mc_class_t *k = &mc->cls[c];
        bool keep = keep_live && hd_is_lclass(c);
        if (k->ahead) {              /* its spans go back when they come */
            (send == tp_release_locked ? tp_refill_cancel_locked : tp_refill_cancel)(k->ahead);
            k->ahead = 0;
        }
        if (k->cur.id != HD_NO_SPAN) {
            if (keep && hd_obj_state(k->cur.states, 0) == HD_OBJ_ALLOCATED)
                kept[c - HD_FIRST_LARGE_CLASS][nkept[c - HD_FIRST_LARGE_CLASS]++] = k->cur.id;
            else
                mc_rel_add(mc, &rb, k->cur.id);
        }
        for (unsigned i = 0; i < k->nstash; i++)
            mc_rel_add(mc, &rb, k->stash[i]);
        for (unsigned i = 0; i < k->nfull; i++) {
            if (keep && nkept[c - HD_FIRST_LARGE_CLASS] < MC_KEEP_LARGE_CAP &&
                hd_obj_state(hd_states_of(&hdc_seg, k->full[i], c), 0) == HD_OBJ_ALLOCATED)
                kept[c - HD_FIRST_LARGE_CLASS][nkept[c - HD_FIRST_LARGE_CLASS]++] = k->full[i];
            else
                mc_rel_add(mc, &rb, k->full[i]);
        }
    }
    if (rb.n)
        (send ? send : tp_release)(rb.ids, rb.n);
    mc_reset(mc);
    for (unsigned j = 0; j < HD_NUM_LARGE_CLASSES; j++) {
        mc_class_t *k = &mc->cls[HD_FIRST_LARGE_CLASS + j];
        memcpy(k->full, kept[j], nkept[j] * sizeof k->full[0]);
        k->nfull = nkept[j];
    }
    st_flush(&mc->st, mc_cache_bytes());
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
    mc_reg_unlock();
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
    if (fork_child)                  /* this thread's free counts so far are the parent's */
        for (unsigned c = 0; c < HD_NUM_CLASSES; c++)
            atomic_store_explicit(&mc_tls_frees[c], 0, memory_order_relaxed);
    mc_reg_lock();
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
        mc_release(mc);              /* flushes its counts too */
        tp_flush();
    } else if (atomic_load(&hdc_state) != HDC_DETACHED) {
        st_flush(&mc->st, mc_cache_bytes());    /* frees it made since */
    }
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
        mc_release_ex(mc, NULL, true);   /* live large-class spans stay: nothing to give */
        mc->tight = MC_LARGE_TIGHT_FOR;  /* a limit is near: hold no free large span for a while */
    }
}

/* A refusal (ENOMEM) came with Flush and/or Pressure (the daemon's hard
 * limit or our quota, see pressure.c): give back this thread's spans, let
 * the pressure callback run, and say whether one retry is worth it. errno
 * stays ENOMEM. */
static bool mc_holds_spans(const hd_mcache_t *mc)
{
    for (unsigned c = 1; c < HD_NUM_CLASSES; c++) {
        const mc_class_t *k = &mc->cls[c];
        if (k->cur.id != HD_NO_SPAN || k->nstash || k->nfull || k->ahead)
            return true;
    }
    return false;
}

static bool mc_enomem_retry(hd_mcache_t *mc, uint64_t pgen, uint64_t fgen)
{
    bool again = false;
    if (mc && atomic_load(&tp_flush_gen) != fgen) {
        mc_check_stale(mc);         /* queues Release; it goes out ahead of the retry */
        again = true;
    } else if (mc && mc_holds_spans(mc)) {
        mc_release(mc);             /* the free memory may be in our own cache (large-class
                                       spans we freed): it goes back ahead of the retry */
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
/* A one-object span's object (large classes, and the 8, 16, 24 and 32 KiB
 * small classes): swept if FREED; is it FREE? One byte,
 * where hd_span_sweep would read two 64-byte windows (the full lists and the
 * trim look at many such spans on every large allocation). */
static inline bool mc_lspan_free(const hd_seg_t *seg, uint32_t id, unsigned c)
{
    hd_ostate_t *st = hd_states_of(seg, id, c);
    uint8_t v = hd_obj_state(st, 0);
    return v == HD_OBJ_FREE || (v == HD_OBJ_FREED && hd_obj_sweep(st, 0));
}

static bool mc_reuse_full_n(mc_class_t *k, unsigned scan, unsigned half)
{
    unsigned best = UINT32_MAX, live = 0, nfreed = 0;
    uint64_t free0 = 0;
    for (unsigned i = 0; i < k->nfull && i < scan; i++) {
        uint32_t id = k->full[i];
        if (!mc_still_ours(id)) {    /* forget it: not ours to touch */
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

static bool mc_reuse_full(mc_class_t *k) { return mc_reuse_full_n(k, UINT32_MAX, false); }

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
    if (!mc_reuse_full_n(k, 1, true))
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
static unsigned mc_stash(mc_class_t *k, unsigned c, const uint32_t *ids, int n)
{
    unsigned good = 0;
    for (int j = n - 1; j >= 0; j--)
        if (k->nstash < MC_BATCH_CAP && mc_span_ok(ids[j], c))
            k->stash[k->nstash++] = ids[j], good++;
    return good;
}

/* The class just took the last span of its stash: a class that keeps
 * refilling asks for the next batch now, so that it is there when needed. */
static void mc_refill_ahead(hd_mcache_t *mc, mc_class_t *k, unsigned c)
{
    if (k->ahead || k->nstash || k->streak < MC_AHEAD_STREAK || mc->tight || hd_is_lclass(c) ||
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

static void *mc_class_slow(hd_mcache_t *mc, unsigned c)
{
    mc_check_stale(mc);
    mc_class_t *k = &mc->cls[c];
    int refills = 0;
    unsigned rewinds = 0;    /* the state bytes are anyone's: a scribbler flipping them between
                                the sweep and the scan must not keep us here */
    bool retried = false;
    if (k->cur.id != HD_NO_SPAN && !mc_still_ours(k->cur.id))
        mc_span_clear(&k->cur);      /* not ours any more: never sweep or take from it */
    for (;;) {
        mc_span_t *s = &k->cur;
        if (s->id != HD_NO_SPAN) {
            unsigned i = mc_span_next(s);
            if (i < s->nelems)
                return mc_take(s, i);
            if (k->nfull && !rewinds && s->nelems >= MC_ROTATE_MIN_OBJS && !hd_is_lclass(c) &&
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
        if (one && mc_reuse_full(k))
            continue;
        if (k->nstash) {
            uint32_t id = k->stash[--k->nstash];
            if (mc_still_ours(id))
                mc_span_load(s, &hdc_seg, id);
            mc_refill_ahead(mc, k, c);
            continue;
        }
        if (!one && mc_reuse_full(k))                                     /* step 3 */
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
            if (n > 0 && mc_stash(k, c, ids, n))
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
        uint64_t pgen = hdc_pressure_gen(), fgen = atomic_load(&tp_flush_gen);
        uint64_t t0 = mc_now_ns();
        int n = tp_refill(c, mc_batch_for(c, k->streak), ids);
        mc_count_wait(mc, mc_now_ns() - t0);
        if (n > 0)
            HDC_CRASHPOINT("refill");     /* the spans are ours at the daemon, not in the cache */
        if (n < 0) {
            if (errno == ENOMEM && !retried && mc_enomem_retry(mc, pgen, fgen)) {
                retried = true;
                refills--;
                continue;
            }
            return NULL;
        }
        if (!mc_stash(k, c, ids, n)) {
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

/* Release the free spans of large class c beyond the first `keep` (the
 * stash first: never used; then the kept full spans); returns the bytes of
 * free spans it kept. A free cur (its object freed since) is kept, the span
 * the class's next allocation takes without a round trip (under a hard limit
 * giving it back could make that allocation fail), unless the class is idle:
 * then it goes back too. */
static uint64_t mc_trim_class(hd_mcache_t *mc, mc_relbuf_t *rb, unsigned c, unsigned keep, bool idle)
{
    if (!hd_is_lclass(c))
        return 0;
    mc_class_t *k = &mc->cls[c];
    unsigned kept = 0;
    uint32_t cur = k->cur.id;
    if (cur != HD_NO_SPAN && !mc_still_ours(cur)) {
        mc_span_clear(&k->cur);      /* not ours any more: forget it */
    } else if (cur != HD_NO_SPAN && mc_lspan_free(&hdc_seg, cur, c)) {
        if (idle) {
            mc_rel_add(mc, rb, cur);
            mc_span_clear(&k->cur);
        } else {
            kept = 1;                /* one of the `keep`, or kept beyond a keep of 0 */
        }
    }
    while (k->nstash && kept + k->nstash > keep)
        mc_rel_add(mc, rb, k->stash[--k->nstash]);
    kept += k->nstash;
    for (unsigned i = 0; i < k->nfull; i++) {
        uint32_t id = k->full[i];
        bool drop = !mc_still_ours(id);
        if (!drop && mc_lspan_free(&hdc_seg, id, c) && kept++ >= keep) {
            mc_rel_add(mc, rb, id);
            drop = true;
            kept--;
        }
        if (drop) {
            memmove(&k->full[i], &k->full[i + 1], (k->nfull - i - 1u) * sizeof k->full[0]);
            k->nfull--;
            i--;
        }
    }
    return (uint64_t)kept * hd_cls_size(c);
}

/* The trim (see the top): a class idle for two intervals gives back every
 * free span (and what is on its way); an active class keeps free spans up
 * to its allowance `want` (live + free spans), which grows to the spans it
 * has used (no more than it needed: free spans are reused before a refill;
 * the stash, a batch's rest, not) and, at the end of each period of
 * MC_LARGE_PERIOD trims, sheds half of the fewest spans of it that a trim
 * of the period found unused (jemalloc's low-water GC: what the period
 * never needed; one spare span stays). Then the budget:
 * the large classes hold at most twice their recent live high-water (live +
 * free), and at least MC_LARGE_FREE_BYTES free; what passes it goes back,
 * the biggest spans first. After a Flush (tight) nothing free is kept but
 * each class's cur. Kept
 * spans whose object lives stay: they cost nothing. */
static void mc_large_trim(hd_mcache_t *mc)
{
    mc_relbuf_t rb = {.n = 0};
    uint64_t free_bytes = 0, live = 0;
    bool period_end = ++mc->period >= MC_LARGE_PERIOD;
    for (unsigned c = HD_FIRST_LARGE_CLASS; c < HD_NUM_CLASSES; c++) {
        mc_class_t *k = &mc->cls[c];
        bool idle = !(k->gc_allocs || k->gc_prev);
        if (mc->tight || idle) {
            mc_trim_class(mc, &rb, c, 0, idle);
            k->want = 0;
            k->unused = UINT16_MAX;
            if (idle) {
                k->streak = 0;       /* it starts slow again */
                if (k->ahead)
                    tp_refill_cancel(k->ahead);
                k->ahead = 0;
            }
            continue;
        }
        uint64_t size = hd_cls_size(c);
        unsigned nfree = (unsigned)(mc_trim_class(mc, &rb, c, UINT32_MAX, false) / size);   /* count only */
        unsigned held = (k->cur.id != HD_NO_SPAN) + k->nstash + k->nfull;
        unsigned inuse = held - nfree;
        unsigned used = held - k->nstash;   /* the stash was never needed (a batch's rest) */
        unsigned want = used > k->want ? used : k->want;
        if (want - inuse < k->unused)
            k->unused = (uint16_t)(want - inuse);
        if (period_end) {
            want -= k->unused / 2u;
            k->unused = UINT16_MAX;
        }
        k->want = (uint16_t)(want > UINT16_MAX ? UINT16_MAX : want);
        unsigned keep = k->want > inuse ? k->want - inuse : 0;
        free_bytes += nfree > keep ? mc_trim_class(mc, &rb, c, keep, false) : (uint64_t)nfree * size;
        live += (uint64_t)inuse * size;
    }
    /* the budget: MC_LARGE_FREE_BYTES, or the live large-class bytes of
     * active classes at their recent high-water (a pool's live bytes wander:
     * its low moments must not cut what its high ones need), which sheds
     * half its excess over the period's high-water at the end of a period */
    mc->lhigh = live > mc->lhigh ? live : mc->lhigh;
    mc->lpeak = live > mc->lpeak ? live : mc->lpeak;
    if (period_end) {
        mc->lpeak -= (mc->lpeak - mc->lhigh) / 2;
        mc->lhigh = 0;
        mc->period = 0;
    }
    uint64_t budget = mc->lpeak > live ? 2 * mc->lpeak - live : mc->lpeak;
    budget = budget > MC_LARGE_FREE_BYTES ? budget : MC_LARGE_FREE_BYTES;
    mc->gc_every = live > MC_LARGE_GC_BYTES ? live : MC_LARGE_GC_BYTES;
    for (unsigned c = HD_NUM_CLASSES; c-- > HD_FIRST_LARGE_CLASS;) {   /* the biggest spans first */
        mc_class_t *k = &mc->cls[c];
        if (free_bytes > budget && (k->gc_allocs || k->gc_prev)) {
            uint64_t size = hd_cls_size(c), have = mc_trim_class(mc, &rb, c, UINT32_MAX, false);
            uint64_t cut = (free_bytes - budget + size - 1) / size;
            unsigned keep = have / size > cut ? (unsigned)(have / size - cut) : 0;
            free_bytes -= have - mc_trim_class(mc, &rb, c, keep, false);
            unsigned held = (k->cur.id != HD_NO_SPAN) + k->nstash + k->nfull;
            k->want = (uint16_t)(held < k->want ? held : k->want);
        }
        k->gc_prev = k->gc_allocs;
        k->gc_allocs = 0;
    }
    if (rb.n)
        tp_release(rb.ids, rb.n);
    mc->lbytes = mc->lfreed = 0;
}

void *mc_alloc_large(size_t size, size_t align, bool zero)
{
    int st = atomic_load(&hdc_state);
    if (st == HDC_DETACHED) {
        errno = ENOTCONN;
        return NULL;
    }
    unsigned c = align <= HD_PAGE_SIZE ? hd_large_to_class(size) : 0;
    if (c) {                         /* a large class: from the cache */
        void *p = mc_alloc_class(c, size, zero);
        if (p) {
            hd_mcache_t *mc = mc_tls;                    /* mc_alloc_class made it */
            st_bump(&mc->st.cur.small_allocs[c], 1);
            mc->cls[c].gc_allocs++;
            uint64_t b = hd_cls_size(c);
            mc->tight = mc->tight > b ? mc->tight - b : 0;
            if ((mc->lbytes += b) >= (mc->gc_every ? mc->gc_every : MC_LARGE_GC_BYTES) || mc->tight)
                mc_large_trim(mc);
        }
        return p;
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
        if (errno == ENOMEM && mc_enomem_retry(mc && mc->epoch == atomic_load(&hdc_epoch) ? mc : NULL, pgen, fgen))
            rc = tp_alloc_large(pages, align_pages, zero, &id);
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

enum hd_free_result mc_free_local(uint32_t id, unsigned cls, hd_ostate_t *st, unsigned i)
{
    hd_mcache_t *mc = mc_tls;
    if (!mc || cls >= HD_NUM_CLASSES || cls == HD_TINY_SIZE_CLASS)
        return HD_FREE_REMOTE;
    mc_span_t *s = &mc->cls[cls].cur;
    if (s->id != id || mc->epoch != atomic_load_explicit(&hdc_epoch, memory_order_relaxed))
        return HD_FREE_REMOTE;       /* another thread's span, or a cache about to forget it */
    enum hd_free_result r = hd_obj_free_owner(st, i);
    if (r == HD_FREE_OK)
        s->live0--;                  /* FREE at once: the next count must not miss an allocation */
    return r;
}

/* This thread freed a large-class object (malloc.c): a Flush that came
 * meanwhile is acted on now (a thread that only frees must give memory back
 * too), and so many bytes freed since the last trim trim again; after a
 * Flush every such free does. */
void mc_large_freed(unsigned c)
{
    hd_mcache_t *mc = mc_tls;
    if (!mc || !hd_is_lclass(c) || mc->epoch != atomic_load_explicit(&hdc_epoch, memory_order_relaxed))
        return;
    int e = errno;                   /* free() leaves errno alone */
    mc_check_stale(mc);
    mc->lfreed += hd_cls_size(c);
    if (mc->tight || mc->lfreed >= (mc->gc_every ? mc->gc_every : MC_LARGE_GC_BYTES))
        mc_large_trim(mc);
    errno = e;
}
