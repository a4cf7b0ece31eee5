/* heapd.h: libheapd, the client side of heapd, a heap shared by processes.
 *
 * heapd (the daemon) owns one shared memory segment. Every process that
 * attaches maps it at the same address, so a pointer returned by
 * heapd_malloc in one process is valid in every attached process: it can be
 * stored in shared memory, sent over a pipe, read and freed anywhere.
 *
 *     if (heapd_attach(NULL) != 0) { perror("heapd_attach"); exit(1); }
 *     char *s = heapd_malloc(100);          // any thread, any size
 *     ... hand s to another process ...
 *     heapd_free(s);                        // here or in that process
 *     heapd_detach();                       // optional at exit
 *
 * Threads: every function may be called from any thread once heapd_attach
 * returned. Each thread allocates from its own cache (no locks on the fast
 * path); frees are lock-free and may come from any thread of any process.
 *
 * Errors: functions return NULL (or -1) and set errno:
 *   ENOMEM           out of memory (the daemon refused: heap full, a limit)
 *   ENOTCONN         not attached (heapd_attach was not called, or detached).
 *                    Nothing attaches implicitly.
 *   EPIPE            the daemon is gone, or it dropped this process's
 *                    connection; objects already allocated stay usable and
 *                    freeable, only new memory is refused (heapd_detach and
 *                    heapd_attach start over)
 *   ENOENT, ECONNREFUSED   heapd_attach: no daemon listens on the socket
 *   EPROTONOSUPPORT  heapd_attach: the daemon refused our protocol version
 *                    (its message is printed on stderr)
 *   EEXIST           heapd_attach: the segment's address range is already
 *                    mapped in this process
 * A failed allocation leaves errno set and never aborts.
 *
 * fork(): the child keeps the mapping (its pointers stay valid and its frees
 * land in the shared heap; they free the parent's objects too, since they are
 * the same objects) but never allocates from the parent's cached memory: it
 * becomes a new client of the daemon on its first allocation that needs one.
 *
 * Environment: HEAPD_SOCKET (default socket path), HEAPD_NO_URING=1 (plain
 * sendmsg/recvmsg instead of io_uring), HEAPD_ABORT_ON_ERROR=1 (abort() on an
 * invalid or double free instead of reporting and going on),
 * HEAPD_PRESSURE_WAIT_MS (see heapd_on_pressure), HEAPD_QUOTA=SIZE (GOMEMLIMIT
 * syntax: 512MiB) sets heapd_set_quota(SIZE) at every connection this
 * process makes, a fork child's included (heapd_attach fails with EINVAL on
 * a malformed value). libheapd-malloc.so (LD_PRELOAD) reads
 * HEAPD_PRELOAD_FALLBACK too: docs/preload.md.
 */
#ifndef HEAPD_H
#define HEAPD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HEAPD_API __attribute__((visibility("default")))

/* Connect to the daemon listening on `socket` (NULL: $HEAPD_SOCKET, else
 * $XDG_RUNTIME_DIR/heapd.sock, else /tmp/heapd-UID/heapd.sock) and map the
 * shared segment. 0, or -1 with errno (see above; EISCONN if already
 * attached, ENAMETOOLONG for a path that does not fit a sockaddr_un). */
HEAPD_API int heapd_attach(const char *socket);

/* Give back the calling thread's cached memory, send every pending message,
 * disconnect and unmap the segment. Other threads must have stopped using
 * the heap (their caches are dropped, and any pointer into the heap becomes
 * invalid in this process). heapd_attach may be called again afterwards. */
HEAPD_API void heapd_detach(void);

/* Allocate size bytes. size 0 returns a unique minimal object (freeable,
 * usable size >= 1). Alignment: 16 for sizes that are multiples of 16,
 * otherwise the largest power of two dividing the size class (8 for the
 * small classes, down to the size's own alignment for tiny objects under
 * 16 bytes, as Go does). NULL with errno on failure. */
HEAPD_API void *heapd_malloc(size_t size);

/* nmemb * size bytes, zeroed. NULL/ENOMEM when the product overflows. */
HEAPD_API void *heapd_calloc(size_t nmemb, size_t size);

/* Resize: p NULL → heapd_malloc(size). size 0 → frees p and returns a unique
 * minimal object, as heapd_malloc(0) does (NULL only on failure, and then p
 * is untouched). If size fits p's usable size and is at least half of it, p
 * is returned unchanged; otherwise the contents move to a new object (no
 * growth in place yet). NULL with errno on failure (p stays valid); EINVAL
 * if p is not a live object (also counted and reported as a bad free). */
HEAPD_API void *heapd_realloc(void *p, size_t size);

/* Free p (NULL: nothing). Any thread of any attached process may free any
 * object. An invalid or double free is detected (where possible), counted,
 * reported on stderr as one line "heapd: free(0x...): <reason>", and
 * ignored; HEAPD_ABORT_ON_ERROR=1 makes it abort(). Reports are rate-limited:
 * the first 5, then at most one line a second saying how many went
 * unreported (heapd_bad_frees counts every one). */
HEAPD_API void heapd_free(void *p);

/* size bytes aligned to align, which must be a power of two (else
 * NULL/EINVAL). Any size is accepted (C11's multiple-of-align rule is not
 * required). Alignments above the page size (8 KiB) are served as large
 * objects. */
HEAPD_API void *heapd_aligned_alloc(size_t align, size_t size);

/* Bytes usable at p (>= the size asked for): the size class for small
 * objects, the exact size for tiny ones, whole pages for large ones. 0 for
 * NULL, pointers outside the heap, pointers that are not an object's start,
 * and freed objects, also those freed in another process and not yet
 * reused (a freed small object reads 0 at once everywhere; a freed large
 * object at once in the freeing process, and in the others once that
 * process has sent its batched FreeLarge: at its next RPC, flush or
 * detach). */
HEAPD_API size_t heapd_usable_size(const void *p);

/* Offsets into the heap, for data that must outlive a mapping (relative to
 * heap page 0; the same in every process). heapd_ptr_to_offset returns
 * HEAPD_NULL_OFFSET for a pointer outside the heap pages (NULL included);
 * heapd_offset_to_ptr returns NULL for an offset beyond them (so for
 * HEAPD_NULL_OFFSET) or when not attached. Offset 0 is a real object:
 * store HEAPD_NULL_OFFSET, never 0, for "no object" (PostgreSQL DSA's
 * InvalidDsaPointer). */
#define HEAPD_NULL_OFFSET UINT64_MAX
HEAPD_API uint64_t heapd_ptr_to_offset(const void *p);
HEAPD_API void *heapd_offset_to_ptr(uint64_t off);

/* Invalid and double frees this process has detected so far. */
HEAPD_API uint64_t heapd_bad_frees(void);

/* Give back the calling thread's cached free memory (its small spans, and
 * its page chunks that hold no live object: a chunk with a live large-class
 * object stays, its free pages serve the next allocations of any large
 * size), report every thread's allocation counts to the daemon (memstats:
 * heapctl stats), and send every pending asynchronous message (batched span
 * releases and large frees) now, rather than at the next refill, thread exit
 * or detach. 0 or -1 with errno. */
HEAPD_API int heapd_flush(void);

/* The transport in use: "io_uring", "plain", or "none" when not connected. */
HEAPD_API const char *heapd_transport(void);

/* Memory pressure (the daemon's limits: heapd --memory-limit, --hard-limit,
 * quotas). The daemon sends a level and how many bytes it would like back:
 *   1  committed memory is near the soft limit (over 95%) and the daemon has
 *      no free pages left to return to the OS;
 *   2  it is over the soft limit (allocations still succeed);
 *   3  an allocation was refused, or is about to be, by the hard limit or
 *      this process's quota.
 * The callback runs on a thread of libheapd's own ("heapd-pressure",
 * started while a callback is registered and the process is attached; all
 * signals blocked), never on an allocating thread and never under a heapd
 * lock: it may free memory (a buffer pool evicts here), allocate, or call
 * heapd_flush. One call at a time; pressures that arrive meanwhile are
 * coalesced (highest level, latest bytes). When an allocation is refused
 * with level 3, the allocating thread first gives back its cached spans,
 * waits for the callback to return (at most $HEAPD_PRESSURE_WAIT_MS, default
 * 1000), and retries once; only then does it return NULL/ENOMEM. So a
 * callback that needs a lock held by the allocating thread costs that wait,
 * not a deadlock. fn NULL unregisters. May be called before heapd_attach.
 * 0, or -1 with errno (the thread could not be started). */
typedef void (*heapd_pressure_fn)(unsigned level, uint64_t bytes_wanted, void *arg);
HEAPD_API int heapd_on_pressure(heapd_pressure_fn fn, void *arg);
/* Callbacks made so far in this process. */
HEAPD_API uint64_t heapd_pressure_calls(void);

/* Limit this process to `bytes` of heap pages (0: no quota): spans made for
 * it (small-object refills that take new pages, large objects) are charged
 * until their pages go back to the daemon, whoever frees them. An
 * allocation that would cross the quota fails with ENOMEM (after the
 * pressure steps above); other processes are not affected. It holds for
 * this connection: a fork child starts without one (unless HEAPD_QUOTA is
 * set: see Environment above). 0 or -1/errno. */
HEAPD_API int heapd_set_quota(uint64_t bytes);

/* ---- named roots ---------------------------------------------------------------
 * A directory of names to objects, so that unrelated processes find a shared
 * structure without passing offsets around (Boost.Interprocess's
 * find_or_construct, a database's shared catalog):
 *
 *     struct pool *p = heapd_root_get("bufpool");
 *     if (!p) {                                     // first one: build it
 *         struct pool *mine = pool_new();
 *         if (heapd_root_cas("bufpool", NULL, mine) == 0) p = mine;
 *         else { pool_free(mine); p = heapd_root_get("bufpool"); } // lost the race
 *     }
 *
 * The daemon keeps the directory (up to 1024 names per heap) in memory that
 * clients map read-only; heapd_root_get reads it without a round trip, the
 * others are one RPC. A root names a pointer, nothing more: freeing the
 * object leaves the root dangling until someone changes it, as with any
 * pointer (check what you read). Names are 1..63 printable ASCII bytes.
 * Errors common to all: EINVAL (empty name, non-printable byte),
 * ENAMETOOLONG (more than 63 bytes), ENOTCONN (not attached), EPIPE (the
 * daemon is gone). */

/* The object named `name`, or NULL with errno ENOENT when no root has that
 * name. Never blocks on the daemon. */
HEAPD_API void *heapd_root_get(const char *name);
/* Name obj (creates or replaces). obj must be the start of a live heap
 * object (EINVAL otherwise, NULL too). ENOSPC: 1024 names exist. 0 or -1. */
HEAPD_API int heapd_root_set(const char *name, void *obj);
/* Compare and swap, atomically against every other process: if the name
 * currently names `expected` (NULL: the name is absent), make it name
 * `desired` (NULL: remove the name) and return 0. Otherwise -1 with EAGAIN
 * (the name names something else, or exists while expected is NULL) or
 * ENOENT (expected is not NULL and the name is absent). desired must be a
 * live heap object or NULL (EINVAL); ENOSPC as for heapd_root_set. */
HEAPD_API int heapd_root_cas(const char *name, void *expected, void *desired);
/* Remove the name (the object stays). 0, or -1 with ENOENT when absent. */
HEAPD_API int heapd_root_del(const char *name);

/* ---- in-process stats --------------------------------------------------------------
 * What a process needs to size a cache, without asking the daemon: the
 * process's own counters come from its stats slot (after adding its threads'
 * counts into it: other threads' allocations from the span they are filling
 * count at their next refill), the heap's from the segment header the daemon
 * keeps up to date. Fields are only ever added at the end: pass
 * sizeof(struct heapd_stats) as the program was compiled with. */
struct heapd_stats {
    /* this process (this connection: a fork child starts from zero) */
    uint64_t allocated_bytes;   /* bytes of objects allocated (by size class, tiny
                                   objects as their 16-byte blocks; large: whole pages) */
    uint64_t freed_bytes;       /* bytes of objects freed here, whoever allocated them:
                                   allocated - freed may be negative for one process */
    uint64_t cached_bytes;      /* free bytes held in this process's thread caches */
    uint64_t quota;             /* heapd_set_quota's bytes, 0 = none */
    /* the heap */
    uint64_t committed_bytes;   /* memory the heap holds (pages in use + free pages not
                                   yet returned to the OS + metadata): what limits count */
    uint64_t soft_limit;        /* bytes, 0 = none (heapd --memory-limit, heapctl limit) */
    uint64_t hard_limit;        /* bytes, 0 = none */
    uint64_t pressure_level;    /* 0 none; 1 committed over 95% of the soft limit; 2 over
                                   it; 3 not one more page fits under the hard limit
                                   (the levels of heapd_on_pressure) */
    uint64_t in_use_bytes;      /* heap pages in spans, all processes */
    uint64_t heap_bytes;        /* heap pages the segment can hold (heapd --size) */
};
#define HEAPD_STATS_SIZE_V1 (10 * sizeof(uint64_t))   /* the first version's size */
/* Fill min(size, sizeof(struct heapd_stats)) bytes of *st. 0, or -1 with
 * EINVAL (st NULL, size < HEAPD_STATS_SIZE_V1) or ENOTCONN. */
HEAPD_API int heapd_stats(struct heapd_stats *st, size_t size);

#ifdef __cplusplus
}
#endif
#endif
