/* Integration tests of the permissions side of issue 6 (docs/security.md):
 * the socket's mode and group, the SO_PEERCRED allow list (checked before the
 * memfds are passed), the seals on the memfds, and the read-only meta mapping
 * (a client that writes to it dies of SIGSEGV alone; the daemon and the other
 * clients carry on). The allow-list tests need root (CI runs as root): a child
 * becomes nobody (uid/gid 65534) with setuid; as another user they are skipped.
 * Registered with UNIT_SUITE: itest_main.c runs every registered suite. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "heapd.pb-c.h"
#include "unit.h"


/* Hello on a raw connection. Returns 0 and the Welcome's two fds, or the
 * error the daemon replied with (> 0), or -1 (no reply, bad reply). *nfds
 * gets how many fds came with the reply, whatever it was. The connection is
 * closed, or left in *connp if that is not NULL. */
static int raw_hello_conn(const char *sock, int fds[2], int *nfds, int *connp)
{
    return raw_hello_fds(sock, "itest-security", fds, nfds, connp);
}

static int raw_hello(const char *sock, int fds[2], int *nfds) { return raw_hello_conn(sock, fds, nfds, NULL); }

/* SetLimit over the client socket: the daemon's reply error, 0 for Ack, -1. */
static int raw_set_limit(const char *sock)
{
    int fds[2], nfds, fd = -1;
    if (raw_hello_conn(sock, fds, &nfds, &fd) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fds[0]);
    close(fds[1]);
    Heapd__SetLimit sl = HEAPD__SET_LIMIT__INIT;
    sl.soft = 1 << 20;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 2;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_LIMIT;
    m.set_limit = &sl;
    int ret = raw_request(fd, &m, 5000);
    close(fd);
    return ret;
}


static int exec_heapd(const char *const *args)
{
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0)
            dup2(nul, 2);
        const char *argv[16] = {HEAPD_BIN};
        for (int i = 0; args[i] && i < 14; i++)
            argv[i + 1] = args[i];
        execv(HEAPD_BIN, (char *const *)argv);
        _exit(127);
    }
    return pid < 0 ? -1 : wait_child(pid, 10);
}

/* ---- flags, socket mode and group -------------------------------------------------------- */

static void test_security_flags(void)
{
    static const char *const bad[][3] = {
        {"--socket-mode", "999", NULL},  {"--socket-mode", "0400", NULL},    {"--socket-mode", "-1", NULL},
        {"--socket-mode", "", NULL},     {"--socket-group", "no-such-group-x", NULL},
        {"--allow-uid", "no-such-user-x", NULL}, {"--allow-uid", ",", NULL}, {"--allow-gid", "1,,x-no-such", NULL},
        {"--allow-uid", "-5", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *args[] = {bad[i][0], bad[i][1], "--socket", "/tmp/heapd-itest-nope.sock", "--foreground", NULL};
        int rc = exec_heapd(args);
        if (rc != 2)
            fprintf(stderr, "heapd %s '%s' exited %d, not 2\n", bad[i][0], bad[i][1], rc);
        CU_ASSERT_EQUAL(rc, 2);
    }
}

static void test_socket_mode_group(void)
{
    daemon_proc_t d;
    struct stat st;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    CU_ASSERT(stat(d.sock, &st) == 0 && (st.st_mode & 07777) == 0600);      /* the default */
    daemon_stop(&d);

    const char *const extra[] = {"--socket-mode", "0660", "--socket-group", "65534", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", extra) == 0);
    CU_ASSERT(stat(d.sock, &st) == 0 && (st.st_mode & 07777) == 0660 && st.st_gid == NOBODY);
    daemon_stop(&d);
}

/* ---- SO_PEERCRED allow list ---------------------------------------------------------------- */

/* As nobody: a raw Hello must be answered with EACCES and no fds, and
 * heapd_attach must fail with EACCES. Exit 0 if so. */
static int refused_body(void *arg)
{
    if (become_nobody() != 0)
        return 10;
    for (int i = 0; i < 20; i++) {           /* the refusal races the Hello: try both orders */
        int fds[2], nfds;
        int r = raw_hello(arg, fds, &nfds);
        if (nfds != 0)
            return 11;                       /* the memfds must never reach a refused peer */
        if (r != EACCES) {
            fprintf(stderr, "refused raw Hello %d: got %d\n", i, r);
            return 12;
        }
        if (heapd_attach(arg) == 0)
            return 13;
        if (errno != EACCES) {
            fprintf(stderr, "refused heapd_attach %d: errno %d\n", i, errno);
            return 14;
        }
    }
    return 0;
}

/* Attach, allocate small, tiny and large, free, detach. */
static int attach_use(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 11;
    char *a = heapd_malloc(100), *b = heapd_malloc(8), *c = heapd_malloc(1 << 20);
    if (!a || !b || !c)
        return 12;
    memset(a, 1, 100);
    memset(b, 2, 8);
    memset(c, 3, 1 << 20);
    heapd_free(a);
    heapd_free(b);
    heapd_free(c);
    if (heapd_bad_frees() != 0)
        return 13;
    heapd_detach();
    return 0;
}

/* The same as nobody, which may not change the daemon's limits. */
static int allowed_body(void *arg)
{
    if (become_nobody() != 0)
        return 10;
    int r = attach_use(arg);
    if (r)
        return r;
    r = raw_set_limit(arg);
    if (r != EPERM) {
        fprintf(stderr, "SetLimit as an allowed other user: %d, not EPERM\n", r);
        return 15;
    }
    return 0;
}

static bool heap_idle(const hd_header_t *h)
{
    return h->spans_inuse == 0 && h->pages_inuse == 0 && h->objects_central == 0 && h->clients == 1;
}

static void peer_case(const char *const *extra, int (*body)(void *), const char *what)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", extra) == 0);
    CU_ASSERT_FATAL(chmod(d.dir, 0711) == 0);        /* nobody may reach the socket file... */
    int rc = run_child(body, d.sock, 30);            /* ...which is 0666: SO_PEERCRED decides */
    if (rc != 0) {
        fprintf(stderr, "%s: child exited %d; daemon log:\n", what, rc);
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "cat %s >&2", d.log);
        if (system(cmd)) {}
    }
    CU_ASSERT_EQUAL(rc, 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, heap_idle, 5000));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_peer_allow_list(void)
{
    if (geteuid() != 0) {
        fprintf(stderr, "(not root: allow-list tests skipped) ");
        return;
    }
    const char *const none[] = {"--socket-mode", "0666", NULL};
    peer_case(none, refused_body, "default: nobody refused");
    const char *const other[] = {"--socket-mode", "0666", "--allow-uid", "1,2", "--allow-gid", "3", NULL};
    peer_case(other, refused_body, "other ids allowed: nobody refused");
    const char *const uid[] = {"--socket-mode", "0666", "--allow-uid", "1,65534", NULL};
    peer_case(uid, allowed_body, "--allow-uid 65534");
    const char *const gid[] = {"--socket-mode", "0666", "--allow-gid", "65534", NULL};
    peer_case(gid, allowed_body, "--allow-gid 65534");
}

/* ---- seals ----------------------------------------------------------------------------------- */

static void test_memfds_sealed(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    int fds[2], nfds;
    CU_ASSERT_FATAL(raw_hello(d.sock, fds, &nfds) == 0);
    int meta = fds[0], heap = fds[1];
    struct stat ms, hs;
    CU_ASSERT_FATAL(fstat(meta, &ms) == 0 && fstat(heap, &hs) == 0);
    /* neither can shrink (SIGBUS for everyone) nor grow */
    CU_ASSERT(ftruncate(heap, 0) != 0 && errno == EPERM);
    CU_ASSERT(ftruncate(heap, hs.st_size + (1 << 20)) != 0 && errno == EPERM);
    CU_ASSERT(ftruncate(meta, 0) != 0 && errno == EPERM);
    CU_ASSERT(ftruncate(meta, ms.st_size + 4096) != 0 && errno == EPERM);
    CU_ASSERT(fallocate(heap, 0, hs.st_size, 1 << 20) != 0 && errno == EPERM);
    /* the meta memfd: no writable mapping, no write(2), and a read-only
     * mapping cannot be made writable */
    CU_ASSERT(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, meta, 0) == MAP_FAILED && errno == EPERM);
    CU_ASSERT(pwrite(meta, "x", 1, 0) < 0 && errno == EPERM);
    void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, meta, 0);
    CU_ASSERT_FATAL(m != MAP_FAILED);
    CU_ASSERT(mprotect(m, 4096, PROT_READ | PROT_WRITE) != 0);
    CU_ASSERT(((const hd_header_t *)m)->magic == HD_MAGIC);
    munmap(m, 4096);
    CU_ASSERT(fstat(heap, &hs) == 0 && fstat(meta, &ms) == 0);
    close(meta);
    close(heap);
    CU_ASSERT_EQUAL(raw_set_limit(d.sock), 0);      /* the daemon's own user may set limits */
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- the read-only meta mapping ---------------------------------------------------------------- */

struct ro_arg { const char *sock; uint64_t base; int what; };

/* Attach, use a span (so there is a live span entry and cached spans to
 * reclaim), then write to the meta mapping: must die of SIGSEGV. */
static int ro_writer(void *arg)
{
    const struct ro_arg *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 10;
    char *p = heapd_malloc(200);
    if (!p)
        return 11;
    heapd_free(p);
    uintptr_t pages = (uintptr_t)heapd_offset_to_ptr(0);
    uint64_t id = ((uintptr_t)p - pages) / HD_PAGE_SIZE;
    const hd_header_t *hdr = (const hd_header_t *)(uintptr_t)a->base;
    if (hdr->magic != HD_MAGIC)
        return 12;
    if (mprotect((void *)(uintptr_t)a->base, 4096, PROT_READ | PROT_WRITE) == 0)
        return 13;
    volatile uint8_t *target;
    switch (a->what) {
    case 0:
        target = (volatile uint8_t *)(uintptr_t)&hdr->spans_inuse;                           /* header */
        break;
    case 1:
        target = (volatile uint8_t *)(uintptr_t)(a->base + hdr->span_off + id * sizeof(hd_span_t)); /* span table */
        break;
    default:
        target = (volatile uint8_t *)(uintptr_t)(a->base + hdr->pagemap_off + id * sizeof(uint32_t)); /* pagemap */
        break;
    }
    signal(SIGSEGV, SIG_DFL);                 /* die of it, also under ASan (its handler exits 1) */
    *target = 0xff;
    return 14;                                /* not reached */
}

struct survivor { const char *sock; int ready[2], go[2]; };

/* Another client, alive across the crashes: allocates before and after,
 * checks its objects, frees everything. */
static int survivor_body(void *arg)
{
    struct survivor *s = arg;
    if (heapd_attach(s->sock) != 0)
        return 20;
    enum { N = 2000 };
    static char *objs[2 * N];
    for (int i = 0; i < N; i++) {
        size_t sz = 8 + (size_t)(i * 37) % 3000;
        if (!(objs[i] = heapd_malloc(sz)))
            return 21;
        memset(objs[i], (char)i, 8);
    }
    char c = 1;
    if (write(s->ready[1], &c, 1) != 1 || read(s->go[0], &c, 1) != 1)
        return 22;
    for (int i = N; i < 2 * N; i++) {
        if (!(objs[i] = heapd_malloc(8 + (size_t)(i * 53) % 5000)))
            return 23;
        memset(objs[i], (char)i, 8);
    }
    for (int i = 0; i < 2 * N; i++) {
        for (int k = 0; k < 8; k++)
            if (objs[i][k] != (char)i)
                return 24;
        heapd_free(objs[i]);
    }
    if (heapd_bad_frees() != 0)
        return 25;
    heapd_detach();
    return 0;
}

static int survivor_main(void *arg)
{
    struct survivor *s = arg;
    close(s->ready[0]);
    close(s->go[1]);
    return survivor_body(arg);
}

static void test_meta_read_only(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    struct survivor s = {.sock = d.sock};
    CU_ASSERT_FATAL(pipe(s.ready) == 0 && pipe(s.go) == 0);
    pid_t sp = fork();
    CU_ASSERT_FATAL(sp >= 0);
    if (sp == 0)
        _exit(survivor_main(&s));
    close(s.ready[1]);
    close(s.go[0]);
    char c;
    CU_ASSERT_FATAL(read(s.ready[0], &c, 1) == 1);
    for (int what = 0; what < 3; what++) {
        struct ro_arg a = {.sock = d.sock, .base = d.base, .what = what};
        int rc = run_child(ro_writer, &a, 30);
        if (rc != 128 + SIGSEGV)
            fprintf(stderr, "meta write %d: child exited %d, not SIGSEGV\n", what, rc);
        CU_ASSERT_EQUAL(rc, 128 + SIGSEGV);
    }
    CU_ASSERT(write(s.go[1], &c, 1) == 1);
    CU_ASSERT_EQUAL(wait_child(sp, 60), 0);
    close(s.ready[0]);
    close(s.go[1]);
    /* a newcomer is served, and with everyone gone the books are back to empty */
    CU_ASSERT_EQUAL(run_child(attach_use, d.sock, 30), 0);
    hd_header_t h;
    bool idle = books_wait(d.sock, &h, heap_idle, 5000);
    if (!idle)
        fprintf(stderr, "books: spans_inuse %llu pages_inuse %llu objects_central %llu clients %llu\n",
                (unsigned long long)h.spans_inuse, (unsigned long long)h.pages_inuse,
                (unsigned long long)h.objects_central, (unsigned long long)h.clients);
    CU_ASSERT(idle);
    CU_ASSERT_EQUAL(h.spans_cached + h.spans_central + h.spans_large, h.spans_inuse);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void register_security_suite(void)
{
    CU_pSuite s = CU_add_suite("security", NULL, NULL);
    CU_add_test(s, "permission flags", test_security_flags);
    CU_add_test(s, "socket mode and group", test_socket_mode_group);
    CU_add_test(s, "SO_PEERCRED allow list (setuid nobody)", test_peer_allow_list);
    CU_add_test(s, "memfds sealed against a client", test_memfds_sealed);
    CU_add_test(s, "meta mapping read-only: writer dies alone", test_meta_read_only);
}
UNIT_SUITE(register_security_suite)
