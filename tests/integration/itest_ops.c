/* Integration tests of heapd as a service: the --metrics-listen scrape
 * endpoint over TCP, systemd readiness (a fake $NOTIFY_SOCKET the test
 * binds), socket activation (listening fds passed with LISTEN_FDS and
 * LISTEN_FDNAMES), --pidfile, and the client's rate-limited bad-free
 * reports. Real daemons, real client processes. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "heapd.h"
#include "promcheck.h"
#include "unit.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A loopback port nobody listens on now (bound, then closed: the daemon binds it next). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof(sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || getsockname(fd, (struct sockaddr *)&sa, &l) < 0)
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Read until EOF (5 s deadline) into a malloc'd NUL-terminated buffer. */
static char *read_to_eof(int fd, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    uint64_t t0 = now_ms();
    while (buf && now_ms() - t0 < 5000) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        if (n + 1 >= cap) {
            char *b2 = realloc(buf, cap *= 2);
            if (!b2)
                break;
            buf = b2;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    if (buf)
        buf[n] = 0;
    *len = n;
    return buf;
}

/* Send req on a new connection, return the whole response (malloc'd) or NULL. */
static char *http(int port, const char *req, size_t reqlen)
{
    int fd = tcp_connect(port);
    if (fd < 0)
        return NULL;
    if (write(fd, req, reqlen) != (ssize_t)reqlen) {
        close(fd);
        return NULL;
    }
    size_t n;
    char *r = read_to_eof(fd, &n);
    close(fd);
    return r;
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    return b ? b + 4 : "";
}

/* A client that stays attached with live objects until its pipe closes. */
typedef struct holder {
    const char *sock;
    int go[2], ready[2];
} holder_t;

static int holder_body(void *arg)
{
    holder_t *h = arg;
    if (heapd_attach(h->sock) != 0)
        return 10;
    void *p[64];
    for (int i = 0; i < 64; i++)
        if (!(p[i] = heapd_malloc(4096)))
            return 11;
    if (heapd_flush() != 0)
        return 12;
    char c = 1;
    if (write(h->ready[1], &c, 1) != 1)
        return 13;
    if (read(h->go[0], &c, 1) < 0)
        return 14;
    for (int i = 0; i < 64; i++)
        heapd_free(p[i]);
    heapd_detach();
    return 0;
}

static void test_metrics_scrape(void)
{
    int port = free_port();
    CU_ASSERT_FATAL(port > 0);
    char listen[32];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    const char *extra[] = {"--metrics-listen", listen, "--memory-limit", "96MiB", "--hard-limit", "128MiB", NULL};
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);

    /* a client holding 64 x 4 KiB, so the per-client series have a row */
    holder_t h = {.sock = d.sock};
    CU_ASSERT_FATAL(pipe(h.go) == 0 && pipe(h.ready) == 0);
    pid_t hp = fork();
    if (hp == 0)
        _exit(holder_body(&h));
    char c;
    struct pollfd pf = {.fd = h.ready[0], .events = POLLIN};
    CU_ASSERT_FATAL(poll(&pf, 1, 10000) == 1 && read(h.ready[0], &c, 1) == 1);

    static const char get[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    char *r = http(port, get, sizeof(get) - 1);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT(!strncmp(r, "HTTP/1.1 200 OK\r\n", 17));
    CU_ASSERT(strstr(r, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != NULL);
    const char *body = body_of(r);
    char err[256];
    bool ok = prom_check(body, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "scrape: %s\n", err);
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(prom_value(body, "heapd_memory_limit_soft_bytes"), 96.0 * (1 << 20));
    CU_ASSERT_EQUAL(prom_value(body, "heapd_memory_limit_hard_bytes"), 128.0 * (1 << 20));
    CU_ASSERT_EQUAL(prom_value(body, "heapd_clients"), 1);
    CU_ASSERT_EQUAL(prom_value(body, "heapd_client_processes{name=\"heapd-itest\"}"), 1);
    CU_ASSERT(prom_value(body, "heapd_client_live_bytes{name=\"heapd-itest\"}") >= 64 * 4096);
    CU_ASSERT(prom_value(body, "process_start_time_seconds") > 1.6e9);
    CU_ASSERT(strstr(body, "\nheapd_build_info{version=\"") != NULL);
    free(r);

    /* OpenMetrics when asked for */
    static const char get_om[] = "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n"
                                 "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n";
    r = http(port, get_om, sizeof(get_om) - 1);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT(strstr(r, "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n") != NULL);
    ok = om_check(body_of(r), err, sizeof(err));
    if (!ok)
        fprintf(stderr, "scrape (OpenMetrics): %s\n", err);
    CU_ASSERT(ok);
    free(r);

    /* only GET /metrics */
    static const char nf[] = "GET / HTTP/1.1\r\n\r\n", post[] = "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                      junk[] = "HELLO\r\n\r\n";
    r = http(port, nf, sizeof(nf) - 1);
    CU_ASSERT(r && !strncmp(r, "HTTP/1.1 404 ", 13));
    free(r);
    r = http(port, post, sizeof(post) - 1);
    CU_ASSERT(r && !strncmp(r, "HTTP/1.1 405 ", 13) && strstr(r, "\r\nAllow: GET, HEAD\r\n"));
    free(r);
    r = http(port, junk, sizeof(junk) - 1);
    CU_ASSERT(r && !strncmp(r, "HTTP/1.1 400 ", 13));
    free(r);
    /* a request head over the bound: 431, not an unbounded buffer */
    size_t big = 3 * 8192;
    char *huge = malloc(big);
    CU_ASSERT_FATAL(huge != NULL);
    memcpy(huge, "GET /metrics HTTP/1.1\r\nX: ", 26);
    memset(huge + 26, 'a', big - 26);
    int fd = tcp_connect(port);
    CU_ASSERT_FATAL(fd >= 0);
    ssize_t w = send(fd, huge, big, MSG_NOSIGNAL);
    CU_ASSERT(w > 0);
    size_t n;
    r = read_to_eof(fd, &n);
    CU_ASSERT(r && !strncmp(r, "HTTP/1.1 431 ", 13));
    free(r);
    close(fd);
    free(huge);

    /* the connection bound: 16 idle connections are held, the 17th is closed
     * at once, and a scrape works again once they go */
    int idle[16];
    for (int i = 0; i < 16; i++)
        CU_ASSERT_FATAL((idle[i] = tcp_connect(port)) >= 0);
    /* each idle one is in the daemon's table once a request on a later
     * connection has been answered (the loop accepts in order) */
    int extra_fd = tcp_connect(port);
    CU_ASSERT_FATAL(extra_fd >= 0);
    CU_ASSERT(write(extra_fd, get, sizeof(get) - 1) == (ssize_t)(sizeof(get) - 1));
    r = read_to_eof(extra_fd, &n);
    CU_ASSERT(r && n == 0);                 /* closed without an answer */
    free(r);
    close(extra_fd);
    for (int i = 0; i < 16; i++)
        close(idle[i]);
    uint64_t t0 = now_ms();
    bool served = false;
    while (!served && now_ms() - t0 < 5000) {   /* the daemon sees the closes */
        r = http(port, get, sizeof(get) - 1);
        served = r && !strncmp(r, "HTTP/1.1 200 ", 13);
        free(r);
    }
    CU_ASSERT(served);

    CU_ASSERT(write(h.go[1], "x", 1) == 1);
    CU_ASSERT_EQUAL(wait_child(hp, 10), 0);
    close(h.go[0]); close(h.go[1]); close(h.ready[0]); close(h.ready[1]);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* ---- systemd: readiness ---------------------------------------------------------------- */

static void test_notify_ready(void)
{
    char dir[] = "/tmp/heapd-itest-notify-XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
    int ns = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CU_ASSERT_FATAL(ns >= 0 && bind(ns, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    char pidfile[64];
    snprintf(pidfile, sizeof(pidfile), "%s/heapd.pid", dir);
    const char *extra[] = {"--pidfile", pidfile, NULL};
    daemon_proc_t d;
    int started = daemon_start(&d, "64MiB", extra);
    unsetenv("NOTIFY_SOCKET");
    CU_ASSERT_FATAL(started == 0);
    char msg[1024] = "";
    struct pollfd pf = {.fd = ns, .events = POLLIN};
    CU_ASSERT(poll(&pf, 1, 10000) == 1);
    ssize_t n = recv(ns, msg, sizeof(msg) - 1, MSG_DONTWAIT);
    CU_ASSERT(n > 0);
    msg[n > 0 ? n : 0] = 0;
    char want[32];
    snprintf(want, sizeof(want), "MAINPID=%d\n", (int)d.pid);
    CU_ASSERT(strstr(msg, "READY=1\n") != NULL);
    CU_ASSERT(strstr(msg, want) != NULL);
    CU_ASSERT(strstr(msg, "STATUS=serving a 64MiB heap on ") != NULL);
    /* --pidfile: the serving process, removed at a clean exit */
    FILE *f = fopen(pidfile, "r");
    int pid = 0;
    CU_ASSERT(f && fscanf(f, "%d", &pid) == 1 && pid == d.pid);
    if (f)
        fclose(f);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
    /* the stop is announced too */
    CU_ASSERT(poll(&pf, 1, 5000) == 1);
    n = recv(ns, msg, sizeof(msg) - 1, MSG_DONTWAIT);
    msg[n > 0 ? n : 0] = 0;
    CU_ASSERT(strstr(msg, "STOPPING=1") != NULL);
    CU_ASSERT(access(pidfile, F_OK) != 0);
    close(ns);
    unlink(sa.sun_path);
    rmdir(dir);
}

/* ---- systemd: socket activation ----------------------------------------------------------- */

static int listen_unix(const char *path, int type)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    int fd = socket(AF_UNIX, type, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0)
        return -1;
    return fd;
}

static int attach_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    char *p = heapd_malloc(1000);
    if (!p)
        return 11;
    memset(p, 1, 1000);
    heapd_free(p);
    if (heapd_bad_frees() != 0)
        return 12;
    heapd_detach();
    return 0;
}

/* Run heapctl --control ctl stats; its exit code. */
static int heapctl_stats(const char *ctl)
{
    char bin[PATH_MAX];
    snprintf(bin, sizeof(bin), "%s", HEAPD_BIN);
    char *slash = strrchr(bin, '/');
    snprintf(slash + 1, sizeof(bin) - (size_t)(slash + 1 - bin), "heapctl");
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        dup2(nul, 1);
        execl(bin, bin, "--control", ctl, "stats", (char *)NULL);
        _exit(127);
    }
    return wait_child(pid, 10);
}

/* heapd started the way systemd starts it: the two sockets as fds 3 and 4,
 * named by LISTEN_FDNAMES (in the order given), no --socket. */
static void activated(bool control_first)
{
    char dir[] = "/tmp/heapd-itest-act-XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    char sock[64], ctl[72];
    snprintf(sock, sizeof(sock), "%s/heapd.sock", dir);
    snprintf(ctl, sizeof(ctl), "%s/heapd.sock.ctl", dir);
    int cfd = listen_unix(sock, SOCK_SEQPACKET), kfd = listen_unix(ctl, SOCK_STREAM);
    CU_ASSERT_FATAL(cfd >= 0 && kfd >= 0);
    pid_t pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        int a = control_first ? kfd : cfd, b = control_first ? cfd : kfd;
        int ta = dup(a), tb = dup(b);   /* out of the way of 3 and 4 first */
        dup2(ta, 3);
        dup2(tb, 4);
        char p[16];
        snprintf(p, sizeof(p), "%d", (int)getpid());
        setenv("LISTEN_PID", p, 1);
        setenv("LISTEN_FDS", "2", 1);
        setenv("LISTEN_FDNAMES", control_first ? "control:client" : "client:control", 1);
        char log[96];
        snprintf(log, sizeof(log), "%s/heapd.log", dir);
        int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(lfd, 2);
        execl(HEAPD_BIN, HEAPD_BIN, "--foreground", "--size", "64MiB", "--base", "0x5a0000000000", (char *)NULL);
        _exit(127);
    }
    close(cfd);
    close(kfd);
    /* the daemon took the sockets: a client attaches through them at once
     * (the backlog holds it until the loop runs) */
    CU_ASSERT_EQUAL(run_child(attach_body, sock, 20), 0);
    CU_ASSERT_EQUAL(heapctl_stats(ctl), 0);
    kill(pid, SIGTERM);
    CU_ASSERT_EQUAL(wait_child(pid, 10), 0);
    /* an inherited socket is never unlinked: systemd owns the files */
    struct stat st;
    CU_ASSERT(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode));
    CU_ASSERT(stat(ctl, &st) == 0 && S_ISSOCK(st.st_mode));
    char log[96];
    snprintf(log, sizeof(log), "%s/heapd.log", dir);
    unlink(sock);
    unlink(ctl);
    unlink(log);
    rmdir(dir);
}

static void test_socket_activation(void)
{
    activated(false);
    activated(true);
}

/* ---- the client's bad-free reports --------------------------------------------------------- */

static int bad_flood_body(void *arg)
{
    if (heapd_attach(arg) != 0)
        return 10;
    int local;
    /* 1000 at once: the first 5 reported, the rest counted */
    for (int i = 0; i < 1000; i++)
        heapd_free(&local);
    if (heapd_bad_frees() != 1000)
        return 11;
    /* then, once the next second begins, one line with the count */
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        heapd_free(&local);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while (t.tv_sec < t0.tv_sec + 2);
    heapd_detach();
    return 0;
}

static void test_bad_free_rate_limit(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "64MiB", NULL) == 0);
    char errpath[220];
    snprintf(errpath, sizeof(errpath), "%s/client.err", d.dir);
    int saved = dup(2);
    int efd = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CU_ASSERT_FATAL(efd >= 0);
    dup2(efd, 2);                       /* the child inherits it */
    int rc = run_child(bad_flood_body, d.sock, 20);
    dup2(saved, 2);
    close(saved);
    close(efd);
    CU_ASSERT_EQUAL(rc, 0);
    FILE *f = fopen(errpath, "r");
    CU_ASSERT_FATAL(f != NULL);
    char line[256];
    unsigned lines = 0, summaries = 0;
    unsigned long long skipped = 0, total = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "heapd: free(", 12))
            continue;
        lines++;
        if (strstr(line, "more bad frees not reported") &&
            sscanf(strrchr(line, '('), "(%llu more bad frees not reported; %llu in all)", &skipped, &total) == 2)
            summaries++;
    }
    fclose(f);
    unlink(errpath);
    /* 5 lines, then at most one a second: the child ran 2 to 3 seconds */
    CU_ASSERT(lines >= 6 && lines <= 5 + 3);
    CU_ASSERT(summaries >= 1 && summaries == lines - 5);
    CU_ASSERT(total > 1000 && skipped >= 995);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

static void register_ops_suite(void)
{
    CU_pSuite s = CU_add_suite("operations", NULL, NULL);
    CU_add_test(s, "--metrics-listen: scrape over TCP, both formats, bounds", test_metrics_scrape);
    CU_add_test(s, "systemd: READY=1 on $NOTIFY_SOCKET; --pidfile", test_notify_ready);
    CU_add_test(s, "systemd: socket activation by LISTEN_FDNAMES", test_socket_activation);
    CU_add_test(s, "bad-free reports: 5, then one a second with a count", test_bad_free_rate_limit);
}
UNIT_SUITE(register_ops_suite)
