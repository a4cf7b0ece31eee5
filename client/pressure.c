/* pressure.c: memory-pressure callbacks and the listener thread that runs them.
 *
 * Owns: the registered callback (heapd_on_pressure), the pending pressure
 * (coalesced: the highest level and the latest bytes wanted since the last
 * call), and the listener thread ("heapd-pressure").
 *
 * The daemon sends Flush and Pressure unsolicited (seq 0) on the process's
 * connection. Whoever reads the socket (an RPC under tp_lock, or the
 * listener) hands a Pressure to hdc_pressure_note, which wakes the listener.
 * The listener, while the process is attached and a callback is registered:
 *   - polls the connection while no RPC is in flight (it reads only under
 *     tp_lock, so it never steals a reply), and an eventfd for wake-ups;
 *   - handles what arrived: Flush sends the pending asynchronous batches at
 *     once (queued Release and FreeLarge); the thread caches give their spans
 *     back at their next slow path, as before;
 *   - runs the callback, outside every heapd lock, one call at a time.
 * So the callback always runs on the listener thread: it may call any heapd
 * function (free, malloc, heapd_flush), and should not block for long.
 *
 * Before an ENOMEM: when the daemon refuses an allocation (hard limit,
 * quota) it sends Flush and Pressure{3} to the requester ahead of the refusal.
 * The allocating thread then gives back its own cached spans, waits until the
 * listener has run the callback for that pressure (at most
 * $HEAPD_PRESSURE_WAIT_MS, default 1000 ms, so a callback that needs a lock
 * the allocating thread holds cannot deadlock it), and retries the
 * allocation once, sending the frees the callback made first. Only if that
 * fails does the caller get NULL/ENOMEM. The listener never waits for
 * itself (a callback that allocates gets ENOMEM directly).
 *
 * Locks: tp_lock → pr_mu, never the other way (client/lockorder.h); the
 * callback runs with none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "heapd.h"
#include "internal.h"
#include "lockorder.h"

#define PR_WAIT_MS_DEFAULT 1000

static pthread_mutex_t pr_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pr_cv = PTHREAD_COND_INITIALIZER;

static void pr_lock(void)
{
    pthread_mutex_lock(&pr_mu);
    HD_LOCK_TAKEN(HD_LOCK_PR, "pr_mu");
}
static void pr_unlock(void)
{
    HD_LOCK_DROPPED(HD_LOCK_PR);
    pthread_mutex_unlock(&pr_mu);
}
/* Guarded by pr_mu. */
static heapd_pressure_fn pr_fn;
static void *pr_arg;
static unsigned pr_level;               /* pending: highest level since the last call */
static uint64_t pr_bytes;               /* pending: latest bytes wanted */
static _Atomic uint64_t pr_gen;         /* pressures received (written under pr_mu) */
static uint64_t pr_done;                /* pressures handled: the callback for them returned */
static _Atomic uint64_t pr_calls;       /* callbacks made */
/* The listener: started and stopped under tp_lock (stop joins without it). */
static pthread_t pr_thread;
static bool pr_running;
static int pr_efd = -1;
static _Atomic unsigned pr_epoch;       /* a listener runs while this equals the value it started with */
static __thread bool pr_on_listener;

static void pr_wake(void)
{
    uint64_t one = 1;
    if (pr_efd >= 0)
        (void)!write(pr_efd, &one, sizeof one);
}

void hdc_pressure_note(unsigned level, uint64_t bytes)
{
    pr_lock();
    if (level > pr_level)
        pr_level = level;
    pr_bytes = bytes;
    atomic_fetch_add(&pr_gen, 1);
    pr_unlock();
    pr_wake();
}

uint64_t hdc_pressure_gen(void) { return atomic_load(&pr_gen); }

static int pr_wait_ms(void)
{
    const char *s = getenv("HEAPD_PRESSURE_WAIT_MS");
    if (!s || !*s)
        return PR_WAIT_MS_DEFAULT;
    long v = strtol(s, NULL, 10);
    return v < 0 ? 0 : v > 60000 ? 60000 : (int)v;
}

bool hdc_pressure_settle(uint64_t since)
{
    pr_lock();
    uint64_t g = atomic_load(&pr_gen);
    if (g == since) {
        pr_unlock();
        return false;
    }
    if (pr_fn && pr_running && !pr_on_listener) {
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        int ms = pr_wait_ms();
        dl.tv_sec += ms / 1000;
        dl.tv_nsec += (long)(ms % 1000) * 1000000;
        if (dl.tv_nsec >= 1000000000) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000;
        }
        while (pr_done < g && pr_running)
            if (pthread_cond_clockwait(&pr_cv, &pr_mu, CLOCK_MONOTONIC, &dl) == ETIMEDOUT)
                break;
    }
    pr_unlock();
    return true;
}

/* Run the callback for what is pending (listener thread, no lock held). */
static void pr_dispatch(void)
{
    pr_lock();
    uint64_t g = atomic_load(&pr_gen);
    if (pr_done == g) {
        pr_unlock();
        return;
    }
    heapd_pressure_fn fn = pr_fn;
    void *arg = pr_arg;
    unsigned level = pr_level;
    uint64_t bytes = pr_bytes;
    pr_level = 0;
    pr_bytes = 0;
    pr_unlock();
    if (fn) {
        atomic_fetch_add(&pr_calls, 1);
        fn(level, bytes, arg);
        tp_flush();                 /* the frees it made reach the daemon now */
    }
    pr_lock();
    pr_done = g;
    pthread_cond_broadcast(&pr_cv);
    pr_unlock();
}

static void *pr_listener(void *arg)
{
    unsigned mine = (unsigned)(uintptr_t)arg;
    pr_on_listener = true;
    uint64_t seen_flush = atomic_load(&tp_flush_gen);
    while (atomic_load(&pr_epoch) == mine) {
        tp_lock();
        int fd = tp_listen_fd_locked();
        tp_unlock();
        struct pollfd p[2] = {{.fd = pr_efd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
        int r = poll(p, fd >= 0 ? 2 : 1, -1);
        if (r < 0 && errno != EINTR)
            break;
        if (p[0].revents & POLLIN) {
            uint64_t v;
            (void)!read(pr_efd, &v, sizeof v);
        }
        if (atomic_load(&pr_epoch) != mine)
            break;
        if (fd >= 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            tp_lock();
            tp_drain_locked();
            uint64_t f = atomic_load(&tp_flush_gen);
            if (f != seen_flush) {  /* a Flush: what we queued goes out now */
                seen_flush = f;
                (void)tp_flush_locked();
            }
            tp_unlock();
        }
        pr_dispatch();
    }
    return NULL;
}

int hdc_listener_start_locked(void)
{
    if (pr_running)
        return 0;
    if (pr_efd < 0 && (pr_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        return -1;
    unsigned mine = atomic_fetch_add(&pr_epoch, 1) + 1;
    sigset_t all, old;
    sigfillset(&all);               /* the application's signals never land on it */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&pr_thread, NULL, pr_listener, (void *)(uintptr_t)mine);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        errno = e;
        return -1;
    }
    pthread_setname_np(pr_thread, "heapd-pressure");
    pr_lock();
    pr_running = true;
    pr_unlock();
    return 0;
}

void hdc_listener_stop(void)
{
    tp_lock();
    bool running = pr_running;
    pthread_t t = pr_thread;
    if (running) {
        atomic_fetch_add(&pr_epoch, 1);
        pr_wake();
        pr_lock();
        pr_running = false;
        pthread_cond_broadcast(&pr_cv);     /* nobody waits for it any more */
        pr_unlock();
    }
    tp_unlock();
    if (!running)
        return;
    if (pthread_equal(t, pthread_self())) {
        pthread_detach(t);          /* detach from inside the callback: it ends when it returns */
        return;                     /* (the eventfd stays, for the next listener) */
    }
    pthread_join(t, NULL);
    close(pr_efd);
    pr_efd = -1;
}

void hdc_listener_forget(void)
{
    /* fork child: the thread does not exist here (closing our copy of its
     * eventfd does not touch the parent's) */
    pthread_mutex_init(&pr_mu, NULL);
    pthread_cond_init(&pr_cv, NULL);
    pr_running = false;
    if (pr_efd >= 0)
        close(pr_efd);
    pr_efd = -1;
    pr_level = 0;
    pr_bytes = 0;
    pr_done = atomic_load(&pr_gen);
}

bool hdc_pressure_wanted(void)
{
    pr_lock();
    bool w = pr_fn != NULL;
    pr_unlock();
    return w;
}

int heapd_on_pressure(heapd_pressure_fn fn, void *arg)
{
    hdc_hooks_init();
    tp_lock();
    pr_lock();
    pr_fn = fn;
    pr_arg = arg;
    pr_unlock();
    int rc = 0;
    if (fn && atomic_load(&hdc_state) == HDC_ATTACHED)
        rc = hdc_listener_start_locked();
    tp_unlock();
    return rc;
}

uint64_t heapd_pressure_calls(void) { return atomic_load(&pr_calls); }

int heapd_set_quota(uint64_t bytes)
{
    int rc = tp_set_quota(bytes);
    if (rc == 0)
        st_note_quota(bytes);           /* heapd_stats reports it without asking */
    return rc;
}
