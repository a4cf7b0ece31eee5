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
 *    root; others get Error{EACCES, "permission denied"} and are closed;
 *  - client ids start at 1 and are never reused during a run;
 *  - a client's record lists the spans it has CACHED (span_priv_t links), so
 *    when it goes away (EOF, HUP, error, protocol violation) every one is
 *    uncached as if released. Large spans it allocated stay allocated: other
 *    processes may hold the objects;
 *  - replies go out with nonblocking sendmsg; a client whose socket buffer is
 *    full is not reading, and is disconnected rather than waited for;
 *  - nothing a client sends can crash the daemon or touch another client;
 *  - the lease: a client ends when its socket reports EOF/HUP/error OR when
 *    the pidfd of its process (pidfd_open of the SO_PEERCRED pid) becomes
 *    readable, whichever comes first; client_close is idempotent. Nothing is
 *    keyed on the pid: a process that reuses a dead client's pid connects as
 *    a new client with a new id (the id is the lease epoch, also in its spans'
 *    owner and its stats slot's owner).
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

typedef struct client {
    uint32_t id;
    pid_t pid;                  /* from SO_PEERCRED (or Hello, for test records) */
    uid_t uid;
    char name[CLIENT_NAME_MAX]; /* Hello's name, printable characters only */
    int fd;                     /* -1 for a record without a socket (tests) */
    bool hello_done;
    bool closing;
    spanlist_t cached;          /* spans CACHED by this client */
    uint64_t requests;
    uint32_t stat_slot;         /* memstats slot (mstats.h), 0 = none; retired at close */
    struct client *next, *prev;
    daemon_t *d;
    uv_poll_t poll;
    bool polling;
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
 * the tiny blocks it left open). Idempotent. */
void client_reclaim(daemon_t *d, client_t *c);
/* Reclaim, log, close the socket and free the record (after libuv lets go of
 * it, when it was polled). c must not be used afterwards. */
void client_close(daemon_t *d, client_t *c, const char *why);

/* Send one packet (and fds) without blocking. 0, or -errno (-EAGAIN: the
 * client is not reading). */
int client_send(client_t *c, const uint8_t *buf, size_t len, const int *fds, unsigned nfds);
/* Ask the client to return its cached spans (DaemonMsg{seq 0, Flush}). On a
 * send failure the client is disconnected. 0 or -errno. */
int daemon_send_flush(daemon_t *d, client_t *c);

#endif
