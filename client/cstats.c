/* cstats.c: the process's memstats slot (shm/layout.h hd_cstats_t, written
 * through the seqlock of shm/cstats.h).
 *
 * Owns: our stats slot (the daemon gives one per connection: a one-page
 * memfd of its own, passed with the Welcome to us alone and mapped here, so
 * no other client can write it; Welcome.slot is its number), and the stats lock that serializes this process's
 * updates of it. The threads count in their caches (mcache.c, st_thread_t)
 * and add their counts here at refill, release, thread exit, every
 * ST_FREE_FLUSH frees, heapd_flush, detach and exit.
 *
 * The update is Go's consistentHeapStats writer: seq becomes odd, the
 * counters grow, seq becomes even again (release). The daemon reads the slot
 * without asking us: it retries while seq is odd or has changed, so it never
 * sees half an update. The lock keeps two threads of this process from
 * interleaving their updates; other processes cannot write our slot (they
 * have no mapping of it).
 *
 * The slot's lease (the rule that makes this writer safe without checking
 * the slot's owner field, which would race with the daemon reusing it): the
 * daemon frees a slot, and may give it to another client, only after our
 * process is dead (its pidfd) or after we closed our connection with nothing
 * cached (a detach). A connection the daemon drops, or one that breaks, does
 * not end the lease: the daemon keeps the slot quarantined until we exit.
 * So the slot is ours from Welcome until st_forget_slot, and every path that
 * closes the connection on our side forgets the slot first (detach, the fork
 * child's inherited connection, transport.c's tp_broken), under this lock,
 * so no update is under way or can start once the daemon sees the close.
 * (The lead moves this rule next to hd_cstats_t in shm/layout.h.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <string.h>

#include "heapd.h"
#include "internal.h"
#include "lockorder.h"

static pthread_mutex_t st_mu = PTHREAD_MUTEX_INITIALIZER;
static hd_cstats_t *st_slot;            /* st_mu; ours until st_forget_slot (the lease, above) */
static void *st_map;                    /* st_mu; our mapping of the slot's memfd, or NULL */
#define ST_MAP_BYTES 4096u              /* the daemon sizes each slot memfd to one page */

static void st_lock(void)
{
    pthread_mutex_lock(&st_mu);
    HD_LOCK_TAKEN(HD_LOCK_ST, "st_mu");
}
static void st_unlock(void)
{
    HD_LOCK_DROPPED(HD_LOCK_ST);
    pthread_mutex_unlock(&st_mu);
}

void st_lock_reinit(void) { pthread_mutex_init(&st_mu, NULL); }

/* st_mu held. */
static void st_unmap(void)
{
    if (st_map)
        munmap(st_map, ST_MAP_BYTES);
    st_map = NULL;
    st_slot = NULL;
}

/* heapd_bad_frees() when this slot was given: the slot reports the bad frees
 * detected since (a fork child starts from its parent's count; st_mu). */
static uint64_t st_bad_base;

void st_set_slot(int fd)
{
    struct stat sb;
    void *m = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &sb) == 0 && sb.st_size >= (off_t)sizeof(hd_cstats_t))
        m = mmap(NULL, ST_MAP_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    st_lock();
    st_unmap();
    if (m != MAP_FAILED)
        st_map = st_slot = m;
    st_bad_base = heapd_bad_frees();
    st_unlock();
}

void st_use_slot(hd_cstats_t *slot)
{
    st_lock();
    st_unmap();
    st_slot = slot;
    st_bad_base = heapd_bad_frees();
    st_unlock();
}

void st_forget_slot(void)
{
    st_lock();
    st_unmap();
    st_unlock();
}

bool st_have_slot(void)
{
    st_lock();
    bool r = st_slot != NULL;
    st_unlock();
    return r;
}

static inline uint64_t ld(const _Atomic uint64_t *x)
{
    return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

bool st_pending(const st_thread_t *t)
{
    for (unsigned c = 0; c < HD_NUM_CLASSES; c++)
        if (ld(&t->cur.small_allocs[c]) != ld(&t->done.small_allocs[c]) ||
            (t->frees && ld(&t->frees[c]) != ld(&t->done.small_frees[c])))
            return true;
    return ld(&t->cur.tiny_allocs) != ld(&t->done.tiny_allocs) ||
           ld(&t->cur.large_allocs) != ld(&t->done.large_allocs) ||
           ld(&t->cur.large_frees) != ld(&t->done.large_frees) ||
           ld(&t->cur.refill_waits) != ld(&t->done.refill_waits);
}

/* slot += cur - done; done = cur. cur and done are this process's own
 * counters (relaxed atomics: another thread of ours may read them); the slot
 * is written through shm/cstats.h. */
static inline void st_move(_Atomic uint64_t *slot, _Atomic uint64_t *cur, _Atomic uint64_t *done)
{
    uint64_t c = ld(cur), d = ld(done);
    if (c == d)
        return;
    hd_cstats_add(slot, c - d);
    atomic_store_explicit(done, c, memory_order_relaxed);
}

void st_flush(st_thread_t *t, uint64_t mcache_bytes)
{
    st_lock();
    hd_cstats_t *s = st_slot;
    if (s) {
        uint64_t q = hd_cstats_begin(s);  /* odd: under way */
        HDC_CRASHPOINT("flush");          /* seq odd: the daemon must not wait for it */
        for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
            st_move(&s->small_allocs[c], &t->cur.small_allocs[c], &t->done.small_allocs[c]);
            if (t->frees)
                st_move(&s->small_frees[c], &t->frees[c], &t->done.small_frees[c]);
        }
        /* large classes: per class, and into the large totals with the
         * class's bytes (the same table at allocation and at free) */
        for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
            unsigned c = HD_FIRST_LARGE_CLASS + k;
            uint64_t bytes = hd_cls_size(c);
            uint64_t ca = ld(&t->cur.small_allocs[c]), a = ca - ld(&t->done.small_allocs[c]);
            uint64_t cf = t->frees ? ld(&t->frees[c]) : 0, f = t->frees ? cf - ld(&t->done.small_frees[c]) : 0;
            if (a) {
                hd_cstats_add(&s->lclass_allocs[k], a);
                hd_cstats_add(&s->large_allocs, a);
                hd_cstats_add(&s->large_alloc_bytes, a * bytes);
                atomic_store_explicit(&t->done.small_allocs[c], ca, memory_order_relaxed);
            }
            if (f) {
                hd_cstats_add(&s->lclass_frees[k], f);
                hd_cstats_add(&s->large_frees, f);
                hd_cstats_add(&s->large_free_bytes, f * bytes);
                atomic_store_explicit(&t->done.small_frees[c], cf, memory_order_relaxed);
            }
        }
        st_move(&s->refill_waits, &t->cur.refill_waits, &t->done.refill_waits);
        st_move(&s->refill_wait_ns, &t->cur.refill_wait_ns, &t->done.refill_wait_ns);
        hd_cstats_set(&s->bad_frees, heapd_bad_frees() - st_bad_base);   /* a process-wide count */
        st_move(&s->tiny_allocs, &t->cur.tiny_allocs, &t->done.tiny_allocs);
        st_move(&s->large_allocs, &t->cur.large_allocs, &t->done.large_allocs);
        st_move(&s->large_alloc_bytes, &t->cur.large_alloc_bytes, &t->done.large_alloc_bytes);
        st_move(&s->large_frees, &t->cur.large_frees, &t->done.large_frees);
        st_move(&s->large_free_bytes, &t->cur.large_free_bytes, &t->done.large_free_bytes);
        hd_cstats_set(&s->mcache_bytes, mcache_bytes);
        hd_cstats_add(&s->flushes, 1);
        hd_cstats_end(s, q);              /* even: consistent */
    }
    st_unlock();
}

/* ---- heapd_stats: the numbers a process needs to size itself -------------------- */

/* The quota this connection set (heapd_set_quota), with the client id it was
 * set for: a fork child or a new attach is another connection, without one. */
static _Atomic uint64_t st_quota;
static _Atomic uint32_t st_quota_client;

void st_note_quota(uint64_t bytes)
{
    atomic_store(&st_quota, bytes);
    atomic_store(&st_quota_client, hdc_client_id);
}

int heapd_stats(struct heapd_stats *out, size_t size)
{
    if (!out || size < HEAPD_STATS_SIZE_V1) {
        errno = EINVAL;
        return -1;
    }
    if (atomic_load(&hdc_state) == HDC_DETACHED || !hdc_seg.hdr) {
        errno = ENOTCONN;
        return -1;
    }
    struct heapd_stats st;
    memset(&st, 0, sizeof st);
    /* Our threads' counts (the calling thread's current spans included)
     * into our slot first: no round trip, the slot is ours to write (a fork
     * child that never reconnected gets one). */
    tp_lock();
    mc_stats_flush_all_locked(false);
    uint32_t me = hdc_client_id;
    tp_unlock();
    st_lock();
    hd_cstats_t *s = st_slot;             /* ours while we hold it: the slot's lease */
    if (s) {
        for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
            st.allocated_bytes += hd_cstats_ld(&s->small_allocs[c]) * hd_class_to_size[c];
            st.freed_bytes += hd_cstats_ld(&s->small_frees[c]) * hd_class_to_size[c];
        }
        st.allocated_bytes += hd_cstats_ld(&s->large_alloc_bytes);
        st.freed_bytes += hd_cstats_ld(&s->large_free_bytes);
        st.cached_bytes = hd_cstats_ld(&s->mcache_bytes);
    }
    st_unlock();
    if (atomic_load(&st_quota_client) == me)
        st.quota = atomic_load(&st_quota);
    const hd_header_t *h = hdc_seg.hdr;
    st.committed_bytes = hd_book(&h->committed_bytes);
    st.soft_limit = hd_book(&h->soft_limit);
    st.hard_limit = hd_book(&h->hard_limit);
    st.in_use_bytes = hd_book(&h->pages_inuse) * HD_PAGE_SIZE;
    st.heap_bytes = hdc_seg.npages * HD_PAGE_SIZE;
    /* The level the daemon's rules give these numbers (heapd_on_pressure). */
    if (st.hard_limit && st.committed_bytes + HD_PAGE_SIZE > st.hard_limit)
        st.pressure_level = 3;
    else if (st.soft_limit && st.committed_bytes > st.soft_limit)
        st.pressure_level = 2;
    else if (st.soft_limit && st.committed_bytes > st.soft_limit / 100 * 95)
        st.pressure_level = 1;
    memcpy(out, &st, size < sizeof st ? size : sizeof st);
    return 0;
}
