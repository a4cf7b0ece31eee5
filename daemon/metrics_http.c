/* metrics_http.c: the --metrics-listen scrape endpoint. See metrics_http.h. */
#define _GNU_SOURCE
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "errf.h"
#include "metrics.h"

#define fail(err, errlen, e, ...) (hd_errf(err, errlen, __VA_ARGS__), -(e))

typedef struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct metrics_http *h;
    char buf[HTTP_MAX_REQ];
    size_t len;
    bool answered;              /* a reply is queued: read no more */
    unsigned open_handles;
    struct http_conn *next, *prev;
} http_conn_t;

typedef struct metrics_http {
    daemon_t *d;
    int fd;                     /* until libuv owns it */
    uv_tcp_t server;
    bool serving;
    http_conn_t *conns;
    unsigned nconns;
    char addr[80];
} metrics_http_t;

typedef struct http_write {
    uv_write_t req;
    char *head, *body;
} http_write_t;

/* ---- the socket ---------------------------------------------------------------------- */

int metrics_http_listen(daemon_t *d, const char *addr, char *err, size_t errlen)
{
    const char *arg = addr;
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1])
        return fail(err, errlen, EINVAL, "bad --metrics-listen '%s': give ADDR:PORT (127.0.0.1:9464, [::1]:9464)", addr);
    size_t hlen = (size_t)(colon - addr);
    if (addr[0] == '[') {
        if (hlen < 3 || addr[hlen - 1] != ']')
            return fail(err, errlen, EINVAL, "bad --metrics-listen '%s': an IPv6 address goes in brackets", addr);
        addr++;
        hlen -= 2;
    }
    if (hlen >= sizeof(host))
        return fail(err, errlen, EINVAL, "bad --metrics-listen '%s': address too long", addr);
    memcpy(host, addr, hlen);
    host[hlen] = 0;
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || port == 0 || port > 65535 || colon[1] == '-' || colon[1] == '+')
        return fail(err, errlen, EINVAL, "bad --metrics-listen port '%s': give 1..65535", colon + 1);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sslen;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        sslen = sizeof(*s4);
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        sslen = sizeof(*s6);
    } else {
        return fail(err, errlen, EINVAL, "bad --metrics-listen address '%s': give an IPv4 address or [IPv6]", host);
    }
    metrics_http_t *h = calloc(1, sizeof(*h));
    if (!h)
        return fail(err, errlen, ENOMEM, "out of memory");
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sslen) < 0 || listen(fd, 64) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        free(h);
        return fail(err, errlen, e, "cannot listen on %s for --metrics-listen: %s", arg, strerror(e));
    }
    h->d = d;
    h->fd = fd;
    snprintf(h->addr, sizeof(h->addr), "%s", arg);
    d->http = h;
    return 0;
}

/* ---- connections --------------------------------------------------------------------- */

static void conn_closed(uv_handle_t *hd)
{
    http_conn_t *c = hd->data;
    if (--c->open_handles == 0)
        free(c);
}

static void conn_close(http_conn_t *c)
{
    metrics_http_t *h = c->h;
    if (!c->h)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->nconns--;
    c->h = NULL;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    http_write_t *w = (http_write_t *)req;
    http_conn_t *c = req->data;
    free(w->head);
    free(w->body);
    free(w);
    conn_close(c);      /* Connection: close */
}

/* Queue the reply (head + body, the body malloc'd or NULL); the connection
 * closes once it is written. */
static void reply(http_conn_t *c, int code, const char *reason, const char *ctype, const char *extra, char *body,
                  size_t blen, bool head_only)
{
    c->answered = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    http_write_t *w = calloc(1, sizeof(*w));
    char *head = NULL;
    if (!w || asprintf(&head,
                       "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n",
                       code, reason, ctype, blen, extra ? extra : "") < 0) {
        free(w);
        free(body);
        conn_close(c);
        return;
    }
    w->head = head;
    w->body = head_only ? (free(body), NULL) : body;
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)strlen(head)), uv_buf_init(w->body, w->body ? (unsigned)blen : 0)};
    w->req.data = c;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, w->body ? 2 : 1, on_written) < 0) {
        free(w->head);
        free(w->body);
        free(w);
        conn_close(c);
    }
}

static void reply_text(http_conn_t *c, int code, const char *reason, const char *extra, bool head_only)
{
    char *body = NULL;
    int n = asprintf(&body, "%d %s\n", code, reason);
    if (n < 0) {
        conn_close(c);
        return;
    }
    reply(c, code, reason, "text/plain; charset=utf-8", extra, body, (size_t)n, head_only);
}

/* Does the request head ask for OpenMetrics in an Accept header? */
static bool wants_openmetrics(const char *head)
{
    for (const char *l = strstr(head, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, "Accept:", 7))
            continue;
        const char *e = strstr(l + 2, "\r\n");
        const char *om = strstr(l + 2, "application/openmetrics-text");
        return om && (!e || om < e);
    }
    return false;
}

static void handle(http_conn_t *c)
{
    char *sp1 = memchr(c->buf, ' ', c->len);
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(c->buf + c->len - sp1 - 1)) : NULL;
    char *eol = strstr(c->buf, "\r\n");
    if (!sp1 || !sp2 || !eol || sp2 > eol || strncmp(sp2 + 1, "HTTP/1.", 7)) {
        reply_text(c, 400, "Bad Request", NULL, false);
        return;
    }
    size_t mlen = (size_t)(sp1 - c->buf);
    bool get = mlen == 3 && !memcmp(c->buf, "GET", 3), head = mlen == 4 && !memcmp(c->buf, "HEAD", 4);
    char *path = sp1 + 1;
    size_t plen = (size_t)(sp2 - path);
    char *q = memchr(path, '?', plen);
    if (q)
        plen = (size_t)(q - path);
    if (!(plen == 8 && !memcmp(path, "/metrics", 8))) {
        reply_text(c, 404, "Not Found", NULL, head);
        return;
    }
    if (!get && !head) {
        reply_text(c, 405, "Method Not Allowed", "Allow: GET, HEAD\r\n", false);
        return;
    }
    bool om = wants_openmetrics(c->buf);
    size_t len;
    char *text = metrics_text(c->h->d, om, &len);
    if (!text) {
        reply_text(c, 500, "Internal Server Error", NULL, head);
        return;
    }
    reply(c, 200, "OK", om ? METRICS_CT_OPENMETRICS : METRICS_CT_PROM, NULL, text, len, head);
}

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    http_conn_t *c = hd->data;
    buf->base = c->buf + c->len;
    buf->len = sizeof(c->buf) - 1 - c->len;     /* room for the NUL */
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    http_conn_t *c = s->data;
    if (!c->h || c->answered)
        return;
    if (n < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    if (memchr(c->buf, 0, c->len)) {
        reply_text(c, 400, "Bad Request", NULL, false);
        return;
    }
    if (strstr(c->buf, "\r\n\r\n")) {
        handle(c);
        return;
    }
    if (c->len >= sizeof(c->buf) - 1)
        reply_text(c, 431, "Request Header Fields Too Large", NULL, false);
}

static void on_timeout(uv_timer_t *t)
{
    http_conn_t *c = t->data;
    conn_close(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    metrics_http_t *h = server->data;
    if (status < 0)
        return;
    http_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    if (uv_tcp_init(server->loop, &c->tcp) < 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->open_handles = 1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0 || h->nconns >= HTTP_MAX_CONNS) {
        uv_close((uv_handle_t *)&c->tcp, conn_closed);      /* over the bound: closed at once */
        return;
    }
    uv_timer_init(server->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 2;
    c->h = h;
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    uv_timer_start(&c->timer, on_timeout, HTTP_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

int metrics_http_start(daemon_t *d)
{
    metrics_http_t *h = d->http;
    if (!h)
        return 0;
    int r = uv_tcp_init(d->loop, &h->server);
    if (r < 0)
        return r;
    h->server.data = h;
    h->serving = true;
    if ((r = uv_tcp_open(&h->server, h->fd)) < 0)
        return r;
    h->fd = -1;                 /* libuv owns it now */
    if ((r = uv_listen((uv_stream_t *)&h->server, 64, on_connection)) < 0)
        return r;
    daemon_log(d, "serving metrics on http://%s/metrics", h->addr);
    return 0;
}

void metrics_http_shutdown(daemon_t *d)
{
    metrics_http_t *h = d->http;
    if (!h)
        return;
    while (h->conns)
        conn_close(h->conns);
    if (h->serving) {
        uv_close((uv_handle_t *)&h->server, NULL);
        h->serving = false;
    }
}

void metrics_http_free(daemon_t *d)
{
    metrics_http_t *h = d->http;
    if (!h)
        return;
    if (h->fd >= 0)
        close(h->fd);
    free(h);
    d->http = NULL;
}
