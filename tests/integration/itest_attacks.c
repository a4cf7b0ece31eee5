/* Attacks of a hostile (or buggy) client, issue 14: one test per attack, each
 * a real daemon and real client processes. The rule they prove
 * (docs/security.md): a client that does its worst harms only itself and the
 * contents of the objects it can reach; the daemon, its books and every other
 * client stay correct and responsive.
 * Registered with UNIT_SUITE: itest_main.c runs every registered suite. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "control.pb-c.h"
#include "heapd.pb-c.h"
#include "span.h"
#include "unit.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

static int raw_scavenge(int conn, uint64_t seq)
{
    Heapd__Scavenge sc = HEAPD__SCAVENGE__INIT;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SCAVENGE;
    m.scavenge = &sc;
    return raw_request(conn, &m, 10000);
}

/* Attach, allocate and free a few sizes (a large one commits 4 MiB of heap
 * pages that are free again afterwards), detach. */
static int attach_use(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    char *a = heapd_malloc(100), *b = heapd_calloc(1, 8), *c = heapd_malloc(4 << 20);
    if (!a || !b || !c)
        return 12;
    memset(a, 1, 100);
    memset(c, 3, 4 << 20);
    heapd_free(a);
    heapd_free(b);
    heapd_free(c);
    if (heapd_bad_frees() != 0)
        return 13;
    heapd_detach();
    return 0;
}

/* ---- 1. seals ---------------------------------------------------------------------------------- */

/* A client tries every seal on both memfds it was passed: each F_ADD_SEALS
 * fails with EPERM (F_SEAL_SEAL is on), so attaches keep working (a
 * FUTURE_WRITE seal on the heap memfd would make every later writable mapping
 * fail) and the scavenger keeps punching holes (a write seal forbids it). */
static void test_attack_seals(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    int fds[2], nfds, conn = -1;
    CU_ASSERT_FATAL(raw_hello_fds(d.sock, "itest-attack-seals", fds, &nfds, &conn) == 0);
    static const struct { int seal; const char *name; } seals[] = {
        {F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"}, {F_SEAL_WRITE, "F_SEAL_WRITE"},
        {F_SEAL_SHRINK, "F_SEAL_SHRINK"},             {F_SEAL_GROW, "F_SEAL_GROW"},
        {F_SEAL_EXEC, "F_SEAL_EXEC"},                 {F_SEAL_SEAL, "F_SEAL_SEAL"},
        {F_SEAL_FUTURE_WRITE | F_SEAL_SEAL | F_SEAL_WRITE | F_SEAL_EXEC, "all of them"},
    };
    for (int f = 0; f < 2; f++) {
        int before = fcntl(fds[f], F_GET_SEALS);
        CU_ASSERT(before >= 0 && (before & F_SEAL_SEAL));
        for (size_t i = 0; i < sizeof(seals) / sizeof(seals[0]); i++) {
            errno = 0;
            int r = fcntl(fds[f], F_ADD_SEALS, seals[i].seal);
            if (r == 0 || errno != EPERM)
                fprintf(stderr, "%s memfd: F_ADD_SEALS %s: %s\n", f ? "heap" : "meta", seals[i].name,
                        r == 0 ? "succeeded" : strerror(errno));
            CU_ASSERT(r < 0 && errno == EPERM);
        }
        /* a descriptor of its own on the same inode changes nothing */
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fds[f]);
        int again = open(path, O_RDWR | O_CLOEXEC);
        if (again < 0)
            again = open(path, O_RDONLY | O_CLOEXEC);
        CU_ASSERT_FATAL(again >= 0);
        errno = 0;
        CU_ASSERT(fcntl(again, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) < 0 && errno == EPERM);
        CU_ASSERT_EQUAL(fcntl(again, F_GET_SEALS), before);
        close(again);
    }
    close(fds[0]);
    close(fds[1]);

    /* new attaches keep working, and leave free committed pages behind, which
     * the scavenger can still punch out (in the background or now) */
    hd_header_t h0, h1;
    CU_ASSERT_FATAL(books_read(d.sock, &h0) == 0);
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    CU_ASSERT_EQUAL(raw_scavenge(conn, 2), 0);
    CU_ASSERT_FATAL(books_read(d.sock, &h1) == 0);
    CU_ASSERT(h1.scavenged_total >= h0.scavenged_total + (4u << 20));
    close(conn);
    FILE *log = fopen(d.log, "r");
    char line[512];
    bool off = false;
    while (log && fgets(line, sizeof(line), log))
        off |= strstr(line, "scavenging is off") != NULL;
    if (log)
        fclose(log);
    CU_ASSERT(!off);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- 2. silent connections ------------------------------------------------------------------ */

#define SILENT_CONNS 10000
#define DAEMON_NOFILE 1024

/* Open SILENT_CONNS connections that never say Hello (nonblocking connects,
 * retried while the backlog is full, for at most 30 s), report how many
 * through the pipe, then hold them until the parent closes its end. */
static int silent_flood(const char *sock, int report, int hold)
{
    struct rlimit rl = {SILENT_CONNS + 64, SILENT_CONNS + 64};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 20;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%.107s", sock);
    int n = 0, fd = -1;
    uint64_t t0 = test_now_ms();
    while (n < SILENT_CONNS && test_now_ms() - t0 < 30000) {
        if (fd < 0 && (fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
            return 21;
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
            fd = -1;    /* held */
            n++;
        } else if (errno == EAGAIN) {
            test_pause_ms(1);       /* pacing: the backlog is full, let the daemon accept */
        } else {
            return 22;
        }
    }
    if (write(report, &n, sizeof(n)) != sizeof(n))
        return 23;
    char c;
    while (read(hold, &c, 1) < 0 && errno == EINTR)
        ;
    return 0;
}

/* Attach, allocate, free, detach; says how long it took (ms) on stdout. */
static int timed_attach(void *arg)
{
    uint64_t t0 = test_now_ms();
    int r = attach_use(arg);
    fprintf(stderr, "attach and use beside %d silent connections: %llu ms\n", SILENT_CONNS,
            (unsigned long long)(test_now_ms() - t0));
    return r;
}

/* One process holds 10,000 connections that never say Hello against a daemon
 * limited to 1,024 descriptors: a client of the same uid still attaches (and
 * uses the heap) within a generous bound, and a silent connection is closed
 * by the Hello deadline. */
static void test_attack_silent_connections(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    struct rlimit rl = {DAEMON_NOFILE, DAEMON_NOFILE};
    CU_ASSERT_FATAL(prlimit(d.pid, RLIMIT_NOFILE, &rl, NULL) == 0);

    /* the Hello deadline: a lone silent connection is closed (EOF) */
    int lone = raw_connect(d.sock);
    CU_ASSERT_FATAL(lone >= 0);
    struct pollfd pf = {.fd = lone, .events = POLLIN};
    uint64_t t0 = test_now_ms();
    CU_ASSERT(poll(&pf, 1, 15000) == 1);
    char b[16];
    CU_ASSERT(recv(lone, b, sizeof(b), MSG_DONTWAIT) == 0);
    fprintf(stderr, "silent connection closed after %llu ms\n", (unsigned long long)(test_now_ms() - t0));
    close(lone);

    int rep[2], hold[2];
    CU_ASSERT_FATAL(pipe2(rep, O_CLOEXEC) == 0 && pipe2(hold, O_CLOEXEC) == 0);
    pid_t att = fork();
    CU_ASSERT_FATAL(att >= 0);
    if (att == 0) {
        close(rep[0]);
        close(hold[1]);
        _exit(silent_flood(d.sock, rep[1], hold[0]));
    }
    close(rep[1]);
    close(hold[0]);
    int n = -1;
    pf = (struct pollfd){.fd = rep[0], .events = POLLIN};
    if (poll(&pf, 1, 40000) == 1 && read(rep[0], &n, sizeof(n)) != sizeof(n))
        n = -1;
    fprintf(stderr, "silent connections held: %d\n", n);
    CU_ASSERT_EQUAL(n, SILENT_CONNS);
    /* while they are held: a real client attaches and allocates (10 s: generous) */
    t0 = test_now_ms();
    CU_ASSERT_EQUAL(run_child(timed_attach, d.sock, 10), 0);
    CU_ASSERT(test_now_ms() - t0 < 10000);
    close(hold[1]);
    close(rep[0]);
    CU_ASSERT_EQUAL(wait_child(att, 30), 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- 3. privileges and floods ---------------------------------------------------------------- */

/* As nobody, admitted by --allow-uid: SetLimit is refused with EPERM;
 * Scavenge (FreeOSMemory) is served. */
static int allowed_requests(void *arg)
{
    if (become_nobody() != 0)
        return 10;
    int fds[2], nfds, conn = -1;
    if (raw_hello_fds(arg, "itest-attack-allowed", fds, &nfds, &conn) != 0)
        return 11;
    close(fds[0]);
    close(fds[1]);
    Heapd__SetLimit sl = HEAPD__SET_LIMIT__INIT;
    sl.soft = 1 << 20;
    sl.hard = 2 << 20;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 2;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_LIMIT;
    m.set_limit = &sl;
    int r = raw_request(conn, &m, 5000);
    if (r != EPERM) {
        fprintf(stderr, "SetLimit from a client admitted by --allow-uid: %d, not EPERM\n", r);
        return 12;
    }
    if (raw_scavenge(conn, 3) != 0)
        return 13;
    close(conn);
    return 0;
}

/* A client admitted only by --allow-uid tries to set the daemon's limits. */
static void test_attack_set_limit_other_uid(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "(not root: the --allow-uid attack is skipped; test_rpc checks the decision) ");
        return;
    }
    daemon_proc_t d;
    const char *const extra[] = {"--socket-mode", "0666", "--allow-uid", "65534", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", extra) == 0);
    CU_ASSERT_FATAL(chmod(d.dir, 0711) == 0);        /* nobody may reach the 0666 socket */
    CU_ASSERT_EQUAL(run_child(allowed_requests, d.sock, 30), 0);
    hd_header_t h;
    CU_ASSERT_FATAL(books_read(d.sock, &h) == 0);
    CU_ASSERT_EQUAL(h.soft_limit, 0);
    CU_ASSERT_EQUAL(h.hard_limit, 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

#define FLOODERS 8
#define FLOOD_EACH 25
#define REFILL_ROUNDS 40

/* Leave thousands of spans on the central lists (half-used 1 KiB spans of a
 * process that exits) and free pages behind: work for every Scavenge. */
static int central_spans(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    enum { N = 32768 };
    static void *p[N];
    for (int i = 0; i < N; i++)
        if (!(p[i] = heapd_malloc(1000)))
            return 12;
    for (int i = 0; i < N; i += 2)
        heapd_free(p[i]);
    void *big = heapd_malloc(16 << 20);
    if (!big)
        return 13;
    memset(big, 1, 16 << 20);
    heapd_free(big);
    return 0;           /* exits attached: the daemon reclaims its cached spans */
}

/* Refills during the flood: fill and empty caches of several classes, giving
 * the spans back each round (heapd_flush), so every round asks for spans. */
static int refiller(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    static void *p[2048];
    for (int round = 0; round < REFILL_ROUNDS; round++) {
        size_t size = 16 << (round % 6);
        for (int i = 0; i < 2048; i++)
            if (!(p[i] = heapd_malloc(size)))
                return 12;
        for (int i = 0; i < 2048; i++)
            heapd_free(p[i]);
        if (heapd_flush() != 0)
            return 13;
    }
    heapd_detach();
    return 0;
}

/* FLOODERS connections each pipeline FLOOD_EACH Scavenge messages while
 * another client keeps refilling: every Scavenge is answered, in order, the
 * refiller finishes, and the requests share forced passes (one at a time)
 * instead of each running a pass of its own, which is what let a flood
 * starve other clients' refills. */
static void test_attack_scavenge_flood(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL_FATAL(run_child(central_spans, d.sock, 60), 0);
    hd_header_t h0, h1;
    CU_ASSERT_FATAL(books_read(d.sock, &h0) == 0);
    fprintf(stderr, "central spans before the flood: %llu\n", (unsigned long long)h0.spans_central);

    int conn[FLOODERS];
    for (int f = 0; f < FLOODERS; f++) {
        int fds[2], nfds;
        CU_ASSERT_FATAL(raw_hello_fds(d.sock, "itest-attack-flood", fds, &nfds, &conn[f]) == 0);
        close(fds[0]);
        close(fds[1]);
    }
    fflush(NULL);
    pid_t ref = fork();
    CU_ASSERT_FATAL(ref >= 0);
    if (ref == 0) {
        alarm(120);
        _exit(refiller(d.sock));
    }
    uint64_t t0 = test_now_ms();
    for (int f = 0; f < FLOODERS; f++) {
        for (int k = 0; k < FLOOD_EACH; k++) {
            Heapd__Scavenge sc = HEAPD__SCAVENGE__INIT;
            Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
            m.seq = 100 + (uint64_t)k;
            m.body_case = HEAPD__CLIENT_MSG__BODY_SCAVENGE;
            m.scavenge = &sc;
            uint8_t out[64];
            size_t n = heapd__client_msg__pack(&m, out);
            CU_ASSERT_FATAL(send(conn[f], out, n, MSG_NOSIGNAL) == (ssize_t)n);
        }
    }
    int acked[FLOODERS] = {0}, total = 0;
    while (total < FLOODERS * FLOOD_EACH && test_now_ms() - t0 < 60000) {
        struct pollfd pf[FLOODERS];
        for (int f = 0; f < FLOODERS; f++)
            pf[f] = (struct pollfd){.fd = conn[f], .events = POLLIN};
        if (poll(pf, FLOODERS, 1000) <= 0)
            continue;
        for (int f = 0; f < FLOODERS; f++) {
            if (!(pf[f].revents & POLLIN))
                continue;
            uint8_t in[256];
            ssize_t r = recv(conn[f], in, sizeof(in), MSG_DONTWAIT);
            if (r <= 0)
                continue;
            Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, in);
            CU_ASSERT_FATAL(rep != NULL);
            CU_ASSERT(rep->body_case == HEAPD__DAEMON_MSG__BODY_ACK && rep->seq == 100 + (uint64_t)acked[f]);
            heapd__daemon_msg__free_unpacked(rep, NULL);
            acked[f]++;
            total++;
        }
    }
    fprintf(stderr, "%d Scavenge messages answered in %llu ms\n", total, (unsigned long long)(test_now_ms() - t0));
    CU_ASSERT_EQUAL(total, FLOODERS * FLOOD_EACH);
    CU_ASSERT_EQUAL(wait_child(ref, 120), 0);
    CU_ASSERT_FATAL(books_read(d.sock, &h1) == 0);
    uint64_t passes = h1.scavenge_runs - h0.scavenge_runs;
    fprintf(stderr, "scavenger passes during the flood: %llu for %d requests\n", (unsigned long long)passes,
            FLOODERS * FLOOD_EACH);
    CU_ASSERT(passes <= FLOODERS * FLOOD_EACH / 2);
    for (int f = 0; f < FLOODERS; f++)
        close(conn[f]);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- 4. scribbled object states -------------------------------------------------------------- */

#define SCRIBBLE_ROUNDS 2000

/* The victim: rounds of allocations of several classes (8 B objects with
 * their states in the aux area, 16 B tiny blocks, 48 B, 1000 B), written,
 * freed, and the spans given back now and then. Exits 0 when done; frees the
 * scribbles made look not live are counted (heapd_bad_frees), not fatal. */
static int scribble_victim(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    static const size_t sizes[] = {8, 16, 48, 1000, 5};
    static char *p[512];
    for (int round = 0; round < SCRIBBLE_ROUNDS; round++) {
        size_t size = sizes[round % 5];
        for (int i = 0; i < 512; i++) {
            if (!(p[i] = heapd_malloc(size)))
                return 12;
            memset(p[i], 0x5a, size);
        }
        for (int i = 0; i < 512; i++)
            heapd_free(p[i]);
        if (round % 16 == 15 && heapd_flush() != 0)
            return 13;
    }
    fprintf(stderr, "victim: %d rounds done, %llu frees refused (scribbled states)\n", SCRIBBLE_ROUNDS,
            (unsigned long long)heapd_bad_frees());
    heapd_detach();
    return 0;
}

/* The attacker: attached (so the segment is mapped), it writes random values
 * into the object state bytes and tiny block words of every span some other
 * client caches, until killed. */
static int scribbler(const daemon_proc_t *d, int ready)
{
    if (heapd_attach(d->sock) != 0)
        return 11;
    hd_seg_t seg;
    hd_seg_view(&seg, (hd_header_t *)(uintptr_t)d->base);
    uint64_t rng = test_seed(14);
    if (write(ready, "r", 1) != 1)
        return 12;
    for (;;) {
        for (uint64_t id = 0; id < seg.hdr->npages; id++) {
            const hd_span_t *sp = &seg.spans[id];
            if (hd_span_state(sp) != HD_SPAN_CACHED || sp->sizeclass == 0)
                continue;
            hd_ostate_t *st = hd_states_of(&seg, (uint32_t)id, sp->sizeclass);
            for (unsigned k = 0; k < 64; k++) {
                uint64_t r = test_rand(&rng);
                unsigned i = (unsigned)(r % HD_MAX_OBJS_PER_SPAN);
                if (i < (hd_class_to_nobjs[sp->sizeclass] > HD_SLOT_STATES ? HD_MAX_OBJS_PER_SPAN : HD_SLOT_STATES))
                    atomic_store_explicit(&st[i], (uint8_t)(r >> 32), memory_order_relaxed);
                if (sp->sizeclass == HD_TINY_SIZE_CLASS)
                    atomic_store_explicit(&seg.tiny[id].block[(r >> 40) % HD_TINY_BLOCKS], (uint32_t)(r >> 8),
                                          memory_order_relaxed);
            }
        }
    }
}

/* A hostile process writes arbitrary values into the state bytes and tiny
 * words of a victim's cached spans while the victim allocates and frees: the
 * victim finishes its rounds in time (objects may be lost, never liveness),
 * the daemon stays up and a new client still allocates. */
static void test_attack_scribbled_states(void)
{
#if HEAPD_DEBUG
    /* The protocol checks of a HEAPD_DEBUG build abort a process that finds a
     * byte in a state it never wrote ("allocating object i in state s"): that
     * is their job, and a scribbler makes the victim trip them. */
    fprintf(stderr, "(HEAPD_DEBUG: the protocol checks abort the victim by design; skipped) ");
    return;
#endif
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int ready[2];
    CU_ASSERT_FATAL(pipe2(ready, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t att = fork();
    CU_ASSERT_FATAL(att >= 0);
    if (att == 0) {
        alarm(120);
        _exit(scribbler(&d, ready[1]));
    }
    close(ready[1]);
    char c;
    CU_ASSERT_FATAL(read(ready[0], &c, 1) == 1);     /* attached, about to scribble */
    close(ready[0]);
    uint64_t t0 = test_now_ms();
    int rc = run_child(scribble_victim, d.sock, 60);
    fprintf(stderr, "victim under scribbling: exit %d after %llu ms (seed %llu)\n", rc,
            (unsigned long long)(test_now_ms() - t0), (unsigned long long)test_seed(14));
    CU_ASSERT_EQUAL(rc, 0);
    kill(att, SIGKILL);
    waitpid(att, NULL, 0);
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    CU_ASSERT(kill(d.pid, 0) == 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- 5. dirtied free pages ------------------------------------------------------------------- */

#define DIRTY_BYTES (128u << 20)

/* Attached but allocating nothing, write 0xAB over the first DIRTY_BYTES of
 * heap pages (none handed out yet), over the old stats-slot array and over
 * the aux areas of the upper half of the pages (metadata the daemon never
 * committed), then detach. */
static int dirtier(void *arg)
{
    const daemon_proc_t *d = arg;
    if (heapd_attach(d->sock) != 0)
        return 11;
    memset(heapd_offset_to_ptr(0), 0xab, DIRTY_BYTES);
    hd_seg_t seg;
    hd_seg_view(&seg, (hd_header_t *)(uintptr_t)d->base);
    memset(seg.cstats, 0xab, HD_STAT_SLOTS * sizeof(hd_cstats_t));
    uint64_t half = seg.hdr->npages / 2;
    memset(&seg.tiny[half], 0xab, (seg.hdr->npages - half) * sizeof(hd_tiny_t));
    heapd_detach();
    return 0;
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

/* calloc from another process: 1 MiB (large) and small sizes, all zero. */
static int calloc_checker(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    unsigned char *big = heapd_calloc(1, 1 << 20);
    if (!big)
        return 12;
    if (!all_zero(big, 1 << 20)) {
        fprintf(stderr, "calloc(1, 1 MiB) holds what another process wrote\n");
        return 13;
    }
    static const size_t sizes[] = {8, 16, 100, 1000, 4096, 32768};
    for (unsigned k = 0; k < 6; k++) {
        for (int i = 0; i < 64; i++) {
            unsigned char *p = heapd_calloc(1, sizes[k]);
            if (!p)
                return 14;
            if (!all_zero(p, sizes[k])) {
                fprintf(stderr, "calloc(1, %zu) holds what another process wrote\n", sizes[k]);
                return 15;
            }
        }
    }
    heapd_free(big);
    heapd_detach();
    return 0;
}

/* What the kernel backs for the daemon's memfds (st_blocks), from a client's fds. */
static uint64_t memfds_resident(const char *sock)
{
    int fds[2], nfds;
    uint64_t r = UINT64_MAX;
    struct stat a, b;
    if (raw_hello_fds(sock, "itest-attack-resident", fds, &nfds, NULL) == 0 && fstat(fds[0], &a) == 0 &&
        fstat(fds[1], &b) == 0)
        r = ((uint64_t)a.st_blocks + (uint64_t)b.st_blocks) * 512u;
    for (int i = 0; i < nfds && i < 2; i++)
        close(fds[i]);
    return r;
}

/* heapctl (next to heapd) with these arguments: its exit code, or -1. */
static int heapctl_run(const char *const *args)
{
    char path[512];
    snprintf(path, sizeof(path), "%s", HEAPD_BIN);
    char *slash = strrchr(path, '/');
    if (!slash)
        return -1;
    snprintf(slash + 1, sizeof(path) - (size_t)(slash + 1 - path), "heapctl");
    const char *argv[8] = {path};
    for (int i = 0; args[i] && i < 6; i++)
        argv[i + 1] = args[i];
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 1);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    return wait_child(pid, 30);
}

/* A client writes 128 MiB into heap pages the daemon never handed out and
 * 72 MiB into metadata areas it never committed, under a 64 MiB hard limit:
 * another process's calloc is still all zero, heapctl scavenge works, and
 * what the memfds hold returns under the hard limit. */
static void test_attack_dirty_free_pages(void)
{
    daemon_proc_t d;
    const char *const extra[] = {"--hard-limit", "64MiB", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "512MiB", extra) == 0);
    CU_ASSERT_EQUAL_FATAL(run_child(dirtier, &d, 30), 0);
    fprintf(stderr, "resident after the writes: %llu KiB\n", (unsigned long long)memfds_resident(d.sock) >> 10);
    CU_ASSERT_EQUAL(run_child(calloc_checker, d.sock, 30), 0);
    char ctl[sizeof(d.sock) + 8];
    snprintf(ctl, sizeof(ctl), "%s.ctl", d.sock);
    const char *const args[] = {"--control", ctl, "scavenge", NULL};
    CU_ASSERT_EQUAL(heapctl_run(args), 0);
    uint64_t res = UINT64_MAX;
    bool under = TEST_WAIT((res = memfds_resident(d.sock)) <= (64u << 20), 5000);
    fprintf(stderr, "resident after heapctl scavenge: %llu KiB\n", (unsigned long long)res >> 10);
    CU_ASSERT(under);
    hd_header_t h;
    CU_ASSERT_FATAL(books_read(d.sock, &h) == 0);
    CU_ASSERT(h.resident_gap_bytes <= (1u << 20));
    /* the heap still works under the limit */
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- 6. forged stats --------------------------------------------------------------------------- */

/* HeapAlloc as the control socket reports it, or UINT64_MAX. */
static uint64_t ctl_heap_alloc(const char *sock)
{
    int fd = ctl_open(sock);
    uint64_t v = UINT64_MAX;
    if (fd >= 0 && ctl_send(fd, 1, HEAPDCTL__CONTROL_REQUEST__BODY_STATS) == 0) {
        Heapdctl__ControlReply *r = ctl_recv(fd, 5000);
        if (r && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_STATS)
            v = r->stats->heap_alloc;
        if (r)
            heapdctl__control_reply__free_unpacked(r, NULL);
    }
    if (fd >= 0)
        close(fd);
    return v;
}

/* The mallocs `heapctl clients` shows for the client with this pid, or UINT64_MAX. */
static uint64_t ctl_client_mallocs(const char *sock, pid_t pid)
{
    int fd = ctl_open(sock);
    uint64_t v = UINT64_MAX;
    if (fd >= 0 && ctl_send(fd, 1, HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS) == 0) {
        Heapdctl__ControlReply *r = ctl_recv(fd, 5000);
        if (r && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS)
            for (size_t i = 0; i < r->clients->n_clients; i++)
                if (r->clients->clients[i]->pid == pid)
                    v = r->clients->clients[i]->mallocs;
        if (r)
            heapdctl__control_reply__free_unpacked(r, NULL);
    }
    if (fd >= 0)
        close(fd);
    return v;
}

/* The stats slots this process has mapped (the memfds named heapd-stats in
 * /proc/self/maps): how many, and the first one's address. */
static int stats_mappings(hd_cstats_t **first)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (f && fgets(line, sizeof(line), f)) {
        if (!strstr(line, "memfd:heapd-stats"))
            continue;
        if (n++ == 0)
            *first = (hd_cstats_t *)(uintptr_t)strtoull(line, NULL, 16);
    }
    if (f)
        fclose(f);
    return n;
}

#define VICTIM_OBJS 1000

struct forge_arg { const daemon_proc_t *d; int ready, go; };

/* The victim: VICTIM_OBJS allocations, flushed to its slot, then it waits. */
static int stats_victim(const struct forge_arg *a)
{
    if (heapd_attach(a->d->sock) != 0)
        return 11;
    for (int i = 0; i < VICTIM_OBJS; i++)
        if (!heapd_malloc(100))
            return 12;
    if (heapd_flush() != 0)
        return 13;
    char c = 'v';
    if (write(a->ready, &c, 1) != 1 || read(a->go, &c, 1) != 1)
        return 14;
    heapd_detach();
    return 0;
}

/* The forger: it can map one stats slot, its own; it writes absurd values
 * over every slot of the old shared slot array in the heap memfd (where
 * another client's slot used to be) and into its own slot (seq kept even, as
 * a writer would), says so, waits, and exits without detaching: the lease
 * ends and its slot is folded into the retired totals. */
static int forger(const struct forge_arg *a)
{
    if (heapd_attach(a->d->sock) != 0)
        return 11;
    if (!heapd_malloc(1 << 20))
        return 12;
    hd_cstats_t *mine = NULL;
    int n = stats_mappings(&mine);
    if (n != 1) {
        fprintf(stderr, "forger: %d stats slots mapped, not 1 (its own)\n", n);
        return 13;
    }
    hd_seg_t seg;
    hd_seg_view(&seg, (hd_header_t *)(uintptr_t)a->d->base);
    for (unsigned i = 0; i < HD_STAT_SLOTS; i++)
        for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++)
            atomic_store(&seg.cstats[i].small_allocs[c], 1ull << 40);
    uint64_t q = atomic_load(&mine->seq);
    atomic_store(&mine->seq, q + 1);
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++)
        atomic_store(&mine->small_allocs[c], 1ull << 40);
    atomic_store(&mine->large_allocs, 1ull << 30);
    atomic_store(&mine->large_alloc_bytes, 1ull << 50);
    atomic_store(&mine->seq, q + 2);
    char c = 'f';
    if (write(a->ready, &c, 1) != 1 || read(a->go, &c, 1) != 1)
        return 14;
    return 0;       /* no detach: the daemon retires the slot when the process is gone */
}

static pid_t forge_child(int (*fn)(const struct forge_arg *), const daemon_proc_t *d, int *ready, int *go)
{
    int r[2], g[2];
    if (pipe2(r, O_CLOEXEC) != 0 || pipe2(g, O_CLOEXEC) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        struct forge_arg a = {d, r[1], g[0]};
        _exit(fn(&a));
    }
    close(r[1]);
    close(g[0]);
    *ready = r[0];
    *go = g[1];
    return pid;
}

static bool no_clients_but_me(const hd_header_t *h) { return h->clients == 1; }

/* Forged stats. A client cannot write another client's slot (it has no
 * mapping of it: each slot is a memfd passed only to its client, and what
 * it writes into the heap memfd is read by nobody): the victim's counts stay
 * its own. Forging its own slot to absurd values does not push HeapAlloc
 * past the heap's size, while it lives nor after its slot was retired. */
static void test_attack_forged_stats(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    int vr, vg, fr, fg;
    char c;
    pid_t v = forge_child(stats_victim, &d, &vr, &vg);
    CU_ASSERT_FATAL(v > 0);
    CU_ASSERT_FATAL(read(vr, &c, 1) == 1);
    CU_ASSERT_EQUAL(ctl_client_mallocs(d.sock, v), VICTIM_OBJS);
    pid_t f = forge_child(forger, &d, &fr, &fg);
    CU_ASSERT_FATAL(f > 0);
    CU_ASSERT_FATAL(read(fr, &c, 1) == 1);
    uint64_t victim = ctl_client_mallocs(d.sock, v), live = ctl_heap_alloc(d.sock);
    fprintf(stderr, "victim's mallocs %llu; HeapAlloc with a forged live slot: %llu bytes (heap 64 MiB)\n",
            (unsigned long long)victim, (unsigned long long)live);
    CU_ASSERT_EQUAL(victim, VICTIM_OBJS);
    CU_ASSERT(live <= (64u << 20));
    CU_ASSERT(write(fg, "g", 1) == 1);
    CU_ASSERT_EQUAL(wait_child(f, 30), 0);
    CU_ASSERT(write(vg, "g", 1) == 1);
    CU_ASSERT_EQUAL(wait_child(v, 30), 0);
    close(fr);
    close(fg);
    close(vr);
    close(vg);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, no_clients_but_me, 5000));    /* both leases ended: slots retired */
    uint64_t retired = ctl_heap_alloc(d.sock);
    fprintf(stderr, "HeapAlloc after the forger's slot was retired: %llu bytes\n", (unsigned long long)retired);
    CU_ASSERT(retired <= (64u << 20));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- timing (make test-timing, never gating) ----------------------------------------------------- */

/* Refill{class 5, count 1} then Release of what came back, on an attached raw
 * connection: the Refill's round trip in ns, or 0 on failure. */
static uint64_t refill_rtt_ns(int conn, uint64_t seq)
{
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = 5;
    rf.count = 1;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    uint8_t out[256], in[4096];
    size_t n = heapd__client_msg__pack(&m, out);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ssize_t r = raw_call(conn, out, n, in, sizeof(in), 10000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    Heapd__DaemonMsg *rep = r > 0 ? heapd__daemon_msg__unpack(NULL, (size_t)r, in) : NULL;
    if (!rep || rep->body_case != HEAPD__DAEMON_MSG__BODY_SPANS || rep->spans->n_span_ids != 1) {
        if (rep)
            heapd__daemon_msg__free_unpacked(rep, NULL);
        return 0;
    }
    uint32_t id = rep->spans->span_ids[0];
    heapd__daemon_msg__free_unpacked(rep, NULL);
    Heapd__Release rl = HEAPD__RELEASE__INIT;
    rl.n_span_ids = 1;
    rl.span_ids = &id;
    Heapd__ClientMsg q = HEAPD__CLIENT_MSG__INIT;
    q.seq = seq + 1;
    q.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
    q.release = &rl;
    if (raw_request(conn, &q, 10000) != 0)
        return 0;
    return (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)t1.tv_nsec - (uint64_t)t0.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define RTT_SAMPLES 400
#define MANY_SPANS 100000

/* MANY_SPANS spans of 1 KiB objects left on the central lists, one live
 * object in each (the rest freed), by a process that exits. */
static int many_central_spans(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    enum { PER = 8, N = MANY_SPANS * PER };     /* 1 KiB objects, 8 per 8 KiB span */
    void **p = malloc(N * sizeof(*p));
    if (!p)
        return 12;
    for (int i = 0; i < N; i++)
        if (!(p[i] = heapd_malloc(1000)))
            return 13;
    for (int i = 0; i < N; i++)         /* consecutive objects share spans: keep one in each */
        if (i % PER)
            heapd_free(p[i]);
    return 0;
}

/* RTT_SAMPLES Refill round trips: p50, p99 and max in *out (ns). */
static bool refill_rtts(int conn, uint64_t out[3])
{
    static uint64_t ns[RTT_SAMPLES];
    for (int i = 0; i < RTT_SAMPLES; i++)
        if (!(ns[i] = refill_rtt_ns(conn, 10 + 2 * (uint64_t)i)))
            return false;
    qsort(ns, RTT_SAMPLES, sizeof(ns[0]), cmp_u64);
    out[0] = ns[RTT_SAMPLES / 2];
    out[1] = ns[RTT_SAMPLES * 99 / 100];
    out[2] = ns[RTT_SAMPLES - 1];
    return true;
}

/* Scavenge back to back on FLOODERS connections until the pipe closes. */
static int scavenge_flooder(const char *sock, int stop)
{
    int conn[FLOODERS];
    for (int f = 0; f < FLOODERS; f++) {
        int fds[2], nfds;
        if (raw_hello_fds(sock, "itest-attack-flood", fds, &nfds, &conn[f]) != 0)
            return 11;
        close(fds[0]);
        close(fds[1]);
    }
    for (uint64_t seq = 2;; seq++) {
        struct pollfd pf = {.fd = stop, .events = POLLIN};
        if (poll(&pf, 1, 0) == 1)
            return 0;
        for (int f = 0; f < FLOODERS; f++)
            if (raw_scavenge(conn[f], seq) != 0)
                return 12;
    }
}

/* A Scavenge flood over thousands of central spans against another client's
 * Refill round trips: printed, and p99 bounded by a few forced slices. */
static void test_attack_scavenge_flood_timing(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "2GiB", NULL) == 0);
    CU_ASSERT_EQUAL_FATAL(run_child(many_central_spans, d.sock, 120), 0);
    hd_header_t h;
    CU_ASSERT_FATAL(books_read(d.sock, &h) == 0);
    int fds[2], nfds, conn;
    CU_ASSERT_FATAL(raw_hello_fds(d.sock, "itest-attack-refills", fds, &nfds, &conn) == 0);
    close(fds[0]);
    close(fds[1]);
    uint64_t idle[3] = {0}, flood[3] = {0};
    CU_ASSERT_FATAL(refill_rtts(conn, idle));
    int stop[2];
    CU_ASSERT_FATAL(pipe2(stop, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t fl = fork();
    CU_ASSERT_FATAL(fl >= 0);
    if (fl == 0) {
        alarm(120);
        close(stop[1]);
        _exit(scavenge_flooder(d.sock, stop[0]));
    }
    close(stop[0]);
    const hd_header_t *live = books_map(d.sock);
    uint64_t runs0 = live ? live->scavenge_runs : 0;
    TEST_WAIT(!live || live->scavenge_runs >= runs0 + 10, 10000);    /* the flood is on */
    bool ok = refill_rtts(conn, flood);
    uint64_t runs1 = live ? live->scavenge_runs : 0;
    close(stop[1]);
    CU_ASSERT_EQUAL(wait_child(fl, 30), 0);
    if (live)
        books_unmap(live);
    close(conn);
    CU_ASSERT_FATAL(ok);
    fprintf(stderr,
            "Refill round trips, %llu central spans, %d connections flooding Scavenge (%llu passes meanwhile):\n"
            "  idle  p50 %.1f us, p99 %.1f us, max %.1f us\n  flood p50 %.1f us, p99 %.1f us, max %.1f us\n",
            (unsigned long long)h.spans_central, FLOODERS, (unsigned long long)(runs1 - runs0), idle[0] / 1e3,
            idle[1] / 1e3, idle[2] / 1e3, flood[0] / 1e3, flood[1] / 1e3, flood[2] / 1e3);
    CU_ASSERT(flood[1] <= 5000000);      /* a forced slice is about 1 ms */
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void register_attacks_suite(void)
{
    CU_pSuite s = CU_add_suite("attacks", NULL, NULL);
    CU_add_test(s, "seals: every F_ADD_SEALS a client tries fails", test_attack_seals);
    CU_add_test(s, "10,000 silent connections: attach still works", test_attack_silent_connections);
    CU_add_test(s, "SetLimit from a client admitted by --allow-uid: EPERM", test_attack_set_limit_other_uid);
    CU_add_test(s, "a flood of Scavenge: answered, shared passes, refills served", test_attack_scavenge_flood);
    CU_add_test(s, "scribbled state bytes and tiny words: the victim keeps going", test_attack_scribbled_states);
    CU_add_test(s, "dirtied free pages: calloc zero, released, under the hard limit", test_attack_dirty_free_pages);
    CU_add_test(s, "forged stats: no slot of another client, HeapAlloc within the heap", test_attack_forged_stats);
    CU_pSuite t = CU_get_suite("timing");   /* make test-timing: HEAPD_UNIT_SUITES=timing */
    if (!t)
        t = CU_add_suite("timing", NULL, NULL);
    CU_add_test(t, "Scavenge flood: other clients' Refill round trips", test_attack_scavenge_flood_timing);
}
UNIT_SUITE(register_attacks_suite)
