/* heapd-itest: integration tests with a real daemon and real client processes.
 *
 * Each test starts its own heapd (unique socket and base), runs its body in
 * forked children (so this process never attaches and stays clean), and stops
 * the daemon. Seeds are fixed; HEAPD_TEST_SEED overrides them and failures
 * print the seed. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "heapd.pb-c.h"
#include "unit.h"

void (*unit_suites[UNIT_MAX_SUITES])(void);
unsigned unit_nsuites;

/* ---- patterns ------------------------------------------------------------------- */

static inline uint8_t pat(uint64_t tag, size_t i) { return (uint8_t)((tag * 0x9e3779b1u) >> 24 ^ i * 131); }

/* Fill an object so that every byte we check depends on its tag and offset;
 * large objects get their first and last KiB and a byte every 4 KiB. */
static void fill(uint8_t *p, size_t size, uint64_t tag)
{
    if (size <= 8192) {
        for (size_t i = 0; i < size; i++)
            p[i] = pat(tag, i);
        return;
    }
    for (size_t i = 0; i < 1024; i++) {
        p[i] = pat(tag, i);
        p[size - 1 - i] = pat(tag, size - 1 - i);
    }
    for (size_t i = 1024; i < size - 1024; i += 4096)
        p[i] = pat(tag, i);
}

static bool check(const uint8_t *p, size_t size, uint64_t tag)
{
    if (size <= 8192) {
        for (size_t i = 0; i < size; i++)
            if (p[i] != pat(tag, i))
                return false;
        return true;
    }
    for (size_t i = 0; i < 1024; i++)
        if (p[i] != pat(tag, i) || p[size - 1 - i] != pat(tag, size - 1 - i))
            return false;
    for (size_t i = 1024; i < size - 1024; i += 4096)
        if (p[i] != pat(tag, i))
            return false;
    return true;
}

/* ---- the cross-process workload ---------------------------------------------------- */

#define NPROC    4
#define NTHREAD  2
#define RING_N   1024
#define LIVE_MAX 256

struct item { void *p; uint64_t size, tag; };
struct cell { _Atomic uint64_t seq; struct item it; };
/* Vyukov's bounded MPMC queue: producers are other processes' threads, the
 * consumers are the owning process's threads. */
struct ring { _Atomic uint64_t head, tail; struct cell cells[RING_N]; };

struct shared {
    struct ring rings[NPROC];
    _Atomic int done[NPROC];
    _Atomic uint64_t mismatches, handed, received, allocs, nulls;
};

static void ring_init(struct ring *r)
{
    atomic_store(&r->head, 0);
    atomic_store(&r->tail, 0);
    for (uint64_t i = 0; i < RING_N; i++)
        atomic_store(&r->cells[i].seq, i);
}

static bool ring_push(struct ring *r, struct item it)
{
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
    for (;;) {
        struct cell *c = &r->cells[pos % RING_N];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int64_t d = (int64_t)seq - (int64_t)pos;
        if (d == 0) {
            if (atomic_compare_exchange_weak(&r->tail, &pos, pos + 1)) {
                c->it = it;
                atomic_store_explicit(&c->seq, pos + 1, memory_order_release);
                return true;
            }
        } else if (d < 0) {
            return false;
        } else {
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed);
        }
    }
}

static bool ring_pop(struct ring *r, struct item *it)
{
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    for (;;) {
        struct cell *c = &r->cells[pos % RING_N];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
        int64_t d = (int64_t)seq - (int64_t)(pos + 1);
        if (d == 0) {
            if (atomic_compare_exchange_weak(&r->head, &pos, pos + 1)) {
                *it = c->it;
                atomic_store_explicit(&c->seq, pos + RING_N, memory_order_release);
                return true;
            }
        } else if (d < 0) {
            return false;
        } else {
            pos = atomic_load_explicit(&r->head, memory_order_relaxed);
        }
    }
}

struct wl {
    struct shared *sh;
    int proc, thread;
    uint64_t seed, iters;
};

/* Sizes over every class from 1 B to 32 KiB, and large ones up to 4 MiB. */
static size_t pick_size(uint64_t *st)
{
    uint64_t r = test_rand(st) % 100;
    if (r < 8)
        return 32769 + test_rand(st) % ((4u << 20) - 32768);
    unsigned c = 1 + (unsigned)(test_rand(st) % (HD_NUM_SIZE_CLASSES - 1));
    uint32_t lo = hd_class_to_size[c - 1], hi = hd_class_to_size[c];
    return lo + 1 + test_rand(st) % (hi - lo);
}

static void consume(struct wl *w, unsigned max)
{
    struct item it;
    for (unsigned k = 0; k < max && ring_pop(&w->sh->rings[w->proc], &it); k++) {
        if (!check(it.p, it.size, it.tag))
            atomic_fetch_add(&w->sh->mismatches, 1);
        heapd_free(it.p);
        atomic_fetch_add(&w->sh->received, 1);
    }
}

static void *worker_thread(void *arg)
{
    struct wl *w = arg;
    struct item live[LIVE_MAX];
    unsigned nlive = 0;
    uint64_t st = w->seed;
    for (uint64_t i = 0; i < w->iters; i++) {
        if (nlive < LIVE_MAX && (nlive == 0 || test_rand(&st) % 100 < 55)) {
            size_t size = pick_size(&st);
            uint8_t *p = heapd_malloc(size);
            if (!p) {
                atomic_fetch_add(&w->sh->nulls, 1);
                continue;
            }
            atomic_fetch_add(&w->sh->allocs, 1);
            struct item it = {p, size, test_rand(&st)};
            fill(p, size, it.tag);
            if (test_rand(&st) % 4 == 0) {           /* a quarter go to another process */
                int dst = (w->proc + 1 + (int)(test_rand(&st) % (NPROC - 1))) % NPROC;
                if (ring_push(&w->sh->rings[dst], it)) {
                    atomic_fetch_add(&w->sh->handed, 1);
                    continue;
                }
            }
            live[nlive++] = it;
        } else if (nlive) {
            unsigned k = (unsigned)(test_rand(&st) % nlive);
            if (!check(live[k].p, live[k].size, live[k].tag))
                atomic_fetch_add(&w->sh->mismatches, 1);
            heapd_free(live[k].p);
            live[k] = live[--nlive];
        }
        if (i % 16 == 0)
            consume(w, 16);
    }
    while (nlive) {
        nlive--;
        if (!check(live[nlive].p, live[nlive].size, live[nlive].tag))
            atomic_fetch_add(&w->sh->mismatches, 1);
        heapd_free(live[nlive].p);
    }
    return NULL;
}

static bool all_done(struct shared *sh)
{
    for (int i = 0; i < NPROC; i++)
        if (!atomic_load(&sh->done[i]))
            return false;
    return true;
}

static int worker_process(struct shared *sh, int proc, uint64_t seed, uint64_t iters)
{
    pthread_t t[NTHREAD];
    struct wl w[NTHREAD];
    for (int i = 0; i < NTHREAD; i++) {
        w[i] = (struct wl){sh, proc, i, seed ^ (uint64_t)(proc * NTHREAD + i + 1) * 0x51ed27u, iters};
        pthread_create(&t[i], NULL, worker_thread, &w[i]);
    }
    for (int i = 0; i < NTHREAD; i++)
        pthread_join(t[i], NULL);
    atomic_store(&sh->done[proc], 1);
    /* keep taking what others hand us until everyone is done and our ring is empty */
    struct wl me = {sh, proc, 0, 0, 0};
    for (;;) {
        bool fin = all_done(sh);
        consume(&me, 1u << 30);
        struct item it;
        if (fin && !ring_pop(&sh->rings[proc], &it))
            break;
        if (fin) {                       /* popped one after all: handle it, go round */
            if (!check(it.p, it.size, it.tag))
                atomic_fetch_add(&sh->mismatches, 1);
            heapd_free(it.p);
            atomic_fetch_add(&sh->received, 1);
        }
        test_pause_ms(1);                /* pacing: give the producers a moment before looking again */
    }
    heapd_detach();
    return 0;
}

struct wl_args { const char *sock; uint64_t seed, iters; bool plain; };

static int workload_driver(void *arg)
{
    struct wl_args *a = arg;
    if (a->plain)
        setenv("HEAPD_NO_URING", "1", 1);
    if (heapd_attach(a->sock) != 0) {
        perror("heapd_attach");
        return 10;
    }
    const char *tr = heapd_transport();
    if (strcmp(tr, a->plain ? "plain" : "io_uring") != 0) {
        fprintf(stderr, "transport is %s, expected %s\n", tr, a->plain ? "plain" : "io_uring");
        return 11;
    }
    struct shared *sh = heapd_calloc(1, sizeof(*sh));   /* the rings live in the shared heap */
    if (!sh)
        return 12;
    for (int i = 0; i < NPROC; i++)
        ring_init(&sh->rings[i]);
    pid_t pids[NPROC];
    for (int i = 0; i < NPROC; i++) {
        fflush(NULL);
        pids[i] = fork();
        if (pids[i] == 0)
            _exit(worker_process(sh, i, a->seed, a->iters));
    }
    int bad = 0;
    for (int i = 0; i < NPROC; i++)
        if (wait_child(pids[i], 240) != 0)
            bad++;
    uint64_t mism = atomic_load(&sh->mismatches), handed = atomic_load(&sh->handed);
    uint64_t recv = atomic_load(&sh->received), allocs = atomic_load(&sh->allocs);
    uint64_t nulls = atomic_load(&sh->nulls);
    printf("  workload (%s): %llu allocs, %llu handed across processes, %llu received, "
           "%llu mismatches, %llu NULLs, seed %#llx\n", tr, (unsigned long long)allocs,
           (unsigned long long)handed, (unsigned long long)recv, (unsigned long long)mism,
           (unsigned long long)nulls, (unsigned long long)a->seed);
    heapd_free(sh);
    uint64_t bf = heapd_bad_frees();
    heapd_detach();
    if (bad || mism || handed != recv || nulls || bf || handed == 0)
        return 20;
    return 0;
}

static bool heap_empty(const hd_header_t *h)
{
    return h->spans_inuse == 0 && h->pages_inuse == 0 && h->objects_central == 0 && h->clients == 1;
}

static void run_workload(bool plain, uint64_t iters)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "4GiB", NULL) == 0);
    struct wl_args a = {d.sock, test_seed(0xC0FFEE), iters, plain};
    CU_ASSERT_EQUAL(run_child(workload_driver, &a, 300), 0);
    hd_header_t h;
    bool empty = books_wait(d.sock, &h, heap_empty, 5000);
    if (!empty)
        fprintf(stderr, "books after workload: spans_inuse %llu pages_inuse %llu objects_central %llu "
                "clients %llu (seed %#llx)\n", (unsigned long long)h.spans_inuse,
                (unsigned long long)h.pages_inuse, (unsigned long long)h.objects_central,
                (unsigned long long)h.clients, (unsigned long long)a.seed);
    CU_ASSERT(empty);
    CU_ASSERT(h.clients_total >= 1 + NPROC);
    CU_ASSERT(h.refills > 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_workload_uring(void) { run_workload(false, 40000); }
static void test_workload_plain(void) { run_workload(true, 20000); }

/* ---- exhaustion -------------------------------------------------------------------- */

static int exhaust_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    enum { MAXP = 4096 };
    static void *big[MAXP], *small[1 << 16];
    unsigned nb = 0, ns = 0;
    errno = 0;
    while (nb < MAXP && (big[nb] = heapd_malloc(1 << 20)))
        nb++;
    if (nb == MAXP || errno != ENOMEM || nb < 8) {
        fprintf(stderr, "large exhaustion: %u objects, errno %d\n", nb, errno);
        return 11;
    }
    /* small objects until NULL too (in what the large ones left) */
    errno = 0;
    while (ns < (1u << 16) && (small[ns] = heapd_malloc(4000)))
        ns++;
    if (ns == (1u << 16) || errno != ENOMEM) {
        fprintf(stderr, "small exhaustion: %u objects, errno %d\n", ns, errno);
        return 12;
    }
    /* recovery: free half the large objects, then allocate again */
    for (unsigned i = 0; i < nb; i += 2)
        heapd_free(big[i]);
    void *again[8];
    for (int i = 0; i < 8; i++)
        if (!(again[i] = heapd_malloc(1 << 20))) {
            fprintf(stderr, "no recovery after frees (errno %d)\n", errno);
            return 13;
        }
    for (int i = 0; i < 8; i++)
        heapd_free(again[i]);
    for (unsigned i = 1; i < nb; i += 2)
        heapd_free(big[i]);
    for (unsigned i = 0; i < ns; i++)
        heapd_free(small[i]);
    void *p = heapd_malloc(4000);
    if (!p)
        return 14;
    heapd_free(p);
    heapd_detach();
    return 0;
}

static void test_exhaustion(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(exhaust_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- invalid and double frees -------------------------------------------------------- */

static int bad_free_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    char *p = heapd_malloc(100);
    char *q = heapd_malloc(100);
    char *t = heapd_malloc(5);                  /* tiny */
    char *t2 = heapd_malloc(3);
    if (!p || !q || !t || !t2)
        return 11;
    memset(q, 0x5a, 100);
    int local;
    heapd_free(p);
    heapd_free(p);                              /* double free */
    if (heapd_bad_frees() != 1) return 12;
    heapd_free(q + 8);                          /* not an object start */
    if (heapd_bad_frees() != 2) return 13;
    heapd_free(&local);                         /* not a heap pointer */
    if (heapd_bad_frees() != 3) return 14;
    heapd_free(t);
    heapd_free(t);                              /* tiny double free */
    if (heapd_bad_frees() != 4) return 15;
    heapd_free(t2 + 1);                         /* tiny interior pointer */
    if (heapd_bad_frees() != 5) return 16;
    /* nothing was corrupted: q intact, the class still hands out distinct objects */
    for (int i = 0; i < 100; i++)
        if ((unsigned char)q[i] != 0x5a) return 17;
    char *a = heapd_malloc(100), *b = heapd_malloc(100);
    if (!a || !b || a == b || a == q || b == q) return 18;
    heapd_free(a);
    heapd_free(b);
    heapd_free(q);
    heapd_free(t2);
    heapd_detach();
    return 0;
}

static int abort_body(void *arg)
{
    setenv("HEAPD_ABORT_ON_ERROR", "1", 1);
    if (heapd_attach(arg) != 0)
        return 10;
    void *p = heapd_malloc(64);
    heapd_free(p);
    heapd_free(p);
    return 0;                                   /* not reached: abort() */
}

static void test_bad_frees(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(bad_free_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(abort_body, d.sock, 30), 128 + SIGABRT);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- fork in a client ------------------------------------------------------------------ */

static int fork_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    /* the parent's cache holds a span of this class when it forks */
    char *a = heapd_malloc(48);
    if (!a) return 11;
    memset(a, 'A', 48);
    int pfd[2], done[2];
    if (pipe(pfd) != 0 || pipe(done) != 0) return 12;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char *b = heapd_malloc(48);             /* re-attaches as a new client */
        if (!b) _exit(21);
        memset(b, 'B', 48);
        if (write(pfd[1], &b, sizeof(b)) != sizeof(b)) _exit(22);
        for (int i = 0; i < 48; i++)
            if (a[i] != 'A') _exit(23);
        heapd_free(a);                          /* free the parent's object here */
        char go;                                /* the parent has made its 64 allocations */
        if (read(done[0], &go, 1) != 1) _exit(26);
        for (int i = 0; i < 48; i++)
            if (b[i] != 'B') _exit(24);         /* the parent must not have reused b */
        heapd_free(b);
        uint64_t bf = heapd_bad_frees();
        heapd_detach();
        _exit(bf ? 25 : 0);
    }
    char *b;
    if (read(pfd[0], &b, sizeof(b)) != sizeof(b)) return 13;
    /* the parent allocates on from its own span: never the child's object */
    char *c[64];
    for (int i = 0; i < 64; i++) {
        c[i] = heapd_malloc(48);
        if (!c[i] || c[i] == b) return 14;
        memset(c[i], 'C', 48);
    }
    if (write(done[1], "g", 1) != 1) return 17;
    int rc = wait_child(pid, 30);
    if (rc != 0) {
        fprintf(stderr, "fork child exited %d\n", rc);
        return 15;
    }
    for (int i = 0; i < 64; i++) {
        for (int k = 0; k < 48; k++)
            if (c[i][k] != 'C') return 16;
        heapd_free(c[i]);
    }
    heapd_detach();
    return 0;
}

static void test_fork(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(fork_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    CU_ASSERT(h.clients_total >= 3);            /* parent, child, and the books reader */
    daemon_stop(&d);
}

/* ---- protocol version ------------------------------------------------------------------- */

static int attach_ok(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    void *p = heapd_malloc(1000);
    if (!p) return 11;
    heapd_free(p);
    heapd_detach();
    return 0;
}

static void test_wrong_version(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int fd = raw_connect(d.sock);
    CU_ASSERT_FATAL(fd >= 0);
    Heapd__Hello hello = HEAPD__HELLO__INIT;
    hello.version = 999;
    hello.pid = getpid();
    hello.name = "old-client";
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &hello;
    uint8_t out[256], in[4096];
    size_t n = heapd__client_msg__pack(&m, out);
    ssize_t r = raw_call(fd, out, n, in, sizeof(in), 5000);
    CU_ASSERT_FATAL(r > 0);
    Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, in);
    CU_ASSERT_FATAL(rep != NULL);
    CU_ASSERT_EQUAL(rep->body_case, HEAPD__DAEMON_MSG__BODY_ERROR);
    if (rep->body_case == HEAPD__DAEMON_MSG__BODY_ERROR) {
        CU_ASSERT_EQUAL(rep->error->err, EPROTONOSUPPORT);
        CU_ASSERT(strstr(rep->error->message, "999") != NULL);
        CU_ASSERT(strstr(rep->error->message, "2") != NULL);      /* HD_PROTO_VERSION */
    }
    heapd__daemon_msg__free_unpacked(rep, NULL);
    CU_ASSERT_EQUAL(raw_call(fd, NULL, 0, in, sizeof(in), 5000), 0);   /* then EOF */
    close(fd);
    /* the library reports the refusal as EPROTONOSUPPORT: checked with a real
     * client only through the raw path, since it speaks the right version;
     * the daemon still serves everyone else */
    CU_ASSERT_EQUAL(run_child(attach_ok, d.sock, 30), 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- daemon command line ------------------------------------------------------------------ */

static int run_heapd(const char *const *args, char *err, size_t errlen)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 2);
        close(pfd[0]);
        const char *argv[16] = {HEAPD_BIN};
        int i = 0;
        while (args[i] && i < 14) {
            argv[i + 1] = args[i];
            i++;
        }
        argv[i + 1] = NULL;
        execv(HEAPD_BIN, (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    ssize_t n = read(pfd[0], err, errlen - 1);
    err[n > 0 ? n : 0] = 0;
    close(pfd[0]);
    return wait_child(pid, 10);
}

static void test_bad_flags(void)
{
    char err[512];
    const char *a1[] = {"--size", "foo", "--socket", "/tmp/heapd-itest-nope.sock", NULL};
    CU_ASSERT_EQUAL(run_heapd(a1, err, sizeof(err)), 2);
    CU_ASSERT(strncmp(err, "heapd: ", 7) == 0 && strchr(err, '\n') == strrchr(err, '\n'));
    const char *a2[] = {"--bogus", NULL};
    CU_ASSERT_EQUAL(run_heapd(a2, err, sizeof(err)), 2);
    CU_ASSERT(strncmp(err, "heapd: ", 7) == 0);
    const char *a3[] = {"--base", "0x1234", "--socket", "/tmp/heapd-itest-nope.sock", NULL};
    CU_ASSERT_EQUAL(run_heapd(a3, err, sizeof(err)), 2);
    CU_ASSERT(strncmp(err, "heapd: ", 7) == 0);
    const char *a4[] = {"--size", "1KiB", "--socket", "/tmp/heapd-itest-nope.sock", NULL};
    CU_ASSERT_EQUAL(run_heapd(a4, err, sizeof(err)), 2);
}

int main(int argc, char **argv)
{
    atexit(harness_cleanup);
    signal(SIGPIPE, SIG_IGN);
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    CU_pSuite s = CU_add_suite("integration", NULL, NULL);
    CU_add_test(s, "daemon flags", test_bad_flags);
    CU_add_test(s, "wrong protocol version", test_wrong_version);
    CU_add_test(s, "invalid and double frees", test_bad_frees);
    CU_add_test(s, "fork in a client", test_fork);
    CU_add_test(s, "segment exhaustion and recovery", test_exhaustion);
    CU_add_test(s, "4 processes x 2 threads, io_uring", test_workload_uring);
    CU_add_test(s, "4 processes x 2 threads, plain send/recv", test_workload_plain);
    for (unsigned i = 0; i < unit_nsuites; i++)     /* suites of the other itest_*.c files (UNIT_SUITE) */
        unit_suites[i]();
    unit_select_suites();
    CU_basic_set_mode(argc > 1 && strcmp(argv[1], "-v") == 0 ? CU_BRM_VERBOSE : CU_BRM_NORMAL);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    harness_cleanup();
    printf("\n%u tests ran, %u failures\n", ran, failed);
    return (failed || ran == 0) ? 1 : 0;
}
