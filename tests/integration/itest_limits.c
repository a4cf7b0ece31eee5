/* Integration tests of the scavenger and the limits (issue 4), with a real
 * daemon and real client processes; modeled on tcmalloc's limit_test where it
 * applies. The truth from outside is st_blocks of the segment's memfds (got
 * from a raw Hello, like harness.c's books_read) and the daemon's books.
 * Registered with UNIT_SUITE: itest_main.c runs every registered suite. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "heapd.pb-c.h"
#include "unit.h"

#define MiB (1ull << 20)

/* ---- looking at the segment from outside -------------------------------------------- */

typedef struct watch {
    int meta_fd, heap_fd;
    const hd_header_t *hdr;     /* the daemon's books, live */
} watch_t;

/* Hello on a raw connection; the Welcome's fds are kept, the connection not. */
static int watch_open(const char *sock, watch_t *w)
{
    memset(w, 0, sizeof(*w));
    w->meta_fd = w->heap_fd = -1;
    int fds[2], nfds;
    if (raw_hello_fds(sock, "itest-watch", fds, &nfds, NULL) != 0) {
        for (int i = 0; i < 2 && i < nfds; i++)
            close(fds[i]);
        return -1;
    }
    void *hm = mmap(NULL, HD_HEADER_BYTES, PROT_READ, MAP_SHARED, fds[0], 0);
    if (hm == MAP_FAILED) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    w->meta_fd = fds[0];
    w->heap_fd = fds[1];
    w->hdr = hm;
    return 0;
}

static void watch_close(watch_t *w)
{
    if (w->hdr)
        munmap((void *)w->hdr, HD_HEADER_BYTES);
    if (w->meta_fd >= 0)
        close(w->meta_fd);
    if (w->heap_fd >= 0)
        close(w->heap_fd);
    memset(w, 0, sizeof(*w));
}

static uint64_t fd_bytes(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

/* What the segment really holds: blocks of both memfds. */
static uint64_t resident(const watch_t *w) { return fd_bytes(w->meta_fd) + fd_bytes(w->heap_fd); }
static uint64_t book(const _Atomic uint64_t *b) { return atomic_load_explicit(b, memory_order_relaxed); }

/* One request on a fresh raw connection (after a Hello): 0 when the reply is
 * an Ack, else -1 (the Error's errno in *err if given). */
static int ctl_call(const char *sock, Heapd__ClientMsg *m, int *err)
{
    int fd = raw_connect(sock);
    if (fd < 0)
        return -1;
    Heapd__Hello hello = HEAPD__HELLO__INIT;
    hello.version = HD_PROTO_VERSION;
    hello.pid = getpid();
    hello.name = "itest-ctl";
    Heapd__ClientMsg h = HEAPD__CLIENT_MSG__INIT;
    h.seq = 1;
    h.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    h.hello = &hello;
    uint8_t out[512], in[4096];
    size_t n = heapd__client_msg__pack(&h, out);
    int rc = -1;
    if (raw_call(fd, out, n, in, sizeof(in), 5000) <= 0)    /* the Welcome (its fds are dropped with the socket) */
        goto done;
    m->seq = 2;
    n = heapd__client_msg__pack(m, out);
    ssize_t r = raw_call(fd, out, n, in, sizeof(in), 10000);
    while (r > 0) {
        Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, in);
        if (!rep)
            break;
        if (rep->seq == 2) {
            if (rep->body_case == HEAPD__DAEMON_MSG__BODY_ACK)
                rc = 0;
            else if (rep->body_case == HEAPD__DAEMON_MSG__BODY_ERROR && err)
                *err = rep->error->err;
            heapd__daemon_msg__free_unpacked(rep, NULL);
            break;
        }
        heapd__daemon_msg__free_unpacked(rep, NULL);       /* unsolicited: Flush, Pressure */
        r = raw_call(fd, NULL, 0, in, sizeof(in), 10000);
    }
done:
    close(fd);
    return rc;
}

static int ctl_set_limit(const char *sock, uint64_t soft, uint64_t hard)
{
    Heapd__SetLimit l = HEAPD__SET_LIMIT__INIT;
    l.soft = soft;
    l.hard = hard;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_LIMIT;
    m.set_limit = &l;
    return ctl_call(sock, &m, NULL);
}

static int ctl_scavenge(const char *sock)
{
    Heapd__Scavenge s = HEAPD__SCAVENGE__INIT;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SCAVENGE;
    m.scavenge = &s;
    return ctl_call(sock, &m, NULL);
}

static bool no_clients(const hd_header_t *h) { return h->clients == 1; }

/* Children report failures as one line and a distinct exit code. */
#define FAILC(code, ...) do { fprintf(stderr, "  child: " __VA_ARGS__); fputc('\n', stderr); return (code); } while (0)

/* ---- limit zero / unset -------------------------------------------------------------------- */

static int no_limit_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    static void *big[64], *small[16384];
    for (int i = 0; i < 64; i++)
        if (!(big[i] = heapd_malloc(MiB)))
            FAILC(11, "large %d: errno %d", i, errno);
    for (int i = 0; i < 16384; i++)
        if (!(small[i] = heapd_malloc(1000)))
            FAILC(12, "small %d: errno %d", i, errno);
    for (int i = 0; i < 64; i++)
        heapd_free(big[i]);
    for (int i = 0; i < 16384; i++)
        heapd_free(small[i]);
    heapd_detach();
    return 0;
}

static void test_no_limit(void)
{
    const char *extra[] = {"--memory-limit", "0", "--hard-limit", "0", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(no_limit_body, d.sock, 60), 0);
    watch_t w;
    CU_ASSERT_FATAL(watch_open(d.sock, &w) == 0);
    CU_ASSERT_EQUAL(book(&w.hdr->soft_limit), 0);
    CU_ASSERT_EQUAL(book(&w.hdr->hard_limit), 0);
    CU_ASSERT_EQUAL(book(&w.hdr->pressure_sent), 0);
    CU_ASSERT_EQUAL(book(&w.hdr->flush_sent), 0);
    CU_ASSERT_EQUAL(book(&w.hdr->hard_limit_refusals), 0);
    CU_ASSERT_EQUAL(book(&w.hdr->overshoot_max), 0);
    CU_ASSERT(book(&w.hdr->pages_grown) * HD_PAGE_SIZE >= 80 * MiB);
    watch_close(&w);
    daemon_stop(&d);
}

/* ---- soft limit respected by a workload that frees as it goes --------------------------------- */

#define SOFT_LIMIT   (16 * MiB)   /* without it this workload commits 23 MiB */
#define BATCH_BYTES  (4 * MiB)

static int churn_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    static void *objs[1 << 16];
    uint64_t st = test_seed(0x5eed11);
    for (unsigned round = 0; round < 300; round++) {
        /* each round: a few size classes (different every round) and large
         * objects of varying sizes, about BATCH_BYTES live, then all freed */
        unsigned n = 0;
        uint64_t bytes = 0;
        while (bytes < BATCH_BYTES && n < (1u << 16)) {
            size_t size;
            if (test_rand(&st) % 8 == 0)
                size = 40000 + test_rand(&st) % (600 * 1024);
            else
                size = hd_class_to_size[1 + (round * 7 + test_rand(&st) % 3) % (HD_NUM_SIZE_CLASSES - 1)];
            if (!(objs[n] = heapd_malloc(size)))
                FAILC(11, "round %u: malloc(%zu) failed: errno %d", round, size, errno);
            memset(objs[n], (int)round, size < 4096 ? size : 4096);
            bytes += size;
            n++;
        }
        for (unsigned i = 0; i < n; i++)
            heapd_free(objs[i]);
    }
    heapd_detach();
    return 0;
}

struct sampler {
    const watch_t *w;
    _Atomic bool stop;
    uint64_t max_committed, max_resident, samples;
};

static void *sample_thread(void *arg)
{
    struct sampler *s = arg;
    while (!atomic_load(&s->stop)) {
        uint64_t c = book(&s->w->hdr->committed_bytes), r = resident(s->w);
        if (c > s->max_committed)
            s->max_committed = c;
        if (r > s->max_resident)
            s->max_resident = r;
        s->samples++;
        test_pause_ms(1);       /* the sampling period */
    }
    return NULL;
}

/* Run the churn under a daemon started with extra flags; max committed and
 * resident sampled every ms from outside. */
static void churn_sampled(const char *const *extra, struct sampler *s, hd_header_t *end)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    watch_t w;
    CU_ASSERT_FATAL(watch_open(d.sock, &w) == 0);
    *s = (struct sampler){.w = &w};
    pthread_t t;
    pthread_create(&t, NULL, sample_thread, s);
    CU_ASSERT_EQUAL(run_child(churn_body, d.sock, 120), 0);
    atomic_store(&s->stop, true);
    pthread_join(t, NULL);
    memcpy(end, w.hdr, sizeof(*end));
    watch_close(&w);
    daemon_stop(&d);
}

static void test_soft_respected(void)
{
    char lim[32];
    snprintf(lim, sizeof(lim), "%llu", (unsigned long long)SOFT_LIMIT);
    const char *limited[] = {"--memory-limit", lim, NULL};
    struct sampler free_run, s;
    hd_header_t h;
    churn_sampled(NULL, &free_run, &h);            /* the same workload without a limit */
    churn_sampled(limited, &s, &h);
    printf("\n  soft limit %llu MiB: max committed %.1f MiB (%.1f MiB without the limit), max resident "
           "%.1f MiB, %llu samples, pressure %llu, flush %llu, scavenged %.1f MiB\n",
           (unsigned long long)(SOFT_LIMIT / MiB), (double)s.max_committed / MiB,
           (double)free_run.max_committed / MiB, (double)s.max_resident / MiB, (unsigned long long)s.samples,
           (unsigned long long)h.pressure_sent, (unsigned long long)h.flush_sent,
           (double)h.scavenged_total / MiB);
    CU_ASSERT(free_run.max_committed > SOFT_LIMIT);   /* the test means something */
    CU_ASSERT(s.samples > 10);
    CU_ASSERT(s.max_committed <= SOFT_LIMIT + BATCH_BYTES);
    CU_ASSERT(s.max_resident <= SOFT_LIMIT + BATCH_BYTES);
    CU_ASSERT(h.flush_sent > 0);                    /* it took the clients' help */
    CU_ASSERT_EQUAL(h.hard_limit_refusals, 0);
}

/* ---- soft limit exceeded by live data ----------------------------------------------------------- */

static _Atomic unsigned cb_max_level;
static _Atomic uint64_t cb_bytes;

static void count_cb(unsigned level, uint64_t bytes, void *arg)
{
    (void)arg;
    if (level > atomic_load(&cb_max_level))
        atomic_store(&cb_max_level, level);
    atomic_store(&cb_bytes, bytes);
}

static int live_over_body(void *arg)
{
    if (heapd_on_pressure(count_cb, NULL) != 0)
        return 9;
    if (heapd_attach(arg) != 0)
        return 10;
    static void *big[24], *small[24576];
    for (int i = 0; i < 24; i++)
        if (!(big[i] = heapd_malloc(MiB)))
            FAILC(11, "large %d failed over the soft limit: errno %d", i, errno);
    for (int i = 0; i < 24576; i++)
        if (!(small[i] = heapd_malloc(1000)))
            FAILC(12, "small %d failed over the soft limit: errno %d", i, errno);
    TEST_WAIT(heapd_pressure_calls() > 0, 5000);
    if (heapd_pressure_calls() == 0 || atomic_load(&cb_max_level) < 2 || atomic_load(&cb_bytes) == 0)
        FAILC(13, "pressure callback: %llu calls, level %u", (unsigned long long)heapd_pressure_calls(),
              atomic_load(&cb_max_level));
    for (int i = 0; i < 24; i++)
        heapd_free(big[i]);
    for (int i = 0; i < 24576; i++)
        heapd_free(small[i]);
    heapd_detach();
    return 0;
}

static bool under_16(const hd_header_t *h) { return h->clients == 1 && h->committed_bytes <= 16 * MiB; }

static void test_soft_exceeded(void)
{
    const char *extra[] = {"--memory-limit", "16MiB", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(live_over_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, under_16, 5000));     /* freed: back under the limit */
    CU_ASSERT(h.overshoot_max >= 30 * MiB);
    CU_ASSERT(h.pressure_sent >= 1 && h.flush_sent >= 1);
    CU_ASSERT_EQUAL(h.hard_limit_refusals, 0);
    daemon_stop(&d);
}

/* ---- hard limit ------------------------------------------------------------------------------- */

#define HARD_LIMIT (32 * MiB)

static int hard_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    watch_t w;
    if (watch_open(arg, &w) != 0)
        return 9;
    enum { MAXB = 64, MAXS = 16384 };
    static void *big[MAXB], *small[MAXS];
    unsigned nb = 0, ns = 0;
    errno = 0;
    while (nb < MAXB && (big[nb] = heapd_malloc(MiB)))
        nb++;
    if (nb == MAXB || errno != ENOMEM || nb < 16 || nb > 32)
        FAILC(11, "large objects under a 32 MiB hard limit: %u, errno %d", nb, errno);
    if (resident(&w) > HARD_LIMIT)
        FAILC(12, "resident %llu over the hard limit", (unsigned long long)resident(&w));
    errno = 0;
    while (ns < MAXS && (small[ns] = heapd_malloc(4000)))
        ns++;
    if (ns == MAXS || errno != ENOMEM)
        FAILC(13, "small objects: %u, errno %d", ns, errno);
    if (resident(&w) > HARD_LIMIT || book(&w.hdr->committed_bytes) > HARD_LIMIT)
        FAILC(14, "resident %llu committed %llu over the hard limit", (unsigned long long)resident(&w),
              (unsigned long long)book(&w.hdr->committed_bytes));
    /* after frees, allocations succeed again */
    for (unsigned i = 0; i < nb; i += 2)
        heapd_free(big[i]);
    void *again[8];
    for (int i = 0; i < 8; i++)
        if (!(again[i] = heapd_malloc(MiB)))
            FAILC(15, "no recovery after frees: errno %d", errno);
    for (int i = 0; i < 8; i++)
        heapd_free(again[i]);
    for (unsigned i = 1; i < nb; i += 2)
        heapd_free(big[i]);
    for (unsigned i = 0; i < ns; i++)
        heapd_free(small[i]);
    void *p = heapd_malloc(4000), *q = heapd_malloc(8 * MiB);
    if (!p || !q)
        FAILC(16, "small/large after freeing everything: errno %d", errno);
    heapd_free(p);
    heapd_free(q);
    if (book(&w.hdr->hard_limit_refusals) < 2 || resident(&w) > HARD_LIMIT)
        FAILC(17, "refusals %llu", (unsigned long long)book(&w.hdr->hard_limit_refusals));
    watch_close(&w);
    heapd_detach();
    return 0;
}

static void test_hard_limit(void)
{
    const char *extra[] = {"--hard-limit", "32MiB", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(hard_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, no_clients, 5000));
    CU_ASSERT(h.committed_bytes <= HARD_LIMIT);
    daemon_stop(&d);
}

/* ---- lowering the limit at run time ------------------------------------------------------------ */

struct lower_args { const char *sock; bool large; };

static int lower_body(void *arg)
{
    struct lower_args *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 10;
    watch_t w;
    if (watch_open(a->sock, &w) != 0)
        return 9;
    enum { N = 65536 };
    static void *o[N];
    unsigned n = a->large ? 64 : N;
    size_t size = a->large ? MiB : 1024;       /* 64 MiB either way */
    for (unsigned i = 0; i < n; i++)
        if (!(o[i] = heapd_malloc(size)))
            FAILC(11, "malloc %u: errno %d", i, errno);
    for (unsigned i = 0; i < n; i++)
        heapd_free(o[i]);
    /* the last FreeLarge batch goes out, and the daemon has handled it (small
     * frees land in the segment's free bits at once) */
    if (a->large && (heapd_flush() != 0 || !TEST_WAIT(book(&w.hdr->spans_large) == 0, 5000)))
        FAILC(15, "the large frees did not reach the daemon: %llu large spans",
              (unsigned long long)book(&w.hdr->spans_large));
    uint64_t before = resident(&w);
    if (before < 48 * MiB)
        FAILC(12, "resident %llu before the limit: nothing to release?", (unsigned long long)before);
    if (ctl_set_limit(a->sock, 16 * MiB, 0) != 0)
        FAILC(13, "SetLimit refused");
    uint64_t after = resident(&w), c = book(&w.hdr->committed_bytes);    /* at once: no waiting */
    printf("\n  %s: resident %.1f MiB before lowering the limit to 16 MiB, %.1f MiB after\n",
           a->large ? "large" : "small", (double)before / MiB, (double)after / MiB);
    if (after > 16 * MiB || c > 16 * MiB)
        FAILC(14, "resident %llu committed %llu after lowering the limit", (unsigned long long)after,
              (unsigned long long)c);
    watch_close(&w);
    heapd_detach();
    return 0;
}

static void run_lower(bool large)
{
    const char *extra[] = {"--scavenge-cpu", "0", NULL};   /* only the limit change releases */
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "512MiB", extra) == 0);
    struct lower_args a = {d.sock, large};
    CU_ASSERT_EQUAL(run_child(lower_body, &a, 60), 0);
    daemon_stop(&d);
}

static void test_lower_small(void) { run_lower(false); }
static void test_lower_large(void) { run_lower(true); }

/* ---- per-client quota ----------------------------------------------------------------------------- */

static int quota_body(void *arg)
{
    int to_b[2], to_a[2];
    if (pipe(to_b) != 0 || pipe(to_a) != 0)
        return 9;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {                             /* client A: 8 MiB quota */
        if (heapd_attach(arg) != 0 || heapd_set_quota(8 * MiB) != 0)
            _exit(20);
        void *o[64];
        unsigned n = 0;
        errno = 0;
        while (n < 64 && (o[n] = heapd_malloc(MiB)))
            n++;
        int e = errno;
        if (write(to_b[1], &n, sizeof(n)) != sizeof(n))
            _exit(21);
        if (n == 64 || n < 6 || n > 8 || e != ENOMEM)
            _exit(22);
        char go;
        if (read(to_a[0], &go, 1) != 1)
            _exit(23);
        heapd_free(o[0]);
        heapd_flush();
        if (!(o[0] = heapd_malloc(MiB)))        /* room again after a free */
            _exit(24);
        for (unsigned i = 0; i < n; i++)
            heapd_free(o[i]);
        heapd_detach();
        _exit(0);
    }
    /* client B: no quota, while A sits at its quota */
    unsigned na;
    if (read(to_b[0], &na, sizeof(na)) != sizeof(na))
        return 11;
    if (heapd_attach(arg) != 0)
        return 10;
    void *o[32];
    for (int i = 0; i < 32; i++)
        if (!(o[i] = heapd_malloc(MiB)))
            FAILC(12, "client B refused at %d while A (%u objects) is at its quota: errno %d", i, na, errno);
    if (write(to_a[1], "g", 1) != 1)
        return 13;
    int rc = wait_child(pid, 30);
    if (rc != 0)
        FAILC(14, "client A exited %d (it got %u objects under its 8 MiB quota)", rc, na);
    for (int i = 0; i < 32; i++)
        heapd_free(o[i]);
    heapd_detach();
    return 0;
}

static void test_quota(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(quota_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, no_clients, 5000));
    CU_ASSERT(h.hard_limit_refusals >= 1);
    daemon_stop(&d);
}

/* ---- pressure callback before ENOMEM ---------------------------------------------------------------- */

/* A buffer pool: the callback evicts its oldest buffers. */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static void *pool[256];
static unsigned pool_head, pool_tail;       /* [head, tail) live, oldest at head */
static _Atomic bool pool_evict = true;
static _Atomic unsigned evicted, cb_level3;

static void pool_cb(unsigned level, uint64_t bytes, void *arg)
{
    (void)arg;
    if (level == 3)
        atomic_fetch_add(&cb_level3, 1);
    if (!atomic_load(&pool_evict))
        return;
    pthread_mutex_lock(&pool_mu);
    uint64_t freed = 0;
    while (pool_head < pool_tail && freed < bytes + MiB) {
        heapd_free(pool[pool_head % 256]);
        pool_head++;
        freed += MiB;
        atomic_fetch_add(&evicted, 1);
    }
    pthread_mutex_unlock(&pool_mu);
}

static int pressure_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    if (heapd_on_pressure(pool_cb, NULL) != 0)
        return 9;
    /* 96 MiB through a 24 MiB hard limit: the pool evicts, nothing fails */
    for (int i = 0; i < 96; i++) {
        void *p = heapd_malloc(MiB);
        if (!p)
            FAILC(11, "allocation %d failed although the pool could evict: errno %d (evicted %u, calls %llu, level3 %u, pool %u)", i, errno,
                  atomic_load(&evicted), (unsigned long long)heapd_pressure_calls(), atomic_load(&cb_level3), pool_tail - pool_head);
        pthread_mutex_lock(&pool_mu);
        pool[pool_tail++ % 256] = p;
        pthread_mutex_unlock(&pool_mu);
    }
    if (atomic_load(&evicted) == 0 || atomic_load(&cb_level3) == 0)
        FAILC(12, "no eviction (%u) or no level-3 pressure (%u)", atomic_load(&evicted), atomic_load(&cb_level3));
    /* a pool that will not evict: the callback still runs before the NULL */
    atomic_store(&pool_evict, false);
    for (int i = 0; i < 64; i++) {
        uint64_t calls = heapd_pressure_calls();
        void *p = heapd_malloc(MiB);
        if (!p) {
            if (errno != ENOMEM)
                FAILC(13, "errno %d", errno);
            if (heapd_pressure_calls() <= calls)
                FAILC(14, "ENOMEM without a pressure callback first");
            break;
        }
        if (i == 63)
            FAILC(15, "64 more MiB fit under a 24 MiB hard limit");
        pthread_mutex_lock(&pool_mu);
        pool[pool_tail++ % 256] = p;
        pthread_mutex_unlock(&pool_mu);
    }
    pthread_mutex_lock(&pool_mu);
    while (pool_head < pool_tail)
        heapd_free(pool[pool_head++ % 256]);
    pthread_mutex_unlock(&pool_mu);
    heapd_detach();
    return 0;
}

static void test_pressure_before_enomem(void)
{
    const char *extra[] = {"--hard-limit", "24MiB", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(pressure_body, d.sock, 60), 0);
    daemon_stop(&d);
}

/* ---- st_blocks after a scavenge ------------------------------------------------------------------- */

static int fill_free_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    static void *o[20000];
    unsigned n = 0;
    for (; n < 32; n++)                          /* 32 MiB large */
        if (!(o[n] = heapd_malloc(MiB)))
            return 11;
    for (; n < 32 + 16384; n++)                  /* 32 MiB small */
        if (!(o[n] = heapd_malloc(2048)))
            return 12;
    for (unsigned i = 0; i < n; i++)
        memset(o[i], 0x5a, i < 32 ? MiB : 2048);
    for (unsigned i = 0; i < n; i++)
        heapd_free(o[i]);
    heapd_detach();
    return 0;
}

static void test_blocks_after_scavenge(void)
{
    const char *extra[] = {"--scavenge-cpu", "0", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "512MiB", extra) == 0);
    watch_t w;
    CU_ASSERT_FATAL(watch_open(d.sock, &w) == 0);
    uint64_t empty = resident(&w);
    CU_ASSERT_EQUAL(run_child(fill_free_body, d.sock, 60), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, no_clients, 5000));
    uint64_t before = resident(&w);
    CU_ASSERT(before >= 60 * MiB);              /* freed but not released: no background scavenger */
    CU_ASSERT_EQUAL(ctl_scavenge(d.sock), 0);
    uint64_t after = resident(&w), heap = fd_bytes(w.heap_fd), meta = fd_bytes(w.meta_fd);
    printf("\n  segment: %.2f MiB empty, %.2f MiB after the workload freed everything, %.2f MiB after a "
           "scavenge (heap memfd %.2f MiB: slots, tiny areas, stats; meta %.2f MiB)\n", (double)empty / MiB,
           (double)before / MiB, (double)after / MiB, (double)heap / MiB, (double)meta / MiB);
    CU_ASSERT_EQUAL(after, book(&w.hdr->committed_bytes));   /* the books are the truth */
    CU_ASSERT_EQUAL(book(&w.hdr->released_bytes), book(&w.hdr->pages_grown) * HD_PAGE_SIZE);
    CU_ASSERT(after < 3 * MiB);                 /* metadata only (2 MiB of it: the 512 B object-state
                                                   slots of 4096 one-page spans), no heap page left */
    CU_ASSERT_EQUAL(book(&w.hdr->pages_inuse), 0);
    watch_close(&w);
    daemon_stop(&d);
}

static bool released_all(const hd_header_t *h)
{
    return h->clients == 1 && h->pages_inuse == 0 && h->released_bytes == h->pages_grown * HD_PAGE_SIZE;
}

/* The background scavenger alone (default 1% CPU) returns freed memory. */
static void test_background_release(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "512MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(fill_free_body, d.sock, 60), 0);
    uint64_t t0 = test_now_ms();
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, released_all, 10000));
    printf("\n  background scavenger: 64 MiB freed -> released in %llu ms (committed now %.2f MiB)\n",
           (unsigned long long)(test_now_ms() - t0), (double)h.committed_bytes / MiB);
    daemon_stop(&d);
}

/* ---- flags ---------------------------------------------------------------------------------------- */

static int heapd_exit(const char *const *args)
{
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0)
            dup2(nul, 2);
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
    return wait_child(pid, 10);
}

static void test_limit_flags(void)
{
    const char *s = "/tmp/heapd-itest-nope.sock";
    const char *a1[] = {"--memory-limit", "lots", "--socket", s, NULL};
    CU_ASSERT_EQUAL(heapd_exit(a1), 2);
    const char *a2[] = {"--memory-limit", "64MiB", "--hard-limit", "32MiB", "--socket", s, NULL};
    CU_ASSERT_EQUAL(heapd_exit(a2), 2);
    const char *a3[] = {"--scavenge-cpu", "101", "--socket", s, NULL};
    CU_ASSERT_EQUAL(heapd_exit(a3), 2);
    const char *a4[] = {"--scavenge-cpu", "-1", "--socket", s, NULL};
    CU_ASSERT_EQUAL(heapd_exit(a4), 2);
}

static void register_limits_suite(void)
{
    CU_pSuite s = CU_add_suite("limits", NULL, NULL);
    CU_add_test(s, "limit flags", test_limit_flags);
    CU_add_test(s, "limit zero or unset: no limit", test_no_limit);
    CU_add_test(s, "soft limit respected by a workload that frees as it goes", test_soft_respected);
    CU_add_test(s, "soft limit exceeded by live data: no failure", test_soft_exceeded);
    CU_add_test(s, "hard limit: ENOMEM, then success after frees", test_hard_limit);
    CU_add_test(s, "lowering the limit releases (small objects)", test_lower_small);
    CU_add_test(s, "lowering the limit releases (large objects)", test_lower_large);
    CU_add_test(s, "per-client quota: one refused, the other not", test_quota);
    CU_add_test(s, "pressure callback before ENOMEM", test_pressure_before_enomem);
    CU_add_test(s, "st_blocks after a scavenge: metadata only", test_blocks_after_scavenge);
    CU_add_test(s, "background scavenger returns freed memory", test_background_release);
}
UNIT_SUITE(register_limits_suite)
