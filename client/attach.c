/* attach.c: joining the shared heap, leaving it, and fork().
 *
 * Owns: the client state (hdc_state, hdc_client_id, hdc_epoch), the segment
 * mapping and its view hdc_seg, the socket path (for a fork child's
 * reconnect), and the process hooks (pthread_atfork, atexit).
 *
 * Attach: Hello → Welcome + fds [meta, heap] (transport.c); map meta
 * read-only at map_base and heap read-write right after it, both
 * MAP_FIXED_NOREPLACE so we never clobber a mapping of our own; check the
 * header against the Welcome and against hd_layout (we index the span table
 * and object states with those offsets, so they must be exactly what we compute);
 * close the fds (the mappings keep the memfds alive).
 *
 * fork(): prepare takes tp_lock and the cache registry lock, so the child
 * inherits no half-done RPC or registry update; the parent releases them. The
 * child re-initializes both locks, closes the inherited socket and io_uring
 * ring without sending anything (the cached spans and the pending batches
 * belong to the parent, which goes on using them), drops every cache (its own
 * thread's cache forgets its spans; the other threads' caches are unmapped,
 * those threads do not exist in the child), bumps hdc_epoch, keeps the
 * mapping, and becomes HDC_FORKED: its first RPC reconnects as a new client
 * (hdc_reconnect_locked), checking that the daemon still serves the memfd we
 * have mapped (same device and inode).
 *
 * Invariants:
 *  - hdc_seg is all zero unless the segment is mapped, so every pointer
 *    test fails cleanly while detached.
 *  - HDC_ATTACHED ⇔ mapped and connected; HDC_FORKED and HDC_DEAD ⇔ mapped,
 *    not connected. State changes happen under tp_lock.
 *  - a fork child never allocates from a span cached by its parent: the
 *    only cache that survives in it is reset before fork() returns.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "heapd.h"
#include "internal.h"
#include "paths.h"
#include "size.h"
#include "lockorder.h"

hd_seg_t hdc_seg;
_Atomic int hdc_state;
uint32_t hdc_client_id;
bool hdc_reclaim_at_exit;
_Atomic uint64_t hdc_epoch;

static char hdc_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static void *hdc_meta, *hdc_heap;          /* the two mappings */
static size_t hdc_meta_size, hdc_heap_size;
static dev_t hdc_heap_dev;                 /* identity of the heap memfd */
static ino_t hdc_heap_ino;
static pthread_once_t hdc_once = PTHREAD_ONCE_INIT;

/* ---- mapping --------------------------------------------------------------- */

static void *hdc_map_at(uintptr_t addr, size_t len, int prot, int fd)
{
    /* MAP_NORESERVE: a hugetlb heap must not reserve its whole pool at map
     * time; the daemon commits (fallocate) each span before handing it out. */
    void *p = mmap((void *)addr, len, prot, MAP_SHARED | MAP_FIXED_NOREPLACE | MAP_NORESERVE, fd, 0);
    if (p == MAP_FAILED) {
        if (errno == EEXIST)
            fprintf(stderr, "heapd: cannot map the heap at %#lx (+%zu bytes): the address range "
                            "is already in use in this process\n", (unsigned long)addr, len);
        return NULL;
    }
    if ((uintptr_t)p != addr) {          /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
        munmap(p, len);
        fprintf(stderr, "heapd: cannot map the heap at %#lx: the address range is in use\n",
                (unsigned long)addr);
        errno = EEXIST;
        return NULL;
    }
    return p;
}

/* The header must describe exactly the layout we will index. */
static bool hdc_header_ok(const hd_header_t *h, const tp_welcome_t *w)
{
    if (h->magic != HD_MAGIC || h->layout_version != HD_LAYOUT_VERSION || h->base != w->map_base ||
        h->meta_size != w->meta_size || h->heap_size != w->heap_size || h->npages == 0 ||
        h->npages > HD_MAX_NPAGES)
        return false;
    hd_header_t ref = {0};
    hd_layout(&ref, h->base, h->npages);
    return ref.meta_size == h->meta_size && ref.heap_size == h->heap_size &&
           ref.span_off == h->span_off && ref.pagemap_off == h->pagemap_off &&
           ref.slots_off == h->slots_off && ref.tiny_off == h->tiny_off &&
           ref.pages_off == h->pages_off && ref.cstats_off == h->cstats_off;
}

/* Map the segment the Welcome describes; fills hdc_seg. tp_lock held. */
static int hdc_map_locked(const tp_welcome_t *w, const int fds[3])
{
    struct stat sm, sh;
    if (w->map_base % 4096 || w->meta_size < HD_HEADER_BYTES || w->meta_size % 4096 ||
        w->heap_size == 0 || w->map_base + w->meta_size < w->map_base ||
        w->map_base + w->meta_size + w->heap_size < w->map_base + w->meta_size ||
        fstat(fds[0], &sm) < 0 || fstat(fds[1], &sh) < 0 ||
        (uint64_t)sm.st_size < w->meta_size || (uint64_t)sh.st_size < w->heap_size) {
        fprintf(stderr, "heapd: the daemon described a segment this client cannot map\n");
        errno = EPROTO;
        return -1;
    }
    void *meta = hdc_map_at(w->map_base, w->meta_size, PROT_READ, fds[0]);
    if (!meta)
        return -1;
    void *heap = hdc_map_at(w->map_base + w->meta_size, w->heap_size, PROT_READ | PROT_WRITE, fds[1]);
    if (!heap) {
        int e = errno;
        munmap(meta, w->meta_size);
        errno = e;
        return -1;
    }
    if (!hdc_header_ok(meta, w)) {
        fprintf(stderr, "heapd: the segment header does not match this client's layout\n");
        munmap(heap, w->heap_size);
        munmap(meta, w->meta_size);
        errno = EPROTO;
        return -1;
    }
    if (mc_owners_map(((const hd_header_t *)meta)->npages) < 0) {   /* the owner table (mcache.c) */
        munmap(heap, w->heap_size);
        munmap(meta, w->meta_size);
        errno = ENOMEM;
        return -1;
    }
    hdc_meta = meta;
    hdc_heap = heap;
    hdc_meta_size = w->meta_size;
    hdc_heap_size = w->heap_size;
    hdc_heap_dev = sh.st_dev;
    hdc_heap_ino = sh.st_ino;
    hd_seg_view(&hdc_seg, meta);
    return 0;
}

/* ---- process hooks ------------------------------------------------------------ */

static void hdc_prepare(void)
{
    tp_lock();
    mc_reg_lock();
}

static void hdc_parent(void)
{
    mc_reg_unlock();
    tp_unlock();
}

static void hdc_child(void)
{
    HD_LOCK_RESET();                 /* prepare's locks are reinitialized, not released */
    tp_lock_reinit();
    mc_reg_lock_reinit();
    st_lock_reinit();
#ifdef HEAPD_CRASHPOINTS
    hdc_crashpoint_reset();
#endif
    int st = atomic_load(&hdc_state);
    if (st == HDC_DETACHED)
        return;
    tp_close_locked(false);          /* sends nothing: the parent's connection */
    st_forget_slot();                /* the parent's: we get our own when we reconnect */
    hdc_listener_forget();
    mc_forget_all_locked(true);
    atomic_fetch_add(&hdc_epoch, 1);
    if (st != HDC_DEAD)
        atomic_store(&hdc_state, HDC_FORKED);
}

/* At exit, give back the exiting thread's cache and send what is pending
 * (large frees above all: nobody else will). The daemon reclaims the other
 * threads' spans when the connection closes (exit() does not stop those
 * threads, so their caches are left alone); releasing ours here also closes
 * its open tiny block, which the daemon cannot know to close. */
static void hdc_atexit(void)
{
    if (atomic_load(&hdc_state) == HDC_DETACHED)
        return;
    mc_release_current();
    tp_lock();
    mc_stats_flush_all_locked(false);  /* memstats: what every thread counted (threads still run) */
    tp_unlock();
    tp_flush();
}

static void hdc_init_once(void)
{
    pthread_atfork(hdc_prepare, hdc_parent, hdc_child);
    atexit(hdc_atexit);
}

void hdc_hooks_init(void) { pthread_once(&hdc_once, hdc_init_once); }

#ifdef HEAPD_CRASHPOINTS
/* Crash points (internal.h). The counter is shared by every thread; the
 * setting is read at the first pass (no allocation: getenv, strtoull). */
static _Atomic uint64_t hdc_cp_passes;
static _Atomic int64_t hdc_cp_at = -1;    /* -1: not read yet, -2: being read, 0: off */
static _Atomic int hdc_cp_kill;
static char hdc_cp_only[16];              /* "@name": count that point only */

void hdc_crashpoint_reset(void)
{
    atomic_store(&hdc_cp_passes, 0);
    atomic_store(&hdc_cp_at, -1);
}

void hdc_crashpoint(const char *where)
{
    int64_t at = atomic_load_explicit(&hdc_cp_at, memory_order_acquire);
    while (at < 0) {            /* one thread reads the setting, the others wait for it */
        int64_t unread = -1;
        if (at == -1 && atomic_compare_exchange_strong(&hdc_cp_at, &unread, -2)) {
            const char *e = getenv("HEAPD_CRASHPOINT");
            char *end = NULL;
            unsigned long long n = e ? strtoull(e, &end, 10) : 0;
            bool bykill = end && strncmp(end, ":kill", 5) == 0;
            if (bykill)
                end += 5;
            snprintf(hdc_cp_only, sizeof(hdc_cp_only), "%s", end && *end == '@' ? end + 1 : "");
            atomic_store(&hdc_cp_kill, bykill);
            atomic_store_explicit(&hdc_cp_at, (int64_t)(n > INT64_MAX ? INT64_MAX : n), memory_order_release);
        }
        at = atomic_load_explicit(&hdc_cp_at, memory_order_acquire);
    }
    if (at == 0 || (hdc_cp_only[0] && strcmp(hdc_cp_only, where) != 0))
        return;
    if (atomic_fetch_add(&hdc_cp_passes, 1) + 1 != (uint64_t)at)
        return;
    if (atomic_load(&hdc_cp_kill))
        raise(SIGKILL);
    _exit(99);
}
#endif

/* ---- attach, reconnect, detach ------------------------------------------------- */

/* HEAPD_QUOTA (GOMEMLIMIT's size syntax, shm/size.h): the quota of every
 * connection this process makes, so of a fork child's too (its reconnect
 * sets it again) and of a program under libheapd-malloc.so. Unset or empty:
 * none. 0, or -1 with errno EINVAL and a message for a malformed value. */
static int hdc_env_quota(uint64_t *bytes)
{
    const char *q = getenv("HEAPD_QUOTA");
    *bytes = 0;
    if (!q || !*q)
        return 0;
    if (hd_parse_size(q, bytes) < 0) {
        fprintf(stderr, "heapd: HEAPD_QUOTA=%s: %s\n", q, HD_SIZE_FORMS);
        errno = EINVAL;
        return -1;
    }
    return 0;
}

/* tp_lock held, just connected: set the environment's quota (a failure is
 * reported, the connection stays). */
static void hdc_env_quota_apply_locked(uint64_t bytes)
{
    if (!bytes)
        return;
    if (tp_set_quota_locked(bytes) == 0)
        st_note_quota(bytes);
    else
        fprintf(stderr, "heapd: HEAPD_QUOTA: the daemon refused the quota: %s\n", strerror(errno));
}

int heapd_attach(const char *socket)
{
    char path[sizeof hdc_path];
    if (socket ? snprintf(path, sizeof path, "%s", socket) >= (int)sizeof path
               : hd_default_socket(path, sizeof path) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    uint64_t quota;
    if (hdc_env_quota(&quota) < 0)
        return -1;
    hdc_hooks_init();
    tp_lock();
    if (atomic_load(&hdc_state) != HDC_DETACHED) {
        tp_unlock();
        errno = EISCONN;
        return -1;
    }
    tp_welcome_t w;
    int fds[3];
    if (tp_connect_locked(path, &w, fds) < 0) {
        int e = errno;
        tp_unlock();
        errno = e;
        return -1;
    }
    int rc = hdc_map_locked(&w, fds);
    int e = errno;
    close(fds[0]);
    close(fds[1]);
    if (rc < 0) {
        if (fds[2] >= 0)
            close(fds[2]);
        tp_close_locked(false);
        tp_unlock();
        errno = e;
        return -1;
    }
    memcpy(hdc_path, path, sizeof path);
    hdc_client_id = w.client_id;
    st_set_slot(fds[2]);
    if (fds[2] >= 0)
        close(fds[2]);
    atomic_fetch_add(&hdc_epoch, 1);
    atomic_store(&hdc_state, HDC_ATTACHED);
    hdc_env_quota_apply_locked(quota);
    if (hdc_pressure_wanted())
        (void)hdc_listener_start_locked();  /* best effort: pressure then waits for a slow path */
    tp_unlock();
    return 0;
}

int hdc_reconnect_locked(void)
{
    tp_welcome_t w;
    int fds[3];
    if (tp_connect_locked(hdc_path, &w, fds) < 0) {
        int e = errno;
        if (e == ENOENT || e == ECONNREFUSED || e == EPIPE || e == ECONNRESET) {
            atomic_store(&hdc_state, HDC_DEAD);   /* the daemon we forked under is gone */
            e = EPIPE;
        }
        errno = e;
        return -1;
    }
    struct stat sh;
    bool same = fstat(fds[1], &sh) == 0 && sh.st_dev == hdc_heap_dev && sh.st_ino == hdc_heap_ino &&
                w.map_base == (uintptr_t)hdc_meta && w.meta_size == hdc_meta_size &&
                w.heap_size == hdc_heap_size;
    close(fds[0]);
    close(fds[1]);
    if (!same) {                     /* a new daemon, with another segment */
        if (fds[2] >= 0)
            close(fds[2]);
        tp_close_locked(false);
        atomic_store(&hdc_state, HDC_DEAD);
        errno = EPIPE;
        return -1;
    }
    hdc_client_id = w.client_id;
    st_set_slot(fds[2]);
    if (fds[2] >= 0)
        close(fds[2]);
    atomic_store(&hdc_state, HDC_ATTACHED);
    uint64_t quota;
    if (hdc_env_quota(&quota) == 0)  /* checked at attach: the environment may have changed since */
        hdc_env_quota_apply_locked(quota);
    if (hdc_pressure_wanted())
        (void)hdc_listener_start_locked();
    return 0;
}

void heapd_detach(void)
{
    if (atomic_load(&hdc_state) == HDC_DETACHED)
        return;
    hdc_listener_stop();             /* before the connection closes under it */
    mc_release_current();            /* queues Release for the calling thread's spans */
    tp_lock();
    if (atomic_load(&hdc_state) == HDC_DETACHED) {
        tp_unlock();
        return;
    }
    mc_stats_flush_all_locked(true);   /* memstats: every thread's counts (they have stopped) */
    mc_release_all_locked();           /* every thread's spans: the close then ends our lease */
    st_forget_slot();                  /* before the close: the daemon may reuse it then (cstats.c) */
    tp_close_locked(true);
    mc_forget_all_locked(false);
    memset(&hdc_seg, 0, sizeof hdc_seg);
    munmap(hdc_heap, hdc_heap_size);
    munmap(hdc_meta, hdc_meta_size);
    hdc_meta = hdc_heap = NULL;
    atomic_fetch_add(&hdc_epoch, 1);
    atomic_store(&hdc_state, HDC_DETACHED);
    tp_unlock();
}

const char *heapd_transport(void) { return tp_name(); }
