/* Unit tests of client/lockorder.c: the lock-order checker. The checker's
 * functions exist in every build, so this drives them directly (HEAPD_DEBUG
 * builds call them from every lock in client/). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lockorder.h"
#include "unit.h"

/* Run fn in a child with its stderr silenced; returns its wait status. */
static int in_child(void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, 2);          /* the checker's message is expected */
        fn();
        _exit(0);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

static pthread_mutex_t ma = PTHREAD_MUTEX_INITIALIZER, mb = PTHREAD_MUTEX_INITIALIZER;

/* Take two real locks, a (rank hi) then b (rank lo), telling the checker. */
static void take_two(unsigned hi, unsigned lo)
{
    pthread_mutex_lock(&ma);
    hd_lockorder_taken(hi, "first");
    pthread_mutex_lock(&mb);
    hd_lockorder_taken(lo, "second");
    hd_lockorder_dropped(lo);
    pthread_mutex_unlock(&mb);
    hd_lockorder_dropped(hi);
    pthread_mutex_unlock(&ma);
}

static void inverted(void) { take_two(HD_LOCK_ST, HD_LOCK_TP); }      /* st_mu, then tp_mu */
static void in_order(void) { take_two(HD_LOCK_TP, HD_LOCK_MC_REG); }  /* tp_mu, then mc_reg_mu */
static void same_rank(void) { take_two(HD_LOCK_PR, HD_LOCK_PR); }     /* a lock twice (self-deadlock) */

static void test_inversion_aborts(void)
{
    int st = in_child(inverted);
    CU_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    st = in_child(same_rank);
    CU_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

static void test_order_passes(void)
{
    int st = in_child(in_order);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* and here: the stack is empty again after the locks are dropped, in any order */
    hd_lockorder_taken(HD_LOCK_TP, "tp_mu");
    hd_lockorder_taken(HD_LOCK_MC_REG, "mc_reg_mu");
    hd_lockorder_taken(HD_LOCK_ST, "st_mu");
    CU_ASSERT_EQUAL(hd_lockorder_depth(), 3);
    hd_lockorder_dropped(HD_LOCK_TP);             /* out of order: allowed */
    CU_ASSERT_EQUAL(hd_lockorder_depth(), 2);
    hd_lockorder_dropped(HD_LOCK_ST);
    hd_lockorder_dropped(HD_LOCK_MC_REG);
    CU_ASSERT_EQUAL(hd_lockorder_depth(), 0);
    hd_lockorder_taken(HD_LOCK_PR, "pr_mu");
    hd_lockorder_reset();                         /* a fork child's view */
    CU_ASSERT_EQUAL(hd_lockorder_depth(), 0);
}

static void register_lockorder_suite(void)
{
    CU_pSuite s = CU_add_suite("lockorder", NULL, NULL);
    CU_add_test(s, "taking locks against the table aborts", test_inversion_aborts);
    CU_add_test(s, "taking locks in the table's order passes", test_order_passes);
}
UNIT_SUITE(register_lockorder_suite)
