/* Integration tests of HEAPD_QUOTA in libheapd proper (issue 10; the preload
 * library itself is tested by scripts/test-preload.sh with real programs).
 * A real daemon, real client processes:
 *  - HEAPD_QUOTA=3MiB at attach: heapd_stats reports the quota, an
 *    allocation over it fails with ENOMEM, one under it succeeds;
 *  - a fork child reconnects with the same quota (HEAPD_QUOTA is read at
 *    every connection, not inherited through the connection);
 *  - a malformed value fails heapd_attach with EINVAL; unset: no quota.
 * Registered with UNIT_SUITE (itest_main.c runs every registered suite). */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "unit.h"

#define CHECK(code, cond) do { if (!(cond)) { fprintf(stderr, "  child check %d failed: %s (errno %d)\n", (code), #cond, errno); return (code); } } while (0)
#define MiB (1ull << 20)

static uint64_t quota_now(void)
{
    struct heapd_stats st;
    return heapd_stats(&st, sizeof st) == 0 ? st.quota : UINT64_MAX;
}

/* In a fork child: allocate (the reconnect), then check the quota holds. */
static int forked_body(void)
{
    void *small = heapd_malloc(100);
    CHECK(20, small != NULL);
    CHECK(21, quota_now() == 3 * MiB);
    errno = 0;
    CHECK(22, heapd_malloc(4 * MiB) == NULL && errno == ENOMEM);
    heapd_free(small);
    return 0;
}

static int quota_env_body(void *arg)
{
    const char *sock = arg;
    setenv("HEAPD_QUOTA", "3MiB", 1);
    CHECK(1, heapd_attach(sock) == 0);
    CHECK(2, quota_now() == 3 * MiB);
    errno = 0;
    CHECK(3, heapd_malloc(4 * MiB) == NULL && errno == ENOMEM);
    void *p = heapd_malloc(1 * MiB);
    CHECK(4, p != NULL);
    pid_t pid = fork();
    CHECK(5, pid >= 0);
    if (pid == 0)
        _exit(forked_body());
    int st;
    CHECK(6, waitpid(pid, &st, 0) == pid && WIFEXITED(st));
    CHECK(WEXITSTATUS(st) ? WEXITSTATUS(st) : 7, WEXITSTATUS(st) == 0);
    heapd_free(p);
    heapd_detach();

    setenv("HEAPD_QUOTA", "3M", 1);          /* GOMEMLIMIT syntax only: 3MiB */
    errno = 0;
    CHECK(8, heapd_attach(sock) == -1 && errno == EINVAL);
    unsetenv("HEAPD_QUOTA");
    CHECK(9, heapd_attach(sock) == 0);
    CHECK(10, quota_now() == 0);
    p = heapd_malloc(4 * MiB);
    CHECK(11, p != NULL);
    heapd_free(p);
    heapd_detach();
    return 0;
}

static void test_quota_env(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(quota_env_body, d.sock, 60), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

static void register_preload_itest(void)
{
    CU_pSuite s = CU_add_suite("HEAPD_QUOTA", NULL, NULL);
    CU_add_test(s, "HEAPD_QUOTA: at attach, in a fork child, malformed, unset", test_quota_env);
}
UNIT_SUITE(register_preload_itest)
