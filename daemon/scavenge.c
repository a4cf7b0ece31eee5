/* scavenge.c: the scavenger, the soft and hard limits, quotas, and the Flush
 * and Pressure messages they send. See scavenge.h for the rules. */
#define _GNU_SOURCE
#include "scavenge.h"

#include <errno.h>
#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>

#include "conn.h"
#include "daemon.h"
#include "heapd.pb-c.h"
#include "mcentral.h"
#include "rpc.h"

#define PAGE HD_PAGE_SIZE
#define UNSOLICITED_MAX_QUEUED 4096     /* bytes a client may leave unread before we skip it */
#define SWEEP_ALL_BUDGET (1u << 20)     /* spans: a full pass over the central lists */
#define SWEEP_ALL_MIN_MS 10u            /* at most one full sweep this often on the refusal path */
#define RETAIN_DECAY_MS 100u            /* retain_base moves half way down per this */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline uint64_t pages_for(uint64_t bytes) { return (bytes + PAGE - 1) / PAGE; }
static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

uint64_t limits_committed(const daemon_t *d)
{
    const pagealloc_t *pa = &d->heap.pa;
    return (pa->grown - pa->scav_pages) * PAGE + d->seg.meta_committed;
}

static uint64_t inuse_pages(const daemon_t *d) { return d->heap.pa.grown - d->heap.pa.free_pages; }

/* Free pages that still have backing: what scavenging can release. */
static uint64_t free_committed_pages(const daemon_t *d)
{
    return d->heap.pa.free_pages - d->heap.pa.scav_pages;
}

/* ---- books -------------------------------------------------------------------------- */

static void books_store(daemon_t *d)
{
    hd_header_t *h = d->seg.hdr;
    scav_t *s = &d->scav;
    uint64_t c = limits_committed(d);
    if (s->soft_limit && c > s->soft_limit && c - s->soft_limit > s->overshoot_max)
        s->overshoot_max = c - s->soft_limit;
#define ST(f, v) hd_book_set(h, &h->f, (v))
    ST(soft_limit, s->soft_limit);
    ST(hard_limit, s->hard_limit);
    ST(committed_bytes, c);
    ST(released_bytes, d->heap.pa.scav_pages * PAGE);
    ST(overshoot_max, s->overshoot_max);
    ST(scavenged_total, s->scavenged_total);
    ST(scavenge_runs, s->scavenge_runs);
    ST(pressure_sent, s->pressure_sent);
    ST(flush_sent, s->flush_sent);
    ST(hard_limit_refusals, s->hard_refusals);
#undef ST
}

static void books_publish(daemon_t *d)
{
    books_store(d);
    mheap_publish(&d->heap);
}

/* ---- releasing pages ------------------------------------------------------------------ */

/* Release up to max_pages free, unreleased pages (a candidate may be widened
 * to a whole huge page, so slightly more), quantum pages per search.
 * Returns the pages released. */
static uint64_t release_pages(daemon_t *d, uint64_t max_pages, uint64_t quantum)
{
    scav_t *s = &d->scav;
    pagealloc_t *pa = &d->heap.pa;
    uint64_t done = 0, base, n;
    if (s->disabled)
        return 0;
    while (done < max_pages && pa_scav_find(pa, min64(quantum, max_pages - done), &base, &n)) {
        int r = seg_decommit_pages(&d->seg, base, n);
        if (r < 0) {
            /* Nothing was marked: the pages stay committed and correct. */
            daemon_log(d, "scavenger: cannot punch holes in the heap (%s); scavenging is off", strerror(-r));
            s->disabled = true;
            break;
        }
        done += pa_mark_scavenged(pa, base, n);
    }
    s->scavenged_total += done * PAGE;
    return done;
}

uint64_t scavenge_bytes(daemon_t *d, uint64_t nbytes)
{
    uint64_t n = release_pages(d, pages_for(nbytes), PA_CHUNK_PAGES);
    if (n)
        books_publish(d);
    return n * PAGE;
}

/* Sweep every CENTRAL span once: empty ones go back to the page allocator. */
static void sweep_all(daemon_t *d) { mcentral_bg_sweep(&d->central, SWEEP_ALL_BUDGET); }

uint64_t scavenge_all(daemon_t *d)
{
    sweep_all(d);
    uint64_t n = release_pages(d, UINT64_MAX, PA_CHUNK_PAGES);
    d->scav.scavenge_runs++;
    books_publish(d);
    return n * PAGE;
}

/* ---- messages to clients ----------------------------------------------------------------- */

/* Unsolicited messages are advice: a client that has not read the last few
 * is skipped (never disconnected for it, and its socket never fills up with
 * them, which would make its next reply fail). */
static bool may_send(client_t *c)
{
    if (c->fd < 0 || !c->hello_done || c->closing)
        return false;
    int q = 0;
    return ioctl(c->fd, SIOCOUTQ, &q) != 0 || q <= UNSOLICITED_MAX_QUEUED;
}

static void send_flush(daemon_t *d, client_t *c)
{
    uint8_t buf[64];
    rpc_out_t out = {.buf = buf, .cap = sizeof(buf)};
    if (may_send(c) && rpc_encode_flush(&out) == 0 && client_send(c, out.buf, out.len, NULL, 0) == 0)
        d->scav.flush_sent++;
}

static void send_pressure(daemon_t *d, client_t *c, unsigned level, uint64_t bytes)
{
    Heapd__Pressure p = HEAPD__PRESSURE__INIT;
    p.level = level;
    p.bytes_wanted = bytes;
    Heapd__DaemonMsg m = HEAPD__DAEMON_MSG__INIT;
    m.body_case = HEAPD__DAEMON_MSG__BODY_PRESSURE;
    m.pressure = &p;
    uint8_t buf[64];
    if (!may_send(c) || heapd__daemon_msg__get_packed_size(&m) > sizeof(buf))
        return;
    size_t n = heapd__daemon_msg__pack(&m, buf);
    if (client_send(c, buf, n, NULL, 0) == 0)
        d->scav.pressure_sent++;
}

/* Flush to every client at most once per FLUSH_INTERVAL_MS, Pressure at most
 * once per PRESSURE_INTERVAL_MS per level. Returns whether Pressure went out. */
static bool pressure_round(daemon_t *d, unsigned level, uint64_t bytes)
{
    scav_t *s = &d->scav;
    uint64_t now = now_ms();
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
    scav_t *s = &d->scav;
    s->hard_refusals++;
    uint64_t flushed = s->flush_sent, pressed = s->pressure_sent;
    if (everyone)
        pressure_round(d, PRESSURE_HARD, bytes);
    client_t *c = client_by_id(d, owner);
    if (c && s->flush_sent == flushed)
        send_flush(d, c);
    if (c && s->pressure_sent == pressed)
        send_pressure(d, c, PRESSURE_HARD, bytes);
    books_publish(d);
}

static limits_account_t *acct_find(const scav_t *s, uint32_t id);

/* Soft limit: over 95% with nothing left to release → ask clients. A client
 * whose allocation got us here (owner != 0) is also told to flush every
 * time, in its reply's wake: it is the one growing, and it reads the Flush
 * before its reply, so its next slow path gives its cached spans back. */
static void soft_check(daemon_t *d, uint32_t owner)
{
    scav_t *s = &d->scav;
    if (!s->soft_limit)
        return;
    uint64_t c = limits_committed(d), goal = s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT;
    if (c <= goal || (free_committed_pages(d) > 0 && !s->disabled))
        return;     /* under, or the scavenger still has something to release */
    uint64_t flushed = s->flush_sent;
    pressure_round(d, c > s->soft_limit ? PRESSURE_OVER : PRESSURE_NEAR, c - goal);
    limits_account_t *a;
    client_t *r;
    uint64_t t;
    if (owner && s->flush_sent == flushed && (a = acct_find(s, owner)) != NULL &&
        (t = now_ms()) - a->last_flush_ms >= FLUSH_INTERVAL_MS && (r = client_by_id(d, owner)) != NULL) {
        a->last_flush_ms = t;
        send_flush(d, r);
    }
}

/* ---- quota accounts (sorted by client id) ------------------------------------------------ */

static limits_account_t *acct_find(const scav_t *s, uint32_t id)
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

static limits_account_t *acct_get(scav_t *s, uint32_t id)
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
    limits_account_t *a = acct_get(&d->scav, client_id);
    if (!a)
        return -ENOMEM;
    a->quota = bytes;
    return 0;
}

uint64_t limits_charged(const daemon_t *d, uint32_t client_id)
{
    const limits_account_t *a = acct_find(&d->scav, client_id);
    return a ? a->charged * PAGE : 0;
}

uint64_t limits_quota(const daemon_t *d, uint32_t client_id)
{
    const limits_account_t *a = acct_find(&d->scav, client_id);
    return a ? a->quota : 0;
}

void limits_client_gone(daemon_t *d, uint32_t client_id)
{
    scav_t *s = &d->scav;
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
    uint64_t t = now_ms();
    if (t - d->scav.last_sweep_ms < SWEEP_ALL_MIN_MS)
        return false;
    d->scav.last_sweep_ms = t;
    sweep_all(d);
    return true;
}

static bool make_room(daemon_t *d, uint64_t need, uint64_t limit)
{
    uint64_t c = limits_committed(d);
    if (c + need <= limit)
        return true;
    release_pages(d, pages_for(c + need - limit), PA_CHUNK_PAGES);
    c = limits_committed(d);
    if (c + need <= limit)
        return true;
    if (!sweep_all_limited(d))
        return false;
    c = limits_committed(d);
    if (c + need > limit)
        release_pages(d, pages_for(c + need - limit), PA_CHUNK_PAGES);
    return limits_committed(d) + need <= limit;
}

static int hook_admit(void *ctx, uint64_t npages, uint32_t owner)
{
    daemon_t *d = ctx;
    scav_t *s = &d->scav;
    uint64_t need = span_need(npages);

    limits_account_t *a = owner ? acct_find(s, owner) : NULL;
    if (a && a->quota && (a->charged + npages) * PAGE > a->quota) {
        sweep_all_limited(d);           /* empty central spans it was charged for go back */
        if ((a->charged + npages) * PAGE > a->quota) {
            refuse(d, owner, (a->charged + npages) * PAGE - a->quota, false);
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
    scav_t *s = &d->scav;
    if (owner && id < s->charge_len) {
        limits_account_t *a = acct_get(s, owner);
        if (a) {
            a->charged += npages;
            s->charge[id] = owner;
        }
    }
    books_store(d);                     /* mheap publishes */
    soft_check(d, owner);
}

static void hook_free(void *ctx, uint32_t id, uint64_t npages)
{
    daemon_t *d = ctx;
    scav_t *s = &d->scav;
    if (id < s->charge_len && s->charge[id]) {
        limits_account_t *a = acct_find(s, s->charge[id]);
        if (a)
            a->charged -= npages <= a->charged ? npages : a->charged;
        s->charge[id] = 0;
    }
}

/* ---- goals and the background timer ---------------------------------------------------------- */

/* retain_base follows pages in use up at once, and down half the gap per
 * RETAIN_DECAY_MS: memory freed and allocated again within a few hundred
 * milliseconds is not scavenged in between (Go uses the in-use bytes of the
 * last GC cycle for this), and a heap that stays small is back to 110% of
 * its size about a second after the frees. */
static void retain_update(daemon_t *d, uint64_t now)
{
    scav_t *s = &d->scav;
    uint64_t u = inuse_pages(d);
    if (u >= s->retain_base || !s->last_decay_ms) {
        s->retain_base = u > s->retain_base ? u : s->retain_base;
        s->last_decay_ms = now;
        return;
    }
    for (unsigned k = 0; k < 64 && now - s->last_decay_ms >= RETAIN_DECAY_MS; k++) {
        s->retain_base -= (s->retain_base - u + 1) / 2;
        s->last_decay_ms += RETAIN_DECAY_MS;
    }
    if (now - s->last_decay_ms >= RETAIN_DECAY_MS)
        s->last_decay_ms = now;
}

/* Committed bytes the background scavenger works down to. */
static uint64_t bg_goal(const daemon_t *d)
{
    const scav_t *s = &d->scav;
    uint64_t g = s->retain_base * PAGE / 100 * SCAV_RETAIN_PCT + d->seg.meta_committed;
    if (s->soft_limit && s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT < g)
        g = s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT;
    return g;
}

uint64_t scav_slice(daemon_t *d)
{
    scav_t *s = &d->scav;
    retain_update(d, now_ms());
    uint64_t c = limits_committed(d), goal = bg_goal(d);
    if (s->disabled || !s->cpu_pct || c <= goal) {
        soft_check(d, 0);
        return SCAV_IDLE_MS;
    }
    uint64_t want = pages_for(c - goal), done = 0, t0 = uv_hrtime(), worked = 0;
    /* Nothing free to release: sweep central spans first (Go's sweeper after a
     * GC): spans whose objects were all freed go back to the page allocator.
     * The sweep's time counts against the same CPU budget. */
    if (free_committed_pages(d) < want)
        mcentral_bg_sweep(&d->central, SCAV_SWEEP_BUDGET);
    while (done < want && worked < SCAV_SLICE_NS) {
        uint64_t n = release_pages(d, min64(want - done, SCAV_QUANTUM_PAGES), SCAV_QUANTUM_PAGES);
        if (!n)
            break;
        done += n;
        worked = uv_hrtime() - t0;
    }
    worked = uv_hrtime() - t0;
    s->scavenge_runs++;
    books_publish(d);
    soft_check(d, 0);
    if (!done)
        return SCAV_IDLE_MS;
    bool eager = s->soft_limit && limits_committed(d) > s->soft_limit / 100 * SCAV_LIMIT_GOAL_PCT;
    if (eager)
        return 0;       /* over 95% of the limit: keep going (other callbacks run in between) */
    /* sleep so that worked / (worked + sleep) = cpu_pct / 100 */
    uint64_t sleep_ns = worked * (100 - s->cpu_pct) / s->cpu_pct;
    uint64_t ms = sleep_ns / 1000000;
    return ms < 1 ? 1 : ms;
}

static void on_tick(uv_timer_t *t)
{
    daemon_t *d = t->data;
    uint64_t ms = scav_slice(d);
    if (d->scav.timer_on)
        uv_timer_start(&d->scav.timer, on_tick, ms, 0);
}

void scav_start(daemon_t *d)
{
    if (!d->loop || d->scav.timer_on)
        return;
    uv_timer_init(d->loop, &d->scav.timer);
    d->scav.timer.data = d;
    d->scav.timer_on = true;
    uv_timer_start(&d->scav.timer, on_tick, SCAV_IDLE_MS, 0);
}

void scav_stop(daemon_t *d)
{
    if (!d->scav.timer_on)
        return;
    d->scav.timer_on = false;
    uv_timer_stop(&d->scav.timer);
    uv_close((uv_handle_t *)&d->scav.timer, NULL);
}

/* ---- set-up and control ------------------------------------------------------------------------- */

int scav_init(daemon_t *d, uint64_t soft, uint64_t hard, unsigned cpu_pct)
{
    scav_t *s = &d->scav;
    memset(s, 0, sizeof(*s));
    if (soft && hard && hard < soft)
        return -EINVAL;
    s->soft_limit = soft;
    s->hard_limit = hard;
    s->cpu_pct = cpu_pct > 100 ? 100 : cpu_pct;
    s->disabled = !d->seg.punch_grain_ok;
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
    books_publish(d);
    return 0;
}

void scav_destroy(daemon_t *d)
{
    scav_t *s = &d->scav;
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
    scav_t *s = &d->scav;
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
        release_pages(d, pages_for(c - target), PA_CHUNK_PAGES);
        if (limits_committed(d) > target) {
            sweep_all(d);
            c = limits_committed(d);
            if (c > target)
                release_pages(d, pages_for(c - target), PA_CHUNK_PAGES);
        }
        s->scavenge_runs++;
    }
    memset(s->last_round_ms, 0, sizeof(s->last_round_ms));   /* a new limit: tell clients now */
    s->last_flush_ms = 0;
    soft_check(d, 0);
    books_publish(d);
    if (s->timer_on)
        uv_timer_start(&s->timer, on_tick, 0, 0);
    daemon_log(d, "limits: soft %llu, hard %llu bytes; committed %llu", (unsigned long long)soft,
               (unsigned long long)hard, (unsigned long long)limits_committed(d));
    return 0;
}

void limits_get(const daemon_t *d, limits_info_t *out)
{
    const scav_t *s = &d->scav;
    uint64_t c = limits_committed(d), over = s->overshoot_max;
    if (s->soft_limit && c > s->soft_limit && c - s->soft_limit > over)
        over = c - s->soft_limit;
    *out = (limits_info_t){
        .soft_limit = s->soft_limit,
        .hard_limit = s->hard_limit,
        .committed = c,
        .released = d->heap.pa.scav_pages * PAGE,
        .overshoot_max = over,
        .scavenged_total = s->scavenged_total,
        .scavenge_runs = s->scavenge_runs,
        .pressure_sent = s->pressure_sent,
        .flush_sent = s->flush_sent,
        .hard_limit_refusals = s->hard_refusals,
    };
}
