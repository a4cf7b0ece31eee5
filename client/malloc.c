/* malloc.c: the public allocation API over the thread caches (mcache.c) and
 * the free path.
 *
 * Owns: the choice of path for each request (tiny < 16 B, small <= 32 KiB,
 * large above, aligned variants), realloc's keep-or-move rule, heapd_free's
 * error handling and the bad-free counter.
 *
 * Free (any thread of any process, lock-free): hd_free() (span.h) finds the
 * span through the pagemap, checks that p is an object start and turns its
 * state byte ALLOCATED -> FREED with one CAS (tiny objects: clears their
 * start bit; the block is freed with the last one). Large objects are freed by an async, batched
 * FreeLarge carrying the span's gen, so a late free of a reused span is
 * refused by the daemon. Nothing on this path writes anything but the one
 * state byte (or block word) of the object being freed: an invalid free is
 * reported and changes nothing. heapd_free's common path (a small object
 * freed, counted in mc_tls_frees) is inline and makes no call; the rest is
 * free_rest.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "heapd.h"
#include "internal.h"
#include "live.h"

static _Atomic uint64_t hdc_bad;

/* Reports are rate-limited, so a loop of bad frees cannot flood stderr: the
 * first HDC_BAD_FREE_BURST are printed, then at most one line per second,
 * saying how many went unreported since the last line. heapd_bad_frees()
 * still counts every one. Lock-free: the thread that moves the second on
 * prints; the others count themselves as unreported. */
#define HDC_BAD_FREE_BURST 5u
static _Atomic uint64_t hdc_bad_last_s, hdc_bad_unreported;

void hdc_report_bad_free(const void *p, const char *why)
{
    uint64_t n = atomic_fetch_add_explicit(&hdc_bad, 1, memory_order_relaxed) + 1;
    const char *a = getenv("HEAPD_ABORT_ON_ERROR");
    bool abort_now = a && strcmp(a, "1") == 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec, last = atomic_load_explicit(&hdc_bad_last_s, memory_order_relaxed);
    char buf[224];
    int len;
    if (n <= HDC_BAD_FREE_BURST || abort_now) {
        atomic_store_explicit(&hdc_bad_last_s, now, memory_order_relaxed);
        len = snprintf(buf, sizeof buf, "heapd: free(%p): %s%s\n", p, why,
                       n == HDC_BAD_FREE_BURST ? " (further reports: at most one a second)" : "");
    } else if (now > last && atomic_compare_exchange_strong(&hdc_bad_last_s, &last, now)) {
        uint64_t skipped = atomic_exchange_explicit(&hdc_bad_unreported, 0, memory_order_relaxed);
        len = snprintf(buf, sizeof buf, "heapd: free(%p): %s (%llu more bad frees not reported; %llu in all)\n", p,
                       why, (unsigned long long)skipped, (unsigned long long)n);
    } else {
        atomic_fetch_add_explicit(&hdc_bad_unreported, 1, memory_order_relaxed);
        return;
    }
    if (len > 0)
        (void)!write(2, buf, (size_t)len < sizeof buf ? (size_t)len : sizeof buf - 1);
    if (abort_now)
        abort();
}

uint64_t heapd_bad_frees(void) { return atomic_load_explicit(&hdc_bad, memory_order_relaxed); }

/* Go's tiny alignment: by the size's low bits. */
static inline size_t tiny_align(size_t n)
{
    return (n & 7) == 0 ? 8 : (n & 3) == 0 ? 4 : (n & 1) == 0 ? 2 : 1;
}

static void *alloc_any(size_t n, bool zero)
{
    if (n < HD_TINY_SIZE) {
        if (n == 0)
            n = 1;                   /* a unique object, freeable like any other */
        return mc_alloc_tiny(n, tiny_align(n), zero);
    }
    if (n <= HD_MAX_SMALL_SIZE)
        return mc_alloc_small(n, zero);
    return mc_alloc_large(n, 0, zero);
}

void *heapd_malloc(size_t size) { return alloc_any(size, false); }

void *heapd_calloc(size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return alloc_any(n, true);
}

void *heapd_aligned_alloc(size_t align, size_t size)
{
    if (align == 0 || (align & (align - 1))) {
        errno = EINVAL;
        return NULL;
    }
    if (size == 0)
        size = 1;
    if (size < HD_TINY_SIZE && align <= HD_TINY_SIZE) {
        size_t a = tiny_align(size);
        return mc_alloc_tiny(size, a > align ? a : align, false);
    }
    if (size <= HD_MAX_SMALL_SIZE && align <= HD_PAGE_SIZE) {
        unsigned c = mc_aligned_class(size, align);
        if (c)                       /* always found: the 32 KiB class is page aligned */
            return mc_alloc_class(c, size, false);
    }
    return mc_alloc_large(size, align, false);
}

/* Everything but a counted small free: large objects, large-class objects,
 * tiny objects whose block stays live, and bad frees. Out of line, so that
 * heapd_free's common path saves no registers and makes no call. */
static __attribute__((noinline, cold)) void free_rest(void *p, enum hd_free_result r, uint32_t id, unsigned cls)
{
    if (r == HD_FREE_REMOTE)         /* a large-class object of a chunk we cache: the owner-local hook */
        r = hd_free_by(&hdc_seg, p, &id, &cls, hdc_client_id, mc_free_local);
    switch (r) {
    case HD_FREE_OK:
        if (cls) {                   /* a large class: counted per object too (cstats.c adds its bytes) */
            uint64_t v = atomic_load_explicit(&mc_tls_frees[cls], memory_order_relaxed) + 1;
            atomic_store_explicit(&mc_tls_frees[cls], v, memory_order_relaxed);
            if (v % ST_FREE_FLUSH == 1)
                mc_stats_free_tick();
            mc_large_freed(cls);
        }
        return;
    case HD_FREE_LARGE: {
        /* Read the span once, before the free is queued: tp_free_large may
         * send the batch at once, the daemon may free the span and give its
         * id to another process's span of another size, and a second read of
         * npages would count that span's bytes (memstats drift, issue 9). */
        const hd_span_t *sp = &hdc_seg.spans[id];
        uint32_t gen = sp->gen, npages = sp->npages;
        if (tp_free_large(id, gen, npages) < 0)
            hdc_report_bad_free(p, "double free (large object)");
        else
            mc_count_large(false, (uint64_t)npages * HD_PAGE_SIZE);
        return;
    }
    case HD_FREE_NOT_HEAP:
        hdc_report_bad_free(p, "invalid pointer (not in the heap)");
        return;
    case HD_FREE_NOT_START:
        hdc_report_bad_free(p, "not an object start");
        return;
    case HD_FREE_NOT_LIVE:
        hdc_report_bad_free(p, "object not allocated (double free or invalid pointer)");
        return;
    case HD_FREE_DOUBLE:
        hdc_report_bad_free(p, "double free");
        return;
    default:
        return;
    }
}

void heapd_free(void *p)
{
    if (!p)
        return;
    uint32_t id = HD_NO_SPAN;
    unsigned cls;
    enum hd_free_result r = hd_free_by_deferred(&hdc_seg, p, &id, &cls, hdc_client_id, mc_owners, mc_tls_tid);
    if (hd_likely(r == HD_FREE_OK) && hd_likely(cls - 1u < HD_FIRST_LARGE_CLASS - 1u)) {
        /* memstats: a small free counts where it happens (internal.h) */
        uint64_t v = atomic_load_explicit(&mc_tls_frees[cls], memory_order_relaxed) + 1;
        atomic_store_explicit(&mc_tls_frees[cls], v, memory_order_relaxed);
        if (hd_unlikely(v % ST_FREE_FLUSH == 1))
            mc_stats_free_tick();
        return;
    }
    free_rest(p, r, id, cls);
}

size_t heapd_usable_size(const void *p)
{
    size_t n = hd_live_size(&hdc_seg, p);
    if (n >= HD_PAGE_SIZE) {            /* a large object this process freed, its FreeLarge still queued? */
        uint32_t id = hd_span_of(&hdc_seg, p);
        const hd_span_t *sp = &hdc_seg.spans[id];
        if (hd_span_state(sp) == HD_SPAN_LARGE &&
            tp_large_queued(id, sp->gen))
            return 0;
    }
    return n;
}

void *heapd_realloc(void *p, size_t size)
{
    if (!p)
        return heapd_malloc(size);
    size_t old = heapd_usable_size(p);
    if (old == 0) {                  /* also a freed object its span has not swept yet */
        hdc_report_bad_free(p, "realloc of a pointer that is not a live object");
        errno = EINVAL;
        return NULL;
    }
    if (size != 0 && size <= old && size >= old / 2)
        return p;                    /* fits, and not wasting more than half */
    void *q = heapd_malloc(size);    /* size 0: a unique minimal object */
    if (!q)
        return NULL;
    if (size)
        memcpy(q, p, old < size ? old : size);
    heapd_free(p);
    return q;
}

uint64_t heapd_ptr_to_offset(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    if (!hdc_seg.npages || a < hdc_seg.pages || a - hdc_seg.pages >= hdc_seg.npages * HD_PAGE_SIZE)
        return HEAPD_NULL_OFFSET;
    return hd_offset_of(&hdc_seg, p);
}

void *heapd_offset_to_ptr(uint64_t off)
{
    if (off >= hdc_seg.npages * HD_PAGE_SIZE)
        return NULL;
    return (void *)(hdc_seg.pages + off);
}

int heapd_flush(void)
{
    if (atomic_load(&hdc_state) == HDC_DETACHED) {
        errno = ENOTCONN;
        return -1;
    }
    mc_release_current_free();
    tp_lock();
    mc_stats_flush_all_locked(false);   /* every thread's memstats counts, to our slot */
    tp_unlock();
    if (tp_flush() < 0)
        return -1;
    if (atomic_load(&hdc_state) == HDC_DEAD) {
        errno = EPIPE;               /* nothing was pending, but nothing could be sent */
        return -1;
    }
    return 0;
}
