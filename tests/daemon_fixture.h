/* Daemons for the unit suites.
 *  - in-process, for suites that drive rpc_handle and control_handle
 *    directly (no loop, no socket): a real segment, mheap and mcentral at a
 *    given base (fx_daemon_new ...);
 *  - a spawned one, for the client library's suites: the real daemon loop
 *    (accept, RPCs, timers: what heapd runs) in a child process of the test,
 *    on a fresh socket, so this process can attach to it and map its segment
 *    (fx_spawn ...);
 *  - a scripted peer, for what a correct daemon never does (a wrong
 *    version, oversized or garbled replies): a thread on a real listening
 *    socket that answers as a test says, with a real segment's memfds in its
 *    Welcome (fx_peer_start ...). */
#ifndef HEAPD_TESTS_DAEMON_FIXTURE_H
#define HEAPD_TESTS_DAEMON_FIXTURE_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "daemon.h"
#include "control.pb-c.h"
#include "heapd.pb-c.h"
#include "rpc.h"

/* A new daemon of size bytes mapped at base (CUnit-fatal on failure). */
daemon_t *fx_daemon_new(uint64_t size, uint64_t base);
/* Assert mheap_check and mcentral_check, printing what broke. */
void fx_check(daemon_t *d);
/* Close every client, check the heap's invariants, destroy and free d. */
void fx_daemon_free(daemon_t *d);
/* Pack m and hand it to rpc_handle for client c; the reply lands in out. */
enum rpc_verdict fx_send(daemon_t *d, client_t *c, Heapd__ClientMsg *m, rpc_out_t *out);
/* A client record on one end of a socketpair, past its Hello; *peer gets the
 * other end (unsolicited messages arrive there), *slot its stats slot. */
client_t *fx_client(daemon_t *d, rpc_out_t *out, int *peer, uint32_t *slot);
/* AllocLarge of pages for c: the span id, or -errno from the daemon's Error. */
int64_t fx_alloc_large(daemon_t *d, client_t *c, rpc_out_t *out, uint64_t pages);
/* control_handle: pack q, hand it to the daemon, unpack the reply (never
 * NULL: CUnit-fatal). *rc gets control_handle's result (-1: malformed). */
Heapdctl__ControlReply *fx_control(daemon_t *d, Heapdctl__ControlRequest *q, int *rc);
/* The Clients reply (the rows heapctl clients prints). */
Heapdctl__ControlReply *fx_clients(daemon_t *d);

/* ---- a spawned daemon ------------------------------------------------------------ */

typedef struct fx_proc {
    pid_t pid;
    char dir[64];               /* temp dir of the socket, removed by fx_stop/fx_kill */
    char sock[96];
    uint64_t base;
} fx_proc_t;
/* Start a daemon with o (size, base, limits; quiet is forced) in a child
 * process, listening on a fresh socket; CUnit-fatal unless it accepts
 * connections within 10 s. Every spawned daemon is killed at exit too. */
void fx_spawn(fx_proc_t *p, const daemon_opts_t *o);
/* SIGTERM and wait (5 s, then SIGKILL): waitpid's status, or -1. */
int fx_stop(fx_proc_t *p);
/* SIGKILL (a daemon that dies), reaped. */
void fx_kill(fx_proc_t *p);

/* ---- a scripted peer ------------------------------------------------------------- */

typedef struct fx_peer fx_peer_t;
/* The script: runs on the peer's thread with the accepted connection (closed
 * after it returns). */
typedef void (*fx_script_fn)(fx_peer_t *p, int conn);
struct fx_peer {
    int lfd;
    char dir[64], sock[96];
    int meta_fd, heap_fd;       /* a real segment: a laid-out header, an empty heap */
    uint64_t base, npages, meta_size, heap_size;
    pthread_t th;
    fx_script_fn script;
    void *arg;                  /* for the script */
};
/* Listen on a fresh socket, make the segment (mapped at base by the client),
 * and run script on the first connection in a thread. */
void fx_peer_start(fx_peer_t *p, uint64_t base, fx_script_fn script, void *arg);
/* Join the thread, close and remove everything. */
void fx_peer_stop(fx_peer_t *p);
/* One client message (5 s deadline): NULL on EOF, time-out or garbage. */
Heapd__ClientMsg *fx_peer_recv(int conn);
/* Send m packed; with fds, the segment's two memfds ride along (SCM_RIGHTS). */
void fx_peer_send(fx_peer_t *p, int conn, Heapd__DaemonMsg *m, bool fds);
/* Read the Hello and answer Welcome{version} with the segment's fds. */
void fx_peer_welcome(fx_peer_t *p, int conn, uint32_t version);
#endif
