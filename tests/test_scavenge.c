/* Unit tests of daemon/scavenge.c and daemon/memlimit.c: what is counted (checked against the
 * memfds' st_blocks, the truth from outside), the scavenger's order, the
 * soft and hard limits, quotas, run-time changes and background pacing.
 * The daemon has no loop here; client records get one end of a socketpair,
 * so the test reads the Flush and Pressure messages they are sent. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"
#include "mcentral.h"
#include "rpc.h"
#include "memlimit.h"
#include "scavenge.h"
#include "daemon_fixture.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)
#define MiB (1ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

typedef struct tclient {
    client_t *c;
    int peer;           /* our end of its socket: unsolicited messages arrive here */
} tclient_t;

static void setup(void) { D = fx_daemon_new(TEST_SIZE, 0x3a0000000000ull + (uint64_t)(nbase++) * (4ull << 30)); }


static void teardown(void)
{
    fx_daemon_free(D);
    D = NULL;
}

static uint64_t blocks(int fd)
{
    struct stat st;
    CU_ASSERT_FATAL(fstat(fd, &st) == 0);
    return (uint64_t)st.st_blocks * 512;
}

/* Bytes the two memfds really hold: what limits_committed must equal. */
static uint64_t resident(void) { return blocks(D->seg.meta_fd) + blocks(D->seg.heap_fd); }

#define RETAIN_TEST_MS 100      /* scavenge.c's RETAIN_DECAY_MS */

static enum rpc_verdict send_msg(client_t *c, Heapd__ClientMsg *m) { return fx_send(D, c, m, &OUT); }

static tclient_t mkclient(void)
{
    tclient_t t = {0};
    t.c = fx_client(D, &OUT, &t.peer, NULL);
    return t;
}

static void rmclient(tclient_t *t)
{
    client_close(D, t->c, "test done");
    close(t->peer);
}

static int64_t alloc_large(tclient_t *t, uint64_t pages) { return fx_alloc_large(D, t->c, &OUT, pages); }

static void free_large(tclient_t *t, int64_t id)
{
    CU_ASSERT_FATAL(id >= 0);
    uint32_t sid = (uint32_t)id, gen = D->seg.view.spans[id].gen;
    Heapd__FreeLarge f = HEAPD__FREE_LARGE__INIT;
    f.n_span_ids = f.n_gens = 1;
    f.span_ids = &sid;
    f.gens = &gen;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 9;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
    m.free_large = &f;
    CU_ASSERT_FATAL(send_msg(t->c, &m) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT(r && r->body_case == HEAPD__DAEMON_MSG__BODY_ACK);
    if (r)
        heapd__daemon_msg__free_unpacked(r, NULL);
}

/* The unsolicited messages waiting at a client's end. */
typedef struct seen {
    unsigned flushes, pressures, max_level;
    uint64_t bytes;
} seen_t;

static seen_t drain(tclient_t *t)
{
    seen_t s = {0};
    uint8_t buf[256];
    ssize_t n;
    while ((n = recv(t->peer, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        Heapd__DaemonMsg *m = heapd__daemon_msg__unpack(NULL, (size_t)n, buf);
        CU_ASSERT_FATAL(m != NULL);
        CU_ASSERT_EQUAL(m->seq, 0);
        if (m->body_case == HEAPD__DAEMON_MSG__BODY_FLUSH)
            s.flushes++;
        if (m->body_case == HEAPD__DAEMON_MSG__BODY_PRESSURE) {
            s.pressures++;
            if (m->pressure->level > s.max_level)
                s.max_level = m->pressure->level;
            s.bytes = m->pressure->bytes_wanted;
        }
        heapd__daemon_msg__free_unpacked(m, NULL);
    }
    return s;
}

static bool page_scavenged(uint64_t p)
{
    const pa_chunk_t *c = &D->heap.pa.chunks[p / PA_CHUNK_PAGES];
    unsigned i = (unsigned)(p % PA_CHUNK_PAGES);
    return c->scav[i / 64] >> (i % 64) & 1;
}

/* ---- tests ------------------------------------------------------------------------------- */

/* committed = in use + free unreleased + metadata, equal to the memfds' blocks,
 * through allocation, free, scavenge and allocation again. */
static void test_counting(void)
{
    setup();
    limits_info_t li;
    CU_ASSERT_EQUAL(limits_committed(D), D->seg.meta_committed);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    tclient_t t = mkclient();
    int64_t id = alloc_large(&t, 100);
    CU_ASSERT_FATAL(id >= 0);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    CU_ASSERT(limits_committed(D) >= 100 * HD_PAGE_SIZE + D->seg.meta_committed);
    CU_ASSERT_EQUAL(D->seg.hdr->committed_bytes, limits_committed(D));
    memset((void *)hd_page_addr(&D->seg.view, (uint64_t)id), 0xab, 100 * HD_PAGE_SIZE);
    uint64_t before = limits_committed(D);
    free_large(&t, id);
    CU_ASSERT_EQUAL(limits_committed(D), before);           /* free pages stay committed */
    CU_ASSERT_EQUAL(limits_committed(D), resident());

    uint64_t rel = scavenge_all(D);
    CU_ASSERT(rel >= 100 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(limits_committed(D), D->seg.meta_committed);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.released, D->heap.pa.grown * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(li.scavenged_total, rel);
    CU_ASSERT_EQUAL(li.scavenge_runs, 1);
    CU_ASSERT_EQUAL(D->seg.hdr->released_bytes, li.released);
    CU_ASSERT_EQUAL(scavenge_all(D), 0);                    /* nothing left */

    /* handed out again: committed again, and it reads as zero */
    int64_t id2 = alloc_large(&t, 100);
    CU_ASSERT_EQUAL(id2, id);
    CU_ASSERT_EQUAL(D->seg.view.spans[id2].needzero, 0);
    const uint8_t *p = (const uint8_t *)hd_page_addr(&D->seg.view, (uint64_t)id2);
    bool zero = true;
    for (size_t i = 0; i < 100 * HD_PAGE_SIZE; i += 509)
        zero &= p[i] == 0;
    CU_ASSERT(zero);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    CU_ASSERT(limits_committed(D) >= 100 * HD_PAGE_SIZE + D->seg.meta_committed);
    free_large(&t, id2);
    rmclient(&t);
    teardown();
}

/* Highest addresses first, whole free 2 MiB huge pages at a time. */
static void test_order(void)
{
    setup();
    tclient_t t = mkclient();
    int64_t id = alloc_large(&t, 1024);     /* pages [0, 1024) */
    CU_ASSERT_FATAL(id == 0);
    free_large(&t, id);
    uint64_t c0 = limits_committed(D);
    CU_ASSERT_EQUAL(scavenge_bytes(D, HD_PAGE_SIZE), 2 * MiB);   /* one page asked: a huge page taken */
    CU_ASSERT(page_scavenged(1023) && page_scavenged(768));
    CU_ASSERT(!page_scavenged(767));
    CU_ASSERT_EQUAL(limits_committed(D), c0 - 2 * MiB);
    CU_ASSERT_EQUAL(scavenge_bytes(D, 3 * MiB), 4 * MiB);        /* rounded to huge pages */
    CU_ASSERT(page_scavenged(256) && !page_scavenged(255));
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    char err[256];
    CU_ASSERT(pa_check(&D->heap.pa, err, sizeof(err)));
    rmclient(&t);
    teardown();
}

/* Hard limit: refusal with Flush + Pressure{3} first; free pages count and are
 * released to make room; success after frees. Never more than the limit. */
static void test_hard_limit(void)
{
    setup();
    tclient_t t = mkclient(), other = mkclient();
    uint64_t base = limits_committed(D), hard = base + 3 * MiB;
    CU_ASSERT_EQUAL(limits_set(D, 0, hard), 0);
    CU_ASSERT_EQUAL(D->seg.hdr->hard_limit, hard);
    int64_t a = alloc_large(&t, 128), b = alloc_large(&t, 128);
    CU_ASSERT(a >= 0 && b >= 0);
    CU_ASSERT(resident() <= hard);
    drain(&t);
    CU_ASSERT_EQUAL(alloc_large(&t, 128), -ENOMEM);
    seen_t s = drain(&t), so = drain(&other);
    CU_ASSERT(s.flushes >= 1 && s.pressures >= 1 && s.max_level == PRESSURE_HARD && s.bytes > 0);
    CU_ASSERT(so.pressures >= 1 && so.max_level == PRESSURE_HARD);    /* the heap-wide limit: everyone */
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.hard_limit_refusals, 1);
    CU_ASSERT(li.pressure_sent >= 2 && li.flush_sent >= 2);
    CU_ASSERT_EQUAL(D->seg.hdr->hard_limit_refusals, 1);
    CU_ASSERT(resident() <= hard);
    /* a second refusal right away still tells the requester (not the others: rate limit) */
    CU_ASSERT_EQUAL(alloc_large(&t, 128), -ENOMEM);
    s = drain(&t);
    so = drain(&other);
    CU_ASSERT(s.pressures == 1 && so.pressures == 0);
    /* free one: its pages are free but committed; the next allocation releases them first */
    free_large(&t, a);
    int64_t c = alloc_large(&t, 128);
    CU_ASSERT(c >= 0);
    CU_ASSERT(resident() <= hard);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    /* a large request that can never fit */
    CU_ASSERT_EQUAL(alloc_large(&t, 512), -ENOMEM);
    free_large(&t, b);
    free_large(&t, c);
    CU_ASSERT(alloc_large(&t, 300) >= 0);   /* 2.3 MiB fits once the others are gone */
    CU_ASSERT(resident() <= hard);
    rmclient(&t);
    rmclient(&other);
    teardown();
}

/* Soft limit: allocations succeed past it; overshoot recorded; clients told;
 * the scavenge assist releases free pages before committing new ones. */
static void test_soft_limit(void)
{
    setup();
    tclient_t t = mkclient();
    uint64_t base = limits_committed(D);
    /* assist: A at the bottom freed, B live above; C must land on fresh pages */
    int64_t a = alloc_large(&t, 128), b = alloc_large(&t, 512);
    CU_ASSERT_FATAL(a == 0 && b == 128);
    free_large(&t, a);
    uint64_t soft = base + 6 * MiB + 64 * 1024;            /* room for the spans' metadata */
    CU_ASSERT_EQUAL(limits_set(D, soft, 0), 0);
    CU_ASSERT(limits_committed(D) >= base + 5 * MiB);      /* under 95%: nothing released yet */
    int64_t c = alloc_large(&t, 256);
    CU_ASSERT_FATAL(c >= 640);
    CU_ASSERT(page_scavenged(0) && page_scavenged(127));  /* A's pages went first */
    CU_ASSERT(limits_committed(D) <= soft);
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.overshoot_max, 0);
    drain(&t);

    /* live data past the limit: allocations succeed, the overshoot is a stat */
    int64_t more[4];
    for (int i = 0; i < 4; i++) {
        more[i] = alloc_large(&t, 128);
        CU_ASSERT(more[i] >= 0);
    }
    limits_get(D, &li);
    CU_ASSERT(li.committed > soft);
    CU_ASSERT(li.overshoot_max >= li.committed - soft);
    CU_ASSERT_EQUAL(D->seg.hdr->overshoot_max, li.overshoot_max);
    seen_t s = drain(&t);
    CU_ASSERT(s.flushes >= 1 && s.pressures >= 1 && s.max_level == PRESSURE_OVER && s.bytes > 0);
    CU_ASSERT_EQUAL(li.hard_limit_refusals, 0);

    /* freed: the background slice goes eagerly down to 95% of the limit */
    for (int i = 0; i < 4; i++)
        free_large(&t, more[i]);
    free_large(&t, b);
    free_large(&t, c);
    for (int i = 0; i < 10 && limits_committed(D) > soft / 100 * SCAV_LIMIT_GOAL_PCT; i++)
        scav_slice(D);
    CU_ASSERT(limits_committed(D) <= soft / 100 * SCAV_LIMIT_GOAL_PCT);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    rmclient(&t);
    teardown();
}

/* Run-time changes: validation, lowering releases at once, 0 = none. */
static void test_limits_set(void)
{
    setup();
    tclient_t t = mkclient();
    CU_ASSERT_EQUAL(limits_set(D, 8 * MiB, 4 * MiB), -EINVAL);
    CU_ASSERT_EQUAL(limits_set(D, 8 * MiB, 8 * MiB), 0);
    CU_ASSERT_EQUAL(limits_set(D, 0, 4 * MiB), 0);          /* one without the other is fine */
    CU_ASSERT_EQUAL(limits_set(D, 0, 0), 0);
    uint64_t base = limits_committed(D);
    int64_t ids[4];
    for (int i = 0; i < 4; i++)
        ids[i] = alloc_large(&t, 256);              /* 8 MiB, no limit: no pressure at all */
    for (int i = 0; i < 4; i++)
        free_large(&t, ids[i]);
    seen_t s = drain(&t);
    CU_ASSERT_EQUAL(s.pressures + s.flushes, 0);
    CU_ASSERT(limits_committed(D) >= base + 8 * MiB);
    uint64_t soft = base + 2 * MiB;
    CU_ASSERT_EQUAL(limits_set(D, soft, 0), 0);
    CU_ASSERT(limits_committed(D) <= soft / 100 * SCAV_LIMIT_GOAL_PCT);
    CU_ASSERT_EQUAL(D->seg.hdr->soft_limit, soft);
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.soft_limit, soft);
    CU_ASSERT_EQUAL(li.hard_limit, 0);
    CU_ASSERT(li.scavenge_runs >= 1);
    CU_ASSERT_EQUAL(limits_set(D, 0, 0), 0);
    CU_ASSERT_EQUAL(D->seg.hdr->soft_limit, 0);
    rmclient(&t);
    teardown();
}

static int64_t refill(tclient_t *t, unsigned cls, unsigned count)
{
    Heapd__Refill r = HEAPD__REFILL__INIT;
    r.sizeclass = cls;
    r.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 3;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &r;
    CU_ASSERT_FATAL(send_msg(t->c, &m) == RPC_OK);
    Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT_FATAL(rep != NULL);
    int64_t v = rep->body_case == HEAPD__DAEMON_MSG__BODY_SPANS ? (int64_t)rep->spans->n_span_ids
                : rep->body_case == HEAPD__DAEMON_MSG__BODY_ERROR ? -rep->error->err : -EPROTO;
    heapd__daemon_msg__free_unpacked(rep, NULL);
    return v;
}

/* Quotas: one client refused, the other not; frees by anyone uncharge. */
static void test_quota(void)
{
    setup();
    tclient_t a = mkclient(), b = mkclient();
    Heapd__SetQuota q = HEAPD__SET_QUOTA__INIT;
    q.bytes = 1 * MiB;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 5;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_QUOTA;
    m.set_quota = &q;
    CU_ASSERT_FATAL(send_msg(a.c, &m) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT(r && r->body_case == HEAPD__DAEMON_MSG__BODY_ACK && r->seq == 5);
    if (r)
        heapd__daemon_msg__free_unpacked(r, NULL);

    int64_t x = alloc_large(&a, 64), y = alloc_large(&a, 64);
    CU_ASSERT(x >= 0 && y >= 0);
    CU_ASSERT_EQUAL(limits_charged(D, a.c->id), 1 * MiB);
    CU_ASSERT_EQUAL(alloc_large(&a, 1), -ENOMEM);
    seen_t s = drain(&a), so = drain(&b);
    CU_ASSERT(s.pressures == 1 && s.flushes == 1 && s.max_level == PRESSURE_HARD);
    CU_ASSERT_EQUAL(so.pressures + so.flushes, 0);          /* a quota is nobody else's business */
    int64_t big = alloc_large(&b, 1024);                    /* no quota: 8 MiB is fine */
    CU_ASSERT(big >= 0);
    CU_ASSERT_EQUAL(limits_charged(D, b.c->id), 8 * MiB);
    free_large(&b, x);                                      /* b frees a's object: a is uncharged */
    CU_ASSERT_EQUAL(limits_charged(D, a.c->id), MiB / 2);
    CU_ASSERT(alloc_large(&a, 64) >= 0);
    /* small spans: refills that take new pages are charged; the quota holds */
    int64_t n;
    unsigned got = 0;
    free_large(&a, y);
    while ((n = refill(&a, 67, 8)) > 0)
        got += (unsigned)n;
    CU_ASSERT_EQUAL(n, -ENOMEM);
    CU_ASSERT(got > 0);
    CU_ASSERT(limits_charged(D, a.c->id) <= 1 * MiB);
    CU_ASSERT(limits_charged(D, a.c->id) + hd_span_bytes(67) > 1 * MiB);
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT(li.hard_limit_refusals >= 2);
    uint32_t aid = a.c->id;
    rmclient(&a);                                           /* its spans are reclaimed, account gone */
    CU_ASSERT_EQUAL(limits_charged(D, aid), 0);
    free_large(&b, big);
    rmclient(&b);
    teardown();
}

/* Background slices: the retain goal holds freed memory briefly, then it is
 * released; pacing sleeps; back to metadata only. */
static void test_background(void)
{
    setup();
    tclient_t t = mkclient();
    int64_t id = alloc_large(&t, 2048);                     /* 16 MiB */
    CU_ASSERT_FATAL(id >= 0);
    uint64_t t0 = test_now_ms(), released_at = 0;               /* before the slice that sees 16 MiB in use */
    CU_ASSERT_EQUAL(scav_slice(D), SCAV_IDLE_MS);           /* all in use: nothing to do */
    free_large(&t, id);
    uint64_t freed_at = limits_committed(D);
    while (limits_committed(D) > D->seg.meta_committed && test_now_ms() - t0 < 5000) {
        uint64_t ms = scav_slice(D);
        CU_ASSERT(ms >= 1);                                 /* no soft limit: never eager */
        if (!released_at && limits_committed(D) < freed_at)
            released_at = test_now_ms();
        test_pause_ms(ms > 50 ? 50 : (unsigned)ms);        /* pacing: the timer's sleep between slices */
    }
    /* it was released, and not before the retain goal had decayed a step
     * (a lower bound: a slow machine only makes it later) */
    CU_ASSERT(released_at != 0);
    CU_ASSERT(released_at >= t0 + RETAIN_TEST_MS);
    CU_ASSERT(limits_committed(D) < freed_at);
    CU_ASSERT_EQUAL(limits_committed(D), D->seg.meta_committed);
    CU_ASSERT_EQUAL(limits_committed(D), resident());
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT(li.scavenge_runs >= 1);
    CU_ASSERT(li.scavenged_total >= 16 * MiB);
    rmclient(&t);
    teardown();
}

/* Over 95% of the soft limit with nothing to release: Pressure{1}, then {2}. */
static void test_pressure_levels(void)
{
    setup();
    tclient_t t = mkclient();
    uint64_t base = limits_committed(D);
    int64_t id = alloc_large(&t, 128 * 3);                 /* 3 MiB live */
    CU_ASSERT(id >= 0);
    drain(&t);
    CU_ASSERT_EQUAL(limits_set(D, 0, 0), 0);
    /* 3 MiB + metadata is over 95% of 3.1 MiB, under 3.1 MiB: near */
    CU_ASSERT_EQUAL(limits_set(D, base + 3 * MiB + 100 * 1024, 0), 0);
    seen_t s = drain(&t);
    CU_ASSERT(s.pressures == 1 && s.max_level == PRESSURE_NEAR);
    CU_ASSERT_EQUAL(limits_set(D, base + 2 * MiB, 0), 0);
    s = drain(&t);
    CU_ASSERT(s.pressures == 1 && s.max_level == PRESSURE_OVER && s.flushes == 1);
    CU_ASSERT(s.bytes >= MiB);
    free_large(&t, id);
    rmclient(&t);
    teardown();
}

static void register_scavenge_suite(void)
{
    CU_pSuite s = CU_add_suite("scavenge", NULL, NULL);
    CU_add_test(s, "committed = in use + free unreleased + metadata = st_blocks", test_counting);
    CU_add_test(s, "release order: high first, whole huge pages", test_order);
    CU_add_test(s, "hard limit: pressure, refusal, room from free pages", test_hard_limit);
    CU_add_test(s, "soft limit: assist, overshoot, pressure, eager", test_soft_limit);
    CU_add_test(s, "limits_set: validation, release at once", test_limits_set);
    CU_add_test(s, "quotas: per client, uncharged by any free", test_quota);
    CU_add_test(s, "background: retain goal, pacing, back to metadata", test_background);
    CU_add_test(s, "pressure levels near and over", test_pressure_levels);
}
UNIT_SUITE(register_scavenge_suite)
