/* Unit tests of the named roots: daemon/rootdir.c through rpc_handle (the
 * RootUpdate rules), the lock-free reader of shm/roots.h that clients use,
 * shm/live.h (what counts as a live object), and heapctl's RootsRequest. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "control.pb-c.h"
#include "daemon.h"
#include "daemon_fixture.h"
#include "heapd.pb-c.h"
#include "live.h"
#include "roots.h"
#include "rootdir.h"
#include "rpc.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)

static daemon_t *D;
static client_t *C;
static int peer = -1;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

static void setup(void)
{
    D = fx_daemon_new(TEST_SIZE, 0x3e0000000000ull + (uint64_t)(nbase++) * (4ull << 30));
    C = fx_client(D, &OUT, &peer, NULL);
}

static void teardown(void)
{
    fx_daemon_free(D);
    D = NULL;
    C = NULL;
    close(peer);
    peer = -1;
}

/* One RootUpdate; returns 0 for Ack or the Error's errno. */
static int update(const char *name, uint64_t off, bool cas, uint64_t expected)
{
    Heapd__RootUpdate u = HEAPD__ROOT_UPDATE__INIT;
    u.name = (char *)name;
    u.offset = off;
    u.cas = cas;
    u.expected = expected;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 9;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ROOT_UPDATE;
    m.root_update = &u;
    CU_ASSERT_FATAL(fx_send(D, C, &m, &OUT) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT_FATAL(r != NULL);
    CU_ASSERT_EQUAL(r->seq, 9);
    int e = r->body_case == HEAPD__DAEMON_MSG__BODY_ACK ? 0
          : r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR ? r->error->err : -1;
    heapd__daemon_msg__free_unpacked(r, NULL);
    return e;
}
static int set(const char *name, uint64_t off) { return update(name, off, false, 0); }
static int del(const char *name) { return update(name, HD_NULL_OFFSET, false, 0); }
static int cas(const char *name, uint64_t expected, uint64_t desired) { return update(name, desired, true, expected); }

/* What a client sees: the offset name maps to, HD_NULL_OFFSET when absent. */
static uint64_t get(const char *name)
{
    uint64_t off = 0;
    int i = hd_root_find(D->seg.view.roots, name, strlen(name), &off);
    CU_ASSERT(i >= -1);
    return i >= 0 ? off : HD_NULL_OFFSET;
}

/* A live large object's offset. */
static uint64_t large(void)
{
    int64_t id = fx_alloc_large(D, C, &OUT, 1);
    CU_ASSERT_FATAL(id >= 0);
    return (uint64_t)id * HD_PAGE_SIZE;
}

/* The directory sits after the pagemap, inside the meta memfd, committed,
 * every entry empty with the null offset. */
static void test_layout(void)
{
    setup();
    const hd_header_t *h = D->seg.hdr;
    CU_ASSERT_EQUAL(h->layout_version, HD_LAYOUT_VERSION);
    CU_ASSERT(h->roots_off >= h->pagemap_off + h->npages * sizeof(uint32_t));
    CU_ASSERT_EQUAL(h->roots_off % 4096, 0);
    CU_ASSERT(h->roots_off + HD_ROOTS_BYTES <= h->meta_size);
    CU_ASSERT_EQUAL((uintptr_t)D->seg.view.roots, (uintptr_t)h + h->roots_off);
    CU_ASSERT(D->seg.meta_committed >= HD_HEADER_BYTES + HD_ROOTS_BYTES);
    unsigned bad = 0;
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++) {
        hd_root_copy_t c;
        CU_ASSERT_FATAL(hd_root_read(&D->seg.view.roots[i], &c));
        bad += c.state != HD_ROOT_EMPTY || c.offset != HD_NULL_OFFSET || c.name[0];
    }
    CU_ASSERT_EQUAL(bad, 0);
    teardown();
}

static void test_set_get_del(void)
{
    setup();
    uint64_t a = large(), b = large();
    CU_ASSERT_EQUAL(get("pool"), HD_NULL_OFFSET);
    CU_ASSERT_EQUAL(set("pool", a), 0);
    CU_ASSERT_EQUAL(get("pool"), a);
    CU_ASSERT_EQUAL(get("poo"), HD_NULL_OFFSET);          /* no prefix matches */
    CU_ASSERT_EQUAL(get("pool2"), HD_NULL_OFFSET);
    CU_ASSERT_EQUAL(set("pool", b), 0);                   /* replace */
    CU_ASSERT_EQUAL(get("pool"), b);
    CU_ASSERT_EQUAL(set("other", a), 0);                  /* two names, one object */
    CU_ASSERT_EQUAL(get("other"), a);
    CU_ASSERT_EQUAL(del("pool"), 0);
    CU_ASSERT_EQUAL(get("pool"), HD_NULL_OFFSET);
    CU_ASSERT_EQUAL(del("pool"), ENOENT);
    CU_ASSERT_EQUAL(get("other"), a);
    /* a root names a pointer: freeing the object leaves it dangling */
    uint32_t id = (uint32_t)(a / HD_PAGE_SIZE), gen = D->seg.view.spans[id].gen;
    Heapd__FreeLarge f = HEAPD__FREE_LARGE__INIT;
    f.n_span_ids = f.n_gens = 1;
    f.span_ids = &id;
    f.gens = &gen;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 0;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
    m.free_large = &f;
    CU_ASSERT(fx_send(D, C, &m, &OUT) == RPC_OK);
    CU_ASSERT_EQUAL(get("other"), a);
    CU_ASSERT_EQUAL(set("again", a), EINVAL);             /* but a dead object cannot be named */
    teardown();
}

static void test_bad_names_and_objects(void)
{
    setup();
    uint64_t a = large();
    char n63[64], n64[65];
    memset(n63, 'x', 63);
    n63[63] = 0;
    memset(n64, 'y', 64);
    n64[64] = 0;
    CU_ASSERT_EQUAL(set("", a), EINVAL);
    CU_ASSERT_EQUAL(set(n64, a), ENAMETOOLONG);
    CU_ASSERT_EQUAL(set("tab\there", a), EINVAL);
    CU_ASSERT_EQUAL(set(n63, a), 0);                      /* 63 bytes is the limit */
    CU_ASSERT_EQUAL(get(n63), a);
    CU_ASSERT_EQUAL(set("inside", a + 16), EINVAL);       /* not an object start */
    CU_ASSERT_EQUAL(set("free page", a + 64 * HD_PAGE_SIZE), EINVAL);
    CU_ASSERT_EQUAL(set("beyond", TEST_SIZE), EINVAL);
    CU_ASSERT_EQUAL(set("way beyond", HD_NULL_OFFSET - 1), EINVAL);
    CU_ASSERT_EQUAL(get("inside"), HD_NULL_OFFSET);
    CU_ASSERT(D->seg.hdr->bad_requests == 0);             /* user errors, answered, not protocol errors */
    teardown();
}

static void test_cas(void)
{
    setup();
    uint64_t a = large(), b = large();
    CU_ASSERT_EQUAL(cas("c", a, b), ENOENT);              /* expected an object, name absent */
    CU_ASSERT_EQUAL(cas("c", HD_NULL_OFFSET, a), 0);      /* create if absent */
    CU_ASSERT_EQUAL(get("c"), a);
    CU_ASSERT_EQUAL(cas("c", HD_NULL_OFFSET, b), EAGAIN); /* exists already */
    CU_ASSERT_EQUAL(cas("c", b, b), EAGAIN);              /* not what it names */
    CU_ASSERT_EQUAL(get("c"), a);
    CU_ASSERT_EQUAL(cas("c", a, b), 0);
    CU_ASSERT_EQUAL(get("c"), b);
    CU_ASSERT_EQUAL(cas("c", b, a + 8), EINVAL);          /* desired must be live */
    CU_ASSERT_EQUAL(get("c"), b);
    CU_ASSERT_EQUAL(cas("c", b, HD_NULL_OFFSET), 0);      /* desired NULL removes */
    CU_ASSERT_EQUAL(get("c"), HD_NULL_OFFSET);
    CU_ASSERT_EQUAL(cas("c", HD_NULL_OFFSET, HD_NULL_OFFSET), 0);   /* absent stays absent */
    teardown();
}

/* 1024 names fill the directory; deleting frees a place; every name stays
 * reachable through the tombstones deletes leave on probe chains. */
static void test_full_directory(void)
{
    setup();
    uint64_t a = large();
    char name[32];
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++) {
        snprintf(name, sizeof name, "root-%u", i);
        CU_ASSERT_EQUAL_FATAL(set(name, a), 0);
    }
    CU_ASSERT_EQUAL(set("one more", a), ENOSPC);
    CU_ASSERT_EQUAL(set("root-5", a), 0);                  /* replacing still works when full */
    for (unsigned i = 0; i < HD_MAX_ROOTS; i += 2) {
        snprintf(name, sizeof name, "root-%u", i);
        CU_ASSERT_EQUAL(del(name), 0);
    }
    unsigned found = 0;
    for (unsigned i = 0; i < HD_MAX_ROOTS; i++) {
        snprintf(name, sizeof name, "root-%u", i);
        found += get(name) == a;
        CU_ASSERT_EQUAL(get(name) == a, i % 2 == 1);
    }
    CU_ASSERT_EQUAL(found, HD_MAX_ROOTS / 2);
    CU_ASSERT_EQUAL(set("one more", a), 0);
    CU_ASSERT_EQUAL(get("one more"), a);
    roots_entry_t *e = malloc(HD_MAX_ROOTS * sizeof(*e));
    CU_ASSERT_FATAL(e != NULL);
    CU_ASSERT_EQUAL(roots_list(D, e), HD_MAX_ROOTS / 2 + 1);
    free(e);
    teardown();
}

/* Small objects: live once their alloc bit is set; dead as soon as a free
 * bit is set, before any sweep (the usable_size bug of issue 13). */
static void test_live_small(void)
{
    setup();
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = 5;
    rf.count = 1;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 3;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    CU_ASSERT_FATAL(fx_send(D, C, &m, &OUT) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS);
    uint32_t id = r->spans->span_ids[0];
    heapd__daemon_msg__free_unpacked(r, NULL);
    const hd_seg_t *v = &D->seg.view;
    hd_span_t *sp = &v->spans[id];
    hd_ostate_t *st = hd_states_of(v, id, sp->sizeclass);
    uint64_t off = (uint64_t)id * HD_PAGE_SIZE + 3 * sp->elemsize;   /* object 3 */
    void *p = (void *)(v->pages + off);
    CU_ASSERT_EQUAL(hd_live_size(v, p), 0);               /* not allocated */
    CU_ASSERT_EQUAL(set("small", off), EINVAL);
    hd_obj_alloc(st, 3);                              /* the owner allocates it */
    CU_ASSERT_EQUAL(hd_live_size(v, p), sp->elemsize);
    CU_ASSERT_EQUAL(hd_live_size(v, (char *)p + 1), 0);
    CU_ASSERT_EQUAL(set("small", off), 0);
    CU_ASSERT_EQUAL(hd_obj_free(st, 3), HD_FREE_OK);    /* freed, not swept */
    CU_ASSERT_EQUAL(hd_live_size(v, p), 0);
    CU_ASSERT_EQUAL(set("small2", off), EINVAL);
    CU_ASSERT_EQUAL(hd_span_sweep(st, sp->nelems, NULL), 0);
    CU_ASSERT_EQUAL(hd_live_size(v, p), 0);               /* swept: still dead */
    teardown();
}

/* The seqlock, interleavings forced: a reader never returns an entry the
 * daemon is in the middle of writing (seq odd: here a daemon stopped there),
 * and once the write completes it reads the new value. */
static void test_reader_waits_for_writer(void)
{
    setup();
    uint64_t a = large(), b = large();
    CU_ASSERT_EQUAL(set("seq", a), 0);
    uint64_t off;
    int i = hd_root_find(D->seg.view.roots, "seq", 3, &off);
    CU_ASSERT_FATAL(i >= 0);
    hd_root_t *e = &D->seg.view.roots[i];
    uint64_t s = atomic_load(&e->seq);
    atomic_store(&e->seq, s + 1);                         /* writer in the middle */
    atomic_store(&e->offset, b);
    CU_ASSERT_EQUAL(hd_root_find(D->seg.view.roots, "seq", 3, &off), -2);
    atomic_store(&e->seq, s + 2);                         /* writer done */
    CU_ASSERT_EQUAL(hd_root_find(D->seg.view.roots, "seq", 3, &off), i);
    CU_ASSERT_EQUAL(off, b);
    teardown();
}

/* A writer flips one entry between two (name, offset) pairs while a reader
 * copies it: every copy is one pair or the other, never a mix. */
#define FLIPS 200000u
static hd_root_t flip_entry;
static _Atomic bool flip_done;
static const char *const flip_name[2] = {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                         "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"};

static void *flipper(void *arg)
{
    for (unsigned k = 0; k < FLIPS; k++)
        hd_root_write(&flip_entry, HD_ROOT_USED, flip_name[k & 1], 1000 + (k & 1));
    atomic_store(&flip_done, true);
    return arg;
}

static void test_reader_never_torn(void)
{
    memset(&flip_entry, 0, sizeof flip_entry);
    hd_root_write(&flip_entry, HD_ROOT_USED, flip_name[0], 1000);
    atomic_store(&flip_done, false);
    pthread_t t;
    CU_ASSERT_FATAL(pthread_create(&t, NULL, flipper, NULL) == 0);
    uint64_t reads = 0, torn = 0, seen[2] = {0, 0};
    while (!atomic_load(&flip_done) || reads == 0) {
        hd_root_copy_t c;
        if (!hd_root_read(&flip_entry, &c))
            continue;
        reads++;
        unsigned w = c.name[0] == 'b';
        seen[w]++;
        if (strcmp(c.name, flip_name[w]) != 0 || c.offset != 1000 + w ||
            c.hash != hd_root_hash(flip_name[w], strlen(flip_name[w])))
            torn++;
    }
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(torn, 0);
    CU_ASSERT(reads > 0);
    CU_ASSERT_EQUAL(atomic_load(&flip_entry.seq), 2ull * (FLIPS + 1));
}

/* heapctl roots: the names, sorted, with the size of what each names. */
static void test_control_roots(void)
{
    setup();
    uint64_t a = large();
    CU_ASSERT_EQUAL(set("zeta", a), 0);
    CU_ASSERT_EQUAL(set("alpha", a), 0);
    Heapdctl__RootsRequest rq = HEAPDCTL__ROOTS_REQUEST__INIT;
    Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
    q.seq = 5;
    q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_ROOTS;
    q.roots = &rq;
    uint8_t buf[256];
    size_t n = heapdctl__control_request__pack(&q, buf);
    uint8_t *rep;
    size_t rlen;
    CU_ASSERT_EQUAL(control_handle(D, buf, n, &rep, &rlen), 0);
    CU_ASSERT_FATAL(rep != NULL);
    Heapdctl__ControlReply *r = heapdctl__control_reply__unpack(NULL, rlen, rep);
    free(rep);
    CU_ASSERT_FATAL(r != NULL && r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_ROOTS);
    CU_ASSERT_EQUAL_FATAL(r->roots->n_roots, 2);
    CU_ASSERT_STRING_EQUAL(r->roots->roots[0]->name, "alpha");
    CU_ASSERT_STRING_EQUAL(r->roots->roots[1]->name, "zeta");
    CU_ASSERT_EQUAL(r->roots->roots[0]->offset, a);
    CU_ASSERT_EQUAL(r->roots->roots[0]->size, HD_PAGE_SIZE);
    heapdctl__control_reply__free_unpacked(r, NULL);
    teardown();
}

static void register_roots_suite(void)
{
    CU_pSuite s = CU_add_suite("roots", NULL, NULL);
    CU_add_test(s, "layout: after the pagemap, committed, empty", test_layout);
    CU_add_test(s, "set, get, replace, delete, dangling", test_set_get_del);
    CU_add_test(s, "bad names and objects", test_bad_names_and_objects);
    CU_add_test(s, "compare and swap", test_cas);
    CU_add_test(s, "1024 roots, tombstones", test_full_directory);
    CU_add_test(s, "live small objects (freed, not swept)", test_live_small);
    CU_add_test(s, "reader waits for a writer mid-update", test_reader_waits_for_writer);
    CU_add_test(s, "reader never sees a torn entry", test_reader_never_torn);
    CU_add_test(s, "heapctl roots (control request)", test_control_roots);
}
UNIT_SUITE(register_roots_suite)
