/* control.c: the control socket and its requests. See control.h. */
#define _GNU_SOURCE
#include "control.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "control.pb-c.h"
#include "errf.h"
#include "metrics.h"
#include "mstats.h"
#include "memlimit.h"
#include "rootdir.h"
#include "scavenge.h"

#define fail(err, errlen, e, ...) (hd_errf(err, errlen, __VA_ARGS__), -(e))

typedef struct ctl_conn {
    uv_pipe_t pipe;
    struct control *ctl;
    uint8_t buf[4 + CTL_MAX_REQ];       /* request bytes received, not yet handled */
    size_t len;
    bool reading, throttled, closing;
    bool finishing;                     /* shutting down after its last reply: read no more */
    struct ctl_conn *next, *prev;
} ctl_conn_t;

typedef struct control {
    daemon_t *d;
    int fd;                             /* until libuv owns it */
    char path[108];
    dev_t dev;                          /* our socket file, so shutdown never */
    ino_t ino;                          /* unlinks a newer daemon's */
    uv_pipe_t server;
    bool serving;
    uv_timer_t timer;                   /* resumes throttled connections */
    bool timer_init;
    ctl_conn_t *conns;
    unsigned nconns;
    uint64_t tokens;                    /* thousandths of a request */
    uint64_t last_ms;
} control_t;

typedef struct ctl_write {
    uv_write_t req;
    uint8_t data[];
} ctl_write_t;

/* ---- requests ------------------------------------------------------------------------ */

static void fill_limits(Heapdctl__LimitState *l, const limits_info_t *i)
{
    l->soft_limit = i->soft_limit;
    l->hard_limit = i->hard_limit;
    l->committed = i->committed;
    l->released = i->released;
    l->overshoot_max = i->overshoot_max;
    l->scavenged_total = i->scavenged_total;
    l->scavenge_runs = i->scavenge_runs;
    l->pressure_sent = i->pressure_sent;
    l->flush_sent = i->flush_sent;
    l->hard_limit_refusals = i->hard_limit_refusals;
}

/* Pack r into a malloc'd buffer. */
static int pack_reply(Heapdctl__ControlReply *r, uint8_t **out, size_t *len)
{
    size_t n = heapdctl__control_reply__get_packed_size(r);
    if (n > CTL_MAX_REPLY) {
        Heapdctl__Error e = HEAPDCTL__ERROR__INIT;
        e.err = EMSGSIZE;
        e.message = "reply too large";
        Heapdctl__ControlReply er = HEAPDCTL__CONTROL_REPLY__INIT;
        er.seq = r->seq;
        er.body_case = HEAPDCTL__CONTROL_REPLY__BODY_ERROR;
        er.error = &e;
        return pack_reply(&er, out, len);
    }
    *out = malloc(n ? n : 1);
    if (!*out)
        return -1;
    *len = heapdctl__control_reply__pack(r, *out);
    return 0;
}

static int reply_error(uint64_t seq, int err, uint8_t **out, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int reply_error(uint64_t seq, int err, uint8_t **out, size_t *len, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    Heapdctl__Error e = HEAPDCTL__ERROR__INIT;
    e.err = err;
    e.message = msg;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_ERROR;
    r.error = &e;
    return pack_reply(&r, out, len);
}

static int do_stats(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    mstats_t *m = malloc(sizeof(*m));
    if (!m)
        return reply_error(seq, ENOMEM, out, len, "out of memory");
    mstats_read(d, m);
    Heapdctl__MemStats s = HEAPDCTL__MEM_STATS__INIT;
    s.alloc = m->alloc;
    s.total_alloc = m->total_alloc;
    s.sys = m->sys;
    s.lookups = m->lookups;
    s.mallocs = m->mallocs;
    s.frees = m->frees;
    s.heap_alloc = m->heap_alloc;
    s.heap_sys = m->heap_sys;
    s.heap_idle = m->heap_idle;
    s.heap_inuse = m->heap_inuse;
    s.heap_released = m->heap_released;
    s.heap_objects = m->heap_objects;
    s.stack_inuse = m->stack_inuse;
    s.stack_sys = m->stack_sys;
    s.mspan_inuse = m->mspan_inuse;
    s.mspan_sys = m->mspan_sys;
    s.mcache_inuse = m->mcache_inuse;
    s.mcache_sys = m->mcache_sys;
    s.buck_hash_sys = m->buck_hash_sys;
    s.gc_sys = m->gc_sys;
    s.other_sys = m->other_sys;
    s.next_gc = m->next_gc;
    s.enable_gc = false;            /* explicit frees: there is no collector */

    Heapdctl__SizeClassStats rows[HD_NUM_SIZE_CLASSES], *rowp[HD_NUM_SIZE_CLASSES];
    for (unsigned k = 1; k < HD_NUM_SIZE_CLASSES; k++) {
        Heapdctl__SizeClassStats *r = &rows[k - 1];
        heapdctl__size_class_stats__init(r);
        r->size_class = k;
        r->size = m->by_size[k].size;
        r->mallocs = m->by_size[k].mallocs;
        r->frees = m->by_size[k].frees;
        r->spans_central = m->by_size[k].spans_central;
        r->span_bytes = m->by_size[k].span_bytes;
        rowp[k - 1] = r;
    }
    s.n_by_size = HD_NUM_SIZE_CLASSES - 1;
    s.by_size = rowp;
    Heapdctl__SizeClassStats lrows[HD_NUM_LARGE_CLASSES], *lrowp[HD_NUM_LARGE_CLASSES];
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        Heapdctl__SizeClassStats *r = &lrows[k];
        heapdctl__size_class_stats__init(r);
        r->size_class = HD_FIRST_LARGE_CLASS + k;
        r->size = m->large_by_size[k].size;
        r->mallocs = m->large_by_size[k].mallocs;
        r->frees = m->large_by_size[k].frees;
        r->spans_central = m->large_by_size[k].spans_central;
        r->span_bytes = m->large_by_size[k].span_bytes;
        lrowp[k] = r;
    }
    s.n_large_by_size = HD_NUM_LARGE_CLASSES;
    s.large_by_size = lrowp;
    s.refill_waits = m->refill_waits;
    s.refill_wait_ns = m->refill_wait_ns;
    s.bad_frees = m->bad_frees;

    s.tiny_allocs = m->tiny_allocs;
    s.large_allocs = m->large_allocs;
    s.large_alloc_bytes = m->large_alloc_bytes;
    s.large_frees = m->large_frees;
    s.large_free_bytes = m->large_free_bytes;
    s.heap_free = m->heap_free;
    s.heap_capacity = m->heap_capacity;
    s.spans_inuse = m->spans_inuse;
    s.spans_cached = m->spans_cached;
    s.spans_central = m->spans_central;
    s.spans_large = m->spans_large;
    s.objects_central = m->objects_central;
    s.clients = m->clients;
    s.clients_total = m->clients_total;
    s.refills = m->refills;
    s.bad_requests = m->bad_requests;
    s.uptime_ns = m->uptime_ns;
    s.slot_retries = m->slot_retries;
    s.slot_stale = m->slot_stale;
    s.control_requests = m->control_requests;
    s.control_throttled = m->control_throttled;
    Heapdctl__LimitState lim = HEAPDCTL__LIMIT_STATE__INIT;
    fill_limits(&lim, &m->limits);
    s.limits = &lim;
    Heapdctl__RpcStats rpc[MS_RPC_NTYPES], *rpcp[MS_RPC_NTYPES];
    for (unsigned t = 0; t < MS_RPC_NTYPES; t++) {
        heapdctl__rpc_stats__init(&rpc[t]);
        rpc[t].type = (char *)mstats_rpc_names[t];
        rpc[t].count = m->rpc_count[t];
        rpc[t].total_ns = m->rpc_ns[t];
        rpc[t].max_ns = m->rpc_max_ns[t];
        rpcp[t] = &rpc[t];
    }
    s.n_rpc = MS_RPC_NTYPES;
    s.rpc = rpcp;

    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_STATS;
    r.stats = &s;
    int rc = pack_reply(&r, out, len);
    free(m);
    return rc;
}

static int do_clients(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    size_t n = 0;
    for (client_t *c = d->clients; c; c = c->next)
        n += c->hello_done;
    Heapdctl__ClientInfo *rows = calloc(n ? n : 1, sizeof(*rows));
    Heapdctl__ClientInfo **rowp = calloc(n ? n : 1, sizeof(*rowp));
    if (!rows || !rowp) {
        free(rows);
        free(rowp);
        return reply_error(seq, ENOMEM, out, len, "out of memory");
    }
    size_t i = 0;
    for (client_t *c = d->clients; c && i < n; c = c->next) {
        if (!c->hello_done)
            continue;
        mstats_client_t mc;
        mstats_client(d, c, &mc);
        Heapdctl__ClientInfo *r = &rows[i];
        heapdctl__client_info__init(r);
        r->id = c->id;
        r->pid = c->pid;
        r->uid = c->uid;
        r->name = c->name;
        r->slot = c->stat_slot;
        r->live_bytes = mc.live_bytes;
        r->alloc_bytes = mc.alloc_bytes;
        r->free_bytes = mc.free_bytes;
        r->mallocs = mc.mallocs;
        r->frees = mc.frees;
        r->cached_spans = mc.cached_spans;
        r->cached_bytes = mc.cached_bytes;
        r->quota = limits_quota(d, c->id);
        r->charged = limits_charged(d, c->id);
        r->requests = c->requests;
        r->mcache_bytes = mc.mcache_bytes;
        r->refill_waits = mc.refill_waits;
        r->refill_wait_ns = mc.refill_wait_ns;
        r->bad_frees = mc.bad_frees;
        r->state = c->quarantined ? "quarantined" : "live";
        r->family = c->pool;
        rowp[i++] = r;
    }
    Heapdctl__Clients cl = HEAPDCTL__CLIENTS__INIT;
    cl.n_clients = i;
    cl.clients = rowp;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS;
    r.clients = &cl;
    int rc = pack_reply(&r, out, len);
    free(rows);
    free(rowp);
    return rc;
}

static int do_metrics(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    size_t tlen;
    char *text = metrics_text(d, false, &tlen);     /* what --metrics-listen serves too */
    if (!text)
        return reply_error(seq, ENOMEM, out, len, "out of memory");
    Heapdctl__Metrics mt = HEAPDCTL__METRICS__INIT;
    mt.text = text;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_METRICS;
    r.metrics = &mt;
    int rc = pack_reply(&r, out, len);
    free(text);
    return rc;
}

static int reply_limits(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    limits_info_t li;
    limits_get(d, &li);
    Heapdctl__LimitState l = HEAPDCTL__LIMIT_STATE__INIT;
    fill_limits(&l, &li);
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_LIMITS;
    r.limits = &l;
    return pack_reply(&r, out, len);
}

static int do_set_limit(daemon_t *d, uint64_t seq, const Heapdctl__SetLimitRequest *q, uint8_t **out, size_t *len)
{
    limits_info_t cur;
    limits_get(d, &cur);
    uint64_t soft = q->set_soft ? q->soft : cur.soft_limit, hard = q->set_hard ? q->hard : cur.hard_limit;
    if (limits_set(d, soft, hard) < 0)
        return reply_error(seq, EINVAL, out, len,
                           "the hard limit (%llu bytes) must not be below the soft limit (%llu bytes)",
                           (unsigned long long)hard, (unsigned long long)soft);
    daemon_log(d, "limits set by heapctl: soft %llu, hard %llu bytes (0 = none)", (unsigned long long)soft,
               (unsigned long long)hard);
    return reply_limits(d, seq, out, len);
}

static int do_scavenge(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    uint64_t released = scavenge_all(d);
    limits_info_t li;
    limits_get(d, &li);
    Heapdctl__LimitState l = HEAPDCTL__LIMIT_STATE__INIT;
    fill_limits(&l, &li);
    Heapdctl__ScavengeResult sr = HEAPDCTL__SCAVENGE_RESULT__INIT;
    sr.released = released;
    sr.limits = &l;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_SCAVENGE;
    r.scavenge = &sr;
    return pack_reply(&r, out, len);
}

static int do_flush(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    uint32_t asked = 0;
    for (client_t *c = d->clients, *next; c; c = next) {
        next = c->next;             /* a failed send closes c */
        if (client_post_flush(d, c))
            asked++;
    }
    Heapdctl__FlushResult f = HEAPDCTL__FLUSH_RESULT__INIT;
    f.clients = asked;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_FLUSH;
    r.flush = &f;
    return pack_reply(&r, out, len);
}

/* heapctl roots: every named root, sorted by name, with the size of its object. */
static int do_roots(daemon_t *d, uint64_t seq, uint8_t **out, size_t *len)
{
    roots_entry_t *e = malloc(HD_MAX_ROOTS * sizeof(*e));
    Heapdctl__Root *rows = calloc(HD_MAX_ROOTS, sizeof(*rows));
    Heapdctl__Root **rowp = calloc(HD_MAX_ROOTS, sizeof(*rowp));
    if (!e || !rows || !rowp) {
        free(e);
        free(rows);
        free(rowp);
        return reply_error(seq, ENOMEM, out, len, "out of memory");
    }
    size_t n = roots_list(d, e);
    for (size_t i = 0; i < n; i++) {
        heapdctl__root__init(&rows[i]);
        rows[i].name = e[i].name;
        rows[i].offset = e[i].offset;
        rows[i].size = mheap_live_size(&d->heap, e[i].offset);
        rowp[i] = &rows[i];
    }
    Heapdctl__Roots rr = HEAPDCTL__ROOTS__INIT;
    rr.n_roots = n;
    rr.roots = rowp;
    Heapdctl__ControlReply r = HEAPDCTL__CONTROL_REPLY__INIT;
    r.seq = seq;
    r.body_case = HEAPDCTL__CONTROL_REPLY__BODY_ROOTS;
    r.roots = &rr;
    int rc = pack_reply(&r, out, len);
    free(e);
    free(rows);
    free(rowp);
    return rc;
}

int control_handle(daemon_t *d, const uint8_t *req, size_t len, uint8_t **reply, size_t *rlen)
{
    *reply = NULL;
    *rlen = 0;
    d->ms.control_requests++;
    Heapdctl__ControlRequest *q = len <= CTL_MAX_REQ ? heapdctl__control_request__unpack(NULL, len, req) : NULL;
    if (!q) {
        reply_error(0, EINVAL, reply, rlen, "malformed control request");
        return -1;
    }
    int rc = 0, bad = 0;
    switch (q->body_case) {
    case HEAPDCTL__CONTROL_REQUEST__BODY_STATS:
        rc = do_stats(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS:
        rc = do_clients(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_METRICS:
        rc = do_metrics(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_SET_LIMIT:
        rc = do_set_limit(d, q->seq, q->set_limit, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_GET_LIMIT:
        rc = reply_limits(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_SCAVENGE:
        rc = do_scavenge(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH:
        rc = do_flush(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_ROOTS:
        rc = do_roots(d, q->seq, reply, rlen);
        break;
    case HEAPDCTL__CONTROL_REQUEST__BODY__NOT_SET:
        rc = reply_error(q->seq, EINVAL, reply, rlen, "control request without a body");
        bad = 1;
        break;
    default:        /* a newer heapctl: say so, keep the connection */
        rc = reply_error(q->seq, EOPNOTSUPP, reply, rlen, "unknown control request %d", (int)q->body_case);
        break;
    }
    heapdctl__control_request__free_unpacked(q, NULL);
    return rc < 0 || bad ? -1 : 0;
}

/* ---- the socket ---------------------------------------------------------------------- */

int control_listen(daemon_t *d, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    struct stat st;                     /* identity of the file we create */
    int r = sock_path_prepare(path, SOCK_STREAM, &sa, err, errlen);
    if (r < 0)
        return r;
    control_t *ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return fail(err, errlen, ENOMEM, "out of memory");
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        free(ctl);
        return fail(err, errlen, errno, "socket: %s", strerror(errno));
    }
    mode_t old = umask(0177);           /* born 0600 */
    r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    umask(old);
    if (r < 0) {
        close(fd);
        free(ctl);
        return fail(err, errlen, e, "cannot bind %s: %s", path, strerror(e));
    }
    if (chmod(path, 0600) < 0 || listen(fd, 16) < 0 || stat(path, &st) < 0) {
        e = errno;
        close(fd);
        unlink(path);
        free(ctl);
        return fail(err, errlen, e, "cannot listen on %s: %s", path, strerror(e));
    }
    ctl->d = d;
    ctl->fd = fd;
    ctl->dev = st.st_dev;
    ctl->ino = st.st_ino;
    snprintf(ctl->path, sizeof(ctl->path), "%s", path);
    ctl->tokens = (uint64_t)CTL_BURST * 1000;
    d->ctl = ctl;
    return 0;
}

static void on_conn_closed(uv_handle_t *h) { free(h->data); }

static void conn_close(ctl_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    control_t *ctl = c->ctl;
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctl->nconns--;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);   /* cancels unsent replies */
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    free(req);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    ctl_conn_t *c = req->data;
    free(req);
    conn_close(c);
}

/* Close once the replies queued so far have gone out. */
static void conn_finish(ctl_conn_t *c)
{
    if (c->closing || c->finishing)
        return;
    c->finishing = true;
    uv_read_stop((uv_stream_t *)&c->pipe);
    c->reading = false;
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || (req->data = c, uv_shutdown(req, (uv_stream_t *)&c->pipe, on_shutdown) < 0)) {
        free(req);
        conn_close(c);
        return;
    }
    /* no more reading: the connection ends after the shutdown */
    c->throttled = false;
    c->len = 0;
}

/* Queue a reply (the length, then the bytes); takes reply. */
static void conn_send(ctl_conn_t *c, uint8_t *reply, size_t rlen)
{
    if (c->closing || !reply) {
        free(reply);
        return;
    }
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > CTL_MAX_QUEUED) {
        free(reply);
        daemon_log(c->ctl->d, "control connection not reading its replies: closed");
        conn_close(c);
        return;
    }
    ctl_write_t *w = malloc(sizeof(*w) + 4 + rlen);
    if (!w) {
        free(reply);
        conn_close(c);
        return;
    }
    uint32_t n = (uint32_t)rlen;
    w->data[0] = (uint8_t)n;
    w->data[1] = (uint8_t)(n >> 8);
    w->data[2] = (uint8_t)(n >> 16);
    w->data[3] = (uint8_t)(n >> 24);
    memcpy(w->data + 4, reply, rlen);
    free(reply);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)(4 + rlen));
    if (uv_write(&w->req, (uv_stream_t *)&c->pipe, &b, 1, on_written) < 0) {
        free(w);
        conn_close(c);
    }
}

/* Take the tokens a request costs: 1, plus 1 per 32 connected clients (Stats,
 * Clients and Metrics read every client's slot), at most the burst. false
 * when they are not due yet. */
static bool take_token(control_t *ctl)
{
    uint64_t cost = 1 + ctl->d->seg.hdr->clients / 32;
    if (cost > CTL_BURST)
        cost = CTL_BURST;
    cost *= 1000;
    uint64_t now = uv_now(ctl->d->loop);
    if (now > ctl->last_ms) {
        ctl->tokens += (now - ctl->last_ms) * CTL_RATE;
        if (ctl->tokens > (uint64_t)CTL_BURST * 1000)
            ctl->tokens = (uint64_t)CTL_BURST * 1000;
        ctl->last_ms = now;
    }
    if (ctl->tokens < cost)
        return false;
    ctl->tokens -= cost;
    return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_timer(uv_timer_t *t);

static void conn_throttle(ctl_conn_t *c)
{
    control_t *ctl = c->ctl;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->pipe);
        c->reading = false;
    }
    if (!c->throttled) {
        c->throttled = true;
        ctl->d->ms.control_throttled++;
    }
    if (!uv_is_active((uv_handle_t *)&ctl->timer))
        uv_timer_start(&ctl->timer, on_timer, 1, 0);   /* tokens come at CTL_RATE per second */
}

/* Handle the complete requests in c's buffer, as tokens allow. */
static void conn_process(ctl_conn_t *c)
{
    control_t *ctl = c->ctl;
    if (c->finishing)
        return;
    while (!c->closing && c->len >= 4) {
        uint32_t n = (uint32_t)c->buf[0] | (uint32_t)c->buf[1] << 8 | (uint32_t)c->buf[2] << 16 |
                     (uint32_t)c->buf[3] << 24;
        if (n == 0 || n > CTL_MAX_REQ) {
            uint8_t *rep;
            size_t rlen;
            reply_error(0, EINVAL, &rep, &rlen, "control request of %u bytes: at most %u", n, CTL_MAX_REQ);
            conn_send(c, rep, rlen);
            conn_finish(c);
            return;
        }
        if (c->len < 4 + (size_t)n)
            break;
        if (!take_token(ctl)) {
            conn_throttle(c);
            return;
        }
        uint8_t *rep;
        size_t rlen;
        int bad = control_handle(ctl->d, c->buf + 4, n, &rep, &rlen);
        conn_send(c, rep, rlen);
        if (c->closing)
            return;
        c->len -= 4 + (size_t)n;
        memmove(c->buf, c->buf + 4 + n, c->len);
        if (bad) {
            conn_finish(c);
            return;
        }
    }
    c->throttled = false;
    if (!c->closing && !c->finishing && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) < 0) {
            conn_close(c);
            return;
        }
        c->reading = true;
    }
}

static void on_timer(uv_timer_t *t)
{
    control_t *ctl = t->data;
    for (ctl_conn_t *c = ctl->conns, *next; c; c = next) {
        next = c->next;
        if (c->throttled)
            conn_process(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    ctl_conn_t *c = h->data;
    *buf = uv_buf_init((char *)c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    ctl_conn_t *c = s->data;
    if (nread < 0) {
        conn_close(c);      /* EOF or error; replies to a peer that left are moot */
        return;
    }
    c->len += (size_t)nread;
    conn_process(c);
}

static bool peer_allowed(control_t *ctl, ctl_conn_t *c)
{
    uv_os_fd_t fd;
    struct ucred cr;
    socklen_t crlen = sizeof(cr);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) < 0 || getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0)
        return false;
    if (cr.uid == ctl->d->uid || cr.uid == 0)
        return true;
    daemon_log(ctl->d, "control connection from pid %d uid %u refused: permission denied", (int)cr.pid,
               (unsigned)cr.uid);
    return false;
}

static void on_connection(uv_stream_t *server, int status)
{
    control_t *ctl = server->data;
    if (status < 0)
        return;
    ctl_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->ctl = ctl;
    uv_pipe_init(ctl->d->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = ctl->conns;
    if (ctl->conns)
        ctl->conns->prev = c;
    ctl->conns = c;
    ctl->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        conn_close(c);
        return;
    }
    if (ctl->nconns > CTL_MAX_CONNS) {
        uint8_t *rep;
        size_t rlen;
        reply_error(0, EBUSY, &rep, &rlen, "too many control connections (at most %u)", CTL_MAX_CONNS);
        conn_send(c, rep, rlen);
        conn_finish(c);
        return;
    }
    if (!peer_allowed(ctl, c)) {
        uint8_t *rep;
        size_t rlen;
        reply_error(0, EACCES, &rep, &rlen, "permission denied");
        conn_send(c, rep, rlen);
        conn_finish(c);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
}

int control_adopt(daemon_t *d, int fd, char *err, size_t errlen)
{
    control_t *ctl = calloc(1, sizeof(*ctl));
    if (!ctl)
        return fail(err, errlen, ENOMEM, "out of memory");
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        free(ctl);
        return fail(err, errlen, errno, "control socket fd %d: %s", fd, strerror(errno));
    }
    ctl->d = d;
    ctl->fd = fd;
    ctl->path[0] = 0;                   /* not ours: never unlinked */
    ctl->tokens = (uint64_t)CTL_BURST * 1000;
    d->ctl = ctl;
    return 0;
}

int control_start(daemon_t *d)
{
    control_t *ctl = d->ctl;
    if (!ctl || ctl->fd < 0)
        return 0;
    uv_timer_init(d->loop, &ctl->timer);
    ctl->timer.data = ctl;
    ctl->timer_init = true;
    ctl->last_ms = uv_now(d->loop);
    int r = uv_pipe_init(d->loop, &ctl->server, 0);
    if (r < 0)
        return r;
    ctl->server.data = ctl;
    ctl->serving = true;                /* the handle exists: shutdown closes it */
    if ((r = uv_pipe_open(&ctl->server, ctl->fd)) < 0)
        return r;
    ctl->fd = -1;                       /* libuv owns it now */
    return uv_listen((uv_stream_t *)&ctl->server, 16, on_connection);
}

static void unlink_ours(control_t *ctl)
{
    struct stat st;
    if (ctl->path[0] && lstat(ctl->path, &st) == 0 && st.st_dev == ctl->dev && st.st_ino == ctl->ino)
        unlink(ctl->path);
    ctl->path[0] = 0;
}

void control_shutdown(daemon_t *d)
{
    control_t *ctl = d->ctl;
    if (!ctl)
        return;
    while (ctl->conns)
        conn_close(ctl->conns);
    if (ctl->timer_init) {
        uv_timer_stop(&ctl->timer);
        uv_close((uv_handle_t *)&ctl->timer, NULL);
        ctl->timer_init = false;
    }
    if (ctl->serving) {
        uv_close((uv_handle_t *)&ctl->server, NULL);
        ctl->serving = false;
    }
    if (ctl->fd >= 0) {
        close(ctl->fd);
        ctl->fd = -1;
    }
    unlink_ours(ctl);
}

void control_free(daemon_t *d)
{
    control_t *ctl = d->ctl;
    if (!ctl)
        return;
    if (ctl->fd >= 0)
        close(ctl->fd);
    unlink_ours(ctl);
    free(ctl);
    d->ctl = NULL;
}
