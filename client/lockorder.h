/* lockorder: the one table of libheapd's locks, and the checker that
 * enforces it in debug builds.
 *
 * Every lock in client/ has a rank; a thread may take a lock only when every
 * lock it already holds has a lower rank (so no two threads can wait for each
 * other). The table, lowest rank first:
 *
 *   rank  lock          file          guards
 *   10    tp_mu         transport.c   the connection, the pending async batches,
 *                                     the client state (attach/detach/fork,
 *                                     pthread_atfork prepare takes it first),
 *                                     every RPC; the listener's reads
 *   20    mc_reg_mu     mcache.c      the list of live thread caches (fork
 *                                     prepare takes it second)
 *   30    pr_mu         pressure.c    the pressure callback, pending pressure,
 *                                     the listener's start/stop (pr_cv waits
 *                                     on it); taken under tp_mu by whoever
 *                                     reads a Pressure
 *   40    st_mu         cstats.c      this process's stats-slot updates; a
 *                                     leaf (under tp_mu and mc_reg_mu)
 *
 * The pressure callback runs with no heapd lock held. The fast paths (small
 * and tiny allocation from the thread's cache, every free) take none.
 *
 * The checker: with -DHEAPD_DEBUG, HD_LOCK_TAKEN/HD_LOCK_DROPPED (called right
 * after a lock is taken / right before it is dropped) keep a thread-local
 * stack of held ranks and abort with a message naming both locks when a lock
 * is taken at a rank not above the top of the stack. The functions exist in
 * every build, so a test can drive them directly; without HEAPD_DEBUG the
 * macros are nothing.
 */
#ifndef HEAPD_CLIENT_LOCKORDER_H
#define HEAPD_CLIENT_LOCKORDER_H

enum hd_lock_rank {
    HD_LOCK_TP = 10,
    HD_LOCK_MC_REG = 20,
    HD_LOCK_PR = 30,
    HD_LOCK_ST = 40,
};

#define HD_LOCKORDER_DEPTH 8        /* locks one thread can hold at once (4 exist) */

/* A lock of rank was just taken: abort (SIGABRT, message on stderr) if a
 * lock of equal or higher rank is held. */
__attribute__((visibility("hidden"))) void hd_lockorder_taken(unsigned rank, const char *name);
/* A lock of rank is about to be released (any held position). */
__attribute__((visibility("hidden"))) void hd_lockorder_dropped(unsigned rank);
/* Forget every held rank of this thread (a fork child reinitializes the
 * locks its prepare handler held). */
__attribute__((visibility("hidden"))) void hd_lockorder_reset(void);
/* Locks this thread holds (tests). */
__attribute__((visibility("hidden"))) unsigned hd_lockorder_depth(void);

#ifdef HEAPD_DEBUG
#define HD_LOCK_TAKEN(rank, name) hd_lockorder_taken((rank), (name))
#define HD_LOCK_DROPPED(rank) hd_lockorder_dropped(rank)
#define HD_LOCK_RESET() hd_lockorder_reset()
#else
#define HD_LOCK_TAKEN(rank, name) ((void)0)
#define HD_LOCK_DROPPED(rank) ((void)0)
#define HD_LOCK_RESET() ((void)0)
#endif

#endif
