/* bench/peers: heapd with K processes against glibc, jemalloc, tcmalloc and
 * mimalloc with K threads, and against Boost.Interprocess managed_shared_memory
 * (the shared-memory peer) with K processes, on five allocation patterns.
 *
 * Patterns (one op = one allocation and one free; every allocation writes its
 * first byte; sizes come from a 4096-entry table drawn before the clock starts,
 * seeded per pattern and worker, so every allocator sees the same sequence):
 *   larson       K = 1, 2: each worker keeps 1000 slots; an op frees a random
 *                slot and allocates 8..1000 B (uniform) into it;
 *   prod/cons    K = 2: one producer allocates 8..1000 B and passes the pointer
 *                through a ring of 1024 slots to one consumer that frees it
 *                (heapd and BIP: the ring is in the shared heap, the consumer is
 *                another process; threads: an in-process ring). Throughput is
 *                objects / (producer's first allocation .. consumer's last free);
 *   buffer-pool  K = 1, 2: 64 slots; an op frees a random slot and allocates
 *                8 KiB << (0..7), i.e. 8 KiB .. 1 MiB;
 *   pareto       K = 1, 2: 1000 slots; sizes Pareto(x_m = 8 B, alpha = 1.1),
 *                drawn again when above 1 KiB (alloc-test-like);
 *   fast N B     K = 1: fixed N = 16, 32, 64 B; batches of 1, 25, 100, 400 and
 *                1600 objects in turn: allocate the batch, then free it in the
 *                same order (glibc's bench-malloc-simple).
 * The untimed setup fills the slots; K workers start together at a barrier;
 * each runs until --max-s has passed; M ops/s = all workers' ops / (last end -
 * first start). Every measurement is a fresh worker process (bench/common.c);
 * rounds are interleaved (round 1 of every allocator and pattern, then round
 * 2, ...) and the table shows medians.
 *
 * Daemon waits: around each heapd worker the bench reads heapctl stats
 * --json: the RPC books (Refill + AllocLarge calls per allocation the worker
 * made, setup included, and the daemon's handling time for them; a Refill
 * sent ahead counts here though nobody waited for it) and RefillWaits /
 * RefillWaitNs, the allocations that did block on the daemon and for how
 * long, as the clients count them (issue 9).
 *
 * Memory (buffer-pool, heapd): worker 0 samples after every batch of 256 ops
 * the bytes the workers hold (live: the sum of their bytes at the batch's end
 * and the sum of their highest after any op of the batch; the true peak lies
 * between, and is the second at K = 1: pool_sample) and the heap's pages in spans beyond
 * those before the worker started (heapd_stats in_use_bytes: spans the
 * workers cache, live or free, and spans in the daemon's central lists); the
 * table shows the peaks and their ratio (issue 9's target: <= 1.3x).
 *
 * Output: a markdown table on stdout; with --data FILE the medians as a
 * tab-separated file; with --plot FILE.png a bar chart (gnuplot).
 *
 * Usage: bench-peers [--quick] [--rounds N] [--max-s S] [--data FILE] [--plot FILE.png]
 *                    [--socket PATH] [--heapd PATH]
 * Exit status: 0, or 1 if heapd could not be measured or something failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "heapd.h"

#ifdef HEAPD_BENCH_BIP
int bip_open(size_t bytes);
void *bip_malloc(size_t n);
void bip_free(void *p);
#endif

#define A_BIP A_COUNT               /* the shared-memory peer, after bench/common's allocators */
#define NALLOC (A_COUNT + 1)
#define MAX_K 2u
#define NSIZE_TABLE 4096u           /* a power of two */
#define RING_SLOTS 1024u            /* prod/cons ring, a power of two */
#define BIP_BYTES (768ull << 20)    /* buffer-pool at K = 2 holds up to 128 MiB live */
#define RING_END ((void *)1)

enum pattern { P_LARSON, P_PC, P_POOL, P_PARETO, P_FAST };

typedef struct bcase {
    const char *name;
    enum pattern pat;
    unsigned k;
    size_t fixed;                   /* P_FAST: the size */
} bcase_t;

static const bcase_t cases[] = {
    { "larson", P_LARSON, 1, 0 },      { "larson", P_LARSON, 2, 0 },  { "prod/cons", P_PC, 2, 0 },
    { "buffer-pool", P_POOL, 1, 0 },   { "buffer-pool", P_POOL, 2, 0 }, { "pareto", P_PARETO, 1, 0 },
    { "pareto", P_PARETO, 2, 0 },      { "fast 16 B", P_FAST, 1, 16 }, { "fast 32 B", P_FAST, 1, 32 },
    { "fast 64 B", P_FAST, 1, 64 },
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

static const unsigned fast_batches[] = { 1, 25, 100, 400, 1600 };
#define NBATCH (sizeof(fast_batches) / sizeof(fast_batches[0]))
#define MAX_BATCH 1600u

static const char *alloc_name(int a) { return a == A_BIP ? "BIP" : allocators[a].name; }

/* ---- the worker: K workers of one pattern ------------------------------------------------ */

typedef struct wresult {
    uint64_t ops, allocs;
    double t0, t1;
    int failed;
    _Atomic uint64_t live;          /* buffer-pool, heapd: bytes this worker holds at a batch's end */
    _Atomic uint64_t high;          /* ...and the most it held after any op of that batch */
} wresult_t;

/* Shared by the K workers (an anonymous shared mapping: threads and forked
 * processes alike). */
typedef struct run {
    _Alignas(64) _Atomic unsigned ready;
    _Atomic int go;
    _Alignas(64) wresult_t res[MAX_K];
    _Atomic(void *) *ring;          /* prod/cons: RING_SLOTS slots, NULL = empty */
    /* buffer-pool, heapd: the peaks, sampled after every batch of 256 ops
     * (worker 0 samples; in_use0 is the heap's pages in spans before the setup) */
    uint64_t in_use0, peak_live, peak_high, peak_spans;
} run_t;

typedef struct wctx {
    run_t *run;
    const bcase_t *c;
    unsigned idx;                   /* 0..K-1; prod/cons: 0 produces, 1 consumes */
    double max_s;
    uint32_t sizes[NSIZE_TABLE];
    void **slots;
} wctx_t;

static inline uint64_t xs_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* The size table and slot count of a pattern; fixed seeds per pattern and worker. */
static unsigned setup_sizes(wctx_t *w)
{
    uint64_t s = 0x9e3779b97f4a7c15ull ^ ((uint64_t)w->c->pat << 32) ^ (w->idx + 1) * 0x51ed27ull;
    for (unsigned i = 0; i < NSIZE_TABLE; i++) {
        uint64_t r = xs_next(&s);
        switch (w->c->pat) {
        case P_LARSON:
        case P_PC:
            w->sizes[i] = (uint32_t)(8 + r % 993);
            break;
        case P_POOL:
            w->sizes[i] = 8192u << (r % 8);
            break;
        case P_PARETO: {
            double x;
            do {
                double u = ((double)(xs_next(&s) >> 11) + 1.0) * 0x1p-53;   /* (0, 1] */
                x = 8.0 / pow(u, 1.0 / 1.1);
            } while (x > 1024.0);
            w->sizes[i] = (uint32_t)x;
            break;
        }
        case P_FAST:
            w->sizes[i] = (uint32_t)w->c->fixed;
            break;
        }
    }
    return w->c->pat == P_POOL ? 64 : w->c->pat == P_FAST ? MAX_BATCH : 1000;
}

typedef void *(*alloc_fn)(size_t);
typedef void (*free_fn)(void *);

/* Setup done: wait for the others, then start the clock. */
static double barrier(run_t *r)
{
    atomic_fetch_add_explicit(&r->ready, 1, memory_order_acq_rel);
    unsigned spins = 0;
    while (!atomic_load_explicit(&r->go, memory_order_acquire))
        if (++spins > 64)
            sched_yield();
        else
            cpu_relax();
    return now_s();
}

#define INLINE static inline __attribute__((always_inline))

/* heapd's pages in spans, all processes (0: not attached). */
static uint64_t heapd_in_use(void)
{
    struct heapd_stats st;
    return heapd_stats(&st, sizeof st) == 0 ? st.in_use_bytes : 0;
}

/* Buffer-pool under heapd, after a batch: publish this worker's live bytes
 * at the batch's end and its highest after any op of the batch; worker 0
 * samples the heap's pages in spans (beyond what it had before the setup) and
 * sums both over the workers, and keeps the peaks. The sum of the ends can
 * miss the true high by megabytes (live bytes are a random walk: they move by
 * megabytes within a batch, while the pages held stay); the sum of the highs
 * can overstate it when K > 1 (the workers' highs need not coincide). So the
 * true ratio of pages to live lies between spans / highs and spans / ends,
 * and at K = 1 the highs are exact. (A running sum shared by the workers
 * would cost the timed loop a cache line passed between cores at every op.)
 * The page count moves only at refills and releases, so a sample per batch
 * misses little. */
static void pool_sample(wctx_t *w, uint64_t live, uint64_t high)
{
    run_t *r = w->run;
    atomic_store_explicit(&r->res[w->idx].live, live, memory_order_relaxed);
    atomic_store_explicit(&r->res[w->idx].high, high, memory_order_relaxed);
    if (w->idx != 0)
        return;
    uint64_t all = 0, highs = 0, spans = heapd_in_use();
    for (unsigned i = 0; i < w->c->k; i++) {
        all += atomic_load_explicit(&r->res[i].live, memory_order_relaxed);
        highs += atomic_load_explicit(&r->res[i].high, memory_order_relaxed);
    }
    spans = spans > r->in_use0 ? spans - r->in_use0 : 0;
    r->peak_live = all > r->peak_live ? all : r->peak_live;
    r->peak_high = highs > r->peak_high ? highs : r->peak_high;
    r->peak_spans = spans > r->peak_spans ? spans : r->peak_spans;
}

/* larson, buffer-pool, pareto: free a random slot, allocate into it. With
 * sample (heapd's buffer-pool): the sizes of the slots are kept, and
 * pool_sample runs after every batch with the live bytes at its end and the
 * most after any of its ops. */
INLINE int run_slots(wctx_t *w, unsigned nslots, alloc_fn A, free_fn F, bool sample)
{
    wresult_t *res = &w->run->res[w->idx];
    uint64_t s = 0x2545f4914f6cdd1dull + w->idx;
    uint32_t size_of[64];            /* sample: the size in each slot (buffer-pool: 64 slots) */
    uint64_t live = 0;
    sample = sample && nslots <= 64;
    for (unsigned i = 0; i < nslots; i++) {
        uint32_t n = w->sizes[xs_next(&s) % NSIZE_TABLE];
        char *o = A(n);
        if (!o)
            return -1;
        *(volatile char *)o = (char)i;
        w->slots[i] = o;
        if (sample)
            size_of[i] = n, live += n;
    }
    if (sample)
        pool_sample(w, live, live);
    res->allocs = nslots;
    double t0 = barrier(w->run), t1 = t0;
    uint64_t ops = 0;
    do {
        uint64_t high = live;
        for (unsigned k = 0; k < 256; k++) {
            uint64_t r = xs_next(&s);
            unsigned i = (unsigned)((r >> 32) % nslots);
            F(w->slots[i]);
            uint32_t n = w->sizes[r % NSIZE_TABLE];
            char *o = A(n);
            if (__builtin_expect(!o, 0))
                return -1;
            *(volatile char *)o = (char)k;
            w->slots[i] = o;
            if (sample) {
                live += (uint64_t)n - size_of[i], size_of[i] = n;
                high = live > high ? live : high;
            }
        }
        if (sample)
            pool_sample(w, live, high);
        ops += 256;
        t1 = now_s();
    } while (t1 - t0 < w->max_s);
    for (unsigned i = 0; i < nslots; i++)
        F(w->slots[i]);
    res->ops = ops;
    res->allocs += ops;
    res->t0 = t0;
    res->t1 = t1;
    return 0;
}

/* fast: allocate a batch of the fixed size, free it in order; batch sizes in turn. */
INLINE int run_fast(wctx_t *w, alloc_fn A, free_fn F)
{
    wresult_t *res = &w->run->res[w->idx];
    const size_t size = w->c->fixed;
    void **a = w->slots;
    double t0 = barrier(w->run), t1 = t0;
    uint64_t ops = 0;
    do {
        for (unsigned b = 0; b < NBATCH; b++) {
            const unsigned n = fast_batches[b];
            for (unsigned rep = 0; rep < MAX_BATCH / n; rep++) {
                for (unsigned i = 0; i < n; i++) {
                    char *o = A(size);
                    if (__builtin_expect(!o, 0))
                        return -1;
                    *(volatile char *)o = (char)i;
                    a[i] = o;
                }
                for (unsigned i = 0; i < n; i++)
                    F(a[i]);
                ops += n;
            }
        }
        t1 = now_s();
    } while (t1 - t0 < w->max_s);
    res->ops = res->allocs = ops;
    res->t0 = t0;
    res->t1 = t1;
    return 0;
}

/* prod/cons: slot i is empty while NULL; the producer fills slots in order,
 * the consumer empties them in order (no shared index: each side only waits
 * for its next slot). RING_END ends the run. */
static inline void ring_wait(unsigned *spins)
{
    if (++*spins > 64)
        sched_yield();
    else
        cpu_relax();
}

INLINE int run_producer(wctx_t *w, alloc_fn A)
{
    wresult_t *res = &w->run->res[w->idx];
    _Atomic(void *) *ring = w->run->ring;
    uint64_t s = 0x51ed27ull;
    double t0 = barrier(w->run), t1 = t0;
    uint64_t n = 0;
    unsigned head = 0;
    for (bool last = false;;) {
        void *o = RING_END;
        if (!last) {
            o = A(w->sizes[xs_next(&s) % NSIZE_TABLE]);
            if (__builtin_expect(!o, 0))
                return -1;
            *(volatile char *)o = 1;
        }
        unsigned spins = 0;
        while (atomic_load_explicit(&ring[head], memory_order_acquire))
            ring_wait(&spins);
        atomic_store_explicit(&ring[head], o, memory_order_release);
        head = (head + 1) & (RING_SLOTS - 1);
        if (last)
            break;
        if (++n % 256 == 0 && (t1 = now_s()) - t0 >= w->max_s)
            last = true;
    }
    res->ops = res->allocs = n;
    res->t0 = res->t1 = t0;
    return 0;
}

INLINE int run_consumer(wctx_t *w, free_fn F)
{
    wresult_t *res = &w->run->res[w->idx];
    _Atomic(void *) *ring = w->run->ring;
    double t0 = barrier(w->run);
    unsigned tail = 0;
    for (;;) {
        void *o;
        unsigned spins = 0;
        while (!(o = atomic_load_explicit(&ring[tail], memory_order_acquire)))
            ring_wait(&spins);
        atomic_store_explicit(&ring[tail], NULL, memory_order_relaxed);
        tail = (tail + 1) & (RING_SLOTS - 1);
        if (o == RING_END)
            break;
        F(o);
    }
    res->t0 = t0;
    res->t1 = now_s();
    return 0;
}

/* One body per allocator family: direct calls, as any program makes them. */
#define DEFINE_BODY(NAME, ALLOC, FREE, SAMPLE)                                                \
    static int NAME(wctx_t *w)                                                                \
    {                                                                                         \
        unsigned nslots = setup_sizes(w);                                                     \
        switch (w->c->pat) {                                                                  \
        case P_PC:                                                                            \
            return w->idx == 0 ? run_producer(w, ALLOC) : run_consumer(w, FREE);              \
        case P_FAST:                                                                          \
            return run_fast(w, ALLOC, FREE);                                                  \
        default:                                                                              \
            return run_slots(w, nslots, ALLOC, FREE, SAMPLE && w->c->pat == P_POOL);          \
        }                                                                                     \
    }

DEFINE_BODY(body_malloc, malloc, free, false)
DEFINE_BODY(body_heapd, heapd_malloc, heapd_free, true)
#ifdef HEAPD_BENCH_BIP
DEFINE_BODY(body_bip, bip_malloc, bip_free, false)
#endif

static int (*body)(wctx_t *);

static void *thread_main(void *arg)
{
    wctx_t *w = arg;
    if (body(w) != 0)
        w->run->res[w->idx].failed = 1;
    return NULL;
}

/* Run K workers (threads, or forked processes when procs), wait, print
 * "R <ops> <seconds> <allocations>". */
static int worker_run(const bcase_t *c, double max_s, bool procs, alloc_fn shared_alloc, free_fn shared_free)
{
    run_t *r = mmap(NULL, sizeof(*r), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return 1;
    if (body == body_heapd && c->pat == P_POOL)
        r->in_use0 = heapd_in_use();
    if (c->pat == P_PC) {
        size_t bytes = RING_SLOTS * sizeof(void *);
        r->ring = shared_alloc ? shared_alloc(bytes) : malloc(bytes);
        if (!r->ring)
            return 1;
        for (unsigned i = 0; i < RING_SLOTS; i++)
            atomic_init(&r->ring[i], NULL);
    }
    wctx_t *w[MAX_K];
    pthread_t th[MAX_K];
    pid_t pid[MAX_K];
    for (unsigned i = 0; i < c->k; i++) {
        w[i] = calloc(1, sizeof(wctx_t));
        if (!w[i] || !(w[i]->slots = calloc(MAX_BATCH, sizeof(void *))))
            return 1;
        *w[i] = (wctx_t){ .run = r, .c = c, .idx = i, .max_s = max_s, .slots = w[i]->slots };
        if (procs) {
            fflush(NULL);
            pid[i] = fork();
            if (pid[i] < 0)
                return 1;
            if (pid[i] == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                exit(body(w[i]) != 0);      /* exit, not _exit: heapd's exit path says goodbye */
            }
        } else if (pthread_create(&th[i], NULL, thread_main, w[i]) != 0) {
            return 1;
        }
    }
    unsigned spins = 0;
    while (atomic_load_explicit(&r->ready, memory_order_acquire) < c->k) {
        if (procs && ++spins % 1024 == 0)
            for (unsigned i = 0; i < c->k; i++)
                if (waitpid(pid[i], NULL, WNOHANG) == pid[i]) {
                    fprintf(stderr, "bench-peers worker: a worker process died in its setup\n");
                    return 1;
                }
        usleep(100);
    }
    atomic_store_explicit(&r->go, 1, memory_order_release);
    bool failed = false;
    for (unsigned i = 0; i < c->k; i++) {
        if (procs) {
            int st;
            waitpid(pid[i], &st, 0);
            failed |= !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        } else {
            pthread_join(th[i], NULL);
        }
        failed |= r->res[i].failed != 0;
    }
    if (failed) {
        fprintf(stderr, "bench-peers worker: %s K=%u: an allocation failed: %s\n", c->name, c->k, strerror(ENOMEM));
        return 1;
    }
    uint64_t ops = 0, allocs = 0;
    double t0 = r->res[0].t0, t1 = r->res[0].t1;
    for (unsigned i = 0; i < c->k; i++) {
        ops += r->res[i].ops;
        allocs += r->res[i].allocs;
        t0 = r->res[i].t0 < t0 ? r->res[i].t0 : t0;
        t1 = r->res[i].t1 > t1 ? r->res[i].t1 : t1;
    }
    if (r->ring)
        (shared_free ? shared_free : free)((void *)r->ring);
    printf("R %" PRIu64 " %.6f %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", ops, t1 - t0, allocs,
           r->peak_live, r->peak_spans, r->peak_high);
    fflush(stdout);
    return 0;
}

static int worker_main(const char *kind, unsigned ci, double max_s, const char *sock, const char *symbol)
{
    int rc = bench_worker_enter(symbol);
    if (rc)
        return rc;
    if (ci >= NCASES)
        return 2;
    const bcase_t *c = &cases[ci];
    if (strcmp(kind, "malloc") == 0) {
        body = body_malloc;
        return worker_run(c, max_s, false, NULL, NULL);
    }
    if (strcmp(kind, "bip") == 0) {
#ifdef HEAPD_BENCH_BIP
        if (bip_open(BIP_BYTES) != 0)
            return 1;
        body = body_bip;
        return worker_run(c, max_s, true, bip_malloc, bip_free);
#else
        fprintf(stderr, "bench-peers worker: built without Boost.Interprocess\n");
        return 2;
#endif
    }
    if ((rc = bench_worker_attach(sock)) != 0)
        return rc;
    body = body_heapd;
    rc = worker_run(c, max_s, true, heapd_malloc, heapd_free);
    heapd_detach();
    return rc;
}

/* ---- the daemon's RPC books (heapctl stats --json) ------------------------------------------ */

typedef struct books {
    bool ok, has_waits;
    uint64_t refill, refill_ns, large, large_ns, waits, wait_ns;
} books_t;

static char heapctl_path[PATH_MAX];

static bool json_u64(const char *text, const char *key, uint64_t *out)
{
    char k[64];
    snprintf(k, sizeof(k), "\"%s\":", key);
    const char *p = strstr(text, k);
    return p && sscanf(p + strlen(k), "%" SCNu64, out) == 1;
}

static bool rpc_entry(const char *text, const char *type, uint64_t *count, uint64_t *ns)
{
    char k[64];
    snprintf(k, sizeof(k), "{\"Type\":\"%s\",", type);
    const char *p = strstr(text, k);
    return p && json_u64(p, "Count", count) && json_u64(p, "TotalNs", ns);
}

static books_t books_read(const char *ctl)
{
    books_t b = { 0 };
    char cmd[2 * PATH_MAX + 64];
    snprintf(cmd, sizeof(cmd), "'%s' --control '%s' stats --json 2>/dev/null", heapctl_path, ctl);
    FILE *f = popen(cmd, "r");
    if (!f)
        return b;
    static char text[1 << 17];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = 0;
    bool exited_ok = pclose(f) == 0;
    b.ok = exited_ok && rpc_entry(text, "refill", &b.refill, &b.refill_ns) &&
           rpc_entry(text, "alloc_large", &b.large, &b.large_ns);
    b.has_waits = json_u64(text, "RefillWaits", &b.waits) && json_u64(text, "RefillWaitNs", &b.wait_ns);
    return b;
}

/* ---- the parent ------------------------------------------------------------------------------- */

static double mops[NCASES][NALLOC][BENCH_MAX_ROUNDS];      /* <= 0: not measured */
static double rpc_frac[NCASES][BENCH_MAX_ROUNDS], rpc_ms[NCASES][BENCH_MAX_ROUNDS];
static double rpc_n[NCASES][BENCH_MAX_ROUNDS], allocs_n[NCASES][BENCH_MAX_ROUNDS];
static double wait_frac[NCASES][BENCH_MAX_ROUNDS], wait_ms[NCASES][BENCH_MAX_ROUNDS];
static double peak_live[NCASES][BENCH_MAX_ROUNDS], peak_spans[NCASES][BENCH_MAX_ROUNDS];   /* buffer-pool, MiB */
static double peak_high[NCASES][BENCH_MAX_ROUNDS];
static bool alloc_ok[NALLOC];

typedef struct line_ctx {
    uint64_t ops, allocs, peak_live, peak_spans, peak_high;
    double secs;
    bool got;
} line_ctx_t;

static void on_line(void *arg, const char *text)
{
    line_ctx_t *l = arg;
    if (sscanf(text, "R %" SCNu64 " %lf %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64, &l->ops, &l->secs,
               &l->allocs, &l->peak_live, &l->peak_spans, &l->peak_high) == 6 && l->secs > 0)
        l->got = true;
}

static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--quick] [--rounds N] [--max-s S] [--data FILE] [--plot FILE.png] [--socket PATH] "
            "[--heapd PATH]\n"
            "  --quick          a short smoke run (a few seconds)\n"
            "  --rounds N       interleaved rounds, the table shows medians (default 5, at most %u)\n"
            "  --max-s S        timed seconds per measurement (default 0.25)\n"
            "  --data FILE      write the medians as a tab-separated file\n"
            "  --plot FILE.png  draw the M ops/s with gnuplot\n"
            "  --socket PATH    use the heapd already listening on PATH (default: start one)\n"
            "  --heapd PATH     the heapd binary to start (default: HEAPD_BIN, else next to this program)\n",
            prog, BENCH_MAX_ROUNDS);
}

static void fmt_val(char *buf, size_t len, double v, const char *fmt)
{
    if (v > 0)
        snprintf(buf, len, fmt, v);
    else
        snprintf(buf, len, "n/a");
}

static void write_data(const char *path, double med[NCASES][NALLOC])
{
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "bench-peers: %s: %s\n", path, strerror(errno));
        return;
    }
    fprintf(f, "# bench-peers: M ops/s, medians; n/a = not measured\npattern");
    for (int a = 0; a < NALLOC; a++)
        fprintf(f, "\t%s", alloc_name(a));
    fprintf(f, "\n");
    for (unsigned i = 0; i < NCASES; i++) {
        fprintf(f, "\"%s K=%u\"", cases[i].name, cases[i].k);
        for (int a = 0; a < NALLOC; a++)
            if (med[i][a] > 0)
                fprintf(f, "\t%.4f", med[i][a]);
            else
                fprintf(f, "\tn/a");
        fprintf(f, "\n");
    }
    fclose(f);
    printf("data: %s\n", path);
}

static void plot(const char *png, const char *data)
{
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof(cmd),
             "gnuplot -e \"set terminal pngcairo size 1200,520 font ',10' noenhanced; set output '%s'; "
             "set datafile missing 'n/a'; set style data histograms; set style histogram clustered gap 1; "
             "set style fill solid 0.85 border -1; set logscale y; set yrange [0.01:5000]; set grid ytics; "
             "set ylabel 'M ops/s (log scale; median of rounds)'; set xtics rotate by -25; "
             "set key top right horizontal; set title 'bench-peers: heapd (K processes) vs malloc (K threads) "
             "vs Boost.Interprocess (K processes)'; "
             "plot for [c=2:%d] '%s' using c:xtic(1) title columnheader(c)\"",
             png, NALLOC + 1, data);
    if (system(cmd) != 0)
        fprintf(stderr, "bench-peers: gnuplot failed (scripts/install-deps.sh --bench); data in %s\n", data);
    else
        printf("plot: %s\n", png);
}

int main(int argc, char **argv)
{
    bench_opts_t o = { 0 };
    const char *data = NULL, *png = NULL;
    bool max_set = false;
    uint64_t rounds = 5;
    double max_s = 0.25;
    unsigned case_idx = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (bench_common_arg(argc, argv, &i, &o))
            continue;
        if (strcmp(a, "--rounds") == 0 && v && parse_u64(v, &rounds) && rounds <= BENCH_MAX_ROUNDS)
            i++;
        else if (strcmp(a, "--max-s") == 0 && v && (max_s = atof(v)) > 0)
            max_set = true, i++;
        else if (strcmp(a, "--case") == 0 && v)
            case_idx = (unsigned)atoi(v), i++;
        else if (strcmp(a, "--data") == 0 && v)
            data = v, i++;
        else if (strcmp(a, "--plot") == 0 && v)
            png = v, i++;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            fprintf(stderr, "bench-peers: bad argument: %s\n", a);
            usage(stderr, argv[0]);
            return 2;
        }
    }
    const char *worker = o.worker, *sock = o.sock, *heapd_opt = o.heapd, *expect = o.expect;
    bool quick = o.quick;
    if (worker) {
        bench_name = "bench-peers";
        if (strcmp(worker, "malloc") && strcmp(worker, "heapd") && strcmp(worker, "bip")) {
            fprintf(stderr, "bench-peers: unknown worker %s\n", worker);
            return 2;
        }
        return worker_main(worker, case_idx, max_s, sock, expect);
    }
    if (quick && !max_set)
        max_s = 0.02;
    if (bench_init("bench-peers") != 0)
        return 1;
    print_header(argc, argv);
    double t_start = now_s();
    if (bench_daemon_open(heapd_opt, &sock, "8GiB") != 0)
        return 1;
    char ctl[PATH_MAX];
    bench_control_path(sock, ctl, sizeof(ctl));
#ifdef HEAPCTL_BIN
    snprintf(heapctl_path, sizeof(heapctl_path), "%s", HEAPCTL_BIN);
#endif
    if (!heapctl_path[0] || access(heapctl_path, X_OK) != 0) {
        const char *slash = strrchr(self_exe, '/');
        snprintf(heapctl_path, sizeof(heapctl_path), "%.*s/heapctl", slash ? (int)(slash - self_exe) : 0,
                 self_exe);
    }
    books_t probe = books_read(ctl);
    if (!probe.ok)
        printf("daemon waits: n/a (cannot read the RPC books with %s --control %s)\n", heapctl_path, ctl);
    printf("workload: %u interleaved rounds, %.2f s timed per measurement; one op = one allocation + one free%s\n",
           (unsigned)rounds, max_s, quick ? " (quick)" : "");

    for (int a = 0; a < NALLOC; a++) {
        alloc_ok[a] = a == A_BIP || !allocators[a].preload || access(allocators[a].preload, R_OK) == 0;
        if (!alloc_ok[a])
            printf("%s: %s is missing: its column is n/a (install: scripts/install-deps.sh --bench)\n",
                   alloc_name(a), allocators[a].preload);
    }
#ifndef HEAPD_BENCH_BIP
    alloc_ok[A_BIP] = false;
    printf("BIP: built without Boost.Interprocess (no C++ compiler or boost headers): its column is n/a\n");
#endif
    fflush(stdout);

    unsigned heapd_failed = 0;
    for (unsigned r = 0; r < rounds; r++) {
        double t0 = now_s();
        for (unsigned i = 0; i < NCASES; i++)
            for (int a = 0; a < NALLOC; a++) {
                if (!alloc_ok[a])
                    continue;
                char cs[16], ms[32];
                snprintf(cs, sizeof(cs), "%u", i);
                snprintf(ms, sizeof(ms), "%.6f", max_s);
                const char *kind = a == A_HEAPD ? "--worker=heapd" : a == A_BIP ? "--worker=bip" : "--worker=malloc";
                const char *wargv[12] = { NULL, kind, "--case", cs, "--max-s", ms };
                int n = 6;
                if (a == A_HEAPD) {
                    wargv[n++] = "--socket";
                    wargv[n++] = sock;
                }
                wargv[n] = NULL;
                books_t b0 = { 0 };
                if (a == A_HEAPD)
                    b0 = books_read(ctl);
                line_ctx_t l = { 0 };
                int rc = bench_run_worker(wargv, a == A_BIP ? -1 : a, on_line, &l);
                if (rc != 0 || !l.got) {
                    fprintf(stderr, "bench-peers: %s worker failed (exit %d) on %s K=%u; that cell is n/a\n",
                            alloc_name(a), rc, cases[i].name, cases[i].k);
                    heapd_failed += a == A_HEAPD;
                    if (rc == 2 || rc == 3 || rc == 127)
                        alloc_ok[a] = false;
                    continue;
                }
                mops[i][a][r] = (double)l.ops / l.secs / 1e6;
                if (a == A_HEAPD && l.peak_live) {
                    peak_live[i][r] = (double)l.peak_live / 1048576.0;
                    peak_spans[i][r] = (double)l.peak_spans / 1048576.0 + 1e-9;
                    peak_high[i][r] = (double)l.peak_high / 1048576.0;
                }
                if (a == A_HEAPD) {
                    books_t b1 = books_read(ctl);
                    if (b0.ok && b1.ok && l.allocs) {
                        uint64_t calls = (b1.refill - b0.refill) + (b1.large - b0.large);
                        rpc_n[i][r] = (double)calls + 1e-9;              /* > 0: measured (median skips <= 0) */
                        allocs_n[i][r] = (double)l.allocs;
                        rpc_frac[i][r] = (double)calls / (double)l.allocs + 1e-12;
                        rpc_ms[i][r] = (double)((b1.refill_ns - b0.refill_ns) + (b1.large_ns - b0.large_ns)) / 1e6 +
                                       1e-9;
                    }
                    if (b0.has_waits && b1.has_waits && l.allocs) {
                        wait_frac[i][r] = (double)(b1.waits - b0.waits) / (double)l.allocs + 1e-12;
                        wait_ms[i][r] = (double)(b1.wait_ns - b0.wait_ns) / 1e6 + 1e-9;
                    }
                }
            }
        fprintf(stderr, "round %u  %5.1f s\n", r + 1, now_s() - t0);
    }

    double med[NCASES][NALLOC];
    for (unsigned i = 0; i < NCASES; i++)
        for (int a = 0; a < NALLOC; a++)
            med[i][a] = median(mops[i][a], (unsigned)rounds);

    printf("\nM ops/s (median of %u rounds; heapd and BIP: K processes, the others: K threads)\n\n", (unsigned)rounds);
    printf("| pattern | K | heapd | glibc | jemalloc | tcmalloc | mimalloc | BIP | heapd/mimalloc | heapd/BIP |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (unsigned i = 0; i < NCASES; i++) {
        char col[NALLOC][32], rm[32], rb[32];
        for (int a = 0; a < NALLOC; a++)
            fmt_val(col[a], sizeof(col[a]), med[i][a], "%.2f");
        double h = med[i][A_HEAPD], m = med[i][A_MIMALLOC], b = med[i][A_BIP];
        fmt_val(rm, sizeof(rm), h > 0 && m > 0 ? h / m : -1, "%.2fx");
        fmt_val(rb, sizeof(rb), h > 0 && b > 0 ? h / b : -1, "%.2fx");
        printf("| %s | %u | %s | %s | %s | %s | %s | %s | %s | %s |\n", cases[i].name, cases[i].k, col[A_HEAPD],
               col[A_GLIBC], col[A_JEMALLOC], col[A_TCMALLOC], col[A_MIMALLOC], col[A_BIP], rm, rb);
    }

    printf("\nheapd allocations that reached the daemon (Refill + AllocLarge RPCs in the daemon's books, per\n"
           "allocation the worker made, setup included; time: the daemon's handling time of those RPCs, a\n"
           "lower bound of the allocations' wait); medians of %u rounds\n\n", (unsigned)rounds);
    printf("| pattern | K | allocations | Refill + AllocLarge RPCs | reached the daemon | daemon time ms |%s\n",
           probe.has_waits ? " RefillWaits / alloc | RefillWaitNs ms |" : "");
    printf("|---|---:|---:|---:|---:|---:|%s\n", probe.has_waits ? "---:|---:|" : "");
    for (unsigned i = 0; i < NCASES; i++) {
        char na[32], nr[32], fr[32], tm[32], wf[32], wm[32];
        fmt_val(na, sizeof(na), median(allocs_n[i], (unsigned)rounds), "%.0f");
        fmt_val(nr, sizeof(nr), median(rpc_n[i], (unsigned)rounds), "%.0f");
        fmt_val(fr, sizeof(fr), median(rpc_frac[i], (unsigned)rounds) * 100, "%.3f%%");
        fmt_val(tm, sizeof(tm), median(rpc_ms[i], (unsigned)rounds), "%.1f");
        fmt_val(wf, sizeof(wf), median(wait_frac[i], (unsigned)rounds) * 100, "%.3f%%");
        fmt_val(wm, sizeof(wm), median(wait_ms[i], (unsigned)rounds), "%.1f");
        printf("| %s | %u | %s | %s | %s | %s |", cases[i].name, cases[i].k, na, nr, fr, tm);
        if (probe.has_waits)
            printf(" %s | %s |", wf, wm);
        printf("\n");
    }

    printf("\nheapd on the buffer-pool pattern: peak bytes the workers held (live: the sum of their bytes at\n"
           "the end of each batch of 256 ops, and the sum of each batch's highest after any op: the true peak\n"
           "lies between, and equals the second at K=1) and the heap's peak pages in spans beyond those before\n"
           "the worker started (spans cached by the workers, live or free, and spans in the daemon's central\n"
           "lists); medians of %u rounds\n\n",
           (unsigned)rounds);
    printf("| pattern | K | peak live MiB (ends .. highs) | peak pages in spans MiB | spans / live |\n"
           "|---|---:|---:|---:|---:|\n");
    for (unsigned i = 0; i < NCASES; i++) {
        if (cases[i].pat != P_POOL)
            continue;
        char pl[32], ph[32], ps[32], ra[32], rh[32];
        double l = median(peak_live[i], (unsigned)rounds), h = median(peak_high[i], (unsigned)rounds);
        double sp = median(peak_spans[i], (unsigned)rounds);
        double ratio[BENCH_MAX_ROUNDS], rhigh[BENCH_MAX_ROUNDS];
        for (unsigned r = 0; r < rounds; r++) {
            ratio[r] = peak_live[i][r] > 0 ? peak_spans[i][r] / peak_live[i][r] : -1;
            rhigh[r] = peak_high[i][r] > 0 ? peak_spans[i][r] / peak_high[i][r] : -1;
        }
        fmt_val(pl, sizeof(pl), l, "%.1f");
        fmt_val(ph, sizeof(ph), h, "%.1f");
        fmt_val(ps, sizeof(ps), sp, "%.1f");
        fmt_val(ra, sizeof(ra), median(ratio, (unsigned)rounds), "%.2fx");
        fmt_val(rh, sizeof(rh), median(rhigh, (unsigned)rounds), "%.2fx");
        if (cases[i].k == 1)
            printf("| %s | %u | %s | %s | %s |\n", cases[i].name, cases[i].k, ph, ps, rh);
        else
            printf("| %s | %u | %s .. %s | %s | %s .. %s |\n", cases[i].name, cases[i].k, pl, ph, ps, rh, ra);
    }

    if (data)
        write_data(data, med);
    if (png) {
        char tmp[PATH_MAX];
        const char *d = data;
        if (!d) {
            snprintf(tmp, sizeof(tmp), "%s.dat", png);
            write_data(tmp, med);
            d = tmp;
        }
        plot(png, d);
    }
    printf("\ntotal time: %.0f s\n", now_s() - t_start);
    bool ok = alloc_ok[A_HEAPD] && heapd_failed == 0;
    if (!ok)
        printf("FAILED: see the errors above\n");
    fflush(stdout);
    stop_daemon();
    return ok ? 0 : 1;
}
