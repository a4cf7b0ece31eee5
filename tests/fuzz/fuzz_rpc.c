/* fuzz-rpc: libFuzzer harness for the daemon's message decoder and dispatch.
 *
 * Each input is a short conversation of one client with a real daemon state
 * (segment, mheap, mcentral; no socket: rpc_handle is called directly). The
 * input is read as a script: each step's first byte picks either a raw packet
 * (the next bytes, length-prefixed: any garbage) or a well-formed message
 * whose fields come from the following bytes (Hello with any version, Refill,
 * Release, AllocLarge, FreeLarge with ids taken from earlier replies or made
 * up), so the fuzzer reaches deep states without a corpus. Spans the client
 * is handed get random alloc and free bits written into their slots, as a
 * buggy or hostile client could. After the conversation the client is closed
 * (its spans reclaimed) and, every 64 inputs, the heap's invariants are
 * checked (mheap_check, mcentral_check): any violation aborts.
 *
 * Build: make fuzz (clang, -fsanitize=fuzzer,address,undefined).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"
#include "mcentral.h"
#include "roots.h"
#include "rpc.h"
#include "span.h"

static daemon_t *D;
static uint8_t outbuf[HD_MAX_MSG];

struct script { const uint8_t *p; size_t n; };

static unsigned take(struct script *s, unsigned nbytes)
{
    unsigned v = 0;
    for (unsigned i = 0; i < nbytes; i++) {
        v <<= 8;
        if (s->n) {
            v |= *s->p++;
            s->n--;
        }
    }
    return v;
}

static uint32_t ids[256];
static unsigned nids;

static void remember(const rpc_out_t *out)
{
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, out->len, out->buf);
    if (!r)
        abort();                                   /* the daemon must always encode valid replies */
    if (r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS)
        for (size_t i = 0; i < r->spans->n_span_ids && nids < 256; i++)
            ids[nids++] = r->spans->span_ids[i];
    heapd__daemon_msg__free_unpacked(r, NULL);
}

/* Scribble on the object states of spans we were given (slot or aux area),
 * like a client allocating, freeing and misbehaving. */
static void scribble(struct script *s)
{
    if (!nids)
        return;
    uint32_t id = ids[take(s, 1) % nids];
    if (id >= D->seg.view.npages)
        return;
    bool aux = take(s, 1) & 1;
    hd_ostate_t *st = aux ? hd_tiny_of(&D->seg.view, id)->state : hd_slot_of(&D->seg.view, id)->state;
    unsigned len = aux ? HD_MAX_OBJS_PER_SPAN : HD_SLOT_STATES, i = take(s, 2) % len;
    uint64_t a = (uint64_t)take(s, 4) << 32 | take(s, 4);
    if (take(s, 1) & 1) {
        for (unsigned k = 0; k < 8; k++)                /* any bytes */
            atomic_store(&st[(i + k) % len], (uint8_t)(a >> 8 * k));
    } else {
        for (unsigned k = 0; k < 64; k++) {             /* frees and allocations, as a client makes them */
            unsigned j = (i + k) % len;
            if (!(a >> k & 1))
                continue;
            if (hd_obj_state(st, j) == HD_OBJ_FREE)
                hd_obj_alloc(st, j);
            else
                hd_obj_free(st, j);
        }
    }
}

/* The roots directory: every USED entry has a valid name that a client's
 * lookup finds at that entry; at most HD_MAX_ROOTS. */
static bool roots_ok(char *err, size_t errlen)
{
    const hd_root_t *t = D->seg.view.roots;
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++) {
        hd_root_copy_t c;
        if (!hd_root_read(&t[i], &c) || c.state > HD_ROOT_DEAD) {
            snprintf(err, errlen, "root entry %u unreadable or state %u", i, c.state);
            return false;
        }
        if (c.state != HD_ROOT_USED) {
            if (c.offset != HD_NULL_OFFSET) {
                snprintf(err, errlen, "root entry %u not used but has offset 0x%llx", i, (unsigned long long)c.offset);
                return false;
            }
            continue;
        }
        size_t len = strlen(c.name);
        uint64_t off;
        if (len < 1 || len > HD_ROOT_NAME_MAX || hd_root_find(t, c.name, len, &off) != (int)i || off != c.offset) {
            snprintf(err, errlen, "root entry %u (%s) is not found where it is", i, c.name);
            return false;
        }
    }
    return true;
}

static uint32_t pick_id(struct script *s)
{
    unsigned k = take(s, 1);
    if (nids && k < 200)
        return ids[k % nids];
    return (uint32_t)take(s, 4);
}

static size_t build(struct script *s, uint8_t *buf)
{
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    Heapd__Hello h = HEAPD__HELLO__INIT;
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    Heapd__Release rl = HEAPD__RELEASE__INIT;
    Heapd__AllocLarge al = HEAPD__ALLOC_LARGE__INIT;
    Heapd__FreeLarge fl = HEAPD__FREE_LARGE__INIT;
    Heapd__RootUpdate ru = HEAPD__ROOT_UPDATE__INIT;
    Heapd__ForkBegin fb = HEAPD__FORK_BEGIN__INIT;
    Heapd__ForkDone fd = HEAPD__FORK_DONE__INIT;
    static const char *const names[] = {"a", "b", "pool", "", "tab\there",
        "0123456789012345678901234567890123456789012345678901234567890123"};
    char gen_name[8];
    uint32_t a[HD_MAX_BATCH + 4], g[HD_MAX_BATCH + 4];
    m.seq = take(s, 1) & 3;
    switch (take(s, 1) % 7) {
    case 6:                                    /* families: holds and fork children */
        if (take(s, 1) & 1) {
            m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_BEGIN;
            m.fork_begin = &fb;
        } else {
            unsigned k = take(s, 1);
            fd.pid = k < 64 ? 0 : k < 128 ? (int32_t)getpid() : (int32_t)take(s, 4);
            m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_DONE;
            m.fork_done = &fd;
        }
        break;
    case 4: {                                  /* named roots: a few names, many made up */
        unsigned k = take(s, 1);
        if (k < 128) {
            ru.name = (char *)names[k % 6];
        } else {
            snprintf(gen_name, sizeof gen_name, "n%u", take(s, 2) % 2000);
            ru.name = gen_name;
        }
        unsigned o = take(s, 1);
        ru.offset = o < 100 ? (uint64_t)pick_id(s) * HD_PAGE_SIZE : o < 200 ? (uint64_t)pick_id(s) * HD_PAGE_SIZE + take(s, 2)
                  : o < 230 ? HD_NULL_OFFSET : (uint64_t)take(s, 4) << 13;
        ru.cas = take(s, 1) & 1;
        ru.expected = take(s, 1) < 128 ? HD_NULL_OFFSET : (uint64_t)pick_id(s) * HD_PAGE_SIZE;
        m.body_case = HEAPD__CLIENT_MSG__BODY_ROOT_UPDATE;
        m.root_update = &ru;
        break;
    }
    case 0:
        h.version = take(s, 1) < 240 ? HD_PROTO_VERSION : take(s, 4);
        h.pid = (int32_t)take(s, 2);
        h.name = "fuzz";
        h.reclaim_at_exit = take(s, 1) & 1;    /* a family of its own */
        m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
        m.hello = &h;
        break;
    case 1:
        rf.sizeclass = take(s, 1) < 240 ? take(s, 1) % 70 : take(s, 4);
        rf.count = take(s, 1) % 70;
        m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
        m.refill = &rf;
        break;
    case 2:
        rl.n_span_ids = take(s, 1) % (HD_MAX_BATCH + 4);
        for (size_t i = 0; i < rl.n_span_ids; i++)
            a[i] = pick_id(s);
        rl.span_ids = a;
        m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
        m.release = &rl;
        break;
    case 3:
        al.pages = take(s, 1) < 240 ? take(s, 2) % 300 : (uint64_t)take(s, 4) << 16;
        al.align_pages = take(s, 1) < 200 ? 1u << (take(s, 1) % 12) : take(s, 2);
        al.zero = take(s, 1) & 1;
        m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
        m.alloc_large = &al;
        break;
    default:
        fl.n_span_ids = fl.n_gens = take(s, 1) % 6;
        if (take(s, 1) > 240)
            fl.n_gens = take(s, 1) % 6;
        for (size_t i = 0; i < fl.n_span_ids; i++)
            a[i] = pick_id(s);
        for (size_t i = 0; i < fl.n_gens; i++) {
            uint32_t id = i < fl.n_span_ids ? a[i] : 0;
            g[i] = take(s, 1) < 200 && id < D->seg.view.npages ? D->seg.view.spans[id].gen : take(s, 4);
        }
        fl.span_ids = a;
        fl.gens = g;
        m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
        m.free_large = &fl;
        break;
    }
    return heapd__client_msg__pack(&m, buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned runs;
    if (!D) {
        D = calloc(1, sizeof(*D));
        char err[256];
        daemon_opts_t o = {.size = 128ull << 20, .base = 0x3c0000000000ull, .quiet = true};
        if (!D || daemon_init(D, &o, err, sizeof(err)) != 0) {
            fprintf(stderr, "fuzz-rpc: daemon_init: %s\n", err);
            abort();
        }
    }
    struct script s = {data, size};
    client_t *c = client_new(D, -1, 4242, getuid());
    if (!c)
        return 0;
    nids = 0;
    static uint8_t pkt[HD_MAX_MSG];
    for (unsigned step = 0; step < 64 && s.n; step++) {
        unsigned kind = take(&s, 1);
        size_t n;
        if (kind < 40) {                       /* raw bytes */
            n = take(&s, 2) % 512;
            n = n > s.n ? s.n : n;
            memcpy(pkt, s.p, n);
            s.p += n;
            s.n -= n;
        } else if (kind < 60) {
            scribble(&s);
            continue;
        } else {
            n = build(&s, pkt);
        }
        rpc_out_t out = {.buf = outbuf, .cap = sizeof(outbuf)};
        enum rpc_verdict v = rpc_handle(D, c, pkt, n, &out);
        if (out.len)
            remember(&out);
        if (v != RPC_OK)
            break;
    }
    client_close(D, c, "fuzz input over");
    if (++runs % 64 == 0) {
        char err[256];
        if (!mheap_check(&D->heap, err, sizeof(err)) || !mcentral_check(&D->central, err, sizeof(err)) ||
            !roots_ok(err, sizeof(err))) {
            fprintf(stderr, "fuzz-rpc: invariant broken: %s\n", err);
            abort();
        }
    }
    return 0;
}
