/* Unit tests of daemon/control.c's Clients reply (what `heapctl clients`
 * prints), over the in-process daemon fixture: client records on socketpairs,
 * quotas set with the SetQuota RPC a client sends, control requests through
 * control_handle. The other control requests are covered in test_mstats.c.
 *  - each row shows its own client's quota and charge, also after other
 *    clients' accounts were created and dropped (the account array shifts);
 *  - a client without an account shows quota 0 whatever lies in the account
 *    array past its count (vacated or never-written entries). */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "daemon.h"
#include "daemon_fixture.h"
#include "scavenge.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)
#define MiB (1ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

typedef struct tclient {
    client_t *c;
    int peer;
} tclient_t;

static tclient_t mkclient(void)
{
    tclient_t t = {0};
    t.c = fx_client(D, &OUT, &t.peer, NULL);
    return t;
}

static void rmclient(tclient_t *t)
{
    client_close(D, t->c, "test done");
    close(t->peer);
    t->c = NULL;
}

/* SetQuota{bytes} from client t, as libheapd's heapd_set_quota sends it. */
static void set_quota(tclient_t *t, uint64_t bytes)
{
    Heapd__SetQuota q = HEAPD__SET_QUOTA__INIT;
    q.bytes = bytes;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 3;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_QUOTA;
    m.set_quota = &q;
    CU_ASSERT_FATAL(fx_send(D, t->c, &m, &OUT) == RPC_OK);
    Heapd__DaemonMsg *r = heapd__daemon_msg__unpack(NULL, OUT.len, OUT.buf);
    CU_ASSERT(r && r->body_case == HEAPD__DAEMON_MSG__BODY_ACK);
    heapd__daemon_msg__free_unpacked(r, NULL);
}

/* The Clients row of client id, or NULL. */
static const Heapdctl__ClientInfo *row(const Heapdctl__ControlReply *r, uint32_t id)
{
    for (size_t i = 0; i < r->clients->n_clients; i++)
        if (r->clients->clients[i]->id == id)
            return r->clients->clients[i];
    return NULL;
}

/* Every live client has one row, with the quota and charge want[] says. */
static void check_rows(tclient_t *t, const uint64_t *quota, const uint64_t *charged, unsigned n)
{
    Heapdctl__ControlReply *r = fx_clients(D);
    unsigned live = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!t[i].c)
            continue;
        live++;
        const Heapdctl__ClientInfo *ci = row(r, t[i].c->id);
        CU_ASSERT_FATAL(ci != NULL);
        if (ci->quota != quota[i] || ci->charged != charged[i])
            fprintf(stderr, "client %u: quota %llu charged %llu, want %llu and %llu\n", t[i].c->id,
                    (unsigned long long)ci->quota, (unsigned long long)ci->charged,
                    (unsigned long long)quota[i], (unsigned long long)charged[i]);
        CU_ASSERT_EQUAL(ci->quota, quota[i]);
        CU_ASSERT_EQUAL(ci->charged, charged[i]);
    }
    CU_ASSERT_EQUAL(r->clients->n_clients, live);
    heapdctl__control_reply__free_unpacked(r, NULL);
}

static void test_quotas_after_churn(void)
{
    D = fx_daemon_new(TEST_SIZE, 0x3e0000000000ull + (uint64_t)(nbase++) * (4ull << 30));
    enum { N = 24 };                        /* more accounts than the array's first capacity (16) */
    tclient_t t[N];
    uint64_t quota[N], charged[N];
    for (unsigned i = 0; i < N; i++) {
        t[i] = mkclient();
        quota[i] = (i % 3 == 2) ? 0 : (uint64_t)(i + 1) * MiB;   /* every third has no quota */
        charged[i] = 0;
        if (quota[i])
            set_quota(&t[i], quota[i]);
    }
    /* two of them take heap pages: they are charged for them */
    CU_ASSERT_FATAL(fx_alloc_large(D, t[4].c, &OUT, 16) >= 0);
    charged[4] = 16 * HD_PAGE_SIZE;
    CU_ASSERT_FATAL(fx_alloc_large(D, t[5].c, &OUT, 8) >= 0);  /* no quota: an account all the same */
    charged[5] = 8 * HD_PAGE_SIZE;
    check_rows(t, quota, charged, N);

    /* drop the first half: the accounts behind them move down */
    for (unsigned i = 0; i < N / 2; i++)
        if (i != 4 && i != 5)
            rmclient(&t[i]);
    check_rows(t, quota, charged, N);
    /* a quota raised, one cleared, a new client with none */
    set_quota(&t[13], 99 * MiB);
    quota[13] = 99 * MiB;
    set_quota(&t[15], 0);
    quota[15] = 0;
    check_rows(t, quota, charged, N);

    /* Whatever the array holds past its count (vacated entries, memory
     * realloc never wrote) must not show: make every such entry claim a
     * quota for the live clients that have no account of their own. */
    limits_t *s = &D->lim;
    CU_ASSERT_FATAL(s->nacct < s->acct_cap);
    unsigned k = s->nacct;
    for (unsigned i = 0; i < N && k < s->acct_cap; i++)
        if (t[i].c && quota[i] == 0 && charged[i] == 0)
            s->acct[k++] = (limits_account_t){.client_id = t[i].c->id, .quota = 0xdead0000, .charged = 7};
    CU_ASSERT(k > s->nacct);
    check_rows(t, quota, charged, N);
    for (unsigned i = 0; i < N; i++)
        CU_ASSERT_EQUAL(limits_quota(D, t[i].c ? t[i].c->id : 0), t[i].c ? quota[i] : 0);

    for (unsigned i = 0; i < N; i++)
        if (t[i].c)
            rmclient(&t[i]);
    Heapdctl__ControlReply *r = fx_clients(D);
    CU_ASSERT_EQUAL(r->clients->n_clients, 0);
    heapdctl__control_reply__free_unpacked(r, NULL);
    fx_daemon_free(D);
    D = NULL;
}

static void register_control_suite(void)
{
    CU_pSuite s = CU_add_suite("control", NULL, NULL);
    CU_add_test(s, "Clients rows: quotas and charges after accounts come and go", test_quotas_after_churn);
}
UNIT_SUITE(register_control_suite)
