/* daemon: the heapd process's state and its event loop.
 *
 * Owns the one daemon_t: the segment, the mheap and mcentral built on it, the
 * connected clients (client.c), the listening socket, and the libuv loop with
 * its timers and signal handlers. One loop thread touches all of it, so nothing
 * here has a lock (Redis's ae.c model: callbacks run to completion).
 *
 * Life: daemon_init (segment, heap) -> client_listen (socket; before any
 * fork, so clients can connect as soon as the parent reports success) ->
 * daemon_run (loop: accept, RPC, background sweep every 100 ms) -> SIGTERM or
 * SIGINT -> daemon_stop (stop accepting, close clients, unlink the socket,
 * close every handle) -> daemon_run returns -> daemon_destroy.
 *
 * The unit tests use daemon_init/daemon_destroy without a loop (loop == NULL)
 * and drive rpc_handle directly.
 */
#ifndef HEAPD_DAEMON_DAEMON_H
#define HEAPD_DAEMON_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <uv.h>

#include "mcentral.h"
#include "mheap.h"
#include "mstats.h"
#include "memlimit.h"
#include "scavenge.h"
#include "memfd.h"

#define DAEMON_SWEEP_MS      100u   /* background sweep period */
#define DAEMON_SWEEP_BUDGET  1024u  /* spans swept per tick: a few hundred microseconds at most */
#define DAEMON_MAX_ALLOW     32u    /* entries in each --allow-uid/--allow-gid list */

struct client;

typedef struct daemon_opts {
    uint64_t size;              /* heap bytes (page multiple) */
    uint64_t base;              /* mapping address (2 MiB aligned) */
    const char *backing;        /* heap file, or NULL */
    bool hugetlb;
    bool quiet;                 /* no log lines on stderr */
    uint64_t soft_limit;        /* --memory-limit bytes, 0 = none */
    uint64_t hard_limit;        /* --hard-limit bytes, 0 = none */
    unsigned scavenge_cpu;      /* --scavenge-cpu percent; 0 = default (1), SCAV_CPU_OFF = none */
} daemon_opts_t;

typedef struct daemon {
    seg_t seg;
    mheap_t heap;
    mcentral_t central;
    scav_t scav;                /* the scavenger (scavenge.c) */
    limits_t lim;               /* limits, quotas, Flush/Pressure rounds (memlimit.c) */
    mstats_state_t ms;          /* memstats books: stats slots, retired totals, RPC times (mstats.c) */
    struct control *ctl;        /* the control socket (control.c), NULL without one */
    bool quiet;
    uid_t uid;                  /* peers must have this uid, or be root, or be allowed: */
    uid_t allow_uids[DAEMON_MAX_ALLOW];   /* --allow-uid: these uids too */
    gid_t allow_gids[DAEMON_MAX_ALLOW];   /* --allow-gid: peers in these groups too */
    unsigned n_allow_uids, n_allow_gids;
    unsigned sock_mode;         /* --socket-mode of the client socket file; 0: 0600 */
    bool sock_gid_set;          /* --socket-group given: chown the socket file to sock_gid */
    gid_t sock_gid;

    /* clients (client.c) */
    struct client *clients;     /* doubly linked, newest first */
    uint32_t next_client_id;    /* ids start at 1; never a live record's (client_next_id) */
    bool client_ids_wrapped;    /* the counter went round: check ids against live records */
    struct client *wait_head, *wait_tail;  /* connections waiting for Hello, oldest first */
    unsigned nwaiting;
    uint64_t silent_closed;     /* silent connections closed (deadline or cap), logged in batches */
    struct fork_child *fork_children;   /* family members known by pid only (conn.c ForkDone) */

    /* listening socket (client.c) */
    int listen_fd;
    char sock_path[108];
    dev_t sock_dev;             /* identity of the socket file we created, so */
    ino_t sock_ino;             /* shutdown never unlinks someone else's */

    /* the loop (NULL outside daemon_run) */
    uv_loop_t *loop;
    uv_poll_t listen_poll;
    bool listen_polling;
    uv_timer_t accept_timer;    /* resumes accepting after EMFILE */
    uv_timer_t sweep_timer;
    uv_signal_t sigs[3];
    bool stopping;

    /* operations (main.c): logging, the scrape endpoint, the start time */
    bool use_syslog;            /* daemon mode: log lines go to syslog, not stderr */
    struct metrics_http *http;  /* --metrics-listen (metrics_http.c), NULL without */
    double start_time_s;        /* Unix time the process started (process_start_time_seconds) */

    uint8_t rxbuf[HD_MAX_MSG];  /* one packet being handled */
    uint8_t txbuf[HD_MAX_MSG];  /* its reply */
} daemon_t;

/* Create the segment and the heap on it. 0, or -errno with a message in err. */
int daemon_init(daemon_t *d, const daemon_opts_t *o, char *err, size_t errlen);
/* Free everything daemon_init made (clients must be closed). */
void daemon_destroy(daemon_t *d);
/* Run the loop until SIGTERM/SIGINT (needs client_listen first). Returns 0 on
 * a clean shutdown, or -errno if the loop could not start. */
int daemon_run(daemon_t *d);
/* Begin a graceful shutdown; daemon_run returns once every handle is closed. */
void daemon_stop(daemon_t *d);
/* One log line "heapd: ..." on stderr (syslog in daemon mode), unless quiet. */
void daemon_log(daemon_t *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
