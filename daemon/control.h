/* control: the control socket, through which heapctl reads memstats and
 * changes the limits (proto/control.proto, docs/protocol.md).
 *
 *   heapd --control PATH      (default: the client socket path + ".ctl")
 *
 * Owns: the listening socket and its file (created 0600 before the daemon
 * forks, like the client socket; a live daemon's is never replaced, a stale
 * one is), the control connections, and the rate limit on requests.
 *
 * Transport: SOCK_STREAM (libuv pipes), each message a 4-byte little-endian
 * length then a protobuf-c ControlRequest or ControlReply: replies (Clients,
 * Metrics) may be larger than a SEQPACKET packet could carry.
 *
 * Rules:
 *  - a peer is served only if SO_PEERCRED says it runs as the daemon's uid or
 *    root; others get Error{EACCES} and are closed;
 *  - the allocation path never touches this socket, and the work here is
 *    bounded so that a flood of requests cannot starve client RPCs: requests
 *    are at most CTL_MAX_REQ bytes; each is O(clients + size classes); at
 *    most CTL_MAX_CONNS connections; requests are served at most CTL_RATE per
 *    second over all connections (a token bucket of CTL_BURST; a request
 *    costs 1 token plus 1 per 32 connected clients, since reading their
 *    slots is the work): beyond that a connection stops being read until its
 *    tokens are due; a connection whose unsent replies pass CTL_MAX_QUEUED
 *    bytes is not reading and is closed;
 *  - a malformed request (undecodable, too long, no body) gets Error{EINVAL}
 *    and the connection is closed; nothing a peer sends can crash the daemon.
 */
#ifndef HEAPD_DAEMON_CONTROL_H
#define HEAPD_DAEMON_CONTROL_H

#include <stddef.h>
#include <stdint.h>

#include "daemon.h"

#define CTL_MAX_REQ      4096u          /* bytes of one request */
#define CTL_MAX_REPLY    (16u << 20)    /* bytes of one reply */
#define CTL_MAX_CONNS    64u
#define CTL_RATE         1000u          /* requests per second, all connections */
#define CTL_BURST        200u
#define CTL_MAX_QUEUED   (64u << 20)    /* unsent reply bytes per connection */

/* Create the control socket at path (parent directories made 0700, the file
 * 0600). 0, or -errno with a message naming the path. */
int control_listen(daemon_t *d, const char *path, char *err, size_t errlen);
/* Take over a listening SOCK_STREAM fd (systemd socket activation) instead
 * of control_listen: the socket file is never unlinked. 0 or -errno. */
int control_adopt(daemon_t *d, int fd, char *err, size_t errlen);
/* Serve it on d->loop (no-op without control_listen). 0 or a libuv error. */
int control_start(daemon_t *d);
/* Stop: close the listener and every connection, unlink our socket file. */
void control_shutdown(daemon_t *d);
/* Free what control_listen made (after the loop has ended). */
void control_free(daemon_t *d);

/* Handle one request (the bytes of a ControlRequest, without the length):
 * returns a malloc'd packed ControlReply in *reply / *rlen (without the
 * length). Returns 0, or -1 if the request was malformed (the reply is an
 * Error; the connection should be closed). Used by the socket code and by
 * the unit tests. */
int control_handle(daemon_t *d, const uint8_t *req, size_t len, uint8_t **reply, size_t *rlen);

#endif
