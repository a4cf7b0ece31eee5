/* preload.c: libheapd-malloc.so, the malloc family over the shared heap, for
 * unmodified programs (LD_PRELOAD=libheapd-malloc.so prog). docs/preload.md.
 *
 * Owns: the interposed malloc family, the mode the process allocates in
 * (pl_mode), the bootstrap arena, the fallback policy
 * (HEAPD_PRELOAD_FALLBACK) and the per-thread recursion guard.
 *
 * Where memory comes from, by mode:
 *   PL_BOOT  before the constructor attached (the dynamic loader, libc's
 *            start, other libraries' constructors) and while it attaches:
 *            the bootstrap arena, then libc once the arena is full;
 *   PL_HEAP  attached: the shared heap;
 *   PL_LIBC  the process could not attach, or the daemon went away: libc.
 * A thread already inside this library (pl_busy: an allocation made while
 * the heap serves one, pthread_setspecific's second-level block for the
 * thread cache key, say) is served as in PL_BOOT, so nothing recurses.
 * libc is reached through glibc's exported __libc_malloc family, never
 * through dlsym, which itself allocates.
 *
 * Where a pointer goes back: by its address. In the heap's pages: heapd_free
 * (in every mode: a daemon that went away still gets its objects back
 * through the state bytes, and the large ones' FreeLarge is dropped with the
 * connection). In the arena: freed only when it is the arena's last block
 * (the arena is a bump area; what it held stays with it). Anything else:
 * libc. So a pointer is always freed by the allocator that made it, once.
 *
 * Alignment, as glibc, jemalloc and mimalloc give it: requests of 1-8 bytes
 * are 8-aligned, 9 bytes and up 16-aligned. Small requests take the
 * smallest size class whose size is a multiple of 16 (8 for 1-8 bytes); no
 * tiny packing (heapd_malloc packs objects under 16 bytes at byte
 * alignment, which C programs do not expect of malloc).
 *
 * Locks: none of its own. The arena is a lock-free bump pointer, the mode an
 * atomic, so a fork child (any thread may hold anything at fork) never waits
 * on this file; libheapd's own locks are handled by its fork hooks
 * (client/attach.c, client/lockorder.h).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "heapd.h"
#include "internal.h"

#define PL_API __attribute__((visibility("default")))

/* glibc's own allocator, by the names it exports for exactly this. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

/* PL_COPY: a fork child with a private copy of the heap (fork, below): its
 * new memory comes from libc, its frees of inherited objects do nothing. */
enum { PL_BOOT = 0, PL_HEAP, PL_LIBC, PL_COPY };
static _Atomic int pl_mode;
static bool pl_abort;                       /* HEAPD_PRELOAD_FALLBACK=abort */
static bool pl_fork_share;                  /* HEAPD_PRELOAD_FORK=share */
static _Atomic int pl_said;                 /* the libc fallback was announced */
static __thread int pl_busy __attribute__((tls_model("initial-exec")));

/* What libc has no __libc_ name for, resolved in the constructor. */
static size_t (*pl_libc_usable)(void *);
static struct mallinfo2 (*pl_libc_mallinfo2)(void);
static int (*pl_libc_trim)(size_t);
static void (*pl_libc_stats)(void);

/* ---- the bootstrap arena ------------------------------------------------------ */

#define PL_ARENA_BYTES (256u << 10)
#define PL_HDR 16u                          /* size_t size, padded to keep 16 alignment */
static _Alignas(16) unsigned char pl_arena[PL_ARENA_BYTES];
static _Atomic size_t pl_arena_top;

static inline bool pl_in_arena(const void *p)
{
    return (uintptr_t)p - (uintptr_t)pl_arena < PL_ARENA_BYTES;
}

static void *pl_arena_alloc(size_t n)
{
    if (n > PL_ARENA_BYTES)
        return NULL;
    size_t need = PL_HDR + ((n + 15) & ~(size_t)15);
    size_t top = atomic_load_explicit(&pl_arena_top, memory_order_relaxed);
    do {
        if (top + need > PL_ARENA_BYTES)
            return NULL;
    } while (!atomic_compare_exchange_weak(&pl_arena_top, &top, top + need));
    unsigned char *b = pl_arena + top;
    memcpy(b, &n, sizeof n);
    return b + PL_HDR;
}

static size_t pl_arena_size(const void *p)
{
    size_t n;
    memcpy(&n, (const unsigned char *)p - PL_HDR, sizeof n);
    return n;
}

/* Only the last block goes back (a bump area); the others stay with it. */
static void pl_arena_free(void *p)
{
    size_t n = pl_arena_size(p);
    size_t start = (size_t)((unsigned char *)p - PL_HDR - pl_arena);
    size_t end = start + PL_HDR + ((n + 15) & ~(size_t)15);
    atomic_compare_exchange_strong(&pl_arena_top, &end, start);
}

/* ---- the other allocators: arena (boot), libc ------------------------------------ */

static inline bool pl_in_heap(const void *p)
{
    return (uintptr_t)p - hdc_seg.pages < hdc_seg.npages * HD_PAGE_SIZE;
}

static void *pl_other_alloc(size_t n, size_t align, bool zero)
{
    if (atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_BOOT && align <= 16) {
        void *p = pl_arena_alloc(n);
        if (p) {
            if (zero)                        /* a freed last block may be reused */
                memset(p, 0, n);
            return p;
        }
    }
    if (align > 16)
        return __libc_memalign(align, n);
    return zero ? __libc_calloc(1, n) : __libc_malloc(n);
}

static size_t pl_other_usable(void *p)
{
    if (pl_in_arena(p))
        return pl_arena_size(p);
    return pl_libc_usable ? pl_libc_usable(p) : 0;
}

static void pl_other_free(void *p)
{
    if (pl_in_arena(p))
        pl_arena_free(p);
    else
        __libc_free(p);
}

/* ---- the heap --------------------------------------------------------------------- */

static inline void *pl_heap_alloc(size_t n, bool zero)
{
    if (hd_likely(n <= HD_MAX_SMALL_SIZE)) {
        unsigned c = n <= 8 ? 1 : mc_aligned_class(n, 16);
        return mc_alloc_class(c, n ? n : 1, zero);
    }
    return mc_alloc_large(n, 0, zero);
}

/* The libc policy's announcement, once per process (fork children inherit
 * the flag: they were told with their parent). */
static void pl_say(const char *msg)
{
    int no = 0;
    if (atomic_compare_exchange_strong(&pl_said, &no, 1))
        (void)!write(2, msg, strlen(msg));
}

/* A heap allocation failed. The daemon gone (EPIPE): fall back (or abort)
 * and serve this request elsewhere. Anything else (ENOMEM: a limit, a quota,
 * a full heap) is the program's answer, as from any malloc. */
static void *pl_heap_failed(size_t n, size_t align, bool zero)
{
    int e = errno;
    if (e != EPIPE && atomic_load(&hdc_state) != HDC_DEAD) {
        errno = e == ENOTCONN ? ENOMEM : e;
        return NULL;
    }
    if (pl_abort) {
        static const char m[] = "heapd: the daemon went away and HEAPD_PRELOAD_FALLBACK=abort: aborting\n";
        (void)!write(2, m, sizeof m - 1);
        abort();
    }
    atomic_store(&pl_mode, PL_LIBC);
    pl_say("heapd: the daemon went away: new allocations come from libc from now on\n");
    errno = e;
    return pl_other_alloc(n, align, zero);
}

static inline void *pl_alloc(size_t n, bool zero)
{
    if (hd_likely(atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_HEAP && !pl_busy)) {
        pl_busy++;
        void *p = pl_heap_alloc(n, zero);
        pl_busy--;
        if (hd_likely(p != NULL))
            return p;
        return pl_heap_failed(n, 0, zero);
    }
    return pl_other_alloc(n, 0, zero);
}

/* align: a power of two. */
static void *pl_alloc_aligned(size_t align, size_t n)
{
    if (align <= 16 && (align <= 8 || n > 8))
        return pl_alloc(n, false);           /* malloc's alignment covers it */
    if (atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_HEAP && !pl_busy) {
        pl_busy++;
        /* at least 16 bytes: heapd_aligned_alloc would pack smaller ones */
        void *p = heapd_aligned_alloc(align, n < HD_TINY_SIZE ? HD_TINY_SIZE : n);
        pl_busy--;
        if (p)
            return p;
        return pl_heap_failed(n, align, false);
    }
    return pl_other_alloc(n, align, false);
}

/* ---- fork --------------------------------------------------------------------------- *
 *
 * The heap is MAP_SHARED, so a fork child would share every heap object with
 * its parent: its writes (a refcount, a list link) would land in the
 * parent's objects and its frees would free them. A program expects fork to
 * copy its memory, so the child replaces both mappings with a private copy
 * of every span in use but the large objects of other processes (with its
 * span-table, pagemap, state-byte and tiny entries; the rest reads as zero,
 * as FREE), made while the parent waits in
 * fork() (the parent handler blocks until the child says it is done), and
 * leaves the heap: the connection is closed (client/attach.c), new memory
 * comes from libc, frees of inherited objects do nothing. Threads of the
 * parent other than the forking one keep running during the copy, so an
 * object they write meanwhile may be copied half-written; a real fork
 * snapshots at one instant (docs/preload.md). HEAPD_PRELOAD_FORK=share keeps
 * libheapd's rule instead (the child shares the parent's objects, joins its
 * family and becomes a client of its own when it allocates): for programs
 * whose children only exec, or never write or free what they inherit.
 */
static pid_t (*pl_real_fork)(void);

/* fork() itself, for the share policy: the child keeps our objects, so it
 * must be in our family before the family could end (we could be killed
 * the moment fork returns). ForkBegin holds the family open across the
 * fork; ForkDone names the child, a member until its process exits. Under
 * the copy policy the child leaves the heap, and nothing is sent. */
PL_API pid_t fork(void)
{
    if (!pl_real_fork) {
        errno = ENOSYS;
        return -1;
    }
    bool hold = false;
    if (pl_fork_share && atomic_load(&pl_mode) == PL_HEAP) {
        pl_busy++;
        hold = tp_fork_begin() == 0;     /* a daemon gone: nothing to hold */
        pl_busy--;
    }
    pid_t pid = pl_real_fork();
    if (hold && pid != 0) {
        int e = errno;
        pl_busy++;
        (void)tp_fork_done(pid > 0 ? pid : 0);
        pl_busy--;
        errno = e;
    }
    return pid;
}

static int pl_fork_pipe[2] = {-1, -1};
static bool pl_fork_copy;                   /* this fork copies (glibc runs one fork's handlers at a time) */

static void pl_fork_prepare(void)
{
    pl_fork_copy = atomic_load(&pl_mode) == PL_HEAP && !pl_fork_share;
    if (pl_fork_copy && pipe2(pl_fork_pipe, O_CLOEXEC) < 0)
        pl_fork_pipe[0] = pl_fork_pipe[1] = -1;   /* no fds: the child copies while the parent goes on */
}

static void pl_fork_parent(void)
{
    if (pl_fork_pipe[0] < 0)
        return;
    int e = errno;                           /* fork's, when it failed (then EOF at once) */
    close(pl_fork_pipe[1]);
    char c;
    while (read(pl_fork_pipe[0], &c, 1) < 0 && errno == EINTR)
        ;                                    /* EOF too: the child died */
    close(pl_fork_pipe[0]);
    pl_fork_pipe[0] = pl_fork_pipe[1] = -1;
    errno = e;
}

/* An anonymous private region at a kernel-chosen address, to be moved over
 * `at` once filled. */
static unsigned char *pl_private(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Copy n bytes at from (in the mapping at from_base) to the same offset of to. */
static void pl_cp(unsigned char *to, uintptr_t from_base, const void *from, size_t n)
{
    memcpy(to + ((uintptr_t)from - from_base), from, n);
}

/* In the child: copy, then move the copies over the shared mappings. */
static bool pl_privatize(void)
{
    const hd_header_t *h = hdc_seg.hdr;
    uintptr_t mb = (uintptr_t)h, hb = mb + h->meta_size;
    size_t msz = h->meta_size, hsz = h->heap_size;
    unsigned char *m2 = pl_private(msz), *h2 = pl_private(hsz);
    if (!m2 || !h2)
        return false;
    pl_cp(m2, mb, h, HD_HEADER_BYTES);
    pl_cp(m2, mb, hdc_seg.roots, msz - h->roots_off);
    for (uint64_t p = 0; p < hdc_seg.npages;) {
        const hd_span_t *sp = &hdc_seg.spans[p];
        uint32_t n = sp->npages;
        uint8_t st = atomic_load_explicit(&sp->state, memory_order_acquire);
        if (st == HD_SPAN_FREE || n == 0 || n > hdc_seg.npages - p) {
            p++;
            continue;
        }
        if (st == HD_SPAN_LARGE && sp->owner != hdc_client_id) {
            p += n;                          /* another process's large object: not ours to copy */
            continue;
        }
        pl_cp(m2, mb, sp, sizeof *sp);
        pl_cp(m2, mb, (const void *)&hdc_seg.pagemap[p], (size_t)n * sizeof hdc_seg.pagemap[0]);
        pl_cp(h2, hb, &hdc_seg.slots[p], sizeof hdc_seg.slots[p]);
        if (sp->sizeclass == 1 || sp->sizeclass == HD_TINY_SIZE_CLASS)
            pl_cp(h2, hb, &hdc_seg.tiny[p], sizeof hdc_seg.tiny[p]);
        pl_cp(h2, hb, (const void *)hd_page_addr(&hdc_seg, p), (size_t)n * HD_PAGE_SIZE);
        p += n;
    }
    if (mprotect(m2, msz, PROT_READ) < 0 ||
        mremap(m2, msz, msz, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)mb) == MAP_FAILED ||
        mremap(h2, hsz, hsz, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)hb) == MAP_FAILED)
        return false;
    return true;
}

static void pl_fork_child(void)
{
    if (!pl_fork_copy)
        return;
    if (pl_fork_pipe[0] >= 0)
        close(pl_fork_pipe[0]);
    if (!pl_privatize()) {
        static const char m[] = "heapd: fork: cannot copy the heap into the child: aborting\n";
        (void)!write(2, m, sizeof m - 1);
        abort();
    }
    atomic_store(&hdc_state, HDC_DEAD);      /* the connection is the parent's; no reconnect */
    atomic_store(&pl_mode, PL_COPY);
    if (pl_fork_pipe[1] >= 0) {
        (void)!write(pl_fork_pipe[1], "", 1);
        close(pl_fork_pipe[1]);
    }
    pl_fork_pipe[0] = pl_fork_pipe[1] = -1;
}

/* ---- start-up ------------------------------------------------------------------------ */

/* Attach at load: libc is initialized by now (we depend on it), and no thread
 * of the program's has started. Until this returns, everything is PL_BOOT. */
__attribute__((constructor)) static void pl_init(void)
{
    pl_libc_usable = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    pl_libc_mallinfo2 = (struct mallinfo2(*)(void))dlsym(RTLD_NEXT, "mallinfo2");
    pl_libc_trim = (int (*)(size_t))dlsym(RTLD_NEXT, "malloc_trim");
    pl_libc_stats = (void (*)(void))dlsym(RTLD_NEXT, "malloc_stats");
    const char *f = getenv("HEAPD_PRELOAD_FALLBACK");
    if (f && *f && strcmp(f, "libc") != 0 && strcmp(f, "abort") != 0) {
        fprintf(stderr, "heapd: HEAPD_PRELOAD_FALLBACK=%s: give libc or abort\n", f);
        abort();
    }
    pl_abort = f && strcmp(f, "abort") == 0;
    const char *fk = getenv("HEAPD_PRELOAD_FORK");
    if (fk && *fk && strcmp(fk, "copy") != 0 && strcmp(fk, "share") != 0) {
        fprintf(stderr, "heapd: HEAPD_PRELOAD_FORK=%s: give copy or share\n", fk);
        abort();
    }
    pl_fork_share = fk && strcmp(fk, "share") == 0;
    pl_real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    /* Nobody else holds our objects (a fork child copies them, or joins our
     * family: fork below), so the daemon may free them when we have gone. */
    hdc_reclaim_at_exit = true;
    pl_busy++;
    int rc = heapd_attach(NULL);
    int e = errno;
    pl_busy--;
    if (rc == 0) {
        /* after heapd_attach registered libheapd's handlers: our prepare runs
         * before its, our child handler after its (the socket closed) */
        pthread_atfork(pl_fork_prepare, pl_fork_parent, pl_fork_child);
        atomic_store(&pl_mode, PL_HEAP);
        return;
    }
    if (pl_abort) {
        fprintf(stderr, "heapd: cannot attach to the heap (%s) and HEAPD_PRELOAD_FALLBACK=abort: aborting\n",
                strerror(e));
        abort();
    }
    atomic_store(&pl_mode, PL_LIBC);
    char m[200];
    snprintf(m, sizeof m, "heapd: cannot attach to the heap (%s): this process allocates from libc\n",
             strerror(e));
    pl_say(m);
}

/* ---- the interposed functions ------------------------------------------------------- */

PL_API void *malloc(size_t n) { return pl_alloc(n, false); }

PL_API void free(void *p)
{
    if (!p)
        return;
    if (hd_likely(pl_in_heap(p))) {
        if (hd_unlikely(atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_COPY))
            return;                          /* our private copy: it goes with the process */
        pl_busy++;
        heapd_free(p);
        pl_busy--;
        return;
    }
    pl_other_free(p);
}

PL_API void *calloc(size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return pl_alloc(n, true);
}

PL_API size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    if (pl_in_heap(p))
        return heapd_usable_size(p);
    return pl_other_usable(p);
}

PL_API void *realloc(void *p, size_t n)
{
    if (!p)
        return pl_alloc(n, false);
    if (n == 0) {                            /* glibc's rule: free, return NULL */
        free(p);
        return NULL;
    }
    size_t old;
    if (pl_in_heap(p)) {
        old = heapd_usable_size(p);
        if (old == 0) {
            hdc_report_bad_free(p, "realloc of a pointer that is not a live object");
            errno = EINVAL;
            return NULL;
        }
        if (n <= old && n >= old / 2 && atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_HEAP)
            return p;                        /* fits, not wasting more than half */
    } else if (atomic_load_explicit(&pl_mode, memory_order_relaxed) == PL_HEAP && !pl_busy &&
               !pl_in_arena(p)) {
        old = pl_other_usable(p);            /* libc's: moves into the heap */
    } else if (pl_in_arena(p)) {
        old = pl_arena_size(p);
    } else {
        return __libc_realloc(p, n);         /* libc's, staying there */
    }
    void *q = pl_alloc(n, false);
    if (!q)
        return NULL;                         /* p untouched */
    memcpy(q, p, old < n ? old : n);
    free(p);
    return q;
}

PL_API void *reallocarray(void *p, size_t nmemb, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n);
}

static inline bool pl_pow2(size_t a) { return a && !(a & (a - 1)); }

PL_API int posix_memalign(void **out, size_t align, size_t n)
{
    if (!pl_pow2(align) || align % sizeof(void *))
        return EINVAL;
    int e = errno;
    void *p = pl_alloc_aligned(align, n);
    if (!p) {
        int r = errno ? errno : ENOMEM;
        errno = e;
        return r;
    }
    errno = e;
    *out = p;
    return 0;
}

PL_API void *aligned_alloc(size_t align, size_t n)
{
    if (!pl_pow2(align)) {                   /* glibc 2.36 accepts any power of two, any size */
        errno = EINVAL;
        return NULL;
    }
    return pl_alloc_aligned(align, n);
}

PL_API void *memalign(size_t align, size_t n)
{
    if (align > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return NULL;
    }
    size_t a = 1;
    while (a < align)                        /* glibc rounds a non-power of two up */
        a <<= 1;
    return pl_alloc_aligned(a, n);
}

PL_API void *valloc(size_t n) { return pl_alloc_aligned((size_t)sysconf(_SC_PAGESIZE), n); }

PL_API void *pvalloc(size_t n)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    if (n > SIZE_MAX - pg) {
        errno = ENOMEM;
        return NULL;
    }
    return pl_alloc_aligned(pg, n ? (n + pg - 1) & ~(pg - 1) : pg);
}

/* ---- summaries -------------------------------------------------------------------------- */

/* Give back the calling thread's cached spans and send what is pending (the
 * heap's pages go back to the OS by the daemon's scavenger), then libc's
 * trim. 1 when either released something, as glibc's. */
PL_API int malloc_trim(size_t pad)
{
    int r = 0;
    if (atomic_load(&pl_mode) == PL_HEAP && !pl_busy) {
        struct heapd_stats a, b;
        pl_busy++;
        bool ok = heapd_stats(&a, sizeof a) == 0 && heapd_flush() == 0 && heapd_stats(&b, sizeof b) == 0;
        pl_busy--;
        r = ok && b.cached_bytes < a.cached_bytes;
    }
    if (pl_libc_trim && pl_libc_trim(pad))
        r = 1;
    return r;
}

/* libc's fields for what libc served, plus this process's heap objects:
 * uordblks += allocated - freed here (may undercount a process that frees
 * others' objects), fordblks += its thread caches' free bytes, arena += both. */
PL_API struct mallinfo2 mallinfo2(void)
{
    struct mallinfo2 m = {0};
    if (pl_libc_mallinfo2)
        m = pl_libc_mallinfo2();
    struct heapd_stats st;
    pl_busy++;
    int rc = atomic_load(&pl_mode) != PL_BOOT ? heapd_stats(&st, sizeof st) : -1;
    pl_busy--;
    if (rc == 0) {
        size_t used = st.allocated_bytes > st.freed_bytes ? st.allocated_bytes - st.freed_bytes : 0;
        m.uordblks += used;
        m.fordblks += st.cached_bytes;
        m.arena += used + st.cached_bytes;
    }
    return m;
}

PL_API void malloc_stats(void)
{
    if (pl_libc_stats)
        pl_libc_stats();
    struct heapd_stats st;
    pl_busy++;
    int rc = atomic_load(&pl_mode) != PL_BOOT ? heapd_stats(&st, sizeof st) : -1;
    pl_busy--;
    if (rc == 0)
        fprintf(stderr,
                "heapd (this process): allocated bytes = %llu, freed bytes = %llu, cached bytes = %llu\n"
                "heapd (the heap): committed bytes = %llu, in use bytes = %llu, soft limit = %llu, hard limit = %llu\n",
                (unsigned long long)st.allocated_bytes, (unsigned long long)st.freed_bytes,
                (unsigned long long)st.cached_bytes, (unsigned long long)st.committed_bytes,
                (unsigned long long)st.in_use_bytes, (unsigned long long)st.soft_limit,
                (unsigned long long)st.hard_limit);
    else
        fprintf(stderr, "heapd: this process allocates from libc (not attached)\n");
}
