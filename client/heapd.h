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
 *   EPIPE            the daemon is gone; objects already allocated stay
 *                    usable and freeable, only new memory is refused
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
 * HEAPD_PRESSURE_WAIT_MS (see heapd_on_pressure).
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
 * NULL, pointers outside the heap and pointers that are not a live
 * object's start. */
HEAPD_API size_t heapd_usable_size(const void *p);

/* Offsets into the heap, for data that must outlive a mapping (relative to
 * heap page 0; the same in every process). heapd_ptr_to_offset returns
 * UINT64_MAX for a pointer outside the heap pages; heapd_offset_to_ptr
 * returns NULL for an offset beyond them or when not attached. */
HEAPD_API uint64_t heapd_ptr_to_offset(const void *p);
HEAPD_API void *heapd_offset_to_ptr(uint64_t off);

/* Invalid and double frees this process has detected so far. */
HEAPD_API uint64_t heapd_bad_frees(void);

/* Give back the calling thread's cached spans, report every thread's
 * allocation counts to the daemon (memstats: heapctl stats), and send every
 * pending asynchronous message (batched span releases and large frees) now,
 * rather than at the next refill, thread exit or detach. 0 or -1 with errno. */
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
 * this connection: a fork child starts without one. 0 or -1/errno. */
HEAPD_API int heapd_set_quota(uint64_t bytes);

#ifdef __cplusplus
}
#endif
#endif
