/* daemon_fixture.c: see daemon_fixture.h. */
#include "daemon_fixture.h"

#include <CUnit/CUnit.h>
#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "mcentral.h"

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
