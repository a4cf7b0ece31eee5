/* Unit tests of client/pressure.c (heapd_on_pressure) against a real daemon
 * in a child process (fx_spawn). A quota makes the daemon refuse an
 * allocation; it then sends this client Flush and Pressure{3} ahead of the
 * ENOMEM, as it does for every refusal.
 *  - registration: before or after attach, and unregistering;
 *  - a delivered Pressure runs the callback, with its level, bytes and arg,
 *    on libheapd's own thread ("heapd-pressure"), never the allocating one;
 *    also in a process that makes no call at all (another process hit the
 *    hard limit: the listener reads the Pressure from the socket);
 *  - pressures that arrive while a callback runs coalesce into one more call;
 *  - a callback that allocates under the same refusal gets ENOMEM, and
 *    neither it nor the allocating thread waits for the other (bounded). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "heapd.h"
#include "internal.h"
#include "unit.h"

#define SPAWN_BASE 0x3ee000000000ull
#define MiB (1ull << 20)
static unsigned nspawn;

static struct {
    _Atomic unsigned calls;
    _Atomic unsigned level;
    _Atomic uint64_t bytes;
    void *arg;
    pthread_t thread;
    char name[16];
    _Atomic bool hold;              /* the first call waits while this is set */
    _Atomic bool holding;
    bool allocate;                  /* the first call allocates 2 MiB */
    void *got;
    int got_errno;
} CB;

static void cb(unsigned level, uint64_t bytes, void *arg)
{
    unsigned n = atomic_fetch_add(&CB.calls, 1);
    atomic_store(&CB.level, level);
    atomic_store(&CB.bytes, bytes);
    if (n == 0) {
        CB.arg = arg;
        CB.thread = pthread_self();
        pthread_getname_np(pthread_self(), CB.name, sizeof(CB.name));
        if (CB.allocate) {
            errno = 0;
            CB.got = heapd_malloc(2 * MiB);             /* refused again: must not wait for itself */
            CB.got_errno = errno;
        }
        atomic_store(&CB.holding, true);
        TEST_WAIT(!atomic_load(&CB.hold), 10000);
        atomic_store(&CB.holding, false);
    }
}

static void reset(void)
{
    memset(&CB, 0, sizeof(CB));
}

/* Attach to a new daemon with a quota of 1 MiB. */
static void up(fx_proc_t *d)
{
    daemon_opts_t o = {.size = 64ull << 20, .base = SPAWN_BASE + (uint64_t)(nspawn++) * (4ull << 30)};
    fx_spawn(d, &o);
    CU_ASSERT_FATAL(heapd_attach(d->sock) == 0);
    CU_ASSERT_FATAL(heapd_set_quota(MiB) == 0);
}

static void down(fx_proc_t *d)
{
    heapd_on_pressure(NULL, NULL);
    heapd_detach();
    fx_stop(d);
    unsetenv("HEAPD_PRESSURE_WAIT_MS");
}

/* An allocation past the quota: refused. */
static void refused(void)
{
    errno = 0;
    void *p = heapd_malloc(2 * MiB);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_EQUAL(errno, ENOMEM);
    heapd_free(p);
}

static void test_registration(void)
{
    reset();
    CU_ASSERT_FALSE(hdc_pressure_wanted());
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);             /* before attach */
    CU_ASSERT_TRUE(hdc_pressure_wanted());
    fx_proc_t d;
    up(&d);
    uint64_t calls0 = heapd_pressure_calls();
    refused();
    CU_ASSERT(TEST_WAIT(atomic_load(&CB.calls) >= 1, 5000));
    CU_ASSERT(heapd_pressure_calls() > calls0);
    hdc_pressure_settle(0);                                     /* every pressure so far handled */
    CU_ASSERT_EQUAL(heapd_on_pressure(NULL, NULL), 0);          /* unregistered: no more calls */
    CU_ASSERT_FALSE(hdc_pressure_wanted());
    unsigned n = atomic_load(&CB.calls);
    refused();
    refused();
    CU_ASSERT_EQUAL(atomic_load(&CB.calls), n);
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);             /* after attach: the listener starts */
    refused();
    CU_ASSERT(TEST_WAIT(atomic_load(&CB.calls) > n, 5000));
    down(&d);
}

static void test_callback_thread(void)
{
    reset();
    fx_proc_t d;
    up(&d);
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);
    refused();                                                  /* waits for the callback, retries once */
    CU_ASSERT_FATAL(atomic_load(&CB.calls) >= 1);               /* it ran before the ENOMEM came back */
    CU_ASSERT_EQUAL(atomic_load(&CB.level), PRESSURE_HARD);
    CU_ASSERT(atomic_load(&CB.bytes) >= MiB);                   /* at least what the quota is short */
    CU_ASSERT_PTR_EQUAL(CB.arg, &CB);
    CU_ASSERT_FALSE(pthread_equal(CB.thread, pthread_self()));
    CU_ASSERT_STRING_EQUAL(CB.name, "heapd-pressure");
    down(&d);
}

static void test_coalescing(void)
{
    reset();
    atomic_store(&CB.hold, true);
    setenv("HEAPD_PRESSURE_WAIT_MS", "20", 1);                 /* the allocating thread's wait for it */
    fx_proc_t d;
    up(&d);
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);
    refused();
    CU_ASSERT_FATAL(TEST_WAIT(atomic_load(&CB.holding), 5000)); /* the first call is running */
    uint64_t gen = hdc_pressure_gen();
    refused();
    refused();
    refused();
    CU_ASSERT(hdc_pressure_gen() >= gen + 3);                   /* three more arrived meanwhile */
    CU_ASSERT_EQUAL(atomic_load(&CB.calls), 1);
    atomic_store(&CB.hold, false);
    setenv("HEAPD_PRESSURE_WAIT_MS", "10000", 1);
    CU_ASSERT_TRUE(hdc_pressure_settle(0));                     /* until the listener has handled all */
    CU_ASSERT_EQUAL(atomic_load(&CB.calls), 2);                 /* one more call for all of them */
    CU_ASSERT_EQUAL(atomic_load(&CB.level), PRESSURE_HARD);
    down(&d);
}

/* Another process hits the hard limit: the daemon asks every client for
 * memory. This one is idle (no RPC of its own reads the socket): the
 * listener reads the Pressure and runs the callback. */
static int hog(const char *sock)
{
    if (heapd_on_pressure(NULL, NULL) != 0 || heapd_attach(sock) != 0)
        return 10;
    for (int i = 0; i < 64; i++)
        if (!heapd_malloc(MiB))
            return errno == ENOMEM ? 0 : 11;
    return 12;                                                  /* the limit never came */
}

static void test_idle_listener(void)
{
    reset();
    fx_proc_t d;
    daemon_opts_t o = {.size = 64ull << 20, .base = SPAWN_BASE + (uint64_t)(nspawn++) * (4ull << 30),
                       .hard_limit = 16 * MiB};
    fx_spawn(&d, &o);
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);
    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        heapd_detach();                                         /* the parent's connection is not ours */
        _exit(hog(d.sock));
    }
    int st = -1;
    bool done = TEST_WAIT(waitpid(pid, &st, WNOHANG) == pid, 10000);
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    CU_ASSERT(done && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CU_ASSERT(TEST_WAIT(atomic_load(&CB.calls) >= 1, 5000));
    CU_ASSERT_EQUAL(atomic_load(&CB.level), PRESSURE_HARD);
    CU_ASSERT_STRING_EQUAL(CB.name, "heapd-pressure");
    down(&d);
}

static void *alloc_thread(void *arg)
{
    _Atomic int *done = arg;
    errno = 0;
    void *p = heapd_malloc(2 * MiB);
    atomic_store(done, p == NULL && errno == ENOMEM ? 1 : 2);
    heapd_free(p);
    return NULL;
}

static void test_callback_allocates(void)
{
    reset();
    CB.allocate = true;
    fx_proc_t d;
    up(&d);
    CU_ASSERT_EQUAL(heapd_on_pressure(cb, &CB), 0);
    _Atomic int done = 0;
    pthread_t t;
    CU_ASSERT_FATAL(pthread_create(&t, NULL, alloc_thread, (void *)&done) == 0);
    /* the default wait for a callback is 1 s: well inside 10 s, unless they deadlock */
    bool finished = TEST_WAIT(atomic_load(&done) != 0, 10000);
    CU_ASSERT_FATAL(finished);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(atomic_load(&done), 1);                     /* NULL, ENOMEM */
    CU_ASSERT(TEST_WAIT(atomic_load(&CB.calls) >= 1 && !atomic_load(&CB.holding), 5000));
    CU_ASSERT_PTR_NULL(CB.got);
    CU_ASSERT_EQUAL(CB.got_errno, ENOMEM);
    down(&d);
}

static void register_pressure_suite(void)
{
    CU_pSuite s = CU_add_suite("pressure", NULL, NULL);
    CU_add_test(s, "registration before and after attach; unregistering", test_registration);
    CU_add_test(s, "a Pressure runs the callback on the heapd-pressure thread", test_callback_thread);
    CU_add_test(s, "an idle process: the listener reads the Pressure", test_idle_listener);
    CU_add_test(s, "pressures during a callback coalesce into one call", test_coalescing);
    CU_add_test(s, "a callback that allocates gets ENOMEM, no deadlock", test_callback_allocates);
}
UNIT_SUITE(register_pressure_suite)
