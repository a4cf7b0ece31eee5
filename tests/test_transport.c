/* Unit tests of client/transport.c, the process's connection to the daemon,
 * over both transports (io_uring, and plain send/recv with HEAPD_NO_URING=1):
 *  - round trips with a real daemon (fx_spawn): Refill, Release, AllocLarge,
 *    FreeLarge, each seen in the segment the daemon publishes;
 *  - a daemon that dies: every call fails with EPIPE, at once after the
 *    first, and detach still works;
 *  - what a correct daemon never sends, from a scripted peer on a real socket
 *    (fx_peer_*): a packet larger than any message, a garbled packet (both
 *    break the connection: EPIPE), a stale reply and an unsolicited Flush
 *    ahead of the answer (skipped, and counted), an Error (its errno, the
 *    connection kept), more spans than asked (EPROTO). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "daemon_fixture.h"
#include "heapd.h"
#include "internal.h"
#include "unit.h"

#define SPAWN_BASE 0x3f0000000000ull
#define PEER_BASE  0x3f8000000000ull
static unsigned nspawn;

static bool uring_works(void)
{
    struct io_uring r;
    if (io_uring_queue_init(8, &r, 0) != 0)
        return false;
    io_uring_queue_exit(&r);
    return true;
}

/* Choose the transport of the next attach; false when io_uring is wanted
 * but this kernel refuses it (the test says so and checks the fallback). */
static bool use_plain(bool plain)
{
    if (plain)
        setenv("HEAPD_NO_URING", "1", 1);
    else
        unsetenv("HEAPD_NO_URING");
    return plain || uring_works();
}

static void spawn(fx_proc_t *p)
{
    daemon_opts_t o = {.size = 64ull << 20, .base = SPAWN_BASE + (uint64_t)(nspawn++) * (4ull << 30)};
    fx_spawn(p, &o);
}

static const char *want_name(bool plain, bool ring) { return plain || !ring ? "plain" : "io_uring"; }

static int span_state(uint32_t id) { return atomic_load(&hdc_seg.spans[id].state); }

/* ---- a real daemon ------------------------------------------------------------------ */

static bool all_left_cache(const uint32_t *ids, int n)
{
    for (int i = 0; i < n; i++)
        if (span_state(ids[i]) == HD_SPAN_CACHED)
            return false;
    return true;
}

static void round_trips(bool plain)
{
    bool ring = use_plain(plain);
    if (!ring)
        printf("\n  io_uring refused here: the client must fall back to plain send/recv\n");
    fx_proc_t d;
    spawn(&d);
    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    CU_ASSERT_STRING_EQUAL(heapd_transport(), want_name(plain, ring));

    uint32_t ids[HD_MAX_BATCH];
    unsigned cls = hd_size_to_class(256);
    int n = tp_refill(cls, 4, ids);
    CU_ASSERT_FATAL(n >= 1 && n <= 4);
    for (int i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(span_state(ids[i]), HD_SPAN_CACHED);
        CU_ASSERT_EQUAL(hdc_seg.spans[ids[i]].owner, hdc_client_id);
        CU_ASSERT_EQUAL(hdc_seg.spans[ids[i]].sizeclass, cls);
    }
    CU_ASSERT_EQUAL(tp_refill(cls, 0, ids), -1);              /* checked before sending */
    CU_ASSERT_EQUAL(errno, EINVAL);
    tp_release(ids, (unsigned)n);                               /* async: queued */
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT(TEST_WAIT(all_left_cache(ids, n), 5000));         /* the daemon took them back */

    uint32_t id;
    CU_ASSERT_FATAL(tp_alloc_large(3, 0, true, &id) == 0);
    CU_ASSERT_EQUAL(span_state(id), HD_SPAN_LARGE);
    CU_ASSERT(hdc_seg.spans[id].npages >= 3);
    uint32_t gen = hdc_seg.spans[id].gen;
    CU_ASSERT_EQUAL(tp_free_large(id, gen, 3), 0);
    CU_ASSERT_EQUAL(tp_free_large(id, gen, 3), -1);             /* the same span queued twice */
    CU_ASSERT_EQUAL(tp_flush(), 0);
    CU_ASSERT(TEST_WAIT(span_state(id) != HD_SPAN_LARGE, 5000));

    /* a synchronous call carries the pending batch ahead of it */
    n = tp_refill(cls, 2, ids);
    CU_ASSERT_FATAL(n >= 1);
    tp_release(ids, (unsigned)n);
    int m = tp_refill(cls, 1, ids + n);
    CU_ASSERT_EQUAL(m, 1);
    for (int i = 0; i < n; i++)                                 /* the Release was handled first */
        CU_ASSERT(span_state(ids[i]) != HD_SPAN_CACHED || ids[i] == ids[n]);
    tp_release(ids + n, 1);

    heapd_detach();
    CU_ASSERT_STRING_EQUAL(heapd_transport(), "none");
    int st = fx_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    unsetenv("HEAPD_NO_URING");
}

static void test_round_trip_plain(void) { round_trips(true); }
static void test_round_trip_uring(void) { round_trips(false); }

static void dead_peer(bool plain)
{
    use_plain(plain);
    fx_proc_t d;
    spawn(&d);
    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    uint32_t ids[4], id;
    CU_ASSERT_FATAL(tp_refill(hd_size_to_class(64), 1, ids) == 1);
    tp_release(ids, 1);                                          /* pending when the daemon dies */
    fx_kill(&d);
    errno = 0;
    CU_ASSERT_EQUAL(tp_refill(hd_size_to_class(64), 1, ids), -1);
    CU_ASSERT_EQUAL(errno, EPIPE);
    CU_ASSERT_EQUAL(atomic_load(&hdc_state), HDC_DEAD);
    errno = 0;
    CU_ASSERT_EQUAL(tp_alloc_large(1, 0, false, &id), -1);     /* at once, no socket left */
    CU_ASSERT_EQUAL(errno, EPIPE);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(1u << 20));
    CU_ASSERT_EQUAL(errno, EPIPE);
    tp_release(ids, 1);                                          /* nothing to send it to: dropped */
    CU_ASSERT_EQUAL(tp_flush(), 0);
    heapd_detach();
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(100));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    unsetenv("HEAPD_NO_URING");
}

static void test_dead_peer_plain(void) { dead_peer(true); }
static void test_dead_peer_uring(void) { dead_peer(false); }

/* ---- a scripted peer --------------------------------------------------------------- */

enum scene { OVERSIZED, GARBLED, STALE_AND_FLUSH, ERROR_KEEPS, TOO_MANY };

static void send_spans(fx_peer_t *p, int conn, uint64_t seq, const uint32_t *ids, size_t n)
{
    Heapd__Spans sp = HEAPD__SPANS__INIT;
    sp.n_span_ids = n;
    sp.span_ids = (uint32_t *)ids;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_SPANS;
    m.spans = &sp;
    fx_peer_send(p, conn, &m, false);
}

/* The next request's seq, or 0 when none came. */
static uint64_t next_request(int conn)
{
    Heapd__ClientMsg *r = fx_peer_recv(conn);
    uint64_t seq = r ? r->seq : 0;
    heapd__client_msg__free_unpacked(r, NULL);
    return seq;
}

static void script(fx_peer_t *p, int conn)
{
    enum scene sc = *(enum scene *)p->arg;
    fx_peer_welcome(p, conn, HD_PROTO_VERSION);
    uint64_t seq = next_request(conn);
    if (!seq)
        return;
    static const uint32_t two[2] = {7, 8}, three[3] = {7, 8, 9};
    switch (sc) {
    case OVERSIZED: {
        static uint8_t big[HD_MAX_MSG + 512];
        memset(big, 0x08, sizeof(big));
        if (send(conn, big, sizeof(big), MSG_NOSIGNAL) < 0)
            perror("oversized send");
        break;
    }
    case GARBLED: {
        static const uint8_t junk[3] = {0xff, 0xff, 0xff};
        (void)!send(conn, junk, sizeof(junk), MSG_NOSIGNAL);
        break;
    }
    case STALE_AND_FLUSH: {
        send_spans(p, conn, seq + 1000, three, 3);               /* a reply to nothing we asked */
        Heapd__Flush f = HEAPD__FLUSH__INIT;
        Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
        m.body_case = HEAPD__DAEMON_MSG__BODY_FLUSH;           /* seq 0: unsolicited */
        m.flush = &f;
        fx_peer_send(p, conn, &m, false);
        send_spans(p, conn, seq, two, 2);
        break;
    }
    case ERROR_KEEPS: {
        Heapd__Error e = HEAPD__ERROR__INIT;
        e.err = ENOMEM;
        e.message = "no room";
        Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
        m.seq = seq;
        m.body_case = HEAPD__DAEMON_MSG__BODY_ERROR;
        m.error = &e;
        fx_peer_send(p, conn, &m, false);
        if ((seq = next_request(conn)) != 0)
            send_spans(p, conn, seq, two, 2);
        break;
    }
    case TOO_MANY:
        send_spans(p, conn, seq, three, 3);
        break;
    }
    next_request(conn);                                          /* until the client goes */
}

/* Attach to a peer playing scene sc, make one Refill of 2 spans; its result
 * and errno. */
static int scene(enum scene sc, bool plain, uint32_t *ids, int *err, uint64_t *flushes)
{
    use_plain(plain);
    fx_peer_t p;
    fx_peer_start(&p, PEER_BASE, script, &sc);
    CU_ASSERT_FATAL(heapd_attach(p.sock) == 0);
    uint64_t f0 = atomic_load(&tp_flush_gen);
    errno = 0;
    int n = tp_refill(5, 2, ids);
    *err = errno;
    if (sc == ERROR_KEEPS && n < 0 && *err == ENOMEM) {
        CU_ASSERT_EQUAL(atomic_load(&hdc_state), HDC_ATTACHED);   /* still connected */
        n = tp_refill(5, 2, ids);
    }
    *flushes = atomic_load(&tp_flush_gen) - f0;
    heapd_detach();
    fx_peer_stop(&p);
    unsetenv("HEAPD_NO_URING");
    return n;
}

static void scripted(bool plain)
{
    uint32_t ids[HD_MAX_BATCH];
    int err;
    uint64_t fl;
    CU_ASSERT_EQUAL(scene(OVERSIZED, plain, ids, &err, &fl), -1);
    CU_ASSERT_EQUAL(err, EPIPE);
    CU_ASSERT_EQUAL(scene(GARBLED, plain, ids, &err, &fl), -1);
    CU_ASSERT_EQUAL(err, EPIPE);
    CU_ASSERT_EQUAL(scene(STALE_AND_FLUSH, plain, ids, &err, &fl), 2);
    CU_ASSERT(ids[0] == 7 && ids[1] == 8);
    CU_ASSERT_EQUAL(fl, 1);
    CU_ASSERT_EQUAL(scene(ERROR_KEEPS, plain, ids, &err, &fl), 2);
    CU_ASSERT_EQUAL(err, ENOMEM);
    CU_ASSERT_EQUAL(scene(TOO_MANY, plain, ids, &err, &fl), -1);
    CU_ASSERT_EQUAL(err, EPROTO);
}

static void test_scripted_plain(void) { scripted(true); }
static void test_scripted_uring(void) { scripted(false); }

static void register_transport_suite(void)
{
    CU_pSuite s = CU_add_suite("transport", NULL, NULL);
    CU_add_test(s, "round trips with a daemon, plain", test_round_trip_plain);
    CU_add_test(s, "round trips with a daemon, io_uring", test_round_trip_uring);
    CU_add_test(s, "a dead daemon: EPIPE, plain", test_dead_peer_plain);
    CU_add_test(s, "a dead daemon: EPIPE, io_uring", test_dead_peer_uring);
    CU_add_test(s, "oversized, garbled, stale, Error, too many: plain", test_scripted_plain);
    CU_add_test(s, "oversized, garbled, stale, Error, too many: io_uring", test_scripted_uring);
}
UNIT_SUITE(register_transport_suite)
