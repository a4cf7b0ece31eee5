/* bufpool.c: see bufpool.h. Everything under "shared" lives in the heapd
 * heap and is the same in every process; bp_t is this process's handle.
 *
 * Frame states (frame.state):
 *   UNALLOC  no buffer (the pool has not grown into it, or gave it back)
 *   FREE     a buffer, no page: the next miss may take it
 *   CLAIMED  one process took it (a miss filling it, a shrink freeing it)
 *   LOADING  in the page table, being read in by frame.loader (0: nobody;
 *            a waiter takes over a load whose loader is 0 or dead)
 *   VALID    in the page table, holding the page
 * The page table (bucket chains through frame.next) and a frame's pinner
 * slots change only under the lock of the page's partition; pins are
 * dropped without it (a process drops only its own). A frame leaves the
 * table only under that lock with no pins, so a pinned page never moves.
 */
#define _GNU_SOURCE
#include "bufpool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "heapd.h"

#define BP_MAGIC 0x216c6f6f70667562ull  /* "bufpool!" */
#define BP_NONE  UINT64_MAX
#define BP_GROW_RECHECK 64u             /* misses between two heapd_stats looks */

enum { F_UNALLOC = 0, F_FREE, F_CLAIMED, F_LOADING, F_VALID };

struct bp_pinner {
    _Atomic int32_t pid;                /* 0: free slot */
    _Atomic uint32_t n;                 /* pins that process holds */
};

struct bp_frame {
    _Atomic uint64_t page;              /* BP_NONE unless LOADING/VALID */
    _Atomic uint32_t state, pins, usage, dirty;
    _Atomic int32_t loader;
    uint32_t next;                      /* bucket chain: frame index + 1, 0 = end */
    char *buf;                          /* set by the claimer before the state publishes it */
    struct bp_pinner pin[BP_PINNERS];
};

struct bp_shared {
    uint64_t magic;
    uint32_t max_bufs, nbuckets;
    _Atomic uint32_t nbufs, target;
    _Atomic uint64_t hand;
    _Atomic uint64_t hits, misses, evictions, written, grown, shrunk, reaped;
    _Atomic uint64_t last_shrink_ms;    /* the last pressure round some process answered */
    pthread_mutex_t part[BP_PARTS];
    uint32_t *bucket;
    struct bp_frame *frames;
};

struct bp {
    struct bp_shared *s;
    bp_read_fn rd;
    bp_write_fn wr;
    void *arg;
    int32_t pid;
    char name[64];
    unsigned misses_since_check;
    _Atomic bool grow_ok;             /* also written by the pressure callback thread */
    uint32_t grow_cursor;
};

#define add(x, v) atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

static uint32_t bucket_of(const struct bp_shared *s, uint64_t id)
{
    uint64_t z = id + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) & (s->nbuckets - 1));
}

static void part_lock(struct bp_shared *s, uint32_t b)
{
    pthread_mutex_t *m = &s->part[b % BP_PARTS];
    if (pthread_mutex_lock(m) == EOWNERDEAD)    /* its holder died: the chains are short stores, go on */
        pthread_mutex_consistent(m);
}
static void part_unlock(struct bp_shared *s, uint32_t b) { pthread_mutex_unlock(&s->part[b % BP_PARTS]); }

/* Partition lock held. */
static struct bp_frame *lookup(struct bp_shared *s, uint32_t b, uint64_t id)
{
    for (uint32_t i = s->bucket[b]; i; i = s->frames[i - 1].next)
        if (atomic_load(&s->frames[i - 1].page) == id)
            return &s->frames[i - 1];
    return NULL;
}

static void link_frame(struct bp_shared *s, uint32_t b, struct bp_frame *f)
{
    f->next = s->bucket[b];
    s->bucket[b] = (uint32_t)(f - s->frames) + 1;
}

static void unlink_frame(struct bp_shared *s, uint32_t b, struct bp_frame *f)
{
    uint32_t me = (uint32_t)(f - s->frames) + 1;
    for (uint32_t *p = &s->bucket[b]; *p; p = &s->frames[*p - 1].next)
        if (*p == me) {
            *p = f->next;
            return;
        }
}

/* Partition lock held: one more pin by pid. false when BP_PINNERS other
 * processes hold it already. */
static bool pin_add(struct bp_frame *f, int32_t pid)
{
    struct bp_pinner *freeslot = NULL;
    for (unsigned k = 0; k < BP_PINNERS; k++) {
        int32_t p = atomic_load(&f->pin[k].pid);
        if (p == pid) {
            add(f->pin[k].n, 1);
            add(f->pins, 1);
            return true;
        }
        if (p == 0 && !freeslot)
            freeslot = &f->pin[k];
    }
    if (!freeslot)
        return false;
    atomic_store(&freeslot->n, 1);
    atomic_store(&freeslot->pid, pid);
    add(f->pins, 1);
    return true;
}

static bool pin_drop(struct bp_frame *f, int32_t pid)
{
    for (unsigned k = 0; k < BP_PINNERS; k++)
        if (atomic_load(&f->pin[k].pid) == pid && atomic_load(&f->pin[k].n) > 0) {
            if (atomic_fetch_sub(&f->pin[k].n, 1) == 1)
                atomic_store(&f->pin[k].pid, 0);
            atomic_fetch_sub(&f->pins, 1);
            return true;
        }
    return false;
}

static bool gone(int32_t pid) { return pid > 0 && kill(pid, 0) < 0 && errno == ESRCH; }

/* Release the pins of dead processes on a frame in the table. Returns how
 * many. Takes the frame's partition lock. */
static uint64_t reap_frame(struct bp_shared *s, struct bp_frame *f)
{
    uint64_t page = atomic_load(&f->page), n = 0;
    if (page == BP_NONE)
        return 0;
    uint32_t b = bucket_of(s, page);
    part_lock(s, b);
    if (atomic_load(&f->page) == page) {
        for (unsigned k = 0; k < BP_PINNERS; k++) {
            int32_t p = atomic_load(&f->pin[k].pid);
            if (p && gone(p)) {
                uint32_t c = atomic_exchange(&f->pin[k].n, 0);
                atomic_store(&f->pin[k].pid, 0);
                atomic_fetch_sub(&f->pins, c);
                n += c;
            }
        }
    }
    part_unlock(s, b);
    if (n)
        add(s->reaped, n);
    return n;
}

/* Take f out of the table if nobody pins it and (unless force) its usage
 * is 0; write it back first if dirty. It becomes CLAIMED by us. */
static bool evict(bp_t *bp, struct bp_frame *f, bool force)
{
    struct bp_shared *s = bp->s;
    uint64_t page = atomic_load(&f->page);
    if (page == BP_NONE)
        return false;
    uint32_t b = bucket_of(s, page);
    part_lock(s, b);
    uint32_t st = atomic_load(&f->state);
    bool ok = atomic_load(&f->page) == page && atomic_load(&f->pins) == 0 &&
              ((st == F_VALID && (force || atomic_load(&f->usage) == 0)) || st == F_LOADING);
    if (ok) {
        unlink_frame(s, b, f);
        if (st == F_VALID && atomic_exchange(&f->dirty, 0) && bp->wr) {
            if (bp->wr(page, f->buf, bp->arg) == 0)
                add(s->written, 1);
        }
        atomic_store(&f->page, BP_NONE);
        atomic_store(&f->state, F_CLAIMED);
        add(s->evictions, 1);
    }
    part_unlock(s, b);
    return ok;
}

/* The clock sweep: a frame for a new page (CLAIMED), or NULL. */
static struct bp_frame *victim(bp_t *bp)
{
    struct bp_shared *s = bp->s;
    for (uint64_t k = 0; k < (uint64_t)(BP_MAX_USAGE + 2) * s->max_bufs; k++) {
        struct bp_frame *f = &s->frames[add(s->hand, 1) % s->max_bufs];
        uint32_t st = atomic_load(&f->state);
        if (st == F_FREE) {
            if (atomic_compare_exchange_strong(&f->state, &st, F_CLAIMED))
                return f;
            continue;
        }
        if (st != F_VALID && st != F_LOADING)
            continue;
        if (atomic_load(&f->pins) > 0 && (reap_frame(s, f) == 0 || atomic_load(&f->pins) > 0))
            continue;
        uint32_t u = atomic_load(&f->usage);
        if (st == F_VALID && u > 0) {
            atomic_compare_exchange_strong(&f->usage, &u, u - 1);
            continue;
        }
        if (evict(bp, f, false))
            return f;
    }
    return NULL;
}

/* May the pool take another buffer? Memory is free: no pressure, committed
 * under 90% of each limit, this process under its quota. Asked of
 * heapd_stats every BP_GROW_RECHECK misses. */
static bool may_grow(bp_t *bp)
{
    struct bp_shared *s = bp->s;
    uint32_t n = atomic_load(&s->nbufs);
    if (n >= s->max_bufs)
        return false;
    if (bp->misses_since_check++ % BP_GROW_RECHECK == 0) {
        struct heapd_stats st;
        bp->grow_ok = false;
        if (heapd_stats(&st, sizeof st) == 0) {
            uint64_t next = st.committed_bytes + 16 * BP_PAGE_SIZE;
            int64_t mine = (int64_t)(st.allocated_bytes - st.freed_bytes);
            bp->grow_ok = st.pressure_level == 0 && (!st.soft_limit || next <= st.soft_limit / 10 * 9) &&
                          (!st.hard_limit || next <= st.hard_limit / 10 * 9) &&
                          (!st.quota || mine + (int64_t)BP_PAGE_SIZE <= (int64_t)st.quota);
        }
        if (bp->grow_ok)
            atomic_store(&s->target, s->max_bufs);      /* memory is free again: lift the cap */
    }
    return bp->grow_ok && n < atomic_load(&s->target);
}

/* A new buffer in an UNALLOC frame (CLAIMED), or NULL. */
static struct bp_frame *grow(bp_t *bp)
{
    struct bp_shared *s = bp->s;
    if (!may_grow(bp))
        return NULL;
    for (uint32_t k = 0; k < s->max_bufs; k++) {
        struct bp_frame *f = &s->frames[(bp->grow_cursor + k) % s->max_bufs];
        uint32_t st = F_UNALLOC;
        if (atomic_load(&f->state) != F_UNALLOC || !atomic_compare_exchange_strong(&f->state, &st, F_CLAIMED))
            continue;
        bp->grow_cursor = (bp->grow_cursor + k + 1) % s->max_bufs;
        f->buf = heapd_malloc(BP_PAGE_SIZE);
        if (!f->buf) {                  /* a limit or our quota said no: evict instead */
            atomic_store(&f->state, F_UNALLOC);
            bp->grow_ok = false;
            return NULL;
        }
        add(s->nbufs, 1);
        add(s->grown, 1);
        return f;
    }
    return NULL;
}

/* f is LOADING and pinned by us: wait until it is VALID, taking the load
 * over when nobody (or a dead process) is loading it. 0 or -1/errno. */
static int wait_loaded(bp_t *bp, struct bp_frame *f, uint64_t id)
{
    for (unsigned spins = 0; atomic_load_explicit(&f->state, memory_order_acquire) == F_LOADING; spins++) {
        int32_t l = atomic_load(&f->loader);
        if ((l == 0 || gone(l)) && atomic_compare_exchange_strong(&f->loader, &l, bp->pid)) {
            if (bp->rd(id, f->buf, bp->arg) < 0) {
                int e = errno;
                atomic_store(&f->loader, 0);
                errno = e;
                return -1;
            }
            atomic_store_explicit(&f->state, F_VALID, memory_order_release);
            return 0;
        }
        if (spins % 16 == 15)
            sched_yield();
    }
    return 0;
}

void *bp_pin(bp_t *bp, uint64_t id)
{
    struct bp_shared *s = bp->s;
    uint32_t b = bucket_of(s, id);
    struct bp_frame *spare = NULL;      /* a frame we claimed that a racing load made useless */
    for (;;) {
        part_lock(s, b);
        struct bp_frame *f = lookup(s, b, id);
        if (f) {
            if (!pin_add(f, bp->pid)) {
                part_unlock(s, b);
                sched_yield();
                continue;
            }
            uint32_t u = atomic_load(&f->usage);
            if (u < BP_MAX_USAGE)
                atomic_compare_exchange_strong(&f->usage, &u, u + 1);
            part_unlock(s, b);
            if (spare)
                atomic_store(&spare->state, F_FREE);
            add(s->hits, 1);
            if (wait_loaded(bp, f, id) < 0) {
                int e = errno;
                bp_unpin(bp, id);
                errno = e;
                return NULL;
            }
            return f->buf;
        }
        if (spare) {                    /* ours to fill */
            f = spare;
            atomic_store(&f->page, id);
            atomic_store(&f->usage, 1);
            atomic_store(&f->dirty, 0);
            atomic_store(&f->loader, bp->pid);
            pin_add(f, bp->pid);
            atomic_store(&f->state, F_LOADING);
            link_frame(s, b, f);
            part_unlock(s, b);
            add(s->misses, 1);
            if (bp->rd(id, f->buf, bp->arg) < 0) {
                int e = errno;
                atomic_store(&f->loader, 0);    /* the next pinner retries the read */
                bp_unpin(bp, id);
                errno = e;
                return NULL;
            }
            atomic_store_explicit(&f->state, F_VALID, memory_order_release);
            return f->buf;
        }
        part_unlock(s, b);
        spare = grow(bp);
        if (!spare)
            spare = victim(bp);
        if (!spare) {
            errno = EBUSY;
            return NULL;
        }
    }
}

void bp_unpin(bp_t *bp, uint64_t id)
{
    struct bp_shared *s = bp->s;
    uint32_t b = bucket_of(s, id);
    part_lock(s, b);
    struct bp_frame *f = lookup(s, b, id);
    if (f)
        pin_drop(f, bp->pid);
    part_unlock(s, b);
}

void bp_dirty(bp_t *bp, uint64_t id)
{
    struct bp_shared *s = bp->s;
    uint32_t b = bucket_of(s, id);
    part_lock(s, b);
    struct bp_frame *f = lookup(s, b, id);
    if (f)
        atomic_store(&f->dirty, 1);
    part_unlock(s, b);
}

unsigned bp_pins(const bp_t *bp, uint64_t id)
{
    struct bp_shared *s = bp->s;
    uint32_t b = bucket_of(s, id);
    part_lock(s, b);
    struct bp_frame *f = lookup(s, b, id);
    unsigned n = f ? atomic_load(&f->pins) : 0;
    part_unlock(s, b);
    return n;
}

uint64_t bp_reap(bp_t *bp)
{
    struct bp_shared *s = bp->s;
    uint64_t n = 0;
    for (uint32_t i = 0; i < s->max_bufs; i++)
        if (atomic_load(&s->frames[i].pins) > 0)
            n += reap_frame(s, &s->frames[i]);
    return n;
}

/* A CLAIMED frame's buffer goes back to the heap. */
static void release_buf(struct bp_shared *s, struct bp_frame *f)
{
    heapd_free(f->buf);
    f->buf = NULL;
    atomic_store(&f->state, F_UNALLOC);
    atomic_fetch_sub(&s->nbufs, 1);
    add(s->shrunk, 1);
}

uint64_t bp_shrink(bp_t *bp, unsigned level, uint64_t bytes_wanted)
{
    struct bp_shared *s = bp->s;
    uint32_t n = atomic_load(&s->nbufs);
    uint64_t want = bytes_wanted / BP_PAGE_SIZE;
    uint64_t limit = level >= 3 ? n : level == 2 ? (want > n / 4 ? want : n / 4) : (want > n / 8 ? want : n / 8);
    unsigned rounds = level >= 3 ? 1 : level == 2 ? 2 : 1;
    uint64_t freed = 0;
    for (uint64_t k = 0; k < (uint64_t)rounds * s->max_bufs && freed < limit; k++) {
        if (atomic_load(&s->nbufs) <= BP_MIN_BUFS)
            break;
        struct bp_frame *f = &s->frames[add(s->hand, 1) % s->max_bufs];
        uint32_t st = atomic_load(&f->state);
        if (st == F_FREE) {
            if (atomic_compare_exchange_strong(&f->state, &st, F_CLAIMED)) {
                release_buf(s, f);
                freed++;
            }
            continue;
        }
        if (st != F_VALID)
            continue;
        if (atomic_load(&f->pins) > 0 && (reap_frame(s, f) == 0 || atomic_load(&f->pins) > 0))
            continue;
        uint32_t u = atomic_load(&f->usage);
        if (level < 3 && u > 0) {
            if (level == 2)             /* level 2 cools as it goes: a second round takes these */
                atomic_compare_exchange_strong(&f->usage, &u, u - 1);
            continue;
        }
        if (evict(bp, f, level >= 3)) {
            release_buf(s, f);
            freed++;
        }
    }
    atomic_store(&s->target, atomic_load(&s->nbufs));   /* no growing until memory is free again */
    bp->grow_ok = false;
    if (freed)
        heapd_flush();                  /* our cached spans and queued frees to the daemon now */
    return freed * BP_PAGE_SIZE;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The daemon asks every process for the same bytes: one process answers a
 * round for the whole pool, or N processes would free N times too much. */
void bp_on_pressure(unsigned level, uint64_t bytes_wanted, void *arg)
{
    bp_t *bp = arg;
    uint64_t now = mono_ms(), last = atomic_load(&bp->s->last_shrink_ms);
    if (now - last < BP_SHRINK_GAP_MS || !atomic_compare_exchange_strong(&bp->s->last_shrink_ms, &last, now))
        return;
    bp_shrink(bp, level, bytes_wanted);
}

static struct bp_shared *pool_new(uint64_t max_bytes)
{
    struct bp_shared *s = heapd_calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->max_bufs = (uint32_t)(max_bytes / BP_PAGE_SIZE);
    s->nbuckets = 1;
    while (s->nbuckets < 2 * s->max_bufs)
        s->nbuckets <<= 1;
    s->frames = heapd_calloc(s->max_bufs, sizeof(struct bp_frame));
    s->bucket = heapd_calloc(s->nbuckets, sizeof(uint32_t));
    if (!s->frames || !s->bucket) {
        heapd_free(s->frames);
        heapd_free(s->bucket);
        heapd_free(s);
        return NULL;
    }
    for (uint32_t i = 0; i < s->max_bufs; i++)
        atomic_store(&s->frames[i].page, BP_NONE);
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    for (unsigned i = 0; i < BP_PARTS; i++)
        pthread_mutex_init(&s->part[i], &a);
    pthread_mutexattr_destroy(&a);
    atomic_store(&s->target, s->max_bufs);
    s->magic = BP_MAGIC;
    return s;
}

static void pool_free(struct bp_shared *s)
{
    for (uint32_t i = 0; i < s->max_bufs; i++)
        if (s->frames[i].buf)
            heapd_free(s->frames[i].buf);
    s->magic = 0;
    heapd_free(s->frames);
    heapd_free(s->bucket);
    heapd_free(s);
}

static bool is_pool(const struct bp_shared *s)
{
    return heapd_usable_size(s) >= sizeof(*s) && s->magic == BP_MAGIC;
}

bp_t *bp_open(const char *name, uint64_t max_bytes, bp_read_fn rd, bp_write_fn wr, void *arg)
{
    if (!rd || max_bytes / BP_PAGE_SIZE < BP_MIN_BUFS || max_bytes / BP_PAGE_SIZE > UINT32_MAX / 2 ||
        strlen(name) >= sizeof(((bp_t *)0)->name)) {
        errno = EINVAL;
        return NULL;
    }
    bp_t *bp = calloc(1, sizeof(*bp));
    if (!bp)
        return NULL;
    bp->rd = rd;
    bp->wr = wr;
    bp->arg = arg;
    bp->pid = (int32_t)getpid();
    strcpy(bp->name, name);
    /* find or create: whoever wins the compare-and-swap made the pool */
    struct bp_shared *s = heapd_root_get(name);
    if (!s && errno == ENOENT) {
        struct bp_shared *mine = pool_new(max_bytes);
        if (!mine)
            goto fail;
        if (heapd_root_cas(name, NULL, mine) == 0) {
            s = mine;
        } else {
            pool_free(mine);            /* another process was faster: use its pool */
            s = heapd_root_get(name);
        }
    }
    if (!s)
        goto fail;
    if (!is_pool(s)) {
        errno = EINVAL;
        goto fail;
    }
    bp->s = s;
    if (heapd_on_pressure(bp_on_pressure, bp) != 0)
        goto fail;
    return bp;
fail:;
    int e = errno;
    free(bp);
    errno = e;
    return NULL;
}

void bp_close(bp_t *bp)
{
    if (!bp)
        return;
    heapd_on_pressure(NULL, NULL);
    struct bp_shared *s = bp->s;
    for (uint32_t i = 0; i < s->max_bufs; i++) {
        struct bp_frame *f = &s->frames[i];
        for (unsigned k = 0; k < BP_PINNERS; k++)
            if (atomic_load(&f->pin[k].pid) == bp->pid) {
                atomic_fetch_sub(&f->pins, atomic_exchange(&f->pin[k].n, 0));
                atomic_store(&f->pin[k].pid, 0);
            }
    }
    free(bp);
}

void bp_destroy(bp_t *bp)
{
    if (!bp)
        return;
    struct bp_shared *s = bp->s;
    heapd_on_pressure(NULL, NULL);
    heapd_root_cas(bp->name, s, NULL);
    for (uint32_t i = 0; i < s->max_bufs; i++)
        if (s->frames[i].buf && atomic_load(&s->frames[i].dirty) && bp->wr && atomic_load(&s->frames[i].page) != BP_NONE)
            bp->wr(atomic_load(&s->frames[i].page), s->frames[i].buf, bp->arg);
    pool_free(s);
    free(bp);
}

void bp_get_stats(const bp_t *bp, bp_stats_t *st)
{
    struct bp_shared *s = bp->s;
    st->hits = atomic_load(&s->hits);
    st->misses = atomic_load(&s->misses);
    st->evictions = atomic_load(&s->evictions);
    st->written = atomic_load(&s->written);
    st->grown = atomic_load(&s->grown);
    st->shrunk = atomic_load(&s->shrunk);
    st->pins_reaped = atomic_load(&s->reaped);
    st->bufs = atomic_load(&s->nbufs);
    st->max_bufs = s->max_bufs;
    st->target = atomic_load(&s->target);
}
