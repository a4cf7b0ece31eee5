/* Unit tests of daemon/rpc.c (and client records): the protocol rules of
 * docs/protocol.md through rpc_handle, with client records that have no
 * socket. A real segment backs the daemon; packets are packed with protobuf-c
 * as a client would, and replies unpacked. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <linux/sockios.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"
#include "live.h"
#include "mcentral.h"
#include "rpc.h"
#include "span.h"
#include "daemon_fixture.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

static void setup(void) { D = fx_daemon_new(TEST_SIZE, 0x380000000000ull + (uint64_t)(nbase++) * (4ull << 30)); }

static void check_all(void) { fx_check(D); }

static void teardown(void)
{
    fx_daemon_free(D);
    D = NULL;
}

/* Pack m, hand it to rpc_handle for c. */
static enum rpc_verdict send_msg(client_t *c, Heapd__ClientMsg *m) { return fx_send(D, c, m, &OUT); }

/* The reply in OUT, unpacked (NULL if there is none). Free with reply_free. */
static Heapd__DaemonMsg *reply(void)
{
    if (!OUT.len)
        return NULL;
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT(r != NULL);
    return r;
}
static void reply_free(Heapd__DaemonMsg *r)
{
    if (r)
        heapd__daemon_msg__free_unpacked(r, NULL);
}

/* Expect an Error reply with errno e and seq; returns it (or NULL). */
static void expect_error(uint64_t seq, int e)
{
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_EQUAL(r->seq, seq);
    CU_ASSERT_EQUAL(r->body_case, HEAPD__DAEMON_MSG__BODY_ERROR);
    if (r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR)
        CU_ASSERT_EQUAL(r->error->err, e);
    reply_free(r);
}

static void expect_ack(uint64_t seq)
{
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_EQUAL(r->seq, seq);
    CU_ASSERT_EQUAL(r->body_case, HEAPD__DAEMON_MSG__BODY_ACK);
    reply_free(r);
}

static enum rpc_verdict hello(client_t *c, uint32_t version)
{
    Heapd__Hello h = HEAPD__HELLO__INIT;
    h.version = version;
    h.pid = 4242;
    h.name = "unit\ttest";
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &h;
    return send_msg(c, &m);
}

/* A client that said Hello. */
static client_t *attached(void)
{
    client_t *c = client_new(D, -1, 0, getuid());
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_FATAL(hello(c, HD_PROTO_VERSION) == RPC_OK);
    return c;
}

static enum rpc_verdict refill(client_t *c, uint64_t seq, uint32_t cls, uint32_t count)
{
    Heapd__Refill r = HEAPD__REFILL__INIT;
    r.sizeclass = cls;
    r.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &r;
    return send_msg(c, &m);
}

static enum rpc_verdict release(client_t *c, uint64_t seq, uint32_t *ids, size_t n)
{
    Heapd__Release r = HEAPD__RELEASE__INIT;
    r.n_span_ids = n;
    r.span_ids = ids;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
    m.release = &r;
    return send_msg(c, &m);
}

static enum rpc_verdict alloc_large(client_t *c, uint64_t seq, uint64_t pages, uint64_t align)
{
    Heapd__AllocLarge a = HEAPD__ALLOC_LARGE__INIT;
    a.pages = pages;
    a.align_pages = align;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
    m.alloc_large = &a;
    return send_msg(c, &m);
}

static enum rpc_verdict free_large(client_t *c, uint64_t seq, uint32_t *ids, size_t n, uint32_t *gens, size_t ng)
{
    Heapd__FreeLarge f = HEAPD__FREE_LARGE__INIT;
    f.n_span_ids = n;
    f.span_ids = ids;
    f.n_gens = ng;
    f.gens = gens;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
    m.free_large = &f;
    return send_msg(c, &m);
}

/* The span ids of a Spans reply (at most max); returns how many, 0 if not Spans. */
static size_t spans_reply(uint64_t seq, uint32_t *ids, size_t max)
{
    Heapd__DaemonMsg *r = reply();
    if (!r)
        return 0;
    size_t n = 0;
    CU_ASSERT_EQUAL(r->seq, seq);
    CU_ASSERT_EQUAL(r->body_case, HEAPD__DAEMON_MSG__BODY_SPANS);
    if (r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS)
        for (; n < r->spans->n_span_ids && n < max; n++)
            ids[n] = r->spans->span_ids[n];
    reply_free(r);
    return n;
}

/* ---- handshake ------------------------------------------------------------------------ */

static void test_hello(void)
{
    setup();
    client_t *c = client_new(D, -1, 0, getuid());
    CU_ASSERT_EQUAL(c->id, 1);
    CU_ASSERT_EQUAL(D->seg.hdr->clients, 1);
    CU_ASSERT_EQUAL(hello(c, HD_PROTO_VERSION), RPC_OK);
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r && r->body_case == HEAPD__DAEMON_MSG__BODY_WELCOME);
    CU_ASSERT_EQUAL(r->seq, 1);
    CU_ASSERT_EQUAL(r->welcome->version, HD_PROTO_VERSION);
    CU_ASSERT_EQUAL(r->welcome->client_id, c->id);
    CU_ASSERT_EQUAL(r->welcome->map_base, D->seg.base);
    CU_ASSERT_EQUAL(r->welcome->heap_size, D->seg.heap_size);
    CU_ASSERT_EQUAL(r->welcome->meta_size, D->seg.meta_size);
    reply_free(r);
    CU_ASSERT_EQUAL(OUT.nfds, 3);
    CU_ASSERT_EQUAL(OUT.fds[0], D->seg.meta_fd);
    CU_ASSERT_EQUAL(OUT.fds[1], D->seg.heap_fd);
    CU_ASSERT_EQUAL(OUT.fds[2], mstats_slot_fd(D, c->stat_slot));  /* its stats slot, for it alone */
    CU_ASSERT(OUT.fds[2] >= 0);
    CU_ASSERT_EQUAL(c->pid, 4242);
    CU_ASSERT_STRING_EQUAL(c->name, "unit?test");              /* printable only */
    /* a second Hello ends the connection, without a reply */
    CU_ASSERT_EQUAL(hello(c, HD_PROTO_VERSION), RPC_DISCONNECT);
    CU_ASSERT_EQUAL(OUT.len, 0);
    CU_ASSERT_EQUAL(OUT.nfds, 0);
    client_close(D, c, "test");
    CU_ASSERT_EQUAL(D->seg.hdr->clients, 0);
    /* ids are never reused */
    c = client_new(D, -1, 0, getuid());
    CU_ASSERT_EQUAL(c->id, 2);
    CU_ASSERT_EQUAL(D->seg.hdr->clients_total, 2);
    teardown();
}

/* After 2^32 ids the counter wraps: a new record never gets 0 (no owner) or
 * the id of a record still alive (its spans and stats slot carry that id). */
static void test_client_id_wrap(void)
{
    setup();
    D->next_client_id = 1;
    client_t *one = client_new(D, -1, 0, getuid()), *two = client_new(D, -1, 0, getuid());
    CU_ASSERT_FATAL(one && two && one->id == 1 && two->id == 2);
    D->next_client_id = UINT32_MAX;
    client_t *last = client_new(D, -1, 0, getuid());
    CU_ASSERT_FATAL(last != NULL);
    CU_ASSERT_EQUAL(last->id, UINT32_MAX);
    client_t *next = client_new(D, -1, 0, getuid());   /* 0, 1 and 2 are taken or invalid */
    CU_ASSERT_FATAL(next != NULL);
    CU_ASSERT_EQUAL(next->id, 3);
    client_close(D, one, "test");                       /* id 1 is free again, but the counter moved on */
    client_t *after = client_new(D, -1, 0, getuid());
    CU_ASSERT_FATAL(after != NULL);
    CU_ASSERT_EQUAL(after->id, 4);
    for (client_t *c = D->clients; c; c = c->next)
        for (client_t *o = c->next; o; o = o->next)
            CU_ASSERT_NOT_EQUAL(c->id, o->id);
    teardown();
}

/* SetLimit from a client of another uid (let in by --allow-uid/--allow-gid):
 * EPERM, the limits unchanged. */
static void test_set_limit_other_uid(void)
{
    setup();
    client_t *c = client_new(D, -1, 0, D->uid == 4321 ? 4322 : 4321);  /* neither ours nor root */
    CU_ASSERT_FATAL(c != NULL);
    CU_ASSERT_FATAL(hello(c, HD_PROTO_VERSION) == RPC_OK);
    Heapd__SetLimit l = HEAPD__SET_LIMIT__INIT;
    l.soft = 1 << 20;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 9;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_LIMIT;
    m.set_limit = &l;
    CU_ASSERT_EQUAL(send_msg(c, &m), RPC_OK);
    expect_error(9, EPERM);
    CU_ASSERT_EQUAL(D->lim.soft_limit, 0);
    teardown();
}

static void test_wrong_version(void)
{
    setup();
    client_t *c = client_new(D, -1, 0, getuid());
    CU_ASSERT_EQUAL(hello(c, 999), RPC_CLOSE);
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r && r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR);
    CU_ASSERT_EQUAL(r->error->err, EPROTONOSUPPORT);
    char want[64];
    snprintf(want, sizeof(want), "client speaks protocol 999, daemon speaks %u", HD_PROTO_VERSION);
    CU_ASSERT_STRING_EQUAL(r->error->message, want);
    reply_free(r);
    CU_ASSERT_EQUAL(OUT.nfds, 0);                               /* no segment for it */
    CU_ASSERT(!c->hello_done);
    teardown();
}

static void test_request_before_hello(void)
{
    setup();
    client_t *c = client_new(D, -1, 0, getuid());
    CU_ASSERT_EQUAL(refill(c, 5, 3, 1), RPC_CLOSE);
    expect_error(5, EPROTO);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_inuse, 0);
    teardown();
}

/* ---- Refill -------------------------------------------------------------------------- */

static void test_refill_validation(void)
{
    setup();
    client_t *c = attached();
    struct { uint32_t cls, count; } bad[] = {{0, 1}, {HD_FIRST_LARGE_CLASS, 1}, {HD_NUM_CLASSES - 1, 1},
                                         {HD_NUM_SPAN_CLASSES, 1}, {999, 1}, {5, 0}, {5, 65}, {5, 1u << 31}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(refill(c, 10 + i, bad[i].cls, bad[i].count), RPC_OK);
        expect_error(10 + i, EINVAL);
    }
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, sizeof(bad) / sizeof(bad[0]));
    CU_ASSERT_EQUAL(D->seg.hdr->spans_inuse, 0);
    teardown();
}

/* Page chunks (class 88): CACHED like small spans, one state byte per page.
 * Released, an empty chunk's pages go back at once; one with a live object
 * stays CENTRAL and is never handed to another Refill (its new owner could
 * not know where the object is) until a free empties it and the background
 * sweep gives its pages back. */
static void test_refill_chunk(void)
{
    setup();
    client_t *c = attached();
    CU_ASSERT_EQUAL(refill(c, 7, HD_CHUNK_CLASS, 2), RPC_OK);
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS && r->spans->n_span_ids == 2);
    uint32_t ids[2] = {r->spans->span_ids[0], r->spans->span_ids[1]};
    reply_free(r);
    for (int i = 0; i < 2; i++) {
        hd_span_t *sp = &D->seg.view.spans[ids[i]];
        CU_ASSERT_EQUAL(hd_span_state(sp), HD_SPAN_CACHED);
        CU_ASSERT_EQUAL(sp->sizeclass, HD_CHUNK_CLASS);
        CU_ASSERT_EQUAL(sp->nelems, HD_CHUNK_PAGES);
        CU_ASSERT_EQUAL(sp->npages, HD_CHUNK_PAGES);
        CU_ASSERT_EQUAL(sp->elemsize, HD_PAGE_SIZE);
    }
    /* a 200 KB object at page 3 of the first; the second stays empty */
    unsigned cls = hd_large_to_class(200000);
    hd_ostate_t *st = hd_states_of(&D->seg.view, ids[0], HD_CHUNK_CLASS);
    hd_chunk_alloc(st, 3, cls);
    void *obj = (void *)(hd_page_addr(&D->seg.view, ids[0]) + 3 * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(hd_live_size(&D->seg.view, obj), hd_cls_size(cls));
    CU_ASSERT_EQUAL(hd_live_size(&D->seg.view, (char *)obj + HD_PAGE_SIZE), 0);   /* inside it */
    uint64_t pages = D->seg.hdr->pages_inuse;
    Heapd__Release rel = HEAPD__RELEASE__INIT;
    rel.n_span_ids = 2;
    rel.span_ids = ids;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
    m.release = &rel;
    CU_ASSERT_EQUAL(send_msg(c, &m), RPC_OK);
    CU_ASSERT_EQUAL(D->seg.hdr->pages_inuse, pages - HD_CHUNK_PAGES);    /* the empty one went back */
    CU_ASSERT_EQUAL(hd_span_state(&D->seg.view.spans[ids[0]]), HD_SPAN_CENTRAL);
    /* a new Refill gets a new chunk, never the one with the live object */
    CU_ASSERT_EQUAL(refill(c, 8, HD_CHUNK_CLASS, 1), RPC_OK);
    uint32_t again[1];
    CU_ASSERT_EQUAL(spans_reply(8, again, 1), 1);
    CU_ASSERT_NOT_EQUAL(again[0], ids[0]);
    /* anyone frees the live one (FREED, with its class); the background
     * sweep then gives the chunk's pages back */
    uint32_t id;
    unsigned got;
    CU_ASSERT_EQUAL(hd_free_ex(&D->seg.view, obj, &id, &got), HD_FREE_OK);
    CU_ASSERT_EQUAL(got, cls);
    CU_ASSERT_EQUAL(hd_free_ex(&D->seg.view, obj, &id, &got), HD_FREE_DOUBLE);
    mcentral_bg_sweep(&D->central, 1000);
    CU_ASSERT_EQUAL(hd_span_state(&D->seg.view.spans[ids[0]]), HD_SPAN_FREE);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_inuse, 1);                          /* the new one */
    char err[256] = "";
    CU_ASSERT(mheap_check(&D->heap, err, sizeof(err)) && mcentral_check(&D->central, err, sizeof(err)));
    teardown();
}

static void test_refill(void)
{
    setup();
    client_t *c = attached();
    CU_ASSERT_EQUAL(refill(c, 7, 5, 4), RPC_OK);
    uint32_t ids[HD_MAX_BATCH];
    size_t n = spans_reply(7, ids, HD_MAX_BATCH);
    CU_ASSERT_EQUAL(n, 4);
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(mheap_state(&D->heap, ids[i]), HD_SPAN_CACHED);
        CU_ASSERT_EQUAL(mheap_span(&D->heap, ids[i])->owner, c->id);
        CU_ASSERT_EQUAL(mheap_span(&D->heap, ids[i])->sizeclass, 5);
        for (size_t j = 0; j < i; j++)
            CU_ASSERT_NOT_EQUAL(ids[i], ids[j]);
    }
    CU_ASSERT_EQUAL(c->cached.n, 4);
    CU_ASSERT_EQUAL(D->seg.hdr->refills, 1);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_cached, 4);
    /* a full batch of a big class fits, with exactly 64 spans */
    CU_ASSERT_EQUAL(refill(c, 8, 67, HD_MAX_BATCH), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(8, ids, HD_MAX_BATCH), HD_MAX_BATCH);
    check_all();
    teardown();
}

static void test_refill_enomem(void)
{
    setup();
    client_t *c = attached();
    /* 64 MiB = 8192 pages = 2048 class-67 spans (4 pages): 32 batches of 64 */
    uint32_t ids[HD_MAX_BATCH];
    for (int i = 0; i < 32; i++) {
        CU_ASSERT_EQUAL(refill(c, 100 + i, 67, HD_MAX_BATCH), RPC_OK);
        CU_ASSERT_EQUAL(spans_reply(100 + i, ids, HD_MAX_BATCH), HD_MAX_BATCH);
    }
    CU_ASSERT_EQUAL(refill(c, 200, 67, 1), RPC_OK);
    expect_error(200, ENOMEM);
    /* partial batches: release 3 spans, ask for 10, get 3 */
    CU_ASSERT_EQUAL(release(c, 201, ids, 3), RPC_OK);
    expect_ack(201);
    CU_ASSERT_EQUAL(refill(c, 202, 67, 10), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(202, ids, HD_MAX_BATCH), 3);
    check_all();
    teardown();
}

/* ---- Release ------------------------------------------------------------------------- */

static void test_release(void)
{
    setup();
    client_t *a = attached(), *b = attached();
    uint32_t ia[4], ib[4];
    CU_ASSERT_EQUAL(refill(a, 1, 10, 4), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(1, ia, 4), 4);
    CU_ASSERT_EQUAL(refill(b, 1, 10, 4), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(1, ib, 4), 4);

    /* b releases a's span: refused, counted, nothing changes */
    uint64_t bad0 = D->seg.hdr->bad_requests;
    CU_ASSERT_EQUAL(release(b, 9, &ia[0], 1), RPC_OK);
    expect_error(9, EINVAL);
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, bad0 + 1);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, ia[0]), HD_SPAN_CACHED);
    CU_ASSERT_EQUAL(mheap_span(&D->heap, ia[0])->owner, a->id);
    /* ids out of range, free pages, the interior page of a span */
    uint32_t big;
    CU_ASSERT_EQUAL(refill(a, 2, 67, 1), RPC_OK);               /* 4-page span */
    CU_ASSERT_EQUAL(spans_reply(2, &big, 1), 1);
    uint32_t junk[] = {UINT32_MAX, (uint32_t)D->seg.npages, big + 1, (uint32_t)D->seg.npages - 1};
    CU_ASSERT_EQUAL(release(a, 10, junk, 4), RPC_OK);
    expect_error(10, EINVAL);
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, bad0 + 5);
    /* a mix: valid ones are released, the rest counted */
    hd_obj_alloc(hd_states_of(&D->seg.view, ia[1], mheap_span(&D->heap, ia[1])->sizeclass), 0);   /* one live object keeps ia[1] */
    uint32_t mix[] = {ia[0], ib[0], ia[1], ia[0]};              /* ia[0] twice: the second is refused */
    CU_ASSERT_EQUAL(release(a, 11, mix, 4), RPC_OK);
    expect_error(11, EINVAL);
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, bad0 + 7);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, ia[0]), HD_SPAN_FREE);     /* empty: freed */
    CU_ASSERT_EQUAL(mheap_state(&D->heap, ia[1]), HD_SPAN_CENTRAL);  /* one live object */
    CU_ASSERT_EQUAL(mheap_state(&D->heap, ib[0]), HD_SPAN_CACHED);
    CU_ASSERT_EQUAL(a->cached.n, 3);
    /* seq 0: no reply either way */
    CU_ASSERT_EQUAL(release(a, 0, &ia[2], 1), RPC_OK);
    CU_ASSERT_EQUAL(OUT.len, 0);
    CU_ASSERT_EQUAL(release(a, 0, &ib[1], 1), RPC_OK);
    CU_ASSERT_EQUAL(OUT.len, 0);
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, bad0 + 8);
    CU_ASSERT_EQUAL(release(a, 12, &ia[3], 1), RPC_OK);
    expect_ack(12);
    CU_ASSERT_EQUAL(a->cached.n, 1);
    /* more than HD_MAX_BATCH ids: the whole request is refused */
    uint32_t many[HD_MAX_BATCH + 1];
    for (unsigned i = 0; i <= HD_MAX_BATCH; i++)
        many[i] = ib[0];
    CU_ASSERT_EQUAL(release(b, 13, many, HD_MAX_BATCH + 1), RPC_OK);
    expect_error(13, EINVAL);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, ib[0]), HD_SPAN_CACHED);
    check_all();
    teardown();
}

/* A client that goes away: its cached spans come back, its large spans stay. */
static void test_disconnect_reclaims(void)
{
    setup();
    client_t *a = attached();
    uint32_t ids[8], big;
    CU_ASSERT_EQUAL(refill(a, 1, 3, 8), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(1, ids, 8), 8);
    hd_obj_alloc(hd_states_of(&D->seg.view, ids[2], 3), 7);    /* allocated, never freed */
    CU_ASSERT_EQUAL(alloc_large(a, 2, 10, 0), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(2, &big, 1), 1);
    client_close(D, a, "test");
    CU_ASSERT_EQUAL(D->seg.hdr->spans_cached, 0);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_central, 1);
    CU_ASSERT_EQUAL(D->seg.hdr->objects_central, 1);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, big), HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(D->seg.hdr->clients, 0);
    /* another client can free the dead one's objects */
    client_t *b = attached();
    uint32_t got, gen = mheap_span(&D->heap, big)->gen;
    CU_ASSERT_EQUAL(hd_free(&D->seg.view, (char *)hd_page_addr(&D->seg.view, ids[2]) + 7 * 24, &got), HD_FREE_OK);
    mcentral_bg_sweep(&D->central, 100);
    CU_ASSERT_EQUAL(free_large(b, 3, &big, 1, &gen, 1), RPC_OK);
    expect_ack(3);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_inuse, 0);
    check_all();
    teardown();
}

/* A client that dies with tiny blocks open: the daemon closes them. */
static void test_disconnect_closes_tiny(void)
{
    setup();
    client_t *a = attached();
    uint32_t id;
    CU_ASSERT_EQUAL(refill(a, 1, HD_TINY_SIZE_CLASS, 1), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(1, &id, 1), 1);
    hd_ostate_t *sl = hd_states_of(&D->seg.view, id, HD_TINY_SIZE_CLASS);
    hd_tiny_t *t = hd_tiny_of(&D->seg.view, id);
    hd_obj_alloc(sl, 3);                                        /* open, nothing live in it */
    t->block[3] = HD_TINY_OPEN | 1u << (16 + 4);
    hd_obj_alloc(sl, 5);                                        /* open, a live 8-byte object at 0 */
    t->block[5] = HD_TINY_OPEN | 1u << 0 | 1u << (16 + 7);
    hd_obj_alloc(sl, 6);                                        /* closed, live object at 2 */
    t->block[6] = 1u << 2;
    client_close(D, a, "killed");
    CU_ASSERT_EQUAL(t->block[3], 0);
    CU_ASSERT_EQUAL(t->block[5], 1u << 0 | 1u << (16 + 7));
    CU_ASSERT_EQUAL(t->block[6], 1u << 2);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, id), HD_SPAN_CENTRAL);
    CU_ASSERT_EQUAL(D->seg.hdr->objects_central, 2);            /* blocks 5 and 6 */
    uint32_t got;
    char *blk = (char *)hd_page_addr(&D->seg.view, id);
    CU_ASSERT_EQUAL(hd_free(&D->seg.view, blk + 5 * 16, &got), HD_FREE_OK);
    CU_ASSERT_EQUAL(hd_free(&D->seg.view, blk + 6 * 16 + 2, &got), HD_FREE_OK);
    mcentral_bg_sweep(&D->central, 100);
    CU_ASSERT_EQUAL(D->seg.hdr->spans_inuse, 0);
    teardown();
}

/* ---- large spans ------------------------------------------------------------------- */

static void test_alloc_large(void)
{
    setup();
    client_t *c = attached();
    CU_ASSERT_EQUAL(alloc_large(c, 1, 0, 0), RPC_OK);
    expect_error(1, EINVAL);
    CU_ASSERT_EQUAL(alloc_large(c, 2, 4, 3), RPC_OK);
    expect_error(2, EINVAL);
    CU_ASSERT_EQUAL(alloc_large(c, 3, D->seg.npages + 1, 0), RPC_OK);
    expect_error(3, ENOMEM);
    CU_ASSERT_EQUAL(alloc_large(c, 4, UINT64_MAX, 0), RPC_OK);
    expect_error(4, ENOMEM);
    CU_ASSERT_EQUAL(alloc_large(c, 5, 1, 1ull << 62), RPC_OK);
    expect_error(5, ENOMEM);
    uint32_t id;
    CU_ASSERT_EQUAL(alloc_large(c, 6, 5, 16), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(6, &id, 1), 1);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, id), HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(mheap_span(&D->heap, id)->owner, c->id);
    CU_ASSERT_EQUAL(mheap_span(&D->heap, id)->npages, 5);
    CU_ASSERT_EQUAL(hd_page_addr(&D->seg.view, id) % (16 * HD_PAGE_SIZE), 0);
    CU_ASSERT_EQUAL(alloc_large(c, 7, D->seg.npages, 1), RPC_OK);    /* the whole heap: no room left */
    expect_error(7, ENOMEM);
    check_all();
    teardown();
}

static void test_free_large(void)
{
    setup();
    client_t *a = attached(), *b = attached();
    uint32_t id, id2;
    CU_ASSERT_EQUAL(alloc_large(a, 1, 8, 0), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(1, &id, 1), 1);
    uint32_t gen = mheap_span(&D->heap, id)->gen, wrong = gen + 1;
    uint64_t bad0 = D->seg.hdr->bad_requests;
    CU_ASSERT_EQUAL(free_large(b, 2, &id, 1, &wrong, 1), RPC_OK);      /* stale gen */
    expect_error(2, EINVAL);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, id), HD_SPAN_LARGE);
    CU_ASSERT_EQUAL(D->seg.hdr->bad_requests, bad0 + 1);
    CU_ASSERT_EQUAL(free_large(b, 3, &id, 1, NULL, 0), RPC_OK);        /* gens missing */
    expect_error(3, EINVAL);
    uint32_t small;
    CU_ASSERT_EQUAL(refill(a, 4, 3, 1), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(4, &small, 1), 1);
    uint32_t sgen = mheap_span(&D->heap, small)->gen;
    CU_ASSERT_EQUAL(free_large(a, 5, &small, 1, &sgen, 1), RPC_OK);    /* not a large span */
    expect_error(5, EINVAL);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, small), HD_SPAN_CACHED);
    /* any client may free it, with the right gen; seq 0: no reply */
    CU_ASSERT_EQUAL(free_large(b, 0, &id, 1, &gen, 1), RPC_OK);
    CU_ASSERT_EQUAL(OUT.len, 0);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, id), HD_SPAN_FREE);
    /* the pages are reused; the old (id, gen) no longer frees anything */
    CU_ASSERT_EQUAL(alloc_large(a, 6, 8, 0), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(6, &id2, 1), 1);
    CU_ASSERT_EQUAL(id2, id);
    CU_ASSERT_EQUAL(free_large(b, 7, &id, 1, &gen, 1), RPC_OK);
    expect_error(7, EINVAL);
    CU_ASSERT_EQUAL(mheap_state(&D->heap, id2), HD_SPAN_LARGE);
    gen = mheap_span(&D->heap, id2)->gen;
    CU_ASSERT_EQUAL(free_large(a, 8, &id2, 1, &gen, 1), RPC_OK);
    expect_ack(8);
    check_all();
    teardown();
}

/* ---- malformed input ------------------------------------------------------------------- */

static void test_garbage(void)
{
    setup();
    client_t *c = attached();
    static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CU_ASSERT_EQUAL(rpc_handle(D, c, junk, sizeof(junk), &OUT), RPC_DISCONNECT);
    CU_ASSERT_EQUAL(OUT.len, 0);
    CU_ASSERT(OUT.why != NULL);
    CU_ASSERT_EQUAL(rpc_handle(D, c, junk, 0, &OUT), RPC_DISCONNECT);
    CU_ASSERT_EQUAL(rpc_handle(D, c, junk, HD_MAX_MSG + 1, &OUT), RPC_DISCONNECT);
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;                    /* no body */
    m.seq = 3;
    CU_ASSERT_EQUAL(send_msg(c, &m), RPC_DISCONNECT);
    /* a field number the protocol does not have: no body either */
    static const uint8_t unknown[] = {0x08, 0x01, 0x4a, 0x00};        /* seq=1, field 9 (bytes, empty) */
    CU_ASSERT_EQUAL(rpc_handle(D, c, unknown, sizeof(unknown), &OUT), RPC_DISCONNECT);
    /* a Refill whose submessage is truncated */
    static const uint8_t trunc[] = {0x08, 0x01, 0x1a, 0x10, 0x08, 0x05};
    CU_ASSERT_EQUAL(rpc_handle(D, c, trunc, sizeof(trunc), &OUT), RPC_DISCONNECT);
    teardown();
}

/* Random bytes and mutated valid packets: whatever happens, the daemon stays
 * consistent and other clients keep working. */
static void test_fuzz(void)
{
    setup();
    uint64_t seed = test_seed(0x5eed), st = seed;
    client_t *good = attached();
    uint8_t pkt[256];
    unsigned disconnects = 0;
    client_t *c = attached();
    for (int i = 0; i < 20000; i++) {
        size_t n;
        if (i % 2) {                          /* a valid message of some kind, mutated */
            Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
            Heapd__Refill r = HEAPD__REFILL__INIT;
            Heapd__Release rl = HEAPD__RELEASE__INIT;
            Heapd__AllocLarge al = HEAPD__ALLOC_LARGE__INIT;
            Heapd__FreeLarge fl = HEAPD__FREE_LARGE__INIT;
            uint32_t ids[4], gens[4];
            for (int k = 0; k < 4; k++) {
                ids[k] = (uint32_t)(test_rand(&st) % 64);
                gens[k] = (uint32_t)(test_rand(&st) % 3);
            }
            m.seq = test_rand(&st) % 3;
            switch (test_rand(&st) % 4) {
            case 0:
                r.sizeclass = (uint32_t)(test_rand(&st) % 70);
                r.count = (uint32_t)(test_rand(&st) % 4);
                m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
                m.refill = &r;
                break;
            case 1:
                rl.n_span_ids = test_rand(&st) % 5;
                rl.span_ids = ids;
                m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
                m.release = &rl;
                break;
            case 2:
                al.pages = test_rand(&st) % 40;
                al.align_pages = test_rand(&st) % 9;
                m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
                m.alloc_large = &al;
                break;
            default:
                fl.n_span_ids = test_rand(&st) % 5;
                fl.span_ids = ids;
                fl.n_gens = test_rand(&st) % 2 ? fl.n_span_ids : test_rand(&st) % 5;
                fl.gens = gens;
                m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
                m.free_large = &fl;
                break;
            }
            n = heapd__client_msg__pack(&m, pkt);
            if (test_rand(&st) % 2 && n) {
                unsigned flips = 1 + (unsigned)(test_rand(&st) % 3);
                for (unsigned k = 0; k < flips; k++)
                    pkt[test_rand(&st) % n] ^= (uint8_t)(1u << (test_rand(&st) % 8));
            }
        } else {
            n = 1 + test_rand(&st) % sizeof(pkt);
            for (size_t k = 0; k < n; k++)
                pkt[k] = (uint8_t)test_rand(&st);
        }
        enum rpc_verdict v = rpc_handle(D, c, pkt, n, &OUT);
        if (v != RPC_OK) {
            client_close(D, c, "fuzz");
            c = attached();
            disconnects++;
        }
        if (i % 1000 == 0)
            mcentral_bg_sweep(&D->central, 1000);
    }
    char err[256] = "";
    bool ok = mheap_check(&D->heap, err, sizeof(err)) && mcentral_check(&D->central, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "after fuzzing (seed %#llx): %s\n", (unsigned long long)seed, err);
    CU_ASSERT(ok);
    CU_ASSERT(disconnects > 0);
    /* the bystander still gets service */
    uint32_t id;
    CU_ASSERT_EQUAL(refill(good, 77, 9, 1), RPC_OK);
    CU_ASSERT_EQUAL(spans_reply(77, &id, 1), 1);
    teardown();
}

static void test_flush_encoding(void)
{
    uint8_t buf[64];
    rpc_out_t o = {.buf = buf, .cap = sizeof(buf)};
    CU_ASSERT_EQUAL(rpc_encode_flush(&o), 0);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, o.len, buf);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_EQUAL(r->seq, 0);
    CU_ASSERT_EQUAL(r->body_case, HEAPD__DAEMON_MSG__BODY_FLUSH);
    heapd__daemon_msg__free_unpacked(r, NULL);
}

/* Read every packet waiting on fd; count the Flushes and keep the last
 * Pressure's level and bytes. Returns the packets read. */
static unsigned drain_unsolicited(int fd, unsigned *flushes, unsigned *pressures, unsigned *level, uint64_t *bytes)
{
    uint8_t buf[256];
    unsigned n = 0;
    ssize_t r;
    while ((r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        Heapd__DaemonMsg *m = heapd__daemon_msg__unpack(NULL, (size_t)r, buf);
        CU_ASSERT_FATAL(m != NULL);
        CU_ASSERT_EQUAL(m->seq, 0);
        if (m->body_case == HEAPD__DAEMON_MSG__BODY_FLUSH)
            (*flushes)++;
        if (m->body_case == HEAPD__DAEMON_MSG__BODY_PRESSURE) {
            (*pressures)++;
            *level = m->pressure->level;
            *bytes = m->pressure->bytes_wanted;
        }
        heapd__daemon_msg__free_unpacked(m, NULL);
        n++;
    }
    return n;
}

/* Flush and Pressure to a client that does not read (a stopped process):
 * it is never dropped; what waits unread stays bounded (later messages are
 * coalesced into one pending Flush and one pending Pressure, the latest
 * level and bytes), and what was held back goes out once it reads. */
static void test_send_flush(void)
{
    setup();
    int sv[2];
    CU_ASSERT_FATAL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, sv) == 0);
    client_t *c = client_new(D, sv[0], 0, getuid());
    c->hello_done = true;
    unsigned flushes = 0, pressures = 0, level = 0;
    uint64_t bytes = 0;
    CU_ASSERT(client_post_flush(D, c));
    CU_ASSERT_EQUAL(drain_unsolicited(sv[1], &flushes, &pressures, &level, &bytes), 1);
    CU_ASSERT_EQUAL(flushes, 1);
    CU_ASSERT_FALSE(c->flush_pending);
    for (unsigned k = 0; k < 100000; k++) {          /* never read meanwhile */
        CU_ASSERT_FATAL(client_post_flush(D, c));
        CU_ASSERT_FATAL(client_post_pressure(D, c, 1 + k % 3, k));
    }
    CU_ASSERT_EQUAL(D->clients, c);                      /* still connected */
    CU_ASSERT_EQUAL(D->seg.hdr->clients, 1);
    CU_ASSERT(c->flush_pending && c->pressure_pending);  /* the last ones wait, coalesced */
    int unread = 0;
    CU_ASSERT_EQUAL(ioctl(sv[0], SIOCOUTQ, &unread), 0);
    CU_ASSERT(unread > 0 && unread <= CLIENT_UNSOLICITED_MAX + 1024);
    flushes = pressures = 0;
    unsigned got = drain_unsolicited(sv[1], &flushes, &pressures, &level, &bytes);
    CU_ASSERT(got >= 2 && got < 200);
    client_pump_all(D);                                  /* the sweep tick: room again */
    CU_ASSERT_FALSE(c->flush_pending || c->pressure_pending);
    flushes = pressures = 0;
    CU_ASSERT_EQUAL(drain_unsolicited(sv[1], &flushes, &pressures, &level, &bytes), 2);
    CU_ASSERT_EQUAL(flushes, 1);
    CU_ASSERT_EQUAL(pressures, 1);
    CU_ASSERT_EQUAL(level, 1 + 99999 % 3);               /* the latest Pressure */
    CU_ASSERT_EQUAL(bytes, 99999);
    client_close(D, c, "test");
    close(sv[1]);
    teardown();
}

/* The start-up decision: leases need pidfd_open; without it (ENOSYS: Linux
 * before 5.3, or a filter that forbids it) heapd must refuse to start, saying
 * why. */
static int fake_errno;
static int fake_pidfd_open(pid_t pid, unsigned flags)
{
    (void)pid;
    (void)flags;
    errno = fake_errno;
    return -1;
}

static void test_pidfd_probe(void)
{
    char err[256] = "";
    CU_ASSERT_EQUAL(client_pidfd_probe(NULL, err, sizeof(err)), 0);   /* this kernel has it */
    fake_errno = ENOSYS;
    CU_ASSERT_EQUAL(client_pidfd_probe(fake_pidfd_open, err, sizeof(err)), -ENOSYS);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "Linux 5.3"));
    fake_errno = EPERM;
    err[0] = 0;
    CU_ASSERT_EQUAL(client_pidfd_probe(fake_pidfd_open, err, sizeof(err)), -EPERM);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, strerror(EPERM)));
}

/* ---- families (issue 10): ForkBegin / ForkDone ------------------------------------------ */

static enum rpc_verdict hello_family(client_t *c)
{
    Heapd__Hello h = HEAPD__HELLO__INIT;
    h.version = HD_PROTO_VERSION;
    h.name = "family";
    h.reclaim_at_exit = true;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &h;
    return send_msg(c, &m);
}

static void fork_msg(client_t *c, uint64_t seq, bool done, int32_t pid)
{
    Heapd__ForkBegin b = HEAPD__FORK_BEGIN__INIT;
    Heapd__ForkDone f = HEAPD__FORK_DONE__INIT;
    f.pid = pid;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = seq;
    if (done) {
        m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_DONE;
        m.fork_done = &f;
    } else {
        m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_BEGIN;
        m.fork_begin = &b;
    }
    CU_ASSERT_EQUAL(send_msg(c, &m), RPC_OK);
}

static unsigned members(const client_t *c) { return D->central.pools[c->pool]->members; }

/* A family member's fork: the hold, the child named, the child joining the
 * family when it connects, and the family's memory freed only when the
 * last of them has gone. Refusals change nothing. */
static void test_family_fork(void)
{
    setup();
    client_t *plain = attached();
    fork_msg(plain, 2, false, 0);
    expect_error(2, EINVAL);                                /* in no family */
    CU_ASSERT_EQUAL(plain->pool, 0);

    client_t *p = client_new(D, -1, getpid(), getuid());   /* this process is the parent */
    CU_ASSERT_FATAL(p != NULL);
    CU_ASSERT_FATAL(hello_family(p) == RPC_OK);
    CU_ASSERT_FATAL(p->pool != 0);
    CU_ASSERT_EQUAL(members(p), 1);
    fork_msg(p, 3, true, 1);
    expect_error(3, EINVAL);                                /* ForkDone without ForkBegin */
    fork_msg(p, 4, false, 0);
    expect_ack(4);
    CU_ASSERT_EQUAL(members(p), 2);                         /* held across the fork */
    fork_msg(p, 5, true, 1);
    expect_error(5, EINVAL);                                /* pid 1 is not our child: the hold goes */
    CU_ASSERT_EQUAL(members(p), 1);
    fork_msg(p, 6, false, 0);
    fork_msg(p, 7, true, 0);                                /* the fork failed */
    expect_ack(7);
    CU_ASSERT_EQUAL(members(p), 1);

    /* a real child that waits on a pipe */
    int fds[2];
    CU_ASSERT_FATAL(pipe(fds) == 0);
    fork_msg(p, 8, false, 0);
    pid_t kid = fork();
    if (kid == 0) {
        char ch;
        close(fds[1]);
        _exit(read(fds[0], &ch, 1) < 0);
    }
    close(fds[0]);
    CU_ASSERT_FATAL(kid > 0);
    fork_msg(p, 9, true, kid);
    expect_ack(9);
    CU_ASSERT_EQUAL(members(p), 2);                         /* the child, by its pidfd */
    CU_ASSERT_FATAL(refill(p, 10, 7, 1) == RPC_OK);
    Heapd__DaemonMsg *r = reply();
    CU_ASSERT_FATAL(r && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS);
    uint32_t span = r->spans->span_ids[0];
    reply_free(r);
    hd_obj_alloc(hd_states_of(&D->seg.view, span, 7), 0);  /* the parent holds an object */

    client_t *k = client_new(D, -1, kid, getuid());        /* the child connects */
    CU_ASSERT_FATAL(k != NULL);
    CU_ASSERT_FATAL(hello_family(k) == RPC_OK);
    CU_ASSERT_EQUAL(k->pool, p->pool);                      /* it joined, taking over its membership */
    CU_ASSERT_EQUAL(members(p), 2);
    unsigned pool = p->pool;
    client_close(D, p, "parent exits");                     /* the parent goes first */
    CU_ASSERT_EQUAL(D->central.pools[pool]->members, 1);
    CU_ASSERT_NOT_EQUAL(mheap_state(&D->heap, span), HD_SPAN_FREE);   /* kept for the child */
    check_all();
    client_close(D, k, "child exits");
    CU_ASSERT(pool >= D->central.npools || D->central.pools[pool] == NULL);  /* the family has gone */
    CU_ASSERT_EQUAL(mheap_state(&D->heap, span), HD_SPAN_FREE);
    check_all();
    close(fds[1]);
    int st;
    waitpid(kid, &st, 0);
    teardown();
}

static void register_rpc_suite(void)
{
    CU_pSuite s = CU_add_suite("rpc", NULL, NULL);
    CU_add_test(s, "Hello/Welcome", test_hello);
    CU_add_test(s, "Hello with another version", test_wrong_version);
    CU_add_test(s, "client ids after the counter wraps", test_client_id_wrap);
    CU_add_test(s, "SetLimit from another uid: EPERM", test_set_limit_other_uid);
    CU_add_test(s, "a request before Hello", test_request_before_hello);
    CU_add_test(s, "Refill validation", test_refill_validation);
    CU_add_test(s, "Refill of a page chunk, Release, free by anyone", test_refill_chunk);
    CU_add_test(s, "Refill", test_refill);
    CU_add_test(s, "Refill when the heap is full", test_refill_enomem);
    CU_add_test(s, "Release", test_release);
    CU_add_test(s, "disconnect reclaims cached spans", test_disconnect_reclaims);
    CU_add_test(s, "disconnect closes open tiny blocks", test_disconnect_closes_tiny);
    CU_add_test(s, "AllocLarge", test_alloc_large);
    CU_add_test(s, "FreeLarge and generations", test_free_large);
    CU_add_test(s, "garbage packets", test_garbage);
    CU_add_test(s, "fuzzed packets", test_fuzz);
    CU_add_test(s, "Flush encoding", test_flush_encoding);
    CU_add_test(s, "Flush and Pressure to a client that does not read", test_send_flush);
    CU_add_test(s, "no pidfd_open: the daemon refuses to start", test_pidfd_probe);
    CU_add_test(s, "families: ForkBegin, ForkDone, the child joins, the last frees", test_family_fork);
}
UNIT_SUITE(register_rpc_suite)
