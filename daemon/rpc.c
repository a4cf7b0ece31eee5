/* rpc.c: one ClientMsg in, at most one DaemonMsg out. See rpc.h for the rules. */
#define _GNU_SOURCE
#include "rpc.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "heapd.pb-c.h"
#include "mcentral.h"
#include "rootdir.h"

/* ---- encoding ------------------------------------------------------------------ */

static void pack(rpc_out_t *out, Heapd__DaemonMsg *m)
{
    size_t n = heapd__daemon_msg__get_packed_size(m);
    out->len = n <= out->cap ? heapd__daemon_msg__pack(m, out->buf) : 0;   /* every reply is tiny */
}

static void reply_error(rpc_out_t *out, uint64_t seq, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void rpc_encode_error(rpc_out_t *out, uint64_t seq, int err, const char *msg)
{
    Heapd__Error e = HEAPD__ERROR__INIT;
    e.err = err;
    e.message = (char *)msg;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_ERROR;
    m.error = &e;
    out->nfds = 0;
    pack(out, &m);
}

static void reply_error(rpc_out_t *out, uint64_t seq, int err, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    rpc_encode_error(out, seq, err, msg);
}

static void reply_ack(rpc_out_t *out, uint64_t seq)
{
    Heapd__Ack a = HEAPD__ACK__INIT;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_ACK;
    m.ack = &a;
    pack(out, &m);
}

int rpc_encode_ack(rpc_out_t *out, uint64_t seq)
{
    out->nfds = 0;
    reply_ack(out, seq);
    return out->len ? 0 : -1;
}

static void reply_spans(rpc_out_t *out, uint64_t seq, uint32_t *ids, size_t n)
{
    Heapd__Spans s = HEAPD__SPANS__INIT;
    s.n_span_ids = n;
    s.span_ids = ids;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_SPANS;
    m.spans = &s;
    pack(out, &m);
}

int rpc_encode_flush(rpc_out_t *out)
{
    Heapd__Flush f = HEAPD__FLUSH__INIT;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.body_case = HEAPD__DAEMON_MSG__BODY_FLUSH;
    m.flush = &f;
    out->nfds = 0;
    pack(out, &m);
    return out->len ? 0 : -1;
}

static void bad_requests(daemon_t *d, uint64_t n)
{
    mheap_book_add(&d->heap, &d->seg.hdr->bad_requests, (int64_t)n);
    mheap_publish(&d->heap);
}

/* ---- handlers ------------------------------------------------------------------- */

static enum rpc_verdict on_hello(daemon_t *d, client_t *c, uint64_t seq, const Heapd__Hello *h, rpc_out_t *out)
{
    if (h->version != HD_PROTO_VERSION) {
        reply_error(out, seq, EPROTONOSUPPORT, "client speaks protocol %u, daemon speaks %u", h->version,
                    HD_PROTO_VERSION);
        out->why = "protocol version mismatch";
        return RPC_CLOSE;
    }
    size_t k = 0;   /* keep the name printable: it goes to logs and heapctl */
    for (const char *s = h->name ? h->name : ""; *s && k + 1 < sizeof(c->name); s++)
        c->name[k++] = isprint((unsigned char)*s) ? *s : '?';
    c->name[k] = 0;
    if (c->pid == 0)            /* no SO_PEERCRED (a test record): believe the Hello */
        c->pid = h->pid;
    c->hello_done = true;
    c->reclaim_at_exit = h->reclaim_at_exit;
    if (c->reclaim_at_exit && !c->pool && (c->pool = client_fork_claim(d, c)) == 0) {
        /* a family of its own (mcentral.h): spans nobody else caches, all
         * freed when it has gone (conn.c client_end); or the family of the
         * parent whose ForkDone named this process */
        c->pool = mcentral_pool_new(&d->central);
        if (!c->pool) {
            reply_error(out, seq, ENOMEM, "out of memory for the client's span pool");
            out->why = "out of memory";
            return RPC_CLOSE;
        }
        d->central.pools[c->pool]->members = 1;
    }

    Heapd__Welcome w = HEAPD__WELCOME__INIT;
    w.version = HD_PROTO_VERSION;
    w.client_id = c->id;
    w.map_base = d->seg.base;
    w.heap_size = d->seg.heap_size;
    w.meta_size = d->seg.meta_size;
    if (!c->stat_slot)              /* memstats: where this client adds its counters (mstats.h) */
        c->stat_slot = mstats_slot_assign(d, c->id);
    w.slot = c->stat_slot;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__DAEMON_MSG__BODY_WELCOME;
    m.welcome = &w;
    pack(out, &m);
    out->fds[0] = d->seg.meta_fd;
    out->fds[1] = d->seg.heap_fd;
    out->nfds = 2;
    int sfd = mstats_slot_fd(d, c->stat_slot);     /* its stats slot: its own memfd, passed to it alone */
    if (sfd >= 0)
        out->fds[out->nfds++] = sfd;
    daemon_log(d, "client %u attached (pid %d%s%s)", c->id, (int)c->pid, c->name[0] ? ", " : "", c->name);
    return RPC_OK;
}

static enum rpc_verdict on_refill(daemon_t *d, client_t *c, uint64_t seq, const Heapd__Refill *r, rpc_out_t *out)
{
    if (r->sizeclass < 1 || (r->sizeclass >= HD_FIRST_LARGE_CLASS && r->sizeclass != HD_CHUNK_CLASS) ||
        r->count < 1 || r->count > HD_MAX_BATCH) {
        bad_requests(d, 1);
        reply_error(out, seq, EINVAL, "Refill{sizeclass %u, count %u}: class must be 1..%u or %u (a page chunk), count 1..%u",
                    r->sizeclass, r->count, HD_FIRST_LARGE_CLASS - 1, HD_CHUNK_CLASS, HD_MAX_BATCH);
        return RPC_OK;
    }
    if (r->sizeclass == HD_CHUNK_CLASS && !limits_chunk_fits(d)) {
        /* not an allocation refused: the client allocates one object per
         * AllocLarge instead (client/mcache.c) */
        reply_error(out, seq, EAGAIN, "near the soft limit: no page chunk, allocate large-class objects one by one");
        return RPC_OK;
    }
    uint32_t ids[HD_MAX_BATCH];
    size_t n = 0;
    while (n < r->count) {
        int64_t id = mcentral_cache_span(&d->central, r->sizeclass, c->id, c->pool);
        if (id < 0)
            break;
        spanlist_push(&d->heap, &c->cached, (uint32_t)id, SL_CACHED);
        ids[n++] = (uint32_t)id;
    }
    mheap_book_add(&d->heap, &d->seg.hdr->refills, 1);
    mheap_publish(&d->heap);
    if (n == 0)
        reply_error(out, seq, ENOMEM, "out of memory: no span of size class %u (heap full, or its backing store exhausted)", r->sizeclass);
    else
        reply_spans(out, seq, ids, n);
    return RPC_OK;
}

static enum rpc_verdict on_release(daemon_t *d, client_t *c, uint64_t seq, const Heapd__Release *r,
                                   rpc_out_t *out)
{
    if (r->n_span_ids > HD_MAX_BATCH) {
        bad_requests(d, 1);
        if (seq)
            reply_error(out, seq, EINVAL, "Release of %zu spans: at most %u per request", r->n_span_ids,
                        HD_MAX_BATCH);
        return RPC_OK;
    }
    mheap_t *h = &d->heap;
    size_t refused = 0;
    uint32_t first_bad = 0;
    for (size_t i = 0; i < r->n_span_ids; i++) {
        uint32_t id = r->span_ids[i];
        if (!mheap_entry_ok(h, id) || mheap_state(h, id) != HD_SPAN_CACHED || mheap_span(h, id)->owner != c->id ||
            h->priv[id].list != SL_CACHED) {
            if (refused++ == 0)
                first_bad = id;
            continue;
        }
        spanlist_remove(h, &c->cached, id);
        mcentral_uncache_span(&d->central, id);
    }
    if (refused)
        bad_requests(d, refused);
    if (seq) {
        if (refused)
            reply_error(out, seq, EINVAL, "Release: span %u is not cached by this client (%zu of %zu refused)",
                        first_bad, refused, r->n_span_ids);
        else
            reply_ack(out, seq);
    }
    return RPC_OK;
}

static enum rpc_verdict on_alloc_large(daemon_t *d, client_t *c, uint64_t seq, const Heapd__AllocLarge *a,
                                       rpc_out_t *out)
{
    if (a->pages == 0 || (a->align_pages > 1 && (a->align_pages & (a->align_pages - 1)))) {
        bad_requests(d, 1);
        reply_error(out, seq, EINVAL, "AllocLarge{pages %llu, align_pages %llu}: pages must be >= 1 and "
                    "align_pages 0 or a power of two", (unsigned long long)a->pages,
                    (unsigned long long)a->align_pages);
        return RPC_OK;
    }
    int64_t id = -ENOMEM;
    if (a->pages <= d->seg.npages && a->align_pages <= d->seg.npages)
        id = mcentral_alloc_span(&d->central, a->pages, 0, c->id, a->align_pages, c->pool);
    if (id < 0) {
        reply_error(out, seq, ENOMEM, "no room for %llu pages (align %llu) in a heap of %llu pages",
                    (unsigned long long)a->pages, (unsigned long long)a->align_pages,
                    (unsigned long long)d->seg.npages);
        return RPC_OK;
    }
    uint32_t u = (uint32_t)id;
    reply_spans(out, seq, &u, 1);
    return RPC_OK;
}

static enum rpc_verdict on_free_large(daemon_t *d, client_t *c, uint64_t seq, const Heapd__FreeLarge *f,
                                      rpc_out_t *out)
{
    (void)c;
    if (f->n_span_ids > HD_MAX_BATCH || f->n_gens != f->n_span_ids) {
        bad_requests(d, 1);
        if (seq)
            reply_error(out, seq, EINVAL, "FreeLarge of %zu spans with %zu gens: need one gen per span, "
                        "at most %u", f->n_span_ids, f->n_gens, HD_MAX_BATCH);
        return RPC_OK;
    }
    mheap_t *h = &d->heap;
    size_t refused = 0;
    uint32_t first_bad = 0;
    for (size_t i = 0; i < f->n_span_ids; i++) {
        uint32_t id = f->span_ids[i];
        if (!mheap_entry_ok(h, id) || mheap_state(h, id) != HD_SPAN_LARGE || mheap_span(h, id)->gen != f->gens[i] ||
            mheap_free_span(h, id) < 0) {
            if (refused++ == 0)
                first_bad = id;
        }
    }
    if (refused)
        bad_requests(d, refused);
    if (seq) {
        if (refused)
            reply_error(out, seq, EINVAL, "FreeLarge: span %u is not a large span of that gen (%zu of %zu refused)",
                        first_bad, refused, f->n_span_ids);
        else
            reply_ack(out, seq);
    }
    return RPC_OK;
}

/* ---- limits (memlimit.h) ---------------------------------------------------------- */

static enum rpc_verdict on_set_quota(daemon_t *d, client_t *c, uint64_t seq, const Heapd__SetQuota *q,
                                     rpc_out_t *out)
{
    if (limits_set_quota(d, c->id, q->bytes) < 0)
        reply_error(out, seq, ENOMEM, "no room for a quota account");
    else
        reply_ack(out, seq);
    return RPC_OK;
}

static enum rpc_verdict on_set_limit(daemon_t *d, client_t *c, uint64_t seq, const Heapd__SetLimit *l,
                                     rpc_out_t *out)
{
    if (!client_is_operator(d, c))     /* clients let in by --allow-uid/--allow-gid: not theirs */
        reply_error(out, seq, EPERM, "SetLimit: only the daemon's user or root may change the limits");
    else if (limits_set(d, l->soft, l->hard) < 0)
        reply_error(out, seq, EINVAL, "SetLimit{soft %llu, hard %llu}: the hard limit is below the soft one",
                    (unsigned long long)l->soft, (unsigned long long)l->hard);
    else
        reply_ack(out, seq);
    return RPC_OK;
}

/* Scavenge joins the scavenger's forced pass (scav_force_request): sliced,
 * one at a time, shared by every request waiting for it; the Ack goes when
 * the pass that started after this request is done. Without a loop (unit
 * tests) the pass runs here. */
static enum rpc_verdict on_scavenge(daemon_t *d, client_t *c, uint64_t seq, rpc_out_t *out)
{
    if (c->fd >= 0 && scav_force_request(d, c, seq))
        return RPC_OK;          /* no reply yet: the client is not read until it has it */
    scavenge_all(d);
    reply_ack(out, seq);
    return RPC_OK;
}

/* ---- named roots (rootdir.h) ---------------------------------------------------------- */

static enum rpc_verdict on_root_update(daemon_t *d, client_t *c, uint64_t seq, const Heapd__RootUpdate *u,
                                       rpc_out_t *out)
{
    (void)c;
    char err[200];
    int r = roots_update(d, u->name, u->offset, u->cas, u->expected, err, sizeof(err));
    if (r < 0)
        rpc_encode_error(out, seq, -r, err);
    else
        reply_ack(out, seq);
    return RPC_OK;
}

static enum rpc_verdict on_fork(daemon_t *d, client_t *c, uint64_t seq, const Heapd__ForkDone *f, rpc_out_t *out)
{
    int r = f ? client_fork_done(d, c, (pid_t)f->pid) : client_fork_begin(d, c);
    if (r == 0)
        reply_ack(out, seq);
    else if (r == -ENOMEM)
        reply_error(out, seq, ENOMEM, "ForkDone{pid %d}: out of memory (the family is kept)", (int)f->pid);
    else if (!c->pool)
        reply_error(out, seq, EINVAL, "%s: this client is in no family (Hello without reclaim_at_exit)",
                    f ? "ForkDone" : "ForkBegin");
    else if (f)
        reply_error(out, seq, EINVAL, "ForkDone{pid %d}: no ForkBegin before it, or not a child of pid %d",
                    (int)f->pid, (int)c->pid);
    return RPC_OK;
}

/* ---- dispatch ------------------------------------------------------------------- */

enum rpc_verdict rpc_handle(daemon_t *d, client_t *c, const uint8_t *pkt, size_t len, rpc_out_t *out)
{
    out->len = 0;
    out->nfds = 0;
    out->why = NULL;
    c->requests++;
    if (len == 0 || len > HD_MAX_MSG) {
        out->why = len ? "oversized packet" : "empty packet";
        return RPC_DISCONNECT;
    }
    uint64_t t0 = mstats_now_ns();  /* handling time, for memstats */
    /* protobuf-c with the system allocator: this is the daemon, not a client's malloc. */
    Heapd__ClientMsg *m = heapd__client_msg__unpack(NULL, len, pkt);
    if (!m) {
        out->why = "undecodable packet";
        return RPC_DISCONNECT;
    }
    enum rpc_verdict v = RPC_OK;
    if (m->body_case == HEAPD__CLIENT_MSG__BODY_HELLO) {
        if (c->hello_done) {
            out->why = "second Hello";
            v = RPC_DISCONNECT;
        } else {
            v = on_hello(d, c, m->seq, m->hello, out);
        }
    } else if (m->body_case == HEAPD__CLIENT_MSG__BODY__NOT_SET) {
        out->why = "message without a body";
        v = RPC_DISCONNECT;
    } else if (!c->hello_done) {
        reply_error(out, m->seq, EPROTO, "the first message must be Hello");
        out->why = "first message was not Hello";
        v = RPC_CLOSE;
    } else {
        switch (m->body_case) {
        case HEAPD__CLIENT_MSG__BODY_REFILL:
            v = on_refill(d, c, m->seq, m->refill, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_RELEASE:
            v = on_release(d, c, m->seq, m->release, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE:
            v = on_alloc_large(d, c, m->seq, m->alloc_large, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_FREE_LARGE:
            v = on_free_large(d, c, m->seq, m->free_large, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_SET_QUOTA:
            v = on_set_quota(d, c, m->seq, m->set_quota, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_SET_LIMIT:
            v = on_set_limit(d, c, m->seq, m->set_limit, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_SCAVENGE:
            v = on_scavenge(d, c, m->seq, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_ROOT_UPDATE:
            v = on_root_update(d, c, m->seq, m->root_update, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_FORK_BEGIN:
            v = on_fork(d, c, m->seq, NULL, out);
            break;
        case HEAPD__CLIENT_MSG__BODY_FORK_DONE:
            v = on_fork(d, c, m->seq, m->fork_done, out);
            break;
        default:
            out->why = "unknown message";
            v = RPC_DISCONNECT;
            break;
        }
    }
    mstats_rpc(d, (unsigned)m->body_case, mstats_now_ns() - t0);
    heapd__client_msg__free_unpacked(m, NULL);
    if (v == RPC_DISCONNECT)
        out->len = out->nfds = 0;
    return v;
}
