/* Unit tests of client/cstats.c, the writer of a process's memstats slot,
 * against the daemon's reader (mstats_slot_read) over one real segment: the
 * in-process daemon fixture's, which libheapd views as its own
 * (hdc_test_install), with a slot the daemon gave at Hello.
 *  - flush arithmetic: a flush adds what the thread counted since its last
 *    flush, once; the gauge is replaced; the reader sees exactly that;
 *  (the daemon never gives a live client's slot to another: docs/design.md "Faults and leases");
 *  - a reader never sees a torn update: the writer is stopped at every
 *    store it makes to the slot (the slot's page is read-only, each store
 *    faults, the daemon's reader runs in the fault handler, then the store is
 *    single-stepped), and every read is the whole old or the whole new state. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "daemon_fixture.h"
#include "internal.h"
#include "mstats.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};
static client_t *C;
static int peer;
static uint32_t slot;
static const tp_backend_t no_backend;       /* nothing here makes an RPC */

static void up(void)
{
    D = fx_daemon_new(TEST_SIZE, 0x3d0000000000ull + (uint64_t)(nbase++) * (4ull << 30));
    C = fx_client(D, &OUT, &peer, &slot);
    CU_ASSERT_FATAL(slot != 0);
    hdc_test_install(&no_backend, &D->seg.view, C->id);
    tp_lock();
    st_use_slot(mstats_slot_map(D, slot));
    tp_unlock();
    CU_ASSERT_FATAL(st_have_slot());
}

static void down(void)
{
    st_forget_slot();
    hdc_test_install(NULL, NULL, 0);
    client_close(D, C, "test done");
    close(peer);
    fx_daemon_free(D);
    D = NULL;
}

static mstats_counters_t reader(void)
{
    mstats_counters_t c;
    CU_ASSERT(mstats_slot_read(D, slot, &c));
    return c;
}

static void test_flush_arithmetic(void)
{
    up();
    static st_thread_t t;
    static _Atomic uint64_t frees[HD_NUM_CLASSES];
    memset(&t, 0, sizeof(t));
    memset((void *)frees, 0, sizeof(frees));
    t.frees = frees;
    hd_cstats_t *s = mstats_slot_map(D, slot);
    uint64_t seq0 = atomic_load(&s->seq);
    CU_ASSERT_FALSE(st_pending(&t));

    st_bump(&t.cur.small_allocs[5], 10);
    st_bump(&frees[5], 4);
    st_bump(&t.cur.tiny_allocs, 3);
    st_bump(&t.cur.large_allocs, 2);
    st_bump(&t.cur.large_alloc_bytes, 2 * 65536);
    CU_ASSERT_TRUE(st_pending(&t));
    st_flush(&t, 4096);
    CU_ASSERT_FALSE(st_pending(&t));
    CU_ASSERT_EQUAL(atomic_load(&s->seq), seq0 + 2);           /* one update, consistent again */
    mstats_counters_t c = reader();
    CU_ASSERT_EQUAL(c.small_allocs[5], 10);
    CU_ASSERT_EQUAL(c.small_frees[5], 4);
    CU_ASSERT_EQUAL(c.tiny_allocs, 3);
    CU_ASSERT_EQUAL(c.large_allocs, 2);
    CU_ASSERT_EQUAL(c.large_alloc_bytes, 2 * 65536);
    CU_ASSERT_EQUAL(atomic_load(&s->mcache_bytes), 4096);

    /* nothing new: the counts stay (no double counting), the gauge follows */
    st_flush(&t, 8192);
    c = reader();
    CU_ASSERT_EQUAL(c.small_allocs[5], 10);
    CU_ASSERT_EQUAL(c.small_frees[5], 4);
    CU_ASSERT_EQUAL(atomic_load(&s->mcache_bytes), 8192);
    /* more: only the difference is added */
    st_bump(&t.cur.small_allocs[5], 5);
    st_bump(&t.cur.large_frees, 1);
    st_bump(&t.cur.large_free_bytes, 65536);
    st_flush(&t, 0);
    c = reader();
    CU_ASSERT_EQUAL(c.small_allocs[5], 15);
    CU_ASSERT_EQUAL(c.large_frees, 1);
    CU_ASSERT_EQUAL(c.large_free_bytes, 65536);
    CU_ASSERT_EQUAL(c.tiny_allocs, 3);
    /* two threads add to one slot */
    static st_thread_t u;
    memset(&u, 0, sizeof(u));
    st_bump(&u.cur.small_allocs[5], 100);
    st_flush(&u, 0);
    CU_ASSERT_EQUAL(reader().small_allocs[5], 115);
    down();
}

/* ---- the writer stopped at every store ------------------------------------------- */

#if defined(__x86_64__)
#define TF_FLAG 0x100ull                       /* EFLAGS trap flag: trap after one instruction */

static struct {
    void *page;
    mstats_counters_t before, after;
    unsigned stops, torn, odd_seen;
    bool armed;
} W;

static bool same(const mstats_counters_t *a, const mstats_counters_t *b)
{
    return memcmp(a->small_allocs, b->small_allocs, sizeof(a->small_allocs)) == 0 &&
           memcmp(a->small_frees, b->small_frees, sizeof(a->small_frees)) == 0 &&
           a->tiny_allocs == b->tiny_allocs && a->large_allocs == b->large_allocs &&
           a->large_alloc_bytes == b->large_alloc_bytes && a->large_frees == b->large_frees &&
           a->large_free_bytes == b->large_free_bytes;
}

/* A store to the slot's page: the writer is stopped just before it. Read
 * the slot as the daemon does, then let the store run (one instruction). */
static void on_segv(int sig, siginfo_t *si, void *uc_)
{
    ucontext_t *uc = uc_;
    char *a = si->si_addr, *pg = W.page;
    if (!W.armed || a < pg || a >= pg + 4096) {
        signal(sig, SIG_DFL);                     /* not ours: crash as usual */
        return;
    }
    W.stops++;
    W.odd_seen += (unsigned)(atomic_load(&mstats_slot_map(D, slot)->seq) & 1);
    mstats_counters_t c;
    mstats_slot_read(D, slot, &c);                /* consistent, or the last consistent copy */
    if (!same(&c, &W.before) && !same(&c, &W.after))
        W.torn++;
    mprotect(W.page, 4096, PROT_READ | PROT_WRITE);
    uc->uc_mcontext.gregs[REG_EFL] |= TF_FLAG;
}

static void on_trap(int sig, siginfo_t *si, void *uc_)
{
    ucontext_t *uc = uc_;
    uc->uc_mcontext.gregs[REG_EFL] &= ~TF_FLAG;
    mprotect(W.page, 4096, PROT_READ);            /* the next store stops again */
}

static void test_reader_never_torn(void)
{
    up();
    static st_thread_t t;
    static _Atomic uint64_t frees[HD_NUM_CLASSES];
    memset(&t, 0, sizeof(t));
    memset((void *)frees, 0, sizeof(frees));
    t.frees = frees;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c += 7)
        st_bump(&t.cur.small_allocs[c], c);
    st_flush(&t, 0);
    W.before = reader();
    /* the next update changes every kind of counter */
    unsigned changed = 0;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c += 3, changed += 2) {
        st_bump(&t.cur.small_allocs[c], 1000 + c);
        st_bump(&frees[c], c);
    }
    st_bump(&t.cur.tiny_allocs, 9);
    st_bump(&t.cur.large_allocs, 2);
    st_bump(&t.cur.large_alloc_bytes, 1 << 20);
    st_bump(&t.cur.large_frees, 1);
    st_bump(&t.cur.large_free_bytes, 1 << 19);
    changed += 5;
    W.after = W.before;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c += 3) {
        W.after.small_allocs[c] += 1000 + c;
        W.after.small_frees[c] += c;
    }
    W.after.tiny_allocs += 9;
    W.after.large_allocs += 2;
    W.after.large_alloc_bytes += 1 << 20;
    W.after.large_frees += 1;
    W.after.large_free_bytes += 1 << 19;

    struct sigaction sa = {.sa_flags = SA_SIGINFO}, old_segv, old_trap;
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_segv;
    sigaction(SIGSEGV, &sa, &old_segv);
    sa.sa_sigaction = on_trap;
    sigaction(SIGTRAP, &sa, &old_trap);
    W.page = (void *)((uintptr_t)mstats_slot_map(D, slot) & ~(uintptr_t)4095);
    W.stops = W.torn = W.odd_seen = 0;
    W.armed = true;
    CU_ASSERT_FATAL(mprotect(W.page, 4096, PROT_READ) == 0);
    st_flush(&t, 0);
    W.armed = false;
    mprotect(W.page, 4096, PROT_READ | PROT_WRITE);
    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGTRAP, &old_trap, NULL);

    printf("\n  writer stopped at %u stores (%u with seq odd), %u torn reads\n", W.stops, W.odd_seen, W.torn);
    CU_ASSERT(W.stops >= changed + 2);            /* every counter, the gauge, seq twice */
    CU_ASSERT(W.odd_seen >= changed);             /* the reader ran inside the update */
    CU_ASSERT_EQUAL(W.torn, 0);
    mstats_counters_t end = reader();
    CU_ASSERT_TRUE(same(&end, &W.after));
    down();
}
#endif

static void register_cstats_suite(void)
{
    CU_pSuite s = CU_add_suite("cstats", NULL, NULL);
    CU_add_test(s, "flush arithmetic, seen by the daemon's reader", test_flush_arithmetic);
#if defined(__x86_64__)
    CU_add_test(s, "reader stopped at every store of an update: never torn", test_reader_never_torn);
#endif
}
UNIT_SUITE(register_cstats_suite)
