/* harness.c: see harness.h. */
#define _GNU_SOURCE
#include "harness.h"

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
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "heapd.pb-c.h"
#include "unit.h"

#define MAX_DAEMONS 64
static pid_t daemons[MAX_DAEMONS];
static char dirs[MAX_DAEMONS][128];
static unsigned ndaemons;

void harness_cleanup(void)
{
    for (unsigned i = 0; i < ndaemons; i++) {
        if (daemons[i] > 0) {
            kill(daemons[i], SIGKILL);
            waitpid(daemons[i], NULL, 0);
            daemons[i] = 0;
        }
        if (dirs[i][0]) {
            static const char *files[] = {"heapd.sock", "heapd.log", "heapd.sock.ctl"};
            char path[sizeof(dirs[0]) + 16];
            for (unsigned k = 0; k < 3; k++) {
                snprintf(path, sizeof(path), "%.127s/%.15s", dirs[i], files[k]);
                unlink(path);
            }
            rmdir(dirs[i]);
            dirs[i][0] = 0;
        }
    }
}

int raw_connect(const char *sock)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t n = strlen(sock);
    if (n >= sizeof(a.sun_path)) {
        close(fd);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(a.sun_path, sock, n + 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int daemon_start(daemon_proc_t *d, const char *size, const char *const *extra)
{
    static unsigned counter;
    memset(d, 0, sizeof(*d));
    snprintf(d->dir, sizeof(d->dir), "/tmp/heapd-itest-XXXXXX");
    if (!mkdtemp(d->dir))
        return -1;
    snprintf(d->sock, sizeof(d->sock), "%s/heapd.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/heapd.log", d->dir);
    /* a fresh base per daemon: 2 TiB apart, above the default, cycling through
     * 34..88 TiB (stopped daemons' bases come round again): ASan's allocator
     * lives at 96 TiB and the libraries near 128 TiB */
    d->base = HD_DEFAULT_BASE + (uint64_t)(++counter % 28 + 1) * (2ull << 40);
    char base[32];
    snprintf(base, sizeof(base), "%#llx", (unsigned long long)d->base);

    const char *argv[32] = {HEAPD_BIN, "--socket", d->sock, "--size", size, "--base", base, "--foreground"};
    int argc = 8;
    for (int i = 0; extra && extra[i] && argc < 30; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;

    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int lfd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (lfd >= 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
        }
        execv(HEAPD_BIN, (char *const *)argv);
        _exit(127);
    }
    d->pid = pid;
    if (ndaemons < MAX_DAEMONS) {
        daemons[ndaemons] = pid;
        snprintf(dirs[ndaemons], sizeof(dirs[0]), "%s", d->dir);
        ndaemons++;
    }
    uint64_t t0 = test_now_ms();
    while (test_now_ms() - t0 < 10000) {
        int fd = raw_connect(d->sock);
        if (fd >= 0) {
            close(fd);
            /* the control socket (sock + .ctl) listens just after the client
             * socket: wait until it accepts too (its file exists from bind(),
             * a moment before listen()), briefly: a test may pass --control */
            char ctl[sizeof(d->sock) + 8];
            struct stat cst;
            snprintf(ctl, sizeof(ctl), "%s.ctl", d->sock);
            if (TEST_WAIT(stat(ctl, &cst) == 0, 1000)) {
                int cfd = -1;
                TEST_WAIT((cfd = ctl_open(d->sock)) >= 0, 2000);
                if (cfd >= 0)
                    close(cfd);
            }
            return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            d->pid = 0;
            fprintf(stderr, "heapd exited at start; log %s\n", d->log);
            return -1;
        }
        test_pause_ms(10);          /* between two looks at the socket */
    }
    fprintf(stderr, "heapd did not listen within 10 s; log %s\n", d->log);
    return -1;
}

int daemon_stop(daemon_proc_t *d)
{
    if (d->pid <= 0)
        return -1;
    int st = -1;
    kill(d->pid, SIGTERM);
    if (TEST_WAIT(waitpid(d->pid, &st, WNOHANG) == d->pid, 5000))
        goto done;
    fprintf(stderr, "heapd ignored SIGTERM for 5 s; killing\n");
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &st, 0);
done:
    for (unsigned i = 0; i < ndaemons; i++)
        if (daemons[i] == d->pid)
            daemons[i] = 0;
    d->pid = 0;
    return st;
}

int wait_child(pid_t pid, unsigned timeout_s)
{
    int st;
    pid_t r = 0;
    if (TEST_WAIT((r = waitpid(pid, &st, WNOHANG)) != 0, timeout_s * 1000))
        return r != pid ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    fprintf(stderr, "child %d timed out after %u s\n", (int)pid, timeout_s);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return 124;
}

int run_child(int (*fn)(void *), void *arg, unsigned timeout_s)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        alarm(timeout_s + 5);            /* belt and braces: never outlive the test */
        int rc = fn(arg);
        fflush(NULL);
        _exit(rc);
    }
    return wait_child(pid, timeout_s);
}

ssize_t raw_call(int fd, const void *msg, size_t len, void *buf, size_t buflen, unsigned timeout_ms)
{
    if (msg && send(fd, msg, len, MSG_NOSIGNAL) != (ssize_t)len)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)timeout_ms) <= 0)
        return -1;
    return recv(fd, buf, buflen, 0);
}

int raw_hello_fds(const char *sock, const char *name, int fds[2], int *nfds, int *connp)
{
    fds[0] = fds[1] = -1;
    *nfds = 0;
    int fd = raw_connect(sock);
    if (fd < 0)
        return -1;
    Heapd__Hello hello = HEAPD__HELLO__INIT;
    hello.version = HD_PROTO_VERSION;
    hello.pid = getpid();
    hello.name = (char *)name;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &hello;
    uint8_t buf[4096];
    size_t n = heapd__client_msg__pack(&m, buf);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    /* a refused peer may find the socket closed already: the reply is still queued */
    (void)send(fd, buf, n, MSG_NOSIGNAL);
    if (poll(&p, 1, 5000) <= 0) {
        close(fd);
        return -1;
    }
    union {
        char buf[CMSG_SPACE(4 * sizeof(int))];
        struct cmsghdr align;
    } cm;
    memset(&cm, 0, sizeof(cm));
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf)};
    ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (connp)
        *connp = fd;
    else
        close(fd);
    for (struct cmsghdr *c = r > 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (*nfds < 2)
                    fds[*nfds] = f;
                else
                    close(f);
                (*nfds)++;
            }
        }
    }
    if (r <= 0)
        return -1;
    Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, buf);
    if (!rep)
        return -1;
    int ret = -1;
    if (rep->body_case == HEAPD__DAEMON_MSG__BODY_ERROR)
        ret = rep->error->err > 0 ? rep->error->err : -1;
    else if (rep->body_case == HEAPD__DAEMON_MSG__BODY_WELCOME && *nfds >= 2)
        ret = 0;
    heapd__daemon_msg__free_unpacked(rep, NULL);
    return ret;
}

int books_read(const char *sock, hd_header_t *out)
{
    int fds[2], nfds, rc = -1;
    if (raw_hello_fds(sock, "itest-books", fds, &nfds, NULL) == 0) {
        void *hm = mmap(NULL, HD_HEADER_BYTES, PROT_READ, MAP_SHARED, fds[0], 0);
        if (hm != MAP_FAILED) {
            /* a consistent copy: the daemon's batches take microseconds */
            rc = hd_books_snapshot(hm, out, 100000) ? 0 : -1;
            munmap(hm, HD_HEADER_BYTES);
        }
    }
    for (int i = 0; i < 2 && i < nfds; i++)
        close(fds[i]);
    return rc;
}

bool books_wait(const char *sock, hd_header_t *out, bool (*pred)(const hd_header_t *), unsigned timeout_ms)
{
    return TEST_WAIT(books_read(sock, out) == 0 && pred(out), timeout_ms);
}

const hd_header_t *books_map(const char *sock)
{
    int fds[2], nfds;
    void *hm = MAP_FAILED;
    if (raw_hello_fds(sock, "itest-books", fds, &nfds, NULL) == 0)
        hm = mmap(NULL, HD_HEADER_BYTES, PROT_READ, MAP_SHARED, fds[0], 0);
    for (int i = 0; i < 2 && i < nfds; i++)
        close(fds[i]);
    return hm == MAP_FAILED ? NULL : hm;
}

void books_unmap(const hd_header_t *h)
{
    if (h)
        munmap((void *)h, HD_HEADER_BYTES);
}

int ctl_open(const char *sock)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.ctl", sock) >= (int)sizeof(sa.sun_path))
        return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

int ctl_send(int fd, uint64_t seq, int body_case)
{
    Heapdctl__StatsRequest st = HEAPDCTL__STATS_REQUEST__INIT;
    Heapdctl__ClientsRequest cl = HEAPDCTL__CLIENTS_REQUEST__INIT;
    Heapdctl__FlushRequest fl = HEAPDCTL__FLUSH_REQUEST__INIT;
    Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
    q.seq = seq;
    q.body_case = (Heapdctl__ControlRequest__BodyCase)body_case;
    switch (body_case) {
    case HEAPDCTL__CONTROL_REQUEST__BODY_STATS: q.stats = &st; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS: q.clients = &cl; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH: q.flush = &fl; break;
    default: return -1;
    }
    uint8_t buf[256];
    size_t n = heapdctl__control_request__pack(&q, buf + 4);
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = buf[3] = 0;
    return send(fd, buf, n + 4, MSG_NOSIGNAL) == (ssize_t)(n + 4) ? 0 : -1;
}

/* Read exactly len bytes before the deadline. */
static bool read_full(int fd, uint8_t *p, size_t len, uint64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        uint64_t t = test_now_ms();
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (t >= deadline || poll(&pf, 1, (int)(deadline - t)) <= 0)
            return false;
        ssize_t r = read(fd, p + got, len - got);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

Heapdctl__ControlReply *ctl_recv(int fd, unsigned timeout_ms)
{
    uint64_t deadline = test_now_ms() + timeout_ms;
    uint8_t h[4];
    if (!read_full(fd, h, 4, deadline))
        return NULL;
    uint32_t len = h[0] | h[1] << 8 | h[2] << 16 | (uint32_t)h[3] << 24;
    uint8_t *body = malloc(len ? len : 1);
    Heapdctl__ControlReply *r = NULL;
    if (body && read_full(fd, body, len, deadline))
        r = heapdctl__control_reply__unpack(NULL, len, body);
    free(body);
    return r;
}

int become_nobody(void)
{
    if (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
        return -1;
    return getuid() == NOBODY && geteuid() == NOBODY ? 0 : -1;
}

/* One request on an attached raw connection: 0 for Ack, the daemon's errno
 * for an Error, -1 for no reply or another reply. */
int raw_request(int conn, Heapd__ClientMsg *m, unsigned timeout_ms)
{
    uint8_t out[512], in[4096];
    size_t n = heapd__client_msg__pack(m, out);
    ssize_t r = raw_call(conn, out, n, in, sizeof(in), timeout_ms);
    if (r <= 0)
        return -1;
    Heapd__DaemonMsg *rep = heapd__daemon_msg__unpack(NULL, (size_t)r, in);
    if (!rep)
        return -1;
    int ret = rep->body_case == HEAPD__DAEMON_MSG__BODY_ACK     ? 0
              : rep->body_case == HEAPD__DAEMON_MSG__BODY_ERROR ? rep->error->err
                                                                : -1;
    heapd__daemon_msg__free_unpacked(rep, NULL);
    return ret;
}

const char *proc_stat_fields(pid_t pid, char *buf, size_t len)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *e = strrchr(buf, ')');      /* the command name may hold anything */
    return e && e[1] == ' ' ? e + 2 : NULL;
}
