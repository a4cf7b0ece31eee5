/* daemon_fixture.c: see daemon_fixture.h. */
#define _GNU_SOURCE
#include "daemon_fixture.h"

#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "mcentral.h"
#include "unit.h"

daemon_t *fx_daemon_new(uint64_t size, uint64_t base)
{
    daemon_t *d = calloc(1, sizeof(*d));
    CU_ASSERT_FATAL(d != NULL);
    char err[256];
    daemon_opts_t o = {.size = size, .base = base, .quiet = true};
    int r = daemon_init(d, &o, err, sizeof(err));
    if (r < 0)
        fprintf(stderr, "daemon_init: %s\n", err);
    CU_ASSERT_FATAL(r == 0);
    return d;
}

void fx_check(daemon_t *d)
{
    char err[256] = "";
    bool ok = mheap_check(&d->heap, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "mheap_check: %s\n", err);
    CU_ASSERT(ok);
    ok = mcentral_check(&d->central, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "mcentral_check: %s\n", err);
    CU_ASSERT(ok);
}

void fx_daemon_free(daemon_t *d)
{
    client_fork_children_free(d);
    while (d->clients)
        client_close(d, d->clients, "test over");
    fx_check(d);
    daemon_destroy(d);
    free(d);
}

enum rpc_verdict fx_send(daemon_t *d, client_t *c, Heapd__ClientMsg *m, rpc_out_t *out)
{
    uint8_t buf[HD_MAX_MSG];
    size_t n = heapd__client_msg__pack(m, buf);
    return rpc_handle(d, c, buf, n, out);
}

client_t *fx_client(daemon_t *d, rpc_out_t *out, int *peer, uint32_t *slot)
{
    int sv[2];
    CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    client_t *c = client_new(d, sv[0], 0, getuid());
    CU_ASSERT_FATAL(c != NULL);
    *peer = sv[1];
    Heapd__Hello h = HEAPD__HELLO__INIT;
    h.version = HD_PROTO_VERSION;
    h.pid = 4242;
    h.name = "unit";
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &h;
    CU_ASSERT_FATAL(fx_send(d, c, &m, out) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, out->len, out->buf);
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPD__DAEMON_MSG__BODY_WELCOME);
    if (slot)
        *slot = r->welcome->slot;
    heapd__daemon_msg__free_unpacked(r, NULL);
    return c;
}

int64_t fx_alloc_large(daemon_t *d, client_t *c, rpc_out_t *out, uint64_t pages)
{
    Heapd__AllocLarge a = HEAPD__ALLOC_LARGE__INIT;
    a.pages = pages;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 7;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
    m.alloc_large = &a;
    CU_ASSERT_FATAL(fx_send(d, c, &m, out) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, out->len, out->buf);
    CU_ASSERT_FATAL(r != NULL);
    int64_t v = -EPROTO;
    if (r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS && r->spans->n_span_ids == 1)
        v = r->spans->span_ids[0];
    else if (r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR)
        v = -r->error->err;
    heapd__daemon_msg__free_unpacked(r, NULL);
    return v;
}

Heapdctl__ControlReply *fx_control(daemon_t *d, Heapdctl__ControlRequest *q, int *rc)
{
    uint8_t buf[4096];
    size_t n = heapdctl__control_request__pack(q, buf);
    uint8_t *rep = NULL;
    size_t rlen = 0;
    *rc = control_handle(d, buf, n, &rep, &rlen);
    CU_ASSERT_FATAL(rep != NULL);
    Heapdctl__ControlReply *r = heapdctl__control_reply__unpack(NULL, rlen, rep);
    free(rep);
    CU_ASSERT_FATAL(r != NULL);
    return r;
}

Heapdctl__ControlReply *fx_clients(daemon_t *d)
{
    Heapdctl__ClientsRequest cq = HEAPDCTL__CLIENTS_REQUEST__INIT;
    Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
    q.seq = 5;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS;
    q.clients = &cq;
    int rc;
    Heapdctl__ControlReply *r = fx_control(d, &q, &rc);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_FATAL(r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS);
    return r;
}

/* ---- a spawned daemon ------------------------------------------------------------ */

#define FX_MAX_PROCS 32
static pid_t fx_procs[FX_MAX_PROCS];

static void fx_kill_all(void)
{
    for (unsigned i = 0; i < FX_MAX_PROCS; i++)
        if (fx_procs[i] > 0) {
            kill(fx_procs[i], SIGKILL);
            waitpid(fx_procs[i], NULL, 0);
            fx_procs[i] = 0;
        }
}

static void fx_forget(pid_t pid)
{
    for (unsigned i = 0; i < FX_MAX_PROCS; i++)
        if (fx_procs[i] == pid)
            fx_procs[i] = 0;
}

/* The child: what heapd's main does with o, then exit with its status. */
static void fx_child(const daemon_opts_t *o, const char *sock, int ready)
{
    daemon_t *d = calloc(1, sizeof(*d));
    char err[256];
    if (!d || daemon_init(d, o, err, sizeof(err)) < 0 || client_listen(d, sock, err, sizeof(err)) < 0) {
        fprintf(stderr, "fx_spawn: %s\n", d ? err : "out of memory");
        _exit(3);
    }
    if (write(ready, "r", 1) != 1)
        _exit(4);
    close(ready);
    int r = daemon_run(d);
    daemon_destroy(d);
    _exit(r < 0 ? 1 : 0);
}

void fx_spawn(fx_proc_t *p, const daemon_opts_t *o)
{
    static bool hooked;
    if (!hooked) {
        atexit(fx_kill_all);
        hooked = true;
    }
    memset(p, 0, sizeof(*p));
    snprintf(p->dir, sizeof(p->dir), "/tmp/heapd-unit-XXXXXX");
    CU_ASSERT_FATAL(mkdtemp(p->dir) != NULL);
    snprintf(p->sock, sizeof(p->sock), "%s/heapd.sock", p->dir);
    p->base = o->base;
    daemon_opts_t opts = *o;
    opts.quiet = true;
    int pfd[2];
    CU_ASSERT_FATAL(pipe2(pfd, O_CLOEXEC) == 0);
    fflush(NULL);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        fx_child(&opts, p->sock, pfd[1]);
    }
    close(pfd[1]);
    p->pid = pid;
    for (unsigned i = 0; i < FX_MAX_PROCS; i++)
        if (fx_procs[i] == 0) {
            fx_procs[i] = pid;
            break;
        }
    struct pollfd pl = {.fd = pfd[0], .events = POLLIN};
    char c = 0;
    bool up = poll(&pl, 1, 10000) == 1 && read(pfd[0], &c, 1) == 1 && c == 'r';
    close(pfd[0]);
    if (!up)
        fx_kill(p);
    CU_ASSERT_FATAL(up);
}

static void fx_proc_clean(fx_proc_t *p)
{
    fx_forget(p->pid);
    p->pid = 0;
    unlink(p->sock);
    rmdir(p->dir);
}

int fx_stop(fx_proc_t *p)
{
    if (p->pid <= 0)
        return -1;
    int st = -1;
    kill(p->pid, SIGTERM);
    if (!TEST_WAIT(waitpid(p->pid, &st, WNOHANG) == p->pid, 5000)) {
        fprintf(stderr, "fx_stop: daemon %d ignored SIGTERM for 5 s\n", (int)p->pid);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &st, 0);
    }
    fx_proc_clean(p);
    return st;
}

void fx_kill(fx_proc_t *p)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    fx_proc_clean(p);
}

/* ---- a scripted peer ------------------------------------------------------------- */

static void *fx_peer_main(void *arg)
{
    fx_peer_t *p = arg;
    struct pollfd pl = {.fd = p->lfd, .events = POLLIN};
    if (poll(&pl, 1, 10000) == 1) {
        int conn = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (conn >= 0) {
            p->script(p, conn);
            close(conn);
        }
    }
    return NULL;
}

void fx_peer_start(fx_peer_t *p, uint64_t base, fx_script_fn script, void *arg)
{
    memset(p, 0, sizeof(*p));
    p->script = script;
    p->arg = arg;
    p->base = base;
    p->npages = 512;                         /* 4 MiB of heap pages */
    hd_header_t h = {0};
    hd_layout(&h, base, p->npages);
    p->meta_size = h.meta_size;
    p->heap_size = h.heap_size;
    p->meta_fd = memfd_create("fx-peer-meta", MFD_CLOEXEC);
    p->heap_fd = memfd_create("fx-peer-heap", MFD_CLOEXEC);
    CU_ASSERT_FATAL(p->meta_fd >= 0 && p->heap_fd >= 0);
    CU_ASSERT_FATAL(ftruncate(p->meta_fd, (off_t)h.meta_size) == 0 && ftruncate(p->heap_fd, (off_t)h.heap_size) == 0);
    CU_ASSERT_FATAL(pwrite(p->meta_fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h));
    snprintf(p->dir, sizeof(p->dir), "/tmp/heapd-unit-XXXXXX");
    CU_ASSERT_FATAL(mkdtemp(p->dir) != NULL);
    snprintf(p->sock, sizeof(p->sock), "%s/peer.sock", p->dir);
    p->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", p->sock);
    CU_ASSERT_FATAL(p->lfd >= 0 && bind(p->lfd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(p->lfd, 4) == 0);
    CU_ASSERT_FATAL(pthread_create(&p->th, NULL, fx_peer_main, p) == 0);
}

void fx_peer_stop(fx_peer_t *p)
{
    pthread_join(p->th, NULL);
    close(p->lfd);
    close(p->meta_fd);
    close(p->heap_fd);
    unlink(p->sock);
    rmdir(p->dir);
}

Heapd__ClientMsg *fx_peer_recv(int conn)
{
    static uint8_t buf[HD_MAX_MSG];
    struct pollfd pl = {.fd = conn, .events = POLLIN};
    if (poll(&pl, 1, 5000) != 1)
        return NULL;
    ssize_t n = recv(conn, buf, sizeof(buf), 0);
    return n > 0 ? heapd__client_msg__unpack(NULL, (size_t)n, buf) : NULL;
}

void fx_peer_send(fx_peer_t *p, int conn, Heapd__DaemonMsg *m, bool fds)
{
    static uint8_t buf[HD_MAX_MSG];
    size_t n = heapd__daemon_msg__pack(m, buf);
    union {
        char b[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } cm;
    memset(&cm, 0, sizeof(cm));
    struct iovec iov = {.iov_base = buf, .iov_len = n};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fds) {
        mh.msg_control = cm.b;
        mh.msg_controllen = sizeof(cm.b);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(2 * sizeof(int));
        int two[2] = {p->meta_fd, p->heap_fd};
        memcpy(CMSG_DATA(c), two, sizeof(two));
    }
    if (sendmsg(conn, &mh, MSG_NOSIGNAL) != (ssize_t)n)
        fprintf(stderr, "fx_peer_send: %s\n", strerror(errno));
}

void fx_peer_welcome(fx_peer_t *p, int conn, uint32_t version)
{
    Heapd__ClientMsg *h = fx_peer_recv(conn);
    uint64_t seq = h ? h->seq : 1;
    bool hello = h && h->body_case == HEAPD__CLIENT_MSG__BODY_HELLO;
    heapd__client_msg__free_unpacked(h, NULL);
    if (!hello)
        return;
    Heapd__Welcome w = HEAPD__WELCOME__INIT;
    w.version = version;
    w.client_id = 1;
    w.map_base = p->base;
    w.heap_size = p->heap_size;
    w.meta_size = p->meta_size;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_WELCOME;
    m.welcome = &w;
    fx_peer_send(p, conn, &m, true);
}
