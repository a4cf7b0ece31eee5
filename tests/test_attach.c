/* Unit tests of client/attach.c: joining the heap, leaving it, fork.
 *  - attach, use, detach, attach again (a new client each time, the
 *    daemon's books follow); a second attach is refused (EISCONN);
 *  - a fork child re-attaches as a client of its own at its first slow path,
 *    keeps the parent's objects readable, and its leaving does not touch the
 *    parent;
 *  - the errors a user meets: no socket (ENOENT), a socket nobody listens on
 *    (ECONNREFUSED), a path too long (ENAMETOOLONG), the heap's address
 *    already taken in this process (EEXIST), a daemon of another protocol
 *    (EPROTONOSUPPORT, from its Welcome or its Error), a daemon that hangs
 *    up (EPIPE); after each the process is still detached and can attach.
 * A real daemon in a child process (fx_spawn), or a scripted peer on a real
 * socket for what a correct daemon never sends (fx_peer_*). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_fixture.h"
#include "heapd.h"
#include "internal.h"
#include "unit.h"

#define SPAWN_BASE 0x3e8000000000ull
#define PEER_BASE  0x3ec000000000ull
static unsigned nspawn;

static void spawn(fx_proc_t *p)
{
    daemon_opts_t o = {.size = 64ull << 20, .base = SPAWN_BASE + (uint64_t)(nspawn++) * (4ull << 30)};
    fx_spawn(p, &o);
}

static bool in_heap(const void *q)
{
    uintptr_t a = (uintptr_t)q;
    return hdc_seg.hdr && a >= hdc_seg.pages && a < hdc_seg.pages + hdc_seg.npages * HD_PAGE_SIZE;
}

static uint64_t books_clients(void) { return atomic_load(&hdc_seg.hdr->clients); }

static void test_attach_detach_again(void)
{
    fx_proc_t d;
    spawn(&d);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(64));                        /* not attached yet */
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    uint32_t first = hdc_client_id;
    CU_ASSERT_EQUAL(books_clients(), 1);
    char *p = heapd_malloc(100);
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT(in_heap(p));
    memset(p, 'x', 100);
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(d.sock), -1);                   /* once per process */
    CU_ASSERT_EQUAL(errno, EISCONN);
    heapd_free(p);
    heapd_detach();
    CU_ASSERT_PTR_NULL(hdc_seg.hdr);                             /* unmapped */
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(64));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
    heapd_detach();                                              /* twice: nothing */

    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    CU_ASSERT(hdc_client_id != first);                           /* a new client */
    CU_ASSERT(TEST_WAIT(books_clients() == 1, 5000));            /* the first one has gone */
    CU_ASSERT_EQUAL(atomic_load(&hdc_seg.hdr->clients_total), 2);
    p = heapd_malloc(100);
    CU_ASSERT(p != NULL && in_heap(p));
    heapd_free(p);
    heapd_detach();
    int st = fx_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* The child: its first allocation reconnects it as a new client. */
static int fork_child(char *parents, uint32_t parent_id)
{
    for (int i = 0; i < 64; i++)
        if (parents[i] != 'P')
            return 10;
    char *mine = heapd_malloc(64);
    if (!mine || !in_heap(mine))
        return 11;
    if (hdc_client_id == parent_id || atomic_load(&hdc_state) != HDC_ATTACHED)
        return 12;
    memset(mine, 'C', 64);
    heapd_free(mine);
    heapd_detach();
    return heapd_bad_frees() ? 13 : 0;
}

static void test_fork_child(void)
{
    fx_proc_t d;
    spawn(&d);
    CU_ASSERT_FATAL(heapd_attach(d.sock) == 0);
    char *p = heapd_malloc(64);
    CU_ASSERT_FATAL(p != NULL);
    memset(p, 'P', 64);
    fflush(NULL);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0)
        _exit(fork_child(p, hdc_client_id));
    int st = -1;
    bool done = TEST_WAIT(waitpid(pid, &st, WNOHANG) == pid, 10000);
    if (!done) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    CU_ASSERT(done && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CU_ASSERT_EQUAL(atomic_load(&hdc_seg.hdr->clients_total), 2);   /* the child was a client */
    CU_ASSERT(TEST_WAIT(books_clients() == 1, 5000));                /* and has gone */
    for (int i = 0; i < 64; i++)
        CU_ASSERT_EQUAL(p[i], 'P');
    char *q = heapd_malloc(64);                                       /* the parent goes on */
    CU_ASSERT(q != NULL);
    heapd_free(q);
    heapd_free(p);
    heapd_detach();
    fx_stop(&d);
}

static void test_missing_daemon(void)
{
    char dir[] = "/tmp/heapd-unit-XXXXXX", path[100];
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    snprintf(path, sizeof(path), "%s/none.sock", dir);
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(path), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
    snprintf(path, sizeof(path), "%s/nodir/heapd.sock", dir);
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(path), -1);
    CU_ASSERT_EQUAL(errno, ENOENT);
    /* a socket file nobody listens on: a daemon that died */
    snprintf(path, sizeof(path), "%s/stale.sock", dir);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    CU_ASSERT_FATAL(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(path), -1);
    CU_ASSERT_EQUAL(errno, ECONNREFUSED);
    unlink(path);
    char longp[300];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = 0;
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(longp), -1);
    CU_ASSERT_EQUAL(errno, ENAMETOOLONG);
    rmdir(dir);
    CU_ASSERT_EQUAL(atomic_load(&hdc_state), HDC_DETACHED);
    errno = 0;
    CU_ASSERT_PTR_NULL(heapd_malloc(10));
    CU_ASSERT_EQUAL(errno, ENOTCONN);
}

/* Something of this process already lives where the heap must go. */
static void test_address_taken(void)
{
    fx_proc_t d;
    spawn(&d);
    void *blk = mmap((void *)(uintptr_t)d.base, 1u << 20, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                     -1, 0);
    CU_ASSERT_FATAL(blk == (void *)(uintptr_t)d.base);
    errno = 0;
    CU_ASSERT_EQUAL(heapd_attach(d.sock), -1);
    CU_ASSERT_EQUAL(errno, EEXIST);
    CU_ASSERT_EQUAL(atomic_load(&hdc_state), HDC_DETACHED);
    munmap(blk, 1u << 20);
    CU_ASSERT_EQUAL(heapd_attach(d.sock), 0);                    /* the way is clear now */
    heapd_detach();
    fx_stop(&d);
}

/* ---- a peer of another protocol, or none at all ------------------------------------ */

enum greet { NEWER_WELCOME, VERSION_ERROR, HANG_UP };

static void greet(fx_peer_t *p, int conn)
{
    enum greet g = *(enum greet *)p->arg;
    if (g == NEWER_WELCOME) {
        fx_peer_welcome(p, conn, HD_PROTO_VERSION + 1);
        return;
    }
    Heapd__ClientMsg *h = fx_peer_recv(conn);
    uint64_t seq = h ? h->seq : 1;
    heapd__client_msg__free_unpacked(h, NULL);
    if (g == HANG_UP)
        return;                                                  /* closed without a word */
    Heapd__Error e = HEAPD__ERROR__INIT;
    e.err = EPROTONOSUPPORT;
    e.message = "this daemon speaks protocol 2";
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_ERROR;
    m.error = &e;
    fx_peer_send(p, conn, &m, false);
}

static int attach_to(enum greet g)
{
    fx_peer_t p;
    fx_peer_start(&p, PEER_BASE, greet, &g);
    errno = 0;
    int r = heapd_attach(p.sock);
    int e = errno;
    if (r == 0)
        heapd_detach();
    fx_peer_stop(&p);
    CU_ASSERT_EQUAL(atomic_load(&hdc_state), HDC_DETACHED);
    return r == 0 ? 0 : e;
}

static void test_wrong_peer(void)
{
    CU_ASSERT_EQUAL(attach_to(NEWER_WELCOME), EPROTONOSUPPORT);
    CU_ASSERT_EQUAL(attach_to(VERSION_ERROR), EPROTONOSUPPORT);
    CU_ASSERT_EQUAL(attach_to(HANG_UP), EPIPE);
    /* none of it left anything behind: a real daemon is joined as usual */
    fx_proc_t d;
    spawn(&d);
    CU_ASSERT_EQUAL(heapd_attach(d.sock), 0);
    void *q = heapd_malloc(1000);
    CU_ASSERT(q != NULL);
    heapd_free(q);
    heapd_detach();
    fx_stop(&d);
}

static void register_attach_suite(void)
{
    CU_pSuite s = CU_add_suite("attach", NULL, NULL);
    CU_add_test(s, "attach, detach, attach again", test_attach_detach_again);
    CU_add_test(s, "a fork child re-attaches as a client of its own", test_fork_child);
    CU_add_test(s, "no daemon: ENOENT, ECONNREFUSED, ENAMETOOLONG", test_missing_daemon);
    CU_add_test(s, "the heap's address taken: EEXIST", test_address_taken);
    CU_add_test(s, "another protocol, a hang-up: EPROTONOSUPPORT, EPIPE", test_wrong_peer);
}
UNIT_SUITE(register_attach_suite)
