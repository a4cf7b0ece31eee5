/* Integration tests of faults (issue 6): clients that die (SIGKILL at random
 * moments and at injected crash points, HEAPD_CRASHPOINT), the pidfd lease,
 * and clients whose daemon goes away. Registered with UNIT_SUITE: itest_main.c
 * runs every registered suite. heapd-itest links the client built with crash
 * points (CMakeLists.txt: heapd_client_crash). */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "span.h"
#include "unit.h"

/* Patterns: the first 64 bytes and the last 64 of an object depend on its tag. */
static inline uint8_t pat(uint64_t tag, size_t i) { return (uint8_t)((tag * 0x9e3779b1u) >> 24 ^ i * 131); }

static void fill(uint8_t *p, size_t size, uint64_t tag)
{
    for (size_t i = 0; i < size && i < 64; i++)
        p[i] = pat(tag, i);
    for (size_t i = size > 64 ? size - 64 : 0; i < size; i++)
        p[i] = pat(tag, i);
}

static bool check(const uint8_t *p, size_t size, uint64_t tag)
{
    for (size_t i = 0; i < size && i < 64; i++)
        if (p[i] != pat(tag, i))
            return false;
    for (size_t i = size > 64 ? size - 64 : 0; i < size; i++)
        if (p[i] != pat(tag, i))
            return false;
    return true;
}

/* ---- the kill -9 storm ------------------------------------------------------------- */

#define NWORK     4         /* worker slots, each restarted when its process dies */
#define TABLE_N   128       /* objects a worker keeps */
#define MBOX_N    1024      /* hand-off cells: objects on their way to another process */
#define STORM_MS  8000

enum { E_EMPTY, E_ALLOCATING, E_LIVE, E_FREEING };     /* table entries */
enum { M_EMPTY, M_WRITING, M_FULL, M_READING };        /* mailbox cells */

/* A worker's table: what it owns, written before and after every operation,
 * so that whoever comes next (its successor, the driver) knows every object
 * except the one an operation was in flight on when it died. */
struct entry { _Atomic uint32_t state; uint32_t _pad; void *p; uint64_t size, tag; };
struct cell { _Atomic uint32_t state; uint32_t _pad; void *p; uint64_t size, tag; };

struct storm {                  /* in the shared heap */
    struct entry table[NWORK][TABLE_N];
    struct cell mbox[MBOX_N];
    _Atomic int stop;
    _Atomic uint64_t mismatches, allocs, frees, handed, received, nulls, bad_frees;
};

/* Sizes over the small classes above the tiny allocator (17 B..32 KiB: tiny
 * objects share blocks, which the final census does not count one by one),
 * and large ones up to 1 MiB. */
static size_t storm_size(uint64_t *st)
{
    if (test_rand(st) % 100 < 5)
        return 32769 + test_rand(st) % ((1u << 20) - 32768);
    unsigned c = 3 + (unsigned)(test_rand(st) % (HD_NUM_SIZE_CLASSES - 3));
    uint32_t lo = hd_class_to_size[c - 1], hi = hd_class_to_size[c];
    return lo + 1 + test_rand(st) % (hi - lo);
}

static void storm_take(struct storm *s)
{
    for (unsigned k = 0; k < MBOX_N; k++) {
        struct cell *c = &s->mbox[k];
        uint32_t want = M_FULL;
        if (!atomic_compare_exchange_strong(&c->state, &want, M_READING))
            continue;
        if (!check(c->p, c->size, c->tag))
            atomic_fetch_add(&s->mismatches, 1);
        heapd_free(c->p);
        atomic_store(&c->state, M_EMPTY);
        atomic_fetch_add(&s->received, 1);
        return;
    }
}

static bool storm_give(struct storm *s, const struct entry *e, uint64_t *st)
{
    unsigned k0 = (unsigned)(test_rand(st) % MBOX_N);
    for (unsigned i = 0; i < 16; i++) {
        struct cell *c = &s->mbox[(k0 + i) % MBOX_N];
        uint32_t want = M_EMPTY;
        if (!atomic_compare_exchange_strong(&c->state, &want, M_WRITING))
            continue;
        c->p = e->p;
        c->size = e->size;
        c->tag = e->tag;
        atomic_store(&c->state, M_FULL);
        return true;
    }
    return false;
}

static int storm_worker(struct storm *s, int slot, uint64_t seed)
{
    struct entry *t = s->table[slot];
    uint64_t st = seed;
    /* adopt what the predecessor left: its live objects are ours (check them);
     * an entry it died on is unknown, the driver's census accounts for it */
    for (unsigned i = 0; i < TABLE_N; i++) {
        uint32_t v = atomic_load(&t[i].state);
        if (v == E_LIVE && !check(t[i].p, t[i].size, t[i].tag))
            atomic_fetch_add(&s->mismatches, 1);
        if (v == E_ALLOCATING || v == E_FREEING)
            atomic_store(&t[i].state, E_EMPTY);
    }
    for (uint64_t n = 1; !atomic_load(&s->stop); n++) {
        unsigned i = (unsigned)(test_rand(&st) % TABLE_N);
        struct entry *e = &t[i];
        uint32_t v = atomic_load(&e->state);
        unsigned r = (unsigned)(test_rand(&st) % 100);
        if (v == E_EMPTY) {
            size_t size = storm_size(&st);
            atomic_store(&e->state, E_ALLOCATING);
            uint8_t *p = heapd_malloc(size);
            if (!p) {
                atomic_fetch_add(&s->nulls, 1);
                atomic_store(&e->state, E_EMPTY);
                continue;
            }
            e->p = p;
            e->size = size;
            e->tag = test_rand(&st);
            fill(p, size, e->tag);
            atomic_store(&e->state, E_LIVE);
            atomic_fetch_add(&s->allocs, 1);
        } else if (v == E_LIVE && r < 30) {           /* hand it to another process */
            struct entry copy = *e;
            atomic_store(&e->state, E_EMPTY);
            if (storm_give(s, &copy, &st))
                atomic_fetch_add(&s->handed, 1);
            else
                atomic_store(&e->state, E_LIVE);
        } else if (v == E_LIVE) {
            if (!check(e->p, e->size, e->tag))
                atomic_fetch_add(&s->mismatches, 1);
            atomic_store(&e->state, E_FREEING);
            heapd_free(e->p);
            atomic_store(&e->state, E_EMPTY);
            atomic_fetch_add(&s->frees, 1);
        }
        if (n % 3 == 0)
            storm_take(s);
        if (n % 400 == 0)
            heapd_flush();      /* releases spans, sends the stats: the other crash points */
    }
    /* stopped: verify and free everything we own, take what is handed to us */
    for (unsigned i = 0; i < TABLE_N; i++) {
        struct entry *e = &t[i];
        if (atomic_load(&e->state) != E_LIVE)
            continue;
        if (!check(e->p, e->size, e->tag))
            atomic_fetch_add(&s->mismatches, 1);
        atomic_store(&e->state, E_FREEING);
        heapd_free(e->p);
        atomic_store(&e->state, E_EMPTY);
        atomic_fetch_add(&s->frees, 1);
    }
    for (unsigned k = 0; k < MBOX_N; k++)
        storm_take(s);
    atomic_fetch_add(&s->bad_frees, heapd_bad_frees());
    heapd_detach();
    return 0;
}

/* The census: every live object in the heap, from the span table and the
 * object states (only this process attached, so nothing moves but sweeps). */
typedef struct census {
    uint64_t spans, spans_live;     /* spans not FREE; those holding a live object */
    uint64_t nobj;
    void **obj;                     /* the live objects (malloc'd, up to cap) */
    uint64_t cap;
} census_t;

static void census_take(const hd_seg_t *seg, census_t *c)
{
    c->spans = c->spans_live = c->nobj = 0;
    for (uint64_t pg = 0; pg < seg->npages; pg++) {
        uint32_t e = hd_pagemap_get(seg, pg);
        if (e != pg + 1)
            continue;               /* not the first page of a live span */
        const hd_span_t *sp = &seg->spans[pg];
        uint8_t state = hd_span_state(sp);
        if (state == HD_SPAN_FREE)
            continue;
        c->spans++;
        uintptr_t base = hd_page_addr(seg, pg);
        uint64_t live = 0;
        if (state == HD_SPAN_LARGE) {
            if (c->nobj < c->cap)
                c->obj[c->nobj] = (void *)base;
            c->nobj++;
            live = 1;
        } else {
            hd_ostate_t *st = hd_states_of(seg, (uint32_t)pg, sp->sizeclass);
            for (unsigned i = 0; i < sp->nelems; i++) {
                uint8_t b = hd_obj_state_acquire(st, i);
                if (sp->sizeclass == HD_CHUNK_CLASS ? !hd_chunk_cls(b) || (b & 3u) != HD_OBJ_ALLOCATED
                                                    : b != HD_OBJ_ALLOCATED)
                    continue;       /* (a chunk: objects start at pages whose byte names a class) */
                if (c->nobj < c->cap)
                    c->obj[c->nobj] = (void *)(base + (uintptr_t)i * sp->elemsize);
                c->nobj++;
                live++;
            }
        }
        if (live)
            c->spans_live++;
    }
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return x < y ? -1 : x > y;
}

struct storm_args { const char *sock; uint64_t base, seed; };

static void spawn(struct storm *s, pid_t *pids, int slot, uint64_t seed, uint64_t *st, unsigned *ncrash)
{
    bool crash = test_rand(st) % 2 == 0;
    char cp[32] = "";
    if (crash) {
        snprintf(cp, sizeof(cp), "%llu%s", (unsigned long long)(1 + test_rand(st) % 80),
                 test_rand(st) % 2 ? ":kill" : "");
        (*ncrash)++;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (crash)
            setenv("HEAPD_CRASHPOINT", cp, 1);
        _exit(storm_worker(s, slot, seed));
    }
    pids[slot] = pid;
}

static int storm_driver(void *arg)
{
    struct storm_args *a = arg;
    if (heapd_attach(a->sock) != 0) {
        perror("heapd_attach");
        return 10;
    }
    struct storm *s = heapd_calloc(1, sizeof(*s));
    if (!s)
        return 11;
    uint64_t st = a->seed;
    pid_t pids[NWORK];
    unsigned deaths = 0, killed = 0, crashed = 0, ncrash = 0, starts = 0;
    for (int i = 0; i < NWORK; i++, starts++)
        spawn(s, pids, i, a->seed + 0x1000 * starts, &st, &ncrash);
    uint64_t t0 = test_now_ms();
    while (test_now_ms() - t0 < STORM_MS) {
        test_pause_ms(5 + (unsigned)(test_rand(&st) % 20));   /* pacing: kills at random moments */
        for (int i = 0; i < NWORK; i++) {
            int ws;
            pid_t r = waitpid(pids[i], &ws, WNOHANG);
            if (r == pids[i]) {
                if (WIFEXITED(ws) && WEXITSTATUS(ws) == 99)
                    crashed++;
                else if (WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL)
                    crashed++;
                else {
                    fprintf(stderr, "storm worker %d: status %#x\n", i, ws);
                    return 12;
                }
                deaths++;
                spawn(s, pids, i, a->seed + 0x1000 * starts++, &st, &ncrash);
            } else if (test_rand(&st) % 100 < 4) {     /* kill -9 at a random moment */
                kill(pids[i], SIGKILL);
                if (waitpid(pids[i], &ws, 0) == pids[i]) {
                    if (WIFEXITED(ws) && WEXITSTATUS(ws) != 99) {
                        fprintf(stderr, "storm worker %d: status %#x\n", i, ws);
                        return 12;
                    }
                    killed++;
                    deaths++;
                    spawn(s, pids, i, a->seed + 0x1000 * starts++, &st, &ncrash);
                }
            }
        }
    }
    atomic_store(&s->stop, 1);
    for (int i = 0; i < NWORK; i++) {        /* survivors free what they own and exit */
        int rc = wait_child(pids[i], 60);
        if (rc == 99 || rc == 128 + SIGKILL) {
            deaths++;                        /* a crash point in its clean-up */
            crashed++;
        } else if (rc != 0) {
            fprintf(stderr, "storm survivor %d exited %d\n", i, rc);
            return 13;
        }
    }
    printf("  storm: %u starts, %u deaths (%u kill -9, %u crash points, of %u armed), %llu allocs, "
           "%llu frees, %llu handed, %llu received, seed %#llx\n", starts, deaths, killed, crashed, ncrash,
           (unsigned long long)s->allocs, (unsigned long long)s->frees, (unsigned long long)s->handed,
           (unsigned long long)s->received, (unsigned long long)a->seed);
    int rc = 0;
    if (s->mismatches || s->bad_frees || s->nulls || killed == 0 || crashed == 0 || s->received == 0) {
        fprintf(stderr, "storm: %llu mismatches, %llu bad frees, %llu NULLs\n",
                (unsigned long long)s->mismatches, (unsigned long long)s->bad_frees,
                (unsigned long long)s->nulls);
        rc = 14;
    }

    /* What the dead left: the objects their tables and the mailbox know
     * (checked, then freed by us), and at most one object per death that an
     * operation was in flight on, plus large frees still queued in a dead
     * process (lost with it: objects a dead client allocated stay allocated). */
    enum { KNOWN_MAX = NWORK * TABLE_N + MBOX_N + 1 };
    void **known = malloc(KNOWN_MAX * sizeof(void *));
    unsigned nknown = 0;
    known[nknown++] = s;
    for (int w = 0; w < NWORK; w++)
        for (unsigned i = 0; i < TABLE_N; i++)
            if (atomic_load(&s->table[w][i].state) == E_LIVE) {
                if (!check(s->table[w][i].p, s->table[w][i].size, s->table[w][i].tag))
                    rc = 15;
                known[nknown++] = s->table[w][i].p;
            }
    for (unsigned k = 0; k < MBOX_N; k++)
        if (atomic_load(&s->mbox[k].state) == M_FULL) {
            if (!check(s->mbox[k].p, s->mbox[k].size, s->mbox[k].tag))
                rc = 15;
            known[nknown++] = s->mbox[k].p;
        }
    qsort(known, nknown, sizeof(void *), cmp_ptr);
    heapd_flush();                           /* our cache back too: spans in use = spans with objects */

    hd_seg_t seg;
    hd_seg_view(&seg, (hd_header_t *)(uintptr_t)a->base);
    census_t c = {.cap = 1u << 20};
    c.obj = malloc(c.cap * sizeof(void *));
    /* background sweeps return emptied spans */
    TEST_WAIT((census_take(&seg, &c), c.spans == c.spans_live && atomic_load(&seg.hdr->spans_inuse) == c.spans),
              5000);
    uint64_t inuse = atomic_load(&seg.hdr->spans_inuse);
    if (c.spans != c.spans_live || inuse != c.spans) {
        fprintf(stderr, "storm: %llu spans in use (books %llu), %llu hold live objects\n",
                (unsigned long long)c.spans, (unsigned long long)inuse, (unsigned long long)c.spans_live);
        rc = 16;
    }
    /* every known object is live; the rest are the in-flight ones */
    uint64_t found = 0, unknown = 0;
    for (uint64_t i = 0; i < c.nobj && i < c.cap; i++) {
        if (bsearch(&c.obj[i], known, nknown, sizeof(void *), cmp_ptr))
            found++;
        else
            unknown++;
    }
    if (found != nknown || c.nobj > c.cap || unknown > (uint64_t)deaths * (1 + HD_MAX_BATCH)) {
        fprintf(stderr, "storm: %u known objects, %llu of them live, %llu unknown live objects after %u deaths\n",
                nknown, (unsigned long long)found, (unsigned long long)unknown, deaths);
        rc = rc ? rc : 17;
    }
    printf("  storm census: %llu spans, %llu live objects (%u known, %llu left by dead clients)\n",
           (unsigned long long)c.spans, (unsigned long long)c.nobj, nknown, (unsigned long long)unknown);
    /* free all of it from here (a cross-process free for every one) */
    uint64_t bf0 = heapd_bad_frees();
    for (uint64_t i = 0; i < c.nobj && i < c.cap; i++)
        if (c.obj[i] != (void *)s)
            heapd_free(c.obj[i]);
    heapd_free(s);
    if (heapd_bad_frees() != bf0)
        rc = rc ? rc : 18;
    free(c.obj);
    free(known);
    heapd_detach();
    return rc;
}

static bool heap_empty(const hd_header_t *h)
{
    return h->spans_inuse == 0 && h->pages_inuse == 0 && h->objects_central == 0 && h->clients == 1;
}

static void print_books(const char *when, const hd_header_t *h, uint64_t seed)
{
    fprintf(stderr, "books %s: spans_inuse %llu cached %llu central %llu large %llu pages_inuse %llu "
            "objects_central %llu clients %llu (seed %#llx)\n", when, (unsigned long long)h->spans_inuse,
            (unsigned long long)h->spans_cached, (unsigned long long)h->spans_central,
            (unsigned long long)h->spans_large, (unsigned long long)h->pages_inuse,
            (unsigned long long)h->objects_central, (unsigned long long)h->clients, (unsigned long long)seed);
}

static void test_storm(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "1GiB", NULL) == 0);
    struct storm_args a = {d.sock, d.base, test_seed(0x5707D)};
    int rc = run_child(storm_driver, &a, 120);
    if (rc != 0)
        fprintf(stderr, "storm driver exited %d (seed %#llx, daemon log %s)\n", rc, (unsigned long long)a.seed,
                d.log);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(kill(d.pid, 0), 0);          /* the daemon lives */
    hd_header_t h;
    bool empty = books_wait(d.sock, &h, heap_empty, 5000);
    if (!empty)
        print_books("after the storm", &h, a.seed);
    CU_ASSERT(empty);
    CU_ASSERT(h.spans_cached == 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- crash points, one at a time ---------------------------------------------------- */

/* A client that allocates, frees and flushes until its crash point fires. */
static int crash_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    for (unsigned n = 0; n < 10000; n++) {
        void *p[8];
        for (int i = 0; i < 8; i++)
            p[i] = heapd_malloc(i == 7 ? HD_MAX_CLASS_SIZE + 100000 : 48u << (n % 8));   /* 7: an AllocLarge */
        for (int i = 0; i < 8; i++)
            heapd_free(p[i]);
        if (n % 4 == 0)
            heapd_flush();
    }
    return 0;       /* the crash point never fired */
}

static bool no_client_state(const hd_header_t *h)
{
    return h->spans_cached == 0 && h->clients == 1;
}

static void test_crashpoints(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    const char *points[] = {"1@refill", "3:kill@refill", "1@release", "4:kill@release", "1@flush",
                            "6:kill@flush", "1@large", "5:kill@large", "3", "13:kill", "40"};
    for (unsigned i = 0; i < sizeof(points) / sizeof(points[0]); i++) {
        setenv("HEAPD_CRASHPOINT", points[i], 1);
        int rc = run_child(crash_body, d.sock, 30);
        unsetenv("HEAPD_CRASHPOINT");
        CU_ASSERT(strstr(points[i], ":kill") ? rc == 128 + SIGKILL : rc == 99);
        hd_header_t h;
        bool ok = books_wait(d.sock, &h, no_client_state, 5000);
        if (!ok)
            print_books(points[i], &h, 0);
        CU_ASSERT(ok);
    }
    CU_ASSERT_EQUAL(kill(d.pid, 0), 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- the pidfd lease ------------------------------------------------------------------ */

/* A client whose socket outlives it: a raw clone (no atfork handlers, so the
 * library does not close the inherited connection) keeps the socket open, so
 * only the pidfd can tell the daemon that the client died. */
static void lease_child(const char *sock, int wfd)
{
    if (heapd_attach(sock) != 0)
        _exit(10);
    void *p[64];
    for (int i = 0; i < 64; i++)
        if (!(p[i] = heapd_malloc(64 + 64 * (size_t)(i % 8))))
            _exit(11);
    pid_t holder = (pid_t)syscall(SYS_clone, SIGCHLD, NULL, NULL, NULL, NULL);
    if (holder == 0) {
        sleep(30);              /* holds the socket until the test kills it (30 s: never outlives a failed test) */
        _exit(0);
    }
    if (write(wfd, &holder, sizeof(holder)) != sizeof(holder))
        _exit(12);
    pause();
    _exit(0);
}

static bool has_cached(const hd_header_t *h) { return h->spans_cached > 0 && h->clients == 2; }

static void test_pidfd_lease(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        lease_child(d.sock, pfd[1]);
    }
    close(pfd[1]);
    pid_t holder = 0;
    CU_ASSERT_FATAL(read(pfd[0], &holder, sizeof(holder)) == sizeof(holder));
    close(pfd[0]);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, has_cached, 5000));
    kill(pid, SIGKILL);
    CU_ASSERT_EQUAL(wait_child(pid, 10), 128 + SIGKILL);
    bool ok = books_wait(d.sock, &h, no_client_state, 5000);
    if (!ok)
        print_books("after the kill", &h, 0);
    CU_ASSERT(ok);                               /* the socket is still open in the holder */
    kill(holder, SIGKILL);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Two connections from one process: closing one reclaims only its own state
 * (nothing is keyed on the pid, so a new process under a dead one's pid is a
 * stranger to it). books_read connects from this very process. */
static int same_pid_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    uint8_t *p[32];
    for (int i = 0; i < 32; i++) {
        if (!(p[i] = heapd_malloc(200)))
            return 11;
        fill(p[i], 200, (uint64_t)i);
    }
    const hd_header_t *h = books_map(arg);       /* a second connection from this pid, closed */
    if (!h || h->spans_cached == 0)
        return 12;
    uint64_t cached = h->spans_cached;
    if (!TEST_WAIT(h->clients == 1, 5000))       /* the daemon has closed that connection */
        return 13;
    if (h->spans_cached != cached)
        return 13;
    books_unmap(h);
    for (int i = 0; i < 32; i++) {
        uint8_t *q = heapd_malloc(200);          /* from the same cached span, still ours */
        if (!q || !check(p[i], 200, (uint64_t)i))
            return 14;
        heapd_free(q);
        heapd_free(p[i]);
    }
    heapd_detach();
    return heapd_bad_frees() ? 15 : 0;
}

static void test_same_pid(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(same_pid_body, d.sock, 30), 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_empty, 5000));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- the daemon goes away ------------------------------------------------------------- */

struct gone_args { const char *sock; int rfd, wfd; };

static int daemon_gone_body(void *arg)
{
    struct gone_args *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 10;
    uint8_t *small = heapd_malloc(1000), *large = heapd_malloc(3u << 20);
    if (!small || !large)
        return 11;
    fill(small, 1000, 1);
    fill(large, 3u << 20, 2);
    char b = 1;
    if (write(a->wfd, &b, 1) != 1 || read(a->rfd, &b, 1) != 1)    /* the daemon is stopped now */
        return 12;
    if (!check(small, 1000, 1) || !check(large, 3u << 20, 2))
        return 13;                               /* existing objects stay readable */
    small[0] ^= 1;                               /* and writable */
    small[0] ^= 1;
    errno = 0;
    void *p = heapd_malloc(2u << 20);            /* a slow path: fails (a hang is the child's time-out) */
    if (p || errno != EPIPE)
        return 14;
    errno = 0;
    void *q[4096];                               /* small ones fail once the cache runs dry */
    unsigned n = 0;
    while (n < 4096 && (q[n] = heapd_malloc(2048)))
        n++;
    if (n == 4096 || errno != EPIPE)
        return 15;
    for (unsigned i = 0; i < n; i++)
        heapd_free(q[i]);                        /* small frees still work locally */
    heapd_free(small);
    heapd_free(large);                           /* nowhere to send it: dropped */
    if (!check((uint8_t *)large, 64, 2))
        return 17;                               /* the mapping stays */
    heapd_detach();
    errno = 0;
    if (heapd_malloc(100) || errno != ENOTCONN)
        return 18;
    return 0;
}

static void test_daemon_gone(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int up[2], down[2];
    CU_ASSERT_FATAL(pipe(up) == 0 && pipe(down) == 0);
    struct gone_args a = {d.sock, down[0], up[1]};
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0)
        _exit(daemon_gone_body(&a));
    char b;
    CU_ASSERT_FATAL(read(up[0], &b, 1) == 1);
    int st = daemon_stop(&d);                    /* SIGTERM with a client attached: exit 0 */
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CU_ASSERT(write(down[1], &b, 1) == 1);
    CU_ASSERT_EQUAL(wait_child(pid, 30), 0);
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
}

static int no_daemon_body(void *arg)
{
    const char *dir = arg;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(path, sizeof(path), "%s/missing.sock", dir);
    errno = 0;
    if (heapd_attach(path) == 0 || errno != ENOENT)
        return 10;
    /* a socket file nobody listens on (a daemon that died) */
    snprintf(path, sizeof(path), "%s/stale.sock", dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, path, sizeof(path));
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return 11;
    close(fd);
    errno = 0;
    int r = heapd_attach(path);
    int e = errno;
    unlink(path);
    if (r == 0 || e != ECONNREFUSED)
        return 12;
    errno = 0;
    if (heapd_malloc(10) || errno != ENOTCONN)
        return 13;
    return 0;
}

static void test_no_daemon(void)
{
    char dir[] = "/tmp/heapd-itest-nod-XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    CU_ASSERT_EQUAL(run_child(no_daemon_body, dir, 10), 0);
    rmdir(dir);
}

static void register_faults_suite(void)
{
    CU_pSuite s = CU_add_suite("faults", NULL, NULL);
    CU_add_test(s, "attach without a daemon: ENOENT, ECONNREFUSED", test_no_daemon);
    CU_add_test(s, "daemon stopped under a client: objects stay, EPIPE", test_daemon_gone);
    CU_add_test(s, "two connections from one pid", test_same_pid);
    CU_add_test(s, "pidfd lease: death seen with the socket still open", test_pidfd_lease);
    CU_add_test(s, "crash points: reclaim after each", test_crashpoints);
    CU_add_test(s, "kill -9 storm with crash points", test_storm);
}
UNIT_SUITE(register_faults_suite)
