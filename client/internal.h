/* internal.h: what libheapd's files share with one another (and with the
 * unit tests), never with users. Declarations are grouped by the file that
 * defines them. Every name here is hidden from the shared library's ABI.
 *
 * Locks: client/lockorder.h has the one table of every lock in client/ and
 * the order they may be taken in (checked in HEAPD_DEBUG builds). The fast
 * paths (small/tiny allocation from the thread's cache, every free) take no
 * lock. */
#ifndef HEAPD_CLIENT_INTERNAL_H
#define HEAPD_CLIENT_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cstats.h"
#include "segment.h"
#include "span.h"

#define HD_HIDDEN __attribute__((visibility("hidden")))
#define hd_likely(x) __builtin_expect(!!(x), 1)
#define hd_unlikely(x) __builtin_expect(!!(x), 0)

/* ---- attach.c: the process's client state -------------------------------- */

enum hdc_state {
    HDC_DETACHED = 0, /* no mapping, no connection */
    HDC_ATTACHED,     /* mapped and connected */
    HDC_FORKED,       /* a fork child: mapped, not yet connected (reconnects lazily) */
    HDC_DEAD,         /* mapped, the daemon is gone: slow paths fail with EPIPE */
};

/* The segment view; all zero while detached, so every pointer misses it.
 * Written under tp_lock by attach/detach only; read without lock by the fast
 * paths (detach requires that no other thread uses the heap). */
extern HD_HIDDEN hd_seg_t hdc_seg;
extern HD_HIDDEN _Atomic int hdc_state;     /* enum hdc_state */
extern HD_HIDDEN uint32_t hdc_client_id;    /* the daemon's id for us (tp_lock) */
/* Bumped when every cache must forget its spans without releasing them:
 * detach, and in a fork child (the spans belong to the parent). */
extern HD_HIDDEN _Atomic uint64_t hdc_epoch;

/* tp_lock held. In HDC_FORKED state: connect as a new client and check the
 * daemon still serves the segment we have mapped. 0, or -1 with errno (the
 * state becomes HDC_DEAD when the daemon is gone or serves another segment). */
HD_HIDDEN int hdc_reconnect_locked(void);

/* Set before heapd_attach by libheapd-malloc.so (preload/preload.c): Hello
 * says nobody else holds this process's objects, so the daemon gives it a
 * family of its own and frees what it held when the family has gone. */
extern HD_HIDDEN bool hdc_reclaim_at_exit;

/* Register the fork and exit hooks (once per process). */
HD_HIDDEN void hdc_hooks_init(void);

/* malloc.c: the one-line report of a bad free (any thread; never allocates). */
HD_HIDDEN void hdc_report_bad_free(const void *p, const char *why);

/* ---- transport.c: the connection to the daemon ---------------------------- */

HD_HIDDEN void tp_lock(void);
HD_HIDDEN void tp_unlock(void);
/* Reinitialize the lock in a fork child (held by prepare). */
HD_HIDDEN void tp_lock_reinit(void);

typedef struct tp_welcome {
    uint32_t version, client_id;
    uint64_t map_base, heap_size, meta_size;
    uint32_t slot;              /* our memstats slot, 0 = none */
} tp_welcome_t;

/* tp_lock held. Connect to path, say Hello, and read the Welcome and its two
 * fds (meta, heap) into w and fds. On success the connection is the
 * process's connection (io_uring set up unless disabled). -1 with errno:
 * ENOENT/ECONNREFUSED (no daemon), EPROTONOSUPPORT (message printed), EPROTO
 * (a malformed answer), or what the daemon's Error said. */
HD_HIDDEN int tp_connect_locked(const char *path, tp_welcome_t *w, int fds[3]);
/* tp_lock held. graceful: send the pending async messages first. Otherwise
 * (fork child) close the inherited socket and io_uring without sending
 * anything and drop the pending batches: they are the parent's. */
HD_HIDDEN void tp_close_locked(bool graceful);

/* Synchronous calls; each takes tp_lock, sends the pending async batches
 * first and reconnects a fork child. -1 with errno on failure (EPIPE when the
 * daemon is gone, ENOTCONN when detached, ENOMEM/EINVAL from the daemon). */
/* Up to count spans of sizeclass, CACHED by us; the ids go to ids[]. Returns
 * how many (>= 1). */
HD_HIDDEN int tp_refill(unsigned sizeclass, unsigned count, uint32_t *ids);
/* A LARGE span of at least pages pages; its id goes to *id. */
HD_HIDDEN int tp_alloc_large(uint64_t pages, uint64_t align_pages, bool zero, uint32_t *id);

/* Refills ahead of need (issue 9): tp_refill_submit sends a Refill and
 * returns at once with a token (0: nothing was sent; the caller refills
 * synchronously when it must). The reply is read by whoever reads the
 * socket next and kept for the token. tp_refill_collect: its spans into
 * ids[] (n >= 1); 0 when it has not come yet and !wait; -1 with errno when
 * the daemon refused it (ENOMEM...) or the token is gone (connection lost,
 * fork: ECANCELED). *waited_ns (may be NULL) gets the time spent blocked.
 * tp_refill_cancel: the caller will not collect; spans that came or come
 * back for the token are released. _locked: tp_lock held. */
HD_HIDDEN uint64_t tp_refill_submit(unsigned sizeclass, unsigned count);
HD_HIDDEN int tp_refill_collect(uint64_t token, bool wait, uint32_t *ids, uint64_t *waited_ns);
HD_HIDDEN void tp_refill_cancel(uint64_t token);
HD_HIDDEN void tp_refill_cancel_locked(uint64_t token);
/* Refills submitted ahead and not collected yet (tests). */
HD_HIDDEN unsigned tp_refills_in_flight(void);

/* Asynchronous messages: queued, sent in batches (see transport.c). */
HD_HIDDEN void tp_release(const uint32_t *ids, unsigned n);
HD_HIDDEN void tp_release_locked(const uint32_t *ids, unsigned n);   /* tp_lock held */
/* Queue a FreeLarge. -1 if the same span is already queued (a double free). */
HD_HIDDEN int tp_free_large(uint32_t id, uint32_t gen, uint32_t npages);
/* Is a FreeLarge of this span (and gen) queued, not yet sent? */
HD_HIDDEN bool tp_large_queued(uint32_t id, uint32_t gen);
/* Send the pending batches now. 0, or -1 with errno. */
HD_HIDDEN int tp_flush(void);
HD_HIDDEN int tp_flush_locked(void);

/* tp_lock held. The connection's fd for the pressure listener to poll, or
 * -1 when not connected. tp_drain_locked reads every packet waiting on it
 * without blocking (unsolicited ones are handled, stale replies skipped). */
HD_HIDDEN int tp_listen_fd_locked(void);
HD_HIDDEN void tp_drain_locked(void);
/* SetQuota{bytes}. 0 or -1 with errno. */
HD_HIDDEN int tp_set_quota(uint64_t bytes);
HD_HIDDEN int tp_set_quota_locked(uint64_t bytes);   /* tp_lock held */
/* RootUpdate{name, offset, cas, expected} (roots.c). 0 or -1 with errno. */
HD_HIDDEN int tp_root_update(const char *name, uint64_t offset, bool cas, uint64_t expected);
/* ForkBegin before a fork whose child keeps the heap, ForkDone{pid} after it
 * (pid 0: the fork failed): the child joins this process's family (preload
 * mode, HEAPD_PRELOAD_FORK=share). 0 or -1 with errno. */
HD_HIDDEN int tp_fork_begin(void);
HD_HIDDEN int tp_fork_done(pid_t pid);

/* Bumped for every Flush the daemon sends: caches compare it with the value
 * they saw last and give back their spans at their next slow path. */
extern HD_HIDDEN _Atomic uint64_t tp_flush_gen;
HD_HIDDEN const char *tp_name(void);

/* A stand-in for the daemon, for the unit tests: when installed, the
 * synchronous calls and the batched async messages go to these functions
 * (called with tp_lock held) instead of a socket. */
typedef struct tp_backend {
    int (*refill)(void *ctx, unsigned sizeclass, unsigned count, uint32_t *ids); /* n or -errno */
    int (*alloc_large)(void *ctx, uint64_t pages, uint64_t align_pages, bool zero, uint32_t *id);
    void (*release)(void *ctx, const uint32_t *ids, unsigned n);
    void (*free_large)(void *ctx, const uint32_t *ids, const uint32_t *gens, unsigned n);
    void *ctx;
} tp_backend_t;
/* Install (be != NULL) or remove the stand-in, with seg as the segment view
 * and client_id as our id: the client state becomes HDC_ATTACHED, or
 * HDC_DETACHED on removal (caches are dropped either way). */
HD_HIDDEN void hdc_test_install(const tp_backend_t *be, const hd_seg_t *seg, uint32_t client_id);

/* ---- pressure.c: pressure callbacks and their listener thread -------------- */

/* A Pressure arrived (called by whoever read it, under tp_lock). */
HD_HIDDEN void hdc_pressure_note(unsigned level, uint64_t bytes);
/* Pressures received so far (take it before an RPC, compare after). */
HD_HIDDEN uint64_t hdc_pressure_gen(void);
/* After a refused allocation: if a Pressure arrived since `since`, wait
 * (bounded) until the listener ran the callback for it; true when one did
 * arrive (the caller retries once). Never waits on the listener thread. */
HD_HIDDEN bool hdc_pressure_settle(uint64_t since);
/* tp_lock held: start the listener if it is not running. 0 or -1/errno. */
HD_HIDDEN int hdc_listener_start_locked(void);
/* Stop and join the listener (tp_lock NOT held). */
HD_HIDDEN void hdc_listener_stop(void);
/* In a fork child: the listener thread is gone. */
HD_HIDDEN void hdc_listener_forget(void);
/* Is a callback registered? */
HD_HIDDEN bool hdc_pressure_wanted(void);

/* ---- cstats.c: memstats counters (segment.h hd_cstats_t) ------------------- */

/* What a thread counts. Only its thread adds to `cur` (relaxed load + store:
 * no read-modify-write on the hot paths); `done` is what has been added to
 * the process's stats slot already, under the stats lock. Small allocations
 * are counted per span, not per object (Go's way: at refill and release, the
 * objects the thread made ALLOCATED since; mcache.c), tiny packed objects and frees
 * per call. */
typedef struct st_counts {
    /* [1..67] small classes; [68..87] large classes (counted per object at
     * allocation; their frees in mc_tls_frees; st_flush adds both to the
     * slot's lclass_* and large_* with the class's bytes) */
    _Atomic uint64_t small_allocs[HD_NUM_CLASSES];
    _Atomic uint64_t small_frees[HD_NUM_CLASSES];
    _Atomic uint64_t tiny_allocs, large_allocs, large_alloc_bytes, large_frees, large_free_bytes;
    _Atomic uint64_t refill_waits, refill_wait_ns;
} st_counts_t;
typedef struct st_thread {
    st_counts_t cur, done;              /* cur.small_frees unused: frees count in `frees` */
    _Atomic uint64_t *frees;            /* the thread's mc_tls_frees (thread-local storage) */
} st_thread_t;
#define ST_FREE_FLUSH 4096u             /* a power of two */

static inline void st_bump(_Atomic uint64_t *x, uint64_t d)
{
    atomic_store_explicit(x, atomic_load_explicit(x, memory_order_relaxed) + d, memory_order_relaxed);
}

/* Add what t counted since its last flush to our slot (the stats lock; a
 * leaf: taken under tp_lock and mc_reg_lock, never the other way), with
 * mcache_bytes as the caches' gauge. Without a slot (none given, a fork child
 * not yet reconnected) the counts wait in t. */
HD_HIDDEN void st_flush(st_thread_t *t, uint64_t mcache_bytes);
/* Does t hold counts not yet flushed? */
HD_HIDDEN bool st_pending(const st_thread_t *t);
/* tp_lock held: use the stats slot the Welcome gave: its memfd (fd, -1 =
 * none; mapped here, the caller closes fd). st_use_slot points at a slot
 * the unit tests' stand-in daemon maps itself. */
HD_HIDDEN void st_set_slot(int fd);
HD_HIDDEN void st_use_slot(hd_cstats_t *slot);
/* Forget the slot (detach after the last flush, fork child). */
HD_HIDDEN void st_forget_slot(void);
HD_HIDDEN bool st_have_slot(void);
HD_HIDDEN void st_lock_reinit(void);
/* heapd_set_quota succeeded: remember it for heapd_stats (this connection). */
HD_HIDDEN void st_note_quota(uint64_t bytes);

/* ---- mcache.c: the thread caches ------------------------------------------ */

/* The span a class allocates from: Go's mspan fields that matter here. An
 * empty one (no span) has alloc_cache 0 and nelems 0, so the fast path fails
 * and the slow path takes over. */
typedef struct mc_span {
    uint64_t alloc_cache;   /* FREE objects of the window, shifted so bit 0 is object freeindex */
    uintptr_t base;         /* address of object 0 */
    uint32_t freeindex;     /* objects below it were allocated or skipped */
    uint32_t nelems;        /* objects in the span */
    uint32_t elemsize;      /* bytes per object */
    uint32_t id;            /* span id, HD_NO_SPAN when empty */
    hd_ostate_t *states;    /* the span's object state bytes (shm/span.h) */
    bool fresh;             /* no slot we may still hand out was ever used (calloc) */
    int32_t live0;          /* memstats: objects not FREE in it when its allocations were last counted,
                               less the owner-local frees since (they make objects FREE at once) */
} mc_span_t;

/* Index of the next free object of s, marking nothing; nelems when s is
 * exhausted (Go's nextFreeFast + nextFreeIndex over the allocCache window). */
HD_HIDDEN unsigned mc_span_next(mc_span_t *s);
/* Point s at span id of seg (after a sweep: freeindex 0, cache refilled);
 * fresh when the span's needzero is 0 and the sweep folded no free. */
HD_HIDDEN void mc_span_load(mc_span_t *s, const hd_seg_t *seg, uint32_t id);
/* Restart s at object 0 (after a sweep). */
HD_HIDDEN void mc_span_rewind(mc_span_t *s);

/* The batch rule: spans to ask for in one Refill of class c when the class
 * runs dry for the n-th time in a row (n >= 1); see mcache.c. */
HD_HIDDEN unsigned mc_batch_max(unsigned c);
HD_HIDDEN unsigned mc_batch_for(unsigned c, unsigned nth);
/* How many full spans class c keeps for remote frees before releasing. */
HD_HIDDEN unsigned mc_keep_full(unsigned c);
/* The smallest class >= size whose objects are align-aligned (elemsize a
 * multiple of align); 0 when none is (the request must be large). */
HD_HIDDEN unsigned mc_aligned_class(size_t size, size_t align);

/* Allocation entry points (malloc.c calls them). */
HD_HIDDEN void *mc_alloc_small(size_t size, bool zero);       /* 0 < size <= 32768 */
HD_HIDDEN void *mc_alloc_tiny(size_t size, size_t align, bool zero); /* size < 16, align <= 16 */
HD_HIDDEN void *mc_alloc_class(unsigned c, size_t size, bool zero); /* class c >= 3 or 2 (whole block) */
HD_HIDDEN void *mc_alloc_large(size_t size, size_t align, bool zero);

/* The calling thread's cache: give its spans back (async Release), close its
 * tiny block. Keeps the cache. mc_release_current_free (heapd_flush): the
 * same but for page chunks with a live object, which stay. */
HD_HIDDEN void mc_release_current(void);
HD_HIDDEN void mc_release_current_free(void);
/* detach, tp_lock held, the other threads stopped using the heap: every
 * cache of this epoch gives its spans back (queued Release), so the daemon
 * sees a close with nothing cached and the lease ends at once
 * (daemon/conn.h); spans left cached would stay quarantined until exit. */
HD_HIDDEN void mc_release_all_locked(void);
/* Every cache forgets its spans without giving them back (detach after the
 * connection closed; fork child). The caller holds tp_lock. */
HD_HIDDEN void mc_forget_all_locked(bool fork_child);
/* memstats (mcache.c). The free path counts in mc_tls_frees, the calling
 * thread's per-class free counters: thread-local storage, so counting is one
 * load and one store with no pointer to follow (the cache's st.frees points
 * at them, so flushes can reach them). A thread's first free of a class, and
 * every ST_FREE_FLUSH-th after, calls mc_stats_free_tick: it makes the
 * thread's cache if there is none (so the thread's exit flushes it) and
 * flushes, so even a thread that only frees reports.
 * mc_stats_flush_current: flush this thread's counts (counting its current
 * spans first). mc_stats_flush_all_locked (tp_lock held): flush every cache's
 * counts; all_threads also counts the other threads' current spans (detach:
 * they have stopped); a fork child that has not reconnected reconnects for a
 * slot when there is something to flush. mc_count_large: a large allocation
 * or free by this thread. */
extern HD_HIDDEN __thread _Atomic uint64_t mc_tls_frees[HD_NUM_CLASSES] __attribute__((tls_model("initial-exec")));
/* The owner-local free hook (shm/span.h hd_free_local_fn): frees object i of
 * span id as its owner when it is the calling thread's current span of its
 * class; HD_FREE_REMOTE otherwise. */
/* The owner table (mcache.c): mc_owners[span id] is the mark of the thread
 * whose cache holds that small span, mc_tls_tid the calling thread's mark
 * (UINT32_MAX without a cache); equal, the free is a plain store.
 * mc_owners_map: map it for a heap of npages pages at attach (0, or -1 with
 * ENOMEM), or clear it when it has that size already. */
extern HD_HIDDEN _Atomic uint32_t *mc_owners;
extern HD_HIDDEN __thread uint32_t mc_tls_tid __attribute__((tls_model("initial-exec")));
HD_HIDDEN int mc_owners_map(uint64_t npages);
HD_HIDDEN enum hd_free_result mc_free_local(uint32_t id, hd_ostate_t *st, unsigned i, unsigned *cls);
/* The calling thread freed an object of large class c (mcache.c: the trim). */
HD_HIDDEN void mc_large_freed(unsigned c);
HD_HIDDEN void mc_stats_free_tick(void);
HD_HIDDEN void mc_stats_flush_current(void);
HD_HIDDEN void mc_stats_flush_all_locked(bool all_threads);
HD_HIDDEN void mc_count_large(bool alloc, uint64_t bytes);
/* Zero every cache's counts (tp_lock held; the unit tests' stand-in). */
HD_HIDDEN void mc_stats_reset_locked(void);
HD_HIDDEN void mc_reg_lock(void);
HD_HIDDEN void mc_reg_unlock(void);
HD_HIDDEN void mc_reg_lock_reinit(void);

/* ---- attach.c: crash points (test builds only) ---------------------------- */

/* HEAPD_CRASHPOINT=n[:kill][@point]: at the n-th pass (counted per process,
 * from 1; a fork child counts afresh) through any crash point, or through the
 * one named, the process dies on the spot: _exit(99), or SIGKILL with
 * ":kill". Compiled in only with -DHEAPD_CRASHPOINTS (CMake builds the
 * client that way for heapd-itest alone, as heapd_client_crash); everywhere
 * else HDC_CRASHPOINT is nothing. The points: "refill"
 * (spans cached, not yet in the cache), "release" (ids half queued),
 * "flush" (stats slot seq odd), "large" (large span allocated, not returned). */
#ifdef HEAPD_CRASHPOINTS
HD_HIDDEN void hdc_crashpoint(const char *where);
HD_HIDDEN void hdc_crashpoint_reset(void);
#define HDC_CRASHPOINT(where) hdc_crashpoint(where)
#else
#define HDC_CRASHPOINT(where) ((void)0)
#endif

#endif
