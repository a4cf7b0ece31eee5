/* bench/alloc: allocation throughput of heapd against glibc, jemalloc, tcmalloc
 * and mimalloc, per size class, plus a 2-process producer/consumer over heapd.
 *
 * Part 1, per size (Go's 67 size classes, then 64 KiB, 256 KiB and 1 MiB):
 *   keep a FIFO ring of W live objects, W = 4 x objects per span (at least 64),
 *   so the allocator must keep moving to fresh spans (refills) in steady state.
 *   setup (untimed): allocate W objects, then 2W + 1000 warmup pairs;
 *   timed: repeat { free the oldest object; allocate a new one; write its first
 *     byte }, until --iters pairs or a time cap, whichever comes first.
 *   The result is ns per alloc+free pair, the median of 3 rounds.
 * Every measurement runs in a fresh worker process (one per allocator, size and
 * round), a re-execution of this binary:
 *   `--worker=malloc` measures plain malloc/free, under LD_PRELOAD=<lib> for
 *   jemalloc, tcmalloc and mimalloc, with no LD_PRELOAD for glibc;
 *   `--worker=heapd` measures heapd_malloc/heapd_free (never under LD_PRELOAD).
 * So no size inherits cache state from the sizes measured before it.
 * The 3 rounds are interleaved (round 1 of every allocator, then round 2, ...),
 * so a burst of noise on the machine lands in one round of each, not in all
 * three rounds of one allocator.
 *
 * Part 2 (heapd only): a producer process allocates objects (64 B, 1 KiB,
 * 16 KiB; one run per size) and passes their pointers through a lock-free SPSC
 * ring that lives in the shared heap; a forked consumer process frees them.
 * End to end = from the producer's first allocation until the consumer has
 * freed the last object. Median of 3 runs.
 *
 * Context: the time of a plain Unix SEQPACKET round trip between two processes,
 * the floor of every heapd RPC (Refill, AllocLarge) on this machine.
 *
 * The daemon: by default the bench starts its own heapd (HEAPD_BIN, else the
 * `heapd` next to this executable) on a socket in a fresh temp dir, with an
 * 8 GiB segment, and stops it at the end, also on failure or Ctrl-C;
 * `--socket PATH` uses a running daemon instead.
 *
 * Usage: bench-alloc [--quick] [--iters N] [--socket PATH] [--heapd PATH]
 * Exit status: 0, or 1 if heapd could not be measured or something failed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "heapd.h"
#include "sizeclasses.h"

extern char **environ;

#define ROUNDS 3
#define MIN_WINDOW 64u
#define MAX_WINDOW (4u * HD_MAX_OBJS_PER_SPAN)

/* ---- what is measured ------------------------------------------------------- */

static const size_t large_sizes[] = { 64u << 10, 256u << 10, 1u << 20 };
#define NLARGE (sizeof(large_sizes) / sizeof(large_sizes[0]))
#define NCLASSES (HD_NUM_SIZE_CLASSES - 1)
#define NSIZES (NCLASSES + NLARGE)

typedef struct sizespec {
    unsigned cls;               /* 1..67, or 0 for a large size */
    size_t size;
    unsigned objs_per_span;     /* 1 for large sizes */
    unsigned window;            /* live objects in the FIFO ring */
} sizespec_t;

static sizespec_t sizes[NSIZES];

static void sizes_init(void)
{
    for (unsigned c = 1; c <= NCLASSES; c++) {
        sizespec_t *s = &sizes[c - 1];
        s->cls = c;
        s->size = hd_class_to_size[c];
        s->objs_per_span = hd_class_to_nobjs[c];
    }
    for (unsigned i = 0; i < NLARGE; i++) {
        sizespec_t *s = &sizes[NCLASSES + i];
        s->cls = 0;
        s->size = large_sizes[i];
        s->objs_per_span = 1;
    }
    for (unsigned i = 0; i < NSIZES; i++) {
        unsigned w = 4 * sizes[i].objs_per_span;
        sizes[i].window = w < MIN_WINDOW ? MIN_WINDOW : w;
    }
}


/* Producer/consumer object sizes. */
static const size_t pc_sizes[] = { 64, 1024, 16384 };
#define NPC (sizeof(pc_sizes) / sizeof(pc_sizes[0]))

typedef struct params {
    uint64_t iters;             /* timed pairs per size and round, upper bound */
    double max_s;               /* time cap of one timed phase */
    uint64_t pc_objects;        /* producer/consumer: objects per run, upper bound */
    double pc_max_s;            /* producer/consumer: producer time cap per run */
    int size_index;             /* worker: the one size to measure; -1: all */
} params_t;

/* ---- small helpers ------------------------------------------------------------ */



static void fmt_size(char *buf, size_t len, size_t size)
{
    if (size >= (1u << 20) && size % (1u << 20) == 0)
        snprintf(buf, len, "%zu MiB", size >> 20);
    else if (size >= (1u << 10) && size % (1u << 10) == 0 && size > 32768)
        snprintf(buf, len, "%zu KiB", size >> 10);
    else
        snprintf(buf, len, "%zu", size);
}


/* ---- part 1 worker: the FIFO ring ----------------------------------------------
 * One loop per allocator family, so both call their allocator directly (through
 * the PLT, like any program), not through a function pointer. The ring is
 * static: the worker allocates nothing but the objects under test. */

static void *ring[MAX_WINDOW];

#define DEFINE_RING_BENCH(NAME, ALLOC, FREE)                                            \
    static double NAME(const sizespec_t *s, const params_t *p, uint64_t *pairs_out)     \
    {                                                                                   \
        const size_t size = s->size;                                                    \
        const unsigned w = s->window;                                                   \
        for (unsigned i = 0; i < w; i++) {                                              \
            void *o = ALLOC(size);                                                      \
            if (!o)                                                                     \
                return -1;                                                              \
            *(volatile char *)o = (char)i;                                              \
            ring[i] = o;                                                                \
        }                                                                               \
        unsigned head = 0;                                                              \
        uint64_t warm = 2 * (uint64_t)w + 1000;                                         \
        for (uint64_t k = 0; k < warm; k++) {                                           \
            FREE(ring[head]);                                                           \
            void *o = ALLOC(size);                                                      \
            if (!o)                                                                     \
                return -1;                                                              \
            *(volatile char *)o = (char)k;                                              \
            ring[head] = o;                                                             \
            head = head + 1 == w ? 0 : head + 1;                                        \
        }                                                                               \
        uint64_t done = 0;                                                              \
        double t0 = now_s(), t1 = t0;                                                   \
        for (;;) {                                                                      \
            uint64_t chunk = p->iters - done < 256 ? p->iters - done : 256;             \
            for (uint64_t k = 0; k < chunk; k++) {                                      \
                FREE(ring[head]);                                                       \
                void *o = ALLOC(size);                                                  \
                if (__builtin_expect(!o, 0))                                            \
                    return -1;                                                          \
                *(volatile char *)o = (char)k;                                          \
                ring[head] = o;                                                         \
                head = head + 1 == w ? 0 : head + 1;                                    \
            }                                                                           \
            done += chunk;                                                              \
            t1 = now_s();                                                               \
            if (done >= p->iters || t1 - t0 >= p->max_s)                                \
                break;                                                                  \
        }                                                                               \
        for (unsigned i = 0; i < w; i++)                                                \
            FREE(ring[i]);                                                              \
        *pairs_out = done;                                                              \
        return (t1 - t0) * 1e9 / (double)done;                                          \
    }

DEFINE_RING_BENCH(ring_malloc, malloc, free)
DEFINE_RING_BENCH(ring_heapd, heapd_malloc, heapd_free)

/* Worker output, one line per size: "R <index> <ns per pair> <pairs>". */
static int worker_ring(bool heapd, const params_t *p)
{
    unsigned first = p->size_index >= 0 ? (unsigned)p->size_index : 0;
    unsigned end = p->size_index >= 0 ? first + 1 : NSIZES;
    for (unsigned i = first; i < end && i < NSIZES; i++) {
        uint64_t pairs = 0;
        errno = 0;
        double ns = heapd ? ring_heapd(&sizes[i], p, &pairs) : ring_malloc(&sizes[i], p, &pairs);
        if (ns < 0) {
            fprintf(stderr, "bench-alloc worker: allocating %zu bytes failed: %s\n", sizes[i].size,
                    strerror(errno ? errno : ENOMEM));
            return 1;
        }
        printf("R %u %.3f %" PRIu64 "\n", i, ns, pairs);
        fflush(stdout);
    }
    return 0;
}

/* ---- part 2 worker: producer/consumer over the shared heap ---------------------- */

#define PC_CAP 4096u            /* ring slots, a power of two */
#define PC_PUBLISH 16u          /* each side publishes its index every this many objects */

typedef struct pc_ring {
    _Alignas(64) _Atomic uint64_t head;     /* written by the producer */
    _Alignas(64) _Atomic uint64_t tail;     /* written by the consumer */
    _Alignas(64) _Atomic int ready;         /* consumer attached and warmed up */
    _Atomic int failed;
    _Atomic uint64_t freed;                 /* objects the consumer freed */
    double done_s;                          /* consumer: CLOCK_MONOTONIC at the last free */
    double first_s;                         /* consumer: CLOCK_MONOTONIC at the first free */
    _Alignas(64) void *slot[PC_CAP];        /* NULL ends the run */
} pc_ring_t;

static int pc_consumer(pc_ring_t *r)
{
    /* A fork child becomes a new client of the daemon at its first allocation
     * that needs a span (heapd.h); do that before the producer starts its clock. */
    void *q = heapd_malloc(64);
    if (!q) {
        atomic_store(&r->failed, 1);
        return 1;
    }
    heapd_free(q);
    atomic_store_explicit(&r->ready, 1, memory_order_release);

    uint64_t tail = 0, head_seen = 0, freed = 0;
    unsigned spins = 0;
    for (;;) {
        if (tail == head_seen) {
            if (tail % PC_PUBLISH)
                atomic_store_explicit(&r->tail, tail, memory_order_release);
            head_seen = atomic_load_explicit(&r->head, memory_order_acquire);
            if (tail == head_seen) {
                if (++spins > 256)
                    sched_yield();
                else
                    cpu_relax();
                continue;
            }
        }
        spins = 0;
        void *o = r->slot[tail & (PC_CAP - 1)];
        tail++;
        if (!o)
            break;
        heapd_free(o);
        if (freed++ == 0)
            r->first_s = now_s();
        if (tail % PC_PUBLISH == 0)
            atomic_store_explicit(&r->tail, tail, memory_order_release);
    }
    r->done_s = now_s();
    atomic_store_explicit(&r->freed, freed, memory_order_release);
    atomic_store_explicit(&r->tail, tail, memory_order_release);
    return 0;
}

typedef struct pc_result {
    uint64_t objects;
    double e2e_s;               /* producer's first alloc .. consumer's last free */
    double prod_s;              /* producer's first alloc .. its last push */
} pc_result_t;

static int pc_run(pc_ring_t *r, size_t size, const params_t *p, pc_result_t *out)
{
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    atomic_store(&r->ready, 0);
    atomic_store(&r->failed, 0);
    atomic_store(&r->freed, 0);
    r->done_s = r->first_s = 0;

    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(WORKER_TIMEOUT_S);
        _exit(pc_consumer(r));
    }
    while (!atomic_load_explicit(&r->ready, memory_order_acquire)) {
        if (atomic_load(&r->failed) || waitpid(pid, NULL, WNOHANG) == pid) {
            fprintf(stderr, "bench-alloc: the consumer process could not use heapd\n");
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            return -1;
        }
        usleep(100);
    }

    uint64_t head = 0, tail_seen = 0, n = 0;
    bool failed = false;
    double t0 = now_s(), t1 = t0;
    for (;;) {
        bool last = n >= p->pc_objects;
        if (!last && n % 256 == 0 && n > 0 && (t1 = now_s()) - t0 >= p->pc_max_s)
            last = true;
        void *o = NULL;
        if (!last) {
            o = heapd_malloc(size);
            if (!o) {
                fprintf(stderr, "bench-alloc: heapd_malloc(%zu) failed: %s\n", size, strerror(errno));
                failed = true;
                last = true;
            } else {
                *(volatile char *)o = 1;
            }
        }
        if (head - tail_seen >= PC_CAP) {
            atomic_store_explicit(&r->head, head, memory_order_release);
            unsigned spins = 0;
            while (head - (tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire)) >= PC_CAP) {
                if (++spins <= 256) {
                    cpu_relax();
                    continue;
                }
                sched_yield();
                int st;
                if (spins % 1024 == 0 && waitpid(pid, &st, WNOHANG) == pid) {
                    fprintf(stderr, "bench-alloc: the consumer process died (status %#x)\n", st);
                    return -1;
                }
            }
        }
        r->slot[head & (PC_CAP - 1)] = o;
        head++;
        if (last || head % PC_PUBLISH == 0)
            atomic_store_explicit(&r->head, head, memory_order_release);
        if (last)
            break;
        n++;
    }
    t1 = now_s();
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench-alloc: the consumer process failed (status %#x)\n", st);
        return -1;
    }
    uint64_t freed = atomic_load_explicit(&r->freed, memory_order_acquire);
    if (failed || freed != n) {
        if (!failed)
            fprintf(stderr, "bench-alloc: consumer freed %" PRIu64 " of %" PRIu64 " objects\n", freed, n);
        return -1;
    }
    out->objects = n;
    out->prod_s = t1 - t0;
    out->e2e_s = r->done_s - t0;
    return 0;
}

/* Worker output, one line per run: "P <size> <objects> <e2e s> <producer s>". */
static int worker_pc(const params_t *p)
{
    pc_ring_t *r = heapd_malloc(sizeof(*r) + 64);
    if (!r) {
        fprintf(stderr, "bench-alloc: heapd_malloc(ring): %s\n", strerror(errno));
        return 1;
    }
    void *raw = r;
    r = (pc_ring_t *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
    memset(r, 0, sizeof(*r));
    int rc = 0;
    for (unsigned i = 0; i < NPC && rc == 0; i++)
        for (unsigned k = 0; k < ROUNDS && rc == 0; k++) {
            pc_result_t res;
            if (pc_run(r, pc_sizes[i], p, &res) != 0) {
                rc = 1;
                break;
            }
            printf("P %zu %" PRIu64 " %.6f %.6f\n", pc_sizes[i], res.objects, res.e2e_s, res.prod_s);
            fflush(stdout);
        }
    heapd_free(raw);
    return rc;
}

static int worker_main(const char *kind, const char *sock, const char *symbol, const params_t *p)
{
    int rc = bench_worker_enter(symbol);
    if (rc)
        return rc;
    if (strcmp(kind, "malloc") == 0)
        return worker_ring(false, p);
    if ((rc = bench_worker_attach(sock)) != 0)
        return rc;
    rc = strcmp(kind, "pc") == 0 ? worker_pc(p) : worker_ring(true, p);
    heapd_detach();
    return rc;
}

/* ---- context: the cost of one round trip ----------------------------------------
 * Every heapd slow path (Refill, AllocLarge) is a synchronous round trip to the
 * daemon over a Unix SEQPACKET socket. The same ping-pong between two plain
 * processes (16-byte messages, no heapd) is the floor of one such RPC on this
 * machine; the heapd numbers are easier to read next to it. Median of 3. */
static double socket_rtt_us(unsigned n)
{
    double us[ROUNDS] = { 0 };
    for (unsigned r = 0; r < ROUNDS; r++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
            return -1;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            close(sv[0]);
            close(sv[1]);
            return -1;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            close(sv[0]);
            char b[64];
            while (recv(sv[1], b, sizeof(b), 0) > 0)
                if (send(sv[1], b, 16, MSG_NOSIGNAL) != 16)
                    break;
            _exit(0);
        }
        close(sv[1]);
        char b[64] = { 0 };
        bool ok = true;
        double t0 = now_s();
        for (unsigned i = 0; i < n && ok; i++)
            ok = send(sv[0], b, 16, MSG_NOSIGNAL) == 16 && recv(sv[0], b, sizeof(b), 0) == 16;
        double t = now_s() - t0;
        close(sv[0]);
        waitpid(pid, NULL, 0);
        if (!ok)
            return -1;
        us[r] = t * 1e6 / n;
    }
    return median(us, ROUNDS);
}

/* ---- the parent: daemon, workers, tables ---------------------------------------- */


/* Run this binary as a worker; calls line(arg, text) for each line it prints.
 * Returns the worker's exit status (0 = success). */
static int run_worker(const char *kind, int alloc_idx, const params_t *p, const char *sock,
                      void (*line)(void *, const char *), void *arg)
{
    char iters[32], maxs[32], pcn[32], pcs[32], wk[32], idx[16];
    snprintf(wk, sizeof(wk), "--worker=%s", kind);
    snprintf(iters, sizeof(iters), "%" PRIu64, p->iters);
    snprintf(maxs, sizeof(maxs), "%.6f", p->max_s);
    snprintf(pcn, sizeof(pcn), "%" PRIu64, p->pc_objects);
    snprintf(pcs, sizeof(pcs), "%.6f", p->pc_max_s);
    const char *argv[20] = { self_exe, wk, "--iters", iters, "--max-s", maxs,
                             "--pc-objects", pcn, "--pc-max-s", pcs };
    int argc = 10;
    if (p->size_index >= 0) {
        snprintf(idx, sizeof(idx), "%d", p->size_index);
        argv[argc++] = "--size-index";
        argv[argc++] = idx;
    }
    if (sock) {
        argv[argc++] = "--socket";
        argv[argc++] = sock;
    }
    argv[argc] = NULL;
    return bench_run_worker(argv, alloc_idx, line, arg);
}

static double ring_ns[A_COUNT][NSIZES][ROUNDS];     /* <= 0: not measured */
static bool alloc_ok[A_COUNT];

typedef struct ring_ctx {
    int alloc;
    unsigned round;
    unsigned got;
} ring_ctx_t;

static void on_ring_line(void *arg, const char *text)
{
    ring_ctx_t *c = arg;
    unsigned idx;
    double ns;
    if (sscanf(text, "R %u %lf", &idx, &ns) == 2 && idx < NSIZES && ns > 0) {
        ring_ns[c->alloc][idx][c->round] = ns;
        c->got++;
    }
}

typedef struct pc_ctx {
    double e2e_ns[NPC][ROUNDS], prod_ns[NPC][ROUNDS];
    uint64_t objects[NPC][ROUNDS];
    unsigned runs[NPC];
} pc_ctx_t;

static void on_pc_line(void *arg, const char *text)
{
    pc_ctx_t *c = arg;
    size_t size;
    uint64_t n;
    double e2e, prod;
    if (sscanf(text, "P %zu %" SCNu64 " %lf %lf", &size, &n, &e2e, &prod) != 4 || n == 0)
        return;
    for (unsigned i = 0; i < NPC; i++)
        if (pc_sizes[i] == size && c->runs[i] < ROUNDS) {
            unsigned k = c->runs[i]++;
            c->objects[i][k] = n;
            c->e2e_ns[i][k] = e2e * 1e9 / (double)n;
            c->prod_ns[i][k] = prod * 1e9 / (double)n;
        }
}


static void usage(FILE *f, const char *prog)
{
    fprintf(f,
            "usage: %s [--quick] [--iters N] [--socket PATH] [--heapd PATH]\n"
            "  --quick        a short smoke run (a few seconds)\n"
            "  --iters N      timed alloc+free pairs per size and round (default 2000000)\n"
            "  --socket PATH  use the heapd already listening on PATH (default: start one)\n"
            "  --heapd PATH   the heapd binary to start (default: HEAPD_BIN, else next to this program)\n",
            prog);
}

/* Appends class c to a list like "3-4, 8, 32-67" (classes come in increasing order). */
typedef struct classlist {
    char text[512];
    unsigned first, last;       /* the open range; 0: none */
} classlist_t;

static void cl_flush(classlist_t *l)
{
    if (!l->first)
        return;
    size_t n = strlen(l->text);
    if (n + 16 >= sizeof(l->text))
        return;
    if (l->first == l->last)
        snprintf(l->text + n, sizeof(l->text) - n, "%s%u", n ? ", " : "", l->first);
    else
        snprintf(l->text + n, sizeof(l->text) - n, "%s%u-%u", n ? ", " : "", l->first, l->last);
    l->first = l->last = 0;
}

static void cl_add(classlist_t *l, unsigned c)
{
    if (l->first && c == l->last + 1) {
        l->last = c;
        return;
    }
    cl_flush(l);
    l->first = l->last = c;
}

static const char *cl_text(classlist_t *l)
{
    cl_flush(l);
    return l->text[0] ? l->text : "none";
}

static void fmt_ns(char *buf, size_t len, double ns)
{
    if (ns > 0)
        snprintf(buf, len, "%.1f", ns);
    else
        snprintf(buf, len, "n/a");
}

int main(int argc, char **argv)
{
    params_t p = { .iters = 2000000, .max_s = 0.25, .pc_objects = 2000000, .pc_max_s = 1.0, .size_index = -1 };
    bench_opts_t o = { 0 };
    bool iters_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (bench_common_arg(argc, argv, &i, &o))
            continue;
        if (strcmp(a, "--iters") == 0 && v && parse_u64(v, &p.iters))
            iters_set = true, i++;
        else if (strcmp(a, "--max-s") == 0 && v)
            p.max_s = atof(v), i++;
        else if (strcmp(a, "--pc-objects") == 0 && v && parse_u64(v, &p.pc_objects))
            i++;
        else if (strcmp(a, "--pc-max-s") == 0 && v)
            p.pc_max_s = atof(v), i++;
        else if (strcmp(a, "--size-index") == 0 && v)
            p.size_index = atoi(v), i++;
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout, argv[0]);
            return 0;
        } else {
            fprintf(stderr, "bench-alloc: bad argument: %s\n", a);
            usage(stderr, argv[0]);
            return 2;
        }
    }
    const char *worker = o.worker, *sock = o.sock, *heapd_opt = o.heapd, *expect = o.expect;
    bool quick = o.quick;
    sizes_init();
    if (worker) {
        bench_name = "bench-alloc";
        if (strcmp(worker, "malloc") && strcmp(worker, "heapd") && strcmp(worker, "pc")) {
            fprintf(stderr, "bench-alloc: unknown worker %s\n", worker);
            return 2;
        }
        return worker_main(worker, sock, expect, &p);
    }
    if (quick) {
        if (!iters_set)
            p.iters = 20000;
        p.max_s = 0.02;
        p.pc_objects = 50000;
        p.pc_max_s = 0.1;
    }

    if (bench_init("bench-alloc") != 0)
        return 1;
    print_header(argc, argv);
    double t_start = now_s();
    if (bench_daemon_open(heapd_opt, &sock, "8GiB") != 0)
        return 1;
    printf("workload: FIFO ring of W live objects, W = 4 x objects per span (>= %u); per pair: free the oldest,\n"
           "          allocate one, write its first byte; ns per alloc+free pair, median of %u interleaved rounds;\n"
           "          up to %" PRIu64 " timed pairs or %.2f s per size and round%s\n",
           MIN_WINDOW, ROUNDS, p.iters, p.max_s, quick ? " (quick)" : "");

    double rtt = socket_rtt_us(quick ? 2000 : 20000);
    if (rtt > 0)
        printf("context: a Unix SEQPACKET round trip between 2 plain processes (the floor of one heapd RPC)"
               " takes %.1f us here\n", rtt);

    for (int a = 0; a < A_COUNT; a++) {
        alloc_ok[a] = !allocators[a].preload || access(allocators[a].preload, R_OK) == 0;
        if (!alloc_ok[a])
            printf("%s: %s is missing: its column is n/a (install: scripts/install-deps.sh --bench)\n",
                   allocators[a].name, allocators[a].preload);
    }
    fflush(stdout);

    /* One fresh worker process per allocator, size and round: a size's result
     * does not depend on what the sizes before it left in the caches (heapd packs
     * tiny objects into class-2 blocks, so a class-1 run changes class 2's state). */
    unsigned heapd_failed = 0;
    for (unsigned r = 0; r < ROUNDS; r++)
        for (int a = 0; a < A_COUNT; a++) {
            if (!alloc_ok[a])
                continue;
            ring_ctx_t c = { .alloc = a, .round = r };
            double t0 = now_s();
            unsigned failed = 0;
            for (unsigned i = 0; i < NSIZES && alloc_ok[a]; i++) {
                params_t pw = p;
                pw.size_index = (int)i;
                int rc = run_worker(a == A_HEAPD ? "heapd" : "malloc", a, &pw, a == A_HEAPD ? sock : NULL,
                                    on_ring_line, &c);
                if (rc == 0)
                    continue;
                failed++;
                if (rc == 2 || rc == 3 || rc == 127 || (a == A_HEAPD && rc == 1 && c.got == 0) ||
                    (failed >= 3 && c.got == 0)) {
                    fprintf(stderr, "bench-alloc: %s worker failed (exit %d); its column is n/a\n",
                            allocators[a].name, rc);
                    alloc_ok[a] = false;
                } else {
                    fprintf(stderr, "bench-alloc: %s worker failed (exit %d) at %zu bytes; that cell is n/a\n",
                            allocators[a].name, rc, sizes[i].size);
                }
            }
            if (a == A_HEAPD)
                heapd_failed += failed + !alloc_ok[a];
            fprintf(stderr, "round %u %-8s %2u sizes  %5.1f s%s\n", r + 1, allocators[a].name, c.got,
                    now_s() - t0, failed ? "  (failures)" : "");
        }

    /* ---- per-class table ---- */
    double med[A_COUNT][NSIZES];
    for (int a = 0; a < A_COUNT; a++)
        for (unsigned i = 0; i < NSIZES; i++)
            med[a][i] = median(ring_ns[a][i], ROUNDS);

    printf("\n| class | size | objs/span | W | heapd ns | glibc ns | jemalloc ns | tcmalloc ns | mimalloc ns "
           "| heapd/jemalloc | heapd/mimalloc |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    unsigned je_ok = 0, je_n = 0, lg_ok = 0, lg_n = 0, mi_ok = 0, mi_n = 0;
    classlist_t je_over = { .text = "" }, mi_over = { .text = "" };
    for (unsigned i = 0; i < NSIZES; i++) {
        const sizespec_t *s = &sizes[i];
        char cls[16], sz[32], col[A_COUNT][32], rj[32], rm[32];
        if (s->cls)
            snprintf(cls, sizeof(cls), "%u", s->cls);
        else
            snprintf(cls, sizeof(cls), "large");
        fmt_size(sz, sizeof(sz), s->size);
        for (int a = 0; a < A_COUNT; a++)
            fmt_ns(col[a], sizeof(col[a]), med[a][i]);
        double h = med[A_HEAPD][i], j = med[A_JEMALLOC][i], m = med[A_MIMALLOC][i];
        snprintf(rj, sizeof(rj), "n/a");
        snprintf(rm, sizeof(rm), "n/a");
        if (h > 0 && j > 0) {
            snprintf(rj, sizeof(rj), "%.2fx", h / j);
            if (s->cls) {
                je_n++;
                je_ok += h / j <= 2.0;
                if (h / j > 2.0)
                    cl_add(&je_over, s->cls);
            } else {
                lg_n++;
                lg_ok += h / j <= 2.0;
            }
        }
        if (h > 0 && m > 0) {
            snprintf(rm, sizeof(rm), "%.2fx", h / m);
            if (s->cls && s->size <= 1024) {
                mi_n++;
                mi_ok += h / m <= 1.25;
                if (h / m > 1.25)
                    cl_add(&mi_over, s->cls);
            }
        }
        printf("| %s | %s | %u | %u | %s | %s | %s | %s | %s | %s | %s |\n", cls, sz, s->objs_per_span,
               s->window, col[A_HEAPD], col[A_GLIBC], col[A_JEMALLOC], col[A_TCMALLOC], col[A_MIMALLOC], rj,
               rm);
    }
    unsigned small_total = 0;
    for (unsigned c = 1; c <= NCLASSES; c++)
        small_total += hd_class_to_size[c] <= 1024;
    if (je_n == 0 || mi_n == 0)
        printf("\nsummary: n/a: it needs heapd, jemalloc and mimalloc numbers\n");
    else
        printf("\nsummary: %u of %u size classes within 2x of jemalloc (large sizes: %u of %u); "
           "%u of %u small classes (<= 1024 B) within 1.25x of mimalloc",
           je_ok, je_n, lg_ok, lg_n, mi_ok, mi_n);
    if (je_n && mi_n) {
        if (je_n < NCLASSES || mi_n < small_total)
            printf(" (classes without both numbers are not counted: %u and %u of them)", NCLASSES - je_n,
                   small_total - mi_n);
        printf("\nclasses over 2x of jemalloc: %s\n", cl_text(&je_over));
        printf("small classes over 1.25x of mimalloc: %s\n", cl_text(&mi_over));
    }

    /* ---- producer/consumer ---- */
    printf("\nproducer/consumer (heapd, 2 processes): the producer allocates and writes 1 byte, passes the "
           "pointer through\nan SPSC ring of %u slots in the shared heap; a forked consumer frees it. "
           "Up to %" PRIu64 " objects or %.2f s\nof producing per run; median of %u runs. End to end: "
           "first allocation .. last free.\n",
           PC_CAP, p.pc_objects, p.pc_max_s, ROUNDS);
    fflush(stdout);
    pc_ctx_t pc;
    memset(&pc, 0, sizeof(pc));
    double t0 = now_s();
    int pc_rc = run_worker("pc", -1, &p, sock, on_pc_line, &pc);
    fprintf(stderr, "producer/consumer %5.1f s%s\n", now_s() - t0, pc_rc ? "  FAILED" : "");
    printf("\n| size | objects/run | end-to-end objects/s | end-to-end ns/object | producer ns/object |\n");
    printf("|---:|---:|---:|---:|---:|\n");
    for (unsigned i = 0; i < NPC; i++) {
        char sz[32], objs[32], ops[32], e2e[32], prod[32];
        fmt_size(sz, sizeof(sz), pc_sizes[i]);
        double e = median(pc.e2e_ns[i], pc.runs[i]), pr = median(pc.prod_ns[i], pc.runs[i]);
        double no = 0;
        for (unsigned k = 0; k < pc.runs[i]; k++)
            no += (double)pc.objects[i][k];
        if (pc.runs[i])
            no /= pc.runs[i];
        snprintf(objs, sizeof(objs), pc.runs[i] ? "%.0f" : "n/a", no);
        if (e > 0)
            snprintf(ops, sizeof(ops), "%.2fM", 1e3 / e);
        else
            snprintf(ops, sizeof(ops), "n/a");
        fmt_ns(e2e, sizeof(e2e), e);
        fmt_ns(prod, sizeof(prod), pr);
        printf("| %s | %s | %s | %s | %s |\n", sz, objs, ops, e2e, prod);
    }

    printf("\ntotal time: %.0f s\n", now_s() - t_start);
    bool ok = alloc_ok[A_HEAPD] && heapd_failed == 0 && pc_rc == 0;
    if (!ok)
        printf("FAILED: see the errors above\n");
    fflush(stdout);
    stop_daemon();
    return ok ? 0 : 1;
}
