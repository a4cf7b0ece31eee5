/* conn: connections. The listening socket, one record per connected client,
 * packet I/O, and reclaim when a client goes away.
 *
 * Owns: the SOCK_SEQPACKET listening socket (its file: stale ones are
 * replaced, a live daemon's never), the client records and their sockets, and
 * the books clients / clients_total. libuv has no SEQPACKET streams, so each
 * socket is a uv_poll_t and we do recvmsg/sendmsg ourselves, nonblocking.
 *
 * Rules:
 *  - a peer is accepted only if SO_PEERCRED says it runs as the daemon's uid or
 *    root (or an allowed user/group); others get Error{EACCES, "permission
 *    denied"} and are closed. A peer whose pid is 0 (it runs in a pid
 *    namespace the daemon cannot see) is refused too: without its pid there is
 *    no lease (below);
 *  - client ids start at 1 and are never the id of a live (or quarantined)
 *    record: after the 32-bit counter wraps, ids in use are skipped (and 0);
 *  - a connection must say Hello within CLIENT_HELLO_MS, and at most
 *    CLIENT_HELLO_WAITING connections wait for their Hello: the oldest silent
 *    one is closed to make room (and on EMFILE), so silent connections can
 *    neither exhaust the daemon's descriptors nor stall accept;
 *  - a client's record lists the spans it has CACHED (span_priv_t links).
 *    Objects it allocated stay allocated when it goes: other processes may
 *    hold them. Except for a family (Hello's reclaim_at_exit: a preload
 *    process): its spans are its own pool's (mcentral.h), so when its last
 *    member has gone every object in them and every large object it
 *    allocated is freed;
 *  - the lease: a client's cached spans (and the tiny blocks in them) and its
 *    stats slot are its own until its process is dead (the pidfd opened at
 *    accept, pidfd_open of the SO_PEERCRED pid, is readable) or it gave them
 *    back (Release; a clean close with nothing cached: libheapd forgets its
 *    slot before it closes). Only then does client_end reclaim them. Nothing
 *    is keyed on the pid: a process that reuses a dead client's pid connects
 *    as a new client with a new id (the id is the lease epoch, also in its
 *    spans' owner and its stats slot's owner). pidfd_open is required
 *    (client_pidfd_probe; heapd refuses to start without it);
 *  - the connection can end before the lease (client_close: EOF or hang-up
 *    with spans still cached, a socket error, a protocol violation): the
 *    socket is closed, and the record stays QUARANTINED, holding its spans and
 *    slot, until the pidfd fires; then client_end reclaims as for a death;
 *  - a slow or paused client is skipped, never cut off: Flush and Pressure are
 *    pending flags (at most one of each, Pressure keeping the latest level
 *    and bytes), written when the socket has room; a reply that does not fit
 *    is kept and sent when the socket is writable, and the client is not read
 *    until it is out (one RPC at a time per client). Unsolicited messages also
 *    wait while more than CLIENT_UNSOLICITED_MAX bytes of what we sent are
 *    unread (retried at every sweep tick), so a stopped client's socket never
 *    fills with them;
 *  - nothing a client sends can crash the daemon or touch another client.
 */
#ifndef HEAPD_DAEMON_CONN_H
#define HEAPD_DAEMON_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "daemon.h"
#include "mheap.h"

#define CLIENT_NAME_MAX 64
#define CLIENT_UNSOLICITED_MAX 4096     /* unread bytes above which Flush/Pressure wait */
#define CLIENT_HELLO_MS 2000            /* a connection's time to say Hello */
#define CLIENT_HELLO_WAITING 128        /* connections waiting for Hello (2 fds each: socket, pidfd) */

typedef struct client {
    uint32_t id;
    pid_t pid;                  /* from SO_PEERCRED (or Hello, for test records) */
    uid_t uid;
    char name[CLIENT_NAME_MAX]; /* Hello's name, printable characters only */
    int fd;                     /* -1 for a record without a socket (tests) */
    bool hello_done;
    bool reclaim_at_exit;       /* Hello's: nobody else holds its objects (preload) */
    unsigned pool;              /* its family's span pool (mcentral.h), 0: the shared one */
    unsigned fork_holds;        /* ForkBegins not yet matched by a ForkDone */
    bool closing;               /* client_end ran: the record goes once libuv lets go */
    bool quarantined;           /* the connection is gone, the process lives: memory kept */
    bool peer_closed;           /* the peer ended the connection (EOF, hang-up) */
    spanlist_t cached;          /* spans CACHED by this client */
    uint64_t requests;
    uint32_t stat_slot;         /* memstats slot (mstats.h), 0 = none; retired at close */
    struct client *next, *prev;
    /* a Scavenge waiting for the forced pass scav_pass (scavenge.h): no reply
     * yet, and the client is not read until it has one */
    bool scav_waiting;
    uint64_t scav_pass, scav_seq;
    /* waiting for Hello: the daemon's FIFO of silent connections, oldest first */
    bool waiting;
    bool evicted;               /* closed for silence: counted, not logged one by one */
    uint64_t accepted_ms;
    struct client *wnext, *wprev;
    daemon_t *d;
    uv_poll_t poll;
    bool polling;
    int poll_events;            /* what poll watches now (UV_ flags) */
    bool want_writable;         /* something waits for room in the socket */
    /* unsolicited messages waiting to be written, coalesced */
    bool flush_pending, pressure_pending;
    unsigned pressure_level;
    uint64_t pressure_bytes;
    /* a reply waiting for room: the client is not read until it is out */
    uint8_t *reply;
    size_t reply_len;
    int reply_fds[3];           /* the daemon's own memfds (Welcome): not ours to close */
    unsigned reply_nfds;
    /* the lease: a pidfd on the peer (SO_PEERCRED pid, opened at accept),
     * watched like the socket; either one ending ends the client */
    int pidfd;                  /* -1: none (no pid, no pidfd_open, or the peer already gone) */
    uv_poll_t pidpoll;
    bool pidpolling;
    unsigned open_handles;      /* libuv handles still to close before the record is freed */
} client_t;

/* Create the listening socket at path (parent directories made 0700 when
 * missing, socket file d->sock_mode or 0600, group d->sock_gid if set). 0, or
 * -errno with a message naming the path. */
int client_listen(daemon_t *d, const char *path, char *err, size_t errlen);
/* Ready path for a listening socket of this type: check its length, create
 * missing parent directories (0700), refuse if a live daemon answers there,
 * remove a stale socket file. Fills *sa. 0, or -errno with a message. */
struct sockaddr_un;
int sock_path_prepare(const char *path, int type, struct sockaddr_un *sa, char *err, size_t errlen);
/* Start accepting on d->loop. 0 or -errno. */
int client_start(daemon_t *d);
/* Stop accepting, unlink the socket file, close every client. */
void client_shutdown(daemon_t *d);

/* A new client record (fd may be -1), id assigned, books updated. NULL if out of memory. */
client_t *client_new(daemon_t *d, int fd, pid_t pid, uid_t uid);
/* Uncache every span the client has cached (Release semantics, after closing
 * the tiny blocks it left open: those are counted as frees). Idempotent. */
void client_reclaim(daemon_t *d, client_t *c);
/* c leaves its family (a client with pool != 0): when it was the last
 * member, everything the family still held is freed (mcentral_pool_end) and
 * counted as retired frees. Call after client_reclaim. Returns the objects
 * freed. Idempotent. */
uint64_t client_leave_family(daemon_t *d, client_t *c);
/* Families (Hello's reclaim_at_exit, issue 10). A family is a pool with a
 * count of members: the clients in it, the processes a ForkDone named that
 * have not connected (fork_child_t, known by a pidfd), and ForkBegins not yet
 * matched. When the count reaches 0, everything in the pool is freed
 * (client_leave_family). A ForkBegin counts before fork() so that a parent
 * that dies before its ForkDone can never end the family under its child;
 * the price is that such a family is never freed (logged). */
/* ForkBegin: 0, or -EINVAL when c is in no family. */
int client_fork_begin(daemon_t *d, client_t *c);
/* ForkDone{pid}: the hold becomes the child's membership (pid 0: fork failed,
 * the hold goes). 0; -EINVAL without a ForkBegin or when pid is not a child
 * of c's process (the hold goes). A child that has exited already costs
 * nothing. */
int client_fork_done(daemon_t *d, client_t *c, pid_t pid);
/* At Hello: the pool of the family whose ForkDone named c's pid, taking over
 * that membership, or 0. */
unsigned client_fork_claim(daemon_t *d, client_t *c);
/* Forget every fork child record (daemon shutdown). */
void client_fork_children_free(daemon_t *d);

/* The connection ends (why: for the log). When the lease has ended too (the
 * process is dead, or it closed with nothing cached, or the record has no
 * process: tests) this is client_end; otherwise the socket is closed and the
 * record stays quarantined until the pidfd fires. c must not be used
 * afterwards unless c->quarantined. Idempotent. */
void client_close(daemon_t *d, client_t *c, const char *why);
/* The lease ends: reclaim, retire the stats slot, log, close the socket and
 * the pidfd and free the record (after libuv lets go of it, when it was
 * polled). c must not be used afterwards. */
void client_end(daemon_t *d, client_t *c, const char *why);

/* Send one packet (and fds) without blocking. 0, or -errno (-EAGAIN: the
 * socket has no room). */
int client_send(client_t *c, const uint8_t *buf, size_t len, const int *fds, unsigned nfds);
/* Ask the client to return its cached spans (DaemonMsg{seq 0, Flush}) /
 * Pressure{level, bytes}: the message is pending (coalesced with one not yet
 * written) and goes out when the socket has room. true if the client can be
 * told (said Hello, connected), false otherwise. Never closes the client. */
bool client_post_flush(daemon_t *d, client_t *c);
bool client_post_pressure(daemon_t *d, client_t *c, unsigned level, uint64_t bytes);
/* Write what is pending for every client (the sweep tick). */
void client_pump_all(daemon_t *d);
/* Close connections that have not said Hello within CLIENT_HELLO_MS (the
 * sweep tick), and log how many silent connections were closed since the last
 * call. */
void client_expire_silent(daemon_t *d, uint64_t now_ms);
/* The forced scavenger pass `pass` is done: Ack every Scavenge waiting for it
 * (or an earlier one) and read those clients again. */
void client_scavenge_done(daemon_t *d, uint64_t pass);
/* May this client change the daemon's settings (SetLimit)? Its uid is the
 * daemon's or root; not a client let in by --allow-uid/--allow-gid. */
static inline bool client_is_operator(const daemon_t *d, const client_t *c)
{
    return c->uid == d->uid || c->uid == 0;
}
/* A free client id (nonzero, not a live record's) for the next record. */
uint32_t client_next_id(daemon_t *d);

/* Is the process behind this pidfd gone? (readable pidfd) */
bool client_pid_exited(int pidfd);
/* Can leases work here? pidfd_open (NULL: the real syscall) of our own pid
 * must succeed. 0, or -errno with a message (ENOSYS: Linux older than 5.3). */
int client_pidfd_probe(int (*pidfd_open_fn)(pid_t pid, unsigned flags), char *err, size_t errlen);

#endif
