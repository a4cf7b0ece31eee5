/* scavenge.c: the scavenger: releasing free pages, the background pacing,
 * scavenge_all / scavenge_bytes. See scavenge.h for the rules. */
#define _GNU_SOURCE
#include "scavenge.h"

#include <errno.h>
#include <string.h>
#include <time.h>

#include "conn.h"
#include "daemon.h"
#include "memlimit.h"
#include "mcentral.h"

#define PAGE HD_PAGE_SIZE
#define RETAIN_DECAY_MS 100u            /* retain_base moves half way down per this */

uint64_t scav_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline uint64_t pages_for(uint64_t bytes) { return (bytes + PAGE - 1) / PAGE; }
static inline uint64_t min64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static uint64_t inuse_pages(const daemon_t *d) { return d->heap.pa.grown - d->heap.pa.free_pages; }

/* ---- releasing pages ------------------------------------------------------------------ */

/* Release up to max_pages free, unreleased pages (a candidate may be widened
 * to a whole huge page, so slightly more), quantum pages per search.
 * Returns the pages released. */
uint64_t scav_release_pages(daemon_t *d, uint64_t max_pages, uint64_t quantum)
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
    uint64_t n = scav_release_pages(d, pages_for(nbytes), PA_CHUNK_PAGES);
    if (n)
        limits_books_publish(d);
    return n * PAGE;
}

/* Sweep every CENTRAL span once: empty ones go back to the page allocator. */
void scav_sweep_all(daemon_t *d) { mcentral_sweep_all(&d->central); }

uint64_t scav_punch_dirty(daemon_t *d)
{
    const pagealloc_t *pa = &d->heap.pa;
    uint64_t p = 0, end, punched = 0, np = d->seg.npages;
    int64_t q;
    if (d->scav.disabled)
        return 0;
    while (p < np && (q = seg_next_data(&d->seg, p, &end)) >= 0 && end > (uint64_t)q) {
        for (uint64_t x = (uint64_t)q; x < end;) {
            if (!pa_released(pa, x)) {
                x++;
                continue;
            }
            uint64_t y = x;
            while (y < end && pa_released(pa, y))
                y++;
            if (seg_decommit_pages(&d->seg, x, y - x) == 0)
                punched += y - x;
            x = y;
        }
        p = end;
    }
    uint64_t aux = seg_punch_uncommitted_aux(&d->seg);
    d->scav.dirty_punched += punched * PAGE + aux;
    return punched * PAGE + aux;
}

/* The heap memfd's real size beyond what the books count in it (pages in use
 * or free and unreleased, committed slots and aux areas). */
static uint64_t heap_gap(daemon_t *d, uint64_t real)
{
    const pagealloc_t *pa = &d->heap.pa;
    uint64_t counted = (pa->grown - pa->scav_pages) * PAGE + d->seg.aux_committed;
    return real > counted ? real - counted : 0;
}

void scav_resident_check(daemon_t *d, bool force)
{
    scav_t *s = &d->scav;
    uint64_t real = seg_resident_bytes(&d->seg);
    uint64_t gap = heap_gap(d, real), punched = 0;
    if (real && (force || gap > SCAV_GAP_SLACK)) {
        punched = scav_punch_dirty(d);
        if (punched) {
            uint64_t now = scav_now_ms();
            if (now - s->gap_logged_ms >= SCAV_GAP_LOG_MS) {
                s->gap_logged_ms = now;
                daemon_log(d, "scavenger: the heap memfd holds %llu bytes, %llu more than committed: released "
                           "pages or unused metadata written or read by a client; punched %llu bytes back "
                           "(%llu in all)",
                           (unsigned long long)real, (unsigned long long)gap, (unsigned long long)punched,
                           (unsigned long long)s->dirty_punched);
            }
            real = seg_resident_bytes(&d->seg);
            gap = heap_gap(d, real);
        }
    }
    if (real) {
        s->resident_bytes = limits_committed(d) + gap;
        s->resident_gap = gap;
    }
}

uint64_t scavenge_all(daemon_t *d)
{
    scav_sweep_all(d);
    uint64_t n = scav_release_pages(d, UINT64_MAX, PA_CHUNK_PAGES);
    n += scav_punch_dirty(d) / PAGE;
    scav_resident_check(d, false);
    d->scav.scavenge_runs++;
    limits_books_publish(d);
    return n * PAGE;
}

/* ---- forced passes (Scavenge messages) ----------------------------------------------------- */

static void on_force(uv_idle_t *t);

/* A pass sweeps the spans on the central lists now, then releases every free
 * page. Its slices run on an idle handle: one per loop turn, with the turn's
 * I/O (other clients' RPCs) in between. (Not a 0 ms timer: libuv runs a timer
 * re-armed with 0 from its own callback again in the same turn, before any
 * I/O.) */
static void force_start(daemon_t *d)
{
    scav_t *s = &d->scav;
    s->force_active = true;
    s->force_next = false;
    s->force_pass++;
    s->force_sweep_left = d->seg.hdr->spans_central;
    uv_idle_start(&s->force_idle, on_force);   /* no-op when it runs already */
}

/* One slice of the pass: about SCAV_FORCE_SLICE_NS of work, then back to the
 * loop (RPCs run before the next slice). */
static void on_force(uv_idle_t *t)
{
    daemon_t *d = t->data;
    scav_t *s = &d->scav;
    uint64_t t0 = uv_hrtime();
    bool done = false;
    while (!done && uv_hrtime() - t0 < SCAV_FORCE_SLICE_NS) {
        if (s->force_sweep_left) {
            uint64_t left = s->force_sweep_left;
            unsigned n = mcentral_bg_sweep(&d->central, (unsigned)min64(SCAV_FORCE_SWEEP, left));
            s->force_sweep_left = n && n < left ? left - n : 0;
        } else {
            done = scav_release_pages(d, SCAV_FORCE_PAGES, PA_CHUNK_PAGES) == 0;
        }
    }
    if (!done) {
        limits_books_publish(d);
        return;                     /* the next slice on the next turn */
    }
    scav_resident_check(d, false);  /* dirtied released pages, when there is a gap worth a walk */
    uint64_t pass = s->force_pass;
    s->force_active = false;
    s->scavenge_runs++;
    limits_books_publish(d);
    if (s->force_next)
        force_start(d);
    else
        uv_idle_stop(&s->force_idle);
    client_scavenge_done(d, pass);
}

bool scav_force_request(daemon_t *d, client_t *c, uint64_t seq)
{
    scav_t *s = &d->scav;
    if (!s->timer_on)
        return false;
    c->scav_waiting = true;
    c->scav_seq = seq;
    if (!s->force_active) {
        force_start(d);
        c->scav_pass = s->force_pass;
    } else {
        s->force_next = true;       /* the pass under way may have passed pages freed before this */
        c->scav_pass = s->force_pass + 1;
    }
    return true;
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
    uint64_t soft = d->lim.soft_limit;
    uint64_t g = s->retain_base * PAGE / 100 * SCAV_RETAIN_PCT + d->seg.meta_committed;
    if (soft && soft / 100 * SCAV_LIMIT_GOAL_PCT < g)
        g = soft / 100 * SCAV_LIMIT_GOAL_PCT;
    return g;
}

uint64_t scav_slice(daemon_t *d)
{
    scav_t *s = &d->scav;
    retain_update(d, scav_now_ms());
    scav_resident_check(d, false);
    uint64_t c = limits_committed(d), goal = bg_goal(d);
    if (s->disabled || !s->cpu_pct || c <= goal) {
        limits_soft_check(d, 0);
        return SCAV_IDLE_MS;
    }
    uint64_t want = pages_for(c - goal), done = 0, t0 = uv_hrtime(), worked = 0;
    /* Nothing free to release: sweep central spans first (Go's sweeper after a
     * GC): spans whose objects were all freed go back to the page allocator.
     * The sweep's time counts against the same CPU budget. */
    if (limits_free_committed_pages(d) < want)
        mcentral_bg_sweep(&d->central, SCAV_SWEEP_BUDGET);
    while (done < want && worked < SCAV_SLICE_NS) {
        uint64_t n = scav_release_pages(d, min64(want - done, SCAV_QUANTUM_PAGES), SCAV_QUANTUM_PAGES);
        if (!n)
            break;
        done += n;
        worked = uv_hrtime() - t0;
    }
    worked = uv_hrtime() - t0;
    s->scavenge_runs++;
    limits_books_publish(d);
    limits_soft_check(d, 0);
    if (!done)
        return SCAV_IDLE_MS;
    bool eager = d->lim.soft_limit && limits_committed(d) > d->lim.soft_limit / 100 * SCAV_LIMIT_GOAL_PCT;
    if (eager)
        return 0;       /* over 95% of the limit: keep going (other callbacks run in between) */
    /* sleep so that worked / (worked + sleep) = cpu_pct / 100 */
    uint64_t sleep_ns = worked * (100 - s->cpu_pct) / s->cpu_pct;
    uint64_t ms = sleep_ns / 1000000;
    return ms < 1 ? 1 : ms;
}

static void on_tick(uv_timer_t *t);

/* Eager slices (over 95% of the soft limit) run on an idle handle, one per
 * loop turn, so RPCs run in between: a timer re-armed with 0 from its own
 * callback would run again in the same turn, before any I/O (libuv). */
static void on_eager(uv_idle_t *i)
{
    daemon_t *d = i->data;
    uint64_t ms = scav_slice(d);
    if (ms == 0)
        return;                     /* still eager: the next slice on the next turn */
    uv_idle_stop(i);
    if (d->scav.timer_on)
        uv_timer_start(&d->scav.timer, on_tick, ms, 0);
}

static void on_tick(uv_timer_t *t)
{
    daemon_t *d = t->data;
    uint64_t ms = scav_slice(d);
    if (!d->scav.timer_on)
        return;
    if (ms == 0)
        uv_idle_start(&d->scav.eager_idle, on_eager);
    else
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
    uv_idle_init(d->loop, &d->scav.force_idle);
    d->scav.force_idle.data = d;
    uv_idle_init(d->loop, &d->scav.eager_idle);
    d->scav.eager_idle.data = d;
}

void scav_stop(daemon_t *d)
{
    if (!d->scav.timer_on)
        return;
    d->scav.timer_on = false;
    uv_timer_stop(&d->scav.timer);
    uv_close((uv_handle_t *)&d->scav.timer, NULL);
    uv_idle_stop(&d->scav.force_idle);
    uv_close((uv_handle_t *)&d->scav.force_idle, NULL);
    uv_idle_stop(&d->scav.eager_idle);
    uv_close((uv_handle_t *)&d->scav.eager_idle, NULL);
    d->scav.force_active = false;
}

/* ---- set-up and control ------------------------------------------------------------------------- */

int scav_init(daemon_t *d, unsigned cpu_pct)
{
    scav_t *s = &d->scav;
    memset(s, 0, sizeof(*s));
    s->cpu_pct = cpu_pct > 100 ? 100 : cpu_pct;
    s->disabled = !d->seg.punch_grain_ok;
    return 0;
}

void scav_destroy(daemon_t *d) { memset(&d->scav, 0, sizeof(d->scav)); }

void scav_kick(daemon_t *d)
{
    if (d->scav.timer_on && !uv_is_active((uv_handle_t *)&d->scav.eager_idle))
        uv_timer_start(&d->scav.timer, on_tick, 0, 0);
}
