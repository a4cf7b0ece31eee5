/* Integration tests of the lease (daemon/conn.h): memory lent to a client
 * stays its own until its process is gone.
 *  - a paused client (SIGSTOP) under a flood of Flush requests, while other
 *    clients allocate heavily, is skipped, never cut off: resumed, it finds
 *    every object intact, goes on allocating, keeps its client id, and no
 *    object of another client ever overlaps one of its own;
 *  - a client dropped for a protocol violation keeps its spans CACHED (and
 *    shows as quarantined) until its process exits; then they are reclaimed;
 *    a libheapd client so dropped keeps its objects, gets EPIPE, and starts
 *    over with heapd_detach + heapd_attach;
 *  - a client that sends requests without reading the replies is served at
 *    its own pace, never disconnected;
 *  - a peer whose pid heapd cannot see (another pid namespace) is refused.
 * Registered with UNIT_SUITE: itest_main.c runs every registered suite. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "harness.h"
#include "heapd.h"
#include "heapd.pb-c.h"
#include "unit.h"

#define LEASE_SEED     0x1ea5eull
#define OTHERS         3            /* clients that allocate while one is stopped */
#define OTHER_OBJS     6000         /* objects each of them keeps */
#define FLUSHES        1200         /* Flush requests sent while it is stopped */
#define TABLE_MAX      (64 * 1024)

static uint64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Every live object of every process, in memory shared by all of them (the
 * heap is mapped at the same address everywhere, so addresses compare). */
typedef struct lease_obj {
    uint64_t addr, size;
    uint32_t who;                   /* 0: the stopped client, 1..OTHERS: the others */
} lease_obj_t;
typedef struct lease_table {
    _Atomic uint32_t n;
    lease_obj_t o[TABLE_MAX];
} lease_table_t;

static bool table_add(lease_table_t *t, const void *p, size_t size, uint32_t who)
{
    uint32_t i = atomic_fetch_add(&t->n, 1);
    if (i >= TABLE_MAX)
        return false;
    t->o[i] = (lease_obj_t){(uintptr_t)p, size, who};
    return true;
}

/* Every byte of an object carries its pattern. */
static uint8_t pat(uint64_t tag, size_t i) { return (uint8_t)((tag * 0x9e3779b97f4a7c15ull >> 29) + i * 131u); }
static void paint(uint8_t *p, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat(tag, i);
}
static bool painted(const uint8_t *p, size_t n, uint64_t tag)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat(tag, i))
            return false;
    return true;
}

static void send_byte(int fd, char c) { (void)!write(fd, &c, 1); }

/* A byte from fd within timeout_ms; -1 otherwise. */
static int recv_byte(int fd, unsigned timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char c;
    if (poll(&p, 1, (int)timeout_ms) != 1 || read(fd, &c, 1) != 1)
        return -1;
    return (unsigned char)c;
}

/* ---- the paused client ------------------------------------------------------------------- */

/* Sizes of the stopped client's objects: tiny, several small classes, large. */
static const size_t held_sizes[] = {8, 24, 48, 128, 512, 2048, 8192, 30000, 100000};
#define HELD_PER_SIZE 300
#define HELD_LARGE    4             /* of the last size */
#define NHELD (HELD_PER_SIZE * (sizeof(held_sizes) / sizeof(held_sizes[0]) - 1) + HELD_LARGE)

typedef struct lease_args {
    const char *sock;
    lease_table_t *t;
    int rfd, wfd;                   /* from / to the parent */
    uint32_t who;
} lease_args_t;

static int stopped_body(void *arg)
{
    lease_args_t *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 10;
    static uint8_t *held[2 * NHELD];
    static size_t held_size[2 * NHELD];
    unsigned n = 0;
    for (size_t s = 0; s < sizeof(held_sizes) / sizeof(held_sizes[0]); s++) {
        unsigned k = held_sizes[s] > 32768 ? HELD_LARGE : HELD_PER_SIZE;
        for (unsigned i = 0; i < k; i++, n++) {
            if (!(held[n] = heapd_malloc(held_sizes[s])))
                return 11;
            held_size[n] = held_sizes[s];
            paint(held[n], held_sizes[s], n);
            if (!table_add(a->t, held[n], held_sizes[s], 0))
                return 12;
        }
    }
    send_byte(a->wfd, 'r');                     /* ready: the parent stops us now */
    if (recv_byte(a->rfd, 60000) != 'g')        /* resumed and told to go on */
        return 13;
    for (unsigned i = 0; i < n; i++)
        if (!painted(held[i], held_size[i], i))
            return 14;                          /* an object changed while we were stopped */
    /* Go on allocating: from the spans we kept, then new ones. */
    unsigned m = n;
    for (size_t s = 0; s + 1 < sizeof(held_sizes) / sizeof(held_sizes[0]); s++) {
        for (unsigned i = 0; i < HELD_PER_SIZE; i++, m++) {
            if (!(held[m] = heapd_malloc(held_sizes[s])))
                return 15;
            held_size[m] = held_sizes[s];
            paint(held[m], held_sizes[s], m);
            if (!table_add(a->t, held[m], held_sizes[s], 0))
                return 16;
        }
    }
    for (unsigned i = 0; i < m; i++)
        if (!painted(held[i], held_size[i], i))
            return 17;
    send_byte(a->wfd, 'a');                     /* allocated: the parent checks our id */
    if (recv_byte(a->rfd, 60000) != 'f')
        return 18;
    for (unsigned i = 0; i < m; i++)
        if (!painted(held[i], held_size[i], i))
            return 19;                          /* another process wrote into ours */
    for (unsigned i = 0; i < m; i++)
        heapd_free(held[i]);
    heapd_detach();
    return heapd_bad_frees() ? 20 : 0;
}

/* Another client: allocates many objects of the same sizes and keeps them. */
static int other_body(void *arg)
{
    lease_args_t *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 30;
    static uint8_t *p[OTHER_OBJS];
    static size_t sz[OTHER_OBJS];
    uint64_t rng = LEASE_SEED + a->who;
    for (unsigned i = 0; i < OTHER_OBJS; i++) {
        sz[i] = held_sizes[test_rand(&rng) % (sizeof(held_sizes) / sizeof(held_sizes[0]) - 1)];
        if (!(p[i] = heapd_malloc(sz[i])))
            return 31;
        paint(p[i], sz[i], a->who * 1000003ull + i);
        if (!table_add(a->t, p[i], sz[i], a->who))
            return 32;
        if (i % 64 == 63)
            heapd_flush();                      /* give back now and then: spans change hands */
    }
    send_byte(a->wfd, 'a');
    if (recv_byte(a->rfd, 60000) != 'f')
        return 33;
    for (unsigned i = 0; i < OTHER_OBJS; i++)
        if (!painted(p[i], sz[i], a->who * 1000003ull + i))
            return 34;
    for (unsigned i = 0; i < OTHER_OBJS; i++)
        heapd_free(p[i]);
    heapd_detach();
    return heapd_bad_frees() ? 35 : 0;
}

/* Start body in a child with pipes both ways. */
static pid_t start_proc(int (*body)(void *), lease_args_t *a, int *to, int *from)
{
    int down[2], up[2];
    if (pipe(down) < 0 || pipe(up) < 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(120);
        close(down[1]);
        close(up[0]);
        a->rfd = down[0];
        a->wfd = up[1];
        _exit(body(a));
    }
    close(down[0]);
    close(up[1]);
    *to = down[1];
    *from = up[0];
    return pid;
}

/* The process's state letter in /proc/pid/stat ('T' when stopped). */
static char proc_state(pid_t pid)
{
    char buf[512];
    const char *p = proc_stat_fields(pid, buf, sizeof(buf));
    return p ? p[0] : 0;
}

/* The newest client row of pid in the daemon's Clients reply: its id and
 * state ("live", "quarantined"), or id 0 when there is none. */
static uint32_t client_of(int ctl, pid_t pid, char *state, size_t statelen)
{
    static uint64_t seq = 1000000;
    uint32_t id = 0;
    if (state && statelen)
        state[0] = 0;
    if (ctl_send(ctl, ++seq, HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS) < 0)
        return 0;
    Heapdctl__ControlReply *r = ctl_recv(ctl, 5000);
    if (r && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS)
        for (size_t i = 0; i < r->clients->n_clients; i++)
            if (r->clients->clients[i]->pid == pid && r->clients->clients[i]->id > id) {
                id = r->clients->clients[i]->id;
                if (state)
                    snprintf(state, statelen, "%s", r->clients->clients[i]->state);
            }
    if (r)
        heapdctl__control_reply__free_unpacked(r, NULL);
    return id;
}

static int cmp_obj(const void *x, const void *y)
{
    const lease_obj_t *a = x, *b = y;
    return a->addr < b->addr ? -1 : a->addr > b->addr;
}

static bool books_no_clients(const hd_header_t *h) { return h->clients == 1 && h->spans_cached == 0; }

static void test_paused_client(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "1GiB", NULL) == 0);
    lease_table_t *t = mmap(NULL, sizeof(*t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CU_ASSERT_FATAL(t != MAP_FAILED);
    int ctl = ctl_open(d.sock);
    CU_ASSERT_FATAL(ctl >= 0);

    lease_args_t sa = {.sock = d.sock, .t = t, .who = 0};
    int s_to, s_from;
    pid_t sp = start_proc(stopped_body, &sa, &s_to, &s_from);
    CU_ASSERT_FATAL(sp > 0);
    CU_ASSERT_FATAL(recv_byte(s_from, 30000) == 'r');
    char state[32];
    uint32_t id0 = client_of(ctl, sp, state, sizeof(state));
    CU_ASSERT(id0 != 0 && strcmp(state, "live") == 0);
    CU_ASSERT_FATAL(kill(sp, SIGSTOP) == 0);
    uint64_t t0 = ms_now();
    while (proc_state(sp) != 'T' && ms_now() - t0 < 5000)
        sched_yield();
    CU_ASSERT_FATAL(proc_state(sp) == 'T');

    /* Others allocate heavily while the flood of Flush goes to everyone. */
    lease_args_t oa[OTHERS];
    int o_to[OTHERS], o_from[OTHERS];
    pid_t op[OTHERS];
    for (unsigned i = 0; i < OTHERS; i++) {
        oa[i] = (lease_args_t){.sock = d.sock, .t = t, .who = i + 1};
        op[i] = start_proc(other_body, &oa[i], &o_to[i], &o_from[i]);
        CU_ASSERT_FATAL(op[i] > 0);
    }
    unsigned replies = 0, asked_max = 0;
    for (unsigned k = 0; k < FLUSHES; k++) {    /* pipelined, a window of 64 */
        CU_ASSERT_FATAL(ctl_send(ctl, k + 1, HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH) == 0);
        while (k + 1 - replies > 64 || (k + 1 == FLUSHES && replies < FLUSHES)) {
            Heapdctl__ControlReply *r = ctl_recv(ctl, 10000);
            CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_FLUSH);
            if (r->flush->clients > asked_max)
                asked_max = r->flush->clients;
            heapdctl__control_reply__free_unpacked(r, NULL);
            replies++;
        }
    }
    CU_ASSERT_EQUAL(replies, FLUSHES);
    CU_ASSERT(asked_max >= 1);                  /* the stopped one was asked too */
    for (unsigned i = 0; i < OTHERS; i++)
        CU_ASSERT_EQUAL(recv_byte(o_from[i], 60000), 'a');
    CU_ASSERT_EQUAL(client_of(ctl, sp, state, sizeof(state)), id0);   /* still connected, same lease */
    CU_ASSERT_STRING_EQUAL(state, "live");

    CU_ASSERT(kill(sp, SIGCONT) == 0);
    send_byte(s_to, 'g');
    CU_ASSERT_EQUAL(recv_byte(s_from, 60000), 'a');
    CU_ASSERT_EQUAL(client_of(ctl, sp, state, sizeof(state)), id0);   /* never dropped */
    CU_ASSERT_STRING_EQUAL(state, "live");

    /* No two live objects, of any processes, overlap. */
    uint32_t n = atomic_load(&t->n);
    CU_ASSERT_FATAL(n <= TABLE_MAX);
    CU_ASSERT(n == NHELD + (NHELD - HELD_LARGE) + OTHERS * OTHER_OBJS);
    qsort(t->o, n, sizeof(t->o[0]), cmp_obj);
    unsigned overlaps = 0;
    for (uint32_t i = 0; i + 1 < n; i++)
        if (t->o[i].addr + t->o[i].size > t->o[i + 1].addr) {
            if (overlaps++ < 5)
                fprintf(stderr, "overlap: %#llx+%llu (client %u) and %#llx (client %u)\n",
                        (unsigned long long)t->o[i].addr, (unsigned long long)t->o[i].size, t->o[i].who,
                        (unsigned long long)t->o[i + 1].addr, t->o[i + 1].who);
        }
    CU_ASSERT_EQUAL(overlaps, 0);

    send_byte(s_to, 'f');
    for (unsigned i = 0; i < OTHERS; i++)
        send_byte(o_to[i], 'f');
    CU_ASSERT_EQUAL(wait_child(sp, 60), 0);
    for (unsigned i = 0; i < OTHERS; i++) {
        CU_ASSERT_EQUAL(wait_child(op[i], 60), 0);
        close(o_to[i]);
        close(o_from[i]);
    }
    close(s_to);
    close(s_from);
    close(ctl);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, books_no_clients, 5000));
    munmap(t, sizeof(*t));
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- a dropped connection: quarantine ------------------------------------------------------ */

#define VIOL_SPANS 4

/* Take spans on a raw connection, tell the parent their ids, send garbage,
 * wait until the daemon closed the connection, then live until told. */
static int violator_body(void *arg)
{
    lease_args_t *a = arg;
    int fds[2], nfds, conn = -1;
    if (raw_hello_fds(a->sock, "itest-violator", fds, &nfds, &conn) != 0)
        return 40;
    close(fds[0]);
    close(fds[1]);
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = 5;
    rf.count = VIOL_SPANS;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 2;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    uint8_t buf[4096];
    size_t len = heapd__client_msg__pack(&m, buf);
    ssize_t r = raw_call(conn, buf, len, buf, sizeof(buf), 5000);
    if (r <= 0)
        return 41;
    Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, buf);
    if (!rep || rep->body_case != HEAPD__DAEMON_MSG__BODY_SPANS || rep->spans->n_span_ids == 0)
        return 42;
    uint32_t ids[VIOL_SPANS + 1] = {(uint32_t)rep->spans->n_span_ids};
    for (size_t i = 0; i < rep->spans->n_span_ids && i < VIOL_SPANS; i++)
        ids[i + 1] = rep->spans->span_ids[i];
    heapd__daemon_msg__free_unpacked(rep, NULL);
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x13, 0x37};
    if (send(conn, garbage, sizeof(garbage), MSG_NOSIGNAL) != (ssize_t)sizeof(garbage))
        return 43;
    struct pollfd p = {.fd = conn, .events = POLLIN};   /* the daemon closes it: EOF */
    uint64_t t0 = ms_now();
    while (ms_now() - t0 < 5000 && !(poll(&p, 1, 100) == 1 && recv(conn, buf, sizeof(buf), MSG_DONTWAIT) <= 0))
        ;
    if (ms_now() - t0 >= 5000)
        return 44;
    if (write(a->wfd, ids, sizeof(ids)) != (ssize_t)sizeof(ids))
        return 45;
    return recv_byte(a->rfd, 60000) == 'x' ? 0 : 46;
}

/* The span table, read-only, from the meta memfd of a raw connection. */
typedef struct span_view {
    hd_header_t *hdr;
    hd_seg_t seg;
} span_view_t;

static bool span_view_open(const char *sock, span_view_t *v)
{
    int fds[2], nfds;
    if (raw_hello_fds(sock, "itest-spans", fds, &nfds, NULL) != 0)
        return false;
    hd_header_t h;
    bool ok = pread(fds[0], &h, sizeof(h), 0) == (ssize_t)sizeof(h);
    v->hdr = ok ? mmap(NULL, h.meta_size, PROT_READ, MAP_SHARED, fds[0], 0) : MAP_FAILED;
    close(fds[0]);
    close(fds[1]);
    if (v->hdr == MAP_FAILED)
        return false;
    v->seg.spans = (hd_span_t *)((char *)v->hdr + v->hdr->span_off);
    v->seg.npages = v->hdr->npages;
    return true;
}

static bool cached_by(const span_view_t *v, uint32_t id, uint32_t owner)
{
    const hd_span_t *s = &v->seg.spans[id];
    return atomic_load_explicit(&s->state, memory_order_acquire) == HD_SPAN_CACHED && s->owner == owner;
}

static void test_quarantine(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int ctl = ctl_open(d.sock);
    CU_ASSERT_FATAL(ctl >= 0);
    lease_args_t a = {.sock = d.sock};
    int to, from;
    pid_t pid = start_proc(violator_body, &a, &to, &from);
    CU_ASSERT_FATAL(pid > 0);
    uint32_t ids[VIOL_SPANS + 1];
    struct pollfd p = {.fd = from, .events = POLLIN};
    CU_ASSERT_FATAL(poll(&p, 1, 10000) == 1 && read(from, ids, sizeof(ids)) == (ssize_t)sizeof(ids));
    CU_ASSERT_FATAL(ids[0] >= 1 && ids[0] <= VIOL_SPANS);

    span_view_t v = {0};
    CU_ASSERT_FATAL(span_view_open(d.sock, &v));
    uint32_t owner = v.seg.spans[ids[1]].owner;
    CU_ASSERT(owner != 0);
    char state[32];
    CU_ASSERT_EQUAL(client_of(ctl, pid, state, sizeof(state)), owner);   /* its connection is gone... */
    CU_ASSERT_STRING_EQUAL(state, "quarantined");
    for (uint32_t i = 1; i <= ids[0]; i++)
        CU_ASSERT(cached_by(&v, ids[i], owner));                          /* ...its spans are still its own */
    /* Others allocating meanwhile never get them. */
    hd_header_t h;
    CU_ASSERT_EQUAL(books_read(d.sock, &h), 0);
    CU_ASSERT(h.spans_cached >= ids[0]);
    for (uint32_t i = 1; i <= ids[0]; i++)
        CU_ASSERT(cached_by(&v, ids[i], owner));

    send_byte(to, 'x');                                                  /* now the process exits */
    CU_ASSERT_EQUAL(wait_child(pid, 30), 0);
    uint64_t t0 = ms_now();
    bool reclaimed = false;
    while (!reclaimed && ms_now() - t0 < 5000) {
        reclaimed = true;
        for (uint32_t i = 1; i <= ids[0]; i++)
            reclaimed &= !cached_by(&v, ids[i], owner);
        if (!reclaimed)
            sched_yield();
    }
    CU_ASSERT(reclaimed);
    CU_ASSERT_EQUAL(client_of(ctl, pid, state, sizeof(state)), 0);     /* the record is gone */
    CU_ASSERT(books_wait(d.sock, &h, books_no_clients, 5000));
    munmap(v.hdr, v.hdr->meta_size);
    close(to);
    close(from);
    close(ctl);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- libheapd dropped ----------------------------------------------------------------------------- */

/* libheapd's connection: the SEQPACKET socket connected to sock. */
static int heapd_conn_fd(const char *sock)
{
    for (int fd = 3; fd < 1024; fd++) {
        int type = 0;
        socklen_t tl = sizeof(type);
        struct sockaddr_un sa;
        socklen_t sl = sizeof(sa);
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_SEQPACKET &&
            getpeername(fd, (struct sockaddr *)&sa, &sl) == 0 && strcmp(sa.sun_path, sock) == 0)
            return fd;
    }
    return -1;
}

#define DROP_OBJS 2000

/* A libheapd client whose connection the daemon drops (we make it send
 * garbage): its objects stay valid, allocation fails with EPIPE once the
 * cache needs the daemon, and detach + attach start over with a new id while
 * the old one stays quarantined. */
static int dropped_body(void *arg)
{
    const char *sock = arg;
    if (heapd_attach(sock) != 0)
        return 50;
    static uint8_t *p[DROP_OBJS];
    for (unsigned i = 0; i < DROP_OBJS; i++) {
        if (!(p[i] = heapd_malloc(i % 2 ? 256 : 8)))
            return 51;
        paint(p[i], i % 2 ? 256 : 8, i);
    }
    int ctl = ctl_open(sock);
    char state[32];
    uint32_t id = client_of(ctl, getpid(), state, sizeof(state));
    if (!id || strcmp(state, "live") != 0)
        return 52;
    int fd = heapd_conn_fd(sock);
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    if (fd < 0 || send(fd, garbage, sizeof(garbage), MSG_NOSIGNAL) != (ssize_t)sizeof(garbage))
        return 53;
    uint64_t t0 = ms_now();
    while (client_of(ctl, getpid(), state, sizeof(state)) == id && strcmp(state, "quarantined") != 0 &&
           ms_now() - t0 < 5000)
        sched_yield();
    if (strcmp(state, "quarantined") != 0)
        return 54;
    /* Allocation goes on from what the cache holds (still ours), then fails
     * with EPIPE when it needs the daemon. */
    unsigned more = 0;
    errno = 0;
    while (more < 100000 && heapd_malloc(256))
        more++;
    if (more == 100000 || errno != EPIPE)
        return 55;
    more = 0;                                       /* tiny: the open block, then EPIPE */
    errno = 0;
    while (more < 100000 && heapd_malloc(8))
        more++;
    if (more == 100000 || errno != EPIPE)
        return 56;
    errno = 0;
    if (heapd_malloc(1024) || errno != EPIPE)       /* a class it never used: at once */
        return 62;
    for (unsigned i = 0; i < DROP_OBJS; i++)
        if (!painted(p[i], i % 2 ? 256 : 8, i))
            return 57;
    for (unsigned i = 0; i < DROP_OBJS; i++)
        heapd_free(p[i]);                           /* frees still work, locally */
    heapd_detach();
    if (heapd_attach(sock) != 0)                    /* and start over */
        return 58;
    uint8_t *q = heapd_malloc(256);
    if (!q)
        return 59;
    paint(q, 256, 7);
    uint32_t id2 = client_of(ctl, getpid(), state, sizeof(state));   /* the newest row */
    if (id2 == id || strcmp(state, "live") != 0 || !painted(q, 256, 7))
        return 60;
    heapd_free(q);
    heapd_detach();
    close(ctl);
    return heapd_bad_frees() ? 61 : 0;
}

static void test_dropped_client(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int rc = run_child(dropped_body, d.sock, 60);
    if (rc != 0)
        fprintf(stderr, "dropped client: exit %d\n", rc);
    CU_ASSERT_EQUAL(rc, 0);
    hd_header_t h;
    CU_ASSERT(books_wait(d.sock, &h, books_no_clients, 5000));   /* the quarantine ended with it */
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- a client that does not read its replies ------------------------------------------------ */

/* Requests sent without reading a reply: the daemon keeps the reply that does
 * not fit and stops reading that client until it is out, so the client's own
 * socket fills and its sends block. It is never cut off: once it reads, every
 * reply arrives, in order. */
static void test_unread_replies(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    int fds[2], nfds, conn = -1;
    CU_ASSERT_FATAL(raw_hello_fds(d.sock, "itest-noreader", fds, &nfds, &conn) == 0);
    close(fds[0]);
    close(fds[1]);
    Heapd__SetQuota q = HEAPD__SET_QUOTA__INIT;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_QUOTA;
    m.set_quota = &q;
    uint8_t buf[4096];
    uint64_t sent = 0, t0 = ms_now();
    bool full = false;
    /* Send while there is room; when there is none for 200 ms the daemon holds
     * a reply and has stopped reading us (a slower daemon only makes us send
     * more). A daemon that cut us off shows as an error or a hang-up. */
    while (sent < 20000 && ms_now() - t0 < 20000) {
        m.seq = 2 + sent;
        size_t len = heapd__client_msg__pack(&m, buf);
        ssize_t r = send(conn, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (r == (ssize_t)len) {
            sent++;
            continue;
        }
        if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            break;
        struct pollfd p = {.fd = conn, .events = POLLOUT};
        int pr = poll(&p, 1, 200);
        if (pr == 0) {
            full = true;
            break;
        }
        if (p.revents & (POLLHUP | POLLERR))
            break;
    }
    CU_ASSERT(full);
    CU_ASSERT(sent > 100);
    uint64_t got = 0;
    bool in_order = true;
    while (got < sent) {
        ssize_t r = raw_call(conn, NULL, 0, buf, sizeof(buf), 5000);
        if (r <= 0)
            break;                               /* EOF: it cut us off */
        Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, buf);
        CU_ASSERT_FATAL(rep != NULL);
        in_order &= rep->seq == 2 + got && rep->body_case == HEAPD__DAEMON_MSG__BODY_ACK;
        heapd__daemon_msg__free_unpacked(rep, NULL);
        got++;
    }
    CU_ASSERT_EQUAL(got, sent);
    CU_ASSERT(in_order);
    m.seq = 2 + sent;                            /* and it still serves us */
    size_t len = heapd__client_msg__pack(&m, buf);
    ssize_t r = raw_call(conn, buf, len, buf, sizeof(buf), 5000);
    CU_ASSERT(r > 0);
    close(conn);
    int st = daemon_stop(&d);
    CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- a peer heapd cannot see ------------------------------------------------------------------ */

/* heapd in a pid namespace of its own: this process, in the parent namespace,
 * has no pid there (SO_PEERCRED pid 0), so no pidfd, so no lease: refused
 * with EACCES and a log line that says why. Needs CAP_SYS_ADMIN for
 * unshare(CLONE_NEWPID); without it the test says so and checks nothing. */
static void test_foreign_pidns(void)
{
    int up[2], down[2];
    CU_ASSERT_FATAL(pipe(up) == 0 && pipe(down) == 0);
    fflush(NULL);
    pid_t outer = fork();
    CU_ASSERT_FATAL(outer >= 0);
    if (outer == 0) {
        alarm(60);
        close(up[0]);
        close(down[1]);
        daemon_proc_t d;
        memset(&d, 0, sizeof(d));
        if (unshare(CLONE_NEWPID) != 0) {           /* d.sock empty: cannot */
            (void)!write(up[1], &d, sizeof(d));
            _exit(0);
        }
        pid_t inner = fork();                       /* pid 1 of the new namespace */
        if (inner == 0) {
            int rc = daemon_start(&d, "64MiB", NULL) == 0 ? 0 : 1;
            (void)!write(up[1], &d, sizeof(d));
            (void)recv_byte(down[0], 30000);        /* the test is done (or gone: EOF) */
            if (rc == 0) {
                int st = daemon_stop(&d);
                rc = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 2;
            }
            harness_cleanup();                      /* its temp dir (no atexit after _exit) */
            _exit(rc);
        }
        int st = 0;
        waitpid(inner, &st, 0);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 3);
    }
    close(up[1]);
    close(down[0]);
    daemon_proc_t d;
    struct pollfd p = {.fd = up[0], .events = POLLIN};
    CU_ASSERT_FATAL(poll(&p, 1, 20000) == 1 && read(up[0], &d, sizeof(d)) == (ssize_t)sizeof(d));
    if (!d.sock[0]) {
        printf("\n  foreign pid namespace: skipped (unshare(CLONE_NEWPID) not permitted here)\n");
    } else {
        int fds[2], nfds;
        CU_ASSERT_EQUAL(raw_hello_fds(d.sock, "itest-foreign", fds, &nfds, NULL), EACCES);
        CU_ASSERT_EQUAL(nfds, 0);                   /* no memfd reaches it */
        char logtext[8192] = "";
        FILE *f = fopen(d.log, "r");
        if (f) {
            size_t n = fread(logtext, 1, sizeof(logtext) - 1, f);
            logtext[n] = 0;
            fclose(f);
        }
        CU_ASSERT_PTR_NOT_NULL(strstr(logtext, "not visible from heapd's pid namespace"));
    }
    send_byte(down[1], 'x');
    CU_ASSERT_EQUAL(wait_child(outer, 30), 0);
    close(up[0]);
    close(down[1]);
}

static void register_lease_suite(void)
{
    CU_pSuite s = CU_add_suite("lease", NULL, NULL);
    CU_add_test(s, "paused client under a Flush flood keeps its memory and its lease", test_paused_client);
    CU_add_test(s, "dropped connection: memory quarantined until the process exits", test_quarantine);
    CU_add_test(s, "libheapd dropped: objects stay, EPIPE, detach + attach start over", test_dropped_client);
    CU_add_test(s, "a client that does not read its replies is never cut off", test_unread_replies);
    CU_add_test(s, "a peer in a pid namespace heapd cannot see is refused", test_foreign_pidns);
}
UNIT_SUITE(register_lease_suite)
