/* daemon.c: daemon_t set-up, the libuv loop, timers, signals, logging.
 * See daemon.h. */
#define _GNU_SOURCE
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "rootdir.h"
#include "metrics_http.h"

void daemon_log(daemon_t *d, const char *fmt, ...)
{
    if (d->quiet)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (d->use_syslog)
        syslog(LOG_INFO, "%s", line);
    else
        fprintf(stderr, "heapd: %s\n", line);
}

int daemon_init(daemon_t *d, const daemon_opts_t *o, char *err, size_t errlen)
{
    d->quiet = o->quiet;
    d->uid = geteuid();
    d->listen_fd = -1;
    d->next_client_id = 1;
    seg_opts_t so = {.base = o->base, .size = o->size, .backing = o->backing, .hugetlb = o->hugetlb};
    int r = seg_create(&d->seg, &so, err, errlen);
    if (r < 0)
        return r;
    if ((r = roots_init(d)) < 0) {      /* named roots (rootdir.h) */
        snprintf(err, errlen, "cannot commit the roots directory: %s", strerror(-r));
        seg_destroy(&d->seg);
        return r;
    }
    if ((r = mheap_init(&d->heap, &d->seg)) < 0) {
        snprintf(err, errlen, "cannot set up the page allocator for %llu pages: %s",
                 (unsigned long long)d->seg.npages, strerror(-r));
        seg_destroy(&d->seg);
        return r;
    }
    if ((r = mcentral_init(&d->central, &d->heap)) < 0) {
        snprintf(err, errlen, "cannot set up the central lists: %s", strerror(-r));
        mheap_destroy(&d->heap);
        seg_destroy(&d->seg);
        return r;
    }
    unsigned pct = o->scavenge_cpu == 0 ? SCAV_DEFAULT_CPU_PCT : o->scavenge_cpu == SCAV_CPU_OFF ? 0 : o->scavenge_cpu;
    if ((r = limits_init(d, o->soft_limit, o->hard_limit)) < 0 || (r = scav_init(d, pct)) < 0) {
        snprintf(err, errlen, "cannot set up the limits and the scavenger: %s", strerror(-r));
        limits_destroy(d);
        mcentral_destroy(&d->central);
        mheap_destroy(&d->heap);
        seg_destroy(&d->seg);
        return r;
    }
    if ((r = mstats_init(d)) < 0) {
        snprintf(err, errlen, "cannot set up memstats: %s", strerror(-r));
        scav_destroy(d);
        limits_destroy(d);
        mcentral_destroy(&d->central);
        mheap_destroy(&d->heap);
        seg_destroy(&d->seg);
        return r;
    }
    return 0;
}

void daemon_destroy(daemon_t *d)
{
    control_free(d);
    metrics_http_free(d);
    mstats_destroy(d);
    scav_destroy(d);
    limits_destroy(d);
    mcentral_destroy(&d->central);
    mheap_destroy(&d->heap);
    seg_destroy(&d->seg);
}

#if HEAPD_DEBUG
/* HEAPD_DEBUG: every invariant the daemon can check, between two callbacks
 * of the loop (so each callback must leave them whole, the header books'
 * batch closed included). mheap_check runs pa_check. */
static void debug_check(daemon_t *d)
{
    char err[256] = "";
    HD_DEBUG_CHECK(!(hd_book(&d->seg.hdr->books_seq) & 1), "a loop callback left the books batch open");
    HD_DEBUG_CHECK(mheap_check(&d->heap, err, sizeof err), "mheap_check: %s", err);
    HD_DEBUG_CHECK(mcentral_check(&d->central, err, sizeof err), "mcentral_check: %s", err);
}
#endif

static void on_sweep(uv_timer_t *t)
{
    daemon_t *d = t->data;
#if HEAPD_DEBUG
    debug_check(d);
#endif
    mcentral_bg_sweep(&d->central, DAEMON_SWEEP_BUDGET);
    client_pump_all(d);     /* Flush/Pressure held back while a client had much unread */
    client_expire_silent(d, scav_now_ms());     /* the Hello deadline */
}

static void on_signal(uv_signal_t *s, int signum)
{
    daemon_t *d = s->data;
    if (signum == SIGHUP) {
        daemon_log(d, "SIGHUP: nothing to reload yet");
        return;
    }
    daemon_log(d, "%s: shutting down", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    daemon_stop(d);
}

void daemon_stop(daemon_t *d)
{
    if (d->stopping || !d->loop)
        return;
    d->stopping = true;
    client_shutdown(d);
    control_shutdown(d);
    metrics_http_shutdown(d);
    uv_timer_stop(&d->sweep_timer);
    uv_close((uv_handle_t *)&d->sweep_timer, NULL);
    scav_stop(d);
    for (int i = 0; i < 3; i++) {
        uv_signal_stop(&d->sigs[i]);
        uv_close((uv_handle_t *)&d->sigs[i], NULL);
    }
}

int daemon_run(daemon_t *d)
{
    uv_loop_t loop;
    int r = uv_loop_init(&loop);
    if (r < 0)
        return r;
    d->loop = &loop;
    signal(SIGPIPE, SIG_IGN);   /* a client that vanishes mid-send is an error return, not a death */
    if ((r = client_start(d)) < 0) {
        daemon_log(d, "cannot poll the listening socket: %s", uv_strerror(r));
        client_shutdown(d);             /* closes what client_start opened, unlinks the socket */
        control_shutdown(d);
        uv_run(&loop, UV_RUN_DEFAULT);  /* let the close callbacks run */
        uv_loop_close(&loop);
        d->loop = NULL;
        return r;
    }
    uv_timer_init(&loop, &d->sweep_timer);
    d->sweep_timer.data = d;
    uv_timer_start(&d->sweep_timer, on_sweep, DAEMON_SWEEP_MS, DAEMON_SWEEP_MS);
    scav_start(d);
    if ((r = control_start(d)) < 0)     /* the heap works without it: say so and go on */
        daemon_log(d, "cannot serve the control socket: %s", uv_strerror(r));
    if ((r = metrics_http_start(d)) < 0)        /* nor does it need the scrape endpoint */
        daemon_log(d, "cannot serve --metrics-listen: %s", uv_strerror(r));
    const int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&loop, &d->sigs[i]);
        d->sigs[i].data = d;
        uv_signal_start(&d->sigs[i], on_signal, signums[i]);
    }

    uv_run(&loop, UV_RUN_DEFAULT);      /* returns once daemon_stop closed every handle */

    r = uv_loop_close(&loop);
    if (r < 0)      /* a handle left open: a bug, but the shutdown itself is done */
        daemon_log(d, "loop close: %s", uv_strerror(r));
    d->loop = NULL;
    return 0;
}
