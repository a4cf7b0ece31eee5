/* Unit tests of the daemon's memstats (daemon/mstats.c) and control requests
 * (daemon/control.c), without a loop: client records over socketpairs, RPCs
 * through rpc_handle, control requests through control_handle.
 *  - stats slots: assignment at Hello, owner, round-robin reuse, fold of a
 *    gone client's counters into the retired totals;
 *  - the consistent read: a writer thread updating a slot the way libheapd
 *    does (seq odd, counters, seq even) never shows the reader a mix, and a
 *    writer stuck mid-update makes the reader fall back to the last copy;
 *  - the derived numbers (Go's formulas) and the invariants: Mallocs - Frees
 *    = HeapObjects, HeapSys = HeapInuse + HeapIdle, HeapIdle = free +
 *    released, rows add up to the totals;
 *  - the Prometheus text passes the exposition-format checker (which is
 *    itself shown to reject malformed text);
 *  - control requests: Stats, Clients, SetLimit/GetLimit, Scavenge, Flush,
 *    malformed ones;
 *  - libheapd's counting end to end in one process: the client library,
 *    installed over this daemon's own segment with a stand-in transport that
 *    calls rpc_handle, allocates and frees; the daemon's numbers are exact. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "control.pb-c.h"
#include "daemon.h"
#include "heapd.h"
#include "heapd.pb-c.h"
#include "internal.h"
#include "mstats.h"
#include "promcheck.h"
#include "rpc.h"
#include "daemon_fixture.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

typedef struct tclient {
    client_t *c;
    int peer;
    uint32_t slot;
} tclient_t;

static void setup(void) { D = fx_daemon_new(TEST_SIZE, 0x3c0000000000ull + (uint64_t)(nbase++) * (4ull << 30)); }

static void teardown(void)
{
    fx_daemon_free(D);
    D = NULL;
}

static enum rpc_verdict send_msg(client_t *c, Heapd__ClientMsg *m) { return fx_send(D, c, m, &OUT); }

static tclient_t mkclient(void)
{
    tclient_t t = {0};
    t.c = fx_client(D, &OUT, &t.peer, &t.slot);
    return t;
}

static void rmclient(tclient_t *t)
{
    client_close(D, t->c, "test done");
    close(t->peer);
}

static int64_t alloc_large(tclient_t *t, uint64_t pages) { return fx_alloc_large(D, t->c, &OUT, pages); }

static void free_large(tclient_t *t, uint32_t id)
{
    uint32_t gen = D->seg.view.spans[id].gen;
    Heapd__FreeLarge f = HEAPD__FREE_LARGE__INIT;
    f.n_span_ids = f.n_gens = 1;
    f.span_ids = &id;
    f.gens = &gen;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
    m.free_large = &f;
    CU_ASSERT(send_msg(t->c, &m) == RPC_OK);
}

static int refill(tclient_t *t, unsigned cls, unsigned count)
{
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = cls;
    rf.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 9;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    CU_ASSERT_FATAL(send_msg(t->c, &m) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    int n = r && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS ? (int)r->spans->n_span_ids : -1;
    heapd__daemon_msg__free_unpacked(r, NULL);
    return n;
}

/* The writer's side, as libheapd does it (client/cstats.c, through shm/cstats.h). */
static void slot_add(uint32_t slot, unsigned cls, uint64_t mallocs, uint64_t frees, uint64_t tiny, uint64_t large,
                     uint64_t large_bytes)
{
    hd_cstats_t *s = mstats_slot_map(D, slot);
    uint64_t q = hd_cstats_begin(s);
    hd_cstats_add(&s->small_allocs[cls], mallocs);
    hd_cstats_add(&s->small_frees[cls], frees);
    hd_cstats_add(&s->tiny_allocs, tiny);
    hd_cstats_add(&s->large_allocs, large);
    hd_cstats_add(&s->large_alloc_bytes, large_bytes);
    hd_cstats_end(s, q);
}

/* The invariants every snapshot must satisfy. */
static void check_invariants(const mstats_t *m)
{
    CU_ASSERT_EQUAL(m->heap_sys, m->heap_inuse + m->heap_idle);
    CU_ASSERT_EQUAL(m->heap_idle, m->heap_free + m->heap_released);
    CU_ASSERT(m->mallocs >= m->frees);
    CU_ASSERT_EQUAL(m->mallocs - m->frees, m->heap_objects);
    CU_ASSERT_EQUAL(m->alloc, m->heap_alloc);
    uint64_t ma = m->tiny_allocs + m->large_allocs, mf = m->tiny_allocs + m->large_frees;
    uint64_t ab = m->large_alloc_bytes, fb = m->large_free_bytes;
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        ma += m->by_size[k].mallocs;
        mf += m->by_size[k].frees;
        ab += m->by_size[k].mallocs * m->by_size[k].size;
        fb += m->by_size[k].frees * m->by_size[k].size;
        CU_ASSERT_EQUAL(m->by_size[k].size, hd_class_to_size[k]);
    }
    CU_ASSERT_EQUAL(ma, m->mallocs);
    CU_ASSERT_EQUAL(mf, m->frees);
    CU_ASSERT_EQUAL(ab, m->total_alloc);
    CU_ASSERT_EQUAL(ab - fb, m->heap_alloc);
    CU_ASSERT(m->mspan_inuse <= m->mspan_sys);
    CU_ASSERT_EQUAL(m->sys, m->heap_sys + m->mspan_sys + m->mcache_sys + m->other_sys);
    CU_ASSERT_EQUAL(m->heap_inuse, D->seg.hdr->pages_inuse * HD_PAGE_SIZE);
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_slots(void)
{
    setup();
    tclient_t a = mkclient(), b = mkclient();
    CU_ASSERT(a.slot >= 1 && a.slot < HD_STAT_SLOTS);
    CU_ASSERT(b.slot >= 1 && b.slot < HD_STAT_SLOTS && b.slot != a.slot);
    CU_ASSERT_EQUAL(a.c->stat_slot, a.slot);
    CU_ASSERT_EQUAL(atomic_load(&mstats_slot_map(D, a.slot)->owner), a.c->id);
    CU_ASSERT_EQUAL(atomic_load(&mstats_slot_map(D, b.slot)->owner), b.c->id);
    CU_ASSERT_EQUAL(D->ms.slots_used, 2);
    /* each slot is a one-page memfd of its own, sealed */
    int fa = mstats_slot_fd(D, a.slot), fb = mstats_slot_fd(D, b.slot);
    struct stat sa_st, sb_st;
    CU_ASSERT_FATAL(fa >= 0 && fb >= 0 && fa != fb && fstat(fa, &sa_st) == 0 && fstat(fb, &sb_st) == 0);
    CU_ASSERT(sa_st.st_ino != sb_st.st_ino && sa_st.st_size >= (off_t)sizeof(hd_cstats_t));
    CU_ASSERT_EQUAL(fcntl(fa, F_GET_SEALS) & (F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW),
                    F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW);
    uint32_t sa = a.slot;
    rmclient(&a);
    CU_ASSERT_PTR_NULL(mstats_slot_map(D, sa));            /* its memfd is unmapped and closed */
    CU_ASSERT_EQUAL(mstats_slot_fd(D, sa), -1);
    CU_ASSERT_EQUAL(D->ms.slots_used, 1);
    tclient_t c = mkclient();                       /* round robin: not the slot just freed */
    CU_ASSERT(c.slot != sa && c.slot != b.slot && c.slot != 0);
    /* a client without Hello has no slot */
    client_t *raw = client_new(D, -1, 1, getuid());
    CU_ASSERT_EQUAL(raw->stat_slot, 0);
    mstats_counters_t z;
    CU_ASSERT_TRUE(mstats_slot_read(D, 0, &z));     /* slot 0: nothing, and no crash */
    CU_ASSERT_EQUAL(z.tiny_allocs, 0);
    rmclient(&b);
    rmclient(&c);
    teardown();
}

/* Every counter of the slot is set to the same k by one update. */
typedef struct writer_arg {
    uint32_t slot;
    _Atomic bool stop;
    _Atomic uint64_t updates;
} writer_arg_t;

static void *writer(void *arg)
{
    writer_arg_t *w = arg;
    hd_cstats_t *s = mstats_slot_map(D, w->slot);
    for (uint64_t k = 1; !atomic_load_explicit(&w->stop, memory_order_relaxed); k++) {
        uint64_t q = hd_cstats_begin(s);
        for (unsigned c = 0; c < HD_NUM_SIZE_CLASSES; c++) {
            hd_cstats_set(&s->small_allocs[c], k);
            hd_cstats_set(&s->small_frees[c], k);
        }
        hd_cstats_set(&s->tiny_allocs, k);
        hd_cstats_set(&s->large_allocs, k);
        hd_cstats_set(&s->large_free_bytes, k);
        hd_cstats_end(s, q);
        atomic_store_explicit(&w->updates, k, memory_order_relaxed);
    }
    return NULL;
}

static void test_consistent_read(void)
{
    setup();
    tclient_t t = mkclient();
    writer_arg_t w = {.slot = t.slot};
    pthread_t th;
    CU_ASSERT_FATAL(pthread_create(&th, NULL, writer, &w) == 0);
    /* until both sides made 2000 passes (a deadline only for a stuck thread) */
    uint64_t t0 = test_now_ms();
    uint64_t reads = 0, torn = 0, last = 0, backwards = 0;
    do {
        mstats_counters_t c;
        mstats_slot_read(D, t.slot, &c);
        uint64_t k = c.tiny_allocs;
        bool ok = c.large_allocs == k && c.large_free_bytes == k;
        for (unsigned i = 0; i < HD_NUM_SIZE_CLASSES; i++)
            ok = ok && c.small_allocs[i] == k && c.small_frees[i] == k;
        torn += !ok;
        backwards += k < last;
        last = k;
        reads++;
    } while ((reads < 2000 || atomic_load(&w.updates) < 2000) && test_now_ms() - t0 < 20000);
    atomic_store(&w.stop, true);
    pthread_join(th, NULL);
    CU_ASSERT_EQUAL(torn, 0);
    CU_ASSERT_EQUAL(backwards, 0);
    CU_ASSERT(reads >= 2000);
    CU_ASSERT(atomic_load(&w.updates) >= 2000);

    /* a writer stuck mid-update: the reader gives the last consistent copy */
    mstats_counters_t good, c;
    CU_ASSERT_TRUE(mstats_slot_read(D, t.slot, &good));
    hd_cstats_t *s = mstats_slot_map(D, t.slot);
    atomic_fetch_add(&s->seq, 1);                   /* odd */
    atomic_store(&s->tiny_allocs, good.tiny_allocs + 1000);
    uint64_t stale = D->ms.slot_stale;
    CU_ASSERT_FALSE(mstats_slot_read(D, t.slot, &c));
    CU_ASSERT_EQUAL(D->ms.slot_stale, stale + 1);
    CU_ASSERT_EQUAL(c.tiny_allocs, good.tiny_allocs);
    CU_ASSERT(D->ms.slot_retries >= MSTATS_READ_TRIES);
    /* it died like that: the fold takes its latest values */
    mstats_t m;
    mstats_read(D, &m);
    uint64_t tiny_before = m.tiny_allocs;
    rmclient(&t);
    mstats_read(D, &m);
    CU_ASSERT_EQUAL(m.tiny_allocs, tiny_before + 1000);
    teardown();
}

static void test_fold_and_totals(void)
{
    setup();
    tclient_t a = mkclient(), b = mkclient();
    unsigned c5 = 5, c2 = HD_TINY_SIZE_CLASS;
    slot_add(a.slot, c5, 10, 3, 7, 2, 5 * HD_PAGE_SIZE);
    slot_add(b.slot, c5, 0, 4, 0, 0, 0);            /* b frees what a allocated */
    slot_add(b.slot, c2, 6, 1, 0, 0, 0);
    mstats_t m;
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.by_size[c5].mallocs, 10);
    CU_ASSERT_EQUAL(m.by_size[c5].frees, 7);
    CU_ASSERT_EQUAL(m.mallocs, 10 + 6 + 7 + 2);
    CU_ASSERT_EQUAL(m.frees, 7 + 1 + 7);
    CU_ASSERT_EQUAL(m.heap_objects, 3 + 5 + 2);
    CU_ASSERT_EQUAL(m.total_alloc, 10ull * hd_class_to_size[c5] + 6ull * 16 + 5 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(m.heap_alloc, 3ull * hd_class_to_size[c5] + 5ull * 16 + 5 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(m.large_allocs, 2);
    /* per client */
    mstats_client_t ca, cb;
    mstats_client(D, a.c, &ca);
    mstats_client(D, b.c, &cb);
    CU_ASSERT_EQUAL(ca.mallocs, 19);
    CU_ASSERT_EQUAL(ca.alloc_bytes, 10ull * hd_class_to_size[c5] + 5 * HD_PAGE_SIZE);
    CU_ASSERT(cb.live_bytes < (int64_t)(6 * 16));  /* b freed a's objects */
    /* a goes: its counts stay in the totals (its live objects are in pages
     * in use: the daemon folds no more live bytes than those can hold) */
    CU_ASSERT_FATAL(mheap_alloc_span(&D->heap, 16, 0, 0, 0) >= 0);
    rmclient(&a);
    mstats_t m2;
    mstats_read(D, &m2);
    check_invariants(&m2);
    CU_ASSERT_EQUAL(m2.mallocs, m.mallocs);
    CU_ASSERT_EQUAL(m2.frees, m.frees);
    CU_ASSERT_EQUAL(m2.total_alloc, m.total_alloc);
    CU_ASSERT_EQUAL(m2.by_size[c5].mallocs, 10);
    /* a new client in a new (zeroed) slot adds nothing */
    tclient_t c = mkclient();
    mstats_read(D, &m2);
    CU_ASSERT_EQUAL(m2.mallocs, m.mallocs);
    slot_add(c.slot, c5, 0, 3, 0, 0, 0);            /* c frees the rest of a's class-5 objects */
    slot_add(c.slot, c2, 0, 5, 0, 0, 0);
    slot_add(c.slot, 0, 0, 0, 0, 0, 0);
    hd_cstats_t *s = mstats_slot_map(D, c.slot);
    atomic_store(&s->large_frees, 2);
    atomic_store(&s->large_free_bytes, 5 * HD_PAGE_SIZE);
    mstats_read(D, &m2);
    check_invariants(&m2);
    CU_ASSERT_EQUAL(m2.heap_objects, 0);
    CU_ASSERT_EQUAL(m2.heap_alloc, 0);
    rmclient(&b);
    rmclient(&c);
    mstats_read(D, &m2);
    CU_ASSERT_EQUAL(m2.heap_objects, 0);
    CU_ASSERT_EQUAL(m2.clients, 0);
    teardown();
}

static void test_books(void)
{
    setup();
    tclient_t t = mkclient();
    mstats_t m;
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.heap_sys, 0);                 /* nothing grown yet */
    CU_ASSERT_EQUAL(m.heap_capacity, TEST_SIZE);
    int64_t big = alloc_large(&t, 100);
    CU_ASSERT_FATAL(big >= 0);
    CU_ASSERT(refill(&t, 5, 4) == 4);
    CU_ASSERT(refill(&t, 30, 2) == 2);
    mstats_read(D, &m);
    check_invariants(&m);
    uint64_t want_pages = 100 + 4 * hd_class_to_npages[5] + 2 * hd_class_to_npages[30];
    CU_ASSERT_EQUAL(m.heap_inuse, want_pages * HD_PAGE_SIZE);
    CU_ASSERT(m.heap_sys >= MHEAP_GROW_PAGES * HD_PAGE_SIZE || m.heap_sys == TEST_SIZE);
    CU_ASSERT_EQUAL(m.spans_large, 1);
    CU_ASSERT_EQUAL(m.spans_cached, 6);
    CU_ASSERT_EQUAL(m.rpc_count[MS_RPC_HELLO], 1);
    CU_ASSERT_EQUAL(m.rpc_count[MS_RPC_ALLOC_LARGE], 1);
    CU_ASSERT_EQUAL(m.rpc_count[MS_RPC_REFILL], 2);
    uint64_t hist = 0;
    for (unsigned k = 0; k < MSTATS_RPC_BUCKETS; k++)
        hist += m.rpc_hist[k];
    CU_ASSERT_EQUAL(hist, 4);
    CU_ASSERT(m.mspan_inuse >= 7 * (sizeof(hd_span_t)));
    free_large(&t, (uint32_t)big);
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.rpc_count[MS_RPC_FREE_LARGE], 1);
    CU_ASSERT_EQUAL(m.spans_large, 0);
    /* the client goes: its spans go central or back; the books still add up */
    rmclient(&t);
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.spans_cached, 0);
    CU_ASSERT_EQUAL(m.clients, 0);
    CU_ASSERT_EQUAL(m.clients_total, 1);
    teardown();
}

static void test_prometheus(void)
{
    setup();
    tclient_t t = mkclient();
    slot_add(t.slot, 7, 100, 40, 9, 3, 12 * HD_PAGE_SIZE);
    slot_add(t.slot, 60, 5, 5, 0, 0, 0);
    CU_ASSERT(refill(&t, 7, 1) == 1);
    CU_ASSERT(alloc_large(&t, 3) >= 0);
    mstats_t m;
    mstats_read(D, &m);
    size_t len;
    char *text = mstats_prometheus(&m, &len);
    CU_ASSERT_FATAL(text != NULL);
    CU_ASSERT_EQUAL(strlen(text), len);
    char err[256] = "";
    bool ok = prom_check(text, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "prometheus text: %s\n", err);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_memory_classes_heap_objects_bytes"),
                    (double)(m.heap_alloc < m.heap_inuse ? m.heap_alloc : m.heap_inuse));
    CU_ASSERT_EQUAL(prom_value(text, "heapd_gc_heap_allocs_objects_total"), (double)m.mallocs);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_gc_heap_allocs_by_size_bytes_count"), (double)(m.mallocs - m.tiny_allocs));
    char key[128];
    snprintf(key, sizeof(key), "heapd_size_class_objects{class=\"7\",size=\"%u\"}", hd_class_to_size[7]);
    CU_ASSERT_EQUAL(prom_value(text, key), 60.0);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_spans{state=\"large\"}"), 1.0);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_rpc_requests_total{type=\"refill\"}"), 1.0);
    /* refill waits: what the slots say, the time in seconds */
    hd_cstats_t *cs = mstats_slot_map(D, t.slot);
    uint64_t q = hd_cstats_begin(cs);
    hd_cstats_add(&cs->refill_waits, 4);
    hd_cstats_add(&cs->refill_wait_ns, 3000000000ull);
    hd_cstats_end(cs, q);
    mstats_read(D, &m);
    free(text);
    text = mstats_prometheus(&m, &len);
    CU_ASSERT_FATAL(text != NULL);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_refill_waits_total"), 4.0);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_refill_wait_seconds_total"), 3.0);
    /* the memory classes add up to the total */
    double sum = prom_value(text, "heapd_memory_classes_heap_objects_bytes") +
                 prom_value(text, "heapd_memory_classes_heap_unused_bytes") +
                 prom_value(text, "heapd_memory_classes_heap_free_bytes") +
                 prom_value(text, "heapd_memory_classes_heap_released_bytes") +
                 prom_value(text, "heapd_memory_classes_metadata_mspan_inuse_bytes") +
                 prom_value(text, "heapd_memory_classes_metadata_mspan_free_bytes") +
                 prom_value(text, "heapd_memory_classes_metadata_mcache_inuse_bytes") +
                 prom_value(text, "heapd_memory_classes_metadata_other_bytes");
    CU_ASSERT_EQUAL(sum, prom_value(text, "heapd_memory_classes_total_bytes"));
    free(text);

    /* the checker is not vacuous */
    static const char *const bad[] = {
        "x 1",                                                  /* no final newline */
        "9x 1\n",                                               /* bad name */
        "x{a=\"b} 1\n",                                         /* unterminated value */
        "x{a=\"\\t\"} 1\n",                                     /* bad escape */
        "x{a=\"1\",a=\"2\"} 1\n",                               /* label twice */
        "x one\n",                                              /* bad value */
        "# TYPE x counter\nx -1\n",                             /* negative counter */
        "# TYPE x gauge\n# TYPE x gauge\nx 1\n",                /* TYPE twice */
        "x 1\n# TYPE x gauge\n",                                /* TYPE after samples */
        "x 1\ny 1\nx 2\n",                                      /* not contiguous */
        "x 1\nx 2\n",                                           /* sample twice */
        "# TYPE x wibble\nx 1\n",                               /* bad type */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n",          /* no +Inf */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 3\nh_sum 1\nh_count 2\n",       /* count mismatch */
        "# TYPE h histogram\nh 1\n",                             /* a plain sample in a histogram */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool r = prom_check(bad[i], err, sizeof(err));
        if (r)
            fprintf(stderr, "promcheck accepted bad case %zu\n", i);
        CU_ASSERT_FALSE(r);
    }
    CU_ASSERT_TRUE(prom_check("# HELP x a \\\\ b \\n c\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\",} -3.5e+07 1700000000000\n"
                              "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1.5\nh_count 2\n"
                              "untyped_thing NaN\n",
                              err, sizeof(err)));
    rmclient(&t);
    teardown();
}

/* control_handle: a request in, a reply out. */
static Heapdctl__ControlReply *ctl(Heapdctl__ControlRequest *q, int *rc) { return fx_control(D, q, rc); }

static void test_control_requests(void)
{
    setup();
    tclient_t a = mkclient(), b = mkclient();
    slot_add(a.slot, 9, 20, 2, 0, 0, 0);
    int rc;

    Heapdctl__StatsRequest sq = HEAPDCTL__STATS_REQUEST__INIT;
    Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
    q.seq = 77;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_STATS;
    q.stats = &sq;
    Heapdctl__ControlReply *r = ctl(&q, &rc);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(r->seq, 77);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_STATS);
    CU_ASSERT_EQUAL(r->stats->mallocs, 20);
    CU_ASSERT_EQUAL(r->stats->heap_objects, 18);
    CU_ASSERT_EQUAL(r->stats->n_by_size, HD_NUM_SIZE_CLASSES - 1);
    CU_ASSERT_EQUAL(r->stats->by_size[8]->size_class, 9);
    CU_ASSERT_EQUAL(r->stats->by_size[8]->mallocs, 20);
    CU_ASSERT_EQUAL(r->stats->clients, 2);
    CU_ASSERT_EQUAL(r->stats->n_rpc, MS_RPC_NTYPES);
    CU_ASSERT(r->stats->limits != NULL);
    heapdctl__control_reply__free_unpacked(r, NULL);

    Heapdctl__ClientsRequest cq = HEAPDCTL__CLIENTS_REQUEST__INIT;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS;
    q.clients = &cq;
    r = ctl(&q, &rc);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS);
    CU_ASSERT_EQUAL(r->clients->n_clients, 2);
    for (size_t i = 0; i < r->clients->n_clients; i++) {
        const Heapdctl__ClientInfo *ci = r->clients->clients[i];
        CU_ASSERT_EQUAL(ci->pid, 4242);
        CU_ASSERT_STRING_EQUAL(ci->name, "unit");
        if (ci->id == a.c->id) {
            CU_ASSERT_EQUAL(ci->mallocs, 20);
            CU_ASSERT_EQUAL(ci->live_bytes, 18 * (int64_t)hd_class_to_size[9]);
            CU_ASSERT_EQUAL(ci->slot, a.slot);
        }
    }
    heapdctl__control_reply__free_unpacked(r, NULL);

    Heapdctl__SetLimitRequest sl = HEAPDCTL__SET_LIMIT_REQUEST__INIT;
    sl.set_soft = true;
    sl.soft = 32u << 20;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_SET_LIMIT;
    q.set_limit = &sl;
    r = ctl(&q, &rc);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_LIMITS);
    CU_ASSERT_EQUAL(r->limits->soft_limit, 32u << 20);
    heapdctl__control_reply__free_unpacked(r, NULL);
    limits_info_t li;
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.soft_limit, 32u << 20);
    CU_ASSERT_EQUAL(li.hard_limit, 0);
    sl.set_soft = false;                            /* hard alone, below the soft: refused */
    sl.set_hard = true;
    sl.hard = 16u << 20;
    r = ctl(&q, &rc);
    CU_ASSERT_EQUAL(rc, 0);                         /* a refusal, not a malformed request */
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_ERROR);
    CU_ASSERT_EQUAL(r->error->err, EINVAL);
    heapdctl__control_reply__free_unpacked(r, NULL);
    limits_get(D, &li);
    CU_ASSERT_EQUAL(li.hard_limit, 0);
    sl.hard = 48u << 20;
    r = ctl(&q, &rc);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_LIMITS);
    CU_ASSERT_EQUAL(r->limits->hard_limit, 48u << 20);
    CU_ASSERT_EQUAL(r->limits->soft_limit, 32u << 20);
    heapdctl__control_reply__free_unpacked(r, NULL);
    sl.set_soft = sl.set_hard = true;
    sl.soft = sl.hard = 0;
    r = ctl(&q, &rc);
    CU_ASSERT(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_LIMITS && r->limits->soft_limit == 0 &&
              r->limits->hard_limit == 0);
    heapdctl__control_reply__free_unpacked(r, NULL);

    Heapdctl__GetLimitRequest gl = HEAPDCTL__GET_LIMIT_REQUEST__INIT;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_GET_LIMIT;
    q.get_limit = &gl;
    r = ctl(&q, &rc);
    CU_ASSERT(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_LIMITS);
    heapdctl__control_reply__free_unpacked(r, NULL);

    /* Scavenge: a freed large object's pages are released */
    int64_t big = alloc_large(&a, 64);
    CU_ASSERT_FATAL(big >= 0);
    free_large(&a, (uint32_t)big);
    Heapdctl__ScavengeRequest sc = HEAPDCTL__SCAVENGE_REQUEST__INIT;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_SCAVENGE;
    q.scavenge = &sc;
    r = ctl(&q, &rc);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_SCAVENGE);
    CU_ASSERT(r->scavenge->released >= 64 * HD_PAGE_SIZE);
    heapdctl__control_reply__free_unpacked(r, NULL);
    mstats_t m;
    mstats_read(D, &m);
    CU_ASSERT_EQUAL(m.heap_free, 0);                /* every free page released */
    check_invariants(&m);

    /* Flush: every client that said Hello is asked */
    Heapdctl__FlushRequest fq = HEAPDCTL__FLUSH_REQUEST__INIT;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH;
    q.flush = &fq;
    r = ctl(&q, &rc);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_FLUSH);
    CU_ASSERT_EQUAL(r->flush->clients, 2);
    heapdctl__control_reply__free_unpacked(r, NULL);
    uint8_t pk[256];
    bool got_flush = false;
    ssize_t n;
    while ((n = recv(a.peer, pk, sizeof(pk), MSG_DONTWAIT)) > 0) {
        Heapd__DaemonMsg *dm = heapd__daemon_msg__unpack(NULL, (size_t)n, pk);
        got_flush |= dm && dm->body_case == HEAPD__DAEMON_MSG__BODY_FLUSH && dm->seq == 0;
        heapd__daemon_msg__free_unpacked(dm, NULL);
    }
    CU_ASSERT(got_flush);

    /* malformed: garbage, no body; each gets an Error and -1 */
    uint8_t *rep;
    size_t rlen;
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    CU_ASSERT_EQUAL(control_handle(D, junk, sizeof(junk), &rep, &rlen), -1);
    r = heapdctl__control_reply__unpack(NULL, rlen, rep);
    CU_ASSERT(r && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_ERROR && r->error->err == EINVAL);
    heapdctl__control_reply__free_unpacked(r, NULL);
    free(rep);
    Heapdctl__ControlRequest empty = HEAPDCTL__CONTROL_REQUEST__INIT;
    r = ctl(&empty, &rc);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_ERROR);
    heapdctl__control_reply__free_unpacked(r, NULL);
    uint8_t huge[CTL_MAX_REQ + 1];
    memset(huge, 0, sizeof(huge));
    CU_ASSERT_EQUAL(control_handle(D, huge, sizeof(huge), &rep, &rlen), -1);
    free(rep);

    rmclient(&a);
    rmclient(&b);
    teardown();
}

/* ---- libheapd over this daemon, in one process ------------------------------------------ */

static tclient_t LC;                /* the daemon's record of the library */

static Heapd__DaemonMsg *lc_call(Heapd__ClientMsg *m)
{
    uint8_t buf[HD_MAX_MSG];
    size_t n = heapd__client_msg__pack(m, buf);
    if (rpc_handle(D, LC.c, buf, n, &OUT) != RPC_OK || OUT.len == 0)
        return NULL;
    return heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
}

static int lc_refill(void *ctx, unsigned sizeclass, unsigned count, uint32_t *ids)
{
    (void)ctx;
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = sizeclass;
    rf.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 11;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    Heapd__DaemonMsg *r = lc_call(&m);
    int n = -ENOMEM;
    if (r && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS) {
        n = (int)r->spans->n_span_ids;
        memcpy(ids, r->spans->span_ids, (size_t)n * sizeof(*ids));
    }
    heapd__daemon_msg__free_unpacked(r, NULL);
    return n;
}

static int lc_alloc_large(void *ctx, uint64_t pages, uint64_t align_pages, bool zero, uint32_t *id)
{
    (void)ctx;
    Heapd__AllocLarge a = HEAPD__ALLOC_LARGE__INIT;
    a.pages = pages;
    a.align_pages = align_pages;
    a.zero = zero;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 12;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
    m.alloc_large = &a;
    Heapd__DaemonMsg *r = lc_call(&m);
    int rc = -ENOMEM;
    if (r && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS) {
        *id = r->spans->span_ids[0];
        rc = 0;
    }
    heapd__daemon_msg__free_unpacked(r, NULL);
    return rc;
}

static void lc_release(void *ctx, const uint32_t *ids, unsigned n)
{
    (void)ctx;
    Heapd__Release rel = HEAPD__RELEASE__INIT;
    rel.n_span_ids = n;
    rel.span_ids = (uint32_t *)ids;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
    m.release = &rel;
    uint8_t buf[HD_MAX_MSG];
    size_t len = heapd__client_msg__pack(&m, buf);
    rpc_handle(D, LC.c, buf, len, &OUT);
}

static void lc_free_large(void *ctx, const uint32_t *ids, const uint32_t *gens, unsigned n)
{
    (void)ctx;
    Heapd__FreeLarge f = HEAPD__FREE_LARGE__INIT;
    f.n_span_ids = f.n_gens = n;
    f.span_ids = (uint32_t *)ids;
    f.gens = (uint32_t *)gens;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
    m.free_large = &f;
    uint8_t buf[HD_MAX_MSG];
    size_t len = heapd__client_msg__pack(&m, buf);
    rpc_handle(D, LC.c, buf, len, &OUT);
}

static tp_backend_t lc_be = {lc_refill, lc_alloc_large, lc_release, lc_free_large, NULL};

/* A thread that frees what the test allocated (frees count where they happen). */
static void *lc_freer(void *arg)
{
    void **objs = arg;
    for (unsigned i = 0; objs[i]; i++)
        heapd_free(objs[i]);
    return NULL;                    /* its exit flushes its counts */
}

/* In a thread of its own: fresh thread-local counters and cache (this
 * process's other tests allocated without a slot; their counts wait in the
 * main thread's cache). */
static void *lc_body(void *arg)
{
    (void)arg;
    enum { PER = 5, NT = 33 };      /* NT tiny objects of 3 B: 5 per block -> 7 blocks */
    static void *objs[1024], *theirs[512];
    size_t n = 0, nt = 0;
    uint64_t bytes = 0;
    for (unsigned c = 3; c < HD_NUM_SIZE_CLASSES; c++)
        for (int i = 0; i < PER; i++) {
            void *p = heapd_malloc(hd_class_to_size[c]);
            CU_ASSERT_FATAL(p != NULL);
            bytes += hd_class_to_size[c];
            if (i % 2)
                theirs[nt++] = p;
            else
                objs[n++] = p;
        }
    for (int i = 0; i < NT; i++)
        CU_ASSERT_FATAL((objs[n++] = heapd_malloc(3)) != NULL);
    void *big = heapd_malloc(100000);               /* a large class: 14 pages (13 rounded up) */
    CU_ASSERT_FATAL(big != NULL);
    CU_ASSERT_EQUAL(heapd_flush(), 0);

    mstats_t m;
    mstats_read(D, &m);
    check_invariants(&m);
    for (unsigned c = 3; c < HD_NUM_SIZE_CLASSES; c++)
        CU_ASSERT_EQUAL(m.by_size[c].mallocs, PER);
    CU_ASSERT_EQUAL(m.by_size[HD_TINY_SIZE_CLASS].mallocs, (NT + 4) / 5);
    CU_ASSERT_EQUAL(m.tiny_allocs, NT - (NT + 4) / 5);
    CU_ASSERT_EQUAL(m.large_allocs, 1);
    CU_ASSERT_EQUAL(m.large_alloc_bytes, 14 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(m.large_by_size[hd_large_to_class(100000) - HD_FIRST_LARGE_CLASS].mallocs, 1);
    CU_ASSERT_EQUAL(m.large_by_size[hd_large_to_class(100000) - HD_FIRST_LARGE_CLASS].size, 14 * HD_PAGE_SIZE);
    uint64_t nobj = PER * (HD_NUM_SIZE_CLASSES - 3) + NT + 1;
    CU_ASSERT_EQUAL(m.mallocs, nobj);
    CU_ASSERT_EQUAL(m.heap_objects, nobj - m.tiny_allocs);
    CU_ASSERT_EQUAL(m.heap_alloc, bytes + (NT + 4) / 5 * 16ull + 14 * HD_PAGE_SIZE);
    CU_ASSERT(m.heap_alloc <= m.heap_inuse);
    CU_ASSERT(m.mcache_inuse > 0);

    /* another thread frees half the small objects; its exit reports them */
    pthread_t th;
    theirs[nt] = NULL;
    CU_ASSERT_FATAL(pthread_create(&th, NULL, lc_freer, theirs) == 0);
    pthread_join(th, NULL);     /* a thread's exit flushes its counts */
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.by_size[3].frees, PER / 2);
    /* we free the rest */
    for (size_t i = 0; i < n; i++)
        heapd_free(objs[i]);
    heapd_free(big);
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.mallocs, nobj);
    CU_ASSERT_EQUAL(m.frees, nobj);
    CU_ASSERT_EQUAL(m.heap_objects, 0);
    CU_ASSERT_EQUAL(m.heap_alloc, 0);
    CU_ASSERT_EQUAL(m.spans_large, 0);
    CU_ASSERT_EQUAL(m.slot_stale, 0);

    /* a tight loop of allocations and frees: the counts stay exact */
    for (int r = 0; r < 20000; r++) {
        void *p = heapd_malloc(40 + (size_t)(r % 300)), *q = heapd_malloc(1 + (size_t)(r % 15));
        heapd_free(p);
        heapd_free(q);
    }
    CU_ASSERT_EQUAL(heapd_flush(), 0);
    mstats_read(D, &m);
    check_invariants(&m);
    CU_ASSERT_EQUAL(m.heap_objects, 0);
    CU_ASSERT_EQUAL(m.mallocs, nobj + 40000);
    return NULL;
}

static void test_library_counting(void)
{
    setup();
    LC = mkclient();
    CU_ASSERT_FATAL(LC.slot != 0);
    hdc_test_install(&lc_be, &D->seg.view, LC.c->id);
    st_use_slot(mstats_slot_map(D, LC.slot));
    pthread_t th;
    CU_ASSERT_FATAL(pthread_create(&th, NULL, lc_body, NULL) == 0);
    pthread_join(th, NULL);
    mstats_t m;
    uint64_t nobj = 5 * (HD_NUM_SIZE_CLASSES - 3) + 33 + 1;
    hdc_test_install(NULL, NULL, 0);
    st_forget_slot();
    rmclient(&LC);
    mstats_read(D, &m);                             /* retired: the same totals */
    CU_ASSERT_EQUAL(m.mallocs, nobj + 40000);
    CU_ASSERT_EQUAL(m.frees, nobj + 40000);
    CU_ASSERT_EQUAL(m.clients, 0);
    teardown();
}

static void register_mstats(void)
{
    CU_pSuite s = CU_add_suite("mstats", NULL, NULL);
    CU_add_test(s, "stats slots: assignment, owner, reuse", test_slots);
    CU_add_test(s, "consistent read under a concurrent writer; stuck writer", test_consistent_read);
    CU_add_test(s, "derived numbers, retired totals, invariants", test_fold_and_totals);
    CU_add_test(s, "daemon books: pages, spans, RPCs", test_books);
    CU_add_test(s, "Prometheus text format", test_prometheus);
    CU_add_test(s, "control requests", test_control_requests);
    CU_add_test(s, "libheapd counting against this daemon, in one process", test_library_counting);
}
UNIT_SUITE(register_mstats)
