/* transport.c: the process's one connection to the daemon.
 *
 * Owns: the socket, the io_uring ring that drives it, the request sequence
 * number, the pending asynchronous batches (Release, FreeLarge), the arena
 * protobuf-c unpacks into, and tp_lock, which serializes all of it.
 *
 * Two kinds of messages (docs/protocol.md):
 *  - synchronous calls (Refill, AllocLarge; Hello at connect): one at a time
 *    per process, under tp_lock; the caller waits for the reply whose seq
 *    matches. Replies with seq 0 are unsolicited: Flush bumps tp_flush_gen
 *    (caches give their spans back at their next slow path); Pressure goes
 *    to pressure.c, whose listener thread also reads them while no call is
 *    in flight (tp_drain_locked).
 *  - asynchronous messages (Release, FreeLarge, seq 0, no reply): ids gather
 *    in one pending ClientMsg per type, sent when the batch is full or holds
 *    TP_SEND_PAGES pages (a page chunk given back is one), so a process never
 *    sits on much freed memory, ahead of every synchronous call, at thread
 *    exit, at heapd_flush/detach and at process exit.
 *  - refills ahead (issue 9): tp_refill_submit sends a Refill without
 *    waiting (one send(2) with MSG_DONTWAIT, also when a ring is set up: the
 *    ring has nothing in flight between calls) and keeps a slot for its seq;
 *    whoever reads the socket next (a synchronous call, the pressure
 *    listener's drain, a collect) files the reply in that slot. A slot whose
 *    cache gave up on it (tp_refill_cancel: its thread released its cache)
 *    releases the spans when they come. A graceful close first waits for
 *    every slot's reply and releases what no cache collected, so a detach
 *    leaves nothing cached; a broken connection or a fork child drops the
 *    slots (the spans stay ours, quarantined, or are the parent's).
 * With io_uring, a synchronous call is one submission: the pending batches
 * and the request as linked sends, then the receive of the reply; without it
 * (io_uring_queue_init failed, or HEAPD_NO_URING=1) the same packets go over
 * send/recvmsg.
 *
 * Invariants:
 *  - nothing here calls malloc: requests are packed into static buffers
 *    (tp_lock), replies unpacked into a static arena reset per message, so a
 *    libheapd that replaces malloc cannot recurse into itself.
 *  - a broken connection (EOF, EPIPE, ECONNRESET, a malformed reply; the
 *    daemon exiting, or dropping us for a protocol violation) closes the
 *    socket, forgets the stats slot, bumps hdc_epoch and makes the client
 *    HDC_DEAD: every later slow path notices the epoch, drops its cached
 *    spans without touching them, and fails at once with EPIPE; nothing
 *    blocks, the mapping stays so that existing objects remain usable, and
 *    heapd_detach + heapd_attach start over. Pending batches are dropped
 *    then. The daemon keeps our cached spans and slot quarantined until our
 *    process exits (the lease, daemon/conn.h), so nobody else gets them.
 *  - sends use MSG_NOSIGNAL: a dead daemon never raises SIGPIPE.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "heapd.pb-c.h"
#include "internal.h"
#include "lockorder.h"

#define TP_RING_DEPTH 8
#define TP_SBUF 2048                 /* a full Release/FreeLarge batch packs to < 700 B */
#define TP_SEND_PAGES 256            /* send queued releases or large frees once they hold 2 MiB */
#define TP_NAME_MAX 64

static pthread_mutex_t tp_mu = PTHREAD_MUTEX_INITIALIZER;
_Atomic uint64_t tp_flush_gen;

/* Everything below is guarded by tp_mu. */
static int tp_fd = -1;
static bool tp_have_ring;
static struct io_uring tp_ring;
static uint64_t tp_seq;
static _Atomic int tp_kind;          /* 0 none, 1 plain, 2 io_uring, 3 test backend */
static const tp_backend_t *tp_be;

static struct {
    uint32_t ids[HD_MAX_BATCH];
    unsigned n;
    uint64_t pages;                  /* of the spans queued (a page chunk is 256) */
} tp_rel;
static struct {
    uint32_t ids[HD_MAX_BATCH], gens[HD_MAX_BATCH];
    unsigned n;
    uint64_t pages;
} tp_fl;

/* Refills submitted ahead (tp_mu). token 0: free slot. */
#define TP_AHEAD_MAX 64
typedef struct tp_ahead {
    uint64_t token, seq;
    bool done, orphan;
    int err;                         /* done: 0, or the daemon's errno */
    unsigned n;
    uint32_t ids[HD_MAX_BATCH];
} tp_ahead_t;
static tp_ahead_t tp_ahead[TP_AHEAD_MAX];
static uint64_t tp_ahead_tokens;     /* tokens handed out: never reused, unlike seqs */
static unsigned tp_ahead_n;          /* slots in use */

static uint8_t tp_sbuf[3][TP_SBUF];  /* release batch, free-large batch, request */
static uint8_t tp_rbuf[HD_MAX_MSG];

/* ---- the unpack arena --------------------------------------------------- */
/* Unpacked repeated uint32s take 4 B for each >= 1 B on the wire, so a full
 * HD_MAX_MSG packet needs at most ~4x its size; the rest is slack. */
static _Alignas(16) unsigned char tp_arena[5 * HD_MAX_MSG];
static size_t tp_arena_top;

static void *tp_arena_alloc(void *ud, size_t n)
{
    (void)ud;
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof tp_arena - tp_arena_top)
        return NULL;                 /* unpack fails cleanly: a protocol error */
    void *p = tp_arena + tp_arena_top;
    tp_arena_top += n;
    return p;
}
static void tp_arena_free(void *ud, void *p) { (void)ud; (void)p; }
static ProtobufCAllocator tp_pballoc = {tp_arena_alloc, tp_arena_free, NULL};

/* ---- locking -------------------------------------------------------------- */

void tp_lock(void)
{
    pthread_mutex_lock(&tp_mu);
    HD_LOCK_TAKEN(HD_LOCK_TP, "tp_mu");
}
void tp_unlock(void)
{
    HD_LOCK_DROPPED(HD_LOCK_TP);
    pthread_mutex_unlock(&tp_mu);
}
void tp_lock_reinit(void) { pthread_mutex_init(&tp_mu, NULL); }

const char *tp_name(void)
{
    static const char *const names[] = {"none", "plain", "io_uring", "test"};
    return names[atomic_load_explicit(&tp_kind, memory_order_relaxed) & 3];
}

/* ---- connection state ------------------------------------------------------ */

static void tp_drop_ahead(void)
{
    memset(tp_ahead, 0, sizeof tp_ahead);
    tp_ahead_n = 0;
}

static void tp_drop_pending(void)
{
    tp_rel.n = 0;
    tp_rel.pages = 0;
    tp_fl.n = 0;
    tp_fl.pages = 0;
}

static void tp_teardown(void)
{
    if (tp_have_ring) {
        io_uring_queue_exit(&tp_ring);  /* unmaps and closes; sends nothing */
        tp_have_ring = false;
    }
    if (tp_fd >= 0) {
        close(tp_fd);                   /* never shutdown(): a fork parent shares the socket */
        tp_fd = -1;
    }
    atomic_store(&tp_kind, 0);
}

static void tp_ahead_settle_locked(void);

void tp_close_locked(bool graceful)
{
    if (graceful) {
        tp_ahead_settle_locked();    /* replies still due: their spans go back */
        (void)tp_flush_locked();     /* a fork child reconnects for it if it must */
    }
    tp_drop_pending();
    tp_drop_ahead();
    tp_teardown();
}

/* The connection broke: close it, become HDC_DEAD, fail with EPIPE. Before
 * the socket closes: the stats slot is forgotten (the daemon may free it once
 * it sees a close with nothing cached: cstats.c), and hdc_epoch moves, so
 * every cache drops its spans at its next slow path instead of using state it
 * might no longer own (they stay ours, quarantined, until we exit; the
 * objects we hold stay valid). */
static int tp_broken(void)
{
    tp_drop_pending();
    tp_drop_ahead();
    st_forget_slot();
    atomic_fetch_add(&hdc_epoch, 1);
    tp_teardown();
    if (atomic_load(&hdc_state) == HDC_ATTACHED)
        atomic_store(&hdc_state, HDC_DEAD);
    errno = EPIPE;
    return -1;
}

/* Ready to send: connected (reconnecting a fork child), or a test backend. */
static int tp_ready_locked(void)
{
    if (tp_be)
        return 0;
    switch (atomic_load(&hdc_state)) {
    case HDC_ATTACHED:
        return 0;
    case HDC_FORKED:
        return hdc_reconnect_locked();
    case HDC_DEAD:
        errno = EPIPE;
        return -1;
    default:
        errno = ENOTCONN;
        return -1;
    }
}

static int tp_errno_from_daemon(int32_t err)
{
    return err > 0 && err < 4096 ? err : EPROTO;
}

/* ---- packing ---------------------------------------------------------------- */

static size_t tp_pack(Heapd__ClientMsg *m, uint8_t *buf)
{
    size_t n = heapd__client_msg__get_packed_size(m);
    if (n > TP_SBUF)
        return 0;                    /* cannot happen for our bounded messages */
    return heapd__client_msg__pack(m, buf);
}

typedef struct tp_pkt {
    const uint8_t *buf;
    size_t len;
} tp_pkt_t;

/* Pack the pending batches into pk[]; returns how many packets. */
static unsigned tp_pack_pending(tp_pkt_t *pk)
{
    unsigned n = 0;
    if (tp_rel.n) {
        Heapd__Release rel = HEAPD__RELEASE__INIT;
        rel.n_span_ids = tp_rel.n;
        rel.span_ids = tp_rel.ids;
        Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
        m.body_case = HEAPD__CLIENT_MSG__BODY_RELEASE;
        m.release = &rel;
        pk[n] = (tp_pkt_t){tp_sbuf[0], tp_pack(&m, tp_sbuf[0])};
        n += pk[n].len != 0;
    }
    if (tp_fl.n) {
        Heapd__FreeLarge fl = HEAPD__FREE_LARGE__INIT;
        fl.n_span_ids = fl.n_gens = tp_fl.n;
        fl.span_ids = tp_fl.ids;
        fl.gens = tp_fl.gens;
        Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
        m.body_case = HEAPD__CLIENT_MSG__BODY_FREE_LARGE;
        m.free_large = &fl;
        pk[n] = (tp_pkt_t){tp_sbuf[1], tp_pack(&m, tp_sbuf[1])};
        n += pk[n].len != 0;
    }
    return n;
}

/* ---- plain send/recv ---------------------------------------------------------- */

static int plain_send(const tp_pkt_t *pk)
{
    for (;;) {
        ssize_t r = send(tp_fd, pk->buf, pk->len, MSG_NOSIGNAL);
        if (r == (ssize_t)pk->len)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

/* One packet into tp_rbuf: its length, or -1 (EOF, error, truncated). */
static ssize_t plain_recv(void)
{
    struct iovec iov = {tp_rbuf, sizeof tp_rbuf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    for (;;) {
        ssize_t r = recvmsg(tp_fd, &mh, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || (mh.msg_flags & MSG_TRUNC))
            return -1;
        return r;
    }
}

/* ---- io_uring ------------------------------------------------------------------ */

#define UR_RECV_TAG 1000u
static struct iovec ur_riov;
static struct msghdr ur_rmsg;

static struct io_uring_sqe *ur_sqe(void)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&tp_ring);
    if (!sqe) {                      /* full: cannot happen with our depth, but be safe */
        io_uring_submit(&tp_ring);
        sqe = io_uring_get_sqe(&tp_ring);
    }
    return sqe;
}

/* Send npk packets as one linked chain, then (if want_reply) receive one
 * packet into tp_rbuf, all in one submission. Returns the received length
 * (0 when no reply was wanted) or -1. */
static ssize_t ur_exchange(const tp_pkt_t *pk, unsigned npk, bool want_reply)
{
    unsigned nsqe = 0;
    for (unsigned i = 0; i < npk; i++) {
        struct io_uring_sqe *sqe = ur_sqe();
        if (!sqe)
            return -1;
        io_uring_prep_send(sqe, tp_fd, pk[i].buf, pk[i].len, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, i);
        if (i + 1 < npk || want_reply)
            sqe->flags |= IOSQE_IO_LINK;    /* in order; a failed send cancels the rest */
        nsqe++;
    }
    if (want_reply) {
        struct io_uring_sqe *sqe = ur_sqe();
        if (!sqe)
            return -1;
        ur_riov = (struct iovec){tp_rbuf, sizeof tp_rbuf};
        ur_rmsg = (struct msghdr){.msg_iov = &ur_riov, .msg_iovlen = 1};
        io_uring_prep_recvmsg(sqe, tp_fd, &ur_rmsg, MSG_CMSG_CLOEXEC);
        io_uring_sqe_set_data64(sqe, UR_RECV_TAG);
        nsqe++;
    }
    if (nsqe == 0)
        return 0;
    /* One submission in the normal case; should the kernel take fewer SQEs
     * than queued, push the rest before waiting on their completions (never
     * wait for a completion whose SQE is still in the ring). */
    int r = io_uring_submit_and_wait(&tp_ring, nsqe);
    for (int tries = 0; io_uring_sq_ready(&tp_ring) && tries < 100; tries++) {
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
            break;
        r = io_uring_submit(&tp_ring);
    }
    if (io_uring_sq_ready(&tp_ring))
        return -1;                   /* the caller tears the ring down */
    /* Reap every completion we caused, even after a failure, so the ring
     * never holds stale ones for the next call. */
    bool bad = false;
    ssize_t got = 0;
    for (unsigned k = 0; k < nsqe; k++) {
        struct io_uring_cqe *cqe;
        int w;
        while ((w = io_uring_wait_cqe(&tp_ring, &cqe)) == -EINTR)
            ;
        if (w < 0)
            return -1;
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&tp_ring, cqe);
        if (tag == UR_RECV_TAG) {
            if (res <= 0 || (ur_rmsg.msg_flags & MSG_TRUNC))
                bad = true;
            else
                got = res;
        } else if (tag >= npk || res != (int)pk[tag].len) {
            bad = true;
        }
    }
    return bad ? -1 : got;
}

/* ---- exchanges ------------------------------------------------------------------- */

/* Send the pending batches; they are gone afterwards either way. */
int tp_flush_locked(void)
{
    if (!tp_rel.n && !tp_fl.n)
        return 0;
    if (tp_be) {
        if (tp_rel.n)
            tp_be->release(tp_be->ctx, tp_rel.ids, tp_rel.n);
        if (tp_fl.n)
            tp_be->free_large(tp_be->ctx, tp_fl.ids, tp_fl.gens, tp_fl.n);
        tp_drop_pending();
        return 0;
    }
    if (tp_ready_locked() < 0) {
        tp_drop_pending();
        return -1;
    }
    tp_pkt_t pk[2];
    unsigned n = tp_pack_pending(pk);
    int rc = 0;
    if (tp_have_ring) {
        rc = ur_exchange(pk, n, false) < 0 ? -1 : 0;
    } else {
        for (unsigned i = 0; i < n && rc == 0; i++)
            rc = plain_send(&pk[i]);
    }
    tp_drop_pending();
    return rc < 0 ? tp_broken() : 0;
}

int tp_flush(void)
{
    tp_lock();
    int rc = tp_flush_locked();
    tp_unlock();
    return rc;
}

/* An unsolicited message (seq 0). */
static void tp_unsolicited(const Heapd__DaemonMsg *m)
{
    if (m->body_case == HEAPD__DAEMON_MSG__BODY_FLUSH)
        atomic_fetch_add(&tp_flush_gen, 1);
    else if (m->body_case == HEAPD__DAEMON_MSG__BODY_PRESSURE)
        hdc_pressure_note(m->pressure->level, m->pressure->bytes_wanted);
}

static tp_ahead_t *tp_ahead_by_seq(uint64_t seq)
{
    for (unsigned i = 0; seq && i < TP_AHEAD_MAX; i++)
        if (tp_ahead[i].token && tp_ahead[i].seq == seq && !tp_ahead[i].done)
            return &tp_ahead[i];
    return NULL;
}

static void tp_ahead_free(tp_ahead_t *a)
{
    *a = (tp_ahead_t){0};
    tp_ahead_n--;
}

/* A reply (seq != 0) that is not the one a synchronous call waits for: a
 * refill submitted ahead gets it; anything else is a stale reply to an
 * abandoned request, skipped. */
static void tp_route(const Heapd__DaemonMsg *m)
{
    tp_ahead_t *a = tp_ahead_by_seq(m->seq);
    if (!a)
        return;
    a->done = true;
    if (m->body_case == HEAPD__DAEMON_MSG__BODY_SPANS && m->spans->n_span_ids >= 1 &&
        m->spans->n_span_ids <= HD_MAX_BATCH) {
        a->n = (unsigned)m->spans->n_span_ids;
        memcpy(a->ids, m->spans->span_ids, a->n * sizeof a->ids[0]);
    } else {
        a->err = m->body_case == HEAPD__DAEMON_MSG__BODY_ERROR ? tp_errno_from_daemon(m->error->err) : EPROTO;
    }
    if (a->orphan) {                 /* nobody will collect it: the spans go back */
        uint32_t ids[HD_MAX_BATCH];
        unsigned n = a->n;
        memcpy(ids, a->ids, n * sizeof ids[0]);
        tp_ahead_free(a);
        tp_release_locked(ids, n);
    }
}

int tp_listen_fd_locked(void)
{
    return !tp_be && atomic_load(&hdc_state) == HDC_ATTACHED ? tp_fd : -1;
}

void tp_drain_locked(void)
{
    while (tp_listen_fd_locked() >= 0) {
        struct iovec iov = {tp_rbuf, sizeof tp_rbuf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        ssize_t r = recvmsg(tp_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (r <= 0 || (mh.msg_flags & MSG_TRUNC)) {
            tp_broken();
            return;
        }
        tp_arena_top = 0;
        Heapd__DaemonMsg *m = heapd__daemon_msg__unpack(&tp_pballoc, (size_t)r, tp_rbuf);
        if (!m) {
            tp_broken();
            return;
        }
        if (m->seq == 0)
            tp_unsolicited(m);
        else
            tp_route(m);             /* a refill ahead, or a stale reply */
    }
}

/* One synchronous call: pending batches + req, then the reply with req's
 * seq (into the arena, valid until the next call). NULL with errno. */
static Heapd__DaemonMsg *tp_call_locked(Heapd__ClientMsg *req)
{
    if (tp_ready_locked() < 0)
        return NULL;
    req->seq = ++tp_seq;
    tp_pkt_t pk[3];
    unsigned n = tp_pack_pending(pk);
    pk[n] = (tp_pkt_t){tp_sbuf[2], tp_pack(req, tp_sbuf[2])};
    if (pk[n].len == 0) {
        errno = EINVAL;
        return NULL;
    }
    n++;
    ssize_t len;
    if (tp_have_ring) {
        len = ur_exchange(pk, n, true);
    } else {
        len = 0;
        for (unsigned i = 0; i < n && len == 0; i++)
            len = plain_send(&pk[i]);
        if (len == 0)
            len = plain_recv();
    }
    tp_drop_pending();
    for (;;) {
        if (len < 0)
            break;
        tp_arena_top = 0;
        Heapd__DaemonMsg *m = heapd__daemon_msg__unpack(&tp_pballoc, (size_t)len, tp_rbuf);
        if (!m)
            break;                   /* a malformed reply: the stream cannot be trusted */
        if (m->seq == req->seq)
            return m;
        if (m->seq == 0)
            tp_unsolicited(m);
        else
            tp_route(m);             /* a refill ahead, or a stale reply */
        len = tp_have_ring ? ur_exchange(NULL, 0, true) : plain_recv();
    }
    tp_broken();
    return NULL;
}

int tp_refill(unsigned sizeclass, unsigned count, uint32_t *ids)
{
    if (count == 0 || count > HD_MAX_BATCH) {
        errno = EINVAL;
        return -1;
    }
    tp_lock();
    int rc = -1;
    if (tp_be) {
        tp_flush_locked();
        rc = tp_be->refill(tp_be->ctx, sizeclass, count, ids);
        if (rc < 0) {
            errno = -rc;
            rc = -1;
        }
        tp_unlock();
        return rc;
    }
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = sizeclass;
    rf.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    Heapd__DaemonMsg *r = tp_call_locked(&m);
    if (!r) {
        /* errno set */
    } else if (r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR) {
        errno = tp_errno_from_daemon(r->error->err);
    } else if (r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS && r->spans->n_span_ids >= 1 &&
               r->spans->n_span_ids <= count) {
        memcpy(ids, r->spans->span_ids, r->spans->n_span_ids * sizeof *ids);
        rc = (int)r->spans->n_span_ids;
    } else {
        errno = EPROTO;
    }
    tp_unlock();
    return rc;
}

int tp_alloc_large(uint64_t pages, uint64_t align_pages, bool zero, uint32_t *id)
{
    tp_lock();
    int rc = -1;
    if (tp_be) {
        tp_flush_locked();
        rc = tp_be->alloc_large(tp_be->ctx, pages, align_pages, zero, id);
        if (rc < 0) {
            errno = -rc;
            rc = -1;
        }
        tp_unlock();
        return rc;
    }
    Heapd__AllocLarge al = HEAPD__ALLOC_LARGE__INIT;
    al.pages = pages;
    al.align_pages = align_pages;
    al.zero = zero;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ALLOC_LARGE;
    m.alloc_large = &al;
    Heapd__DaemonMsg *r = tp_call_locked(&m);
    if (!r) {
        /* errno set */
    } else if (r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR) {
        errno = tp_errno_from_daemon(r->error->err);
    } else if (r->body_case == HEAPD__DAEMON_MSG__BODY_SPANS && r->spans->n_span_ids == 1) {
        *id = r->spans->span_ids[0];
        rc = 0;
    } else {
        errno = EPROTO;
    }
    tp_unlock();
    return rc;
}

/* A call whose answer is Ack or Error: 0, or -1 with errno. tp_lock held. */
static int tp_call_ack_locked(Heapd__ClientMsg *m)
{
    if (tp_be) {
        errno = EOPNOTSUPP;
        return -1;
    }
    Heapd__DaemonMsg *r = tp_call_locked(m);
    if (!r)
        return -1;                   /* errno set */
    if (r->body_case == HEAPD__DAEMON_MSG__BODY_ACK)
        return 0;
    errno = r->body_case == HEAPD__DAEMON_MSG__BODY_ERROR ? tp_errno_from_daemon(r->error->err) : EPROTO;
    return -1;
}

static int tp_call_ack(Heapd__ClientMsg *m)
{
    tp_lock();
    int rc = tp_call_ack_locked(m);
    int e = errno;
    tp_unlock();
    errno = e;
    return rc;
}

int tp_set_quota_locked(uint64_t bytes)
{
    Heapd__SetQuota q = HEAPD__SET_QUOTA__INIT;
    q.bytes = bytes;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_QUOTA;
    m.set_quota = &q;
    return tp_call_ack_locked(&m);
}

int tp_set_quota(uint64_t bytes)
{
    Heapd__SetQuota q = HEAPD__SET_QUOTA__INIT;
    q.bytes = bytes;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_SET_QUOTA;
    m.set_quota = &q;
    return tp_call_ack(&m);
}

int tp_root_update(const char *name, uint64_t offset, bool cas, uint64_t expected)
{
    Heapd__RootUpdate u = HEAPD__ROOT_UPDATE__INIT;
    u.name = (char *)name;
    u.offset = offset;
    u.cas = cas;
    u.expected = expected;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_ROOT_UPDATE;
    m.root_update = &u;
    return tp_call_ack(&m);
}

int tp_fork_begin(void)
{
    Heapd__ForkBegin b = HEAPD__FORK_BEGIN__INIT;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_BEGIN;
    m.fork_begin = &b;
    return tp_call_ack(&m);
}

int tp_fork_done(pid_t pid)
{
    Heapd__ForkDone f = HEAPD__FORK_DONE__INIT;
    f.pid = (int32_t)pid;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_FORK_DONE;
    m.fork_done = &f;
    return tp_call_ack(&m);
}

/* Async batches are kept only while there is someone to send them to. */
static bool tp_may_queue(void)
{
    int st = atomic_load(&hdc_state);
    return tp_be || st == HDC_ATTACHED || st == HDC_FORKED;
}

void tp_release_locked(const uint32_t *ids, unsigned n)
{
    for (unsigned i = 0; i < n && tp_may_queue(); i++) {
        if (i == n / 2)
            HDC_CRASHPOINT("release");    /* half the batch queued, the rest not */
        tp_rel.ids[tp_rel.n++] = ids[i];
        tp_rel.pages += ids[i] < hdc_seg.npages ? hdc_seg.spans[ids[i]].npages : 0;
        if (tp_rel.n == HD_MAX_BATCH || tp_rel.pages >= TP_SEND_PAGES)
            tp_flush_locked();
    }
}

void tp_release(const uint32_t *ids, unsigned n)
{
    tp_lock();
    tp_release_locked(ids, n);
    tp_unlock();
}

int tp_free_large(uint32_t id, uint32_t gen, uint32_t npages)
{
    int rc = 0;
    tp_lock();
    if (tp_may_queue()) {
        for (unsigned i = 0; i < tp_fl.n; i++)
            if (tp_fl.ids[i] == id && tp_fl.gens[i] == gen)
                rc = -1;
        if (rc == 0) {
            tp_fl.ids[tp_fl.n] = id;
            tp_fl.gens[tp_fl.n] = gen;
            tp_fl.n++;
            tp_fl.pages += npages;
            if (tp_fl.n == HD_MAX_BATCH || tp_fl.pages >= TP_SEND_PAGES)
                tp_flush_locked();
        }
    }
    tp_unlock();
    return rc;
}

bool tp_large_queued(uint32_t id, uint32_t gen)
{
    bool q = false;
    tp_lock();
    for (unsigned i = 0; i < tp_fl.n && !q; i++)
        q = tp_fl.ids[i] == id && tp_fl.gens[i] == gen;
    tp_unlock();
    return q;
}

/* ---- connect: Hello / Welcome ------------------------------------------------------ */

/* Receive the Welcome (or an Error) and its fds. */
static int tp_recv_welcome(int fd, tp_welcome_t *w, int fds[3])
{
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(4 * sizeof(int))];
    } cm;
    struct iovec iov = {tp_rbuf, sizeof tp_rbuf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf,
                        .msg_controllen = sizeof cm.buf};
    ssize_t len;
    while ((len = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    int got[4], ngot = 0;
    for (struct cmsghdr *c = len >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && ngot < 4; i++)
            memcpy(&got[ngot++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    int err = 0;
    Heapd__DaemonMsg *m = NULL;
    if (len < 0) {
        err = errno == ECONNRESET ? EPIPE : errno;
    } else if (len == 0) {
        err = EPIPE;                 /* closed without a word */
    } else if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        err = EPROTO;
    } else {
        tp_arena_top = 0;
        m = heapd__daemon_msg__unpack(&tp_pballoc, (size_t)len, tp_rbuf);
        if (!m) {
            err = EPROTO;
        } else if (m->body_case == HEAPD__DAEMON_MSG__BODY_ERROR) {
            err = tp_errno_from_daemon(m->error->err);
            if (err == EPROTONOSUPPORT)
                fprintf(stderr, "heapd: the daemon refused this client: %s\n",
                        m->error->message ? m->error->message : "(no message)");
        } else if (m->body_case != HEAPD__DAEMON_MSG__BODY_WELCOME || ngot < 2 || ngot > 3) {
            err = EPROTO;
        } else if (m->welcome->version != HD_PROTO_VERSION) {
            fprintf(stderr, "heapd: the daemon speaks protocol %u, this client %u\n",
                    m->welcome->version, HD_PROTO_VERSION);
            err = EPROTONOSUPPORT;
        }
    }
    if (err) {
        for (int i = 0; i < ngot; i++)
            close(got[i]);
        errno = err;
        return -1;
    }
    *w = (tp_welcome_t){m->welcome->version, m->welcome->client_id, m->welcome->map_base,
                        m->welcome->heap_size, m->welcome->meta_size, m->welcome->slot};
    fds[0] = got[0];
    fds[1] = got[1];
    fds[2] = ngot > 2 ? got[2] : -1;      /* our stats slot's memfd (none: no slot) */
    return 0;
}

int tp_connect_locked(const char *path, tp_welcome_t *w, int fds[3])
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int rc;
    while ((rc = connect(fd, (struct sockaddr *)&sa, sizeof sa)) < 0 && errno == EINTR)
        ;
    if (rc < 0)
        goto fail;

    char name[TP_NAME_MAX];
    snprintf(name, sizeof name, "%s", program_invocation_short_name);
    Heapd__Hello hello = HEAPD__HELLO__INIT;
    hello.version = HD_PROTO_VERSION;
    hello.pid = (int32_t)getpid();
    hello.name = name;
    hello.reclaim_at_exit = hdc_reclaim_at_exit;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;                       /* the Hello expects an answer */
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &hello;
    tp_pkt_t pk = {tp_sbuf[2], tp_pack(&m, tp_sbuf[2])};
    int sfd = tp_fd;
    tp_fd = fd;                      /* plain_send writes to tp_fd */
    rc = plain_send(&pk);
    tp_fd = sfd;
    if (rc < 0 && errno != EPIPE && errno != ECONNRESET)
        goto fail;
    /* Also when the send failed: a daemon that refuses a peer (EACCES) sends
     * its Error at accept and closes; the Error is still ours to read. */
    if (tp_recv_welcome(fd, w, fds) < 0)
        goto fail;

    tp_teardown();                   /* any previous connection (there should be none) */
    tp_fd = fd;
    tp_seq = 1;
    const char *nu = getenv("HEAPD_NO_URING");
    if (!(nu && strcmp(nu, "1") == 0) && io_uring_queue_init(TP_RING_DEPTH, &tp_ring, 0) == 0)
        tp_have_ring = true;
    atomic_store(&tp_kind, tp_have_ring ? 2 : 1);
    return 0;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* ---- the unit tests' stand-in daemon ------------------------------------------------ */

void hdc_test_install(const tp_backend_t *be, const hd_seg_t *seg, uint32_t client_id)
{
    hdc_hooks_init();
    tp_lock();
    if (tp_be && !be)
        tp_flush_locked();
    mc_forget_all_locked(false);
    mc_stats_reset_locked();         /* each stand-in starts with no memstats counts */
    st_forget_slot();
    tp_drop_pending();
    tp_drop_ahead();
    tp_be = be;
    if (be) {
        hdc_seg = *seg;
        hdc_client_id = client_id;
        (void)mc_owners_map(seg->npages);   /* without it frees take the CAS path, as in a fresh cache */
        atomic_store(&hdc_state, HDC_ATTACHED);
        atomic_store(&tp_kind, 3);
    } else {
        memset(&hdc_seg, 0, sizeof hdc_seg);
        atomic_store(&hdc_state, HDC_DETACHED);
        atomic_store(&tp_kind, 0);
    }
    atomic_fetch_add(&hdc_epoch, 1);
    tp_unlock();
}

/* ---- refills ahead ------------------------------------------------------------------- */

unsigned tp_refills_in_flight(void)
{
    tp_lock();
    unsigned n = tp_ahead_n;
    tp_unlock();
    return n;
}

static tp_ahead_t *tp_ahead_by_token(uint64_t token)
{
    for (unsigned i = 0; token && i < TP_AHEAD_MAX; i++)
        if (tp_ahead[i].token == token)
            return &tp_ahead[i];
    return NULL;
}

uint64_t tp_refill_submit(unsigned sizeclass, unsigned count)
{
    if (count == 0 || count > HD_MAX_BATCH)
        return 0;
    tp_lock();
    tp_ahead_t *a = NULL;
    for (unsigned i = 0; i < TP_AHEAD_MAX && !a; i++)
        if (!tp_ahead[i].token)
            a = &tp_ahead[i];
    if (!a || (!tp_be && atomic_load(&hdc_state) != HDC_ATTACHED)) {
        tp_unlock();
        return 0;                    /* full, or not connected: refill synchronously when due */
    }
    uint64_t token = ++tp_ahead_tokens;
    if (tp_be) {                     /* the unit tests' stand-in answers at once */
        tp_flush_locked();
        *a = (tp_ahead_t){.token = token, .seq = 0, .done = true};
        tp_ahead_n++;
        int rc = tp_be->refill(tp_be->ctx, sizeclass, count, a->ids);
        if (rc < 0)
            a->err = -rc;
        else
            a->n = (unsigned)rc;
        tp_unlock();
        return token;
    }
    Heapd__Refill rf = HEAPD__REFILL__INIT;
    rf.sizeclass = sizeclass;
    rf.count = count;
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.body_case = HEAPD__CLIENT_MSG__BODY_REFILL;
    m.refill = &rf;
    m.seq = tp_seq + 1;
    tp_pkt_t req = {tp_sbuf[2], tp_pack(&m, tp_sbuf[2])};
    if (req.len == 0 || tp_flush_locked() < 0) {   /* pending batches first, in order */
        tp_unlock();
        return 0;
    }
    ssize_t r;
    while ((r = send(tp_fd, req.buf, req.len, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EINTR)
        ;
    if (r != (ssize_t)req.len) {
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            tp_broken();
        tp_unlock();
        return 0;                    /* the socket is full: nothing sent */
    }
    tp_seq++;
    *a = (tp_ahead_t){.token = token, .seq = m.seq};
    tp_ahead_n++;
    tp_unlock();
    return token;
}

/* Read one packet, blocking, and file it (unsolicited, or a reply for a
 * slot). -1 when the connection broke. */
static int tp_read_one_locked(void)
{
    ssize_t len = tp_have_ring ? ur_exchange(NULL, 0, true) : plain_recv();
    if (len < 0)
        return tp_broken();
    tp_arena_top = 0;
    Heapd__DaemonMsg *m = heapd__daemon_msg__unpack(&tp_pballoc, (size_t)len, tp_rbuf);
    if (!m)
        return tp_broken();
    if (m->seq == 0)
        tp_unsolicited(m);
    else
        tp_route(m);
    return 0;
}

static uint64_t tp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int tp_refill_collect(uint64_t token, bool wait, uint32_t *ids, uint64_t *waited_ns)
{
    if (waited_ns)
        *waited_ns = 0;
    tp_lock();
    tp_ahead_t *a = tp_ahead_by_token(token);
    if (a && !a->done)
        tp_drain_locked();           /* it may be waiting in the socket */
    a = tp_ahead_by_token(token);
    if (a && !a->done && wait) {
        uint64_t t0 = tp_now_ns();
        while ((a = tp_ahead_by_token(token)) && !a->done)
            if (tp_read_one_locked() < 0)
                break;
        if (waited_ns)
            *waited_ns = tp_now_ns() - t0;
        a = tp_ahead_by_token(token);
    }
    int rc;
    if (!a) {
        errno = ECANCELED;           /* dropped with the connection (or never sent) */
        rc = -1;
    } else if (!a->done) {
        rc = 0;
    } else if (a->err) {
        errno = a->err;
        tp_ahead_free(a);
        rc = -1;
    } else {
        rc = (int)a->n;
        memcpy(ids, a->ids, a->n * sizeof ids[0]);
        tp_ahead_free(a);
    }
    tp_unlock();
    return rc;
}

void tp_refill_cancel_locked(uint64_t token)
{
    tp_ahead_t *a = tp_ahead_by_token(token);
    if (!a)
        return;
    if (!a->done) {
        a->orphan = true;            /* tp_route releases its spans when they come */
        return;
    }
    uint32_t ids[HD_MAX_BATCH];
    unsigned n = a->err ? 0 : a->n;
    memcpy(ids, a->ids, n * sizeof ids[0]);
    tp_ahead_free(a);
    tp_release_locked(ids, n);
}

void tp_refill_cancel(uint64_t token)
{
    tp_lock();
    tp_refill_cancel_locked(token);
    tp_unlock();
}

/* Before a graceful close: every refill still in flight is waited for, and
 * what came for slots nobody will collect now (the caches are being given
 * back) is released. */
static void tp_ahead_settle_locked(void)
{
    for (unsigned i = 0; i < TP_AHEAD_MAX; i++)
        if (tp_ahead[i].token)
            tp_refill_cancel_locked(tp_ahead[i].token);
    while (tp_ahead_n && !tp_be && atomic_load(&hdc_state) == HDC_ATTACHED)
        if (tp_read_one_locked() < 0)
            break;
}
