/* scavenge: returning free pages to the OS (Go's mgcscavenge.go).
 *
 * Owns (daemon loop thread only, no locks): the scavenger state (scav_t),
 * the background pacing timer, and the books scavenged_total/scavenge_runs.
 * It finds free, unscavenged heap pages with the page allocator's candidate
 * search (highest addresses first, whole free 2 MiB runs never split:
 * pa_scav_find) and releases their backing with fallocate(PUNCH_HOLE)
 * (seg_decommit_pages: MADV_DONTNEED frees nothing of shared memory). A
 * released page handed out again is committed again by mheap (pa_alloc
 * reports it), and counts again. The limits (memlimit.h) decide when memory
 * must go; this file only releases it.
 *
 * What is counted (Go's mappedReady): limits_committed (memlimit.h).
 * Fresh growth starts released (it has no backing), as in Go.
 *
 * Goals. The background scavenger (a libuv timer) releases free pages while
 *     committed > min(retain goal, 95% of the soft limit)
 * where the retain goal is 110% of the pages in use (smoothed so that a
 * program that frees and allocates again does not pay for it), plus the
 * metadata. It works in slices of about 1 ms and then sleeps so that it uses
 * --scavenge-cpu percent of one CPU (default 1, like Go); over 95% of the
 * soft limit it does not sleep between slices (one slice per loop turn, on an
 * idle handle, so RPCs still run in between).
 *
 * Dirtied pages. A client can write (or fault in) heap pages the daemon
 * never handed out or has released, and the unused parts of the heap memfd's
 * metadata area: they are resident while the books do not count them. Every
 * slice compares what the books count in the heap memfd with its st_blocks
 * (resident_gap, a book and a log line) and, past SCAV_GAP_SLACK, finds the
 * dirtied released pages with SEEK_DATA and punches them back; scavenge_all
 * and forced passes always do. While the resident figure is over the hard
 * limit, memlimit refuses new spans (after one such punch).
 *
 * Run-time control: scavenge_all (heapctl scavenge: Go's FreeOSMemory, run
 * at once); the Scavenge message runs the same work as a forced pass in
 * slices, shared by every request waiting (scav_force_request).
 */
#ifndef HEAPD_DAEMON_SCAVENGE_H
#define HEAPD_DAEMON_SCAVENGE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct daemon daemon_t;

#define SCAV_DEFAULT_CPU_PCT   1u       /* --scavenge-cpu: Go's scavengePercent */
#define SCAV_CPU_OFF           1000u    /* daemon_opts_t.scavenge_cpu: no background scavenging */
#define SCAV_SLICE_NS          1000000u /* a background slice works about 1 ms */
#define SCAV_QUANTUM_PAGES     8u       /* 64 KiB per candidate search in the background (Go) */
#define SCAV_IDLE_MS           100u     /* check the goals this often when there is nothing to do */
#define SCAV_SWEEP_BUDGET      4096u    /* central spans a slice sweeps when nothing is free to release */
#define SCAV_RETAIN_PCT        110u     /* keep 10% above in-use committed (retainExtraPercent) */
#define SCAV_LIMIT_GOAL_PCT    95u      /* background goal under a soft limit (reduceExtraPercent) */

#define SCAV_GAP_SLACK         (1u << 20) /* resident beyond committed tolerated before a dirty-page walk */
#define SCAV_GAP_LOG_MS        1000u    /* at most one log line about dirtied pages per this */
#define SCAV_FORCE_SLICE_NS    250000u  /* a forced slice (Scavenge message) works about 250 us */
#define SCAV_FORCE_SWEEP       256u     /* central spans a forced slice sweeps between clock reads */
#define SCAV_FORCE_PAGES       256u     /* pages a forced slice releases between clock reads */

/* The state, one per daemon (daemon_t.scav). */
typedef struct scav {
    unsigned cpu_pct;                    /* 0: no background scavenging */
    bool disabled;                       /* the backing cannot punch holes of a page: no scavenging */
    uint64_t retain_base;                /* smoothed pages in use */
    uint64_t last_decay_ms;              /* when retain_base last moved down */
    uint64_t scavenged_total, scavenge_runs;   /* books (mirrored into the segment header by memlimit.c) */
    /* gap: how far the heap memfd's st_blocks exceed what the books count in
     * it (released pages or unused metadata a client wrote or faulted);
     * resident_bytes: committed + gap, what the hard limit is held to.
     * Measured at every slice. */
    uint64_t resident_bytes, resident_gap;
    uint64_t dirty_punched;              /* bytes of dirtied released pages punched back */
    uint64_t gap_logged_ms;
    /* the background timer (only under daemon_run) */
    uv_timer_t timer;
    bool timer_on;
    /* forced passes (Scavenge messages): one at a time, in slices of about
     * SCAV_FORCE_SLICE_NS, one per loop turn (an idle handle), so RPCs run
     * between slices */
    uv_idle_t force_idle;
    uv_idle_t eager_idle;                /* background slices while eager: one per loop turn */
    bool force_active;                   /* a pass is under way */
    bool force_next;                     /* someone waits for the pass after it */
    uint64_t force_pass;                 /* the pass under way (or the last one), from 1 */
    uint64_t force_sweep_left;           /* central spans its sweep still has to visit */
} scav_t;

/* Set up (after mheap_init and limits_init). 0 or -errno. */
int scav_init(daemon_t *d, unsigned cpu_pct);
void scav_destroy(daemon_t *d);
/* Start / stop the background timer on d->loop. */
void scav_start(daemon_t *d);
void scav_stop(daemon_t *d);
/* Run the next background slice now (a limit changed). */
void scav_kick(daemon_t *d);
/* One background slice (what the timer runs; the tests call it directly):
 * releases toward the goal for about SCAV_SLICE_NS, or asks clients for
 * memory when over the soft limit with nothing left to release. Returns the
 * milliseconds to sleep before the next: 0 when eager (over 95% of the soft
 * limit), SCAV_IDLE_MS when there was nothing to do. */
uint64_t scav_slice(daemon_t *d);

/* Force-release every free page (FreeOSMemory): sweeps the central lists
 * first so empty spans go back, then releases every free, unreleased page.
 * Returns the bytes released. Blocks the loop while it works (about 50 us per
 * MiB). */
uint64_t scavenge_all(daemon_t *d);
/* A Scavenge message from client c (seq to answer): it waits for the next
 * forced pass that starts after now (the one under way started too early),
 * is not read meanwhile, and gets its Ack when that pass is done
 * (client_scavenge_done). Many requests share one pass, passes run one at a
 * time and in slices of SCAV_FORCE_SLICE_NS, so a flood of them delays
 * other clients' RPCs by at most one slice. A pass punches dirtied released
 * pages only past SCAV_GAP_SLACK (scav_resident_check); scavenge_all always. Needs the loop (scav_start). */
struct client;
bool scav_force_request(daemon_t *d, struct client *c, uint64_t seq);   /* false: no loop, run it now */
/* Punch every released page (free and scavenged, or never part of the heap)
 * that holds data anyway, found with SEEK_DATA: a client wrote or faulted it
 * after it was released; and the same in the heap memfd's metadata area
 * (slots, aux areas, the old stats array) where the daemon committed nothing.
 * Returns the bytes punched. */
uint64_t scav_punch_dirty(daemon_t *d);
/* Measure what the kernel backs (resident_bytes, resident_gap); past
 * SCAV_GAP_SLACK (or with force) punch dirtied released pages back and say
 * so in the log (at most once per SCAV_GAP_LOG_MS). Every slice runs it. */
void scav_resident_check(daemon_t *d, bool force);
/* Release up to nbytes of free pages, highest addresses first. Returns the
 * bytes released (0 when nothing is left to release). */
uint64_t scavenge_bytes(daemon_t *d, uint64_t nbytes);

/* For memlimit.c: release up to max_pages free, unreleased pages, quantum
 * pages per search (no books published); sweep every CENTRAL span once; the
 * monotonic clock in ms. */
uint64_t scav_release_pages(daemon_t *d, uint64_t max_pages, uint64_t quantum);
void scav_sweep_all(daemon_t *d);
uint64_t scav_now_ms(void);

#endif
