/* conn.c: the listening socket, client records, packet I/O and reclaim.
 * See conn.h for the rules. */
#define _GNU_SOURCE
#include "errf.h"
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "heapd.pb-c.h"
#include "mcentral.h"
#include "rpc.h"
#include "scavenge.h"

#define ACCEPT_BATCH   64      /* connections accepted per wakeup */
#define RECV_BATCH     32      /* packets handled per wakeup of one client: fairness */
#define ACCEPT_PAUSE_MS 1000   /* back-off when out of file descriptors */
#define MAX_RX_FDS     8       /* room for fds a misbehaving client sends (all closed) */

#define fail(err, errlen, e, ...) (hd_errf(err, errlen, __VA_ARGS__), -(e))

/* ---- the listening socket ----------------------------------------------------------- */

/* mkdir -p of path's parent directory, new components 0700. */
static int make_parents(const char *path, char *err, size_t errlen)
{
    char buf[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(buf, sizeof(buf), "%s", path);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf)
        return 0;
    *slash = 0;
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0700) < 0 && errno != EEXIST)
                return fail(err, errlen, errno, "cannot create directory %s: %s", buf, strerror(errno));
            *p = c;
            if (c == 0)
                break;
        }
    }
    struct stat st;
    if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
        return fail(err, errlen, ENOTDIR, "%s is not a directory", buf);
    return 0;
}

int sock_path_prepare(const char *path, int type, struct sockaddr_un *sa, char *err, size_t errlen)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (!*path || strlen(path) >= sizeof(sa->sun_path))
        return fail(err, errlen, ENAMETOOLONG, "socket path must be 1..%zu bytes: %s",
                    sizeof(sa->sun_path) - 1, path);
    memcpy(sa->sun_path, path, strlen(path) + 1);
    int r = make_parents(path, err, errlen);
    if (r < 0)
        return r;
    /* A socket file already there: a live daemon's (refuse) or a stale one (replace). */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return fail(err, errlen, EEXIST, "%s exists and is not a socket", path);
        int probe = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            int live = connect(probe, (struct sockaddr *)sa, sizeof(*sa)) == 0;
            close(probe);
            if (live)
                return fail(err, errlen, EADDRINUSE, "another daemon is listening on %s", path);
        }
        if (unlink(path) < 0 && errno != ENOENT)
            return fail(err, errlen, errno, "cannot remove stale socket %s: %s", path, strerror(errno));
    }
    return 0;
}

int client_listen(daemon_t *d, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;                     /* identity of the file we create */
    int r = sock_path_prepare(path, SOCK_SEQPACKET, &sa, err, errlen);
    if (r < 0)
        return r;

    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errlen, errno, "socket: %s", strerror(errno));
    mode_t old = umask(0177);           /* the file is born 0600: no window for others */
    r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    umask(old);
    if (r < 0) {
        close(fd);
        return fail(err, errlen, e, "cannot bind %s: %s", path, strerror(e));
    }
    if (d->sock_gid_set && chown(path, (uid_t)-1, d->sock_gid) < 0) {
        e = errno;
        close(fd);
        unlink(path);
        return fail(err, errlen, e, "cannot give %s to group %u: %s", path, (unsigned)d->sock_gid, strerror(e));
    }
    if (chmod(path, d->sock_mode ? (mode_t)d->sock_mode : 0600) < 0 || listen(fd, 128) < 0 || stat(path, &st) < 0) {
        e = errno;
        close(fd);
        unlink(path);
        return fail(err, errlen, e, "cannot listen on %s: %s", path, strerror(e));
    }
    d->listen_fd = fd;
    d->sock_dev = st.st_dev;
    d->sock_ino = st.st_ino;
    snprintf(d->sock_path, sizeof(d->sock_path), "%s", path);
    return 0;
}

static void on_client_io(uv_poll_t *p, int status, int events);

static void reject(int fd, int err, const char *msg)
{
    uint8_t buf[512];
    rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
    rpc_encode_error(&out, 0, err, msg);      /* seq 0: nothing to echo yet */
    if (out.len)
        (void)send(fd, buf, out.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    /* Read what the peer sent already (its Hello): closing with unread data
     * would reset the connection and the peer might miss the Error. */
    for (int i = 0; i < 4 && recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0; i++)
        ;
    close(fd);
}

static void on_accept(uv_poll_t *p, int status, int events);

/* May this peer attach? Root and the daemon's own uid always; else its uid in
 * --allow-uid, or its gid or one of its supplementary groups (SO_PEERGROUPS,
 * as they were at connect) in --allow-gid. Checked before any fd is passed. */
static bool peer_allowed(const daemon_t *d, int fd, const struct ucred *cr)
{
    if (cr->uid == d->uid || cr->uid == 0)
        return true;
    for (unsigned i = 0; i < d->n_allow_uids; i++)
        if (cr->uid == d->allow_uids[i])
            return true;
    if (!d->n_allow_gids)
        return false;
    gid_t groups[256];
    socklen_t glen = sizeof(groups);
    unsigned ng = 0;
#ifdef SO_PEERGROUPS
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
        ng = glen / sizeof(gid_t);
#endif
    for (unsigned i = 0; i < d->n_allow_gids; i++) {
        if (cr->gid == d->allow_gids[i])
            return true;
        for (unsigned k = 0; k < ng; k++)
            if (groups[k] == d->allow_gids[i])
                return true;
    }
    return false;
}

static void on_client_closed(uv_handle_t *hd);

/* The process behind the peer ended: its lease ends (connected or quarantined). */
static void on_pid_exit(uv_poll_t *p, int status, int events)
{
    client_t *c = p->data;
    (void)status;
    (void)events;
    client_end(c->d, c, "its process exited");
}

static int sys_pidfd_open(pid_t pid, unsigned flags)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, flags);
#else
    (void)pid;
    (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

int client_pidfd_probe(int (*pidfd_open_fn)(pid_t pid, unsigned flags), char *err, size_t errlen)
{
    if (!pidfd_open_fn)
        pidfd_open_fn = sys_pidfd_open;
    errno = 0;
    int fd = pidfd_open_fn(getpid(), 0);
    if (fd >= 0) {
        close(fd);
        return 0;
    }
    int e = errno ? errno : EINVAL;
    if (e == ENOSYS)
        return fail(err, errlen, e, "pidfd_open is not available (it needs Linux 5.3 or later): heapd cannot "
                    "tell when a client's process has exited, so it cannot lend memory safely");
    return fail(err, errlen, e, "pidfd_open fails (%s): heapd cannot tell when a client's process has exited, "
                "so it cannot lend memory safely", strerror(e));
}

bool client_pid_exited(int pidfd)
{
    struct pollfd pf = {.fd = pidfd, .events = POLLIN};
    return poll(&pf, 1, 0) == 1 && (pf.revents & (POLLIN | POLLHUP | POLLERR));
}

/* Watch the peer's process with a pidfd (the lease). 0, or -errno: ESRCH when
 * the process is gone already (or its pid was reused by a stranger), else
 * the pidfd could not be opened or polled: the connection is refused. */
static int client_watch_pid(daemon_t *d, client_t *c)
{
    int pfd = sys_pidfd_open(c->pid, 0);
    if (pfd < 0)
        return -errno;
    /* The pid may have been reused between the peer's connect and now; that
     * needs the peer dead, and then its socket end is closed: check it after
     * opening the pidfd, so a pidfd on a stranger is never kept. */
    struct pollfd pf = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLERR | POLLRDHUP))) {
        close(pfd);
        return -ESRCH;
    }
    (void)fcntl(pfd, F_SETFD, FD_CLOEXEC);
    int r = uv_poll_init(d->loop, &c->pidpoll, pfd);
    if (r < 0) {
        close(pfd);
        return r;
    }
    c->pidfd = pfd;
    c->pidpoll.data = c;
    c->pidpolling = true;
    c->open_handles++;
    uv_poll_start(&c->pidpoll, UV_READABLE, on_pid_exit);
    return 0;
}

/* ---- connections waiting for Hello -------------------------------------------------- */

static void wait_unlink(daemon_t *d, client_t *c)
{
    if (!c->waiting)
        return;
    c->waiting = false;
    if (c->wprev)
        c->wprev->wnext = c->wnext;
    else
        d->wait_head = c->wnext;
    if (c->wnext)
        c->wnext->wprev = c->wprev;
    else
        d->wait_tail = c->wprev;
    c->wnext = c->wprev = NULL;
    d->nwaiting--;
}

static void wait_push(daemon_t *d, client_t *c)
{
    c->waiting = true;
    c->accepted_ms = scav_now_ms();
    c->wprev = d->wait_tail;
    c->wnext = NULL;
    if (d->wait_tail)
        d->wait_tail->wnext = c;
    else
        d->wait_head = c;
    d->wait_tail = c;
    d->nwaiting++;
}

/* Close the oldest connection that has not said Hello. false if none waits. */
static bool evict_oldest_silent(daemon_t *d)
{
    client_t *c = d->wait_head;
    if (!c)
        return false;
    c->evicted = true;
    d->silent_closed++;
    client_end(d, c, "no Hello");
    return true;
}

void client_expire_silent(daemon_t *d, uint64_t now_ms)
{
    while (d->wait_head && now_ms - d->wait_head->accepted_ms >= CLIENT_HELLO_MS)
        evict_oldest_silent(d);
    if (d->silent_closed) {
        daemon_log(d, "closed %llu connections that sent no Hello within %u ms or waited beyond the %u allowed",
                   (unsigned long long)d->silent_closed, CLIENT_HELLO_MS, CLIENT_HELLO_WAITING);
        d->silent_closed = 0;
    }
}

static void accept_resume_cb(uv_timer_t *t)
{
    daemon_t *d = t->data;
    if (!d->stopping && d->listen_polling)
        uv_poll_start(&d->listen_poll, UV_READABLE, on_accept);
}

static void on_accept(uv_poll_t *p, int status, int events)
{
    daemon_t *d = p->data;
    (void)events;
    if (status < 0) {
        daemon_log(d, "listening socket: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        /* Room for this one among those waiting for Hello: the oldest silent
         * connection goes, so silent peers never stall accept. */
        while (d->nwaiting >= CLIENT_HELLO_WAITING)
            evict_oldest_silent(d);
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
                return;
            if ((e == EMFILE || e == ENFILE) && evict_oldest_silent(d))
                continue;       /* its two descriptors are free again */
            daemon_log(d, "accept: %s", strerror(e));
            if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                /* Level-triggered: the pending connection would wake us forever. */
                uv_poll_stop(&d->listen_poll);
                uv_timer_start(&d->accept_timer, accept_resume_cb, ACCEPT_PAUSE_MS, 0);
            }
            return;
        }
        struct ucred cr;
        socklen_t crlen = sizeof(cr);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0) {
            daemon_log(d, "SO_PEERCRED: %s; connection refused", strerror(errno));
            close(fd);
            continue;
        }
        if (!peer_allowed(d, fd, &cr)) {
            daemon_log(d, "refused pid %d uid %u gid %u: permission denied", (int)cr.pid, (unsigned)cr.uid,
                       (unsigned)cr.gid);
            reject(fd, EACCES, "permission denied");
            continue;
        }
        if (cr.pid <= 0) {
            /* SO_PEERCRED gives pid 0 for a peer in a pid namespace we cannot
             * see: no pidfd, so no way to know when its memory is free. */
            daemon_log(d, "refused uid %u: its pid is not visible from heapd's pid namespace (SO_PEERCRED pid 0); "
                       "run heapd in the clients' pid namespace or an ancestor of it", (unsigned)cr.uid);
            reject(fd, EACCES, "your pid is not visible to heapd (another pid namespace)");
            continue;
        }
        client_t *c = client_new(d, fd, cr.pid, cr.uid);
        if (!c) {
            daemon_log(d, "out of memory for a client record; connection refused");
            close(fd);
            continue;
        }
        int r = client_watch_pid(d, c);
        if (r < 0) {
            client_end(d, c, r == -ESRCH ? "its process is gone already" : "cannot watch its process (pidfd)");
            continue;
        }
        if (uv_poll_init(d->loop, &c->poll, fd) < 0) {
            client_end(d, c, "cannot poll its socket");
            continue;
        }
        c->poll.data = c;
        c->polling = true;
        c->open_handles++;
        c->poll_events = UV_READABLE | UV_DISCONNECT;
        uv_poll_start(&c->poll, c->poll_events, on_client_io);
        wait_push(d, c);
    }
}

int client_start(daemon_t *d)
{
    uv_timer_init(d->loop, &d->accept_timer);
    d->accept_timer.data = d;
    int r = uv_poll_init(d->loop, &d->listen_poll, d->listen_fd);
    if (r < 0) {
        uv_close((uv_handle_t *)&d->accept_timer, NULL);
        return r;
    }
    d->listen_poll.data = d;
    d->listen_polling = true;   /* both handles exist: client_shutdown closes them */
    return uv_poll_start(&d->listen_poll, UV_READABLE, on_accept);
}

void client_shutdown(daemon_t *d)
{
    if (d->listen_polling) {
        uv_poll_stop(&d->listen_poll);
        uv_close((uv_handle_t *)&d->listen_poll, NULL);
        uv_timer_stop(&d->accept_timer);
        uv_close((uv_handle_t *)&d->accept_timer, NULL);
        d->listen_polling = false;
    }
    if (d->listen_fd >= 0) {
        close(d->listen_fd);
        d->listen_fd = -1;
        struct stat st;   /* only our own socket file: a newer daemon may have replaced it */
        if (d->sock_path[0] && lstat(d->sock_path, &st) == 0 && st.st_dev == d->sock_dev &&
            st.st_ino == d->sock_ino)
            unlink(d->sock_path);
    }
    client_fork_children_free(d);
    while (d->clients)
        client_end(d, d->clients, "daemon shutting down");
}

/* ---- client records ---------------------------------------------------------------- */

client_t *client_new(daemon_t *d, int fd, pid_t pid, uid_t uid)
{
    client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = client_next_id(d);
    c->fd = fd;
    c->pidfd = -1;
    c->pid = pid;
    c->uid = uid;
    c->d = d;
    spanlist_init(&c->cached);
    c->next = d->clients;
    if (d->clients)
        d->clients->prev = c;
    d->clients = c;
    mheap_book_add(&d->heap, &d->seg.hdr->clients, 1);
    mheap_book_add(&d->heap, &d->seg.hdr->clients_total, 1);
    mheap_publish(&d->heap);
    return c;
}

uint32_t client_next_id(daemon_t *d)
{
    for (;;) {
        uint32_t id = d->next_client_id++;
        if (d->next_client_id == 0)
            d->client_ids_wrapped = true;   /* from now on, ids in use must be skipped */
        if (id == 0)
            continue;       /* 0 means "no owner" in the span table and stats slots */
        if (!d->client_ids_wrapped)
            return id;
        bool used = false;
        for (const client_t *c = d->clients; c && !used; c = c->next)
            used = c->id == id;
        if (!used)
            return id;
    }
}

void client_reclaim(daemon_t *d, client_t *c)
{
    mheap_t *h = &d->heap;
    uint32_t id;
    mcentral_freed_t closed;
    memset(&closed, 0, sizeof closed);
    while ((id = spanlist_pop(h, &c->cached)) != HD_NO_SPAN) {
        unsigned n = 0;
        if (mheap_state(h, id) == HD_SPAN_CACHED && mheap_span(h, id)->owner == c->id)
            mcentral_reclaim_span(&d->central, id, &n);
        closed.objects[HD_TINY_SIZE_CLASS] += n;
    }
    if (closed.objects[HD_TINY_SIZE_CLASS])
        mstats_retire_frees(d, &closed);
}

/* ---- families: fork children ------------------------------------------------------------- */

/* A process a ForkDone named, a member of its parent's family until it
 * connects (client_fork_claim) or exits (its pidfd). */
typedef struct fork_child {
    pid_t pid;
    unsigned pool;
    int pidfd;
    bool polling;
    uv_poll_t poll;
    daemon_t *d;
    struct fork_child *next, *prev;
} fork_child_t;

/* One member of family `pool` has gone: when it was the last, free what the
 * family held (counted as retired frees). Returns the objects freed (0 while
 * members remain). */
static uint64_t pool_release(daemon_t *d, unsigned pool)
{
    mcentral_pool_t *p = d->central.pools[pool];
    if (--p->members)
        return 0;
    mcentral_freed_t f;
    memset(&f, 0, sizeof f);
    mcentral_pool_end(&d->central, pool, &f);
    mstats_retire_frees(d, &f);
    uint64_t n = f.large;
    for (unsigned k = 1; k < HD_NUM_CLASSES; k++)
        n += f.objects[k];
    return n;
}

static void fork_child_closed(uv_handle_t *h)
{
    fork_child_t *k = h->data;
    close(k->pidfd);                 /* libuv has let go of it */
    free(k);
}

static void fork_child_unlink(daemon_t *d, fork_child_t *k)
{
    if (k->prev)
        k->prev->next = k->next;
    else
        d->fork_children = k->next;
    if (k->next)
        k->next->prev = k->prev;
    if (k->polling) {
        uv_poll_stop(&k->poll);
        uv_close((uv_handle_t *)&k->poll, fork_child_closed);
        return;
    }
    if (k->pidfd >= 0)
        close(k->pidfd);
    free(k);
}

static void on_fork_child_exit(uv_poll_t *h, int status, int events)
{
    fork_child_t *k = h->data;
    daemon_t *d = k->d;
    (void)status;
    (void)events;
    unsigned pool = k->pool;
    pid_t pid = k->pid;
    fork_child_unlink(d, k);
    uint64_t n = pool_release(d, pool);
    if (!d->central.pools[pool])         /* it was the last member */
        daemon_log(d, "fork child %d exited, the last of its family: %llu objects the family held freed", (int)pid,
                   (unsigned long long)n);
}

/* The parent pid of process pid (/proc/pid/stat's 4th field), or -1. */
static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    const char *p = strrchr(buf, ')');   /* the name may hold spaces and parentheses */
    int ppid;
    char st;
    if (!p || sscanf(p + 1, " %c %d", &st, &ppid) != 2)
        return -1;
    return ppid;
}

int client_fork_begin(daemon_t *d, client_t *c)
{
    if (!c->pool)
        return -EINVAL;
    d->central.pools[c->pool]->members++;
    c->fork_holds++;
    return 0;
}

int client_fork_done(daemon_t *d, client_t *c, pid_t pid)
{
    if (!c->fork_holds || !c->pool)
        return -EINVAL;
    c->fork_holds--;
    /* From here the hold is the child's membership, or it goes. c is a
     * member, so a hold going never ends the family. */
    if (pid <= 0) {
        pool_release(d, c->pool);
        return 0;
    }
    /* A process whose parent we can read and is not c's is a mistake: refused.
     * One we cannot read (/proc mounted hidepid, another user's) is taken on
     * c's word: naming a stranger only keeps c's own family longer. */
    pid_t pp = parent_of(pid);
    if (pp >= 0 && pp != c->pid) {
        pool_release(d, c->pool);
        return -EINVAL;
    }
    int pfd = sys_pidfd_open(pid, 0);
    /* The child cannot have been reaped and its pid reused in between unless
     * its parent reaps (it is in ForkDone) or ignores SIGCHLD: check again. */
    pp = pfd >= 0 ? parent_of(pid) : -1;
    if (pfd < 0 || (pp >= 0 && pp != c->pid)) {
        if (pfd >= 0)
            close(pfd);
        pool_release(d, c->pool);
        return 0;                    /* it has exited: nothing of the family's with it */
    }
    fork_child_t *k = calloc(1, sizeof *k);
    if (!k) {
        close(pfd);
        return -ENOMEM;              /* the hold stays: the family is kept, never freed under the child */
    }
    (void)fcntl(pfd, F_SETFD, FD_CLOEXEC);
    *k = (fork_child_t){.pid = pid, .pool = c->pool, .pidfd = pfd, .d = d};
    k->next = d->fork_children;
    if (k->next)
        k->next->prev = k;
    d->fork_children = k;
    if (d->loop && uv_poll_init(d->loop, &k->poll, pfd) == 0) {
        k->poll.data = k;
        k->polling = true;
        uv_poll_start(&k->poll, UV_READABLE, on_fork_child_exit);
    }
    return 0;
}

unsigned client_fork_claim(daemon_t *d, client_t *c)
{
    for (fork_child_t *k = d->fork_children; k; k = k->next) {
        if (k->pid != c->pid || client_pid_exited(k->pidfd))
            continue;                /* exited: its pid may be a stranger's now */
        unsigned pool = k->pool;
        fork_child_unlink(d, k);     /* its membership is c's now */
        return pool;
    }
    return 0;
}

void client_fork_children_free(daemon_t *d)
{
    while (d->fork_children) {
        fork_child_t *k = d->fork_children;
        unsigned pool = k->pool;
        fork_child_unlink(d, k);
        pool_release(d, pool);
    }
}

uint64_t client_leave_family(daemon_t *d, client_t *c)
{
    unsigned pool = c->pool;
    if (!pool)
        return 0;
    c->pool = 0;
    if (c->fork_holds)
        daemon_log(d, "client %u (pid %d) ended between ForkBegin and ForkDone: its family's memory stays "
                   "allocated until the daemon restarts (the child may hold it)", c->id, (int)c->pid);
    return pool_release(d, pool);
}

static void on_client_closed(uv_handle_t *hd)
{
    client_t *c = hd->data;
    if (hd == (uv_handle_t *)&c->poll && c->fd >= 0) {
        close(c->fd);       /* libuv has let go of it */
        c->fd = -1;
    } else if (hd == (uv_handle_t *)&c->pidpoll && c->pidfd >= 0) {
        close(c->pidfd);
        c->pidfd = -1;
    }
    if (--c->open_handles || !c->closing)
        return;     /* the other handle's callback frees the record, or it stays (quarantine) */
    free(c->reply);
    free(c);
}

static void drop_pending(client_t *c)
{
    free(c->reply);
    c->reply = NULL;
    c->reply_len = 0;
    c->reply_nfds = 0;
    c->flush_pending = c->pressure_pending = false;
    c->want_writable = false;
}

/* Close the socket (now, or once libuv lets go of it). */
static void close_socket(client_t *c)
{
    drop_pending(c);
    if (c->polling) {
        c->polling = false;
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *)&c->poll, on_client_closed);
    } else if (c->fd >= 0 && !uv_is_closing((uv_handle_t *)&c->poll)) {
        close(c->fd);       /* never polled (or libuv let go already) */
        c->fd = -1;
    }
}

void client_end(daemon_t *d, client_t *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    wait_unlink(d, c);
    uint32_t ncached = c->cached.n;
    client_reclaim(d, c);
    mstats_slot_retire(d, c->stat_slot);   /* fold its counters into the retired totals */
    c->stat_slot = 0;
    uint64_t nfreed = client_leave_family(d, c);   /* after the slot: its allocations first */
    limits_client_gone(d, c->id);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mheap_book_add(&d->heap, &d->seg.hdr->clients, -1);
    mheap_publish(&d->heap);
    if (c->evicted)
        ;   /* counted in silent_closed: one log line per sweep tick, not one per connection */
    else if (c->hello_done)
        daemon_log(d, "client %u %s (pid %d%s%s): %s; %u cached spans reclaimed, %llu objects it held freed", c->id,
                   c->quarantined ? "released from quarantine" : "detached", (int)c->pid, c->name[0] ? ", " : "",
                   c->name, why, ncached, (unsigned long long)nfreed);
    else
        daemon_log(d, "connection %u from pid %d closed: %s", c->id, (int)c->pid, why);
    if (c->pidpolling) {
        c->pidpolling = false;
        uv_poll_stop(&c->pidpoll);
        uv_close((uv_handle_t *)&c->pidpoll, on_client_closed);
    }
    close_socket(c);
    if (c->open_handles)
        return;
    if (c->pidfd >= 0)
        close(c->pidfd);
    free(c);
}

void client_close(daemon_t *d, client_t *c, const char *why)
{
    if (c->closing || c->quarantined)
        return;
    /* The lease outlives the connection unless the process is gone, or it
     * closed with nothing cached (libheapd forgets its stats slot before it
     * closes), or there is no process to wait for (test records). */
    bool dead = c->pidfd < 0 || client_pid_exited(c->pidfd);
    bool holds = c->cached.n > 0 || (c->stat_slot && !c->peer_closed);
    if (dead || !holds) {
        client_end(d, c, why);
        return;
    }
    c->quarantined = true;
    close_socket(c);
    daemon_log(d, "client %u (pid %d%s%s) dropped: %s; its %u cached spans and stats slot stay quarantined "
               "until its process exits", c->id, (int)c->pid, c->name[0] ? ", " : "", c->name, why, c->cached.n);
}

unsigned client_quarantined(const daemon_t *d)
{
    unsigned n = 0;
    for (const client_t *c = d->clients; c; c = c->next)
        n += c->quarantined;
    return n;
}

/* ---- packet I/O ------------------------------------------------------------------------- */

int client_send(client_t *c, const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
    if (c->fd < 0)
        return -EBADF;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    union {
        char buf[CMSG_SPACE(3 * sizeof(int))];
        struct cmsghdr align;
    } cm;
    if (nfds) {
        if (nfds > 3)
            return -EINVAL;
        memset(&cm, 0, sizeof(cm));
        mh.msg_control = cm.buf;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
        h->cmsg_level = SOL_SOCKET;
        h->cmsg_type = SCM_RIGHTS;
        h->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(h), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do
        n = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* Watch what the record needs: hang-ups always, packets unless a reply
 * waits, room in the socket while something waits for it. */
static void client_rearm(client_t *c)
{
    if (!c->polling)
        return;
    int ev = UV_DISCONNECT | (c->reply || c->scav_waiting ? 0 : UV_READABLE) | (c->want_writable ? UV_WRITABLE : 0);
    if (ev != c->poll_events) {
        c->poll_events = ev;
        uv_poll_start(&c->poll, ev, on_client_io);
    }
}

/* May an unsolicited message go now? Not while more than
 * CLIENT_UNSOLICITED_MAX bytes we sent are unread. */
static bool unsolicited_room(client_t *c)
{
    int q = 0;
    return ioctl(c->fd, SIOCOUTQ, &q) != 0 || q <= CLIENT_UNSOLICITED_MAX;
}

/* Send one pending packet. 1: sent, 0: no room (want_writable set),
 * -1: the socket is broken (the read side will see the end). */
static int pump_one(client_t *c, const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
    int r = client_send(c, buf, len, fds, nfds);
    if (r == 0)
        return 1;
    if (r == -EAGAIN) {
        c->want_writable = true;
        return 0;
    }
    return -1;
}

/* Write what is pending, in order: Flush, Pressure, the reply (a refused
 * client reads its Flush and Pressure ahead of its ENOMEM). Stops at the
 * first that does not fit. Never closes the client. */
static void client_pump(daemon_t *d, client_t *c)
{
    if (c->fd < 0 || c->closing || c->quarantined)
        return;
    c->want_writable = false;
    int r = 1;
    if (c->flush_pending && unsolicited_room(c)) {
        uint8_t buf[64];
        rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
        if (rpc_encode_flush(&out) < 0 || (r = pump_one(c, out.buf, out.len, NULL, 0)) != 0) {
            c->flush_pending = false;
            d->lim.flush_sent += r > 0;
        }
    }
    if (r > 0 && c->pressure_pending && unsolicited_room(c)) {
        Heapd__Pressure p = HEAPD__PRESSURE__INIT;
        p.level = c->pressure_level;
        p.bytes_wanted = c->pressure_bytes;
        Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
        m.body_case = HEAPD__DAEMON_MSG__BODY_PRESSURE;
        m.pressure = &p;
        uint8_t buf[64];
        size_t n = heapd__daemon_msg__get_packed_size(&m) <= sizeof(buf) ? heapd__daemon_msg__pack(&m, buf) : 0;
        if (!n || (r = pump_one(c, buf, n, NULL, 0)) != 0) {
            c->pressure_pending = false;
            d->lim.pressure_sent += n && r > 0;
        }
    }
    if (r > 0 && c->reply) {
        if ((r = pump_one(c, c->reply, c->reply_len, c->reply_fds, c->reply_nfds)) != 0) {
            free(c->reply);
            c->reply = NULL;
        }
    }
    if (r < 0)
        drop_pending(c);    /* the peer is gone: EOF or an error is ours to read next */
    client_rearm(c);
}

bool client_post_flush(daemon_t *d, client_t *c)
{
    if (c->fd < 0 || !c->hello_done || c->closing || c->quarantined)
        return false;
    c->flush_pending = true;
    client_pump(d, c);
    return true;
}

bool client_post_pressure(daemon_t *d, client_t *c, unsigned level, uint64_t bytes)
{
    if (c->fd < 0 || !c->hello_done || c->closing || c->quarantined)
        return false;
    c->pressure_pending = true;     /* one pending Pressure: the latest says what is needed now */
    c->pressure_level = level;
    c->pressure_bytes = bytes;
    client_pump(d, c);
    return true;
}

void client_pump_all(daemon_t *d)
{
    for (client_t *c = d->clients; c; c = c->next)
        if (c->flush_pending || c->pressure_pending)
            client_pump(d, c);
}

/* Send a reply now, or keep it for when the socket has room (the client is
 * not read meanwhile). 0, or -1 when the client was closed (c is gone, or
 * quarantined). */
static int client_reply(daemon_t *d, client_t *c, const rpc_out_t *out)
{
    if (!c->want_writable) {
        int r = client_send(c, out->buf, out->len, out->fds, out->nfds);
        if (r == 0)
            return 0;
        if (r != -EAGAIN) {
            client_close(d, c, strerror(-r));
            return -1;
        }
        c->want_writable = true;
    }
    c->reply = malloc(out->len);
    if (!c->reply) {
        client_close(d, c, "out of memory for a reply that must wait");
        return -1;
    }
    memcpy(c->reply, out->buf, out->len);
    c->reply_len = out->len;
    c->reply_nfds = out->nfds;
    memcpy(c->reply_fds, out->fds, sizeof(c->reply_fds));
    client_rearm(c);
    return 0;
}

/* Receive and handle one packet. 1: handled, 0: nothing to read (or a reply
 * waits for room: nothing more is read until it is out), -1: the client was
 * closed (c is gone or quarantined). */
static int client_recv_one(daemon_t *d, client_t *c)
{
    struct iovec iov = {.iov_base = d->rxbuf, .iov_len = sizeof(d->rxbuf)};
    union {
        char buf[CMSG_SPACE(MAX_RX_FDS * sizeof(int))];
        struct cmsghdr align;
    } cm;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf)};
    ssize_t n;
    do
        n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        client_close(d, c, strerror(errno));
        return -1;
    }
    bool had_fds = false;   /* a client has no business sending fds: close them, drop it */
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
            size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof(int));
                close(fd);
            }
            had_fds = true;
        }
    }
    if (had_fds || (mh.msg_flags & MSG_CTRUNC)) {
        client_close(d, c, "sent file descriptors");
        return -1;
    }
    if (mh.msg_flags & MSG_TRUNC) {
        client_close(d, c, "oversized packet");
        return -1;
    }
    if (n == 0) {     /* EOF (an empty packet reads the same: both end the connection) */
        c->peer_closed = true;
        client_close(d, c, "disconnected");
        return -1;
    }
    rpc_out_t out = {.buf = d->txbuf, .cap = sizeof(d->txbuf)};
    enum rpc_verdict v = rpc_handle(d, c, d->rxbuf, (size_t)n, &out);
    if (c->hello_done)
        wait_unlink(d, c);
    if (v != RPC_OK) {  /* its last word (an Error) if it fits at once; we read no more */
        if (out.len)
            (void)client_send(c, out.buf, out.len, out.fds, out.nfds);
        client_close(d, c, out.why ? out.why : "protocol error");
        return -1;
    }
    if (out.len && client_reply(d, c, &out) < 0)
        return -1;
    if (c->scav_waiting)
        client_rearm(c);    /* its Scavenge waits for a pass: read nothing more until the Ack */
    return c->reply || c->scav_waiting ? 0 : 1;
}

void client_scavenge_done(daemon_t *d, uint64_t pass)
{
    for (client_t *c = d->clients, *next; c; c = next) {
        next = c->next;     /* client_reply may close c */
        if (!c->scav_waiting || c->scav_pass > pass)
            continue;
        c->scav_waiting = false;
        if (c->fd < 0 || c->closing || c->quarantined)
            continue;
        uint8_t buf[64];
        rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
        if (rpc_encode_ack(&out, c->scav_seq) == 0 && client_reply(d, c, &out) < 0)
            continue;
        client_rearm(c);
    }
}

static void on_client_io(uv_poll_t *p, int status, int events)
{
    client_t *c = p->data;
    daemon_t *d = c->d;
    if (status < 0) {
        client_close(d, c, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE)
        client_pump(d, c);  /* rearms: reading resumes once the reply is out */
    if ((events & UV_READABLE) && !c->reply && !c->scav_waiting) {
        for (int i = 0; i < RECV_BATCH; i++)
            if (client_recv_one(d, c) <= 0)
                return;     /* drained, a reply waits, or closed */
        return;             /* more later: others get a turn */
    }
    if (events & UV_DISCONNECT) {   /* and nothing we may read now */
        c->peer_closed = true;
        client_close(d, c, "hung up");
    }
}
