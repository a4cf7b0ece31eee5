/* conn.c: the listening socket, client records, packet I/O and reclaim.
 * See conn.h for the rules. */
#define _GNU_SOURCE
#include "errf.h"
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "mcentral.h"
#include "rpc.h"

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

static void reject(int fd, const char *msg)
{
    uint8_t buf[512];
    rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
    rpc_encode_error(&out, 0, EACCES, msg);   /* seq 0: nothing to echo yet */
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

/* The process behind the peer ended: the same as a hang-up. */
static void on_pid_exit(uv_poll_t *p, int status, int events)
{
    client_t *c = p->data;
    (void)status;
    (void)events;
    client_close(c->d, c, "its process exited");
}

/* Watch the peer's process with a pidfd (the lease). Best effort: without a
 * pidfd (old kernel, pid 0 from another pid namespace) the socket alone tells. */
static void client_watch_pid(daemon_t *d, client_t *c)
{
#ifdef SYS_pidfd_open
    if (c->pid <= 0)
        return;
    int pfd = (int)syscall(SYS_pidfd_open, c->pid, 0);
    if (pfd < 0)
        return;     /* ESRCH: gone already, the socket says so too */
    /* The pid may have been reused between the peer's connect and now; that
     * needs the peer dead, and then its socket end is closed: check it after
     * opening the pidfd, so a pidfd on a stranger is never kept. */
    struct pollfd pf = {.fd = c->fd, .events = POLLIN | POLLRDHUP};
    if (poll(&pf, 1, 0) == 1 && (pf.revents & (POLLHUP | POLLERR | POLLRDHUP))) {
        close(pfd);
        return;
    }
    (void)fcntl(pfd, F_SETFD, FD_CLOEXEC);
    if (uv_poll_init(d->loop, &c->pidpoll, pfd) < 0) {
        close(pfd);
        return;
    }
    c->pidfd = pfd;
    c->pidpoll.data = c;
    c->pidpolling = true;
    c->open_handles++;
    uv_poll_start(&c->pidpoll, UV_READABLE, on_pid_exit);
#else
    (void)d;
    (void)c;
#endif
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
        int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED)
                return;
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
            reject(fd, "permission denied");
            continue;
        }
        client_t *c = client_new(d, fd, cr.pid, cr.uid);
        if (!c) {
            daemon_log(d, "out of memory for a client record; connection refused");
            close(fd);
            continue;
        }
        if (uv_poll_init(d->loop, &c->poll, fd) < 0) {
            client_close(d, c, "cannot poll its socket");
            continue;
        }
        c->poll.data = c;
        c->polling = true;
        c->open_handles++;
        uv_poll_start(&c->poll, UV_READABLE | UV_DISCONNECT, on_client_io);
        client_watch_pid(d, c);
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
    while (d->clients)
        client_close(d, d->clients, "daemon shutting down");
}

/* ---- client records ---------------------------------------------------------------- */

client_t *client_new(daemon_t *d, int fd, pid_t pid, uid_t uid)
{
    client_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = d->next_client_id++;
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

void client_reclaim(daemon_t *d, client_t *c)
{
    mheap_t *h = &d->heap;
    uint32_t id;
    while ((id = spanlist_pop(h, &c->cached)) != HD_NO_SPAN) {
        if (mheap_state(h, id) == HD_SPAN_CACHED && mheap_span(h, id)->owner == c->id)
            mcentral_reclaim_span(&d->central, id);
    }
}

static void on_client_closed(uv_handle_t *hd)
{
    client_t *c = hd->data;
    if (--c->open_handles)
        return;     /* the other handle's callback frees the record */
    if (c->fd >= 0)
        close(c->fd);
    if (c->pidfd >= 0)
        close(c->pidfd);
    free(c);
}

void client_close(daemon_t *d, client_t *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = true;
    uint32_t ncached = c->cached.n;
    client_reclaim(d, c);
    limits_client_gone(d, c->id);
    mstats_slot_retire(d, c->stat_slot);   /* fold its counters into the retired totals */
    c->stat_slot = 0;
    if (c->prev)
        c->prev->next = c->next;
    else
        d->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mheap_book_add(&d->heap, &d->seg.hdr->clients, -1);
    mheap_publish(&d->heap);
    if (c->hello_done)
        daemon_log(d, "client %u detached (pid %d%s%s): %s; %u cached spans reclaimed", c->id, (int)c->pid,
                   c->name[0] ? ", " : "", c->name, why, ncached);
    else
        daemon_log(d, "connection %u from pid %d closed: %s", c->id, (int)c->pid, why);
    if (c->pidpolling) {
        uv_poll_stop(&c->pidpoll);
        uv_close((uv_handle_t *)&c->pidpoll, on_client_closed);
    }
    if (c->polling) {
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *)&c->poll, on_client_closed);
    }
    if (c->open_handles)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

/* ---- packet I/O ------------------------------------------------------------------------- */

int client_send(client_t *c, const uint8_t *buf, size_t len, const int *fds, unsigned nfds)
{
    if (c->fd < 0)
        return -EBADF;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } cm;
    if (nfds) {
        if (nfds > 2)
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

int daemon_send_flush(daemon_t *d, client_t *c)
{
    uint8_t buf[64];    /* not d->txbuf: a reply may be waiting in it */
    rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
    if (rpc_encode_flush(&out) < 0)
        return -EMSGSIZE;
    int r = client_send(c, out.buf, out.len, NULL, 0);
    if (r < 0)
        client_close(d, c, r == -EAGAIN ? "not reading (Flush did not fit its socket)" : strerror(-r));
    return r;
}

/* Receive and handle one packet. 1: handled, 0: nothing to read, -1: the
 * client was closed (c is gone). */
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
    if (n == 0) {     /* EOF (an empty packet reads the same: both end the client) */
        client_close(d, c, "disconnected");
        return -1;
    }
    rpc_out_t out = {.buf = d->txbuf, .cap = sizeof(d->txbuf)};
    enum rpc_verdict v = rpc_handle(d, c, d->rxbuf, (size_t)n, &out);
    if (out.len) {
        int r = client_send(c, out.buf, out.len, out.fds, out.nfds);
        if (r < 0) {
            client_close(d, c, r == -EAGAIN ? "not reading its replies" : strerror(-r));
            return -1;
        }
    }
    if (v != RPC_OK) {
        client_close(d, c, out.why ? out.why : "protocol error");
        return -1;
    }
    return 1;
}

static void on_client_io(uv_poll_t *p, int status, int events)
{
    client_t *c = p->data;
    daemon_t *d = c->d;
    if (status < 0) {
        client_close(d, c, uv_strerror(status));
        return;
    }
    if (events & UV_READABLE) {
        for (int i = 0; i < RECV_BATCH; i++)
            if (client_recv_one(d, c) <= 0)
                return;     /* drained, or closed */
        return;             /* more later: others get a turn */
    }
    if (events & UV_DISCONNECT)
        client_close(d, c, "hung up");
}
