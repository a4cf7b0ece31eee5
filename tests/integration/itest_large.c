/* Integration tests of the large classes and refills ahead (issue 9) against
 * a real daemon and real client processes:
 *  - large-class objects freed by another process: no FreeLarge RPC, the
 *    producer's next round reuses its chunks (no Refill), the stats balance;
 *  - a client killed with chunks holding free and live objects: the daemon
 *    reclaims them, another process frees the live objects, the heap drains;
 *  - under --hard-limit, memory a process's own chunks hold free serves
 *    another size;
 *  - RefillWaits: counted per client, and in a steady state few allocations
 *    wait (a count, not a time).
 * Registered with UNIT_SUITE: itest_main.c runs every registered suite. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "harness.h"
#include "heapd.h"
#include "unit.h"

#define MiB (1024ull * 1024)
#define FAILC(code, ...) do { fprintf(stderr, "  child: " __VA_ARGS__); fputc('\n', stderr); return (code); } while (0)

static bool heap_empty(const hd_header_t *h)
{
    return h->spans_inuse == 0 && h->pages_inuse == 0 && h->clients == 1;
}

static bool nothing_cached(const hd_header_t *h) { return h->spans_cached == 0 && h->clients == 1; }

/* The daemon's stats (control socket); NULL on failure. */
static Heapdctl__ControlReply *ctl_call(const char *sock, int body)
{
    int fd = ctl_open(sock);
    if (fd < 0)
        return NULL;
    Heapdctl__ControlReply *r = ctl_send(fd, 1, body) == 0 ? ctl_recv(fd, 5000) : NULL;
    close(fd);
    return r;
}

static uint64_t rpc_count(const Heapdctl__MemStats *s, const char *type)
{
    for (size_t i = 0; i < s->n_rpc; i++)
        if (!strcmp(s->rpc[i]->type, type))
            return s->rpc[i]->count;
    return UINT64_MAX;
}

/* Sizes across the large classes, 40 KiB .. 1 MiB. */
static size_t large_size(unsigned i)
{
    static const size_t sizes[] = {32769, 40000, 65536, 100000, 131072, 200000, 262144, 400000, 524288, 1048576};
    return sizes[i % (sizeof sizes / sizeof sizes[0])];
}

/* ---- cross-process frees ---------------------------------------------------------------- */

#define XN 40
#define XROUNDS 4

static int xproc_body(void *arg)
{
    const char *sock = arg;
    uint64_t *offs = mmap(NULL, XROUNDS * XN * sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                          -1, 0);
    int to_q[2], to_p[2];
    if (offs == MAP_FAILED || pipe(to_q) != 0 || pipe(to_p) != 0)
        return 9;
    fflush(NULL);
    pid_t q = fork();
    if (q == 0) {                                /* Q: frees what P allocated */
        if (heapd_attach(sock) != 0)
            _exit(20);
        for (unsigned r = 0; r < XROUNDS; r++) {
            char c;
            if (read(to_q[0], &c, 1) != 1)
                _exit(21);
            for (unsigned i = 0; i < XN; i++) {
                unsigned char *p = heapd_offset_to_ptr(offs[r * XN + i]);
                size_t n = large_size(i);
                if (!p || p[0] != (unsigned char)(r * XN + i) || p[n - 1] != (unsigned char)i)
                    _exit(22);
                heapd_free(p);
            }
            if (heapd_bad_frees() != 0 || write(to_p[1], "f", 1) != 1)
                _exit(23);
        }
        heapd_detach();
        _exit(0);
    }
    if (heapd_attach(sock) != 0)                 /* P: allocates, round after round */
        return 10;
    for (unsigned r = 0; r < XROUNDS; r++) {
        hd_header_t h0, h1;
        if (books_read(sock, &h0) != 0)
            return 15;
        for (unsigned i = 0; i < XN; i++) {
            size_t n = large_size(i);
            unsigned char *p = heapd_malloc(n);
            if (!p || heapd_usable_size(p) < n)
                FAILC(11, "round %u: malloc(%zu) failed: errno %d", r, n, errno);
            p[0] = (unsigned char)(r * XN + i);
            p[n - 1] = (unsigned char)i;
            offs[r * XN + i] = heapd_ptr_to_offset(p);
        }
        if (books_read(sock, &h1) != 0)
            return 15;
        /* Q's frees came round: from round 1 on, the chunks P has hold
         * every object (their sweep finds Q's frees), no Refill, no page more */
        if (r > 0 && (h1.refills != h0.refills || h1.pages_inuse > h0.pages_inuse))
            FAILC(13, "round %u: %llu refills, pages in use %llu -> %llu: Q's frees did not come round", r,
                  (unsigned long long)(h1.refills - h0.refills), (unsigned long long)h0.pages_inuse,
                  (unsigned long long)h1.pages_inuse);
        char c;
        if (write(to_q[1], "a", 1) != 1 || read(to_p[0], &c, 1) != 1)
            return 12;
    }
    heapd_detach();
    return wait_child(q, 30) == 0 ? 0 : 14;
}

static void test_cross_process(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(xproc_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    Heapdctl__ControlReply *r = ctl_call(d.sock, HEAPDCTL__CONTROL_REQUEST__BODY_STATS);
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_STATS);
    const Heapdctl__MemStats *s = r->stats;
    CU_ASSERT_EQUAL(rpc_count(s, "free_large"), 0);           /* every free was a state byte */
    CU_ASSERT_EQUAL(rpc_count(s, "alloc_large"), 0);          /* every size had a class */
    CU_ASSERT_EQUAL(s->large_allocs, XROUNDS * XN);
    CU_ASSERT_EQUAL(s->large_frees, XROUNDS * XN);
    CU_ASSERT_EQUAL(s->large_alloc_bytes, s->large_free_bytes);
    CU_ASSERT_EQUAL(s->heap_alloc, 0);
    CU_ASSERT_EQUAL(s->n_large_by_size, HD_NUM_LARGE_CLASSES);
    uint64_t m = 0;
    for (size_t i = 0; i < s->n_large_by_size; i++) {
        CU_ASSERT_EQUAL(s->large_by_size[i]->mallocs, s->large_by_size[i]->frees);
        m += s->large_by_size[i]->mallocs;
    }
    CU_ASSERT_EQUAL(m, XROUNDS * XN);
    heapdctl__control_reply__free_unpacked(r, NULL);
    daemon_stop(&d);
}

/* ---- a dead client's chunks ---------------------------------------------------- */

#define DN 20

static int dead_body(void *arg)
{
    int fd = *(int *)arg;
    const char *sock = getenv("ITEST_LARGE_SOCK");
    if (heapd_attach(sock) != 0)
        return 10;
    uint64_t live[DN / 2];
    void *p[DN];
    for (unsigned i = 0; i < DN; i++)
        if (!(p[i] = heapd_malloc(large_size(i))))
            return 11;
    for (unsigned i = 0; i < DN; i++) {
        if (i % 2)
            heapd_free(p[i]);                    /* cached free: a state byte, no message */
        else
            live[i / 2] = heapd_ptr_to_offset(p[i]);
    }
    if (write(fd, live, sizeof live) != (ssize_t)sizeof live)
        return 12;
    raise(SIGKILL);                              /* nothing flushed, nothing released */
    return 13;
}

static int free_offsets_body(void *arg)
{
    const uint64_t *live = arg;
    if (heapd_attach(getenv("ITEST_LARGE_SOCK")) != 0)
        return 10;
    for (unsigned i = 0; i < DN / 2; i++) {
        void *p = heapd_offset_to_ptr(live[i]);
        if (heapd_usable_size(p) < large_size(2 * i))
            FAILC(11, "object %u of the dead client is not live any more", i);
        heapd_free(p);
    }
    heapd_detach();
    return heapd_bad_frees() == 0 ? 0 : 12;
}

static void test_dead_client(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    setenv("ITEST_LARGE_SOCK", d.sock, 1);
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    CU_ASSERT_EQUAL(run_child(dead_body, &pfd[1], 30), 128 + SIGKILL);
    static uint64_t live[DN / 2];
    CU_ASSERT_EQUAL(read(pfd[0], live, sizeof live), (ssize_t)sizeof live);
    close(pfd[0]);
    close(pfd[1]);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, nothing_cached, 5000));  /* its cache is the daemon's again */
    uint64_t live_pages = 0;
    for (unsigned i = 0; i < DN / 2; i++)
        live_pages += (large_size(2 * i) + 8191) / 8192;
    CU_ASSERT(h.pages_inuse >= live_pages);                    /* its live objects stay allocated */
    CU_ASSERT_EQUAL(run_child(free_offsets_body, live, 30), 0);
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));       /* the frees drained everything */
    unsetenv("ITEST_LARGE_SOCK");
    daemon_stop(&d);
}

/* ---- the hard limit: free pages in the process's chunks serve another size --------------------- */

static int hard_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    static void *a[24], *b[48];
    for (unsigned i = 0; i < 24; i++)            /* 24 MiB of the 1 MiB class */
        if (!(a[i] = heapd_malloc(MiB)))
            FAILC(11, "1 MiB object %u refused: errno %d", i, errno);
    for (unsigned i = 0; i < 24; i++)
        heapd_free(a[i]);                        /* free, but (some of it) cached by us */
    for (unsigned i = 0; i < 48; i++)            /* 24 MiB of the 512 KiB class */
        if (!(b[i] = heapd_malloc(512 << 10)))
            FAILC(12, "512 KiB object %u refused under the limit: errno %d", i, errno);
    for (unsigned i = 0; i < 48; i++)
        heapd_free(b[i]);
    heapd_detach();
    return 0;
}

static void test_hard_limit(void)
{
    daemon_proc_t d;
    const char *extra[] = {"--hard-limit", "36MiB", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(hard_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    CU_ASSERT(h.committed_bytes <= 36 * MiB);
    daemon_stop(&d);
}

/* ---- RefillWaits ----------------------------------------------------------------------------- */

static uint64_t my_waits(const char *sock)
{
    Heapdctl__ControlReply *r = ctl_call(sock, HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS);
    uint64_t w = UINT64_MAX;
    for (size_t i = 0; r && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS && i < r->clients->n_clients; i++)
        if (r->clients->clients[i]->pid == getpid())
            w = r->clients->clients[i]->refill_waits;
    if (r)
        heapdctl__control_reply__free_unpacked(r, NULL);
    return w;
}

#define WSLOTS 256
#define WWARM 20000u
#define WOPS 200000u

static int waits_body(void *arg)
{
    const char *sock = arg;
    if (heapd_attach(sock) != 0)
        return 10;
    static const size_t sizes[] = {24, 100, 500, 2000, 40000, 100000, 300000};
    static void *slot[WSLOTS];
    uint64_t st = test_seed(0x3a17);
    uint64_t w0 = 0;
    for (unsigned op = 0; op < WWARM + WOPS; op++) {
        unsigned i = (unsigned)(test_rand(&st) % WSLOTS);
        heapd_free(slot[i]);
        if (!(slot[i] = heapd_malloc(sizes[test_rand(&st) % (sizeof sizes / sizeof sizes[0])])))
            FAILC(11, "malloc failed at op %u: errno %d", op, errno);
        if (op + 1 == WWARM) {
            heapd_flush();                       /* the counts so far go to the slot */
            w0 = my_waits(sock);
        }
    }
    heapd_flush();
    uint64_t w1 = my_waits(sock);
    fprintf(stderr, "  RefillWaits: %llu in warm-up, %llu in %u steady-state allocations (seed %#llx)\n",
            (unsigned long long)w0, (unsigned long long)(w1 - w0), WOPS, (unsigned long long)test_seed(0x3a17));
    if (w0 == 0 || w0 == UINT64_MAX || w1 == UINT64_MAX)
        FAILC(12, "RefillWaits not visible (%llu, %llu)", (unsigned long long)w0, (unsigned long long)w1);
    if ((w1 - w0) * 100 > WOPS)                  /* >= 99% of steady-state allocations never wait */
        FAILC(13, "%llu of %u steady-state allocations waited", (unsigned long long)(w1 - w0), WOPS);
    for (unsigned i = 0; i < WSLOTS; i++)
        heapd_free(slot[i]);
    heapd_detach();
    return 0;
}

static void test_refill_waits(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(waits_body, d.sock, 120), 0);
    Heapdctl__ControlReply *r = ctl_call(d.sock, HEAPDCTL__CONTROL_REQUEST__BODY_STATS);
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_STATS);
    CU_ASSERT(r->stats->refill_waits > 0);                    /* the retired client's waits stay in the total */
    CU_ASSERT(r->stats->refill_wait_ns >= r->stats->refill_waits);
    heapdctl__control_reply__free_unpacked(r, NULL);
    daemon_stop(&d);
}

static void register_large_suite(void)
{
    CU_pSuite s = CU_add_suite("large", NULL, NULL);
    CU_add_test(s, "large-class objects freed by another process: no RPC, memory comes round", test_cross_process);
    CU_add_test(s, "a client killed with cached large spans: reclaimed, its live objects freeable",
                test_dead_client);
    CU_add_test(s, "the hard limit reaches free large spans in the process's own cache", test_hard_limit);
    CU_add_test(s, "RefillWaits: per client and in total, rare in a steady state", test_refill_waits);
}

UNIT_SUITE(register_large_suite)
