/* memlimit.c: the soft and hard limits, quotas and their accounts, the mheap
 * admit/alloc/free hooks, and the Flush and Pressure rounds they send. See
 * memlimit.h for the rules. */
#define _GNU_SOURCE
#include "memlimit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"
#include "mcentral.h"
#include "rpc.h"

#define PAGE HD_PAGE_SIZE
#define SWEEP_ALL_MIN_MS 10u            /* at most one full sweep this often on the refusal path */

static inline uint64_t pages_for(uint64_t bytes) { return (bytes + PAGE - 1) / PAGE; }

uint64_t limits_committed(const daemon_t *d)
{
    const pagealloc_t *pa = &d->heap.pa;
    return (pa->grown - pa->scav_pages) * PAGE + d->seg.meta_committed;
}

/* Free pages that still have backing: what scavenging can release. */
uint64_t limits_free_committed_pages(const daemon_t *d)
{
    return d->heap.pa.free_pages - d->heap.pa.scav_pages;
}

/* ---- books -------------------------------------------------------------------------- */

void limits_books_store(daemon_t *d)
{
    hd_header_t *h = d->seg.hdr;
    limits_t *s = &d->lim;
    uint64_t c = limits_committed(d);
    if (s->soft_limit && c > s->soft_limit && c - s->soft_limit > s->overshoot_max)
        s->overshoot_max = c - s->soft_limit;
#define ST(f, v) hd_book_set(h, &h->f, (v))
    ST(soft_limit, s->soft_limit);
    ST(hard_limit, s->hard_limit);
    ST(committed_bytes, c);
    ST(released_bytes, d->heap.pa.scav_pages * PAGE);
    ST(overshoot_max, s->overshoot_max);
    ST(scavenged_total, d->scav.scavenged_total);
    ST(scavenge_runs, d->scav.scavenge_runs);
    ST(pressure_sent, s->pressure_sent);
    ST(flush_sent, s->flush_sent);
    ST(hard_limit_refusals, s->hard_refusals);
    ST(resident_gap_bytes, d->scav.resident_gap);
#undef ST
}

void limits_books_publish(daemon_t *d)
{
    limits_books_store(d);
    mheap_publish(&d->heap);
}

/* ---- messages to clients ----------------------------------------------------------------- */

/* Unsolicited messages are advice, queued per client and coalesced (conn.h:
 * a paused client is skipped, never cut off); flush_sent and pressure_sent
 * count those written. */
static void send_flush(daemon_t *d, client_t *c) { (void)client_post_flush(d, c); }

static void send_pressure(daemon_t *d, client_t *c, unsigned level, uint64_t bytes)
{
    (void)client_post_pressure(d, c, level, bytes);
}

/* Flush to every client at most once per FLUSH_INTERVAL_MS, Pressure at most
 * once per PRESSURE_INTERVAL_MS per level. Returns whether Pressure went out. */
static bool pressure_round(daemon_t *d, unsigned level, uint64_t bytes)
{
    limits_t *s = &d->lim;
    uint64_t now = scav_now_ms();
    bool flush = !s->last_flush_ms || now - s->last_flush_ms >= FLUSH_INTERVAL_MS;
    bool press = !s->last_round_ms[level] || now - s->last_round_ms[level] >= PRESSURE_INTERVAL_MS;
    if (flush)
        s->last_flush_ms = now;
    if (press)
        s->last_round_ms[level] = now;
    for (client_t *c = d->clients; c && (flush || press); c = c->next) {
        if (flush)
            send_flush(d, c);
        if (press)
            send_pressure(d, c, level, bytes);
    }
    return press;
}

static client_t *client_by_id(daemon_t *d, uint32_t id)
{
    for (client_t *c = d->clients; c; c = c->next)
        if (c->id == id)
            return c;
    return NULL;
}

/* A hard bound holds: tell the requester (always, ahead of its ENOMEM) and,
 * for the heap-wide limit, everyone else (rate limited). */
static void refuse(daemon_t *d, uint32_t owner, uint64_t bytes, bool everyone)
{
    limits_t *s = &d->lim;
    s->hard_refusals++;
    uint64_t flushed = s->flush_sent, pressed = s->pressure_sent;
    if (everyone)
        pressure_round(d, PRESSURE_HARD, bytes);
    client_t *c = client_by_id(d, owner);
    if (c && s->flush_sent == flushed)
        send_flush(d, c);
    if (c && s->pressure_sent == pressed)
        send_pressure(d, c, PRESSURE_HARD, bytes);
    limits_books_publish(d);
}

static limits_account_t *acct_find(const limits_t *s, uint32_t id);

/* Soft limit: over 95% with nothing left to release → ask clients. A client
 * whose allocation got us here (owner != 0) is also told to flush every
 * time, in its reply's wake: it is the one growing, and it reads the Flush
 * before its reply, so its next slow path gives its cached spans back. */
void limits_soft_check(daemon_t *d, uint32_t owner)
{
    limits_t *s = &d->lim;
    if (!s->soft_limit)
        return;
    uint64_t c = limits_committed(d), goal = s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT;
    if (c <= goal || (limits_free_committed_pages(d) > 0 && !d->scav.disabled))
        return;     /* under, or the scavenger still has something to release */
    uint64_t flushed = s->flush_sent;
    pressure_round(d, c > s->soft_limit ? PRESSURE_OVER : PRESSURE_NEAR, c - goal);
    limits_account_t *a;
    client_t *r;
    uint64_t t;
    if (owner && s->flush_sent == flushed && (a = acct_find(s, owner)) != NULL &&
        (t = scav_now_ms()) - a->last_flush_ms >= FLUSH_INTERVAL_MS && (r = client_by_id(d, owner)) != NULL) {
        a->last_flush_ms = t;
        send_flush(d, r);
    }
}

/* ---- quota accounts (sorted by client id) ------------------------------------------------ */

static limits_account_t *acct_find(const limits_t *s, uint32_t id)
{
    unsigned lo = 0, hi = s->nacct;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (s->acct[mid].client_id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nacct && s->acct[lo].client_id == id ? &s->acct[lo] : NULL;
}

static limits_account_t *acct_get(limits_t *s, uint32_t id)
{
    limits_account_t *a = acct_find(s, id);
    if (a)
        return a;
    if (s->nacct == s->acct_cap) {
        unsigned cap = s->acct_cap ? s->acct_cap * 2 : 16;
        void *m = realloc(s->acct, cap * sizeof(*s->acct));
        if (!m)
            return NULL;
        s->acct = m;
        s->acct_cap = cap;
    }
    unsigned i = 0;
    while (i < s->nacct && s->acct[i].client_id < id)
        i++;
    memmove(&s->acct[i + 1], &s->acct[i], (s->nacct - i) * sizeof(*s->acct));
    s->acct[i] = (limits_account_t){.client_id = id};
    s->nacct++;
    return &s->acct[i];
}

int limits_set_quota(daemon_t *d, uint32_t client_id, uint64_t bytes)
{
    limits_account_t *a = acct_get(&d->lim, client_id);
    if (!a)
        return -ENOMEM;
    a->quota = bytes;
    return 0;
}

uint64_t limits_charged(const daemon_t *d, uint32_t client_id)
{
    const limits_account_t *a = acct_find(&d->lim, client_id);
    return a ? a->charged * PAGE : 0;
}

uint64_t limits_quota(const daemon_t *d, uint32_t client_id)
{
    const limits_account_t *a = acct_find(&d->lim, client_id);
    return a ? a->quota : 0;
}

void limits_client_gone(daemon_t *d, uint32_t client_id)
{
    limits_t *s = &d->lim;
    limits_account_t *a = acct_find(s, client_id);
    if (!a)
        return;
    unsigned i = (unsigned)(a - s->acct);
    memmove(&s->acct[i], &s->acct[i + 1], (s->nacct - i - 1) * sizeof(*s->acct));
    s->nacct--;
}

/* ---- mheap hooks ----------------------------------------------------------------------------- */

/* Worst-case new commitment of a span of npages: its pages, a page each of
 * span table, slot and tiny area, and its pagemap entries. */
static uint64_t span_need(uint64_t npages)
{
    return npages * PAGE + SCAV_META_ALLOWANCE + hd_align_up(npages * sizeof(uint32_t), 4096);
}

/* Make committed + need fit under limit: release free pages; when that is
 * not enough, sweep the central lists (spans whose objects were all freed
 * go back to the page allocator: what a GC cycle does for Go at its limit;
 * at most once per SWEEP_ALL_MIN_MS) and release again. Returns whether it
 * fits. */
/* sweep_all, at most once per SWEEP_ALL_MIN_MS (the refusal paths may be hit
 * in a loop). Returns whether it swept. */
static bool sweep_all_limited(daemon_t *d)
{
    uint64_t t = scav_now_ms();
    if (t - d->lim.last_sweep_ms < SWEEP_ALL_MIN_MS)
        return false;
    d->lim.last_sweep_ms = t;
    scav_sweep_all(d);
    return true;
}

static bool make_room(daemon_t *d, uint64_t need, uint64_t limit)
{
    uint64_t c = limits_committed(d);
    if (c + need <= limit)
        return true;
    scav_release_pages(d, pages_for(c + need - limit), PA_CHUNK_PAGES);
    c = limits_committed(d);
    if (c + need <= limit)
        return true;
    if (!sweep_all_limited(d))
        return false;
    c = limits_committed(d);
    if (c + need > limit)
        scav_release_pages(d, pages_for(c + need - limit), PA_CHUNK_PAGES);
    return limits_committed(d) + need <= limit;
}

bool limits_chunk_fits(daemon_t *d)
{
    limits_t *s = &d->lim;
    return !s->soft_limit || make_room(d, 2 * span_need(HD_CHUNK_PAGES), s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT);
}

static int hook_admit(void *ctx, uint64_t npages, uint32_t owner)
{
    daemon_t *d = ctx;
    limits_t *s = &d->lim;
    uint64_t need = span_need(npages);

    limits_account_t *a = owner ? acct_find(s, owner) : NULL;
    if (a && a->quota && (a->charged + npages) * PAGE > a->quota) {
        sweep_all_limited(d);           /* empty central spans it was charged for go back */
        if ((a->charged + npages) * PAGE > a->quota) {
            refuse(d, owner, (a->charged + npages) * PAGE - a->quota, false);
            return -ENOMEM;
        }
    }

    /* What the kernel really holds: released pages a client dirtied count too.
     * Over the hard limit, punch them back first; refuse while still over. */
    if (s->hard_limit && d->scav.resident_bytes > s->hard_limit) {
        scav_resident_check(d, true);
        if (d->scav.resident_bytes > s->hard_limit) {
            refuse(d, owner, d->scav.resident_bytes - s->hard_limit, true);
            return -ENOMEM;
        }
    }
    if (s->hard_limit && !make_room(d, need, s->hard_limit)) {
        refuse(d, owner, limits_committed(d) + need - s->hard_limit, true);
        return -ENOMEM;
    }
    if (s->soft_limit)                  /* Go's scavenge assist; over the limit is allowed */
        make_room(d, need, s->soft_limit);
    return 0;
}

static void hook_alloc(void *ctx, uint32_t id, uint64_t npages, uint32_t owner)
{
    daemon_t *d = ctx;
    limits_t *s = &d->lim;
    if (owner && id < s->charge_len) {
        limits_account_t *a = acct_get(s, owner);
        if (a) {
            a->charged += npages;
            s->charge[id] = owner;
        }
    }
    limits_books_store(d);                     /* mheap publishes */
    limits_soft_check(d, owner);
}

static void hook_free(void *ctx, uint32_t id, uint64_t npages)
{
    daemon_t *d = ctx;
    limits_t *s = &d->lim;
    if (id < s->charge_len && s->charge[id]) {
        limits_account_t *a = acct_find(s, s->charge[id]);
        if (a)
            a->charged -= npages <= a->charged ? npages : a->charged;
        s->charge[id] = 0;
    }
}

/* ---- set-up and control ------------------------------------------------------------------------- */

int limits_init(daemon_t *d, uint64_t soft, uint64_t hard)
{
    limits_t *s = &d->lim;
    memset(s, 0, sizeof(*s));
    if (soft && hard && hard < soft)
        return -EINVAL;
    s->soft_limit = soft;
    s->hard_limit = hard;
    s->charge_len = d->seg.npages;
    void *m = mmap(NULL, s->charge_len * sizeof(uint32_t), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        s->charge_len = 0;
        return -ENOMEM;
    }
    s->charge = m;
    d->heap.admit = hook_admit;
    d->heap.on_alloc = hook_alloc;
    d->heap.on_free = hook_free;
    d->heap.limits_ctx = d;
    limits_books_publish(d);
    return 0;
}

void limits_destroy(daemon_t *d)
{
    limits_t *s = &d->lim;
    if (s->charge)
        munmap(s->charge, s->charge_len * sizeof(uint32_t));
    free(s->acct);
    d->heap.admit = NULL;
    d->heap.on_alloc = NULL;
    d->heap.on_free = NULL;
    memset(s, 0, sizeof(*s));
}

int limits_set(daemon_t *d, uint64_t soft, uint64_t hard)
{
    limits_t *s = &d->lim;
    if (soft && hard && hard < soft)
        return -EINVAL;
    s->soft_limit = soft;
    s->hard_limit = hard;
    /* Act on a lower limit now, not at the next tick: down to 95% of the soft
     * limit (Go's goal), or under the hard one. */
    uint64_t c = limits_committed(d), target = UINT64_MAX;
    if (soft)
        target = soft / 100 * SCAV_LIMIT_GOAL_PCT;
    if (hard && hard < target)
        target = hard;
    if (c > target) {
        scav_release_pages(d, pages_for(c - target), PA_CHUNK_PAGES);
        if (limits_committed(d) > target) {
            scav_sweep_all(d);
            c = limits_committed(d);
            if (c > target)
                scav_release_pages(d, pages_for(c - target), PA_CHUNK_PAGES);
        }
        d->scav.scavenge_runs++;
    }
    memset(s->last_round_ms, 0, sizeof(s->last_round_ms));   /* a new limit: tell clients now */
    s->last_flush_ms = 0;
    limits_soft_check(d, 0);
    limits_books_publish(d);
    scav_kick(d);
    daemon_log(d, "limits: soft %llu, hard %llu bytes; committed %llu", (unsigned long long)soft,
               (unsigned long long)hard, (unsigned long long)limits_committed(d));
    return 0;
}

void limits_get(const daemon_t *d, limits_info_t *out)
{
    const limits_t *s = &d->lim;
    uint64_t c = limits_committed(d), over = s->overshoot_max;
    if (s->soft_limit && c > s->soft_limit && c - s->soft_limit > over)
        over = c - s->soft_limit;
    *out = (limits_info_t){
        .soft_limit = s->soft_limit,
        .hard_limit = s->hard_limit,
        .committed = c,
        .released = d->heap.pa.scav_pages * PAGE,
        .overshoot_max = over,
        .scavenged_total = d->scav.scavenged_total,
        .scavenge_runs = d->scav.scavenge_runs,
        .pressure_sent = s->pressure_sent,
        .flush_sent = s->flush_sent,
        .hard_limit_refusals = s->hard_refusals,
        .resident_gap = d->scav.resident_gap,
    };
}
